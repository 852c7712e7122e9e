//! Products with bfloat16 inputs and f32 accumulation, `y = x · wᵀ`, for the opt-in
//! `--precision bf16` of the frozen encoders.
//!
//! Both operands are rounded to bfloat16 (8 significant bits, round to nearest even, as
//! PyTorch's `.to(torch.bfloat16)`); every product and sum is f32. On a CPU with AVX512-BF16
//! (AMD Zen 4 and later, Intel Cooper Lake and Sapphire Rapids and later) `vdpbf16ps` does 32
//! multiply-adds per instruction, twice the f32 FMA's 16. Elsewhere the same rounded operands go
//! through the f32 kernels, so the numbers agree across machines (up to f32 summation order)
//! but there is no speed gain.
//!
//! The weight is packed once, at load time, the way `vdpbf16ps` consumes it: panels of
//! [`NR`] = 32 output columns; in a panel, for each pair of inputs `(2p, 2p+1)`, the 32 columns'
//! two values side by side (64 `u16`, two vectors). The microkernel keeps an `MR × 32` tile of
//! f32 sums in 24 registers and, per input pair, broadcasts one pair of `x` per row against the
//! panel's two vectors: no horizontal sums, no shuffles.

use rayon::prelude::*;

use super::matmul::{gemm, simd_level, Simd};

/// Output columns per packed panel: two 16-lane vectors.
pub const NR: usize = 32;

/// Rows of the microkernel's tile: 12 × 2 accumulators + 2 panel vectors + 1 broadcast of the
/// 32 AVX-512 registers.
const MR: usize = 12;

/// Input pairs per pass over a tile (768 inputs): the tile's 12 rows of `x` (18 KiB) stay in L1
/// while every panel of a column group passes over them.
const KC: usize = 384;

/// Panels per column group: 8 × 32 columns × 384 pairs × 4 bytes = 384 KiB of weights, which
/// stay in L2 while every row block of a task passes over them.
const GROUP_PANELS: usize = 8;

/// Rows per parallel task (eight microkernel tiles).
const MC: usize = 8 * MR;

/// `x` rounded to the nearest bfloat16, ties to even (NaN stays NaN), as its upper 16 bits.
pub fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Quiet, sign kept: rounding could carry a NaN's payload into infinity.
        return ((bits >> 16) | 0x0040) as u16;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The f32 a bfloat16 stands for (exact).
pub fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// `x` rounded to bfloat16 and back: the value the bf16 products use.
pub fn round_bf16(x: f32) -> f32 {
    from_bf16(to_bf16(x))
}

/// Whether this CPU runs the bfloat16 products natively: AVX512-BF16, at our AVX-512 level (a
/// lower level forced by `CLIP_ADAPTER_SIMD` turns it off too).
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        simd_level() == Simd::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A weight `(n, k)` rounded to bfloat16, ready for `x · wᵀ`.
#[derive(Debug)]
pub struct PackedWeight {
    n: usize,
    k: usize,
    kernel: Kernel,
}

#[derive(Debug)]
enum Kernel {
    /// The `vdpbf16ps` panels: `n.div_ceil(NR)` panels of `k.div_ceil(2) · 2 · NR` values.
    Panels(Vec<u16>),
    /// The rounded weight as f32, row-major, for CPUs without AVX512-BF16.
    Rounded(Vec<f32>),
}

impl PackedWeight {
    /// Packs `w` (`n × k`, row-major) for this CPU.
    ///
    /// # Panics
    /// If `w` holds fewer than `n · k` values.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        Self::pack_for(w, n, k, native())
    }

    fn pack_for(w: &[f32], n: usize, k: usize, native: bool) -> Self {
        assert!(w.len() >= n * k, "bf16 pack: weight too small");
        let kernel = match native {
            true => Kernel::Panels(pack_panels(w, n, k)),
            false => Kernel::Rounded(w[..n * k].iter().map(|&v| round_bf16(v)).collect()),
        };
        PackedWeight { n, k, kernel }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `y (m × n) = round(x) · round(w)ᵀ` with f32 sums, `x` being `m × k` row-major.
    ///
    /// # Panics
    /// If `x` holds fewer than `m · k` values.
    pub fn abt(&self, x: &[f32], m: usize) -> Vec<f32> {
        let mut y = vec![0f32; m * self.n];
        self.abt_into(x, m, &mut y);
        y
    }

    /// [`PackedWeight::abt`] into the first `m · n` values of `y`.
    ///
    /// # Panics
    /// If `x` holds fewer than `m · k` values or `y` fewer than `m · n`.
    pub fn abt_into(&self, x: &[f32], m: usize, y: &mut [f32]) {
        let (n, k) = (self.n, self.k);
        assert!(x.len() >= m * k, "bf16 matmul: input too small");
        assert!(y.len() >= m * n, "bf16 matmul: output too small");
        if m == 0 || n == 0 {
            return;
        }
        match &self.kernel {
            Kernel::Rounded(w) => {
                let x: Vec<f32> = x[..m * k].par_iter().map(|&v| round_bf16(v)).collect();
                gemm(&x, false, w, true, y, m, k, n, false);
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Panels(panels) => {
                let xb = rows_to_bf16(x, m, k);
                // SAFETY: `Panels` is only built when `native()` held: AVX512-BF16 is there.
                unsafe { panels_abt(&xb, panels, y, m, k, n) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            Kernel::Panels(_) => unreachable!("bf16 panels are only packed on x86-64"),
        }
    }
}

/// Input pairs per row: `k` rounded up to even (a zero pads an odd `k`).
fn pairs(k: usize) -> usize {
    k.div_ceil(2)
}

/// The panels of `w` (see the module's text); columns past `n` and the odd input are zeros.
fn pack_panels(w: &[f32], n: usize, k: usize) -> Vec<u16> {
    let kp = pairs(k);
    let panel_len = kp * 2 * NR;
    let mut out = vec![0u16; n.div_ceil(NR) * panel_len];
    out.par_chunks_mut(panel_len)
        .enumerate()
        .for_each(|(panel, dst)| {
            for c in 0..NR.min(n - panel * NR) {
                let row = &w[(panel * NR + c) * k..][..k];
                for (i, &v) in row.iter().enumerate() {
                    dst[(i / 2) * 2 * NR + 2 * c + i % 2] = to_bf16(v);
                }
            }
        });
    out
}

/// `x` (`m × k`) as bfloat16 rows of `2 · pairs(k)` values (a zero pads an odd `k`).
fn rows_to_bf16(x: &[f32], m: usize, k: usize) -> Vec<u16> {
    let ld = 2 * pairs(k);
    let mut out = vec![0u16; m * ld];
    let rows_per_task = (16384 / ld.max(1)).max(1);
    out.par_chunks_mut(ld * rows_per_task)
        .enumerate()
        .for_each(|(t, dst)| {
            for (r, row) in dst.chunks_mut(ld).enumerate() {
                let src = &x[(t * rows_per_task + r) * k..][..k];
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the rows are only converted here after `native()` held.
                unsafe {
                    convert_row(src, &mut row[..k])
                };
                #[cfg(not(target_arch = "x86_64"))]
                row.iter_mut().zip(src).for_each(|(d, &s)| *d = to_bf16(s));
            }
        });
    out
}

/// `dst[i] = bf16(src[i])` with `vcvtneps2bf16` (round to nearest even, as [`to_bf16`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn convert_row(src: &[f32], dst: &mut [u16]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let h: __m256bh = _mm512_cvtneps_pbh(v);
        _mm256_storeu_si256(
            dst.as_mut_ptr().add(i) as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(h),
        );
        i += 16;
    }
    for j in i..n {
        dst[j] = to_bf16(src[j]);
    }
}

/// The output, written by the tasks at disjoint tiles.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only its own rows × column group of `y`, which outlives the loop.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// `y = x · wᵀ` from bf16 rows `xb` and packed panels, tasks over (row chunk, column group).
///
/// # Safety
/// The CPU must have AVX512-BF16; `xb` must be `m` rows of `2 · pairs(k)`, `panels` the packing
/// of an `n × k` weight, `y` at least `m · n`.
#[cfg(target_arch = "x86_64")]
unsafe fn panels_abt(xb: &[u16], panels: &[u16], y: &mut [f32], m: usize, k: usize, n: usize) {
    let kp = pairs(k);
    let n_panels = n.div_ceil(NR);
    let row_chunks = m.div_ceil(MC);
    // Enough tasks to keep every thread busy when there are few rows (one image, a prompt
    // batch): smaller column groups rather than idle cores.
    let target = 4 * rayon::current_num_threads();
    let group = (n_panels * row_chunks)
        .div_ceil(target)
        .clamp(1, GROUP_PANELS);
    let groups = n_panels.div_ceil(group);
    let out = OutPtr(y.as_mut_ptr());
    let task = |t: usize| {
        let (chunk, g) = (t / groups, t % groups);
        let rows = (chunk * MC, ((chunk + 1) * MC).min(m));
        let cols = (g * group, ((g + 1) * group).min(n_panels));
        // SAFETY: rows and panels are inside the buffers; this task alone writes this tile.
        unsafe { task_abt(xb, panels, out, rows, cols, kp, n) }
    };
    super::matmul::run_tasks(row_chunks * groups, m * n * k, task);
}

/// Rows `r0..r1` against panels `p0..p1`, in passes of [`KC`] input pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn task_abt(
    xb: &[u16],
    panels: &[u16],
    y: OutPtr,
    (r0, r1): (usize, usize),
    (p0, p1): (usize, usize),
    kp: usize,
    n: usize,
) {
    let ldx = 2 * kp;
    let panel_len = kp * 2 * NR;
    for k0 in (0..kp).step_by(KC) {
        let depth = KC.min(kp - k0);
        let accumulate = k0 > 0;
        for i in (r0..r1).step_by(MR) {
            let rows = MR.min(r1 - i);
            let x = xb.as_ptr().add(i * ldx + 2 * k0);
            for p in p0..p1 {
                let w = panels.as_ptr().add(p * panel_len + k0 * 2 * NR);
                let cols = NR.min(n - p * NR);
                let c = y.0.add(i * n + p * NR);
                let t = Tile {
                    x,
                    ldx,
                    w,
                    depth,
                    c,
                    ldc: n,
                    cols,
                    accumulate,
                };
                match rows {
                    12 => tile::<12>(t),
                    11 => tile::<11>(t),
                    10 => tile::<10>(t),
                    9 => tile::<9>(t),
                    8 => tile::<8>(t),
                    7 => tile::<7>(t),
                    6 => tile::<6>(t),
                    5 => tile::<5>(t),
                    4 => tile::<4>(t),
                    3 => tile::<3>(t),
                    2 => tile::<2>(t),
                    _ => tile::<1>(t),
                }
            }
        }
    }
}

/// One microkernel call: `R` rows of bf16 `x` (row stride `ldx`) from pair `k0`, one panel's
/// `depth` pairs, into `cols` ≤ 32 columns of `c`.
#[derive(Clone, Copy)]
struct Tile {
    x: *const u16,
    ldx: usize,
    w: *const u16,
    depth: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
}

// Indexed loops over the register array unroll into named registers.
#[allow(clippy::needless_range_loop)]
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
#[inline]
unsafe fn tile<const R: usize>(t: Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..t.depth {
        let w = t.w.add(p * 2 * NR);
        let b0 = std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w as *const _));
        let b1 =
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(w.add(NR) as *const _));
        for r in 0..R {
            let pair = (t.x.add(r * t.ldx + 2 * p) as *const i32).read_unaligned();
            let a = std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(pair));
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], a, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], a, b1);
        }
    }
    let lo = t.cols.min(16);
    let hi = t.cols.saturating_sub(16);
    let (m0, m1) = (mask(lo), mask(hi));
    for r in 0..R {
        let c = t.c.add(r * t.ldc);
        let (mut v0, mut v1) = (acc[r][0], acc[r][1]);
        if t.accumulate {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, c));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, c.add(16)));
        }
        _mm512_mask_storeu_ps(c, m0, v0);
        _mm512_mask_storeu_ps(c.add(16), m1, v1);
    }
}

/// The lowest `n` ≤ 16 lanes.
fn mask(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        ((1u32 << n) - 1) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// The product of the rounded operands in f64: what both kernels approximate in f32.
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| round_bf16(x[i * k + p]) as f64 * round_bf16(w[j * k + p]) as f64)
                    .sum();
            }
        }
        y
    }

    #[test]
    fn rounding_is_to_nearest_even_like_pytorch() {
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even one, 1.
        assert_eq!(round_bf16(1.0 + 2f32.powi(-8)), 1.0);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
        assert_eq!(round_bf16(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2f32.powi(-6));
        assert_eq!(
            round_bf16(1.0 + 2f32.powi(-8) + 2f32.powi(-20)),
            1.0 + 2f32.powi(-7)
        );
        assert_eq!(round_bf16(-2.5), -2.5);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        // The largest finite f32 rounds up to infinity, as in PyTorch.
        assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    }

    fn check(native: bool, m: usize, k: usize, n: usize) {
        let (x, w) = (lcg(m * k, 1 + m as u64), lcg(n * k, 7 + n as u64));
        let y = PackedWeight::pack_for(&w, n, k, native).abt(&x, m);
        let r = reference(&x, &w, m, k, n);
        for (i, (a, b)) in y.iter().zip(&r).enumerate() {
            // f32 sums of k products of magnitude ≤ 1: a few ulps of k.
            let tol = 1e-6 * k as f64;
            assert!(
                (*a as f64 - b).abs() <= tol,
                "native={native} {m}x{k}x{n} at {i}: {a} vs {b}"
            );
        }
    }

    #[test]
    fn both_kernels_equal_the_rounded_product_at_every_tile_edge() {
        let natives: &[bool] = if native() { &[false, true] } else { &[false] };
        for &nat in natives {
            // Rows past MR and MC, odd k, k past one KC pass, columns past one panel and group.
            for &(m, k, n) in &[
                (1, 1, 1),
                (5, 7, 3),
                (13, 33, 31),
                (97, 64, 33),
                (12, 801, 65),
                (200, 1537, 300),
                (50, 768, 2304),
            ] {
                check(nat, m, k, n);
            }
        }
        if !native() {
            eprintln!("this CPU has no AVX512-BF16: only the f32 fallback was checked");
        }
    }
}
