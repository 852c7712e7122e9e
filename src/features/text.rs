//! The class-name side of the cache: each class name put into the dataset's templates,
//! encoded, normalised, averaged over templates and normalised again (the zero-shot
//! classifier's weights, `(C, E)`), stored beside the image features.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cache::write_safetensors;
use super::error::Result;
use super::{ContentHash, FeatureError};
use crate::clip::Clip;
use crate::data::{prompt_name, Dataset};
use crate::zero_shot::ZeroShotClassifier;

/// The `format` metadata value of text feature files.
pub const TEXT_FORMAT: &str = "clip-adapter-text";

/// Prompt embeddings read back from the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct TextFeatures {
    pub classnames: Vec<String>,
    pub templates: Vec<String>,
    pub logit_scale: f32,
    /// SigLIP's `logit_bias` (metadata `logit_bias`); `None` for CLIP and in older files.
    pub logit_bias: Option<f32>,
    pub dim: usize,
    /// `(C, E)` row-major, each row unit-norm.
    pub weights: Vec<f32>,
    /// `(C, E)`: the mean over templates of the un-normalised prompt embeddings (tensor
    /// `text_features_mean`; CLAP's zero-shot prototypes). `None` in files written before it.
    pub mean: Option<Vec<f32>>,
}

/// `<cache>/<dataset>/text.<key>.safetensors`, the key hashing model, class names and
/// templates.
pub fn text_path(
    cache_dir: &Path,
    dataset: &Dataset,
    model: &str,
    templates: &[String],
) -> PathBuf {
    text_path_for(
        cache_dir,
        &dataset.name,
        &dataset.classnames,
        model,
        templates,
    )
}

/// [`text_path`] of a dataset known by its name and class names only (imported features).
pub fn text_path_for(
    cache_dir: &Path,
    dataset: &str,
    classnames: &[String],
    model: &str,
    templates: &[String],
) -> PathBuf {
    let mut h = ContentHash::default();
    h.field(b"text v2");
    h.field(model.as_bytes());
    for c in classnames {
        h.field(c.as_bytes());
    }
    h.field(b"templates");
    for t in templates {
        h.field(t.as_bytes());
    }
    cache_dir
        .join(dataset)
        .join(format!("text.{}.safetensors", h.hex()))
}

/// Class-name prompt embeddings in memory, before they are written.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptEmbeddings {
    /// `(C, E)`: normalised per prompt, averaged over templates, normalised again.
    pub weights: Vec<f32>,
    /// `(C, E)`: the plain mean of the un-normalised prompt embeddings.
    pub mean: Vec<f32>,
    pub dim: usize,
    pub logit_scale: f32,
    /// SigLIP's `logit_bias`; `None` for CLIP.
    pub logit_bias: Option<f32>,
}

/// Encodes each class name in every template with `clip` (the zero-shot classifier).
pub fn encode_prompts(
    clip: &Clip,
    classnames: &[String],
    templates: &[String],
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<PromptEmbeddings> {
    let names: Vec<String> = classnames.iter().map(|c| prompt_name(c)).collect();
    let zs = ZeroShotClassifier::build(clip, &names, templates, on_progress)?;
    let (_, dim) = zs.weights.dims2()?;
    let floats = |t: &candle_core::Tensor| -> Result<Vec<f32>> {
        Ok((t.to_dtype(candle_core::DType::F32)?.flatten_all()?).to_vec1()?)
    };
    Ok(PromptEmbeddings {
        weights: floats(&zs.weights)?,
        mean: floats(&zs.mean)?,
        dim,
        logit_scale: zs.logit_scale,
        logit_bias: zs.logit_bias,
    })
}

/// What a text feature file records besides the embeddings.
pub struct TextMeta<'a> {
    /// The model's fingerprint (the key's model).
    pub model: &'a str,
    pub model_name: &'a str,
    pub dataset: &'a str,
    pub classnames: &'a [String],
    pub templates: &'a [String],
    /// Extra metadata entries (an import's record of its sources).
    pub extra: BTreeMap<String, String>,
}

/// The bytes of a text feature file (sorted, checksummed, as every cache file).
pub fn text_file_bytes(meta: &TextMeta, e: &PromptEmbeddings) -> Vec<u8> {
    let json = |v: &[String]| serde_json::to_string(v).unwrap_or_default();
    let mut m = meta.extra.clone();
    m.insert("format".to_string(), TEXT_FORMAT.to_string());
    m.insert("version".into(), super::cache::VERSION.to_string());
    m.insert("model".into(), meta.model.to_string());
    m.insert("model_name".into(), meta.model_name.to_string());
    m.insert("dataset".into(), meta.dataset.to_string());
    m.insert("classnames".into(), json(meta.classnames));
    m.insert("templates".into(), json(meta.templates));
    m.insert("logit_scale".into(), e.logit_scale.to_string());
    if let Some(bias) = e.logit_bias {
        m.insert("logit_bias".into(), bias.to_string());
    }
    let le = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let shape = vec![meta.classnames.len(), e.dim];
    write_safetensors(
        &m,
        &[
            ("text_features", "F32", shape.clone(), le(&e.weights)),
            ("text_features_mean", "F32", shape, le(&e.mean)),
        ],
    )
}

/// What [`extract_text`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum TextOutcome {
    /// The cached file was whole and for these class names.
    Reused,
    /// There was none: encoded.
    Encoded,
    /// A file was there but unreadable (damaged, older format); `reason` is the reader's
    /// message. Encoded again.
    Rebuilt { reason: String },
}

/// Encodes the class-name prompts of `dataset` unless the cache has them; returns the file and
/// what was done.
pub fn extract_text(
    clip: &Clip,
    dataset: &Dataset,
    model: &str,
    model_name: &str,
    templates: &[String],
    cache_dir: &Path,
    on_progress: &mut dyn FnMut(usize, usize),
) -> Result<(PathBuf, TextOutcome)> {
    let path = text_path(cache_dir, dataset, model, templates);
    // One writer at a time; a damaged or older file is simply encoded again (it is cheap).
    let held = super::lock::lock(&path, &mut |_| {})?;
    super::lock::clean(&path, &held)?;
    let mut outcome = TextOutcome::Encoded;
    if path.is_file() {
        match read_text(&path) {
            // The key hashes the class names; equal names are checked all the same.
            Ok(t) if t.classnames == dataset.classnames && t.mean.is_some() => {
                return Ok((path, TextOutcome::Reused))
            }
            Ok(t) if t.mean.is_none() => {
                outcome = TextOutcome::Rebuilt {
                    reason: format!(
                        "{}: written before the mean prompt embedding was stored",
                        path.display()
                    ),
                }
            }
            Ok(_) => {}
            Err(e) => {
                outcome = TextOutcome::Rebuilt {
                    reason: e.to_string(),
                }
            }
        }
    }
    let embeddings = encode_prompts(clip, &dataset.classnames, templates, on_progress)?;
    let meta = TextMeta {
        model,
        model_name,
        dataset: &dataset.name,
        classnames: &dataset.classnames,
        templates,
        extra: BTreeMap::new(),
    };
    let bytes = text_file_bytes(&meta, &embeddings);
    super::cache::write_atomic(&path, &bytes)?;
    drop(held);
    Ok((path, outcome))
}

/// Reads a text feature file.
pub fn read_text(path: &Path) -> Result<TextFeatures> {
    let bytes = std::fs::read(path).map_err(|e| FeatureError::io(path, e))?;
    text_from_bytes(path, &bytes)
}

/// [`read_text`] on the file's bytes already in memory; `path` only names it in errors.
#[doc(hidden)]
pub fn text_from_bytes(path: &Path, bytes: &[u8]) -> Result<TextFeatures> {
    let bad = |msg: String| FeatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let (st, m) = super::cache::parse_safetensors(path, bytes)?;
    let get = |k: &str| m.get(k).ok_or_else(|| bad(format!("metadata lacks `{k}`")));
    if get("format")? != TEXT_FORMAT {
        return Err(bad("not a clip-adapter text feature file".into()));
    }
    let list = |k: &str| -> std::result::Result<Vec<String>, FeatureError> {
        serde_json::from_str(get(k)?).map_err(|e| bad(format!("metadata `{k}`: {e}")))
    };
    let t = st.tensor("text_features").map_err(|e| bad(e.to_string()))?;
    let classnames = list("classnames")?;
    let [c, dim] = t.shape()[..] else {
        return Err(bad(format!("`text_features` has shape {:?}", t.shape())));
    };
    if t.dtype() != safetensors::Dtype::F32 || c != classnames.len() {
        return Err(bad(format!(
            "`text_features` is {:?} {:?}, expected F32 [{}, dim] (one row per class name)",
            t.dtype(),
            t.shape(),
            classnames.len()
        )));
    }
    let floats = |t: &safetensors::tensor::TensorView| -> Vec<f32> {
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    let mean = match st.names().contains(&"text_features_mean") {
        false => None,
        true => {
            let m = (st.tensor("text_features_mean")).map_err(|e| bad(e.to_string()))?;
            if m.dtype() != safetensors::Dtype::F32 || m.shape() != [c, dim] {
                return Err(bad(format!(
                    "`text_features_mean` is {:?} {:?}, expected F32 [{c}, {dim}] (like `text_features`)",
                    m.dtype(),
                    m.shape()
                )));
            }
            let v = floats(&m);
            if v.iter().any(|x| !x.is_finite()) {
                return Err(bad("`text_features_mean` holds a non-finite value".into()));
            }
            Some(v)
        }
    };
    let logit_bias = match m.get("logit_bias") {
        None => None,
        Some(v) => match v.parse::<f32>() {
            Ok(b) if b.is_finite() => Some(b),
            _ => return Err(bad(format!("bad `logit_bias` {v:?} (a finite number)"))),
        },
    };
    Ok(TextFeatures {
        mean,
        classnames,
        templates: list("templates")?,
        logit_scale: get("logit_scale")?
            .parse()
            .map_err(|_| bad("bad `logit_scale`".into()))?,
        logit_bias,
        dim,
        weights: t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    })
}
