//! Running the demo: the world's tasks written in CoOp's layout, every image encoded once,
//! CoOp's K-shot draws with the real sampler, and every method fitted on them by the
//! experiment's grid.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::model::{embedded_model_dir, materialize_embedded_model};
use super::report::DemoReport;
use super::tsne::{demo_tsne, TSNE_TASK};
use crate::clip::error::Error;
use crate::clip::model::transformer::l2_normalize;
use crate::clip::train::lora::{LoraEncoder, LoraOptions};
use crate::clip::{Clip, ModelFiles};
use crate::data::{prompt_name, Dataset, FewShot, Sample};
use crate::experiment::sweep::{Sweep, SweepParam};
use crate::experiment::transfer::{run_transfer, Transfer};
use crate::experiment::Protocol;
use crate::experiment::{
    self, run_grid, ExperimentError, Grid, GridEvent, GridIo, GridMethod, MethodOverrides,
    ResultRow, RowSource,
};
use crate::features::{model_fingerprint, ContentHash};
use crate::methods::clip_adapter::{AdapterOptions, Branch};
use crate::methods::clip_lora::ClipLoraOptions;
use crate::methods::coop::CoopOptions;
use crate::methods::coop::PromptModel;
use crate::methods::pre_projection::{PreProjection, Projection};
use crate::methods::registry::{CLIP_ADAPTER, COOP};
use crate::methods::{
    DrawImages, FewShotTask, ImageContext, LabelledSet, Matrix, Method, MethodKind, TextClassifier,
};
use crate::world::tasks::{
    demo_domain_shift, demo_tasks, load_task, write_task, Gap, TaskSizes, TaskSpec,
};

/// What can stop the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Clip(#[from] Box<Error>),
    #[error(transparent)]
    Data(Box<crate::data::DataError>),
    #[error(transparent)]
    Features(Box<crate::features::FeatureError>),
    #[error("unknown demo task `{task}` (tasks: {known})")]
    UnknownTask { task: String, known: String },
    #[error(transparent)]
    Experiment(#[from] Box<ExperimentError>),
    #[error("the t-SNE of task `{task}`")]
    Tsne {
        task: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
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
        DemoError::Data(Box::new(e))
    }
}

impl From<crate::features::FeatureError> for DemoError {
    fn from(e: crate::features::FeatureError) -> Self {
        DemoError::Features(Box::new(e))
    }
}

impl From<ExperimentError> for DemoError {
    fn from(e: ExperimentError) -> Self {
        DemoError::Experiment(Box::new(e))
    }
}

type Result<T> = std::result::Result<T, DemoError>;

/// Visual-adapter ratios searched on validation (the paper's α).
pub const ALPHAS: [f32; 4] = [0.2, 0.4, 0.6, 0.8];

/// A method as the demo labels it.
#[derive(Debug, Clone)]
pub struct DemoMethod {
    pub label: String,
    /// The options its rows record (`alpha=0.4` for a point of an ablation; empty otherwise).
    pub options: String,
    pub method: Method,
}

/// The full method list: every registered method with its defaults, in the registry's
/// order, except CLIP-Adapter (visual with α searched, then the text and both-branch
/// variants), CoOp (demo-sized, [`demo_coop`]) and CLIP-LoRA, which the demo runs on a few
/// tasks only ([`lora_methods`]).
pub fn all_methods() -> Vec<DemoMethod> {
    let adapter = |label: &str, branch, search: Vec<f32>| DemoMethod {
        label: label.into(),
        options: String::new(),
        method: Method::new(AdapterOptions {
            branch,
            search,
            ..AdapterOptions::default()
        }),
    };
    let mut out = Vec::new();
    for &kind in MethodKind::all() {
        // Trained on the images through the model, the dearest fit by far: its own grid.
        if kind.card().needs == crate::methods::Needs::Images {
            continue;
        }
        if kind == CLIP_ADAPTER {
            out.push(adapter(kind.name(), Branch::Visual, ALPHAS.to_vec()));
            out.push(adapter("clip-adapter-text", Branch::Text, Vec::new()));
            out.push(adapter("clip-adapter-both", Branch::Both, Vec::new()));
            continue;
        }
        let method = if kind == COOP {
            Method::new(demo_coop())
        } else {
            kind.with_defaults()
        };
        out.push(DemoMethod {
            label: kind.name().into(),
            options: String::new(),
            method,
        });
    }
    out
}

/// The paper's two ablations of the visual CLIP-Adapter (Gao et al., 2021, Tables 1 and 2),
/// run by the demo at its largest shot count: the residual ratio α fixed at 0, 0.2, …, 1 (no
/// search), and the bottleneck width D/r for r = 1, …, 32 with α searched as in the main grid.
/// Each point is a CLIP-Adapter row whose options name the swept value, as `sweep` writes it.
pub fn ablation_methods() -> Vec<DemoMethod> {
    let bases = [
        (SweepParam::Alpha, MethodOverrides::default()),
        (
            SweepParam::Reduction,
            MethodOverrides {
                search: ALPHAS.to_vec(),
                ..MethodOverrides::default()
            },
        ),
    ];
    let mut out = Vec::new();
    for (param, base) in bases {
        let sweep = Sweep::paper(param);
        for (i, g) in sweep.grid_methods(&base).into_iter().enumerate() {
            out.push(DemoMethod {
                label: g.label,
                options: g.options,
                // The seed is the draw's, set per fit by `for_draw`.
                method: sweep.point(&base, i).method(CLIP_ADAPTER, "", 1),
            });
        }
    }
    out
}

/// CoOp's context vectors in the demo: the world model's context is 24 tokens, not CLIP's 77,
/// so CoOp's 16 would leave room for little else; 4 is the length of the world's prompt prefix
/// "a photo of a", the paper's shorter setting, from which they start ([`DEMO_COOP_CTX_INIT`]).
pub const DEMO_COOP_N_CTX: usize = 4;

/// The phrase CoOp's context starts from in the demo (CoOp's `CTX_INIT`, its `ctxv1`
/// configs): the world's zero-shot prompt prefix, so CoOp starts at zero-shot's classifier.
/// From a random context the demo's CoOp hardly moves in the steps it has (a few per epoch on
/// 4-11 classes × 16 shots in batches of 32, where CoOp's benchmarks have dozens): +1.9
/// points over zero-shot on the far tasks at 16 shots with 20 epochs, +1.9 with 50 epochs at
/// 5× the rate; from the prompt, +5.5 (docs/demo.md).
pub const DEMO_COOP_CTX_INIT: &str = "a photo of a";

/// CoOp's SGD rate in the demo before the logit-scale factor of [`for_draw`]: 5× CoOp's 0.002,
/// because the demo's short schedule (20 epochs of a few steps each) is 20-100× fewer steps than
/// CoOp's on its benchmarks.
pub const DEMO_COOP_LR: f32 = 0.01;

/// CoOp's epochs in the demo at every shot count, in place of CoOp's 50-200: every step runs
/// the text tower forward and backward, and the demo's grid must stay seconds long.
pub const DEMO_COOP_EPOCHS: usize = 20;

/// CoOp as the demo runs it, our own documented setting: the protocol's options (batch 32,
/// SGD with momentum 0.9, cosine schedule, one warm-up epoch) but for the context, which
/// starts from the zero-shot prompt, the rate and the epochs.
pub fn demo_coop() -> CoopOptions {
    CoopOptions {
        n_ctx: DEMO_COOP_N_CTX,
        ctx_init: Some(DEMO_COOP_CTX_INIT.to_string()),
        lr: DEMO_COOP_LR,
        epochs: Some(DEMO_COOP_EPOCHS),
        ..CoopOptions::default()
    }
}

/// CLIP-LoRA's steps per shot in the demo, in place of the reference's 500 (32 steps at 16
/// shots): every step decodes, crops and encodes a batch of images and runs the text tower
/// forward and backward, and the demo must stay seconds long. Measured with
/// `examples/lora_settings.rs` (docs/demo.md): 10 steps per shot at 0.002 gained as much over
/// zero-shot on the demo's CLIP-LoRA tasks for 5× the time.
pub const DEMO_LORA_ITERS_PER_SHOT: usize = 2;

/// CLIP-LoRA's AdamW rate in the demo: 50× the reference's 2e-4, for a schedule 250× shorter.
pub const DEMO_LORA_LR: f32 = 0.01;

/// CLIP-LoRA as the demo runs it, our own documented setting: the reference's rank, scaling,
/// dropout, matrices (q, k, v), batch and schedule shape, but the updates in the text tower
/// only (the world model's image tower is a ResNet, which has no attention blocks to adapt),
/// [`DEMO_LORA_ITERS_PER_SHOT`] steps per shot and [`DEMO_LORA_LR`].
pub fn demo_clip_lora() -> ClipLoraOptions {
    ClipLoraOptions {
        lora: LoraOptions {
            encoder: LoraEncoder::Text,
            ..LoraOptions::default()
        },
        lr: DEMO_LORA_LR,
        iters_per_shot: DEMO_LORA_ITERS_PER_SHOT,
        ..ClipLoraOptions::default()
    }
}

/// The methods the demo trains on the task images themselves: CLIP-LoRA in its demo-sized
/// setting ([`demo_clip_lora`]), fitted at the largest shot count on [`LORA_TASKS`].
pub fn lora_methods() -> Vec<DemoMethod> {
    vec![DemoMethod {
        label: crate::methods::clip_lora::CARD.name.into(),
        options: String::new(),
        method: Method::new(demo_clip_lora()),
    }]
}

/// The tasks the demo fits [`lora_methods`] on, at the largest shot count (when they are run):
/// a far task, where adaptation has the most to gain, and the base-to-new task, whose new
/// classes it then scores through its adapted text tower. Every step of a CLIP-LoRA fit
/// decodes, crops and encodes a batch of images and runs the text tower forward and backward:
/// the grid of every task, shot count and seed would more than double the demo's time.
pub const LORA_TASKS: [&str; 2] = ["new_colours", BASE_TO_NEW_TASK];

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
    /// Run [`ablation_methods`] at the largest shot count (empty: none).
    pub ablations: Vec<DemoMethod>,
    /// Run these ([`lora_methods`]) at the largest shot count on [`LORA_TASKS`] (empty: none),
    /// and under base-to-new when it runs.
    pub lora: Vec<DemoMethod>,
    /// Map the test set of one far task as zero-shot CLIP, CoOp, CLIP-Adapter with α = 1 and
    /// CLIP-Adapter score it (the paper's Fig. 5), when a far task is run.
    pub tsne: bool,
    /// At the largest shot count, also run base-to-new on [`BASE_TO_NEW_TASK`] (the methods
    /// that can score new classes) and domain generalisation from the source of
    /// [`demo_domain_shift`] to its shifted targets ([`DOMAIN_METHODS`]), each when its task
    /// is run.
    pub generalisation: bool,
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
            ablations: ablation_methods(),
            lora: lora_methods(),
            tsne: true,
            generalisation: true,
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

/// Encoded images of one task, in split order: projected, and before the projection (ProLIP).
struct Encoded {
    train: Matrix,
    val: Matrix,
    test: Matrix,
    pre: [Matrix; 3],
}

fn to_matrix(t: &Tensor) -> Result<Matrix> {
    let (rows, cols) = t.dims2()?;
    Ok(Matrix {
        rows,
        cols,
        data: t.flatten_all()?.to_vec1::<f32>()?,
    })
}

/// The split's projected features and those before the projection, from one forward pass.
fn encode_split(clip: &Clip, d: &Dataset, samples: &[Sample]) -> Result<(Matrix, Matrix)> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| d.path(s)).collect();
    let (pre, t) = crate::encode::encode_image_files_both(clip, &paths, 256, &mut |_, _| {})?;
    Ok((to_matrix(&t)?, to_matrix(&pre)?))
}

/// The zero-shot classifier of the world's one prompt, and the un-normalised prompt
/// embeddings (CLAP's zero-shot prototypes).
fn text_classifier(clip: &Clip, d: &Dataset) -> Result<(TextClassifier, Matrix)> {
    let prompts: Vec<String> = d
        .classnames
        .iter()
        .map(|c| crate::world::PROMPT.replace("{}", &prompt_name(c)))
        .collect();
    let raw = clip.encode_text(&prompts)?;
    let w = l2_normalize(&raw)?;
    Ok((
        TextClassifier {
            weights: to_matrix(&w)?,
            logit_scale: clip.logit_scale(),
            logit_bias: None,
        },
        to_matrix(&raw)?,
    ))
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
    (text, text_mean): &(TextClassifier, Matrix),
    projection: &Projection,
    shots: usize,
    seed: u64,
) -> Result<FewShotTask> {
    let draw = FewShot::coop(d, shots, seed as i64)?;
    let all_test: Vec<usize> = (0..d.test.len()).collect();
    let [pre_train, pre_val, pre_test] = &enc.pre;
    Ok(FewShotTask {
        text_mean: Some(text_mean.clone()),
        pre_projection: Some(Box::new(PreProjection {
            projection: projection.clone(),
            train: rows_of(pre_train, &draw.train),
            train_views: Vec::new(),
            val: rows_of(pre_val, &draw.val),
            test: rows_of(pre_test, &all_test),
        })),
        classnames: d.classnames.clone(),
        train: labelled(&enc.train, &d.train, &draw.train),
        train_views: Vec::new(),
        val: labelled(&enc.val, &d.val, &draw.val),
        test: labelled(&enc.test, &d.test, &all_test),
        text: text.clone(),
    })
}

/// The whole test set of a test-only task (a domain target), with no training images.
fn test_task(
    d: &Dataset,
    enc: &Encoded,
    (text, text_mean): &(TextClassifier, Matrix),
    projection: &Projection,
) -> FewShotTask {
    let all_test: Vec<usize> = (0..d.test.len()).collect();
    let none = LabelledSet {
        features: empty_like(&enc.train),
        labels: Vec::new(),
    };
    FewShotTask {
        text_mean: Some(text_mean.clone()),
        pre_projection: Some(Box::new(PreProjection {
            projection: projection.clone(),
            train: empty_like(&enc.pre[0]),
            train_views: Vec::new(),
            val: empty_like(&enc.pre[1]),
            test: rows_of(&enc.pre[2], &all_test),
        })),
        classnames: d.classnames.clone(),
        train: none.clone(),
        train_views: Vec::new(),
        val: none,
        test: labelled(&enc.test, &d.test, &all_test),
        text: text.clone(),
    }
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

/// The names of the demo's tasks, in order (for `--tasks`).
pub fn task_names() -> Vec<&'static str> {
    demo_tasks().iter().map(|t| t.name).collect()
}

/// What the demo's rows record about their features: the generated world and its prompt.
fn world_source(model_dir: &std::path::Path, o: &DemoOptions) -> Result<RowSource> {
    let files = ModelFiles::in_dir(model_dir)?;
    let mut h = ContentHash::default();
    h.field(b"clip-adapter demo world v1");
    h.update(&o.world_seed.to_le_bytes());
    for n in [o.sizes.train, o.sizes.val, o.sizes.test] {
        h.update(&(n as u64).to_le_bytes());
    }
    h.field(crate::world::PROMPT.as_bytes());
    Ok(RowSource {
        model: model_fingerprint(&files)?,
        model_name: model_dir.display().to_string(),
        features: h.hex(),
    })
}

/// The task the demo runs base-to-new on: its base classes are the four backgrounds
/// pretraining drew and named, its new ones the held-out texture family (wavy, brick, grid),
/// never drawn nor named, and never seen in training either.
pub const BASE_TO_NEW_TASK: &str = "textures";

/// The methods of the demo's domain-generalisation run: CoOp's domain table (zero-shot CLIP,
/// the linear probe, CoOp) and CLIP-Adapter.
pub const DOMAIN_METHODS: [&str; 4] = ["zero-shot", "linear-probe", "coop", "clip-adapter"];

/// Runs the demo; writes nothing but the task images (the caller writes the reports).
pub fn run_demo(o: &DemoOptions, progress: &mut dyn FnMut(DemoEvent)) -> Result<DemoReport> {
    let started = Instant::now();
    // The default model folder is only a name until the embedded files are written there.
    if o.model_dir == embedded_model_dir() {
        materialize_embedded_model()?;
    }
    let clip = Clip::load(&ModelFiles::in_dir(&o.model_dir)?, &Device::Cpu)?;
    let specs = selected(o)?;
    let source = world_source(&o.model_dir, o)?;
    let prepared = prepare_tasks(&clip, &specs, false, o, progress)?;
    let top = o.shots.iter().max().copied();
    // The domain run's targets are test sets only; one that is a task of the run is reused.
    let (domain_source, domain_specs) = demo_domain_shift();
    let domain = match (o.generalisation, top) {
        (true, Some(top)) if specs.iter().any(|s| s.name == domain_source) => Some(top),
        _ => None,
    };
    let target_specs: Vec<TaskSpec> = (domain_specs.iter())
        .filter(|t| domain.is_some() && !specs.iter().any(|s| s.name == t.name))
        .cloned()
        .collect();
    let targets = prepare_tasks(&clip, &target_specs, true, o, progress)?;
    let find = |task: &str| {
        (prepared.iter().chain(&targets))
            .find(|(s, ..)| s.name == task)
            .ok_or_else(|| DemoError::UnknownTask {
                task: task.to_string(),
                known: task_names().join(", "),
            })
    };
    let datasets: Vec<String> = specs.iter().map(|s| s.name.to_string()).collect();
    let grid_of = |methods: &[DemoMethod], datasets: Vec<String>, shots, protocol| Grid {
        protocol,
        methods: grid_methods(methods),
        datasets,
        shots,
        seeds: o.seeds.clone(),
        validation: Default::default(),
    };
    let mut grids = vec![(
        grid_of(
            &o.methods,
            datasets.clone(),
            o.shots.clone(),
            Protocol::FewShot,
        ),
        o.methods.clone(),
    )];
    if let (Some(top), false) = (top, o.ablations.is_empty()) {
        let grid = grid_of(&o.ablations, datasets.clone(), vec![top], Protocol::FewShot);
        grids.push((grid, o.ablations.clone()));
    }
    let lora_tasks: Vec<String> = (datasets.iter())
        .filter(|d| LORA_TASKS.contains(&d.as_str()))
        .cloned()
        .collect();
    if let (Some(top), false, false) = (top, o.lora.is_empty(), lora_tasks.is_empty()) {
        let grid = grid_of(&o.lora, lora_tasks.clone(), vec![top], Protocol::FewShot);
        grids.push((grid, o.lora.clone()));
    }
    let lora_b2n = lora_tasks.iter().any(|d| d == BASE_TO_NEW_TASK);
    let b2n_methods: Vec<DemoMethod> = (o.methods.iter())
        .chain(o.lora.iter().filter(|_| lora_b2n))
        .filter(|m| Protocol::BaseToNew.refuses(m.method.kind()).is_none())
        .cloned()
        .collect();
    if let (true, Some(top)) = (o.generalisation, top) {
        if datasets.iter().any(|d| d == BASE_TO_NEW_TASK) && !b2n_methods.is_empty() {
            let on = vec![BASE_TO_NEW_TASK.to_string()];
            let grid = grid_of(&b2n_methods, on, vec![top], Protocol::BaseToNew);
            grids.push((grid, b2n_methods));
        }
    }
    let domain_methods: Vec<DemoMethod> = (o.methods.iter())
        .filter(|m| DOMAIN_METHODS.contains(&m.label.as_str()))
        .cloned()
        .collect();
    let transfer = domain
        .filter(|_| !domain_methods.is_empty())
        .map(|top| Transfer {
            methods: grid_methods(&domain_methods),
            source: domain_source.to_string(),
            targets: domain_specs.iter().map(|t| t.name.to_string()).collect(),
            shots: vec![top],
            seeds: o.seeds.clone(),
            validation: Default::default(),
            protocol: Protocol::Domain,
        });
    let total = grids.iter().map(|(g, _)| g.cells()).sum::<usize>()
        + transfer.as_ref().map_or(0, Transfer::rows);
    let logit_scale = clip.logit_scale();
    let projection = image_projection(&clip)?;
    let mut rows: Vec<ResultRow> = Vec::new();
    let mut load = |task: &str, shots, seed| -> Result<(FewShotTask, RowSource)> {
        let (spec, d, enc, text) = find(task)?;
        // A domain target that is no task of the run has its test set only.
        let task = match target_specs.iter().any(|t| t.name == spec.name) {
            true => test_task(d, enc, text, &projection),
            false => draw_task(d, enc, text, &projection, shots, seed)?,
        };
        Ok((task, source.clone()))
    };
    // Loaded on CoOp's first fit only: the other methods never need the text tower's graph.
    let mut prompt_model: Option<Rc<PromptModel>> = None;
    let mut model = |source: &RowSource| -> Result<Rc<PromptModel>> {
        if let Some(m) = &prompt_model {
            return Ok(Rc::clone(m));
        }
        let files = ModelFiles::in_dir(&o.model_dir)?;
        let m = Rc::new(experiment::prompt_model(
            &files,
            &source.model_name,
            source,
        )?);
        prompt_model = Some(Rc::clone(&m));
        Ok(m)
    };
    // CLIP-LoRA trains on the task images themselves, which the demo wrote to disk: a draw's
    // training images are the sampler's, its test images the whole test split.
    let files = ModelFiles::in_dir(&o.model_dir)?;
    let preprocess = clip.preprocess();
    let mut images = |task: &str, shots, seed, _: &RowSource| -> Result<ImageContext> {
        let (spec, d, ..) = find(task)?;
        let train: Vec<&Sample> = match target_specs.iter().any(|t| t.name == spec.name) {
            true => Vec::new(),
            false => (FewShot::coop(d, shots, seed as i64)?.train.iter())
                .map(|&i| &d.train[i])
                .collect(),
        };
        Ok(ImageContext {
            model: files.clone(),
            images: DrawImages {
                train: train.iter().map(|s| d.path(s)).collect(),
                train_keys: train.iter().map(|s| s.impath.clone()).collect(),
                test: d.test.iter().map(|s| d.path(s)).collect(),
                preprocess: preprocess.clone(),
            },
            templates: vec![crate::world::PROMPT.to_string()],
            precision: crate::clip::Precision::F32,
        })
    };
    let mut finished = 0;
    for (grid, methods) in &grids {
        let io = GridIo {
            load: &mut load,
            model: &mut model,
            images: &mut images,
            configure: &mut |i, _, seed| for_draw(&methods[i].method, seed, logit_scale),
            events: &mut |event| {
                if let GridEvent::Row { done, .. } = event {
                    progress(DemoEvent::Fitted {
                        done: finished + done,
                        total,
                    })
                }
            },
        };
        run_grid::<DemoError>(grid, &mut rows, io)?;
        finished += grid.cells();
    }
    if let Some(t) = &transfer {
        let io = GridIo {
            load: &mut load,
            model: &mut model,
            images: &mut images,
            configure: &mut |i, _, seed| for_draw(&domain_methods[i].method, seed, logit_scale),
            events: &mut |event| {
                if let GridEvent::Row { done, .. } = event {
                    progress(DemoEvent::Fitted {
                        done: finished + done,
                        total,
                    })
                }
            },
        };
        run_transfer::<DemoError>(t, &mut rows, io)?;
    }
    let tsne = match (o.tsne, top, o.seeds.first()) {
        (true, Some(shots), Some(&seed)) => (prepared.iter())
            .filter(|(s, ..)| s.gap == Gap::Far)
            .max_by_key(|(s, ..)| s.name == TSNE_TASK)
            .map(|(spec, d, enc, text)| {
                let task = draw_task(d, enc, text, &projection, shots, seed)?;
                let tower = model(&source)?;
                demo_tsne(spec.name, &task, (shots, seed), logit_scale, &tower)
            })
            .transpose()?,
        _ => None,
    };
    Ok(DemoReport {
        tsne,
        rows,
        tasks: specs
            .iter()
            .map(|s| (s.name.to_string(), s.gap, s.about.to_string()))
            .collect(),
        domain_targets: (transfer.iter())
            .flat_map(|_| domain_specs.iter())
            .map(|s| (s.name.to_string(), s.about.to_string()))
            .collect(),
        shots: o.shots.clone(),
        methods: o.methods.iter().map(|m| m.label.clone()).collect(),
        seconds: started.elapsed().as_secs_f64(),
        logit_scale,
    })
}

fn grid_methods(methods: &[DemoMethod]) -> Vec<GridMethod> {
    (methods.iter())
        .map(|m| GridMethod {
            label: m.label.clone(),
            options: m.options.clone(),
        })
        .collect()
}

/// A task of the demo, written and encoded, with its text classifier and mean prompt embeddings.
type Prepared<'a> = (&'a TaskSpec, Dataset, Encoded, (TextClassifier, Matrix));

/// Writes each task in CoOp's layout and encodes every image once, or, for `test_only` (the
/// domain run's targets, of which only the test set is read), the test images.
fn prepare_tasks<'a>(
    clip: &Clip,
    specs: &'a [TaskSpec],
    test_only: bool,
    o: &DemoOptions,
    progress: &mut dyn FnMut(DemoEvent),
) -> Result<Vec<Prepared<'a>>> {
    let mut prepared = Vec::new();
    for spec in specs {
        let split = write_task(spec, &o.out.join("tasks"), o.world_seed, o.sizes)?;
        let d = load_task(&split, spec.name)?;
        let (test, pre_test) = encode_split(clip, &d, &d.test)?;
        let encode = |samples: &[Sample]| match test_only {
            true => Ok((empty_like(&test), empty_like(&pre_test))),
            false => encode_split(clip, &d, samples),
        };
        let (train, pre_train) = encode(&d.train)?;
        let (val, pre_val) = encode(&d.val)?;
        let enc = Encoded {
            train,
            val,
            pre: [pre_train, pre_val, pre_test],
            test,
        };
        let text = text_classifier(clip, &d)?;
        progress(DemoEvent::TaskReady {
            task: spec.name.into(),
            images: enc.train.rows + enc.val.rows + enc.test.rows,
        });
        prepared.push((spec, d, enc, text));
    }
    Ok(prepared)
}

fn empty_like(m: &Matrix) -> Matrix {
    Matrix {
        rows: 0,
        cols: m.cols,
        data: Vec::new(),
    }
}

/// The image tower's last projection (ProLIP's starting point).
fn image_projection(clip: &Clip) -> Result<Projection> {
    let (weight, cols, bias) = clip.image_projection()?;
    Ok(Projection {
        weight: Matrix {
            rows: weight.len() / cols.max(1),
            cols,
            data: weight,
        },
        bias,
    })
}

/// The logit scale CLIP's checkpoints end with, for which the protocol's learning rates
/// were tuned.
pub(super) const CLIP_LOGIT_SCALE: f32 = 100.0;

/// The method for one draw: its training seed set to the draw's, as the paper's 3-seed
/// protocol does, and the SGD learning rates of CLIP-Adapter and CoOp multiplied by
/// `CLIP_LOGIT_SCALE / logit_scale`.
///
/// The adapter's gradients are proportional to the logit scale, so on a model whose
/// temperature stopped at 22 (the shipped world model) the protocol's 0.002 would take
/// steps 4.5× shorter than on CLIP, and the adapter would barely move in CoOp's epochs;
/// the rescaled rate takes CLIP's steps. On CLIP itself it is the protocol's rate. CoOp's
/// context gradients carry the same factor.
/// Tip-Adapter-F trains with AdamW, whose steps do not depend on the gradients' scale.
pub(super) fn for_draw(m: &Method, seed: u64, logit_scale: f32) -> Method {
    m.with_seed(seed)
        .with_sgd_lr_scaled(CLIP_LOGIT_SCALE / logit_scale)
}
