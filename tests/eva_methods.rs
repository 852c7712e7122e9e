//! Few-shot methods on an EVA02-CLIP model's cached features, through the command line:
//! `extract` with tiny-eva02 (open_clip layout, timm `eva02_base_patch16_clip_224` tower, 32 px,
//! embedding width 16) on a generated image folder, then `fit` of zero-shot, linear probe,
//! CLIP-Adapter and Tip-Adapter.
//!
//! Zero-shot from the cache must score as `classify` scores with the model itself (softmax over
//! the classes). Tolerance: logits within 1e-5 relative to the largest, probabilities within
//! 1e-6 (the same prompt embeddings, cached as f32).

use crate::common::{cli_in, fixture, ok};
use crate::siglip_methods::{extract, fit, scores};

#[test]
fn methods_fit_on_eva02_features_and_zero_shot_scores_as_classify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dataset = extract(dir, "tiny-eva02");
    for (method, extra) in [
        ("zero-shot", &[][..]),
        ("linear-probe", &[][..]),
        ("clip-adapter", &["--epochs", "3"][..]),
        ("tip-adapter", &[][..]),
    ] {
        let doc = fit(dir, &dataset, method, extra);
        let acc = doc["test_accuracy"].as_f64().unwrap();
        println!("{method}: test accuracy {acc}");
        assert!((0.0..=100.0).contains(&acc), "{method}: {doc}");
        assert!(dir.join(format!("{method}.safetensors")).exists());
    }

    let images: Vec<String> = (0..3)
        .map(|c| dir.join(format!("data/class_{c}/img_00.png")))
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let image_args: Vec<&str> = images.iter().map(String::as_str).collect();
    let model = fixture("models/tiny-eva02");
    let classify = cli_in(
        dir,
        &[
            &[
                "classify",
                "--model",
                model.to_str().unwrap(),
                "--labels",
                "class 0,class 1,class 2",
                "--top-k",
                "3",
                "--json",
            ][..],
            &image_args,
        ]
        .concat(),
    );
    let want = scores(&serde_json::from_str(&ok(&classify)).unwrap());
    let predict = cli_in(
        dir,
        &[
            &[
                "predict",
                "--adapter",
                "zero-shot.safetensors",
                "--top-k",
                "3",
                "--json",
            ][..],
            &image_args,
        ]
        .concat(),
    );
    let got = scores(&serde_json::from_str(&ok(&predict)).unwrap());
    assert_eq!(got.len(), 3);
    let scale = want.iter().flatten().map(|p| p.2.abs()).fold(0.0, f64::max);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g.len(), 3);
        for (g, w) in g.iter().zip(w) {
            assert_eq!(g.0, w.0, "the ranking");
            assert!(
                (g.2 - w.2).abs() <= 1e-5 * scale,
                "logit {g:?} vs classify {w:?}"
            );
            assert!(
                (g.1 - w.1).abs() <= 1e-6,
                "probability {g:?} vs classify {w:?}"
            );
        }
        // A softmax over the three classes.
        let sum: f64 = g.iter().map(|p| p.1).sum();
        assert!((sum - 1.0).abs() < 1e-5, "{sum}");
    }
}
