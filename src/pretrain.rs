//! Contrastive pretraining of a small CLIP on the generated world (issue 6; PAPER.md §1): the
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
use serde_json::json;

use crate::clip::train::TrainableClip;
use crate::clip::ClipConfig;
use crate::error::{Error, Result};
use crate::image::Preprocess;
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

/// The model's shape. The defaults are the shipped `assets/tiny-world-clip`.
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

/// The HF `config.json` of a shape (quick-GELU, CLIP's init values).
pub fn hf_config(shape: &ModelShape, vocab_size: usize) -> serde_json::Value {
    let s = shape;
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": s.embed_dim,
        "logit_scale_init_value": crate::clip::train::LOGIT_SCALE_INIT,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": vocab_size,
            "hidden_size": s.text_width,
            "intermediate_size": 4 * s.text_width,
            "num_hidden_layers": s.text_layers,
            "num_attention_heads": s.heads,
            "max_position_embeddings": s.context_length,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "bos_token_id": vocab_size - 2,
            "eos_token_id": vocab_size - 1,
            "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": s.vision_width,
            "intermediate_size": 4 * s.vision_width,
            "num_hidden_layers": s.vision_layers,
            "num_attention_heads": s.heads,
            "num_channels": 3,
            "image_size": IMAGE_SIDE,
            "patch_size": s.patch_size,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
        },
    })
}

/// The `open_clip_config.json` of a ResNet shape (quick-GELU text tower, CLIP's preprocessing).
pub fn open_clip_config(
    shape: &ModelShape,
    r: &ResNetShape,
    vocab_size: usize,
) -> serde_json::Value {
    let s = shape;
    json!({
        "model_cfg": {
            "embed_dim": s.embed_dim,
            "quick_gelu": true,
            "vision_cfg": {
                "image_size": IMAGE_SIDE,
                "layers": r.layers,
                "width": r.width,
                "head_width": r.head_width,
            },
            "text_cfg": {
                "context_length": s.context_length,
                "vocab_size": vocab_size,
                "width": s.text_width,
                "heads": s.heads,
                "layers": s.text_layers,
            },
        },
        "preprocess_cfg": {
            "mean": crate::clip::load::config::CLIP_MEAN,
            "std": crate::clip::load::config::CLIP_STD,
        },
    })
}

/// The config file name, its contents and the weights file name of a shape's layout.
fn model_files(
    shape: &ModelShape,
    vocab_size: usize,
) -> (&'static str, serde_json::Value, &'static str) {
    match &shape.resnet {
        None => (
            "config.json",
            hf_config(shape, vocab_size),
            "model.safetensors",
        ),
        Some(r) => (
            "open_clip_config.json",
            open_clip_config(shape, r, vocab_size),
            "open_clip_model.safetensors",
        ),
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
pub fn write_tokenizer(dir: &Path, seed: u64, max_merges: usize) -> Result<(Tokenizer, usize)> {
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
    let text = serde_json::to_string_pretty(&vocab.to_tokenizer_json())
        .map_err(|e| Error::InvalidInput(format!("serialising tokenizer.json: {e}")))?;
    crate::fsutil::write_atomic(&path, text.as_bytes())?;
    let tokenizer = Tokenizer::from_tokenizer_json(&path)?;
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
    let data = model.vars().data().lock().map_err(|_| {
        Error::InvalidInput("a training thread panicked while holding the weights".into())
    })?;
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

/// Pretrains a model into `out` (created if needed): tokenizer first, then `steps` AdamW
/// steps, then the weights, config and report, each written atomically.
pub fn pretrain(
    out: &Path,
    o: &PretrainOptions,
    progress: &mut dyn FnMut(PretrainEvent),
) -> Result<PretrainReport> {
    if o.steps == 0 || o.batch_size < 2 {
        return Err(Error::InvalidInput(format!(
            "pretraining needs at least 1 step and batches of 2 pairs (got {} steps, batch {})",
            o.steps, o.batch_size
        )));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let started = Instant::now();
    let device = Device::Cpu;
    let (tokenizer, vocab_size) = write_tokenizer(out, o.seed, o.shape.max_merges)?;
    progress(PretrainEvent::Tokenizer { vocab_size });
    let (config_name, config_value, weights_name) = model_files(&o.shape, vocab_size);
    let config_json = serde_json::to_string_pretty(&config_value)
        .map_err(|e| Error::InvalidInput(format!("serialising {config_name}: {e}")))?;
    let config_path = out.join(config_name);
    let config = match &o.shape.resnet {
        None => ClipConfig::from_hf_json(&config_json, &config_path)?,
        Some(_) => crate::clip::load::open_clip_config::from_model_cfg(&config_value["model_cfg"])
            .map_err(|msg| Error::Config {
                path: config_path.clone(),
                msg,
            })?,
    };
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
    let mut opt_decay = AdamW::new(decay, params(o.weight_decay))?;
    let mut opt_keep = AdamW::new(keep, params(0.0))?;
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
        let loss = model.contrastive_loss(&b.pixels, &b.ids)?;
        let grads = loss.backward()?;
        opt_decay.step(&grads)?;
        opt_keep.step(&grads)?;
        last_loss = loss.to_scalar::<f32>()?;
        if !last_loss.is_finite() {
            return Err(Error::InvalidInput(format!(
                "the loss diverged at step {step} ({last_loss}); try a smaller --lr"
            )));
        }
        progress(PretrainEvent::Step {
            step: step + 1,
            steps: o.steps,
            loss: last_loss,
            lr,
            logit_scale: model.logit_scale().to_scalar::<f32>()?.exp(),
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
            model.save_weights(&out.join(weights_name))?;
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
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| Error::InvalidInput(format!("serialising pretrain.json: {e}")))?;
    crate::fsutil::write_atomic(&out.join("pretrain.json"), text.as_bytes())?;
    progress(PretrainEvent::Saved {
        dir: out.to_path_buf(),
    });
    Ok(report)
}
