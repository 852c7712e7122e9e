//! Errors of CoOp: each names the value at fault and what was expected.

use std::path::PathBuf;

use crate::methods::MethodError;

#[derive(Debug, thiserror::Error)]
pub enum CoopError {
    #[error("n_ctx must be at least 1 (the number of learned context vectors)")]
    NoContext,

    #[error("CoOp needs at least one class name")]
    NoClasses,

    #[error(
        "CoOp learns prompts through CLIP's causal text tower, whose prompts start with a \
         start-of-text token; this model's tokenizer has none (a SigLIP model): use a CLIP model"
    )]
    NoStartToken,

    #[error(
        "ctx_init `{text}` has {tokens} tokens: with the start and end tokens it does not fit \
         the model's context length of {context}"
    )]
    InitTooLong {
        text: String,
        tokens: usize,
        context: usize,
    },

    #[error(
        "class {number} `{name}`: its prompt needs {need} tokens (start, {n_ctx} context vectors, \
         the name and `.`, end) but the model's context length is {context}; use a smaller \
         n_ctx or a shorter class name"
    )]
    ClassTooLong {
        /// 1-based, as the class list is numbered for people.
        number: usize,
        name: String,
        n_ctx: usize,
        need: usize,
        context: usize,
    },

    /// `head` and `model` read "`name` (fingerprint …)".
    #[error("{path}: this CoOp head was trained on model {head}, not on {model}")]
    OtherModel {
        path: PathBuf,
        head: String,
        model: String,
    },

    #[error("{path}: not a CoOp head: {source}")]
    HeadFormat {
        path: PathBuf,
        #[source]
        source: Box<crate::methods::head::HeadError>,
    },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Box<crate::clip::error::Error>,
    },

    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),

    #[error(transparent)]
    Method(#[from] MethodError),

    #[error(transparent)]
    Model(Box<crate::clip::error::Error>),

    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

// Boxed: the crate error is large, and every CoOp result would carry its size.
impl From<crate::clip::error::Error> for CoopError {
    fn from(e: crate::clip::error::Error) -> Self {
        CoopError::Model(Box::new(e))
    }
}
