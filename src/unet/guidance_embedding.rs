//! A distilled student's input for the guidance strength w (Meng et al. 2023, "On Distillation
//! of Guided Diffusion Models", §3.1: the student takes w as an input, so that one pass
//! replaces classifier-free guidance's two): w embedded as t is (sinusoids, then two linear
//! layers with a Swish between) and added to the time embedding, as the class embedding is.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor, TensorData};

use super::blocks::sinusoidal_embedding;

/// w is multiplied by this before its sinusoids: the time embedding's frequencies are made
/// for t in 0..1000, and the page's w spans 0..20, so w·50 spreads it over the same range.
pub const W_SCALE: f32 = 50.0;

/// The factor on the embedding where it joins the time embedding, for the reason of
/// [`super::CLASS_EMB_GAIN`]: `lin2` starts at zero (the student starts as its teacher) and
/// Adam moves it by about the learning rate per step, too slowly for a short distillation;
/// the gain gives this one path ten times the network's rate.
pub const W_EMB_GAIN: f32 = 10.0;

#[derive(Module, Debug)]
pub struct GuidanceEmbedding {
    lin1: Linear,
    lin2: Linear,
}

impl GuidanceEmbedding {
    /// `lin2` starts at zero: a student made from its teacher ([`super::UNet::with_guidance_input`])
    /// starts as the teacher's conditional prediction, whatever w.
    pub fn new(dim: usize, device: &Device) -> Self {
        let mut lin2 = LinearConfig::new(dim, dim).init(device);
        lin2.weight = Param::from_tensor(Tensor::zeros([dim, dim], device));
        lin2.bias = Some(Param::from_tensor(Tensor::zeros([dim], device)));
        Self { lin1: LinearConfig::new(dim / 4, dim).init(device), lin2 }
    }

    /// The embedding of each item's w times [`W_EMB_GAIN`], [B, dim].
    pub fn forward(&self, w: &[f32], device: &Device) -> Tensor<2> {
        let dim = self.lin1.weight.dims()[0];
        let w: Vec<f32> = w.iter().map(|w| w * W_SCALE).collect();
        let w = Tensor::<1>::from_data(TensorData::new(w.clone(), [w.len()]), device);
        self.lin2.forward(silu(self.lin1.forward(sinusoidal_embedding(w, dim)))).mul_scalar(W_EMB_GAIN)
    }

    /// Floating-point operations per image: the two linear layers.
    pub fn flops(&self) -> f64 {
        2.0 * (self.lin1.weight.dims().iter().product::<usize>() + self.lin2.weight.dims().iter().product::<usize>())
            as f64
    }
}
