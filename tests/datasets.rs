//! The user's own data: class folders (split given or seeded as CoOp splits), CSV and JSON
//! manifests, and the benchmark layouts without a split file (FGVC-Aircraft, ImageNet).

use std::path::Path;

use clip_adapter::data::check::check;
use clip_adapter::data::folder::{from_class_folders, from_manifest, SeededSplit};
use clip_adapter::data::{Benchmark, Sample};

fn touch(root: &Path, rel: &str) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b"").unwrap();
}

fn paths(samples: &[Sample]) -> Vec<&str> {
    samples.iter().map(|s| s.impath.as_str()).collect()
}

#[test]
fn class_folders_are_split_with_a_seed_as_coop_does() {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..10 {
        touch(tmp.path(), &format!("a/f{i}.png"));
    }
    for i in 0..7 {
        touch(tmp.path(), &format!("b_c/f{i}.png"));
    }
    touch(tmp.path(), "a/notes.txt");
    touch(tmp.path(), "a/.hidden.png");
    let d = from_class_folders(tmp.path(), SeededSplit::default()).unwrap();
    assert_eq!(d.classnames, ["a", "b c"]);
    // Python: random.seed(1); per class (sorted): random.shuffle(ims); cut round(n*.5), round(n*.2)
    // (7 * 0.5 = 3.5 rounds to 4: half to even).
    assert_eq!(
        paths(&d.train),
        [
            "a/f6.png",
            "a/f8.png",
            "a/f9.png",
            "a/f7.png",
            "a/f5.png",
            "b_c/f2.png",
            "b_c/f5.png",
            "b_c/f4.png",
            "b_c/f3.png"
        ]
    );
    assert_eq!(paths(&d.val), ["a/f3.png", "a/f0.png", "b_c/f0.png"]);
    assert_eq!(
        paths(&d.test),
        [
            "a/f4.png",
            "a/f1.png",
            "a/f2.png",
            "b_c/f1.png",
            "b_c/f6.png"
        ]
    );
    assert_eq!(d.train[5].label, 1);
}

#[test]
fn given_splits_and_manifests_are_read_as_given() {
    let tmp = tempfile::tempdir().unwrap();
    for rel in [
        "train/cat/1.jpg",
        "train/dog/2.jpg",
        "val/dog/3.jpg",
        "test/cat/4.jpg",
    ] {
        touch(tmp.path(), rel);
    }
    let d = from_class_folders(tmp.path(), SeededSplit::default()).unwrap();
    assert_eq!(
        (paths(&d.train), paths(&d.val), paths(&d.test)),
        (
            vec!["train/cat/1.jpg", "train/dog/2.jpg"],
            vec!["val/dog/3.jpg"],
            vec!["test/cat/4.jpg"]
        )
    );
    assert_eq!(d.val[0].label, 1);

    let csv = tmp.path().join("list.csv");
    std::fs::write(&csv, "path,label,split\ntrain/cat/1.jpg,cat,train\n\"train/dog/2.jpg\",dog,train\ntest/cat/4.jpg,cat,test\n").unwrap();
    let m = from_manifest(&csv, SeededSplit::default()).unwrap();
    assert_eq!(m.classnames, ["cat", "dog"]);
    assert_eq!((m.train.len(), m.val.len(), m.test.len()), (2, 0, 1));
    assert_eq!(check(&m, None).missing(), 0);

    let json = tmp.path().join("list.json");
    std::fs::write(
        &json,
        r#"[{"path": "a.jpg", "label": "x", "split": "train"}, {"path": "b.jpg", "label": "y"}]"#,
    )
    .unwrap();
    let err = from_manifest(&json, SeededSplit::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("1 of 2 rows give a split"), "{err}");

    let bad = tmp.path().join("bad.csv");
    std::fs::write(&bad, "a.jpg,x,train\nb.jpg\n").unwrap();
    let err = from_manifest(&bad, SeededSplit::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("bad.csv:2") && err.contains("path,label[,split]"),
        "{err}"
    );
}

#[test]
fn fgvc_and_imagenet_layouts_are_read_and_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let fgvc = Benchmark::find("fgvc_aircraft").unwrap();
    let dir = tmp.path().join("fgvc_aircraft");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("variants.txt"),
        fgvc.classnames().join("\n") + "\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("images_variant_train.txt"),
        "1025794 707-320\n1340192 A300B4\n",
    )
    .unwrap();
    std::fs::write(dir.join("images_variant_val.txt"), "0062765 Boeing 717\n").unwrap();
    std::fs::write(dir.join("images_variant_test.txt"), "1514522 707-320\n").unwrap();
    touch(&dir, "images/1025794.jpg");
    let d = fgvc.load(tmp.path(), None).unwrap();
    assert_eq!(
        d.train[1],
        Sample {
            impath: "1340192.jpg".into(),
            label: fgvc
                .classnames()
                .iter()
                .position(|c| c == "A300B4")
                .unwrap()
        }
    );
    assert_eq!(
        d.val[0].label,
        fgvc.classnames()
            .iter()
            .position(|c| c == "Boeing 717")
            .unwrap()
    );
    let report = check(&d, Some(fgvc.published));
    assert_eq!(report.missing(), 3);
    assert_eq!(
        report.count_mismatches().len(),
        3,
        "4-image toy split vs the published sizes"
    );
    let err = report.require_complete().unwrap_err().to_string();
    assert!(
        err.contains("3 of 4 images listed by the split are not under")
            && err.contains("1340192.jpg"),
        "{err}"
    );

    std::fs::write(dir.join("images_variant_test.txt"), "1514522 Concorde\n").unwrap();
    let err = fgvc.load(tmp.path(), None).unwrap_err().to_string();
    assert!(
        err.contains("images_variant_test.txt:1") && err.contains("`Concorde`"),
        "{err}"
    );

    // ImageNet: sorted wnid folders are the labels; val is the test set; no val.
    let imagenet = Benchmark::find("imagenet").unwrap();
    let names = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/assets/datasets/imagenet_classnames.txt"
    ))
    .unwrap();
    let wnids: Vec<&str> = names
        .lines()
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let root = tmp.path().join("imagenet");
    for w in &wnids {
        touch(&root, &format!("images/train/{w}/{w}_1.JPEG"));
        touch(&root, &format!("images/val/{w}/v.JPEG"));
    }
    let d = imagenet.load(tmp.path(), None).unwrap();
    assert_eq!((d.train.len(), d.val.len(), d.test.len()), (1000, 0, 1000));
    assert_eq!(d.classnames[0], "tench");
    assert_eq!(
        d.train[0].impath,
        format!("train/{}/{}_1.JPEG", wnids[0], wnids[0])
    );
    std::fs::remove_dir_all(root.join("images/train").join(wnids[5])).unwrap();
    let err = imagenet.load(tmp.path(), None).unwrap_err().to_string();
    assert!(err.contains("999 classes, ImageNet has 1000"), "{err}");
}
