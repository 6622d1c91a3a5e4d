//! The operands of the AMX tile products ([`super::amx`]): f32 values split into two bf16
//! halves and laid out as tiles (each 16 rows × 64 bytes, a row of 32 bf16):
//! * the left operand A [m, k] in 16-row, 32-column tiles, `[m/16][k/32][hi, lo][16][32]`;
//! * the right operand B [k, n] in 16-column tiles in AMX's pair layout (rows k, k+1 of one
//!   column side by side), `[n/16][k/32][hi, lo][16 pairs][16 columns][2]`;
//!
//! padded with zeros to multiples of 32. Either is read from a row-major matrix, its transpose,
//! or the im2col matrix of a convolution's image, which is read from the image itself (split
//! into halves once) through per-tap masks: no column matrix is written and read back.

use std::arch::x86_64::*;

use super::geometry::Geometry;

/// Rows and columns (f32) of a C block, and the k of one tile step.
pub(super) const BLOCK: usize = 32;
/// bf16 values in one tile (16 rows × 32).
pub(super) const TILE: usize = 512;
/// A packed 32-deep step of one 16-wide operand panel: its hi tile, then its lo tile.
pub(super) const STEP: usize = 2 * TILE;

/// Where an operand's values come from.
pub(super) enum Source<'a> {
    /// A row-major matrix.
    Rows(&'a [f32]),
    /// The transpose of one, stored [columns, rows] (a convolution's weight in ∂col = Wᵀ·∂out).
    Columns(&'a [f32]),
    /// The im2col matrix of one image of a "same" stride-1 convolution, read from the image
    /// itself (see [`Taps`]): no column matrix is written and read back.
    Im2col(&'a Split, &'a Taps),
}

/// How the im2col matrix of a "same" stride-1 convolution (row (c, kh, kw), column (oy, ox):
/// x[c, oy + kh − p, ox + kw − p], 0 outside) reads its image, worked out once per
/// convolution: each row's offset of column 0's source in the image and its tap (kh, kw), and
/// per tap and 16 columns the mask of the pixels whose source lies inside the image.
pub(super) struct Taps {
    /// Values in an image (C_in·H·W): the loads' masks keep them inside that many.
    image: usize,
    /// k².
    taps: usize,
    /// Per row (c, kh, kw): where its column 0 reads (c·H·W + (kh − p)·W + kw − p), its tap.
    rows: Vec<(isize, usize)>,
    /// Per 16 columns and tap: bit j set when column 16·chunk + j reads inside the image.
    masks: Vec<u16>,
}

impl Taps {
    pub fn new(g: &Geometry) -> Self {
        assert!(g.stride == 1 && (g.h_out, g.w_out) == (g.h, g.w), "a \"same\" stride-1 convolution");
        let (n, taps, p) = (g.h * g.w, g.k * g.k, g.padding as isize);
        let shift = |tap: usize| ((tap / g.k) as isize - p, (tap % g.k) as isize - p);
        let mut masks = vec![0u16; n.div_ceil(16) * taps];
        for (tap, (dy, dx)) in (0..taps).map(|tap| (tap, shift(tap))) {
            for pixel in 0..n {
                let (iy, ix) = ((pixel / g.w) as isize + dy, (pixel % g.w) as isize + dx);
                if (0..g.h as isize).contains(&iy) && (0..g.w as isize).contains(&ix) {
                    masks[(pixel / 16) * taps + tap] |= 1 << (pixel % 16);
                }
            }
        }
        let rows = (0..g.c_in * taps)
            .map(|row| {
                let (c, tap) = (row / taps, row % taps);
                let (dy, dx) = shift(tap);
                ((c * n) as isize + dy * g.w as isize + dx, tap)
            })
            .collect();
        Self { image: g.c_in * n, taps, rows, masks }
    }
}

/// Reads an operand [rows, cols] as tile rows of bf16 halves, zeros past either end.
///
/// SAFETY (each method): the CPU has AVX-512 F, BW, VL and BF16; `col` is a multiple of 16.
trait Load {
    /// The halves (hi, lo) of columns col..col+32 of row `row`, in order (a row of A).
    unsafe fn row32(&self, row: usize, col: usize) -> (__m512i, __m512i);
    /// The halves of columns col..col+16 of rows `row` and `row + 1`, side by side (a row of
    /// B's pair layout).
    unsafe fn pairs16(&self, row: usize, col: usize) -> (__m512i, __m512i);
}

/// Implements [`Load`] from a `load16(row, col)` of 16 f32 values, split as they are read.
macro_rules! load_from_f32 {
    ($t:ty) => {
        impl Load for $t {
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
            #[inline]
            unsafe fn row32(&self, row: usize, col: usize) -> (__m512i, __m512i) {
                split::<false>(self.load16(row, col), self.load16(row, col + 16))
            }

            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
            #[inline]
            unsafe fn pairs16(&self, row: usize, col: usize) -> (__m512i, __m512i) {
                split::<true>(self.load16(row, col), self.load16(row + 1, col))
            }
        }
    };
}

/// A row-major matrix [rows, cols].
struct RowsOf<'a>(&'a [f32], usize, usize);

impl RowsOf<'_> {
    /// Values col..col+16 of row `row`, zeros past either end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    fn load16(&self, row: usize, col: usize) -> __m512 {
        let RowsOf(a, rows, cols) = *self;
        if row >= rows || col >= cols {
            return _mm512_setzero_ps();
        }
        let count = (cols - col).min(16);
        let src = &a[row * cols + col..][..count];
        // SAFETY: the mask reads the `count` values of `src` only.
        unsafe { _mm512_maskz_loadu_ps(((1u32 << count) - 1) as u16, src.as_ptr()) }
    }
}

load_from_f32!(RowsOf<'_>);

/// The transpose [rows, cols] of a row-major matrix [cols, rows].
struct ColumnsOf<'a>(&'a [f32], usize, usize);

impl ColumnsOf<'_> {
    /// Values col..col+16 of row `row`, zeros past either end.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    fn load16(&self, row: usize, col: usize) -> __m512 {
        let ColumnsOf(a, rows, cols) = *self;
        let mut v = [0f32; 16];
        if row < rows && col < cols {
            for (i, v) in v[..(cols - col).min(16)].iter_mut().enumerate() {
                *v = a[(col + i) * rows + row];
            }
        }
        // SAFETY: 16 values.
        unsafe { _mm512_loadu_ps(v.as_ptr()) }
    }
}

load_from_f32!(ColumnsOf<'_>);

/// An image [C_in, H, W] split once into bf16 halves: each value appears in k² rows of its
/// im2col matrix, which read the halves through [`Taps`] instead of splitting it k² times.
pub(super) struct Split {
    hi: Vec<u16>,
    lo: Vec<u16>,
}

impl Split {
    pub fn new(x: &[f32]) -> Self {
        assert!(supported(), "AMX packing on a CPU without AVX512-BF16");
        let (mut hi, mut lo) = (spare(x.len()), spare(x.len()));
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
        fn halves(x: &[f32], hi: &mut [u16], lo: &mut [u16]) {
            for start in (0..x.len()).step_by(32) {
                let count = (x.len() - start).min(32);
                let mask = |from: usize| ((1u32 << count.saturating_sub(from).min(16)) - 1) as u16;
                let words: u32 = if count == 32 { u32::MAX } else { (1u32 << count) - 1 };
                // SAFETY: the masks read and write the `count` values from `start` only.
                unsafe {
                    let v = x.as_ptr().add(start);
                    let (h, l) = split::<false>(
                        _mm512_maskz_loadu_ps(mask(0), v),
                        _mm512_maskz_loadu_ps(mask(16), v.wrapping_add(16)),
                    );
                    _mm512_mask_storeu_epi16(hi.as_mut_ptr().add(start).cast(), words, h);
                    _mm512_mask_storeu_epi16(lo.as_mut_ptr().add(start).cast(), words, l);
                }
            }
        }
        // SAFETY: `supported` holds.
        unsafe { halves(x, &mut hi[..x.len()], &mut lo[..x.len()]) };
        Self { hi, lo }
    }
}

impl Drop for Split {
    fn drop(&mut self) {
        keep(std::mem::take(&mut self.hi));
        keep(std::mem::take(&mut self.lo));
    }
}

/// The im2col matrix [C_in·k·k, H·W] of a [`Split`] image through its [`Taps`].
struct Im2colOf<'a>(&'a Split, &'a Taps);

impl Im2colOf<'_> {
    /// Where row `row`'s columns col..col+16 start in the image and which of them lie inside
    /// it (none past the matrix).
    #[inline(always)]
    fn at(&self, row: usize, col: usize) -> (isize, u16) {
        let taps = self.1;
        let Some(&(offset, tap)) = taps.rows.get(row) else { return (0, 0) };
        (offset + col as isize, taps.masks.get((col / 16) * taps.taps + tap).copied().unwrap_or(0))
    }
}

impl Load for Im2colOf<'_> {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn row32(&self, row: usize, col: usize) -> (__m512i, __m512i) {
        let ((start, first), (_, second)) = (self.at(row, col), self.at(row, col + 16));
        let mask = first as u32 | (second as u32) << 16;
        let Split { hi, lo } = self.0;
        // SAFETY: the mask keeps the lanes whose source pixel lies inside the image
        // (`Taps::new`, `Split` holds the image); masked-out lanes are not read.
        unsafe {
            (
                _mm512_maskz_loadu_epi16(mask, hi.as_ptr().wrapping_offset(start).cast()),
                _mm512_maskz_loadu_epi16(mask, lo.as_ptr().wrapping_offset(start).cast()),
            )
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    #[inline]
    unsafe fn pairs16(&self, row: usize, col: usize) -> (__m512i, __m512i) {
        let ((x, x_mask), (y, y_mask)) = (self.at(row, col), self.at(row + 1, col));
        // Word j of the first row to 2j, word j of the second to 2j + 1.
        let pairs = _mm512_set_epi16(
            47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38, 6, 37, 5, 36, 4, 35, 3, 34, 2, 33,
            1, 32, 0,
        );
        let Split { hi, lo } = self.0;
        // SAFETY: as in `row32`.
        let half = |plane: &[u16], at: isize, mask: u16| unsafe {
            _mm512_castsi256_si512(_mm256_maskz_loadu_epi16(mask, plane.as_ptr().wrapping_offset(at).cast()))
        };
        (
            _mm512_permutex2var_epi16(half(hi, x, x_mask), pairs, half(hi, y, y_mask)),
            _mm512_permutex2var_epi16(half(lo, x, x_mask), pairs, half(lo, y, y_mask)),
        )
    }
}

/// Runs `$body` with `$load` bound to the [`Load`] of `$source` [$rows, $cols] (one
/// monomorphic copy of the packing loop per kind of source).
macro_rules! with_load {
    ($source:expr, $rows:expr, $cols:expr, |$load:ident| $body:expr) => {
        match $source {
            Source::Rows(a) => {
                let $load = RowsOf(a, $rows, $cols);
                $body
            }
            Source::Columns(a) => {
                let $load = ColumnsOf(a, $rows, $cols);
                $body
            }
            Source::Im2col(x, taps) => {
                assert!(x.hi.len() >= taps.image && x.lo.len() >= taps.image, "an image of the convolution's size");
                let $load = Im2colOf(x, taps);
                $body
            }
        }
    };
}

/// Whether this CPU has the vector instructions the packing is compiled for (every AMX CPU
/// has them); the entry points below check it, so that they are safe to call anywhere.
fn supported() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512vl") && has!("avx512bf16")
}

/// 16-row panels of A, or 16-column panels of B, padded to whole 32-wide blocks.
fn panels(len: usize) -> usize {
    len.div_ceil(BLOCK) * 2
}

/// A [m, k] packed into 16-row panels of (hi, lo) tile pairs, `[m/16][k/32][hi, lo][16][32]`
/// (zeros past m and k).
pub(super) fn pack_lhs(m: usize, k: usize, a: &Source) -> Vec<u16> {
    assert!(supported(), "AMX packing on a CPU without AVX512-BF16");
    let steps = k.div_ceil(BLOCK);
    let len = panels(m) * steps * STEP;
    let mut tiles = spare(len);
    if len == 0 {
        return tiles;
    }
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    fn pack(k: usize, a: &impl Load, tiles: &mut [u16]) {
        let steps = k.div_ceil(BLOCK);
        for (p, panel) in tiles.chunks_exact_mut(steps * STEP).enumerate() {
            for (s, step) in panel.chunks_exact_mut(STEP).enumerate() {
                let (hi, lo) = step.split_at_mut(TILE);
                for r in 0..16 {
                    // SAFETY: this function's features; 32 values of each tile row.
                    unsafe {
                        let (row, col) = (p * 16 + r, s * BLOCK);
                        let (h, l) = a.row32(row, col);
                        _mm512_storeu_si512(hi[r * BLOCK..].as_mut_ptr().cast(), h);
                        _mm512_storeu_si512(lo[r * BLOCK..].as_mut_ptr().cast(), l);
                    }
                }
            }
        }
    }
    // SAFETY: `supported` holds.
    with_load!(a, m, k, |load| unsafe { pack(k, &load, &mut tiles[..len]) });
    tiles
}

/// Columns j0..j0+32 of B [k, n] packed into two 16-column panels of pair tiles,
/// `[2][k/32][hi, lo][16 pairs][16 columns][2]` (zeros past n and k).
pub(super) fn pack_rhs(k: usize, n: usize, b: &Source, j0: usize, out: &mut [u16]) {
    assert!(supported(), "AMX packing on a CPU without AVX512-BF16");
    // SAFETY: `supported` holds.
    with_load!(b, k, n, |load| unsafe { pack_pairs(k, &load, j0, out) })
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
fn pack_pairs(k: usize, b: &impl Load, j0: usize, out: &mut [u16]) {
    let steps = k.div_ceil(BLOCK);
    for (half, panel) in out.chunks_exact_mut(steps * STEP).enumerate() {
        let j = j0 + half * 16;
        for (s, step) in panel.chunks_exact_mut(STEP).enumerate() {
            let (hi, lo) = step.split_at_mut(TILE);
            for q in 0..16 {
                let kk = s * BLOCK + 2 * q;
                // SAFETY: this function's features; 32 values of each tile row.
                unsafe {
                    let (h, l) = b.pairs16(kk, j);
                    _mm512_storeu_si512(hi[q * BLOCK..].as_mut_ptr().cast(), h);
                    _mm512_storeu_si512(lo[q * BLOCK..].as_mut_ptr().cast(), l);
                }
            }
        }
    }
}

thread_local! {
    /// Tile buffers kept for the next product on this thread: a fresh one would cost a zeroing
    /// pass and freshly faulted pages per image (its share of a step: docs/speed.md).
    static SPARE: std::cell::RefCell<Vec<Vec<u16>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A buffer of at least `len` values (contents unspecified: the packing writes each one it
/// reads): the largest kept one, grown (zeroed) only past every length it had.
pub(super) fn spare(len: usize) -> Vec<u16> {
    let mut buffer = SPARE
        .with(|s| {
            let mut s = s.borrow_mut();
            let largest = (0..s.len()).max_by_key(|&i| s[i].len())?;
            Some(s.swap_remove(largest))
        })
        .unwrap_or_default();
    if buffer.len() < len {
        buffer.resize(len, 0);
    }
    buffer
}

/// Keeps a buffer for [`spare`] (a few per thread: the products in flight on it).
pub(super) fn keep(buffer: Vec<u16>) {
    SPARE.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < 4 {
            s.push(buffer);
        }
    });
}

/// Splits 32 values (16 in `x`, 16 in `y`) into bf16 halves: hi the bf16 nearest to each value
/// v, lo the bf16 nearest to v − hi (exact in f32), so that |v − hi − lo| ≤ 2⁻¹⁷|v|. (Only |v|
/// above bf16's largest value, 3.39·10³⁸, would round hi to infinity.) Returned in tile order:
/// with `PAIRS` x_j and y_j side by side (B's pair layout), else x's 16 then y's 16 (A's rows).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[inline]
fn split<const PAIRS: bool>(x: __m512, y: __m512) -> (__m512i, __m512i) {
    let bits = |v: __m512bh| -> __m512i {
        // SAFETY: __m512bh and __m512i are both 64 bytes of plain bits.
        unsafe { std::mem::transmute(v) }
    };
    // Word j of a 32-word vector to word 2j, word 16 + j to 2j + 1.
    let pairs = _mm512_set_epi16(
        31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
        16, 0,
    );
    let order = |v: __m512i| if PAIRS { _mm512_permutexvar_epi16(pairs, v) } else { v };
    let hi = order(bits(_mm512_cvtne2ps_pbh(y, x)));
    // hi back in f32 (bf16 is f32's top half): in pair order lane j holds x_j's hi in its low
    // half and y_j's in its top half; else words j and 16 + j move to the top of lane j.
    let (hx, hy) = if PAIRS {
        (_mm512_slli_epi32::<16>(hi), _mm512_and_si512(hi, _mm512_set1_epi32(0xFFFF_0000u32 as i32)))
    } else {
        let top = |first: i16| {
            let idx = _mm512_set_epi16(
                first + 15,
                0,
                first + 14,
                0,
                first + 13,
                0,
                first + 12,
                0,
                first + 11,
                0,
                first + 10,
                0,
                first + 9,
                0,
                first + 8,
                0,
                first + 7,
                0,
                first + 6,
                0,
                first + 5,
                0,
                first + 4,
                0,
                first + 3,
                0,
                first + 2,
                0,
                first + 1,
                0,
                first,
                0,
            );
            _mm512_maskz_permutexvar_epi16(0xAAAA_AAAA, idx, hi)
        };
        (top(0), top(16))
    };
    let rest = |v: __m512, h: __m512i| _mm512_sub_ps(v, _mm512_castsi512_ps(h));
    let lo = order(bits(_mm512_cvtne2ps_pbh(rest(y, hy), rest(x, hx))));
    (hi, lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The split: hi + lo within 2⁻¹⁷ of v, for values whose rounding carries, negative ones,
    /// small ones and large ones.
    #[test]
    fn split_halves_sum_to_the_value() {
        if !supported() {
            eprintln!("no AVX512-BF16 on this CPU: nothing to test");
            return;
        }
        let v: [f32; 32] = std::array::from_fn(|i| {
            [
                1.0,
                -2.5,
                1.0 + f32::EPSILON,
                0.1,
                -1e-30,
                6.1e4,
                3.0e38,
                -3.0e38,
                0.0,
                1.0 + 1.0 / 256.0,
                -2.5e-3,
                7.0e20,
            ]
            .get(i)
            .copied()
            .unwrap_or(i as f32 * -0.3711 + 0.05)
        });
        let bf16 = |h: u16| f32::from_bits((h as u32) << 16) as f64;
        let check = |at: &dyn Fn(usize) -> usize, hi: __m512i, lo: __m512i| {
            // SAFETY: 64 bytes each.
            let (hi, lo) = unsafe {
                (std::mem::transmute::<__m512i, [u16; 32]>(hi), std::mem::transmute::<__m512i, [u16; 32]>(lo))
            };
            for i in 0..32 {
                let sum = bf16(hi[at(i)]) + bf16(lo[at(i)]);
                assert!((sum - v[i] as f64).abs() <= (v[i] as f64).abs() * 2f64.powi(-17), "{}: {sum}", v[i]);
            }
        };
        // SAFETY: `supported` held; 16 values in each load.
        let (x, y) = unsafe { (_mm512_loadu_ps(v.as_ptr()), _mm512_loadu_ps(v[16..].as_ptr())) };
        // A's rows: in order; B's pairs: v_j at 2j, v_{16+j} at 2j + 1.
        let (hi, lo) = unsafe { split::<false>(x, y) };
        check(&|i| i, hi, lo);
        let (hi, lo) = unsafe { split::<true>(x, y) };
        check(&|i| if i < 16 { 2 * i } else { 2 * (i - 16) + 1 }, hi, lo);
    }
}
