//! The few-shot methods, all trained and evaluated on cached CLIP features so that results
//! compare like for like (the comparison of Gao et al. 2021).
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
//! ape.rs            APE (refined cache, training-free) and APE-T (trained category residuals)
//! lp_plus_plus.rs   LP++: text-blended linear probe, block majorize-minimize steps
//! clap.rs           CLAP: zero-shot-initialised probe with a class-adaptive constraint
//! prolip.rs         ProLIP: the image tower's last projection fine-tuned on pre-projection
//!                   features, regularised towards the pretrained one
//! eval.rs           accuracy, mean ± std
//! from_cache.rs     a FewShotTask from the feature cache of `clip-adapter extract`
//! head.rs           a trained head: logits on new features; safetensors file with metadata
//! ```
//!
//! Features are the projected, un-normalised image embeddings the cache stores; each method
//! normalises where its reference implementation does. Hyper-parameters are chosen on the
//! validation set only; the test set is evaluated once, with the chosen values.

pub mod ape;
pub mod clap;
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
pub mod lp_plus_plus;
pub mod optim;
pub mod prolip;
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
    /// The same images before the image tower's last projection, with that projection: what
    /// ProLIP trains on (`None` when the cache holds no pre-projection features).
    pub pre_projection: Option<Box<prolip::PreProjection>>,
    /// `K × D`: the mean over templates of the un-normalised prompt embeddings, the zero-shot
    /// prototypes CLAP's reference trains from (`None` when the cache predates it).
    pub text_mean: Option<Matrix>,
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
    /// Trained through the model's text tower: [`coop::fit`], not [`fit`].
    Coop(coop::CoopOptions),
    TipAdapter(tip_adapter::TipOptions),
    TipAdapterF(tip_adapter::TipOptions),
    Gda(gda::GdaOptions),
    Ape(ape::ApeOptions),
    ApeT(ape::ApeOptions),
    LpPlusPlus(lp_plus_plus::LpPlusPlusOptions),
    Clap(clap::ClapOptions),
    /// Trained on the task's pre-projection features.
    Prolip(prolip::ProlipOptions),
}

/// Which method, without its options: the names on the command line and in results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MethodKind {
    ZeroShot,
    LinearProbe,
    ClipAdapter,
    Coop,
    TipAdapter,
    TipAdapterF,
    Gda,
    Ape,
    ApeT,
    LpPlusPlus,
    Clap,
    Prolip,
}

impl MethodKind {
    /// Every method, in the order of the paper's comparison (zero-shot CLIP, the linear probe,
    /// CLIP-Adapter, CoOp), then the later methods by year (Tip-Adapter, Tip-Adapter-F, APE, APE-T,
    /// GDA, LP++, CLAP, ProLIP). Tables list methods in this order.
    pub const ALL: [MethodKind; 12] = [
        MethodKind::ZeroShot,
        MethodKind::LinearProbe,
        MethodKind::ClipAdapter,
        MethodKind::Coop,
        MethodKind::TipAdapter,
        MethodKind::TipAdapterF,
        MethodKind::Ape,
        MethodKind::ApeT,
        MethodKind::Gda,
        MethodKind::LpPlusPlus,
        MethodKind::Clap,
        MethodKind::Prolip,
    ];

    /// The name used on the command line and in results.
    pub const fn name(self) -> &'static str {
        match self {
            MethodKind::ZeroShot => "zero-shot",
            MethodKind::LinearProbe => "linear-probe",
            MethodKind::ClipAdapter => "clip-adapter",
            MethodKind::Coop => "coop",
            MethodKind::TipAdapter => "tip-adapter",
            MethodKind::TipAdapterF => "tip-adapter-f",
            MethodKind::Gda => "gda",
            MethodKind::Ape => "ape",
            MethodKind::ApeT => "ape-t",
            MethodKind::LpPlusPlus => "lp++",
            MethodKind::Clap => "clap",
            MethodKind::Prolip => "prolip",
        }
    }

    /// The method with its default options.
    pub fn with_defaults(self) -> Method {
        match self {
            MethodKind::ZeroShot => Method::ZeroShot,
            MethodKind::LinearProbe => Method::LinearProbe(Default::default()),
            MethodKind::ClipAdapter => Method::ClipAdapter(Default::default()),
            MethodKind::Coop => Method::Coop(Default::default()),
            MethodKind::TipAdapter => Method::TipAdapter(Default::default()),
            MethodKind::TipAdapterF => Method::TipAdapterF(Default::default()),
            MethodKind::Gda => Method::Gda(Default::default()),
            MethodKind::Ape => Method::Ape(Default::default()),
            MethodKind::ApeT => Method::ApeT(Default::default()),
            MethodKind::LpPlusPlus => Method::LpPlusPlus(Default::default()),
            MethodKind::Clap => Method::Clap(Default::default()),
            MethodKind::Prolip => Method::Prolip(Default::default()),
        }
    }
}

impl std::fmt::Display for MethodKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not one of [`MethodKind::ALL`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown method `{name}`; expected one of: {}", MethodKind::ALL.map(MethodKind::name).join(", "))]
pub struct UnknownMethod {
    pub name: String,
}

impl std::str::FromStr for MethodKind {
    type Err = UnknownMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        MethodKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownMethod { name: s.into() })
    }
}

impl std::str::FromStr for Method {
    type Err = UnknownMethod;
    /// A method name with the method's default options.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<MethodKind>().map(MethodKind::with_defaults)
    }
}

impl std::fmt::Display for Method {
    /// The method's name (its options: [`Method::describe`]).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Method {
    pub fn kind(&self) -> MethodKind {
        match self {
            Method::ZeroShot => MethodKind::ZeroShot,
            Method::LinearProbe(_) => MethodKind::LinearProbe,
            Method::ClipAdapter(_) => MethodKind::ClipAdapter,
            Method::Coop(_) => MethodKind::Coop,
            Method::TipAdapter(_) => MethodKind::TipAdapter,
            Method::TipAdapterF(_) => MethodKind::TipAdapterF,
            Method::Gda(_) => MethodKind::Gda,
            Method::Ape(_) => MethodKind::Ape,
            Method::ApeT(_) => MethodKind::ApeT,
            Method::LpPlusPlus(_) => MethodKind::LpPlusPlus,
            Method::Clap(_) => MethodKind::Clap,
            Method::Prolip(_) => MethodKind::Prolip,
        }
    }

    /// The name used on the command line and in results.
    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// The same method with its training seed set (the methods that draw random numbers).
    pub fn with_seed(&self, seed: u64) -> Method {
        match self {
            Method::ClipAdapter(o) => {
                Method::ClipAdapter(clip_adapter::AdapterOptions { seed, ..o.clone() })
            }
            Method::Coop(o) => Method::Coop(coop::CoopOptions { seed, ..o.clone() }),
            Method::TipAdapter(o) => {
                Method::TipAdapter(tip_adapter::TipOptions { seed, ..o.clone() })
            }
            Method::TipAdapterF(o) => {
                Method::TipAdapterF(tip_adapter::TipOptions { seed, ..o.clone() })
            }
            Method::Ape(o) => Method::Ape(ape::ApeOptions { seed, ..o.clone() }),
            Method::ApeT(o) => Method::ApeT(ape::ApeOptions { seed, ..o.clone() }),
            Method::Clap(o) => Method::Clap(clap::ClapOptions { seed, ..o.clone() }),
            other => other.clone(),
        }
    }

    /// The protocol's method for features `dim` wide: APE's channel counts are the authors'
    /// for RN50's 1024-wide features, and scale with the width.
    pub fn for_feature_width(&self, dim: usize) -> Method {
        match self {
            Method::Ape(o) => Method::Ape(o.clone().scaled_to(dim)),
            Method::ApeT(o) => Method::ApeT(o.clone().scaled_to(dim)),
            other => other.clone(),
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
            Method::Coop(o) => o.describe(),
            Method::TipAdapter(o) | Method::TipAdapterF(o) => format!(
                "alpha={} beta={} scale={:?} steps={:?} lr={} epochs={} batch={}",
                o.alpha, o.beta, o.search_scale, o.search_steps, o.lr, o.epochs, o.batch_size
            ),
            Method::Gda(o) => format!("alphas={:?}", o.alphas),
            Method::Ape(o) | Method::ApeT(o) => format!(
                "w_free={:?} w_trained={:?} channels={},{} alpha={} beta={} gamma={} scale={:?} steps={:?} lr={} eps={} epochs={} batch={}",
                o.weights_free, o.weights_trained, o.channels_free, o.channels_trained, o.alpha,
                o.beta, o.gamma, o.search_scale, o.search_steps, o.lr, o.eps, o.epochs, o.batch_size
            ),
            Method::LpPlusPlus(o) => format!(
                "epochs={} alpha_every={} init_alpha_scale={} accumulate_alpha_grad={}",
                o.epochs, o.alpha_every, o.init_alpha_scale, o.accumulate_alpha_grad
            ),
            Method::Clap(o) => format!(
                "constraint={} lr={} epochs={} batch={} prototypes={}",
                o.constraint.as_str(), o.lr, o.epochs, o.batch_size,
                if o.prompt_mean { "prompt-mean".to_string() } else { format!("unit*{}", o.text_norm) }
            ),
            Method::Prolip(o) => format!(
                "lr={} search={:?} lambda={} epochs={} eps={}",
                o.lr, o.search, o.lambda.describe(), o.epochs, o.eps
            ),
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

/// Trains `method` on `task.train` (choosing hyper-parameters on `task.val`). CoOp trains
/// through the model's text tower, which a task does not hold: it goes through [`coop::fit`].
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
        Method::Coop(_) => Err(MethodError::NeedsModel { method: "coop" }),
        Method::TipAdapter(o) => tip_adapter::fit(task, o, false, progress),
        Method::TipAdapterF(o) => tip_adapter::fit(task, o, true, progress),
        Method::Gda(o) => gda::fit(task, o, progress),
        Method::Ape(o) => ape::fit(task, o, progress),
        Method::ApeT(o) => ape::fit_trained(task, o, progress),
        Method::LpPlusPlus(o) => lp_plus_plus::fit(task, o, progress),
        Method::Clap(o) => clap::fit(task, o, progress),
        Method::Prolip(o) => prolip::fit(task, o, progress),
    }
}

/// Validation and test accuracy (percent) of a fitted head. A ProLIP head scores the
/// pre-projection features of the same images; on a task without them there is nothing it
/// can score, and both accuracies are NaN (absent), never a guess.
pub fn evaluate(head: &Head, task: &FewShotTask) -> (f32, f32) {
    let pre = task.pre_projection.as_deref();
    if let (Head::Prolip(_), None) = (head, pre) {
        return (f32::NAN, f32::NAN);
    }
    let acc = |s: &LabelledSet, pre_x: Option<&Matrix>| {
        let x = match (head, pre_x) {
            (Head::Prolip(_), Some(x)) => x,
            _ => &s.features,
        };
        eval::accuracy(&head.logits(x), &s.labels)
    };
    (
        acc(&task.val, pre.map(|p| &p.val)),
        acc(&task.test, pre.map(|p| &p.test)),
    )
}
