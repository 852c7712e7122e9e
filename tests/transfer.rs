//! Cross-dataset transfer and domain generalisation through `run`: one head trained on the
//! source, tested on another dataset's test set; zero-shot's transfer rows equal scoring the
//! target's classes directly; domain generalisation keeps the source's scores of the target's
//! classes, so every method runs there, and a target class the source lacks is refused.

use std::path::Path;

use clip_adapter::features::task::{load_task, CacheQuery, Shots};
use clip_adapter::methods::eval;

use crate::common::{assert_fails_with, cli_in, fixture, ok};

/// A cache with `src` (6 classes) and `tgt` (4 classes: the first 4 of `src`'s names, other
/// images), 2-shot draws of seed 1, from the tiny ViT fixture.
fn two_datasets(dir: &Path) {
    crate::features::image_folder(&dir.join("src"), 6, 6);
    crate::features::image_folder(&dir.join("tgt"), 4, 5);
    let model = fixture("models/tiny-clip");
    for folder in ["src", "tgt"] {
        ok(&cli_in(
            dir,
            &[
                "extract",
                "--model",
                model.to_str().unwrap(),
                "--folder",
                folder,
                "--shots",
                "2",
                "--seed",
                "1",
                "--views",
                "2",
                "--cache",
                "cache",
                "--json",
            ],
        ));
    }
}

fn run(
    dir: &Path,
    protocol: &str,
    source: &str,
    target: &str,
    methods: &str,
) -> std::process::Output {
    let args = [
        "run",
        "--protocol",
        protocol,
        "--source",
        source,
        "--datasets",
        target,
        "--methods",
        methods,
        "--shots",
        "2",
        "--seeds",
        "1",
        "--cache",
        "cache",
        "--out",
        protocol,
    ];
    cli_in(dir, &args)
}

/// `(method, dataset, source_dataset, test_accuracy)` of each row.
fn rows(csv: &Path) -> Vec<(String, String, String, f32)> {
    let mut r = csv::Reader::from_path(csv).unwrap();
    let h = r.headers().unwrap().clone();
    let at = |name: &str| h.iter().position(|c| c == name).unwrap();
    let (m, d, s, t) = (
        at("method"),
        at("dataset"),
        at("source_dataset"),
        at("test_accuracy"),
    );
    (r.records().map(Result::unwrap))
        .map(|x| (x[m].into(), x[d].into(), x[s].into(), x[t].parse().unwrap()))
        .collect()
}

#[test]
fn a_head_trained_on_one_dataset_is_tested_on_another() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    two_datasets(dir);
    // Zero-shot on the target, scored directly from the cache.
    let (tgt, _) = load_task(&CacheQuery::new(dir.join("cache"), "tgt", Shots::K(2), 1)).unwrap();
    let logits = tgt.test.features.matmul(false, &tgt.text.weights, true);
    let direct = eval::accuracy(&logits, &tgt.test.labels);

    // Cross-dataset: the linear probe has no weights for another dataset's classes.
    assert_fails_with(
        &run(dir, "cross-dataset", "src", "tgt", "linear-probe"),
        &["linear-probe cannot run under the cross-dataset protocol"],
    );
    let out = ok(&run(
        dir,
        "cross-dataset",
        "src",
        "tgt",
        "zero-shot,clip-adapter",
    ));
    assert!(
        out.contains("Cross-dataset transfer from src, 2 shots"),
        "{out}"
    );
    let cross = rows(&dir.join("cross-dataset/results.csv"));
    assert_eq!(cross.len(), 4, "{cross:?}");
    assert!(
        cross.iter().all(|r| r.2 == "src"),
        "every row names its source"
    );
    let zs = cross
        .iter()
        .find(|r| r.0 == "zero-shot" && r.1 == "tgt")
        .unwrap();
    assert!((zs.3 - direct).abs() < 1e-3, "{} vs {direct}", zs.3);

    // Domain: every head runs; zero-shot keeps the source's scores of the target's classes,
    // which are the same text embeddings.
    let out = ok(&run(dir, "domain", "src", "tgt", "zero-shot,linear-probe"));
    assert!(
        out.contains("Domain generalisation from src, 2 shots"),
        "{out}"
    );
    let domain = rows(&dir.join("domain/results.csv"));
    assert_eq!(domain.len(), 4, "{domain:?}");
    let zs = domain
        .iter()
        .find(|r| r.0 == "zero-shot" && r.1 == "tgt")
        .unwrap();
    assert!((zs.3 - direct).abs() < 1e-3, "{} vs {direct}", zs.3);
    let lp = domain
        .iter()
        .find(|r| r.0 == "linear-probe" && r.1 == "tgt")
        .unwrap();
    assert!((0.0..=100.0).contains(&lp.3));

    // Resumed: nothing fitted again.
    let again = run(dir, "domain", "src", "tgt", "zero-shot,linear-probe");
    assert!(String::from_utf8_lossy(&again.stderr).contains("4 already in"));

    // A target class the source does not have is not a domain shift.
    assert_fails_with(
        &run(dir, "domain", "tgt", "src", "zero-shot"),
        &["class `class 4` of `src` is not a class of the source `tgt`"],
    );
    // The transfer protocols need their source; the others take none.
    let few = [
        "run",
        "--methods",
        "zero-shot",
        "--datasets",
        "src",
        "--shots",
        "2",
    ];
    let few = [
        &few[..],
        &["--seeds", "1", "--cache", "cache", "--source", "tgt"],
    ]
    .concat();
    assert_fails_with(
        &cli_in(dir, &few),
        &["--source is for the cross-dataset and domain"],
    );
    let no_source = [
        "run",
        "--protocol",
        "domain",
        "--methods",
        "zero-shot",
        "--datasets",
        "tgt",
        "--shots",
        "2",
        "--seeds",
        "1",
        "--cache",
        "cache",
    ];
    assert_fails_with(&cli_in(dir, &no_source), &["name it with --source"]);
}
