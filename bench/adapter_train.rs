//! CLIP-Adapter training speed on synthetic cached features (ours; the PyTorch side is
//! bench/adapter_train.py, both run by bench/adapter_train.sh).
//!
//! `cargo bench --bench adapter_train -- N D K EPOCHS BATCH` trains the default adapter
//! (visual, official form, r = 4, SGD momentum + warm-up cosine) and prints one JSON line with
//! the seconds per epoch. `cargo bench --bench adapter_train -- grid [DIVISOR]` runs the
//! 11-dataset grid (5 shot counts, 3 seeds) in one `experiment::run_grid`, as `run` does (one
//! set of threads for the whole grid, taking the fits of each group and then the next), with the protocol's
//! epochs divided by DIVISOR (default 1: the whole grid, minutes; a group's time is multiplied
//! back, which also multiplies its fixed costs), and prints each group's wall seconds and the
//! total.

use std::cell::Cell;
use std::collections::HashMap;
use std::time::Instant;

use clip_adapter::experiment::{
    run_grid, ExperimentError, Grid, GridEvent, GridIo, GridMethod, RowSource, Validation,
};
use clip_adapter::kernels::matmul::simd_summary;
use clip_adapter::methods::clip_adapter::{self as ca, AdapterModel, AdapterOptions};
use clip_adapter::methods::epochs::epochs_for_shots;
use clip_adapter::methods::linalg::seeded_rng;
use clip_adapter::methods::registry::CLIP_ADAPTER;
use clip_adapter::methods::{FewShotTask, LabelledSet, Matrix, MethodOverrides, TextClassifier};

#[path = "cpu.rs"]
mod cpu;

/// Synthetic features of `n` images in `k` classes; `seed` draws them.
fn task(n: usize, d: usize, k: usize, seed: u64) -> FewShotTask {
    let mut rng = seeded_rng(seed);
    let x = Matrix::from_vec(n, d, rng.uniform_vec(n * d, 1.0)).expect("shape");
    let labels = (0..n).map(|i| i % k).collect();
    let w = Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0))
        .expect("shape")
        .normalized();
    let empty = LabelledSet {
        features: Matrix::zeros(0, d),
        labels: Vec::new(),
    };
    FewShotTask {
        pre_projection: None,
        text_mean: None,
        classnames: (0..k).map(|i| i.to_string()).collect(),
        train: LabelledSet {
            features: x,
            labels,
        },
        train_views: Vec::new(),
        val: empty.clone(),
        test: empty,
        text: TextClassifier {
            weights: w,
            logit_scale: 100.0,
            logit_bias: None,
        },
    }
}

/// Seconds per epoch over `epochs` epochs.
fn time(n: usize, d: usize, k: usize, epochs: usize, batch: usize) -> f64 {
    let t = task(n, d, k, 0);
    let opts = AdapterOptions {
        batch_size: batch,
        ..Default::default()
    };
    let mut rng = seeded_rng(1);
    let mut model = AdapterModel::new(&t.text, &opts, opts.alpha, opts.beta, &mut rng);
    let mut order = |_| rng.permutation(n);
    let start = Instant::now();
    ca::train(&t, &opts, epochs, &mut model, &mut order, &mut |_| {}).expect("training");
    start.elapsed().as_secs_f64() / epochs as f64
}

/// Floating-point operations of one epoch of the default adapter (visual, hidden width D/4):
/// per sample `x·W1`, `a1·W2`, the logits and, backward, their input gradient, the two weight
/// gradients and `dOut·W2ᵀ`: `10·D·H + 4·D·K`; over the samples of the full batches (the last
/// incomplete batch is dropped, as Dassl's loader does, unless it is the only one).
fn flop_per_epoch(n: usize, d: usize, k: usize, batch: usize) -> f64 {
    let samples = if n >= batch { n / batch * batch } else { n };
    let h = (d / 4).max(1);
    samples as f64 * (10 * d * h + 4 * d * k) as f64
}

/// This machine's large-GEMM rate through our `gemm` (2048³, best of 5), GFLOP/s: the rate
/// a training case's products could reach at best.
fn gemm_rate() -> f64 {
    let n = 2048;
    let mut rng = seeded_rng(9);
    let (a, b) = (rng.uniform_vec(n * n, 1.0), rng.uniform_vec(n * n, 1.0));
    let mut c = vec![0f32; n * n];
    let best = (0..5)
        .map(|_| {
            let t = Instant::now();
            clip_adapter::kernels::matmul::gemm(&a, false, &b, false, &mut c, n, n, n, false);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// The grid's datasets and their classes; D = 1024 (RN50's features).
const DATASETS: [(&str, usize); 11] = [
    ("imagenet", 1000),
    ("caltech101", 100),
    ("dtd", 47),
    ("eurosat", 10),
    ("fgvc_aircraft", 100),
    ("oxford_flowers", 102),
    ("food101", 101),
    ("oxford_pets", 37),
    ("sun397", 397),
    ("stanford_cars", 196),
    ("ucf101", 101),
];
const SHOTS: [usize; 5] = [1, 2, 4, 8, 16];

/// The protocol's epochs, as `run` trains them: CoOp's 50 on ImageNet at every shot count, by
/// shots elsewhere.
fn protocol_epochs(dataset: &str, shots: usize) -> usize {
    (MethodOverrides::default().coop_epochs(dataset)).unwrap_or_else(|| epochs_for_shots(shots))
}

/// The whole CLIP-Adapter grid in one `run_grid`, as `run` fits it, on synthetic draws made
/// before the clock starts (`load` hands out a copy). Each group's seconds run from the
/// previous group's last row to its own (the next group's fits start while a group's last ones
/// run, so a group's seconds include some of the next one's); with `divisor > 1` every fit trains `epochs / divisor` epochs
/// and the group's seconds are multiplied by the ratio. Prints one JSON line per group and the
/// total.
fn whole_grid(divisor: usize) {
    let grid = Grid {
        methods: vec![GridMethod {
            label: "clip-adapter".into(),
            options: String::new(),
        }],
        datasets: DATASETS.iter().map(|(name, _)| name.to_string()).collect(),
        shots: SHOTS.to_vec(),
        seeds: vec![1, 2, 3],
        validation: Validation::None,
        protocol: clip_adapter::experiment::Protocol::FewShot,
    };
    let source = RowSource {
        model: "synthetic".into(),
        model_name: "synthetic".into(),
        features: "synthetic".into(),
    };
    let trained = |dataset: &str, shots: usize| (protocol_epochs(dataset, shots) / divisor).max(1);
    // Every draw is made before the clock starts: `load` only hands out a copy, as a cache
    // read would, while the previous group's fits run.
    let mut draws: HashMap<(&str, usize, u64), FewShotTask> = HashMap::new();
    for &(name, k) in &DATASETS {
        for shots in SHOTS {
            for &seed in &grid.seeds {
                draws.insert((name, shots, seed), task(k * shots, 1024, k, seed));
            }
        }
    }
    let shots_now = Cell::new(0usize);
    let mut rows = Vec::new();
    let (mut last, mut total) = (0.0f64, 0.0f64);
    let mut group_rows = 0;
    let start = Instant::now();
    let io = GridIo {
        load: &mut |dataset, shots, seed| {
            shots_now.set(shots);
            let task = draws
                .get(&(dataset, shots, seed))
                .expect("a draw of the grid");
            Ok((task.clone(), source.clone()))
        },
        model: &mut |_| unreachable!("no CoOp in this grid"),
        images: &mut |_, _, _, _| unreachable!("no CLIP-LoRA in this grid"),
        configure: &mut |_, dataset, seed| {
            let overrides = MethodOverrides {
                epochs: Some(trained(dataset, shots_now.get())),
                ..Default::default()
            };
            overrides.method(CLIP_ADAPTER, dataset, seed)
        },
        events: &mut |event| {
            let GridEvent::Row { row, .. } = event else {
                return;
            };
            group_rows += 1;
            if group_rows < 3 {
                return;
            }
            group_rows = 0;
            let now = start.elapsed().as_secs_f64();
            let (epochs, ran) = (
                protocol_epochs(&row.dataset, row.shots),
                trained(&row.dataset, row.shots),
            );
            let secs = (now - last) * epochs as f64 / ran as f64;
            (last, total) = (now, total + secs);
            println!(
                "{{\"dataset\":\"{}\",\"shots\":{},\"epochs\":{epochs},\"trained\":{ran},\"s_3_seeds\":{secs:.2}}}",
                row.dataset, row.shots
            );
        },
    };
    run_grid::<ExperimentError>(&grid, &mut rows, io).expect("grid");
    println!(
        "{{\"grid_seconds\":{total:.1},\"divisor\":{divisor},\"cpu\":\"{}\",\"simd\":\"{}\"}}",
        cpu::cpu_model(),
        simd_summary()
    );
}

// As the command line: mimalloc, keeping freed memory.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    clip_adapter::kernels::alloc::keep_freed_memory();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.first().map(String::as_str) == Some("grid") {
        whole_grid(args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1));
        return;
    }
    let num =
        |i: usize, default: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(default);
    let (n, d, k, epochs, batch) = (
        num(0, 16000),
        num(1, 1024),
        num(2, 1000),
        num(3, 2),
        num(4, 32),
    );
    let s = time(n, d, k, epochs, batch);
    let rate = flop_per_epoch(n, d, k, batch) / s / 1e9;
    let gemm = gemm_rate();
    println!(
        "{{\"impl\":\"rust\",\"n\":{n},\"d\":{d},\"k\":{k},\"epochs\":{epochs},\"batch\":{batch},\"s_per_epoch\":{s:.5},\"gflop_per_s\":{rate:.1},\"gemm_gflop_per_s\":{gemm:.1},\"fraction_of_gemm\":{:.3},\"cpu\":\"{}\",\"simd\":\"{}\"}}",
        rate / gemm,
        cpu::cpu_model(),
        simd_summary()
    );
}
