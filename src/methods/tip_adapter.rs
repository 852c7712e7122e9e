//! Tip-Adapter and Tip-Adapter-F (Zhang et al., 2022; gaopengcuhk/Tip-Adapter `main.py`,
//! `utils.py` @d0e2d6f8): a key-value cache built from the few-shot features.
//!
//! - keys: the training features averaged over the augmented views, then normalised
//!   (`build_cache_model`); values: one-hot labels;
//! - `logits = scale·f Wᵀ + α · exp(−β (1 − f·keysᵀ)) · values`, `f` normalised;
//! - α and β searched on a grid over the validation set (`search_hp`): β in
//!   `0.1 + i·(β_max − 0.1)/200`, α in `0.1 + i·(α_max − 0.1)/20`; the authors search ImageNet
//!   on its test set, which we never do (without a validation set the initial values are kept);
//! - Tip-Adapter-F: the keys become trainable (AdamW lr 1e-3, eps 1e-4, weight decay 0.01,
//!   cosine over all iterations, batch 256, 20 epochs), with α, β at their initial values while
//!   training; the best epoch is chosen on validation (the authors' script uses the test set,
//!   as an issue on their repository points out), then α, β are searched again.

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{argmax_rows, cross_entropy_backward, gemm, seeded_rng, Matrix};
use super::method::method_boilerplate;
use super::epochs::{BestEpoch, Batching, EpochLoop, Ties};
use super::optim::{cosine_annealing, AdamW};
use super::zero_shot::cosine_logits;
use super::{
    eval, Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method,
    MethodCard, MethodError, MethodOverrides, Needs, Progress, TextClassifier,
};

/// Options, with the authors' per-dataset values in [`TipOptions::for_dataset`].
#[derive(Debug, Clone, PartialEq)]
pub struct TipOptions {
    /// α used when there is no validation set, and while training Tip-Adapter-F.
    pub alpha: f32,
    pub beta: f32,
    /// Upper ends of the search grids `(β_max, α_max)` (`search_scale`).
    pub search_scale: (f32, f32),
    /// Grid sizes `(β steps, α steps)` (`search_step`).
    pub search_steps: (usize, usize),
    pub lr: f32,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for TipOptions {
    /// The ImageNet configuration (`configs/imagenet.yaml`), the generic one.
    fn default() -> Self {
        TipOptions {
            alpha: 1.17,
            beta: 1.0,
            search_scale: (7.0, 3.0),
            search_steps: (200, 20),
            lr: 1e-3,
            epochs: 20,
            batch_size: 256,
            seed: 1,
        }
    }
}

impl TipOptions {
    /// The authors' `configs/<dataset>.yaml` values (gaopengcuhk/Tip-Adapter, RN50), by CoOp
    /// dataset key: `search_scale`, `init_alpha`, `train_epoch`; every config has `init_beta`
    /// 1, `search_step` (200, 20), lr 1e-3, and `main.py` batches 256. ImageNet's and
    /// oxford_pets' equal the default; an unknown dataset gets the default.
    pub fn for_dataset(key: &str) -> Self {
        let (scale, alpha, epochs) = match key {
            "caltech101" => ((12.0, 5.0), 3.0, 20),
            "dtd" => ((13.0, 13.0), 2.0, 20),
            "eurosat" => ((12.0, 10.0), 2.0, 100),
            "fgvc_aircraft" | "fgvc" => ((30.0, 30.0), 5.0, 20),
            "food101" => ((10.0, 10.0), 1.17, 20),
            "oxford_flowers" => ((50.0, 50.0), 10.0, 20),
            "stanford_cars" => ((20.0, 10.0), 3.0, 20),
            "sun397" => ((12.0, 10.0), 1.17, 20),
            "ucf101" => ((7.0, 3.0), 3.0, 20),
            // imagenet, oxford_pets and anything else.
            _ => ((7.0, 3.0), 1.17, 20),
        };
        TipOptions {
            alpha,
            search_scale: scale,
            epochs,
            ..Default::default()
        }
    }
}

/// A Tip-Adapter head.
#[derive(Debug, Clone, PartialEq)]
pub struct TipHead {
    /// `N × D` cache keys (normalised at build time; trained keys are used as they are, as
    /// the reference's `adapter.weight`).
    pub keys: Matrix,
    /// The class of each key (the one-hot values).
    pub values: Vec<usize>,
    pub alpha: f32,
    pub beta: f32,
    pub classes: Matrix,
    pub logit_scale: f32,
}

impl TipHead {
    /// Builds the training-free cache from the task's training features.
    pub fn build(task: &FewShotTask, opts: &TipOptions) -> Self {
        let views = task.training_views();
        let mut keys = Matrix::zeros(task.train.features.rows, task.dim());
        for v in &views {
            keys.data.iter_mut().zip(&v.data).for_each(|(k, x)| *k += x);
        }
        keys.data.iter_mut().for_each(|k| *k /= views.len() as f32);
        TipHead {
            keys: keys.normalized(),
            values: task.train.labels.clone(),
            alpha: opts.alpha,
            beta: opts.beta,
            classes: task.text.weights.clone(),
            logit_scale: task.text.logit_scale,
        }
    }

    /// `exp(−β(1 − f·kᵀ))` summed per class: the cache logits before α.
    fn cache_logits(&self, affinity: &[f32], beta: f32, rows: usize) -> Matrix {
        let (n, k) = (self.keys.rows, self.classes.rows);
        let mut out = Matrix::zeros(rows, k);
        for i in 0..rows {
            let a = &affinity[i * n..(i + 1) * n];
            let o = out.row_mut(i);
            for (&v, &class) in a.iter().zip(&self.values) {
                o[class] += (-(beta - beta * v)).exp();
            }
        }
        out
    }

    fn affinity(&self, f: &Matrix) -> Vec<f32> {
        let mut a = vec![0f32; f.rows * self.keys.rows];
        gemm(
            &f.data,
            false,
            &self.keys.data,
            true,
            &mut a,
            f.rows,
            f.cols,
            self.keys.rows,
            false,
        );
        a
    }

    pub fn logits(&self, x: &Matrix) -> Matrix {
        let mut out = cosine_logits(x, &self.classes, self.logit_scale);
        let f = x.normalized();
        let cache = self.cache_logits(&self.affinity(&f), self.beta, x.rows);
        out.data
            .iter_mut()
            .zip(&cache.data)
            .for_each(|(o, c)| *o += self.alpha * c);
        out
    }

    /// Grid search of (α, β) on `(x, labels)`; keeps the current values when the set is
    /// empty. Returns the best accuracy.
    pub fn search(
        &mut self,
        x: &Matrix,
        labels: &[usize],
        opts: &TipOptions,
        progress: &mut dyn FnMut(Progress),
    ) -> f32 {
        if labels.is_empty() {
            return f32::NAN;
        }
        let grid = |max: f32, steps: usize| -> Vec<f32> {
            (0..steps)
                .map(|i| i as f32 * (max - 0.1) / steps as f32 + 0.1)
                .collect()
        };
        let (betas, alphas) = (
            grid(opts.search_scale.0, opts.search_steps.0),
            grid(opts.search_scale.1, opts.search_steps.1),
        );
        let clip = cosine_logits(x, &self.classes, self.logit_scale);
        let affinity = self.affinity(&x.normalized());
        let mut best = (0f32, self.alpha, self.beta);
        let mut combined = clip.clone();
        for (bi, &beta) in betas.iter().enumerate() {
            let cache = self.cache_logits(&affinity, beta, x.rows);
            for &alpha in &alphas {
                for ((o, c), z) in combined.data.iter_mut().zip(&cache.data).zip(&clip.data) {
                    *o = z + c * alpha;
                }
                let pred = argmax_rows(&combined.data, combined.cols);
                let acc = 100.0 * pred.iter().zip(labels).filter(|(p, y)| p == y).count() as f32
                    / labels.len() as f32;
                // Strictly better only, as the reference: the first best (β, α) wins.
                if acc > best.0 {
                    best = (acc, alpha, beta);
                }
            }
            progress(Progress::Search {
                done: bi + 1,
                total: betas.len(),
            });
        }
        self.alpha = best.1;
        self.beta = best.2;
        best.0
    }

    /// Loss and gradient with respect to the keys on a batch of normalised features.
    pub fn loss_and_key_grad(&self, f: &Matrix, labels: &[usize]) -> (f32, Matrix) {
        let (b, n, k) = (f.rows, self.keys.rows, self.classes.rows);
        let affinity = self.affinity(f);
        let mut logits = cosine_logits(f, &self.classes, self.logit_scale);
        let exp: Vec<f32> = affinity
            .iter()
            .map(|&a| (-(self.beta - self.beta * a)).exp())
            .collect();
        for i in 0..b {
            for (j, &class) in self.values.iter().enumerate() {
                logits.data[i * k + class] += self.alpha * exp[i * n + j];
            }
        }
        let loss = cross_entropy_backward(&mut logits.data, labels, k);
        // d exp[i,j] = α·G[i, class_j]; d affinity = d exp · β·exp; d keys = d affinityᵀ f.
        let mut d_aff = vec![0f32; b * n];
        for i in 0..b {
            for (j, &class) in self.values.iter().enumerate() {
                d_aff[i * n + j] =
                    self.alpha * logits.data[i * k + class] * self.beta * exp[i * n + j];
            }
        }
        let mut grad = Matrix::zeros(n, f.cols);
        gemm(
            &d_aff,
            true,
            &f.data,
            false,
            &mut grad.data,
            n,
            b,
            f.cols,
            false,
        );
        (loss, grad)
    }
}

/// What Tip-Adapter-F's training left: the mean batch loss of each epoch and the epoch whose
/// keys were kept.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainedKeys {
    pub losses: Vec<f32>,
    pub best_epoch: usize,
}

/// Tip-Adapter-F's training of the keys (`run_tip_adapter_F`), with α and β at the head's values:
/// epoch `e` visits the training rows of view `e mod V` in the order `order(e)`, in batches of
/// `batch_size`; AdamW with the cosine stepped per iteration; the keys of the best validation
/// epoch are kept (the last epoch's without a validation set).
pub fn train_keys(
    head: &mut TipHead,
    task: &FewShotTask,
    opts: &TipOptions,
    order: &mut dyn FnMut(usize) -> Vec<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<TrainedKeys, MethodError> {
    let views: Vec<Matrix> = task
        .training_views()
        .iter()
        .map(|v| v.normalized())
        .collect();
    let labels = &task.train.labels;
    let n = labels.len();
    let total = opts.epochs * n.div_ceil(opts.batch_size.max(1));
    let mut adamw = AdamW::new(1e-4, 0.01);
    let mut steps = 0;
    let mut best = BestEpoch::new(head.keys.clone());
    let epoch_loop = EpochLoop {
        epochs: opts.epochs,
        batching: Batching::KeepLast {
            size: opts.batch_size,
        },
    };
    let losses = epoch_loop.run::<_, MethodError>(
        head,
        n,
        order,
        &mut |head, epoch, batch| {
            let f = views[epoch % views.len()].gather_rows(batch);
            let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let (loss, grad) = head.loss_and_key_grad(&f, &y);
            adamw.step(
                &mut [&mut head.keys.data],
                &[&grad.data],
                cosine_annealing(opts.lr, steps, total),
            );
            steps += 1;
            Ok(loss)
        },
        &mut |head, epoch| {
            let val = eval::accuracy(&head.logits(&task.val.features), &task.val.labels);
            best.offer(epoch, val, Ties::KeepFirst, || head.keys.clone());
        },
        progress,
    )?;
    head.keys = best.value;
    Ok(TrainedKeys {
        losses,
        best_epoch: best.epoch,
    })
}

/// Tip-Adapter (`finetune = false`) or Tip-Adapter-F.
pub fn fit(
    task: &FewShotTask,
    opts: &TipOptions,
    finetune: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    if opts.search_steps.0 == 0 || opts.search_steps.1 == 0 {
        return Err(MethodError::option(
            "search-steps",
            format!("{:?}", opts.search_steps),
            "both grids need at least one step",
        ));
    }
    let mut head = TipHead::build(task, opts);
    let mut losses = Vec::new();
    let mut chosen = Vec::new();
    if finetune {
        let n = task.train.labels.len();
        let mut rng = seeded_rng(opts.seed);
        let mut order = |_epoch: usize| rng.permutation(n);
        let trained = train_keys(&mut head, task, opts, &mut order, progress)?;
        losses = trained.losses;
        chosen.push(("best_epoch".to_string(), trained.best_epoch.to_string()));
    }
    head.search(&task.val.features, &task.val.labels, opts, progress);
    chosen.push(("alpha".into(), head.alpha.to_string()));
    chosen.push(("beta".into(), head.beta.to_string()));
    Ok(Fitted {
        head: Head::new(head),
        chosen,
        losses,
    })
}

/// Builds a head directly (for tests and for callers with their own cache).
pub fn head(
    keys: Matrix,
    values: Vec<usize>,
    alpha: f32,
    beta: f32,
    text: &TextClassifier,
) -> TipHead {
    TipHead {
        keys,
        values,
        alpha,
        beta,
        classes: text.weights.clone(),
        logit_scale: text.logit_scale,
    }
}

// The methods' cards, options and head codec.

/// Training-free Tip-Adapter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TipAdapter(pub TipOptions);

/// Tip-Adapter-F: the cache keys fine-tuned.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TipAdapterF(pub TipOptions);

/// The authors' augmentation: the cache averages 10 augmented passes over the training set,
/// and Tip-Adapter-F trains on augmented images.
const TIP_AUGMENTATION: Augmentation = Augmentation::RandomResizedCrop {
    scale: (0.5, 1.0),
    flip: true,
    source: "Tip-Adapter `main.py`: RandomResizedCrop(scale=(0.5, 1)) + RandomHorizontalFlip, 10 passes for the cache",
};

pub static CARD: MethodCard = MethodCard {
    name: "tip-adapter",
    title: "Tip-Adapter",
    paper: "Zhang et al., ECCV 2022",
    code: "gaopengcuhk/Tip-Adapter",
    colour: (23, 190, 207),
    variant_colours: &[],
    reported_as: Some("Tip-Adapter"),
    without_validation: "the authors' per-dataset `init_alpha`, `init_beta`",
    augmentation: TIP_AUGMENTATION,
    needs: Needs::Features,
    options: &["alpha", "beta"],
    configure: |o, dataset, seed| Method::new(TipAdapter(tip_options(o, dataset, seed, false))),
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No("its cache holds the training images with their one-hot labels, so it scores only the classes it was trained on"),
};

pub static CARD_F: MethodCard = MethodCard {
    name: "tip-adapter-f",
    title: "Tip-Adapter-F",
    colour: (31, 119, 180),
    reported_as: Some("Tip-Adapter-F"),
    without_validation: "the last epoch, then the initial α, β",
    options: &["alpha", "beta", "lr", "epochs", "batch-size"],
    configure: |o, dataset, seed| Method::new(TipAdapterF(tip_options(o, dataset, seed, true))),
    ..CARD
};

/// The authors' values for `dataset` with the user's on top (the training options only for
/// Tip-Adapter-F, which trains).
fn tip_options(o: &MethodOverrides, dataset: &str, seed: u64, trains: bool) -> TipOptions {
    let d = TipOptions::for_dataset(dataset);
    TipOptions {
        alpha: o.alpha.unwrap_or(d.alpha),
        beta: o.beta.unwrap_or(d.beta),
        lr: if trains { o.lr.unwrap_or(d.lr) } else { d.lr },
        epochs: if trains {
            o.epochs.unwrap_or(d.epochs)
        } else {
            d.epochs
        },
        batch_size: if trains {
            o.batch_size.unwrap_or(d.batch_size)
        } else {
            d.batch_size
        },
        seed,
        ..d
    }
}

fn describe(o: &TipOptions) -> String {
    format!(
        "alpha={} beta={} scale={:?} steps={:?} lr={} epochs={} batch={}",
        o.alpha, o.beta, o.search_scale, o.search_steps, o.lr, o.epochs, o.batch_size
    )
}

/// Tip-Adapter and Tip-Adapter-F share their options; the latter fine-tunes the keys.
macro_rules! tip_method {
    ($method:ident, $card:ident, $finetune:expr) => {
        impl FewShotMethod for $method {
            method_boilerplate!($card);

            fn describe(&self) -> String {
                describe(&self.0)
            }

            fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
                fit(task, &self.0, $finetune, cx.progress).map(Fit::from)
            }

            fn set_seed(&mut self, seed: u64) {
                self.0.seed = seed;
            }
        }
    };
}
tip_method!(TipAdapter, CARD, false);
tip_method!(TipAdapterF, CARD_F, true);

/// Tensors: `classes` (K×D), `logit_scale`, `keys` (N×D), `values` (N class indices), `alpha`,
/// `beta`.
pub static CODEC: HeadCodec = HeadCodec {
    kind: "tip-adapter",
    anchor: ("classes", "K × D, one class embedding per row"),
    input: FeatureSpace::Projected,
    read: |r, classes| {
        let keys = r.matrix(
            "keys",
            None,
            Some(classes.cols),
            "N × D, one cache key per row",
        )?;
        Ok(Box::new(TipHead {
            values: r.indices("values", Some(keys.rows), classes.rows, "a class index")?,
            keys,
            alpha: r.scalar("alpha", "one value")?,
            beta: r.scalar("beta", "one value")?,
            logit_scale: r.logit_scale()?,
            classes,
        }))
    },
};

impl HeadModel for TipHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        TipHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.classes.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("classes", &self.classes);
        w.scalar("logit_scale", self.logit_scale);
        w.matrix("keys", &self.keys);
        w.indices("values", &self.values);
        w.scalar("alpha", self.alpha);
        w.scalar("beta", self.beta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The protocol's Tip-Adapter-F: the authors' values for the dataset, the user's training
    /// options and the draw's seed on top.
    #[test]
    fn configure_takes_the_datasets_values_and_the_users_options() {
        let o = MethodOverrides {
            epochs: Some(3),
            ..Default::default()
        };
        let m = (CARD_F.configure)(&o, "eurosat", 2);
        let t = &m.options::<TipAdapterF>().unwrap().0;
        assert_eq!((t.epochs, t.seed, t.alpha), (3, 2, 2.0));
        // Training-free Tip-Adapter keeps the dataset's training options.
        let m = (CARD.configure)(&o, "eurosat", 2);
        assert_eq!(m.options::<TipAdapter>().unwrap().0.epochs, 100);
    }
    use crate::methods::zero_shot::ZeroShot;

    fn toy() -> (TipHead, Matrix, Vec<usize>) {
        let mut rng = seeded_rng(9);
        let (n, k, d) = (6, 3, 8);
        let keys = Matrix::from_vec(n, d, rng.uniform_vec(n * d, 1.0))
            .unwrap()
            .normalized();
        let w = Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0))
            .unwrap()
            .normalized();
        let text = TextClassifier {
            weights: w,
            logit_scale: 10.0,
            logit_bias: None,
        };
        let f = Matrix::from_vec(5, d, rng.uniform_vec(5 * d, 1.0))
            .unwrap()
            .normalized();
        (
            head(keys, (0..n).map(|i| i % k).collect(), 1.5, 2.0, &text),
            f,
            vec![0, 1, 2, 0, 1],
        )
    }

    #[test]
    fn alpha_zero_is_exactly_zero_shot() {
        let (mut h, f, _) = toy();
        h.alpha = 0.0;
        let zs = ZeroShot::new(&TextClassifier {
            weights: h.classes.clone(),
            logit_scale: h.logit_scale,
            logit_bias: None,
        });
        assert_eq!(h.logits(&f).data, zs.logits(&f).data);
    }

    #[test]
    fn key_gradient_matches_finite_differences() {
        let (h, f, y) = toy();
        let (_, grad) = h.loss_and_key_grad(&f, &y);
        let mut probe = h.clone();
        for j in (0..grad.data.len()).step_by(5) {
            let e = 1e-2f32;
            let orig = probe.keys.data[j];
            probe.keys.data[j] = orig + e;
            let up = probe.loss_and_key_grad(&f, &y).0;
            probe.keys.data[j] = orig - e;
            let down = probe.loss_and_key_grad(&f, &y).0;
            probe.keys.data[j] = orig;
            let numeric = (up - down) / (2.0 * e);
            let a = grad.data[j];
            assert!(
                (a - numeric).abs() <= 2e-2 * a.abs().max(numeric.abs()) + 2e-4,
                "{j}: {a} vs {numeric}"
            );
        }
        assert!(grad.data.iter().any(|&g| g.abs() > 1e-6));
    }

    #[test]
    fn logits_add_the_cache_term() {
        let (h, f, _) = toy();
        let l = h.logits(&f);
        // Row 0, class c: scale·cos + α Σ_{keys of class c} exp(−β(1 − f·k)).
        let zs = cosine_logits(&f, &h.classes, h.logit_scale);
        let mut cache = 0.0;
        for j in 0..h.keys.rows {
            if h.values[j] == 1 {
                let dot: f32 = f.row(0).iter().zip(h.keys.row(j)).map(|(a, b)| a * b).sum();
                cache += (-h.beta * (1.0 - dot)).exp();
            }
        }
        assert!((l.data[1] - (zs.data[1] + h.alpha * cache)).abs() < 1e-4);
    }

    /// Without a validation set the last epoch's keys are kept; the written order is followed
    /// (an order that omits a row never trains on it, which changes the result).
    #[test]
    fn train_keys_keeps_the_last_epoch_without_validation() {
        let (h, f, y) = toy();
        let task = FewShotTask {
            pre_projection: None,
            text_mean: None,
            classnames: vec!["a".into(), "b".into(), "c".into()],
            train: crate::methods::LabelledSet {
                features: f.clone(),
                labels: y.clone(),
            },
            train_views: Vec::new(),
            val: crate::methods::LabelledSet {
                features: Matrix::zeros(0, f.cols),
                labels: Vec::new(),
            },
            test: crate::methods::LabelledSet {
                features: f,
                labels: y,
            },
            text: TextClassifier {
                weights: h.classes.clone(),
                logit_scale: h.logit_scale,
                logit_bias: None,
            },
        };
        let opts = TipOptions {
            epochs: 3,
            batch_size: 2,
            lr: 1e-2,
            ..Default::default()
        };
        let mut full = h.clone();
        let trained = train_keys(
            &mut full,
            &task,
            &opts,
            &mut |_| (0..5).collect(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(trained.best_epoch, 2);
        assert_eq!(trained.losses.len(), 3);
        assert_ne!(full.keys, h.keys);
        let mut partial = h.clone();
        train_keys(&mut partial, &task, &opts, &mut |_| vec![0, 1], &mut |_| {}).unwrap();
        assert_ne!(partial.keys, full.keys);
        let err = train_keys(
            &mut h.clone(),
            &task,
            &TipOptions {
                batch_size: 0,
                ..opts
            },
            &mut |_| Vec::new(),
            &mut |_| {},
        );
        assert!(err.is_err());
    }

    /// Every benchmark against the authors' `configs/<dataset>.yaml`: (β_max, α_max), α, epochs.
    #[test]
    fn each_benchmark_gets_the_authors_config() {
        let want: [(&str, (f32, f32), f32, usize); 11] = [
            ("imagenet", (7.0, 3.0), 1.17, 20),
            ("caltech101", (12.0, 5.0), 3.0, 20),
            ("dtd", (13.0, 13.0), 2.0, 20),
            ("eurosat", (12.0, 10.0), 2.0, 100),
            ("fgvc_aircraft", (30.0, 30.0), 5.0, 20),
            ("food101", (10.0, 10.0), 1.17, 20),
            ("oxford_flowers", (50.0, 50.0), 10.0, 20),
            ("oxford_pets", (7.0, 3.0), 1.17, 20),
            ("stanford_cars", (20.0, 10.0), 3.0, 20),
            ("sun397", (12.0, 10.0), 1.17, 20),
            ("ucf101", (7.0, 3.0), 3.0, 20),
        ];
        for b in crate::data::benchmarks::BENCHMARKS.iter() {
            assert!(want.iter().any(|w| w.0 == b.key), "{} not checked", b.key);
        }
        for (key, scale, alpha, epochs) in want {
            let o = TipOptions::for_dataset(key);
            assert_eq!(
                (o.search_scale, o.alpha, o.epochs),
                (scale, alpha, epochs),
                "{key}"
            );
            assert_eq!(
                (o.beta, o.search_steps, o.lr),
                (1.0, (200, 20), 1e-3),
                "{key}"
            );
            assert_eq!(o.batch_size, 256, "{key}");
        }
        assert_eq!(TipOptions::for_dataset("imagenet"), TipOptions::default());
        for unknown in ["shapes", "", "ImageNet"] {
            assert_eq!(TipOptions::for_dataset(unknown), TipOptions::default());
        }
    }
}
