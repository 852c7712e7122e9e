//! `run`, `fit` and `predict` through the command line, on features of two fixture models of
//! the same width (tiny-clip and tiny-rn, 24-wide embeddings): results are never carried over
//! from one model to the other, a head refuses a model that is not the one it was trained on,
//! and everything is checked before the first fit.

use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{assert_fails_with, cli_in, fixture, ok};

/// A work folder with both models copied under `models/` (so that they are named by relative
/// paths), a two-class image folder, and the features of both models in one cache.
struct Setup {
    tmp: tempfile::TempDir,
    dataset: String,
}

impl Setup {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        for m in ["tiny-clip", "tiny-rn"] {
            let to = tmp.path().join("models").join(m);
            std::fs::create_dir_all(&to).unwrap();
            for e in std::fs::read_dir(fixture(&format!("models/{m}"))).unwrap() {
                let e = e.unwrap();
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
        crate::features::image_folder(&tmp.path().join("data"), 2, 6);
        let mut dataset = String::new();
        for m in ["models/tiny-clip", "models/tiny-rn"] {
            let doc: serde_json::Value = serde_json::from_str(&ok(&cli_in(
                tmp.path(),
                &[
                    "extract", "--model", m, "--folder", "data", "--shots", "2", "--seed", "1",
                    "--cache", "cache", "--json",
                ],
            )))
            .unwrap();
            let first = PathBuf::from(doc["sets"][0]["path"].as_str().unwrap());
            dataset = first
                .parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
        }
        Setup { tmp, dataset }
    }

    fn dir(&self) -> &Path {
        self.tmp.path()
    }

    fn run(&self, model: &str, methods: &str) -> Output {
        self.run_with(model, methods, &[])
    }

    /// `run` of `methods` on the 2-shot draw of seed 1 into `results`, with `extra` options.
    fn run_with(&self, model: &str, methods: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "run",
            "--methods",
            methods,
            "--datasets",
            &self.dataset,
            "--shots",
            "2",
            "--seeds",
            "1",
            "--cache",
            "cache",
            "--model",
            model,
            "--out",
            "results",
        ];
        args.extend_from_slice(extra);
        cli_in(self.dir(), &args)
    }
}

fn rows(csv: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    let mut r = csv::Reader::from_path(csv).unwrap();
    let headers = r.headers().unwrap().clone();
    r.records()
        .map(|rec| {
            let rec = rec.unwrap();
            headers
                .iter()
                .zip(rec.iter())
                .map(|(h, v)| (h.to_string(), serde_json::Value::String(v.to_string())))
                .collect()
        })
        .collect()
}

#[test]
fn run_keeps_results_of_each_model_apart_and_validates_first() {
    let s = Setup::new();
    let csv = s.dir().join("results/results.csv");

    ok(&s.run("models/tiny-clip", "zero-shot, gda"));
    let first = rows(&csv);
    assert_eq!(first.len(), 2, "{first:?}");
    // The same command again: nothing is fitted.
    let again = s.run("models/tiny-clip", "zero-shot,gda");
    ok(&again);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("0 fitted"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(rows(&csv), first);

    // Another model on the same cache: its own rows, and its own table.
    let other = s.run("models/tiny-rn", "zero-shot,gda");
    let table = ok(&other);
    let all = rows(&csv);
    assert_eq!(all.len(), 4, "{all:?}");
    assert_ne!(all[0]["model"], all[2]["model"]);
    assert_ne!(all[0]["features"], all[2]["features"]);
    let rn_zero_shot: f32 = all[2]["test_accuracy"].as_str().unwrap().parse().unwrap();
    assert_eq!(all[2]["method"], "zero-shot");
    assert!(
        table.contains(&format!("| zero-shot | {rn_zero_shot:.2} ± 0.00 |")),
        "the table shows tiny-rn's rows: {table}"
    );
    // The folder's report: the latest model's rows only, saying so, with its figure.
    let report = std::fs::read_to_string(s.dir().join("results/report.md")).unwrap();
    assert!(
        report.contains(&format!("| zero-shot | {rn_zero_shot:.2} ± 0.00 |"))
            && report.contains("2 rows of other models in the results file are left out"),
        "{report}"
    );
    assert!(s
        .dir()
        .join("results/figures/accuracy_vs_shots.png")
        .is_file());
    // One dataset: no average over datasets.
    assert!(!table.contains("Average"), "{table}");

    // Bad input is refused before anything is fitted.
    let before = std::fs::read_to_string(&csv).unwrap();
    let bad = s.run("models/tiny-clip", "zero-shot,foo");
    assert_fails_with(&bad, &["foo", "tip-adapter-f"]);
    assert_eq!(bad.status.code(), Some(2));
    let missing = cli_in(
        s.dir(),
        &[
            "run",
            "--methods",
            "linear-probe",
            "--datasets",
            &format!("{},nope", s.dataset),
            "--shots",
            "2",
            "--seeds",
            "1",
            "--cache",
            "cache",
            "--out",
            "results",
        ],
    );
    assert_fails_with(&missing, &["nope", "cache", &s.dataset]);
    let no_file = cli_in(
        s.dir(),
        &[
            "run",
            "--methods",
            "linear-probe",
            "--datasets",
            &s.dataset,
            "--shots",
            "2",
            "--seeds",
            "1",
            "--cache",
            "cache",
            "--out",
            "results",
            "--reported",
            "nope.csv",
        ],
    );
    assert_fails_with(&no_file, &["nope.csv"]);
    let not_applicable = cli_in(
        s.dir(),
        &[
            "run",
            "--methods",
            "tip-adapter",
            "--datasets",
            &s.dataset,
            "--shots",
            "2",
            "--seeds",
            "1",
            "--cache",
            "cache",
            "--out",
            "results",
            "--reduction",
            "8",
        ],
    );
    assert_fails_with(&not_applicable, &["--reduction", "tip-adapter"]);
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), before);

    // A results.csv of the older format, without model and feature columns: refused.
    let old = s.dir().join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(
        old.join("results.csv"),
        format!(
            "method,options,dataset,shots,seed,val_accuracy,test_accuracy,train_seconds,chosen\n\
             zero-shot,\"\",{},2,1,50.0,22.2,0.0,\"\"\n",
            s.dataset
        ),
    )
    .unwrap();
    let refused = cli_in(
        s.dir(),
        &[
            "run",
            "--methods",
            "zero-shot",
            "--datasets",
            &s.dataset,
            "--shots",
            "2",
            "--seeds",
            "1",
            "--cache",
            "cache",
            "--model",
            "models/tiny-rn",
            "--out",
            "old",
        ],
    );
    assert_fails_with(&refused, &["results.csv", "older version", "model"]);
}

#[test]
fn predict_refuses_another_model_of_the_same_width() {
    let s = Setup::new();
    let head = s.dir().join("head.safetensors");
    let fit = cli_in(
        s.dir(),
        &[
            "fit",
            "--method",
            "clip-adapter",
            "--dataset",
            &s.dataset,
            "--shots",
            "2",
            "--cache",
            "cache",
            "--model",
            "models/tiny-clip",
            "--epochs",
            "2",
            "--save",
            "head.safetensors",
            "--json",
        ],
    );
    let doc: serde_json::Value = serde_json::from_str(&ok(&fit)).unwrap();
    // JSON numbers are the f32's shortest decimal form, never the f32 widened to f64.
    let acc = doc["test_accuracy"].to_string();
    let shortest = (doc["test_accuracy"].as_f64().unwrap() as f32).to_string();
    assert_eq!(acc.trim_end_matches(".0"), shortest, "{doc}");

    let image = s.dir().join("data/class_0/img_00.png");
    let image = image.to_str().unwrap();
    let head_s = head.to_str().unwrap();
    // From another directory, without --model: the head's own model is found.
    let elsewhere = tempfile::tempdir().unwrap();
    let own = cli_in(
        elsewhere.path(),
        &["predict", "--adapter", head_s, "--top-k", "2", image],
    );
    let text = ok(&own);
    // classify's layout: path, then `   1. label  probability%  (logit x)`.
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].starts_with("   1. class") && lines[1].contains("%  (logit "),
        "{text}"
    );

    // Another model of the same width: refused, unless asked for.
    let other = fixture("models/tiny-rn").display().to_string();
    let refused = cli_in(
        elsewhere.path(),
        &["predict", "--adapter", head_s, "--model", &other, image],
    );
    assert_fails_with(
        &refused,
        &["fingerprint", "--allow-model-mismatch", "tiny-rn"],
    );
    let forced = cli_in(
        elsewhere.path(),
        &[
            "predict",
            "--adapter",
            head_s,
            "--model",
            &other,
            "--allow-model-mismatch",
            "--json",
            image,
        ],
    );
    let doc: serde_json::Value = serde_json::from_str(&ok(&forced)).unwrap();
    assert_eq!(
        doc["results"][0]["predictions"].as_array().unwrap().len(),
        2
    );
    assert!(String::from_utf8_lossy(&forced.stderr).contains("warning"));

    // The same model at another path (same content): accepted.
    let same = fixture("models/tiny-clip").display().to_string();
    ok(&cli_in(
        elsewhere.path(),
        &["predict", "--adapter", head_s, "--model", &same, image],
    ));

    // --top-k 0 is refused by the parser.
    let zero = cli_in(
        elsewhere.path(),
        &["predict", "--adapter", head_s, "--top-k", "0", image],
    );
    assert_eq!(zero.status.code(), Some(2));
}

/// `fit --method coop` with the options after `coop`, in the setup's folder.
fn fit_coop(s: &Setup, model: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "fit",
        "--method",
        "coop",
        "--dataset",
        &s.dataset,
        "--shots",
        "2",
        "--cache",
        "cache",
        "--model",
        model,
        "--epochs",
        "2",
    ];
    args.extend_from_slice(extra);
    if !extra.contains(&"--n-ctx") {
        args.extend_from_slice(&["--n-ctx", "4"]);
    }
    cli_in(s.dir(), &args)
}

#[test]
fn coop_fits_runs_saves_and_predicts_through_the_features_model() {
    let s = Setup::new();
    let fit = fit_coop(
        &s,
        "models/tiny-clip",
        &["--save", "coop.safetensors", "--json"],
    );
    let doc: serde_json::Value = serde_json::from_str(&ok(&fit)).unwrap();
    assert_eq!(doc["method"], "coop", "{doc}");
    assert_eq!(doc["epoch_losses"].as_array().unwrap().len(), 2, "{doc}");
    // CoOp chooses nothing on validation; what it ran is in its options.
    assert_eq!(doc["chosen_on_validation"], serde_json::json!({}), "{doc}");
    assert!(
        doc["options"].as_str().unwrap().contains("n_ctx=4"),
        "{doc}"
    );
    let head = s.dir().join("coop.safetensors");
    let saved = clip_adapter::methods::coop::CoopHead::load(&head).unwrap();
    assert_eq!(saved.n_ctx, 4);
    assert_eq!(saved.classnames.len(), 2);
    assert!(
        Path::new(&saved.model).is_absolute(),
        "a head names its model from anywhere: {}",
        saved.model
    );

    // predict recognises the CoOp head, finds its model from elsewhere, and classifies.
    let image = s.dir().join("data/class_0/img_00.png");
    let image = image.to_str().unwrap();
    let head_s = head.to_str().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = ok(&cli_in(
        elsewhere.path(),
        &[
            "predict",
            "--adapter",
            head_s,
            "--top-k",
            "2",
            "--json",
            image,
        ],
    ));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(doc["method"], "coop", "{doc}");
    let preds = doc["results"][0]["predictions"].as_array().unwrap();
    assert_eq!(preds.len(), 2, "{doc}");
    let p: f64 = preds
        .iter()
        .map(|p| p["probability"].as_f64().unwrap())
        .sum();
    assert!(
        (p - 1.0).abs() < 1e-5,
        "two classes' probabilities sum to 1: {doc}"
    );
    // A head from another model (same width): refused.
    let other = fixture("models/tiny-rn").display().to_string();
    let refused = cli_in(
        elsewhere.path(),
        &["predict", "--adapter", head_s, "--model", &other, image],
    );
    assert_fails_with(
        &refused,
        &["fingerprint", "--allow-model-mismatch", "tiny-rn"],
    );

    // run: CoOp's rows beside the others, in the table after CLIP-Adapter's place.
    let run = s.run_with(
        "models/tiny-clip",
        "coop,zero-shot",
        &["--epochs", "2", "--n-ctx", "4"],
    );
    let table = ok(&run);
    let all = rows(&s.dir().join("results/results.csv"));
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1]["method"], "coop");
    assert_eq!(all[1]["options"], "epochs=2 n-ctx=4");
    let at = |m: &str| {
        table
            .find(m)
            .unwrap_or_else(|| panic!("no `{m}` in {table}"))
    };
    let (zs, coop) = (at("| zero-shot |"), at("| coop (epochs=2 n-ctx=4) |"));
    assert!(zs < coop, "{table}");
}

#[test]
fn coop_bad_input_is_refused_and_nothing_is_written() {
    let s = Setup::new();
    let written = || s.dir().join("coop.safetensors").exists();
    let zero = cli_in(
        s.dir(),
        &[
            "fit",
            "--method",
            "coop",
            "--dataset",
            &s.dataset,
            "--shots",
            "2",
            "--cache",
            "cache",
            "--n-ctx",
            "0",
            "--save",
            "coop.safetensors",
        ],
    );
    assert_fails_with(&zero, &["--n-ctx", "0"]);
    assert_eq!(zero.status.code(), Some(2));
    let long = vec!["word"; 80].join(" ");
    let init = fit_coop(
        &s,
        "models/tiny-clip",
        &["--ctx-init", &long, "--save", "coop.safetensors"],
    );
    assert_fails_with(&init, &["ctx_init", "80 tokens", "77"]);
    // 74 context vectors leave one position between start and end: no room for a class name.
    let overflow = fit_coop(
        &s,
        "models/tiny-clip",
        &["--n-ctx", "74", "--save", "coop.safetensors"],
    );
    assert_fails_with(&overflow, &["class 1 `class 0`", "context length is 77"]);
    // A CoOp option for a method that has no prompt.
    let other = cli_in(
        s.dir(),
        &[
            "fit",
            "--method",
            "clip-adapter",
            "--dataset",
            &s.dataset,
            "--shots",
            "2",
            "--cache",
            "cache",
            "--model",
            "models/tiny-clip",
            "--csc",
            "--save",
            "coop.safetensors",
        ],
    );
    assert_fails_with(&other, &["--csc", "CoOp"]);
    // The model at the features' path now has other content: refused, CoOp would train
    // prompts for another embedding space.
    let clip = s.dir().join("models/tiny-clip");
    std::fs::remove_dir_all(&clip).unwrap();
    std::fs::create_dir_all(&clip).unwrap();
    for e in std::fs::read_dir(s.dir().join("models/tiny-rn")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), clip.join(e.file_name())).unwrap();
    }
    let changed = fit_coop(&s, "models/tiny-clip", &["--save", "coop.safetensors"]);
    assert_fails_with(
        &changed,
        &["fingerprint", "the features were made by", "CoOp trains"],
    );
    // run checks it before any fit: no results are written, not even the other methods'.
    let run = s.run_with("models/tiny-clip", "zero-shot,coop", &[]);
    assert_fails_with(&run, &["fingerprint", "the features were made by"]);
    assert!(!s.dir().join("results").exists());
    assert!(!written());
}

#[test]
fn no_validation_rows_sit_beside_validation_rows() {
    let s = Setup::new();
    let csv = s.dir().join("results/results.csv");
    let run = |validation: &str, extra: &[&str]| {
        let mut options = vec!["--validation", validation];
        options.extend_from_slice(extra);
        s.run_with("models/tiny-clip", "gda,linear-probe", &options)
    };
    ok(&run("val", &[]));
    let table = ok(&run("none", &[]));
    let all = rows(&csv);
    assert_eq!(all.len(), 4, "{all:?}");
    let protocols: Vec<&str> = all
        .iter()
        .map(|r| r["validation"].as_str().unwrap())
        .collect();
    assert_eq!(protocols, ["val", "val", "none", "none"]);
    // Without a validation set: no validation accuracy, and the documented defaults.
    assert_eq!(all[2]["val_accuracy"], "NaN");
    // Methods in table order: the linear probe, then GDA.
    assert_eq!(all[2]["chosen"], "C=1");
    assert_eq!(all[3]["chosen"], "alpha=0.1");
    assert_ne!(all[0]["val_accuracy"], "NaN");
    for label in [
        "| gda |",
        "| gda [no validation] |",
        "| linear-probe [no validation] |",
    ] {
        assert!(table.contains(label), "{label} in {table}");
    }
    // Both protocols resume.
    let again = run("none", &[]);
    ok(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains("0 fitted"));

    // A search needs a validation set; an unknown protocol is an argument error.
    let before = std::fs::read_to_string(&csv).unwrap();
    let search = s.run_with(
        "models/tiny-clip",
        "clip-adapter",
        &["--validation", "none", "--search", "0.2,0.4"],
    );
    assert_fails_with(&search, &["--search", "--validation none"]);
    let unknown = run("test", &[]);
    assert_fails_with(&unknown, &["test", "val", "none"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert_eq!(std::fs::read_to_string(&csv).unwrap(), before);

    let fit = ok(&cli_in(
        s.dir(),
        &[
            "fit",
            "--method",
            "tip-adapter",
            "--dataset",
            &s.dataset,
            "--shots",
            "2",
            "--cache",
            "cache",
            "--model",
            "models/tiny-clip",
            "--validation",
            "none",
            "--json",
        ],
    ));
    let doc: serde_json::Value = serde_json::from_str(&fit).unwrap();
    assert_eq!(doc["validation"], "none");
    assert!(doc["val_accuracy"].is_null(), "{doc}");
    assert!(doc["test_accuracy"].is_number(), "{doc}");
}

/// A default `extract --shots K` caches augmented views, and `run` trains the methods whose
/// authors augment on them; each row says what it trained on.
#[test]
fn default_extraction_augments_and_rows_say_so() {
    let s = Setup::new();
    ok(&s.run("models/tiny-clip", "zero-shot,tip-adapter,clip-adapter"));
    let rows = rows(&s.dir().join("results/results.csv"));
    let of = |m: &str| {
        rows.iter()
            .find(|r| r["method"] == m)
            .map(|r| r["augmentation"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(of("zero-shot"), "none");
    assert_eq!(of("tip-adapter"), "10 augmented views");
    assert_eq!(of("clip-adapter"), "10 augmented views");
}

/// On a cache made without augmented views, a method whose authors augment trains on the centre
/// crop alone: its row says so, and `run` and `fit` warn once per method.
#[test]
fn training_without_the_authors_augmentation_is_warned_about() {
    let tmp = tempfile::tempdir().unwrap();
    crate::features::image_folder(&tmp.path().join("data"), 2, 6);
    let model = fixture("models/tiny-clip");
    let extract = [
        "extract",
        "--model",
        model.to_str().unwrap(),
        "--folder",
        "data",
        "--shots",
        "2",
        "--seed",
        "1",
        "--views",
        "0",
        "--cache",
        "cache",
    ];
    ok(&cli_in(tmp.path(), &extract));
    let grid = [
        "run",
        "--methods",
        "zero-shot,tip-adapter,clip-adapter",
        "--datasets",
        "data",
        "--shots",
        "2",
        "--seeds",
        "1",
        "--cache",
        "cache",
        "--out",
        "results",
    ];
    let out = cli_in(tmp.path(), &grid);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warned = |m: &str| {
        stderr
            .matches(&format!("warning: {m} trained on the centre crop alone"))
            .count()
    };
    assert_eq!(
        (
            warned("tip-adapter"),
            warned("clip-adapter"),
            warned("zero-shot")
        ),
        (1, 1, 0),
        "{stderr}"
    );
    assert!(stderr.contains("--views N"), "{stderr}");
    let rows = rows(&tmp.path().join("results/results.csv"));
    let clip_adapter = rows.iter().find(|r| r["method"] == "clip-adapter").unwrap();
    assert_eq!(clip_adapter["augmentation"], "centre crop only");
    let fit = [
        "fit",
        "--method",
        "clip-adapter",
        "--dataset",
        "data",
        "--shots",
        "2",
        "--cache",
        "cache",
    ];
    let out = cli_in(tmp.path(), &fit);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("clip-adapter trained on the centre crop alone"));
}
