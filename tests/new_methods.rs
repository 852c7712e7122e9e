//! APE / APE-T, LP++ and CLAP against their references (`scripts/fixtures/new_methods.py`,
//! PyTorch in float64, written from the papers and the authors' code): same features, same
//! initial values and sample orders; our f32 results must agree within the stated tolerances.

use clip_adapter::methods::ape::{self, Ape, ApeOptions, ApeT, ApeTModel};
use clip_adapter::methods::clap::{self, ClapModel, ClapOptions, Constraint};
use clip_adapter::methods::head::{self, HeadInfo};
use clip_adapter::methods::lp_plus_plus::{self as lpp, LpPlusPlusHead, LpPlusPlusOptions};
use clip_adapter::methods::zero_shot::cosine_logits;
use clip_adapter::methods::{
    eval, evaluate, fit, FewShotTask, LabelledSet, Matrix, Method, TextClassifier,
};
use serde_json::Value;

use crate::common::{self, floats, usizes};

fn fixture() -> Value {
    let path = common::fixture("methods/new_methods.json");
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
            logit_scale: num(&f["logit_scale"]),
            logit_bias: None,
        },
    }
}

/// `|a − b| ≤ abs + rel·|b|` element-wise.
fn assert_close(what: &str, ours: &[f32], theirs: &[f32], abs: f32, rel: f32) {
    assert_eq!(ours.len(), theirs.len(), "{what}: lengths");
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() <= abs + rel * b.abs(),
            "{what}[{i}]: ours {a} vs reference {b}"
        );
    }
}

fn ape_options(r: &Value) -> ApeOptions {
    let w = floats(&r["weights"]);
    let s = floats(&r["search_scale"]);
    let st = usizes(&r["search_steps"]);
    ApeOptions {
        weights_free: (w[0], w[1]),
        channels_free: r["channels"].as_u64().unwrap() as usize,
        alpha: num(&r["alpha"]),
        beta: num(&r["beta"]),
        gamma: num(&r["gamma"]),
        search_scale: (s[0], s[1], s[2]),
        search_steps: (st[0], st[1], st[2]),
        ..Default::default()
    }
}

/// Keys within 1e-6; the refined channels identical, in the reference's order; divergences
/// within 1e-4 relative; logits (magnitude ~100) within 1e-3 + 1e-5 relative, before and after
/// the validation search, whose (α, β, γ) must be the reference's.
#[test]
fn ape_matches_the_reference() {
    let f = fixture();
    let task = task(&f);
    let r = &f["ape"];
    let opts = ape_options(r);
    let keys = ape::cache_keys(&task);
    assert_close("keys", &keys.data, &floats(&r["keys"]), 1e-6, 0.0);
    let (head, div) = ape::build(&task, &opts).unwrap();
    assert_eq!(head.channels, usizes(&r["indices"]), "refined channels");
    assert_close("div", &div, &floats(&r["div"]), 1e-5, 1e-4);
    let logits = head.logits(&task.test.features);
    assert_close(
        "logits",
        &logits.data,
        &floats(&r["test_logits"]),
        1e-3,
        1e-5,
    );

    let fitted = fit(&Method::new(Ape(opts)), &task, &mut |_| {}).unwrap();
    let chosen = |name: &str| -> f32 {
        fitted
            .chosen
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.parse().unwrap())
            .unwrap()
    };
    let best = &r["best"];
    for name in ["alpha", "beta", "gamma"] {
        assert!(
            (chosen(name) - num(&best[name])).abs() < 1e-4,
            "{name}: ours {} vs reference {}",
            chosen(name),
            best[name]
        );
    }
    let (val, _) = evaluate(&fitted.head, &task);
    assert_eq!(val, num(&best["val_accuracy"]), "validation accuracy");
    let searched = fitted.head.logits(&task.test.features);
    assert_close(
        "searched logits",
        &searched.data,
        &floats(&r["test_logits_searched"]),
        1e-3,
        1e-5,
    );
}

/// APE-T from the reference's initialisation and batch orders: per-epoch loss within
/// 1e-4 + 1e-4·loss, the residual and value weights within 1e-4, the validation accuracy of
/// every epoch equal, test logits within 1e-3 + 1e-5 relative; then the best epoch and the
/// (β, α) searched after training.
#[test]
fn ape_t_training_matches_the_reference() {
    let f = fixture();
    let task = task(&f);
    let r = &f["ape_t"];
    let w = floats(&r["weights"]);
    let opts = ApeOptions {
        weights_trained: (w[0], w[1]),
        channels_trained: r["channels"].as_u64().unwrap() as usize,
        alpha: num(&r["alpha"]),
        beta: num(&r["beta"]),
        lr: num(&r["lr"]),
        eps: num(&r["eps"]),
        epochs: r["epochs"].as_u64().unwrap() as usize,
        batch_size: r["batch_size"].as_u64().unwrap() as usize,
        ..Default::default()
    };
    let mut model = ApeTModel::new(&task, &opts).unwrap();
    assert_eq!(model.channels, usizes(&r["indices"]), "refined channels");
    let orders: Vec<Vec<usize>> = r["orders"].as_array().unwrap().iter().map(usizes).collect();
    let mut val_acc = Vec::new();
    // As `fit_trained` (and `main.py`): the first strictly best validation epoch is kept.
    let mut best = (f32::NEG_INFINITY, 0usize, model.params.clone());
    let losses = ape::train(
        &task,
        &opts,
        &mut model,
        &mut |e| orders[e].clone(),
        &mut |epoch, m| {
            let acc = eval::accuracy(&m.head().logits(&task.val.features), &task.val.labels);
            if acc > best.0 {
                best = (acc, epoch, m.params.clone());
            }
            val_acc.push(acc)
        },
        &mut |_| {},
    )
    .unwrap();
    assert_close("losses", &losses, &floats(&r["losses"]), 1e-4, 1e-4);
    assert_eq!(
        val_acc,
        floats(&r["val_accuracy"]),
        "validation accuracy per epoch"
    );
    assert_close(
        "residual",
        &model.params.residual.data,
        &floats(&r["residual"]),
        1e-4,
        0.0,
    );
    assert_close(
        "value weights",
        &model.params.value_weights,
        &floats(&r["value_weights"]),
        1e-4,
        0.0,
    );
    let logits = model.head().logits(&task.test.features);
    assert_close(
        "logits",
        &logits.data,
        &floats(&r["test_logits"]),
        1e-3,
        1e-5,
    );

    // Then (β, α) searched on validation with the best epoch's parameters and the trained
    // value weights (a one-point γ grid at 0, as `fit_trained`): the same best epoch, the same
    // (α, β) within 1e-4, the same validation accuracy, test logits within 1e-3 + 1e-5 relative.
    assert_eq!(
        best.1 as u64,
        r["best_epoch"].as_u64().unwrap(),
        "best epoch"
    );
    model.params = best.2;
    let mut head = model.head();
    let s = floats(&r["search_scale"]);
    let st = usizes(&r["search_steps"]);
    let search_opts = ApeOptions {
        search_scale: (s[0], s[1], 0.0),
        search_steps: (st[0], st[1], 1),
        ..opts
    };
    let trained = head.value_weights.clone();
    let zeros = vec![0f32; trained.len()];
    let (val, _) = ape::search(
        &mut head,
        &trained,
        &zeros,
        &task.val.features,
        &task.val.labels,
        &search_opts,
        &mut |_| {},
    );
    let want = &r["best"];
    assert_eq!(
        val,
        num(&want["val_accuracy"]),
        "searched validation accuracy"
    );
    for (name, ours) in [("alpha", head.alpha), ("beta", head.beta)] {
        assert!(
            (ours - num(&want[name])).abs() < 1e-4,
            "{name}: ours {ours} vs reference {}",
            want[name]
        );
    }
    assert_close(
        "searched logits",
        &head.logits(&task.test.features).data,
        &floats(&r["test_logits_searched"]),
        1e-3,
        1e-5,
    );
}

/// LP++ (the paper's fresh α gradient, and the released code's accumulated one): step sizes
/// and initial α within 1e-5 relative, per-epoch loss within 1e-4 + 1e-4·loss, final weights,
/// bias within 1e-3 + 1e-4 relative (30 full-batch steps of size 4N/λ_max), α within
/// 2e-5 + 2e-6 relative (its steps are small on this separable set), the
/// validation accuracy of every epoch equal.
#[test]
fn lp_plus_plus_matches_the_reference() {
    let f = fixture();
    let task = task(&f);
    let k = task.classes();
    let feats = task.training_views()[0].normalized();
    for r in f["lp_plus_plus"].as_array().unwrap() {
        let opts = LpPlusPlusOptions {
            epochs: r["epochs"].as_u64().unwrap() as usize,
            alpha_every: r["alpha_every"].as_u64().unwrap() as usize,
            accumulate_alpha_grad: r["accumulate_alpha_grad"].as_bool().unwrap(),
            ..Default::default()
        };
        let name = format!("accumulate={}", opts.accumulate_alpha_grad);
        let start = lpp::init(&feats, &task.train.labels, &task.text.weights, &opts).unwrap();
        assert_close(&name, &[start.lr_w], &[num(&r["lr_w"])], 0.0, 1e-5);
        assert_close(&name, &[start.lr_alpha], &[num(&r["lr_alpha"])], 0.0, 1e-5);
        assert_close(&name, &[start.alpha], &[num(&r["init_alpha"])], 0.0, 1e-5);
        assert_close(
            &name,
            &start.weight.data,
            &floats(&r["init_weight"]),
            1e-6,
            1e-6,
        );
        let mut head = LpPlusPlusHead {
            weight: start.weight.clone(),
            bias: floats(&r["init_bias"]),
            alpha: vec![start.alpha; k],
            text: task.text.weights.clone(),
        };
        let mut val_acc = Vec::new();
        let losses = lpp::train(
            &mut head,
            &feats,
            &task.train.labels,
            start.lr_w,
            start.lr_alpha,
            &opts,
            &mut |_, h| {
                val_acc.push(eval::accuracy(
                    &h.logits(&task.val.features),
                    &task.val.labels,
                ))
            },
            &mut |_| {},
        )
        .unwrap();
        assert_close(&name, &losses, &floats(&r["losses"]), 1e-4, 1e-4);
        assert_close(&name, &head.weight.data, &floats(&r["weight"]), 1e-3, 1e-4);
        assert_close(&name, &head.bias, &floats(&r["bias"]), 1e-3, 1e-4);
        // α moves by ~1e-3 with the fresh gradient: a tolerance far below that.
        assert_close(&name, &head.alpha, &floats(&r["alpha"]), 2e-5, 2e-6);
        assert_eq!(
            val_acc,
            floats(&r["val_accuracy"]),
            "{name}: validation accuracy"
        );
    }
}

/// CLAP with no constraint (ZS-LP), the released fixed multipliers and the adaptive outer
/// step: multipliers within 1e-5, per-epoch loss within 1e-4 + 1e-4·loss, prototypes within
/// 1e-4 + 1e-4 relative, test logits within 1e-3 + 1e-5 relative.
#[test]
fn clap_training_matches_the_reference() {
    let f = fixture();
    let task = task(&f);
    let (pool, labels) = clap::pool(&task);
    for r in f["clap"].as_array().unwrap() {
        let constraint = match r["constraint"].as_str().unwrap() {
            "none" => Constraint::None,
            "l2" => Constraint::L2,
            _ => Constraint::Adaptive,
        };
        let name = constraint.as_str();
        let opts = ClapOptions {
            constraint,
            lr: num(&r["lr"]),
            epochs: r["epochs"].as_u64().unwrap() as usize,
            batch_size: r["batch_size"].as_u64().unwrap() as usize,
            text_norm: num(&r["text_norm"]),
            ..Default::default()
        };
        // The reference trains from the mean un-normalised prompt embedding, which the fixture
        // writes as the unit text embedding times `text_norm`: what `fit` starts from.
        let mut mean = task.text.weights.clone();
        mean.data.iter_mut().for_each(|v| *v *= opts.text_norm);
        let mut model = ClapModel::from_prompt_mean(&task, &pool, &labels, constraint, &mean);
        assert_close(
            name,
            &model.multipliers,
            &floats(&r["multipliers"]),
            1e-5,
            0.0,
        );
        let orders: Vec<Vec<usize>> = r["orders"].as_array().unwrap().iter().map(usizes).collect();
        let losses = clap::train(
            &mut model,
            &pool,
            &labels,
            task.train.labels.len(),
            &opts,
            &mut |e| orders[e].clone(),
            &mut |_| {},
        )
        .unwrap();
        assert_close(name, &losses, &floats(&r["losses"]), 1e-4, 1e-4);
        assert_close(
            name,
            &model.prototypes.data,
            &floats(&r["prototypes"]),
            1e-4,
            1e-4,
        );
        assert_close(
            name,
            &model.multipliers,
            &floats(&r["final_multipliers"]),
            1e-4,
            1e-4,
        );
        let logits = model.head().logits(&task.test.features);
        assert_close(name, &logits.data, &floats(&r["test_logits"]), 1e-3, 1e-5);
    }
}

/// Switching the adaptation off gives the zero-shot logits: APE with α = 0, CLAP before any
/// epoch.
#[test]
fn no_adaptation_is_zero_shot() {
    let task = task(&fixture());
    let zs = cosine_logits(
        &task.test.features,
        &task.text.weights,
        task.text.logit_scale,
    );
    let (mut head, _) = ape::build(
        &task,
        &ApeOptions {
            channels_free: 12,
            ..Default::default()
        },
    )
    .unwrap();
    head.alpha = 0.0;
    assert_close(
        "APE α = 0",
        &head.logits(&task.test.features).data,
        &zs.data,
        1e-4,
        1e-6,
    );
    let (pool, labels) = clap::pool(&task);
    let model = ClapModel::new(&task, &pool, &labels, Constraint::L2, 3.0);
    assert_close(
        "CLAP start",
        &model.head().logits(&task.test.features).data,
        &zs.data,
        1e-4,
        1e-6,
    );
}

/// Every new method fits through `fit`, beats chance on the fixture's test set, and its head
/// survives a save/load round trip with identical logits.
#[test]
fn new_methods_fit_save_and_reload() {
    let task = task(&fixture());
    let small_ape = ApeOptions {
        channels_free: 16,
        channels_trained: 16,
        search_steps: (20, 5, 4),
        epochs: 5,
        batch_size: 8,
        ..Default::default()
    };
    let methods = [
        Method::new(Ape(small_ape.clone())),
        Method::new(ApeT(small_ape)),
        Method::new(LpPlusPlusOptions {
            epochs: 40,
            ..Default::default()
        }),
        Method::new(ClapOptions {
            epochs: 10,
            batch_size: 8,
            lr: 0.01,
            prompt_mean: false,
            text_norm: 4.0,
            ..Default::default()
        }),
    ];
    let dir = tempfile::tempdir().unwrap();
    let chance = 100.0 / task.classes() as f32;
    for m in &methods {
        let fitted = fit(m, &task, &mut |_| {}).unwrap();
        let (_, test) = evaluate(&fitted.head, &task);
        assert!(test > chance + 10.0, "{}: test accuracy {test}", m.name());
        let path = dir.path().join(format!("{}.safetensors", m.name()));
        let info = HeadInfo {
            model: "fixture".into(),
            classnames: task.classnames.clone(),
            templates: vec!["a photo of a {}.".into()],
            method: m.name().into(),
            options: serde_json::json!({ "options": m.describe() }).to_string(),
            model_fingerprint: Some("0123".into()),
        };
        head::save(&path, &fitted.head, &info).unwrap();
        let (loaded, loaded_info) = head::load(&path).unwrap();
        assert_eq!(loaded_info, info);
        assert_eq!(
            loaded.logits(&task.test.features).data,
            fitted.head.logits(&task.test.features).data,
            "{}: reloaded head",
            m.name()
        );
        assert_eq!(loaded.kind(), fitted.head.kind());
    }
}

/// Bad options are errors naming the option, never a panic.
#[test]
fn bad_options_are_errors() {
    let task = task(&fixture());
    let too_many = ApeOptions {
        channels_free: 33,
        ..Default::default()
    };
    let err = fit(&Method::new(Ape(too_many)), &task, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("channels"), "{err}");
    let err = fit(
        &Method::new(ClapOptions {
            text_norm: 0.0,
            ..Default::default()
        }),
        &task,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("text-norm"), "{err}");
}

/// CLAP starts from the task's mean un-normalised prompt embeddings, as the reference does;
/// without them (text features of an older cache) it is refused, naming what to run.
#[test]
fn clap_starts_from_the_mean_prompt_embedding() {
    let mut task = task(&fixture());
    let opts = ClapOptions {
        epochs: 3,
        batch_size: 8,
        lr: 0.01,
        ..Default::default()
    };
    let err = fit(&Method::new(opts.clone()), &task, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("extract"), "{err}");
    let mut mean = task.text.weights.clone();
    mean.data.iter_mut().for_each(|v| *v *= 4.0);
    task.text_mean = Some(mean);
    let from_mean = fit(&Method::new(opts.clone()), &task, &mut |_| {}).unwrap();
    let scaled = ClapOptions {
        prompt_mean: false,
        text_norm: 4.0,
        ..opts
    };
    let from_unit = fit(&Method::new(scaled), &task, &mut |_| {}).unwrap();
    // The same start: the same training, up to the rounding of the scaled rows.
    assert_close("losses", &from_mean.losses, &from_unit.losses, 1e-5, 1e-5);
}

/// The classifier's mean prompt embedding is the plain mean over templates of the projected,
/// un-normalised text embeddings (`_get_base_text_features`), and the unit classifier is
/// unchanged by computing it.
#[test]
fn the_mean_prompt_embedding_is_the_mean_of_unnormalised_embeddings() {
    use clip_adapter::zero_shot::ZeroShotClassifier;
    let files =
        clip_adapter::clip::ModelFiles::in_dir(&common::fixture("models/tiny-clip")).unwrap();
    let clip = clip_adapter::Clip::load(&files, &candle_core::Device::Cpu).unwrap();
    let labels = ["red square".to_string(), "blue circle".to_string()];
    let templates = [
        "a photo of a {}.".to_string(),
        "a drawing of the {}.".to_string(),
    ];
    let zs = ZeroShotClassifier::build(&clip, &labels, &templates, &mut |_, _| {}).unwrap();
    let mean: Vec<f32> = zs.mean.flatten_all().unwrap().to_vec1().unwrap();
    let e = mean.len() / 2;
    for (k, label) in labels.iter().enumerate() {
        let prompts: Vec<String> = templates.iter().map(|t| t.replace("{}", label)).collect();
        let raw: Vec<f32> = clip
            .encode_text(&prompts)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for j in 0..e {
            let want = (raw[j] + raw[e + j]) / 2.0;
            assert!(
                (mean[k * e + j] - want).abs() <= 1e-5,
                "class {k} channel {j}"
            );
        }
    }
    let norm: f32 = mean[..e].iter().map(|v| v * v).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() > 1e-3, "not a unit vector: {norm}");
}
