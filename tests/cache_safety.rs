//! The feature cache never mixes extractions, serves whole-split features, and prints
//! commands that run as printed. Runs `tiny-clip` on small generated image folders.

use std::collections::HashSet;
use std::path::Path;
use std::process::Output;

use clip_adapter::features::FeatureFile;
use clip_adapter::methods::from_cache::{load_task, CacheQuery, Shots};

use crate::common::{assert_fails_with, clip_adapter, fixture, stdout_json};
use crate::features::image_folder;

fn model() -> String {
    fixture("models/tiny-clip").display().to_string()
}

/// `extract` of the folder `data` into `cache` with `extra` arguments; must succeed.
fn extract(data: &Path, cache: &Path, extra: &[&str]) -> serde_json::Value {
    let model = model();
    let mut args = vec![
        "extract",
        "--model",
        &model,
        "--folder",
        data.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--batch-size",
        "4",
        "--json",
    ];
    args.extend_from_slice(extra);
    stdout_json(&clip_adapter(&args))
}

fn fit(cache: &Path, shots: &str) -> Output {
    clip_adapter(&[
        "fit",
        "--method",
        "zero-shot",
        "--dataset",
        "data",
        "--shots",
        shots,
        "--cache",
        cache.to_str().unwrap(),
        "--json",
    ])
}

/// The image paths of the set named `name` in an `extract --json` summary.
fn impaths(summary: &serde_json::Value, name: &str) -> HashSet<String> {
    let set = summary["sets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no set {name} in {summary}"));
    let f = FeatureFile::read(Path::new(set["path"].as_str().unwrap())).unwrap();
    f.meta.impaths.into_iter().collect()
}

#[test]
fn two_splits_in_one_cache_are_ambiguous_never_mixed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 10);
    let cache = tmp.path().join("cache");
    let a = extract(&data, &cache, &["--shots", "5", "--split-seed", "1"]);
    let b = extract(&data, &cache, &["--shots", "5", "--split-seed", "2"]);
    // The premise (5 shots = the whole train split of a class): the two splits overlap, so pairing b's train with a's test would leak.
    let leak = impaths(&b, "train-5shot-seed1.eval")
        .intersection(&impaths(&a, "test.eval"))
        .count();
    assert!(leak > 0, "the fixture's splits must overlap for this test");

    let out = fit(&cache, "5");
    assert_fails_with(
        &out,
        &[
            "ambiguous: 2 extractions of `data`",
            "--split-seed 1",
            "--split-seed 2",
            "(test set: 6 images)",
            "delete the files of the others",
        ],
    );

    // Each extraction chosen by its split identity is whole: no training image is tested.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ids: Vec<&str> = stderr
        .lines()
        .filter_map(|l| l.trim().strip_prefix("split "))
        .map(|l| &l[..8])
        .collect();
    assert_eq!(ids.len(), 2, "{stderr}");
    for (id, summary) in ids.iter().zip([&a, &b]) {
        let mut q = CacheQuery::new(&cache, "data", Shots::K(5), 1);
        q.split = Some(id.to_string());
        let (task, source) = load_task(&q).unwrap();
        assert!(source.split.starts_with(id));
        assert_eq!(task.train.labels.len(), 10);
        // Which of a or b it is: the files of that extraction carry this split id.
        let train = impaths(summary, "train-5shot-seed1.eval");
        let test = impaths(summary, "test.eval");
        let f = std::fs::read_dir(cache.join("data"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("test.eval.")
            })
            .map(|p| FeatureFile::read(&p).unwrap())
            .find(|f| f.meta.key.split == source.split)
            .unwrap();
        assert_eq!(f.meta.impaths.iter().cloned().collect::<HashSet<_>>(), test);
        assert!(train.is_disjoint(&test));
    }
}

#[test]
fn views_of_two_crop_scales_are_ambiguous_never_pooled() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    let cache = tmp.path().join("cache");
    let args = ["--shots", "2", "--views", "2"];
    extract(
        &data,
        &cache,
        &[&args[..], &["--crop-scale", "0.5,1"]].concat(),
    );
    extract(
        &data,
        &cache,
        &[&args[..], &["--crop-scale", "0.08,1"]].concat(),
    );
    assert_fails_with(
        &fit(&cache, "2"),
        &[
            "ambiguous: the augmented views of train-2shot-seed1 come from 2 runs",
            "2 view(s) with crop scale 0.08,1",
            "2 view(s) with crop scale 0.5,1",
        ],
    );
    let mut q = CacheQuery::new(&cache, "data", Shots::K(2), 1);
    q.crop_scale = Some((0.08, 1.0));
    let (task, _) = load_task(&q).unwrap();
    assert_eq!(task.train_views.len(), 2);
}

#[test]
fn whole_split_features_load_as_shots_all_and_missing_ones_print_a_runnable_command() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    let cache = tmp.path().join("cache");
    extract(&data, &cache, &["--views", "1"]);

    let (task, _) = load_task(&CacheQuery::new(&cache, "data", Shots::All, 1)).unwrap();
    assert_eq!(
        task.train.labels.len(),
        6,
        "the whole train split: 3 per class"
    );
    assert_eq!(task.train_views.len(), 1);
    assert_eq!(task.val.labels.len(), 2);
    assert_eq!(task.test.labels.len(), 4);
    assert_eq!("all".parse::<Shots>(), Ok(Shots::All));
    assert_eq!("16".parse::<Shots>(), Ok(Shots::K(16)));

    // A draw that was never extracted: the hint names model, cache and source, and runs.
    let err = load_task(&CacheQuery::new(&cache, "data", Shots::K(2), 3))
        .unwrap_err()
        .to_string();
    let command = err
        .split('`')
        .find(|s| s.starts_with("clip-adapter extract"))
        .unwrap_or_else(|| panic!("no command in: {err}"));
    for needle in [
        format!("--model {}", model()),
        format!("--cache {}", cache.display()),
        format!("--folder {} --split-seed 1", data.display()),
        "--shots 2 --seed 3".to_string(),
    ] {
        assert!(command.contains(&needle), "`{needle}` not in `{command}`");
    }
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(command.replacen(
            "clip-adapter",
            &format!("'{}'", env!("CARGO_BIN_EXE_clip-adapter")),
            1,
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (task, _) = load_task(&CacheQuery::new(&cache, "data", Shots::K(2), 3)).unwrap();
    assert_eq!(task.train.labels.len(), 4);

    // An empty cache: a benchmark name gets `--dataset NAME --root DIR`, others a folder.
    let empty = tmp.path().join("empty");
    let err = load_task(&CacheQuery::new(&empty, "eurosat", Shots::K(1), 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--dataset eurosat --root DIR") && err.contains("MODEL"),
        "{err}"
    );
    let err = load_task(&CacheQuery::new(&empty, "mine", Shots::K(1), 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--folder DIR") && err.contains("not a benchmark"),
        "{err}"
    );
}
