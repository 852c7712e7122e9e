//! The user's own data: a folder with one sub-folder per class, or a manifest listing
//! `path,label[,split]` (CSV) / `[{"path", "label", "split"?}]` (JSON).
//!
//! A split is either given (sub-folders `train/`, `val/`, `test/` each holding the class
//! folders; a manifest's `split` column) or made with a seed, the way CoOp splits DTD, EuroSAT
//! and the others without an official split (Dassl `DTD.read_and_split_data`): per class, in
//! class order, shuffle the images with Python's `random.shuffle` and cut
//! `round(n * p_train)` train, `round(n * p_val)` val, the rest test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::benchmarks::sorted_entries;
use super::python_random::PyRandom;
use super::DEFAULT_TEMPLATE;
use super::{display_name, DataError, Dataset, Parts, Sample, Split};

/// Image file extensions a class folder is scanned for (lower case).
pub const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "jfif"];

/// CoOp's split of a dataset without one: half of each class for training, a fifth for
/// validation, the rest for testing.
pub const COOP_TRAIN_FRACTION: f64 = 0.5;
pub const COOP_VAL_FRACTION: f64 = 0.2;

/// How to split images that come without a split.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeededSplit {
    pub seed: i64,
    /// Fraction of each class for training (CoOp: 0.5).
    pub train: f64,
    /// Fraction of each class for validation (CoOp: 0.2); the rest is the test set.
    pub val: f64,
}

impl Default for SeededSplit {
    fn default() -> Self {
        SeededSplit {
            seed: 1,
            train: COOP_TRAIN_FRACTION,
            val: COOP_VAL_FRACTION,
        }
    }
}

/// Reads a class-per-folder dataset at `root`. With `train/` (and `val/`, `test/`) sub-folders
/// the split is theirs; otherwise every class folder is split with `split`.
pub fn from_class_folders(root: &Path, split: SeededSplit) -> Result<Dataset, DataError> {
    let given = root.join("train").is_dir();
    let name = dataset_name(root);
    if given {
        let classes = sorted_entries(&root.join("train"), true)?;
        let mut parts: [Vec<Sample>; 3] = Default::default();
        for (i, part) in Split::ALL.iter().enumerate() {
            let dir = root.join(part.name());
            if !dir.is_dir() {
                continue;
            }
            for folder in sorted_entries(&dir, true)? {
                let label =
                    classes
                        .iter()
                        .position(|c| *c == folder)
                        .ok_or_else(|| DataError::Format {
                            path: dir.join(&folder),
                            msg: format!(
                                "class folder `{}` has no counterpart in train/",
                                display_name(&folder)
                            ),
                        })?;
                for file in image_files(&dir.join(&folder))? {
                    parts[i].push(Sample {
                        impath: format!("{}/{folder}/{file}", part.name()),
                        label,
                    });
                }
            }
        }
        let [train, val, test] = parts;
        return finish(root, root, name, &classes, train, val, test);
    }
    let classes = sorted_entries(root, true)?;
    let per_class = classes
        .iter()
        .map(|c| {
            Ok(image_files(&root.join(c))?
                .into_iter()
                .map(|f| format!("{c}/{f}"))
                .collect())
        })
        .collect::<Result<Vec<Vec<String>>, DataError>>()?;
    let (train, val, test) = seeded_split(root, &classes, per_class, split)?;
    finish(root, root, name, &classes, train, val, test)
}

/// Reads a manifest (`.csv`, or `.json`): `path,label[,split]` rows (a header row naming
/// `path` is skipped) or `[{"path", "label", "split"?}]`. Paths are relative to the manifest's
/// folder unless absolute. Labels are class names; classes are sorted by name. Without a split
/// column, each class is split with `split`.
pub fn from_manifest(path: &Path, split: SeededSplit) -> Result<Dataset, DataError> {
    crate::limits::check_list_file(path).map_err(|limit| DataError::LimitIn {
        path: path.to_path_buf(),
        limit,
    })?;
    let rows = if is_json(path) {
        read_json_manifest(path)?
    } else {
        read_csv_manifest(path)?
    };
    dataset_from_rows(path, rows, split)
}

fn is_json(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
}

/// [`from_manifest`] on a manifest's bytes already in memory: `path` names it in errors, its
/// extension picks JSON or CSV, and its folder is the root of relative image paths (nothing is
/// read from it).
#[doc(hidden)]
pub fn manifest_from_bytes(
    path: &Path,
    bytes: &[u8],
    split: SeededSplit,
) -> Result<Dataset, DataError> {
    let rows = if is_json(path) {
        let text = std::str::from_utf8(bytes).map_err(|e| DataError::Format {
            path: path.to_path_buf(),
            msg: format!("not UTF-8 text: {e}"),
        })?;
        parse_json_manifest(path, text)?
    } else {
        parse_csv_manifest(path, bytes)?
    };
    dataset_from_rows(path, rows, split)
}

fn dataset_from_rows(
    path: &Path,
    rows: Vec<Row>,
    split: SeededSplit,
) -> Result<Dataset, DataError> {
    if rows.is_empty() {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            msg: "the manifest lists no images".into(),
        });
    }
    let classes: Vec<String> = rows
        .iter()
        .map(|r| r.label.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let labels: BTreeMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    // Every row's label is one of `classes`, which were collected from the rows.
    let label_of = |name: &str| labels.get(name).copied().unwrap_or_default();
    let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "manifest".into());
    let with_split = rows.iter().filter(|r| r.split.is_some()).count();
    if with_split == rows.len() {
        let mut parts: [Vec<Sample>; 3] = Default::default();
        for r in &rows {
            let i = Split::ALL
                .iter()
                .position(|s| Some(*s) == r.split)
                .unwrap_or(0);
            parts[i].push(Sample {
                impath: r.path.clone(),
                label: label_of(&r.label),
            });
        }
        let [train, val, test] = parts;
        return finish(path, &root, name, &classes, train, val, test);
    }
    if with_split > 0 {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            msg: format!(
                "{with_split} of {} rows give a split; give it for every row or for none",
                rows.len()
            ),
        });
    }
    let mut per_class = vec![Vec::new(); classes.len()];
    for r in rows {
        per_class[label_of(&r.label)].push(r.path);
    }
    let (train, val, test) = seeded_split(path, &classes, per_class, split)?;
    finish(path, &root, name, &classes, train, val, test)
}

struct Row {
    path: String,
    label: String,
    split: Option<Split>,
}

fn parse_split(path: &Path, line: usize, s: &str) -> Result<Option<Split>, DataError> {
    match s.trim() {
        "" => Ok(None),
        "train" => Ok(Some(Split::Train)),
        "val" => Ok(Some(Split::Val)),
        "test" => Ok(Some(Split::Test)),
        other => Err(DataError::Line {
            path: path.to_path_buf(),
            line,
            msg: format!("split `{other}` is not train, val or test"),
        }),
    }
}

/// A CSV manifest as spreadsheets and scripts write them: an optional UTF-8 byte-order mark,
/// `\n` or `\r\n` line ends, fields quoted when they hold commas or quotes (`""` is a quote),
/// any UTF-8 in paths and labels, and an optional header row whose first field is `path`.
fn read_csv_manifest(path: &Path) -> Result<Vec<Row>, DataError> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_csv_manifest(path, &bytes)
}

fn parse_csv_manifest(path: &Path, bytes: &[u8]) -> Result<Vec<Row>, DataError> {
    let body = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(body);
    let mut rows = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|source| DataError::Csv {
            path: path.to_path_buf(),
            source,
        })?;
        let line = record.position().map_or(n as u64 + 1, |p| p.line()) as usize;
        if record.iter().all(str::is_empty) {
            continue;
        }
        if n == 0
            && record
                .get(0)
                .is_some_and(|f| f.eq_ignore_ascii_case("path"))
        {
            continue;
        }
        if record.len() < 2 || record.len() > 3 {
            return Err(DataError::Line {
                path: path.to_path_buf(),
                line,
                msg: format!(
                    "expected `path,label[,split]`, got {} field(s)",
                    record.len()
                ),
            });
        }
        let (file, label) = (&record[0], &record[1]);
        if file.is_empty() || label.is_empty() {
            return Err(DataError::Line {
                path: path.to_path_buf(),
                line,
                msg: "empty path or label".into(),
            });
        }
        let split = match record.get(2) {
            Some(s) => parse_split(path, line, s)?,
            None => None,
        };
        rows.push(Row {
            path: file.to_string(),
            label: label.to_string(),
            split,
        });
    }
    Ok(rows)
}

#[derive(Deserialize)]
struct JsonRow {
    path: String,
    label: String,
    #[serde(default)]
    split: Option<String>,
}

fn read_json_manifest(path: &Path) -> Result<Vec<Row>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|e| DataError::io(path, e))?;
    parse_json_manifest(path, &text)
}

fn parse_json_manifest(path: &Path, text: &str) -> Result<Vec<Row>, DataError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let raw: Vec<JsonRow> = serde_json::from_str(text).map_err(|source| DataError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            if r.path.trim().is_empty() || r.label.trim().is_empty() {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    msg: format!("entry {}: empty path or label", i + 1),
                });
            }
            Ok(Row {
                split: parse_split(path, i + 1, r.split.as_deref().unwrap_or(""))?,
                path: r.path,
                label: r.label,
            })
        })
        .collect()
}

/// Dassl's `read_and_split_data`: one `random.Random(seed)` stream across classes in label
/// order; each class's files shuffled, then cut with Python's round-half-to-even.
fn seeded_split(
    source: &Path,
    classes: &[String],
    per_class: Vec<Vec<String>>,
    split: SeededSplit,
) -> Result<Parts, DataError> {
    if !(split.train > 0.0 && split.val >= 0.0 && split.train + split.val <= 1.0) {
        return Err(DataError::Invalid {
            what: "split fractions".into(),
            msg: format!(
                "train {} and val {} must be > 0, >= 0 and sum to at most 1",
                split.train, split.val
            ),
        });
    }
    let mut rng = PyRandom::new(split.seed);
    let (mut train, mut val, mut test) = (Vec::new(), Vec::new(), Vec::new());
    for (label, mut files) in per_class.into_iter().enumerate() {
        rng.shuffle(&mut files);
        let n = files.len();
        let n_train = (n as f64 * split.train).round_ties_even() as usize;
        let n_val = ((n as f64 * split.val).round_ties_even() as usize).min(n - n_train.min(n));
        if n_train == 0 || n_train > n {
            return Err(DataError::Format {
                path: source.to_path_buf(),
                msg: format!(
                    "class `{}` has {n} image(s): too few to split {:.0}% / {:.0}% / rest",
                    display_name(&classes[label]),
                    100.0 * split.train,
                    100.0 * split.val
                ),
            });
        }
        for (i, impath) in files.into_iter().enumerate() {
            let s = Sample { impath, label };
            if i < n_train {
                train.push(s);
            } else if i < n_train + n_val {
                val.push(s);
            } else {
                test.push(s);
            }
        }
    }
    Ok((train, val, test))
}

fn image_files(dir: &Path) -> Result<Vec<String>, DataError> {
    Ok(sorted_entries(dir, false)?
        .into_iter()
        .filter(|f| {
            Path::new(f).extension().is_some_and(|e| {
                IMAGE_EXTENSIONS.contains(&e.to_string_lossy().to_lowercase().as_str())
            })
        })
        .collect())
}

fn dataset_name(root: &Path) -> String {
    root.canonicalize()
        .unwrap_or_else(|_| root.to_path_buf())
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "folder".into())
}

/// Builds the dataset; `source` (the folder or the manifest) is what errors name.
fn finish(
    source: &Path,
    root: &Path,
    name: String,
    classes: &[String],
    train: Vec<Sample>,
    val: Vec<Sample>,
    test: Vec<Sample>,
) -> Result<Dataset, DataError> {
    if classes.is_empty() || train.is_empty() {
        return Err(DataError::Format {
            path: source.to_path_buf(),
            msg: "no training images found".into(),
        });
    }
    super::require_classes(source, classes)?;
    Ok(Dataset {
        name,
        // The folder name is the class name, with `_` read as a space.
        classnames: classes.iter().map(|c| c.replace('_', " ")).collect(),
        image_root: PathBuf::from(root),
        train,
        val,
        test,
        templates: vec![DEFAULT_TEMPLATE.to_string()],
    })
}
