//! Contrastive pretraining of a small CLIP on the generated world, as Radford et al. 2021: the
//! symmetric InfoNCE loss with a learnable temperature, AdamW with warm-up and cosine decay,
//! fresh image-caption pairs every step (the world is endless, so nothing is seen twice).
//!
//! The output directory is an ordinary `transformers`-layout model — `config.json`,
//! `model.safetensors`, `tokenizer.json` — that [`Clip::load`](crate::clip::Clip::load) reads;
//! `pretrain.json` records how it was made.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rayon::prelude::*;
use serde::Serialize;

use crate::clip::error::{Error, Result};
use crate::clip::load::config::{Pooling, CLIP_MEAN, CLIP_STD};
use crate::clip::train::TrainableClip;
use crate::clip::{
    Activation, ClipConfig, Layout, ResNetConfig, TextConfig, VisionConfig, VisionTower,
};
use crate::image::Preprocess;
use crate::limits::{self, LimitError};
use crate::tokenizer::Tokenizer;
use crate::world::vocabulary::Vocabulary;
use crate::world::{self, Domain, IMAGE_SIDE};

/// The image tower of a ModifiedResNet model (open_clip layout).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ResNetShape {
    /// Bottleneck blocks per stage.
    pub layers: [usize; 4],
    /// Stem channels; the last stage has `32 · width`.
    pub width: usize,
    /// Channels per head of the attention pool.
    pub head_width: usize,
}

/// The model's shape. The defaults are the ViT world model; the shipped `assets/tiny-world-clip`
/// replaces its image tower with a ModifiedResNet (`resnet`: one block per stage, width 16).
#[derive(Debug, Clone, Serialize)]
pub struct ModelShape {
    /// A ModifiedResNet image tower instead of the ViT (whose shape is the `vision_*` fields).
    pub resnet: Option<ResNetShape>,
    pub patch_size: usize,
    pub vision_width: usize,
    pub vision_layers: usize,
    pub text_width: usize,
    pub text_layers: usize,
    pub heads: usize,
    pub embed_dim: usize,
    pub context_length: usize,
    /// Upper bound on the BPE merges learnt from the captions.
    pub max_merges: usize,
}

impl Default for ModelShape {
    fn default() -> Self {
        ModelShape {
            resnet: None,
            patch_size: 8,
            vision_width: 64,
            vision_layers: 3,
            text_width: 64,
            text_layers: 2,
            heads: 4,
            embed_dim: 64,
            context_length: 24,
            max_merges: 400,
        }
    }
}

/// What a pretraining run does.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainOptions {
    pub seed: u64,
    pub steps: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// Linear warm-up steps before the cosine decay.
    pub warmup: usize,
    /// Evaluate retrieval every this many steps (and at the end).
    pub eval_every: usize,
    pub shape: ModelShape,
    /// Replace a model already in the output folder (otherwise that is an error).
    #[serde(skip)]
    pub overwrite: bool,
}

impl Default for PretrainOptions {
    fn default() -> Self {
        PretrainOptions {
            seed: 0,
            steps: 3000,
            batch_size: 128,
            lr: 1e-3,
            weight_decay: 0.05,
            warmup: 200,
            eval_every: 250,
            shape: ModelShape::default(),
            overwrite: false,
        }
    }
}

/// Progress events of [`pretrain`].
#[derive(Debug, Clone, PartialEq)]
pub enum PretrainEvent {
    Tokenizer {
        vocab_size: usize,
    },
    Step {
        step: usize,
        steps: usize,
        loss: f32,
        lr: f64,
        logit_scale: f32,
        seconds: f64,
    },
    Eval {
        step: usize,
        eval: Retrieval,
    },
    Saved {
        dir: PathBuf,
    },
}

/// Image→text retrieval on held-out pairs: top-1 accuracy (percent) within batches of
/// [`EVAL_BATCH`] pairs, and the mean loss there.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Retrieval {
    pub image_to_text: f32,
    pub text_to_image: f32,
    pub loss: f32,
}

/// Held-out pairs per retrieval batch, and how many batches.
pub const EVAL_BATCH: usize = 128;
const EVAL_BATCHES: usize = 4;
/// Pairs of the evaluation stream come from this seed offset, never from the training one.
const EVAL_SEED_OFFSET: u64 = 1_000_003;
/// Captions the tokenizer is trained on.
const TOKENIZER_CORPUS: u64 = 20_000;

/// The summary written to `pretrain.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PretrainReport {
    pub options: PretrainOptions,
    pub seconds: f64,
    pub final_loss: f32,
    pub retrieval: Retrieval,
    pub vocab_size: usize,
    pub parameters: usize,
}

impl ModelShape {
    /// The model this shape describes, with the world tokenizer's `vocab_size`: a ViT in the
    /// `transformers` layout, or a ModifiedResNet in open_clip's; quick-GELU and CLIP's
    /// normalisation either way, as OpenAI's models.
    pub fn config(&self, vocab_size: usize) -> ClipConfig {
        let s = self;
        let (vision, layout, pooling) = match &s.resnet {
            None => (
                VisionTower::Vit(VisionConfig {
                    width: s.vision_width,
                    intermediate_size: 4 * s.vision_width,
                    layers: s.vision_layers,
                    heads: s.heads,
                    image_size: IMAGE_SIDE as usize,
                    patch_size: s.patch_size,
                    num_channels: 3,
                    activation: Activation::QuickGelu,
                    layer_norm_eps: 1e-5,
                }),
                Layout::Transformers,
                // The world vocabulary ends with its start and end tokens.
                Pooling::FirstToken(vocab_size.saturating_sub(1) as u32),
            ),
            Some(r) => (
                VisionTower::ResNet(ResNetConfig {
                    layers: r.layers,
                    width: r.width,
                    heads: (32 * r.width) / r.head_width.max(1),
                    image_size: IMAGE_SIDE as usize,
                }),
                Layout::OpenClip,
                Pooling::Argmax,
            ),
        };
        ClipConfig {
            text: TextConfig {
                vocab_size,
                width: s.text_width,
                intermediate_size: 4 * s.text_width,
                layers: s.text_layers,
                heads: s.heads,
                context_length: s.context_length,
                activation: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
                pooling,
            },
            vision,
            embed_dim: s.embed_dim,
            layout,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            squash: false,
        }
    }

    /// Checks the shape before anything is trained or written: the same rules as a loaded
    /// config's, with a vocabulary size standing in for the tokenizer's.
    pub fn validate(&self) -> std::result::Result<(), PretrainError> {
        // Sizes are bounded (named by their flags) before the products below are formed.
        limits::PATCH_SIZE.check_option("patch_size", self.patch_size)?;
        limits::WIDTH.check_option("vision_width", self.vision_width)?;
        limits::LAYERS.check_option("vision_layers", self.vision_layers)?;
        limits::WIDTH.check_option("text_width", self.text_width)?;
        limits::LAYERS.check_option("text_layers", self.text_layers)?;
        limits::HEADS.check_option("heads", self.heads)?;
        limits::WIDTH.check_option("embed_dim", self.embed_dim)?;
        limits::CONTEXT_LENGTH.check("context length", self.context_length)?;
        limits::VOCABULARY.check("BPE merges", self.max_merges)?;
        if let Some(r) = &self.resnet {
            for &blocks in &r.layers {
                limits::LAYERS.check_option("resnet_layers", blocks)?;
            }
            limits::WIDTH.check_option("resnet_width", r.width)?;
            limits::WIDTH.check_option("resnet_head_width", r.head_width)?;
        }
        if let Some(r) = &self.resnet {
            if r.head_width == 0 || (32 * r.width) % r.head_width != 0 {
                return Err(PretrainError::Shape(format!(
                    "the attention pool's width {} is not a multiple of its head width {}",
                    32 * r.width,
                    r.head_width
                )));
            }
        }
        if self.context_length < 3 {
            return Err(PretrainError::Shape(format!(
                "the context length must hold a start token, a word and an end token (got {})",
                self.context_length
            )));
        }
        self.config(self.max_merges + 512)
            .validate()
            .map_err(PretrainError::Shape)
    }

    /// The weights file of the shape's layout.
    fn weights_file(&self) -> &'static str {
        match self.resnet {
            None => "model.safetensors",
            Some(_) => "open_clip_model.safetensors",
        }
    }
}

/// A batch of pretraining pairs as model inputs.
pub struct Batch {
    pub pixels: Tensor,
    pub ids: Vec<Vec<u32>>,
}

/// Pairs `start..start + n` of stream `seed`, preprocessed as the model's users will
/// (CLIP's mean/std on the `IMAGE_SIDE`² pixels) and tokenized.
pub fn batch(
    domain: &Domain,
    seed: u64,
    start: u64,
    n: usize,
    tokenizer: &Tokenizer,
    context_length: usize,
    device: &Device,
) -> Result<Batch> {
    let pre = Preprocess::clip(IMAGE_SIDE as usize);
    let pairs: Vec<(Vec<f32>, String)> = (start..start + n as u64)
        .into_par_iter()
        .map(|i| {
            let p = world::pair(domain, seed, i);
            (pre.to_tensor_normalized(&p.image), p.caption)
        })
        .collect();
    let side = IMAGE_SIDE as usize;
    let pixels: Vec<f32> = pairs
        .iter()
        .flat_map(|(px, _)| px.iter().copied())
        .collect();
    let pixels = Tensor::from_vec(pixels, (n, 3, side, side), device)?;
    let ids = pairs
        .iter()
        .map(|(_, c)| tokenizer.tokenize(c, context_length))
        .collect();
    Ok(Batch { pixels, ids })
}

/// Trains the world tokenizer and writes `tokenizer.json` into `dir`; returns it loaded.
pub fn write_tokenizer(
    dir: &Path,
    seed: u64,
    max_merges: usize,
) -> std::result::Result<(Tokenizer, usize), PretrainError> {
    let domain = Domain::pretraining();
    let corpus: Vec<String> = (0..TOKENIZER_CORPUS)
        .map(|i| {
            let mut rng = world::WorldRng::for_item(seed ^ 0x7070, i);
            let scene = domain.sample(&mut rng);
            world::caption(&scene, &mut rng)
        })
        .collect();
    let vocab = Vocabulary::train(&corpus, max_merges);
    let path = dir.join("tokenizer.json");
    let text = to_json(&vocab.to_tokenizer_json(), &path)?;
    crate::fsutil::write_atomic(&path, text.as_bytes())?;
    let tokenizer = Tokenizer::from_tokenizer_json(&path).map_err(Error::from)?;
    Ok((tokenizer, vocab.len()))
}

/// The learning rate at `step`: linear warm-up, then cosine decay to zero.
pub fn learning_rate(o: &PretrainOptions, step: usize) -> f64 {
    if step < o.warmup {
        return o.lr * (step + 1) as f64 / o.warmup as f64;
    }
    let t = (step - o.warmup) as f64 / (o.steps - o.warmup).max(1) as f64;
    0.5 * o.lr * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
}

/// Retrieval accuracy and loss of `model` on the held-out stream.
pub fn evaluate(
    model: &TrainableClip,
    tokenizer: &Tokenizer,
    seed: u64,
    context_length: usize,
) -> Result<Retrieval> {
    let domain = Domain::pretraining();
    model.set_training(false);
    let result = retrieval(model, tokenizer, seed, context_length, &domain);
    model.set_training(true);
    result
}

fn retrieval(
    model: &TrainableClip,
    tokenizer: &Tokenizer,
    seed: u64,
    context_length: usize,
    domain: &Domain,
) -> Result<Retrieval> {
    let (mut i2t, mut t2i, mut loss) = (0.0, 0.0, 0.0);
    for b in 0..EVAL_BATCHES {
        let start = (b * EVAL_BATCH) as u64;
        let eval_seed = seed + EVAL_SEED_OFFSET;
        let batch = batch(
            domain,
            eval_seed,
            start,
            EVAL_BATCH,
            tokenizer,
            context_length,
            model.device(),
        )?;
        let img = crate::clip::model::transformer::l2_normalize(
            &model.encode_image(&batch.pixels)?.detach(),
        )?;
        let txt = crate::clip::model::transformer::l2_normalize(
            &model.encode_tokens(&batch.ids)?.detach(),
        )?;
        let sim = img.matmul(&txt.t()?)?;
        i2t += top1(&sim)?;
        t2i += top1(&sim.t()?.contiguous()?)?;
        loss += model
            .contrastive_loss(&batch.pixels, &batch.ids)?
            .to_scalar::<f32>()?;
    }
    let n = EVAL_BATCHES as f32;
    Ok(Retrieval {
        image_to_text: i2t / n,
        text_to_image: t2i / n,
        loss: loss / n,
    })
}

/// Percent of rows whose largest entry is on the diagonal. Captions may describe several
/// images equally well (attributes are left out at random), so 100 is out of reach.
fn top1(sim: &Tensor) -> Result<f32> {
    let best = sim.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?;
    let hits = best
        .iter()
        .enumerate()
        .filter(|(i, &b)| *i as u32 == b)
        .count();
    Ok(100.0 * hits as f32 / best.len() as f32)
}

/// Splits parameters into those AdamW decays (matrices) and those it leaves alone (biases,
/// norms, the temperature), as CLIP does.
fn parameter_groups(model: &TrainableClip) -> Result<(Vec<Var>, Vec<Var>)> {
    let data = model.vars().data().lock().map_err(|_| Error::Poisoned)?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let (mut decay, mut keep) = (Vec::new(), Vec::new());
    // Running statistics of batch norm are updated by the forward pass, not the optimiser.
    for name in names.into_iter().filter(|n| !n.contains("running_")) {
        let var = data[name].clone();
        if var.as_tensor().rank() >= 2 && !name.contains("embedding") {
            decay.push(var);
        } else {
            keep.push(var);
        }
    }
    Ok((decay, keep))
}

/// The model files an earlier run may have left in a folder.
const MODEL_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "open_clip_config.json",
    "open_clip_model.safetensors",
    "tokenizer.json",
];

/// Checks everything a run needs before it starts, so a bad option leaves nothing behind.
fn check_options(out: &Path, o: &PretrainOptions) -> std::result::Result<(), PretrainError> {
    if o.steps == 0 || o.batch_size < 2 {
        return Err(PretrainError::Options(format!(
            "pretraining needs at least 1 step and batches of 2 pairs (got {} steps, batch {})",
            o.steps, o.batch_size
        )));
    }
    limits::BATCH.check_option("batch_size", o.batch_size)?;
    if o.eval_every == 0 {
        return Err(PretrainError::Options(
            "the evaluation interval must be at least 1 step".into(),
        ));
    }
    if !(o.lr.is_finite() && o.lr > 0.0) {
        return Err(PretrainError::Options(format!(
            "the learning rate must be a positive number (got {})",
            o.lr
        )));
    }
    o.shape.validate()?;
    if !o.overwrite {
        if let Some(existing) = MODEL_FILES.iter().map(|f| out.join(f)).find(|p| p.exists()) {
            return Err(PretrainError::WouldOverwrite { existing });
        }
    }
    Ok(())
}

/// Pretrains a model into `out` (created if needed): tokenizer first, then `steps` AdamW
/// steps, then the weights, config and report, each written atomically. Options are checked
/// before anything is written; an existing model in `out` is kept unless `o.overwrite`.
pub fn pretrain(
    out: &Path,
    o: &PretrainOptions,
    progress: &mut dyn FnMut(PretrainEvent),
) -> std::result::Result<PretrainReport, PretrainError> {
    check_options(out, o)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let started = Instant::now();
    let device = Device::Cpu;
    let (tokenizer, vocab_size) = write_tokenizer(out, o.seed, o.shape.max_merges)?;
    progress(PretrainEvent::Tokenizer { vocab_size });
    let config = o.shape.config(vocab_size);
    config.validate().map_err(PretrainError::Shape)?;
    let (config_name, config_value) =
        crate::clip::load::write::config_file(&config, crate::clip::train::LOGIT_SCALE_INIT)?;
    let config_path = out.join(config_name);
    let config_json = to_json(&config_value, &config_path)?;
    let weights_path = out.join(o.shape.weights_file());
    let model = TrainableClip::new(&config, o.seed, &device)?;
    let (decay, keep) = parameter_groups(&model)?;
    let parameters = decay.iter().chain(&keep).map(|v| v.elem_count()).sum();
    let params = |wd| ParamsAdamW {
        lr: o.lr,
        beta1: 0.9,
        beta2: 0.98,
        eps: 1e-6,
        weight_decay: wd,
    };
    let mut opt_decay = AdamW::new(decay, params(o.weight_decay)).map_err(Error::from)?;
    let mut opt_keep = AdamW::new(keep, params(0.0)).map_err(Error::from)?;
    let domain = Domain::pretraining();
    let ctx = o.shape.context_length;
    let mut last_loss = f32::NAN;
    let mut retrieval = None;
    for step in 0..o.steps {
        let lr = learning_rate(o, step);
        opt_decay.set_learning_rate(lr);
        opt_keep.set_learning_rate(lr);
        let start = (step * o.batch_size) as u64;
        let b = batch(
            &domain,
            o.seed,
            start,
            o.batch_size,
            &tokenizer,
            ctx,
            &device,
        )?;
        let (loss, logit_scale) = train_step(&model, &b, &mut opt_decay, &mut opt_keep)?;
        last_loss = loss;
        if !last_loss.is_finite() {
            return Err(PretrainError::Diverged {
                step,
                loss: last_loss,
            });
        }
        progress(PretrainEvent::Step {
            step: step + 1,
            steps: o.steps,
            loss: last_loss,
            lr,
            logit_scale,
            seconds: started.elapsed().as_secs_f64(),
        });
        if (step + 1) % o.eval_every == 0 || step + 1 == o.steps {
            let eval = evaluate(&model, &tokenizer, o.seed, ctx)?;
            progress(PretrainEvent::Eval {
                step: step + 1,
                eval,
            });
            retrieval = Some(eval);
            // A checkpoint at every evaluation: an interrupted run still leaves a model.
            model.save_weights(&weights_path)?;
            crate::fsutil::write_atomic(&config_path, config_json.as_bytes())?;
        }
    }
    let report = PretrainReport {
        options: o.clone(),
        seconds: started.elapsed().as_secs_f64(),
        final_loss: last_loss,
        retrieval: retrieval.unwrap_or(Retrieval {
            image_to_text: 0.0,
            text_to_image: 0.0,
            loss: f32::NAN,
        }),
        vocab_size,
        parameters,
    };
    let report_path = out.join("pretrain.json");
    let text = to_json(&report, &report_path)?;
    crate::fsutil::write_atomic(&report_path, text.as_bytes())?;
    progress(PretrainEvent::Saved {
        dir: out.to_path_buf(),
    });
    Ok(report)
}

/// One AdamW step on a batch; returns the loss and the temperature before the step.
fn train_step(
    model: &TrainableClip,
    b: &Batch,
    opt_decay: &mut AdamW,
    opt_keep: &mut AdamW,
) -> Result<(f32, f32)> {
    let loss = model.contrastive_loss(&b.pixels, &b.ids)?;
    let grads = loss.backward()?;
    opt_decay.step(&grads)?;
    opt_keep.step(&grads)?;
    Ok((
        loss.to_scalar::<f32>()?,
        model.logit_scale().to_scalar::<f32>()?.exp(),
    ))
}

fn to_json<T: Serialize>(value: &T, path: &Path) -> std::result::Result<String, PretrainError> {
    serde_json::to_string_pretty(value).map_err(|source| PretrainError::Serialize {
        path: path.to_path_buf(),
        source,
    })
}

/// What can stop pretraining.
#[derive(Debug, thiserror::Error)]
pub enum PretrainError {
    #[error("{0}")]
    Options(String),
    #[error("invalid model shape: {0}")]
    Shape(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
    #[error(
        "{} already exists: pretraining would overwrite a model (choose another {}, or pass {})",
        existing.display(),
        crate::hint::opt("out"),
        crate::hint::switch("overwrite")
    )]
    WouldOverwrite { existing: PathBuf },
    #[error(
        "the loss diverged at step {step} ({loss}); try a smaller {}",
        crate::hint::opt("lr")
    )]
    Diverged { step: usize, loss: f32 },
    #[error("cannot serialise {}", path.display())]
    Serialize {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the model's config")]
    Config(#[from] crate::clip::load::write::WriteConfigError),
    #[error(transparent)]
    Clip(#[from] Error),
    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),
}

impl From<candle_core::Error> for PretrainError {
    fn from(e: candle_core::Error) -> Self {
        PretrainError::Clip(e.into())
    }
}
