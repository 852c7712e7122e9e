//! CLIP-Adapter training against the PyTorch reference (`scripts/fixtures/methods.py`): same
//! features, same initial weights, same sample order; our per-epoch loss, final weights and test
//! accuracy must agree. Plus the head file round trip.

use clip_adapter::methods::clip_adapter::{
    self as ca, AdapterModel, AdapterOptions, AdapterParams, Bottleneck, Branch, Form, Ratio,
};
use clip_adapter::methods::head::{self, HeadInfo};
use clip_adapter::methods::{
    eval, fit, FewShotTask, Head, LabelledSet, Matrix, Method, TextClassifier,
};
use serde_json::Value;

fn fixture() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/methods/clip_adapter.json"
    );
    serde_json::from_str(
        &std::fs::read_to_string(path).expect("fixture: run scripts/fixtures/methods.py"),
    )
    .expect("fixture JSON")
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("index") as usize)
        .collect()
}

fn tensor(v: &Value) -> Matrix {
    let shape = usizes(&v["shape"]);
    let data = floats(&v["data"]);
    if shape.len() == 1 {
        return Matrix::from_vec(1, shape[0], data).unwrap();
    }
    Matrix::from_vec(shape[0], shape[1], data).unwrap()
}

fn task(f: &Value) -> FewShotTask {
    let (k, d) = (
        f["classes"].as_u64().unwrap() as usize,
        f["dim"].as_u64().unwrap() as usize,
    );
    let labels = usizes(&f["labels"]);
    let m = |v: &Value| {
        let data = floats(v);
        Matrix::from_vec(data.len() / d, d, data).unwrap()
    };
    FewShotTask {
        classnames: (0..k).map(|i| format!("class {i}")).collect(),
        train: LabelledSet {
            features: m(&f["train"]),
            labels: labels.clone(),
        },
        train_views: f["views"].as_array().unwrap().iter().map(m).collect(),
        val: LabelledSet {
            features: m(&f["test"]),
            labels: usizes(&f["test_labels"]),
        },
        test: LabelledSet {
            features: m(&f["test"]),
            labels: usizes(&f["test_labels"]),
        },
        text: TextClassifier {
            weights: m(&f["text"]),
            logit_scale: f["logit_scale"].as_f64().unwrap() as f32,
        },
    }
}

fn model_from(run: &Value, params: &str, task: &FewShotTask) -> AdapterModel {
    let form: Form = run["form"].as_str().unwrap().parse().unwrap();
    let p = &run[params];
    let bottleneck = |prefix: &str| {
        p.get(format!("{prefix}.fc.0.weight")).map(|w1| {
            Bottleneck::from_torch(
                &tensor(w1),
                &tensor(&p[format!("{prefix}.fc.2.weight")]),
                form,
            )
        })
    };
    let ratio = |name: &str| match p.get(name) {
        Some(v) => Ratio::Scalar(floats(&v["data"])),
        None => Ratio::Fixed(run[name].as_f64().unwrap() as f32),
    };
    AdapterModel {
        params: AdapterParams {
            visual: bottleneck("visual"),
            text: bottleneck("textual"),
            alpha: ratio("alpha"),
            beta: ratio("beta"),
        },
        classes: task.text.weights.clone(),
        logit_scale: task.text.logit_scale,
    }
}

/// Per-epoch loss within 1e-4 absolute + 1e-4 relative, final weights within 1e-4, test
/// accuracy equal to PyTorch's or within one test image (f32 rounding differs between GEMM
/// kernels, and a sample on the decision boundary may flip).
#[test]
fn clip_adapter_training_matches_pytorch() {
    let f = fixture();
    let task = task(&f);
    for run in f["runs"].as_array().unwrap() {
        let name = run["name"].as_str().unwrap();
        let branch: Branch = run["branch"].as_str().unwrap().parse().unwrap();
        let opts = AdapterOptions {
            branch,
            lr: f["lr"].as_f64().unwrap() as f32,
            batch_size: f["batch_size"].as_u64().unwrap() as usize,
            ..Default::default()
        };
        let epochs = f["epochs"].as_u64().unwrap() as usize;
        let orders: Vec<Vec<usize>> = run["orders"]
            .as_array()
            .unwrap()
            .iter()
            .map(usizes)
            .collect();
        let mut model = model_from(run, "init", &task);
        let mut order = |e: usize| orders[e].clone();
        let losses = ca::train(&task, &opts, epochs, &mut model, &mut order, &mut |_| {}).unwrap();
        let want = floats(&run["losses"]);
        assert_eq!(losses.len(), want.len(), "{name}: epochs");
        for (e, (ours, theirs)) in losses.iter().zip(&want).enumerate() {
            assert!(
                (ours - theirs).abs() <= 1e-4 + 1e-4 * theirs.abs(),
                "{name} epoch {e}: loss {ours} vs PyTorch {theirs}"
            );
        }
        let reference = model_from(run, "final", &task);
        let mut ours = model.params.clone();
        let mut theirs = reference.params.clone();
        assert_eq!(
            ours.params_mut().len(),
            theirs.params_mut().len(),
            "{name}: parameter count"
        );
        for (a, b) in ours.params_mut().iter().zip(theirs.params_mut().iter()) {
            let diff = a
                .iter()
                .zip(b.iter())
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(diff <= 1e-4, "{name}: final weights differ by {diff}");
        }
        let acc = eval::accuracy(&model.logits(&task.test.features), &task.test.labels);
        let want_acc = run["test_accuracy"].as_f64().unwrap() as f32;
        let one_image = 100.0 / task.test.labels.len() as f32;
        assert!(
            (acc - want_acc).abs() <= one_image + 1e-3,
            "{name}: accuracy {acc} vs PyTorch {want_acc}"
        );
    }
}

#[test]
fn every_method_fits_and_beats_chance_on_the_fixture() {
    let task = task(&fixture());
    use clip_adapter::methods::{
        gda::GdaOptions, linear_probe::LinearProbeOptions, tip_adapter::TipOptions,
    };
    let methods = [
        Method::ZeroShot,
        Method::ClipAdapter(AdapterOptions {
            epochs: Some(5),
            lr: 0.01,
            search: vec![0.2, 0.6],
            ..Default::default()
        }),
        Method::LinearProbe(LinearProbeOptions {
            steps: 2,
            ..Default::default()
        }),
        Method::TipAdapter(TipOptions {
            search_steps: (20, 5),
            ..Default::default()
        }),
        Method::TipAdapterF(TipOptions {
            search_steps: (20, 5),
            epochs: 3,
            ..Default::default()
        }),
        Method::Gda(GdaOptions::default()),
    ];
    for m in &methods {
        let fitted = fit(m, &task, &mut |_| {}).unwrap();
        let (_, test) = clip_adapter::methods::evaluate(&fitted.head, &task);
        assert!(test > 40.0, "{}: test accuracy {test}", m.name());
    }
}

#[test]
fn head_files_round_trip() {
    let task = task(&fixture());
    let dir = tempfile::tempdir().unwrap();
    let opts = AdapterOptions {
        epochs: Some(2),
        ratio: ca::RatioMode::HyperNetwork,
        branch: Branch::Both,
        ..Default::default()
    };
    let heads = [
        fit(&Method::ClipAdapter(opts), &task, &mut |_| {})
            .unwrap()
            .head,
        fit(
            &Method::ClipAdapter(AdapterOptions {
                epochs: Some(2),
                ..Default::default()
            }),
            &task,
            &mut |_| {},
        )
        .unwrap()
        .head,
        fit(&Method::Gda(Default::default()), &task, &mut |_| {})
            .unwrap()
            .head,
        fit(&Method::TipAdapter(Default::default()), &task, &mut |_| {})
            .unwrap()
            .head,
        fit(&Method::ZeroShot, &task, &mut |_| {}).unwrap().head,
    ];
    let info = HeadInfo {
        model: "tiny".into(),
        model_fingerprint: Some("0123456789abcdef".into()),
        classnames: task.classnames.clone(),
        templates: vec!["a photo of a {}.".into()],
        method: "clip-adapter".into(),
        options: "{}".into(),
    };
    for (i, h) in heads.iter().enumerate() {
        let path = dir.path().join(format!("head{i}.safetensors"));
        head::save(&path, h, &info).unwrap();
        let (back, back_info): (Head, HeadInfo) = head::load(&path).unwrap();
        assert_eq!(back_info, info);
        assert_eq!(
            back.logits(&task.test.features).data,
            h.logits(&task.test.features).data,
            "head {i}"
        );
    }
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a head").unwrap();
    let err = head::load(&bad).unwrap_err().to_string();
    assert!(
        err.contains("bad.safetensors") && err.contains("not a clip-adapter head"),
        "{err}"
    );
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
        .args(args)
        .output()
        .expect("running clip-adapter")
}

fn ok_json(out: &std::process::Output) -> Value {
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("stdout is JSON")
}

/// extract (tiny-clip) → fit every method → save → predict, through the command line.
#[test]
fn fit_run_and_predict_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    crate::features::image_folder(&data, 2, 6);
    let model = crate::common::fixture("models/tiny-clip")
        .display()
        .to_string();
    let cache = tmp.path().join("cache");
    let (cache_s, data_s) = (cache.to_str().unwrap(), data.to_str().unwrap());
    let doc = ok_json(&cli(&[
        "extract", "--model", &model, "--folder", data_s, "--shots", "2", "--views", "2",
        "--cache", cache_s, "--json",
    ]));
    let first = std::path::PathBuf::from(doc["sets"][0]["path"].as_str().unwrap());
    let dataset = first
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    let head_path = tmp.path().join("head.safetensors");
    for method in [
        "zero-shot",
        "linear-probe",
        "clip-adapter",
        "tip-adapter",
        "tip-adapter-f",
        "gda",
    ] {
        let mut args = vec![
            "fit",
            "--method",
            method,
            "--dataset",
            &dataset,
            "--shots",
            "2",
            "--cache",
            cache_s,
            "--json",
        ];
        // Options of methods they do not apply to are refused.
        if matches!(method, "clip-adapter" | "tip-adapter-f") {
            args.extend(["--epochs", "3"]);
        }
        if method == "clip-adapter" {
            args.extend([
                "--save",
                head_path.to_str().unwrap(),
                "--ratio",
                "hyper",
                "--branch",
                "both",
            ]);
        }
        let r = ok_json(&cli(&args));
        assert_eq!(r["method"], method);
        assert!(r["test_accuracy"].as_f64().unwrap() >= 0.0, "{method}: {r}");
    }
    let images: Vec<String> = std::fs::read_dir(
        data.join(
            std::fs::read_dir(&data)
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .file_name(),
        ),
    )
    .unwrap()
    .map(|e| e.unwrap().path().display().to_string())
    .take(2)
    .collect();
    let mut args = vec![
        "predict",
        "--adapter",
        head_path.to_str().unwrap(),
        "--model",
        &model,
        "--top-k",
        "2",
        "--json",
    ];
    args.extend(images.iter().map(String::as_str));
    let p = ok_json(&cli(&args));
    assert_eq!(p["results"].as_array().unwrap().len(), 2);
    let preds = p["results"][0]["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2);
    let total: f64 = preds
        .iter()
        .map(|x| x["probability"].as_f64().unwrap())
        .sum();
    assert!(total > 0.0 && total <= 1.0 + 1e-5);

    // A grid, then the same command again: nothing re-runs (resume), the table is written.
    let out = tmp.path().join("results");
    let grid = [
        "run",
        "--methods",
        "zero-shot,gda",
        "--datasets",
        &dataset,
        "--shots",
        "2",
        "--seeds",
        "1",
        "--cache",
        cache_s,
        "--out",
        out.to_str().unwrap(),
    ];
    assert!(cli(&grid).status.success());
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    let again = cli(&grid);
    assert!(again.status.success());
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv")).unwrap(),
        csv
    );
    assert!(std::fs::read_to_string(out.join("results.md"))
        .unwrap()
        .contains("| gda |"));

    // Missing features: a clear error naming the cache and the extract command, no panic.
    let miss = cli(&[
        "fit",
        "--method",
        "gda",
        "--dataset",
        &dataset,
        "--shots",
        "16",
        "--cache",
        cache_s,
    ]);
    let err = String::from_utf8_lossy(&miss.stderr);
    assert!(
        !miss.status.success() && err.contains("clip-adapter extract") && !err.contains("panicked"),
        "{err}"
    );
}
