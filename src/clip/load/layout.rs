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
    /// open_clip's `CustomTextCLIP` with a timm image tower (SigLIP, EVA02-CLIP): the text tower
    /// under `text.` (`text.transformer.resblocks.0.attn.in_proj_weight`), the image tower under
    /// `visual.trunk.` with timm's names (`visual.trunk.blocks.0.attn.qkv.weight`).
    OpenClipTimm,
}

/// How a source tensor becomes the requested one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Identity,
    /// A 2-D matrix stored the other way round.
    Transpose,
    /// Part `index` of `of` equal blocks of rows (q, k, v of a fused projection; k, v of
    /// timm's fused `kv`).
    Part {
        index: usize,
        of: usize,
    },
    /// Stored with a leading dimension of 1 (timm's `pos_embed`, `(1, N, D)`).
    Unsqueezed,
}

/// Where the tensor a model asks for (by its `transformers` name) lives in a checkpoint.
pub fn source_key(layout: Layout, name: &str) -> (String, Transform) {
    match layout {
        Layout::Transformers => transformers_key(name),
        Layout::OpenClip => open_clip_key(name),
        Layout::OpenClipTimm => open_clip_timm_key(name),
    }
}

/// The fused projection rows of q, k or v.
fn qkv_part(which: &str) -> Option<Transform> {
    let index = ["q_proj", "k_proj", "v_proj"]
        .iter()
        .position(|p| *p == which)?;
    Some(Transform::Part { index, of: 3 })
}

/// `transformers`' own names, except SigLIP's pooling head: its `nn.MultiheadAttention` stores
/// q, k and v as one `in_proj`, which the model asks for as three projections.
fn transformers_key(name: &str) -> (String, Transform) {
    if let Some((head, rest)) = name.split_once("head.attention.") {
        if let Some((which, param)) = rest.split_once('.') {
            if let Some(part) = qkv_part(which) {
                return (format!("{head}head.attention.in_proj_{param}"), part);
            }
        }
    }
    (name.to_string(), Transform::Identity)
}

/// open_clip's text tower (`TextTransformer`), its keys under `prefix`.
fn open_clip_text_key(rest: &str, prefix: &str) -> (String, Transform) {
    let same = |k: &str| (format!("{prefix}{k}"), Transform::Identity);
    match rest {
        "embeddings.token_embedding.weight" => same("token_embedding.weight"),
        "embeddings.position_embedding.weight" => same("positional_embedding"),
        _ => match rest.strip_prefix("final_layer_norm.") {
            Some(p) => same(&format!("ln_final.{p}")),
            None => encoder_key(rest, &format!("{prefix}transformer.resblocks.")),
        },
    }
}

fn open_clip_key(name: &str) -> (String, Transform) {
    let same = |k: &str| (k.to_string(), Transform::Identity);
    if let Some(rest) = name.strip_prefix("text_model.") {
        return open_clip_text_key(rest, "");
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

/// open_clip's `CustomTextCLIP` with a timm tower. The SigLIP image tower is asked for by
/// `transformers`' names and found under timm's `VisionTransformer` names; EVA02's tower asks
/// for timm's names itself (`visual.trunk.*`), which pass through.
fn open_clip_timm_key(name: &str) -> (String, Transform) {
    let same = |k: String| (k, Transform::Identity);
    if let Some(rest) = name.strip_prefix("text_model.") {
        return match rest.strip_prefix("head.") {
            // SigLIP's text projection is a Linear with bias (`proj_bias`).
            Some(p) => same(format!("text.text_projection.{p}")),
            None => open_clip_text_key(rest, "text."),
        };
    }
    if name == "text_projection.weight" {
        return ("text.text_projection".into(), Transform::Transpose);
    }
    let Some(rest) = name.strip_prefix("vision_model.") else {
        return same(name.to_string());
    };
    let trunk = |k: &str| format!("visual.trunk.{k}");
    if rest == "embeddings.position_embedding.weight" {
        return (trunk("pos_embed"), Transform::Unsqueezed);
    }
    if rest == "head.probe" {
        return same(trunk("attn_pool.latent"));
    }
    if let Some((which, param)) = rest
        .strip_prefix("head.attention.")
        .and_then(|k| k.split_once('.'))
    {
        return match which {
            "q_proj" => same(trunk(&format!("attn_pool.q.{param}"))),
            "k_proj" => (
                trunk(&format!("attn_pool.kv.{param}")),
                Transform::Part { index: 0, of: 2 },
            ),
            "v_proj" => (
                trunk(&format!("attn_pool.kv.{param}")),
                Transform::Part { index: 1, of: 2 },
            ),
            "out_proj" => same(trunk(&format!("attn_pool.proj.{param}"))),
            _ => same(trunk(rest)),
        };
    }
    let prefixes = [
        ("embeddings.patch_embedding.", "patch_embed.proj."),
        ("post_layernorm.", "norm."),
        ("head.layernorm.", "attn_pool.norm."),
        ("head.mlp.", "attn_pool.mlp."),
    ];
    for (ours, theirs) in prefixes {
        if let Some(p) = rest.strip_prefix(ours) {
            return same(trunk(&format!("{theirs}{p}")));
        }
    }
    let Some(layer) = rest.strip_prefix("encoder.layers.") else {
        return same(trunk(rest));
    };
    let (index, key) = layer.split_once('.').unwrap_or((layer, ""));
    let block = |k: &str| trunk(&format!("blocks.{index}.{k}"));
    let pairs = [
        ("layer_norm1.", "norm1."),
        ("layer_norm2.", "norm2."),
        ("mlp.", "mlp."),
        ("self_attn.out_proj.", "attn.proj."),
    ];
    for (ours, theirs) in pairs {
        if let Some(p) = key.strip_prefix(ours) {
            return same(block(&format!("{theirs}{p}")));
        }
    }
    if let Some((which, param)) = key
        .strip_prefix("self_attn.")
        .and_then(|k| k.split_once('.'))
    {
        if let Some(part) = qkv_part(which) {
            return (block(&format!("attn.qkv.{param}")), part);
        }
    }
    same(block(key))
}

/// `encoder.layers.N.<block key>` -> `<prefix>N.<open_clip block key>`.
fn encoder_key(rest: &str, prefix: &str) -> (String, Transform) {
    let Some(layer) = rest.strip_prefix("encoder.layers.") else {
        return (rest.to_string(), Transform::Identity);
    };
    let (index, key) = layer.split_once('.').unwrap_or((layer, ""));
    let renamed = |k: &str| format!("{prefix}{index}.{k}");
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
        if let Some(part) = qkv_part(which) {
            return (renamed(&format!("attn.in_proj_{param}")), part);
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
    let mut fused: HashMap<String, Vec<Option<Tensor>>> = HashMap::new();
    for (name, t) in tensors {
        let (key, transform) = source_key(layout, name);
        match transform {
            Transform::Identity => {
                out.insert(key, t.clone());
            }
            Transform::Transpose => {
                out.insert(key, t.t()?.contiguous()?);
            }
            Transform::Unsqueezed => {
                out.insert(key, t.unsqueeze(0)?);
            }
            Transform::Part { index, of } => {
                let parts = fused.entry(key).or_insert_with(|| vec![None; of]);
                if let Some(slot) = parts.get_mut(index) {
                    *slot = Some(t.clone());
                }
            }
        }
    }
    for (key, parts) in fused {
        let parts: Vec<Tensor> = parts.into_iter().collect::<Option<_>>().ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "{key}: the parts of the fused tensor are not all present"
            ))
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
                Part { index: 1, of: 3 },
            ),
            (
                "text_model.encoder.layers.0.self_attn.v_proj.bias",
                "transformer.resblocks.0.attn.in_proj_bias",
                Part { index: 2, of: 3 },
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
                Part { index: 0, of: 3 },
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

    /// open_clip's SigLIP (timm `VisionTransformer` + custom text tower), one key of each kind.
    #[test]
    fn open_clip_timm_key_map() {
        let cases = [
            ("logit_bias", "logit_bias", Identity),
            (
                "text_model.embeddings.token_embedding.weight",
                "text.token_embedding.weight",
                Identity,
            ),
            (
                "text_model.embeddings.position_embedding.weight",
                "text.positional_embedding",
                Identity,
            ),
            (
                "text_model.encoder.layers.1.self_attn.v_proj.weight",
                "text.transformer.resblocks.1.attn.in_proj_weight",
                Part { index: 2, of: 3 },
            ),
            (
                "text_model.final_layer_norm.weight",
                "text.ln_final.weight",
                Identity,
            ),
            (
                "text_model.head.bias",
                "text.text_projection.bias",
                Identity,
            ),
            ("text_projection.weight", "text.text_projection", Transpose),
            (
                "vision_model.embeddings.patch_embedding.bias",
                "visual.trunk.patch_embed.proj.bias",
                Identity,
            ),
            (
                "vision_model.embeddings.position_embedding.weight",
                "visual.trunk.pos_embed",
                Unsqueezed,
            ),
            (
                "vision_model.encoder.layers.0.self_attn.k_proj.bias",
                "visual.trunk.blocks.0.attn.qkv.bias",
                Part { index: 1, of: 3 },
            ),
            (
                "vision_model.encoder.layers.0.self_attn.out_proj.weight",
                "visual.trunk.blocks.0.attn.proj.weight",
                Identity,
            ),
            (
                "vision_model.encoder.layers.3.layer_norm2.bias",
                "visual.trunk.blocks.3.norm2.bias",
                Identity,
            ),
            (
                "vision_model.encoder.layers.3.mlp.fc2.weight",
                "visual.trunk.blocks.3.mlp.fc2.weight",
                Identity,
            ),
            (
                "vision_model.post_layernorm.weight",
                "visual.trunk.norm.weight",
                Identity,
            ),
            (
                "vision_model.head.probe",
                "visual.trunk.attn_pool.latent",
                Identity,
            ),
            (
                "vision_model.head.attention.q_proj.weight",
                "visual.trunk.attn_pool.q.weight",
                Identity,
            ),
            (
                "vision_model.head.attention.v_proj.bias",
                "visual.trunk.attn_pool.kv.bias",
                Part { index: 1, of: 2 },
            ),
            (
                "vision_model.head.attention.out_proj.bias",
                "visual.trunk.attn_pool.proj.bias",
                Identity,
            ),
            (
                "vision_model.head.layernorm.weight",
                "visual.trunk.attn_pool.norm.weight",
                Identity,
            ),
            (
                "vision_model.head.mlp.fc1.bias",
                "visual.trunk.attn_pool.mlp.fc1.bias",
                Identity,
            ),
            // EVA02 asks for timm's names itself.
            (
                "visual.trunk.blocks.0.mlp.fc1_g.weight",
                "visual.trunk.blocks.0.mlp.fc1_g.weight",
                Identity,
            ),
        ];
        for (ours, theirs, transform) in cases {
            assert_eq!(
                source_key(Layout::OpenClipTimm, ours),
                (theirs.to_string(), transform),
                "{ours}"
            );
        }
        // transformers' SigLIP head stores q, k and v fused.
        assert_eq!(
            source_key(
                Layout::Transformers,
                "vision_model.head.attention.k_proj.bias"
            ),
            (
                "vision_model.head.attention.in_proj_bias".to_string(),
                Part { index: 1, of: 3 }
            )
        );
    }

    /// Saving renames back: fused parts are concatenated, positions get their leading 1.
    #[test]
    fn to_checkpoint_inverts_parts_and_unsqueezing() {
        let dev = candle_core::Device::Cpu;
        let t = |v: f32, rows: usize| Tensor::full(v, (rows, 2), &dev).unwrap();
        let tensors = HashMap::from([
            (
                "vision_model.head.attention.k_proj.weight".to_string(),
                t(1.0, 3),
            ),
            (
                "vision_model.head.attention.v_proj.weight".to_string(),
                t(2.0, 3),
            ),
            (
                "vision_model.embeddings.position_embedding.weight".to_string(),
                t(3.0, 4),
            ),
        ]);
        let out = to_checkpoint(Layout::OpenClipTimm, &tensors).unwrap();
        let kv = &out["visual.trunk.attn_pool.kv.weight"];
        assert_eq!(kv.dims(), &[6, 2]);
        assert_eq!(kv.get(4).unwrap().to_vec1::<f32>().unwrap(), vec![2.0, 2.0]);
        assert_eq!(out["visual.trunk.pos_embed"].dims(), &[1, 4, 2]);
    }
}
