//! Command-line arguments. Each doc comment is the `--help` text of its flag.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use clip_adapter::clip::Precision;
use clip_adapter::zero_shot::DEFAULT_TEMPLATE;

use crate::shared::positive;

/// Few-shot adaptation of CLIP vision-language models.
///
/// Models (`--model`) are a local directory in the Hugging Face `transformers` layout
/// (config.json + model.safetensors or pytorch_model.bin) or the open_clip layout
/// (open_clip_config.json + open_clip_model.safetensors or open_clip_pytorch_model.bin), with a
/// ViT or ResNet image tower; a single OpenAI checkpoint file (the `clip` package's TorchScript
/// RN50.pt, ViT-B-32.pt, ..., or a torch.save'd state dict with OpenAI's names), by path or as
/// `openai:NAME` (openai:RN50, openai:ViT-B/32: the file in $XDG_CACHE_HOME/clip, else
/// ~/.cache/clip); or a hub id such as `openai/clip-vit-base-patch32[@revision]` or
/// `timm/resnet50_clip.openai`, looked up in the Hugging Face cache
/// (HF_HUB_CACHE / HF_HOME) and downloaded there when the hub is reachable and HF_HUB_OFFLINE
/// is not set.
#[derive(Parser)]
#[command(name = "clip-adapter", version, about, long_about)]
pub struct Cli {
    /// Worker threads for image decoding and tensor math [default: all cores].
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,

    /// No progress bars (they are drawn only on a terminal anyway).
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Turn texts into CLIP token ids (start token, BPE ids, end token, zero padding).
    ///
    /// Example: clip-adapter tokenize --json "a photo of a cat." "a photo of a dog."
    Tokenize(TokenizeArgs),
    /// Print the projected (not normalised) embeddings of images and texts.
    ///
    /// Example: clip-adapter embed --model openai/clip-vit-base-patch32 --image cat.jpg --text "a cat" --json
    Embed(EmbedArgs),
    /// Zero-shot classification of images among class names.
    ///
    /// Each class name is put into every template; with several templates the normalised prompt
    /// embeddings are averaged per class and normalised again (prompt ensembling).
    ///
    /// Example: clip-adapter classify --model openai/clip-vit-base-patch32 --labels cat,dog photos/*.jpg
    Classify(ClassifyArgs),
    /// List the 11 benchmarks and the 4 test-only ImageNet variants, or check data before extracting: the benchmarks under --root
    /// against their published splits, or one --dataset, --folder, --manifest or --split
    /// (classes, images per class, missing files; --decode also decodes every image).
    ///
    /// Example: clip-adapter datasets --root $DATA
    ///
    /// Example: clip-adapter datasets --folder photos/ --decode
    Datasets(crate::data::DatasetsArgs),
    /// Print CoOp's K-shot draw (train K per class, val min(K, 4)) for a seed.
    ///
    /// Example: clip-adapter fewshot --split split_zhou_EuroSAT.json --shots 16 --seed 1 --json
    Fewshot(crate::data::FewShotArgs),
    /// Encode a dataset's images (few-shot train, val, test, augmented views) and class-name
    /// prompts into the feature cache; resumes an interrupted run.
    ///
    /// Example: clip-adapter extract --model openai/clip-vit-base-patch32 --dataset eurosat --root $DATA --shots 16 --seed 1
    Extract(crate::data::ExtractArgs),
    /// Join the shard files of `extract --shard i/n` runs into complete feature files, or with
    /// --results DIR the results of `run --shard i/n --out DIR` into DIR/results.csv.
    ///
    /// Example: clip-adapter merge --cache clip-adapter-cache
    ///
    /// Example: clip-adapter merge --results results
    Merge(crate::data::MergeArgs),
    /// Write image features computed elsewhere (numpy, safetensors, PyTorch), with their labels
    /// and the class names' text features (or a model to encode them), into the cache, checked
    /// first; `fit`, `run`, `sweep`, `report` and `tsne` then use them like extracted ones.
    ///
    /// Example: clip-adapter import --dataset pets --shots 16 --seed 1 --train train.npy --train-labels train_labels.npy --test test.npy --test-labels test_labels.npy --classnames classes.txt --text text.npy
    Import(crate::import::ImportArgs),
    /// Train one method on cached features (one dataset, shots, seed); report validation and
    /// test accuracy; optionally save the head for `predict`.
    ///
    /// Example: clip-adapter fit --method clip-adapter --dataset eurosat --shots 16 --seed 1 --save eurosat.safetensors
    Fit(crate::methods::FitArgs),
    /// Run a grid (methods × datasets × shots × seeds) on cached features; resumable; writes
    /// results.csv, a Markdown table of mean ± std with published numbers beside ours, and
    /// the folder's report with its figures (`report`). The fits of one dataset and shot count
    /// run side by side, one per core (`--threads`), with the rows of fitting one at a time.
    ///
    /// Example: clip-adapter run --methods clip-adapter,tip-adapter --datasets eurosat,dtd --reported reported_results_rn50.csv
    Run(crate::methods::RunArgs),
    /// The paper's ablations: CLIP-Adapter over bottleneck widths (`--over reduction`) or
    /// fixed residual ratios (`--over alpha`) on cached features; resumable (results.csv as
    /// `run`); writes a table of a line per value and a column per dataset, and the folder's
    /// report (`report`).
    ///
    /// Example: clip-adapter sweep --over reduction --datasets dtd,imagenet --shots 16
    Sweep(crate::sweep::SweepArgs),
    /// Write a results folder's report: DIR/report.md (tables of mean ± std, gains over
    /// zero-shot, ablations) and DIR/figures/ (accuracy vs shots, gains, CLIP-Adapter's
    /// variants, ablation curves; each as SVG and PNG). `run`, `sweep` and `demo` write the
    /// same report at their end.
    ///
    /// Example: clip-adapter report results --reported reported_results_rn50.csv
    Report(crate::report::ReportArgs),
    /// Classify images with a head saved by `fit --save`.
    ///
    /// Example: clip-adapter predict --adapter eurosat.safetensors --top-k 3 photo.jpg
    Predict(crate::methods::PredictArgs),
    /// Map a split's image features before and after a CLIP-Adapter head's visual adapter to
    /// 2-D with t-SNE (the paper's Fig. 5); draw the two maps side by side, coloured by class
    /// (SVG + PNG), and report 5-NN accuracy and silhouette of the classes in both spaces.
    ///
    /// Example: clip-adapter tsne --dataset eurosat --shots 16 --seed 1 --adapter eurosat.safetensors --out eurosat-tsne
    Tsne(crate::tsne::TsneArgs),
    /// Pretrain a small CLIP on generated image-caption pairs (the demo's embedded model).
    ///
    /// Example: clip-adapter pretrain --out assets/tiny-world-clip --seed 0 --steps 3000
    /// --batch-size 128 --lr 1e-3 --warmup 150 --resnet-layers 1,1,1,1 --resnet-width 16
    Pretrain(crate::pretrain::PretrainArgs),
    /// Run the paper's protocol offline on the embedded world model: generated tasks close to
    /// and far from pretraining, every method, 1-16 shots, 3 seeds; prints the result table.
    ///
    /// Example: clip-adapter demo
    Demo(crate::demo::DemoArgs),
}

/// Room for the start and end tokens at least, and within the library's limit.
fn context_length(s: &str) -> std::result::Result<usize, String> {
    match positive(s)? {
        n if n < 2 => Err("must be at least 2 (the start and end tokens)".into()),
        n => clip_adapter::limits::CONTEXT_LENGTH
            .check("--context-length", n)
            .map_err(|e| e.to_string()),
    }
}

#[derive(Args)]
pub struct TokenizeArgs {
    /// Texts to tokenize.
    #[arg(required = true, value_name = "TEXT")]
    pub texts: Vec<String>,

    /// Use this model's tokenizer files and context length instead of the embedded OpenAI
    /// vocabulary (49,408 tokens, 77 positions).
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: Option<String>,

    /// Tokens per text, including start and end tokens; longer texts are cut, keeping the end
    /// token [default: the model's, or 77].
    #[arg(long, value_name = "N", value_parser = context_length)]
    pub context_length: Option<usize>,

    /// Print `[[id, ...], ...]` instead of one tab-separated line per text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct EmbedArgs {
    /// Model directory, OpenAI checkpoint file (RN50.pt), openai:NAME or hub id.
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,

    /// An image to embed (repeatable). JPEG, PNG, WebP, BMP and GIF (first frame) are read.
    #[arg(long = "image", value_name = "PATH")]
    pub images: Vec<PathBuf>,

    /// A text to embed (repeatable), tokenized as `tokenize` does.
    #[arg(long = "text", value_name = "TEXT")]
    pub texts: Vec<String>,

    /// Images per forward pass.
    #[arg(long, default_value_t = clip_adapter::encode::DEFAULT_BATCH, value_name = "N")]
    pub batch_size: usize,

    /// Arithmetic of the towers' linear layers and convolutions: f32, or bf16 (bfloat16 operands,
    /// f32 sums, as PyTorch's bfloat16 autocast; faster on CPUs with AVX512-BF16, features
    /// 1e-3 to 1e-2 off the f32 ones).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    pub precision: Precision,

    /// Print `{"images":[{"path","embedding"}],"texts":[{"text","embedding"}]}`.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// Model directory, OpenAI checkpoint file (RN50.pt), openai:NAME or hub id.
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: String,

    /// Class names, separated by commas.
    #[arg(
        long,
        value_name = "A,B,C",
        value_delimiter = ',',
        required_unless_present = "labels_file"
    )]
    pub labels: Vec<String>,

    /// A file with one class name per line (instead of --labels; blank lines are skipped).
    #[arg(long, value_name = "FILE", conflicts_with = "labels")]
    pub labels_file: Option<PathBuf>,

    /// Prompt template with `{}` for the class name (repeatable: prompt ensembling).
    #[arg(long = "template", value_name = "TEMPLATE", default_value = DEFAULT_TEMPLATE)]
    pub templates: Vec<String>,

    /// Classes to show per image.
    #[arg(long, default_value_t = 5, value_name = "K", value_parser = positive)]
    pub top_k: usize,

    /// Images per forward pass.
    #[arg(long, default_value_t = clip_adapter::encode::DEFAULT_BATCH, value_name = "N")]
    pub batch_size: usize,

    /// Arithmetic of the towers' linear layers and convolutions: f32, or bf16 (bfloat16 operands,
    /// f32 sums, as PyTorch's bfloat16 autocast; faster on CPUs with AVX512-BF16, features
    /// 1e-3 to 1e-2 off the f32 ones).
    #[arg(long, default_value = "f32", value_name = "f32|bf16")]
    pub precision: Precision,

    /// Print JSON: `{"labels", "logit_scale", "results": [{"path", "predictions": [{"label",
    /// "index", "probability", "logit"}]}]}`.
    #[arg(long)]
    pub json: bool,

    /// Images to classify.
    #[arg(value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
}

impl ClassifyArgs {
    /// The class names, trimmed, blank ones left out.
    pub fn labels(&self) -> Result<Vec<String>> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p)
                .with_context(|| format!("reading labels from {}", p.display()))
        };
        let raw = match &self.labels_file {
            Some(path) => read(path)?.lines().map(str::to_string).collect(),
            None => self.labels.clone(),
        };
        Ok(raw
            .iter()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect())
    }
}
