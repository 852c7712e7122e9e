//! Checkpoint key layouts. The ViT and text towers are written with `transformers`' parameter
//! names; a checkpoint in open_clip's (= OpenAI's) layout is read through the map below, so the
//! model code is the same for both. The ResNet tower is written with open_clip's names (the only
//! layout it exists in), which pass through unchanged.
//!
//! open_clip differs in three ways besides names: q/k/v are one `in_proj_weight` (3·D rows,
//! split here at load time), the projections are stored as `[D, E]` matrices applied as `x @ P`
//! (transposed here into `[E, D]` Linear weights), and positional embeddings are bare parameters.

use std::collections::HashMap;

use candle_core::Tensor;

/// The key layout of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `transformers`' `CLIPModel` (`vision_model.encoder.layers.0.self_attn.q_proj.weight`).
    Transformers,
    /// open_clip's `CLIP` and OpenAI's original (`visual.transformer.resblocks.0.attn.in_proj_weight`).
    OpenClip,
}

/// How a source tensor becomes the requested one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Identity,
    /// A 2-D matrix stored the other way round.
    Transpose,
    /// Part `index` of 3 equal blocks of rows (q, k, v of a fused projection).
    Third {
        index: usize,
    },
}

/// Where the tensor a model asks for (by its `transformers` name) lives in a checkpoint.
pub fn source_key(layout: Layout, name: &str) -> (String, Transform) {
    match layout {
        Layout::Transformers => (name.to_string(), Transform::Identity),
        Layout::OpenClip => open_clip_key(name),
    }
}

fn open_clip_key(name: &str) -> (String, Transform) {
    let same = |k: &str| (k.to_string(), Transform::Identity);
    if let Some(rest) = name.strip_prefix("text_model.") {
        return match rest {
            "embeddings.token_embedding.weight" => same("token_embedding.weight"),
            "embeddings.position_embedding.weight" => same("positional_embedding"),
            _ => match rest.strip_prefix("final_layer_norm.") {
                Some(p) => same(&format!("ln_final.{p}")),
                None => encoder_key(rest, "transformer.resblocks."),
            },
        };
    }
    if let Some(rest) = name.strip_prefix("vision_model.") {
        return match rest {
            "embeddings.class_embedding" => same("visual.class_embedding"),
            "embeddings.patch_embedding.weight" => same("visual.conv1.weight"),
            "embeddings.position_embedding.weight" => same("visual.positional_embedding"),
            _ => {
                if let Some(p) = rest.strip_prefix("pre_layrnorm.") {
                    same(&format!("visual.ln_pre.{p}"))
                } else if let Some(p) = rest.strip_prefix("post_layernorm.") {
                    same(&format!("visual.ln_post.{p}"))
                } else {
                    encoder_key(rest, "visual.transformer.resblocks.")
                }
            }
        };
    }
    match name {
        "text_projection.weight" => ("text_projection".into(), Transform::Transpose),
        "visual_projection.weight" => ("visual.proj".into(), Transform::Transpose),
        _ => same(name),
    }
}

/// `encoder.layers.N.<block key>` -> `<prefix>N.<open_clip block key>`.
fn encoder_key(rest: &str, prefix: &str) -> (String, Transform) {
    let Some(layer) = rest.strip_prefix("encoder.layers.") else {
        return (rest.to_string(), Transform::Identity);
    };
    let (index, key) = layer.split_once('.').unwrap_or((layer, ""));
    let renamed = |k: &str| format!("{prefix}{index}.{k}");
    let qkv = |param: &str, which: &str| {
        let part = ["q_proj", "k_proj", "v_proj"]
            .iter()
            .position(|p| *p == which)
            .unwrap_or(0);
        (
            renamed(&format!("attn.in_proj_{param}")),
            Transform::Third { index: part },
        )
    };
    let pairs = [
        ("layer_norm1.", "ln_1."),
        ("layer_norm2.", "ln_2."),
        ("mlp.fc1.", "mlp.c_fc."),
        ("mlp.fc2.", "mlp.c_proj."),
        ("self_attn.out_proj.", "attn.out_proj."),
    ];
    for (ours, theirs) in pairs {
        if let Some(p) = key.strip_prefix(ours) {
            return (renamed(&format!("{theirs}{p}")), Transform::Identity);
        }
    }
    if let Some((which, param)) = key
        .strip_prefix("self_attn.")
        .and_then(|k| k.split_once('.'))
    {
        if matches!(which, "q_proj" | "k_proj" | "v_proj") {
            return qkv(param, which);
        }
    }
    (renamed(key), Transform::Identity)
}

/// The tensors of a checkpoint file in `layout`, from tensors named as the model asks for them
/// (the inverse of [`source_key`]): fused q/k/v are concatenated back in q, k, v order and
/// transposed projections transposed back. Used to save what pretraining made.
pub fn to_checkpoint(
    layout: Layout,
    tensors: &HashMap<String, Tensor>,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let mut out = HashMap::new();
    let mut thirds: HashMap<String, [Option<Tensor>; 3]> = HashMap::new();
    for (name, t) in tensors {
        let (key, transform) = source_key(layout, name);
        match transform {
            Transform::Identity => {
                out.insert(key, t.clone());
            }
            Transform::Transpose => {
                out.insert(key, t.t()?.contiguous()?);
            }
            Transform::Third { index } => {
                thirds.entry(key).or_default()[index] = Some(t.clone());
            }
        }
    }
    for (key, parts) in thirds {
        let parts: Vec<Tensor> = parts.into_iter().collect::<Option<_>>().ok_or_else(|| {
            candle_core::Error::Msg(format!("{key}: q, k and v are not all present"))
        })?;
        out.insert(key, Tensor::cat(&parts, 0)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Transform::*;

    /// The full map for one layer of each tower, pinned.
    #[test]
    fn open_clip_key_map() {
        let cases = [
            ("logit_scale", "logit_scale", Identity),
            ("text_projection.weight", "text_projection", Transpose),
            ("visual_projection.weight", "visual.proj", Transpose),
            (
                "text_model.embeddings.token_embedding.weight",
                "token_embedding.weight",
                Identity,
            ),
            (
                "text_model.embeddings.position_embedding.weight",
                "positional_embedding",
                Identity,
            ),
            (
                "text_model.final_layer_norm.bias",
                "ln_final.bias",
                Identity,
            ),
            (
                "text_model.encoder.layers.11.layer_norm1.weight",
                "transformer.resblocks.11.ln_1.weight",
                Identity,
            ),
            (
                "text_model.encoder.layers.0.self_attn.k_proj.weight",
                "transformer.resblocks.0.attn.in_proj_weight",
                Third { index: 1 },
            ),
            (
                "text_model.encoder.layers.0.self_attn.v_proj.bias",
                "transformer.resblocks.0.attn.in_proj_bias",
                Third { index: 2 },
            ),
            (
                "text_model.encoder.layers.0.self_attn.out_proj.bias",
                "transformer.resblocks.0.attn.out_proj.bias",
                Identity,
            ),
            (
                "text_model.encoder.layers.3.mlp.fc1.weight",
                "transformer.resblocks.3.mlp.c_fc.weight",
                Identity,
            ),
            (
                "text_model.encoder.layers.3.mlp.fc2.bias",
                "transformer.resblocks.3.mlp.c_proj.bias",
                Identity,
            ),
            (
                "text_model.encoder.layers.3.layer_norm2.bias",
                "transformer.resblocks.3.ln_2.bias",
                Identity,
            ),
            (
                "vision_model.embeddings.class_embedding",
                "visual.class_embedding",
                Identity,
            ),
            (
                "vision_model.embeddings.patch_embedding.weight",
                "visual.conv1.weight",
                Identity,
            ),
            (
                "vision_model.embeddings.position_embedding.weight",
                "visual.positional_embedding",
                Identity,
            ),
            (
                "vision_model.pre_layrnorm.weight",
                "visual.ln_pre.weight",
                Identity,
            ),
            (
                "vision_model.post_layernorm.bias",
                "visual.ln_post.bias",
                Identity,
            ),
            (
                "vision_model.encoder.layers.2.self_attn.q_proj.weight",
                "visual.transformer.resblocks.2.attn.in_proj_weight",
                Third { index: 0 },
            ),
            (
                "visual.layer1.0.downsample.0.weight",
                "visual.layer1.0.downsample.0.weight",
                Identity,
            ),
        ];
        for (ours, theirs, transform) in cases {
            assert_eq!(
                source_key(Layout::OpenClip, ours),
                (theirs.to_string(), transform),
                "{ours}"
            );
            assert_eq!(
                source_key(Layout::Transformers, ours),
                (ours.to_string(), Identity)
            );
        }
    }
}
