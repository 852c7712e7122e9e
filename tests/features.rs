//! The feature cache: an interrupted run resumes to byte-identical files, shards merge to the
//! same files, keys keep different settings apart, and unreadable images are reported with
//! their paths or skipped and counted. Runs `tiny-clip` (32 px, embedding width 24) on small
//! generated image folders.

use std::cell::Cell;
use std::path::{Path, PathBuf};

use candle_core::Device;
use clip_adapter::clip::{Clip, ModelFiles, Precision};
use clip_adapter::data::folder::{from_class_folders, SeededSplit};
use clip_adapter::data::{Dataset, FewShot};
use clip_adapter::features::extract::{extract_set, extract_sets, Hooks};
use clip_adapter::features::{
    merge::merge, model_fingerprint, plan, Event, ExtractOptions, FeatureError, FeatureFile,
    FeatureSet, Shard,
};
use clip_adapter::image::augment::Augment;

use crate::common::fixture;

/// `classes` class folders of `per_class` PNGs/JPEGs of varied sizes and colours.
pub fn image_folder(dir: &Path, classes: usize, per_class: usize) {
    for c in 0..classes {
        let class_dir = dir.join(format!("class_{c}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..per_class {
            let (w, h) = (
                30 + (i as u32 * 7) % 23,
                28 + (c as u32 * 5 + i as u32) % 19,
            );
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                image::Rgb([
                    (x * 9 + c as u32 * 70) as u8,
                    (y * 11 + i as u32 * 13) as u8,
                    ((x + y) * 5) as u8,
                ])
            });
            let ext = if i % 2 == 0 { "png" } else { "jpg" };
            img.save(class_dir.join(format!("img_{i:02}.{ext}")))
                .unwrap();
        }
    }
}

fn model() -> (Clip, String) {
    let files = ModelFiles::in_dir(&fixture("models/tiny-clip")).unwrap();
    let fp = model_fingerprint(&files).unwrap();
    (Clip::load(&files, &Device::Cpu).unwrap(), fp)
}

fn sets(clip: &Clip, fp: &str, dataset: &Dataset, views: u32) -> Vec<FeatureSet> {
    let few = FewShot::coop(dataset, 4, 1).unwrap();
    plan(
        dataset,
        Some(&few),
        fp,
        &clip.preprocess(),
        views,
        Augment::coop(32),
        1,
    )
    .unwrap()
}

fn options(cache: &Path, shard: Option<Shard>) -> ExtractOptions {
    ExtractOptions {
        cache_dir: cache.to_path_buf(),
        batch: 2,
        chunk_batches: 1,
        skip_bad: false,
        shard,
        model_name: "tiny-clip".into(),
        source: None,
        precision: Precision::F32,
    }
}

/// Extracts every set; returns the files written.
fn run(
    clip: &Clip,
    sets: &[FeatureSet],
    opts: &ExtractOptions,
    should_stop: &dyn Fn() -> bool,
) -> clip_adapter::features::Result<Vec<PathBuf>> {
    let mut on_event = |_: &Event| {};
    let mut hooks = Hooks {
        on_event: &mut on_event,
        should_stop,
    };
    sets.iter()
        .map(|s| extract_set(clip, s, opts, &mut hooks))
        .collect()
}

fn files_under(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walk(dir) {
        if e.extension().is_some_and(|x| x == "safetensors")
            && !e.to_string_lossy().contains(".shard-")
        {
            out.push((
                e.strip_prefix(dir).unwrap().display().to_string(),
                std::fs::read(&e).unwrap(),
            ));
        }
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn an_interrupted_extraction_resumes_to_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 3, 12);
    let dataset = from_class_folders(&data, SeededSplit::default()).unwrap();
    let (clip, fp) = model();
    let sets = sets(&clip, &fp, &dataset, 2);
    assert_eq!(sets.len(), 5, "train eval + 2 views, val, test");

    let straight = tmp.path().join("straight");
    run(&clip, &sets, &options(&straight, None), &|| false).unwrap();

    // Stop after 3 chunks (the first set has 6 chunks of 2 images), as a Ctrl-C would.
    let resumed = tmp.path().join("resumed");
    let chunks = Cell::new(0);
    let stop = || {
        chunks.set(chunks.get() + 1);
        chunks.get() > 3
    };
    let mut on_event = |_: &Event| {};
    let mut hooks = Hooks {
        on_event: &mut on_event,
        should_stop: &stop,
    };
    let err = extract_sets(&clip, &sets, &options(&resumed, None), &mut hooks).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            FeatureError::Interrupted {
                done: 6,
                total: 12,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        !sets[0].path(&resumed).exists(),
        "no complete file after an interruption"
    );
    // The evaluation view and its two augmented views are encoded together (each image decoded
    // once): three finished chunks of each are kept. Lock files (`features/lock.rs`) aside.
    let mut partial: Vec<PathBuf> = walk(&resumed)
        .into_iter()
        .filter(|p| p.extension().is_none_or(|x| x != "lock"))
        .collect();
    partial.sort();
    assert_eq!(
        partial.len(),
        9,
        "three finished chunks per set kept: {partial:?}"
    );
    // A chunk damaged on disk is not trusted: it is encoded again.
    let eval_chunk = partial
        .iter()
        .find(|p| p.to_string_lossy().contains(".eval."))
        .unwrap();
    std::fs::write(eval_chunk, b"not a safetensors file").unwrap();

    let mut events = Vec::new();
    let mut on_event = |e: &Event| events.push(e.clone());
    let mut hooks = Hooks {
        on_event: &mut on_event,
        should_stop: &|| false,
    };
    for s in &sets {
        extract_set(&clip, s, &options(&resumed, None), &mut hooks).unwrap();
    }
    assert!(
        events.contains(&Event::Start {
            set: sets[0].name(),
            total: 12,
            done: 4
        }),
        "resumes after the two intact chunks: {events:?}"
    );
    assert_eq!(
        files_under(&straight),
        files_under(&resumed),
        "resumed files are byte-identical"
    );
    assert!(
        walk(&resumed)
            .iter()
            .all(|p| !p.to_string_lossy().contains(".partial")),
        "partial chunks removed"
    );

    // A second run reuses every file.
    let mut reused = Vec::new();
    let mut on_event = |e: &Event| {
        if let Event::Done { reused: r, .. } = e {
            reused.push(*r)
        }
    };
    let mut hooks = Hooks {
        on_event: &mut on_event,
        should_stop: &|| false,
    };
    for s in &sets {
        extract_set(&clip, s, &options(&resumed, None), &mut hooks).unwrap();
    }
    assert_eq!(reused, [true; 5]);
}

#[test]
fn shards_merge_into_the_same_files_as_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 10);
    let dataset = from_class_folders(&data, SeededSplit::default()).unwrap();
    let (clip, fp) = model();
    let sets = sets(&clip, &fp, &dataset, 1);
    let straight = tmp.path().join("straight");
    run(&clip, &sets, &options(&straight, None), &|| false).unwrap();

    // 5 shards for sets of 2 to 8 chunks: some shards get no rows at all.
    let sharded = tmp.path().join("sharded");
    for i in 0..5 {
        run(
            &clip,
            &sets,
            &options(&sharded, Some(Shard { index: i, count: 5 })),
            &|| false,
        )
        .unwrap();
    }
    let merged = merge(&sharded).unwrap();
    assert_eq!(merged.len(), sets.len());
    assert_eq!(files_under(&straight), files_under(&sharded));

    // A missing shard is named.
    let partial = tmp.path().join("partial");
    run(
        &clip,
        &sets,
        &options(&partial, Some(Shard { index: 0, count: 2 })),
        &|| false,
    )
    .unwrap();
    let err = merge(&partial).unwrap_err().to_string();
    assert!(err.contains("shard(s) 1/2 have not finished"), "{err}");
}

#[test]
fn files_carry_their_key_and_metadata_and_different_settings_never_share_a_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 8);
    let dataset = from_class_folders(&data, SeededSplit::default()).unwrap();
    let (clip, fp) = model();
    let a = sets(&clip, &fp, &dataset, 2);
    let names: std::collections::HashSet<_> = a.iter().map(|s| s.key.file_name()).collect();
    assert_eq!(
        names.len(),
        a.len(),
        "train eval, two views, val and test have distinct keys"
    );

    // Another model, draw, crop scale or seed: other keys.
    let other_model = plan(
        &dataset,
        Some(&FewShot::coop(&dataset, 4, 1).unwrap()),
        "other",
        &clip.preprocess(),
        2,
        Augment::coop(32),
        1,
    )
    .unwrap();
    let other_seed = plan(
        &dataset,
        Some(&FewShot::coop(&dataset, 4, 2).unwrap()),
        &fp,
        &clip.preprocess(),
        2,
        Augment::coop(32),
        2,
    )
    .unwrap();
    let other_scale = plan(
        &dataset,
        Some(&FewShot::coop(&dataset, 4, 1).unwrap()),
        &fp,
        &clip.preprocess(),
        2,
        Augment::half_area(32),
        1,
    )
    .unwrap();
    for (x, y) in a.iter().zip(&other_model) {
        assert_ne!(x.key.file_name(), y.key.file_name());
    }
    // Another seed draws other shots and views; the full test set is the same set.
    for (x, y) in a.iter().zip(&other_seed) {
        assert_eq!(
            x.key.part == "test",
            x.key.file_name() == y.key.file_name(),
            "{}",
            x.key.part
        );
    }
    assert_eq!(
        a[0].key.file_name(),
        other_scale[0].key.file_name(),
        "the eval view does not depend on the crop scale"
    );
    assert_ne!(a[1].key.file_name(), other_scale[1].key.file_name());

    let path = &run(&clip, &a[..2], &options(tmp.path(), None), &|| false).unwrap()[1];
    let f = FeatureFile::read(path).unwrap();
    assert_eq!(f.meta.key, a[1].key);
    assert_eq!(f.meta.classnames, ["class 0", "class 1"]);
    assert_eq!((f.rows(), f.dim), (a[1].samples.len(), 24));
    assert_eq!(
        f.meta.impaths,
        a[1].samples
            .iter()
            .map(|s| s.impath.clone())
            .collect::<Vec<_>>()
    );
    // Readable by any safetensors reader, metadata included.
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().as_ref().unwrap();
    assert_eq!(meta["format"], "clip-adapter-features");
    assert_eq!(meta["model"], fp);
    assert!(
        meta["transform"].contains("\"kind\":\"augment\""),
        "{}",
        meta["transform"]
    );
    assert_eq!(meta["view"], "0");
    // The features are the model's: the eval view equals encode_image_files.
    let eval =
        FeatureFile::read(&run(&clip, &a[..1], &options(tmp.path(), None), &|| false).unwrap()[0])
            .unwrap();
    let paths: Vec<PathBuf> = a[0].samples.iter().map(|s| dataset.path(s)).collect();
    let direct =
        clip_adapter::encode::encode_image_files(&clip, &paths, 2, &mut |_, _| {}).unwrap();
    let diff = direct
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .zip(&eval.features)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(diff < 1e-5, "cache vs direct encoding: {diff}");
}

#[test]
fn unreadable_images_stop_the_run_with_their_paths_or_are_skipped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 2, 6);
    std::fs::write(
        data.join("class_1/img_03.jpg"),
        b"\xff\xd8\xff\xe0 truncated",
    )
    .unwrap();
    let dataset = from_class_folders(&data, SeededSplit::default()).unwrap();
    let (clip, fp) = model();
    let test_set = plan(
        &dataset,
        None,
        &fp,
        &clip.preprocess(),
        0,
        Augment::coop(32),
        1,
    )
    .unwrap()
    .into_iter()
    .find(|s| s.samples.iter().any(|x| x.impath == "class_1/img_03.jpg"))
    .expect("the bad image is in some split");

    let err = run(
        &clip,
        std::slice::from_ref(&test_set),
        &options(tmp.path(), None),
        &|| false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("1 image(s) could not be read")
            && err.contains("class_1/img_03.jpg")
            && err.contains("skip_bad"),
        "{err}"
    );

    let mut opts = options(tmp.path(), None);
    opts.skip_bad = true;
    let path = &run(&clip, std::slice::from_ref(&test_set), &opts, &|| false).unwrap()[0];
    let f = FeatureFile::read(path).unwrap();
    assert_eq!(f.meta.skipped, ["class_1/img_03.jpg"]);
    assert_eq!(f.rows(), test_set.samples.len() - 1);
    assert!(!f.index.contains(
        &(test_set
            .samples
            .iter()
            .position(|s| s.impath == "class_1/img_03.jpg")
            .unwrap() as i64)
    ));

    // Without --skip-bad, a cache that lacks images is not silently used.
    let err = run(
        &clip,
        std::slice::from_ref(&test_set),
        &options(tmp.path(), None),
        &|| false,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("made with `skip_bad`") && err.contains("class_1/img_03.jpg"),
        "{err}"
    );
}

#[test]
fn views_decoded_once_give_the_same_bytes_as_one_set_at_a_time() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    image_folder(&data, 3, 8);
    let dataset = from_class_folders(&data, SeededSplit::default()).unwrap();
    let (clip, fp) = model();
    let sets = sets(&clip, &fp, &dataset, 3);
    // One set per call: every set decodes its images itself.
    let single = tmp.path().join("single");
    run(&clip, &sets, &options(&single, None), &|| false).unwrap();
    // All at once: the evaluation view and the three views share one decoding per image.
    let grouped = tmp.path().join("grouped");
    let mut decoded = Vec::new();
    let mut on_event = |e: &Event| {
        if let Event::Start { set, .. } = e {
            decoded.push(set.clone())
        }
    };
    let mut hooks = Hooks {
        on_event: &mut on_event,
        should_stop: &|| false,
    };
    extract_sets(&clip, &sets, &options(&grouped, None), &mut hooks).unwrap();
    assert_eq!(decoded.len(), 6, "train eval + 3 views, val, test");
    assert_eq!(files_under(&single), files_under(&grouped));
}
