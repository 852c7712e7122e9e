//! `extract` as one call: the few-shot draw, the check that every listed image is on disk,
//! the model found, fingerprinted and loaded, then the extraction job.

use super::{resolve_model, RunError, RunObserver};
use crate::clip::hub::HubOptions;
use crate::data::benchmarks::TemplateSet;
use crate::data::check::check;
use crate::data::{Benchmark, Dataset, FewShot};
use crate::features::job::{self, templates_for, ExtractJob, ExtractObserver, ExtractOutcome};
use crate::features::{model_fingerprint, ExtractOptions};

/// What `clip-adapter extract` is told, the dataset already read.
pub struct ExtractSpec {
    pub dataset: Dataset,
    /// The benchmark the dataset is, if it is one (its prompt templates).
    pub benchmark: Option<&'static Benchmark>,
    /// Encode a K-shot draw of train and val instead of the whole splits.
    pub shots: Option<usize>,
    /// Run seed: the draw and the augmented views.
    pub seed: i64,
    pub templates: TemplateSet,
    /// Augmented views of each training image besides the plain one; `None`:
    /// [`default_views`] (the methods that augment get views by default).
    pub views: Option<u32>,
    pub crop_scale: (f64, f64),
    pub pre_projection: bool,
    /// The model is `options.model_name`, found through `hub`.
    pub options: ExtractOptions,
    pub hub: HubOptions,
}

/// Lets the model's download reach an extraction's observer.
struct Downloads<'a>(&'a mut dyn ExtractObserver);

impl RunObserver for Downloads<'_> {
    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        self.0.download(file, done, total)
    }
}

/// Runs the extraction. Missing images stop it before the model is loaded, unless
/// `options.skip_bad` (the observer is told they will be left out).
pub fn extract(
    spec: &ExtractSpec,
    observer: &mut dyn ExtractObserver,
) -> Result<ExtractOutcome, RunError> {
    let dataset = &spec.dataset;
    let few = (spec.shots)
        .map(|k| FewShot::coop(dataset, k, spec.seed))
        .transpose()?;
    if let Some(f) = &few {
        observer.short_classes(f, dataset);
    }
    if let Err(e) = check(dataset, None).require_complete() {
        if !spec.options.skip_bad {
            return Err(RunError::MissingImages(Box::new(e)));
        }
        observer.skipping_missing(&e);
    }
    let model = &spec.options.model_name;
    let files = resolve_model(model, &spec.hub, &mut Downloads(observer))?;
    let precision = spec.options.precision;
    // Hashing reads the whole weight file once more; the load leaves a core idle while it
    // builds the towers from the copied tensors, so the hash runs beside it.
    let (fingerprint, clip) = std::thread::scope(|s| {
        let hashing = s.spawn(|| model_fingerprint(&files));
        let clip = super::load_clip(&files, precision);
        let fingerprint = hashing
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        (fingerprint, clip)
    });
    let fingerprint = precision.fingerprint(&fingerprint?);
    let clip = clip?;
    let job = ExtractJob {
        clip: &clip,
        fingerprint: &fingerprint,
        dataset,
        few_shot: few.as_ref(),
        templates: templates_for(spec.templates, dataset, spec.benchmark)?,
        views: spec.views.unwrap_or_else(|| default_views(spec.shots)),
        crop_scale: spec.crop_scale,
        seed: spec.seed,
        pre_projection: spec.pre_projection,
        options: spec.options.clone(),
    };
    job::extract(&job, observer).map_err(|source| RunError::Encoding {
        dataset: dataset.name.clone(),
        source: Box::new(source),
    })
}

/// Augmented views cached by default with a few-shot draw: Tip-Adapter's 10 augmented passes
/// (its cache, APE's and GDA's average or pool them), and enough for the trained methods to
/// see a new view each epoch for 10 epochs (CoOp and CLIP-Adapter draw a fresh crop every
/// epoch; here view `epoch mod V`). The whole train split gets none by default: ten passes
/// over a full benchmark's training set cost ten extractions.
pub const DEFAULT_VIEWS: u32 = 10;

/// The number of views an extraction caches when none is asked for.
pub fn default_views(shots: Option<usize>) -> u32 {
    match shots {
        Some(_) => DEFAULT_VIEWS,
        None => 0,
    }
}
