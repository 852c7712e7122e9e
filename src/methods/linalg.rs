//! Dense f32 kernels on row-major slices: the few GEMMs, normalisations and solves the methods
//! need. Training heads on cached features is a handful of small matrix products per step, so
//! they are written here on plain slices (no autograd graph, no per-op allocation) and their
//! gradients are derived by hand and checked against finite differences in the tests.

pub use crate::kernels::matmul::{gemm, gemm_f64_abt};
use crate::rng::SplitMix64;

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
        for (o, &i) in idx.iter().enumerate() {
            out.row_mut(o).copy_from_slice(self.row(i));
        }
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

/// Scales each `cols`-wide row of `x` to unit L2 norm; returns the norms. A zero row stays
/// zero (its norm is reported as 0).
pub fn normalize_rows(x: &mut [f32], cols: usize) -> Vec<f32> {
    x.chunks_mut(cols)
        .map(|r| {
            let n = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            if n > 0.0 {
                r.iter_mut().for_each(|v| *v /= n);
            }
            n
        })
        .collect()
}

/// Back-propagates through `u = x / ‖x‖` row-wise: given `u`, the norms and `du`, returns
/// `dx = (du − u (u·du)) / ‖x‖`.
pub fn normalize_rows_backward(u: &[f32], norms: &[f32], du: &[f32], cols: usize) -> Vec<f32> {
    let mut dx = vec![0f32; du.len()];
    for (i, &n) in norms.iter().enumerate() {
        let r = i * cols..(i + 1) * cols;
        if n == 0.0 {
            continue;
        }
        let (u, du, dx) = (&u[r.clone()], &du[r.clone()], &mut dx[r]);
        let dot: f32 = u.iter().zip(du).map(|(a, b)| a * b).sum();
        for j in 0..cols {
            dx[j] = (du[j] - u[j] * dot) / n;
        }
    }
    dx
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
    g.data.iter_mut().for_each(|v| *v *= scale);
    let loss = cross_entropy_backward(&mut g.data, labels, k);
    g.data.iter_mut().for_each(|v| *v *= scale);
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
/// that mean, `(softmax − onehot) / B`. Sums in f64 so the loss is stable across batch sizes.
pub fn cross_entropy_backward(logits: &mut [f32], labels: &[usize], k: usize) -> f32 {
    let b = labels.len();
    let mut loss = 0f64;
    for (row, &y) in logits.chunks_mut(k).zip(labels) {
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f64;
        for v in row.iter_mut() {
            *v = (*v - max).exp();
            sum += *v as f64;
        }
        loss += sum.ln() - ((row[y] as f64).ln());
        let inv = (1.0 / sum) as f32;
        for v in row.iter_mut() {
            *v *= inv / b as f32;
        }
        row[y] -= 1.0 / b as f32;
    }
    (loss / b as f64) as f32
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
}
