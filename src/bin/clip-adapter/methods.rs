//! `fit`, `run` and `predict`: arguments onto [`clip_adapter::experiment`], and printing.

use std::ffi::OsStr;
use std::path::PathBuf;

use anyhow::Result;
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::Args;
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::encode::display_paths;
use clip_adapter::experiment::{MethodOverrides, Validation};
use clip_adapter::features::task::Shots;
use clip_adapter::methods::clip_adapter::{Branch, Form, RatioMode};
use clip_adapter::methods::coop::ClassPosition;
use clip_adapter::methods::MethodKind;
use clip_adapter::runner::{self, FitSpec, PredictSpec, RunSpec};
use clip_adapter::zero_shot::Prediction;

use crate::args::{positive, shots_arg, trimmed};
use crate::output::{json_f32, print_written, Observer, Progress};

/// Parses a method name (surrounding spaces ignored) into the library's [`MethodKind`]; the
/// names come from the library's list, so `--help` and the parser cannot disagree with it.
#[derive(Clone)]
pub struct MethodParser;

impl TypedValueParser for MethodParser {
    type Value = MethodKind;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> std::result::Result<MethodKind, clap::Error> {
        let s = value.to_string_lossy();
        s.parse::<MethodKind>().map_err(|e| {
            clap::Error::raw(clap::error::ErrorKind::InvalidValue, format!("{e}\n")).with_cmd(cmd)
        })
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            MethodKind::all()
                .iter()
                .map(|k| PossibleValue::new(k.name())),
        ))
    }
}

/// One of `names`, parsed by the library's own `FromStr` (clap lists the names in `--help`
/// and in its error).
pub fn choice<T>(names: &'static [&'static str]) -> impl TypedValueParser<Value = T>
where
    T: std::str::FromStr<Err = String> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(names).try_map(|s| s.parse::<T>())
}

/// The method's options (shared by `fit` and `run`). An option that applies to none of the
/// chosen methods is refused; unset options keep the protocol's values.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// CLIP-Adapter: which features get an adapter [default: visual].
    #[arg(long, value_parser = choice::<Branch>(&["visual", "text", "both"]))]
    pub branch: Option<Branch>,
    /// CLIP-Adapter: `official` (ReLU after both Linear layers, the released code) or `paper`
    /// [default: official].
    #[arg(long, value_parser = choice::<Form>(&["official", "paper"]))]
    pub form: Option<Form>,
    /// CLIP-Adapter: hidden width = feature width / reduction [default: 4].
    #[arg(long, value_parser = positive)]
    pub reduction: Option<usize>,
    /// Residual ratio α: weight of the adapted image feature (CLIP-Adapter, default 0.2);
    /// Tip-Adapter(-F)'s α when there is no validation set (default: the authors' per-dataset
    /// value).
    #[arg(long)]
    pub alpha: Option<f32>,
    /// Text ratio β (CLIP-Adapter), Tip-Adapter(-F)'s β.
    #[arg(long)]
    pub beta: Option<f32>,
    /// CLIP-Adapter ratios: `fixed`, `learnable` (a scalar per branch) or `hyper` (predicted
    /// by the hyper-network Q(f, W)) [default: fixed].
    #[arg(long, value_parser = choice::<RatioMode>(&["fixed", "learnable", "hyper"]))]
    pub ratio: Option<RatioMode>,
    /// CLIP-Adapter: search the ratio on the validation set over these values (e.g.
    /// 0.1,0.2,0.4,0.6,0.8).
    #[arg(long, value_delimiter = ',', value_parser = trimmed::<f32>)]
    pub search: Vec<f32>,
    /// Learning rate (CLIP-Adapter and CoOp default 0.002; Tip-Adapter-F 0.001; ProLIP: used
    /// as is instead of its validation search over 1e-2..1e-5, default 1e-5 without validation).
    #[arg(long)]
    pub lr: Option<f32>,
    /// Epochs (default: CLIP-Adapter and CoOp by shots, 50/100/100/200/200, and 50 on
    /// ImageNet; Tip-Adapter-F the authors' per-dataset value; ProLIP 300).
    #[arg(long, value_parser = positive)]
    pub epochs: Option<usize>,
    /// Batch size (CLIP-Adapter and CoOp 32, Tip-Adapter-F 256).
    #[arg(long, value_parser = positive)]
    pub batch_size: Option<usize>,
    /// CoOp: number of learned context vectors M [default: 16].
    #[arg(long, value_parser = positive)]
    pub n_ctx: Option<usize>,
    /// CoOp: initialise the context from this phrase's token embeddings (e.g. "a photo of a");
    /// M becomes its token count.
    #[arg(long, value_name = "PHRASE")]
    pub ctx_init: Option<String>,
    /// CoOp: one context per class (class-specific context) instead of one shared by all.
    #[arg(long)]
    pub csc: bool,
    /// CoOp: where the class name sits among the context vectors [default: end].
    #[arg(long, value_parser = choice::<ClassPosition>(&["end", "middle", "front"]))]
    pub class_token_position: Option<ClassPosition>,
}

impl MethodArgs {
    pub(crate) fn overrides(&self) -> MethodOverrides {
        MethodOverrides {
            branch: self.branch,
            form: self.form,
            reduction: self.reduction,
            ratio: self.ratio,
            search: self.search.clone(),
            alpha: self.alpha,
            beta: self.beta,
            lr: self.lr,
            epochs: self.epochs,
            batch_size: self.batch_size,
            n_ctx: self.n_ctx,
            ctx_init: self.ctx_init.clone(),
            csc: self.csc,
            class_token_position: self.class_token_position,
        }
    }
}

/// `--validation val|none`, parsed by the library's [`Validation`].
pub(crate) fn validation_arg(s: &str) -> std::result::Result<Validation, String> {
    s.parse::<Validation>().map_err(|e| e.to_string())
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
    #[arg(long, value_parser = shots_arg)]
    pub shots: Shots,
    /// Seed of the few-shot draw (as given to extract), also the training seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The feature cache `extract` wrote.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,
    /// Pick the model's features when the cache holds several (the name given to extract, or
    /// the fingerprint). CoOp trains through this model's text tower [default: the model the
    /// cache records]; one whose content differs from the features' model is refused.
    #[arg(long)]
    pub model: Option<String>,
    /// Save the trained head here (safetensors with its metadata) for `predict`; CoOp saves its
    /// learned context and class names, with the model they are encoded through.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// `val`: hyper-parameters and best epochs chosen on the few-shot validation set; `none`:
    /// no validation set (as a user with a few labelled images has), each method keeps its
    /// documented default or uses its own validation-free rule (docs/methods.md).
    #[arg(long, default_value = "val", value_parser = validation_arg, value_name = "val|none")]
    pub validation: Validation,
    #[command(flatten)]
    pub options: MethodArgs,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

pub fn fit(a: FitArgs, progress: &Progress) -> Result<()> {
    let spec = FitSpec {
        method: a.method,
        dataset: a.dataset.clone(),
        shots: a.shots,
        seed: a.seed,
        cache: a.cache.clone(),
        model: a.model.clone(),
        save: a.save.clone(),
        validation: a.validation,
        overrides: a.options.overrides(),
        hub: HubOptions::from_env(),
    };
    let mut observer = Observer::fit(progress, a.method.name());
    let fitted = runner::fit(&spec, &mut observer);
    observer.finish();
    let fitted = fitted?;
    let (row, chosen) = (&fitted.row, &fitted.chosen);
    if a.json {
        let v = serde_json::json!({
            "method": row.method, "options": fitted.options, "dataset": a.dataset,
            "shots": match a.shots {
                Shots::K(k) => serde_json::json!(k),
                Shots::All => serde_json::json!("all"),
            },
            "seed": a.seed, "validation": a.validation.as_str(), "model": row.model,
            "val_accuracy": json_f32(row.val_accuracy),
            "test_accuracy": json_f32(row.test_accuracy), "train_seconds": row.train_seconds,
            "chosen_on_validation": chosen,
            "epoch_losses": fitted.fit.fitted.losses.iter().map(|&l| json_f32(l)).collect::<Vec<_>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{} on {} ({}-shot, seed {}): val {:.2} %, test {:.2} % ({:.1} s)",
        row.method,
        a.dataset,
        a.shots,
        a.seed,
        row.val_accuracy,
        row.test_accuracy,
        row.train_seconds
    );
    if !chosen.is_empty() {
        let c: Vec<String> = chosen.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let how = match a.validation {
            Validation::Val => "chosen on validation",
            Validation::None => "defaults (no validation set)",
        };
        println!("{how}: {}", c.join(", "));
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
    /// The feature cache `extract` wrote.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,
    /// Pick the model's features when the cache holds several (the name given to extract, or
    /// the fingerprint). CoOp trains through this model's text tower [default: the model the
    /// cache records]; one whose content differs from the features' model is refused.
    #[arg(long)]
    pub model: Option<String>,
    /// Where results.csv, results.md and the folder's report (report.md, figures/) go; rows
    /// already in results.csv (same method, options, dataset, shots, seed, model and
    /// features) are not run again.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    /// Published numbers (CSV: method,backbone,dataset,shots,accuracy) to print beside ours,
    /// those of the run's backbone (read from the model's config).
    #[arg(long, value_name = "CSV")]
    pub reported: Option<PathBuf>,
    /// `val`: hyper-parameters and best epochs chosen on the few-shot validation set; `none`:
    /// no validation set (as a user with a few labelled images has), each method keeps its
    /// documented default or uses its own validation-free rule (docs/methods.md).
    #[arg(long, default_value = "val", value_parser = validation_arg, value_name = "val|none")]
    pub validation: Validation,
    #[command(flatten)]
    pub options: MethodArgs,
}

pub fn run(a: RunArgs, progress: &Progress) -> Result<()> {
    let spec = RunSpec {
        cache: a.cache,
        out: a.out,
        datasets: a.datasets,
        shots: a.shots,
        seeds: a.seeds,
        methods: a.methods,
        overrides: a.options.overrides(),
        validation: a.validation,
        model: a.model,
        reported: a.reported,
        hub: HubOptions::from_env(),
    };
    let cells = spec.kinds().len() * spec.datasets.len() * spec.shots.len() * spec.seeds.len();
    let mut observer = Observer::grid(progress, "grid", cells, true);
    let outcome = runner::run(&spec, &mut observer);
    observer.finish();
    let outcome = outcome?;
    print!("{}", outcome.table);
    print_written(&outcome.report);
    eprintln!(
        "grid finished in {:.1} s: {} fitted, {} already in {}",
        outcome.seconds,
        outcome.fitted,
        outcome.rows.len() - outcome.fitted,
        outcome.results_csv.display()
    );
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
        print_table(&paths, &out.predictions, &out.labels);
        return Ok(());
    }
    let results: Vec<_> = (paths.iter().zip(&out.predictions))
        .map(|(p, preds)| {
            let preds: Vec<_> = (preds.iter())
                .map(|x| {
                    serde_json::json!({"label": x.label, "index": x.index,
                    "probability": json_f32(x.probability), "logit": json_f32(x.logit)})
                })
                .collect();
            serde_json::json!({"path": p, "predictions": preds})
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"adapter": a.adapter.display().to_string(), "method": out.method,
            "model": out.model, "labels": out.labels, "results": results})
    );
    Ok(())
}

/// The layout `classify` prints: the path, then rank, label, probability and logit.
fn print_table(paths: &[String], predictions: &[Vec<Prediction>], labels: &[String]) {
    let width = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    for (path, preds) in paths.iter().zip(predictions) {
        println!("{path}");
        for (rank, p) in preds.iter().enumerate() {
            println!(
                "  {:>2}. {:<width$}  {:>6.2}%  (logit {:.3})",
                rank + 1,
                p.label,
                100.0 * p.probability,
                p.logit
            );
        }
    }
}
