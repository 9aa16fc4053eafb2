//! The per-process agent: the cache of roots, leaves, intentions and upstream instances over a
//! backend (a server in this process or an agent over HTTP), and the services built on it.

mod backend;

pub use backend::{Backend, HttpBackend, Signed};
