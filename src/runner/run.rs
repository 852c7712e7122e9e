//! A grid of methods on cached features: checked whole before the first fit, resumable in
//! `<out>/results.csv`, summarised in `<out>/results.md` and the folder's report.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use super::{
    check_cached, coop_model, create_out, load_draw, published_numbers, read_published, RunError,
    RunObserver,
};
use crate::clip::hub::HubOptions;
use crate::experiment::transfer::{run_transfer, Transfer};
use crate::experiment::GridEvent;
use crate::experiment::{
    run_grid, ExperimentError, Grid, GridMethod, MethodOverrides, Protocol, Published, ResultRow,
    ResultsFile, RowSource, Summary, Validation,
};
use crate::features::task::{Shots, TaskSource};
use crate::methods::coop::PromptModel;
use crate::methods::{MethodKind, Needs};
use crate::report::{write_report, ReportFiles, ReportOptions};

/// What `clip-adapter run` is told.
#[derive(Debug, Clone)]
pub struct RunSpec {
    /// The feature cache `extract` wrote.
    pub cache: PathBuf,
    /// Where results.csv, results.md and the report go.
    pub out: PathBuf,
    pub datasets: Vec<String>,
    pub shots: Vec<usize>,
    pub seeds: Vec<u64>,
    /// In any order, repeats allowed: the grid runs each once, in the registry's order.
    pub methods: Vec<MethodKind>,
    /// The user's options on top of the protocol's values.
    pub overrides: MethodOverrides,
    pub validation: Validation,
    /// Few-shot, base-to-new (train on the base classes, test on base and new), or a transfer
    /// protocol (train on `source`, test on `datasets`).
    pub protocol: Protocol,
    /// The dataset a transfer protocol trains on.
    pub source: Option<String>,
    /// Which model's features, when the cache holds several (its name or fingerprint); CoOp
    /// trains through it.
    pub model: Option<String>,
    /// Published numbers (CSV) to show beside ours.
    pub reported: Option<PathBuf>,
    /// Where models are looked up (CoOp's text tower, the backbone of the published numbers).
    pub hub: HubOptions,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The grid's rows, in grid order (found and new).
    pub rows: Vec<ResultRow>,
    /// How many of them were fitted now.
    pub fitted: usize,
    pub results_csv: PathBuf,
    /// The tables (also in `results.md`).
    pub table: String,
    pub table_path: PathBuf,
    /// The folder's report, over every row of the folder.
    pub report: ReportFiles,
    /// The backbone whose published numbers the tables show.
    pub backbone: Option<String>,
    /// The grid's wall time.
    pub seconds: f64,
}

impl RunSpec {
    /// The datasets the methods train on: the source of a transfer protocol, otherwise every
    /// dataset.
    pub fn trained_on(&self) -> Vec<String> {
        match (self.protocol.transfers(), &self.source) {
            (true, Some(source)) => vec![source.clone()],
            _ => self.datasets.clone(),
        }
    }

    /// The methods in the registry's order, each once.
    pub fn kinds(&self) -> Vec<MethodKind> {
        let mut kinds = self.methods.clone();
        kinds.sort();
        kinds.dedup();
        kinds
    }
}

/// Runs the grid. Options, datasets, the published numbers and CoOp's model are checked
/// before the first fit; each fitted row is saved at once, so an interrupted run resumes.
pub fn run(spec: &RunSpec, observer: &mut dyn RunObserver) -> Result<RunOutcome, RunError> {
    let kinds = spec.kinds();
    check(spec, &kinds)?;
    let reported = read_published(spec.reported.as_deref())?;
    let mut prompt_model = first_prompt_model(spec, &kinds, observer)?;
    create_out(&spec.out)?;
    let mut results = ResultsFile::open(&spec.out.join("results.csv"))?;
    let methods: Vec<GridMethod> = (kinds.iter())
        .map(|&k| GridMethod {
            label: k.name().to_string(),
            options: spec.overrides.label(k),
        })
        .collect();
    let started = Instant::now();
    let mut first_source: Option<TaskSource> = None;
    // The grid's callbacks share the observer: each borrows it only while it runs.
    let observer = std::cell::RefCell::new(observer);
    let mut load = |dataset: &str, shots, seed| {
        let (task, source) = load_draw(
            &spec.cache,
            spec.model.as_deref(),
            dataset,
            Shots::K(shots),
            seed,
        )?;
        let row_source = RowSource::of_task(&source);
        first_source.get_or_insert(source);
        Ok((task, row_source))
    };
    let mut model = |source: &RowSource| {
        if let Some(m) = (prompt_model.as_ref()).filter(|m| m.fingerprint == source.model) {
            return Ok(Rc::clone(m));
        }
        let obs = &mut **observer.borrow_mut();
        let m = Rc::new(coop_model(spec.model.as_deref(), source, &spec.hub, obs)?);
        prompt_model = Some(Rc::clone(&m));
        Ok(m)
    };
    let mut configure =
        |i: usize, dataset: &str, seed| spec.overrides.method(kinds[i], dataset, seed);
    let mut events = |event: GridEvent| observer.borrow_mut().grid(event);
    let (sink, load, model) = (&mut results, &mut load, &mut model);
    let (configure, events) = (&mut configure, &mut events);
    let outcome = match (spec.protocol.transfers(), &spec.source) {
        (true, Some(source)) => {
            let transfer = Transfer {
                methods,
                source: source.clone(),
                targets: spec.datasets.clone(),
                shots: spec.shots.clone(),
                seeds: spec.seeds.clone(),
                validation: spec.validation,
                protocol: spec.protocol,
            };
            run_transfer::<RunError>(&transfer, sink, load, model, configure, events)?
        }
        _ => {
            let grid = Grid {
                methods,
                datasets: spec.datasets.clone(),
                shots: spec.shots.clone(),
                seeds: spec.seeds.clone(),
                validation: spec.validation,
                protocol: spec.protocol,
            };
            run_grid::<RunError>(&grid, sink, load, model, configure, events)?
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let observer = observer.into_inner();
    let (published, backbone) = match &first_source {
        Some(s) => published_numbers(
            reported.as_ref(),
            &s.model_name,
            &s.model,
            &spec.hub,
            observer,
        ),
        None => (Published::default(), None),
    };
    let table = table(
        spec.protocol,
        &results,
        &outcome.rows,
        &published,
        &backbone,
    );
    let table_path = spec.out.join("results.md");
    crate::fsutil::write_atomic(&table_path, table.as_bytes())?;
    // The folder's report covers every row in it (earlier runs and sweeps too).
    let options = ReportOptions {
        published,
        backbone: backbone.clone(),
        ..ReportOptions::default()
    };
    let report = write_report(&spec.out, results.rows(), &options)?;
    Ok(RunOutcome {
        rows: outcome.rows,
        fitted: outcome.fitted,
        results_csv: results.path().to_path_buf(),
        table,
        table_path,
        report,
        backbone,
        seconds,
    })
}

/// The run's table (`results.md`), as its protocol reports it.
fn table(
    protocol: Protocol,
    results: &ResultsFile,
    rows: &[ResultRow],
    published: &Published,
    backbone: &Option<String>,
) -> String {
    match protocol {
        Protocol::FewShot => Summary::new(&results.with_other_protocol(rows))
            .markdown(published, backbone.as_deref()),
        Protocol::BaseToNew => crate::experiment::base_to_new::markdown(rows),
        Protocol::CrossDataset | Protocol::Domain => crate::experiment::transfer::markdown(rows),
    }
}

/// Everything that can be checked before anything is loaded: options, the protocol's methods
/// and source, the datasets in the cache.
fn check(spec: &RunSpec, kinds: &[MethodKind]) -> Result<(), RunError> {
    spec.overrides.check(kinds)?;
    spec.overrides.check_validation(spec.validation)?;
    let protocol = spec.protocol;
    if let Some((k, why)) = (kinds.iter()).find_map(|&k| protocol.refuses(k).map(|w| (k, w))) {
        let method = k.name();
        return Err(ExperimentError::Protocol {
            method,
            protocol,
            why,
        }
        .into());
    }
    if protocol.transfers() != spec.source.is_some() {
        return Err(ExperimentError::Source { protocol }.into());
    }
    let mut datasets = spec.datasets.clone();
    datasets.extend(spec.source.iter().cloned());
    check_cached(&spec.cache, &datasets)
}

/// CoOp's model, loaded and checked against the features of the grid's first draw before
/// anything is fitted or written; one model per run, as every draw of a run comes from the
/// same model's features. None when no chosen method trains through the text tower.
fn first_prompt_model(
    spec: &RunSpec,
    kinds: &[MethodKind],
    observer: &mut dyn RunObserver,
) -> Result<Option<Rc<PromptModel>>, RunError> {
    let needs_tower = kinds.iter().any(|k| k.card().needs == Needs::TextTower);
    let trained_on = spec.trained_on();
    let (true, Some(d), Some(&k), Some(&seed)) = (
        needs_tower,
        trained_on.first(),
        spec.shots.first(),
        spec.seeds.first(),
    ) else {
        return Ok(None);
    };
    let (_, source) = load_draw(&spec.cache, spec.model.as_deref(), d, Shots::K(k), seed)?;
    let source = RowSource::of_task(&source);
    let model = coop_model(spec.model.as_deref(), &source, &spec.hub, observer)?;
    Ok(Some(Rc::new(model)))
}
