//! The pieces of a frozen tower that still passes gradients: to its input (CoOp's context
//! vectors) or to low-rank updates added to its attention projections (CLIP-LoRA).
//!
//! The linear layers are one 2-D product over all positions whose backward forms only the input
//! gradient `g W` ([`FrozenMatmul`]; candle's matmul backward also forms the weight gradient
//! `xᵀ g`, a third of a step's arithmetic that nobody reads when `W` is a constant). Layer norms,
//! softmax and quick-GELU are the fused ops of [`super::fused`], which have a backward where
//! candle's own fused ops have none.
//!
//! At [`Precision::Bf16`] both products of a frozen layer, `x Wᵀ` forward and `g W` backward,
//! round their operands to bfloat16 and sum in f32 ([`crate::kernels::bf16`]), as a step under
//! `torch.autocast` multiplies (the CLIP-LoRA reference trains under float16 autocast); the
//! low-rank updates, attention's two products and every other op stay f32.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};

use super::fused::{FrozenLayerNorm, QuickGelu, Softmax};
use super::{activate, Block, Linear};
use crate::clip::error::Result;
use crate::clip::load::config::Activation;
use crate::clip::Precision;
use crate::kernels::bf16::PackedWeight;
use crate::kernels::ops::{BiasAct, PackedLinear};

/// A frozen weight `W` (`out × in`) packed twice for bfloat16 products: as itself for the
/// forward `x Wᵀ`, and transposed for the input gradient `g W`. Packing costs one pass over the
/// weight at load time; both copies together take the f32 weight's memory again.
#[derive(Clone)]
pub(super) struct Bf16Weights {
    forward: Arc<PackedWeight>,
    backward: Arc<PackedWeight>,
}

impl Bf16Weights {
    fn pack(weight: &Tensor) -> Result<Self> {
        let (n, k) = weight.dims2()?;
        let w = weight.flatten_all()?.to_vec1::<f32>()?;
        let wt = weight.t()?.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Bf16Weights {
            forward: Arc::new(PackedWeight::pack(&w, n, k)),
            backward: Arc::new(PackedWeight::pack(&wt, k, n)),
        })
    }
}

impl Linear {
    /// This frozen layer multiplying at `precision` (bfloat16 packs its weight, here, once).
    pub(super) fn freeze_at(&mut self, precision: Precision) -> Result<()> {
        self.bf16 = match precision {
            Precision::F32 => None,
            Precision::Bf16 => Some(Bf16Weights::pack(&self.weight)?),
        };
        Ok(())
    }
}

impl Block {
    /// Every linear layer of this frozen block at `precision`.
    pub(super) fn freeze_at(&mut self, precision: Precision) -> Result<()> {
        for l in [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.out,
            &mut self.fc1,
            &mut self.fc2,
        ] {
            l.freeze_at(precision)?;
        }
        Ok(())
    }
}

/// `x Wᵀ (+ b)` for a frozen `W` (`out × in`, contiguous f32 on the CPU) and bias. The backward
/// returns the input gradient `g W` only; `W` and `b` get none, being constants. The bias is
/// the f32 product's starting value, which saves a pass and an output-sized allocation per
/// layer. With `bf16` both products run on the packed bfloat16 weights (whose kernel writes its
/// output, so the bias is added after, rows in parallel).
struct FrozenMatmul {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    bf16: Option<Bf16Weights>,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = crate::kernels::ops::contiguous(xs, xl, "frozen-matmul")?;
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = self.weight.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-matmul: input has {k} columns, the weight {k2}");
        }
        let bias = self.bias.as_deref();
        if let Some(b) = bias.filter(|b| b.len() != n) {
            candle_core::bail!("frozen-matmul: bias of {} for {n} outputs", b.len());
        }
        if let Some(p) = &self.bf16 {
            let mut out = p.forward.abt(x, m);
            crate::kernels::ops::bias_act_rows(&mut out, n, bias, None);
            return Ok((CpuStorage::F32(out), Shape::from((m, n))));
        }
        let (storage, wl) = self.weight.storage_and_layout();
        let w = match &*storage {
            Storage::Cpu(s) => crate::kernels::ops::contiguous(s, wl, "frozen-matmul")?,
            _ => candle_core::bail!("frozen-matmul: the weight must be on the CPU"),
        };
        let mut out = match bias {
            Some(b) => b.repeat(m),
            None => vec![0f32; m * n],
        };
        crate::kernels::matmul::gemm(x, false, w, true, &mut out, m, k, n, bias.is_some());
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(match &self.bf16 {
            // The gradient's own graph is not needed: no second derivative is taken.
            Some(p) => grad.contiguous()?.apply_op1_no_bwd(&PackedLinear {
                weight: p.backward.as_ref(),
                epilogue: &BiasAct::default(),
            })?,
            None => grad.matmul(&self.weight)?,
        }))
    }
}

/// `x Wᵀ + b` as one 2-D product over every leading dimension.
pub(super) fn linear2d(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let in_dim = dims[dims.len() - 1];
    let rows = x.elem_count() / in_dim.max(1);
    let x = x.reshape((rows, in_dim))?.contiguous()?;
    let y = if x.device().is_cpu() && l.weight.is_contiguous() && x.dtype() == DType::F32 {
        let bias = match &l.bias {
            Some(b) => Some(b.flatten_all()?.to_vec1::<f32>()?),
            None => None,
        };
        x.apply_op1(FrozenMatmul {
            weight: l.weight.clone(),
            bias,
            bf16: l.bf16.clone(),
        })?
    } else {
        let y = x.matmul(&l.weight.t()?)?;
        match &l.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        }
    };
    let mut out = dims;
    if let Some(last) = out.last_mut() {
        *last = l.weight.dim(0)?;
    }
    Ok(y.reshape(out)?)
}

/// One of an attention layer's four projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Projection {
    Q,
    K,
    V,
    Out,
}

/// What is added to a projection's output besides `x Wᵀ + b`: nothing for a frozen tower, a
/// low-rank update for CLIP-LoRA. `layer` is the block's index in its tower.
pub(super) trait ProjectionDelta {
    fn delta(&self, layer: usize, p: Projection, x: &Tensor) -> Result<Option<Tensor>>;
}

/// The frozen tower as it is.
pub(super) struct NoDelta;

impl ProjectionDelta for NoDelta {
    fn delta(&self, _: usize, _: Projection, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

fn project(
    l: &Linear,
    x: &Tensor,
    (layer, p): (usize, Projection),
    delta: &dyn ProjectionDelta,
) -> Result<Tensor> {
    let y = linear2d(l, x)?;
    Ok(match delta.delta(layer, p, x)? {
        Some(d) => (y + d)?,
        None => y,
    })
}

/// [`Block::forward`] with [`linear2d`] layers and the fused ops; `causal` masks attention as
/// CLIP's text tower does.
pub(super) fn block_forward(
    block: &Block,
    norms: &[FrozenLayerNorm; 2],
    x: &Tensor,
    causal: bool,
    (layer, delta): (usize, &dyn ProjectionDelta),
) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    let (h, hd) = (block.heads, d / block.heads);
    let y = norms[0].forward(x)?;
    let split = |t: Tensor| -> Result<Tensor> {
        Ok(t.reshape((b, l, h, hd))?.transpose(1, 2)?.contiguous()?)
    };
    let at = |p| (layer, p);
    let q = (split(project(&block.q, &y, at(Projection::Q), delta)?)? * (hd as f64).powf(-0.5))?;
    let k = split(project(&block.k, &y, at(Projection::K), delta)?)?;
    let v = split(project(&block.v, &y, at(Projection::V), delta)?)?;
    let scores = q.matmul(&k.t()?.contiguous()?)?;
    let attn = Softmax { causal }.forward(&scores)?;
    let attended = attn
        .matmul(&v)?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, l, d))?;
    let x = (x + project(&block.out, &attended, at(Projection::Out), delta)?)?;
    let y = norms[1].forward(&x)?;
    let hidden = linear2d(&block.fc1, &y)?;
    let hidden = match block.act {
        Activation::QuickGelu => QuickGelu::forward(&hidden)?,
        other => activate(&hidden, other)?,
    };
    Ok((x + linear2d(&block.fc2, &hidden)?)?)
}

/// Blocks `range` of a frozen tower (`blocks[i]` with its norms `norms[i]`), each through
/// [`block_forward`] with `delta` and its own index: the part of a tower below the first adapted
/// block runs once with [`NoDelta`], the rest at every step.
pub(super) fn blocks_forward(
    (blocks, norms): (&[Block], &[[FrozenLayerNorm; 2]]),
    x: &Tensor,
    range: std::ops::Range<usize>,
    causal: bool,
    delta: &dyn ProjectionDelta,
) -> Result<Tensor> {
    let mut x = x.clone();
    for i in range {
        x = block_forward(&blocks[i], &norms[i], &x, causal, (i, delta))?;
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::bf16::round_bf16;
    use candle_core::{Device, Var};

    /// `a (m × k) · b (k × n)` in f64 of the bfloat16-rounded operands.
    fn rounded_product(a: &[f32], b: &[f32], (m, k, n): (usize, usize, usize)) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|p| round_bf16(a[i * k + p]) as f64 * round_bf16(b[p * n + j]) as f64)
                    .sum();
            }
        }
        out
    }

    fn worst(got: &[f32], want: &[f64]) -> f64 {
        let scale = want.iter().fold(0f64, |s, v| s.max(v.abs()));
        let diff = (got.iter().zip(want)).fold(0f64, |s, (g, w)| s.max((*g as f64 - w).abs()));
        diff / scale
    }

    /// At bfloat16 the forward is `round(x) round(W)ᵀ + b` and the input gradient
    /// `round(g) round(W)`, both summed in f32: shapes past a kernel tile (13 rows, 37 outputs,
    /// 21 inputs, an odd count).
    #[test]
    fn bf16_products_round_both_operands_forward_and_backward() {
        let (m, k, n) = (13, 21, 37);
        let val = |i: usize, s: f32| (i as f32 * s).sin() * 1.3 + 0.01 * i as f32;
        let w: Vec<f32> = (0..n * k).map(|i| val(i, 0.37)).collect();
        let b: Vec<f32> = (0..n).map(|i| val(i, 1.1)).collect();
        let x: Vec<f32> = (0..m * k).map(|i| val(i, 0.61)).collect();
        let g: Vec<f32> = (0..m * n).map(|i| val(i, 0.23)).collect();
        let dev = Device::Cpu;
        let mut layer = Linear {
            weight: Tensor::from_vec(w.clone(), (n, k), &dev).unwrap(),
            bias: Some(Tensor::from_vec(b.clone(), n, &dev).unwrap()),
            bf16: None,
        };
        layer.freeze_at(Precision::Bf16).unwrap();
        let xv = Var::from_tensor(&Tensor::from_vec(x.clone(), (m, k), &dev).unwrap()).unwrap();
        let y = linear2d(&layer, xv.as_tensor()).unwrap();
        let gt = Tensor::from_vec(g.clone(), (m, n), &dev).unwrap();
        let grads = (y.clone() * &gt)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let dx = grads.get(xv.as_tensor()).unwrap();

        let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let mut want_y = rounded_product(&x, &wt, (m, k, n));
        want_y
            .iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v += b[i % n] as f64);
        let want_dx = rounded_product(&g, &w, (m, n, k));
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dx = dx.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(worst(&y, &want_y) < 1e-6, "forward {}", worst(&y, &want_y));
        assert!(
            worst(&dx, &want_dx) < 1e-6,
            "backward {}",
            worst(&dx, &want_dx)
        );
        // Not the f32 products: those differ from the rounded ones by ~1e-3.
        layer.freeze_at(Precision::F32).unwrap();
        let y32 = linear2d(&layer, xv.as_tensor()).unwrap();
        let y32 = y32.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(worst(&y32, &want_y) > 1e-4, "f32 {}", worst(&y32, &want_y));
    }
}
