//! Why a dataset could not be read or sampled. Every variant names the file and the value.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },

    #[error("{}:{line}: {msg}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        msg: String,
    },

    #[error(
        "{}: label {label} is called both `{first}` and `{second}`; a split file must give each \
         label one class name",
        path.display()
    )]
    LabelNamedTwice {
        path: PathBuf,
        label: usize,
        first: String,
        second: String,
    },

    #[error(
        "{}: the split calls label {label} `{in_split}`, but {dataset}'s class {label} is \
         `{expected}`; is this the split file of another dataset (or another class order)?",
        path.display()
    )]
    ClassNameMismatch {
        path: PathBuf,
        dataset: String,
        label: usize,
        in_split: String,
        expected: String,
    },

    #[error(
        "{}: the split has {in_split} classes, {dataset} has {expected}",
        path.display()
    )]
    ClassCount {
        path: PathBuf,
        dataset: String,
        in_split: usize,
        expected: usize,
    },

    #[error("{}: no image is labelled {label} (labels must be 0..{classes} without gaps)", path.display())]
    LabelGap {
        path: PathBuf,
        label: usize,
        classes: usize,
    },

    #[error("{}: `{impath}` has label {label}, but there are {classes} classes", path.display())]
    LabelOutOfRange {
        path: PathBuf,
        impath: String,
        label: usize,
        classes: usize,
    },

    #[error(
        "{}: {classes} class(es) ({}); a classifier needs at least 2 classes",
        path.display(),
        names.join(", ")
    )]
    TooFewClasses {
        path: PathBuf,
        classes: usize,
        /// The class names found (display-capped).
        names: Vec<String>,
    },

    #[error("unknown dataset `{name}`; known: {known}")]
    UnknownDataset { name: String, known: String },

    #[error(
        "{dataset}: {missing} of {total} images listed by the split are not under {} (first: {})",
        root.display(),
        examples.join(", ")
    )]
    MissingImages {
        dataset: String,
        root: PathBuf,
        missing: usize,
        total: usize,
        examples: Vec<String>,
    },

    #[error("{what}: {msg}")]
    Invalid { what: String, msg: String },
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
