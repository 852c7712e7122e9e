//! Features made elsewhere: image features another program computed (numpy, safetensors,
//! PyTorch files), with their labels, written into the cache as `extract` writes its own, so
//! that every method, `run`, `sweep`, `report` and `tsne` read them unchanged.
//!
//! ```text
//! ImportSpec   the train draw, val and test (features + labels), the class names, the text
//!              side (class embeddings from a file, or a model to encode the class prompts),
//!              the draw's identity (dataset, shots, seed) and the model's (name, fingerprint)
//! import()     read every array -> check everything -> only then write, each file atomically
//! ```
//!
//! Everything is checked before the first byte is written: every part given once (train and
//! test required, val optional), features 2-D and of one width across parts and text, labels
//! one per row and within the class names, every value finite, no class with more train images
//! than the draw's shots. A refused import leaves the cache as it was.
//!
//! The files are the ones `extract` writes for the same draw (`train-Kshot-seedS.eval.<key>`,
//! `val-Kshot-seedS.eval.<key>`, `test.eval.<key>`, `text.<key>`), so the loader finds them by
//! the same names. Their key says `transform: imported`: they are never mistaken for, nor
//! reused as, features this program encoded. What they were made from is recorded in the
//! metadata `imported` ([`ImportRecord`]): each source file with its xxHash3-128, and the model
//! as the caller named it.
//!
//! An array may also be handed over in memory ([`ArraySource::in_memory`]: numpy's type string,
//! shape and bytes, as a program holding numpy arrays has them). It is read as the `.npy` file
//! of that array would be and goes through the same checks, so it writes the same files.

pub mod arrays;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use arrays::{ArrayError, ArraySource};

use super::cache::{FeatureFile, Meta, Output, SetKey, Transform};
use super::task::Shots;
use super::text::{encode_prompts, text_file_bytes, text_path_for, PromptEmbeddings, TextMeta};
use super::{ContentHash, FeatureError};
use crate::clip::hub::HubOptions;
use crate::data::Split;
use crate::limits::LimitError;

/// One part of the split: its features `(M, E)` and labels `(M)`.
#[derive(Debug, Clone, PartialEq)]
pub struct PartSpec {
    pub split: Split,
    pub features: ArraySource,
    pub labels: ArraySource,
}

impl PartSpec {
    pub fn new(split: Split, features: ArraySource, labels: ArraySource) -> Self {
        PartSpec {
            split,
            features,
            labels,
        }
    }
}

/// Where the class-name side (the zero-shot classifier) comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum TextSpec {
    /// Class embeddings computed elsewhere, one row per class name, `(C, E)`. Stored
    /// normalised as the classifier's weights, and as given as the mean prompt embedding (what
    /// CLAP starts from; exactly that mean when the rows are one template's raw embeddings).
    Features {
        array: ArraySource,
        /// The model's logit scale (CLIP's trained value is 100).
        logit_scale: f32,
        /// The templates the rows were made with, when known (recorded only).
        templates: Vec<String>,
    },
    /// Each class name put into each template and encoded with this model (a directory, an
    /// OpenAI file, `openai:NAME` or a hub id), as `extract` does; it must be the model that
    /// made the image features, and its fingerprint becomes theirs.
    Encode {
        model: String,
        templates: Vec<String>,
    },
}

impl TextSpec {
    /// [`TextSpec::Encode`] with `templates`, or when there are none the ones `extract` would
    /// use for `dataset` ([`default_templates`]).
    pub fn encode(model: &str, templates: Vec<String>, dataset: &str) -> Self {
        TextSpec::Encode {
            model: model.to_string(),
            templates: match templates.is_empty() {
                true => default_templates(dataset),
                false => templates,
            },
        }
    }
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportSpec {
    /// Root of the cache (`<cache>/<dataset>/<file>`).
    pub cache: PathBuf,
    /// The dataset's name in the cache (one folder name).
    pub dataset: String,
    /// The draw the train (and val) features are: K shots per class, or the whole split.
    pub shots: Shots,
    /// The draw's seed.
    pub seed: u64,
    /// Train and test once each, val at most once.
    pub parts: Vec<PartSpec>,
    /// Class names by label.
    pub classnames: Vec<String>,
    pub text: TextSpec,
    /// The model that made the features, as the caller names it (recorded; `run` looks it up
    /// for CoOp and the published numbers).
    pub model_name: Option<String>,
    /// The model's fingerprint, as this program's `extract` records it, when known: imported
    /// features then share the model identity of its other caches. Without it (and without a
    /// model to encode the prompts) the identity is derived from the text features.
    pub fingerprint: Option<String>,
    /// Where a hub model is looked up ([`TextSpec::Encode`]).
    pub hub: HubOptions,
}

/// What an import reports while it works; every method defaults to nothing.
pub trait ImportObserver {
    /// Bytes of the model downloaded from the hub.
    fn download(&mut self, _file: &str, _done: u64, _total: Option<u64>) {}
    /// Class-name prompts encoded so far.
    fn prompts(&mut self, _done: usize, _total: usize) {}
}

impl ImportObserver for () {}

/// One file an import read (or one array it was given in memory), recorded in every file it
/// writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    /// What it gave: `train features`, `test labels`, `text features`, ...
    pub role: String,
    /// The file; `None` for an array given in memory ([`ArraySource::in_memory`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// The array's name inside the file, when it holds several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub array: Option<String>,
    /// `xxh3-128:` and the xxHash3-128 of the whole file (of an array in memory: of its type,
    /// shape and bytes, [`ArraySource::memory_hash`]).
    pub hash: String,
}

/// Where imported features came from (metadata `imported`; not part of any key).
///
/// Arrays given in memory ([`ArraySource::in_memory`]) go through the same reading and checks
/// as files (they are read as a `.npy` file with their type and shape would be) and write the
/// same feature files; only this record differs (a hash of the array, no path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImportRecord {
    pub files: Vec<SourceFile>,
    /// The model as the caller named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<String>,
    /// The fingerprint the caller gave, or the encoding model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
}

/// One file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportedSet {
    /// `train-16shot-seed1.eval`, `test.eval`, ...
    pub name: String,
    pub path: PathBuf,
    pub rows: usize,
}

/// What an import wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ImportOutcome {
    pub dataset: String,
    /// The model identity in the files' keys (what `fit`'s model selector matches).
    pub model: String,
    pub model_name: String,
    /// Width of every feature row.
    pub width: usize,
    /// The class-name prompt file.
    pub text: PathBuf,
    pub sets: Vec<ImportedSet>,
}

/// Why an import was refused. Nothing is written when any of these is returned, except
/// [`ImportError::Write`] (a failed write: the files written before it are complete).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    #[error(transparent)]
    Array(#[from] ArrayError),
    #[error("dataset name `{0}` is not one folder name (no path separators, not empty, not starting with `.`)")]
    DatasetName(String),
    #[error("{}: {source}", path.display())]
    ClassNames {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{found} class name(s); a classifier needs at least 2")]
    TooFewClasses { found: usize },
    #[error("class name `{name}` is given twice (labels {first} and {second})")]
    DuplicateClass {
        name: String,
        first: usize,
        second: usize,
    },
    #[error("{what}: {limit}")]
    Limit { what: String, limit: LimitError },
    #[error("a draw of 0 shots: at least one image per class is needed")]
    NoShots,
    #[error("the {0} set is given twice")]
    DuplicatePart(Split),
    #[error("no {0} set was given (train and test are required, val is optional)")]
    MissingPart(Split),
    #[error("{array}: {split} features have shape {shape:?}, expected (rows, width) with a width of at least 1")]
    FeatureShape {
        split: Split,
        array: ArraySource,
        shape: Vec<usize>,
    },
    #[error(
        "{array}: {split} labels have shape {shape:?}, expected ({rows},): one per feature row"
    )]
    LabelShape {
        split: Split,
        array: ArraySource,
        shape: Vec<usize>,
        rows: usize,
    },
    #[error("{array}: the {split} set has no rows")]
    EmptyPart { split: Split, array: ArraySource },
    #[error("{array}: the {} features are {width} wide, but the {first} features ({first_array}) are {expected} wide: features of one task come from one model", .part.map_or("text", Split::name))]
    Width {
        /// The part whose width differs; `None`: the text features.
        part: Option<Split>,
        array: ArraySource,
        width: usize,
        first: Split,
        /// Boxed: two arrays would make every import result large.
        first_array: Box<ArraySource>,
        expected: usize,
    },
    #[error(
        "{array}: label {label} (row {row}) is outside 0..{classes}, the {classes} class names"
    )]
    LabelRange {
        array: ArraySource,
        row: usize,
        label: i64,
        classes: usize,
    },
    #[error("{array}: {value} at row {row}, column {col}: every feature must be finite")]
    NotFinite {
        array: ArraySource,
        row: usize,
        col: usize,
        value: f32,
    },
    #[error("{array}: class {label} (`{name}`) has {count} train images, more than the draw's {shots} shots")]
    TooManyShots {
        array: ArraySource,
        label: usize,
        name: String,
        count: usize,
        shots: usize,
    },
    #[error("{array}: {rows} rows of text features for {classes} class names")]
    TextRows {
        array: ArraySource,
        rows: usize,
        classes: usize,
    },
    #[error("{array}: the text features of class {label} (`{name}`) are all zero")]
    ZeroText {
        array: ArraySource,
        label: usize,
        name: String,
    },
    #[error("the logit scale {0} is not a positive finite number")]
    LogitScale(f32),
    #[error("the model fingerprint is empty")]
    EmptyFingerprint,
    #[error("model `{model}`: its embeddings are {found} wide, the image features {expected} ({first_array})")]
    ModelWidth {
        model: String,
        found: usize,
        expected: usize,
        first_array: ArraySource,
    },
    #[error("model `{model}` has fingerprint {computed}, not the {given} given for the features")]
    Fingerprint {
        model: String,
        computed: String,
        given: String,
    },
    #[error("model `{model}`")]
    Model {
        model: String,
        #[source]
        source: Box<crate::Error>,
    },
    #[error("{}: {source}", path.display())]
    Hash {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] FeatureError),
}

/// One part read and checked.
struct Part {
    split: Split,
    spec: PartSpec,
    rows: usize,
    width: usize,
    features: Vec<f32>,
    labels: Vec<i64>,
}

/// The text side, ready to write: embeddings, templates, and the model identity it gives.
struct Text {
    embeddings: PromptEmbeddings,
    templates: Vec<String>,
    /// The encoding model's name and fingerprint.
    model: Option<(String, String)>,
}

/// Imports the features: checks everything, then writes the sets and the text file.
pub fn import(
    spec: &ImportSpec,
    observer: &mut dyn ImportObserver,
) -> Result<ImportOutcome, ImportError> {
    check_spec(spec)?;
    let parts = read_parts(spec)?;
    let width = check_widths(&parts)?;
    let text = read_text(spec, &parts[0], width, observer)?;
    let (model, model_name) = identity(spec, &text)?;
    let record = record(spec, &text)?;
    let files = feature_files(spec, &parts, &model, &model_name, &record);
    let text_path = text_path_for(
        &spec.cache,
        &spec.dataset,
        &spec.classnames,
        &model,
        &text.templates,
    );
    let text_meta = TextMeta {
        model: &model,
        model_name: &model_name,
        dataset: &spec.dataset,
        classnames: &spec.classnames,
        templates: &text.templates,
        extra: BTreeMap::from([("imported".to_string(), json(&record))]),
    };
    let text_bytes = text_file_bytes(&text_meta, &text.embeddings);
    let sets = write(spec, &files, &text_path, &text_bytes)?;
    Ok(ImportOutcome {
        dataset: spec.dataset.clone(),
        model,
        model_name,
        width,
        text: text_path,
        sets,
    })
}

/// Class names by label from a text file, one per line (blank lines and the spaces around a
/// name ignored).
pub fn read_classnames(path: &Path) -> Result<Vec<String>, ImportError> {
    let text = std::fs::read_to_string(path).map_err(|source| ImportError::ClassNames {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((text.lines().map(str::trim))
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

/// The prompt templates `extract` would use for `dataset` by default: a benchmark's own, else
/// CLIP's "a photo of a {}.".
pub fn default_templates(dataset: &str) -> Vec<String> {
    use crate::data::benchmarks::TemplateSet;
    match crate::data::Benchmark::find(dataset) {
        Ok(b) => b.templates(TemplateSet::Custom),
        Err(_) => vec![crate::data::DEFAULT_TEMPLATE.to_string()],
    }
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// The dataset name, the class names, the shots and the parts' presence.
fn check_spec(spec: &ImportSpec) -> Result<(), ImportError> {
    let name = &spec.dataset;
    let one_folder = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && Path::new(name).components().count() == 1;
    if !one_folder {
        return Err(ImportError::DatasetName(name.clone()));
    }
    let classes = spec.classnames.len();
    (crate::limits::CLASSES.check("class names", classes)).map_err(|limit| ImportError::Limit {
        what: "class names".into(),
        limit,
    })?;
    if classes < 2 {
        return Err(ImportError::TooFewClasses { found: classes });
    }
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for (label, c) in spec.classnames.iter().enumerate() {
        if let Some(first) = seen.insert(c.as_str(), label) {
            return Err(ImportError::DuplicateClass {
                name: c.clone(),
                first,
                second: label,
            });
        }
    }
    if let Shots::K(k) = spec.shots {
        if k == 0 {
            return Err(ImportError::NoShots);
        }
        (crate::limits::SHOTS.check("shots", k)).map_err(|limit| ImportError::Limit {
            what: "shots".into(),
            limit,
        })?;
    }
    if let Some(f) = &spec.fingerprint {
        if f.trim().is_empty() {
            return Err(ImportError::EmptyFingerprint);
        }
    }
    for split in Split::ALL {
        let n = spec.parts.iter().filter(|p| p.split == split).count();
        if n > 1 {
            return Err(ImportError::DuplicatePart(split));
        }
        if n == 0 && split != Split::Val {
            return Err(ImportError::MissingPart(split));
        }
    }
    Ok(())
}

/// Every part read and checked on its own, in train, val, test order.
fn read_parts(spec: &ImportSpec) -> Result<Vec<Part>, ImportError> {
    let mut parts = Vec::new();
    for split in Split::ALL {
        if let Some(p) = spec.parts.iter().find(|p| p.split == split) {
            parts.push(read_part(spec, p)?);
        }
    }
    Ok(parts)
}

fn read_part(spec: &ImportSpec, p: &PartSpec) -> Result<Part, ImportError> {
    let split = p.split;
    let f = arrays::read_floats(&p.features)?;
    let [rows, width @ (1..)] = f.shape[..] else {
        return Err(ImportError::FeatureShape {
            split,
            array: p.features.clone(),
            shape: f.shape,
        });
    };
    let what = format!("{split} features ({})", p.features);
    (crate::limits::WIDTH.check("width", width))
        .map_err(|limit| ImportError::Limit { what, limit })?;
    if rows == 0 && split != Split::Val {
        return Err(ImportError::EmptyPart {
            split,
            array: p.features.clone(),
        });
    }
    if let Some(i) = f.values.iter().position(|v| !v.is_finite()) {
        return Err(ImportError::NotFinite {
            array: p.features.clone(),
            row: i / width.max(1),
            col: i % width.max(1),
            value: f.values[i],
        });
    }
    let l = arrays::read_integers(&p.labels)?;
    if l.shape != [rows] {
        return Err(ImportError::LabelShape {
            split,
            array: p.labels.clone(),
            shape: l.shape,
            rows,
        });
    }
    let classes = spec.classnames.len();
    if let Some(row) = (l.values.iter()).position(|&x| x < 0 || x >= classes as i64) {
        return Err(ImportError::LabelRange {
            array: p.labels.clone(),
            row,
            label: l.values[row],
            classes,
        });
    }
    if let (Split::Train, Shots::K(shots)) = (split, spec.shots) {
        check_shots(spec, p, &l.values, shots)?;
    }
    Ok(Part {
        split,
        spec: p.clone(),
        rows,
        width,
        features: f.values,
        labels: l.values,
    })
}

/// A K-shot draw has at most K images of a class (fewer when the class had fewer).
fn check_shots(
    spec: &ImportSpec,
    p: &PartSpec,
    labels: &[i64],
    shots: usize,
) -> Result<(), ImportError> {
    let mut counts = vec![0usize; spec.classnames.len()];
    for &l in labels {
        counts[l as usize] += 1;
    }
    match counts.iter().position(|&c| c > shots) {
        Some(label) => Err(ImportError::TooManyShots {
            array: p.labels.clone(),
            label,
            name: spec.classnames[label].clone(),
            count: counts[label],
            shots,
        }),
        None => Ok(()),
    }
}

/// One width across the parts (the first part's).
fn check_widths(parts: &[Part]) -> Result<usize, ImportError> {
    let first = &parts[0];
    for p in &parts[1..] {
        if p.width != first.width {
            return Err(ImportError::Width {
                part: Some(p.split),
                array: p.spec.features.clone(),
                width: p.width,
                first: first.split,
                first_array: Box::new(first.spec.features.clone()),
                expected: first.width,
            });
        }
    }
    Ok(first.width)
}

/// The class embeddings: read and checked against the class names and the width, or encoded.
fn read_text(
    spec: &ImportSpec,
    first: &Part,
    width: usize,
    observer: &mut dyn ImportObserver,
) -> Result<Text, ImportError> {
    match &spec.text {
        TextSpec::Features {
            array,
            logit_scale,
            templates,
        } => {
            if !(logit_scale.is_finite() && *logit_scale > 0.0) {
                return Err(ImportError::LogitScale(*logit_scale));
            }
            let embeddings = text_from_array(spec, array, first, width, *logit_scale)?;
            Ok(Text {
                embeddings,
                templates: templates.clone(),
                model: None,
            })
        }
        TextSpec::Encode { model, templates } => {
            encode_text(spec, model, templates, first, width, observer)
        }
    }
}

fn text_from_array(
    spec: &ImportSpec,
    array: &ArraySource,
    first: &Part,
    width: usize,
    logit_scale: f32,
) -> Result<PromptEmbeddings, ImportError> {
    let t = arrays::read_floats(array)?;
    let classes = spec.classnames.len();
    let [rows, dim] = t.shape[..] else {
        return Err(ImportError::TextRows {
            array: array.clone(),
            rows: t.shape.first().copied().unwrap_or(0),
            classes,
        });
    };
    if rows != classes {
        return Err(ImportError::TextRows {
            array: array.clone(),
            rows,
            classes,
        });
    }
    if dim != width {
        return Err(ImportError::Width {
            part: None,
            array: array.clone(),
            width: dim,
            first: first.split,
            first_array: Box::new(first.spec.features.clone()),
            expected: width,
        });
    }
    if let Some(i) = t.values.iter().position(|v| !v.is_finite()) {
        return Err(ImportError::NotFinite {
            array: array.clone(),
            row: i / dim,
            col: i % dim,
            value: t.values[i],
        });
    }
    let mut weights = t.values.clone();
    for (label, row) in weights.chunks_exact_mut(dim).enumerate() {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm == 0.0 {
            return Err(ImportError::ZeroText {
                array: array.clone(),
                label,
                name: spec.classnames[label].clone(),
            });
        }
        row.iter_mut().for_each(|x| *x /= norm);
    }
    Ok(PromptEmbeddings {
        weights,
        mean: t.values,
        dim,
        logit_scale,
        // Imported text features carry a scale only: zero-shot on them is CLIP's softmax.
        logit_bias: None,
    })
}

/// The class prompts encoded with `model`, which must make embeddings of the features' width.
fn encode_text(
    spec: &ImportSpec,
    model: &str,
    templates: &[String],
    first: &Part,
    width: usize,
    observer: &mut dyn ImportObserver,
) -> Result<Text, ImportError> {
    let failed = |source: crate::Error| ImportError::Model {
        model: model.to_string(),
        source: Box::new(source),
    };
    let mut on_download = |file: &str, done, total| observer.download(file, done, total);
    let files = crate::clip::hub::resolve(model, &spec.hub, &mut on_download).map_err(failed)?;
    let fingerprint = super::model_fingerprint(&files).map_err(failed)?;
    let clip = crate::clip::Clip::load(&files, &candle_core::Device::Cpu).map_err(failed)?;
    let found = clip.config().embed_dim;
    if found != width {
        return Err(ImportError::ModelWidth {
            model: model.to_string(),
            found,
            expected: width,
            first_array: first.spec.features.clone(),
        });
    }
    let embeddings = encode_prompts(&clip, &spec.classnames, templates, &mut |d, t| {
        observer.prompts(d, t)
    })?;
    Ok(Text {
        embeddings,
        templates: templates.to_vec(),
        model: Some((model.to_string(), fingerprint)),
    })
}

/// The model identity of the keys and the model's name: the encoding model's fingerprint (which
/// a given fingerprint must equal), else the given one, else one derived from the class
/// embeddings (the only trace of the model an import without either has).
fn identity(spec: &ImportSpec, text: &Text) -> Result<(String, String), ImportError> {
    let name = |fallback: &str| (spec.model_name.clone()).unwrap_or_else(|| fallback.to_string());
    match (&text.model, &spec.fingerprint) {
        (Some((model, computed)), Some(given)) if computed != given => {
            Err(ImportError::Fingerprint {
                model: model.clone(),
                computed: computed.clone(),
                given: given.clone(),
            })
        }
        (Some((model, computed)), _) => Ok((computed.clone(), name(model))),
        (None, Some(given)) => Ok((given.clone(), name(""))),
        (None, None) => {
            let mut h = ContentHash::default();
            h.field(b"imported model: text features");
            h.update(&le_bytes(&text.embeddings.mean));
            Ok((format!("imported-{}", h.hex()), name("")))
        }
    }
}

fn le_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Every file read, with its hash, and the model as named.
fn record(spec: &ImportSpec, text: &Text) -> Result<ImportRecord, ImportError> {
    let mut sources: Vec<(String, &ArraySource)> = Vec::new();
    for p in &spec.parts {
        sources.push((format!("{} features", p.split), &p.features));
        sources.push((format!("{} labels", p.split), &p.labels));
    }
    if let TextSpec::Features { array, .. } = &spec.text {
        sources.push(("text features".into(), array));
    }
    let mut files = Vec::new();
    for (role, s) in sources {
        files.push(match s.memory_hash() {
            Some(hash) => SourceFile {
                role,
                path: None,
                array: None,
                hash,
            },
            None => SourceFile {
                role,
                path: Some(std::path::absolute(&s.path).unwrap_or_else(|_| s.path.clone())),
                array: s.name.clone(),
                hash: hash_file(&s.path)?,
            },
        });
    }
    Ok(ImportRecord {
        files,
        model_name: (spec.model_name.clone()).or_else(|| text.model.as_ref().map(|m| m.0.clone())),
        fingerprint: (spec.fingerprint.clone())
            .or_else(|| text.model.as_ref().map(|m| m.1.clone())),
    })
}

/// `xxh3-128:` and the xxHash3-128 of a file's bytes.
fn hash_file(path: &Path) -> Result<String, ImportError> {
    use std::io::Read;
    let failed = |source| ImportError::Hash {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(failed)?;
    let mut h = ContentHash::default();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(failed)?;
        if n == 0 {
            return Ok(format!("xxh3-128:{}", h.hex128()));
        }
        h.update(&buf[..n]);
    }
}

/// The sets as `extract` names them, keyed as imported.
fn feature_files(
    spec: &ImportSpec,
    parts: &[Part],
    model: &str,
    model_name: &str,
    record: &ImportRecord,
) -> Vec<FeatureFile> {
    let samples = |p: &Part| {
        let mut h = ContentHash::default();
        h.field(b"imported samples");
        h.field(&le_bytes(&p.features));
        h.field(
            &(p.labels.iter())
                .flat_map(|l| l.to_le_bytes())
                .collect::<Vec<u8>>(),
        );
        h.hex()
    };
    // The split identity: the class names and the test set, which every draw of the dataset
    // shares (so several imported draws form one dataset, as several extracted ones do).
    let mut h = ContentHash::default();
    h.field(b"imported split");
    for c in &spec.classnames {
        h.field(c.as_bytes());
    }
    if let Some(test) = parts.iter().find(|p| p.split == Split::Test) {
        h.field(samples(test).as_bytes());
    }
    let split_id = h.hex();
    let (train_part, val_part) = spec.shots.parts(spec.seed);
    (parts.iter())
        .map(|p| {
            let part = match p.split {
                Split::Train => train_part.clone(),
                Split::Val => val_part.clone(),
                Split::Test => "test".to_string(),
            };
            let key = SetKey {
                model: model.to_string(),
                dataset: spec.dataset.clone(),
                part,
                samples: samples(p),
                split: split_id.clone(),
                transform: Transform::Imported,
                view: 0,
                output: Output::Projected,
            };
            FeatureFile {
                meta: Meta {
                    key,
                    classnames: spec.classnames.clone(),
                    rows: 0..p.rows,
                    total: p.rows,
                    // Not known: the other program chose its batches.
                    batch: 0,
                    skipped: Vec::new(),
                    impaths: Vec::new(),
                    model_name: model_name.to_string(),
                    source: None,
                    imported: Some(record.clone()),
                },
                dim: p.width,
                features: p.features.clone(),
                labels: p.labels.clone(),
                index: (0..p.rows as i64).collect(),
            }
        })
        .collect()
}

/// Writes every file under its writer lock (an `extract` on the same files waits), each
/// through a temp file and a rename.
fn write(
    spec: &ImportSpec,
    files: &[FeatureFile],
    text_path: &Path,
    text_bytes: &[u8],
) -> Result<Vec<ImportedSet>, ImportError> {
    let dir = spec.cache.join(&spec.dataset);
    std::fs::create_dir_all(&dir).map_err(|e| FeatureError::io(&dir, e))?;
    let mut sets = Vec::with_capacity(files.len());
    for f in files {
        let path = dir.join(f.meta.key.file_name());
        let held = super::lock::lock(&path, &mut |_| {})?;
        super::lock::clean(&path, &held)?;
        f.write(&path)?;
        sets.push(ImportedSet {
            name: format!("{}.{}", f.meta.key.part, f.meta.key.tag()),
            path,
            rows: f.rows(),
        });
    }
    let held = super::lock::lock(text_path, &mut |_| {})?;
    super::lock::clean(text_path, &held)?;
    super::cache::write_atomic(text_path, text_bytes)?;
    Ok(sets)
}
