//! `clip-adapter pretrain`: the command line of [`clip_adapter::pretrain`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clip_adapter::pretrain::{pretrain, ModelShape, PretrainEvent, PretrainOptions, ResNetShape};

#[derive(Args)]
pub struct PretrainArgs {
    /// Output model directory (config.json, model.safetensors, tokenizer.json, pretrain.json).
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Replace a model already in --out (without it, an existing model is an error).
    #[arg(long)]
    pub force: bool,

    /// Seed of the initialisation and of the generated pairs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Optimiser steps; each sees a fresh batch of generated pairs.
    #[arg(long, default_value_t = PretrainOptions::default().steps)]
    pub steps: usize,

    /// Image-caption pairs per step.
    #[arg(long, default_value_t = PretrainOptions::default().batch_size)]
    pub batch_size: usize,

    /// Peak AdamW learning rate (after the linear warm-up; cosine decay to 0).
    #[arg(long, default_value_t = PretrainOptions::default().lr)]
    pub lr: f64,

    /// Warm-up steps.
    #[arg(long, default_value_t = PretrainOptions::default().warmup)]
    pub warmup: usize,

    /// A ModifiedResNet image tower (the paper's backbone, saved in open_clip's layout) with
    /// this many bottleneck blocks in each of its 4 stages, e.g. 1,1,1,1; the ViT options
    /// below are then unused.
    #[arg(long, value_delimiter = ',', value_name = "N,N,N,N")]
    pub resnet_layers: Option<Vec<usize>>,

    /// Stem channels of the ResNet (its last stage has 32x as many).
    #[arg(long, default_value_t = 16)]
    pub resnet_width: usize,

    /// Channels per head of the ResNet's attention pool.
    #[arg(long, default_value_t = 64)]
    pub resnet_head_width: usize,

    /// Side of the square image patches (the image is 32 pixels wide; must divide it).
    #[arg(long, default_value_t = ModelShape::default().patch_size)]
    pub patch_size: usize,

    /// Width of the vision transformer.
    #[arg(long, default_value_t = ModelShape::default().vision_width)]
    pub vision_width: usize,

    /// Layers of the vision transformer.
    #[arg(long, default_value_t = ModelShape::default().vision_layers)]
    pub vision_layers: usize,

    /// Width of the text transformer.
    #[arg(long, default_value_t = ModelShape::default().text_width)]
    pub text_width: usize,

    /// Layers of the text transformer.
    #[arg(long, default_value_t = ModelShape::default().text_layers)]
    pub text_layers: usize,

    /// Attention heads in both towers (must divide both widths).
    #[arg(long, default_value_t = ModelShape::default().heads)]
    pub heads: usize,

    /// Dimension of the joint image-text embedding space.
    #[arg(long, default_value_t = ModelShape::default().embed_dim)]
    pub embed_dim: usize,

    /// Print a progress line every N steps.
    #[arg(long, default_value_t = 10, value_name = "N")]
    pub log_every: usize,
}

pub fn run(a: PretrainArgs, quiet: bool) -> Result<()> {
    let options = PretrainOptions {
        seed: a.seed,
        steps: a.steps,
        batch_size: a.batch_size,
        lr: a.lr,
        warmup: a.warmup.min(a.steps / 2),
        shape: ModelShape {
            resnet: match a.resnet_layers {
                Some(l) => Some(ResNetShape {
                    layers: l.as_slice().try_into().map_err(|_| {
                        anyhow::anyhow!(
                            "--resnet-layers takes 4 block counts (one per stage), got {l:?}"
                        )
                    })?,
                    width: a.resnet_width,
                    head_width: a.resnet_head_width,
                }),
                None => None,
            },
            patch_size: a.patch_size,
            vision_width: a.vision_width,
            vision_layers: a.vision_layers,
            text_width: a.text_width,
            text_layers: a.text_layers,
            heads: a.heads,
            embed_dim: a.embed_dim,
            ..ModelShape::default()
        },
        overwrite: a.force,
        ..PretrainOptions::default()
    };
    let every = a.log_every.max(1);
    let report = pretrain(&a.out, &options, &mut |event| {
        if quiet {
            return;
        }
        match event {
            PretrainEvent::Tokenizer { vocab_size } => {
                eprintln!("tokenizer: {vocab_size} tokens")
            }
            PretrainEvent::Step { step, steps, loss, lr, logit_scale, seconds } => {
                if step % every == 0 || step == steps {
                    eprintln!(
                        "step {step}/{steps}  loss {loss:.4}  lr {lr:.2e}  scale {logit_scale:.1}  {seconds:.0}s"
                    );
                }
            }
            PretrainEvent::Eval { step, eval } => eprintln!(
                "eval @ {step}: retrieval top-1 image->text {:.1}%  text->image {:.1}%  loss {:.4}",
                eval.image_to_text, eval.text_to_image, eval.loss
            ),
            PretrainEvent::Saved { dir } => eprintln!("saved {}", dir.display()),
        }
    })
    .with_context(|| format!("pretraining into {}", a.out.display()))?;
    crate::output::outln!(
        "{} parameters, {} steps in {:.0} s: final loss {:.4}, held-out retrieval top-1 {:.1}% (image->text), {:.1}% (text->image)",
        report.parameters,
        report.options.steps,
        report.seconds,
        report.final_loss,
        report.retrieval.image_to_text,
        report.retrieval.text_to_image
    );
    Ok(())
}
