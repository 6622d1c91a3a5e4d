//! The UNet's hot operations, convolution (plain and transposed) and GroupNorm + Swish, with
//! hand-written kernels on flex (native and the browser's CPU fallback) and burn's own ops on
//! every other backend. Model code calls [`conv2d`], [`conv_transpose2d`] and
//! [`group_norm_swish`] and never learns which ran.
//!
//! Why: on two cores flex's generic conv2d, its autodiff fallbacks and its one-op-at-a-time
//! element-wise passes made a training step about twice PyTorch's; `ddpm bench` and
//! `cargo run --release --example profile` measure the difference (docs/speed.md).
//!
//! The layers, each importing only those below it:
//! 1. this file: what the model calls, a burn module and a tensor in, one [`backend::Op`] out;
//! 2. [`backend`]: which backend runs what (the one burn backend extension) and whether the
//!    kernels take a call;
//! 3. the operations on flex, forward and backward, each choosing its algorithm: [`conv2d`]
//!    (Winograd or im2col), [`conv_transpose2d`], [`group_norm_swish`], on the burn plumbing
//!    they share, [`flex_op`];
//! 4. the algorithms on plain slices, which know nothing of burn and never import each other:
//!    [`winograd`] (with [`kernel_cache`], its transformed kernels kept while sampling),
//!    [`conv_im2col`], [`group_norm_swish_loops`];
//! 5. what they share: [`gemm`] (the matrix products, with `amx` and `amx_pack` on CPUs with
//!    AMX), [`im2col`], [`geometry`], [`simd`].

#[macro_use]
mod simd;

#[cfg(amx)]
mod amx;
#[cfg(amx)]
mod amx_pack;
mod backend;
mod conv2d;
mod conv_im2col;
mod conv_transpose2d;
mod flex_op;
mod gemm;
mod geometry;
mod group_norm_swish;
mod group_norm_swish_loops;
mod im2col;
mod kernel_cache;
mod winograd;

pub use flex_op::fast_path_calls;
pub use simd::simd_path;

use burn::backend::Dispatch;
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::Tensor;
use burn::tensor::activation::silu;

use backend::{HandWritten, Op};

/// `op` on (x, a, b) on whatever backend the tensors live on.
fn run<const A: usize>(op: Op, x: Tensor<4>, a: Tensor<A>, b: Tensor<1>) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as HandWritten>::hand_written(
        op,
        x.into_dispatch(),
        a.into_dispatch(),
        b.into_dispatch(),
    ))
}

/// `conv.forward(x)` for a [B, C, H, W] tensor. Dilation and groups (unused by the UNet) and
/// uneven padding fall back to burn's conv2d everywhere.
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
        (Some(padding), Some(bias))
            if square
                && conv.dilation == [1, 1]
                && conv.groups == 1
                && h.min(w) + 2 * padding >= conv.kernel_size[0] =>
        {
            run(Op::Conv2d { stride: conv.stride[0], padding }, x, conv.weight.val(), bias.val())
        }
        _ => conv.forward(x),
    }
}

/// `conv.forward(x)` for a [B, C, H, W] tensor. Dilation, groups and output padding (unused by
/// the UNet) fall back to burn's conv_transpose2d everywhere.
pub fn conv_transpose2d(conv: &ConvTranspose2d, x: Tensor<4>) -> Tensor<4> {
    let [k, stride, padding] = [conv.kernel_size, conv.stride, conv.padding];
    let square = k[0] == k[1] && stride[0] == stride[1] && padding[0] == padding[1];
    match &conv.bias {
        Some(bias) if square && conv.padding_out == [0, 0] && conv.dilation == [1, 1] && conv.groups == 1 => {
            run(Op::ConvTranspose2d { stride: stride[0], padding: padding[0] }, x, conv.weight.val(), bias.val())
        }
        _ => conv.forward(x),
    }
}

/// `swish(norm(x))` for a [B, C, H, W] tensor (one operation when the norm is affine, as the
/// UNet's are).
pub fn group_norm_swish(norm: &GroupNorm, x: Tensor<4>) -> Tensor<4> {
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return silu(norm.forward(x));
    };
    run(Op::GroupNormSwish { groups: norm.num_groups, epsilon: norm.epsilon }, x, gamma.val(), beta.val())
}
