//! The pre-LayerNorm transformer shared by the image and text towers, with the parameter names
//! of `transformers`' `CLIPEncoder` (`layers.N.self_attn.q_proj`, `layer_norm1`, `mlp.fc1`, ...).
//!
//! Reference: transformers/models/clip/modeling_clip.py, `CLIPEncoderLayer`:
//! `x = x + attn(layer_norm1(x)); x = x + mlp(layer_norm2(x))`.

use std::sync::Arc;

use candle_core::{Tensor, D};

use crate::clip::error::Result;
use crate::clip::load::checkpoint::Scope;
use crate::clip::load::config::Activation;
use crate::clip::precision::Precision;
use crate::kernels::bf16::PackedWeight;
use crate::kernels::matmul::dot_rows;
use crate::kernels::ops::{bias_act, BiasAct, FewRowMatmul, FusedAttention, PackedMatmul};
use crate::kernels::panels::{worth_packing, PanelWeight};

/// `y = x Wᵀ + b`, with an optional activation fused into the bias pass.
pub struct Linear {
    weight: Weight,
    epilogue: BiasAct,
}

/// How a layer holds its weight.
enum Weight {
    /// `(out, in)` as loaded: off the CPU, and layers narrower than a panel.
    Loaded(Tensor),
    /// f32 on the CPU, packed once into 64-column panels for the broadcast tiles (the loaded
    /// tensor is dropped: the panels are the weight).
    Panels(Arc<PanelWeight>),
    /// bfloat16 on the CPU, packed once; the loaded f32 tensor is kept for
    /// [`Linear::weight`].
    Bf16 {
        loaded: Tensor,
        packed: Arc<PackedWeight>,
    },
}

/// `f` of a CPU tensor's f32 values, read in place: a copy of every weight at load was a
/// second pass over the whole model's memory, every page of it faulted in and zeroed first.
fn with_values<T>(t: &Tensor, f: impl FnOnce(&[f32]) -> T) -> Result<T> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => {
            Ok(f(crate::kernels::ops::contiguous(s, layout, "linear")?))
        }
        _ => Err(
            candle_core::Error::Msg("linear: packing needs the weight on the CPU".into()).into(),
        ),
    }
}

impl Linear {
    /// Reads `weight` (and `bias`), at the precision of the checkpoint's model.
    pub fn load(vb: &Scope, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get("weight", &[out_dim, in_dim])?;
        let bias = match bias {
            true => Some(vb.get("bias", &[out_dim])?.to_vec1::<f32>()?),
            false => None,
        };
        Self::new(weight, bias, None).at(vb.precision())
    }

    /// A layer holding `weight` as loaded; [`Linear::at`] packs it for the CPU's kernels.
    pub fn new(weight: Tensor, bias: Option<Vec<f32>>, act: Option<Activation>) -> Self {
        Linear {
            weight: Weight::Loaded(weight),
            epilogue: BiasAct { bias, act },
        }
    }

    /// This layer multiplying at `precision` on the CPU: f32 packs the weight into panels where
    /// [`worth_packing`] says (otherwise it keeps the dot tiles and the blocked GEMM), bfloat16
    /// packs it rounded. Off the CPU the weight stays as loaded.
    pub fn at(mut self, precision: Precision) -> Result<Self> {
        let loaded = self.weight()?;
        if !loaded.device().is_cpu() {
            self.weight = Weight::Loaded(loaded);
            return Ok(self);
        }
        let (n, k) = loaded.dims2()?;
        self.weight = match precision {
            Precision::F32 if worth_packing(n) => {
                let panels = with_values(&loaded, |w| PanelWeight::pack(w, n, k))?;
                Weight::Panels(Arc::new(panels))
            }
            Precision::F32 => Weight::Loaded(loaded),
            Precision::Bf16 => Weight::Bf16 {
                packed: Arc::new(with_values(&loaded, |w| PackedWeight::pack(w, n, k))?),
                loaded,
            },
        };
        Ok(self)
    }

    /// `(out, in)`, f32 (unpacked from the panels when the layer holds them).
    pub fn weight(&self) -> Result<Tensor> {
        Ok(match &self.weight {
            Weight::Loaded(w) | Weight::Bf16 { loaded: w, .. } => w.clone(),
            Weight::Panels(p) => {
                Tensor::from_vec(p.unpack(), (p.n(), p.k()), &candle_core::Device::Cpu)?
            }
        })
    }

    /// Output columns.
    fn out_dim(&self) -> Result<usize> {
        Ok(match &self.weight {
            Weight::Loaded(w) | Weight::Bf16 { loaded: w, .. } => w.dim(0)?,
            Weight::Panels(p) => p.n(),
        })
    }

    pub fn bias(&self) -> Option<&[f32]> {
        self.epilogue.bias.as_deref()
    }

    /// # Shapes
    /// `(.., in) -> (.., out)`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // One 2-D GEMM over all leading dimensions: candle's broadcast batched matmul splits
        // the same work into one small GEMM per batch element.
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim.max(1);
        let x = x.reshape((rows, in_dim))?;
        let cpu = x.device().is_cpu();
        let y = match &self.weight {
            Weight::Panels(p) if cpu => {
                x.contiguous()?.apply_op1_no_bwd(&PackedMatmul(p.clone()))?
            }
            Weight::Bf16 { packed, .. } if cpu => x
                .contiguous()?
                .apply_op1_no_bwd(&PackedMatmul(packed.clone()))?,
            // Up to a few hundred rows the dot tiles beat the blocked GEMM, which packs the
            // transposed weight on every call.
            Weight::Loaded(w) if cpu && rows <= dot_rows() => {
                x.contiguous()?.apply_op2_no_bwd(w, &FewRowMatmul)?
            }
            Weight::Loaded(w) | Weight::Bf16 { loaded: w, .. } => x.matmul(&w.t()?)?,
            Weight::Panels(_) => Err(candle_core::Error::Msg(format!(
                "a weight packed for the CPU met an input on {:?}",
                x.device()
            )))?,
        };
        let y = bias_act(y, &self.epilogue)?;
        let mut out_dims = dims;
        if let Some(last) = out_dims.last_mut() {
            *last = self.out_dim()?;
        }
        Ok(y.reshape(out_dims)?)
    }
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub fn load(vb: &Scope, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get("weight", &[dim])?,
            bias: vb.get("bias", &[dim])?,
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // The fused kernel is parallel and exact in f32; it has no backward pass, which is
        // fine for frozen encoders (see docs/tensor-library.md for trained paths).
        Ok(candle_nn::ops::layer_norm(
            &x.contiguous()?,
            &self.weight,
            &self.bias,
            self.eps,
        )?)
    }
}

/// Multi-head self-attention; q, k and v are fused into one projection at load time.
pub struct Attention {
    qkv: Linear,
    out_proj: Linear,
    kernel: FusedAttention,
}

impl Attention {
    pub fn load(vb: &Scope, dim: usize, heads: usize, causal: bool) -> Result<Self> {
        let mut weights = Vec::with_capacity(3);
        let mut biases = Vec::with_capacity(3 * dim);
        for name in ["q_proj", "k_proj", "v_proj"] {
            weights.push(vb.pp(name).get("weight", &[dim, dim])?);
            biases.extend(vb.pp(name).get("bias", &[dim])?.to_vec1::<f32>()?);
        }
        Ok(Attention {
            qkv: Linear::new(Tensor::cat(&weights, 0)?, Some(biases), None).at(vb.precision())?,
            out_proj: Linear::load(&vb.pp("out_proj"), dim, dim, true)?,
            kernel: FusedAttention { heads, causal },
        })
    }

    /// # Shapes
    /// `(B, L, D) -> (B, L, D)`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?; // (B, L, 3D)
        let attended = qkv.apply_op1_no_bwd(&self.kernel)?; // (B, L, D)
        self.out_proj.forward(&attended)
    }
}

pub struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    pub fn load(vb: &Scope, dim: usize, hidden: usize, act: Activation) -> Result<Self> {
        let fc1 = vb.pp("fc1");
        Ok(Mlp {
            fc1: Linear::new(
                fc1.get("weight", &[hidden, dim])?,
                Some(fc1.get("bias", &[hidden])?.to_vec1::<f32>()?),
                Some(act),
            )
            .at(vb.precision())?,
            fc2: Linear::load(&vb.pp("fc2"), hidden, dim, true)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(x)?)
    }
}

pub struct EncoderLayer {
    layer_norm1: LayerNorm,
    self_attn: Attention,
    layer_norm2: LayerNorm,
    mlp: Mlp,
}

/// The shape of one transformer stack.
pub struct EncoderShape {
    pub width: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub activation: Activation,
    pub eps: f64,
    pub causal: bool,
}

impl EncoderLayer {
    pub fn load(vb: &Scope, s: &EncoderShape) -> Result<Self> {
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::load(&vb.pp("layer_norm1"), s.width, s.eps)?,
            self_attn: Attention::load(&vb.pp("self_attn"), s.width, s.heads, s.causal)?,
            layer_norm2: LayerNorm::load(&vb.pp("layer_norm2"), s.width, s.eps)?,
            mlp: Mlp::load(&vb.pp("mlp"), s.width, s.hidden, s.activation)?,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let residual = x;
        let x = (residual + self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        let residual = &x;
        Ok((residual + self.mlp.forward(&self.layer_norm2.forward(&x)?)?)?)
    }
}

pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn load(vb: &Scope, s: &EncoderShape) -> Result<Self> {
        let layers = (0..s.layers)
            .map(|i| EncoderLayer::load(&vb.pp("layers").pp(i), s))
            .collect::<Result<Vec<_>>>()?;
        Ok(Encoder { layers })
    }

    /// # Shapes
    /// `(B, L, D) -> (B, L, D)`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for layer in &self.layers {
            x = layer.forward(&x)?;
        }
        Ok(x)
    }
}

/// L2-normalises the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
