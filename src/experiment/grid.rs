//! The grid: methods × datasets × shots × seeds. Each few-shot draw is loaded once and every
//! method is fitted on it; a row already in the results (same identity, see [`RowKey`]) is
//! not fitted again.
//!
//! The fits of one dataset and shot count (every seed and method) run concurrently, one per
//! thread ([`super::fit_pool`]; the next groups' fits start as threads free up), while the
//! calling thread loads the next groups, waits for the rows (blocking, no polling) and keeps
//! the sink and the events: a head's training step is a few products of 32 rows, too small to keep two cores busy by itself, while fits are independent. Every kernel
//! splits its work the same way whatever the other fits do, so the rows are identical to
//! fitting one at a time, and they reach the sink in grid order, each as soon as the ones before
//! it are done.

use std::collections::{BTreeSet, VecDeque};
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use super::base_to_new::{new_class_accuracy, BaseToNew, NewClassTest, SplitRows, Towers};
use super::fit_pool::{FitPool, Lanes};
use super::protocol::Protocol;
use super::{ExperimentError, ResultRow, RowKey, RowSource, Validation};
use crate::methods::coop::PromptModel;
use crate::methods::{self, FewShotTask, Fit, FitContext, ImageContext, Method, Needs};

/// Where rows go, and what is already there.
pub trait RowSink {
    fn find(&self, key: &RowKey) -> Option<&ResultRow>;
    fn push(&mut self, row: ResultRow) -> Result<(), ExperimentError>;
}

/// Rows kept in memory (the demo, which does not resume).
impl RowSink for Vec<ResultRow> {
    fn find(&self, key: &RowKey) -> Option<&ResultRow> {
        self.iter().find(|r| r.key() == *key)
    }
    fn push(&mut self, row: ResultRow) -> Result<(), ExperimentError> {
        Vec::push(self, row);
        Ok(())
    }
}

/// A method of the grid as rows name it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GridMethod {
    /// The `method` column: a method name, or a labelled variant.
    pub label: String,
    /// The `options` column.
    pub options: String,
}

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    pub methods: Vec<GridMethod>,
    pub datasets: Vec<String>,
    pub shots: Vec<usize>,
    pub seeds: Vec<u64>,
    /// Every row of the grid is fitted under this protocol.
    pub validation: Validation,
    /// Few-shot, or base-to-new (each draw split into base and new classes).
    pub protocol: Protocol,
}

impl Grid {
    pub fn cells(&self) -> usize {
        self.methods.len() * self.datasets.len() * self.shots.len() * self.seeds.len()
    }

    /// The grid position of a cell: its index in the order a run fits and writes the cells
    /// (dataset, then shots, then seed, then method; each axis in the grid's order).
    pub fn position(&self, dataset: usize, shots: usize, seed: usize, method: usize) -> usize {
        ((dataset * self.shots.len() + shots) * self.seeds.len() + seed) * self.methods.len()
            + method
    }
}

/// Progress of [`run_grid`].
#[derive(Debug)]
pub enum GridEvent<'a> {
    /// A method starts training on a draw.
    Fitting {
        method: &'a str,
        dataset: &'a str,
        shots: usize,
        seed: u64,
    },
    /// What the method reports while it trains.
    Method(methods::Progress),
    /// A row was fitted (`skipped: false`) or found in the results.
    Row {
        row: &'a ResultRow,
        skipped: bool,
        done: usize,
        total: usize,
    },
}

/// The rows of the grid, in grid order (found and new), and how many were fitted.
#[derive(Debug, Clone)]
pub struct GridOutcome {
    pub rows: Vec<ResultRow>,
    pub fitted: usize,
}

/// Row identity before fitting.
pub struct RowSpec<'a> {
    pub method: &'a GridMethod,
    pub dataset: &'a str,
    pub shots: usize,
    pub seed: u64,
    pub validation: Validation,
    pub source: &'a RowSource,
    pub protocol: Protocol,
    /// Base-to-new: the new classes' test (the task is then the base classes').
    pub new: Option<&'a NewClassTest>,
}

impl RowSpec<'_> {
    pub fn key(&self) -> RowKey {
        RowKey {
            method: self.method.label.clone(),
            options: self.method.options.clone(),
            dataset: self.dataset.to_string(),
            shots: self.shots,
            seed: self.seed,
            validation: self.validation,
            model: self.source.model.clone(),
            features: self.source.features.clone(),
            protocol: self.protocol,
            // A transfer protocol's source row names its own dataset as the source.
            source_dataset: match self.protocol.transfers() {
                true => self.dataset.to_string(),
                false => String::new(),
            },
        }
    }
}

/// Gives the task of a draw `(dataset, shots, seed)` and where its features came from.
pub type Loader<'a, E> = dyn FnMut(&str, usize, u64) -> Result<(FewShotTask, RowSource), E> + 'a;

/// Gives the model a CoOp fit trains through: the one that made the features of `source`.
/// Called only when a CoOp row is fitted; the caller loads it once.
pub type ModelLoader<'a, E> = dyn FnMut(&RowSource) -> Result<Rc<PromptModel>, E> + 'a;

/// Gives a fit that trains on the images themselves ([`Needs::Images`], CLIP-LoRA) what it
/// reads besides the features of the draw `(dataset, shots, seed)`, whose features `source`
/// made: that model's files, the draw's training and test images in the rows' order, and the
/// prompt templates. Called only when such a row is fitted (or tested on a transfer target).
pub type ImagesLoader<'a, E> =
    dyn FnMut(&str, usize, u64, &RowSource) -> Result<ImageContext, E> + 'a;

/// The caller's side of a grid: what it reads through and reports to. Every grid and transfer
/// run takes these, whichever methods it fits.
pub struct GridIo<'a, E> {
    /// The task of a draw.
    pub load: &'a mut Loader<'a, E>,
    /// CoOp's text tower.
    pub model: &'a mut ModelLoader<'a, E>,
    /// CLIP-LoRA's model files and images.
    pub images: &'a mut ImagesLoader<'a, E>,
    /// The method to fit: `configure(method index, dataset, seed)`.
    pub configure: &'a mut dyn FnMut(usize, &str, u64) -> Method,
    /// The progress.
    pub events: &'a mut dyn FnMut(GridEvent),
}

/// What a fit reads besides the task.
#[derive(Clone, Copy, Default)]
pub struct FitInputs<'a> {
    /// CoOp's text tower: the model that made the task's features.
    pub text_tower: Option<&'a PromptModel>,
    /// CLIP-LoRA's model and the task's images.
    pub images: Option<&'a ImageContext>,
    /// Base-to-new, for CLIP-LoRA: the new classes' test images, in the rows' order.
    pub new_images: Option<&'a ImageContext>,
}

/// Fits `method` on `task` under the protocol of `spec` (without the validation set for
/// [`Validation::None`]), evaluates it, and makes the row. CoOp needs the text tower of the
/// model that made the task's features (CoOp's own head comes back in [`Fit::prompt`]);
/// CLIP-LoRA the model's files and the task's images.
pub fn fit_row(
    method: &Method,
    task: &FewShotTask,
    spec: &RowSpec,
    inputs: FitInputs,
    progress: &mut dyn FnMut(methods::Progress),
) -> Result<(Fit, ResultRow), ExperimentError> {
    let task = &*spec.validation.task(task);
    let start = Instant::now();
    let method = &method.for_feature_width(task.dim());
    let fit_error = |source: Box<dyn std::error::Error + Send + Sync>| ExperimentError::Fit {
        method: spec.method.label.clone(),
        dataset: spec.dataset.to_string(),
        shots: spec.shots,
        seed: spec.seed,
        source,
    };
    let mut cx = FitContext {
        progress,
        text_tower: inputs.text_tower,
        images: inputs.images,
    };
    let trained = method
        .fit(task, &mut cx)
        .map_err(|e| fit_error(Box::new(e)))?;
    let fitted = &trained.fitted;
    // Milliseconds are all a training time needs.
    let seconds = (start.elapsed().as_secs_f64() * 1e3).round() / 1e3;
    let (val, test) = methods::evaluate_fit(&trained, task);
    let towers = Towers {
        text: inputs.text_tower,
        images: inputs.new_images,
    };
    let new_accuracy = match spec.new {
        Some(new) => {
            Some(new_class_accuracy(&trained, new, towers).map_err(|e| fit_error(Box::new(e)))?)
        }
        None => None,
    };
    let chosen: Vec<String> = fitted
        .chosen
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let key = spec.key();
    let row = ResultRow {
        method: key.method,
        options: key.options,
        dataset: key.dataset,
        shots: key.shots,
        seed: key.seed,
        validation: key.validation,
        model: key.model,
        model_name: spec.source.model_name.clone(),
        features: key.features,
        val_accuracy: val,
        test_accuracy: test,
        train_seconds: seconds,
        chosen: chosen.join(" "),
        augmentation: TrainedOn::of(method, task).to_string(),
        protocol: key.protocol,
        new_accuracy,
        source_dataset: key.source_dataset,
    };
    Ok((trained, row))
}

/// What a fit trained on, as its row's `augmentation` column records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainedOn {
    /// Its authors train without augmentation.
    NotAugmented,
    /// Its authors augment, but the cache holds no augmented views: the centre crop alone.
    CentreCropOnly,
    /// Its authors augment, and it trained on this many cached views.
    Views(usize),
}

impl TrainedOn {
    pub fn of(method: &Method, task: &FewShotTask) -> Self {
        match (
            method.card().augmentation.augments(),
            task.train_views.len(),
        ) {
            (false, _) => TrainedOn::NotAugmented,
            (true, 0) => TrainedOn::CentreCropOnly,
            (true, n) => TrainedOn::Views(n),
        }
    }

    /// A row's column back (`None` for a row of a version before the column).
    pub fn parse(column: &str) -> Option<Self> {
        match column {
            "none" => Some(TrainedOn::NotAugmented),
            "centre crop only" => Some(TrainedOn::CentreCropOnly),
            other => (other.strip_suffix(" augmented views")?.parse().ok()).map(TrainedOn::Views),
        }
    }
}

impl std::fmt::Display for TrainedOn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrainedOn::NotAugmented => f.write_str("none"),
            TrainedOn::CentreCropOnly => f.write_str("centre crop only"),
            TrainedOn::Views(n) => write!(f, "{n} augmented views"),
        }
    }
}

/// Runs the grid: for each dataset, shot count and seed, `io.load` gives the draw's task and
/// its source, and for each method `io.configure(method index, dataset, seed)` gives the method
/// to fit; `io.model` gives CoOp the model behind a draw's features, `io.images` CLIP-LoRA the
/// model's files and the draw's images.
///
/// The draws of one dataset and shot count are loaded first, then their fits run concurrently
/// (CoOp's and CLIP-LoRA's, which train through a model loaded by this thread, one at a time
/// on it, beside the pool's). When each fit runs on a thread of its own, the next groups are
/// loaded and their fits queued whenever fewer fits than threads wait, so that no core waits
/// for a group's last fit or for the next draws to load; the rows are handed on in grid order
/// all the same.
/// `io.events` sees the progress of the earliest unfinished fit and every row in grid order.
/// After a failure no later cell starts, except those of later groups already running, whose
/// rows are not handed on.
///
/// The error type is the caller's, so that `load` reports its own failures unchanged.
pub fn run_grid<E: From<ExperimentError>>(
    grid: &Grid,
    sink: &mut dyn RowSink,
    io: GridIo<E>,
) -> Result<GridOutcome, E> {
    run_grid_share(grid, None, sink, io)
}

/// Runs the cells of `grid` that `mine` marks (by grid position, see [`Grid::position`]; all
/// of them when `None`), as [`run_grid`] runs them all: in grid order, resumable, the fits of
/// a group side by side. Draws with none of the cells are not loaded. This is one shard's
/// share of a grid spread over machines ([`super::shard`]).
pub fn run_grid_share<E: From<ExperimentError>>(
    grid: &Grid,
    mine: Option<&[bool]>,
    sink: &mut dyn RowSink,
    mut io: GridIo<E>,
) -> Result<GridOutcome, E> {
    // The fits run on threads of their own, so that this thread (perhaps a worker of the
    // caller's pool) can wait for their rows without polling.
    let fits = grid.seeds.len() * grid.methods.len();
    let keys: Vec<(&str, usize)> = (grid.datasets.iter())
        .flat_map(|d| grid.shots.iter().map(move |&shots| (d.as_str(), shots)))
        .collect();
    let pool = FitPool::new(rayon::current_num_threads(), fits, keys.len())
        .map_err(ExperimentError::from)?;
    let share = Share::new(mine, grid.cells());
    let mut out = GridOutcome {
        rows: Vec::with_capacity(share.total),
        fitted: 0,
    };
    pool.scope(|lanes| {
        let (tx, messages) = mpsc::channel();
        let mut run = Run {
            grid,
            share: &share,
            keys: &keys,
            next: 0,
            started: VecDeque::new(),
            halted: false,
            tx,
            messages,
        };
        let outcome = run.drive(&pool, lanes, sink, &mut io, &mut out);
        if outcome.is_err() {
            // Nothing more starts; the running fits finish unobserved.
            run.halt_after(0);
        }
        outcome
    })?;
    Ok(out)
}

/// Draws loaded ahead of the earliest unfinished group, at most (in floats): enough for the
/// threads to take the next groups' fits while a long fit of that group still runs, without
/// holding a whole grid's features.
const AHEAD_FLOATS: usize = 256 << 20;
/// Groups started at once, at most.
const AHEAD_GROUPS: usize = 16;

/// A grid run: the groups started, earliest first, and the next to load.
struct Run<'a, 'k> {
    grid: &'a Grid,
    share: &'a Share<'a>,
    /// Every group's dataset and shot count, in grid order.
    keys: &'k [(&'a str, usize)],
    next: usize,
    started: VecDeque<Started<'a>>,
    /// After a failure (or a lost fit): no more groups are started.
    halted: bool,
    /// Where every concurrent fit reports, with its group's index among `keys`.
    tx: mpsc::Sender<(usize, Message)>,
    messages: mpsc::Receiver<(usize, Message)>,
}

impl<'a> Run<'a, '_> {
    /// Starts groups while the threads would otherwise run dry, hands the earliest group's
    /// rows on as they complete, and returns once every group is done or one failed.
    fn drive<'s, E: From<ExperimentError>>(
        &mut self,
        pool: &FitPool,
        lanes: &Lanes<'_, 's>,
        sink: &mut dyn RowSink,
        io: &mut GridIo<E>,
        out: &mut GridOutcome,
    ) -> Result<(), E>
    where
        'a: 's,
    {
        let mut load_error = None;
        loop {
            while load_error.is_none() && self.wants_more(pool, lanes) {
                let g = self.next;
                let (dataset, shots) = self.keys[g];
                let first = g * self.grid.seeds.len() * self.grid.methods.len();
                match load_group(self.grid, self.share, first, dataset, shots, io) {
                    Ok(draws) => {
                        let group = Group {
                            grid: self.grid,
                            dataset,
                            shots,
                            draws,
                            share: self.share,
                            index: g,
                            stop: AtomicUsize::new(usize::MAX),
                        };
                        let started = Arc::new(group).start(lanes, sink, io.configure, &self.tx);
                        self.started.push_back(started);
                        self.next += 1;
                    }
                    // The groups before it are finished first: their rows are handed on.
                    Err(e) => load_error = Some(e),
                }
            }
            let Some(front) = self.started.front_mut() else {
                return load_error.map_or(Ok(()), Err);
            };
            if !front.active {
                front.activate(sink, io, out)?;
                if front.progress.failure.is_some() {
                    let after = front.group.index + 1;
                    self.halt_after(after);
                }
                continue;
            }
            if front.outstanding == 0 {
                if let Some((_, e)) = self.started.pop_front().and_then(|d| d.progress.failure) {
                    return Err(e.into());
                }
                continue;
            }
            // A message always comes: the earliest group has fits not finished.
            let Ok((g, message)) = self.messages.recv() else {
                return Ok(());
            };
            // Every message of a group comes before its last fit's last one, which the group
            // waits for before it leaves `started`.
            let base = self.started.front().map_or(g, |f| f.group.index);
            let Some(group) = (g.checked_sub(base)).and_then(|i| self.started.get_mut(i)) else {
                continue;
            };
            match group.receive(message, sink, io.events, out)? {
                Received::Row => {}
                // Later cells of this group are not started (`fit_cell`), nor later groups'.
                Received::Failure => self.halt_after(g + 1),
                // A fit panicked: the panic reaches the caller when the pool's scope ends.
                Received::Lost => {
                    self.halt_after(0);
                    return Ok(());
                }
            }
        }
    }

    /// Whether to load and start the next group: when none is started, else when the
    /// threads may take another group's fits and would find few queued, within the
    /// look-ahead's bounds.
    fn wants_more(&self, pool: &FitPool, lanes: &Lanes) -> bool {
        if self.halted || self.next >= self.keys.len() {
            return false;
        }
        if self.started.is_empty() {
            return true;
        }
        let ahead: usize = self.started.iter().skip(1).map(|s| s.group.floats()).sum();
        pool.overlaps_groups()
            && lanes.queued() < pool.threads()
            && self.started.len() < AHEAD_GROUPS
            && ahead < AHEAD_FLOATS
    }

    /// Stops every started group from index `g` on (nothing of theirs starts any more) and
    /// starts no further group.
    fn halt_after(&mut self, g: usize) {
        self.halted = true;
        for s in self.started.iter().filter(|s| s.group.index >= g) {
            s.group.stop.store(0, Ordering::Relaxed);
        }
    }
}

/// The draws of a group that hold at least one cell of the share (its first cell at grid
/// position `first`), each loaded once for every method.
fn load_group<E: From<ExperimentError>>(
    grid: &Grid,
    share: &Share,
    first: usize,
    dataset: &str,
    shots: usize,
    io: &mut GridIo<E>,
) -> Result<Vec<Draw>, E> {
    let m = grid.methods.len();
    let mut draws = Vec::with_capacity(grid.seeds.len());
    for (e, &seed) in grid.seeds.iter().enumerate() {
        let first = first + e * m;
        if !(first..first + m).any(|c| share.has(c)) {
            continue;
        }
        // Loaded even when every row is done: the rows' identity includes the features.
        let (task, source) = (io.load)(dataset, shots, seed)?;
        let (task, new, rows) = match grid.protocol {
            Protocol::BaseToNew => {
                let split = BaseToNew::split(&task, dataset).map_err(ExperimentError::from)?;
                (split.base, Some(split.new), Some(split.rows))
            }
            _ => (task, None, None),
        };
        draws.push(Draw {
            seed,
            first,
            task: grid.validation.apply(task),
            new,
            rows,
            source,
        });
    }
    Ok(draws)
}

/// Which cells of a grid (by grid position) a run fits, and how many.
pub(crate) struct Share<'a> {
    mine: Option<&'a [bool]>,
    pub(crate) total: usize,
}

impl<'a> Share<'a> {
    pub(crate) fn new(mine: Option<&'a [bool]>, cells: usize) -> Self {
        let total = mine.map_or(cells, |v| v.iter().take(cells).filter(|&&b| b).count());
        Share { mine, total }
    }

    pub(crate) fn has(&self, position: usize) -> bool {
        self.mine
            .is_none_or(|v| v.get(position).copied().unwrap_or(false))
    }
}

/// One few-shot draw of a group.
struct Draw {
    seed: u64,
    /// The grid position of the draw's first cell (its first method's).
    first: usize,
    /// The task methods train on (base-to-new: the base classes').
    task: FewShotTask,
    /// Base-to-new: the new classes' test.
    new: Option<NewClassTest>,
    /// Base-to-new: the whole draw's rows of the base task and of the new classes' test.
    rows: Option<SplitRows>,
    source: RowSource,
}

/// The cells of one dataset and shot count: every draw × every method, in grid order (draw,
/// then method).
struct Group<'a> {
    grid: &'a Grid,
    dataset: &'a str,
    shots: usize,
    /// The draws that hold at least one cell of the share.
    draws: Vec<Draw>,
    share: &'a Share<'a>,
    /// The group's index in grid order.
    index: usize,
    /// Cells from this one on are not started: after a failure (the cell after it), or when
    /// the run stops (0).
    stop: AtomicUsize,
}

/// A group whose concurrent fits are handed on.
struct Started<'a> {
    group: Arc<Group<'a>>,
    progress: Progress,
    /// The fits that train through the model's towers, run on this thread once the group is
    /// the earliest.
    sequential: Vec<(usize, Method)>,
    /// Concurrent fits not finished.
    outstanding: usize,
    /// Whether the group has been the earliest unfinished one: its found rows handed on, its
    /// sequential fits run, and its events reported.
    active: bool,
}

/// What a concurrent fit tells the thread that owns the sink and the events.
enum Message {
    Started(usize),
    Progress(usize, methods::Progress),
    // Boxed: a row is large beside the other messages.
    Finished(usize, Box<Result<ResultRow, ExperimentError>>),
    /// The fit did not start: the group stopped before it.
    NotStarted,
    /// The fit was dropped unfinished (a fit panicked, and the fits queued behind it with it);
    /// the panic reaches the caller when the pool's scope ends.
    Lost,
}

/// Where a group's cells stand: their rows, how many were handed on, the first failure in
/// grid order, and the concurrent fits running.
struct Progress {
    rows: Vec<Option<(ResultRow, bool)>>,
    committed: usize,
    failure: Option<(usize, ExperimentError)>,
    running: BTreeSet<usize>,
}

impl<'a> Group<'a> {
    fn cells(&self) -> usize {
        self.draws.len() * self.grid.methods.len()
    }

    /// Cell `c`'s draw and method index.
    fn cell(&self, c: usize) -> (&Draw, usize) {
        let m = self.grid.methods.len();
        (&self.draws[c / m], c % m)
    }

    /// Whether cell `c` is one of the run's share.
    fn mine(&self, c: usize) -> bool {
        let (draw, m) = self.cell(c);
        self.share.has(draw.first + m)
    }

    fn spec(&self, c: usize) -> RowSpec<'_> {
        let (draw, m) = self.cell(c);
        RowSpec {
            method: &self.grid.methods[m],
            dataset: self.dataset,
            shots: self.shots,
            seed: draw.seed,
            validation: self.grid.validation,
            source: &draw.source,
            protocol: self.grid.protocol,
            new: draw.new.as_ref(),
        }
    }

    fn fitting_event(&self, c: usize) -> GridEvent<'_> {
        let (draw, m) = self.cell(c);
        GridEvent::Fitting {
            method: &self.grid.methods[m].label,
            dataset: self.dataset,
            shots: self.shots,
            seed: draw.seed,
        }
    }

    /// The methods of the cells not in the sink yet: those that train through the model's
    /// towers (run on this thread, which loads the model), and the others (run on the pool).
    #[allow(clippy::type_complexity)]
    fn plan(
        &self,
        rows: &[Option<(ResultRow, bool)>],
        configure: &mut dyn FnMut(usize, &str, u64) -> Method,
    ) -> (Vec<(usize, Method)>, Vec<(usize, Method)>) {
        let (mut sequential, mut concurrent) = (Vec::new(), Vec::new());
        for (c, row) in rows.iter().enumerate() {
            if row.is_none() && self.mine(c) {
                let (draw, m) = self.cell(c);
                let method = configure(m, self.dataset, draw.seed);
                match method.card().needs {
                    Needs::TextTower | Needs::Images => sequential.push((c, method)),
                    Needs::Features | Needs::PreProjection => concurrent.push((c, method)),
                }
            }
        }
        (sequential, concurrent)
    }

    /// Looks the group's cells up in the sink and hands its concurrent fits on to `lanes`
    /// (they start as threads free up, and report to `tx`); the rest is [`Started`]'s.
    fn start<'s>(
        self: Arc<Self>,
        lanes: &Lanes<'_, 's>,
        sink: &dyn RowSink,
        configure: &mut dyn FnMut(usize, &str, u64) -> Method,
        tx: &mpsc::Sender<(usize, Message)>,
    ) -> Started<'a>
    where
        'a: 's,
    {
        let rows: Vec<Option<(ResultRow, bool)>> = (0..self.cells())
            .map(|c| match self.mine(c) {
                true => sink.find(&self.spec(c).key()).map(|r| (r.clone(), true)),
                false => None,
            })
            .collect();
        let (sequential, concurrent) = self.plan(&rows, configure);
        let outstanding = concurrent.len();
        for (c, method) in concurrent {
            let report = Report {
                group: self.index,
                cell: c,
                tx: tx.clone(),
                ended: false,
            };
            let group = Arc::clone(&self);
            lanes.start(Box::new(move || group.fit_cell(&method, report)));
        }
        Started {
            group: self,
            progress: Progress {
                rows,
                committed: 0,
                failure: None,
                running: BTreeSet::new(),
            },
            sequential,
            outstanding,
            active: false,
        }
    }

    /// One concurrent fit, reporting to the thread that owns the sink. A send fails only
    /// when the receiver is gone; the fit then finishes unobserved.
    fn fit_cell(&self, method: &Method, mut report: Report) {
        let c = report.cell;
        if c >= self.stop.load(Ordering::Relaxed) {
            report.end(Message::NotStarted);
            return;
        }
        report.send(Message::Started(c));
        let (draw, _) = self.cell(c);
        let inputs = FitInputs::default();
        let result = fit_row(method, &draw.task, &self.spec(c), inputs, &mut |p| {
            report.send(Message::Progress(c, p));
        });
        if result.is_err() {
            self.stop.fetch_min(c + 1, Ordering::Relaxed);
        }
        report.end(Message::Finished(c, Box::new(result.map(|(_, row)| row))));
    }

    /// The floats of the group's draws' features: what holding it ahead costs.
    fn floats(&self) -> usize {
        (self.draws.iter()).map(|d| task_floats(&d.task)).sum()
    }

    /// The images a draw's CLIP-LoRA fit trains and is tested on, from the whole draw's: under
    /// base-to-new, the base task's and the new classes' test images.
    fn split_images(
        &self,
        draw: &Draw,
        whole: ImageContext,
    ) -> (ImageContext, Option<ImageContext>) {
        match &draw.rows {
            Some(rows) => {
                let (base, new) = rows.images(whole);
                (base, Some(new))
            }
            None => (whole, None),
        }
    }

    /// Hands the rows known from `committed` on to the sink and the events, in grid order,
    /// up to the first cell of the share still fitting (cells of other shards are passed).
    fn commit(
        &self,
        progress: &mut Progress,
        sink: &mut dyn RowSink,
        events: &mut dyn FnMut(GridEvent),
        out: &mut GridOutcome,
    ) -> Result<(), ExperimentError> {
        let (rows, committed) = (&mut progress.rows, &mut progress.committed);
        loop {
            if *committed < rows.len() && !self.mine(*committed) {
                *committed += 1;
                continue;
            }
            let Some((row, skipped)) = rows.get_mut(*committed).and_then(Option::take) else {
                break;
            };
            if !skipped {
                sink.push(row.clone())?;
                out.fitted += 1;
            }
            out.rows.push(row);
            *committed += 1;
            let done = out.rows.len();
            events(GridEvent::Row {
                row: &out.rows[done - 1],
                skipped,
                done,
                total: self.share.total,
            });
        }
        Ok(())
    }
}

impl Started<'_> {
    /// Makes this the earliest unfinished group: hands the rows found in the sink (and those
    /// already fitted) on, fits the sequential cells on this thread (the methods that train
    /// through the model's towers: the model stays on this thread) one at a time beside the
    /// concurrent fits, hands their rows on, and reports the earliest running fit. Cells after
    /// the first failure in grid order are not started; those before it are fitted: the rows
    /// a one-at-a-time grid would have written before failing.
    fn activate<E: From<ExperimentError>>(
        &mut self,
        sink: &mut dyn RowSink,
        io: &mut GridIo<E>,
        out: &mut GridOutcome,
    ) -> Result<(), E> {
        self.active = true;
        let (group, progress) = (&self.group, &mut self.progress);
        let events = &mut *io.events;
        group.commit(progress, sink, events, out)?;
        for (c, method) in std::mem::take(&mut self.sequential) {
            if c >= group.stop.load(Ordering::Relaxed) {
                break;
            }
            events(group.fitting_event(c));
            let (draw, _) = group.cell(c);
            let loaded = match method.card().needs {
                Needs::Images => (io.images)(group.dataset, group.shots, draw.seed, &draw.source)
                    .map(|cx| (None, Some(group.split_images(draw, cx)))),
                _ => (io.model)(&draw.source).map(|m| (Some(m), None)),
            };
            let (prompt_model, cell_images) = match loaded {
                Ok(l) => l,
                Err(e) => {
                    // Nothing more of this group starts; the caller stops the rest.
                    group.stop.store(0, Ordering::Relaxed);
                    return Err(e);
                }
            };
            let inputs = FitInputs {
                text_tower: prompt_model.as_deref(),
                images: cell_images.as_ref().map(|(fit, _)| fit),
                new_images: cell_images.as_ref().and_then(|(_, new)| new.as_ref()),
            };
            let fitted = fit_row(&method, &draw.task, &group.spec(c), inputs, &mut |p| {
                events(GridEvent::Method(p))
            });
            match fitted {
                Ok((_, row)) => progress.rows[c] = Some((row, false)),
                Err(e) => {
                    group.stop.fetch_min(c + 1, Ordering::Relaxed);
                    progress.fail(c, e);
                }
            }
        }
        group.commit(progress, sink, events, out)?;
        if let Some(&c) = progress.running.first() {
            events(group.fitting_event(c));
        }
        Ok(())
    }

    /// Takes one message of a concurrent fit of this group. While the group is the earliest:
    /// reports the progress of its earliest running fit and hands rows on in grid order as
    /// they complete; before, keeps them.
    fn receive(
        &mut self,
        message: Message,
        sink: &mut dyn RowSink,
        events: &mut dyn FnMut(GridEvent),
        out: &mut GridOutcome,
    ) -> Result<Received, ExperimentError> {
        let (group, progress, active) = (&self.group, &mut self.progress, self.active);
        let running = &mut progress.running;
        match message {
            Message::Started(c) => {
                if active && running.first().is_none_or(|&first| c < first) {
                    events(group.fitting_event(c));
                }
                running.insert(c);
            }
            Message::Progress(c, p) => {
                if active && running.first() == Some(&c) {
                    events(GridEvent::Method(p));
                }
            }
            Message::Finished(c, result) => {
                self.outstanding -= 1;
                running.remove(&c);
                if let (true, Some(&next)) = (active, running.first()) {
                    if next > c {
                        events(group.fitting_event(next));
                    }
                }
                let failed = match *result {
                    Ok(row) => {
                        progress.rows[c] = Some((row, false));
                        false
                    }
                    Err(e) => {
                        progress.fail(c, e);
                        true
                    }
                };
                if active {
                    group.commit(progress, sink, events, out)?;
                }
                if failed {
                    return Ok(Received::Failure);
                }
            }
            Message::NotStarted => self.outstanding -= 1,
            Message::Lost => {
                self.outstanding -= 1;
                return Ok(Received::Lost);
            }
        }
        Ok(Received::Row)
    }
}

/// What a message meant for the run.
enum Received {
    /// Progress, or a row.
    Row,
    /// A fit failed.
    Failure,
    /// A fit was dropped unfinished.
    Lost,
}

impl Progress {
    /// Records the failure of cell `c`; the first in grid order is the one reported.
    fn fail(&mut self, c: usize, e: ExperimentError) {
        if self.failure.as_ref().is_none_or(|(f, _)| c < *f) {
            self.failure = Some((c, e));
        }
    }
}

/// How a concurrent fit reports to the thread that owns the sink: exactly one of its last
/// messages (`Finished`, `NotStarted`, or `Lost` when dropped unfinished) reaches it, which
/// the thread counts the group's fits by.
struct Report {
    group: usize,
    cell: usize,
    tx: mpsc::Sender<(usize, Message)>,
    ended: bool,
}

impl Report {
    fn send(&self, message: Message) {
        let _ = self.tx.send((self.group, message));
    }

    fn end(&mut self, message: Message) {
        self.ended = true;
        self.send(message);
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        if !self.ended {
            self.send(Message::Lost);
        }
    }
}

/// The floats of a task's features and classifier.
fn task_floats(t: &FewShotTask) -> usize {
    let views: usize = t.train_views.iter().map(|v| v.data.len()).sum();
    t.train.features.data.len()
        + views
        + t.val.features.data.len()
        + t.test.features.data.len()
        + t.text.weights.data.len()
}

#[cfg(test)]
mod tests {
    #[test]
    fn what_a_fit_trained_on_reads_back_from_its_column() {
        use super::TrainedOn;
        for t in [
            TrainedOn::NotAugmented,
            TrainedOn::CentreCropOnly,
            TrainedOn::Views(10),
        ] {
            assert_eq!(TrainedOn::parse(&t.to_string()), Some(t));
        }
        assert_eq!(TrainedOn::parse(""), None);
        assert_eq!(TrainedOn::parse("many augmented views"), None);
    }

    use super::*;
    use crate::methods::clip_adapter::AdapterOptions;
    use crate::methods::linalg::seeded_rng;
    use crate::methods::{LabelledSet, Matrix, TextClassifier};

    /// A separable draw of 4 classes × 8 images in 32 dimensions; `seed` draws it.
    fn draw(seed: u64) -> FewShotTask {
        let (k, n, d) = (4, 32, 32);
        let mut rng = seeded_rng(seed);
        let labels: Vec<usize> = (0..n).map(|i| i % k).collect();
        let mut x = Matrix::from_vec(n, d, rng.uniform_vec(n * d, 1.0)).unwrap();
        for (i, &y) in labels.iter().enumerate() {
            x.data[i * d + y] += 1.0;
        }
        let set = LabelledSet {
            features: x,
            labels,
        };
        FewShotTask {
            pre_projection: None,
            text_mean: None,
            classnames: (0..k).map(|i| format!("c{i}")).collect(),
            train: set.clone(),
            train_views: Vec::new(),
            val: set.clone(),
            test: set,
            text: TextClassifier {
                weights: Matrix::from_vec(k, d, rng.uniform_vec(k * d, 1.0))
                    .unwrap()
                    .normalized(),
                logit_scale: 100.0,
                logit_bias: None,
            },
        }
    }

    fn grid() -> Grid {
        let method = |label: &str| GridMethod {
            label: label.into(),
            options: String::new(),
        };
        Grid {
            methods: vec![method("zero-shot"), method("clip-adapter")],
            datasets: vec!["toy".into()],
            shots: vec![8],
            seeds: vec![1, 2, 3],
            validation: Validation::Val,
            protocol: Protocol::FewShot,
        }
    }

    fn method(i: usize, seed: u64, reduction: usize) -> Method {
        match i {
            0 => Method::new(crate::methods::zero_shot::ZeroShotMethod),
            _ => Method::new(AdapterOptions {
                epochs: Some(3),
                batch_size: 8,
                reduction,
                seed,
                ..Default::default()
            }),
        }
    }

    /// Runs the grid in a pool of `threads` threads; `reduction` of seed 2's adapter (0 fails).
    /// Returns the outcome and the rows in the order the sink and the events saw them.
    fn run(
        threads: usize,
        reduction_seed_2: usize,
        sink: &mut Vec<ResultRow>,
    ) -> (Result<GridOutcome, ExperimentError>, Vec<usize>) {
        let reduction = |_: &str, seed| if seed == 2 { reduction_seed_2 } else { 4 };
        let configure = reducing(&reduction);
        run_on(&grid(), threads, &configure, sink)
    }

    /// The grid's methods, each adapter with `reduction(dataset, seed)` (0 fails).
    fn reducing(
        reduction: &(dyn Fn(&str, u64) -> usize + Sync),
    ) -> impl Fn(usize, &str, u64) -> Method + Sync + '_ {
        move |i, dataset, seed| method(i, seed, reduction(dataset, seed))
    }

    /// Runs `grid` in a pool of `threads` threads with the methods of `configure`; returns as
    /// [`run`].
    fn run_on(
        grid: &Grid,
        threads: usize,
        configure: &(dyn Fn(usize, &str, u64) -> Method + Sync),
        sink: &mut Vec<ResultRow>,
    ) -> (Result<GridOutcome, ExperimentError>, Vec<usize>) {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let source = RowSource {
            model: "m".into(),
            model_name: "m".into(),
            features: "f".into(),
        };
        let mut done = Vec::new();
        let outcome = pool.install(|| {
            let io = GridIo {
                load: &mut |_, _, seed| Ok((draw(seed), source.clone())),
                model: &mut |_| unreachable!("no CoOp in this grid"),
                images: &mut |_, _, _, _| unreachable!("no CLIP-LoRA in this grid"),
                configure: &mut |i, dataset, seed| configure(i, dataset, seed),
                events: &mut |event| {
                    if let GridEvent::Row { done: d, .. } = event {
                        done.push(d)
                    }
                },
            };
            run_grid::<ExperimentError>(grid, sink, io)
        });
        (outcome, done)
    }

    /// Accuracy and identity, without the training time (which differs between runs).
    fn strip(rows: &[ResultRow]) -> Vec<(String, u64, f32, f32, String)> {
        rows.iter()
            .map(|r| {
                let c = r.clone();
                (c.method, c.seed, c.val_accuracy, c.test_accuracy, c.chosen)
            })
            .collect()
    }

    /// Three datasets × two shot counts × three seeds × two methods: six groups.
    fn groups() -> Grid {
        Grid {
            datasets: vec!["a".into(), "b".into(), "c".into()],
            shots: vec![4, 8],
            ..grid()
        }
    }

    /// With the next group's fits queued behind a group's, the rows, their order and the
    /// progress are those of one fit at a time.
    #[test]
    fn groups_overlapping_give_the_rows_of_one_fit_at_a_time_in_grid_order() {
        let reduction = |_: &str, _| 4;
        let mut one = Vec::new();
        let (a, done_a) = run_on(&groups(), 1, &reducing(&reduction), &mut one);
        assert_eq!(a.unwrap().fitted, 36);
        let identity = |rows: &[ResultRow]| -> Vec<(String, usize, u64, String)> {
            (rows.iter())
                .map(|r| (r.dataset.clone(), r.shots, r.seed, r.method.clone()))
                .collect()
        };
        let mut expected = Vec::new();
        for d in ["a", "b", "c"] {
            for shots in [4, 8] {
                for seed in 1..=3 {
                    for m in ["zero-shot", "clip-adapter"] {
                        expected.push((d.to_string(), shots, seed, m.to_string()));
                    }
                }
            }
        }
        assert_eq!(identity(&one), expected);
        assert_eq!(done_a, (1..=36).collect::<Vec<_>>());
        for threads in [2, 3, 8] {
            let mut sink = Vec::new();
            let (outcome, done) = run_on(&groups(), threads, &reducing(&reduction), &mut sink);
            assert_eq!(outcome.unwrap().fitted, 36, "{threads} threads");
            assert_eq!(identity(&sink), expected, "{threads} threads");
            assert_eq!(strip(&sink), strip(&one), "{threads} threads");
            assert_eq!(done, done_a, "{threads} threads");
        }
    }

    /// A method whose fit panics (a bug, not a failure).
    #[derive(Debug, Clone)]
    struct Panics;

    impl methods::FewShotMethod for Panics {
        fn card(&self) -> &'static methods::MethodCard {
            &methods::zero_shot::CARD
        }
        fn describe(&self) -> String {
            String::new()
        }
        fn fit(&self, _: &FewShotTask, _: &mut FitContext) -> Result<Fit, methods::MethodError> {
            panic!("a fit panicked")
        }
        fn clone_box(&self) -> Box<dyn methods::FewShotMethod> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
    }

    /// A fit that panics while later groups' fits are queued reaches the caller as a panic,
    /// on every number of threads, instead of leaving the run waiting for its row.
    #[test]
    fn a_panicking_fit_reaches_the_caller_from_any_group() {
        let configure = |i, dataset: &str, seed| match (i, dataset, seed) {
            (1, "b", 2) => Method::new(Panics),
            _ => method(i, seed, 4),
        };
        for threads in [1, 2, 3] {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                run_on(&groups(), threads, &configure, &mut Vec::new())
            }));
            let message = outcome.expect_err("the panic reaches the caller");
            assert_eq!(
                message.downcast_ref::<&str>(),
                Some(&"a fit panicked"),
                "{threads} threads"
            );
        }
    }

    /// A failure in one group keeps every row before it, the earlier groups' included, and
    /// none after it, although the next group's fits may have started.
    #[test]
    fn a_failing_fit_in_a_later_group_keeps_the_earlier_groups_rows() {
        let reduction = |dataset: &str, seed| if (dataset, seed) == ("b", 2) { 0 } else { 4 };
        for threads in [1, 2, 3] {
            let mut sink = Vec::new();
            let (outcome, _) = run_on(&groups(), threads, &reducing(&reduction), &mut sink);
            assert!(outcome.is_err(), "{threads} threads");
            let kept: Vec<(String, usize, u64)> = (sink.iter())
                .map(|r| (r.dataset.clone(), r.shots, r.seed))
                .collect();
            // Dataset a's twelve rows, then b at 4 shots: seed 1's two and seed 2's zero-shot.
            assert_eq!(kept.len(), 15, "{threads} threads: {kept:?}");
            assert!(kept[..12].iter().all(|(d, _, _)| d == "a"));
            assert_eq!(
                kept[12..],
                [("b".into(), 4, 1), ("b".into(), 4, 1), ("b".into(), 4, 2)],
                "{threads} threads"
            );
        }
    }

    /// Fits running side by side give the rows of fitting one at a time, in grid order.
    #[test]
    fn concurrent_fits_give_the_sequential_rows_in_grid_order() {
        let (mut one, mut two) = (Vec::new(), Vec::new());
        let (a, done_a) = run(1, 4, &mut one);
        let (b, done_b) = run(2, 4, &mut two);
        // Six fits on three threads: six threads of their own, time-sliced; on eight, fewer
        // fits than threads: one shared pool (`fit_pool`).
        let (mut three, mut eight) = (Vec::new(), Vec::new());
        let (c, done_c) = run(3, 4, &mut three);
        let (d, done_d) = run(8, 4, &mut eight);
        let (a, b, c, d) = (a.unwrap(), b.unwrap(), c.unwrap(), d.unwrap());
        assert_eq!((a.fitted, b.fitted, c.fitted, d.fitted), (6, 6, 6, 6));
        assert_eq!(strip(&one), strip(&two));
        assert_eq!(strip(&one), strip(&three));
        assert_eq!(strip(&one), strip(&eight));
        assert_eq!((&done_c, &done_d), (&done_a, &done_a));
        assert_eq!(strip(&a.rows), strip(&one));
        let order: Vec<(String, u64)> = one.iter().map(|r| (r.method.clone(), r.seed)).collect();
        let expected: Vec<(String, u64)> = [1, 2, 3]
            .into_iter()
            .flat_map(|s| {
                [
                    ("zero-shot".to_string(), s),
                    ("clip-adapter".to_string(), s),
                ]
            })
            .collect();
        assert_eq!(order, expected);
        assert_eq!(done_a, (1..=6).collect::<Vec<_>>());
        assert_eq!(done_b, done_a);
        // A second run finds every row and fits nothing.
        let (again, _) = run(2, 4, &mut two);
        assert_eq!(again.unwrap().fitted, 0);
        assert_eq!(two.len(), 6);
    }

    /// A failing fit is reported, and the rows before it in grid order reach the sink.
    #[test]
    fn a_failing_fit_keeps_the_rows_before_it() {
        for threads in [1, 2] {
            let mut sink = Vec::new();
            let (outcome, _) = run(threads, 0, &mut sink);
            let err = outcome.unwrap_err();
            let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
            assert!(
                chain.contains("clip-adapter")
                    && chain.contains("seed 2")
                    && chain.contains("reduction"),
                "{chain}"
            );
            let kept: Vec<(String, u64)> =
                sink.iter().map(|r| (r.method.clone(), r.seed)).collect();
            // seed 1's two rows and seed 2's zero-shot precede the failing cell.
            assert_eq!(
                kept,
                [
                    ("zero-shot".to_string(), 1),
                    ("clip-adapter".to_string(), 1),
                    ("zero-shot".to_string(), 2)
                ],
                "{threads} threads"
            );
        }
    }
}
