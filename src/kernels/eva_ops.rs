//! The element-wise passes of EVA02's blocks, fused: the rotary embedding applied in place to the
//! queries and keys of the `qkv` projection's output, and SwiGLU's gate `silu(g) · x`. Written
//! with candle's ops they were a dozen single-threaded passes (narrow, negate, concatenate,
//! multiply, add) over every token per block, which left the image tower at 42–52 % of the
//! machine's GEMM rate where the CLIP ViT runs at 70–86 % (docs/benchmarks.md).

use candle_core::{CpuStorage, CustomOp1, InplaceOp1, Layout, Shape};
use rayon::prelude::*;

use super::ops::contiguous;
use super::vmath::silu;

/// timm's `apply_rot_embed_cat` on q and k inside a `(B, L, 3·D)` `[q | k | v]` tensor, in place:
/// for each token after the first `prefix` and each head, channel pair `(2i, 2i + 1)` becomes
/// `(x₀ cos − x₁ sin, x₁ cos + x₀ sin)` with the token's row of `sin` and `cos` (`N × head_dim`,
/// each angle repeated for both channels of its pair). v and the prefix tokens are left as they are.
pub struct RotaryInPlace<'a> {
    pub sin: &'a [f32],
    pub cos: &'a [f32],
    pub heads: usize,
    pub prefix: usize,
}

impl InplaceOp1 for RotaryInPlace<'_> {
    fn name(&self) -> &'static str {
        "rotary-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (_, l, three_d) = layout.shape().dims3()?;
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("rotary-in-place: qkv must be contiguous");
        };
        let d = three_d / 3;
        let hd = d / self.heads.max(1);
        let patches = l.saturating_sub(self.prefix);
        if !three_d.is_multiple_of(3) || hd * self.heads != d || !hd.is_multiple_of(2) {
            candle_core::bail!(
                "rotary-in-place: {three_d} channels are not [q | k | v] of even heads"
            );
        }
        if self.sin.len() != patches * hd || self.cos.len() != patches * hd {
            candle_core::bail!(
                "rotary-in-place: tables of {} values for {patches} tokens of {hd} channels",
                self.sin.len()
            );
        }
        let data = match storage {
            CpuStorage::F32(data) => &mut data[start..end],
            _ => candle_core::bail!("rotary-in-place: expected f32"),
        };
        data.par_chunks_mut(three_d)
            .enumerate()
            .filter(|(row, _)| row % l >= self.prefix)
            .for_each(|(row, token)| {
                let t = row % l - self.prefix;
                let (sin, cos) = (
                    &self.sin[t * hd..(t + 1) * hd],
                    &self.cos[t * hd..(t + 1) * hd],
                );
                // q and k: the first 2·D channels, head after head.
                for head in token[..2 * d].chunks_exact_mut(hd) {
                    rotate(head, sin, cos);
                }
            });
        Ok(())
    }
}

/// One head's channel pairs, rotated as candle's composite did it (`x·cos + rot(x)·sin` with
/// `rot(x₀, x₁) = (−x₁, x₀)`), in the same f32 operations.
#[inline]
fn rotate(head: &mut [f32], sin: &[f32], cos: &[f32]) {
    for ((pair, s), c) in head
        .chunks_exact_mut(2)
        .zip(sin.chunks_exact(2))
        .zip(cos.chunks_exact(2))
    {
        let (x0, x1) = (pair[0], pair[1]);
        pair[0] = x0 * c[0] + (-x1) * s[0];
        pair[1] = x1 * c[1] + x0 * s[1];
    }
}

/// SwiGLU's gate over a `(…, 2·H)` tensor holding `[g | x]` (timm's `fc1_g` and `fc1_x` outputs
/// side by side): `(…, H)` of `silu(g) · x`.
pub struct SwiGluGate {
    pub hidden: usize,
}

impl CustomOp1 for SwiGluGate {
    fn name(&self) -> &'static str {
        "swiglu-gate"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let both = contiguous(s, l, "swiglu-gate")?;
        let h = self.hidden;
        let mut dims = l.dims().to_vec();
        match dims.last_mut() {
            Some(last) if *last == 2 * h && h > 0 => *last = h,
            _ => candle_core::bail!("swiglu-gate: {:?} does not end in 2 × {h}", l.dims()),
        }
        let mut out = vec![0f32; both.len() / 2];
        out.par_chunks_mut(h)
            .zip(both.par_chunks(2 * h))
            .for_each(|(out, both)| {
                let (g, x) = both.split_at(h);
                out.copy_from_slice(g);
                silu(out);
                out.iter_mut().zip(x).for_each(|(o, x)| *o *= x);
            });
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::*;

    #[test]
    fn the_gate_is_silu_of_the_first_half_times_the_second() {
        let both = Tensor::arange(-12f32, 12., &Device::Cpu)
            .unwrap()
            .affine(0.25, 0.0)
            .unwrap()
            .reshape((2, 12))
            .unwrap();
        let ours = both.apply_op1_no_bwd(&SwiGluGate { hidden: 6 }).unwrap();
        let reference = (both.narrow(1, 0, 6).unwrap().silu().unwrap()
            * both.narrow(1, 6, 6).unwrap())
        .unwrap();
        let d = (ours - reference)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(d < 1e-6, "{d}");
        let odd = Tensor::zeros((2, 7), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(odd.apply_op1_no_bwd(&SwiGluGate { hidden: 3 }).is_err());
    }

    #[test]
    fn rotary_turns_q_and_k_pairs_of_patch_tokens_only() {
        // 1 image, a prefix token and 2 patches, 2 heads of 2 channels: D = 4, 3·D = 12.
        let qkv: Vec<f32> = (0..36).map(|i| i as f32 + 1.0).collect();
        let t = Tensor::from_vec(qkv.clone(), (1, 3, 12), &Device::Cpu).unwrap();
        let (sin, cos) = ([0.5f32, 0.5, 1.0, 1.0], [2.0f32, 2.0, 0.0, 0.0]);
        t.inplace_op1(&RotaryInPlace {
            sin: &sin,
            cos: &cos,
            heads: 2,
            prefix: 1,
        })
        .unwrap();
        let out = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(out[..12], qkv[..12], "the prefix token is untouched");
        // Token 1 (patch 0: sin 0.5, cos 2): pair (13, 14) -> (13·2 − 14·0.5, 14·2 + 13·0.5).
        assert_eq!(out[12..14], [19.0, 34.5]);
        // Token 2 (patch 1: sin 1, cos 0): k's second head, pair (31, 32) -> (−32, 31).
        assert_eq!(out[30..32], [-32.0, 31.0]);
        assert_eq!(out[32..36], qkv[32..36], "v is untouched");
        let short = RotaryInPlace {
            sin: &sin[..2],
            cos: &cos,
            heads: 2,
            prefix: 1,
        };
        assert!(t.inplace_op1(&short).is_err());
    }
}
