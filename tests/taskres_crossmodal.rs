//! TaskRes and the cross-modal linear probe against their references
//! (`scripts/fixtures/taskres_crossmodal.py`, PyTorch in float64, written from the papers and
//! the authors' code): same features, same initial values and sample orders; our f32 results
//! must agree within the stated tolerances.

use clip_adapter::methods::cross_modal::{
    self, Config, CrossModalHead, CrossModalOptions, Draw, Samples, Source,
};
use clip_adapter::methods::optim::{LinearWarmupCosine, WarmupCosine};
use clip_adapter::methods::taskres::{self, TaskResHead, TaskResOptions};
use clip_adapter::methods::{
    evaluate, fit, FewShotTask, LabelledSet, Matrix, Method, MethodError, TextClassifier,
};
use serde_json::Value;

use crate::common::{self, floats, usizes};

fn fixture() -> Value {
    let path = common::fixture("methods/taskres_crossmodal.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reading the fixture"))
        .expect("fixture JSON")
}

fn num(v: &Value) -> f32 {
    v.as_f64().expect("number") as f32
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
    FewShotTask {
        pre_projection: None,
        text_mean: Some(m(&f["base"])),
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
            logit_scale: num(&f["logit_scale"]),
            logit_bias: None,
        },
    }
}

/// `|a − b| ≤ abs + rel·|b|` element-wise; returns the largest difference.
fn assert_close(what: &str, ours: &[f32], theirs: &[f32], abs: f32, rel: f32) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    let mut worst = 0f32;
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= abs + rel * b.abs(),
            "{what}[{i}]: ours {a} vs reference {b}"
        );
        worst = worst.max((a - b).abs());
    }
    worst
}

fn orders(v: &Value) -> Vec<Vec<usize>> {
    v.as_array().unwrap().iter().map(usizes).collect()
}

/// TaskRes from a zero residual and the reference's epoch orders, Adam with its L2 decay:
/// the start is zero-shot on the base (logits within 1e-3 + 1e-5 relative), the per-epoch
/// learning rates are Dassl's (1e-9 relative), the per-epoch loss within 1e-4 + 1e-4·loss, the
/// trained residual within 1e-4 and the test logits within 2e-3 + 1e-5 relative; for α = 0.5
/// (the authors' default) and 1 (Flowers102).
#[test]
fn taskres_matches_the_reference() {
    let f = fixture();
    let task = task(&f);
    for r in f["taskres"].as_array().unwrap() {
        let alpha = num(&r["alpha"]);
        let opts = TaskResOptions {
            alpha,
            lr: num(&r["lr"]),
            epochs: Some(r["epochs"].as_u64().unwrap() as usize),
            batch_size: r["batch_size"].as_u64().unwrap() as usize,
            weight_decay: num(&r["weight_decay"]),
            ..Default::default()
        };
        let epochs = opts.epochs.unwrap();
        let schedule = WarmupCosine {
            base_lr: opts.lr,
            epochs,
            warmup_epochs: opts.warmup_epochs,
            warmup_lr: opts.warmup_lr,
        };
        let lrs: Vec<f32> = (0..epochs).map(|e| schedule.lr(e)).collect();
        assert_close("lr", &lrs, &floats(&r["lrs"]), 0.0, 1e-6);

        let base = taskres::base(&task).unwrap().clone();
        let mut head = TaskResHead::new(base, alpha, task.text.logit_scale);
        let start = head.logits(&task.test.features);
        assert_close(
            "start",
            &start.data,
            &floats(&r["start_test_logits"]),
            1e-3,
            1e-5,
        );

        let written = orders(&r["orders"]);
        let mut order = |e: usize| written[e].clone();
        let losses =
            taskres::train(&mut head, &task, &opts, epochs, &mut order, &mut |_| {}).unwrap();
        let theirs = floats(&r["losses"]);
        for (e, (a, b)) in losses.iter().zip(&theirs).enumerate() {
            assert!(
                (a - b).abs() <= 1e-4 + 1e-4 * b,
                "α {alpha} epoch {e}: {a} vs {b}"
            );
        }
        assert_close(
            "residual",
            &head.residual.data,
            &floats(&r["residual"]),
            1e-4,
            0.0,
        );
        let logits = head.logits(&task.test.features);
        assert_close(
            "test logits",
            &logits.data,
            &floats(&r["test_logits"]),
            2e-3,
            1e-5,
        );
    }
}

fn cross_modal_options(c: &Value) -> CrossModalOptions {
    let g = &c["grid"];
    CrossModalOptions {
        lrs: floats(&g["lrs"]),
        weight_decays: floats(&g["weight_decays"]),
        batch_sizes: usizes(&g["batch_sizes"]),
        iterations: c["iterations"].as_u64().unwrap() as usize,
        warmup_iters: c["warmup_iters"].as_u64().unwrap() as usize,
        eval_every: c["eval_every"].as_u64().unwrap() as usize,
        ..Default::default()
    }
}

/// The orders of one run: its image loader's passes and its text loader's.
fn run_orders(run: &Value) -> impl FnMut(Source, usize) -> Vec<usize> {
    let (images, text) = (orders(&run["image_orders"]), orders(&run["text_orders"]));
    move |source, pass| match source {
        Source::Image => images[pass].clone(),
        Source::Text => text[pass].clone(),
    }
}

/// Each run of the cross-modal search from the text-initialised head and the reference's
/// loader orders: the valid batch sizes equal; the per-iteration learning rate (1e-6
/// relative), the loss of every block of 100 iterations (1e-4 + 1e-4·loss), the validation
/// accuracy at every checkpoint, the best checkpoint and its weights (1e-4) as the reference's.
/// Then the search itself: the same run kept (the first best), the same test logits (1e-3 +
/// 1e-5 relative); and the validation-free run's last weights.
#[test]
fn cross_modal_matches_the_reference() {
    let f = fixture();
    let task = task(&f);
    let c = &f["cross_modal"];
    let opts = cross_modal_options(c);
    let samples = Samples::of(&task);
    let configs = cross_modal::configs(&samples, &opts, true).unwrap();
    let valid = usizes(&c["valid_batch_sizes"]);
    assert!(configs.iter().all(|cfg| valid.contains(&cfg.batch_size)));
    let runs = c["runs"].as_array().unwrap();
    assert_eq!(configs.len(), runs.len());
    let start = CrossModalHead::from_text(&task.text.weights, task.text.logit_scale);
    for (i, (config, r)) in configs.iter().zip(runs).enumerate() {
        assert_eq!(config.lr, num(&r["lr"]), "run {i}");
        assert_eq!(config.weight_decay, num(&r["weight_decay"]), "run {i}");
        let schedule = LinearWarmupCosine {
            base_lr: config.lr,
            warmup_iters: opts.warmup_iters,
            floor_lr: opts.warmup_lr,
            total: opts.iterations,
        };
        let lrs: Vec<f32> = (0..opts.iterations).map(|i| schedule.lr(i)).collect();
        assert_close("lr", &lrs, &floats(&r["lrs"]), 0.0, 1e-6);
        let mut orders = run_orders(r);
        let run = cross_modal::train(
            &start,
            &samples,
            &task.val,
            *config,
            &opts,
            &mut orders,
            &mut |_| {},
        )
        .unwrap();
        let theirs = floats(&r["losses"]);
        assert_eq!(run.losses.len(), theirs.len());
        for (b, (a, t)) in run.losses.iter().zip(&theirs).enumerate() {
            assert!(
                (a - t).abs() <= 1e-4 + 1e-4 * t,
                "run {i} block {b}: {a} vs {t}"
            );
        }
        // Accuracies in percent: equal, up to the f64 reference's rounding of k/n.
        assert_close(
            "validations",
            &run.validations,
            &floats(&r["val_accuracy"]),
            1e-3,
            0.0,
        );
        assert_eq!(
            run.iteration,
            r["best_iteration"].as_u64().unwrap() as usize
        );
        assert!((run.val_accuracy - num(&r["best_val_accuracy"])).abs() < 1e-3);
        assert_close(
            "weight",
            &run.head.weight.data,
            &floats(&r["weight"]),
            1e-4,
            0.0,
        );
    }

    let mut draws = |d: Draw| {
        let r = &runs[d.config];
        let key = match d.source {
            Source::Image => "image_orders",
            Source::Text => "text_orders",
        };
        usizes(&r[key][d.pass])
    };
    let (run, config) = cross_modal::search(&task, &opts, &mut draws, &mut |_| {}).unwrap();
    let chosen = &runs[c["chosen"].as_u64().unwrap() as usize];
    assert_eq!(
        config,
        Config {
            lr: num(&chosen["lr"]),
            weight_decay: num(&chosen["weight_decay"]),
            batch_size: chosen["batch_size"].as_u64().unwrap() as usize,
        }
    );
    let logits = run.head.logits(&task.test.features);
    assert_close(
        "test logits",
        &logits.data,
        &floats(&c["test_logits"]),
        1e-3,
        1e-5,
    );

    // Without a validation set: the one run of the user's learning rate, AdamW's default decay
    // and the larger valid batch, its last weights.
    let last = &c["no_validation"];
    let mut blind = task.clone();
    blind.val = LabelledSet {
        features: Matrix::zeros(0, task.dim()),
        labels: Vec::new(),
    };
    let one = CrossModalOptions {
        lrs: vec![num(&last["lr"])],
        ..opts
    };
    let configs = cross_modal::configs(&samples, &one, false).unwrap();
    assert_eq!(configs[0].weight_decay, num(&last["weight_decay"]));
    let mut orders = run_orders(last);
    let run = cross_modal::train(
        &start,
        &samples,
        &blind.val,
        configs[0],
        &one,
        &mut orders,
        &mut |_| {},
    )
    .unwrap();
    assert!(run.val_accuracy.is_nan() && run.validations.is_empty());
    assert_eq!(run.iteration, one.iterations - 1);
    assert_close(
        "last weight",
        &run.head.weight.data,
        &floats(&last["weight"]),
        1e-4,
        0.0,
    );
}

/// TaskRes adds its residual to the mean un-normalised prompt embeddings; a cache without
/// them is refused, naming what to run, and a base of the wrong shape is refused too.
#[test]
fn taskres_needs_the_mean_prompt_embeddings() {
    let mut task = task(&fixture());
    let short = TaskResOptions {
        epochs: Some(2),
        batch_size: 8,
        ..Default::default()
    };
    let fitted = fit(&Method::new(short.clone()), &task, &mut |_| {}).unwrap();
    let (_, test) = evaluate(&fitted.head, &task);
    assert!(test > 50.0, "test accuracy {test}");
    task.text_mean = Some(Matrix::zeros(task.classes() - 1, task.dim()));
    let err = fit(&Method::new(short.clone()), &task, &mut |_| {}).unwrap_err();
    assert!(matches!(err, MethodError::Rows { .. }), "{err}");
    task.text_mean = None;
    let err = fit(&Method::new(short), &task, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("extract"), "{err}");
}
