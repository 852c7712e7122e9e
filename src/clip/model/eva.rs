//! EVA02-CLIP's image tower: timm's `Eva` as `eva02_*_clip_*` configures it, with timm's
//! parameter names (`patch_embed.proj`, `cls_token`, `pos_embed`, `blocks.N.attn.q_proj`,
//! `blocks.N.mlp.fc1_g`, `norm`, `head`).
//!
//! Reference: timm/models/eva.py (1.0.31), `Eva.forward_features` / `forward_head`,
//! `EvaBlock`, `EvaAttention`; timm/layers/mlp.py `SwiGLU`; timm/layers/pos_embed_sincos.py
//! `RotaryEmbeddingCat`, `apply_rot_embed_cat`. Differences from the CLIP ViT:
//! - learned absolute positions (class token included) and, inside every attention, 2-D rotary
//!   embeddings on the patch tokens' queries and keys (not on the class token);
//! - q and v projections have biases, k has none;
//! - a LayerNorm over the attention's output before its projection (`scale_attn_inner`);
//! - SwiGLU MLP: `fc2(norm(silu(fc1_g(x)) * fc1_x(x)))` (`swiglu_mlp`, `scale_mlp`);
//! - no pre-norm; the final `norm` is applied to every token and the class token is pooled.

use candle_core::{Device, Tensor};

use super::transformer::{gather_positions, LayerNorm, Linear};
use crate::clip::error::{InputError, Result};
use crate::clip::load::checkpoint::Scope;
use crate::clip::load::config::EvaConfig;
use crate::kernels::eva_ops::{RotaryInPlace, SwiGluGate};
use crate::kernels::ops::FusedAttention;

/// timm's `RotaryEmbeddingCat` for a fixed patch grid, in its interleaved layout: channel pair
/// `(2i, 2i + 1)` of each head is rotated by the angle `angles[i]`, where the first half of the
/// pairs follow the row coordinate and the second half the column coordinate, each over
/// `head_dim / 4` frequencies `temperature^(-j / (head_dim / 4))`.
pub struct RotaryEmbedding {
    /// `N × head_dim`, each angle's value repeated for both channels of its pair.
    sin: Vec<f32>,
    cos: Vec<f32>,
    head_dim: usize,
    device: Device,
}

impl RotaryEmbedding {
    pub fn new(c: &EvaConfig, device: &Device) -> Result<Self> {
        let (g, hd) = (c.grid(), c.head_dim());
        let bands = hd / 4;
        // f32 throughout, in timm's order of operations: the grid `arange(g) / g * ref` and the
        // bands `1 / temperature ** (j / bands)` are float32 tensors there.
        let freqs: Vec<f32> = (0..bands)
            .map(|j| 1.0 / (c.rope_temperature as f32).powf(j as f32 / bands as f32))
            .collect();
        let coord = |i: usize, axis: usize| match c.rope_reference_grid {
            Some(reference) => i as f32 / g as f32 * reference[axis] as f32,
            None => i as f32,
        };
        let (mut sin, mut cos) = (
            Vec::with_capacity(g * g * hd),
            Vec::with_capacity(g * g * hd),
        );
        for row in 0..g {
            for col in 0..g {
                for t in [coord(row, 0), coord(col, 1)] {
                    for f in &freqs {
                        let angle = t * f;
                        sin.extend([angle.sin(); 2]);
                        cos.extend([angle.cos(); 2]);
                    }
                }
            }
        }
        Ok(RotaryEmbedding {
            sin,
            cos,
            head_dim: hd,
            device: device.clone(),
        })
    }

    /// The `(N, 2 · head_dim)` table timm's `get_embed()` returns: sines, then cosines.
    pub fn table(&self) -> Result<Tensor> {
        let (n, hd) = (self.sin.len() / self.head_dim, self.head_dim);
        let table = |v: &[f32]| Tensor::from_slice(v, (n, hd), &self.device);
        Ok(Tensor::cat(&[table(&self.sin)?, table(&self.cos)?], 1)?)
    }

    /// Rotates the queries and keys of the tokens after the first `prefix` (the class token),
    /// per head, in place in the `qkv` projection's fresh output.
    ///
    /// # Shapes
    /// `(B, prefix + N, 3 · D)` laid out `[q | k | v]`, `D = heads · head_dim`
    pub fn apply_to_qkv(&self, qkv: &Tensor, heads: usize, prefix: usize) -> Result<()> {
        Ok(qkv.inplace_op1(&RotaryInPlace {
            sin: &self.sin,
            cos: &self.cos,
            heads,
            prefix,
        })?)
    }
}

/// `EvaAttention` with separate q/k/v projections (`qkv_fused=False`), fused here at load time.
pub struct EvaAttention {
    qkv: Linear,
    /// `scale_attn_inner`: a LayerNorm over the heads' concatenated output.
    norm: LayerNorm,
    proj: Linear,
    kernel: FusedAttention,
}

impl EvaAttention {
    pub fn load(vb: &Scope, c: &EvaConfig) -> Result<Self> {
        let d = c.width;
        let q = vb.pp("q_proj");
        let v = vb.pp("v_proj");
        let weights = [
            q.get("weight", &[d, d])?,
            vb.pp("k_proj").get("weight", &[d, d])?,
            v.get("weight", &[d, d])?,
        ];
        // EVA's keys have no bias (softmax is invariant to it).
        let bias = [
            q.get("bias", &[d])?.to_vec1::<f32>()?,
            vec![0.0; d],
            v.get("bias", &[d])?.to_vec1::<f32>()?,
        ]
        .concat();
        Ok(EvaAttention {
            qkv: Linear::new(Tensor::cat(&weights, 0)?, Some(bias), None).at(vb.precision())?,
            norm: LayerNorm::load(&vb.pp("norm"), d, c.layer_norm_eps)?,
            proj: Linear::load(&vb.pp("proj"), d, d, true)?,
            kernel: FusedAttention {
                heads: c.heads,
                causal: false,
            },
        })
    }

    /// `attention(x) + residual`, the sum made as the output projection writes its result.
    ///
    /// # Shapes
    /// `(B, 1 + N, D), (B, 1 + N, D) -> (B, 1 + N, D)`
    pub fn forward_plus(
        &self,
        x: &Tensor,
        rope: &RotaryEmbedding,
        residual: &Tensor,
    ) -> Result<Tensor> {
        let attended = self.qkv(x, rope)?.apply_op1_no_bwd(&self.kernel)?; // (B, L, D)
        self.proj
            .forward_plus(&self.norm.forward(&attended)?, residual)
    }

    /// [`EvaAttention::forward_plus`] for the query at `positions[b]` of each sequence only,
    /// with `residual` that position's input.
    ///
    /// # Shapes
    /// `(B, 1 + N, D), (B, 1, D) -> (B, 1, D)`
    pub fn forward_at_plus(
        &self,
        x: &Tensor,
        rope: &RotaryEmbedding,
        positions: &[usize],
        residual: &Tensor,
    ) -> Result<Tensor> {
        let attended = self
            .qkv(x, rope)?
            .apply_op1_no_bwd(&self.kernel.at(positions))?; // (B, 1, D)
        self.proj
            .forward_plus(&self.norm.forward(&attended)?, residual)
    }

    /// q, k and v of every position, the rotary embedding applied.
    fn qkv(&self, x: &Tensor, rope: &RotaryEmbedding) -> Result<Tensor> {
        let qkv = self.qkv.forward(x)?.contiguous()?; // (B, L, 3D), fresh
        rope.apply_to_qkv(&qkv, self.kernel.heads, 1)?;
        Ok(qkv)
    }
}

/// timm's `SwiGLU` with its inner norm: `fc2(norm(silu(fc1_g(x)) * fc1_x(x)))`.
pub struct SwiGlu {
    /// `fc1_g` and `fc1_x` as one projection (gate rows first).
    fc1: Linear,
    norm: LayerNorm,
    fc2: Linear,
    hidden: usize,
}

impl SwiGlu {
    pub fn load(vb: &Scope, c: &EvaConfig) -> Result<Self> {
        let (d, h) = (c.width, c.intermediate_size);
        let (g, x) = (vb.pp("fc1_g"), vb.pp("fc1_x"));
        let weight = Tensor::cat(&[g.get("weight", &[h, d])?, x.get("weight", &[h, d])?], 0)?;
        let bias = [
            g.get("bias", &[h])?.to_vec1::<f32>()?,
            x.get("bias", &[h])?.to_vec1::<f32>()?,
        ]
        .concat();
        Ok(SwiGlu {
            fc1: Linear::new(weight, Some(bias), None).at(vb.precision())?,
            norm: LayerNorm::load(&vb.pp("norm"), h, c.layer_norm_eps)?,
            fc2: Linear::load(&vb.pp("fc2"), h, d, true)?,
            hidden: h,
        })
    }

    /// `swiglu(x) + residual`, the sum made as `fc2` writes its result.
    pub fn forward_plus(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        let both = self.fc1.forward(x)?;
        let gated = both.apply_op1_no_bwd(&SwiGluGate {
            hidden: self.hidden,
        })?;
        self.fc2.forward_plus(&self.norm.forward(&gated)?, residual)
    }
}

pub struct EvaBlock {
    norm1: LayerNorm,
    attn: EvaAttention,
    norm2: LayerNorm,
    mlp: SwiGlu,
}

impl EvaBlock {
    pub fn load(vb: &Scope, c: &EvaConfig) -> Result<Self> {
        Ok(EvaBlock {
            norm1: LayerNorm::load(&vb.pp("norm1"), c.width, c.layer_norm_eps)?,
            attn: EvaAttention::load(&vb.pp("attn"), c)?,
            norm2: LayerNorm::load(&vb.pp("norm2"), c.width, c.layer_norm_eps)?,
            mlp: SwiGlu::load(&vb.pp("mlp"), c)?,
        })
    }

    pub fn forward(&self, x: &Tensor, rope: &RotaryEmbedding) -> Result<Tensor> {
        let x = self.attn.forward_plus(&self.norm1.forward(x)?, rope, x)?;
        self.mlp.forward_plus(&self.norm2.forward(&x)?, &x)
    }

    /// The block's output at `positions[b]` of each sequence alone (see
    /// `transformer::EncoderLayer::forward_at`).
    ///
    /// # Shapes
    /// `(B, 1 + N, D) -> (B, 1, D)`
    pub fn forward_at(
        &self,
        x: &Tensor,
        rope: &RotaryEmbedding,
        positions: &[usize],
    ) -> Result<Tensor> {
        let (b, _, d) = x.dims3()?;
        let residual = gather_positions(x, positions)?.reshape((b, 1, d))?;
        let x = self
            .attn
            .forward_at_plus(&self.norm1.forward(x)?, rope, positions, &residual)?;
        self.mlp.forward_plus(&self.norm2.forward(&x)?, &x)
    }
}

/// The tower up to its pooled, normed class token (`forward_head(..., pre_logits=True)`); the
/// `head` Linear into the joint space is the model's image projection.
pub struct Eva {
    config: EvaConfig,
    /// The patch convolution (stride = kernel) as a matrix over flattened patches, with bias.
    patch_embed: Linear,
    cls_token: Tensor,
    pos_embed: Tensor,
    rope: RotaryEmbedding,
    blocks: Vec<EvaBlock>,
    norm: LayerNorm,
}

impl Eva {
    pub fn load(vb: &Scope, config: &EvaConfig, device: &Device) -> Result<Self> {
        let (d, p) = (config.width, config.patch_size);
        let conv = vb.pp("patch_embed").pp("proj");
        let blocks = (0..config.layers)
            .map(|i| EvaBlock::load(&vb.pp("blocks").pp(i), config))
            .collect::<Result<Vec<_>>>()?;
        Ok(Eva {
            config: config.clone(),
            patch_embed: Linear::new(
                conv.get("weight", &[d, 3, p, p])?.reshape((d, 3 * p * p))?,
                Some(conv.get("bias", &[d])?.to_vec1::<f32>()?),
                None,
            )
            .at(vb.precision())?,
            cls_token: vb.get("cls_token", &[1, 1, d])?,
            pos_embed: vb
                .get("pos_embed", &[1, config.num_positions(), d])?
                .squeeze(0)?,
            rope: RotaryEmbedding::new(config, device)?,
            blocks,
            norm: LayerNorm::load(&vb.pp("norm"), d, config.layer_norm_eps)?,
        })
    }

    pub fn rope(&self) -> &RotaryEmbedding {
        &self.rope
    }

    /// The pooled (class-token) output after the final norm, before the head.
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, D)` where S is the configured image size.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, channels, h, w) = pixels.dims4()?;
        if (channels, h, w) != (3, c.image_size, c.image_size) {
            return Err(InputError::ImageShape {
                found: [channels, h, w],
                channels: 3,
                size: c.image_size,
            }
            .into());
        }
        let (g, p, d) = (c.grid(), c.patch_size, c.width);
        let patches = pixels
            .reshape((b, 3, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, 3 * p * p))?;
        let patches = self.patch_embed.forward(&patches)?;
        let class = self.cls_token.broadcast_as((b, 1, d))?;
        let mut x = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.pos_embed)?;
        // Only the class token is pooled: the last block runs for that row alone.
        let Some((last, blocks)) = self.blocks.split_last() else {
            return self.norm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?);
        };
        for block in blocks {
            x = block.forward(&x, &self.rope)?;
        }
        // The norm is per token: normalising the pooled token alone is the same.
        let pooled = last.forward_at(&x, &self.rope, &vec![0; b])?;
        self.norm.forward(&pooled.squeeze(1)?)
    }
}
