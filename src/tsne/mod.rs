//! How CLIP-Adapter reshapes the image feature space (Fig. 5 of Gao et al. 2021): the features
//! of a labelled set before and after the visual adapter, `f` and `α·A(f) + (1 − α)·f` (the
//! feature the head classifies), each mapped to 2-D by t-SNE ([`embed()`]), with numbers that say
//! what the picture shows ([`metrics`]): leave-one-out 5-NN accuracy and silhouette of the
//! classes in the feature space (cosine) and in the map (euclidean), and the map's
//! trustworthiness.
//!
//! [`adapter_tsne`] works on features in memory (the demo's); [`adapter_tsne_from_cache`] loads
//! a split of the feature cache and a head saved by `fit --save`, as `clip-adapter tsne` does.
//! [`AdapterTsne::write_figure`] draws the two maps side by side. [`score_tsne`] maps the set in
//! the class-score space of several heads, the paper's four (CLIP, CoOp, CLIP-Adapter with
//! α = 1 and CLIP-Adapter) in the demo ([`scores`]).

pub mod embed;
pub mod metrics;
pub mod scores;

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use embed::{embed, TsneOptions};
pub use metrics::{knn_preservation, separation, trustworthiness, Metric, Separation, KNN_K};
pub use scores::{centred_scores, score_tsne, NamedHead, ScorePanel, ScoreTsne};

use crate::features::task::{load_task, CacheQuery, TaskSource};
use crate::figure::scatter::{Panel, Scatter};
use crate::figure::FigureError;
use crate::methods::clip_adapter::AdapterModel;
use crate::methods::head;
use crate::methods::linalg::Matrix;
use crate::methods::{FewShotTask, LabelledSet, MethodError};

/// Why a t-SNE could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TsneError {
    #[error("perplexity {0} must be a number of at least 1")]
    Perplexity(f32),

    #[error("theta {0} must be above 0 (the exact t-SNE is theta → 0)")]
    Theta(f32),

    #[error("at least one iteration is needed")]
    NoIterations,

    /// The perplexity asks for more neighbours than the points have.
    #[error(
        "perplexity {perplexity} takes the {neighbours} nearest neighbours of each point, but there \
         are only {points} points: {}",
        match points.saturating_sub(1) / 3 {
            0 => "t-SNE needs at least 4 points".to_string(),
            most => format!("use a perplexity of at most {most}, or embed more points"),
        }
    )]
    PerplexityTooLarge {
        perplexity: f32,
        neighbours: usize,
        points: usize,
    },

    #[error("the adapter has no visual branch: the image features would not change")]
    NoVisualBranch,

    #[error(
        "head `{name}` scores {space}: the panels map the class scores of heads on the cached \
         image features"
    )]
    OtherFeatureSpace { name: String, space: &'static str },

    #[error("head `{name}` scores {scored} classes, the set has {classes}")]
    HeadClasses {
        name: String,
        scored: usize,
        classes: usize,
    },

    #[error("label {label} is out of range: there are {classes} class names")]
    Label { label: usize, classes: usize },

    #[error("the features are {found} wide, the head expects {expected}")]
    FeatureWidth { found: usize, expected: usize },

    /// Two lists that must have one entry per point do not.
    #[error("{first} {first_what} but {second} {second_what}")]
    Counts {
        first: usize,
        first_what: &'static str,
        second: usize,
        second_what: &'static str,
    },

    #[error(transparent)]
    Features(#[from] Box<crate::features::FeatureError>),

    #[error(
        "the points hold {classes} class(es) among {points} points: separation needs at least \
         2 classes and fewer classes than points"
    )]
    Classes { classes: usize, points: usize },

    #[error(
        "{k} neighbours among {points} points: k must be at least 1 and below half the points"
    )]
    Neighbours { k: usize, points: usize },

    #[error(
        "only {points} points: the {KNN_K}-NN numbers and the trustworthiness of a map need at \
         least {needed}"
    )]
    TooFewPoints { points: usize, needed: usize },

    #[error("feature row {row} holds a value that is not finite")]
    NonFinite { row: usize },

    #[error("feature row {row} is all zeros: it has no direction to compare")]
    ZeroRow { row: usize },

    #[error(
        "t-SNE diverged (point {row} left the finite numbers); try another seed or perplexity"
    )]
    Diverged { row: usize },

    #[error(
        "{}: a `{kind}` head has no visual adapter; the t-SNE shows the image features before \
         and after CLIP-Adapter's visual adapter ({} or `both`)",
        path.display(),
        crate::hint::Command::new("fit").given("method", "clip-adapter").given("branch", "visual")
    )]
    NotVisualAdapter { path: PathBuf, kind: String },

    #[error(transparent)]
    ModelMismatch(Box<ModelMismatch>),

    #[error(
        "{}: the head records no model fingerprint (it was saved by an older version), so it \
         cannot be checked against the features' model; save it again with {}",
        path.display(),
        crate::hint::Command::new("fit").switch("save")
    )]
    NoFingerprint { path: PathBuf },

    #[error("{}: the head's classes ({head}) are not the dataset `{dataset}`'s ({features})", path.display())]
    Classnames {
        path: PathBuf,
        dataset: String,
        head: String,
        features: String,
    },

    #[error("{}: the head expects {head}-wide features, the cached ones are {features} wide", path.display())]
    Width {
        path: PathBuf,
        head: usize,
        features: usize,
    },

    #[error("cannot start the t-SNE's thread")]
    ThreadPool(#[source] rayon::ThreadPoolBuildError),

    #[error("cannot create the folder {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Method(#[from] MethodError),

    #[error(transparent)]
    Figure(#[from] FigureError),
}

/// A head trained on another model's features than the cache's.
#[derive(Debug, thiserror::Error)]
#[error(
    "{}: the head was trained on features of model {head_model} (fingerprint \
     {head_fingerprint}), but the cached features of `{dataset}` are from {features_model} \
     (fingerprint {features_fingerprint}): the adapter would be applied to another model's \
     features",
    path.display()
)]
pub struct ModelMismatch {
    pub path: PathBuf,
    pub dataset: String,
    pub head_model: String,
    pub head_fingerprint: String,
    pub features_model: String,
    pub features_fingerprint: String,
}

/// One space (before or after the adapter): its map and its numbers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpaceView {
    /// The t-SNE map, one `[x, y]` per point in the order of the input.
    pub coordinates: Vec<[f32; 2]>,
    /// Class separation in the feature space (cosine).
    pub features: Separation,
    /// Class separation in the map (euclidean).
    pub map: Separation,
    /// Trustworthiness of the map, 5 neighbours (1: no false neighbours).
    pub trustworthiness: f32,
}

impl SpaceView {
    fn new(features: &Matrix, labels: &[usize], opts: &TsneOptions) -> Result<Self, TsneError> {
        let map = embed(features, opts)?;
        Ok(SpaceView {
            features: separation(features, labels, Metric::Cosine, KNN_K)?,
            map: separation(&map, labels, Metric::Euclidean, KNN_K)?,
            trustworthiness: trustworthiness(features, Metric::Cosine, &map, KNN_K)?,
            coordinates: map.data.chunks_exact(2).map(|p| [p[0], p[1]]).collect(),
        })
    }
}

/// The features of a labelled set before and after CLIP-Adapter's visual adapter, mapped and
/// measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdapterTsne {
    pub classnames: Vec<String>,
    /// Class index of each point.
    pub labels: Vec<usize>,
    pub options: TsneOptions,
    /// The frozen CLIP features `f`.
    pub before: SpaceView,
    /// The adapted features `α·A(f) + (1 − α)·f`.
    pub after: SpaceView,
}

/// Maps `features` (N × D, un-normalised as the cache stores them) and the adapter's
/// `α·A(f) + (1 − α)·f` of them; `labels` index `classnames`. The adapter must have a visual
/// branch.
pub fn adapter_tsne(
    features: &Matrix,
    labels: &[usize],
    classnames: &[String],
    adapter: &AdapterModel,
    opts: &TsneOptions,
) -> Result<AdapterTsne, TsneError> {
    if let Some(&l) = labels.iter().find(|&&l| l >= classnames.len()) {
        return Err(TsneError::Label {
            label: l,
            classes: classnames.len(),
        });
    }
    if features.cols != adapter.classes.cols {
        return Err(TsneError::FeatureWidth {
            found: features.cols,
            expected: adapter.classes.cols,
        });
    }
    let needed = 2 * KNN_K + 1;
    if features.rows < needed {
        return Err(TsneError::TooFewPoints {
            points: features.rows,
            needed,
        });
    }
    opts.check(features.rows)?;
    let adapted = (adapter.adapted_features(features)).ok_or(TsneError::NoVisualBranch)?;
    // Each map is fitted on one thread (see `embed`): the two run side by side.
    let (before, after) = rayon::join(
        || SpaceView::new(features, labels, opts),
        || SpaceView::new(&adapted, labels, opts),
    );
    Ok(AdapterTsne {
        classnames: classnames.to_vec(),
        labels: labels.to_vec(),
        options: opts.clone(),
        before: before?,
        after: after?,
    })
}

/// Which cached set to map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// The few-shot training images (evaluation view).
    Train,
    /// The few-shot validation images.
    Val,
    /// The full test split (the paper's figure).
    Test,
}

impl std::str::FromStr for Split {
    type Err = crate::unknown_name::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            _ => Err(crate::unknown_name::UnknownName::new(
                "split",
                s,
                &["train", "val", "test"],
            )),
        }
    }
}

impl Split {
    /// The task's set of that split.
    pub fn of(self, task: &FewShotTask) -> &LabelledSet {
        match self {
            Split::Train => &task.train,
            Split::Val => &task.val,
            Split::Test => &task.test,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// A t-SNE made from the feature cache: the result and where its inputs came from.
#[derive(Debug, Clone)]
pub struct CachedTsne {
    pub tsne: AdapterTsne,
    pub source: TaskSource,
}

/// Loads `split` of the task `query` names (the cache lookup `fit` and `predict` use) and the
/// CLIP-Adapter head at `head_path`, refusing a head of another kind, one without a visual
/// adapter, or one trained on another model's features or other classes; then maps both spaces.
pub fn adapter_tsne_from_cache(
    query: &CacheQuery,
    head_path: &Path,
    split: Split,
    opts: &TsneOptions,
) -> Result<CachedTsne, TsneError> {
    let adapter = load_adapter(head_path)?;
    let (task, source) = load_task(query).map_err(Box::new)?;
    check_head(
        head_path,
        &adapter.1,
        &task.classnames,
        &source,
        &query.dataset,
    )?;
    let set = split.of(&task);
    if set.features.cols != adapter.0.classes.cols {
        return Err(TsneError::Width {
            path: head_path.to_path_buf(),
            head: adapter.0.classes.cols,
            features: set.features.cols,
        });
    }
    let tsne = adapter_tsne(
        &set.features,
        &set.labels,
        &task.classnames,
        &adapter.0,
        opts,
    )?;
    Ok(CachedTsne { tsne, source })
}

/// A CLIP-Adapter head with a visual adapter, and what its file says.
fn load_adapter(path: &Path) -> Result<(AdapterModel, head::HeadInfo), TsneError> {
    if crate::methods::coop::head::is_coop_head(path) {
        return Err(TsneError::NotVisualAdapter {
            path: path.to_path_buf(),
            kind: "coop".into(),
        });
    }
    let (head, info) = head::load(path)?;
    match head.downcast_ref::<AdapterModel>() {
        Some(a) if a.params.visual.is_some() => Ok((a.clone(), info)),
        Some(_) => Err(TsneError::NotVisualAdapter {
            path: path.to_path_buf(),
            kind: "clip-adapter (text branch only)".into(),
        }),
        None => Err(TsneError::NotVisualAdapter {
            path: path.to_path_buf(),
            kind: info.method,
        }),
    }
}

/// Refuses a head saved without the model's fingerprint, trained on another model's features
/// than the cache's, or on other classes.
pub(crate) fn check_head(
    path: &Path,
    info: &head::HeadInfo,
    classnames: &[String],
    source: &TaskSource,
    dataset: &str,
) -> Result<(), TsneError> {
    match &info.model_fingerprint {
        None => {
            return Err(TsneError::NoFingerprint {
                path: path.to_path_buf(),
            })
        }
        Some(f) if *f != source.model => {
            return Err(TsneError::ModelMismatch(Box::new(ModelMismatch {
                path: path.to_path_buf(),
                dataset: dataset.to_string(),
                head_model: info.model.clone(),
                head_fingerprint: f.clone(),
                features_model: source.model_name.clone(),
                features_fingerprint: source.model.clone(),
            })))
        }
        Some(_) => {}
    }
    if info.classnames != classnames {
        let list = |c: &[String]| {
            let mut s = c.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
            if c.len() > 5 {
                s.push_str(&format!(", … {} in all", c.len()));
            }
            s
        };
        return Err(TsneError::Classnames {
            path: path.to_path_buf(),
            dataset: dataset.to_string(),
            head: list(&info.classnames),
            features: list(classnames),
        });
    }
    Ok(())
}

impl AdapterTsne {
    /// The numbers of both spaces as a text table: a header and a line per space.
    pub fn table(&self) -> String {
        let head = [
            "5-NN features",
            "silhouette features",
            "5-NN map",
            "silhouette map",
        ];
        let mut out = format!(
            "{:<22} {:>14} {:>20} {:>10} {:>15} {:>16}",
            "", head[0], head[1], head[2], head[3], "trustworthiness"
        );
        for (name, v) in [
            ("before (CLIP)", &self.before),
            ("after (CLIP-Adapter)", &self.after),
        ] {
            let (f, m) = (&v.features, &v.map);
            out.push_str(&format!(
                "\n{name:<22} {:>12.1} % {:>20.3} {:>8.1} % {:>15.3} {:>16.3}",
                100.0 * f.knn_accuracy,
                f.silhouette,
                100.0 * m.knn_accuracy,
                m.silhouette,
                v.trustworthiness
            ));
        }
        out
    }

    /// The panel title of one space, with its numbers in the map.
    fn title(&self, which: &str, view: &SpaceView) -> String {
        format!(
            "{which}: {KNN_K}-NN {:.1} %, silhouette {:.2}",
            100.0 * view.map.knn_accuracy,
            view.map.silhouette
        )
    }

    /// The two maps side by side, coloured by class, as a chart.
    pub fn chart(&self) -> Scatter {
        let panel = |which: &str, view: &SpaceView| Panel {
            title: self.title(which, view),
            points: view.coordinates.clone(),
        };
        Scatter {
            panels: vec![
                panel("before (CLIP)", &self.before),
                panel("after (CLIP-Adapter)", &self.after),
            ],
            labels: self.labels.clone(),
            classnames: self.classnames.clone(),
        }
    }

    /// Writes `STEM.svg` and `STEM.png`, creating their folder if needed.
    pub fn write_figure(&self, stem: &Path) -> Result<[PathBuf; 2], TsneError> {
        create_parent(stem)?;
        Ok(crate::figure::write_figure(&self.chart(), stem)?)
    }
}

/// Creates the folder a figure's files go into.
fn create_parent(stem: &Path) -> Result<(), TsneError> {
    if let Some(dir) = stem.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| TsneError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(())
}
