//! A differentiable CLIP (ViT or ModifiedResNet image tower + text tower) for pretraining, with
//! the parameter names of `transformers`' `CLIPModel` (the ResNet: open_clip's, in
//! [`resnet`]), saved in the config's layout so that it loads with [`Clip::load`].
//!
//! Why not reuse the inference towers: they run fused kernels (layer norm, attention, bias +
//! activation epilogues) that record no backward pass, so everything upstream of them would
//! get a silent zero gradient (candle 0.11; docs/tensor-library.md). Here every step is a
//! composite candle op with a backward: mean/variance layer norm, `ops::softmax` (not
//! `softmax_last_dim`), plain matmuls, an explicit quick-GELU.
//!
//! [`Clip::load`]: super::Clip::load

mod dropped_low_rank;
mod frozen;
pub mod frozen_vit;
mod fused;
pub mod lora;
pub mod lora_merge;
pub mod prompt_text;
pub mod resnet;

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor, D};
use candle_nn::{Init, VarBuilder, VarMap};

use crate::clip::error::{Error, InputError, Result};
use crate::clip::load::config::{Activation, ClipConfig, TextConfig, VisionConfig, VisionTower};
use crate::clip::load::layout::to_checkpoint;
use crate::clip::model::text::eot_positions;
use crate::rng::SplitMix64;
use resnet::ResNetTower;

/// `ln(1 / 0.07)`: CLIP's initial temperature.
pub const LOGIT_SCALE_INIT: f64 = 2.659_26;
/// CLIP clamps the learned scale at 100.
pub const LOGIT_SCALE_MAX: f64 = 100.0;

const INIT_STD: f64 = 0.02;
/// Salt of the initialisation stream: the world's, so that a seed initialises a model exactly
/// as it did when the shipped world model was trained.
const INIT_SALT: u64 = 0x6a09_e667_f3bc_c908;

/// Placeholder for tensors [`TrainableClip::reinitialise`] fills with seeded normals.
fn normal() -> Init {
    Init::Const(0.0)
}

/// The standard deviation `transformers`' `CLIPPreTrainedModel._init_weights` draws a
/// parameter from (factor 1), or `None` for the constants (biases, norms, temperature). Plain
/// 0.02 everywhere leaves the image embeddings of a fresh model nearly identical for all
/// inputs, and contrastive training then sits at `ln(batch)` for a long time.
fn init_std(name: &str, c: &ClipConfig) -> Option<f64> {
    if name.ends_with(".bias") || name.contains("norm") || name == "logit_scale" {
        return None;
    }
    let (width, layers) = match (name.starts_with("vision_model"), &c.vision) {
        (true, VisionTower::Vit(v)) => (v.width as f64, v.layers as f64),
        _ => (c.text.width as f64, c.text.layers as f64),
    };
    let attn = width.powf(-0.5) * (2.0 * layers).powf(-0.5);
    Some(match name {
        n if n.ends_with("class_embedding") => width.powf(-0.5),
        n if n.contains("embedding") => INIT_STD,
        n if n.contains("q_proj") || n.contains("k_proj") || n.contains("v_proj") => attn,
        n if n.contains("out_proj") => width.powf(-0.5),
        n if n.contains("fc1") => (2.0 * width).powf(-0.5),
        n if n.contains("fc2") => attn,
        "visual_projection.weight" => match &c.vision {
            VisionTower::Vit(v) | VisionTower::Siglip(v) => (v.width as f64).powf(-0.5),
            VisionTower::ResNet(_) | VisionTower::Eva(_) => INIT_STD,
        },
        "text_projection.weight" => (c.text.width as f64).powf(-0.5),
        _ => INIT_STD,
    })
}

struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    /// The frozen weight packed for bfloat16 products ([`frozen::Bf16Weights`]); only the
    /// frozen towers of CLIP-LoRA and CoOp, run at [`Precision::Bf16`], set it.
    ///
    /// [`Precision::Bf16`]: crate::clip::Precision::Bf16
    bf16: Option<frozen::Bf16Weights>,
}

impl Linear {
    fn new(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        Ok(Linear {
            weight: vb.get_with_hints((out_dim, in_dim), "weight", normal())?,
            bias: match bias {
                true => Some(vb.get_with_hints(out_dim, "bias", Init::Const(0.0))?),
                false => None,
            },
            bf16: None,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = x.broadcast_matmul(&self.weight.t()?)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }
}

struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    fn new(vb: &VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?,
            bias: vb.get_with_hints(dim, "bias", Init::Const(0.0))?,
            eps,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)?)
    }
}

fn activate(x: &Tensor, act: Activation) -> Result<Tensor> {
    Ok(match act {
        // x · sigmoid(1.702 x), written out so that it has a backward.
        Activation::QuickGelu => {
            let sig = ((x * -1.702)?.exp()? + 1.0)?.recip()?;
            (x * sig)?
        }
        Activation::Gelu => x.gelu_erf()?,
        Activation::GeluTanh => x.gelu()?,
    })
}

struct Block {
    layer_norm1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
    act: Activation,
}

struct EncoderShape {
    width: usize,
    hidden: usize,
    heads: usize,
    eps: f64,
    act: Activation,
}

impl Block {
    fn new(vb: &VarBuilder, s: &EncoderShape) -> Result<Self> {
        let attn = vb.pp("self_attn");
        let mlp = vb.pp("mlp");
        let d = s.width;
        Ok(Block {
            layer_norm1: LayerNorm::new(&vb.pp("layer_norm1"), d, s.eps)?,
            q: Linear::new(&attn.pp("q_proj"), d, d, true)?,
            k: Linear::new(&attn.pp("k_proj"), d, d, true)?,
            v: Linear::new(&attn.pp("v_proj"), d, d, true)?,
            out: Linear::new(&attn.pp("out_proj"), d, d, true)?,
            layer_norm2: LayerNorm::new(&vb.pp("layer_norm2"), d, s.eps)?,
            fc1: Linear::new(&mlp.pp("fc1"), d, s.hidden, true)?,
            fc2: Linear::new(&mlp.pp("fc2"), s.hidden, d, true)?,
            heads: s.heads,
            act: s.act,
        })
    }

    /// `mask`: `(L, L)` added to the attention scores (causal text), or none.
    fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (h, hd) = (self.heads, d / self.heads);
        let y = self.layer_norm1.forward(x)?;
        let split = |t: Tensor| -> Result<Tensor> {
            Ok(t.reshape((b, l, h, hd))?.transpose(1, 2)?.contiguous()?)
        };
        let q = (split(self.q.forward(&y)?)? * (hd as f64).powf(-0.5))?;
        let k = split(self.k.forward(&y)?)?;
        let v = split(self.v.forward(&y)?)?;
        let mut scores = q.matmul(&k.t()?.contiguous()?)?; // (B, H, L, L)
        if let Some(m) = mask {
            scores = scores.broadcast_add(m)?;
        }
        let attn = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let attended = attn
            .matmul(&v)?
            .transpose(1, 2)?
            .contiguous()?
            .reshape((b, l, d))?;
        let x = (x + self.out.forward(&attended)?)?;
        let y = self.layer_norm2.forward(&x)?;
        let y = self
            .fc2
            .forward(&activate(&self.fc1.forward(&y)?, self.act)?)?;
        Ok((x + y)?)
    }
}

/// The `transformers` names and shapes of one encoder layer's tensors (width `d`, MLP `h`).
fn block_tensors(p: &str, d: usize, h: usize) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for norm in ["layer_norm1", "layer_norm2"] {
        out.push((format!("{p}.{norm}.weight"), vec![d]));
        out.push((format!("{p}.{norm}.bias"), vec![d]));
    }
    for proj in ["q_proj", "k_proj", "v_proj", "out_proj"] {
        out.push((format!("{p}.self_attn.{proj}.weight"), vec![d, d]));
        out.push((format!("{p}.self_attn.{proj}.bias"), vec![d]));
    }
    out.push((format!("{p}.mlp.fc1.weight"), vec![h, d]));
    out.push((format!("{p}.mlp.fc1.bias"), vec![h]));
    out.push((format!("{p}.mlp.fc2.weight"), vec![d, h]));
    out.push((format!("{p}.mlp.fc2.bias"), vec![d]));
    out
}

fn encoder(vb: &VarBuilder, layers: usize, s: &EncoderShape) -> Result<Vec<Block>> {
    (0..layers)
        .map(|i| Block::new(&vb.pp("layers").pp(i), s))
        .collect()
}

struct ImageTower {
    config: VisionConfig,
    patch_embedding: Tensor,
    class_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<Block>,
    post_layernorm: LayerNorm,
}

impl ImageTower {
    fn new(vb: &VarBuilder, c: &VisionConfig) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let (d, p) = (c.width, c.patch_size);
        let shape = EncoderShape {
            width: d,
            hidden: c.intermediate_size,
            heads: c.heads,
            eps: c.layer_norm_eps,
            act: c.activation,
        };
        Ok(ImageTower {
            config: c.clone(),
            patch_embedding: emb.pp("patch_embedding").get_with_hints(
                (d, c.num_channels, p, p),
                "weight",
                normal(),
            )?,
            class_embedding: emb.get_with_hints(d, "class_embedding", normal())?,
            position_embedding: emb.pp("position_embedding").get_with_hints(
                (c.num_positions(), d),
                "weight",
                normal(),
            )?,
            pre_layrnorm: LayerNorm::new(&vb.pp("pre_layrnorm"), d, c.layer_norm_eps)?,
            layers: encoder(&vb.pp("encoder"), c.layers, &shape)?,
            post_layernorm: LayerNorm::new(&vb.pp("post_layernorm"), d, c.layer_norm_eps)?,
        })
    }

    /// Flattened patches `(B, g², 3·p²)` of pixels of the tower's shape, refused otherwise.
    fn patches(&self, pixels: &Tensor) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, hgt, w) = pixels.dims4()?;
        if (ch, hgt, w) != (c.num_channels, c.image_size, c.image_size) {
            return Err(InputError::ImageShape {
                found: [ch, hgt, w],
                channels: c.num_channels,
                size: c.image_size,
            }
            .into());
        }
        let (g, p) = (c.grid(), c.patch_size);
        Ok(pixels
            .reshape((b, ch, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, g * g, ch * p * p))?)
    }

    /// The class token before the projected patches, plus the positions.
    fn tokens(&self, patches: &Tensor) -> Result<Tensor> {
        let (b, _, d) = patches.dims3()?;
        let class = self
            .class_embedding
            .reshape((1, 1, d))?
            .broadcast_as((b, 1, d))?;
        Ok(Tensor::cat(&[&class, patches], 1)?.broadcast_add(&self.position_embedding)?)
    }

    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let patches = self.patches(pixels)?;
        // The stride-p convolution as a matmul over flattened patches.
        let kernel = (self.patch_embedding).reshape((self.config.width, patches.dim(2)?))?;
        let mut x = self.tokens(&patches.broadcast_matmul(&kernel.t()?)?)?;
        x = self.pre_layrnorm.forward(&x)?;
        for layer in &self.layers {
            x = layer.forward(&x, None)?;
        }
        self.post_layernorm.forward(&x.i((.., 0, ..))?)
    }
}

struct TextTower {
    config: TextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Block>,
    final_layer_norm: LayerNorm,
}

impl TextTower {
    fn new(vb: &VarBuilder, c: &TextConfig) -> Result<Self> {
        let emb = vb.pp("embeddings");
        let shape = EncoderShape {
            width: c.width,
            hidden: c.intermediate_size,
            heads: c.heads,
            eps: c.layer_norm_eps,
            act: c.activation,
        };
        Ok(TextTower {
            config: c.clone(),
            token_embedding: emb.pp("token_embedding").get_with_hints(
                (c.vocab_size, c.width),
                "weight",
                normal(),
            )?,
            position_embedding: emb.pp("position_embedding").get_with_hints(
                (c.context_length, c.width),
                "weight",
                normal(),
            )?,
            layers: encoder(&vb.pp("encoder"), c.layers, &shape)?,
            final_layer_norm: LayerNorm::new(
                &vb.pp("final_layer_norm"),
                c.width,
                c.layer_norm_eps,
            )?,
        })
    }

    fn forward(&self, ids: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let c = &self.config;
        crate::clip::model::text::check_ids(ids, c)?;
        let len = ids[0].len();
        let eot = eot_positions(ids, c.pooling)?;
        // Positions after the last end token never reach a pooled output (causal mask).
        let used = eot.iter().max().map_or(len, |&p| p + 1);
        let b = ids.len();
        let flat: Vec<u32> = ids.iter().flat_map(|s| s[..used].iter().copied()).collect();
        let tokens = Tensor::from_vec(flat, (b * used,), device)?;
        let mut x = self
            .token_embedding
            .index_select(&tokens, 0)?
            .reshape((b, used, c.width))?
            .broadcast_add(&self.position_embedding.narrow(0, 0, used)?)?;
        let mask = causal_mask(used, device)?;
        for layer in &self.layers {
            x = layer.forward(&x, Some(&mask))?;
        }
        let pooled = crate::clip::model::transformer::gather_positions(&x, &eot)?;
        self.final_layer_norm.forward(&pooled)
    }
}

fn causal_mask(len: usize, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(mask, (len, len), device)?)
}

/// The image side: a ViT and its projection, or a ModifiedResNet (projected by its pool).
enum Vision {
    Vit {
        tower: ImageTower,
        projection: Linear,
    },
    ResNet(ResNetTower),
}

/// A CLIP whose every parameter is a trainable [`candle_core::Var`] in [`TrainableClip::vars`].
pub struct TrainableClip {
    config: ClipConfig,
    vars: VarMap,
    vision: Vision,
    text: TextTower,
    text_projection: Linear,
    logit_scale: Tensor,
    device: Device,
}

impl TrainableClip {
    /// A freshly initialised model (`transformers`' initialisation scale); `seed` seeds the
    /// device's generator.
    pub fn new(config: &ClipConfig, seed: u64, device: &Device) -> Result<Self> {
        let vars = VarMap::new();
        let vb = VarBuilder::from_varmap(&vars, DType::F32, device);
        let e = config.embed_dim;
        let vision = match &config.vision {
            VisionTower::Vit(v) => Vision::Vit {
                tower: ImageTower::new(&vb.pp("vision_model"), v)?,
                projection: Linear::new(&vb.pp("visual_projection"), v.width, e, false)?,
            },
            VisionTower::ResNet(r) => {
                Vision::ResNet(ResNetTower::new(&vars, &vb.pp("visual"), r, e)?)
            }
            VisionTower::Siglip(_) => {
                return Err(Error::SiglipUnsupported {
                    what: "training a model from scratch",
                })
            }
            VisionTower::Eva(_) => {
                return Err(Error::EvaUnsupported {
                    what: "training a model from scratch",
                })
            }
        };
        let model = TrainableClip {
            vision,
            text: TextTower::new(&vb.pp("text_model"), &config.text)?,
            text_projection: Linear::new(&vb.pp("text_projection"), config.text.width, e, false)?,
            logit_scale: vb.get_with_hints((), "logit_scale", Init::Const(LOGIT_SCALE_INIT))?,
            config: config.clone(),
            vars,
            device: device.clone(),
        };
        model.reinitialise(seed)?;
        Ok(model)
    }

    /// Draws the random parameters from our own seeded generator: candle's CPU generator
    /// cannot be seeded, and a checkpoint must be reproducible from its seed. Each tensor's
    /// stream depends only on `seed` and its name, not on creation order.
    fn reinitialise(&self, seed: u64) -> Result<()> {
        let data = self.vars.data().lock().map_err(|_| Error::Poisoned)?;
        for (name, var) in data.iter() {
            let std = match &self.config.vision {
                VisionTower::ResNet(r) if name.starts_with("visual.") => {
                    resnet::init_std(name, var.dims(), r)
                }
                _ => init_std(name, &self.config),
            };
            let Some(std) = std else {
                continue;
            };
            let mut rng =
                SplitMix64::for_item(seed, INIT_SALT, crate::hash::fnv1a64(name.as_bytes()));
            let values: Vec<f32> = (0..var.elem_count())
                .map(|_| std as f32 * rng.normal())
                .collect();
            var.set(&Tensor::from_vec(values, var.shape(), &self.device)?)?;
        }
        Ok(())
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// Every parameter, by its `transformers` name.
    pub fn vars(&self) -> &VarMap {
        &self.vars
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// `(B, 3, S, S) -> (B, E)`, projected and un-normalised, like [`super::Clip::encode_image`].
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        match &self.vision {
            Vision::Vit { tower, projection } => projection.forward(&tower.forward(pixels)?),
            Vision::ResNet(tower) => tower.forward(pixels),
        }
    }

    /// Training mode (the default) normalises a ResNet's batches with their own statistics and
    /// updates the running ones; evaluation mode uses the running statistics, as inference
    /// does. The ViT has no batch-dependent layer.
    pub fn set_training(&self, training: bool) {
        if let Vision::ResNet(tower) = &self.vision {
            tower.set_training(training);
        }
    }

    /// Token rows (same length, each with an end token) `-> (B, E)`.
    pub fn encode_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        self.text_projection
            .forward(&self.text.forward(ids, &self.device)?)
    }

    /// The learned log temperature, a scalar tensor in the graph.
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }

    /// CLIP's symmetric InfoNCE loss of a batch of matching pairs (row i of each side belongs
    /// together): the mean of image→text and text→image cross-entropies over
    /// `exp(logit_scale) · cosine`, the scale capped at 100 as CLIP does.
    pub fn contrastive_loss(&self, pixels: &Tensor, ids: &[Vec<u32>]) -> Result<Tensor> {
        let img = normalize(&self.encode_image(pixels)?)?;
        let txt = normalize(&self.encode_tokens(ids)?)?;
        let scale = self.logit_scale.exp()?.clamp(0.0, LOGIT_SCALE_MAX)?;
        let logits = img.matmul(&txt.t()?)?.broadcast_mul(&scale)?;
        let n = ids.len();
        let targets = Tensor::arange(0u32, n as u32, &self.device)?;
        let l_img = candle_nn::loss::cross_entropy(&logits, &targets)?;
        let l_txt = candle_nn::loss::cross_entropy(&logits.t()?, &targets)?;
        Ok(((l_img + l_txt)? * 0.5)?)
    }

    /// Writes every parameter (and running statistic) atomically to `path`, with the names and
    /// shapes of the config's checkpoint layout.
    pub fn save_weights(&self, path: &Path) -> Result<()> {
        let data = self.vars.data().lock().map_err(|_| Error::Poisoned)?;
        let tensors: std::collections::HashMap<String, Tensor> = data
            .iter()
            .map(|(name, var)| (name.clone(), var.as_tensor().clone()))
            .collect();
        drop(data);
        let tensors = to_checkpoint(self.config.layout, &tensors)?;
        let bytes =
            safetensors::tensor::serialize(&tensors, None).map_err(|e| Error::Checkpoint {
                file: path.to_path_buf(),
                msg: format!("cannot serialise the weights ({e})"),
            })?;
        Ok(crate::fsutil::write_atomic(path, &bytes)?)
    }
}

fn normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    Ok(x.broadcast_div(&norm)?)
}
