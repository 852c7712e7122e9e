//! `clip-adapter import`: features another program computed, into the cache. The library
//! (`features::import`) reads, checks and writes; this file parses flags and prints.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::data::Split;
use clip_adapter::features::import::{self, ArrayError, ArraySource, ImportError, ImportSpec};
use clip_adapter::features::import::{PartSpec, TextSpec};
use clip_adapter::features::task::Shots;

use crate::output::{outln, Observer, Progress};

#[derive(Args)]
pub struct ImportArgs {
    /// The dataset's name in the cache (`fit --dataset NAME` reads it).
    #[arg(long, value_name = "NAME")]
    pub dataset: String,
    /// Train image features, `(rows, width)`: .npy, .npz, .safetensors or a torch.save file
    /// (.pt, .pth, .bin); `FILE#NAME` picks an array of a file that holds several.
    #[arg(long, value_name = "FILE[#NAME]", value_parser = array)]
    pub train: ArraySource,
    /// Train labels, one integer in 0..classes per feature row (same file types).
    #[arg(long, value_name = "FILE[#NAME]", value_parser = array)]
    pub train_labels: ArraySource,
    /// Validation features (optional; without them methods keep their default settings).
    #[arg(long, value_name = "FILE[#NAME]", value_parser = array, requires = "val_labels")]
    pub val: Option<ArraySource>,
    /// Validation labels.
    #[arg(long, value_name = "FILE[#NAME]", value_parser = array, requires = "val")]
    pub val_labels: Option<ArraySource>,
    /// Test features.
    #[arg(long, value_name = "FILE[#NAME]", value_parser = array)]
    pub test: ArraySource,
    /// Test labels.
    #[arg(long, value_name = "FILE[#NAME]", value_parser = array)]
    pub test_labels: ArraySource,
    /// Class names by label, one per line.
    #[arg(long, value_name = "FILE")]
    pub classnames: PathBuf,
    /// The class names' text embeddings, `(classes, width)`, one row per class name.
    #[arg(long, value_name = "FILE[#NAME]", value_parser = array, required_unless_present = "model", conflicts_with = "model")]
    pub text: Option<ArraySource>,
    /// Instead of --text: encode each class name in each template with this model (directory,
    /// OpenAI file, openai:NAME or hub id), which must be the one that made the features.
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: Option<String>,
    /// A prompt template for --model, `{}` standing for the class name; repeat for several
    /// [default: the benchmark's templates for a benchmark's name, else "a photo of a {}."].
    #[arg(long = "template", value_name = "TEMPLATE")]
    pub templates: Vec<String>,
    /// The model's logit scale, with --text.
    #[arg(long, default_value_t = 100.0, value_name = "S")]
    pub logit_scale: f32,
    /// The model that made the features, as you name it (recorded in the files).
    #[arg(long, value_name = "NAME")]
    pub model_name: Option<String>,
    /// The model's fingerprint as `extract` recorded it, to share the identity of its caches.
    #[arg(long, value_name = "HEX")]
    pub fingerprint: Option<String>,
    /// The draw the train (and val) features are: K images per class, or `all`.
    #[arg(long, value_parser = crate::shared::trimmed::<Shots>, value_name = "K|all")]
    pub shots: Shots,
    /// The draw's seed (`fit --seed`).
    #[arg(long, default_value_t = 1, value_name = "S")]
    pub seed: u64,
    /// Cache folder.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,
    /// Print `{"dataset", "model", "model_name", "width", "text", "sets": [{"name", "path", "rows"}]}`.
    #[arg(long)]
    pub json: bool,
}

/// `FILE#NAME`, or `FILE` (also when the whole argument names an existing file).
fn array(arg: &str) -> std::result::Result<ArraySource, String> {
    Ok(match arg.rsplit_once('#') {
        Some((path, name)) if !std::path::Path::new(arg).exists() => ArraySource::named(path, name),
        _ => ArraySource::new(arg),
    })
}

pub fn run(a: ImportArgs, progress: &Progress) -> Result<()> {
    let mut parts = vec![PartSpec::new(Split::Train, a.train, a.train_labels)];
    if let (Some(v), Some(l)) = (a.val, a.val_labels) {
        parts.push(PartSpec::new(Split::Val, v, l));
    }
    parts.push(PartSpec::new(Split::Test, a.test, a.test_labels));
    let text = match (a.text, &a.model) {
        (Some(array), _) => TextSpec::Features {
            array,
            logit_scale: a.logit_scale,
            templates: a.templates,
        },
        (None, Some(model)) => TextSpec::encode(model, a.templates, &a.dataset),
        (None, None) => anyhow::bail!("give the class embeddings (--text) or a model (--model)"),
    };
    let spec = ImportSpec {
        classnames: import::read_classnames(&a.classnames)?,
        cache: a.cache,
        dataset: a.dataset,
        shots: a.shots,
        seed: a.seed,
        parts,
        text,
        model_name: a.model_name,
        fingerprint: a.fingerprint,
        hub: HubOptions::from_env(),
    };
    let mut observer = Observer::new(progress);
    let outcome = import::import(&spec, &mut observer);
    observer.finish();
    let outcome = outcome.map_err(|e| match e {
        ImportError::Array(ArrayError::Unnamed { .. }) => anyhow!("{e} (as FILE#NAME)"),
        e => e.into(),
    })?;
    if a.json {
        outln!("{}", serde_json::to_string(&outcome)?);
        return Ok(());
    }
    let text = ("text".to_string(), spec.classnames.len(), outcome.text);
    let sets = outcome.sets.into_iter().map(|s| (s.name, s.rows, s.path));
    for (name, rows, path) in sets.chain([text]) {
        outln!("{name:<28} {rows:>7}  {}", path.display());
    }
    Ok(())
}
