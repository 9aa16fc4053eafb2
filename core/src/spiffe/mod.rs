//! SPIFFE identities as Consul Connect writes and reads them, and the SNI names mesh gateways
//! route by.
//!
//! Every certificate in the mesh names exactly one of these identities in its URI SAN, and every
//! authorization decision starts from a parsed [`SpiffeId`]. Parsing and emission follow Consul
//! byte for byte (ARCHITECTURE.md, spiffe), including its quirks: the CE build always emits
//! `/ns/default/` for services, drops the partition of agents and mesh gateways, and the parser
//! keeps the host's case. Interoperating with real Consul clusters depends on those details.
//!
//! ```
//! use connect_core::spiffe::{SpiffeId, TrustDomain};
//!
//! let id: SpiffeId = "spiffe://1234.consul/ns/default/dc/dc1/svc/web".parse()?;
//! let service = id.as_service().expect("a service identity");
//! assert_eq!(service.service, "web");
//! assert_eq!(id.to_string(), "spiffe://1234.consul/ns/default/dc/dc1/svc/web");
//!
//! let td = TrustDomain::from_cluster_id("11111111-2222-3333-4444-555555555555")?;
//! assert_eq!(td.as_str(), "11111111-2222-3333-4444-555555555555.consul");
//! # Ok::<(), connect_core::Error>(())
//! ```

mod error;
mod id;
mod name;
mod parse;
mod sni;
mod trust_domain;

pub use error::{SpiffeIdError, UnescapeError};
pub use id::{
    AgentId, DEFAULT_NAMESPACE, DEFAULT_PARTITION, MeshGatewayId, SIGNING_DOMAIN, ServerId,
    ServiceId, SigningId, SpiffeId, WorkloadIdentityId, server_peering_dns_san,
};
pub use name::{
    DATACENTER_NAME_RULE, MAX_SERVICE_NAME_LEN, NameError, SERVICE_NAME_RULE, Shown,
    check_datacenter_name, check_default_namespace, check_default_partition, check_service_name,
    check_service_name_or_wildcard, is_valid_datacenter_name, is_valid_service_name,
};
pub use sni::{datacenter_sni, peered_service_sni, query_sni, service_sni};
pub use trust_domain::TrustDomain;
