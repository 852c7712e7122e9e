//! LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024;
//! FereshteShakeri/FewShot-CLIP-Strong-Baseline `methods/linear_probe_p2.py` @4d1b771).
//!
//! The class weights are a function of the text embeddings, blended per class:
//! `logits_k = w_kᵀ f + b_k + α_k · t_kᵀ f` on normalised features. Training is full-batch and
//! needs no learning-rate search, as the paper's block majorize–minimize scheme:
//! - `W` starts at the class sums of the features (`compute_centroids`), every `α_k` at
//!   `250 · mean_k mean_{i∈k} t_kᵀ f_i`, the mean similarity of each training image to its own
//!   class's text embedding (`calculate_init_alpha` through `compute_centroids_alpha`, whose
//!   one-hot product is element-wise; the shots cancel);
//! - step sizes from Lipschitz bounds: `η_W = 4N / λ_max(FᵀF)` (`calculate_lr_w`) and
//!   `η_α = N / (4 · max_k Σ_i (t_kᵀ f_i)²)` (`calculate_lr_alpha`);
//! - every epoch one SGD step (momentum 0.9, no decay) on `W, b` with `η_W`; every 10th epoch one
//!   gradient step on `α` with `η_α`;
//! - the best epoch on the validation set (`≥`: the later of equal epochs), 300 epochs.

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{cross_entropy_backward, gemm, Matrix};
use super::method::method_boilerplate;
use super::epochs::{BestEpoch, Batching, EpochLoop, Ties};
use super::optim::Sgd;
use super::{
    eval, Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method,
    MethodCard, MethodError, Needs, Progress,
};

#[derive(Debug, Clone, PartialEq)]
pub struct LpPlusPlusOptions {
    pub epochs: usize,
    /// α takes a step every `alpha_every` epochs (10).
    pub alpha_every: usize,
    /// The factor of the initial α (250).
    pub init_alpha_scale: f32,
    pub momentum: f32,
    /// The released code never zeroes α's gradient, so each α step uses the gradients summed
    /// over every epoch so far; `false` (default) steps with the current gradient, as the
    /// paper's block update writes it.
    pub accumulate_alpha_grad: bool,
}

impl Default for LpPlusPlusOptions {
    fn default() -> Self {
        LpPlusPlusOptions {
            epochs: 300,
            alpha_every: 10,
            init_alpha_scale: 250.0,
            momentum: 0.9,
            accumulate_alpha_grad: false,
        }
    }
}

/// An LP++ head.
#[derive(Debug, Clone, PartialEq)]
pub struct LpPlusPlusHead {
    /// K×D visual weights.
    pub weight: Matrix,
    pub bias: Vec<f32>,
    /// One blending multiplier per class.
    pub alpha: Vec<f32>,
    /// K×D text embeddings (unit norm).
    pub text: Matrix,
}

impl LpPlusPlusHead {
    /// Logits and the text logits `F Tᵀ` of normalised features.
    fn forward(&self, f: &Matrix) -> (Matrix, Matrix) {
        let text_logits = f.matmul(false, &self.text, true);
        let mut out = f.matmul(false, &self.weight, true);
        for i in 0..out.rows {
            let (o, t) = (out.row_mut(i), text_logits.row(i));
            for c in 0..o.len() {
                o[c] += self.bias[c] + self.alpha[c] * t[c];
            }
        }
        (out, text_logits)
    }

    pub fn logits(&self, x: &Matrix) -> Matrix {
        self.forward(&x.normalized()).0
    }

    /// Mean cross-entropy on normalised features and its gradient `(W, b, α)`.
    pub fn loss_and_grad(&self, f: &Matrix, labels: &[usize]) -> (f32, Matrix, Vec<f32>, Vec<f32>) {
        let (mut g, text_logits) = self.forward(f);
        let k = g.cols;
        let loss = cross_entropy_backward(&mut g.data, labels, k);
        let mut gw = Matrix::zeros(k, f.cols);
        gemm(
            &g.data,
            true,
            &f.data,
            false,
            &mut gw.data,
            k,
            f.rows,
            f.cols,
            false,
        );
        let mut gb = vec![0f32; k];
        let mut ga = vec![0f32; k];
        for (row, t) in g.data.chunks(k).zip(text_logits.data.chunks(k)) {
            for c in 0..k {
                gb[c] += row[c];
                ga[c] += row[c] * t[c];
            }
        }
        (loss, gw, gb, ga)
    }
}

/// The largest eigenvalue of `FᵀF` (power iteration in f64 on the smaller Gram matrix; it is
/// positive semi-definite, so the iteration converges to it).
pub fn max_eigenvalue(f: &Matrix) -> f64 {
    let (n, d) = (f.rows, f.cols);
    // FᵀF and FFᵀ share their non-zero eigenvalues.
    let small = n.min(d);
    let mut gram = vec![0f64; small * small];
    for a in 0..small {
        for b in a..small {
            let v: f64 = if n <= d {
                f.row(a)
                    .iter()
                    .zip(f.row(b))
                    .map(|(&x, &y)| x as f64 * y as f64)
                    .sum()
            } else {
                (0..n)
                    .map(|i| f.data[i * d + a] as f64 * f.data[i * d + b] as f64)
                    .sum()
            };
            gram[a * small + b] = v;
            gram[b * small + a] = v;
        }
    }
    let mut v = vec![1.0 / (small as f64).sqrt(); small];
    let mut lambda = 0f64;
    for _ in 0..10_000 {
        let mut w = vec![0f64; small];
        for a in 0..small {
            w[a] = (0..small).map(|b| gram[a * small + b] * v[b]).sum();
        }
        let norm = w.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return 0.0;
        }
        let next: f64 = v.iter().zip(&w).map(|(a, b)| a * b).sum();
        w.iter_mut().for_each(|x| *x /= norm);
        v = w;
        if (next - lambda).abs() <= 1e-13 * next.abs() {
            return next;
        }
        lambda = next;
    }
    lambda
}

/// What LP++ derives from the data before training.
#[derive(Debug, Clone, PartialEq)]
pub struct LpPlusPlusInit {
    pub lr_w: f32,
    pub lr_alpha: f32,
    pub alpha: f32,
    /// K×D class sums of the normalised features.
    pub weight: Matrix,
}

/// The initial weights and the step sizes, from normalised features `f`.
pub fn init(
    f: &Matrix,
    labels: &[usize],
    text: &Matrix,
    opts: &LpPlusPlusOptions,
) -> Result<LpPlusPlusInit, MethodError> {
    let (n, k, d) = (f.rows, text.rows, f.cols);
    let mut weight = Matrix::zeros(k, d);
    let mut count = vec![0usize; k];
    for (i, &y) in labels.iter().enumerate() {
        count[y] += 1;
        weight
            .row_mut(y)
            .iter_mut()
            .zip(f.row(i))
            .for_each(|(w, x)| *w += x);
    }
    if let Some(c) = count.iter().position(|&c| c == 0) {
        return Err(MethodError::Label {
            what: "LP++ needs every class in the training set; missing",
            label: c,
            classes: k,
        });
    }
    let text_logits = f.matmul(false, text, true);
    // `calculate_init_alpha`: `compute_centroids_alpha` multiplies the one-hot labels with the
    // N×K text logits element by element, so each class keeps only its own images' similarity
    // to its own text embedding: α = scale · mean_k mean_{i∈k} t_kᵀ f_i (the shots cancel).
    let mut own = vec![0f64; k];
    for (row, &y) in text_logits.data.chunks(k).zip(labels) {
        own[y] += row[y] as f64 / count[y] as f64;
    }
    let alpha = opts.init_alpha_scale as f64 * own.iter().sum::<f64>() / k as f64;
    let mut col_sq = vec![0f64; k];
    for row in text_logits.data.chunks(k) {
        for (s, &t) in col_sq.iter_mut().zip(row) {
            *s += t as f64 * t as f64;
        }
    }
    let max_sq = col_sq.iter().cloned().fold(0f64, f64::max);
    let lambda = max_eigenvalue(f);
    if max_sq <= 0.0 || lambda <= 0.0 {
        return Err(MethodError::Empty {
            what: "the LP++ step sizes' data (all training features or text logits are zero)",
        });
    }
    Ok(LpPlusPlusInit {
        lr_w: (4.0 * n as f64 / lambda) as f32,
        lr_alpha: (n as f64 / (4.0 * max_sq)) as f32,
        alpha: alpha as f32,
        weight,
    })
}

/// Trains `head` for `opts.epochs` full-batch epochs on normalised features `f`; `after_epoch`
/// sees the head after each epoch's updates. Returns the loss of each epoch (before its step).
#[allow(clippy::too_many_arguments)]
pub fn train(
    head: &mut LpPlusPlusHead,
    f: &Matrix,
    labels: &[usize],
    lr_w: f32,
    lr_alpha: f32,
    opts: &LpPlusPlusOptions,
    after_epoch: &mut dyn FnMut(usize, &LpPlusPlusHead),
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, MethodError> {
    if opts.alpha_every == 0 {
        return Err(MethodError::option("alpha-every", 0, "must be at least 1"));
    }
    let mut sgd = Sgd::new(opts.momentum, 0.0);
    let mut alpha_grad = vec![0f32; head.alpha.len()];
    let epoch_loop = EpochLoop {
        epochs: opts.epochs,
        batching: Batching::Full,
    };
    epoch_loop.run(
        head,
        labels.len(),
        &mut |_| Vec::new(),
        &mut |head, epoch, _| {
            let (loss, gw, gb, ga) = head.loss_and_grad(f, labels);
            sgd.step(
                &mut [&mut head.weight.data, &mut head.bias],
                &[&gw.data, &gb],
                lr_w,
            );
            if opts.accumulate_alpha_grad {
                alpha_grad.iter_mut().zip(&ga).for_each(|(a, g)| *a += g);
            } else {
                alpha_grad.copy_from_slice(&ga);
            }
            if (epoch + 1) % opts.alpha_every == 0 {
                head.alpha
                    .iter_mut()
                    .zip(&alpha_grad)
                    .for_each(|(a, g)| *a -= lr_alpha * g);
            }
            Ok(loss)
        },
        &mut |head, epoch| after_epoch(epoch, head),
        progress,
    )
}

/// LP++ on the task: the first training view (the reference extracts one augmented pass), the
/// best epoch on validation (the last one without a validation set).
pub fn fit(
    task: &FewShotTask,
    opts: &LpPlusPlusOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    let f = task.training_views()[0].normalized();
    let labels = &task.train.labels;
    let start = init(&f, labels, &task.text.weights, opts)?;
    let k = task.classes();
    // The reference leaves nn.Linear's random bias; a zero bias is the neutral written start.
    let mut head = LpPlusPlusHead {
        weight: start.weight,
        bias: vec![0.0; k],
        alpha: vec![start.alpha; k],
        text: task.text.weights.clone(),
    };
    let mut best = BestEpoch::new(head.clone());
    let mut keep_best = |epoch: usize, h: &LpPlusPlusHead| {
        let val = eval::accuracy(&h.logits(&task.val.features), &task.val.labels);
        best.offer(epoch, val, Ties::KeepLast, || h.clone());
    };
    let losses = train(
        &mut head,
        &f,
        labels,
        start.lr_w,
        start.lr_alpha,
        opts,
        &mut keep_best,
        progress,
    )?;
    let chosen = vec![
        ("best_epoch".to_string(), best.epoch.to_string()),
        ("lr_w".to_string(), start.lr_w.to_string()),
        ("lr_alpha".to_string(), start.lr_alpha.to_string()),
        ("init_alpha".to_string(), start.alpha.to_string()),
    ];
    Ok(Fitted {
        head: Head::new(best.value),
        chosen,
        losses,
    })
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "lp++",
    title: "LP++",
    paper: "Huang et al., CVPR 2024",
    code: "FereshteShakeri/FewShot-CLIP-Strong-Baseline",
    colour: (255, 187, 120),
    variant_colours: &[],
    reported_as: None,
    without_validation: "its own rule: the Lipschitz step sizes need no search; the last of its 300 epochs instead of the best on validation",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.5, 1.0),
        flip: true,
        source: "FewShot-CLIP-Strong-Baseline: one augmented pass over the training set (Tip-Adapter's transform)",
    },
    needs: Needs::Features,
    options: &[],
    configure: |_, _, _| Method::new(LpPlusPlusOptions::default()),
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No("it learns visual weights and a blending factor for each training class"),
};

impl FewShotMethod for LpPlusPlusOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        format!(
            "epochs={} alpha_every={} init_alpha_scale={} accumulate_alpha_grad={}",
            self.epochs, self.alpha_every, self.init_alpha_scale, self.accumulate_alpha_grad
        )
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }
}

/// Tensors: `weight` (K×D), `bias` (K), `alpha` (one per class), `text` (K×D).
pub static CODEC: HeadCodec = HeadCodec {
    kind: "lp++",
    anchor: ("weight", "K × D, one row per class"),
    input: FeatureSpace::Projected,
    read: |r, weight| {
        let (k, d) = (weight.rows, weight.cols);
        Ok(Box::new(LpPlusPlusHead {
            bias: r.vector("bias", k, "one per class")?,
            alpha: r.vector("alpha", k, "one blending multiplier per class")?,
            text: r.matrix("text", Some(k), Some(d), "K × D text embeddings")?,
            weight,
        }))
    },
};

impl HeadModel for LpPlusPlusHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        LpPlusPlusHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.weight.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("weight", &self.weight);
        w.vector("bias", &self.bias);
        w.vector("alpha", &self.alpha);
        w.matrix("text", &self.text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::linalg::seeded_rng;

    #[test]
    fn gradient_matches_finite_differences() {
        let mut rng = seeded_rng(11);
        let (n, k, d) = (7, 3, 6);
        let m = |r: usize, c: usize, rng: &mut crate::rng::SplitMix64| {
            Matrix::from_vec(r, c, rng.uniform_vec(r * c, 1.0))
                .unwrap()
                .normalized()
        };
        let f = m(n, d, &mut rng);
        let head = LpPlusPlusHead {
            weight: Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0)).unwrap(),
            bias: rng.uniform_vec(k, 0.5),
            alpha: rng.uniform_vec(k, 2.0),
            text: m(k, d, &mut rng),
        };
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let (_, gw, gb, ga) = head.loss_and_grad(&f, &labels);
        let e = 1e-2f32;
        let loss = |h: &LpPlusPlusHead| h.loss_and_grad(&f, &labels).0;
        let numeric = |field: &dyn Fn(&mut LpPlusPlusHead) -> &mut f32| {
            let mut h = head.clone();
            *field(&mut h) += e;
            let up = loss(&h);
            *field(&mut h) -= 2.0 * e;
            (up - loss(&h)) / (2.0 * e)
        };
        let close = |a: f32, b: f32| (a - b).abs() <= 2e-2 * a.abs().max(b.abs()) + 2e-4;
        for j in 0..k * d {
            let num = numeric(&|h| &mut h.weight.data[j]);
            assert!(close(gw.data[j], num), "W {j}: {} vs {num}", gw.data[j]);
        }
        for c in 0..k {
            let num = numeric(&|h| &mut h.bias[c]);
            assert!(close(gb[c], num), "b {c}: {} vs {num}", gb[c]);
            let num = numeric(&|h| &mut h.alpha[c]);
            assert!(close(ga[c], num), "α {c}: {} vs {num}", ga[c]);
        }
    }

    #[test]
    fn power_iteration_finds_the_largest_eigenvalue() {
        // Rows e1·3 and e2·1 (and e1 again): FᵀF = diag(9 + 1, 1) → 10.
        let f = Matrix::from_vec(3, 2, vec![3.0, 0.0, 0.0, 1.0, 1.0, 0.0]).unwrap();
        assert!((max_eigenvalue(&f) - 10.0).abs() < 1e-9);
        // N > D takes the D×D Gram matrix: the same value.
        let wide = f.transposed();
        assert!((max_eigenvalue(&wide) - 10.0).abs() < 1e-9);
    }

    /// Two classes, text embeddings e₁, e₂; class 0 holds (1, 0), class 1 holds (0.6, 0.8).
    /// Own-class similarities 1 and 0.8: α = 250·0.9 = 225 (the mean over every class pair,
    /// (1 + 0 + 0.6 + 0.8)/4, would give 150). η_α = N/(4·max(1 + 0.36, 0 + 0.64)) = 2/5.44;
    /// FᵀF = [[1.36, 0.48], [0.48, 0.64]] has λ_max 1.6, so η_W = 4·2/1.6 = 5.
    #[test]
    fn init_follows_the_authors_code_on_a_hand_worked_case() {
        let f = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.6, 0.8]).unwrap();
        let text = Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap();
        let start = init(&f, &[0, 1], &text, &LpPlusPlusOptions::default()).unwrap();
        assert!((start.alpha - 225.0).abs() < 1e-4, "α {}", start.alpha);
        assert!(
            (start.lr_alpha - 2.0 / 5.44).abs() < 1e-6,
            "η_α {}",
            start.lr_alpha
        );
        assert!((start.lr_w - 5.0).abs() < 1e-5, "η_W {}", start.lr_w);
        assert_eq!(start.weight.data, vec![1.0, 0.0, 0.6, 0.8]);
        // Unequal class sizes: each class's own mean, then the mean over classes.
        let f = Matrix::from_vec(3, 2, vec![1.0, 0.0, 0.0, 1.0, 0.6, 0.8]).unwrap();
        let start = init(&f, &[0, 1, 1], &text, &LpPlusPlusOptions::default()).unwrap();
        assert!((start.alpha - 250.0 * (1.0 + 0.9) / 2.0).abs() < 1e-4);
    }
}
