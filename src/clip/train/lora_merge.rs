//! Folding CLIP-LoRA's updates into a checkpoint: every adapted weight becomes `W + s·B·A`, every
//! other tensor is copied as stored, in the layout the model was loaded from. The result is an
//! ordinary model that `classify`, `embed` and `extract` load without knowing about LoRA, and
//! that encodes exactly as the adapted model does in evaluation (tested).
//!
//! The merged weights are written in f32 whatever the checkpoint's dtype: an update is small
//! next to its weight, and rounding the sum back to f16 would lose much of it. The other tensors
//! keep their dtype, so an f16 checkpoint grows only by its adapted matrices.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::clip::error::{Error, Result};
use crate::clip::load::checkpoint::Checkpoint;
use crate::clip::load::layout::{source_key, Layout, Transform};
use crate::clip::ModelFiles;

/// Weight files are never copied beside the merged one (they would be the unmerged weights).
const WEIGHT_EXTENSIONS: [&str; 5] = ["safetensors", "bin", "pt", "pth", "ckpt"];

/// Adds `deltas` (by `transformers` weight name, `out × in`) to the stored tensors they adapt.
fn merged_tensors(
    ckpt: &Checkpoint,
    layout: Layout,
    deltas: &[(String, Tensor)],
) -> Result<BTreeMap<String, Tensor>> {
    let mut by_key: BTreeMap<String, Vec<(Transform, &Tensor)>> = BTreeMap::new();
    for (name, delta) in deltas {
        let (key, transform) = source_key(layout, name);
        by_key.entry(key).or_default().push((transform, delta));
    }
    let mut out = BTreeMap::new();
    for key in ckpt.names() {
        let stored = ckpt.stored(key)?;
        let tensor = match by_key.remove(key) {
            None => stored,
            Some(parts) => add_deltas(ckpt.file(), key, &stored.to_dtype(DType::F32)?, &parts)?,
        };
        out.insert(key.to_string(), tensor);
    }
    if let Some(key) = by_key.keys().next() {
        return Err(Error::Lora {
            why: format!(
                "{}: no tensor `{key}` to merge an update into",
                ckpt.file().display()
            ),
        });
    }
    Ok(out)
}

fn add_deltas(
    file: &Path,
    key: &str,
    weight: &Tensor,
    parts: &[(Transform, &Tensor)],
) -> Result<Tensor> {
    let mut w = weight.clone();
    for (transform, delta) in parts {
        let delta = match transform {
            Transform::Identity => (*delta).clone(),
            Transform::Transpose => delta.t()?.contiguous()?,
            // q, k, v stacked by rows (`in_proj_weight`): pad the update to its block.
            Transform::Part { index, of } => {
                let (rows, cols) = delta.dims2()?;
                let zeros = |n| Tensor::zeros((n, cols), DType::F32, delta.device());
                let mut blocks = Vec::new();
                if *index > 0 {
                    blocks.push(zeros(index * rows)?);
                }
                blocks.push((*delta).clone());
                if index + 1 < *of {
                    blocks.push(zeros((of - index - 1) * rows)?);
                }
                Tensor::cat(&blocks, 0)?
            }
            Transform::Unsqueezed => delta.unsqueeze(0)?,
        };
        if delta.dims() != w.dims() {
            return Err(Error::TensorShape {
                file: file.to_path_buf(),
                name: key.to_string(),
                expected: delta.dims().to_vec(),
                actual: w.dims().to_vec(),
            });
        }
        w = (w + delta)?;
    }
    Ok(w)
}

/// Writes the model of `files` with `deltas` folded in under `out`, a new directory: the same
/// file names as the source for a model directory (weights as safetensors, config and tokenizer
/// files copied), `<stem>.safetensors` for a single OpenAI file. Returns what to load.
pub fn write_merged(
    files: &ModelFiles,
    deltas: &[(String, Tensor)],
    out: &Path,
) -> Result<PathBuf> {
    let ckpt = Checkpoint::open(&files.weights, files.layout, &Device::Cpu)?;
    let tensors = merged_tensors(&ckpt, files.layout, deltas)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let (weights, model) = match (&files.config, files.layout) {
        (Some(_), Layout::Transformers) => (out.join("model.safetensors"), out.to_path_buf()),
        (Some(_), Layout::OpenClip | Layout::OpenClipTimm) => {
            (out.join("open_clip_model.safetensors"), out.to_path_buf())
        }
        (None, _) => {
            let stem = files
                .weights
                .file_stem()
                .unwrap_or_default()
                .to_string_lossy();
            let file = out.join(format!("{stem}.safetensors"));
            (file.clone(), file)
        }
    };
    if files.config.is_some() {
        copy_side_files(&files.dir, out)?;
    }
    let bytes = safetensors::tensor::serialize(&tensors, None).map_err(|e| Error::Checkpoint {
        file: weights.clone(),
        msg: format!("cannot serialise the merged weights ({e})"),
    })?;
    crate::fsutil::write_atomic(&weights, &bytes)?;
    Ok(model)
}

/// Copies the config, tokenizer and preprocessing files of a model directory.
fn copy_side_files(dir: &Path, out: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let is_weights = (path.extension().and_then(|e| e.to_str()))
            .is_some_and(|e| WEIGHT_EXTENSIONS.contains(&e));
        if !path.is_file() || is_weights {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        crate::fsutil::write_atomic(&out.join(entry.file_name()), &bytes)?;
    }
    Ok(())
}
