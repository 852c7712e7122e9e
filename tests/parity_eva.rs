//! EVA02-CLIP in open_clip's layout (`EVA02-B-16`'s architecture: timm's
//! `eva02_base_patch16_clip_224` tower in a `CustomTextCLIP` with CLIP's text tower and OpenAI's
//! vocabulary), against open_clip itself, on a small random checkpoint.
//!
//! Fixture: tests/fixtures/models/tiny-eva02, written by scripts/fixtures/open_clip_timm.py
//! (open_clip_torch 3.3.0, timm 1.0.31, torch 2.15.0; see inputs.json): width 96, 12 heads of 8
//! channels (two rotary frequencies per axis), 2 blocks, 8-pixel patches on 32-pixel images (a
//! 4 x 4 grid rescaled onto the (16, 16) rotary reference grid). Tolerance: embeddings, features
//! and logits within 1e-5 relative to the largest reference magnitude; softmax probabilities
//! within 1e-6 absolute; the rotary table within 1e-6 absolute.

use candle_core::{Device, Tensor};
use clip_adapter::clip::{Clip, Layout, ModelFiles, VisionTower};
use clip_adapter::encode::encode_image_files;
use clip_adapter::zero_shot::{Scores, ZeroShotClassifier};

use crate::common::{fixture, input_images, inputs, load_expected, max_abs_diff};
use crate::parity_siglip_open_clip::{assert_rel, ids};

const MODEL: &str = "tiny-eva02";

fn files() -> ModelFiles {
    ModelFiles::in_dir(&fixture(&format!("models/{MODEL}"))).unwrap()
}

fn load() -> Clip {
    Clip::load(&files(), &Device::Cpu).unwrap()
}

#[test]
fn eva02_config_comes_from_the_name_and_the_tensors() {
    assert_eq!(files().layout, Layout::OpenClipTimm);
    let clip = load();
    let VisionTower::Eva(e) = &clip.config().vision else {
        panic!("{:?}", clip.config().vision)
    };
    assert_eq!(
        (
            e.width,
            e.heads,
            e.layers,
            e.intermediate_size,
            e.patch_size,
            e.image_size
        ),
        (96, 12, 2, 64, 8, 32)
    );
    assert_eq!(e.rope_reference_grid, Some([16, 16]));
    assert!(!clip.config().is_siglip());
    assert_eq!(clip.logit_bias(), None);
    let want = inputs(MODEL)["logit_scale"].as_f64().unwrap() as f32;
    assert!((clip.logit_scale() / want - 1.0).abs() < 1e-6);
    assert!(!clip.preprocess().squash);
}

#[test]
fn rotary_table_matches_timm() {
    let clip = load();
    let e = match &clip.config().vision {
        VisionTower::Eva(e) => e.clone(),
        other => panic!("{other:?}"),
    };
    let rope = clip_adapter::clip::model::eva::RotaryEmbedding::new(&e, &Device::Cpu).unwrap();
    let d = max_abs_diff(&rope.table().unwrap(), &load_expected(MODEL)["rope"]);
    println!("rotary sin/cos table: max abs diff {d:.3e}");
    assert!(d <= 1e-6);
}

#[test]
fn eva02_embeddings_match_open_clip() {
    let clip = load();
    let expected = load_expected(MODEL);
    let pixels = &expected["pixel_values"];
    let (features, image) = clip.encode_image_parts(pixels).unwrap();
    assert_rel(
        "image features (before the head)",
        &features,
        &expected["image_features"],
    );
    assert_rel("image embeds", &image, &expected["image_embeds"]);
    assert_eq!(
        max_abs_diff(&image, &clip.encode_image(pixels).unwrap()),
        0.0
    );
    let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    assert_rel("text embeds", &text, &expected["text_embeds"]);
    let texts: Vec<String> = serde_json::from_value(inputs(MODEL)["texts"].clone()).unwrap();
    assert_rel(
        "text embeds from strings",
        &clip.encode_text(&texts).unwrap(),
        &expected["text_embeds"],
    );
    let from_files = encode_image_files(&clip, &input_images(MODEL), 2, &mut |_, _| {}).unwrap();
    assert_rel(
        "image embeds from files",
        &from_files,
        &expected["image_embeds"],
    );
    // The last block runs for the class token alone: none in an empty batch.
    let empty = clip.encode_image(&pixels.narrow(0, 0, 0).unwrap()).unwrap();
    assert_eq!(empty.dims(), &[0, expected["image_embeds"].dim(1).unwrap()]);
}

#[test]
fn eva02_zero_shot_matches_open_clip() {
    let clip = load();
    let expected = load_expected(MODEL);
    let inputs = inputs(MODEL);
    let labels: Vec<String> = serde_json::from_value(inputs["labels"].clone()).unwrap();
    let templates: Vec<String> = serde_json::from_value(inputs["templates"].clone()).unwrap();
    let classifier = ZeroShotClassifier::build(&clip, &labels, &templates, &mut |_, _| {}).unwrap();
    assert_eq!(classifier.scores(), Scores::Softmax);
    let images = clip.encode_image(&expected["pixel_values"]).unwrap();
    let logits = classifier.logits(&images).unwrap();
    assert_rel("zero-shot logits", &logits, &expected["zero_shot_logits"]);
    let probs = classifier.probabilities(&images).unwrap();
    let d = max_abs_diff(&probs, &expected["zero_shot_probs"]);
    println!("zero-shot softmax probabilities: max abs diff {d:.3e}");
    assert!(d <= 1e-6);
    let want: Vec<u32> = expected["zero_shot_logits"]
        .argmax(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let got: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    assert_eq!(got, want);
}

/// A copy of the fixture with its weights edited, loaded; the error message.
fn load_edited(edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>)) -> String {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(&format!("models/{MODEL}"));
    std::fs::copy(
        src.join("open_clip_config.json"),
        dir.path().join("open_clip_config.json"),
    )
    .unwrap();
    let mut tensors =
        candle_core::safetensors::load(src.join("open_clip_model.safetensors"), &Device::Cpu)
            .unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.path().join("open_clip_model.safetensors"))
        .unwrap();
    Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string()
}

#[test]
fn eva02_checkpoint_errors_name_the_timm_key() {
    let msg = load_edited(|t| {
        t.remove("visual.trunk.blocks.1.attn.norm.weight").unwrap();
    });
    assert!(
        msg.contains("visual.trunk.blocks.1.attn.norm.weight") && msg.contains("missing"),
        "{msg}"
    );
    // A k bias is not part of EVA's attention: a checkpoint with one is not silently half-read.
    let msg = load_edited(|t| {
        let bias = t["visual.trunk.blocks.0.attn.q_proj.bias"].clone();
        t.insert("visual.trunk.blocks.0.attn.k_proj.bias".into(), bias);
    });
    assert!(msg.contains("k_proj.bias"), "{msg}");
    // Layer scale (`gamma_1`) belongs to other Eva variants.
    let msg = load_edited(|t| {
        let g = t["visual.trunk.norm.weight"].clone();
        t.insert("visual.trunk.blocks.0.gamma_1".into(), g);
    });
    assert!(msg.contains("gamma_1"), "{msg}");
}

#[test]
fn image_size_must_agree_with_the_tower() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(&format!("models/{MODEL}"));
    std::fs::copy(
        src.join("open_clip_model.safetensors"),
        dir.path().join("open_clip_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("open_clip_config.json")).unwrap())
            .unwrap();
    cfg["model_cfg"]["vision_cfg"]["image_size"] = 224.into();
    std::fs::write(dir.path().join("open_clip_config.json"), cfg.to_string()).unwrap();
    let msg = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("open_clip_config.json")
            && msg.contains("image_size is 224")
            && msg.contains("32 x 32"),
        "{msg}"
    );
}

/// CoOp's differentiable text tower reads EVA02's (CLIP's, under `text.`) and embeds the
/// reference token ids as open_clip does.
#[test]
fn coops_text_tower_reads_eva02s() {
    use clip_adapter::clip::train::prompt_text::PromptTextEncoder;
    let encoder = PromptTextEncoder::load(&files(), &Device::Cpu).unwrap();
    let expected = load_expected(MODEL);
    let rows = ids(&expected["input_ids"]);
    let (b, l) = (rows.len(), rows[0].len());
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    let x = encoder
        .token_embeddings(&flat)
        .unwrap()
        .reshape((b, l, encoder.config().width))
        .unwrap();
    // OpenAI's end token has the largest id: the argmax.
    let eot: Vec<usize> = rows
        .iter()
        .map(|r| r.iter().position(|&t| t == 49407).unwrap())
        .collect();
    let text = encoder.encode_embeddings(&x, &eot).unwrap();
    assert_rel("CoOp's text tower", &text, &expected["text_embeds"]);
}
