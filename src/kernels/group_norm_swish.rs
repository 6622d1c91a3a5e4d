//! GroupNorm followed by Swish, the pair that opens every residual block and ends the UNet
//! (labml's `act(norm(x))`), as one operation.
//!
//! Composed from tensor ops, the pair reads and writes each activation about ten times and
//! evaluates σ with a scalar `expf` per element: 36-45 ms forward and 62-89 ms forward +
//! backward for a 64×32×32×32 activation on flex, against 4 and 12-16 ms here (`cargo run
//! --release --example profile`). So:
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

#[cfg(not(target_arch = "wasm32"))]
use burn::backend::autodiff::{
    Autodiff, NodeId,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, TensorMetadata, backend_extension};
use burn::nn::GroupNorm;
use burn::tensor::activation::silu;
use burn::tensor::{DType, Shape, Tensor, TensorData};

use super::f32s;

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
#[backend_extension(Flex, Cube, Autodiff: cfg(not(target_arch = "wasm32")))]
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

impl GroupNormSwish for Cube {}
#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> GroupNormSwish for Autodiff<Cube, C> {}

impl GroupNormSwish for Flex {
    fn group_norm_swish(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, groups: usize, epsilon: f64) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return composed::<Self>(x, gamma, beta, groups, epsilon);
        }
        let shape = x.shape();
        let (x, gamma, beta) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous());
        let mut out = vec![0.0f32; shape.num_elements()];
        kernel::forward(f32s(&x), f32s(&gamma), f32s(&beta), spatial(&shape), groups, epsilon as f32, &mut out);
        FlexTensor::from_data(TensorData::new(out, shape))
    }
}

/// H·W of a [B, C, H, W] shape.
fn spatial(shape: &Shape) -> usize {
    shape.num_elements() / (shape[0] * shape[1])
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
        #[derive(Debug)]
        struct Fused;

        impl Backward<Flex, 3> for Fused {
            type State = ([NodeId; 3], usize, f64);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let ([x_id, gamma_id, beta_id], groups, epsilon) = ops.state;
                let dout = grads.consume::<Flex>(&ops.node).to_contiguous();
                let [x, gamma, beta] = [x_id, gamma_id, beta_id]
                    .map(|id| checkpointer.retrieve_node_output::<FlexTensor>(id).to_contiguous());
                let (x_shape, c_shape) = (x.shape(), gamma.shape());
                let mut dx = vec![0.0f32; x_shape.num_elements()];
                let mut dgamma = vec![0.0f32; c_shape.num_elements()];
                let mut dbeta = dgamma.clone();
                kernel::backward(
                    f32s(&x),
                    f32s(&gamma),
                    f32s(&beta),
                    f32s(&dout),
                    spatial(&x_shape),
                    groups,
                    epsilon as f32,
                    &mut dx,
                    &mut dgamma,
                    &mut dbeta,
                );
                let [node_x, node_gamma, node_beta] = ops.parents;
                for (node, grad, shape) in
                    [(node_x, dx, x_shape), (node_gamma, dgamma, c_shape.clone()), (node_beta, dbeta, c_shape)]
                {
                    if let Some(node) = node {
                        grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(grad, shape)));
                    }
                }
            }
        }

        if x.primitive().dtype() != DType::F32 {
            return composed::<Self>(x, gamma, beta, groups, epsilon);
        }
        let forward = |x: FloatTensor<Self>, gamma: FloatTensor<Self>, beta: FloatTensor<Self>| {
            Flex::group_norm_swish(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), groups, epsilon)
        };
        match Fused.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = ([prep.checkpoint(&x), prep.checkpoint(&gamma), prep.checkpoint(&beta)], groups, epsilon);
                prep.finish(state, forward(x, gamma, beta))
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x, gamma, beta)),
        }
    }
}

/// The flex kernels on plain slices laid out [B, C, H·W] (a group's channels are adjacent).
mod kernel {
    /// Defines `pub fn $name` whose body runs compiled for AVX-512 or AVX2 when the CPU has
    /// them (16 or 8 lanes where the x86-64 baseline, SSE2, has 4), else as built. Every helper
    /// the body calls is `#[inline(always)]`, so that it is compiled into each version.
    macro_rules! with_simd {
        ($(#[$meta:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
            $(#[$meta])*
            pub fn $name($($arg: $ty),*) {
                #[inline(always)]
                #[allow(clippy::too_many_arguments)]
                fn body($($arg: $ty),*) $body
                #[cfg(target_arch = "x86_64")]
                {
                    #[target_feature(enable = "avx512f")]
                    #[allow(clippy::too_many_arguments)]
                    fn avx512($($arg: $ty),*) {
                        body($($arg),*)
                    }
                    #[target_feature(enable = "avx2")]
                    #[allow(clippy::too_many_arguments)]
                    fn avx2($($arg: $ty),*) {
                        body($($arg),*)
                    }
                    if std::arch::is_x86_feature_detected!("avx512f") {
                        // SAFETY: the CPU has just been checked for AVX-512.
                        return unsafe { avx512($($arg),*) };
                    }
                    if std::arch::is_x86_feature_detected!("avx2") {
                        // SAFETY: the CPU has just been checked for AVX2.
                        return unsafe { avx2($($arg),*) };
                    }
                }
                body($($arg),*)
            }
        };
    }

    /// Independent partial sums: lets the compiler vectorise reductions that IEEE order would
    /// otherwise keep sequential.
    const LANES: usize = 16;

    /// Σ f(a_i, b_i).
    #[inline(always)]
    fn sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
        let mut acc = [0.0f32; LANES];
        let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
        let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&u, &v)| f(u, v)).sum();
        for (ua, ub) in ca.zip(cb) {
            for ((s, &u), &v) in acc.iter_mut().zip(ua).zip(ub) {
                *s += f(u, v);
            }
        }
        acc.iter().sum::<f32>() + tail
    }

    /// μ and 1/√(σ² + ε) of one group, σ² from the centred values (no cancellation).
    #[inline(always)]
    fn stats(xs: &[f32], epsilon: f32) -> (f32, f32) {
        let m = xs.len() as f32;
        let mean = sum2(xs, xs, |v, _| v) / m;
        let var = sum2(xs, xs, |v, _| (v - mean) * (v - mean)) / m;
        (mean, 1.0 / (var + epsilon).sqrt())
    }

    /// eˣ in straight-line f32 arithmetic, so that loops over it vectorise: x = n ln 2 + r with
    /// |r| ≤ ln 2 / 2, eʳ by its Taylor series to r⁶ (truncation below r⁷/7! ≈ 1.2e-7, about an
    /// ulp), 2ⁿ written into the exponent bits.
    #[inline(always)]
    fn exp(x: f32) -> f32 {
        // ln 2 in two parts, so that n·LN2_HI is exact for every n that occurs.
        const LN2_HI: f32 = 0.693_359_4;
        const LN2_LO: f32 = -2.121_944_4e-4;
        // Adding 1.5·2²³ rounds to an integer in the float unit and leaves that integer in the
        // low mantissa bits: no branch, no libm call, no float-to-int conversion.
        const ROUND: f32 = 12_582_912.0;
        let x = x.clamp(-87.0, 88.0);
        let t = x * std::f32::consts::LOG2_E + ROUND;
        let n = t - ROUND;
        let r = x - n * LN2_HI - n * LN2_LO;
        let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
        let two_n = (t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
        p * f32::from_bits(two_n)
    }

    #[inline(always)]
    fn sigmoid(y: f32) -> f32 {
        1.0 / (1.0 + exp(-y))
    }

    /// (element range, first channel) of every (image, group).
    #[inline(always)]
    fn per_group(
        len: usize,
        c: usize,
        hw: usize,
        groups: usize,
    ) -> impl Iterator<Item = (std::ops::Range<usize>, usize)> {
        let cpg = c / groups;
        (0..len / (cpg * hw)).map(move |i| (i * cpg * hw..(i + 1) * cpg * hw, (i % groups) * cpg))
    }

    with_simd! {
    /// out = y·σ(y), y = γ_c x̂ + β_c.
    fn forward(x: &[f32], gamma: &[f32], beta: &[f32], hw: usize, groups: usize, epsilon: f32, out: &mut [f32]) {
        let c = gamma.len();
        for (range, first) in per_group(x.len(), c, hw, groups) {
            let (mean, rstd) = stats(&x[range.clone()], epsilon);
            for (k, start) in range.step_by(hw).enumerate() {
                let scale = rstd * gamma[first + k];
                let shift = beta[first + k] - mean * scale;
                for (o, &v) in out[start..start + hw].iter_mut().zip(&x[start..start + hw]) {
                    let y = v * scale + shift;
                    *o = y * sigmoid(y);
                }
            }
        }
    }
    }

    with_simd! {
    /// dx, dγ, dβ from the upstream gradient `dout` (the module's formulas). dx first holds
    /// dy = ∂L/∂y, whose sums give dγ, dβ and the group means, then is overwritten with ∂L/∂x.
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    fn backward(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        dout: &[f32],
        hw: usize,
        groups: usize,
        epsilon: f32,
        dx: &mut [f32],
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    ) {
        let c = gamma.len();
        for (range, first) in per_group(x.len(), c, hw, groups) {
            let (mean, rstd) = stats(&x[range.clone()], epsilon);
            let m = range.len() as f32;
            // Σ_g γ dy and Σ_g γ dy x̂ over the group.
            let (mut g_sum, mut gx_sum) = (0.0, 0.0);
            for (k, start) in range.clone().step_by(hw).enumerate() {
                let ch = first + k;
                let (xs, ds) = (&x[start..start + hw], &mut dx[start..start + hw]);
                let (scale, shift) = (rstd * gamma[ch], beta[ch] - mean * rstd * gamma[ch]);
                for ((d, &v), &up) in ds.iter_mut().zip(xs).zip(&dout[start..start + hw]) {
                    let y = v * scale + shift;
                    let s = sigmoid(y);
                    *d = up * s * (1.0 + y * (1.0 - s));
                }
                // Σ dy x̂ = rstd (Σ dy x − μ Σ dy).
                let dy_sum = sum2(ds, ds, |d, _| d);
                let dy_x_hat = rstd * (sum2(ds, xs, |d, v| d * v) - mean * dy_sum);
                dbeta[ch] += dy_sum;
                dgamma[ch] += dy_x_hat;
                g_sum += gamma[ch] * dy_sum;
                gx_sum += gamma[ch] * dy_x_hat;
            }
            let (g_mean, gx_mean) = (g_sum / m, gx_sum / m);
            for (k, start) in range.step_by(hw).enumerate() {
                let g = gamma[first + k];
                for (d, &v) in dx[start..start + hw].iter_mut().zip(&x[start..start + hw]) {
                    let x_hat = (v - mean) * rstd;
                    *d = rstd * (g * *d - g_mean - x_hat * gx_mean);
                }
            }
        }
    }
    }
}
