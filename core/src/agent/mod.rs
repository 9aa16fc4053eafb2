//! The per-process agent: the cache of roots, leaves, intentions and upstream instances over a
//! backend (a server in this process or an agent over HTTP), and the services built on it.
//!
//! After the first fetch, roots, leaves and authorization are memory reads; background
//! blocking queries keep them fresh (ARCHITECTURE.md, Principles: hot path).

mod backend;
mod config;
mod handle;
mod local;
pub(crate) mod service;
mod types;
pub(crate) use types::LeafKind;

pub use backend::{Backend, HttpBackend, Signed};
pub use config::{AgentBackend, AgentConfig, AgentOverrides};
pub use handle::Agent;
pub use local::InProcess;
pub use service::{ConnectService, DialOptions, DialRoute, MESH_GATEWAY_SERVICE};
pub use types::{
    HealthConnectType, IntentionMatchType, Leaf, LeafCacheRequest, LeafState, LeafType,
    MeshGatewaysType, RootsType, Scoped,
};
