//! ProLIP against its reference (`scripts/fixtures/prolip.py`: PyTorch in float64, written from
//! the paper and the authors' `methods/ProLIP.py`): the same pre-projection features, written
//! initial projection and view order; our f32 training must agree within the stated
//! tolerances, for a ModifiedResNet-like projection (with a frozen bias) and a ViT-like one.

use clip_adapter::methods::prolip::{self, Lambda, PreProjection, Projection, ProlipOptions};
use clip_adapter::methods::{
    evaluate, fit, FewShotTask, Head, LabelledSet, Matrix, Method, TextClassifier,
};
use serde_json::Value;

use crate::common;

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
    };
    let opts = ProlipOptions {
        epochs: n(&c.f["epochs"]),
        lr: c.f["lr"].as_f64().unwrap() as f32,
        ..Default::default()
    };
    let err = fit(&Method::Prolip(opts.clone()), &task, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("pre-projection"), "{err}");
    task.pre_projection = Some(Box::new(c.pre.clone()));
    let fitted = fit(&Method::Prolip(opts), &task, &mut |_| {}).unwrap();
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
    let Head::Prolip(h) = &fitted.head else {
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
