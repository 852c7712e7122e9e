//! open_clip models whose image tower is a timm model (`vision_cfg.timm_model_name`): SigLIP
//! (`ViT-B-16-SigLIP`, `ViT-SO400M-14-SigLIP`, ...: timm's `vit_*_siglip_*`) and EVA02-CLIP
//! (`EVA02-B-16`, `EVA02-L-14`, ...: timm's `eva02_*_clip_*`), each with open_clip's custom text
//! tower (`custom_text: true`, keys under `text.`).
//!
//! open_clip passes timm nothing but the model name, so the name fixes the architecture. What
//! the tensors can say — width, depth, MLP width, patch size, patch grid — is read from them, as
//! OpenAI's `build_model` does; what they cannot — the number of heads, the activation, the
//! rotary settings — comes from a table of the supported names, transcribed from timm's
//! `vision_transformer.py` and `eva.py` (timm 1.0.31). Any other name is refused with the
//! families we run.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::config::{Activation, ClipConfig, EvaConfig, Pooling, VisionConfig, VisionTower};
use super::layout::Layout;
use super::open_clip_config::{check_options, object, text_tower, ModelCfgError};
use crate::limits;

/// timm's SigLIP towers with a MAP head: `(name, heads, activation)`. `_gap_` variants (mean
/// pooling, no head) are not in open_clip's SigLIP configs and are not read.
const SIGLIP_TOWERS: &[(&str, usize, Activation)] = &[
    ("vit_base_patch16_siglip_224", 12, Activation::Gelu),
    ("vit_base_patch16_siglip_256", 12, Activation::Gelu),
    ("vit_base_patch16_siglip_384", 12, Activation::Gelu),
    ("vit_base_patch16_siglip_512", 12, Activation::Gelu),
    ("vit_base_patch32_siglip_256", 12, Activation::GeluTanh),
    ("vit_large_patch16_siglip_256", 16, Activation::Gelu),
    ("vit_large_patch16_siglip_384", 16, Activation::Gelu),
    ("vit_large_patch16_siglip_512", 16, Activation::GeluTanh),
    ("vit_so400m_patch14_siglip_224", 16, Activation::Gelu),
    ("vit_so400m_patch14_siglip_378", 16, Activation::Gelu),
    ("vit_so400m_patch14_siglip_384", 16, Activation::Gelu),
    ("vit_so400m_patch16_siglip_256", 16, Activation::GeluTanh),
    ("vit_so400m_patch16_siglip_384", 16, Activation::GeluTanh),
    ("vit_so400m_patch16_siglip_512", 16, Activation::GeluTanh),
    ("vit_giantopt_patch16_siglip_256", 16, Activation::GeluTanh),
    ("vit_giantopt_patch16_siglip_384", 16, Activation::GeluTanh),
];

/// timm's EVA02-CLIP towers: `(name, heads)`. All of them have q/v biases, SwiGLU with its inner
/// norm (`swiglu_mlp`, `scale_mlp`), the attention's inner norm (`scale_attn_inner`), rotary
/// embeddings with a (16, 16) reference grid, and class-token pooling. `eva02_enormous_*`
/// (post-norm blocks, no rotary embeddings) is a different architecture and is not read.
const EVA02_TOWERS: &[(&str, usize)] = &[
    ("eva02_base_patch16_clip_224", 12),
    ("eva02_large_patch14_clip_224", 16),
    ("eva02_large_patch14_clip_336", 16),
];

/// `ref_feat_shape` of every EVA02-CLIP tower (`224 / 14`).
const EVA02_ROPE_GRID: [usize; 2] = [16, 16];
/// timm's `LayerNorm` default, which both families use.
const TIMM_EPS: f64 = 1e-6;

const TRUNK: &str = "visual.trunk.";

/// Whether a `model_cfg` names a timm image tower.
pub fn has_timm_tower(model_cfg: &Value) -> bool {
    model_cfg
        .get("vision_cfg")
        .and_then(|v| v.get("timm_model_name"))
        .is_some_and(|n| !n.is_null())
}

enum Family {
    Siglip {
        heads: usize,
        activation: Activation,
    },
    Eva02 {
        heads: usize,
    },
}

fn family(name: &str) -> Option<Family> {
    if let Some((_, heads, activation)) = SIGLIP_TOWERS.iter().find(|(n, ..)| *n == name) {
        return Some(Family::Siglip {
            heads: *heads,
            activation: *activation,
        });
    }
    EVA02_TOWERS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, heads)| Family::Eva02 { heads: *heads })
}

/// The config of an open_clip model with a timm image tower; `shapes` are the checkpoint's
/// tensor shapes by stored name.
pub fn from_model_cfg(
    cfg: &Value,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> std::result::Result<ClipConfig, ModelCfgError> {
    let top = object(cfg, "model_cfg")?;
    check_options(
        top,
        "model_cfg",
        &[
            "embed_dim",
            "vision_cfg",
            "text_cfg",
            "quick_gelu",
            "custom_text",
            "init_logit_bias",
        ],
    )?;
    let vision = object(
        top.get("vision_cfg").unwrap_or(&Value::Null),
        "model_cfg.vision_cfg",
    )?;
    let text = object(
        top.get("text_cfg").unwrap_or(&Value::Null),
        "model_cfg.text_cfg",
    )?;
    let name = vision
        .get("timm_model_name")
        .and_then(Value::as_str)
        .ok_or("vision_cfg.timm_model_name must be a string")?;
    let Some(family) = family(name) else {
        return Err(format!(
            "unsupported vision_cfg.timm_model_name `{name}`: the timm towers read are SigLIP's \
             (`vit_{{base,large,so400m,giantopt}}_patch*_siglip_*`, MAP head) and EVA02-CLIP's \
             (`eva02_base_patch16_clip_224`, `eva02_large_patch14_clip_{{224,336}}`)"
        )
        .into());
    };
    if top.get("custom_text").and_then(Value::as_bool) != Some(true) {
        return Err(format!(
            "model_cfg.custom_text must be true with the timm tower `{name}` (open_clip's \
             CustomTextCLIP, the layout of its SigLIP and EVA02 models)"
        )
        .into());
    }
    // timm's own size arguments are ignored by open_clip when a timm model is named.
    check_options(
        vision,
        "vision_cfg",
        &[
            "image_size",
            "timm_model_name",
            "timm_pool",
            "timm_proj",
            "timm_proj_bias",
            "layers",
            "width",
            "head_width",
            "mlp_ratio",
            "patch_size",
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
            "no_causal_mask",
            "proj_bias",
            "pool_type",
            "norm_kwargs",
            "act_kwargs",
        ],
    )?;
    let siglip = matches!(family, Family::Siglip { .. });
    // open_clip's VisionCfg defaults: timm_pool 'avg', timm_proj 'linear', no bias.
    let (pool, proj) = match siglip {
        true => ("map", Some("none")),
        false => ("token", None),
    };
    expect(
        vision,
        "vision_cfg",
        "timm_pool",
        Some(pool),
        Some("avg"),
        name,
    )?;
    expect(
        vision,
        "vision_cfg",
        "timm_proj",
        proj,
        Some("linear"),
        name,
    )?;
    if vision.get("timm_proj_bias").and_then(Value::as_bool) == Some(true) {
        return Err("unsupported model_cfg option vision_cfg.timm_proj_bias = true".into());
    }
    // SigLIP's text tower attends both ways, pools the last position and projects with a bias;
    // EVA02's is CLIP's.
    let flag = |key: &str| text.get(key).and_then(Value::as_bool).unwrap_or(false);
    let pool_type = text.get("pool_type").and_then(Value::as_str);
    let (want_pool, want_flags) = match siglip {
        true => ("last", true),
        false => ("argmax", false),
    };
    if pool_type.unwrap_or("argmax") != want_pool
        || flag("no_causal_mask") != want_flags
        || flag("proj_bias") != want_flags
    {
        return Err(format!(
            "text_cfg of `{name}`: expected pool_type `{want_pool}`, no_causal_mask {want_flags} \
             and proj_bias {want_flags} (found {}, {}, {})",
            pool_type.unwrap_or("argmax (default)"),
            flag("no_causal_mask"),
            flag("proj_bias"),
        )
        .into());
    }
    let logit_bias = top.get("init_logit_bias").is_some_and(|v| !v.is_null());
    if logit_bias != siglip {
        return Err(match siglip {
            true => format!("`{name}` is a SigLIP tower but model_cfg has no init_logit_bias"),
            false => format!(
                "unsupported model_cfg option init_logit_bias with `{name}` (a sigmoid-loss \
                 EVA02 model)"
            ),
        }
        .into());
    }

    let quick_gelu = top.get("quick_gelu").and_then(Value::as_bool) == Some(true);
    let text_activation = text_activation(text, quick_gelu)?;
    let mut text_config = text_tower(text, text_activation)?;
    text_config.layer_norm_eps = norm_eps(text)?;
    if siglip {
        text_config.pooling = Pooling::Last;
    }
    let embed_dim =
        super::open_clip_config::uint(top, "embed_dim", None, "model_cfg", &limits::WIDTH)?;
    let image_size = super::open_clip_config::uint(
        vision,
        "image_size",
        Some(224),
        "vision_cfg",
        &limits::IMAGE_SIZE,
    )?;
    let tower = Tower::read(shapes, name, siglip)?;
    // timm's patch embedding takes `image_size // patch` patches a side and, for SigLIP towers
    // (`vit_so400m_patch14_siglip_384`: 27 patches of 14 over 384 px), drops the rest.
    let fits = match siglip {
        true => image_size / tower.patch == tower.grid,
        false => image_size == tower.image_size(),
    };
    if !fits {
        return Err(format!(
            "vision_cfg.image_size is {image_size}, but the `{name}` tower's tensors take \
             {0} x {0} pixels ({1} x {1} patches of {2})",
            tower.image_size(),
            tower.grid,
            tower.patch
        )
        .into());
    }
    let vision = match family {
        Family::Siglip { heads, activation } => {
            if embed_dim != tower.width {
                return Err(format!(
                    "model_cfg.embed_dim {embed_dim} differs from the width {} of the SigLIP \
                     tower, whose pooled output is the embedding",
                    tower.width
                )
                .into());
            }
            VisionTower::Siglip(VisionConfig {
                width: tower.width,
                intermediate_size: tower.mlp,
                layers: tower.layers,
                heads,
                image_size,
                patch_size: tower.patch,
                num_channels: 3,
                activation,
                layer_norm_eps: TIMM_EPS,
            })
        }
        Family::Eva02 { heads } => VisionTower::Eva(EvaConfig {
            width: tower.width,
            intermediate_size: tower.mlp,
            layers: tower.layers,
            heads,
            image_size,
            patch_size: tower.patch,
            layer_norm_eps: TIMM_EPS,
            rope_reference_grid: Some(EVA02_ROPE_GRID),
            rope_temperature: 10000.0,
        }),
    };
    let config = ClipConfig {
        text: text_config,
        vision,
        embed_dim,
        layout: Layout::OpenClipTimm,
        image_mean: super::config::CLIP_MEAN,
        image_std: super::config::CLIP_STD,
        squash: false,
    };
    config.validate()?;
    Ok(config)
}

/// A string option that must have one value; `default` is open_clip's when absent.
fn expect(
    obj: &Map<String, Value>,
    what: &str,
    key: &str,
    want: Option<&str>,
    default: Option<&str>,
    name: &str,
) -> std::result::Result<(), String> {
    let found = match obj.get(key) {
        None => default,
        Some(Value::Null) => None,
        Some(v) => Some(
            v.as_str()
                .ok_or_else(|| format!("{what}.{key} must be a string or null, found {v}"))?,
        ),
    };
    if found == want {
        return Ok(());
    }
    let show = |v: Option<&str>| v.map_or("null".to_string(), |s| format!("\"{s}\""));
    Err(format!(
        "unsupported {what}.{key} = {} with `{name}` (only {} is supported)",
        show(found),
        show(want)
    ))
}

/// The text tower's activation: `nn.GELU`, or `QuickGELU` with `quick_gelu`, given
/// `text_cfg.act_kwargs` (SigLIP 2's `{"approximate": "tanh"}`).
fn text_activation(
    text: &Map<String, Value>,
    quick_gelu: bool,
) -> std::result::Result<Activation, String> {
    let Some(kwargs) = text.get("act_kwargs").filter(|v| !v.is_null()) else {
        return Ok(match quick_gelu {
            true => Activation::QuickGelu,
            false => Activation::Gelu,
        });
    };
    let kwargs = kwargs
        .as_object()
        .ok_or_else(|| format!("text_cfg.act_kwargs must be an object, found {kwargs}"))?;
    if quick_gelu && !kwargs.is_empty() {
        return Err(
            "unsupported text_cfg.act_kwargs with quick_gelu (QuickGELU takes none)".into(),
        );
    }
    if let Some(key) = kwargs.keys().find(|k| *k != "approximate") {
        return Err(format!(
            "unsupported text_cfg.act_kwargs.{key} (only approximate is supported)"
        ));
    }
    match kwargs.get("approximate").map(|v| v.as_str()) {
        None | Some(Some("none")) => Ok(if quick_gelu {
            Activation::QuickGelu
        } else {
            Activation::Gelu
        }),
        Some(Some("tanh")) => Ok(Activation::GeluTanh),
        Some(_) => Err(format!(
            "text_cfg.act_kwargs.approximate must be \"none\" or \"tanh\", found {}",
            kwargs["approximate"]
        )),
    }
}

/// `text_cfg.norm_kwargs`: only `eps` changes anything we run.
fn norm_eps(text: &Map<String, Value>) -> std::result::Result<f64, String> {
    let Some(kwargs) = text.get("norm_kwargs").filter(|v| !v.is_null()) else {
        return Ok(1e-5);
    };
    let kwargs = kwargs
        .as_object()
        .ok_or_else(|| format!("text_cfg.norm_kwargs must be an object, found {kwargs}"))?;
    if let Some(key) = kwargs.keys().find(|k| *k != "eps") {
        return Err(format!(
            "unsupported text_cfg.norm_kwargs.{key} (only eps is supported)"
        ));
    }
    match kwargs.get("eps") {
        None => Ok(1e-5),
        Some(v) => v
            .as_f64()
            .filter(|e| e.is_finite() && *e > 0.0)
            .ok_or_else(|| {
                format!("text_cfg.norm_kwargs.eps must be a positive number, found {v}")
            }),
    }
}

/// The sizes of a timm tower, read from its tensors.
struct Tower {
    width: usize,
    patch: usize,
    grid: usize,
    layers: usize,
    mlp: usize,
}

impl Tower {
    fn image_size(&self) -> usize {
        self.grid * self.patch
    }

    fn read(
        shapes: &BTreeMap<String, Vec<usize>>,
        name: &str,
        siglip: bool,
    ) -> std::result::Result<Self, ModelCfgError> {
        let get = |key: &str, rank: usize| -> std::result::Result<&[usize], String> {
            let full = format!("{TRUNK}{key}");
            match shapes.get(&full) {
                Some(s) if s.len() == rank => Ok(s),
                Some(s) => Err(format!(
                    "the weights' `{full}` has shape {s:?}, a `{name}` tower has {rank} dimensions there"
                )),
                None => Err(format!(
                    "the weights have no `{full}`, which a `{name}` tower has"
                )),
            }
        };
        let conv = get("patch_embed.proj.weight", 4)?;
        let (width, channels, patch) = (conv[0], conv[1], conv[2]);
        if channels != 3 || conv[3] != patch {
            return Err(format!(
                "`{TRUNK}patch_embed.proj.weight` has shape {conv:?}: expected [width, 3, p, p]"
            )
            .into());
        }
        limits::WIDTH.check("vision width", width)?;
        limits::PATCH_SIZE.check("vision patch size", patch)?;
        let positions = get("pos_embed", 3)?;
        // SigLIP's tower has no class token; EVA02's embeds it with the patches.
        let prefix = usize::from(!siglip);
        let patches = positions[1].saturating_sub(prefix);
        let grid = (patches as f64).sqrt().round() as usize;
        if positions[0] != 1 || positions[2] != width || grid * grid != patches || grid == 0 {
            return Err(format!(
                "`{TRUNK}pos_embed` has shape {positions:?}: expected [1, g * g{}, {width}]",
                if siglip { "" } else { " + 1" }
            )
            .into());
        }
        let layers = (0..)
            .take_while(|i| shapes.contains_key(&format!("{TRUNK}blocks.{i}.norm1.weight")))
            .count();
        limits::LAYERS.check("vision layers", layers)?;
        let fc1 = match siglip {
            true => "blocks.0.mlp.fc1.weight",
            false => "blocks.0.mlp.fc1_g.weight",
        };
        let mlp = get(fc1, 2)?[0];
        limits::MLP_WIDTH.check("vision MLP width", mlp)?;
        Ok(Tower {
            width,
            patch,
            grid,
            layers,
            mlp,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SigLIP tower of width 48, or an EVA02 one of width 64 (16 heads of 4 channels).
    fn shapes(siglip: bool) -> BTreeMap<String, Vec<usize>> {
        let mut s = BTreeMap::new();
        let t = |k: &str| format!("{TRUNK}{k}");
        let d = if siglip { 48 } else { 64 };
        s.insert(t("patch_embed.proj.weight"), vec![d, 3, 8, 8]);
        s.insert(t("pos_embed"), vec![1, 16 + usize::from(!siglip), d]);
        for i in 0..3 {
            s.insert(t(&format!("blocks.{i}.norm1.weight")), vec![d]);
        }
        s.insert(t("blocks.0.mlp.fc1.weight"), vec![192, d]);
        s.insert(t("blocks.0.mlp.fc1_g.weight"), vec![80, d]);
        s
    }

    fn siglip_cfg() -> Value {
        serde_json::json!({
            "embed_dim": 48, "init_logit_bias": -10, "custom_text": true,
            "vision_cfg": {"image_size": 32, "timm_model_name": "vit_so400m_patch16_siglip_256",
                           "timm_model_pretrained": false, "timm_pool": "map", "timm_proj": "none"},
            "text_cfg": {"context_length": 64, "vocab_size": 400, "width": 32, "heads": 2,
                         "layers": 2, "no_causal_mask": true, "proj_bias": true,
                         "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
                         "hf_tokenizer_name": "timm/x", "tokenizer_kwargs": {"clean": "canonicalize"}}
        })
    }

    #[test]
    fn sizes_come_from_the_tensors_and_the_rest_from_the_name() {
        let c = from_model_cfg(&siglip_cfg(), &shapes(true)).unwrap();
        let VisionTower::Siglip(v) = &c.vision else {
            panic!("{c:?}")
        };
        assert_eq!(
            (
                v.width,
                v.layers,
                v.intermediate_size,
                v.patch_size,
                v.image_size
            ),
            (48, 3, 192, 8, 32)
        );
        assert_eq!((v.heads, v.activation), (16, Activation::GeluTanh));
        assert_eq!(c.text.pooling, Pooling::Last);
        assert_eq!(c.text.layer_norm_eps, 1e-6);
        assert_eq!(c.layout, Layout::OpenClipTimm);

        let eva = serde_json::json!({
            "embed_dim": 16, "custom_text": true,
            "vision_cfg": {"image_size": 32, "timm_model_name": "eva02_large_patch14_clip_224",
                           "timm_pool": "token", "timm_proj": null},
            "text_cfg": {"width": 8, "heads": 2, "layers": 2}
        });
        let c = from_model_cfg(&eva, &shapes(false)).unwrap();
        let VisionTower::Eva(e) = &c.vision else {
            panic!("{c:?}")
        };
        assert_eq!((e.width, e.heads, e.intermediate_size), (64, 16, 80));
        assert_eq!(e.rope_reference_grid, Some([16, 16]));
        assert_eq!(c.text.pooling, Pooling::Argmax);
    }

    /// `ViT-SO400M-14-SigLIP-384`'s rule (384 px, 27 patches of 14): a SigLIP tower's image size
    /// may run past its last whole patch, up to a patch less one pixel; EVA02's may not.
    #[test]
    fn a_siglip_image_size_may_leave_pixels_past_the_last_patch() {
        let with_size = |mut cfg: Value, size: usize| {
            cfg["vision_cfg"]["image_size"] = size.into();
            cfg
        };
        for size in [32, 35, 39] {
            let c = from_model_cfg(&with_size(siglip_cfg(), size), &shapes(true)).unwrap();
            let VisionTower::Siglip(v) = &c.vision else {
                panic!("{c:?}")
            };
            assert_eq!((v.image_size, v.grid()), (size, 4));
        }
        let err = from_model_cfg(&with_size(siglip_cfg(), 40), &shapes(true)).unwrap_err();
        assert!(
            err.to_string().contains("vision_cfg.image_size is 40"),
            "{err}"
        );
        let eva = serde_json::json!({
            "embed_dim": 16, "custom_text": true,
            "vision_cfg": {"image_size": 35, "timm_model_name": "eva02_large_patch14_clip_224",
                           "timm_pool": "token", "timm_proj": null},
            "text_cfg": {"width": 8, "heads": 2, "layers": 2}
        });
        let err = from_model_cfg(&eva, &shapes(false)).unwrap_err();
        assert!(
            err.to_string().contains("vision_cfg.image_size is 35"),
            "{err}"
        );
    }

    /// SigLIP 2's text towers: `act_kwargs: {"approximate": "tanh"}` is tanh GELU.
    #[test]
    fn text_act_kwargs_choose_the_gelu() {
        let activation = |kwargs: Value| {
            let mut cfg = siglip_cfg();
            cfg["text_cfg"]["act_kwargs"] = kwargs;
            from_model_cfg(&cfg, &shapes(true)).map(|c| c.text.activation)
        };
        let tanh = serde_json::json!({"approximate": "tanh"});
        assert_eq!(activation(tanh).unwrap(), Activation::GeluTanh);
        let none = serde_json::json!({"approximate": "none"});
        assert_eq!(activation(none).unwrap(), Activation::Gelu);
        assert_eq!(activation(Value::Null).unwrap(), Activation::Gelu);
        let other = serde_json::json!({"inplace": true});
        let msg = activation(other).unwrap_err().to_string();
        assert!(msg.contains("act_kwargs.inplace"), "{msg}");
    }

    #[test]
    fn what_we_do_not_run_is_refused_by_name() {
        let cases: [(&str, Value, &str); 7] = [
            ("timm_model_name", "convnext_base".into(), "convnext_base"),
            (
                "timm_model_name",
                "vit_base_patch16_siglip_gap_224".into(),
                "siglip_gap",
            ),
            ("timm_pool", "avg".into(), "vision_cfg.timm_pool = \"avg\""),
            (
                "timm_proj",
                "linear".into(),
                "vision_cfg.timm_proj = \"linear\"",
            ),
            ("image_size", 224.into(), "vision_cfg.image_size is 224"),
            (
                "timm_model_name",
                "eva02_enormous_patch14_clip_224".into(),
                "eva02_enormous",
            ),
            (
                "timm_model_name",
                "eva02_base_patch16_clip_224".into(),
                "only \"token\"",
            ),
        ];
        for (key, value, needle) in cases {
            let mut cfg = siglip_cfg();
            cfg["vision_cfg"][key] = value;
            let msg = from_model_cfg(&cfg, &shapes(true)).unwrap_err().to_string();
            assert!(msg.contains(needle), "{key}: {msg}");
        }
        let mut cfg = siglip_cfg();
        cfg["text_cfg"]["no_causal_mask"] = false.into();
        let msg = from_model_cfg(&cfg, &shapes(true)).unwrap_err().to_string();
        assert!(msg.contains("no_causal_mask"), "{msg}");
        let mut cfg = siglip_cfg();
        cfg["custom_text"] = false.into();
        let msg = from_model_cfg(&cfg, &shapes(true)).unwrap_err().to_string();
        assert!(msg.contains("custom_text"), "{msg}");
        let mut s = shapes(true);
        s.remove(&format!("{TRUNK}pos_embed"));
        let msg = from_model_cfg(&siglip_cfg(), &s).unwrap_err().to_string();
        assert!(msg.contains("visual.trunk.pos_embed"), "{msg}");
    }
}
