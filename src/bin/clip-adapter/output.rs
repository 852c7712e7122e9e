//! Everything the command prints: tables for people, JSON for scripts, progress bars on a
//! terminal only.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use clip_adapter::zero_shot::{Prediction, ZeroShotClassifier};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
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
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>18} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})")
        {
            bar.set_style(style.progress_chars("=> "));
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
    let width = classifier
        .labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(5)
        .max(5);
    for (path, preds) in paths.iter().zip(predictions) {
        writeln!(out, "{path}")?;
        for (rank, p) in preds.iter().enumerate() {
            writeln!(
                out,
                "  {:>2}. {:<width$}  {:>6.2}%  (logit {:.3})",
                rank + 1,
                p.label,
                100.0 * p.probability,
                p.logit
            )?;
        }
    }
    Ok(())
}
