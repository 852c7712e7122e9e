//! The text tower of CLIP, with `transformers`' `CLIPTextTransformer` parameter names
//! (`embeddings.token_embedding`, `embeddings.position_embedding`, `final_layer_norm`).
//!
//! Reference: transformers/models/clip/modeling_clip.py, `CLIPTextTransformer.forward`: a causal
//! transformer whose pooled output is the hidden state at the end-of-text token.

use candle_core::{Device, Tensor};

use super::transformer::{Encoder, EncoderShape, LayerNorm};
use crate::clip::error::{Error, InputError, Result};
use crate::clip::load::checkpoint::Scope;
use crate::clip::load::config::{Pooling, TextConfig};

pub struct TextTransformer {
    config: TextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    encoder: Encoder,
    final_layer_norm: LayerNorm,
}

/// The pooled position of each sequence.
///
/// CLIP's end-of-text token has the largest id of its vocabulary, so OpenAI's `argmax` over the
/// ids finds it (`x[torch.arange(x.shape[0]), text.argmax(dim=-1)]` in OpenAI's model.py);
/// `torch.argmax` returns the first maximum, as does this. A sequence without the configured
/// end-of-text id is an error, where `transformers` silently pools position 0.
pub fn eot_positions(ids: &[Vec<u32>], pooling: Pooling) -> Result<Vec<usize>> {
    ids.iter()
        .enumerate()
        .map(|(i, seq)| {
            let target = match pooling {
                Pooling::Argmax => seq.iter().copied().max().unwrap_or(0),
                Pooling::FirstToken(id) => id,
                Pooling::Last => return Ok(seq.len().saturating_sub(1)),
            };
            seq.iter().position(|&id| id == target).ok_or_else(|| {
                Error::from(InputError::NoEndToken {
                    index: i + 1,
                    end_token: target,
                })
            })
        })
        .collect()
}

/// Checks a batch of token sequences against the text tower: all of one length between 1 and
/// the context length, every id inside the vocabulary.
pub(crate) fn check_ids(ids: &[Vec<u32>], c: &TextConfig) -> Result<()> {
    let len = ids.first().map_or(0, Vec::len);
    if len == 0 || len > c.context_length || ids.iter().any(|s| s.len() != len) {
        return Err(InputError::TokenLengths {
            context_length: c.context_length,
        }
        .into());
    }
    if let Some(bad) = ids
        .iter()
        .flatten()
        .find(|&&id| id as usize >= c.vocab_size)
    {
        return Err(InputError::TokenId {
            id: *bad,
            vocab_size: c.vocab_size,
        }
        .into());
    }
    Ok(())
}

impl TextTransformer {
    pub fn load(vb: &Scope, config: &TextConfig) -> Result<Self> {
        let d = config.width;
        let emb = vb.pp("embeddings");
        let encoder_shape = EncoderShape {
            width: d,
            hidden: config.intermediate_size,
            layers: config.layers,
            heads: config.heads,
            activation: config.activation,
            eps: config.layer_norm_eps,
            causal: config.pooling.causal(),
        };
        Ok(TextTransformer {
            config: config.clone(),
            token_embedding: emb
                .pp("token_embedding")
                .get("weight", &[config.vocab_size, d])?,
            position_embedding: emb
                .pp("position_embedding")
                .get("weight", &[config.context_length, d])?,
            encoder: Encoder::load(&vb.pp("encoder"), &encoder_shape)?,
            final_layer_norm: LayerNorm::load(
                &vb.pp("final_layer_norm"),
                d,
                config.layer_norm_eps,
            )?,
        })
    }

    pub fn context_length(&self) -> usize {
        self.config.context_length
    }

    /// The pooled (end-of-text, or for SigLIP last-position) output, before the projection.
    ///
    /// With causal attention, sequences are cut after the last end-of-text position of the
    /// batch: later tokens never influence an earlier position, and the result is identical to
    /// running all `context_length` positions, at a fraction of the cost for short prompts.
    /// SigLIP's bidirectional tower sees every position, padding included, as it was trained.
    ///
    /// # Shapes
    /// `B sequences of L ≤ context_length ids -> (B, D)`
    pub fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let c = &self.config;
        check_ids(ids, c)?;
        let len = ids[0].len();
        let eot = eot_positions(ids, c.pooling)?;
        let used = eot.iter().max().map_or(len, |&p| p + 1);
        let flat: Vec<u32> = ids.iter().flat_map(|s| s[..used].iter().copied()).collect();
        let b = ids.len();
        let tokens = Tensor::from_vec(flat, (b * used,), device)?;
        let x = self
            .token_embedding
            .index_select(&tokens, 0)?
            .reshape((b, used, c.width))?;
        let x = x.broadcast_add(&self.position_embedding.narrow(0, 0, used)?)?;
        // Pool before the final LayerNorm: it is per-position, so the order does not matter.
        self.final_layer_norm
            .forward(&self.encoder.forward_at(&x, &eot)?)
    }
}
