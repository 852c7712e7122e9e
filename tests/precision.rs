//! `--precision bf16`: the transformer towers' linear layers on bfloat16-rounded operands with
//! f32 sums. What it costs against f32 on every transformer family's fixture, and that its
//! features never mix with f32 ones (own cache key, heads that remember it, `predict` that
//! follows the head).

use candle_core::{Device, Tensor};
use clip_adapter::clip::{Clip, LoadOptions, ModelFiles, Precision};
use clip_adapter::features::cache::FeatureFile;

use crate::common::{cli_in, fixture, load_expected, ok};

fn load(model: &str, precision: Precision) -> Clip {
    let files = ModelFiles::in_dir(&fixture(&format!("models/{model}"))).unwrap();
    Clip::load_with(&files, &Device::Cpu, LoadOptions::at(precision)).unwrap()
}

/// The largest relative L2 distance between matching rows of `a` and `b`.
fn worst_row_error(a: &Tensor, b: &Tensor) -> f32 {
    let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    a.iter()
        .zip(&b)
        .map(|(x, y)| {
            let diff: f32 = x.iter().zip(y).map(|(u, v)| (u - v).powi(2)).sum();
            let norm: f32 = x.iter().map(|u| u * u).sum();
            (diff / norm).sqrt()
        })
        .fold(0.0, f32::max)
}

/// Every family's image and text embeddings at bf16 (the ResNet's convolutions included) stay within bfloat16's cost of
/// the f32 ones, and differ from them (the bf16 products did run).
#[test]
fn bf16_embeddings_stay_within_bfloat16s_cost_on_every_family() {
    let texts = ["a photo of a cat.", "a satellite image of a river", "x"];
    for model in [
        "tiny-clip",
        "tiny-openclip-vit",
        "tiny-siglip",
        "tiny-siglip2",
        "tiny-eva02",
        "tiny-rn",
    ] {
        let (f32_clip, bf16_clip) = (load(model, Precision::F32), load(model, Precision::Bf16));
        assert_eq!(bf16_clip.precision(), Precision::Bf16);
        let expected = load_expected(model);
        let pixels = &expected["pixel_values"];
        let image = worst_row_error(
            &f32_clip.encode_image(pixels).unwrap(),
            &bf16_clip.encode_image(pixels).unwrap(),
        );
        // The fixture's own token ids (some tiny vocabularies have no tokenizer of their own).
        let text = match expected.get("input_ids") {
            Some(ids) => {
                let ids: Vec<Vec<u32>> = (ids.to_vec2::<i64>().unwrap().into_iter())
                    .map(|r| r.into_iter().map(|i| i as u32).collect())
                    .collect();
                worst_row_error(
                    &f32_clip.encode_tokens(&ids).unwrap(),
                    &bf16_clip.encode_tokens(&ids).unwrap(),
                )
            }
            None => worst_row_error(
                &f32_clip.encode_text(&texts).unwrap(),
                &bf16_clip.encode_text(&texts).unwrap(),
            ),
        };
        eprintln!(
            "{model}: bf16 vs f32, worst relative row error: image {image:.2e}, text {text:.2e}"
        );
        for (what, err) in [("image", image), ("text", text)] {
            // Operands keep 8 significant bits (2^-9 relative rounding): a few layers of such
            // errors give 1e-3 to 1e-2; far below would mean the f32 path ran. The random tiny
            // ResNet's folded batch norms amplify them (5e-2 on its fixture; the kernels are
            // checked against the rounded f32 products below).
            let bound = if model == "tiny-rn" && what == "image" {
                1e-1
            } else {
                2e-2
            };
            assert!(
                (1e-4..bound).contains(&err),
                "{model} {what}: bf16 is {err:.2e} off f32, expected 1e-4 to {bound:.0e}"
            );
        }
    }
}

/// The AVX512-BF16 kernels give the products of the rounded operands: `embed --precision bf16`
/// equals the same command with the f32 kernels forced (`CLIP_ADAPTER_SIMD=avx2`, which runs
/// bfloat16-rounded operands through f32 products) within f32 summation order. On a CPU without
/// AVX512-BF16 both runs take the f32 kernels.
#[test]
fn bf16_kernels_equal_the_rounded_f32_products() {
    let image = fixture("images/good/grey.png");
    for model in ["tiny-clip", "tiny-rn", "tiny-eva02"] {
        let model = fixture(&format!("models/{model}"));
        let embed = |env: &[(&str, &str)]| {
            let args = [
                "--quiet",
                "embed",
                "--model",
                model.to_str().unwrap(),
                "--image",
                image.to_str().unwrap(),
                "--text",
                "a photo of a cat",
                "--precision",
                "bf16",
                "--json",
            ];
            let doc = crate::common::stdout_json(&crate::common::clip_adapter_env(&args, env));
            let mut v = crate::common::floats(&doc["images"][0]["embedding"]);
            v.extend(crate::common::floats(&doc["texts"][0]["embedding"]));
            v
        };
        let (native, rounded) = (embed(&[]), embed(&[("CLIP_ADAPTER_SIMD", "avx2")]));
        let diff: f32 = native
            .iter()
            .zip(&rounded)
            .map(|(a, b)| (a - b).powi(2))
            .sum();
        let norm: f32 = rounded.iter().map(|a| a * a).sum();
        let rel = (diff / norm).sqrt();
        assert!(rel < 1e-5, "{}: {rel:.2e}", model.display());
    }
}

/// One image's bf16 embedding does not depend on the batch it is encoded in: the bf16 kernel
/// computes each row the same way whatever the number of rows.
#[test]
fn bf16_rows_do_not_depend_on_the_batch() {
    let clip = load("tiny-clip", Precision::Bf16);
    let pixels = &load_expected("tiny-clip")["pixel_values"];
    let batch = clip.encode_image(pixels).unwrap();
    for i in 0..pixels.dim(0).unwrap() {
        let one = clip.encode_image(&pixels.narrow(0, i, 1).unwrap()).unwrap();
        let row = batch.narrow(0, i, 1).unwrap();
        assert_eq!(
            one.to_vec2::<f32>().unwrap(),
            row.to_vec2::<f32>().unwrap(),
            "image {i}"
        );
    }
}

/// The first feature file an `extract --json` wrote, read back.
fn first_set(dir: &std::path::Path, doc: &serde_json::Value) -> (std::path::PathBuf, FeatureFile) {
    let path = dir.join(doc["sets"][0]["path"].as_str().unwrap());
    let file = FeatureFile::read(&path).unwrap();
    (path, file)
}

/// `extract --precision bf16` caches under its own key next to f32 features; a head fitted on
/// them records it, and `predict` encodes at bf16 because the head says so.
#[test]
fn bf16_features_are_cached_apart_and_predict_follows_the_head() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    crate::features::image_folder(&dir.join("data"), 3, 6);
    let model = fixture("models/tiny-clip");
    let extract = |precision: &str| {
        crate::common::extract_two_shots_with(dir, &["--views", "0", "--precision", precision])
    };
    let (f32_doc, bf16_doc) = (extract("f32"), extract("bf16"));
    let (f32_path, f32_file) = first_set(dir, &f32_doc);
    let (bf16_path, bf16_file) = first_set(dir, &bf16_doc);
    assert_ne!(f32_path, bf16_path, "bf16 features have their own file");
    assert!(f32_path.is_file(), "the f32 file is still there");
    assert_eq!(f32_file.labels, bf16_file.labels);
    let (a, b) = (&f32_file.features, &bf16_file.features);
    let diff: f32 = a.iter().zip(b).map(|(u, v)| (u - v).powi(2)).sum();
    let norm: f32 = a.iter().map(|u| u * u).sum();
    let rel = (diff / norm).sqrt();
    assert!(
        (1e-4..2e-2).contains(&rel),
        "bf16 vs f32 features: {rel:.2e}"
    );
    // `embed --precision bf16` gives the cached row of the same image: the same arithmetic.
    let row = bf16_file.index[0] as usize;
    let image = dir.join("data").join(&bf16_file.meta.impaths[row]);
    let embedded: serde_json::Value = serde_json::from_str(&ok(&cli_in(
        dir,
        &[
            "embed",
            "--model",
            model.to_str().unwrap(),
            "--image",
            image.to_str().unwrap(),
            "--precision",
            "bf16",
            "--json",
        ],
    )))
    .unwrap();
    let embedded = crate::common::floats(&embedded["images"][0]["embedding"]);
    assert_eq!(embedded, b[..bf16_file.dim].to_vec(), "{}", image.display());
    // Asking again reuses the bf16 file rather than overwriting either.
    let again = extract("bf16");
    assert_eq!(again["sets"][0]["reused"], true, "{again}");

    // With both precisions cached, `--model NAME+bf16` picks the bfloat16 features.
    let dataset = bf16_path.parent().unwrap().file_name().unwrap();
    let dataset = dataset.to_string_lossy().into_owned();
    let bf16_name = format!("{}+bf16", model.display());
    let fit = |method: &str, model: &str, extra: &[&str]| {
        let mut args = vec![
            "fit",
            "--method",
            method,
            "--dataset",
            &dataset,
            "--shots",
            "2",
            "--cache",
            "cache",
            "--model",
            model,
            "--validation",
            "none",
            "--save",
            "head.safetensors",
            "--json",
        ];
        args.extend_from_slice(extra);
        let doc = ok(&cli_in(dir, &args));
        serde_json::from_str::<serde_json::Value>(&doc).unwrap()
    };
    // The methods that run the model's towers run them at the features' precision: their
    // losses stay within bfloat16's cost of the f32 run's, and differ from them.
    let f32_name = model.display().to_string();
    for (method, extra) in [
        ("coop", &["--epochs", "3"][..]),
        ("clip-lora", &["--iters-per-shot", "3", "--lr", "0.005"][..]),
    ] {
        let losses = |name: &str| crate::common::floats(&fit(method, name, extra)["epoch_losses"]);
        let (l32, l16) = (losses(&f32_name), losses(&bf16_name));
        assert_eq!(l32.len(), l16.len(), "{method}");
        let worst = (l32.iter().zip(&l16)).fold(0f32, |w, (a, b)| w.max((a - b).abs() / a.abs()));
        println!("{method}: losses at bf16 within {worst:.2e} of f32");
        assert!(
            (1e-6..2e-2).contains(&worst),
            "{method}: {l32:?} vs {l16:?}"
        );
        // The row records the bf16 model, and `predict` (at the head's precision) scores the
        // test images as the fit did.
        let row = fit(method, &bf16_name, extra);
        assert!(row["model"].as_str().unwrap().ends_with("+bf16"), "{row}");
        let at = (dataset.as_str(), Some(bf16_name.as_str()));
        let (accuracy, ..) = crate::common::predict_test_images(dir, at, "head.safetensors");
        let reported = row["test_accuracy"].as_f64().unwrap();
        assert!(
            (accuracy - reported).abs() < 1e-3,
            "{method}: predict {accuracy} vs fit {reported}"
        );
    }
    let row = fit("tip-adapter", &bf16_name, &[]);
    let images: Vec<String> = std::fs::read_dir(dir.join("data/class_1"))
        .unwrap()
        .map(|e| e.unwrap().path().display().to_string())
        .collect();
    let mut args = vec!["predict", "--adapter", "head.safetensors", "--json"];
    args.extend(images.iter().map(String::as_str));
    let predicted: serde_json::Value = serde_json::from_str(&ok(&cli_in(dir, &args))).unwrap();
    assert_eq!(
        predicted["results"].as_array().unwrap().len(),
        images.len(),
        "{predicted} after {row}"
    );
}
