//! SigLIP in the `transformers` layout: `config.json` with `model_type: siglip` (`SiglipModel`)
//! and the `preprocessor_config.json` beside it.
//!
//! Defaults are those of `transformers`' `SiglipTextConfig` / `SiglipVisionConfig` (5.23), so a
//! config that leaves a field out means what it means to `transformers`. The joint embedding
//! width is the vision width (the pooled image output is the embedding); the text tower's
//! `head` maps its width to `projection_size`, which must equal it.

use std::path::Path;

use serde::Deserialize;

use super::config::{Activation, ClipConfig, Pooling, TextConfig, VisionConfig, VisionTower};
use super::layout::Layout;
use crate::clip::error::{Error, Result};
use crate::limits;

#[derive(Deserialize)]
#[serde(default)]
struct SiglipText {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
    projection_size: Option<usize>,
}

impl Default for SiglipText {
    fn default() -> Self {
        SiglipText {
            vocab_size: 32000,
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            max_position_embeddings: 64,
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            projection_size: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct SiglipVision {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_channels: usize,
    image_size: serde_json::Value,
    patch_size: serde_json::Value,
    hidden_act: String,
    layer_norm_eps: f64,
    vision_use_head: bool,
}

impl Default for SiglipVision {
    fn default() -> Self {
        SiglipVision {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224.into(),
            patch_size: 16.into(),
            hidden_act: "gelu_pytorch_tanh".into(),
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

#[derive(Deserialize)]
struct SiglipJson {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    text_config: Option<SiglipText>,
    #[serde(default)]
    vision_config: Option<SiglipVision>,
}

/// A side given as an integer or as a square `[h, w]` pair.
fn square(v: &serde_json::Value, key: &str) -> std::result::Result<usize, String> {
    let side = |v: &serde_json::Value| v.as_u64().map(|n| n as usize);
    match v {
        serde_json::Value::Array(a) if a.len() == 2 && a[0] == a[1] => side(&a[0]),
        other => side(other),
    }
    .ok_or_else(|| format!("{key} must be an integer or a square [h, w] pair, found {v}"))
}

/// Reads a `transformers` `SiglipModel` `config.json` (and `preprocessor_config.json` beside it).
pub fn from_hf_json(json: &str, path: &Path) -> Result<ClipConfig> {
    let raw: SiglipJson = serde_json::from_str(json).map_err(|source| Error::Json {
        path: path.into(),
        source,
    })?;
    let err = |msg: String| Error::Config {
        path: path.into(),
        msg,
    };
    if let Some(arch) = raw
        .architectures
        .iter()
        .find(|a| a.as_str() != "SiglipModel")
    {
        return Err(err(format!(
            "unsupported architecture `{arch}` for model_type `siglip`; supported is `SiglipModel` \
             (both towers)"
        )));
    }
    let t = raw.text_config.unwrap_or_default();
    let v = raw.vision_config.unwrap_or_default();
    if !v.vision_use_head {
        return Err(err(
            "vision_config.vision_use_head is false: without the attention pooling head the \
             image tower has no embedding"
                .into(),
        ));
    }
    let activation = |name: &str, tower: &str| {
        Activation::parse(name).ok_or_else(|| {
            err(format!(
                "{tower}: unknown hidden_act `{name}`, expected gelu_pytorch_tanh, gelu or quick_gelu"
            ))
        })
    };
    let projection = t.projection_size.unwrap_or(t.hidden_size);
    if projection != v.hidden_size {
        return Err(err(format!(
            "text_config.projection_size {projection} differs from vision_config.hidden_size {}: \
             the two embeddings would not share a space",
            v.hidden_size
        )));
    }
    limits::CONTEXT_LENGTH
        .check(
            "text_config.max_position_embeddings",
            t.max_position_embeddings,
        )
        .map_err(|limit| Error::Limit {
            path: path.into(),
            limit,
        })?;
    let (mean, std) = preprocessing(path)?;
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
            pooling: Pooling::Last,
        },
        vision: VisionTower::Siglip(VisionConfig {
            width: v.hidden_size,
            intermediate_size: v.intermediate_size,
            layers: v.num_hidden_layers,
            heads: v.num_attention_heads,
            image_size: square(&v.image_size, "vision_config.image_size").map_err(err)?,
            patch_size: square(&v.patch_size, "vision_config.patch_size").map_err(err)?,
            num_channels: v.num_channels,
            activation: activation(&v.hidden_act, "vision_config")?,
            layer_norm_eps: v.layer_norm_eps,
        }),
        embed_dim: v.hidden_size,
        layout: Layout::Transformers,
        image_mean: mean,
        image_std: std,
        squash: true,
    };
    config.validate().map_err(err)?;
    check_preprocessor_size(path, config.vision.image_size())?;
    Ok(config)
}

/// SigLIP's normalisation when `preprocessor_config.json` does not say: mean = std = 0.5.
const SIGLIP_STAT: [f32; 3] = [0.5; 3];

#[derive(Deserialize, Default)]
struct Preprocessor {
    image_mean: Option<[f32; 3]>,
    image_std: Option<[f32; 3]>,
    resample: Option<u32>,
    do_center_crop: Option<bool>,
    size: Option<serde_json::Value>,
    rescale_factor: Option<f64>,
}

fn read_preprocessor(config: &Path) -> Result<Option<(std::path::PathBuf, Preprocessor)>> {
    let path = config.with_file_name("preprocessor_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let p: Preprocessor = serde_json::from_str(&text).map_err(|source| Error::Json {
        path: path.clone(),
        source,
    })?;
    Ok(Some((path, p)))
}

/// Mean and std from `preprocessor_config.json`; what it asks that we do not do is refused.
fn preprocessing(config: &Path) -> Result<([f32; 3], [f32; 3])> {
    let Some((path, p)) = read_preprocessor(config)? else {
        return Ok((SIGLIP_STAT, SIGLIP_STAT));
    };
    let err = |msg: String| Error::Config {
        path: path.clone(),
        msg,
    };
    // PIL.Image.BICUBIC; our resize reproduces Pillow's bicubic only.
    if let Some(r) = p.resample.filter(|&r| r != 3) {
        return Err(err(format!(
            "resample {r} is not supported: only 3 (bicubic) is implemented"
        )));
    }
    if p.do_center_crop == Some(true) {
        return Err(err(
            "do_center_crop is true: SigLIP's preprocessing (resize to the input size) has no crop"
                .into(),
        ));
    }
    if let Some(f) = p.rescale_factor.filter(|f| (f * 255.0 - 1.0).abs() > 1e-9) {
        return Err(err(format!(
            "rescale_factor {f} is not supported: only 1/255 is implemented"
        )));
    }
    Ok((
        p.image_mean.unwrap_or(SIGLIP_STAT),
        p.image_std.unwrap_or(SIGLIP_STAT),
    ))
}

/// `size` (`{"height": h, "width": w}`) must be the model's square input.
fn check_preprocessor_size(config: &Path, image_size: usize) -> Result<()> {
    let Some((path, p)) = read_preprocessor(config)? else {
        return Ok(());
    };
    let Some(size) = p.size else { return Ok(()) };
    let (h, w) = (size["height"].as_u64(), size["width"].as_u64());
    if (h, w) != (Some(image_size as u64), Some(image_size as u64)) {
        return Err(Error::Config {
            path,
            msg: format!(
                "size {size} is not the model's input of {image_size} x {image_size} pixels"
            ),
        });
    }
    Ok(())
}
