//! A differentiable ModifiedResNet image tower (the paper's backbone; inference in
//! [`crate::clip::model::resnet`]) for pretraining, with open_clip's parameter names (`visual.layer1.0.bn3`),
//! so that what it saves loads with [`Clip::load`](crate::clip::Clip::load).
//!
//! Why a second ResNet: the inference tower folds batch norm into the convolutions and runs our
//! own NHWC kernels, which record no backward. Here everything is a composite candle op on
//! channels-last tensors (convolutions as im2col matmuls), and batch norm is written out: batch
//! statistics while training, updating the running statistics (PyTorch's momentum 0.1,
//! unbiased variance) that inference uses.

use std::cell::Cell;

use candle_core::{DType, Tensor, Var, D};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::clip::error::{Error, InputError, Result};
use crate::clip::load::config::ResNetConfig;

/// PyTorch's `BatchNorm2d` defaults.
const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;

/// Batch norm over `(B, C, H, W)`.
struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
}

/// The `Var` a [`VarBuilder`] created under `name` (the running statistics are updated in
/// place, not by the optimiser).
fn var_of(vars: &VarMap, vb: &VarBuilder, name: &str) -> Result<Var> {
    let key = format!("{}.{name}", vb.prefix());
    let data = vars.data().lock().map_err(|_| Error::Poisoned)?;
    data.get(&key)
        .cloned()
        .ok_or_else(|| candle_core::Error::Msg(format!("no variable {key}")).into())
}

impl BatchNorm {
    /// `zero_init`: start with γ = 0, as open_clip does for the last norm of each block so that
    /// a fresh block is the identity on its shortcut.
    fn new(vars: &VarMap, vb: &VarBuilder, channels: usize, zero_init: bool) -> Result<Self> {
        let gamma = if zero_init { 0.0 } else { 1.0 };
        let weight = vb.get_with_hints(channels, "weight", Init::Const(gamma))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?;
        vb.get_with_hints(channels, "running_var", Init::Const(1.0))?;
        Ok(BatchNorm {
            weight,
            bias,
            running_mean: var_of(vars, vb, "running_mean")?,
            running_var: var_of(vars, vb, "running_var")?,
        })
    }

    /// `x`: `(N, C)`, every pixel of the batch a row.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (mean, var) = if train {
            let mean = x.mean_keepdim(0)?;
            let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(0)?;
            let n = x.dim(0)? as f64;
            let unbiased = (var.detach().flatten_all()? * (n / (n - 1.0).max(1.0)))?;
            let update = |running: &Var, batch: &Tensor| -> Result<()> {
                let next = ((running.as_tensor() * (1.0 - BN_MOMENTUM))? + (batch * BN_MOMENTUM)?)?;
                Ok(running.set(&next)?)
            };
            update(&self.running_mean, &mean.detach().flatten_all()?)?;
            update(&self.running_var, &unbiased)?;
            (mean, var)
        } else {
            (
                self.running_mean.as_tensor().clone(),
                self.running_var.as_tensor().clone(),
            )
        };
        let normed = x
            .broadcast_sub(&mean)?
            .broadcast_div(&(var + BN_EPS)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

/// A bias-free convolution (padding k/2) and its batch norm.
struct ConvBn {
    weight: Tensor,
    bn: BatchNorm,
    stride: usize,
}

impl ConvBn {
    #[allow(clippy::too_many_arguments)]
    fn new(
        vars: &VarMap,
        conv: &VarBuilder,
        bn: &VarBuilder,
        (c_out, c_in, kernel, stride): (usize, usize, usize, usize),
        zero_init: bool,
    ) -> Result<Self> {
        Ok(ConvBn {
            weight: conv.get_with_hints(
                (c_out, c_in, kernel, kernel),
                "weight",
                Init::Const(0.0),
            )?,
            bn: BatchNorm::new(vars, bn, c_out, zero_init)?,
            stride,
        })
    }

    /// `(B, H, W, C_in) -> (B, H/stride, W/stride, C_out)`. The convolution is an im2col
    /// matmul built from differentiable tensor ops, so that forward and backward are GEMMs:
    /// candle's own `conv2d` has a backward, but through its CPU `conv_transpose2d`, a direct
    /// loop over every output, input and kernel position.
    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, h, w, c_in) = x.dims4()?;
        let (c_out, _, k, _) = self.weight.dims4()?;
        let cols = if k == 1 {
            x.clone()
        } else {
            let p = k / 2;
            let padded = x.pad_with_zeros(1, p, p)?.pad_with_zeros(2, p, p)?;
            let mut taps = Vec::with_capacity(k * k);
            for dy in 0..k {
                for dx in 0..k {
                    taps.push(padded.narrow(1, dy, h)?.narrow(2, dx, w)?);
                }
            }
            Tensor::cat(&taps, 3)? // (B, H, W, k·k·C_in), tap-major
        };
        let cols = match self.stride {
            1 => cols,
            s => {
                let d = cols.dim(3)?;
                cols.reshape((b, h / s, s, w / s, s, d))?
                    .narrow(2, 0, 1)?
                    .narrow(4, 0, 1)?
                    .reshape((b, h / s, w / s, d))?
            }
        };
        let (_, ho, wo, d) = cols.dims4()?;
        // (C_out, C_in, k, k) -> (C_out, k, k, C_in): the taps' order.
        let kernel = self.weight.permute((0, 2, 3, 1))?.reshape((c_out, d))?;
        debug_assert_eq!(d, k * k * c_in);
        let y = cols.reshape((b * ho * wo, d))?.matmul(&kernel.t()?)?;
        Ok(self.bn.forward(&y, train)?.reshape((b, ho, wo, c_out))?)
    }
}

/// 2×2-style average pool of `(B, H, W, C)` by `s`.
fn avg_pool(x: &Tensor, s: usize) -> Result<Tensor> {
    let (b, h, w, c) = x.dims4()?;
    Ok(x.reshape((b, h / s, s, w / s, s, c))?.mean(4)?.mean(2)?)
}

struct Bottleneck {
    conv1: ConvBn,
    conv2: ConvBn,
    conv3: ConvBn,
    /// Anti-aliasing average pool of a strided block (1 = none).
    stride: usize,
    downsample: Option<ConvBn>,
}

impl Bottleneck {
    const EXPANSION: usize = 4;

    fn new(
        vars: &VarMap,
        vb: &VarBuilder,
        inplanes: usize,
        planes: usize,
        stride: usize,
    ) -> Result<Self> {
        let out = planes * Self::EXPANSION;
        let conv_bn = |conv: &str, bn: &str, shape, zero| {
            ConvBn::new(vars, &vb.pp(conv), &vb.pp(bn), shape, zero)
        };
        Ok(Bottleneck {
            conv1: conv_bn("conv1", "bn1", (planes, inplanes, 1, 1), false)?,
            conv2: conv_bn("conv2", "bn2", (planes, planes, 3, 1), false)?,
            conv3: conv_bn("conv3", "bn3", (out, planes, 1, 1), true)?,
            stride,
            downsample: if stride > 1 || inplanes != out {
                Some(conv_bn(
                    "downsample.0",
                    "downsample.1",
                    (out, inplanes, 1, 1),
                    false,
                )?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let pool = |t: &Tensor| -> Result<Tensor> {
            match self.stride {
                1 => Ok(t.clone()),
                s => avg_pool(t, s),
            }
        };
        let y = self.conv1.forward(x, train)?.relu()?;
        let y = self.conv2.forward(&y, train)?.relu()?;
        let y = self.conv3.forward(&pool(&y)?, train)?;
        let shortcut = match &self.downsample {
            Some(down) => down.forward(&pool(x)?, train)?,
            None => x.clone(),
        };
        Ok((y + shortcut)?.relu()?)
    }
}

/// open_clip's `AttentionPool2d`: the mean token, with the spatial tokens and learned
/// positions, attends over them all; its output is projected to the embedding.
struct AttentionPool {
    positional_embedding: Tensor,
    q: (Tensor, Tensor),
    k: (Tensor, Tensor),
    v: (Tensor, Tensor),
    c: (Tensor, Tensor),
    heads: usize,
}

impl AttentionPool {
    fn new(vb: &VarBuilder, config: &ResNetConfig, output_dim: usize) -> Result<Self> {
        let c = config.feature_dim();
        let tokens = config.grid() * config.grid() + 1;
        let linear = |name: &str, out: usize| -> Result<(Tensor, Tensor)> {
            let p = vb.pp(name);
            Ok((
                p.get_with_hints((out, c), "weight", Init::Const(0.0))?,
                p.get_with_hints(out, "bias", Init::Const(0.0))?,
            ))
        };
        Ok(AttentionPool {
            positional_embedding: vb.get_with_hints(
                (tokens, c),
                "positional_embedding",
                Init::Const(0.0),
            )?,
            q: linear("q_proj", c)?,
            k: linear("k_proj", c)?,
            v: linear("v_proj", c)?,
            c: linear("c_proj", output_dim)?,
            heads: config.heads,
        })
    }

    /// `(B, H, W, C) -> (B, output_dim)`
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, h, w, c) = x.dims4()?;
        let l = h * w + 1;
        let (heads, hd) = (self.heads, c / self.heads);
        let x = x.reshape((b, h * w, c))?;
        let x = Tensor::cat(&[&x.mean_keepdim(1)?, &x], 1)?;
        let x = x.broadcast_add(&self.positional_embedding)?;
        let apply = |(w, bias): &(Tensor, Tensor), t: &Tensor| -> Result<Tensor> {
            Ok(t.broadcast_matmul(&w.t()?)?.broadcast_add(bias)?)
        };
        let split = |t: Tensor, len: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        // Only the mean token's output is kept, so only its query is needed.
        let q = (split(apply(&self.q, &x.narrow(1, 0, 1)?)?, 1)? * (hd as f64).powf(-0.5))?;
        let k = split(apply(&self.k, &x)?, l)?;
        let v = split(apply(&self.v, &x)?, l)?;
        let scores = q.matmul(&k.t()?.contiguous()?)?; // (B, H, 1, L)
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let pooled = weights.matmul(&v)?.reshape((b, c))?;
        apply(&self.c, &pooled)
    }
}

/// The trainable ModifiedResNet: stem of three 3×3 convolutions and a 2×2 average pool, four
/// stages of anti-aliased bottlenecks, attention pooling.
pub struct ResNetTower {
    config: ResNetConfig,
    stem: [ConvBn; 3],
    stages: Vec<Bottleneck>,
    attnpool: AttentionPool,
    /// Batch statistics (and running-statistics updates) when set, running statistics when not.
    training: Cell<bool>,
}

impl ResNetTower {
    /// Creates the tower's variables in `vars` under `vb` (open_clip: `visual`).
    pub fn new(
        vars: &VarMap,
        vb: &VarBuilder,
        config: &ResNetConfig,
        output_dim: usize,
    ) -> Result<Self> {
        let w = config.width;
        let stem_conv = |i: usize, shape| {
            ConvBn::new(
                vars,
                &vb.pp(format!("conv{i}")),
                &vb.pp(format!("bn{i}")),
                shape,
                false,
            )
        };
        let stem = [
            stem_conv(1, (w / 2, 3, 3, 2))?,
            stem_conv(2, (w / 2, w / 2, 3, 1))?,
            stem_conv(3, (w, w / 2, 3, 1))?,
        ];
        let mut inplanes = w;
        let mut stages = Vec::new();
        for (i, &blocks) in config.layers.iter().enumerate() {
            let planes = w << i;
            let layer = vb.pp(format!("layer{}", i + 1));
            for j in 0..blocks {
                let stride = if i > 0 && j == 0 { 2 } else { 1 };
                stages.push(Bottleneck::new(
                    vars,
                    &layer.pp(j),
                    inplanes,
                    planes,
                    stride,
                )?);
                inplanes = planes * Bottleneck::EXPANSION;
            }
        }
        Ok(ResNetTower {
            config: config.clone(),
            stem,
            stages,
            attnpool: AttentionPool::new(&vb.pp("attnpool"), config, output_dim)?,
            training: Cell::new(true),
        })
    }

    pub fn set_training(&self, training: bool) {
        self.training.set(training);
    }

    /// `(B, 3, S, S) -> (B, E)`: projected, un-normalised.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixels.dims4()?;
        let s = self.config.image_size;
        if (c, h, w) != (3, s, s) {
            return Err(InputError::ImageShape {
                found: [c, h, w],
                channels: 3,
                size: s,
            }
            .into());
        }
        let train = self.training.get();
        // Channels last: every convolution is then one matmul over rows of pixels.
        let mut x = pixels
            .to_dtype(DType::F32)?
            .permute((0, 2, 3, 1))?
            .contiguous()?;
        for conv in &self.stem {
            x = conv.forward(&x, train)?.relu()?;
        }
        x = avg_pool(&x, 2)?;
        for block in &self.stages {
            x = block.forward(&x, train)?;
        }
        self.attnpool.forward(&x)
    }
}

/// The initial standard deviation of a ResNet tower parameter (open_clip's
/// `ModifiedResNet.init_parameters` for the attention pool; He-normal for the convolutions,
/// PyTorch's default init has the same fan-in scaling), or `None` for constants.
pub fn init_std(name: &str, shape: &[usize], config: &ResNetConfig) -> Option<f64> {
    let c = config.feature_dim() as f64;
    if name.contains(".bn") || name.contains("downsample.1") || name.ends_with(".bias") {
        return None;
    }
    if name.contains("attnpool") {
        return Some(c.powf(-0.5));
    }
    match shape {
        [_, c_in, kh, kw] => Some((2.0 / (c_in * kh * kw) as f64).sqrt()),
        _ => None,
    }
}
