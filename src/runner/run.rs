//! A grid of methods on cached features: checked whole before the first fit, resumable in
//! `<out>/results.csv`, summarised in `<out>/results.md` and the folder's report.

use std::collections::HashMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use super::{
    check_cached, coop_model, create_out, draw_context, features_model, load_draw,
    published_numbers, read_published, ModelAt, RunError, RunObserver,
};
use crate::clip::hub::HubOptions;
use crate::experiment::grid::run_grid_share;
use crate::experiment::shard::{self, Shard, ShardManifest, ShardSink};
use crate::experiment::transfer::{run_transfer_share, Transfer};
use crate::experiment::{
    ExperimentError, Grid, GridEvent, GridIo, GridMethod, MethodOverrides, Protocol, Published,
    ResultRow, ResultsFile, RowKey, RowSink, RowSource, Summary, Validation,
};
use crate::features::task::{draw_size, CacheQuery, Shots, TaskSource};
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
    /// Run only this shard's share of the grid, into `results.shard-I-of-N.csv` (see
    /// [`crate::experiment::shard`]); join the shards with [`crate::experiment::join`].
    pub shard: Option<Shard>,
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
    /// The folder's report, over every row of the folder (none for a shard).
    pub report: Option<ReportFiles>,
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
/// With a shard, only its share of the cells is fitted, into its own files (see
/// [`crate::experiment::shard`]).
pub fn run(spec: &RunSpec, observer: &mut dyn RunObserver) -> Result<RunOutcome, RunError> {
    let kinds = spec.kinds();
    check(spec, &kinds)?;
    let reported = read_published(spec.reported.as_deref())?;
    let mut prompt_model = first_prompt_model(spec, &kinds, observer)?;
    let mut image_model = first_image_model(spec, &kinds, observer)?;
    create_out(&spec.out)?;
    let methods: Vec<GridMethod> = (kinds.iter())
        .map(|&k| GridMethod {
            label: k.name().to_string(),
            options: spec.overrides.label(k),
        })
        .collect();
    let (mut results, mine) = match spec.shard {
        Some(s) => {
            let mine = plan_shard(spec, &kinds, &methods, s)?;
            (Results::Shard(ShardSink::open(&spec.out, s)?), Some(mine))
        }
        None => (
            Results::Whole(ResultsFile::open(&spec.out.join("results.csv"))?),
            None,
        ),
    };
    let started = Instant::now();
    let mut first_source: Option<TaskSource> = None;
    // The grid's callbacks share the observer: each borrows it only while it runs.
    let observer = std::cell::RefCell::new(observer);
    // Each dataset's prompt templates, from its loaded draws (CLIP-LoRA's prompts).
    let templates = std::cell::RefCell::new(HashMap::<String, Vec<String>>::new());
    let mut load = |dataset: &str, shots, seed| {
        let (task, source) = load_draw(
            &spec.cache,
            spec.model.as_deref(),
            dataset,
            Shots::K(shots),
            seed,
        )?;
        let row_source = RowSource::of_task(&source);
        (templates.borrow_mut()).insert(dataset.to_string(), source.templates.clone());
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
    // The model is checked once; each draw's images are read from the cache's record.
    let mut images = |dataset: &str, shots, seed, source: &RowSource| {
        let at = match image_model.as_ref().filter(|(f, _)| *f == source.model) {
            Some((_, at)) => at.clone(),
            None => {
                let obs = &mut **observer.borrow_mut();
                let at = features_model(spec.model.as_deref(), source, &spec.hub, obs)?;
                image_model = Some((source.model.clone(), at.clone()));
                at
            }
        };
        let templates = templates.borrow().get(dataset).cloned().unwrap_or_default();
        let draw = (Shots::K(shots), seed);
        let model = spec.model.as_deref();
        draw_context(at, model, &spec.cache, dataset, draw, &templates)
    };
    let mut configure =
        |i: usize, dataset: &str, seed| spec.overrides.method(kinds[i], dataset, seed);
    let mut events = |event: GridEvent| observer.borrow_mut().grid(event);
    let io = GridIo {
        load: &mut load,
        model: &mut model,
        images: &mut images,
        configure: &mut configure,
        events: &mut events,
    };
    let (sink, mine) = (&mut results, mine.as_deref());
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
            run_transfer_share::<RunError>(&transfer, mine, sink, io)?
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
            run_grid_share::<RunError>(&grid, mine, sink, io)?
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
    let written = write_tables(spec, &results, &outcome.rows, published, &backbone)?;
    Ok(RunOutcome {
        rows: outcome.rows,
        fitted: outcome.fitted,
        results_csv: results.path(),
        table: written.table,
        table_path: written.table_path,
        report: written.report,
        backbone,
        seconds,
    })
}

/// Where a run's rows go: the folder's `results.csv`, or a shard's own file.
enum Results {
    Whole(ResultsFile),
    Shard(ShardSink),
}

impl Results {
    fn path(&self) -> PathBuf {
        match self {
            Results::Whole(f) => f.path().to_path_buf(),
            Results::Shard(s) => s.path(),
        }
    }
}

impl RowSink for Results {
    fn find(&self, key: &RowKey) -> Option<&ResultRow> {
        match self {
            Results::Whole(f) => f.find(key),
            Results::Shard(s) => s.find(key),
        }
    }

    fn push(&mut self, row: ResultRow) -> Result<(), ExperimentError> {
        match self {
            Results::Whole(f) => f.push(row),
            Results::Shard(s) => s.push(row),
        }
    }
}

/// The table and report a run wrote.
struct Written {
    table: String,
    table_path: PathBuf,
    report: Option<ReportFiles>,
}

/// Writes the run's table (`results.md`) and the folder's report, over every row in it
/// (earlier runs and sweeps too). A shard writes its table as `results.shard-I-of-N.md` and
/// no report: shards sharing a folder never write the same file.
fn write_tables(
    spec: &RunSpec,
    results: &Results,
    rows: &[ResultRow],
    published: Published,
    backbone: &Option<String>,
) -> Result<Written, RunError> {
    let (file, all) = match results {
        Results::Whole(f) => (f, f.rows()),
        Results::Shard(s) => {
            let table = table(spec.protocol, None, rows, &published, backbone);
            let name = shard::results_name(s.shard()).replace(".csv", ".md");
            let table_path = spec.out.join(name);
            crate::fsutil::write_atomic(&table_path, table.as_bytes())?;
            let report = None;
            return Ok(Written {
                table,
                table_path,
                report,
            });
        }
    };
    let table = table(spec.protocol, Some(file), rows, &published, backbone);
    let table_path = spec.out.join("results.md");
    crate::fsutil::write_atomic(&table_path, table.as_bytes())?;
    let options = ReportOptions {
        published,
        backbone: backbone.clone(),
        ..ReportOptions::default()
    };
    let report = Some(write_report(&spec.out, all, &options)?);
    Ok(Written {
        table,
        table_path,
        report,
    })
}

/// The estimated cost of every cell of the run (a transfer protocol: of every fit), in grid
/// order, from the headers of the draws' files: the method's weight × the draw's cost (a
/// transfer fit adds the cost of scoring each target once).
pub fn cell_costs(spec: &RunSpec, kinds: &[MethodKind]) -> Result<Vec<u64>, RunError> {
    let weights: Vec<u64> = kinds
        .iter()
        .map(|k| shard::method_weight(k.card()))
        .collect();
    let size = |dataset: &str, k: usize, seed: u64| -> Result<u64, RunError> {
        let q = CacheQuery {
            model: spec.model.clone(),
            ..CacheQuery::new(&spec.cache, dataset, Shots::K(k), seed)
        };
        let size = draw_size(&q).map_err(|source| RunError::LoadTask {
            dataset: dataset.to_string(),
            shots: Shots::K(k),
            seed,
            source: Box::new(source),
        })?;
        Ok(shard::draw_cost(&size))
    };
    let mut costs = Vec::new();
    let cost =
        |w: &u64, trained: u64, tested: u64| w.saturating_mul(trained).saturating_add(tested);
    if let (true, Some(source)) = (spec.protocol.transfers(), &spec.source) {
        for (&k, &seed) in spec
            .shots
            .iter()
            .flat_map(|k| spec.seeds.iter().map(move |s| (k, s)))
        {
            let trained = size(source, k, seed)?;
            let mut tested = 0u64;
            for d in &spec.datasets {
                tested = tested.saturating_add(size(d, k, seed)?);
            }
            costs.extend(weights.iter().map(|w| cost(w, trained, tested)));
        }
        return Ok(costs);
    }
    for d in &spec.datasets {
        for &k in &spec.shots {
            for &seed in &spec.seeds {
                let trained = size(d, k, seed)?;
                costs.extend(weights.iter().map(|w| cost(w, trained, 0)));
            }
        }
    }
    Ok(costs)
}

/// Shard `s`'s cells of the run (by grid position), with its manifest written first.
fn plan_shard(
    spec: &RunSpec,
    kinds: &[MethodKind],
    methods: &[GridMethod],
    s: Shard,
) -> Result<Vec<bool>, RunError> {
    let costs = cell_costs(spec, kinds)?;
    let mine = shard::share(&costs, s);
    let manifest = ShardManifest {
        index: s.index,
        count: s.count,
        protocol: spec.protocol,
        validation: spec.validation,
        methods: methods.to_vec(),
        datasets: spec.datasets.clone(),
        source: spec.source.clone().filter(|_| spec.protocol.transfers()),
        shots: spec.shots.clone(),
        seeds: spec.seeds.clone(),
        costs,
        cells: (mine.iter().enumerate())
            .filter_map(|(c, &m)| m.then_some(c))
            .collect(),
    };
    manifest.write(&spec.out.join(shard::manifest_name(s)))?;
    Ok(mine)
}

/// The run's table (`results.md`), as its protocol reports it; a few-shot table shows the
/// rows of `results` that are the same runs under the other validation protocol too.
pub fn table(
    protocol: Protocol,
    results: Option<&ResultsFile>,
    rows: &[ResultRow],
    published: &Published,
    backbone: &Option<String>,
) -> String {
    match protocol {
        Protocol::FewShot => {
            let rows = results.map_or_else(|| rows.to_vec(), |r| r.with_other_protocol(rows));
            Summary::new(&rows).markdown(published, backbone.as_deref())
        }
        Protocol::BaseToNew => crate::experiment::base_to_new::markdown(rows, published),
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

/// For a method that trains on the images themselves (CLIP-LoRA): the model that made the
/// features, checked against them, and the grid's first draw's images found through the
/// cache's record, before anything is fitted or written (features imported without their
/// images are refused here). The model's fingerprint and files; none when no chosen method
/// needs them.
fn first_image_model(
    spec: &RunSpec,
    kinds: &[MethodKind],
    observer: &mut dyn RunObserver,
) -> Result<Option<(String, ModelAt)>, RunError> {
    let needs_images = kinds.iter().any(|k| k.card().needs == Needs::Images);
    let trained_on = spec.trained_on();
    let (true, Some(d), Some(&k), Some(&seed)) = (
        needs_images,
        trained_on.first(),
        spec.shots.first(),
        spec.seeds.first(),
    ) else {
        return Ok(None);
    };
    let model = spec.model.as_deref();
    let (_, source) = load_draw(&spec.cache, model, d, Shots::K(k), seed)?;
    let source = RowSource::of_task(&source);
    let at = features_model(model, &source, &spec.hub, observer)?;
    draw_context(at.clone(), model, &spec.cache, d, (Shots::K(k), seed), &[])?;
    Ok(Some((source.model, at)))
}
