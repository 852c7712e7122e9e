//! CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models",
//! CVPR Workshops 2024; `MaxZanella/CLIP-LoRA`): a trainable low-rank update `s·B·A` beside the
//! frozen weight `W` of chosen attention projections, in chosen layers of either tower or both.
//!
//! As the reference's `LinearLoRA` computes it in training: `x Wᵀ + b + s · (drop(x) Aᵀ) Bᵀ`,
//! the dropout (rate 0.25) on the low-rank path's input only and drawn independently for each
//! projection; `A` (`r × in`) starts Kaiming-uniform (`a = √5`, i.e. `U(±1/√in)`), `B`
//! (`out × r`) at zero, so training starts from the pretrained model exactly. The scale is
//! `s = α / √r` (the reference's `loralib/layers.py`; the LoRA paper's `α / r` is commented out
//! there). In evaluation the update folds into the weight, `W + s·B·A`: [`LoraClip::deltas`]
//! gives those sums, and a merged checkpoint is an ordinary model.

use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

use candle_core::{Device, Tensor, Var};

use super::dropped_low_rank::DroppedLowRank;
use super::frozen::{NoDelta, Projection, ProjectionDelta};
use super::frozen_vit::FrozenVisionTower;
use super::prompt_text::PromptTextEncoder;
use crate::clip::error::{Error, Result};
use crate::clip::load::checkpoint::Checkpoint;
use crate::clip::load::config::{ClipConfig, VisionTower};
use crate::clip::model::text::eot_positions;
use crate::clip::{ModelFiles, Precision};
use crate::rng::SplitMix64;
use crate::unknown_name::UnknownName;

/// Salt of the streams that initialise `A` and draw the dropout masks.
const LORA_SALT: u64 = 0x4c6f_5241_2d69_6e69;

/// Which towers get low-rank updates (`--lora-encoder`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraEncoder {
    Text,
    Vision,
    Both,
}

impl LoraEncoder {
    pub fn text(self) -> bool {
        matches!(self, LoraEncoder::Text | LoraEncoder::Both)
    }
    pub fn vision(self) -> bool {
        matches!(self, LoraEncoder::Vision | LoraEncoder::Both)
    }
}

impl FromStr for LoraEncoder {
    type Err = UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownName> {
        match s {
            "text" => Ok(LoraEncoder::Text),
            "vision" => Ok(LoraEncoder::Vision),
            "both" => Ok(LoraEncoder::Both),
            _ => Err(UnknownName::new(
                "LoRA encoder",
                s,
                &["text", "vision", "both"],
            )),
        }
    }
}

impl fmt::Display for LoraEncoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LoraEncoder::Text => "text",
            LoraEncoder::Vision => "vision",
            LoraEncoder::Both => "both",
        })
    }
}

/// Which attention projections get an update (`--lora-params q,k,v[,o]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoraParams {
    pub q: bool,
    pub k: bool,
    pub v: bool,
    pub o: bool,
}

impl LoraParams {
    fn has(self, p: Projection) -> bool {
        match p {
            Projection::Q => self.q,
            Projection::K => self.k,
            Projection::V => self.v,
            Projection::Out => self.o,
        }
    }
}

impl FromStr for LoraParams {
    type Err = UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownName> {
        let mut p = LoraParams {
            q: false,
            k: false,
            v: false,
            o: false,
        };
        for item in s.split(',').map(str::trim) {
            match item {
                "q" => p.q = true,
                "k" => p.k = true,
                "v" => p.v = true,
                "o" => p.o = true,
                _ => {
                    return Err(UnknownName::new(
                        "LoRA projection",
                        item,
                        &["q", "k", "v", "o"],
                    ))
                }
            }
        }
        Ok(p)
    }
}

impl fmt::Display for LoraParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names = [(self.q, "q"), (self.k, "k"), (self.v, "v"), (self.o, "o")];
        let on: Vec<&str> = names.iter().filter(|(b, _)| *b).map(|(_, n)| *n).collect();
        f.write_str(&on.join(","))
    }
}

/// Which layers of a tower get updates (`--lora-position`), the reference's choices. Its tables
/// list 12-layer towers; for another depth the same fractions are taken (thirds for bottom, mid
/// and up, halves for half-bottom and half-up), and `all` is every layer (the reference's ViT-L
/// entry lists 21 of 24).
///
/// `Last(k)` (`--lora-last k`, written `last:k`) is ours, not the reference's: the last `k`
/// layers, with the frozen layers below them run once instead of at every step (see
/// [`LoraClip::text_prefix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraPosition {
    Bottom,
    Mid,
    Up,
    HalfUp,
    HalfBottom,
    All,
    Top3,
    Last(usize),
}

/// How [`LoraPosition::Last`] is written: `last:k`.
const LAST_PREFIX: &str = "last:";

const POSITIONS: [(&str, LoraPosition); 7] = [
    ("bottom", LoraPosition::Bottom),
    ("mid", LoraPosition::Mid),
    ("up", LoraPosition::Up),
    ("half-up", LoraPosition::HalfUp),
    ("half-bottom", LoraPosition::HalfBottom),
    ("all", LoraPosition::All),
    ("top3", LoraPosition::Top3),
];

impl LoraPosition {
    /// The layer indices of a tower of `n` layers.
    pub fn layers(self, n: usize) -> Vec<usize> {
        let third = n / 3;
        let half = n / 2;
        let range = match self {
            LoraPosition::Bottom => 0..third,
            LoraPosition::Mid => third..2 * third,
            LoraPosition::Up => n - third..n,
            LoraPosition::HalfUp => n - half..n,
            LoraPosition::HalfBottom => 0..half,
            LoraPosition::All => 0..n,
            LoraPosition::Top3 => n.saturating_sub(3)..n,
            LoraPosition::Last(k) => n.saturating_sub(k)..n,
        };
        range.collect()
    }

    /// Refuses a placement a tower of `n` layers cannot take (`tower` names it): `last:k` with
    /// `k` of 0 or more than `n`.
    pub fn check(self, n: usize, tower: &str) -> Result<()> {
        match self {
            LoraPosition::Last(k) if k == 0 || k > n => Err(Error::Lora {
                why: format!(
                    "LoRA in the last {k} layers (`{self}`): the {tower} has {n} layers, so the \
                     count must be from 1 to {n}"
                ),
            }),
            _ => Ok(()),
        }
    }

    /// The first layer whose input is the same at every step when the layers below it are
    /// frozen and fed the same input: where `last:k` starts; 0 (every layer runs at every step,
    /// as the reference runs them) for the reference's placements.
    pub fn frozen_below(self, n: usize) -> usize {
        match self {
            LoraPosition::Last(k) => n.saturating_sub(k),
            _ => 0,
        }
    }
}

impl FromStr for LoraPosition {
    type Err = UnknownName;
    fn from_str(s: &str) -> std::result::Result<Self, UnknownName> {
        if let Some(k) = s.strip_prefix(LAST_PREFIX) {
            if let Some(k) = k.parse::<usize>().ok().filter(|&k| k >= 1) {
                return Ok(LoraPosition::Last(k));
            }
        }
        (POSITIONS.iter().find(|(n, _)| *n == s))
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                let mut names: Vec<&str> = POSITIONS.iter().map(|(n, _)| *n).collect();
                names.push("last:K (K ≥ 1)");
                UnknownName::new("LoRA position", s, &names)
            })
    }
}

impl fmt::Display for LoraPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let LoraPosition::Last(k) = self {
            return write!(f, "{LAST_PREFIX}{k}");
        }
        let name = POSITIONS.iter().find(|(_, p)| p == self).map(|(n, _)| *n);
        f.write_str(name.unwrap_or("all"))
    }
}

/// Where the updates go and their shape; the reference's defaults.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LoraOptions {
    pub rank: usize,
    pub alpha: f64,
    /// Dropout rate on the low-rank path's input in training.
    pub dropout: f32,
    pub params: LoraParams,
    pub encoder: LoraEncoder,
    pub position: LoraPosition,
}

impl Default for LoraOptions {
    fn default() -> Self {
        LoraOptions {
            rank: 2,
            alpha: 1.0,
            dropout: 0.25,
            params: LoraParams {
                q: true,
                k: true,
                v: true,
                o: false,
            },
            encoder: LoraEncoder::Both,
            position: LoraPosition::All,
        }
    }
}

impl LoraOptions {
    /// `α / √r`, as the reference scales.
    pub fn scaling(&self) -> f64 {
        self.alpha / (self.rank as f64).sqrt()
    }
}

/// One projection's update: `A` (`r × in`) and `B` (`out × r`).
struct Adapter {
    a: Var,
    b: Var,
}

fn projection_name(p: Projection) -> &'static str {
    match p {
        Projection::Q => "q_proj",
        Projection::K => "k_proj",
        Projection::V => "v_proj",
        Projection::Out => "out_proj",
    }
}

const PROJECTIONS: [Projection; 4] = [Projection::Q, Projection::K, Projection::V, Projection::Out];

/// The updates of one tower, by layer and projection, with the dropout that goes with them.
struct TowerAdapters {
    /// `text_model` or `vision_model`: the prefix of the adapted weights' names.
    tower: &'static str,
    layers: Vec<[Option<Adapter>; 4]>,
    scaling: f64,
    dropout: f32,
    training: Mutex<Option<SplitMix64>>,
}

impl TowerAdapters {
    fn new(
        tower: &'static str,
        (layers, width): (usize, usize),
        options: &LoraOptions,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let name = match tower {
            "text_model" => "text tower",
            _ => "image tower",
        };
        options.position.check(layers, name)?;
        let chosen = options.position.layers(layers);
        let r = options.rank;
        let bound = 1.0 / (width as f32).sqrt();
        let mut out = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut slots: [Option<Adapter>; 4] = [None, None, None, None];
            for (slot, p) in slots.iter_mut().zip(PROJECTIONS) {
                if !chosen.contains(&i) || !options.params.has(p) {
                    continue;
                }
                let name = format!(
                    "{tower}.encoder.layers.{i}.self_attn.{}",
                    projection_name(p)
                );
                let mut rng =
                    SplitMix64::for_item(seed, LORA_SALT, crate::hash::fnv1a64(name.as_bytes()));
                let a: Vec<f32> = (0..r * width).map(|_| rng.range(-bound, bound)).collect();
                *slot = Some(Adapter {
                    a: Var::from_tensor(&Tensor::from_vec(a, (r, width), device)?)?,
                    b: Var::zeros((width, r), candle_core::DType::F32, device)?,
                });
            }
            out.push(slots);
        }
        Ok(TowerAdapters {
            tower,
            layers: out,
            scaling: options.scaling(),
            dropout: options.dropout,
            training: Mutex::new(None),
        })
    }

    /// `(name, adapter)` for every update, in layer then projection order.
    fn named(&self) -> impl Iterator<Item = (String, &Adapter)> {
        (self.layers.iter().enumerate()).flat_map(move |(i, slots)| {
            (slots.iter().zip(PROJECTIONS)).filter_map(move |(slot, p)| {
                let name = format!(
                    "{}.encoder.layers.{i}.self_attn.{}",
                    self.tower,
                    projection_name(p)
                );
                slot.as_ref().map(|a| (name, a))
            })
        })
    }

    /// `(drop(x)) Aᵀ` for `x` of `rows × in`: inverted dropout (`nn.Dropout`: zero with
    /// probability `p`, else scaled by `1/(1-p)`) in training, none in evaluation.
    fn low_rank(&self, x: &Tensor, a: &Tensor) -> Result<Tensor> {
        let mut guard = self.training.lock().map_err(|_| Error::Poisoned)?;
        Ok(match guard.as_mut().filter(|_| self.dropout > 0.0) {
            Some(rng) => DroppedLowRank::draw(x.elem_count(), self.dropout, rng).forward(x, a)?,
            None => x.matmul(&a.t()?)?,
        })
    }
}

impl ProjectionDelta for TowerAdapters {
    fn delta(&self, layer: usize, p: Projection, x: &Tensor) -> Result<Option<Tensor>> {
        let Some(adapter) = self.layers.get(layer).and_then(|s| s[p as usize].as_ref()) else {
            return Ok(None);
        };
        let dims = x.dims().to_vec();
        let width = dims[dims.len() - 1];
        let rows = x.elem_count() / width.max(1);
        let low = self.low_rank(&x.reshape((rows, width))?, adapter.a.as_tensor())?;
        let y = (low.matmul(&adapter.b.t()?)? * self.scaling)?;
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = adapter.b.dim(0)?;
        }
        Ok(Some(y.reshape(out)?))
    }
}

/// Fixed token rows (the class prompts) run through the text tower's frozen layers below the
/// first adapted one: what enters that layer is the same at every step, so it is computed once
/// and each step runs only the layers from `start` up ([`LoraClip::encode_prefix`]).
pub struct TextPrefix {
    hidden: Tensor,
    eot: Vec<usize>,
    start: usize,
}

impl TextPrefix {
    /// The first layer that runs at every step.
    pub fn start(&self) -> usize {
        self.start
    }
}

/// A CLIP with low-rank updates in its attention, trainable; everything else frozen.
pub struct LoraClip {
    options: LoraOptions,
    config: ClipConfig,
    text: PromptTextEncoder,
    /// The ViT when its attention is adapted (otherwise image features come from elsewhere).
    vision: Option<FrozenVisionTower>,
    text_adapters: Option<TowerAdapters>,
    vision_adapters: Option<TowerAdapters>,
}

impl LoraClip {
    /// Reads a model directory (any layout) and adds fresh updates; `seed` draws `A`.
    pub fn load(
        files: &ModelFiles,
        options: &LoraOptions,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let config = files.read_config()?;
        let ckpt = Checkpoint::open(&files.weights, files.layout, device)?;
        Self::from_checkpoint(&config, &ckpt, options, seed, device)
    }

    pub fn from_checkpoint(
        config: &ClipConfig,
        ckpt: &Checkpoint,
        options: &LoraOptions,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        if options.rank == 0 {
            return Err(Error::Lora {
                why: "the rank must be at least 1".into(),
            });
        }
        let text = PromptTextEncoder::from_checkpoint(config, ckpt, device)?;
        let vision = match (&config.vision, options.encoder.vision()) {
            (_, false) => None,
            (VisionTower::Vit(v), true) => Some(FrozenVisionTower::from_checkpoint(
                v,
                config.embed_dim,
                ckpt,
                device,
            )?),
            (VisionTower::ResNet(_) | VisionTower::Siglip(_) | VisionTower::Eva(_), true) => {
                return Err(Error::Lora {
                    why: format!(
                        "LoRA on the image tower adapts a ViT's attention, and this model's image \
                         tower is not a CLIP ViT: adapt the text tower only (encoder `{}`)",
                        LoraEncoder::Text
                    ),
                })
            }
        };
        let tc = &config.text;
        let text_adapters = (options.encoder.text())
            .then(|| TowerAdapters::new("text_model", (tc.layers, tc.width), options, seed, device))
            .transpose()?;
        let vision_adapters = match &vision {
            Some(v) => {
                let vc = v.config();
                let shape = (vc.layers, vc.width);
                Some(TowerAdapters::new(
                    "vision_model",
                    shape,
                    options,
                    seed,
                    device,
                )?)
            }
            None => None,
        };
        Ok(LoraClip {
            options: *options,
            config: config.clone(),
            text,
            vision,
            text_adapters,
            vision_adapters,
        })
    }

    /// This model with its frozen products (both towers' linear layers, forward and backward)
    /// at `precision`; the updates, attention's products and the norms stay f32.
    pub fn at(mut self, precision: Precision) -> Result<Self> {
        self.text.freeze_at(precision)?;
        if let Some(v) = &mut self.vision {
            v.freeze_at(precision)?;
        }
        Ok(self)
    }

    pub fn options(&self) -> &LoraOptions {
        &self.options
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// `exp(logit_scale)` of the checkpoint (frozen, as in the reference).
    pub fn logit_scale(&self) -> f32 {
        self.text.logit_scale()
    }

    /// Training draws dropout masks from a stream seeded by `seed`; `None` is evaluation.
    pub fn set_training(&self, seed: Option<u64>) -> Result<()> {
        for (i, t) in [&self.text_adapters, &self.vision_adapters]
            .iter()
            .enumerate()
        {
            if let Some(t) = t {
                let mut guard = t.training.lock().map_err(|_| Error::Poisoned)?;
                *guard = seed.map(|s| SplitMix64::for_item(s, LORA_SALT, 1 + i as u64));
            }
        }
        Ok(())
    }

    /// Projected, un-normalised image features through the adapted ViT.
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, embed_dim)`
    pub fn encode_image(&self, pixels: &Tensor) -> Result<Tensor> {
        let (v, a) = self.adapted_vision()?;
        v.forward_with(pixels, a)
    }

    /// Projected, un-normalised text features of token rows (same length, each with an end
    /// token), through the adapted text tower when it is adapted.
    pub fn encode_tokens(&self, ids: &[Vec<u32>]) -> Result<Tensor> {
        let c = self.text.config();
        crate::clip::model::text::check_ids(ids, c)?;
        let eot = eot_positions(ids, c.pooling)?;
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let x = (self.text.token_embeddings(&flat)?).reshape((ids.len(), ids[0].len(), c.width))?;
        match &self.text_adapters {
            Some(a) => self.text.encode_embeddings_with(&x, &eot, a),
            None => self.text.encode_embeddings(&x, &eot),
        }
    }

    /// The first text layer that runs at every step in training: `n - k` for `last:k`, every
    /// layer (0) for the reference's placements, none (`n`) when the text tower is not adapted
    /// (its features are then constants, as the reference computes them once).
    pub fn text_start(&self) -> usize {
        let n = self.text.config().layers;
        match &self.text_adapters {
            Some(_) => self.options.position.frozen_below(n),
            None => n,
        }
    }

    /// The hidden states of `ids` (as [`Self::encode_tokens`] takes them) entering layer
    /// [`Self::text_start`], computed once through the frozen layers below it.
    pub fn text_prefix(&self, ids: &[Vec<u32>]) -> Result<TextPrefix> {
        let c = self.text.config();
        crate::clip::model::text::check_ids(ids, c)?;
        let eot = eot_positions(ids, c.pooling)?;
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let x = (self.text.token_embeddings(&flat)?).reshape((ids.len(), ids[0].len(), c.width))?;
        let start = self.text_start();
        let hidden = self.text.hidden_before(&x, &eot, start)?.detach();
        Ok(TextPrefix { hidden, eot, start })
    }

    /// [`Self::encode_tokens`] of the rows `prefix` was made from, running only the layers from
    /// its start: the same features, and the same gradients to the updates.
    pub fn encode_prefix(&self, prefix: &TextPrefix) -> Result<Tensor> {
        let (x, eot, start) = (&prefix.hidden, &prefix.eot, prefix.start);
        match &self.text_adapters {
            Some(a) => self.text.encode_from(x, eot, start, a),
            None => self.text.encode_from(x, eot, start, &NoDelta),
        }
    }

    /// The first image layer that runs at every step in training: `n - k` for `last:k`, 0 for
    /// the reference's placements (and when the image tower is not adapted, which has no layer
    /// here).
    pub fn image_start(&self) -> usize {
        match &self.vision {
            Some(v) => self.options.position.frozen_below(v.config().layers),
            None => 0,
        }
    }

    /// The tokens of `pixels` entering layer [`Self::image_start`] of the adapted ViT,
    /// computed through the frozen layers below it: constants for fixed views.
    ///
    /// # Shapes
    /// `(B, 3, S, S) -> (B, T, width)`
    pub fn image_tokens(&self, pixels: &Tensor) -> Result<Tensor> {
        let v = self.adapted_vision()?.0;
        Ok(v.tokens_before(pixels, self.image_start())?.detach())
    }

    /// [`Self::encode_image`] of the pixels `tokens` were made from ([`Self::image_tokens`]),
    /// running only the layers from [`Self::image_start`].
    ///
    /// # Shapes
    /// `(B, T, width) -> (B, embed_dim)`
    pub fn encode_image_tokens(&self, tokens: &Tensor) -> Result<Tensor> {
        let (v, a) = self.adapted_vision()?;
        v.forward_from(tokens, self.image_start(), a)
    }

    fn adapted_vision(&self) -> Result<(&FrozenVisionTower, &TowerAdapters)> {
        match (&self.vision, &self.vision_adapters) {
            (Some(v), Some(a)) => Ok((v, a)),
            _ => Err(Error::Lora {
                why: format!(
                    "the image tower is not adapted (encoder `{}`): its features are the frozen \
                     model's",
                    self.options.encoder
                ),
            }),
        }
    }

    /// Every update's `A` and `B`, named `<weight>.lora_A` / `.lora_B` after the projection
    /// they adapt (`transformers` names), in a stable order.
    pub fn vars(&self) -> Vec<(String, Var)> {
        let mut out = Vec::new();
        for t in [&self.text_adapters, &self.vision_adapters]
            .into_iter()
            .flatten()
        {
            for (name, a) in t.named() {
                out.push((format!("{name}.lora_A"), a.a.clone()));
                out.push((format!("{name}.lora_B"), a.b.clone()));
            }
        }
        out
    }

    /// Sets the updates from tensors named as [`Self::vars`] names them (a saved head).
    pub fn set_vars(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let vars = self.vars();
        if tensors.len() != vars.len() {
            return Err(Error::Lora {
                why: format!(
                    "{} LoRA tensors given, this placement has {}",
                    tensors.len(),
                    vars.len()
                ),
            });
        }
        for (name, var) in vars {
            let t = tensors.get(&name).ok_or_else(|| Error::Lora {
                why: format!("no tensor `{name}` among the LoRA weights"),
            })?;
            if t.dims() != var.dims() {
                return Err(Error::Lora {
                    why: format!(
                        "`{name}` has shape {:?}, this model's needs {:?}",
                        t.dims(),
                        var.dims()
                    ),
                });
            }
            var.set(&t.to_dtype(candle_core::DType::F32)?)?;
        }
        Ok(())
    }

    /// `s·B·A` for every adapted projection, by the `transformers` name of the weight it adds
    /// to (`….q_proj.weight`): what merging folds into the checkpoint.
    pub fn deltas(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for t in [&self.text_adapters, &self.vision_adapters]
            .into_iter()
            .flatten()
        {
            for (name, a) in t.named() {
                let d = (a.b.as_tensor().matmul(a.a.as_tensor())? * t.scaling)?;
                out.push((format!("{name}.weight"), d));
            }
        }
        Ok(out)
    }
}
