//! Few-shot methods on a SigLIP model's cached features, through the command line: `extract` with
//! tiny-siglip (32 px, embedding width 32, logit scale 10, logit bias -2.5) on a generated image
//! folder, then `fit` of zero-shot, linear probe, CLIP-Adapter and Tip-Adapter.
//!
//! Zero-shot from the cache must score as `classify` scores with the model itself: logits
//! `scale · cos + bias`, sigmoid probabilities. Tolerance: logits within 1e-5 relative to the
//! largest, probabilities within 1e-6 (the same prompt embeddings, cached as f32).

use std::path::Path;

use serde_json::Value;

use crate::common::{cli_in, fixture, ok};

const LABELS: &str = "class 0,class 1,class 2";

/// The cache of a 3-class folder, 2 shots (seed 1), extracted with the fixture model `model`;
/// the dataset's name as the cache names it.
pub fn extract(dir: &Path, model: &str) -> String {
    crate::features::image_folder(&dir.join("data"), 3, 6);
    let model = fixture(&format!("models/{model}"));
    let doc: Value = serde_json::from_str(&ok(&cli_in(
        dir,
        &[
            "extract",
            "--model",
            model.to_str().unwrap(),
            "--folder",
            "data",
            "--shots",
            "2",
            "--seed",
            "1",
            "--cache",
            "cache",
            "--json",
        ],
    )))
    .unwrap();
    let first = Path::new(doc["sets"][0]["path"].as_str().unwrap()).to_path_buf();
    let name = first.parent().unwrap().file_name().unwrap();
    name.to_string_lossy().into_owned()
}

pub fn fit(dir: &Path, dataset: &str, method: &str, extra: &[&str]) -> Value {
    let save = format!("{method}.safetensors");
    let args = [
        &[
            "fit",
            "--method",
            method,
            "--dataset",
            dataset,
            "--shots",
            "2",
            "--seed",
            "1",
            "--cache",
            "cache",
            "--save",
            &save,
            "--json",
        ][..],
        extra,
    ]
    .concat();
    serde_json::from_str(&ok(&cli_in(dir, &args))).unwrap()
}

/// `(label, probability, logit)` of every prediction of every image, in output order.
pub fn scores(doc: &Value) -> Vec<Vec<(String, f64, f64)>> {
    doc["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (r["predictions"].as_array().unwrap().iter())
                .map(|p| {
                    let label = p["label"].as_str().unwrap().to_string();
                    (
                        label,
                        p["probability"].as_f64().unwrap(),
                        p["logit"].as_f64().unwrap(),
                    )
                })
                .collect()
        })
        .collect()
}

#[test]
fn methods_fit_on_siglip_features_and_zero_shot_scores_as_classify() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dataset = extract(dir, "tiny-siglip");
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
    let model = fixture("models/tiny-siglip");
    let classify = cli_in(
        dir,
        &[
            &[
                "classify",
                "--model",
                model.to_str().unwrap(),
                "--labels",
                LABELS,
            ][..],
            &["--top-k", "3", "--json"],
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
    let mut sum_of_probabilities = 0.0;
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
            // Sigmoid of the logit, not a softmax over the classes.
            assert!((g.1 - 1.0 / (1.0 + (-g.2).exp())).abs() <= 1e-6, "{g:?}");
        }
        sum_of_probabilities += g.iter().map(|p| p.1).sum::<f64>();
    }
    // Softmax rows would sum to 1 each.
    assert!(
        (sum_of_probabilities - 3.0).abs() > 1e-3,
        "{sum_of_probabilities}"
    );
}
