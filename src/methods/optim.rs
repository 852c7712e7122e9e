//! Optimisers and learning-rate schedules of the reference protocols, written out because
//! candle's `SGD` has no momentum or weight decay and candle has no schedulers.
//!
//! - [`Sgd`]: `torch.optim.SGD` (momentum, dampening 0, no Nesterov, L2 weight decay added to the
//!   gradient), which Dassl builds for CoOp and CLIP-Adapter.
//! - [`AdamW`]: `torch.optim.AdamW`, which Tip-Adapter-F and the cross-modal linear probe use.
//! - [`Adam`]: `torch.optim.Adam` with its L2 weight decay added to the gradient, which Dassl
//!   builds for TaskRes (`OPTIM.NAME: adam`).
//! - [`WarmupCosine`]: Dassl's `CosineAnnealingLR` wrapped in `ConstantWarmupScheduler`
//!   (stepped once per epoch, `WARMUP_RECOUNT = True`).
//! - [`cosine_annealing`]: `CosineAnnealingLR` stepped per iteration (Tip-Adapter-F).
//! - [`LinearWarmupCosine`]: the cross-modal probe's linear warm-up before that cosine.
//!
//! Each optimiser works on a list of parameter slices and their gradients, in the same order at
//! every step; its state is allocated on the first step.

use rayon::prelude::*;

use crate::kernels::matmul::{simd_level, Simd};
use crate::kernels::sgd::{sgd_product, sgd_update, GradientProduct, SgdHyper};

/// `torch.optim.SGD(params, lr, momentum, weight_decay)` with dampening 0, `nesterov=False`:
/// `g ← g + wd·p; buf ← g` (first step) or `buf ← μ·buf + g`; `p ← p − lr·buf`.
#[derive(Debug, Clone)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    buffers: Vec<Vec<f32>>,
}

impl Sgd {
    pub fn new(momentum: f32, weight_decay: f32) -> Self {
        Sgd {
            momentum,
            weight_decay,
            buffers: Vec::new(),
        }
    }

    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f32) {
        let lens: Vec<usize> = params.iter().map(|p| p.len()).collect();
        let step = self.begin(&lens, lr);
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let buf = &mut step.buffers[i][..];
            let update = |(p, (g, b)): (&mut [f32], (&[f32], &mut [f32]))| {
                sgd_update(step.simd, p, g, b, step.hyper)
            };
            // An adapter's weights are megabytes: a pass over them (five streams) is memory
            // bound, and each core brings its own bandwidth. Element-wise, so the split changes
            // no result.
            if p.len() >= PARALLEL_STEP {
                p.par_chunks_mut(PARALLEL_STEP / 2)
                    .zip(
                        g.par_chunks(PARALLEL_STEP / 2)
                            .zip(buf.par_chunks_mut(PARALLEL_STEP / 2)),
                    )
                    .for_each(update);
            } else {
                update((p, (g, buf)));
            }
        }
    }

    /// One step applied piece by piece ([`SgdStep::update`]), for parameters of `lens` values
    /// (the same list at every step): a gradient can then be used while its block is still in
    /// cache, and never stored whole.
    pub fn begin(&mut self, lens: &[usize], lr: f32) -> SgdStep<'_> {
        let first = self.buffers.is_empty();
        if first {
            self.buffers = lens.iter().map(|&n| vec![0.0; n]).collect();
        }
        // The first step (and momentum 0) copies the gradient into the buffer.
        let momentum = if first { 0.0 } else { self.momentum };
        SgdStep {
            buffers: &mut self.buffers,
            hyper: [lr, self.weight_decay, momentum],
            simd: simd_level(),
        }
    }
}

/// One [`Sgd`] step in progress: every parameter's values must be updated exactly once.
pub struct SgdStep<'a> {
    buffers: &'a mut [Vec<f32>],
    hyper: SgdHyper,
    simd: Simd,
}

impl SgdStep<'_> {
    /// Updates values `offset..offset + p.len()` of parameter `param` (`p` those values) with
    /// their gradient `g`: the same bits as [`Sgd::step`] gives them.
    pub fn update(&mut self, param: usize, offset: usize, p: &mut [f32], g: &[f32]) {
        let buf = &mut self.buffers[param][offset..offset + p.len()];
        sgd_update(self.simd, p, g, buf, self.hyper)
    }

    /// Updates all of parameter `param` (`p`) with the gradient `product`, made and applied a
    /// tile at a time (`kernels::sgd`): the same bits as the product stored by the broadcast
    /// kernel and then [`SgdStep::update`]. The product's batch must be at most
    /// `kernels::sgd::MAX_BATCH` rows.
    pub fn update_product(&mut self, param: usize, p: &mut [f32], product: GradientProduct) {
        let buf = &mut self.buffers[param][..p.len()];
        sgd_product(self.simd, product, p, buf, self.hyper)
    }
}

/// Parameters per slice from which [`Sgd::step`] runs in parallel.
const PARALLEL_STEP: usize = 1 << 16;

/// `torch.optim.AdamW(params, lr, betas, eps, weight_decay)` (no amsgrad): decoupled decay
/// `p ← p·(1 − lr·wd)`, then the bias-corrected Adam step.
#[derive(Debug, Clone)]
pub struct AdamW {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    t: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl AdamW {
    /// PyTorch's defaults are betas (0.9, 0.999), eps 1e-8, weight decay 0.01; Tip-Adapter-F
    /// passes eps 1e-4 and keeps the default decay.
    pub fn new(eps: f32, weight_decay: f32) -> Self {
        AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps,
            weight_decay,
            t: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f32) {
        if self.m.is_empty() {
            self.m = params.iter().map(|p| vec![0.0; p.len()]).collect();
            self.v = self.m.clone();
        }
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t);
        let bc2 = 1.0 - self.beta2.powi(self.t);
        let step = lr / bc1;
        let bc2_sqrt = bc2.sqrt();
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for j in 0..p.len() {
                p[j] *= 1.0 - lr * self.weight_decay;
                m[j] = self.beta1 * m[j] + (1.0 - self.beta1) * g[j];
                v[j] = self.beta2 * v[j] + (1.0 - self.beta2) * g[j] * g[j];
                let denom = v[j].sqrt() / bc2_sqrt + self.eps;
                p[j] -= step * m[j] / denom;
            }
        }
    }
}

/// `torch.optim.Adam(params, lr, betas, eps, weight_decay)` (no amsgrad): the decay is an L2
/// term added to the gradient (`g ← g + wd·p`) before the moments, unlike [`AdamW`]'s decoupled
/// decay, so it is rescaled by the adaptive step like the rest of the gradient.
#[derive(Debug, Clone)]
pub struct Adam {
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    t: i32,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl Adam {
    /// PyTorch's betas (0.9, 0.999) and eps 1e-8; Dassl passes its `OPTIM.WEIGHT_DECAY`.
    pub fn new(weight_decay: f32) -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
            t: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    pub fn step(&mut self, params: &mut [&mut [f32]], grads: &[&[f32]], lr: f32) {
        if self.m.is_empty() {
            self.m = params.iter().map(|p| vec![0.0; p.len()]).collect();
            self.v = self.m.clone();
        }
        self.t += 1;
        let bc1 = 1.0 - self.beta1.powi(self.t);
        let bc2_sqrt = (1.0 - self.beta2.powi(self.t)).sqrt();
        let step = lr / bc1;
        for (i, (p, g)) in params.iter_mut().zip(grads).enumerate() {
            let (m, v) = (&mut self.m[i], &mut self.v[i]);
            for j in 0..p.len() {
                let g = g[j] + self.weight_decay * p[j];
                m[j] = self.beta1 * m[j] + (1.0 - self.beta1) * g;
                v[j] = self.beta2 * v[j] + (1.0 - self.beta2) * g * g;
                p[j] -= step * m[j] / (v[j].sqrt() / bc2_sqrt + self.eps);
            }
        }
    }
}

/// CoOp's schedule: `warmup_epochs` epochs at the constant `warmup_lr`, then a cosine from
/// `base_lr` to 0 over `epochs` epochs, restarted after the warm-up (Dassl `WARMUP_RECOUNT`), so
/// epoch `e ≥ warmup` runs at `base_lr · (1 + cos(π (e − warmup) / epochs)) / 2`. The last epoch
/// therefore never reaches 0: Dassl counts the cosine over `MAX_EPOCH` although only
/// `MAX_EPOCH − warmup` cosine epochs run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WarmupCosine {
    pub base_lr: f32,
    pub epochs: usize,
    pub warmup_epochs: usize,
    pub warmup_lr: f32,
}

impl WarmupCosine {
    /// The reference protocol's schedule: one warm-up epoch at 1e-5.
    pub fn coop(base_lr: f32, epochs: usize) -> Self {
        WarmupCosine {
            base_lr,
            epochs,
            warmup_epochs: 1,
            warmup_lr: 1e-5,
        }
    }

    /// The learning rate of epoch `epoch` (0-based).
    pub fn lr(&self, epoch: usize) -> f32 {
        if epoch < self.warmup_epochs {
            return self.warmup_lr;
        }
        let t = (epoch - self.warmup_epochs) as f64;
        (0.5 * self.base_lr as f64 * (1.0 + (std::f64::consts::PI * t / self.epochs as f64).cos()))
            as f32
    }
}

/// The cross-modal probe's per-iteration schedule (`engine/optimizer/scheduler.py`,
/// `LinearWarmupScheduler` wrapping `CosineAnnealingLR(T_max = total)`): iteration 0 runs at
/// `floor_lr`, iteration `0 < i < w` at `base_lr·i/w`, and from `w` on the wrapped cosine takes
/// over from its own start, `base_lr·(1 + cos(π (i − w)/total))/2`: the cosine is counted over
/// every iteration although `w` of them went to the warm-up, so it never reaches 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearWarmupCosine {
    pub base_lr: f32,
    pub warmup_iters: usize,
    pub floor_lr: f32,
    pub total: usize,
}

impl LinearWarmupCosine {
    /// The learning rate of iteration `i` (0-based).
    pub fn lr(&self, i: usize) -> f32 {
        if i == 0 && self.warmup_iters > 0 {
            return self.floor_lr;
        }
        if i < self.warmup_iters {
            return (self.base_lr as f64 * i as f64 / self.warmup_iters as f64) as f32;
        }
        cosine_annealing(self.base_lr, i - self.warmup_iters, self.total)
    }
}

/// `CosineAnnealingLR(T_max = total, eta_min = 0)` after `step` calls.
pub fn cosine_annealing(base_lr: f32, step: usize, total: usize) -> f32 {
    (0.5 * base_lr as f64 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos()))
        as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sgd_matches_torch_by_hand() {
        // p = 1, g = 0.5 then 0.25, lr 0.1, momentum 0.9, wd 0.1 (worked by hand from
        // torch.optim.SGD's update rule):
        // step 1: g' = 0.5 + 0.1·1 = 0.6, buf = 0.6, p = 1 − 0.06 = 0.94
        // step 2: g' = 0.25 + 0.094 = 0.344, buf = 0.54 + 0.344 = 0.884, p = 0.94 − 0.0884 = 0.8516
        let mut opt = Sgd::new(0.9, 0.1);
        let mut p = vec![1.0f32];
        opt.step(&mut [&mut p], &[&[0.5]], 0.1);
        assert!((p[0] - 0.94).abs() < 1e-7);
        opt.step(&mut [&mut p], &[&[0.25]], 0.1);
        assert!((p[0] - 0.8516).abs() < 1e-6, "{}", p[0]);
    }

    #[test]
    fn adamw_matches_torch_by_hand() {
        // p = 1, g = 0.5, lr 0.1, wd 0.01, eps 1e-8: p·(1 − 0.001) = 0.999; m̂ = 0.5, v̂ = 0.25,
        // step = 0.1 · 0.5 / (0.5 + 1e-8) ≈ 0.1 → 0.899.
        let mut opt = AdamW::new(1e-8, 0.01);
        let mut p = vec![1.0f32];
        opt.step(&mut [&mut p], &[&[0.5]], 0.1);
        assert!((p[0] - 0.899).abs() < 1e-6, "{}", p[0]);
    }

    #[test]
    fn adam_adds_its_decay_to_the_gradient() {
        // p = 1, g = 0.5, wd 0.5: g' = 0.5 + 0.5·1 = 1; the first bias-corrected step is
        // lr·m̂/√v̂ = lr whatever g' is, so p = 0.9 at lr 0.1. Step 2 with g = 0 (g' = 0.45):
        // m = 0.9·0.1 + 0.1·0.45 = 0.135, v = 0.999·0.001 + 0.001·0.2025 = 0.0012015;
        // m̂ = 0.135/0.19, v̂ = 0.0012015/0.001999 → p = 0.9 − 0.1·m̂/√v̂ ≈ 0.808351. AdamW's
        // decoupled decay would give a different second step.
        let mut opt = Adam::new(0.5);
        let mut p = vec![1.0f32];
        opt.step(&mut [&mut p], &[&[0.5]], 0.1);
        assert!((p[0] - 0.9).abs() < 1e-6, "{}", p[0]);
        opt.step(&mut [&mut p], &[&[0.0]], 0.1);
        let m_hat = 0.135f64 / 0.19;
        let v_hat = (0.999f64 * 0.001 + 0.001 * 0.2025) / (1.0 - 0.999f64.powi(2));
        let want = 0.9 - 0.1 * m_hat / v_hat.sqrt();
        assert!((p[0] as f64 - want).abs() < 1e-5, "{} vs {want}", p[0]);
    }

    /// `LinearWarmupScheduler` over `CosineAnnealingLR`, stepped per iteration, as the
    /// cross-modal probe's `build_lr_scheduler` makes it: iteration 0 at the floor, then the
    /// ramp `lr·i/w`, then the cosine from `lr`, counted from the end of the warm-up.
    #[test]
    fn linear_warmup_cosine_follows_the_wrapped_schedulers() {
        let s = LinearWarmupCosine {
            base_lr: 1e-3,
            warmup_iters: 4,
            floor_lr: 1e-5,
            total: 8,
        };
        assert_eq!(s.lr(0), 1e-5);
        assert!((s.lr(1) - 2.5e-4).abs() < 1e-9);
        assert!((s.lr(3) - 7.5e-4).abs() < 1e-9);
        assert!((s.lr(4) - 1e-3).abs() < 1e-9);
        assert!((s.lr(8) - 5e-4).abs() < 1e-9, "{}", s.lr(8));
    }

    #[test]
    fn warmup_cosine_matches_dassl() {
        // Dassl, MAX_EPOCH 4, lr 0.002, constant warm-up 1 epoch at 1e-5, traced by hand:
        // epoch 0: 1e-5; 1: 0.002; 2: 0.001·(1 + cos(π/4)); 3: 0.001·(1 + cos(π/2)) = 0.001.
        let s = WarmupCosine::coop(0.002, 4);
        let expect = [
            1e-5,
            0.002,
            0.001 * (1.0 + std::f32::consts::FRAC_1_SQRT_2),
            0.001,
        ];
        for (e, want) in expect.iter().enumerate() {
            assert!(
                (s.lr(e) - want).abs() < 1e-9,
                "epoch {e}: {} vs {want}",
                s.lr(e)
            );
        }
    }

    #[test]
    fn cosine_annealing_endpoints() {
        assert_eq!(cosine_annealing(0.001, 0, 10), 0.001);
        assert!((cosine_annealing(0.001, 5, 10) - 0.0005).abs() < 1e-9);
        assert!(cosine_annealing(0.001, 10, 10).abs() < 1e-12);
    }
}
