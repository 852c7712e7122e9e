//! Image decoding and preprocessing parity with PIL + torchvision.
//!
//! Fixtures: tests/fixtures/images/, written by scripts/fixtures/images.py (Pillow 13.0.0 with
//! libjpeg-turbo 3.2.0, torchvision 0.29.2, torch 2.15.0; see MANIFEST.json). The reference is
//! `Image.open(p).convert("RGB")`, `Resize(n, BICUBIC)`, `CenterCrop(n)`, `ToTensor()`,
//! `Normalize(CLIP mean, std)`.
//!
//! Tolerances:
//! * decoded RGB: exact (every format, JPEG included);
//! * resized + cropped 8-bit pixels: every byte within 1 and at least 99 % exact (we get 100 %);
//! * normalised tensor: within 1e-6 of torchvision's (we get 0).
//!
//! A missing fixture fails. Bad files must give the expected `ImageError` variant, and the
//! message must name the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clip_adapter::image::{decode_bytes, decode_file, ImageError, Preprocess, RgbImage};
use serde::Deserialize;

const FIXTURES: &str = "tests/fixtures/images";
const MIN_EXACT: f64 = 0.99;
const TENSOR_TOL: f64 = 1e-6;

#[derive(Deserialize)]
struct Manifest {
    versions: BTreeMap<String, String>,
    mean: [f64; 3],
    std: [f64; 3],
    normalise_table: Vec<Vec<f64>>,
    images: Vec<Good>,
    bad: Vec<Bad>,
}

#[derive(Deserialize)]
struct Good {
    file: String,
    pil_mode: String,
    width: u32,
    height: u32,
    decoded_crc32: u32,
    /// PIL's decoded RGB as PNG (lossy formats only; the others are checked by CRC).
    decoded: Option<String>,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    size: usize,
    resized: [u32; 2],
    crop_top_left: [i64; 2],
    crop: String,
    tensor_shape: Vec<usize>,
    tensor_sum: f64,
    tensor_samples: Vec<(usize, f64)>,
}

#[derive(Deserialize)]
struct Bad {
    file: String,
    expect: String,
    pil_error: String,
}

/// `tests/fixtures/images/<rel>`; a missing fixture fails the test.
fn fixture(rel: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURES)
        .join(rel);
    assert!(
        p.is_file(),
        "missing fixture {} (regenerate with scripts/fixtures/images.py)",
        p.display()
    );
    p
}

fn manifest() -> Manifest {
    let path = fixture("MANIFEST.json");
    let text = std::fs::read_to_string(&path).expect("reading MANIFEST.json");
    let m: Manifest = serde_json::from_str(&text).expect("parsing MANIFEST.json");
    assert!(!m.images.is_empty() && !m.bad.is_empty(), "empty manifest");
    m
}

/// A reference PNG written by PIL, read with the `image` crate (not our decode path).
fn reference_png(rel: &str) -> RgbImage {
    let img = ::image::open(fixture(rel))
        .unwrap_or_else(|e| panic!("reading {rel}: {e}"))
        .to_rgb8();
    RgbImage::from_raw(img.width(), img.height(), img.into_raw()).unwrap()
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    crc.sum()
}

/// (bytes that differ, largest difference).
fn diff(a: &[u8], b: &[u8]) -> (usize, u8) {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .filter(|d| *d > 0)
        .fold((0, 0), |(n, m), d| (n + 1, m.max(d)))
}

#[test]
fn every_fixture_file_is_in_the_manifest() {
    let m = manifest();
    let listed: Vec<&str> = m
        .images
        .iter()
        .map(|g| g.file.as_str())
        .chain(m.bad.iter().map(|b| b.file.as_str()))
        .collect();
    for dir in ["good", "bad"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(FIXTURES)
            .join(dir);
        for entry in std::fs::read_dir(&path).expect("listing fixtures") {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            let rel = format!("{dir}/{name}");
            assert!(
                listed.contains(&rel.as_str()),
                "{rel} is not in MANIFEST.json"
            );
        }
    }
    println!("reference versions: {:?}", m.versions);
}

#[test]
fn decoded_rgb_equals_pil_convert_rgb() {
    let m = manifest();
    let mut failures = Vec::new();
    for g in &m.images {
        let img = match decode_file(fixture(&g.file)) {
            Ok(img) => img,
            Err(e) => {
                failures.push(format!("{}: {e}", g.file));
                continue;
            }
        };
        if (img.width(), img.height()) != (g.width, g.height) {
            failures.push(format!(
                "{}: size {}x{}, PIL {}x{}",
                g.file,
                img.width(),
                img.height(),
                g.width,
                g.height
            ));
            continue;
        }
        if let Some(rel) = &g.decoded {
            let (n, max) = diff(img.as_raw(), reference_png(rel).as_raw());
            println!(
                "{:28} {:5} {n} of {} bytes differ from PIL (max {max})",
                g.file,
                g.pil_mode,
                img.as_raw().len()
            );
            if n > 0 {
                failures.push(format!("{}: {n} bytes differ from PIL, max {max}", g.file));
            }
        }
        let crc = crc32(img.as_raw());
        if crc != g.decoded_crc32 {
            failures.push(format!(
                "{} (PIL mode {}): decoded CRC-32 {crc:08x}, PIL {:08x}",
                g.file, g.pil_mode, g.decoded_crc32
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "decode mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn resized_and_cropped_pixels_match_pil() {
    let m = manifest();
    let mut failures = Vec::new();
    let (mut total, mut exact) = (0usize, 0usize);
    for g in &m.images {
        let img = decode_file(fixture(&g.file)).unwrap_or_else(|e| panic!("{e}"));
        for t in &g.targets {
            let p = Preprocess::clip(t.size);
            let resized = p.resize_shorter(&img);
            let what = format!("{} @ {}", g.file, t.size);
            if [resized.width(), resized.height()] != t.resized {
                failures.push(format!(
                    "{what}: resized to {}x{}, torchvision {:?}",
                    resized.width(),
                    resized.height(),
                    t.resized
                ));
                continue;
            }
            let offsets = [
                clip_adapter::image::center_crop_offset(resized.height(), t.size as u32),
                clip_adapter::image::center_crop_offset(resized.width(), t.size as u32),
            ];
            if offsets != t.crop_top_left {
                failures.push(format!(
                    "{what}: crop at {offsets:?}, torchvision {:?}",
                    t.crop_top_left
                ));
            }
            let ours = p.center_crop(&resized);
            let theirs = reference_png(&t.crop);
            assert_eq!(
                (ours.width(), ours.height()),
                (theirs.width(), theirs.height()),
                "{what}"
            );
            let (n, max) = diff(ours.as_raw(), theirs.as_raw());
            let len = ours.as_raw().len();
            total += len;
            exact += len - n;
            let frac = (len - n) as f64 / len as f64;
            println!(
                "{what:34} {n:6} of {len:6} bytes differ (max {max}), {:.3} % exact",
                100.0 * frac
            );
            if max > 1 || frac < MIN_EXACT {
                failures.push(format!("{what}: {n} of {len} bytes differ, max {max}"));
            }
        }
    }
    println!(
        "all targets: {exact} of {total} bytes exact ({:.4} %)",
        100.0 * exact as f64 / total as f64
    );
    assert!(
        failures.is_empty(),
        "resize/crop mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn normalisation_matches_torchvision_for_every_value() {
    let m = manifest();
    let p = Preprocess::clip(1);
    assert_eq!(p.mean, m.mean.map(|v| v as f32), "CLIP mean");
    assert_eq!(p.std, m.std.map(|v| v as f32), "CLIP std");
    // A 256x1 image holding every value in every channel.
    let ramp: Vec<u8> = (0..=255u8).flat_map(|v| [v, v, v]).collect();
    let img = RgbImage::from_raw(256, 1, ramp).unwrap();
    let ours = p.to_tensor_normalized(&img);
    let (mut max, mut not_identical) = (0f64, 0);
    for c in 0..3 {
        for v in 0..256 {
            let (a, b) = (ours[c * 256 + v], m.normalise_table[c][v]);
            max = max.max((f64::from(a) - b).abs());
            // The reference values are f32s; JSON parsing may be 1 ulp off in f64 only.
            not_identical += usize::from(a != b as f32);
        }
    }
    println!(
        "ToTensor + Normalize over all 3 x 256 values: max abs diff {max:.3e}, \
         {not_identical} not bit-identical in f32"
    );
    assert!(max <= TENSOR_TOL, "max abs diff {max}");
}

#[test]
fn normalised_tensor_matches_torchvision() {
    let m = manifest();
    let mut worst = 0f64;
    for g in &m.images {
        for t in &g.targets {
            let what = format!("{} @ {}", g.file, t.size);
            let p = Preprocess::clip(t.size);
            let x = p.load(fixture(&g.file)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                vec![x.len()],
                vec![t.tensor_shape.iter().product::<usize>()],
                "{what}"
            );
            assert_eq!(x.len(), p.tensor_len(), "{what}");
            for &(i, v) in &t.tensor_samples {
                let d = (f64::from(x[i]) - v).abs();
                worst = worst.max(d);
                assert!(
                    d <= TENSOR_TOL,
                    "{what}: element {i} is {}, torchvision {v}",
                    x[i]
                );
            }
            // The sum sees every element: one pixel off by one 8-bit step moves it by ~0.015.
            let sum: f64 = x.iter().map(|&v| f64::from(v)).sum();
            let d = (sum - t.tensor_sum).abs();
            assert!(
                d <= 1e-3,
                "{what}: tensor sum {sum}, torchvision {}",
                t.tensor_sum
            );
        }
    }
    println!("sampled tensor values: max abs diff {worst:.3e}");
}

fn variant(e: &ImageError) -> &'static str {
    match e {
        ImageError::NotFound { .. } => "NotFound",
        ImageError::Io { .. } => "Io",
        ImageError::Empty { .. } => "Empty",
        ImageError::NotAnImage { .. } => "NotAnImage",
        ImageError::UnsupportedFormat { .. } => "UnsupportedFormat",
        ImageError::Truncated { .. } => "Truncated",
        ImageError::Corrupt { .. } => "Corrupt",
        ImageError::ZeroSized { .. } => "ZeroSized",
        ImageError::UnsupportedMode { .. } => "UnsupportedMode",
        ImageError::TooLarge { .. } => "TooLarge",
        _ => "unknown",
    }
}

#[test]
fn bad_files_give_the_expected_error_naming_the_file() {
    let m = manifest();
    let p = Preprocess::clip(224);
    for b in &m.bad {
        let path = fixture(&b.file);
        let err = match p.load(&path) {
            Ok(_) => panic!("{}: decoded, but PIL says {}", b.file, b.pil_error),
            Err(e) => e,
        };
        let msg = err.to_string();
        println!("{:28} {msg}", b.file);
        assert_eq!(variant(&err), b.expect, "{}: {msg}", b.file);
        assert!(
            msg.contains(&path.display().to_string()),
            "message does not name the file: {msg}"
        );
        assert_eq!(err.path(), path);
    }
}

#[test]
fn error_messages_say_what_was_expected() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no_such_image.jpg");
    let err = decode_file(&missing).unwrap_err();
    assert_eq!(variant(&err), "NotFound");
    assert!(err.to_string().contains("no_such_image.jpg"), "{err}");

    let err = decode_file(dir.path()).unwrap_err();
    assert_eq!(variant(&err), "Io", "a directory: {err}");

    let msg = decode_file(fixture("bad/not_an_image.jpg"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("JPEG, PNG, WebP, BMP or GIF"), "{msg}");
    assert!(msg.contains("name,lab"), "shows the first bytes: {msg}");

    let msg = decode_file(fixture("bad/tiff.png"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("TIFF"), "{msg}");

    let msg = decode_file(fixture("bad/empty.jpg"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("empty"), "{msg}");

    let msg = decode_file(fixture("bad/zero_width.png"))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("0x10"), "{msg}");

    // A PNG header claiming 20000 x 20000 pixels: refused before any allocation, as PIL
    // refuses it (DecompressionBombError above 2 * 89478485 pixels).
    let mut bomb = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bomb.extend_from_slice(&20000u32.to_be_bytes());
    bomb.extend_from_slice(&20000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 2, 0, 0, 0]);
    let err = decode_bytes(&bomb, "bomb.png").unwrap_err();
    assert_eq!(variant(&err), "TooLarge", "{err}");
    assert!(err.to_string().contains("bomb.png"), "{err}");

    // In-memory data: the caller's name is what errors report.
    let err = decode_bytes(b"", "https://example.org/cat.jpg").unwrap_err();
    assert_eq!(variant(&err), "Empty");
    assert!(
        err.to_string().starts_with("https://example.org/cat.jpg: "),
        "{err}"
    );
}

#[test]
fn batch_loading_reports_every_file_in_order() {
    let p = Preprocess::clip(32);
    let paths = vec![
        fixture("good/rgb_444.jpg"),
        fixture("bad/truncated.jpg"),
        fixture("good/grey.png"),
        fixture("bad/empty.jpg"),
    ];
    let results = p.load_batch(&paths);
    assert_eq!(results.len(), 4);
    assert_eq!(results[0].as_ref().unwrap(), &p.load(&paths[0]).unwrap());
    assert_eq!(variant(results[1].as_ref().unwrap_err()), "Truncated");
    assert_eq!(results[2].as_ref().unwrap().len(), 3 * 32 * 32);
    assert_eq!(variant(results[3].as_ref().unwrap_err()), "Empty");
}

/// Truncated and bit-flipped versions of every good fixture: each decodes or gives an error,
/// none panics. Deterministic (a fixed LCG), ~40 variants per fixture.
#[test]
fn damaged_files_never_panic() {
    let m = manifest();
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |n: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize % n.max(1)
    };
    let (mut ok, mut errors) = (0, 0);
    for g in &m.images {
        let bytes = std::fs::read(fixture(&g.file)).unwrap();
        let mut variants: Vec<Vec<u8>> = (1..=20)
            .map(|k| bytes[..bytes.len() * k / 21].to_vec())
            .collect();
        for _ in 0..20 {
            let mut v = bytes.clone();
            for _ in 0..1 + next(8) {
                let i = next(v.len());
                v[i] ^= 1 << next(8);
            }
            variants.push(v);
        }
        for v in &variants {
            match decode_bytes(v, &g.file) {
                Ok(img) => {
                    assert_eq!(
                        img.as_raw().len(),
                        img.width() as usize * img.height() as usize * 3
                    );
                    ok += 1;
                }
                Err(e) => {
                    assert!(e.to_string().contains(&g.file), "{e}");
                    errors += 1;
                }
            }
        }
    }
    println!("damaged variants: {ok} decoded, {errors} refused, no panic");
}

#[test]
fn decoding_is_by_content_not_extension() {
    // A PNG renamed .jpg decodes as PNG, as PIL sniffs it.
    let dir = tempfile::tempdir().unwrap();
    let renamed = dir.path().join("actually_png.jpg");
    std::fs::copy(fixture("good/rgb_37x53.png"), &renamed).unwrap();
    assert_eq!(
        decode_file(&renamed).unwrap(),
        decode_file(fixture("good/rgb_37x53.png")).unwrap()
    );
}
