//! The demo's report: the experiment's rows and tables, the close/far grouping of the world's
//! tasks, the α CLIP-Adapter chose, and the accuracy-vs-shots plot.

mod plot;

pub use plot::{Colour, Figure, PANEL_H, PANEL_W};

use std::collections::BTreeMap;

use super::run::{CLIP_LOGIT_SCALE, DEMO_COOP_EPOCHS, DEMO_COOP_N_CTX};
use crate::experiment::row::to_csv;
use crate::experiment::{Published, ResultRow, Summary};
use crate::world::tasks::Gap;
use plot::{Panel, Series};

/// The line style of a method in [`DemoReport::plot`]: zero-shot is the dashed dark reference,
/// every other method keeps one colour in every panel (and across runs).
pub fn method_style(label: &str) -> (Colour, bool) {
    let colour = match label {
        "zero-shot" => return ([40, 40, 40], true),
        "linear-probe" => [140, 86, 75],
        "clip-adapter" => [214, 39, 40],
        "clip-adapter-text" => [255, 127, 14],
        "clip-adapter-both" => [148, 103, 189],
        "coop" => [227, 119, 194],
        "tip-adapter" => [23, 190, 207],
        "tip-adapter-f" => [31, 119, 180],
        "gda" => [44, 160, 44],
        "ape" => [188, 189, 34],
        "ape-t" => [127, 127, 127],
        "lp++" => [255, 187, 120],
        "clap" => [0, 0, 128],
        // Another method: a colour that depends on its name only.
        other => {
            let spare: [Colour; 3] = [[188, 189, 34], [127, 127, 127], [255, 187, 120]];
            spare[other.bytes().map(usize::from).sum::<usize>() % spare.len()]
        }
    };
    (colour, false)
}

/// Everything the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// One row per fit; `dataset` is the task, `method` the demo's method label.
    pub rows: Vec<ResultRow>,
    /// `(name, gap, description)` of each task run.
    pub tasks: Vec<(String, Gap, String)>,
    pub shots: Vec<usize>,
    pub methods: Vec<String>,
    pub seconds: f64,
    /// The model's logit scale, which set CLIP-Adapter's learning rate.
    pub logit_scale: f32,
}

impl DemoReport {
    /// Mean and standard deviation of test accuracy over seeds.
    pub fn cell(&self, task: &str, method: &str, shots: usize) -> Option<(f32, f32)> {
        Summary::new(&self.rows).cell(method, task, shots)
    }

    fn tasks_of(&self, gap: Gap) -> Vec<String> {
        (self.tasks.iter())
            .filter(|(_, g, _)| *g == gap)
            .map(|(t, _, _)| t.clone())
            .collect()
    }

    /// Mean test accuracy of a method at `shots` over the tasks of one gap (those that have it).
    pub fn gap_mean(&self, gap: Gap, method: &str, shots: usize) -> Option<f32> {
        let summary = Summary::new(&self.rows);
        let v: Vec<f32> = (self.tasks_of(gap).iter())
            .filter_map(|t| summary.cell(method, t, shots).map(|c| c.0))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
    }

    /// The α chosen most often for the visual CLIP-Adapter at the largest shot count.
    pub fn best_alpha(&self, task: &str) -> Option<String> {
        let top = *self.shots.iter().max()?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in (self.rows.iter())
            .filter(|r| r.dataset == task && r.method == "clip-adapter" && r.shots == top)
        {
            if let Some(a) = r.chosen.split(' ').find_map(|kv| kv.strip_prefix("alpha=")) {
                *counts.entry(a.to_string()).or_default() += 1;
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(a, _)| a)
    }

    /// Mean test accuracy over seeds against shots (log2 axis), one panel per task, then the
    /// mean over the close and over the far tasks; one line per method.
    pub fn plot(&self) -> Figure {
        let x_ticks: Vec<f32> = self.shots.iter().map(|&k| k as f32).collect();
        let panel = |title: String, value: &dyn Fn(&str, usize) -> Option<f32>| Panel {
            title,
            series: (self.methods.iter())
                .map(|m| {
                    let (colour, dashed) = method_style(m);
                    let points = (self.shots.iter())
                        .map(|&k| (k as f32, value(m, k).unwrap_or(f32::NAN)))
                        .collect();
                    Series {
                        label: m.clone(),
                        colour,
                        dashed,
                        points,
                    }
                })
                .collect(),
            x_ticks: x_ticks.clone(),
            y_range: None,
        };
        let mut panels: Vec<Panel> = (self.tasks.iter())
            .map(|(task, gap, _)| {
                let title = format!("{task} ({})", gap.as_str());
                panel(title, &|m, k| self.cell(task, m, k).map(|c| c.0))
            })
            .collect();
        for gap in [Gap::Close, Gap::Far] {
            if self.tasks.iter().any(|(_, g, _)| *g == gap) {
                let title = format!("mean {}", gap.as_str());
                panels.push(panel(title, &|m, k| self.gap_mean(gap, m, k)));
            }
        }
        Figure {
            // Up to four across, leaving a cell free for the legend.
            columns: (panels.len() + 1).min(4),
            panels,
            x_label: "shots".into(),
            y_label: "accuracy (%)".into(),
        }
    }

    /// [`DemoReport::plot`] as a PNG file's bytes.
    pub fn png(&self) -> std::result::Result<Vec<u8>, ::image::ImageError> {
        self.plot().to_png_bytes()
    }

    /// Every fit, one CSV line each: the columns of `clip-adapter run`'s results.csv.
    pub fn csv(&self) -> Result<String, csv::Error> {
        let bytes = to_csv(&self.rows)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The experiment's tables (one per task, then the means over the close, the far and all
    /// tasks), the α CLIP-Adapter chose, and how the learning rate was set.
    pub fn markdown(&self) -> String {
        let summary = Summary::new(&self.rows);
        let none = Published::default();
        let mut s = summary.caption(&none, None);
        for (task, gap, about) in &self.tasks {
            s.push('\n');
            let heading = format!("{task} ({} — {about})", gap.as_str());
            s.push_str(&summary.dataset_table(task, &heading, &none));
        }
        for gap in [Gap::Close, Gap::Far] {
            let tasks = self.tasks_of(gap);
            if !tasks.is_empty() && self.tasks.len() > 1 {
                let heading = format!("Mean over the {} tasks ({})", gap.as_str(), tasks.len());
                s.push('\n');
                s.push_str(&summary.average_table(&heading, &tasks, &none));
            }
        }
        if self.tasks.len() > 1 {
            let all: Vec<String> = self.tasks.iter().map(|(t, _, _)| t.clone()).collect();
            let heading = format!("Mean over all {} tasks", all.len());
            s.push('\n');
            s.push_str(&summary.average_table(&heading, &all, &none));
        }
        if self.methods.iter().any(|m| m == "clip-adapter") {
            s.push_str("\n### CLIP-Adapter: α chosen on validation at the largest shot count\n\n| task | gap | α |\n|---|---|---:|\n");
            for (task, gap, _) in &self.tasks {
                let a = self.best_alpha(task).unwrap_or_else(|| "–".into());
                s.push_str(&format!("| {task} | {} | {a} |\n", gap.as_str()));
            }
        }
        s.push_str(&format!(
            "\nCLIP-Adapter's SGD learning rate: the protocol's, scaled by 100 / logit scale \
             ({:.1}) = ×{:.2}.\n",
            self.logit_scale,
            CLIP_LOGIT_SCALE / self.logit_scale
        ));
        if self.methods.iter().any(|m| m == "coop") {
            s.push_str(&format!(
                "\nCoOp: demo-sized, {DEMO_COOP_EPOCHS} epochs at every shot count (CoOp's own: \
                 50-200) and {DEMO_COOP_N_CTX} context vectors (the model's context is 24 \
                 tokens); its learning rate scaled as CLIP-Adapter's.\n"
            ));
        }
        s.push_str(&format!(
            "\n{} fits in {:.1} s.\n",
            self.rows.len(),
            self.seconds
        ));
        s
    }
}
