//! The matrix products of the trained heads and of CoOp's text tower: our `kernels::matmul::gemm`
//! (which routes each shape to the few-row tiles or the blocked GEMM) against the `gemm` crate
//! called directly (AVX-512 when the CPU has it), same operands, both on rayon's pool (one thread
//! per core), alternating, best of 30 calls each, GFLOP/s.
//!
//! `cargo bench --bench products`

use std::time::Instant;

use clip_adapter::kernels::matmul::{gemm, simd_level};

#[path = "cpu.rs"]
mod cpu;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// (what, m, k, n, a transposed, b transposed)
const SHAPES: [(&str, usize, usize, usize, bool, bool); 16] = [
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
    println!(
        "# {}, {} SIMD, {} threads",
        cpu::cpu_model(),
        simd_level().name(),
        rayon::current_num_threads()
    );
    println!("| product | m × k × n | ours (GFLOP/s) | `gemm` crate (GFLOP/s) |");
    println!("|---|---|---:|---:|");
    for (what, m, k, n, ta, tb) in SHAPES {
        let (a, b) = (values(m * k, 1), values(k * n, 2));
        let mut c = vec![0f32; m * n];
        let flop = 2.0 * (m * k * n) as f64;
        let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
        let threads = rayon::current_num_threads();
        let (mut ours, mut crate_) = (f64::MAX, f64::MAX);
        for _ in 0..30 {
            let t = Instant::now();
            gemm(&a, ta, &b, tb, &mut c, m, k, n, false);
            ours = ours.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            // SAFETY: dst m×n with row stride n; op(a) m×k and op(b) k×n address exactly the
            // elements of `a` and `b` through these strides.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    c.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    a_cs,
                    a_rs,
                    b.as_ptr(),
                    b_cs,
                    b_rs,
                    1.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::Rayon(threads),
                )
            };
            crate_ = crate_.min(t.elapsed().as_secs_f64());
        }
        println!(
            "| {what} | {m} × {k} × {n} | {:.0} | {:.0} |",
            flop / ours / 1e9,
            flop / crate_ / 1e9
        );
    }
}
