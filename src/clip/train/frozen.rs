//! The pieces of a frozen tower that still passes gradients: to its input (CoOp's context
//! vectors) or to low-rank updates added to its attention projections (CLIP-LoRA).
//!
//! The linear layers are one 2-D product over all positions whose backward forms only the input
//! gradient `g W` ([`FrozenMatmul`]; candle's matmul backward also forms the weight gradient
//! `xᵀ g`, a third of a step's arithmetic that nobody reads when `W` is a constant). Layer norms,
//! softmax and quick-GELU are the fused ops of [`super::fused`], which have a backward where
//! candle's own fused ops have none.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Storage, Tensor};

use super::fused::{FrozenLayerNorm, QuickGelu, Softmax};
use super::{activate, Block, Linear};
use crate::clip::error::Result;
use crate::clip::load::config::Activation;

/// `x Wᵀ (+ b)` for a frozen `W` (`out × in`, contiguous f32 on the CPU) and bias. The backward
/// returns the input gradient `g W` only; `W` and `b` get none, being constants. The bias is
/// the product's starting value, which saves a pass and an output-sized allocation per layer.
struct FrozenMatmul {
    weight: Tensor,
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for FrozenMatmul {
    fn name(&self) -> &'static str {
        "frozen-matmul"
    }

    fn cpu_fwd(&self, xs: &CpuStorage, xl: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = xs.as_slice::<f32>()?;
        let Some((start, end)) = xl.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: the input must be contiguous");
        };
        let (m, k) = xl.shape().dims2()?;
        let (n, k2) = self.weight.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-matmul: input has {k} columns, the weight {k2}");
        }
        let (storage, wl) = self.weight.storage_and_layout();
        let w = match &*storage {
            Storage::Cpu(s) => s.as_slice::<f32>()?,
            _ => candle_core::bail!("frozen-matmul: the weight must be on the CPU"),
        };
        let Some((ws, we)) = wl.contiguous_offsets() else {
            candle_core::bail!("frozen-matmul: the weight must be contiguous");
        };
        let mut out = match &self.bias {
            Some(b) if b.len() == n => b.repeat(m),
            Some(b) => candle_core::bail!("frozen-matmul: bias of {} for {n} outputs", b.len()),
            None => vec![0f32; m * n],
        };
        crate::kernels::matmul::gemm(
            &x[start..end],
            false,
            &w[ws..we],
            true,
            &mut out,
            m,
            k,
            n,
            self.bias.is_some(),
        );
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(grad.matmul(&self.weight)?))
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
