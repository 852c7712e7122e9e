//! Replays every fuzz target's inputs (`fuzz/fuzz_targets/`) through the same reader and the
//! same checks as the target, so CI exercises each reader without a fuzzer:
//!
//! - the committed seed corpus, `fuzz/seeds/<target>/` (written by `fuzz/make_seeds.sh`):
//!   valid and invalid inputs alike, each must be read without a panic, within a time bound,
//!   and pass the target's own checks when it is accepted;
//! - the inputs a fuzzer found to crash, hang or exhaust memory, `tests/fixtures/fuzz/<target>/`:
//!   each must be refused with an error.
//!
//! A target without seeds fails its test: a replay over an empty folder would pass whatever the
//! reader does. Every target has a test here (`every_fuzz_target_is_replayed`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use clip_adapter::clip::load::{config::ClipConfig, open_clip_config, pickle, torch_archive};
use clip_adapter::data::{folder, split_file};
use clip_adapter::features::{text::text_from_bytes, FeatureFile};
use clip_adapter::methods::{coop::CoopHead, head};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir`, sorted, with their bytes (none when the folder does not exist).
fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("listing fuzz inputs").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("reading a fuzz input");
            (p, bytes)
        })
        .collect()
}

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files_in(&root().join("fuzz/seeds").join(target))
}

fn crashes(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    files_in(&root().join("tests/fixtures/fuzz").join(target))
}

/// Generous for a debug build: the fuzzer's timeouts were inputs that took seconds, and a seed
/// is a few KB.
const BOUND: Duration = Duration::from_secs(10);

/// Runs `read` on every seed (no panic, within [`BOUND`], `check` on what it accepts) and every
/// crash input of `target` (refused, within [`BOUND`]).
fn replay<T, E: std::fmt::Display>(
    target: &str,
    read: impl Fn(&Path, &[u8]) -> Result<T, E>,
    check: impl Fn(&Path, &T),
) {
    let seeds = seeds(target);
    assert!(
        !seeds.is_empty(),
        "fuzz/seeds/{target}/ is empty: a replay of nothing proves nothing (run fuzz/make_seeds.sh)"
    );
    let mut accepted = 0;
    for (path, bytes) in &seeds {
        let start = Instant::now();
        let result = read(path, bytes);
        assert!(
            start.elapsed() < BOUND,
            "{}: took {:?}",
            path.display(),
            start.elapsed()
        );
        if let Ok(value) = &result {
            check(path, value);
            accepted += 1;
        }
    }
    // Seeds that are all refused would never reach the reader's success path or its checks.
    assert!(
        accepted > 0,
        "fuzz/seeds/{target}/: no seed is a valid input"
    );
    for (path, bytes) in crashes(target) {
        let start = Instant::now();
        let result = read(&path, &bytes);
        assert!(
            start.elapsed() < BOUND,
            "{}: took {:?}",
            path.display(),
            start.elapsed()
        );
        assert!(
            result.is_err(),
            "{}: the reader accepted an input kept as malformed",
            path.display()
        );
    }
}

fn text(bytes: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(bytes).map_err(|e| e.to_string())
}

fn no_check<T>(_: &Path, _: &T) {}

/// The targets, by the name of their file in `fuzz/fuzz_targets/`.
const TARGETS: &[&str] = &[
    "feature_file",
    "head",
    "hf_config",
    "image_decode",
    "manifest_csv",
    "manifest_json",
    "open_clip_config",
    "pickle",
    "split_file",
    "tokenizer",
    "torch_archive",
];

#[test]
fn every_fuzz_target_is_replayed() {
    let mut found: Vec<String> = std::fs::read_dir(root().join("fuzz/fuzz_targets"))
        .expect("fuzz/fuzz_targets")
        .map(|e| e.expect("listing fuzz targets").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter_map(|p| Some(p.file_stem()?.to_str()?.to_string()))
        .collect();
    found.sort();
    assert_eq!(
        found, TARGETS,
        "a fuzz target without a replay test here (or a test for a target that is gone)"
    );
}

#[test]
fn fuzz_image_decode() {
    replay(
        "image_decode",
        |_, b| clip_adapter::image::decode_bytes(b, "fuzz"),
        |path, img| {
            // The target's check: a decoded image is as large as it says.
            assert_eq!(
                img.as_raw().len(),
                img.width() as usize * img.height() as usize * 3,
                "{}",
                path.display()
            );
        },
    );
}

#[test]
fn fuzz_feature_file() {
    replay("feature_file", FeatureFile::from_bytes, |path, f| {
        assert_eq!(f.features.len(), f.rows() * f.dim, "{}", path.display());
        assert_eq!(f.index.len(), f.rows(), "{}", path.display());
    });
    replay("feature_file", text_from_bytes, no_check);
}

#[test]
fn fuzz_pickle() {
    replay(
        "pickle",
        |_, b| pickle::parse(b, &pickle::Limits::default()),
        no_check,
    );
}

#[test]
fn fuzz_torch_archive() {
    replay(
        "torch_archive",
        |_, b| {
            let archive = torch_archive::TorchArchive::from_bytes(b.to_vec())?;
            let names: Vec<String> = archive.shapes().map(|(n, _)| n.to_string()).collect();
            for name in names {
                archive.load(&name, &Device::Cpu)?;
            }
            Ok::<_, torch_archive::ArchiveError>(())
        },
        no_check,
    );
}

#[test]
fn fuzz_hf_config() {
    replay(
        "hf_config",
        |p, b| ClipConfig::from_hf_json(text(b)?, p).map_err(|e| e.to_string()),
        no_check,
    );
}

#[test]
fn fuzz_open_clip_config() {
    replay(
        "open_clip_config",
        |p, b| open_clip_config::from_json(text(b)?, p).map_err(|e| e.to_string()),
        no_check,
    );
}

#[test]
fn fuzz_split_file() {
    replay(
        "split_file",
        |p, b| split_file::parse(p, text(b)?).map_err(|e| e.to_string()),
        no_check,
    );
}

#[test]
fn fuzz_manifest_csv() {
    replay(
        "manifest_csv",
        |_, b| {
            folder::manifest_from_bytes(
                Path::new("/nonexistent/manifest.csv"),
                b,
                folder::SeededSplit::default(),
            )
        },
        no_check,
    );
}

#[test]
fn fuzz_manifest_json() {
    replay(
        "manifest_json",
        |_, b| {
            folder::manifest_from_bytes(
                Path::new("/nonexistent/manifest.json"),
                b,
                folder::SeededSplit::default(),
            )
        },
        no_check,
    );
}

#[test]
fn fuzz_head() {
    replay(
        "head",
        |_, b| head::from_bytes(b).map(|_| ()).map_err(|e| e.to_string()),
        no_check,
    );
    replay("head", |_, b| CoopHead::from_bytes(b).map(|_| ()), no_check);
}

/// The tokenizer refuses nothing (every text has ids), so its kept inputs are the ones that
/// broke its guarantee: a row of exactly the context length.
#[test]
fn fuzz_tokenizer() {
    let tokenizer = clip_adapter::tokenizer::Tokenizer::openai().expect("the embedded vocabulary");
    let read = |_: &Path, b: &[u8]| -> Result<Vec<u32>, String> {
        let text = String::from_utf8_lossy(b);
        let _ = tokenizer.encode(&text);
        Ok(tokenizer.tokenize(&text, 77))
    };
    let check = |path: &Path, ids: &Vec<u32>| {
        assert_eq!(ids.len(), 77, "{}", path.display());
    };
    let seeds = seeds("tokenizer");
    assert!(
        !seeds.is_empty(),
        "fuzz/seeds/tokenizer/ is empty (run fuzz/make_seeds.sh)"
    );
    for (path, bytes) in seeds.iter().chain(&crashes("tokenizer")) {
        let start = Instant::now();
        let ids = read(path, bytes).expect("tokenizing never fails");
        assert!(
            start.elapsed() < BOUND,
            "{}: took {:?}",
            path.display(),
            start.elapsed()
        );
        check(path, &ids);
    }
}

// ---- the seed corpus ------------------------------------------------------------------------

/// Writes `fuzz/seeds/<target>/` from the test fixtures and the library's own writers (so the
/// valid seeds are in the current formats): small files, at most [`MAX_SEEDS`] per target.
/// Run by `fuzz/make_seeds.sh`; ignored by a plain `cargo test`, which replays what is
/// committed.
#[test]
#[ignore = "writes fuzz/seeds/: run through fuzz/make_seeds.sh"]
fn write_fuzz_seeds() {
    seeds::write_all(&root().join("fuzz/seeds"));
}

/// Seeds per target, at most.
const MAX_SEEDS: usize = 20;
/// Bytes per seed, at most: libFuzzer mutates small inputs best, and the repository stays
/// small.
const MAX_SEED_BYTES: usize = 16 * 1024;

#[test]
fn committed_seeds_are_few_and_small() {
    for target in TARGETS {
        let seeds = seeds(target);
        assert!(seeds.len() <= MAX_SEEDS, "{target}: {} seeds", seeds.len());
        for (path, bytes) in seeds {
            assert!(
                bytes.len() <= MAX_SEED_BYTES,
                "{}: {} bytes",
                path.display(),
                bytes.len()
            );
        }
    }
}

mod seeds {
    use std::io::Write;
    use std::path::Path;

    use clip_adapter::clip::load::open_clip_config::PRESETS;
    use clip_adapter::data::{split_file, Dataset};
    use clip_adapter::features::cache::Meta;
    use clip_adapter::features::{plan, FeatureFile};
    use clip_adapter::image::augment::Augment;
    use clip_adapter::image::Preprocess;
    use clip_adapter::methods::clip_adapter::{AdapterModel, AdapterParams, Bottleneck, Ratio};
    use clip_adapter::methods::coop::{ClassPosition, CoopHead};
    use clip_adapter::methods::head::{self, Head, HeadInfo};
    use clip_adapter::methods::zero_shot::ZeroShot;
    use clip_adapter::methods::{Matrix, TextClassifier};

    use super::{root, MAX_SEEDS, MAX_SEED_BYTES};

    /// A seed: its file name and bytes.
    type Seed = (String, Vec<u8>);

    pub fn write_all(out: &Path) {
        let targets: [(&str, Vec<Seed>); 11] = [
            ("image_decode", images()),
            ("feature_file", feature_files()),
            ("pickle", pickles()),
            ("torch_archive", archives()),
            ("hf_config", hf_configs()),
            ("open_clip_config", open_clip_configs()),
            ("split_file", split_files()),
            ("manifest_csv", manifests_csv()),
            ("manifest_json", manifests_json()),
            ("tokenizer", texts()),
            ("head", heads()),
        ];
        for (target, files) in targets {
            let dir = out.join(target);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let mut files: Vec<_> = files
                .into_iter()
                .filter(|(_, b)| b.len() <= MAX_SEED_BYTES)
                .collect();
            files.truncate(MAX_SEEDS);
            assert!(!files.is_empty(), "{target}: no seed");
            for (name, bytes) in files {
                std::fs::write(dir.join(name), bytes).unwrap();
            }
        }
    }

    fn fixture(rel: &str) -> std::path::PathBuf {
        root().join("tests/fixtures").join(rel)
    }

    /// Every file of the fixture folders, smallest first.
    fn fixture_files(dirs: &[&str]) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for dir in dirs {
            for e in std::fs::read_dir(fixture(dir)).unwrap() {
                let p = e.unwrap().path();
                if p.is_file() {
                    let name = p.file_name().unwrap().to_string_lossy().into_owned();
                    files.push((name, std::fs::read(&p).unwrap()));
                }
            }
        }
        files.sort_by(|a, b| (a.1.len(), &a.0).cmp(&(b.1.len(), &b.0)));
        files
    }

    fn images() -> Vec<(String, Vec<u8>)> {
        // The broken images first (every one), then the smallest good ones.
        let mut out = fixture_files(&["images/bad"]);
        out.extend(fixture_files(&["images/good", "models/images"]));
        out
    }

    const SPLIT: &str = r#"{"train": [["a/1.jpg", 0, "cat"], ["b/2.jpg", 1, "dog"], ["a/5.jpg", 0, "cat"]], "val": [["a/3.jpg", 0, "cat"]], "test": [["b/4.jpg", 1, "dog"], ["a/6.jpg", 0, "cat"]]}"#;

    fn feature_files() -> Vec<(String, Vec<u8>)> {
        let split = split_file::parse(Path::new("split.json"), SPLIT).unwrap();
        let dataset = Dataset {
            name: "seed".into(),
            classnames: split.classnames,
            image_root: "/nonexistent".into(),
            train: split.train,
            val: split.val,
            test: split.test,
            templates: vec!["a photo of a {}.".into()],
        };
        let sets = plan(
            &dataset,
            None,
            "seed-model",
            &Preprocess::clip(32),
            1,
            Augment::coop(32),
            1,
        )
        .unwrap();
        let dim = 4;
        let mut out = Vec::new();
        for (i, set) in sets.iter().enumerate() {
            let rows = set.samples.len();
            let file = FeatureFile {
                meta: Meta {
                    key: set.key.clone(),
                    classnames: set.classnames.clone(),
                    rows: 0..rows,
                    total: rows,
                    batch: 2,
                    skipped: Vec::new(),
                    impaths: set.samples.iter().map(|s| s.impath.clone()).collect(),
                    model_name: "seed-model".into(),
                    source: None,
                    imported: None,
                },
                dim,
                features: (0..rows * dim).map(|v| v as f32 * 0.25 - 1.0).collect(),
                labels: set.samples.iter().map(|s| s.label as i64).collect(),
                index: (0..rows as i64).collect(),
            };
            out.push((format!("{i}-{}.safetensors", set.key.part), file.to_bytes()));
        }
        // A text feature file, through the extraction path on the tiny test model.
        let files = clip_adapter::clip::ModelFiles::in_dir(&fixture("models/tiny-clip")).unwrap();
        let clip = clip_adapter::Clip::load(&files, &candle_core::Device::Cpu).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let (path, _) = clip_adapter::features::text::extract_text(
            &clip,
            &dataset,
            "seed-model",
            "seed-model",
            &["a photo of a {}.".to_string()],
            cache.path(),
            &mut |_, _| {},
        )
        .unwrap();
        out.push(("text.safetensors".into(), std::fs::read(path).unwrap()));
        out
    }

    fn binunicode(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn binint(out: &mut Vec<u8>, v: i32) {
        out.push(b'J');
        out.extend(v.to_le_bytes());
    }

    /// `torch.save({name: tensor, ...})` as PyTorch pickles it: each tensor a view of its own
    /// storage `i` (of `storage` type, `numel` elements) with `shape` and `stride` at `offset`.
    fn state_dict_pickle(tensors: &[TensorSpec]) -> Vec<u8> {
        let mut p = b"\x80\x02}(".to_vec();
        for (i, (name, storage, numel, offset, shape, stride)) in tensors.iter().enumerate() {
            binunicode(&mut p, name);
            p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
            binunicode(&mut p, "storage");
            p.extend(format!("ctorch\n{storage}\n").as_bytes());
            binunicode(&mut p, &i.to_string());
            binunicode(&mut p, "cpu");
            binint(&mut p, *numel);
            p.extend(b"tQ");
            binint(&mut p, *offset);
            p.push(b'(');
            for &d in *shape {
                binint(&mut p, d);
            }
            p.extend(b"t(");
            for &s in *stride {
                binint(&mut p, s);
            }
            p.extend(b"t\x89ccollections\nOrderedDict\n)Rt");
            p.push(b'R');
        }
        p.extend(b"u.");
        p
    }

    fn zip(entries: &[(&str, &[u8])]) -> Vec<u8> {
        let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, data) in entries {
            zip.start_file(*name, opts).unwrap();
            zip.write_all(data).unwrap();
        }
        zip.finish().unwrap().into_inner()
    }

    /// A tensor of a hand-made state dict: name, storage type, storage elements, offset,
    /// shape, stride.
    type TensorSpec = (
        &'static str,
        &'static str,
        i32,
        i32,
        &'static [i32],
        &'static [i32],
    );

    /// Small state dicts: contiguous and strided views, offsets, several storage types.
    fn state_dicts() -> Vec<(&'static str, Vec<TensorSpec>, Vec<usize>)> {
        // (name, tensors, bytes per element of each storage)
        vec![
            (
                "one-f32",
                vec![("w", "FloatStorage", 6, 0, &[2, 3], &[3, 1])],
                vec![4],
            ),
            (
                "offset-f32",
                vec![("w", "FloatStorage", 7, 1, &[2, 3], &[3, 1])],
                vec![4],
            ),
            (
                "transposed-f32",
                vec![("w", "FloatStorage", 6, 0, &[3, 2], &[1, 3])],
                vec![4],
            ),
            (
                "mixed-types",
                vec![
                    ("a.weight", "HalfStorage", 4, 0, &[4], &[1]),
                    ("b.bias", "BFloat16Storage", 2, 0, &[2], &[1]),
                    ("c.position_ids", "LongStorage", 3, 0, &[1, 3], &[3, 1]),
                ],
                vec![2, 2, 8],
            ),
            (
                "scalar-and-empty",
                vec![
                    ("logit_scale", "FloatStorage", 1, 0, &[], &[]),
                    ("empty", "FloatStorage", 0, 0, &[0, 4], &[4, 1]),
                ],
                vec![4, 4],
            ),
        ]
    }

    fn archive(name: &str, tensors: &[TensorSpec], elem: &[usize], script: bool) -> Vec<u8> {
        let prefix = name;
        let pickle = state_dict_pickle(tensors);
        let mut entries: Vec<(String, Vec<u8>)> = vec![
            (format!("{prefix}/data.pkl"), pickle),
            (format!("{prefix}/byteorder"), b"little".to_vec()),
        ];
        if script {
            entries.push((format!("{prefix}/constants.pkl"), b"\x80\x02).".to_vec()));
        }
        for (i, ((_, _, numel, _, _, _), size)) in tensors.iter().zip(elem).enumerate() {
            let bytes: Vec<u8> = (0..*numel as usize * size)
                .map(|b| (b * 37 % 251) as u8)
                .collect();
            entries.push((format!("{prefix}/data/{i}"), bytes));
        }
        let refs: Vec<(&str, &[u8])> = entries
            .iter()
            .map(|(n, b)| (n.as_str(), b.as_slice()))
            .collect();
        zip(&refs)
    }

    fn archives() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (name, tensors, elem) in state_dicts() {
            out.push((
                format!("{name}.pt"),
                archive("archive", &tensors, &elem, false),
            ));
        }
        let (_, tensors, elem) = &state_dicts()[0];
        out.push((
            "torchscript.pt".into(),
            archive("model", tensors, elem, true),
        ));
        out
    }

    fn pickles() -> Vec<(String, Vec<u8>)> {
        let mut out: Vec<(String, Vec<u8>)> = state_dicts()
            .into_iter()
            .map(|(name, tensors, _)| (format!("{name}.pkl"), state_dict_pickle(&tensors)))
            .collect();
        // The pickles of the fixture archives (PyTorch's own output), where small.
        for rel in [
            "models/tiny-clip-bin/pytorch_model.bin",
            "models/openai-vit/state_dict.pt",
            "models/openai-rn/model.pt",
        ] {
            let file = std::fs::File::open(fixture(rel)).unwrap();
            let mut zip = zip::ZipArchive::new(file).unwrap();
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).unwrap();
                let name = entry.name().unwrap_or_default().to_string();
                if name.ends_with("data.pkl") || name.ends_with("constants.pkl") {
                    let mut bytes = Vec::new();
                    std::io::Read::read_to_end(&mut entry, &mut bytes).unwrap();
                    let stem = rel.replace('/', "-");
                    let leaf = name.rsplit('/').next().unwrap_or("x.pkl");
                    out.push((format!("{stem}-{leaf}"), bytes));
                }
            }
        }
        out
    }

    fn hf_configs() -> Vec<(String, Vec<u8>)> {
        let mut out = fixture_files(&["configs"]);
        for model in ["tiny-clip", "tiny-clip-bin"] {
            let bytes = std::fs::read(fixture(&format!("models/{model}/config.json"))).unwrap();
            out.push((format!("{model}.json"), bytes));
        }
        // An older transformers' file: the sub-configs under `*_dict`.
        out.push((
            "dict-keys.json".into(),
            br#"{"model_type": "clip", "projection_dim": 64, "text_config_dict": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "max_position_embeddings": 16, "vocab_size": 1000}, "vision_config_dict": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2, "image_size": 32, "patch_size": 8, "hidden_act": "gelu"}}"#.to_vec(),
        ));
        out.push(("empty-object.json".into(), b"{}".to_vec()));
        out
    }

    fn open_clip_configs() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (name, rel) in [
            ("tiny-rn", "models/tiny-rn/open_clip_config.json"),
            ("tiny-vit", "models/tiny-openclip-vit/open_clip_config.json"),
            ("tiny-gelu", "coop/tiny-openclip-gelu/open_clip_config.json"),
        ] {
            out.push((format!("{name}.json"), std::fs::read(fixture(rel)).unwrap()));
        }
        for (name, model_cfg) in PRESETS {
            let doc = format!(
                r#"{{"model_cfg": {model_cfg}, "preprocess_cfg": {{"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}}}"#
            );
            out.push((format!("preset-{name}.json"), doc.into_bytes()));
        }
        out
    }

    fn split_files() -> Vec<(String, Vec<u8>)> {
        vec![
            ("small.json".into(), SPLIT.as_bytes().to_vec()),
            (
                "empty-val.json".into(),
                br#"{"train": [["x.jpg", 0, "a"], ["y.jpg", 1, "b"]], "val": [], "test": [["z.jpg", 1, "b"]]}"#.to_vec(),
            ),
            (
                "label-gap.json".into(),
                br#"{"train": [["x.jpg", 0, "a"], ["y.jpg", 2, "c"]], "val": [], "test": []}"#.to_vec(),
            ),
        ]
    }

    fn manifests_csv() -> Vec<(String, Vec<u8>)> {
        vec![
            (
                "split.csv".into(),
                b"path,label,split\ntrain/cat/1.jpg,cat,train\n\"train/dog/2.jpg\",dog,train\ntest/cat/4.jpg,cat,test\n".to_vec(),
            ),
            ("bom-crlf.csv".into(), b"\xef\xbb\xbfa.jpg,x\r\nb.jpg,y\r\nc.jpg,x\r\n".to_vec()),
            (
                "quoted.csv".into(),
                b"\"a, b.jpg\",\"say \"\"cheese\"\"\"\nc.jpg,plain\n".to_vec(),
            ),
        ]
    }

    fn manifests_json() -> Vec<(String, Vec<u8>)> {
        vec![
            (
                "split.json".into(),
                br#"[{"path": "a.jpg", "label": "x", "split": "train"}, {"path": "b.jpg", "label": "y", "split": "test"}]"#.to_vec(),
            ),
            (
                "plain.json".into(),
                br#"[{"path": "a.jpg", "label": "x"}, {"path": "/abs/b.jpg", "label": "y"}]"#.to_vec(),
            ),
        ]
    }

    /// Texts of the tokenizer corpus, spread over it (it is ordered by kind of text).
    fn texts() -> Vec<(String, Vec<u8>)> {
        let corpus: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture("tokenizer/corpus.json")).unwrap())
                .unwrap();
        let texts: Vec<&str> = corpus
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["text"].as_str())
            .collect();
        let step = texts.len().div_ceil(MAX_SEEDS).max(1);
        texts
            .iter()
            .step_by(step)
            .enumerate()
            .map(|(i, t)| (format!("{i:02}.txt"), t.as_bytes().to_vec()))
            .collect()
    }

    fn matrix(rows: usize, cols: usize, seed: f32) -> Matrix {
        let data = (0..rows * cols)
            .map(|i| ((i as f32 + 1.0) * 0.37 + seed).sin())
            .collect();
        Matrix { rows, cols, data }
    }

    fn heads() -> Vec<(String, Vec<u8>)> {
        let (k, d, h) = (3, 8, 2);
        let info = |method: &str| HeadInfo {
            model: "seed-model".into(),
            classnames: (0..k).map(|c| format!("class {c}")).collect(),
            templates: vec!["a photo of a {}.".into()],
            method: method.into(),
            options: "{}".into(),
            model_fingerprint: None,
        };
        let adapter = Head::new(AdapterModel {
            params: AdapterParams {
                visual: Some(Bottleneck {
                    dim: d,
                    hidden: h,
                    w1: matrix(d, h, 1.0).data,
                    w2: matrix(h, d, 2.0).data,
                    relu_out: true,
                }),
                text: None,
                alpha: Ratio::Fixed(0.2),
                beta: Ratio::Fixed(0.0),
            },
            classes: matrix(k, d, 3.0),
            logit_scale: 100.0,
        });
        let zero_shot = Head::new(ZeroShot::new(&TextClassifier {
            weights: matrix(k, d, 4.0),
            logit_scale: 100.0,
            logit_bias: None,
        }));
        let mut out = vec![
            (
                "clip-adapter.safetensors".into(),
                head::to_bytes(&adapter, &info("clip-adapter")),
            ),
            (
                "zero-shot.safetensors".into(),
                head::to_bytes(&zero_shot, &info("zero-shot")),
            ),
        ];
        // CoOp's heads: unified and class-specific contexts.
        for (name, csc, position) in [
            ("coop-unified-end", false, ClassPosition::End),
            ("coop-csc-middle", true, ClassPosition::Middle),
        ] {
            let n_ctx = 2;
            let width = 8;
            let rows = if csc { k * n_ctx } else { n_ctx };
            let coop = CoopHead {
                model: "seed-model".into(),
                fingerprint: "seed-fingerprint".into(),
                classnames: (0..k).map(|c| format!("class {c}")).collect(),
                n_ctx,
                csc,
                position,
                context: matrix(rows, width, 5.0).data,
                width,
                options: "n_ctx=2".into(),
            };
            out.push((format!("{name}.safetensors"), coop.to_bytes()));
        }
        out
    }
}
