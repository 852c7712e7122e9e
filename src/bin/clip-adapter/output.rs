//! Everything the command prints: tables for people, JSON for scripts, progress bars on a
//! terminal only.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use clip_adapter::data::{display_name, DISPLAY_CHARS};
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
