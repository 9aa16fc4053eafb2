//! libconnect core: Consul-Connect-compatible service identity and mTLS as a library.
//!
//! The behavioural reference is Consul Connect: SPIFFE identities ([`spiffe`]), a built-in
//! certificate authority ([`ca`]), intentions ([`intentions`]) and ACLs ([`acl`]). Every
//! language binding (C, Python, Node) is a thin layer over this crate.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod acl;
pub mod agent;
pub mod blocking;
pub mod ca;
pub mod cache;
pub mod catalog;
pub mod certs;
pub mod clock;
pub mod duration;
pub mod error;
pub mod filter;
pub mod gateway;
pub mod http;
pub mod intentions;
pub mod json;
pub(crate) mod logging;
pub mod server;
pub mod spiffe;
pub mod state;
pub mod tls;
#[cfg(feature = "workload-api")]
pub mod workload;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use error::{Error, ErrorKind, Result};

/// The version of this crate (`X.Y.Z`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
