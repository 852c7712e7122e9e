//! A grid spread over shards (`run --shard I/N`) and joined (`merge --results`): the shards
//! are disjoint and cover the grid, the joined results.csv is row for row the one a single run
//! writes (but for the training times), rows that disagree and unfinished shards are refused
//! with nothing written, and a bad `--shard` is an argument error.

use std::path::Path;

use crate::common::{assert_fails_with, cli_in, fixture, ok};

/// A cache with `a` (3 classes) and `b` (4 classes), 2-shot draws of seeds 1 and 2, from the
/// tiny ViT fixture.
fn cache(dir: &Path) {
    crate::features::image_folder(&dir.join("a"), 3, 6);
    crate::features::image_folder(&dir.join("b"), 4, 5);
    let model = fixture("models/tiny-clip");
    for folder in ["a", "b"] {
        for seed in ["1", "2"] {
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
                    seed,
                    "--cache",
                    "cache",
                    "--json",
                ],
            ));
        }
    }
}

const METHODS: &str = "zero-shot,tip-adapter,clip-adapter,coop";

/// `run` of the few-shot grid (4 methods × 2 datasets × 2 seeds) into `out`, as `shard`.
fn run(dir: &Path, out: &str, shard: Option<&str>) -> std::process::Output {
    let mut args = vec![
        "run",
        "--methods",
        METHODS,
        "--datasets",
        "a,b",
        "--shots",
        "2",
        "--seeds",
        "1,2",
        "--cache",
        "cache",
        "--out",
        out,
        "--epochs",
        "2",
        "--n-ctx",
        "4",
    ];
    if let Some(s) = shard {
        args.extend_from_slice(&["--shard", s]);
    }
    cli_in(dir, &args)
}

/// The CSV's header and records, each without its `train_seconds`.
fn rows(csv: &Path) -> Vec<Vec<String>> {
    let mut r = csv::Reader::from_path(csv).unwrap();
    let h = r.headers().unwrap().clone();
    let t = h.iter().position(|c| c == "train_seconds").unwrap();
    let strip = |rec: &csv::StringRecord| -> Vec<String> {
        (rec.iter().enumerate())
            .filter(|&(i, _)| i != t)
            .map(|(_, v)| v.to_string())
            .collect()
    };
    std::iter::once(strip(&h))
        .chain(r.records().map(|rec| strip(&rec.unwrap())))
        .collect()
}

fn manifest(dir: &Path, i: usize, n: usize) -> serde_json::Value {
    let path = dir.join(format!("results.shard-{i}-of-{n}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn three_shards_joined_equal_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cache(dir);
    ok(&run(dir, "whole", None));
    let whole = rows(&dir.join("whole/results.csv"));
    assert_eq!(whole.len(), 1 + 16, "{whole:?}");

    for i in 0..3 {
        let shard = format!("{i}/3");
        ok(&run(dir, "sharded", Some(&shard)));
        // A shard writes its own files, and no report.
        assert!(dir
            .join(format!("sharded/results.shard-{i}-of-3.md"))
            .is_file());
    }
    let sharded = dir.join("sharded");
    assert!(!sharded.join("results.csv").exists());
    assert!(!sharded.join("report.md").exists());
    // Disjoint and covering: every cell in exactly one shard, with its row there.
    let mut cells = Vec::new();
    for i in 0..3 {
        let m = manifest(&sharded, i, 3);
        let mine: Vec<u64> = (m["cells"].as_array().unwrap().iter())
            .map(|c| c.as_u64().unwrap())
            .collect();
        assert!(!mine.is_empty(), "shard {i} has cells");
        let own = rows(&sharded.join(format!("results.shard-{i}-of-3.csv")));
        assert_eq!(own.len() - 1, mine.len(), "shard {i}");
        cells.extend(mine);
    }
    cells.sort();
    assert_eq!(cells, (0..16).collect::<Vec<u64>>());

    let table = ok(&cli_in(dir, &["merge", "--results", "sharded"]));
    assert!(table.contains("zero-shot"), "{table}");
    let joined = rows(&sharded.join("results.csv"));
    assert_eq!(joined, whole, "joined shards = one run, row for row");
    assert_eq!(
        std::fs::read_to_string(sharded.join("results.md")).unwrap(),
        std::fs::read_to_string(dir.join("whole/results.md")).unwrap()
    );
    assert!(sharded.join("report.md").is_file());
    // Joining again adds nothing and changes nothing.
    ok(&cli_in(dir, &["merge", "--results", "sharded"]));
    assert_eq!(rows(&sharded.join("results.csv")), whole);
    // A shard run again finds its rows and fits nothing.
    let again = run(dir, "sharded", Some("1/3"));
    ok(&again);
    assert!(String::from_utf8_lossy(&again.stderr).contains(" 0 fitted"));

    refusals(dir, &sharded);
}

/// Rows that disagree, unfinished and missing shards: refused, nothing written.
fn refusals(dir: &Path, sharded: &Path) {
    let copy = dir.join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for e in std::fs::read_dir(sharded).unwrap() {
        let e = e.unwrap();
        if e.file_name()
            .to_string_lossy()
            .starts_with("results.shard-")
        {
            std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
        }
    }
    let csv = |i: usize| copy.join(format!("results.shard-{i}-of-3.csv"));
    let original: Vec<String> = (0..3)
        .map(|i| std::fs::read_to_string(csv(i)).unwrap())
        .collect();
    // Shard 0's first row, also in shard 1 with only its training time changed: agrees.
    let first_row = original[0].lines().nth(1).unwrap().to_string();
    let mut fields: Vec<String> = first_row.split(',').map(str::to_string).collect();
    fields[11] = "999.5".into();
    std::fs::write(csv(1), format!("{}{}\n", original[1], fields.join(","))).unwrap();
    ok(&cli_in(dir, &["merge", "--results", "copy"]));
    assert_eq!(
        rows(&copy.join("results.csv")),
        rows(&sharded.join("results.csv"))
    );
    std::fs::remove_file(copy.join("results.csv")).unwrap();
    // The same row with another test accuracy: refused, naming both files.
    fields[10] = "12.5".into();
    std::fs::write(csv(1), format!("{}{}\n", original[1], fields.join(","))).unwrap();
    let out = cli_in(dir, &["merge", "--results", "copy"]);
    assert_fails_with(
        &out,
        &[
            "results.shard-1-of-3.csv",
            "results.shard-0-of-3.csv",
            "disagrees",
            "test_accuracy",
        ],
    );
    assert!(!copy.join("results.csv").exists(), "nothing written");
    std::fs::write(csv(1), &original[1]).unwrap();
    // A shard with a row missing has not finished.
    let short: Vec<&str> = original[2].lines().collect();
    std::fs::write(csv(2), short[..short.len() - 1].join("\n") + "\n").unwrap();
    let out = cli_in(dir, &["merge", "--results", "copy"]);
    assert_fails_with(
        &out,
        &["results.shard-2-of-3.csv", "has not finished", "1 of"],
    );
    assert!(!copy.join("results.csv").exists());
    // A shard that never started.
    std::fs::write(csv(2), &original[2]).unwrap();
    std::fs::remove_file(copy.join("results.shard-1-of-3.json")).unwrap();
    let out = cli_in(dir, &["merge", "--results", "copy"]);
    assert_fails_with(&out, &["results.shard-1-of-3.json", "1/3 has not started"]);
    // Another shard count beside these.
    std::fs::write(copy.join("results.shard-0-of-2.csv"), &original[0]).unwrap();
    let out = cli_in(dir, &["merge", "--results", "copy"]);
    assert_fails_with(&out, &["different shard counts", "of 2, of 3"]);
    // A folder without shards.
    let out = cli_in(dir, &["merge", "--results", "whole"]);
    assert_fails_with(&out, &["whole", "no shard results"]);
    assert!(!copy.join("results.csv").exists());
}

/// A transfer protocol shards by fit: each fit's rows stay together, and the joined file is
/// the single run's.
#[test]
fn transfer_shards_by_fit() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    cache(dir);
    let args = |out: &str| {
        [
            "run",
            "--protocol",
            "cross-dataset",
            "--source",
            "a",
            "--datasets",
            "b",
            "--methods",
            "zero-shot,clip-adapter",
            "--shots",
            "2",
            "--seeds",
            "1,2",
            "--cache",
            "cache",
            "--epochs",
            "2",
            "--out",
            out,
        ]
        .map(str::to_string)
        .to_vec()
    };
    let cli = |a: &[String]| cli_in(dir, &a.iter().map(String::as_str).collect::<Vec<_>>());
    ok(&cli(&args("whole")));
    for i in 0..2 {
        let mut a = args("sharded");
        a.extend(["--shard".to_string(), format!("{i}/2")]);
        ok(&cli(&a));
        let m = manifest(&dir.join("sharded"), i, 2);
        let own = rows(&dir.join(format!("sharded/results.shard-{i}-of-2.csv")));
        // Two rows per fit: the source's and the target's.
        assert_eq!(own.len() - 1, 2 * m["cells"].as_array().unwrap().len());
    }
    ok(&cli_in(dir, &["merge", "--results", "sharded"]));
    let whole = rows(&dir.join("whole/results.csv"));
    assert_eq!(whole.len(), 1 + 8);
    assert_eq!(rows(&dir.join("sharded/results.csv")), whole);
}

#[test]
fn a_bad_shard_is_an_argument_error() {
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["0/0", "3/2", "2/2", "garbage", "1", "1/-2", "1/x"] {
        let out = cli_in(
            tmp.path(),
            &[
                "run",
                "--methods",
                "zero-shot",
                "--datasets",
                "a",
                "--shard",
                bad,
            ],
        );
        assert_eq!(out.status.code(), Some(2), "`{bad}` is a usage error");
        assert_fails_with(&out, &["--shard", &format!("shard `{bad}`"), "0 <= i < n"]);
    }
    // `--results` is not the cache's merge.
    let out = cli_in(tmp.path(), &["merge", "--results", "r", "--cache", "c"]);
    assert_eq!(out.status.code(), Some(2));
}
