//! Errors of the experiment: each names the file or value at fault and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExperimentError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: {source}")]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
    },

    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),

    #[error("{}: {msg}", path.display())]
    ShardManifest { path: PathBuf, msg: String },

    #[error(
        "{}: no shard results (results.shard-I-of-N.csv with its .json): `run --shard I/N \
         --out` this folder first",
        dir.display()
    )]
    NoShards { dir: PathBuf },

    #[error(
        "{}: shard files of different shard counts ({counts}): keep one run's shards in a \
         folder",
        dir.display()
    )]
    ShardCounts { dir: PathBuf, counts: String },

    #[error("{}: missing: shard {index}/{count} has not started (a shard writes it first)", path.display())]
    ShardMissing {
        path: PathBuf,
        index: usize,
        count: usize,
    },

    #[error(
        "{}: not the grid of {} (other methods, datasets, shots, seeds, protocol or cost \
         estimate, e.g. another cache): the shards of one grid must be run with the same \
         arguments on the same cache",
        path.display(), other.display()
    )]
    ShardGrids { path: PathBuf, other: PathBuf },

    #[error(
        "{}: shard {index}/{count} has not finished: {missing} of its rows are missing (the \
         first: {first}); run it again (it resumes) before joining",
        path.display()
    )]
    ShardUnfinished {
        path: PathBuf,
        index: usize,
        count: usize,
        missing: usize,
        first: String,
    },

    #[error(
        "{}: row {row} disagrees with the same row in {} ({columns} differ): the same fit \
         gave other measurements (another version, or other features under the same \
         identity); nothing was written",
        path.display(), other.display()
    )]
    RowsDisagree {
        path: PathBuf,
        other: PathBuf,
        row: String,
        columns: String,
    },

    /// A results file above the size the tool reads whole (kept whole, not as a source: its
    /// text is the message).
    #[error("{}: {limit}", path.display())]
    TooLarge {
        path: PathBuf,
        limit: crate::limits::LimitError,
    },

    /// The results file's lock (another run writing the same folder is waited for).
    #[error(transparent)]
    Lock(Box<crate::features::FeatureError>),

    /// Reading a model's files or config.
    #[error(transparent)]
    Clip(#[from] Box<crate::clip::error::Error>),

    #[error(
        "{path}: its columns are `{found}`, expected `{expected}`{hint}; move the file aside or \
         choose another output folder, so that results of different models or features are \
         never mixed"
    )]
    Columns {
        path: PathBuf,
        found: String,
        expected: String,
        hint: &'static str,
    },

    #[error("training {method} on {dataset} ({shots}-shot, seed {seed})")]
    Fit {
        method: String,
        dataset: String,
        shots: usize,
        seed: u64,
        /// A `MethodError`, or CoOp's `CoopError`.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// An option (by its name, e.g. `reduction`) that none of the chosen methods takes, or
    /// that means nothing under the protocol.
    #[error("{} does not apply to {to}: {why}", crate::hint::opt(option))]
    NotApplicable {
        option: &'static str,
        to: NotApplicableTo,
        why: String,
    },

    /// A method whose head cannot be tested under the protocol (base-to-new: scoring classes
    /// it never trained on).
    #[error("{method} cannot run under the {protocol} protocol: {why}")]
    Protocol {
        method: &'static str,
        protocol: super::Protocol,
        why: &'static str,
    },

    #[error(
        "the features of `{target}` come from model `{target_model}`, those of the source \
         `{trained_on}` from `{source_model}`: a head trained on one model's features cannot score \
         another's; extract both with the same model"
    )]
    TargetModel {
        trained_on: String,
        source_model: String,
        target: String,
        target_model: String,
    },

    /// A transfer protocol needs the dataset to train on; the others train on every dataset.
    #[error("{}", match protocol {
        super::Protocol::CrossDataset | super::Protocol::Domain => format!(
            "the {protocol} protocol trains on one dataset and tests on the others: name it with {}",
            crate::hint::opt("source")
        ),
        _ => format!("{} is for the cross-dataset and domain protocols only", crate::hint::opt("source")),
    })]
    Source { protocol: super::Protocol },

    #[error(transparent)]
    TooFewClasses(#[from] super::base_to_new::TooFewClasses),

    #[error("{what} is empty")]
    Empty { what: &'static str },

    #[error("cannot start the threads that fit the grid")]
    Threads(#[from] rayon::ThreadPoolBuildError),

    #[error(
        "dataset `{dataset}` is not in the feature cache {} (it has: {})",
        cache.display(),
        if available.is_empty() {
            format!("nothing; run {} first", crate::hint::Command::new("extract"))
        } else {
            available.join(", ")
        }
    )]
    UnknownDataset {
        dataset: String,
        cache: PathBuf,
        /// The datasets the cache holds; none before the first extraction.
        available: Vec<String>,
    },

    #[error("{path}: published numbers: {msg}")]
    Published { path: PathBuf, msg: String },

    #[error(
        "the head was trained on model {expected} (fingerprint {expected_fingerprint}) but \
         `{given}` has fingerprint {found}: its predictions would be wrong; pass the model it \
         was trained on, or {} to use this one anyway",
        crate::hint::switch("allow_model_mismatch")
    )]
    ModelMismatch {
        expected: String,
        expected_fingerprint: String,
        given: String,
        found: String,
    },

    #[error(
        "model `{given}` has fingerprint {found}, but the features were made by `{expected}` \
         (fingerprint {expected_fingerprint}): CoOp trains its prompts against those features \
         through the text tower of the same model; pass that model"
    )]
    FeaturesModel {
        given: String,
        found: String,
        expected: String,
        expected_fingerprint: String,
    },

    /// Loading the model CoOp trains through.
    #[error(transparent)]
    Coop(Box<crate::methods::coop::CoopError>),

    #[error(
        "the head records no model fingerprint (it was saved by an older version), so model \
         `{given}` cannot be checked; pass {} to use it anyway",
        crate::hint::switch("allow_model_mismatch")
    )]
    NoFingerprint { given: String },
}

/// What an option does not apply to.
#[derive(Debug, Clone, PartialEq)]
pub enum NotApplicableTo {
    /// The chosen methods, comma-separated.
    Methods(String),
    /// The protocol without a validation set.
    NoValidation,
}

impl std::fmt::Display for NotApplicableTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotApplicableTo::Methods(m) => f.write_str(m),
            NotApplicableTo::NoValidation => {
                f.write_str(&crate::hint::opt_value("validation", "none"))
            }
        }
    }
}

impl From<crate::clip::error::Error> for ExperimentError {
    fn from(e: crate::clip::error::Error) -> Self {
        ExperimentError::Clip(Box::new(e))
    }
}
