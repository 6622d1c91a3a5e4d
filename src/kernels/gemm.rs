//! The matrix products of the convolutions (the `gemm` crate, the one flex itself uses, with its
//! AVX-512 kernels picked at run time), how a batch is split over threads, a cache-friendly
//! transpose, and per-thread scratch buffers.

/// `dst = a·b` (`dst += a·b` when accumulating) for row-major `a` [m, k] (or its transpose
/// stored [k, m]) and `b` [k, n] (or its transpose stored [n, k]).
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    accumulate: bool,
    a: &[f32],
    a_t: bool,
    b: &[f32],
    b_t: bool,
    parallelism: gemm::Parallelism,
) {
    assert!(dst.len() >= m * n && a.len() >= m * k && b.len() >= k * n);
    // (column stride, row stride) of each operand as gemm reads it.
    let (a_cs, a_rs) = if a_t { (m as isize, 1) } else { (1, k as isize) };
    let (b_cs, b_rs) = if b_t { (k as isize, 1) } else { (1, n as isize) };
    // SAFETY: the lengths are checked above and the strides index within them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Runs `f(images, their slice of out, parallelism of each product)` over the batch, `out`
/// holding `per_image` values per image: slices of images on flex's threads when there are
/// at least as many images as threads, else the images in turn with each product on every
/// thread. The results come back in batch order.
#[cfg(pool)]
pub(super) fn split_batch<R: Send>(
    batch: usize,
    out: &mut [f32],
    per_image: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32], gemm::Parallelism) -> R + Sync,
) -> Vec<R> {
    use rayon::prelude::*;
    let threads = rayon::current_num_threads();
    if threads == 1 || batch < threads {
        let parallelism = if threads == 1 { gemm::Parallelism::None } else { gemm::Parallelism::Rayon(threads) };
        return vec![f(0..batch, out, parallelism)];
    }
    let per = batch.div_ceil(threads);
    out.par_chunks_mut(per * per_image)
        .enumerate()
        .map(|(i, out)| f(i * per..i * per + out.len() / per_image, out, gemm::Parallelism::None))
        .collect()
}

/// Without a thread pool (the browser's one-thread module) the whole batch runs on this thread.
#[cfg(not(pool))]
pub(super) fn split_batch<R>(
    batch: usize,
    out: &mut [f32],
    _per_image: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32], gemm::Parallelism) -> R,
) -> Vec<R> {
    vec![f(0..batch, out, gemm::Parallelism::None)]
}

/// dst [cols, rows] = srcᵀ for a row-major src [rows, cols], tile by tile so that both
/// sides stay in cache.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn transpose(rows: usize, cols: usize, src: &[f32], dst: &mut [f32]) {
    const TILE: usize = 16;
    let (src, dst) = (&src[..rows * cols], &mut dst[..rows * cols]);
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                for c in c0..(c0 + TILE).min(cols) {
                    dst[c * rows + r] = src[r * cols + c];
                }
            }
        }
    }
}

std::thread_local! {
    /// Per-thread scratch buffers, kept between calls: a fresh one would cost a zeroing pass
    /// and fresh pages every call.
    static SCRATCH: std::cell::RefCell<[Vec<f32>; 3]> = const { std::cell::RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
}

/// Runs `f` with three buffers of the given lengths (contents unspecified), this thread's
/// own when free, else fresh ones.
pub(super) fn with_scratch<R>(lens: [usize; 3], f: impl FnOnce([&mut [f32]; 3]) -> R) -> R {
    SCRATCH.with(|cell| {
        let (mut own, mut fresh);
        let buffers = match cell.try_borrow_mut() {
            Ok(buffers) => {
                own = buffers;
                for (buffer, &len) in own.iter_mut().zip(&lens) {
                    if buffer.len() < len {
                        buffer.resize(len, 0.0);
                    }
                }
                &mut *own
            }
            Err(_) => {
                fresh = lens.map(|len| vec![0.0; len]);
                &mut fresh
            }
        };
        let [a, b, c] = buffers;
        f([&mut a[..lens[0]], &mut b[..lens[1]], &mut c[..lens[2]]])
    })
}
