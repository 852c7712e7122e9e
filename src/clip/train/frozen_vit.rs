//! The frozen ViT image tower of a real checkpoint, differentiable with respect to what is
//! added to its attention projections: what CLIP-LoRA trains through on the image side.
//!
//! It is the pretraining `ImageTower` with its weights read from the checkpoint (any layout)
//! and run with the frozen ops of [`super::frozen`]: patches (a stride-p convolution written as
//! one product), class token and positions, `ln_pre`, the blocks, `ln_post` on the class token,
//! the projection. The pixels get no gradient: nothing upstream of them is trained.

use std::collections::HashMap;

use candle_core::{DType, Device, IndexOp, Tensor};
use candle_nn::VarBuilder;

use super::frozen::{blocks_forward, linear2d, NoDelta, ProjectionDelta};
use super::fused::FrozenLayerNorm;
use super::Block;
use super::{ImageTower, LayerNorm, Linear};
use crate::clip::error::Result;
use crate::clip::load::checkpoint::Checkpoint;
use crate::clip::load::config::VisionConfig;
use crate::clip::Precision;

/// A frozen CLIP ViT and its projection.
pub struct FrozenVisionTower {
    config: VisionConfig,
    tower: ImageTower,
    pre_norm: FrozenLayerNorm,
    /// `[layer_norm1, layer_norm2]` per layer.
    norms: Vec<[FrozenLayerNorm; 2]>,
    post_norm: FrozenLayerNorm,
    /// The patch convolution as one product over flattened patches.
    patch: Linear,
    projection: Linear,
}

/// The `transformers` names and shapes of every image-side tensor of a ViT.
fn vision_tensors(c: &VisionConfig, embed_dim: usize) -> Vec<(String, Vec<usize>)> {
    let (d, h, p) = (c.width, c.intermediate_size, c.patch_size);
    let emb = "vision_model.embeddings";
    let mut out = vec![
        (
            format!("{emb}.patch_embedding.weight"),
            vec![d, c.num_channels, p, p],
        ),
        (format!("{emb}.class_embedding"), vec![d]),
        (
            format!("{emb}.position_embedding.weight"),
            vec![c.num_positions(), d],
        ),
        ("visual_projection.weight".into(), vec![embed_dim, d]),
    ];
    for norm in ["pre_layrnorm", "post_layernorm"] {
        out.push((format!("vision_model.{norm}.weight"), vec![d]));
        out.push((format!("vision_model.{norm}.bias"), vec![d]));
    }
    for i in 0..c.layers {
        out.extend(super::block_tensors(
            &format!("vision_model.encoder.layers.{i}"),
            d,
            h,
        ));
    }
    out
}

impl FrozenVisionTower {
    pub fn from_checkpoint(
        c: &VisionConfig,
        embed_dim: usize,
        ckpt: &Checkpoint,
        device: &Device,
    ) -> Result<Self> {
        let mut tensors = HashMap::new();
        for (name, shape) in vision_tensors(c, embed_dim) {
            let t = ckpt.get(&name, &shape)?;
            tensors.insert(name, t);
        }
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        let tower = ImageTower::new(&vb.pp("vision_model"), c)?;
        let frozen = |n: &LayerNorm| FrozenLayerNorm::new(&n.weight, &n.bias, n.eps);
        let norms = (tower.layers.iter())
            .map(|b| Ok([frozen(&b.layer_norm1)?, frozen(&b.layer_norm2)?]))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let kernel = &tower.patch_embedding;
        let patch = Linear {
            weight: kernel.reshape((c.width, kernel.elem_count() / c.width.max(1)))?,
            bias: None,
            bf16: None,
        };
        Ok(FrozenVisionTower {
            patch,
            pre_norm: frozen(&tower.pre_layrnorm)?,
            post_norm: frozen(&tower.post_layernorm)?,
            norms,
            tower,
            projection: Linear::new(&vb.pp("visual_projection"), c.width, embed_dim, false)?,
            config: c.clone(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// Every frozen product of the tower (patches, blocks, projection) at `precision`.
    pub fn freeze_at(&mut self, precision: Precision) -> Result<()> {
        self.patch.freeze_at(precision)?;
        self.projection.freeze_at(precision)?;
        for block in &mut self.tower.layers {
            block.freeze_at(precision)?;
        }
        Ok(())
    }

    /// Projected, un-normalised image features with `delta` added to the attention
    /// projections.
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, embed_dim)`
    pub(super) fn forward_with(
        &self,
        pixels: &Tensor,
        delta: &dyn ProjectionDelta,
    ) -> Result<Tensor> {
        let x = self.tokens_before(pixels, 0)?;
        self.forward_from(&x, 0, delta)
    }

    /// The tower's blocks with their norms, for [`blocks_forward`].
    fn blocks(&self) -> (&[Block], &[[FrozenLayerNorm; 2]]) {
        (&self.tower.layers, &self.norms)
    }

    /// The tokens entering block `start` of the frozen tower (no update below it).
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, T, width)`
    pub(super) fn tokens_before(&self, pixels: &Tensor, start: usize) -> Result<Tensor> {
        let patches = self.tower.patches(pixels)?;
        let x = self.tower.tokens(&linear2d(&self.patch, &patches)?)?;
        let x = self.pre_norm.forward(&x)?;
        blocks_forward(self.blocks(), &x, 0..start, false, &NoDelta)
    }

    /// Blocks `start..` with `delta`, then pooling and projection, from the tokens entering
    /// block `start` ([`Self::tokens_before`]).
    pub(super) fn forward_from(
        &self,
        tokens: &Tensor,
        start: usize,
        delta: &dyn ProjectionDelta,
    ) -> Result<Tensor> {
        let blocks = start..self.norms.len();
        let x = blocks_forward(self.blocks(), tokens, blocks, false, delta)?;
        let pooled = self.post_norm.forward(&x.i((.., 0, ..))?.contiguous()?)?;
        linear2d(&self.projection, &pooled)
    }
}
