//! The transposed convolution on flex (the UNet's Upsample, 4×4 with stride 2) as the adjoint of
//! a convolution: y = col2im(Wᵀ · x) + b forward, one im2col and two matrix products backward
//! ([`conv_im2col::transposed`]).
//!
//! burn-flex 0.22 runs a transposed convolution several times slower than a 3×3 convolution of
//! as many output pixels, and its backward through generic 3-d fallbacks (docs/speed.md).

use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

use super::conv_im2col;
use super::flex_op::{FlexOp, f32s};
use super::geometry::Geometry;

/// The transposed convolution as the adjoint of the convolution `.0` (worked out once, when the
/// call is taken).
#[derive(Clone, Debug)]
pub(super) struct ConvTranspose2d(pub Geometry);

impl FlexOp for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "conv_transpose2d"
    }

    fn forward(&self, [x, weight, bias]: [&FlexTensor; 3]) -> TensorData {
        let g = &self.0;
        let y = conv_im2col::transposed(g, f32s(x), f32s(weight), f32s(bias));
        TensorData::new(y, [g.batch, g.c_in, g.h, g.w])
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn backward(&self, [x, weight, _]: [&FlexTensor; 3], d_y: &FlexTensor) -> [Vec<f32>; 3] {
        conv_im2col::transposed_backward(&self.0, f32s(x), f32s(weight), f32s(d_y))
    }
}
