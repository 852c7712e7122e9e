//! One property test over the method registry: every registered method fits a toy task (with
//! and without a validation set), saves and reloads its head with identical predictions, has a
//! figure colour of its own, documents its validation-free rule, re-aims its head at other
//! classes exactly when its card says it can (base-to-new), and is listed by `run --help`.
//! A method added to the registry is checked here without a line of this file changing.

use candle_core::Device;
use clip_adapter::clip::ModelFiles;
use clip_adapter::experiment::Validation;
use clip_adapter::methods::coop::{CoopHead, PromptModel};
use clip_adapter::methods::head::{self, HeadInfo};
use clip_adapter::methods::linalg::seeded_rng;
use clip_adapter::methods::prolip::{PreProjection, Projection};
use clip_adapter::methods::zero_shot::ZeroShot;
use clip_adapter::methods::{
    eval, evaluate, FeatureSpace, FewShotTask, FitContext, LabelledSet, Matrix, MethodKind,
    MethodOverrides, Needs, NewClasses, TextClassifier,
};

use crate::common::{clip_adapter, fixture};

/// The model CoOp trains through: the `transformers` tiny CLIP.
fn text_tower() -> PromptModel {
    let files = ModelFiles::in_dir(&fixture("models/tiny-clip")).unwrap();
    PromptModel::load(&files, "models/tiny-clip", &Device::Cpu).unwrap()
}

/// Three well-separated classes in `d` dimensions, whose projected features come from
/// pre-projection ones through a known projection (for ProLIP), with the class directions as
/// the text classifier (so zero-shot is already good and training must not ruin it).
fn toy_task(d: usize) -> FewShotTask {
    let (k, w_in) = (3, d + 4);
    let mut rng = seeded_rng(11);
    let weight = Matrix::from_vec(d, w_in, rng.uniform_vec(d * w_in, 0.5)).unwrap();
    let centres = Matrix::from_vec(k, w_in, rng.uniform_vec(k * w_in, 3.0)).unwrap();
    let mut draw = |per_class: usize| {
        let labels: Vec<usize> = (0..k * per_class).map(|i| i % k).collect();
        let noise = rng.uniform_vec(labels.len() * w_in, 0.3);
        let mut x = Matrix::zeros(labels.len(), w_in);
        for (i, &y) in labels.iter().enumerate() {
            for c in 0..w_in {
                x.data[i * w_in + c] = centres.data[y * w_in + c] + noise[i * w_in + c];
            }
        }
        (x, labels)
    };
    let (train_x, train_y) = draw(4);
    let (view_x, _) = draw(4);
    let (val_x, val_y) = draw(2);
    let (test_x, test_y) = draw(5);
    let project = |x: &Matrix| x.matmul(false, &weight, true);
    let mut text = project(&centres);
    let text_mean = text.clone();
    text = text.normalized();
    FewShotTask {
        classnames: vec![
            "red square".into(),
            "blue circle".into(),
            "green bar".into(),
        ],
        train: LabelledSet {
            features: project(&train_x),
            labels: train_y,
        },
        train_views: vec![project(&train_x), project(&view_x)],
        val: LabelledSet {
            features: project(&val_x),
            labels: val_y,
        },
        test: LabelledSet {
            features: project(&test_x),
            labels: test_y,
        },
        text: TextClassifier {
            weights: text,
            logit_scale: 100.0,
            logit_bias: None,
        },
        pre_projection: Some(Box::new(PreProjection {
            projection: Projection { weight, bias: None },
            train: train_x.clone(),
            train_views: vec![train_x, view_x],
            val: val_x,
            test: test_x,
        })),
        text_mean: Some(text_mean),
    }
}

/// Short training: every method's schedule shortened where it takes the option.
fn short() -> MethodOverrides {
    MethodOverrides {
        epochs: Some(4),
        batch_size: Some(4),
        n_ctx: Some(2),
        ..MethodOverrides::default()
    }
}

#[test]
fn every_registered_method_fits_saves_and_reloads() {
    let model = text_tower();
    let task = toy_task(model.encoder.embed_dim());
    let chance = 100.0 / task.classes() as f32;
    let dir = tempfile::tempdir().unwrap();
    for &kind in MethodKind::all() {
        let card = kind.card();
        // Trained on images through the model: tests/clip_lora.rs fits, saves and reloads it.
        if card.needs == Needs::Images {
            continue;
        }
        let given = short();
        // Only the options the method takes, as the protocol gives them.
        let overrides = MethodOverrides {
            epochs: given.epochs.filter(|_| card.options.contains(&"epochs")),
            batch_size: given
                .batch_size
                .filter(|_| card.options.contains(&"batch-size")),
            n_ctx: given.n_ctx.filter(|_| card.options.contains(&"n-ctx")),
            ..MethodOverrides::default()
        };
        let method = overrides
            .method(kind, "toy", 1)
            .for_feature_width(task.dim());
        assert_eq!(method.name(), card.name);
        for validation in Validation::ALL {
            let t = validation.task(&task);
            let mut cx = FitContext {
                progress: &mut |_| {},
                text_tower: Some(&model),
                images: None,
            };
            let fit = method
                .fit(&t, &mut cx)
                .unwrap_or_else(|e| panic!("{} ({validation}): {e}", card.name));
            let (_, test) = evaluate(&fit.fitted.head, &t);
            assert!(test.is_finite(), "{}: test accuracy {test}", card.name);
            // CoOp starts from a random context and trains four epochs here.
            if card.needs != Needs::TextTower {
                assert!(
                    test > chance + 20.0,
                    "{} ({validation}): test accuracy {test}",
                    card.name
                );
            }
            assert_eq!(
                fit.prompt.is_some(),
                card.needs == Needs::TextTower,
                "{}: only a method trained through the text tower has a prompt head",
                card.name
            );
            if validation != Validation::Val {
                continue;
            }
            let path = dir.path().join(format!("{}.safetensors", card.name));
            let info = HeadInfo {
                model: "toy".into(),
                model_fingerprint: Some("0123".into()),
                classnames: t.classnames.clone(),
                templates: vec!["a photo of a {}.".into()],
                method: card.name.into(),
                options: serde_json::json!({ "options": method.describe() }).to_string(),
            };
            head::save(&path, &fit.fitted.head, &info).unwrap();
            let (loaded, loaded_info) = head::load(&path).unwrap();
            assert_eq!(loaded_info, info);
            assert_eq!(loaded.kind(), card.head.kind);
            let x = match loaded.input() {
                FeatureSpace::Projected | FeatureSpace::Adapted => &t.test.features,
                FeatureSpace::PreProjection => &t.pre_projection.as_ref().unwrap().test,
            };
            let (a, b) = (loaded.logits(x), fit.fitted.head.logits(x));
            assert_eq!(a.data, b.data, "{}: reloaded head", card.name);
            assert_eq!(
                eval::accuracy(&a, &t.test.labels),
                test,
                "{}: the reloaded head's accuracy",
                card.name
            );
            // Base-to-new: a head that scores classes from their text embeddings, re-aimed at
            // its own classes, is itself; the others cannot be re-aimed.
            let again = fit.fitted.head.for_classes(&t.text);
            match (card.new_classes, card.needs, again) {
                (NewClasses::FromText, Needs::TextTower, _) => {
                    let prompt = fit.prompt.as_ref().unwrap();
                    let text = prompt.text_classifier(&path, &model).unwrap();
                    let logits = ZeroShot::new(&text).logits(x);
                    assert_eq!(logits.data, b.data, "{}: prompt re-encoded", card.name);
                }
                (NewClasses::FromText, _, Some(h)) => {
                    let logits = h.logits(x);
                    assert_eq!(
                        logits.data, b.data,
                        "{}: re-aimed at its classes",
                        card.name
                    );
                }
                (NewClasses::No(why), _, None) => assert!(!why.is_empty()),
                (n, _, h) => panic!(
                    "{}: card says {n:?}, head re-aims: {}",
                    card.name,
                    h.is_some()
                ),
            }
            if let Some(prompt) = &fit.prompt {
                let path = dir.path().join(format!("{}-prompt.safetensors", card.name));
                prompt.save(&path).unwrap();
                let back = CoopHead::load(&path).unwrap();
                assert_eq!(back.context, prompt.context, "{}: prompt head", card.name);
            }
        }
    }
}

#[test]
fn every_registered_method_is_told_apart_documented_and_listed() {
    let methods_doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/methods.md")).unwrap();
    let help = String::from_utf8_lossy(&clip_adapter(&["run", "--help"]).stdout).into_owned();
    let cards: Vec<_> = MethodKind::all().iter().map(|k| k.card()).collect();
    for (i, card) in cards.iter().enumerate() {
        for other in &cards[i + 1..] {
            assert_ne!(card.name, other.name);
            assert_ne!(
                card.colour, other.colour,
                "{} and {}",
                card.name, other.name
            );
        }
        assert!(
            !card.without_validation.trim().is_empty(),
            "{}: no validation-free rule",
            card.name
        );
        let row = format!("| {} | {} |", card.title, card.without_validation);
        assert!(
            methods_doc.contains(&row),
            "docs/methods.md's table lacks `{row}`"
        );
        assert!(help.contains(card.name), "run --help lacks {}", card.name);
        assert!(
            !card.paper.is_empty() && !card.code.is_empty(),
            "{}",
            card.name
        );
        // Each option a card takes is one the protocol knows.
        let known: Vec<&str> = short_names();
        for o in card.options {
            assert!(known.contains(o), "{}: unknown option `{o}`", card.name);
        }
    }
}

/// Every option name `MethodOverrides` can carry, as its rows record them.
fn short_names() -> Vec<&'static str> {
    let every = MethodOverrides {
        branch: Some("visual".parse().unwrap()),
        form: Some("official".parse().unwrap()),
        reduction: Some(2),
        ratio: Some("fixed".parse().unwrap()),
        search: vec![0.5],
        alpha: Some(1.0),
        beta: Some(1.0),
        lmbda: Some(0.1),
        lr: Some(0.1),
        epochs: Some(1),
        batch_size: Some(1),
        n_ctx: Some(1),
        ctx_init: Some("a".into()),
        csc: true,
        class_token_position: Some("end".parse().unwrap()),
        lora_rank: Some(1),
        lora_alpha: Some(1.0),
        lora_dropout: Some(0.0),
        lora_params: Some("q".parse().unwrap()),
        lora_encoder: Some("both".parse().unwrap()),
        lora_position: Some("all".parse().unwrap()),
        lora_last: Some(1),
        lora_views: Some(1),
        iters_per_shot: Some(1),
    };
    every.given().into_iter().map(|(k, _)| k).collect()
}
