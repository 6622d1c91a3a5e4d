//! The forward process at one t, and what the network makes of it: the paper's first picture for
//! a reader. For an example x₀ and a fixed ε,
//!
//!   x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε  (eq. 4),  ε̂ = ε_θ(x_t, t),
//!   x̂₀ = (x_t − √(1 − ᾱ_t) ε̂) / √ᾱ_t  (eq. 15 rearranged),  L = ‖ε − ε̂‖² (eq. 14, the mean),
//!
//! and the schedule those t walk through. Our t is the paper's t − 1: our t = 0 is its t = 1.

use std::ops::Range;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::diffusion::Diffusion;
use crate::field_error::FieldError;
use crate::guidance::Guidance;
use crate::noise::Noise;
use crate::request::{Model, drawing_pixels};
use crate::unet::UNet;

/// One look at the forward process: the example (RGBA pixels, as the page's canvases hold them,
/// mapped to the data range as a drawing is), the step t, the seed of ε, and for a
/// class-conditional model the example's own class (None: ∅). Unguided: the panel shows what
/// the network was trained to predict.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardRequest {
    #[serde(with = "serde_bytes")]
    pub rgba: Vec<u8>,
    pub t: usize,
    pub seed: u64,
    #[serde(default)]
    pub class: Option<usize>,
}

/// What the panel draws and prints.
pub struct ForwardView {
    pub x0: Tensor<4>,
    pub eps: Tensor<4>,
    pub x_t: Tensor<4>,
    pub eps_hat: Tensor<4>,
    pub x0_hat: Tensor<4>,
    /// ‖ε − ε̂‖² averaged over the pixels, as a tensor: the page reads it asynchronously (a
    /// synchronous read panics on WebGPU).
    pub loss: Tensor<1>,
    pub alpha_bar: f64,
}

impl ForwardRequest {
    /// x₀ (the example in the model's data range) and ε, after checking the request as every
    /// request is checked (`Model::check_t`, `Guidance::class`).
    fn x0_and_eps(&self, model: &Model) -> Result<(Tensor<4>, Tensor<4>), FieldError> {
        let ([c, size, _], device) = (model.image, model.device);
        let pixels = drawing_pixels(&self.rgba, c, size, model.diffusion.data_range())
            .map_err(|e| FieldError::new("rgba", e))?;
        model.check_t(self.t)?;
        if let Some(k) = self.class {
            Guidance::class(k, 1.0, model.num_classes)?;
        }
        let x0 = Tensor::<4>::from_data(TensorData::new(pixels, [1, c, size, size]), device);
        let eps = Noise::new(self.seed).gaussian([1, c, size, size], device);
        Ok((x0, eps))
    }

    /// ε_θ(x_t, t) for a batch of x_t at the steps `t`, with the example's class (None: ∅).
    fn eps_hat(&self, unet: &UNet, model: &Model, x_t: Tensor<4>, t: &[usize]) -> Tensor<4> {
        let t_tensor = model.diffusion.t_tensor_items(t, model.device);
        match self.class {
            Some(k) => unet.forward_class(x_t, t_tensor, &vec![k; t.len()]),
            None => unet.forward(x_t, t_tensor),
        }
    }

    /// The view of `unet` (described by `model`) for this request: one network evaluation.
    pub fn view(&self, unet: &UNet, model: &Model) -> Result<ForwardView, FieldError> {
        let diffusion = model.diffusion;
        let (x0, eps) = self.x0_and_eps(model)?;
        let x_t = diffusion.q_sample(x0.clone(), &[self.t], eps.clone());
        let eps_hat = self.eps_hat(unet, model, x_t.clone(), &[self.t]);
        let x0_hat = diffusion.predict_x0(x_t.clone(), self.t, eps_hat.clone());
        let loss = (eps.clone() - eps_hat.clone()).square().mean();
        Ok(ForwardView { x0, eps, x_t, eps_hat, x0_hat, loss, alpha_bar: diffusion.alpha_bar[self.t] })
    }

    /// The loss-versus-t curve of this example and ε: L_t = ‖ε − ε_θ(x_t, t)‖² (eq. 14, the
    /// mean over pixels) at the [`LOSS_CURVE_POINTS`] steps of [`loss_curve_steps`], or at the
    /// part `points` of them, one batch of that many evaluations (the request's own t is checked,
    /// not used). On the CPU the page asks for it a few points at a time, so that no one pass
    /// holds its worker for long. Where the loss is high the network's task is hard: near t = 0 the noise
    /// is a faint residue of x_t, near T the image is.
    pub fn loss_curve(&self, unet: &UNet, model: &Model, points: Range<usize>) -> Result<LossCurve, FieldError> {
        if points.is_empty() || points.end > LOSS_CURVE_POINTS {
            return Err(FieldError::new(
                "points",
                format!("points {points:?} are not a part of the curve's 0..{LOSS_CURVE_POINTS}"),
            ));
        }
        let (x0, eps) = self.x0_and_eps(model)?;
        let t = loss_curve_steps(model.diffusion, LOSS_CURVE_POINTS)[points].to_vec();
        let n = t.len();
        let eps = eps.repeat_dim(0, n);
        let x_t = model.diffusion.q_sample(x0.repeat_dim(0, n), &t, eps.clone());
        let eps_hat = self.eps_hat(unet, model, x_t, &t);
        let loss = (eps - eps_hat).square().mean_dims(&[1, 2, 3]).reshape([n]);
        Ok(LossCurve { t, loss })
    }
}

/// How many t the loss-versus-t curve samples (issue 50: 20, one batch).
pub const LOSS_CURVE_POINTS: usize = 20;

/// [`ForwardRequest::loss_curve`]: the steps and, as a tensor read asynchronously by the page,
/// the loss at each.
pub struct LossCurve {
    pub t: Vec<usize>,
    pub loss: Tensor<1>,
}

/// The schedule as the panel draws it, one value per t: β_t, √ᾱ_t (the signal's factor),
/// √(1 − ᾱ_t) (the noise's) and the signal-to-noise ratio ᾱ_t / (1 − ᾱ_t).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ScheduleCurves {
    pub beta: Vec<f64>,
    pub sqrt_alpha_bar: Vec<f64>,
    pub sqrt_one_minus_alpha_bar: Vec<f64>,
    pub snr: Vec<f64>,
}

impl ScheduleCurves {
    pub fn of(diffusion: &Diffusion) -> Self {
        let ab = &diffusion.alpha_bar;
        Self {
            beta: diffusion.beta.clone(),
            sqrt_alpha_bar: ab.iter().map(|a| a.sqrt()).collect(),
            sqrt_one_minus_alpha_bar: ab.iter().map(|a| (1.0 - a).sqrt()).collect(),
            snr: ab.iter().map(|a| a / (1.0 - a)).collect(),
        }
    }
}

/// The t of the loss-versus-t curve: `points` values spread evenly over 0..T−1, both ends in.
pub fn loss_curve_steps(diffusion: &Diffusion, points: usize) -> Vec<usize> {
    let last = diffusion.steps() - 1;
    let points = points.max(2);
    (0..points).map(|i| (i * last + (points - 1) / 2) / (points - 1)).collect()
}
