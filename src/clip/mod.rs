//! CLIP: an image tower and a text tower projected into one embedding space, compared by cosine
//! similarity scaled by the checkpoint's learned temperature.
//!
//! [`Clip::load`] reads a model directory in either checkpoint layout — Hugging Face
//! `transformers` (`config.json` + `model.safetensors` or `pytorch_model.bin`) or open_clip
//! (`open_clip_config.json` + `open_clip_model.safetensors` or `open_clip_pytorch_model.bin`) —
//! with a ViT or a ModifiedResNet image tower; the user never says which. A single OpenAI file
//! (the `clip` package's TorchScript `RN50.pt`, `ViT-B-32.pt`, ..., or a `torch.save`d state dict
//! with OpenAI's names) is read too, its architecture inferred from its tensor shapes.
//! [`hub::resolve`] turns a `--model` argument (a directory, a file, `openai:NAME`, or a hub id
//! such as `openai/clip-vit-base-patch32` or `timm/resnet50_clip.openai`) into one.

pub mod error;
pub mod fingerprint;
pub mod hub;
pub mod load;
pub mod model;
pub mod precision;
pub mod train;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::clip::error::{Error, NotFound, Result};
use crate::image::Preprocess;
use crate::kernels::pool::on_pool;
use crate::tokenizer::Tokenizer;
use load::checkpoint::Checkpoint;
pub use load::config::{
    Activation, ClipConfig, EvaConfig, ResNetConfig, TextConfig, VisionConfig, VisionTower,
};
pub use load::layout::Layout;
use model::eva::Eva;
use model::resnet::ModifiedResNet;
use model::siglip::SiglipVisionTransformer;
use model::text::TextTransformer;
use model::transformer::Linear;
use model::vit::VisionTransformer;
pub use precision::Precision;

/// Config and weight file names of each layout, weights in order of preference.
pub const LAYOUT_FILES: &[(Layout, &str, &[&str])] = &[
    (
        Layout::Transformers,
        "config.json",
        &["model.safetensors", "pytorch_model.bin"],
    ),
    (
        Layout::OpenClip,
        "open_clip_config.json",
        &["open_clip_model.safetensors", "open_clip_pytorch_model.bin"],
    ),
];

/// The files of one model on disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// The model directory (for a single file, the folder it is in).
    pub dir: PathBuf,
    pub layout: Layout,
    /// The config file; `None` for a single OpenAI checkpoint file, whose architecture is
    /// inferred from its tensor shapes ([`load::state_dict::infer_config`]).
    pub config: Option<PathBuf>,
    pub weights: PathBuf,
}

impl ModelFiles {
    /// Finds the config and weight files in a model directory of either layout.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let not_found = |why| Error::ModelNotFound {
            spec: dir.display().to_string(),
            why,
        };
        if !dir.is_dir() {
            return Err(not_found(NotFound::NotADirectory));
        }
        let Some((layout, config, weights)) = LAYOUT_FILES
            .iter()
            .find(|(_, config, _)| dir.join(config).is_file())
        else {
            return Err(not_found(NotFound::NoConfig));
        };
        let weights = weights
            .iter()
            .map(|f| dir.join(f))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                not_found(NotFound::NoWeights {
                    config,
                    expected: weights.to_vec(),
                })
            })?;
        let config = dir.join(config);
        // open_clip's SigLIP and EVA02 models keep their timm tower under other keys.
        let layout = match layout {
            Layout::OpenClip => load::open_clip_config::layout_of_file(&config),
            other => *other,
        };
        Ok(ModelFiles {
            dir: dir.into(),
            layout,
            config: Some(config),
            weights,
        })
    }

    /// A single checkpoint file with OpenAI's tensor names and no config: OpenAI's TorchScript
    /// archives (`~/.cache/clip/RN50.pt`) and state dicts saved from them.
    pub fn single_file(file: &Path) -> Result<Self> {
        if !file.is_file() {
            return Err(Error::ModelNotFound {
                spec: file.display().to_string(),
                why: NotFound::NotAFile,
            });
        }
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(ModelFiles {
            dir,
            layout: Layout::OpenClip,
            config: None,
            weights: file.into(),
        })
    }

    /// The model's config, from whichever config file the layout has, or inferred from the
    /// tensor shapes of a single file.
    pub fn read_config(&self) -> Result<ClipConfig> {
        match (&self.config, self.layout) {
            (Some(c), Layout::Transformers) => ClipConfig::from_hf_file(c),
            (Some(c), Layout::OpenClip) => load::open_clip_config::from_file(c),
            (Some(_), Layout::OpenClipTimm) | (None, _) => {
                let ckpt = Checkpoint::open(&self.weights, self.layout, &Device::Cpu)?;
                self.config_with(&ckpt)
            }
        }
    }

    /// [`ModelFiles::read_config`] with the checkpoint already open: a timm tower's sizes and a
    /// single OpenAI file's whole architecture are read from its tensor shapes.
    fn config_with(&self, ckpt: &Checkpoint) -> Result<ClipConfig> {
        match (&self.config, self.layout) {
            (Some(c), Layout::OpenClipTimm) => {
                load::open_clip_config::from_file_with_tensors(c, ckpt.stored_shapes())
            }
            (None, _) => infer_config(ckpt),
            _ => self.read_config(),
        }
    }

    /// The model's tokenizer: the directory's own files when it has them, else OpenAI's BPE
    /// (always, for a single OpenAI file: a folder such as `~/.cache/clip` has no tokenizer).
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        if let Some(config) = &self.config {
            if let Some(t) = Tokenizer::from_model_dir(&self.dir)? {
                if self.layout == Layout::OpenClipTimm && t.sentencepiece().is_some() {
                    return open_clip_sentencepiece(t, config);
                }
                if t.gemma().is_some() {
                    return self.siglip2_tokenizer(t, config);
                }
                return Ok(t);
            }
        }
        Ok(Tokenizer::openai()?)
    }
}

impl ModelFiles {
    /// SigLIP 2: Gemma's tokenizer beside a SigLIP config (a `SiglipModel` `config.json`, or an
    /// open_clip config with a SigLIP tower). In open_clip's layout it runs behind open_clip's
    /// text cleaner (`text_cfg.tokenizer_kwargs.clean`, `whitespace` when absent).
    fn siglip2_tokenizer(&self, t: Tokenizer, config: &Path) -> Result<Tokenizer> {
        let model = self.read_config()?;
        if !model.is_siglip() {
            return Err(Error::Config {
                path: self.dir.join("tokenizer.json"),
                msg: format!(
                    "a Gemma tokenizer (byte-fallback BPE, SigLIP 2's) beside a model that is not \
                     SigLIP ({}); SigLIP 2 checkpoints are SiglipModel (config.json model_type \
                     `siglip`) or open_clip SigLIP towers",
                    config.display()
                ),
            });
        }
        if self.layout != Layout::OpenClipTimm {
            return Ok(t);
        }
        let doc = read_json(config)?;
        let clean = &doc["model_cfg"]["text_cfg"]["tokenizer_kwargs"]["clean"];
        let name = match clean {
            serde_json::Value::Null => "whitespace",
            v => v.as_str().unwrap_or(""),
        };
        match crate::tokenizer::gemma::OpenClipClean::from_name(name) {
            Some(c) => Ok(t.with_open_clip_clean(c)),
            None => Err(Error::Config {
                path: config.into(),
                msg: format!(
                    "text_cfg.tokenizer_kwargs.clean is {clean}: open_clip's clean functions are \
                     \"whitespace\", \"lower\" and \"canonicalize\""
                ),
            }),
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?).map_err(
        |source| Error::Json {
            path: path.into(),
            source,
        },
    )
}

/// open_clip runs a hub tokenizer behind its own text cleaner (`text_cfg.tokenizer_kwargs.clean`,
/// `whitespace` by default); its SigLIP models use `canonicalize`, the one reproduced.
fn open_clip_sentencepiece(t: Tokenizer, config: &Path) -> Result<Tokenizer> {
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?)
            .map_err(|source| Error::Json {
            path: config.into(),
            source,
        })?;
    let clean = &doc["model_cfg"]["text_cfg"]["tokenizer_kwargs"]["clean"];
    match clean.as_str() {
        Some("canonicalize") => Ok(t.with_open_clip_canonicalize()),
        _ => Err(Error::Config {
            path: config.into(),
            msg: format!(
                "text_cfg.tokenizer_kwargs.clean is {clean}: with a SentencePiece tokenizer only \
                 \"canonicalize\" (open_clip's SigLIP models) is supported"
            ),
        }),
    }
}

/// A learned scalar stored as `[]` (CLIP, open_clip) or `[1]` (`transformers`' SigLIP).
fn scalar(ckpt: &Checkpoint, name: &str) -> Result<f32> {
    let shape: &[usize] = match ckpt.shape(name).as_deref() {
        Some([1]) => &[1],
        _ => &[],
    };
    Ok(ckpt.get(name, shape)?.flatten_all()?.to_vec1::<f32>()?[0])
}

/// `build_model`'s config for a single OpenAI file; errors name the file.
fn infer_config(ckpt: &Checkpoint) -> Result<ClipConfig> {
    load::state_dict::infer_config(ckpt.stored_shapes()).map_err(|why| Error::Architecture {
        path: ckpt.file().into(),
        why,
    })
}

/// OpenAI's archives carry `input_resolution`, `context_length` and `vocab_size` as scalar
/// buffers; they must say what the shapes say.
fn check_openai_buffers(config: &ClipConfig, ckpt: &Checkpoint) -> Result<()> {
    for &name in load::state_dict::OPENAI_BUFFERS {
        if !ckpt.contains(name) {
            continue;
        }
        let stored = ckpt.get_count(name, &[])?.to_scalar::<f32>()?;
        let expected = load::state_dict::buffer_value(config, name).unwrap_or(0);
        if stored != expected as f32 {
            return Err(Error::Config {
                path: ckpt.file().into(),
                msg: format!("buffer `{name}` is {stored}, but the tensor shapes give {expected}"),
            });
        }
    }
    Ok(())
}

/// The image tower with its projection into the joint space.
enum ImageEncoder {
    Vit {
        tower: Box<VisionTransformer>,
        projection: Linear,
    },
    ResNet(Box<ModifiedResNet>),
    /// SigLIP: the attention-pooled output is the embedding. `identity` stands for the last
    /// projection it does not have (pre-projection features equal the embedding).
    Siglip {
        tower: Box<SiglipVisionTransformer>,
        identity: Linear,
    },
    /// EVA02: the normed class token, then timm's `head` (a Linear with bias).
    Eva {
        tower: Box<Eva>,
        projection: Linear,
    },
}

/// How to load a model.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Fold ResNet batch norms into the convolutions (faster; identical up to rounding).
    pub fold_batch_norm: bool,
    /// The arithmetic of the towers' linear layers and convolutions.
    pub precision: Precision,
}

impl LoadOptions {
    /// The defaults, at `precision`.
    pub fn at(precision: Precision) -> Self {
        LoadOptions {
            precision,
            ..LoadOptions::default()
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            fold_batch_norm: true,
            precision: Precision::F32,
        }
    }
}

pub struct Clip {
    config: ClipConfig,
    image: ImageEncoder,
    text: TextTransformer,
    text_projection: Linear,
    logit_scale: f32,
    logit_bias: Option<f32>,
    tokenizer: Tokenizer,
    device: Device,
    precision: Precision,
}

impl Clip {
    /// Loads a model directory or single file: config, weights (every tensor accounted for) and
    /// tokenizer (the directory's own when it has one, else the embedded OpenAI vocabulary).
    pub fn load(files: &ModelFiles, device: &Device) -> Result<Self> {
        Self::load_with(files, device, LoadOptions::default())
    }

    pub fn load_with(files: &ModelFiles, device: &Device, options: LoadOptions) -> Result<Self> {
        let ckpt = Checkpoint::open(&files.weights, files.layout, device)?
            .with_precision(options.precision);
        ckpt.preload();
        let config = files.config_with(&ckpt)?;
        let clip = Self::from_checkpoint(&config, &ckpt, files.tokenizer()?, device, options)?;
        check_openai_buffers(&config, &ckpt)?;
        ckpt.ensure_all_used()?;
        Ok(clip)
    }

    /// Builds the model from an opened checkpoint.
    pub fn from_checkpoint(
        config: &ClipConfig,
        ckpt: &Checkpoint,
        tokenizer: Tokenizer,
        device: &Device,
        options: LoadOptions,
    ) -> Result<Self> {
        let root = ckpt.scope("");
        let e = config.embed_dim;
        // `logit_scale` is stored as a log; never assume the 100 of OpenAI's checkpoints.
        let logit_scale = scalar(ckpt, "logit_scale")?.exp();
        let logit_bias = match config.is_siglip() {
            true => Some(scalar(ckpt, "logit_bias")?),
            false => None,
        };
        let image = match &config.vision {
            VisionTower::Siglip(v) => ImageEncoder::Siglip {
                tower: Box::new(SiglipVisionTransformer::load(&root.pp("vision_model"), v)?),
                identity: Linear::new(Tensor::eye(e, candle_core::DType::F32, device)?, None, None),
            },
            VisionTower::Vit(v) => ImageEncoder::Vit {
                tower: Box::new(VisionTransformer::load(
                    &root.pp("vision_model"),
                    v,
                    // open_clip resizes positions for another image size (`resize_pos_embed`).
                    (config.layout == Layout::OpenClip)
                        .then_some(model::positions::Interpolation::BicubicAntialias),
                )?),
                projection: Linear::load(&root.pp("visual_projection"), v.width, e, false)?,
            },
            VisionTower::ResNet(r) => ImageEncoder::ResNet(Box::new(ModifiedResNet::load(
                &root.pp("visual"),
                r,
                e,
                options.fold_batch_norm,
            )?)),
            VisionTower::Eva(v) => {
                let trunk = root.pp("visual").pp("trunk");
                ImageEncoder::Eva {
                    tower: Box::new(Eva::load(&trunk, v, device)?),
                    projection: Linear::load(&trunk.pp("head"), v.width, e, true)?,
                }
            }
        };
        // The tower before its projection, so that a width mismatch names the tower's tensors.
        let text = TextTransformer::load(&root.pp("text_model"), &config.text)?;
        // CLIP: `text_projection` (no bias); SigLIP: the text tower's `head` (with bias).
        let text_projection = match config.is_siglip() {
            true => Linear::load(
                &root.pp("text_model").pp("head"),
                config.text.width,
                e,
                true,
            )?,
            false => Linear::load(&root.pp("text_projection"), config.text.width, e, false)?,
        };
        Ok(Clip {
            image,
            text,
            text_projection,
            logit_scale,
            logit_bias,
            tokenizer,
            config: config.clone(),
            device: device.clone(),
            precision: root.precision(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The arithmetic of the towers' linear layers and convolutions ([`LoadOptions::precision`]).
    pub fn precision(&self) -> Precision {
        self.precision
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

    /// SigLIP's learned logit bias: scores are `sigmoid(scale · cos + bias)`, one independent
    /// probability per class. `None` for CLIP (softmax over the classes).
    pub fn logit_bias(&self) -> Option<f32> {
        self.logit_bias
    }

    /// The input side length of the image tower.
    pub fn image_size(&self) -> usize {
        self.config.vision.image_size()
    }

    /// The preprocessing this model expects: its input size and normalisation.
    pub fn preprocess(&self) -> Preprocess {
        Preprocess {
            mean: self.config.image_mean,
            std: self.config.image_std,
            // SigLIP resizes straight to the input size (its processor has no crop).
            squash: self.config.squash,
            ..Preprocess::clip(self.image_size())
        }
    }

    /// Projected, un-normalised image embeddings (`get_image_features`).
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, E)`
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        // On a pool worker: the forward's products then start without a hand-off each.
        on_pool(|| match &self.image {
            ImageEncoder::Vit { tower, projection } => projection.forward(&tower.forward(pixels)?),
            ImageEncoder::ResNet(resnet) => resnet.forward(pixels),
            ImageEncoder::Siglip { tower, .. } => tower.forward(pixels),
            ImageEncoder::Eva { tower, projection } => projection.forward(&tower.forward(pixels)?),
        })
    }

    /// The image tower's output before its last projection (ViT: the pooled, post-LayerNorm
    /// class token; ModifiedResNet: the attention pool before `c_proj`) and the projected
    /// embedding [`Clip::encode_image`] gives, computed once (bit-identical to it).
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> ((B, W), (B, E))`
    pub fn encode_image_parts(&self, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        on_pool(|| self.image_parts(pixels))
    }

    fn image_parts(&self, pixels: &Tensor) -> Result<(Tensor, Tensor)> {
        let pre = match &self.image {
            ImageEncoder::Vit { tower, .. } => tower.forward(pixels)?,
            ImageEncoder::ResNet(resnet) => resnet.forward_pre_projection(pixels)?,
            ImageEncoder::Siglip { tower, .. } => {
                let pooled = tower.forward(pixels)?;
                return Ok((pooled.clone(), pooled));
            }
            ImageEncoder::Eva { tower, .. } => tower.forward(pixels)?,
        };
        let projected = self.image_projection_layer().forward(&pre)?;
        Ok((pre, projected))
    }

    fn image_projection_layer(&self) -> &Linear {
        match &self.image {
            ImageEncoder::Vit { projection, .. } => projection,
            ImageEncoder::ResNet(resnet) => resnet.projection(),
            ImageEncoder::Siglip { identity, .. } => identity,
            ImageEncoder::Eva { projection, .. } => projection,
        }
    }

    /// The image tower's last projection as `(weight, bias)`: `weight` is `E × W` row-major
    /// (output × input; a ViT's `visual.proj` transposed), `bias` the ModifiedResNet's.
    pub fn image_projection(&self) -> Result<(Vec<f32>, usize, Option<Vec<f32>>)> {
        let layer = self.image_projection_layer();
        let w = layer.weight()?.to_dtype(candle_core::DType::F32)?;
        let (_, input) = w.dims2()?;
        Ok((
            w.flatten_all()?.to_vec1::<f32>()?,
            input,
            layer.bias().map(<[f32]>::to_vec),
        ))
    }

    /// Projected, un-normalised text embeddings (`get_text_features`) of token sequences.
    pub fn encode_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        on_pool(|| {
            self.text_projection
                .forward(&self.text.forward(ids, &self.device)?)
        })
    }

    /// Tokenizes and encodes texts (`get_text_features` of the reference tokenization).
    pub fn encode_text<S: AsRef<str>>(&self, texts: &[S]) -> Result<Tensor> {
        if self.tokenizer.vocab_size() > self.config.text.vocab_size {
            // Images still work with such a model; only texts need a tokenizer that fits.
            return Err(error::InputError::TokenizerVocabulary {
                dir: None,
                tokenizer: self.tokenizer.vocab_size(),
                model: self.config.text.vocab_size,
            }
            .into());
        }
        let ids: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| {
                self.tokenizer
                    .tokenize(t.as_ref(), self.text.context_length())
            })
            .collect();
        self.encode_tokens(&ids)
    }
}
