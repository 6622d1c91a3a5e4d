//! GroupNorm + Swish as loops on plain slices laid out [B, C, H·W] (a group's channels are
//! adjacent): two passes per group forward (statistics; normalise + affine + Swish), three
//! backward, σ from a polynomial eˣ that vectorises.

/// Independent partial sums: lets the compiler vectorise reductions that IEEE order would
/// otherwise keep sequential.
const LANES: usize = 16;

/// Σ f(a_i, b_i).
#[inline(always)]
fn sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(&u, &v)| f(u, v)).sum();
    for (ua, ub) in ca.zip(cb) {
        for ((s, &u), &v) in acc.iter_mut().zip(ua).zip(ub) {
            *s += f(u, v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// μ and 1/√(σ² + ε) of one group, σ² from the centred values (no cancellation).
#[inline(always)]
fn stats(xs: &[f32], epsilon: f32) -> (f32, f32) {
    let m = xs.len() as f32;
    let mean = sum2(xs, xs, |v, _| v) / m;
    let var = sum2(xs, xs, |v, _| (v - mean) * (v - mean)) / m;
    (mean, 1.0 / (var + epsilon).sqrt())
}

/// eˣ in straight-line f32 arithmetic, so that loops over it vectorise: x = n ln 2 + r with
/// |r| ≤ ln 2 / 2, eʳ by its Taylor series to r⁶ (truncation below r⁷/7! ≈ 1.2e-7, about an
/// ulp), 2ⁿ written into the exponent bits.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // ln 2 in two parts, so that n·LN2_HI is exact for every n that occurs.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds to an integer in the float unit and leaves that integer in the
    // low mantissa bits: no branch, no libm call, no float-to-int conversion.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    let two_n = (t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127)) << 23;
    p * f32::from_bits(two_n)
}

#[inline(always)]
fn sigmoid(y: f32) -> f32 {
    1.0 / (1.0 + exp(-y))
}

/// (element range, first channel) of every (image, group).
#[inline(always)]
fn per_group(len: usize, c: usize, hw: usize, groups: usize) -> impl Iterator<Item = (std::ops::Range<usize>, usize)> {
    let cpg = c / groups;
    (0..len / (cpg * hw)).map(move |i| (i * cpg * hw..(i + 1) * cpg * hw, (i % groups) * cpg))
}

with_simd! {
/// out = y·σ(y), y = γ_c x̂ + β_c, appended to `out` in x's order (written once: no zeroing pass
/// first).
fn forward(x: &[f32], gamma: &[f32], beta: &[f32], hw: usize, groups: usize, epsilon: f32, out: &mut Vec<f32>) {
    let c = gamma.len();
    out.reserve(x.len());
    for (range, first) in per_group(x.len(), c, hw, groups) {
        let (mean, rstd) = stats(&x[range.clone()], epsilon);
        for (k, start) in range.step_by(hw).enumerate() {
            let scale = rstd * gamma[first + k];
            let shift = beta[first + k] - mean * scale;
            out.extend(x[start..start + hw].iter().map(|&v| {
                let y = v * scale + shift;
                y * sigmoid(y)
            }));
        }
    }
}
}

with_simd! {
/// dx, dγ, dβ from the upstream gradient `dout` (the module's formulas). dx first holds
/// dy = ∂L/∂y, whose sums give dγ, dβ and the group means, then is overwritten with ∂L/∂x.
#[cfg(not(target_arch = "wasm32"))]
#[allow(clippy::too_many_arguments)]
fn backward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    dout: &[f32],
    hw: usize,
    groups: usize,
    epsilon: f32,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let c = gamma.len();
    for (range, first) in per_group(x.len(), c, hw, groups) {
        let (mean, rstd) = stats(&x[range.clone()], epsilon);
        let m = range.len() as f32;
        // Σ_g γ dy and Σ_g γ dy x̂ over the group.
        let (mut g_sum, mut gx_sum) = (0.0, 0.0);
        for (k, start) in range.clone().step_by(hw).enumerate() {
            let ch = first + k;
            let (xs, ds) = (&x[start..start + hw], &mut dx[start..start + hw]);
            let (scale, shift) = (rstd * gamma[ch], beta[ch] - mean * rstd * gamma[ch]);
            for ((d, &v), &up) in ds.iter_mut().zip(xs).zip(&dout[start..start + hw]) {
                let y = v * scale + shift;
                let s = sigmoid(y);
                *d = up * s * (1.0 + y * (1.0 - s));
            }
            // Σ dy x̂ = rstd (Σ dy x − μ Σ dy).
            let dy_sum = sum2(ds, ds, |d, _| d);
            let dy_x_hat = rstd * (sum2(ds, xs, |d, v| d * v) - mean * dy_sum);
            dbeta[ch] += dy_sum;
            dgamma[ch] += dy_x_hat;
            g_sum += gamma[ch] * dy_sum;
            gx_sum += gamma[ch] * dy_x_hat;
        }
        let (g_mean, gx_mean) = (g_sum / m, gx_sum / m);
        for (k, start) in range.step_by(hw).enumerate() {
            let g = gamma[first + k];
            for (d, &v) in dx[start..start + hw].iter_mut().zip(&x[start..start + hw]) {
                let x_hat = (v - mean) * rstd;
                *d = rstd * (g * *d - g_mean - x_hat * gx_mean);
            }
        }
    }
}
}
