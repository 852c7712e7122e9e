//! The experiment layer under faults, as `cache_safety.rs` checks the cache: a grid killed
//! between any two steps of a file's write leaves every file it wrote whole (or absent), and a
//! rerun completes the grid with the rows an uninterrupted run gives; two runs writing one
//! results folder at once keep the rows of both.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::{extract_two_shots, ok};

const METHODS: &str = "zero-shot,linear-probe,tip-adapter,gda";

/// The command `run` of `methods` on the 2-shot draw into `out`, with the fault plan `fault`.
fn grid(dir: &Path, dataset: &str, methods: &str, out: &str, fault: Option<&str>) -> Command {
    let args = [
        "run",
        "--methods",
        methods,
        "--datasets",
        dataset,
        "--shots",
        "2",
        "--seeds",
        "1",
        "--cache",
        "cache",
        "--out",
        out,
        "--quiet",
    ];
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clip-adapter"));
    cmd.args(args).current_dir(dir).env("HF_HUB_OFFLINE", "1");
    if let Some(f) = fault {
        cmd.env("CLIP_ADAPTER_FAULT", f);
    }
    cmd
}

fn run(dir: &Path, dataset: &str, methods: &str, out: &str, fault: Option<&str>) -> Output {
    (grid(dir, dataset, methods, out, fault).output()).expect("running clip-adapter")
}

/// A results file's rows by identity, without the one column that differs between runs (the
/// training time).
fn rows(csv: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(csv).unwrap();
    let headers = r.headers().unwrap().clone();
    let seconds = headers.iter().position(|h| h == "train_seconds").unwrap();
    let mut out: Vec<Vec<String>> = (r.records())
        .map(|rec| {
            let rec = rec.expect("every row whole");
            assert_eq!(rec.len(), headers.len(), "{rec:?}");
            let fields = rec.iter().enumerate().filter(|(i, _)| *i != seconds);
            fields.map(|(_, v)| v.to_string()).collect()
        })
        .collect();
    out.sort();
    out
}

/// Every visible file of the folder (and `figures/`) is whole: the Markdown ends its last line,
/// an SVG closes its root, a PNG decodes.
fn assert_whole(out: &Path) {
    let figures = out.join("figures");
    let files = [out, figures.as_path()]
        .into_iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten());
    for e in files.flatten() {
        let (path, name) = (e.path(), e.file_name().to_string_lossy().into_owned());
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        match path.extension().and_then(|x| x.to_str()) {
            Some("md") | Some("csv") => assert!(bytes.ends_with(b"\n"), "{name} is cut"),
            Some("svg") => assert!(
                String::from_utf8_lossy(&bytes)
                    .trim_end()
                    .ends_with("</svg>"),
                "{name}"
            ),
            Some("png") => assert!(
                image::load_from_memory(&bytes).is_ok(),
                "{name} does not decode"
            ),
            _ => {}
        }
    }
}

#[test]
fn a_grid_killed_at_any_write_resumes_to_the_same_rows() {
    if !clip_adapter::fault::ENABLED {
        eprintln!("skipped: this build has no fault points (build with debug assertions)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    crate::features::image_folder(&tmp.path().join("data"), 2, 6);
    let dataset = extract_two_shots(tmp.path());
    ok(&run(tmp.path(), &dataset, METHODS, "reference", None));
    let reference = rows(&tmp.path().join("reference/results.csv"));
    assert_eq!(reference.len(), 4);

    // A kill before the n-th file is in place (`write`) or just after (`rename`), for every
    // file the grid writes: its rows, its tables, the report and the report's figures.
    let mut killed_runs = 0;
    for site in ["write", "rename"] {
        for n in 1.. {
            let fault = format!("{site}:{n}");
            let out = format!("killed-{site}-{n}");
            let killed = run(tmp.path(), &dataset, METHODS, &out, Some(&fault));
            if killed.status.success() {
                assert!(
                    n > 6,
                    "{fault}: a grid of 4 rows writes more than {n} files"
                );
                break;
            }
            killed_runs += 1;
            check_resumes(tmp.path(), &dataset, &out, &fault, &reference);
        }
    }
    assert!(killed_runs >= 12, "{killed_runs} kills");
}

#[test]
fn a_full_disk_at_any_write_is_an_error_that_names_the_file_and_loses_nothing() {
    if !clip_adapter::fault::ENABLED {
        eprintln!("skipped: this build has no fault points (build with debug assertions)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    crate::features::image_folder(&tmp.path().join("data"), 2, 6);
    let dataset = extract_two_shots(tmp.path());
    ok(&run(tmp.path(), &dataset, METHODS, "reference", None));
    let reference = rows(&tmp.path().join("reference/results.csv"));
    let mut failed_runs = 0;
    for n in 1.. {
        let fault = format!("full:{n}");
        let out = format!("full-{n}");
        let full = run(tmp.path(), &dataset, METHODS, &out, Some(&fault));
        if full.status.success() {
            assert!(
                n > 6,
                "{fault}: a grid of 4 rows writes more than {n} files"
            );
            break;
        }
        failed_runs += 1;
        // Exit 1 with an error naming the file it could not write and why; no abort.
        let stderr = String::from_utf8_lossy(&full.stderr);
        assert_eq!(full.status.code(), Some(1), "{fault}: {stderr}");
        assert!(
            stderr.contains("No space left on device"),
            "{fault}: {stderr}"
        );
        assert!(
            stderr.contains(&out),
            "{fault}: the file is named: {stderr}"
        );
        // The temp file of the failed write is gone; the rest resumes as after a kill.
        let temps = temp_files(&tmp.path().join(&out), ".tmp-");
        assert!(temps.is_empty(), "{fault}: {temps:?}");
        check_resumes(tmp.path(), &dataset, &out, &fault, &reference);
    }
    assert!(failed_runs >= 6, "{failed_runs} failed writes");
}

/// After a kill: every file whole, the rows so far among the reference's; the rerun gives the
/// reference's rows and leaves no temp file of the results.
fn check_resumes(work: &Path, dataset: &str, out: &str, fault: &str, reference: &[Vec<String>]) {
    let dir = work.join(out);
    assert_whole(&dir);
    let csv = dir.join("results.csv");
    if csv.exists() {
        let partial = rows(&csv);
        let known = partial.iter().all(|r| reference.contains(r));
        assert!(known, "{fault}: rows differ: {partial:?}");
    }
    ok(&run(work, dataset, METHODS, out, None));
    assert_eq!(rows(&csv), reference, "{fault}: the resumed grid");
    assert_whole(&dir);
    let left = temp_files(&dir, ".results.csv.tmp-");
    assert!(
        left.is_empty(),
        "{fault}: the killed run's temp file stayed: {left:?}"
    );
}

/// The names in `dir` that contain `pattern`.
fn temp_files(dir: &Path, pattern: &str) -> Vec<String> {
    (std::fs::read_dir(dir).unwrap().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(pattern))
        .collect()
}

#[test]
fn two_runs_writing_one_folder_keep_the_rows_of_both() {
    let tmp = tempfile::tempdir().unwrap();
    crate::features::image_folder(&tmp.path().join("data"), 2, 6);
    let dataset = extract_two_shots(tmp.path());
    let (a, b) = ("zero-shot,tip-adapter", "linear-probe,gda");
    let spawn = |methods: &str| {
        grid(tmp.path(), &dataset, methods, "shared", None)
            .spawn()
            .unwrap()
    };
    let (ra, rb) = (spawn(a), spawn(b));
    for child in [ra, rb] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok(&run(tmp.path(), &dataset, METHODS, "alone", None));
    let shared = rows(&tmp.path().join("shared/results.csv"));
    assert_eq!(
        shared,
        rows(&tmp.path().join("alone/results.csv")),
        "every row of both runs, once"
    );
}
