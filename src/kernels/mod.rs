//! The UNet's hot operations, convolution (plain and transposed) and GroupNorm + Swish, as burn
//! backend extensions: hand-written kernels on flex (native and the browser's CPU fallback),
//! burn's own ops on every other backend. Model code calls [`conv2d`], [`conv_transpose2d`] and
//! [`group_norm_swish`] and never learns which ran.
//!
//! Why: on two cores flex's generic conv2d, its autodiff fallbacks and its one-op-at-a-time
//! element-wise passes made a training step about twice PyTorch's; `ddpm bench` and
//! `cargo run --release --example profile` measure the difference.

//!
//! The layers: [`conv2d`], [`conv_transpose2d`] and [`group_norm_swish`] are what the model
//! calls and burn's backend extensions (which backend runs what); [`fused`] is the autodiff
//! plumbing they share; the slice kernels below them know nothing of burn: [`im2col`], [`gemm`]
//! (with `amx` and `amx_pack` on CPUs with AMX), [`winograd`] (the 3×3 convolutions where the
//! products are f32, their transformed kernels kept while sampling by [`kernel_cache`]) and
//! [`conv2d_gemm`] for both convolutions, [`group_norm_swish_loops`] for the normalisation.

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

#[cfg(amx)]
mod amx;
#[cfg(amx)]
mod amx_pack;
pub mod conv2d;
mod conv2d_gemm;
pub mod conv_transpose2d;
pub mod fused;
mod gemm;
pub mod group_norm_swish;
mod group_norm_swish_loops;
mod im2col;
mod kernel_cache;
mod winograd;

pub use conv_transpose2d::conv_transpose2d;
pub use conv2d::conv2d;
pub use fused::fast_path_calls;
pub use group_norm_swish::group_norm_swish;

use burn::backend::flex::FlexTensor;

/// The vector instructions the kernels run with on this CPU, picked at run time as the kernels
/// pick them (`group_norm_swish`'s dispatch, gemm's, [`amx`]'s): "amx+avx512" (the
/// convolutions' products on AMX tiles), "avx512", "avx2", "wasm-simd128" or "scalar".
pub fn simd_path() -> &'static str {
    #[cfg(amx)]
    if amx::available() {
        return "amx+avx512";
    }
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return "avx2";
        }
    }
    if cfg!(all(target_arch = "wasm32", target_feature = "simd128")) { "wasm-simd128" } else { "scalar" }
}

/// The elements of a contiguous f32 flex tensor.
fn f32s(t: &FlexTensor) -> &[f32] {
    let start = t.layout().start_offset();
    &t.storage::<f32>()[start..start + t.layout().num_elements()]
}
