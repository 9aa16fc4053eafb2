//! The Node binding of libconnect: `require('libconnect')`.
//!
//! Thin by rule (ARCHITECTURE.md, Principles: thin bindings): every function converts its
//! arguments, moves work off the JavaScript thread (the agent's runtime, or a thread of its own for
//! starting), calls the core and maps errors through one `map_error` (in `error.rs`). The
//! JavaScript API in `lib/` adds what only JavaScript can do: `tls.Server`/`tls.TLSSocket` plumbing
//! and `EventEmitter` events.

mod agent;
mod error;
mod lazy;
mod service;

use connect_core::{Error, ErrorKind};
use napi::Env;
use napi::bindgen_prelude::{JsError, Unknown};
use napi_derive::napi;

pub use agent::{AgentOptions, DevOptions, NativeAgent, ServiceRegistrationOptions};
pub use service::{Address, Material, NativeService, PeerAuthorization, ServiceWatch};

// Used by `lib/index.js` only: errors napi-rs and Node raise get libconnect's shape there.
pub use error::{connect_error, from_node_error};

/// The version of libconnect's core.
#[napi]
pub fn core_version() -> String {
    connect_core::VERSION.to_owned()
}

/// Every error code an `Error` from libconnect can carry in `.code`, in numeric order.
#[napi]
pub fn error_codes() -> Vec<String> {
    ErrorKind::ALL.iter().map(|k| k.name().to_owned()).collect()
}

/// The libconnect error for a failure of Node's own sockets or TLS: a system error with its
/// (negative, libuv) `errno` maps as the core maps I/O errors; an OpenSSL error
/// (`ERR_SSL_…`, `ERR_TLS_…`) is `TLS`; a certificate verification failure reported by
/// OpenSSL (`UNABLE_TO_VERIFY_LEAF_SIGNATURE`, `CERT_HAS_EXPIRED`, …) is
/// `CERTIFICATE_VERIFICATION`; anything else is `IO`.
#[napi(ts_return_type = "Error")]
pub fn node_error(
    env: &Env,
    errno: Option<i32>,
    code: Option<String>,
    message: String,
) -> Unknown<'_> {
    let kind = match (errno, code.as_deref()) {
        (Some(n), _) if n < 0 => {
            connect_core::tls::error_from_io(&std::io::Error::from_raw_os_error(-n)).kind()
        }
        (_, Some(c)) if c.starts_with("ERR_SSL_") || c.starts_with("ERR_TLS_") => ErrorKind::Tls,
        (_, Some(c))
            if c.contains("CERT") || c.starts_with("UNABLE_TO_") || c == "INVALID_PURPOSE" =>
        {
            ErrorKind::CertificateVerification
        }
        _ => ErrorKind::Io,
    };
    JsError::from(error::map_error(Error::new(kind, message))).into_unknown(*env)
}
