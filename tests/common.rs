//! Helpers shared by the integration tests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

/// `tests/fixtures/<rel>`; a missing fixture fails the test that needs it.
pub fn fixture(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    assert!(
        p.exists(),
        "missing fixture {} (regenerate with scripts/fixtures/)",
        p.display()
    );
    p
}

pub fn load_expected(model: &str) -> HashMap<String, Tensor> {
    let path = fixture(&format!("models/{model}/expected.safetensors"));
    candle_core::safetensors::load(&path, &Device::Cpu).expect("reading expected outputs")
}

pub fn inputs(model: &str) -> serde_json::Value {
    let path = fixture(&format!("models/{model}/inputs.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// The image files listed in a model fixture's `inputs.json`, as paths.
pub fn input_images(model: &str) -> Vec<PathBuf> {
    let dir = fixture(&format!("models/{model}"));
    inputs(model)["images"]
        .as_array()
        .expect("inputs.json lists images")
        .iter()
        .map(|p| dir.join(p.as_str().expect("image path")))
        .collect()
}

/// Largest absolute difference; panics on a shape mismatch.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Asserts `max |a - b| <= tol` and prints the difference, so logs show the margin.
pub fn assert_close(what: &str, a: &Tensor, b: &Tensor, tol: f32) {
    let d = max_abs_diff(a, b);
    println!("{what}: max abs diff {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{what}: max abs diff {d} > {tol}");
}

/// Runs the `clip-adapter` binary with `env` set and the hub variables of this shell removed.
pub fn clip_adapter_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clip-adapter"));
    cmd.args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running clip-adapter")
}

pub fn clip_adapter(args: &[&str]) -> Output {
    clip_adapter_env(args, &[])
}

/// A success whose stdout is JSON.
pub fn stdout_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// A failure: non-zero exit, no panic, and a message mentioning every `needle`.
pub fn assert_fails_with(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "should fail; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!stderr.contains("panicked"), "panicked: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks `{n}`: {stderr}");
    }
}

/// Runs the command quietly in `dir`, offline.
pub fn cli_in(dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
        .args(args)
        .arg("--quiet")
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("running clip-adapter")
}

/// The standard output of a command that must have succeeded.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Extracts 2-shot features (seed 1) of the image folder `dir/data` with tiny-clip into
/// `dir/cache`; returns the dataset's name, as the cache names it.
pub fn extract_two_shots(dir: &std::path::Path) -> String {
    let doc = extract_two_shots_with(dir, &[]);
    let first = std::path::PathBuf::from(doc["sets"][0]["path"].as_str().unwrap());
    first
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// `predict --json` with the head `head` (in `dir`) on the test images of
/// [`extract_two_shots`]' draw of `dataset` (features of `model` when the cache holds several):
/// its accuracy in percent (`class_<c>` holds label c), which a `fit` row with that head reports
/// as its test accuracy, the images and the document.
pub fn predict_test_images(
    dir: &std::path::Path,
    (dataset, model): (&str, Option<&str>),
    head: &str,
) -> (f64, Vec<String>, serde_json::Value) {
    use clip_adapter::features::task::{draw_images, CacheQuery, Shots};
    let q = CacheQuery {
        model: model.map(str::to_string),
        ..CacheQuery::new(dir.join("cache"), dataset, Shots::K(2), 1)
    };
    let images = draw_images(&q).unwrap();
    let paths: Vec<String> = (images.test.iter())
        .map(|p| p.display().to_string())
        .collect();
    let mut args = vec!["predict", "--adapter", head, "--json"];
    args.extend(paths.iter().map(String::as_str));
    let predicted: serde_json::Value = serde_json::from_str(&ok(&cli_in(dir, &args))).unwrap();
    let correct = (predicted["results"].as_array().unwrap().iter())
        .zip(&images.test)
        .filter(|(r, path)| {
            let class = path
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy();
            let label = class.trim_start_matches("class_").parse::<u64>().unwrap();
            r["predictions"][0]["index"].as_u64() == Some(label)
        })
        .count();
    let accuracy = 100.0 * correct as f64 / images.test.len() as f64;
    (accuracy, paths, predicted)
}

/// [`extract_two_shots`] with `extra` arguments; returns `extract --json`'s document.
pub fn extract_two_shots_with(dir: &std::path::Path, extra: &[&str]) -> serde_json::Value {
    let model = fixture("models/tiny-clip");
    let mut args = vec![
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
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&cli_in(dir, &args))).unwrap()
}

/// A JSON array of numbers as f32 (the fixtures' vectors).
pub fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

/// A JSON array of non-negative integers (the fixtures' labels and indices).
pub fn usizes(v: &serde_json::Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("index") as usize)
        .collect()
}

/// Checks the gradient of `loss` with respect to the first, middle and last entries of every
/// variable against central differences (step 1e-2; |analytic − numeric| ≤ 2e-3 + 2e-2 |numeric|),
/// restoring each entry after; returns how many entries it checked.
pub fn check_central_differences(
    vars: &[(String, candle_core::Var)],
    grads: &candle_core::backprop::GradStore,
    loss: impl Fn() -> f32,
) -> usize {
    let mut checked = 0;
    for (name, var) in vars {
        let g = grads
            .get(var.as_tensor())
            .expect("a gradient for every variable");
        let g = g.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let values = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for j in [0, values.len() / 2, values.len() - 1] {
            let at = |delta: f32| {
                let mut v = values.clone();
                v[j] += delta;
                var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                    .unwrap();
                loss()
            };
            let eps = 1e-2;
            let numeric = (at(eps) - at(-eps)) / (2.0 * eps);
            at(0.0);
            let diff = (numeric - g[j]).abs();
            println!(
                "{name}[{j}]: analytic {} numeric {numeric} (diff {diff:.1e})",
                g[j]
            );
            assert!(
                diff <= 2e-3 + 2e-2 * numeric.abs(),
                "{name}[{j}]: analytic {} numeric {numeric}",
                g[j]
            );
            checked += 1;
        }
    }
    checked
}
