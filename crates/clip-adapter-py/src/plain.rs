//! Library values as plain Python data: what the command line prints with `--json`, as the
//! dicts, lists, strings and numbers `json.loads` gives.

use pyo3::prelude::*;
use serde::Serialize;

use crate::errors::{Kind, OrRaise};

/// `value` as `json.loads(its JSON)`: the command line's `--json` output, as Python objects.
pub fn to_python<'py, T: Serialize + ?Sized>(
    py: Python<'py>,
    value: &T,
) -> PyResult<Bound<'py, PyAny>> {
    let json = serde_json::to_string(value).or_raise(Kind::Other)?;
    py.import("json")?.call_method1("loads", (json,))
}
