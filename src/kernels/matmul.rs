//! The one wrapper around the `gemm` crate: row-major f32 products with optional transposes, used
//! by the ResNet convolutions and by the heads trained on cached features. (candle's own matmul
//! calls the same crate for the transformer towers.)

use rayon::prelude::*;

/// Up to this many rows (one ViT-B/32 image's 50 tokens, one 77-token prompt, a batch of short
/// prompts) the tiled dot-product kernel is faster than the blocked GEMM (ViT-B/32 batch 1:
/// 16.6 vs 9.7 images/s; one 77-token prompt: 24.0 vs 17.3 per second; measured with
/// `bench/encoders.rs`, docs/benchmarks.md).
pub const FEW_ROWS: usize = 80;

/// `c (m×n) = op(a) · op(b)`, or `c += …` when `accumulate`. `op(a)` is `m×k`: `a` is stored
/// `m×k` row-major, or `k×m` when `ta` (and likewise `b`, `k×n` or `n×k` when `tb`). Transposes
/// are strides, never copies.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm: buffer too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // `x · wᵀ` with few rows (a batch of 32 features against a classifier, one image's tokens):
    // blocked kernels pad such products to their 64-row tiles; dot products do not.
    if !ta && tb && !accumulate && m <= FEW_ROWS {
        c[..m * n].copy_from_slice(&few_rows_abt(a, b, m, k, n));
        return;
    }
    // (row stride, column stride) of op(a) and op(b).
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // Below ~1 MFLOP the thread hand-off costs more than it saves.
    let parallelism = if m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above bounds every index gemm touches: dst m×n with row stride n; op(a)
    // m×k and op(b) k×n address exactly the m·k and k·n elements of their buffers through the
    // strides chosen above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
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

/// A dot product written so that the compiler vectorises it without reassociation flags.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise without reassociation flags.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY (for the loads below): i + 32 <= n <= len of both slices.
    while i + 32 <= n {
        for (j, acc) in acc.iter_mut().enumerate() {
            let x = _mm256_loadu_ps(pa.add(i + 8 * j));
            let y = _mm256_loadu_ps(pb.add(i + 8 * j));
            *acc = _mm256_fmadd_ps(x, y, *acc);
        }
        i += 32;
    }
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), sum);
    let mut total: f32 = lanes.iter().sum();
    while i < n {
        total += a[i] * b[i];
        i += 1;
    }
    total
}

/// Dot products of two input rows with four weight rows at once (a 2×4 register tile): each
/// 8-float step loads 6 vectors for 8 FMAs, against 2 loads per FMA for one dot product at a
/// time, so the kernel is bound by arithmetic rather than loads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_2x4_avx2(x: [&[f32]; 2], w: [&[f32]; 4]) -> [[f32; 4]; 2] {
    use std::arch::x86_64::*;
    let k = x[0].len();
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let mut i = 0;
    // SAFETY (for the loads below): every row has k elements and i + 8 <= k.
    while i + 8 <= k {
        let xv = [
            _mm256_loadu_ps(x[0].as_ptr().add(i)),
            _mm256_loadu_ps(x[1].as_ptr().add(i)),
        ];
        for (j, wr) in w.iter().enumerate() {
            let wv = _mm256_loadu_ps(wr.as_ptr().add(i));
            acc[0][j] = _mm256_fmadd_ps(xv[0], wv, acc[0][j]);
            acc[1][j] = _mm256_fmadd_ps(xv[1], wv, acc[1][j]);
        }
        i += 8;
    }
    let mut out = [[0f32; 4]; 2];
    for r in 0..2 {
        for j in 0..4 {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][j]);
            let tail: f32 = (i..k).map(|t| x[r][t] * w[j][t]).sum();
            out[r][j] = lanes.iter().sum::<f32>() + tail;
        }
    }
    out
}

/// `x · wᵀ` for few rows of `x` (M×K) and `w` (N×K): see [`FEW_ROWS`].
pub fn few_rows_abt(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    #[cfg(target_arch = "x86_64")]
    let fast =
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let fast = false;
    let dot_rows = |a: &[f32], b: &[f32]| -> f32 {
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            return unsafe { dot_avx2(a, b) };
        }
        dot(a, b)
    };
    // Blocks of 32 weight rows (32·K floats, 64 KiB at K = 512) stay in L2 while all M inputs
    // pass over them; the output is written per block and transposed back at the end.
    const BLOCK: usize = 32;
    let blocks: Vec<Vec<f32>> = w
        .par_chunks(BLOCK * k)
        .map(|wb| {
            let rows = wb.len() / k;
            let mut out = vec![0f32; m * rows];
            let xr = |i: usize| &x[i * k..(i + 1) * k];
            let wr = |r: usize| &wb[r * k..(r + 1) * k];
            // The 2×4 tiles where the CPU has AVX2 + FMA; single dot products for the edges.
            let (mut i0, mut r0) = (0, 0);
            #[cfg(target_arch = "x86_64")]
            if fast {
                (i0, r0) = (m - m % 2, rows - rows % 4);
                for i in (0..i0).step_by(2) {
                    for r in (0..r0).step_by(4) {
                        // SAFETY: the CPU has AVX2 and FMA (checked above); all rows have k floats.
                        let t = unsafe {
                            tile_2x4_avx2(
                                [xr(i), xr(i + 1)],
                                [wr(r), wr(r + 1), wr(r + 2), wr(r + 3)],
                            )
                        };
                        for (a, row) in t.iter().enumerate() {
                            out[(i + a) * rows + r..(i + a) * rows + r + 4].copy_from_slice(row);
                        }
                    }
                }
            }
            for i in 0..m {
                for r in 0..rows {
                    if i < i0 && r < r0 {
                        continue;
                    }
                    out[i * rows + r] = dot_rows(xr(i), wr(r));
                }
            }
            out
        })
        .collect();
    let mut y = vec![0f32; m * n];
    for (b, block) in blocks.iter().enumerate() {
        let rows = block.len() / m.max(1);
        for i in 0..m {
            y[i * n + b * BLOCK..i * n + b * BLOCK + rows]
                .copy_from_slice(&block[i * rows..(i + 1) * rows]);
        }
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_row_matmul_matches_the_definition() {
        for &(m, k, n) in &[(1, 7, 3), (5, 64, 70), (10, 100, 33), (3, 513, 65)] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let w: Vec<f32> = (0..n * k)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) / 48.0)
                .collect();
            let y = few_rows_abt(&x, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f32 = (0..k).map(|t| x[i * k + t] * w[j * k + t]).sum();
                    assert!(
                        (y[i * n + j] - want).abs() < 1e-3,
                        "({m},{k},{n}) [{i},{j}]"
                    );
                }
            }
        }
    }
}
