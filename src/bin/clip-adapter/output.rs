//! Everything the command prints: tables for people, JSON for scripts, progress bars on a
//! terminal only.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};

use anyhow::Result;
use clip_adapter::data::{display_name, DataError, Dataset, FewShot, DISPLAY_CHARS};
use clip_adapter::experiment::{ExperimentError, GridEvent, ResultRow, TrainedOn};
use clip_adapter::features::{import::ImportObserver, job::ExtractObserver, Event};
use clip_adapter::methods;
use clip_adapter::report::ReportFiles;
use clip_adapter::runner::{NoPublished, RunObserver};
use clip_adapter::zero_shot::Prediction;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// `println!` that returns an error (a closed pipe) instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}
pub(crate) use outln;

pub struct Progress {
    enabled: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Self {
        let enabled = !quiet && std::io::stderr().is_terminal();
        Progress { enabled }
    }

    pub fn bar(&self, what: &str, total: usize) -> ProgressBar {
        if !self.enabled {
            return ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
        }
        let bar = ProgressBar::new(total as u64);
        // indicatif's `{per_sec}` prints four decimals and a thousands separator
        // ("2,238.8918/s"); a rate is read at a glance, so one decimal.
        let template = "{msg:>18} [{bar:30}] {pos}/{len} ({rate}, ETA {eta})";
        if let Ok(style) = ProgressStyle::with_template(template) {
            let rate = |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&rate(s.per_sec()));
            };
            bar.set_style(style.with_key("rate", rate).progress_chars("=> "));
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
                let template = "{msg} {bytes}/{total_bytes} ({bytes_per_sec})";
                if let Ok(style) = ProgressStyle::with_template(template) {
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
    match per_sec {
        x if !x.is_finite() => "-/s".into(),
        x if x >= 1e5 => format!("{x:.0}/s"),
        x => format!("{x:.1}/s"),
    }
}

/// Embeddings as `image\tPATH\tv v v` / `text\tTEXT\tv v v` lines.
pub fn print_embeddings(rows: &[(&str, &str, &[f32])]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    for (kind, name, e) in rows {
        let values: Vec<String> = e.iter().map(|v| format!("{v:.6}")).collect();
        writeln!(out, "{kind}\t{name}\t{}", values.join(" "))?;
    }
    Ok(())
}

/// Per image its path, then rank, label, probability and logit of its top classes.
pub fn print_predictions(
    paths: &[String],
    predictions: &[Vec<Prediction>],
    labels: &[String],
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    // Labels are cut for the table only (JSON keeps them whole); an uncut 65,536-character
    // label would also overflow the formatter's width.
    let widest = labels.iter().map(|l| display_name(l).chars().count()).max();
    let width = widest.unwrap_or(5).clamp(5, DISPLAY_CHARS + 32);
    for (path, preds) in paths.iter().zip(predictions) {
        writeln!(out, "{path}")?;
        for (rank, p) in preds.iter().enumerate() {
            let (label, percent) = (display_name(&p.label), 100.0 * p.probability);
            let rank = rank + 1;
            writeln!(
                out,
                "  {rank:>2}. {label:<width$}  {percent:>6.2}%  (logit {:.3})",
                p.logit
            )?;
        }
    }
    Ok(())
}

/// `{"path", "predictions"}` per image, for the JSON of `classify` and `predict`.
pub fn prediction_results(paths: &[String], predictions: &[Vec<Prediction>]) -> serde_json::Value {
    let results = paths.iter().zip(predictions);
    (results.map(|(p, preds)| serde_json::json!({"path": p, "predictions": preds}))).collect()
}

/// Items of a list printed without --verbose; what follows the count of the rest.
pub const FIRST: usize = 5;
pub const MORE: &str = " (--verbose lists all)";

/// The classes that had fewer images than asked for, on stderr.
pub fn report_short(few: &FewShot, dataset: &Dataset, verbose: bool) {
    let shown = if verbose { usize::MAX } else { FIRST };
    for note in few.shortage_notes(dataset, shown, MORE) {
        eprintln!("note: {note}");
    }
}

/// One line on stderr after a command wrote its folder's report.
pub fn print_written(files: &ReportFiles) {
    match files.figures.first().and_then(|f| f.parent()) {
        Some(d) => {
            let (report, n) = (files.report.display(), files.figures.len() / 2);
            eprintln!("report: {report} and {n} figures in {}", d.display())
        }
        None => eprintln!("report: {}", files.report.display()),
    }
}

/// What draws a download's bar.
pub type OnDownload<'a> = dyn FnMut(&str, u64, Option<u64>) + 'a;

/// The library's reports drawn as bars and notes: a bar for the grid's cells, one for the work
/// in progress (a method's training, images or prompts being encoded), downloads, notes on
/// stderr.
pub struct Observer<'a> {
    progress: &'a Progress,
    /// The grid's bar; `None` outside a grid.
    grid: Option<ProgressBar>,
    work: Option<ProgressBar>,
    download: Box<OnDownload<'a>>,
    /// Whether a fit starting names the work bar (run) or not (sweep).
    name_fits: bool,
    /// Whether every short class is named (extract --verbose).
    verbose: bool,
    /// Encoded and total images of the sets being extracted.
    sets: BTreeMap<String, (usize, usize)>,
    /// The methods already warned about training without their authors' augmentation.
    unaugmented: BTreeSet<String>,
}

impl<'a> Observer<'a> {
    pub fn new(progress: &'a Progress) -> Self {
        Observer {
            progress,
            grid: None,
            work: None,
            download: Box::new(progress.download()),
            name_fits: false,
            verbose: false,
            sets: BTreeMap::new(),
            unaugmented: BTreeSet::new(),
        }
    }

    /// For a grid: `what` names its bar.
    pub fn grid(progress: &'a Progress, what: &str, cells: usize, name_fits: bool) -> Self {
        let grid = Some(progress.bar(what, cells));
        let work = Some(progress.bar("", 0));
        Observer {
            grid,
            work,
            name_fits,
            ..Observer::new(progress)
        }
    }

    /// A bar for one method's training, named `what`.
    pub fn fit(progress: &'a Progress, what: &str) -> Self {
        Observer {
            work: Some(progress.bar(what, 0)),
            ..Observer::new(progress)
        }
    }

    pub fn verbose(self, verbose: bool) -> Self {
        Observer { verbose, ..self }
    }

    /// The work bar, made (named `what`, of `total`) if there is none.
    fn work(&mut self, what: &str, total: usize) -> &ProgressBar {
        self.work
            .get_or_insert_with(|| self.progress.bar(what, total))
    }

    fn end_work(&mut self) {
        if let Some(bar) = self.work.take() {
            bar.finish_and_clear();
        }
    }

    /// Once per method: it trained on the centre crop alone where its authors augment.
    pub fn warn_unaugmented(&mut self, row: &ResultRow) {
        if row.trained_on() == Some(TrainedOn::CentreCropOnly)
            && self.unaugmented.insert(row.method.clone())
        {
            let say = || {
                eprintln!(
                    "warning: {} trained on the centre crop alone: its authors augment the training \
                     images, and the cache of {} holds no augmented views (extract with --views N)",
                    row.method, row.dataset
                )
            };
            match &self.grid {
                Some(bar) => bar.suspend(say),
                None => say(),
            }
        }
    }

    /// Clears the bars.
    pub fn finish(&mut self) {
        self.end_work();
        if let Some(bar) = self.grid.take() {
            bar.finish_and_clear();
        }
    }
}

impl RunObserver for Observer<'_> {
    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        (self.download)(file, done, total)
    }

    fn grid(&mut self, event: GridEvent) {
        match (event, &self.work) {
            (GridEvent::Fitting { method, .. }, Some(bar)) if self.name_fits => {
                bar.set_message(method.to_string())
            }
            (GridEvent::Method(p), Some(bar)) => method_progress(bar, p),
            (
                GridEvent::Row {
                    row,
                    skipped,
                    done,
                    total,
                },
                _,
            ) => {
                if let Some(bar) = &self.grid {
                    bar.set_length(total as u64);
                    bar.set_position(done as u64);
                    if !skipped {
                        bar.suspend(|| eprintln!("{}", row_line(row)));
                    }
                }
                if !skipped {
                    self.warn_unaugmented(row);
                }
            }
            _ => {}
        }
    }

    fn no_published(&mut self, why: &NoPublished) {
        eprintln!("note: no published numbers: {}", crate::render::chain(why));
    }

    fn encoding(&mut self, done: usize, total: usize) {
        self.work("encoding images", total)
            .set_position(done as u64);
    }

    fn model_mismatch(&mut self, why: &ExperimentError) {
        eprintln!("warning: {why} (going on: --allow-model-mismatch)");
    }
}

impl ExtractObserver for Observer<'_> {
    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        (self.download)(file, done, total)
    }

    fn short_classes(&mut self, few: &FewShot, dataset: &Dataset) {
        report_short(few, dataset, self.verbose);
    }

    fn skipping_missing(&mut self, why: &DataError) {
        eprintln!("warning: {why}; they will be skipped");
    }

    fn prompts(&mut self, done: usize, total: usize) {
        self.work("class prompts", total).set_position(done as u64);
    }

    fn prompts_rebuilt(&mut self, reason: &str) {
        eprintln!("note: {reason}\nencoding the class prompts again");
    }

    fn event(&mut self, e: &Event) {
        if self.sets.is_empty() {
            self.end_work(); // the prompts' bar
        }
        match e {
            Event::Start { set, total, done } | Event::Progress { set, total, done } => {
                self.sets.insert(set.clone(), (*done, *total));
                let (d, t) = (self.sets.values()).fold((0, 0), |a, c| (a.0 + c.0, a.1 + c.1));
                let bar = self.work(set, t);
                bar.set_length(t as u64);
                bar.set_position(d as u64);
            }
            Event::Done { set, .. } => {
                self.sets.remove(set);
                if self.sets.is_empty() {
                    self.end_work();
                }
            }
            other => {
                if let Some(note) = other.notice() {
                    eprintln!("note: {note}");
                }
            }
        }
    }
}

impl ImportObserver for Observer<'_> {
    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        (self.download)(file, done, total)
    }

    fn prompts(&mut self, done: usize, total: usize) {
        self.work("class prompts", total).set_position(done as u64);
    }
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

/// A fitted grid cell, as stderr reports it.
fn row_line(row: &ResultRow) -> String {
    let (label, dataset, shots, seed) = (row.label(), &row.dataset, row.shots, row.seed);
    let (test, seconds) = (row.test_accuracy, row.train_seconds);
    format!("{label} {dataset} {shots}-shot seed {seed}: test {test:.2} % ({seconds:.1} s)")
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
