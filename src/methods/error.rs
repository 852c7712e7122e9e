//! Errors of the methods: each names the value at fault and what was expected.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MethodError {
    #[error("{what} has {found} columns, expected {expected} (the feature width)")]
    Width {
        what: &'static str,
        expected: usize,
        found: usize,
    },

    #[error("{what} has {found} rows but {labels} labels")]
    Rows {
        what: &'static str,
        found: usize,
        labels: usize,
    },

    #[error("{what}: label {label} is out of range, the task has {classes} classes")]
    Label {
        what: &'static str,
        label: usize,
        classes: usize,
    },

    #[error("{what} is empty")]
    Empty { what: &'static str },

    #[error(
        "{method} trains the image tower's last projection: it needs the image tower's \
         pre-projection features and the checkpoint's projection, extracted with them ({})",
        crate::hint::Command::new("extract").switch("pre_projection")
    )]
    NeedsPreProjection { method: &'static str },

    #[error("{method} starts from the mean un-normalised prompt embeddings, which this cache's text features lack (cached by an older version): extract them again")]
    NeedsTextMean { method: &'static str },

    #[error("{method} trains through the model itself: fit it with the model loaded (and, for the image tower, the images the features came from)")]
    NeedsModel { method: &'static str },

    #[error("option `{name}` = {value}: {why}")]
    Option {
        name: &'static str,
        value: String,
        why: &'static str,
    },

    #[error("training diverged at epoch {epoch}: the loss is {loss}; lower the learning rate")]
    Diverged { epoch: usize, loss: f32 },

    #[error(
        "{what} would have {found} rows, above the {max} this method can hold in memory ({why})"
    )]
    TooLarge {
        what: &'static str,
        found: usize,
        max: usize,
        why: &'static str,
    },

    #[error("{what} is not positive definite even after shrinkage")]
    NotPositiveDefinite { what: &'static str },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{path}: not a clip-adapter head")]
    HeadFormat {
        path: PathBuf,
        #[source]
        source: Box<super::head::HeadError>,
    },

    #[error(transparent)]
    Write(#[from] crate::fsutil::WriteError),

    #[error(transparent)]
    Coop(Box<super::coop::CoopError>),

    /// The model a method trains through (CLIP-LoRA) failed: loading, shapes, tensor work.
    #[error(transparent)]
    Model(Box<crate::clip::error::Error>),
}

impl From<crate::clip::error::Error> for MethodError {
    fn from(e: crate::clip::error::Error) -> Self {
        MethodError::Model(Box::new(e))
    }
}

impl From<candle_core::Error> for MethodError {
    fn from(e: candle_core::Error) -> Self {
        MethodError::Model(Box::new(e.into()))
    }
}

impl MethodError {
    pub fn option(name: &'static str, value: impl ToString, why: &'static str) -> Self {
        MethodError::Option {
            name,
            value: value.to_string(),
            why,
        }
    }
}
