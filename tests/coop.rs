//! CoOp against the PyTorch reference of scripts/fixtures/coop.py (CoOp's PromptLearner and
//! TextEncoder over the full 77-token context, SGD + warm-up cosine), on the `transformers`
//! tiny CLIP (QuickGELU) and an open_clip one (GELU): per-epoch loss within 1e-4 relative, final
//! context within 1e-4, test accuracy within one image. Then the saved head and bad input.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use clip_adapter::clip::ModelFiles;
use clip_adapter::methods::coop::prompt_learner::initial_context;
use clip_adapter::methods::coop::{
    self, ClassPosition, CoopError, CoopHead, CoopOptions, PromptModel,
};
use clip_adapter::methods::{
    eval, zero_shot::ZeroShot, FewShotTask, LabelledSet, Matrix, TextClassifier,
};

use crate::common::{fixture, usizes};

struct Case {
    spec: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

fn case(name: &str) -> Case {
    let spec = std::fs::read_to_string(fixture(&format!("coop/{name}.json"))).unwrap();
    let tensors =
        candle_core::safetensors::load(fixture(&format!("coop/{name}.safetensors")), &Device::Cpu)
            .unwrap();
    Case {
        spec: serde_json::from_str(&spec).unwrap(),
        tensors,
    }
}

fn matrix(t: &Tensor) -> Matrix {
    let (rows, cols) = t.dims2().unwrap();
    Matrix {
        rows,
        cols,
        data: t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    }
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect()
}

fn model(rel: &str) -> PromptModel {
    let files = ModelFiles::in_dir(&fixture(rel)).unwrap();
    PromptModel::load(&files, rel, &Device::Cpu).unwrap()
}

fn task(c: &Case) -> FewShotTask {
    let views = c.tensors["train_views"].clone();
    let v = views.dim(0).unwrap();
    let train_views: Vec<Matrix> = (0..v).map(|i| matrix(&views.get(i).unwrap())).collect();
    let text = matrix(&c.tensors["text_final"]);
    FewShotTask {
        pre_projection: None,
        text_mean: None,
        classnames: strings(&c.spec["classnames"]),
        train: LabelledSet {
            features: train_views[0].clone(),
            labels: usizes(&c.spec["labels"]),
        },
        train_views,
        val: LabelledSet {
            features: Matrix::zeros(0, text.cols),
            labels: Vec::new(),
        },
        test: LabelledSet {
            features: matrix(&c.tensors["test"]),
            labels: usizes(&c.spec["test_labels"]),
        },
        text: TextClassifier {
            weights: text,
            logit_scale: 1.0,
            logit_bias: None,
        },
    }
}

fn replay(name: &str) {
    let c = case(name);
    let s = &c.spec;
    let m = model(s["model"].as_str().unwrap());
    let task = task(&c);
    let csc = s["csc"].as_bool().unwrap();
    let position: ClassPosition = s["position"].as_str().unwrap().parse().unwrap();
    let n_ctx = s["n_ctx"].as_u64().unwrap() as usize;
    let mut context = flat(&c.tensors["ctx_init"]);
    if let Some(init) = s["ctx_init"].as_str() {
        // The phrase's token embeddings, computed on our side, are the reference's start.
        let (ours, m_ctx) =
            initial_context(&m.encoder, &m.tokenizer, Some(init), 16, None, 1).unwrap();
        assert_eq!(m_ctx, n_ctx);
        let d = ours
            .iter()
            .zip(&context)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d < 1e-6, "{name}: ctx_init embeddings differ by {d}");
        context = ours;
    }
    let learner = m.learner(&task.classnames, n_ctx, csc, position).unwrap();
    let opts = CoopOptions {
        n_ctx,
        csc,
        position,
        lr: s["lr"].as_f64().unwrap() as f32,
        batch_size: s["batch"].as_u64().unwrap() as usize,
        ..CoopOptions::default()
    };
    let epochs = s["epochs"].as_u64().unwrap() as usize;
    let orders: Vec<Vec<usize>> = s["orders"].as_array().unwrap().iter().map(usizes).collect();
    let mut order = |e: usize| orders[e].clone();
    let losses = coop::train(
        &m,
        &learner,
        &mut context,
        &task,
        &opts,
        epochs,
        &mut order,
        &mut |_| {},
    )
    .unwrap();
    let want = flat(&c.tensors["epoch_losses"]);
    assert_eq!(losses.len(), want.len());
    for (e, (l, w)) in losses.iter().zip(&want).enumerate() {
        let rel = (l - w).abs() / w.abs();
        println!("{name} epoch {e}: loss {l:.6} vs {w:.6} (rel {rel:.1e})");
        assert!(rel < 1e-4, "{name} epoch {e}: loss {l} vs {w}");
    }
    let want_ctx = flat(&c.tensors["ctx_final"]);
    let d = context
        .iter()
        .zip(&want_ctx)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("{name}: final context max abs diff {d:.2e}");
    assert!(d < 1e-4, "{name}: final context differs by {d}");
    // The context must have moved, or the comparison above proves nothing.
    let moved = flat(&c.tensors["ctx_init"])
        .iter()
        .zip(&want_ctx)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        moved > 1e-2,
        "{name}: the reference context barely moved ({moved})"
    );
    let text = m.classifier(&learner, &context).unwrap();
    let logits = ZeroShot::new(&text).logits(&task.test.features);
    let acc = eval::accuracy(&logits, &task.test.labels);
    let hits = (acc / 100.0 * task.test.labels.len() as f32).round() as i64;
    let want_hits = s["test_hits"].as_i64().unwrap();
    println!("{name}: test hits {hits} vs {want_hits}");
    assert!(
        (hits - want_hits).abs() <= 1,
        "{name}: {hits} vs {want_hits}"
    );
}

#[test]
fn coop_matches_pytorch_transformers_unified_end() {
    replay("hf-unified-end");
}

#[test]
fn coop_matches_pytorch_transformers_csc_middle() {
    replay("hf-csc-middle");
}

#[test]
fn coop_matches_pytorch_open_clip_init_middle() {
    replay("openclip-init-middle");
}

#[test]
fn coop_matches_pytorch_open_clip_csc_front() {
    replay("openclip-csc-front");
}

/// Classes in chunks (a no-graph forward for the loss's gradient, then each chunk's backward)
/// give the gradient of one backward over all classes, unified and class-specific context.
#[test]
fn coop_gradient_in_class_chunks_equals_the_whole_backward() {
    for name in ["hf-unified-end", "openclip-csc-front"] {
        let c = case(name);
        let s = &c.spec;
        let m = model(s["model"].as_str().unwrap());
        let task = task(&c);
        let n_ctx = s["n_ctx"].as_u64().unwrap() as usize;
        let csc = s["csc"].as_bool().unwrap();
        let position: ClassPosition = s["position"].as_str().unwrap().parse().unwrap();
        let learner = m.learner(&task.classnames, n_ctx, csc, position).unwrap();
        let k = learner.classes();
        assert!(k >= 3, "{name}: {k} classes");
        let context = flat(&c.tensors["ctx_init"]);
        let (x, y) = (&task.train.features, &task.train.labels);
        let (loss, whole) = coop::loss_and_grad_in_chunks(&m, &learner, &context, x, y, k).unwrap();
        let scale = whole.iter().fold(0f32, |a, g| a.max(g.abs()));
        assert!(scale > 0.0, "{name}: zero gradient");
        for chunk in [1, 2] {
            let (l, g) =
                coop::loss_and_grad_in_chunks(&m, &learner, &context, x, y, chunk).unwrap();
            assert!(
                (l - loss).abs() <= 1e-6 * loss.abs().max(1.0),
                "{name}: loss {l} vs {loss}"
            );
            let d = g
                .iter()
                .zip(&whole)
                .fold(0f32, |a, (p, q)| a.max((p - q).abs()));
            assert!(
                d <= 1e-5 * scale,
                "{name}, chunks of {chunk}: gradients differ by {d} (max {scale})"
            );
        }
    }
}

#[test]
fn coop_fit_saves_a_head_that_reencodes_to_the_same_classifier() {
    let c = case("hf-unified-end");
    let m = model("models/tiny-clip");
    let task = task(&c);
    let opts = CoopOptions {
        n_ctx: 4,
        epochs: Some(2),
        batch_size: 8,
        ..CoopOptions::default()
    };
    let fitted = coop::fit(&task, &m, &opts, &mut |_| {}).unwrap();
    assert_eq!(fitted.fitted.losses.len(), 2);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("coop.safetensors");
    fitted.head.save(&path).unwrap();
    let (head, text) = coop::load_classifier(&path, &m).unwrap();
    assert_eq!(head, fitted.head);
    let (val, test) = coop::evaluate(&fitted, &task);
    assert!(val.is_nan());
    let again = eval::accuracy(
        &ZeroShot::new(&text).logits(&task.test.features),
        &task.test.labels,
    );
    assert_eq!(again, test);
    // Seeded: the same options give the same context.
    let twice = coop::fit(&task, &m, &opts, &mut |_| {}).unwrap();
    assert_eq!(twice.head.context, fitted.head.context);

    // The head on another model: a clear error naming both.
    let other = model("coop/tiny-openclip-gelu");
    let err = coop::load_classifier(&path, &other).unwrap_err();
    assert!(matches!(err, CoopError::OtherModel { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("models/tiny-clip") && msg.contains("coop/tiny-openclip-gelu"),
        "{msg}"
    );
}

#[test]
fn coop_rejects_bad_input_and_writes_nothing() {
    let c = case("hf-unified-end");
    let m = model("models/tiny-clip");
    let task = task(&c);
    let fit = |opts: CoopOptions| coop::fit(&task, &m, &opts, &mut |_| {});
    let err = fit(CoopOptions {
        n_ctx: 0,
        ..CoopOptions::default()
    })
    .err()
    .unwrap();
    assert!(matches!(err, CoopError::NoContext), "{err}");
    assert!(err.to_string().contains("n_ctx"));

    let long = vec!["word"; 80].join(" ");
    let err = fit(CoopOptions {
        ctx_init: Some(long),
        ..CoopOptions::default()
    })
    .err()
    .unwrap();
    assert!(
        matches!(
            err,
            CoopError::InitTooLong {
                tokens: 80,
                context: 77,
                ..
            }
        ),
        "{err}"
    );

    // 72 context vectors leave 5 positions: "red panda bear." needs 4 plus start and end.
    let err = fit(CoopOptions {
        n_ctx: 72,
        epochs: Some(1),
        ..CoopOptions::default()
    })
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(
        matches!(err, CoopError::ClassTooLong { ref name, context: 77, .. } if name == "red panda bear"),
        "{msg}"
    );
    assert!(
        msg.contains("class 3") && msg.contains("red panda bear"),
        "{msg}"
    );

    // A bad head file: an error naming the file; saving into a missing folder leaves nothing.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.safetensors");
    std::fs::write(&bad, b"not a head").unwrap();
    let err = CoopHead::load(&bad).unwrap_err();
    assert!(err.to_string().contains("bad.safetensors"), "{err}");
    let head = CoopHead {
        model: "m".into(),
        fingerprint: "f".into(),
        classnames: vec!["a".into()],
        n_ctx: 1,
        csc: false,
        position: ClassPosition::End,
        context: vec![0.0; 32],
        width: 32,
        options: String::new(),
    };
    let missing = dir.path().join("no/such/dir/head.safetensors");
    assert!(head.save(&missing).is_err());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}
