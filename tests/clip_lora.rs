//! CLIP-LoRA against a PyTorch run of the reference's formulation
//! (`scripts/fixtures/clip_lora.py`, tiny open_clip ViT): the loss of every step, the LoRA
//! matrices after training and the evaluation logits; the gradients against finite differences.

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use clip_adapter::clip::train::lora::{LoraClip, LoraOptions};
use clip_adapter::clip::{Clip, ModelFiles, Precision};
use clip_adapter::methods::clip_lora::{LoraTrainer, StepImages, StepText};

use crate::common::{assert_close, check_central_differences, fixture};

/// Losses agree within this relative difference, matrices and logits within these absolute
/// ones (f32 on both sides; the differences measured are printed).
const LOSS_TOL: f32 = 1e-5;
const MATRIX_TOL: f32 = 1e-6;
const LOGIT_TOL: f32 = 1e-4;

struct Case {
    meta: serde_json::Value,
    tensors: HashMap<String, Tensor>,
}

fn case(name: &str) -> Case {
    let dir = fixture("clip_lora");
    let meta = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    Case {
        meta: serde_json::from_str(&meta).unwrap(),
        tensors: candle_core::safetensors::load(
            dir.join(format!("{name}.safetensors")),
            &Device::Cpu,
        )
        .unwrap(),
    }
}

fn model_files() -> ModelFiles {
    ModelFiles::in_dir(&fixture("models/tiny-openclip-vit")).unwrap()
}

fn options(meta: &serde_json::Value) -> LoraOptions {
    let params: Vec<&str> = (meta["params"].as_array().unwrap().iter())
        .map(|p| p.as_str().unwrap())
        .collect();
    LoraOptions {
        rank: meta["rank"].as_u64().unwrap() as usize,
        alpha: meta["alpha"].as_f64().unwrap(),
        dropout: 0.0,
        params: params.join(",").parse().unwrap(),
        encoder: meta["encoder"].as_str().unwrap().parse().unwrap(),
        position: meta["position"].as_str().unwrap().parse().unwrap(),
    }
}

/// The fixture's `synthetic_pixels`: `1.5 sin(0.9 s + 2.1 b + 1.7 c + 0.31 y + 0.17 x +
/// 0.013 x y + seed)` in f64, as f32.
fn pixels(step: usize, batch: usize, size: usize, seed: f64) -> Tensor {
    let mut v = Vec::with_capacity(batch * 3 * size * size);
    for b in 0..batch {
        for c in 0..3 {
            for y in 0..size {
                for x in 0..size {
                    let (s, b, c, y, x) = (step as f64, b as f64, c as f64, y as f64, x as f64);
                    let a =
                        0.9 * s + 2.1 * b + 1.7 * c + 0.31 * y + 0.17 * x + 0.013 * x * y + seed;
                    v.push((1.5 * a.sin()) as f32);
                }
            }
        }
    }
    Tensor::from_vec(v, (batch, 3, size, size), &Device::Cpu).unwrap()
}

fn ids(case: &Case) -> Vec<Vec<u32>> {
    let t = case.tensors["ids"]
        .to_dtype(candle_core::DType::I64)
        .unwrap();
    (t.to_vec2::<i64>().unwrap().into_iter())
        .map(|r| r.into_iter().map(|v| v as u32).collect())
        .collect()
}

fn start_state(case: &Case) -> HashMap<String, Tensor> {
    (case.tensors.iter())
        .filter_map(|(k, v)| k.strip_prefix("start.").map(|n| (n.to_string(), v.clone())))
        .collect()
}

fn model_at_start(case: &Case) -> LoraClip {
    let model = LoraClip::load(&model_files(), &options(&case.meta), 7, &Device::Cpu).unwrap();
    model.set_vars(&start_state(case)).unwrap();
    model
}

#[test]
fn training_matches_the_reference_step_by_step() {
    let frozen = Clip::load(&model_files(), &Device::Cpu).unwrap();
    for name in ["both-qkv", "vision-qkvo-up", "text-vo"] {
        let case = case(name);
        let meta = &case.meta;
        let model = model_at_start(&case);
        let steps = meta["steps"].as_u64().unwrap() as usize;
        let seed = meta["seed"].as_f64().unwrap();
        let size = model.config().vision.image_size();
        let labels = case.tensors["labels"]
            .to_dtype(candle_core::DType::I64)
            .unwrap();
        let labels = labels.to_vec2::<i64>().unwrap();
        let prompts = ids(&case);
        let lr = meta["lr"].as_f64().unwrap() as f32;
        let mut trainer = LoraTrainer::new(&model, lr, steps);
        let expected = case.tensors["losses"].to_vec1::<f64>().unwrap();
        let image_input = |px: &Tensor| match model.options().encoder.vision() {
            true => px.clone(),
            false => frozen.encode_image(px).unwrap(),
        };
        for (s, want) in expected.iter().enumerate() {
            let px = image_input(&pixels(s, labels[s].len(), size, seed));
            let y: Vec<u32> = labels[s].iter().map(|&l| l as u32).collect();
            let images = match model.options().encoder.vision() {
                true => StepImages::Pixels(&px),
                false => StepImages::Features(&px),
            };
            let loss = trainer.step(images, StepText::Ids(&prompts), &y).unwrap();
            let rel = (loss as f64 - want).abs() / want.abs().max(1e-3);
            println!("{name} step {s}: loss {loss:.6} reference {want:.6} (rel {rel:.1e})");
            assert!(rel < LOSS_TOL as f64, "{name} step {s}: {loss} vs {want}");
        }
        for (var_name, var) in model.vars() {
            let want = &case.tensors[&format!("end.{var_name}")];
            assert_close(
                &format!("{name} {var_name}"),
                var.as_tensor(),
                want,
                MATRIX_TOL,
            );
        }
        model.set_training(None).unwrap();
        let test = image_input(&pixels(0, 4, size, seed + 100.0));
        let images = match model.options().encoder.vision() {
            true => StepImages::Pixels(&test),
            false => StepImages::Features(&test),
        };
        let logits = trainer.logits(images, StepText::Ids(&prompts)).unwrap();
        assert_close(
            &format!("{name} test logits"),
            &logits,
            &case.tensors["test_logits"],
            LOGIT_TOL,
        );
    }
}

fn loss_of(model: &LoraClip, px: &Tensor, prompts: &[Vec<u32>], labels: &[u32]) -> Tensor {
    let trainer = LoraTrainer::new(model, 0.0, 1);
    let logits = trainer
        .logits(StepImages::Pixels(px), StepText::Ids(prompts))
        .unwrap();
    let targets = Tensor::from_slice(labels, labels.len(), &Device::Cpu).unwrap();
    candle_nn::loss::cross_entropy(&logits, &targets).unwrap()
}

/// Every LoRA matrix of both towers gets the gradient central differences give (B started away
/// from zero, so that A's gradient is not zero).
#[test]
fn gradients_match_finite_differences() {
    let case = case("vision-qkvo-up");
    let model = model_with_updates(&case, Precision::F32);
    let px = pixels(0, 3, 48, 5.0);
    let prompts = ids(&case);
    let labels = [0u32, 2, 1];
    let grads = loss_of(&model, &px, &prompts, &labels).backward().unwrap();
    let checked = check_central_differences(&model.vars(), &grads, || {
        loss_of(&model, &px, &prompts, &labels)
            .to_scalar::<f32>()
            .unwrap()
    });
    assert!(checked >= 30, "only {checked} entries checked");
}

/// A model with non-zero `B` everywhere (fresh `B` is zero, which leaves `A` without a
/// gradient), both towers, every layer.
fn model_with_updates(case: &Case, precision: Precision) -> LoraClip {
    let mut opts = options(&case.meta);
    opts.encoder = "both".parse().unwrap();
    opts.position = "all".parse().unwrap();
    let model = LoraClip::load(&model_files(), &opts, 3, &Device::Cpu)
        .unwrap()
        .at(precision)
        .unwrap();
    for (i, (_, var)) in model.vars().iter().enumerate() {
        let n = var.elem_count();
        let v: Vec<f32> = (0..n)
            .map(|j| 0.05 * ((i * 31 + j * 7) as f32 * 0.37).sin())
            .collect();
        var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
            .unwrap();
    }
    model
}

/// With its frozen products at bfloat16 (forward `x Wᵀ` and input gradient `g W` on rounded
/// operands) a step's loss and every LoRA matrix's gradient stay within bfloat16's cost of the
/// f32 step's (which the test above checks against finite differences), and differ from it (the
/// rounded path ran).
#[test]
fn bf16_steps_stay_within_bfloat16s_cost_of_the_f32_gradients() {
    let case = case("vision-qkvo-up");
    let px = pixels(0, 3, 48, 5.0);
    let prompts = ids(&case);
    let labels = [0u32, 2, 1];
    let run = |precision| {
        let model = model_with_updates(&case, precision);
        let loss = loss_of(&model, &px, &prompts, &labels);
        let grads = loss.backward().unwrap();
        let per_var: Vec<(String, Tensor)> = (model.vars().into_iter())
            .map(|(name, var)| (name, grads.get(var.as_tensor()).unwrap().clone()))
            .collect();
        (loss.to_scalar::<f32>().unwrap(), per_var)
    };
    let (loss32, grads32) = run(Precision::F32);
    let (loss16, grads16) = run(Precision::Bf16);
    let rel = (loss16 - loss32).abs() / loss32.abs();
    println!("loss f32 {loss32} bf16 {loss16} (rel {rel:.1e})");
    assert!(rel < 1e-2, "loss {loss16} vs {loss32}");
    let mut largest = 0f32;
    for ((name, g32), (_, g16)) in grads32.iter().zip(&grads16) {
        let scale = g32
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let diff = crate::common::max_abs_diff(g16, g32) / scale.max(1e-12);
        println!("{name}: largest |bf16 - f32| / largest |f32| = {diff:.2e}");
        assert!(diff < 5e-2, "{name}: {diff}");
        largest = largest.max(diff);
    }
    assert!(
        largest > 1e-5,
        "the bf16 gradients equal the f32 ones: {largest}"
    );
}

/// Training mode drops a quarter of the low-rank path's inputs (scaled by 4/3); evaluation
/// drops none, so it is deterministic and equals the merged weights.
#[test]
fn dropout_acts_in_training_only() {
    let case = case("vision-qkvo-up");
    let mut opts = options(&case.meta);
    opts.dropout = 0.25;
    let model = model_at_start(&case);
    let model_dropout = LoraClip::load(&model_files(), &opts, 7, &Device::Cpu).unwrap();
    model_dropout.set_vars(&start_state(&case)).unwrap();
    let px = pixels(1, 2, 48, 0.5);
    let plain = model.encode_image(&px).unwrap();
    let eval = model_dropout.encode_image(&px).unwrap();
    assert_close("evaluation without dropout", &eval, &plain, 1e-6);
    model_dropout.set_training(Some(1)).unwrap();
    let a = model_dropout.encode_image(&px).unwrap();
    let b = model_dropout.encode_image(&px).unwrap();
    assert!(
        crate::common::max_abs_diff(&a, &plain) > 1e-4,
        "training applies dropout"
    );
    assert!(
        crate::common::max_abs_diff(&a, &b) > 1e-4,
        "each forward draws new masks"
    );
}

/// The merged checkpoint, loaded as an ordinary model, encodes as the adapted model does in
/// evaluation: both layouts (open_clip's fused `in_proj_weight`, `transformers`' q/k/v).
#[test]
fn a_merged_checkpoint_encodes_as_the_adapted_model() {
    for (dir, size) in [("models/tiny-openclip-vit", 48), ("models/tiny-clip", 32)] {
        let files = ModelFiles::in_dir(&fixture(dir)).unwrap();
        let opts = LoraOptions {
            params: "q,k,v,o".parse().unwrap(),
            ..LoraOptions::default()
        };
        let model = LoraClip::load(&files, &opts, 11, &Device::Cpu).unwrap();
        for (i, (_, var)) in model.vars().iter().enumerate() {
            let n = var.elem_count();
            let v: Vec<f32> = (0..n)
                .map(|j| 0.2 * ((i * 13 + j) as f32 * 0.71).cos())
                .collect();
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let tmp = tempfile::tempdir().unwrap();
        let merged = clip_adapter::clip::train::lora_merge::write_merged(
            &files,
            &model.deltas().unwrap(),
            &tmp.path().join("merged"),
        )
        .unwrap();
        let clip = Clip::load(&ModelFiles::in_dir(&merged).unwrap(), &Device::Cpu).unwrap();
        let px = pixels(2, 3, size, 1.0);
        let vocab = model.config().text.vocab_size as u32;
        let ids: Vec<Vec<u32>> = (0..3)
            .map(|k| {
                let mut row = vec![0u32; 12];
                (0..4 + k).for_each(|j| row[j] = 1 + (j as u32 * 37 + k as u32 * 11) % 300);
                row[4 + k] = vocab - 1;
                row
            })
            .collect();
        assert_close(
            &format!("{dir} merged image features"),
            &clip.encode_image(&px).unwrap(),
            &model.encode_image(&px).unwrap(),
            2e-5,
        );
        assert_close(
            &format!("{dir} merged text features"),
            &clip.encode_tokens(&ids).unwrap(),
            &model.encode_tokens(&ids).unwrap(),
            2e-5,
        );
        let plain = Clip::load(&files, &Device::Cpu).unwrap();
        assert!(
            crate::common::max_abs_diff(
                &plain.encode_image(&px).unwrap(),
                &clip.encode_image(&px).unwrap()
            ) > 1e-3,
            "the updates changed the model"
        );
    }
}

/// `fit --method clip-lora` trains on the images the cache records, its row's test accuracy is
/// the saved head's on those images through `predict`.
#[test]
fn fit_trains_on_the_images_and_predict_scores_as_the_fit_did() {
    use crate::common::{cli_in, ok};
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
            "--seed",
            "1",
            "--cache",
            "cache",
            "--iters-per-shot",
            "10",
            "--lr",
            "0.005",
            "--json",
        ];
        args.extend_from_slice(extra);
        serde_json::from_str::<serde_json::Value>(&ok(&cli_in(tmp.path(), &args))).unwrap()
    };
    let doc = fit(&["--save", "lora.safetensors"]);
    let row = &doc;
    assert_eq!(row["method"], "clip-lora", "{doc}");
    let losses: Vec<f32> = crate::common::floats(&doc["epoch_losses"]);
    assert_eq!(
        losses.len(),
        20,
        "2 shots × 10 steps, one batch per epoch: {doc}"
    );
    let head_mean = losses[..5].iter().sum::<f32>() / 5.0;
    let tail_mean = losses[15..].iter().sum::<f32>() / 5.0;
    assert!(
        tail_mean < head_mean,
        "training lowers the loss: {losses:?}"
    );
    // The same fit again gives the same row (seeded crops, dropout, A).
    assert_eq!(fit(&[])["epoch_losses"], row["epoch_losses"]);

    let (accuracy, paths, predicted) =
        crate::common::predict_test_images(tmp.path(), (&dataset, None), "lora.safetensors");
    let reported = row["test_accuracy"].as_f64().unwrap();
    assert!(
        (accuracy - reported).abs() < 1e-3,
        "predict {accuracy} vs fit {reported}"
    );

    // Merged into the model, the updates make an ordinary model whose zero-shot logits (the
    // first template) are the head's.
    let merged = ok(&cli_in(
        tmp.path(),
        &[
            "merge",
            "--lora",
            "lora.safetensors",
            "--out",
            "merged",
            "--json",
        ],
    ));
    assert!(
        merged.contains("\"merged\":12"),
        "q, k, v of 2 + 2 layers: {merged}"
    );
    let mut args = vec![
        "classify",
        "--model",
        "merged",
        "--labels",
        "class 0,class 1,class 2",
        "--template",
        "a photo of a {}.",
        "--json",
    ];
    args.extend(paths.iter().map(String::as_str));
    let classified: serde_json::Value =
        serde_json::from_str(&ok(&cli_in(tmp.path(), &args))).unwrap();
    let logits = |doc: &serde_json::Value| -> Vec<(u64, f64)> {
        (doc["results"].as_array().unwrap().iter())
            .flat_map(|r| r["predictions"].as_array().unwrap().clone())
            .map(|p| (p["index"].as_u64().unwrap(), p["logit"].as_f64().unwrap()))
            .collect()
    };
    for ((i, a), (j, b)) in logits(&classified).into_iter().zip(logits(&predicted)) {
        assert_eq!(i, j);
        assert!((a - b).abs() < 1e-3, "merged model {a} vs head {b}");
    }
    let again = cli_in(
        tmp.path(),
        &["merge", "--lora", "lora.safetensors", "--out", "merged"],
    );
    assert!(
        !again.status.success(),
        "an existing folder is not overwritten"
    );
}

/// `run` of CLIP-LoRA and zero-shot on the 3-class draw, with the options of `extra`.
fn run_lora(
    dir: &std::path::Path,
    dataset: &str,
    out: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "run",
        "--methods",
        "clip-lora,zero-shot",
        "--datasets",
        dataset,
    ];
    args.extend([
        "--shots", "2", "--seeds", "1", "--cache", "cache", "--out", out,
    ]);
    args.extend(["--iters-per-shot", "10", "--lr", "0.005"]);
    args.extend_from_slice(extra);
    crate::common::cli_in(dir, &args)
}

/// The rows of a results file as maps from column to value.
fn csv_rows(path: &std::path::Path) -> Vec<HashMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let h = r.headers().unwrap().clone();
    (r.records().map(Result::unwrap))
        .map(|rec| {
            (h.iter().zip(rec.iter()))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A grid cell of CLIP-LoRA is the fit of the same draw and seed: the same accuracy and losses'
/// outcome, a row like every other method's; a second run finds it and fits nothing; a shard
/// weighs it as the grid's most expensive cell.
#[test]
fn a_grid_of_clip_lora_gives_the_rows_of_fit_and_resumes() {
    use crate::common::{cli_in, ok};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::features::image_folder(&dir.join("data"), 3, 8);
    let dataset = crate::common::extract_two_shots(dir);
    let started = std::time::Instant::now();
    let out = run_lora(dir, &dataset, "results", &[]);
    ok(&out);
    println!("grid of 2 cells: {:.1} s", started.elapsed().as_secs_f64());
    let rows = csv_rows(&dir.join("results/results.csv"));
    assert_eq!(rows.len(), 2, "{rows:?}");
    let lora = rows.iter().find(|r| r["method"] == "clip-lora").unwrap();
    let zero = rows.iter().find(|r| r["method"] == "zero-shot").unwrap();
    let mut columns: Vec<&String> = lora.keys().collect();
    let mut zero_columns: Vec<&String> = zero.keys().collect();
    columns.sort();
    zero_columns.sort();
    assert_eq!(columns, zero_columns);
    assert_eq!(lora["protocol"], "few-shot");
    assert_eq!(lora["chosen"], "steps=20", "{lora:?}");
    assert!(lora["options"].contains("iters-per-shot=10"), "{lora:?}");

    let fitted = ok(&cli_in(
        dir,
        &[
            "fit",
            "--method",
            "clip-lora",
            "--dataset",
            &dataset,
            "--shots",
            "2",
            "--seed",
            "1",
            "--cache",
            "cache",
            "--iters-per-shot",
            "10",
            "--lr",
            "0.005",
            "--json",
        ],
    ));
    let fitted: serde_json::Value = serde_json::from_str(&fitted).unwrap();
    let accuracy: f32 = lora["test_accuracy"].parse().unwrap();
    assert_eq!(
        accuracy,
        fitted["test_accuracy"].as_f64().unwrap() as f32,
        "the grid's cell is the fit of the same draw and seed: {fitted}"
    );

    // Resumed: both rows found, nothing fitted, nothing added.
    let again = run_lora(dir, &dataset, "results", &[]);
    ok(&again);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("2 already in"), "{stderr}");
    assert_eq!(csv_rows(&dir.join("results/results.csv")).len(), 2);

    // Sharded in two: the CLIP-LoRA cell weighs 1000 zero-shot cells, and goes alone to the
    // first shard (the largest first); the second gets zero-shot.
    for i in 0..2 {
        ok(&run_lora(
            dir,
            &dataset,
            "sharded",
            &["--shard", &format!("{i}/2")],
        ));
    }
    let manifest = |i: usize| -> serde_json::Value {
        let path = dir.join(format!("sharded/results.shard-{i}-of-2.json"));
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    // In the registry's order: zero-shot, then CLIP-LoRA.
    let costs = crate::common::usizes(&manifest(0)["costs"]);
    assert_eq!(costs[1], 1000 * costs[0], "{costs:?}");
    assert_eq!(crate::common::usizes(&manifest(0)["cells"]), [1]);
    assert_eq!(crate::common::usizes(&manifest(1)["cells"]), [0]);
    let shard = csv_rows(&dir.join("sharded/results.shard-0-of-2.csv"));
    assert_eq!(shard.len(), 1);
    assert_eq!(shard[0]["test_accuracy"], lora["test_accuracy"]);
}

/// Base-to-new: CLIP-LoRA trains on the base classes' images and scores the new classes'
/// names and test images through its towers. With updates too small to change anything (one
/// step at a rate of 1e-9) it is zero-shot CLIP with the first template: its base and new
/// accuracies are zero-shot's, which scores the cache's features.
#[test]
fn base_to_new_scores_clip_lora_new_classes_through_its_towers() {
    use crate::common::{cli_in, ok};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::features::image_folder(&dir.join("data"), 6, 6);
    let dataset = crate::common::extract_two_shots(dir);
    let run = |out: &str, lr: &str| {
        ok(&cli_in(
            dir,
            &[
                "run",
                "--protocol",
                "base-to-new",
                "--methods",
                "clip-lora,zero-shot",
                "--datasets",
                &dataset,
                "--shots",
                "2",
                "--seeds",
                "1",
                "--cache",
                "cache",
                "--out",
                out,
                "--iters-per-shot",
                "1",
                "--lr",
                lr,
            ],
        ))
    };
    let table = run("still", "1e-9");
    assert!(
        table.contains("Base-to-new generalisation, 2 shots"),
        "{table}"
    );
    let rows = csv_rows(&dir.join("still/results.csv"));
    let of = |m: &str| rows.iter().find(|r| r["method"] == m).unwrap().clone();
    let (lora, zero) = (of("clip-lora"), of("zero-shot"));
    assert_eq!(lora["protocol"], "base-to-new");
    for column in ["test_accuracy", "new_accuracy"] {
        let (a, b): (f64, f64) = (lora[column].parse().unwrap(), zero[column].parse().unwrap());
        assert!(
            (a - b).abs() < 1e-3,
            "{column}: clip-lora {a} vs zero-shot {b}"
        );
    }
    assert!(table.contains("| clip-lora ("), "{table}");

    // Trained, its updates move the new classes' accuracy too (both towers adapted).
    run("trained", "0.005");
    let rows = csv_rows(&dir.join("trained/results.csv"));
    let lora = rows.iter().find(|r| r["method"] == "clip-lora").unwrap();
    let new: f64 = lora["new_accuracy"].parse().unwrap();
    assert!((0.0..=100.0).contains(&new), "{lora:?}");
}

/// Cross-dataset and domain rows: CLIP-LoRA's updates tested on a target's test images and class
/// names through its towers. With the source as its own target, the target's row is the
/// source's accuracy: the same images, classes and prompt, encoded the same way.
#[test]
fn transfer_tests_clip_lora_through_its_towers() {
    use crate::common::{cli_in, ok};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::features::image_folder(&dir.join("data"), 3, 8);
    let dataset = crate::common::extract_two_shots(dir);
    for protocol in ["cross-dataset", "domain"] {
        let out = format!("results-{protocol}");
        ok(&cli_in(
            dir,
            &[
                "run",
                "--protocol",
                protocol,
                "--source",
                &dataset,
                "--datasets",
                &dataset,
                "--methods",
                "clip-lora",
                "--shots",
                "2",
                "--seeds",
                "1",
                "--cache",
                "cache",
                "--out",
                &out,
                "--iters-per-shot",
                "10",
                "--lr",
                "0.005",
            ],
        ));
        let rows = csv_rows(&dir.join(&out).join("results.csv"));
        assert_eq!(
            rows.len(),
            2,
            "{protocol}: the source's row and the target's"
        );
        assert_eq!(rows[0]["source_dataset"], dataset);
        let (a, b): (f32, f32) = (
            rows[0]["test_accuracy"].parse().unwrap(),
            rows[1]["test_accuracy"].parse().unwrap(),
        );
        assert!(
            (a - b).abs() < 1e-3,
            "{protocol}: source {a} vs itself as a target {b}"
        );
    }
}
