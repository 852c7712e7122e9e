//! CoOp's fixed splits, `split_zhou_<Dataset>.json`:
//! `{"train" | "val" | "test": [[impath, label, classname], ...]}`, `impath` relative to the
//! dataset's image folder, labels 0-based. (CoOp `datasets/oxford_pets.py` `read_split`.)

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use super::{DataError, Sample};

/// The three lists of a split file and the class names its entries give.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitFile {
    pub train: Vec<Sample>,
    pub val: Vec<Sample>,
    pub test: Vec<Sample>,
    /// Class names by label, as the entries name them.
    pub classnames: Vec<String>,
}

type RawItem = (String, u64, String);

/// CoOp's `read_split` reads all three keys, so a file without one is not a split file (an
/// empty list is allowed: a dataset may have no val).
#[derive(Deserialize)]
struct Raw {
    train: Option<Vec<RawItem>>,
    val: Option<Vec<RawItem>>,
    test: Option<Vec<RawItem>>,
}

const EXPECTED: &str =
    "expected {\"train\": [[impath, label, classname], ...], \"val\": [...], \"test\": [...]}";

/// Reads and validates a split file: each label must carry one class name everywhere, and the
/// labels must be `0..C` without gaps (Dassl derives the class list from them).
pub fn read(path: &Path) -> Result<SplitFile, DataError> {
    crate::limits::check_list_file(path).map_err(|limit| DataError::LimitIn {
        path: path.to_path_buf(),
        limit,
    })?;
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse(path, &text)
}

/// [`read`] on a file's text already in memory; `path` only names it in errors.
#[doc(hidden)]
pub fn parse(path: &Path, text: &str) -> Result<SplitFile, DataError> {
    let raw: Raw = serde_json::from_str(text).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let missing = |key: &str| DataError::Format {
        path: path.to_path_buf(),
        msg: format!("no \"{key}\" key; {EXPECTED}"),
    };
    let raw_train = raw.train.ok_or_else(|| missing("train"))?;
    let raw_val = raw.val.ok_or_else(|| missing("val"))?;
    let raw_test = raw.test.ok_or_else(|| missing("test"))?;
    if raw_train.is_empty() {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            msg: format!("no \"train\" entries; {EXPECTED}"),
        });
    }
    // The class count is the number of distinct labels; every label must be below it (so the
    // labels are exactly 0..C), which is checked before anything is sized by a label.
    let all = || raw_train.iter().chain(&raw_val).chain(&raw_test);
    let distinct: BTreeSet<u64> = all().map(|(_, label, _)| *label).collect();
    let classes = distinct.len();
    if let Some((impath, label, _)) = all().find(|(_, label, _)| *label >= classes as u64) {
        let missing = (0..classes)
            .find(|l| !distinct.contains(&(*l as u64)))
            .unwrap_or(classes);
        return Err(DataError::LabelGap {
            path: path.to_path_buf(),
            impath: impath.clone(),
            found: *label,
            label: missing,
            classes,
        });
    }
    let mut names: Vec<Option<String>> = vec![None; classes];
    let mut convert = |items: Vec<RawItem>| -> Result<Vec<Sample>, DataError> {
        items
            .into_iter()
            .map(|(impath, label, classname)| {
                // Below `classes` (checked above), so it fits.
                let label = label as usize;
                match &names[label] {
                    None => names[label] = Some(classname),
                    Some(first) if *first != classname => {
                        return Err(DataError::LabelNamedTwice {
                            path: path.to_path_buf(),
                            label,
                            first: first.clone(),
                            second: classname,
                        })
                    }
                    Some(_) => {}
                }
                Ok(Sample { impath, label })
            })
            .collect()
    };
    let train = convert(raw_train)?;
    let val = convert(raw_val)?;
    let test = convert(raw_test)?;
    // Every label 0..C occurs, so every one has a name.
    let classnames: Vec<String> = names.into_iter().map(Option::unwrap_or_default).collect();
    super::require_classes(path, &classnames)?;
    Ok(SplitFile {
        train,
        val,
        test,
        classnames,
    })
}

/// Refuses a split whose class names are not `expected` (a benchmark's shipped names): a split
/// of another dataset, or one with another class order, would silently mislabel every image.
pub fn check_classnames(
    path: &Path,
    dataset: &str,
    in_split: &[String],
    expected: &[String],
) -> Result<(), DataError> {
    if in_split.len() != expected.len() {
        return Err(DataError::ClassCount {
            path: path.to_path_buf(),
            dataset: dataset.to_string(),
            in_split: in_split.len(),
            expected: expected.len(),
        });
    }
    for (label, (a, b)) in in_split.iter().zip(expected).enumerate() {
        if a != b {
            return Err(DataError::ClassNameMismatch {
                path: path.to_path_buf(),
                dataset: dataset.to_string(),
                label,
                in_split: a.clone(),
                expected: b.clone(),
            });
        }
    }
    Ok(())
}
