//! Our CLIP-LoRA variant `--lora-last K` (position `last:K`): updates in the last K layers only,
//! the class prompts' states entering them computed once. Its text side is exact: the same
//! losses, updates and logits as the full-depth run with updates in the same layers.

use candle_core::{Device, Tensor};
use clip_adapter::clip::train::lora::{LoraClip, LoraOptions, LoraPosition};
use clip_adapter::clip::{Clip, ModelFiles};
use clip_adapter::methods::clip_lora::{LoraTrainer, StepImages, StepText};

use crate::common::{
    assert_close, assert_fails_with, check_central_differences, cli_in, fixture, ok,
};

/// Relative difference allowed between the cached and the full-depth losses, and absolute
/// difference for the updates and logits (the differences measured are printed).
const LOSS_TOL: f64 = 1e-5;
const MATRIX_TOL: f32 = 1e-6;
const LOGIT_TOL: f32 = 1e-5;

/// tiny-clip: two text layers and two image layers, so `last:1` leaves one frozen below.
fn model_files() -> ModelFiles {
    ModelFiles::in_dir(&fixture("models/tiny-clip")).unwrap()
}

fn options(encoder: &str, dropout: f32) -> LoraOptions {
    LoraOptions {
        dropout,
        encoder: encoder.parse().unwrap(),
        position: LoraPosition::Last(1),
        ..LoraOptions::default()
    }
}

/// Three class prompts of different lengths, padded to the context, as `prompt_ids` makes them.
fn prompts(model: &LoraClip) -> Vec<Vec<u32>> {
    let c = &model.config().text;
    let end = (c.vocab_size - 1) as u32;
    [2usize, 5, 3]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let mut r = vec![end - 1];
            r.extend((0..n).map(|j| (7 + 31 * (i + 2 * j)) as u32 % (end - 1)));
            r.push(end);
            r.resize(c.context_length, 0);
            r
        })
        .collect()
}

/// Deterministic values in [-1, 1], different for each `salt`.
fn wave(shape: &[usize], salt: f32) -> Tensor {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|i| (i as f32 * 0.731 + salt).sin()).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// A step's images: pixels when the image tower is adapted, the frozen tower's features of
/// them otherwise.
fn images(model: &LoraClip, frozen: &Clip, step: usize, batch: usize) -> Tensor {
    let s = model.config().vision.image_size();
    let px = wave(&[batch, 3, s, s], step as f32 * 1.3);
    match model.options().encoder.vision() {
        true => px,
        false => frozen.encode_image(&px).unwrap(),
    }
}

fn step_images<'a>(model: &LoraClip, x: &'a Tensor) -> StepImages<'a> {
    match model.options().encoder.vision() {
        true => StepImages::Pixels(x),
        false => StepImages::Features(x),
    }
}

/// Trains the same model twice from the same seed, once through the whole text tower at every
/// step and once from the cached states entering the last layer, with dropout on (the masks
/// come from one stream per tower, which the frozen layer never draws from).
#[test]
fn cached_text_states_train_as_the_full_depth_run() {
    let frozen = Clip::load(&model_files(), &Device::Cpu).unwrap();
    for encoder in ["text", "both"] {
        let opts = options(encoder, 0.25);
        let full = LoraClip::load(&model_files(), &opts, 7, &Device::Cpu).unwrap();
        let cached = LoraClip::load(&model_files(), &opts, 7, &Device::Cpu).unwrap();
        let ids = prompts(&full);
        let prefix = cached.text_prefix(&ids).unwrap();
        assert_eq!(
            prefix.start(),
            1,
            "{encoder}: the first text layer is frozen"
        );
        for (name, _) in full.vars() {
            assert!(
                name.contains("layers.1."),
                "{encoder}: {name} is not in the last layer"
            );
        }
        let steps = 6;
        let mut a = LoraTrainer::new(&full, 0.02, steps);
        let mut b = LoraTrainer::new(&cached, 0.02, steps);
        full.set_training(Some(3)).unwrap();
        cached.set_training(Some(3)).unwrap();
        for s in 0..steps {
            let x = images(&full, &frozen, s, 4);
            let labels = [0u32, 2, 1, (s % 3) as u32];
            let la = a
                .step(step_images(&full, &x), StepText::Ids(&ids), &labels)
                .unwrap();
            let lb =
                (b.step(step_images(&cached, &x), StepText::Prefix(&prefix), &labels)).unwrap();
            let rel = (la as f64 - lb as f64).abs() / (la.abs() as f64).max(1e-3);
            println!("{encoder} step {s}: full {la:.7} cached {lb:.7} (rel {rel:.1e})");
            assert!(rel <= LOSS_TOL, "{encoder} step {s}: {la} vs {lb}");
        }
        for ((name, va), (_, vb)) in full.vars().iter().zip(cached.vars()) {
            let what = format!("{encoder} {name}");
            assert_close(&what, va.as_tensor(), vb.as_tensor(), MATRIX_TOL);
        }
        full.set_training(None).unwrap();
        cached.set_training(None).unwrap();
        let x = images(&full, &frozen, 100, 5);
        let la = a
            .logits(step_images(&full, &x), StepText::Ids(&ids))
            .unwrap();
        let lb = b
            .logits(step_images(&cached, &x), StepText::Prefix(&prefix))
            .unwrap();
        assert_close(&format!("{encoder} test logits"), &la, &lb, LOGIT_TOL);
    }
}

/// Without text updates the whole text tower is frozen: the cached states are its output.
#[test]
fn an_unadapted_text_tower_is_run_once() {
    let frozen = Clip::load(&model_files(), &Device::Cpu).unwrap();
    let model = LoraClip::load(&model_files(), &options("vision", 0.0), 7, &Device::Cpu).unwrap();
    let ids = prompts(&model);
    let prefix = model.text_prefix(&ids).unwrap();
    assert_eq!(prefix.start(), model.config().text.layers);
    let want = frozen.encode_tokens(&ids).unwrap();
    assert_close(
        "frozen text features",
        &model.encode_prefix(&prefix).unwrap(),
        &want,
        1e-5,
    );
}

fn loss_of(model: &LoraClip, x: &Tensor, text: StepText, labels: &[u32]) -> Tensor {
    let trainer = LoraTrainer::new(model, 0.0, 1);
    let logits = trainer.logits(StepImages::Features(x), text).unwrap();
    let targets = Tensor::from_slice(labels, labels.len(), &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(&logits, &targets).unwrap()
}

/// The last layer's updates get, through the cached states, the gradient central differences
/// give (B started away from zero, so that A's gradient is not zero).
#[test]
fn gradients_through_the_cached_states_match_finite_differences() {
    let frozen = Clip::load(&model_files(), &Device::Cpu).unwrap();
    let model = LoraClip::load(&model_files(), &options("text", 0.0), 5, &Device::Cpu).unwrap();
    for (i, (_, var)) in model.vars().iter().enumerate() {
        var.set(&(wave(var.dims(), i as f32) * 0.05).unwrap())
            .unwrap();
    }
    let ids = prompts(&model);
    let prefix = model.text_prefix(&ids).unwrap();
    let x = images(&model, &frozen, 0, 3);
    let labels = [0u32, 2, 1];
    let grads = loss_of(&model, &x, StepText::Prefix(&prefix), &labels)
        .backward()
        .unwrap();
    let checked = check_central_differences(&model.vars(), &grads, || {
        loss_of(&model, &x, StepText::Prefix(&prefix), &labels)
            .to_scalar::<f32>()
            .unwrap()
    });
    assert_eq!(
        checked,
        3 * 2 * 3,
        "q, k, v of one layer, A and B, three entries each"
    );
}

#[test]
fn a_count_the_tower_cannot_take_is_refused_with_its_limit() {
    for k in [0usize, 3] {
        let opts = LoraOptions {
            position: LoraPosition::Last(k),
            ..options("text", 0.0)
        };
        let err = LoraClip::load(&model_files(), &opts, 1, &Device::Cpu).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains(&format!("last {k} layers")), "{msg}");
        assert!(
            msg.contains("has 2 layers") && msg.contains("from 1 to 2"),
            "{msg}"
        );
    }
    assert_eq!("last:2".parse::<LoraPosition>(), Ok(LoraPosition::Last(2)));
    assert_eq!(LoraPosition::Last(2).to_string(), "last:2");
    assert!("last:0".parse::<LoraPosition>().is_err());
    assert!("last:x".parse::<LoraPosition>().is_err());
}

/// `fit --lora-last 1` against `--lora-position half-up` (the same last layer of tiny-clip's
/// two, run at full depth): the same losses, updates and accuracy; the head says `last:1`,
/// `predict` scores as the fit did, and `merge --lora` folds its three updates.
#[test]
fn fit_with_lora_last_gives_the_full_depth_row_and_its_head_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    crate::features::image_folder(&tmp.path().join("data"), 3, 8);
    let dataset = crate::common::extract_two_shots(tmp.path());
    let fit = |extra: &[&str]| {
        let mut args = vec!["fit", "--method", "clip-lora", "--dataset", &dataset];
        args.extend_from_slice(&["--shots", "2", "--seed", "1", "--cache", "cache"]);
        args.extend_from_slice(&["--iters-per-shot", "5", "--lr", "0.01", "--json"]);
        args.extend_from_slice(extra);
        let out = cli_in(tmp.path(), &args);
        serde_json::from_str::<serde_json::Value>(&ok(&out)).unwrap()
    };
    let text = ["--lora-encoder", "text"];
    let last = fit(&[
        &text[..],
        &["--lora-last", "1", "--save", "last.safetensors"],
    ]
    .concat());
    let full = fit(&[
        &text[..],
        &["--lora-position", "half-up", "--save", "full.safetensors"],
    ]
    .concat());
    let (a, b) = (
        crate::common::floats(&last["epoch_losses"]),
        crate::common::floats(&full["epoch_losses"]),
    );
    assert_eq!(a.len(), 10, "{last}");
    for (s, (x, y)) in a.iter().zip(&b).enumerate() {
        let rel = ((x - y).abs() / y.abs().max(1e-3)) as f64;
        println!("fit epoch {s}: last:1 {x:.7} half-up {y:.7} (rel {rel:.1e})");
        assert!(rel <= LOSS_TOL, "epoch {s}: {x} vs {y}");
    }
    assert_eq!(last["test_accuracy"], full["test_accuracy"]);
    let options = last["options"].as_str().unwrap_or_default();
    assert!(options.contains("position=last:1"), "{last}");

    let heads: Vec<_> = ["last", "full"]
        .iter()
        .map(|h| {
            candle_core::safetensors::load(
                tmp.path().join(format!("{h}.safetensors")),
                &Device::Cpu,
            )
            .unwrap()
        })
        .collect();
    let mut updates = 0;
    for (name, t) in heads[0].iter().filter(|(n, _)| n.contains("lora_")) {
        assert_close(&format!("fit {name}"), t, &heads[1][name], MATRIX_TOL);
        updates += 1;
    }
    assert_eq!(updates, 6, "A and B of q, k, v in one layer");
    let meta = std::fs::read(tmp.path().join("last.safetensors")).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&meta).unwrap();
    let position = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get("lora_position").cloned());
    assert_eq!(position.as_deref(), Some("last:1"));

    let (accuracy, ..) =
        crate::common::predict_test_images(tmp.path(), (&dataset, None), "last.safetensors");
    let reported = last["test_accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - reported).abs() < 1e-3,
        "predict {accuracy} vs fit {reported}"
    );

    let merged = ok(&cli_in(
        tmp.path(),
        &[
            "merge",
            "--lora",
            "last.safetensors",
            "--out",
            "merged",
            "--json",
        ],
    ));
    assert!(
        merged.contains("\"merged\":3"),
        "q, k, v of the last text layer: {merged}"
    );
}

#[test]
fn bad_lora_last_values_are_refused_naming_the_value_and_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    crate::features::image_folder(&tmp.path().join("data"), 3, 8);
    let dataset = crate::common::extract_two_shots(tmp.path());
    let fit = |extra: &[&str]| {
        let mut args = vec![
            "fit",
            "--method",
            "clip-lora",
            "--dataset",
            &dataset,
            "--shots",
            "2",
        ];
        args.extend_from_slice(&[
            "--cache",
            "cache",
            "--iters-per-shot",
            "1",
            "--lora-encoder",
            "text",
        ]);
        args.extend_from_slice(extra);
        cli_in(tmp.path(), &args)
    };
    let zero = fit(&["--lora-last", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    assert_fails_with(&zero, &["lora-last", "`0`", "at least 1"]);
    assert_fails_with(
        &fit(&["--lora-last", "3"]),
        &["last 3 layers", "text tower has 2 layers", "from 1 to 2"],
    );
    assert_fails_with(
        &fit(&["--lora-last", "1", "--lora-position", "up"]),
        &["lora-last", "lora-position", "together"],
    );
    let named = fit(&["--lora-position", "last:1"]);
    assert_eq!(named.status.code(), Some(2));
    assert_fails_with(&named, &["last:1"]);
}

/// `--lora-views` (ours): the image side on fixed views. With `--lora-last 1` the tokens
/// entering the last image layer are cached per view, and the rows equal those of the same
/// views run from the first layer (`half-up`, tiny-clip's last layer of two); view `v` is the
/// crop step `v` of the fresh-crop rule draws, so one view gives the fresh-crop run's first
/// step.
#[test]
fn fixed_views_cache_the_image_tokens_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    crate::features::image_folder(&tmp.path().join("data"), 3, 8);
    let dataset = crate::common::extract_two_shots(tmp.path());
    let fit = |extra: &[&str]| {
        let mut args = vec!["fit", "--method", "clip-lora", "--dataset", &dataset];
        args.extend_from_slice(&["--shots", "2", "--seed", "1", "--cache", "cache"]);
        args.extend_from_slice(&["--iters-per-shot", "4", "--lr", "0.01", "--json"]);
        args.extend_from_slice(extra);
        let out = cli_in(tmp.path(), &args);
        serde_json::from_str::<serde_json::Value>(&ok(&out)).unwrap()
    };
    let both = ["--lora-encoder", "both", "--lora-views", "2"];
    let last = fit(&[&both[..], &["--lora-last", "1"]].concat());
    let full = fit(&[&both[..], &["--lora-position", "half-up"]].concat());
    let floats = crate::common::floats;
    let (a, b) = (floats(&last["epoch_losses"]), floats(&full["epoch_losses"]));
    assert_eq!(a.len(), 8, "{last}");
    for (s, (x, y)) in a.iter().zip(&b).enumerate() {
        let rel = ((x - y).abs() / y.abs().max(1e-3)) as f64;
        println!("views epoch {s}: last:1 {x:.7} half-up {y:.7} (rel {rel:.1e})");
        assert!(rel <= LOSS_TOL, "epoch {s}: {x} vs {y}");
    }
    assert_eq!(last["test_accuracy"], full["test_accuracy"]);
    let options = last["options"].as_str().unwrap_or_default();
    assert!(
        options.contains("position=last:1") && options.contains("views=2"),
        "{last}"
    );

    let text = ["--lora-encoder", "text"];
    let one = floats(&fit(&[&text[..], &["--lora-views", "1"]].concat())["epoch_losses"]);
    let fresh = floats(&fit(&text)["epoch_losses"]);
    println!("one view {one:?}\nfresh crops {fresh:?}");
    assert!(
        (one[0] - fresh[0]).abs() <= 1e-6 * fresh[0].abs(),
        "{one:?} vs {fresh:?}"
    );
    assert_ne!(one, fresh, "later steps see other crops");

    let zero = cli_in(
        tmp.path(),
        &[
            "fit",
            "--method",
            "clip-lora",
            "--dataset",
            &dataset,
            "--cache",
            "cache",
            "--lora-views",
            "0",
        ],
    );
    assert_eq!(zero.status.code(), Some(2));
    assert_fails_with(&zero, &["lora-views", "`0`", "at least 1"]);
}
