//! The experiment: `run` (methods × datasets × shots × seeds on cached features), `sweep` (the
//! paper's ablations), `merge_results` (a grid's shards joined), `report` (a results folder's tables and figures), `read_results`. Each
//! returns the rows as dicts with the columns of results.csv; the Python package wraps them
//! into `Results`.

use std::path::PathBuf;

use clip_adapter::clip::hub::HubOptions;
use clip_adapter::demo::{task_names, DemoEvent, DemoOptions};
use clip_adapter::experiment::sweep::SweepParam;
use clip_adapter::experiment::{Published, ResultRow};
use clip_adapter::features::Shard;
use clip_adapter::report::{read_results as read_rows, Report, ReportOptions};
use clip_adapter::runner::{self, published_for_rows, RunSpec, SweepSpec};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::{input, Kind, OrRaise};
use crate::methods::{method_kind, overrides};
use crate::progress::Progress;

/// A results row as a dict, keys in the order of results.csv's columns.
pub fn row_dict<'py>(py: Python<'py>, r: &ResultRow) -> PyResult<Bound<'py, PyAny>> {
    let d = PyDict::new(py);
    d.set_item("method", &r.method)?;
    d.set_item("options", &r.options)?;
    d.set_item("dataset", &r.dataset)?;
    d.set_item("shots", r.shots)?;
    d.set_item("seed", r.seed)?;
    d.set_item("validation", r.validation.as_str())?;
    d.set_item("model", &r.model)?;
    d.set_item("model_name", &r.model_name)?;
    d.set_item("features", &r.features)?;
    d.set_item("val_accuracy", r.val_accuracy)?;
    d.set_item("test_accuracy", r.test_accuracy)?;
    d.set_item("train_seconds", r.train_seconds)?;
    d.set_item("chosen", &r.chosen)?;
    d.set_item("augmentation", &r.augmentation)?;
    Ok(d.into_any())
}

fn rows_list<'py>(py: Python<'py>, rows: &[ResultRow]) -> PyResult<Bound<'py, PyList>> {
    let list = PyList::empty(py);
    for r in rows {
        list.append(row_dict(py, r)?)?;
    }
    Ok(list)
}

fn files_dict<'py>(
    out: &Bound<'py, PyDict>,
    report: &clip_adapter::report::ReportFiles,
) -> PyResult<()> {
    out.set_item("report", &report.report)?;
    out.set_item("figures", &report.figures)?;
    Ok(())
}

fn validation(name: &str) -> PyResult<clip_adapter::experiment::Validation> {
    name.parse().or_raise(Kind::Input)
}

/// Runs the grid (`clip-adapter run`): every method on every dataset × shots × seed draw of
/// the cache, rows already in `out`/results.csv kept, then results.md and the folder's report.
/// Returns `{"rows", "fitted", "results_csv", "table", "report", "figures", "seconds"}`.
#[pyfunction]
#[pyo3(signature = (
    methods, datasets, *, shots = vec![1, 2, 4, 8, 16], seeds = vec![1, 2, 3],
    cache = PathBuf::from("clip-adapter-cache"), out = PathBuf::from("results"), model = None,
    reported = None, validation = "val", protocol = "few-shot", source = None, shard = None,
    progress = None, **options
))]
#[allow(clippy::too_many_arguments)]
pub fn run<'py>(
    py: Python<'py>,
    methods: Vec<String>,
    datasets: Vec<String>,
    shots: Vec<usize>,
    seeds: Vec<u64>,
    cache: PathBuf,
    out: PathBuf,
    model: Option<String>,
    reported: Option<PathBuf>,
    validation: &str,
    protocol: &str,
    source: Option<String>,
    shard: Option<String>,
    progress: Option<&Bound<'py, PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    if shots.contains(&0) {
        return Err(input("shots: every shot count must be at least 1"));
    }
    let shard = (shard.as_deref())
        .map(str::parse::<Shard>)
        .transpose()
        .or_raise(Kind::Input)?;
    let spec = RunSpec {
        cache,
        out,
        datasets: datasets.iter().map(|d| d.trim().to_string()).collect(),
        shots,
        seeds,
        methods: (methods.iter())
            .map(|m| method_kind(m))
            .collect::<PyResult<_>>()?,
        overrides: overrides(options)?,
        validation: self::validation(validation)?,
        protocol: protocol.parse().or_raise(Kind::Input)?,
        source,
        model,
        reported,
        hub: HubOptions::from_env(),
        shard,
    };
    let mut p = Progress::new(py, progress)?;
    let outcome = py.detach(|| runner::run(&spec, &mut p));
    p.finish(py)?;
    let o = outcome.or_raise(Kind::Method)?;
    let d = PyDict::new(py);
    d.set_item("rows", rows_list(py, &o.rows)?)?;
    d.set_item("fitted", o.fitted)?;
    d.set_item("results_csv", &o.results_csv)?;
    d.set_item("table", &o.table)?;
    match &o.report {
        Some(report) => files_dict(&d, report)?,
        // A shard writes no report.
        None => {
            d.set_item("report", py.None())?;
            d.set_item("figures", PyList::empty(py))?;
        }
    }
    d.set_item("seconds", o.seconds)?;
    Ok(d)
}

/// Joins the results of a grid's shards (`run(..., shard="i/n", out=folder)`) into
/// `folder`/results.csv, in the order one run writes (`clip-adapter merge --results`),
/// refusing unfinished shards and rows that disagree; then results.md and the folder's report.
/// Returns `{"rows", "added", "shards", "results_csv", "table", "report", "figures"}`.
#[pyfunction]
#[pyo3(signature = (folder, *, reported = None, progress = None))]
pub fn merge_results<'py>(
    py: Python<'py>,
    folder: PathBuf,
    reported: Option<PathBuf>,
    progress: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let spec = runner::JoinSpec {
        dir: folder,
        reported,
        hub: HubOptions::from_env(),
    };
    let mut p = Progress::new(py, progress)?;
    let outcome = py.detach(|| runner::join_shards(&spec, &mut p));
    p.finish(py)?;
    let o = outcome.or_raise(Kind::Input)?;
    let d = PyDict::new(py);
    d.set_item("rows", rows_list(py, &o.rows)?)?;
    d.set_item("added", o.added)?;
    d.set_item("shards", o.shards)?;
    d.set_item("results_csv", &o.results_csv)?;
    d.set_item("table", &o.table)?;
    files_dict(&d, &o.report)?;
    Ok(d)
}

/// The paper's ablations of CLIP-Adapter (`clip-adapter sweep`): `over` is `"reduction"` or
/// `"alpha"`, `values` the swept values (default: the paper's). Returns what `run` returns.
#[pyfunction]
#[pyo3(signature = (
    over, datasets, *, values = Vec::new(), shots = vec![16], seeds = vec![1, 2, 3],
    cache = PathBuf::from("clip-adapter-cache"), out = PathBuf::from("results"), model = None,
    validation = "val", progress = None, **options
))]
#[allow(clippy::too_many_arguments)]
pub fn sweep<'py>(
    py: Python<'py>,
    over: &str,
    datasets: Vec<String>,
    values: Vec<Bound<'py, PyAny>>,
    shots: Vec<usize>,
    seeds: Vec<u64>,
    cache: PathBuf,
    out: PathBuf,
    model: Option<String>,
    validation: &str,
    progress: Option<&Bound<'py, PyAny>>,
    options: Option<&Bound<'py, PyDict>>,
) -> PyResult<Bound<'py, PyDict>> {
    if shots.contains(&0) {
        return Err(input("shots: every shot count must be at least 1"));
    }
    let param = over.trim().parse::<SweepParam>().or_raise(Kind::Input)?;
    // The values as the command line reads them: numbers written out, so that `0.2` and
    // "0.2" sweep the same point.
    let values = values
        .iter()
        .map(|v| Ok(v.str()?.to_string()))
        .collect::<PyResult<Vec<String>>>()?;
    let spec = SweepSpec {
        cache,
        out,
        param,
        values,
        datasets: datasets.iter().map(|d| d.trim().to_string()).collect(),
        shots,
        seeds,
        overrides: overrides(options)?,
        validation: self::validation(validation)?,
        model,
    };
    let mut p = Progress::new(py, progress)?;
    let outcome = py.detach(|| runner::sweep(&spec, &mut p));
    p.finish(py)?;
    let o = outcome.or_raise(Kind::Method)?;
    let d = PyDict::new(py);
    d.set_item("rows", rows_list(py, &o.rows)?)?;
    d.set_item("fitted", o.fitted)?;
    d.set_item("results_csv", &o.results_csv)?;
    d.set_item("table", &o.table)?;
    files_dict(&d, &o.report)?;
    d.set_item("seconds", o.seconds)?;
    Ok(d)
}

/// Writes a results folder's report (`clip-adapter report`): report.md and the figures (SVG
/// and PNG) in `folder`/figures. Returns `{"rows", "report", "figures"}`.
#[pyfunction]
#[pyo3(signature = (folder, *, reported = None, progress = None))]
pub fn report<'py>(
    py: Python<'py>,
    folder: PathBuf,
    reported: Option<PathBuf>,
    progress: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut p = Progress::new(py, progress)?;
    let written = py.detach(|| -> PyResult<_> {
        let reported = (reported.as_deref())
            .map(Published::read)
            .transpose()
            .or_raise(Kind::Input)?;
        let rows = read_rows(&folder).or_raise(Kind::Input)?;
        let (published, backbone) =
            published_for_rows(reported.as_ref(), &rows, &HubOptions::from_env(), &mut p);
        let options = ReportOptions {
            published,
            backbone,
            ..ReportOptions::default()
        };
        let files = Report::new(&rows, &options)
            .write(&folder)
            .or_raise(Kind::Other)?;
        Ok((rows, files))
    });
    p.finish(py)?;
    let (rows, files) = written?;
    let d = PyDict::new(py);
    d.set_item("rows", rows_list(py, &rows)?)?;
    files_dict(&d, &files)?;
    Ok(d)
}

/// The rows of a results folder's results.csv, without writing anything.
#[pyfunction]
pub fn read_results(py: Python<'_>, folder: PathBuf) -> PyResult<Bound<'_, PyList>> {
    let rows = py.detach(|| read_rows(&folder)).or_raise(Kind::Input)?;
    rows_list(py, &rows)
}

/// The embedded demo (`clip-adapter demo`): tasks generated close to and far from the world
/// the embedded model was pretrained on, encoded, every method fitted at `shots` × `seeds`,
/// the report and the t-SNE figure written into `out`. Returns what `run` returns, and
/// `markdown` (the report).
#[pyfunction]
#[pyo3(signature = (
    out = PathBuf::from("clip-adapter-demo"), *, model = None, shots = vec![1, 2, 4, 8, 16],
    seeds = vec![1, 2, 3], tasks = Vec::new(), progress = None
))]
pub fn demo<'py>(
    py: Python<'py>,
    out: PathBuf,
    model: Option<PathBuf>,
    shots: Vec<usize>,
    seeds: Vec<u64>,
    tasks: Vec<String>,
    progress: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    if shots.is_empty() || shots.contains(&0) {
        return Err(input("shots: give shot counts of at least 1"));
    }
    let known = task_names();
    if let Some(t) = tasks.iter().find(|t| !known.contains(&t.as_str())) {
        return Err(input(format!(
            "unknown demo task `{t}`; expected one of: {}",
            known.join(", ")
        )));
    }
    let defaults = DemoOptions::default();
    let options = DemoOptions {
        model_dir: model.unwrap_or(defaults.model_dir.clone()),
        out,
        shots,
        seeds,
        tasks,
        ..defaults
    };
    let mut p = Progress::new(py, progress)?;
    let outcome = py.detach(|| {
        runner::demo(&options, &mut |event| {
            if let DemoEvent::Fitted { done, total } = event {
                p.report("fits", done as u64, Some(total as u64));
            }
        })
    });
    p.finish(py)?;
    let o = outcome.or_raise(Kind::Method)?;
    let d = PyDict::new(py);
    d.set_item("rows", rows_list(py, &o.report.rows)?)?;
    d.set_item("fitted", o.report.rows.len())?;
    d.set_item("results_csv", &o.results_csv)?;
    d.set_item("table", &o.markdown)?;
    files_dict(&d, &o.files)?;
    d.set_item("seconds", o.report.seconds)?;
    Ok(d)
}

/// The paper's Fig. 5 (`clip-adapter tsne`): a split of a cached task mapped to 2-D with
/// t-SNE, and the classes' separation. With `adapter` (a saved CLIP-Adapter head with a visual
/// adapter): the features before and after it; returns `{"classnames", "labels", "options",
/// "before", "after", "figure"}`, where `before` and `after` are `{"coordinates": [[x, y], ...],
/// "features": {"knn_accuracy", "silhouette"}, "map": {...}, "trustworthiness"}`. With `heads`
/// instead (saved heads of any method on the cached features, CoOp's included): one panel for
/// zero-shot CLIP and one per head of the images' centred class scores, titled by `labels`
/// [default: the heads' methods]; returns `{"classnames", "labels", "options", "panels",
/// "figure"}`, each panel `{"name", "accuracy", "view", "image_features"}`. `split` is `"test"`
/// (the whole test split, as the paper), `"val"` or `"train"`. With `out`, the figure is
/// written to `out.svg` and `out.png`.
#[pyfunction]
#[pyo3(signature = (
    dataset, shots, seed, adapter = None, *, heads = None, labels = None, split = "test",
    perplexity = 30.0, epochs = 1000, model = None, cache = PathBuf::from("clip-adapter-cache"),
    out = None
))]
#[allow(clippy::too_many_arguments)]
pub fn tsne<'py>(
    py: Python<'py>,
    dataset: &str,
    shots: &Bound<'py, PyAny>,
    seed: u64,
    adapter: Option<PathBuf>,
    heads: Option<Vec<PathBuf>>,
    labels: Option<Vec<String>>,
    split: &str,
    perplexity: f32,
    epochs: usize,
    model: Option<String>,
    cache: PathBuf,
    out: Option<PathBuf>,
) -> PyResult<Bound<'py, PyAny>> {
    use clip_adapter::features::task::CacheQuery;
    use clip_adapter::tsne::{adapter_tsne_from_cache, Split, TsneOptions};
    let shots = crate::methods::shots_arg(shots)?;
    let split: Split = split.parse().map_err(|e| input(format!("split: {e}")))?;
    let opts = TsneOptions {
        perplexity,
        epochs,
        seed,
        ..TsneOptions::default()
    };
    let query = CacheQuery {
        model,
        ..CacheQuery::new(&cache, dataset, shots, seed)
    };
    let (tsne, figure) = match (adapter, heads) {
        (Some(adapter), None) => {
            if labels.is_some() {
                return Err(input(
                    "labels title the panels of `heads`, not of `adapter`",
                ));
            }
            let made = py.detach(|| adapter_tsne_from_cache(&query, &adapter, split, &opts));
            let made = made.or_raise(Kind::Input)?;
            let figure = match &out {
                Some(stem) => made.tsne.write_figure(stem).or_raise(Kind::Input)?.to_vec(),
                None => Vec::new(),
            };
            (crate::plain::to_python(py, &made.tsne)?, figure)
        }
        (None, Some(heads)) => {
            let labels = labels.unwrap_or_default();
            if labels.len() > heads.len() {
                return Err(input(format!(
                    "{} labels for {} heads: give at most one title per head",
                    labels.len(),
                    heads.len()
                )));
            }
            let spec = runner::tsne::HeadsTsneSpec {
                query,
                heads: (heads.into_iter().enumerate())
                    .map(|(i, path)| runner::tsne::PanelHead {
                        path,
                        label: labels.get(i).cloned(),
                    })
                    .collect(),
                split,
                options: opts,
                hub: HubOptions::from_env(),
            };
            let made = py.detach(|| runner::tsne::heads_tsne(&spec, &mut ()));
            let made = made.or_raise(Kind::Input)?;
            let figure = match &out {
                Some(stem) => made.tsne.write_figure(stem).or_raise(Kind::Input)?.to_vec(),
                None => Vec::new(),
            };
            (crate::plain::to_python(py, &made.tsne)?, figure)
        }
        _ => return Err(input("give either `adapter` or `heads`")),
    };
    tsne.set_item("figure", figure)?;
    Ok(tsne)
}
