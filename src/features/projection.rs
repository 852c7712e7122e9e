//! The image tower's last projection, stored beside the pre-projection features it applies to
//! (an extraction with pre-projection features): ProLIP starts from it and regularises towards it, and the
//! cache can be used without the model.
//!
//! `<cache>/<dataset>/projection.<key>.safetensors`, the key hashing the model fingerprint;
//! tensors `weight` F32 `(E, W)` (output × input; a ViT's `visual.proj` transposed) and, for a
//! ModifiedResNet, `bias` F32 `(E)`; metadata `format`, `version`, `model`, `model_name`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::cache::write_safetensors;
use super::error::Result;
use super::{ContentHash, FeatureError};
use crate::clip::Clip;

/// The `format` metadata value of projection files.
pub const PROJECTION_FORMAT: &str = "clip-adapter-projection";

/// A projection read back from the cache.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredProjection {
    /// The model's content fingerprint.
    pub model: String,
    /// `E × W` row-major.
    pub weight: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
    pub bias: Option<Vec<f32>>,
}

/// `<cache>/<dataset>/projection.<key>.safetensors`.
pub fn projection_path(cache_dir: &Path, dataset: &str, model: &str) -> PathBuf {
    let mut h = ContentHash::default();
    h.field(b"projection v1");
    h.field(model.as_bytes());
    cache_dir
        .join(dataset)
        .join(format!("projection.{}.safetensors", h.hex()))
}

/// Writes the model's image projection into the dataset's cache folder unless a readable file
/// of the same model is there; returns its path.
pub fn extract_projection(
    clip: &Clip,
    dataset: &str,
    model: &str,
    model_name: &str,
    cache_dir: &Path,
) -> Result<PathBuf> {
    let path = projection_path(cache_dir, dataset, model);
    let held = super::lock::lock(&path, &mut |_| {})?;
    super::lock::clean(&path, &held)?;
    if read_projection(&path).is_ok_and(|p| p.model == model) {
        return Ok(path);
    }
    let (weight, cols, bias) = clip.image_projection()?;
    let rows = weight.len() / cols.max(1);
    let mut meta = BTreeMap::new();
    meta.insert("format".to_string(), PROJECTION_FORMAT.to_string());
    meta.insert("version".into(), super::cache::VERSION.to_string());
    meta.insert("model".into(), model.to_string());
    meta.insert("model_name".into(), model_name.to_string());
    let bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    let mut tensors = vec![("weight", "F32", vec![rows, cols], bytes(&weight))];
    if let Some(b) = &bias {
        tensors.push(("bias", "F32", vec![b.len()], bytes(b)));
    }
    super::cache::write_atomic(&path, &write_safetensors(&meta, &tensors))?;
    drop(held);
    Ok(path)
}

/// Reads a projection file, checking its format, shapes and values.
pub fn read_projection(path: &Path) -> std::result::Result<StoredProjection, FeatureError> {
    let bytes = std::fs::read(path).map_err(|e| FeatureError::io(path, e))?;
    let bad = |msg: String| FeatureError::Format {
        path: path.to_path_buf(),
        msg,
    };
    let (st, m) = super::cache::parse_safetensors(path, &bytes)?;
    let get = |k: &str| m.get(k).ok_or_else(|| bad(format!("metadata lacks `{k}`")));
    if get("format")? != PROJECTION_FORMAT {
        return Err(bad("not a clip-adapter projection file".into()));
    }
    let tensor = |name: &str| -> std::result::Result<(Vec<usize>, Vec<f32>), FeatureError> {
        let t = st
            .tensor(name)
            .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
        if t.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!(
                "tensor `{name}` is {:?}, expected F32",
                t.dtype()
            )));
        }
        let v: Vec<f32> = t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if let Some(i) = v.iter().position(|x| !x.is_finite()) {
            return Err(bad(format!("tensor `{name}` holds {} at {i}", v[i])));
        }
        Ok((t.shape().to_vec(), v))
    };
    let (shape, weight) = tensor("weight")?;
    let [rows, cols] = shape[..] else {
        return Err(bad(format!(
            "`weight` has shape {shape:?}, expected [E, W]"
        )));
    };
    let bias = match st.names().contains(&"bias") {
        false => None,
        true => {
            let (shape, b) = tensor("bias")?;
            if shape != [rows] {
                return Err(bad(format!(
                    "`bias` has shape {shape:?}, expected [{rows}]"
                )));
            }
            Some(b)
        }
    };
    Ok(StoredProjection {
        model: get("model")?.clone(),
        weight,
        rows,
        cols,
        bias,
    })
}
