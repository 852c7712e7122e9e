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
use crate::kernels::ops::{
    bias_act, BiasAct, FewRowMatmul, FusedAttention, LayerNormOp, PackedAbt, PackedLinear,
};
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
        let (x, out_dims) = self.flatten(x)?;
        let rows = x.dim(0)?;
        let cpu = x.device().is_cpu();
        let y = match &self.weight {
            Weight::Panels(p) if cpu => self.packed(&x, p.as_ref(), None)?,
            Weight::Bf16 { packed, .. } if cpu => self.packed(&x, packed.as_ref(), None)?,
            // Up to a few hundred rows the dot tiles beat the blocked GEMM, which packs the
            // transposed weight on every call.
            Weight::Loaded(w) if cpu && rows <= dot_rows() => bias_act(
                x.contiguous()?.apply_op2_no_bwd(w, &FewRowMatmul)?,
                &self.epilogue,
            )?,
            Weight::Loaded(w) | Weight::Bf16 { loaded: w, .. } => {
                bias_act(x.matmul(&w.t()?)?, &self.epilogue)?
            }
            Weight::Panels(_) => Err(candle_core::Error::Msg(format!(
                "a weight packed for the CPU met an input on {:?}",
                x.device()
            )))?,
        };
        Ok(y.reshape(out_dims)?)
    }

    /// `forward(x) + residual`, the residual (`(.., out)`) added by a packed weight's kernel
    /// as it writes the output, where the layer has one.
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let (flat, out_dims) = self.flatten(x)?;
        if residual.dims() != out_dims.as_slice() || !x.device().is_cpu() {
            return Ok((self.forward(x)? + residual)?);
        }
        let r = residual.reshape((flat.dim(0)?, self.out_dim()?))?;
        let y = match &self.weight {
            Weight::Panels(p) => self.packed(&flat, p.as_ref(), Some(&r))?,
            Weight::Bf16 { packed, .. } => self.packed(&flat, packed.as_ref(), Some(&r))?,
            Weight::Loaded(_) => return Ok((self.forward(x)? + residual)?),
        };
        Ok(y.reshape(out_dims)?)
    }

    /// `x` as one 2-D matrix over all its leading dimensions, and the output's dimensions: one
    /// GEMM, where candle's broadcast batched matmul splits the same work into one small GEMM
    /// per batch element.
    fn flatten(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let mut dims = x.dims().to_vec();
        let in_dim = dims.last().copied().unwrap_or(1);
        let rows = x.elem_count() / in_dim.max(1);
        if let Some(last) = dims.last_mut() {
            *last = self.out_dim()?;
        }
        Ok((x.reshape((rows, in_dim))?, dims))
    }

    /// `act(x · wᵀ + b) (+ residual)` through a packed weight's kernel, `x` 2-D.
    fn packed<W: PackedAbt>(
        &self,
        x: &Tensor,
        weight: &W,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let op = PackedLinear {
            weight,
            epilogue: &self.epilogue,
        };
        let x = x.contiguous()?;
        Ok(match residual {
            Some(r) => x.apply_op2_no_bwd(&r.contiguous()?, &op)?,
            None => x.apply_op1_no_bwd(&op)?,
        })
    }
}

pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    /// The same values, read once for the CPU kernel.
    cpu_weight: Vec<f32>,
    cpu_bias: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    pub fn load(vb: &Scope, dim: usize, eps: f64) -> Result<Self> {
        let (weight, bias) = (vb.get("weight", &[dim])?, vb.get("bias", &[dim])?);
        Ok(LayerNorm {
            cpu_weight: weight.to_vec1::<f32>()?,
            cpu_bias: bias.to_vec1::<f32>()?,
            weight,
            bias,
            eps: eps as f32,
        })
    }

    /// Neither kernel records a backward pass, which is fine for frozen encoders (see
    /// docs/tensor-library.md for trained paths).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = x.contiguous()?;
        if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
            let op = LayerNormOp {
                weight: &self.cpu_weight,
                bias: &self.cpu_bias,
                eps: self.eps,
            };
            return Ok(x.apply_op1_no_bwd(&op)?);
        }
        Ok(candle_nn::ops::layer_norm(
            &x,
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

    /// `attention(x) + residual`, the sum made as the output projection writes its result.
    ///
    /// # Shapes
    /// `(B, L, D), (B, L, D) -> (B, L, D)`
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?; // (B, L, 3D)
        let attended = qkv.apply_op1_no_bwd(&self.kernel)?; // (B, L, D)
        self.out_proj.forward_plus(&attended, residual)
    }

    /// [`Attention::forward_plus`] for the query at `positions[b]` of each sequence only, with
    /// `residual` that position's input.
    ///
    /// # Shapes
    /// `(B, L, D), (B, 1, D) -> (B, 1, D)`
    pub fn forward_at_plus(
        &self,
        x: &Tensor,
        positions: &[usize],
        residual: &Tensor,
    ) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?; // (B, L, 3D): every key and value
        let attended = qkv.apply_op1_no_bwd(&self.kernel.at(positions))?; // (B, 1, D)
        self.out_proj.forward_plus(&attended, residual)
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

    /// `forward(x) + residual`, the sum made as `fc2` writes its result.
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.fc2.forward_plus(&self.fc1.forward(x)?, residual)
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
        let x = self
            .self_attn
            .forward_plus(&self.layer_norm1.forward(x)?, x)?;
        self.mlp.forward_plus(&self.layer_norm2.forward(&x)?, &x)
    }

    /// The layer's output at `positions[b]` of each sequence: q, k and v of every position (one
    /// fused product), the rest (attention, output projection, MLP) for those rows alone.
    ///
    /// # Shapes
    /// `(B, L, D) -> (B, 1, D)`
    pub fn forward_at(&self, x: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let (b, _, d) = x.dims3()?;
        let residual = gather_positions(x, positions)?.reshape((b, 1, d))?;
        let x =
            self.self_attn
                .forward_at_plus(&self.layer_norm1.forward(x)?, positions, &residual)?;
        self.mlp.forward_plus(&self.layer_norm2.forward(&x)?, &x)
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

    /// The output at `positions[b]` of each sequence, as [`Encoder::forward`] then
    /// [`gather_positions`] would give it: a tower that pools one position (the class token,
    /// the end-of-text token) reads nothing else of the last layer, whose attention, output
    /// projection and MLP then run for that row alone (three quarters of the last layer's
    /// products: ≈ 6 % of a 12-layer tower's).
    ///
    /// # Shapes
    /// `(B, L, D) -> (B, D)`
    pub fn forward_at(&self, x: &Tensor, positions: &[usize]) -> Result<Tensor> {
        let Some((last, layers)) = self.layers.split_last() else {
            return gather_positions(x, positions);
        };
        let mut x = x.clone();
        for layer in layers {
            x = layer.forward(&x)?;
        }
        Ok(last.forward_at(&x, positions)?.squeeze(1)?)
    }
}

/// Row `positions[i]` of sequence `i` of `x`.
///
/// # Shapes
/// `(B, L, D) -> (B, D)`
pub(crate) fn gather_positions(x: &Tensor, positions: &[usize]) -> Result<Tensor> {
    let (b, l, d) = x.dims3()?;
    let index: Vec<u32> = positions
        .iter()
        .enumerate()
        .map(|(i, &p)| (i * l + p) as u32)
        .collect();
    let index = Tensor::from_vec(index, (b,), x.device())?;
    Ok(x.reshape((b * l, d))?.index_select(&index, 0)?)
}

/// L2-normalises the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(shape: &[usize], seed: u64) -> Tensor {
        let len = shape.iter().product();
        let v = crate::methods::linalg::seeded_rng(seed).uniform_vec(len, 0.5);
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_residual_added_in_the_epilogue_equals_the_sum_after() {
        // 128 outputs fill two panels (packed at AVX-512, loaded elsewhere); a bias and each
        // activation, over a batch of two sequences (200 rows: two of the bias pass's tasks);
        // both precisions' kernels.
        for precision in [Precision::F32, Precision::Bf16] {
            for act in [None, Some(Activation::GeluTanh)] {
                let bias = tensor(&[128], 2).to_vec1::<f32>().unwrap();
                let layer = Linear::new(tensor(&[128, 40], 1), Some(bias), act)
                    .at(precision)
                    .unwrap();
                let (x, residual) = (tensor(&[2, 100, 40], 3), tensor(&[2, 100, 128], 4));
                let fused = layer.forward_plus(&x, &residual).unwrap();
                let after = (layer.forward(&x).unwrap() + &residual).unwrap();
                assert_eq!(fused.dims(), &[2, 100, 128]);
                assert_eq!(
                    fused.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    after.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    "{precision:?}, {act:?}"
                );
            }
        }
    }
}
