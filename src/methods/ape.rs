//! APE and APE-T (Zhu et al., "Not All Features Matter: Enhancing Few-shot CLIP with Adaptive
//! Prior Refinement", ICCV 2023; yangyangyang127/APE `main.py`, `utils.py` @6ee66e8).
//!
//! - Prior refinement (`cal_criterion`): for every channel c, the inter-class similarity
//!   `S_c` = mean of `x_c·y_c` over all pairs (x, y) of features of *different* classes, where
//!   the features of a class are its text embedding and its cache keys; the variance `V_c` of
//!   the text embeddings across classes (unbiased, `torch.var`). The Q channels with the
//!   largest `−w₀·S_c + w₁·V_c` are kept: small inter-class similarity, large spread.
//! - APE (training-free): keys are Tip-Adapter's (views averaged, normalised); on the Q
//!   channels, image features, keys and text embeddings are renormalised; the key–text
//!   affinity `softmax_k(k'_i·w'_k)` gives each key the KL divergence (base 2) of its one-hot
//!   label from it, and the key's value is weighted by `exp(γ·div_i)`;
//!   `logits = scale·f Wᵀ + α · exp(−β(1 − f'K'ᵀ)) · (Y ⊙ exp(γ div))`.
//!   β, α, γ are searched on the validation set (β outer, α, γ inner; the first strictly
//!   better wins).
//! - APE-T: a residual `R` (K×Q, zeros) is added on the Q channels to every class's text
//!   embedding and to every key of that class, and each key's value gets a trainable weight
//!   (ones), as `APE_Training` does; the affinity uses all channels without renormalising.
//!   AdamW (weight decay 0.1), cosine per iteration, batch 256; the best epoch on validation,
//!   then α, β searched on validation.

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{
    argmax_rows, cross_entropy_backward, gemm, normalize_rows, seeded_rng, Matrix,
};
use super::method::method_boilerplate;
use super::epochs::{BestEpoch, Batching, EpochLoop, Ties};
use super::optim::{cosine_annealing, AdamW};
use super::{
    eval, Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method,
    MethodCard, MethodError, Needs, Progress,
};

/// The feature width the authors' channel counts are given for (RN50).
pub const REFERENCE_DIM: usize = 1024;

/// APE and APE-T options; the authors' per-dataset values in [`ApeOptions::for_dataset`].
#[derive(Debug, Clone, PartialEq)]
pub struct ApeOptions {
    /// Criterion weights `(w_sim, w_var)` of training-free APE (`w_training_free`).
    pub weights_free: (f32, f32),
    /// Criterion weights of APE-T (`w_training`).
    pub weights_trained: (f32, f32),
    /// Q of training-free APE (`training_free_feat_num`).
    pub channels_free: usize,
    /// Q of APE-T (`training_feat_num`).
    pub channels_trained: usize,
    /// Initial α, β, γ (used while training APE-T, and when there is no validation set).
    pub alpha: f32,
    pub beta: f32,
    pub gamma: f32,
    /// Upper ends of the search grids `(β, α, γ)` (`search_scale`).
    pub search_scale: (f32, f32, f32),
    /// Grid sizes `(β, α, γ)` (`search_step`).
    pub search_steps: (usize, usize, usize),
    /// APE-T: AdamW learning rate, eps, weight decay; epochs, batch size, shuffling seed.
    pub lr: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub epochs: usize,
    pub batch_size: usize,
    pub seed: u64,
}

/// One dataset's values in the authors' `configs/<file>.yaml` (yangyangyang127/APE), for RN50's
/// 1024-wide features. The field names are the config keys.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ApeDatasetConfig {
    /// Our dataset key (`Benchmark::key`).
    pub dataset: &'static str,
    /// The authors' config file name (`configs/<file>.yaml`; FGVC-Aircraft is `fgvc`).
    pub file: &'static str,
    /// `search_scale`: upper ends of the (β, α, γ) grids.
    pub search_scale: (f32, f32, f32),
    /// `search_step`: sizes of the (β, α, γ) grids.
    pub search_step: (usize, usize, usize),
    pub init_beta: f32,
    pub init_alpha: f32,
    pub init_gamma: f32,
    /// AdamW's eps for APE-T.
    pub eps: f32,
    /// Q of APE-T (the residual's width).
    pub training_feat_num: usize,
    /// Q of training-free APE.
    pub training_free_feat_num: usize,
    /// Criterion weights (w_sim, w_var) of training-free APE.
    pub w_training_free: (f32, f32),
    /// Criterion weights of APE-T.
    pub w_training: (f32, f32),
    /// APE-T's AdamW learning rate.
    pub lr: f32,
    /// APE-T's epochs.
    pub train_epoch: usize,
}

/// The authors' current `configs/*.yaml`, one entry per benchmark. Each config was last changed
/// in its own commit (2023-09-03 for dtd, stanford_cars, sun397, ucf101, which until then were
/// the first release's @8cd042c); the commits read: caltech101 @2a58747, eurosat @563dfa3,
/// fgvc @219fbf4, food101 @2f73333, oxford_flowers @80e904f, oxford_pets @6a870da, sun397
/// @95817d8, ucf101 @edc59c8. imagenet is the first release's @8cd042c (its single `feat_num`
/// is both Q's; `main.py` evaluates ImageNet on its val split and searches γ on 5 steps to 0.5).
/// dtd and stanford_cars: the updated files could not be read at a commit of the authors'
/// repository; their values are those of touhou1080/TIMO's `configs/`, which copies the
/// authors' current configs (identical to them for the eight later ones that could be read).
/// Shared by every config and not in it: AdamW weight decay 0.1 and batch 256 (`main.py`).
pub const APE_CONFIGS: [ApeDatasetConfig; 11] = [
    ApeDatasetConfig {
        dataset: "imagenet",
        file: "imagenet",
        search_scale: (7.0, 7.0, 0.5),
        search_step: (200, 20, 5),
        init_beta: 1.0,
        init_alpha: 2.0,
        init_gamma: 0.1,
        eps: 1e-3,
        training_feat_num: 500,
        training_free_feat_num: 500,
        w_training_free: (0.7, 0.3),
        w_training: (0.2, 0.8),
        lr: 1e-4,
        train_epoch: 20,
    },
    ApeDatasetConfig {
        dataset: "caltech101",
        file: "caltech101",
        search_scale: (7.0, 7.0, 1.0),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 1.0,
        init_gamma: 0.1,
        eps: 1e-3,
        training_feat_num: 900,
        training_free_feat_num: 800,
        w_training_free: (0.5, 0.5),
        w_training: (0.2, 0.8),
        lr: 1e-3,
        train_epoch: 30,
    },
    ApeDatasetConfig {
        dataset: "dtd",
        file: "dtd",
        search_scale: (7.0, 7.0, 1.0),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 3.0,
        init_gamma: 0.1,
        eps: 1e-3,
        training_feat_num: 700,
        training_free_feat_num: 400,
        w_training_free: (0.5, 0.5),
        w_training: (0.2, 0.8),
        lr: 1e-3,
        train_epoch: 20,
    },
    ApeDatasetConfig {
        dataset: "eurosat",
        file: "eurosat",
        search_scale: (30.0, 5.0, 1.5),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 1.0,
        init_gamma: 0.1,
        eps: 1e-3,
        training_feat_num: 900,
        training_free_feat_num: 700,
        w_training_free: (0.9, 0.1),
        w_training: (0.2, 0.8),
        lr: 1e-3,
        train_epoch: 200,
    },
    ApeDatasetConfig {
        dataset: "fgvc_aircraft",
        file: "fgvc",
        search_scale: (20.0, 10.0, 1.0),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 5.0,
        init_gamma: 0.1,
        eps: 1e-3,
        training_feat_num: 900,
        training_free_feat_num: 800,
        w_training_free: (0.1, 0.9),
        w_training: (0.2, 0.8),
        lr: 1e-3,
        train_epoch: 30,
    },
    ApeDatasetConfig {
        dataset: "food101",
        file: "food101",
        search_scale: (7.0, 7.0, 1.0),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 0.8,
        init_gamma: 0.1,
        eps: 1e-3,
        training_feat_num: 900,
        training_free_feat_num: 700,
        w_training_free: (0.3, 0.7),
        w_training: (0.2, 0.8),
        lr: 1e-4,
        train_epoch: 30,
    },
    ApeDatasetConfig {
        dataset: "oxford_flowers",
        file: "oxford_flowers",
        search_scale: (7.0, 7.0, 1.0),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 3.0,
        init_gamma: 0.1,
        eps: 1e-3,
        training_feat_num: 800,
        training_free_feat_num: 700,
        w_training_free: (0.4, 0.6),
        w_training: (0.2, 0.8),
        lr: 1e-3,
        train_epoch: 60,
    },
    ApeDatasetConfig {
        dataset: "oxford_pets",
        file: "oxford_pets",
        search_scale: (7.0, 7.0, 1.0),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 2.0,
        init_gamma: 0.1,
        eps: 2e-3,
        training_feat_num: 800,
        training_free_feat_num: 800,
        w_training_free: (0.7, 0.3),
        w_training: (0.2, 0.8),
        lr: 1e-4,
        train_epoch: 30,
    },
    ApeDatasetConfig {
        dataset: "stanford_cars",
        file: "stanford_cars",
        search_scale: (10.0, 7.0, 1.0),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 1.0,
        init_gamma: 0.1,
        eps: 5e-3,
        training_feat_num: 800,
        training_free_feat_num: 500,
        w_training_free: (0.6, 0.4),
        w_training: (0.2, 0.8),
        lr: 1e-3,
        train_epoch: 30,
    },
    ApeDatasetConfig {
        dataset: "sun397",
        file: "sun397",
        search_scale: (10.0, 7.0, 1.0),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 1.0,
        init_gamma: 0.1,
        eps: 1e-3,
        training_feat_num: 800,
        training_free_feat_num: 800,
        w_training_free: (0.7, 0.3),
        w_training: (0.2, 0.8),
        lr: 1e-4,
        train_epoch: 30,
    },
    ApeDatasetConfig {
        dataset: "ucf101",
        file: "ucf101",
        search_scale: (10.0, 7.0, 1.5),
        search_step: (200, 20, 20),
        init_beta: 1.0,
        init_alpha: 2.0,
        init_gamma: 0.1,
        eps: 2e-3,
        training_feat_num: 800,
        training_free_feat_num: 700,
        w_training_free: (0.3, 0.7),
        w_training: (0.2, 0.8),
        lr: 1e-3,
        train_epoch: 30,
    },
];

/// The config `ApeOptions::default()` equals: caltech101's, the generic-object benchmark and
/// the config that shares the most values with the other ten (its search scale, α, eps, lr and
/// epochs are each the most common value).
pub const DEFAULT_CONFIG: &ApeDatasetConfig = &APE_CONFIGS[1];

impl ApeDatasetConfig {
    /// The config of a dataset key (ours, or the authors' file name `fgvc`).
    pub fn find(dataset: &str) -> Option<&'static ApeDatasetConfig> {
        APE_CONFIGS
            .iter()
            .find(|c| c.dataset == dataset || c.file == dataset)
    }

    /// The options these values set; the rest (weight decay, batch, seed) as `main.py`.
    pub fn options(&self) -> ApeOptions {
        ApeOptions {
            weights_free: self.w_training_free,
            weights_trained: self.w_training,
            channels_free: self.training_free_feat_num,
            channels_trained: self.training_feat_num,
            alpha: self.init_alpha,
            beta: self.init_beta,
            gamma: self.init_gamma,
            search_scale: self.search_scale,
            search_steps: self.search_step,
            lr: self.lr,
            eps: self.eps,
            weight_decay: 0.1,
            epochs: self.train_epoch,
            batch_size: 256,
            seed: 1,
        }
    }
}

impl Default for ApeOptions {
    /// The authors' caltech101 config ([`DEFAULT_CONFIG`]): what a dataset without a config of
    /// its own (the demo's tasks, a folder of images) gets.
    fn default() -> Self {
        DEFAULT_CONFIG.options()
    }
}

impl ApeOptions {
    /// The authors' values for a dataset key ([`APE_CONFIGS`]); `ApeOptions::default()` (the
    /// caltech101 config) for a dataset they give none for.
    pub fn for_dataset(dataset: &str) -> ApeOptions {
        ApeDatasetConfig::find(dataset)
            .map(ApeDatasetConfig::options)
            .unwrap_or_default()
    }

    /// The channel counts scaled from RN50's 1024-wide features to `dim`: the authors' ratio
    /// Q/1024 kept, rounded to the nearest channel (halves up), at least one. On 64-wide
    /// features 700 of 1024 keeps 44 (43.75) and 800 keeps 50.
    pub fn scaled_to(self, dim: usize) -> Self {
        let scale = |q: usize| {
            (q.saturating_mul(dim).saturating_add(REFERENCE_DIM / 2) / REFERENCE_DIM).max(1)
        };
        ApeOptions {
            channels_free: scale(self.channels_free),
            channels_trained: scale(self.channels_trained),
            ..self
        }
    }
}

/// The refined channels: the `q` channels with the largest `−w₀·S_c + w₁·V_c`, best first
/// (ties: the lower channel first). `text` is K×D, `keys` N×D with class `labels`.
pub fn select_channels(
    text: &Matrix,
    keys: &Matrix,
    labels: &[usize],
    weights: (f32, f32),
    q: usize,
) -> Result<Vec<usize>, MethodError> {
    let (k, d) = (text.rows, text.cols);
    if k < 2 {
        return Err(MethodError::Empty {
            what: "APE's inter-class criterion (it needs two classes at least)",
        });
    }
    if q == 0 || q > d {
        return Err(MethodError::option(
            "channels",
            q,
            "must be between 1 and the feature width (see ApeOptions::scaled_to)",
        ));
    }
    // Per class: the sum of its features (text + keys) and their count. The sum over pairs of
    // different classes of x_c·y_c is (Σ_k s_kc)² − Σ_k s_kc², and the pair count
    // M² − Σ_k M_k²: the reference's quadruple loop in O(N·D).
    let mut sums = vec![0f64; k * d];
    let mut counts = vec![1usize; k];
    for c in 0..k {
        for (s, &t) in sums[c * d..(c + 1) * d].iter_mut().zip(text.row(c)) {
            *s = t as f64;
        }
    }
    for (i, &y) in labels.iter().enumerate() {
        counts[y] += 1;
        for (s, &x) in sums[y * d..(y + 1) * d].iter_mut().zip(keys.row(i)) {
            *s += x as f64;
        }
    }
    let total: usize = counts.iter().sum();
    let pairs = (total * total - counts.iter().map(|m| m * m).sum::<usize>()) as f64;
    let mut criterion = vec![0f64; d];
    for (c, out) in criterion.iter_mut().enumerate() {
        let (mut all, mut squares) = (0f64, 0f64);
        let (mut t_sum, mut t_sq) = (0f64, 0f64);
        for class in 0..k {
            let s = sums[class * d + c];
            all += s;
            squares += s * s;
            let t = text.data[class * d + c] as f64;
            t_sum += t;
            t_sq += t * t;
        }
        let sim = (all * all - squares) / pairs;
        let var = (t_sq - t_sum * t_sum / k as f64) / (k - 1) as f64;
        *out = -(weights.0 as f64) * sim + weights.1 as f64 * var;
    }
    let mut order: Vec<usize> = (0..d).collect();
    order.sort_by(|&a, &b| criterion[b].total_cmp(&criterion[a]));
    order.truncate(q);
    Ok(order)
}

/// The columns `channels` of `m`, rows renormalised.
fn refine(m: &Matrix, channels: &[usize]) -> Matrix {
    let mut out = Matrix::zeros(m.rows, channels.len());
    for i in 0..m.rows {
        let (src, dst) = (m.row(i), out.row_mut(i));
        for (o, &c) in dst.iter_mut().zip(channels) {
            *o = src[c];
        }
    }
    normalize_rows(&mut out.data, out.cols);
    out
}

/// An APE or APE-T head.
#[derive(Debug, Clone, PartialEq)]
pub struct ApeHead {
    /// K×D class embeddings, used as they are (APE: the unit-norm text classifier; APE-T:
    /// with the trained residual added, not renormalised, as the reference).
    pub classes: Matrix,
    /// N×D cache keys (APE: normalised; APE-T: with the residual added).
    pub keys: Matrix,
    /// The class of each key (the one-hot values).
    pub values: Vec<usize>,
    /// The weight of each key's one-hot value (APE: `exp(γ·div)`; APE-T: trained).
    pub value_weights: Vec<f32>,
    /// APE: the refined channels the image–key affinity is computed on (renormalised);
    /// empty for APE-T, whose affinity uses every channel.
    pub channels: Vec<usize>,
    pub alpha: f32,
    pub beta: f32,
    pub logit_scale: f32,
}

impl ApeHead {
    /// `scale · f̂ Wᵀ` (W used as stored).
    fn clip_logits(&self, f: &Matrix) -> Matrix {
        let mut out = f.matmul(false, &self.classes, true);
        out.data.iter_mut().for_each(|x| *x *= self.logit_scale);
        out
    }

    /// Image–key affinity (B×N) of normalised features.
    fn affinity(&self, f: &Matrix) -> Matrix {
        if self.channels.is_empty() {
            f.matmul(false, &self.keys, true)
        } else {
            refine(f, &self.channels).matmul(false, &refine(&self.keys, &self.channels), true)
        }
    }

    /// `Σ_i exp(−β(1 − A_bi))·w_i` into the class of key i.
    fn cache_logits(&self, affinity: &Matrix, beta: f32, weights: &[f32]) -> Matrix {
        let k = self.classes.rows;
        let mut out = Matrix::zeros(affinity.rows, k);
        for b in 0..affinity.rows {
            let o = out.row_mut(b);
            for ((&a, &class), &w) in affinity.row(b).iter().zip(&self.values).zip(weights) {
                o[class] += (-(beta - beta * a)).exp() * w;
            }
        }
        out
    }

    pub fn logits(&self, x: &Matrix) -> Matrix {
        let f = x.normalized();
        let mut out = self.clip_logits(&f);
        let cache = self.cache_logits(&self.affinity(&f), self.beta, &self.value_weights);
        out.data
            .iter_mut()
            .zip(&cache.data)
            .for_each(|(o, c)| *o += self.alpha * c);
        out
    }
}

/// Tip-Adapter's cache keys: the training views averaged, then normalised.
pub fn cache_keys(task: &FewShotTask) -> Matrix {
    let views = task.training_views();
    let mut keys = Matrix::zeros(task.train.features.rows, task.dim());
    for v in &views {
        keys.data.iter_mut().zip(&v.data).for_each(|(k, x)| *k += x);
    }
    keys.data.iter_mut().for_each(|k| *k /= views.len() as f32);
    keys.normalized()
}

/// `div_i = Σ_k Y_ik log₂((Y_ik + 1e-6)/(s_ik + 1e-6))` with `s_i = softmax_k(k'_i·w'_k)` on the
/// refined channels (no temperature, as the reference). For one-hot `Y` only the label's term
/// is non-zero.
pub fn key_divergence(
    keys: &Matrix,
    labels: &[usize],
    text: &Matrix,
    channels: &[usize],
) -> Vec<f32> {
    let affinity = refine(keys, channels).matmul(false, &refine(text, channels), true);
    let k = text.rows;
    affinity
        .data
        .chunks(k)
        .zip(labels)
        .map(|(row, &y)| {
            let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            let sum: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
            let s = ((row[y] - max) as f64).exp() / sum;
            ((1.0 + 1e-6) / (s + 1e-6)).log2() as f32
        })
        .collect()
}

/// Builds training-free APE with the initial α, β, γ.
pub fn build(task: &FewShotTask, opts: &ApeOptions) -> Result<(ApeHead, Vec<f32>), MethodError> {
    let keys = cache_keys(task);
    let labels = &task.train.labels;
    let channels = select_channels(
        &task.text.weights,
        &keys,
        labels,
        opts.weights_free,
        opts.channels_free,
    )?;
    let div = key_divergence(&keys, labels, &task.text.weights, &channels);
    let head = ApeHead {
        classes: task.text.weights.clone(),
        value_weights: div.iter().map(|d| (opts.gamma * d).exp()).collect(),
        keys,
        values: labels.clone(),
        channels,
        alpha: opts.alpha,
        beta: opts.beta,
        logit_scale: task.text.logit_scale,
    };
    Ok((head, div))
}

/// `0.1 + i·(max − 0.1)/steps` (β, α) or `i·max/steps` (γ), `i < steps`, as the reference.
fn grid(max: f32, steps: usize, from: f32) -> Vec<f32> {
    (0..steps)
        .map(|i| i as f32 * (max - from) / steps as f32 + from)
        .collect()
}

fn accuracy_of(logits: &[f32], k: usize, labels: &[usize]) -> f32 {
    let pred = argmax_rows(logits, k);
    100.0 * pred.iter().zip(labels).filter(|(p, y)| p == y).count() as f32 / labels.len() as f32
}

/// APE's search of (β, α, γ) on `(x, labels)`: key i's value weight is `base_i·exp(γ·div_i)`.
/// Keeps the current values when the set is empty. Returns the best accuracy and γ.
pub fn search(
    head: &mut ApeHead,
    base: &[f32],
    div: &[f32],
    x: &Matrix,
    labels: &[usize],
    opts: &ApeOptions,
    progress: &mut dyn FnMut(Progress),
) -> (f32, f32) {
    if labels.is_empty() {
        return (f32::NAN, opts.gamma);
    }
    let betas = grid(opts.search_scale.0, opts.search_steps.0, 0.1);
    let alphas = grid(opts.search_scale.1, opts.search_steps.1, 0.1);
    let gammas = grid(opts.search_scale.2, opts.search_steps.2, 0.0);
    let weights: Vec<Vec<f32>> = gammas.iter().map(|g| weights_for(base, div, *g)).collect();
    let f = x.normalized();
    let clip = head.clip_logits(&f);
    let affinity = head.affinity(&f);
    let mut best = (0f32, head.alpha, head.beta, opts.gamma);
    let mut combined = clip.clone();
    for (bi, &beta) in betas.iter().enumerate() {
        let caches: Vec<Matrix> = weights
            .iter()
            .map(|w| head.cache_logits(&affinity, beta, w))
            .collect();
        for &alpha in &alphas {
            for (gi, cache) in caches.iter().enumerate() {
                for ((o, c), z) in combined.data.iter_mut().zip(&cache.data).zip(&clip.data) {
                    *o = z + c * alpha;
                }
                let acc = accuracy_of(&combined.data, combined.cols, labels);
                if acc > best.0 {
                    best = (acc, alpha, beta, gammas[gi]);
                }
            }
        }
        progress(Progress::Search {
            done: bi + 1,
            total: betas.len(),
        });
    }
    head.alpha = best.1;
    head.beta = best.2;
    head.value_weights = weights_for(base, div, best.3);
    (best.0, best.3)
}

fn weights_for(base: &[f32], div: &[f32], gamma: f32) -> Vec<f32> {
    base.iter()
        .zip(div)
        .map(|(b, d)| b * (gamma * d).exp())
        .collect()
}

fn check_grid(steps: &[usize]) -> Result<(), MethodError> {
    if steps.contains(&0) {
        return Err(MethodError::option(
            "search-steps",
            format!("{steps:?}"),
            "every grid needs at least one step",
        ));
    }
    Ok(())
}

/// Training-free APE: refined cache, (β, α, γ) chosen on validation.
pub fn fit(
    task: &FewShotTask,
    opts: &ApeOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    let s = opts.search_steps;
    check_grid(&[s.0, s.1, s.2])?;
    let (mut head, div) = build(task, opts)?;
    let ones = vec![1f32; div.len()];
    let (_, gamma) = search(
        &mut head,
        &ones,
        &div,
        &task.val.features,
        &task.val.labels,
        opts,
        progress,
    );
    let chosen = vec![
        ("alpha".to_string(), head.alpha.to_string()),
        ("beta".to_string(), head.beta.to_string()),
        ("gamma".to_string(), gamma.to_string()),
        ("channels".to_string(), head.channels.len().to_string()),
    ];
    Ok(Fitted {
        head: Head::new(head),
        chosen,
        losses: Vec::new(),
    })
}

/// APE-T's trainable parts: the category residuals and the per-key value weights.
#[derive(Debug, Clone, PartialEq)]
pub struct ApeTParams {
    /// K×Q, added on the refined channels to the class's text embedding and to its keys.
    pub residual: Matrix,
    /// One weight per key, multiplying its one-hot value.
    pub value_weights: Vec<f32>,
}

/// APE-T before materialisation: frozen base keys and text, the refined channels, the
/// trainable parameters.
#[derive(Debug, Clone)]
pub struct ApeTModel {
    pub base_keys: Matrix,
    pub base_text: Matrix,
    pub values: Vec<usize>,
    pub channels: Vec<usize>,
    pub params: ApeTParams,
    pub alpha: f32,
    pub beta: f32,
    pub logit_scale: f32,
}

impl ApeTModel {
    /// The reference's initialisation: residual zeros, value weights ones.
    pub fn new(task: &FewShotTask, opts: &ApeOptions) -> Result<Self, MethodError> {
        let keys = cache_keys(task);
        let channels = select_channels(
            &task.text.weights,
            &keys,
            &task.train.labels,
            opts.weights_trained,
            opts.channels_trained,
        )?;
        Ok(ApeTModel {
            params: ApeTParams {
                residual: Matrix::zeros(task.classes(), channels.len()),
                value_weights: vec![1.0; keys.rows],
            },
            base_keys: keys,
            base_text: task.text.weights.clone(),
            values: task.train.labels.clone(),
            channels,
            alpha: opts.alpha,
            beta: opts.beta,
            logit_scale: task.text.logit_scale,
        })
    }

    /// The head with the residuals added (`APE_Training.forward`).
    pub fn head(&self) -> ApeHead {
        let r = &self.params.residual;
        let mut keys = self.base_keys.clone();
        for (i, &y) in self.values.iter().enumerate() {
            let row = keys.row_mut(i);
            for (q, &c) in self.channels.iter().enumerate() {
                row[c] += r.data[y * r.cols + q];
            }
        }
        let mut classes = self.base_text.clone();
        for k in 0..classes.rows {
            let row = classes.row_mut(k);
            for (q, &c) in self.channels.iter().enumerate() {
                row[c] += r.data[k * r.cols + q];
            }
        }
        ApeHead {
            classes,
            keys,
            values: self.values.clone(),
            value_weights: self.params.value_weights.clone(),
            channels: Vec::new(),
            alpha: self.alpha,
            beta: self.beta,
            logit_scale: self.logit_scale,
        }
    }

    /// Mean cross-entropy on a batch of normalised features and its gradient.
    pub fn loss_and_grad(&self, f: &Matrix, labels: &[usize]) -> (f32, ApeTParams) {
        let head = self.head();
        let (b, n, k, d) = (f.rows, head.keys.rows, head.classes.rows, f.cols);
        let affinity = f.matmul(false, &head.keys, true);
        let exp: Vec<f32> = affinity
            .data
            .iter()
            .map(|&a| (-(self.beta - self.beta * a)).exp())
            .collect();
        let mut logits = head.clip_logits(f);
        for i in 0..b {
            for (j, (&class, &w)) in head.values.iter().zip(&head.value_weights).enumerate() {
                logits.data[i * k + class] += self.alpha * exp[i * n + j] * w;
            }
        }
        let loss = cross_entropy_backward(&mut logits.data, labels, k);
        let g = &logits.data;
        // logits[b, y_j] += α·E_bj·v_j: dv_j = α Σ_b G[b,y_j] E_bj, dA_bj = α G[b,y_j] v_j β E_bj.
        let mut d_weights = vec![0f32; n];
        let mut d_aff = vec![0f32; b * n];
        for i in 0..b {
            for (j, (&class, &w)) in head.values.iter().zip(&head.value_weights).enumerate() {
                let ge = self.alpha * g[i * k + class] * exp[i * n + j];
                d_weights[j] += ge;
                d_aff[i * n + j] = ge * w * self.beta;
            }
        }
        let mut d_keys = vec![0f32; n * d];
        gemm(&d_aff, true, &f.data, false, &mut d_keys, n, b, d, false);
        let mut d_text = vec![0f32; k * d];
        gemm(g, true, &f.data, false, &mut d_text, k, b, d, false);
        let q = self.channels.len();
        let mut d_res = Matrix::zeros(k, q);
        for class in 0..k {
            for (qi, &c) in self.channels.iter().enumerate() {
                d_res.data[class * q + qi] = self.logit_scale * d_text[class * d + c];
            }
        }
        for (j, &y) in self.values.iter().enumerate() {
            for (qi, &c) in self.channels.iter().enumerate() {
                d_res.data[y * q + qi] += d_keys[j * d + c];
            }
        }
        (
            loss,
            ApeTParams {
                residual: d_res,
                value_weights: d_weights,
            },
        )
    }
}

/// Trains APE-T's parameters on the task's training views (view `epoch mod V`, normalised).
/// `order(epoch)` gives the sample order; `after_epoch` sees the model after each epoch.
/// Returns the mean batch loss of each epoch.
pub fn train(
    task: &FewShotTask,
    opts: &ApeOptions,
    model: &mut ApeTModel,
    order: &mut dyn FnMut(usize) -> Vec<usize>,
    after_epoch: &mut dyn FnMut(usize, &ApeTModel),
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, MethodError> {
    let views: Vec<Matrix> = task
        .training_views()
        .iter()
        .map(|v| v.normalized())
        .collect();
    let labels = &task.train.labels;
    let n = labels.len();
    let total = opts.epochs * n.div_ceil(opts.batch_size.max(1));
    let mut adamw = AdamW::new(opts.eps, opts.weight_decay);
    let mut steps = 0;
    let epoch_loop = EpochLoop {
        epochs: opts.epochs,
        batching: Batching::KeepLast {
            size: opts.batch_size,
        },
    };
    epoch_loop.run(
        model,
        n,
        order,
        &mut |model, epoch, batch| {
            let f = views[epoch % views.len()].gather_rows(batch);
            let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
            let (loss, grad) = model.loss_and_grad(&f, &y);
            let p = &mut model.params;
            adamw.step(
                &mut [&mut p.residual.data, &mut p.value_weights],
                &[&grad.residual.data, &grad.value_weights],
                cosine_annealing(opts.lr, steps, total),
            );
            steps += 1;
            Ok(loss)
        },
        &mut |model, epoch| after_epoch(epoch, model),
        progress,
    )
}

/// APE-T: residuals and value weights trained, best epoch and then (β, α) chosen on validation.
pub fn fit_trained(
    task: &FewShotTask,
    opts: &ApeOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    let s = opts.search_steps;
    check_grid(&[s.0, s.1])?;
    let mut model = ApeTModel::new(task, opts)?;
    let n = task.train.labels.len();
    let mut rng = seeded_rng(opts.seed);
    let mut order = |_: usize| rng.permutation(n);
    let mut best = BestEpoch::new(model.params.clone());
    let mut keep_best = |epoch: usize, m: &ApeTModel| {
        let val = eval::accuracy(&m.head().logits(&task.val.features), &task.val.labels);
        best.offer(epoch, val, Ties::KeepFirst, || m.params.clone());
    };
    let losses = train(task, opts, &mut model, &mut order, &mut keep_best, progress)?;
    model.params = best.value;
    let mut head = model.head();
    if !task.val.labels.is_empty() {
        // No γ in APE-T (its value weights are trained): a one-point γ grid at 0.
        let search_opts = ApeOptions {
            search_steps: (s.0, s.1, 1),
            search_scale: (opts.search_scale.0, opts.search_scale.1, 0.0),
            ..opts.clone()
        };
        let trained = head.value_weights.clone();
        let zeros = vec![0f32; n];
        search(
            &mut head,
            &trained,
            &zeros,
            &task.val.features,
            &task.val.labels,
            &search_opts,
            progress,
        );
    }
    let chosen = vec![
        ("best_epoch".to_string(), best.epoch.to_string()),
        ("alpha".to_string(), head.alpha.to_string()),
        ("beta".to_string(), head.beta.to_string()),
        ("channels".to_string(), model.channels.len().to_string()),
    ];
    Ok(Fitted {
        head: Head::new(head),
        chosen,
        losses,
    })
}

// The methods' cards, options and head codec.

/// Training-free APE.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ape(pub ApeOptions);

/// APE-T: category residuals and value weights trained.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApeT(pub ApeOptions);

/// The authors build the cache as Tip-Adapter does, from augmented passes.
const APE_AUGMENTATION: Augmentation = Augmentation::RandomResizedCrop {
    scale: (0.5, 1.0),
    flip: true,
    source:
        "APE `main.py`: Tip-Adapter's RandomResizedCrop(scale=(0.5, 1)) + flip passes for the cache",
};

pub static CARD: MethodCard = MethodCard {
    name: "ape",
    title: "APE",
    paper: "Zhu et al., ICCV 2023",
    code: "yangyangyang127/APE",
    colour: (188, 189, 34),
    variant_colours: &[],
    reported_as: Some("APE"),
    without_validation: "the per-dataset initial α, β, γ of the authors' configs",
    augmentation: APE_AUGMENTATION,
    needs: Needs::Features,
    options: &[],
    configure: |_, dataset, seed| {
        Method::new(Ape(ApeOptions {
            seed,
            ..ApeOptions::for_dataset(dataset)
        }))
    },
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No("its cache and its refined channels are built from the training classes' images and labels"),
};

pub static CARD_T: MethodCard = MethodCard {
    name: "ape-t",
    title: "APE-T",
    colour: (127, 127, 127),
    reported_as: Some("APE-T"),
    without_validation: "the last epoch, then the initial α, β",
    configure: |_, dataset, seed| {
        Method::new(ApeT(ApeOptions {
            seed,
            ..ApeOptions::for_dataset(dataset)
        }))
    },
    ..CARD
};

fn describe(o: &ApeOptions) -> String {
    format!(
        "w_free={:?} w_trained={:?} channels={},{} alpha={} beta={} gamma={} scale={:?} steps={:?} lr={} eps={} epochs={} batch={}",
        o.weights_free, o.weights_trained, o.channels_free, o.channels_trained, o.alpha,
        o.beta, o.gamma, o.search_scale, o.search_steps, o.lr, o.eps, o.epochs, o.batch_size
    )
}

/// APE and APE-T share their options; they differ in the card and the fit.
macro_rules! ape_method {
    ($method:ident, $card:ident, $fit:ident) => {
        impl FewShotMethod for $method {
            method_boilerplate!($card);

            fn describe(&self) -> String {
                describe(&self.0)
            }

            fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
                $fit(task, &self.0, cx.progress).map(Fit::from)
            }

            fn set_seed(&mut self, seed: u64) {
                self.0.seed = seed;
            }

            fn set_feature_width(&mut self, dim: usize) {
                self.0 = self.0.clone().scaled_to(dim);
            }
        }
    };
}
ape_method!(Ape, CARD, fit);
ape_method!(ApeT, CARD_T, fit_trained);

/// Tensors: `classes` (K×D), `logit_scale`, `keys` (N×D), `values` (N class indices),
/// `value_weights` (N), `alpha`, `beta`, `channels` (APE's refined channels; absent for APE-T).
pub static CODEC: HeadCodec = HeadCodec {
    kind: "ape",
    anchor: ("classes", "K × D, one class embedding per row"),
    input: FeatureSpace::Projected,
    read: |r, classes| {
        let (k, d) = (classes.rows, classes.cols);
        let keys = r.matrix("keys", None, Some(d), "N × D, one cache key per row")?;
        let n = keys.rows;
        Ok(Box::new(ApeHead {
            values: r.indices("values", Some(n), k, "a class index")?,
            value_weights: r.vector("value_weights", n, "one weight per key")?,
            channels: if r.has("channels") {
                r.indices("channels", None, d, "a feature channel")?
            } else {
                Vec::new()
            },
            alpha: r.scalar("alpha", "one value")?,
            beta: r.scalar("beta", "one value")?,
            keys,
            logit_scale: r.logit_scale()?,
            classes,
        }))
    },
};

impl HeadModel for ApeHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        ApeHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.classes.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("classes", &self.classes);
        w.scalar("logit_scale", self.logit_scale);
        w.matrix("keys", &self.keys);
        w.indices("values", &self.values);
        w.vector("value_weights", &self.value_weights);
        w.scalar("alpha", self.alpha);
        w.scalar("beta", self.beta);
        if !self.channels.is_empty() {
            w.indices("channels", &self.channels);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> (ApeTModel, Matrix, Vec<usize>) {
        let mut rng = seeded_rng(5);
        let (n, k, d, q) = (6, 3, 8, 5);
        let m = |r: usize, c: usize, rng: &mut crate::rng::SplitMix64| {
            Matrix::from_vec(r, c, rng.uniform_vec(r * c, 1.0))
                .unwrap()
                .normalized()
        };
        let keys = m(n, d, &mut rng);
        let text = m(k, d, &mut rng);
        let f = m(4, d, &mut rng);
        let model = ApeTModel {
            base_keys: keys,
            base_text: text,
            values: (0..n).map(|i| i % k).collect(),
            channels: vec![6, 1, 3, 0, 5],
            params: ApeTParams {
                residual: Matrix::from_vec(k, q, rng.uniform_vec(k * q, 0.2)).unwrap(),
                value_weights: (0..n).map(|_| 0.5 + rng.uniform()).collect(),
            },
            alpha: 1.5,
            beta: 2.0,
            logit_scale: 10.0,
        };
        (model, f, vec![0, 1, 2, 1])
    }

    #[test]
    fn ape_t_gradient_matches_finite_differences() {
        let (model, f, y) = toy();
        let (_, grad) = model.loss_and_grad(&f, &y);
        let e = 1e-2f32;
        let check = |analytic: f32, up: f32, down: f32, what: &str| {
            let numeric = (up - down) / (2.0 * e);
            assert!(
                (analytic - numeric).abs() <= 2e-2 * analytic.abs().max(numeric.abs()) + 2e-4,
                "{what}: {analytic} vs {numeric}"
            );
        };
        let mut probe = model.clone();
        for j in 0..grad.residual.data.len() {
            let orig = probe.params.residual.data[j];
            probe.params.residual.data[j] = orig + e;
            let up = probe.loss_and_grad(&f, &y).0;
            probe.params.residual.data[j] = orig - e;
            let down = probe.loss_and_grad(&f, &y).0;
            probe.params.residual.data[j] = orig;
            check(grad.residual.data[j], up, down, &format!("residual {j}"));
        }
        for j in 0..grad.value_weights.len() {
            let orig = probe.params.value_weights[j];
            probe.params.value_weights[j] = orig + e;
            let up = probe.loss_and_grad(&f, &y).0;
            probe.params.value_weights[j] = orig - e;
            let down = probe.loss_and_grad(&f, &y).0;
            probe.params.value_weights[j] = orig;
            check(
                grad.value_weights[j],
                up,
                down,
                &format!("value weight {j}"),
            );
        }
        assert!(grad.residual.data.iter().any(|g| g.abs() > 1e-4));
    }

    #[test]
    fn criterion_equals_the_reference_quadruple_loop() {
        let (model, _, _) = toy();
        let (text, keys, labels) = (&model.base_text, &model.base_keys, &model.values);
        let (k, d) = (text.rows, text.cols);
        let w = (0.7f32, 0.3f32);
        // The reference: every pair of features (text + keys) of different classes.
        let feats: Vec<Vec<&[f32]>> = (0..k)
            .map(|c| {
                let mut v = vec![text.row(c)];
                v.extend(
                    (0..keys.rows)
                        .filter(|&i| labels[i] == c)
                        .map(|i| keys.row(i)),
                );
                v
            })
            .collect();
        let mut crit = vec![0f64; d];
        for (ch, out) in crit.iter_mut().enumerate() {
            let (mut sum, mut count) = (0f64, 0f64);
            for i in 0..k {
                for j in (0..k).filter(|&j| j != i) {
                    for a in &feats[i] {
                        for b in &feats[j] {
                            sum += a[ch] as f64 * b[ch] as f64;
                            count += 1.0;
                        }
                    }
                }
            }
            let col: Vec<f64> = (0..k).map(|c| text.data[c * d + ch] as f64).collect();
            let mean = col.iter().sum::<f64>() / k as f64;
            let var = col.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (k - 1) as f64;
            *out = -(w.0 as f64) * sum / count + w.1 as f64 * var;
        }
        let mut want: Vec<usize> = (0..d).collect();
        want.sort_by(|&a, &b| crit[b].total_cmp(&crit[a]));
        let got = select_channels(text, keys, labels, w, d).unwrap();
        assert_eq!(got, want);
        assert!(select_channels(text, keys, labels, w, d + 1).is_err());
    }

    /// The four configs the authors updated on 2023-09-03, and EuroSAT (200 APE-T epochs), as
    /// their current `configs/<dataset>.yaml` write them; the values every config shares are
    /// checked on the default below.
    #[test]
    fn each_benchmark_gets_the_authors_current_config() {
        let shared = ApeOptions::default();
        let cases = [
            (
                "dtd",
                ApeOptions {
                    channels_free: 400,
                    channels_trained: 700,
                    weights_free: (0.5, 0.5),
                    search_scale: (7.0, 7.0, 1.0),
                    alpha: 3.0,
                    eps: 1e-3,
                    lr: 1e-3,
                    epochs: 20,
                    ..shared.clone()
                },
            ),
            (
                "stanford_cars",
                ApeOptions {
                    channels_free: 500,
                    channels_trained: 800,
                    weights_free: (0.6, 0.4),
                    search_scale: (10.0, 7.0, 1.0),
                    alpha: 1.0,
                    eps: 5e-3,
                    lr: 1e-3,
                    epochs: 30,
                    ..shared.clone()
                },
            ),
            (
                "sun397",
                ApeOptions {
                    channels_free: 800,
                    channels_trained: 800,
                    weights_free: (0.7, 0.3),
                    search_scale: (10.0, 7.0, 1.0),
                    alpha: 1.0,
                    eps: 1e-3,
                    lr: 1e-4,
                    epochs: 30,
                    ..shared.clone()
                },
            ),
            (
                "ucf101",
                ApeOptions {
                    channels_free: 700,
                    channels_trained: 800,
                    weights_free: (0.3, 0.7),
                    search_scale: (10.0, 7.0, 1.5),
                    alpha: 2.0,
                    eps: 2e-3,
                    lr: 1e-3,
                    epochs: 30,
                    ..shared.clone()
                },
            ),
            (
                "eurosat",
                ApeOptions {
                    channels_free: 700,
                    channels_trained: 900,
                    weights_free: (0.9, 0.1),
                    search_scale: (30.0, 5.0, 1.5),
                    alpha: 1.0,
                    eps: 1e-3,
                    lr: 1e-3,
                    epochs: 200,
                    ..shared.clone()
                },
            ),
        ];
        for (dataset, want) in cases {
            assert_eq!(ApeOptions::for_dataset(dataset), want, "{dataset}");
        }
        assert_eq!(shared.weights_trained, (0.2, 0.8));
        assert_eq!((shared.beta, shared.gamma), (1.0, 0.1));
        assert_eq!(shared.search_steps, (200, 20, 20));
        assert_eq!((shared.weight_decay, shared.batch_size), (0.1, 256));
        let imagenet = ApeOptions::for_dataset("imagenet");
        assert_eq!(imagenet.search_steps, (200, 20, 5));
        assert_eq!(imagenet.search_scale, (7.0, 7.0, 0.5));
        assert_eq!(
            (imagenet.channels_free, imagenet.channels_trained),
            (500, 500)
        );
        assert_eq!((imagenet.lr, imagenet.epochs), (1e-4, 20));
        // The authors' file name for FGVC-Aircraft is accepted as well as ours.
        assert_eq!(
            ApeOptions::for_dataset("fgvc"),
            ApeOptions::for_dataset("fgvc_aircraft")
        );
        assert_eq!(ApeOptions::for_dataset("fgvc_aircraft").alpha, 5.0);
    }

    #[test]
    fn every_benchmark_has_a_config_and_unknown_datasets_get_the_default() {
        for b in crate::data::benchmarks::BENCHMARKS.iter() {
            let c = ApeDatasetConfig::find(b.key);
            assert!(c.is_some(), "no APE config for {}", b.key);
            assert_eq!(
                ApeOptions::for_dataset(b.key),
                c.map(|c| c.options()).unwrap()
            );
        }
        assert_eq!(DEFAULT_CONFIG.dataset, "caltech101");
        let d = ApeOptions::default();
        assert_eq!(d, ApeOptions::for_dataset("caltech101"));
        assert_eq!((d.channels_free, d.channels_trained), (800, 900));
        assert_eq!(d.weights_free, (0.5, 0.5));
        for unknown in ["shapes", "new_colours", "", "Caltech101"] {
            assert_eq!(ApeOptions::for_dataset(unknown), d, "{unknown:?}");
        }
    }

    #[test]
    fn channel_counts_keep_the_authors_ratio() {
        let at = |q: usize, dim: usize| {
            ApeOptions {
                channels_free: q,
                channels_trained: q,
                ..ApeOptions::default()
            }
            .scaled_to(dim)
            .channels_free
        };
        // 700/1024 of 64 is 43.75: 44; 800/1024 is exactly 50.
        assert_eq!(at(700, 64), 44);
        assert_eq!(at(800, 64), 50);
        assert_eq!(at(400, 64), 25);
        assert_eq!(at(500, 64), 31);
        assert_eq!(at(700, 1024), 700);
        assert_eq!(at(700, 512), 350);
        assert_eq!(at(1, 64), 1);
        // The default (caltech101) on the demo's 64-wide features.
        let demo = ApeOptions::default().scaled_to(64);
        assert_eq!((demo.channels_free, demo.channels_trained), (50, 56));
    }
}
