//! Datasets: which images, with which labels and class names, in which split.
//!
//! ```text
//! folder.rs       a folder per class, or a CSV/JSON manifest; seeded train/val/test split
//! benchmarks.rs   the 11 CoOp benchmarks in their usual on-disk layout (split_zhou json,
//!                 ImageNet's classnames.txt, FGVC's variant files) + shipped names and templates
//! imagenet_variants.rs  ImageNet-V2, -Sketch, -A, -R: test-only targets of domain
//!                 generalisation, with A's and R's 200 classes shipped
//! split_file.rs   reading and validating CoOp's `split_zhou_*.json`
//! few_shot.rs     K shots per class, drawn exactly as CoOp draws them
//! python_random.rs  CPython's Mersenne Twister and `random.sample`, bit for bit
//! check.rs        what is on disk against what the split lists
//! ```
//!
//! A [`Dataset`] holds image paths *relative to its image root* (as split files write them), so
//! the same dataset reads the same on every machine; [`Dataset::path`] makes them absolute.

pub mod benchmarks;
pub mod check;
mod error;
pub mod few_shot;
pub mod folder;
pub mod imagenet_variants;
pub mod python_random;
pub mod split_file;

/// The template CLIP uses for generic images (a dataset without templates of its own).
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use benchmarks::Benchmark;
pub use error::DataError;
pub use few_shot::{FewShot, ShortClass};

/// One labelled image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The image path relative to the dataset's image root (absolute paths stay absolute).
    pub impath: String,
    /// 0-based class index into [`Dataset::classnames`].
    pub label: usize,
}

/// Train, val and test samples, in that order.
pub(crate) type Parts = (Vec<Sample>, Vec<Sample>, Vec<Sample>);

/// The three parts of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

impl std::fmt::Display for Split {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A classification dataset: class names, the three splits, and its prompt templates.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// A short name (`caltech101`, or the user's folder name); it goes into cache keys.
    pub name: String,
    /// Class names in label order, as the data names them (`_` kept; prompts replace it).
    pub classnames: Vec<String>,
    /// The folder that [`Sample::impath`]s are relative to.
    pub image_root: PathBuf,
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
    /// Prompt templates with `{}` for the class name; several are ensembled.
    pub templates: Vec<String>,
}

impl Dataset {
    pub fn split(&self, split: Split) -> &[Sample] {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }

    /// The file a sample refers to.
    pub fn path(&self, sample: &Sample) -> PathBuf {
        self.image_root.join(&sample.impath)
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classnames.len()
    }

    /// Checks that there are at least two classes and that every label names a class;
    /// datasets built by this module always pass.
    pub fn validate(&self, source: &Path) -> Result<(), DataError> {
        require_classes(source, &self.classnames)?;
        for split in Split::ALL {
            if let Some(s) = self
                .split(split)
                .iter()
                .find(|s| s.label >= self.classnames.len())
            {
                return Err(DataError::LabelOutOfRange {
                    path: source.to_path_buf(),
                    impath: s.impath.clone(),
                    label: s.label,
                    classes: self.classnames.len(),
                });
            }
        }
        Ok(())
    }
}

/// Classes a classifier needs at least: with one class every prediction is right, so every
/// method would report 100 %.
pub const MIN_CLASSES: usize = 2;

/// Characters of a class name or path shown in a message or a table; longer ones are cut
/// there (and only there: the data keeps them whole).
pub const DISPLAY_CHARS: usize = 80;

/// `s` cut to [`DISPLAY_CHARS`] characters, with `…` and the full length when cut.
pub fn display_name(s: &str) -> std::borrow::Cow<'_, str> {
    match s.char_indices().nth(DISPLAY_CHARS) {
        None => std::borrow::Cow::Borrowed(s),
        Some((end, _)) => {
            std::borrow::Cow::Owned(format!("{}… ({} characters)", &s[..end], s.chars().count()))
        }
    }
}

/// Refuses fewer than [`MIN_CLASSES`] classes, naming `source`.
pub(crate) fn require_classes(source: &Path, classnames: &[String]) -> Result<(), DataError> {
    crate::limits::CLASSES
        .check("classes", classnames.len())
        .map_err(|limit| DataError::LimitIn {
            path: source.to_path_buf(),
            limit,
        })?;
    if classnames.len() >= MIN_CLASSES {
        return Ok(());
    }
    Err(DataError::TooFewClasses {
        path: source.to_path_buf(),
        classes: classnames.len(),
        names: classnames
            .iter()
            .map(|n| format!("`{}`", display_name(n)))
            .collect(),
    })
}

/// The class name as prompts use it: CoOp and CLIP-Adapter replace `_` by a space
/// (`trainers/zsclip.py`: `temp.format(c.replace("_", " "))`).
pub fn prompt_name(classname: &str) -> String {
    classname.replace('_', " ")
}
