//! One results row per fit, its identity, and the results file (`results.csv`) that a grid
//! resumes from.
//!
//! The CSV is read and written by the `csv` crate through serde (fields with commas, quotes or
//! line breaks are quoted), with a fixed header. A file whose header differs (an older
//! version's, without the model and feature columns) is refused, never read as if it matched.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ExperimentError, Protocol, Validation};
use crate::features::task::TaskSource;
use crate::features::ContentHash;

/// One fit: what produced it and what it measured. Accuracies are percentages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultRow {
    /// The method's name (`clip-adapter`), or a labelled variant of it in the demo.
    pub method: String,
    /// The options the user set for the method (`key=value`, space-separated; empty: the
    /// protocol's defaults).
    pub options: String,
    pub dataset: String,
    pub shots: usize,
    pub seed: u64,
    /// Whether choices were made on the validation set (`val`) or not (`none`). Files written
    /// before this column existed hold only `val` rows (the one protocol there was), so a
    /// missing column reads as `val`.
    #[serde(default)]
    pub validation: Validation,
    /// Content fingerprint of the model whose features the fit used.
    pub model: String,
    /// The model as it was named when the features were made (for people; not identity).
    pub model_name: String,
    /// Identity of the features beyond the model (see [`RowSource`]).
    pub features: String,
    pub val_accuracy: f32,
    pub test_accuracy: f32,
    pub train_seconds: f64,
    /// Hyper-parameters chosen on validation, `key=value`, space-separated.
    pub chosen: String,
    /// What the method trained on: `none` (a method its authors train without augmentation),
    /// `N augmented views` (the cached views, one per epoch or averaged, as the method does),
    /// or `centre crop only` (a method its authors augment, on a cache without views). Files
    /// written before this column read as empty: not recorded.
    #[serde(default)]
    pub augmentation: String,
    /// The protocol (`few-shot`, or `base-to-new`: trained on the base classes, with
    /// `val_accuracy` and `test_accuracy` on base classes). Files written before this column
    /// hold only few-shot rows.
    #[serde(default)]
    pub protocol: Protocol,
    /// Base-to-new only: the accuracy on the new classes' test images, among the new classes.
    #[serde(default)]
    pub new_accuracy: Option<f32>,
    /// Cross-dataset and domain rows: the dataset the head was trained on (`dataset` is the
    /// one it was tested on; the same for the source's own row). Empty otherwise.
    #[serde(default)]
    pub source_dataset: String,
}

/// The CSV columns, in order (the fields of [`ResultRow`]).
pub const COLUMNS: [&str; 17] = [
    "method",
    "options",
    "dataset",
    "shots",
    "seed",
    "validation",
    "model",
    "model_name",
    "features",
    "val_accuracy",
    "test_accuracy",
    "train_seconds",
    "chosen",
    "augmentation",
    "protocol",
    "new_accuracy",
    "source_dataset",
];

/// The columns of the version before the `protocol`, `new_accuracy` and `source_dataset`
/// columns (the last three): rows read as few-shot rows.
pub const COLUMNS_BEFORE_PROTOCOL: &[&str] = COLUMNS.split_at(14).0;

/// The columns of the version before the `augmentation` column: rows read with it empty.
pub const COLUMNS_BEFORE_AUGMENTATION: &[&str] = COLUMNS.split_at(13).0;

/// The columns of the version before the `validation` column: read as `val` rows.
pub const COLUMNS_BEFORE_VALIDATION: [&str; 12] = [
    "method",
    "options",
    "dataset",
    "shots",
    "seed",
    "model",
    "model_name",
    "features",
    "val_accuracy",
    "test_accuracy",
    "train_seconds",
    "chosen",
];

/// What makes two rows the same run: everything but the measurements and the model's name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowKey {
    pub method: String,
    pub options: String,
    pub dataset: String,
    pub shots: usize,
    pub seed: u64,
    pub validation: Validation,
    pub model: String,
    pub features: String,
    pub protocol: Protocol,
    pub source_dataset: String,
}

impl ResultRow {
    pub fn key(&self) -> RowKey {
        RowKey {
            method: self.method.clone(),
            options: self.options.clone(),
            dataset: self.dataset.clone(),
            shots: self.shots,
            seed: self.seed,
            validation: self.validation,
            model: self.model.clone(),
            features: self.features.clone(),
            protocol: self.protocol,
            source_dataset: self.source_dataset.clone(),
        }
    }

    /// What the method trained on, read back from the `augmentation` column (`None` for a row
    /// of a version before the column).
    pub fn trained_on(&self) -> Option<super::grid::TrainedOn> {
        super::grid::TrainedOn::parse(&self.augmentation)
    }

    /// How tables name the row's method: the method, with its options when there are some,
    /// and `[no validation]` for rows of that protocol (so both protocols can share a table).
    pub fn label(&self) -> String {
        let mut s = self.method.clone();
        if !self.options.is_empty() {
            s.push_str(&format!(" ({})", self.options));
        }
        if self.validation == Validation::None {
            s.push_str(" [no validation]");
        }
        // A transfer row's source is its table's heading instead.
        if self.protocol == Protocol::BaseToNew {
            s.push_str(" [base-to-new]");
        }
        s
    }
}

/// Where a task's features came from, as rows record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowSource {
    /// Content fingerprint of the model.
    pub model: String,
    pub model_name: String,
    /// A hash of everything else that determined the task's features.
    pub features: String,
}

impl RowSource {
    /// The row source of a task read from the feature cache.
    pub fn of_task(source: &TaskSource) -> Self {
        // Destructured, so that a field added to `TaskSource` cannot be left out of the
        // identity without the compiler pointing here.
        let TaskSource {
            model_name,
            model,
            templates,
            split,
        } = source;
        let mut h = ContentHash::default();
        h.field(b"clip-adapter task source v2");
        h.field(model.as_bytes());
        h.field(split.as_bytes());
        h.update(&(templates.len() as u64).to_le_bytes());
        for t in templates {
            h.field(t.as_bytes());
        }
        RowSource {
            model: model.clone(),
            model_name: model_name.clone(),
            features: h.hex(),
        }
    }
}

/// Rows as CSV text with the header.
pub fn to_csv(rows: &[ResultRow]) -> Result<Vec<u8>, csv::Error> {
    let mut w = csv::Writer::from_writer(Vec::new());
    if rows.is_empty() {
        w.write_record(COLUMNS)?;
    }
    for r in rows {
        w.serialize(r)?;
    }
    w.into_inner()
        .map_err(|e| csv::Error::from(std::io::Error::other(e.to_string())))
}

/// Writes rows to `path` atomically.
pub fn write_csv(path: &Path, rows: &[ResultRow]) -> Result<(), ExperimentError> {
    let bytes = to_csv(rows).map_err(|source| ExperimentError::Csv {
        path: path.to_path_buf(),
        source,
    })?;
    crate::fsutil::write_atomic(path, &bytes)?;
    Ok(())
}

/// Reads a results file, refusing one whose columns are not [`COLUMNS`] (or the previous
/// version's [`COLUMNS_BEFORE_VALIDATION`], whose rows are all `val`).
pub fn read_csv(path: &Path) -> Result<Vec<ResultRow>, ExperimentError> {
    crate::limits::check_list_file(path).map_err(|limit| ExperimentError::TooLarge {
        path: path.to_path_buf(),
        limit,
    })?;
    let csv_err = |source| ExperimentError::Csv {
        path: path.to_path_buf(),
        source,
    };
    let mut r = csv::Reader::from_path(path).map_err(csv_err)?;
    let found: Vec<String> = r
        .headers()
        .map_err(csv_err)?
        .iter()
        .map(str::to_string)
        .collect();
    if found != COLUMNS
        && found != COLUMNS_BEFORE_PROTOCOL
        && found != COLUMNS_BEFORE_AUGMENTATION
        && found != COLUMNS_BEFORE_VALIDATION
    {
        let old = !found.iter().any(|c| c == "model") && found.iter().any(|c| c == "method");
        return Err(ExperimentError::Columns {
            path: path.to_path_buf(),
            found: found.join(","),
            expected: COLUMNS.join(","),
            hint: if old {
                " (an older version's results, which do not record the model or features \
                 each row was computed from)"
            } else {
                ""
            },
        });
    }
    r.deserialize().collect::<Result<_, _>>().map_err(csv_err)
}

/// `results.csv` of a grid: the rows so far; each new row is saved at once (atomically), so an
/// interrupted grid resumes where it stopped. Runs that share a results folder take turns
/// under the file's lock, and each adds its row to the rows on disk at that moment, so no run's
/// rows are lost to another's write.
#[derive(Debug)]
pub struct ResultsFile {
    path: PathBuf,
    rows: Vec<ResultRow>,
}

impl ResultsFile {
    /// Opens `path`, reading its rows when it exists.
    pub fn open(path: &Path) -> Result<Self, ExperimentError> {
        let rows = if path.exists() {
            read_csv(path)?
        } else {
            Vec::new()
        };
        Ok(ResultsFile {
            path: path.to_path_buf(),
            rows,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn rows(&self) -> &[ResultRow] {
        &self.rows
    }

    /// `rows` (a grid's), followed by the rows of this file that are the same runs under the
    /// other validation protocol: the table of a run shows both protocols once both were run.
    pub fn with_other_protocol(&self, rows: &[ResultRow]) -> Vec<ResultRow> {
        let mut out = rows.to_vec();
        for r in rows {
            for v in Validation::ALL.into_iter().filter(|&v| v != r.validation) {
                let key = RowKey {
                    validation: v,
                    ..r.key()
                };
                let already = out.iter().any(|o| o.key() == key);
                if let (false, Some(other)) = (already, self.rows.iter().find(|o| o.key() == key)) {
                    out.push(other.clone());
                }
            }
        }
        out
    }
}

impl super::RowSink for ResultsFile {
    fn find(&self, key: &RowKey) -> Option<&ResultRow> {
        self.rows.iter().find(|r| r.key() == *key)
    }

    fn push(&mut self, row: ResultRow) -> Result<(), ExperimentError> {
        use crate::features::lock;
        let held =
            lock::lock(&self.path, &mut |_| {}).map_err(|e| ExperimentError::Lock(Box::new(e)))?;
        // Holding the lock, any temp file of results.csv is a killed writer's.
        lock::clean(&self.path, &held).map_err(|e| ExperimentError::Lock(Box::new(e)))?;
        // Another run writing this folder may have added rows since they were read.
        let on_disk = match self.path.exists() {
            true => read_csv(&self.path)?,
            false => Vec::new(),
        };
        let mut rows = on_disk;
        for r in self.rows.drain(..).chain([row]) {
            if !rows.iter().any(|o| o.key() == r.key()) {
                rows.push(r);
            }
        }
        self.rows = rows;
        write_csv(&self.path, &self.rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, options: &str) -> ResultRow {
        ResultRow {
            method: method.into(),
            options: options.into(),
            dataset: "eurosat".into(),
            shots: 16,
            seed: 1,
            validation: Validation::Val,
            model: "0123456789abcdef".into(),
            model_name: "dir with, comma".into(),
            features: "fedcba9876543210".into(),
            val_accuracy: 92.8,
            test_accuracy: f32::NAN,
            train_seconds: 1.5,
            chosen: "alpha=0.4 \"quoted\"".into(),
            augmentation: String::new(),
            protocol: Protocol::FewShot,
            new_accuracy: None,
            source_dataset: String::new(),
        }
    }

    #[test]
    fn csv_round_trips_with_quotes_and_commas() {
        let rows = vec![row("clip-adapter", "branch=both, odd"), row("gda", "")];
        let bytes = to_csv(&rows).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.starts_with(&COLUMNS.join(",")), "{text}");
        assert!(text.contains("92.8,"), "shortest float form: {text}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        std::fs::write(&path, &bytes).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].key(), rows[0].key());
        assert_eq!(back[0].chosen, rows[0].chosen);
        assert!(back[0].test_accuracy.is_nan());
    }

    /// Two runs writing one results folder (each with its own view of the file, as two
    /// processes have) keep every row of both, each once.
    #[test]
    fn runs_sharing_a_results_file_keep_each_others_rows() {
        use crate::experiment::RowSink;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        let seeds = |first: u64| {
            (first..first + 20).map(|seed| ResultRow {
                seed,
                test_accuracy: 50.0,
                ..row("gda", "")
            })
        };
        let (a, b): (Vec<_>, Vec<_>) = (seeds(0).collect(), seeds(100).collect());
        let both = [a.clone(), b.clone()];
        std::thread::scope(|s| {
            for rows in &both {
                let path = &path;
                s.spawn(move || {
                    let mut file = ResultsFile::open(path).unwrap();
                    for r in rows {
                        file.push(r.clone()).unwrap();
                    }
                });
            }
        });
        let back = read_csv(&path).unwrap();
        assert_eq!(
            back.len(),
            40,
            "{:?}",
            back.iter().map(|r| r.seed).collect::<Vec<_>>()
        );
        for r in a.iter().chain(&b) {
            assert_eq!(
                back.iter().filter(|o| o.key() == r.key()).count(),
                1,
                "seed {}",
                r.seed
            );
        }
        // A row both runs made is kept once, as the first write had it.
        let mut late = ResultsFile::open(&path).unwrap();
        let again = ResultRow {
            test_accuracy: 1.0,
            ..a[0].clone()
        };
        late.push(again).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(back.len(), 40);
        assert_eq!(
            back.iter()
                .find(|o| o.key() == a[0].key())
                .unwrap()
                .test_accuracy,
            a[0].test_accuracy
        );
    }

    #[test]
    fn old_header_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        std::fs::write(
            &path,
            "method,options,dataset,shots,seed,val_accuracy,test_accuracy,train_seconds,chosen\n",
        )
        .unwrap();
        let err = ResultsFile::open(&path).unwrap_err().to_string();
        assert!(err.contains("older version"), "{err}");
    }

    #[test]
    fn rows_before_the_augmentation_column_read_it_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        std::fs::write(
            &path,
            format!(
                "{}\ngda,,eurosat,16,1,none,0123,m,f,90,80.5,0.25,alpha=1\n",
                COLUMNS_BEFORE_AUGMENTATION.join(",")
            ),
        )
        .unwrap();
        let rows = read_csv(&path).unwrap();
        assert_eq!(rows[0].validation, Validation::None);
        assert_eq!(
            (rows[0].chosen.as_str(), rows[0].augmentation.as_str()),
            ("alpha=1", "")
        );
    }

    #[test]
    fn rows_before_the_validation_column_read_as_val() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        std::fs::write(
            &path,
            format!(
                "{}\ngda,,eurosat,16,1,0123,m,f,90,80.5,0.25,alpha=1\n",
                COLUMNS_BEFORE_VALIDATION.join(",")
            ),
        )
        .unwrap();
        let rows = read_csv(&path).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].validation, Validation::Val);
        assert_eq!(
            (rows[0].test_accuracy, rows[0].chosen.as_str()),
            (80.5, "alpha=1")
        );
        // Rewritten with the column, the row keeps its identity.
        write_csv(&path, &rows).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(&COLUMNS.join(",")), "{text}");
        assert!(text.contains("gda,,eurosat,16,1,val,0123,"), "{text}");
        assert_eq!(read_csv(&path).unwrap()[0].key(), rows[0].key());
    }

    #[test]
    fn both_protocols_are_distinct_rows_with_distinct_labels() {
        let val = row("gda", "");
        let none = ResultRow {
            validation: Validation::None,
            ..val.clone()
        };
        assert_ne!(val.key(), none.key());
        assert_eq!(val.label(), "gda");
        assert_eq!(none.label(), "gda [no validation]");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.csv");
        write_csv(&path, &[val.clone(), none.clone()]).unwrap();
        let back = read_csv(&path).unwrap();
        assert_eq!(back[1].validation, Validation::None);
        assert_eq!(back[1].key(), none.key());
        let text = std::fs::read_to_string(&path).unwrap();
        let bad = text.replacen(",none,", ",maybe,", 1);
        std::fs::write(&path, bad).unwrap();
        assert!(read_csv(&path).is_err(), "an unknown protocol is refused");
    }
}
