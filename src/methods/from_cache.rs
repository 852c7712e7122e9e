//! Builds a [`FewShotTask`] from the feature cache `clip-adapter extract` fills
//! (docs/data-pipeline.md): for `--dataset D --shots K --seed S` it reads
//! `<cache>/D/train-Kshot-seedS.eval.*`, every `train-Kshot-seedS.augN.*` view,
//! `val-Kshot-seedS.eval.*`, `test.eval.*` and `text.*`. When the cache holds features of
//! several models, `model` (the name given to `extract --model`, or the fingerprint) picks one.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::linalg::Matrix;
use super::{FewShotTask, LabelledSet, MethodError, TextClassifier};
use crate::features::cache::FeatureFile;
use crate::features::text::read_text;

/// Which task to load.
#[derive(Debug, Clone)]
pub struct CacheQuery {
    pub cache: PathBuf,
    pub dataset: String,
    pub shots: usize,
    pub seed: u64,
    pub model: Option<String>,
}

/// Where a task came from: what a head file records.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSource {
    /// The model as named to `extract`.
    pub model_name: String,
    /// Its content fingerprint.
    pub model: String,
    pub templates: Vec<String>,
}

/// One cached file: its name parts and path.
struct Entry {
    part: String,
    view: String,
    path: PathBuf,
}

fn entries(dir: &Path) -> Result<Vec<Entry>, MethodError> {
    let read = std::fs::read_dir(dir).map_err(|source| MethodError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for e in read.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // `<part>.<view>.<key>.safetensors`, or `text.<key>.safetensors`; shards and resume
        // folders are not complete sets.
        if !name.ends_with(".safetensors") || name.contains(".shard-") || name.starts_with('.') {
            continue;
        }
        let parts: Vec<&str> = name.split('.').collect();
        let (part, view) = match parts.len() {
            3 => (parts[0].to_string(), String::new()),
            4 => (parts[0].to_string(), parts[1].to_string()),
            _ => continue,
        };
        out.push(Entry {
            part,
            view,
            path: e.path(),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn matches_model(q: &Option<String>, fingerprint: &str, name: &str) -> bool {
    q.as_ref().is_none_or(|m| m == fingerprint || m == name)
}

fn labels(f: &FeatureFile) -> Result<Vec<usize>, MethodError> {
    f.labels
        .iter()
        .map(|&l| {
            usize::try_from(l).map_err(|_| MethodError::Label {
                what: "a cached label",
                label: 0,
                classes: f.meta.classnames.len(),
            })
        })
        .collect()
}

fn matrix(f: &FeatureFile) -> Matrix {
    Matrix {
        rows: f.rows(),
        cols: f.dim,
        data: f.features.clone(),
    }
}

/// Reads the task; the error names the dataset folder and what is missing or ambiguous.
pub fn load_task(q: &CacheQuery) -> Result<(FewShotTask, TaskSource), MethodError> {
    let dir = q.cache.join(&q.dataset);
    let fail = |msg: String| MethodError::Cache {
        dir: dir.clone(),
        msg,
    };
    let all = entries(&dir)?;
    let draw = format!("{}shot-seed{}", q.shots, q.seed);
    let (train_part, val_part) = (format!("train-{draw}"), format!("val-{draw}"));
    // Read the files of this draw, keeping those of the requested model.
    let mut sets: Vec<(Entry, FeatureFile)> = Vec::new();
    for e in all.into_iter() {
        if e.part == "text" || !(e.part == train_part || e.part == val_part || e.part == "test") {
            continue;
        }
        let f = FeatureFile::read(&e.path)?;
        if matches_model(&q.model, &f.meta.key.model, &f.meta.model_name) {
            sets.push((e, f));
        }
    }
    let models: BTreeSet<(String, String)> = sets
        .iter()
        .map(|(_, f)| (f.meta.key.model.clone(), f.meta.model_name.clone()))
        .collect();
    if models.len() > 1 {
        let names: Vec<String> = models.iter().map(|(fp, n)| format!("{n} ({fp})")).collect();
        return Err(fail(format!(
            "features of several models: {}; choose one with --model",
            names.join(", ")
        )));
    }
    let hint = format!(
        "run `clip-adapter extract --dataset {} --shots {} --seed {}` first",
        q.dataset, q.shots, q.seed
    );
    let Some((fingerprint, model_name)) = models.into_iter().next() else {
        return Err(fail(format!("no cached features for {train_part}; {hint}")));
    };
    let take = |part: &str, view: &str| {
        sets.iter()
            .find(|(e, _)| e.part == part && e.view == view)
            .map(|(_, f)| f)
    };
    let train = take(&train_part, "eval")
        .ok_or_else(|| fail(format!("no `{train_part}.eval` file; {hint}")))?;
    let test = take("test", "eval").ok_or_else(|| fail("no `test.eval` file".into()))?;
    let mut views: Vec<&FeatureFile> = sets
        .iter()
        .filter(|(e, _)| e.part == train_part && e.view.starts_with("aug"))
        .map(|(_, f)| f)
        .collect();
    views.sort_by_key(|f| f.meta.key.view);
    for v in &views {
        if v.index != train.index {
            return Err(fail(format!(
                "augmented view {} does not cover the same images as the evaluation view",
                v.meta.key.view
            )));
        }
    }
    let val = match take(&val_part, "eval") {
        Some(v) => LabelledSet {
            features: matrix(v),
            labels: labels(v)?,
        },
        // ImageNet has no validation split: searches keep their defaults.
        None => LabelledSet {
            features: Matrix::zeros(0, train.dim),
            labels: Vec::new(),
        },
    };
    // The text classifier of the same model (the newest when several template sets exist).
    let mut text = None;
    for e in entries(&dir)?.into_iter().filter(|e| e.part == "text") {
        let bytes = std::fs::read(&e.path).map_err(|source| MethodError::Io {
            path: e.path.clone(),
            source,
        })?;
        let meta = safetensors::SafeTensors::read_metadata(&bytes)
            .ok()
            .and_then(|(_, h)| h.metadata().clone())
            .unwrap_or_default();
        if meta.get("model").is_some_and(|m| *m == fingerprint) {
            let modified = std::fs::metadata(&e.path).and_then(|m| m.modified()).ok();
            if text.as_ref().is_none_or(|(t, _)| modified > *t) {
                text = Some((modified, e.path.clone()));
            }
        }
    }
    let text_path = text
        .ok_or_else(|| fail(format!("no text features for model {model_name}")))?
        .1;
    let t = read_text(&text_path).map_err(|e| fail(e.to_string()))?;
    if t.classnames != train.meta.classnames {
        return Err(fail(format!(
            "{}: class names differ from the image features'",
            text_path.display()
        )));
    }
    let task = FewShotTask {
        classnames: t.classnames.clone(),
        train: LabelledSet {
            features: matrix(train),
            labels: labels(train)?,
        },
        train_views: views.iter().map(|v| matrix(v)).collect(),
        val,
        test: LabelledSet {
            features: matrix(test),
            labels: labels(test)?,
        },
        text: TextClassifier {
            weights: Matrix {
                rows: t.classnames.len(),
                cols: t.dim,
                data: t.weights,
            },
            logit_scale: t.logit_scale,
        },
    };
    task.validate()?;
    Ok((
        task,
        TaskSource {
            model_name,
            model: fingerprint,
            templates: t.templates,
        },
    ))
}
