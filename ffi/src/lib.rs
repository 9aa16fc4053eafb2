//! The C ABI of libconnect: `libconnect.so` / `libconnect.a` and `include/connect.h`.
//!
//! A thin layer over `connect-core`: each function checks its arguments, converts them, calls
//! the core and maps the error to a `connect_result` (ARCHITECTURE.md, C ABI conventions). There is
//! no logic of its own here beyond driving a finished TLS connection synchronously, so that C can
//! use it with poll/epoll.
//!
//! The header is generated from these sources by the pinned cbindgen (`make header`) and
//! checked by `tests/header.rs`.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]
// The C contract of each exported function (valid pointers, lifetimes, threads) is its doc
// comment's `Parameters:`, `Memory and lifetimes:` and `Thread safety:` sections, which become
// the header's documentation (ARCHITECTURE.md, C ABI conventions); a Rust-only `# Safety` heading
// would repeat them.
#![allow(clippy::missing_safety_doc)]

pub mod agent;
pub mod error;
mod handle;
pub mod net;
pub mod service;
mod sigpipe;
pub mod strings;
#[cfg(test)]
mod testing;
#[cfg(test)]
mod tests;

use std::ffi::c_char;

pub use agent::{connect_agent, connect_agent_config_builder, connect_intention_action};
pub use error::connect_result;
pub use net::{connect_conn, connect_listener, connect_mesh_gateway_mode};
pub use service::{
    CONNECT_WAIT_FOREVER, connect_authorization, connect_service, connect_service_change_params,
};
pub use strings::connect_str;

/// The version of the core this crate is built against.
pub fn core_version() -> &'static str {
    connect_core::VERSION
}

/// The library's version as a static, NUL-terminated string: `"libconnect/X.Y.Z"`. It matches
/// the header's `CONNECT_VERSION_*` macros for the library the header came with.
///
/// Returns: a pointer to a static string; never NULL.
///
/// Memory and lifetimes: the string is static; do not free it.
///
/// Thread safety: may be called from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn connect_version() -> *const c_char {
    const VERSION: &str = concat!("libconnect/", env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr().cast()
}
