//! `run`, `fit` and `predict` through the command line, on features of two fixture models of
//! the same width (tiny-clip and tiny-rn, 24-wide embeddings): results are never carried over
//! from one model to the other, a head refuses a model that is not the one it was trained on,
//! and everything is checked before the first fit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{assert_fails_with, fixture};

fn cli_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
        .args(args)
        .arg("--quiet")
        .current_dir(dir)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("running clip-adapter")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

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
        cli_in(
            self.dir(),
            &[
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
            ],
        )
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
