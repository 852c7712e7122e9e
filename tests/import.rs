//! `import`: features made elsewhere, written into the cache as `extract` writes its own.
//!
//! - Round trip: our own extraction re-exported to `.npy` and imported under another name gives
//!   `fit` and `run` the same accuracies, and the text file the same bytes.
//! - open_clip: tests/fixtures/import/ holds open_clip's embeddings of a tiny image dataset with
//!   the tiny-rn fixture model (scripts/fixtures/import_features.py). Imported, they agree with
//!   our extraction of the same images within 1e-4 of the largest magnitude (the tolerance
//!   tests/parity_open_clip.rs states for this ResNet) and every method's test accuracy is
//!   exactly the same.
//! - Every container and encoding numpy, safetensors and PyTorch write reads to the same values.
//! - Every refusal (widths, labels, NaN/inf, duplicate or missing parts, ...) leaves the cache
//!   exactly as it was.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clip_adapter::clip::hub::HubOptions;
use clip_adapter::data::Split;
use clip_adapter::experiment::{MethodOverrides, Validation};
use clip_adapter::features::import::{
    self, arrays, ArrayError, ArraySource, ImportError, ImportSpec, PartSpec, TextSpec,
};
use clip_adapter::features::task::{load_task, CacheQuery, Shots};
use clip_adapter::features::FeatureFile;
use clip_adapter::runner::{fit, FitSpec, RunSpec};

use crate::common::{cli_in, fixture, ok};

/// A `.npy` file of format `version` (1, 2 or 3): the header numpy writes, then `data`.
fn write_npy(path: &Path, descr: &str, shape: &[usize], data: &[u8], version: u8) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let prefix = if version == 1 { 10 } else { 12 };
    while (prefix + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend_from_slice(&[version, 0]);
    match version {
        1 => out.extend_from_slice(&(header.len() as u16).to_le_bytes()),
        _ => out.extend_from_slice(&(header.len() as u32).to_le_bytes()),
    }
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    std::fs::write(path, out).unwrap();
}

pub(crate) fn npy_f32(path: &Path, rows: usize, cols: usize, values: &[f32]) {
    assert_eq!(values.len(), rows * cols);
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<f4", &[rows, cols], &data, 1);
}

pub(crate) fn npy_i64(path: &Path, labels: &[i64]) {
    let data: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(path, "<i8", &[labels.len()], &data, 1);
}

/// Every file under `dir` with its bytes (empty when `dir` does not exist).
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
    out
}

fn spec(
    cache: &Path,
    dataset: &str,
    shots: Shots,
    parts: Vec<PartSpec>,
    classnames: &[&str],
    text: TextSpec,
) -> ImportSpec {
    ImportSpec {
        cache: cache.to_path_buf(),
        dataset: dataset.to_string(),
        shots,
        seed: 1,
        parts,
        classnames: classnames.iter().map(|c| c.to_string()).collect(),
        text,
        model_name: None,
        fingerprint: None,
        hub: HubOptions::from_env(),
    }
}

fn part(split: Split, features: &Path, labels: &Path) -> PartSpec {
    PartSpec {
        split,
        features: ArraySource::new(features),
        labels: ArraySource::new(labels),
    }
}

fn fit_accuracies(cache: &Path, dataset: &str, method: &str, shots: Shots) -> (f32, f32) {
    let spec = FitSpec {
        method: method.parse().unwrap(),
        dataset: dataset.to_string(),
        shots,
        seed: 1,
        cache: cache.to_path_buf(),
        model: None,
        save: None,
        validation: Validation::Val,
        overrides: MethodOverrides::default(),
        hub: HubOptions::from_env(),
    };
    let row = fit(&spec, &mut ())
        .unwrap_or_else(|e| panic!("{method} on {dataset}: {e}"))
        .row;
    (row.val_accuracy, row.test_accuracy)
}

/// The methods that train on cached image and text features alone (CoOp needs the model's text
/// tower, ProLIP the features before the projection).
const METHODS: [&str; 9] = [
    "zero-shot",
    "tip-adapter",
    "tip-adapter-f",
    "linear-probe",
    "lp++",
    "gda",
    "clip-adapter",
    "clap",
    "ape",
];

/// The cached set of `dataset` whose file name starts with `prefix`.
fn cached_set(cache: &Path, dataset: &str, prefix: &str) -> FeatureFile {
    let dir = cache.join(dataset);
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with(prefix) && n.ends_with(".safetensors")
        })
        .collect();
    assert_eq!(found.len(), 1, "{prefix} in {}: {found:?}", dir.display());
    FeatureFile::read(&found.remove(0)).unwrap()
}

fn text_file(cache: &Path, dataset: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(cache.join(dataset))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("text.")
        })
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

/// `extract` of the fixture image dataset with tiny-rn into `dir/cache`.
fn extract(dir: &Path, extra: &[&str]) {
    let model = fixture("models/tiny-rn");
    let shapes = fixture("import/shapes");
    let mut args = vec![
        "extract",
        "--model",
        model.to_str().unwrap(),
        "--folder",
        shapes.to_str().unwrap(),
        "--cache",
        "cache",
        "--views",
        "0",
    ];
    args.extend_from_slice(extra);
    ok(&cli_in(dir, &args));
}

#[test]
fn extracted_features_imported_again_give_the_same_accuracies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    extract(dir, &["--shots", "2", "--seed", "1"]);
    let cache = dir.join("cache");
    // Re-export each set as .npy, as another program would hand them over.
    let mut args: Vec<String> = vec!["import".into(), "--dataset".into(), "again".into()];
    for (flag, prefix) in [
        ("train", "train-2shot-seed1.eval"),
        ("val", "val-2shot-seed1.eval"),
        ("test", "test.eval"),
    ] {
        let f = cached_set(&cache, "shapes", prefix);
        let (x, y) = (
            dir.join(format!("{flag}.npy")),
            dir.join(format!("{flag}_labels.npy")),
        );
        npy_f32(&x, f.rows(), f.dim, &f.features);
        npy_i64(&y, &f.labels);
        args.extend([format!("--{flag}"), x.display().to_string()]);
        args.extend([format!("--{flag}-labels"), y.display().to_string()]);
    }
    let names = dir.join("classnames.txt");
    std::fs::write(&names, "circle\nsquare\ntriangle\n").unwrap();
    let model = fixture("models/tiny-rn").display().to_string();
    args.extend([
        "--classnames".into(),
        names.display().to_string(),
        "--model".into(),
        model,
    ]);
    args.extend(["--shots", "2", "--seed", "1", "--cache", "cache", "--json"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let outcome: serde_json::Value = serde_json::from_str(&ok(&cli_in(dir, &args))).unwrap();
    assert_eq!(outcome["sets"].as_array().unwrap().len(), 3, "{outcome}");

    // The same model identity (the encoder's fingerprint) and the same prompt embeddings.
    let ours = cached_set(&cache, "shapes", "test.eval");
    let theirs = cached_set(&cache, "again", "test.eval");
    assert_eq!(ours.meta.key.model, theirs.meta.key.model);
    assert_eq!(
        (&ours.features, &ours.labels),
        (&theirs.features, &theirs.labels)
    );
    let record = theirs
        .meta
        .imported
        .as_ref()
        .expect("the import is recorded");
    assert_eq!(record.files.len(), 6);
    assert!(
        record.files.iter().all(|f| f.hash.starts_with("xxh3-128:")),
        "{record:?}"
    );
    let text = |d: &str| clip_adapter::features::text::read_text(&text_file(&cache, d)).unwrap();
    assert_eq!(text("shapes").weights, text("again").weights);
    assert_eq!(text("shapes").mean, text("again").mean);

    for method in METHODS {
        let a = fit_accuracies(&cache, "shapes", method, Shots::K(2));
        let b = fit_accuracies(&cache, "again", method, Shots::K(2));
        println!("{method}: extracted {a:?}, imported {b:?}");
        assert_eq!(a, b, "{method}");
    }

    // `run`: one grid over both datasets.
    let run = RunSpec {
        cache: cache.clone(),
        out: dir.join("results"),
        datasets: vec!["shapes".into(), "again".into()],
        shots: vec![2],
        seeds: vec![1],
        methods: ["zero-shot", "tip-adapter", "clip-adapter"]
            .iter()
            .map(|m| m.parse().unwrap())
            .collect(),
        overrides: MethodOverrides::default(),
        validation: Validation::Val,
        protocol: clip_adapter::experiment::Protocol::FewShot,
        source: None,
        model: None,
        reported: None,
        hub: HubOptions::from_env(),
        shard: None,
    };
    let rows = clip_adapter::runner::run(&run, &mut ()).unwrap().rows;
    assert_eq!(rows.len(), 6);
    for r in rows.iter().filter(|r| r.dataset == "shapes") {
        let other = rows
            .iter()
            .find(|o| o.dataset == "again" && o.method == r.method)
            .unwrap();
        assert_eq!(
            (r.val_accuracy, r.test_accuracy),
            (other.val_accuracy, other.test_accuracy),
            "{}",
            r.method
        );
    }

    // The other commands on cached features: an ablation, the folder's report, t-SNE maps.
    let cmd = |args: &[&str]| ok(&cli_in(dir, args));
    let common = ["--shots", "2", "--cache", "cache"];
    cmd(&[
        &[
            "sweep",
            "--over",
            "alpha",
            "--datasets",
            "again",
            "--seeds",
            "1",
        ],
        &common[..],
        &["--out", "ablation", "--epochs", "2"],
    ]
    .concat());
    cmd(&["report", "ablation"]);
    assert!(dir.join("ablation/report.md").is_file());
    cmd(&[
        &["fit", "--method", "clip-adapter", "--dataset", "again"],
        &common[..],
        &["--epochs", "2", "--save", "head.safetensors"],
    ]
    .concat());
    cmd(&[
        &[
            "tsne",
            "--dataset",
            "again",
            "--adapter",
            "head.safetensors",
        ],
        &common[..],
        &["--out", "tsne", "--perplexity", "3"],
    ]
    .concat());
    assert!(dir.join("tsne.svg").is_file() && dir.join("tsne.png").is_file());
}

/// The open_clip fixture's arrays.
fn open_clip(name: &str) -> PathBuf {
    fixture(&format!("import/open_clip/{name}"))
}

fn open_clip_spec(cache: &Path, dataset: &str) -> ImportSpec {
    let inputs = crate::common::inputs("tiny-rn");
    let parts = [Split::Train, Split::Val, Split::Test]
        .into_iter()
        .map(|s| {
            part(
                s,
                &open_clip(&format!("{s}_features.npy")),
                &open_clip(&format!("{s}_labels.npy")),
            )
        })
        .collect();
    let text = TextSpec::Features {
        array: ArraySource::new(open_clip("text.npy")),
        logit_scale: inputs["logit_scale"].as_f64().unwrap() as f32,
        templates: vec!["a photo of a {}.".into()],
    };
    ImportSpec {
        model_name: Some("open_clip tiny-rn".into()),
        ..spec(
            cache,
            dataset,
            Shots::All,
            parts,
            &["circle", "square", "triangle"],
            text,
        )
    }
}

#[test]
fn open_clip_features_give_our_extractions_accuracies() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    extract(dir, &[]);
    let cache = dir.join("cache");
    let outcome = import::import(&open_clip_spec(&cache, "shapes-open-clip"), &mut ()).unwrap();
    assert_eq!(outcome.width, 24);
    assert!(outcome.model.starts_with("imported-"), "{}", outcome.model);

    // The features: within the encoder parity's tolerance, row for row.
    for (prefix, split) in [
        ("train.eval", "train"),
        ("val.eval", "val"),
        ("test.eval", "test"),
    ] {
        let ours = cached_set(&cache, "shapes", prefix);
        let theirs = cached_set(&cache, "shapes-open-clip", prefix);
        assert_eq!(ours.labels, theirs.labels, "{split}");
        let scale = theirs.features.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = (ours.features.iter().zip(&theirs.features))
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        println!(
            "{split}: max |ours - open_clip| / max |open_clip| = {:.2e}",
            diff / scale
        );
        assert!(diff / scale <= 1e-4, "{split}: {}", diff / scale);
    }
    for method in METHODS {
        let a = fit_accuracies(&cache, "shapes", method, Shots::All);
        let b = fit_accuracies(&cache, "shapes-open-clip", method, Shots::All);
        println!("{method}: our extraction {a:?}, open_clip's {b:?}");
        assert_eq!(a.1, b.1, "{method}: test accuracy");
    }
}

#[test]
fn every_container_and_encoding_reads_the_same_values() {
    let want = arrays::read_floats(&ArraySource::new(open_clip("test_features.npy"))).unwrap();
    let labels = arrays::read_integers(&ArraySource::new(open_clip("test_labels.npy"))).unwrap();
    assert_eq!(want.shape, [12, 24]);
    let f = |name: &str| fixture(&format!("import/formats/{name}"));
    let exact = [
        ArraySource::new(f("test_features_v2.npy")),
        ArraySource::new(f("test_features_v3.npy")),
        ArraySource::new(f("test_features_f64.npy")),
        ArraySource::new(f("test_features_big_endian.npy")),
        ArraySource::named(f("test.npz"), "features"),
        ArraySource::named(f("test_compressed.npz"), "features"),
        ArraySource::named(f("test.safetensors"), "features"),
        ArraySource::named(f("test.pt"), "features"),
        ArraySource::new(f("test_features.pt")),
    ];
    for s in exact {
        assert_eq!(
            arrays::read_floats(&s).unwrap_or_else(|e| panic!("{s}: {e}")),
            want,
            "{s}"
        );
    }
    // float16 keeps 11 significant bits.
    let half = arrays::read_floats(&ArraySource::new(f("test_features_f16.npy"))).unwrap();
    for (h, w) in half.values.iter().zip(&want.values) {
        assert!((h - w).abs() <= w.abs() * 1e-3 + 1e-6, "{h} vs {w}");
    }
    for s in [
        ArraySource::new(f("test_labels_i32.npy")),
        ArraySource::named(f("test.npz"), "labels"),
        ArraySource::named(f("test_compressed.npz"), "labels"),
        ArraySource::named(f("test.safetensors"), "labels"),
        ArraySource::named(f("test.pt"), "labels"),
    ] {
        assert_eq!(arrays::read_integers(&s).unwrap(), labels, "{s}");
    }
    // What cannot be read says why, naming the file.
    let fortran =
        arrays::read_floats(&ArraySource::new(f("test_features_fortran.npy"))).unwrap_err();
    assert!(
        matches!(fortran, ArrayError::FortranOrder { .. }),
        "{fortran}"
    );
    assert!(
        fortran.to_string().contains("test_features_fortran.npy"),
        "{fortran}"
    );
    let unnamed = arrays::read_floats(&ArraySource::new(f("test.npz"))).unwrap_err();
    assert!(matches!(unnamed, ArrayError::Unnamed { .. }), "{unnamed}");
    assert!(
        unnamed.to_string().contains("`features`, `labels`"),
        "{unnamed}"
    );
    let missing = arrays::read_floats(&ArraySource::named(f("test.pt"), "x")).unwrap_err();
    assert!(matches!(missing, ArrayError::NoArray { .. }), "{missing}");
    let named_npy = arrays::read_floats(&ArraySource::named(f("test_features_v2.npy"), "x"));
    assert!(
        matches!(named_npy, Err(ArrayError::NpyName { .. })),
        "{named_npy:?}"
    );
    // A header that claims more than the file holds, and one numpy's simple arrays never have.
    let tmp = tempfile::tempdir().unwrap();
    let short = tmp.path().join("short.npy");
    write_npy(&short, "<f4", &[1000, 24], &[0; 64], 2);
    let err = arrays::read_floats(&ArraySource::new(&short)).unwrap_err();
    assert!(matches!(err, ArrayError::Size { .. }), "{err}");
    assert!(
        err.to_string().contains("96000 bytes, the file holds 64"),
        "{err}"
    );
    let huge = tmp.path().join("huge.npy");
    write_npy(&huge, "<f4", &[usize::MAX, 3], &[0; 8], 3);
    let err = arrays::read_floats(&ArraySource::new(&huge)).unwrap_err();
    assert!(matches!(err, ArrayError::Size { .. }), "{err}");
    let structured = tmp.path().join("structured.npy");
    write_npy(&structured, "V8", &[2], &[0; 16], 1);
    let err = arrays::read_floats(&ArraySource::new(&structured)).unwrap_err();
    assert!(matches!(err, ArrayError::ElementType { .. }), "{err}");
    let floats_as_labels =
        arrays::read_integers(&ArraySource::new(open_clip("test_features.npy"))).unwrap_err();
    assert!(
        matches!(floats_as_labels, ArrayError::ElementType { .. }),
        "{floats_as_labels}"
    );

    // Imported from one .npz and one torch.save dict, the files equal the .npy import's.
    let base = open_clip_spec(tmp.path(), "npy");
    let a = import::import(&base, &mut ()).unwrap();
    let mut other = open_clip_spec(tmp.path(), "containers");
    other.parts[2].features = ArraySource::named(f("test_compressed.npz"), "features");
    other.parts[2].labels = ArraySource::named(f("test.pt"), "labels");
    let b = import::import(&other, &mut ()).unwrap();
    let read = |p: &Path| FeatureFile::read(p).unwrap();
    let (x, y) = (read(&a.sets[2].path), read(&b.sets[2].path));
    assert_eq!(
        (x.features, x.labels, x.meta.key.samples),
        (y.features, y.labels, y.meta.key.samples)
    );
}

/// A small valid import (3 classes, width 4) written as .npy files in `dir`, and its spec.
fn synthetic(dir: &Path) -> ImportSpec {
    let feats = |rows: usize, seed: f32| -> Vec<f32> {
        (0..rows * 4)
            .map(|i| ((i as f32 + seed) * 0.37).sin())
            .collect()
    };
    npy_f32(&dir.join("train.npy"), 6, 4, &feats(6, 0.5));
    npy_i64(&dir.join("train_labels.npy"), &[0, 0, 1, 1, 2, 2]);
    npy_f32(&dir.join("test.npy"), 3, 4, &feats(3, 1.5));
    npy_i64(&dir.join("test_labels.npy"), &[2, 1, 0]);
    npy_f32(&dir.join("text.npy"), 3, 4, &feats(3, 2.5));
    let parts = vec![
        part(
            Split::Train,
            &dir.join("train.npy"),
            &dir.join("train_labels.npy"),
        ),
        part(
            Split::Test,
            &dir.join("test.npy"),
            &dir.join("test_labels.npy"),
        ),
    ];
    let text = TextSpec::Features {
        array: ArraySource::new(dir.join("text.npy")),
        logit_scale: 100.0,
        templates: Vec::new(),
    };
    spec(
        &dir.join("cache"),
        "synthetic",
        Shots::K(2),
        parts,
        &["a", "b", "c"],
        text,
    )
}

#[test]
fn a_valid_import_reads_back_as_a_task() {
    let tmp = tempfile::tempdir().unwrap();
    let s = synthetic(tmp.path());
    let outcome = import::import(&s, &mut ()).unwrap();
    let names: Vec<&str> = outcome.sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["train-2shot-seed1.eval", "test.eval"]);
    let (task, source) =
        load_task(&CacheQuery::new(&s.cache, "synthetic", Shots::K(2), 1)).unwrap();
    assert_eq!(task.train.labels, [0, 0, 1, 1, 2, 2]);
    assert_eq!(task.test.labels, [2, 1, 0]);
    assert_eq!(task.val.labels.len(), 0);
    assert_eq!(source.model, outcome.model);
    // The text rows are stored normalised.
    for row in task.text.weights.data.chunks(4) {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-6, "{norm}");
    }
    // Importing the same again rewrites the same bytes.
    let before = snapshot(&s.cache);
    import::import(&s, &mut ()).unwrap();
    assert_eq!(snapshot(&s.cache), before);
}

/// `path`'s `.npy` file as an array in memory: its type string, shape and data.
fn in_memory(label: &str, path: &Path) -> ArraySource {
    let bytes = std::fs::read(path).unwrap();
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    let descr = header.split('\'').nth(3).unwrap();
    let shape = header.split('(').nth(1).unwrap().split(')').next().unwrap();
    let shape = (shape.split(',').map(str::trim).filter(|d| !d.is_empty()))
        .map(|d| d.parse().unwrap())
        .collect();
    ArraySource::in_memory(label, descr, shape, bytes[10 + len..].to_vec()).unwrap()
}

#[test]
fn arrays_in_memory_write_the_files_their_npy_files_write() {
    let tmp = tempfile::tempdir().unwrap();
    let files = synthetic(tmp.path());
    let mut memory = files.clone();
    memory.cache = tmp.path().join("memory-cache");
    for p in &mut memory.parts {
        p.features = in_memory(&format!("{} features", p.split), &p.features.path);
        p.labels = in_memory(&format!("{} labels", p.split), &p.labels.path);
    }
    let TextSpec::Features { array, .. } = &mut memory.text else {
        unreachable!()
    };
    *array = in_memory("text features", &array.path);
    let a = import::import(&files, &mut ()).unwrap();
    let b = import::import(&memory, &mut ()).unwrap();
    assert_eq!((&a.model, a.width), (&b.model, b.width));
    let names = |o: &import::ImportOutcome| -> Vec<String> {
        let mut v: Vec<String> = (o.sets.iter())
            .map(|s| s.path.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        v.push(o.text.file_name().unwrap().to_string_lossy().into_owned());
        v
    };
    assert_eq!(names(&a), names(&b));
    for (x, y) in a.sets.iter().zip(&b.sets) {
        let (x, y) = (
            FeatureFile::read(&x.path).unwrap(),
            FeatureFile::read(&y.path).unwrap(),
        );
        assert_eq!(
            (&x.features, &x.labels, &x.meta.key),
            (&y.features, &y.labels, &y.meta.key)
        );
        // Only the record differs: a hash of each array, no path.
        let record = y.meta.imported.unwrap();
        assert!(record
            .files
            .iter()
            .all(|f| f.path.is_none() && f.hash.starts_with("xxh3-128:")));
        assert!(x
            .meta
            .imported
            .unwrap()
            .files
            .iter()
            .all(|f| f.path.is_some()));
    }
    let text =
        |o: &import::ImportOutcome| clip_adapter::features::text::read_text(&o.text).unwrap();
    assert_eq!(text(&a).weights, text(&b).weights);
    assert_eq!(text(&a).mean, text(&b).mean);

    // The same checks, naming the array: a NaN, a label out of range, a type numpy cannot
    // save, bytes that are not the shape's. Nothing is written.
    let before = snapshot(&memory.cache);
    let mut nan = vec![0.5f32; 12];
    nan[5] = f32::NAN;
    let f32_bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut s = memory.clone();
    s.parts[1].features =
        ArraySource::in_memory("test features", "<f4", vec![3, 4], f32_bytes(&nan)).unwrap();
    let msg = import::import(&s, &mut ()).unwrap_err().to_string();
    assert!(
        msg.contains("test features (in memory)")
            && msg.contains("NaN")
            && msg.contains("row 1, column 1"),
        "{msg}"
    );
    let mut s = memory.clone();
    let labels: Vec<u8> = [0i64, 5, 1].iter().flat_map(|x| x.to_le_bytes()).collect();
    s.parts[1].labels = ArraySource::in_memory("test labels", "<i8", vec![3], labels).unwrap();
    let msg = import::import(&s, &mut ()).unwrap_err().to_string();
    assert!(
        msg.contains("test labels (in memory)") && msg.contains("label 5"),
        "{msg}"
    );
    let mut s = memory.clone();
    s.parts[0].labels = in_memory("train labels", &tmp.path().join("train.npy"));
    let msg = import::import(&s, &mut ()).unwrap_err().to_string();
    assert!(
        msg.contains("train labels (in memory)") && msg.contains("an integer type"),
        "{msg}"
    );
    assert_eq!(snapshot(&memory.cache), before);
    let err = ArraySource::in_memory("text features", "<U5", vec![3], vec![0; 60]).unwrap_err();
    assert!(matches!(err, ArrayError::ElementType { .. }), "{err}");
    let err = ArraySource::in_memory("text features", "<f4", vec![3, 4], vec![0; 47]).unwrap_err();
    assert!(err.to_string().contains("needs 48 bytes"), "{err}");
    // Big-endian arrays are read as numpy reads them.
    let be: Vec<u8> = [1.5f32, -2.0]
        .iter()
        .flat_map(|x| x.to_be_bytes())
        .collect();
    let a = arrays::read_floats(&ArraySource::in_memory("x", ">f4", vec![2], be).unwrap()).unwrap();
    assert_eq!(a.values, [1.5, -2.0]);
}

#[test]
fn every_refusal_leaves_the_cache_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let good = synthetic(dir);
    import::import(&good, &mut ()).unwrap();
    let before = snapshot(&good.cache);
    assert!(!before.is_empty());
    let bad = |name: &str, rows: usize, cols: usize, values: &[f32]| {
        let p = dir.join(name);
        npy_f32(&p, rows, cols, values);
        ArraySource::new(p)
    };
    let labels = |name: &str, values: &[i64]| {
        let p = dir.join(name);
        npy_i64(&p, values);
        ArraySource::new(p)
    };
    let mut nan = vec![0.5f32; 12];
    nan[7] = f32::NAN;
    let mut inf = vec![0.5f32; 12];
    inf[2] = f32::INFINITY;
    type Edit<'a> = Box<dyn Fn(&mut ImportSpec) + 'a>;
    let cases: Vec<(&str, Edit, &[&str])> = vec![
        (
            "width",
            Box::new(|s: &mut ImportSpec| s.parts[1].features = bad("w5.npy", 3, 5, &[0.1; 15])),
            &["test features", "5 wide", "4 wide"],
        ),
        (
            "zero width",
            Box::new(|s: &mut ImportSpec| s.parts[0].features = bad("w0.npy", 6, 0, &[])),
            &["shape [6, 0]", "at least 1"],
        ),
        (
            "text width",
            Box::new(|s: &mut ImportSpec| {
                s.text = TextSpec::Features {
                    array: bad("t5.npy", 3, 5, &[0.1; 15]),
                    logit_scale: 100.0,
                    templates: vec![],
                }
            }),
            &["text features", "5 wide"],
        ),
        (
            "label range",
            Box::new(|s: &mut ImportSpec| s.parts[1].labels = labels("l3.npy", &[0, 3, 1])),
            &["label 3", "row 1", "0..3"],
        ),
        (
            "negative label",
            Box::new(|s: &mut ImportSpec| {
                s.parts[0].labels = labels("lneg.npy", &[0, 0, 1, -1, 2, 2])
            }),
            &["label -1"],
        ),
        (
            "label count",
            Box::new(|s: &mut ImportSpec| s.parts[1].labels = labels("l2.npy", &[0, 1])),
            &["shape [2]", "(3,)"],
        ),
        (
            "NaN",
            Box::new(|s: &mut ImportSpec| s.parts[1].features = bad("nan.npy", 3, 4, &nan)),
            &["NaN", "row 1, column 3"],
        ),
        (
            "inf in text",
            Box::new(|s: &mut ImportSpec| {
                s.text = TextSpec::Features {
                    array: bad("inf.npy", 3, 4, &inf),
                    logit_scale: 100.0,
                    templates: vec![],
                }
            }),
            &["inf", "row 0, column 2"],
        ),
        (
            "duplicate part",
            Box::new(|s: &mut ImportSpec| s.parts.push(s.parts[0].clone())),
            &["train set is given twice"],
        ),
        (
            "missing part",
            Box::new(|s: &mut ImportSpec| {
                s.parts.remove(1);
            }),
            &["no test set"],
        ),
        (
            "more than K shots",
            Box::new(|s: &mut ImportSpec| s.shots = Shots::K(1)),
            &["2 train images", "1 shots"],
        ),
        (
            "text rows",
            Box::new(|s: &mut ImportSpec| {
                s.text = TextSpec::Features {
                    array: bad("t2.npy", 2, 4, &[0.1; 8]),
                    logit_scale: 100.0,
                    templates: vec![],
                }
            }),
            &["2 rows", "3 class names"],
        ),
        (
            "integer features",
            Box::new(|s: &mut ImportSpec| s.parts[0].features = s.parts[0].labels.clone()),
            &["expected a float type"],
        ),
        (
            "one class",
            Box::new(|s: &mut ImportSpec| s.classnames.truncate(1)),
            &["at least 2"],
        ),
        (
            "dataset path",
            Box::new(|s: &mut ImportSpec| s.dataset = "../elsewhere".into()),
            &["not one folder name"],
        ),
        (
            "missing file",
            Box::new(|s: &mut ImportSpec| s.parts[0].features = ArraySource::new("no-such.npy")),
            &["no-such.npy"],
        ),
    ];
    for (what, edit, needles) in cases {
        let mut s = good.clone();
        edit(&mut s);
        let err = import::import(&s, &mut ()).expect_err(what);
        let msg = err.to_string();
        println!("{what}: {msg}");
        for n in needles {
            assert!(msg.contains(n), "{what}: `{msg}` lacks `{n}`");
        }
        assert_eq!(snapshot(&good.cache), before, "{what} changed the cache");
    }
    // The typed errors callers act on.
    let mut s = good.clone();
    s.parts.push(s.parts[1].clone());
    assert!(matches!(
        import::import(&s, &mut ()),
        Err(ImportError::DuplicatePart(Split::Test))
    ));
}

#[test]
fn the_command_refuses_with_the_file_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let s = synthetic(dir);
    let mut nan = vec![0.5f32; 12];
    nan[0] = f32::NAN;
    npy_f32(&dir.join("test_nan.npy"), 3, 4, &nan);
    std::fs::write(dir.join("classes.txt"), "a\nb\nc\n").unwrap();
    let args = |test: &str| -> Vec<String> {
        [
            "import",
            "--dataset",
            "synthetic",
            "--shots",
            "2",
            "--train",
            "train.npy",
            "--train-labels",
            "train_labels.npy",
            "--test",
            test,
            "--test-labels",
            "test_labels.npy",
            "--classnames",
            "classes.txt",
            "--text",
            "text.npy",
            "--cache",
            "cache",
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |a: Vec<String>| cli_in(dir, &a.iter().map(String::as_str).collect::<Vec<_>>());
    let out = run(args("test_nan.npy"));
    crate::common::assert_fails_with(&out, &["test_nan.npy", "NaN", "finite"]);
    assert!(
        !s.cache.exists(),
        "a refused import wrote {}",
        s.cache.display()
    );
    let text = ok(&run(args("test.npy")));
    assert!(
        text.contains("train-2shot-seed1.eval") && text.contains("test.eval"),
        "{text}"
    );
    // Neither the text nor a model: an argument error.
    let mut no_text = args("test.npy");
    no_text.truncate(no_text.len() - 4);
    let out = run(no_text);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
