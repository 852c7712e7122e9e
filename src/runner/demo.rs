//! The embedded demo as one call: the protocol on the generated tasks, then its results.csv,
//! the folder's report and the t-SNE figure written into the output folder.

use std::path::PathBuf;

use super::RunError;
use crate::demo::{run_demo, DemoEvent, DemoOptions, DemoReport};
use crate::fsutil::write_atomic;
use crate::report::{Report, ReportFiles, FIGURES_DIR, RESULTS_CSV};

/// What the demo ran and wrote.
pub struct DemoOutcome {
    pub report: DemoReport,
    /// The report's Markdown (also in `files.report`).
    pub markdown: String,
    pub files: ReportFiles,
    pub results_csv: PathBuf,
    pub figures_dir: PathBuf,
    /// Whether the t-SNE figure was drawn too.
    pub tsne_figure: bool,
}

/// Runs the demo into `options.out`.
pub fn demo(
    options: &DemoOptions,
    on_event: &mut dyn FnMut(DemoEvent),
) -> Result<DemoOutcome, RunError> {
    let report = run_demo(options, on_event).map_err(|source| RunError::Demo {
        model_dir: options.model_dir.clone(),
        source: Box::new(source),
    })?;
    let csv = report.csv().map_err(RunError::DemoCsv)?;
    let results_csv = options.out.join(RESULTS_CSV);
    write_atomic(&results_csv, csv.as_bytes())?;
    let written = Report::new(&report.rows, &report.report_options());
    let files = written.write(&options.out)?;
    let figures_dir = options.out.join(FIGURES_DIR);
    if let Some(t) = &report.tsne {
        (t.maps.write_figure(&figures_dir.join(t.stem()))).map_err(|source| RunError::Tsne {
            task: t.task.clone(),
            source: Box::new(source),
        })?;
    }
    Ok(DemoOutcome {
        tsne_figure: report.tsne.is_some(),
        report,
        markdown: written.markdown,
        files,
        results_csv,
        figures_dir,
    })
}
