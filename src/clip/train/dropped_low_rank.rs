//! CLIP-LoRA's first low-rank product with its dropout, `(drop(x)) Aᵀ`, as one op: the dropout
//! mask is kept as one byte per input rather than as a full-size f32 mask tensor and a masked
//! copy of `x` (two allocations of the activations' size per adapted projection and step,
//! forward and backward), and the backward forms `dx = (g A) ⊙ mask` and `dA = gᵀ (x ⊙ mask)`
//! in one pass each. Checked against the composite (mask tensor, product) and finite differences in
//! the tests below.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::matmul::dot;
use crate::kernels::ops::contiguous;
use crate::rng::SplitMix64;

/// `x` (`N × in`) with inverted dropout, times `Aᵀ` (`A`: `r × in`).
#[derive(Clone)]
pub(super) struct DroppedLowRank {
    /// 1 where `x[n, c]` (index `n·in + c`) is kept (and scaled by `scale`), 0 where dropped:
    /// bytes, so that a row's factors unpack in one vectorised pass.
    keep: Arc<Vec<u8>>,
    scale: f32,
}

impl DroppedLowRank {
    /// A fresh mask for `len` inputs, each dropped with probability `p` (one uniform draw per
    /// input, in order).
    pub(super) fn draw(len: usize, p: f32, rng: &mut SplitMix64) -> Self {
        let keep = (0..len).map(|_| u8::from(rng.uniform() >= p)).collect();
        DroppedLowRank {
            keep: Arc::new(keep),
            scale: 1.0 / (1.0 - p),
        }
    }

    #[cfg(test)]
    fn factor(&self, i: usize) -> f32 {
        f32::from(self.keep[i]) * self.scale
    }

    /// Row `row`'s factors (`scale` where kept, 0 where dropped) into `m`, one per input,
    /// unpacked once per row so that the products below run on plain slices.
    fn row_factors(&self, row: usize, m: &mut [f32]) {
        let keep = &self.keep[row * m.len()..][..m.len()];
        for (f, &k) in m.iter_mut().zip(keep) {
            *f = f32::from(k) * self.scale;
        }
    }

    /// `xm = x[row] ⊙ mask[row]`.
    fn masked_row(&self, x: &[f32], row: usize, xm: &mut [f32]) {
        let width = xm.len();
        self.row_factors(row, xm);
        (xm.iter_mut())
            .zip(&x[row * width..][..width])
            .for_each(|(m, v)| *m *= v);
    }

    pub(super) fn forward(&self, x: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op2(&a.contiguous()?, self.clone())
    }
}

/// Rows per task of the backward's `dA` sums: fixed, so that the partial sums, and their
/// order, do not depend on the thread count (a fit is reproducible across machines).
const ROWS_PER_SUM: usize = 64;

fn dims(xl: &Layout, al: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (n, width) = xl.shape().dims2()?;
    let (r, width_a) = al.shape().dims2()?;
    if width != width_a {
        candle_core::bail!("dropped-low-rank: x has {width} columns, A {width_a}");
    }
    Ok((n, width, r))
}

impl CustomOp2 for DroppedLowRank {
    fn name(&self) -> &'static str {
        "dropped-low-rank"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        as_: &CpuStorage,
        al: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, width, r) = dims(xl, al)?;
        let (x, a) = (
            contiguous(xs, xl, self.name())?,
            contiguous(as_, al, self.name())?,
        );
        if self.keep.len() < n * width {
            candle_core::bail!("dropped-low-rank: the mask covers fewer inputs than x has");
        }
        let mut out = vec![0f32; n * r];
        out.par_chunks_mut(r.max(1))
            .enumerate()
            .with_min_len(16)
            .for_each_init(
                || vec![0f32; width],
                |xm, (row, o)| {
                    self.masked_row(x, row, xm);
                    for (j, oj) in o.iter_mut().enumerate() {
                        *oj = dot(xm, &a[j * width..][..width]);
                    }
                },
            );
        Ok((CpuStorage::F32(out), Shape::from((n, r))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, width) = x.dims2()?;
        let r = a.dim(0)?;
        let av = a.flatten_all()?.to_vec1::<f32>()?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
        // dx[n, c] = mask · Σ_j g[n, j] A[j, c]
        let mut dx = vec![0f32; n * width];
        dx.par_chunks_mut(width.max(1))
            .enumerate()
            .with_min_len(8)
            .for_each_init(
                || vec![0f32; width],
                |m, (row, d)| {
                    for j in 0..r {
                        let gj = gv[row * r + j];
                        let aj = &av[j * width..][..width];
                        d.iter_mut().zip(aj).for_each(|(d, a)| *d += gj * a);
                    }
                    self.row_factors(row, m);
                    d.iter_mut().zip(m.iter()).for_each(|(d, m)| *d *= m);
                },
            );
        // dA[j, c] = Σ_n g[n, j] · mask · x[n, c]: partial sums over fixed row blocks, added
        // in block order.
        let (storage, xl) = x.storage_and_layout();
        let xv = match &*storage {
            candle_core::Storage::Cpu(s) => contiguous(s, xl, self.name())?,
            _ => candle_core::bail!("dropped-low-rank: x must be on the CPU"),
        };
        let partials: Vec<Vec<f32>> = (0..n.div_ceil(ROWS_PER_SUM))
            .into_par_iter()
            .map(|block| {
                let mut da = vec![0f32; r * width];
                let mut xm = vec![0f32; width];
                for row in block * ROWS_PER_SUM..((block + 1) * ROWS_PER_SUM).min(n) {
                    self.masked_row(xv, row, &mut xm);
                    for (j, daj) in da.chunks_mut(width.max(1)).enumerate() {
                        let gj = gv[row * r + j];
                        daj.iter_mut().zip(&xm).for_each(|(d, v)| *d += gj * v);
                    }
                }
                da
            })
            .collect();
        drop(storage);
        let mut da = vec![0f32; r * width];
        for p in partials {
            da.iter_mut().zip(&p).for_each(|(d, v)| *d += v);
        }
        let dx = Tensor::from_vec(dx, (n, width), x.device())?;
        let da = Tensor::from_vec(da, (r, width), a.device())?;
        Ok((Some(dx), Some(da)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn random(shape: (usize, usize), seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::from_state(seed);
        (0..shape.0 * shape.1)
            .map(|_| rng.range(-1.0, 1.0))
            .collect()
    }

    /// The op equals the composite (a mask tensor, the masked input, a product), forward and
    /// both gradients.
    #[test]
    fn matches_the_composite_forward_and_backward() {
        let (n, width, r) = (37, 19, 3);
        let dev = Device::Cpu;
        let op = DroppedLowRank::draw(n * width, 0.25, &mut SplitMix64::from_state(5));
        let mask: Vec<f32> = (0..n * width).map(|i| op.factor(i)).collect();
        assert!(mask.contains(&0.0) && mask.iter().any(|&m| m > 1.0));
        let x = Var::from_vec(random((n, width), 1), (n, width), &dev).unwrap();
        let a = Var::from_vec(random((r, width), 2), (r, width), &dev).unwrap();
        let w = Tensor::from_vec(random((n, r), 3), (n, r), &dev).unwrap();
        let fused = op.forward(x.as_tensor(), a.as_tensor()).unwrap();
        let mask = Tensor::from_vec(mask, (n, width), &dev).unwrap();
        let composite = (x.as_tensor() * &mask)
            .unwrap()
            .matmul(&a.as_tensor().t().unwrap())
            .unwrap();
        let diff = |p: &Tensor, q: &Tensor| {
            (p - q)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(diff(&fused, &composite) < 1e-5);
        let g1 = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g2 = (composite * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &a] {
            let (p, q) = (
                g1.get(v.as_tensor()).unwrap(),
                g2.get(v.as_tensor()).unwrap(),
            );
            assert!(diff(p, q) < 1e-5, "gradient differs by {}", diff(p, q));
        }
    }
}
