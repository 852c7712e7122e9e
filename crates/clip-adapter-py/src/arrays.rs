//! numpy in and out. A C-contiguous `float32` matrix is read where it lies (no copy); anything
//! else array-like is converted once by numpy. Outputs are new arrays that own their data.

use clip_adapter::methods::Matrix;
use numpy::ndarray::Array2;
use numpy::{IntoPyArray, PyArray1, PyArray2, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::input;

/// A `(rows, cols)` float32 matrix borrowed from numpy.
pub struct Rows<'py> {
    array: PyReadonlyArray2<'py, f32>,
}

impl Rows<'_> {
    pub fn rows(&self) -> usize {
        self.array.shape()[0]
    }

    pub fn cols(&self) -> usize {
        self.array.shape()[1]
    }

    /// The values, row-major. Only C-contiguous arrays are ever held.
    pub fn data(&self) -> &[f32] {
        self.array.as_slice().unwrap_or(&[])
    }

    /// An owned copy, for the library types that own their rows (a task to fit on).
    pub fn to_matrix(&self) -> Matrix {
        Matrix {
            rows: self.rows(),
            cols: self.cols(),
            data: self.data().to_vec(),
        }
    }
}

/// `obj` as a float32 matrix: borrowed when it is a C-contiguous float32 array, else
/// converted once with `numpy.ascontiguousarray(obj, dtype=float32)`.
pub fn float_rows<'py>(obj: &Bound<'py, PyAny>, what: &str) -> PyResult<Rows<'py>> {
    if let Ok(array) = obj.extract::<PyReadonlyArray2<'py, f32>>() {
        if array.as_slice().is_ok() {
            return Ok(Rows { array });
        }
    }
    let converted = ascontiguous(obj, "float32", what)?;
    let ndim = converted.getattr("ndim")?.extract::<usize>()?;
    if ndim != 2 {
        let shape = converted.getattr("shape")?.repr()?.to_string();
        return Err(input(format!(
            "{what} must be a 2-D array (rows, features), got shape {shape}"
        )));
    }
    let array = converted
        .extract::<PyReadonlyArray2<'py, f32>>()
        .map_err(|e| input(format!("{what}: {e}")))?;
    Ok(Rows { array })
}

/// `obj` as class indices (`(N,)` integers, none negative).
pub fn labels(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Vec<usize>> {
    let converted = ascontiguous(obj, "int64", what)?;
    let ndim = converted.getattr("ndim")?.extract::<usize>()?;
    if ndim != 1 {
        let shape = converted.getattr("shape")?.repr()?.to_string();
        return Err(input(format!(
            "{what} must be a 1-D array of class indices, got shape {shape}"
        )));
    }
    let values: Vec<i64> = converted.call_method0("tolist")?.extract()?;
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            usize::try_from(v).map_err(|_| {
                input(format!(
                    "{what}[{i}] is {v}: labels are class indices, 0 or more"
                ))
            })
        })
        .collect()
}

/// `numpy.ascontiguousarray(obj, dtype=dtype)`, its failure an `InputError` naming `what`.
pub fn ascontiguous<'py>(
    obj: &Bound<'py, PyAny>,
    dtype: &str,
    what: &str,
) -> PyResult<Bound<'py, PyAny>> {
    let py = obj.py();
    let kwargs = PyDict::new(py);
    kwargs.set_item("dtype", dtype)?;
    py.import("numpy")?
        .call_method("ascontiguousarray", (obj,), Some(&kwargs))
        .map_err(|e| {
            input(format!(
                "{what} must be an array of numbers ({dtype}): {}",
                e.value(py)
            ))
        })
}

/// A new `(rows, cols)` float32 array owning `data`.
pub fn matrix_out<'py>(
    py: Python<'py>,
    rows: usize,
    cols: usize,
    data: Vec<f32>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let array = Array2::from_shape_vec((rows, cols), data)
        .map_err(|e| input(format!("a {rows}×{cols} result: {e}")))?;
    Ok(array.into_pyarray(py))
}

/// A new 1-D int64 array.
pub fn indices_out(py: Python<'_>, v: Vec<usize>) -> Bound<'_, PyArray1<i64>> {
    PyArray1::from_vec(py, v.into_iter().map(|i| i as i64).collect())
}
