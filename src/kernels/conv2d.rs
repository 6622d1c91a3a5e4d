//! The convolution on flex (every `Conv2d` of the UNet: 3×3, its stride-2 Downsample, the 1×1
//! shortcuts), forward and backward, and which algorithm computes it: Winograd's F(4×4, 3×3)
//! ([`winograd`]) for the 3×3 "same" convolutions whose products run in f32, im2col + one matrix
//! product per image ([`conv_im2col`]) for the rest.
//!
//! burn-flex 0.22's conv2d is slow on few cores, and its backward goes through generic
//! fallbacks (a transposed convolution, and a convolution with batch and channels swapped for
//! the weight gradient); the `gemm` crate that flex itself uses runs the same work as im2col
//! matrix products several times faster, and Winograd cuts the 3×3 products' flops by 4
//! (docs/speed.md).

use burn::backend::TensorMetadata;
use burn::backend::flex::FlexTensor;
use burn::tensor::TensorData;

use super::conv_im2col;
use super::flex_op::{FlexOp, f32s};
use super::gemm::reads_image;
use super::geometry::Geometry;
use super::kernel_cache::Owner;
use super::winograd;

/// A convolution with bias, square kernel, equal stride and padding on both axes.
#[derive(Clone, Debug)]
pub(super) struct Conv2d {
    pub stride: usize,
    pub padding: usize,
    /// Whether what is prepared from the weights may be kept for later calls with the same
    /// weights ([`super::kernel_cache`]): on plain flex (inference), not under autodiff.
    pub keep_kernels: bool,
}

/// Whether Winograd computes `g`: a convolution it applies to, where the products run in f32.
/// On CPUs with AMX the im2col products run on the tile units instead, reading the image itself
/// (docs/speed.md). The backward pass's ∂x is a "same" convolution too, by the adjoint kernel,
/// so the same test decides it.
fn by_winograd(g: &Geometry) -> bool {
    winograd::applies(g) && !reads_image(g)
}

impl FlexOp for Conv2d {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn forward(&self, [x, weight, bias]: [&FlexTensor; 3]) -> TensorData {
        let g = Geometry::new(&x.shape(), &weight.shape(), self.stride, self.padding);
        let (x, w, b) = (f32s(x), f32s(weight), f32s(bias));
        let out = if by_winograd(&g) {
            let owner = self.keep_kernels.then(|| {
                let shape = weight.shape();
                Owner::new(&weight.data_arc(), weight.layout().start_offset(), [shape[0], shape[1]])
            });
            winograd::forward(&g, x, w, Some(b), owner)
        } else {
            conv_im2col::forward(&g, x, w, b)
        };
        TensorData::new(out, g.out_shape())
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn backward(&self, [x, weight, _]: [&FlexTensor; 3], d_out: &FlexTensor) -> [Vec<f32>; 3] {
        let g = Geometry::new(&x.shape(), &weight.shape(), self.stride, self.padding);
        let (x, w, d_out) = (f32s(x), f32s(weight), f32s(d_out));
        if by_winograd(&g) { winograd::backward(&g, x, w, d_out) } else { conv_im2col::backward(&g, x, w, d_out) }
    }
}
