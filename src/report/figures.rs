//! The report's figures, built from results rows: accuracy against shots (the paper's Fig. 2,
//! and every method in a figure of its own with a ranking),
//! the gain over zero-shot per dataset (Fig. 3), the CLIP-Adapter variants (Fig. 4) and the
//! ablations (accuracy against the swept value).

use crate::experiment::sweep::{FoundSweep, Sweep};
use crate::experiment::ResultRow;
use crate::experiment::{Published, Summary};
use crate::figure::bars::{Bar, BarChart};
use crate::figure::lines::{faint, Line, LineChart, LinePanel, Markers, XScale};
use crate::figure::style::{method_style, palette, SeriesStyle, INK};
use crate::methods::registry::{CLIP_ADAPTER, COOP, LINEAR_PROBE, ZERO_SHOT};
use crate::methods::MethodKind;

/// Panels across before a figure wraps to a new row.
const MAX_COLUMNS: usize = 4;

pub(super) const ACCURACY_Y: &str = "test accuracy (%)";

/// A panel of the accuracy figures: its title and the datasets it averages (one: that
/// dataset's own numbers).
#[derive(Debug, Clone)]
pub(super) struct PanelSpec {
    pub title: String,
    pub datasets: Vec<String>,
}

fn shot_ticks(shots: &[usize]) -> Vec<(f64, String)> {
    shots.iter().map(|&k| (k as f64, k.to_string())).collect()
}

/// The mean over seeds on one dataset, or the mean of the per-dataset means over several.
fn value(summary: &Summary, label: &str, datasets: &[String], shots: usize) -> Option<f32> {
    match datasets {
        [d] => summary.cell(label, d, shots).map(|c| c.0),
        _ => summary.average(label, datasets, shots),
    }
}

fn published_value(p: &Published, label: &str, datasets: &[String], k: usize) -> Option<f32> {
    // Only a method's own row (no options) is what the publications measured.
    label.parse::<MethodKind>().ok()?;
    match datasets {
        [d] => p.dataset_value(label, d, k),
        _ => p.average_value(label, datasets, k),
    }
}

/// Accuracy against shots for `labels`, a panel per spec, published numbers as markers.
pub(super) fn accuracy_vs_shots(
    summary: &Summary,
    labels: &[String],
    panels: &[PanelSpec],
    published: &Published,
    published_label: &str,
) -> LineChart {
    let shots = summary.shots();
    let panels: Vec<LinePanel> = (panels.iter())
        .map(|spec| LinePanel {
            title: spec.title.clone(),
            lines: (labels.iter())
                .map(|l| Line {
                    label: l.clone(),
                    style: method_style(l),
                    points: (shots.iter())
                        .map(|&k| {
                            let v = value(summary, l, &spec.datasets, k);
                            (k as f64, v.map_or(f64::NAN, f64::from))
                        })
                        .collect(),
                })
                .collect(),
            markers: (labels.iter())
                .filter_map(|l| {
                    let points: Vec<(f64, f64)> = (shots.iter())
                        .filter_map(|&k| {
                            published_value(published, l, &spec.datasets, k)
                                .map(|v| (k as f64, f64::from(v)))
                        })
                        .collect();
                    (!points.is_empty()).then(|| Markers {
                        colour: method_style(l).colour,
                        points,
                    })
                })
                .collect(),
        })
        .collect();
    LineChart {
        columns: panels.len().min(MAX_COLUMNS),
        panels,
        x_scale: XScale::Log2,
        x_ticks: shot_ticks(shots),
        x_label: "shots per class".into(),
        y_label: ACCURACY_Y.into(),
        markers_label: published_label.into(),
    }
}

/// The lines of the paper's Fig. 2 among `labels`: zero-shot, the linear probe, CoOp and
/// CLIP-Adapter with their default options; all of `labels` when none of them is there.
pub(super) fn paper_methods(labels: &[String]) -> Vec<String> {
    let paper = [ZERO_SHOT, LINEAR_PROBE, COOP, CLIP_ADAPTER].map(MethodKind::name);
    let found: Vec<String> = (labels.iter())
        .filter(|l| paper.contains(&l.as_str()))
        .cloned()
        .collect();
    match found.is_empty() {
        true => labels.to_vec(),
        false => found,
    }
}

/// Every method ranked by its mean test accuracy over the datasets at the largest shot count
/// where all of them have rows, with its gain over zero-shot (Markdown).
pub(super) fn ranking(summary: &Summary, labels: &[String]) -> String {
    let datasets = summary.datasets();
    let at = |k: usize| -> Vec<(String, f32)> {
        (labels.iter())
            .filter_map(|l| Some((l.clone(), summary.average(l, datasets, k)?)))
            .collect()
    };
    let Some((k, mut ranked)) = (summary.shots().iter().rev())
        .map(|&k| (k, at(k)))
        .find(|(_, r)| r.len() > 1)
    else {
        return String::new();
    };
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let zero = ranked
        .iter()
        .find(|(l, _)| l == ZERO_SHOT.name())
        .map(|r| r.1);
    let over = match datasets.len() {
        1 => datasets[0].clone(),
        n => format!("the mean over {n} datasets"),
    };
    let mut md = format!(
        "\nEvery method at {k} shots, ranked by test accuracy on {over} (mean over seeds, %):\n\n\
         | rank | method | accuracy | vs zero-shot |\n|---:|---|---:|---:|\n"
    );
    for (i, (label, acc)) in ranked.iter().enumerate() {
        let gain = zero.map_or("–".to_string(), |z| format!("{:+.2}", acc - z));
        md.push_str(&format!("| {} | {label} | {acc:.2} | {gain} |\n", i + 1));
    }
    md
}

/// The gain of `label` over zero-shot on one dataset at the largest shot count both have.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Gain {
    pub dataset: String,
    pub shots: usize,
    pub zero_shot: f32,
    pub method: f32,
}

impl Gain {
    pub fn gain(&self) -> f32 {
        self.method - self.zero_shot
    }
}

/// The gains of `label` over zero-shot per dataset, largest first.
pub(super) fn gains(summary: &Summary, label: &str) -> Vec<Gain> {
    let zero_shot = ZERO_SHOT.name();
    let mut out: Vec<Gain> = (summary.datasets().iter())
        .filter_map(|d| {
            summary.shots().iter().rev().find_map(|&k| {
                let z = summary.cell(zero_shot, d, k)?.0;
                let m = summary.cell(label, d, k)?.0;
                Some(Gain {
                    dataset: d.clone(),
                    shots: k,
                    zero_shot: z,
                    method: m,
                })
            })
        })
        .collect();
    // Stable, so equal gains keep the datasets' order.
    out.sort_by(|a, b| b.gain().total_cmp(&a.gain()));
    out
}

pub(super) fn gain_chart(gains: &[Gain], label: &str) -> BarChart {
    let top = gains.iter().map(|g| g.shots).max().unwrap_or(0);
    let colour = method_style(label).colour;
    BarChart {
        title: format!("{label}: gain over zero-shot CLIP ({top}-shot)"),
        bars: (gains.iter())
            .map(|g| Bar {
                label: if g.shots == top {
                    g.dataset.clone()
                } else {
                    format!("{} ({}-shot)", g.dataset, g.shots)
                },
                value: f64::from(g.gain()),
                text: format!("{:+.2}", g.gain()),
                colour: if g.gain() < 0.0 {
                    faint(INK, 0.5)
                } else {
                    colour
                },
            })
            .collect(),
        x_label: "accuracy gain (percentage points)".into(),
    }
}

/// The CLIP-Adapter variants among `labels`: visual, text and both, in that order, as the demo
/// (`clip-adapter-text`) or `run` (`clip-adapter (branch=text)`) names them.
pub(super) fn variants(labels: &[String]) -> Vec<String> {
    let ca = CLIP_ADAPTER.name();
    let names = |branch: &str| [format!("{ca}-{branch}"), format!("{ca} (branch={branch})")];
    let mut out = Vec::new();
    for (branch, default) in [("visual", true), ("text", false), ("both", false)] {
        let found =
            (labels.iter()).find(|l| (default && l.as_str() == ca) || names(branch).contains(l));
        if let Some(l) = found {
            out.push(l.clone());
        }
    }
    out
}

/// The ablation of `found`: accuracy against the swept value, a panel per shot count, a line
/// per dataset and their mean.
pub(super) fn ablation_chart(found: &FoundSweep, rows: &[ResultRow]) -> LineChart {
    let ca = CLIP_ADAPTER.name();
    let mine: Vec<&ResultRow> = (rows.iter())
        .filter(|r| r.method == ca && found.options.contains(&r.options))
        .collect();
    let mut datasets: Vec<String> = Vec::new();
    let mut shots: Vec<usize> = Vec::new();
    for r in &mine {
        if !datasets.contains(&r.dataset) {
            datasets.push(r.dataset.clone());
        }
        if !shots.contains(&r.shots) {
            shots.push(r.shots);
        }
    }
    shots.sort_unstable();
    let (xs, x_scale, x_label): (Vec<f64>, _, _) = match &found.sweep {
        Sweep::Reduction(v) => (
            v.iter().map(|&r| r as f64).collect(),
            XScale::Log2,
            "bottleneck (hidden width D/r)",
        ),
        Sweep::Alpha(v) => (
            v.iter().map(|&a| f64::from(a)).collect(),
            XScale::Linear,
            "residual ratio α (fixed)",
        ),
    };
    let panels = (shots.iter())
        .map(|&k| {
            let line = |i: usize, d: &String| (xs[i], found.cell(rows, i, d, k));
            let mut lines: Vec<Line> = (datasets.iter().enumerate())
                .map(|(j, d)| Line {
                    label: d.clone(),
                    style: SeriesStyle {
                        colour: palette(j),
                        dashed: false,
                    },
                    points: (0..xs.len())
                        .map(|i| {
                            let (x, y) = line(i, d);
                            (x, y.map_or(f64::NAN, f64::from))
                        })
                        .collect(),
                })
                .collect();
            if datasets.len() > 1 {
                lines.push(Line {
                    label: "mean over datasets".into(),
                    style: SeriesStyle {
                        colour: INK,
                        dashed: false,
                    },
                    points: (0..xs.len())
                        .map(|i| {
                            let v: Option<Vec<f32>> =
                                datasets.iter().map(|d| line(i, d).1).collect();
                            let mean = v.map(|v| v.iter().sum::<f32>() / v.len() as f32);
                            (xs[i], mean.map_or(f64::NAN, f64::from))
                        })
                        .collect(),
                });
            }
            LinePanel {
                title: format!("CLIP-Adapter, {k}-shot"),
                lines,
                markers: Vec::new(),
            }
        })
        .collect::<Vec<_>>();
    LineChart {
        columns: panels.len().min(MAX_COLUMNS),
        panels,
        x_scale,
        x_ticks: (0..xs.len())
            .map(|i| (xs[i], found.sweep.display(i)))
            .collect(),
        x_label: x_label.into(),
        y_label: ACCURACY_Y.into(),
        markers_label: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn variants_are_found_in_both_namings_in_paper_order() {
        let demo = strings(&["zero-shot", "clip-adapter-both", "clip-adapter", "coop"]);
        assert_eq!(
            variants(&demo),
            strings(&["clip-adapter", "clip-adapter-both"])
        );
        let run = strings(&[
            "clip-adapter (branch=text)",
            "clip-adapter (branch=visual)",
            "clip-adapter (reduction=8)",
        ]);
        assert_eq!(
            variants(&run),
            strings(&["clip-adapter (branch=visual)", "clip-adapter (branch=text)"])
        );
    }

    #[test]
    fn gains_use_the_largest_shot_count_both_methods_have_and_are_sorted() {
        let row = |method: &str, dataset: &str, shots: usize, acc: f32| ResultRow {
            method: method.into(),
            options: String::new(),
            dataset: dataset.into(),
            shots,
            seed: 1,
            validation: Default::default(),
            model: "m".into(),
            model_name: "m".into(),
            features: "f".into(),
            val_accuracy: acc,
            test_accuracy: acc,
            train_seconds: 0.0,
            chosen: String::new(),
            augmentation: String::new(),
            protocol: Default::default(),
            new_accuracy: None,
            source_dataset: String::new(),
        };
        let rows = vec![
            row("zero-shot", "a", 16, 50.0),
            row("clip-adapter", "a", 16, 49.0),
            row("zero-shot", "b", 8, 30.0),
            row("zero-shot", "b", 16, 30.0),
            row("clip-adapter", "b", 8, 40.0),
        ];
        let g = gains(&Summary::new(&rows), "clip-adapter");
        assert_eq!(g.len(), 2);
        assert_eq!(
            (g[0].dataset.as_str(), g[0].shots, g[0].gain()),
            ("b", 8, 10.0)
        );
        assert_eq!((g[1].dataset.as_str(), g[1].gain()), ("a", -1.0));
        let chart = gain_chart(&g, "clip-adapter");
        assert_eq!(chart.bars[0].label, "b (8-shot)");
        assert_eq!(chart.bars[1].text, "-1.00");

        // The ranking: at 8 shots, the largest count where both datasets have rows of two
        // methods; best first, with the gain over zero-shot.
        let labels = strings(&["zero-shot", "clip-adapter", "tip-adapter"]);
        let mut rows = rows;
        rows.extend([
            row("zero-shot", "a", 8, 50.0),
            row("clip-adapter", "a", 8, 52.0),
        ]);
        let md = ranking(&Summary::new(&rows), &labels);
        assert!(md.contains("Every method at 8 shots"), "{md}");
        let clip_adapter = md.find("| 1 | clip-adapter | 46.00 | +6.00 |");
        assert!(clip_adapter.is_some(), "{md}");
        assert!(md.contains("| 2 | zero-shot | 40.00 | +0.00 |"), "{md}");
        assert_eq!(
            paper_methods(&labels),
            strings(&["zero-shot", "clip-adapter"])
        );
        assert_eq!(paper_methods(&strings(&["gda"])), strings(&["gda"]));
    }
}
