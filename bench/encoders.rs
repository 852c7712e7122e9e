//! Rust side of the encoder benchmark (see bench/run.sh): our CLIP on the same weights and
//! inputs as bench/torch_encoders.py, same thread count.
//!
//!     cargo bench --bench encoders -- MODEL_DIR THREADS
//! An optional third argument runs only the cases whose name contains it (for profiling);
//! `REPEAT_SCALE=N` repeats every case N times as often (a longer steady state for `perf`).
//! With `MODEL_DIR/check.safetensors` (bench/make_weights.py) it first checks full-size parity
//! (image embeddings, and text embeddings when the file has token ids) and stops if the largest
//! difference exceeds 1e-4 of the largest reference value. A filter matching no case
//! (`parity-only`) runs the check alone.
//! Prints one JSON object: throughput per case (median over repeats), the GEMM rate of the
//! machine on a large square product and on the encoders' own shapes (GFLOP/s, best of repeats),
//! the CPU model and SIMD level, and peak RSS.

use std::time::Instant;

use candle_core::{Device, Tensor};
use clip_adapter::clip::{Clip, LoadOptions, ModelFiles, Precision};
use clip_adapter::kernels::matmul::{gemm, simd_summary};

#[path = "cpu.rs"]
mod cpu;
#[path = "process.rs"]
mod process;
use cpu::cpu_model;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHORT: &[&str] = &[
    "cat",
    "dog",
    "red car",
    "tabby kitten",
    "satellite image of a river",
];

/// Median seconds per call after a warm-up call, and minor page faults per timed call (memory the
/// kernel had to hand out, zeroed, during the steady state).
fn timed(mut f: impl FnMut(), repeats: usize) -> (f64, f64) {
    f(); // warm-up
    let faults = minor_faults();
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    let faults = (minor_faults() - faults) as f64 / repeats as f64;
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], faults)
}

/// The process's minor page faults so far (`minflt`, field 10 of /proc/self/stat).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().nth(7))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// GEMM shapes (M, K, N, `b` transposed): a large square product (the machine's rate), one
/// ViT-B/32 batch-32 MLP product, one image's tokens through a 768×768 projection, and a
/// CLIP-Adapter step's logits against 1000 class embeddings.
const GEMMS: &[(&str, usize, usize, usize, bool)] = &[
    ("gemm 2048x2048x2048", 2048, 2048, 2048, false),
    ("gemm 1600x768x3072 (x.wT)", 1600, 768, 3072, true),
    ("gemm 50x768x768 (x.wT)", 50, 768, 768, true),
    ("gemm 32x1024x1000 (x.wT)", 32, 1024, 1000, true),
];

/// Best GFLOP/s of `c = a · op(b)` over calls that fill about a second.
fn gemm_rate(m: usize, k: usize, n: usize, tb: bool) -> f64 {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 0.01).collect();
    let b: Vec<f32> = (0..k * n).map(|i| (i % 7) as f32 * 0.01).collect();
    let mut c = vec![0f32; m * n];
    let mut call = || gemm(&a, false, &b, tb, &mut c, m, k, n, false);
    call();
    let t = Instant::now();
    call();
    let once = t.elapsed().as_secs_f64().max(1e-6);
    let repeats = ((1.0 / once) as usize).clamp(3, 1000);
    let best = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            call();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// Full-size parity bound: the largest difference relative to the largest reference magnitude.
const PARITY_REL: f32 = 1e-4;

/// The same bound for `PRECISION=bf16`: its operands keep 8 significant bits (2^-9 ≈ 2e-3
/// relative rounding each), and the error of a dozen layers adds up.
const BF16_PARITY_REL: f32 = 5e-2;

/// Our embeddings against the reference's: prints and checks the largest difference, and
/// returns it with the largest reference magnitude. `what` is "image" or "text".
fn full_size_parity(
    what: &str,
    ours: Tensor,
    want: &Tensor,
    precision: Precision,
) -> anyhow::Result<(f32, f32)> {
    let diff = (ours - want)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    // "full-size parity" (image) and "full-size text parity": the lines run.sh's readers know.
    let kind = if what == "image" { "" } else { "text " };
    eprintln!(
        "full-size {kind}parity: max |ours - reference| = {diff:.3e} (max |reference| = {scale:.3e})"
    );
    let bound = match precision {
        Precision::F32 => PARITY_REL,
        Precision::Bf16 => BF16_PARITY_REL,
    };
    check_parity(what, diff, scale, bound)?;
    Ok((diff, scale))
}

fn check_parity(what: &str, diff: f32, scale: f32, bound: f32) -> anyhow::Result<()> {
    let rel = diff / scale.max(f32::MIN_POSITIVE);
    anyhow::ensure!(
        rel <= bound,
        "full-size {what} parity failed: {diff:.3e} is {rel:.2e} of the largest reference value \
         {scale:.3e} (bound {bound:.0e})"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    clip_adapter::kernels::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = args.first().map_or("bench/out/vit-b-32", String::as_str);
    let threads: usize = args.get(1).map_or(Ok(2), |t| t.parse())?;
    let only = args.get(2).cloned().unwrap_or_default();
    let wanted = |case: &str| case.contains(only.as_str());
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()?;
    // PRECISION=bf16: the opt-in bfloat16 products (bench/run.sh passes it to both sides).
    let precision = process::precision()?;
    let options = LoadOptions::at(precision);
    let clip = Clip::load_with(&ModelFiles::in_dir(dir.as_ref())?, &Device::Cpu, options)?;
    // Full-size parity: the reference's embeddings of two random images (bench/make_weights.py).
    let check_file = std::path::Path::new(dir).join("check.safetensors");
    let check = if check_file.is_file() {
        let t = candle_core::safetensors::load(&check_file, &Device::Cpu)?;
        let ours = clip.encode_image(&t["pixel_values"])?;
        let (diff, scale) = full_size_parity("image", ours, &t["image_embeds"], precision)?;
        let mut parity = serde_json::json!({"max_abs_diff": diff, "max_abs_reference": scale});
        // Text embeddings of the reference's own token ids, when the file has them.
        if let (Some(ids), Some(want)) = (t.get("input_ids"), t.get("text_embeds")) {
            let rows: Vec<Vec<u32>> = ids
                .to_vec2::<i64>()?
                .into_iter()
                .map(|r| r.into_iter().map(|i| i as u32).collect())
                .collect();
            let ours = clip.encode_tokens(&rows)?;
            let (diff, scale) = full_size_parity("text", ours, want, precision)?;
            parity["text_max_abs_diff"] = diff.into();
            parity["text_max_abs_reference"] = scale.into();
        }
        parity
    } else {
        serde_json::Value::Null
    };
    let s = clip.image_size();
    let short: Vec<String> = SHORT.iter().map(|w| format!("a photo of a {w}.")).collect();
    let long = vec![format!(
        "a photo of {}",
        "a very long description ".repeat(30)
    )];
    let mut gflops = serde_json::Map::new();
    for &(name, m, k, n, tb) in GEMMS {
        if wanted(name) {
            let rate = gemm_rate(m, k, n, tb);
            eprintln!("{name}: {rate:.1} GFLOP/s");
            gflops.insert(name.to_string(), rate.into());
        }
    }
    let scale: usize = std::env::var("REPEAT_SCALE").map_or(Ok(1), |s| s.parse())?;
    let (mut results, mut faults) = (serde_json::Map::new(), serde_json::Map::new());
    for (batch, repeats) in [(1, 10 * scale), (32, 3 * scale)] {
        if !wanted(&format!("image b{batch}")) {
            continue;
        }
        let x = Tensor::randn(0f32, 1f32, (batch, 3, s, s), &Device::Cpu)?;
        let (secs, f) = timed(|| drop(clip.encode_image(&x).expect("encode")), repeats);
        eprintln!(
            "image b{batch}: {:.2}/s, {f:.0} page faults/call",
            batch as f64 / secs
        );
        results.insert(format!("image b{batch}"), (batch as f64 / secs).into());
        faults.insert(format!("image b{batch}"), f.into());
    }
    for (name, texts) in [("short", &short), ("77-token", &long)] {
        for (batch, repeats) in [(1, 10 * scale), (32, 3 * scale)] {
            if !wanted(&format!("text {name} b{batch}")) {
                continue;
            }
            let batch_texts: Vec<&String> = (0..batch).map(|i| &texts[i % texts.len()]).collect();
            let (secs, f) = timed(
                || drop(clip.encode_text(&batch_texts).expect("encode")),
                repeats,
            );
            eprintln!(
                "text {name} b{batch}: {:.2}/s, {f:.0} page faults/call",
                batch as f64 / secs
            );
            faults.insert(format!("text {name} b{batch}"), f.into());
            results.insert(
                format!("text {name} b{batch}"),
                (batch as f64 / secs).into(),
            );
        }
    }
    let doc = serde_json::json!({
        "impl": format!("clip-adapter {}", env!("CARGO_PKG_VERSION")),
        "threads": threads,
        "precision": precision.name(),
        "per_s": results,
        "gflops": gflops,
        "page_faults_per_call": faults,
        "cpu": cpu_model(),
        "simd": simd_summary(),
        "peak_rss_mib": process::peak_rss_mib(),
        "parity": check,
    });
    println!("{doc}");
    Ok(())
}
