//! A CLIP-LoRA head's updates folded into the model it was trained on: a new model directory in
//! the model's own layout that `classify`, `embed`, `extract` and every method load as they load
//! any model (`clip::train::lora_merge`).

use std::path::PathBuf;

use super::{resolve_model, RunError, RunObserver};
use crate::clip::hub::HubOptions;
use crate::clip::train::lora::LoraClip;
use crate::clip::train::lora_merge::write_merged;
use crate::experiment;
use crate::features::model_fingerprint;
use crate::methods::clip_lora::LoraHead;
use crate::methods::head;

#[derive(Debug, Clone)]
pub struct MergeLoraSpec {
    /// A head saved by `fit --method clip-lora --save`.
    pub head: PathBuf,
    /// The model [default: the one the head records]; it must be that model.
    pub model: Option<String>,
    /// A new folder for the merged model.
    pub out: PathBuf,
    pub hub: HubOptions,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MergedLora {
    /// What to pass as `--model`: the folder, or the merged file of a single-file model.
    pub model: PathBuf,
    /// The weight matrices the updates were added to.
    pub merged: usize,
}

pub fn merge_lora(
    spec: &MergeLoraSpec,
    observer: &mut dyn RunObserver,
) -> Result<MergedLora, RunError> {
    let (loaded, info) = head::load(&spec.head)?;
    let lora = loaded
        .downcast_ref::<LoraHead>()
        .ok_or_else(|| RunError::NotLoraHead {
            head: spec.head.clone(),
            kind: loaded.kind(),
        })?;
    let occupied = std::fs::read_dir(&spec.out).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        return Err(RunError::OutExists {
            path: spec.out.clone(),
        });
    }
    let model = spec.model.clone().unwrap_or_else(|| info.model.clone());
    let files = resolve_model(&model, &spec.hub, observer)?;
    let fingerprint = model_fingerprint(&files).map_err(|source| RunError::Fingerprint {
        dir: files.dir.clone(),
        source: Box::new(source),
    })?;
    experiment::check_head_model(&info, &model, &fingerprint).map_err(|e| RunError::HeadModel {
        head: spec.head.clone(),
        source: Box::new(e),
    })?;
    let fold = || -> Result<MergedLora, crate::methods::MethodError> {
        let adapted = LoraClip::load(&files, &lora.lora, 0, &candle_core::Device::Cpu)?;
        adapted.set_vars(&lora.tensors()?)?;
        let deltas = adapted.deltas()?;
        Ok(MergedLora {
            model: write_merged(&files, &deltas, &spec.out)?,
            merged: deltas.len(),
        })
    };
    Ok(fold()?)
}
