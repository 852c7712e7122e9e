//! ProLIP (Fahes et al., "Fine-Tuning CLIP's Last Visual Projector: A Few-Shot Cornucopia",
//! 2024; `astra-vision/ProLIP` `methods/ProLIP.py`): only the image tower's last projection is
//! trained (ViT `visual.proj` / `visual_projection`, ModifiedResNet `attnpool.c_proj`, whose
//! bias stays frozen), on the cached *pre-projection* features, with a squared-distance
//! penalty towards the pretrained projection:
//!
//! ```text
//! z = W x + b,   logits = scale · (z / ‖z‖) · Tᵀ,   loss = CE + λ ‖W − W₀‖²   (sum over entries)
//! ```
//!
//! as the reference: full batch, one augmented view per epoch (view `(e + 1) mod V`, the
//! reference's counter moves before its first use), Adam (eps 1e-4, no decay),
//! `CosineAnnealingLR` over the epochs stepped once per epoch, 300 epochs, λ = 1/N for N shots
//! (the paper's validation-free rule). With a validation set the learning rate is chosen on it
//! among `search` (docs/methods.md). Gradients are written by hand and checked against finite
//! differences.

use super::eval;
use super::head::{head_boilerplate, FeatureSpace, HeadCodec, HeadModel, HeadWriter};
use super::linalg::{cross_entropy_backward, normalize_rows, normalize_rows_backward, Matrix};
use super::method::method_boilerplate;
use super::epochs::{Batching, EpochLoop};
use super::optim::{cosine_annealing, AdamW};
use super::{
    Augmentation, FewShotMethod, FewShotTask, Fit, FitContext, Fitted, Head, Method, MethodCard,
    MethodError, MethodOverrides, Needs, Progress, TextClassifier,
};

pub use super::pre_projection::{PreProjection, Projection};

/// The weight of the penalty towards the pretrained projection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lambda {
    /// `1 / N` for N shots (`lambda_funct_1_N`, the authors' validation-free default).
    InverseShots,
    /// `1 / N²` (`lambda_funct_1_N2`).
    InverseShotsSquared,
    Fixed(f32),
}

impl Lambda {
    pub fn value(self, shots: usize) -> f32 {
        let n = shots.max(1) as f32;
        match self {
            Lambda::InverseShots => 1.0 / n,
            Lambda::InverseShotsSquared => 1.0 / (n * n),
            Lambda::Fixed(v) => v,
        }
    }

    pub fn describe(self) -> String {
        match self {
            Lambda::InverseShots => "1/N".into(),
            Lambda::InverseShotsSquared => "1/N2".into(),
            Lambda::Fixed(v) => v.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ProlipOptions {
    /// Adam's learning rate when there is no search (`lr_v`; `configs/base.yaml`: 1e-5).
    pub lr: f32,
    /// Learning rates tried on the validation set (empty, or no validation set: `lr`).
    pub search: Vec<f32>,
    pub lambda: Lambda,
    /// `train_epoch` (300).
    pub epochs: usize,
    /// Adam's eps (the reference passes 1e-4).
    pub eps: f32,
}

impl Default for ProlipOptions {
    fn default() -> Self {
        ProlipOptions {
            lr: 1e-5,
            // The four learning rates of the paper's validation-free table (Table 2).
            search: vec![1e-2, 1e-3, 1e-4, 1e-5],
            lambda: Lambda::InverseShots,
            epochs: 300,
            eps: 1e-4,
        }
    }
}

/// A trained projection with the text classifier: logits of *pre-projection* features.
#[derive(Debug, Clone)]
pub struct ProlipHead {
    pub projection: Projection,
    pub text: TextClassifier,
}

impl ProlipHead {
    /// `scale · normalize(X Wᵀ + b) · Tᵀ` for pre-projection features X (N × W_in).
    pub fn logits(&self, x: &Matrix) -> Matrix {
        let mut z = self.projection.apply(x);
        normalize_rows(&mut z.data, z.cols);
        let mut l = z.matmul(false, &self.text.weights, true);
        l.data.iter_mut().for_each(|v| *v *= self.text.logit_scale);
        l
    }
}

/// The loss `CE + λ‖W − W₀‖²` at `weight` and its gradient with respect to `weight`.
pub fn loss_and_grad(
    projection: &Projection,
    initial: &Matrix,
    x: &Matrix,
    labels: &[usize],
    text: &TextClassifier,
    lambda: f32,
) -> (f32, Matrix) {
    let k = text.weights.rows;
    let mut u = projection.apply(x);
    let norms = normalize_rows(&mut u.data, u.cols);
    let mut g = u.matmul(false, &text.weights, true);
    g.data.iter_mut().for_each(|v| *v *= text.logit_scale);
    let ce = cross_entropy_backward(&mut g.data, labels, k);
    let mut du = g.matmul(false, &text.weights, false);
    du.data.iter_mut().for_each(|v| *v *= text.logit_scale);
    let dz = Matrix {
        rows: u.rows,
        cols: u.cols,
        data: normalize_rows_backward(&u.data, &norms, &du.data, u.cols),
    };
    let mut grad = dz.matmul(true, x, false);
    let mut penalty = 0f64;
    for ((gw, &w), &w0) in grad
        .data
        .iter_mut()
        .zip(&projection.weight.data)
        .zip(&initial.data)
    {
        let d = w - w0;
        penalty += (d as f64) * (d as f64);
        *gw += 2.0 * lambda * d;
    }
    (ce + lambda * penalty as f32, grad)
}

/// Trains the projection from the checkpoint's at learning rate `lr`; returns the head and the
/// loss of each epoch.
pub fn train(
    pre: &PreProjection,
    labels: &[usize],
    text: &TextClassifier,
    lr: f32,
    lambda: f32,
    opts: &ProlipOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<(ProlipHead, Vec<f32>), MethodError> {
    let views = pre.training_views();
    let initial = pre.projection.weight.clone();
    let mut projection = pre.projection.clone();
    // `torch.optim.Adam` is AdamW without decay.
    let mut adam = AdamW::new(opts.eps, 0.0);
    let epoch_loop = EpochLoop {
        epochs: opts.epochs,
        batching: Batching::Full,
    };
    let losses = epoch_loop.run::<_, MethodError>(
        &mut projection,
        labels.len(),
        &mut |_| Vec::new(),
        &mut |projection, epoch, _| {
            // The reference's view counter moves before its first use.
            let x = views[(epoch + 1) % views.len()];
            let (loss, grad) = loss_and_grad(projection, &initial, x, labels, text, lambda);
            let step_lr = cosine_annealing(lr, epoch, opts.epochs);
            adam.step(&mut [&mut projection.weight.data], &[&grad.data], step_lr);
            Ok(loss)
        },
        &mut |_, _| {},
        progress,
    )?;
    Ok((
        ProlipHead {
            projection,
            text: text.clone(),
        },
        losses,
    ))
}

/// The largest number of training images of one class: the N of a CoOp few-shot draw.
/// ProLIP on `task`, which must carry its pre-projection features.
pub fn fit(
    task: &FewShotTask,
    opts: &ProlipOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    let pre = task
        .pre_projection
        .as_deref()
        .ok_or(MethodError::NeedsPreProjection { method: "prolip" })?;
    pre.validate(task)?;
    if opts.epochs == 0 {
        return Err(MethodError::option("epochs", 0, "at least one epoch"));
    }
    if let Some(&lr) = (opts.search.iter().chain([&opts.lr])).find(|&&l| l.is_nan() || l <= 0.0) {
        return Err(MethodError::option(
            "lr",
            lr,
            "learning rates must be positive",
        ));
    }
    let labels = &task.train.labels;
    let lambda = opts.lambda.value(task.shots());
    let candidates = if task.val.labels.is_empty() || opts.search.is_empty() {
        vec![opts.lr]
    } else {
        opts.search.clone()
    };
    let mut best: Option<(f32, f32, ProlipHead, Vec<f32>)> = None;
    for &lr in &candidates {
        let (head, losses) = train(pre, labels, &task.text, lr, lambda, opts, progress)?;
        let val = eval::accuracy(&head.logits(&pre.val), &task.val.labels);
        // The reference keeps the first strictly better value.
        if best.as_ref().is_none_or(|b| val > b.0) {
            best = Some((val, lr, head, losses));
        }
    }
    let (_, lr, head, losses) = best.ok_or(MethodError::Empty {
        what: "the learning-rate list",
    })?;
    Ok(Fitted {
        head: Head::new(head),
        chosen: vec![
            ("lr".to_string(), lr.to_string()),
            ("lambda".to_string(), lambda.to_string()),
        ],
        losses,
    })
}

// The method's card, options and head codec.

pub static CARD: MethodCard = MethodCard {
    name: "prolip",
    title: "ProLIP",
    paper: "Fahes et al., 2024",
    code: "astra-vision/ProLIP",
    colour: (0, 150, 136),
    variant_colours: &[],
    reported_as: None,
    without_validation: "its own rule: λ = 1/N and the learning rate of `configs/base.yaml` (1e-5), the last of 300 epochs",
    augmentation: Augmentation::RandomResizedCrop {
        scale: (0.08, 1.0),
        flip: true,
        source: "ProLIP: CoOp's augmentation (random resized crop + flip), one view per epoch",
    },
    needs: Needs::PreProjection,
    options: &["lr", "epochs"],
    configure,
    head: &CODEC,
    new_classes: crate::methods::NewClasses::FromText,
};

/// A learning rate given by the user is used as is, without a search.
fn configure(o: &MethodOverrides, _: &str, _: u64) -> Method {
    let d = ProlipOptions::default();
    Method::new(ProlipOptions {
        search: if o.lr.is_some() {
            Vec::new()
        } else {
            d.search.clone()
        },
        lr: o.lr.unwrap_or(d.lr),
        epochs: o.epochs.unwrap_or(d.epochs),
        ..d
    })
}

impl FewShotMethod for ProlipOptions {
    method_boilerplate!(CARD);

    fn describe(&self) -> String {
        format!(
            "lr={} search={:?} lambda={} epochs={} eps={}",
            self.lr,
            self.search,
            self.lambda.describe(),
            self.epochs,
            self.eps
        )
    }

    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        fit(task, self, cx.progress).map(Fit::from)
    }
}

/// Tensors: `classes` (K×E), `logit_scale`, `projection.weight` (E × W, output × input: the
/// head scores pre-projection features) and `projection.bias` (ModifiedResNet towers).
pub static CODEC: HeadCodec = HeadCodec {
    kind: "prolip",
    anchor: ("classes", "K × D, one class embedding per row"),
    input: FeatureSpace::PreProjection,
    read: |r, classes| {
        let d = classes.cols;
        let weight = r.matrix(
            "projection.weight",
            Some(d),
            None,
            "D × W, the projection from the image tower's W-wide output (output × input)",
        )?;
        let bias = if r.has("projection.bias") {
            Some(r.vector("projection.bias", d, "one per embedding channel")?)
        } else {
            None
        };
        Ok(Box::new(ProlipHead {
            projection: Projection { weight, bias },
            text: TextClassifier {
                weights: classes,
                logit_scale: r.logit_scale()?,
                logit_bias: None,
            },
        }))
    },
};

impl HeadModel for ProlipHead {
    head_boilerplate!(CODEC);

    fn logits(&self, x: &Matrix) -> Matrix {
        ProlipHead::logits(self, x)
    }

    fn dim(&self) -> usize {
        self.projection.input_dim()
    }

    fn write(&self, w: &mut HeadWriter) {
        w.matrix("classes", &self.text.weights);
        w.scalar("logit_scale", self.text.logit_scale);
        w.matrix("projection.weight", &self.projection.weight);
        if let Some(b) = &self.projection.bias {
            w.vector("projection.bias", b);
        }
    }

    /// The trained projection applies to any image; the classes are the text's.
    fn for_classes(&self, text: &TextClassifier) -> Option<Box<dyn HeadModel>> {
        let projection = self.projection.clone();
        let text = text.clone();
        Some(Box::new(ProlipHead { projection, text }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::linalg::seeded_rng;

    fn random(rows: usize, cols: usize, seed: u64, scale: f32) -> Matrix {
        let mut rng = seeded_rng(seed);
        let data = (0..rows * cols).map(|_| rng.range(-scale, scale)).collect();
        Matrix { rows, cols, data }
    }

    fn setup(bias: bool) -> (Projection, Matrix, Vec<usize>, TextClassifier) {
        let (n, w, e, k) = (9, 7, 5, 3);
        let projection = Projection {
            weight: random(e, w, 1, 0.5),
            bias: bias.then(|| random(1, e, 2, 0.3).data),
        };
        let x = random(n, w, 3, 1.0);
        let labels = (0..n).map(|i| i % k).collect();
        let text = TextClassifier {
            weights: random(k, e, 4, 1.0).normalized(),
            logit_scale: 10.0,
            logit_bias: None,
        };
        (projection, x, labels, text)
    }

    #[test]
    fn gradient_equals_finite_differences() {
        for bias in [false, true] {
            let (p0, x, labels, text) = setup(bias);
            // Away from W₀, so the penalty's gradient is not zero.
            let mut p = p0.clone();
            let shift = random(p.weight.rows, p.weight.cols, 5, 0.05);
            p.weight
                .data
                .iter_mut()
                .zip(&shift.data)
                .for_each(|(w, s)| *w += s);
            let lambda = 0.7;
            let (_, grad) = loss_and_grad(&p, &p0.weight, &x, &labels, &text, lambda);
            let h = 1e-3f32;
            for i in 0..p.weight.data.len() {
                let at = |d: f32| {
                    let mut q = p.clone();
                    q.weight.data[i] += d;
                    loss_and_grad(&q, &p0.weight, &x, &labels, &text, lambda).0 as f64
                };
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                let g = grad.data[i] as f64;
                assert!(
                    (fd - g).abs() <= 2e-3 + 2e-2 * g.abs(),
                    "bias {bias}, entry {i}: finite difference {fd}, gradient {g}"
                );
            }
        }
    }

    #[test]
    fn untrained_head_equals_zero_shot_on_projected_features() {
        let (p, x, _, text) = setup(true);
        let head = ProlipHead {
            projection: p.clone(),
            text: text.clone(),
        };
        let zs = crate::methods::zero_shot::ZeroShot::new(&text).logits(&p.apply(&x));
        let ours = head.logits(&x);
        for (a, b) in ours.data.iter().zip(&zs.data) {
            assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
        }
    }

    #[test]
    fn lambda_rules() {
        assert_eq!(Lambda::InverseShots.value(4), 0.25);
        assert_eq!(Lambda::InverseShotsSquared.value(4), 1.0 / 16.0);
        assert_eq!(Lambda::Fixed(0.3).value(4), 0.3);
        assert_eq!(crate::methods::shots_of(&[0, 0, 1, 2, 2, 2], 3), 3);
    }
}
