//! SigLIP 2 (fixed resolution): a `SiglipModel` with Gemma's byte-fallback BPE tokenizer, against
//! `transformers` (`SiglipModel`, `GemmaTokenizer` via `AutoTokenizer`) and open_clip
//! (`ViT-B-16-SigLIP2`'s architecture, `HFTokenizer` with `clean='canonicalize'`), on small random
//! checkpoints with a freshly trained Gemma-style tokenizer.
//!
//! Fixtures: tests/fixtures/models/tiny-siglip2/, tests/fixtures/models/tiny-siglip2-openclip/ and
//! tests/fixtures/tokenizer/siglip2_corpus.json, written by scripts/fixtures/siglip2.py
//! (transformers 5.23.0, tokenizers 0.23.3, open_clip_torch 3.3.0, timm 1.0.31, torch 2.15.0; see
//! inputs.json). Tolerance: embeddings and logits within 1e-5 relative to the largest reference
//! magnitude; sigmoid probabilities within 1e-5 absolute; token ids exact.

use candle_core::Device;
use clip_adapter::clip::model::transformer::l2_normalize;
use clip_adapter::clip::{Clip, Layout, ModelFiles};
use clip_adapter::encode::encode_image_files;
use clip_adapter::tokenizer::gemma::OpenClipClean;
use clip_adapter::tokenizer::Tokenizer;
use clip_adapter::zero_shot::{Scores, ZeroShotClassifier};

use crate::common::{fixture, input_images, inputs, load_expected, max_abs_diff};
use crate::parity_siglip_open_clip::{assert_rel, ids};

const MODEL: &str = "tiny-siglip2";
const OPEN_CLIP: &str = "tiny-siglip2-openclip";
const CONTEXT: usize = 64;

fn files(model: &str) -> ModelFiles {
    ModelFiles::in_dir(&fixture(&format!("models/{model}"))).unwrap()
}

fn load(model: &str) -> Clip {
    Clip::load(&files(model), &Device::Cpu).unwrap()
}

fn corpus() -> Vec<serde_json::Value> {
    serde_json::from_str(
        &std::fs::read_to_string(fixture("tokenizer/siglip2_corpus.json")).unwrap(),
    )
    .unwrap()
}

/// Every corpus string through `tokenizer` against the reference's ids in `key`.
fn check_corpus(tokenizer: &Tokenizer, key: &str) {
    let corpus = corpus();
    assert!(corpus.len() >= 200, "only {} strings", corpus.len());
    let mut failures = Vec::new();
    for case in &corpus {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(case[key].clone()).unwrap();
        let got = tokenizer.tokenize(text, CONTEXT);
        if got != want {
            failures.push(format!("{text:?}:\n  got  {got:?}\n  want {want:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ from {key}:\n{}",
        failures.len(),
        corpus.len(),
        failures[..failures.len().min(5)].join("\n")
    );
}

#[test]
fn siglip2_token_ids_match_transformers_gemma_tokenizer() {
    let tokenizer = Tokenizer::from_model_dir(&fixture(&format!("models/{MODEL}")))
        .unwrap()
        .unwrap();
    let gemma = tokenizer
        .gemma()
        .expect("a byte-fallback BPE tokenizer.json is Gemma's");
    assert_eq!(gemma.open_clip_clean(), None);
    assert_eq!((tokenizer.eot_id(), tokenizer.pad_id()), (1, 0));
    assert_eq!(tokenizer.sot_id(), None);
    check_corpus(&tokenizer, "transformers");
    // The model's own tokenizer is that one.
    check_corpus(load(MODEL).tokenizer(), "transformers");
}

#[test]
fn siglip2_token_ids_match_open_clip_hf_tokenizer() {
    let clip = load(OPEN_CLIP);
    let gemma = clip.tokenizer().gemma().expect("Gemma's tokenizer");
    assert_eq!(gemma.open_clip_clean(), Some(OpenClipClean::Canonicalize));
    check_corpus(clip.tokenizer(), "open_clip");
}

#[test]
fn siglip2_byte_fallback_and_decoding() {
    let tokenizer = load(MODEL).tokenizer().clone();
    // `€` is outside the fixture's alphabet: its three UTF-8 bytes, ids 5 + byte.
    let ids = tokenizer.encode("€");
    assert!(ids.ends_with(&[5 + 0xE2, 5 + 0x82, 5 + 0xAC]), "{ids:?}");
    assert_eq!(tokenizer.decode(&ids).trim_start(), "€");
    let row = tokenizer.tokenize("a photo of a cat.", CONTEXT);
    assert_eq!(
        tokenizer.decode(&row[..row.iter().position(|&i| i == 1).unwrap()]),
        "a photo of a cat."
    );
    // Long text keeps `<eos>` last, before any padding.
    let row = tokenizer.tokenize(&"word ".repeat(100), CONTEXT);
    assert_eq!((row.len(), row[CONTEXT - 1]), (CONTEXT, 1));
}

#[test]
fn siglip2_config_scale_and_bias_are_read() {
    for model in [MODEL, OPEN_CLIP] {
        let clip = load(model);
        let want = inputs(model);
        assert!(clip.config().is_siglip(), "{model}");
        assert_eq!(clip.config().text.context_length, CONTEXT);
        let scale = want["logit_scale"].as_f64().unwrap() as f32;
        let bias = want["logit_bias"].as_f64().unwrap() as f32;
        assert!((clip.logit_scale() / scale - 1.0).abs() < 1e-6, "{model}");
        assert!((clip.logit_bias().unwrap() - bias).abs() < 1e-6, "{model}");
        let p = clip.preprocess();
        assert!(p.squash);
        assert_eq!((p.mean, p.std, p.size), ([0.5; 3], [0.5; 3], 32));
    }
    assert_eq!(files(OPEN_CLIP).layout, Layout::OpenClipTimm);
    assert_eq!(files(MODEL).layout, Layout::Transformers);
}

#[test]
fn siglip2_embeddings_match_transformers_and_open_clip() {
    for model in [MODEL, OPEN_CLIP] {
        let clip = load(model);
        let expected = load_expected(model);
        let image = clip.encode_image(&expected["pixel_values"]).unwrap();
        assert_rel(
            &format!("{model} image embeds"),
            &image,
            &expected["image_embeds"],
        );
        let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
        assert_rel(
            &format!("{model} text embeds"),
            &text,
            &expected["text_embeds"],
        );
        let texts: Vec<String> = serde_json::from_value(inputs(model)["texts"].clone()).unwrap();
        let text = clip.encode_text(&texts).unwrap();
        assert_rel(
            &format!("{model} text embeds from strings"),
            &text,
            &expected["text_embeds"],
        );
        let image = encode_image_files(&clip, &input_images(model), 2, &mut |_, _| {}).unwrap();
        assert_rel(
            &format!("{model} image embeds from files"),
            &image,
            &expected["image_embeds"],
        );
    }
}

#[test]
fn siglip2_sigmoid_scores_match_the_references() {
    for model in [MODEL, OPEN_CLIP] {
        let clip = load(model);
        let expected = load_expected(model);
        let inputs = inputs(model);
        let images = clip.encode_image(&expected["pixel_values"]).unwrap();
        if let Some(want) = expected.get("logits_per_image") {
            let texts = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
            let single = ZeroShotClassifier {
                labels: vec![String::new(); texts.dim(0).unwrap()],
                weights: l2_normalize(&texts).unwrap(),
                mean: texts.clone(),
                logit_scale: clip.logit_scale(),
                logit_bias: clip.logit_bias(),
            };
            assert_rel("logits_per_image", &single.logits(&images).unwrap(), want);
        }
        let labels: Vec<String> = serde_json::from_value(inputs["labels"].clone()).unwrap();
        let templates: Vec<String> = serde_json::from_value(inputs["templates"].clone()).unwrap();
        let classifier =
            ZeroShotClassifier::build(&clip, &labels, &templates, &mut |_, _| {}).unwrap();
        assert_eq!(classifier.scores(), Scores::Sigmoid);
        let logits = classifier.logits(&images).unwrap();
        assert_rel(
            &format!("{model} zero-shot logits"),
            &logits,
            &expected["zero_shot_logits"],
        );
        let probs = classifier.probabilities(&images).unwrap();
        let d = max_abs_diff(&probs, &expected["zero_shot_probs"]);
        println!("{model} zero-shot sigmoid probabilities: max abs diff {d:.3e}");
        assert!(d <= 1e-5);
    }
}

fn copy_dir(model: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(&format!("models/{model}"))).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    dir
}

fn edit_json(path: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, v.to_string()).unwrap();
}

/// transformers' `Siglip2Model` (SigLIP 2 NaFlex) is refused, naming what it is and what is
/// supported.
#[test]
fn siglip2_naflex_is_refused_by_name() {
    let dir = copy_dir(MODEL);
    edit_json(&dir.path().join("config.json"), |c| {
        c["model_type"] = "siglip2".into();
        c["architectures"] = serde_json::json!(["Siglip2Model"]);
    });
    let msg = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    for needle in [
        "`siglip2`",
        "Siglip2Model",
        "NaFlex",
        "`siglip`",
        "SiglipModel",
    ] {
        assert!(msg.contains(needle), "{needle} not in {msg}");
    }
}

/// `tokenizer_config.json`'s `add_bos_token` / `add_eos_token` and `padding_side` are
/// transformers' (an explicit flag rebuilds the post-processor).
#[test]
fn siglip2_tokenizer_config_flags_apply() {
    let dir = copy_dir(MODEL);
    let cfg = dir.path().join("tokenizer_config.json");
    let row = |dir: &std::path::Path| {
        Tokenizer::from_model_dir(dir)
            .unwrap()
            .unwrap()
            .tokenize("cat", 8)
    };
    let base = row(dir.path());
    let n = base.iter().position(|&i| i == 1).unwrap();
    assert!(base[n + 1..].iter().all(|&i| i == 0), "{base:?}");
    edit_json(&cfg, |c| {
        c["add_bos_token"] = true.into();
        c["add_eos_token"] = false.into();
        c["padding_side"] = "left".into();
    });
    let flipped = row(dir.path());
    let mut want = vec![0; 8 - n - 1];
    want.push(2);
    want.extend(&base[..n]);
    assert_eq!(flipped, want);
    edit_json(&cfg, |c| c["padding_side"] = "middle".into());
    let err = Tokenizer::from_model_dir(dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("padding_side") && err.contains("middle"),
        "{err}"
    );
}

/// A Gemma tokenizer beside a CLIP model is not SigLIP 2: refused.
#[test]
fn siglip2_tokenizer_beside_a_clip_model_is_refused() {
    let dir = copy_dir("tiny-clip");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        let _ = std::fs::remove_file(dir.path().join(f));
        std::fs::copy(fixture(&format!("models/{MODEL}/{f}")), dir.path().join(f)).unwrap();
    }
    for f in ["vocab.json", "merges.txt"] {
        let _ = std::fs::remove_file(dir.path().join(f));
    }
    let msg = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .expect("must fail")
        .to_string();
    assert!(msg.contains("Gemma") && msg.contains("not SigLIP"), "{msg}");
}
