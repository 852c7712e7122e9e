//! CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models",
//! CVPR Workshops 2024; `MaxZanella/CLIP-LoRA` `lora.py`, `run_utils.py`, `loralib/`).
//!
//! Low-rank updates in the attention of both towers ([`crate::clip::train::lora`]) trained on the
//! images themselves, as the reference's `run_lora` does:
//! - the class prompts are the dataset's first template only (`dataset.template[0]`), encoded
//!   through the adapted text tower at every step;
//! - images through the adapted image tower, `RandomResizedCrop(224, scale (0.08, 1), bicubic)`
//!   and a horizontal flip (the reference's `train_tranform`);
//! - cross-entropy of `logit_scale · cos`, the scale the checkpoint's, frozen;
//! - AdamW (betas 0.9/0.999, weight decay 1e-2) at lr 2e-4 on the LoRA matrices, cosine to 1e-6
//!   over `500 × shots` steps of batch 32 (`n_iters × shots`), the schedule stepped every step;
//! - the last step is kept: the reference's validation is switched off (`VALIDATION = False`).
//!
//! Two options of ours, not the reference's, make steps cheaper: `last:K` placements
//! (`--lora-last`) run the frozen text layers below the updates once for the fixed prompts
//! (exact), and [`ClipLoraOptions::views`] (`--lora-views`) trains on fixed views encoded once
//! (`ViewPool`) instead of fresh crops.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, Var, D};
use rayon::prelude::*;

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{seeded_rng, Matrix};
use super::method::method_boilerplate;
use super::optim::AdamW;
use super::overrides::MethodOverrides;
use super::zero_shot::cosine_logits;
use super::{
    Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, ImageContext,
    LabelledSet, Method, MethodCard, MethodError, Needs, Progress,
};
use crate::clip::train::lora::{LoraClip, LoraOptions, TextPrefix};
use crate::clip::Clip;
use crate::image::augment::{Augment, ViewRng};
use crate::kernels::pool::on_pool;

/// The reference's AdamW weight decay.
pub const WEIGHT_DECAY: f32 = 1e-2;
/// The floor of the cosine schedule (`eta_min`).
pub const FLOOR_LR: f32 = 1e-6;

/// `CosineAnnealingLR(T_max = total, eta_min = floor)` after `step` steps.
pub fn cosine_lr(base: f32, floor: f32, step: usize, total: usize) -> f32 {
    let t = std::f64::consts::PI * step as f64 / total.max(1) as f64;
    (floor as f64 + (base - floor) as f64 * 0.5 * (1.0 + t.cos())) as f32
}

/// What a step's images are: pixels through the adapted image tower, the tokens entering its
/// first layer that runs at every step ([`LoraClip::image_tokens`], for fixed views), or
/// features the frozen image tower made (when only the text tower is adapted).
pub enum StepImages<'a> {
    Pixels(&'a Tensor),
    Tokens(&'a Tensor),
    Features(&'a Tensor),
}

/// What a step's class prompts are: token rows through the whole text tower, or their hidden
/// states entering the first layer that must run at every step, computed once
/// ([`LoraClip::text_prefix`]); both give the same logits and gradients.
#[derive(Clone, Copy)]
pub enum StepText<'a> {
    Ids(&'a [Vec<u32>]),
    Prefix(&'a TextPrefix),
}

/// The optimiser and schedule over a model's LoRA matrices.
pub struct LoraTrainer<'m> {
    model: &'m LoraClip,
    vars: Vec<Var>,
    opt: AdamW,
    base_lr: f32,
    total: usize,
    steps: usize,
}

fn unit_rows(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

impl<'m> LoraTrainer<'m> {
    /// `total` steps from `lr` down the cosine.
    pub fn new(model: &'m LoraClip, lr: f32, total: usize) -> Self {
        LoraTrainer {
            vars: model.vars().into_iter().map(|(_, v)| v).collect(),
            opt: AdamW::new(1e-8, WEIGHT_DECAY),
            model,
            base_lr: lr,
            total,
            steps: 0,
        }
    }

    /// The learning rate of the next step.
    pub fn lr(&self) -> f32 {
        cosine_lr(self.base_lr, FLOOR_LR, self.steps, self.total)
    }

    /// `logit_scale · cos(image, class)` of a batch, `(B, K)`, one column per class prompt.
    pub fn logits(&self, images: StepImages, prompts: StepText) -> Result<Tensor, MethodError> {
        let img = match images {
            StepImages::Pixels(p) => self.model.encode_image(p)?,
            StepImages::Tokens(t) => self.model.encode_image_tokens(t)?,
            StepImages::Features(f) => f.clone(),
        };
        let txt = match prompts {
            StepText::Ids(ids) => self.model.encode_tokens(ids)?,
            StepText::Prefix(p) => self.model.encode_prefix(p)?,
        };
        let logits = unit_rows(&img)?.matmul(&unit_rows(&txt)?.t()?)?;
        Ok((logits * self.model.logit_scale() as f64)?)
    }

    /// One AdamW step on the cross-entropy of a batch; returns the loss before the step. Runs
    /// on a worker of rayon's pool ([`on_pool`]): the step's hundreds of products and passes
    /// then start without a hand-off each.
    pub fn step(
        &mut self,
        images: StepImages,
        prompts: StepText,
        labels: &[u32],
    ) -> Result<f32, MethodError> {
        on_pool(|| self.step_here(images, prompts, labels))
    }

    fn step_here(
        &mut self,
        images: StepImages,
        prompts: StepText,
        labels: &[u32],
    ) -> Result<f32, MethodError> {
        let logits = self.logits(images, prompts)?;
        let targets = Tensor::from_slice(labels, labels.len(), logits.device())?;
        let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
        let grads = loss.backward()?;
        let mut params = Vec::with_capacity(self.vars.len());
        let mut gradients = Vec::with_capacity(self.vars.len());
        for var in &self.vars {
            params.push(var.as_tensor().flatten_all()?.to_vec1::<f32>()?);
            gradients.push(match grads.get(var.as_tensor()) {
                Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
                // Every update takes part in every forward; a missing gradient is a zero one.
                None => vec![0.0; var.elem_count()],
            });
        }
        let lr = self.lr();
        {
            let mut p: Vec<&mut [f32]> = params.iter_mut().map(|v| v.as_mut_slice()).collect();
            let g: Vec<&[f32]> = gradients.iter().map(|v| v.as_slice()).collect();
            self.opt.step(&mut p, &g, lr);
        }
        for (var, values) in self.vars.iter().zip(params) {
            var.set(&Tensor::from_vec(values, var.shape(), var.device())?)?;
        }
        self.steps += 1;
        Ok(loss.to_scalar::<f32>()?)
    }
}

/// The reference's `--n_iters`: training runs `n_iters × shots` steps.
pub const ITERS_PER_SHOT: usize = 500;
/// Images encoded per forward pass when evaluating.
const EVAL_BATCH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub struct ClipLoraOptions {
    pub lora: LoraOptions,
    pub lr: f32,
    pub iters_per_shot: usize,
    pub batch_size: usize,
    pub seed: u64,
    /// Ours, not the reference's: `Some(V)` trains on V fixed augmented views per training
    /// image, encoded once up to the first layer that runs at every step (`ViewPool`);
    /// `None` crops afresh at every step, as the reference does.
    pub views: Option<usize>,
}

impl Default for ClipLoraOptions {
    fn default() -> Self {
        ClipLoraOptions {
            lora: LoraOptions::default(),
            lr: 2e-4,
            iters_per_shot: ITERS_PER_SHOT,
            batch_size: 32,
            seed: 1,
            views: None,
        }
    }
}

/// The frozen model beside the adapted one, when only the text tower is adapted: the image
/// features are its own, as the reference computes them under `no_grad`.
enum ImageSide {
    Adapted,
    Frozen(Box<Clip>),
}

impl ImageSide {
    /// Where `model`'s image features come from, at the precision of `cx`'s features.
    fn of(model: &LoraClip, cx: &ImageContext) -> Result<Self, MethodError> {
        Ok(match model.options().encoder.vision() {
            true => ImageSide::Adapted,
            false => {
                let options = crate::clip::LoadOptions::at(cx.precision);
                ImageSide::Frozen(Box::new(Clip::load_with(&cx.model, &Device::Cpu, options)?))
            }
        })
    }
}

/// The model inputs of a batch of images, each with the key that seeds its crops (`augment`: a
/// fresh random crop and flip per image and step, as the reference's loader draws them).
fn batch_pixels(
    paths: &[(&PathBuf, &str)],
    cx: &ImageContext,
    augment: Option<(&Augment, u64, u32)>,
) -> Result<Tensor, MethodError> {
    let p = &cx.images.preprocess;
    let rows = paths
        .par_iter()
        .map(|&(path, key)| {
            let img = crate::image::decode_file(path).map_err(crate::clip::error::Error::from)?;
            Ok(match augment {
                Some((a, seed, step)) => {
                    let mut rng = ViewRng::new(seed, step, key);
                    p.to_tensor_normalized(&a.apply(&img, &mut rng))
                }
                None => p.apply(&img),
            })
        })
        .collect::<Result<Vec<Vec<f32>>, MethodError>>()?;
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    Ok(Tensor::from_vec(flat, (paths.len(), 3, p.size, p.size), &Device::Cpu)?)
}

/// Image features of a batch, through the adapted tower or the frozen one.
fn image_features(model: &LoraClip, side: &ImageSide, pixels: &Tensor) -> Result<Tensor, MethodError> {
    Ok(match side {
        ImageSide::Adapted => model.encode_image(pixels)?,
        ImageSide::Frozen(clip) => clip.encode_image(pixels)?,
    })
}

/// The class prompts: the first template with each class name, `_` read as a space (the
/// reference's `template[0].format(classname.replace('_', ' '))`).
fn prompt_ids(cx: &ImageContext, model: &LoraClip, classnames: &[String]) -> Result<Vec<Vec<u32>>, MethodError> {
    let template = cx.templates.first().map_or(crate::zero_shot::DEFAULT_TEMPLATE, |t| t.as_str());
    let tokenizer = cx.model.tokenizer()?;
    let ctx = model.config().text.context_length;
    classnames
        .iter()
        .map(|c| {
            let text = crate::zero_shot::format_prompt(template, &c.replace('_', " "))?;
            Ok(tokenizer.tokenize(&text, ctx))
        })
        .collect()
}

fn to_matrix(t: &Tensor) -> Result<Matrix, MethodError> {
    let (rows, cols) = t.dims2()?;
    Ok(Matrix {
        rows,
        cols,
        data: t.flatten_all()?.to_vec1::<f32>()?,
    })
}

/// Salt of the stream that picks each step's cached view of each image.
const VIEW_PICK_SALT: u64 = 0x7669_6577_2d70_6963;
/// The most memory the cached views may take.
const VIEW_POOL_BYTES: usize = 8 << 30;

/// Our image-side rule for `--lora-views V`, not the reference's protocol (which crops afresh
/// at every step): V augmented views of each training image, drawn once with the fresh-crop
/// rule (view `v` of an image is the crop step `v` would draw), each run once through the
/// frozen layers below the first adapted one (the whole frozen tower when only the text
/// tower is adapted); every step picks one cached view per image at random.
struct ViewPool {
    /// View-major: row `v·N + i` is view `v` of training image `i`.
    rows: Tensor,
    images: usize,
    views: usize,
    pick: crate::rng::SplitMix64,
}

impl ViewPool {
    fn build(
        model: &LoraClip,
        side: &ImageSide,
        cx: &ImageContext,
        (views, seed): (usize, u64),
    ) -> Result<Self, MethodError> {
        let (train, keys) = (&cx.images.train, &cx.images.train_keys);
        let augment = Augment::coop(cx.images.preprocess.size as u32);
        let mut parts = Vec::new();
        for view in 0..views {
            for (c, chunk) in train.chunks(EVAL_BATCH).enumerate() {
                let first = c * EVAL_BATCH;
                let paths: Vec<(&PathBuf, &str)> =
                    (chunk.iter().enumerate()).map(|(j, p)| (p, keys[first + j].as_str())).collect();
                let pixels = batch_pixels(&paths, cx, Some((&augment, seed, view as u32)))?;
                let rows = match side {
                    ImageSide::Adapted => model.image_tokens(&pixels)?,
                    ImageSide::Frozen(clip) => clip.encode_image(&pixels)?.detach(),
                };
                if parts.is_empty() {
                    // Checked on the first part, before the rest is allocated.
                    let per_row = rows.elem_count() / rows.dim(0)?.max(1);
                    let bytes = (views.checked_mul(train.len())).and_then(|n| n.checked_mul(per_row * 4));
                    if bytes.is_none_or(|b| b > VIEW_POOL_BYTES) {
                        return Err(MethodError::option(
                            "lora-views",
                            views,
                            "the cached views would take more than 8 GiB of memory; use fewer",
                        ));
                    }
                }
                parts.push(rows);
            }
        }
        Ok(ViewPool {
            rows: Tensor::cat(&parts, 0)?,
            images: train.len(),
            views,
            pick: crate::rng::SplitMix64::salted(seed, VIEW_PICK_SALT),
        })
    }

    /// One cached view of each of `images` (training image indices), drawn afresh.
    fn batch(&mut self, images: &[usize]) -> Result<Tensor, MethodError> {
        let index: Vec<u32> = (images.iter())
            .map(|&i| (self.pick.below(self.views) * self.images + i) as u32)
            .collect();
        let index = Tensor::from_vec(index, images.len(), self.rows.device())?;
        Ok(self.rows.index_select(&index, 0)?)
    }
}

/// What one step's batch of images becomes before the step.
enum BatchImages {
    Pixels(Tensor),
    Tokens(Tensor),
    Features(Tensor),
}

impl BatchImages {
    fn as_step(&self) -> StepImages<'_> {
        match self {
            BatchImages::Pixels(t) => StepImages::Pixels(t),
            BatchImages::Tokens(t) => StepImages::Tokens(t),
            BatchImages::Features(t) => StepImages::Features(t),
        }
    }
}

/// The images of training rows `rows` at step `step`: cached views when there is a pool, a
/// fresh crop of each otherwise.
fn batch_images(
    (model, side, pool): (&LoraClip, &ImageSide, Option<&mut ViewPool>),
    cx: &ImageContext,
    rows: &[usize],
    (seed, step): (u64, usize),
) -> Result<BatchImages, MethodError> {
    if let Some(pool) = pool {
        let cached = pool.batch(rows)?;
        return Ok(match side {
            ImageSide::Adapted => BatchImages::Tokens(cached),
            ImageSide::Frozen(_) => BatchImages::Features(cached),
        });
    }
    let (train, keys) = (&cx.images.train, &cx.images.train_keys);
    let paths: Vec<(&PathBuf, &str)> = rows.iter().map(|&i| (&train[i], keys[i].as_str())).collect();
    let augment = Augment::coop(cx.images.preprocess.size as u32);
    let pixels = batch_pixels(&paths, cx, Some((&augment, seed, step as u32)))?;
    Ok(match side {
        ImageSide::Adapted => BatchImages::Pixels(pixels),
        ImageSide::Frozen(_) => BatchImages::Features(image_features(model, side, &pixels)?),
    })
}

/// Refuses options and inputs a fit cannot run on, before the model is read.
fn check_fit(task: &FewShotTask, opts: &ClipLoraOptions, cx: &ImageContext) -> Result<(), MethodError> {
    if !(opts.lr > 0.0 && opts.lr.is_finite()) {
        return Err(MethodError::option("lr", opts.lr, "must be positive"));
    }
    if !(0.0..1.0).contains(&opts.lora.dropout) {
        return Err(MethodError::option("lora-dropout", opts.lora.dropout, "must be in [0, 1)"));
    }
    if opts.views == Some(0) {
        return Err(MethodError::option("lora-views", 0, "must be at least 1"));
    }
    let (train, test) = (&cx.images.train, &cx.images.test);
    if train.len() != task.train.labels.len() {
        return Err(MethodError::Rows {
            what: "the training images",
            found: train.len(),
            labels: task.train.labels.len(),
        });
    }
    if cx.images.train_keys.len() != train.len() {
        return Err(MethodError::Rows {
            what: "the training images' crop keys",
            found: cx.images.train_keys.len(),
            labels: train.len(),
        });
    }
    if test.len() != task.test.labels.len() {
        return Err(MethodError::Rows {
            what: "the test images",
            found: test.len(),
            labels: task.test.labels.len(),
        });
    }
    Ok(())
}

pub fn fit(
    task: &FewShotTask,
    opts: &ClipLoraOptions,
    cx: &ImageContext,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fit, MethodError> {
    check_fit(task, opts, cx)?;
    let model = LoraClip::load(&cx.model, &opts.lora, opts.seed, &Device::Cpu)?.at(cx.precision)?;
    let side = ImageSide::of(&model, cx)?;
    let prompts = prompt_ids(cx, &model, &task.classnames)?;
    // The prompts are fixed, so the frozen text layers below the first adapted one (all of
    // them when the text tower is not adapted) give the same states at every step.
    let prefix = model.text_prefix(&prompts)?;
    let text = StepText::Prefix(&prefix);
    let mut pool = match opts.views {
        Some(v) => Some(ViewPool::build(&model, &side, cx, (v, opts.seed))?),
        None => None,
    };
    let total = opts.iters_per_shot * task.shots().max(1);
    let n = cx.images.train.len();
    let batch = opts.batch_size.min(n).max(1);
    // The reference's loader drops the last incomplete batch when a full one exists.
    let per_epoch = (n / batch).max(1);
    let epochs = total.div_ceil(per_epoch);
    let mut trainer = LoraTrainer::new(&model, opts.lr, total);
    let mut rng = seeded_rng(opts.seed);
    model.set_training(Some(opts.seed))?;
    let mut losses = Vec::with_capacity(epochs);
    let mut step = 0usize;
    for epoch in 0..epochs {
        let order = rng.permutation(n);
        let mut sum = 0.0;
        let mut count = 0;
        for rows in order.chunks_exact(batch).take(per_epoch) {
            if step == total {
                break;
            }
            let labels: Vec<u32> = rows.iter().map(|&i| task.train.labels[i] as u32).collect();
            let images = batch_images((&model, &side, pool.as_mut()), cx, rows, (opts.seed, step))?;
            let loss = trainer.step(images.as_step(), text, &labels)?;
            if !loss.is_finite() {
                return Err(MethodError::Diverged { epoch, loss });
            }
            sum += loss;
            count += 1;
            step += 1;
        }
        let mean = sum / count.max(1) as f32;
        losses.push(mean);
        progress(Progress::Epoch {
            epoch: epoch + 1,
            epochs,
            loss: mean,
        });
    }
    model.set_training(None)?;
    fitted(&model, &side, cx, (task, opts, &prompts), (step, losses))
}

/// The fit's head, chosen values and adapted test features, once training is done.
fn fitted(
    model: &LoraClip,
    side: &ImageSide,
    cx: &ImageContext,
    (task, opts, prompts): (&FewShotTask, &ClipLoraOptions, &[Vec<u32>]),
    (step, losses): (usize, Vec<f32>),
) -> Result<Fit, MethodError> {
    let classes = unit_rows(&model.encode_tokens(prompts)?)?;
    let features = test_features(model, side, cx)?;
    let head = LoraHead {
        classes: to_matrix(&classes)?,
        logit_scale: model.logit_scale(),
        lora: opts.lora,
        updates: (model.vars().into_iter())
            .map(|(name, v)| Ok((name, v.dims().to_vec(), v.as_tensor().flatten_all()?.to_vec1::<f32>()?)))
            .collect::<Result<_, MethodError>>()?,
    };
    Ok(Fit {
        fitted: Fitted {
            head: Head::new(head),
            chosen: vec![("steps".into(), step.to_string())],
            losses,
        },
        prompt: None,
        adapted_test: Some(Box::new(LabelledSet {
            features,
            labels: task.test.labels.clone(),
        })),
    })
}

/// The features of `cx`'s test images through the adapted image tower (the frozen one when only
/// the text tower is adapted), in evaluation, one row per image.
fn test_features(model: &LoraClip, side: &ImageSide, cx: &ImageContext) -> Result<Matrix, MethodError> {
    let test = &cx.images.test;
    let mut data = Vec::new();
    let mut cols = 0;
    for chunk in test.chunks(EVAL_BATCH) {
        let paths: Vec<(&PathBuf, &str)> = chunk.iter().map(|p| (p, "")).collect();
        let pixels = batch_pixels(&paths, cx, None)?;
        let f = image_features(model, side, &pixels)?.detach();
        cols = f.dim(1)?;
        data.extend(f.flatten_all()?.to_vec1::<f32>()?);
    }
    if test.is_empty() {
        cols = model.config().embed_dim;
    }
    Ok(Matrix {
        rows: test.len(),
        cols,
        data,
    })
}

/// Accuracy (percent) of a trained CLIP-LoRA on classes and images it may never have seen, with
/// its updates active on both sides, as the reference evaluates it: `classnames` through its
/// adapted text tower (the first template, as in training), `cx`'s test images (labelled
/// `labels`, among `classnames`) through its adapted image tower, or through the frozen one
/// when it adapted the text tower only. Base-to-new's new classes and the transfer protocols'
/// targets are scored so.
pub fn accuracy_on(
    head: &LoraHead,
    cx: &ImageContext,
    classnames: &[String],
    labels: &[usize],
) -> Result<f32, MethodError> {
    if cx.images.test.len() != labels.len() {
        return Err(MethodError::Rows {
            what: "the test images",
            found: cx.images.test.len(),
            labels: labels.len(),
        });
    }
    let model = LoraClip::load(&cx.model, &head.lora, 0, &Device::Cpu)?.at(cx.precision)?;
    model.set_vars(&head.tensors()?)?;
    let side = ImageSide::of(&model, cx)?;
    let prompts = prompt_ids(cx, &model, classnames)?;
    let classes = to_matrix(&unit_rows(&model.encode_tokens(&prompts)?.detach())?)?;
    let features = test_features(&model, &side, cx)?;
    let scored = LoraHead {
        classes,
        ..head.clone()
    };
    Ok(super::eval::accuracy(&scored.logits(&features), labels))
}

/// A trained CLIP-LoRA: the class embeddings of its adapted text tower, and its updates, which
/// make the image features it scores (`predict` encodes through them).
#[derive(Debug, Clone, PartialEq)]
pub struct LoraHead {
    /// K×D, unit rows.
    pub classes: Matrix,
    pub logit_scale: f32,
    pub lora: LoraOptions,
    /// `(name, shape, values)` of every LoRA matrix, as [`LoraClip::vars`] names them.
    pub updates: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl LoraHead {
    /// The updates as tensors, for [`LoraClip::set_vars`].
    pub fn tensors(&self) -> Result<HashMap<String, Tensor>, MethodError> {
        (self.updates.iter())
            .map(|(n, s, v)| Ok((n.clone(), Tensor::from_slice(v, s.as_slice(), &Device::Cpu)?)))
            .collect()
    }
}

pub static CODEC: HeadCodec = HeadCodec {
    kind: "clip-lora",
    anchor: ("classes", "K × D, the adapted text tower's class embeddings"),
    input: FeatureSpace::Adapted,
    read: |r, classes| {
        let meta = |key: &str| {
            r.metadata(key).ok_or_else(|| super::head::HeadError::MissingTensor {
                name: key.to_string(),
                what: "a CLIP-LoRA head's metadata".to_string(),
            })
        };
        let bad = |key: &str, v: &str| super::head::HeadError::MissingTensor {
            name: format!("{key}={v}"),
            what: "a valid CLIP-LoRA option".to_string(),
        };
        let get = |key: &str| -> Result<String, super::head::HeadError> { Ok(meta(key)?.to_string()) };
        let (rank, alpha) = (get("lora_rank")?, get("lora_alpha")?);
        let (params, encoder, position) = (get("lora_params")?, get("lora_encoder")?, get("lora_position")?);
        let lora = LoraOptions {
            rank: rank.parse().map_err(|_| bad("lora_rank", &rank))?,
            alpha: alpha.parse().map_err(|_| bad("lora_alpha", &alpha))?,
            dropout: 0.0,
            params: params.parse().map_err(|_| bad("lora_params", &params))?,
            encoder: encoder.parse().map_err(|_| bad("lora_encoder", &encoder))?,
            position: position.parse().map_err(|_| bad("lora_position", &position))?,
        };
        let names: Vec<String> = serde_json::from_str(meta("lora_tensors")?)
            .map_err(|_| bad("lora_tensors", "not a JSON list"))?;
        let mut updates = Vec::with_capacity(names.len());
        for name in names {
            let (shape, data) = r.tensor(&name, &[None, None], "a LoRA matrix")?;
            updates.push((name, shape, data));
        }
        Ok(Box::new(LoraHead {
            logit_scale: r.logit_scale()?,
            classes,
            lora,
            updates,
        }))
    },
};

impl HeadModel for LoraHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        cosine_logits(x, &self.classes, self.logit_scale)
    }

    fn dim(&self) -> usize {
        self.classes.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("classes", &self.classes);
        w.scalar("logit_scale", self.logit_scale);
        for (name, shape, data) in &self.updates {
            w.put(name, shape.clone(), data.clone());
        }
        let names: Vec<&String> = self.updates.iter().map(|(n, _, _)| n).collect();
        w.meta("lora_tensors", serde_json::to_string(&names).unwrap_or_default());
        w.meta("lora_rank", self.lora.rank.to_string());
        w.meta("lora_alpha", self.lora.alpha.to_string());
        w.meta("lora_params", self.lora.params.to_string());
        w.meta("lora_encoder", self.lora.encoder.to_string());
        w.meta("lora_position", self.lora.position.to_string());
    }
}

pub static CARD: MethodCard = MethodCard {
    name: "clip-lora",
    title: "CLIP-LoRA",
    paper: "Zanella & Ben Ayed, CVPR Workshops 2024",
    code: "MaxZanella/CLIP-LoRA",
    colour: (199, 21, 133),
    variant_colours: &[],
    reported_as: None,
    without_validation: "unchanged: the last step, as the reference keeps it (its validation is switched off)",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.08, 1.0),
        flip: true,
        source: "CLIP-LoRA's `train_tranform`: RandomResizedCrop(scale (0.08, 1), bicubic) + flip, drawn afresh for every image at every step from the images themselves",
    },
    needs: Needs::Images,
    options: &[
        "lr",
        "batch-size",
        "lora-rank",
        "lora-alpha",
        "lora-dropout",
        "lora-params",
        "lora-encoder",
        "lora-position",
        "lora-last",
        "lora-views",
        "iters-per-shot",
    ],
    configure,
    head: &CODEC,
    // Its updates apply to any class: new class names go through its adapted text tower, their
    // images through its adapted image tower ([`accuracy_on`]), as the reference evaluates it.
    new_classes: crate::methods::NewClasses::FromText,
};

fn configure(o: &MethodOverrides, _dataset: &str, seed: u64) -> Method {
    let d = ClipLoraOptions::default();
    let l = d.lora;
    Method::new(ClipLoraOptions {
        lora: LoraOptions {
            rank: o.lora_rank.unwrap_or(l.rank),
            alpha: o.lora_alpha.map_or(l.alpha, f64::from),
            dropout: o.lora_dropout.unwrap_or(l.dropout),
            params: o.lora_params.unwrap_or(l.params),
            encoder: o.lora_encoder.unwrap_or(l.encoder),
            position: o.lora_layers().unwrap_or(l.position),
        },
        lr: o.lr.unwrap_or(d.lr),
        iters_per_shot: o.iters_per_shot.unwrap_or(d.iters_per_shot),
        batch_size: o.batch_size.unwrap_or(d.batch_size),
        seed,
        views: o.lora_views,
    })
}

impl FewShotMethod for ClipLoraOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        let l = &self.lora;
        let mut out = format!(
            "rank={} alpha={} dropout={} params={} encoder={} position={} lr={} iters_per_shot={} batch={}",
            l.rank, l.alpha, l.dropout, l.params, l.encoder, l.position, self.lr, self.iters_per_shot, self.batch_size
        );
        // Only when set: the reference's fresh crops leave the description as it was.
        if let Some(v) = self.views {
            out.push_str(&format!(" views={v}"));
        }
        out
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        let images = cx.images.ok_or(MethodError::NeedsModel { method: CARD.name })?;
        fit(task, self, images, cx.progress)
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}
