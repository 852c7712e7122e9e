//! The paper's ablations of CLIP-Adapter as a grid: rows in the same results.csv as a run's,
//! a table of a line per value and a column per dataset, and the folder's report.

use std::path::PathBuf;
use std::time::Instant;

use super::{check_cached, create_out, load_draw, RunError, RunObserver};
use crate::experiment::sweep::{Sweep, SweepParam};
use crate::experiment::Validation;
use crate::experiment::{
    run_grid, Grid, GridIo, MethodOverrides, ResultRow, ResultsFile, RowSource,
};
use crate::features::task::Shots;
use crate::methods::registry::CLIP_ADAPTER;
use crate::report::{write_report, ReportFiles, ReportOptions};

/// What `clip-adapter sweep` is told.
#[derive(Debug, Clone)]
pub struct SweepSpec {
    pub cache: PathBuf,
    pub out: PathBuf,
    pub param: SweepParam,
    /// The swept values as the user wrote them; empty: the paper's.
    pub values: Vec<String>,
    pub datasets: Vec<String>,
    pub shots: Vec<usize>,
    pub seeds: Vec<u64>,
    /// CLIP-Adapter's other options, the same at every point.
    pub overrides: MethodOverrides,
    pub validation: Validation,
    /// Which model's features, when the cache holds several.
    pub model: Option<String>,
}

/// What a sweep did.
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    pub rows: Vec<ResultRow>,
    pub fitted: usize,
    pub results_csv: PathBuf,
    /// The sweep's table (also in `table_path`, `sweep-<option>.md`).
    pub table: String,
    pub table_path: PathBuf,
    pub report: ReportFiles,
    pub seconds: f64,
}

/// Runs the sweep; everything is checked before the first fit.
pub fn sweep(spec: &SweepSpec, observer: &mut dyn RunObserver) -> Result<SweepOutcome, RunError> {
    let sweep = if spec.values.is_empty() {
        Sweep::paper(spec.param)
    } else {
        Sweep::parse(spec.param, &spec.values)?
    };
    let base = &spec.overrides;
    sweep.check(base)?;
    base.check_validation(spec.validation)?;
    check_cached(&spec.cache, &spec.datasets)?;
    create_out(&spec.out)?;
    let mut results = ResultsFile::open(&spec.out.join("results.csv"))?;
    let grid = Grid {
        protocol: crate::experiment::Protocol::FewShot,
        methods: sweep.grid_methods(base),
        datasets: spec.datasets.clone(),
        shots: spec.shots.clone(),
        seeds: spec.seeds.clone(),
        validation: spec.validation,
    };
    let started = Instant::now();
    let io = GridIo {
        load: &mut |dataset, shots, seed| {
            let model = spec.model.as_deref();
            let (task, source) = load_draw(&spec.cache, model, dataset, Shots::K(shots), seed)?;
            Ok((task, RowSource::of_task(&source)))
        },
        // Only a method that trains through the model's towers asks for the model or the
        // images, and a sweep fits CLIP-Adapter alone.
        model: &mut |_| Err(RunError::NoTextTower),
        images: &mut |_, _, _, _| Err(RunError::NoTextTower),
        configure: &mut |i, dataset, seed| sweep.point(base, i).method(CLIP_ADAPTER, dataset, seed),
        events: &mut |event| observer.grid(event),
    };
    let outcome = run_grid::<RunError>(&grid, &mut results, io)?;
    let seconds = started.elapsed().as_secs_f64();
    let table = sweep.markdown(base, &outcome.rows);
    let table_path = spec.out.join(format!("sweep-{}.md", sweep.param().name()));
    crate::fsutil::write_atomic(&table_path, table.as_bytes())?;
    let report = write_report(&spec.out, results.rows(), &ReportOptions::default())?;
    Ok(SweepOutcome {
        rows: outcome.rows,
        fitted: outcome.fitted,
        results_csv: results.path().to_path_buf(),
        table,
        table_path,
        report,
        seconds,
    })
}
