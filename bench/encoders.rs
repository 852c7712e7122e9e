//! Rust side of the encoder benchmark (see bench/run.sh): our CLIP on the same weights and
//! inputs as bench/torch_encoders.py, same thread count.
//!
//!     cargo bench --bench encoders -- MODEL_DIR THREADS
//! An optional third argument runs only the cases whose name contains it (for profiling).
//! With `MODEL_DIR/check.safetensors` (bench/make_weights.py) it first checks full-size parity.
//! Prints one JSON object: throughput per case (median over repeats) and peak RSS.

use std::time::Instant;

use candle_core::{Device, Tensor};
use clip_adapter::clip::{Clip, ModelFiles};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SHORT: &[&str] = &[
    "cat",
    "dog",
    "red car",
    "tabby kitten",
    "satellite image of a river",
];

fn timed(mut f: impl FnMut(), repeats: usize) -> f64 {
    f(); // warm-up
    let mut times: Vec<f64> = (0..repeats)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() -> anyhow::Result<()> {
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
    let clip = Clip::load(&ModelFiles::in_dir(dir.as_ref())?, &Device::Cpu)?;
    // Full-size parity: the reference's embeddings of two random images (bench/make_weights.py).
    let check_file = std::path::Path::new(dir).join("check.safetensors");
    let check = if check_file.is_file() {
        let t = candle_core::safetensors::load(&check_file, &Device::Cpu)?;
        let ours = clip.encode_image(&t["pixel_values"])?;
        let want = &t["image_embeds"];
        let diff = (ours - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        let scale = want.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        eprintln!(
            "full-size parity: max |ours - reference| = {diff:.3e} (max |reference| = {scale:.3e})"
        );
        serde_json::json!({"max_abs_diff": diff, "max_abs_reference": scale})
    } else {
        serde_json::Value::Null
    };
    let s = clip.image_size();
    let short: Vec<String> = SHORT.iter().map(|w| format!("a photo of a {w}.")).collect();
    let long = vec![format!(
        "a photo of {}",
        "a very long description ".repeat(30)
    )];
    let mut results = serde_json::Map::new();
    for (batch, repeats) in [(1, 10), (32, 3)] {
        if !wanted(&format!("image b{batch}")) {
            continue;
        }
        let x = Tensor::randn(0f32, 1f32, (batch, 3, s, s), &Device::Cpu)?;
        let secs = timed(|| drop(clip.encode_image(&x).expect("encode")), repeats);
        eprintln!("image b{batch}: {:.2}/s", batch as f64 / secs);
        results.insert(format!("image b{batch}"), (batch as f64 / secs).into());
    }
    for (name, texts) in [("short", &short), ("77-token", &long)] {
        for (batch, repeats) in [(1, 10), (32, 3)] {
            if !wanted(&format!("text {name} b{batch}")) {
                continue;
            }
            let batch_texts: Vec<&String> = (0..batch).map(|i| &texts[i % texts.len()]).collect();
            let secs = timed(
                || drop(clip.encode_text(&batch_texts).expect("encode")),
                repeats,
            );
            eprintln!("text {name} b{batch}: {:.2}/s", batch as f64 / secs);
            results.insert(
                format!("text {name} b{batch}"),
                (batch as f64 / secs).into(),
            );
        }
    }
    let doc = serde_json::json!({
        "impl": format!("clip-adapter {}", env!("CARGO_PKG_VERSION")),
        "threads": threads,
        "per_s": results,
        "peak_rss_mib": peak_rss_mib(),
        "parity": check,
    });
    println!("{doc}");
    Ok(())
}
