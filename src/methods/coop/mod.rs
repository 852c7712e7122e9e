//! CoOp (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022; code
//! `KaiyangZhou/CoOp`, `trainers/coop.py`): the paper's prompt-learning baseline. The words of
//! the prompt template are replaced by M learned vectors in the token-embedding space; the
//! cross-entropy of `scale · cos(image, text_k)` is back-propagated through the whole frozen text
//! transformer into them. All CLIP weights stay frozen.
//!
//! ```text
//! mod.rs             options, the model a run trains through, the training loop, fit()
//! prompt_learner.rs  CoOp's PromptLearner: context vectors + class-name tokens -> prompts
//! head.rs            the saved head: context + class names + model; re-encoded on load
//! error.rs           CoopError
//! ```
//!
//! Image features come from the feature cache ([`FewShotTask`]), so one step is one forward and
//! backward of the text tower over the K class prompts (cut at their end token), not of the
//! image tower. Training is in f32 (CoOp's default precision is fp16).

mod error;
pub mod head;
pub mod prompt_learner;

use std::path::Path;

use candle_core::{Device, Tensor, Var};

pub use error::CoopError;
pub use head::CoopHead;
use prompt_learner::{initial_context, PromptLearner};

use super::clip_adapter::{epochs_for_shots, shots};
use super::optim::{Sgd, WarmupCosine};
use super::zero_shot::ZeroShot;
use super::{eval, FewShotTask, Fitted, Head, Matrix, MethodError, Progress, TextClassifier};
use crate::clip::train::prompt_text::PromptTextEncoder;
use crate::clip::ModelFiles;
use crate::tokenizer::Tokenizer;

/// Where the class name sits among the context vectors (CoOp's `CLASS_TOKEN_POSITION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassPosition {
    End,
    Middle,
    Front,
}

impl ClassPosition {
    pub fn as_str(&self) -> &'static str {
        match self {
            ClassPosition::End => "end",
            ClassPosition::Middle => "middle",
            ClassPosition::Front => "front",
        }
    }
}

impl std::str::FromStr for ClassPosition {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "end" => Ok(ClassPosition::End),
            "middle" => Ok(ClassPosition::Middle),
            "front" => Ok(ClassPosition::Front),
            _ => Err(format!(
                "unknown class token position `{s}` (expected end, middle or front)"
            )),
        }
    }
}

/// CoOp's options; the defaults are `configs/trainers/CoOp/rn50.yaml` with Dassl's defaults
/// (docs/methods.md lists each with its source).
#[derive(Debug, Clone)]
pub struct CoopOptions {
    /// M, the number of context vectors (`N_CTX`); ignored with `ctx_init`.
    pub n_ctx: usize,
    /// Initialise the context from this phrase's token embeddings (`CTX_INIT`, e.g.
    /// `"a photo of a"`); M becomes its token count.
    pub ctx_init: Option<String>,
    /// One context per class (`CSC`) instead of one shared by all.
    pub csc: bool,
    pub position: ClassPosition,
    pub lr: f32,
    /// `None`: by shot count (50 for 1 shot, 100 for 2–4, 200 for 8–16; ImageNet uses 50).
    pub epochs: Option<usize>,
    pub batch_size: usize,
    pub momentum: f32,
    pub weight_decay: f32,
    pub warmup_epochs: usize,
    pub warmup_lr: f32,
    /// Seeds the random context and the sample order.
    pub seed: u64,
}

impl Default for CoopOptions {
    fn default() -> Self {
        CoopOptions {
            n_ctx: 16,
            ctx_init: None,
            csc: false,
            position: ClassPosition::End,
            lr: 0.002,
            epochs: None,
            batch_size: 32,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 1,
            warmup_lr: 1e-5,
            seed: 1,
        }
    }
}

impl CoopOptions {
    /// The options as one stable `key=value` string (results rows, head metadata).
    pub fn describe(&self) -> String {
        format!(
            "n_ctx={} ctx_init={:?} csc={} position={} lr={} epochs={} batch={}",
            self.n_ctx,
            self.ctx_init.as_deref().unwrap_or(""),
            self.csc,
            self.position.as_str(),
            self.lr,
            self.epochs
                .map_or("by-shots".to_string(), |e| e.to_string()),
            self.batch_size
        )
    }
}

/// The frozen CLIP a CoOp run trains through: its differentiable text tower, its tokenizer, and
/// its identity (what a head file records).
pub struct PromptModel {
    /// The model as the user named it.
    pub name: String,
    /// Content fingerprint of the model files (`features::fingerprint`).
    pub fingerprint: String,
    pub encoder: PromptTextEncoder,
    pub tokenizer: Tokenizer,
}

impl PromptModel {
    /// Loads the text side of a model directory (either layout) and its tokenizer (the
    /// directory's own, else OpenAI's).
    pub fn load(files: &ModelFiles, name: &str, device: &Device) -> Result<Self, CoopError> {
        let encoder = PromptTextEncoder::load(files, device)?;
        let tokenizer = match Tokenizer::from_model_dir(&files.dir).map_err(crate::Error::from)? {
            Some(t) => t,
            None => Tokenizer::openai().map_err(crate::Error::from)?,
        };
        if tokenizer.vocab_size() > encoder.config().vocab_size {
            return Err(crate::Error::InvalidInput(format!(
                "{}: the tokenizer has {} tokens but the model's text tower only {}: put the \
                 model's own tokenizer files in its directory",
                files.dir.display(),
                tokenizer.vocab_size(),
                encoder.config().vocab_size
            ))
            .into());
        }
        Ok(PromptModel {
            name: name.to_string(),
            fingerprint: crate::features::model_fingerprint(files)?,
            encoder,
            tokenizer,
        })
    }

    /// The prompt learner of `classnames` with the given context layout.
    pub fn learner(
        &self,
        classnames: &[String],
        n_ctx: usize,
        csc: bool,
        position: ClassPosition,
    ) -> Result<PromptLearner, CoopError> {
        PromptLearner::new(
            &self.encoder,
            &self.tokenizer,
            classnames,
            n_ctx,
            csc,
            position,
        )
    }

    /// The zero-shot-style classifier of a context: the class prompts encoded once.
    pub fn classifier(
        &self,
        learner: &PromptLearner,
        context: &[f32],
    ) -> Result<TextClassifier, CoopError> {
        let ctx = Tensor::from_slice(context, learner.context_shape(), self.encoder.device())?;
        let t = learner.text_features(&self.encoder, &ctx)?;
        let (rows, cols) = t.dims2()?;
        Ok(TextClassifier {
            weights: Matrix {
                rows,
                cols,
                data: t.flatten_all()?.to_vec1::<f32>()?,
            },
            logit_scale: self.encoder.logit_scale(),
        })
    }
}

/// A trained CoOp run.
pub struct CoopFitted {
    pub head: CoopHead,
    /// The head as a feature classifier (the class prompts encoded), with the epoch losses.
    pub fitted: Fitted,
}

/// One SGD step's loss and context gradient for a batch of image features.
pub fn loss_and_grad(
    model: &PromptModel,
    learner: &PromptLearner,
    context: &[f32],
    images: &Matrix,
    labels: &[usize],
) -> Result<(f32, Vec<f32>), CoopError> {
    let dev = model.encoder.device();
    let ctx = Var::from_slice(context, learner.context_shape(), dev)?;
    let text = learner.text_features(&model.encoder, ctx.as_tensor())?;
    let img = Tensor::from_slice(&images.normalized().data, (images.rows, images.cols), dev)?;
    let logits = (img.matmul(&text.t()?)? * model.encoder.logit_scale() as f64)?;
    let targets: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let targets = Tensor::from_vec(targets, (labels.len(),), dev)?;
    let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
    let grads = loss.backward()?;
    let grad = match grads.get(ctx.as_tensor()) {
        Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
        None => vec![0.0; context.len()],
    };
    Ok((loss.to_scalar::<f32>()?, grad))
}

/// Trains `context` in place on the task's training views; `order(epoch)` gives the sample
/// order of each epoch (a seeded shuffle in [`fit`]; the parity test replays PyTorch's).
/// Returns the mean batch loss of each epoch.
#[allow(clippy::too_many_arguments)]
pub fn train(
    model: &PromptModel,
    learner: &PromptLearner,
    context: &mut [f32],
    task: &FewShotTask,
    opts: &CoopOptions,
    epochs: usize,
    order: &mut dyn FnMut(usize) -> Vec<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, CoopError> {
    if opts.batch_size == 0 {
        return Err(MethodError::option("batch-size", 0, "must be at least 1").into());
    }
    let views = task.training_views();
    let labels = &task.train.labels;
    let n = labels.len();
    let schedule = WarmupCosine {
        base_lr: opts.lr,
        epochs,
        warmup_epochs: opts.warmup_epochs,
        warmup_lr: opts.warmup_lr,
    };
    let mut sgd = Sgd::new(opts.momentum, opts.weight_decay);
    let mut losses = Vec::with_capacity(epochs);
    for epoch in 0..epochs {
        let lr = schedule.lr(epoch);
        let x_all = views[epoch % views.len()];
        let idx = order(epoch);
        let (mut sum, mut batches) = (0f64, 0usize);
        for batch in idx.chunks(opts.batch_size) {
            // Dassl drops the last incomplete batch only when the set holds a full one.
            if batch.len() < opts.batch_size && n >= opts.batch_size {
                continue;
            }
            let x = x_all.gather_rows(batch);
            let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let (loss, grad) = loss_and_grad(model, learner, context, &x, &y)?;
            sgd.step(&mut [&mut *context], &[&grad], lr);
            sum += loss as f64;
            batches += 1;
        }
        let loss = (sum / batches.max(1) as f64) as f32;
        if !loss.is_finite() {
            return Err(MethodError::Diverged { epoch, loss }.into());
        }
        losses.push(loss);
        progress(Progress::Epoch {
            epoch,
            epochs,
            loss,
        });
    }
    Ok(losses)
}

/// Trains CoOp on `task` through `model`'s frozen text tower.
pub fn fit(
    task: &FewShotTask,
    model: &PromptModel,
    opts: &CoopOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<CoopFitted, CoopError> {
    task.validate()?;
    if opts.lr.is_nan() || opts.lr <= 0.0 {
        return Err(MethodError::option("lr", opts.lr, "must be positive").into());
    }
    if task.dim() != model.encoder.embed_dim() {
        return Err(MethodError::Width {
            what: "the cached features",
            expected: model.encoder.embed_dim(),
            found: task.dim(),
        }
        .into());
    }
    let csc_classes = opts.csc.then(|| task.classes());
    let (mut context, n_ctx) = initial_context(
        &model.encoder,
        &model.tokenizer,
        opts.ctx_init.as_deref(),
        opts.n_ctx,
        csc_classes,
        opts.seed,
    )?;
    let learner = model.learner(&task.classnames, n_ctx, opts.csc, opts.position)?;
    let epochs = opts.epochs.unwrap_or_else(|| epochs_for_shots(shots(task)));
    let mut rng = super::linalg::seeded_rng(opts.seed);
    let n = task.train.labels.len();
    let mut order = |_epoch: usize| rng.permutation(n);
    let losses = train(
        model,
        &learner,
        &mut context,
        task,
        opts,
        epochs,
        &mut order,
        progress,
    )?;
    let text = model.classifier(&learner, &context)?;
    let head = CoopHead {
        model: model.name.clone(),
        fingerprint: model.fingerprint.clone(),
        classnames: task.classnames.clone(),
        n_ctx,
        csc: opts.csc,
        position: opts.position,
        context,
        width: model.encoder.config().width,
        options: opts.describe(),
    };
    Ok(CoopFitted {
        head,
        fitted: Fitted {
            head: Head::ZeroShot(ZeroShot::new(&text)),
            chosen: vec![
                ("epochs".to_string(), epochs.to_string()),
                ("n_ctx".to_string(), n_ctx.to_string()),
            ],
            losses,
        },
    })
}

/// Validation and test accuracy (percent) of a trained run.
pub fn evaluate(fitted: &CoopFitted, task: &FewShotTask) -> (f32, f32) {
    let h = &fitted.fitted.head;
    let acc = |s: &super::LabelledSet| eval::accuracy(&h.logits(&s.features), &s.labels);
    (acc(&task.val), acc(&task.test))
}

/// Loads a saved head and re-encodes its class prompts through `model`, which must be the model
/// it was trained on.
pub fn load_classifier(
    path: &Path,
    model: &PromptModel,
) -> Result<(CoopHead, TextClassifier), CoopError> {
    let head = CoopHead::load(path)?;
    let text = head.text_classifier(path, model)?;
    Ok((head, text))
}
