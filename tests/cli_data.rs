//! The data subcommands as scripts use them: `datasets`, `fewshot`, `extract`, `merge`.

use crate::common::{assert_fails_with as fails_with, clip_adapter, fixture, stdout_json as json};
use crate::features::image_folder;

#[test]
fn datasets_lists_the_eleven_benchmarks_and_the_imagenet_variants() {
    let doc = json(&clip_adapter(&["datasets", "--json"]));
    let rows = doc.as_array().unwrap();
    assert_eq!(rows.len(), 15);
    let test_only: Vec<&str> = (rows.iter())
        .filter(|r| r["test_only"] == true)
        .map(|r| r["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        test_only,
        ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    );
    let a = rows.iter().find(|r| r["key"] == "imagenet_a").unwrap();
    assert_eq!(
        (a["classes"].as_u64(), a["test"].as_u64()),
        (Some(200), Some(7500))
    );
    let eurosat = rows.iter().find(|r| r["key"] == "eurosat").unwrap();
    assert_eq!(eurosat["classes"], 10);
    assert_eq!(eurosat["templates"][0], "a centered satellite photo of {}.");
}

#[test]
fn fewshot_prints_the_draw_and_states_short_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let split = tmp.path().join("split_zhou_Toy.json");
    let mut train = Vec::new();
    for i in 0..30 {
        train.push(serde_json::json!([format!("a/{i}.jpg"), 0, "a"]));
    }
    train.push(serde_json::json!(["b/0.jpg", 1, "b"]));
    let val = vec![
        serde_json::json!(["a/v.jpg", 0, "a"]),
        serde_json::json!(["b/v.jpg", 1, "b"]),
    ];
    std::fs::write(
        &split,
        serde_json::json!({"train": train, "val": val, "test": []}).to_string(),
    )
    .unwrap();
    let out = clip_adapter(&[
        "fewshot",
        "--split",
        split.to_str().unwrap(),
        "--shots",
        "4",
        "--seed",
        "7",
        "--json",
    ]);
    let doc = json(&out);
    // random.seed(7); random.sample(range(30), 4) -> [10, 4, 12, 20]
    assert_eq!(
        doc["train"],
        serde_json::json!(["a/10.jpg", "a/4.jpg", "a/12.jpg", "a/20.jpg", "b/0.jpg"])
    );
    assert_eq!(doc["val"], serde_json::json!(["a/v.jpg", "b/v.jpg"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 of 2 classes have fewer than the 4 train image(s) asked for")
            && stderr.contains("1 `b` (1)"),
        "{stderr}"
    );
}

#[test]
fn a_split_that_names_classes_differently_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("eurosat");
    std::fs::create_dir_all(&dir).unwrap();
    let rows: Vec<_> = (0..10)
        .map(|l| {
            serde_json::json!([
                format!("{l}.jpg"),
                l,
                if l == 0 {
                    "Forest".to_string()
                } else {
                    format!("c{l}")
                }
            ])
        })
        .collect();
    std::fs::write(
        dir.join("split_zhou_EuroSAT.json"),
        serde_json::json!({"train": rows, "val": [], "test": []}).to_string(),
    )
    .unwrap();
    let out = clip_adapter(&[
        "fewshot",
        "--dataset",
        "eurosat",
        "--root",
        tmp.path().to_str().unwrap(),
        "--shots",
        "1",
    ]);
    fails_with(
        &out,
        &[
            "split_zhou_EuroSAT.json",
            "label 0 `Forest`",
            "`Annual Crop Land`",
        ],
    );
}

#[test]
fn extract_caches_reuses_reports_bad_images_and_merges_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    let model = fixture("models/tiny-clip").display().to_string();
    let cache = tmp.path().join("cache");
    let base = [
        "extract",
        "--model",
        &model,
        "--folder",
        data.to_str().unwrap(),
        "--shots",
        "2",
        "--views",
        "1",
        "--batch-size",
        "2",
        "--json",
    ];
    let with = |extra: &[&str]| -> Vec<String> {
        base.iter().chain(extra).map(|s| s.to_string()).collect()
    };
    let run =
        |args: Vec<String>| clip_adapter(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let doc = json(&run(with(&["--cache", cache.to_str().unwrap()])));
    let sets = doc["sets"].as_array().unwrap();
    let names: Vec<&str> = sets.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "train-2shot-seed1.eval",
            "train-2shot-seed1.aug0",
            "val-2shot-seed1.eval",
            "test.eval"
        ]
    );
    assert!(sets.iter().all(
        |s| s["reused"] == false && std::path::Path::new(s["path"].as_str().unwrap()).is_file()
    ));
    // Every image of a fresh set was encoded by this run, in a measured time.
    assert!(sets.iter().all(|s| s["encoded"] == s["rows"]
        && s["rows"].as_u64().unwrap() > 0
        && s["seconds"].as_f64().unwrap() > 0.0));
    assert!(std::path::Path::new(doc["text"].as_str().unwrap()).is_file());
    let again = json(&run(with(&["--cache", cache.to_str().unwrap()])));
    assert!(again["sets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["reused"] == true && s["encoded"] == 0 && s["seconds"] == 0.0));

    // Shards on "two machines", then merge: the same files.
    let sharded = tmp.path().join("sharded");
    for i in ["0/2", "1/2"] {
        json(&run(with(&[
            "--cache",
            sharded.to_str().unwrap(),
            "--shard",
            i,
        ])));
    }
    let merged = json(&clip_adapter(&[
        "merge",
        "--cache",
        sharded.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(merged.as_array().unwrap().len(), 4);
    for s in sets {
        let p = std::path::Path::new(s["path"].as_str().unwrap());
        let twin = sharded.join(p.strip_prefix(&cache).unwrap());
        assert_eq!(
            std::fs::read(p).unwrap(),
            std::fs::read(&twin).unwrap(),
            "{}",
            twin.display()
        );
    }

    // An unreadable image: a clear error naming it, or skipped with --skip-bad.
    std::fs::write(data.join("class_0/img_01.jpg"), b"not an image at all").unwrap();
    let bad_cache = tmp.path().join("bad");
    let out = run(with(&["--cache", bad_cache.to_str().unwrap()]));
    fails_with(
        &out,
        &["could not be read", "class_0/img_01.jpg", "--skip-bad"],
    );
    let doc = json(&run(with(&[
        "--cache",
        bad_cache.to_str().unwrap(),
        "--skip-bad",
    ])));
    let skipped: Vec<&serde_json::Value> = doc["sets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["skipped"].as_array().unwrap())
        .collect();
    assert!(
        !skipped.is_empty() && skipped.iter().all(|s| *s == "class_0/img_01.jpg"),
        "{doc}"
    );

    // A listed image that is not on disk is named before any encoding.
    let split = tmp.path().join("split.json");
    let rows = serde_json::json!({"train": [["class_0/img_00.png", 0, "a"], ["class_1/img_00.png", 1, "b"]],
                                  "val": [], "test": [["class_1/gone.png", 1, "b"]]});
    std::fs::write(&split, rows.to_string()).unwrap();
    let out = clip_adapter(&[
        "extract",
        "--model",
        &model,
        "--split",
        split.to_str().unwrap(),
        "--root",
        data.to_str().unwrap(),
        "--cache",
        bad_cache.to_str().unwrap(),
    ]);
    fails_with(
        &out,
        &[
            "1 of 3 images listed by the split are not under",
            "class_1/gone.png",
            "--skip-bad",
        ],
    );
}

#[test]
fn datasets_checks_a_folder_or_manifest_and_decodes_on_request() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("photos");
    image_folder(&data, 3, 4);
    let folder = data.to_str().unwrap();
    let doc = json(&clip_adapter(&[
        "datasets", "--folder", folder, "--json", "--decode",
    ]));
    let r = &doc[0];
    assert_eq!(
        (r["dataset"].as_str(), r["classes"].as_u64()),
        (Some("photos"), Some(3))
    );
    assert_eq!(r["decoded"], true);
    assert_eq!(r["unreadable"].as_array().unwrap().len(), 0);
    // 4 images per class: round(2) train, round(0.8) = 1 val, 1 test.
    assert_eq!(
        r["per_class"][1],
        serde_json::json!({"label": 1, "name": "class 1", "train": 2, "val": 1, "test": 1})
    );
    let named = json(&clip_adapter(&[
        "datasets", "--folder", folder, "--name", "holiday", "--json",
    ]));
    assert_eq!(named[0]["dataset"], "holiday");

    // A corrupt image is found by --decode only; a missing one by the plain check.
    std::fs::write(data.join("class_2/img_01.jpg"), b"\xff\xd8\xff truncated").unwrap();
    let out = clip_adapter(&["datasets", "--folder", folder]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = clip_adapter(&["datasets", "--folder", folder, "--decode"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("1 image(s) do not decode") && stdout.contains("class_2/img_01.jpg"),
        "{stdout}"
    );
    fails_with(&out, &["1 problem(s) found in photos"]);

    let manifest = tmp.path().join("list.csv");
    let mut rows = String::from("path,label\n");
    for c in 0..3 {
        rows.push_str(&format!(
            "photos/class_{c}/img_00.png,c{c}\nphotos/class_{c}/img_02.png,c{c}\n"
        ));
    }
    rows.push_str("photos/class_0/nope.jpg,c0\n");
    std::fs::write(&manifest, rows).unwrap();
    let out = clip_adapter(&["datasets", "--manifest", manifest.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("images missing: photos/class_0/nope.jpg"),
        "{stdout}"
    );
    fails_with(&out, &["1 problem(s) found in list"]);
}

#[test]
fn short_classes_are_summarised_in_one_note() {
    let tmp = tempfile::tempdir().unwrap();
    let split = tmp.path().join("split.json");
    let train: Vec<_> = (0..12)
        .map(|c| serde_json::json!([format!("{c}.jpg"), c, format!("c{c}")]))
        .collect();
    std::fs::write(
        &split,
        serde_json::json!({"train": train, "val": [], "test": []}).to_string(),
    )
    .unwrap();
    let s = split.to_str().unwrap();
    let out = clip_adapter(&["fewshot", "--split", s, "--shots", "4"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("12 of 12 classes have fewer than the 4 train image(s)")
            && stderr.contains("0 `c0` (1)")
            && stderr.contains("and 7 more (--verbose lists all)"),
        "{stderr}"
    );
    let out = clip_adapter(&["fewshot", "--split", s, "--shots", "4", "--verbose"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("11 `c11` (1)") && !stderr.contains("more"),
        "{stderr}"
    );
}
