//! SigLIP parity with `transformers.SiglipModel` and `SiglipTokenizer` on a small random
//! checkpoint with a freshly trained SentencePiece model.
//!
//! Fixtures: tests/fixtures/models/tiny-siglip/ and tests/fixtures/tokenizer/siglip_corpus.json,
//! written by scripts/fixtures/siglip.py (transformers 5.23.0, torch 2.15.0, sentencepiece;
//! see inputs.json). Tolerance: embeddings and logits within 1e-5 relative to the largest
//! reference magnitude; probabilities within 1e-5 absolute; token ids exact.

use candle_core::{Device, Tensor};
use clip_adapter::clip::model::transformer::l2_normalize;
use clip_adapter::clip::{Clip, ModelFiles};
use clip_adapter::encode::encode_image_files;
use clip_adapter::tokenizer::Tokenizer;
use clip_adapter::zero_shot::{Scores, ZeroShotClassifier};

use crate::common::{fixture, input_images, inputs, load_expected, max_abs_diff};

const MODEL: &str = "tiny-siglip";
/// Relative tolerance: max |ours - reference| / max |reference|.
const REL: f32 = 1e-5;

fn load() -> Clip {
    let files = ModelFiles::in_dir(&fixture(&format!("models/{MODEL}"))).unwrap();
    Clip::load(&files, &Device::Cpu).unwrap()
}

fn assert_rel(what: &str, ours: &Tensor, reference: &Tensor) {
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

fn ids(t: &Tensor) -> Vec<Vec<u32>> {
    t.to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|r| r.into_iter().map(|x| x as u32).collect())
        .collect()
}

#[test]
fn token_ids_match_siglip_tokenizer_on_the_corpus() {
    let corpus: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(fixture("tokenizer/siglip_corpus.json")).unwrap(),
    )
    .unwrap();
    assert!(corpus.len() >= 200);
    let dir = fixture(&format!("models/{MODEL}"));
    // spiece.model (what SiglipTokenizer saves) and the tokenizer.json converted from it.
    let from_dir = Tokenizer::from_model_dir(&dir).unwrap().unwrap();
    let from_json = Tokenizer::from_tokenizer_json(&dir.join("tokenizer.json")).unwrap();
    assert!(from_dir.sentencepiece().is_some() && from_json.sentencepiece().is_some());
    let mut failures = Vec::new();
    for case in &corpus {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        for (what, t) in [("spiece.model", &from_dir), ("tokenizer.json", &from_json)] {
            let got = t.tokenize(text, want.len());
            if got != want {
                failures.push(format!("{what} {text:?}:\n  got  {got:?}\n  want {want:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} mismatched:\n{}",
        failures.len(),
        2 * corpus.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

#[test]
fn config_scale_and_bias_are_read() {
    let clip = load();
    let want = inputs(MODEL);
    assert!(clip.config().is_siglip());
    assert_eq!(clip.config().text.context_length, 64);
    let scale = want["logit_scale"].as_f64().unwrap() as f32;
    let bias = want["logit_bias"].as_f64().unwrap() as f32;
    assert!((clip.logit_scale() / scale - 1.0).abs() < 1e-6);
    assert_eq!(clip.logit_bias(), Some(bias));
    let p = clip.preprocess();
    assert!(p.squash);
    assert_eq!((p.mean, p.std, p.size), ([0.5; 3], [0.5; 3], 32));
}

#[test]
fn embeddings_match_transformers() {
    let clip = load();
    let expected = load_expected(MODEL);
    let image = clip.encode_image(&expected["pixel_values"]).unwrap();
    assert_rel("image embeds", &image, &expected["image_embeds"]);
    let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    assert_rel("text embeds", &text, &expected["text_embeds"]);
    // The pre-projection features of a SigLIP model are its embedding.
    let (pre, projected) = clip.encode_image_parts(&expected["pixel_values"]).unwrap();
    assert_eq!(max_abs_diff(&pre, &projected), 0.0);
}

#[test]
fn text_from_strings_matches_transformers() {
    let clip = load();
    let expected = load_expected(MODEL);
    let texts: Vec<String> = serde_json::from_value(inputs(MODEL)["texts"].clone()).unwrap();
    let text = clip.encode_text(&texts).unwrap();
    assert_rel("text embeds from strings", &text, &expected["text_embeds"]);
}

/// The processor squashes each image to 32 x 32 with Pillow's bicubic resize; blue_circle.png
/// (40 x 64) is a case where Pillow runs the vertical pass first (tests/resize_order.rs).
#[test]
fn image_files_match_transformers() {
    let clip = load();
    let expected = load_expected(MODEL);
    let image = encode_image_files(&clip, &input_images(MODEL), 3, &mut |_, _| {}).unwrap();
    assert_rel("image embeds from files", &image, &expected["image_embeds"]);
}

#[test]
fn sigmoid_scores_match_the_reference() {
    let clip = load();
    let expected = load_expected(MODEL);
    let inputs = inputs(MODEL);
    let images = clip.encode_image(&expected["pixel_values"]).unwrap();
    let texts = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    let single = ZeroShotClassifier {
        labels: vec![String::new(); texts.dim(0).unwrap()],
        weights: l2_normalize(&texts).unwrap(),
        mean: texts.clone(),
        logit_scale: clip.logit_scale(),
        logit_bias: clip.logit_bias(),
    };
    assert_eq!(single.scores(), Scores::Sigmoid);
    let logits = single.logits(&images).unwrap();
    assert_rel("logits_per_image", &logits, &expected["logits_per_image"]);
    let probs = single.probabilities(&images).unwrap();
    let d = max_abs_diff(&probs, &expected["probs_per_image"]);
    println!("sigmoid probabilities: max abs diff {d:.3e}");
    assert!(d <= 1e-5);

    let labels: Vec<String> = serde_json::from_value(inputs["labels"].clone()).unwrap();
    let templates: Vec<String> = serde_json::from_value(inputs["templates"].clone()).unwrap();
    let ensemble = ZeroShotClassifier::build(&clip, &labels, &templates, &mut |_, _| {}).unwrap();
    let logits = ensemble.logits(&images).unwrap();
    assert_rel("zero-shot logits", &logits, &expected["zero_shot_logits"]);
    let probs = ensemble.probabilities(&images).unwrap();
    let d = max_abs_diff(&probs, &expected["zero_shot_probs"]);
    println!("zero-shot sigmoid probabilities: max abs diff {d:.3e}");
    assert!(d <= 1e-5);
    // Ranked predictions carry the sigmoid probabilities, in the logits' order.
    let top = ensemble.predict(&images, labels.len()).unwrap();
    let probs = probs.to_vec2::<f32>().unwrap();
    for (row, preds) in top.iter().enumerate() {
        assert!(preds.windows(2).all(|w| w[0].logit >= w[1].logit));
        for p in preds {
            assert_eq!(p.probability, probs[row][p.index]);
        }
    }
}

#[test]
fn unsupported_model_types_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(
        &path,
        r#"{"model_type": "blip", "architectures": ["BlipModel"]}"#,
    )
    .unwrap();
    let err = clip_adapter::clip::ClipConfig::from_hf_file(&path)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`blip`") && err.contains("siglip") && err.contains("clip"),
        "{err}"
    );
}

/// `google/siglip-so400m-patch14-384`'s rule at a tiny size: 38-pixel images over 8-pixel
/// patches, so the patch convolution sees the top-left 32 × 32 pixels and drops 6 rows and
/// columns (the SO400M model drops 6 of 384). Fixture: tests/fixtures/models/
/// tiny-siglip-valid-patches/ (scripts/fixtures/siglip_valid_patches.py), whose tokenizer files
/// are tiny-siglip's, copied beside it here.
#[test]
fn an_image_size_past_the_last_whole_patch_drops_those_pixels_as_transformers_does() {
    const VALID: &str = "tiny-siglip-valid-patches";
    let dir = tempfile::tempdir().unwrap();
    for (from, names) in [
        (
            MODEL,
            &["spiece.model", "tokenizer.json", "tokenizer_config.json"][..],
        ),
        (
            VALID,
            &[
                "config.json",
                "model.safetensors",
                "preprocessor_config.json",
            ][..],
        ),
    ] {
        for name in names {
            let src = fixture(&format!("models/{from}/{name}"));
            std::fs::copy(&src, dir.path().join(name)).unwrap();
        }
    }
    let files = ModelFiles::in_dir(dir.path()).unwrap();
    let clip = Clip::load(&files, &Device::Cpu).unwrap();
    assert_eq!(clip.image_size(), 38);
    let expected = load_expected(VALID);
    let pixels = &expected["pixel_values"];
    assert_eq!(pixels.dims(), &[4, 3, 38, 38]);
    let image = clip.encode_image(pixels).unwrap();
    assert_rel(
        "image embeds (38 px, 8-px patches)",
        &image,
        &expected["image_embeds"],
    );
    let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    assert_rel("text embeds", &text, &expected["text_embeds"]);
    // From the files: resized to 38 × 38 by the processor's rule, then cut by the convolution.
    let images = input_images(VALID);
    let from_files = encode_image_files(&clip, &images, 4, &mut |_, _| {}).unwrap();
    assert_rel(
        "image embeds from files",
        &from_files,
        &expected["image_embeds"],
    );
}
