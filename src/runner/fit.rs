//! One method on one draw of the cache: the row `run` would make, and the head saved with
//! what it was trained on (for `predict`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{coop_model, image_context, load_draw, RunError, RunObserver};
use crate::clip::hub::HubOptions;
use crate::experiment::{
    self, fit_row, FitInputs, GridEvent, GridMethod, MethodOverrides, ResultRow, RowSource,
    RowSpec, Validation,
};
use crate::features::task::{Shots, TaskSource};
use crate::methods::head::{self, HeadInfo};
use crate::methods::{FewShotTask, Fit, Method, MethodKind, Needs};

/// What `clip-adapter fit` is told.
#[derive(Debug, Clone)]
pub struct FitSpec {
    pub method: MethodKind,
    pub dataset: String,
    pub shots: Shots,
    /// The draw's seed, also the training seed.
    pub seed: u64,
    pub cache: PathBuf,
    /// Which model's features, when the cache holds several; CoOp trains through it.
    pub model: Option<String>,
    /// Where to save the head, if anywhere.
    pub save: Option<PathBuf>,
    pub validation: Validation,
    pub overrides: MethodOverrides,
    pub hub: HubOptions,
}

/// What a fit gave.
pub struct FitOutcome {
    pub row: ResultRow,
    /// The head, what was chosen on validation, the losses; CoOp's own head.
    pub fit: Fit,
    /// The method's full description (every option, set or not).
    pub options: String,
    /// The values chosen on validation (or the defaults without it), by name.
    pub chosen: BTreeMap<String, String>,
    /// What the head's file records (or would record, unsaved).
    pub info: HeadInfo,
}

/// Fits the method; saves the head when asked.
pub fn fit(spec: &FitSpec, observer: &mut dyn RunObserver) -> Result<FitOutcome, RunError> {
    spec.overrides.check(&[spec.method])?;
    spec.overrides.check_validation(spec.validation)?;
    let method = spec.overrides.method(spec.method, &spec.dataset, spec.seed);
    let model = spec.model.as_deref();
    let (task, source) = load_draw(&spec.cache, model, &spec.dataset, spec.shots, spec.seed)?;
    let row_source = RowSource::of_task(&source);
    let grid_method = GridMethod {
        label: spec.method.name().to_string(),
        options: spec.overrides.label(spec.method),
    };
    let row_spec = RowSpec {
        method: &grid_method,
        dataset: &spec.dataset,
        // The whole split is recorded as 0 shots.
        shots: match spec.shots {
            Shots::K(k) => k,
            Shots::All => 0,
        },
        seed: spec.seed,
        validation: spec.validation,
        source: &row_source,
        protocol: crate::experiment::Protocol::FewShot,
        new: None,
    };
    let prompt_model = match spec.method.card().needs {
        Needs::TextTower => Some(coop_model(model, &row_source, &spec.hub, observer)?),
        _ => None,
    };
    let images = match spec.method.card().needs {
        Needs::Images => Some(image_context(
            model,
            &spec.cache,
            &spec.dataset,
            (spec.shots, spec.seed),
            &row_source,
            &source.templates,
            &spec.hub,
            observer,
        )?),
        _ => None,
    };
    let mut progress = |p| observer.grid(GridEvent::Method(p));
    let inputs = FitInputs {
        text_tower: prompt_model.as_ref(),
        images: images.as_ref(),
        new_images: None,
    };
    let (fit, row) = fit_row(&method, &task, &row_spec, inputs, &mut progress)?;
    let info = match &fit.prompt {
        Some(coop_head) => coop_head.info(),
        None => head_info(spec, &method, &task, &source, &fit)?,
    };
    if let Some(path) = &spec.save {
        // `--save heads/x.safetensors` makes `heads/`, as `--out` makes its folder.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            super::create_out(dir)?;
        }
        match &fit.prompt {
            Some(coop_head) => coop_head.save(path)?,
            None => head::save(path, &fit.fitted.head, &info)?,
        }
    }
    Ok(FitOutcome {
        row,
        options: method.describe(),
        chosen: fit.fitted.chosen.iter().cloned().collect(),
        fit,
        info,
    })
}

/// What a saved head records: the model (as a path or hub id that works from anywhere, and
/// its fingerprint), the classes and prompts, the method, its options and chosen values.
fn head_info(
    spec: &FitSpec,
    method: &Method,
    task: &FewShotTask,
    source: &TaskSource,
    fit: &Fit,
) -> Result<HeadInfo, RunError> {
    let mut options: BTreeMap<String, String> = fit.fitted.chosen.iter().cloned().collect();
    options.insert("options".into(), method.describe());
    options.insert("dataset".into(), spec.dataset.clone());
    options.insert("shots".into(), spec.shots.to_string());
    options.insert("seed".into(), spec.seed.to_string());
    Ok(HeadInfo {
        model: experiment::model_reference(&source.model_name),
        model_fingerprint: Some(source.model.clone()),
        classnames: task.classnames.clone(),
        templates: source.templates.clone(),
        method: method.name().to_string(),
        options: serde_json::to_string(&options).map_err(RunError::HeadInfo)?,
    })
}
