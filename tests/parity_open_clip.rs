//! The open_clip layout and the ModifiedResNet tower, against open_clip itself.
//!
//! Fixtures: tests/fixtures/models/{tiny-rn,tiny-openclip-vit}, written by
//! scripts/fixtures/open_clip_models.py (open_clip_torch 3.3.0, torch 2.15.0). Tolerance: 1e-4
//! absolute on unit-scaled outputs; the ResNet's raw embeddings are compared relative to their
//! largest magnitude (random ResNets grow large activations).

use candle_core::{Device, Tensor};
use clip_adapter::clip::{Clip, Layout, LoadOptions, ModelFiles};
use clip_adapter::encode::encode_image_files;

use crate::common::{assert_close, fixture, input_images, inputs, load_expected, max_abs_diff};

const TOL: f32 = 1e-4;

fn files(model: &str) -> ModelFiles {
    ModelFiles::in_dir(&fixture(&format!("models/{model}"))).unwrap()
}

fn ids(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

/// `max |a - b| / max |b| <= tol`.
fn assert_close_relative(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let scale = b
        .abs()
        .unwrap()
        .max_keepdim(0)
        .unwrap()
        .max_keepdim(1)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()[0];
    let d = max_abs_diff(a, b) / scale.max(1e-12);
    println!(
        "{what}: max abs diff / max |reference| = {d:.3e} (scale {scale:.3e}, tolerance {tol:.0e})"
    );
    assert!(d <= tol, "{what}: relative diff {d} > {tol}");
}

#[test]
fn layouts_are_detected_without_being_told() {
    assert_eq!(files("tiny-rn").layout, Layout::OpenClip);
    assert_eq!(files("tiny-openclip-vit").layout, Layout::OpenClip);
    assert_eq!(files("tiny-clip").layout, Layout::Transformers);
}

#[test]
fn resnet_matches_open_clip() {
    let clip = Clip::load(&files("tiny-rn"), &Device::Cpu).unwrap();
    let expected = load_expected("tiny-rn");
    let want = inputs("tiny-rn")["logit_scale"].as_f64().unwrap() as f32;
    assert!((clip.logit_scale() / want - 1.0).abs() < 1e-5);
    let image = clip.encode_image(&expected["pixel_values"]).unwrap();
    assert_close_relative(
        "tiny-rn image embeds",
        &image,
        &expected["image_embeds"],
        TOL,
    );
    let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    assert_close("tiny-rn text embeds", &text, &expected["text_embeds"], TOL);

    // From strings and files, through our tokenizer and preprocessing.
    let inputs = inputs("tiny-rn");
    let texts: Vec<String> = serde_json::from_value(inputs["texts"].clone()).unwrap();
    assert_close(
        "tiny-rn text from strings",
        &clip.encode_text(&texts).unwrap(),
        &expected["text_embeds"],
        TOL,
    );
    let paths = input_images("tiny-rn");
    let from_files = encode_image_files(&clip, &paths, 2, &mut |_, _| {}).unwrap();
    assert_close_relative(
        "tiny-rn image from files",
        &from_files,
        &expected["image_embeds"],
        TOL,
    );
}

#[test]
fn folded_and_unfolded_batch_norm_agree() {
    let expected = load_expected("tiny-rn");
    let folded = Clip::load_with(
        &files("tiny-rn"),
        &Device::Cpu,
        LoadOptions {
            fold_batch_norm: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let unfolded = Clip::load_with(
        &files("tiny-rn"),
        &Device::Cpu,
        LoadOptions {
            fold_batch_norm: false,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let a = folded.encode_image(&expected["pixel_values"]).unwrap();
    let b = unfolded.encode_image(&expected["pixel_values"]).unwrap();
    assert_close_relative("folded vs unfolded", &a, &b, 1e-5);
    assert_close_relative("unfolded vs open_clip", &b, &expected["image_embeds"], TOL);
}

#[test]
fn attention_pool_positions_are_resized_for_another_input_size() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("models/tiny-rn");
    for f in ["open_clip_model.safetensors", "open_clip_config.json"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let cfg_path = dir.path().join("open_clip_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["model_cfg"]["vision_cfg"]["image_size"] = 96.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let clip = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu).unwrap();
    assert_eq!(clip.image_size(), 96);
    let expected = load_expected("tiny-rn");
    let image = clip.encode_image(&expected["pixel_values_96"]).unwrap();
    assert_close_relative(
        "tiny-rn at 96 px",
        &image,
        &expected["image_embeds_96"],
        TOL,
    );
}

#[test]
fn open_clip_vit_matches_open_clip() {
    let clip = Clip::load(&files("tiny-openclip-vit"), &Device::Cpu).unwrap();
    let expected = load_expected("tiny-openclip-vit");
    let image = clip.encode_image(&expected["pixel_values"]).unwrap();
    assert_close(
        "tiny-openclip-vit image embeds",
        &image,
        &expected["image_embeds"],
        TOL,
    );
    let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    assert_close(
        "tiny-openclip-vit text embeds",
        &text,
        &expected["text_embeds"],
        TOL,
    );
}

#[test]
fn open_clip_checkpoint_errors_name_the_open_clip_key() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("models/tiny-rn");
    std::fs::copy(
        src.join("open_clip_config.json"),
        dir.path().join("open_clip_config.json"),
    )
    .unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("open_clip_model.safetensors"), &Device::Cpu)
            .unwrap();
    tensors.remove("visual.layer2.1.bn2.running_var").unwrap();
    tensors.insert(
        "transformer.resblocks.0.attn.in_proj_weight".into(),
        Tensor::zeros((47, 16), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let weights = dir.path().join("open_clip_model.safetensors");
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let msg = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("visual.layer2.1.bn2.running_var") && msg.contains("missing"),
        "{msg}"
    );

    tensors.insert(
        "visual.layer2.1.bn2.running_var".into(),
        Tensor::ones(16, candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let msg = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("transformer.resblocks.0.attn.in_proj_weight")
            && msg.contains("[47, 16]")
            && msg.contains("[48, 16]"),
        "{msg}"
    );
}

#[test]
fn unknown_model_cfg_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("models/tiny-rn");
    std::fs::copy(
        src.join("open_clip_model.safetensors"),
        dir.path().join("open_clip_model.safetensors"),
    )
    .unwrap();
    let cfg = r#"{"model_cfg": {"embed_dim": 24, "vision_cfg": {"timm_model_name": "convnext_base", "width": 8}, "text_cfg": {}}}"#;
    std::fs::write(dir.path().join("open_clip_config.json"), cfg).unwrap();
    let msg = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("open_clip_config.json") && msg.contains("vision_cfg.timm_model_name"),
        "{msg}"
    );
}
