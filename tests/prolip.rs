//! ProLIP against its reference (`scripts/fixtures/prolip.py`: PyTorch in float64, written from
//! the paper and the authors' `methods/ProLIP.py`): the same pre-projection features, written
//! initial projection and view order; our f32 training must agree within the stated
//! tolerances, for a ModifiedResNet-like projection (with a frozen bias) and a ViT-like one.

use clip_adapter::methods::prolip::{
    self, Lambda, PreProjection, Projection, ProlipHead, ProlipOptions,
};
use clip_adapter::methods::{
    evaluate, fit, FewShotTask, LabelledSet, Matrix, Method, TextClassifier,
};
use serde_json::Value;

use crate::common::{self, floats, usizes};

fn n(v: &Value) -> usize {
    v.as_u64().expect("count") as usize
}

struct Case {
    f: Value,
    pre: PreProjection,
    labels: Vec<usize>,
    test_labels: Vec<usize>,
    text: TextClassifier,
}

fn cases() -> Vec<Case> {
    let path = common::fixture("methods/prolip.json");
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
    let cases = doc["cases"].as_array().expect("cases").clone();
    cases
        .into_iter()
        .map(|f| {
            let (k, w, e) = (n(&f["classes"]), n(&f["width"]), n(&f["embed"]));
            let m = |v: &Value, cols: usize| {
                let d = floats(v);
                Matrix::from_vec(d.len() / cols, cols, d).expect("matrix")
            };
            let views: Vec<Matrix> = f["views"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| m(v, w))
                .collect();
            let pre = PreProjection {
                projection: Projection {
                    weight: m(&f["weight0"], w),
                    bias: (!f["bias"].is_null()).then(|| floats(&f["bias"])),
                },
                train: views[0].clone(),
                train_views: views,
                val: Matrix::zeros(0, w),
                test: m(&f["test"], w),
            };
            let text = TextClassifier {
                weights: m(&f["text"], e),
                logit_scale: f["logit_scale"].as_f64().unwrap() as f32,
                logit_bias: None,
            };
            assert_eq!(text.weights.rows, k);
            Case {
                labels: usizes(&f["labels"]),
                test_labels: usizes(&f["test_labels"]),
                f,
                pre,
                text,
            }
        })
        .collect()
}

#[test]
fn training_equals_the_reference() {
    for c in cases() {
        let case = c.f["case"].as_str().unwrap().to_string();
        let opts = ProlipOptions {
            epochs: n(&c.f["epochs"]),
            ..Default::default()
        };
        let lr = c.f["lr"].as_f64().unwrap() as f32;
        let lambda = c.f["lambda"].as_f64().unwrap() as f32;
        assert_eq!(Lambda::InverseShots.value(n(&c.f["shots"])), lambda);
        let (head, losses) =
            prolip::train(&c.pre, &c.labels, &c.text, lr, lambda, &opts, &mut |_| {}).unwrap();
        // Per-epoch loss (CE + penalty, magnitude 1-20): 1e-4 + 1e-4 relative.
        let want = floats(&c.f["losses"]);
        for (e, (a, b)) in losses.iter().zip(&want).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 + 1e-4 * b.abs(),
                "{case} epoch {e}: loss {a}, reference {b}"
            );
        }
        // Final weights (magnitude ~0.3-1): 1e-4 absolute.
        let w = floats(&c.f["weight"]);
        let worst = (head.projection.weight.data.iter().zip(&w))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-4, "{case}: final weight differs by {worst}");
        // The frozen bias is untouched.
        assert_eq!(head.projection.bias, c.pre.projection.bias, "{case}");
        // Test logits (scale 50): 1e-3 absolute.
        let logits = head.logits(&c.pre.test);
        let want = floats(&c.f["test_logits"]);
        let worst = (logits.data.iter().zip(&want))
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst <= 1e-3, "{case}: test logits differ by {worst}");
    }
}

/// The same case through `fit` and `evaluate`: a task carrying its pre-projection features
/// trains and scores on them, and a task without them is refused with a clear error.
#[test]
fn fit_uses_the_pre_projection_features() {
    let c = cases().remove(0);
    let e = c.text.weights.cols;
    let project = |x: &Matrix| c.pre.projection.apply(x);
    let set = |x: &Matrix, labels: &[usize]| LabelledSet {
        features: project(x),
        labels: labels.to_vec(),
    };
    let mut task = FewShotTask {
        classnames: (0..c.text.weights.rows).map(|i| format!("c{i}")).collect(),
        train: set(&c.pre.train, &c.labels),
        train_views: c.pre.train_views.iter().map(project).collect(),
        val: LabelledSet {
            features: Matrix::zeros(0, e),
            labels: Vec::new(),
        },
        test: set(&c.pre.test, &c.test_labels),
        text: c.text.clone(),
        pre_projection: None,
        text_mean: None,
    };
    let opts = ProlipOptions {
        epochs: n(&c.f["epochs"]),
        lr: c.f["lr"].as_f64().unwrap() as f32,
        ..Default::default()
    };
    let err = fit(&Method::new(opts.clone()), &task, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("pre-projection"), "{err}");
    task.pre_projection = Some(Box::new(c.pre.clone()));
    let fitted = fit(&Method::new(opts), &task, &mut |_| {}).unwrap();
    // No validation set: the given learning rate, λ = 1/N.
    let chosen: Vec<String> = fitted
        .chosen
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert_eq!(
        chosen,
        [
            format!("lr={}", c.f["lr"]),
            format!("lambda={}", 1.0f32 / 3.0)
        ]
    );
    let Some(h) = fitted.head.downcast_ref::<ProlipHead>() else {
        panic!("not a ProLIP head")
    };
    let (val, test) = evaluate(&fitted.head, &task);
    assert!(val.is_nan());
    let logits = h.logits(&c.pre.test);
    let want = clip_adapter::methods::eval::accuracy(&logits, &c.test_labels);
    assert_eq!(test, want);
    // A head saved and read back scores the same.
    let info = clip_adapter::methods::head::HeadInfo {
        model: "m".into(),
        model_fingerprint: None,
        classnames: task.classnames.clone(),
        templates: vec!["a photo of a {}.".into()],
        method: "prolip".into(),
        options: "{}".into(),
    };
    let bytes = clip_adapter::methods::head::to_bytes(&fitted.head, &info);
    let (back, _) = clip_adapter::methods::head::from_bytes(&bytes).unwrap();
    assert_eq!(back.dim(), c.pre.projection.input_dim());
    assert_eq!(back.logits(&c.pre.test).data, logits.data);
}

/// `extract --pre-projection` on both fixture towers (tiny-clip: ViT, `visual_projection`
/// without bias; tiny-rn: ModifiedResNet, `attnpool.c_proj` with bias): the cached
/// pre-projection features, projected with the cached projection, give the cached embeddings;
/// a second extraction reuses every file; `fit --method prolip --save` then `predict` work on
/// them, and without them ProLIP is refused naming the flag.
#[test]
fn pre_projection_features_reproduce_the_embeddings_and_train_prolip() {
    use crate::common::{assert_fails_with, cli_in, fixture, ok};
    use clip_adapter::features::projection::read_projection;
    use clip_adapter::features::{FeatureFile, Output};

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::features::image_folder(&dir.join("data"), 2, 6);
    for m in ["tiny-clip", "tiny-rn"] {
        let model = fixture(&format!("models/{m}")).display().to_string();
        let cache = format!("cache-{m}");
        let extract = |extra: &[&str]| {
            let mut args = vec![
                "extract", "--model", &model, "--folder", "data", "--shots", "2", "--seed", "1",
                "--views", "2", "--cache", &cache, "--json",
            ];
            args.extend_from_slice(extra);
            serde_json::from_str::<serde_json::Value>(&ok(&cli_in(dir, &args))).unwrap()
        };
        // Without the flag first: ProLIP is refused, naming what to run.
        extract(&[]);
        let fit = |extra: &[&str]| {
            let mut args = vec![
                "fit",
                "--method",
                "prolip",
                "--dataset",
                "data",
                "--shots",
                "2",
                "--cache",
                &cache,
                "--epochs",
                "5",
                "--json",
            ];
            args.extend_from_slice(extra);
            cli_in(dir, &args)
        };
        assert_fails_with(&fit(&[]), &["pre-projection", "--pre-projection"]);

        let doc = extract(&["--pre-projection"]);
        let sets = doc["sets"].as_array().unwrap();
        // train eval + 2 views, val, test: each with its twin; the projected ones reused.
        assert_eq!(sets.len(), 10, "{doc}");
        let reused = |s: &serde_json::Value| s["reused"].as_bool().unwrap();
        for s in sets {
            let name = s["name"].as_str().unwrap();
            assert_eq!(reused(s), !name.contains(".pre-"), "{m}: {s}");
        }
        let again = extract(&["--pre-projection"]);
        assert!(
            again["sets"].as_array().unwrap().iter().all(reused),
            "{m}: {again}"
        );

        let data_dir = dir.join(&cache).join("data");
        let files: Vec<std::path::PathBuf> = std::fs::read_dir(&data_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let projection_file = files
            .iter()
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("projection.")
            })
            .expect("a projection file");
        let p = read_projection(projection_file).unwrap();
        assert_eq!(p.bias.is_some(), m == "tiny-rn", "{m}");
        // It is the checkpoint's tensor (f16 there), widened exactly.
        let (weights, name) = match m {
            "tiny-clip" => ("model.safetensors", "visual_projection"),
            _ => ("open_clip_model.safetensors", "visual.attnpool.c_proj"),
        };
        let ckpt = candle_core::safetensors::load(
            fixture(&format!("models/{m}/{weights}")),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let flat = |t: &candle_core::Tensor| -> Vec<f32> {
            (t.to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap())
            .to_vec1()
            .unwrap()
        };
        assert_eq!(p.weight, flat(&ckpt[&format!("{name}.weight")]), "{m}");
        if let Some(b) = &p.bias {
            assert_eq!(*b, flat(&ckpt[&format!("{name}.bias")]), "{m}");
        }
        let projection = Projection {
            weight: Matrix::from_vec(p.rows, p.cols, p.weight).unwrap(),
            bias: p.bias,
        };
        let mut twins = 0;
        for f in files
            .iter()
            .filter(|p| p.to_string_lossy().ends_with(".safetensors"))
        {
            let Ok(pre) = FeatureFile::read(f) else {
                continue;
            };
            if pre.meta.key.output != Output::PreProjection {
                continue;
            }
            let key = clip_adapter::features::SetKey {
                output: Output::Projected,
                ..pre.meta.key.clone()
            };
            let projected = FeatureFile::read(&data_dir.join(key.file_name())).unwrap();
            assert_eq!(pre.index, projected.index);
            assert_eq!(pre.dim, projection.input_dim());
            let z = projection.apply(&Matrix::from_vec(pre.rows(), pre.dim, pre.features).unwrap());
            let scale = projected.features.iter().fold(0f32, |a, v| a.max(v.abs()));
            let worst = (z.data.iter().zip(&projected.features))
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            // The same f32 product summed in another order: within 1e-5 of the largest value.
            assert!(
                worst <= 1e-5 * scale.max(1.0),
                "{m} {}: {worst} (scale {scale})",
                f.display()
            );
            twins += 1;
        }
        assert_eq!(twins, 5, "{m}");

        // `run` grids ProLIP beside the other methods; its rows are ordinary rows.
        let table = ok(&cli_in(
            dir,
            &[
                "run",
                "--methods",
                "prolip,zero-shot",
                "--datasets",
                "data",
                "--shots",
                "2",
                "--seeds",
                "1",
                "--cache",
                &cache,
                "--epochs",
                "3",
                "--validation",
                "none",
                "--out",
                &format!("results-{m}"),
            ],
        ));
        assert!(
            table.contains("| prolip (epochs=3) [no validation] |"),
            "{table}"
        );

        // Two shards merged give the same pre-projection files, byte for byte.
        let sharded = format!("sharded-{m}");
        for shard in ["0/2", "1/2"] {
            ok(&cli_in(
                dir,
                &[
                    "extract",
                    "--model",
                    &model,
                    "--folder",
                    "data",
                    "--shots",
                    "2",
                    "--seed",
                    "1",
                    "--views",
                    "2",
                    "--cache",
                    &sharded,
                    "--pre-projection",
                    "--shard",
                    shard,
                ],
            ));
        }
        ok(&cli_in(dir, &["merge", "--cache", &sharded]));
        let mut compared = 0;
        for f in &files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name.contains(".pre-") && !name.starts_with('.') {
                let merged = dir.join(&sharded).join("data").join(&name);
                assert_eq!(
                    std::fs::read(f).unwrap(),
                    std::fs::read(&merged).unwrap(),
                    "{name}"
                );
                compared += 1;
            }
        }
        assert_eq!(compared, 5, "{m}");

        let head = format!("{m}.prolip.safetensors");
        let fitted: serde_json::Value =
            serde_json::from_str(&ok(&fit(&["--save", &head]))).unwrap();
        // With validation, 4 learning rates × 5 epochs; the losses are the chosen one's.
        assert_eq!(
            fitted["epoch_losses"].as_array().unwrap().len(),
            5,
            "{fitted}"
        );
        assert_eq!(fitted["chosen_on_validation"]["lambda"], "0.5", "{fitted}");
        // Without: the authors' default rate, λ = 1/N, no validation accuracy.
        let none: serde_json::Value =
            serde_json::from_str(&ok(&fit(&["--validation", "none"]))).unwrap();
        assert_eq!(none["chosen_on_validation"]["lr"], "0.00001", "{none}");
        assert!(none["val_accuracy"].is_null(), "{none}");
        assert!(fitted["test_accuracy"].is_number(), "{fitted}");
        let image = dir
            .join("data/class_0")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let predicted: serde_json::Value = serde_json::from_str(&ok(&cli_in(
            dir,
            &[
                "predict",
                "--adapter",
                &head,
                "--json",
                &image.display().to_string(),
            ],
        )))
        .unwrap();
        assert_eq!(predicted["method"], "prolip", "{predicted}");
        assert_eq!(
            predicted["results"][0]["predictions"]
                .as_array()
                .unwrap()
                .len(),
            2,
            "{predicted}"
        );
    }
}
