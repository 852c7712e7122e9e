//! open_clip's `open_clip_config.json` (`{"model_cfg": {...}, "preprocess_cfg": {...}}`, as on
//! the hub for `timm/resnet50_clip.openai` and the like), and open_clip's architecture presets.
//!
//! open_clip configs grow one option per paper; we read the OpenAI CLIP architecture (ViT or
//! ModifiedResNet image tower, causal text transformer pooled at the argmax token, linear
//! projections). An option that would change that architecture is refused by name rather than
//! ignored, so a model we cannot run exactly is never run approximately.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

use super::config::{
    Activation, ClipConfig, Pooling, ResNetConfig, TextConfig, VisionConfig, VisionTower,
    CLIP_MEAN, CLIP_STD,
};
use super::layout::Layout;
use crate::clip::error::{Error, Result};
use crate::limits::{self, Limit, LimitError};

/// Why a `model_cfg` was refused: a size above its limit (kept typed), or anything else.
#[derive(Debug, thiserror::Error)]
pub enum ModelCfgError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Limit(#[from] LimitError),
}

impl From<String> for ModelCfgError {
    fn from(msg: String) -> Self {
        ModelCfgError::Invalid(msg)
    }
}

impl From<&str> for ModelCfgError {
    fn from(msg: &str) -> Self {
        ModelCfgError::Invalid(msg.to_string())
    }
}

/// open_clip's `model_configs/<name>.json` for the OpenAI architectures (open_clip_torch 3.3.0).
pub const PRESETS: &[(&str, &str)] = &[
    (
        "RN50",
        r#"{"embed_dim":1024,"vision_cfg":{"image_size":224,"layers":[3,4,6,3],"width":64},"text_cfg":{"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "RN101",
        r#"{"embed_dim":512,"vision_cfg":{"image_size":224,"layers":[3,4,23,3],"width":64},"text_cfg":{"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "RN50x4",
        r#"{"embed_dim":640,"vision_cfg":{"image_size":288,"layers":[4,6,10,6],"width":80},"text_cfg":{"width":640,"heads":10,"layers":12}}"#,
    ),
    (
        "RN50x16",
        r#"{"embed_dim":768,"vision_cfg":{"image_size":384,"layers":[6,8,18,8],"width":96},"text_cfg":{"width":768,"heads":12,"layers":12}}"#,
    ),
    (
        "RN50x64",
        r#"{"embed_dim":1024,"vision_cfg":{"image_size":448,"layers":[3,15,36,10],"width":128},"text_cfg":{"width":1024,"heads":16,"layers":12}}"#,
    ),
    (
        "ViT-B-32",
        r#"{"embed_dim":512,"vision_cfg":{"image_size":224,"layers":12,"width":768,"patch_size":32},"text_cfg":{"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "ViT-B-16",
        r#"{"embed_dim":512,"vision_cfg":{"image_size":224,"layers":12,"width":768,"patch_size":16},"text_cfg":{"width":512,"heads":8,"layers":12}}"#,
    ),
    (
        "ViT-L-14",
        r#"{"embed_dim":768,"vision_cfg":{"image_size":224,"layers":24,"width":1024,"patch_size":14},"text_cfg":{"width":768,"heads":12,"layers":12}}"#,
    ),
    (
        "ViT-L-14-336",
        r#"{"embed_dim":768,"vision_cfg":{"image_size":336,"layers":24,"width":1024,"patch_size":14},"text_cfg":{"width":768,"heads":12,"layers":12}}"#,
    ),
];

/// Options that do not change the computation at inference, with any value.
const NEUTRAL: &[&str] = &[
    "patch_dropout",
    "output_tokens",
    "timm_model_pretrained",
    "timm_drop",
    "timm_drop_path",
    "hf_model_pretrained",
    "hf_tokenizer_name",
    "tokenizer_mode",
    "tokenizer_kwargs",
    "pad_id",
    "eos_id",
    "init_logit_scale",
    "cast_dtype",
    "custom_text_cfg_note",
];

/// Architecture options we accept only at their default value.
const DEFAULTS: &[(&str, &str)] = &[
    ("ls_init_value", "null"),
    ("attentional_pool", "false"),
    ("no_ln_pre", "false"),
    ("pos_embed_type", "\"learnable\""),
    ("final_ln_after_pool", "false"),
    ("pool_type", "\"tok\""),
    ("act_kwargs", "null"),
    ("norm_kwargs", "null"),
    ("block_type", "null"),
    ("qk_norm", "false"),
    ("scaled_cosine_attn", "false"),
    ("scale_heads", "false"),
    ("scale_attn_inner", "false"),
    ("scale_attn", "false"),
    ("scale_fc", "false"),
    ("timm_model_name", "null"),
    ("hf_model_name", "null"),
    ("embed_cls", "false"),
    ("no_causal_mask", "false"),
    ("proj_bias", "false"),
    ("proj_type", "\"linear\""),
    ("custom_text", "false"),
    ("init_logit_bias", "null"),
    ("nonscalar_logit_scale", "false"),
];

/// Reads an `open_clip_config.json` of an OpenAI-architecture model (no timm tower).
pub fn from_file(path: &Path) -> Result<ClipConfig> {
    from_file_with_tensors(path, &BTreeMap::new())
}

/// Reads an `open_clip_config.json`; `shapes` are the checkpoint's tensor shapes, from which a
/// timm image tower's sizes are read (see [`super::timm_config`]).
pub fn from_file_with_tensors(
    path: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<ClipConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    from_json_with_tensors(&text, path, shapes)
}

/// The key layout of the weights that go with an `open_clip_config.json`: [`Layout::OpenClipTimm`]
/// when it names a timm image tower, else [`Layout::OpenClip`] (also when the file cannot be
/// read: reading the config then reports why).
pub fn layout_of_file(path: &Path) -> Layout {
    let doc = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok());
    match doc.as_ref().and_then(|d| d.get("model_cfg")) {
        Some(cfg) if super::timm_config::has_timm_tower(cfg) => Layout::OpenClipTimm,
        _ => Layout::OpenClip,
    }
}

/// [`from_file`] on the file's text already in memory; `path` only names it in errors.
pub fn from_json(text: &str, path: &Path) -> Result<ClipConfig> {
    from_json_with_tensors(text, path, &BTreeMap::new())
}

fn from_json_with_tensors(
    text: &str,
    path: &Path,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Result<ClipConfig> {
    let doc: Value = serde_json::from_str(text).map_err(|source| Error::Json {
        path: path.into(),
        source,
    })?;
    let err = |msg: String| Error::Config {
        path: path.into(),
        msg,
    };
    let model_cfg = doc
        .get("model_cfg")
        .ok_or_else(|| err("no `model_cfg` object (expected open_clip's {\"model_cfg\": ..., \"preprocess_cfg\": ...})".into()))?;
    let parsed = match super::timm_config::has_timm_tower(model_cfg) {
        true => super::timm_config::from_model_cfg(model_cfg, shapes),
        false => from_model_cfg(model_cfg),
    };
    let mut config = parsed.map_err(|e| match e {
        ModelCfgError::Invalid(msg) => err(msg),
        ModelCfgError::Limit(limit) => Error::Limit {
            path: path.into(),
            limit,
        },
    })?;
    if let Some(pre) = doc.get("preprocess_cfg") {
        let triple = |key: &str, default: [f32; 3]| -> std::result::Result<[f32; 3], String> {
            match pre.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => serde_json::from_value::<[f32; 3]>(v.clone())
                    .ok()
                    .filter(|t| t.iter().all(|x| x.is_finite()))
                    .ok_or_else(|| {
                        format!("preprocess_cfg.{key} must be three finite numbers, found {v}")
                    }),
            }
        };
        config.image_mean = triple("mean", CLIP_MEAN).map_err(err)?;
        config.image_std = triple("std", CLIP_STD).map_err(err)?;
        // Normalisation divides by the std: a zero (or negative) one gives infinite or
        // mirrored pixels and embeddings that are silently wrong.
        if config.image_std.iter().any(|&s| s <= 0.0) {
            return Err(err(format!(
                "preprocess_cfg.std must be three positive numbers, found {:?}",
                config.image_std
            )));
        }
        // open_clip's `image_transform` at evaluation: `shortest` resizes the short side and
        // crops the centre (CLIP's), `squash` resizes straight to the square (SigLIP's).
        config.squash = match pre.get("resize_mode").and_then(Value::as_str) {
            None | Some("shortest") => false,
            Some("squash") => true,
            Some(other) => {
                return Err(err(format!(
                    "preprocess_cfg.resize_mode `{other}` is not supported: only `shortest` \
                     (resize and centre crop) and `squash` (resize to the square)"
                )))
            }
        };
        if let Some(other) =
            (pre.get("interpolation").and_then(Value::as_str)).filter(|i| *i != "bicubic")
        {
            return Err(err(format!(
                "preprocess_cfg.interpolation `{other}` is not supported: only `bicubic`"
            )));
        }
    }
    Ok(config)
}

/// The preset `model_cfg` of an open_clip model name (`RN50`, `ViT-B-32`, ...).
pub fn preset(name: &str) -> Option<ClipConfig> {
    let (_, json) = PRESETS.iter().find(|(n, _)| *n == name)?;
    let value: Value = serde_json::from_str(json).ok()?;
    from_model_cfg(&value).ok()
}

/// Builds a validated config from a `model_cfg` object.
pub fn from_model_cfg(cfg: &Value) -> std::result::Result<ClipConfig, ModelCfgError> {
    let top = object(cfg, "model_cfg")?;
    check_options(
        top,
        "model_cfg",
        &["embed_dim", "vision_cfg", "text_cfg", "quick_gelu"],
    )?;
    let vision = object(
        top.get("vision_cfg").unwrap_or(&Value::Null),
        "model_cfg.vision_cfg",
    )?;
    let text = object(
        top.get("text_cfg").unwrap_or(&Value::Null),
        "model_cfg.text_cfg",
    )?;
    check_options(
        vision,
        "vision_cfg",
        &[
            "layers",
            "width",
            "head_width",
            "mlp_ratio",
            "patch_size",
            "image_size",
        ],
    )?;
    check_options(
        text,
        "text_cfg",
        &[
            "context_length",
            "vocab_size",
            "width",
            "heads",
            "layers",
            "mlp_ratio",
        ],
    )?;

    // open_clip/model.py: `act_layer = QuickGELU if quick_gelu else nn.GELU`
    let activation = match top
        .get("quick_gelu")
        .and_then(Value::as_bool)
        .unwrap_or(false)
    {
        true => Activation::QuickGelu,
        false => Activation::Gelu,
    };
    // Every size is bounded before it is multiplied or divided (the heads and MLP widths
    // below are products of two of them).
    let embed_dim = uint(top, "embed_dim", None, "model_cfg", &limits::WIDTH)?;
    // The vision tower first: its errors are reported before the text tower's, as they were.
    let vision = vision_tower(vision, activation)?;
    let config = ClipConfig {
        text: text_tower(text, activation)?,
        vision,
        embed_dim,
        layout: Layout::OpenClip,
        image_mean: CLIP_MEAN,
        image_std: CLIP_STD,
        squash: false,
    };
    config.validate()?;
    Ok(config)
}

/// `vision_cfg`: a ModifiedResNet when `layers` lists four stages, else a ViT.
fn vision_tower(
    vision: &Map<String, Value>,
    activation: Activation,
) -> std::result::Result<VisionTower, ModelCfgError> {
    let image_size = uint(
        vision,
        "image_size",
        Some(224),
        "vision_cfg",
        &limits::IMAGE_SIZE,
    )?;
    let width = uint(vision, "width", Some(768), "vision_cfg", &limits::WIDTH)?;
    let head_width = uint(vision, "head_width", Some(64), "vision_cfg", &limits::WIDTH)?.max(1);
    Ok(match vision.get("layers") {
        Some(Value::Array(stages)) => {
            let stages: Vec<usize> = stages
                .iter()
                .map(|v| v.as_u64())
                .collect::<Option<Vec<u64>>>()
                .ok_or("vision_cfg.layers must be 4 integers for a ResNet")?
                .into_iter()
                .enumerate()
                .map(|(i, n)| limits::LAYERS.check(&format!("vision_cfg.layers[{i}]"), n))
                .map(|n| n.map(|n| n as usize))
                .collect::<std::result::Result<_, _>>()?;
            let layers: [usize; 4] = stages.try_into().map_err(|s: Vec<usize>| {
                format!("vision_cfg.layers has {} stages, a ResNet has 4", s.len())
            })?;
            // open_clip/model.py: `vision_heads = vision_cfg.width * 32 // vision_cfg.head_width`
            VisionTower::ResNet(ResNetConfig {
                layers,
                width,
                heads: width * 32 / head_width,
                image_size,
            })
        }
        _ => VisionTower::Vit(VisionConfig {
            width,
            intermediate_size: mlp_width(vision, width, "vision_cfg")?,
            layers: uint(vision, "layers", Some(12), "vision_cfg", &limits::LAYERS)?,
            heads: width / head_width,
            image_size,
            patch_size: uint(
                vision,
                "patch_size",
                Some(16),
                "vision_cfg",
                &limits::PATCH_SIZE,
            )?,
            num_channels: 3,
            activation,
            layer_norm_eps: 1e-5,
        }),
    })
}

/// `text_cfg`: the text transformer, pooled at the argmax (end) token.
pub(super) fn text_tower(
    text: &Map<String, Value>,
    activation: Activation,
) -> std::result::Result<TextConfig, ModelCfgError> {
    let width = uint(text, "width", Some(512), "text_cfg", &limits::WIDTH)?;
    Ok(TextConfig {
        vocab_size: uint(
            text,
            "vocab_size",
            Some(49408),
            "text_cfg",
            &limits::VOCABULARY,
        )?,
        width,
        intermediate_size: mlp_width(text, width, "text_cfg")?,
        layers: uint(text, "layers", Some(12), "text_cfg", &limits::LAYERS)?,
        heads: uint(text, "heads", Some(8), "text_cfg", &limits::HEADS)?,
        context_length: uint(
            text,
            "context_length",
            Some(77),
            "text_cfg",
            &limits::CONTEXT_LENGTH,
        )?,
        activation,
        layer_norm_eps: 1e-5,
        pooling: Pooling::Argmax,
    })
}

pub(super) fn object<'a>(
    v: &'a Value,
    what: &str,
) -> std::result::Result<&'a Map<String, Value>, String> {
    v.as_object()
        .ok_or_else(|| format!("`{what}` must be a JSON object"))
}

/// Refuses any key that is neither read (`known`), neutral, nor at its default value.
pub(super) fn check_options(
    obj: &Map<String, Value>,
    what: &str,
    known: &[&str],
) -> std::result::Result<(), String> {
    for (key, value) in obj {
        if known.contains(&key.as_str()) || NEUTRAL.contains(&key.as_str()) {
            continue;
        }
        match DEFAULTS.iter().find(|(k, _)| k == key) {
            Some((_, default)) if serde_json::from_str::<Value>(default).ok().as_ref() == Some(value) => {}
            Some((_, default)) => {
                return Err(format!(
                    "unsupported model_cfg option {what}.{key} = {value} (only {default} is supported: \
                     clip-adapter runs the OpenAI CLIP architecture)"
                ))
            }
            None => return Err(format!("unknown model_cfg option {what}.{key} = {value}")),
        }
    }
    Ok(())
}

/// A size, within `limit`.
pub(super) fn uint(
    obj: &Map<String, Value>,
    key: &str,
    default: Option<usize>,
    what: &str,
    limit: &Limit,
) -> std::result::Result<usize, ModelCfgError> {
    let n = match obj.get(key) {
        None | Some(Value::Null) => {
            default.ok_or_else(|| format!("{what}.{key} is required"))? as u64
        }
        Some(v) => v
            .as_u64()
            .ok_or_else(|| format!("{what}.{key} must be a non-negative integer, found {v}"))?,
    };
    // Within every limit, so it fits in usize.
    Ok(limit.check(&format!("{what}.{key}"), n)? as usize)
}

/// `width · mlp_ratio`, open_clip's MLP width (`int(width * mlp_ratio)`), within its limit.
fn mlp_width(
    obj: &Map<String, Value>,
    width: usize,
    what: &str,
) -> std::result::Result<usize, ModelCfgError> {
    let ratio = float(obj, "mlp_ratio", 4.0, what)?;
    if !(ratio.is_finite() && ratio > 0.0) {
        return Err(format!("{what}.mlp_ratio must be a positive number, found {ratio}").into());
    }
    // `as` saturates: a product beyond u64 becomes u64::MAX, which the limit refuses.
    let n = (width as f64 * ratio) as u64;
    Ok(limits::MLP_WIDTH.check(&format!("{what}.width x {what}.mlp_ratio"), n)? as usize)
}

fn float(
    obj: &Map<String, Value>,
    key: &str,
    default: f64,
    what: &str,
) -> std::result::Result<f64, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| format!("{what}.{key} must be a number, found {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_have_the_published_shapes() {
        // (name, embed dim, feature width before projection, heads, image size, text width)
        let expected = [
            ("RN50", 1024, 2048, 32, 224, 512),
            ("RN101", 512, 2048, 32, 224, 512),
            ("RN50x4", 640, 2560, 40, 288, 640),
            ("RN50x16", 768, 3072, 48, 384, 768),
            ("RN50x64", 1024, 4096, 64, 448, 1024),
            ("ViT-B-32", 512, 768, 12, 224, 512),
            ("ViT-L-14-336", 768, 1024, 16, 336, 768),
        ];
        for (name, embed, feature, heads, size, text) in expected {
            let c = preset(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(c.embed_dim, embed, "{name}");
            assert_eq!(c.vision.width(), feature, "{name}");
            assert_eq!(c.vision.image_size(), size, "{name}");
            assert_eq!(c.text.width, text, "{name}");
            let h = match &c.vision {
                VisionTower::ResNet(r) => r.heads,
                VisionTower::Vit(v) | VisionTower::Siglip(v) => v.heads,
                VisionTower::Eva(e) => e.heads,
            };
            assert_eq!(h, heads, "{name}");
            assert_eq!(
                c.text.activation,
                Activation::Gelu,
                "open_clip presets without -quickgelu"
            );
        }
    }

    #[test]
    fn mean_and_std_are_three_finite_numbers_and_std_is_positive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("open_clip_config.json");
        let model_cfg: Value = serde_json::from_str(PRESETS[0].1).unwrap();
        let read = |pre: Value| {
            let doc = serde_json::json!({"model_cfg": model_cfg, "preprocess_cfg": pre});
            std::fs::write(&path, doc.to_string()).unwrap();
            from_file(&path).map(|c| (c.image_mean, c.image_std))
        };
        let ok = read(serde_json::json!({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.5, 1.0]}));
        assert_eq!(ok.unwrap(), ([0.5; 3], [0.25, 0.5, 1.0]));
        for (pre, needle) in [
            (
                serde_json::json!({"std": [0, 0, 0]}),
                "preprocess_cfg.std must be three positive",
            ),
            (
                serde_json::json!({"std": [0.2, -0.1, 0.3]}),
                "preprocess_cfg.std must be three positive",
            ),
            (
                serde_json::json!({"std": [0.2, 0.3]}),
                "preprocess_cfg.std must be three finite",
            ),
            (
                serde_json::json!({"mean": [0.5, 0.5, 0.5, 0.5]}),
                "preprocess_cfg.mean must be three finite",
            ),
            (
                serde_json::json!({"mean": [1e300, 0.5, 0.5]}),
                "preprocess_cfg.mean must be three finite",
            ),
            (
                serde_json::json!({"mean": "0.5"}),
                "preprocess_cfg.mean must be three finite",
            ),
        ] {
            let msg = read(pre.clone()).unwrap_err().to_string();
            assert!(
                msg.contains(needle) && msg.contains("open_clip_config.json"),
                "{pre}: {msg}"
            );
        }
    }

    #[test]
    fn architecture_changing_options_are_refused_by_name() {
        let mut cfg: Value = serde_json::from_str(PRESETS[0].1).unwrap();
        cfg["vision_cfg"]["attentional_pool"] = true.into();
        let msg = from_model_cfg(&cfg).unwrap_err().to_string();
        assert!(msg.contains("vision_cfg.attentional_pool"), "{msg}");
        let mut cfg: Value = serde_json::from_str(PRESETS[0].1).unwrap();
        cfg["text_cfg"]["frobnicate"] = 3.into();
        assert!(from_model_cfg(&cfg)
            .unwrap_err()
            .to_string()
            .contains("unknown model_cfg option text_cfg.frobnicate"));
        let mut cfg: Value = serde_json::from_str(PRESETS[0].1).unwrap();
        cfg["quick_gelu"] = true.into();
        cfg["vision_cfg"]["patch_dropout"] = 0.5.into();
        assert_eq!(
            from_model_cfg(&cfg).unwrap().text.activation,
            Activation::QuickGelu
        );
    }
}
