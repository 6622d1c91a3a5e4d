//! DDIM (Song et al. 2020, arXiv 2010.02502): the non-Markovian reverse process of eq. 12 on a
//! subsequence of the steps; η = 0 is deterministic (the probability-flow ODE's first-order
//! solver, which is also DPM-Solver++'s first-order step), η = 1 the DDPM-like posterior noise.

use burn::tensor::Tensor;

use super::{Solver, Update};
use crate::diffusion::Diffusion;

pub struct Ddim {
    pub eta: f64,
}

/// Eq. 16's σ for a step t → t_prev (None: x₀, ᾱ = 1).
pub fn sigma(d: &Diffusion, t: usize, t_prev: Option<usize>, eta: f64) -> f64 {
    let ab = d.alpha_bar[t];
    let ab_prev = t_prev.map_or(1.0, |p| d.alpha_bar[p]);
    eta * ((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)).sqrt()
}

impl Solver for Ddim {
    /// Eq. 12: x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε + σ z. x̂₀ is clipped and ε re-derived
    /// from it, ε = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t): large strides otherwise carry a slightly wrong ε at
    /// high t into saturated images.
    fn step(
        &mut self,
        d: &Diffusion,
        x_t: Tensor<4>,
        t: usize,
        t_prev: Option<usize>,
        eps: Tensor<4>,
        z: &mut dyn FnMut() -> Tensor<4>,
    ) -> (Tensor<4>, Update) {
        let (ab, ab_prev) = (d.alpha_bar[t], t_prev.map_or(1.0, |p| d.alpha_bar[p]));
        let sigma = sigma(d, t, t_prev, self.eta);
        let x0 = d.clipped_x0(x_t.clone(), t, eps);
        let eps = (x_t - x0.clone().mul_scalar(ab.sqrt())).mul_scalar(1.0 / (1.0 - ab).sqrt());
        let (coef_x0, coef_eps) = (ab_prev.sqrt(), (1.0 - ab_prev - sigma * sigma).max(0.0).sqrt());
        let x = x0.mul_scalar(coef_x0) + eps.mul_scalar(coef_eps);
        let x = if sigma > 0.0 { x + z().mul_scalar(sigma) } else { x };
        let update = Update {
            t,
            t_prev,
            order: 1,
            rule: "x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε + σ z",
            coefficients: vec![("√ᾱ_prev", coef_x0), ("√(1 − ᾱ_prev − σ²)", coef_eps), ("σ", sigma)],
            sigma,
        };
        (x, update)
    }
}
