//! Progress from the library to Python. The library reports through callbacks and observers
//! while the GIL is released; each report takes the GIL for the Python call only. The Python
//! side is a callable `progress(stage, done, total)` (optionally with `close()`); by default a
//! tqdm bar per stage when tqdm is installed and stderr is a terminal or a notebook
//! (`clip_adapter._progress.auto`).

use clip_adapter::data::{DataError, Dataset, FewShot, Split};
use clip_adapter::experiment::{ExperimentError, GridEvent};
use clip_adapter::features::job::ExtractObserver;
use clip_adapter::features::Event;
use clip_adapter::methods::Progress as MethodProgress;
use clip_adapter::runner::{NoPublished, RunObserver};
use pyo3::exceptions::PyUserWarning;
use pyo3::prelude::*;

/// A Python progress callable, and the first error it raised (raised again when the work is
/// done: the library's work cannot be interrupted from a callback).
pub struct Progress {
    callback: Option<Py<PyAny>>,
    error: Option<PyErr>,
}

impl Progress {
    /// `None`: the default (tqdm bars where they can be seen); `False`: no progress; else the
    /// callable.
    pub fn new(py: Python<'_>, given: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let callback = match given {
            Some(p) if p.is_instance_of::<pyo3::types::PyBool>() => match p.is_truthy()? {
                true => Some(auto(py)?),
                false => None,
            },
            Some(p) => Some(p.clone().unbind()),
            None => Some(auto(py)?),
        };
        Ok(Progress {
            callback: callback.filter(|c| !c.is_none(py)),
            error: None,
        })
    }

    /// Calls `progress(stage, done, total)` with the GIL taken for the call.
    pub fn report(&mut self, stage: &str, done: u64, total: Option<u64>) {
        let Some(cb) = &self.callback else { return };
        if self.error.is_some() {
            return;
        }
        Python::attach(|py| {
            if let Err(e) = cb.call1(py, (stage, done, total)) {
                self.error = Some(e);
            }
        });
    }

    /// A note for the user, as a Python warning.
    pub fn warn(&mut self, message: &str) {
        Python::attach(|py| {
            let category = py.get_type::<PyUserWarning>();
            let text = std::ffi::CString::new(message.replace('\0', " ")).unwrap_or_default();
            if let Err(e) = PyErr::warn(py, &category, &text, 1) {
                // Warnings turned into errors (`-W error`) are raised when the work is done.
                self.error.get_or_insert(e);
            }
        });
    }

    /// Closes the bars; raises what the callback raised.
    pub fn finish(self, py: Python<'_>) -> PyResult<()> {
        if let Some(cb) = &self.callback {
            let cb = cb.bind(py);
            if cb.hasattr("close")? {
                cb.call_method0("close")?;
            }
        }
        self.error.map_or(Ok(()), Err)
    }
}

/// `clip_adapter._progress.auto()`: tqdm bars, or `None` where none would be seen.
fn auto(py: Python<'_>) -> PyResult<Py<PyAny>> {
    Ok(py
        .import("clip_adapter._progress")?
        .call_method0("auto")?
        .unbind())
}

impl RunObserver for Progress {
    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        self.report(&format!("downloading {file}"), done, total);
    }

    fn grid(&mut self, event: GridEvent) {
        match event {
            GridEvent::Row { done, total, .. } => {
                self.report("fits", done as u64, Some(total as u64))
            }
            GridEvent::Method(MethodProgress::Epoch { epoch, epochs, .. }) => {
                self.report("epochs", epoch as u64, Some(epochs as u64))
            }
            GridEvent::Method(MethodProgress::Search { done, total }) => {
                self.report("validation search", done as u64, Some(total as u64))
            }
            GridEvent::Fitting { .. } => {}
        }
    }

    fn no_published(&mut self, why: &NoPublished) {
        self.warn(&format!(
            "the tables leave the published numbers out: {why}"
        ));
    }

    fn encoding(&mut self, done: usize, total: usize) {
        self.report("encoding images", done as u64, Some(total as u64));
    }

    fn model_mismatch(&mut self, why: &ExperimentError) {
        self.warn(&format!("going on with another model, as allowed: {why}"));
    }
}

impl clip_adapter::features::import::ImportObserver for Progress {
    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        self.report(&format!("downloading {file}"), done, total);
    }

    fn prompts(&mut self, done: usize, total: usize) {
        self.report("class prompts", done as u64, Some(total as u64));
    }
}

impl ExtractObserver for Progress {
    fn prompts(&mut self, done: usize, total: usize) {
        self.report("class prompts", done as u64, Some(total as u64));
    }

    fn prompts_rebuilt(&mut self, reason: &str) {
        self.warn(&format!("{reason}; encoding the class prompts again"));
    }

    fn event(&mut self, event: &Event) {
        match event {
            Event::Start { set, total, done } | Event::Progress { set, total, done } => {
                self.report(set, *done as u64, Some(*total as u64))
            }
            other => {
                if let Some(note) = other.notice() {
                    self.warn(&note);
                }
            }
        }
    }

    fn download(&mut self, file: &str, done: u64, total: Option<u64>) {
        self.report(&format!("downloading {file}"), done, total);
    }

    fn short_classes(&mut self, few: &FewShot, dataset: &Dataset) {
        for split in [Split::Train, Split::Val] {
            let short: Vec<_> = few.short.iter().filter(|s| s.split == split).collect();
            let Some(first) = short.first() else { continue };
            let classes: Vec<String> = (short.iter().take(5))
                .map(|s| {
                    let name = dataset.classnames.get(s.label).map_or("", String::as_str);
                    format!("{} `{name}` ({})", s.label, s.available)
                })
                .collect();
            let more = if short.len() > 5 { ", ..." } else { "" };
            self.warn(&format!(
                "{} of {} classes have fewer than the {} {} image(s) asked for; all of theirs \
                 are used (as CoOp does): {}{more}",
                short.len(),
                dataset.classnames.len(),
                first.requested,
                split.name(),
                classes.join(", ")
            ));
        }
    }

    fn skipping_missing(&mut self, why: &DataError) {
        self.warn(&format!("{why}; they will be skipped"));
    }
}
