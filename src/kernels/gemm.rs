//! The matrix products of the convolutions (AMX tiles where the CPU has them, else the `gemm`
//! crate, the one flex itself uses, with its AVX-512 kernels picked at run time), how a batch
//! is split over threads, a cache-friendly transpose, and per-thread scratch buffers.

use std::cell::RefCell;

#[cfg(amx)]
use super::geometry::same;
use super::geometry::{Geometry, pointwise};
use super::im2col::im2col;

/// The left operand `a` of products dst = a·b (row-major [m, k], or its transpose stored
/// [k, m]), prepared once for every right operand it meets: a convolution's weight for each
/// image of a batch. Where the CPU has AMX it is packed into tiles ([`super::amx`]), else the
/// `gemm` crate reads it as it is.
pub(super) struct Lhs<'a> {
    m: usize,
    k: usize,
    a: &'a [f32],
    a_t: bool,
    #[cfg(amx)]
    tiles: Option<super::amx::Lhs>,
}

impl<'a> Lhs<'a> {
    pub fn new(m: usize, k: usize, a: &'a [f32], a_t: bool) -> Self {
        assert!(a.len() >= m * k);
        #[cfg(amx)]
        let tiles = super::amx::available().then(|| {
            super::amx::Lhs::new(
                m,
                k,
                &if a_t { super::amx_pack::Source::Columns(a) } else { super::amx_pack::Source::Rows(a) },
            )
        });
        Self {
            m,
            k,
            a,
            a_t,
            #[cfg(amx)]
            tiles,
        }
    }

    /// The im2col matrix of image `x` [C_in, H, W] (the weight gradient's left operand),
    /// unfolded into `col` unless the tiles read it from x directly.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn im2col(unfold: &Unfold, x: &'a [f32], col: &'a mut [f32]) -> Self {
        let g = &unfold.g;
        let (m, k) = g.col();
        #[cfg(amx)]
        if let Some(taps) = &unfold.taps {
            let tiles = Some(super::amx::Lhs::new(
                m,
                k,
                &super::amx_pack::Source::Im2col(&super::amx_pack::Split::new(x), taps),
            ));
            return Self { m, k, a: &[], a_t: false, tiles };
        }
        Self::new(m, k, if pointwise(g) { x } else { im2col(g, x, col) }, false)
    }

    /// `dst = a·im2col(x)` (`+=` when accumulating) for image `x` [C_in, H, W], `col` its
    /// scratch when it has to be written out.
    pub fn times_im2col(
        &self,
        unfold: &Unfold,
        x: &[f32],
        col: &mut [f32],
        dst: &mut [f32],
        accumulate: bool,
        parallelism: gemm::Parallelism,
    ) {
        let g = &unfold.g;
        #[cfg(amx)]
        if let (Some(tiles), Some(taps)) = (&self.tiles, &unfold.taps) {
            let n = g.h_out * g.w_out;
            let x = super::amx_pack::Split::new(x);
            return tiles.times(n, dst, accumulate, &super::amx_pack::Source::Im2col(&x, taps));
        }
        let col = if pointwise(g) { x } else { im2col(g, x, col) };
        self.times(g.h_out * g.w_out, dst, accumulate, col, parallelism)
    }

    /// `dst = a·b` (`dst += a·b` when accumulating) for row-major `b` [k, n].
    pub fn times(&self, n: usize, dst: &mut [f32], accumulate: bool, b: &[f32], parallelism: gemm::Parallelism) {
        let (m, k) = (self.m, self.k);
        assert!(dst.len() >= m * n && b.len() >= k * n);
        #[cfg(amx)]
        if let Some(tiles) = &self.tiles {
            return tiles.times(n, dst, accumulate, &super::amx_pack::Source::Rows(b));
        }
        // (column stride, row stride) of a as gemm reads it.
        let a = if self.a_t { Strided { data: self.a, cs: m, rs: 1 } } else { Strided { data: self.a, cs: 1, rs: k } };
        product(m, n, k, Rows(dst, n), accumulate, a, Rows(b, n).into(), parallelism);
    }
}

/// A matrix in a slice, rows `rs` apart and contiguous: the products' right operand and result.
pub(super) struct Rows<T>(pub T, pub usize);

/// A matrix in a slice with its elements `cs` apart along a row and its rows `rs` apart.
#[derive(Clone, Copy)]
pub(super) struct Strided<'a> {
    pub data: &'a [f32],
    pub cs: usize,
    pub rs: usize,
}

impl<'a> From<Rows<&'a [f32]>> for Strided<'a> {
    fn from(Rows(data, rs): Rows<&'a [f32]>) -> Self {
        Self { data, cs: 1, rs }
    }
}

/// dst [m, n] = a [m, k] · b [k, n] (`+=` when accumulating) in f32 on the `gemm` crate, every
/// operand at its own strides (the Winograd products read and write rows of wider matrices).
pub(super) fn product(
    m: usize,
    n: usize,
    k: usize,
    Rows(dst, dst_rs): Rows<&mut [f32]>,
    accumulate: bool,
    a: Strided,
    b: Strided,
    parallelism: gemm::Parallelism,
) {
    // The last element each operand's strides reach, when it has any.
    let last = |rows: usize, cols: usize, cs: usize, rs: usize| {
        (rows > 0 && cols > 0).then(|| (rows - 1) * rs + (cols - 1) * cs)
    };
    assert!(last(m, n, 1, dst_rs).is_none_or(|i| i < dst.len()));
    assert!(last(m, k, a.cs, a.rs).is_none_or(|i| i < a.data.len()));
    assert!(last(k, n, b.cs, b.rs).is_none_or(|i| i < b.data.len()));
    // In the browser's threaded module, a's rows in one band a thread: the gemm crate's own
    // split of a batch-1 product cuts it into many small tasks, between which the web workers
    // sleep and wake (docs/speed.md). Each band packs all of b, which costs (bands)/m of the
    // products; a band has at least 8 rows.
    #[cfg(all(pool, target_arch = "wasm32"))]
    if let gemm::Parallelism::Rayon(threads) = parallelism {
        use rayon::prelude::*;
        let rows = m.div_ceil(threads.min(m / 8).max(1));
        if rows < m {
            let dst = &mut dst[..(m - 1) * dst_rs + n];
            dst.par_chunks_mut(rows * dst_rs).enumerate().for_each(|(i, dst)| {
                let a = Strided { data: &a.data[i * rows * a.rs..], ..a };
                product(rows.min(m - i * rows), n, k, Rows(dst, dst_rs), accumulate, a, b, gemm::Parallelism::None);
            });
            return;
        }
    }
    // SAFETY: every index the strides reach is checked above to lie within its slice.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// How a convolution unfolds each image into its im2col matrix: written out by [`im2col`], or
/// read from the image by the AMX packing through its [`super::amx_pack::Taps`] ("same" stride-1
/// convolutions on AMX CPUs), worked out once per convolution.
pub(super) struct Unfold {
    g: Geometry,
    #[cfg(amx)]
    taps: Option<super::amx_pack::Taps>,
}

impl Unfold {
    pub fn new(g: &Geometry) -> Self {
        Self {
            g: *g,
            #[cfg(amx)]
            taps: reads_image(g).then(|| super::amx_pack::Taps::new(g)),
        }
    }

    /// The scratch an image's im2col matrix needs: none for a 1×1 convolution or where the
    /// products read it from the image itself.
    pub fn col_len(&self) -> usize {
        if pointwise(&self.g) || self.reads_image() { 0 } else { self.g.col().0 * self.g.col().1 }
    }

    /// Whether the products read the im2col matrix from the image itself (nothing written out):
    /// [`reads_image`] of this convolution.
    pub fn reads_image(&self) -> bool {
        #[cfg(amx)]
        return self.taps.is_some();
        #[cfg(not(amx))]
        false
    }
}

/// Whether the products of the convolution `g` read its im2col matrix from the image itself, on
/// AMX tiles ("same" stride-1 convolutions on CPUs with AMX), rather than from a written-out one.
pub(super) fn reads_image(g: &Geometry) -> bool {
    #[cfg(amx)]
    return super::amx::available() && same(g);
    #[cfg(not(amx))]
    {
        let _ = g;
        false
    }
}

/// Runs `f(images, their slice of out, parallelism of each product)` over the batch of the
/// convolution `g`, `out` holding `per_image` values per image: slices of images on flex's
/// threads when there are at least as many images as threads, else the images in turn on this
/// thread, with each product on every thread in the browser's threaded module, and natively
/// from [`SPLIT_MACS`] multiply-adds a call. The results come back in batch order.
#[cfg(pool)]
pub(super) fn split_batch<R: Send>(
    g: &Geometry,
    out: &mut [f32],
    per_image: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32], gemm::Parallelism) -> R + Sync,
) -> Vec<R> {
    use rayon::prelude::*;
    let (batch, threads) = (g.batch, rayon::current_num_threads());
    if threads == 1 || batch < threads {
        let split = threads > 1 && (cfg!(target_arch = "wasm32") || g.macs() >= SPLIT_MACS);
        let parallelism = if split { gemm::Parallelism::Rayon(threads) } else { gemm::Parallelism::None };
        return vec![f(0..batch, out, parallelism)];
    }
    let per = batch.div_ceil(threads);
    out.par_chunks_mut(per * per_image)
        .enumerate()
        .map(|(i, out)| f(i * per..i * per + out.len() / per_image, out, gemm::Parallelism::None))
        .collect()
}

/// Natively, waking the other threads for every product (and every phase of a Winograd
/// convolution) costs about what splitting saves on a convolution of the yardstick's size at
/// batch 1 (about 9.4 M multiply-adds), and clearly less than it saves on the shipped model's
/// (29 M); the browser's threaded module splits at every size, which measured faster there
/// (docs/speed.md has the figures).
#[cfg(pool)]
const SPLIT_MACS: usize = 16 << 20;

/// The weight and bias gradients of a batch from its slices' partial sums ([`split_batch`]'s
/// results), added in batch order so that a run repeats bit for bit.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn sum_in_order(partials: Vec<(Vec<f32>, Vec<f32>)>) -> (Vec<f32>, Vec<f32>) {
    let mut partials = partials.into_iter();
    let (mut dw, mut db) = partials.next().expect("a batch has at least one image");
    for (pw, pb) in partials {
        dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    (dw, db)
}

/// Without a thread pool (the browser's one-thread module) the whole batch runs on this thread.
#[cfg(not(pool))]
pub(super) fn split_batch<R>(
    g: &Geometry,
    out: &mut [f32],
    _per_image: usize,
    f: impl Fn(std::ops::Range<usize>, &mut [f32], gemm::Parallelism) -> R,
) -> Vec<R> {
    vec![f(0..g.batch, out, gemm::Parallelism::None)]
}

/// dst [cols, rows] = srcᵀ for a row-major src [rows, cols]: 8×8 blocks in AVX registers
/// where the CPU has AVX, the edges (and other CPUs) tile by tile so that both sides stay in
/// cache.
pub(super) fn transpose(rows: usize, cols: usize, src: &[f32], dst: &mut [f32]) {
    transpose_strided(rows, cols, src, cols, dst, rows);
}

/// [`transpose`] of a matrix whose rows lie `src_rs` apart, into rows `dst_rs` apart.
pub(super) fn transpose_strided(rows: usize, cols: usize, src: &[f32], src_rs: usize, dst: &mut [f32], dst_rs: usize) {
    const TILE: usize = 16;
    if rows == 0 || cols == 0 {
        return;
    }
    let (src, dst) = (&src[..(rows - 1) * src_rs + cols], &mut dst[..(cols - 1) * dst_rs + rows]);
    let (r_done, c_done) = transpose_blocks(rows, cols, src, src_rs, dst, dst_rs);
    // What the blocks left: the last rows % 8 rows, and the last cols % 8 columns of the others.
    let mut scalar = |rs: std::ops::Range<usize>, cs: std::ops::Range<usize>| {
        for r0 in rs.clone().step_by(TILE) {
            for c0 in cs.clone().step_by(TILE) {
                for r in r0..(r0 + TILE).min(rs.end) {
                    for c in c0..(c0 + TILE).min(cs.end) {
                        dst[c * dst_rs + r] = src[r * src_rs + c];
                    }
                }
            }
        }
    };
    scalar(r_done..rows, 0..cols);
    scalar(0..r_done, c_done..cols);
}

/// The whole 8×8 blocks of [`transpose_strided`] in AVX registers where the CPU has AVX;
/// returns the rows and columns they covered.
fn transpose_blocks(
    rows: usize,
    cols: usize,
    src: &[f32],
    src_rs: usize,
    dst: &mut [f32],
    dst_rs: usize,
) -> (usize, usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx") {
        let (r_done, c_done) = (rows - rows % 8, cols - cols % 8);
        for r0 in (0..r_done).step_by(8) {
            for c0 in (0..c_done).step_by(8) {
                // SAFETY: AVX is present, and rows r0..r0 + 8 of src from column c0 on, rows
                // c0..c0 + 8 of dst from column r0 on, lie within the slices (lengths cut by
                // the caller).
                unsafe {
                    transpose8x8(src[r0 * src_rs + c0..].as_ptr(), src_rs, dst[c0 * dst_rs + r0..].as_mut_ptr(), dst_rs)
                };
            }
        }
        return (r_done, c_done);
    }
    let _ = (rows, cols, src, src_rs, dst, dst_rs);
    (0, 0)
}

/// Transposes the 8×8 block at `src` (rows `src_stride` apart) into `dst` (rows `dst_stride`
/// apart): pairs of rows interleaved, then pairs of pairs, then the 128-bit halves swapped.
///
/// # Safety
/// The CPU has AVX; 8 rows of 8 values from `src` and `dst` are valid.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose8x8(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * src_stride)) });
    let t = [
        _mm256_unpacklo_ps(r[0], r[1]),
        _mm256_unpackhi_ps(r[0], r[1]),
        _mm256_unpacklo_ps(r[2], r[3]),
        _mm256_unpackhi_ps(r[2], r[3]),
        _mm256_unpacklo_ps(r[4], r[5]),
        _mm256_unpackhi_ps(r[4], r[5]),
        _mm256_unpacklo_ps(r[6], r[7]),
        _mm256_unpackhi_ps(r[6], r[7]),
    ];
    let s = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    for i in 0..4 {
        // SAFETY: the caller's.
        unsafe {
            _mm256_storeu_ps(dst.add(i * dst_stride), _mm256_permute2f128_ps::<0x20>(s[i], s[i + 4]));
            _mm256_storeu_ps(dst.add((i + 4) * dst_stride), _mm256_permute2f128_ps::<0x31>(s[i], s[i + 4]));
        }
    }
}

std::thread_local! {
    /// Per-thread scratch buffers, kept between calls: a fresh one would cost a zeroing pass
    /// and fresh pages every call.
    static SCRATCH: RefCell<[Vec<f32>; 3]> = const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
    /// Two more, for what a call holds while the batch's slices use [`SCRATCH`] (the Winograd
    /// kernels' transform).
    static HELD: RefCell<[Vec<f32>; 2]> = const { RefCell::new([Vec::new(), Vec::new()]) };
}

/// Runs `f` with three buffers of the given lengths (contents unspecified), this thread's
/// own when free, else fresh ones.
pub(super) fn with_scratch<R>(lens: [usize; 3], f: impl FnOnce([&mut [f32]; 3]) -> R) -> R {
    with_buffers(&SCRATCH, lens, f)
}

/// [`with_scratch`] for two buffers held across [`split_batch`].
pub(super) fn with_held<R>(lens: [usize; 2], f: impl FnOnce([&mut [f32]; 2]) -> R) -> R {
    with_buffers(&HELD, lens, f)
}

fn with_buffers<const N: usize, R>(
    key: &'static std::thread::LocalKey<RefCell<[Vec<f32>; N]>>,
    lens: [usize; N],
    f: impl FnOnce([&mut [f32]; N]) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut own) => {
            for (buffer, &len) in own.iter_mut().zip(&lens) {
                if buffer.len() < len {
                    buffer.resize(len, 0.0);
                }
            }
            let mut buffers = own.each_mut().into_iter().zip(lens).map(|(b, len)| &mut b[..len]);
            f(std::array::from_fn(|_| buffers.next().expect("one buffer per length")))
        }
        // Taken further up this thread's stack (a kernel called from a task this thread stole
        // while waiting): fresh buffers.
        Err(_) => {
            let mut fresh = lens.map(|len| vec![0.0; len]);
            f(fresh.each_mut().map(|b| b.as_mut_slice()))
        }
    })
}
