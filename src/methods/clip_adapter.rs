//! CLIP-Adapter (Gao et al. 2021): a bottleneck MLP on the frozen image feature and/or on the
//! frozen class embeddings, mixed back with a residual ratio, then CLIP's cosine classifier.
//!
//! - visual: `f* = α·A_v(f) + (1 − α)·f`; text: `W* = β·A_t(W) + (1 − β)·W` (the paper's
//!   convention: the ratio weighs the *adapted* feature, so α = β = 0 is zero-shot CLIP);
//! - `A(x) = ReLU(x W1) W2` ([`Form::Paper`]) or `ReLU(ReLU(x W1) W2)` ([`Form::Official`],
//!   the released `clip_adapter.py`, default); no biases, hidden width `D / reduction`;
//! - the adapter is applied to the raw projected feature and the mix is normalised afterwards,
//!   as `CustomCLIP.forward` does;
//! - ratios fixed, learnable scalars, or predicted by [`super::hyper_network`];
//! - SGD (momentum, weight decay) with CoOp's warm-up + cosine schedule, batch 32, epochs by
//!   shot count, the last incomplete batch dropped as Dassl's loader does.
//!
//! Forward and backward are written by hand on f32 slices (a few GEMMs per step); the tests
//! check every gradient against central finite differences.

use super::head::{
    head_boilerplate, FeatureSpace, HeadCodec, HeadError, HeadModel, HeadReader, HeadWriter,
};
use super::hyper_network::{row_mean, with_summary, RatioCache, RatioNet};
use super::linalg::{
    gemm, map_rows, normalize_row, normalize_row_backward, normalize_rows,
    scaled_cross_entropy_backward, seeded_rng, FrozenMatrix, Matrix,
};
use super::method::method_boilerplate;
use super::epochs::{epochs_for_shots, Batching, EpochLoop};
use super::optim::{Sgd, SgdStep, WarmupCosine};
use super::{
    eval, Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method,
    MethodCard, MethodError, MethodOverrides, Needs, Progress, TextClassifier,
};
use crate::kernels::matmul::FEW_ROWS;
use crate::kernels::sgd::GradientProduct;
use crate::kernels::vmath::dot_diff;
use crate::rng::SplitMix64;

/// Which features get an adapter (the paper's three variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    Visual,
    Text,
    Both,
}

/// The adapter's layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `Linear → ReLU → Linear`, as the paper writes it.
    Paper,
    /// `Linear → ReLU → Linear → ReLU`, as the released code builds it.
    Official,
}

/// How the residual ratios are set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatioMode {
    /// The given α and β, not trained.
    Fixed,
    /// One trainable scalar per branch, starting at α / β.
    Learnable,
    /// Predicted by the hyper-network `Q(f, W)`, starting near α / β.
    HyperNetwork,
}

macro_rules! parse_enum {
    ($t:ty, $what:literal, $($s:literal => $v:expr),+) => {
        impl std::str::FromStr for $t {
            type Err = crate::unknown_name::UnknownName;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok($v),)+
                    _ => Err(crate::unknown_name::UnknownName::new($what, s, &[$($s),+])),
                }
            }
        }
        impl $t {
            pub fn as_str(&self) -> &'static str {
                $(if *self == $v { return $s; })+
                unreachable!()
            }
        }
    };
}
parse_enum!(Branch, "adapter branch", "visual" => Branch::Visual, "text" => Branch::Text, "both" => Branch::Both);
parse_enum!(Form, "adapter form", "official" => Form::Official, "paper" => Form::Paper);
parse_enum!(RatioMode, "ratio mode", "fixed" => RatioMode::Fixed, "learnable" => RatioMode::Learnable, "hyper" => RatioMode::HyperNetwork);

/// Every option of CLIP-Adapter training; defaults in [`Default`] and docs/methods.md.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterOptions {
    pub branch: Branch,
    pub form: Form,
    /// Hidden width is `D / reduction` (the paper's best: 4).
    pub reduction: usize,
    /// Visual ratio α (weight of the adapted image feature).
    pub alpha: f32,
    /// Text ratio β (weight of the adapted class embedding).
    pub beta: f32,
    pub ratio: RatioMode,
    /// Hidden width of the hyper-network.
    pub hyper_hidden: usize,
    pub lr: f32,
    /// `None`: by shot count as CoOp (50 for 1 shot, 100 for 2-4, 200 for 8-16).
    pub epochs: Option<usize>,
    pub batch_size: usize,
    pub momentum: f32,
    pub weight_decay: f32,
    pub warmup_epochs: usize,
    pub warmup_lr: f32,
    /// Seeds the weight initialisation and the batch order.
    pub seed: u64,
    /// Ratio candidates tried on the validation set (empty: no search). Each candidate trains
    /// a model; the best validation accuracy wins, the first on ties.
    pub search: Vec<f32>,
}

impl Default for AdapterOptions {
    fn default() -> Self {
        AdapterOptions {
            branch: Branch::Visual,
            form: Form::Official,
            reduction: 4,
            alpha: 0.2,
            beta: 0.2,
            ratio: RatioMode::Fixed,
            hyper_hidden: 32,
            lr: 0.002,
            epochs: None,
            batch_size: 32,
            momentum: 0.9,
            weight_decay: 5e-4,
            warmup_epochs: 1,
            warmup_lr: 1e-5,
            seed: 1,
            search: Vec::new(),
        }
    }
}

/// The bottleneck `A`: `W1` is `D × H` and `W2` is `H × D` (the transposes of PyTorch's
/// `nn.Linear` weights, so that `x W1` is a plain row-major product).
#[derive(Debug, Clone, PartialEq)]
pub struct Bottleneck {
    pub dim: usize,
    pub hidden: usize,
    pub w1: Vec<f32>,
    pub w2: Vec<f32>,
    pub relu_out: bool,
}

#[derive(Debug, Clone)]
struct BottleneckCache {
    /// `ReLU(x W1)`, n × H.
    a1: Vec<f32>,
    /// `A(x)`, n × D.
    out: Matrix,
}

impl Bottleneck {
    /// PyTorch's default `nn.Linear` initialisation, uniform ±1/√fan_in.
    pub fn new(dim: usize, hidden: usize, form: Form, rng: &mut SplitMix64) -> Self {
        let w1 = rng.uniform_vec(dim * hidden, 1.0 / (dim as f32).sqrt());
        let w2 = rng.uniform_vec(hidden * dim, 1.0 / (hidden as f32).sqrt());
        Bottleneck {
            dim,
            hidden,
            w1,
            w2,
            relu_out: form == Form::Official,
        }
    }

    /// From PyTorch weights: `fc[0].weight` (H × D) and `fc[2].weight` (D × H).
    pub fn from_torch(first: &Matrix, second: &Matrix, form: Form) -> Self {
        Bottleneck {
            dim: first.cols,
            hidden: first.rows,
            w1: first.transposed().data,
            w2: second.transposed().data,
            relu_out: form == Form::Official,
        }
    }

    fn zeros_like(&self) -> Self {
        Bottleneck {
            w1: vec![0.0; self.w1.len()],
            w2: vec![0.0; self.w2.len()],
            ..self.clone()
        }
    }

    fn forward(&self, x: &Matrix) -> BottleneckCache {
        let (n, d, h) = (x.rows, self.dim, self.hidden);
        let mut a1 = vec![0f32; n * h];
        gemm(&x.data, false, &self.w1, false, &mut a1, n, d, h, false);
        relu(&mut a1, h);
        let mut out = Matrix::zeros(n, d);
        gemm(&a1, false, &self.w2, false, &mut out.data, n, h, d, false);
        if self.relu_out {
            relu(&mut out.data, d);
        }
        BottleneckCache { a1, out }
    }

    /// Writes `∂L/∂W1`, `∂L/∂W2` into `grad` from their [`Bottleneck::backward_parts`] (overwriting: each weight's
    /// gradient is one product, so a training step never clears the 2·D·H gradient first).
    fn backward(
        &self,
        x: &Matrix,
        cache: &BottleneckCache,
        parts: WeightGradParts,
        grad: &mut Bottleneck,
    ) {
        let (n, d, h) = (x.rows, self.dim, self.hidden);
        gemm(&cache.a1, true, &parts.d_out, false, &mut grad.w2, h, n, d, false);
        gemm(&x.data, true, &parts.d_a1, false, &mut grad.w1, d, n, h, false);
    }

    /// The backward up to the weight gradients `∂L/∂W2 = a1ᵀ · d_out` and
    /// `∂L/∂W1 = xᵀ · d_a1`, given `∂L/∂A(x)`.
    fn backward_parts(&self, cache: &BottleneckCache, mut d_out: Vec<f32>) -> WeightGradParts {
        let (n, d, h) = (cache.out.rows, self.dim, self.hidden);
        if self.relu_out {
            relu_backward(&mut d_out, &cache.out.data, d);
        }
        let mut d_a1 = vec![0f32; n * h];
        gemm(&d_out, false, &self.w2, true, &mut d_a1, n, d, h, false);
        relu_backward(&mut d_a1, &cache.a1, h);
        WeightGradParts { d_out, d_a1 }
    }

    /// One SGD step of both weights from `parts`, each weight's gradient made a tile at a time
    /// and applied while the tile is in registers (`kernels::sgd`): the gradient is never
    /// stored, and reading the weights and momenta overlaps the next tiles' FMAs. `first` is
    /// W1's index in the optimiser's parameters, W2's the next. The products are the ones
    /// [`Bottleneck::backward`] takes for a batch of at most `FEW_ROWS` (the broadcast tiles),
    /// so the weights get the same bits. Above `FEW_ROWS` rows (a text branch's classes) the
    /// gradients are stored, as `backward` makes them (its products leave the broadcast tiles
    /// there), then applied.
    fn sgd_step(
        &mut self,
        x: &Matrix,
        cache: &BottleneckCache,
        parts: WeightGradParts,
        step: &mut SgdStep,
        first: usize,
    ) {
        let (n, d, h) = (x.rows, self.dim, self.hidden);
        if n > FEW_ROWS {
            let mut grad = self.zeros_like();
            self.backward(x, cache, parts, &mut grad);
            step.update(first, 0, &mut self.w1, &grad.w1);
            step.update(first + 1, 0, &mut self.w2, &grad.w2);
            return;
        }
        weight_step(&mut self.w2, &cache.a1, &parts.d_out, (n, h, d), step, first + 1);
        weight_step(&mut self.w1, &x.data, &parts.d_a1, (n, d, h), step, first);
    }
}

/// What a bottleneck's weight gradients are made of ([`Bottleneck::backward_parts`]): `∂L/∂A(x)`
/// and `∂L/∂(ReLU(x W1))`, each behind its ReLU's mask.
struct WeightGradParts {
    d_out: Vec<f32>,
    d_a1: Vec<f32>,
}

/// SGD on `w` (`rows × cols`) with the gradient `aᵀ · b` (`a` `n × rows`, `b` `n × cols`,
/// `n` at most `FEW_ROWS`), made and applied a tile at a time.
fn weight_step(
    w: &mut [f32],
    a: &[f32],
    b: &[f32],
    (n, rows, cols): (usize, usize, usize),
    step: &mut SgdStep,
    param: usize,
) {
    let product = GradientProduct {
        a,
        a_strides: (1, rows),
        b,
        rows,
        k: n,
        cols,
    };
    step.update_product(param, w, product)
}

/// `max(x, 0)` in place, over rows of `cols`.
fn relu(x: &mut [f32], cols: usize) {
    map_rows(x, cols, |_, r| r.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// Zeroes the gradient `g` where the ReLU's output `out` is not positive. Written as a select
/// rather than a conditional store, so that it compiles to vector blends.
fn relu_backward(g: &mut [f32], out: &[f32], cols: usize) {
    map_rows(g, cols, |i, g| {
        let out = &out[i * cols..(i + 1) * cols];
        g.iter_mut()
            .zip(out)
            .for_each(|(g, &o)| *g = if o <= 0.0 { 0.0 } else { *g });
    });
}

/// A residual ratio.
#[derive(Debug, Clone, PartialEq)]
pub enum Ratio {
    Fixed(f32),
    /// A trainable scalar (one-element vector, so the optimiser sees a slice).
    Scalar(Vec<f32>),
    Hyper(RatioNet),
}

impl Ratio {
    fn new(mode: RatioMode, value: f32, input: usize, hidden: usize, rng: &mut SplitMix64) -> Self {
        match mode {
            RatioMode::Fixed => Ratio::Fixed(value),
            RatioMode::Learnable => Ratio::Scalar(vec![value]),
            RatioMode::HyperNetwork => Ratio::Hyper(RatioNet::new(input, hidden, value, rng)),
        }
    }

    fn zeros_like(&self) -> Self {
        match self {
            Ratio::Fixed(_) => Ratio::Fixed(0.0),
            Ratio::Scalar(_) => Ratio::Scalar(vec![0.0]),
            Ratio::Hyper(n) => Ratio::Hyper(n.zeros_like()),
        }
    }

    fn params_mut(&mut self) -> Vec<&mut [f32]> {
        match self {
            Ratio::Fixed(_) => Vec::new(),
            Ratio::Scalar(v) => vec![v.as_mut_slice()],
            Ratio::Hyper(n) => n.params_mut(),
        }
    }

    /// One ratio per row of `input`; `input` is only read by the hyper-network.
    fn values(
        &self,
        rows: usize,
        input: impl FnOnce() -> Matrix,
    ) -> (Vec<f32>, Option<(Matrix, RatioCache)>) {
        match self {
            Ratio::Fixed(v) => (vec![*v; rows], None),
            Ratio::Scalar(v) => (vec![v[0]; rows], None),
            Ratio::Hyper(net) => {
                let x = input();
                let c = net.forward(&x);
                (c.ratios.clone(), Some((x, c)))
            }
        }
    }

    fn backward(&self, hyper: Option<&(Matrix, RatioCache)>, d_ratio: &[f32], grad: &mut Ratio) {
        match (self, grad) {
            (Ratio::Scalar(_), Ratio::Scalar(g)) => g[0] += d_ratio.iter().sum::<f32>(),
            (Ratio::Hyper(net), Ratio::Hyper(g)) => {
                if let Some((x, c)) = hyper {
                    net.backward(x, c, d_ratio, g)
                }
            }
            _ => {}
        }
    }
}

/// The trainable part of CLIP-Adapter (and, with the same shape, its gradient).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterParams {
    pub visual: Option<Bottleneck>,
    pub text: Option<Bottleneck>,
    pub alpha: Ratio,
    pub beta: Ratio,
}

impl AdapterParams {
    pub fn zeros_like(&self) -> Self {
        AdapterParams {
            visual: self.visual.as_ref().map(Bottleneck::zeros_like),
            text: self.text.as_ref().map(Bottleneck::zeros_like),
            alpha: self.alpha.zeros_like(),
            beta: self.beta.zeros_like(),
        }
    }

    /// Every trainable slice, in a fixed order (the optimiser relies on it).
    pub fn params_mut(&mut self) -> Vec<&mut [f32]> {
        let mut out: Vec<&mut [f32]> = Vec::new();
        for b in [&mut self.visual, &mut self.text].into_iter().flatten() {
            out.push(&mut b.w1);
            out.push(&mut b.w2);
        }
        out.extend(self.alpha.params_mut());
        out.extend(self.beta.params_mut());
        out
    }

    /// Clears the gradients that [`AdapterModel::backward`] accumulates (the ratios'; the
    /// bottlenecks' are overwritten).
    fn clear_ratio_grads(&mut self) {
        let mut ratios = self.alpha.params_mut();
        ratios.extend(self.beta.params_mut());
        ratios.into_iter().for_each(|p| p.fill(0.0));
    }
}

/// A CLIP-Adapter head: the trained adapters and the frozen zero-shot classifier.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterModel {
    pub params: AdapterParams,
    /// Normalised class embeddings `W` (K × D).
    pub classes: Matrix,
    pub logit_scale: f32,
}

/// One branch's intermediates: the adapter's, the ratios, and the hyper-network's input and
/// intermediates when it predicts the ratios.
type BranchCache = (BottleneckCache, Vec<f32>, Option<(Matrix, RatioCache)>);

/// Forward-pass intermediates for one batch.
struct Forward {
    visual: Option<BranchCache>,
    text: Option<BranchCache>,
    /// Normalised `f*` and its pre-normalisation norms.
    f: Matrix,
    f_norms: Vec<f32>,
    /// Normalised `W*` and norms, when the text adapter is on (otherwise the frozen
    /// normalised classifier of [`FrozenText`] is used).
    w: Option<(Matrix, Vec<f32>)>,
    /// `f̂ ŵᵀ`: the logits before the logit scale, which the loss applies.
    cosines: Matrix,
}

/// The normalised class embeddings, computed (and packed for the products) once per training
/// run or prediction when the text side is frozen (re-normalising K×D every step would cost as
/// much as the adapter).
struct FrozenText(Option<FrozenMatrix>);

/// `r_i·a_i + (1 − r_i)·x_i` row-wise.
fn mix(adapted: &Matrix, x: &Matrix, ratios: &[f32]) -> Matrix {
    let mut out = Matrix::zeros(x.rows, x.cols);
    map_rows(&mut out.data, x.cols, |i, o| {
        mix_row(o, adapted.row(i), x.row(i), ratios[i])
    });
    out
}

/// One row of [`mix`].
fn mix_row(out: &mut [f32], adapted: &[f32], x: &[f32], r: f32) {
    for ((o, &a), &v) in out.iter_mut().zip(adapted).zip(x) {
        *o = r * a + (1.0 - r) * v;
    }
}

/// [`mix`], each row then scaled to unit norm as [`normalize_rows`] scales it (the same bits),
/// in one pass over the row while it is in cache; returns the norms too.
fn mix_normalized(adapted: &Matrix, x: &Matrix, ratios: &[f32]) -> (Matrix, Vec<f32>) {
    let mut out = Matrix::zeros(x.rows, x.cols);
    let norms = map_rows(&mut out.data, x.cols, |i, o| {
        mix_row(o, adapted.row(i), x.row(i), ratios[i]);
        normalize_row(o)
    });
    (out, norms)
}

/// Back through [`mix_normalized`] given `∂L/∂f̂` (`du`), `f̂` its output and `norms`, one pass
/// over each row: with `g` the gradient at the mix (through the normalisation),
/// `∂L/∂a_i = r_i·g_i` and `∂L/∂r_i = g_i·(a_i − x_i)`.
fn mix_normalized_backward(
    unit: &Matrix,
    norms: &[f32],
    adapted: &Matrix,
    x: &Matrix,
    ratios: &[f32],
    du: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let d = x.cols;
    let mut d_adapted = vec![0f32; du.len()];
    let d_ratio = map_rows(&mut d_adapted, d, |i, out| {
        normalize_row_backward(unit.row(i), norms[i], &du[i * d..(i + 1) * d], out);
        let d_ratio = dot_diff(out, adapted.row(i), x.row(i));
        let r = ratios[i];
        out.iter_mut().for_each(|g| *g *= r);
        d_ratio
    });
    (d_adapted, d_ratio)
}

impl AdapterModel {
    /// A fresh model for `task` with ratios α, β.
    pub fn new(
        text: &TextClassifier,
        opts: &AdapterOptions,
        alpha: f32,
        beta: f32,
        rng: &mut SplitMix64,
    ) -> Self {
        let d = text.weights.cols;
        let hidden = (d / opts.reduction.max(1)).max(1);
        let visual = matches!(opts.branch, Branch::Visual | Branch::Both)
            .then(|| Bottleneck::new(d, hidden, opts.form, rng));
        let text_b = matches!(opts.branch, Branch::Text | Branch::Both)
            .then(|| Bottleneck::new(d, hidden, opts.form, rng));
        let alpha = Ratio::new(opts.ratio, alpha, 2 * d, opts.hyper_hidden, rng);
        let beta = Ratio::new(opts.ratio, beta, 2 * d, opts.hyper_hidden, rng);
        AdapterModel {
            params: AdapterParams {
                visual,
                text: text_b,
                alpha,
                beta,
            },
            classes: text.weights.clone(),
            logit_scale: text.logit_scale,
        }
    }

    /// The frozen classifier for training (`packed`: both products on panels) or for prediction
    /// (unpacked: the product of `zero_shot::cosine_logits`, so that ratio 0 gives the zero-shot
    /// logits bit for bit).
    fn frozen_text(&self, packed: bool) -> FrozenText {
        FrozenText(self.params.text.is_none().then(|| {
            let w = self.classes.normalized();
            match packed {
                true => FrozenMatrix::new(w),
                false => FrozenMatrix::unpacked(w),
            }
        }))
    }

    /// One adapter branch on `input` (the images' features, or the class embeddings): the
    /// bottleneck's output and intermediates, and each row's residual ratio.
    fn branch(&self, b: &Bottleneck, ratio: &Ratio, input: &Matrix) -> BranchCache {
        let cache = b.forward(input);
        let (ratios, hyper) = ratio.values(input.rows, || {
            with_summary(&input.normalized(), &row_mean(&self.classes.normalized()))
        });
        (cache, ratios, hyper)
    }

    /// The adapted image features `α·A_v(f) + (1 − α)·f` (N×D, before the normalisation the
    /// classifier applies), computed as the logits compute them; `None` for a head without a
    /// visual adapter.
    pub fn adapted_features(&self, x: &Matrix) -> Option<Matrix> {
        let b = self.params.visual.as_ref()?;
        let (cache, ratios, _) = self.branch(b, &self.params.alpha, x);
        Some(mix(&cache.out, x, &ratios))
    }

    fn forward(&self, x: &Matrix, frozen: &FrozenText) -> Forward {
        // The same operations, in the same order, as `zero_shot::cosine_logits` (with the
        // unpacked classifier of prediction; training's packed one sums in another order).
        let ((f, f_norms), visual) = match &self.params.visual {
            None => {
                let mut f = x.clone();
                let norms = normalize_rows(&mut f.data, f.cols);
                ((f, norms), None)
            }
            Some(b) => {
                let branch = self.branch(b, &self.params.alpha, x);
                (mix_normalized(&branch.0.out, x, &branch.1), Some(branch))
            }
        };
        let t = &self.classes;
        let (w, text) = match &self.params.text {
            None => (None, None),
            Some(b) => {
                let branch = self.branch(b, &self.params.beta, t);
                let w = mix_normalized(&branch.0.out, t, &branch.1);
                (Some(w), Some(branch))
            }
        };
        let cosines = match (&w, &frozen.0) {
            (Some((w, _)), _) => f.matmul(false, w, true),
            (None, Some(w)) => Matrix {
                rows: x.rows,
                cols: t.rows,
                data: w.times_transposed(&f.data, f.rows),
            },
            (None, None) => unreachable!("FrozenText is built for a model without a text adapter"),
        };
        Forward {
            visual,
            text,
            f,
            f_norms,
            w,
            cosines,
        }
    }

    /// Mean cross-entropy of the scaled logits; turns the forward's cosines into the loss's
    /// gradient with respect to them (the scale folded in).
    fn loss(&self, fw: &mut Forward, labels: &[usize]) -> (f32, Vec<f32>) {
        let mut d_cosines = std::mem::take(&mut fw.cosines.data);
        let loss = scaled_cross_entropy_backward(
            &mut d_cosines,
            labels,
            self.classes.rows,
            self.logit_scale,
        );
        (loss, d_cosines)
    }

    /// Gradients of the loss given `∂L/∂(f̂ ŵᵀ)` (B × K): the bottlenecks' written into `grad`,
    /// the ratios' added to it.
    fn backward(
        &self,
        x: &Matrix,
        fw: &Forward,
        frozen: &FrozenText,
        d_cosines: &[f32],
        grad: &mut AdapterParams,
    ) {
        let [visual, text] = self.backward_parts(x, fw, frozen, d_cosines, grad);
        if let (Some(bn), Some(parts), Some((cache, ..)), Some(g)) =
            (&self.params.visual, visual, &fw.visual, grad.visual.as_mut())
        {
            bn.backward(x, cache, parts, g);
        }
        if let (Some(bn), Some(parts), Some((cache, ..)), Some(g)) =
            (&self.params.text, text, &fw.text, grad.text.as_mut())
        {
            bn.backward(&self.classes, cache, parts, g);
        }
    }

    /// [`AdapterModel::backward`] then one SGD step, the bottlenecks' weight gradients made
    /// and applied a block at a time ([`Bottleneck::sgd_step`]) instead of stored: for batches
    /// of at most `FEW_ROWS`, whose weight gradients go through the broadcast tiles either way,
    /// so the parameters get the same bits as `backward` then [`Sgd::step`].
    fn backward_sgd(
        &mut self,
        x: &Matrix,
        fw: &Forward,
        frozen: &FrozenText,
        d_cosines: &[f32],
        grad: &mut AdapterParams,
        step: &mut SgdStep,
    ) {
        let [visual, text] = self.backward_parts(x, fw, frozen, d_cosines, grad);
        let AdapterModel {
            params, classes, ..
        } = self;
        // The optimiser's order ([`AdapterParams::params_mut`]): each bottleneck's W1 and W2,
        // then the ratios.
        let mut index = 0;
        let branches = [
            (params.visual.as_mut(), visual, &fw.visual, x),
            (params.text.as_mut(), text, &fw.text, &*classes),
        ];
        for (bn, parts, cache, input) in branches {
            let Some(bn) = bn else { continue };
            if let (Some(parts), Some((cache, ..))) = (parts, cache) {
                bn.sgd_step(input, cache, parts, step, index);
            }
            index += 2;
        }
        let mut ratios = params.alpha.params_mut();
        ratios.extend(params.beta.params_mut());
        let mut ratio_grads = grad.alpha.params_mut();
        ratio_grads.extend(grad.beta.params_mut());
        for (i, (p, g)) in ratios.into_iter().zip(ratio_grads).enumerate() {
            step.update(index + i, 0, p, g);
        }
    }

    /// The backward up to the bottlenecks' weight gradients (visual, text), the ratios'
    /// gradients added to `grad`.
    fn backward_parts(
        &self,
        x: &Matrix,
        fw: &Forward,
        frozen: &FrozenText,
        d_cosines: &[f32],
        grad: &mut AdapterParams,
    ) -> [Option<WeightGradParts>; 2] {
        let (b, k, d) = (x.rows, self.classes.rows, x.cols);
        let w = match (&fw.w, &frozen.0) {
            (Some((w, _)), _) => w,
            (None, Some(w)) => &w.matrix,
            (None, None) => return [None, None],
        };
        let mut parts = [None, None];
        if let (Some(bn), Some((cache, ratios, hyper))) = (&self.params.visual, &fw.visual) {
            let du = match &frozen.0 {
                Some(frozen) => frozen.times(d_cosines, b),
                None => {
                    let mut du = vec![0f32; b * d];
                    gemm(d_cosines, false, &w.data, false, &mut du, b, k, d, false);
                    du
                }
            };
            let (d_adapted, d_ratio) =
                mix_normalized_backward(&fw.f, &fw.f_norms, &cache.out, x, ratios, &du);
            parts[0] = Some(bn.backward_parts(cache, d_adapted));
            self.params
                .alpha
                .backward(hyper.as_ref(), &d_ratio, &mut grad.alpha);
        }
        if let (Some(bn), Some((cache, ratios, hyper)), Some((_, w_norms))) =
            (&self.params.text, &fw.text, &fw.w)
        {
            let mut dv = vec![0f32; k * d];
            gemm(d_cosines, true, &fw.f.data, false, &mut dv, k, b, d, false);
            let (d_adapted, d_ratio) =
                mix_normalized_backward(w, w_norms, &cache.out, &self.classes, ratios, &dv);
            parts[1] = Some(bn.backward_parts(cache, d_adapted));
            self.params
                .beta
                .backward(hyper.as_ref(), &d_ratio, &mut grad.beta);
        }
        parts
    }

    /// Mean cross-entropy on `(x, labels)` and its gradient.
    pub fn loss_and_grad(&self, x: &Matrix, labels: &[usize]) -> (f32, AdapterParams) {
        let frozen = self.frozen_text(true);
        let mut fw = self.forward(x, &frozen);
        let (loss, d_cosines) = self.loss(&mut fw, labels);
        let mut grad = self.params.zeros_like();
        self.backward(x, &fw, &frozen, &d_cosines, &mut grad);
        (loss, grad)
    }

    /// Logits for any number of images, in chunks to bound memory.
    pub fn logits(&self, x: &Matrix) -> Matrix {
        const CHUNK: usize = 1024;
        let mut out = Matrix::zeros(x.rows, self.classes.rows);
        let frozen = self.frozen_text(false);
        let mut start = 0;
        while start < x.rows {
            let end = (start + CHUNK).min(x.rows);
            let idx: Vec<usize> = (start..end).collect();
            let cosines = self.forward(&x.gather_rows(&idx), &frozen).cosines;
            // The same product then scale as `zero_shot::cosine_logits`.
            let logits = &mut out.data[start * out.cols..end * out.cols];
            for (l, c) in logits.iter_mut().zip(&cosines.data) {
                *l = c * self.logit_scale;
            }
            start = end;
        }
        out
    }
}

/// Trains `model` on the task's training views. `order(epoch)` gives the sample order of each
/// epoch (a seeded shuffle in [`fit`]; the parity test replays PyTorch's). Returns the mean
/// batch loss of each epoch.
pub fn train(
    task: &FewShotTask,
    opts: &AdapterOptions,
    epochs: usize,
    model: &mut AdapterModel,
    order: &mut dyn FnMut(usize) -> Vec<usize>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Vec<f32>, MethodError> {
    train_with(task, opts, epochs, model, order, progress, true)
}

/// [`train`], with `fuse_sgd`: whether each bottleneck weight gradient's tile is applied as it
/// is made, for batches of at most `FEW_ROWS` (whose stored gradients come from the same
/// broadcast tiles, so the bits are the same); otherwise every gradient is stored, then
/// [`Sgd::step`] (what the fused step is tested against, and larger batches).
fn train_with(
    task: &FewShotTask,
    opts: &AdapterOptions,
    epochs: usize,
    model: &mut AdapterModel,
    order: &mut dyn FnMut(usize) -> Vec<usize>,
    progress: &mut dyn FnMut(Progress),
    fuse_sgd: bool,
) -> Result<Vec<f32>, MethodError> {
    let views = task.training_views();
    let labels = &task.train.labels;
    let schedule = WarmupCosine {
        base_lr: opts.lr,
        epochs,
        warmup_epochs: opts.warmup_epochs,
        warmup_lr: opts.warmup_lr,
    };
    let mut sgd = Sgd::new(opts.momentum, opts.weight_decay);
    let mut grad = model.params.zeros_like();
    let lens: Vec<usize> = grad.params_mut().iter().map(|p| p.len()).collect();
    let frozen = model.frozen_text(true);
    let epoch_loop = EpochLoop {
        epochs,
        batching: Batching::DropLast {
            size: opts.batch_size,
        },
    };
    let mut step = |model: &mut AdapterModel, epoch: usize, batch: &[usize]| {
        let x = views[epoch % views.len()].gather_rows(batch);
        let y: Vec<usize> = batch.iter().map(|&i| labels[i]).collect();
        let mut fw = model.forward(&x, &frozen);
        let (loss, d_cosines) = model.loss(&mut fw, &y);
        grad.clear_ratio_grads();
        let lr = schedule.lr(epoch);
        // A separate SGD pass streamed 20 bytes a parameter through L3, 15–21 % of the step
        // on an Intel Xeon (Emerald Rapids); fused, the weights' reads overlap the FMAs.
        if fuse_sgd && x.rows <= FEW_ROWS {
            let mut step = sgd.begin(&lens, lr);
            model.backward_sgd(&x, &fw, &frozen, &d_cosines, &mut grad, &mut step);
        } else {
            model.backward(&x, &fw, &frozen, &d_cosines, &mut grad);
            let grads: Vec<&[f32]> = grad.params_mut().into_iter().map(|g| &*g).collect();
            sgd.step(&mut model.params.params_mut(), &grads, lr);
        }
        Ok(loss)
    };
    epoch_loop.run(model, labels.len(), order, &mut step, &mut |_, _| {}, progress)
}

/// Trains CLIP-Adapter, searching the ratio on validation when `opts.search` is not empty.
pub fn fit(
    task: &FewShotTask,
    opts: &AdapterOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    if opts.reduction == 0 || opts.reduction > task.dim() {
        return Err(MethodError::option(
            "reduction",
            opts.reduction,
            "must be between 1 and the feature width",
        ));
    }
    if opts.lr.is_nan() || opts.lr <= 0.0 {
        return Err(MethodError::option("lr", opts.lr, "must be positive"));
    }
    let epochs = opts.epochs.unwrap_or_else(|| epochs_for_shots(task.shots()));
    // Both branches share one searched value (the paper searches one ratio per dataset).
    let candidates: Vec<(f32, f32)> = if opts.search.is_empty() || task.val.labels.is_empty() {
        vec![(opts.alpha, opts.beta)]
    } else {
        opts.search
            .iter()
            .map(|&r| match opts.branch {
                Branch::Visual => (r, opts.beta),
                Branch::Text => (opts.alpha, r),
                Branch::Both => (r, r),
            })
            .collect()
    };
    // (validation accuracy, model, epoch losses, (α, β))
    type Candidate = (f32, AdapterModel, Vec<f32>, (f32, f32));
    let mut best: Option<Candidate> = None;
    for (i, &(alpha, beta)) in candidates.iter().enumerate() {
        let mut rng = seeded_rng(opts.seed);
        let mut model = AdapterModel::new(&task.text, opts, alpha, beta, &mut rng);
        let n = task.train.labels.len();
        let mut order = |_epoch: usize| rng.permutation(n);
        let losses = train(task, opts, epochs, &mut model, &mut order, progress)?;
        let val = eval::accuracy(&model.logits(&task.val.features), &task.val.labels);
        if candidates.len() > 1 {
            progress(Progress::Search {
                done: i + 1,
                total: candidates.len(),
            });
        }
        if best.as_ref().is_none_or(|b| val > b.0) {
            best = Some((val, model, losses, (alpha, beta)));
        }
    }
    let (_, model, losses, (alpha, beta)) = best.ok_or(MethodError::Empty {
        what: "the ratio search list",
    })?;
    let mut chosen = vec![("epochs".to_string(), epochs.to_string())];
    if candidates.len() > 1 {
        chosen.push(("alpha".into(), alpha.to_string()));
        chosen.push(("beta".into(), beta.to_string()));
    }
    Ok(Fitted {
        head: Head::new(model),
        chosen,
        losses,
    })
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "clip-adapter",
    title: "CLIP-Adapter",
    paper: "Gao et al., IJCV 2024 (arXiv 2021)",
    code: "gaopengcuhk/CLIP-Adapter (training as CoOp's Dassl trainer)",
    colour: (214, 39, 40),
    variant_colours: &[
        ("clip-adapter-text", (255, 127, 14)),
        ("clip-adapter-both", (148, 103, 189)),
    ],
    reported_as: Some("CLIP-Adapter"),
    without_validation: "α = 0.2 (`clip_adapter.py`'s constant), the last epoch; a ratio search is refused",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.08, 1.0),
        flip: true,
        source: "Dassl's `random_resized_crop` + `random_flip`, a fresh crop every epoch",
    },
    needs: Needs::Features,
    options: &[
        "branch",
        "form",
        "reduction",
        "ratio",
        "search",
        "alpha",
        "beta",
        "lr",
        "epochs",
        "batch-size",
    ],
    configure,
    head: &CODEC,
    new_classes: crate::methods::NewClasses::FromText,
};

/// The protocol's CLIP-Adapter: the defaults, CoOp's 50 epochs on ImageNet, the user's options.
fn configure(o: &MethodOverrides, dataset: &str, seed: u64) -> Method {
    let d = AdapterOptions::default();
    Method::new(AdapterOptions {
        branch: o.branch.unwrap_or(d.branch),
        form: o.form.unwrap_or(d.form),
        reduction: o.reduction.unwrap_or(d.reduction),
        alpha: o.alpha.unwrap_or(d.alpha),
        beta: o.beta.unwrap_or(d.beta),
        ratio: o.ratio.unwrap_or(d.ratio),
        lr: o.lr.unwrap_or(d.lr),
        epochs: o.coop_epochs(dataset),
        batch_size: o.batch_size.unwrap_or(d.batch_size),
        search: o.search.clone(),
        seed,
        ..d
    })
}

impl FewShotMethod for AdapterOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        format!(
            "branch={} form={} reduction={} alpha={} beta={} ratio={} lr={} epochs={} batch={} search={:?}",
            self.branch.as_str(),
            self.form.as_str(),
            self.reduction,
            self.alpha,
            self.beta,
            self.ratio.as_str(),
            self.lr,
            self.epochs.map_or("by-shots".to_string(), |e| e.to_string()),
            self.batch_size,
            self.search
        )
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }

    fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    fn scale_sgd_lr(&mut self, factor: f32) {
        self.lr *= factor;
    }
}

/// Tensors: `classes` (K×D) and `logit_scale`; `visual.w1` (D×H), `visual.w2` (H×D), the same
/// for `text`; `alpha`, `beta` (one value, or a hyper-network's `alpha.u|c|q|b`). Metadata
/// `relu_out` (the official form's ReLU after the second layer).
pub static CODEC: HeadCodec = HeadCodec {
    kind: "clip-adapter",
    anchor: ("classes", "K × D, one class embedding per row"),
    input: FeatureSpace::Projected,
    read: read_head,
};

fn read_head(r: &HeadReader, classes: Matrix) -> Result<Box<dyn HeadModel>, HeadError> {
    let d = classes.cols;
    let branches =
        ["visual", "text"].map(|b| r.has(&format!("{b}.w1")) || r.has(&format!("{b}.w2")));
    if !branches.contains(&true) {
        return Err(HeadError::Incomplete {
            kind: "clip-adapter",
            what: "`visual.w1`/`visual.w2` or `text.w1`/`text.w2`",
        });
    }
    let relu_out = match r.metadata("relu_out") {
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(HeadError::Metadata {
                key: "relu_out",
                value: other.to_string(),
                expected: "`true` or `false`".into(),
            })
        }
        None => return Err(HeadError::MissingMetadata { key: "relu_out" }),
    };
    let bottleneck = |name: &str, on: bool| -> Result<Option<Bottleneck>, HeadError> {
        if !on {
            return Ok(None);
        }
        let w1 = r.matrix(&format!("{name}.w1"), Some(d), None, "D × H")?;
        let h = w1.cols;
        let w2 = r.matrix(
            &format!("{name}.w2"),
            Some(h),
            Some(d),
            "H × D, H from `.w1`",
        )?;
        Ok(Some(Bottleneck {
            dim: d,
            hidden: h,
            w1: w1.data,
            w2: w2.data,
            relu_out,
        }))
    };
    let ratio = |name: &str| -> Result<Ratio, HeadError> {
        if !r.has(&format!("{name}.u")) {
            return Ok(Ratio::Fixed(r.scalar(name, "one value")?));
        }
        // The hyper-network reads a feature and the classifier summary side by side.
        let u = r.matrix(&format!("{name}.u"), Some(2 * d), None, "2D × hidden")?;
        let hidden = u.cols;
        Ok(Ratio::Hyper(RatioNet {
            input: u.rows,
            hidden,
            u: u.data,
            c: r.vector(&format!("{name}.c"), hidden, "hidden")?,
            q: r.vector(&format!("{name}.q"), hidden, "hidden")?,
            b: r.vector(&format!("{name}.b"), 1, "one value")?,
        }))
    };
    Ok(Box::new(AdapterModel {
        params: AdapterParams {
            visual: bottleneck("visual", branches[0])?,
            text: bottleneck("text", branches[1])?,
            alpha: ratio("alpha")?,
            beta: ratio("beta")?,
        },
        classes,
        logit_scale: r.logit_scale()?,
    }))
}

fn write_ratio(w: &mut HeadWriter, name: &str, r: &Ratio) {
    match r {
        Ratio::Fixed(v) => w.scalar(name, *v),
        Ratio::Scalar(v) => w.scalar(name, v[0]),
        Ratio::Hyper(n) => {
            w.put(&format!("{name}.u"), vec![n.input, n.hidden], n.u.clone());
            w.vector(&format!("{name}.c"), &n.c);
            w.vector(&format!("{name}.q"), &n.q);
            w.vector(&format!("{name}.b"), &n.b);
        }
    }
}

impl HeadModel for AdapterModel {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        AdapterModel::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.classes.cols
    }

    fn image_features(&self, x: &Matrix) -> Option<Matrix> {
        self.adapted_features(x)
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("classes", &self.classes);
        w.scalar("logit_scale", self.logit_scale);
        for (name, b) in [("visual", &self.params.visual), ("text", &self.params.text)] {
            if let Some(b) = b {
                w.put(&format!("{name}.w1"), vec![b.dim, b.hidden], b.w1.clone());
                w.put(&format!("{name}.w2"), vec![b.hidden, b.dim], b.w2.clone());
                w.meta("relu_out", b.relu_out.to_string());
            }
        }
        write_ratio(w, "alpha", &self.params.alpha);
        write_ratio(w, "beta", &self.params.beta);
    }

    /// The adapters and ratios act on one feature and one class embedding at a time (the
    /// ratio network's input is a feature and a class embedding, 2·D wide), so they apply to
    /// classes never trained on.
    fn for_classes(&self, text: &TextClassifier) -> Option<Box<dyn HeadModel>> {
        Some(Box::new(AdapterModel {
            params: self.params.clone(),
            classes: text.weights.clone(),
            logit_scale: text.logit_scale,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small random task: `k` classes in `d` dimensions, `n` training images.
    pub(crate) fn toy(
        n: usize,
        k: usize,
        d: usize,
        seed: u64,
    ) -> (Matrix, Vec<usize>, TextClassifier) {
        let mut rng = seeded_rng(seed);
        let x = Matrix::from_vec(n, d, rng.uniform_vec(n * d, 1.0)).unwrap();
        let labels = (0..n).map(|i| i % k).collect();
        let w = Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0))
            .unwrap()
            .normalized();
        (
            x,
            labels,
            TextClassifier {
                weights: w,
                logit_scale: 20.0,
                logit_bias: None,
            },
        )
    }

    /// Central finite differences in f64 would need an f64 model; in f32 a step of 1e-2 on a
    /// loss of order 1 keeps rounding error near 1e-5, well under the 2 % tolerance used.
    #[allow(clippy::needless_range_loop)] // `p` indexes the probe's parameters too
    fn check_gradients(model: &AdapterModel, x: &Matrix, y: &[usize]) {
        let (base, grad) = model.loss_and_grad(x, y);
        let mut grad = grad;
        let analytic: Vec<Vec<f32>> = grad.params_mut().into_iter().map(|g| g.to_vec()).collect();
        let mut probe = model.clone();
        let n_params = analytic.len();
        let mut checked = 0;
        for p in 0..n_params {
            let len = analytic[p].len();
            // A few entries of each tensor, spread over it.
            for j in (0..len).step_by((len / 5).max(1)) {
                let h = 1e-2f32;
                let orig = probe.params.params_mut()[p][j];
                probe.params.params_mut()[p][j] = orig + h;
                let up = probe.loss_and_grad(x, y).0;
                probe.params.params_mut()[p][j] = orig - h;
                let down = probe.loss_and_grad(x, y).0;
                probe.params.params_mut()[p][j] = orig;
                let numeric = (up - down) / (2.0 * h);
                // A ReLU kink inside [−h, h] makes the one-sided slopes disagree; the
                // derivative is not defined there, so such entries are skipped.
                let (fwd, bwd) = ((up - base) / h, (base - down) / h);
                if (fwd - bwd).abs() > 0.05 * fwd.abs().max(bwd.abs()) + 1e-3 {
                    continue;
                }
                let a = analytic[p][j];
                let tol = 2e-2 * a.abs().max(numeric.abs()) + 2e-4;
                assert!(
                    (a - numeric).abs() <= tol,
                    "param {p}[{j}]: analytic {a} vs numeric {numeric}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10);
        let norm: f32 = analytic.iter().flatten().map(|v| v * v).sum();
        assert!(norm > 1e-8, "all gradients are zero");
    }

    fn model_for(
        branch: Branch,
        form: Form,
        ratio: RatioMode,
    ) -> (AdapterModel, Matrix, Vec<usize>) {
        let (x, y, text) = toy(6, 3, 8, 7);
        let opts = AdapterOptions {
            branch,
            form,
            ratio,
            reduction: 2,
            hyper_hidden: 4,
            ..Default::default()
        };
        let model = AdapterModel::new(&text, &opts, 0.4, 0.3, &mut seeded_rng(3));
        (model, x, y)
    }

    #[test]
    fn gradients_match_finite_differences_for_every_variant() {
        for branch in [Branch::Visual, Branch::Text, Branch::Both] {
            for form in [Form::Paper, Form::Official] {
                for ratio in [RatioMode::Fixed, RatioMode::Learnable] {
                    let (m, x, y) = model_for(branch, form, ratio);
                    check_gradients(&m, &x, &y);
                }
            }
        }
    }

    #[test]
    fn sgd_applied_tile_by_tile_gives_the_same_weights() {
        // The step that applies each weight gradient's tile as it is made, on one thread and
        // on two, and the step that stores the gradients then updates: the parameters must
        // agree to the bit, for every branch and ratio, with weights of many tiles (D = 256,
        // H = 128, a partial row tile: 128 rows of W2 are 21 tiles of six and one of two) and
        // momentum past the first step.
        // 600 classes: a text branch's weight gradients sum more rows than the fused step
        // holds in registers, and are stored either way.
        for classes in [5, 600] {
            sgd_steps_agree(classes);
        }
    }

    fn sgd_steps_agree(classes: usize) {
        let (x, labels, text) = toy(48, classes, 256, 21);
        let empty = super::super::LabelledSet {
            features: Matrix::zeros(0, 256),
            labels: Vec::new(),
        };
        let task = FewShotTask {
            pre_projection: None,
            text_mean: None,
            classnames: (0..classes).map(|i| i.to_string()).collect(),
            train: super::super::LabelledSet {
                features: x,
                labels,
            },
            train_views: Vec::new(),
            val: empty.clone(),
            test: empty,
            text,
        };
        for branch in [Branch::Visual, Branch::Text, Branch::Both] {
            for ratio in [RatioMode::Fixed, RatioMode::Learnable, RatioMode::HyperNetwork] {
                let opts = AdapterOptions {
                    branch,
                    ratio,
                    reduction: 2,
                    batch_size: 16,
                    ..Default::default()
                };
                let trained = |threads: usize, fuse_sgd: bool| {
                    let mut model =
                        AdapterModel::new(&task.text, &opts, 0.4, 0.3, &mut seeded_rng(3));
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap();
                    let mut order = |epoch: usize| {
                        let mut order: Vec<usize> = (0..48).collect();
                        order.rotate_left(epoch * 7 % 48);
                        order
                    };
                    let losses = pool
                        .install(|| {
                            let progress = &mut |_| {};
                            train_with(&task, &opts, 3, &mut model, &mut order, progress, fuse_sgd)
                        })
                        .unwrap();
                    (model.params, losses)
                };
                let (stored, stored_losses) = trained(1, false);
                for threads in [1, 2] {
                    let (fused, fused_losses) = trained(threads, true);
                    let what = format!("{classes} classes, {branch:?} {ratio:?}, {threads} threads");
                    assert_eq!(fused_losses, stored_losses, "{what}");
                    assert!(fused == stored, "{what}: the parameters differ");
                }
            }
        }
    }

    #[test]
    fn hyper_network_gradients_match_finite_differences() {
        for branch in [Branch::Visual, Branch::Text, Branch::Both] {
            let (m, x, y) = model_for(branch, Form::Paper, RatioMode::HyperNetwork);
            check_gradients(&m, &x, &y);
        }
    }

    #[test]
    fn zero_ratio_is_exactly_zero_shot() {
        let (x, _, text) = toy(10, 4, 16, 11);
        let zs = super::super::zero_shot::ZeroShot::new(&text).logits(&x);
        for branch in [Branch::Visual, Branch::Text, Branch::Both] {
            let opts = AdapterOptions {
                branch,
                ..Default::default()
            };
            let model = AdapterModel::new(&text, &opts, 0.0, 0.0, &mut seeded_rng(5));
            assert_eq!(model.logits(&x).data, zs.data, "{branch:?}");
        }
    }

    #[test]
    fn epochs_follow_coop() {
        assert_eq!(
            [1, 2, 4, 8, 16].map(epochs_for_shots),
            [50, 100, 100, 200, 200]
        );
    }

    #[test]
    fn enum_names_round_trip() {
        for b in [Branch::Visual, Branch::Text, Branch::Both] {
            assert_eq!(b.as_str().parse::<Branch>().unwrap(), b);
        }
        let e = "sideways".parse::<Form>().unwrap_err();
        assert_eq!((e.what, e.given.as_str()), ("adapter form", "sideways"));
        assert!(e.to_string().contains("official, paper"), "{e}");
    }
}
