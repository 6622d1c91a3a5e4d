//! im2col and its adjoint col2im: a convolution's input unfolded so that the convolution is one
//! matrix product per image (col [C_in·k·k, H'·W']), with the UNet's cases made cheap: a 3×3
//! "same" convolution copies whole shifted planes, a 1×1 one needs no unfolding at all.

use super::geometry::{Geometry, same};

/// Visits every (row of the im2col matrix, output row) with the input row it reads
/// (None: padding) and the input column of output column 0.
#[inline(always)]
fn for_each_row(g: &Geometry, mut f: impl FnMut(usize, usize, Option<usize>, isize)) {
    for c in 0..g.c_in {
        for kh in 0..g.k {
            for kw in 0..g.k {
                let row = (c * g.k + kh) * g.k + kw;
                for oy in 0..g.h_out {
                    let iy = (oy * g.stride + kh) as isize - g.padding as isize;
                    let input_row = (0..g.h as isize).contains(&iy).then(|| c * g.h * g.w + iy as usize * g.w);
                    f(row, oy, input_row, kw as isize - g.padding as isize);
                }
            }
        }
    }
}

/// The output columns ox whose input column ix0 + ox·stride lies inside [0, w), and the
/// first such input column; None when the kernel column sees only padding (a 3×3 kernel on
/// a 1-pixel-wide input).
#[inline(always)]
fn inside(g: &Geometry, ix0: isize) -> Option<(std::ops::Range<usize>, usize)> {
    let s = g.stride as isize;
    let first = if ix0 < 0 { (-ix0 + s - 1) / s } else { 0 };
    let end = ((g.w as isize - ix0 + s - 1) / s).min(g.w_out as isize); // one past the last
    (first < end).then(|| (first as usize..end as usize, (ix0 + first * s) as usize))
}

/// For a "same" stride-1 convolution (the UNet's 3×3 ones) the im2col row of kernel tap
/// (kh, kw) is the input plane shifted by (kh − p)·w + (kw − p), except in the rows and
/// columns whose source lies in the padding. Calls `f(row, plane start, shift, kw − p, rows)`
/// for every (c, kh, kw), `rows` being the output rows whose source row exists.
#[inline(always)]
fn for_each_shift(g: &Geometry, mut f: impl FnMut(usize, usize, isize, isize, std::ops::Range<usize>)) {
    let p = g.padding as isize;
    for c in 0..g.c_in {
        for kh in 0..g.k {
            let dy = kh as isize - p;
            let rows = (-dy).max(0) as usize..(g.h as isize - dy).min(g.h as isize) as usize;
            for kw in 0..g.k {
                f(
                    (c * g.k + kh) * g.k + kw,
                    c * g.h * g.w,
                    dy * g.w as isize + kw as isize - p,
                    kw as isize - p,
                    rows.clone(),
                );
            }
        }
    }
}

/// The pixels [first, end) of the output rows `rows`, trimmed so that pixel + shift stays
/// in the plane (what is cut lies in the edge columns); None if nothing is left.
#[inline(always)]
fn shifted_span(g: &Geometry, shift: isize, rows: &std::ops::Range<usize>) -> Option<std::ops::Range<usize>> {
    let hw = (g.h * g.w) as isize;
    let first = ((rows.start * g.w) as isize).max(-shift);
    let end = ((rows.end * g.w) as isize).min(hw - shift);
    (first < end).then(|| first as usize..end as usize)
}

/// Zeroes, in one im2col row, the columns whose source lies left or right of the plane.
#[inline(always)]
fn zero_edge_columns(g: &Geometry, row: &mut [f32], dx: isize) {
    let cols = if dx < 0 { 0..((-dx) as usize).min(g.w) } else { g.w.saturating_sub(dx as usize)..g.w };
    for line in row.chunks_mut(g.w) {
        line[cols.clone()].fill(0.0);
    }
}

/// col[(c, kh, kw), (oy, ox)] = x[c, oy·s + kh − p, ox·s + kw − p] (0 outside) for one image;
/// returns `col`.
pub(super) fn im2col<'a>(g: &Geometry, x: &[f32], col: &'a mut [f32]) -> &'a [f32] {
    let n = g.h_out * g.w_out;
    if same(g) {
        for_each_shift(g, |row, plane, shift, dx, rows| {
            let dst = &mut col[row * n..][..n];
            let Some(span) = shifted_span(g, shift, &rows) else {
                return dst.fill(0.0);
            };
            let src = (plane as isize + span.start as isize + shift) as usize;
            dst[..span.start].fill(0.0);
            dst[span.end..].fill(0.0);
            dst[span.clone()].copy_from_slice(&x[src..src + span.len()]);
            if dx != 0 {
                zero_edge_columns(g, dst, dx);
            }
        });
        return col;
    }
    for_each_row(g, |row, oy, input_row, ix0| {
        let dst = &mut col[row * n + oy * g.w_out..][..g.w_out];
        let (Some(start), Some((cols, first_ix))) = (input_row, inside(g, ix0)) else {
            return dst.fill(0.0);
        };
        dst[..cols.start].fill(0.0);
        dst[cols.end..].fill(0.0);
        let src = &x[start + first_ix..start + g.w];
        let dst = &mut dst[cols.clone()];
        if g.stride == 1 {
            dst.copy_from_slice(&src[..dst.len()]);
        } else {
            dst.iter_mut().zip(src.iter().step_by(g.stride)).for_each(|(d, &v)| *d = v);
        }
    });
    col
}

/// The adjoint of [`im2col`]: dx[c, iy, ix] += dcol over every column that read it (dcol
/// is scratch: its padding columns are zeroed on the way).
pub(super) fn col2im(g: &Geometry, dcol: &mut [f32], dx: &mut [f32]) {
    let n = g.h_out * g.w_out;
    if same(g) {
        return for_each_shift(g, |row, plane, shift, dxs, rows| {
            let src = &mut dcol[row * n..][..n];
            if dxs != 0 {
                zero_edge_columns(g, src, dxs);
            }
            let Some(span) = shifted_span(g, shift, &rows) else {
                return;
            };
            let dst = (plane as isize + span.start as isize + shift) as usize;
            dx[dst..dst + span.len()].iter_mut().zip(&src[span]).for_each(|(d, &v)| *d += v);
        });
    }
    for_each_row(g, |row, oy, input_row, ix0| {
        let (Some(start), Some((cols, first_ix))) = (input_row, inside(g, ix0)) else {
            return;
        };
        let src = &dcol[row * n + oy * g.w_out..][cols];
        let dst = &mut dx[start + first_ix..start + g.w];
        if g.stride == 1 {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
        } else {
            dst.iter_mut().step_by(g.stride).zip(src).for_each(|(d, &v)| *d += v);
        }
    });
}
