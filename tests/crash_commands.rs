//! `sweep`, `report`, `fit --save` and `import` under kills, as `crash_experiment.rs` checks
//! `run`: each command is killed before (`write:n`) and just after (`rename:n`) every file it
//! writes, in a fresh copy of the same folder; after each kill every visible file is whole (or
//! absent), and a rerun leaves exactly what an uninterrupted run leaves, without the killed
//! run's temp files.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use crate::common::{extract_two_shots, ok};
use crate::import::{npy_f32, npy_i64, snapshot};

/// `clip-adapter ARGS` in `dir`, with the fault plan `fault`.
fn cli(dir: &Path, args: &[&str], fault: Option<&str>) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_clip-adapter"));
    cmd.args(args).current_dir(dir).env("HF_HUB_OFFLINE", "1");
    if let Some(f) = fault {
        cmd.env("CLIP_ADAPTER_FAULT", f);
    }
    cmd.output().expect("running clip-adapter")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(e.file_name());
        match e.path().is_dir() {
            true => copy_dir(&e.path(), &target),
            false => {
                std::fs::copy(e.path(), &target).unwrap();
            }
        }
    }
}

/// Every file under `dir` but the lock files, by path relative to `dir`; `results.csv` as its
/// rows without the one column that differs between runs (the training time).
fn state(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    (snapshot(dir).into_iter())
        .filter(|(p, _)| p.extension().is_none_or(|x| x != "lock"))
        .map(|(p, bytes)| {
            let bytes = match p.file_name().is_some_and(|n| n == "results.csv") {
                true => without_time(&bytes),
                false => bytes,
            };
            (p.strip_prefix(dir).unwrap().to_path_buf(), bytes)
        })
        .collect()
}

/// A results file's rows, sorted, without `train_seconds`.
fn without_time(csv: &[u8]) -> Vec<u8> {
    let mut r = csv::Reader::from_reader(csv);
    let headers = r.headers().unwrap().clone();
    let seconds = headers.iter().position(|h| h == "train_seconds").unwrap();
    let mut rows: Vec<String> = (r.records())
        .map(|rec| {
            let rec = rec.expect("every row whole");
            assert_eq!(rec.len(), headers.len(), "{rec:?}");
            let fields = rec.iter().enumerate().filter(|(i, _)| *i != seconds);
            fields.map(|(_, v)| v).collect::<Vec<_>>().join("\u{1f}")
        })
        .collect();
    rows.sort();
    rows.join("\n").into_bytes()
}

/// Every visible file under `dir` is whole: text ends its last line, an SVG closes, a PNG
/// decodes, a safetensors file parses.
fn assert_whole(dir: &Path, what: &str) {
    for (path, bytes) in snapshot(dir) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let whole = match path.extension().and_then(|x| x.to_str()) {
            Some("md" | "csv" | "txt") => bytes.is_empty() || bytes.ends_with(b"\n"),
            Some("svg") => String::from_utf8_lossy(&bytes)
                .trim_end()
                .ends_with("</svg>"),
            Some("png") => image::load_from_memory(&bytes).is_ok(),
            Some("safetensors") => safetensors::SafeTensors::deserialize(&bytes).is_ok(),
            Some("json") => serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
            _ => true,
        };
        assert!(whole, "{what}: {} is cut", path.display());
    }
}

/// Kills `args`, run in a fresh copy of `base`, at every write and rename it reaches; checks
/// each killed copy as the module says against an uninterrupted run's [`state`] of `out`
/// (relative to the copy). Returns the number of kills.
fn killed_at_every_write(base: &Path, args: &[&str], out: &str) -> usize {
    let work = base.parent().unwrap();
    let reference = work.join("reference");
    copy_dir(base, &reference);
    ok(&cli(&reference, args, None));
    let want = state(&reference.join(out));
    assert!(!want.is_empty(), "{args:?} wrote nothing under {out}");
    let mut kills = 0;
    for site in ["write", "rename"] {
        for n in 1.. {
            let fault = format!("{site}:{n}");
            let dir = work.join(format!("killed-{site}-{n}"));
            copy_dir(base, &dir);
            let killed = cli(&dir, args, Some(&fault));
            if killed.status.success() {
                assert!(n > 1, "{args:?} {fault}: no file written");
                std::fs::remove_dir_all(&dir).unwrap();
                break;
            }
            kills += 1;
            let what = format!("{} killed at {fault}", args[0]);
            assert_whole(&dir.join(out), &what);
            ok(&cli(&dir, args, None));
            let got = state(&dir.join(out));
            let differ: Vec<&PathBuf> = (got.keys().chain(want.keys()))
                .filter(|p| got.get(*p) != want.get(*p))
                .collect();
            if let Some(p) = differ.first() {
                let show = |m: &BTreeMap<PathBuf, Vec<u8>>| {
                    m.get(*p).map(|b| String::from_utf8_lossy(b).into_owned())
                };
                panic!(
                    "{what}, then rerun: {differ:?} differ; {}:\n{:?}\nwant:\n{:?}",
                    p.display(),
                    show(&got),
                    show(&want)
                );
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }
    eprintln!(
        "{}: {kills} kills, each rerun to the uninterrupted run's files",
        args[0]
    );
    kills
}

/// A folder with a 3-class image set's 2-shot tiny-clip features in `cache`; the dataset.
fn base(root: &Path) -> (PathBuf, String) {
    let base = root.join("base");
    crate::features::image_folder(&base.join("data"), 3, 8);
    let dataset = extract_two_shots(&base);
    (base, dataset)
}

#[test]
fn sweep_report_fit_and_import_killed_at_any_write_rerun_to_the_same_files() {
    if !clip_adapter::fault::ENABLED {
        eprintln!("skipped: this build has no fault points (build with debug assertions)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (base, dataset) = base(tmp.path());
    let draw = ["--shots", "2", "--seed", "1", "--cache", "cache"];

    // sweep: its rows, its table, the report and the report's figures.
    let mut sweep = vec![
        "sweep",
        "--over",
        "alpha",
        "--values",
        "0.2,0.6",
        "--datasets",
    ];
    sweep.extend([
        dataset.as_str(),
        "--seeds",
        "1",
        "--epochs",
        "2",
        "--out",
        "results",
    ]);
    sweep.extend(["--shots", "2", "--cache", "cache", "--quiet"]);
    let kills = killed_at_every_write(&base, &sweep, "results");
    assert!(kills >= 6, "sweep: {kills} kills");
    let rows = csv::Reader::from_path(tmp.path().join("reference/results/results.csv"))
        .unwrap()
        .records()
        .count();
    assert_eq!(rows, 2, "a row per swept value");
    std::fs::remove_dir_all(tmp.path().join("reference")).unwrap();

    // report: of a results folder a grid wrote, every file it writes.
    let mut grid = vec![
        "run",
        "--methods",
        "zero-shot,tip-adapter",
        "--datasets",
        &dataset,
    ];
    grid.extend(["--seeds", "1", "--out", "grid", "--quiet"]);
    grid.extend(draw.iter().filter(|a| **a != "--seed" && **a != "1"));
    ok(&cli(&base, &grid, None));
    let kills = killed_at_every_write(&base, &["report", "grid"], "grid");
    assert!(kills >= 4, "report: {kills} kills");
    std::fs::remove_dir_all(tmp.path().join("reference")).unwrap();

    // fit --save: the head.
    let mut fit = vec![
        "fit",
        "--method",
        "clip-adapter",
        "--dataset",
        &dataset,
        "--epochs",
        "2",
    ];
    fit.extend(draw);
    fit.extend(["--save", "heads/adapter.safetensors"]);
    let kills = killed_at_every_write(&base, &fit, "heads");
    assert!(kills >= 2, "fit --save: {kills} kills");
    std::fs::remove_dir_all(tmp.path().join("reference")).unwrap();

    // import: features another program computed, into a cache of their own. The cache records
    // where they came from: the same absolute paths for every copy.
    let inputs = tmp.path().join("inputs");
    std::fs::create_dir_all(&inputs).unwrap();
    let (classes, width) = (3usize, 8usize);
    let values = |rows: usize, salt: usize| -> Vec<f32> {
        (0..rows * width)
            .map(|i| (((i + salt) * 2654435761) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    };
    for (set, rows) in [("train", 6), ("val", 6), ("test", 9)] {
        let features = inputs.join(format!("{set}.npy"));
        npy_f32(&features, rows, width, &values(rows, rows));
        let labels: Vec<i64> = (0..rows).map(|i| (i % classes) as i64).collect();
        npy_i64(&inputs.join(format!("{set}_labels.npy")), &labels);
    }
    npy_f32(
        &inputs.join("text.npy"),
        classes,
        width,
        &values(classes, 7),
    );
    std::fs::write(inputs.join("classnames.txt"), "ant\nbee\ncat\n").unwrap();
    let mut import: Vec<String> = ["import", "--dataset", "imported", "--shots", "2", "--seed"]
        .map(String::from)
        .to_vec();
    import.extend(["1", "--cache", "imports", "--model-name", "elsewhere"].map(String::from));
    for (flag, file) in [
        ("--train", "train.npy"),
        ("--train-labels", "train_labels.npy"),
        ("--val", "val.npy"),
        ("--val-labels", "val_labels.npy"),
        ("--test", "test.npy"),
        ("--test-labels", "test_labels.npy"),
        ("--classnames", "classnames.txt"),
        ("--text", "text.npy"),
    ] {
        import.extend([flag.to_string(), inputs.join(file).display().to_string()]);
    }
    let import: Vec<&str> = import.iter().map(String::as_str).collect();
    let kills = killed_at_every_write(&base, &import, "imports");
    assert!(kills >= 4, "import: {kills} kills");
}
