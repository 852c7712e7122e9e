//! CPU kernels for the inference hot path that candle runs serially or through many small ops:
//! bias + activation fused in place on a matmul's output, and multi-head attention computed
//! straight from the fused QKV projection, parallel over (batch, head).
//!
//! These ops record no backward pass: they serve the frozen encoders only. Trained paths use
//! candle's composite ops (see docs/tensor-library.md).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, InplaceOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::config::Activation;

fn contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: input must be contiguous"),
    }
}

#[inline]
fn activate(x: f32, act: Activation) -> f32 {
    match act {
        Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
        Activation::Gelu => {
            0.5 * x * (1.0 + candle_core::cpu::erf::erf_f32(x * std::f32::consts::FRAC_1_SQRT_2))
        }
        Activation::GeluTanh => {
            const SQRT_2_OVER_PI: f32 = 0.797_884_6;
            0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh())
        }
    }
}

/// `x[.., c] = act(x[.., c] + bias[c])`, in place, rows in parallel.
pub struct BiasAct {
    pub bias: Option<Vec<f32>>,
    pub act: Option<Activation>,
}

impl InplaceOp1 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-act"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("bias-act: input must be contiguous");
        };
        let cols = layout.dims().last().copied().unwrap_or(1).max(1);
        let data = match storage {
            CpuStorage::F32(data) => &mut data[start..end],
            _ => candle_core::bail!("bias-act: expected f32"),
        };
        let (bias, act) = (self.bias.as_deref(), self.act);
        // Rows of at least ~16k values per task keep rayon's overhead negligible.
        let rows_per_task = (16384 / cols).max(1);
        data.par_chunks_mut(cols * rows_per_task).for_each(|chunk| {
            for row in chunk.chunks_mut(cols) {
                match (bias, act) {
                    (Some(b), Some(a)) => row
                        .iter_mut()
                        .zip(b)
                        .for_each(|(x, b)| *x = activate(*x + b, a)),
                    (Some(b), None) => row.iter_mut().zip(b).for_each(|(x, b)| *x += b),
                    (None, Some(a)) => row.iter_mut().for_each(|x| *x = activate(*x, a)),
                    (None, None) => {}
                }
            }
        });
        Ok(())
    }
}

/// Scaled dot-product attention over `qkv` of shape (B, L, 3·D) laid out as [q | k | v], each
/// split into `heads` heads of D/heads; returns (B, L, D). `causal` masks future positions as
/// the text tower requires.
pub struct FusedAttention {
    pub heads: usize,
    pub causal: bool,
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
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

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous(storage, layout, "fused-attention")?;
        let (b, l, d3) = layout.shape().dims3()?;
        let d = d3 / 3;
        if d3 % 3 != 0 || d % self.heads != 0 {
            candle_core::bail!(
                "fused-attention: last dim {d3} does not split into 3 x {} heads",
                self.heads
            );
        }
        let hd = d / self.heads;
        let scale = (hd as f32).powf(-0.5);
        let heads = self.heads;
        let causal = self.causal;
        let per_head: Vec<Vec<f32>> = (0..b * heads)
            .into_par_iter()
            .map(|bh| {
                let (bi, h) = (bh / heads, bh % heads);
                let row = |i: usize, part: usize| {
                    let at = (bi * l + i) * d3 + part * d + h * hd;
                    &qkv[at..at + hd]
                };
                let mut out = vec![0f32; l * hd];
                let mut scores = vec![0f32; l];
                for i in 0..l {
                    let keys = if causal { i + 1 } else { l };
                    let q = row(i, 0);
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in scores[..keys].iter_mut().enumerate() {
                        *s = dot(q, row(j, 1)) * scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0f32;
                    for s in &mut scores[..keys] {
                        *s = (*s - max).exp();
                        sum += *s;
                    }
                    let o = &mut out[i * hd..(i + 1) * hd];
                    for (j, s) in scores[..keys].iter().enumerate() {
                        let p = s / sum;
                        o.iter_mut().zip(row(j, 2)).for_each(|(o, v)| *o += p * v);
                    }
                }
                out
            })
            .collect();
        let mut out = vec![0f32; b * l * d];
        for (bh, head) in per_head.iter().enumerate() {
            let (bi, h) = (bh / heads, bh % heads);
            for i in 0..l {
                let at = (bi * l + i) * d + h * hd;
                out[at..at + hd].copy_from_slice(&head[i * hd..(i + 1) * hd]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((b, l, d))))
    }
}

/// `x · wᵀ` for few rows of `x` (M×K) and a weight `w` in PyTorch's (N×K) layout.
///
/// General GEMM kernels tile the rows in blocks of 16 to 64, so with a handful of rows (one
/// image's 50 tokens, a batch of short prompts) most of their work is padding, and the AVX-512
/// path of the `gemm` crate was measured 2–3× slower here than this: every output is a dot
/// product of two contiguous rows, so each task streams one block of weight rows once and
/// reuses it for all M inputs.
pub struct FewRowMatmul;

/// Up to this many rows (one ViT-B/32 image's 50 tokens, one 77-token prompt, a batch of short
/// prompts) the tiled dot-product kernel is faster than the blocked GEMM (ViT-B/32 batch 1:
/// 16.6 vs 9.7 images/s; one 77-token prompt: 24.0 vs 17.3 per second; measured with
/// `bench/encoders.rs`, docs/benchmarks.md).
pub const FEW_ROWS: usize = 80;

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

fn few_row_matmul(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
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

impl CustomOp2 for FewRowMatmul {
    fn name(&self) -> &'static str {
        "few-row-matmul"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(xs, xl, "few-row-matmul")?;
        let w = contiguous(ws, wl, "few-row-matmul")?;
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = wl.shape().dims2()?;
        if k != k2 {
            candle_core::bail!("few-row-matmul: x has {k} columns, w has {k2}");
        }
        Ok((
            CpuStorage::F32(few_row_matmul(x, w, m, k, n)),
            Shape::from((m, n)),
        ))
    }
}

/// Applies [`BiasAct`] to a fresh (uniquely owned) tensor and returns it.
pub fn bias_act(x: Tensor, op: &BiasAct) -> candle_core::Result<Tensor> {
    if op.bias.is_none() && op.act.is_none() {
        return Ok(x);
    }
    let x = x.contiguous()?;
    x.inplace_op1(op)?;
    Ok(x)
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
            let y = few_row_matmul(&x, &w, m, k, n);
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
