//! The four ImageNet variants of the domain-generalisation protocol, test sets only, in the
//! layouts of CoOp's `DATASETS.md` and read as CoOp's `datasets/*.py` read them:
//!
//! - ImageNet-V2 (`imagenetv2.py`): `imagenetv2-matched-frequency-format-val/<i>/*`, folder
//!   `i` (0..999) holding class `i`, named by line `i` of `classnames.txt`; all 1000 classes.
//! - ImageNet-Sketch (`imagenet_sketch.py`): `images/<wnid>/*`; the class folders present,
//!   sorted, give the labels (all 1000: ImageNet's order).
//! - ImageNet-A and -R (`imagenet_a.py`, `imagenet_r.py`): `imagenet-a/<wnid>/*`,
//!   `imagenet-r/<wnid>/*`; the class folders present (`README.txt` aside), sorted, give the
//!   labels, ImageNet's names name them. Each keeps 200 of ImageNet's classes; the shipped
//!   lists (`assets/datasets/imagenet_{a,r}_classes.txt`) refuse a folder that is not one.
//!
//! Class names come from `classnames.txt` in the dataset folder (CoOp's copy of ImageNet's),
//! or the shipped ImageNet list when it is absent. Files within a class folder are sorted by
//! name (CoOp: `os.listdir` order). Missing class folders are not an error here (CoOp would
//! stop, or shift the labels of A, R and Sketch as here): [`missing_classes`] lists them for
//! the `datasets` check.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::benchmarks::{sorted_entries, Benchmark, Layout};
use super::{DataError, Sample};

pub(crate) const IMAGENET_CLASSNAMES: &str =
    include_str!("../../assets/datasets/imagenet_classnames.txt");
const IMAGENET_A_CLASSES: &str = include_str!("../../assets/datasets/imagenet_a_classes.txt");
const IMAGENET_R_CLASSES: &str = include_str!("../../assets/datasets/imagenet_r_classes.txt");

/// ImageNet's classes.
pub const IMAGENET_CLASSES: usize = 1000;

/// `(wnid, name)` per line of a `classnames.txt` text, in file order (CoOp
/// `ImageNet.read_classnames`: the first word is the folder, the rest the name).
pub(crate) fn parse_classnames(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(wnid, name)| (wnid.to_string(), name.trim().to_string()))
        .collect()
}

/// ImageNet's `(wnid, name)` pairs in label order, as shipped.
pub fn imagenet_classes() -> Vec<(String, String)> {
    parse_classnames(IMAGENET_CLASSNAMES)
}

/// A subset's `(wnid, ImageNet index)` lines, as shipped (`#` lines are comments).
fn parse_subset(text: &str) -> Vec<(String, usize)> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (wnid, index) = l.trim().split_once(' ')?;
            Some((wnid.to_string(), index.trim().parse().ok()?))
        })
        .collect()
}

/// The classes ImageNet-A (`key` `imagenet_a`) or ImageNet-R (`imagenet_r`) keeps:
/// `(wnid, ImageNet index)` in wnid order; empty for any other key.
pub fn subset_classes(key: &str) -> Vec<(String, usize)> {
    match key {
        "imagenet_a" => parse_subset(IMAGENET_A_CLASSES),
        "imagenet_r" => parse_subset(IMAGENET_R_CLASSES),
        _ => Vec::new(),
    }
}

/// The dataset folder's `classnames.txt` as `(wnid, name)` pairs, or the shipped list when it
/// is absent; with the path the pairs are named by in errors.
fn read_names(dir: &Path) -> Result<(PathBuf, Vec<(String, String)>), DataError> {
    let path = dir.join("classnames.txt");
    if !path.is_file() {
        return Ok((path, imagenet_classes()));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| DataError::io(&path, e))?;
    Ok((path.clone(), parse_classnames(&text)))
}

/// The class folders a variant should hold, in label order when all are there: V2's
/// `0`..`999`, Sketch's 1000 wnids, A's and R's 200.
pub fn expected_folders(b: &Benchmark) -> Vec<String> {
    match b.layout {
        Layout::ImageNetV2 => (0..IMAGENET_CLASSES).map(|i| i.to_string()).collect(),
        Layout::ImageNetSketch => imagenet_classes().into_iter().map(|(w, _)| w).collect(),
        Layout::ImageNetSubset => (subset_classes(b.key).into_iter())
            .map(|(w, _)| w)
            .collect(),
        _ => Vec::new(),
    }
}

/// The expected class folders of `b` (a variant) that are not under its image folder; none
/// for the other benchmarks.
pub fn missing_classes(b: &Benchmark, root: &Path) -> Result<Vec<String>, DataError> {
    let expected = expected_folders(b);
    if expected.is_empty() {
        return Ok(expected);
    }
    let image_root = b.dataset_dir(root).join(b.image_dir);
    let present = sorted_entries(&image_root, true)?;
    Ok((expected.into_iter())
        .filter(|f| present.binary_search(f).is_err())
        .collect())
}

/// Class names and test samples of variant `b` in `dir` (its dataset folder).
pub(crate) fn read_variant(
    b: &Benchmark,
    dir: &Path,
    image_root: &Path,
) -> Result<(Vec<String>, Vec<Sample>), DataError> {
    let (names_path, names) = read_names(dir)?;
    let folders = sorted_entries(image_root, true)?;
    let classes = match b.layout {
        Layout::ImageNetV2 => return read_v2(&names_path, &names, image_root, &folders),
        Layout::ImageNetSubset => {
            let kept = subset_classes(b.key);
            if let Some(f) = folders.iter().find(|f| !kept.iter().any(|(w, _)| w == *f)) {
                return Err(DataError::Format {
                    path: image_root.join(f),
                    msg: format!(
                        "`{f}` is not one of the {} ImageNet classes {} keeps (a folder per \
                         class, named by its wnid, is expected)",
                        kept.len(),
                        b.name
                    ),
                });
            }
            folders
        }
        _ => folders,
    };
    let by_wnid: HashMap<&str, &str> = (names.iter())
        .map(|(w, n)| (w.as_str(), n.as_str()))
        .collect();
    let mut classnames = Vec::with_capacity(classes.len());
    let mut samples = Vec::new();
    for (label, wnid) in classes.iter().enumerate() {
        let name = by_wnid
            .get(wnid.as_str())
            .ok_or_else(|| DataError::Format {
                path: names_path.clone(),
                msg: format!(
                    "class folder `{wnid}` of {} is not an ImageNet wnid listed here",
                    image_root.display()
                ),
            })?;
        classnames.push(name.to_string());
        samples.extend(class_samples(image_root, wnid, label)?);
    }
    Ok((classnames, samples))
}

/// ImageNet-V2: folder `i` is class `i`, named by line `i` of the class names.
fn read_v2(
    names_path: &Path,
    names: &[(String, String)],
    image_root: &Path,
    folders: &[String],
) -> Result<(Vec<String>, Vec<Sample>), DataError> {
    if names.len() < IMAGENET_CLASSES {
        return Err(DataError::Format {
            path: names_path.to_path_buf(),
            msg: format!(
                "{} classes listed; ImageNet-V2's folders 0..999 need ImageNet's {IMAGENET_CLASSES}",
                names.len()
            ),
        });
    }
    let mut labels = Vec::with_capacity(folders.len());
    for f in folders {
        let label = f
            .parse::<usize>()
            .ok()
            .filter(|&i| i < IMAGENET_CLASSES && i.to_string() == *f)
            .ok_or_else(|| DataError::Format {
                path: image_root.join(f),
                msg: "not a class folder: ImageNet-V2's are named by the class index, 0 to 999"
                    .into(),
            })?;
        labels.push((label, f));
    }
    labels.sort();
    let mut samples = Vec::new();
    for (label, f) in labels {
        samples.extend(class_samples(image_root, f, label)?);
    }
    let classnames = names[..IMAGENET_CLASSES]
        .iter()
        .map(|(_, n)| n.clone())
        .collect();
    Ok((classnames, samples))
}

/// The image files of `image_root/folder`, sorted, as samples of `label`.
fn class_samples(image_root: &Path, folder: &str, label: usize) -> Result<Vec<Sample>, DataError> {
    Ok(sorted_entries(&image_root.join(folder), false)?
        .into_iter()
        .map(|file| Sample {
            impath: format!("{folder}/{file}"),
            label,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped A and R lists: 200 distinct ImageNet wnids each, in wnid order, and each
    /// line's index (from a second published list) is the wnid's place in ImageNet's list.
    #[test]
    fn subsets_map_to_their_imagenet_indices() {
        let imagenet: Vec<String> = imagenet_classes().into_iter().map(|(w, _)| w).collect();
        assert_eq!(imagenet.len(), IMAGENET_CLASSES);
        for key in ["imagenet_a", "imagenet_r"] {
            let kept = subset_classes(key);
            assert_eq!(kept.len(), 200, "{key}");
            assert!(kept.windows(2).all(|w| w[0].0 < w[1].0), "{key} not sorted");
            for (wnid, index) in &kept {
                assert_eq!(
                    imagenet.iter().position(|w| w == wnid),
                    Some(*index),
                    "{key}: {wnid}"
                );
            }
        }
        // A few spot checks against the published lists' ends.
        let a = subset_classes("imagenet_a");
        assert_eq!((a[0].0.as_str(), a[0].1), ("n01498041", 6));
        assert_eq!((a[199].0.as_str(), a[199].1), ("n12267677", 988));
        let r = subset_classes("imagenet_r");
        assert_eq!((r[0].0.as_str(), r[0].1), ("n01443537", 1));
        assert_eq!((r[199].0.as_str(), r[199].1), ("n12267677", 988));
        assert!(subset_classes("imagenet").is_empty());
    }
}
