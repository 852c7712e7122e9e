//! CoOp training step speed, our side (PyTorch: bench/coop.py; both run by bench/coop.sh).
//!
//! `cargo bench --bench coop -- DIR K STEPS` loads the text tower of the model in `DIR`, builds
//! CoOp's prompts for ImageNet's first K class names (16 context vectors, class token at the
//! end), and times the training step: prompts cut at their end token, text features, logits of a
//! batch of 32 image features, cross-entropy, backward into the context, SGD. Prints one JSON
//! line with the median seconds per step after one warm-up step and the peak RSS.
//! `PRECISION=bf16` runs the text tower's frozen products at bfloat16 (what `fit` does on
//! features extracted with `--precision bf16`).

use std::path::Path;
use std::time::Instant;

use candle_core::Device;
use clip_adapter::clip::ModelFiles;
use clip_adapter::methods::coop::prompt_learner::initial_context;
use clip_adapter::methods::coop::{loss_and_grad, ClassPosition, PromptModel};
use clip_adapter::methods::linalg::seeded_rng;
use clip_adapter::methods::optim::Sgd;
use clip_adapter::methods::Matrix;

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
            .map_or("bench/out/coop/vit-b-32", String::as_str),
    );
    let k: usize = args.get(1).map_or(Ok(10), |s| s.parse())?;
    let steps: usize = args.get(2).map_or(Ok(3), |s| s.parse())?;
    let names = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/datasets/imagenet_classnames.txt"),
    )?;
    let classnames: Vec<String> = names
        .lines()
        .take(k)
        .filter_map(|l| l.split_once(' ').map(|(_, n)| n.to_string()))
        .collect();
    let files = ModelFiles::in_dir(dir)?;
    let precision = process::precision()?;
    let name = dir.display().to_string();
    let model = PromptModel::load_at(&files, &name, precision, &Device::Cpu)?;
    let (mut ctx, n_ctx) = initial_context(&model.encoder, &model.tokenizer, None, 16, None, 1)?;
    let learner = model.learner(&classnames, n_ctx, false, ClassPosition::End)?;
    let e = model.encoder.embed_dim();
    let mut rng = seeded_rng(0);
    let images = Matrix::from_vec(32, e, rng.uniform_vec(32 * e, 1.0))
        .ok_or_else(|| anyhow::anyhow!("image matrix shape"))?;
    let labels: Vec<usize> = (0..32).map(|i| i % k).collect();
    let mut sgd = Sgd::new(0.9, 5e-4);
    let mut step = || -> anyhow::Result<()> {
        let (_, grad) = loss_and_grad(&model, &learner, &ctx, &images, &labels)?;
        sgd.step(&mut [&mut ctx], &[&grad], 0.002);
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
        "{{\"impl\":\"rust\",\"model\":\"{}\",\"precision\":\"{precision}\",\"k\":{k},\"threads\":\"{threads}\",\"tokens\":{},\"s_per_step\":{median:.4},\"peak_rss_mib\":{:.0},\"simd\":\"{}\"}}",
        dir.file_name().map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        learner.prompt_len(),
        process::peak_rss_mib(),
        clip_adapter::kernels::matmul::simd_summary()
    );
    Ok(())
}
