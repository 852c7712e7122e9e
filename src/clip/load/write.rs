//! Writing a [`ClipConfig`] in its layout's own file: `transformers`' `config.json` or open_clip's
//! `open_clip_config.json`, the inverse of [`super::config`] and [`super::open_clip_config`], for
//! the models this crate trains. Reading the written file back gives the same config (tested).

use serde_json::{json, Value};

use super::config::{Activation, ClipConfig, Pooling, VisionTower, CLIP_MEAN, CLIP_STD};
use super::layout::Layout;

/// Why a config cannot be written in its layout.
#[derive(Debug, thiserror::Error)]
pub enum WriteConfigError {
    #[error(
        "the transformers layout has no ModifiedResNet image tower: write it in open_clip's layout"
    )]
    ResNetInTransformers,
    #[error("transformers' config.json has no image mean/std (they live in preprocessor_config.json): only CLIP's own statistics can be written")]
    CustomStatistics,
    #[error("writing a SigLIP model's config is not implemented (only CLIP's)")]
    Siglip,
    #[error("writing the config of an open_clip model with a timm image tower (SigLIP, EVA02) is not implemented (only CLIP's)")]
    TimmTower,
}

/// The config file's name and contents for `config`'s layout. `logit_scale_init` is the initial
/// temperature `transformers` records (`logit_scale_init_value`).
pub fn config_file(
    config: &ClipConfig,
    logit_scale_init: f64,
) -> Result<(&'static str, Value), WriteConfigError> {
    match config.layout {
        Layout::Transformers => Ok(("config.json", hf_config(config, logit_scale_init)?)),
        Layout::OpenClip if config.is_siglip() => Err(WriteConfigError::Siglip),
        Layout::OpenClip => Ok(("open_clip_config.json", open_clip_config(config))),
        Layout::OpenClipTimm => Err(WriteConfigError::TimmTower),
    }
}

fn activation_name(a: Activation) -> &'static str {
    match a {
        Activation::QuickGelu => "quick_gelu",
        Activation::Gelu => "gelu",
        Activation::GeluTanh => "gelu_pytorch_tanh",
    }
}

/// `transformers`' `CLIPConfig` as `config.json`.
pub fn hf_config(c: &ClipConfig, logit_scale_init: f64) -> Result<Value, WriteConfigError> {
    let v = match &c.vision {
        VisionTower::Vit(v) => v,
        VisionTower::ResNet(_) => return Err(WriteConfigError::ResNetInTransformers),
        VisionTower::Siglip(_) => return Err(WriteConfigError::Siglip),
        VisionTower::Eva(_) => return Err(WriteConfigError::TimmTower),
    };
    if c.image_mean != CLIP_MEAN || c.image_std != CLIP_STD {
        return Err(WriteConfigError::CustomStatistics);
    }
    let t = &c.text;
    // The start token sits just before the end token, as in OpenAI's vocabulary and ours; the
    // legacy end id 2 tells `transformers` to pool at the argmax.
    let eos = match t.pooling {
        Pooling::FirstToken(id) => id as usize,
        Pooling::Argmax => 2,
        Pooling::Last => return Err(WriteConfigError::Siglip),
    };
    Ok(json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": c.embed_dim,
        "logit_scale_init_value": logit_scale_init,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": t.intermediate_size,
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": activation_name(t.activation),
            "layer_norm_eps": t.layer_norm_eps,
            "bos_token_id": eos.saturating_sub(1),
            "eos_token_id": eos,
            "pad_token_id": 0,
        },
        "vision_config": {
            "model_type": "clip_vision_model",
            "hidden_size": v.width,
            "intermediate_size": v.intermediate_size,
            "num_hidden_layers": v.layers,
            "num_attention_heads": v.heads,
            "num_channels": v.num_channels,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "hidden_act": activation_name(v.activation),
            "layer_norm_eps": v.layer_norm_eps,
        },
    }))
}

/// open_clip's `open_clip_config.json` (`model_cfg` + `preprocess_cfg`).
pub fn open_clip_config(c: &ClipConfig) -> Value {
    let t = &c.text;
    let vision = match &c.vision {
        VisionTower::ResNet(r) => json!({
            "image_size": r.image_size,
            "layers": r.layers,
            "width": r.width,
            "head_width": r.feature_dim() / r.heads.max(1),
        }),
        // Refused by `config_file` before this point; written as the ViT it resembles.
        VisionTower::Vit(v) | VisionTower::Siglip(v) => json!({
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "head_width": v.width / v.heads.max(1),
            "patch_size": v.patch_size,
            "mlp_ratio": v.intermediate_size as f64 / v.width.max(1) as f64,
        }),
        VisionTower::Eva(e) => json!({
            "image_size": e.image_size,
            "layers": e.layers,
            "width": e.width,
            "head_width": e.head_dim(),
            "patch_size": e.patch_size,
        }),
    };
    json!({
        "model_cfg": {
            "embed_dim": c.embed_dim,
            "quick_gelu": t.activation == Activation::QuickGelu,
            "vision_cfg": vision,
            "text_cfg": {
                "context_length": t.context_length,
                "vocab_size": t.vocab_size,
                "width": t.width,
                "heads": t.heads,
                "layers": t.layers,
            },
        },
        "preprocess_cfg": {
            "mean": c.image_mean,
            "std": c.image_std,
        },
    })
}
