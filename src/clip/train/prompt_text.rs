//! The frozen text tower of a real checkpoint, differentiable with respect to its input token
//! embeddings: what prompt learning (CoOp) trains through.
//!
//! It is the pretraining `TextTower` with its weights read from the
//! checkpoint (either layout) instead of initialised, run on embeddings rather than ids, as
//! CoOp's `TextEncoder` does (`prompts + positional_embedding`, the transformer, `ln_final`, the
//! row at `tokenized_prompts.argmax(-1)`, `@ text_projection`). Every step is a composite candle
//! op with a backward: the inference tower's fused kernels record none, so the context vectors
//! would silently get a zero gradient through them.
//!
//! Two differences from the pretraining forward, both for speed and neither changing a value:
//! the linear layers are one 2-D product over all positions whose backward forms only the input
//! gradient `g W` (`FrozenMatmul`; candle's matmul backward also forms the weight gradient
//! `xᵀ g`, a third of the step's arithmetic that nobody reads here), and sequences stop at the
//! last end-of-text position of the batch (attention is causal, so later positions never reach
//! a pooled output).

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::frozen::{blocks_forward, linear2d, NoDelta, ProjectionDelta};
use super::fused::FrozenLayerNorm;
use super::Block;
use super::{LayerNorm, Linear, TextTower};
use crate::clip::error::{InputError, Result};
use crate::clip::load::checkpoint::Checkpoint;
use crate::clip::load::config::{ClipConfig, TextConfig};
use crate::clip::{ModelFiles, Precision};

/// A frozen CLIP text tower and projection that back-propagates into its input embeddings.
pub struct PromptTextEncoder {
    config: TextConfig,
    embed_dim: usize,
    tower: TextTower,
    /// The tower's layer norms as fused frozen ops: `[layer_norm1, layer_norm2]` per layer.
    norms: Vec<[FrozenLayerNorm; 2]>,
    final_norm: FrozenLayerNorm,
    text_projection: Linear,
    /// `exp(logit_scale)` of the checkpoint.
    logit_scale: f32,
    device: Device,
}

/// The `transformers` names and shapes of every text-side tensor.
fn text_tensors(c: &TextConfig, embed_dim: usize) -> Vec<(String, Vec<usize>)> {
    let (d, h) = (c.width, c.intermediate_size);
    let mut out = vec![
        (
            "text_model.embeddings.token_embedding.weight".to_string(),
            vec![c.vocab_size, d],
        ),
        (
            "text_model.embeddings.position_embedding.weight".into(),
            vec![c.context_length, d],
        ),
        ("text_model.final_layer_norm.weight".into(), vec![d]),
        ("text_model.final_layer_norm.bias".into(), vec![d]),
        ("text_projection.weight".into(), vec![embed_dim, d]),
    ];
    for i in 0..c.layers {
        out.extend(super::block_tensors(
            &format!("text_model.encoder.layers.{i}"),
            d,
            h,
        ));
    }
    out
}

impl PromptTextEncoder {
    /// Reads the text tower of a model directory (either layout; the image tower is not read).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        let config = files.read_config()?;
        let ckpt = Checkpoint::open(&files.weights, files.layout, device)?;
        Self::from_checkpoint(&config, &ckpt, device)
    }

    pub fn from_checkpoint(
        config: &ClipConfig,
        ckpt: &Checkpoint,
        device: &Device,
    ) -> Result<Self> {
        if config.is_siglip() {
            return Err(crate::clip::error::Error::SiglipUnsupported {
                what: "CoOp's prompt learning (CLIP's causal text tower)",
            });
        }
        let c = &config.text;
        let mut tensors = HashMap::new();
        for (name, shape) in text_tensors(c, config.embed_dim) {
            let t = ckpt.get(&name, &shape)?;
            tensors.insert(name, t);
        }
        let logit_scale = ckpt.get("logit_scale", &[])?.to_scalar::<f32>()?.exp();
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let tower = TextTower::new(&vb.pp("text_model"), c)?;
        let frozen = |n: &LayerNorm| FrozenLayerNorm::new(&n.weight, &n.bias, n.eps);
        let norms = (tower.layers.iter())
            .map(|b| Ok([frozen(&b.layer_norm1)?, frozen(&b.layer_norm2)?]))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(PromptTextEncoder {
            final_norm: frozen(&tower.final_layer_norm)?,
            norms,
            tower,
            text_projection: Linear::new(
                &vb.pp("text_projection"),
                c.width,
                config.embed_dim,
                false,
            )?,
            config: c.clone(),
            embed_dim: config.embed_dim,
            logit_scale,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &TextConfig {
        &self.config
    }

    /// Every frozen product of the tower (blocks, projection) at `precision`.
    pub fn freeze_at(&mut self, precision: Precision) -> Result<()> {
        self.text_projection.freeze_at(precision)?;
        for block in &mut self.tower.layers {
            block.freeze_at(precision)?;
        }
        Ok(())
    }

    /// The width of the joint embedding space.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// `exp(logit_scale)` of the checkpoint.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Rows of the token embedding table.
    ///
    /// # Shapes
    /// `n ids -> (n, width)`
    pub fn token_embeddings(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(bad) = ids
            .iter()
            .find(|&&id| id as usize >= self.config.vocab_size)
        {
            return Err(InputError::TokenId {
                id: *bad,
                vocab_size: self.config.vocab_size,
            }
            .into());
        }
        let index = Tensor::from_slice(ids, (ids.len(),), &self.device)?;
        Ok(self.tower.token_embedding.index_select(&index, 0)?)
    }

    /// Projected, un-normalised text features of embedded token sequences (positions not yet
    /// added), pooled at `eot[i]` for sequence `i`. Gradients flow back into `x`.
    ///
    /// # Shapes
    /// `(B, L, width), B positions -> (B, embed_dim)`, `L ≤ context_length`
    pub fn encode_embeddings(&self, x: &Tensor, eot: &[usize]) -> Result<Tensor> {
        self.encode_embeddings_with(x, eot, &NoDelta)
    }

    /// [`Self::encode_embeddings`] with `delta` added to the attention projections.
    pub(super) fn encode_embeddings_with(
        &self,
        x: &Tensor,
        eot: &[usize],
        delta: &dyn ProjectionDelta,
    ) -> Result<Tensor> {
        let x = self.embed_positions(x, eot)?;
        self.encode_from(&x, eot, 0, delta)
    }

    /// The tower's blocks with their norms, for [`blocks_forward`].
    fn blocks(&self) -> (&[Block], &[[FrozenLayerNorm; 2]]) {
        (&self.tower.layers, &self.norms)
    }

    /// The hidden states entering block `start` of the frozen tower (no update below it), cut
    /// after the last end position as [`Self::encode_embeddings`] cuts them.
    ///
    /// # Shapes
    /// `(B, L, width) -> (B, max(eot) + 1, width)`
    pub(super) fn hidden_before(&self, x: &Tensor, eot: &[usize], start: usize) -> Result<Tensor> {
        let x = self.embed_positions(x, eot)?;
        blocks_forward(self.blocks(), &x, 0..start, true, &NoDelta)
    }

    /// Blocks `start..` with `delta`, then pooling and projection, from the hidden states
    /// entering block `start` ([`Self::hidden_before`]).
    pub(super) fn encode_from(
        &self,
        hidden: &Tensor,
        eot: &[usize],
        start: usize,
        delta: &dyn ProjectionDelta,
    ) -> Result<Tensor> {
        let blocks = start..self.norms.len();
        let x = blocks_forward(self.blocks(), hidden, blocks, true, delta)?;
        let pooled = crate::clip::model::transformer::gather_positions(&x, eot)?;
        let pooled = self.final_norm.forward(&pooled)?;
        linear2d(&self.text_projection, &pooled)
    }

    /// Checked embeddings cut after the last end position, positions added.
    fn embed_positions(&self, x: &Tensor, eot: &[usize]) -> Result<Tensor> {
        let c = &self.config;
        let (b, len, width) = x.dims3()?;
        if width != c.width || len == 0 || len > c.context_length || eot.len() != b {
            return Err(InputError::PromptShape {
                shape: [b, len, width],
                ends: eot.len(),
                width: c.width,
                context_length: c.context_length,
            }
            .into());
        }
        if let Some(&p) = eot.iter().find(|&&p| p >= len) {
            return Err(InputError::EndPosition {
                position: p,
                length: len,
            }
            .into());
        }
        let used = eot.iter().max().map_or(len, |&p| p + 1);
        let x = x.narrow(1, 0, used)?;
        Ok(x.broadcast_add(&self.tower.position_embedding.narrow(0, 0, used)?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::Clip;
    use candle_core::Var;
    use std::path::Path;

    fn model_dir(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
    }

    /// Embedding the ids and running the differentiable tower gives the inference tower's
    /// features (both layouts).
    #[test]
    fn matches_the_inference_tower_on_ids() {
        for name in ["tiny-clip", "tiny-openclip-vit"] {
            let files = ModelFiles::in_dir(&model_dir(name)).unwrap();
            let dev = Device::Cpu;
            let enc = PromptTextEncoder::load(&files, &dev).unwrap();
            let clip = Clip::load(&files, &dev).unwrap();
            let ctx = enc.config().context_length;
            let eot_id = (enc.config().vocab_size - 1) as u32;
            let mut rows = Vec::new();
            for (i, n) in [3usize, 7, 1].iter().enumerate() {
                let mut r = vec![eot_id - 1];
                r.extend((0..*n).map(|j| (11 + 37 * (i + j)) as u32 % (eot_id - 1)));
                r.push(eot_id);
                r.resize(ctx, 0);
                rows.push(r);
            }
            let want = clip.encode_tokens(&rows).unwrap().to_vec2::<f32>().unwrap();
            let flat: Vec<u32> = rows.iter().flatten().copied().collect();
            let x = enc
                .token_embeddings(&flat)
                .unwrap()
                .reshape((rows.len(), ctx, enc.config().width))
                .unwrap();
            let eot: Vec<usize> = rows
                .iter()
                .map(|r| r.iter().position(|&t| t == eot_id).unwrap())
                .collect();
            let got = enc
                .encode_embeddings(&x, &eot)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap();
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert!((g - w).abs() < 1e-4 * (1.0 + w.abs()), "{name}: {g} vs {w}");
            }
        }
    }

    /// The gradient with respect to the input embeddings against central finite differences
    /// (f32: a step of 1e-2 keeps rounding in the quotient near 1e-4, the tolerance is 2e-3).
    #[test]
    fn input_gradient_matches_finite_differences() {
        for name in ["tiny-clip", "tiny-openclip-vit"] {
            let files = ModelFiles::in_dir(&model_dir(name)).unwrap();
            let enc = PromptTextEncoder::load(&files, &Device::Cpu).unwrap();
            let width = enc.config().width;
            let (b, l) = (2usize, 5usize);
            let values: Vec<f32> = (0..b * l * width)
                .map(|i| ((i as f32 * 0.618).fract() - 0.5) * 2.0)
                .collect();
            let eot = [4usize, 2];
            let loss = |x: &Tensor| -> Tensor {
                let f = enc.encode_embeddings(x, &eot).unwrap();
                // A non-symmetric scalar so that every output coordinate matters.
                let w = Tensor::arange(0f32, f.elem_count() as f32, &Device::Cpu)
                    .unwrap()
                    .reshape(f.shape())
                    .unwrap();
                ((f.sin().unwrap() * ((w * 0.1).unwrap() + 1.0).unwrap()).unwrap())
                    .sum_all()
                    .unwrap()
            };
            let x = Var::from_vec(values.clone(), (b, l, width), &Device::Cpu).unwrap();
            let grads = loss(x.as_tensor()).backward().unwrap();
            let g = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
            let g = g.to_vec1::<f32>().unwrap();
            let eps = 1e-2f32;
            let mut checked = 0;
            for i in (0..values.len()).step_by(7) {
                let at = |delta: f32| {
                    let mut v = values.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, (b, l, width), &Device::Cpu).unwrap();
                    loss(&t)
                        .to_dtype(DType::F64)
                        .unwrap()
                        .to_scalar::<f64>()
                        .unwrap()
                };
                let fd = ((at(eps) - at(-eps)) / (2.0 * eps as f64)) as f32;
                assert!(
                    (g[i] - fd).abs() < 2e-3 * (1.0 + fd.abs()),
                    "{name} [{i}]: {} vs {fd}",
                    g[i]
                );
                checked += 1;
            }
            assert!(checked > 10);
            // Positions after a sequence's end token never reach its pooled output.
            let after_end = &g[(l + eot[1] + 1) * width..2 * l * width];
            assert!(after_end.iter().all(|v| v.abs() < 1e-12), "{name}");
        }
    }
}
