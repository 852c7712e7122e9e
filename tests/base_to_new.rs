//! Base-to-new generalisation (CoCoOp's protocol): every benchmark's classes split as CoCoOp's
//! `subsample_classes` splits them (fixture written by `scripts/fixtures/base_to_new.py` from
//! CoOp's split files), and `run --protocol base-to-new` through the command line: rows that
//! record the protocol and the new classes' accuracy, zero-shot's new accuracy equal to scoring
//! the new classes directly, methods that cannot score unseen classes refused with the reason.

use std::path::Path;

use clip_adapter::data::benchmarks::BENCHMARKS;
use clip_adapter::experiment::base_to_new::{BaseToNew, ClassSplit};
use clip_adapter::features::task::{load_task, CacheQuery, Shots};
use clip_adapter::methods::eval;

use crate::common::{assert_fails_with, cli_in, fixture, ok};

#[test]
fn every_benchmark_splits_as_cocoop_does() {
    let text = std::fs::read_to_string(fixture("base_to_new/cocoop_splits.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    for b in &BENCHMARKS {
        let names = b.classnames();
        let e = &expected[b.key];
        let list = |v: &serde_json::Value| -> Vec<String> {
            (v.as_array().unwrap().iter())
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        let s = ClassSplit::of(names.len());
        assert_eq!(
            names.len(),
            e["classes"].as_u64().unwrap() as usize,
            "{}",
            b.key
        );
        assert_eq!(names[s.base_labels()], list(&e["base"]), "{}: base", b.key);
        assert_eq!(names[s.new_labels()], list(&e["new"]), "{}: new", b.key);
    }
}

/// A cache of a 6-class image folder (2-shot draw of seed 1) made by the tiny ViT fixture.
fn cache_of_six_classes(dir: &Path) -> String {
    crate::features::image_folder(&dir.join("data"), 6, 6);
    let model = fixture("models/tiny-clip");
    let model = model.to_str().unwrap();
    ok(&cli_in(
        dir,
        &[
            "extract", "--model", model, "--folder", "data", "--shots", "2", "--seed", "1",
            "--views", "2", "--cache", "cache", "--json",
        ],
    ));
    "data".into()
}

fn run(dir: &Path, dataset: &str, methods: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--protocol", "base-to-new", "--methods", methods];
    args.extend(["--datasets", dataset, "--shots", "2", "--seeds", "1"]);
    args.extend(["--cache", "cache", "--out", "results"]);
    args.extend_from_slice(extra);
    cli_in(dir, &args)
}

#[test]
fn a_base_to_new_run_records_both_halves_and_refuses_heads_of_training_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dataset = cache_of_six_classes(dir);

    // Refused before anything is fitted or written, naming the method and why.
    assert_fails_with(
        &run(dir, &dataset, "zero-shot,linear-probe", &[]),
        &[
            "linear-probe cannot run under the base-to-new protocol",
            "per training class",
        ],
    );
    assert!(!dir.join("results/results.csv").exists());

    let out = ok(&run(
        dir,
        &dataset,
        "zero-shot,clip-adapter",
        &["--epochs", "3"],
    ));
    assert!(out.contains("Base-to-new generalisation, 2 shots"), "{out}");
    let mut csv = csv::Reader::from_path(dir.join("results/results.csv")).unwrap();
    let rows: Vec<csv::StringRecord> = csv.records().map(Result::unwrap).collect();
    let header = csv.headers().unwrap().clone();
    let col = |r: &csv::StringRecord, name: &str| {
        r[header.iter().position(|h| h == name).unwrap()].to_string()
    };
    assert_eq!(rows.len(), 2);
    for r in &rows {
        assert_eq!(col(r, "protocol"), "base-to-new");
        let new: f32 = col(r, "new_accuracy").parse().unwrap();
        assert!((0.0..=100.0).contains(&new), "{new}");
    }

    // Zero-shot's new accuracy is the new test images scored among the new classes' text
    // embeddings, computed here from the cache directly.
    let q = CacheQuery::new(dir.join("cache"), &dataset, Shots::K(2), 1);
    let (task, _) = load_task(&q).unwrap();
    let split = BaseToNew::split(&task, &dataset).unwrap();
    assert_eq!(split.base.classes(), 3);
    let logits = split
        .new
        .test
        .features
        .matmul(false, &split.new.text.weights, true);
    let direct = eval::accuracy(&logits, &split.new.test.labels);
    let zero_shot = rows
        .iter()
        .find(|r| col(r, "method") == "zero-shot")
        .unwrap();
    let recorded: f32 = col(zero_shot, "new_accuracy").parse().unwrap();
    assert!((recorded - direct).abs() < 1e-3, "{recorded} vs {direct}");
    // Its base accuracy: the base test images among the base classes.
    let logits = split
        .base
        .test
        .features
        .matmul(false, &split.base.text.weights, true);
    let base: f32 = col(zero_shot, "test_accuracy").parse().unwrap();
    assert!((base - eval::accuracy(&logits, &split.base.test.labels)).abs() < 1e-3);

    // The rows are resumed as base-to-new rows; the report has the protocol's own section.
    let again = run(dir, &dataset, "zero-shot,clip-adapter", &["--epochs", "3"]);
    assert!(String::from_utf8_lossy(&again.stderr).contains("2 already in"));
    let report = std::fs::read_to_string(dir.join("results/report.md")).unwrap();
    assert!(
        report.contains("## Base-to-new generalisation, 2 shots"),
        "{report}"
    );
    assert!(report.contains("| zero-shot [base-to-new] |"), "{report}");
}
