//! The mesh gateway (Consul docs: Mesh Gateways): routes raw TLS connections by the SNI of
//! their ClientHello to a healthy local instance or to another datacenter's gateway, without
//! terminating TLS, so the end-to-end mTLS session (and its SPIFFE checks) stays between the
//! two services.

mod hello;
mod mesh;

pub use hello::{ClientHello, MAX_HELLO, MAX_RECORD, parse_server_name, read_client_hello};
pub use mesh::{GatewayConfig, GatewayStats, MeshGateway, Route, classify};
