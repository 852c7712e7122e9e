//! CLAP (Silva-Rodríguez et al., "A Closer Look at the Few-Shot Adaptation of Large
//! Vision-Language Models", CVPR 2024; jusiro/CLAP `trainers/adapters.py` @2b18ea4,
//! `configs/trainers/SGD_lr1e-1_B256_ep300.yaml`, `experiments/experiment_CLAP.txt`).
//!
//! A zero-shot-initialised linear probe (ZS-LP): class prototypes `p_k`, initialised at the
//! text embeddings `t_k`, logits `scale · cos(f, p_k)`. CLAP adds a class-adaptive penalty
//! towards the zero-shot prototypes, `mean_k λ_k ‖p_k − t_k‖²`, whose multipliers are the
//! zero-shot model's mean softmax probability of class k on its own training samples
//! (`init_lagrangian_multipliers`): classes zero-shot already gets right stay close to it. No
//! validation set is used: the last epoch is kept.
//!
//! Training as the authors' Dassl config: SGD (momentum 0.9, no decay), lr 0.1, 300 epochs, one
//! constant warm-up epoch at 1e-5 then cosine, batch 256; the training pool is every augmented
//! view of every image, reshuffled each epoch, of which an epoch takes as many batches as the
//! image loader has (`TrainerXCostume.run_epoch`). The released experiments use the fixed
//! multipliers (`l2`); the code's augmented-Lagrangian outer step (`l2-adaptative`: after each
//! epoch the PHR update `λ ← max(0, λ + ρ h)`, `ρ ← h` with `h_k = ‖p_k − t_k‖²`) is
//! [`Constraint::Adaptive`].

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::cosine_cross_entropy;
use super::linalg::{seeded_rng, Matrix};
use super::method::method_boilerplate;
use super::epochs::{Batching, EpochLoop};
use super::optim::{Sgd, WarmupCosine};
use super::zero_shot::cosine_logits;
use super::{
    Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method, MethodCard,
    MethodError, Needs, Progress,
};

/// The penalty towards the zero-shot prototypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Constraint {
    /// ZS-LP: no penalty.
    None,
    /// CLAP as released: fixed class-adaptive multipliers.
    L2,
    /// Multipliers updated after each epoch by the augmented-Lagrangian (PHR) outer step.
    Adaptive,
}

impl Constraint {
    pub fn as_str(&self) -> &'static str {
        match self {
            Constraint::None => "none",
            Constraint::L2 => "l2",
            Constraint::Adaptive => "l2-adaptive",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClapOptions {
    pub constraint: Constraint,
    pub lr: f32,
    pub epochs: usize,
    pub batch_size: usize,
    pub momentum: f32,
    pub warmup_epochs: usize,
    pub warmup_lr: f32,
    pub seed: u64,
    /// Start from the task's mean un-normalised prompt embeddings (`FewShotTask::text_mean`),
    /// as the reference's `_get_base_text_features` does (default). The logits ignore a
    /// prototype's norm, but the effective step (∝ 1/‖p‖²) and the penalty's weight against
    /// the cross-entropy (∝ ‖p‖²) do not, and CLIP's text embeddings are not unit vectors:
    /// unit prototypes train ‖t‖² times faster under a penalty ‖t‖² times weaker than the
    /// reference's. `false`: the unit-norm classifier scaled to `text_norm`.
    pub prompt_mean: bool,
    /// The prototypes' norm when `prompt_mean` is off.
    pub text_norm: f32,
}

impl Default for ClapOptions {
    fn default() -> Self {
        ClapOptions {
            constraint: Constraint::L2,
            lr: 0.1,
            epochs: 300,
            batch_size: 256,
            momentum: 0.9,
            warmup_epochs: 1,
            warmup_lr: 1e-5,
            seed: 1,
            prompt_mean: true,
            text_norm: 1.0,
        }
    }
}

/// A CLAP head: the trained prototypes, cosine logits.
#[derive(Debug, Clone, PartialEq)]
pub struct ClapHead {
    /// K×D prototypes (not normalised; the logits normalise them).
    pub prototypes: Matrix,
    pub logit_scale: f32,
}

impl ClapHead {
    pub fn logits(&self, x: &Matrix) -> Matrix {
        cosine_logits(x, &self.prototypes, self.logit_scale)
    }
}

/// The prototypes under training, the zero-shot anchors and the multipliers.
#[derive(Debug, Clone)]
pub struct ClapModel {
    pub prototypes: Matrix,
    pub anchors: Matrix,
    /// λ_k.
    pub multipliers: Vec<f32>,
    /// ρ_k of the adaptive outer step (zeros at the start, as the reference).
    pub penalty: Vec<f32>,
    pub logit_scale: f32,
    pub constraint: Constraint,
}

impl ClapModel {
    /// Prototypes at the zero-shot classifier scaled to `text_norm`; multipliers from its
    /// training-set softmax.
    pub fn new(
        task: &FewShotTask,
        pool: &Matrix,
        labels: &[usize],
        constraint: Constraint,
        text_norm: f32,
    ) -> Self {
        let mut anchors = task.text.weights.clone();
        anchors.data.iter_mut().for_each(|v| *v *= text_norm);
        Self::with_anchors(task, pool, labels, constraint, &task.text.weights, anchors)
    }

    /// The reference's start: prototypes at `mean`, the mean over templates of the
    /// un-normalised prompt embeddings, and multipliers from the softmax of their cosine
    /// logits (the model's zero-shot logits at initialisation).
    pub fn from_prompt_mean(
        task: &FewShotTask,
        pool: &Matrix,
        labels: &[usize],
        constraint: Constraint,
        mean: &Matrix,
    ) -> Self {
        Self::with_anchors(task, pool, labels, constraint, mean, mean.clone())
    }

    fn with_anchors(
        task: &FewShotTask,
        pool: &Matrix,
        labels: &[usize],
        constraint: Constraint,
        zero_shot: &Matrix,
        anchors: Matrix,
    ) -> Self {
        let k = task.classes();
        let multipliers = if constraint == Constraint::None {
            vec![0.0; k]
        } else {
            let mut probs = cosine_logits(pool, zero_shot, task.text.logit_scale);
            let mut sum = vec![0f64; k];
            let mut count = vec![0usize; k];
            for (row, &y) in probs.data.chunks_mut(k).zip(labels) {
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let z: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
                sum[y] += ((row[y] - max) as f64).exp() / z;
                count[y] += 1;
            }
            // A class without samples gets 0/0 = NaN in the reference; it has nothing to keep.
            sum.iter()
                .zip(&count)
                .map(|(s, &c)| if c == 0 { 0.0 } else { (s / c as f64) as f32 })
                .collect()
        };
        ClapModel {
            prototypes: anchors.clone(),
            anchors,
            multipliers,
            penalty: vec![0.0; k],
            logit_scale: task.text.logit_scale,
            constraint,
        }
    }

    pub fn head(&self) -> ClapHead {
        ClapHead {
            prototypes: self.prototypes.clone(),
            logit_scale: self.logit_scale,
        }
    }

    /// `h_k = ‖p_k − t_k‖²`.
    pub fn distances(&self) -> Vec<f32> {
        self.prototypes
            .data
            .chunks(self.prototypes.cols)
            .zip(self.anchors.data.chunks(self.anchors.cols))
            .map(|(p, t)| p.iter().zip(t).map(|(a, b)| (a - b) * (a - b)).sum())
            .collect()
    }

    /// Cross-entropy + `mean_k λ_k h_k` on a batch of raw features, and its gradient with
    /// respect to the prototypes.
    pub fn loss_and_grad(&self, x: &Matrix, labels: &[usize]) -> (f32, Matrix) {
        let k = self.prototypes.rows;
        let (ce, mut grad) = cosine_cross_entropy(x, &self.prototypes, labels, self.logit_scale);
        let mut penalty = 0f64;
        for (c, h) in self.distances().into_iter().enumerate() {
            let lambda = self.multipliers[c];
            penalty += (lambda * h) as f64;
            let scale = 2.0 * lambda / k as f32;
            let (pr, tr) = (self.prototypes.row(c), self.anchors.row(c));
            for ((gv, &a), &b) in grad.row_mut(c).iter_mut().zip(pr).zip(tr) {
                *gv += scale * (a - b);
            }
        }
        (ce + (penalty / k as f64) as f32, grad)
    }

    /// The PHR outer step of `AdapterMethod.outer_step`.
    pub fn outer_step(&mut self) {
        let h = self.distances();
        for ((lambda, rho), &h) in self.multipliers.iter_mut().zip(&mut self.penalty).zip(&h) {
            let x = *lambda + *rho * h;
            *lambda = if x >= 0.0 { x } else { 0.0 };
            *rho = h;
        }
    }
}

/// The training pool: every augmented view of every image (the evaluation view when there are
/// none), with its labels.
pub fn pool(task: &FewShotTask) -> (Matrix, Vec<usize>) {
    let views = task.training_views();
    let d = task.dim();
    let mut data = Vec::with_capacity(views.len() * task.train.features.data.len());
    let mut labels = Vec::new();
    for v in &views {
        data.extend_from_slice(&v.data);
        labels.extend_from_slice(&task.train.labels);
    }
    (
        Matrix {
            rows: labels.len(),
            cols: d,
            data,
        },
        labels,
    )
}

/// Batches per epoch: the image loader's length, with Dassl's rule of dropping the last
/// incomplete batch only when the set holds a full one.
pub fn batches_per_epoch(images: usize, batch_size: usize) -> usize {
    if images >= batch_size {
        images / batch_size
    } else {
        1
    }
}

/// Trains the prototypes. `order(epoch)` gives the shuffled pool order of each epoch. Returns
/// the mean batch loss of each epoch.
pub fn train(
    model: &mut ClapModel,
    pool: &Matrix,
    labels: &[usize],
    images: usize,
    opts: &ClapOptions,
    order: &mut dyn FnMut(usize) -> Vec<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, MethodError> {
    let schedule = WarmupCosine {
        base_lr: opts.lr,
        epochs: opts.epochs,
        warmup_epochs: opts.warmup_epochs,
        warmup_lr: opts.warmup_lr,
    };
    let mut sgd = Sgd::new(opts.momentum, 0.0);
    let epoch_loop = EpochLoop {
        epochs: opts.epochs,
        batching: Batching::Count {
            size: opts.batch_size,
            count: batches_per_epoch(images, opts.batch_size.max(1)),
        },
    };
    epoch_loop.run(
        model,
        pool.rows,
        order,
        &mut |model, epoch, batch| {
            let x = pool.gather_rows(batch);
            let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let (loss, grad) = model.loss_and_grad(&x, &y);
            sgd.step(&mut [&mut model.prototypes.data], &[&grad.data], schedule.lr(epoch));
            Ok(loss)
        },
        // The outer step of the augmented Lagrangian follows each epoch.
        &mut |model, _| {
            if model.constraint == Constraint::Adaptive {
                model.outer_step();
            }
        },
        progress,
    )
}

/// CLAP on the task; the validation set is not used.
pub fn fit(
    task: &FewShotTask,
    opts: &ClapOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    let (pool, labels) = pool(task);
    if !(opts.text_norm > 0.0 && opts.text_norm.is_finite()) {
        return Err(MethodError::option(
            "text-norm",
            opts.text_norm,
            "must be a positive number",
        ));
    }
    let mut model = match (opts.prompt_mean, &task.text_mean) {
        (false, _) => ClapModel::new(task, &pool, &labels, opts.constraint, opts.text_norm),
        (true, Some(mean)) => {
            if (mean.rows, mean.cols) != (task.classes(), task.dim()) {
                return Err(MethodError::option(
                    "prompt-mean",
                    format!("{} × {}", mean.rows, mean.cols),
                    "the mean prompt embeddings must be K × D, like the text classifier",
                ));
            }
            ClapModel::from_prompt_mean(task, &pool, &labels, opts.constraint, mean)
        }
        (true, None) => {
            return Err(MethodError::option(
                "prompt-mean",
                true,
                "the task lacks the mean un-normalised prompt embeddings CLAP starts from \
                 (text features cached by an older version: extract them again)",
            ))
        }
    };
    let mut rng = seeded_rng(opts.seed);
    let n = pool.rows;
    let mut order = |_: usize| rng.permutation(n);
    let images = task.train.labels.len();
    let losses = train(
        &mut model, &pool, &labels, images, opts, &mut order, progress,
    )?;
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    let chosen = vec![(
        "mean_multiplier".to_string(),
        mean(&model.multipliers).to_string(),
    )];
    Ok(Fitted {
        head: Head::new(model.head()),
        chosen,
        losses,
    })
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "clap",
    title: "CLAP",
    paper: "Silva-Rodríguez et al., CVPR 2024",
    code: "jusiro/CLAP",
    colour: (0, 0, 128),
    variant_colours: &[],
    reported_as: None,
    without_validation: "unchanged: its class-adaptive penalty is set from the training data, and the last epoch is kept",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.08, 1.0),
        flip: true,
        source: "CLAP's Dassl config: random_resized_crop + random_flip, the views pooled",
    },
    needs: Needs::Features,
    options: &[],
    configure: |_, _, seed| {
        Method::new(ClapOptions {
            seed,
            ..ClapOptions::default()
        })
    },
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No("it learns one weight vector per training class (a linear probe held near their text embeddings)"),
};

impl FewShotMethod for ClapOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        format!(
            "constraint={} lr={} epochs={} batch={} prototypes={}",
            self.constraint.as_str(),
            self.lr,
            self.epochs,
            self.batch_size,
            if self.prompt_mean {
                "prompt-mean".to_string()
            } else {
                format!("unit*{}", self.text_norm)
            }
        )
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }
}

/// Tensors: `prototypes` (K×D) and `logit_scale`.
pub static CODEC: HeadCodec = HeadCodec {
    kind: "clap",
    anchor: ("prototypes", "K × D, one prototype per class"),
    input: FeatureSpace::Projected,
    read: |r, prototypes| {
        Ok(Box::new(ClapHead {
            prototypes,
            logit_scale: r.logit_scale()?,
        }))
    },
};

impl HeadModel for ClapHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        ClapHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.prototypes.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("prototypes", &self.prototypes);
        w.scalar("logit_scale", self.logit_scale);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = seeded_rng(3);
        let (b, k, d) = (5, 3, 6);
        let anchors = Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0)).unwrap();
        let mut prototypes = anchors.clone();
        prototypes
            .data
            .iter_mut()
            .zip(rng.uniform_vec(k * d, 0.3))
            .for_each(|(p, n)| *p += n);
        let model = ClapModel {
            prototypes,
            anchors,
            multipliers: vec![0.9, 0.4, 0.1],
            penalty: vec![0.0; k],
            logit_scale: 5.0,
            constraint: Constraint::L2,
        };
        let x = Matrix::from_vec(b, d, rng.uniform_vec(b * d, 2.0)).unwrap();
        let y = vec![0, 1, 2, 0, 2];
        let (_, grad) = model.loss_and_grad(&x, &y);
        let e = 1e-2f32;
        let mut probe = model.clone();
        for j in 0..k * d {
            let orig = probe.prototypes.data[j];
            probe.prototypes.data[j] = orig + e;
            let up = probe.loss_and_grad(&x, &y).0;
            probe.prototypes.data[j] = orig - e;
            let down = probe.loss_and_grad(&x, &y).0;
            probe.prototypes.data[j] = orig;
            let numeric = (up - down) / (2.0 * e);
            let a = grad.data[j];
            assert!(
                (a - numeric).abs() <= 2e-2 * a.abs().max(numeric.abs()) + 2e-4,
                "{j}: {a} vs {numeric}"
            );
        }
    }

    #[test]
    fn outer_step_is_the_phr_update() {
        let anchors = Matrix::from_vec(2, 1, vec![0.0, 0.0]).unwrap();
        let mut model = ClapModel {
            prototypes: Matrix::from_vec(2, 1, vec![2.0, 1.0]).unwrap(),
            anchors,
            multipliers: vec![0.5, 0.25],
            penalty: vec![0.0, 0.0],
            logit_scale: 1.0,
            constraint: Constraint::Adaptive,
        };
        // ρ = 0 first: λ unchanged, ρ ← h = (4, 1); then λ ← λ + ρ·h = (0.5 + 16, 0.25 + 1).
        model.outer_step();
        assert_eq!(
            (model.multipliers.clone(), model.penalty.clone()),
            (vec![0.5, 0.25], vec![4.0, 1.0])
        );
        model.outer_step();
        assert_eq!(model.multipliers, vec![16.5, 1.25]);
    }

    #[test]
    fn batches_follow_the_image_loader() {
        assert_eq!(batches_per_epoch(20, 8), 2);
        assert_eq!(batches_per_epoch(5, 8), 1);
        assert_eq!(batches_per_epoch(512, 256), 2);
    }
}
