//! Dense f32 kernels on row-major slices: the few GEMMs, normalisations and solves the methods
//! need. Training heads on cached features is a handful of small matrix products per step, so
//! they are written here on plain slices (no autograd graph, no per-op allocation) and their
//! gradients are derived by hand and checked against finite differences in the tests.

use rayon::prelude::*;

pub use crate::kernels::matmul::{gemm, gemm_f64_abt};
use crate::kernels::panels::{worth_packing, worth_packing_classifier, PanelWeight};
use crate::kernels::vmath::{dot, exp_scaled_sum, max_scaled};
use crate::rng::SplitMix64;

/// Elements from which a row-wise pass splits its rows over the pool: a batch of 64 features of
/// width 1024. Below it a pass takes a few microseconds, about what a hand-off to another
/// worker costs.
const PARALLEL_ELEMENTS: usize = 1 << 16;

/// `f(i, row_i)` for every `cols`-wide row of `x`, in row order, returning the results; the
/// rows are split over rayon's pool when `x` is large. Each row is computed alone, so the
/// results do not depend on the split.
pub fn map_rows<R: Send>(
    x: &mut [f32],
    cols: usize,
    f: impl Fn(usize, &mut [f32]) -> R + Sync + Send,
) -> Vec<R> {
    if cols == 0 {
        return Vec::new();
    }
    if x.len() >= PARALLEL_ELEMENTS {
        x.par_chunks_mut(cols)
            .enumerate()
            .map(|(i, r)| f(i, r))
            .collect()
    } else {
        x.chunks_mut(cols)
            .enumerate()
            .map(|(i, r)| f(i, r))
            .collect()
    }
}

/// A row-major `rows × cols` matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps `data`; `None` when its length is not `rows · cols`.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Option<Self> {
        (data.len() == rows * cols).then_some(Matrix { rows, cols, data })
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.cols..(i + 1) * self.cols]
    }

    pub fn row_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.cols..(i + 1) * self.cols]
    }

    /// The rows at `idx`, in that order.
    pub fn gather_rows(&self, idx: &[usize]) -> Matrix {
        let mut out = Matrix::zeros(idx.len(), self.cols);
        map_rows(&mut out.data, self.cols, |o, row| {
            row.copy_from_slice(self.row(idx[o]))
        });
        out
    }

    /// A copy with unit-norm rows.
    pub fn normalized(&self) -> Matrix {
        let mut m = self.clone();
        normalize_rows(&mut m.data, m.cols);
        m
    }

    pub fn transposed(&self) -> Matrix {
        let mut t = Matrix::zeros(self.cols, self.rows);
        for i in 0..self.rows {
            for j in 0..self.cols {
                t.data[j * self.rows + i] = self.data[i * self.cols + j];
            }
        }
        t
    }

    /// `self · other` (or with either transposed).
    pub fn matmul(&self, ta: bool, other: &Matrix, tb: bool) -> Matrix {
        let (m, k) = if ta {
            (self.cols, self.rows)
        } else {
            (self.rows, self.cols)
        };
        let (k2, n) = if tb {
            (other.cols, other.rows)
        } else {
            (other.rows, other.cols)
        };
        assert_eq!(k, k2, "matmul: inner dimensions differ");
        let mut out = Matrix::zeros(m, n);
        gemm(
            &self.data,
            ta,
            &other.data,
            tb,
            &mut out.data,
            m,
            k,
            n,
            false,
        );
        out
    }
}

/// A matrix that stays fixed while a head trains against it (the class embeddings of a frozen
/// text side), packed once for both products a step takes with it: `x · Mᵀ` (the logits) and
/// `y · M` (their gradient back to the features). Unpacked, `y · M` reads `M`'s rows 4 KiB
/// apart (1024 floats each) and `x · Mᵀ` takes the dot tiles; packed, both run on the
/// broadcast tiles over contiguous panels (on an Intel Xeon, Emerald Rapids: 32 × 1024 × 1000
/// at 263 GFLOP/s against 228, `cargo bench --bench products`). `y · M` is packed where
/// [`worth_packing`] says, as the encoders' frozen weights are, `x · Mᵀ` where
/// [`worth_packing_classifier`] says; otherwise the products go through [`gemm`].
#[derive(Debug, Clone)]
pub struct FrozenMatrix {
    pub matrix: Matrix,
    packed: Option<Packed>,
}

/// `M` for `x · Mᵀ` (when its rows fill the panels) and `Mᵀ` for `y · M`, as panels.
#[derive(Debug, Clone)]
struct Packed {
    rows: Option<PanelWeight>,
    columns: PanelWeight,
}

impl FrozenMatrix {
    pub fn new(matrix: Matrix) -> Self {
        let packed = worth_packing(matrix.cols).then(|| Packed {
            rows: worth_packing_classifier(matrix.rows)
                .then(|| PanelWeight::pack(&matrix.data, matrix.rows, matrix.cols)),
            columns: PanelWeight::pack(&matrix.transposed().data, matrix.cols, matrix.rows),
        });
        FrozenMatrix { matrix, packed }
    }

    /// `matrix` with its products through [`gemm`] at every level.
    pub fn unpacked(matrix: Matrix) -> Self {
        FrozenMatrix {
            matrix,
            packed: None,
        }
    }

    /// `x · Mᵀ` (`rows × M.rows`), `x` having `rows` rows of `M.cols`. Through the panels the
    /// output is written once, by the kernel, rather than zeroed first.
    pub fn times_transposed(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let m = &self.matrix;
        match self.packed.as_ref().and_then(|p| p.rows.as_ref()) {
            Some(panels) => panels.abt_then(x, rows, &|_, _, _| {}),
            None => {
                let mut out = vec![0f32; rows * m.rows];
                gemm(
                    x, false, &m.data, true, &mut out, rows, m.cols, m.rows, false,
                );
                out
            }
        }
    }

    /// `y · M` (`rows × M.cols`), `y` having `rows` rows of `M.rows`; as
    /// [`FrozenMatrix::times_transposed`].
    pub fn times(&self, y: &[f32], rows: usize) -> Vec<f32> {
        let m = &self.matrix;
        match &self.packed {
            Some(p) => p.columns.abt_then(y, rows, &|_, _, _| {}),
            None => {
                let mut out = vec![0f32; rows * m.cols];
                gemm(
                    y, false, &m.data, false, &mut out, rows, m.rows, m.cols, false,
                );
                out
            }
        }
    }
}

/// Scales each `cols`-wide row of `x` to unit L2 norm; returns the norms. A zero row stays
/// zero (its norm is reported as 0).
pub fn normalize_rows(x: &mut [f32], cols: usize) -> Vec<f32> {
    map_rows(x, cols, |_, r| normalize_row(r))
}

/// Scales `r` to unit L2 norm and returns the norm; a zero row stays zero.
pub fn normalize_row(r: &mut [f32]) -> f32 {
    let n = dot(r, r).sqrt();
    if n > 0.0 {
        r.iter_mut().for_each(|v| *v /= n);
    }
    n
}

/// Back-propagates through `u = x / ‖x‖` row-wise: given `u`, the norms and `du`, returns
/// `dx = (du − u (u·du)) / ‖x‖`.
pub fn normalize_rows_backward(u: &[f32], norms: &[f32], du: &[f32], cols: usize) -> Vec<f32> {
    let mut dx = vec![0f32; du.len()];
    map_rows(&mut dx, cols, |i, dx| {
        let r = i * cols..(i + 1) * cols;
        normalize_row_backward(&u[r.clone()], norms[i], &du[r], dx)
    });
    dx
}

/// One row of [`normalize_rows_backward`] into `dx`: zeros where the norm `n` is 0.
pub fn normalize_row_backward(u: &[f32], n: f32, du: &[f32], dx: &mut [f32]) {
    if n == 0.0 {
        dx.fill(0.0);
        return;
    }
    let along = dot(u, du);
    for ((dx, &du), &u) in dx.iter_mut().zip(du).zip(u) {
        *dx = (du - u * along) / n;
    }
}

/// The mean cross-entropy of the cosine logits `scale · f̂ ŵᵀ` of raw features `x` (B×D)
/// against raw class weights `w` (K×D), and its gradient with respect to `w` (through the row
/// normalisation): the training step of every head whose classifier is a set of class vectors
/// scored by cosine (CLAP's prototypes, TaskRes's residual classifier).
pub fn cosine_cross_entropy(x: &Matrix, w: &Matrix, labels: &[usize], scale: f32) -> (f32, Matrix) {
    let (k, d) = (w.rows, w.cols);
    let f = x.normalized();
    let mut unit = w.clone();
    let norms = normalize_rows(&mut unit.data, d);
    let mut g = f.matmul(false, &unit, true);
    let loss = scaled_cross_entropy_backward(&mut g.data, labels, k, scale);
    // dŵ = Gᵀ f̂, then back through the row normalisation.
    let mut d_unit = vec![0f32; k * d];
    gemm(
        &g.data,
        true,
        &f.data,
        false,
        &mut d_unit,
        k,
        f.rows,
        d,
        false,
    );
    let data = normalize_rows_backward(&unit.data, &norms, &d_unit, d);
    (
        loss,
        Matrix {
            rows: k,
            cols: d,
            data,
        },
    )
}

/// Mean cross-entropy of `logits` (B×K) against `labels`; turns `logits` into the gradient of
/// that mean, `(softmax − onehot) / B`.
pub fn cross_entropy_backward(logits: &mut [f32], labels: &[usize], k: usize) -> f32 {
    scaled_cross_entropy_backward(logits, labels, k, 1.0)
}

/// Mean cross-entropy of the logits `scale · z` (`z` B×K) against `labels`; turns `z` into the
/// gradient of that mean with respect to `z`, `scale · (softmax − onehot) / B`. The scale of
/// cosine logits thus costs no passes of its own. Each row's exponentials run on the vector
/// `exp` and the rows split over the pool for large batches; the loss is the f64 sum of the rows'
/// `ln Σ exp − scale·z_y` (shifted by the row's largest logit), in row order.
pub fn scaled_cross_entropy_backward(z: &mut [f32], labels: &[usize], k: usize, scale: f32) -> f32 {
    let b = labels.len();
    let scale_b = scale / b as f32;
    let losses = map_rows(&mut z[..b * k], k, |i, row| {
        let y = labels[i];
        let shift = max_scaled(row, scale);
        let target = scale * row[y] - shift;
        let sum = exp_scaled_sum(row, scale, shift);
        let g = scale_b / sum;
        row.iter_mut().for_each(|v| *v *= g);
        row[y] -= scale_b;
        (sum as f64).ln() - target as f64
    });
    (losses.iter().sum::<f64>() / b as f64) as f32
}

/// Mean cross-entropy of `logits` (B×K), without the gradient.
pub fn cross_entropy(logits: &[f32], labels: &[usize], k: usize) -> f32 {
    let mut l = logits.to_vec();
    cross_entropy_backward(&mut l, labels, k)
}

/// Index of the largest value of each `k`-wide row (first on ties, as `torch.argmax`).
pub fn argmax_rows(x: &[f32], k: usize) -> Vec<usize> {
    x.chunks(k)
        .map(|r| {
            let mut best = 0;
            for (j, &v) in r.iter().enumerate() {
                if v > r[best] {
                    best = j;
                }
            }
            best
        })
        .collect()
}

/// Solves `A X = B` for symmetric positive-definite `A` (n×n, f64) by Cholesky; `B` is n×m
/// row-major and is overwritten with `X`. Returns `false` if `A` is not positive definite.
pub fn cholesky_solve(a: &mut [f64], n: usize, b: &mut [f64], m: usize) -> bool {
    // In-place lower factor L (A = L Lᵀ), row-major.
    for j in 0..n {
        let mut d = a[j * n + j];
        for p in 0..j {
            d -= a[j * n + p] * a[j * n + p];
        }
        if d <= 0.0 || !d.is_finite() {
            return false;
        }
        let d = d.sqrt();
        a[j * n + j] = d;
        for i in j + 1..n {
            let (ri, rj) = (i * n, j * n);
            let mut s = a[ri + j];
            for p in 0..j {
                s -= a[ri + p] * a[rj + p];
            }
            a[ri + j] = s / d;
        }
    }
    // Forward (L y = b) then backward (Lᵀ x = y) substitution, all right-hand sides at once.
    for i in 0..n {
        for p in 0..i {
            let l = a[i * n + p];
            if l != 0.0 {
                for c in 0..m {
                    b[i * m + c] -= l * b[p * m + c];
                }
            }
        }
        let d = a[i * n + i];
        b[i * m..(i + 1) * m].iter_mut().for_each(|v| *v /= d);
    }
    for i in (0..n).rev() {
        for p in i + 1..n {
            let l = a[p * n + i];
            if l != 0.0 {
                for c in 0..m {
                    b[i * m + c] -= l * b[p * m + c];
                }
            }
        }
        let d = a[i * n + i];
        b[i * m..(i + 1) * m].iter_mut().for_each(|v| *v /= d);
    }
    true
}

/// The methods' random stream (weight initialisation, shuffling): the crate's SplitMix64 with the
/// methods' salt; the methods need reproducibility, not cryptographic quality.
pub fn seeded_rng(seed: u64) -> SplitMix64 {
    SplitMix64::salted(seed, 0x853c_49e6_748f_ea9b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_matrix_multiplies_as_f64_products_packed_or_not() {
        // 250 columns: panels and a tail, full enough to pack; 600 rows: two passes of the inner
        // dimension in `times` (and panels for `times_transposed`); 10 rows: too few to fill one.
        for (k, d, b) in [(600, 250, 13), (10, 250, 13)] {
            frozen_products_match(k, d, b);
        }
    }

    fn frozen_products_match(k: usize, d: usize, b: usize) {
        let mut rng = seeded_rng(3);
        let m = Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0)).unwrap();
        let x = rng.uniform_vec(b * d, 1.0);
        let y = rng.uniform_vec(b * k, 1.0);
        let f64s = |v: &[f32]| v.iter().map(|&v| v as f64).collect::<Vec<f64>>();
        let mut want_xt = vec![0f64; b * k];
        gemm_f64_abt(&f64s(&x), &f64s(&m.data), &mut want_xt, b, d, k);
        let mut want_y = vec![0f64; b * d];
        gemm_f64_abt(&f64s(&y), &f64s(&m.transposed().data), &mut want_y, b, k, d);
        for frozen in [
            FrozenMatrix::new(m.clone()),
            FrozenMatrix::unpacked(m.clone()),
        ] {
            let xt = frozen.times_transposed(&x, b);
            let ym = frozen.times(&y, b);
            assert_eq!((xt.len(), ym.len()), (b * k, b * d));
            // Sums of d or k terms of magnitude ≤ 1: f32 rounding ≤ ~depth · 2⁻²⁴ each.
            for (got, want, depth) in [(&xt, &want_xt, d), (&ym, &want_y, k)] {
                for (g, w) in got.iter().zip(want) {
                    assert!((*g as f64 - w).abs() <= depth as f64 * 1e-7, "{g} vs {w}");
                }
            }
        }
    }

    #[test]
    fn gemm_transposes_agree_with_naive() {
        let a = Matrix::from_vec(2, 3, vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let b = Matrix::from_vec(3, 2, vec![1., -1., 0., 2., 3., 1.]).unwrap();
        let ab = a.matmul(false, &b, false);
        assert_eq!(ab.data, vec![10., 6., 22., 12.]);
        assert_eq!(a.transposed().matmul(true, &b, false).data, ab.data);
        assert_eq!(a.matmul(false, &b.transposed(), true).data, ab.data);
        assert_eq!(
            a.transposed().matmul(true, &b.transposed(), true).data,
            ab.data
        );
    }

    #[test]
    fn cholesky_solves() {
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        let mut b = vec![2.0, 1.0];
        assert!(cholesky_solve(&mut a, 2, &mut b, 1));
        // [4 2; 2 3] x = [2; 1] → x = [0.5, 0]
        assert!((b[0] - 0.5).abs() < 1e-12 && b[1].abs() < 1e-12);
    }

    #[test]
    fn cross_entropy_gradient_is_softmax_minus_onehot() {
        let mut l = vec![1.0f32, 2.0, 3.0];
        let loss = cross_entropy_backward(&mut l, &[2], 3);
        let z: f32 = [1f32, 2., 3.].iter().map(|v| v.exp()).sum();
        assert!((loss - (z.ln() - 3.0)).abs() < 1e-6);
        assert!((l[2] - (3f32.exp() / z - 1.0)).abs() < 1e-6);
    }

    #[test]
    fn scaled_cross_entropy_matches_the_f64_definition_serial_and_parallel() {
        // 3 rows (serial) and 300 rows (past the parallel threshold) of 250 classes, scale 50.
        for rows in [3usize, 300] {
            let (k, scale) = (250usize, 50f32);
            let mut rng = seeded_rng(rows as u64);
            let z = rng.uniform_vec(rows * k, 0.3);
            let labels: Vec<usize> = (0..rows).map(|i| (i * 37) % k).collect();
            let mut g = z.clone();
            let loss = scaled_cross_entropy_backward(&mut g, &labels, k, scale);
            let mut want_loss = 0f64;
            for (i, &y) in labels.iter().enumerate() {
                let row: Vec<f64> = z[i * k..(i + 1) * k]
                    .iter()
                    .map(|&v| scale as f64 * v as f64)
                    .collect();
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
                want_loss += sum.ln() + max - row[y];
                for (j, v) in row.iter().enumerate() {
                    let p = (v - max).exp() / sum - if j == y { 1.0 } else { 0.0 };
                    let want = scale as f64 * p / rows as f64;
                    let got = g[i * k + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-6 * scale as f64 / rows as f64,
                        "{got} vs {want}"
                    );
                }
            }
            want_loss /= rows as f64;
            assert!(
                (loss as f64 - want_loss).abs() < 1e-5 * want_loss.abs(),
                "{loss} vs {want_loss}"
            );
        }
    }
}
