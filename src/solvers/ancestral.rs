//! The paper's sampler (Ho et al. 2020, Algorithm 2): every step, fresh noise with σ_t² = β_t.

use burn::tensor::Tensor;

use super::{Solver, Update};
use crate::diffusion::Diffusion;

pub struct Ancestral;

impl Solver for Ancestral {
    /// Algorithm 2, line 4: x_{t−1} = μ_θ(x_t, t) + σ_t z with σ_t² = β_t, and no noise at the
    /// last step (t = 0). μ_θ is formed as the paper's own code does: the clipped x̂₀ (eq. 15),
    /// then the posterior mean of eq. 7,
    /// μ̃ = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x̂₀ + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t,
    /// which is exactly Algorithm 2's (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t wherever x̂₀ is not clipped.
    fn step(
        &mut self,
        d: &Diffusion,
        x_t: Tensor<4>,
        t: usize,
        t_prev: Option<usize>,
        eps: Tensor<4>,
        z: &mut dyn FnMut() -> Tensor<4>,
    ) -> (Tensor<4>, Update) {
        debug_assert!(t_prev.is_none_or(|p| p + 1 == t), "the paper's sampler takes every step");
        let (ab, ab_prev) = (d.alpha_bar[t], if t > 0 { d.alpha_bar[t - 1] } else { 1.0 });
        let x0 = d.clipped_x0(x_t.clone(), t, eps);
        let coef_x0 = ab_prev.sqrt() * d.beta[t] / (1.0 - ab);
        let coef_xt = d.alpha[t].sqrt() * (1.0 - ab_prev) / (1.0 - ab);
        let sigma = if t > 0 { d.beta[t].sqrt() } else { 0.0 };
        let mean = x0.mul_scalar(coef_x0) + x_t.mul_scalar(coef_xt);
        let x = if sigma > 0.0 { mean + z().mul_scalar(sigma) } else { mean };
        let update = Update {
            t,
            t_prev,
            order: 1,
            rule: "x_{t−1} = c₀ x̂₀ + c_t x_t + σ_t z",
            coefficients: vec![("c₀", coef_x0), ("c_t", coef_xt), ("σ_t", sigma)],
            sigma,
        };
        (x, update)
    }
}
