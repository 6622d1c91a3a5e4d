//! The diffusion process of Ho et al. 2020 (arXiv 2006.11239), with steps numbered 0..T−1
//! (step t here is the paper's t + 1, as in labml's code).
//!
//! Schedule constants are computed once in f64 on the host; each operation uploads the few
//! coefficients it needs, so the maths is identical on every backend.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::limits;
use crate::noise::Noise;
use crate::unet::UNet;

/// The noise schedule: β_t linear from `beta_start` to `beta_end` over `steps` = T steps (§4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleConfig {
    pub steps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { steps: 1000, beta_start: 1e-4, beta_end: 0.02 }
    }
}

impl ScheduleConfig {
    pub fn validate(&self) -> Result<(), String> {
        let ok_beta = |b: f64| b > 0.0 && b < 1.0;
        if !(2..=limits::MAX_DIFFUSION_STEPS).contains(&self.steps) {
            return Err(format!(
                "steps: T = {} diffusion steps is outside 2..={}",
                self.steps,
                limits::MAX_DIFFUSION_STEPS
            ));
        }
        if !ok_beta(self.beta_start) || !ok_beta(self.beta_end) || self.beta_start > self.beta_end {
            return Err(format!("β must rise within (0, 1): got {} .. {}", self.beta_start, self.beta_end));
        }
        Ok(())
    }
}

/// β, α = 1 − β and ᾱ_t = ∏_{s≤t} α_s for every step.
#[derive(Clone, Debug)]
pub struct Diffusion {
    pub config: ScheduleConfig,
    pub beta: Vec<f64>,
    pub alpha: Vec<f64>,
    pub alpha_bar: Vec<f64>,
}

impl Diffusion {
    pub fn new(config: ScheduleConfig) -> Self {
        let n = config.steps;
        let beta: Vec<f64> = (0..n)
            .map(|t| config.beta_start + (config.beta_end - config.beta_start) * t as f64 / (n - 1) as f64)
            .collect();
        let alpha: Vec<f64> = beta.iter().map(|b| 1.0 - b).collect();
        let alpha_bar = alpha
            .iter()
            .scan(1.0, |acc, a| {
                *acc *= a;
                Some(*acc)
            })
            .collect();
        Self { config, beta, alpha, alpha_bar }
    }

    /// T.
    pub fn steps(&self) -> usize {
        self.config.steps
    }

    /// One coefficient per batch item, shaped [B, 1, 1, 1] to broadcast over images.
    fn per_item(values: Vec<f32>, device: &Device) -> Tensor<4> {
        let b = values.len();
        Tensor::from_data(TensorData::new(values, [b, 1, 1, 1]), device)
    }

    /// Eq. 4: x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, with one t per batch item.
    pub fn q_sample(&self, x0: Tensor<4>, t: &[usize], eps: Tensor<4>) -> Tensor<4> {
        let device = x0.device();
        let mean = t.iter().map(|&t| self.alpha_bar[t].sqrt() as f32).collect();
        let std = t.iter().map(|&t| (1.0 - self.alpha_bar[t]).sqrt() as f32).collect();
        x0 * Self::per_item(mean, &device) + eps * Self::per_item(std, &device)
    }

    /// Eq. 14 (L_simple): ‖ε − ε_θ(√ᾱ_t x₀ + √(1 − ᾱ_t) ε, t, c)‖², averaged over pixels and
    /// batch, for the caller's draws of t ~ U{0..T−1} (one per item) and ε ~ N(0, I), and for a
    /// conditional model each item's class (∅ where dropped); the network runs in training
    /// mode, its dropout masks drawn from `dropout`.
    pub fn loss(
        &self,
        eps_theta: &UNet,
        x0: Tensor<4>,
        t: &[usize],
        classes: Option<&[usize]>,
        eps: Tensor<4>,
        dropout: &mut Noise,
    ) -> Tensor<1> {
        let device = x0.device();
        let x_t = self.q_sample(x0, t, eps.clone());
        let pred = eps_theta.forward_train(x_t, self.t_tensor_items(t, &device), classes, dropout);
        (eps - pred).square().mean()
    }

    /// The step numbers as the float tensor the time embedding reads.
    pub fn t_tensor_items(&self, t: &[usize], device: &Device) -> Tensor<1> {
        let values: Vec<f32> = t.iter().map(|&t| t as f32).collect();
        Tensor::from_data(TensorData::new(values, [t.len()]), device)
    }

    /// The same step `t` for all `batch` items.
    pub fn t_tensor(&self, t: usize, batch: usize, device: &Device) -> Tensor<1> {
        self.t_tensor_items(&vec![t; batch], device)
    }

    /// Eq. 15 rearranged: x̂₀ = (x_t − √(1 − ᾱ_t) ε_θ) / √ᾱ_t, the preview of the final image.
    pub fn predict_x0(&self, x_t: Tensor<4>, t: usize, eps: Tensor<4>) -> Tensor<4> {
        let ab = self.alpha_bar[t];
        (x_t - eps.mul_scalar((1.0 - ab).sqrt())).mul_scalar(1.0 / ab.sqrt())
    }

    /// x̂₀ clipped to the data range [−1, 1], as the paper's own code does before forming a mean:
    /// at high t, x̂₀ = (x_t − …)/√ᾱ_t amplifies a slightly wrong ε ~150× past any image.
    fn clipped_x0(&self, x_t: Tensor<4>, t: usize, eps: Tensor<4>) -> Tensor<4> {
        self.predict_x0(x_t, t, eps).clamp(-1.0, 1.0)
    }

    /// Algorithm 2, line 4: x_{t−1} = μ_θ(x_t, t) + σ_t z with σ_t² = β_t; `z` is None at the last
    /// step (t = 0), where the paper adds no noise. μ_θ is formed as the paper's own code does:
    /// the clipped x̂₀ (eq. 15), then the posterior mean of eq. 7,
    /// μ̃ = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x̂₀ + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t,
    /// which is exactly Algorithm 2's (x_t − β_t/√(1 − ᾱ_t) ε_θ)/√α_t wherever x̂₀ is not clipped.
    pub fn p_sample(&self, x_t: Tensor<4>, t: usize, eps: Tensor<4>, z: Option<Tensor<4>>) -> Tensor<4> {
        let (ab, ab_prev) = (self.alpha_bar[t], if t > 0 { self.alpha_bar[t - 1] } else { 1.0 });
        let x0 = self.clipped_x0(x_t.clone(), t, eps);
        let coef_x0 = ab_prev.sqrt() * self.beta[t] / (1.0 - ab);
        let coef_xt = self.alpha[t].sqrt() * (1.0 - ab_prev) / (1.0 - ab);
        let mean = x0.mul_scalar(coef_x0) + x_t.mul_scalar(coef_xt);
        match z {
            Some(z) if t > 0 => mean + z.mul_scalar(self.beta[t].sqrt()),
            _ => mean,
        }
    }

    /// DDIM's σ for a step t → t_prev (Song et al. 2020, eq. 16); η = 0 is deterministic.
    pub fn ddim_sigma(&self, t: usize, t_prev: Option<usize>, eta: f64) -> f64 {
        let ab = self.alpha_bar[t];
        let ab_prev = t_prev.map_or(1.0, |p| self.alpha_bar[p]);
        eta * ((1.0 - ab_prev) / (1.0 - ab) * (1.0 - ab / ab_prev)).sqrt()
    }

    /// DDIM (Song et al. 2020, eq. 12): x_prev = √ᾱ_prev x̂₀ + √(1 − ᾱ_prev − σ²) ε + σ z.
    /// x̂₀ is clipped and ε re-derived from it: large strides otherwise carry a slightly wrong ε at
    /// high t into saturated images.
    /// `t_prev` None means the step lands on x₀ (ᾱ_prev = 1).
    pub fn ddim_step(
        &self,
        x_t: Tensor<4>,
        t: usize,
        t_prev: Option<usize>,
        eps: Tensor<4>,
        eta: f64,
        z: Option<Tensor<4>>,
    ) -> Tensor<4> {
        let (ab, ab_prev) = (self.alpha_bar[t], t_prev.map_or(1.0, |p| self.alpha_bar[p]));
        let sigma = self.ddim_sigma(t, t_prev, eta);
        let x0 = self.clipped_x0(x_t.clone(), t, eps);
        // ε consistent with the clipped x̂₀: ε = (x_t − √ᾱ_t x̂₀)/√(1 − ᾱ_t).
        let eps = (x_t - x0.clone().mul_scalar(ab.sqrt())).mul_scalar(1.0 / (1.0 - ab).sqrt());
        let dir = eps.mul_scalar((1.0 - ab_prev - sigma * sigma).max(0.0).sqrt());
        let x = x0.mul_scalar(ab_prev.sqrt()) + dir;
        match z {
            Some(z) if sigma > 0.0 => x + z.mul_scalar(sigma),
            _ => x,
        }
    }
}

/// Spherical interpolation between two noise tensors of the same shape (for DDIM morphs):
/// slerp(a, b, λ) = sin((1 − λ)θ)/sin θ · a + sin(λθ)/sin θ · b, θ the angle between a and b.
pub fn slerp(a: &[f32], b: &[f32], lambda: f64) -> Vec<f32> {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let theta = (dot / (na * nb)).clamp(-1.0, 1.0).acos();
    let (wa, wb) = if theta.abs() < 1e-6 {
        (1.0 - lambda, lambda)
    } else {
        (((1.0 - lambda) * theta).sin() / theta.sin(), (lambda * theta).sin() / theta.sin())
    };
    a.iter().zip(b).map(|(x, y)| (wa * *x as f64 + wb * *y as f64) as f32).collect()
}
