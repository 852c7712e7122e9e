//! Checking a dataset against the disk (`clip-adapter datasets`) and joining extraction shards
//! (`clip-adapter merge`).

use std::path::PathBuf;
use std::sync::Mutex;

use clip_adapter::data::check::{check, decode_all, CheckReport};
use clip_adapter::features::merge::merge as merge_shards;
use pyo3::prelude::*;

use crate::data::PyDataset;
use crate::errors::{Kind, OrRaise};
use crate::plain::to_python;
use crate::progress::Progress;

/// Problems listed in `summary()` per kind, unless `verbose` (the command line's default).
const FIRST: usize = 5;

/// A dataset's check (`clip-adapter datasets`, made by `Dataset.check`): images listed per
/// split and class, files missing from the disk, classes without a training image, split sizes
/// that differ from the published ones and, after `decode=True`, images that do not decode.
/// `to_dict()` is the command line's `--json` report.
#[pyclass(name = "CheckReport", module = "clip_adapter", frozen)]
pub struct PyCheckReport {
    report: CheckReport,
}

#[pymethods]
impl PyCheckReport {
    /// The dataset's name.
    #[getter]
    fn dataset(&self) -> &str {
        &self.report.dataset
    }

    /// Number of classes.
    #[getter]
    fn classes(&self) -> usize {
        self.report.classes
    }

    /// The folder the image paths are relative to.
    #[getter]
    fn image_root(&self) -> PathBuf {
        self.report.image_root.clone()
    }

    /// `[{"split", "listed", "published", "missing": [path, ...]}, ...]`, train, val, test.
    #[getter]
    fn splits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.report.splits)
    }

    /// `[{"label", "name", "train", "val", "test"}, ...]`: images per class and split.
    #[getter]
    fn per_class<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.report.per_class)
    }

    /// Whether every image on disk was decoded (`decode=True`).
    #[getter]
    fn decoded(&self) -> bool {
        self.report.decoded
    }

    /// `[{"impath", "reason"}, ...]`: images that do not decode (empty unless `decoded`).
    #[getter]
    fn unreadable<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.report.unreadable)
    }

    /// Listed images that are not on disk, all splits together.
    #[getter]
    fn missing(&self) -> usize {
        self.report.missing()
    }

    /// Images the splits list, all together.
    #[getter]
    fn listed(&self) -> usize {
        self.report.listed()
    }

    /// Missing and unreadable files, classes without a training image and split sizes that
    /// differ from the published ones: 0 when the dataset is ready to extract (the command
    /// line fails otherwise).
    #[getter]
    fn problems(&self) -> usize {
        self.report.problems()
    }

    /// The report for people, as the command line prints it: the first 5 items of each
    /// problem, every item with `verbose=True`.
    #[pyo3(signature = (verbose = false))]
    fn summary(&self, verbose: bool) -> String {
        let shown = if verbose { usize::MAX } else { FIRST };
        self.report
            .summary(shown, " (summary(verbose=True) lists them all)")
    }

    /// The command line's `--json` report: `{"dataset", "classes", "image_root", "splits",
    /// "test_only", "missing_classes", "per_class", "decoded", "unreadable"}`.
    fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        to_python(py, &self.report)
    }

    fn __str__(&self) -> String {
        self.summary(false)
    }

    fn __repr__(&self) -> String {
        let decoded = match self.report.decoded {
            true => format!(", unreadable={}", self.report.unreadable.len()),
            false => String::new(),
        };
        format!(
            "CheckReport({:?}, classes={}, listed={}, missing={}{decoded}, problems={})",
            self.report.dataset,
            self.report.classes,
            self.report.listed(),
            self.report.missing(),
            self.report.problems()
        )
    }
}

/// Reports at most this many times while decoding (besides the last image).
const DECODE_REPORTS: usize = 200;

/// `Dataset.check`: the tally, then (with `decode`) every image on disk decoded in parallel,
/// reporting `("decoding images", done, total)`.
pub fn check_dataset(
    py: Python<'_>,
    dataset: &PyDataset,
    decode: bool,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyCheckReport> {
    let published = dataset.benchmark.map(|b| b.published);
    let mut report = py.detach(|| check(&dataset.dataset, published));
    if decode {
        let total = report.listed() - report.missing();
        let step = (total / DECODE_REPORTS).max(1);
        // Decoding threads report in any order: only a count above the last one reported
        // moves the bar.
        let state = Mutex::new((Progress::new(py, progress)?, 0usize));
        let on_done = |done: usize| {
            if !done.is_multiple_of(step) && done != total {
                return;
            }
            let Ok(mut s) = state.lock() else { return };
            if done > s.1 {
                s.1 = done;
                s.0.report("decoding images", done as u64, Some(total as u64));
            }
        };
        py.detach(|| decode_all(&dataset.dataset, &mut report, &on_done));
        let (p, _) = state.into_inner().unwrap_or_else(|e| e.into_inner());
        p.finish(py)?;
    }
    Ok(PyCheckReport { report })
}

/// Joins the shard files that `extract(..., shard="i/n")` wrote under `cache` into complete
/// feature files (`clip-adapter merge`): every set whose `n` shards are all there, checked to
/// share one key and to hold consecutive rows. Shards are kept; merging again writes the same
/// files. Returns `[{"path", "shards", "rows"}, ...]` (the command line's `--json`), empty
/// when there is no shard file.
#[pyfunction]
#[pyo3(signature = (cache = PathBuf::from("clip-adapter-cache")))]
pub fn merge(py: Python<'_>, cache: PathBuf) -> PyResult<Bound<'_, PyAny>> {
    let merged = py.detach(|| merge_shards(&cache)).or_raise(Kind::Cache)?;
    to_python(py, &merged)
}
