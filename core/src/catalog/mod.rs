//! The catalog: nodes, service instances (typical, Connect-native, sidecar proxies) and their
//! health checks, with Consul's JSON names.
//!
//! [`ServiceRegistration`] is the body of `/v1/agent/service/register`, decoded as Consul does
//! (keys case-insensitive) and validated into typed [`CatalogError`]s. [`Catalog`] holds the
//! rows and answers `/v1/health/service/:service`, `/v1/health/connect/:service` (Consul API docs,
//! Health) and `/v1/catalog/*`; the [`state`](crate::state) store keeps it, indexes its writes and
//! blocks queries on it.

mod error;
mod model;
mod register;
mod tables;

pub use error::CatalogError;
pub use model::{
    AgentService, CatalogService, CheckDefinition, HealthCheck, HealthStatus, MeshGatewayConfig,
    MeshGatewayMode, Node, NodeServices, ProxyConfig, ServiceAddress, ServiceConnect, ServiceEntry,
    ServiceKind, Upstream,
};
pub use register::{
    CheckRegistration, MAX_SERVICE_META_KEY_LEN, MAX_SERVICE_META_PAIRS,
    MAX_SERVICE_META_VALUE_LEN, RESERVED_META_PREFIX, ServiceRegistration,
};
pub use tables::Catalog;

#[cfg(test)]
mod tests;
