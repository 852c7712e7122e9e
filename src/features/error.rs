//! Why features could not be extracted, cached or merged. Every variant names the file.

use std::path::PathBuf;

use crate::hint;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FeatureError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: not a valid feature file: {msg}; delete it and extract again", path.display())]
    Format { path: PathBuf, msg: String },

    #[error(
        "{}: feature file version {found}, this clip-adapter reads version {expected} (the \
         format changed); delete the old files (or the whole cache folder) and extract again",
        path.display()
    )]
    Version {
        path: PathBuf,
        found: u32,
        expected: u32,
    },

    /// The data no longer matches the checksum its header recorded (overwritten, truncated).
    #[error("{}: damaged: {msg}; extracting again rebuilds it", path.display())]
    Damaged { path: PathBuf, msg: String },

    #[error(
        "{count} image(s) could not be read (rerun with {} to leave them out):\n  {}",
        hint::switch("skip_bad"),
        details.join("\n  ")
    )]
    BadImages { count: usize, details: Vec<String> },

    #[error(
        "{}: made with {skip_bad}, it lacks {count} unreadable image(s) (first: {first}); rerun \
         with {skip_bad} to use it, or delete it",
        path.display(),
        skip_bad = hint::switch("skip_bad")
    )]
    SkippedInCache {
        path: PathBuf,
        count: usize,
        first: String,
    },

    #[error(
        "stopped after {done} of {total} images of {set}; the finished chunks are kept in {} and \
         the same command resumes from there",
        partial.display()
    )]
    Interrupted {
        set: String,
        done: usize,
        total: usize,
        partial: PathBuf,
    },

    /// A set of imported features was handed to the encoder.
    #[error("{set}: imported features have no images to encode")]
    NotEncodable { set: String },

    #[error("{}: {why}: a method that trains through the image tower needs the images the features were extracted from", path.display())]
    NoImages { path: PathBuf, why: &'static str },

    #[error("shard `{0}`: expected i/n with 0 <= i < n, e.g. 0/4")]
    BadShard(String),

    #[error("{}: cannot merge: {msg}", path.display())]
    Merge { path: PathBuf, msg: String },

    /// Parts that do not join (kept whole, not as a source: its text is the message).
    #[error("{}: cannot merge: {why}", path.display())]
    Join {
        path: PathBuf,
        why: super::cache::JoinError,
    },

    /// The model failed to load or to encode (boxed: the model's errors are large).
    #[error(transparent)]
    Model(Box<crate::Error>),

    /// What the cache lacks or holds twice, for a task (boxed: it carries lists).
    #[error("feature cache {}: {problem}", dir.display())]
    Cache {
        dir: PathBuf,
        problem: Box<super::task::CacheProblem>,
    },

    /// The cached features do not make a task (labels out of range, empty sets).
    #[error(transparent)]
    Task(#[from] Box<crate::methods::MethodError>),

    /// A size an option asks for, above its limit.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),

    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),

    /// The dataset could not be read.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
}

impl From<crate::methods::MethodError> for FeatureError {
    fn from(e: crate::methods::MethodError) -> Self {
        FeatureError::Task(Box::new(e))
    }
}

/// The feature layer's result.
pub type Result<T> = std::result::Result<T, FeatureError>;

/// The model layer's errors, and what it forwards (tensor math, images, sizes, writes).
macro_rules! from_model {
    ($($t:ty),+) => {$(
        impl From<$t> for FeatureError {
            fn from(e: $t) -> Self {
                FeatureError::Model(Box::new(e.into()))
            }
        }
    )+};
}
from_model!(
    crate::Error,
    candle_core::Error,
    crate::image::ImageError,
    crate::tokenizer::TokenizerError
);

impl FeatureError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        FeatureError::Io {
            path: path.into(),
            source,
        }
    }
}
