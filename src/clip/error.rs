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

    #[error("model `{spec}`: {why}")]
    ModelNotFound { spec: String, why: NotFound },

    #[error("model `{spec}`: {missing}, and downloading from {endpoint} failed (pass a local directory, or fill the cache where the hub is reachable: `huggingface-cli download {repo}`)")]
    Download {
        spec: String,
        missing: String,
        endpoint: String,
        repo: String,
        #[source]
        source: Box<crate::clip::hub::HubError>,
    },

    /// Input the model cannot take (the caller can correct it).
    #[error(transparent)]
    Input(#[from] InputError),

    /// A SigLIP model where only CLIP's architecture is implemented (training a model from
    /// scratch, writing its config).
    #[error("{what} is implemented for CLIP models only, not for SigLIP")]
    SiglipUnsupported { what: &'static str },

    /// An EVA02 image tower where only CLIP's ViT and ModifiedResNet are implemented (training
    /// a model from scratch, writing its config).
    #[error("{what} is implemented for CLIP's ViT and ResNet image towers only, not for EVA02")]
    EvaUnsupported { what: &'static str },

    /// A training thread panicked while it held the weights' lock: the weights may be half
    /// updated, so training stops.
    #[error("CLIP-LoRA: {why}")]
    Lora { why: String },

    #[error("a training thread panicked while holding the weights")]
    Poisoned,

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

/// Input a model, its tokenizer or a zero-shot classifier cannot take: one variant per mistake,
/// with what was given and what is expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error(
        "template `{template}` must contain exactly one `{{}}` for the class name, found {found}"
    )]
    Template { template: String, found: usize },

    #[error("the label list is empty: give at least one class name")]
    NoLabels,

    /// `index` counts from 1.
    #[error("label {index} is empty")]
    EmptyLabel { index: usize },

    #[error("no prompt template given")]
    NoTemplates,

    #[error("no images given")]
    NoImages,

    #[error("image tensor has shape ({}, {}, {}), the model expects ({channels}, {size}, {size})", found[0], found[1], found[2])]
    ImageShape {
        found: [usize; 3],
        channels: usize,
        size: usize,
    },

    /// `index` counts from 1.
    #[error("token sequence {index} has no end-of-text token (id {end_token})")]
    NoEndToken { index: usize, end_token: u32 },

    #[error("token sequences must all have the same length between 1 and {context_length}")]
    TokenLengths { context_length: usize },

    #[error("token id {id} is outside the model's vocabulary of {vocab_size} tokens")]
    TokenId { id: u32, vocab_size: usize },

    #[error(
        "{}the tokenizer has {tokenizer} tokens but the model's text tower only {model}: put the \
         model's own tokenizer files (tokenizer.json, or vocab.json + merges.txt) in its directory",
        dir.as_ref().map(|d| format!("{}: ", d.display())).unwrap_or_default()
    )]
    TokenizerVocabulary {
        /// The model's directory, where known.
        dir: Option<PathBuf>,
        tokenizer: usize,
        model: usize,
    },

    #[error(
        "prompt embeddings of shape {shape:?} with {ends} end positions do not fit a text tower of \
         width {width} and context length {context_length}"
    )]
    PromptShape {
        shape: [usize; 3],
        ends: usize,
        width: usize,
        context_length: usize,
    },

    #[error("end-of-text position {position} is outside sequences of length {length}")]
    EndPosition { position: usize, length: usize },

    #[error("positional embedding has {rows} rows, not a square grid plus one")]
    PositionGrid { rows: usize },
}

/// Why a model argument names no model: what was looked for, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotFound {
    #[error("not a directory")]
    NotADirectory,

    #[error("not a file")]
    NotAFile,

    #[error(
        "no config.json (transformers layout) or open_clip_config.json (open_clip layout) in the \
         directory"
    )]
    NoConfig,

    #[error("{config} but no weights (expected one of {})", expected.join(", "))]
    NoWeights {
        config: &'static str,
        expected: Vec<&'static str>,
    },

    #[error("not one of OpenAI's models ({}); pass a checkpoint file's path instead", known.join(", "))]
    UnknownOpenAi { known: Vec<&'static str> },

    #[error(
        "expected OpenAI's file {file} at {}, which does not exist. OpenAI's `clip` package \
         downloads it there (`clip.load(\"{canonical}\")`, whose download_root defaults to \
         ~/.cache/clip; we read $XDG_CACHE_HOME/clip when XDG_CACHE_HOME is set); or pass the \
         file's path",
        path.display()
    )]
    OpenAiFileMissing {
        file: &'static str,
        canonical: &'static str,
        path: PathBuf,
    },

    #[error(
        "no such directory or file, not `openai:NAME`, and not a hub id of the form \
         `org/name[@revision]`"
    )]
    Unrecognised,

    #[error(
        "{missing}, and HF_HUB_OFFLINE forbids downloading. Download it where the hub is \
         reachable (`huggingface-cli download {repo}`) and copy the cache, or pass a local \
         directory"
    )]
    Offline { missing: String, repo: String },
}
