//! The cross-modal linear probe (Lin et al., "Multimodality Helps Unimodality: Cross-Modal
//! Few-Shot Learning with Multimodal Models", CVPR 2023; linzhiqiu/cross_modal_adaptation
//! `train.py`, `engine/model/head.py`, `engine/model/logit.py`, `engine/optimizer/*.py`,
//! `eval.py`, `linear_probe.sh` @39335d9).
//!
//! CLIP embeds images and class names in one space, so a class name's text embedding is one
//! more labelled sample of its class. The cross-modal probe trains a linear head on both: every
//! batch is half images, half text embeddings (`CROSS_MODAL_BATCH_RATIO = 0.5`).
//!
//! As the authors' code runs it (`linear_probe.sh`: `--modality cross_modal --classifier_head
//! linear --classifier_init zeroshot --logit 4.60517 --hyperparams linear`):
//! - logits `scale · f̂ Wᵀ`: the features are normalised, the head is a plain linear map
//!   without bias (`LogitHead` over `nn.Linear(bias=False)`), scale `exp(4.60517)` ≈ 100
//!   (here the checkpoint's logit scale);
//! - `W` starts at the normalised zero-shot weights (`get_zero_shot_weights`);
//! - the image samples are the centre crops and a mirrored copy of each, pooled (here the
//!   centre crops and every cached view); the text samples are the embeddings of the class
//!   prompts (here one per class, the classifier's row);
//! - two shuffled loaders with `drop_last`, each restarted when exhausted: `⌊B/2⌋` text
//!   samples and the rest images per iteration;
//! - AdamW, 12,800 iterations, a linear warm-up over 50 iterations from 1e-5 then a cosine per
//!   iteration ([`LinearWarmupCosine`]);
//! - early stopping: the validation accuracy every 100 iterations (from iteration 0), the first
//!   best kept;
//! - the search of `HYPER_DICT['linear']`: lr ∈ {1e-3, 1e-4} × weight decay ∈ {0, 0.01, 1e-4}
//!   × batch ∈ {8, 32}, a batch size only when both halves are smaller than their sets
//!   (`get_valid_batch_sizes`); `eval.py` keeps the run with the best validation accuracy, the
//!   first on ties.
//!
//! The reference's training loop counts iterations over two loaders of different lengths, not
//! epochs over one set, so it is written here rather than through the shared epoch loop.

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{cross_entropy_backward, gemm, seeded_rng, Matrix};
use super::method::method_boilerplate;
use super::optim::{AdamW, LinearWarmupCosine};
use super::overrides::MethodOverrides;
use super::{
    eval, Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, LabelledSet,
    Method, MethodCard, MethodError, Needs, Progress,
};

/// Without a validation set nothing can be searched or stopped early, and the authors give no
/// rule: the grid's smaller learning rate (the larger one drifts furthest from the text
/// initialisation over 12,800 iterations with no checkpoint to fall back on) and AdamW's
/// default weight decay.
pub const NO_VALIDATION_LR: f32 = 1e-4;
pub const NO_VALIDATION_WEIGHT_DECAY: f32 = 0.01;

#[derive(Debug, Clone, PartialEq)]
pub struct CrossModalOptions {
    /// Learning rates searched (one when the user sets it).
    pub lrs: Vec<f32>,
    pub weight_decays: Vec<f32>,
    /// Batch sizes searched, those whose halves fit their sets (one when the user sets it).
    pub batch_sizes: Vec<usize>,
    /// When none of `batch_sizes` fits, take the largest batch that does (see
    /// [`batch_sizes`]); off when the user chose the batch size.
    pub shrink_batch: bool,
    pub iterations: usize,
    pub warmup_iters: usize,
    pub warmup_lr: f32,
    /// Validation accuracy every this many iterations, from iteration 0.
    pub eval_every: usize,
    /// The share of each batch given to text samples (0.5); 0 is the uni-modal probe.
    pub text_ratio: f32,
    pub seed: u64,
}

impl Default for CrossModalOptions {
    fn default() -> Self {
        CrossModalOptions {
            lrs: vec![1e-3, 1e-4],
            weight_decays: vec![0.0, 0.01, 1e-4],
            batch_sizes: vec![8, 32],
            shrink_batch: true,
            iterations: 12_800,
            warmup_iters: 50,
            warmup_lr: 1e-5,
            eval_every: 100,
            text_ratio: 0.5,
            seed: 1,
        }
    }
}

/// The cross-modal head: a linear map on normalised features, scaled.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossModalHead {
    /// K×D, not normalised (the reference's `nn.Linear` weight).
    pub weight: Matrix,
    pub logit_scale: f32,
}

impl CrossModalHead {
    /// The reference's start: the normalised zero-shot weights.
    pub fn from_text(text: &Matrix, logit_scale: f32) -> Self {
        CrossModalHead {
            weight: text.normalized(),
            logit_scale,
        }
    }

    pub fn logits(&self, x: &Matrix) -> Matrix {
        let mut out = x.normalized().matmul(false, &self.weight, true);
        out.data.iter_mut().for_each(|v| *v *= self.logit_scale);
        out
    }

    /// The mean cross-entropy on a batch of raw features and its gradient with respect to `W`.
    pub fn loss_and_grad(&self, x: &Matrix, labels: &[usize]) -> (f32, Matrix) {
        let f = x.normalized();
        let (k, d) = (self.weight.rows, self.weight.cols);
        let mut g = f.matmul(false, &self.weight, true);
        g.data.iter_mut().for_each(|v| *v *= self.logit_scale);
        let loss = cross_entropy_backward(&mut g.data, labels, k);
        g.data.iter_mut().for_each(|v| *v *= self.logit_scale);
        let mut grad = Matrix::zeros(k, d);
        gemm(
            &g.data,
            true,
            &f.data,
            false,
            &mut grad.data,
            k,
            f.rows,
            d,
            false,
        );
        (loss, grad)
    }
}

/// The two sets a batch draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Image,
    Text,
}

/// A request for a sample order: of which run of the search, which set, which pass over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    pub config: usize,
    pub source: Source,
    pub pass: usize,
}

/// The training samples: the image pool and the text samples, with their labels.
#[derive(Debug, Clone)]
pub struct Samples {
    pub images: LabelledSet,
    pub text: LabelledSet,
}

impl Samples {
    /// The centre crops and every cached view, pooled; one text sample per class, its
    /// classifier row.
    pub fn of(task: &FewShotTask) -> Self {
        let d = task.dim();
        let mut data = task.train.features.data.clone();
        let mut labels = task.train.labels.clone();
        for v in &task.train_views {
            data.extend_from_slice(&v.data);
            labels.extend_from_slice(&task.train.labels);
        }
        Samples {
            images: LabelledSet {
                features: Matrix {
                    rows: labels.len(),
                    cols: d,
                    data,
                },
                labels,
            },
            text: LabelledSet {
                features: task.text.weights.clone(),
                labels: (0..task.classes()).collect(),
            },
        }
    }

    /// `(text, image)` samples of a batch of `batch_size` (`int(B · ratio)` text samples).
    pub fn halves(batch_size: usize, text_ratio: f32) -> (usize, usize) {
        let text = (batch_size as f64 * text_ratio as f64) as usize;
        (text, batch_size - text)
    }

    /// `get_valid_batch_sizes`: each non-empty half must be smaller than its set.
    pub fn fits(&self, batch_size: usize, text_ratio: f32) -> bool {
        let (text, image) = Self::halves(batch_size, text_ratio);
        (text == 0 || text < self.text.labels.len())
            && (image == 0 || image < self.images.labels.len())
            && batch_size > 0
    }
}

/// A shuffled `DataLoader(drop_last=True)` that the loop draws from until it is exhausted,
/// then restarts with a new order (the reference's `next(iter)` / `StopIteration` pattern).
struct Loader {
    source: Source,
    n: usize,
    size: usize,
    pass: usize,
    order: Vec<usize>,
    next: usize,
}

impl Loader {
    fn new(source: Source, n: usize, size: usize) -> Self {
        Loader {
            source,
            n,
            size,
            pass: 0,
            order: Vec::new(),
            next: 0,
        }
    }

    fn batch(&mut self, orders: &mut dyn FnMut(Source, usize) -> Vec<usize>) -> Result<Vec<usize>, MethodError> {
        if self.next + self.size > self.order.len() {
            self.order = orders(self.source, self.pass);
            if self.order.len() != self.n || self.order.iter().any(|&i| i >= self.n) {
                return Err(MethodError::Rows {
                    what: "a sample order",
                    found: self.order.len(),
                    labels: self.n,
                });
            }
            self.pass += 1;
            self.next = 0;
        }
        let batch = self.order[self.next..self.next + self.size].to_vec();
        self.next += self.size;
        Ok(batch)
    }
}

/// One run of the search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub lr: f32,
    pub weight_decay: f32,
    pub batch_size: usize,
}

/// What a run ends with: the kept head, its validation accuracy (NaN without a validation set)
/// and iteration, the accuracy at every checkpoint, and the mean loss of each block of
/// `eval_every` iterations.
#[derive(Debug, Clone)]
pub struct Trained {
    pub head: CrossModalHead,
    pub val_accuracy: f32,
    pub iteration: usize,
    pub validations: Vec<f32>,
    pub losses: Vec<f32>,
}

/// One training run from `start`: `orders(source, pass)` gives each pass's sample order. With a
/// validation set the head of the best checkpoint is kept, otherwise the last one.
#[allow(clippy::too_many_arguments)]
pub fn train(
    start: &CrossModalHead,
    samples: &Samples,
    val: &LabelledSet,
    config: Config,
    opts: &CrossModalOptions,
    orders: &mut dyn FnMut(Source, usize) -> Vec<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Trained, MethodError> {
    let (text_size, image_size) = Samples::halves(config.batch_size, opts.text_ratio);
    let mut images = Loader::new(Source::Image, samples.images.labels.len(), image_size);
    let mut text = Loader::new(Source::Text, samples.text.labels.len(), text_size);
    let schedule = LinearWarmupCosine {
        base_lr: config.lr,
        warmup_iters: opts.warmup_iters,
        floor_lr: opts.warmup_lr,
        total: opts.iterations,
    };
    let mut adamw = AdamW::new(1e-8, config.weight_decay);
    let mut head = start.clone();
    let validate = !val.labels.is_empty();
    let mut best: Option<(f32, usize, CrossModalHead)> = None;
    let (mut losses, mut block, mut validations) = (Vec::new(), Vec::new(), Vec::new());
    let blocks = opts.iterations.div_ceil(opts.eval_every);
    for i in 0..opts.iterations {
        let mut x = Vec::with_capacity(config.batch_size * head.weight.cols);
        let mut y = Vec::with_capacity(config.batch_size);
        for (loader, set, size) in [(&mut images, &samples.images, image_size), (&mut text, &samples.text, text_size)] {
            if size == 0 {
                continue;
            }
            for j in loader.batch(orders)? {
                x.extend_from_slice(set.features.row(j));
                y.push(set.labels[j]);
            }
        }
        let x = Matrix {
            rows: y.len(),
            cols: head.weight.cols,
            data: x,
        };
        let (loss, grad) = head.loss_and_grad(&x, &y);
        if !loss.is_finite() {
            return Err(MethodError::Diverged { epoch: i, loss });
        }
        adamw.step(&mut [&mut head.weight.data], &[&grad.data], schedule.lr(i));
        block.push(loss as f64);
        if validate && i % opts.eval_every == 0 {
            let acc = eval::accuracy(&head.logits(&val.features), &val.labels);
            validations.push(acc);
            if best.as_ref().is_none_or(|b| acc > b.0) {
                best = Some((acc, i, head.clone()));
            }
        }
        if block.len() == opts.eval_every || i + 1 == opts.iterations {
            let mean = (block.iter().sum::<f64>() / block.len() as f64) as f32;
            losses.push(mean);
            block.clear();
            progress(Progress::Epoch {
                epoch: losses.len() - 1,
                epochs: blocks,
                loss: mean,
            });
        }
    }
    let (val_accuracy, iteration, head) =
        best.unwrap_or((f32::NAN, opts.iterations.saturating_sub(1), head));
    Ok(Trained {
        head,
        val_accuracy,
        iteration,
        validations,
        losses,
    })
}

/// The batch sizes of the search that fit (`get_valid_batch_sizes`). The authors' code stops
/// when none does; with fewer classes than the smallest batch's text half (fewer than five for
/// batch 8) ours takes the largest batch that fits, `2K − 1` (K − 1 text samples and K images;
/// smaller when the images are fewer), unless the user chose the batch size, which is then
/// refused.
pub fn batch_sizes(samples: &Samples, opts: &CrossModalOptions) -> Result<Vec<usize>, MethodError> {
    let fitting: Vec<usize> = (opts.batch_sizes.iter().copied())
        .filter(|&b| samples.fits(b, opts.text_ratio))
        .collect();
    if !fitting.is_empty() {
        return Ok(fitting);
    }
    let largest = (1..=2 * samples.text.labels.len())
        .rev()
        .find(|&b| samples.fits(b, opts.text_ratio));
    match largest {
        Some(b) if opts.shrink_batch => Ok(vec![b]),
        _ => Err(MethodError::option(
            "batch-size",
            format!("{:?}", opts.batch_sizes),
            "no batch size has both halves (text, images) smaller than their sets: set a \
             smaller one",
        )),
    }
}

/// The runs of the search, in the reference's loop order (lr, weight decay, batch size); without
/// a validation set, the one run of [`NO_VALIDATION_LR`], [`NO_VALIDATION_WEIGHT_DECAY`] (or the
/// user's values) and the largest valid batch.
pub fn configs(
    samples: &Samples,
    opts: &CrossModalOptions,
    validate: bool,
) -> Result<Vec<Config>, MethodError> {
    let batches = batch_sizes(samples, opts)?;
    if !validate {
        let lr = match opts.lrs.as_slice() {
            [one] => *one,
            _ => NO_VALIDATION_LR,
        };
        return Ok(vec![Config {
            lr,
            weight_decay: NO_VALIDATION_WEIGHT_DECAY,
            batch_size: batches.iter().copied().max().unwrap_or(1),
        }]);
    }
    let mut out = Vec::new();
    for &lr in &opts.lrs {
        for &weight_decay in &opts.weight_decays {
            for &batch_size in &batches {
                out.push(Config {
                    lr,
                    weight_decay,
                    batch_size,
                });
            }
        }
    }
    Ok(out)
}

/// Checks the options a user or a caller can get wrong.
fn check(opts: &CrossModalOptions) -> Result<(), MethodError> {
    if let Some(&lr) = opts.lrs.iter().find(|l| !(**l > 0.0 && l.is_finite())) {
        return Err(MethodError::option("lr", lr, "must be positive"));
    }
    if opts.lrs.is_empty() || opts.weight_decays.is_empty() {
        return Err(MethodError::Empty {
            what: "the cross-modal probe's learning-rate or weight-decay list",
        });
    }
    if opts.eval_every == 0 || opts.iterations == 0 {
        return Err(MethodError::option(
            "iterations",
            opts.iterations.min(opts.eval_every),
            "the iterations and the validation interval must be at least 1",
        ));
    }
    if !(0.0..1.0).contains(&opts.text_ratio) {
        return Err(MethodError::option(
            "text-ratio",
            opts.text_ratio,
            "the text share of a batch must be in [0, 1)",
        ));
    }
    Ok(())
}

/// The search on the task; `orders(draw)` gives every sample order (a seeded shuffle in
/// [`fit`]; the parity test replays the reference's). Returns the kept run and its config.
pub fn search(
    task: &FewShotTask,
    opts: &CrossModalOptions,
    orders: &mut dyn FnMut(Draw) -> Vec<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Trained, Config), MethodError> {
    check(opts)?;
    let samples = Samples::of(task);
    let validate = !task.val.labels.is_empty();
    let configs = configs(&samples, opts, validate)?;
    let start = CrossModalHead::from_text(&task.text.weights, task.text.logit_scale);
    let mut best: Option<(Trained, Config)> = None;
    for (i, &config) in configs.iter().enumerate() {
        let mut run_orders = |source, pass| orders(Draw { config: i, source, pass });
        let run = train(&start, &samples, &task.val, config, opts, &mut run_orders, progress)?;
        if configs.len() > 1 {
            progress(Progress::Search {
                done: i + 1,
                total: configs.len(),
            });
        }
        // `eval.py`: a later run replaces the kept one only with a strictly better accuracy.
        if best.as_ref().is_none_or(|b| run.val_accuracy > b.0.val_accuracy) {
            best = Some((run, config));
        }
    }
    best.ok_or(MethodError::Empty {
        what: "the cross-modal probe's search",
    })
}

/// The cross-modal probe on the task, with seeded shuffles.
pub fn fit(
    task: &FewShotTask,
    opts: &CrossModalOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    let mut rng = seeded_rng(opts.seed);
    // The pool's size: the centre crops and every view, and one text sample per class.
    let images = task.train.labels.len() * (1 + task.train_views.len());
    let text = task.classes();
    let mut orders = |d: Draw| {
        rng.permutation(match d.source {
            Source::Image => images,
            Source::Text => text,
        })
    };
    let (run, config) = search(task, opts, &mut orders, progress)?;
    let chosen = vec![
        ("lr".to_string(), config.lr.to_string()),
        ("weight_decay".to_string(), config.weight_decay.to_string()),
        ("batch_size".to_string(), config.batch_size.to_string()),
        ("iteration".to_string(), run.iteration.to_string()),
    ];
    Ok(Fitted {
        head: Head::new(run.head),
        chosen,
        losses: run.losses,
    })
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "cross-modal",
    title: "Cross-modal linear probe",
    paper: "Lin et al., CVPR 2023",
    code: "linzhiqiu/cross_modal_adaptation",
    colour: (219, 219, 141),
    variant_colours: &[],
    reported_as: None,
    without_validation: "lr 1e-4 (the grid's smaller rate) and weight decay 0.01 (AdamW's default), the larger valid batch, the last of its 12,800 iterations",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (1.0, 1.0),
        flip: true,
        source: "cross_modal_adaptation `--image-augmentation flip --image-views 1`: the centre crop and its mirror image, pooled",
    },
    needs: Needs::Features,
    options: &["lr", "batch-size"],
    configure,
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No("its linear head learns one weight vector per training class, and has none for a class it never saw"),
};

/// The protocol's probe: the authors' search; a learning rate or batch size the user sets
/// replaces its list.
fn configure(o: &MethodOverrides, _dataset: &str, seed: u64) -> Method {
    let d = CrossModalOptions::default();
    Method::new(CrossModalOptions {
        lrs: o.lr.map_or(d.lrs.clone(), |lr| vec![lr]),
        batch_sizes: o.batch_size.map_or(d.batch_sizes.clone(), |b| vec![b]),
        shrink_batch: o.batch_size.is_none(),
        seed,
        ..d
    })
}

impl FewShotMethod for CrossModalOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        format!(
            "lr={:?} weight_decay={:?} batch={:?} iterations={} eval_every={} text_ratio={}",
            self.lrs,
            self.weight_decays,
            self.batch_sizes,
            self.iterations,
            self.eval_every,
            self.text_ratio
        )
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// Tensors: `weight` (K×D) and `logit_scale`.
pub static CODEC: HeadCodec = HeadCodec {
    kind: "cross-modal",
    anchor: ("weight", "K × D, one row per class"),
    input: FeatureSpace::Projected,
    read: |r, weight| {
        Ok(Box::new(CrossModalHead {
            weight,
            logit_scale: r.logit_scale()?,
        }))
    },
};

impl HeadModel for CrossModalHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        CrossModalHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.weight.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("weight", &self.weight);
        w.scalar("logit_scale", self.logit_scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::zero_shot::cosine_logits;

    fn random(rows: usize, cols: usize, bound: f32, rng: &mut crate::rng::SplitMix64) -> Matrix {
        Matrix::from_vec(rows, cols, rng.uniform_vec(rows * cols, bound)).unwrap()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = seeded_rng(7);
        let (n, k, d) = (8, 3, 5);
        let x = random(n, d, 1.0, &mut rng);
        let head = CrossModalHead {
            weight: random(k, d, 0.5, &mut rng),
            logit_scale: 5.0,
        };
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let (_, grad) = head.loss_and_grad(&x, &labels);
        let e = 1e-2f32;
        for j in 0..k * d {
            let mut h = head.clone();
            h.weight.data[j] += e;
            let up = h.loss_and_grad(&x, &labels).0;
            h.weight.data[j] -= 2.0 * e;
            let num = (up - h.loss_and_grad(&x, &labels).0) / (2.0 * e);
            let a = grad.data[j];
            assert!(
                (a - num).abs() <= 2e-2 * a.abs().max(num.abs()) + 2e-4,
                "W {j}: {a} vs {num}"
            );
        }
    }

    /// The text-initialised head is zero-shot CLIP before any step.
    #[test]
    fn the_start_is_zero_shot() {
        let mut rng = seeded_rng(8);
        let text = random(4, 6, 1.0, &mut rng);
        let x = random(5, 6, 1.0, &mut rng);
        let head = CrossModalHead::from_text(&text, 100.0);
        let (ours, zs) = (head.logits(&x), cosine_logits(&x, &text, 100.0));
        for (a, b) in ours.data.iter().zip(&zs.data) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
    }

    /// `get_valid_batch_sizes`: 8 needs more than 4 text samples and 4 images, 32 more than 16
    /// of each; with none valid the error names the option to set.
    #[test]
    fn batch_sizes_must_fit_both_halves() {
        let set = |n: usize| LabelledSet {
            features: Matrix::zeros(n, 2),
            labels: vec![0; n],
        };
        let samples = Samples {
            images: set(40),
            text: set(5),
        };
        let opts = CrossModalOptions::default();
        let runs = configs(&samples, &opts, true).unwrap();
        assert_eq!(runs.len(), 2 * 3);
        assert!(runs.iter().all(|c| c.batch_size == 8));
        assert_eq!(runs[1].weight_decay, 0.01);
        assert_eq!(runs[3].lr, 1e-4);
        let none = configs(&samples, &opts, false).unwrap();
        assert_eq!(
            none,
            [Config {
                lr: NO_VALIDATION_LR,
                weight_decay: NO_VALIDATION_WEIGHT_DECAY,
                batch_size: 8
            }]
        );
        // Three classes: no batch of the grid fits, the largest that does is 5 (2 text + 3)...
        let few = Samples {
            images: set(40),
            text: set(3),
        };
        assert_eq!(batch_sizes(&few, &opts).unwrap(), [5]);
        // ...unless the user chose the batch size.
        let chosen = CrossModalOptions {
            batch_sizes: vec![8],
            shrink_batch: false,
            ..opts
        };
        let err = configs(&few, &chosen, true).unwrap_err().to_string();
        assert!(err.contains("batch-size"), "{err}");
        assert_eq!(Samples::halves(7, 0.5), (3, 4));
    }
}
