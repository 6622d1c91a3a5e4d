//! Which backend runs what, written once for the three operations: one burn backend extension,
//! [`HandWritten`], whose default is burn's own ops (wgpu and the other cubecl runtimes, and any
//! call the kernels do not take), and whose flex implementations, plain and under autodiff, run
//! the hand-written kernels through [`flex_op`] when [`Kernel::take`] accepts the call.
//!
//! This is the only file that names a backend.

#[cfg(cube)]
use burn::backend::Cube;
#[cfg(not(target_arch = "wasm32"))]
use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::{ConvOptions, ConvTransposeOptions};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata, backend_extension};
use burn::tensor::{DType, TensorData};

use super::conv_transpose2d::ConvTranspose2d;
use super::conv2d::Conv2d;
use super::flex_op::{self, FlexOp};
use super::geometry::Geometry;
use super::group_norm_swish::{GroupNormSwish, composed};

/// An operation on (x, a weight-like, a bias-like tensor) with its parameters: what the model
/// asks for, before any backend or algorithm is chosen.
#[derive(Clone, Copy, Debug)]
pub enum Op {
    /// A square-kernel convolution with bias, equal stride and padding on both axes.
    Conv2d { stride: usize, padding: usize },
    /// The same for a transposed convolution, without output padding.
    ConvTranspose2d { stride: usize, padding: usize },
    /// Swish(γ·x̂ + β) after GroupNorm over `groups` groups.
    GroupNormSwish { groups: usize, epsilon: f64 },
}

impl Op {
    /// The operation by burn's own (differentiable) ops on any backend: the reference the
    /// kernels are tested against, and what runs wherever they do not.
    fn by_burn<B: Backend>(self, x: FloatTensor<B>, a: FloatTensor<B>, b: FloatTensor<B>) -> FloatTensor<B> {
        match self {
            Op::Conv2d { stride, padding } => {
                B::conv2d(x, a, Some(b), ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1))
            }
            Op::ConvTranspose2d { stride, padding } => {
                let options = ConvTransposeOptions::new([stride; 2], [padding; 2], [0, 0], [1, 1], 1);
                B::conv_transpose2d(x, a, Some(b), options)
            }
            Op::GroupNormSwish { groups, epsilon } => composed::<B>(x, a, b, groups, epsilon),
        }
    }
}

// The browser build has no autodiff.
#[backend_extension(Flex, Cube: cfg(cube), Autodiff: cfg(not(target_arch = "wasm32")))]
pub trait HandWritten: Backend {
    /// `op` on (x, a, b); by default burn's own ops.
    fn hand_written(op: Op, x: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        op.by_burn::<Self>(x, a, b)
    }
}

#[cfg(cube)]
impl HandWritten for Cube {}
#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> HandWritten for Autodiff<Cube, C> {}

impl HandWritten for Flex {
    fn hand_written(op: Op, x: FlexTensor, a: FlexTensor, b: FlexTensor) -> FlexTensor {
        // Plain flex is inference: the weights persist from call to call, so what a kernel
        // prepares from them may be kept.
        match Kernel::take(op, &x, &a, true) {
            Some(kernel) => flex_op::run(&kernel, [x, a, b]),
            None => op.by_burn::<Self>(x, a, b),
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> HandWritten for Autodiff<Flex, C> {
    fn hand_written(op: Op, x: FloatTensor<Self>, a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        // Under autodiff every optimiser step rewrites the weights: nothing is kept.
        match Kernel::take(op, x.primitive(), a.primitive(), false) {
            Some(kernel) => flex_op::run_autodiff::<C, _>(kernel, [x, a, b]),
            None => op.by_burn::<Self>(x, a, b),
        }
    }
}

/// A call the hand-written kernels take.
#[derive(Clone, Debug)]
enum Kernel {
    Conv2d(Conv2d),
    ConvTranspose2d(ConvTranspose2d),
    GroupNormSwish(GroupNormSwish),
}

impl Kernel {
    /// The kernel for `op` on x and the weight-like `a`, if the kernels take it: f32 (the
    /// kernels compute in f32 only), and for a transposed convolution an output of at least one
    /// pixel (else burn's op reports the error). `keep_kernels`: whether what is prepared from
    /// the weights may be kept for later calls with the same weights.
    fn take(op: Op, x: &FlexTensor, a: &FlexTensor, keep_kernels: bool) -> Option<Self> {
        if x.dtype() != DType::F32 {
            return None;
        }
        Some(match op {
            Op::Conv2d { stride, padding } => Kernel::Conv2d(Conv2d { stride, padding, keep_kernels }),
            Op::ConvTranspose2d { stride, padding } => {
                Kernel::ConvTranspose2d(ConvTranspose2d(Geometry::transposed(&x.shape(), &a.shape(), stride, padding)?))
            }
            Op::GroupNormSwish { groups, epsilon } => Kernel::GroupNormSwish(GroupNormSwish { groups, epsilon }),
        })
    }
}

impl FlexOp for Kernel {
    fn name(&self) -> &'static str {
        match self {
            Kernel::Conv2d(k) => k.name(),
            Kernel::ConvTranspose2d(k) => k.name(),
            Kernel::GroupNormSwish(k) => k.name(),
        }
    }

    fn forward(&self, inputs: [&FlexTensor; 3]) -> TensorData {
        match self {
            Kernel::Conv2d(k) => k.forward(inputs),
            Kernel::ConvTranspose2d(k) => k.forward(inputs),
            Kernel::GroupNormSwish(k) => k.forward(inputs),
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn backward(&self, inputs: [&FlexTensor; 3], d_out: &FlexTensor) -> [Vec<f32>; 3] {
        match self {
            Kernel::Conv2d(k) => k.backward(inputs, d_out),
            Kernel::ConvTranspose2d(k) => k.backward(inputs, d_out),
            Kernel::GroupNormSwish(k) => k.backward(inputs, d_out),
        }
    }
}
