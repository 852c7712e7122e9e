//! A frozen f32 weight packed once into 64-column panels, for `y = x · wᵀ` with the broadcast
//! tiles of [`super::matmul`].
//!
//! The broadcast tile (R rows × 64 columns, R broadcasts of `x` and four loads of `wᵀ` per step
//! of the inner dimension) runs our products closest to the FMA units' rate, but it reads `wᵀ`
//! by rows: a checkpoint's weight `w` (`n × k`, output × input) would need packing on every call,
//! which is what the `gemm` crate does and why the dot tiles took these shapes instead. A frozen
//! encoder's weight never changes, so it is packed here once, at load: panel `q` holds columns
//! `64q..64q + 64` of `wᵀ` for every input, `k` rows of 64 contiguous floats (zeros past `n`),
//! and a pass of 512 inputs over one panel (128 KiB) stays in L2 while the row tiles reuse it.

use rayon::prelude::*;

use super::matmul::{broadcast_block, run_tasks, simd_level, Operands, Out, Simd};

/// Columns per panel: the AVX-512 broadcast tile's width (the AVX2 and portable tiles take 16
/// of them at a time).
const PANEL: usize = 64;
/// At most this many rows of `x` per parallel task. Every row block reads the whole weight, so
/// the blocks are few, as even as the tiles allow, and never a remainder of a few rows: with 48
/// rows per task, one image of ViT-B/32 (50 rows) read each weight twice, once for 2 rows, and
/// one thread waited on the other. One ViT-B/16 image (197 rows) is one block: measured on an
/// Intel Xeon (Emerald Rapids), 200 rows beat 96 by 6-15 % there and by 2-4 % at batch 32 (200
/// rows of a 512-deep pass are 400 KiB of `x`, in L2 beside the 128 KiB panel).
const TASK_ROWS: usize = 200;
/// Whether a frozen weight with `n` outputs is worth packing into panels on this CPU: at
/// AVX-512 and AVX2 + FMA (not the portable level), and only when its outputs fill the
/// 64-column panels to within an eighth (a padded panel costs its full width).
///
/// AVX-512: on an AMD EPYC Zen 4 and an Intel Xeon (Emerald Rapids) the panels beat the dot
/// tiles and the `gemm` crate on every encoder shape (`cargo bench --bench products`). AVX2 +
/// FMA, measured on that Intel Xeon with the level forced (`CLIP_ADAPTER_SIMD=avx2`, a build
/// without the `gemm` crate's AVX-512 kernels): the bare products on panels win 25–30 % on one
/// 77-token text's and 3–7 % on one image's, and lose 3–6 % from 1,600 rows on; in whole
/// encoders, whose bias, activation and residual the panels apply as they write, one 77-token
/// text gains ≈ 10 % (ViT-B/32, best of three alternated runs, twice: 17.3 → 19.2/s, 18.4 →
/// 20.2) and the other cases stay within the host's spread, as does a CLIP-Adapter epoch. On
/// AMD Zen 4 at AVX2 an earlier panel layout (48-row blocks) lost 4–8 % above 80 rows: not
/// re-measured there.
/// The fill: a classifier's `x · Wᵀ` on the Intel Xeon ran on panels at 23–33 GFLOP/s
/// against the dot tiles' 130 with 10 classes, 206–211 against 216–224 with 397 (batch 32),
/// and won with 1000 (252–264 against 224–246).
pub fn worth_packing(n: usize) -> bool {
    matches!(simd_level(), Simd::Avx512 | Simd::Avx2) && n.div_ceil(PANEL) * PANEL * 8 <= n * 9
}

/// Whether a trained head's frozen classifier (`n` classes, the logits `x · Wᵀ` of a batch of at
/// most `FEW_ROWS` at every step) is worth packing into panels: where [`worth_packing`] says,
/// and at AVX-512 also from three panels of classes on, at any fill. Between two steps the rest
/// of the step evicts the classifier from L2, and the contiguous panels stream back faster than
/// the dot tiles' rows. One-thread CLIP-Adapter epochs on an Intel Xeon (Emerald Rapids), best
/// of three alternated runs: 397 classes (seven panels, 89 % full) 0.283 → 0.253 s, 196 (four,
/// 77 %) 0.112 → 0.109; at 100, 47 and 37 classes (two panels or one) the panels lost 2–4 %.
/// At AVX2 + FMA on that CPU the panels were within 1.5 % of the dot tiles at 100, 196 and 397
/// classes, so the fill rule stays there.
pub fn worth_packing_classifier(n: usize) -> bool {
    worth_packing(n) || (simd_level() == Simd::Avx512 && n > 2 * PANEL)
}

/// Panels per parallel task (128 output columns): enough tasks for the threads to balance on a
/// single row block (768 outputs are 6 tasks).
const TASK_PANELS: usize = 2;
/// The broadcast tile's rows: row blocks are multiples of it.
const TILE_ROWS: usize = 6;

/// Row blocks for `m` rows: one up to [`TASK_ROWS`], else the fewest of at most that many.
fn row_blocks(m: usize) -> usize {
    m.div_ceil(TASK_ROWS).max(1)
}

/// Rows of block `b` of `blocks`: even shares, their starts on whole tiles.
fn row_range(b: usize, blocks: usize, m: usize) -> (usize, usize) {
    let start = |b: usize| {
        if b >= blocks {
            m
        } else {
            b * m / blocks / TILE_ROWS * TILE_ROWS
        }
    };
    (start(b), start(b + 1))
}

/// `w` (`n × k`) as `wᵀ` in 64-column panels.
#[derive(Debug, Clone)]
pub struct PanelWeight {
    n: usize,
    k: usize,
    panels: Vec<f32>,
}

impl PanelWeight {
    /// Packs `w`, `n × k` row-major.
    ///
    /// # Panics
    /// If `w` holds fewer than `n · k` values.
    pub fn pack(w: &[f32], n: usize, k: usize) -> Self {
        assert!(w.len() >= n * k, "panel pack: weight too small");
        let count = n.div_ceil(PANEL);
        let mut panels = vec![0f32; count * k * PANEL];
        panels
            .par_chunks_mut((k * PANEL).max(1))
            .enumerate()
            .for_each(|(q, panel)| {
                for (c, j) in (q * PANEL..((q + 1) * PANEL).min(n)).enumerate() {
                    for (p, &v) in w[j * k..(j + 1) * k].iter().enumerate() {
                        panel[p * PANEL + c] = v;
                    }
                }
            });
        PanelWeight { n, k, panels }
    }

    /// Output columns.
    pub fn n(&self) -> usize {
        self.n
    }

    /// Inputs per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `w` back, `n × k` row-major.
    pub fn unpack(&self) -> Vec<f32> {
        let (n, k) = (self.n, self.k);
        let mut w = vec![0f32; n * k];
        for (j, row) in w.chunks_mut(k.max(1)).enumerate().take(n) {
            let panel = &self.panels[(j / PANEL) * k * PANEL..];
            for (p, v) in row.iter_mut().enumerate() {
                *v = panel[p * PANEL + j % PANEL];
            }
        }
        w
    }

    /// `y (m × n) = x · wᵀ`, `x` being `m × k` row-major; `y` is overwritten.
    ///
    /// # Panics
    /// If `x` or `y` is too small.
    pub fn abt_into(&self, x: &[f32], m: usize, y: &mut [f32]) {
        self.abt_into_then(x, m, y, &|_, _, _| {})
    }

    /// [`PanelWeight::abt_into`], then `after(segment, row, column)` on each row's segment of
    /// each panel's columns (`column` its first), by the task that computed it, while it is
    /// still in that core's cache: a layer's bias, activation and residual, which as passes of
    /// their own read the whole output back from the other core's cache or from memory.
    ///
    /// # Panics
    /// If `x` or `y` is too small.
    pub fn abt_into_then(
        &self,
        x: &[f32],
        m: usize,
        y: &mut [f32],
        after: &(dyn Fn(&mut [f32], usize, usize) + Sync),
    ) {
        assert!(y.len() >= m * self.n, "panel matmul: output too small");
        self.abt_to(x, m, Out(y.as_mut_ptr()), after)
    }

    /// [`PanelWeight::abt_into_then`] into a fresh `m × n` vector, which is written once, by the
    /// kernel, rather than zeroed first.
    ///
    /// # Panics
    /// If `x` is too small.
    pub fn abt_then(
        &self,
        x: &[f32],
        m: usize,
        after: &(dyn Fn(&mut [f32], usize, usize) + Sync),
    ) -> Vec<f32> {
        let len = m * self.n;
        let mut y = Vec::with_capacity(len);
        self.abt_to(x, m, Out(y.as_mut_ptr()), after);
        // SAFETY: `abt_to` wrote all m × n values (every row block × every panel, the first
        // pass over the inner dimension storing, or the zeros of an empty one).
        unsafe { y.set_len(len) };
        y
    }

    /// The product into `y`, which must hold `m × n` values (initialised or not); each value
    /// is written before `after` sees it.
    fn abt_to(
        &self,
        x: &[f32],
        m: usize,
        y: Out,
        after: &(dyn Fn(&mut [f32], usize, usize) + Sync),
    ) {
        let (n, k) = (self.n, self.k);
        assert!(x.len() >= m * k, "panel matmul: input too small");
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for r in 0..m {
                // SAFETY: y holds m × n values (the callers' contract); row r is written whole
                // before the slice over it is made.
                let row = unsafe {
                    std::ptr::write_bytes(y.add(r * n).0, 0, n);
                    std::slice::from_raw_parts_mut(y.add(r * n).0, n)
                };
                after(row, r, 0);
            }
            return;
        }
        let simd = simd_level();
        let out = y;
        let panel_count = n.div_ceil(PANEL);
        let row_blocks = row_blocks(m);
        let panel_blocks = panel_count.div_ceil(TASK_PANELS);
        let task = |t: usize| {
            let (ib, pb) = (t / panel_blocks, t % panel_blocks);
            let rows = row_range(ib, row_blocks, m);
            for q in pb * TASK_PANELS..((pb + 1) * TASK_PANELS).min(panel_count) {
                let cols = PANEL.min(n - q * PANEL);
                // SAFETY: rows and columns are inside x, the panel and y (checked above); this
                // task alone writes its rows × this panel's columns of y; `simd` is available.
                unsafe {
                    broadcast_block(
                        simd,
                        Operands {
                            a: x.as_ptr(),
                            a_rs: k,
                            a_cs: 1,
                            b: self.panels.as_ptr().add(q * k * PANEL),
                            ldb: PANEL,
                            c: out.add(q * PANEL),
                            ldc: n,
                            k,
                        },
                        rows,
                        (0, cols),
                        false,
                    );
                    for r in rows.0..rows.1 {
                        let segment =
                            std::slice::from_raw_parts_mut(out.add(r * n + q * PANEL).0, cols);
                        after(segment, r, q * PANEL);
                    }
                }
            }
        };
        run_tasks(row_blocks * panel_blocks, m * n * k, task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul::gemm_f64_abt;

    fn values(len: usize, seed: u64) -> Vec<f32> {
        crate::methods::linalg::seeded_rng(seed).uniform_vec(len, 0.5)
    }

    #[test]
    fn row_blocks_cover_every_row_evenly_without_a_small_remainder() {
        for m in 1..3000 {
            let blocks = row_blocks(m);
            let mut next = 0;
            for b in 0..blocks {
                let (i0, i1) = row_range(b, blocks, m);
                assert_eq!(i0, next, "m = {m}, block {b}");
                assert!(
                    i1 - i0 <= TASK_ROWS + TILE_ROWS,
                    "m = {m}, block {b}: {i0}..{i1}"
                );
                // No block of a few rows: each holds close to its share.
                assert!(
                    i1 - i0 + TILE_ROWS >= m / blocks,
                    "m = {m}, block {b}: {i0}..{i1}"
                );
                if b + 1 < blocks {
                    assert_eq!(i1 % TILE_ROWS, 0, "m = {m}, block {b}");
                }
                next = i1;
            }
            assert_eq!(next, m, "m = {m}");
        }
        assert_eq!(row_blocks(197), 1);
        assert_eq!((row_blocks(1600), row_range(1, 8, 1600)), (8, (198, 396)));
    }

    #[test]
    fn the_epilogue_sees_each_output_once_with_its_column() {
        // Adds 1000 · row + column to every output: each segment once, at its own place, past a
        // panel, a task and a row block.
        for &(m, k, n) in &[(7, 13, 65), (203, 40, 300), (3, 0, 70)] {
            let (x, w) = (values(m * k, 3), values(n * k, 4));
            let packed = PanelWeight::pack(&w, n, k);
            let mut plain = vec![f32::NAN; m * n];
            packed.abt_into(&x, m, &mut plain);
            let epilogue = |segment: &mut [f32], row: usize, column: usize| {
                for (c, v) in segment.iter_mut().enumerate() {
                    *v += (1000 * row + column + c) as f32;
                }
            };
            let mut fused = vec![f32::NAN; m * n];
            packed.abt_into_then(&x, m, &mut fused, &epilogue);
            // Into a fresh, unzeroed vector: the same values.
            assert_eq!(packed.abt_then(&x, m, &epilogue), fused, "{m}×{k}×{n}");
            for (i, (f, p)) in fused.iter().zip(&plain).enumerate() {
                let (row, column) = (i / n, i % n);
                assert_eq!(*f, p + (1000 * row + column) as f32, "{m}×{k}×{n} at {i}");
            }
        }
    }

    #[test]
    fn panels_match_f64_products_at_every_edge() {
        // Rows past a 6-row tile and a 200-row task (two and three row blocks), columns past a
        // panel and a task, inputs past a 512-deep pass; plus the degenerate shapes.
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 13, 65),
            (49, 515, 300),
            (197, 64, 257),
            (203, 40, 200),
            (431, 20, 70),
            (3, 1030, 64),
        ] {
            let (x, w) = (values(m * k, 1), values(n * k, 2));
            let packed = PanelWeight::pack(&w, n, k);
            assert_eq!(packed.unpack(), w);
            let mut y = vec![f32::NAN; m * n];
            packed.abt_into(&x, m, &mut y);
            let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            let w64: Vec<f64> = w.iter().map(|&v| v as f64).collect();
            let mut want = vec![0f64; m * n];
            gemm_f64_abt(&x64, &w64, &mut want, m, k, n);
            for (i, (&got, &want)) in y.iter().zip(&want).enumerate() {
                // f32 summation's worst case over k terms of |x·w| ≤ 1/4.
                let bound = (k + 2) as f64 * 2f64.powi(-24) * k as f64 * 0.25;
                assert!(
                    (got as f64 - want).abs() <= bound,
                    "{m}×{k}×{n} at {i}: {got} vs {want}"
                );
            }
        }
    }
}
