//! Classifier-free guidance (Ho & Salimans 2022, eq. 6): one network trained with and without
//! its class label gives ε̃ = ε_θ(x_t, ∅) + w·(ε_θ(x_t, c) − ε_θ(x_t, ∅)); w = 0 is the
//! unconditional model, w = 1 the conditional one, w > 1 trades diversity for fidelity to c.
//! Both predictions come from one pass over the batch stacked twice.

use burn::tensor::Tensor;

use crate::sampler::EpsTheta;
use crate::unet::UNet;

/// Which class to draw and how strongly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Guidance {
    pub class: usize,
    /// w of eq. 6.
    pub w: f64,
}

/// The largest guidance strength the CLI and the page accept.
pub const MAX_GUIDANCE: f64 = 20.0;

impl Guidance {
    /// Checks the request against a model's classes (None: unconditional).
    pub fn check(&self, num_classes: Option<usize>) -> Result<(), String> {
        let n = num_classes.ok_or("this model is unconditional: it has no classes to guide towards")?;
        if self.class >= n {
            return Err(format!("class {} is outside 0..{n} of this model", self.class));
        }
        if !(0.0..=MAX_GUIDANCE).contains(&self.w) {
            return Err(format!("guidance {} must be in [0, {MAX_GUIDANCE}]", self.w));
        }
        Ok(())
    }

    /// The batch stacked twice with t, and the classes: c for the first half, ∅ (`null`) for
    /// the second.
    pub fn stack(&self, x_t: Tensor<4>, t: Tensor<1>, null: usize) -> (Tensor<4>, Tensor<1>, Vec<usize>) {
        let b = x_t.dims()[0];
        let classes = [vec![self.class; b], vec![null; b]].concat();
        (Tensor::cat(vec![x_t.clone(), x_t], 0), Tensor::cat(vec![t.clone(), t], 0), classes)
    }

    /// Eq. 6 from the stacked prediction [ε(c); ε(∅)].
    pub fn combine(&self, eps: Tensor<4>) -> Tensor<4> {
        let b = eps.dims()[0] / 2;
        let (cond, uncond) = (eps.clone().narrow(0, 0, b), eps.narrow(0, b, b));
        uncond.clone() + (cond - uncond).mul_scalar(self.w)
    }
}

/// A UNet guided towards a class (or, without guidance, the UNet itself): what the page samples
/// with; natively `threads::Sharded` does the same on several threads.
pub struct Guided<'a> {
    pub model: &'a UNet,
    pub guidance: Option<Guidance>,
}

impl EpsTheta for Guided<'_> {
    fn eps(&self, x_t: Tensor<4>, t: Tensor<1>) -> Tensor<4> {
        match (self.guidance, self.model.num_classes()) {
            (Some(g), Some(null)) => {
                let (x, t, classes) = g.stack(x_t, t, null);
                g.combine(self.model.forward_class(x, t, &classes))
            }
            _ => self.model.forward(x_t, t),
        }
    }
}
