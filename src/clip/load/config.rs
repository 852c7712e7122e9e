//! Model configuration, parsed from the checkpoint's own `config.json` (Hugging Face
//! `transformers` layout) and validated once into typed values.
//!
//! Defaults are those of `transformers`' `CLIPTextConfig` / `CLIPVisionConfig`, so a config that
//! leaves a field out means what it means to `transformers`.

use std::path::Path;

use serde::Deserialize;

use super::layout::Layout;
use crate::clip::error::{Error, Result};
use crate::limits::{self, LimitError};

/// The activation inside each transformer MLP (defined with the kernels that fuse it).
pub use crate::kernels::ops::Activation;

impl Activation {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "quick_gelu" => Some(Activation::QuickGelu),
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Some(Activation::GeluTanh),
            _ => None,
        }
    }
}

/// Where the text tower reads its pooled output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// The first occurrence of the largest id. OpenAI's `text.argmax(dim=-1)`; `transformers`
    /// keeps it for configs whose `eos_token_id` is the legacy value 2.
    Argmax,
    /// The first occurrence of this end-of-text id (`transformers` since PR #24773).
    FirstToken(u32),
    /// The last position of the sequence, padding included (SigLIP: `last_hidden_state[:, -1]`).
    /// Such a tower attends bidirectionally (no causal mask), so every position counts.
    Last,
}

impl Pooling {
    /// Whether the text tower masks future positions: CLIP's towers do, SigLIP's does not.
    pub fn causal(self) -> bool {
        !matches!(self, Pooling::Last)
    }
}

/// The text tower: token embedding, learned positions, a causal pre-LN transformer, pooling at
/// the end-of-text token.
#[derive(Debug, Clone, PartialEq)]
pub struct TextConfig {
    pub vocab_size: usize,
    pub width: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub context_length: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
    pub pooling: Pooling,
}

/// The ViT image tower: patch embedding, class token, learned positions, pre-LN transformer,
/// post-LN on the class token.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub width: usize,
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub num_channels: usize,
    pub activation: Activation,
    pub layer_norm_eps: f64,
}

impl VisionConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patches plus the class token (CLIP's ViT).
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
    /// Patches only (SigLIP's ViT has no class token).
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }
}

/// OpenAI's ModifiedResNet image tower: 3-convolution stem, anti-aliased bottleneck stages,
/// attention pooling.
#[derive(Debug, Clone, PartialEq)]
pub struct ResNetConfig {
    /// Bottleneck blocks per stage.
    pub layers: [usize; 4],
    /// Channels of the stem; stage i has `width · 2^i` bottleneck planes.
    pub width: usize,
    /// Heads of the attention pool (open_clip: `width · 32 / head_width`).
    pub heads: usize,
    pub image_size: usize,
}

impl ResNetConfig {
    /// Channels of the last stage, the attention pool's width.
    pub fn feature_dim(&self) -> usize {
        self.width * 32
    }
    /// Side of the last stage's feature map: the tower downsamples by 32.
    pub fn grid(&self) -> usize {
        self.image_size / 32
    }
}

/// EVA02's image tower (timm's `Eva` as EVA02-CLIP configures it): patch convolution with bias,
/// class token, learned absolute positions plus 2-D rotary embeddings on the patch tokens,
/// pre-norm blocks whose attention has q and v biases but no k bias and a LayerNorm before its
/// output projection, SwiGLU MLPs with a LayerNorm before their last layer, a final norm, and
/// the class token as the pooled output.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaConfig {
    pub width: usize,
    /// The SwiGLU's hidden width (each of its two input projections).
    pub intermediate_size: usize,
    pub layers: usize,
    pub heads: usize,
    pub image_size: usize,
    pub patch_size: usize,
    pub layer_norm_eps: f64,
    /// The patch grid the rotary embeddings were trained at (timm's `ref_feat_shape`): positions
    /// of any other grid are rescaled onto it.
    pub rope_reference_grid: Option<[usize; 2]>,
    /// The base of the rotary frequencies.
    pub rope_temperature: f64,
}

impl EvaConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    /// Patches plus the class token.
    pub fn num_positions(&self) -> usize {
        self.grid() * self.grid() + 1
    }
    pub fn head_dim(&self) -> usize {
        self.width / self.heads.max(1)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum VisionTower {
    Vit(VisionConfig),
    ResNet(ResNetConfig),
    /// SigLIP's ViT: patch convolution with bias, learned positions, no class token, no
    /// pre-norm, post-norm over all tokens, then multihead attention pooling (a learned probe
    /// attends over the tokens, then a residual MLP) whose output is the image embedding.
    Siglip(VisionConfig),
    /// EVA02-CLIP's image tower (open_clip with timm's `eva02_*_clip_*`).
    Eva(EvaConfig),
}

impl VisionTower {
    pub fn image_size(&self) -> usize {
        match self {
            VisionTower::Vit(v) | VisionTower::Siglip(v) => v.image_size,
            VisionTower::ResNet(r) => r.image_size,
            VisionTower::Eva(e) => e.image_size,
        }
    }
    /// The width of the pooled feature before the projection (SigLIP has none: its width).
    pub fn width(&self) -> usize {
        match self {
            VisionTower::Vit(v) | VisionTower::Siglip(v) => v.width,
            VisionTower::ResNet(r) => r.feature_dim(),
            VisionTower::Eva(e) => e.width,
        }
    }
}

/// CLIP's normalisation statistics (OpenAI's `_transform`), verbatim.
#[allow(clippy::excessive_precision)]
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub text: TextConfig,
    pub vision: VisionTower,
    /// Size of the joint embedding space (`projection_dim`, open_clip's `embed_dim`).
    pub embed_dim: usize,
    /// Key layout of the weights that go with this config.
    pub layout: Layout,
    /// Image normalisation of the preprocessing the model was trained with.
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
    /// Images are resized straight to the input size, without a crop (SigLIP's processor,
    /// open_clip's `resize_mode: squash`); otherwise CLIP's resize-shortest-side and centre crop.
    pub squash: bool,
}

impl ClipConfig {
    /// A SigLIP model: sigmoid scores with a learned bias, images resized without a crop.
    pub fn is_siglip(&self) -> bool {
        matches!(self.vision, VisionTower::Siglip(_))
    }
}

// The raw JSON shapes of `transformers`' config classes. Unknown fields are ignored: real
// configs carry dozens of generation-related keys that do not concern the model.
#[derive(Deserialize)]
#[serde(default)]
struct HfTextConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
    eos_token_id: Option<i64>,
}

impl Default for HfTextConfig {
    fn default() -> Self {
        // transformers/models/clip/configuration_clip.py, CLIPTextConfig.__init__
        HfTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
            eos_token_id: Some(49407),
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct HfVisionConfig {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

impl Default for HfVisionConfig {
    fn default() -> Self {
        // transformers/models/clip/configuration_clip.py, CLIPVisionConfig.__init__
        HfVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

#[derive(Deserialize)]
struct HfClipConfig {
    model_type: Option<String>,
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default = "default_projection_dim")]
    projection_dim: usize,
    text_config: Option<HfTextConfig>,
    // Configs written by older transformers versions keep the sub-configs under `*_dict`.
    text_config_dict: Option<HfTextConfig>,
    vision_config: Option<HfVisionConfig>,
    vision_config_dict: Option<HfVisionConfig>,
}

fn default_projection_dim() -> usize {
    512
}

/// The sizes of a `config.json`, under their keys, before anything is built from them.
fn check_hf_limits(
    t: &HfTextConfig,
    t_key: &str,
    v: &HfVisionConfig,
    v_key: &str,
    projection_dim: usize,
) -> std::result::Result<(), LimitError> {
    let text = |field: &str| format!("{t_key}.{field}");
    let vision = |field: &str| format!("{v_key}.{field}");
    limits::VOCABULARY.check(&text("vocab_size"), t.vocab_size)?;
    limits::WIDTH.check(&text("hidden_size"), t.hidden_size)?;
    limits::MLP_WIDTH.check(&text("intermediate_size"), t.intermediate_size)?;
    limits::LAYERS.check(&text("num_hidden_layers"), t.num_hidden_layers)?;
    limits::HEADS.check(&text("num_attention_heads"), t.num_attention_heads)?;
    limits::CONTEXT_LENGTH.check(&text("max_position_embeddings"), t.max_position_embeddings)?;
    limits::WIDTH.check(&vision("hidden_size"), v.hidden_size)?;
    limits::MLP_WIDTH.check(&vision("intermediate_size"), v.intermediate_size)?;
    limits::LAYERS.check(&vision("num_hidden_layers"), v.num_hidden_layers)?;
    limits::HEADS.check(&vision("num_attention_heads"), v.num_attention_heads)?;
    limits::CHANNELS.check(&vision("num_channels"), v.num_channels)?;
    limits::IMAGE_SIZE.check(&vision("image_size"), v.image_size)?;
    limits::PATCH_SIZE.check(&vision("patch_size"), v.patch_size)?;
    limits::WIDTH.check("projection_dim", projection_dim)?;
    Ok(())
}

impl ClipConfig {
    /// Reads a `transformers` `CLIPModel` `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_hf_json(&text, path)
    }

    /// Parses the text of a `config.json`; `path` only names the file in errors.
    pub fn from_hf_json(json: &str, path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Kind {
            model_type: Option<String>,
        }
        let kind: Kind = serde_json::from_str(json).map_err(|source| Error::Json {
            path: path.into(),
            source,
        })?;
        if kind.model_type.as_deref() == Some("siglip") {
            return super::siglip_config::from_hf_json(json, path);
        }
        let raw: HfClipConfig = serde_json::from_str(json).map_err(|source| Error::Json {
            path: path.into(),
            source,
        })?;
        let err = |msg: String| Error::Config {
            path: path.into(),
            msg,
        };
        match raw.model_type.as_deref() {
            None | Some("clip") => {}
            Some("siglip2") => {
                return Err(err(
                    "unsupported architecture: model_type is `siglip2` (transformers \
                     `Siglip2Model`, SigLIP 2's NaFlex variant: a Linear patch embedding over \
                     variable-length patch sequences, position embeddings resized per image to \
                     its aspect ratio); supported are `clip` (CLIPModel) and `siglip` \
                     (SiglipModel, the layout of SigLIP 2's fixed-resolution checkpoints such as \
                     google/siglip2-base-patch16-224)"
                        .into(),
                ))
            }
            Some(kind) => {
                return Err(err(format!(
                    "unsupported architecture: model_type is `{kind}`; supported are `clip` \
                     (transformers CLIPModel) and `siglip` (SiglipModel)"
                )))
            }
        }
        if let Some(arch) = raw.architectures.iter().find(|a| a.as_str() != "CLIPModel") {
            return Err(err(format!(
                "unsupported architecture `{arch}`; supported are `CLIPModel` and `SiglipModel` \
                 (model_type `clip` or `siglip`)"
            )));
        }
        // Errors name the key the file used (older files: `*_dict`).
        let t_key = match raw.text_config {
            None if raw.text_config_dict.is_some() => "text_config_dict",
            _ => "text_config",
        };
        let v_key = match raw.vision_config {
            None if raw.vision_config_dict.is_some() => "vision_config_dict",
            _ => "vision_config",
        };
        let t = raw.text_config.or(raw.text_config_dict).unwrap_or_default();
        let v = raw
            .vision_config
            .or(raw.vision_config_dict)
            .unwrap_or_default();
        check_hf_limits(&t, t_key, &v, v_key, raw.projection_dim).map_err(|limit| {
            Error::Limit {
                path: path.into(),
                limit,
            }
        })?;
        let activation = |name: &str, tower: &str| {
            Activation::parse(name).ok_or_else(|| {
                err(format!(
                    "{tower}: unknown hidden_act `{name}`, expected quick_gelu, gelu or gelu_new"
                ))
            })
        };
        // transformers/models/clip/modeling_clip.py, CLIPTextTransformer.forward:
        // `if self.eos_token_id == 2:` use argmax (configs written before PR #24773).
        let pooling = match t.eos_token_id {
            None | Some(2) => Pooling::Argmax,
            Some(id) => Pooling::FirstToken(
                u32::try_from(id)
                    .map_err(|_| err(format!("text_config.eos_token_id {id} is not a token id")))?,
            ),
        };
        let config = ClipConfig {
            text: TextConfig {
                vocab_size: t.vocab_size,
                width: t.hidden_size,
                intermediate_size: t.intermediate_size,
                layers: t.num_hidden_layers,
                heads: t.num_attention_heads,
                context_length: t.max_position_embeddings,
                activation: activation(&t.hidden_act, "text_config")?,
                layer_norm_eps: t.layer_norm_eps,
                pooling,
            },
            vision: VisionTower::Vit(VisionConfig {
                width: v.hidden_size,
                intermediate_size: v.intermediate_size,
                layers: v.num_hidden_layers,
                heads: v.num_attention_heads,
                image_size: v.image_size,
                patch_size: v.patch_size,
                num_channels: v.num_channels,
                activation: activation(&v.hidden_act, "vision_config")?,
                layer_norm_eps: v.layer_norm_eps,
            }),
            embed_dim: raw.projection_dim,
            layout: Layout::Transformers,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
            squash: false,
        };
        config.validate().map_err(err)?;
        Ok(config)
    }

    /// Every size against [`crate::limits`], by its role (configs read from files are checked
    /// earlier, under their own keys; this covers configs inferred from tensor shapes and built
    /// from flags). Call after the sizes are known to be positive.
    pub(crate) fn check_limits(&self) -> std::result::Result<(), LimitError> {
        let t = &self.text;
        limits::VOCABULARY.check("text vocab size", t.vocab_size)?;
        limits::WIDTH.check("text width", t.width)?;
        limits::MLP_WIDTH.check("text MLP width", t.intermediate_size)?;
        limits::LAYERS.check("text layers", t.layers)?;
        limits::HEADS.check("text heads", t.heads)?;
        limits::CONTEXT_LENGTH.check("text context length", t.context_length)?;
        limits::WIDTH.check("embed dim", self.embed_dim)?;
        limits::IMAGE_SIZE.check("image size", self.vision.image_size())?;
        match &self.vision {
            VisionTower::Vit(v) | VisionTower::Siglip(v) => {
                limits::WIDTH.check("vision width", v.width)?;
                limits::MLP_WIDTH.check("vision MLP width", v.intermediate_size)?;
                limits::LAYERS.check("vision layers", v.layers)?;
                limits::HEADS.check("vision heads", v.heads)?;
                limits::PATCH_SIZE.check("vision patch size", v.patch_size)?;
                limits::CHANNELS.check("vision channels", v.num_channels)?;
                // Both factors are bounded above, so the product cannot overflow.
                limits::VISION_POSITIONS.check("vision positions", v.num_positions())?;
            }
            VisionTower::ResNet(r) => {
                for (stage, &blocks) in r.layers.iter().enumerate() {
                    limits::LAYERS.check(&format!("resnet stage {} blocks", stage + 1), blocks)?;
                }
                // The stem width times 32 is the feature width: bound the factor first.
                limits::WIDTH.check("resnet width", r.width)?;
                limits::WIDTH.check("resnet feature width", r.feature_dim())?;
                limits::HEADS.check("resnet heads", r.heads)?;
            }
            VisionTower::Eva(e) => {
                limits::WIDTH.check("vision width", e.width)?;
                limits::MLP_WIDTH.check("vision MLP width", e.intermediate_size)?;
                limits::LAYERS.check("vision layers", e.layers)?;
                limits::HEADS.check("vision heads", e.heads)?;
                limits::PATCH_SIZE.check("vision patch size", e.patch_size)?;
                limits::VISION_POSITIONS.check("vision positions", e.num_positions())?;
            }
        }
        Ok(())
    }

    pub(crate) fn validate(&self) -> std::result::Result<(), String> {
        let t = &self.text;
        let mut positive = vec![
            ("text width", t.width),
            ("text heads", t.heads),
            ("text context length", t.context_length),
            ("text vocab size", t.vocab_size),
            ("embed dim", self.embed_dim),
            ("image size", self.vision.image_size()),
        ];
        match &self.vision {
            VisionTower::Vit(v) | VisionTower::Siglip(v) => positive.extend([
                ("vision width", v.width),
                ("vision heads", v.heads),
                ("vision patch size", v.patch_size),
            ]),
            VisionTower::ResNet(r) => {
                positive.extend([("resnet width", r.width), ("resnet heads", r.heads)])
            }
            VisionTower::Eva(e) => positive.extend([
                ("vision width", e.width),
                ("vision heads", e.heads),
                ("vision patch size", e.patch_size),
            ]),
        }
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(format!("{name} must be positive"));
        }
        self.check_limits().map_err(|e| e.to_string())?;
        if !t.width.is_multiple_of(t.heads) {
            return Err(format!(
                "text width {} is not divisible by its {} heads",
                t.width, t.heads
            ));
        }
        match &self.vision {
            VisionTower::Vit(v) | VisionTower::Siglip(v) => {
                if v.width % v.heads != 0 {
                    return Err(format!(
                        "vision width {} is not divisible by its {} heads",
                        v.width, v.heads
                    ));
                }
                // SigLIP's patch convolution ("valid", stride = kernel) drops the pixels past
                // the last whole patch, as `google/siglip-so400m-patch14-384` relies on (384 px
                // over 14-px patches: 27 × 27 patches of the top-left 378 × 378 pixels).
                let siglip = matches!(self.vision, VisionTower::Siglip(_));
                if !siglip && v.image_size % v.patch_size != 0 {
                    return Err(format!(
                        "image size {} is not a multiple of the patch size {}",
                        v.image_size, v.patch_size
                    ));
                }
            }
            VisionTower::ResNet(r) => {
                if r.feature_dim() % r.heads != 0 {
                    return Err(format!(
                        "resnet feature width {} is not divisible by its {} attention-pool heads",
                        r.feature_dim(),
                        r.heads
                    ));
                }
                if r.image_size % 32 != 0 {
                    return Err(format!(
                        "resnet image size {} is not a multiple of 32",
                        r.image_size
                    ));
                }
            }
            VisionTower::Eva(e) => {
                // The rotary embedding splits each head into 4 equal parts (sin and cos of
                // each of the two axes).
                if e.width % e.heads != 0 || e.head_dim() % 4 != 0 {
                    return Err(format!(
                        "vision width {} over its {} heads is not a head width divisible by 4 \
                         (rotary embeddings need one)",
                        e.width, e.heads
                    ));
                }
                if e.image_size % e.patch_size != 0 {
                    return Err(format!(
                        "image size {} is not a multiple of the patch size {}",
                        e.image_size, e.patch_size
                    ));
                }
            }
        }
        Ok(())
    }
}
