//! The ImageNet variants of domain generalisation (V2, Sketch, A, R) in CoOp's layouts, on
//! generated tiny trees: labels and class names as CoOp's readers give them, the `datasets`
//! check, and a domain run whose target is a test-only variant.

use std::path::Path;

use clip_adapter::data::check::check;
use clip_adapter::data::imagenet_variants::missing_classes;
use clip_adapter::data::{Benchmark, Dataset};
use clip_adapter::features::task::{load_task, CacheQuery, Shots};

use crate::common::{assert_fails_with, cli_in, fixture, ok};

/// A small real image (the extraction decodes it), different per `seed`.
fn image(path: &Path, seed: u32) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = image::RgbImage::from_fn(24 + seed % 9, 20 + seed % 7, |x, y| {
        image::Rgb([
            (x * 9 + seed * 40) as u8,
            (y * 11 + seed * 13) as u8,
            ((x + y) * 5) as u8,
        ])
    });
    img.save(path).unwrap();
}

/// Two images in each of `folders` under `dir`.
fn class_tree(dir: &Path, folders: &[&str]) {
    for (c, f) in folders.iter().enumerate() {
        for i in 0..2 {
            image(&dir.join(f).join(format!("im{i}.png")), (c * 2 + i) as u32);
        }
    }
}

fn labels_and_paths(d: &Dataset) -> Vec<(usize, &str)> {
    d.test
        .iter()
        .map(|s| (s.label, s.impath.as_str()))
        .collect()
}

#[test]
fn variant_layouts_read_as_coops_readers_read_them() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();

    // ImageNet-V2: folder i is class i, all 1000 classes named.
    let v2 = Benchmark::find("imagenet_v2").unwrap();
    let v2_dir = data.join("imagenetv2/imagenetv2-matched-frequency-format-val");
    class_tree(&v2_dir, &["999", "1", "0"]);
    let d = v2.load(data, None).unwrap();
    assert_eq!((d.train.len(), d.val.len(), d.test.len()), (0, 0, 6));
    assert_eq!(d.classnames.len(), 1000);
    assert_eq!(
        (d.classnames[0].as_str(), d.classnames[999].as_str()),
        ("tench", "toilet paper")
    );
    assert_eq!(
        labels_and_paths(&d),
        [
            (0, "0/im0.png"),
            (0, "0/im1.png"),
            (1, "1/im0.png"),
            (1, "1/im1.png"),
            (999, "999/im0.png"),
            (999, "999/im1.png")
        ]
    );
    assert_eq!(missing_classes(v2, data).unwrap().len(), 997);
    std::fs::create_dir_all(v2_dir.join("1000")).unwrap();
    let err = v2.load(data, None).unwrap_err().to_string();
    assert!(err.contains("1000") && err.contains("0 to 999"), "{err}");

    // ImageNet-Sketch: the wnid folders present, sorted, are the labels.
    let sketch = Benchmark::find("imagenet_sketch").unwrap();
    let sketch_dir = data.join("imagenet-sketch/images");
    class_tree(&sketch_dir, &["n01443537", "n01440764"]);
    let d = sketch.load(data, None).unwrap();
    assert_eq!(d.classnames, ["tench", "goldfish"]);
    assert_eq!(labels_and_paths(&d)[2], (1, "n01443537/im0.png"));
    assert_eq!(missing_classes(sketch, data).unwrap().len(), 998);
    std::fs::create_dir_all(sketch_dir.join("n99999999")).unwrap();
    let err = sketch.load(data, None).unwrap_err().to_string();
    assert!(
        err.contains("`n99999999`") && err.contains("not an ImageNet wnid"),
        "{err}"
    );

    // ImageNet-A and -R: README.txt aside, the folders present (of their 200) sorted; names
    // are ImageNet's.
    for (key, folder, wnids, names) in [
        (
            "imagenet_a",
            "imagenet-adversarial/imagenet-a",
            ["n01531178", "n01498041"],
            ["stingray", "goldfinch"],
        ),
        (
            "imagenet_r",
            "imagenet-rendition/imagenet-r",
            ["n12267677", "n01443537"],
            ["goldfish", "acorn"],
        ),
    ] {
        let b = Benchmark::find(key).unwrap();
        let dir = data.join(folder);
        class_tree(&dir, &wnids);
        std::fs::write(dir.join("README.txt"), "about").unwrap();
        let d = b.load(data, None).unwrap();
        assert_eq!(d.classnames, names, "{key}");
        assert_eq!(
            labels_and_paths(&d)[0],
            (0, format!("{}/im0.png", wnids[1]).as_str())
        );
        let report = check(&d, Some(b.published));
        assert!(report.test_only && report.classes_without_train().is_empty());
        assert_eq!(report.count_mismatches()[0].2, b.published.2);
        let missing = missing_classes(b, data).unwrap();
        assert_eq!(missing.len(), 198, "{key}");
        assert!(!missing.contains(&wnids[0].to_string()));
        // Tench is not one of the 200.
        std::fs::create_dir_all(dir.join("n01440764")).unwrap();
        let err = b.load(data, None).unwrap_err().to_string();
        assert!(
            err.contains("n01440764") && err.contains("is not one of the 200 ImageNet classes"),
            "{err}"
        );
        std::fs::remove_dir(dir.join("n01440764")).unwrap();
    }
    std::fs::remove_dir(v2_dir.join("1000")).unwrap();
    std::fs::remove_dir(sketch_dir.join("n99999999")).unwrap();

    // `datasets --root` finds the four, checks them against the published test sizes and
    // reports the missing class folders; `datasets` alone lists them.
    let out = cli_in(data, &["datasets", "--root", "."]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_fails_with(&out, &["problem(s) found"]);
    for line in [
        "imagenet_v2: 1000 classes, train 0, val 0, test 6",
        "imagenet_a: 2 classes, train 0, val 0, test 4",
        "test images per class: 2 to 2",
        "998 class folder(s) missing: n01484850",
        "test: the split lists 4 images, CoOp's has 7500",
    ] {
        assert!(stdout.contains(line), "no `{line}` in {stdout}");
    }
    assert!(!stdout.contains("without a train image"), "{stdout}");
    let list = ok(&cli_in(data, &["datasets"]));
    assert!(
        list.contains("imagenet_r") && list.contains("imagenet-rendition"),
        "{list}"
    );
}

#[test]
fn a_test_only_variant_is_a_domain_target() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let model = fixture("models/tiny-clip");
    let model = model.to_str().unwrap();
    // The source: three of ImageNet-A's classes and one it lacks, named as ImageNet names them.
    class_tree(
        &dir.join("src"),
        &["stingray", "goldfinch", "junco", "tench"],
    );
    for extra in 2..4 {
        for f in ["stingray", "goldfinch", "junco", "tench"] {
            image(
                &dir.join("src").join(f).join(format!("im{extra}.png")),
                extra * 7,
            );
        }
    }
    class_tree(
        &dir.join("data/imagenet-adversarial/imagenet-a"),
        &["n01498041", "n01531178", "n01534433"],
    );
    let extract = |source: &[&str]| {
        let args = [
            &["extract", "--model", model][..],
            source,
            &[
                "--shots", "2", "--seed", "1", "--views", "1", "--cache", "cache",
            ],
        ]
        .concat();
        ok(&cli_in(dir, &args))
    };
    extract(&["--folder", "src"]);
    // A test set only: the draw is empty, the test set is encoded whole.
    let out = extract(&["--dataset", "imagenet_a", "--root", "data"]);
    assert!(
        out.contains("test.eval\t") && !out.contains("train-2shot"),
        "{out}"
    );
    let q = CacheQuery::new(dir.join("cache"), "imagenet_a", Shots::K(2), 1);
    let (task, _) = load_task(&q).unwrap();
    assert_eq!((task.train.labels.len(), task.test.labels.len()), (0, 6));
    assert_eq!(task.classnames, ["stingray", "goldfinch", "junco"]);

    let run = |source: &str, target: &str| {
        let args = [
            "run",
            "--protocol",
            "domain",
            "--source",
            source,
            "--datasets",
            target,
            "--methods",
            "zero-shot,linear-probe",
            "--shots",
            "2",
            "--seeds",
            "1",
            "--cache",
            "cache",
            "--out",
            "domain",
        ];
        cli_in(dir, &args)
    };
    let out = ok(&run("src", "imagenet_a"));
    assert!(
        out.contains("Domain generalisation from src, 2 shots"),
        "{out}"
    );
    let mut r = csv::Reader::from_path(dir.join("domain/results.csv")).unwrap();
    let h = r.headers().unwrap().clone();
    let at = |name: &str| h.iter().position(|c| c == name).unwrap();
    let rows: Vec<(String, String)> = (r.records().map(Result::unwrap))
        .map(|x| (x[at("method")].to_string(), x[at("dataset")].to_string()))
        .collect();
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows
        .iter()
        .any(|r| r.0 == "linear-probe" && r.1 == "imagenet_a"));
    // A test set cannot be a source.
    assert_fails_with(&run("imagenet_a", "src"), &["the training set is empty"]);
}
