//! CPU kernels for the inference hot path that candle runs serially or through many small ops:
//! bias + activation fused in place on a matmul's output, and multi-head attention computed
//! straight from the fused QKV projection, parallel over (batch, head).
//!
//! These ops record no backward pass: they serve the frozen encoders only. Trained paths use
//! candle's composite ops (see docs/tensor-library.md).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, InplaceOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{broadcast_block, simd_level, Operands, Out};
use super::vmath::{
    add_assign, bias_gelu_erf, bias_gelu_tanh, bias_quick_gelu, layer_norm_row, softmax_scaled,
};

/// The activation inside each transformer MLP; the checkpoint's config names it
/// (`clip::load::config` reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`: every OpenAI CLIP checkpoint.
    QuickGelu,
    /// The exact, erf-based GELU.
    Gelu,
    /// The tanh approximation of GELU (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
}

/// The f32 elements of a contiguous input of custom op `op`; an error names the op otherwise.
pub(crate) fn contiguous<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle_core::Result<&'a [f32]> {
    let data = storage.as_slice::<f32>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// `x[.., c] = act(x[.., c] + bias[c])`, in place, rows in parallel.
#[derive(Default)]
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
        bias_act_rows(data, cols, self.bias.as_deref(), self.act);
        Ok(())
    }
}

impl BiasAct {
    /// Neither a bias nor an activation: the op changes nothing.
    pub fn is_identity(&self) -> bool {
        self.bias.is_none() && self.act.is_none()
    }

    /// `segment = act(segment + bias[column..])`: part of one row, from output `column` on.
    pub fn apply(&self, segment: &mut [f32], column: usize) {
        let bias = self.bias.as_deref().map(|b| &b[column..]);
        bias_act_row(segment, bias, self.act)
    }
}

/// `row = act(row + bias)`.
fn bias_act_row(row: &mut [f32], bias: Option<&[f32]>, act: Option<Activation>) {
    match act {
        Some(Activation::QuickGelu) => bias_quick_gelu(row, bias),
        Some(Activation::GeluTanh) => bias_gelu_tanh(row, bias),
        Some(Activation::Gelu) => bias_gelu_erf(row, bias),
        None => {
            if let Some(b) = bias {
                add_assign(row, b)
            }
        }
    }
}

/// `row = act(row + bias)` for each row of `cols` values of `data`, rows in parallel.
pub fn bias_act_rows(data: &mut [f32], cols: usize, bias: Option<&[f32]>, act: Option<Activation>) {
    par_rows(data, cols, |_, row| bias_act_row(row, bias, act))
}

/// `f(i, row)` for each row `i` of `n` values of `y`, rows in parallel.
fn par_rows(y: &mut [f32], n: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let n = n.max(1);
    // Tasks of at least ~16k values keep rayon's overhead negligible.
    let rows_per_task = (16384 / n).max(1);
    y.par_chunks_mut(n * rows_per_task)
        .enumerate()
        .for_each(|(t, chunk)| {
            for (i, row) in chunk.chunks_mut(n).enumerate() {
                f(t * rows_per_task + i, row)
            }
        });
}

/// PyTorch's `LayerNorm` over the last dimension (`weight` and `bias` as long), rows in
/// parallel, each through [`layer_norm_row`].
pub struct LayerNormOp<'a> {
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub eps: f32,
}

impl CustomOp1 for LayerNormOp<'_> {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout, "layer-norm")?;
        let cols = layout.dims().last().copied().unwrap_or(1);
        if cols != self.weight.len() || cols != self.bias.len() {
            candle_core::bail!(
                "layer-norm: rows of {cols}, weight of {}, bias of {}",
                self.weight.len(),
                self.bias.len()
            );
        }
        let mut y = vec![0f32; x.len()];
        par_rows(&mut y, cols, |i, row| {
            layer_norm_row(
                &x[i * cols..][..cols],
                row,
                self.weight,
                self.bias,
                self.eps,
            )
        });
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }
}

/// Scaled dot-product attention over `qkv` of shape (B, L, 3·D) laid out as [q | k | v], each
/// split into `heads` heads of D/heads; returns (B, L, D). `causal` masks future positions as
/// the text tower requires.
///
/// One task per (batch element, head): `q · kᵀ` through the broadcast tiles (q read in place,
/// row stride 3·D, against the head's keys transposed), the softmax at the vector width, and
/// `p · v` through the broadcast tiles, written straight into the head's columns of the output.
#[derive(Debug, Clone, Copy)]
pub struct FusedAttention {
    pub heads: usize,
    pub causal: bool,
}

impl FusedAttention {
    /// The same attention for one query per sequence, at `positions[b]` of sequence `b`
    /// (every key it may see still takes part): `(B, L, 3·D) -> (B, 1, D)`. A tower that pools
    /// one position needs no other query in its last layer.
    pub fn at(self, positions: &[usize]) -> PooledAttention<'_> {
        PooledAttention {
            attention: self,
            positions,
        }
    }

    /// The attention of the queries `first(b)..first(b) + queries` of each sequence `b`, into
    /// a fresh `(B, queries, D)` vector.
    fn attend(
        self,
        qkv: &[f32],
        (b, l, d3): (usize, usize, usize),
        queries: usize,
        first: impl Fn(usize) -> usize + Sync,
    ) -> candle_core::Result<Vec<f32>> {
        let d = d3 / 3;
        if d3 % 3 != 0 || d % self.heads != 0 {
            candle_core::bail!(
                "fused-attention: last dim {d3} does not split into 3 x {} heads",
                self.heads
            );
        }
        if b * l * queries == 0 {
            return Ok(Vec::new());
        }
        let hd = d / self.heads;
        let scale = (hd as f32).powf(-0.5);
        let (heads, causal) = (self.heads, self.causal);
        let simd = simd_level();
        // Every value is written by one head's `p · v` below, so the output is not zeroed first
        // (a 77-token batch of 32 zeroed 5 MB per layer: 3 % of the text tower's time).
        let len = b * queries * d;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let dst = Out(out.as_mut_ptr());
        (0..b * heads).into_par_iter().for_each(|bh| {
            let (bi, h) = (bh / heads, bh % heads);
            let q0 = first(bi);
            let sequence = &qkv[bi * l * d3..][..l * d3];
            let mut probs = vec![0f32; queries * l];
            // kᵀ (hd × l), so that the scores go through the broadcast tiles: the dot tiles
            // reduce their lanes after every hd = 64 inputs, and one ViT-B/16 image's attention
            // took 1.3 ms per layer through them against 1.0 this way (Intel Emerald Rapids).
            let mut keys_t = vec![0f32; hd * l];
            for (j, key) in sequence[d + h * hd..].chunks(d3).take(l).enumerate() {
                for (p, &v) in key[..hd].iter().enumerate() {
                    keys_t[p * l + j] = v;
                }
            }
            // SAFETY: `sequence` is this element's l rows of 3·D (its length was checked by the
            // slice); the queries q0.. q0 + queries are among them (the callers check), and q
            // and v of this head are hd columns at row stride 3·D; `keys_t` is hd×l and `probs`
            // queries×l; this task alone writes the columns h·hd.. of batch element bi's rows
            // of `out`; `simd` is available.
            unsafe {
                let scores = Operands {
                    a: sequence[q0 * d3 + h * hd..].as_ptr(),
                    a_rs: d3,
                    a_cs: 1,
                    b: keys_t.as_ptr(),
                    ldb: l,
                    c: Out(probs.as_mut_ptr()),
                    ldc: l,
                    k: hd,
                };
                broadcast_block(simd, scores, (0, queries), (0, l), false);
            }
            for (i, row) in probs.chunks_exact_mut(l).enumerate() {
                let keys = if causal { q0 + i + 1 } else { l };
                let (live, masked) = row.split_at_mut(keys);
                softmax_scaled(live, scale);
                masked.fill(0.0);
            }
            // SAFETY: as above; `probs` is queries×l with row stride l.
            unsafe {
                let values = Operands {
                    a: probs.as_ptr(),
                    a_rs: l,
                    a_cs: 1,
                    b: sequence[2 * d + h * hd..].as_ptr(),
                    ldb: d3,
                    c: dst.add(bi * queries * d + h * hd),
                    ldc: d,
                    k: l,
                };
                broadcast_block(simd, values, (0, queries), (0, hd), false);
            }
        });
        // SAFETY: the tasks above wrote all `len` values: batch element bi's rows × head h's
        // columns for every (bi, h), which cover the b × queries × d output (d = heads · hd).
        unsafe { out.set_len(len) };
        Ok(out)
    }
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
        let out = self.attend(qkv, (b, l, d3), l, |_| 0)?;
        Ok((CpuStorage::F32(out), Shape::from((b, l, d3 / 3))))
    }
}

/// [`FusedAttention`] for one query per sequence (see [`FusedAttention::at`]).
pub struct PooledAttention<'a> {
    attention: FusedAttention,
    positions: &'a [usize],
}

impl CustomOp1 for PooledAttention<'_> {
    fn name(&self) -> &'static str {
        "pooled-attention"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let qkv = contiguous(storage, layout, "pooled-attention")?;
        let (b, l, d3) = layout.shape().dims3()?;
        let p = self.positions;
        if p.len() != b || p.iter().any(|&i| i >= l) {
            candle_core::bail!(
                "pooled-attention: positions {p:?} for {b} sequences of {l} tokens (one each, below {l})"
            );
        }
        let out = self.attention.attend(qkv, (b, l, d3), 1, |bi| p[bi])?;
        Ok((CpuStorage::F32(out), Shape::from((b, 1, d3 / 3))))
    }
}

/// `x · wᵀ` for few rows of `x` (M×K) and a weight `w` in PyTorch's (N×K) layout.
///
/// General GEMM kernels tile the rows in blocks of 16 to 64, so with a handful of rows (one
/// image's 50 tokens, a batch of short prompts) most of their work is padding, and the AVX-512
/// path of the `gemm` crate was measured 2–3× slower here than this: every output is a dot
/// product of two contiguous rows, so each task streams one block of weight rows once and
/// reuses it for all M inputs (AVX-512 or AVX2 tiles, see `kernels::matmul`). Routed by
/// `kernels::matmul::gemm`: with AVX-512, up to `DOT_ROWS` rows in blocks of `FEW_ROWS`.
pub struct FewRowMatmul;

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
            CpuStorage::F32(super::matmul::abt(x, w, m, k, n)),
            Shape::from((m, n)),
        ))
    }
}

/// A weight packed once for `x · wᵀ`: the bfloat16 panels of `--precision bf16`
/// ([`super::bf16::PackedWeight`]) or the f32 panels ([`super::panels::PanelWeight`]).
pub trait PackedAbt: Send + Sync + 'static {
    /// The op's name, for candle's errors.
    const NAME: &'static str;
    fn n(&self) -> usize;
    fn k(&self) -> usize;
    /// `y (m × n) = x · wᵀ`, `x` `m × k` row-major, `y` overwritten.
    fn abt_into(&self, x: &[f32], m: usize, y: &mut [f32]);
    /// `act(x · wᵀ + bias) (+ residual)` (the bare product without an epilogue) into a fresh
    /// `m × n` vector: by default the product, then a pass over its rows.
    fn linear(
        &self,
        x: &[f32],
        m: usize,
        epilogue: Option<(&BiasAct, Option<&[f32]>)>,
    ) -> Vec<f32> {
        let n = self.n();
        let mut y = vec![0f32; m * n];
        self.abt_into(x, m, &mut y);
        if let Some((e, residual)) = epilogue {
            epilogue_rows(&mut y, n, e, residual);
        }
        y
    }
}

/// `row = act(row + bias) (+ residual row)` for each row of `n` values of `y`, rows in parallel.
fn epilogue_rows(y: &mut [f32], n: usize, epilogue: &BiasAct, residual: Option<&[f32]>) {
    let apply = layer_epilogue(n, epilogue, residual);
    par_rows(y, n, |i, row| apply(row, i, 0))
}

/// Both packed kinds have these as inherent methods; the tokens after the name are further
/// items of the impl.
macro_rules! packed_abt {
    ($t:ty, $name:literal $(, $($extra:tt)*)?) => {
        impl PackedAbt for $t {
            const NAME: &'static str = $name;
            fn n(&self) -> usize {
                <$t>::n(self)
            }
            fn k(&self) -> usize {
                <$t>::k(self)
            }
            fn abt_into(&self, x: &[f32], m: usize, y: &mut [f32]) {
                <$t>::abt_into(self, x, m, y)
            }
            $($($extra)*)?
        }
    };
}
packed_abt!(super::bf16::PackedWeight, "bf16-matmul");
// The panels apply the epilogue as each panel of the output is written, into a vector the
// kernel fills once.
packed_abt!(
    super::panels::PanelWeight,
    "panel-matmul",
    fn linear(
        &self,
        x: &[f32],
        m: usize,
        epilogue: Option<(&BiasAct, Option<&[f32]>)>,
    ) -> Vec<f32> {
        match epilogue {
            Some((e, residual)) => self.abt_then(x, m, &layer_epilogue(self.n(), e, residual)),
            None => self.abt_then(x, m, &|_, _, _| {}),
        }
    }
);

/// A layer's epilogue on a segment of output row `row` (`n` outputs per row) from output
/// `column` on: a whole row, or one panel's part of it.
fn layer_epilogue<'a>(
    n: usize,
    epilogue: &'a BiasAct,
    residual: Option<&'a [f32]>,
) -> impl Fn(&mut [f32], usize, usize) + Sync + 'a {
    move |segment, row, column| {
        epilogue.apply(segment, column);
        if let Some(r) = residual {
            add_assign(segment, &r[row * n + column..][..segment.len()]);
        }
    }
}

/// A linear layer's `act(x · wᵀ + bias)` with the weight packed once, the bias and activation
/// applied by the product's kernel where it can (`x` f32, `(m, k)`); with an identity epilogue,
/// the bare product. As a two-input op, the second input (`(m, n)`) is a residual added to the
/// result the same way.
pub struct PackedLinear<'a, W> {
    pub weight: &'a W,
    pub epilogue: &'a BiasAct,
}

impl<W: PackedAbt> CustomOp1 for PackedLinear<'_, W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let epilogue = (!self.epilogue.is_identity()).then_some((self.epilogue, None));
        packed_forward(self.weight, storage, layout, epilogue)
    }
}

impl<W: PackedAbt> CustomOp2 for PackedLinear<'_, W> {
    fn name(&self) -> &'static str {
        W::NAME
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let residual = contiguous(rs, rl, W::NAME)?;
        let want = (xl.shape().dims2()?.0, self.weight.n());
        if rl.shape().dims2()? != want {
            candle_core::bail!(
                "{}: the residual is {:?}, the output {want:?}",
                W::NAME,
                rl.dims()
            );
        }
        packed_forward(self.weight, xs, xl, Some((self.epilogue, Some(residual))))
    }
}

fn packed_forward<W: PackedAbt>(
    w: &W,
    storage: &CpuStorage,
    layout: &Layout,
    epilogue: Option<(&BiasAct, Option<&[f32]>)>,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = contiguous(storage, layout, W::NAME)?;
    let (m, k) = layout.shape().dims2()?;
    if k != w.k() {
        candle_core::bail!("{}: x has {k} columns, the weight {}", W::NAME, w.k());
    }
    Ok((
        CpuStorage::F32(w.linear(x, m, epilogue)),
        Shape::from((m, w.n())),
    ))
}

/// Applies [`BiasAct`] to a fresh (uniquely owned) tensor and returns it.
pub fn bias_act(x: Tensor, op: &BiasAct) -> candle_core::Result<Tensor> {
    if op.is_identity() {
        return Ok(x);
    }
    let x = x.contiguous()?;
    x.inplace_op1(op)?;
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn one_query_per_sequence_is_that_row_of_the_whole_attention() {
        // Three sequences of 70 tokens (more than a row tile), four heads of 16; the pooled
        // positions at the start, inside and at the end, causal and not.
        let (b, l, heads, hd) = (3, 70, 4, 16);
        let d3 = 3 * heads * hd;
        let values = crate::methods::linalg::seeded_rng(7).uniform_vec(b * l * d3, 1.0);
        let qkv = Tensor::from_vec(values, (b, l, d3), &Device::Cpu).unwrap();
        let positions = [0, 33, l - 1];
        for causal in [false, true] {
            let attention = FusedAttention { heads, causal };
            let all = qkv.apply_op1_no_bwd(&attention).unwrap();
            let pooled = qkv.apply_op1_no_bwd(&attention.at(&positions)).unwrap();
            assert_eq!(pooled.dims(), &[b, 1, heads * hd]);
            for (i, &p) in positions.iter().enumerate() {
                assert_eq!(
                    pooled.i((i, 0)).unwrap().to_vec1::<f32>().unwrap(),
                    all.i((i, p)).unwrap().to_vec1::<f32>().unwrap(),
                    "sequence {i}, position {p}, causal {causal}"
                );
            }
        }
    }

    #[test]
    fn sequences_without_tokens_attend_to_nothing() {
        let qkv = Tensor::zeros((2, 0, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
        let attention = FusedAttention {
            heads: 2,
            causal: true,
        };
        let out = qkv.apply_op1_no_bwd(&attention).unwrap();
        assert_eq!(out.dims(), &[2, 0, 4]);
    }

    #[test]
    fn a_pooled_position_outside_the_sequence_is_an_error() {
        let qkv = Tensor::zeros((2, 5, 12), candle_core::DType::F32, &Device::Cpu).unwrap();
        let attention = FusedAttention {
            heads: 2,
            causal: false,
        };
        for positions in [&[0, 5][..], &[0][..]] {
            let err = qkv
                .apply_op1_no_bwd(&attention.at(positions))
                .unwrap_err()
                .to_string();
            assert!(err.contains("positions"), "{err}");
        }
    }
}
