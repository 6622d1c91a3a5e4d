//! DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
//! Probabilistic Models", arXiv 2211.01095, Algorithm 2): the probability-flow ODE solved in
//! log-SNR λ = log(α_t/σ_t) (α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)) with the network's data prediction
//! x_θ = x̂₀, whose exact solution from s to t is
//! x_t = (σ_t/σ_s) x_s + σ_t ∫_{λ_s}^{λ_t} e^λ x_θ dλ.
//! Holding x_θ constant over the step gives the first-order update (DDIM with η = 0):
//! x_t = (σ_t/σ_s) x_s − α_t (e^{−h} − 1) x_θ(s), h = λ_t − λ_s;
//! the multistep second-order one replaces x_θ(s) by a linear extrapolation through the previous
//! evaluation, D = (1 + 1/(2r)) x_θ(s) − 1/(2r) x_θ(s'), r = h_prev/h.
//! x̂₀ is clipped to the data range, as our DDIM clips it (the reference's "thresholding" with
//! a fixed bound of 1; docs/samplers.md on its dynamic form).

use burn::tensor::Tensor;

use super::{Solver, Update};
use crate::diffusion::Diffusion;

/// The history of a run: the previous evaluation's x̂₀ and step size h.
#[derive(Default)]
pub struct DpmSolver2M {
    previous: Option<(Tensor<4>, f64)>,
}

/// α_t = √ᾱ_t, σ_t = √(1 − ᾱ_t) and λ_t = log(α_t/σ_t) of a step (None: x₀).
fn alpha_sigma_lambda(d: &Diffusion, t: Option<usize>) -> (f64, f64, f64) {
    let ab = t.map_or(1.0, |t| d.alpha_bar[t]);
    let (alpha, sigma) = (ab.sqrt(), (1.0 - ab).sqrt());
    (alpha, sigma, (alpha / sigma).ln())
}

impl Solver for DpmSolver2M {
    fn step(
        &mut self,
        d: &Diffusion,
        x_t: Tensor<4>,
        t: usize,
        t_prev: Option<usize>,
        eps: Tensor<4>,
        _z: &mut dyn FnMut() -> Tensor<4>,
    ) -> (Tensor<4>, Update) {
        let x0 = d.clipped_x0(x_t.clone(), t, eps);
        let Some(next) = t_prev else {
            // Onto x₀: σ = 0 and λ = ∞, so h is infinite, r = 0 and no second-order term exists;
            // the first-order update's limit is x̂₀ itself.
            self.previous = None;
            let update = Update {
                t,
                t_prev,
                order: 1,
                rule: "x₀ = x̂₀ (σ = 0: the first-order update's limit)",
                coefficients: vec![("x̂₀", 1.0)],
                sigma: 0.0,
            };
            return (x0, update);
        };
        let (_, sigma_s, lambda_s) = alpha_sigma_lambda(d, Some(t));
        let (alpha_t, sigma_t, lambda_t) = alpha_sigma_lambda(d, Some(next));
        let h = lambda_t - lambda_s;
        // −α_t (e^{−h} − 1), the weight of the data prediction D.
        let coef_d = -alpha_t * (-h).exp_m1();
        let coef_x = sigma_t / sigma_s;
        let (d_term, order, weights) = match self.previous.take() {
            Some((x0_prev, h_prev)) => {
                let r = h_prev / h;
                let (w0, w1) = (1.0 + 1.0 / (2.0 * r), -1.0 / (2.0 * r));
                (x0.clone().mul_scalar(w0) + x0_prev.mul_scalar(w1), 2, (w0, w1))
            }
            None => (x0.clone(), 1, (1.0, 0.0)),
        };
        let x = x_t.mul_scalar(coef_x) + d_term.mul_scalar(coef_d);
        self.previous = Some((x0, h));
        let update = Update {
            t,
            t_prev,
            order,
            rule: "x_prev = (σ_prev/σ_t) x_t − α_prev (e^{−h} − 1) D, D = w₀ x̂₀ + w₁ x̂₀(previous step)",
            coefficients: vec![
                ("σ_prev/σ_t", coef_x),
                ("−α_prev (e^{−h} − 1)", coef_d),
                ("h", h),
                ("w₀", weights.0),
                ("w₁", weights.1),
            ],
            sigma: 0.0,
        };
        (x, update)
    }
}
