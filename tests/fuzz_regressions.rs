//! Replays the inputs the fuzz targets (`fuzz/fuzz_targets/`) found to crash, hang or exhaust
//! memory, through the same reader, so CI checks them without a fuzzer. Each file lives in
//! `tests/fixtures/fuzz/<target>/`; every one of them is malformed, so each reader must return
//! an error (not panic, not succeed).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::Device;
use clip_adapter::clip::load::{config::ClipConfig, open_clip_config, pickle, torch_archive};
use clip_adapter::data::{folder, split_file};
use clip_adapter::features::{text::text_from_bytes, FeatureFile};
use clip_adapter::methods::{coop::CoopHead, head};

/// The files kept for one target (none when the fuzzer never failed on it).
fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/fuzz")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("listing the fuzz fixtures").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).expect("reading a fuzz fixture");
            (p, bytes)
        })
        .collect()
}

/// Runs `read` on every kept input of `target`: each must be refused, quickly (the fuzzer's
/// timeouts were inputs that took seconds; a debug build gets a generous bound).
fn replay<T, E: std::fmt::Display>(target: &str, read: impl Fn(&Path, &[u8]) -> Result<T, E>) {
    for (path, bytes) in inputs(target) {
        let start = Instant::now();
        let result = read(&path, &bytes);
        let took = start.elapsed();
        assert!(
            result.is_err(),
            "{}: the reader accepted a malformed input",
            path.display()
        );
        assert!(
            took < Duration::from_secs(10),
            "{}: took {took:?}",
            path.display()
        );
    }
}

fn text(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    std::str::from_utf8(bytes)
}

#[test]
fn fuzz_image_decode() {
    replay("image_decode", |_, b| {
        clip_adapter::image::decode_bytes(b, "fuzz")
    });
}

#[test]
fn fuzz_feature_file() {
    replay("feature_file", FeatureFile::from_bytes);
    replay("feature_file", text_from_bytes);
}

#[test]
fn fuzz_pickle() {
    replay("pickle", |_, b| {
        pickle::parse(b, &pickle::Limits::default())
    });
}

#[test]
fn fuzz_torch_archive() {
    replay("torch_archive", |_, b| {
        let archive = torch_archive::TorchArchive::from_bytes(b.to_vec())?;
        let names: Vec<String> = archive.shapes().map(|(n, _)| n.to_string()).collect();
        for name in names {
            archive.load(&name, &Device::Cpu)?;
        }
        Ok::<_, torch_archive::ArchiveError>(())
    });
}

#[test]
fn fuzz_configs() {
    replay("hf_config", |p, b| match text(b) {
        Ok(t) => ClipConfig::from_hf_json(t, p).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    });
    replay("open_clip_config", |p, b| match text(b) {
        Ok(t) => open_clip_config::from_json(t, p).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    });
}

#[test]
fn fuzz_split_file_and_manifests() {
    replay("split_file", |p, b| match text(b) {
        Ok(t) => split_file::parse(p, t).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    });
    replay("manifest_csv", |_, b| {
        folder::manifest_from_bytes(
            Path::new("/nonexistent/manifest.csv"),
            b,
            folder::SeededSplit::default(),
        )
    });
    replay("manifest_json", |_, b| {
        folder::manifest_from_bytes(
            Path::new("/nonexistent/manifest.json"),
            b,
            folder::SeededSplit::default(),
        )
    });
}

#[test]
fn fuzz_heads() {
    replay("head", |_, b| {
        head::from_bytes(b).map(|_| ()).map_err(|e| e.to_string())
    });
    replay("head", |_, b| CoopHead::from_bytes(b).map(|_| ()));
}

#[test]
fn fuzz_tokenizer() {
    let tokenizer = clip_adapter::tokenizer::Tokenizer::openai().expect("the embedded vocabulary");
    for (path, bytes) in inputs("tokenizer") {
        let ids = tokenizer.tokenize(&String::from_utf8_lossy(&bytes), 77);
        assert!(ids.len() <= 77, "{}: {} ids", path.display(), ids.len());
    }
}
