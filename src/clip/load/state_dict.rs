//! The architecture of an OpenAI CLIP checkpoint, read from its tensor shapes alone.
//!
//! OpenAI's files (`RN50.pt`, `ViT-B-32.pt`, ... and state dicts saved from them) carry no config:
//! `clip/model.py`'s `build_model(state_dict)` derives one from the shapes, and so does
//! [`infer_config`], rule for rule:
//! - a ViT when `visual.proj` exists, else a ModifiedResNet;
//! - ViT: width and patch size from `visual.conv1.weight` `[width, 3, p, p]`, layers = the number
//!   of `visual.*.attn.in_proj_weight`, image size = patch · √(positions − 1);
//! - ModifiedResNet: blocks per stage = distinct `visual.layer{1..4}.<i>`, width = rows of
//!   `visual.layer1.0.conv1.weight`, image size = 32 · √(attention-pool positions − 1);
//! - text: embed dim = columns of `text_projection`, context length = rows of
//!   `positional_embedding`, vocabulary = rows of `token_embedding.weight`, width = length of
//!   `ln_final.weight`, layers = distinct `transformer.resblocks.<i>`;
//! - heads are `width // 64` (ViT, text) and `width · 32 // 64` (attention pool), QuickGELU in
//!   every transformer, LayerNorm ε = 1e-5, text pooled at the argmax token.

use std::collections::{BTreeMap, BTreeSet};

use super::config::{
    Activation, ClipConfig, Pooling, ResNetConfig, TextConfig, VisionConfig, VisionTower,
    CLIP_MEAN, CLIP_STD,
};
use super::layout::Layout;

/// Scalar buffers of OpenAI's TorchScript archives that `build_model` drops after reading
/// (`clip.py` uses `model.input_resolution.item()`): they must agree with the inferred config.
pub const OPENAI_BUFFERS: &[&str] = &["input_resolution", "context_length", "vocab_size"];

/// The head width of every OpenAI CLIP attention (`build_model`: `width // 64`).
const HEAD_WIDTH: usize = 64;

/// Why tensor shapes are not those of an OpenAI CLIP checkpoint.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InferError {
    #[error("`{key}` has shape {shape:?}, expected {rank} dimensions")]
    Rank {
        key: String,
        shape: Vec<usize>,
        rank: usize,
    },
    #[error("no tensor `{key}`: not an OpenAI CLIP checkpoint ({found})")]
    Missing { key: String, found: String },
    #[error("`{key}` has {positions} positions, not a square grid plus one class position")]
    Grid { key: String, positions: usize },
    #[error(
        "not an OpenAI CLIP checkpoint: no `visual.proj` (a ViT) and no `visual.layer{stage}.*` \
         blocks (a ModifiedResNet); {found}"
    )]
    NoTower { stage: usize, found: String },
    #[error("{0}")]
    Inconsistent(String),
}

/// The config `build_model` would build for tensors of these shapes.
pub fn infer_config(shapes: &BTreeMap<String, Vec<usize>>) -> Result<ClipConfig, InferError> {
    let found = || {
        let examples: Vec<String> = shapes.keys().take(3).map(|k| format!("`{k}`")).collect();
        format!(
            "it has {} tensors, e.g. {}",
            shapes.len(),
            examples.join(", ")
        )
    };
    let get = |key: &str, rank: usize| -> Result<&[usize], InferError> {
        match shapes.get(key) {
            Some(s) if s.len() == rank => Ok(s),
            Some(s) => Err(InferError::Rank {
                key: key.to_string(),
                shape: s.clone(),
                rank,
            }),
            None => Err(InferError::Missing {
                key: key.to_string(),
                found: found(),
            }),
        }
    };
    // `round((n - 1) ** 0.5)`, required to be exact (`build_model` asserts it for the ResNet).
    let grid = |key: &str| -> Result<usize, InferError> {
        let n = get(key, 2)?[0];
        let g = ((n.saturating_sub(1)) as f64).sqrt().round() as usize;
        if g == 0 || g * g + 1 != n {
            return Err(InferError::Grid {
                key: key.to_string(),
                positions: n,
            });
        }
        Ok(g)
    };
    // The distinct block indices `<i>` of `<prefix><i>.…`.
    let blocks = |prefix: &str| -> usize {
        shapes
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.split('.').next())
            .collect::<BTreeSet<_>>()
            .len()
    };

    let vision = if shapes.contains_key("visual.proj") {
        let conv = get("visual.conv1.weight", 4)?;
        let (width, patch) = (conv[0], conv[3]);
        let layers = shapes
            .keys()
            .filter(|k| k.starts_with("visual.") && k.ends_with(".attn.in_proj_weight"))
            .count();
        VisionTower::Vit(VisionConfig {
            width,
            intermediate_size: 4 * width,
            layers,
            heads: width / HEAD_WIDTH,
            image_size: patch * grid("visual.positional_embedding")?,
            patch_size: patch,
            num_channels: 3,
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        })
    } else {
        let mut layers = [0; 4];
        for (stage, n) in layers.iter_mut().enumerate() {
            *n = blocks(&format!("visual.layer{}.", stage + 1));
            if *n == 0 {
                return Err(InferError::NoTower {
                    stage: stage + 1,
                    found: found(),
                });
            }
        }
        let width = get("visual.layer1.0.conv1.weight", 4)?[0];
        VisionTower::ResNet(ResNetConfig {
            layers,
            width,
            heads: width * 32 / HEAD_WIDTH,
            image_size: 32 * grid("visual.attnpool.positional_embedding")?,
        })
    };
    let text_width = get("ln_final.weight", 1)?[0];
    let config = ClipConfig {
        text: TextConfig {
            vocab_size: get("token_embedding.weight", 2)?[0],
            width: text_width,
            intermediate_size: 4 * text_width,
            layers: blocks("transformer.resblocks."),
            heads: text_width / HEAD_WIDTH,
            context_length: get("positional_embedding", 2)?[0],
            activation: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            pooling: Pooling::Argmax,
        },
        vision,
        embed_dim: get("text_projection", 2)?[1],
        layout: Layout::OpenClip,
        image_mean: CLIP_MEAN,
        image_std: CLIP_STD,
        squash: false,
    };
    config.validate().map_err(InferError::Inconsistent)?;
    Ok(config)
}

/// The value each of [`OPENAI_BUFFERS`] must hold for `config`.
pub fn buffer_value(config: &ClipConfig, name: &str) -> Option<usize> {
    match name {
        "input_resolution" => Some(config.vision.image_size()),
        "context_length" => Some(config.text.context_length),
        "vocab_size" => Some(config.text.vocab_size),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clip::load::open_clip_config::preset;

    /// The shapes of a full OpenAI state dict for a config (as `build_model` would meet them).
    fn shapes_of(c: &ClipConfig) -> BTreeMap<String, Vec<usize>> {
        let mut s = BTreeMap::new();
        let t = &c.text;
        s.insert("token_embedding.weight".into(), vec![t.vocab_size, t.width]);
        s.insert(
            "positional_embedding".into(),
            vec![t.context_length, t.width],
        );
        s.insert("ln_final.weight".into(), vec![t.width]);
        s.insert("text_projection".into(), vec![t.width, c.embed_dim]);
        for i in 0..t.layers {
            s.insert(
                format!("transformer.resblocks.{i}.attn.in_proj_weight"),
                vec![3 * t.width, t.width],
            );
            s.insert(
                format!("transformer.resblocks.{i}.ln_1.weight"),
                vec![t.width],
            );
        }
        match &c.vision {
            VisionTower::Vit(v) => {
                let p = v.patch_size;
                s.insert("visual.proj".into(), vec![v.width, c.embed_dim]);
                s.insert("visual.conv1.weight".into(), vec![v.width, 3, p, p]);
                s.insert(
                    "visual.positional_embedding".into(),
                    vec![v.num_positions(), v.width],
                );
                for i in 0..v.layers {
                    s.insert(
                        format!("visual.transformer.resblocks.{i}.attn.in_proj_weight"),
                        vec![3 * v.width, v.width],
                    );
                }
            }
            VisionTower::ResNet(r) => {
                for (stage, &n) in r.layers.iter().enumerate() {
                    for b in 0..n {
                        let planes = r.width << stage;
                        s.insert(
                            format!("visual.layer{}.{b}.conv1.weight", stage + 1),
                            vec![planes, 4 * planes, 1, 1],
                        );
                        s.insert(
                            format!("visual.layer{}.{b}.bn1.weight", stage + 1),
                            vec![planes],
                        );
                    }
                }
                s.insert(
                    "visual.attnpool.positional_embedding".into(),
                    vec![r.grid() * r.grid() + 1, r.feature_dim()],
                );
            }
            // No open_clip preset used here is a SigLIP model (those load from transformers'
            // layout, not an OpenAI state dict).
            VisionTower::Siglip(_) | VisionTower::Eva(_) => {
                panic!("shapes_of: an OpenAI layout has no SigLIP or EVA02 tower")
            }
        }
        s
    }

    /// OpenAI's nine released models have open_clip's preset shapes; their inferred configs
    /// must match them (up to the activation: OpenAI's models all use QuickGELU).
    #[test]
    fn infers_every_released_architecture() {
        for name in [
            "RN50",
            "RN101",
            "RN50x4",
            "RN50x16",
            "RN50x64",
            "ViT-B-32",
            "ViT-B-16",
            "ViT-L-14",
            "ViT-L-14-336",
        ] {
            let mut want = preset(name).unwrap();
            want.text.activation = Activation::QuickGelu;
            if let VisionTower::Vit(v) = &mut want.vision {
                v.activation = Activation::QuickGelu;
            }
            let got = infer_config(&shapes_of(&want)).unwrap();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn names_what_is_missing_or_odd() {
        let mut s = shapes_of(&preset("ViT-B-32").unwrap());
        s.remove("ln_final.weight");
        let err = infer_config(&s).unwrap_err();
        assert!(matches!(&err, InferError::Missing { key, .. } if key == "ln_final.weight"));
        let msg = err.to_string();
        assert!(msg.contains("no tensor `ln_final.weight`"), "{msg}");

        let mut s = shapes_of(&preset("RN50").unwrap());
        s.insert(
            "visual.attnpool.positional_embedding".into(),
            vec![48, 2048],
        );
        let err = infer_config(&s).unwrap_err();
        assert!(
            matches!(err, InferError::Grid { positions: 48, .. }),
            "{err}"
        );

        let msg = infer_config(&BTreeMap::from([("w".to_string(), vec![3])]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("not an OpenAI CLIP checkpoint") && msg.contains("`w`"),
            "{msg}"
        );
    }
}
