//! The demo: the paper's whole protocol, offline, on the embedded world model.
//!
//! It writes the world's downstream tasks in CoOp's layout, encodes every image once with the
//! model, draws CoOp's K-shot splits with the real sampler, fits every method of
//! [`crate::methods`] on them and tabulates test accuracy (mean ± std over seeds) per task,
//! method and shot count, as Markdown and CSV, and plots it against shots ([`DemoReport::plot`]).

mod plot;

pub use plot::{PANEL_H, PANEL_W};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::clip::model::transformer::l2_normalize;
use crate::clip::{Clip, ModelFiles};
use crate::data::{prompt_name, Dataset, FewShot, Sample};
use crate::error::Error;
use crate::methods::clip_adapter::{AdapterOptions, Branch};
use crate::methods::gda::GdaOptions;
use crate::methods::linear_probe::LinearProbeOptions;
use crate::methods::tip_adapter::TipOptions;
use crate::methods::MethodError;
use crate::methods::{self, eval, FewShotTask, LabelledSet, Matrix, Method, TextClassifier};
use crate::world::tasks::{demo_tasks, load_task, write_task, Gap, TaskSizes, TaskSpec};
use plot::{Colour, Figure, Panel, Series};

/// What can stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Clip(#[from] Box<Error>),
    #[error("unknown demo task `{task}` (tasks: {known})")]
    UnknownTask { task: String, known: String },
    #[error("{method} on {task} ({shots}-shot, seed {seed}): {source}")]
    Method {
        task: String,
        method: String,
        shots: usize,
        seed: u64,
        source: Box<MethodError>,
    },
}

impl From<Error> for DemoError {
    fn from(e: Error) -> Self {
        DemoError::Clip(Box::new(e))
    }
}

impl From<candle_core::Error> for DemoError {
    fn from(e: candle_core::Error) -> Self {
        DemoError::Clip(Box::new(e.into()))
    }
}

impl From<crate::data::DataError> for DemoError {
    fn from(e: crate::data::DataError) -> Self {
        DemoError::Clip(Box::new(e.into()))
    }
}

type Result<T> = std::result::Result<T, DemoError>;

/// The embedded model, relative to the crate root.
pub const EMBEDDED_MODEL: &str = "assets/tiny-world-clip";

/// The embedded model's files, compiled into the binary so that `clip-adapter demo` works from
/// anywhere, without the source tree.
const EMBEDDED_FILES: [(&str, &[u8]); 3] = [
    (
        "config.json",
        include_bytes!("../../assets/tiny-world-clip/config.json"),
    ),
    (
        "model.safetensors",
        include_bytes!("../../assets/tiny-world-clip/model.safetensors"),
    ),
    (
        "tokenizer.json",
        include_bytes!("../../assets/tiny-world-clip/tokenizer.json"),
    ),
];

/// A directory holding the embedded model: its files are written once (atomically) to a folder
/// of the system's temp dir named after their content, and reused by later runs.
pub fn embedded_model_dir() -> PathBuf {
    // Named after the files' content: a changed model gets a new folder rather than stale files.
    let hash = EMBEDDED_FILES
        .iter()
        .fold(crate::hash::FNV1A64_OFFSET, |h, (_, bytes)| {
            crate::hash::fnv1a64_extend(h, bytes)
        });
    let dir = std::env::temp_dir().join(format!("clip-adapter-tiny-world-clip-{hash:016x}"));
    let materialize = || -> std::result::Result<(), Error> {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        for (name, bytes) in EMBEDDED_FILES {
            let path = dir.join(name);
            if std::fs::metadata(&path).map(|m| m.len() as usize).ok() != Some(bytes.len()) {
                crate::fsutil::write_atomic(&path, bytes)?;
            }
        }
        Ok(())
    };
    match materialize() {
        Ok(()) => dir,
        // An unwritable temp dir: fall back to the source tree's copy (a missing one is then
        // reported by the model loader, naming the directory).
        Err(_) => Path::new(env!("CARGO_MANIFEST_DIR")).join(EMBEDDED_MODEL),
    }
}

/// Visual-adapter ratios searched on validation (the paper's α).
pub const ALPHAS: [f32; 4] = [0.2, 0.4, 0.6, 0.8];

/// A method as the demo labels it.
#[derive(Debug, Clone)]
pub struct DemoMethod {
    pub label: String,
    pub method: Method,
}

/// The full method list: zero-shot, linear probe, CLIP-Adapter (visual with α searched,
/// text, both), Tip-Adapter(-F), GDA.
pub fn all_methods() -> Vec<DemoMethod> {
    let adapter = |branch, search: Vec<f32>| AdapterOptions {
        branch,
        search,
        ..AdapterOptions::default()
    };
    let m = |label: &str, method| DemoMethod {
        label: label.into(),
        method,
    };
    vec![
        m("zero-shot", Method::ZeroShot),
        m(
            "linear-probe",
            Method::LinearProbe(LinearProbeOptions::default()),
        ),
        m(
            "clip-adapter",
            Method::ClipAdapter(adapter(Branch::Visual, ALPHAS.to_vec())),
        ),
        m(
            "clip-adapter-text",
            Method::ClipAdapter(adapter(Branch::Text, Vec::new())),
        ),
        m(
            "clip-adapter-both",
            Method::ClipAdapter(adapter(Branch::Both, Vec::new())),
        ),
        m("tip-adapter", Method::TipAdapter(TipOptions::default())),
        m("tip-adapter-f", Method::TipAdapterF(TipOptions::default())),
        m("gda", Method::Gda(GdaOptions::default())),
    ]
}

/// The line style of a method in [`DemoReport::plot`]: zero-shot is the dashed dark reference,
/// every other method keeps one colour in every panel (and across runs).
pub fn method_style(label: &str) -> (Colour, bool) {
    let colour = match label {
        "zero-shot" => return ([40, 40, 40], true),
        "linear-probe" => [140, 86, 75],
        "clip-adapter" => [214, 39, 40],
        "clip-adapter-text" => [255, 127, 14],
        "clip-adapter-both" => [148, 103, 189],
        "tip-adapter" => [23, 190, 207],
        "tip-adapter-f" => [31, 119, 180],
        "gda" => [44, 160, 44],
        // Another method: a colour that depends on its name only.
        other => {
            let spare: [Colour; 3] = [[227, 119, 194], [188, 189, 34], [127, 127, 127]];
            spare[other.bytes().map(usize::from).sum::<usize>() % spare.len()]
        }
    };
    (colour, false)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub model_dir: PathBuf,
    /// Tasks are written under `out/tasks`, reports into `out`.
    pub out: PathBuf,
    pub shots: Vec<usize>,
    pub seeds: Vec<u64>,
    pub sizes: TaskSizes,
    /// Task names to run (empty: all).
    pub tasks: Vec<String>,
    pub methods: Vec<DemoMethod>,
    /// Seed of the generated task images.
    pub world_seed: u64,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            model_dir: embedded_model_dir(),
            out: PathBuf::from("clip-adapter-demo"),
            shots: vec![1, 2, 4, 8, 16],
            seeds: vec![1, 2, 3],
            sizes: TaskSizes::default(),
            tasks: Vec::new(),
            methods: all_methods(),
            world_seed: 2021,
        }
    }
}

/// Progress of [`run_demo`].
#[derive(Debug, Clone, PartialEq)]
pub enum DemoEvent {
    TaskReady { task: String, images: usize },
    Fitted { done: usize, total: usize },
}

/// One fit: test (and validation) accuracy in percent.
#[derive(Debug, Clone, PartialEq)]
pub struct DemoRow {
    pub task: String,
    pub gap: Gap,
    pub method: String,
    pub shots: usize,
    pub seed: u64,
    pub val: f32,
    pub test: f32,
    /// Hyper-parameters chosen on validation (`name=value`, comma-separated).
    pub chosen: String,
}

/// Everything the demo measured.
#[derive(Debug, Clone)]
pub struct DemoReport {
    pub rows: Vec<DemoRow>,
    pub tasks: Vec<(String, Gap, String)>,
    pub shots: Vec<usize>,
    pub methods: Vec<String>,
    pub seconds: f64,
    /// The model's logit scale, which set CLIP-Adapter's learning rate (see `for_draw`).
    pub logit_scale: f32,
}

/// Encoded images of one task, in split order.
struct Encoded {
    train: Matrix,
    val: Matrix,
    test: Matrix,
}

fn to_matrix(t: &Tensor) -> Result<Matrix> {
    let (rows, cols) = t.dims2()?;
    Ok(Matrix {
        rows,
        cols,
        data: t.flatten_all()?.to_vec1::<f32>()?,
    })
}

fn encode_split(clip: &Clip, d: &Dataset, samples: &[Sample]) -> Result<Matrix> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| d.path(s)).collect();
    let t = crate::encode::encode_image_files(clip, &paths, 256, &mut |_, _| {})?;
    to_matrix(&t)
}

fn text_classifier(clip: &Clip, d: &Dataset) -> Result<TextClassifier> {
    let prompts: Vec<String> = d
        .classnames
        .iter()
        .map(|c| crate::world::PROMPT.replace("{}", &prompt_name(c)))
        .collect();
    let w = l2_normalize(&clip.encode_text(&prompts)?)?;
    Ok(TextClassifier {
        weights: to_matrix(&w)?,
        logit_scale: clip.logit_scale(),
    })
}

fn rows_of(m: &Matrix, idx: &[usize]) -> Matrix {
    let mut data = Vec::with_capacity(idx.len() * m.cols);
    for &i in idx {
        data.extend_from_slice(&m.data[i * m.cols..(i + 1) * m.cols]);
    }
    Matrix {
        rows: idx.len(),
        cols: m.cols,
        data,
    }
}

fn labelled(m: &Matrix, samples: &[Sample], idx: &[usize]) -> LabelledSet {
    LabelledSet {
        features: rows_of(m, idx),
        labels: idx.iter().map(|&i| samples[i].label).collect(),
    }
}

/// The few-shot task of one CoOp draw, from features encoded once.
fn draw_task(
    d: &Dataset,
    enc: &Encoded,
    text: &TextClassifier,
    shots: usize,
    seed: u64,
) -> Result<FewShotTask> {
    let draw = FewShot::coop(d, shots, seed as i64)?;
    let all_test: Vec<usize> = (0..d.test.len()).collect();
    Ok(FewShotTask {
        classnames: d.classnames.clone(),
        train: labelled(&enc.train, &d.train, &draw.train),
        train_views: Vec::new(),
        val: labelled(&enc.val, &d.val, &draw.val),
        test: labelled(&enc.test, &d.test, &all_test),
        text: text.clone(),
    })
}

fn selected(o: &DemoOptions) -> Result<Vec<TaskSpec>> {
    let all = demo_tasks();
    if let Some(bad) = o
        .tasks
        .iter()
        .find(|t| !all.iter().any(|s| s.name == t.as_str()))
    {
        let names: Vec<&str> = all.iter().map(|s| s.name).collect();
        return Err(DemoError::UnknownTask {
            task: bad.clone(),
            known: names.join(", "),
        });
    }
    Ok(all
        .into_iter()
        .filter(|s| o.tasks.is_empty() || o.tasks.iter().any(|t| t == s.name))
        .collect())
}

/// Runs the demo; writes nothing but the task images (the caller writes the reports).
pub fn run_demo(o: &DemoOptions, progress: &mut dyn FnMut(DemoEvent)) -> Result<DemoReport> {
    let started = Instant::now();
    let clip = Clip::load(&ModelFiles::in_dir(&o.model_dir)?, &Device::Cpu)?;
    let specs = selected(o)?;
    let mut prepared = Vec::new();
    for spec in &specs {
        let split = write_task(spec, &o.out.join("tasks"), o.world_seed, o.sizes)?;
        let d = load_task(&split, spec.name)?;
        let enc = Encoded {
            train: encode_split(&clip, &d, &d.train)?,
            val: encode_split(&clip, &d, &d.val)?,
            test: encode_split(&clip, &d, &d.test)?,
        };
        let text = text_classifier(&clip, &d)?;
        progress(DemoEvent::TaskReady {
            task: spec.name.into(),
            images: d.train.len() + d.val.len() + d.test.len(),
        });
        prepared.push((spec, d, enc, text));
    }
    let total = prepared.len() * o.shots.len() * o.seeds.len() * o.methods.len();
    let mut rows = Vec::with_capacity(total);
    for (spec, d, enc, text) in &prepared {
        for &shots in &o.shots {
            for &seed in &o.seeds {
                let task = draw_task(d, enc, text, shots, seed)?;
                for m in &o.methods {
                    let method = for_draw(&m.method, seed, clip.logit_scale());
                    let fitted = methods::fit(&method, &task, &mut |_| {}).map_err(|source| {
                        DemoError::Method {
                            task: spec.name.into(),
                            method: m.label.clone(),
                            shots,
                            seed,
                            source: Box::new(source),
                        }
                    })?;
                    let (val, test) = methods::evaluate(&fitted.head, &task);
                    let chosen = fitted
                        .chosen
                        .iter()
                        .map(|(k, v)| format!("{k}={v}"))
                        .collect::<Vec<_>>()
                        .join(",");
                    rows.push(DemoRow {
                        task: spec.name.into(),
                        gap: spec.gap,
                        method: m.label.clone(),
                        shots,
                        seed,
                        val,
                        test,
                        chosen,
                    });
                    progress(DemoEvent::Fitted {
                        done: rows.len(),
                        total,
                    });
                }
            }
        }
    }
    Ok(DemoReport {
        rows,
        tasks: specs
            .iter()
            .map(|s| (s.name.to_string(), s.gap, s.about.to_string()))
            .collect(),
        shots: o.shots.clone(),
        methods: o.methods.iter().map(|m| m.label.clone()).collect(),
        seconds: started.elapsed().as_secs_f64(),
        logit_scale: clip.logit_scale(),
    })
}

/// The logit scale CLIP's checkpoints end with, for which the protocol's learning rates
/// were tuned.
const CLIP_LOGIT_SCALE: f32 = 100.0;

/// The method for one draw: its training seed set to the draw's, as the paper's 3-seed
/// protocol does, and CLIP-Adapter's SGD learning rate multiplied by
/// `CLIP_LOGIT_SCALE / logit_scale`.
///
/// The adapter's gradients are proportional to the logit scale, so on a model whose
/// temperature stopped at 22 (the shipped world model) the protocol's 0.002 would take
/// steps 4.5× shorter than on CLIP, and the adapter would barely move in CoOp's epochs;
/// the rescaled rate takes CLIP's steps. On CLIP itself it is the protocol's rate.
/// Tip-Adapter-F trains with AdamW, whose steps do not depend on the gradients' scale.
fn for_draw(m: &Method, seed: u64, logit_scale: f32) -> Method {
    match m {
        Method::ClipAdapter(o) => Method::ClipAdapter(AdapterOptions {
            seed,
            lr: o.lr * CLIP_LOGIT_SCALE / logit_scale,
            ..o.clone()
        }),
        Method::TipAdapterF(o) => Method::TipAdapterF(TipOptions { seed, ..o.clone() }),
        other => other.clone(),
    }
}

impl DemoReport {
    /// Mean and standard deviation of test accuracy over seeds.
    pub fn cell(&self, task: &str, method: &str, shots: usize) -> Option<(f32, f32)> {
        let v: Vec<f32> = self
            .rows
            .iter()
            .filter(|r| r.task == task && r.method == method && r.shots == shots)
            .map(|r| r.test)
            .collect();
        (!v.is_empty()).then(|| eval::mean_std(&v))
    }

    /// Mean test accuracy of a method at `shots` over the tasks of one gap.
    pub fn gap_mean(&self, gap: Gap, method: &str, shots: usize) -> Option<f32> {
        let v: Vec<f32> = self
            .tasks
            .iter()
            .filter(|(_, g, _)| *g == gap)
            .filter_map(|(t, _, _)| self.cell(t, method, shots).map(|c| c.0))
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f32>() / v.len() as f32)
    }

    /// The α chosen most often for the visual CLIP-Adapter at the largest shot count.
    pub fn best_alpha(&self, task: &str) -> Option<String> {
        let top = *self.shots.iter().max()?;
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for r in self
            .rows
            .iter()
            .filter(|r| r.task == task && r.method == "clip-adapter" && r.shots == top)
        {
            if let Some(a) = r.chosen.split(',').find_map(|kv| kv.strip_prefix("alpha=")) {
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

    /// Every fit, one CSV line each.
    pub fn csv(&self) -> String {
        let mut s = String::from("task,gap,method,shots,seed,val_acc,test_acc,chosen\n");
        for r in &self.rows {
            s.push_str(&format!(
                "{},{},{},{},{},{:.2},{:.2},\"{}\"\n",
                r.task,
                r.gap.as_str(),
                r.method,
                r.shots,
                r.seed,
                r.val,
                r.test,
                r.chosen
            ));
        }
        s
    }

    /// One table per task (methods × shots, mean ± std over seeds), then the close/far
    /// summary and the chosen α.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let header = |s: &mut String| {
            s.push_str("| method |");
            for k in &self.shots {
                s.push_str(&format!(" {k}-shot |"));
            }
            s.push_str("\n|---|");
            s.push_str(&"---:|".repeat(self.shots.len()));
            s.push('\n');
        };
        for (task, gap, about) in &self.tasks {
            s.push_str(&format!("### {task} ({} — {about})\n\n", gap.as_str()));
            header(&mut s);
            for m in &self.methods {
                s.push_str(&format!("| {m} |"));
                for &k in &self.shots {
                    match self.cell(task, m, k) {
                        Some((mean, std)) => s.push_str(&format!(" {mean:.1} ± {std:.1} |")),
                        None => s.push_str(" – |"),
                    }
                }
                s.push('\n');
            }
            s.push('\n');
        }
        s.push_str("### Mean over tasks\n\n| gap | method |");
        for k in &self.shots {
            s.push_str(&format!(" {k}-shot |"));
        }
        s.push_str("\n|---|---|");
        s.push_str(&"---:|".repeat(self.shots.len()));
        s.push('\n');
        for gap in [Gap::Close, Gap::Far] {
            for m in &self.methods {
                s.push_str(&format!("| {} | {m} |", gap.as_str()));
                for &k in &self.shots {
                    match self.gap_mean(gap, m, k) {
                        Some(v) => s.push_str(&format!(" {v:.1} |")),
                        None => s.push_str(" – |"),
                    }
                }
                s.push('\n');
            }
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
        s.push_str(&format!(
            "\n{} fits in {:.1} s.\n",
            self.rows.len(),
            self.seconds
        ));
        s
    }
}
