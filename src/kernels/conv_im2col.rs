//! A convolution's forward and backward passes on row-major slices, per image:
//! * forward: col = im2col(x) [C_in·k·k, H'·W'], out = W [C_out, C_in·k·k] · col + b;
//! * backward: ∂Wᵀ += col · ∂outᵀ, ∂b += Σ ∂out, ∂x = col2im(Wᵀ · ∂out);
//!
//! and the transposed convolution (the UNet's Upsample), which is the backward's ∂x map:
//! * forward: y = col2im(Wᵀ · x) + b;
//! * backward: col = im2col(∂y), ∂x = W · col, ∂Wᵀ += col · xᵀ, ∂b += Σ ∂y;
//!
//! The 3×3 "same" convolutions read the image directly where the products run on AMX tiles
//! ([`super::gemm::Unfold`]). Whether a convolution runs here or by Winograd is decided a layer
//! up, by the operation ([`super::conv2d`]).

use super::gemm::{Lhs, Unfold, split_batch, with_scratch};
#[cfg(not(target_arch = "wasm32"))]
use super::gemm::{sum_in_order, transpose};
use super::geometry::Geometry;
#[cfg(not(target_arch = "wasm32"))]
use super::geometry::{adjoint_kernel, pointwise};
use super::im2col::col2im;
#[cfg(not(target_arch = "wasm32"))]
use super::im2col::im2col;

/// out[b] = W · im2col(x[b]) + bias.
pub(super) fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let unfold = Unfold::new(g);
    let (rows, n) = g.col();
    let (x_len, out_len) = (g.c_in * g.h * g.w, g.c_out * n);
    let mut out = biased(g.batch, bias, n);
    let weight = Lhs::new(g.c_out, rows, weight, false);
    split_batch(g, &mut out, out_len, |images, out, parallelism| {
        with_scratch([unfold.col_len(), 0, 0], |[col, _, _]| {
            for (b, out) in images.zip(out.chunks_mut(out_len)) {
                weight.times_im2col(&unfold, &x[b * x_len..][..x_len], col, out, true, parallelism);
            }
        })
    });
    out
}

/// `batch` images of `bias.len()` planes of `plane` values, each plane filled with its bias:
/// what the products then add to (no zeroing pass first).
fn biased(batch: usize, bias: &[f32], plane: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(batch * bias.len() * plane);
    for _ in 0..batch {
        for &v in bias {
            out.resize(out.len() + plane, v);
        }
    }
    out
}

/// The transposed convolution y[b] = col2im(Wᵀ · x[b]) + bias: the adjoint of the convolution
/// `g`, which maps [C_in, H, W] to [C_out, H', W'], applied to x [B, C_out, H', W'], giving
/// y [B, C_in, H, W]. `weight` [C_out, C_in, k, k] is the transposed convolution's own (burn's
/// ConvTranspose2d stores [its C_in, its C_out, k, k]), `bias` [C_in].
pub(super) fn transposed(g: &Geometry, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
    let (rows, n) = g.col();
    let (x_len, y_len) = (g.c_out * n, g.c_in * g.h * g.w);
    let mut y = biased(g.batch, bias, g.h * g.w);
    let weight_t = Lhs::new(rows, g.c_out, weight, true);
    split_batch(g, &mut y, y_len, |images, y, parallelism| {
        with_scratch([rows * n, 0, 0], |[col, _, _]| {
            for (b, y) in images.zip(y.chunks_mut(y_len)) {
                weight_t.times(n, col, false, &x[b * x_len..][..x_len], parallelism);
                col2im(g, col, y);
            }
        })
    });
    y
}

/// (∂x, ∂W, ∂b) of [`transposed`] from ∂y: ∂x[b] = W · im2col(∂y[b]) (the convolution `g`
/// itself), ∂Wᵀ [C_in·k·k, C_out] += im2col(∂y[b]) · x[b]ᵀ, ∂b = Σ ∂y.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn transposed_backward(g: &Geometry, x: &[f32], weight: &[f32], d_y: &[f32]) -> [Vec<f32>; 3] {
    let (rows, n) = g.col();
    let (x_len, y_len) = (g.c_out * n, g.c_in * g.h * g.w);
    let weight = Lhs::new(g.c_out, rows, weight, false);
    let mut dx = vec![0.0f32; g.batch * x_len];
    let partials = split_batch(g, &mut dx, x_len, |images, dx, parallelism| {
        let (mut dw_t, mut db) = (vec![0.0f32; rows * g.c_out], vec![0.0f32; g.c_in]);
        with_scratch([rows * n, n * g.c_out, 0], |[col, x_t, _]| {
            for (i, (b, dx)) in images.zip(dx.chunks_mut(x_len)).enumerate() {
                let d_y = &d_y[b * y_len..][..y_len];
                for (d, plane) in db.iter_mut().zip(d_y.chunks(g.h * g.w)) {
                    *d += plane.iter().sum::<f32>();
                }
                let col = im2col(g, d_y, col);
                weight.times(n, dx, false, col, parallelism);
                // xᵀ written out once, for the reason `backward` writes ∂outᵀ.
                transpose(g.c_out, n, &x[b * x_len..][..x_len], x_t);
                Lhs::new(rows, n, col, false).times(g.c_out, &mut dw_t, i > 0, x_t, parallelism);
            }
        });
        (dw_t, db)
    });
    let (dw_t, db) = sum_in_order(partials);
    let mut dw = vec![0.0f32; g.c_out * rows];
    transpose(rows, g.c_out, &dw_t, &mut dw);
    [dx, dw, db]
}

/// (∂x, ∂W, ∂b) from ∂out.
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn backward(g: &Geometry, x: &[f32], weight: &[f32], d_out: &[f32]) -> [Vec<f32>; 3] {
    let (rows, n) = g.col();
    let (x_len, out_len) = (g.c_in * g.h * g.w, g.c_out * n);
    // Each slice of the batch sums its own ∂Wᵀ and ∂b; the sums are added in batch order, so
    // that a run repeats bit for bit.
    let unfold = Unfold::new(g);
    // Where the AMX tiles read im2col matrices from the image itself, a "same" convolution's
    // ∂x is one more such convolution, of ∂out by the adjoint kernel: no ∂col is written and
    // scattered back by col2im. Elsewhere ∂x is GEMM + col2im.
    let unfold_t = Unfold::new(&Geometry { c_in: g.c_out, c_out: g.c_in, ..*g });
    let by_adjoint = unfold_t.reads_image() && !pointwise(g);
    let adjoint = by_adjoint.then(|| adjoint_kernel(g, weight));
    let mut dx = vec![0.0f32; g.batch * x_len];
    // The left operand of ∂x's product, packed once and only the one that is used: the adjoint
    // kernel, or Wᵀ for ∂col.
    let dx_lhs = match &adjoint {
        Some(adjoint) => Lhs::new(g.c_in, g.c_out * g.k * g.k, adjoint, false),
        None => Lhs::new(rows, g.c_out, weight, true),
    };
    let partials = split_batch(g, &mut dx, x_len, |images, dx, parallelism| {
        let (mut dw_t, mut db) = (vec![0.0f32; rows * g.c_out], vec![0.0f32; g.c_out]);
        let dcol_len = if by_adjoint || pointwise(g) { 0 } else { rows * n };
        with_scratch([unfold.col_len(), dcol_len, g.c_out * n], |[col, dcol, d_out_t]| {
            for (i, (b, dx)) in images.zip(dx.chunks_mut(x_len)).enumerate() {
                let d_out = &d_out[b * out_len..][..out_len];
                let x = &x[b * x_len..][..x_len];
                // ∂Wᵀ [rows, C_out] += col [rows, n] · ∂outᵀ [n, C_out]. gemm copies the
                // operand that shares the output's contiguous axis into panels, element by
                // element when that axis is strided: ∂W = ∂out·colᵀ would copy col that way
                // (the larger matrix), this form copies ∂outᵀ, transposed here once.
                transpose(g.c_out, n, d_out, d_out_t);
                Lhs::im2col(&unfold, x, col).times(g.c_out, &mut dw_t, i > 0, d_out_t, parallelism);
                for (d, row) in db.iter_mut().zip(d_out.chunks(n)) {
                    *d += row.iter().sum::<f32>();
                }
                // ∂col [rows, n] = Wᵀ [rows, C_out] · ∂out [C_out, n]; for a 1×1 conv ∂col is ∂x.
                if by_adjoint {
                    dx_lhs.times_im2col(&unfold_t, d_out, &mut [], dx, false, parallelism);
                } else if pointwise(g) {
                    dx_lhs.times(n, dx, false, d_out, parallelism);
                } else {
                    dx_lhs.times(n, dcol, false, d_out, parallelism);
                    col2im(g, dcol, dx);
                }
            }
        });
        (dw_t, db)
    });
    let (dw_t, db) = sum_in_order(partials);
    let mut dw = vec![0.0f32; g.c_out * rows];
    transpose(rows, g.c_out, &dw_t, &mut dw);
    [dx, dw, db]
}
