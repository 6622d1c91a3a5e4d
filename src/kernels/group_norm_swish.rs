//! GroupNorm followed by Swish, the pair that opens every residual block and ends the UNet
//! (labml's `act(norm(x))`), as one operation.
//!
//! Composed from tensor ops, the pair reads and writes each activation about ten times and
//! evaluates σ with a scalar `expf` per element (the timings: docs/speed.md, `cargo run --release
//! --example profile`). So:
//! * flex gets two hand-written passes per group (statistics, then normalise + affine + Swish,
//!   σ from a polynomial eˣ that vectorises, with AVX-512 or AVX2 where the CPU has them) and, under
//!   autodiff, a fused backward of three more;
//! * every other backend (wgpu and the other cubecl runtimes) runs the same maths composed from
//!   burn's ops, differentiated by burn's autodiff.
//!
//! With x̂ = (x − μ_g)/√(σ²_g + ε), y = γ_c x̂ + β_c and out = y·σ(y):
//! * ∂out/∂y = σ(y)(1 + y(1 − σ(y)));
//! * ∂L/∂γ_c = Σ dy·x̂, ∂L/∂β_c = Σ dy, and with g = γ_c dy over the m elements of a group,
//!   ∂L/∂x = (g − mean(g) − x̂·mean(g x̂)) / √(σ²_g + ε).

#[cfg(cube)]
use burn::backend::Cube;
#[cfg(not(target_arch = "wasm32"))]
use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Dispatch, TensorMetadata, backend_extension};
use burn::nn::GroupNorm;
use burn::tensor::activation::silu;
use burn::tensor::{DType, Shape, Tensor, TensorData};

use super::f32s;
use super::fused::{self, Fused};
use super::group_norm_swish_loops as loops;

/// `swish(norm(x))` for a [B, C, H, W] tensor (fused when the norm is affine, as the UNet's are).
pub fn group_norm_swish(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return silu(norm.forward(x));
    };
    let (gamma, beta) = (gamma.val(), beta.val());
    Tensor::from_dispatch(<Dispatch as GroupNormSwish>::group_norm_swish(
        x.into_dispatch(),
        gamma.into_dispatch(),
        beta.into_dispatch(),
        norm.num_groups,
        norm.epsilon,
    ))
}

// The browser build has no autodiff.
#[backend_extension(Flex, Cube: cfg(cube), Autodiff: cfg(not(target_arch = "wasm32")))]
pub trait GroupNormSwish: Backend {
    /// Swish(γ·x̂ + β); the default composes burn's differentiable ops.
    fn group_norm_swish(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        composed::<Self>(x, gamma, beta, groups, epsilon)
    }
}

/// The reference: burn's GroupNorm, then x·σ(x).
fn composed<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    groups: usize,
    epsilon: f64,
) -> FloatTensor<B> {
    let shape = x.shape();
    let (n, c) = (shape[0], shape[1]);
    let per_group = shape.num_elements() / (n * groups);
    let x = B::float_reshape(x, Shape::new([n, groups, per_group]));
    let centred = B::float_sub(x.clone(), B::float_mean_dim(x, 2));
    let var = B::float_mean_dim(B::float_mul(centred.clone(), centred.clone()), 2);
    let x_hat = B::float_div(centred, B::float_sqrt(B::float_add_scalar(var, epsilon.into())));
    let affine = Shape::new([1, c, 1, 1]);
    let y = B::float_add(
        B::float_mul(B::float_reshape(x_hat, shape), B::float_reshape(gamma, affine.clone())),
        B::float_reshape(beta, affine),
    );
    B::float_mul(y.clone(), B::sigmoid(y))
}

#[cfg(cube)]
impl GroupNormSwish for Cube {}
#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> GroupNormSwish for Autodiff<Cube, C> {}

impl GroupNormSwish for Flex {
    fn group_norm_swish(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, groups: usize, epsilon: f64) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return composed::<Self>(x, gamma, beta, groups, epsilon);
        }
        fused::flex(&Loops { groups, epsilon }, [x, gamma, beta])
    }
}

/// Autodiff over flex: the fused forward, and a fused backward that recomputes x̂ and y from the
/// checkpointed x rather than keeping them.
#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> GroupNormSwish for Autodiff<Flex, C> {
    fn group_norm_swish(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        if x.primitive().dtype() != DType::F32 {
            return composed::<Self>(x, gamma, beta, groups, epsilon);
        }
        fused::autodiff::<C, _>(Loops { groups, epsilon }, [x, gamma, beta])
    }
}

/// The hand-written loops, for [`fused`].
#[derive(Clone, Debug)]
struct Loops {
    groups: usize,
    epsilon: f64,
}

/// H·W of a [B, C, H, W] shape.
fn spatial(shape: &Shape) -> usize {
    shape.num_elements() / (shape[0] * shape[1])
}

impl Fused for Loops {
    const NAME: &'static str = "group_norm_swish";

    fn forward(&self, [x, gamma, beta]: [&FlexTensor; 3]) -> TensorData {
        let shape = x.shape();
        let mut out = Vec::new();
        let (hw, eps) = (spatial(&shape), self.epsilon as f32);
        loops::forward(f32s(x), f32s(gamma), f32s(beta), hw, self.groups, eps, &mut out);
        TensorData::new(out, shape)
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn backward(&self, [x, gamma, beta]: [&FlexTensor; 3], d_out: &FlexTensor) -> [Vec<f32>; 3] {
        let (x_shape, channels) = (x.shape(), gamma.shape().num_elements());
        let mut dx = vec![0.0f32; x_shape.num_elements()];
        let (mut dgamma, mut dbeta) = (vec![0.0f32; channels], vec![0.0f32; channels]);
        let (hw, eps) = (spatial(&x_shape), self.epsilon as f32);
        let grads = (&mut dx[..], &mut dgamma[..], &mut dbeta[..]);
        loops::backward(f32s(x), f32s(gamma), f32s(beta), f32s(d_out), hw, self.groups, eps, grads.0, grads.1, grads.2);
        [dx, dgamma, dbeta]
    }
}
