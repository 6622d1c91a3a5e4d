//! The UNet's 3×3 "same" convolutions by Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", arXiv 1509.09308), where the
//! products run in f32 (every CPU without AMX, and the browser's CPU fallback).
//!
//! Each 2×2 block of output pixels ("tile") is computed from the 4×4 input patch d around it as
//!
//!   Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A,
//!
//! so that per tile and channel pair the 36 multiply-adds of direct convolution become 16. Summed
//! over the input channels, position ξ of the 4×4 transformed tiles is one matrix product over
//! all tiles at once: M_ξ [C_out, tiles] = U_ξ [C_out, C_in] · V_ξ [C_in, tiles], with U = G g Gᵀ
//! (the kernel transform), V = Bᵀ d B (the input transform), and Y read back by the output
//! transform. 2.25× fewer flops than im2col's product, and no im2col matrix; the transforms'
//! coefficients are 0, ±1 and ±½, so they round no more than a few additions do.
//!
//! The backward pass uses the same kernel for ∂x (see [`super::conv2d_gemm::backward`]).

use super::gemm::{Rows, Strided, product, split_batch, with_held, with_scratch};
use super::im2col::{Geometry, same};

/// Positions of a transformed 4×4 tile: 16 products per convolution.
const XI: usize = 16;

/// Values of V_ξ per product (64 KB, V about 1 MB): images whose tiles go through the
/// products together, so that small images make one product per ξ rather than one each, and
/// V stays in this core's L2 cache while the 16 products run.
const CHUNK_VALUES: usize = 1 << 14;

/// Tiles per call below which the kernel transform (about as costly per kernel as the
/// products of 40-50 tiles) costs more than the products save: batch 1 at 8×8 and 16×16 keeps
/// im2col.
const MIN_TILES: usize = 64;

/// Whether `g` is a convolution this file computes: 3×3, stride 1, padding 1, with at least 8
/// channels on both sides and [`MIN_TILES`] tiles in the batch. The UNet's first and last
/// convolutions (1-3 image channels) keep im2col: their products are too thin to pay for the
/// transforms.
pub(super) fn applies(g: &Geometry) -> bool {
    let tiles = g.batch * g.h.div_ceil(2) * g.w.div_ceil(2);
    g.k == 3 && g.padding == 1 && same(g) && g.c_in >= 8 && g.c_out >= 8 && tiles >= MIN_TILES
}

/// out[b] = conv(x[b], weight) (+ bias) for a batch of [C_in, H, W] images.
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    debug_assert!(applies(g));
    let (hw, tiles, per_chunk) = (g.h * g.w, g.h.div_ceil(2) * g.w.div_ceil(2), images_per_chunk(g));
    let out_len = g.c_out * hw;
    // Every value is written by the output transform.
    let mut out = vec![0.0f32; g.batch * out_len];
    // U [C_out][ξ][C_in], the output channels spread over the threads.
    with_held(XI * g.c_out * g.c_in, |u| {
        let kernels = 9 * g.c_in;
        each_part(u, XI * g.c_in, true, 0, |co, u, _| kernel_transform(&weight[co * kernels..][..kernels], u));
        let u = &*u;
        split_batch(g.batch, &mut out, out_len, |images, out, parallelism| {
            let parallel = !matches!(parallelism, gemm::Parallelism::None);
            let images: Vec<usize> = images.collect();
            for (chunk, out) in images.chunks(per_chunk).zip(out.chunks_mut(per_chunk * out_len)) {
                let n = chunk.len() * tiles;
                with_scratch([XI * g.c_in * n, XI * g.c_out * n, 0], |[v, m, _]| {
                    transform_inputs(g, x, chunk, v, parallel);
                    // M_ξ [C_out, n] = U_ξ [C_out, C_in] · V_ξ [C_in, n], M laid out [C_out][ξ][n];
                    // split by output channels when the batch is too small to split.
                    let per_part = if parallel { g.c_out.div_ceil(2) } else { g.c_out };
                    each_part(m, per_part * XI * n, parallel, 0, |part, m, _| {
                        let rows = m.len() / (XI * n);
                        for xi in 0..XI {
                            let a =
                                Strided { data: &u[(part * per_part * XI + xi) * g.c_in..], cs: 1, rs: XI * g.c_in };
                            let b = Strided { data: &v[xi * n..], cs: 1, rs: XI * n };
                            product(
                                rows,
                                n,
                                g.c_in,
                                Rows(&mut m[xi * n..], XI * n),
                                false,
                                a,
                                b,
                                gemm::Parallelism::None,
                            );
                        }
                    });
                    each_part(out, hw, parallel, scratch_len(g.h, g.w), |p, plane, scratch| {
                        let (i, c) = (p / g.c_out, p % g.c_out);
                        let bias = bias.map_or(0.0, |b| b[c]);
                        output_transform(&m[c * XI * n + i * tiles..], n, g.h, g.w, bias, plane, scratch);
                    });
                });
            }
        });
    });
    out
}

/// f(index, part, scratch) for each part of `data` (`len` values each, the last one possibly
/// shorter), spread over the threads when `parallel`, else in turn on this one; `scratch`: the
/// length of a scratch buffer per thread.
fn each_part(
    data: &mut [f32],
    len: usize,
    parallel: bool,
    scratch: usize,
    f: impl Fn(usize, &mut [f32], &mut [f32]) + Sync + Send,
) {
    #[cfg(pool)]
    if parallel {
        use rayon::prelude::*;
        return data
            .par_chunks_mut(len)
            .enumerate()
            .for_each_init(|| vec![0.0f32; scratch], |s, (i, part)| f(i, part, s));
    }
    let _ = parallel;
    let mut s = vec![0.0f32; scratch];
    data.chunks_mut(len).enumerate().for_each(|(i, part)| f(i, part, &mut s));
}

/// (∂x, ∂W, ∂b) from ∂out. ∂x is the convolution of ∂out with the kernel turned half a turn
/// and its channel axes swapped, so [`forward`] again. ∂W by the same algorithm run backwards:
/// ∂M = A ∂Y Aᵀ per tile (the adjoint of the output transform), ∂U_ξ = Σ_tiles ∂M_ξ V_ξᵀ (one
/// product per ξ, 2.25× fewer flops than im2col's), ∂g = Gᵀ ∂U G.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn backward(g: &Geometry, x: &[f32], weight: &[f32], d_out: &[f32]) -> [Vec<f32>; 3] {
    let g_t = Geometry { c_in: g.c_out, c_out: g.c_in, ..*g };
    let mut dx = forward(&g_t, d_out, &super::conv2d_gemm::turned(g, weight), None);
    let (hw, tiles, per_chunk) = (g.h * g.w, g.h.div_ceil(2) * g.w.div_ceil(2), images_per_chunk(g));
    let out_len = g.c_out * hw;
    // Each slice of the batch sums its own ∂Uᵀ and ∂b; the sums are added in batch order, so
    // that a run repeats bit for bit.
    let partials = split_batch(g.batch, &mut dx, g.c_in * hw, |images, _, parallelism| {
        let parallel = !matches!(parallelism, gemm::Parallelism::None);
        let (mut du_t, mut db) = (vec![0.0f32; XI * g.c_in * g.c_out], vec![0.0f32; g.c_out]);
        let zeros = vec![0.0f32; g.c_out];
        let images: Vec<usize> = images.collect();
        for chunk in images.chunks(per_chunk) {
            let n = chunk.len() * tiles;
            with_scratch([XI * g.c_in * n, XI * n * g.c_out, out_len], |[v, dm_t, d_out_t]| {
                transform_inputs(g, x, chunk, v, parallel);
                for (i, &b) in chunk.iter().enumerate() {
                    let d_out = &d_out[b * out_len..][..out_len];
                    for (d, plane) in db.iter_mut().zip(d_out.chunks_exact(hw)) {
                        *d += plane.iter().sum::<f32>();
                    }
                    // ∂out pixel-major ([H·W, C_out]), so that the transform below runs along
                    // the channels and writes ∂Mᵀ rows the products read as they are.
                    super::gemm::transpose(g.c_out, hw, d_out, d_out_t);
                    output_adjoint(d_out_t, g.h, g.w, &zeros, &mut dm_t[i * tiles * g.c_out..], n * g.c_out);
                }
                // ∂U_ξᵀ [C_in, C_out] += V_ξ [C_in, n] · ∂M_ξᵀ [n, C_out].
                for xi in 0..XI {
                    let du_t = &mut du_t[xi * g.c_in * g.c_out..][..g.c_in * g.c_out];
                    let a = Strided { data: &v[xi * n..], cs: 1, rs: XI * n };
                    let b = Strided { data: &dm_t[xi * n * g.c_out..], cs: 1, rs: g.c_out };
                    product(g.c_in, g.c_out, n, Rows(du_t, g.c_out), true, a, b, parallelism);
                }
            });
        }
        (du_t, db)
    });
    let mut partials = partials.into_iter();
    let (mut du_t, mut db) = partials.next().expect("a batch has at least one image");
    for (pu, pb) in partials {
        du_t.iter_mut().zip(pu).for_each(|(a, b)| *a += b);
        db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
    }
    [dx, kernel_adjoint(g, &du_t), db]
}

/// How many images' tiles go through the products together: one product per position ξ over
/// several small images rather than one per image, within [`CHUNK_VALUES`].
fn images_per_chunk(g: &Geometry) -> usize {
    (CHUNK_VALUES / g.c_in / (g.h.div_ceil(2) * g.w.div_ceil(2))).max(1)
}

/// V of every channel of the images `chunk` into v [C_in][ξ][n], n = the chunk's tiles (image
/// by image), the channels spread over the threads when `parallel`.
fn transform_inputs(g: &Geometry, x: &[f32], chunk: &[usize], v: &mut [f32], parallel: bool) {
    let (hw, tiles) = (g.h * g.w, g.h.div_ceil(2) * g.w.div_ceil(2));
    let n = chunk.len() * tiles;
    each_part(&mut v[..g.c_in * XI * n], XI * n, parallel, scratch_len(g.h, g.w), |c, v, scratch| {
        for (i, &b) in chunk.iter().enumerate() {
            let plane = &x[(b * g.c_in + c) * hw..][..hw];
            input_transform(plane, g.h, g.w, &mut v[i * tiles..], n, scratch);
        }
    });
}

/// ∂W [C_out, C_in, 3, 3] = Gᵀ ∂U G from ∂Uᵀ [ξ][C_in][C_out], the adjoint of
/// [`kernel_transform`].
#[cfg(not(target_arch = "wasm32"))]
fn kernel_adjoint(g: &Geometry, du_t: &[f32]) -> Vec<f32> {
    let pair = g.c_out * g.c_in;
    let mut dw = vec![0.0f32; pair * 9];
    // Gᵀ·v for a 4-vector v.
    let gtv = |v: [f32; 4]| [v[0] + 0.5 * (v[1] + v[2]), 0.5 * (v[1] - v[2]), 0.5 * (v[1] + v[2]) + v[3]];
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            let du = |b: usize, a: usize| du_t[(b * 4 + a) * pair + ci * g.c_out + co];
            // Gᵀ ∂U: each column a of ∂U transformed, then each row of the result.
            let cols: [[f32; 3]; 4] = std::array::from_fn(|a| gtv([du(0, a), du(1, a), du(2, a), du(3, a)]));
            let k = &mut dw[(co * g.c_in + ci) * 9..][..9];
            for i in 0..3 {
                k[i * 3..][..3].copy_from_slice(&gtv([cols[0][i], cols[1][i], cols[2][i], cols[3][i]]));
            }
        }
    }
    dw
}

/// Kernels transformed at a time by [`kernel_transform`], one per vector lane.
const LANES: usize = 16;

/// G·v for a 3-vector v, G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]].
#[inline(always)]
fn g_times([v0, v1, v2]: [f32; 3]) -> [f32; 4] {
    [v0, 0.5 * (v0 + v1 + v2), 0.5 * (v0 - v1 + v2), v2]
}

with_simd! {
    /// U_ξ = G g Gᵀ for the kernels g = weight[co, ci, ·, ·] (3×3) of one output channel, into
    /// u [ξ][C_in]; [`LANES`] kernels at a time, each in its own vector lane.
    fn kernel_transform(weight: &[f32], u: &mut [f32]) {
        let c_in = weight.len() / 9;
        for (block, kernels) in weight.chunks(9 * LANES).enumerate() {
            // The last block padded with zero kernels, so that every block is read the same way.
            let mut padded = [0.0f32; 9 * LANES];
            let taps: &[f32; 9 * LANES] = match kernels.try_into() {
                Ok(full) => full,
                Err(_) => {
                    padded[..kernels.len()].copy_from_slice(kernels);
                    &padded
                }
            };
            let mut out = [[0.0f32; LANES]; XI];
            for l in 0..LANES {
                // Tap (r, c) of kernel l: each lane reads its own kernel, 9 values apart.
                let tap = |r: usize, c: usize| taps[l * 9 + r * 3 + c];
                // G g: each column of g transformed; then (G g Gᵀ)[b, ·] = G · (G g)[b, ·].
                let c0 = g_times([tap(0, 0), tap(1, 0), tap(2, 0)]);
                let c1 = g_times([tap(0, 1), tap(1, 1), tap(2, 1)]);
                let c2 = g_times([tap(0, 2), tap(1, 2), tap(2, 2)]);
                for b in 0..4 {
                    let [u0, u1, u2, u3] = g_times([c0[b], c1[b], c2[b]]);
                    (out[b * 4][l], out[b * 4 + 1][l], out[b * 4 + 2][l], out[b * 4 + 3][l]) = (u0, u1, u2, u3);
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

/// dst[i] = f(a[i], b[i], c[i]).
#[inline(always)]
fn zip3(dst: &mut [f32], a: &[f32], b: &[f32], c: &[f32], f: impl Fn(f32, f32, f32) -> f32) {
    for (((d, &a), &b), &c) in dst.iter_mut().zip(a).zip(b).zip(c) {
        *d = f(a, b, c);
    }
}

/// dst[i] = f(a[i], b[i], c[i], d[i]).
#[inline(always)]
fn zip4(dst: &mut [f32], [a, b, c, d]: [&[f32]; 4], f: impl Fn(f32, f32, f32, f32) -> f32) {
    for ((((o, &a), &b), &c), &d) in dst.iter_mut().zip(a).zip(b).zip(c).zip(d) {
        *o = f(a, b, c, d);
    }
}

/// The scratch [`input_transform`] and [`output_transform`] need for an [H, W] plane: the
/// padded plane's 8 strided views, or the output's 12 planes of tiles.
fn scratch_len(h: usize, w: usize) -> usize {
    12 * (h.div_ceil(2) + 1) * w.div_ceil(2)
}

with_simd! {
    /// V_ξ = (Bᵀ d B)_ξ for every 4×4 patch d of one [H, W] plane zero-padded by one pixel,
    /// patch (ty, tx) starting at padded pixel (2ty, 2tx), with
    /// Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]; V_ξ of tile t = ty·⌈W/2⌉ + tx
    /// lands at v[ξ·stride + t]. `scratch`: [`scratch_len`] values.
    fn input_transform(x: &[f32], h: usize, w: usize, v: &mut [f32], stride: usize, scratch: &mut [f32]) {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let view = (th + 1) * tw;
        let views = &mut scratch[..8 * view];
        // The padded plane as 8 views [parity of the row][column 2tx, 2tx + 1, 2tx + 2, 2tx + 3]
        // [row / 2][tx], so that d[k][j] of every tile is one run of consecutive values:
        // rows 2ty + k for ty = 0, 1, … are rows k / 2, k / 2 + 1, … of parity k % 2. Padded
        // column c is pixel c − 1; each view row is read straight from the image row.
        for py in 0..2 * th + 2 {
            let mut rows = views[(py % 2) * 4 * view..][..4 * view].chunks_exact_mut(view).map(|v| &mut v[py / 2 * tw..][..tw]);
            let [e0, o0, e1, o1] = std::array::from_fn(|_| rows.next().expect("4 views of each parity"));
            let Some(y) = py.checked_sub(1).filter(|&y| y < h) else {
                for row in [e0, o0, e1, o1] {
                    row.fill(0.0);
                }
                continue;
            };
            let x = &x[y * w..][..w];
            // Columns 2tx + 1, 2tx + 2: pixels 2tx, 2tx + 1.
            let pairs = x.chunks_exact(2);
            let full = pairs.len();
            if let [last] = pairs.remainder() {
                (o0[full], e1[full]) = (*last, 0.0);
            }
            for ((pair, o0), e1) in pairs.zip(o0.iter_mut()).zip(e1.iter_mut()) {
                (*o0, *e1) = (pair[0], pair[1]);
            }
            // Columns 2tx, 2tx + 3: pixels 2tx − 1, 2tx + 2 (padding at the edges).
            let pairs = x[1..].chunks_exact(2);
            let full = pairs.len();
            for ((pair, e0), o1) in pairs.zip(e0[1..].iter_mut()).zip(o1.iter_mut()) {
                (*e0, *o1) = (pair[0], pair[1]);
            }
            e0[0] = 0.0;
            e0[full + 1..].fill(0.0);
            o1[full..].fill(0.0);
        }
        let views = &*views;
        let tiles = th * tw;
        let d = |k: usize, j: usize| &views[((k % 2) * 4 + j) * view + k / 2 * tw..][..tiles];
        // Along x, R[k, a] = (d[k] Bᵀᵀ)[a]: a = 0: d0 − d2, 1: d1 + d2, 2: d2 − d1, 3: d1 − d3,
        // each the two terms p ± q of row k; then along y, V[b, a] = R[k1, a] ± R[k2, a]:
        // b = 0: R0 − R2, 1: R1 + R2, 2: R2 − R1, 3: R1 − R3.
        let terms = |k: usize, a: usize| match a {
            0 => [d(k, 0), d(k, 2)],
            1 => [d(k, 1), d(k, 2)],
            2 => [d(k, 2), d(k, 1)],
            _ => [d(k, 1), d(k, 3)],
        };
        for (b, (k1, k2, sb)) in [(0, 2, -1.0f32), (1, 2, 1.0), (2, 1, -1.0), (1, 3, -1.0)].into_iter().enumerate() {
            for a in 0..4 {
                let ([p, q], [r, s]) = (terms(k1, a), terms(k2, a));
                let dst = &mut v[(b * 4 + a) * stride..][..tiles];
                if a == 1 {
                    zip4(dst, [p, q, r, s], |p, q, r, s| (p + q) + sb * (r + s));
                } else {
                    zip4(dst, [p, q, r, s], |p, q, r, s| (p - q) + sb * (r - s));
                }
            }
        }
    }
}

with_simd! {
    /// One output plane [H, W] from its products M_ξ (tile t at m[ξ·stride + t]):
    /// Y = Aᵀ M A + bias per tile, with Aᵀ = [[1, 1, 1, 0], [0, 1, −1, −1]], the pixels of a
    /// tile that fall outside an odd-sized plane dropped. `scratch`: [`scratch_len`] values.
    fn output_transform(m: &[f32], stride: usize, h: usize, w: usize, bias: f32, out: &mut [f32], scratch: &mut [f32]) {
        let (th, tw) = (h.div_ceil(2), w.div_ceil(2));
        let tiles = th * tw;
        let (s, y) = scratch[..12 * tiles].split_at_mut(8 * tiles);
        let mm = |b: usize, a: usize| &m[(b * 4 + a) * stride..][..tiles];
        // S = Aᵀ M: S[0, a] = M[0, a] + M[1, a] + M[2, a], S[1, a] = M[1, a] − M[2, a] − M[3, a].
        for a in 0..4 {
            zip3(&mut s[a * tiles..][..tiles], mm(0, a), mm(1, a), mm(2, a), |p, q, r| p + q + r);
            zip3(&mut s[(4 + a) * tiles..][..tiles], mm(1, a), mm(2, a), mm(3, a), |p, q, r| p - q - r);
        }
        // Y = S A, plus the bias: Y[i, 0] = S[i, 0] + S[i, 1] + S[i, 2], Y[i, 1] = S[i, 1] − S[i, 2] − S[i, 3].
        for i in 0..2 {
            let si = |a: usize| &s[(i * 4 + a) * tiles..][..tiles];
            let (y0, y1) = y[2 * i * tiles..][..2 * tiles].split_at_mut(tiles);
            zip3(y0, si(0), si(1), si(2), |p, q, r| p + q + r + bias);
            zip3(y1, si(1), si(2), si(3), |p, q, r| p - q - r + bias);
        }
        for (r, row) in out[..h * w].chunks_exact_mut(w).enumerate() {
            let (ty, i) = (r / 2, r % 2);
            let y0 = &y[2 * i * tiles + ty * tw..][..tw];
            let y1 = &y[(2 * i + 1) * tiles + ty * tw..][..tw];
            let mut pairs = row.chunks_exact_mut(2);
            for ((pair, &a), &b) in (&mut pairs).zip(y0).zip(y1) {
                pair[0] = a;
                pair[1] = b;
            }
            if let [last] = pairs.into_remainder() {
                *last = y0[tw - 1];
            }
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
with_simd! {
    /// ∂M_ξᵀ = (A ∂Y Aᵀ)_ξ for every tile of one image, from its ∂out pixel-major
    /// ([H·W, C_out], `zeros` standing in for the pixels of a tile outside an odd-sized plane),
    /// with A = [[1, 0], [1, 1], [1, −1], [0, −1]]: the row of tile t lands at
    /// dm_t[ξ·stride + t·C_out].
    fn output_adjoint(d_out_t: &[f32], h: usize, w: usize, zeros: &[f32], dm_t: &mut [f32], stride: usize) {
        let (th, tw, c) = (h.div_ceil(2), w.div_ceil(2), zeros.len());
        // A[b, i] for b = 0..4, i = 0..2.
        const A: [[f32; 2]; 4] = [[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [0.0, -1.0]];
        for ty in 0..th {
            for tx in 0..tw {
                let pixel = |i: usize, j: usize| {
                    let (y, x) = (2 * ty + i, 2 * tx + j);
                    if y < h && x < w { &d_out_t[(y * w + x) * c..][..c] } else { zeros }
                };
                let (y00, y01, y10, y11) = (pixel(0, 0), pixel(0, 1), pixel(1, 0), pixel(1, 1));
                let t = ty * tw + tx;
                for b in 0..4 {
                    for a in 0..4 {
                        // ∂M[b, a] = Σ_ij A[b, i] A[a, j] ∂Y[i, j].
                        let k = |i: usize, j: usize| A[b][i] * A[a][j];
                        let (k00, k01, k10, k11) = (k(0, 0), k(0, 1), k(1, 0), k(1, 1));
                        let dst = &mut dm_t[(b * 4 + a) * stride + t * c..][..c];
                        for ((((d, &p), &q), &r), &s) in dst.iter_mut().zip(y00).zip(y01).zip(y10).zip(y11) {
                            *d = k00 * p + k01 * q + k10 * r + k11 * s;
                        }
                    }
                }
            }
        }
    }
}
