//! `sweep` through the command line, on features of the tiny-clip fixture (24-wide
//! embeddings): a point per value in results.csv (the rows `run` would make), resumed on a
//! second call, α = 0 equal to zero-shot CLIP, and bad input refused before any fit.

use std::path::Path;
use std::process::Output;

use crate::common::{assert_fails_with, cli_in, ok};

/// A two-class image folder and its 2-shot features from tiny-clip; the dataset's name.
fn setup(dir: &Path) -> String {
    crate::features::image_folder(&dir.join("data"), 2, 6);
    crate::common::extract_two_shots(dir)
}

/// `(method, options, test_accuracy)` of each row.
fn rows(csv: &Path) -> Vec<(String, String, f32)> {
    let mut r = csv::Reader::from_path(csv).unwrap();
    r.deserialize::<std::collections::HashMap<String, String>>()
        .map(|rec| {
            let rec = rec.unwrap();
            (
                rec["method"].clone(),
                rec["options"].clone(),
                rec["test_accuracy"].parse().unwrap(),
            )
        })
        .collect()
}

fn sweep(dir: &Path, dataset: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "sweep",
        "--datasets",
        dataset,
        "--shots",
        "2",
        "--seeds",
        "1",
        "--cache",
        "cache",
        "--out",
        "results",
        "--epochs",
        "3",
    ];
    args.extend_from_slice(extra);
    cli_in(dir, &args)
}

#[test]
fn sweep_writes_a_row_per_value_resumes_and_refuses_bad_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let dataset = setup(dir);
    let csv = dir.join("results/results.csv");

    let table = ok(&sweep(
        dir,
        &dataset,
        &["--over", "reduction", "--values", "1,4,24"],
    ));
    let got = rows(&csv);
    let options: Vec<&str> = got.iter().map(|r| r.1.as_str()).collect();
    assert_eq!(
        options,
        [
            "reduction=1 epochs=3",
            "reduction=4 epochs=3",
            "reduction=24 epochs=3"
        ]
    );
    assert!(got.iter().all(|r| r.0 == "clip-adapter"), "{got:?}");
    assert!(table.contains("| hidden width |"), "{table}");
    for (value, row) in ["D", "D/4", "D/24"].iter().zip(&got) {
        let line = format!("| {value} | ");
        let at = table
            .find(&line)
            .unwrap_or_else(|| panic!("{line}: {table}"));
        let cell = table[at + line.len()..].split(" ±").next().unwrap();
        let cell = cell.trim_start_matches("**");
        assert_eq!(cell, format!("{:.2}", row.2), "{table}");
    }
    let written = std::fs::read_to_string(dir.join("results/sweep-reduction.md")).unwrap();
    assert_eq!(written, table);
    // The folder's report: the same ablation table, and its curve.
    let report = std::fs::read_to_string(dir.join("results/report.md")).unwrap();
    assert!(report.contains("## Ablation: bottleneck width"), "{report}");
    let first_value = table.lines().find(|l| l.starts_with("| D |")).unwrap();
    assert!(report.contains(first_value), "{report}");
    for ext in ["svg", "png"] {
        assert!(dir
            .join(format!("results/figures/ablation_reduction.{ext}"))
            .is_file());
    }

    // Again, with one more value: only that one is fitted.
    let again = sweep(
        dir,
        &dataset,
        &["--over", "reduction", "--values", "1,2,4,24"],
    );
    ok(&again);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("1 fitted, 3 already"), "{stderr}");
    assert_eq!(rows(&csv).len(), 4);

    // α = 0 keeps CLIP's feature: the zero-shot accuracy, as `run` measures it.
    ok(&sweep(
        dir,
        &dataset,
        &["--over", "alpha", "--values", "0,1"],
    ));
    ok(&cli_in(
        dir,
        &[
            "run",
            "--methods",
            "zero-shot",
            "--datasets",
            &dataset,
            "--shots",
            "2",
            "--seeds",
            "1",
            "--cache",
            "cache",
            "--out",
            "results",
        ],
    ));
    let all = rows(&csv);
    let acc = |method: &str, options: &str| {
        (all.iter())
            .find(|r| r.0 == method && r.1 == options)
            .unwrap_or_else(|| panic!("{method} {options}: {all:?}"))
            .2
    };
    assert_eq!(
        acc("clip-adapter", "alpha=0 epochs=3"),
        acc("zero-shot", "")
    );

    // Bad input: refused before any fit, results untouched.
    let before = std::fs::read(&csv).unwrap();
    let bad = [
        (vec!["--over", "beta"], "reduction"),
        (vec!["--over", "reduction", "--values", "0"], "at least 1"),
        (
            vec!["--over", "alpha", "--values", "0.2,1.5"],
            "from 0 to 1",
        ),
        (vec!["--over", "alpha", "--values", "0.2,0.2"], "twice"),
        (vec!["--over", "alpha", "--search", "0.2,0.4"], "--search"),
        (vec!["--over", "reduction", "--reduction", "4"], "swept"),
    ];
    for (args, needle) in bad {
        let out = sweep(dir, &dataset, &args);
        assert_fails_with(&out, &[needle]);
    }
    let missing = cli_in(
        dir,
        &[
            "sweep",
            "--over",
            "alpha",
            "--datasets",
            "nope",
            "--cache",
            "cache",
            "--out",
            "results",
        ],
    );
    assert_fails_with(&missing, &["nope", &dataset]);
    assert_eq!(std::fs::read(&csv).unwrap(), before);
}
