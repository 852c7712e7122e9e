//! The SGD update of `torch.optim.SGD` (momentum, dampening 0, no Nesterov, L2 weight decay added
//! to the gradient), element-wise and fused into the broadcast tiles that make a weight's
//! gradient.
//!
//! A trained head's weight gradient over a batch is one product with the batch as its inner
//! dimension (`∂L/∂W = xᵀ · ∂L/∂y`). Stored and then read back by the optimiser, it costs a pass
//! over the weight, its momentum and the gradient after the product; an adapter's weights and
//! momenta (4 MiB at 1024 × 256) do not fit a 2 MiB L2, so that pass streams from L3 while the
//! FMA units wait. [`sgd_product`] keeps each tile's sums in registers and applies the step to the
//! tile of the weight and its momentum there: the gradient is never stored, and the tile's reads
//! and writes of the weight overlap the next tile's FMAs. It gives the same bits as
//! `kernels::matmul::broadcast_gemm` followed by [`sgd_update`] (a unit test compares them at
//! every SIMD level).

use std::cell::RefCell;

#[cfg(target_arch = "x86_64")]
use super::matmul::{broadcast_acc_avx2, broadcast_acc_avx512, tile_masks_avx2, tile_masks_avx512};
use super::matmul::{broadcast_add_portable, run_tasks, Out, Simd, TileSums, BROADCAST_DEPTH};

/// `[learning rate, weight decay, momentum]` of one step; momentum 0 (also the first step of a
/// momentum optimiser, whose buffer starts as the gradient) copies the gradient into the buffer.
pub type SgdHyper = [f32; 3];

/// One SGD update of `p` with gradient `g` and momentum buffer `b`, with the vector width of
/// `simd`. The loop is written once and compiled for each level, the momentum test outside it:
/// the plain build ran it four floats at a time with the test in every iteration, a tenth of a
/// batch-32 CLIP-Adapter step on an Intel Xeon (Emerald Rapids). No operation fuses into an FMA
/// (Rust never contracts), so every level gives the same bits.
pub(crate) fn sgd_update(simd: Simd, p: &mut [f32], g: &[f32], b: &mut [f32], hyper: SgdHyper) {
    match simd {
        // SAFETY: the level is available (`simd_level` checked the CPU).
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => unsafe { sgd_update_avx512(p, g, b, hyper) },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => unsafe { sgd_update_avx2(p, g, b, hyper) },
        _ => sgd_update_plain(p, g, b, hyper),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sgd_update_avx512(p: &mut [f32], g: &[f32], b: &mut [f32], hyper: SgdHyper) {
    sgd_update_plain(p, g, b, hyper)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sgd_update_avx2(p: &mut [f32], g: &[f32], b: &mut [f32], hyper: SgdHyper) {
    sgd_update_plain(p, g, b, hyper)
}

#[inline(always)]
fn sgd_update_plain(p: &mut [f32], g: &[f32], b: &mut [f32], [lr, wd, momentum]: SgdHyper) {
    let n = p.len().min(g.len()).min(b.len());
    let (p, g, b) = (&mut p[..n], &g[..n], &mut b[..n]);
    if momentum == 0.0 {
        for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
            *b = g + wd * *p;
            *p -= lr * *b;
        }
    } else {
        for ((p, &g), b) in p.iter_mut().zip(g).zip(b.iter_mut()) {
            *b = momentum * *b + (g + wd * *p);
            *p -= lr * *b;
        }
    }
}

/// A weight's gradient as a product, `op(a) · b`: `op(a)` is `rows × k` with strides
/// `a_strides` (row, column), `b` is `k × cols`, row-major. `∂L/∂W = xᵀ · ∂L/∂y` for a batch
/// `x` of `k` rows is `a = x`, strides `(1, rows)`.
#[derive(Clone, Copy)]
pub struct GradientProduct<'a> {
    pub a: &'a [f32],
    pub a_strides: (usize, usize),
    pub b: &'a [f32],
    pub rows: usize,
    pub k: usize,
    pub cols: usize,
}

/// The most rows of the batch a fused product sums in registers: the broadcast kernel's depth
/// per pass, so that each sum is the same one as `broadcast_gemm` makes.
pub const MAX_BATCH: usize = BROADCAST_DEPTH;

/// Rows of the weight per parallel task: eight row tiles at every level (six rows at AVX-512 and
/// AVX2, four at the portable level), 22 tasks for a 1024-row weight.
const TASK_ROWS: usize = 48;

thread_local! {
    /// Each thread's copy of `b` in panels of the tile's width.
    static PANELS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One SGD step of `w` (`rows × cols`, momentum buffer `buf` of the same shape) with the gradient
/// `product`, tile by tile ([module docs](self)). The batch (`product.k`) must be at most
/// [`MAX_BATCH`].
pub(crate) fn sgd_product(
    simd: Simd,
    product: GradientProduct,
    w: &mut [f32],
    buf: &mut [f32],
    hyper: SgdHyper,
) {
    let GradientProduct {
        a,
        a_strides: (a_rs, a_cs),
        b,
        rows,
        k,
        cols,
    } = product;
    assert!(simd.available(), "fused SGD: {simd:?} not available");
    assert!(
        k <= MAX_BATCH,
        "fused SGD: a batch of {k} rows is over {MAX_BATCH}"
    );
    assert!(
        w.len() >= rows * cols && buf.len() >= rows * cols && b.len() >= k * cols,
        "fused SGD: buffer too small"
    );
    if rows == 0 || cols == 0 {
        return;
    }
    if k == 0 {
        let zeros = vec![0.0; rows * cols];
        return sgd_update(simd, &mut w[..rows * cols], &zeros, buf, hyper);
    }
    assert!(
        a.len() > (rows - 1) * a_rs + (k - 1) * a_cs,
        "fused SGD: buffer too small"
    );
    let (mr, nr) = match simd {
        Simd::Avx512 => (6, 64),
        Simd::Avx2 => (6, 16),
        Simd::Portable => (4, 16),
    };
    PANELS.with_borrow_mut(|panels| {
        // Every row tile reads all of `b`: one copy in panels of `nr` columns keeps each tile's
        // rows of `b` contiguous (a 1024-wide `b` has its rows 4 KiB apart, a page each).
        let n_panels = cols.div_ceil(nr);
        if panels.len() < n_panels * k * nr {
            panels.resize(n_panels * k * nr, 0.0);
        }
        for (q, panel) in panels.chunks_mut(k * nr).take(n_panels).enumerate() {
            let width = nr.min(cols - q * nr);
            for (p, row) in panel.chunks_mut(nr).enumerate() {
                row[..width].copy_from_slice(&b[p * cols + q * nr..][..width]);
            }
        }
        let panels = &panels[..];
        let (w, buf) = (Out(w.as_mut_ptr()), Out(buf.as_mut_ptr()));
        let tasks = rows.div_ceil(TASK_ROWS);
        run_tasks(tasks, rows * cols * k, |task| {
            let (start, end) = (task * TASK_ROWS, ((task + 1) * TASK_ROWS).min(rows));
            for i in (start..end).step_by(mr) {
                let r = mr.min(end - i);
                for q in 0..n_panels {
                    let j = q * nr;
                    let t = TileSums {
                        // SAFETY (of every `add` below): inside `a`, the panels, `w` and
                        // `buf`, by the asserts above and the loop bounds.
                        a: unsafe { a.as_ptr().add(i * a_rs) },
                        a_rs,
                        a_cs,
                        b: unsafe { panels.as_ptr().add(q * k * nr) },
                        ldb: nr,
                        depth: k,
                        cols: nr.min(cols - j),
                    };
                    let at = i * cols + j;
                    let tile = unsafe { (w.add(at).0, buf.add(at).0, cols) };
                    // SAFETY: rows i..i + r and columns j..j + t.cols of `w` and `buf` are
                    // inside them and written by this task alone; `simd` is available.
                    unsafe { sgd_tile(simd, t, r, tile, hyper) }
                }
            }
        })
    })
}

/// One tile of [`sgd_product`]: `r` rows of the sums `t`, applied to the tile of the weight and
/// momentum at `w` and `buf` (row stride `ld`).
///
/// # Safety
/// The tile's operands and `r` rows of `t.cols` floats at `w` and `buf` must be inside their
/// allocations, and `simd` must be available.
unsafe fn sgd_tile(
    simd: Simd,
    t: TileSums,
    r: usize,
    (w, buf, ld): (*mut f32, *mut f32, usize),
    hyper: SgdHyper,
) {
    match simd {
        #[cfg(target_arch = "x86_64")]
        Simd::Avx512 => match r {
            6 => sgd_tile_avx512::<6>(t, w, buf, ld, hyper),
            5 => sgd_tile_avx512::<5>(t, w, buf, ld, hyper),
            4 => sgd_tile_avx512::<4>(t, w, buf, ld, hyper),
            3 => sgd_tile_avx512::<3>(t, w, buf, ld, hyper),
            2 => sgd_tile_avx512::<2>(t, w, buf, ld, hyper),
            _ => sgd_tile_avx512::<1>(t, w, buf, ld, hyper),
        },
        #[cfg(target_arch = "x86_64")]
        Simd::Avx2 => match r {
            6 => sgd_tile_avx2::<6>(t, w, buf, ld, hyper),
            5 => sgd_tile_avx2::<5>(t, w, buf, ld, hyper),
            4 => sgd_tile_avx2::<4>(t, w, buf, ld, hyper),
            3 => sgd_tile_avx2::<3>(t, w, buf, ld, hyper),
            2 => sgd_tile_avx2::<2>(t, w, buf, ld, hyper),
            _ => sgd_tile_avx2::<1>(t, w, buf, ld, hyper),
        },
        _ => {
            let mut sums = [0f32; 4 * 16];
            broadcast_add_portable(&t, r, sums.as_mut_ptr(), 16);
            for (row, g) in sums.chunks(16).take(r).enumerate() {
                let p = std::slice::from_raw_parts_mut(w.add(row * ld), t.cols);
                let b = std::slice::from_raw_parts_mut(buf.add(row * ld), t.cols);
                sgd_update_plain(p, &g[..t.cols], b, hyper);
            }
        }
    }
}

/// The update of [`sgd_update_plain`] on R rows × 64 columns of AVX-512 sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn sgd_tile_avx512<const R: usize>(
    t: TileSums,
    w: *mut f32,
    buf: *mut f32,
    ld: usize,
    [lr, wd, momentum]: SgdHyper,
) {
    use std::arch::x86_64::*;
    let mask = tile_masks_avx512(t.cols);
    let acc = broadcast_acc_avx512::<R, false>(&t, &mask);
    let (lr_v, wd_v, momentum_v) = (
        _mm512_set1_ps(lr),
        _mm512_set1_ps(wd),
        _mm512_set1_ps(momentum),
    );
    for (r, acc) in acc.iter().enumerate() {
        for (q, &g) in acc.iter().enumerate() {
            let (pw, pb) = (w.add(r * ld + 16 * q), buf.add(r * ld + 16 * q));
            let p = _mm512_maskz_loadu_ps(mask[q], pw);
            let g = _mm512_add_ps(g, _mm512_mul_ps(wd_v, p));
            let b = match momentum == 0.0 {
                true => g,
                false => _mm512_add_ps(
                    _mm512_mul_ps(momentum_v, _mm512_maskz_loadu_ps(mask[q], pb)),
                    g,
                ),
            };
            _mm512_mask_storeu_ps(pb, mask[q], b);
            _mm512_mask_storeu_ps(pw, mask[q], _mm512_sub_ps(p, _mm512_mul_ps(lr_v, b)));
        }
    }
}

/// The update of [`sgd_update_plain`] on R rows × 16 columns of AVX2 sums; plain loads and
/// stores on full tiles (masked stores are microcoded on AMD cores).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn sgd_tile_avx2<const R: usize>(
    t: TileSums,
    w: *mut f32,
    buf: *mut f32,
    ld: usize,
    [lr, wd, momentum]: SgdHyper,
) {
    use std::arch::x86_64::*;
    let mask = tile_masks_avx2(t.cols);
    let acc = broadcast_acc_avx2::<R>(&t, &mask);
    let (lr_v, wd_v, momentum_v) = (
        _mm256_set1_ps(lr),
        _mm256_set1_ps(wd),
        _mm256_set1_ps(momentum),
    );
    let full = t.cols == 16;
    let load = |ptr: *const f32, q: usize| match full {
        true => _mm256_loadu_ps(ptr),
        false => _mm256_maskload_ps(ptr, mask[q]),
    };
    let store = |ptr: *mut f32, q: usize, v: __m256| match full {
        true => _mm256_storeu_ps(ptr, v),
        false => _mm256_maskstore_ps(ptr, mask[q], v),
    };
    for (r, acc) in acc.iter().enumerate() {
        for (q, &g) in acc.iter().enumerate() {
            let (pw, pb) = (w.add(r * ld + 8 * q), buf.add(r * ld + 8 * q));
            let p = load(pw, q);
            let g = _mm256_add_ps(g, _mm256_mul_ps(wd_v, p));
            let b = match momentum == 0.0 {
                true => g,
                false => _mm256_add_ps(_mm256_mul_ps(momentum_v, load(pb, q)), g),
            };
            store(pb, q, b);
            store(pw, q, _mm256_sub_ps(p, _mm256_mul_ps(lr_v, b)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul::broadcast_gemm;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut rng = crate::rng::SplitMix64::from_state(seed);
        (0..len).map(|_| rng.range(-1.0, 1.0)).collect()
    }

    #[test]
    fn every_level_updates_to_the_same_bits_as_the_formula() {
        // 1003: vector tails at every width.
        let (p0, g, b0) = (values(1003, 1), values(1003, 2), values(1003, 3));
        for momentum in [0.0, 0.9] {
            let (lr, wd) = (0.01, 5e-4);
            let mut want_p = p0.clone();
            let mut want_b = b0.clone();
            for i in 0..p0.len() {
                let gi = g[i] + wd * want_p[i];
                want_b[i] = if momentum == 0.0 {
                    gi
                } else {
                    momentum * want_b[i] + gi
                };
                want_p[i] -= lr * want_b[i];
            }
            for simd in Simd::ALL.into_iter().filter(|s| s.available()) {
                let (mut p, mut b) = (p0.clone(), b0.clone());
                sgd_update(simd, &mut p, &g, &mut b, [lr, wd, momentum]);
                assert_eq!(p, want_p, "{simd:?} momentum {momentum}");
                assert_eq!(b, want_b, "{simd:?} momentum {momentum}");
            }
        }
    }

    /// The fused step against the gradient made by `broadcast_gemm` and then applied, bit for
    /// bit, on shapes with partial tiles in both directions and batches from 0 to `MAX_BATCH`.
    #[test]
    fn fused_product_gives_the_bits_of_the_product_then_the_update() {
        let shapes = [
            (1024, 32, 256),
            (256, 32, 1024),
            (13, 7, 70),
            (7, 1, 17),
            (6, 80, 64),
            (5, 512, 9),
            (4, 0, 20),
        ];
        for simd in Simd::ALL.into_iter().filter(|s| s.available()) {
            for &(rows, k, cols) in &shapes {
                for momentum in [0.0, 0.9] {
                    let hyper = [0.02, 5e-4, momentum];
                    let x = values(k * rows, 4);
                    let dy = values(k * cols, 5);
                    let (w0, b0) = (values(rows * cols, 6), values(rows * cols, 7));
                    let mut g = vec![0f32; rows * cols];
                    if k > 0 {
                        broadcast_gemm(simd, &x, (1, rows), &dy, &mut g, rows, k, cols, false);
                    }
                    let (mut want_w, mut want_b) = (w0.clone(), b0.clone());
                    sgd_update(simd, &mut want_w, &g, &mut want_b, hyper);
                    let (mut w, mut b) = (w0.clone(), b0.clone());
                    let product = GradientProduct {
                        a: &x,
                        a_strides: (1, rows),
                        b: &dy,
                        rows,
                        k,
                        cols,
                    };
                    sgd_product(simd, product, &mut w, &mut b, hyper);
                    let what = format!("{simd:?} {rows}×{k}×{cols} momentum {momentum}");
                    assert_eq!(w, want_w, "{what}");
                    assert_eq!(b, want_b, "{what}");
                }
            }
        }
    }

    #[test]
    fn a_batch_over_the_register_depth_is_refused() {
        let (rows, k, cols) = (2, MAX_BATCH + 1, 3);
        let (x, dy) = (vec![0f32; k * rows], vec![0f32; k * cols]);
        let (mut w, mut b) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
        let product = GradientProduct {
            a: &x,
            a_strides: (1, rows),
            b: &dy,
            rows,
            k,
            cols,
        };
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            sgd_product(Simd::Portable, product, &mut w, &mut b, [0.1, 0.0, 0.0])
        }));
        assert!(caught.is_err());
    }
}
