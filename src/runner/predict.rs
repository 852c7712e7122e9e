//! Classifying images with a saved head: the head's file read (a head on features, or CoOp's
//! learned context), checked against the model, the images encoded into the feature space the
//! head scores, and the classes ranked.

use std::path::{Path, PathBuf};

use super::{resolve_model, RunError, RunObserver};
use crate::clip::hub::HubOptions;
use crate::clip::train::lora::LoraClip;
use crate::clip::{Clip, ModelFiles, Precision};
use crate::experiment;
use crate::features::model_fingerprint;
use crate::methods::clip_lora::LoraHead;
use crate::methods::coop::{self, CoopHead, PromptModel};
use crate::methods::head::{self, HeadInfo};
use crate::methods::{FeatureSpace, Head, Matrix};
use crate::zero_shot::{rank_with, Prediction};

/// What `clip-adapter predict` is told.
#[derive(Debug, Clone)]
pub struct PredictSpec {
    /// A head saved by a fit.
    pub head: PathBuf,
    /// The model [default: the one the head records].
    pub model: Option<String>,
    /// Go on with a model other than the head's (the observer is told).
    pub allow_model_mismatch: bool,
    pub images: Vec<PathBuf>,
    pub top_k: usize,
    /// Images per forward pass.
    pub batch_size: usize,
    pub hub: HubOptions,
}

/// The ranked classes of each image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Predictions {
    /// The method that trained the head.
    pub method: String,
    /// The model the images were encoded with, as named.
    pub model: String,
    pub labels: Vec<String>,
    /// Per image, best first.
    pub predictions: Vec<Vec<Prediction>>,
}

/// A head file: one on features, or CoOp's context (encoded through the model to classify).
enum Loaded {
    // Boxed: a head on features is several times a CoOp head's size.
    Features(Box<Head>),
    Coop(CoopHead),
}

/// Reads the head, checks the model, encodes the images and ranks the classes.
pub fn predict(
    spec: &PredictSpec,
    observer: &mut dyn RunObserver,
) -> Result<Predictions, RunError> {
    let (loaded, info) = read_head(&spec.head)?;
    let model = spec.model.clone().unwrap_or_else(|| info.model.clone());
    let files = resolve_model(&model, &spec.hub, observer)?;
    let precision = head_precision(&info);
    let fingerprint = model_fingerprint(&files).map_err(|source| RunError::Fingerprint {
        dir: files.dir.clone(),
        source: Box::new(source),
    })?;
    let fingerprint = precision.fingerprint(&fingerprint);
    if let Err(e) = experiment::check_head_model(&info, &model, &fingerprint) {
        if !spec.allow_model_mismatch {
            return Err(RunError::HeadModel {
                head: spec.head.clone(),
                source: Box::new(e),
            });
        }
        observer.model_mismatch(&e);
    }
    let head = match loaded {
        Loaded::Features(h) => *h,
        // The learned prompts encoded through the model, now that it is checked.
        Loaded::Coop(c) => coop_head(&c, (&files, precision), &model, &spec.head)?,
    };
    let clip = super::load_clip(&files, precision)?;
    // A CLIP-LoRA head scores the features of the model with its own updates.
    let lora = match head.downcast_ref::<LoraHead>() {
        Some(h) => Some(lora_model(h, &files, precision)?),
        None => None,
    };
    let x = encode(&clip, &head, lora.as_ref(), spec, observer)?;
    if x.cols != head.dim() {
        return Err(RunError::HeadWidth {
            head: spec.head.clone(),
            expected: head.dim(),
            model,
            found: x.cols,
        });
    }
    let logits = head.logits(&x);
    let logits = candle_core::Tensor::from_vec(
        logits.data,
        (logits.rows, logits.cols),
        &candle_core::Device::Cpu,
    )
    .map_err(crate::clip::error::Error::from)?;
    let predictions = rank_with(&info.classnames, &logits, spec.top_k, head.scores())?;
    Ok(Predictions {
        method: info.method,
        model,
        labels: info.classnames,
        predictions,
    })
}

/// A saved head ready to score features, with what its file records: a CoOp head's learned
/// prompts are encoded through `model` [default: the model the head records], which must be the
/// model it was trained on unless `allow_model_mismatch` (the observer is then told).
pub fn load_head(
    path: &Path,
    model: Option<&str>,
    allow_model_mismatch: bool,
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> Result<(Head, HeadInfo), RunError> {
    let (loaded, info) = read_head(path)?;
    let c = match loaded {
        Loaded::Features(h) => return Ok((*h, info)),
        Loaded::Coop(c) => c,
    };
    let model = model.map_or_else(|| info.model.clone(), str::to_string);
    let files = resolve_model(&model, hub, observer)?;
    let precision = head_precision(&info);
    let fingerprint = model_fingerprint(&files).map_err(|source| RunError::Fingerprint {
        dir: files.dir.clone(),
        source: Box::new(source),
    })?;
    let fingerprint = precision.fingerprint(&fingerprint);
    if let Err(e) = experiment::check_head_model(&info, &model, &fingerprint) {
        if !allow_model_mismatch {
            return Err(RunError::HeadModel {
                head: path.to_path_buf(),
                source: Box::new(e),
            });
        }
        observer.model_mismatch(&e);
    }
    Ok((coop_head(&c, (&files, precision), &model, path)?, info))
}

fn read_head(path: &Path) -> Result<(Loaded, HeadInfo), RunError> {
    if coop::head::is_coop_head(path) {
        let c = CoopHead::load(path)?;
        let info = c.info();
        Ok((Loaded::Coop(c), info))
    } else {
        let (h, info) = head::load(path)?;
        Ok((Loaded::Features(Box::new(h)), info))
    }
}

/// The precision of the features a head was trained on, at which its model runs again.
fn head_precision(info: &HeadInfo) -> Precision {
    (info.model_fingerprint.as_deref()).map_or(Precision::F32, Precision::of_fingerprint)
}

/// CoOp's head as a zero-shot head: its prompts encoded through the model's text tower at the
/// precision it was trained at.
fn coop_head(
    c: &CoopHead,
    (files, precision): (&ModelFiles, Precision),
    model: &str,
    path: &Path,
) -> Result<Head, RunError> {
    let device = candle_core::Device::Cpu;
    let prompt = PromptModel::load_at(files, model, precision, &device).map_err(|source| {
        RunError::TextTower {
            dir: files.dir.clone(),
            source: Box::new(source),
        }
    })?;
    let learner = prompt.learner(&c.classnames, c.n_ctx, c.csc, c.position)?;
    let text =
        prompt
            .classifier(&learner, &c.context)
            .map_err(|source| RunError::EncodePrompts {
                head: path.to_path_buf(),
                source: Box::new(source),
            })?;
    Ok(Head::new(crate::methods::zero_shot::ZeroShot::new(&text)))
}

/// The model with a CLIP-LoRA head's updates, in evaluation, its frozen products at the
/// `precision` it was trained at.
fn lora_model(
    h: &LoraHead,
    files: &ModelFiles,
    precision: Precision,
) -> Result<LoraClip, RunError> {
    let load = || -> Result<LoraClip, crate::methods::MethodError> {
        let model = LoraClip::load(files, &h.lora, 0, &candle_core::Device::Cpu)?.at(precision)?;
        model.set_vars(&h.tensors()?)?;
        Ok(model)
    };
    Ok(load()?)
}

/// The images' features in the space the head scores: a ProLIP head holds the trained
/// projection, so it scores the tower's output before it; a CLIP-LoRA head scores the image
/// tower with its updates, when it adapted that tower.
fn encode(
    clip: &Clip,
    head: &Head,
    lora: Option<&LoraClip>,
    spec: &PredictSpec,
    observer: &mut dyn RunObserver,
) -> Result<Matrix, RunError> {
    let pre = |p: &candle_core::Tensor| Ok(clip.encode_image_parts(p)?.0);
    let projected = |p: &candle_core::Tensor| clip.encode_image(p);
    let encode: &dyn Fn(&candle_core::Tensor) -> crate::clip::error::Result<candle_core::Tensor> =
        match (head.input(), lora) {
            (FeatureSpace::PreProjection, _) => &pre,
            (FeatureSpace::Adapted, Some(l)) if l.options().encoder.vision() => {
                &|p| l.encode_image(p)
            }
            (FeatureSpace::Adapted | FeatureSpace::Projected, _) => &projected,
        };
    let total = spec.images.len();
    let features = crate::encode::encode_files(
        clip,
        &spec.images,
        spec.batch_size,
        &mut |d, _| observer.encoding(d, total),
        encode,
    )?;
    let to_err = crate::clip::error::Error::from;
    let (n, d) = features.dims2().map_err(to_err)?;
    let data = (features.flatten_all())
        .and_then(|f| f.to_vec1::<f32>())
        .map_err(to_err)?;
    Matrix::from_vec(n, d, data).ok_or(RunError::FeatureMatrix)
}
