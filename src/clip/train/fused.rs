//! Fused CPU ops with a hand-written backward, for training through a frozen tower (CoOp).
//!
//! Written as candle composites, a layer norm is eight tensor passes forward and about twice
//! that backward, a masked softmax five, quick-GELU four; each pass allocates its output. Here
//! each is one pass over the rows forward and one backward, and the backward is the input
//! gradient only: the layer norm's scale and shift are constants of the frozen tower, so no
//! gradient is formed for them. Candle's own fused `layer_norm` and `softmax_last_dim` record
//! no backward at all, which is why these exist rather than those being used.
//!
//! Every op is checked against the composite it replaces (values) and against central finite
//! differences (gradients) in the tests below.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

use crate::kernels::ops::contiguous;
use crate::kernels::vmath;

/// Rows per rayon task: small rows are cheap, and too fine a split costs more than it saves.
const ROWS_PER_TASK: usize = 16;

fn last_dim(layout: &Layout, op: &str) -> candle_core::Result<usize> {
    match layout.dims().last() {
        Some(&d) if d > 0 => Ok(d),
        _ => candle_core::bail!("{op}: the input needs a non-empty last dimension"),
    }
}

/// Applies `f(row_index, input_rows…, output_row)` to every row of `width`, in parallel.
fn map_rows(out_len: usize, width: usize, f: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; out_len];
    out.par_chunks_mut(width * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, chunk)| {
            for (i, row) in chunk.chunks_mut(width).enumerate() {
                f(task * ROWS_PER_TASK + i, row);
            }
        });
    out
}

/// `f(row_index, x_row, out_row)` over the rows of a contiguous input's last dimension.
fn rowwise(
    op: &str,
    s: &CpuStorage,
    l: &Layout,
    f: impl Fn(usize, &[f32], &mut [f32]) + Sync,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let x = contiguous(s, l, op)?;
    let d = last_dim(l, op)?;
    let y = map_rows(x.len(), d, |r, out| f(r, &x[r * d..(r + 1) * d], out));
    Ok((CpuStorage::F32(y), l.shape().clone()))
}

/// `f(a_row, g_row, out_row)` over the rows of two same-shaped contiguous inputs: the
/// backward passes, `a` being the op's input or output and `g` the gradient.
fn rowwise2(
    op: &str,
    (a_s, a_l): (&CpuStorage, &Layout),
    (g_s, g_l): (&CpuStorage, &Layout),
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let a = contiguous(a_s, a_l, op)?;
    let g = contiguous(g_s, g_l, op)?;
    if a.len() != g.len() {
        candle_core::bail!("{op}: {} values against a gradient of {}", a.len(), g.len());
    }
    let d = last_dim(a_l, op)?;
    let out = map_rows(a.len(), d, |r, out| {
        f(&a[r * d..(r + 1) * d], &g[r * d..(r + 1) * d], out)
    });
    Ok((CpuStorage::F32(out), a_l.shape().clone()))
}

/// Mean and `1 / sqrt(var + eps)` of a row (two passes, as the composite computes them).
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = row.iter().sum::<f32>() / n;
    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
    (mean, 1.0 / (var + eps).sqrt())
}

/// Layer norm over the last dimension with a frozen scale and shift.
#[derive(Clone)]
pub struct FrozenLayerNorm {
    weight: Arc<[f32]>,
    bias: Arc<[f32]>,
    eps: f32,
}

impl FrozenLayerNorm {
    pub fn new(weight: &Tensor, bias: &Tensor, eps: f64) -> candle_core::Result<Self> {
        Ok(FrozenLayerNorm {
            weight: weight.flatten_all()?.to_vec1::<f32>()?.into(),
            bias: bias.flatten_all()?.to_vec1::<f32>()?.into(),
            eps: eps as f32,
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

impl CustomOp1 for FrozenLayerNorm {
    fn name(&self) -> &'static str {
        "frozen-layer-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = last_dim(l, self.name())?;
        if d != self.weight.len() {
            candle_core::bail!("frozen-layer-norm: width {d}, weight {}", self.weight.len());
        }
        rowwise(self.name(), s, l, |_, row, out| {
            let (mean, inv) = moments(row, self.eps);
            let params = self.weight.iter().zip(self.bias.iter());
            for ((o, v), (w, b)) in out.iter_mut().zip(row).zip(params) {
                *o = (v - mean) * inv * w + b;
            }
        })
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = LayerNormInputGrad {
            weight: Arc::clone(&self.weight),
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&g.contiguous()?, &op)?))
    }
}

/// `dx` of the layer norm: with `x̂` the normalised row and `h = g ⊙ w`,
/// `dx = (h − mean(h) − x̂ · mean(h ⊙ x̂)) / σ`.
struct LayerNormInputGrad {
    weight: Arc<[f32]>,
    eps: f32,
}

impl CustomOp2 for LayerNormInputGrad {
    fn name(&self) -> &'static str {
        "frozen-layer-norm-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        rowwise2(self.name(), (xs, xl), (gs, gl), |xr, gr, out| {
            let n = xr.len() as f32;
            let (mean, inv) = moments(xr, self.eps);
            let (mut sum_h, mut sum_hx) = (0f32, 0f32);
            for ((xv, gv), w) in xr.iter().zip(gr).zip(self.weight.iter()) {
                let h = gv * w;
                sum_h += h;
                sum_hx += h * (xv - mean) * inv;
            }
            let (mean_h, mean_hx) = (sum_h / n, sum_hx / n);
            for (((o, xv), gv), w) in out.iter_mut().zip(xr).zip(gr).zip(self.weight.iter()) {
                let xhat = (xv - mean) * inv;
                *o = (gv * w - mean_h - xhat * mean_hx) * inv;
            }
        })
    }
}

/// Softmax over the last dimension of `(…, L, L)` attention scores, with positions after the
/// query's own masked out (CLIP's causal text attention) when `causal`.
pub struct Softmax {
    pub causal: bool,
}

impl Softmax {
    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(Softmax {
            causal: self.causal,
        })
    }
}

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let d = last_dim(l, self.name())?;
        let square = l.dims().len() >= 2 && l.dims()[l.dims().len() - 2] == d;
        if self.causal && !square {
            candle_core::bail!(
                "causal softmax: scores must be square (…, L, L): {:?}",
                l.dims()
            );
        }
        rowwise(self.name(), s, l, |r, row, out| {
            // Row r is query r mod L: it sees keys 0..=r mod L when causal.
            let n = if self.causal { r % d + 1 } else { d };
            let max = row[..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let mut sum = 0f32;
            for (o, v) in out.iter_mut().zip(&row[..n]) {
                *o = (v - max).exp();
                sum += *o;
            }
            let inv = 1.0 / sum;
            out[..n].iter_mut().for_each(|o| *o *= inv);
        })
    }

    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            y.apply_op2_no_bwd(&g.contiguous()?, &SoftmaxInputGrad)?,
        ))
    }
}

/// `dx = y ⊙ (g − Σ g ⊙ y)` per row; masked entries have `y = 0` and so get none.
struct SoftmaxInputGrad;

impl CustomOp2 for SoftmaxInputGrad {
    fn name(&self) -> &'static str {
        "softmax-backward"
    }

    fn cpu_fwd(
        &self,
        ys: &CpuStorage,
        yl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        rowwise2(self.name(), (ys, yl), (gs, gl), |yr, gr, out| {
            let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
            for ((o, yv), gv) in out.iter_mut().zip(yr).zip(gr) {
                *o = yv * (gv - dot);
            }
        })
    }
}

/// OpenAI's quick-GELU, `x · σ(1.702 x)`.
pub struct QuickGelu;

const QUICK_GELU_K: f32 = 1.702;

impl QuickGelu {
    pub fn forward(x: &Tensor) -> candle_core::Result<Tensor> {
        x.contiguous()?.apply_op1(QuickGelu)
    }
}

impl CustomOp1 for QuickGelu {
    fn name(&self) -> &'static str {
        "quick-gelu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        rowwise(self.name(), s, l, |_, row, out| {
            out.copy_from_slice(row);
            vmath::bias_quick_gelu(out, None);
        })
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, g: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            x.apply_op2_no_bwd(&g.contiguous()?, &QuickGeluInputGrad)?,
        ))
    }
}

/// `dx = g · (σ + 1.702 x σ (1 − σ))` with `σ = σ(1.702 x)`.
struct QuickGeluInputGrad;

impl CustomOp2 for QuickGeluInputGrad {
    fn name(&self) -> &'static str {
        "quick-gelu-backward"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        gs: &CpuStorage,
        gl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        rowwise2(self.name(), (xs, xl), (gs, gl), |xr, gr, out| {
            // exp(-1.702 x) on the vector `exp`, then σ and the product in a plain loop.
            out.copy_from_slice(xr);
            vmath::exp_scaled_sum(out, -QUICK_GELU_K, 0.0);
            for ((o, v), gv) in out.iter_mut().zip(xr).zip(gr) {
                let s = 1.0 / (1.0 + *o);
                *o = gv * (s + QUICK_GELU_K * v * s * (1.0 - s));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn random(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::SplitMix64::from_state(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.normal()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The gradient of `Σ c ⊙ f(x)` at `x` against central differences, every input entry.
    fn check_gradient(f: impl Fn(&Tensor) -> Tensor, shape: &[usize], tol: f32) {
        let x = Var::from_tensor(&random(shape, 7)).unwrap();
        let c = random(shape, 8);
        let loss = |t: &Tensor| (f(t) * &c).unwrap().sum_all().unwrap();
        let grads = loss(x.as_tensor()).backward().unwrap();
        let analytic: Vec<f32> = grads
            .get(x.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let base: Vec<f32> = x.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
        let h = 1e-2f32;
        for (i, &a) in analytic.iter().enumerate() {
            let at = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let t = Tensor::from_vec(v, shape, &Device::Cpu).unwrap();
                loss(&t).to_scalar::<f32>().unwrap()
            };
            let numeric = (at(h) - at(-h)) / (2.0 * h);
            assert!(
                (numeric - a).abs() <= tol * (1.0 + numeric.abs()),
                "entry {i}: analytic {a}, numeric {numeric}"
            );
        }
    }

    #[test]
    fn layer_norm_matches_the_composite_and_its_gradient_the_differences() {
        let x = random(&[3, 5, 8], 1);
        let (w, b) = (random(&[8], 2), random(&[8], 3));
        let ln = FrozenLayerNorm::new(&w, &b, 1e-5).unwrap();
        let mean = x.mean_keepdim(D::Minus1).unwrap();
        let centred = x.broadcast_sub(&mean).unwrap();
        let var = centred.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let composite = centred
            .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        assert!(max_abs_diff(&ln.forward(&x).unwrap(), &composite) < 1e-5);
        check_gradient(|t| ln.forward(t).unwrap(), &[2, 3, 8], 2e-2);
    }

    #[test]
    fn causal_softmax_matches_masked_softmax_and_its_gradient_the_differences() {
        let x = random(&[2, 3, 6, 6], 4);
        let mask: Vec<f32> = (0..36)
            .map(|k| {
                if k % 6 > k / 6 {
                    f32::NEG_INFINITY
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, (6, 6), &Device::Cpu).unwrap();
        let composite =
            candle_nn::ops::softmax(&x.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        let fused = Softmax { causal: true }.forward(&x).unwrap();
        assert!(max_abs_diff(&fused, &composite) < 1e-6);
        check_gradient(
            |t| Softmax { causal: true }.forward(t).unwrap(),
            &[2, 5, 5],
            2e-2,
        );
        check_gradient(
            |t| Softmax { causal: false }.forward(t).unwrap(),
            &[3, 7],
            2e-2,
        );
    }

    #[test]
    fn quick_gelu_matches_the_composite_and_its_gradient_the_differences() {
        let x = random(&[4, 9], 5);
        let composite = (&x
            * ((&x * -1.702).unwrap().exp().unwrap() + 1.0)
                .unwrap()
                .recip()
                .unwrap())
        .unwrap();
        assert!(max_abs_diff(&QuickGelu::forward(&x).unwrap(), &composite) < 1e-6);
        check_gradient(|t| QuickGelu::forward(t).unwrap(), &[3, 7], 2e-2);
    }

    #[test]
    fn non_square_scores_are_refused_by_the_causal_softmax() {
        let x = random(&[2, 3, 4], 6);
        assert!(Softmax { causal: true }.forward(&x).is_err());
    }
}
