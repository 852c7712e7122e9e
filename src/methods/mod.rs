//! The few-shot methods, all trained and evaluated on cached CLIP features so that results
//! compare like for like (issue 5; PAPER.md §2-3).
//!
//! ```text
//! mod.rs            FewShotTask (features + labels + text classifier), Method, fit()
//! linalg.rs         row-major f32 kernels: GEMM, row normalisation, cross-entropy, Cholesky
//! optim.rs          SGD with momentum, AdamW, CoOp's warm-up + cosine schedule
//! zero_shot.rs      zero-shot CLIP on features
//! clip_adapter.rs   CLIP-Adapter: visual / text / both adapters, fixed or learnable ratios
//! coop/             CoOp: learned prompt context trained through the frozen text tower
//! hyper_network.rs  the ratio hyper-network Q(f, W) of the paper's learnable-ratio variant
//! linear_probe.rs   L2 multinomial logistic regression, C searched on validation
//! lbfgs.rs          the L-BFGS minimiser the linear probe uses
//! tip_adapter.rs    Tip-Adapter (training-free cache) and Tip-Adapter-F (trainable keys)
//! gda.rs            Gaussian discriminant analysis with a shared, shrunk covariance
//! eval.rs           accuracy, mean ± std
//! from_cache.rs     a FewShotTask from the feature cache of `clip-adapter extract`
//! head.rs           a trained head: logits on new features; safetensors file with metadata
//! ```
//!
//! Features are the projected, un-normalised image embeddings the cache stores; each method
//! normalises where its reference implementation does. Hyper-parameters are chosen on the
//! validation set only; the test set is evaluated once, with the chosen values.

pub mod clip_adapter;
pub mod coop;
mod error;
pub mod eval;
pub mod from_cache;
pub mod gda;
pub mod head;
pub mod hyper_network;
pub mod lbfgs;
pub mod linalg;
pub mod linear_probe;
pub mod optim;
pub mod tip_adapter;
pub mod zero_shot;

pub use error::MethodError;
pub use head::Head;
pub use linalg::Matrix;

/// Image features with their class labels.
#[derive(Debug, Clone)]
pub struct LabelledSet {
    /// `N × D`, one image per row.
    pub features: Matrix,
    pub labels: Vec<usize>,
}

/// The zero-shot classifier: one unit-norm text embedding per class and CLIP's logit scale.
#[derive(Debug, Clone)]
pub struct TextClassifier {
    /// `K × D`, unit-norm rows (prompt ensemble: normalise, average, normalise).
    pub weights: Matrix,
    /// `exp(logit_scale)` of the checkpoint (100 for OpenAI's weights).
    pub logit_scale: f32,
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
}

impl FewShotTask {
    pub fn classes(&self) -> usize {
        self.text.weights.rows
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
        let (k, d) = (self.classes(), self.dim());
        if k == 0 {
            return Err(MethodError::Empty {
                what: "the text classifier",
            });
        }
        if self.train.labels.is_empty() {
            return Err(MethodError::Empty {
                what: "the training set",
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

/// A method and its options.
#[derive(Debug, Clone)]
pub enum Method {
    ZeroShot,
    LinearProbe(linear_probe::LinearProbeOptions),
    ClipAdapter(clip_adapter::AdapterOptions),
    TipAdapter(tip_adapter::TipOptions),
    TipAdapterF(tip_adapter::TipOptions),
    Gda(gda::GdaOptions),
}

impl Method {
    /// The name used on the command line and in results.
    pub fn name(&self) -> &'static str {
        match self {
            Method::ZeroShot => "zero-shot",
            Method::LinearProbe(_) => "linear-probe",
            Method::ClipAdapter(_) => "clip-adapter",
            Method::TipAdapter(_) => "tip-adapter",
            Method::TipAdapterF(_) => "tip-adapter-f",
            Method::Gda(_) => "gda",
        }
    }

    /// The options as one stable `key=value` string (results rows, head metadata).
    pub fn describe(&self) -> String {
        match self {
            Method::ZeroShot => String::new(),
            Method::LinearProbe(o) => format!("grid={:?} steps={}", o.grid, o.steps),
            Method::ClipAdapter(o) => format!(
                "branch={} form={} reduction={} alpha={} beta={} ratio={} lr={} epochs={} batch={} search={:?}",
                o.branch.as_str(),
                o.form.as_str(),
                o.reduction,
                o.alpha,
                o.beta,
                o.ratio.as_str(),
                o.lr,
                o.epochs.map_or("by-shots".to_string(), |e| e.to_string()),
                o.batch_size,
                o.search
            ),
            Method::TipAdapter(o) | Method::TipAdapterF(o) => format!(
                "alpha={} beta={} scale={:?} steps={:?} lr={} epochs={} batch={}",
                o.alpha, o.beta, o.search_scale, o.search_steps, o.lr, o.epochs, o.batch_size
            ),
            Method::Gda(o) => format!("alphas={:?}", o.alphas),
        }
    }
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

/// Trains `method` on `task.train` (choosing hyper-parameters on `task.val`).
pub fn fit(
    method: &Method,
    task: &FewShotTask,
    progress: &mut dyn FnMut(Progress),
) -> Result<Fitted, MethodError> {
    task.validate()?;
    match method {
        Method::ZeroShot => Ok(Fitted {
            head: Head::ZeroShot(zero_shot::ZeroShot::new(&task.text)),
            chosen: Vec::new(),
            losses: Vec::new(),
        }),
        Method::LinearProbe(o) => linear_probe::fit(task, o, progress),
        Method::ClipAdapter(o) => clip_adapter::fit(task, o, progress),
        Method::TipAdapter(o) => tip_adapter::fit(task, o, false, progress),
        Method::TipAdapterF(o) => tip_adapter::fit(task, o, true, progress),
        Method::Gda(o) => gda::fit(task, o, progress),
    }
}

/// Validation and test accuracy (percent) of a fitted head.
pub fn evaluate(head: &Head, task: &FewShotTask) -> (f32, f32) {
    let acc = |s: &LabelledSet| eval::accuracy(&head.logits(&s.features), &s.labels);
    (acc(&task.val), acc(&task.test))
}
