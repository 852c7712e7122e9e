//! `merge --results DIR`: the rows of a grid's shards joined into `DIR/results.csv`, then the
//! table (`results.md`) and the folder's report, as the single run would have written them.

use std::path::PathBuf;

use super::{published_for_rows, read_published, RunError, RunObserver};
use crate::clip::hub::HubOptions;
use crate::experiment::join::join;
use crate::experiment::{ResultRow, ResultsFile};
use crate::report::{write_report, ReportFiles, ReportOptions};

/// What `clip-adapter merge --results` is told.
#[derive(Debug, Clone)]
pub struct JoinSpec {
    /// The folder the shards wrote into (`run --shard I/N --out DIR`).
    pub dir: PathBuf,
    /// Published numbers (CSV) to show beside ours, as `run --reported`.
    pub reported: Option<PathBuf>,
    /// Where the model is looked up for the published numbers' backbone.
    pub hub: HubOptions,
}

/// What a join did.
#[derive(Debug, Clone)]
pub struct JoinOutcome {
    pub results_csv: PathBuf,
    /// The grid's rows, in grid order.
    pub rows: Vec<ResultRow>,
    /// How many rows the shards added to `results.csv`.
    pub added: usize,
    pub shards: usize,
    /// The tables (also in `results.md`).
    pub table: String,
    pub table_path: PathBuf,
    /// The folder's report, over every row of the folder.
    pub report: ReportFiles,
}

/// Joins the shards of `spec.dir` (refusing disagreeing rows and unfinished shards, with
/// nothing written), then writes the table and the report.
pub fn join_shards(
    spec: &JoinSpec,
    observer: &mut dyn RunObserver,
) -> Result<JoinOutcome, RunError> {
    let reported = read_published(spec.reported.as_deref())?;
    let joined = join(&spec.dir)?;
    let (published, backbone) =
        published_for_rows(reported.as_ref(), &joined.grid_rows, &spec.hub, observer);
    let results = ResultsFile::open(&joined.path)?;
    let table = super::run::table(
        joined.manifest.protocol,
        Some(&results),
        &joined.grid_rows,
        &published,
        &backbone,
    );
    let table_path = spec.dir.join("results.md");
    crate::fsutil::write_atomic(&table_path, table.as_bytes())?;
    let options = ReportOptions {
        published,
        backbone,
        ..ReportOptions::default()
    };
    let report = write_report(&spec.dir, results.rows(), &options)?;
    Ok(JoinOutcome {
        results_csv: joined.path,
        rows: joined.grid_rows,
        added: joined.added,
        shards: joined.manifest.count,
        table,
        table_path,
        report,
    })
}
