//! The method trait: what every few-shot method is, whatever it does inside.
//!
//! A method is two things. Its **card** ([`MethodCard`], a `static` in its own file) says what
//! the method is without any options: its name on the command line and in results, its paper
//! and reference code, its figure colour, its name in published tables, how it trains without a
//! validation set, how its authors augment the training images, which protocol options it takes
//! and its protocol values per dataset, and the codec of the head it produces. Its **options**
//! type implements [`FewShotMethod`]: fit a head on a task, describe the options as a results
//! row records them, take a seed.
//!
//! [`super::registry`] lists the cards; everything that used to be a central `match` over the
//! methods (tables, figures, the demo, `--help`, the protocol's checks, head files) reads them.
//! Adding a method is one file with its card and options, and one line in the registry.

use std::any::Any;
use std::fmt;

use super::coop::{CoopHead, PromptModel};
use super::head::HeadCodec;
use super::overrides::MethodOverrides;
use super::{FewShotTask, Fitted, MethodError, Progress};

/// Where a method's training images come from and how they are augmented, as its authors'
/// code does it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Augmentation {
    /// Nothing is trained on the images one by one, or the method averages no views: the
    /// centre crop only.
    None,
    /// Random resized crops with this scale range (and horizontal flips when `flip`), a fresh
    /// one per epoch in the authors' code; here one cached view per epoch, `epoch mod V`.
    RandomResizedCrop {
        scale: (f32, f32),
        flip: bool,
        /// Where the authors do it, for the docs and `--help`.
        source: &'static str,
    },
}

impl Augmentation {
    /// Whether the method trains on augmented views when the cache has some.
    pub fn augments(self) -> bool {
        !matches!(self, Augmentation::None)
    }
}

/// What a method reads besides the projected features of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// The projected features and the text classifier only.
    Features,
    /// The features before the image tower's last projection, and that projection.
    PreProjection,
    /// The text tower of the model that made the features (prompts are trained through it).
    TextTower,
    /// The model's files and the task's images themselves: it trains through the image tower
    /// (CLIP-LoRA), so its test features are its own.
    Images,
}

/// The images behind a draw: the files of its training rows and of its test rows, in the rows'
/// order, and the evaluation transform they were encoded with.
#[derive(Debug, Clone)]
pub struct DrawImages {
    pub train: Vec<std::path::PathBuf>,
    /// What seeds each training image's random crops: its path relative to the dataset's image
    /// root (as extraction seeds its cached views), so that a draw's crops, and the fit, do not
    /// depend on where the images live.
    pub train_keys: Vec<String>,
    pub test: Vec<std::path::PathBuf>,
    pub preprocess: crate::image::Preprocess,
}

/// What a [`Needs::Images`] method reads besides the features.
pub struct ImageContext {
    /// The model that made the task's features.
    pub model: crate::clip::ModelFiles,
    pub images: DrawImages,
    /// The prompt templates of the task's text features, in order.
    pub templates: Vec<String>,
    /// The arithmetic the features were made at, which a method running the model's towers
    /// runs them at too.
    pub precision: crate::clip::Precision,
}

/// What the registry knows about a method before any option is set.
pub struct MethodCard {
    /// The name on the command line, in `results.csv` and in head files.
    pub name: &'static str,
    /// The name in prose and tables' headings.
    pub title: &'static str,
    /// Authors, venue and year.
    pub paper: &'static str,
    /// The reference implementation this one is checked against.
    pub code: &'static str,
    /// Its colour in every figure (RGB).
    pub colour: (u8, u8, u8),
    /// Labelled variants with colours of their own (`clip-adapter-text`).
    pub variant_colours: &'static [(&'static str, (u8, u8, u8))],
    /// Its name in the published-results CSV, when published numbers exist.
    pub reported_as: Option<&'static str>,
    /// What it does under `--validation none`, where every choice made on validation falls
    /// back on a default or a validation-free rule.
    pub without_validation: &'static str,
    pub augmentation: Augmentation,
    pub needs: Needs,
    /// The protocol options (`MethodOverrides`, by their names on the command line) it takes.
    pub options: &'static [&'static str],
    /// The protocol's method for a dataset and seed with the user's options on top.
    pub configure: fn(&MethodOverrides, &str, u64) -> Method,
    /// The head it fits, and how that head is written and read.
    pub head: &'static HeadCodec,
    /// Whether its head can score classes it never trained on (base-to-new generalisation).
    pub new_classes: NewClasses,
}

/// Whether a method's head can score classes it never trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewClasses {
    /// From their text embeddings: the head's own transform of the image features (or of the
    /// text embeddings, or CoOp's learned context, or CLIP-LoRA's updates of both towers,
    /// through which the new class names and their images are encoded) applies to any class,
    /// as CoCoOp's base-to-new protocol evaluates it.
    FromText,
    /// It cannot; why not.
    No(&'static str),
}

impl fmt::Debug for MethodCard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MethodCard")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// What a fit gets besides the task.
pub struct FitContext<'a> {
    pub progress: &'a mut dyn FnMut(Progress),
    /// The text tower of the model that made the task's features, for [`Needs::TextTower`].
    pub text_tower: Option<&'a PromptModel>,
    /// The model's files and the task's images, for [`Needs::Images`].
    pub images: Option<&'a ImageContext>,
}

/// A method with its options.
pub trait FewShotMethod: fmt::Debug + Send + Sync + 'static {
    fn card(&self) -> &'static MethodCard;

    /// The options as one stable `key=value` string (head metadata).
    fn describe(&self) -> String;

    /// Trains on `task.train` (choosing hyper-parameters on `task.val` when it is not empty).
    fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError>;

    /// The training seed (methods that draw no random numbers ignore it).
    fn set_seed(&mut self, _seed: u64) {}

    /// Adapts options tied to the feature width (APE's channel counts).
    fn set_feature_width(&mut self, _dim: usize) {}

    /// Multiplies the SGD learning rate, for methods whose gradients scale with CLIP's logit
    /// scale (the demo trains on a model whose scale is not CLIP's 100).
    fn scale_sgd_lr(&mut self, _factor: f32) {}

    fn clone_box(&self) -> Box<dyn FewShotMethod>;

    fn as_any(&self) -> &dyn Any;
}

/// A fitted method: the head on features, and what only some methods produce besides.
#[derive(Debug, Clone)]
pub struct Fit {
    pub fitted: Fitted,
    /// CoOp's own head: the learned context, re-encoded through the model when used.
    pub prompt: Option<CoopHead>,
    /// The test set as the method's own adapted image tower encodes it (CLIP-LoRA), which its
    /// head scores instead of the cached features.
    pub adapted_test: Option<Box<super::LabelledSet>>,
}

impl From<Fitted> for Fit {
    fn from(fitted: Fitted) -> Self {
        Fit {
            fitted,
            prompt: None,
            adapted_test: None,
        }
    }
}

/// Which method, without its options: a registry card, compared by name.
#[derive(Clone, Copy)]
pub struct MethodKind(pub &'static MethodCard);

impl MethodKind {
    /// Every method, in the registry's order (the order of tables and figures).
    pub fn all() -> &'static [MethodKind] {
        super::registry::ALL
    }

    /// The name used on the command line and in results.
    pub fn name(self) -> &'static str {
        self.0.name
    }

    pub fn card(self) -> &'static MethodCard {
        self.0
    }

    /// Position in the registry.
    pub fn rank(self) -> usize {
        Self::all()
            .iter()
            .position(|k| k.name() == self.name())
            .unwrap_or(usize::MAX)
    }

    /// The method with its default options (the protocol's values on an unnamed dataset).
    pub fn with_defaults(self) -> Method {
        (self.0.configure)(&MethodOverrides::default(), "", 0)
    }
}

impl PartialEq for MethodKind {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}
impl Eq for MethodKind {}

impl std::hash::Hash for MethodKind {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name().hash(state)
    }
}

impl PartialOrd for MethodKind {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for MethodKind {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.rank(), self.name()).cmp(&(other.rank(), other.name()))
    }
}

impl fmt::Debug for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MethodKind({})", self.name())
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A name that is not a registered method.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("unknown method `{name}`; expected one of: {}", MethodKind::all().iter().map(|k| k.name()).collect::<Vec<_>>().join(", "))]
pub struct UnknownMethod {
    pub name: String,
}

impl std::str::FromStr for MethodKind {
    type Err = UnknownMethod;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        MethodKind::all()
            .iter()
            .copied()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownMethod { name: s.into() })
    }
}

/// A method and its options.
pub struct Method(Box<dyn FewShotMethod>);

impl Method {
    pub fn new(method: impl FewShotMethod) -> Self {
        Method(Box::new(method))
    }

    pub fn kind(&self) -> MethodKind {
        MethodKind(self.0.card())
    }

    pub fn card(&self) -> &'static MethodCard {
        self.0.card()
    }

    /// The name used on the command line and in results.
    pub fn name(&self) -> &'static str {
        self.0.card().name
    }

    /// The options as one stable `key=value` string (results rows, head metadata).
    pub fn describe(&self) -> String {
        self.0.describe()
    }

    /// The options of a method of type `T` (`None` for another method).
    pub fn options<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }

    /// The same method with its training seed set.
    pub fn with_seed(&self, seed: u64) -> Method {
        let mut m = self.0.clone_box();
        m.set_seed(seed);
        Method(m)
    }

    /// The protocol's method for features `dim` wide.
    pub fn for_feature_width(&self, dim: usize) -> Method {
        let mut m = self.0.clone_box();
        m.set_feature_width(dim);
        Method(m)
    }

    /// The same method with its SGD learning rate multiplied by `factor`.
    pub fn with_sgd_lr_scaled(&self, factor: f32) -> Method {
        let mut m = self.0.clone_box();
        m.scale_sgd_lr(factor);
        Method(m)
    }

    /// Fits on `task` after checking it.
    pub fn fit(&self, task: &FewShotTask, cx: &mut FitContext) -> Result<Fit, MethodError> {
        task.validate()?;
        let missing = match self.card().needs {
            Needs::TextTower => cx.text_tower.is_none(),
            Needs::Images => cx.images.is_none(),
            Needs::Features | Needs::PreProjection => false,
        };
        if missing {
            return Err(MethodError::NeedsModel {
                method: self.name(),
            });
        }
        self.0.fit(task, cx)
    }
}

impl Clone for Method {
    fn clone(&self) -> Self {
        Method(self.0.clone_box())
    }
}

impl fmt::Debug for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Method {
    /// The method's name (its options: [`Method::describe`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Method {
    type Err = UnknownMethod;
    /// A method name with the method's default options.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<MethodKind>().map(MethodKind::with_defaults)
    }
}

/// Implements the boilerplate of [`FewShotMethod`] (`card`, `clone_box`, `as_any`) for an
/// options type that is `Clone`.
macro_rules! method_boilerplate {
    ($card:expr) => {
        fn card(&self) -> &'static $crate::methods::MethodCard {
            &$card
        }
        fn clone_box(&self) -> Box<dyn $crate::methods::FewShotMethod> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}
pub(crate) use method_boilerplate;
