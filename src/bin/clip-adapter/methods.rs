//! `fit`, `run` and `predict`: arguments onto [`clip_adapter::runner`], and printing.

use std::ffi::OsStr;
use std::path::PathBuf;

use anyhow::Result;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{ArgAction, ArgMatches, Args, FromArgMatches};
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::encode::display_paths;
use clip_adapter::experiment::{MethodOverrides, Validation};
use clip_adapter::features::task::Shots;
use clip_adapter::features::Shard;
use clip_adapter::methods::{MethodKind, OptionSpec, OptionValue, OPTIONS};
use clip_adapter::runner::{self, FitSpec, PredictSpec, RunSpec};

use crate::output::{
    outln, prediction_results, print_predictions, print_written, Observer, Progress,
};
use crate::shared::{positive, trimmed, CacheArgs, ValidationArg};

/// Parses a method name (surrounding spaces ignored) into the library's [`MethodKind`]; the
/// names come from the library's list, so `--help` and the parser cannot disagree with it.
#[derive(Clone)]
pub struct MethodParser;

impl TypedValueParser for MethodParser {
    type Value = MethodKind;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<MethodKind, clap::Error> {
        let s = value.to_string_lossy();
        let invalid = |e| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{e}\n")).with_cmd(cmd)
        };
        s.parse::<MethodKind>().map_err(invalid)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            MethodKind::all()
                .iter()
                .map(|k| PossibleValue::new(k.name())),
        ))
    }
}

/// The methods' options (shared by `fit`, `run` and `sweep`): a flag per option of the
/// library's list, named, parsed and described as the library says. An option that applies to
/// none of the chosen methods is refused; unset options keep the protocol's values.
#[derive(Debug, Clone, Default)]
pub struct MethodArgs(pub MethodOverrides);

impl FromArgMatches for MethodArgs {
    fn from_arg_matches(m: &ArgMatches) -> Result<Self, clap::Error> {
        let mut overrides = MethodOverrides::default();
        for spec in OPTIONS {
            let value = match spec.value {
                OptionValue::Switch => m.get_flag(spec.name).then(|| "true".to_string()),
                _ => (m.get_many::<String>(spec.name))
                    .map(|v| v.cloned().collect::<Vec<_>>().join(",")),
            };
            if let Some(v) = value {
                let e = |e: clip_adapter::methods::OptionError| {
                    clap::Error::raw(clap::error::ErrorKind::InvalidValue, e)
                };
                overrides.set(spec.name, &v).map_err(e)?;
            }
        }
        Ok(MethodArgs(overrides))
    }

    fn update_from_arg_matches(&mut self, m: &ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(m)?;
        Ok(())
    }
}

impl Args for MethodArgs {
    fn augment_args(cmd: clap::Command) -> clap::Command {
        OPTIONS
            .iter()
            .fold(cmd, |cmd, spec| cmd.arg(option_arg(spec)))
    }

    fn augment_args_for_update(cmd: clap::Command) -> clap::Command {
        Self::augment_args(cmd)
    }
}

/// An option's flag; its value is checked as it is parsed (a bad one is an argument error).
fn option_arg(spec: &'static OptionSpec) -> clap::Arg {
    let arg = clap::Arg::new(spec.name).long(spec.name).help(spec.help);
    let check = move |s: &str| {
        MethodOverrides::default()
            .set(spec.name, s)
            .map(|()| s.to_string())
    };
    match spec.value {
        OptionValue::Switch => arg.action(ArgAction::SetTrue),
        OptionValue::Choice(names) => arg
            .value_name("NAME")
            .value_parser(PossibleValuesParser::new(names)),
        OptionValue::Numbers => arg
            .value_name("X,...")
            .value_delimiter(',')
            .value_parser(check),
        OptionValue::Number => arg.value_name("X").value_parser(check),
        OptionValue::Count => arg.value_name("N").value_parser(check),
        OptionValue::Phrase => arg.value_name("PHRASE").value_parser(check),
        OptionValue::Names(_) => arg.value_name("NAME,...").value_parser(check),
    }
}

#[derive(Args, Debug)]
pub struct FitArgs {
    /// The method.
    #[arg(long, value_parser = MethodParser)]
    pub method: MethodKind,
    /// The dataset folder name in the cache (e.g. eurosat).
    #[arg(long)]
    pub dataset: String,
    /// Training images per class of the few-shot draw (as given to extract), or `all` for the
    /// whole training split (features of `extract` without --shots).
    #[arg(long, value_parser = trimmed::<Shots>)]
    pub shots: Shots,
    /// Seed of the few-shot draw (as given to extract), also the training seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Save the trained head here (safetensors with its metadata) for `predict`; CoOp saves its
    /// learned context and class names, with the model they are encoded through.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    #[command(flatten)]
    pub validation: ValidationArg,
    #[command(flatten)]
    pub options: MethodArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn fit(a: FitArgs, progress: &Progress) -> Result<()> {
    let validation = a.validation.validation;
    let spec = FitSpec {
        method: a.method,
        dataset: a.dataset.clone(),
        shots: a.shots,
        seed: a.seed,
        cache: a.cache.cache,
        model: a.cache.model,
        save: a.save,
        validation,
        overrides: a.options.0,
        hub: HubOptions::from_env(),
    };
    let mut observer = Observer::fit(progress, a.method.name());
    let fitted = runner::fit(&spec, &mut observer);
    observer.finish();
    let fitted = fitted?;
    observer.warn_unaugmented(&fitted.row);
    let (row, chosen) = (&fitted.row, &fitted.chosen);
    if a.json {
        let v = serde_json::json!({
            "method": row.method, "options": fitted.options, "dataset": a.dataset,
            "shots": a.shots, "seed": a.seed, "validation": validation.as_str(), "model": row.model,
            "val_accuracy": row.val_accuracy, "test_accuracy": row.test_accuracy,
            "train_seconds": row.train_seconds, "chosen_on_validation": chosen,
            "epoch_losses": fitted.fit.fitted.losses,
        });
        outln!("{v}");
        return Ok(());
    }
    let (val, test, seconds) = (row.val_accuracy, row.test_accuracy, row.train_seconds);
    let draw = format!("{}-shot, seed {}", a.shots, a.seed);
    // Not measured (a method scoring its own features has no cached validation ones): a dash.
    let val = match val.is_nan() {
        true => "-".to_string(),
        false => format!("{val:.2} %"),
    };
    outln!(
        "{} on {} ({draw}): val {val}, test {test:.2} % ({seconds:.1} s)",
        row.method,
        a.dataset
    );
    if !chosen.is_empty() {
        let c: Vec<String> = chosen.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let how = match validation {
            Validation::Val => "chosen on validation",
            Validation::None => "defaults (no validation set)",
        };
        outln!("{how}: {}", c.join(", "));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Methods to run, comma-separated; the tables list them in the order of the possible
    /// values (the paper's comparison, then later methods).
    #[arg(long, value_delimiter = ',', required = true, value_parser = MethodParser)]
    pub methods: Vec<MethodKind>,
    /// Dataset folder names in the cache, comma-separated.
    #[arg(long, value_delimiter = ',', required = true, value_parser = trimmed::<String>)]
    pub datasets: Vec<String>,
    /// Shot counts of the few-shot draws (extracted beforehand).
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8,16", value_parser = positive)]
    pub shots: Vec<usize>,
    /// Seeds of the few-shot draws (extracted beforehand), also the training seeds.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3", value_parser = trimmed::<u64>)]
    pub seeds: Vec<u64>,
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Where results.csv, results.md and the folder's report (report.md, figures/) go; rows
    /// already in results.csv (same method, options, dataset, shots, seed, model and
    /// features) are not run again.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    /// Published numbers (CSV: method,backbone,dataset,shots,accuracy) to print beside ours,
    /// those of the run's backbone (read from the model's config).
    #[arg(long, value_name = "CSV")]
    pub reported: Option<PathBuf>,
    #[command(flatten)]
    pub validation: ValidationArg,
    /// few-shot: train and test on every class. base-to-new (CoCoOp's protocol): train on the
    /// first half of the classes (rounded up), test on the base classes and on the new ones
    /// the method never saw, and report their harmonic mean. cross-dataset: train on --source,
    /// test the same head on each of --datasets among its own classes. domain: train on
    /// --source, test on --datasets holding its classes (or a subset) in other image domains.
    /// Methods whose head cannot score an unseen class are refused under base-to-new and
    /// cross-dataset, with the reason.
    #[arg(long, default_value = "few-shot", value_name = "NAME", value_parser = ["few-shot", "base-to-new", "cross-dataset", "domain"])]
    pub protocol: String,
    /// The dataset the cross-dataset and domain protocols train on (e.g. imagenet); --datasets
    /// are then the ones tested.
    #[arg(long, value_name = "NAME")]
    pub source: Option<String>,
    /// Run only shard I of N (0 <= I < N), e.g. one task of a Slurm job array: a share of the
    /// grid's cells balanced by their estimated cost, the same on every machine. Writes
    /// results.shard-I-of-N.csv, .json (the grid and the share) and .md in --out, and no
    /// report; join the shards with `clip-adapter merge --results DIR`.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub options: MethodArgs,
}

pub fn run(a: RunArgs, progress: &Progress) -> Result<()> {
    let spec = RunSpec {
        cache: a.cache.cache,
        out: a.out,
        datasets: a.datasets,
        shots: a.shots,
        seeds: a.seeds,
        methods: a.methods,
        overrides: a.options.0,
        validation: a.validation.validation,
        protocol: a.protocol.parse()?,
        source: a.source,
        model: a.cache.model,
        reported: a.reported,
        hub: HubOptions::from_env(),
        shard: a.shard,
    };
    let cells = spec.kinds().len() * spec.datasets.len() * spec.shots.len() * spec.seeds.len();
    let mut observer = Observer::grid(progress, "grid", cells, true);
    let outcome = runner::run(&spec, &mut observer);
    observer.finish();
    let outcome = outcome?;
    outln!("{}", outcome.table.trim_end());
    if let Some(report) = &outcome.report {
        print_written(report);
    }
    let (seconds, fitted, csv) = (
        outcome.seconds,
        outcome.fitted,
        outcome.results_csv.display(),
    );
    let found = outcome.rows.len() - fitted;
    eprintln!("grid finished in {seconds:.1} s: {fitted} fitted, {found} already in {csv}");
    Ok(())
}

#[derive(Args, Debug)]
pub struct PredictArgs {
    /// A head saved by `fit --save` (a CoOp head is recognised by its format, and its learned
    /// prompts are encoded through the model).
    #[arg(long, value_name = "FILE")]
    pub adapter: PathBuf,
    /// The CLIP model [default: the one the head was trained on, as the head records it].
    #[arg(long, value_name = "DIR|HUB_ID")]
    pub model: Option<String>,
    /// Use --model even when its content differs from the model the head was trained on (or
    /// the head records no fingerprint); its predictions are then not to be trusted.
    #[arg(long)]
    pub allow_model_mismatch: bool,
    /// Images to classify.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<PathBuf>,
    /// Classes to show per image.
    #[arg(long, default_value_t = 5, value_name = "K", value_parser = positive)]
    pub top_k: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = clip_adapter::encode::DEFAULT_BATCH, value_name = "N", value_parser = positive)]
    pub batch_size: usize,
    /// Print JSON: `{"adapter", "method", "model", "labels", "results": [{"path",
    /// "predictions": [{"label", "index", "probability", "logit"}]}]}`.
    #[arg(long)]
    pub json: bool,
}

pub fn predict(a: PredictArgs, progress: &Progress) -> Result<()> {
    let spec = PredictSpec {
        head: a.adapter.clone(),
        model: a.model,
        allow_model_mismatch: a.allow_model_mismatch,
        images: a.images,
        top_k: a.top_k,
        batch_size: a.batch_size,
        hub: HubOptions::from_env(),
    };
    let mut observer = Observer::new(progress);
    let out = runner::predict(&spec, &mut observer);
    observer.finish();
    let out = out?;
    let paths = display_paths(&spec.images);
    if !a.json {
        return print_predictions(&paths, &out.predictions, &out.labels);
    }
    let doc = serde_json::json!({"adapter": a.adapter.display().to_string(), "method": out.method,
        "model": out.model, "labels": out.labels, "results": prediction_results(&paths, &out.predictions)});
    outln!("{doc}");
    Ok(())
}
