//! The differentiable CLIP used for pretraining (ViT and ModifiedResNet image towers): its
//! gradients equal finite differences (the fused inference kernels would give silent zeros),
//! and what it saves loads with `Clip::load` and gives the same embeddings.

use candle_core::{Device, Tensor};
use clip_adapter::clip::load::{open_clip_config, write};
use clip_adapter::clip::train::{TrainableClip, LOGIT_SCALE_INIT};
use clip_adapter::clip::{Clip, ClipConfig, ModelFiles};
use clip_adapter::pretrain::{
    batch, pretrain, write_tokenizer, Batch, ModelShape, PretrainError, PretrainOptions,
    ResNetShape,
};
use clip_adapter::world::Domain;

fn tiny_shape() -> ModelShape {
    ModelShape {
        resnet: None,
        patch_size: 8,
        vision_width: 16,
        vision_layers: 2,
        text_width: 16,
        text_layers: 2,
        heads: 2,
        embed_dim: 8,
        context_length: 24,
        max_merges: 100,
    }
}

/// A ModifiedResNet with one block per stage; the attention pool has 2 heads of 64.
fn tiny_resnet_shape() -> ModelShape {
    ModelShape {
        resnet: Some(ResNetShape {
            layers: [1, 1, 1, 1],
            width: 4,
            head_width: 64,
        }),
        ..tiny_shape()
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    model: TrainableClip,
    tokenizer: clip_adapter::tokenizer::Tokenizer,
    /// Config file name and contents, and the weights file name, of the shape's layout.
    config_file: (&'static str, String),
    weights_file: &'static str,
}

fn fixture() -> Fixture {
    fixture_of(&tiny_shape())
}

fn fixture_of(shape: &ModelShape) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (tokenizer, vocab) = write_tokenizer(dir.path(), 0, 100).unwrap();
    let config = shape.config(vocab);
    let (name, value) = write::config_file(&config, LOGIT_SCALE_INIT).unwrap();
    let config_file = (name, serde_json::to_string(&value).unwrap());
    let weights_file = match shape.resnet {
        None => "model.safetensors",
        Some(_) => "open_clip_model.safetensors",
    };
    let model = TrainableClip::new(&config, 7, &Device::Cpu).unwrap();
    Fixture {
        dir,
        model,
        tokenizer,
        config_file,
        weights_file,
    }
}

/// `n` pretraining pairs of stream `seed`, as model inputs.
fn pairs(f: &Fixture, seed: u64, n: usize) -> Batch {
    batch(
        &Domain::pretraining(),
        seed,
        0,
        n,
        &f.tokenizer,
        24,
        &Device::Cpu,
    )
    .unwrap()
}

/// Sets every batch-norm scale of a ResNet to 1: open_clip starts each block's last one at 0,
/// which leaves the block's convolutions without a gradient until the first step.
fn wake_batch_norms(model: &TrainableClip) {
    for (name, var) in model.vars().data().lock().unwrap().iter() {
        if name.contains("bn3.weight") {
            var.set(&var.ones_like().unwrap()).unwrap();
        }
    }
}

#[test]
fn pretraining_gradients_match_finite_differences() {
    // Parameters at the very start of each tower (everything after them must carry the
    // gradient back), inside the blocks, and the temperature.
    check_gradients(
        &fixture(),
        &[
            "vision_model.embeddings.patch_embedding.weight",
            "vision_model.embeddings.class_embedding",
            "vision_model.pre_layrnorm.weight",
            "vision_model.encoder.layers.0.self_attn.q_proj.weight",
            "vision_model.encoder.layers.0.layer_norm1.bias",
            "text_model.embeddings.token_embedding.weight",
            "text_model.embeddings.position_embedding.weight",
            "text_model.encoder.layers.0.self_attn.k_proj.weight",
            "text_model.encoder.layers.1.mlp.fc1.weight",
            "text_model.final_layer_norm.weight",
            "visual_projection.weight",
            "logit_scale",
        ],
        1e-3,
    );
}

#[test]
fn resnet_pretraining_gradients_match_finite_differences() {
    let f = fixture_of(&tiny_resnet_shape());
    wake_batch_norms(&f.model);
    // The stem's first convolution, a block's convolutions and norms, a strided shortcut,
    // the attention pool, and the text tower beside it. (The stem's own norms, over 2
    // channels and 6 images, bend the loss too sharply for finite differences in f32: they
    // swing from +1.8 to -0.09 between steps of 1e-2 and 1e-4.)
    check_gradients(
        &f,
        &[
            "visual.conv1.weight",
            "visual.layer1.0.conv2.weight",
            "visual.layer2.0.conv1.weight",
            "visual.layer2.0.downsample.0.weight",
            "visual.layer3.0.bn2.weight",
            "visual.layer4.0.conv3.weight",
            "visual.attnpool.positional_embedding",
            "visual.attnpool.k_proj.weight",
            "visual.attnpool.c_proj.bias",
            "text_model.embeddings.token_embedding.weight",
            "logit_scale",
        ],
        // ReLUs and batch norm over 6 images bend the loss within 1e-3 (the stem's
        // convolution is 5% off there, 0.7% at 3e-4).
        3e-4,
    );
}

/// Compares autograd with central differences of step `eps` for the largest-gradient entry
/// of each named parameter.
fn check_gradients(f: &Fixture, names: &[&str], eps: f32) {
    let b = pairs(f, 3, 6);
    let loss = |m: &TrainableClip| -> f64 {
        m.contrastive_loss(&b.pixels, &b.ids)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let grads = f
        .model
        .contrastive_loss(&b.pixels, &b.ids)
        .unwrap()
        .backward()
        .unwrap();
    let vars = f.model.vars().data().lock().unwrap().clone();
    for &name in names {
        let var = &vars[name];
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let g: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        // The entry with the largest gradient: finite differences resolve it best in f32.
        let (i, &gi) = g
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
            .unwrap();
        assert!(gi.abs() > 1e-5, "{name}: gradient is zero everywhere");
        let original = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let at = |delta: f32| {
            let mut v = original.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, var.shape(), &Device::Cpu).unwrap())
                .unwrap();
            loss(&f.model)
        };
        let numeric = (at(eps) - at(-eps)) / (2.0 * eps as f64);
        at(0.0);
        let err = (numeric - gi as f64).abs();
        assert!(
            err <= 0.03 * numeric.abs() + 2e-3,
            "{name}[{i}]: autograd {gi}, finite differences {numeric}"
        );
    }
}

#[test]
fn saved_pretraining_model_loads_and_embeds_identically() {
    check_save_and_load(&fixture());
}

#[test]
fn saved_resnet_model_loads_in_open_clip_layout_and_embeds_identically() {
    let f = fixture_of(&tiny_resnet_shape());
    wake_batch_norms(&f.model);
    // Training-mode passes move the running statistics away from (0, 1), so the loaded model's
    // folded batch norms are tested with real values.
    let b = pairs(&f, 9, 8);
    for _ in 0..3 {
        f.model.encode_image(&b.pixels).unwrap();
    }
    let running: Vec<f32> = f.model.vars().data().lock().unwrap()
        ["visual.layer2.0.bn2.running_var"]
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    assert!(
        running.iter().any(|v| (v - 1.0).abs() > 0.05),
        "{running:?}"
    );
    f.model.set_training(false);
    check_save_and_load(&f);
}

fn check_save_and_load(f: &Fixture) {
    let dir = f.dir.path();
    f.model.save_weights(&dir.join(f.weights_file)).unwrap();
    std::fs::write(dir.join(f.config_file.0), &f.config_file.1).unwrap();
    let clip = Clip::load(&ModelFiles::in_dir(dir).unwrap(), &Device::Cpu).unwrap();
    let b = pairs(f, 5, 4);
    let max_diff = |a: &Tensor, b: &Tensor| -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let trained = f.model.encode_image(&b.pixels).unwrap();
    let loaded = clip.encode_image(&b.pixels).unwrap();
    assert!(
        max_diff(&trained, &loaded) < 1e-4,
        "image embeddings differ"
    );
    let captions = [
        "a photo of two small red circles.",
        "a striped background.",
        "a hexagon.",
    ];
    let ids: Vec<Vec<u32>> = captions
        .iter()
        .map(|c| clip.tokenizer().tokenize(c, 24))
        .collect();
    assert_eq!(
        ids,
        captions
            .iter()
            .map(|c| f.tokenizer.tokenize(c, 24))
            .collect::<Vec<_>>()
    );
    let trained = f.model.encode_tokens(&ids).unwrap();
    let loaded = clip.encode_text(&captions).unwrap();
    assert!(max_diff(&trained, &loaded) < 1e-4, "text embeddings differ");
}

#[test]
fn world_tokenizer_round_trips_captions_and_splits_unseen_words() {
    let dir = tempfile::tempdir().unwrap();
    let (tok, vocab) = write_tokenizer(dir.path(), 0, 400).unwrap();
    assert_eq!(tok.vocab_size(), vocab);
    assert_eq!(tok.eot_id() as usize, vocab - 1);
    let seen = tok.encode("a photo of two small red circles on a striped background.");
    // Every word of the pretraining captions is one token; the full stop is one more.
    assert_eq!(seen.len(), 12, "{seen:?}");
    assert_eq!(
        tok.decode(&seen).trim(),
        "a photo of two small red circles on a striped background ."
    );
    // A held-out class name is spelled out in smaller pieces.
    assert!(tok.encode("hexagon").len() > 1);
}

#[test]
fn pretrain_command_writes_a_resnet_model_that_loads() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    let d = dir.display().to_string();
    let run = crate::common::clip_adapter(&[
        "pretrain",
        "--quiet",
        "--out",
        &d,
        "--steps",
        "2",
        "--batch-size",
        "4",
        "--resnet-layers",
        "1,1,1,1",
        "--resnet-width",
        "4",
    ]);
    assert!(
        run.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    for file in [
        "open_clip_config.json",
        "open_clip_model.safetensors",
        "tokenizer.json",
        "pretrain.json",
    ] {
        assert!(dir.join(file).is_file(), "{file} missing");
    }
    let files = ModelFiles::in_dir(&dir).unwrap();
    let clip = Clip::load(&files, &Device::Cpu).unwrap();
    assert_eq!(
        clip.encode_text(&["a red circle."]).unwrap().dims(),
        &[1, 64]
    );

    let bad = crate::common::clip_adapter(&["pretrain", "--out", &d, "--resnet-layers", "1,1,1"]);
    crate::common::assert_fails_with(&bad, &["--resnet-layers", "4 block counts"]);
}

/// The written config reads back as the same model, in both layouts.
#[test]
fn written_configs_read_back_identically() {
    for shape in [tiny_shape(), tiny_resnet_shape()] {
        let config = shape.config(300);
        let (name, value) = write::config_file(&config, LOGIT_SCALE_INIT).unwrap();
        let read = match name {
            "config.json" => {
                ClipConfig::from_hf_json(&value.to_string(), std::path::Path::new(name)).unwrap()
            }
            _ => open_clip_config::from_model_cfg(&value["model_cfg"]).unwrap(),
        };
        assert_eq!(read, config, "{name}");
    }
}

/// The writer reproduces the shipped world model's `open_clip_config.json` byte for byte, so
/// pretraining with the documented command (assets/tiny-world-clip/README.md) still makes the
/// same files.
#[test]
fn writer_reproduces_the_shipped_config() {
    let path = "assets/tiny-world-clip/open_clip_config.json";
    let shipped = std::fs::read_to_string(path).unwrap();
    let vocab = serde_json::from_str::<serde_json::Value>(&shipped).unwrap()["model_cfg"]
        ["text_cfg"]["vocab_size"]
        .as_u64()
        .unwrap() as usize;
    let shape = ModelShape {
        resnet: Some(ResNetShape {
            layers: [1, 1, 1, 1],
            width: 16,
            head_width: 64,
        }),
        ..ModelShape::default()
    };
    let (name, value) = write::config_file(&shape.config(vocab), LOGIT_SCALE_INIT).unwrap();
    assert_eq!(name, "open_clip_config.json");
    assert_eq!(
        serde_json::to_string_pretty(&value).unwrap(),
        shipped,
        "{path}"
    );
}

fn options(shape: ModelShape) -> PretrainOptions {
    PretrainOptions {
        steps: 1,
        batch_size: 4,
        eval_every: 1,
        shape,
        ..PretrainOptions::default()
    }
}

/// Bad options stop the run before anything is written.
#[test]
fn bad_pretraining_options_write_nothing() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    let mut bad_heads = tiny_shape();
    bad_heads.heads = 3;
    let err = pretrain(&dir, &options(bad_heads), &mut |_| {}).unwrap_err();
    assert!(matches!(err, PretrainError::Shape(_)), "{err}");
    assert!(
        err.to_string().contains("not divisible by its 3 heads"),
        "{err}"
    );
    let mut no_eval = options(tiny_shape());
    no_eval.eval_every = 0;
    let err = pretrain(&dir, &no_eval, &mut |_| {}).unwrap_err();
    assert!(matches!(err, PretrainError::Options(_)), "{err}");
    assert!(!dir.exists(), "a refused run created {}", dir.display());
}

/// An existing model is kept unless the run is told to replace it; the weights file gets the
/// permissions of any file the user creates.
#[test]
fn pretraining_keeps_an_existing_model_unless_told() {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("model");
    pretrain(&dir, &options(tiny_shape()), &mut |_| {}).unwrap();
    let weights = dir.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    let err = pretrain(&dir, &options(tiny_shape()), &mut |_| {}).unwrap_err();
    assert!(matches!(err, PretrainError::WouldOverwrite { .. }), "{err}");
    assert_eq!(std::fs::read(&weights).unwrap(), before);
    let mut again = options(tiny_shape());
    again.overwrite = true;
    pretrain(&dir, &again, &mut |_| {}).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let plain = out.path().join("plain");
        std::fs::write(&plain, b"x").unwrap();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&weights), mode(&plain));
    }
}

/// The weights writer lays tensors out exactly as the shipped model's file, so a reproduction of
/// that model can be compared byte for byte.
#[test]
fn weights_writer_reproduces_the_shipped_file() {
    let path = "assets/tiny-world-clip/open_clip_model.safetensors";
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let bytes = safetensors::tensor::serialize(&tensors, None).unwrap();
    assert!(bytes == std::fs::read(path).unwrap(), "{path} differs");
}
