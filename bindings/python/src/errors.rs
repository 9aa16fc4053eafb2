//! From libconnect's [`connect_core::Error`] to the Python exceptions of `libconnect._errors`.
//!
//! The class of every kind comes from the shared table (`ErrorKind::info().python_class`); the
//! classes themselves are defined in pure Python (`_errors.py`) and imported here. This file
//! holds the one conversion: [`Error`] into `PyErr`.

use pyo3::PyErr;
use pyo3::import_exception;

use connect_core::ErrorKind;

/// An error of a binding call: one from the core, or a Python exception already raised.
#[derive(Debug)]
pub(crate) enum Error {
    /// A libconnect error; mapped to its class by [`From<Error> for PyErr`].
    Core(connect_core::Error),
    /// A Python exception (argument conversion, a callback, Ctrl-C).
    Py(PyErr),
}

/// The result of a binding call.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl From<connect_core::Error> for Error {
    fn from(e: connect_core::Error) -> Self {
        Error::Core(e)
    }
}

impl From<PyErr> for Error {
    fn from(e: PyErr) -> Self {
        Error::Py(e)
    }
}

/// A core error of `kind` with `message`.
pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::Core(connect_core::Error::new(kind, message))
}

/// `CLOSED`, for every object used after `close()`.
pub(crate) fn closed(what: &str) -> Error {
    error(ErrorKind::Closed, format!("the {what} is closed"))
}

/// `INVALID_PARAMETER`.
pub(crate) fn invalid(message: impl Into<String>) -> Error {
    error(ErrorKind::InvalidParameter, message)
}

macro_rules! exception_classes {
    ($($class:ident),* $(,)?) => {
        $(import_exception!(libconnect._errors, $class);)*

        /// Every class name `_errors.py` defines.
        pub(crate) const CLASS_NAMES: &[&str] = &[$(stringify!($class)),*];

        /// A lazily built instance of the class named `class`, `class(detail, code)`.
        fn new_exception(class: &str, detail: String, code: &'static str) -> PyErr {
            match class {
                $(stringify!($class) => $class::new_err((detail, code)),)*
                // Unreachable while `_errors.py` and the table agree; a test checks that.
                _ => ConnectError::new_err((detail, code)),
            }
        }
    };
}

exception_classes!(
    ConnectError,
    InvalidArgumentError,
    NotFoundError,
    InvalidSpiffeIdError,
    CertificateError,
    CaConfigError,
    RateLimitedError,
    IntentionError,
    AuthorizationDenied,
    PermissionDeniedError,
    AclError,
    TlsError,
    CacheError,
    ConnectIoError,
    ConnectTimeout,
);

impl From<Error> for PyErr {
    fn from(e: Error) -> PyErr {
        match e {
            Error::Py(e) => e,
            Error::Core(e) => {
                let info = e.kind().info();
                new_exception(info.python_class, e.to_string(), info.name)
            }
        }
    }
}
