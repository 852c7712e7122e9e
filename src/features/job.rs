//! What `extract` orchestrates, as one call: the class-name prompts (and the projection, for
//! pre-projection features) from the first shard, then every image set the run needs, with
//! what happened to each set returned as data.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use super::error::Result;
use super::extract::{extract_sets, plan, with_pre_projection, Event, ExtractOptions, Hooks};
use super::{projection, text};
use crate::clip::Clip;
use crate::data::benchmarks::TemplateSet;
use crate::data::{Benchmark, Dataset, FewShot};
use crate::image::augment::{Augment, DEFAULT_RATIO};

/// One extraction: the model is loaded and fingerprinted by the caller.
pub struct ExtractJob<'a> {
    pub clip: &'a Clip,
    /// The model's content fingerprint.
    pub fingerprint: &'a str,
    pub dataset: &'a Dataset,
    /// Encode this draw of train and val instead of the whole splits.
    pub few_shot: Option<&'a FewShot>,
    /// The class-name prompt templates ([`templates_for`]).
    pub templates: Vec<String>,
    /// Augmented views of each training image besides the plain one.
    pub views: u32,
    /// Area range of the random crops.
    pub crop_scale: (f64, f64),
    /// Run seed: the augmented views'.
    pub seed: i64,
    /// Also keep the tower's output before its last projection, and the projection.
    pub pre_projection: bool,
    pub options: ExtractOptions,
}

/// What an extraction reports while it works; every method defaults to nothing.
pub trait ExtractObserver {
    /// Class-name prompts encoded so far.
    fn prompts(&mut self, _done: usize, _total: usize) {}
    /// The cached prompt file was unreadable (`reason`) and is encoded again.
    fn prompts_rebuilt(&mut self, _reason: &str) {}
    /// The image sets' progress and notices.
    fn event(&mut self, _event: &Event) {}
    /// Bytes of the model downloaded from the hub.
    fn download(&mut self, _file: &str, _done: u64, _total: Option<u64>) {}
    /// The draw took all the images of classes that had fewer than asked for.
    fn short_classes(&mut self, _few: &FewShot, _dataset: &Dataset) {}
    /// Listed images are missing and will be left out, as asked.
    fn skipping_missing(&mut self, _why: &crate::data::DataError) {}
}

/// What became of one image set.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SetSummary {
    pub name: String,
    pub path: PathBuf,
    /// Images in the file (the skipped ones left out).
    pub rows: usize,
    /// The images left out as unreadable.
    pub skipped: Vec<String>,
    /// Whether the file was already cached.
    pub reused: bool,
    /// Images decoded and encoded by this run (none for a reused file; fewer than `rows` when
    /// an interrupted run had written the others).
    pub encoded: usize,
    /// Wall seconds from the set's start to its file complete: decoding, preprocessing,
    /// encoding and writing those images.
    pub seconds: f64,
}

/// What an extraction wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExtractOutcome {
    /// The class-name prompt file (none for shards other than the first).
    pub text: Option<PathBuf>,
    /// In the order of the plan.
    pub sets: Vec<SetSummary>,
}

/// The templates of `set` for `dataset`: a benchmark's own, else the dataset's for the custom
/// and Tip-Adapter sets, else ImageNet's.
pub fn templates_for(
    set: TemplateSet,
    dataset: &Dataset,
    benchmark: Option<&Benchmark>,
) -> Result<Vec<String>> {
    Ok(match benchmark {
        Some(b) => b.templates(set),
        None if matches!(set, TemplateSet::Custom | TemplateSet::TipAdapter) => {
            dataset.templates.clone()
        }
        None => Benchmark::find("imagenet")?.templates(set),
    })
}

/// Runs the extraction.
pub fn extract(job: &ExtractJob, observer: &mut dyn ExtractObserver) -> Result<ExtractOutcome> {
    let preprocess = job.clip.preprocess();
    let augment = Augment {
        size: preprocess.size as u32,
        scale: job.crop_scale,
        ratio: DEFAULT_RATIO,
        flip: true,
    };
    let sets = plan(
        job.dataset,
        job.few_shot,
        job.fingerprint,
        &preprocess,
        job.views,
        augment,
        job.seed.unsigned_abs(),
    )?;
    let sets = if job.pre_projection {
        with_pre_projection(sets)
    } else {
        sets
    };
    // The class-name prompts are cheap: shard 0 (or an unsharded run) encodes them.
    let text = match job.options.shard {
        Some(s) if s.index != 0 => None,
        _ => Some(extract_prompts(job, observer)?),
    };
    let (mut started, mut finished) = (BTreeMap::new(), BTreeMap::new());
    let mut on_event = |e: &Event| {
        match e {
            Event::Start { set, total, done } => {
                started.insert(set.clone(), (Instant::now(), total.saturating_sub(*done)));
            }
            Event::Done {
                set,
                path,
                reused,
                skipped,
            } => {
                let (encoded, seconds) = match started.remove(set) {
                    Some((at, todo)) => (
                        todo.saturating_sub(skipped.len()),
                        at.elapsed().as_secs_f64(),
                    ),
                    None => (0, 0.0),
                };
                let done = (path.clone(), *reused, skipped.clone(), encoded, seconds);
                finished.insert(set.clone(), done);
            }
            _ => {}
        }
        observer.event(e);
    };
    let mut hooks = Hooks {
        on_event: &mut on_event,
        should_stop: &|| false,
    };
    extract_sets(job.clip, &sets, &job.options, &mut hooks)?;
    let mut summaries = Vec::new();
    for set in &sets {
        if let Some((path, reused, skipped, encoded, seconds)) = finished.remove(&set.name()) {
            summaries.push(SetSummary {
                name: set.name(),
                path,
                rows: set.samples.len() - skipped.len(),
                skipped,
                reused,
                encoded,
                seconds,
            });
        }
    }
    Ok(ExtractOutcome {
        text,
        sets: summaries,
    })
}

/// The class-name prompt embeddings (and the projection, with pre-projection features).
fn extract_prompts(job: &ExtractJob, observer: &mut dyn ExtractObserver) -> Result<PathBuf> {
    let cache = &job.options.cache_dir;
    let model_name = &job.options.model_name;
    let (path, outcome) = text::extract_text(
        job.clip,
        job.dataset,
        job.fingerprint,
        model_name,
        &job.templates,
        cache,
        &mut |d, t| observer.prompts(d, t),
    )?;
    if let text::TextOutcome::Rebuilt { reason } = outcome {
        observer.prompts_rebuilt(&reason);
    }
    if job.pre_projection {
        let name = &job.dataset.name;
        projection::extract_projection(job.clip, name, job.fingerprint, model_name, cache)?;
    }
    Ok(path)
}
