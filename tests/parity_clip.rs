//! Encoder parity with `transformers.CLIPModel` on small random checkpoints.
//!
//! Fixtures: tests/fixtures/models/, written by scripts/fixtures/models.py (transformers 5.23.0,
//! torch 2.15.0; see MANIFEST.json). Tolerance: 1e-4 absolute on embeddings and logits.

use candle_core::Device;
use clip_adapter::clip::{Clip, ModelFiles};
use clip_adapter::encode::encode_image_files;
use clip_adapter::zero_shot::ZeroShotClassifier;

use crate::common::{assert_close, fixture, input_images, inputs, load_expected};

const TOL: f32 = 1e-4;

fn load(model: &str) -> Clip {
    let files = ModelFiles::in_dir(&fixture(&format!("models/{model}"))).unwrap();
    Clip::load(&files, &Device::Cpu).unwrap()
}

fn ids(expected: &std::collections::HashMap<String, candle_core::Tensor>) -> Vec<Vec<u32>> {
    expected["input_ids"]
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|row| row.into_iter().map(|x| x as u32).collect())
        .collect()
}

#[test]
fn logit_scale_is_read_from_the_weights() {
    for model in ["tiny-clip", "tiny-clip-bin"] {
        let clip = load(model);
        let want = inputs(model)["logit_scale"].as_f64().unwrap() as f32;
        assert!(
            (clip.logit_scale() / want - 1.0).abs() < 1e-5,
            "{model}: {}",
            clip.logit_scale()
        );
    }
}

#[test]
fn image_embeddings_match_transformers() {
    for model in ["tiny-clip", "tiny-clip-bin"] {
        let clip = load(model);
        let expected = load_expected(model);
        let ours = clip.encode_image(&expected["pixel_values"]).unwrap();
        assert_close(
            &format!("{model} image embeds"),
            &ours,
            &expected["image_embeds"],
            TOL,
        );
    }
}

#[test]
fn text_embeddings_match_transformers() {
    for model in ["tiny-clip", "tiny-clip-bin"] {
        let clip = load(model);
        let expected = load_expected(model);
        let ours = clip.encode_tokens(&ids(&expected)).unwrap();
        assert_close(
            &format!("{model} text embeds"),
            &ours,
            &expected["text_embeds"],
            TOL,
        );
    }
}

#[test]
fn end_to_end_from_texts_and_image_files() {
    let clip = load("tiny-clip");
    let expected = load_expected("tiny-clip");
    let inputs = inputs("tiny-clip");
    let texts: Vec<String> = serde_json::from_value(inputs["texts"].clone()).unwrap();
    let ours = clip.encode_text(&texts).unwrap();
    assert_close(
        "tiny-clip text from strings",
        &ours,
        &expected["text_embeds"],
        TOL,
    );

    let paths = input_images("tiny-clip");
    let ours = encode_image_files(&clip, &paths, 3, &mut |_, _| {}).unwrap();
    assert_close(
        "tiny-clip image from files",
        &ours,
        &expected["image_embeds"],
        TOL,
    );
}

#[test]
fn logits_and_prompt_ensembling_match_the_reference() {
    let clip = load("tiny-clip");
    let expected = load_expected("tiny-clip");
    let inputs = inputs("tiny-clip");
    let labels: Vec<String> = serde_json::from_value(inputs["labels"].clone()).unwrap();
    let templates: Vec<String> = serde_json::from_value(inputs["templates"].clone()).unwrap();
    let images = clip.encode_image(&expected["pixel_values"]).unwrap();

    // One template per text: CLIP's logits_per_image over the fixture's texts.
    let texts = clip.encode_tokens(&ids(&expected)).unwrap();
    let single = ZeroShotClassifier {
        labels: vec![String::new(); texts.dim(0).unwrap()],
        weights: clip_adapter::clip::model::transformer::l2_normalize(&texts).unwrap(),
        mean: texts.clone(),
        logit_scale: clip.logit_scale(),
        logit_bias: None,
    };
    let logits = single.logits(&images).unwrap();
    assert_close(
        "logits_per_image",
        &logits,
        &expected["logits_per_image"],
        TOL * 10.0,
    );

    let ensemble = ZeroShotClassifier::build(&clip, &labels, &templates, &mut |_, _| {}).unwrap();
    let logits = ensemble.logits(&images).unwrap();
    assert_close(
        "ensembled zero-shot logits",
        &logits,
        &expected["zero_shot_logits"],
        TOL * 10.0,
    );
}

#[test]
fn text_pooling_ignores_positions_after_the_end_token() {
    // Padding after the end token must not change the embedding (causal attention), which is
    // what lets the encoder cut sequences at the batch's last end token.
    let clip = load("tiny-clip");
    let short = clip.tokenizer().tokenize("a photo of a cat.", 77);
    let mut noisy = short.clone();
    let eot = short
        .iter()
        .position(|&t| t == clip.tokenizer().eot_id())
        .unwrap();
    for (i, t) in noisy.iter_mut().enumerate().skip(eot + 1) {
        *t = 100 + i as u32;
    }
    let a = clip.encode_tokens(&[short]).unwrap();
    let b = clip.encode_tokens(&[noisy]).unwrap();
    assert_close("padding invariance", &a, &b, 1e-6);
}

#[test]
fn every_openai_vit_config_shape_is_read() {
    use clip_adapter::clip::load::config::Pooling;
    use clip_adapter::clip::{ClipConfig, VisionTower};
    // (hub name, vision width, layers, heads, patch, image size, positions, text width, embed dim)
    let shapes = [
        ("clip-vit-base-patch32", 768, 12, 12, 32, 224, 50, 512, 512),
        ("clip-vit-base-patch16", 768, 12, 12, 16, 224, 197, 512, 512),
        (
            "clip-vit-large-patch14",
            1024,
            24,
            16,
            14,
            224,
            257,
            768,
            768,
        ),
        (
            "clip-vit-large-patch14-336",
            1024,
            24,
            16,
            14,
            336,
            577,
            768,
            768,
        ),
    ];
    for (name, width, layers, heads, patch, size, positions, text, embed) in shapes {
        let c = ClipConfig::from_hf_file(&fixture(&format!("configs/{name}.json"))).unwrap();
        let VisionTower::Vit(v) = &c.vision else {
            panic!("{name}: not a ViT")
        };
        assert_eq!(
            (
                v.width,
                v.layers,
                v.heads,
                v.patch_size,
                v.image_size,
                v.num_positions()
            ),
            (width, layers, heads, patch, size, positions),
            "{name}"
        );
        assert_eq!(
            (
                c.text.width,
                c.text.context_length,
                c.text.vocab_size,
                c.embed_dim
            ),
            (text, 77, 49408, embed),
            "{name}"
        );
        assert_eq!(
            c.text.pooling,
            Pooling::Argmax,
            "{name}: legacy eos_token_id 2 pools at the argmax"
        );
        assert_eq!(
            c.text.activation,
            clip_adapter::clip::Activation::QuickGelu,
            "{name}"
        );
    }
}

#[test]
fn an_empty_image_batch_encodes_to_no_rows() {
    // The image tower runs its last layer for the pooled rows alone; with no image there are
    // none, and the result is an empty matrix of the embedding's width.
    let clip = load("tiny-clip");
    let expected = load_expected("tiny-clip");
    let pixels = expected["pixel_values"].narrow(0, 0, 0).unwrap();
    let images = clip.encode_image(&pixels).unwrap();
    let dim = expected["image_embeds"].dim(1).unwrap();
    assert_eq!(images.dims(), &[0, dim]);
}
