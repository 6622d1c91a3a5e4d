//! Which vector instructions the kernels run with: [`with_simd!`] compiles a kernel for each
//! instruction set and picks one at run time, [`simd_path`] names the pick (for `ddpm bench` and
//! the page's backend line).

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

/// The vector instructions the kernels run with on this CPU, picked at run time as the kernels
/// pick them (`group_norm_swish`'s dispatch, gemm's, [`amx`]'s): "amx+avx512" (the
/// convolutions' products on AMX tiles), "avx512", "avx2", "wasm-simd128" or "scalar".
pub fn simd_path() -> &'static str {
    #[cfg(amx)]
    if super::amx::available() {
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
