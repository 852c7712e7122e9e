//! The model behind a run: its backbone (read from its config, for printing the published
//! numbers of the same backbone), the model a saved head records and checks, and the model
//! CoOp trains through (the one that made the features).

use std::path::Path;

use super::{ExperimentError, RowSource};
use crate::clip::load::config::{ClipConfig, VisionTower};
use crate::clip::{ModelFiles, Precision};
use crate::methods::coop::PromptModel;
use crate::methods::head::HeadInfo;

/// OpenAI's name for the image tower of `config` (`RN50`, `ViT-B/32`, …), when it has the
/// shape of one of OpenAI's released CLIP models.
pub fn backbone(config: &ClipConfig) -> Option<&'static str> {
    Some(match &config.vision {
        VisionTower::ResNet(r) => match (r.layers, r.width) {
            ([3, 4, 6, 3], 64) => "RN50",
            ([3, 4, 23, 3], 64) => "RN101",
            ([4, 6, 10, 6], 80) => "RN50x4",
            ([6, 8, 18, 8], 96) => "RN50x16",
            ([3, 15, 36, 10], 128) => "RN50x64",
            _ => return None,
        },
        VisionTower::Vit(v) => match (v.width, v.layers, v.patch_size, v.image_size) {
            (768, 12, 32, 224) => "ViT-B/32",
            (768, 12, 16, 224) => "ViT-B/16",
            (1024, 24, 14, 224) => "ViT-L/14",
            (1024, 24, 14, 336) => "ViT-L/14@336px",
            _ => return None,
        },
        VisionTower::Siglip(_) | VisionTower::Eva(_) => return None,
    })
}

/// A reference to a model that works from any directory: an existing directory becomes its
/// absolute path; anything else (a hub id) is kept as given.
pub fn model_reference(spec: &str) -> String {
    let path = Path::new(spec);
    if path.is_dir() {
        if let Ok(abs) = std::fs::canonicalize(path) {
            return abs.display().to_string();
        }
    }
    spec.to_string()
}

/// Checks that the model `given` (with content fingerprint `fingerprint`) is the one the head
/// was trained on.
pub fn check_head_model(
    info: &HeadInfo,
    given: &str,
    fingerprint: &str,
) -> Result<(), ExperimentError> {
    match &info.model_fingerprint {
        None => Err(ExperimentError::NoFingerprint {
            given: given.to_string(),
        }),
        Some(f) if f == fingerprint => Ok(()),
        Some(f) => Err(ExperimentError::ModelMismatch {
            expected: info.model.clone(),
            expected_fingerprint: f.clone(),
            given: given.to_string(),
            found: fingerprint.to_string(),
        }),
    }
}

/// The text side of model `given` (resolved to `files`) for CoOp, refused unless it is the model
/// that made the features of `source`: CoOp's prompts are scored against those image features,
/// so another model's text tower would train prompts for the wrong embedding space. Its
/// frozen products run at the precision the features were made at.
pub fn prompt_model(
    files: &ModelFiles,
    given: &str,
    source: &RowSource,
) -> Result<PromptModel, ExperimentError> {
    let precision = Precision::of_fingerprint(&source.model);
    let name = model_reference(Precision::split(given).0);
    let model = PromptModel::load_at(files, &name, precision, &candle_core::Device::Cpu)
        .map_err(|e| ExperimentError::Coop(Box::new(e)))?;
    if model.fingerprint != source.model {
        return Err(ExperimentError::FeaturesModel {
            given: given.to_string(),
            found: model.fingerprint,
            expected: source.model_name.clone(),
            expected_fingerprint: source.model.clone(),
        });
    }
    Ok(model)
}
