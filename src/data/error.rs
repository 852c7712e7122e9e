//! Why a dataset could not be read or sampled. Every variant names the file and the value.
//!
//! A variant with a `source` does not repeat it in its own message: print these errors with
//! their chain (anyhow's `{:#}`), which adds the cause once.

use std::path::PathBuf;

use super::display_name;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DataError {
    // The cause is the `source`, printed after this by an error chain (`{:#}`); putting it in
    // the message too would print it twice.
    #[error("{}: cannot read", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{}: invalid JSON", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    #[error("{}: invalid CSV", path.display())]
    Csv {
        path: PathBuf,
        #[source]
        source: csv::Error,
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
        "{}: label {label} is called both `{}` and `{}`; a split file must give each label one \
         class name",
        path.display(),
        display_name(first),
        display_name(second)
    )]
    LabelNamedTwice {
        path: PathBuf,
        label: usize,
        first: String,
        second: String,
    },

    #[error(
        "{}: the split calls label {label} `{}`, but {dataset}'s class {label} is `{}`; is this \
         the split file of another dataset (or another class order)?",
        path.display(),
        display_name(in_split),
        display_name(expected)
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

    #[error(
        "{}: `{}` has label {found}, but no image is labelled {label}: the split has {classes} \
         distinct labels, which must be 0..{classes} without gaps",
        path.display(),
        display_name(impath)
    )]
    LabelGap {
        path: PathBuf,
        impath: String,
        found: u64,
        label: usize,
        classes: usize,
    },

    #[error(
        "{}: `{}` has label {label}, but there are {classes} classes",
        path.display(),
        display_name(impath)
    )]
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

    #[error("unknown dataset `{}`; known: {known}", display_name(name))]
    UnknownDataset { name: String, known: String },

    #[error(
        "{dataset}: {missing} of {total} images listed by the split are not under {} (first: {})",
        root.display(),
        examples.iter().map(|e| display_name(e)).collect::<Vec<_>>().join(", ")
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

    /// A size a file states, above its limit. Kept whole rather than as `#[source]`: its text
    /// is the message.
    #[error("{}: {limit}", path.display())]
    LimitIn {
        path: PathBuf,
        limit: crate::limits::LimitError,
    },

    /// A size an option asks for, above its limit.
    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.into(),
            source,
        }
    }
}
