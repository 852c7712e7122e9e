//! Linear-probe CLIP as CoOp runs it (`lpclip/linear_probe.py` @61a9cd3): L2-regularised
//! multinomial logistic regression with an unpenalised intercept on the normalised image
//! features (scikit-learn `LogisticRegression(solver="lbfgs", max_iter=1000, C)`), C chosen on
//! the few-shot validation set: the grid 1e6, 1e4, …, 1e-6, then 8 rounds of the script's
//! log-space bisection around the best value (`binary_search`).
//!
//! The objective, scaled by `1/n` (same minimiser as scikit-learn's `C·Σ loss + ½‖W‖²`):
//! `(1/n) Σ_i CE(W f_i + b, y_i) + ‖W‖² / (2 C n)`; with two classes the penalty is doubled,
//! which gives scikit-learn's binomial classifier (it fits one vector `w₁ − w₀` there).

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::lbfgs::{minimize, LbfgsOptions};
use super::linalg::{cross_entropy_backward, gemm, Matrix};
use super::method::method_boilerplate;
use super::{
    eval, Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method,
    MethodCard, MethodError, Needs, Progress,
};

#[derive(Debug, Clone, PartialEq)]
pub struct LinearProbeOptions {
    /// The initial C grid.
    pub grid: Vec<f64>,
    /// Bisection rounds after the grid (the script's `num_step`, 8).
    pub steps: usize,
    pub solver: LbfgsOptions,
    /// C when there is no validation set.
    pub c: f64,
}

impl Default for LinearProbeOptions {
    fn default() -> Self {
        LinearProbeOptions {
            grid: vec![1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6],
            steps: 8,
            solver: LbfgsOptions::default(),
            c: 1.0,
        }
    }
}

/// A linear classifier on normalised features.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearHead {
    /// `K × D`.
    pub weight: Matrix,
    pub bias: Vec<f32>,
}

impl LinearHead {
    pub fn logits(&self, x: &Matrix) -> Matrix {
        let mut out = x.normalized().matmul(false, &self.weight, true);
        for i in 0..out.rows {
            out.row_mut(i)
                .iter_mut()
                .zip(&self.bias)
                .for_each(|(o, b)| *o += b);
        }
        out
    }
}

/// Fits the regression for one C on normalised features `f`.
pub fn train(f: &Matrix, labels: &[usize], k: usize, c: f64, solver: &LbfgsOptions) -> LinearHead {
    let (n, d) = (f.rows, f.cols);
    let mut x = vec![0f64; k * d + k];
    // With two classes scikit-learn fits one binomial vector `w` (penalty ‖w‖²/2), not two
    // softmax rows. Softmax rows penalised twice as hard reach the same classifier: at the
    // optimum `w₀ = −w₁ = −w/2`, so `‖W‖² = ‖w‖²/2`, and `w₁ − w₀ = w`, `b₁ − b₀` its intercept.
    let lambda = if k == 2 { 2.0 } else { 1.0 } / (c * n as f64);
    let mut w32 = vec![0f32; k * d];
    let mut logits = vec![0f32; n * k];
    let mut gw32 = vec![0f32; k * d];
    minimize(&mut x, solver, &mut |x, g| {
        w32.iter_mut()
            .zip(&x[..k * d])
            .for_each(|(w, &v)| *w = v as f32);
        gemm(&f.data, false, &w32, true, &mut logits, n, d, k, false);
        for row in logits.chunks_mut(k) {
            row.iter_mut()
                .zip(&x[k * d..])
                .for_each(|(l, &b)| *l += b as f32);
        }
        let loss = cross_entropy_backward(&mut logits, labels, k) as f64;
        // ∂/∂W = Gᵀ f (G already divided by n), ∂/∂b = column sums of G.
        gemm(&logits, true, &f.data, false, &mut gw32, k, n, d, false);
        let mut reg = 0f64;
        for j in 0..k * d {
            reg += x[j] * x[j];
            g[j] = gw32[j] as f64 + lambda * x[j];
        }
        for c in 0..k {
            g[k * d + c] = logits.chunks(k).map(|r| r[c] as f64).sum();
        }
        loss + 0.5 * lambda * reg
    });
    LinearHead {
        weight: Matrix::from_vec(k, d, x[..k * d].iter().map(|&v| v as f32).collect())
            .expect("k·d weights"),
        bias: x[k * d..].iter().map(|&v| v as f32).collect(),
    }
}

/// The CoOp search: grid, then bisection in log space; returns the final C.
pub fn fit(
    task: &FewShotTask,
    opts: &LinearProbeOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    if let Some(&c) = opts.grid.iter().find(|&&c| c.is_nan() || c <= 0.0) {
        return Err(MethodError::option("c-grid", c, "every C must be positive"));
    }
    let k = task.classes();
    let f = task.train.features.normalized();
    let labels = &task.train.labels;
    let val_acc = |c: f64| {
        let head = train(&f, labels, k, c, &opts.solver);
        let acc = eval::accuracy(&head.logits(&task.val.features), &task.val.labels);
        (acc, head)
    };
    let total = opts.grid.len() + 2 * opts.steps;
    let mut done = 0;
    let mut tick = |progress: &mut dyn FnMut(Progress)| {
        done += 1;
        progress(Progress::Search { done, total });
    };
    if task.val.labels.is_empty() || opts.grid.is_empty() {
        let head = train(&f, labels, k, opts.c, &opts.solver);
        return Ok(Fitted {
            head: Head::new(head),
            chosen: vec![("C".into(), opts.c.to_string())],
            losses: Vec::new(),
        });
    }
    let mut accs = Vec::new();
    for &c in &opts.grid {
        accs.push(val_acc(c).0);
        tick(progress);
    }
    // np.argmax: the first maximum.
    let peak = (0..accs.len()).fold(0, |b, i| if accs[i] > accs[b] { i } else { b });
    let (mut left, mut right) = (0.1 * opts.grid[peak], 10.0 * opts.grid[peak]);
    let mut final_c = opts.grid[peak];
    let mut final_head = None;
    for _ in 0..opts.steps {
        let (acc_l, head_l) = val_acc(left);
        tick(progress);
        let (acc_r, head_r) = val_acc(right);
        tick(progress);
        let mid = 0.5 * (right.log10() + left.log10());
        if acc_l < acc_r {
            final_c = right;
            final_head = Some(head_r);
            left = 10f64.powf(mid);
        } else {
            final_c = left;
            final_head = Some(head_l);
            right = 10f64.powf(mid);
        }
    }
    let head = final_head.unwrap_or_else(|| train(&f, labels, k, final_c, &opts.solver));
    Ok(Fitted {
        head: Head::new(head),
        chosen: vec![("C".into(), final_c.to_string())],
        losses: Vec::new(),
    })
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "linear-probe",
    title: "Linear probe",
    paper: "Radford et al., ICML 2021 (as CoOp runs it, Zhou et al., IJCV 2022)",
    code: "KaiyangZhou/CoOp lpclip/linear_probe.py",
    colour: (140, 86, 75),
    variant_colours: &[],
    reported_as: None,
    without_validation: "C = 1 (no C search; scikit-learn's default)",
    augmentation: Augmentation::None,
    needs: Needs::Features,
    options: &[],
    configure: |_, _, _| Method::new(LinearProbeOptions::default()),
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No("a logistic regression learns one weight vector per training class, and has none for a class it never saw"),
};

impl FewShotMethod for LinearProbeOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        format!("grid={:?} steps={}", self.grid, self.steps)
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }
}

/// Tensors: `weight` (K×D) and `bias` (K).
pub static CODEC: HeadCodec = HeadCodec {
    kind: "linear",
    anchor: ("weight", "K × D, one row per class"),
    input: FeatureSpace::Projected,
    read: |r, weight| {
        Ok(Box::new(LinearHead {
            bias: r.vector("bias", weight.rows, "one per class")?,
            weight,
        }))
    },
};

impl HeadModel for LinearHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        LinearHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.weight.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("weight", &self.weight);
        w.vector("bias", &self.bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::linalg::seeded_rng;

    #[test]
    fn gradient_is_zero_at_the_solution_and_separable_data_is_fitted() {
        let mut rng = seeded_rng(4);
        let (n, k, d) = (30, 3, 5);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let mut x = Matrix::from_vec(n, d, rng.uniform_vec(n * d, 0.3)).unwrap();
        for (i, &y) in labels.iter().enumerate() {
            x.data[i * d + y] += 1.0;
        }
        let f = x.normalized();
        let head = train(
            &f,
            &labels,
            k,
            1.0,
            &LbfgsOptions {
                gtol: 1e-7,
                ..Default::default()
            },
        );
        assert_eq!(eval::accuracy(&head.logits(&x), &labels), 100.0);
        // Stationarity: (1/n) Σ (p − y) f + W/(C n) = 0 for each class row.
        let mut logits = head.logits(&x).data;
        cross_entropy_backward(&mut logits, &labels, k);
        let grad = Matrix::from_vec(n, k, logits)
            .unwrap()
            .matmul(true, &f, false);
        for (g, w) in grad.data.iter().zip(&head.weight.data) {
            assert!((g + w / n as f32).abs() < 1e-4, "{g} {w}");
        }
    }

    /// Two classes: the doubled penalty keeps the two rows opposite (`w₀ = −w₁`), and the
    /// stationarity condition of scikit-learn's binomial objective holds for `w = w₁ − w₀`:
    /// `(1/n) Σ (σ(w·f + b) − y) f + w/(C n) = 0`.
    #[test]
    fn two_classes_solve_the_binomial_problem() {
        let mut rng = seeded_rng(11);
        let (n, d, c) = (24, 4, 0.5);
        let labels: Vec<usize> = (0..n).map(|i| i % 2).collect();
        let mut x = Matrix::from_vec(n, d, rng.uniform_vec(n * d, 1.0)).unwrap();
        for (i, &y) in labels.iter().enumerate() {
            x.data[i * d] += if y == 1 { 0.5 } else { -0.5 };
        }
        let f = x.normalized();
        let opts = LbfgsOptions {
            gtol: 1e-7,
            ..Default::default()
        };
        let head = train(&f, &labels, 2, c, &opts);
        let w: Vec<f32> = (0..d)
            .map(|j| head.weight.data[d + j] - head.weight.data[j])
            .collect();
        for j in 0..d {
            assert!((head.weight.data[j] + head.weight.data[d + j]).abs() < 1e-5);
        }
        let b = head.bias[1] - head.bias[0];
        let mut grad = vec![0f32; d];
        for (i, &y) in labels.iter().enumerate() {
            let z: f32 = f.row(i).iter().zip(&w).map(|(a, b)| a * b).sum::<f32>() + b;
            let r = 1.0 / (1.0 + (-z).exp()) - y as f32;
            grad.iter_mut()
                .zip(f.row(i))
                .for_each(|(g, &v)| *g += r * v / n as f32);
        }
        for (g, wj) in grad.iter().zip(&w) {
            let total = g + wj / (c as f32 * n as f32);
            assert!(total.abs() < 1e-4, "binomial gradient {total}");
        }
    }
}
