//! The Python extension module `clip_adapter._native`: the `clip_adapter` library's models,
//! datasets, methods and experiment as Python classes and functions. The pure-Python package
//! around it (`python/clip_adapter`) adds progress bars, `Results` and pandas frames.
//!
//! Every computation runs with the GIL released; numpy inputs are read in place when they are
//! C-contiguous float32.

mod arrays;
mod check;
mod data;
mod errors;
mod experiment;
mod methods;
mod model;
mod plain;
mod pretrain;
mod progress;
mod spelling;

use pyo3::prelude::*;

// The command line's allocator and setting (`kernels::alloc`): the encoders' activations stay
// mapped between batches instead of being faulted in and zeroed again. The module's own
// allocations only: Python's objects keep Python's allocator, and numpy arrays made from Rust
// vectors are freed by this one.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Sets the number of worker threads for image decoding and tensor math (the command line's
/// `--threads`); call it before anything else computes (the pool starts once, with all cores
/// by default).
#[pyfunction]
fn set_threads(threads: usize) -> PyResult<()> {
    if threads == 0 {
        return Err(errors::input("threads = 0: expected at least 1"));
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| {
            errors::input(format!(
                "set_threads({threads}): {e} (call it before anything else computes)"
            ))
        })
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    clip_adapter::kernels::alloc::keep_freed_memory();
    spelling::install();
    errors::register(m)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    m.add_class::<model::PyClip>()?;
    m.add_function(wrap_pyfunction!(model::tokenize, m)?)?;
    m.add_class::<data::PyDataset>()?;
    m.add_function(wrap_pyfunction!(data::benchmarks, m)?)?;
    m.add_function(wrap_pyfunction!(data::extract, m)?)?;
    m.add_function(wrap_pyfunction!(data::import_features, m)?)?;
    m.add_class::<check::PyCheckReport>()?;
    m.add_function(wrap_pyfunction!(check::merge, m)?)?;
    m.add_function(wrap_pyfunction!(pretrain::pretrain, m)?)?;
    m.add_function(wrap_pyfunction!(experiment::tsne, m)?)?;
    m.add_class::<methods::PyHead>()?;
    m.add_class::<methods::PyTask>()?;
    m.add_function(wrap_pyfunction!(methods::fit, m)?)?;
    m.add_function(wrap_pyfunction!(methods::fit_cached, m)?)?;
    m.add_function(wrap_pyfunction!(methods::load_cached_task, m)?)?;
    m.add_function(wrap_pyfunction!(methods::methods, m)?)?;
    m.add_function(wrap_pyfunction!(methods::method_options, m)?)?;
    m.add_function(wrap_pyfunction!(methods::merge_lora, m)?)?;
    m.add("METHOD_OPTIONS", methods::option_names())?;
    m.add_function(wrap_pyfunction!(experiment::run, m)?)?;
    m.add_function(wrap_pyfunction!(experiment::merge_results, m)?)?;
    m.add_function(wrap_pyfunction!(experiment::sweep, m)?)?;
    m.add_function(wrap_pyfunction!(experiment::report, m)?)?;
    m.add_function(wrap_pyfunction!(experiment::read_results, m)?)?;
    m.add_function(wrap_pyfunction!(experiment::demo, m)?)?;
    Ok(())
}
