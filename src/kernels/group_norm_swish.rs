//! GroupNorm followed by Swish, the pair that opens every residual block and ends the UNet
//! (labml's `act(norm(x))`), as one operation on flex, and its reference composed from burn's ops.
//!
//! Composed from tensor ops, the pair reads and writes each activation about ten times and
//! evaluates σ with a scalar `expf` per element (the timings: docs/speed.md, `cargo run --release
//! --example profile`). So:
//! * flex gets two hand-written passes per group (statistics, then normalise + affine + Swish,
//!   σ from a polynomial eˣ that vectorises, with AVX-512 or AVX2 where the CPU has them) and, under
//!   autodiff, a hand-written backward of three more;
//! * every other backend (wgpu and the other cubecl runtimes) runs the same maths composed from
//!   burn's ops, differentiated by burn's autodiff.
//!
//! With x̂ = (x − μ_g)/√(σ²_g + ε), y = γ_c x̂ + β_c and out = y·σ(y):
//! * ∂out/∂y = σ(y)(1 + y(1 − σ(y)));
//! * ∂L/∂γ_c = Σ dy·x̂, ∂L/∂β_c = Σ dy, and with g = γ_c dy over the m elements of a group,
//!   ∂L/∂x = (g − mean(g) − x̂·mean(g x̂)) / √(σ²_g + ε).

use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{Shape, TensorData};

use super::flex_op::{FlexOp, f32s};
use super::group_norm_swish_loops as loops;

/// The reference: burn's GroupNorm, then x·σ(x).
pub(super) fn composed<B: Backend>(
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

/// GroupNorm + Swish by the hand-written loops: forward in two passes per group, and a
/// backward that recomputes x̂ and y from the checkpointed x rather than keeping them.
#[derive(Clone, Debug)]
pub(super) struct GroupNormSwish {
    pub groups: usize,
    pub epsilon: f64,
}

/// H·W of a [B, C, H, W] shape.
fn spatial(shape: &Shape) -> usize {
    shape.num_elements() / (shape[0] * shape[1])
}

impl FlexOp for GroupNormSwish {
    fn name(&self) -> &'static str {
        "group_norm_swish"
    }

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
