//! `sweep`: arguments onto [`clip_adapter::experiment::sweep`], and printing.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use clip_adapter::experiment::sweep::SweepParam;
use clip_adapter::runner::{self, SweepSpec};

use crate::methods::MethodArgs;
use crate::output::{outln, print_written, Observer, Progress};
use crate::shared::{positive, trimmed, CacheArgs, ValidationArg};

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
    #[command(flatten)]
    pub cache: CacheArgs,
    /// Where results.csv (shared with `run`: rows already there are not fitted again),
    /// sweep-<option>.md and the folder's report (report.md, figures/) go.
    #[arg(long, default_value = "results", value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub validation: ValidationArg,
    /// CLIP-Adapter's other options, the same at every point.
    #[command(flatten)]
    pub options: MethodArgs,
}

pub fn run(a: SweepArgs, progress: &Progress) -> Result<()> {
    let spec = SweepSpec {
        cache: a.cache.cache,
        out: a.out,
        param: a.over,
        values: a.values,
        datasets: a.datasets,
        shots: a.shots,
        seeds: a.seeds,
        overrides: a.options.0,
        validation: a.validation.validation,
        model: a.cache.model,
    };
    let mut observer = Observer::grid(progress, "sweep", 0, false);
    let outcome = runner::sweep(&spec, &mut observer);
    observer.finish();
    let outcome = outcome?;
    outln!("{}", outcome.table.trim_end());
    print_written(&outcome.report);
    eprintln!(
        "sweep finished in {:.1} s: {} fitted, {} already in {}; table in {}",
        outcome.seconds,
        outcome.fitted,
        outcome.rows.len() - outcome.fitted,
        outcome.results_csv.display(),
        outcome.table_path.display()
    );
    Ok(())
}
