//! The diffusion process of Ho et al. 2020 (arXiv 2006.11239), with steps numbered 0..T−1
//! (step t here is the paper's t + 1, as in labml's code).
//!
//! Schedule constants are computed once in f64 on the host; each operation uploads the few
//! coefficients it needs, so the maths is identical on every backend.

use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::images::DataRange;
use crate::limits;
use crate::noise::Noise;
use crate::unet::{ClassMix, UNet};

/// What ε_θ is trained to predict at x_t.
pub enum Target {
    /// The noise ε that made x_t (eq. 14): training.
    Noise,
    /// A guided teacher's ε̃ at the same x_t for each item's w ([`Diffusion::guided_teacher`],
    /// x_t from the same x₀, t and ε):
    /// Meng et al.'s first stage of distillation, in ε-space.
    Teacher { eps_tilde: Tensor<4>, w: Vec<f32> },
}

/// The noise schedule: β_t linear from `beta_start` to `beta_end` over `steps` = T steps (§4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    pub steps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    /// The interval of the data x₀ (weights format 4): the paper's [−1, 1] unless a model was
    /// trained on another (an imported labml model: [0, 1]).
    #[serde(default, skip_serializing_if = "DataRange::is_paper")]
    pub data_range: DataRange,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        Self { steps: 1000, beta_start: 1e-4, beta_end: 0.02, data_range: DataRange::PAPER }
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
    /// mode, its dropout masks drawn from `dropout`. A distilled student regresses onto its
    /// teacher's guided prediction at the same x_t instead of ε ([`Target::Teacher`]).
    #[allow(clippy::too_many_arguments)]
    pub fn loss(
        &self,
        eps_theta: &UNet,
        x0: Tensor<4>,
        t: &[usize],
        classes: Option<&[usize]>,
        eps: Tensor<4>,
        target: Target,
        dropout: &mut Noise,
    ) -> Tensor<1> {
        let device = x0.device();
        let x_t = self.q_sample(x0, t, eps.clone());
        let (target, w) = match target {
            Target::Noise => (eps, None),
            Target::Teacher { eps_tilde, w } => (eps_tilde, Some(w)),
        };
        let pred = eps_theta.forward_train(x_t, self.t_tensor_items(t, &device), classes, w.as_deref(), dropout);
        (target - pred).square().mean()
    }

    /// The guided teacher's prediction at each item's x_t: ε̃ = ε(x_t, ∅) + w·(ε(x_t, c) − ε(x_t, ∅))
    /// (eq. 6 of Ho & Salimans, w per item, c = ∅ where the class was dropped), from one stacked
    /// pass of the teacher run by `forward`.
    pub fn guided_teacher(
        &self,
        x_t: Tensor<4>,
        t: &[usize],
        classes: &[usize],
        null: usize,
        w: &[f32],
        forward: impl FnOnce(Tensor<4>, Tensor<1>, Vec<ClassMix>) -> Tensor<4>,
    ) -> Tensor<4> {
        let device = x_t.device();
        let b = t.len();
        let t = self.t_tensor_items(t, &device);
        let stacked: Vec<ClassMix> =
            classes.iter().map(|&c| c.into()).chain(std::iter::repeat_n(null.into(), b)).collect();
        let both = forward(Tensor::cat(vec![x_t.clone(), x_t], 0), Tensor::cat(vec![t.clone(), t], 0), stacked);
        let (cond, uncond) = (both.clone().narrow(0, 0, b), both.narrow(0, b, b));
        uncond.clone() + (cond - uncond) * Self::per_item(w.to_vec(), &device)
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

    /// x̂₀ clipped to the data range ([−1, 1] for the paper), as the paper's own code does before
    /// forming a mean (every solver in [`crate::solvers`] updates from it): at high t,
    /// x̂₀ = (x_t − …)/√ᾱ_t amplifies a slightly wrong ε ~150× past any image.
    pub fn clipped_x0(&self, x_t: Tensor<4>, t: usize, eps: Tensor<4>) -> Tensor<4> {
        let range = self.config.data_range;
        self.predict_x0(x_t, t, eps).clamp(range.lo, range.hi)
    }

    /// The ε with which one unclipped DDIM η = 0 step (Song et al. eq. 12) takes `x_t` to `x_s`
    /// at step `s` < t (None: x₀, ᾱ = 1): from x_s = √ᾱ_s x̂₀ + √(1 − ᾱ_s) ε and
    /// x̂₀ = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t,
    /// ε = (x_s − √(ᾱ_s/ᾱ_t) x_t) / (√(1 − ᾱ_s) − √(ᾱ_s(1 − ᾱ_t)/ᾱ_t)),
    /// Salimans & Ho's distillation target (arXiv 2202.00512, Algorithm 2) in ε-space. The
    /// denominator is below zero wherever s < t (the SNR rises as t falls).
    pub fn eps_for_step(&self, x_t: Tensor<4>, t: usize, x_s: Tensor<4>, s: Option<usize>) -> Tensor<4> {
        let (ab_t, ab_s) = (self.alpha_bar[t], s.map_or(1.0, |s| self.alpha_bar[s]));
        let denominator = (1.0 - ab_s).sqrt() - (ab_s * (1.0 - ab_t) / ab_t).sqrt();
        (x_s - x_t.mul_scalar((ab_s / ab_t).sqrt())).mul_scalar(1.0 / denominator)
    }

    /// Where this model's x₀ lives, for the pictures in and out.
    pub fn data_range(&self) -> DataRange {
        self.config.data_range
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
