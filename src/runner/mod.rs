//! The commands' work as functions: a grid of methods on cached features ([`run`]), the
//! paper's ablations ([`sweep`]), one fit ([`fit`]), a saved head's predictions ([`predict`]), each taking plain structs and returning
//! structured results, so that another program (or a Python binding) runs exactly what the
//! command line runs. Nothing here prints: progress and notes go to a [`RunObserver`].
//!
//! ```text
//! mod.rs    the observer, the errors, what run and sweep share (the cache's datasets, the
//!           model behind the features, the published numbers of its backbone)
//! run.rs    RunSpec → results.csv (resumable), results.md, the folder's report; or one
//!           shard's share of the grid (results.shard-I-of-N.csv)
//! join.rs   JoinSpec → the shards' rows joined into results.csv, results.md, the report
//! sweep.rs  SweepSpec → the same results.csv, sweep-<option>.md, the report
//! demo.rs   the embedded demo, its results.csv, report and t-SNE figure written
//! extract.rs  ExtractSpec → the draw checked, the model loaded, the extraction job run
//! fit.rs    FitSpec → one row, and the head saved with what it was trained on
//! predict.rs  PredictSpec → a saved head's ranked classes for images
//! merge_lora.rs  MergeLoraSpec → a CLIP-LoRA head's updates folded into its model
//! tsne.rs   HeadsTsneSpec → a cached split mapped as zero-shot CLIP and saved heads score it
//! ```
//!
//! It sits above `report` (it writes the folder's report), which sits above `experiment`.

pub mod demo;
pub mod encode;
mod error;
pub mod extract;
pub mod fit;
pub mod join;
pub mod merge_lora;
pub mod predict;
pub mod run;
pub mod sweep;
pub mod tsne;

use std::path::Path;

pub use demo::{demo, DemoOutcome};
pub use error::{NoPublished, RunError};
pub use extract::{extract, ExtractSpec};
pub use fit::{fit, FitOutcome, FitSpec};
pub use join::{join_shards, JoinOutcome, JoinSpec};
pub use merge_lora::{merge_lora, MergeLoraSpec, MergedLora};
pub use predict::{predict, PredictSpec, Predictions};
pub use run::{run, RunOutcome, RunSpec};
pub use sweep::{sweep, SweepOutcome, SweepSpec};

use crate::clip::hub::{self, HubOptions};
use crate::clip::{Clip, LoadOptions, ModelFiles, Precision};
use crate::experiment::{self, GridEvent, Published, ResultRow, RowSource};
use crate::features::model_fingerprint;
use crate::features::task::{load_task, CacheQuery, Shots};
use crate::methods::coop::PromptModel;
use crate::methods::FewShotTask;

/// What a run reports while it works. Every method has a default that ignores the report.
pub trait RunObserver {
    /// Bytes of a model file downloaded from the hub (`total` when the server says it).
    fn download(&mut self, _file: &str, _done: u64, _total: Option<u64>) {}
    /// The grid's progress: a fit starts, a method's epochs, a row fitted or found.
    fn grid(&mut self, _event: GridEvent) {}
    /// Why the published numbers are left out of the tables.
    fn no_published(&mut self, _why: &NoPublished) {}
    /// Images encoded so far, of `total`.
    fn encoding(&mut self, _done: usize, _total: usize) {}
    /// Going on with a model other than the head's, as asked.
    fn model_mismatch(&mut self, _why: &experiment::ExperimentError) {}
}

/// An observer that ignores everything.
impl RunObserver for () {}

/// Resolves a model name (a directory, a file, `openai:NAME`, a hub id), reporting downloads.
pub fn resolve_model(
    spec: &str,
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> Result<ModelFiles, RunError> {
    let mut on_download = |file: &str, done, total| observer.download(file, done, total);
    hub::resolve(spec, hub, &mut on_download).map_err(|source| RunError::FindModel {
        spec: spec.to_string(),
        source: Box::new(source),
    })
}

/// Loads the model of `files` on the CPU at `precision`; an error names its folder.
pub fn load_clip(files: &ModelFiles, precision: Precision) -> Result<Clip, RunError> {
    Clip::load_with(files, &candle_core::Device::Cpu, LoadOptions::at(precision)).map_err(
        |source| RunError::LoadModel {
            dir: files.dir.clone(),
            source: Box::new(source),
        },
    )
}

/// The datasets the cache holds (its sub-folders), sorted.
pub fn cached_datasets(cache: &Path) -> Vec<String> {
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

/// Refuses the first of `datasets` the cache does not hold, naming those it does.
fn check_cached(cache: &Path, datasets: &[String]) -> Result<(), RunError> {
    let available = cached_datasets(cache);
    match datasets.iter().find(|d| !available.contains(d)) {
        Some(d) => Err(experiment::ExperimentError::UnknownDataset {
            dataset: d.clone(),
            cache: cache.to_path_buf(),
            available,
        }
        .into()),
        None => Ok(()),
    }
}

/// The task of one draw from the cache, and where its features came from.
fn load_draw(
    cache: &Path,
    model: Option<&str>,
    dataset: &str,
    shots: Shots,
    seed: u64,
) -> Result<(FewShotTask, crate::features::task::TaskSource), RunError> {
    let q = CacheQuery {
        model: model.map(str::to_string),
        ..CacheQuery::new(cache, dataset, shots, seed)
    };
    load_task(&q).map_err(|source| RunError::LoadTask {
        dataset: dataset.to_string(),
        shots,
        seed,
        source: Box::new(source),
    })
}

/// What a method that trains through the image tower (CLIP-LoRA) reads: the model that made the
/// draw's features (as [`coop_model`] finds it, refused unless its fingerprint is theirs) and
/// the draw's images, which the cache records.
#[allow(clippy::too_many_arguments)]
fn image_context(
    given: Option<&str>,
    cache: &Path,
    dataset: &str,
    draw: (Shots, u64),
    source: &RowSource,
    templates: &[String],
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> Result<crate::methods::ImageContext, RunError> {
    let model = features_model(given, source, hub, observer)?;
    draw_context(model, given, cache, dataset, draw, templates)
}

/// The model to load for the features of `source`: `given` when it names one rather than a
/// fingerprint (`NAME+bf16`, which names bfloat16 features, names the model `NAME`), else the
/// one the cache records.
fn model_spec(given: Option<&str>, source: &RowSource) -> String {
    match given {
        Some(g) if g != source.model => Precision::split(g).0.to_string(),
        _ => source.model_name.clone(),
    }
}

/// A model's files and the precision its features were made at, which a method running its
/// towers runs them at.
type ModelAt = (ModelFiles, Precision);

/// The model that made the features of `source` ([`model_spec`]), at their precision; refused
/// unless its fingerprint, at that precision, is theirs.
fn features_model(
    given: Option<&str>,
    source: &RowSource,
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> Result<ModelAt, RunError> {
    let precision = Precision::of_fingerprint(&source.model);
    let spec = model_spec(given, source);
    let wrap = |e: RunError| RunError::PromptModel {
        spec: spec.clone(),
        source: Box::new(e),
    };
    let files = resolve_model(&spec, hub, observer).map_err(wrap)?;
    let fingerprint = model_fingerprint(&files).map_err(|e| wrap(e.into()))?;
    let fingerprint = precision.fingerprint(&fingerprint);
    if fingerprint != source.model {
        return Err(wrap(RunError::from(
            experiment::ExperimentError::FeaturesModel {
                given: spec.clone(),
                found: fingerprint,
                expected: source.model_name.clone(),
                expected_fingerprint: source.model.clone(),
            },
        )));
    }
    Ok((files, precision))
}

/// A draw's [`ImageContext`](crate::methods::ImageContext) with the model found by
/// [`features_model`]: the images the cache records for its rows.
fn draw_context(
    (files, precision): ModelAt,
    given: Option<&str>,
    cache: &Path,
    dataset: &str,
    (shots, seed): (Shots, u64),
    templates: &[String],
) -> Result<crate::methods::ImageContext, RunError> {
    let q = CacheQuery {
        model: given.map(str::to_string),
        ..CacheQuery::new(cache, dataset, shots, seed)
    };
    let images = crate::features::task::draw_images(&q).map_err(|source| RunError::LoadTask {
        dataset: dataset.to_string(),
        shots,
        seed,
        source: Box::new(source),
    })?;
    Ok(crate::methods::ImageContext {
        model: files,
        images,
        templates: templates.to_vec(),
        precision,
    })
}

/// The model CoOp trains through ([`model_spec`]), at the features' precision; refused unless
/// its fingerprint is theirs.
fn coop_model(
    given: Option<&str>,
    source: &RowSource,
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> Result<PromptModel, RunError> {
    let spec = model_spec(given, source);
    let load = |observer: &mut dyn RunObserver| -> Result<PromptModel, RunError> {
        let files = resolve_model(&spec, hub, observer)?;
        Ok(experiment::prompt_model(&files, &spec, source)?)
    };
    load(observer).map_err(|e| RunError::PromptModel {
        spec: spec.clone(),
        source: Box::new(e),
    })
}

/// The published numbers of the backbone of the model `model_name` (content fingerprint
/// `fingerprint`), and the backbone's name; none (the observer told why) when the model cannot
/// be found, is not the one with that fingerprint, or is not one of OpenAI's backbones.
pub fn published_numbers(
    reported: Option<&Published>,
    model_name: &str,
    fingerprint: &str,
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> (Published, Option<String>) {
    let Some(reported) = reported else {
        return (Published::default(), None);
    };
    match backbone(model_name, fingerprint, hub, observer) {
        Ok(b) => (reported.for_backbone(b), Some(b.to_string())),
        Err(why) => {
            observer.no_published(&why);
            (Published::default(), None)
        }
    }
}

/// The published numbers for the model of the last of `rows` (the report's model).
pub fn published_for_rows(
    reported: Option<&Published>,
    rows: &[ResultRow],
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> (Published, Option<String>) {
    match rows.last() {
        Some(r) => published_numbers(reported, &r.model_name, &r.model, hub, observer),
        None => (Published::default(), None),
    }
}

/// The backbone of the model `model_name`, from its config, when it is the model that made
/// the features.
fn backbone(
    model_name: &str,
    fingerprint: &str,
    hub: &HubOptions,
    observer: &mut dyn RunObserver,
) -> Result<&'static str, NoPublished> {
    let files = resolve_model(model_name, hub, observer)
        .map_err(|e| NoPublished::ModelNotFound(Box::new(e)))?;
    match model_fingerprint(&files) {
        Ok(f) if f == fingerprint => {}
        _ => {
            return Err(NoPublished::OtherModel {
                dir: files.dir.clone(),
                fingerprint: fingerprint.to_string(),
            })
        }
    }
    files
        .read_config()
        .ok()
        .and_then(|c| experiment::backbone(&c))
        .ok_or(NoPublished::NotOpenAi { dir: files.dir })
}

/// Reads the published numbers, if a file is given.
fn read_published(path: Option<&Path>) -> Result<Option<Published>, RunError> {
    Ok(path.map(Published::read).transpose()?)
}

/// Creates the results folder.
fn create_out(out: &Path) -> Result<(), RunError> {
    std::fs::create_dir_all(out).map_err(|source| RunError::CreateDir {
        path: out.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{ExperimentError, MethodOverrides, NotApplicableTo, Validation};
    use crate::methods::MethodKind;

    fn spec(methods: &[&str], overrides: MethodOverrides) -> RunSpec {
        RunSpec {
            cache: std::env::temp_dir().join("clip-adapter-runner-test-no-such-cache"),
            out: std::env::temp_dir().join("clip-adapter-runner-test-out"),
            datasets: vec!["eurosat".into()],
            shots: vec![1],
            seeds: vec![1],
            methods: (methods.iter())
                .map(|m| m.parse::<MethodKind>().unwrap())
                .collect(),
            overrides,
            validation: Validation::Val,
            protocol: crate::experiment::Protocol::FewShot,
            source: None,
            model: None,
            reported: None,
            hub: HubOptions::from_env(),
            shard: None,
        }
    }

    #[test]
    fn a_run_is_checked_whole_before_anything_is_written() {
        let overrides = MethodOverrides {
            reduction: Some(8),
            ..Default::default()
        };
        let err = run(&spec(&["tip-adapter"], overrides), &mut ()).unwrap_err();
        let RunError::Experiment(e) = &err else {
            panic!("{err}")
        };
        let ExperimentError::NotApplicable { option, to, .. } = e.as_ref() else {
            panic!("{err}")
        };
        assert_eq!(*option, "reduction");
        assert_eq!(*to, NotApplicableTo::Methods("tip-adapter".into()));

        let s = spec(&["zero-shot", "zero-shot"], MethodOverrides::default());
        assert_eq!(s.kinds().len(), 1);
        let err = run(&s, &mut ()).unwrap_err();
        let RunError::Experiment(e) = &err else {
            panic!("{err}")
        };
        let ExperimentError::UnknownDataset { available, .. } = e.as_ref() else {
            panic!("{err}")
        };
        assert!(available.is_empty());
        assert!(!s.out.exists(), "nothing is written before the checks pass");
    }
}
