//! Gaussian discriminant analysis on CLIP features (Wang et al., "A Hard-to-Beat Baseline for
//! Training-free CLIP-based Adaptation", ICLR 2024; mrflogs/ICLR24 `main_few_shots.py`):
//! training-free, the strongest training-free 16-shot result in our anchors.
//!
//! - class means `μ_k` of the normalised training features (all augmented views pooled, as the
//!   reference pools its 10 augmentation passes);
//! - one shared covariance, shrunk as the reference does:
//!   `Σ⁻¹ = D · (S + tr(Σ̂)·I)⁻¹` with `S = Σ_i (f_i − μ_{y_i})(f_i − μ_{y_i})ᵀ` (`(n−1)·Σ̂`) and
//!   `Σ̂ = S/(n−1)` (the reference calls `pinv`; the matrix is positive definite, so we solve by
//!   Cholesky);
//! - `W = μ Σ⁻¹`, `b_k = log(1/K) − ½ μ_kᵀ Σ⁻¹ μ_k` (uniform prior);
//! - `logits = scale·f Tᵀ + α (f Wᵀ + b)`, α searched on validation over 1e-4 … 100.

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{cholesky_solve, gemm, Matrix};
use super::method::method_boilerplate;
use super::zero_shot::cosine_logits;
use super::{
    eval, Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method,
    MethodCard, MethodError, Needs, Progress,
};

#[derive(Debug, Clone, PartialEq)]
pub struct GdaOptions {
    /// α candidates searched on validation (the reference's list).
    pub alphas: Vec<f32>,
    /// α when there is no validation set (the reference's initial `best_alpha`).
    pub alpha: f32,
}

impl Default for GdaOptions {
    fn default() -> Self {
        GdaOptions {
            alphas: vec![1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0],
            alpha: 0.1,
        }
    }
}

/// A GDA head: the zero-shot classifier plus the linear discriminant.
#[derive(Debug, Clone, PartialEq)]
pub struct GdaHead {
    /// `K × D`.
    pub weight: Matrix,
    pub bias: Vec<f32>,
    pub alpha: f32,
    pub classes: Matrix,
    pub logit_scale: f32,
}

impl GdaHead {
    pub fn logits(&self, x: &Matrix) -> Matrix {
        let mut out = cosine_logits(x, &self.classes, self.logit_scale);
        let gda = self.discriminant(&x.normalized());
        out.data
            .iter_mut()
            .zip(&gda.data)
            .for_each(|(o, g)| *o += self.alpha * g);
        out
    }

    /// `f Wᵀ + b`.
    fn discriminant(&self, f: &Matrix) -> Matrix {
        let mut out = f.matmul(false, &self.weight, true);
        for i in 0..out.rows {
            out.row_mut(i)
                .iter_mut()
                .zip(&self.bias)
                .for_each(|(o, b)| *o += b);
        }
        out
    }
}

/// Estimates the discriminant from the training features and searches α on validation.
pub fn fit(
    task: &FewShotTask,
    opts: &GdaOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    let views: Vec<Matrix> = task
        .training_views()
        .iter()
        .map(|v| v.normalized())
        .collect();
    let mu = class_means(&views, &task.train.labels, task.classes())?;
    let (weight, bias) = discriminant(&views, &task.train.labels, &mu)?;
    let mut head = GdaHead {
        weight,
        bias,
        alpha: opts.alpha,
        classes: task.text.weights.clone(),
        logit_scale: task.text.logit_scale,
    };
    if !task.val.labels.is_empty() && !opts.alphas.is_empty() {
        // The reference starts from best_acc = 0 and keeps the first strictly better α.
        let mut best = (0f32, opts.alpha);
        for (i, &alpha) in opts.alphas.iter().enumerate() {
            head.alpha = alpha;
            let acc = eval::accuracy(&head.logits(&task.val.features), &task.val.labels);
            if acc > best.0 {
                best = (acc, alpha);
            }
            progress(Progress::Search {
                done: i + 1,
                total: opts.alphas.len(),
            });
        }
        head.alpha = best.1;
    }
    Ok(Fitted {
        chosen: vec![("alpha".to_string(), head.alpha.to_string())],
        head: Head::new(head),
        losses: Vec::new(),
    })
}

/// The class means `μ` (K × D, row-major, f64) over every view.
fn class_means(views: &[Matrix], labels: &[usize], k: usize) -> Result<Vec<f64>, MethodError> {
    let d = views[0].cols;
    let mut mu = vec![0f64; k * d];
    let mut count = vec![0usize; k];
    for v in views {
        for (i, &y) in labels.iter().enumerate() {
            count[y] += 1;
            mu[y * d..(y + 1) * d]
                .iter_mut()
                .zip(v.row(i))
                .for_each(|(m, &x)| *m += x as f64);
        }
    }
    if let Some(c) = count.iter().position(|&c| c == 0) {
        return Err(MethodError::Label {
            what: "GDA needs every class in the training set; missing",
            label: c,
            classes: k,
        });
    }
    for c in 0..k {
        mu[c * d..(c + 1) * d]
            .iter_mut()
            .for_each(|m| *m /= count[c] as f64);
    }
    Ok(mu)
}

/// `W = D · μ (S + tr(Σ̂)·I)⁻¹` and `b_k = log(1/K) − ½ μ_kᵀ Wᵀ_k` from the views and means.
fn discriminant(
    views: &[Matrix],
    labels: &[usize],
    mu: &[f64],
) -> Result<(Matrix, Vec<f32>), MethodError> {
    let d = views[0].cols;
    let k = mu.len() / d;
    // Centred samples, then S = Xcᵀ Xc in f32 GEMM (accumulated in f64 below for the solve).
    let n = views.len() * labels.len();
    let mut centred = Matrix::zeros(n, d);
    for (vi, v) in views.iter().enumerate() {
        for (i, &y) in labels.iter().enumerate() {
            let row = centred.row_mut(vi * labels.len() + i);
            for ((c, &x), &m) in row.iter_mut().zip(v.row(i)).zip(&mu[y * d..(y + 1) * d]) {
                *c = (x as f64 - m) as f32;
            }
        }
    }
    let mut s32 = vec![0f32; d * d];
    gemm(
        &centred.data,
        true,
        &centred.data,
        false,
        &mut s32,
        d,
        n,
        d,
        false,
    );
    let mut s: Vec<f64> = s32.iter().map(|&v| v as f64).collect();
    // tr(Σ̂) with Σ̂ = S / (n − 1) (torch.cov's unbiased estimate; a single sample gives S = 0).
    let trace = (0..d).map(|i| s[i * d + i]).sum::<f64>() / (n.saturating_sub(1).max(1)) as f64;
    let shrink = if trace > 0.0 { trace } else { 1.0 };
    for i in 0..d {
        s[i * d + i] += shrink;
    }
    // Solve (S + tr·I) Z = μᵀ, so W = D · Zᵀ.
    let mut rhs = vec![0f64; d * k];
    for c in 0..k {
        for j in 0..d {
            rhs[j * k + c] = mu[c * d + j];
        }
    }
    if !cholesky_solve(&mut s, d, &mut rhs, k) {
        return Err(MethodError::NotPositiveDefinite {
            what: "the shrunk GDA covariance",
        });
    }
    let mut weight = Matrix::zeros(k, d);
    let mut bias = vec![0f32; k];
    let prior = (1.0 / k as f64).ln();
    for c in 0..k {
        let mut quad = 0f64;
        for j in 0..d {
            let w = d as f64 * rhs[j * k + c];
            weight.data[c * d + j] = w as f32;
            quad += w * mu[c * d + j];
        }
        bias[c] = (prior - 0.5 * quad) as f32;
    }
    Ok((weight, bias))
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "gda",
    title: "GDA",
    paper: "Wang et al., ICLR 2024",
    code: "mrflogs/ICLR24",
    colour: (44, 160, 44),
    variant_colours: &[],
    reported_as: Some("GDA"),
    without_validation: "α = 0.1 (`GdaOptions::default`; the reference only searches)",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.5, 1.0),
        flip: true,
        source: "mrflogs/ICLR24: Tip-Adapter's 10 augmented passes, pooled into the class means and covariance",
    },
    needs: Needs::Features,
    options: &[],
    configure: |_, _, _| Method::new(GdaOptions::default()),
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No("its classifier is built from each training class's mean image feature, and a class it never saw has none"),
};

impl FewShotMethod for GdaOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        format!("alphas={:?}", self.alphas)
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }
}

/// Tensors: `classes` (K×D), `logit_scale`, `weight` (K×D), `bias` (K), `alpha`.
pub static CODEC: HeadCodec = HeadCodec {
    kind: "gda",
    anchor: ("classes", "K × D, one class embedding per row"),
    input: FeatureSpace::Projected,
    read: |r, classes| {
        let (k, d) = (classes.rows, classes.cols);
        Ok(Box::new(GdaHead {
            weight: r.matrix("weight", Some(k), Some(d), "K × D, like `classes`")?,
            bias: r.vector("bias", k, "one per class")?,
            alpha: r.scalar("alpha", "one value")?,
            logit_scale: r.logit_scale()?,
            classes,
        }))
    },
};

impl HeadModel for GdaHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        GdaHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.classes.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("classes", &self.classes);
        w.scalar("logit_scale", self.logit_scale);
        w.matrix("weight", &self.weight);
        w.vector("bias", &self.bias);
        w.scalar("alpha", self.alpha);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::linalg::seeded_rng;
    use crate::methods::{LabelledSet, TextClassifier};

    fn task(train: Matrix, labels: Vec<usize>, text: Matrix) -> FewShotTask {
        let k = text.rows;
        FewShotTask {
            pre_projection: None,
            text_mean: None,
            classnames: (0..k).map(|i| format!("c{i}")).collect(),
            train: LabelledSet {
                features: train.clone(),
                labels: labels.clone(),
            },
            train_views: Vec::new(),
            // No validation set: α stays at its default, the estimator alone is tested.
            val: LabelledSet {
                features: Matrix::zeros(0, train.cols),
                labels: Vec::new(),
            },
            test: LabelledSet {
                features: train,
                labels,
            },
            text: TextClassifier {
                weights: text,
                logit_scale: 100.0,
                logit_bias: None,
            },
        }
    }

    fn gda_head(t: &FewShotTask) -> GdaHead {
        let head = fit(t, &GdaOptions::default(), &mut |_| {}).unwrap().head;
        head.downcast_ref::<GdaHead>()
            .expect("GDA fits a GDA head")
            .clone()
    }

    fn random_task(seed: u64, k: usize, per_class: usize, d: usize) -> FewShotTask {
        let mut rng = seeded_rng(seed);
        let n = k * per_class;
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let mut x = Matrix::from_vec(n, d, rng.uniform_vec(n * d, 1.0)).unwrap();
        for (i, &y) in labels.iter().enumerate() {
            x.data[i * d + y] += 1.5;
        }
        let text = Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0))
            .unwrap()
            .normalized();
        task(x, labels, text)
    }

    fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!((x - y).abs() <= tol, "{what}[{i}]: {x} vs {y}");
        }
    }

    /// Two classes in two dimensions, unit-norm features, worked by hand:
    /// class 0 = (1, 0), (0.6, 0.8); class 1 = (0, 1), (0.8, 0.6);
    /// μ₀ = (0.8, 0.4), μ₁ = (0.4, 0.8); centred rows ±(0.2, −0.4), ±(−0.4, 0.2);
    /// S = [[0.4, −0.32], [−0.32, 0.4]]; tr Σ̂ = tr S / (n − 1) = 0.8 / 3;
    /// M = S + tr Σ̂·I = [[2/3, −0.32], [−0.32, 2/3]]; Σ⁻¹ = D·M⁻¹ = 2·M⁻¹;
    /// W_c = μ_c Σ⁻¹, b_c = ln ½ − ½ W_c·μ_c.
    #[test]
    fn closed_form_on_a_hand_worked_case() {
        let x = Matrix::from_vec(4, 2, vec![1.0, 0.0, 0.6, 0.8, 0.0, 1.0, 0.8, 0.6]).unwrap();
        let t = task(
            x,
            vec![0, 0, 1, 1],
            Matrix::from_vec(2, 2, vec![1.0, 0.0, 0.0, 1.0]).unwrap(),
        );
        let h = gda_head(&t);
        let (a, b) = (2.0 / 3.0, -0.32f64);
        let det = a * a - b * b;
        // 2·M⁻¹ = 2/det · [[a, −b], [−b, a]].
        let p = [2.0 * a / det, -2.0 * b / det, -2.0 * b / det, 2.0 * a / det];
        let mus = [[0.8, 0.4], [0.4, 0.8f64]];
        for (c, mu) in mus.iter().enumerate() {
            let w = [mu[0] * p[0] + mu[1] * p[2], mu[0] * p[1] + mu[1] * p[3]];
            let bias = 0.5f64.ln() - 0.5 * (w[0] * mu[0] + w[1] * mu[1]);
            assert_close(h.weight.row(c), &[w[0] as f32, w[1] as f32], 1e-5, "weight");
            assert!((h.bias[c] - bias as f32).abs() < 1e-5, "bias {c}");
        }
        // By symmetry (swap the axes and the classes) W₁ is W₀ mirrored and b₀ = b₁.
        assert!((h.weight.data[0] - h.weight.data[3]).abs() < 1e-6);
        assert!((h.bias[0] - h.bias[1]).abs() < 1e-6);
    }

    #[test]
    fn alpha_zero_is_exactly_zero_shot() {
        let t = random_task(3, 3, 5, 6);
        let mut h = gda_head(&t);
        h.alpha = 0.0;
        let zs = cosine_logits(&t.test.features, &t.text.weights, t.text.logit_scale);
        assert_eq!(h.logits(&t.test.features).data, zs.data);
    }

    /// Features are normalised first: rescaling an image's feature changes nothing; the
    /// estimator is a sum over samples: their order changes nothing.
    #[test]
    fn invariant_to_feature_scale_and_sample_order() {
        let t = random_task(5, 3, 6, 8);
        let h = gda_head(&t);
        let mut scaled = t.clone();
        for (i, row) in scaled.train.features.data.chunks_mut(8).enumerate() {
            row.iter_mut().for_each(|v| *v *= 0.3 + i as f32);
        }
        let hs = gda_head(&scaled);
        assert_close(&hs.weight.data, &h.weight.data, 1e-4, "scaled W");
        assert_close(&hs.bias, &h.bias, 1e-4, "scaled b");

        let order: Vec<usize> = (0..t.train.labels.len()).rev().collect();
        let mut shuffled = t.clone();
        shuffled.train.features = t.train.features.gather_rows(&order);
        shuffled.train.labels = order.iter().map(|&i| t.train.labels[i]).collect();
        let hp = gda_head(&shuffled);
        assert_close(&hp.weight.data, &h.weight.data, 1e-4, "permuted W");
        assert_close(&hp.bias, &h.bias, 1e-4, "permuted b");
    }

    /// Renaming the classes permutes the discriminant's rows and nothing else.
    #[test]
    fn relabelling_classes_permutes_the_discriminant() {
        let t = random_task(7, 3, 5, 6);
        let h = gda_head(&t);
        let perm = [2usize, 0, 1];
        let mut r = t.clone();
        r.train.labels = t.train.labels.iter().map(|&y| perm[y]).collect();
        let mut text = Matrix::zeros(3, 6);
        for (c, &p) in perm.iter().enumerate() {
            text.row_mut(p).copy_from_slice(t.text.weights.row(c));
        }
        r.text.weights = text;
        let hr = gda_head(&r);
        for (c, &p) in perm.iter().enumerate() {
            assert_close(hr.weight.row(p), h.weight.row(c), 1e-5, "row");
            assert!((hr.bias[p] - h.bias[c]).abs() < 1e-5);
        }
    }

    #[test]
    fn a_class_without_training_images_is_an_error() {
        let mut t = random_task(9, 3, 4, 5);
        t.train.labels.iter_mut().for_each(|y| *y = (*y).min(1));
        match fit(&t, &GdaOptions::default(), &mut |_| {}) {
            Err(MethodError::Label { label: 2, .. }) => {}
            other => panic!("expected a missing-class error, got {other:?}"),
        }
    }
}
