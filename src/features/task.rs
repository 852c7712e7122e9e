//! Builds a [`FewShotTask`] from the feature cache an extraction fills
//! (docs/data-pipeline.md): for dataset D, K shots and seed S it reads
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

use crate::clip::Precision;
use crate::features::cache::{DataSource, FeatureFile, Meta};
use crate::features::projection::{projection_path, read_projection};
use crate::features::text::read_text;
use crate::features::{FeatureError, Output, Transform};
use crate::hint::{self, Value};
use crate::methods::linalg::Matrix;
use crate::methods::pre_projection::{PreProjection, Projection};
use crate::methods::{DrawImages, FewShotTask, LabelledSet, MethodError, TextClassifier};

/// How many training images per class: a K-shot draw, or the whole train split (what
/// an extraction without a few-shot draw writes).
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

/// A count as a JSON number, the whole split as `"all"`.
impl serde::Serialize for Shots {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Shots::K(k) => s.serialize_u64(*k as u64),
            Shots::All => s.serialize_str("all"),
        }
    }
}

/// Text that is neither a positive shot count nor `all`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{given}` is not a shot count: give a positive number, or `all` for the whole training split"
)]
pub struct NotShots {
    pub given: String,
}

impl std::str::FromStr for Shots {
    type Err = NotShots;

    /// `all`, or a positive number of images per class.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("all") {
            return Ok(Shots::All);
        }
        match s.parse() {
            Ok(k) if k > 0 => Ok(Shots::K(k)),
            _ => Err(NotShots {
                given: s.to_string(),
            }),
        }
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
    /// When the cache holds features of several models: the model's name as given to the
    /// extraction (`NAME+bf16` for its `--precision bf16` features), or its fingerprint.
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

fn entries(dir: &Path) -> Result<Vec<Entry>, FeatureError> {
    let read = std::fs::read_dir(dir).map_err(|source| FeatureError::Io {
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

/// Whether a set of the model `name` with `fingerprint` is the one asked for: by fingerprint,
/// or by name, which for bfloat16 features is `NAME+bf16` (so that the name alone keeps
/// meaning the f32 features when a cache holds both).
fn matches_model(q: &Option<String>, fingerprint: &str, name: &str) -> bool {
    let named = Precision::of_fingerprint(fingerprint).fingerprint(name);
    q.as_ref().is_none_or(|m| *m == fingerprint || *m == named)
}

fn labels(f: &FeatureFile) -> Result<Vec<usize>, FeatureError> {
    f.labels
        .iter()
        .map(|&l| {
            usize::try_from(l).map_err(|_| {
                FeatureError::from(MethodError::Label {
                    what: "a cached label",
                    label: 0,
                    classes: f.meta.classnames.len(),
                })
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

/// What the cache lacks, or holds more than once, for a query: data, so that a caller can say
/// how to fix it in its own terms (the command line prints the `extract` command to run).
#[derive(Debug, Clone, PartialEq)]
pub enum CacheProblem {
    /// Nothing the query needs is there yet: extract it ([`ExtractHint`] says with what).
    Missing { missing: Missing, hint: ExtractHint },
    /// Features of several models, and the query names none.
    SeveralModels {
        /// `(name as given to extract, fingerprint)`.
        models: Vec<(String, String)>,
    },
    /// Several extractions with different splits hold the draw.
    SeveralSplits {
        dataset: String,
        part: String,
        extractions: Vec<Extraction>,
    },
    /// The draw's augmented views come from runs with different view transforms.
    SeveralViewRuns {
        part: String,
        /// Per run: how many views, the transform, the files.
        runs: Vec<(usize, String, String)>,
    },
    /// Files that do not belong together (other images, other classes, another model).
    Inconsistent(String),
}

/// What a query found missing.
#[derive(Debug, Clone, PartialEq)]
pub enum Missing {
    /// No folder for the dataset.
    Dataset(String),
    /// No file of the draw (`train-16shot-seed1`) for the model.
    Draw(String),
    /// Extractions of the draw lack parts (their `.eval` files); empty: no `<draw>.eval`.
    Parts {
        draw: String,
        lacking: Vec<(Extraction, Vec<String>)>,
    },
    /// No class-name prompt features of the model.
    Text { model: String },
}

/// One extraction of a dataset, as the cache recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct Extraction {
    /// The split identity.
    pub split: String,
    /// Where its images came from, when recorded.
    pub source: Option<DataSource>,
    /// The size of its test set, when it has one.
    pub test_images: Option<usize>,
    /// Its file names, comma-separated.
    pub files: String,
}

/// What an extraction that fills the gap needs: as precise as the cache allows, the model and
/// the image source coming from any file of the dataset that records them.
#[derive(Debug, Clone, PartialEq)]
pub struct ExtractHint {
    /// The model as the user named it; unknown when no file records one.
    pub model: Option<String>,
    pub cache: PathBuf,
    pub dataset: String,
    pub source: HintSource,
    pub shots: Shots,
    pub seed: u64,
}

/// Where the images of the missing extraction are.
#[derive(Debug, Clone, PartialEq)]
pub enum HintSource {
    /// As the dataset's other files record it.
    Recorded(DataSource),
    /// A benchmark, under CoOp's data folder (unknown).
    Benchmark,
    /// Not a benchmark and not recorded: a folder, manifest or split file (unknown).
    Unknown,
}

impl ExtractHint {
    /// The `extract` call that writes what is missing, and what its stand-ins mean.
    pub fn command(&self) -> (hint::Command, String) {
        let mut note = String::new();
        let source = match &self.source {
            HintSource::Recorded(s) => s.options(),
            HintSource::Benchmark => {
                note.push_str(" (DIR: CoOp's data folder)");
                vec![
                    ("dataset", Some(Value::Given(self.dataset.clone()))),
                    ("root", Some(Value::Placeholder("DIR"))),
                ]
            }
            HintSource::Unknown => {
                note.push_str(&format!(
                    " (`{}` is not a benchmark: DIR is the folder of its images; for a list of \
                     images use {}, for a split file {})",
                    self.dataset,
                    hint::opt_placeholder("manifest", "FILE"),
                    hint::opt_placeholder("split", "FILE"),
                ));
                vec![("folder", Some(Value::Placeholder("DIR")))]
            }
        };
        let command = match &self.model {
            Some(m) => hint::Command::new("extract").given("model", m),
            None => {
                note.push_str(" (MODEL: the model directory or hub id)");
                hint::Command::new("extract").placeholder("model", "MODEL")
            }
        };
        let mut command = (command.given("cache", self.cache.display())).with(source);
        if let Shots::K(k) = self.shots {
            command = command.given("shots", k);
        }
        (command.given("seed", self.seed), note)
    }
}

/// Keeping one of several extractions.
fn keep_one() -> String {
    format!(
        "keep one: delete the files of the others, or extract each into its own {} folder",
        hint::opt("cache")
    )
}

impl std::fmt::Display for CacheProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheProblem::Missing { missing, hint } => {
                let (command, note) = hint.command();
                write!(f, "{missing}; run {command} first{note}")
            }
            CacheProblem::SeveralModels { models } => {
                let names: Vec<String> =
                    models.iter().map(|(n, fp)| format!("{n} ({fp})")).collect();
                let model = hint::opt("model");
                write!(
                    f,
                    "features of several models: {}; choose one with {model}",
                    names.join(", ")
                )
            }
            CacheProblem::SeveralSplits {
                dataset,
                part,
                extractions,
            } => {
                let list: Vec<String> = extractions
                    .iter()
                    .map(|e| format!("  split {}: {} ({})", e.split, e, e.files))
                    .collect();
                write!(
                    f,
                    "ambiguous: {} extractions of `{dataset}` with different train/val/test \
                     splits hold {part}, and a task must come from one (a train set of one split \
                     and the test set of another would share images):\n{}\n{}",
                    extractions.len(),
                    list.join("\n"),
                    keep_one()
                )
            }
            CacheProblem::SeveralViewRuns { part, runs } => {
                let list: Vec<String> = (runs.iter())
                    .map(|(n, what, files)| format!("  {n} view(s) with {what} ({files})"))
                    .collect();
                write!(
                    f,
                    "ambiguous: the augmented views of {part} come from {} runs with different \
                     view transforms, and a task must use one:\n{}\n{}",
                    runs.len(),
                    list.join("\n"),
                    keep_one()
                )
            }
            CacheProblem::Inconsistent(msg) => f.write_str(msg),
        }
    }
}

impl std::fmt::Display for Missing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Missing::Dataset(d) => write!(f, "no cached features of `{d}`"),
            Missing::Draw(part) => write!(f, "no cached features for {part}"),
            Missing::Parts { draw, lacking } if lacking.is_empty() => {
                write!(f, "no `{draw}.eval` file")
            }
            Missing::Parts { lacking, .. } => {
                let lines: Vec<String> = (lacking.iter())
                    .map(|(e, parts)| {
                        format!("the extraction {e} lacks {}.eval", parts.join(".eval and "))
                    })
                    .collect();
                f.write_str(&lines.join("; "))
            }
            Missing::Text { model } => write!(f, "no text features for model {model}"),
        }
    }
}

/// `from <the extract options of its source> (test set: N images)`.
impl std::fmt::Display for Extraction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            Some(s) => write!(f, "from {}", hint::options(&s.options()))?,
            None => f.write_str("from `source not recorded`")?,
        }
        match self.test_images {
            Some(n) => write!(f, " (test set: {n} images)"),
            None => Ok(()),
        }
    }
}

fn extract_hint(q: &CacheQuery, known: &[Meta]) -> ExtractHint {
    let model = q
        .model
        .clone()
        .or_else(|| known.iter().map(|m| m.model_name.clone()).next());
    let mut sources: Vec<&DataSource> = Vec::new();
    for m in known.iter() {
        let Some(source) = m.source.as_ref() else {
            continue;
        };
        if matches_model(&q.model, &m.key.model, &m.model_name) && !sources.contains(&source) {
            sources.push(source);
        }
    }
    let benchmark = crate::data::benchmarks::all_benchmarks().any(|b| b.key == q.dataset);
    let source = match (sources.as_slice(), benchmark) {
        ([one], _) => HintSource::Recorded((*one).clone()),
        (_, true) => HintSource::Benchmark,
        (_, false) => HintSource::Unknown,
    };
    ExtractHint {
        model,
        cache: q.cache.clone(),
        dataset: q.dataset.clone(),
        source,
        shots: q.shots,
        seed: q.seed,
    }
}

fn extraction(split: &str, group: &[&Candidate]) -> Extraction {
    Extraction {
        split: split.to_string(),
        source: group.iter().find_map(|c| c.meta.source.clone()),
        test_images: (group.iter())
            .find(|c| c.entry.part == "test")
            .map(|t| t.meta.total),
        files: file_names(group),
    }
}

/// The headers of a dataset's files: every image-feature file (for the hint), and those of
/// the query's draw and model.
struct Survey {
    dir: PathBuf,
    hint: ExtractHint,
    sets: Vec<Candidate>,
    train_part: String,
    val_part: String,
    /// Split identities with a training file of any draw: an extraction without one holds
    /// a test set only (a test-only dataset, such as the ImageNet variants).
    trained: BTreeSet<String>,
}

impl Survey {
    fn fail(&self, problem: CacheProblem) -> FeatureError {
        FeatureError::Cache {
            dir: self.dir.clone(),
            problem: Box::new(problem),
        }
    }

    fn missing(&self, missing: Missing) -> FeatureError {
        self.fail(CacheProblem::Missing {
            missing,
            hint: self.hint.clone(),
        })
    }

    fn inconsistent(&self, msg: String) -> FeatureError {
        self.fail(CacheProblem::Inconsistent(msg))
    }
}

fn survey(q: &CacheQuery) -> Result<Survey, FeatureError> {
    let dir = q.cache.join(&q.dataset);
    let (train_part, val_part) = q.shots.parts(q.seed);
    let all = match entries(&dir) {
        Ok(all) => all,
        Err(FeatureError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            let s = Survey {
                hint: extract_hint(q, &[]),
                dir,
                sets: Vec::new(),
                train_part,
                val_part,
                trained: BTreeSet::new(),
            };
            return Err(s.missing(Missing::Dataset(q.dataset.clone())));
        }
        Err(e) => return Err(e),
    };
    let mut known = Vec::new();
    let mut sets: Vec<Candidate> = Vec::new();
    let mut trained = BTreeSet::new();
    for e in (all.into_iter()).filter(|e| e.part != "text" && e.part != "projection") {
        if e.part == "train" || e.part.starts_with("train-") {
            if let Ok(meta) = FeatureFile::read_meta(&e.path) {
                trained.insert(meta.key.split);
            }
        }
        let wanted = e.part == train_part || e.part == val_part || e.part == "test";
        // Other draws' files only inform the hint: one of them unreadable does not matter here.
        let meta = match FeatureFile::read_meta(&e.path) {
            Ok(m) => m,
            Err(_) if !wanted => continue,
            Err(err) => return Err(err),
        };
        if wanted && matches_model(&q.model, &meta.key.model, &meta.model_name) {
            sets.push(Candidate {
                entry: e,
                meta: meta.clone(),
            });
        }
        known.push(meta);
    }
    Ok(Survey {
        hint: extract_hint(q, &known),
        dir,
        sets,
        train_part,
        val_part,
        trained,
    })
}

/// The one model of the draw's files: `(fingerprint, name)`.
fn one_model(s: &Survey) -> Result<(String, String), FeatureError> {
    let models: BTreeSet<(String, String)> = (s.sets.iter())
        .map(|c| (c.meta.key.model.clone(), c.meta.model_name.clone()))
        .collect();
    if models.len() > 1 {
        // Each listed by the name `--model` takes (`NAME+bf16` for bfloat16 features).
        let models = (models.into_iter())
            .map(|(fp, n)| (Precision::of_fingerprint(&fp).fingerprint(&n), fp))
            .collect();
        return Err(s.fail(CacheProblem::SeveralModels { models }));
    }
    (models.into_iter().next()).ok_or_else(|| s.missing(Missing::Draw(s.train_part.clone())))
}

fn has_eval(g: &[&Candidate], part: &str) -> bool {
    g.iter()
        .any(|c| c.entry.part == part && c.entry.view == "eval")
}

/// One extraction: the sets that share a split identity and hold the draw and the test set.
fn one_extraction<'a>(
    q: &CacheQuery,
    s: &'a Survey,
) -> Result<(&'a str, Vec<&'a Candidate>), FeatureError> {
    let mut groups: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for c in &s.sets {
        if q.split
            .as_ref()
            .is_none_or(|p| c.meta.key.split.starts_with(p))
        {
            groups.entry(&c.meta.key.split).or_default().push(c);
        }
    }
    let train = s.train_part.as_str();
    let mut complete: Vec<(&str, Vec<&Candidate>)> = groups
        .iter()
        .filter(|(split, g)| {
            let test_only = !s.trained.contains(**split);
            (has_eval(g, train) || test_only) && has_eval(g, "test")
        })
        .map(|(k, g)| (*k, g.clone()))
        .collect();
    match complete.len() {
        1 => Ok(complete.remove(0)),
        0 => {
            let lacking = (groups.iter())
                .map(|(split, g)| {
                    let missing = [train, "test"].into_iter().filter(|p| !has_eval(g, p));
                    (extraction(split, g), missing.map(str::to_string).collect())
                })
                .collect();
            Err(s.missing(Missing::Parts {
                draw: s.train_part.clone(),
                lacking,
            }))
        }
        _ => Err(s.fail(CacheProblem::SeveralSplits {
            dataset: q.dataset.clone(),
            part: s.train_part.clone(),
            extractions: complete.iter().map(|(k, g)| extraction(k, g)).collect(),
        })),
    }
}

/// The image files of one extraction, read.
struct Sets {
    /// `None` for a test-only extraction.
    train: Option<FeatureFile>,
    val: Option<FeatureFile>,
    test: FeatureFile,
    views: Vec<FeatureFile>,
}

fn read_sets(q: &CacheQuery, s: &Survey, group: &[&Candidate]) -> Result<Sets, FeatureError> {
    let pick = |part: &str| {
        group
            .iter()
            .find(|c| c.entry.part == part && c.entry.view == "eval")
    };
    let read = |c: &Candidate| FeatureFile::read(&c.entry.path);
    let train_part = &s.train_part;
    let test_only = group.iter().all(|c| !s.trained.contains(&c.meta.key.split));
    let train = match (pick(train_part), test_only) {
        (Some(c), _) => Some(read(c)?),
        (None, true) => None,
        (None, false) => return Err(s.inconsistent(format!("no `{train_part}.eval` file"))),
    };
    let test = read(pick("test").ok_or_else(|| s.inconsistent("no `test.eval` file".into()))?)?;
    let val = pick(&s.val_part).map(|c| read(c)).transpose()?;
    let mut views = Vec::new();
    for c in view_files(q, s, group)? {
        let v = read(c)?;
        if train.as_ref().is_none_or(|t| v.index != t.index) {
            return Err(s.inconsistent(format!(
                "augmented view {} does not cover the same images as the evaluation view",
                v.meta.key.view
            )));
        }
        views.push(v);
    }
    Ok(Sets {
        train,
        val,
        test,
        views,
    })
}

/// Augmented views of one family: the run's seed and one set of crop parameters, in order.
fn view_files<'a>(
    q: &CacheQuery,
    s: &Survey,
    group: &[&'a Candidate],
) -> Result<Vec<&'a Candidate>, FeatureError> {
    let mut families: BTreeMap<String, Vec<&Candidate>> = BTreeMap::new();
    for c in group
        .iter()
        .filter(|c| c.entry.part == s.train_part && c.entry.view.starts_with("aug"))
    {
        let Transform::Augment { augment, seed, .. } = &c.meta.key.transform else {
            continue;
        };
        let scale_ok = q.crop_scale.is_none_or(|sc| sc == augment.scale);
        if *seed == q.seed && scale_ok {
            let family = serde_json::to_string(&c.meta.key.transform).unwrap_or_default();
            families.entry(family).or_default().push(c);
        }
    }
    if families.len() > 1 {
        let runs = (families.values())
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
                    Transform::Eval { .. } | Transform::Imported => String::new(),
                };
                (g.len(), what, file_names(g))
            })
            .collect();
        return Err(s.fail(CacheProblem::SeveralViewRuns {
            part: s.train_part.clone(),
            runs,
        }));
    }
    let mut files: Vec<&Candidate> = families.into_values().next().unwrap_or_default();
    files.sort_by_key(|c| c.meta.key.view);
    Ok(files)
}

/// The text classifier of the model (the newest file when several template sets exist).
fn read_text_for(
    s: &Survey,
    fingerprint: &str,
    model_name: &str,
    classnames: &[String],
) -> Result<crate::features::text::TextFeatures, FeatureError> {
    let mut text = None;
    for e in entries(&s.dir)?.into_iter().filter(|e| e.part == "text") {
        let bytes = std::fs::read(&e.path).map_err(|source| FeatureError::Io {
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
    let model = model_name.to_string();
    let path = text.ok_or_else(|| s.missing(Missing::Text { model }))?.1;
    let t = read_text(&path)?;
    if t.classnames != classnames {
        return Err(s.inconsistent(format!(
            "{}: class names differ from the image features'",
            path.display()
        )));
    }
    Ok(t)
}

/// ProLIP's inputs when the extraction kept them: the pre-projection twin of every set the
/// task uses, and the model's projection.
fn read_pre_projection(
    q: &CacheQuery,
    s: &Survey,
    group: &[&Candidate],
    sets: &Sets,
    fingerprint: &str,
) -> Result<Option<Box<PreProjection>>, FeatureError> {
    let read_twin = |of: &FeatureFile| -> Result<Option<Matrix>, FeatureError> {
        let twin = group.iter().find(|c| {
            c.meta.key.output == Output::PreProjection
                && crate::features::SetKey {
                    output: Output::Projected,
                    ..c.meta.key.clone()
                } == of.meta.key
        });
        let Some(c) = twin else {
            return Ok(None);
        };
        let f = FeatureFile::read(&c.entry.path)?;
        if f.index != of.index {
            return Err(s.inconsistent(format!(
                "{}: the pre-projection features do not cover the same images as {}",
                c.entry.path.display(),
                of.meta.key.file_name()
            )));
        }
        Ok(Some(matrix(&f)))
    };
    let projection_file = projection_path(&q.cache, &q.dataset, fingerprint);
    let test = read_twin(&sets.test)?;
    let train = match &sets.train {
        Some(t) => read_twin(t)?,
        // A test-only extraction: no training rows.
        None => test.as_ref().map(|m| Matrix::zeros(0, m.cols)),
    };
    let (Some(train), Some(test), true) = (train, test, projection_file.is_file()) else {
        return Ok(None);
    };
    let val = match &sets.val {
        Some(v) => read_twin(v)?,
        None => Some(Matrix::zeros(0, train.cols)),
    };
    let mut train_views = Vec::with_capacity(sets.views.len());
    for v in &sets.views {
        if let Some(m) = read_twin(v)? {
            train_views.push(m);
        }
    }
    let (Some(val), true) = (val, train_views.len() == sets.views.len()) else {
        return Ok(None);
    };
    let p = read_projection(&projection_file)?;
    if p.model != fingerprint {
        return Err(s.inconsistent(format!(
            "{} holds the projection of model {}, not {fingerprint}",
            projection_file.display(),
            p.model
        )));
    }
    Ok(Some(Box::new(PreProjection {
        projection: Projection {
            weight: Matrix {
                rows: p.rows,
                cols: p.cols,
                data: p.weight,
            },
            bias: p.bias,
        },
        train,
        train_views,
        val,
        test,
    })))
}

/// How large a draw is, read from its files' headers alone (no features are read): what a
/// sharded grid weighs its cells by before fitting any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrawSize {
    pub classes: usize,
    /// Images of the few-shot training set, the validation set (0 without one) and the test
    /// set.
    pub train: usize,
    pub val: usize,
    pub test: usize,
}

impl DrawSize {
    /// Every image a fit of the draw reads.
    pub fn images(&self) -> usize {
        self.train + self.val + self.test
    }
}

/// The size of the draw `q` asks for, from the headers of the files [`load_task`] would read;
/// refused for the same reasons (missing, ambiguous).
pub fn draw_size(q: &CacheQuery) -> Result<DrawSize, FeatureError> {
    let s = survey(q)?;
    one_model(&s)?;
    let (_, group) = one_extraction(q, &s)?;
    let meta = |part: &str| {
        (group.iter())
            .find(|c| c.entry.part == part && c.entry.view == "eval")
            .map(|c| &c.meta)
    };
    let train_part = &s.train_part;
    let train =
        meta(train_part).ok_or_else(|| s.inconsistent(format!("no `{train_part}.eval` file")))?;
    let test = meta("test").ok_or_else(|| s.inconsistent("no `test.eval` file".into()))?;
    Ok(DrawSize {
        classes: train.classnames.len(),
        train: train.total,
        val: meta(&s.val_part).map_or(0, |m| m.total),
        test: test.total,
    })
}

/// The images of the draw [`load_task`] reads, found through the cache's record of where they
/// came from (`source` and `impaths`).
pub fn draw_images(q: &CacheQuery) -> Result<DrawImages, FeatureError> {
    let s = survey(q)?;
    let (_, group) = one_extraction(q, &s)?;
    let sets = read_sets(q, &s, &group)?;
    let train = sets.train.as_ref().ok_or_else(|| FeatureError::NoImages {
        path: sets.test.meta.key.dataset.clone().into(),
        why: "the draw has no training images",
    })?;
    let preprocess = match &sets.test.meta.key.transform {
        Transform::Eval { preprocess } => preprocess.clone(),
        _ => {
            return Err(FeatureError::NoImages {
                path: q.cache.join(&q.dataset),
                why: "the features were imported",
            })
        }
    };
    let (train, train_keys) = image_paths(q, train)?;
    Ok(DrawImages {
        train,
        train_keys,
        test: image_paths(q, &sets.test)?.0,
        preprocess,
    })
}

/// The image file of each row of a feature file, and its path as the set records it (relative
/// to the image root).
fn image_paths(
    q: &CacheQuery,
    f: &FeatureFile,
) -> Result<(Vec<PathBuf>, Vec<String>), FeatureError> {
    let dir = q.cache.join(&q.dataset);
    let no = |why| FeatureError::NoImages {
        path: dir.clone(),
        why,
    };
    let source = f
        .meta
        .source
        .as_ref()
        .ok_or_else(|| no("the cache does not record where its images are"))?;
    let root = source.load()?.image_root;
    (f.index.iter())
        .map(|&i| {
            let rel = usize::try_from(i).ok().and_then(|i| f.meta.impaths.get(i));
            rel.map(|r| (root.join(r), r.to_string()))
                .ok_or_else(|| no("a row's image is not among the set's recorded images"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|rows| rows.into_iter().unzip())
}

/// Reads the task; the error names the dataset folder and what is missing or ambiguous.
pub fn load_task(q: &CacheQuery) -> Result<(FewShotTask, TaskSource), FeatureError> {
    let s = survey(q)?;
    let (fingerprint, model_name) = one_model(&s)?;
    let (split, group) = one_extraction(q, &s)?;
    let sets = read_sets(q, &s, &group)?;
    let classnames = &sets.train.as_ref().unwrap_or(&sets.test).meta.classnames;
    let t = read_text_for(&s, &fingerprint, &model_name, classnames)?;
    let pre_projection = read_pre_projection(q, &s, &group, &sets, &fingerprint)?;
    let val = match &sets.val {
        Some(v) => LabelledSet {
            features: matrix(v),
            labels: labels(v)?,
        },
        // ImageNet has no validation split: searches keep their defaults.
        None => LabelledSet {
            features: Matrix::zeros(0, sets.test.dim),
            labels: Vec::new(),
        },
    };
    let task = FewShotTask {
        pre_projection,
        text_mean: t.mean.clone().map(|data| Matrix {
            rows: t.classnames.len(),
            cols: t.dim,
            data,
        }),
        classnames: t.classnames.clone(),
        train: match &sets.train {
            Some(train) => LabelledSet {
                features: matrix(train),
                labels: labels(train)?,
            },
            None => LabelledSet {
                features: Matrix::zeros(0, sets.test.dim),
                labels: Vec::new(),
            },
        },
        train_views: sets.views.iter().map(matrix).collect(),
        val,
        test: LabelledSet {
            features: matrix(&sets.test),
            labels: labels(&sets.test)?,
        },
        text: TextClassifier {
            weights: Matrix {
                rows: t.classnames.len(),
                cols: t.dim,
                data: t.weights,
            },
            logit_scale: t.logit_scale,
            logit_bias: t.logit_bias,
        },
    };
    match sets.train {
        Some(_) => task.validate()?,
        // A test-only target: fitting it fails on its empty training set, testing works.
        None => task.validate_sets()?,
    }
    if let Some(p) = &task.pre_projection {
        p.validate(&task)?;
    }
    let source = TaskSource {
        model_name,
        model: fingerprint,
        templates: t.templates,
        split: split.to_string(),
    };
    Ok((task, source))
}
