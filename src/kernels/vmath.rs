//! Vectorised element-wise math for the encoders' epilogues: `exp` (softmax, QuickGELU) with
//! AVX-512 and AVX2 + FMA paths, since the compiler cannot vectorise calls to the C library's
//! `expf`.
//!
//! The vector `exp` is Cephes' `expf` (range reduction by ln 2 split in two constants, a degree-6
//! polynomial, scaling by 2ⁿ), accurate to about 2 ulp over the clamped range; results differ
//! from the scalar `expf` in the last bits only (checked in the tests below).

use super::matmul::{simd_level, Simd};

const EXP_HI: f32 = 88.376_26;
const EXP_LO: f32 = -87.336_55;

/// `xs[i] = exp(xs[i] · scale - shift)`, returning the sum of the results (a softmax's numerators
/// and denominator).
pub(crate) fn exp_scaled_sum(xs: &mut [f32], scale: f32, shift: f32) -> f32 {
    exp_scaled_sum_at(simd_level(), xs, scale, shift)
}

/// [`exp_scaled_sum`] at level `simd`, which must be available.
pub(crate) fn exp_scaled_sum_at(simd: Simd, xs: &mut [f32], scale: f32, shift: f32) -> f32 {
    assert!(simd.available(), "exp: {simd:?} not available");
    match simd {
        // SAFETY: the CPU has the level's features (checked above).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::exp_scaled_sum(xs, scale, shift) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::exp_scaled_sum(xs, scale, shift) },
        _ => {
            let mut sum = 0f32;
            for x in xs {
                *x = (*x * scale - shift).exp();
                sum += *x;
            }
            sum
        }
    }
}

/// `y[i] += x[i]` over the shorter of the two (a bias, a residual), at the CPU's vector width:
/// the loop is written once and compiled for each level, where the crate's baseline build
/// adds four floats at a time. The same bits at every level.
pub(crate) fn add_assign(y: &mut [f32], x: &[f32]) {
    match simd_level() {
        // SAFETY: the level is available (`simd_level` checked the CPU).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { add_assign_avx512(y, x) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { add_assign_avx2(y, x) },
        _ => add_assign_plain(y, x),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn add_assign_avx512(y: &mut [f32], x: &[f32]) {
    add_assign_plain(y, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_assign_avx2(y: &mut [f32], x: &[f32]) {
    add_assign_plain(y, x)
}

#[inline(always)]
fn add_assign_plain(y: &mut [f32], x: &[f32]) {
    y.iter_mut().zip(x).for_each(|(y, x)| *y += x)
}

/// `Σ a[i]·b[i]` over the shorter of the two, in 32 fixed lanes (lane `j` sums the products at
/// `i ≡ j mod 32`, the lanes then added in a fixed tree, the tail last): the same bits at every
/// level, where the plain fold of the baseline build is one chain of dependent additions (four
/// cycles per element: the row norms of a 256-row batch of 1024-wide features took longer than
/// a product of the CLIP-Adapter step on an Intel Xeon, Emerald Rapids).
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: `simd_level` checked the CPU.
    unsafe { dot_diff_at(simd_level(), a, b, None) }
}

/// `Σ g[i]·(a[i] − b[i])` over the shortest of the three, in the lanes of [`dot`].
pub(crate) fn dot_diff(g: &[f32], a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: `simd_level` checked the CPU.
    unsafe { dot_diff_at(simd_level(), g, a, Some(b)) }
}

/// `Σ a[i]·b[i]`, or with `Some(c)` `Σ a[i]·(b[i] − c[i])`, at level `simd`. Unchecked, as it
/// runs once per row of a batch.
///
/// # Safety
/// `simd` must be available on this CPU.
unsafe fn dot_diff_at(simd: Simd, a: &[f32], b: &[f32], c: Option<&[f32]>) -> f32 {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { dot_avx512(a, b, c) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { dot_avx2(a, b, c) },
        _ => dot_plain(a, b, c),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn dot_avx512(a: &[f32], b: &[f32], c: Option<&[f32]>) -> f32 {
    dot_plain(a, b, c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dot_avx2(a: &[f32], b: &[f32], c: Option<&[f32]>) -> f32 {
    dot_plain(a, b, c)
}

const DOT_LANES: usize = 32;

#[inline(always)]
fn dot_plain(a: &[f32], b: &[f32], c: Option<&[f32]>) -> f32 {
    match c {
        None => lane_sum(a, b, b, |x, y, _| x * y),
        Some(c) => lane_sum(a, b, c, |x, y, z| x * (y - z)),
    }
}

/// `Σ term(a[i], b[i], c[i])` in [`DOT_LANES`] lanes added in a fixed tree, the tail last.
#[inline(always)]
fn lane_sum(a: &[f32], b: &[f32], c: &[f32], term: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let n = a.len().min(b.len()).min(c.len());
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    let mut lanes = [0f32; DOT_LANES];
    let (ac, bc, cc) = (
        a.chunks_exact(DOT_LANES),
        b.chunks_exact(DOT_LANES),
        c.chunks_exact(DOT_LANES),
    );
    let tail = (ac.remainder().iter())
        .zip(bc.remainder())
        .zip(cc.remainder());
    for ((x, y), z) in ac.zip(bc).zip(cc) {
        for j in 0..DOT_LANES {
            lanes[j] += term(x[j], y[j], z[j]);
        }
    }
    let mut width = DOT_LANES / 2;
    while width > 0 {
        for j in 0..width {
            lanes[j] += lanes[j + width];
        }
        width /= 2;
    }
    tail.fold(lanes[0], |s, ((&x, &y), &z)| s + term(x, y, z))
}

/// The largest `scale · x` of `xs` (−∞ for none), in the lanes of [`dot`] at the CPU's vector
/// width: the plain fold is one chain of dependent comparisons, which was most of a 1000-class
/// cross-entropy's time. A maximum does not depend on the order it is taken in, so this is the
/// fold's value.
pub(crate) fn max_scaled(xs: &[f32], scale: f32) -> f32 {
    match simd_level() {
        // SAFETY: the level is available (`simd_level` checked the CPU).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { max_scaled_avx512(xs, scale) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { max_scaled_avx2(xs, scale) },
        _ => max_scaled_plain(xs, scale),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn max_scaled_avx512(xs: &[f32], scale: f32) -> f32 {
    max_scaled_plain(xs, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn max_scaled_avx2(xs: &[f32], scale: f32) -> f32 {
    max_scaled_plain(xs, scale)
}

#[inline(always)]
fn max_scaled_plain(xs: &[f32], scale: f32) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; DOT_LANES];
    let chunks = xs.chunks_exact(DOT_LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for j in 0..DOT_LANES {
            let v = scale * c[j];
            lanes[j] = if v > lanes[j] { v } else { lanes[j] };
        }
    }
    (lanes.iter().copied())
        .chain(tail.iter().map(|&x| scale * x))
        .fold(f32::NEG_INFINITY, f32::max)
}

/// `xs ↦ softmax(scale · xs)` in place, `scale > 0` (attention's `1/√d`): the row's largest
/// value, the shifted exponentials and their sum, and the normalisation, each at the CPU's
/// vector width. The crate's baseline build compiles a plain loop four floats wide and the
/// maximum's fold one float at a time: one ViT-B/16 image's attention went from 1.0 to 0.8 ms
/// per layer with this (Intel Emerald Rapids).
pub(crate) fn softmax_scaled(xs: &mut [f32], scale: f32) {
    softmax_scaled_at(simd_level(), xs, scale)
}

/// [`softmax_scaled`] at level `simd`, which must be available.
pub(crate) fn softmax_scaled_at(simd: Simd, xs: &mut [f32], scale: f32) {
    assert!(simd.available(), "softmax: {simd:?} not available");
    match simd {
        // SAFETY: the CPU has the level's features (checked above).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::softmax_scaled(xs, scale) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::softmax_scaled(xs, scale) },
        _ => {
            let max = xs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let inv = 1.0 / exp_scaled_sum_at(simd, xs, scale, max * scale);
            xs.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// `y = (x − mean) / √(var + eps) · weight + bias` over one row (PyTorch's `LayerNorm`), the
/// mean and then the variance of the deviations in two passes, at the CPU's vector width. The
/// tensor library's kernel runs one float at a time and takes the variance as `E[x²] − mean²`.
pub(crate) fn layer_norm_row(x: &[f32], y: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    layer_norm_row_at(simd_level(), x, y, weight, bias, eps)
}

/// [`layer_norm_row`] at level `simd`, which must be available.
///
/// # Panics
/// If `y`, `weight` or `bias` is shorter than `x`.
pub(crate) fn layer_norm_row_at(
    simd: Simd,
    x: &[f32],
    y: &mut [f32],
    weight: &[f32],
    bias: &[f32],
    eps: f32,
) {
    assert!(simd.available(), "layer norm: {simd:?} not available");
    let n = x.len();
    assert!(
        y.len() >= n && weight.len() >= n && bias.len() >= n,
        "layer norm: row of {n}, output {}, weight {}, bias {}",
        y.len(),
        weight.len(),
        bias.len()
    );
    if n == 0 {
        return;
    }
    match simd {
        // SAFETY: the CPU has the level's features; every slice holds n values (both checked).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::layer_norm_row(x, y, weight, bias, eps) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::layer_norm_row(x, y, weight, bias, eps) },
        _ => {
            let mean = x.iter().sum::<f32>() / n as f32;
            let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n as f32;
            let r = 1.0 / (var + eps).sqrt();
            for (i, y) in y[..n].iter_mut().enumerate() {
                *y = (x[i] - mean) * r * weight[i] + bias[i];
            }
        }
    }
}

/// `row[i] = quick_gelu(row[i] + bias[i])` where `quick_gelu(x) = x · σ(1.702 x)`, as CLIP's
/// `QuickGELU` (`x * torch.sigmoid(1.702 * x)`, here `x / (1 + exp(-1.702 x))`).
pub(crate) fn bias_quick_gelu(row: &mut [f32], bias: Option<&[f32]>) {
    bias_quick_gelu_at(simd_level(), row, bias)
}

/// [`bias_quick_gelu`] at level `simd`, which must be available.
pub(crate) fn bias_quick_gelu_at(simd: Simd, row: &mut [f32], bias: Option<&[f32]>) {
    let kernels = Kernels {
        #[cfg(target_arch = "x86_64")]
        avx512: avx512::bias_quick_gelu,
        #[cfg(target_arch = "x86_64")]
        avx2: avx2::bias_quick_gelu,
        scalar: quick_gelu,
    };
    bias_map_at(simd, row, bias, &kernels)
}

/// One element-wise map `x ↦ f(x + bias)` at each level: the vector kernels take the bias
/// themselves, the scalar `f` gets it added.
struct Kernels {
    #[cfg(target_arch = "x86_64")]
    avx512: unsafe fn(&mut [f32], Option<&[f32]>),
    #[cfg(target_arch = "x86_64")]
    avx2: unsafe fn(&mut [f32], Option<&[f32]>),
    scalar: fn(f32) -> f32,
}

/// Runs `kernels` at level `simd` over `row`, checking what the vector kernels assume.
fn bias_map_at(simd: Simd, row: &mut [f32], bias: Option<&[f32]>, kernels: &Kernels) {
    assert!(
        simd.available(),
        "element-wise kernel: {simd:?} not available"
    );
    if let Some(b) = bias {
        assert!(b.len() >= row.len(), "bias shorter than the row");
    }
    match simd {
        // SAFETY: the CPU has the level's features (checked above), the bias is long enough.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { (kernels.avx512)(row, bias) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { (kernels.avx2)(row, bias) },
        _ => match bias {
            Some(b) => row
                .iter_mut()
                .zip(b)
                .for_each(|(x, b)| *x = (kernels.scalar)(*x + b)),
            None => row.iter_mut().for_each(|x| *x = (kernels.scalar)(*x)),
        },
    }
}

#[inline]
pub(crate) fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
}

/// `row[i] = silu(row[i]) = x · σ(x)` (PyTorch's `F.silu`, SwiGLU's gate), on the vector `exp`.
pub(crate) fn silu(row: &mut [f32]) {
    match simd_level() {
        // SAFETY: `simd_level` only returns levels the CPU has; no bias is read.
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { avx512::bias_gate(row, None, 1.0, 0.0) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { avx2::bias_gate(row, None, 1.0, 0.0) },
        _ => row.iter_mut().for_each(|x| *x /= 1.0 + (-*x).exp()),
    }
}

/// The exact GELU through erfc: `gelu(x) = 0.5 x (1 + erf(x/√2))` is `x (1 − c/2)` for x ≥ 0
/// and `x c / 2` below, with `c = erfc(|x|/√2)` (no cancellation in the negative tail).
/// `erfc(z) ≈ t exp(−z² + P(t))`, `t = 1 / (1 + z/2)`, P of degree 9: the Chebyshev fit of
/// Numerical Recipes (`erfcc`, fractional error below 1.2e-7 for every z ≥ 0), on the vector
/// `exp`. Coefficients of P from t⁰ up.
const ERFC_P: [f32; 10] = [
    -1.265_512_2,
    1.000_023_7,
    0.374_091_96,
    0.096_784_18,
    -0.186_288_06,
    0.278_868_07,
    -1.135_204,
    1.488_515_9,
    -0.822_152_2,
    0.170_872_77,
];

/// `row[i] = gelu(row[i] + bias[i])`, the exact (erf) GELU of `nn.GELU()`: open_clip's LAION
/// towers, EVA02's text tower, timm's exact-GELU SigLIP towers. Within 1e-6 relative of the
/// erf definition (tests below), where a scalar `erff` per element cost 8 % of a text batch.
pub(crate) fn bias_gelu_erf(row: &mut [f32], bias: Option<&[f32]>) {
    bias_gelu_erf_at(simd_level(), row, bias)
}

/// [`bias_gelu_erf`] at level `simd`, which must be available.
pub(crate) fn bias_gelu_erf_at(simd: Simd, row: &mut [f32], bias: Option<&[f32]>) {
    let kernels = Kernels {
        #[cfg(target_arch = "x86_64")]
        avx512: avx512::bias_gelu_erf,
        #[cfg(target_arch = "x86_64")]
        avx2: avx2::bias_gelu_erf,
        scalar: gelu_erf,
    };
    bias_map_at(simd, row, bias, &kernels)
}

/// The scalar form of [`bias_gelu_erf`]'s formula.
pub(crate) fn gelu_erf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    let p = ERFC_P.iter().rev().fold(0.0, |p, c| p * t + c);
    let c = t * (-z * z + p).exp();
    match x < 0.0 {
        true => 0.5 * x * c,
        false => x * (1.0 - 0.5 * c),
    }
}

/// The tanh GELU as a sigmoid gate: `0.5 x (1 + tanh(u)) = x σ(2u)` with
/// `u = √(2/π) (x + 0.044715 x³)`, so `2u = x (GELU_TANH_LINEAR + GELU_TANH_CUBIC x²)`.
const GELU_TANH_LINEAR: f32 = 1.595_769_2;
const GELU_TANH_CUBIC: f32 = 0.071_354_814;

/// `row[i] = gelu_tanh(row[i] + bias[i])`: `gelu_pytorch_tanh` / `gelu_new` (SigLIP's towers),
/// on the vector `exp` rather than a scalar `tanhf` per element.
pub(crate) fn bias_gelu_tanh(row: &mut [f32], bias: Option<&[f32]>) {
    bias_gelu_tanh_at(simd_level(), row, bias)
}

/// [`bias_gelu_tanh`] at level `simd`, which must be available.
pub(crate) fn bias_gelu_tanh_at(simd: Simd, row: &mut [f32], bias: Option<&[f32]>) {
    let kernels = Kernels {
        #[cfg(target_arch = "x86_64")]
        avx512: avx512::bias_gelu_tanh,
        #[cfg(target_arch = "x86_64")]
        avx2: avx2::bias_gelu_tanh,
        scalar: gelu_tanh,
    };
    bias_map_at(simd, row, bias, &kernels)
}

#[inline]
pub(crate) fn gelu_tanh(x: f32) -> f32 {
    x / (1.0 + (-x * (GELU_TANH_LINEAR + GELU_TANH_CUBIC * x * x)).exp())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{EXP_HI, EXP_LO};

    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn exp(x: __m512) -> __m512 {
        let x = _mm512_min_ps(
            _mm512_max_ps(x, _mm512_set1_ps(EXP_LO)),
            _mm512_set1_ps(EXP_HI),
        );
        // n = round(x / ln 2); r = x - n ln 2, with ln 2 split so that n · C1 is exact.
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let r2 = _mm512_mul_ps(r, r);
        let y = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0));
        _mm512_scalef_ps(y, n)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn exp_scaled_sum(xs: &mut [f32], scale: f32, shift: f32) -> f32 {
        let (a, s) = (_mm512_set1_ps(scale), _mm512_set1_ps(shift));
        let mut acc = _mm512_setzero_ps();
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            let v = exp(_mm512_fmsub_ps(_mm512_loadu_ps(c.as_ptr()), a, s));
            _mm512_storeu_ps(c.as_mut_ptr(), v);
            acc = _mm512_add_ps(acc, v);
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let mask = ((1u32 << tail.len()) - 1) as __mmask16;
            let v = exp(_mm512_fmsub_ps(
                _mm512_maskz_loadu_ps(mask, tail.as_ptr()),
                a,
                s,
            ));
            _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, v);
            acc = _mm512_mask_add_ps(acc, mask, acc, v);
        }
        _mm512_reduce_add_ps(acc)
    }

    /// `x`, `y`, `w`, `b` hold at least `x.len()` values.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn layer_norm_row(x: &[f32], y: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let n = x.len();
        let full = n / 16 * 16;
        let mask = ((1u32 << (n - full)) - 1) as __mmask16;
        let at = |s: &[f32], i: usize| _mm512_loadu_ps(s.as_ptr().add(i));
        let tail = |s: &[f32]| _mm512_maskz_loadu_ps(mask, s.as_ptr().add(full));
        let mut sum = tail(x);
        for i in (0..full).step_by(16) {
            sum = _mm512_add_ps(sum, at(x, i));
        }
        let mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / n as f32);
        let d = _mm512_maskz_sub_ps(mask, tail(x), mean);
        let mut sq = _mm512_mul_ps(d, d);
        for i in (0..full).step_by(16) {
            let d = _mm512_sub_ps(at(x, i), mean);
            sq = _mm512_fmadd_ps(d, d, sq);
        }
        let var = _mm512_reduce_add_ps(sq) / n as f32;
        let r = _mm512_set1_ps(1.0 / (var + eps).sqrt());
        let norm = |v: __m512, w: __m512, b: __m512| {
            _mm512_fmadd_ps(_mm512_mul_ps(_mm512_sub_ps(v, mean), r), w, b)
        };
        for i in (0..full).step_by(16) {
            _mm512_storeu_ps(y.as_mut_ptr().add(i), norm(at(x, i), at(w, i), at(b, i)));
        }
        let v = norm(tail(x), tail(w), tail(b));
        _mm512_mask_storeu_ps(y.as_mut_ptr().add(full), mask, v);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn softmax_scaled(xs: &mut [f32], scale: f32) {
        let mut max = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut chunks = xs.chunks_exact(16);
        for c in &mut chunks {
            max = _mm512_max_ps(max, _mm512_loadu_ps(c.as_ptr()));
        }
        let tail = chunks.remainder();
        let mask = ((1u32 << tail.len()) - 1) as __mmask16;
        max = _mm512_mask_max_ps(max, mask, max, _mm512_maskz_loadu_ps(mask, tail.as_ptr()));
        let max = _mm512_reduce_max_ps(max);
        let inv = _mm512_set1_ps(1.0 / exp_scaled_sum(xs, scale, max * scale));
        let mut chunks = xs.chunks_exact_mut(16);
        for c in &mut chunks {
            _mm512_storeu_ps(
                c.as_mut_ptr(),
                _mm512_mul_ps(_mm512_loadu_ps(c.as_ptr()), inv),
            );
        }
        let tail = chunks.into_remainder();
        let v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask, tail.as_ptr()), inv);
        _mm512_mask_storeu_ps(tail.as_mut_ptr(), mask, v);
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bias_quick_gelu(row: &mut [f32], bias: Option<&[f32]>) {
        bias_gate(row, bias, 1.702, 0.0)
    }

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bias_gelu_tanh(row: &mut [f32], bias: Option<&[f32]>) {
        bias_gate(row, bias, super::GELU_TANH_LINEAR, super::GELU_TANH_CUBIC)
    }

    /// The (up to) 16 values of `row + bias` from `i`, and the mask of those inside the row.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn load_biased(row: &[f32], bias: Option<&[f32]>, i: usize) -> (__mmask16, __m512) {
        let n = row.len();
        let mask = if n - i >= 16 {
            0xffff
        } else {
            ((1u32 << (n - i)) - 1) as __mmask16
        };
        let mut x = _mm512_maskz_loadu_ps(mask, row.as_ptr().add(i));
        if let Some(b) = bias {
            x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(i)));
        }
        (mask, x)
    }

    /// `x / (1 + exp(-z))` with `z = x · linear` (`cubic` 0) or `x · (linear + cubic · x²)`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bias_gate(row: &mut [f32], bias: Option<&[f32]>, linear: f32, cubic: f32) {
        let n = row.len();
        if let Some(b) = bias {
            assert!(b.len() >= n, "bias shorter than the row");
        }
        let mut i = 0;
        while i < n {
            let (mask, x) = load_biased(row, bias, i);
            let p = row.as_mut_ptr().add(i);
            let k = match cubic == 0.0 {
                true => _mm512_set1_ps(-linear),
                false => _mm512_fmadd_ps(
                    _mm512_mul_ps(x, x),
                    _mm512_set1_ps(-cubic),
                    _mm512_set1_ps(-linear),
                ),
            };
            let e = exp(_mm512_mul_ps(x, k));
            let y = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e));
            _mm512_mask_storeu_ps(p, mask, y);
            i += 16;
        }
    }

    /// The exact GELU of `x + bias` (see `super::ERFC_P`).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bias_gelu_erf(row: &mut [f32], bias: Option<&[f32]>) {
        let n = row.len();
        let (one, half) = (_mm512_set1_ps(1.0), _mm512_set1_ps(0.5));
        let mut i = 0;
        while i < n {
            let (mask, x) = load_biased(row, bias, i);
            let p = row.as_mut_ptr().add(i);
            let z = _mm512_mul_ps(
                _mm512_abs_ps(x),
                _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
            );
            let t = _mm512_div_ps(one, _mm512_fmadd_ps(z, half, one));
            let mut poly = _mm512_set1_ps(super::ERFC_P[9]);
            for c in super::ERFC_P[..9].iter().rev() {
                poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(*c));
            }
            let c = _mm512_mul_ps(t, exp(_mm512_fnmadd_ps(z, z, poly)));
            let positive = _mm512_mul_ps(x, _mm512_fnmadd_ps(half, c, one));
            let negative = _mm512_mul_ps(_mm512_mul_ps(half, x), c);
            let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
            let y = _mm512_mask_blend_ps(below, positive, negative);
            _mm512_mask_storeu_ps(p, mask, y);
            i += 16;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{EXP_HI, EXP_LO};

    /// 2ⁿ for integral `n` in [-126, 127], built in the exponent field.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn pow2(n: __m256i) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            n,
            _mm256_set1_epi32(127),
        )))
    }

    /// The AVX-512 `exp` with 8 lanes. AVX2 has no `scalef`: 2ⁿ is built in the exponent field,
    /// in two halves, since n reaches 128 at the top of the clamped range (2¹²⁸ is not a float,
    /// 2⁶⁴ · 2⁶⁴ · y with y < 1 is).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    pub(super) unsafe fn exp(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(EXP_LO)),
            _mm256_set1_ps(EXP_HI),
        );
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let n = _mm256_cvtps_epi32(n);
        let half = _mm256_srai_epi32::<1>(n);
        _mm256_mul_ps(
            _mm256_mul_ps(y, pow2(half)),
            pow2(_mm256_sub_epi32(n, half)),
        )
    }

    /// Lanes `0..len` (at most 8) set.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn mask(len: usize) -> __m256i {
        _mm256_cmpgt_epi32(
            _mm256_set1_epi32(len.min(8) as i32),
            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_scaled_sum(xs: &mut [f32], scale: f32, shift: f32) -> f32 {
        let (a, s) = (_mm256_set1_ps(scale), _mm256_set1_ps(shift));
        let mut acc = _mm256_setzero_ps();
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            let v = exp(_mm256_fmsub_ps(_mm256_loadu_ps(c.as_ptr()), a, s));
            _mm256_storeu_ps(c.as_mut_ptr(), v);
            acc = _mm256_add_ps(acc, v);
        }
        let tail = chunks.into_remainder();
        if !tail.is_empty() {
            let m = mask(tail.len());
            let v = exp(_mm256_fmsub_ps(_mm256_maskload_ps(tail.as_ptr(), m), a, s));
            _mm256_maskstore_ps(tail.as_mut_ptr(), m, v);
            acc = _mm256_add_ps(acc, _mm256_and_ps(v, _mm256_castsi256_ps(m)));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }

    /// # Safety
    /// `bias`, when given, is at least as long as `row`.
    /// `x`, `y`, `w`, `b` hold at least `x.len()` values.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn layer_norm_row(x: &[f32], y: &mut [f32], w: &[f32], b: &[f32], eps: f32) {
        let n = x.len();
        let full = n / 8 * 8;
        let m = mask(n - full);
        let at = |s: &[f32], i: usize| _mm256_loadu_ps(s.as_ptr().add(i));
        let tail = |s: &[f32]| _mm256_maskload_ps(s.as_ptr().add(full), m);
        let mut sum = tail(x);
        for i in (0..full).step_by(8) {
            sum = _mm256_add_ps(sum, at(x, i));
        }
        let mean = lanes_sum(sum) / n as f32;
        let mv = _mm256_set1_ps(mean);
        let d = _mm256_and_ps(_mm256_sub_ps(tail(x), mv), _mm256_castsi256_ps(m));
        let mut sq = _mm256_mul_ps(d, d);
        for i in (0..full).step_by(8) {
            let d = _mm256_sub_ps(at(x, i), mv);
            sq = _mm256_fmadd_ps(d, d, sq);
        }
        let var = lanes_sum(sq) / n as f32;
        let r = _mm256_set1_ps(1.0 / (var + eps).sqrt());
        let norm = |v: __m256, w: __m256, b: __m256| {
            _mm256_fmadd_ps(_mm256_mul_ps(_mm256_sub_ps(v, mv), r), w, b)
        };
        for i in (0..full).step_by(8) {
            _mm256_storeu_ps(y.as_mut_ptr().add(i), norm(at(x, i), at(w, i), at(b, i)));
        }
        let v = norm(tail(x), tail(w), tail(b));
        _mm256_maskstore_ps(y.as_mut_ptr().add(full), m, v);
    }

    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn lanes_sum(v: __m256) -> f32 {
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), v);
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_scaled(xs: &mut [f32], scale: f32) {
        let low = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut max = low;
        let mut chunks = xs.chunks_exact(8);
        for c in &mut chunks {
            max = _mm256_max_ps(max, _mm256_loadu_ps(c.as_ptr()));
        }
        let tail = chunks.remainder();
        let m = mask(tail.len());
        let v = _mm256_maskload_ps(tail.as_ptr(), m);
        max = _mm256_max_ps(max, _mm256_blendv_ps(low, v, _mm256_castsi256_ps(m)));
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), max);
        let max = lanes.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv = _mm256_set1_ps(1.0 / exp_scaled_sum(xs, scale, max * scale));
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            _mm256_storeu_ps(
                c.as_mut_ptr(),
                _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), inv),
            );
        }
        let tail = chunks.into_remainder();
        let v = _mm256_mul_ps(_mm256_maskload_ps(tail.as_ptr(), m), inv);
        _mm256_maskstore_ps(tail.as_mut_ptr(), m, v);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_quick_gelu(row: &mut [f32], bias: Option<&[f32]>) {
        bias_gate(row, bias, 1.702, 0.0)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_gelu_tanh(row: &mut [f32], bias: Option<&[f32]>) {
        bias_gate(row, bias, super::GELU_TANH_LINEAR, super::GELU_TANH_CUBIC)
    }

    /// The (up to) 8 values of `row + bias` from `i`, and the mask of those inside the row.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn load_biased(row: &[f32], bias: Option<&[f32]>, i: usize) -> (__m256i, __m256) {
        let m = mask(row.len() - i);
        let mut x = _mm256_maskload_ps(row.as_ptr().add(i), m);
        if let Some(b) = bias {
            x = _mm256_add_ps(x, _mm256_maskload_ps(b.as_ptr().add(i), m));
        }
        (m, x)
    }

    /// `x / (1 + exp(-z))` with `z = x · linear` (`cubic` 0) or `x · (linear + cubic · x²)`.
    ///
    /// # Safety
    /// `bias`, when given, is at least as long as `row`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_gate(row: &mut [f32], bias: Option<&[f32]>, linear: f32, cubic: f32) {
        let n = row.len();
        let mut i = 0;
        while i < n {
            let (m, x) = load_biased(row, bias, i);
            let p = row.as_mut_ptr().add(i);
            let k = match cubic == 0.0 {
                true => _mm256_set1_ps(-linear),
                false => _mm256_fmadd_ps(
                    _mm256_mul_ps(x, x),
                    _mm256_set1_ps(-cubic),
                    _mm256_set1_ps(-linear),
                ),
            };
            let e = exp(_mm256_mul_ps(x, k));
            let y = _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.0), e));
            _mm256_maskstore_ps(p, m, y);
            i += 8;
        }
    }

    /// The exact GELU of `x + bias` (see `super::ERFC_P`).
    ///
    /// # Safety
    /// `bias`, when given, is at least as long as `row`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bias_gelu_erf(row: &mut [f32], bias: Option<&[f32]>) {
        let n = row.len();
        let (one, half) = (_mm256_set1_ps(1.0), _mm256_set1_ps(0.5));
        let sign = _mm256_set1_ps(-0.0);
        let mut i = 0;
        while i < n {
            let (m, x) = load_biased(row, bias, i);
            let p = row.as_mut_ptr().add(i);
            let z = _mm256_mul_ps(
                _mm256_andnot_ps(sign, x),
                _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2),
            );
            let t = _mm256_div_ps(one, _mm256_fmadd_ps(z, half, one));
            let mut poly = _mm256_set1_ps(super::ERFC_P[9]);
            for c in super::ERFC_P[..9].iter().rev() {
                poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(*c));
            }
            let c = _mm256_mul_ps(t, exp(_mm256_fnmadd_ps(z, z, poly)));
            let positive = _mm256_mul_ps(x, _mm256_fnmadd_ps(half, c, one));
            let negative = _mm256_mul_ps(_mm256_mul_ps(half, x), c);
            let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_setzero_ps());
            _mm256_maskstore_ps(p, m, _mm256_blendv_ps(positive, negative, below));
            i += 8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> u32 {
        if a == b {
            return 0;
        }
        (a.to_bits() as i64 - b.to_bits() as i64).unsigned_abs() as u32
    }

    fn levels() -> Vec<Simd> {
        Simd::ALL.into_iter().filter(|s| s.available()).collect()
    }

    #[test]
    fn vector_gelu_is_the_erf_gelu_at_every_level() {
        // Every 1/64 from -16 to 16, with a bias, against the erf definition in f64.
        let xs: Vec<f32> = (-1024..=1024).map(|i| i as f32 / 64.0).collect();
        let bias: Vec<f32> = xs.iter().map(|x| 0.01 * x).collect();
        for simd in levels() {
            let mut row = xs.clone();
            bias_gelu_erf_at(simd, &mut row, Some(&bias));
            for ((x, b), y) in xs.iter().zip(&bias).zip(&row) {
                let v = (x + b) as f64;
                let reference = 0.5 * v * (1.0 + erf_f64(v / std::f64::consts::SQRT_2));
                let d = (*y as f64 - reference).abs();
                assert!(
                    d <= 1e-6 * reference.abs() + 1e-7,
                    "{simd:?} gelu({v}) = {y}, expected {reference}"
                );
            }
        }
        // An odd length exercises the masked tail.
        let mut row = vec![0.5f32; 19];
        bias_gelu_erf(&mut row, None);
        assert!(
            row.iter().all(|y| (y - 0.345_731_3).abs() < 1e-6),
            "{row:?}"
        );
    }

    /// erf in f64 by its Taylor series (|x| ≤ 3) or continued fraction of erfc.
    fn erf_f64(x: f64) -> f64 {
        let a = x.abs();
        let r = if a <= 3.0 {
            let (mut term, mut sum, mut k) = (a, a, 0.0);
            while term.abs() > 1e-17 * sum.abs() {
                k += 1.0;
                term *= -a * a / k;
                sum += term / (2.0 * k + 1.0);
            }
            2.0 / std::f64::consts::PI.sqrt() * sum
        } else {
            // erfc(a) = exp(-a²)/√π · 1/(a + 1/2/(a + 1/(a + 3/2/(a + 2/(a + …)))))
            let mut f = a;
            for k in (1..60).rev() {
                f = a + (k as f64 / 2.0) / f;
            }
            1.0 - (-a * a).exp() / std::f64::consts::PI.sqrt() / f
        };
        r.copysign(x)
    }

    #[test]
    fn vector_exp_is_within_a_few_ulp_of_expf() {
        for simd in levels() {
            let xs: Vec<f32> = (0..20001).map(|i| -87.0 + i as f32 * 0.00875).collect();
            let mut got = xs.clone();
            let sum = exp_scaled_sum_at(simd, &mut got, 1.0, 0.0);
            for (x, g) in xs.iter().zip(&got) {
                let want = x.exp();
                assert!(
                    ulps(*g, want) <= 4,
                    "{simd:?}: exp({x}) = {g}, expf says {want}"
                );
            }
            assert!(sum.is_infinite(), "the sum of this range overflows f32");
            // The top of the vector paths' clamped range, where 2ⁿ alone would overflow (the
            // portable path is the C library's `expf`, which overflows to infinity there).
            let mut top = vec![
                88.3f32,
                88.376,
                88.5,
                1000.0,
                f32::MAX,
                -88.0,
                -1000.0,
                0.0,
                1.0,
            ];
            exp_scaled_sum_at(simd, &mut top, 1.0, 0.0);
            assert!(ulps(top[0], 88.3f32.exp()) <= 4, "{simd:?}: {top:?}");
            let clamped = simd != Simd::Portable;
            assert!(
                top[1..5]
                    .iter()
                    .all(|v| *v > 2e38 && (v.is_finite() || !clamped)),
                "{simd:?}: {top:?}"
            );
            assert!(
                top[5] < 1e-37 && top[6] < 1e-37 && top[7] == 1.0,
                "{simd:?}: {top:?}"
            );
            // A softmax-sized range: the sum runs in 8 or 16 f32 lanes.
            let mut got: Vec<f32> = (0..1001).map(|i| -20.0 + i as f32 * 0.02).collect();
            let sum = exp_scaled_sum_at(simd, &mut got, 1.0, 0.0);
            let want_sum: f64 = got.iter().map(|&g| g as f64).sum();
            assert!(
                ((sum as f64 - want_sum) / want_sum).abs() < 1e-5,
                "{simd:?}"
            );
            // Scaled and shifted, with odd lengths (masked tails, which must not add their
            // unused lanes) and extreme arguments clamped, not NaN.
            for len in 1..=5 {
                let mut v = vec![0.0f32, -1000.0, 0.5, 1.0, 1.5];
                v.truncate(len);
                let s = exp_scaled_sum_at(simd, &mut v, 2.0, 3.0);
                assert!(ulps(v[0], (-3f32).exp()) <= 4, "{simd:?}");
                assert!(v.get(1).is_none_or(|&x| x < 1e-37), "{simd:?}");
                assert!(v.get(4).is_none_or(|&x| x == 1.0), "{simd:?}");
                assert!((s - v.iter().sum::<f32>()).abs() < 1e-6, "{simd:?} {len}");
            }
        }
    }

    #[test]
    fn vector_layer_norm_is_the_f64_layer_norm_at_every_level() {
        // Lengths around the vector widths, values off zero (the mean matters), a weight and a
        // bias that differ per column.
        for len in [1usize, 7, 8, 15, 16, 17, 40, 768, 770] {
            let x: Vec<f32> = (0..len)
                .map(|i| 3.0 + ((i * 37) % 29) as f32 * 0.25)
                .collect();
            let w: Vec<f32> = (0..len).map(|i| 0.5 + (i % 5) as f32 * 0.1).collect();
            let b: Vec<f32> = (0..len).map(|i| (i % 3) as f32 - 1.0).collect();
            let eps = 1e-5;
            let mean = x.iter().map(|&v| v as f64).sum::<f64>() / len as f64;
            let var = x.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / len as f64;
            let r = 1.0 / (var + eps as f64).sqrt();
            for simd in levels() {
                let mut y = vec![f32::NAN; len + 1];
                layer_norm_row_at(simd, &x, &mut y, &w, &b, eps);
                for i in 0..len {
                    let want = (x[i] as f64 - mean) * r * w[i] as f64 + b[i] as f64;
                    assert!(
                        (y[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{simd:?} len {len} at {i}: {} vs {want}",
                        y[i]
                    );
                }
                assert!(y[len].is_nan(), "{simd:?} len {len}: wrote past the row");
            }
        }
    }

    #[test]
    fn vector_add_is_the_plain_sum() {
        for len in [0usize, 1, 15, 16, 17, 33, 770] {
            let x: Vec<f32> = (0..len).map(|i| i as f32 * 0.37).collect();
            let mut y: Vec<f32> = (0..len).map(|i| 1.0 - i as f32 * 0.11).collect();
            let want: Vec<f32> = y.iter().zip(&x).map(|(y, x)| y + x).collect();
            add_assign(&mut y, &x);
            assert_eq!(y, want, "len {len}");
        }
    }

    #[test]
    fn the_lane_dots_have_the_same_bits_at_every_level_and_are_close_to_f64() {
        // Lengths around the lane count (no whole block, a tail, none); values of mixed signs
        // and magnitudes, so that the order of the additions shows in the last bits.
        for len in [0usize, 1, 31, 32, 33, 64, 100, 1024, 1031] {
            let a: Vec<f32> = (0..len)
                .map(|i| ((i * 37) % 101) as f32 * 0.013 - 0.6)
                .collect();
            let b: Vec<f32> = (0..len)
                .map(|i| ((i * 53) % 97) as f32 * 0.021 - 1.0)
                .collect();
            let c: Vec<f32> = (0..len)
                .map(|i| ((i * 29) % 89) as f32 * 0.017 - 0.7)
                .collect();
            type Exact = fn(f64, f64, f64) -> f64;
            let products: [(Option<&[f32]>, Exact); 2] = [
                (None, |x, y, _| x * y),
                (Some(&c[..]), |x, y, z| x * (y - z)),
            ];
            for (third, exact) in products {
                let plain = dot_plain(&a, &b, third);
                let terms: Vec<f64> = (0..len)
                    .map(|i| exact(a[i] as f64, b[i] as f64, c[i] as f64))
                    .collect();
                let want: f64 = terms.iter().sum();
                let scale: f64 = terms.iter().map(|t| t.abs()).sum();
                assert!(
                    (plain as f64 - want).abs() <= 1e-6 * scale.max(1.0),
                    "len {len}: {plain} vs {want}"
                );
                for simd in Simd::ALL.into_iter().filter(|s| s.available()) {
                    // SAFETY: the level is available.
                    let got = unsafe { dot_diff_at(simd, &a, &b, third) };
                    assert_eq!(got.to_bits(), plain.to_bits(), "len {len} at {simd:?}");
                }
            }
            assert_eq!(dot(&a, &b).to_bits(), dot_plain(&a, &b, None).to_bits());
            assert_eq!(
                dot_diff(&a, &b, &c).to_bits(),
                dot_plain(&a, &b, Some(&c)).to_bits()
            );
        }
    }

    #[test]
    fn the_lane_maximum_is_the_fold() {
        for len in [0usize, 1, 31, 32, 33, 1000] {
            for top in [0, len / 2, len.saturating_sub(1)] {
                let xs: Vec<f32> = (0..len)
                    .map(|i| {
                        if i == top {
                            3.5
                        } else {
                            ((i * 41) % 67) as f32 * 0.05 - 2.0
                        }
                    })
                    .collect();
                for scale in [1.0f32, 100.0, -0.5] {
                    let want = (xs.iter()).fold(f32::NEG_INFINITY, |m, &v| m.max(scale * v));
                    assert_eq!(max_scaled(&xs, scale), want, "len {len}, scale {scale}");
                    assert_eq!(
                        max_scaled_plain(&xs, scale),
                        want,
                        "len {len}, scale {scale}"
                    );
                }
            }
        }
    }

    #[test]
    fn vector_softmax_is_the_f64_softmax_at_every_level() {
        // Lengths around the vector widths (a masked tail, none, an empty row); the largest
        // value anywhere in the row, so that every lane's maximum is exercised.
        for len in [0usize, 1, 7, 8, 15, 16, 17, 50, 196, 197] {
            for top in [0, len / 2, len.saturating_sub(1)] {
                let xs: Vec<f32> = (0..len)
                    .map(|i| {
                        if i == top {
                            9.0
                        } else {
                            ((i * 37) % 23) as f32 * 0.4 - 4.0
                        }
                    })
                    .collect();
                let scale = 0.125f32;
                let max = xs.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
                let e: Vec<f64> = xs
                    .iter()
                    .map(|&x| ((x as f64 - max) * scale as f64).exp())
                    .collect();
                let sum: f64 = e.iter().sum();
                for simd in levels() {
                    let mut got = xs.clone();
                    softmax_scaled_at(simd, &mut got, scale);
                    for (i, (g, w)) in got.iter().zip(&e).enumerate() {
                        let w = w / sum;
                        assert!(
                            (*g as f64 - w).abs() <= 1e-6 * w + 1e-9,
                            "{simd:?} len {len}, top {top}, at {i}: {g} vs {w}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn vector_gelu_tanh_matches_the_tanh_definition() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 - 501.0) * 0.03).collect();
        let bias: Vec<f32> = (0..1003).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        // gelu_pytorch_tanh as transformers writes it.
        let reference = |x: f32| {
            let x = f64::from(x);
            0.5 * x
                * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
        };
        for simd in levels() {
            for b in [None, Some(&bias[..])] {
                for len in [1003, 17, 9, 8, 7, 1] {
                    let mut got = xs[..len].to_vec();
                    bias_gelu_tanh_at(simd, &mut got, b.map(|b| &b[..len]));
                    for (i, (x, g)) in xs.iter().zip(&got).enumerate() {
                        let want = reference(x + b.map_or(0.0, |b| b[i]));
                        assert!(
                            (f64::from(*g) - want).abs() <= 1e-6 * want.abs().max(1.0),
                            "{simd:?}: gelu_tanh({x}) = {g}, want {want}"
                        );
                    }
                }
            }
        }
        assert_eq!(gelu_tanh(-1e30), 0.0);
        assert_eq!(gelu_tanh(1e30), 1e30);
    }

    #[test]
    fn vector_quick_gelu_matches_the_scalar_definition() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 - 501.0) * 0.03).collect();
        let bias: Vec<f32> = (0..1003).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        for simd in levels() {
            for b in [None, Some(&bias[..])] {
                // Every tail length of both vector widths.
                for len in [1003, 17, 9, 8, 7, 1] {
                    let mut got = xs[..len].to_vec();
                    bias_quick_gelu_at(simd, &mut got, b.map(|b| &b[..len]));
                    for (i, (x, g)) in xs.iter().zip(&got).enumerate() {
                        let want = quick_gelu(x + b.map_or(0.0, |b| b[i]));
                        assert!(
                            (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                            "{simd:?}: quick_gelu({x}) = {g}, want {want}"
                        );
                    }
                }
            }
        }
    }
}
