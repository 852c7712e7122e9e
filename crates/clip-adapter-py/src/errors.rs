//! The library's errors as Python exceptions: one base class, four kinds a program can catch
//! separately, the message the command line prints (every cause, outermost first) and the
//! causes one by one in `causes`.

use std::error::Error;

use clip_adapter::experiment::sweep::SweepError;
use clip_adapter::experiment::ExperimentError;
use clip_adapter::features::FeatureError;
use clip_adapter::methods::coop::CoopError;
use clip_adapter::methods::{MethodError as LibMethodError, UnknownMethod};
use clip_adapter::pretrain::PretrainError;
use clip_adapter::report::ReportError;
use clip_adapter::runner::encode::EncodeError;
use clip_adapter::runner::RunError;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyList;

pyo3::create_exception!(
    clip_adapter,
    ClipAdapterError,
    PyException,
    "Base class of every error clip-adapter raises; `causes` lists the chain of causes."
);
pyo3::create_exception!(
    clip_adapter,
    InputError,
    ClipAdapterError,
    "A value given to clip-adapter is not what it expects (shapes, labels, options, files)."
);
pyo3::create_exception!(
    clip_adapter,
    ModelError,
    ClipAdapterError,
    "A model cannot be found, read or used (or is not the one a head or cache needs)."
);
pyo3::create_exception!(
    clip_adapter,
    CacheError,
    ClipAdapterError,
    "The feature cache lacks, or cannot read, the features asked for."
);
pyo3::create_exception!(
    clip_adapter,
    MethodError,
    ClipAdapterError,
    "A method failed to train or to score (e.g. its loss diverged)."
);

/// Which exception an error becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Input,
    Model,
    Cache,
    Method,
    /// Anything else (files that cannot be written, ...): the base class.
    Other,
}

/// The kind of the outermost error of the chain that says what went wrong; `fallback` (the
/// caller's context: loading a model, fitting) when none does.
fn kind_of(err: &(dyn Error + 'static), fallback: Kind) -> Kind {
    let mut next = Some(err);
    while let Some(e) = next {
        let e = inner(e);
        if let Some(k) = own_kind(e) {
            return k;
        }
        next = e.source();
    }
    fallback
}

/// The error a transparent wrapper holds (its `source()` is its inner error's source, so
/// walking the chain would skip the inner error itself).
fn inner<'a>(e: &'a (dyn Error + 'static)) -> &'a (dyn Error + 'static) {
    let next: Option<&'a (dyn Error + 'static)> = if let Some(r) = e.downcast_ref::<RunError>() {
        match r {
            RunError::Experiment(x) => Some(x.as_ref()),
            RunError::Sweep(x) => Some(x.as_ref()),
            RunError::Report(x) => Some(x.as_ref()),
            RunError::Method(x) => Some(x.as_ref()),
            RunError::Coop(x) => Some(x.as_ref()),
            RunError::Clip(x) => Some(x.as_ref()),
            RunError::Features(x) => Some(x.as_ref()),
            RunError::Data(x) => Some(x.as_ref()),
            _ => None,
        }
    } else if let Some(x) = e.downcast_ref::<ExperimentError>() {
        match x {
            ExperimentError::Clip(x) => Some(x.as_ref()),
            ExperimentError::Coop(x) => Some(x.as_ref()),
            _ => None,
        }
    } else if let Some(x) = e.downcast_ref::<LibMethodError>() {
        match x {
            LibMethodError::Coop(x) => Some(x.as_ref()),
            _ => None,
        }
    } else if let Some(x) = e.downcast_ref::<FeatureError>() {
        match x {
            FeatureError::Model(x) => Some(x.as_ref()),
            FeatureError::Task(x) => Some(x.as_ref()),
            FeatureError::Limit(x) => Some(x),
            FeatureError::Data(x) => Some(x),
            _ => None,
        }
    } else if let Some(x) = e.downcast_ref::<CoopError>() {
        match x {
            CoopError::Method(x) => Some(x),
            CoopError::Model(x) => Some(x.as_ref()),
            _ => None,
        }
    } else if let Some(x) = e.downcast_ref::<ReportError>() {
        match x {
            ReportError::Experiment(x) => Some(x),
            _ => None,
        }
    } else if let Some(PretrainError::Clip(x)) = e.downcast_ref::<PretrainError>() {
        Some(x)
    } else if let Some(EncodeError::Model(x)) = e.downcast_ref::<EncodeError>() {
        Some(x)
    } else if let Some(SweepError::Options(x)) = e.downcast_ref::<SweepError>() {
        Some(x)
    } else {
        None
    };
    next.map_or(e, inner)
}

fn own_kind(e: &(dyn Error + 'static)) -> Option<Kind> {
    if let Some(e) = e.downcast_ref::<RunError>() {
        return match e {
            RunError::FindModel { .. }
            | RunError::LoadModel { .. }
            | RunError::Fingerprint { .. }
            | RunError::PromptModel { .. }
            | RunError::TextTower { .. }
            | RunError::HeadModel { .. }
            | RunError::HeadWidth { .. }
            | RunError::EncodePrompts { .. } => Some(Kind::Model),
            RunError::LoadTask { .. } => Some(Kind::Cache),
            RunError::MissingImages(_) => Some(Kind::Input),
            // Wrappers: their source says.
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<ExperimentError>() {
        return match e {
            ExperimentError::UnknownDataset { .. } => Some(Kind::Cache),
            ExperimentError::NotApplicable { .. }
            | ExperimentError::Protocol { .. }
            | ExperimentError::TooFewClasses(_)
            | ExperimentError::Empty { .. }
            | ExperimentError::Columns { .. }
            | ExperimentError::Published { .. } => Some(Kind::Input),
            ExperimentError::ModelMismatch { .. }
            | ExperimentError::FeaturesModel { .. }
            | ExperimentError::NoFingerprint { .. } => Some(Kind::Model),
            // "training M on D": the cause says whether the data or the method is at fault;
            // a cause that says neither is the method's failure.
            ExperimentError::Fit { source, .. } => Some(kind_of(source.as_ref(), Kind::Method)),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<LibMethodError>() {
        return match e {
            LibMethodError::Width { .. }
            | LibMethodError::Rows { .. }
            | LibMethodError::Label { .. }
            | LibMethodError::Empty { .. }
            | LibMethodError::Option { .. }
            | LibMethodError::NeedsPreProjection { .. }
            | LibMethodError::NeedsModel { .. }
            | LibMethodError::TooLarge { .. } => Some(Kind::Input),
            LibMethodError::Diverged { .. } | LibMethodError::NotPositiveDefinite { .. } => {
                Some(Kind::Method)
            }
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<FeatureError>() {
        return match e {
            FeatureError::BadImages { .. } | FeatureError::BadShard(_) => Some(Kind::Input),
            FeatureError::Write(_) => None,
            _ => Some(Kind::Cache),
        };
    }
    if let Some(e) = e.downcast_ref::<clip_adapter::features::import::ImportError>() {
        use clip_adapter::features::import::ImportError;
        return match e {
            ImportError::Model { .. } => Some(Kind::Model),
            ImportError::Write(_) => Some(Kind::Cache),
            _ => Some(Kind::Input),
        };
    }
    if let Some(e) = e.downcast_ref::<PretrainError>() {
        return match e {
            PretrainError::Options(_)
            | PretrainError::Shape(_)
            | PretrainError::Limit(_)
            | PretrainError::WouldOverwrite { .. } => Some(Kind::Input),
            PretrainError::Diverged { .. } => Some(Kind::Method),
            PretrainError::Clip(_) => None,
            _ => Some(Kind::Other),
        };
    }
    if e.is::<clip_adapter::limits::LimitError>() {
        return Some(Kind::Input);
    }
    if e.is::<SweepError>() || e.is::<UnknownMethod>() {
        return Some(Kind::Input);
    }
    if let Some(e) = e.downcast_ref::<clip_adapter::Error>() {
        return match e {
            clip_adapter::Error::Input(_)
            | clip_adapter::Error::SizeLimit(_)
            | clip_adapter::Error::Image(_) => Some(Kind::Input),
            clip_adapter::Error::ModelNotFound { .. } => Some(Kind::Model),
            _ => None,
        };
    }
    if let Some(e) = e.downcast_ref::<EncodeError>() {
        return match e {
            EncodeError::PixelCount { .. } | EncodeError::EmptyImage { .. } => Some(Kind::Input),
            EncodeError::Model(_) => None,
        };
    }
    if e.is::<clip_adapter::image::ImageError>() || e.is::<clip_adapter::data::DataError>() {
        return Some(Kind::Input);
    }
    None
}

/// The messages of the chain, outermost first, each once: a wrapper that repeats its cause's
/// text (a transparent error) adds nothing.
pub fn causes(err: &(dyn Error + 'static)) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let msg = e.to_string();
        if !msg.is_empty() && !out.iter().any(|m| m.contains(&msg)) {
            out.push(msg);
        }
        next = e.source();
    }
    out
}

/// The Python exception of a library error: the class its kind says, the message the command
/// line prints (`outer: inner: ...`) and `causes` (the same messages as a list).
pub fn to_py(err: &(dyn Error + 'static), fallback: Kind) -> PyErr {
    let causes = causes(err);
    let message = causes.join(": ");
    let pyerr = match kind_of(err, fallback) {
        Kind::Input => InputError::new_err(message),
        Kind::Model => ModelError::new_err(message),
        Kind::Cache => CacheError::new_err(message),
        Kind::Method => MethodError::new_err(message),
        Kind::Other => ClipAdapterError::new_err(message),
    };
    Python::attach(|py| {
        // Setting an attribute on a fresh exception instance cannot fail short of memory; the
        // exception is still raised (without `causes`) if it does.
        if let Ok(list) = PyList::new(py, &causes) {
            let _ = pyerr.value(py).setattr("causes", list);
        }
    });
    pyerr
}

/// A library result as a Python one.
pub trait OrRaise<T> {
    /// Raises the error as the exception its chain says, `fallback` when it says nothing.
    fn or_raise(self, fallback: Kind) -> PyResult<T>;
}

impl<T, E: Error + 'static> OrRaise<T> for Result<T, E> {
    fn or_raise(self, fallback: Kind) -> PyResult<T> {
        self.map_err(|e| to_py(&e, fallback))
    }
}

/// An `InputError` with this message.
pub fn input(msg: impl Into<String>) -> PyErr {
    let msg = msg.into();
    let err = InputError::new_err(msg.clone());
    Python::attach(|py| {
        if let Ok(list) = PyList::new(py, [msg]) {
            let _ = err.value(py).setattr("causes", list);
        }
    });
    err
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("ClipAdapterError", py.get_type::<ClipAdapterError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("CacheError", py.get_type::<CacheError>())?;
    m.add("MethodError", py.get_type::<MethodError>())?;
    Ok(())
}
