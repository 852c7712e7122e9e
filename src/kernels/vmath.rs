//! Vectorised element-wise math for the encoders' epilogues: `exp` (softmax, QuickGELU) with an
//! AVX-512 path, since the compiler cannot vectorise calls to the C library's `expf`.
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
    #[cfg(target_arch = "x86_64")]
    if simd_level() == Simd::Avx512 {
        // SAFETY: the CPU has AVX-512F (detected).
        return unsafe { avx512::exp_scaled_sum(xs, scale, shift) };
    }
    let mut sum = 0f32;
    for x in xs {
        *x = (*x * scale - shift).exp();
        sum += *x;
    }
    sum
}

/// `row[i] = quick_gelu(row[i] + bias[i])` where `quick_gelu(x) = x · σ(1.702 x)`, as CLIP's
/// `QuickGELU` (`x * torch.sigmoid(1.702 * x)`, here `x / (1 + exp(-1.702 x))`).
pub(crate) fn bias_quick_gelu(row: &mut [f32], bias: Option<&[f32]>) {
    #[cfg(target_arch = "x86_64")]
    if simd_level() == Simd::Avx512 {
        // SAFETY: the CPU has AVX-512F (detected).
        return unsafe { avx512::bias_quick_gelu(row, bias) };
    }
    match bias {
        Some(b) => row
            .iter_mut()
            .zip(b)
            .for_each(|(x, b)| *x = quick_gelu(*x + b)),
        None => row.iter_mut().for_each(|x| *x = quick_gelu(*x)),
    }
}

#[inline]
pub(crate) fn quick_gelu(x: f32) -> f32 {
    x / (1.0 + (-1.702 * x).exp())
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

    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bias_quick_gelu(row: &mut [f32], bias: Option<&[f32]>) {
        let n = row.len();
        if let Some(b) = bias {
            assert!(b.len() >= n, "bias shorter than the row");
        }
        let mut i = 0;
        while i < n {
            let mask = if n - i >= 16 {
                0xffff
            } else {
                ((1u32 << (n - i)) - 1) as __mmask16
            };
            let p = row.as_mut_ptr().add(i);
            let mut x = _mm512_maskz_loadu_ps(mask, p);
            if let Some(b) = bias {
                x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(mask, b.as_ptr().add(i)));
            }
            let e = exp(_mm512_mul_ps(x, _mm512_set1_ps(-1.702)));
            let y = _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.0), e));
            _mm512_mask_storeu_ps(p, mask, y);
            i += 16;
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

    #[test]
    fn vector_exp_is_within_a_few_ulp_of_expf() {
        let xs: Vec<f32> = (0..20001).map(|i| -87.0 + i as f32 * 0.00875).collect();
        let mut got = xs.clone();
        let sum = exp_scaled_sum(&mut got, 1.0, 0.0);
        for (x, g) in xs.iter().zip(&got) {
            let want = x.exp();
            assert!(ulps(*g, want) <= 4, "exp({x}) = {g}, expf says {want}");
        }
        assert!(sum.is_infinite(), "the sum of this range overflows f32");
        // A softmax-sized range: the sum runs in 16 f32 lanes of at most 63 terms each.
        let mut got: Vec<f32> = (0..1001).map(|i| -20.0 + i as f32 * 0.02).collect();
        let sum = exp_scaled_sum(&mut got, 1.0, 0.0);
        let want_sum: f64 = got.iter().map(|&g| g as f64).sum();
        assert!(((sum as f64 - want_sum) / want_sum).abs() < 1e-5);
        // Scaled and shifted, with an odd length (a masked tail) and extreme arguments clamped,
        // not NaN.
        let mut v = vec![0.0f32, -1000.0, 0.5, 1.0, 1.5];
        let s = exp_scaled_sum(&mut v, 2.0, 3.0);
        assert!(ulps(v[0], (-3f32).exp()) <= 4 && v[1] < 1e-37 && v[4] == 1.0);
        assert!((s - v.iter().sum::<f32>()).abs() < 1e-6);
    }

    #[test]
    fn vector_quick_gelu_matches_the_scalar_definition() {
        let xs: Vec<f32> = (0..1003).map(|i| (i as f32 - 501.0) * 0.03).collect();
        let bias: Vec<f32> = (0..1003).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
        for b in [None, Some(&bias[..])] {
            let mut got = xs.clone();
            bias_quick_gelu(&mut got, b);
            for (i, (x, g)) in xs.iter().zip(&got).enumerate() {
                let want = quick_gelu(x + b.map_or(0.0, |b| b[i]));
                assert!(
                    (g - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "quick_gelu({x}) = {g}, want {want}"
                );
            }
        }
    }
}
