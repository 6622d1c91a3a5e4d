//! The UNet's 3×3 "same" convolutions by Winograd's minimal filtering F(4×4, 3×3) (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", arXiv 1509.09308), where the
//! products run in f32 (every CPU without AMX, and the browser's CPU fallback).
//!
//! Each 4×4 block of output pixels ("tile") is computed from the 6×6 input patch d around it as
//!
//!   Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A,
//!
//! so that per tile and channel pair the 144 multiply-adds of direct convolution become 36.
//! Summed over the input channels, position ξ of the 6×6 transformed tiles is one matrix product
//! over all tiles at once: M_ξ [C_out, tiles] = U_ξ [C_out, C_in] · V_ξ [C_in, tiles], with
//! U = G g Gᵀ (the kernel transform), V = Bᵀ d B (the input transform), and Y read back by the
//! output transform: 4× fewer flops than im2col's product, and no im2col matrix. The matrices
//! (interpolation at 0, ±1, ±2 and ∞) are those of the paper, [`times_bt`], [`times_g`], [`times_at`].
//!
//! The backward pass runs the same algorithm: ∂x is the convolution of ∂out with the kernel
//! turned, and ∂W comes from ∂U_ξ = Σ_tiles ∂M_ξ V_ξᵀ, each transform's adjoint taking it back.

#[cfg(not(target_arch = "wasm32"))]
use super::gemm::sum_in_order;
use std::ops::Range;

use super::gemm::{Rows, Strided, product, split_batch, transpose, transpose_strided, with_held, with_scratch};
#[cfg(not(target_arch = "wasm32"))]
use super::geometry::adjoint_kernel;
use super::geometry::{Geometry, same};
use super::kernel_cache::{self, Owner};

/// Output tile m and input tile α = m + 2 of F(m×m, 3×3).
const M: usize = 4;
const ALPHA: usize = M + 2;
/// Positions of a transformed tile: one product each per convolution.
const XI: usize = ALPHA * ALPHA;

/// Values of V_ξ per product (32 KB, V about 1.2 MB): images whose tiles go through the
/// products together, so that small images make one product per ξ rather than one each, and
/// V stays in this core's L2 cache while the products run.
const CHUNK_VALUES: usize = 1 << 13;

/// Pixels per call below which the kernel transform (about as costly per kernel as the
/// products of a few hundred pixels) costs more than the products save: batch 1 at 8×8 keeps
/// im2col.
const MIN_PIXELS: usize = 256;

/// Tiles down and across an [H, W] plane.
fn tiles(h: usize, w: usize) -> (usize, usize) {
    (h.div_ceil(M), w.div_ceil(M))
}

/// Whether `g` is a convolution this file computes: 3×3, stride 1, padding 1, with at least 8
/// channels on both sides and [`MIN_PIXELS`] pixels in the batch. The UNet's first and last
/// convolutions (1-3 image channels) keep im2col: their products are too thin to pay for the
/// transforms.
pub(super) fn applies(g: &Geometry) -> bool {
    g.k == 3 && g.padding == 1 && same(g) && g.c_in >= 8 && g.c_out >= 8 && g.batch * g.h * g.w >= MIN_PIXELS
}

/// out[b] = conv(x[b], weight) (+ bias) for a batch of [C_in, H, W] images; `owner`: where the
/// weights live, when their transform may be kept for later calls ([`kernel_cache`]).
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>, owner: Option<Owner>) -> Vec<f32> {
    debug_assert!(applies(g));
    let (out_len, per_chunk) = (g.c_out * g.h * g.w, images_per_chunk(g));
    let no_bias = vec![0.0f32; g.c_out];
    let bias = bias.unwrap_or(&no_bias);
    // Every value is written by the last transpose.
    let mut out = vec![0.0f32; g.batch * out_len];
    with_kernels(g, weight, owner, |u| {
        split_batch(g, &mut out, out_len, |images, out, parallelism| {
            let parallel = !matches!(parallelism, gemm::Parallelism::None);
            let images: Vec<usize> = images.collect();
            for (chunk, out) in images.chunks(per_chunk).zip(out.chunks_mut(per_chunk * out_len)) {
                forward_chunk(g, x, u, bias, chunk, out, parallel);
            }
        });
    });
    out
}

/// The images `chunk` of the batch, together: their pixels made pixel-major ([image][H·W][C_in]),
/// each band of tile rows taken from those pixels to its output pixels ([`forward_band`], two
/// bands at once when `parallel`), and the output, pixel-major too, turned back into `out`.
fn forward_chunk(g: &Geometry, x: &[f32], u: &[f32], bias: &[f32], chunk: &[usize], out: &mut [f32], parallel: bool) {
    let (hw, (th, tw)) = (g.h * g.w, tiles(g.h, g.w));
    let n = chunk.len() * th * tw;
    let pixels = chunk.len() * hw * (g.c_in + g.c_out);
    with_scratch([pixels, n * XI * g.c_in, n * XI * g.c_out], |[xy, v, m]| {
        let (xt, y) = xy.split_at_mut(chunk.len() * hw * g.c_in);
        pixel_major(g.c_in, hw, x, chunk, xt);
        let xt = &*xt;
        let cut = |r: usize| [r * tw * XI * g.c_in, r * tw * XI * g.c_out, output_row(g, r)];
        on_bands(chunk.len() * th, parallel, [v, m, y], cut, |band, [v, m, y]| {
            forward_band(g, xt, u, bias, band, [v, m, y])
        });
        for (i, out) in out.chunks_mut(g.c_out * hw).enumerate() {
            transpose(hw, g.c_out, &y[i * hw * g.c_out..][..hw * g.c_out], out);
        }
    });
}

/// Where tile row r (of a chunk's images, image by image) starts in the pixel-major output.
fn output_row(g: &Geometry, r: usize) -> usize {
    let th = tiles(g.h, g.w).0;
    (r / th * g.h * g.w + (M * (r % th)).min(g.h) * g.w) * g.c_out
}

/// The tile rows `band`: V (the input transform), M_ξᵀ [tiles, C_out] = V_ξᵀ [tiles, C_in] ·
/// U_ξᵀ [C_in, C_out] (V and M laid out [tile][ξ][C]), and Y (the output transform, into the
/// band's output pixels `y`).
fn forward_band(g: &Geometry, xt: &[f32], u: &[f32], bias: &[f32], band: Range<usize>, [v, m, y]: [&mut [f32]; 3]) {
    let tw = tiles(g.h, g.w).1;
    input_tiles(g, xt, band.clone(), v);
    for xi in 0..XI {
        let a = Strided { data: &v[xi * g.c_in..], cs: 1, rs: XI * g.c_in };
        let b = Strided { data: &u[xi * g.c_in * g.c_out..], cs: 1, rs: g.c_out };
        let dst = Rows(&mut m[xi * g.c_out..], XI * g.c_out);
        product(band.len() * tw, g.c_out, g.c_in, dst, false, a, b, gemm::Parallelism::None);
    }
    let th = tiles(g.h, g.w).0;
    let (mut s, mut junk) = (vec![0.0f32; M * ALPHA * g.c_out], vec![0.0f32; M * g.c_out]);
    let first = output_row(g, band.start);
    for r in band.clone() {
        let (ty, base) = (r % th, output_row(g, r) - first);
        for tx in 0..tw {
            let m = &m[((r - band.start) * tw + tx) * XI * g.c_out..][..XI * g.c_out];
            let (rows, cols) = (g.h - M * ty, g.w - M * tx);
            tile_output(m, bias, rows, cols, g.w, &mut y[base + M * tx * g.c_out..], &mut s, &mut junk);
        }
    }
}

/// Runs f(U_ξᵀ [ξ][C_in][C_out]): the transform kept for `owner`'s weights, or one made now
/// (and kept, when there is an owner).
fn with_kernels<R>(g: &Geometry, weight: &[f32], owner: Option<Owner>, f: impl FnOnce(&[f32]) -> R) -> R {
    if let Some(u) = owner.as_ref().and_then(kernel_cache::get) {
        return f(&u);
    }
    with_held([XI * g.c_out * g.c_in; 2], |[u, u_co]| {
        transform_kernels(g, weight, u, u_co);
        if let Some(owner) = owner {
            kernel_cache::put(owner, u);
        }
        f(u)
    })
}

/// U_ξᵀ [ξ][C_in][C_out], what every product of a call multiplies by: the kernels of each
/// output channel transformed in turn (into `u_co` [C_out][ξ][C_in]), then each U_ξ turned.
fn transform_kernels(g: &Geometry, weight: &[f32], u: &mut [f32], u_co: &mut [f32]) {
    for (kernels, u_co) in weight.chunks_exact(9 * g.c_in).zip(u_co.chunks_exact_mut(XI * g.c_in)) {
        kernel_transform(kernels, u_co);
    }
    for (xi, u) in u.chunks_exact_mut(g.c_in * g.c_out).enumerate() {
        transpose_strided(g.c_out, g.c_in, &u_co[xi * g.c_in..], XI * g.c_in, u, g.c_out);
    }
}

/// Runs f(tile rows, buffers' parts) over `rows` tile rows, as two bands on both threads when
/// `parallel` (a batch smaller than the thread count, in the browser's threaded module), else as
/// one; `cut(r)`: where tile row r starts in each buffer.
fn on_bands<const K: usize>(
    rows: usize,
    parallel: bool,
    buffers: [&mut [f32]; K],
    cut: impl Fn(usize) -> [usize; K],
    f: impl Fn(Range<usize>, [&mut [f32]; K]) + Sync,
) {
    #[cfg(pool)]
    if parallel && rows >= 2 {
        let mid = rows / 2;
        let (mut cuts, mut his) = (cut(mid).into_iter(), Vec::with_capacity(K));
        let lo = buffers.map(|b| {
            let (lo, hi) = b.split_at_mut(cuts.next().expect("a cut per buffer"));
            his.push(hi);
            lo
        });
        let hi: [&mut [f32]; K] = his.try_into().expect("a half per buffer");
        rayon::join(|| f(0..mid, lo), || f(mid..rows, hi));
        return;
    }
    let _ = (parallel, cut);
    f(0..rows, buffers)
}

/// (∂x, ∂W, ∂b) from ∂out. ∂x is the convolution of ∂out by the adjoint kernel
/// ([`adjoint_kernel`]), so [`forward`] again. ∂W by the same algorithm run backwards:
/// ∂M = A ∂Y Aᵀ per tile (the adjoint of the output transform), ∂U_ξ = Σ_tiles ∂M_ξ V_ξᵀ (one
/// product per ξ, 4× fewer flops than im2col's), ∂g = Gᵀ ∂U G.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn backward(g: &Geometry, x: &[f32], weight: &[f32], d_out: &[f32]) -> [Vec<f32>; 3] {
    let g_t = Geometry { c_in: g.c_out, c_out: g.c_in, ..*g };
    let mut dx = forward(&g_t, d_out, &adjoint_kernel(g, weight), None, None);
    let per_chunk = images_per_chunk(g);
    // Each slice of the batch sums its own ∂Uᵀ and ∂b; the sums are added in batch order, so
    // that a run repeats bit for bit.
    let partials = split_batch(g, &mut dx, g.c_in * g.h * g.w, |images, _, parallelism| {
        let (mut du_t, mut db) = (vec![0.0f32; XI * g.c_in * g.c_out], vec![0.0f32; g.c_out]);
        let images: Vec<usize> = images.collect();
        for chunk in images.chunks(per_chunk) {
            backward_chunk(g, x, d_out, chunk, parallelism, &mut du_t, &mut db);
        }
        (du_t, db)
    });
    let (du_t, db) = sum_in_order(partials);
    [dx, kernel_adjoint(g, &du_t), db]
}

/// Adds the images `chunk`'s share of ∂Uᵀ [ξ][C_in][C_out] and ∂b: V of their tiles (as
/// [`forward`] makes it), ∂M of each image's tiles, then ∂U_ξᵀ [C_in, C_out] += V_ξ [C_in, tiles] ·
/// ∂M_ξᵀ [tiles, C_out].
#[cfg(not(target_arch = "wasm32"))]
fn backward_chunk(
    g: &Geometry,
    x: &[f32],
    d_out: &[f32],
    chunk: &[usize],
    parallelism: gemm::Parallelism,
    du_t: &mut [f32],
    db: &mut [f32],
) {
    let (hw, (th, tw)) = (g.h * g.w, tiles(g.h, g.w));
    let (n, out_len) = (chunk.len() * th * tw, g.c_out * hw);
    let parallel = !matches!(parallelism, gemm::Parallelism::None);
    let (zeros, mut p) = (vec![0.0f32; g.c_out], vec![0.0f32; M * ALPHA * g.c_out]);
    let pixels = chunk.len() * hw * g.c_in.max(g.c_out);
    with_scratch([pixels, n * XI * g.c_in, n * XI * g.c_out], |[xy, v, dm]| {
        pixel_major(g.c_in, hw, x, chunk, xy);
        let xt = &xy[..chunk.len() * hw * g.c_in];
        let v = &mut v[..n * XI * g.c_in];
        let cut = |r: usize| [r * tw * XI * g.c_in];
        on_bands(chunk.len() * th, parallel, [v], cut, |band, [v]| input_tiles(g, xt, band, v));
        for (i, &b) in chunk.iter().enumerate() {
            let d_out = &d_out[b * out_len..][..out_len];
            for (d, plane) in db.iter_mut().zip(d_out.chunks_exact(hw)) {
                *d += plane.iter().sum::<f32>();
            }
            // ∂out pixel-major ([H·W, C_out]), so that the transform runs along the channels.
            let d_out_t = &mut xy[..out_len];
            transpose(g.c_out, hw, d_out, d_out_t);
            output_adjoint(d_out_t, g.h, g.w, &zeros, &mut dm[i * th * tw * XI * g.c_out..], &mut p);
        }
        for xi in 0..XI {
            let du_t = &mut du_t[xi * g.c_in * g.c_out..][..g.c_in * g.c_out];
            let a = Strided { data: &v[xi * g.c_in..], cs: XI * g.c_in, rs: 1 };
            let b = Strided { data: &dm[xi * g.c_out..], cs: 1, rs: XI * g.c_out };
            product(g.c_in, g.c_out, n, Rows(du_t, g.c_out), true, a, b, parallelism);
        }
    });
}

/// How many images' tiles go through the products together: one product per position ξ over
/// several small images rather than one per image, within [`CHUNK_VALUES`].
fn images_per_chunk(g: &Geometry) -> usize {
    let (th, tw) = tiles(g.h, g.w);
    (CHUNK_VALUES / g.c_in / (th * tw)).max(1)
}

/// xt [image][H·W][C] = x[b]ᵀ for the images b of `chunk` ([C, H·W] each).
fn pixel_major(c: usize, hw: usize, x: &[f32], chunk: &[usize], xt: &mut [f32]) {
    for (i, &b) in chunk.iter().enumerate() {
        transpose(c, hw, &x[b * c * hw..][..c * hw], &mut xt[i * hw * c..][..hw * c]);
    }
}

/// V [tile][ξ][C_in] of the tile rows `band` (rows of a chunk's images, image by image) from the
/// images' pixel-major copies `xt`.
fn input_tiles(g: &Geometry, xt: &[f32], band: Range<usize>, v: &mut [f32]) {
    let (hw, (th, tw), c) = (g.h * g.w, tiles(g.h, g.w), g.c_in);
    let (zeros, mut r) = (vec![0.0f32; c], vec![0.0f32; XI * c]);
    for row in band.clone() {
        let (i, ty) = (row / th, row % th);
        let image = &xt[i * hw * c..][..hw * c];
        for tx in 0..tw {
            // Padded pixel (4ty + k, 4tx + j) is pixel (4ty + k − 1, 4tx + j − 1), or padding.
            let patch: [&[f32]; XI] = array(&[], |kj| {
                let (y, x) = ((M * ty + kj / ALPHA).wrapping_sub(1), (M * tx + kj % ALPHA).wrapping_sub(1));
                if y < g.h && x < g.w { &image[(y * g.w + x) * c..][..c] } else { &zeros }
            });
            tile_input(&patch, &mut v[((row - band.start) * tw + tx) * XI * c..][..XI * c], &mut r);
        }
    }
}

/// ∂W [C_out, C_in, 3, 3] = Gᵀ ∂U G from ∂Uᵀ [ξ][C_in][C_out], the adjoint of
/// [`kernel_transform`]: along the output channels (contiguous in ∂Uᵀ) into [C_in][3·3][C_out],
/// then turned.
#[cfg(not(target_arch = "wasm32"))]
fn kernel_adjoint(g: &Geometry, du_t: &[f32]) -> Vec<f32> {
    let mut dw_t = vec![0.0f32; g.c_out * g.c_in * 9];
    for (ci, dw_t) in dw_t.chunks_exact_mut(9 * g.c_out).enumerate() {
        kernel_adjoint_channel(du_t, ci, dw_t);
    }
    let mut dw = vec![0.0f32; dw_t.len()];
    transpose(g.c_in * 9, g.c_out, &dw_t, &mut dw);
    dw
}

#[cfg(not(target_arch = "wasm32"))]
with_simd! {
    /// ∂g [3·3][C_out] = Gᵀ ∂U G for the kernels of input channel `ci` (the output channels
    /// in vector lanes), from ∂Uᵀ [ξ][C_in][C_out].
    fn kernel_adjoint_channel(du_t: &[f32], ci: usize, dw_t: &mut [f32]) {
        let c_out = dw_t.len() / 9;
        let pair = du_t.len() / XI;
        let src: [&[f32]; XI] = std::array::from_fn(|xi| &du_t[xi * pair + ci * c_out..][..c_out]);
        map(src, every::<9>(dw_t, c_out, 0, 1), |du| {
            // Gᵀ ∂U: each column a of ∂U taken back, then each row of the result.
            let cols: [[f32; 3]; ALPHA] = std::array::from_fn(|a| times_gt(std::array::from_fn(|b| du[b * ALPHA + a])));
            let rows: [[f32; 3]; 3] = std::array::from_fn(|i| times_gt(std::array::from_fn(|a| cols[a][i])));
            std::array::from_fn(|t| rows[t / 3][t % 3])
        });
    }
}

/// Bᵀ·d for an α-vector d, Bᵀ = [[4, 0, −5, 0, 1, 0], [0, −4, −4, 1, 1, 0], [0, 4, −4, −1, 1, 0],
/// [0, −2, −1, 2, 1, 0], [0, 2, −1, −2, 1, 0], [0, 4, 0, −5, 0, 1]], its rows sharing their sums.
#[inline(always)]
fn times_bt([d0, d1, d2, d3, d4, d5]: [f32; ALPHA]) -> [f32; ALPHA] {
    let (s12, d12, s34, d13, d42) = (d1 + d2, d1 - d2, d3 + d4, d1 - d3, d4 - d2);
    [
        4.0 * d0 - 5.0 * d2 + d4,
        s34 - 4.0 * s12,
        4.0 * d12 + (d4 - d3),
        d42 - 2.0 * d13,
        d42 + 2.0 * d13,
        4.0 * d1 - 5.0 * d3 + d5,
    ]
}

/// Aᵀ·m for an α-vector m, Aᵀ = [[1, 1, 1, 1, 1, 0], [0, 1, −1, 2, −2, 0], [0, 1, 1, 4, 4, 0],
/// [0, 1, −1, 8, −8, 1]].
#[inline(always)]
fn times_at([m0, m1, m2, m3, m4, m5]: [f32; ALPHA]) -> [f32; M] {
    let (p, q, r, s) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
    [m0 + p + r, q + 2.0 * s, p + 4.0 * r, q + 8.0 * s + m5]
}

/// A·y for an m-vector y (the adjoint of [`times_at`]).
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
fn times_a([y0, y1, y2, y3]: [f32; M]) -> [f32; ALPHA] {
    let (e, o, e4, o2) = (y0 + y2, y1 + y3, y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3);
    [y0, e + o, e - o, e4 + o2, e4 - o2, y3]
}

/// G·v for a 3-vector v, G = [[¼, 0, 0], [−⅙, −⅙, −⅙], [−⅙, ⅙, −⅙], [1/24, 1/12, ⅙],
/// [1/24, −1/12, ⅙], [0, 0, 1]].
#[inline(always)]
fn times_g([v0, v1, v2]: [f32; 3]) -> [f32; ALPHA] {
    let (s, e) = (v0 + v2, v0 / 24.0 + v2 / 6.0);
    [v0 / 4.0, -(s + v1) / 6.0, -(s - v1) / 6.0, e + v1 / 12.0, e - v1 / 12.0, v2]
}

/// Gᵀ·u for an α-vector u (the adjoint of [`times_g`]).
#[cfg(not(target_arch = "wasm32"))]
#[inline(always)]
fn times_gt([u0, u1, u2, u3, u4, u5]: [f32; ALPHA]) -> [f32; 3] {
    let (s, d, s34, d34) = (u1 + u2, u2 - u1, u3 + u4, u3 - u4);
    [u0 / 4.0 - s / 6.0 + s34 / 24.0, d / 6.0 + d34 / 12.0, -s / 6.0 + s34 / 6.0 + u5]
}

/// The K slices of `c` values that start at chunks first, first + step, …, first + (K − 1)·step
/// of `buf`: where one transform's K outputs go. (Indexing, not an iterator's `skip` and
/// `step_by`, whose state the compiler kept in memory, call after call.)
#[inline(always)]
fn every<const K: usize>(buf: &mut [f32], c: usize, first: usize, step: usize) -> [&mut [f32]; K] {
    let mut rest = &mut buf[first * c..];
    std::array::from_fn(|_| {
        let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(c);
        rest = tail.get_mut((step - 1) * c..).unwrap_or_default();
        chunk
    })
}

/// [f(0), …, f(N − 1)], written in place: `std::array::from_fn` and `<[T; N]>::map`, which the
/// compiler left as calls in the transforms' loops (each building a few slices), cost a
/// measurable share of a step (docs/speed.md).
#[inline(always)]
fn array<T: Copy, const N: usize>(fill: T, f: impl Fn(usize) -> T) -> [T; N] {
    let mut out = [fill; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = f(i);
    }
    out
}

/// Values a vector holds (AVX-512): what [`map`] and [`kernel_transform`] take at a time.
const LANES: usize = 16;

/// dst[i][t] = f([src[0][t], …, src[N − 1][t]])[i] for every t: one pass over N arrays, a
/// vector of [`LANES`] values of each at a time.
#[inline(always)]
fn map<const N: usize, const K: usize>(src: [&[f32]; N], mut dst: [&mut [f32]; K], f: impl Fn([f32; N]) -> [f32; K]) {
    let len = dst.iter().map(|d| d.len()).chain(src.iter().map(|s| s.len())).min().unwrap_or(0);
    let full = len - len % LANES;
    for t0 in (0..full).step_by(LANES) {
        let block: [&[f32; LANES]; N] =
            array(&[0.0; LANES], |i| src[i][t0..t0 + LANES].try_into().expect("LANES values"));
        let mut out = [[0.0f32; LANES]; K];
        for l in 0..LANES {
            let values = f(array(0.0, |i| block[i][l]));
            for k in 0..K {
                out[k][l] = values[k];
            }
        }
        for (d, o) in dst.iter_mut().zip(&out) {
            d[t0..t0 + LANES].copy_from_slice(o);
        }
    }
    for t in full..len {
        for (d, v) in dst.iter_mut().zip(f(array(0.0, |i| src[i][t]))) {
            d[t] = v;
        }
    }
}

with_simd! {
    /// U_ξ = G g Gᵀ for the kernels g = weight[co, ci, ·, ·] (3×3) of one output channel, into
    /// u [ξ][C_in]; [`LANES`] kernels at a time, each in its own vector lane.
    fn kernel_transform(weight: &[f32], u: &mut [f32]) {
        let c_in = weight.len() / 9;
        for (block, kernels) in weight.chunks(9 * LANES).enumerate() {
            // The last block padded with zero kernels, so that every block is read the same way.
            let padded;
            let taps: &[f32; 9 * LANES] = match kernels.try_into() {
                Ok(full) => full,
                Err(_) => {
                    let mut p = [0.0f32; 9 * LANES];
                    p[..kernels.len()].copy_from_slice(kernels);
                    padded = p;
                    &padded
                }
            };
            let mut out = [[0.0f32; LANES]; XI];
            for l in 0..LANES {
                // Tap (r, c) of kernel l: each lane reads its own kernel, 9 values apart.
                let tap = |r: usize, c: usize| taps[l * 9 + r * 3 + c];
                // G g: each column of g transformed; then (G g Gᵀ)[b, ·] = G · (G g)[b, ·].
                let c0 = times_g([tap(0, 0), tap(1, 0), tap(2, 0)]);
                let c1 = times_g([tap(0, 1), tap(1, 1), tap(2, 1)]);
                let c2 = times_g([tap(0, 2), tap(1, 2), tap(2, 2)]);
                for b in 0..ALPHA {
                    let row = times_g([c0[b], c1[b], c2[b]]);
                    for a in 0..ALPHA {
                        out[b * ALPHA + a][l] = row[a];
                    }
                }
            }
            let lanes = kernels.len() / 9;
            for (xi, values) in out.iter().enumerate() {
                let dst = &mut u[xi * c_in + block * LANES..][..lanes];
                match <&mut [f32; LANES]>::try_from(&mut *dst) {
                    Ok(dst) => *dst = *values,
                    Err(_) => dst.iter_mut().zip(values).for_each(|(d, &v)| *d = v),
                }
            }
        }
    }
}

with_simd! {
    /// V [ξ][C] = Bᵀ d B of one tile, from the 6×6 pixels of its padded patch (`patch[k·6 + j]`:
    /// the C channels of pixel (k, j), zeros for padding). `r`: scratch of 36·C values.
    fn tile_input(patch: &[&[f32]; XI], v: &mut [f32], r: &mut [f32]) {
        let c = v.len() / XI;
        // Along x, R[k, ·] = Bᵀ d[k, ·] for each row k of the patch.
        for (k, r) in r.chunks_exact_mut(ALPHA * c).enumerate() {
            map(array(&[], |j| patch[k * ALPHA + j]), every(r, c, 0, 1), times_bt);
        }
        // Then along y, V[·, a] = Bᵀ R[·, a].
        let r = &*r;
        for a in 0..ALPHA {
            let src: [&[f32]; ALPHA] = array(&[], |k| &r[(k * ALPHA + a) * c..][..c]);
            map(src, every(v, c, a, ALPHA), times_bt);
        }
    }
}

with_simd! {
    /// One tile's output pixels from its products M [ξ][C]: Y = Aᵀ M A + bias, written pixel-major
    /// from y[0] (pixel (i, j) of the tile at y[(i·width + j)·C]), those beyond `rows` × `cols`
    /// dropped. `s`: scratch of 24·C values, `junk`: of 4·C.
    fn tile_output(m: &[f32], bias: &[f32], rows: usize, cols: usize, width: usize, y: &mut [f32], s: &mut [f32], junk: &mut [f32]) {
        let c = bias.len();
        // S = Aᵀ M along y: S[·, a] = Aᵀ M[·, a].
        for a in 0..ALPHA {
            let src: [&[f32]; ALPHA] = array(&[], |b| &m[(b * ALPHA + a) * c..][..c]);
            map(src, every(s, c, a, ALPHA), times_at);
        }
        // Y = S A along x, plus the bias (a fifth term of the same pass).
        let s = &*s;
        for i in 0..rows.min(M) {
            let src: [&[f32]; ALPHA + 1] = array(&[], |a| if a < ALPHA { &s[(i * ALPHA + a) * c..][..c] } else { bias });
            let row = &mut y[i * width * c..];
            let (mut pixels, mut spare) = (row[..cols.min(M) * c].chunks_exact_mut(c), junk.chunks_exact_mut(c));
            let dst: [&mut [f32]; M] = std::array::from_fn(|_| pixels.next().or_else(|| spare.next()).expect("4 pixels"));
            map(src, dst, |[m0, m1, m2, m3, m4, m5, bias]| times_at([m0, m1, m2, m3, m4, m5]).map(|y| y + bias));
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
with_simd! {
    /// ∂M [tile][ξ][C_out] = A ∂Y Aᵀ for every tile of one image, from its ∂out pixel-major
    /// ([H·W, C_out], `zeros` standing in for the pixels of a tile beyond the plane). `p`:
    /// scratch of 24·C_out values.
    fn output_adjoint(d_out_t: &[f32], h: usize, w: usize, zeros: &[f32], dm: &mut [f32], p: &mut [f32]) {
        let ((th, tw), c) = (tiles(h, w), zeros.len());
        for ty in 0..th {
            for tx in 0..tw {
                let pixel = |i: usize, j: usize| {
                    let (y, x) = (M * ty + i, M * tx + j);
                    if y < h && x < w { &d_out_t[(y * w + x) * c..][..c] } else { zeros }
                };
                // P = ∂Y Aᵀ along x (row i of P: α vectors), then ∂M = A P along y.
                for i in 0..M {
                    map(array(&[], |j| pixel(i, j)), every(p, c, i * ALPHA, 1), times_a);
                }
                let dm = &mut dm[(ty * tw + tx) * XI * c..][..XI * c];
                for col in 0..ALPHA {
                    let src: [&[f32]; M] = array(&[], |i| &p[(i * ALPHA + col) * c..][..c]);
                    map(src, every(dm, c, col, ALPHA), times_a);
                }
            }
        }
    }
}
