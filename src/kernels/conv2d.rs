//! The UNet's convolutions (every `Conv2d`: 3×3, its stride-2 Downsample, the 1×1 shortcuts) as
//! im2col + one matrix product per image.
//!
//! burn-flex 0.22's conv2d reaches about 27 GFLOP/s on two cores here and its backward goes
//! through generic fallbacks (a transposed convolution, and a convolution with batch and
//! channels swapped for the weight gradient); the `gemm` crate that flex itself uses reaches
//! 45-60 GFLOP/s on one core for the same products laid out as below. So on flex, per image:
//! * forward: col = im2col(x) [C_in·k·k, H'·W'], out = W [C_out, C_in·k·k] · col + b;
//! * backward: ∂Wᵀ += col · ∂outᵀ, ∂b += Σ ∂out, ∂x = col2im(Wᵀ · ∂out).
//!
//! Other backends (wgpu and the other cubecl runtimes) run burn's own conv2d. Dilation and
//! groups are not used by the UNet; a layer with either falls back to burn's conv2d everywhere.

#[cfg(not(target_arch = "wasm32"))]
use burn::backend::autodiff::{
    Autodiff, NodeId,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::{Flex, FlexTensor};
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Backend, Cube, Dispatch, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::{DType, Shape, Tensor, TensorData};

use super::f32s;

/// `conv.forward(x)` for a [B, C, H, W] tensor.
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
        (Some(p), Some(bias))
            if square && conv.dilation == [1, 1] && conv.groups == 1 && h.min(w) + 2 * p >= conv.kernel_size[0] =>
        {
            Tensor::from_dispatch(<Dispatch as Conv2dGemm>::conv2d_gemm(
                x.into_dispatch(),
                conv.weight.val().into_dispatch(),
                bias.val().into_dispatch(),
                conv.stride[0],
                p,
            ))
        }
        _ => conv.forward(x),
    }
}

// The browser build has no autodiff.
#[backend_extension(Flex, Cube, Autodiff: cfg(not(target_arch = "wasm32")))]
pub trait Conv2dGemm: Backend {
    /// A square-kernel convolution with bias, equal stride and padding on both axes; the
    /// default is burn's conv2d.
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        Self::conv2d(x, weight, Some(bias), options(stride, padding))
    }
}

fn options(stride: usize, padding: usize) -> ConvOptions<2> {
    ConvOptions::new([stride; 2], [padding; 2], [1, 1], 1)
}

impl Conv2dGemm for Cube {}
#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> Conv2dGemm for Autodiff<Cube, C> {}

impl Conv2dGemm for Flex {
    fn conv2d_gemm(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, stride: usize, padding: usize) -> FlexTensor {
        if x.dtype() != DType::F32 {
            return Self::conv2d(x, weight, Some(bias), options(stride, padding));
        }
        let geometry = Geometry::new(&x.shape(), &weight.shape(), stride, padding);
        let (x, weight, bias) = (x.to_contiguous(), weight.to_contiguous(), bias.to_contiguous());
        let out = kernel::forward(&geometry, f32s(&x), f32s(&weight), f32s(&bias));
        FlexTensor::from_data(TensorData::new(out, geometry.out_shape()))
    }
}

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    h: usize,
    w: usize,
    k: usize,
    stride: usize,
    padding: usize,
    h_out: usize,
    w_out: usize,
}

impl Geometry {
    fn new(x: &Shape, weight: &Shape, stride: usize, padding: usize) -> Self {
        let (h, w, k) = (x[2], x[3], weight[2]);
        Self {
            batch: x[0],
            c_in: x[1],
            c_out: weight[0],
            h,
            w,
            k,
            stride,
            padding,
            h_out: (h + 2 * padding - k) / stride + 1,
            w_out: (w + 2 * padding - k) / stride + 1,
        }
    }

    fn out_shape(&self) -> Shape {
        Shape::new([self.batch, self.c_out, self.h_out, self.w_out])
    }

    /// Rows of the im2col matrix (C_in·k·k) and its columns (output pixels).
    fn col(&self) -> (usize, usize) {
        (self.c_in * self.k * self.k, self.h_out * self.w_out)
    }
}

/// Autodiff over flex: the forward above, and the three gradients as matrix products.
#[cfg(not(target_arch = "wasm32"))]
impl<C: CheckpointStrategy> Conv2dGemm for Autodiff<Flex, C> {
    fn conv2d_gemm(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        stride: usize,
        padding: usize,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Gemm;

        impl Backward<Flex, 3> for Gemm {
            type State = ([NodeId; 2], usize, usize);

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
                let ([x_id, weight_id], stride, padding) = ops.state;
                let d_out = grads.consume::<Flex>(&ops.node).to_contiguous();
                let [x, weight] =
                    [x_id, weight_id].map(|id| checkpointer.retrieve_node_output::<FlexTensor>(id).to_contiguous());
                let geometry = Geometry::new(&x.shape(), &weight.shape(), stride, padding);
                let (dx, dw, db) = kernel::backward(&geometry, f32s(&x), f32s(&weight), f32s(&d_out));
                let [node_x, node_weight, node_bias] = ops.parents;
                let shapes = [x.shape(), weight.shape(), Shape::new([geometry.c_out])];
                for ((node, grad), shape) in [node_x, node_weight, node_bias].into_iter().zip([dx, dw, db]).zip(shapes)
                {
                    if let Some(node) = node {
                        grads.register::<Flex>(node.id, FlexTensor::from_data(TensorData::new(grad, shape)));
                    }
                }
            }
        }

        if x.primitive().dtype() != DType::F32 {
            return Self::conv2d(x, weight, Some(bias), options(stride, padding));
        }
        let forward = |x: FloatTensor<Self>, weight: FloatTensor<Self>, bias: FloatTensor<Self>| {
            Flex::conv2d_gemm(x.into_primitive(), weight.into_primitive(), bias.into_primitive(), stride, padding)
        };
        match Gemm.prepare::<C>([x.node(), weight.node(), bias.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let state = ([prep.checkpoint(&x), prep.checkpoint(&weight)], stride, padding);
                prep.finish(state, forward(x, weight, bias))
            }
            OpsKind::UnTracked(prep) => prep.finish(forward(x, weight, bias)),
        }
    }
}

/// The flex kernels on plain row-major slices.
mod kernel {
    use super::Geometry;

    /// `dst = a·b` (`dst += a·b` when accumulating) for row-major `a` [m, k] (or its transpose
    /// stored [k, m]) and `b` [k, n] (or its transpose stored [n, k]).
    #[allow(clippy::too_many_arguments)]
    fn matmul(
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

    /// Whether the shifted-plane path applies: stride 1 and output size = input size.
    fn same(g: &Geometry) -> bool {
        g.stride == 1 && g.h_out == g.h && g.w_out == g.w
    }

    /// Zeroes, in one im2col row, the columns whose source lies left or right of the plane.
    #[inline(always)]
    fn zero_edge_columns(g: &Geometry, row: &mut [f32], dx: isize) {
        let cols = if dx < 0 { 0..((-dx) as usize).min(g.w) } else { g.w.saturating_sub(dx as usize)..g.w };
        for line in row.chunks_mut(g.w) {
            line[cols.clone()].fill(0.0);
        }
    }

    /// A 1×1 convolution with stride 1 and no padding, whose im2col matrix is the image itself.
    fn pointwise(g: &Geometry) -> bool {
        g.k == 1 && g.stride == 1 && g.padding == 0
    }

    /// col[(c, kh, kw), (oy, ox)] = x[c, oy·s + kh − p, ox·s + kw − p] (0 outside) for one image;
    /// returns `col`.
    fn im2col<'a>(g: &Geometry, x: &[f32], col: &'a mut [f32]) -> &'a [f32] {
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
    #[cfg(not(target_arch = "wasm32"))]
    fn col2im(g: &Geometry, dcol: &mut [f32], dx: &mut [f32]) {
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

    /// Runs `f(images, their slice of out, parallelism of each product)` over the batch, `out`
    /// holding `per_image` values per image: slices of images on flex's threads when there are
    /// at least as many images as threads, else the images in turn with each product on every
    /// thread. The results come back in batch order.
    #[cfg(not(target_arch = "wasm32"))]
    fn split_batch<R: Send>(
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

    /// The browser runs the whole batch on its one thread.
    #[cfg(target_arch = "wasm32")]
    fn split_batch<R>(
        batch: usize,
        out: &mut [f32],
        _per_image: usize,
        f: impl Fn(std::ops::Range<usize>, &mut [f32], gemm::Parallelism) -> R,
    ) -> Vec<R> {
        vec![f(0..batch, out, gemm::Parallelism::None)]
    }

    /// out[b] = W · im2col(x[b]) + bias.
    pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: &[f32]) -> Vec<f32> {
        let (rows, n) = g.col();
        let (x_len, out_len) = (g.c_in * g.h * g.w, g.c_out * n);
        // Starts as the bias, written once (no zeroing pass first); the products add to it.
        let mut out = Vec::with_capacity(g.batch * out_len);
        for _ in 0..g.batch {
            for &v in bias {
                out.resize(out.len() + n, v);
            }
        }
        split_batch(g.batch, &mut out, out_len, |images, out, parallelism| {
            with_scratch([if pointwise(g) { 0 } else { rows * n }, 0, 0], |[col, _, _]| {
                for (b, out) in images.zip(out.chunks_mut(out_len)) {
                    let x = &x[b * x_len..][..x_len];
                    let col = if pointwise(g) { x } else { im2col(g, x, col) };
                    matmul(g.c_out, n, rows, out, true, weight, false, col, false, parallelism);
                }
            })
        });
        out
    }

    /// (∂x, ∂W, ∂b) from ∂out.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn backward(g: &Geometry, x: &[f32], weight: &[f32], d_out: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (rows, n) = g.col();
        let (x_len, out_len) = (g.c_in * g.h * g.w, g.c_out * n);
        let mut dx = vec![0.0f32; g.batch * x_len];
        // Each slice of the batch sums its own ∂Wᵀ and ∂b; the sums are added in batch order, so
        // that a run repeats bit for bit.
        let partials = split_batch(g.batch, &mut dx, x_len, |images, dx, parallelism| {
            let (mut dw_t, mut db) = (vec![0.0f32; rows * g.c_out], vec![0.0f32; g.c_out]);
            let col_len = if pointwise(g) { 0 } else { rows * n };
            with_scratch([col_len, col_len, g.c_out * n], |[col, dcol, d_out_t]| {
                for (i, (b, dx)) in images.zip(dx.chunks_mut(x_len)).enumerate() {
                    let d_out = &d_out[b * out_len..][..out_len];
                    let x = &x[b * x_len..][..x_len];
                    let col = if pointwise(g) { x } else { im2col(g, x, col) };
                    // ∂Wᵀ [rows, C_out] += col [rows, n] · ∂outᵀ [n, C_out]. gemm copies the
                    // operand that shares the output's contiguous axis into panels, element by
                    // element when that axis is strided: ∂W = ∂out·colᵀ would copy col that way
                    // (a fifth of a training step), this form copies ∂outᵀ, transposed here once.
                    transpose(g.c_out, n, d_out, d_out_t);
                    matmul(rows, g.c_out, n, &mut dw_t, i > 0, col, false, d_out_t, false, parallelism);
                    for (d, row) in db.iter_mut().zip(d_out.chunks(n)) {
                        *d += row.iter().sum::<f32>();
                    }
                    // ∂col [rows, n] = Wᵀ [rows, C_out] · ∂out [C_out, n]; for a 1×1 conv ∂col is ∂x.
                    if pointwise(g) {
                        matmul(rows, n, g.c_out, dx, false, weight, true, d_out, false, parallelism);
                    } else {
                        matmul(rows, n, g.c_out, dcol, false, weight, true, d_out, false, parallelism);
                        col2im(g, dcol, dx);
                    }
                }
            });
            (dw_t, db)
        });
        let mut partials = partials.into_iter();
        let (mut dw_t, mut db) = partials.next().expect("a batch has at least one image");
        for (pw, pb) in partials {
            dw_t.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        let mut dw = vec![0.0f32; g.c_out * rows];
        transpose(rows, g.c_out, &dw_t, &mut dw);
        (dx, dw, db)
    }

    /// dst [cols, rows] = srcᵀ for a row-major src [rows, cols], tile by tile so that both
    /// sides stay in cache.
    #[cfg(not(target_arch = "wasm32"))]
    fn transpose(rows: usize, cols: usize, src: &[f32], dst: &mut [f32]) {
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
    fn with_scratch<R>(lens: [usize; 3], f: impl FnOnce([&mut [f32]; 3]) -> R) -> R {
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
}
