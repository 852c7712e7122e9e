//! The feature cache never mixes extractions, serves whole-split features, and prints
//! commands that run as printed. Runs `tiny-clip` on small generated image folders.

use std::collections::HashSet;
use std::path::Path;
use std::process::Output;

use clip_adapter::features::task::{load_task, CacheQuery, Shots};
use clip_adapter::features::FeatureError;
use clip_adapter::features::FeatureFile;

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

/// The error `fit` prints for a draw the cache lacks.
fn missing_draw(cache: &Path, dataset: &str, shots: &str, seed: &str) -> String {
    let out = clip_adapter(&[
        "fit",
        "--method",
        "zero-shot",
        "--dataset",
        dataset,
        "--shots",
        shots,
        "--seed",
        seed,
        "--cache",
        cache.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
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
    let mut matched = HashSet::new();
    for id in &ids {
        let mut q = CacheQuery::new(&cache, "data", Shots::K(5), 1);
        q.split = Some(id.to_string());
        let (task, source) = load_task(&q).unwrap();
        assert!(source.split.starts_with(id));
        assert_eq!(task.train.labels.len(), 10);
        // The test file of the chosen extraction, and the extraction (a or b) it belongs to.
        let test = std::fs::read_dir(cache.join("data"))
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
        let test: HashSet<String> = test.meta.impaths.into_iter().collect();
        let which = [&a, &b]
            .iter()
            .position(|s| impaths(s, "test.eval") == test)
            .expect("the test set of one of the two runs");
        matched.insert(which);
        let train = impaths([&a, &b][which], "train-5shot-seed1.eval");
        assert!(train.is_disjoint(&test), "{id}: a training image is tested");
    }
    assert_eq!(matched.len(), 2, "each split id selects its own run");
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
    for bad in ["0", "-1", "many", ""] {
        let e = bad.parse::<Shots>().unwrap_err();
        assert_eq!(e.given, bad);
        assert!(e.to_string().contains("`all`"), "{e}");
    }

    // A draw that was never extracted: the hint names model, cache and source, and runs.
    // The library says what is missing as data; the command line prints the command.
    let err = load_task(&CacheQuery::new(&cache, "data", Shots::K(2), 3)).unwrap_err();
    assert!(matches!(err, FeatureError::Cache { .. }), "{err}");
    let err = missing_draw(&cache, "data", "2", "3");
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
    let err = missing_draw(&empty, "eurosat", "1", "1");
    assert!(
        err.contains("--dataset eurosat --root DIR") && err.contains("MODEL"),
        "{err}"
    );
    let err = missing_draw(&empty, "mine", "1", "1");
    assert!(
        err.contains("--folder DIR") && err.contains("not a benchmark"),
        "{err}"
    );
}

/// Every file under `dir`, recursively, with its bytes, lock files excepted: two caches with
/// equal listings hold the same files byte for byte and no leftovers (temp files, resume
/// folders).
fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if p.is_dir() {
                out.push((format!("{rel}/"), Vec::new()));
                walk(root, &p, out);
            } else if !rel.ends_with(".lock") {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    if dir.exists() {
        walk(dir, dir, &mut out);
    }
    out.sort();
    out
}

fn names(l: &[(String, Vec<u8>)]) -> Vec<&str> {
    l.iter().map(|(n, _)| n.as_str()).collect()
}

/// The small extraction the crash tests repeat: 7 resume chunks, 4 sets, 1 text file.
fn crash_args<'a>(model: &'a str, data: &'a Path, cache: &'a Path) -> Vec<&'a str> {
    vec![
        "extract",
        "--model",
        model,
        "--folder",
        data.to_str().unwrap(),
        "--cache",
        cache.to_str().unwrap(),
        "--shots",
        "2",
        "--views",
        "1",
        "--batch-size",
        "2",
        "--chunk-batches",
        "1",
        "--quiet",
    ]
}

fn killed_by_signal(out: &Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal().is_some()
}

#[test]
fn crashes_at_every_write_rename_and_unlink_recover_to_identical_files() {
    if !clip_adapter::fault::ENABLED {
        // Release builds carry no fault points; the kills below need them.
        eprintln!(
            "SKIPPED crashes_at_every_write_rename_and_unlink_recover_to_identical_files: this \
             build has no fault points (a build without debug assertions); run it with \
             `cargo test --release --features fault-injection --test tests cache_safety`, or \
             without --release"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    let model = model();
    let clean = tmp.path().join("clean");
    let out = clip_adapter(&crash_args(&model, &data, &clean));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = listing(&clean);
    assert_eq!(
        expected
            .iter()
            .filter(|(n, _)| n.ends_with(".safetensors"))
            .count(),
        5
    );

    let mut crashes = 0;
    for site in ["write", "rename", "unlink"] {
        for n in 1.. {
            let cache = tmp.path().join(format!("{site}-{n}"));
            let args = crash_args(&model, &data, &cache);
            let fault = format!("{site}:{n}");
            let out = crate::common::clip_adapter_env(&args, &[("CLIP_ADAPTER_FAULT", &fault)]);
            if out.status.success() {
                // Past the last such step: the run completed untouched.
                assert_eq!(listing(&cache), expected, "{fault} without a crash");
                assert!(n > 1, "{site}: never reached");
                break;
            }
            assert!(killed_by_signal(&out), "{fault}: {:?}", out.status);
            crashes += 1;
            let rerun = clip_adapter(&args);
            assert!(
                rerun.status.success(),
                "{fault}: {}",
                String::from_utf8_lossy(&rerun.stderr)
            );
            let got = listing(&cache);
            assert_eq!(
                names(&got),
                names(&expected),
                "{fault}: leftovers or missing files"
            );
            assert!(got == expected, "{fault}: files differ from a clean run");
        }
    }
    // 12 writes and renames (7 chunks, 4 sets, the text file), 7 chunk deletions.
    assert_eq!(crashes, 31);
}

#[test]
fn random_kills_and_concurrent_runs_end_with_identical_complete_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    let model = model();
    let clean = tmp.path().join("clean");
    assert!(clip_adapter(&crash_args(&model, &data, &clean))
        .status
        .success());
    let expected = listing(&clean);
    let start = std::time::Instant::now();
    let out = clip_adapter(&crash_args(&model, &data, &tmp.path().join("timing")));
    assert!(out.status.success());
    let run_ms = start.elapsed().as_millis() as u64;

    // SIGKILL at pseudo-random points of a run (a fixed LCG: reproducible).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for trial in 0..6 {
        let cache = tmp.path().join(format!("kill-{trial}"));
        let args = crash_args(&model, &data, &cache);
        for _ in 0..2 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let delay = (x >> 33) % run_ms.max(1);
            let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            std::thread::sleep(std::time::Duration::from_millis(delay));
            let _ = child.kill();
            child.wait().unwrap();
        }
        let rerun = clip_adapter(&args);
        assert!(
            rerun.status.success(),
            "{}",
            String::from_utf8_lossy(&rerun.stderr)
        );
        assert!(
            listing(&cache) == expected,
            "trial {trial}: differs from a clean run"
        );
    }

    // Two identical runs at once: one waits for the other set by set; both succeed.
    for trial in 0..3 {
        let cache = tmp.path().join(format!("concurrent-{trial}"));
        let args = crash_args(&model, &data, &cache);
        let spawn = || {
            std::process::Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
                .args(&args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (a, b) = (spawn(), spawn());
        for c in [a, b] {
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(listing(&cache) == expected, "concurrent trial {trial}");
    }
}

#[test]
fn a_second_extract_waits_for_the_holder_and_names_its_pid() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    let model = model();
    let cache = tmp.path().join("cache");
    let args = crash_args(&model, &data, &cache);
    assert!(clip_adapter(&args).status.success());
    // This test process holds the lock of one set, as a running extract would.
    let target = std::fs::read_dir(cache.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("test.eval.")
        })
        .unwrap();
    let held = clip_adapter::features::lock::try_lock(&target)
        .unwrap()
        .unwrap();
    // A leftover of a live writer (this process) must survive the other run's clean-up.
    let name = target.file_name().unwrap().to_string_lossy().into_owned();
    let live_tmp = target.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    std::fs::write(&live_tmp, b"being written").unwrap();

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clip-adapter"))
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufReader::new(stderr).lines();
    let waiting = lines
        .by_ref()
        .map(|l| l.unwrap())
        .find(|l| l.contains("waiting"))
        .expect("a waiting notice");
    assert!(
        waiting.contains("test.eval")
            && waiting.contains(&format!("PID {}", std::process::id()))
            && waiting.contains("waiting"),
        "{waiting}"
    );
    assert!(live_tmp.exists(), "a live holder's temp file is kept");
    std::fs::remove_file(&live_tmp).unwrap();
    drop(held);
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    assert!(child.wait().unwrap().success(), "{rest:?}");
}

#[test]
fn damaged_files_are_rebuilt_and_said_so_old_ones_refused_with_advice() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    let model = model();
    let cache = tmp.path().join("cache");
    let args = crash_args(&model, &data, &cache);
    assert!(clip_adapter(&args).status.success());
    let expected = listing(&cache);
    let file = |prefix: &str| {
        std::fs::read_dir(cache.join("data"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(prefix))
            .unwrap()
    };
    let test = file("test.eval.");
    let good = std::fs::read(&test).unwrap();

    // The last 100 bytes overwritten: the header still parses, the checksum does not match.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 100..].fill(0x5a);
    std::fs::write(&test, &bad).unwrap();
    let err = FeatureFile::read(&test).unwrap_err();
    assert!(
        matches!(err, clip_adapter::features::FeatureError::Damaged { .. }),
        "{err}"
    );
    let out = clip_adapter(&args);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("damaged") && stderr.contains("encoding test.eval again"),
        "{stderr}"
    );
    assert!(listing(&cache) == expected, "rebuilt byte for byte");

    // Truncated: rebuilt too.
    std::fs::write(&test, &good[..good.len() / 2]).unwrap();
    let out = clip_adapter(&args);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("encoding test.eval again"));
    assert!(listing(&cache) == expected);

    // The text file too.
    let text = file("text.");
    let text_bytes = std::fs::read(&text).unwrap();
    let mut bad = text_bytes.clone();
    let n = bad.len();
    bad[n - 10..].fill(0x5a);
    std::fs::write(&text, &bad).unwrap();
    let out = clip_adapter(&args);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("damaged") && stderr.contains("encoding the class prompts again"),
        "{stderr}"
    );
    assert!(listing(&cache) == expected);

    // A file of the previous format version: the loader says so and what to do.
    let head_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let head = String::from_utf8(good[8..8 + head_len].to_vec()).unwrap();
    let old = head.replace("\"version\":\"2\"", "\"version\":\"1\"");
    assert_ne!(old, head);
    let mut bytes = good[..8].to_vec();
    bytes.extend_from_slice(old.as_bytes());
    bytes.extend_from_slice(&good[8 + head_len..]);
    std::fs::write(&test, &bytes).unwrap();
    let err = load_task(&CacheQuery::new(&cache, "data", Shots::K(2), 1))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("version 1") && err.contains("extract again") && err.contains("test.eval"),
        "{err}"
    );
}

#[test]
fn header_sizes_and_labels_are_checked_against_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    let model = model();
    let cache = tmp.path().join("cache");
    assert!(clip_adapter(&crash_args(&model, &data, &cache))
        .status
        .success());
    let test = std::fs::read_dir(cache.join("data"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("test.eval.")
        })
        .unwrap();
    let good = std::fs::read(&test).unwrap();
    let head_len = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&good[8..8 + head_len]).unwrap();
    // Rewrites the header (the data and so its checksum unchanged) and reads the file back.
    let read_with = |edit: &dyn Fn(&mut serde_json::Value)| {
        let mut h = header.clone();
        edit(&mut h);
        let mut head = h.to_string().into_bytes();
        head.resize(head.len().next_multiple_of(8), b' ');
        let mut bytes = (head.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(&good[8 + head_len..]);
        let path = tmp.path().join("edited.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        FeatureFile::read(&path)
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    assert_eq!(read_with(&|_| {}), Ok(()), "an unedited header reads");
    type Edit<'a> = &'a dyn Fn(&mut serde_json::Value);
    let cases: [(&str, Edit); 5] = [
        ("10^12 rows", &|h| {
            h["features"]["shape"][0] = 1_000_000_000_000u64.into()
        }),
        ("rows beyond the data", &|h| {
            h["__metadata__"]["rows"] = "0..1000000000000".into();
            h["__metadata__"]["total"] = "1000000000000".into();
        }),
        ("rows beyond total", &|h| {
            h["__metadata__"]["total"] = "1".into()
        }),
        ("impaths vs total", &|h| {
            h["__metadata__"]["impaths"] = "[\"a\"]".into()
        }),
        ("too few classes for the labels", &|h| {
            h["__metadata__"]["classnames"] = "[\"only\"]".into()
        }),
    ];
    for (what, edit) in cases {
        assert!(read_with(edit).is_err(), "{what}: accepted");
    }
    // A header length of 10^12 bytes: an error, not an allocation.
    let mut bytes = good.clone();
    bytes[..8].copy_from_slice(&1_000_000_000_000u64.to_le_bytes());
    let path = tmp.path().join("huge.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    assert!(FeatureFile::read(&path).is_err());
    let err = FeatureFile::read_meta(&path).unwrap_err().to_string();
    assert!(err.contains("header claims 1000000000000 bytes"), "{err}");
}
