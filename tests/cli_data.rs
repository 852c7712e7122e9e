//! The data subcommands as scripts use them: `datasets`, `fewshot`, `extract`, `merge`.

use crate::common::{assert_fails_with as fails_with, clip_adapter, fixture, stdout_json as json};
use crate::features::image_folder;

#[test]
fn datasets_lists_the_eleven_benchmarks() {
    let doc = json(&clip_adapter(&["datasets", "--json"]));
    let rows = doc.as_array().unwrap();
    assert_eq!(rows.len(), 11);
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
        stderr.contains("class 1 `b` has 1 train image(s), fewer than the 4 asked for"),
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
    assert!(std::path::Path::new(doc["text"].as_str().unwrap()).is_file());
    let again = json(&run(with(&["--cache", cache.to_str().unwrap()])));
    assert!(again["sets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["reused"] == true));

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
