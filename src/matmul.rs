//! The one wrapper around the `gemm` crate: row-major f32 products with optional transposes, used
//! by the ResNet convolutions and by the heads trained on cached features. (candle's own matmul
//! calls the same crate for the transformer towers.)

/// `c (m×n) = op(a) · op(b)`, or `c += …` when `accumulate`. `op(a)` is `m×k`: `a` is stored
/// `m×k` row-major, or `k×m` when `ta` (and likewise `b`, `k×n` or `n×k` when `tb`). Transposes
/// are strides, never copies.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    a: &[f32],
    ta: bool,
    b: &[f32],
    tb: bool,
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    accumulate: bool,
) {
    assert!(
        a.len() >= m * k && b.len() >= k * n && c.len() >= m * n,
        "gemm: buffer too small"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    // (row stride, column stride) of op(a) and op(b).
    let (a_rs, a_cs) = if ta { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if tb { (1, k as isize) } else { (n as isize, 1) };
    // Below ~1 MFLOP the thread hand-off costs more than it saves.
    let parallelism = if m * n * k >= 1 << 20 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above bounds every index gemm touches: dst m×n with row stride n; op(a)
    // m×k and op(b) k×n address exactly the m·k and k·n elements of their buffers through the
    // strides chosen above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
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
            parallelism,
        );
    }
}
