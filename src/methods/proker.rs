//! ProKeR, proximal kernel ridge regression (Bendou et al., "ProKeR: A Kernel Perspective on
//! Few-Shot Adaptation of Large Vision-Language Models", CVPR 2025): training-free. The
//! zero-shot classifier `f₀(x) = x Wᵀ` is the base learner, and a function of the RKHS of an RBF
//! kernel is fitted to what it gets wrong on the few-shot images, regularised towards `f₀`
//! (a proximal term around the zero-shot classifier), in closed form:
//!
//! - `k(x, y) = exp(−β (1 − x·y))` on L2-normalised features (`RBF_Kernel`);
//! - support set `S`: every augmented view of the few-shot images, each normalised, view after
//!   view (the authors' `augment_epoch` passes), labels `Y` one-hot;
//! - `A = (K_SS / λ + I)⁻¹ (Y − S Wᵀ)`, solved, not inverted (here by Cholesky in f64: the
//!   matrix is symmetric positive definite);
//! - `logits(x) = x Wᵀ + k(x, S) A`, with `W` the unit text classifier and no logit scale: the
//!   residual `Y − S Wᵀ` is fitted on the cosine scale, and CLIP's 100 would change the method.
//!
//! β and λ are searched on validation over the authors' per-dataset grids (`linspace(lo, hi, n)`,
//! β outer, λ inner, the first strictly better accuracy kept); without validation, the authors'
//! validation-free values per shot count (their ImageNet-transferred `hyperparameters.json`).
//!
//! Reference code: the training-free `ProKeR` of `trainers/proker.py` with `main.py`, `utils.py`
//! and `configs/RN50/configs_proker/` of the authors' release (read in its mirror
//! omarnust/BReg-Adapter, whose README is ProKeR's). docs/methods.md lists where the paper, that
//! code and this file differ.

use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{cholesky_solve, gemm_f64_abt, Matrix};
use super::method::method_boilerplate;
use super::overrides::{MethodOverrides, IMAGENET};
use super::{
    Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method, MethodCard,
    MethodError, Needs, Progress,
};

/// One axis of the authors' grid: `[lo, hi, steps]` in their configs, `torch.linspace` in their
/// code ([`linspace`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub lo: f64,
    pub hi: f64,
    pub steps: usize,
}

impl Span {
    pub const fn new(lo: f64, hi: f64, steps: usize) -> Self {
        Span { lo, hi, steps }
    }

    pub fn values(self) -> Vec<f64> {
        linspace(self.lo, self.hi, self.steps)
    }
}

/// `torch.linspace(lo, hi, steps)` by the formula of PyTorch's CPU kernel: the first half from
/// `lo` up, the second from `hi` down, so that both ends are exact. (Its SIMD path computes
/// some points from the start of their vector instead, one ulp away, by the CPU's vector width.)
pub fn linspace(lo: f64, hi: f64, steps: usize) -> Vec<f64> {
    if steps <= 1 {
        return vec![lo; steps];
    }
    let step = (hi - lo) / (steps - 1) as f64;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                lo + step * i as f64
            } else {
                hi - step * (steps - 1 - i) as f64
            }
        })
        .collect()
}

/// The authors' validation-free values (`configs/RN50/configs_proker/hyperparameters.json`,
/// "pre-computed hps and averaged per seed" on ImageNet): `(shots, β, λ)`.
pub const WITHOUT_VALIDATION: [(usize, f64, f64); 5] = [
    (1, 3.0, 0.05),
    (2, 2.6, 0.05),
    (4, 1.5, 0.05),
    (8, 1.66, 0.07),
    (16, 1.7, 0.1),
];

/// `(β, λ)` without validation for a shot count: the authors' entry for the largest tabulated
/// shot count not above it (their table has 1, 2, 4, 8 and 16 only; 3 shots get 2's values).
pub fn without_validation(shots: usize) -> (f64, f64) {
    let entry = (WITHOUT_VALIDATION.iter().rev())
        .find(|(s, _, _)| *s <= shots)
        .unwrap_or(&WITHOUT_VALIDATION[0]);
    (entry.1, entry.2)
}

/// The largest support set (views × images) whose kernel matrix is held: 40,000 rows are a
/// 12.8 GB f64 matrix, and a Cholesky factorisation of ~2·10¹³ multiply-adds per grid point.
pub const MAX_SUPPORT: usize = 40_000;

#[derive(Debug, Clone, PartialEq)]
pub struct ProkerOptions {
    /// β grid searched on validation.
    pub beta_grid: Span,
    /// λ grid searched on validation.
    pub lmbda_grid: Span,
    /// β set by the user: used instead of its grid, and instead of the validation-free value.
    pub beta: Option<f64>,
    /// λ set by the user, likewise.
    pub lmbda: Option<f64>,
}

impl Default for ProkerOptions {
    /// The grid four of the authors' eleven configs share (caltech101, fgvc, food101, ucf101):
    /// β over linspace(0.5, 3, 20), λ over linspace(0.001, 1, 10).
    fn default() -> Self {
        ProkerOptions {
            beta_grid: Span::new(0.5, 3.0, 20),
            lmbda_grid: Span::new(0.001, 1.0, 10),
            beta: None,
            lmbda: None,
        }
    }
}

impl ProkerOptions {
    /// The authors' `configs/RN50/configs_proker/<dataset>.yaml` grids, by CoOp dataset key
    /// (theirs: `fgvc` for FGVC-Aircraft); an unknown dataset gets the default. The ImageNet
    /// variants (`imagenet-sketch`, …) use ImageNet's, as `trainers/proker.py` maps them.
    pub fn for_dataset(key: &str) -> Self {
        let (beta, lmbda) = match key {
            "dtd" | "oxford_flowers" => (Span::new(0.1, 10.0, 20), Span::new(0.001, 10.0, 100)),
            "eurosat" => (Span::new(0.5, 3.0, 20), Span::new(0.001, 1.0, 100)),
            "oxford_pets" => (Span::new(0.01, 5.0, 40), Span::new(0.01, 0.3, 20)),
            "stanford_cars" => (Span::new(0.1, 10.0, 5), Span::new(0.01, 1.0, 5)),
            "sun397" => (Span::new(0.1, 10.0, 20), Span::new(0.01, 10.0, 10)),
            k if k.starts_with(IMAGENET) => (Span::new(1.5, 3.0, 10), Span::new(0.05, 0.25, 10)),
            // caltech101, fgvc(_aircraft), food101, ucf101 and anything else.
            _ => {
                let d = ProkerOptions::default();
                (d.beta_grid, d.lmbda_grid)
            }
        };
        ProkerOptions {
            beta_grid: beta,
            lmbda_grid: lmbda,
            ..Default::default()
        }
    }

    /// The β and λ candidates searched on validation.
    pub fn candidates(&self) -> (Vec<f64>, Vec<f64>) {
        (
            self.beta.map_or_else(|| self.beta_grid.values(), |b| vec![b]),
            self.lmbda.map_or_else(|| self.lmbda_grid.values(), |l| vec![l]),
        )
    }

    fn check(&self) -> Result<(), MethodError> {
        let (betas, lmbdas) = self.candidates();
        if betas.is_empty() || lmbdas.is_empty() {
            return Err(MethodError::option(
                "search grid",
                format!("{:?} × {:?}", self.beta_grid, self.lmbda_grid),
                "both grids need at least one step",
            ));
        }
        if let Some(&b) = betas.iter().find(|b| !b.is_finite()) {
            return Err(MethodError::option("beta", b, "must be finite"));
        }
        if let Some(&l) = lmbdas.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
            return Err(MethodError::option("lmbda", l, "must be positive"));
        }
        Ok(())
    }
}

/// The rows of `m` divided by their norms, in f64 (a zero row stays zero).
pub fn normalized_f64(m: &Matrix) -> Vec<f64> {
    let mut out: Vec<f64> = m.data.iter().map(|&v| v as f64).collect();
    for row in out.chunks_mut(m.cols.max(1)) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        if norm > 0.0 {
            row.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

/// The support set: every training view, normalised, view after view (`n × D`, f64).
#[derive(Debug, Clone, PartialEq)]
pub struct Support {
    pub keys: Vec<f64>,
    pub labels: Vec<usize>,
    pub dim: usize,
}

impl Support {
    pub fn of(task: &FewShotTask) -> Result<Self, MethodError> {
        let views = task.training_views();
        let n = views.len() * task.train.labels.len();
        if n > MAX_SUPPORT {
            return Err(MethodError::TooLarge {
                what: "ProKeR's kernel matrix (augmented views × training images)",
                found: n,
                max: MAX_SUPPORT,
                why: "extract fewer augmented views",
            });
        }
        let mut keys = Vec::with_capacity(n * task.dim());
        for v in &views {
            keys.extend(normalized_f64(v));
        }
        Ok(Support {
            keys,
            labels: task.train.labels.repeat(views.len()),
            dim: task.dim(),
        })
    }

    pub fn rows(&self) -> usize {
        self.labels.len()
    }
}

/// `x yᵀ` (`rows_x × rows_y`) of row-major f64 matrices `dim` wide.
pub fn products(x: &[f64], y: &[f64], dim: usize) -> Vec<f64> {
    let (m, n) = (x.len() / dim.max(1), y.len() / dim.max(1));
    let mut out = vec![0f64; m * n];
    gemm_f64_abt(x, y, &mut out, m, dim, n);
    out
}

/// The RBF kernel `exp(−β (1 − a))` of cosine similarities `a`.
pub fn rbf(affinity: &[f64], beta: f64) -> Vec<f64> {
    affinity.iter().map(|&a| (-beta * (1.0 - a)).exp()).collect()
}

/// What the zero-shot classifier gets wrong on the support set: `Y − S Wᵀ` (`n × K`), with `text`
/// the classifier rows (`K × D`, f64).
pub fn residual(support: &Support, text: &[f64]) -> Vec<f64> {
    let k = text.len() / support.dim.max(1);
    let mut r = products(&support.keys, text, support.dim);
    r.iter_mut().for_each(|v| *v = -*v);
    for (i, &y) in support.labels.iter().enumerate() {
        r[i * k + y] += 1.0;
    }
    r
}

/// The coefficients `A = (K/λ + I)⁻¹ R` (`n × K`) for the kernel matrix `kernel` (`n × n`).
pub fn coefficients(kernel: &[f64], residual: &[f64], lmbda: f64) -> Result<Vec<f64>, MethodError> {
    let n = (kernel.len() as f64).sqrt() as usize;
    let k = residual.len() / n.max(1);
    let inv = 1.0 / lmbda;
    let mut a: Vec<f64> = kernel.iter().map(|&v| inv * v).collect();
    for i in 0..n {
        a[i * n + i] += 1.0;
    }
    let mut x = residual.to_vec();
    if !cholesky_solve(&mut a, n, &mut x, k) {
        return Err(MethodError::NotPositiveDefinite {
            what: "ProKeR's K/λ + I",
        });
    }
    Ok(x)
}

/// `base + kernel · coefficients` (`rows × K`): `kernel` is `rows × n`, `coefficients` `n × K`.
fn add_kernel_term(base: &mut [f64], kernel: &[f64], coefficients: &[f64], k: usize) {
    let n = coefficients.len() / k.max(1);
    let rows = base.len() / k.max(1);
    let mut ct = vec![0f64; coefficients.len()];
    for i in 0..n {
        for c in 0..k {
            ct[c * n + i] = coefficients[i * k + c];
        }
    }
    let mut term = vec![0f64; rows * k];
    gemm_f64_abt(kernel, &ct, &mut term, rows, n, k);
    base.iter_mut().zip(&term).for_each(|(b, t)| *b += t);
}

/// Top-1 accuracy in percent of f64 logits (`utils.py` `cls_acc`; the first maximum on ties).
fn accuracy(logits: &[f64], labels: &[usize], k: usize) -> f64 {
    let hits = (logits.chunks(k.max(1)).zip(labels))
        .filter(|(row, &y)| {
            let best = (0..row.len()).fold(0, |b, j| if row[j] > row[b] { j } else { b });
            best == y
        })
        .count();
    100.0 * hits as f64 / labels.len() as f64
}

/// The validation search: every `(β, λ)` of the grid, β outer.
#[derive(Debug, Clone, PartialEq)]
pub struct Search {
    /// Validation accuracy (percent) of each grid point, β-major.
    pub accuracies: Vec<f64>,
    /// The first point strictly better than every earlier one, starting from 0% as the authors
    /// do: `(β, λ, accuracy)`; `None` when no point classifies a validation image right.
    pub best: Option<(f64, f64, f64)>,
}

/// Searches β and λ on the validation set (`trainers/proker.py`'s loop).
pub fn search(
    support: &Support,
    text: &[f64],
    val: &Matrix,
    labels: &[usize],
    (betas, lmbdas): (&[f64], &[f64]),
    progress: &mut dyn FnMut(Progress),
) -> Result<Search, MethodError> {
    let k = text.len() / support.dim.max(1);
    let r = residual(support, text);
    let v = normalized_f64(val);
    let zero_shot = products(&v, text, support.dim);
    let (a_ss, a_vs) = (
        products(&support.keys, &support.keys, support.dim),
        products(&v, &support.keys, support.dim),
    );
    let mut out = Search {
        accuracies: Vec::with_capacity(betas.len() * lmbdas.len()),
        best: None,
    };
    for (bi, &beta) in betas.iter().enumerate() {
        let (k_ss, k_vs) = (rbf(&a_ss, beta), rbf(&a_vs, beta));
        for &lmbda in lmbdas {
            let coef = coefficients(&k_ss, &r, lmbda)?;
            let mut logits = zero_shot.clone();
            add_kernel_term(&mut logits, &k_vs, &coef, k);
            let acc = accuracy(&logits, labels, k);
            out.accuracies.push(acc);
            if acc > out.best.map_or(0.0, |b| b.2) {
                out.best = Some((beta, lmbda, acc));
            }
        }
        progress(Progress::Search {
            done: bi + 1,
            total: betas.len(),
        });
    }
    Ok(out)
}

/// The head for `(β, λ)`: the support set and its solved coefficients.
pub fn solve(
    task: &FewShotTask,
    support: &Support,
    beta: f64,
    lmbda: f64,
) -> Result<ProkerHead, MethodError> {
    let text: Vec<f64> = task.text.weights.data.iter().map(|&v| v as f64).collect();
    let kernel = rbf(
        &products(&support.keys, &support.keys, support.dim),
        beta,
    );
    let coef = coefficients(&kernel, &residual(support, &text), lmbda)?;
    let f32s = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
    let (n, k) = (support.rows(), task.classes());
    let matrix = |rows, cols, v: &[f64]| {
        Matrix::from_vec(rows, cols, f32s(v)).ok_or(MethodError::Empty {
            what: "ProKeR's support set",
        })
    };
    Ok(ProkerHead {
        classes: task.text.weights.clone(),
        keys: matrix(n, support.dim, &support.keys)?,
        coefficients: matrix(n, k, &coef)?,
        beta: beta as f32,
    })
}

/// ProKeR on the task: β and λ chosen on validation when there is a validation set, the
/// authors' validation-free values (or the user's) otherwise.
pub fn fit(
    task: &FewShotTask,
    opts: &ProkerOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    opts.check()?;
    let support = Support::of(task)?;
    let (free_beta, free_lmbda) = without_validation(task.shots());
    let free = (
        opts.beta.unwrap_or(free_beta),
        opts.lmbda.unwrap_or(free_lmbda),
    );
    let (beta, lmbda) = if task.val.labels.is_empty() {
        free
    } else {
        let text: Vec<f64> = task.text.weights.data.iter().map(|&v| v as f64).collect();
        let (betas, lmbdas) = opts.candidates();
        let found = search(
            &support,
            &text,
            &task.val.features,
            &task.val.labels,
            (&betas, &lmbdas),
            progress,
        )?;
        // The authors' loop would leave its choice undefined; the validation-free values stand in.
        found.best.map_or(free, |(b, l, _)| (b, l))
    };
    let head = solve(task, &support, beta, lmbda)?;
    Ok(Fitted {
        head: Head::new(head),
        chosen: vec![
            ("beta".to_string(), beta.to_string()),
            ("lmbda".to_string(), lmbda.to_string()),
        ],
        losses: Vec::new(),
    })
}

/// A ProKeR head: the zero-shot classifier plus the kernel term over the support set.
#[derive(Debug, Clone, PartialEq)]
pub struct ProkerHead {
    /// `K × D`, the unit text classifier.
    pub classes: Matrix,
    /// `n × D`, the normalised support features.
    pub keys: Matrix,
    /// `n × K`, the solved coefficients `A`.
    pub coefficients: Matrix,
    pub beta: f32,
}

/// Test rows scored at a time: bounds the `rows × n` kernel block in memory.
const LOGIT_ROWS: usize = 1024;

impl ProkerHead {
    /// `x̂ Wᵀ + exp(−β (1 − x̂ Sᵀ)) A`, `x̂` the normalised features; computed in f64 from the
    /// stored f32 values, returned as f32.
    pub fn logits(&self, x: &Matrix) -> Matrix {
        let (k, d) = (self.classes.rows, self.classes.cols);
        let wide = |m: &Matrix| m.data.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let (classes, keys, coef) = (
            wide(&self.classes),
            wide(&self.keys),
            wide(&self.coefficients),
        );
        let mut out = Matrix::zeros(x.rows, k);
        for start in (0..x.rows).step_by(LOGIT_ROWS) {
            let rows = LOGIT_ROWS.min(x.rows - start);
            let idx: Vec<usize> = (start..start + rows).collect();
            let f = normalized_f64(&x.gather_rows(&idx));
            let mut logits = products(&f, &classes, d);
            let kernel = rbf(&products(&f, &keys, d), self.beta as f64);
            add_kernel_term(&mut logits, &kernel, &coef, k);
            out.data[start * k..(start + rows) * k]
                .iter_mut()
                .zip(&logits)
                .for_each(|(o, &v)| *o = v as f32);
        }
        out
    }
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "proker",
    title: "ProKeR",
    paper: "Bendou et al., CVPR 2025",
    code: "ProKeR's release (`trainers/proker.py`; mirrored in omarnust/BReg-Adapter)",
    colour: (117, 107, 177),
    variant_colours: &[],
    reported_as: Some("ProKeR"),
    without_validation: "the authors' validation-free β, λ for the shot count (`hyperparameters.json`: 1 shot β 3, λ 0.05; 2: 2.6, 0.05; 4: 1.5, 0.05; 8: 1.66, 0.07; 16: 1.7, 0.1)",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.5, 1.0),
        flip: true,
        source: "ProKeR `main.py`/`utils.py`: Tip-Adapter's transform, 10 augmented passes (`--augment-epoch`), every view a support sample",
    },
    needs: Needs::Features,
    options: &["beta", "lmbda"],
    configure,
    head: &CODEC,
    new_classes: crate::methods::NewClasses::No(
        "its kernel regression predicts residuals of the training classes' one-hot labels, and has none for a class it never saw",
    ),
};

/// The protocol's ProKeR: the authors' grid for the dataset, the user's β and λ on top.
fn configure(o: &MethodOverrides, dataset: &str, _seed: u64) -> Method {
    Method::new(ProkerOptions {
        beta: o.beta.map(f64::from),
        lmbda: o.lmbda.map(f64::from),
        ..ProkerOptions::for_dataset(dataset)
    })
}

impl FewShotMethod for ProkerOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        let given = |v: Option<f64>| v.map_or("grid".to_string(), |v| v.to_string());
        let span = |s: Span| format!("[{}, {}, {}]", s.lo, s.hi, s.steps);
        format!(
            "beta={} lmbda={} beta_grid={} lmbda_grid={}",
            given(self.beta),
            given(self.lmbda),
            span(self.beta_grid),
            span(self.lmbda_grid)
        )
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }
}

/// Tensors: `classes` (K×D), `keys` (n×D), `coefficients` (n×K), `beta`.
pub static CODEC: HeadCodec = HeadCodec {
    kind: "proker",
    anchor: ("classes", "K × D, the unit text classifier"),
    input: FeatureSpace::Projected,
    read: |r, classes| {
        let (k, d) = (classes.rows, classes.cols);
        let keys = r.matrix("keys", None, Some(d), "n × D normalised support features")?;
        Ok(Box::new(ProkerHead {
            coefficients: r.matrix(
                "coefficients",
                Some(keys.rows),
                Some(k),
                "n × K, one row per key",
            )?,
            keys,
            beta: r.scalar("beta", "the RBF kernel width")?,
            classes,
        }))
    },
};

impl HeadModel for ProkerHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        ProkerHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.classes.cols
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("classes", &self.classes);
        w.matrix("keys", &self.keys);
        w.matrix("coefficients", &self.coefficients);
        w.scalar("beta", self.beta);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_is_torchs_with_exact_ends() {
        assert_eq!(linspace(0.5, 3.0, 6), [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]);
        let v = linspace(0.001, 1.0, 10);
        assert_eq!((v[0], v[9]), (0.001, 1.0));
        assert_eq!(linspace(2.0, 5.0, 1), [2.0]);
        assert!(linspace(2.0, 5.0, 0).is_empty());
    }

    #[test]
    fn validation_free_values_by_shot_count() {
        assert_eq!(without_validation(1), (3.0, 0.05));
        assert_eq!(without_validation(3), (2.6, 0.05));
        assert_eq!(without_validation(8), (1.66, 0.07));
        assert_eq!(without_validation(32), (1.7, 0.1));
        assert_eq!(without_validation(0), (3.0, 0.05));
    }

    /// Two support points, worked by hand: K = [[1, e], [e, 1]] with e = exp(−β(1 − c)); the
    /// solution of (K/λ + I) A = R checked by multiplying back.
    #[test]
    fn coefficients_solve_the_regularised_system() {
        let (beta, lmbda, c) = (2.0, 0.5, 0.6f64);
        let e = (-beta * (1.0 - c)).exp();
        let kernel = rbf(&[1.0, c, c, 1.0], beta);
        assert_eq!(kernel, [1.0, e, e, 1.0]);
        let r = [0.3, -0.2, 0.1, 0.7];
        let a = coefficients(&kernel, &r, lmbda).unwrap();
        for i in 0..2 {
            for col in 0..2 {
                let back: f64 = (0..2)
                    .map(|j| (kernel[i * 2 + j] / lmbda + f64::from(i == j)) * a[j * 2 + col])
                    .sum();
                assert!((back - r[i * 2 + col]).abs() < 1e-14);
            }
        }
    }
}
