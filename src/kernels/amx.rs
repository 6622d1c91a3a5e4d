//! Matrix products on Intel's AMX tile units (Sapphire Rapids and later Xeons), at f32 accuracy
//! from bf16 tile products.
//!
//! One `tdpbf16ps` multiplies a 16×32 bf16 tile by a 32×16 one into a 16×16 f32 tile: 16 times
//! the multiply-adds of an AVX-512 FMA, but with bf16's 8-bit mantissa. Each f32 operand is
//! therefore split into two bf16 numbers, x = hi + lo + δ with |δ| ≤ 2⁻¹⁷|x| (hi: x rounded
//! to bf16; lo: the rest, rounded), and a·b is summed in f32 as hi_a·hi_b + hi_a·lo_b +
//! lo_a·hi_b: the dropped lo_a·lo_b and the δs leave each term within about 2⁻¹⁶|a·b|
//! ("bf16x3", as oneDNN's `fpmath_mode::bf16x3`), against f32's 2⁻²⁴ per rounding. Three tile
//! products per f32 product still run faster than the AVX-512 f32 kernels on the same core
//! (docs/speed.md).
//!
//! The operands are packed into tiles by [`super::amx_pack`]; each call of the micro-kernel here
//! computes a 32×32 block of C in four accumulator tiles. Linux x86-64 only: a process has to
//! ask the kernel for the tile state (`arch_prctl(ARCH_REQ_XCOMP_PERM)`) before the first use.

use std::arch::asm;
use std::sync::OnceLock;

use super::amx_pack::{BLOCK, STEP, Source, keep, pack_lhs, pack_rhs, spare};

/// Whether this CPU has AMX with bf16, the kernel has granted this process the tile state, and
/// `DDPM_AMX=off` is not set (which measures the AVX-512 path of CPUs without AMX on one that
/// has it); checked once.
pub(super) fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        if std::env::var_os("DDPM_AMX").is_some_and(|v| v == "off") {
            return false;
        }
        // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        // The packing converts with AVX512-BF16, which every AMX CPU has.
        if edx & (1 << 22) == 0 || edx & (1 << 24) == 0 || !std::arch::is_x86_feature_detected!("avx512bf16") {
            return false;
        }
        // linux/arch/x86/include/uapi/asm/prctl.h: ARCH_REQ_XCOMP_PERM; XFEATURE_XTILEDATA = 18.
        const ARCH_REQ_XCOMP_PERM: libc::c_ulong = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_ulong = 18;
        // SAFETY: a plain system call with integer arguments; it fails harmlessly on kernels
        // (or hypervisors) that do not offer AMX.
        unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
    })
}

/// The left operand of a product, packed into tiles once and used for every right operand
/// (a convolution's weight for every image of a batch).
pub(super) struct Lhs {
    m: usize,
    k: usize,
    tiles: Vec<u16>,
}

impl Lhs {
    /// Packs A [m, k].
    pub fn new(m: usize, k: usize, a: &Source) -> Self {
        // The tile kernels need the tile state: an Lhs exists only where they may run.
        assert!(available(), "AMX tiles are not available to this process");
        Self { m, k, tiles: pack_lhs(m, k, a) }
    }

    /// dst [m, n] = A·B (`+=` when accumulating) for B [k, n], on this thread: at batch 1,
    /// where the convolutions would split their products, waking the other thread for each
    /// one cost more than it saved (docs/speed.md), and from batch 2 on each thread has its
    /// own images.
    pub fn times(&self, n: usize, dst: &mut [f32], accumulate: bool, b: &Source) {
        let (m, k, steps) = (self.m, self.k, self.k.div_ceil(BLOCK));
        assert!(dst.len() >= m * n);
        if let Source::Rows(b) = b {
            assert!(b.len() >= k * n);
        }
        if k == 0 {
            // An empty sum (the kernel's step loop needs at least one step).
            if !accumulate {
                dst[..m * n].fill(0.0);
            }
            return;
        }
        let mut rhs = spare(2 * steps * STEP);
        let mut edge = [0f32; BLOCK * BLOCK];
        configure();
        for j0 in (0..n).step_by(BLOCK) {
            // Each 32-column block of B packed once, then multiplied by every 32-row block of A.
            pack_rhs(k, n, b, j0, &mut rhs[..2 * steps * STEP]);
            let (b0, b1) = (rhs.as_ptr(), rhs[steps * STEP..].as_ptr());
            for i0 in (0..m).step_by(BLOCK) {
                let a0 = self.tiles[(i0 / 16) * steps * STEP..].as_ptr();
                let a1 = self.tiles[(i0 / 16 + 1) * steps * STEP..].as_ptr();
                let (rows, cols) = (BLOCK.min(m - i0), BLOCK.min(n - j0));
                if rows == BLOCK && cols == BLOCK {
                    // SAFETY: the panels hold `steps` steps each; C is a whole 32×32 block of
                    // dst (row stride n).
                    unsafe { kernel(a0, a1, b0, b1, steps, dst[i0 * n + j0..].as_mut_ptr(), n, accumulate) };
                    continue;
                }
                for r in 0..rows {
                    let (c, d) = (&mut edge[r * BLOCK..][..cols], &dst[(i0 + r) * n + j0..][..cols]);
                    if accumulate { c.copy_from_slice(d) } else { c.fill(0.0) }
                }
                // SAFETY: as above, C the local 32×32 edge buffer.
                unsafe { kernel(a0, a1, b0, b1, steps, edge.as_mut_ptr(), BLOCK, true) };
                for r in 0..rows {
                    dst[(i0 + r) * n + j0..][..cols].copy_from_slice(&edge[r * BLOCK..][..cols]);
                }
            }
        }
        release();
        keep(rhs);
    }
}

impl Drop for Lhs {
    fn drop(&mut self) {
        keep(std::mem::take(&mut self.tiles));
    }
}

/// The tile configuration: all eight tiles 16 rows × 64 bytes (palette 1).
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    bytes_per_row: [u16; 16],
    rows: [u8; 16],
}

/// Loads the tile configuration on this thread.
fn configure() {
    // Palette 1 has eight tiles; the entries of the other eight must be zero.
    let (mut bytes_per_row, mut rows) = ([0; 16], [0; 16]);
    bytes_per_row[..8].fill(64);
    rows[..8].fill(16);
    let config = Config { palette: 1, start_row: 0, reserved: [0; 14], bytes_per_row, rows };
    // SAFETY: called only by `Lhs::times`, and an Lhs exists only where `available()` held; the
    // tile registers are used only by this module's kernels, between `configure` and `release`.
    unsafe { asm!("ldtilecfg [{}]", in(reg) &config, options(nostack, readonly)) };
}

/// Hands the tile state back, so that this thread's context switches stop saving it.
fn release() {
    // SAFETY: as in `configure`.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
}

/// C [32×32 f32, row stride `ldc` values] (+)= A·B over `steps` 32-deep steps: A in two
/// 16-row panels `a0`, `a1`, B in two 16-column panels `b0`, `b1`, each a sequence of (hi, lo)
/// tile pairs. Accumulators tmm0–3 (C's quarters), A tiles tmm4–5, B tiles tmm6–7; per step
/// the hi·hi, hi·lo and lo·hi products of all four quarters (tile products into one
/// accumulator are four apart, so that each waits for the previous one less).
///
/// SAFETY: the tile configuration is loaded on this thread; the panels hold `steps` (hi, lo)
/// pairs each; C is 32 rows of `ldc` ≥ 32 values.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel(
    a0: *const u16,
    a1: *const u16,
    b0: *const u16,
    b1: *const u16,
    steps: usize,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let ldc_bytes = ldc * 4;
    // SAFETY: the caller's contract; every access is inside the panels and C.
    unsafe {
        asm!(
            "test {acc}, {acc}",
            "jz 3f",
            "tileloadd tmm0, [{c} + {ldc}*1]",
            "tileloadd tmm1, [{c1} + {ldc}*1]",
            "tileloadd tmm2, [{c2} + {ldc}*1]",
            "tileloadd tmm3, [{c3} + {ldc}*1]",
            "jmp 4f",
            "3:",
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            "4:",
            // hi_a · hi_b
            "tileloadd tmm4, [{a0} + {s}*1]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm5, [{a1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm3, tmm5, tmm7",
            // hi_a · lo_b
            "tileloadd tmm6, [{b0} + {s}*1 + 1024]",
            "tileloadd tmm7, [{b1} + {s}*1 + 1024]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            // lo_a · hi_b
            "tileloadd tmm4, [{a0} + {s}*1 + 1024]",
            "tileloadd tmm5, [{a1} + {s}*1 + 1024]",
            "tileloadd tmm6, [{b0} + {s}*1]",
            "tileloadd tmm7, [{b1} + {s}*1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            "add {a0}, 2048",
            "add {a1}, 2048",
            "add {b0}, 2048",
            "add {b1}, 2048",
            "dec {steps}",
            "jnz 4b",
            "tilestored [{c} + {ldc}*1], tmm0",
            "tilestored [{c1} + {ldc}*1], tmm1",
            "tilestored [{c2} + {ldc}*1], tmm2",
            "tilestored [{c3} + {ldc}*1], tmm3",
            acc = in(reg) accumulate as usize,
            a0 = inout(reg) a0 => _,
            a1 = inout(reg) a1 => _,
            b0 = inout(reg) b0 => _,
            b1 = inout(reg) b1 => _,
            steps = inout(reg) steps => _,
            s = in(reg) 64usize,
            c = in(reg) c,
            c1 = in(reg) c.add(16),
            c2 = in(reg) c.add(16 * ldc),
            c3 = in(reg) c.add(16 * ldc + 16),
            ldc = in(reg) ldc_bytes,
            options(nostack)
        );
    }
}
#[cfg(test)]
mod tests {
    use super::super::amx_pack::{Split, Taps};
    use super::super::geometry::Geometry;
    use super::*;

    /// Σ_k a[i,k]·b[k,j] in f64, and Σ_k |a[i,k]·b[k,j]| (the scale of its rounding error).
    fn reference(m: usize, n: usize, k: usize, a: &[f32], a_t: bool, b: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (mut c, mut scale) = (vec![0f64; m * n], vec![0f64; m * n]);
        for i in 0..m {
            for j in 0..n {
                for kk in 0..k {
                    let x = if a_t { a[kk * m + i] } else { a[i * k + kk] } as f64 * b[kk * n + j] as f64;
                    c[i * n + j] += x;
                    scale[i * n + j] += x.abs();
                }
            }
        }
        (c, scale)
    }

    /// Every shape class the convolutions produce (whole blocks, edges in m, n and k, k below
    /// one step, an empty sum, accumulating or not), each element within bf16x3's
    /// bound of the exact sum: 2⁻¹⁵ Σ|a·b| allows the dropped terms and f32 accumulation.
    #[test]
    fn products_are_within_bf16x3_accuracy_of_the_exact_sum() {
        if !available() {
            eprintln!("no AMX on this CPU: nothing to test");
            return;
        }
        let mut noise = crate::noise::Noise::new(5);
        for (m, n, k) in
            [(32, 32, 32), (64, 96, 288), (9, 1024, 32), (37, 45, 9), (128, 64, 1152), (16, 7, 70), (5, 3, 0)]
        {
            for (a_t, accumulate) in [(false, false), (true, true), (false, true)] {
                let a = noise.gaussian_vec(m * k);
                let b = noise.gaussian_vec(k * n);
                let start = noise.gaussian_vec(m * n);
                let mut dst = start.clone();
                let lhs = if a_t { Source::Columns(&a) } else { Source::Rows(&a) };
                Lhs::new(m, k, &lhs).times(n, &mut dst, accumulate, &Source::Rows(&b));
                let (want, scale) = reference(m, n, k, &a, a_t, &b);
                for i in 0..m * n {
                    let want = want[i] + if accumulate { start[i] as f64 } else { 0.0 };
                    let bound = scale[i] * 2f64.powi(-15) + 1e-6 * want.abs();
                    assert!(
                        (dst[i] as f64 - want).abs() <= bound,
                        "m{m} n{n} k{k} a_t {a_t} acc {accumulate}: [{i}] {} vs {want} (bound {bound:e})",
                        dst[i]
                    );
                }
            }
        }
    }

    /// The im2col matrix read from the split image through its taps (no column matrix) is the
    /// matrix `im2col` writes out, value for value, as either operand: for channels over
    /// several 32-deep steps, an odd k, and an image whose pixels do not fill whole blocks.
    #[test]
    fn im2col_read_from_the_image_equals_the_written_matrix() {
        if !available() {
            return;
        }
        let mut noise = crate::noise::Noise::new(7);
        for (c_in, c_out, h, w) in [(40, 24, 9, 11), (3, 33, 7, 7)] {
            let g = Geometry::new(&[1, c_in, h, w].into(), &[c_out, c_in, 3, 3].into(), 1, 1);
            let (rows, n) = g.col();
            let x = noise.gaussian_vec(c_in * h * w);
            let mut col = vec![0.0; rows * n];
            let col = super::super::im2col::im2col(&g, &x, &mut col);
            let (split, taps) = (Split::new(&x), Taps::new(&g));
            let read = Source::Im2col(&split, &taps);
            // As B: W [c_out, rows] · im2col.
            let weight = Lhs::new(c_out, rows, &Source::Rows(&noise.gaussian_vec(c_out * rows)));
            let (mut got, mut want) = (vec![0.0; c_out * n], vec![0.0; c_out * n]);
            weight.times(n, &mut got, false, &read);
            weight.times(n, &mut want, false, &Source::Rows(col));
            assert_eq!(got, want, "as the right operand, c_in {c_in}");
            // As A: im2col [rows, n] · B [n, c_out].
            let b = noise.gaussian_vec(n * c_out);
            let (mut got, mut want) = (vec![0.0; rows * c_out], vec![0.0; rows * c_out]);
            Lhs::new(rows, n, &read).times(c_out, &mut got, false, &Source::Rows(&b));
            Lhs::new(rows, n, &Source::Rows(col)).times(c_out, &mut want, false, &Source::Rows(&b));
            assert_eq!(got, want, "as the left operand, c_in {c_in}");
        }
    }
}
