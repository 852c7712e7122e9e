//! Everything the command prints: tables for people, JSON for scripts, progress bars on a
//! terminal only.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use clip_adapter::data::{display_name, DISPLAY_CHARS};
use clip_adapter::experiment::{ExperimentError, GridEvent, ResultRow};
use clip_adapter::methods;
use clip_adapter::report::ReportFiles;
use clip_adapter::runner::{NoPublished, RunObserver};
use clip_adapter::zero_shot::{Prediction, ZeroShotClassifier};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};
use serde_json::json;

pub struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        Progress {
            enabled: !quiet && std::io::stderr().is_terminal(),
        }
    }

    pub fn bar(&self, what: &str, total: usize) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
        }
        let bar = ProgressBar::new(total as u64);
        // indicatif's `{per_sec}` prints four decimals and a thousands separator
        // ("2,238.8918/s"); a rate is read at a glance, so one decimal.
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} ({rate}, ETA {eta})")
        {
            let style = style
                .with_key(
                    "rate",
                    |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = w.write_str(&rate(state.per_sec()));
                    },
                )
                .progress_chars("=> ");
            bar.set_style(style);
        }
        bar.set_message(what.to_string());
        bar
    }

    /// A download callback drawing one bar per file.
    pub fn download(&self) -> impl FnMut(&str, u64, Option<u64>) {
        let enabled = self.enabled;
        let mut current: Option<(String, ProgressBar)> = None;
        move |file, done, total| {
            if !enabled {
                return;
            }
            if current.as_ref().is_none_or(|(f, _)| f != file) {
                let bar = ProgressBar::new(total.unwrap_or(0));
                if let Ok(style) =
                    ProgressStyle::with_template("{msg} {bytes}/{total_bytes} ({bytes_per_sec})")
                {
                    bar.set_style(style);
                }
                bar.set_message(format!("downloading {file}"));
                current = Some((file.to_string(), bar));
            }
            if let Some((_, bar)) = &current {
                bar.set_position(done);
            }
        }
    }
}

/// Items per second with one decimal (`2238.9/s`), no decimals from 100,000 on.
pub fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() {
        return "-/s".into();
    }
    if per_sec >= 1e5 {
        format!("{per_sec:.0}/s")
    } else {
        format!("{per_sec:.1}/s")
    }
}

pub fn print_embeddings(
    paths: &[String],
    images: &[Vec<f32>],
    texts: &[String],
    text_embeddings: &[Vec<f32>],
    as_json: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        let images: Vec<_> = paths
            .iter()
            .zip(images)
            .map(|(p, e)| json!({"path": p, "embedding": e}))
            .collect();
        let texts: Vec<_> = texts
            .iter()
            .zip(text_embeddings)
            .map(|(t, e)| json!({"text": t, "embedding": e}))
            .collect();
        writeln!(out, "{}", json!({"images": images, "texts": texts}))?;
        return Ok(());
    }
    let row = |e: &Vec<f32>| {
        e.iter()
            .map(|v| format!("{v:.6}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (p, e) in paths.iter().zip(images) {
        writeln!(out, "image\t{p}\t{}", row(e))?;
    }
    for (t, e) in texts.iter().zip(text_embeddings) {
        writeln!(out, "text\t{t}\t{}", row(e))?;
    }
    Ok(())
}

pub fn print_predictions(
    paths: &[String],
    predictions: &[Vec<Prediction>],
    classifier: &ZeroShotClassifier,
    as_json: bool,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if as_json {
        let results: Vec<_> = paths
            .iter()
            .zip(predictions)
            .map(|(p, preds)| json!({"path": p, "predictions": preds}))
            .collect();
        let doc = json!({
            "labels": classifier.labels,
            "logit_scale": classifier.logit_scale,
            "results": results,
        });
        writeln!(out, "{doc}")?;
        return Ok(());
    }
    // Labels are cut for the table only (JSON keeps them whole); an uncut 65,536-character
    // label would also overflow the formatter's width.
    let width = classifier
        .labels
        .iter()
        .map(|l| display_name(l).chars().count())
        .max()
        .unwrap_or(5)
        .clamp(5, DISPLAY_CHARS + 32);
    for (path, preds) in paths.iter().zip(predictions) {
        writeln!(out, "{path}")?;
        for (rank, p) in preds.iter().enumerate() {
            writeln!(
                out,
                "  {:>2}. {:<width$}  {:>6.2}%  (logit {:.3})",
                rank + 1,
                display_name(&p.label),
                100.0 * p.probability,
                p.logit
            )?;
        }
    }
    Ok(())
}

/// An f32 as JSON in its shortest decimal form (`92.8`, not `92.80000305175781`); NaN (no
/// validation set) as null.
pub fn json_f32(x: f32) -> serde_json::Value {
    x.to_string()
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(serde_json::Value::Null, serde_json::Value::Number)
}

/// One line on stderr after a command wrote its folder's report.
pub fn print_written(files: &ReportFiles) {
    let dir = files.figures.first().and_then(|f| f.parent());
    match dir {
        Some(d) => eprintln!(
            "report: {} and {} figures in {}",
            files.report.display(),
            files.figures.len() / 2,
            d.display()
        ),
        None => eprintln!("report: {}", files.report.display()),
    }
}

/// What draws a download's bar.
pub type OnDownload<'a> = dyn FnMut(&str, u64, Option<u64>) + 'a;

/// The library's reports drawn as bars and notes: a bar for the grid's cells, one for the
/// method in training (or the images being encoded), downloads, notes on stderr.
pub struct Observer<'a> {
    progress: &'a Progress,
    /// The grid's bar; `None` for a single fit.
    grid: Option<ProgressBar>,
    method: Option<ProgressBar>,
    download: Box<OnDownload<'a>>,
    /// Whether a fit starting names the method bar (run) or not (sweep).
    name_fits: bool,
}

impl<'a> Observer<'a> {
    /// For a grid: `what` names its bar.
    pub fn grid(progress: &'a Progress, what: &str, cells: usize, name_fits: bool) -> Self {
        let mut o = Observer::new(progress);
        o.grid = Some(progress.bar(what, cells));
        o.method = Some(progress.bar("", 0));
        o.name_fits = name_fits;
        o
    }

    pub fn new(progress: &'a Progress) -> Self {
        Observer {
            progress,
            grid: None,
            method: None,
            download: Box::new(progress.download()),
            name_fits: false,
        }
    }

    /// A bar for one method's training, named `what`.
    pub fn fit(progress: &'a Progress, what: &str) -> Self {
        let mut o = Observer::new(progress);
        o.method = Some(progress.bar(what, 0));
        o
    }

    /// Clears the bars.
    pub fn finish(&mut self) {
        for bar in [self.method.take(), self.grid.take()].into_iter().flatten() {
            bar.finish_and_clear();
        }
    }
}

impl RunObserver for Observer<'_> {
    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        (self.download)(file, done, total)
    }

    fn grid(&mut self, event: GridEvent) {
        match event {
            GridEvent::Fitting { method, .. } if self.name_fits => {
                if let Some(bar) = &self.method {
                    bar.set_message(method.to_string())
                }
            }
            GridEvent::Fitting { .. } => {}
            GridEvent::Method(p) => {
                if let Some(bar) = &self.method {
                    method_progress(bar, p)
                }
            }
            GridEvent::Row {
                row,
                skipped,
                done,
                total,
            } => {
                if let Some(bar) = &self.grid {
                    bar.set_length(total as u64);
                    report_row(bar, row, skipped, done)
                }
            }
        }
    }

    fn no_published(&mut self, why: &NoPublished) {
        match why {
            NoPublished::ModelNotFound(e) => eprintln!(
                "note: no published numbers: cannot read the model behind the features to know \
                 its backbone: {}",
                full_chain(e.as_ref())
            ),
            other => eprintln!("note: no published numbers: {other}"),
        }
    }

    fn encoding(&mut self, done: usize, total: usize) {
        let bar = (self.method).get_or_insert_with(|| self.progress.bar("encoding images", total));
        bar.set_position(done as u64);
    }

    fn model_mismatch(&mut self, why: &ExperimentError) {
        let why = crate::render::render(why);
        eprintln!("warning: {why} (going on: --allow-model-mismatch)");
    }
}

/// An error and all its causes, `: `-separated (anyhow's `{:#}`).
fn full_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(&format!(": {c}"));
        cause = c.source();
    }
    out
}

fn method_progress(bar: &ProgressBar, p: methods::Progress) {
    match p {
        methods::Progress::Epoch {
            epoch,
            epochs,
            loss,
        } => {
            bar.set_length(epochs as u64);
            bar.set_position(epoch as u64 + 1);
            bar.set_message(format!("loss {loss:.4}"));
        }
        methods::Progress::Search { done, total } => {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    }
}

/// A finished grid cell: the grid's bar moves on, and a fitted row is reported on stderr.
fn report_row(bar: &ProgressBar, row: &ResultRow, skipped: bool, done: usize) {
    bar.set_position(done as u64);
    if !skipped {
        bar.suspend(|| {
            eprintln!(
                "{} {} {}-shot seed {}: test {:.2} % ({:.1} s)",
                row.label(),
                row.dataset,
                row.shots,
                row.seed,
                row.test_accuracy,
                row.train_seconds
            )
        });
    }
}

#[cfg(test)]
mod tests {
    use super::rate;

    #[test]
    fn rates_have_one_decimal_and_no_separator() {
        assert_eq!(rate(2_238.891_8), "2238.9/s");
        assert_eq!(rate(0.25), "0.2/s");
        assert_eq!(rate(123_456.7), "123457/s");
        assert_eq!(rate(f64::INFINITY), "-/s");
    }
}
