//! The one place where errors become libconnect's JavaScript errors (ARCHITECTURE.md, Node
//! conventions).
//!
//! Every error thrown or rejected by libconnect is an `Error` whose `code` is the stable kind
//! string of [`connect_core::ErrorKind`] (`"INVALID_SPIFFE_ID"`, `"AUTHORIZATION_DENIED"`, …)
//! and whose `message` carries the detail. Core errors get that shape in [`map_error`]; the
//! errors napi-rs raises itself, before any addon code runs (an argument it cannot convert),
//! get it in [`connect_error`], which `lib/index.js` applies to what an addon call throws;
//! failures of Node's own sockets and TLS get it in [`from_node_error`]. The JavaScript side
//! holds no table of its own.

use connect_core::{Error as CoreError, ErrorKind};
use napi::bindgen_prelude::{JsError, JsObjectValue, Object, ToNapiValue, Unknown};
use napi::{Env, JsValue, Status, ValueType, sys};
use napi_derive::napi;

/// The custom napi status: the kind string of the error.
#[derive(Debug, Clone)]
pub struct Code(String);

impl AsRef<str> for Code {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The libconnect kind of a failure that napi-rs reports with one of its statuses
/// (`"StringExpected"`, `"InvalidArg"`, …): arguments it cannot convert are the caller's
/// mistake, like every other bad input; the rest are internal.
fn kind_of_status(status: &str) -> ErrorKind {
    if status == Status::InvalidArg.as_ref() || status.ends_with("Expected") {
        ErrorKind::InvalidParameter
    } else {
        ErrorKind::Internal
    }
}

impl From<Status> for Code {
    /// Failures inside napi itself (argument conversion, a closing environment).
    fn from(status: Status) -> Code {
        Code(kind_of_status(status.as_ref()).name().to_owned())
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

/// `value` as an object whose properties can be read, when it is one.
fn as_object<'env>(value: &Unknown<'env>) -> napi::Result<Option<Object<'env>>> {
    Ok(match value.get_type()? {
        ValueType::Object | ValueType::Function => Some(value.coerce_to_object()?),
        _ => None,
    })
}

/// The property `name` of `object` as a string, when it is one.
fn string_property(object: &Object<'_>, name: &str) -> napi::Result<Option<String>> {
    let value: Unknown<'_> = object.get_named_property(name)?;
    if value.get_type()? != ValueType::String {
        return Ok(None);
    }
    Ok(Some(value.coerce_to_string()?.into_utf8()?.into_owned()?))
}

/// Whether `value` already is a libconnect error: an `Error` whose `code` is a kind string.
fn is_connect_error(value: &Unknown<'_>) -> napi::Result<bool> {
    if !value.is_error()? {
        return Ok(false);
    }
    let Some(object) = as_object(value)? else {
        return Ok(false);
    };
    Ok(string_property(&object, "code")?
        .is_some_and(|code| ErrorKind::ALL.iter().any(|k| k.name() == code)))
}

/// Gives an error thrown by a call into the addon libconnect's shape. The addon's own errors
/// have it already; napi-rs raises its own when it cannot convert an argument, with its status
/// name as `code`, which becomes the libconnect code of that status (the status stays in
/// `napiStatus`). Anything that is not an `Error` is returned as is.
#[napi(ts_args_type = "err: unknown", ts_return_type = "unknown")]
pub fn connect_error<'env>(err: Unknown<'env>) -> napi::Result<Unknown<'env>> {
    if !err.is_error()? || is_connect_error(&err)? {
        return Ok(err);
    }
    let Some(mut object) = as_object(&err)? else {
        return Ok(err);
    };
    let status: Unknown<'_> = object.get_named_property("code")?;
    let defined = status.get_type()? != ValueType::Undefined;
    let text = if defined {
        status.coerce_to_string()?.into_utf8()?.into_owned()?
    } else {
        String::new()
    };
    object.set_named_property("code", kind_of_status(&text).name())?;
    if defined {
        object.set_named_property("napiStatus", status)?;
    }
    Ok(err)
}

/// A failure of Node's own sockets or TLS as a libconnect error (see `nodeError`), with the
/// original as its `cause`; a libconnect error is returned as is.
#[napi(ts_args_type = "err: unknown", ts_return_type = "Error")]
pub fn from_node_error<'env>(env: &'env Env, err: Unknown<'env>) -> napi::Result<Unknown<'env>> {
    if is_connect_error(&err)? {
        return Ok(err);
    }
    let object = as_object(&err)?;
    let (mut errno, mut code, mut message) = (None, None, None);
    if let Some(o) = &object {
        let n: Unknown<'_> = o.get_named_property("errno")?;
        if n.get_type()? == ValueType::Number {
            errno = Some(n.coerce_to_number()?.get_int32()?);
        }
        code = string_property(o, "code")?;
        let m: Unknown<'_> = o.get_named_property("message")?;
        if !matches!(m.get_type()?, ValueType::Undefined | ValueType::Null) {
            message = Some(m.coerce_to_string()?.into_utf8()?.into_owned()?);
        }
    }
    let message = match message {
        Some(m) => m,
        None => err.coerce_to_string()?.into_utf8()?.into_owned()?,
    };
    let mapped = crate::node_error(env, errno, code, message);
    if let Some(mut e) = as_object(&mapped)? {
        e.set_named_property("cause", err)?;
    }
    Ok(mapped)
}
