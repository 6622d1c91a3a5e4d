//! The UNet's Upsample (a 4×4 transposed convolution, stride 2) as the adjoint of a
//! convolution: y = col2im(Wᵀ · x) + b forward, one im2col and two matrix products backward
//! ([`super::conv2d_gemm::transposed`]).
//!
//! burn-flex 0.22 runs a transposed convolution several times slower than a 3×3 convolution
//! of as many output pixels, and its backward through generic 3-d fallbacks: the two
//! Upsamples took about a tenth of a training step (docs/speed.md). Other backends run burn's
//! own conv_transpose2d; dilation, groups and output padding (unused by the UNet) fall back to
//! it everywhere.

#[cfg(cube)]
use burn::backend::Cube;
#[cfg(not(target_arch = "wasm32"))]
use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::{ConvTransposeOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::nn::conv::ConvTranspose2d;
use burn::tensor::{DType, Tensor, TensorData};

use super::conv2d_gemm;
use super::f32s;
use super::fused::{self, Fused};
use super::im2col::Geometry;

/// `conv.forward(x)` for a [B, C, H, W] tensor.
pub fn conv_transpose2d(conv: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    let [k, stride, padding] = [conv.kernel_size, conv.stride, conv.padding];
    let square = k[0] == k[1] && stride[0] == stride[1] && padding[0] == padding[1];
    match &conv.bias {
        Some(bias) if square && conv.padding_out == [0, 0] && conv.dilation == [1, 1] && conv.groups == 1 => {
            Tensor::from_dispatch(<Dispatch as ConvTranspose2dGemm>::conv_transpose2d_gemm(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
                stride[0],
                padding[0],
            ))
        }
        _ => conv.forward(x),
    }
}

// The browser build has no autodiff.
#[backend_extension(Flex, Cube: cfg(cube), Autodiff: cfg(not(target_arch = "wasm32")))]
pub trait ConvTranspose2dGemm: Backend {
    /// A square-kernel transposed convolution with bias, equal stride and padding on both
    /// axes; the default is burn's conv_transpose2d.
    fn conv_transpose2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::conv_transpose2d(x, weight, Some(bias), options(stride, padding))
    }
}

fn options(stride: usize, padding: usize) -> ConvTransposeOptions<2> {
    ConvTransposeOptions::new([stride; 2], [padding; 2], [0, 0], [1, 1], 1)
}

/// The convolution whose adjoint this call is, when the hand-written kernels take it: f32,
/// and an output of at least one pixel (else burn's op reports the error).
fn geometry(x: &FlexTensor, weight: &FlexTensor, stride: usize, padding: usize) -> Option<Geometry> {
    (x.dtype() == DType::F32).then(|| Geometry::transposed(&x.shape(), &weight.shape(), stride, padding)).flatten()
}

#[cfg(cube)]
impl ConvTranspose2dGemm for Cube {}
#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> ConvTranspose2dGemm for Autodiff<Cube, C> {}

impl ConvTranspose2dGemm for Flex {
    fn conv_transpose2d_gemm(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        stride: usize,
        padding: usize,
    ) -> FlexTensor {
        match geometry(&x, &weight, stride, padding) {
            Some(g) => fused::flex(&TransposedGemm(g), [x, weight, bias]),
            None => Self::conv_transpose2d(x, weight, Some(bias), options(stride, padding)),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> ConvTranspose2dGemm for Autodiff<Flex, C> {
    fn conv_transpose2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        match geometry(x.primitive(), weight.primitive(), stride, padding) {
            Some(g) => fused::autodiff::<C, _>(TransposedGemm(g), [x, weight, bias]),
            None => Self::conv_transpose2d(x, weight, Some(bias), options(stride, padding)),
        }
    }
}

/// The transposed convolution as the adjoint of the convolution `.0` (worked out once, when the
/// call is taken), for [`fused`].
#[derive(Clone, Debug)]
struct TransposedGemm(Geometry);

impl Fused for TransposedGemm {
    const NAME: &'static str = "conv_transpose2d";

    fn forward(&self, [x, weight, bias]: [&FlexTensor; 3]) -> TensorData {
        let g = &self.0;
        let y = conv2d_gemm::transposed(g, f32s(x), f32s(weight), f32s(bias));
        TensorData::new(y, [g.batch, g.c_in, g.h, g.w])
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn backward(&self, [x, weight, _]: [&FlexTensor; 3], d_y: &FlexTensor) -> [Vec<f32>; 3] {
        let (dx, dw, db) = conv2d_gemm::transposed_backward(&self.0, f32s(x), f32s(weight), f32s(d_y));
        [dx, dw, db]
    }
}
