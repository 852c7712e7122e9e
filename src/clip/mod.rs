//! CLIP: an image tower and a text tower projected into one embedding space, compared by cosine
//! similarity scaled by the checkpoint's learned temperature.
//!
//! [`Clip::load`] reads a model directory in the Hugging Face `transformers` layout
//! (`config.json` + `model.safetensors` or `pytorch_model.bin`); [`hub::resolve`] turns a
//! `--model` argument (a directory or a hub id such as `openai/clip-vit-base-patch32`) into one.

pub mod checkpoint;
pub mod config;
pub mod hub;
mod ops;
pub mod text;
pub mod transformer;
pub mod vit;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;
use checkpoint::Checkpoint;
pub use config::{Activation, ClipConfig, TextConfig, VisionConfig};
use text::TextTransformer;
use transformer::Linear;
use vit::VisionTransformer;

/// Weight files we can read, in order of preference.
pub const WEIGHT_FILES: &[&str] = &["model.safetensors", "pytorch_model.bin"];

/// The files of one model on disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub dir: PathBuf,
    pub config: PathBuf,
    pub weights: PathBuf,
}

impl ModelFiles {
    /// Finds the config and weight files in a `transformers`-layout directory.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::ModelNotFound {
                spec: dir.display().to_string(),
                msg: "not a directory".into(),
            });
        }
        let config = dir.join("config.json");
        if !config.is_file() {
            let hint = if dir.join("open_clip_config.json").is_file() {
                " (this is an open_clip checkpoint; only the transformers layout is supported so far)"
            } else {
                ""
            };
            return Err(Error::ModelNotFound {
                spec: dir.display().to_string(),
                msg: format!("no config.json in the directory{hint}"),
            });
        }
        let weights = WEIGHT_FILES
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| Error::ModelNotFound {
                spec: dir.display().to_string(),
                msg: format!("no weights in the directory (expected one of {})", WEIGHT_FILES.join(", ")),
            })?;
        Ok(ModelFiles {
            dir: dir.into(),
            config,
            weights,
        })
    }
}

pub struct Clip {
    config: ClipConfig,
    vision: VisionTransformer,
    text: TextTransformer,
    visual_projection: Linear,
    text_projection: Linear,
    logit_scale: f32,
    tokenizer: Tokenizer,
    device: Device,
}

impl Clip {
    /// Loads a model directory: config, weights (every tensor accounted for) and tokenizer (the
    /// directory's own when it has one, else the embedded OpenAI vocabulary).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        let config = ClipConfig::from_hf_file(&files.config)?;
        let ckpt = Checkpoint::open(&files.weights, device)?;
        let tokenizer = match Tokenizer::from_model_dir(&files.dir)? {
            Some(t) => t,
            None => Tokenizer::openai()?,
        };
        let clip = Self::from_checkpoint(&config, &ckpt, tokenizer, device)?;
        ckpt.ensure_all_used()?;
        Ok(clip)
    }

    /// Builds the model from an opened checkpoint in the `transformers` key layout.
    pub fn from_checkpoint(
        config: &ClipConfig,
        ckpt: &Checkpoint,
        tokenizer: Tokenizer,
        device: &Device,
    ) -> Result<Self> {
        let root = ckpt.scope("");
        let e = config.embed_dim;
        // `logit_scale` is stored as a log; never assume the 100 of OpenAI's checkpoints.
        let logit_scale = root.get("logit_scale", &[])?.to_scalar::<f32>()?.exp();
        Ok(Clip {
            vision: VisionTransformer::load(&root.pp("vision_model"), &config.vision)?,
            text: TextTransformer::load(&root.pp("text_model"), &config.text)?,
            visual_projection: Linear::load(&root.pp("visual_projection"), config.vision.width, e, false)?,
            text_projection: Linear::load(&root.pp("text_projection"), config.text.width, e, false)?,
            logit_scale,
            tokenizer,
            config: config.clone(),
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// `exp(logit_scale)` of the checkpoint: the multiplier of cosine similarities.
    pub fn logit_scale(&self) -> f32 {
        self.logit_scale
    }

    /// The input side length of the image tower.
    pub fn image_size(&self) -> usize {
        self.config.vision.image_size
    }

    /// Projected, un-normalised image embeddings (`get_image_features`).
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, E)`
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        self.visual_projection.forward(&self.vision.forward(pixels)?)
    }

    /// Projected, un-normalised text embeddings (`get_text_features`) of token sequences.
    pub fn encode_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        self.text_projection
            .forward(&self.text.forward(ids, &self.device)?)
    }

    /// Tokenizes and encodes texts (`get_text_features` of the reference tokenization).
    pub fn encode_text<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        if self.tokenizer.vocab_size() > self.config.text.vocab_size {
            // Images still work with such a model; only texts need a tokenizer that fits.
            return Err(Error::InvalidInput(format!(
                "the tokenizer has {} tokens but the model's text tower only {}: put the model's \
                 own tokenizer files (tokenizer.json, or vocab.json + merges.txt) in its directory",
                self.tokenizer.vocab_size(),
                self.config.text.vocab_size
            )));
        }
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.tokenizer.tokenize(t.as_ref(), self.text.context_length()))
            .collect();
        self.encode_tokens(&ids)
    }
}
