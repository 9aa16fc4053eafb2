//! `libconnect._native`: the Python binding of libconnect, on pyo3.
//!
//! Thin by design (ARCHITECTURE.md, Principles: thin bindings): every function converts its
//! arguments, releases the GIL around anything that blocks or computes, calls the core and maps its
//! error through the one conversion in `errors.rs`. The Python package `libconnect` (in `python/`)
//! re-exports these classes and adds the standard-library glue (`ssl.SSLContext`, asyncio streams,
//! `makefile`).

mod agent;
mod errors;
mod net;
mod runtime;
mod service;

use pyo3::prelude::*;

use connect_core::ErrorKind;

/// `(code, numeric code, Python class)` for every error kind, for the tests.
#[pyfunction]
fn _error_table() -> Vec<(&'static str, u32, &'static str)> {
    ErrorKind::ALL
        .iter()
        .map(|k| (k.name(), k.code(), k.info().python_class))
        .collect()
}

/// Raises the exception the binding raises for the kind named `code`, for the tests.
#[pyfunction]
fn _raise_error(code: &str, detail: &str) -> errors::Result<()> {
    let kind = ErrorKind::from_name(code)
        .ok_or_else(|| errors::invalid(format!("unknown error code {code:?}")))?;
    Err(errors::error(kind, detail))
}

/// The class names the binding imports from `libconnect._errors`, for the tests.
#[pyfunction]
fn _exception_classes() -> Vec<&'static str> {
    errors::CLASS_NAMES.to_vec()
}

#[pymodule(gil_used = false)]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("core_version", connect_core::VERSION)?;
    m.add_class::<agent::Agent>()?;
    m.add_class::<agent::Intentions>()?;
    m.add_class::<agent::Ca>()?;
    m.add_class::<service::Service>()?;
    m.add_class::<service::Subscription>()?;
    m.add_class::<service::Authorization>()?;
    m.add_class::<net::PyListener>()?;
    m.add_class::<net::PyConnection>()?;
    m.add_function(wrap_pyfunction!(_error_table, m)?)?;
    m.add_function(wrap_pyfunction!(_raise_error, m)?)?;
    m.add_function(wrap_pyfunction!(_exception_classes, m)?)?;
    Ok(())
}
