//! The `clip-adapter` command: argument parsing and printing only; the library does the work.

mod args;
mod data;
mod demo;
mod import;
mod methods;
mod output;
mod pretrain;
mod render;
mod report;
mod shared;
mod sweep;
mod tsne;

use std::path::PathBuf;
use std::process::ExitCode;

use candle_core::Tensor;

use anyhow::{Context, Result};
use clap::Parser;
use clip_adapter::clip::hub::{self, HubOptions};
use clip_adapter::clip::{Clip, LoadOptions, ModelFiles, Precision};
use clip_adapter::encode::{display_paths, encode_image_files};
use clip_adapter::tokenizer::Tokenizer;
use clip_adapter::zero_shot::ZeroShotClassifier;
use output::outln;
use serde_json::json;

use args::{ClassifyArgs, Cli, Command, EmbedArgs, TokenizeArgs};
use output::Progress;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // `RUST_BACKTRACE=1` is for panics. anyhow would also capture a backtrace for every error
    // created (time and memory per error, even for errors that are handled), and errors are
    // printed as one line anyway: library backtraces stay off unless asked for by name.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: the first statement of `main`, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    // Freed activations stay mapped: no page faults in the encoders' steady state.
    clip_adapter::kernels::alloc::keep_freed_memory();
    render::install();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that stopped reading (`| head`) is not a failure.
        Err(err) if is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", render::error_chain(&err));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(err: &anyhow::Error) -> bool {
    let io = err
        .chain()
        .filter_map(|e| e.downcast_ref::<std::io::Error>());
    io.into_iter()
        .any(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

fn run(cli: Cli) -> Result<()> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .context("setting up the thread pool")?;
    }
    let progress = Progress::new(cli.quiet);
    match cli.command {
        Command::Tokenize(a) => tokenize(a),
        Command::Embed(a) => embed(a, &progress),
        Command::Classify(a) => classify(a, &progress),
        Command::Datasets(a) => data::datasets(a, &progress),
        Command::Fewshot(a) => data::fewshot(a),
        Command::Extract(a) => data::extract(a, &progress),
        Command::Merge(a) => data::merge_cmd(a, &progress),
        Command::Import(a) => import::run(a, &progress),
        Command::Fit(a) => methods::fit(a, &progress),
        Command::Run(a) => methods::run(a, &progress),
        Command::Predict(a) => methods::predict(a, &progress),
        Command::Sweep(a) => sweep::run(a, &progress),
        Command::Tsne(a) => tsne::run(a, &progress),
        Command::Report(a) => report::run(a, &progress),
        Command::Pretrain(a) => pretrain::run(a, cli.quiet),
        Command::Demo(a) => demo::run(a, &progress),
    }
}

pub(crate) fn resolve_model(spec: &str, progress: &Progress) -> Result<ModelFiles> {
    let mut on_download = progress.download();
    hub::resolve(spec, &HubOptions::from_env(), &mut on_download)
        .with_context(|| format!("finding model `{spec}`"))
}

pub(crate) fn load_model(spec: &str, precision: Precision, progress: &Progress) -> Result<Clip> {
    let files = resolve_model(spec, progress)?;
    warn_precision(precision);
    Clip::load_with(
        &files,
        &candle_core::Device::Cpu,
        LoadOptions::at(precision),
    )
    .with_context(|| format!("loading model from {}", files.dir.display()))
}

/// What `--precision` means on this CPU, when the user should know.
pub(crate) fn warn_precision(precision: Precision) {
    if let Some(notice) = precision.notice() {
        eprintln!("warning: {notice}");
    }
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let (tokenizer, context_length) = match &a.model {
        Some(spec) => {
            let files = resolve_model(spec, &Progress::new(true))?;
            (files.tokenizer()?, files.read_config()?.text.context_length)
        }
        None => (
            Tokenizer::openai()?,
            clip_adapter::tokenizer::CONTEXT_LENGTH,
        ),
    };
    let context_length = a.context_length.unwrap_or(context_length);
    let ids: Vec<Vec<u32>> = a
        .texts
        .iter()
        .map(|t| tokenizer.tokenize(t, context_length))
        .collect();
    if a.json {
        outln!("{}", serde_json::to_string(&ids)?);
    }
    for (text, ids) in a.texts.iter().zip(&ids).filter(|_| !a.json) {
        let ids: Vec<String> = ids.iter().map(u32::to_string).collect();
        outln!("{text}\t{}", ids.join(" "));
    }
    Ok(())
}

/// The images' features, with a bar.
fn encode_images(
    clip: &Clip,
    images: &[PathBuf],
    batch: usize,
    progress: &Progress,
) -> Result<Tensor> {
    let bar = progress.bar("encoding images", images.len());
    let features = encode_image_files(clip, images, batch, &mut |d, _| bar.set_position(d as u64));
    bar.finish_and_clear();
    Ok(features?)
}

fn embed(a: EmbedArgs, progress: &Progress) -> Result<()> {
    if a.images.is_empty() && a.texts.is_empty() {
        anyhow::bail!("nothing to embed: give at least one --image or --text");
    }
    let clip = load_model(&a.model, a.precision, progress)?;
    let images = match a.images.is_empty() {
        true => Vec::new(),
        false => encode_images(&clip, &a.images, a.batch_size, progress)?.to_vec2::<f32>()?,
    };
    let texts = match a.texts.is_empty() {
        true => Vec::new(),
        false => clip.encode_text(&a.texts)?.to_vec2::<f32>()?,
    };
    let paths = display_paths(&a.images);
    if a.json {
        let images = paths
            .iter()
            .zip(&images)
            .map(|(p, e)| json!({"path": p, "embedding": e}));
        let texts = a
            .texts
            .iter()
            .zip(&texts)
            .map(|(t, e)| json!({"text": t, "embedding": e}));
        let (images, texts): (Vec<_>, Vec<_>) = (images.collect(), texts.collect());
        outln!("{}", json!({"images": images, "texts": texts}));
        return Ok(());
    }
    let rows = (paths.iter().zip(&images)).map(|(p, e)| ("image", p.as_str(), e.as_slice()));
    let texts = (a.texts.iter().zip(&texts)).map(|(t, e)| ("text", t.as_str(), e.as_slice()));
    output::print_embeddings(&rows.chain(texts).collect::<Vec<_>>())
}

fn classify(a: ClassifyArgs, progress: &Progress) -> Result<()> {
    let labels = a.labels()?;
    if labels.is_empty() {
        anyhow::bail!(
            "the label list is empty: give class names with --labels a,b,c or --labels-file"
        );
    }
    if a.images.is_empty() {
        anyhow::bail!("no images to classify");
    }
    let clip = load_model(&a.model, a.precision, progress)?;
    let bar = progress.bar("encoding prompts", labels.len() * a.templates.len());
    let classifier = ZeroShotClassifier::build(&clip, &labels, &a.templates, &mut |d, _| {
        bar.set_position(d as u64)
    });
    bar.finish_and_clear();
    let classifier = classifier?;
    let features = encode_images(&clip, &a.images, a.batch_size, progress)?;
    let predictions = classifier.predict(&features, a.top_k)?;
    let paths = display_paths(&a.images);
    if !a.json {
        return output::print_predictions(&paths, &predictions, &classifier.labels);
    }
    let results = output::prediction_results(&paths, &predictions);
    outln!(
        "{}",
        json!({"labels": classifier.labels, "logit_scale": classifier.logit_scale, "results": results})
    );
    Ok(())
}
