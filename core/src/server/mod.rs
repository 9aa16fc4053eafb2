//! One datacenter's control plane: the state store, the CA manager, intentions, ACLs and the
//! catalog, behind one type used both in-process and by the HTTP API. Every rule lives here
//! once (ARCHITECTURE.md, Principles: one Server).

mod acl;
mod ca;
mod catalog;
mod control_plane;
mod federation;
mod intentions;
mod jwt;
mod limiter;

pub use catalog::{
    AclFiltered, CHECK_OUTPUT_MAX, HealthChecksOf, SERF_HEALTH_CHECK_ID,
    SERVICE_MAINTENANCE_PREFIX, ServiceNames, ServiceQuery, TTL_EXPIRED, parse_node_meta,
};
pub(crate) use control_plane::internal;
pub use control_plane::{Server, ServerConfig};
pub use federation::{
    ADVERTISE_PATH, AdvertiseRequest, FederationConfig, IntermediateState, IntermediateStatus,
    MAX_SIGN_INTERMEDIATE_BODY, PrimaryClient, Replicated, ReplicationProgress, ReplicationStatus,
    SIGN_INTERMEDIATE_PATH, SecondaryClients, SignIntermediateRequest, SignIntermediateResponse,
    run_advertise, run_intention_replication, run_secondary,
};
pub use intentions::{ServiceName, parse_service_name};
pub use jwt::{JwtSvid, JwtSvidRequest, JwtValidateRequest, JwtValidation};
pub use limiter::{CSR_LIMIT_WAIT, CsrLimiter, Permit};

#[cfg(test)]
mod tests;
