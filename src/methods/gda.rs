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

use super::linalg::{cholesky_solve, gemm, Matrix};
use super::zero_shot::cosine_logits;
use super::{eval, FewShotTask, Fitted, Head, MethodError, Progress};

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
    let (k, d) = (task.classes(), task.dim());
    let views: Vec<Matrix> = task
        .training_views()
        .iter()
        .map(|v| v.normalized())
        .collect();
    let labels = &task.train.labels;
    // Class means over every view.
    let mut mu = vec![0f64; k * d];
    let mut count = vec![0usize; k];
    for v in &views {
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
    let mut head = GdaHead {
        weight,
        bias,
        alpha: opts.alpha,
        classes: task.text.weights.clone(),
        logit_scale: task.text.logit_scale,
    };
    let mut chosen = Vec::new();
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
    chosen.push(("alpha".to_string(), head.alpha.to_string()));
    Ok(Fitted {
        head: Head::Gda(head),
        chosen,
        losses: Vec::new(),
    })
}
