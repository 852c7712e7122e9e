//! ProKeR against its reference (`scripts/fixtures/proker.py`, PyTorch in float64, written from
//! the authors' `trainers/proker.py`): same features, the authors' default grid. The f64
//! intermediates (support set, residual, kernel matrix, coefficients) agree within 1e-9 relative
//! (+1e-12 absolute), the validation accuracy of every grid point and the chosen (β, λ) exactly,
//! and the head's f32 test logits within 1e-5 (+1e-5 relative); with and without validation.

use clip_adapter::experiment::Validation;
use clip_adapter::methods::proker::{
    self, coefficients, linspace, products, rbf, residual, ProkerHead, ProkerOptions, Span, Support,
};
use clip_adapter::methods::{
    eval, fit, FewShotTask, LabelledSet, Matrix, Method, MethodKind, MethodOverrides,
    TextClassifier,
};
use serde_json::Value;

use crate::common::{self, floats, usizes};

fn fixture() -> Value {
    let path = common::fixture("methods/proker.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reading the fixture"))
        .expect("fixture JSON")
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn num(v: &Value) -> f64 {
    v.as_f64().expect("number")
}

fn task(f: &Value) -> FewShotTask {
    let (k, d) = (
        f["classes"].as_u64().unwrap() as usize,
        f["dim"].as_u64().unwrap() as usize,
    );
    let m = |v: &Value| {
        let data = floats(v);
        Matrix::from_vec(data.len() / d, d, data).unwrap()
    };
    let set = |x: &str, y: &str| LabelledSet {
        features: m(&f[x]),
        labels: usizes(&f[y]),
    };
    FewShotTask {
        pre_projection: None,
        text_mean: None,
        classnames: (0..k).map(|i| format!("class {i}")).collect(),
        train: set("train", "labels"),
        train_views: f["views"].as_array().unwrap().iter().map(m).collect(),
        val: set("val", "val_labels"),
        test: set("test", "test_labels"),
        text: TextClassifier {
            weights: m(&f["text"]),
            logit_scale: num(&f["logit_scale"]) as f32,
            logit_bias: None,
        },
    }
}

/// `|a − b| ≤ abs + rel·|b|` element-wise.
fn assert_close<T: Into<f64> + Copy>(what: &str, ours: &[T], theirs: &[f64], abs: f64, rel: f64) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
        let a: f64 = a.into();
        assert!(
            (a - b).abs() <= abs + rel * b.abs(),
            "{what}[{i}]: ours {a} vs reference {b}"
        );
    }
}

fn fitted_head(task: &FewShotTask, opts: &ProkerOptions) -> (ProkerHead, Vec<(String, String)>) {
    let fitted = fit(&Method::new(opts.clone()), task, &mut |_| {}).unwrap();
    let head = fitted.head.downcast_ref::<ProkerHead>().unwrap().clone();
    (head, fitted.chosen)
}

/// The support set, the residual of the zero-shot classifier, the kernel matrix and the
/// coefficients at the reference's chosen (β, λ), in f64 within 1e-9 relative.
#[test]
fn intermediates_match_the_reference() {
    let f = fixture();
    let task = task(&f);
    let support = Support::of(&task).unwrap();
    assert_eq!(support.labels, usizes(&f["support_labels"]));
    assert_close("support", &support.keys, &f64s(&f["support"]), 1e-12, 1e-9);
    let text: Vec<f64> = task.text.weights.data.iter().map(|&v| v as f64).collect();
    let r = residual(&support, &text);
    assert_close("residual", &r, &f64s(&f["residual"]), 1e-12, 1e-9);
    for case in ["chosen", "no_validation"] {
        let c = &f[case];
        let kernel = rbf(
            &products(&support.keys, &support.keys, support.dim),
            num(&c["beta"]),
        );
        assert_close(case, &kernel, &f64s(&c["kernel"]), 1e-12, 1e-9);
        let a = coefficients(&kernel, &r, num(&c["lmbda"])).unwrap();
        assert_close(case, &a, &f64s(&c["coefficients"]), 1e-12, 1e-9);
    }
}

/// The authors' grid as torch.linspace gives it, every grid point's validation accuracy and the
/// first best point are the reference's; the fitted head's test logits agree within 1e-5.
#[test]
fn the_validation_search_chooses_what_the_reference_chooses() {
    let f = fixture();
    let task = task(&f);
    let grid = |v: &Value| Span::new(num(&v[0]), num(&v[1]), v[2].as_u64().unwrap() as usize);
    let opts = ProkerOptions {
        beta_grid: grid(&f["grid"]["beta"]),
        lmbda_grid: grid(&f["grid"]["lmbda"]),
        ..Default::default()
    };
    // The fixture's grid is the default (caltech101's), spaced as torch.linspace spaces it (its
    // SIMD path rounds some points one ulp away from its scalar formula, by vector width).
    assert_eq!(opts, ProkerOptions::for_dataset("caltech101"));
    let (betas, lmbdas) = opts.candidates();
    assert_close("betas", &betas, &f64s(&f["betas"]), 0.0, 1e-15);
    assert_close("lmbdas", &lmbdas, &f64s(&f["lmbdas"]), 0.0, 1e-15);

    let support = Support::of(&task).unwrap();
    let text: Vec<f64> = task.text.weights.data.iter().map(|&v| v as f64).collect();
    let found = proker::search(
        &support,
        &text,
        &task.val.features,
        &task.val.labels,
        (&betas, &lmbdas),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(found.accuracies, f64s(&f["val_accuracies"]));
    let c = &f["chosen"];
    let (beta, lmbda, accuracy) = found.best.expect("a best grid point");
    assert_eq!(accuracy, num(&c["val_accuracy"]));
    let theirs = [num(&c["beta"]), num(&c["lmbda"])];
    assert_close("chosen", &[beta, lmbda], &theirs, 0.0, 1e-15);
    // β the 4th of 20 (an inner point of its grid), λ the last: the search is what is tested.
    let at = |v: &[f64], x: f64| v.iter().position(|&y| y == x);
    assert_eq!((at(&betas, beta), at(&lmbdas, lmbda)), (Some(3), Some(9)));

    let (head, chosen) = fitted_head(&task, &opts);
    let names: Vec<&str> = chosen.iter().map(|(k, _)| k.as_str()).collect();
    let values: Vec<f64> = chosen.iter().map(|(_, v)| v.parse().unwrap()).collect();
    assert_eq!((names, values), (vec!["beta", "lmbda"], vec![beta, lmbda]));
    let logits = head.logits(&task.test.features);
    assert_close(
        "test logits",
        &logits.data,
        &f64s(&c["test_logits"]),
        1e-5,
        1e-5,
    );
    assert_eq!(
        eval::accuracy(&logits, &task.test.labels) as f64,
        num(&c["test_accuracy"])
    );
}

/// Without a validation set the authors' 4-shot values (β 1.5, λ 0.05) are used, and the head is
/// the reference's at those values.
#[test]
fn without_validation_the_authors_values_for_the_shot_count() {
    let f = fixture();
    let task = Validation::None.apply(task(&f));
    assert_eq!(task.shots(), f["shots"].as_u64().unwrap() as usize);
    let c = &f["no_validation"];
    assert_eq!(
        proker::without_validation(task.shots()),
        (num(&c["beta"]), num(&c["lmbda"]))
    );
    let (head, chosen) = fitted_head(&task, &ProkerOptions::default());
    assert_eq!(chosen[0].1, "1.5");
    assert_eq!(chosen[1].1, "0.05");
    let logits = head.logits(&task.test.features);
    assert_close(
        "test logits",
        &logits.data,
        &f64s(&c["test_logits"]),
        1e-5,
        1e-5,
    );
    assert_eq!(
        eval::accuracy(&logits, &task.test.labels) as f64,
        num(&c["test_accuracy"])
    );
}

/// The protocol gives a named benchmark the authors' grid (`configs_proker/<dataset>.yaml`) and an
/// unknown one the documented default; the user's β and λ replace the grid and the
/// validation-free values.
#[test]
fn the_protocol_gives_the_authors_grids_and_the_users_values() {
    let kind: MethodKind = "proker".parse().unwrap();
    let grid = |dataset: &str| {
        let m = MethodOverrides::default().method(kind, dataset, 1);
        let o = m.options::<ProkerOptions>().unwrap().clone();
        (o.beta_grid, o.lmbda_grid)
    };
    let s = Span::new;
    assert_eq!(grid("sun397"), (s(0.1, 10.0, 20), s(0.01, 10.0, 10)));
    assert_eq!(grid("food101"), (s(0.5, 3.0, 20), s(0.001, 1.0, 10)));
    assert_eq!(grid("imagenet"), (s(1.5, 3.0, 10), s(0.05, 0.25, 10)));
    assert_eq!(grid("oxford_pets"), (s(0.01, 5.0, 40), s(0.01, 0.3, 20)));
    assert_eq!(grid("eurosat"), (s(0.5, 3.0, 20), s(0.001, 1.0, 100)));
    assert_eq!(grid("dtd"), grid("oxford_flowers"));
    assert_eq!(grid("stanford_cars"), (s(0.1, 10.0, 5), s(0.01, 1.0, 5)));
    let default = ProkerOptions::default();
    assert_eq!(
        grid("no such dataset"),
        (default.beta_grid, default.lmbda_grid)
    );
    assert_eq!(grid("fgvc_aircraft"), grid("caltech101"));
    assert_eq!(linspace(1.5, 3.0, 10).len(), 10);

    let given = MethodOverrides {
        beta: Some(2.0),
        lmbda: Some(0.25),
        ..Default::default()
    };
    let m = given.method(kind, "sun397", 1);
    let o = m.options::<ProkerOptions>().unwrap();
    assert_eq!((o.beta, o.lmbda), (Some(2.0), Some(0.25)));
    assert_eq!(o.candidates(), (vec![2.0], vec![0.25]));
    assert_eq!(given.label(kind), "beta=2 lmbda=0.25");

    let f = fixture();
    for validation in Validation::ALL {
        let t = validation.apply(task(&f));
        let fitted = fit(&m, &t, &mut |_| {}).unwrap();
        assert_eq!(
            fitted.chosen,
            [
                ("beta".to_string(), "2".to_string()),
                ("lmbda".to_string(), "0.25".to_string())
            ],
            "{validation}"
        );
    }
    let bad = ProkerOptions {
        lmbda: Some(0.0),
        ..Default::default()
    };
    let err = fit(&Method::new(bad), &task(&f), &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("lmbda"), "{err}");
}
