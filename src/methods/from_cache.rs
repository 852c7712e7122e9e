//! Builds a [`FewShotTask`] from the feature cache `clip-adapter extract` fills
//! (docs/data-pipeline.md): for `--dataset D --shots K --seed S` it reads
//! `<cache>/D/train-Kshot-seedS.eval.*`, the `train-Kshot-seedS.augN.*` views,
//! `val-Kshot-seedS.eval.*`, `test.eval.*` and `text.*`; with [`Shots::All`] the whole-split
//! sets `train.eval.*`, `train.augN.*`, `val.eval.*`.
//!
//! A task is assembled from the sets of ONE extraction: one model, one split identity (the
//! whole train/val/test lists the draw was made from) and one family of augmented views (the
//! same crop parameters and seed). A cache that holds several candidates is ambiguous: the
//! loader stops and lists them with what differs, rather than pairing a train set of one split
//! with the test set of another. Choosing among files reads their headers only.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::linalg::Matrix;
use super::{FewShotTask, LabelledSet, MethodError, TextClassifier};
use crate::features::cache::{shell_quote, DataSource, FeatureFile, Meta};
use crate::features::projection::{projection_path, read_projection};
use crate::features::text::read_text;
use crate::features::{Output, Transform};

/// How many training images per class: a K-shot draw, or the whole train split (what
/// `extract` without `--shots` writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shots {
    K(usize),
    All,
}

impl From<usize> for Shots {
    fn from(k: usize) -> Self {
        Shots::K(k)
    }
}

impl std::fmt::Display for Shots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Shots::K(k) => write!(f, "{k}"),
            Shots::All => f.write_str("all"),
        }
    }
}

impl std::str::FromStr for Shots {
    type Err = String;

    /// `all`, or a number of images per class.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Shots::All);
        }
        s.parse()
            .map(Shots::K)
            .map_err(|_| format!("`{s}`: expected a number of shots or `all`"))
    }
}

impl Shots {
    /// The part names of the train and val sets: `train-Kshot-seedS`, or `train` for all.
    pub fn parts(self, seed: u64) -> (String, String) {
        match self {
            Shots::K(k) => (
                format!("train-{k}shot-seed{seed}"),
                format!("val-{k}shot-seed{seed}"),
            ),
            Shots::All => ("train".into(), "val".into()),
        }
    }
}

/// Which task to load.
#[derive(Debug, Clone)]
pub struct CacheQuery {
    pub cache: PathBuf,
    pub dataset: String,
    pub shots: Shots,
    /// The run seed: the few-shot draw and the augmented views' seed.
    pub seed: u64,
    /// When the cache holds features of several models: the name given to `extract --model`,
    /// or the fingerprint.
    pub model: Option<String>,
    /// When the cache holds several extractions of the dataset (other splits): a prefix of
    /// the split identity the ambiguity error lists.
    pub split: Option<String>,
    /// When the cache holds augmented views made with several crop scales: the one to use.
    pub crop_scale: Option<(f64, f64)>,
}

impl CacheQuery {
    /// A query for `shots` of `dataset` with every selector left open.
    pub fn new(cache: impl Into<PathBuf>, dataset: &str, shots: Shots, seed: u64) -> Self {
        CacheQuery {
            cache: cache.into(),
            dataset: dataset.to_string(),
            shots,
            seed,
            model: None,
            split: None,
            crop_scale: None,
        }
    }
}

/// Where a task came from: what a head file records.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSource {
    /// The model as named to `extract`.
    pub model_name: String,
    /// Its content fingerprint.
    pub model: String,
    pub templates: Vec<String>,
    /// The split identity of the extraction the sets came from.
    pub split: String,
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
        // `<part>.<view>.<key>.safetensors`, or `text.<key>.safetensors`; shards, temp files
        // and resume folders are not complete sets.
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

/// A file's header, read for choosing.
struct Candidate {
    entry: Entry,
    meta: Meta,
}

fn file_names(c: &[&Candidate]) -> String {
    c.iter()
        .map(|c| {
            c.entry
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `extract` command that writes what the query needs, as precise as the cache allows:
/// the model and the image source come from any file of the dataset that records them.
fn extract_hint(q: &CacheQuery, known: &[Meta]) -> String {
    let model = q
        .model
        .clone()
        .or_else(|| known.iter().map(|m| m.model_name.clone()).next());
    let sources: BTreeSet<String> = known
        .iter()
        .filter(|m| matches_model(&q.model, &m.key.model, &m.model_name))
        .filter_map(|m| m.source.as_ref().map(DataSource::args))
        .collect();
    let benchmark = crate::data::benchmarks::BENCHMARKS
        .iter()
        .any(|b| b.key == q.dataset);
    let (source, note) = match (sources.len(), benchmark) {
        (1, _) => (
            sources.into_iter().next().unwrap_or_default(),
            String::new(),
        ),
        (_, true) => (
            format!("--dataset {} --root DIR", shell_quote(&q.dataset)),
            " (DIR: CoOp's data folder)".to_string(),
        ),
        (_, false) => (
            "--folder DIR".to_string(),
            format!(
                " (`{}` is not a benchmark: DIR is the folder of its images; for a list of \
                 images use --manifest FILE, for a split file --split FILE)",
                q.dataset
            ),
        ),
    };
    let (model, model_note) = match model {
        Some(m) => (shell_quote(&m), ""),
        None => (
            "MODEL".to_string(),
            " (MODEL: the model directory or hub id)",
        ),
    };
    let shots = match q.shots {
        Shots::K(k) => format!(" --shots {k}"),
        Shots::All => String::new(),
    };
    format!(
        "run `clip-adapter extract --model {model} --cache {} {source}{shots} --seed {}` first{note}{model_note}",
        shell_quote(&q.cache.display().to_string()),
        q.seed
    )
}

/// A short description of an extraction for the ambiguity message: its source and the size
/// of its test set.
fn describe_extraction(group: &[&Candidate]) -> String {
    let source = group
        .iter()
        .find_map(|c| c.meta.source.as_ref())
        .map_or("source not recorded".to_string(), DataSource::args);
    match group.iter().find(|c| c.entry.part == "test") {
        Some(t) => format!("from `{source}` (test set: {} images)", t.meta.total),
        None => format!("from `{source}`"),
    }
}

/// Reads the task; the error names the dataset folder and what is missing or ambiguous.
pub fn load_task(q: &CacheQuery) -> Result<(FewShotTask, TaskSource), MethodError> {
    let dir = q.cache.join(&q.dataset);
    let fail = |msg: String| MethodError::Cache {
        dir: dir.clone(),
        msg,
    };
    let all = match entries(&dir) {
        Ok(all) => all,
        Err(MethodError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail(format!(
                "no cached features of `{}`; {}",
                q.dataset,
                extract_hint(q, &[])
            )))
        }
        Err(e) => return Err(e),
    };
    let (train_part, val_part) = q.shots.parts(q.seed);
    // Headers of every image-feature file of the dataset (for the hint), and of this draw.
    let mut known = Vec::new();
    let mut sets: Vec<Candidate> = Vec::new();
    for e in (all.into_iter()).filter(|e| e.part != "text" && e.part != "projection") {
        let wanted = e.part == train_part || e.part == val_part || e.part == "test";
        // Other draws' files only inform the hint: one of them unreadable does not matter here.
        let meta = match FeatureFile::read_meta(&e.path) {
            Ok(m) => m,
            Err(_) if !wanted => continue,
            Err(err) => return Err(err.into()),
        };
        if wanted && matches_model(&q.model, &meta.key.model, &meta.model_name) {
            sets.push(Candidate {
                entry: e,
                meta: meta.clone(),
            });
        }
        known.push(meta);
    }
    let hint = extract_hint(q, &known);
    let models: BTreeSet<(String, String)> = sets
        .iter()
        .map(|c| (c.meta.key.model.clone(), c.meta.model_name.clone()))
        .collect();
    if models.len() > 1 {
        let names: Vec<String> = models.iter().map(|(fp, n)| format!("{n} ({fp})")).collect();
        return Err(fail(format!(
            "features of several models: {}; choose one with --model",
            names.join(", ")
        )));
    }
    let Some((fingerprint, model_name)) = models.into_iter().next() else {
        return Err(fail(format!("no cached features for {train_part}; {hint}")));
    };

    // One extraction: the sets that share a split identity.
    let mut groups: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in &sets {
        if q.split
            .as_ref()
            .is_none_or(|s| c.meta.key.split.starts_with(s))
        {
            groups.entry(&c.meta.key.split).or_default().push(c);
        }
    }
    let has = |g: &[&Candidate], part: &str| {
        g.iter()
            .any(|c| c.entry.part == part && c.entry.view == "eval")
    };
    let complete: Vec<(&str, &Vec<&Candidate>)> = groups
        .iter()
        .filter(|(_, g)| has(g, &train_part) && has(g, "test"))
        .map(|(s, g)| (*s, g))
        .collect();
    let (split, group) = match complete.len() {
        1 => complete[0],
        0 => {
            let lacking: Vec<String> = groups
                .values()
                .map(|g| {
                    let missing: Vec<&str> = [train_part.as_str(), "test"]
                        .into_iter()
                        .filter(|p| !has(g, p))
                        .collect();
                    format!(
                        "the extraction {} lacks {}.eval",
                        describe_extraction(g),
                        missing.join(".eval and ")
                    )
                })
                .collect();
            let why = if lacking.is_empty() {
                format!("no `{train_part}.eval` file")
            } else {
                lacking.join("; ")
            };
            return Err(fail(format!("{why}; {hint}")));
        }
        _ => {
            let list: Vec<String> = complete
                .iter()
                .map(|(s, g)| {
                    format!(
                        "  split {s}: {} ({})",
                        describe_extraction(g),
                        file_names(g)
                    )
                })
                .collect();
            return Err(fail(format!(
                "ambiguous: {} extractions of `{}` with different train/val/test splits hold \
                 {train_part}, and a task must come from one (a train set of one split and the \
                 test set of another would share images):\n{}\nkeep one: delete the files of \
                 the others, or extract each into its own --cache folder",
                complete.len(),
                q.dataset,
                list.join("\n")
            )));
        }
    };
    let pick = |part: &str| {
        group
            .iter()
            .find(|c| c.entry.part == part && c.entry.view == "eval")
    };
    let read = |c: &Candidate| FeatureFile::read(&c.entry.path);
    let train_c = pick(&train_part).ok_or_else(|| fail(format!("no `{train_part}.eval` file")))?;
    let train = read(train_c)?;
    let test = read(pick("test").ok_or_else(|| fail("no `test.eval` file".into()))?)?;
    let val = pick(&val_part).map(|c| read(c)).transpose()?;

    // Augmented views of one family: the run's seed and one set of crop parameters.
    let mut families: BTreeMap<String, Vec<&Candidate>> = BTreeMap::new();
    for c in group
        .iter()
        .filter(|c| c.entry.part == train_part && c.entry.view.starts_with("aug"))
    {
        let Transform::Augment { augment, seed, .. } = &c.meta.key.transform else {
            continue;
        };
        let scale_ok = q.crop_scale.is_none_or(|s| s == augment.scale);
        if *seed == q.seed && scale_ok {
            let family = serde_json::to_string(&c.meta.key.transform).unwrap_or_default();
            families.entry(family).or_default().push(c);
        }
    }
    if families.len() > 1 {
        let list: Vec<String> = families
            .values()
            .map(|g| {
                let what = match &g[0].meta.key.transform {
                    Transform::Augment { augment, .. } => format!(
                        "crop scale {},{}, ratio {:.4},{:.4}, flip {}",
                        augment.scale.0,
                        augment.scale.1,
                        augment.ratio.0,
                        augment.ratio.1,
                        augment.flip
                    ),
                    Transform::Eval { .. } => String::new(),
                };
                format!("  {} view(s) with {what} ({})", g.len(), file_names(g))
            })
            .collect();
        return Err(fail(format!(
            "ambiguous: the augmented views of {train_part} come from {} runs with different \
             view transforms, and a task must use one:\n{}\nkeep one: delete the files of the \
             others, or extract each into its own --cache folder",
            families.len(),
            list.join("\n")
        )));
    }
    let mut view_files: Vec<&Candidate> = families.into_values().next().unwrap_or_default();
    view_files.sort_by_key(|c| c.meta.key.view);
    let view_keys: Vec<&crate::features::SetKey> = view_files.iter().map(|c| &c.meta.key).collect();
    let mut views = Vec::with_capacity(view_files.len());
    for c in view_files.iter().copied() {
        let v = read(c)?;
        if v.index != train.index {
            return Err(fail(format!(
                "augmented view {} does not cover the same images as the evaluation view",
                v.meta.key.view
            )));
        }
        views.push(v);
    }
    let val_file = val;
    let val = match &val_file {
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
        .ok_or_else(|| fail(format!("no text features for model {model_name}; {hint}")))?
        .1;
    let t = read_text(&text_path).map_err(|source| MethodError::TextFeatures {
        path: text_path.clone(),
        source: Box::new(source),
    })?;
    if t.classnames != train.meta.classnames {
        return Err(fail(format!(
            "{}: class names differ from the image features'",
            text_path.display()
        )));
    }
    // ProLIP's inputs when the extraction kept them: the pre-projection twin of every set the
    // task uses, and the model's projection.
    let twin = |key: &crate::features::SetKey| {
        group.iter().find(|c| {
            c.meta.key.output == Output::PreProjection
                && crate::features::SetKey {
                    output: Output::Projected,
                    ..c.meta.key.clone()
                } == *key
        })
    };
    let read_twin = |of: &FeatureFile| -> Result<Option<Matrix>, MethodError> {
        let Some(c) = twin(&of.meta.key) else {
            return Ok(None);
        };
        let f = read(c)?;
        if f.index != of.index {
            return Err(fail(format!(
                "{}: the pre-projection features do not cover the same images as {}",
                c.entry.path.display(),
                of.meta.key.file_name()
            )));
        }
        Ok(Some(matrix(&f)))
    };
    let projection_file = projection_path(&q.cache, &q.dataset, &fingerprint);
    let mut pre_projection = None;
    if let (Some(pre_train), Some(pre_test), true) = (
        read_twin(&train)?,
        read_twin(&test)?,
        projection_file.is_file(),
    ) {
        let pre_val = match &val_file {
            Some(v) => read_twin(v)?,
            None => Some(Matrix::zeros(0, pre_train.cols)),
        };
        let mut pre_views = Vec::with_capacity(views.len());
        for (key, v) in view_keys.iter().zip(&views) {
            debug_assert_eq!(*key, &v.meta.key);
            if let Some(m) = read_twin(v)? {
                pre_views.push(m);
            }
        }
        if let (Some(pre_val), true) = (pre_val, pre_views.len() == views.len()) {
            let p = read_projection(&projection_file)?;
            if p.model != fingerprint {
                return Err(fail(format!(
                    "{} holds the projection of model {}, not {fingerprint}",
                    projection_file.display(),
                    p.model
                )));
            }
            pre_projection = Some(Box::new(super::prolip::PreProjection {
                projection: super::prolip::Projection {
                    weight: Matrix {
                        rows: p.rows,
                        cols: p.cols,
                        data: p.weight,
                    },
                    bias: p.bias,
                },
                train: pre_train,
                train_views: pre_views,
                val: pre_val,
                test: pre_test,
            }));
        }
    }
    let task = FewShotTask {
        pre_projection,
        text_mean: t.mean.clone().map(|data| Matrix {
            rows: t.classnames.len(),
            cols: t.dim,
            data,
        }),
        classnames: t.classnames.clone(),
        train: LabelledSet {
            features: matrix(&train),
            labels: labels(&train)?,
        },
        train_views: views.iter().map(matrix).collect(),
        val,
        test: LabelledSet {
            features: matrix(&test),
            labels: labels(&test)?,
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
    if let Some(p) = &task.pre_projection {
        p.validate(&task)?;
    }
    Ok((
        task,
        TaskSource {
            model_name,
            model: fingerprint,
            templates: t.templates,
            split: split.to_string(),
        },
    ))
}
