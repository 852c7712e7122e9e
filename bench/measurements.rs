//! Measurements quoted in the docs that print numbers and check nothing (so they are not
//! tests). Run in release:
//!
//! ```sh
//! cargo bench --bench measurements -- tokenizer        # docs/tokenizer.md: 10k prompts
//! cargo bench --bench measurements -- preprocess       # docs/preprocessing.md: one photo
//! cargo bench --bench measurements -- jpeg-cpu-time    # docs/preprocessing.md: SIMD vs C
//! cargo bench --bench measurements -- jpeg-decoders    # docs/preprocessing.md: vs zune-jpeg
//! ```
//!
//! Without an argument all three run. The image ones read the committed fixtures of
//! `tests/fixtures/images/` (written by `scripts/fixtures/images.py`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clip_adapter::image::{decode_bytes, Preprocess, RgbImage};
use clip_adapter::tokenizer::{Cleaning, Tokenizer, CONTEXT_LENGTH};
use serde::Deserialize;

fn main() -> Result<()> {
    // `cargo bench` appends `--bench`; only our own words are commands.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let all = ["tokenizer", "preprocess", "jpeg-decoders", "jpeg-cpu-time"];
    let which: Vec<&str> = if args.is_empty() {
        all.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    for w in which {
        match w {
            "tokenizer" => tokenizer()?,
            "preprocess" => preprocess()?,
            "jpeg-decoders" => jpeg_decoders()?,
            "jpeg-cpu-time" => jpeg_cpu_time()?,
            other => bail!("unknown measurement `{other}`; expected one of {all:?}"),
        }
    }
    Ok(())
}

/// Tokenizer throughput: building the embedded vocabulary, 10k class-name prompts with either
/// clean-up, and 10k prompts of distinct long words (which defeat the word cache).
fn tokenizer() -> Result<()> {
    let classes = [
        "tench",
        "goldfish",
        "great white shark",
        "tiger shark",
        "hammerhead",
        "electric ray",
        "stingray",
        "cock",
        "hen",
        "ostrich",
        "brambling",
        "goldfinch",
        "house finch",
        "junco",
    ];
    let templates = [
        "a photo of a {}.",
        "a bad photo of the {}.",
        "a sculpture of a {}.",
        "itap of my {}.",
        "a rendering of a {}.",
        "graffiti of the {}.",
        "a tattoo of a {}.",
        "the origami {}.",
    ];
    let start = Instant::now();
    let first = Tokenizer::openai().context("the embedded vocabulary")?;
    println!(
        "first Tokenizer::openai() (decompress + build): {:?}",
        start.elapsed()
    );
    let start = Instant::now();
    let _ = Tokenizer::openai().context("the embedded vocabulary")?;
    println!("second Tokenizer::openai(): {:?}", start.elapsed());
    let prompts: Vec<String> = (0..10_000)
        .map(|i| {
            let class = format!("{} {}", classes[i % classes.len()], i / 97);
            templates[i % templates.len()].replace("{}", &class)
        })
        .collect();
    for cleaning in [Cleaning::OpenClip, Cleaning::Transformers] {
        let t = first.clone().with_cleaning(cleaning);
        let start = Instant::now();
        let rows = t.tokenize_batch(&prompts, CONTEXT_LENGTH);
        let elapsed = start.elapsed();
        assert_eq!(rows.len(), prompts.len());
        println!("{cleaning:?}: 10k prompts in {elapsed:?}");
    }
    let words: Vec<String> = (0..10_000)
        .map(|i| format!("a photo of a xq{i}zv{}wy{}.", i * 7919 % 10007, i % 13))
        .collect();
    let start = Instant::now();
    let rows = first.tokenize_batch(&words, CONTEXT_LENGTH);
    assert_eq!(rows.len(), words.len());
    println!(
        "OpenClip, 10k prompts with uncached words: {:?}",
        start.elapsed()
    );
    Ok(())
}

fn fixture(rel: &str) -> Result<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/images")
        .join(rel);
    if !p.is_file() {
        bail!(
            "missing fixture {} (regenerate with scripts/fixtures/images.py)",
            p.display()
        );
    }
    Ok(p)
}

/// Decode + resize + crop (+ normalise) time of a 500x375 JPEG, one thread.
fn preprocess() -> Result<()> {
    let path = fixture("good/photo_500x375.jpg")?;
    let bytes = std::fs::read(&path).with_context(|| path.display().to_string())?;
    let p = Preprocess::clip(224);
    let reps = 200;
    let time = |f: &mut dyn FnMut()| {
        f(); // warm up
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        t.elapsed().as_secs_f64() * 1e3 / reps as f64
    };
    let img = decode_bytes(&bytes, "photo")?;
    let decode_ms = time(&mut || {
        std::hint::black_box(decode_bytes(&bytes, "photo").expect("decoded once already"));
    });
    let resize_ms = time(&mut || {
        std::hint::black_box(p.center_crop(&p.resize_shorter(&img)));
    });
    let crop = p.center_crop(&p.resize_shorter(&img));
    let norm_ms = time(&mut || {
        std::hint::black_box(p.to_tensor_normalized(&crop));
    });
    p.load(&path)?;
    let total_ms = time(&mut || {
        std::hint::black_box(p.load(&path).expect("loaded once already"));
    });
    println!(
        "photo_500x375.jpg -> 224: decode {decode_ms:.2} ms, resize+crop {resize_ms:.2} ms, \
         normalise {norm_ms:.2} ms, load() total {total_ms:.2} ms per image (1 thread)"
    );
    Ok(())
}

#[derive(Deserialize)]
struct Manifest {
    images: Vec<Good>,
}

#[derive(Deserialize)]
struct Good {
    file: String,
    decoded: Option<String>,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    size: usize,
    crop: String,
}

/// A reference PNG written by PIL, read with the `image` crate (not our decode path).
fn reference_png(rel: &str) -> Result<RgbImage> {
    let img = ::image::open(fixture(rel)?)
        .with_context(|| format!("reading {rel}"))?
        .to_rgb8();
    RgbImage::from_raw(img.width(), img.height(), img.into_raw()).context("RGB buffer")
}

/// (bytes that differ, largest difference).
fn diff(a: &[u8], b: &[u8]) -> (usize, u8) {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.abs_diff(*y))
        .filter(|d| *d > 0)
        .fold((0, 0), |(n, m), d| (n + 1, m.max(d)))
}

/// How far a decoder other than ours (zune-jpeg, the `image` crate's) is from PIL on the JPEG
/// fixtures, on the decoded pixels and after resize + crop.
fn jpeg_decoders() -> Result<()> {
    let path = fixture("MANIFEST.json")?;
    let m: Manifest = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| path.display().to_string())?;
    let pct = |(n, max): (usize, u8), len: usize| {
        format!("{:6.2} % (max {max:2})", 100.0 * n as f64 / len as f64)
    };
    println!(
        "{:24} {:>20} {:>20} {:>20}",
        "file (decoded bytes)", "turbojpeg (ours)", "zune-jpeg decoded", "zune, after crop"
    );
    for g in m.images.iter().filter(|g| g.file.ends_with(".jpg")) {
        let decoded = g
            .decoded
            .as_deref()
            .with_context(|| format!("{}: JPEG fixtures store PIL's decode", g.file))?;
        let reference = reference_png(decoded)?;
        let len = reference.as_raw().len();
        let bytes = std::fs::read(fixture(&g.file)?)?;
        let ours = decode_bytes(&bytes, &g.file)?;
        let zune = ::image::load_from_memory_with_format(&bytes, ::image::ImageFormat::Jpeg)
            .with_context(|| format!("zune-jpeg on {}", g.file))?
            .to_rgb8();
        let zune = RgbImage::from_raw(zune.width(), zune.height(), zune.into_raw())
            .context("RGB buffer")?;
        let mut after = Vec::new();
        for t in &g.targets {
            let p = Preprocess::clip(t.size);
            let crop = p.center_crop(&p.resize_shorter(&zune));
            let theirs = reference_png(&t.crop)?;
            after.push(pct(
                diff(crop.as_raw(), theirs.as_raw()),
                theirs.as_raw().len(),
            ));
        }
        println!(
            "{:24} {:>20} {:>20} {:>20}",
            g.file.trim_start_matches("good/"),
            pct(diff(ours.as_raw(), reference.as_raw()), len),
            pct(diff(zune.as_raw(), reference.as_raw()), len),
            after.join(", ")
        );
    }
    Ok(())
}

/// On-CPU time of this thread in ns (Linux `schedstat`): unlike wall time, it does not grow when
/// other processes compete for the cores.
fn thread_cpu_ns() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Decode time per JPEG fixture, in CPU time of one thread, for the code path libjpeg-turbo
/// runs: run it plainly, with `JSIMD_FORCESSE2=1`, and with `JSIMD_FORCENONE=1` (C code).
fn jpeg_cpu_time() -> Result<()> {
    if thread_cpu_ns().is_none() {
        println!("no /proc/thread-self/schedstat here: nothing measured");
        return Ok(());
    }
    let forced: Vec<String> = ["JSIMD_FORCENONE", "JSIMD_FORCESSE2", "JSIMD_FORCEAVX2"]
        .iter()
        .filter(|v| std::env::var(v).is_ok_and(|x| x == "1"))
        .map(|v| format!("{v}=1"))
        .collect();
    println!(
        "SIMD built: {}; run-time switches: {forced:?}",
        libjpeg_turbo_sys::SIMD
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/good");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jpg"))
        .collect();
    files.sort();
    for f in files {
        let bytes = std::fs::read(&f)?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let img = clip_adapter::image::decode_bytes(&bytes, &name)?;
        let reps = 300;
        let mut best = u64::MAX;
        // The best of 5 rounds: the least disturbed by cache-evicting neighbours.
        for _ in 0..5 {
            let start = thread_cpu_ns().unwrap_or(0);
            for _ in 0..reps {
                std::hint::black_box(clip_adapter::image::decode_bytes(&bytes, &name).ok());
            }
            let end = thread_cpu_ns().unwrap_or(0);
            best = best.min(end.saturating_sub(start) / reps);
        }
        println!(
            "{name:24} {}x{}: {:.3} ms per decode",
            img.width(),
            img.height(),
            best as f64 / 1e6
        );
    }
    Ok(())
}
