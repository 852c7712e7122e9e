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

use super::epochs::epochs_for_shots;
use super::method::method_boilerplate;
use super::epochs::{Batching, EpochLoop};
use super::optim::{Sgd, WarmupCosine};
use super::zero_shot::ZeroShot;
use super::{
    eval, Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Matrix, Method,
    MethodCard, MethodError, MethodOverrides, Needs, Progress, TextClassifier,
};
use crate::clip::train::prompt_text::PromptTextEncoder;
use crate::clip::{ModelFiles, Precision};
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
    type Err = crate::unknown_name::UnknownName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "end" => Ok(ClassPosition::End),
            "middle" => Ok(ClassPosition::Middle),
            "front" => Ok(ClassPosition::Front),
            _ => Err(crate::unknown_name::UnknownName::new(
                "class token position",
                s,
                &["end", "middle", "front"],
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
        Self::load_at(files, name, Precision::F32, device)
    }

    /// [`PromptModel::load`] with the text tower's frozen products at `precision`, which the
    /// fingerprint then records (as the features made at it do).
    pub fn load_at(
        files: &ModelFiles,
        name: &str,
        precision: Precision,
        device: &Device,
    ) -> Result<Self, CoopError> {
        let mut encoder = PromptTextEncoder::load(files, device)?;
        encoder.freeze_at(precision)?;
        let tokenizer = match Tokenizer::from_model_dir(&files.dir).map_err(crate::Error::from)? {
            Some(t) => t,
            None => Tokenizer::openai().map_err(crate::Error::from)?,
        };
        if tokenizer.vocab_size() > encoder.config().vocab_size {
            return Err(crate::Error::from(crate::clip::error::InputError::TokenizerVocabulary {
                dir: Some(files.dir.clone()),
                tokenizer: tokenizer.vocab_size(),
                model: encoder.config().vocab_size,
            })
            .into());
        }
        Ok(PromptModel {
            name: name.to_string(),
            fingerprint: precision.fingerprint(&crate::clip::fingerprint::model_fingerprint(files)?),
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
            logit_bias: None,
        })
    }
}

/// A trained CoOp run.
pub struct CoopFitted {
    pub head: CoopHead,
    /// The head as a feature classifier (the class prompts encoded), with the epoch losses.
    pub fitted: Fitted,
}

/// The autograd graph of the text tower keeps about this many floats per prompt position,
/// channel and layer (measured on the full-size towers of the CoOp benchmark).
const GRAPH_FLOATS_PER_ACTIVATION: usize = 48;

/// Memory the graph of one forward + backward may hold; more classes go through in chunks.
const GRAPH_BUDGET_BYTES: usize = 4 << 30;

/// How many class prompts go through the tower with their graph at once.
pub fn classes_per_chunk(model: &PromptModel, learner: &PromptLearner) -> usize {
    let c = model.encoder.config();
    let per_class = learner.prompt_len() * c.width * c.layers.max(1) * 4;
    (GRAPH_BUDGET_BYTES / (per_class * GRAPH_FLOATS_PER_ACTIVATION).max(1)).max(1)
}

/// One SGD step's loss and context gradient for a batch of image features; the classes go
/// through the tower in chunks of [`classes_per_chunk`].
pub fn loss_and_grad(
    model: &PromptModel,
    learner: &PromptLearner,
    context: &[f32],
    images: &Matrix,
    labels: &[usize],
) -> Result<(f32, Vec<f32>), CoopError> {
    let chunk = classes_per_chunk(model, learner);
    loss_and_grad_in_chunks(model, learner, context, images, labels, chunk)
}

/// [`loss_and_grad`] with at most `chunk` classes' graphs alive at once.
///
/// With every class in one chunk this is the plain backward. Otherwise the loss needs every
/// class's feature before any gradient exists, so the step is split where the graph would be:
/// a forward of all classes without a graph gives the text features, the loss and its gradient
/// `G` with respect to them; then each chunk is run again with its graph and back-propagates
/// `Σ features ⊙ G[chunk]`, whose context gradient is the chunk's share of the total. It
/// costs one more forward and bounds memory by the chunk (gradient checkpointing).
pub fn loss_and_grad_in_chunks(
    model: &PromptModel,
    learner: &PromptLearner,
    context: &[f32],
    images: &Matrix,
    labels: &[usize],
    chunk: usize,
) -> Result<(f32, Vec<f32>), CoopError> {
    let dev = model.encoder.device();
    let img = Tensor::from_slice(&images.normalized().data, (images.rows, images.cols), dev)?;
    let targets: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
    let targets = Tensor::from_vec(targets, (labels.len(),), dev)?;
    let loss_of = |text: &Tensor| -> Result<Tensor, CoopError> {
        let logits = (img.matmul(&text.t()?)? * model.encoder.logit_scale() as f64)?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    };
    let k = learner.classes();
    let ctx = Var::from_slice(context, learner.context_shape(), dev)?;
    if chunk >= k {
        let loss = loss_of(&learner.text_features(&model.encoder, ctx.as_tensor())?)?;
        let grads = loss.backward()?;
        let grad = match grads.get(ctx.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f32>()?,
            None => vec![0.0; context.len()],
        };
        return Ok((loss.to_scalar::<f32>()?, grad));
    }
    let chunks: Vec<std::ops::Range<usize>> = (0..k)
        .step_by(chunk.max(1))
        .map(|a| a..(a + chunk).min(k))
        .collect();
    // A plain tensor: nothing it feeds records a graph.
    let frozen_ctx = Tensor::from_slice(context, learner.context_shape(), dev)?;
    let parts = (chunks.iter())
        .map(|r| learner.text_features_of(&model.encoder, &frozen_ctx, r.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    let text = Var::from_tensor(&Tensor::cat(&parts, 0)?)?;
    let loss = loss_of(text.as_tensor())?;
    let text_grad = match loss.backward()?.get(text.as_tensor()) {
        Some(g) => g.clone(),
        None => return Ok((loss.to_scalar::<f32>()?, vec![0.0; context.len()])),
    };
    let mut grad = vec![0f32; context.len()];
    for r in chunks {
        let features = learner.text_features_of(&model.encoder, ctx.as_tensor(), r.clone())?;
        let share = (features * text_grad.narrow(0, r.start, r.len())?)?.sum_all()?;
        if let Some(g) = share.backward()?.get(ctx.as_tensor()) {
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            grad.iter_mut().zip(g).for_each(|(a, b)| *a += b);
        }
    }
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
    let views = task.training_views();
    let labels = &task.train.labels;
    let schedule = WarmupCosine {
        base_lr: opts.lr,
        epochs,
        warmup_epochs: opts.warmup_epochs,
        warmup_lr: opts.warmup_lr,
    };
    let mut sgd = Sgd::new(opts.momentum, opts.weight_decay);
    let epoch_loop = EpochLoop {
        epochs,
        batching: Batching::DropLast {
            size: opts.batch_size,
        },
    };
    epoch_loop.run(
        context,
        labels.len(),
        order,
        &mut |context, epoch, batch| {
            let x = views[epoch % views.len()].gather_rows(batch);
            let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let (loss, grad) = loss_and_grad(model, learner, context, &x, &y)?;
            sgd.step(&mut [&mut *context], &[&grad], schedule.lr(epoch));
            Ok(loss)
        },
        &mut |_, _| {},
        progress,
    )
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
    let epochs = opts.epochs.unwrap_or_else(|| epochs_for_shots(task.shots()));
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
        // The context length actually trained (a `ctx_init` phrase sets it, not `n_ctx`).
        options: CoopOptions {
            n_ctx,
            ..opts.clone()
        }
        .describe(),
    };
    Ok(CoopFitted {
        head,
        fitted: Fitted {
            head: Head::new(ZeroShot::new(&text)),
            // CoOp chooses nothing on validation: its epochs follow the shot count and its
            // context length the options, both recorded in the head's options.
            chosen: Vec::new(),
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

// The method's card: CoOp trains through the text tower, which the fit context holds.

pub static CARD: MethodCard = MethodCard {
    name: "coop",
    title: "CoOp",
    paper: "Zhou et al., IJCV 2022",
    code: "KaiyangZhou/CoOp",
    colour: (227, 119, 194),
    variant_colours: &[],
    // CoOp's RN50 numbers as the APE authors list them in their results notebook.
    reported_as: Some("CoOp(APE nb)"),
    without_validation: "unchanged: the last epoch (CoOp never selects on validation)",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.08, 1.0),
        flip: true,
        source: "Dassl's `random_resized_crop` + `random_flip`, a fresh crop every epoch",
    },
    needs: Needs::TextTower,
    options: &[
        "lr",
        "epochs",
        "batch-size",
        "n-ctx",
        "ctx-init",
        "csc",
        "class-token-position",
    ],
    configure,
    head: &super::zero_shot::CODEC,
    new_classes: crate::methods::NewClasses::FromText,
};

/// The protocol's CoOp: `rn50.yaml`, 50 epochs on ImageNet, the user's options.
fn configure(o: &MethodOverrides, dataset: &str, seed: u64) -> Method {
    let d = CoopOptions::default();
    Method::new(CoopOptions {
        n_ctx: o.n_ctx.unwrap_or(d.n_ctx),
        ctx_init: o.ctx_init.clone(),
        csc: o.csc,
        position: o.class_token_position.unwrap_or(d.position),
        lr: o.lr.unwrap_or(d.lr),
        epochs: o.coop_epochs(dataset),
        batch_size: o.batch_size.unwrap_or(d.batch_size),
        seed,
        ..d
    })
}

impl FewShotMethod for CoopOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        CoopOptions::describe(self)
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        let model = cx
            .text_tower
            .ok_or(MethodError::NeedsModel { method: "coop" })?;
        let c = fit(task, model, self, cx.progress).map_err(|e| MethodError::Coop(Box::new(e)))?;
        Ok(Fit {
            fitted: c.fitted,
            prompt: Some(c.head),
            adapted_test: None,
        })
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    fn scale_sgd_lr(&mut self, factor: f32) {
        self.lr *= factor;
    }
}
