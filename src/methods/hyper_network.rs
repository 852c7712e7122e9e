//! The ratio hyper-network of CLIP-Adapter's learnable-ratio variant: "alpha, beta = Q(f, W)"
//! (Gao et al. 2021). The paper gives no architecture and no code, so this is our design
//! (docs/methods.md):
//!
//! - visual ratio, one per image: `alpha_i = σ(q · ReLU([f̂_i ; w̄] U + c) + b)`, where `f̂_i` is
//!   the normalised image feature and `w̄` the mean of the (normalised) class embeddings, so `Q`
//!   sees the image and a summary of the classifier `W`;
//! - text ratio, one per class: `beta_k = σ(…)` of `[t_k ; w̄]`, the same network shape on the
//!   class embedding (a per-image text ratio would need one adapted classifier per image);
//! - the sigmoid keeps each ratio in (0, 1), the range in which the residual mix is an
//!   interpolation; `b` starts at `logit(ratio)` so training starts from the fixed-ratio model.
//!
//! Only `Q`'s weights are trained; its inputs are frozen CLIP features, so no gradient flows
//! into them.

use super::linalg::{gemm, Matrix};
use crate::rng::SplitMix64;

/// `Q`: `in → hidden → 1`, ReLU then sigmoid.
#[derive(Debug, Clone, PartialEq)]
pub struct RatioNet {
    pub input: usize,
    pub hidden: usize,
    /// `input × hidden`.
    pub u: Vec<f32>,
    pub c: Vec<f32>,
    /// `hidden`.
    pub q: Vec<f32>,
    /// One value.
    pub b: Vec<f32>,
}

/// What the backward pass needs from the forward pass.
#[derive(Debug, Clone)]
pub struct RatioCache {
    hidden: Vec<f32>,
    pub ratios: Vec<f32>,
}

impl RatioNet {
    /// PyTorch's `nn.Linear` initialisation (uniform ±1/√fan_in), output bias at `logit(ratio)`.
    pub fn new(input: usize, hidden: usize, ratio: f32, rng: &mut SplitMix64) -> Self {
        let r = ratio.clamp(1e-3, 1.0 - 1e-3);
        RatioNet {
            input,
            hidden,
            u: rng.uniform_vec(input * hidden, 1.0 / (input as f32).sqrt()),
            c: rng.uniform_vec(hidden, 1.0 / (input as f32).sqrt()),
            q: rng.uniform_vec(hidden, 1.0 / (hidden as f32).sqrt()),
            b: vec![(r / (1.0 - r)).ln()],
        }
    }

    pub fn zeros_like(&self) -> Self {
        RatioNet {
            input: self.input,
            hidden: self.hidden,
            u: vec![0.0; self.u.len()],
            c: vec![0.0; self.c.len()],
            q: vec![0.0; self.q.len()],
            b: vec![0.0],
        }
    }

    pub fn params_mut(&mut self) -> Vec<&mut [f32]> {
        vec![&mut self.u, &mut self.c, &mut self.q, &mut self.b]
    }

    pub fn params(&self) -> Vec<&[f32]> {
        vec![&self.u, &self.c, &self.q, &self.b]
    }

    /// One ratio per row of `x` (rows × input).
    pub fn forward(&self, x: &Matrix) -> RatioCache {
        let (n, h) = (x.rows, self.hidden);
        let mut hidden = vec![0f32; n * h];
        gemm(
            &x.data,
            false,
            &self.u,
            false,
            &mut hidden,
            n,
            self.input,
            h,
            false,
        );
        for row in hidden.chunks_mut(h) {
            for (v, c) in row.iter_mut().zip(&self.c) {
                *v = (*v + c).max(0.0);
            }
        }
        let ratios = hidden
            .chunks(h)
            .map(|row| {
                let z: f32 = row.iter().zip(&self.q).map(|(a, q)| a * q).sum::<f32>() + self.b[0];
                1.0 / (1.0 + (-z).exp())
            })
            .collect();
        RatioCache { hidden, ratios }
    }

    /// Accumulates into `grad` the gradient of the loss given `d_ratio` (one per row).
    pub fn backward(&self, x: &Matrix, cache: &RatioCache, d_ratio: &[f32], grad: &mut RatioNet) {
        let (n, h) = (x.rows, self.hidden);
        let mut d_hidden = vec![0f32; n * h];
        for i in 0..n {
            let r = cache.ratios[i];
            let dz = d_ratio[i] * r * (1.0 - r);
            grad.b[0] += dz;
            let hid = &cache.hidden[i * h..(i + 1) * h];
            for j in 0..h {
                grad.q[j] += dz * hid[j];
                // ReLU: the gradient passes only where the unit was active.
                if hid[j] > 0.0 {
                    d_hidden[i * h + j] = dz * self.q[j];
                    grad.c[j] += d_hidden[i * h + j];
                }
            }
        }
        gemm(
            &x.data,
            true,
            &d_hidden,
            false,
            &mut grad.u,
            self.input,
            n,
            h,
            true,
        );
    }
}

/// `[x_i ; s]` for every row of `x`: the hyper-network's input.
pub fn with_summary(x: &Matrix, summary: &[f32]) -> Matrix {
    let d = x.cols + summary.len();
    let mut out = Matrix::zeros(x.rows, d);
    for i in 0..x.rows {
        let row = out.row_mut(i);
        row[..x.cols].copy_from_slice(x.row(i));
        row[x.cols..].copy_from_slice(summary);
    }
    out
}

/// The mean of the rows of `m`: the classifier summary `w̄`.
pub fn row_mean(m: &Matrix) -> Vec<f32> {
    let mut s = vec![0f32; m.cols];
    for i in 0..m.rows {
        s.iter_mut().zip(m.row(i)).for_each(|(a, b)| *a += b);
    }
    s.iter_mut().for_each(|v| *v /= m.rows.max(1) as f32);
    s
}
