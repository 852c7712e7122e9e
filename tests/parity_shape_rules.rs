//! The shape rules of the larger OpenAI / OpenCLIP models, on small models against the
//! references.
//!
//! Fixtures from scripts/fixtures/shape_rules.py (torch 2.15.0, open_clip_torch 3.3.0):
//! - openai-rn-x4: an RN50x4-style ModifiedResNet (stem width 6, not a power of two; stages
//!   [2, 1, 3, 1]; 3 attention-pool heads of 64; a 3 x 3 grid at 96 px) as a single OpenAI state
//!   dict (fp16), its config inferred from the shapes; OpenAI's `model.py` is the reference.
//!   Tolerance: 1e-5 relative to the largest magnitude (images go through our preprocessing).
//! - tiny-openclip-vit14: an open_clip ViT with an odd patch (7) trained at 28 px, run at 28, 42
//!   and 21 px; at 42 and 21 its positions are resized as open_clip's `resize_pos_embed` does
//!   (bicubic, antialiased): how ViT-L/14@336 came from ViT-L/14. Tolerance: 1e-5 relative.

use candle_core::{Device, Tensor};
use clip_adapter::clip::{Clip, ModelFiles, ResNetConfig, VisionTower};
use clip_adapter::encode::encode_image_files;

use crate::common::{fixture, input_images, inputs, load_expected, max_abs_diff};
use crate::parity_siglip_open_clip::ids;

/// `max |a - b| / max |b| <= tol`, printed.
fn assert_rel(what: &str, ours: &Tensor, reference: &Tensor, tol: f32) {
    let scale = reference
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(ours, reference) / scale.max(f32::MIN_POSITIVE);
    println!("{what}: max relative diff {d:.3e} (tolerance {tol:.0e})");
    assert!(d <= tol, "{what}: relative diff {d} > {tol}");
}

#[test]
fn rn50x4_style_resnet_is_inferred_and_matches_openai() {
    let file = fixture("models/openai-rn-x4/state_dict.pt");
    let clip = Clip::load(&ModelFiles::single_file(&file).unwrap(), &Device::Cpu).unwrap();
    assert_eq!(
        clip.config().vision,
        VisionTower::ResNet(ResNetConfig {
            layers: [2, 1, 3, 1],
            width: 6,
            heads: 3,
            image_size: 96,
        })
    );
    assert_eq!(clip.config().embed_dim, 24);
    let want = inputs("openai-rn-x4")["logit_scale"].as_f64().unwrap() as f32;
    assert!((clip.logit_scale() / want - 1.0).abs() < 1e-5);
    let expected = load_expected("openai-rn-x4");
    let images =
        encode_image_files(&clip, &input_images("openai-rn-x4"), 2, &mut |_, _| {}).unwrap();
    assert_rel(
        "RN50x4-style image embeds",
        &images,
        &expected["image_embeds"],
        1e-5,
    );
    let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    assert_rel(
        "RN50x4-style text embeds",
        &text,
        &expected["text_embeds"],
        1e-5,
    );
}

/// tiny-openclip-vit14 with `vision_cfg.image_size` set to `size`.
fn vit14_at(size: usize) -> (tempfile::TempDir, Clip) {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("models/tiny-openclip-vit14");
    std::fs::copy(
        src.join("open_clip_model.safetensors"),
        dir.path().join("open_clip_model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("open_clip_config.json")).unwrap())
            .unwrap();
    cfg["model_cfg"]["vision_cfg"]["image_size"] = size.into();
    std::fs::write(dir.path().join("open_clip_config.json"), cfg.to_string()).unwrap();
    let clip = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu).unwrap();
    (dir, clip)
}

#[test]
fn odd_patch_vit_matches_open_clip_at_its_size() {
    let (_dir, clip) = vit14_at(28);
    let expected = load_expected("tiny-openclip-vit14");
    let image = clip.encode_image(&expected["pixel_values_28"]).unwrap();
    assert_rel("ViT/7 at 28 px", &image, &expected["image_embeds_28"], 1e-5);
    let text = clip.encode_tokens(&ids(&expected["input_ids"])).unwrap();
    assert_rel("ViT/7 text", &text, &expected["text_embeds"], 1e-5);
}

#[test]
fn positions_are_resized_as_open_clip_does_for_another_image_size() {
    let expected = load_expected("tiny-openclip-vit14");
    // Up, as ViT-L/14@336 from ViT-L/14 (x 1.5), and down (antialiased: a wider filter).
    for size in [42, 21] {
        let (_dir, clip) = vit14_at(size);
        assert_eq!(clip.image_size(), size);
        let image = clip
            .encode_image(&expected[&format!("pixel_values_{size}")])
            .unwrap();
        assert_rel(
            &format!("ViT/7 at {size} px (positions resized)"),
            &image,
            &expected[&format!("image_embeds_{size}")],
            1e-5,
        );
    }
}

/// `transformers` refuses weights whose positions do not fit the config; so do we, naming the
/// tensor, where open_clip's layout resizes them.
#[test]
fn transformers_layout_refuses_positions_of_another_size() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("models/tiny-clip");
    std::fs::copy(
        src.join("model.safetensors"),
        dir.path().join("model.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    cfg["vision_config"]["image_size"] = 48.into();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let msg = Clip::load(&ModelFiles::in_dir(dir.path()).unwrap(), &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("vision_model.embeddings.position_embedding.weight")
            && msg.contains("[37, 48]")
            && msg.contains("[17, 48]"),
        "{msg}"
    );
}
