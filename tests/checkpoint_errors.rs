//! Bad checkpoints and configs give errors that name the file or tensor and what was expected.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use clip_adapter::clip::{Clip, ModelFiles};
use clip_adapter::Error;

use crate::common::fixture;

/// A copy of the tiny-clip model directory whose weights and config can be edited.
fn copy_model(dir: &Path) -> HashMap<String, Tensor> {
    let src = fixture("models/tiny-clip");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap()
}

fn load(dir: &Path) -> Result<Clip, Error> {
    Clip::load(&ModelFiles::in_dir(dir)?, &Device::Cpu)
}

fn save(dir: &Path, tensors: &HashMap<String, Tensor>) {
    candle_core::safetensors::save(tensors, dir.join("model.safetensors")).unwrap();
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

#[test]
fn the_fixture_loads() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    load(dir.path()).unwrap();
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = copy_model(dir.path());
    let key = "vision_model.encoder.layers.1.mlp.fc2.bias";
    tensors.remove(key).unwrap();
    save(dir.path(), &tensors);
    let err = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert!(
        matches!(err, Error::MissingTensor { ref name, .. } if name == key),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains(key) && msg.contains("model.safetensors") && msg.contains("[48]"),
        "{msg}"
    );
}

#[test]
fn misshaped_tensor_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = copy_model(dir.path());
    let key = "text_projection.weight";
    tensors.insert(
        key.into(),
        Tensor::zeros((24, 31), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    save(dir.path(), &tensors);
    let msg = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(
        msg.contains(key) && msg.contains("[24, 31]") && msg.contains("[24, 32]"),
        "{msg}"
    );
}

#[test]
fn config_with_fewer_layers_than_the_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    edit_config(dir.path(), |c| {
        c["vision_config"]["num_hidden_layers"] = 1.into()
    });
    let err = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"));
    assert!(matches!(err, Error::UnusedTensors { .. }), "{err}");
    assert!(
        err.to_string().contains("vision_model.encoder.layers.1"),
        "{err}"
    );
}

#[test]
fn config_with_other_widths_than_the_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    edit_config(dir.path(), |c| c["text_config"]["hidden_size"] = 64.into());
    let msg = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(
        msg.contains("text_model.") && msg.contains("expected [49408, 64]"),
        "{msg}"
    );
}

#[test]
fn unknown_architecture_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    edit_config(dir.path(), |c| c["model_type"] = "siglip2".into());
    let msg = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(
        msg.contains("config.json")
            && msg.contains("unsupported architecture")
            && msg.contains("`siglip2`")
            && msg.contains("`clip`"),
        "{msg}"
    );
    // A known model type with another type's architecture names what it supports.
    edit_config(dir.path(), |c| c["model_type"] = "siglip".into());
    let msg = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(
        msg.contains("`CLIPModel`") && msg.contains("SiglipModel"),
        "{msg}"
    );

    edit_config(dir.path(), |c| {
        c["model_type"] = "clip".into();
        c["text_config"]["hidden_act"] = "swish".into();
    });
    let msg = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(msg.contains("hidden_act") && msg.contains("swish"), "{msg}");
}

#[test]
fn empty_or_truncated_weights_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    let weights = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    let msg = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("not a valid safetensors"),
        "{msg}"
    );

    std::fs::write(&weights, b"").unwrap();
    let msg = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("empty"),
        "{msg}"
    );
}

#[test]
fn directory_without_config_or_weights_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let msg = ModelFiles::in_dir(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(msg.contains("no config.json"), "{msg}");
    std::fs::copy(
        fixture("models/tiny-clip/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let msg = ModelFiles::in_dir(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(
        msg.contains("model.safetensors") && msg.contains("pytorch_model.bin"),
        "{msg}"
    );
}

#[test]
fn malformed_config_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    copy_model(dir.path());
    std::fs::write(dir.path().join("config.json"), "{\"text_config\": ").unwrap();
    let msg = load(dir.path())
        .err()
        .unwrap_or_else(|| panic!("must fail"))
        .to_string();
    assert!(
        msg.contains("config.json") && msg.contains("invalid JSON"),
        "{msg}"
    );
}
