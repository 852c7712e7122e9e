//! The model layer's error: loading a checkpoint, its config and tokenizer, finding it on the hub,
//! running it. Library errors are data: each variant carries the file, tensor key or value at
//! fault and what was expected, so the command line can print a complete story. The layers
//! above (data, features, methods, experiment, runner) have their own errors and wrap this one.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{path}: {msg}")]
    Config { path: PathBuf, msg: String },

    /// An OpenAI checkpoint whose tensor shapes give no architecture (kept whole, not as a
    /// source: its text is the message, as for `Limit`).
    #[error("{path}: {why}")]
    Architecture {
        path: PathBuf,
        why: crate::clip::load::state_dict::InferError,
    },

    /// A size in a file above its limit. The limit error is kept whole, not as `#[source]`:
    /// its text is the message, and a source would print it twice in the command's chain.
    #[error("{path}: {limit}")]
    Limit {
        path: PathBuf,
        limit: crate::limits::LimitError,
    },

    #[error("{file}: tensor `{name}` is stored as {dtype}, expected a float type (F32, F16, BF16 or F64): its values would be read as numbers it does not hold")]
    TensorDtype {
        file: PathBuf,
        name: String,
        dtype: String,
    },

    #[error("{file}: tensor `{name}` is missing (expected shape {expected:?})")]
    MissingTensor {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
    },

    #[error("{file}: tensor `{name}` has shape {actual:?}, expected {expected:?}")]
    TensorShape {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    #[error("{file}: {count} tensor(s) not used by the model, e.g. `{example}`: the checkpoint does not match its config")]
    UnusedTensors {
        file: PathBuf,
        count: usize,
        example: String,
    },

    #[error("{file}: cannot read PyTorch archive")]
    Archive {
        file: PathBuf,
        // Boxed: the archive's errors carry sizes and names, and `Error` travels by value.
        #[source]
        source: Box<crate::clip::load::torch_archive::ArchiveError>,
    },

    #[error("{file}: cannot read checkpoint: {msg}")]
    Checkpoint { file: PathBuf, msg: String },

    #[error("model `{spec}`: {msg}")]
    ModelNotFound { spec: String, msg: String },

    #[error("model `{spec}`: {missing}, and downloading from {endpoint} failed (pass a local directory, or fill the cache where the hub is reachable: `huggingface-cli download {repo}`)")]
    Download {
        spec: String,
        missing: String,
        endpoint: String,
        repo: String,
        #[source]
        source: Box<crate::clip::hub::HubError>,
    },

    #[error("{0}")]
    InvalidInput(String),

    /// A size an option asks for, above its limit.
    #[error(transparent)]
    SizeLimit(#[from] crate::limits::LimitError),

    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),

    #[error(transparent)]
    Image(#[from] crate::image::ImageError),

    #[error("tensor computation failed: {0}")]
    Candle(#[from] candle_core::Error),

    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
