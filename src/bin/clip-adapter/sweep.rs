//! `sweep`: arguments onto [`clip_adapter::experiment::sweep`], and printing.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use clip_adapter::experiment::sweep::{Sweep, SweepParam};
use clip_adapter::experiment::{self, run_grid, Grid, GridEvent, ResultsFile, RowSource};
use clip_adapter::methods::from_cache::{load_task, CacheQuery, Shots};
use clip_adapter::methods::registry::CLIP_ADAPTER;
use clip_adapter::report::{write_report, ReportOptions};

use crate::args::{positive, trimmed};
use crate::methods::{cached_datasets, method_bar, report_row, MethodArgs};
use crate::output::Progress;

#[derive(Args, Debug)]
pub struct SweepArgs {
    /// The option to sweep: `reduction` (the bottleneck, hidden width D/r; the paper's Table 1)
    /// or `alpha` (the residual ratio, fixed and not searched; Table 2).
    #[arg(long, value_parser = trimmed::<SweepParam>)]
    pub over: SweepParam,
    /// Its values, comma-separated [default: reduction 1,2,4,8,16,32; alpha
    /// 0,0.2,0.4,0.6,0.8,1].
    #[arg(long, value_delimiter = ',')]
    pub values: Vec<String>,
    /// Dataset folder names in the cache, comma-separated (the paper: dtd,imagenet).
    #[arg(long, value_delimiter = ',', required = true, value_parser = trimmed::<String>)]
    pub datasets: Vec<String>,
    /// Shot counts of the few-shot draws (extracted beforehand).
    #[arg(long, value_delimiter = ',', default_value = "16", value_parser = positive)]
    pub shots: Vec<usize>,
    /// Seeds of the few-shot draws (extracted beforehand), also the training seeds.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3", value_parser = trimmed::<u64>)]
    pub seeds: Vec<u64>,
    /// The feature cache `extract` wrote.
    #[arg(long, default_value = "clip-adapter-cache", value_name = "DIR")]
    pub cache: PathBuf,
    /// Pick the model's features when the cache holds several (the name given to extract, or
    /// the fingerprint).
    #[arg(long)]
    pub model: Option<String>,
    /// Where results.csv (shared with `run`: rows already there are not fitted again),
    /// sweep-<option>.md and the folder's report (report.md, figures/) go.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    /// `val`: hyper-parameters chosen on the few-shot validation set; `none`: no validation
    /// set (each point keeps its defaults; `--search` is then refused).
    #[arg(long, default_value = "val", value_parser = crate::methods::validation_arg, value_name = "val|none")]
    pub validation: clip_adapter::experiment::Validation,
    /// CLIP-Adapter's other options, the same at every point.
    #[command(flatten)]
    pub options: MethodArgs,
}

pub fn run(a: SweepArgs, progress: &Progress) -> Result<()> {
    // Everything is checked before the first fit.
    let sweep = if a.values.is_empty() {
        Sweep::paper(a.over)
    } else {
        Sweep::parse(a.over, &a.values)?
    };
    let base = a.options.overrides();
    sweep.check(&base)?;
    base.check_validation(a.validation)?;
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
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut results = ResultsFile::open(&a.out.join("results.csv"))?;

    let grid = Grid {
        methods: sweep.grid_methods(&base),
        datasets: a.datasets.clone(),
        shots: a.shots.clone(),
        seeds: a.seeds.clone(),
        validation: a.validation,
    };
    let started = std::time::Instant::now();
    let grid_bar = progress.bar("sweep", grid.cells());
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
            Ok((task, RowSource::of_task(&source)))
        },
        // Only CoOp asks for the model's text tower, and a sweep fits CLIP-Adapter alone.
        &mut |_| anyhow::bail!("a sweep fits CLIP-Adapter only, which needs no text tower"),
        &mut |i, dataset, seed| sweep.point(&base, i).method(CLIP_ADAPTER, dataset, seed),
        &mut |event| match event {
            GridEvent::Fitting { .. } => {}
            GridEvent::Method(p) => on_method(p),
            GridEvent::Row {
                row, skipped, done, ..
            } => report_row(&grid_bar, row, skipped, done),
        },
    )?;
    method_bar_.finish_and_clear();
    grid_bar.finish_and_clear();

    let table = sweep.markdown(&base, &outcome.rows);
    let path = a.out.join(format!("sweep-{}.md", sweep.param().name()));
    clip_adapter::fsutil::write_atomic(&path, table.as_bytes())?;
    print!("{table}");
    let files = write_report(&a.out, results.rows(), &ReportOptions::default())?;
    crate::report::print_written(&files);
    eprintln!(
        "sweep finished in {:.1} s: {} fitted, {} already in {}; table in {}",
        started.elapsed().as_secs_f64(),
        outcome.fitted,
        outcome.rows.len() - outcome.fitted,
        results.path().display(),
        path.display()
    );
    Ok(())
}
