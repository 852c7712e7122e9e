//! CLIP-LoRA training step speed, our side (PyTorch: bench/clip_lora.py; both run by
//! bench/clip_lora.sh).
//!
//! `cargo bench --bench clip_lora -- DIR K STEPS` loads the model in `DIR` with the reference's
//! LoRA placement (r 2, α 1, dropout 0.25, q, k, v of every layer of both towers), builds the
//! prompts "a photo of a {}." for ImageNet's first K class names, and times the training step
//! on a batch of 32 random 224 × 224 images: both towers forward and backward, cross-entropy of
//! `logit_scale · cos`, AdamW. Prints one JSON line with the median seconds per step after one
//! warm-up step and the peak RSS. `PRECISION=bf16` runs the frozen products at bfloat16 (what
//! `fit` does on features extracted with `--precision bf16`).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use clip_adapter::clip::train::lora::{LoraClip, LoraOptions};
use clip_adapter::clip::ModelFiles;
use clip_adapter::methods::clip_lora::{LoraTrainer, StepImages, StepText};
use clip_adapter::methods::linalg::seeded_rng;

#[path = "process.rs"]
mod process;

// The allocator and setting of the `clip-adapter` binary, whose `fit` this step is part of.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    clip_adapter::kernels::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let dir = Path::new(
        args.first()
            .map_or("bench/out/clip_lora/vit-b-32", String::as_str),
    );
    let k: usize = args.get(1).map_or(Ok(10), |s| s.parse())?;
    let steps: usize = args.get(2).map_or(Ok(2), |s| s.parse())?;
    let names = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/datasets/imagenet_classnames.txt"),
    )?;
    let files = ModelFiles::in_dir(dir)?;
    let precision = process::precision()?;
    let model = LoraClip::load(&files, &LoraOptions::default(), 0, &Device::Cpu)?.at(precision)?;
    model.set_training(Some(1))?;
    let tokenizer = files.tokenizer()?;
    let ctx = model.config().text.context_length;
    let prompts: Vec<Vec<u32>> = names
        .lines()
        .take(k)
        .filter_map(|l| l.split_once(' ').map(|(_, n)| n))
        .map(|n| tokenizer.tokenize(&format!("a photo of a {n}."), ctx))
        .collect();
    let size = model.config().vision.image_size();
    let mut rng = seeded_rng(1);
    let pixels = Tensor::from_vec(
        rng.uniform_vec(32 * 3 * size * size, 1.0),
        (32, 3, size, size),
        &Device::Cpu,
    )?;
    let labels: Vec<u32> = (0..32).map(|i| (i % k) as u32).collect();
    let mut trainer = LoraTrainer::new(&model, 2e-4, 1000);
    let mut step = || -> anyhow::Result<()> {
        trainer.step(
            StepImages::Pixels(&pixels),
            StepText::Ids(&prompts),
            &labels,
        )?;
        Ok(())
    };
    step()?;
    let mut times = Vec::with_capacity(steps);
    for _ in 0..steps {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "all".into());
    println!(
        "{{\"impl\":\"rust\",\"model\":\"{}\",\"precision\":\"{precision}\",\"k\":{k},\"threads\":\"{threads}\",\"s_per_step\":{median:.4},\"peak_rss_mib\":{:.0}}}",
        dir.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        process::peak_rss_mib()
    );
    Ok(())
}
