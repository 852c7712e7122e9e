//! SigLIP's image tower, with `transformers`' `SiglipVisionTransformer` parameter names
//! (`embeddings.patch_embedding` with bias, `embeddings.position_embedding`, `encoder`,
//! `post_layernorm`, `head`). open_clip's SigLIP models (timm's `VisionTransformer` with
//! `global_pool='map'`) are the same computation; their keys are renamed at load time
//! (`src/clip/load/layout.rs`).
//!
//! Reference: transformers/models/siglip/modeling_siglip.py (5.23): `SiglipVisionEmbeddings`
//! (patches plus learned positions, no class token), `SiglipVisionTransformer.forward` (the
//! encoder, then `post_layernorm` over every token) and `SiglipMultiheadAttentionPoolingHead`
//! (a learned probe attends over the tokens through `nn.MultiheadAttention`; then
//! `x + mlp(layernorm(x))`; its one output token is the image embedding).

use candle_core::Tensor;

use super::transformer::{Encoder, EncoderShape, LayerNorm, Linear, Mlp};
use crate::clip::error::{InputError, Result};
use crate::clip::load::checkpoint::Scope;
use crate::clip::load::config::VisionConfig;

/// `SiglipMultiheadAttentionPoolingHead`: one learned query over all tokens.
pub struct AttentionPoolingHead {
    /// The probe's query projection, computed once at load time: `(heads, head_dim)`.
    query: Tensor,
    /// k and v, fused into one projection at load time.
    kv: Linear,
    out_proj: Linear,
    layernorm: LayerNorm,
    mlp: Mlp,
    heads: usize,
}

impl AttentionPoolingHead {
    pub fn load(vb: &Scope, c: &VisionConfig) -> Result<Self> {
        let d = c.width;
        let attn = vb.pp("attention");
        // Asked for as three projections: `transformers` stores them fused (`in_proj_*`),
        // timm as `q` and a fused `kv` (the layout map splits either).
        let projection = |name: &str| -> Result<(Tensor, Vec<f32>)> {
            let p = attn.pp(name);
            Ok((
                p.get("weight", &[d, d])?,
                p.get("bias", &[d])?.to_vec1::<f32>()?,
            ))
        };
        let (q_w, q_b) = projection("q_proj")?;
        let (k_w, k_b) = projection("k_proj")?;
        let (v_w, v_b) = projection("v_proj")?;
        let probe = vb.get("probe", &[1, 1, d])?.reshape((1, d))?;
        let query = Linear::new(q_w, Some(q_b), None)
            .forward(&probe)?
            .reshape((c.heads, d / c.heads))?;
        Ok(AttentionPoolingHead {
            query,
            kv: Linear::new(
                Tensor::cat(&[&k_w, &v_w], 0)?,
                Some([k_b, v_b].concat()),
                None,
            )
            .at(vb.precision())?,
            out_proj: Linear::load(&attn.pp("out_proj"), d, d, true)?,
            layernorm: LayerNorm::load(&vb.pp("layernorm"), d, c.layer_norm_eps)?,
            mlp: Mlp::load(&vb.pp("mlp"), d, c.intermediate_size, c.activation)?,
            heads: c.heads,
        })
    }

    /// # Shapes
    /// `(B, L, D) -> (B, D)`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (h, hd) = (self.heads, d / self.heads);
        let kv = self.kv.forward(x)?; // (B, L, 2D)
        let k = kv
            .narrow(2, 0, d)?
            .reshape((b, l, h, hd))?
            .transpose(1, 2)?; // (B, H, L, hd)
        let v = kv
            .narrow(2, d, d)?
            .reshape((b, l, h, hd))?
            .transpose(1, 2)?;
        let q = self
            .query
            .reshape((1, h, 1, hd))?
            .broadcast_as((b, h, 1, hd))?;
        let scale = (hd as f64).powf(-0.5);
        let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?; // (B, H, 1, L)
        let weights = candle_nn::ops::softmax_last_dim(&scores)?;
        let attended = weights.matmul(&v.contiguous()?)?.reshape((b, d))?; // heads concatenated
        let x = self.out_proj.forward(&attended)?;
        Ok((&x + self.mlp.forward(&self.layernorm.forward(&x)?)?)?)
    }
}

pub struct SiglipVisionTransformer {
    config: VisionConfig,
    /// The patch convolution (stride = kernel = patch, with bias) as a matrix over flattened
    /// patches, as in the CLIP ViT.
    patch_embedding: Linear,
    position_embedding: Tensor,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    head: AttentionPoolingHead,
}

impl SiglipVisionTransformer {
    pub fn load(vb: &Scope, config: &VisionConfig) -> Result<Self> {
        let (d, p, c) = (config.width, config.patch_size, config.num_channels);
        let emb = vb.pp("embeddings");
        let conv = emb.pp("patch_embedding");
        let encoder_shape = EncoderShape {
            width: d,
            hidden: config.intermediate_size,
            layers: config.layers,
            heads: config.heads,
            activation: config.activation,
            eps: config.layer_norm_eps,
            causal: false,
        };
        Ok(SiglipVisionTransformer {
            config: config.clone(),
            patch_embedding: Linear::new(
                conv.get("weight", &[d, c, p, p])?.reshape((d, c * p * p))?,
                Some(conv.get("bias", &[d])?.to_vec1::<f32>()?),
                None,
            )
            .at(vb.precision())?,
            position_embedding: emb
                .pp("position_embedding")
                .get("weight", &[config.num_patches(), d])?,
            encoder: Encoder::load(&vb.pp("encoder"), &encoder_shape)?,
            post_layernorm: LayerNorm::load(&vb.pp("post_layernorm"), d, config.layer_norm_eps)?,
            head: AttentionPoolingHead::load(&vb.pp("head"), config)?,
        })
    }

    /// The pooled output: the image embedding.
    ///
    /// # Shapes
    /// `(B, C, S, S) -> (B, D)` where S is the configured image size.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, channels, h, w) = pixels.dims4()?;
        if (channels, h, w) != (c.num_channels, c.image_size, c.image_size) {
            return Err(InputError::ImageShape {
                found: [channels, h, w],
                channels: c.num_channels,
                size: c.image_size,
            }
            .into());
        }
        let (g, p) = (c.grid(), c.patch_size);
        // The patch convolution has no padding: pixels past the last whole patch (right and
        // bottom) never reach it.
        let pixels = match g * p == h {
            true => pixels.clone(),
            false => pixels.narrow(2, 0, g * p)?.narrow(3, 0, g * p)?,
        };
        let patches = pixels
            .reshape((b, channels, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, channels * p * p))?;
        let x = self.patch_embedding.forward(&patches)?; // (B, g², D)
        let x = x.broadcast_add(&self.position_embedding)?;
        let x = self.encoder.forward(&x)?;
        let x = self.post_layernorm.forward(&x)?;
        self.head.forward(&x)
    }
}
