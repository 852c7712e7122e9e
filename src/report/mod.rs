//! The report of a results folder: `report.md` (the tables, the gains, the ablations) and
//! `figures/` (each chart as SVG and PNG), built from the rows of `results.csv` alone, so that
//! `run`, `sweep`, the demo and `clip-adapter report` write the same report from the same rows,
//! byte for byte.
//!
//! ```text
//! mod.rs      what goes in: the rows and the caller's options (published numbers, groups of
//!             datasets, headings, notes); the Markdown; reading the folder and writing it all
//! figures.rs  the charts: accuracy vs shots, gain over zero-shot, CLIP-Adapter's variants,
//!             the ablations
//! ```
//!
//! Rows of a sweep (CLIP-Adapter points that differ only in the bottleneck or in α) make the
//! ablation sections and are left out of the method comparison, where each value would be a
//! line of one point.

mod figures;

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::experiment::protocol::Validation;
use crate::experiment::row::read_csv;
use crate::experiment::sweep::{find_sweeps, FoundSweep, SweepParam};
use crate::experiment::{ExperimentError, Protocol, Published, ResultRow, Summary};
use crate::figure::bars::BarChart;
use crate::figure::lines::LineChart;
use crate::figure::{render_png, render_svg, FigureError};
use crate::fsutil::{write_atomic, WriteError};
use crate::methods::registry::{CLIP_ADAPTER, ZERO_SHOT};
use figures::{PanelSpec, ACCURACY_Y};

/// The folder's results file.
pub const RESULTS_CSV: &str = "results.csv";
/// The report's Markdown file and its figures' folder, inside the results folder.
pub const REPORT_MD: &str = "report.md";
pub const FIGURES_DIR: &str = "figures";

/// What stops a report. Bad input is refused before anything is written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{}: no such results folder", dir.display())]
    NoFolder { dir: PathBuf },

    #[error(
        "{}: not found; a results folder is what {}, {} or {} wrote with {}",
        path.display(),
        crate::hint::Command::new("run"),
        crate::hint::Command::new("sweep"),
        crate::hint::Command::new("demo"),
        crate::hint::opt("out")
    )]
    NoResults { path: PathBuf },

    #[error("{}: holds no results rows, so there is nothing to report", path.display())]
    Empty { path: PathBuf },

    #[error(transparent)]
    Experiment(#[from] ExperimentError),

    #[error("{}: cannot create the figures folder", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Figure(#[from] FigureError),

    #[error(transparent)]
    Write(#[from] WriteError),
}

/// A set of datasets averaged together: a panel of the accuracy figures and a table.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetGroup {
    /// The panel's title (`mean close`).
    pub title: String,
    /// The table's heading (`Mean over the close tasks (3)`).
    pub heading: String,
    pub datasets: Vec<String>,
}

/// What the caller adds to the rows.
#[derive(Debug, Clone, Default)]
pub struct ReportOptions {
    /// Published numbers of the rows' backbone (`Published::for_backbone`), and its name.
    pub published: Published,
    pub backbone: Option<String>,
    /// A panel title per dataset, where not the dataset's name (the demo: `shapes (close)`).
    pub titles: Vec<(String, String)>,
    /// A table heading per dataset, where not the dataset's name.
    pub headings: Vec<(String, String)>,
    /// Averages to show; empty: the average over all datasets, when there are several.
    pub groups: Vec<DatasetGroup>,
    /// Markdown appended to the report (the demo's notes on its settings).
    pub notes: String,
}

/// The files a report wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportFiles {
    pub report: PathBuf,
    pub figures: Vec<PathBuf>,
}

#[derive(Debug, Clone)]
enum Figure {
    Lines(LineChart),
    Bars(BarChart),
}

/// A report in memory: its Markdown and its figures by file stem.
#[derive(Debug, Clone)]
pub struct Report {
    pub markdown: String,
    figures: Vec<(String, Figure)>,
}

/// The rows of `dir/results.csv`, refusing a missing folder or file, a file with other
/// columns, and a file without rows.
pub fn read_results(dir: &Path) -> Result<Vec<ResultRow>, ReportError> {
    if !dir.is_dir() {
        return Err(ReportError::NoFolder {
            dir: dir.to_path_buf(),
        });
    }
    let path = dir.join(RESULTS_CSV);
    if !path.is_file() {
        return Err(ReportError::NoResults { path });
    }
    let rows = read_csv(&path)?;
    if rows.is_empty() {
        return Err(ReportError::Empty { path });
    }
    Ok(rows)
}

/// Writes the report of `rows` into `dir` (`report.md`, `figures/`).
pub fn write_report(
    dir: &Path,
    rows: &[ResultRow],
    options: &ReportOptions,
) -> Result<ReportFiles, ReportError> {
    if rows.is_empty() {
        return Err(ReportError::Empty {
            path: dir.join(RESULTS_CSV),
        });
    }
    Report::new(rows, options).write(dir)
}

fn lookup<'a>(pairs: &'a [(String, String)], key: &'a str) -> &'a str {
    (pairs.iter())
        .find(|(k, _)| k == key)
        .map_or(key, |(_, v)| v.as_str())
}

fn figure_link(alt: &str, stem: &str) -> String {
    format!("![{alt}]({FIGURES_DIR}/{stem}.svg)\n")
}

/// The sweeps among the rows, found per protocol: the same options without validation are
/// another point.
fn sweeps_of(rows: &[ResultRow]) -> Vec<(Validation, FoundSweep, Vec<ResultRow>)> {
    Validation::ALL
        .into_iter()
        .flat_map(|v| {
            let of_v: Vec<ResultRow> = rows.iter().filter(|r| r.validation == v).cloned().collect();
            (find_sweeps(&of_v).into_iter())
                .map(|f| (v, f, of_v.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The panels of the line figures: one per dataset, then one per group of datasets.
struct Panels {
    groups: Vec<DatasetGroup>,
    specs: Vec<PanelSpec>,
}

impl Panels {
    fn new(summary: &Summary, options: &ReportOptions) -> Self {
        let datasets = summary.datasets();
        let groups = if options.groups.is_empty() && datasets.len() > 1 {
            vec![DatasetGroup {
                title: "average".into(),
                heading: format!("Average over {} datasets", datasets.len()),
                datasets: datasets.to_vec(),
            }]
        } else {
            options.groups.clone()
        };
        let specs = (datasets.iter())
            .map(|d| PanelSpec {
                title: lookup(&options.titles, d).to_string(),
                datasets: vec![d.clone()],
            })
            .chain(groups.iter().map(|g| PanelSpec {
                title: g.title.clone(),
                datasets: g.datasets.clone(),
            }))
            .collect();
        Panels { groups, specs }
    }
}

impl Report {
    /// The report of `rows`. Rows of several models are never averaged together: the report
    /// is on the model of the last row (the latest), and says how many rows it left out.
    pub fn new(rows: &[ResultRow], options: &ReportOptions) -> Report {
        let model = rows.last().map(|r| r.model.clone()).unwrap_or_default();
        let all = rows.len();
        let rows: Vec<ResultRow> = rows.iter().filter(|r| r.model == model).cloned().collect();
        let others = all - rows.len();
        // Rows of the other protocols measure something else (new classes, other datasets):
        // sections of their own.
        let (rows, other_protocols): (Vec<ResultRow>, Vec<ResultRow>) =
            (rows.into_iter()).partition(|r| r.protocol == Protocol::FewShot);
        let sweeps = sweeps_of(&rows);
        let in_sweep = |r: &ResultRow| {
            r.method == CLIP_ADAPTER.name()
                && (sweeps.iter())
                    .any(|(v, s, _)| *v == r.validation && s.options.contains(&r.options))
        };
        let method_rows: Vec<ResultRow> = rows.iter().filter(|r| !in_sweep(r)).cloned().collect();
        let summary = Summary::new(&method_rows);
        let mut report = Report {
            markdown: String::from("# Results\n\n"),
            figures: Vec::new(),
        };
        if let Some(r) = rows.last().or(other_protocols.last()) {
            report.markdown.push_str(&format!(
                "Model: `{}` (fingerprint {}).",
                r.model_name, r.model
            ));
            if others > 0 {
                report.markdown.push_str(&format!(
                    " {others} rows of other models in the results file are left out."
                ));
            }
            report.markdown.push_str("\n\n");
        }
        let panels = Panels::new(&summary, options);
        if !method_rows.is_empty() {
            report.methods_section(&summary, &panels, options);
        }
        report.gains_section(&summary);
        report.variants_section(&summary, &panels);
        report.sweep_sections(&sweeps);
        if !other_protocols.is_empty() {
            let md = &mut report.markdown;
            md.push('\n');
            let base_to_new =
                crate::experiment::base_to_new::markdown(&other_protocols, &options.published);
            md.push_str(&base_to_new);
            // Its last table ends the line, not the section.
            if !base_to_new.is_empty() {
                md.push('\n');
            }
            md.push_str(&crate::experiment::transfer::markdown(&other_protocols));
        }
        if !options.notes.is_empty() {
            report.markdown.push('\n');
            report.markdown.push_str(&options.notes);
        }
        report
    }

    /// The accuracy-vs-shots figures (the paper's four methods as its Fig. 2; every method in
    /// a figure of its own and a ranking) and the tables per dataset and per group.
    fn methods_section(&mut self, summary: &Summary, panels: &Panels, options: &ReportOptions) {
        let published_label = match &options.backbone {
            Some(b) => format!("published ({b})"),
            None => "published".into(),
        };
        let labels: Vec<String> = summary.labels().map(str::to_string).collect();
        let paper = figures::paper_methods(&labels);
        let md = &mut self.markdown;
        md.push_str(&summary.caption(&options.published, options.backbone.as_deref()));
        md.push('\n');
        let stem = "accuracy_vs_shots";
        md.push_str(&figure_link("Test accuracy against shots per class", stem));
        if paper.len() < labels.len() {
            md.push_str(
                "\nThe paper's comparison (its Fig. 2): zero-shot CLIP, the linear probe, CoOp and \
                 CLIP-Adapter, as far as they were run; every method is in the next figure.\n",
            );
        }
        if !options.published.is_empty() {
            md.push_str(&format!(
                "\nFaint hollow markers: the {published_label} numbers.\n"
            ));
        }
        let figure = |lines: &[String]| {
            let (p, label) = (&options.published, published_label.as_str());
            figures::accuracy_vs_shots(summary, lines, &panels.specs, p, label)
        };
        self.figures
            .push((stem.into(), Figure::Lines(figure(&paper))));
        if paper.len() < labels.len() {
            let stem = "all_methods_vs_shots";
            self.markdown.push('\n');
            (self.markdown).push_str(&figure_link("Every method against shots per class", stem));
            self.figures
                .push((stem.into(), Figure::Lines(figure(&labels))));
            self.markdown.push_str(&figures::ranking(summary, &labels));
        }
        let md = &mut self.markdown;
        for d in summary.datasets() {
            md.push('\n');
            let heading = lookup(&options.headings, d);
            md.push_str(&summary.dataset_table(d, heading, &options.published));
        }
        for g in &panels.groups {
            md.push('\n');
            md.push_str(&summary.average_table(&g.heading, &g.datasets, &options.published));
        }
    }

    /// CLIP-Adapter's gain over zero-shot per dataset (the paper's Fig. 3).
    fn gains_section(&mut self, summary: &Summary) {
        let ca = CLIP_ADAPTER.name();
        let gains = figures::gains(summary, ca);
        if gains.is_empty() {
            return;
        }
        let stem = "gain_over_zero_shot";
        let md = &mut self.markdown;
        md.push_str("\n## Gain of CLIP-Adapter over zero-shot CLIP\n\n");
        md.push_str(&figure_link("Gain over zero-shot CLIP per dataset", stem));
        md.push_str(
            "\nAt the largest shot count with both methods, largest gain first; mean test \
             accuracy (%) over seeds.\n\n| dataset | shots | zero-shot | clip-adapter | gain \
             |\n|---|---:|---:|---:|---:|\n",
        );
        for g in &gains {
            md.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {:+.2} |\n",
                g.dataset,
                g.shots,
                g.zero_shot,
                g.method,
                g.gain()
            ));
        }
        let chart = figures::gain_chart(&gains, ca);
        self.figures.push((stem.into(), Figure::Bars(chart)));
    }

    /// CLIP-Adapter's visual, text and both adapters against shots (the paper's Fig. 4).
    fn variants_section(&mut self, summary: &Summary, panels: &Panels) {
        let labels: Vec<String> = summary.labels().map(str::to_string).collect();
        let variants = figures::variants(&labels);
        if variants.len() <= 1 {
            return;
        }
        let stem = "clip_adapter_variants";
        let md = &mut self.markdown;
        md.push_str("\n## CLIP-Adapter: visual, text and both adapters\n\n");
        md.push_str(&figure_link("CLIP-Adapter variants against shots", stem));
        md.push_str("\nTheir numbers are the tables' rows above.\n");
        let mut lines = variants.clone();
        if labels.iter().any(|l| l == ZERO_SHOT.name()) {
            lines.push(ZERO_SHOT.name().to_string());
        }
        let chart =
            figures::accuracy_vs_shots(summary, &lines, &panels.specs, &Published::default(), "");
        self.figures.push((stem.into(), Figure::Lines(chart)));
    }

    /// The ablation tables and curves of the sweeps found among the rows.
    fn sweep_sections(&mut self, sweeps: &[(Validation, FoundSweep, Vec<ResultRow>)]) {
        let mut seen: Vec<SweepParam> = Vec::new();
        for (validation, found, rows) in sweeps {
            let param = found.sweep.param();
            let n = seen.iter().filter(|p| **p == param).count();
            seen.push(param);
            let stem = match n {
                0 => format!("ablation_{}", param.name()),
                n => format!("ablation_{}_{}", param.name(), n + 1),
            };
            self.markdown
                .push_str(&ablation_section(found, *validation, rows, &stem));
            let chart = figures::ablation_chart(found, rows);
            self.figures.push((stem, Figure::Lines(chart)));
        }
    }

    /// Renders every figure, then writes them and `report.md` (each file atomically; nothing
    /// is written when a figure cannot be drawn).
    pub fn write(&self, dir: &Path) -> Result<ReportFiles, ReportError> {
        let fig_dir = dir.join(FIGURES_DIR);
        let mut files: Vec<(PathBuf, Vec<u8>)> = Vec::new();
        for (stem, figure) in &self.figures {
            let svg_path = fig_dir.join(format!("{stem}.svg"));
            let png_path = fig_dir.join(format!("{stem}.png"));
            let (svg, png) = match figure {
                Figure::Lines(c) => (render_svg(c, &svg_path)?, render_png(c, &png_path)?),
                Figure::Bars(c) => (render_svg(c, &svg_path)?, render_png(c, &png_path)?),
            };
            files.push((svg_path, svg.into_bytes()));
            files.push((png_path, png));
        }
        if !files.is_empty() {
            std::fs::create_dir_all(&fig_dir).map_err(|source| ReportError::CreateDir {
                path: fig_dir.clone(),
                source,
            })?;
        }
        for (path, bytes) in &files {
            write_atomic(path, bytes)?;
        }
        let report = dir.join(REPORT_MD);
        write_atomic(&report, self.markdown.as_bytes())?;
        Ok(ReportFiles {
            report,
            figures: files.into_iter().map(|(p, _)| p).collect(),
        })
    }
}

fn ablation_section(
    found: &FoundSweep,
    validation: Validation,
    rows: &[ResultRow],
    stem: &str,
) -> String {
    let what = match found.sweep.param() {
        SweepParam::Reduction => "bottleneck width",
        SweepParam::Alpha => "residual ratio α",
    };
    let mut s = format!("\n## Ablation: {what}");
    if !found.base.is_empty() {
        s.push_str(&format!(" ({})", found.base));
    }
    if validation == Validation::None {
        s.push_str(" [no validation]");
    }
    s.push_str("\n\n");
    s.push_str(&figure_link(
        &format!("CLIP-Adapter: {ACCURACY_Y} against the {what}"),
        stem,
    ));
    s.push('\n');
    s.push_str(&found.sweep.table(&found.options, rows));
    s
}
