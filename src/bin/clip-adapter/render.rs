//! Errors as the command line says them: the library's errors carry data (an option's name, a
//! hint of what to extract), and this is where they become flags and commands to type.

use std::error::Error;
use std::path::Path;

use clip_adapter::experiment::sweep::SweepError;
use clip_adapter::experiment::{ExperimentError, NotApplicableTo};
use clip_adapter::features::cache::shell_quote;
use clip_adapter::features::task::{CacheProblem, ExtractHint, Extraction, HintSource, Missing};
use clip_adapter::features::{DataSource, FeatureError};
use clip_adapter::limits::LimitError;
use clip_adapter::methods::MethodError;
use clip_adapter::runner::RunError;

/// The error and its causes on one line, each said once: several library errors name their
/// cause in their own message (so that they read whole when printed alone) and also return it
/// as their source, which `{:#}` would print a second time.
pub fn error_chain(err: &anyhow::Error) -> String {
    join(err.chain())
}

/// The same for a library error and its sources.
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut causes = vec![err];
    while let Some(cause) = causes[causes.len() - 1].source() {
        causes.push(cause);
    }
    join(causes.into_iter())
}

fn join<'a>(causes: impl Iterator<Item = &'a (dyn Error + 'static)>) -> String {
    let mut out = String::new();
    for cause in causes {
        let msg = render(cause);
        if msg.is_empty() || out.contains(&msg) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&msg);
    }
    out
}

/// One error's own message, in the command line's words.
pub fn render(e: &(dyn Error + 'static)) -> String {
    let e = unwrap_transparent(e);
    if let Some(FeatureError::Cache { dir, problem }) = e.downcast_ref() {
        return format!(
            "feature cache {}: {}",
            dir.display(),
            cache_problem(problem)
        );
    }
    if let Some(MethodError::NeedsPreProjection { .. }) = e.downcast_ref() {
        return format!("{e} (`clip-adapter extract --pre-projection`)");
    }
    if let Some(e) = e.downcast_ref::<ExperimentError>() {
        return experiment(e);
    }
    if let Some(SweepError::Conflict { option, param, why }) = e.downcast_ref() {
        return format!("--{option} cannot be set in a sweep over {param}: {why}");
    }
    if let Some(limit) = limit_error(e).filter(|l| l.option) {
        let LimitError {
            field,
            value,
            max,
            why,
            ..
        } = limit;
        let flag = field.replace('_', "-");
        return format!("--{flag} = {value} is above the limit of {max} ({why})");
    }
    if let Some(RunError::MissingImages(_)) = e.downcast_ref() {
        return "rerun with --skip-bad to leave the missing images out".into();
    }
    if let Some(s) = others(e) {
        return s;
    }
    match e.downcast_ref::<FeatureError>() {
        Some(FeatureError::BadImages { count, details }) => format!(
            "{count} image(s) could not be read (rerun with --skip-bad to leave them out):\n  {}",
            details.join("\n  ")
        ),
        Some(FeatureError::SkippedInCache { path, count, first }) => format!(
            "{}: made with --skip-bad, it lacks {count} unreadable image(s) (first: {first}); \
             rerun with --skip-bad to use it, or delete it",
            path.display()
        ),
        _ => e.to_string(),
    }
}

/// The t-SNE's, the report's and pretraining's errors that say what to type.
fn others(e: &(dyn Error + 'static)) -> Option<String> {
    use clip_adapter::pretrain::PretrainError;
    use clip_adapter::report::ReportError;
    use clip_adapter::tsne::TsneError;
    Some(match e.downcast_ref::<TsneError>() {
        Some(TsneError::NotVisualAdapter { path, kind }) => format!(
            "{}: a `{kind}` head has no visual adapter; the t-SNE shows the image features \
             before and after CLIP-Adapter's visual adapter (`fit --method clip-adapter --branch \
             visual` or `both`)",
            path.display()
        ),
        Some(TsneError::NoFingerprint { path }) => format!(
            "{}: the head records no model fingerprint (it was saved by an older version), so \
             it cannot be checked against the features' model; save it again with `fit --save`",
            path.display()
        ),
        _ => match (e.downcast_ref(), e.downcast_ref()) {
            (Some(ReportError::NoResults { path }), _) => format!(
                "{}: not found; a results folder is what `clip-adapter run`, `sweep` or `demo` \
                 wrote with --out",
                path.display()
            ),
            (_, Some(PretrainError::WouldOverwrite { existing })) => format!(
                "{} already exists: pretraining would overwrite a model (choose another --out, \
                 or pass --force)",
                existing.display()
            ),
            (_, Some(PretrainError::Diverged { step, loss })) => {
                format!("the loss diverged at step {step} ({loss}); try a smaller --lr")
            }
            _ => return None,
        },
    })
}

/// A size limit, itself or forwarded by a wrapper.
fn limit_error<'a>(e: &'a (dyn Error + 'static)) -> Option<&'a LimitError> {
    use clip_adapter::{data::DataError, pretrain::PretrainError};
    match (e.downcast_ref(), e.downcast_ref(), e.downcast_ref()) {
        (Some(clip_adapter::Error::SizeLimit(l)), ..) => Some(l),
        (_, Some(DataError::Limit(l)), _) => Some(l),
        (.., Some(PretrainError::Limit(l))) => Some(l),
        _ => match e.downcast_ref() {
            Some(FeatureError::Limit(l)) => Some(l),
            _ => e.downcast_ref(),
        },
    }
}

/// The error inside a wrapper that only forwards it (`#[error(transparent)]`), whose own
/// message is the inner one's.
fn unwrap_transparent<'a>(e: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
    // A boxed source is a `Box<T>` in the chain, not a `T`.
    if let Some(b) = e.downcast_ref::<Box<MethodError>>() {
        return unwrap_transparent(b.as_ref());
    }
    if let Some(b) = e.downcast_ref::<Box<ExperimentError>>() {
        return b.as_ref();
    }
    if let Some(b) = e.downcast_ref::<Box<RunError>>() {
        return unwrap_transparent(b.as_ref());
    }
    if let Some(b) = e.downcast_ref::<Box<clip_adapter::Error>>() {
        return unwrap_transparent(b.as_ref());
    }
    if let Some(b) = e.downcast_ref::<Box<FeatureError>>() {
        return unwrap_transparent(b.as_ref());
    }
    if let Some(r) = e.downcast_ref::<RunError>() {
        let inner: Option<&(dyn Error + 'static)> = match r {
            RunError::Experiment(x) => Some(x.as_ref()),
            RunError::Sweep(x) => Some(x.as_ref()),
            RunError::Report(x) => Some(x.as_ref()),
            RunError::Method(x) => Some(x.as_ref()),
            RunError::Clip(x) => Some(x.as_ref()),
            RunError::Features(x) => Some(x.as_ref()),
            RunError::Data(x) => Some(x.as_ref()),
            _ => None,
        };
        return inner.map_or(e, unwrap_transparent);
    }
    match e.downcast_ref() {
        Some(FeatureError::Task(x)) => return unwrap_transparent(x.as_ref()),
        Some(FeatureError::Model(x)) => return unwrap_transparent(x.as_ref()),
        _ => {}
    }
    if let Some(SweepError::Options(x)) = e.downcast_ref() {
        return x;
    }
    if let Some(clip_adapter::report::ReportError::Experiment(x)) = e.downcast_ref() {
        return x;
    }
    match e.downcast_ref() {
        Some(clip_adapter::tsne::TsneError::Method(x)) => return unwrap_transparent(x),
        Some(clip_adapter::tsne::TsneError::Features(x)) => return unwrap_transparent(x.as_ref()),
        _ => {}
    }
    e
}

fn experiment(e: &ExperimentError) -> String {
    match e {
        ExperimentError::NotApplicable { option, to, why } => {
            let to = match to {
                NotApplicableTo::Methods(m) => m.as_str(),
                NotApplicableTo::NoValidation => "--validation none",
            };
            format!("--{option} does not apply to {to}: {why}")
        }
        ExperimentError::UnknownDataset {
            dataset,
            cache,
            available,
        } => format!(
            "dataset `{dataset}` is not in the feature cache {} (it has: {})",
            cache.display(),
            match available.is_empty() {
                true => "nothing; run `clip-adapter extract` first".to_string(),
                false => available.join(", "),
            }
        ),
        ExperimentError::ModelMismatch {
            expected,
            expected_fingerprint,
            given,
            found,
        } => format!(
            "the head was trained on model {expected} (fingerprint {expected_fingerprint}) but \
             `{given}` has fingerprint {found}: its predictions would be wrong; pass the model \
             it was trained on, or --allow-model-mismatch to use this one anyway"
        ),
        ExperimentError::NoFingerprint { given } => format!(
            "the head records no model fingerprint (it was saved by an older version), so model \
             `{given}` cannot be checked; pass --allow-model-mismatch to use it anyway"
        ),
        other => other.to_string(),
    }
}

fn cache_problem(p: &CacheProblem) -> String {
    const KEEP_ONE: &str = "keep one: delete the files of the others, or extract each into its \
                            own --cache folder";
    match p {
        CacheProblem::Missing { missing, hint } => {
            format!("{}; {}", missing_text(missing), extract_hint(hint))
        }
        CacheProblem::SeveralModels { models } => {
            let names: Vec<String> = models.iter().map(|(n, fp)| format!("{n} ({fp})")).collect();
            format!(
                "features of several models: {}; choose one with --model",
                names.join(", ")
            )
        }
        CacheProblem::SeveralSplits {
            dataset,
            part,
            extractions,
        } => {
            let list: Vec<String> = (extractions.iter())
                .map(|e| format!("  split {}: {} ({})", e.split, extraction(e), e.files))
                .collect();
            format!(
                "ambiguous: {} extractions of `{dataset}` with different train/val/test splits \
                 hold {part}, and a task must come from one (a train set of one split and the \
                 test set of another would share images):\n{}\n{KEEP_ONE}",
                extractions.len(),
                list.join("\n")
            )
        }
        CacheProblem::SeveralViewRuns { part, runs } => {
            let list: Vec<String> = (runs.iter())
                .map(|(n, what, files)| format!("  {n} view(s) with {what} ({files})"))
                .collect();
            format!(
                "ambiguous: the augmented views of {part} come from {} runs with different view \
                 transforms, and a task must use one:\n{}\n{KEEP_ONE}",
                runs.len(),
                list.join("\n")
            )
        }
        CacheProblem::Inconsistent(msg) => msg.clone(),
    }
}

fn missing_text(m: &Missing) -> String {
    match m {
        Missing::Parts { lacking, .. } if !lacking.is_empty() => {
            let lines: Vec<String> = (lacking.iter())
                .map(|(e, parts)| {
                    let parts = parts.join(".eval and ");
                    format!("the extraction {} lacks {parts}.eval", extraction(e))
                })
                .collect();
            lines.join("; ")
        }
        other => other.to_string(),
    }
}

/// `from `<extract arguments>` (test set: N images)`.
fn extraction(e: &Extraction) -> String {
    let source = e
        .source
        .as_ref()
        .map_or("source not recorded".to_string(), source_args);
    match e.test_images {
        Some(n) => format!("from `{source}` (test set: {n} images)"),
        None => format!("from `{source}`"),
    }
}

/// The `extract` command that writes what is missing.
fn extract_hint(h: &ExtractHint) -> String {
    let (source, note) = match &h.source {
        HintSource::Recorded(s) => (source_args(s), String::new()),
        HintSource::Benchmark => (
            format!("--dataset {} --root DIR", shell_quote(&h.dataset)),
            " (DIR: CoOp's data folder)".to_string(),
        ),
        HintSource::Unknown => (
            "--folder DIR".to_string(),
            format!(
                " (`{}` is not a benchmark: DIR is the folder of its images; for a list of \
                 images use --manifest FILE, for a split file --split FILE)",
                h.dataset
            ),
        ),
    };
    let (model, model_note) = match &h.model {
        Some(m) => (shell_quote(m), ""),
        None => ("MODEL".into(), " (MODEL: the model directory or hub id)"),
    };
    let shots = match h.shots {
        clip_adapter::features::task::Shots::K(k) => format!(" --shots {k}"),
        clip_adapter::features::task::Shots::All => String::new(),
    };
    format!(
        "run `clip-adapter extract --model {model} --cache {} {source}{shots} --seed {}` \
         first{note}{model_note}",
        shell_quote(&h.cache.display().to_string()),
        h.seed
    )
}

/// The `extract` arguments that name an image source, shell-quoted.
pub fn source_args(source: &DataSource) -> String {
    let p = |p: &Path| shell_quote(&p.display().to_string());
    // The fractions are printed only where they differ from the flags' defaults.
    let seeded = |seed: &i64, train: &f64, val: &f64| {
        let mut s = format!(" --split-seed {seed}");
        if *train != crate::shared::TRAIN_FRACTION || *val != crate::shared::VAL_FRACTION {
            s.push_str(&format!(" --train-fraction {train} --val-fraction {val}"));
        }
        s
    };
    match source {
        DataSource::Benchmark {
            dataset,
            root,
            split,
        } => {
            let split = split.as_ref().map(|f| format!(" --split {}", p(f)));
            let (dataset, root) = (shell_quote(dataset), p(root));
            format!(
                "--dataset {dataset} --root {root}{}",
                split.unwrap_or_default()
            )
        }
        DataSource::Folder {
            dir,
            split_seed,
            train_fraction,
            val_fraction,
        } => {
            let seeded = seeded(split_seed, train_fraction, val_fraction);
            format!("--folder {}{seeded}", p(dir))
        }
        DataSource::Manifest {
            file,
            split_seed,
            train_fraction,
            val_fraction,
        } => {
            let seeded = seeded(split_seed, train_fraction, val_fraction);
            format!("--manifest {}{seeded}", p(file))
        }
        DataSource::SplitFile { file, root } => {
            let root = root.as_ref().map(|r| format!(" --root {}", p(r)));
            format!("--split {}{}", p(file), root.unwrap_or_default())
        }
    }
}
