//! Why a run, a sweep or a fit stopped, and why a run's tables leave the published numbers out.

use std::path::PathBuf;

use crate::experiment::sweep::SweepError;
use crate::experiment::ExperimentError;
use crate::features::task::Shots;
use crate::methods::coop::CoopError;
use crate::methods::MethodError;
use crate::report::ReportError;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Experiment(Box<ExperimentError>),

    #[error(transparent)]
    Sweep(Box<SweepError>),

    #[error(transparent)]
    Report(Box<ReportError>),

    #[error(transparent)]
    Method(Box<MethodError>),

    #[error(transparent)]
    Coop(Box<CoopError>),

    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),

    #[error("finding model `{spec}`")]
    FindModel {
        spec: String,
        #[source]
        source: Box<crate::clip::error::Error>,
    },

    #[error("loading {dataset} {shots}-shot seed {seed}")]
    LoadTask {
        dataset: String,
        shots: Shots,
        seed: u64,
        #[source]
        source: Box<crate::features::FeatureError>,
    },

    #[error("loading the text tower of model `{spec}` for CoOp")]
    PromptModel {
        spec: String,
        #[source]
        source: Box<RunError>,
    },

    #[error("creating {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("a sweep fits CLIP-Adapter only, which needs neither a text tower nor images")]
    NoTextTower,

    #[error(transparent)]
    Clip(Box<crate::clip::error::Error>),

    #[error("fingerprinting model {}", dir.display())]
    Fingerprint {
        dir: PathBuf,
        #[source]
        source: Box<crate::clip::error::Error>,
    },

    #[error("loading model from {}", dir.display())]
    LoadModel {
        dir: PathBuf,
        #[source]
        source: Box<crate::clip::error::Error>,
    },

    /// The model is not the one the head was trained on (or cannot be checked).
    #[error("{}", head.display())]
    HeadModel {
        head: PathBuf,
        #[source]
        source: Box<ExperimentError>,
    },

    #[error("loading the text tower of {}", dir.display())]
    TextTower {
        dir: PathBuf,
        #[source]
        source: Box<CoopError>,
    },

    #[error("{}: encoding its prompts", head.display())]
    EncodePrompts {
        head: PathBuf,
        #[source]
        source: Box<CoopError>,
    },

    #[error("{}: the head expects {expected}-wide features but model `{model}` gives {found}", head.display())]
    HeadWidth {
        head: PathBuf,
        expected: usize,
        model: String,
        found: usize,
    },

    #[error("feature matrix")]
    FeatureMatrix,

    #[error("{}: a `{kind}` head; only a CLIP-LoRA head holds updates to merge into a model", head.display())]
    NotLoraHead { head: PathBuf, kind: &'static str },

    #[error("{} exists and is not empty: give a new folder for the merged model", path.display())]
    OutExists { path: PathBuf },

    /// Listed images are not on disk, and the extraction was not told to leave them out.
    #[error(
        "rerun with {} to leave the missing images out",
        crate::hint::switch("skip_bad")
    )]
    MissingImages(#[source] Box<crate::data::DataError>),

    #[error("encoding {dataset}")]
    Encoding {
        dataset: String,
        #[source]
        source: Box<crate::features::FeatureError>,
    },

    #[error(transparent)]
    Features(Box<crate::features::FeatureError>),

    #[error(transparent)]
    Data(Box<crate::data::DataError>),

    #[error("running the demo with the model in {}", model_dir.display())]
    Demo {
        model_dir: PathBuf,
        #[source]
        source: Box<crate::demo::DemoError>,
    },

    #[error("writing the results as CSV")]
    DemoCsv(#[source] csv::Error),

    #[error("drawing the t-SNE of {task}")]
    Tsne {
        task: String,
        #[source]
        source: Box<crate::tsne::TsneError>,
    },

    #[error("writing the head's metadata")]
    HeadInfo(#[source] serde_json::Error),
}

impl From<crate::features::FeatureError> for RunError {
    fn from(e: crate::features::FeatureError) -> Self {
        RunError::Features(Box::new(e))
    }
}

impl From<crate::data::DataError> for RunError {
    fn from(e: crate::data::DataError) -> Self {
        RunError::Data(Box::new(e))
    }
}

impl From<crate::clip::error::Error> for RunError {
    fn from(e: crate::clip::error::Error) -> Self {
        RunError::Clip(Box::new(e))
    }
}

impl From<ExperimentError> for RunError {
    fn from(e: ExperimentError) -> Self {
        RunError::Experiment(Box::new(e))
    }
}

impl From<SweepError> for RunError {
    fn from(e: SweepError) -> Self {
        RunError::Sweep(Box::new(e))
    }
}

impl From<ReportError> for RunError {
    fn from(e: ReportError) -> Self {
        RunError::Report(Box::new(e))
    }
}

impl From<MethodError> for RunError {
    fn from(e: MethodError) -> Self {
        RunError::Method(Box::new(e))
    }
}

impl From<CoopError> for RunError {
    fn from(e: CoopError) -> Self {
        RunError::Coop(Box::new(e))
    }
}

/// Why the tables of a run carry no published numbers although a file of them was given.
#[derive(Debug, thiserror::Error)]
pub enum NoPublished {
    /// The model the rows name cannot be found, so its backbone is unknown.
    #[error("cannot read the model behind the features to know its backbone: {0}")]
    ModelNotFound(#[source] Box<RunError>),

    /// The model found under that name has another fingerprint than the features'.
    #[error("{} is not the model that made the features (fingerprint {fingerprint})", dir.display())]
    OtherModel { dir: PathBuf, fingerprint: String },

    /// The model's image tower is not one of OpenAI's released shapes.
    #[error("{} is not one of OpenAI's CLIP backbones", dir.display())]
    NotOpenAi { dir: PathBuf },
}
