//! What is on disk against what a split lists: counts per split and per class, which files are
//! missing, and (on request) which ones do not decode.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;
use serde::Serialize;

use super::{DataError, Dataset, Split};

/// Missing files reported in an error, at most (the report itself lists them all).
const EXAMPLES: usize = 5;

/// `a, b, c and 7 more` with the first `shown` items; `more` follows the count.
pub fn first_few<T: std::fmt::Display>(items: &[T], shown: usize, more: &str) -> String {
    let mut s = (items.iter().take(shown))
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > shown {
        s.push_str(&format!(" and {} more{more}", items.len() - shown));
    }
    s
}

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

/// One class's images per split.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClassCount {
    pub label: usize,
    pub name: String,
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

/// An image on disk that the decoder refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    pub impath: String,
    pub reason: String,
}

/// The whole dataset's tally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    pub dataset: String,
    pub classes: usize,
    pub image_root: std::path::PathBuf,
    pub splits: Vec<SplitCheck>,
    /// A test set only (published train and val sizes 0: the ImageNet variants), whose
    /// classes have no train images by design.
    pub test_only: bool,
    /// Class folders the dataset should hold and does not (the ImageNet variants': see
    /// `imagenet_variants::missing_classes`); filled by the caller.
    pub missing_classes: Vec<String>,
    /// Images per class and split, in label order.
    pub per_class: Vec<ClassCount>,
    /// Whether every image on disk was decoded ([`decode_all`]); `unreadable` is empty
    /// otherwise.
    pub decoded: bool,
    pub unreadable: Vec<Unreadable>,
}

impl CheckReport {
    pub fn missing(&self) -> usize {
        self.splits.iter().map(|s| s.missing.len()).sum()
    }

    pub fn listed(&self) -> usize {
        self.splits.iter().map(|s| s.listed).sum()
    }

    /// Classes without a training image: no method can learn them.
    pub fn classes_without_train(&self) -> Vec<&ClassCount> {
        if self.test_only {
            return Vec::new();
        }
        self.per_class.iter().filter(|c| c.train == 0).collect()
    }

    /// Missing files, unreadable files and classes without training images.
    pub fn problems(&self) -> usize {
        self.missing()
            + self.missing_classes.len()
            + self.unreadable.len()
            + self.classes_without_train().len()
            + self.count_mismatches().len()
    }

    /// The report for people: sizes, train images per class, then each problem with its first
    /// `shown` items (`more` follows the count of the rest, e.g. how to list them all).
    pub fn summary(&self, shown: usize, more: &str) -> String {
        let sizes: Vec<String> = (self.splits.iter())
            .map(|s| format!("{} {}", s.split, s.listed))
            .collect();
        let root = self.image_root.display();
        let mut out = vec![format!(
            "{}: {} classes, {} in {root}",
            self.dataset,
            self.classes,
            sizes.join(", ")
        )];
        let (part, count) = match self.test_only {
            true => (
                "test",
                (|c: &ClassCount| c.test) as fn(&ClassCount) -> usize,
            ),
            false => (
                "train",
                (|c: &ClassCount| c.train) as fn(&ClassCount) -> usize,
            ),
        };
        let counts = || self.per_class.iter().map(count);
        if let (Some(min), Some(max)) = (counts().min(), counts().max()) {
            out.push(format!("  {part} images per class: {min} to {max}"));
        }
        if !self.missing_classes.is_empty() {
            let few = first_few(&self.missing_classes, shown, more);
            out.push(format!(
                "  {} class folder(s) missing: {few}",
                self.missing_classes.len()
            ));
        }
        let empty: Vec<String> = (self.classes_without_train().iter())
            .map(|c| format!("{} `{}`", c.label, super::display_name(&c.name)))
            .collect();
        if !empty.is_empty() {
            let few = first_few(&empty, shown, more);
            out.push(format!(
                "  {} class(es) without a train image: {few}",
                empty.len()
            ));
        }
        for (split, listed, published) in self.count_mismatches() {
            out.push(format!(
                "  {split}: the split lists {listed} images, CoOp's has {published}"
            ));
        }
        for s in self.splits.iter().filter(|s| !s.missing.is_empty()) {
            let names: Vec<_> = s.missing.iter().map(|m| super::display_name(m)).collect();
            let (n, few) = (s.missing.len(), first_few(&names, shown, more));
            out.push(format!(
                "  {}: {n} of {} images missing: {few}",
                s.split, s.listed
            ));
        }
        if self.decoded {
            out.extend(self.decode_lines(shown, more));
        }
        out.join("\n")
    }

    fn decode_lines(&self, shown: usize, more: &str) -> Vec<String> {
        if self.unreadable.is_empty() {
            return vec!["  every image on disk decodes".into()];
        }
        let mut out = vec![format!(
            "  {} image(s) do not decode:",
            self.unreadable.len()
        )];
        out.extend((self.unreadable.iter().take(shown)).map(|u| format!("    {}", u.reason)));
        if self.unreadable.len() > shown {
            out.push(format!(
                "    and {} more{more}",
                self.unreadable.len() - shown
            ));
        }
        out
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
    let mut per_class: Vec<ClassCount> = dataset
        .classnames
        .iter()
        .enumerate()
        .map(|(label, name)| ClassCount {
            label,
            name: name.clone(),
            train: 0,
            val: 0,
            test: 0,
        })
        .collect();
    for split in Split::ALL {
        for s in dataset.split(split) {
            // Labels of a built dataset are below the class count; a hand-made one is not
            // trusted to index.
            if let Some(c) = per_class.get_mut(s.label) {
                match split {
                    Split::Train => c.train += 1,
                    Split::Val => c.val += 1,
                    Split::Test => c.test += 1,
                }
            }
        }
    }
    CheckReport {
        dataset: dataset.name.clone(),
        classes: dataset.num_classes(),
        image_root: dataset.image_root.clone(),
        splits,
        test_only: published.is_some_and(|(t, v, _)| t == 0 && v == 0),
        missing_classes: Vec::new(),
        per_class,
        decoded: false,
        unreadable: Vec::new(),
    }
}

/// Decodes every listed image that is on disk (each file once, in parallel), so that corrupt
/// or truncated files are found before a long encoding run; `on_done` gets the count decoded
/// so far. Fills `report.unreadable` in split-path order.
pub fn decode_all(dataset: &Dataset, report: &mut CheckReport, on_done: &(dyn Fn(usize) + Sync)) {
    let missing: BTreeSet<&str> = report
        .splits
        .iter()
        .flat_map(|s| s.missing.iter().map(String::as_str))
        .collect();
    let files: Vec<&str> = Split::ALL
        .iter()
        .flat_map(|&split| dataset.split(split).iter().map(|s| s.impath.as_str()))
        .filter(|p| !missing.contains(p))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let done = AtomicUsize::new(0);
    let unreadable = files
        .par_iter()
        .filter_map(|&impath| {
            let result = crate::image::decode_file(dataset.image_root.join(impath));
            on_done(done.fetch_add(1, Ordering::Relaxed) + 1);
            result.err().map(|e| Unreadable {
                impath: impath.to_string(),
                reason: chain(&e),
            })
        })
        .collect();
    report.unreadable = unreadable;
    report.decoded = true;
}

/// An error and its causes on one line, for a report that stores the reason as text.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
