//! CLIP-LoRA's first low-rank product with its dropout, `(drop(x)) Aᵀ`, as one op: the dropout
//! mask is kept as one bit per input rather than as a full-size mask tensor and a masked copy
//! of `x` (two allocations of the activations' size per adapted projection and step, forward
//! and backward), and the backward forms `dx = (g A) ⊙ mask` and `dA = gᵀ (x ⊙ mask)` in one
//! pass each. Checked against the composite (mask tensor, product) and finite differences in
//! the tests below.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::kernels::ops::contiguous;
use crate::rng::SplitMix64;

/// `x` (`N × in`) with inverted dropout, times `Aᵀ` (`A`: `r × in`).
#[derive(Clone)]
pub(super) struct DroppedLowRank {
    /// Bit `n·in + c` set: `x[n, c]` is kept (and scaled by `scale`).
    keep: Arc<Vec<u64>>,
    scale: f32,
}

impl DroppedLowRank {
    /// A fresh mask for `len` inputs, each dropped with probability `p`.
    pub(super) fn draw(len: usize, p: f32, rng: &mut SplitMix64) -> Self {
        let keep = (0..len.div_ceil(64))
            .map(|_| {
                (0..64).fold(0u64, |bits, i| match rng.uniform() < p {
                    true => bits,
                    false => bits | (1 << i),
                })
            })
            .collect();
        DroppedLowRank {
            keep: Arc::new(keep),
            scale: 1.0 / (1.0 - p),
        }
    }

    fn factor(&self, i: usize) -> f32 {
        match (self.keep[i / 64] >> (i % 64)) & 1 {
            1 => self.scale,
            _ => 0.0,
        }
    }

    pub(super) fn forward(&self, x: &Tensor, a: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op2(&a.contiguous()?, self.clone())
    }
}

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
        if self.keep.len() * 64 < n * width {
            candle_core::bail!("dropped-low-rank: the mask covers fewer inputs than x has");
        }
        let mut out = vec![0f32; n * r];
        out.par_chunks_mut(r).enumerate().for_each(|(row, o)| {
            let xr = &x[row * width..(row + 1) * width];
            for (j, oj) in o.iter_mut().enumerate() {
                let ar = &a[j * width..(j + 1) * width];
                *oj = (0..width)
                    .map(|c| xr[c] * self.factor(row * width + c) * ar[c])
                    .sum();
            }
        });
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
        let xv = x.flatten_all()?.to_vec1::<f32>()?;
        let av = a.flatten_all()?.to_vec1::<f32>()?;
        let gv = g.flatten_all()?.to_vec1::<f32>()?;
        // dx[n, c] = mask · Σ_j g[n, j] A[j, c]
        let mut dx = vec![0f32; n * width];
        dx.par_chunks_mut(width).enumerate().for_each(|(row, d)| {
            let gr = &gv[row * r..(row + 1) * r];
            for (c, dc) in d.iter_mut().enumerate() {
                let f = self.factor(row * width + c);
                if f != 0.0 {
                    *dc = f * (0..r).map(|j| gr[j] * av[j * width + c]).sum::<f32>();
                }
            }
        });
        // dA[j, c] = Σ_n g[n, j] · mask · x[n, c], by column blocks so that rows stay streamed.
        let mut da = vec![0f32; r * width];
        da.par_chunks_mut(width).enumerate().for_each(|(j, d)| {
            for row in 0..n {
                let gj = gv[row * r + j];
                if gj == 0.0 {
                    continue;
                }
                let xr = &xv[row * width..(row + 1) * width];
                for (c, dc) in d.iter_mut().enumerate() {
                    *dc += gj * self.factor(row * width + c) * xr[c];
                }
            }
        });
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
