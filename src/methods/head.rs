//! A trained head: it turns image features into class logits, and it is saved as one
//! safetensors file with everything needed to use it on new images (`clip-adapter predict`):
//! the model it was trained on, the class names, the prompt templates, the method and its
//! options, all as string metadata next to the tensors.
//!
//! Each head type lives with its method and implements [`HeadModel`]; its [`HeadCodec`] (the
//! `head` metadata value, the tensor that fixes the class count K and width D, and its reader)
//! is on the method's card, so this file knows no method. Every head file has `classes` (or the
//! tensor its codec names) K×D; the tensors of each head are listed in its method's file.

use std::any::Any;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use super::linalg::Matrix;
use super::{MethodError, TextClassifier};
use crate::zero_shot::Scores;

/// The `format` metadata value of head files.
pub const FORMAT: &str = "clip-adapter-head";
pub const VERSION: u32 = 1;

/// Which features a head scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSpace {
    /// The projected image embeddings the cache stores.
    Projected,
    /// The image tower's output before its last projection (ProLIP trains that projection).
    PreProjection,
    /// The projected embeddings of the model with the head's own updates (CLIP-LoRA): the
    /// cached features are not what it scores.
    Adapted,
}

/// A trained head.
pub trait HeadModel: fmt::Debug + Send + Sync + 'static {
    fn codec(&self) -> &'static HeadCodec;
    /// Class logits for image features (N×D, un-normalised as the cache stores them).
    fn logits(&self, x: &Matrix) -> Matrix;
    /// The feature width the head expects.
    fn dim(&self) -> usize;
    /// Its tensors and any metadata of its own.
    fn write(&self, w: &mut HeadWriter);
    /// How its logits become probabilities: a softmax over the classes, except SigLIP's
    /// zero-shot head (a sigmoid per class, as the model scores).
    fn scores(&self) -> Scores {
        Scores::Softmax
    }
    fn clone_box(&self) -> Box<dyn HeadModel>;
    fn as_any(&self) -> &dyn Any;
    /// The same head scoring other classes, given their text classifier: what its method's
    /// card calls [`NewClasses::FromText`](super::NewClasses::FromText). `None` for a head
    /// that holds something of each training class (every other method).
    fn for_classes(&self, _text: &TextClassifier) -> Option<Box<dyn HeadModel>> {
        None
    }
    /// The image features its logits classify, when it changes them (CLIP-Adapter's visual
    /// adapter); `None` for a head that classifies the features it is given.
    fn image_features(&self, _x: &Matrix) -> Option<Matrix> {
        None
    }
}

/// Reads a head's tensors, given its anchor tensor.
pub type ReadHead = fn(&HeadReader, Matrix) -> Result<Box<dyn HeadModel>, HeadError>;

/// How a head type is named in files and read back.
pub struct HeadCodec {
    /// The `head` metadata value.
    pub kind: &'static str,
    /// The tensor that fixes K and D (`classes` unless the head has none), and what it holds.
    pub anchor: (&'static str, &'static str),
    pub input: FeatureSpace,
    /// Reads the rest of the head, given the anchor tensor (already checked: K ≥ 2 rows).
    pub read: ReadHead,
}

impl fmt::Debug for HeadCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HeadCodec({})", self.kind)
    }
}

/// A trained head of any method.
pub struct Head(Box<dyn HeadModel>);

impl Head {
    /// The image features its logits classify: `x` itself unless the head changes them.
    pub fn image_features(&self, x: &Matrix) -> Matrix {
        self.0.image_features(x).unwrap_or_else(|| x.clone())
    }

    pub fn new(head: impl HeadModel) -> Self {
        Head(Box::new(head))
    }

    pub fn logits(&self, x: &Matrix) -> Matrix {
        self.0.logits(x)
    }

    pub fn dim(&self) -> usize {
        self.0.dim()
    }

    /// How [`Head::logits`] become probabilities.
    pub fn scores(&self) -> Scores {
        self.0.scores()
    }

    /// The `head` value of its files.
    pub fn kind(&self) -> &'static str {
        self.0.codec().kind
    }

    /// Which features it scores.
    pub fn input(&self) -> FeatureSpace {
        self.0.codec().input
    }

    /// The head scoring the classes of `text` instead of its training classes (`None`: it
    /// cannot; see [`HeadModel::for_classes`]).
    pub fn for_classes(&self, text: &TextClassifier) -> Option<Head> {
        self.0.for_classes(text).map(Head)
    }

    /// The head as its concrete type (`None` for another head).
    pub fn downcast_ref<T: 'static>(&self) -> Option<&T> {
        self.0.as_any().downcast_ref()
    }
}

impl Clone for Head {
    fn clone(&self) -> Self {
        Head(self.0.clone_box())
    }
}

impl fmt::Debug for Head {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Implements `codec`, `clone_box` and `as_any` of [`HeadModel`] for a `Clone` head.
macro_rules! head_boilerplate {
    ($codec:expr) => {
        fn codec(&self) -> &'static $crate::methods::head::HeadCodec {
            &$codec
        }
        fn clone_box(&self) -> Box<dyn $crate::methods::head::HeadModel> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    };
}
pub(crate) use head_boilerplate;

/// What a head file says about how the head was made.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HeadInfo {
    /// The CLIP model it was trained on, as a reference that resolves from any directory: the
    /// absolute path of a model directory, or a hub id (e.g. `timm/resnet50_clip.openai`).
    pub model: String,
    /// The model's content fingerprint (`features::model_fingerprint`); `None` in heads saved
    /// before it was recorded.
    pub model_fingerprint: Option<String>,
    pub classnames: Vec<String>,
    pub templates: Vec<String>,
    /// Method name (`clip-adapter`, …).
    pub method: String,
    /// The method's options and chosen hyper-parameters, as JSON.
    pub options: String,
}

/// The tensors and metadata of a head being written.
#[derive(Default)]
pub struct HeadWriter {
    tensors: Vec<crate::safetensors_file::F32Tensor>,
    meta: BTreeMap<String, String>,
}

impl HeadWriter {
    pub fn put(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        self.tensors.push(crate::safetensors_file::F32Tensor {
            name: name.to_string(),
            shape,
            data,
        });
    }
    pub fn matrix(&mut self, name: &str, m: &Matrix) {
        self.put(name, vec![m.rows, m.cols], m.data.clone());
    }
    pub fn vector(&mut self, name: &str, v: &[f32]) {
        self.put(name, vec![v.len()], v.to_vec());
    }
    pub fn scalar(&mut self, name: &str, v: f32) {
        self.put(name, vec![1], vec![v]);
    }
    /// Indices (class or channel numbers), exact in f32 up to 2^24.
    pub fn indices(&mut self, name: &str, v: &[usize]) {
        self.put(name, vec![v.len()], v.iter().map(|&i| i as f32).collect());
    }
    pub fn meta(&mut self, key: &str, value: String) {
        self.meta.insert(key.to_string(), value);
    }
}

/// Serialises `head` with `info` as safetensors bytes (sorted tensors, a checksum).
pub fn to_bytes(head: &Head, info: &HeadInfo) -> Vec<u8> {
    let mut w = HeadWriter::default();
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    w.meta("format", FORMAT.to_string());
    w.meta("version", VERSION.to_string());
    w.meta("head", head.kind().to_string());
    w.meta("model", info.model.clone());
    if let Some(f) = &info.model_fingerprint {
        w.meta("model_fingerprint", f.clone());
    }
    w.meta("classnames", json(&info.classnames));
    w.meta("templates", json(&info.templates));
    w.meta("method", info.method.clone());
    w.meta("options", info.options.clone());
    head.0.write(&mut w);
    crate::safetensors_file::to_bytes(w.tensors, w.meta)
}

/// Writes the head atomically (temp file + rename).
pub fn save(path: &Path, head: &Head, info: &HeadInfo) -> Result<(), MethodError> {
    Ok(crate::fsutil::write_atomic(path, &to_bytes(head, info))?)
}

/// Reads a head file back, refusing one that is malformed or inconsistent (see
/// [`from_bytes`]).
pub fn load(path: &Path) -> Result<(Head, HeadInfo), MethodError> {
    let bytes = std::fs::read(path).map_err(|source| MethodError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes).map_err(|source| MethodError::HeadFormat {
        path: path.to_path_buf(),
        source: Box::new(source),
    })
}

/// Why head bytes are not a usable head.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HeadError {
    #[error("not a safetensors file")]
    Safetensors(#[from] safetensors::SafeTensorError),

    #[error(transparent)]
    Checksum(#[from] crate::safetensors_file::ChecksumError),

    #[error("metadata `{key}` is not valid JSON")]
    MetadataJson {
        key: &'static str,
        #[source]
        source: serde_json::Error,
    },

    #[error("metadata lacks `{key}`")]
    MissingMetadata { key: &'static str },

    #[error("metadata `{key}` is `{value}`, expected {expected}")]
    Metadata {
        key: &'static str,
        value: String,
        expected: String,
    },

    #[error("format is `{found}`, expected `{FORMAT}`")]
    Format { found: String },

    #[error("version `{found}` is not supported (expected {VERSION})")]
    Version { found: String },

    #[error("unknown head kind `{kind}`")]
    UnknownKind { kind: String },

    #[error("tensor `{name}` ({what}) is missing")]
    MissingTensor { name: String, what: String },

    #[error("tensor `{name}` is {dtype}, expected F32")]
    Dtype { name: String, dtype: String },

    #[error("tensor `{name}` has shape {shape:?}, expected [{expected}] ({what})")]
    Shape {
        name: String,
        shape: Vec<usize>,
        expected: String,
        what: String,
    },

    #[error("tensor `{name}` has shape {shape:?}: an empty dimension")]
    EmptyDimension { name: String, shape: Vec<usize> },

    #[error(
        "tensor `{name}` holds {value} at position {position}; a head's weights must be finite"
    )]
    NotFinite {
        name: String,
        value: f32,
        position: usize,
    },

    #[error("tensor `{name}` is {value}; CLIP's logit scale is positive")]
    NotPositive { name: String, value: f32 },

    #[error("tensor `{name}` holds {value} at position {position}; expected {what} 0..{below}")]
    Index {
        name: String,
        value: f32,
        position: usize,
        what: &'static str,
        below: usize,
    },

    #[error("`{anchor}` has {classes} row(s): the head scores {classes} class(es), a classifier needs at least {min}")]
    TooFewClasses {
        anchor: &'static str,
        classes: usize,
        min: usize,
    },

    #[error("metadata `classnames` names {names} class(es), but the head scores {classes} (`{anchor}` has {classes} rows)")]
    ClassNames {
        names: usize,
        classes: usize,
        anchor: &'static str,
    },

    #[error("tensor(s) {} are not part of a `{kind}` head", names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", "))]
    Leftover { names: Vec<String>, kind: String },

    #[error("a `{kind}` head needs {what}")]
    Incomplete {
        kind: &'static str,
        what: &'static str,
    },
}

/// A tensor's expected shape: each dimension either a known size or free.
type Dims<'a> = &'a [Option<usize>];

/// Reads tensors out of a head file, checking dtype, shape and finiteness, and remembers which
/// ones were read so that leftovers can be refused.
pub struct HeadReader<'a> {
    st: &'a safetensors::SafeTensors<'a>,
    meta: &'a std::collections::HashMap<String, String>,
    read: std::cell::RefCell<Vec<String>>,
}

impl HeadReader<'_> {
    pub fn has(&self, name: &str) -> bool {
        self.st.names().contains(&name)
    }

    /// A metadata value of the head's own.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.meta.get(key).map(String::as_str)
    }

    pub fn tensor(
        &self,
        name: &str,
        dims: Dims,
        what: &str,
    ) -> Result<(Vec<usize>, Vec<f32>), HeadError> {
        let t = self.st.tensor(name).map_err(|_| HeadError::MissingTensor {
            name: name.to_string(),
            what: what.to_string(),
        })?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(HeadError::Dtype {
                name: name.to_string(),
                dtype: format!("{:?}", t.dtype()),
            });
        }
        let shape = t.shape().to_vec();
        let fits = shape.len() == dims.len()
            && shape
                .iter()
                .zip(dims)
                .all(|(s, d)| d.is_none_or(|d| d == *s));
        if !fits {
            let expected: Vec<String> = dims
                .iter()
                .map(|d| d.map_or("_".to_string(), |d| d.to_string()))
                .collect();
            return Err(HeadError::Shape {
                name: name.to_string(),
                shape,
                expected: expected.join(", "),
                what: what.to_string(),
            });
        }
        if shape.contains(&0) {
            return Err(HeadError::EmptyDimension {
                name: name.to_string(),
                shape,
            });
        }
        let data: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(HeadError::NotFinite {
                name: name.to_string(),
                value: data[i],
                position: i,
            });
        }
        self.read.borrow_mut().push(name.to_string());
        Ok((shape, data))
    }

    pub fn matrix(
        &self,
        name: &str,
        rows: Option<usize>,
        cols: Option<usize>,
        what: &str,
    ) -> Result<Matrix, HeadError> {
        let (s, data) = self.tensor(name, &[rows, cols], what)?;
        Ok(Matrix {
            rows: s[0],
            cols: s[1],
            data,
        })
    }

    pub fn vector(&self, name: &str, len: usize, what: &str) -> Result<Vec<f32>, HeadError> {
        Ok(self.tensor(name, &[Some(len)], what)?.1)
    }

    pub fn scalar(&self, name: &str, what: &str) -> Result<f32, HeadError> {
        Ok(self.tensor(name, &[Some(1)], what)?.1[0])
    }

    /// Indices stored as f32, each a whole number below `below`.
    pub fn indices(
        &self,
        name: &str,
        len: Option<usize>,
        below: usize,
        what: &'static str,
    ) -> Result<Vec<usize>, HeadError> {
        let (_, v) = self.tensor(name, &[len], what)?;
        v.iter()
            .enumerate()
            .map(|(i, &v)| {
                if v >= 0.0 && v.fract() == 0.0 && (v as usize) < below {
                    Ok(v as usize)
                } else {
                    Err(HeadError::Index {
                        name: name.to_string(),
                        value: v,
                        position: i,
                        what,
                        below,
                    })
                }
            })
            .collect()
    }

    /// The positive `logit_scale`.
    pub fn logit_scale(&self) -> Result<f32, HeadError> {
        let v = self.scalar("logit_scale", "one value")?;
        if v <= 0.0 {
            return Err(HeadError::NotPositive {
                name: "logit_scale".into(),
                value: v,
            });
        }
        Ok(v)
    }

    /// Refuses tensors the head kind does not have (a file mixing two heads, or one whose
    /// branches were renamed, would otherwise load with parts silently ignored).
    fn no_leftovers(&self, kind: &str) -> Result<(), HeadError> {
        let read = self.read.borrow();
        let mut extra: Vec<String> = self
            .st
            .names()
            .into_iter()
            .filter(|n| !read.iter().any(|r| r == *n))
            .map(str::to_string)
            .collect();
        extra.sort_unstable();
        if extra.is_empty() {
            return Ok(());
        }
        Err(HeadError::Leftover {
            names: extra,
            kind: kind.to_string(),
        })
    }
}

/// The metadata every head file has, parsed.
fn read_info(meta: &std::collections::HashMap<String, String>) -> Result<HeadInfo, HeadError> {
    let get = |key: &'static str| {
        meta.get(key)
            .cloned()
            .ok_or(HeadError::MissingMetadata { key })
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(HeadError::Format { found: format });
    }
    let version = get("version")?;
    if version != VERSION.to_string() {
        return Err(HeadError::Version { found: version });
    }
    let list = |key: &'static str| -> Result<Vec<String>, HeadError> {
        serde_json::from_str(&get(key)?).map_err(|source| HeadError::MetadataJson { key, source })
    };
    let options = get("options")?;
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&options).map_err(
        |source| HeadError::MetadataJson {
            key: "options",
            source,
        },
    )?;
    Ok(HeadInfo {
        model: get("model")?,
        model_fingerprint: meta.get("model_fingerprint").cloned(),
        classnames: list("classnames")?,
        templates: list("templates")?,
        method: get("method")?,
        options,
    })
}

/// Parses and validates head bytes: format and version, every tensor's dtype and shape against
/// the others (the anchor K×D fixes K and D), finite weights, as many class names as the head
/// has classes (at least two), and options parsed strictly.
pub fn from_bytes(bytes: &[u8]) -> Result<(Head, HeadInfo), HeadError> {
    let st = safetensors::SafeTensors::deserialize(bytes)?;
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes)?;
    let meta = header.metadata().clone().unwrap_or_default();
    crate::safetensors_file::verify_checksum(bytes, &meta)?;
    let info = read_info(&meta)?;
    let kind = meta
        .get("head")
        .cloned()
        .ok_or(HeadError::MissingMetadata { key: "head" })?;
    let codec = super::registry::head_codec(&kind)
        .ok_or_else(|| HeadError::UnknownKind { kind: kind.clone() })?;
    let r = HeadReader {
        st: &st,
        meta: &meta,
        read: Default::default(),
    };
    let (anchor_name, anchor_what) = codec.anchor;
    let anchor = r.matrix(anchor_name, None, None, anchor_what)?;
    let k = anchor.rows;
    let min = crate::data::MIN_CLASSES;
    if k < min {
        return Err(HeadError::TooFewClasses {
            anchor: anchor_name,
            classes: k,
            min,
        });
    }
    if info.classnames.len() != k {
        return Err(HeadError::ClassNames {
            names: info.classnames.len(),
            classes: k,
            anchor: anchor_name,
        });
    }
    let head = (codec.read)(&r, anchor)?;
    r.no_leftovers(&kind)?;
    Ok((Head(head), info))
}
