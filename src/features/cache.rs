//! The feature cache on disk: one safetensors file per feature set, with everything that
//! determined its rows in the metadata, named by a key derived from those, written atomically.
//!
//! ```text
//! <cache>/<dataset>/<part>.<view>.<key>.safetensors            a complete set
//! <cache>/<dataset>/<part>.<view>.<key>.shard-<i>-of-<n>.safetensors   one shard's rows
//! <cache>/<dataset>/<...>.safetensors.partial/chunk-<start>-<end>.safetensors   resume state
//! <cache>/<dataset>/.<file>.lock              the file's writer lock (`lock.rs`)
//! <cache>/<dataset>/.<file>.tmp-<pid>         a write in progress (or a killed one's leftover)
//! ```
//!
//! Tensors: `features` f32 `(M, E)` (projected, un-normalised), `labels` i64 `(M)`, `index`
//! i64 `(M)`: the row's position in the set's sample list (rows of unreadable images skipped
//! with `skip_bad` are absent, and listed in the `skipped` metadata). Metadata values are
//! strings (JSON where structured), so `safetensors.safe_open(f).metadata()` shows them in
//! Python. See `docs/data-pipeline.md`.
//!
//! Files are serialised here rather than by the `safetensors` crate, whose header map has a
//! random order: ours sorts the header, so the same rows always give the same bytes and a
//! resumed cache is byte-identical to an uninterrupted one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::FeatureError;
use crate::data::DataError;
use crate::data::{folder, Sample};
use crate::hint::Value;
use crate::image::augment::Augment;
use crate::image::Preprocess;

/// The `format` metadata value of every file this module writes.
pub const FORMAT: &str = "clip-adapter-features";
/// Bumped whenever the file layout or the meaning of a field changes. Version 2: keys and
/// hashes are xxHash3, keys carry the split identity, files carry `source` and a `checksum` of
/// their data (text files too).
pub const VERSION: u32 = 2;

/// How an image becomes the model's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transform {
    /// Resize the shorter side, centre crop, normalise (CLIP's evaluation view).
    Eval { preprocess: Preprocess },
    /// RandomResizedCrop + flip seeded by `seed`, then normalise with `preprocess`'s mean/std.
    Augment {
        augment: Augment,
        preprocess: Preprocess,
        seed: u64,
    },
    /// Features another program computed (`import.rs`): how it made its model inputs is not
    /// known here. They play the evaluation view; nothing encodes such a set.
    Imported,
}

impl Transform {
    /// A short tag for file names: `eval`, or `aug<view>`.
    pub fn tag(&self, view: u32) -> String {
        match self {
            Transform::Eval { .. } | Transform::Imported => "eval".into(),
            Transform::Augment { .. } => format!("aug{view}"),
        }
    }
}

/// Which output of the image tower a set holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Output {
    /// The projected embedding (`get_image_features`): what every method uses.
    #[default]
    Projected,
    /// The tower's output before its last projection (ProLIP trains that projection).
    PreProjection,
}

impl Output {
    fn is_projected(&self) -> bool {
        *self == Output::Projected
    }
}

/// Everything that determines a feature set's rows. Two sets share a file only when all of
/// these are equal; the file name carries [`SetKey::id`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetKey {
    /// [`model_fingerprint`](super::model_fingerprint) of the checkpoint.
    pub model: String,
    pub dataset: String,
    /// Which samples: `train`, `val`, `test`, or `train-16shot-seed1` for a few-shot draw.
    pub part: String,
    /// Hash of the ordered `(impath, label)` list, so an edited split is a different set.
    pub samples: String,
    /// The extraction's split identity ([`split_digest`]): the whole train/val/test lists the
    /// part was drawn from, so sets of two different splits never pass for one task.
    pub split: String,
    pub transform: Transform,
    /// View number of an augmented set (0 for the evaluation view).
    pub view: u32,
    /// Left out of the key when projected, so the keys (and files) of projected sets are
    /// those of versions that had only them.
    #[serde(default, skip_serializing_if = "Output::is_projected")]
    pub output: Output,
}

impl SetKey {
    /// 16 hex digits identifying the key.
    pub fn id(&self) -> String {
        let mut h = super::ContentHash::default();
        // Struct fields serialise in declaration order: the JSON is canonical.
        h.field(serde_json::to_string(self).unwrap_or_default().as_bytes());
        h.hex()
    }

    /// The view tag of file names: `eval`, `aug<view>`, or `pre-eval`, `pre-aug<view>` for
    /// pre-projection features.
    pub fn tag(&self) -> String {
        let tag = self.transform.tag(self.view);
        match self.output {
            Output::Projected => tag,
            Output::PreProjection => format!("pre-{tag}"),
        }
    }

    /// `<part>.<view tag>.<id>.safetensors`.
    pub fn file_name(&self) -> String {
        format!("{}.{}.{}.safetensors", self.part, self.tag(), self.id())
    }
}

/// Hash of an ordered sample list (part of [`SetKey`]).
pub fn samples_digest(samples: &[Sample]) -> String {
    let mut h = super::ContentHash::default();
    for s in samples {
        h.field(s.impath.as_bytes());
        h.update(&(s.label as u64).to_le_bytes());
    }
    h.hex()
}

/// The identity of a dataset's split: a hash of its class names and of the whole ordered
/// train, val and test lists. Two extractions whose few-shot draws or test sets come from
/// different splits (another split seed, another split file) differ here even where one
/// part happens to coincide.
pub fn split_digest(dataset: &crate::data::Dataset) -> String {
    let mut h = super::ContentHash::default();
    h.field(b"classnames");
    for c in &dataset.classnames {
        h.field(c.as_bytes());
    }
    for split in crate::data::Split::ALL {
        h.field(split.name().as_bytes());
        h.update(&(dataset.split(split).len() as u64).to_le_bytes());
        for s in dataset.split(split) {
            h.field(s.impath.as_bytes());
            h.update(&(s.label as u64).to_le_bytes());
        }
    }
    h.hex()
}

/// Where the images of an extraction came from, with absolute paths: recorded in each file (not
/// part of the key) so that a message about missing features can say how to extract them again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DataSource {
    /// A benchmark under CoOp's data folder, with its own split or another split file.
    Benchmark {
        dataset: String,
        root: PathBuf,
        split: Option<PathBuf>,
    },
    /// A folder of class folders (its own train/val/test sub-folders, or a seeded split).
    Folder {
        dir: PathBuf,
        split_seed: i64,
        train_fraction: f64,
        val_fraction: f64,
    },
    /// A manifest of images and labels (its own split column, or a seeded split).
    Manifest {
        file: PathBuf,
        split_seed: i64,
        train_fraction: f64,
        val_fraction: f64,
    },
    /// A split file, its image paths relative to `root` (default: the file's folder).
    SplitFile {
        file: PathBuf,
        root: Option<PathBuf>,
    },
}

impl DataSource {
    /// The `extract` options that name this source, in the order a hint shows them; the split
    /// fractions only where they differ from CoOp's.
    pub fn options(&self) -> Vec<(&'static str, Option<Value>)> {
        let path = |p: &Path| Some(Value::Given(p.display().to_string()));
        let seeded = |seed: &i64, train: &f64, val: &f64| {
            let mut o = vec![("split_seed", Some(Value::Given(seed.to_string())))];
            if *train != folder::COOP_TRAIN_FRACTION || *val != folder::COOP_VAL_FRACTION {
                o.push(("train_fraction", Some(Value::Given(train.to_string()))));
                o.push(("val_fraction", Some(Value::Given(val.to_string()))));
            }
            o
        };
        let mut o = Vec::new();
        match self {
            DataSource::Benchmark {
                dataset,
                root,
                split,
            } => {
                o.push(("dataset", Some(Value::Given(dataset.clone()))));
                o.push(("root", path(root)));
                o.extend(split.as_deref().map(|s| ("split", path(s))));
            }
            DataSource::Folder {
                dir,
                split_seed,
                train_fraction,
                val_fraction,
            } => {
                o.push(("folder", path(dir)));
                o.extend(seeded(split_seed, train_fraction, val_fraction));
            }
            DataSource::Manifest {
                file,
                split_seed,
                train_fraction,
                val_fraction,
            } => {
                o.push(("manifest", path(file)));
                o.extend(seeded(split_seed, train_fraction, val_fraction));
            }
            DataSource::SplitFile { file, root } => {
                o.push(("split", path(file)));
                o.extend(root.as_deref().map(|r| ("root", path(r))));
            }
        }
        o
    }

    /// The benchmark the source is, if it is one.
    pub fn benchmark(&self) -> Result<Option<&'static crate::data::Benchmark>, DataError> {
        match self {
            DataSource::Benchmark { dataset, .. } => {
                Ok(Some(crate::data::Benchmark::find(dataset)?))
            }
            _ => Ok(None),
        }
    }

    /// Reads the dataset: its images and their train/val/test split.
    pub fn load(&self) -> Result<crate::data::Dataset, DataError> {
        use crate::data::folder::SeededSplit;
        let seeded = |seed: &i64, train: &f64, val: &f64| SeededSplit {
            seed: *seed,
            train: *train,
            val: *val,
        };
        Ok(match self {
            DataSource::Benchmark {
                dataset,
                root,
                split,
            } => crate::data::Benchmark::find(dataset)?.load(root, split.as_deref())?,
            DataSource::Folder {
                dir,
                split_seed,
                train_fraction,
                val_fraction,
            } => folder::from_class_folders(dir, seeded(split_seed, train_fraction, val_fraction))?,
            DataSource::Manifest {
                file,
                split_seed,
                train_fraction,
                val_fraction,
            } => folder::from_manifest(file, seeded(split_seed, train_fraction, val_fraction))?,
            DataSource::SplitFile { file, root } => split_file_dataset(file, root.as_deref())?,
        })
    }
}

/// A split file's dataset, named after the file (`split_zhou_EuroSAT.json`: `eurosat`).
fn split_file_dataset(path: &Path, root: Option<&Path>) -> Result<crate::data::Dataset, DataError> {
    let s = crate::data::split_file::read(path)?;
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => path.parent().unwrap_or(Path::new(".")).to_path_buf(),
    };
    let name = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = name
        .strip_prefix("split_zhou_")
        .unwrap_or(&name)
        .to_lowercase();
    Ok(crate::data::Dataset {
        name,
        classnames: s.classnames,
        image_root: root,
        train: s.train,
        val: s.val,
        test: s.test,
        templates: vec![crate::data::DEFAULT_TEMPLATE.to_string()],
    })
}

/// The metadata of a feature file.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub key: SetKey,
    /// Class names by label.
    pub classnames: Vec<String>,
    /// The sample positions this file covers, `start..end` of the set's list.
    pub rows: std::ops::Range<usize>,
    /// Number of samples in the whole set.
    pub total: usize,
    /// Images per forward pass; resumed chunks must match it to be reused (batch composition
    /// can change the last bits of a matrix product).
    pub batch: usize,
    /// `impath`s of the covered samples that could not be read and were skipped.
    pub skipped: Vec<String>,
    /// The whole set's `impath`s (complete files only; empty in chunks and shards).
    pub impaths: Vec<String>,
    /// The model as the user named it (informational, not part of the key).
    pub model_name: String,
    /// Where the images came from, when the caller said (informational, not part of the key).
    pub source: Option<DataSource>,
    /// For imported features: the files they were read from, with their hashes, and the model
    /// as the importer named it (informational, not part of the key; metadata `imported`,
    /// absent from extracted files, which stay byte-identical to older ones).
    pub imported: Option<super::import::ImportRecord>,
}

impl Meta {
    fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert("format".into(), FORMAT.into());
        m.insert("version".into(), VERSION.to_string());
        m.insert("key".into(), self.key.id());
        m.insert("model".into(), self.key.model.clone());
        m.insert("model_name".into(), self.model_name.clone());
        m.insert("dataset".into(), self.key.dataset.clone());
        m.insert("part".into(), self.key.part.clone());
        m.insert("samples".into(), self.key.samples.clone());
        m.insert("split".into(), self.key.split.clone());
        m.insert(
            "source".into(),
            self.source.as_ref().map(json).unwrap_or_default(),
        );
        m.insert("transform".into(), json(&self.key.transform));
        m.insert("view".into(), self.key.view.to_string());
        // Only pre-projection sets say so: projected files stay byte-identical to older ones.
        if self.key.output == Output::PreProjection {
            m.insert("output".into(), "pre_projection".into());
        }
        if let Some(record) = &self.imported {
            m.insert("imported".into(), json(record));
        }
        m.insert("classnames".into(), json(&self.classnames));
        m.insert(
            "rows".into(),
            format!("{}..{}", self.rows.start, self.rows.end),
        );
        m.insert("total".into(), self.total.to_string());
        m.insert("batch".into(), self.batch.to_string());
        m.insert("skipped".into(), json(&self.skipped));
        m.insert("impaths".into(), json(&self.impaths));
        m
    }

    fn from_map(
        path: &Path,
        m: &std::collections::HashMap<String, String>,
    ) -> Result<Self, FeatureError> {
        let bad = |msg: String| FeatureError::Format {
            path: path.to_path_buf(),
            msg,
        };
        let get = |k: &str| m.get(k).ok_or_else(|| bad(format!("metadata lacks `{k}`")));
        if get("format")? != FORMAT {
            return Err(bad(format!(
                "not a clip-adapter feature file (format `{}`)",
                get("format")?
            )));
        }
        check_version(path, m)?;
        let list = |k: &str| -> Result<Vec<String>, FeatureError> {
            serde_json::from_str(get(k)?).map_err(|e| bad(format!("metadata `{k}`: {e}")))
        };
        let num = |k: &str| -> Result<usize, FeatureError> {
            get(k)?
                .parse()
                .map_err(|_| bad(format!("metadata `{k}` is not a number")))
        };
        let (a, b) = get("rows")?
            .split_once("..")
            .ok_or_else(|| bad("metadata `rows` is not `start..end`".into()))?;
        let rows = a.parse().map_err(|_| bad("bad `rows`".into()))?
            ..b.parse().map_err(|_| bad("bad `rows`".into()))?;
        let key = SetKey {
            model: get("model")?.clone(),
            dataset: get("dataset")?.clone(),
            part: get("part")?.clone(),
            samples: get("samples")?.clone(),
            split: get("split")?.clone(),
            transform: serde_json::from_str(get("transform")?)
                .map_err(|e| bad(format!("metadata `transform`: {e}")))?,
            view: num("view")? as u32,
            output: match m.get("output").map(String::as_str) {
                None => Output::Projected,
                Some("pre_projection") => Output::PreProjection,
                Some(other) => {
                    return Err(bad(format!(
                        "metadata `output` is `{other}`, expected `pre_projection`"
                    )))
                }
            },
        };
        if key.id() != *get("key")? {
            return Err(bad("metadata `key` does not match the other fields".into()));
        }
        Ok(Meta {
            key,
            classnames: list("classnames")?,
            rows,
            total: num("total")?,
            batch: num("batch")?,
            skipped: list("skipped")?,
            impaths: list("impaths")?,
            model_name: get("model_name")?.clone(),
            source: match get("source")?.as_str() {
                "" => None,
                s => Some(
                    serde_json::from_str(s).map_err(|e| bad(format!("metadata `source`: {e}")))?,
                ),
            },
            imported: (m.get("imported"))
                .map(|s| serde_json::from_str(s))
                .transpose()
                .map_err(|e| bad(format!("metadata `imported`: {e}")))?,
        })
    }
}

/// Refuses a file of another format version (before any other field is interpreted).
pub(crate) fn check_version(
    path: &Path,
    m: &std::collections::HashMap<String, String>,
) -> Result<(), FeatureError> {
    let found = m.get("version").ok_or_else(|| FeatureError::Format {
        path: path.to_path_buf(),
        msg: "metadata lacks `version`".into(),
    })?;
    let found: u32 = found.parse().map_err(|_| FeatureError::Format {
        path: path.to_path_buf(),
        msg: format!("bad `version` `{found}`"),
    })?;
    if found != VERSION {
        return Err(FeatureError::Version {
            path: path.to_path_buf(),
            found,
            expected: VERSION,
        });
    }
    Ok(())
}

/// A metadata value: any serialisable value as JSON.
fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// A feature file in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureFile {
    pub meta: Meta,
    /// Embedding width `E`.
    pub dim: usize,
    /// `(M, E)` row-major.
    pub features: Vec<f32>,
    pub labels: Vec<i64>,
    /// Position of each row in the set's sample list.
    pub index: Vec<i64>,
}

impl FeatureFile {
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// The features as a `(M, E)` tensor.
    pub fn features_tensor(
        &self,
        device: &candle_core::Device,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_slice(&self.features, (self.rows(), self.dim), device)
    }

    /// Serialises to safetensors bytes, header sorted so equal content gives equal bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let m = self.rows();
        let le = |v: &[i64]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
        let tensors: [(&str, &str, Vec<usize>, Vec<u8>); 3] = [
            (
                "features",
                "F32",
                vec![m, self.dim],
                self.features.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ),
            ("index", "I64", vec![m], le(&self.index)),
            ("labels", "I64", vec![m], le(&self.labels)),
        ];
        write_safetensors(&self.meta.to_map(), &tensors)
    }

    /// Writes atomically (temp file + rename): a reader never sees a part.
    pub fn write(&self, path: &Path) -> Result<(), FeatureError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| FeatureError::io(dir, e))?;
        }
        write_atomic(path, &self.to_bytes())
    }

    /// Reads only the metadata of a feature file (its header), for choosing among many files
    /// without reading their rows. The header length is checked against the file before
    /// anything is allocated.
    pub fn read_meta(path: &Path) -> Result<Meta, FeatureError> {
        use std::io::Read;
        let bad = |msg: String| FeatureError::Format {
            path: path.to_path_buf(),
            msg,
        };
        let mut file = std::fs::File::open(path).map_err(|e| FeatureError::io(path, e))?;
        let len = file
            .metadata()
            .map_err(|e| FeatureError::io(path, e))?
            .len();
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| bad(format!("{len} bytes, too short for a safetensors header")))?;
        let n = u64::from_le_bytes(n);
        if n > len - 8 || n > MAX_HEADER {
            return Err(bad(format!(
                "the header claims {n} bytes, the file has {len} (at most {MAX_HEADER} allowed)"
            )));
        }
        let mut head = vec![0u8; n as usize];
        file.read_exact(&mut head)
            .map_err(|e| FeatureError::io(path, e))?;
        let header: serde_json::Value =
            serde_json::from_slice(&head).map_err(|e| bad(format!("header: {e}")))?;
        let map = header
            .get("__metadata__")
            .cloned()
            .map(serde_json::from_value::<std::collections::HashMap<String, String>>)
            .transpose()
            .map_err(|e| bad(format!("header `__metadata__`: {e}")))?
            .ok_or_else(|| bad("the header has no `__metadata__`".into()))?;
        Meta::from_map(path, &map)
    }

    /// Reads and checks a feature file.
    pub fn read(path: &Path) -> Result<Self, FeatureError> {
        let bytes = std::fs::read(path).map_err(|e| FeatureError::io(path, e))?;
        Self::from_bytes(path, &bytes)
    }

    /// [`FeatureFile::read`] on the file's bytes already in memory; `path` only names it in
    /// errors.
    #[doc(hidden)]
    pub fn from_bytes(path: &Path, bytes: &[u8]) -> Result<Self, FeatureError> {
        let bad = |msg: String| FeatureError::Format {
            path: path.to_path_buf(),
            msg,
        };
        let (st, map) = parse_safetensors(path, bytes)?;
        let meta = Meta::from_map(path, &map)?;
        let tensor = |name: &str, dtype: safetensors::Dtype| {
            let t = st
                .tensor(name)
                .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            if t.dtype() != dtype {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected {dtype:?}",
                    t.dtype()
                )));
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let (shape, data) = tensor("features", safetensors::Dtype::F32)?;
        let [m, dim] = shape[..] else {
            return Err(bad(format!(
                "`features` has shape {shape:?}, expected (rows, dim)"
            )));
        };
        let features = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ints = |name: &str| -> Result<Vec<i64>, FeatureError> {
            let (shape, data) = tensor(name, safetensors::Dtype::I64)?;
            if shape != [m] {
                return Err(bad(format!("`{name}` has shape {shape:?}, expected [{m}]")));
            }
            Ok(data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
                .collect())
        };
        let f = FeatureFile {
            labels: ints("labels")?,
            index: ints("index")?,
            meta,
            dim,
            features,
        };
        f.check_consistent().map_err(bad)?;
        Ok(f)
    }

    /// Every count and label the metadata states, checked against the rows actually present,
    /// so nothing downstream sizes an allocation or indexes by an unchecked header value.
    fn check_consistent(&self) -> Result<(), String> {
        let m = &self.meta;
        let rows = &m.rows;
        if rows.start > rows.end || rows.end > m.total {
            return Err(format!(
                "metadata `rows` {}..{} is not within the set's {} samples",
                rows.start, rows.end, m.total
            ));
        }
        if self.rows() + m.skipped.len() != rows.len() {
            return Err(format!(
                "{} rows and {} skipped images, but metadata `rows` {}..{} covers {}",
                self.rows(),
                m.skipped.len(),
                rows.start,
                rows.end,
                rows.len()
            ));
        }
        if !m.impaths.is_empty() && m.impaths.len() != m.total {
            return Err(format!(
                "metadata `impaths` lists {} images, `total` says {}",
                m.impaths.len(),
                m.total
            ));
        }
        let classes = m.classnames.len() as i64;
        if let Some(l) = self.labels.iter().find(|&&l| l < 0 || l >= classes) {
            return Err(format!("label {l} is out of range for {classes} classes"));
        }
        let (lo, hi) = (rows.start as i64, rows.end as i64);
        let mut last = lo - 1;
        for &i in &self.index {
            if i <= last || i >= hi {
                return Err(format!(
                    "`index` {i} is out of order or outside rows {lo}..{hi}"
                ));
            }
            last = i;
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` atomically ([`crate::fsutil::write_atomic`]: the temp file's name
/// is the one the clean-up of dead writers looks for), as a feature error.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FeatureError> {
    crate::fsutil::write_atomic(path, bytes).map_err(|e| FeatureError::io(path, e.source))
}

/// The largest header a reader accepts (the `safetensors` crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// safetensors bytes through the crate's one writer (sorted, checksummed).
pub(crate) fn write_safetensors(
    metadata: &BTreeMap<String, String>,
    tensors: &[(&str, &'static str, Vec<usize>, Vec<u8>)],
) -> Vec<u8> {
    let raw = tensors
        .iter()
        .map(
            |(name, dtype, shape, data)| crate::safetensors_file::RawTensor {
                name: name.to_string(),
                dtype,
                shape: shape.clone(),
                data: data.clone(),
            },
        )
        .collect();
    crate::safetensors_file::write(raw, metadata.clone())
}

/// Where an interrupted run keeps its finished chunks: `<target>.partial/`.
#[derive(Debug, Clone)]
pub struct Partial {
    pub dir: PathBuf,
}

impl Partial {
    pub fn for_target(target: &Path) -> Self {
        let mut name = target.file_name().unwrap_or_default().to_os_string();
        name.push(".partial");
        Partial {
            dir: target.with_file_name(name),
        }
    }

    pub fn chunk_path(&self, rows: &std::ops::Range<usize>) -> PathBuf {
        self.dir.join(format!(
            "chunk-{:09}-{:09}.safetensors",
            rows.start, rows.end
        ))
    }

    /// A finished chunk for exactly these rows, key and batch size, if one is on disk and
    /// reads back whole; anything else there is ignored (and replaced when re-encoded).
    pub fn load(
        &self,
        key: &SetKey,
        batch: usize,
        rows: &std::ops::Range<usize>,
    ) -> Option<FeatureFile> {
        let path = self.chunk_path(rows);
        if !path.is_file() {
            return None;
        }
        let f = FeatureFile::read(&path).ok()?;
        (f.meta.key == *key && f.meta.batch == batch && f.meta.rows == *rows).then_some(f)
    }

    /// Deletes the folder, file by file (a kill in between leaves a folder that the next run's
    /// clean-up removes, see `lock.rs`).
    pub fn remove(&self) -> Result<(), FeatureError> {
        let gone = |e: &std::io::Error| e.kind() == std::io::ErrorKind::NotFound;
        let read = match std::fs::read_dir(&self.dir) {
            Ok(r) => r,
            Err(e) if gone(&e) => return Ok(()),
            Err(e) => return Err(FeatureError::io(&self.dir, e)),
        };
        let mut files: Vec<PathBuf> = read.flatten().map(|e| e.path()).collect();
        files.sort();
        for f in files {
            match std::fs::remove_file(&f) {
                Err(e) if !gone(&e) => return Err(FeatureError::io(&f, e)),
                _ => crate::fault::point("unlink"),
            }
        }
        match std::fs::remove_dir(&self.dir) {
            Err(e) if !gone(&e) => Err(FeatureError::io(&self.dir, e)),
            _ => Ok(()),
        }
    }
}

/// Why files cannot be joined into one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JoinError {
    #[error("nothing to join")]
    Nothing,
    #[error(
        "rows {rows:?} were made with other settings (key {key} batch {batch}, expected key \
         {expected_key} batch {expected_batch})"
    )]
    Settings {
        rows: std::ops::Range<usize>,
        key: String,
        batch: usize,
        expected_key: String,
        expected_batch: usize,
    },
    #[error("rows {from}..{to} are missing")]
    Gap { from: usize, to: usize },
}

/// Joins files covering consecutive rows of one set into one (chunks into a shard or a set,
/// shards into a set). `impaths` is the whole set's list when the result is complete.
pub fn join(parts: &[FeatureFile], impaths: Vec<String>) -> Result<FeatureFile, JoinError> {
    let first = parts.first().ok_or(JoinError::Nothing)?;
    let mut out = FeatureFile {
        meta: Meta {
            rows: first.meta.rows.start..first.meta.rows.start,
            skipped: Vec::new(),
            impaths,
            ..first.meta.clone()
        },
        dim: first.dim,
        features: Vec::new(),
        labels: Vec::new(),
        index: Vec::new(),
    };
    for p in parts {
        if p.meta.key != first.meta.key || p.meta.batch != first.meta.batch || p.dim != first.dim {
            return Err(JoinError::Settings {
                rows: p.meta.rows.clone(),
                key: p.meta.key.id(),
                batch: p.meta.batch,
                expected_key: first.meta.key.id(),
                expected_batch: first.meta.batch,
            });
        }
        if p.meta.rows.start != out.meta.rows.end {
            return Err(JoinError::Gap {
                from: out.meta.rows.end,
                to: p.meta.rows.start,
            });
        }
        out.meta.rows.end = p.meta.rows.end;
        out.meta.skipped.extend(p.meta.skipped.iter().cloned());
        out.features.extend_from_slice(&p.features);
        out.labels.extend_from_slice(&p.labels);
        out.index.extend_from_slice(&p.index);
    }
    Ok(out)
}

/// The tensors and the `__metadata__` map of a safetensors file read into `bytes`.
pub(crate) fn parse_safetensors<'a>(
    path: &Path,
    bytes: &'a [u8],
) -> Result<
    (
        safetensors::SafeTensors<'a>,
        std::collections::HashMap<String, String>,
    ),
    FeatureError,
> {
    let bad = |e: safetensors::SafeTensorError| FeatureError::Format {
        path: path.to_path_buf(),
        msg: e.to_string(),
    };
    let damaged = |msg: String| FeatureError::Damaged {
        path: path.to_path_buf(),
        msg,
    };
    let (n, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(bad)?;
    let map = header.metadata().clone().unwrap_or_default();
    // The version first: an old file is reported as old, not as damaged.
    check_version(path, &map)?;
    let data = &bytes[(8 + n).min(bytes.len())..];
    let expected = map.get("checksum").ok_or_else(|| FeatureError::Format {
        path: path.to_path_buf(),
        msg: "metadata lacks `checksum`".into(),
    })?;
    let end = header
        .tensors()
        .values()
        .map(|t| t.data_offsets.1)
        .max()
        .unwrap_or(0);
    if data.len() != end {
        return Err(damaged(format!(
            "{} data bytes, the header describes {end}",
            data.len()
        )));
    }
    let found = super::checksum(data);
    if *expected != found {
        return Err(damaged(format!(
            "the data's checksum is {found}, the header recorded {expected}"
        )));
    }
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(bad)?;
    Ok((st, map))
}
