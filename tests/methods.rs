//! CLIP-Adapter training against the PyTorch reference (`scripts/fixtures/methods.py`): same
//! features, same initial weights, same sample order; our per-epoch loss, final weights and test
//! accuracy must agree. Plus the head file round trip.

use clip_adapter::methods::clip_adapter::{
    self as ca, AdapterModel, AdapterOptions, AdapterParams, Bottleneck, Branch, Form, Ratio,
};
use clip_adapter::methods::head::{self, HeadInfo};
use clip_adapter::methods::zero_shot::ZeroShotMethod;
use clip_adapter::methods::{
    eval, fit, FewShotTask, Head, LabelledSet, Matrix, Method, TextClassifier,
};
use serde_json::Value;

use crate::common::{floats, usizes};

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
        pre_projection: None,
        text_mean: None,
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
            logit_bias: None,
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
        fit(&Method::new(opts), &task, &mut |_| {}).unwrap().head,
        fit(
            &Method::new(AdapterOptions {
                epochs: Some(2),
                ..Default::default()
            }),
            &task,
            &mut |_| {},
        )
        .unwrap()
        .head,
        fit(&Method::new(GdaOptions::default()), &task, &mut |_| {})
            .unwrap()
            .head,
        fit(
            &Method::new(TipAdapter(Default::default())),
            &task,
            &mut |_| {},
        )
        .unwrap()
        .head,
        fit(&Method::new(ZeroShotMethod), &task, &mut |_| {})
            .unwrap()
            .head,
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

// ------------------------------------------------------------------------------------------
// The baselines against their references (`scripts/fixtures/baselines.py`) on one synthetic
// task: scikit-learn for the linear probe, the authors' formulas in PyTorch (float64) for
// Tip-Adapter(-F) and GDA. Every feature in the fixture is a float32 value, so both sides start
// from the same numbers; the references compute in float64, we in float32, and each tolerance
// below says which float32 error it allows for.
//
// Decisions taken on an argmax (accuracies, the searched C / α / β, the best epoch) are compared
// exactly: the script refuses to write a fixture in which a validation sample whose top-two
// logits are closer than 1e-3 (1e-4 of the logit spread for the linear probe) could change a
// decision, and records such samples as "fragile"; a count may differ by at most its fragile
// samples.

use clip_adapter::methods::gda::{GdaHead, GdaOptions};
use clip_adapter::methods::lbfgs::LbfgsOptions;
use clip_adapter::methods::linear_probe::{self, LinearProbeOptions};
use clip_adapter::methods::tip_adapter::{self, TipAdapter, TipHead, TipOptions};

fn methods_fixture(name: &str) -> Value {
    let path = crate::common::fixture(&format!("methods/{name}"));
    serde_json::from_str(&std::fs::read_to_string(&path).expect("readable fixture"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The task of `baseline_task.json`: validation and test sets are the fixture's own.
fn baseline_task() -> FewShotTask {
    let f = methods_fixture("baseline_task.json");
    let (k, d) = (
        f["classes"].as_u64().unwrap() as usize,
        f["dim"].as_u64().unwrap() as usize,
    );
    let m = |v: &Value| {
        let data = floats(v);
        Matrix::from_vec(data.len() / d, d, data).unwrap()
    };
    FewShotTask {
        pre_projection: None,
        text_mean: None,
        classnames: (0..k).map(|i| format!("class {i}")).collect(),
        train: LabelledSet {
            features: m(&f["train"]),
            labels: usizes(&f["labels"]),
        },
        train_views: f["views"].as_array().unwrap().iter().map(m).collect(),
        val: LabelledSet {
            features: m(&f["val"]),
            labels: usizes(&f["val_labels"]),
        },
        test: LabelledSet {
            features: m(&f["test"]),
            labels: usizes(&f["test_labels"]),
        },
        text: TextClassifier {
            weights: m(&f["text"]),
            logit_scale: f["logit_scale"].as_f64().unwrap() as f32,
            logit_bias: None,
        },
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths");
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().fold(0f32, |m, x| m.max(x.abs()))
}

fn correct(logits: &Matrix, labels: &[usize]) -> usize {
    (eval::accuracy(logits, labels) * labels.len() as f32 / 100.0).round() as usize
}

/// `(1/n) Σ CE + ‖W‖²/(2Cn)` in f64 on the features normalised in f64 (as scikit-learn saw
/// them): scikit-learn's objective scaled by 1/n for K ≥ 3; with K = 2 the reference's binomial
/// objective of `w = w₁ − w₀`.
fn lr_objective(head: &linear_probe::LinearHead, x: &Matrix, y: &[usize], c: f64) -> f64 {
    let (n, k, d) = (x.rows, head.bias.len(), x.cols);
    let w: Vec<f64> = head.weight.data.iter().map(|&v| v as f64).collect();
    let mut data = 0f64;
    for (i, &yi) in y.iter().enumerate() {
        let row: Vec<f64> = x.row(i).iter().map(|&v| v as f64).collect();
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let z: Vec<f64> = (0..k)
            .map(|c| {
                let dot: f64 = row
                    .iter()
                    .zip(&w[c * d..(c + 1) * d])
                    .map(|(a, b)| a * b)
                    .sum();
                dot / norm + head.bias[c] as f64
            })
            .collect();
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        data += max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln() - z[yi];
    }
    let norm2: f64 = if k == 2 {
        (0..d).map(|j| (w[d + j] - w[j]).powi(2)).sum()
    } else {
        w.iter().map(|v| v * v).sum()
    };
    data / n as f64 + norm2 / (2.0 * c * n as f64)
}

/// A solver run far past the default stopping rule, so that its result is the minimiser up to
/// float32 gradients (our objective's gradient is summed in f32 GEMMs: ~1e-7 of its terms).
fn tight() -> LbfgsOptions {
    LbfgsOptions {
        gtol: 1e-6,
        ftol: 0.0,
        max_iter: 20_000,
        ..Default::default()
    }
}

/// Coefficients and intercepts equal scikit-learn's minimiser (its tol 1e-10): the objective is
/// (1/(Cn))-strongly convex in W, so a gradient of max-norm g leaves W within about
/// √P·g·C·n of the minimiser (P parameters); with our g ≤ 1e-6 that is < 1e-3 for C ≤ 10 and
/// n = 40 (we measure ≤ 2e-4, at C = 1). Tolerance: 2e-4 + 2e-5·C·n absolute on every coefficient, and
/// the objective within 1e-9 relative (the objective is flat at the minimum: errors are
/// second-order; 1e-7 allows for the features, normalised in f32 on our side and in f64 on
/// theirs). Intercepts are compared after removing their mean: the multinomial loss does
/// not change when every intercept moves together, and both solvers start from zero, where the
/// gradient sums to zero over classes, so both keep their mean at 0.
#[test]
fn linear_probe_matches_scikit_learn() {
    let fx = methods_fixture("linear_probe.json");
    let task = baseline_task();
    let f = task.train.features.normalized();
    let (k, d) = (task.classes(), task.dim());
    let y = &task.train.labels;
    let centred = |b: &[f32]| {
        let m = b.iter().sum::<f32>() / b.len() as f32;
        b.iter().map(|v| v - m).collect::<Vec<_>>()
    };
    for fit in fx["fits"].as_array().unwrap() {
        let c = fit["c"].as_f64().unwrap();
        let head = linear_probe::train(&f, y, k, c, &tight());
        let tol = 2e-4 + 2e-5 * c as f32 * f.rows as f32;
        let dw = max_abs_diff(&head.weight.data, &floats(&fit["coef"]));
        let db = max_abs_diff(&centred(&head.bias), &centred(&floats(&fit["intercept"])));
        let ours = lr_objective(&head, &task.train.features, y, c);
        let theirs = fit["objective"].as_f64().unwrap();
        println!("C = {c}: |ΔW| {dw:.2e}, |Δb| {db:.2e}, objective {ours:.12} vs {theirs:.12}");
        assert!(
            dw <= tol && db <= tol,
            "C = {c}: coefficients off by {dw}, {db} (tol {tol})"
        );
        assert!(
            (ours - theirs).abs() <= 1e-7 * theirs.abs(),
            "C = {c}: objective {ours} vs scikit-learn {theirs}"
        );
    }

    // Two classes: scikit-learn fits one binomial vector w = w₁ − w₀ with penalty ‖w‖²/(2C).
    let bin = &fx["binary"];
    let rows = usizes(&bin["rows"]);
    let f2 = f.gather_rows(&rows);
    let y2: Vec<usize> = rows.iter().map(|&i| y[i]).collect();
    let c = bin["c"].as_f64().unwrap();
    let head = linear_probe::train(&f2, &y2, 2, c, &tight());
    let w: Vec<f32> = (0..d)
        .map(|j| head.weight.data[d + j] - head.weight.data[j])
        .collect();
    let tol = 2e-4 + 2e-5 * c as f32 * f2.rows as f32;
    let dw = max_abs_diff(&w, &floats(&bin["coef"]));
    let db = (head.bias[1] - head.bias[0] - floats(&bin["intercept"])[0]).abs();
    let ours = lr_objective(&head, &task.train.features.gather_rows(&rows), &y2, c);
    let theirs = bin["objective"].as_f64().unwrap();
    println!("two classes: |Δw| {dw:.2e}, |Δb| {db:.2e}, objective {ours:.12} vs {theirs:.12}");
    assert!(
        dw <= tol && db <= tol,
        "two classes: w off by {dw}, b by {db}"
    );
    assert!((ours - theirs).abs() <= 1e-7 * theirs.abs());

    // CoOp's settings as run (tol 1e-4, 1000 iterations) on both sides: both stop near, not at,
    // the minimiser. Objective within 1e-5 relative of the minimum (a gradient of 1e-4 leaves at
    // most ‖g‖²·C·n/2 above it); test predictions within one image of scikit-learn's.
    let def = &fx["default"];
    let c = def["c"].as_f64().unwrap();
    let head = linear_probe::train(&f, y, k, c, &LbfgsOptions::default());
    let minimum = fx["fits"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["c"].as_f64() == Some(c))
        .expect("a tight fit at the default C")["objective"]
        .as_f64()
        .unwrap();
    let ours = lr_objective(&head, &task.train.features, y, c);
    println!("default solver: objective {ours:.12} vs minimum {minimum:.12}");
    assert!(
        ours >= minimum * (1.0 - 1e-7) && ours - minimum <= 1e-5 * minimum,
        "default solver: objective {ours} vs minimum {minimum}"
    );
    let got = correct(&head.logits(&task.test.features), &task.test.labels) as i64;
    let want = def["test_correct"].as_i64().unwrap();
    println!("default solver: test {got} vs scikit-learn {want} correct");
    assert!((got - want).abs() <= 1, "test correct {got} vs {want}");
}

/// The C search of CoOp's `lpclip/linear_probe.py` (grid, first argmax, 8 bisection rounds),
/// both sides solving to a tight tolerance: the same validation accuracy at every C the
/// reference tried (the script checked that no decision of the search depends on a fragile
/// sample or on where a solver stops), and the same final C (to 1e-9 relative: the reference recomputes
/// `10**log10(c)`, which may move the last bit).
#[test]
fn linear_probe_search_matches_lpclip() {
    let fx = methods_fixture("linear_probe.json");
    let task = baseline_task();
    let f = task.train.features.normalized();
    let k = task.classes();
    for t in fx["search"]["tried"].as_array().unwrap() {
        let c = t["c"].as_f64().unwrap();
        let head = linear_probe::train(&f, &task.train.labels, k, c, &tight());
        let got = correct(&head.logits(&task.val.features), &task.val.labels) as i64;
        let (tight_count, loose_count, fragile) = (
            t["val_correct"].as_i64().unwrap(),
            t["val_correct_loose"].as_i64().unwrap(),
            t["fragile"].as_i64().unwrap(),
        );
        // A C where scikit-learn's predictions depend on its tolerance (C large: nearly
        // separable, minimiser far away) bounds ours by its two counts.
        let (lo, hi) = if t["stable"].as_bool().unwrap() {
            (tight_count, tight_count)
        } else {
            (tight_count.min(loose_count), tight_count.max(loose_count))
        };
        assert!(
            got >= lo - fragile && got <= hi + fragile,
            "C = {c}: {got} validation images right, scikit-learn {tight_count} (tol 1e-4: {loose_count})"
        );
    }
    let opts = LinearProbeOptions {
        solver: tight(),
        ..Default::default()
    };
    let fitted = fit(&Method::new(opts), &task, &mut |_| {}).unwrap();
    let c: f64 = fitted.chosen[0].1.parse().unwrap();
    let want = fx["search"]["c"].as_f64().unwrap();
    assert!(
        (c - want).abs() <= 1e-9 * want,
        "searched C {c} vs lpclip {want}"
    );
}

/// Accuracy (correct count) at every grid point of the reference's `search_hp`, equal up to its
/// fragile samples, and the chosen (α, β) equal to within float32 rounding of the grid values.
fn check_tip_search(head: &TipHead, task: &FewShotTask, opts: &TipOptions, want: &Value) {
    let (betas, alphas) = (floats(&want["betas"]), floats(&want["alphas"]));
    let (counts, fragile) = (usizes(&want["correct"]), usizes(&want["fragile"]));
    let mut probe = head.clone();
    for (bi, &beta) in betas.iter().enumerate() {
        for (ai, &alpha) in alphas.iter().enumerate() {
            let i = bi * alphas.len() + ai;
            (probe.alpha, probe.beta) = (alpha, beta);
            let got = correct(&probe.logits(&task.val.features), &task.val.labels);
            assert!(
                got.abs_diff(counts[i]) <= fragile[i],
                "β {beta}, α {alpha}: {got} right, reference {}",
                counts[i]
            );
        }
    }
    let mut searched = head.clone();
    searched.search(&task.val.features, &task.val.labels, opts, &mut |_| {});
    let (a, b) = (
        want["alpha"].as_f64().unwrap() as f32,
        want["beta"].as_f64().unwrap() as f32,
    );
    assert!(
        (searched.alpha - a).abs() <= 1e-5 * a && (searched.beta - b).abs() <= 1e-5 * b,
        "searched (α, β) = ({}, {}) vs search_hp ({a}, {b})",
        searched.alpha,
        searched.beta
    );
}

/// Tip-Adapter against the authors' formulas: keys within 1e-6 (a mean and a normalisation in
/// f32), logits within 1e-5 of their largest magnitude (f32 dot products of unit vectors, times
/// 100, plus the cache term), the search as `search_hp`.
#[test]
fn tip_adapter_matches_the_reference() {
    let fx = methods_fixture("tip_adapter.json");
    let task = baseline_task();
    let scale = floats(&fx["search_scale"]);
    let steps = usizes(&fx["search_steps"]);
    let opts = TipOptions {
        alpha: fx["init_alpha"].as_f64().unwrap() as f32,
        beta: fx["init_beta"].as_f64().unwrap() as f32,
        search_scale: (scale[0], scale[1]),
        search_steps: (steps[0], steps[1]),
        ..Default::default()
    };
    let head = TipHead::build(&task, &opts);
    let dk = max_abs_diff(&head.keys.data, &floats(&fx["keys"]));
    assert!(dk <= 1e-6, "cache keys differ by {dk}");
    assert_eq!(head.values, task.train.labels);
    let want = floats(&fx["logits_init"]);
    let dl = max_abs_diff(&head.logits(&task.test.features).data, &want);
    assert!(dl <= 1e-5 * max_abs(&want), "logits differ by {dl}");
    check_tip_search(&head, &task, &opts, &fx["search"]);

    let fitted = fit(&Method::new(TipAdapter(opts)), &task, &mut |_| {}).unwrap();
    let want = floats(&fx["test_logits"]);
    let dl = max_abs_diff(&fitted.head.logits(&task.test.features).data, &want);
    println!("Tip-Adapter: keys {dk:.1e}, test logits {dl:.1e}");
    assert!(
        dl <= 1e-5 * max_abs(&want),
        "searched test logits differ by {dl}"
    );
}

/// Tip-Adapter-F from the same keys and sample order as the reference (AdamW eps 1e-4, decay
/// 0.01, cosine per iteration): per-epoch mean loss within 1e-4 relative, trained keys within
/// 2e-5 (Adam divides each gradient by its running RMS, so f32 rounding of small gradients
/// moves a key by a fraction of lr = 1e-2 times the relative gradient error), the same best
/// validation epoch, then the search and the test logits as for Tip-Adapter.
#[test]
fn tip_adapter_f_matches_the_reference() {
    let fx = methods_fixture("tip_adapter.json");
    let ft = &fx["finetune"];
    let task = baseline_task();
    let scale = floats(&fx["search_scale"]);
    let steps = usizes(&fx["search_steps"]);
    let opts = TipOptions {
        alpha: fx["init_alpha"].as_f64().unwrap() as f32,
        beta: fx["init_beta"].as_f64().unwrap() as f32,
        search_scale: (scale[0], scale[1]),
        search_steps: (steps[0], steps[1]),
        lr: ft["lr"].as_f64().unwrap() as f32,
        epochs: ft["epochs"].as_u64().unwrap() as usize,
        batch_size: ft["batch_size"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let orders: Vec<Vec<usize>> = ft["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(usizes)
        .collect();
    let mut head = TipHead::build(&task, &opts);
    let trained = tip_adapter::train_keys(
        &mut head,
        &task,
        &opts,
        &mut |e| orders[e].clone(),
        &mut |_| {},
    )
    .unwrap();
    let want = floats(&ft["losses"]);
    assert_eq!(trained.losses.len(), want.len());
    for (e, (ours, theirs)) in trained.losses.iter().zip(&want).enumerate() {
        assert!(
            (ours - theirs).abs() <= 1e-4 * theirs.abs(),
            "epoch {e}: loss {ours} vs reference {theirs}"
        );
    }
    assert_eq!(
        trained.best_epoch,
        ft["best_epoch"].as_u64().unwrap() as usize,
        "best validation epoch"
    );
    let dk = max_abs_diff(&head.keys.data, &floats(&ft["keys"]));
    println!("Tip-Adapter-F: trained keys within {dk:.1e}");
    assert!(dk <= 2e-5, "trained keys differ by {dk}");
    check_tip_search(&head, &task, &opts, &ft["search"]);
    head.search(&task.val.features, &task.val.labels, &opts, &mut |_| {});
    let want = floats(&ft["test_logits"]);
    let dl = max_abs_diff(&head.logits(&task.test.features).data, &want);
    assert!(dl <= 1e-5 * max_abs(&want), "test logits differ by {dl}");
}

/// GDA against mrflogs/ICLR24's estimator (float64, `pinv`): weights and bias within 1e-5 of
/// their largest magnitude (the shrunk matrix is well conditioned, eigenvalues ≥ its trace term,
/// so the f32 scatter's rounding passes to W at about that relative size), the same validation
/// accuracy for every α, the same α, test logits within 1e-5 of their largest magnitude.
#[test]
fn gda_matches_the_reference() {
    let fx = methods_fixture("gda.json");
    let task = baseline_task();
    let fitted = fit(&Method::new(GdaOptions::default()), &task, &mut |_| {}).unwrap();
    let Some(head) = fitted.head.downcast_ref::<GdaHead>() else {
        panic!("GDA fits a GDA head")
    };
    let (w, b) = (floats(&fx["weight"]), floats(&fx["bias"]));
    let dw = max_abs_diff(&head.weight.data, &w);
    let db = max_abs_diff(&head.bias, &b);
    println!(
        "GDA: |ΔW| {dw:.2e} of {:.2e}, |Δb| {db:.2e} of {:.2e}",
        max_abs(&w),
        max_abs(&b)
    );
    assert!(dw <= 1e-5 * max_abs(&w), "weights differ by {dw}");
    assert!(db <= 1e-5 * max_abs(&b), "biases differ by {db}");
    let alphas = floats(&fx["alphas"]);
    assert_eq!(
        GdaOptions::default().alphas,
        alphas,
        "the reference's α list"
    );
    let (counts, fragile) = (usizes(&fx["val_correct"]), usizes(&fx["val_fragile"]));
    let mut probe = head.clone();
    for (i, &alpha) in alphas.iter().enumerate() {
        probe.alpha = alpha;
        let got = correct(&probe.logits(&task.val.features), &task.val.labels);
        assert!(
            got.abs_diff(counts[i]) <= fragile[i],
            "α {alpha}: {got} right vs {}",
            counts[i]
        );
    }
    assert_eq!(head.alpha, fx["alpha"].as_f64().unwrap() as f32, "chosen α");
    let want = floats(&fx["test_logits"]);
    let dl = max_abs_diff(&head.logits(&task.test.features).data, &want);
    assert!(dl <= 1e-5 * max_abs(&want), "test logits differ by {dl}");
    assert_eq!(
        correct(&head.logits(&task.test.features), &task.test.labels),
        fx["test_correct"].as_u64().unwrap() as usize
    );
}
