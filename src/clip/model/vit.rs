//! The Vision Transformer image tower of CLIP, with `transformers`' `CLIPVisionTransformer`
//! parameter names (`embeddings.patch_embedding`, `pre_layrnorm` — sic —, `post_layernorm`).
//!
//! Reference: transformers/models/clip/modeling_clip.py, `CLIPVisionEmbeddings` and
//! `CLIPVisionTransformer.forward` (`pooled_output = last_hidden_state[:, 0, :]`); for another
//! input size than the positions were trained at, open_clip's `resize_pos_embed`.

use candle_core::Tensor;

use super::positions::{resize_positions, Interpolation};
use super::transformer::{Encoder, EncoderShape, LayerNorm, Linear};
use crate::clip::error::{InputError, Result};
use crate::clip::load::checkpoint::Scope;
use crate::clip::load::config::VisionConfig;

pub struct VisionTransformer {
    config: VisionConfig,
    /// The patch convolution (stride = kernel = patch, no bias) as a matrix over flattened
    /// patches: a convolution whose windows never overlap is exactly one GEMM.
    patch_embedding: Linear,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
}

impl VisionTransformer {
    /// `resize`: how positions trained at another grid are resized to the configured one (open_clip
    /// does it when its config asks for another image size); `None` refuses such a checkpoint
    /// as a shape mismatch, as `transformers` does.
    pub fn load(vb: &Scope, config: &VisionConfig, resize: Option<Interpolation>) -> Result<Self> {
        let (d, p, c) = (config.width, config.patch_size, config.num_channels);
        let emb = vb.pp("embeddings");
        let positions = emb.pp("position_embedding");
        let tokens = config.num_positions();
        let position_embedding = match (positions.shape("weight").as_deref(), resize) {
            (Some([n, w]), Some(interpolation)) if *n != tokens && *w == d => {
                let old = positions.get("weight", &[*n, d])?;
                resize_positions(&old, 1, config.grid(), interpolation)?
            }
            _ => positions.get("weight", &[tokens, d])?,
        };
        let conv = emb.pp("patch_embedding").get("weight", &[d, c, p, p])?;
        let encoder_shape = EncoderShape {
            width: d,
            hidden: config.intermediate_size,
            layers: config.layers,
            heads: config.heads,
            activation: config.activation,
            eps: config.layer_norm_eps,
            causal: false,
        };
        Ok(VisionTransformer {
            config: config.clone(),
            patch_embedding: Linear::new(conv.reshape((d, c * p * p))?, None, None)
                .at(vb.precision())?,
            class_embedding: emb.get("class_embedding", &[d])?,
            position_embedding,
            pre_layrnorm: LayerNorm::load(&vb.pp("pre_layrnorm"), d, config.layer_norm_eps)?,
            encoder: Encoder::load(&vb.pp("encoder"), &encoder_shape)?,
            post_layernorm: LayerNorm::load(&vb.pp("post_layernorm"), d, config.layer_norm_eps)?,
        })
    }

    /// The pooled (class-token) output, before the projection.
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
        let (g, p, d) = (c.grid(), c.patch_size, c.width);
        // (B, C, g, P, g, P) -> (B, g, g, C, P, P): row-major patches in the conv weight's order.
        let patches = pixels
            .reshape((b, channels, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, channels * p * p))?;
        let patches = self.patch_embedding.forward(&patches)?; // (B, g², D)
        let class = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        let x = Tensor::cat(&[&class, &patches], 1)?; // (B, g² + 1, D)
        let x = x.broadcast_add(&self.position_embedding)?;
        let x = self.pre_layrnorm.forward(&x)?;
        let pooled = self.encoder.forward_at(&x, &vec![0; b])?; // (B, D): the class token
        self.post_layernorm.forward(&pooled)
    }
}
