//! The demo's report: the experiment's rows, the close/far grouping of the world's tasks and
//! the α CLIP-Adapter chose, handed to the report every results folder gets
//! ([`crate::report`]: the same tables and figures as `run`'s).

use std::collections::BTreeMap;

use super::run::{
    BASE_TO_NEW_TASK, CLIP_LOGIT_SCALE, DEMO_COOP_CTX_INIT, DEMO_COOP_EPOCHS, DEMO_COOP_LR,
    DEMO_COOP_N_CTX, DEMO_LORA_ITERS_PER_SHOT, DEMO_LORA_LR, LORA_TASKS,
};
use super::tsne::DemoTsne;
use crate::experiment::row::to_csv;
use crate::experiment::{Protocol, ResultRow, Summary};
use crate::methods::registry::CLIP_ADAPTER;
use crate::report::{DatasetGroup, Report, ReportOptions};
use crate::world::tasks::Gap;

/// A method's base-to-new accuracies (%), means over seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BaseNew {
    pub base: f32,
    pub new: f32,
    /// The harmonic mean of `base` and `new`.
    pub h: f32,
}

/// Everything the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// One row per fit; `dataset` is the task, `method` the demo's method label.
    pub rows: Vec<ResultRow>,
    /// `(name, gap, description)` of each task run.
    pub tasks: Vec<(String, Gap, String)>,
    /// `(name, description)` of each target of the domain run (none when it did not run).
    pub domain_targets: Vec<(String, String)>,
    pub shots: Vec<usize>,
    pub methods: Vec<String>,
    pub seconds: f64,
    /// The t-SNE of one far task before and after the adapter (none when no far task ran).
    pub tsne: Option<DemoTsne>,
    /// The model's logit scale, which set CLIP-Adapter's learning rate.
    pub logit_scale: f32,
}

impl DemoReport {
    /// The rows of the few-shot protocol (the grid and the ablations).
    pub fn few_shot_rows(&self) -> Vec<ResultRow> {
        (self.rows.iter())
            .filter(|r| r.protocol == Protocol::FewShot)
            .cloned()
            .collect()
    }

    /// Mean and standard deviation of few-shot test accuracy over seeds.
    pub fn cell(&self, task: &str, method: &str, shots: usize) -> Option<(f32, f32)> {
        Summary::new(&self.few_shot_rows()).cell(method, task, shots)
    }

    /// Base-to-new: the mean over seeds of a method's base and new accuracy, and their
    /// harmonic mean (CoCoOp's H).
    pub fn base_to_new(&self, method: &str) -> Option<BaseNew> {
        let of: Vec<&ResultRow> = (self.rows.iter())
            .filter(|r| r.protocol == Protocol::BaseToNew && r.method == method)
            .collect();
        let mean = |v: Vec<f32>| (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32);
        let base = mean(of.iter().map(|r| r.test_accuracy).collect())?;
        let new = mean(of.iter().filter_map(|r| r.new_accuracy).collect())?;
        Some(BaseNew {
            base,
            new,
            h: 2.0 * base * new / (base + new),
        })
    }

    /// Domain generalisation: a method's mean test accuracy over seeds on `dataset` (the
    /// source or a target).
    pub fn domain(&self, method: &str, dataset: &str) -> Option<f32> {
        let v: Vec<f32> = (self.rows.iter())
            .filter(|r| r.protocol == Protocol::Domain && r.method == method)
            .filter(|r| r.dataset == dataset)
            .map(|r| r.test_accuracy)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
    }

    fn tasks_of(&self, gap: Gap) -> Vec<String> {
        (self.tasks.iter())
            .filter(|(_, g, _)| *g == gap)
            .map(|(t, _, _)| t.clone())
            .collect()
    }

    /// Mean test accuracy of a method at `shots` over the tasks of one gap (those that have it).
    pub fn gap_mean(&self, gap: Gap, method: &str, shots: usize) -> Option<f32> {
        let summary = Summary::new(&self.few_shot_rows());
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
            // The main grid's row: the ablations' CLIP-Adapter rows carry their swept option.
            .filter(|r| {
                r.dataset == task
                    && r.protocol == Protocol::FewShot
                    && r.method == CLIP_ADAPTER.name()
                    && r.options.is_empty()
                    && r.shots == top
            })
        {
            if let Some(a) = r.chosen.split(' ').find_map(|kv| kv.strip_prefix("alpha=")) {
                *counts.entry(a.to_string()).or_default() += 1;
            }
        }
        counts.into_iter().max_by_key(|(_, n)| *n).map(|(a, _)| a)
    }

    /// Every fit, one CSV line each: the columns of `clip-adapter run`'s results.csv.
    pub fn csv(&self) -> Result<String, csv::Error> {
        let bytes = to_csv(&self.rows)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// What the report adds to the rows: task titles and headings with their gap, the means
    /// over the close, the far and all tasks, and the notes on the α chosen and the settings.
    pub fn report_options(&self) -> ReportOptions {
        let mut groups = Vec::new();
        for gap in [Gap::Close, Gap::Far] {
            let tasks = self.tasks_of(gap);
            if !tasks.is_empty() && self.tasks.len() > 1 {
                groups.push(DatasetGroup {
                    title: format!("mean {}", gap.as_str()),
                    heading: format!("Mean over the {} tasks ({})", gap.as_str(), tasks.len()),
                    datasets: tasks,
                });
            }
        }
        if self.tasks.len() > 1 {
            let all: Vec<String> = self.tasks.iter().map(|(t, _, _)| t.clone()).collect();
            groups.push(DatasetGroup {
                title: "mean all".into(),
                heading: format!("Mean over all {} tasks", all.len()),
                datasets: all,
            });
        }
        ReportOptions {
            titles: (self.tasks.iter())
                .map(|(t, gap, _)| (t.clone(), format!("{t} ({})", gap.as_str())))
                .collect(),
            headings: (self.tasks.iter())
                .map(|(t, gap, about)| (t.clone(), format!("{t} ({} — {about})", gap.as_str())))
                .collect(),
            groups,
            notes: self.notes(),
            ..ReportOptions::default()
        }
    }

    /// The report's Markdown (what `report.md` holds).
    pub fn markdown(&self) -> String {
        Report::new(&self.rows, &self.report_options()).markdown
    }

    /// The α CLIP-Adapter chose, and how the learning rates were set.
    fn notes(&self) -> String {
        let mut s = String::from(
            "## Settings
",
        );
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
        if let Some(t) = &self.tsne {
            s.push_str(&t.markdown());
        }
        if self.rows.iter().any(|r| r.protocol == Protocol::BaseToNew) {
            s.push_str(&format!(
                "\nBase-to-new on `{BASE_TO_NEW_TASK}`: CoCoOp's split of its classes in label \
                 order, the first half trains (the base classes, the backgrounds pretraining \
                 knew), the second half (the held-out texture family, never drawn nor named) is \
                 tested without a single training image; the methods that can score a class \
                 from its name.\n"
            ));
        }
        if !self.domain_targets.is_empty() {
            s.push_str(
                "\nDomain generalisation: trained on the source's draw, tested unchanged on its \
                 classes drawn in other domains:\n\n",
            );
            for (name, about) in &self.domain_targets {
                s.push_str(&format!("- `{name}`: {about}\n"));
            }
        }
        if self
            .rows
            .iter()
            .any(|r| r.method == crate::methods::clip_lora::CARD.name)
        {
            s.push_str(&format!(
                "\nCLIP-LoRA: our demo-sized setting, at the largest shot count on {} only, \
                 its rank-2 updates of q, k, v in the text tower only (the model's image tower \
                 is a ResNet, which has no attention to adapt: the images go through it frozen, \
                 freshly cropped at every step), {DEMO_LORA_ITERS_PER_SHOT} steps per shot (the \
                 reference's: 500) at AdamW rate {DEMO_LORA_LR} (the reference's: 2e-4).\n",
                LORA_TASKS.map(|t| format!("`{t}`")).join(" and ")
            ));
        }
        if self.methods.iter().any(|m| m == "coop") {
            s.push_str(&format!(
                "\nCoOp: our demo-sized setting, {DEMO_COOP_EPOCHS} epochs at every shot count \
                 (CoOp's own: 50-200), its {DEMO_COOP_N_CTX} context vectors started from \
                 \"{DEMO_COOP_CTX_INIT}\" (the model's context is 24 tokens), SGD rate \
                 {DEMO_COOP_LR} (CoOp's: 0.002) scaled as CLIP-Adapter's.\n"
            ));
        }
        s
    }
}
