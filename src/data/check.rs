//! What is on disk against what a split lists: counts, and which files are missing.

use rayon::prelude::*;
use serde::Serialize;

use super::{DataError, Dataset, Split};

/// Missing files reported in an error, at most (the report itself lists them all).
const EXAMPLES: usize = 5;

/// One split's tally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SplitCheck {
    pub split: Split,
    /// Images the split lists.
    pub listed: usize,
    /// The published size of this split, for benchmarks.
    pub published: Option<usize>,
    /// Listed images that are not on disk (split paths, in split order).
    pub missing: Vec<String>,
}

/// The whole dataset's tally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub dataset: String,
    pub classes: usize,
    pub image_root: std::path::PathBuf,
    pub splits: Vec<SplitCheck>,
}

impl CheckReport {
    pub fn missing(&self) -> usize {
        self.splits.iter().map(|s| s.missing.len()).sum()
    }

    pub fn listed(&self) -> usize {
        self.splits.iter().map(|s| s.listed).sum()
    }

    /// Splits whose size differs from the published one: `(split, listed, published)`.
    pub fn count_mismatches(&self) -> Vec<(Split, usize, usize)> {
        self.splits
            .iter()
            .filter_map(|s| match s.published {
                Some(p) if p != s.listed => Some((s.split, s.listed, p)),
                _ => None,
            })
            .collect()
    }

    /// `Ok` when every listed image is on disk, else an error with the count and examples.
    pub fn require_complete(&self) -> Result<(), DataError> {
        if self.missing() == 0 {
            return Ok(());
        }
        Err(DataError::MissingImages {
            dataset: self.dataset.clone(),
            root: self.image_root.clone(),
            missing: self.missing(),
            total: self.listed(),
            examples: self
                .splits
                .iter()
                .flat_map(|s| s.missing.iter().cloned())
                .take(EXAMPLES)
                .collect(),
        })
    }
}

/// Checks every listed file of `dataset` (in parallel: file-system latency dominates).
/// `published` gives the expected (train, val, test) sizes, when known.
pub fn check(dataset: &Dataset, published: Option<(usize, usize, usize)>) -> CheckReport {
    let splits = Split::ALL
        .iter()
        .map(|&split| {
            let samples = dataset.split(split);
            let missing = samples
                .par_iter()
                .filter(|s| !dataset.path(s).is_file())
                .map(|s| s.impath.clone())
                .collect();
            SplitCheck {
                split,
                listed: samples.len(),
                published: published.map(|(t, v, s)| match split {
                    Split::Train => t,
                    Split::Val => v,
                    Split::Test => s,
                }),
                missing,
            }
        })
        .collect();
    CheckReport {
        dataset: dataset.name.clone(),
        classes: dataset.num_classes(),
        image_root: dataset.image_root.clone(),
        splits,
    }
}
