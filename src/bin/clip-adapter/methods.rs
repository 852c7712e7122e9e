//! `fit`, `run` and `predict`: arguments onto [`clip_adapter::experiment`], and printing.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::builder::{PossibleValue, TypedValueParser};
use clap::{Args, ValueEnum};
use clip_adapter::encode::{display_paths, encode_image_files};
use clip_adapter::experiment::{
    self, fit_row, run_grid, Grid, GridEvent, GridMethod, MethodOverrides, Published, ResultsFile,
    RowSource, RowSpec, Summary, Validation,
};
use clip_adapter::features::model_fingerprint;
use clip_adapter::methods::clip_adapter::{Branch, Form, RatioMode};
use clip_adapter::methods::coop::{self, ClassPosition, CoopHead, PromptModel};
use clip_adapter::methods::from_cache::{load_task, CacheQuery, Shots, TaskSource};
use clip_adapter::methods::head::{self, HeadInfo};
use clip_adapter::methods::{self, FeatureSpace, Matrix, MethodKind, Needs};
use clip_adapter::report::{write_report, ReportOptions};
use clip_adapter::zero_shot::{rank, Prediction};

use crate::args::{positive, trimmed};
use crate::output::Progress;

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

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum BranchArg {
    Visual,
    Text,
    Both,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FormArg {
    Official,
    Paper,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum PositionArg {
    End,
    Middle,
    Front,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum RatioArg {
    Fixed,
    Learnable,
    Hyper,
}

/// The method's options (shared by `fit` and `run`). An option that applies to none of the
/// chosen methods is refused; unset options keep the protocol's values.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// CLIP-Adapter: which features get an adapter [default: visual].
    #[arg(long, value_enum)]
    pub branch: Option<BranchArg>,
    /// CLIP-Adapter: `official` (ReLU after both Linear layers, the released code) or `paper`
    /// [default: official].
    #[arg(long, value_enum)]
    pub form: Option<FormArg>,
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
    #[arg(long, value_enum)]
    pub ratio: Option<RatioArg>,
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
    #[arg(long, value_enum)]
    pub class_token_position: Option<PositionArg>,
}

impl MethodArgs {
    pub(crate) fn overrides(&self) -> MethodOverrides {
        MethodOverrides {
            branch: self.branch.map(|b| match b {
                BranchArg::Visual => Branch::Visual,
                BranchArg::Text => Branch::Text,
                BranchArg::Both => Branch::Both,
            }),
            form: self.form.map(|f| match f {
                FormArg::Official => Form::Official,
                FormArg::Paper => Form::Paper,
            }),
            reduction: self.reduction,
            ratio: self.ratio.map(|r| match r {
                RatioArg::Fixed => RatioMode::Fixed,
                RatioArg::Learnable => RatioMode::Learnable,
                RatioArg::Hyper => RatioMode::HyperNetwork,
            }),
            search: self.search.clone(),
            alpha: self.alpha,
            beta: self.beta,
            lr: self.lr,
            epochs: self.epochs,
            batch_size: self.batch_size,
            n_ctx: self.n_ctx,
            ctx_init: self.ctx_init.clone(),
            csc: self.csc,
            class_token_position: self.class_token_position.map(|p| match p {
                PositionArg::End => ClassPosition::End,
                PositionArg::Middle => ClassPosition::Middle,
                PositionArg::Front => ClassPosition::Front,
            }),
        }
    }
}

/// `--validation val|none`, parsed by the library's [`Validation`].
pub(crate) fn validation_arg(s: &str) -> std::result::Result<Validation, String> {
    s.parse::<Validation>().map_err(|e| e.to_string())
}

/// The model CoOp trains through: `--model` when it names one (rather than a fingerprint),
/// else the one the cache records as having made the features; refused unless its fingerprint
/// is theirs.
fn coop_model(given: Option<&str>, source: &RowSource, progress: &Progress) -> Result<PromptModel> {
    let spec = match given {
        Some(g) if g != source.model => g.to_string(),
        _ => source.model_name.clone(),
    };
    let files = crate::resolve_model(&spec, progress)?;
    experiment::prompt_model(&files, &spec, source)
        .with_context(|| format!("loading the text tower of model `{spec}` for CoOp"))
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

/// An f32 as JSON in its shortest decimal form (`92.8`, not `92.80000305175781`); NaN (no
/// validation set) as null.
fn json_f32(x: f32) -> serde_json::Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

pub(crate) fn method_bar<'a>(
    bar: &'a indicatif::ProgressBar,
) -> impl FnMut(methods::Progress) + 'a {
    move |p| match p {
        methods::Progress::Epoch {
            epoch,
            epochs,
            loss,
        } => {
            bar.set_length(epochs as u64);
            bar.set_position(epoch as u64 + 1);
            bar.set_message(format!("loss {loss:.4}"));
        }
        methods::Progress::Search { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    }
}

/// `--shots`: a positive count or `all`.
pub(crate) fn shots_arg(s: &str) -> std::result::Result<Shots, String> {
    match s.parse::<Shots>() {
        Ok(Shots::K(0)) | Err(_) => Err(format!(
            "`{s}` is not a shot count: give a positive number, or `all` for the whole training split"
        )),
        Ok(shots) => Ok(shots),
    }
}

pub fn fit(a: FitArgs, progress: &Progress) -> Result<()> {
    let overrides = a.options.overrides();
    overrides.check(&[a.method])?;
    overrides.check_validation(a.validation)?;
    let method = overrides.method(a.method, &a.dataset, a.seed);
    let q = CacheQuery {
        cache: a.cache.clone(),
        dataset: a.dataset.clone(),
        shots: a.shots,
        seed: a.seed,
        model: a.model.clone(),
        split: None,
        crop_scale: None,
    };
    let (task, source) = load_task(&q)
        .with_context(|| format!("loading {} {}-shot seed {}", q.dataset, q.shots, q.seed))?;
    let row_source = RowSource::of_task(&source);
    let grid_method = GridMethod {
        label: a.method.name().to_string(),
        options: overrides.label(a.method),
    };
    let spec = RowSpec {
        method: &grid_method,
        dataset: &a.dataset,
        // The whole split is recorded as 0 shots.
        shots: match a.shots {
            Shots::K(k) => k,
            Shots::All => 0,
        },
        seed: a.seed,
        validation: a.validation,
        source: &row_source,
    };
    let prompt_model = match a.method.card().needs {
        Needs::TextTower => Some(coop_model(a.model.as_deref(), &row_source, progress)?),
        _ => None,
    };
    let bar = progress.bar(a.method.name(), 0);
    let (trained, row) = fit_row(
        &method,
        &task,
        &spec,
        prompt_model.as_ref(),
        &mut method_bar(&bar),
    )?;
    bar.finish_and_clear();
    let fitted = &trained.fitted;
    if let Some(path) = &a.save {
        match &trained.prompt {
            Some(coop_head) => coop_head.save(path)?,
            None => save_head(path, &method, &q, &task, &source, fitted)?,
        }
    }
    let chosen: BTreeMap<_, _> = fitted.chosen.iter().cloned().collect();
    if a.json {
        let v = serde_json::json!({
            "method": row.method, "options": method.describe(), "dataset": a.dataset,
            "shots": match a.shots {
                Shots::K(k) => serde_json::json!(k),
                Shots::All => serde_json::json!("all"),
            },
            "seed": a.seed, "validation": a.validation.as_str(), "model": row.model,
            "val_accuracy": json_f32(row.val_accuracy),
            "test_accuracy": json_f32(row.test_accuracy), "train_seconds": row.train_seconds,
            "chosen_on_validation": chosen,
            "epoch_losses": fitted.losses.iter().map(|&l| json_f32(l)).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
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
    }
    Ok(())
}

fn save_head(
    path: &Path,
    method: &methods::Method,
    q: &CacheQuery,
    task: &methods::FewShotTask,
    source: &TaskSource,
    fitted: &methods::Fitted,
) -> Result<()> {
    let mut options: BTreeMap<String, String> = fitted.chosen.iter().cloned().collect();
    options.insert("options".into(), method.describe());
    options.insert("dataset".into(), q.dataset.clone());
    options.insert("shots".into(), q.shots.to_string());
    options.insert("seed".into(), q.seed.to_string());
    let info = HeadInfo {
        model: experiment::model_reference(&source.model_name),
        model_fingerprint: Some(source.model.clone()),
        classnames: task.classnames.clone(),
        templates: source.templates.clone(),
        method: method.name().to_string(),
        options: serde_json::to_string(&options)?,
    };
    head::save(path, &fitted.head, &info)?;
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

/// The datasets the cache holds (its sub-folders).
pub(crate) fn cached_datasets(cache: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(cache)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    out.sort();
    out
}

/// The published numbers of the backbone of the model `model_name` (content fingerprint
/// `fingerprint`), and the backbone's name; none (with a note) when the model cannot be
/// found, is not the one with that fingerprint, or is not one of OpenAI's backbones.
pub(crate) fn published_for(
    reported: Option<&Published>,
    model_name: &str,
    fingerprint: &str,
    progress: &Progress,
) -> (Published, Option<String>) {
    match reported.map(|r| (r, run_backbone(model_name, fingerprint, progress))) {
        Some((r, Some(b))) => (r.for_backbone(b), Some(b.to_string())),
        _ => (Published::default(), None),
    }
}

/// The backbone of the model `model_name`, from its config; `None` (with a note) when the
/// model cannot be found or is not the one that made the features.
fn run_backbone(model_name: &str, fingerprint: &str, progress: &Progress) -> Option<&'static str> {
    let files = match crate::resolve_model(model_name, progress) {
        Ok(f) => f,
        Err(e) => {
            eprintln!(
                "note: no published numbers: cannot read the model behind the features to know \
                 its backbone: {e:#}"
            );
            return None;
        }
    };
    match model_fingerprint(&files) {
        Ok(f) if f == fingerprint => {}
        _ => {
            eprintln!(
                "note: no published numbers: {} is not the model that made the features \
                 (fingerprint {fingerprint})",
                files.dir.display(),
            );
            return None;
        }
    }
    let backbone = files
        .read_config()
        .ok()
        .and_then(|c| experiment::backbone(&c));
    if backbone.is_none() {
        eprintln!(
            "note: no published numbers: {} is not one of OpenAI's CLIP backbones",
            files.dir.display()
        );
    }
    backbone
}

/// A finished grid cell: the grid's bar moves on, and a fitted row is reported on stderr.
pub(crate) fn report_row(
    bar: &indicatif::ProgressBar,
    row: &clip_adapter::experiment::ResultRow,
    skipped: bool,
    done: usize,
) {
    bar.set_position(done as u64);
    if !skipped {
        bar.suspend(|| {
            eprintln!(
                "{} {} {}-shot seed {}: test {:.2} % ({:.1} s)",
                row.label(),
                row.dataset,
                row.shots,
                row.seed,
                row.test_accuracy,
                row.train_seconds
            )
        });
    }
}

pub fn run(a: RunArgs, progress: &Progress) -> Result<()> {
    // Everything is checked before the first fit.
    let overrides = a.options.overrides();
    let mut kinds = a.methods.clone();
    kinds.sort();
    kinds.dedup();
    overrides.check(&kinds)?;
    overrides.check_validation(a.validation)?;
    let available = cached_datasets(&a.cache);
    if let Some(d) = a.datasets.iter().find(|d| !available.contains(d)) {
        return Err(experiment::ExperimentError::UnknownDataset {
            dataset: d.clone(),
            cache: a.cache.clone(),
            available: if available.is_empty() {
                "nothing; run `clip-adapter extract` first".into()
            } else {
                available.join(", ")
            },
        }
        .into());
    }
    let reported = match &a.reported {
        Some(p) => Some(Published::read(p)?),
        None => None,
    };
    // CoOp's model is loaded and checked against the features before anything is fitted or
    // written; one model per run, as every draw of a run comes from the same model's features.
    let mut prompt_model: Option<std::rc::Rc<PromptModel>> = None;
    if let (true, Some(d), Some(&k), Some(&seed)) = (
        kinds.iter().any(|k| k.card().needs == Needs::TextTower),
        a.datasets.first(),
        a.shots.first(),
        a.seeds.first(),
    ) {
        let q = CacheQuery {
            model: a.model.clone(),
            ..CacheQuery::new(a.cache.clone(), d, Shots::K(k), seed)
        };
        let (_, source) =
            load_task(&q).with_context(|| format!("loading {d} {k}-shot seed {seed}"))?;
        let m = coop_model(a.model.as_deref(), &RowSource::of_task(&source), progress)?;
        prompt_model = Some(std::rc::Rc::new(m));
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut results = ResultsFile::open(&a.out.join("results.csv"))?;

    let grid = Grid {
        methods: (kinds.iter())
            .map(|&k| GridMethod {
                label: k.name().to_string(),
                options: overrides.label(k),
            })
            .collect(),
        datasets: a.datasets.clone(),
        shots: a.shots.clone(),
        seeds: a.seeds.clone(),
        validation: a.validation,
    };
    let started = std::time::Instant::now();
    let mut first_source: Option<TaskSource> = None;
    let grid_bar = progress.bar("grid", grid.cells());
    let method_bar_ = progress.bar("", 0);
    let mut on_method = method_bar(&method_bar_);
    let outcome = run_grid::<anyhow::Error>(
        &grid,
        &mut results,
        &mut |dataset, shots, seed| {
            let q = CacheQuery {
                model: a.model.clone(),
                ..CacheQuery::new(a.cache.clone(), dataset, Shots::K(shots), seed)
            };
            let (task, source) = load_task(&q)
                .with_context(|| format!("loading {dataset} {shots}-shot seed {seed}"))?;
            let row_source = RowSource::of_task(&source);
            first_source.get_or_insert(source);
            Ok((task, row_source))
        },
        &mut |source| {
            if let Some(m) = prompt_model
                .as_ref()
                .filter(|m| m.fingerprint == source.model)
            {
                return Ok(std::rc::Rc::clone(m));
            }
            let m = std::rc::Rc::new(coop_model(a.model.as_deref(), source, progress)?);
            prompt_model = Some(std::rc::Rc::clone(&m));
            Ok(m)
        },
        &mut |i, dataset, seed| overrides.method(kinds[i], dataset, seed),
        &mut |event| match event {
            GridEvent::Fitting { method, .. } => method_bar_.set_message(method.to_string()),
            GridEvent::Method(p) => on_method(p),
            GridEvent::Row {
                row, skipped, done, ..
            } => report_row(&grid_bar, row, skipped, done),
        },
    )?;
    method_bar_.finish_and_clear();
    grid_bar.finish_and_clear();

    let (published, backbone) = match &first_source {
        Some(source) => published_for(
            reported.as_ref(),
            &source.model_name,
            &source.model,
            progress,
        ),
        None => (Published::default(), None),
    };
    let table = Summary::new(&results.with_other_protocol(&outcome.rows))
        .markdown(&published, backbone.as_deref());
    clip_adapter::fsutil::write_atomic(&a.out.join("results.md"), table.as_bytes())?;
    print!("{table}");
    // The folder's report covers every row in it (earlier runs and sweeps too).
    let options = ReportOptions {
        published,
        backbone,
        ..ReportOptions::default()
    };
    let files = write_report(&a.out, results.rows(), &options)?;
    crate::report::print_written(&files);
    eprintln!(
        "grid finished in {:.1} s: {} fitted, {} already in {}",
        started.elapsed().as_secs_f64(),
        outcome.fitted,
        outcome.rows.len() - outcome.fitted,
        results.path().display()
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

/// A head file: one on features, or CoOp's context (encoded through the model to classify).
enum Loaded {
    // Boxed: a head on features is several times a CoOp head's size.
    Features(Box<methods::Head>),
    Coop(CoopHead),
}

pub fn predict(a: PredictArgs, progress: &Progress) -> Result<()> {
    let (loaded, info) = if coop::head::is_coop_head(&a.adapter) {
        let c = CoopHead::load(&a.adapter)?;
        let info = c.info();
        (Loaded::Coop(c), info)
    } else {
        let (h, info) = head::load(&a.adapter)?;
        (Loaded::Features(Box::new(h)), info)
    };
    let spec = a.model.clone().unwrap_or_else(|| info.model.clone());
    let files = crate::resolve_model(&spec, progress)?;
    let fingerprint = model_fingerprint(&files)
        .with_context(|| format!("fingerprinting model {}", files.dir.display()))?;
    if let Err(e) = experiment::check_head_model(&info, &spec, &fingerprint) {
        if !a.allow_model_mismatch {
            return Err(anyhow::Error::new(e).context(format!("{}", a.adapter.display())));
        }
        eprintln!("warning: {e} (going on: --allow-model-mismatch)");
    }
    let head = match loaded {
        Loaded::Features(h) => *h,
        // The learned prompts encoded through the model, now that it is checked.
        Loaded::Coop(c) => {
            let model = PromptModel::load(&files, &spec, &candle_core::Device::Cpu)
                .with_context(|| format!("loading the text tower of {}", files.dir.display()))?;
            let learner = model.learner(&c.classnames, c.n_ctx, c.csc, c.position)?;
            let text = model
                .classifier(&learner, &c.context)
                .with_context(|| format!("{}: encoding its prompts", a.adapter.display()))?;
            methods::Head::new(methods::zero_shot::ZeroShot::new(&text))
        }
    };
    let clip = clip_adapter::Clip::load(&files, &candle_core::Device::Cpu)
        .with_context(|| format!("loading model from {}", files.dir.display()))?;
    let bar = progress.bar("encoding images", a.images.len());
    // A ProLIP head holds the trained projection: it scores the tower's output before it.
    let encode = match head.input() {
        FeatureSpace::PreProjection => clip_adapter::encode::encode_image_files_pre_projection,
        FeatureSpace::Projected => encode_image_files,
    };
    let features = encode(&clip, &a.images, a.batch_size, &mut |d, _| {
        bar.set_position(d as u64)
    })?;
    bar.finish_and_clear();
    let (n, d) = features.dims2()?;
    if d != head.dim() {
        bail!(
            "{}: the head expects {}-wide features but model `{spec}` gives {d}",
            a.adapter.display(),
            head.dim()
        );
    }
    let x = Matrix::from_vec(n, d, features.flatten_all()?.to_vec1::<f32>()?)
        .context("feature matrix")?;
    let logits = head.logits(&x);
    let logits = candle_core::Tensor::from_vec(
        logits.data,
        (logits.rows, logits.cols),
        &candle_core::Device::Cpu,
    )?;
    let predictions = rank(&info.classnames, &logits, a.top_k)?;
    let paths = display_paths(&a.images);
    if a.json {
        let results: Vec<_> = (paths.iter().zip(&predictions))
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
            serde_json::json!({"adapter": a.adapter.display().to_string(), "method": info.method,
                "model": spec, "labels": info.classnames, "results": results})
        );
    } else {
        print_table(&paths, &predictions, &info.classnames);
    }
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
