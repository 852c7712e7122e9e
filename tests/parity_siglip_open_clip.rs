//! SigLIP in open_clip's layout (`ViT-B-16-SigLIP`'s architecture: timm's
//! `vit_base_patch16_siglip_224` tower in a `CustomTextCLIP`), against open_clip itself, on a
//! small random checkpoint whose tokenizer is tiny-siglip's SentencePiece model.
//!
//! Fixture: tests/fixtures/models/tiny-siglip-openclip, written by
//! scripts/fixtures/open_clip_timm.py (open_clip_torch 3.3.0, timm 1.0.31, torch 2.15.0; see
//! inputs.json). Tolerance: embeddings and logits within 1e-5 relative to the largest reference
//! magnitude; sigmoid probabilities within 1e-5 absolute; token ids exact.

use candle_core::{Device, Tensor};
use clip_adapter::clip::{Clip, Layout, ModelFiles};
use clip_adapter::encode::encode_image_files;
use clip_adapter::zero_shot::{Scores, ZeroShotClassifier};

use crate::common::{fixture, input_images, inputs, load_expected, max_abs_diff};

const MODEL: &str = "tiny-siglip-openclip";
/// Relative tolerance: max |ours - reference| / max |reference|.
pub const REL: f32 = 1e-5;

fn files() -> ModelFiles {
    ModelFiles::in_dir(&fixture(&format!("models/{MODEL}"))).unwrap()
}

fn load() -> Clip {
    Clip::load(&files(), &Device::Cpu).unwrap()
}

pub fn assert_rel(what: &str, ours: &Tensor, reference: &Tensor) {
    let scale = reference
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(ours, reference) / scale.max(f32::MIN_POSITIVE);
    println!("{what}: max relative diff {d:.3e} (tolerance {REL:.0e})");
    assert!(d <= REL, "{what}: relative diff {d} > {REL}");
}

pub fn ids(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

#[test]
fn the_family_is_read_from_the_files() {
    let files = files();
    assert_eq!(files.layout, Layout::OpenClipTimm);
    let clip = load();
    assert!(clip.config().is_siglip());
    assert_eq!(clip.config().text.context_length, 64);
    let want = inputs(MODEL);
    let scale = want["logit_scale"].as_f64().unwrap() as f32;
    let bias = want["logit_bias"].as_f64().unwrap() as f32;
    assert!((clip.logit_scale() / scale - 1.0).abs() < 1e-6);
    assert!((clip.logit_bias().unwrap() - bias).abs() < 1e-6);
    // preprocess_cfg: mean = std = 0.5, resize_mode squash.
    let p = clip.preprocess();
    assert!(p.squash);
    assert_eq!((p.mean, p.std, p.size), ([0.5; 3], [0.5; 3], 32));
}

#[test]
fn token_ids_match_open_clips_hf_tokenizer() {
    let clip = load();
    let expected = load_expected(MODEL);
    let texts: Vec<String> = serde_json::from_value(inputs(MODEL)["texts"].clone()).unwrap();
    let want = ids(&expected["input_ids"]);
    for (text, want) in texts.iter().zip(&want) {
        assert_eq!(&clip.tokenizer().tokenize(text, 64), want, "{text:?}");
    }
}

#[test]
fn embeddings_match_open_clip() {
    let clip = load();
    let expected = load_expected(MODEL);
    let image = clip.encode_image(&expected["pixel_values"]).unwrap();
    assert_rel("image embeds", &image, &expected["image_embeds"]);
    let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    assert_rel("text embeds", &text, &expected["text_embeds"]);
    let texts: Vec<String> = serde_json::from_value(inputs(MODEL)["texts"].clone()).unwrap();
    let text = clip.encode_text(&texts).unwrap();
    assert_rel("text embeds from strings", &text, &expected["text_embeds"]);
    // open_clip's image_transform(resize_mode='squash'): Pillow's bicubic straight to 32 x 32.
    let image = encode_image_files(&clip, &input_images(MODEL), 2, &mut |_, _| {}).unwrap();
    assert_rel("image embeds from files", &image, &expected["image_embeds"]);
}

#[test]
fn zero_shot_sigmoid_scores_match_open_clip() {
    let clip = load();
    let expected = load_expected(MODEL);
    let inputs = inputs(MODEL);
    let labels: Vec<String> = serde_json::from_value(inputs["labels"].clone()).unwrap();
    let templates: Vec<String> = serde_json::from_value(inputs["templates"].clone()).unwrap();
    let classifier = ZeroShotClassifier::build(&clip, &labels, &templates, &mut |_, _| {}).unwrap();
    assert_eq!(classifier.scores(), Scores::Sigmoid);
    let images = clip.encode_image(&expected["pixel_values"]).unwrap();
    let logits = classifier.logits(&images).unwrap();
    assert_rel("zero-shot logits", &logits, &expected["zero_shot_logits"]);
    let probs = classifier.probabilities(&images).unwrap();
    let d = max_abs_diff(&probs, &expected["zero_shot_probs"]);
    println!("zero-shot sigmoid probabilities: max abs diff {d:.3e}");
    assert!(d <= 1e-5);
}

/// open_clip's default cleaner (`whitespace`, no lower-casing or punctuation removal) is not
/// reproduced for SentencePiece: such a model is refused, naming the option.
#[test]
fn an_unsupported_tokenizer_cleaner_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture(&format!("models/{MODEL}"));
    for f in [
        "open_clip_model.safetensors",
        "spiece.model",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("open_clip_config.json")).unwrap())
            .unwrap();
    cfg["model_cfg"]["text_cfg"]["tokenizer_kwargs"]["clean"] = "whitespace".into();
    std::fs::write(dir.path().join("open_clip_config.json"), cfg.to_string()).unwrap();
    let msg = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("tokenizer_kwargs.clean") && msg.contains("whitespace"),
        "{msg}"
    );
}
