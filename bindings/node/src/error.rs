//! The one place where core errors become JavaScript errors (conventions 32).
//!
//! Every error thrown or rejected by the addon is an `Error` whose `code` is the stable kind
//! string of [`connect_core::ErrorKind`] (`"INVALID_SPIFFE_ID"`, `"AUTHORIZATION_DENIED"`, …)
//! and whose `message` carries the detail.

use connect_core::{Error as CoreError, ErrorKind};
use napi::bindgen_prelude::{JsError, ToNapiValue, Unknown};
use napi::{Env, Status, sys};

/// The custom napi status: the kind string of the error.
#[derive(Debug, Clone)]
pub struct Code(String);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<Status> for Code {
    /// Failures inside napi itself (argument conversion, a closing environment). Arguments
    /// of the wrong type are the caller's mistake, the rest are internal.
    fn from(status: Status) -> Code {
        let kind = match status {
            Status::InvalidArg
            | Status::ObjectExpected
            | Status::StringExpected
            | Status::NameExpected
            | Status::FunctionExpected
            | Status::NumberExpected
            | Status::BooleanExpected
            | Status::ArrayExpected
            | Status::BigintExpected
            | Status::DateExpected
            | Status::ArrayBufferExpected => ErrorKind::InvalidParameter,
            _ => ErrorKind::Internal,
        };
        Code(kind.name().to_owned())
    }
}

/// A napi error with the kind string as its status, so `err.code` is that string.
pub(crate) type NodeError = napi::Error<Code>;

/// What synchronous functions return.
pub(crate) type Result<T> = std::result::Result<T, NodeError>;

/// Maps a core error to the JavaScript error shape; the only such mapping in the addon.
pub(crate) fn map_error(e: CoreError) -> NodeError {
    napi::Error::new(Code(e.kind().name().to_owned()), e.to_string())
}

/// An error of `kind` raised by the binding itself (bad arguments).
pub(crate) fn error(kind: ErrorKind, message: impl Into<String>) -> NodeError {
    map_error(CoreError::new(kind, message))
}

/// The result of an `async fn`: a value, or a core error that rejects the promise with the
/// same shape as a synchronous throw (napi's own async plumbing only knows its fixed status
/// enum, so the error object is built here, on the JavaScript thread, and handed over as is).
#[derive(Debug)]
pub struct Outcome<T>(pub std::result::Result<T, CoreError>);

impl<T> From<std::result::Result<T, CoreError>> for Outcome<T> {
    fn from(r: std::result::Result<T, CoreError>) -> Self {
        Outcome(r)
    }
}

impl<T: ToNapiValue> ToNapiValue for Outcome<T> {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        match val.0 {
            // SAFETY: napi calls this with the valid env of the promise's resolution.
            Ok(v) => unsafe { T::to_napi_value(env, v) },
            Err(e) => {
                let env = Env::from_raw(env);
                let js: Unknown<'_> = JsError::from(map_error(e)).into_unknown(env);
                // An error derived from a JavaScript value rejects with that very object.
                Err(napi::Error::from(js))
            }
        }
    }
}
