//! TaskRes (Yu et al., "Task Residual for Tuning Vision-Language Models", CVPR 2023;
//! geekyutao/TaskRes `trainers/taskres.py`, `configs/trainers/TaskRes/*.yaml`,
//! `train_regular.sh` @293cc9e).
//!
//! The zero-shot classifier stays frozen as a *base* `t_k`, and a task residual `x_k`, one
//! vector per class and initialised at zero, is learned on top of it:
//! `w_k = t_k + α·x_k`, `logits = scale · cos(f, w_k)`. At the start the head is zero-shot CLIP
//! exactly; α sets how far the residual may pull each class away from its prior.
//!
//! As the authors' code runs it:
//! - the base is the mean over templates of the *un-normalised* prompt embeddings
//!   (`_get_base_text_features`), [`FewShotTask::text_mean`]; its norm matters, since the
//!   residual is added before the normalisation;
//! - α = 0.5, and 1.0 on Flowers102 (`train_regular.sh`, `RESIDUAL_SCALE`);
//! - Dassl's Adam (`torch.optim.Adam`, weight decay 5e-4 added to the gradient), lr 2e-3 (2e-4
//!   on ImageNet), one constant warm-up epoch at 1e-5 then cosine, batch 256 with Dassl's
//!   `drop_last` rule; 100 epochs for 1, 2 and 4 shots, 200 for 8 and 16;
//! - a fresh random resized crop and flip per epoch (here the cached view `epoch mod V`);
//! - the last epoch is kept: Dassl's `TEST.FINAL_MODEL` is `last_step`, nothing is chosen on
//!   validation.
//!
//! The "enhanced base" variant (TaskRes*, a base re-encoded through a text projection tuned
//! beforehand) needs that tuned projection and is not part of this method.

use super::epochs::{Batching, EpochLoop};
use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::cosine_cross_entropy;
use super::linalg::{seeded_rng, Matrix};
use super::method::method_boilerplate;
use super::optim::{Adam, WarmupCosine};
use super::overrides::{MethodOverrides, IMAGENET};
use super::zero_shot::cosine_logits;
use super::{
    Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head,
    Method, MethodCard, MethodError, Needs, Progress,
};

#[derive(Debug, Clone, PartialEq)]
pub struct TaskResOptions {
    /// The residual scale α (`TRAINER.TaskRes.RESIDUAL_SCALE`).
    pub alpha: f32,
    pub lr: f32,
    /// `None`: by shots, as the authors' scripts ([`epochs_for_shots`]).
    pub epochs: Option<usize>,
    pub batch_size: usize,
    /// Dassl's `OPTIM.WEIGHT_DECAY` default, which the TaskRes configs keep.
    pub weight_decay: f32,
    pub warmup_epochs: usize,
    pub warmup_lr: f32,
    pub seed: u64,
}

impl Default for TaskResOptions {
    fn default() -> Self {
        TaskResOptions {
            alpha: 0.5,
            lr: 2e-3,
            epochs: None,
            batch_size: 256,
            weight_decay: 5e-4,
            warmup_epochs: 1,
            warmup_lr: 1e-5,
            seed: 1,
        }
    }
}

impl TaskResOptions {
    /// The authors' values on a dataset (`train_regular.sh`): α = 1 on Flowers102 and 0.5
    /// elsewhere; lr 2e-4 on ImageNet (`adam_lr2e-4_*`) and 2e-3 elsewhere (`adam_lr2e-3_*`).
    pub fn for_dataset(dataset: &str) -> Self {
        let d = TaskResOptions::default();
        TaskResOptions {
            alpha: if dataset == "oxford_flowers" { 1.0 } else { d.alpha },
            lr: if dataset == IMAGENET { 2e-4 } else { d.lr },
            ..d
        }
    }
}

/// The authors' epochs by shot count: the `ep100` configs for 1, 2 and 4 shots, `ep200` for 8
/// and 16 (`train_regular.sh`, ImageNet included).
pub fn epochs_for_shots(shots: usize) -> usize {
    if shots <= 4 {
        100
    } else {
        200
    }
}

/// A TaskRes head: the frozen base, the learned residual and its scale.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResHead {
    /// K×D base classifier (the mean un-normalised prompt embeddings).
    pub base: Matrix,
    /// K×D task residual.
    pub residual: Matrix,
    pub alpha: f32,
    pub logit_scale: f32,
}

impl TaskResHead {
    /// The head before training: the residual at zero, so the logits are zero-shot CLIP's.
    pub fn new(base: Matrix, alpha: f32, logit_scale: f32) -> Self {
        TaskResHead {
            residual: Matrix::zeros(base.rows, base.cols),
            base,
            alpha,
            logit_scale,
        }
    }

    /// `t_k + α·x_k`, not normalised (the logits normalise it).
    pub fn classifier(&self) -> Matrix {
        let mut w = self.base.clone();
        w.data
            .iter_mut()
            .zip(&self.residual.data)
            .for_each(|(w, r)| *w += self.alpha * r);
        w
    }

    pub fn logits(&self, x: &Matrix) -> Matrix {
        cosine_logits(x, &self.classifier(), self.logit_scale)
    }

    /// The mean cross-entropy on a batch of raw features and its gradient with respect to the
    /// residual (the weight decay is the optimiser's, as in PyTorch).
    pub fn loss_and_grad(&self, x: &Matrix, labels: &[usize]) -> (f32, Matrix) {
        let (loss, mut grad) = cosine_cross_entropy(x, &self.classifier(), labels, self.logit_scale);
        // w = t + α·x: dx = α dw.
        grad.data.iter_mut().for_each(|v| *v *= self.alpha);
        (loss, grad)
    }
}

/// Trains the residual for `epochs` epochs over the training views (view `epoch mod V`).
/// `order(epoch)` gives each epoch's sample order (a seeded shuffle in [`fit`]; the parity test
/// replays PyTorch's). Returns the mean batch loss of each epoch.
pub fn train(
    head: &mut TaskResHead,
    task: &FewShotTask,
    opts: &TaskResOptions,
    epochs: usize,
    order: &mut dyn FnMut(usize) -> Vec<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, MethodError> {
    let views = task.training_views();
    let labels = &task.train.labels;
    let schedule = WarmupCosine {
        base_lr: opts.lr,
        epochs,
        warmup_epochs: opts.warmup_epochs,
        warmup_lr: opts.warmup_lr,
    };
    let mut adam = Adam::new(opts.weight_decay);
    let epoch_loop = EpochLoop {
        epochs,
        batching: Batching::DropLast {
            size: opts.batch_size,
        },
    };
    epoch_loop.run(
        head,
        labels.len(),
        order,
        &mut |head, epoch, batch| {
            let x = views[epoch % views.len()].gather_rows(batch);
            let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let (loss, grad) = head.loss_and_grad(&x, &y);
            adam.step(
                &mut [&mut head.residual.data],
                &[&grad.data],
                schedule.lr(epoch),
            );
            Ok(loss)
        },
        &mut |_, _| {},
        progress,
    )
}

/// The base the authors start from: the task's mean un-normalised prompt embeddings.
pub fn base(task: &FewShotTask) -> Result<&Matrix, MethodError> {
    let mean = task
        .text_mean
        .as_ref()
        .ok_or(MethodError::NeedsTextMean { method: CARD.name })?;
    if mean.cols != task.dim() {
        return Err(MethodError::Width {
            what: "the mean prompt embeddings",
            expected: task.dim(),
            found: mean.cols,
        });
    }
    if mean.rows != task.classes() {
        return Err(MethodError::Rows {
            what: "the mean prompt embeddings",
            found: mean.rows,
            labels: task.classes(),
        });
    }
    Ok(mean)
}

/// TaskRes on the task; the validation set is not used (the last epoch is kept).
pub fn fit(
    task: &FewShotTask,
    opts: &TaskResOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    if !(opts.lr > 0.0 && opts.lr.is_finite()) {
        return Err(MethodError::option("lr", opts.lr, "must be positive"));
    }
    if !opts.alpha.is_finite() {
        return Err(MethodError::option("alpha", opts.alpha, "must be finite"));
    }
    let epochs = opts
        .epochs
        .unwrap_or_else(|| epochs_for_shots(task.shots()));
    let mut head = TaskResHead::new(base(task)?.clone(), opts.alpha, task.text.logit_scale);
    let mut rng = seeded_rng(opts.seed);
    let n = task.train.labels.len();
    let mut order = |_: usize| rng.permutation(n);
    let losses = train(&mut head, task, opts, epochs, &mut order, progress)?;
    let norm = |m: &Matrix| m.data.iter().map(|v| v * v).sum::<f32>().sqrt();
    let chosen = vec![
        ("epochs".to_string(), epochs.to_string()),
        ("residual_norm".to_string(), norm(&head.residual).to_string()),
    ];
    Ok(Fitted {
        head: Head::new(head),
        chosen,
        losses,
    })
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "taskres",
    title: "TaskRes",
    paper: "Yu et al., CVPR 2023",
    code: "geekyutao/TaskRes",
    colour: (197, 176, 213),
    variant_colours: &[],
    reported_as: None,
    without_validation: "unchanged: the last epoch, as the authors' Dassl trainer keeps it (nothing is chosen on validation)",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.08, 1.0),
        flip: true,
        source: "TaskRes's Dassl configs: `random_resized_crop` + `random_flip`, a fresh crop every epoch",
    },
    needs: Needs::Features,
    options: &["alpha", "lr", "epochs", "batch-size"],
    configure,
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No("it learns a residual for each training class's text embedding, and has none for a class it never saw"),
};

/// The protocol's TaskRes: the authors' values for the dataset, the user's options on top.
fn configure(o: &MethodOverrides, dataset: &str, seed: u64) -> Method {
    let d = TaskResOptions::for_dataset(dataset);
    Method::new(TaskResOptions {
        alpha: o.alpha.unwrap_or(d.alpha),
        lr: o.lr.unwrap_or(d.lr),
        epochs: o.epochs,
        batch_size: o.batch_size.unwrap_or(d.batch_size),
        seed,
        ..d
    })
}

impl FewShotMethod for TaskResOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        format!(
            "alpha={} lr={} epochs={} batch={} weight_decay={}",
            self.alpha,
            self.lr,
            self.epochs
                .map_or("by-shots".to_string(), |e| e.to_string()),
            self.batch_size,
            self.weight_decay
        )
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// Tensors: `base` and `residual` (K×D), `alpha` and `logit_scale`.
pub static CODEC: HeadCodec = HeadCodec {
    kind: "taskres",
    anchor: ("base", "K × D, the frozen base classifier"),
    input: FeatureSpace::Projected,
    read: |r, base| {
        let (k, d) = (base.rows, base.cols);
        Ok(Box::new(TaskResHead {
            residual: r.matrix("residual", Some(k), Some(d), "K × D task residual")?,
            alpha: r.scalar("alpha", "the residual scale")?,
            logit_scale: r.logit_scale()?,
            base,
        }))
    },
};

impl HeadModel for TaskResHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        TaskResHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.base.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("base", &self.base);
        w.matrix("residual", &self.residual);
        w.scalar("alpha", self.alpha);
        w.scalar("logit_scale", self.logit_scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(rows: usize, cols: usize, bound: f32, rng: &mut crate::rng::SplitMix64) -> Matrix {
        Matrix::from_vec(rows, cols, rng.uniform_vec(rows * cols, bound)).unwrap()
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = seeded_rng(5);
        let (n, k, d) = (7, 3, 6);
        let x = random(n, d, 1.0, &mut rng);
        let mut head = TaskResHead::new(random(k, d, 2.0, &mut rng), 0.5, 10.0);
        head.residual = random(k, d, 1.0, &mut rng);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let (_, grad) = head.loss_and_grad(&x, &labels);
        let e = 1e-2f32;
        for j in 0..k * d {
            let mut h = head.clone();
            h.residual.data[j] += e;
            let up = h.loss_and_grad(&x, &labels).0;
            h.residual.data[j] -= 2.0 * e;
            let down = h.loss_and_grad(&x, &labels).0;
            let num = (up - down) / (2.0 * e);
            let a = grad.data[j];
            assert!(
                (a - num).abs() <= 2e-2 * a.abs().max(num.abs()) + 2e-4,
                "x {j}: {a} vs {num}"
            );
        }
    }

    /// A zero residual is zero-shot CLIP on the base, bit for bit.
    #[test]
    fn the_untrained_head_is_zero_shot() {
        let mut rng = seeded_rng(6);
        let base = random(4, 5, 3.0, &mut rng);
        let x = random(9, 5, 1.0, &mut rng);
        let head = TaskResHead::new(base.clone(), 0.5, 100.0);
        assert_eq!(head.logits(&x).data, cosine_logits(&x, &base, 100.0).data);
    }

    #[test]
    fn the_authors_values_by_dataset_and_shots() {
        assert_eq!(TaskResOptions::for_dataset("oxford_flowers").alpha, 1.0);
        assert_eq!(TaskResOptions::for_dataset("dtd").alpha, 0.5);
        assert_eq!(TaskResOptions::for_dataset("imagenet").lr, 2e-4);
        assert_eq!(TaskResOptions::for_dataset("eurosat").lr, 2e-3);
        assert_eq!(TaskResOptions::for_dataset("").batch_size, 256);
        assert_eq!([1, 2, 4, 8, 16].map(epochs_for_shots), [100, 100, 100, 200, 200]);
    }
}
