//! The sizes of one convolution, the cases the kernels single out ("same", 1×1), and the kernel
//! of a convolution's adjoint: what im2col, Winograd and the matrix products share.

use burn::tensor::Shape;

/// Sizes of one convolution.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub padding: usize,
    pub h_out: usize,
    pub w_out: usize,
}

impl Geometry {
    pub fn new(x: &Shape, weight: &Shape, stride: usize, padding: usize) -> Self {
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

    /// The convolution whose adjoint is the transposed convolution of `x` [B, C, H', W'] by
    /// `weight` [C, C_out, k, k] (burn's layout), without output padding: from [C_out, H, W]
    /// with H = (H' − 1)·stride − 2·padding + k, to [C, H', W']. None when H or W would be
    /// below 1 or the channels disagree.
    pub fn transposed(x: &Shape, weight: &Shape, stride: usize, padding: usize) -> Option<Self> {
        let k = weight[2];
        let size = |s: usize| ((s.checked_sub(1)? * stride + k).checked_sub(2 * padding)).filter(|&n| n >= 1);
        let (h, w) = (size(x[2])?, size(x[3])?);
        (weight[0] == x[1]).then(|| Self::new(&Shape::new([x[0], weight[1], h, w]), weight, stride, padding))
    }

    pub fn out_shape(&self) -> Shape {
        Shape::new([self.batch, self.c_out, self.h_out, self.w_out])
    }

    /// Multiply-adds of the whole call by direct convolution: B·C_out·C_in·k²·H_out·W_out
    /// (what decides whether a batch-1 call splits its products over a thread pool).
    #[cfg(pool)]
    pub fn macs(&self) -> usize {
        let (rows, n) = self.col();
        self.batch * self.c_out * rows * n
    }

    /// Rows of the im2col matrix (C_in·k·k) and its columns (output pixels).
    pub fn col(&self) -> (usize, usize) {
        (self.c_in * self.k * self.k, self.h_out * self.w_out)
    }
}

/// Whether the shifted-plane path applies: stride 1 and output size = input size.
pub(super) fn same(g: &Geometry) -> bool {
    g.stride == 1 && g.h_out == g.h && g.w_out == g.w
}

/// A 1×1 convolution with stride 1 and no padding, whose im2col matrix is the image itself.
pub(super) fn pointwise(g: &Geometry) -> bool {
    g.k == 1 && g.stride == 1 && g.padding == 0
}

/// W̃ [C_in, C_out, k, k] with W̃[ci, co, kh, kw] = W[co, ci, k − 1 − kh, k − 1 − kw] (the kernel
/// turned half a turn, its channel axes swapped): the kernel of the convolution that maps ∂out
/// to ∂x for a stride-1 "same" convolution by W (the adjoint of a correlation is a correlation
/// with the flipped kernel).
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn adjoint_kernel(g: &Geometry, weight: &[f32]) -> Vec<f32> {
    let taps = g.k * g.k;
    let mut adjoint = vec![0.0f32; weight.len()];
    for (co, per_out) in weight.chunks_exact(g.c_in * taps).enumerate() {
        for (ci, kernel) in per_out.chunks_exact(taps).enumerate() {
            for (t, &w) in kernel.iter().enumerate() {
                adjoint[(ci * g.c_out + co) * taps + taps - 1 - t] = w;
            }
        }
    }
    adjoint
}
