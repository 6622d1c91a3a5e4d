//! The UNet's convolutions (every `Conv2d`: 3×3, its stride-2 Downsample, the 1×1 shortcuts) as
//! im2col + one matrix product per image, or for the 3×3 ones where the products are f32, by
//! Winograd's F(4×4, 3×3) ([`super::winograd`]).
//!
//! burn-flex 0.22's conv2d is slow on few cores, and its backward goes through generic
//! fallbacks (a transposed convolution, and a convolution with batch and channels swapped for
//! the weight gradient); the `gemm` crate that flex itself uses runs the same work as im2col
//! matrix products several times faster (docs/speed.md). So on flex the convolution is im2col +
//! one matrix product per image ([`super::conv2d_gemm`]), forward and backward.
//!
//! Other backends (wgpu and the other cubecl runtimes) run burn's own conv2d. Dilation and
//! groups are not used by the UNet; a layer with either falls back to burn's conv2d everywhere.

#[cfg(cube)]
use burn::backend::Cube;
#[cfg(not(target_arch = "wasm32"))]
use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Tensor, TensorData};

use super::conv2d_gemm;
use super::f32s;
use super::fused::{self, Fused};
use super::im2col::Geometry;
use super::kernel_cache::Owner;

/// `conv.forward(x)` for a [B, C, H, W] tensor.
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let padding = match conv.padding {
        PaddingConfig2d::Valid => Some(0),
        PaddingConfig2d::Explicit(top, left, bottom, right) if top == left && top == bottom && top == right => {
            Some(top)
        }
        _ => None,
    };
    let square = conv.kernel_size[0] == conv.kernel_size[1] && conv.stride[0] == conv.stride[1];
    let [_, _, h, w] = x.dims();
    match (padding, &conv.bias) {
        (Some(p), Some(bias))
            if square && conv.dilation == [1, 1] && conv.groups == 1 && h.min(w) + 2 * p >= conv.kernel_size[0] =>
        {
            Tensor::from_dispatch(<Dispatch as Conv2dGemm>::conv2d_gemm(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
                conv.stride[0],
                p,
            ))
        }
        _ => conv.forward(x),
    }
}

// The browser build has no autodiff.
#[backend_extension(Flex, Cube: cfg(cube), Autodiff: cfg(not(target_arch = "wasm32")))]
pub trait Conv2dGemm: Backend {
    /// A square-kernel convolution with bias, equal stride and padding on both axes; the
    /// default is burn's conv2d.
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), options(stride, padding))
    }
}

fn options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1)
}

#[cfg(cube)]
impl Conv2dGemm for Cube {}
#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> Conv2dGemm for Autodiff<Cube, C> {}

impl Conv2dGemm for Flex {
    fn conv2d_gemm(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, stride: usize, padding: usize) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return Self::conv2d(x, weight, Some(bias), options(stride, padding));
        }
        fused::flex(&Gemm { stride, padding, keep_kernels: true }, [x, weight, bias])
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> Conv2dGemm for Autodiff<Flex, C> {
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        if x.primitive().dtype() != DType::F32 {
            return Self::conv2d(x, weight, Some(bias), options(stride, padding));
        }
        fused::autodiff::<C, _>(Gemm { stride, padding, keep_kernels: false }, [x, weight, bias])
    }
}

/// The convolution as im2col + matrix products, for [`fused`].
#[derive(Clone, Debug)]
struct Gemm {
    stride: usize,
    padding: usize,
    /// Whether what is prepared from the weights may be kept for later calls with the same
    /// weights ([`super::kernel_cache`]): on plain flex (inference), where the weights persist from
    /// call to call, not under autodiff, where every optimiser step rewrites them.
    keep_kernels: bool,
}

impl Fused for Gemm {
    const NAME: &'static str = "conv2d";

    fn forward(&self, [x, weight, bias]: [&FlexTensor; 3]) -> TensorData {
        let g = Geometry::new(&x.shape(), &weight.shape(), self.stride, self.padding);
        let owner = self.keep_kernels.then(|| {
            let shape = weight.shape();
            Owner::new(&weight.data_arc(), weight.layout().start_offset(), [shape[0], shape[1]])
        });
        TensorData::new(conv2d_gemm::forward(&g, f32s(x), f32s(weight), f32s(bias), owner), g.out_shape())
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn backward(&self, [x, weight, _]: [&FlexTensor; 3], d_out: &FlexTensor) -> [Vec<f32>; 3] {
        let g = Geometry::new(&x.shape(), &weight.shape(), self.stride, self.padding);
        let (dx, dw, db) = conv2d_gemm::backward(&g, f32s(x), f32s(weight), f32s(d_out));
        [dx, dw, db]
    }
}
