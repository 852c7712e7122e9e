//! The matrix products of the trained heads, of CoOp's text tower and of one image through a
//! ViT's linear layers: our `kernels::matmul::gemm`
//! (which routes each shape to the few-row tiles or the blocked GEMM) against each of its two
//! routes forced (the `gemm` crate's blocked GEMM, and the few-row tiles), at the SIMD level of
//! `kernels::matmul::simd_level`, same operands, all on rayon's pool (one thread per core),
//! alternating, best of 30 calls each, GFLOP/s. Every call starts on a worker of the pool, as
//! the encoders' forwards and the training steps do (`kernels::pool::on_pool`): from the main
//! thread each call also paid for handing its work to the pool and waiting to be woken, which
//! halved the rate of a 32-row product on one thread. The last two columns show where a routing
//! threshold (`FEW_ROWS`, `DOT_ROWS`) belongs at this level on this CPU.
//!
//! A second table puts the encoders' `x · wᵀ` shapes through the f32 panels the encoders' linear
//! layers use (`kernels::panels`) and the bfloat16 products of `--precision bf16`
//! (`kernels::bf16`), each weight packed once, outside the timing, beside our `gemm` on the
//! unpacked weight.
//!
//!     cargo bench --bench products
//!     CLIP_ADAPTER_SIMD=avx2 cargo bench --no-default-features --bench products

use std::time::Instant;

use clip_adapter::kernels::bf16::{self, PackedWeight};
use clip_adapter::kernels::matmul::{
    blocked_gemm, broadcast_gemm, few_rows_abt_into, gemm, simd_level, simd_summary, FEW_ROWS,
};
use clip_adapter::kernels::panels::PanelWeight;

#[path = "cpu.rs"]
mod cpu;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (what, m, k, n, a transposed, b transposed)
const SHAPES: [(&str, usize, usize, usize, bool, bool); 20] = [
    ("adapter x·W1, batch 32", 32, 1024, 256, false, false),
    (
        "logits f·Wᵀ, batch 32, 1000 classes",
        32,
        1024,
        1000,
        false,
        true,
    ),
    ("dY·W, batch 32", 32, 1000, 1024, false, false),
    ("adapter xᵀ·dA1, batch 32", 1024, 32, 256, true, false),
    ("adapter x·W1, batch 256", 256, 1024, 256, false, false),
    ("adapter a1·W2, batch 256", 256, 256, 1024, false, false),
    ("logits f·Wᵀ, batch 256", 256, 1024, 1000, false, true),
    ("dY·W, batch 256", 256, 1000, 1024, false, false),
    ("adapter dOut·W2ᵀ, batch 256", 256, 1024, 256, false, true),
    ("adapter a1ᵀ·dOut, batch 256", 256, 256, 1024, true, false),
    (
        "logits f·Wᵀ, 160 rows, 10 classes",
        160,
        1024,
        10,
        false,
        true,
    ),
    ("logits f·Wᵀ, 1024 rows", 1024, 1024, 1000, false, true),
    ("CoOp fc, 10 prompts × 26", 260, 512, 2048, false, true),
    ("CoOp proj, 10 prompts × 26", 260, 2048, 512, false, true),
    ("CoOp fc, 100 prompts × 26", 2600, 512, 2048, false, true),
    ("ViT-B/16 qkv, one image", 197, 768, 2304, false, true),
    ("ViT-B/16 fc1, one image", 197, 768, 3072, false, true),
    ("ViT-B/16 fc2, one image", 197, 3072, 768, false, true),
    ("ViT-L/14 fc1, one image", 257, 1024, 4096, false, true),
    (
        "linear probe, 1600 × 100 classes",
        1600,
        1024,
        100,
        false,
        true,
    ),
];

/// Deterministic operands in [-0.5, 0.5).
fn values(n: usize, salt: usize) -> Vec<f32> {
    (0..n)
        .map(|i| ((i * 7919 + salt * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

fn main() {
    clip_adapter::kernels::alloc::keep_freed_memory();
    clip_adapter::kernels::pool::on_pool(tables)
}

fn tables() {
    println!(
        "# {}, {} SIMD, {} threads",
        cpu::cpu_model(),
        simd_summary(),
        rayon::current_num_threads()
    );
    println!(
        "| product | m × k × n | ours (GFLOP/s) | blocked GEMM (GFLOP/s) | few-row tiles (GFLOP/s) |"
    );
    println!("|---|---|---:|---:|---:|");
    let simd = simd_level();
    for (what, m, k, n, ta, tb) in SHAPES {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let mut c = vec![0f32; m * n];
        let flop = 2.0 * (m * k * n) as f64;
        let (mut ours, mut blocked, mut tiles) = (f64::MAX, f64::MAX, f64::MAX);
        let best = |t: Instant, best: &mut f64| *best = best.min(t.elapsed().as_secs_f64());
        for _ in 0..30 {
            let t = Instant::now();
            gemm(&a, ta, &b, tb, &mut c, m, k, n, false);
            best(t, &mut ours);
            let t = Instant::now();
            blocked_gemm(&a, ta, &b, tb, &mut c, m, k, n, false);
            best(t, &mut blocked);
            // The few-row kernel that `gemm` would route this shape to below its thresholds,
            // whatever the shape: where it beats the blocked GEMM is where a threshold belongs.
            let t = Instant::now();
            if tb && !ta {
                for i0 in (0..m).step_by(FEW_ROWS) {
                    let rows = FEW_ROWS.min(m - i0);
                    few_rows_abt_into(simd, &a[i0 * k..], &b, &mut c[i0 * n..], rows, k, n, false);
                }
            } else if !tb {
                let strides = if ta { (1, m) } else { (k, 1) };
                broadcast_gemm(simd, &a, strides, &b, &mut c, m, k, n, false);
            }
            best(t, &mut tiles);
        }
        let tiles = if tb && ta {
            "".to_string()
        } else {
            format!("{:.0}", flop / tiles / 1e9)
        };
        println!(
            "| {what} | {m} × {k} × {n} | {:.0} | {:.0} | {tiles} |",
            flop / ours / 1e9,
            flop / blocked / 1e9,
        );
    }
    bf16_table();
}

/// The encoders' products (`x · wᵀ`, weight `(n, k)`) in f32 and in bfloat16.
fn bf16_table() {
    let kernel = match bf16::native() {
        true => "AVX512-BF16",
        false => "no AVX512-BF16: rounded operands on the f32 kernels",
    };
    println!();
    println!("The encoders' products with the weight packed once: f32 panels and bfloat16 ({kernel}), best of 30 alternating calls:");
    println!();
    println!("| product | m × k × n | f32 (GFLOP/s) | f32 panels (GFLOP/s) | bf16 (GFLOP/s) | bf16 / f32 |");
    println!("|---|---|---:|---:|---:|---:|");
    let mut shapes: Vec<(&str, usize, usize, usize)> = (SHAPES.iter())
        .filter(|s| s.5 && !s.4)
        .map(|&(what, m, k, n, ..)| (what, m, k, n))
        .collect();
    shapes.extend([
        ("logits f·Wᵀ, batch 32, 100 classes", 32, 1024, 100),
        ("logits f·Wᵀ, batch 32, 397 classes", 32, 1024, 397),
        ("logits f·Wᵀ, batch 256, 397 classes", 256, 1024, 397),
        ("CLIP text qkv, one 77-token text", 77, 512, 1536),
        ("CLIP text out_proj, one 77-token text", 77, 512, 512),
        ("CLIP text fc1, one 77-token text", 77, 512, 2048),
        ("CLIP text fc2, one 77-token text", 77, 2048, 512),
        ("ViT-B/32 fc1, one image", 50, 768, 3072),
        ("ViT-B/32 fc2, one image", 50, 3072, 768),
        ("ViT-B/32 fc1, batch 32", 1600, 768, 3072),
        ("ViT-B/16 qkv, batch 32", 6304, 768, 2304),
        ("ViT-B/16 fc2, batch 32", 6304, 3072, 768),
    ]);
    for (what, m, k, n) in shapes {
        let (x, w) = (values(m * k, 1), values(n * k, 2));
        let packed = PackedWeight::pack(&w, n, k);
        let panels = PanelWeight::pack(&w, n, k);
        let mut c = vec![0f32; m * n];
        let flop = 2.0 * (m * k * n) as f64;
        let (mut full, mut low, mut paneled) = (f64::MAX, f64::MAX, f64::MAX);
        for _ in 0..30 {
            let t = Instant::now();
            panels.abt_into(&x, m, &mut c);
            paneled = paneled.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            gemm(&x, false, &w, true, &mut c, m, k, n, false);
            full = full.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            packed.abt_into(&x, m, &mut c);
            low = low.min(t.elapsed().as_secs_f64());
        }
        println!(
            "| {what} | {m} × {k} × {n} | {:.0} | {:.0} | {:.0} | {:.2} |",
            flop / full / 1e9,
            flop / paneled / 1e9,
            flop / low / 1e9,
            full / low
        );
    }
}
