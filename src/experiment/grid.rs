//! The grid: methods × datasets × shots × seeds. Each few-shot draw is loaded once and every
//! method is fitted on it; a row already in the results (same identity, see [`RowKey`]) is
//! not fitted again.

use std::rc::Rc;
use std::time::Instant;

use super::{ExperimentError, ResultRow, RowKey, RowSource, Validation};
use crate::methods::coop::{self, CoopHead, PromptModel};
use crate::methods::{self, FewShotTask, Fitted, Method};

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
#[derive(Debug, Clone, PartialEq)]
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
}

impl Grid {
    pub fn cells(&self) -> usize {
        self.methods.len() * self.datasets.len() * self.shots.len() * self.seeds.len()
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
}

impl RowSpec<'_> {
    fn key(&self) -> RowKey {
        RowKey {
            method: self.method.label.clone(),
            options: self.method.options.clone(),
            dataset: self.dataset.to_string(),
            shots: self.shots,
            seed: self.seed,
            validation: self.validation,
            model: self.source.model.clone(),
            features: self.source.features.clone(),
        }
    }
}

/// Gives the task of a draw `(dataset, shots, seed)` and where its features came from.
pub type Loader<'a, E> = dyn FnMut(&str, usize, u64) -> Result<(FewShotTask, RowSource), E> + 'a;

/// Gives the model a CoOp fit trains through: the one that made the features of `source`.
/// Called only when a CoOp row is fitted; the caller loads it once.
pub type ModelLoader<'a, E> = dyn FnMut(&RowSource) -> Result<Rc<PromptModel>, E> + 'a;

/// A fitted method: the head on features, and CoOp's own head (what `fit --save` writes for
/// CoOp: the learned context, re-encoded through the model when used).
#[derive(Debug, Clone)]
pub struct Trained {
    pub fitted: Fitted,
    pub coop: Option<CoopHead>,
}

/// Fits `method` on `task` under the protocol of `spec` (without the validation set for
/// [`Validation::None`]), evaluates it, and makes the row. CoOp needs `model`, the model that
/// made the task's features.
pub fn fit_row(
    method: &Method,
    task: &FewShotTask,
    spec: &RowSpec,
    model: Option<&PromptModel>,
    progress: &mut dyn FnMut(methods::Progress),
) -> Result<(Trained, ResultRow), ExperimentError> {
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
    let trained = match (method, model) {
        (Method::Coop(o), Some(model)) => {
            let c = coop::fit(task, model, o, progress).map_err(|e| fit_error(Box::new(e)))?;
            Trained {
                fitted: c.fitted,
                coop: Some(c.head),
            }
        }
        _ => Trained {
            fitted: methods::fit(method, task, progress).map_err(|e| fit_error(Box::new(e)))?,
            coop: None,
        },
    };
    let fitted = &trained.fitted;
    // Milliseconds are all a training time needs.
    let seconds = (start.elapsed().as_secs_f64() * 1e3).round() / 1e3;
    let (val, test) = methods::evaluate(&fitted.head, task);
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
    };
    Ok((trained, row))
}

/// Runs the grid: for each dataset, shot count and seed, `load` gives the draw's task and its
/// source, and for each method `configure(method index, dataset, seed)` gives the method to fit;
/// `model` gives CoOp the model behind a draw's features.
///
/// The error type is the caller's, so that `load` reports its own failures unchanged.
pub fn run_grid<E: From<ExperimentError>>(
    grid: &Grid,
    sink: &mut dyn RowSink,
    load: &mut Loader<E>,
    model: &mut ModelLoader<E>,
    configure: &mut dyn FnMut(usize, &str, u64) -> Method,
    events: &mut dyn FnMut(GridEvent),
) -> Result<GridOutcome, E> {
    let total = grid.cells();
    let mut out = GridOutcome {
        rows: Vec::with_capacity(total),
        fitted: 0,
    };
    for dataset in &grid.datasets {
        for &shots in &grid.shots {
            for &seed in &grid.seeds {
                // Loaded even when every row is done: the rows' identity includes the features.
                let (task, source) = load(dataset, shots, seed)?;
                // Dropped once for every method of the draw.
                let task = grid.validation.apply(task);
                for (i, m) in grid.methods.iter().enumerate() {
                    let spec = RowSpec {
                        method: m,
                        dataset,
                        shots,
                        seed,
                        validation: grid.validation,
                        source: &source,
                    };
                    if let Some(row) = sink.find(&spec.key()) {
                        out.rows.push(row.clone());
                        events(GridEvent::Row {
                            row,
                            skipped: true,
                            done: out.rows.len(),
                            total,
                        });
                        continue;
                    }
                    events(GridEvent::Fitting {
                        method: &m.label,
                        dataset,
                        shots,
                        seed,
                    });
                    let method = configure(i, dataset, seed);
                    let prompt_model = match method {
                        Method::Coop(_) => Some(model(&source)?),
                        _ => None,
                    };
                    let (_, row) =
                        fit_row(&method, &task, &spec, prompt_model.as_deref(), &mut |p| {
                            events(GridEvent::Method(p))
                        })?;
                    sink.push(row.clone())?;
                    out.fitted += 1;
                    out.rows.push(row);
                    events(GridEvent::Row {
                        row: &out.rows[out.rows.len() - 1],
                        skipped: false,
                        done: out.rows.len(),
                        total,
                    });
                }
            }
        }
    }
    Ok(out)
}
