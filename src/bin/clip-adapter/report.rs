//! `report`: a results folder's report through [`clip_adapter::report`], and printing.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use clip_adapter::clip::hub::HubOptions;
use clip_adapter::experiment::Published;
use clip_adapter::report::{read_results, Report, ReportOptions};
use clip_adapter::runner::published_for_rows;

use crate::output::{Observer, Progress};

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// A results folder: the --out of `run`, `sweep` or `demo`, with its results.csv. The
    /// report goes into it: DIR/report.md and DIR/figures/*.svg + *.png.
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Published numbers (CSV: method,backbone,dataset,shots,accuracy), drawn as faint markers
    /// and printed in brackets where the backbone is the rows' model's (read from its config,
    /// so the model must be found as the rows name it).
    #[arg(long, value_name = "CSV")]
    pub reported: Option<PathBuf>,
    /// Print JSON: `{"report": PATH, "figures": [PATH, ...], "rows": N}`.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ReportArgs, progress: &Progress) -> Result<()> {
    let reported = match &a.reported {
        Some(p) => Some(Published::read(p)?),
        None => None,
    };
    let rows = read_results(&a.dir)?;
    let mut observer = Observer::new(progress);
    let (published, backbone) = published_for_rows(
        reported.as_ref(),
        &rows,
        &HubOptions::from_env(),
        &mut observer,
    );
    let options = ReportOptions {
        published,
        backbone,
        ..ReportOptions::default()
    };
    let files = Report::new(&rows, &options).write(&a.dir)?;
    if a.json {
        let doc = serde_json::json!({
            "report": files.report,
            "figures": files.figures,
            "rows": rows.len(),
        });
        crate::output::outln!("{doc}");
    } else {
        crate::output::outln!("{}", files.report.display());
        for f in &files.figures {
            crate::output::outln!("{}", f.display());
        }
    }
    Ok(())
}
