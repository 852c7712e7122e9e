//! The few-shot methods, all trained and evaluated on cached CLIP features so that results
//! compare like for like (the comparison of Gao et al. 2021).
//!
//! ```text
//! mod.rs            FewShotTask (features + labels + text classifier), fit(), evaluate()
//! method.rs         the method trait (FewShotMethod), its card (MethodCard), Method, MethodKind
//! registry.rs       lookups over the registry below (head codecs; the paper's own methods)
//! overrides.rs      the options a user sets on top of the protocol's values
//! pre_projection.rs the features before the image tower's last projection, and that projection
//! linalg.rs         row-major f32 kernels: GEMM, row normalisation, cross-entropy, Cholesky
//! optim.rs          SGD with momentum, AdamW, CoOp's warm-up + cosine schedule
//! hyper_network.rs  the ratio hyper-network Q(f, W) of CLIP-Adapter's learnable-ratio variant
//! lbfgs.rs          the L-BFGS minimiser the linear probe uses
//! eval.rs           accuracy, mean ± std
//! head.rs           a trained head (HeadModel): logits on new features; its file
//! ```
//!
//! Each method is one file (or folder: `coop/`) named in the registry at the end of the module
//! list, with its card, its options and its head (docs/architecture.md, "Methods").
//!
//! Features are the projected, un-normalised image embeddings the cache stores; each method
//! normalises where its reference implementation does. Hyper-parameters are chosen on the
//! validation set only; the test set is evaluated once, with the chosen values.

pub mod epochs;
mod error;
pub mod eval;
pub mod head;
pub mod hyper_network;
pub mod lbfgs;
pub mod linalg;
pub mod method;
pub mod optim;
pub mod overrides;
pub mod pre_projection;
pub mod registry;

/// Declares the method modules and lists their cards in [`registry::ALL`], in the order of
/// tables and figures.
macro_rules! registry {
    ($($module:ident => [$($card:ident),+],)+) => {
        $(pub mod $module;)+

        /// Every method, in the order of tables and figures.
        pub(crate) static REGISTERED: &[MethodKind] = &[$($(MethodKind(&$module::$card),)+)+];
    };
}

// The registry: one line per method file. The paper's comparison (zero-shot CLIP, the linear
// probe, CLIP-Adapter, CoOp), then the later methods by year.
registry! {
    zero_shot => [CARD],
    linear_probe => [CARD],
    clip_adapter => [CARD],
    coop => [CARD],
    tip_adapter => [CARD, CARD_F],
    taskres => [CARD],
    cross_modal => [CARD],
    ape => [CARD, CARD_T],
    gda => [CARD],
    lp_plus_plus => [CARD],
    clap => [CARD],
    prolip => [CARD],
    proker => [CARD],
    clip_lora => [CARD],
}

pub use error::MethodError;
pub use head::{FeatureSpace, Head};
pub use linalg::Matrix;
pub use method::{
    Augmentation, DrawImages, FewShotMethod, Fit, FitContext, ImageContext, Method, MethodCard,
    MethodKind, Needs, NewClasses, UnknownMethod,
};
pub use overrides::{MethodOverrides, OptionError, OptionSpec, OptionValue, OPTIONS};

/// Image features with their class labels.
#[derive(Debug, Clone)]
pub struct LabelledSet {
    /// `N × D`, one image per row.
    pub features: Matrix,
    pub labels: Vec<usize>,
}

/// The zero-shot classifier: one unit-norm text embedding per class and the model's logit scale
/// (and, for SigLIP, its logit bias).
#[derive(Debug, Clone)]
pub struct TextClassifier {
    /// `K × D`, unit-norm rows (prompt ensemble: normalise, average, normalise).
    pub weights: Matrix,
    /// `exp(logit_scale)` of the checkpoint (100 for OpenAI's weights).
    pub logit_scale: f32,
    /// SigLIP's learned `logit_bias`: zero-shot logits are `scale · cos + bias`, scored with a
    /// sigmoid per class. `None` for CLIP (softmax over classes). The heads the other methods
    /// train ignore it: a constant added to every class moves no argmax.
    pub logit_bias: Option<f32>,
}

impl TextClassifier {
    /// The classifier of class embeddings `K × D` (a program's own, e.g. from Python): each row
    /// is scaled to unit norm, except rows already of unit norm (within 1e-5), which are kept
    /// bit for bit so that weights read from the feature cache give exactly the cache's numbers.
    pub fn from_embeddings(mut weights: Matrix, logit_scale: f32) -> Self {
        for r in weights.data.chunks_mut(weights.cols.max(1)) {
            let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            if norm > 0.0 && (norm - 1.0).abs() > 1e-5 {
                r.iter_mut().for_each(|v| *v /= norm);
            }
        }
        TextClassifier {
            weights,
            logit_scale,
            logit_bias: None,
        }
    }
}

/// One few-shot task: what every method trains and is evaluated on.
#[derive(Debug, Clone)]
pub struct FewShotTask {
    pub classnames: Vec<String>,
    /// The few-shot training images, evaluation view (resize + centre crop).
    pub train: LabelledSet,
    /// Augmented views of the same training images, same row order and labels as `train`
    /// (may be empty). Training methods use view `epoch mod V` at each epoch, Tip-Adapter
    /// averages them into its keys, GDA pools them.
    pub train_views: Vec<Matrix>,
    /// The few-shot validation set: hyper-parameters are chosen on it, never on `test`.
    pub val: LabelledSet,
    pub test: LabelledSet,
    pub text: TextClassifier,
    /// The same images before the image tower's last projection, with that projection: what
    /// ProLIP trains on (`None` when the cache holds no pre-projection features).
    pub pre_projection: Option<Box<pre_projection::PreProjection>>,
    /// `K × D`: the mean over templates of the un-normalised prompt embeddings, the zero-shot
    /// prototypes CLAP's reference trains from (`None` when the cache predates it).
    pub text_mean: Option<Matrix>,
}

/// The largest number of `labels` of one class among `classes`: a draw's shot count.
pub fn shots_of(labels: &[usize], classes: usize) -> usize {
    let mut counts = vec![0usize; classes];
    labels.iter().for_each(|&l| counts[l] += 1);
    counts.into_iter().max().unwrap_or(0)
}

impl FewShotTask {
    pub fn classes(&self) -> usize {
        self.text.weights.rows
    }

    /// The largest number of training images of one class (what the schedules key on).
    pub fn shots(&self) -> usize {
        shots_of(&self.train.labels, self.classes())
    }

    pub fn dim(&self) -> usize {
        self.text.weights.cols
    }

    /// The views training iterates over: the augmented ones when there are some.
    pub fn training_views(&self) -> Vec<&Matrix> {
        if self.train_views.is_empty() {
            vec![&self.train.features]
        } else {
            self.train_views.iter().collect()
        }
    }

    /// Checks that every matrix has the feature width, every label is a class, and rows and
    /// labels agree.
    pub fn validate(&self) -> Result<(), MethodError> {
        if self.classes() > 0 && self.train.labels.is_empty() {
            return Err(MethodError::Empty {
                what: "the training set",
            });
        }
        self.validate_sets()
    }

    /// [`FewShotTask::validate`] without requiring training images: what a test-only task (a
    /// domain-generalisation target) must pass.
    pub fn validate_sets(&self) -> Result<(), MethodError> {
        let (k, d) = (self.classes(), self.dim());
        if k == 0 {
            return Err(MethodError::Empty {
                what: "the text classifier",
            });
        }
        let sets = [
            ("train", &self.train),
            ("val", &self.val),
            ("test", &self.test),
        ];
        for (what, s) in sets {
            check_set(what, s, k, d)?;
        }
        for v in &self.train_views {
            if v.cols != d {
                return Err(MethodError::Width {
                    what: "an augmented view",
                    expected: d,
                    found: v.cols,
                });
            }
            if v.rows != self.train.labels.len() {
                return Err(MethodError::Rows {
                    what: "an augmented view",
                    found: v.rows,
                    labels: self.train.labels.len(),
                });
            }
        }
        Ok(())
    }
}

fn check_set(what: &'static str, s: &LabelledSet, k: usize, d: usize) -> Result<(), MethodError> {
    if s.features.cols != d {
        return Err(MethodError::Width {
            what,
            expected: d,
            found: s.features.cols,
        });
    }
    if s.features.rows != s.labels.len() {
        return Err(MethodError::Rows {
            what,
            found: s.features.rows,
            labels: s.labels.len(),
        });
    }
    if let Some(&label) = s.labels.iter().find(|&&l| l >= k) {
        return Err(MethodError::Label {
            what,
            label,
            classes: k,
        });
    }
    Ok(())
}

/// What a method reports while it runs.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// An epoch of gradient training ended with this mean batch loss.
    Epoch {
        epoch: usize,
        epochs: usize,
        loss: f32,
    },
    /// One candidate of a validation search was evaluated.
    Search { done: usize, total: usize },
}

/// A trained head with what was chosen on validation and how training went.
#[derive(Debug, Clone)]
pub struct Fitted {
    pub head: Head,
    /// Hyper-parameters chosen on the validation set, `name → value`.
    pub chosen: Vec<(String, String)>,
    /// Mean training loss per epoch (empty for training-free methods).
    pub losses: Vec<f32>,
}

/// Trains `method` on `task.train` (choosing hyper-parameters on `task.val`). A method that
/// trains through the model's text tower (CoOp) needs it: [`Method::fit`] with a
/// [`FitContext`] that holds it.
pub fn fit(
    method: &Method,
    task: &FewShotTask,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    let mut cx = FitContext {
        progress,
        text_tower: None,
        images: None,
    };
    Ok(method.fit(task, &mut cx)?.fitted)
}

/// Validation and test accuracy (percent) of a fitted head. A head that scores pre-projection
/// features (ProLIP) scores those of the same images; on a task without them there is nothing
/// it can score, and both accuracies are NaN (absent), never a guess.
pub fn evaluate(head: &Head, task: &FewShotTask) -> (f32, f32) {
    let acc = |s: &LabelledSet, pre_x: Option<&Matrix>| {
        let x = pre_x.unwrap_or(&s.features);
        eval::accuracy(&head.logits(x), &s.labels)
    };
    match (head.input(), task.pre_projection.as_deref()) {
        (FeatureSpace::Projected, _) => (acc(&task.val, None), acc(&task.test, None)),
        (FeatureSpace::PreProjection, Some(pre)) => (
            acc(&task.val, Some(&pre.val)),
            acc(&task.test, Some(&pre.test)),
        ),
        (FeatureSpace::PreProjection, None) => (f32::NAN, f32::NAN),
        // Its features are its own: [`evaluate_fit`] scores the ones it encoded.
        (FeatureSpace::Adapted, _) => (f32::NAN, f32::NAN),
    }
}

/// [`evaluate`], with the test set a method encoded through its own adapted image tower when it
/// did (its validation accuracy is not measured: it would mean encoding the validation images
/// too, and nothing is chosen on them).
pub fn evaluate_fit(fit: &Fit, task: &FewShotTask) -> (f32, f32) {
    match &fit.adapted_test {
        Some(test) => (
            f32::NAN,
            eval::accuracy(&fit.fitted.head.logits(&test.features), &test.labels),
        ),
        None => evaluate(&fit.fitted.head, task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_embeddings_are_normalised_and_unit_rows_kept_as_they_are() {
        let unit = [0.6f32, 0.8, 0.0];
        let raw = [3.0f32, 0.0, 4.0];
        let m = Matrix::from_vec(2, 3, [unit, raw].concat()).unwrap();
        let t = TextClassifier::from_embeddings(m, 100.0);
        assert_eq!(t.weights.row(0), unit, "a unit row is kept bit for bit");
        assert_eq!(t.weights.row(1), [0.6, 0.0, 0.8]);
        assert_eq!(t.logit_scale, 100.0);
        let zero = TextClassifier::from_embeddings(Matrix::zeros(1, 2), 1.0);
        assert_eq!(zero.weights.row(0), [0.0, 0.0], "a zero row stays zero");
    }
}
