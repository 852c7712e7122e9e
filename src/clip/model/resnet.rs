//! OpenAI's ModifiedResNet image tower (CLIP RN50, RN101, RN50x4/x16/x64), with open_clip's
//! parameter names (`visual.layer1.0.downsample.0.weight`, `visual.attnpool.c_proj`).
//!
//! Reference: open_clip/modified_resnet.py. What differs from torchvision's ResNet:
//! - a stem of three 3×3 convolutions (the first with stride 2) and a 2×2 average pool instead of
//!   one 7×7 convolution and a max pool;
//! - strided blocks are anti-aliased: the stride is a `AvgPool2d(stride)` after the 3×3
//!   convolution, and on the shortcut before its 1×1 convolution; every convolution has stride 1;
//! - the global average pool is replaced by attention pooling: the mean token, prepended to the
//!   spatial tokens and given learned positions, attends over all of them (QKV attention), and
//!   the result is projected to the embedding.
//!
//! Batch norm (inference: running statistics) is folded into the preceding convolution at load
//! time unless asked not to; `tests` check that both give the same output.

use candle_core::{Device, Tensor, D};

use super::conv::{add_relu, avg_pool, Conv2d, ConvShape, Epilogue, Nhwc};
use super::positions::{resize_positions, Interpolation};
use super::transformer::Linear;
use crate::clip::error::{InputError, Result};
use crate::clip::load::checkpoint::Scope;
use crate::clip::load::config::ResNetConfig;

/// PyTorch's `BatchNorm2d` default.
const BN_EPS: f32 = 1e-5;

fn vec1(vb: &Scope, name: &str, len: usize) -> Result<Vec<f32>> {
    Ok(vb.get(name, &[len])?.to_vec1::<f32>()?)
}

/// A bias-free convolution (padding k/2) followed by batch norm, and ReLU when `relu`.
fn conv_bn(
    conv: &Scope,
    bn: &Scope,
    (c_out, c_in, kernel, stride): (usize, usize, usize, usize),
    relu: bool,
    fold: bool,
) -> Result<Conv2d> {
    let mut weight = conv
        .get("weight", &[c_out, c_in, kernel, kernel])?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let gamma = vec1(bn, "weight", c_out)?;
    let beta = vec1(bn, "bias", c_out)?;
    let mean = vec1(bn, "running_mean", c_out)?;
    let var = vec1(bn, "running_var", c_out)?;
    let epilogue = if fold {
        let per_out = c_in * kernel * kernel;
        let mut bias = vec![0f32; c_out];
        for o in 0..c_out {
            let scale = gamma[o] / (var[o] + BN_EPS).sqrt();
            weight[o * per_out..(o + 1) * per_out]
                .iter_mut()
                .for_each(|w| *w *= scale);
            bias[o] = beta[o] - mean[o] * scale;
        }
        Epilogue::Bias(bias)
    } else {
        Epilogue::BatchNorm {
            mean,
            var,
            gamma,
            beta,
            eps: BN_EPS,
        }
    };
    let shape = ConvShape {
        c_out,
        c_in,
        kernel,
        stride,
        padding: kernel / 2,
    };
    Ok(Conv2d::new(&weight, shape, epilogue, relu).at(conv.precision()))
}

pub struct Bottleneck {
    conv1: Conv2d,
    conv2: Conv2d,
    /// The anti-aliasing pool of a strided block (1 = none).
    stride: usize,
    conv3: Conv2d,
    /// `downsample`: `AvgPool2d(stride)`, 1×1 conv, batch norm; present when the shape changes.
    downsample: Option<Conv2d>,
}

impl Bottleneck {
    const EXPANSION: usize = 4;

    pub fn load(
        vb: &Scope,
        inplanes: usize,
        planes: usize,
        stride: usize,
        fold: bool,
    ) -> Result<Self> {
        let out = planes * Self::EXPANSION;
        let downsample = if stride > 1 || inplanes != out {
            Some(conv_bn(
                &vb.pp("downsample.0"),
                &vb.pp("downsample.1"),
                (out, inplanes, 1, 1),
                false,
                fold,
            )?)
        } else {
            None
        };
        Ok(Bottleneck {
            conv1: conv_bn(
                &vb.pp("conv1"),
                &vb.pp("bn1"),
                (planes, inplanes, 1, 1),
                true,
                fold,
            )?,
            conv2: conv_bn(
                &vb.pp("conv2"),
                &vb.pp("bn2"),
                (planes, planes, 3, 1),
                true,
                fold,
            )?,
            stride,
            conv3: conv_bn(
                &vb.pp("conv3"),
                &vb.pp("bn3"),
                (out, planes, 1, 1),
                false,
                fold,
            )?,
            downsample,
        })
    }

    pub fn forward(&self, x: &Nhwc) -> Nhwc {
        let out = self.conv2.forward(&self.conv1.forward(x));
        let mut out = match self.stride {
            1 => self.conv3.forward(&out),
            s => self.conv3.forward(&avg_pool(&out, s)),
        };
        match (&self.downsample, self.stride) {
            (Some(down), 1) => add_relu(&mut out, &down.forward(x)),
            (Some(down), s) => add_relu(&mut out, &down.forward(&avg_pool(x, s))),
            (None, _) => add_relu(&mut out, x),
        }
        out
    }
}

/// Attention pooling over the last feature map (open_clip `AttentionPool2d`).
pub struct AttentionPool {
    positional_embedding: Tensor,
    q_proj: Linear,
    /// k and v projections as one GEMM.
    kv_proj: Linear,
    c_proj: Linear,
    heads: usize,
}

impl AttentionPool {
    pub fn load(vb: &Scope, config: &ResNetConfig, output_dim: usize) -> Result<Self> {
        let c = config.feature_dim();
        let tokens = config.grid() * config.grid() + 1;
        let stored = vb.shape("positional_embedding");
        let positional_embedding = match stored.as_deref() {
            Some([n, w]) if *n != tokens && *w == c => {
                let old = vb.get("positional_embedding", &[*n, c])?;
                // open_clip never resizes a ResNet's pool; PyTorch's plain bicubic, as one would
                // by hand.
                resize_positions(&old, 1, config.grid(), Interpolation::Bicubic)?
            }
            _ => vb.get("positional_embedding", &[tokens, c])?,
        };
        let (k, v) = (vb.pp("k_proj"), vb.pp("v_proj"));
        let kv_weight = Tensor::cat(&[k.get("weight", &[c, c])?, v.get("weight", &[c, c])?], 0)?;
        let mut kv_bias = vec1(&k, "bias", c)?;
        kv_bias.extend(vec1(&v, "bias", c)?);
        Ok(AttentionPool {
            positional_embedding,
            q_proj: Linear::load(&vb.pp("q_proj"), c, c, true)?,
            kv_proj: Linear::new(kv_weight, Some(kv_bias), None).at(vb.precision())?,
            c_proj: Linear::load(&vb.pp("c_proj"), c, output_dim, true)?,
            heads: config.heads,
        })
    }

    /// # Shapes
    /// `(B, HW, C) -> (B, output_dim)`
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&self.pool(x)?)
    }

    /// The attention output before `c_proj` (what ProLIP's `AttentionPool2d` returns).
    ///
    /// # Shapes
    /// `(B, HW, C) -> (B, C)`
    pub fn pool(&self, x: &Tensor) -> Result<Tensor> {
        let (b, hw, c) = x.dims3()?;
        let (h, hd) = (self.heads, c / self.heads);
        let x = Tensor::cat(&[&x.mean_keepdim(1)?, x], 1)?; // (B, HW+1, C)
        let x = x.broadcast_add(&self.positional_embedding)?;
        let l = hw + 1;
        // Only the mean token's output is kept (`return x[0]`), so only its query is needed.
        let q = self.q_proj.forward(&x.narrow(1, 0, 1)?)?; // (B, 1, C)
        let kv = self.kv_proj.forward(&x)?; // (B, L, 2C)
        let q = (q.reshape((b, h, 1, hd))? * (hd as f64).powf(-0.5))?;
        let k = kv
            .narrow(2, 0, c)?
            .reshape((b, l, h, hd))?
            .transpose(1, 2)?
            .contiguous()?; // (B, H, L, hd)
        let v = kv
            .narrow(2, c, c)?
            .reshape((b, l, h, hd))?
            .transpose(1, 2)?
            .contiguous()?;
        let scores = q.matmul(&k.transpose(2, 3)?.contiguous()?)?; // (B, H, 1, L)
        let weights = candle_nn::ops::softmax(&scores, D::Minus1)?;
        Ok(weights.matmul(&v)?.reshape((b, c))?) // (B, C)
    }
}

pub struct ModifiedResNet {
    config: ResNetConfig,
    stem: [Conv2d; 3],
    stages: Vec<Vec<Bottleneck>>,
    attnpool: AttentionPool,
}

impl ModifiedResNet {
    /// Loads the tower under `vb` (open_clip: `visual`); `fold` folds batch norms into the
    /// convolutions (the fast path; unfolded exists to test it).
    pub fn load(vb: &Scope, config: &ResNetConfig, output_dim: usize, fold: bool) -> Result<Self> {
        let w = config.width;
        let stem = [
            conv_bn(&vb.pp("conv1"), &vb.pp("bn1"), (w / 2, 3, 3, 2), true, fold)?,
            conv_bn(
                &vb.pp("conv2"),
                &vb.pp("bn2"),
                (w / 2, w / 2, 3, 1),
                true,
                fold,
            )?,
            conv_bn(&vb.pp("conv3"), &vb.pp("bn3"), (w, w / 2, 3, 1), true, fold)?,
        ];
        let mut inplanes = w;
        let mut stages = Vec::with_capacity(4);
        for (i, &blocks) in config.layers.iter().enumerate() {
            let planes = w << i;
            let stride = if i == 0 { 1 } else { 2 };
            let layer = vb.pp(format!("layer{}", i + 1));
            let mut stage = Vec::with_capacity(blocks);
            for j in 0..blocks {
                let s = if j == 0 { stride } else { 1 };
                stage.push(Bottleneck::load(&layer.pp(j), inplanes, planes, s, fold)?);
                inplanes = planes * Bottleneck::EXPANSION;
            }
            stages.push(stage);
        }
        Ok(ModifiedResNet {
            config: config.clone(),
            stem,
            stages,
            attnpool: AttentionPool::load(&vb.pp("attnpool"), config, output_dim)?,
        })
    }

    /// The attention-pooled, projected image feature.
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, E)`
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        self.projection()
            .forward(&self.forward_pre_projection(pixels)?)
    }

    /// The attention pool's `c_proj`: the tower's last projection.
    pub fn projection(&self) -> &Linear {
        &self.attnpool.c_proj
    }

    /// The attention-pooled feature before `c_proj`.
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, C)` (C = width · 32)
    pub fn forward_pre_projection(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let s = self.config.image_size;
        if (c, h, w) != (3, s, s) {
            return Err(InputError::ImageShape {
                found: [c, h, w],
                channels: 3,
                size: s,
            }
            .into());
        }
        let data = pixels.flatten_all()?.to_vec1::<f32>()?;
        let mut x = Nhwc::from_nchw(&data, b, c, h, w);
        for conv in &self.stem {
            x = conv.forward(&x);
        }
        x = avg_pool(&x, 2);
        for block in self.stages.iter().flatten() {
            x = block.forward(&x);
        }
        let (hw, c) = (x.h * x.w, x.c);
        let tokens = Tensor::from_vec(x.into_data(), (b, hw, c), &Device::Cpu)?
            .to_device(pixels.device())?;
        self.attnpool.pool(&tokens)
    }
}
