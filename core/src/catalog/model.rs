//! The catalog model with Consul's JSON names: nodes, services, health checks, and the rows the
//! health and catalog endpoints return (Consul API docs, Health).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

/// A machine that services run on, as `/v1/catalog/node` and the health endpoints show it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct Node {
    /// The node's UUID; may be empty.
    #[serde(rename = "ID")]
    pub id: String,
    /// The node's name, unique in the datacenter; the catalog key.
    pub node: String,
    /// The address services on this node are reached at unless they name their own.
    pub address: String,
    /// The node's datacenter.
    pub datacenter: String,
    /// Other addresses by purpose (`lan`, `wan`, …).
    pub tagged_addresses: BTreeMap<String, String>,
    /// Opaque key/value metadata.
    pub meta: BTreeMap<String, String>,
    /// Store index at which the node was registered.
    pub create_index: u64,
    /// Store index of the node's last change.
    pub modify_index: u64,
}

impl Node {
    /// A node with a name, an address and a datacenter; `lan` and `wan` tagged addresses are
    /// the address, as Consul fills them for a single-address agent.
    pub fn new(name: &str, address: &str, datacenter: &str) -> Node {
        Node {
            node: name.to_owned(),
            address: address.to_owned(),
            datacenter: datacenter.to_owned(),
            tagged_addresses: [
                ("lan".to_owned(), address.to_owned()),
                ("wan".to_owned(), address.to_owned()),
            ]
            .into(),
            ..Node::default()
        }
    }
}

/// What a service is: an application, or one of Consul's proxy and gateway kinds.
///
/// The JSON form is Consul's `Kind` string; a typical service is the empty string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ServiceKind {
    /// An application (`""`).
    #[default]
    Typical,
    /// A Connect sidecar proxy (`connect-proxy`).
    ConnectProxy,
    /// A mesh gateway (`mesh-gateway`).
    MeshGateway,
    /// A terminating gateway (`terminating-gateway`).
    TerminatingGateway,
    /// An ingress gateway (`ingress-gateway`).
    IngressGateway,
    /// An API gateway (`api-gateway`).
    ApiGateway,
}

impl ServiceKind {
    /// Every kind.
    pub const ALL: &'static [ServiceKind] = &[
        ServiceKind::Typical,
        ServiceKind::ConnectProxy,
        ServiceKind::MeshGateway,
        ServiceKind::TerminatingGateway,
        ServiceKind::IngressGateway,
        ServiceKind::ApiGateway,
    ];

    /// The JSON spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            ServiceKind::Typical => "",
            ServiceKind::ConnectProxy => "connect-proxy",
            ServiceKind::MeshGateway => "mesh-gateway",
            ServiceKind::TerminatingGateway => "terminating-gateway",
            ServiceKind::IngressGateway => "ingress-gateway",
            ServiceKind::ApiGateway => "api-gateway",
        }
    }

    /// The kind with this exact spelling; Consul compares kinds case-sensitively.
    pub fn from_name(name: &str) -> Option<ServiceKind> {
        Self::ALL.iter().copied().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for ServiceKind {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ServiceKind {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        ServiceKind::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown service kind {name:?}")))
    }
}

/// A sidecar proxy's configuration (`Proxy` of a `connect-proxy` service).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct ProxyConfig {
    /// The service this proxy fronts; what `/v1/health/connect/:service` matches on.
    pub destination_service_name: String,
    /// The instance this proxy fronts.
    #[serde(
        rename = "DestinationServiceID",
        skip_serializing_if = "String::is_empty"
    )]
    pub destination_service_id: String,
    /// Where the proxy reaches the application; empty means `127.0.0.1`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_service_address: String,
    /// The application's port.
    #[serde(skip_serializing_if = "is_zero")]
    pub local_service_port: u16,
    /// Opaque proxy options.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
    /// The services the application dials through the proxy; `[]`, never null.
    pub upstreams: Vec<Upstream>,
}

impl ProxyConfig {
    /// A proxy for `destination`.
    pub fn for_service(destination: &str) -> ProxyConfig {
        ProxyConfig {
            destination_service_name: destination.to_owned(),
            ..ProxyConfig::default()
        }
    }
}

/// One upstream of a proxy (Consul docs: Upstream Configuration).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct Upstream {
    /// `service` (the default when empty) or `prepared_query`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_type: String,
    /// The destination's namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_namespace: String,
    /// The destination's partition.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_partition: String,
    /// The peer the destination lives in.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_peer: String,
    /// The destination service or prepared query; required.
    pub destination_name: String,
    /// The destination's datacenter; empty means the local one.
    pub datacenter: String,
    /// Where the proxy listens for the application; empty means `127.0.0.1`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub local_bind_address: String,
    /// The port the proxy listens on for the application; required.
    pub local_bind_port: u16,
    /// Opaque upstream options.
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub config: Map<String, Value>,
    /// How traffic to the destination uses mesh gateways.
    #[serde(skip_serializing_if = "MeshGatewayConfig::is_empty")]
    pub mesh_gateway: MeshGatewayConfig,
}

impl Upstream {
    /// An upstream to `service`, listening on `127.0.0.1:local_bind_port`.
    pub fn service(service: &str, local_bind_port: u16) -> Upstream {
        Upstream {
            destination_name: service.to_owned(),
            local_bind_port,
            ..Upstream::default()
        }
    }
}

/// `MeshGateway { Mode }` of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct MeshGatewayConfig {
    /// `none`, `local`, `remote`, or empty for the default.
    pub mode: String,
}

impl MeshGatewayConfig {
    fn is_empty(&self) -> bool {
        self.mode.is_empty()
    }

    /// The mode, with empty meaning the default ([`MeshGatewayMode::None`]); `None` for a
    /// spelling Consul does not know.
    pub fn parsed_mode(&self) -> Option<MeshGatewayMode> {
        if self.mode.is_empty() {
            Some(MeshGatewayMode::default())
        } else {
            MeshGatewayMode::from_name(&self.mode)
        }
    }
}

/// How a dial to another datacenter uses mesh gateways (Consul docs: Mesh Gateways, `Mode`).
/// Within one datacenter a dial always goes direct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum MeshGatewayMode {
    /// Straight to an instance of the destination (its address must be routable from here).
    #[default]
    None,
    /// Through a mesh gateway of the local datacenter, which forwards to the destination
    /// datacenter's gateway.
    Local,
    /// Straight to a mesh gateway of the destination datacenter (its WAN address).
    Remote,
}

impl MeshGatewayMode {
    /// Consul's spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            MeshGatewayMode::None => "none",
            MeshGatewayMode::Local => "local",
            MeshGatewayMode::Remote => "remote",
        }
    }

    /// The mode with this exact spelling, as Consul compares it.
    pub fn from_name(name: &str) -> Option<MeshGatewayMode> {
        match name {
            "none" => Some(MeshGatewayMode::None),
            "local" => Some(MeshGatewayMode::Local),
            "remote" => Some(MeshGatewayMode::Remote),
            _ => None,
        }
    }
}

impl fmt::Display for MeshGatewayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One of a service's tagged addresses (`TaggedAddresses.lan`, `.wan`, …): mesh gateways
/// publish the address other datacenters reach them on as `wan` (Consul docs: Mesh Gateways).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct ServiceAddress {
    /// Host or IP.
    pub address: String,
    /// Port.
    pub port: u16,
}

impl ServiceAddress {
    /// An address.
    pub fn new(address: &str, port: u16) -> ServiceAddress {
        ServiceAddress {
            address: address.to_owned(),
            port,
        }
    }
}

/// A service's `Connect` block.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct ServiceConnect {
    /// The application speaks Connect's mTLS itself (it links libconnect) and needs no proxy.
    /// Left out of the JSON when false, as Consul does, so a typical service shows
    /// `"Connect": {}`.
    #[serde(skip_serializing_if = "is_false")]
    pub native: bool,
}

impl ServiceConnect {
    /// A Connect-native service's block.
    pub fn native() -> ServiceConnect {
        ServiceConnect { native: true }
    }
}

/// A service instance as the health endpoints show it (`Service` of a [`ServiceEntry`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct AgentService {
    /// What the service is.
    pub kind: ServiceKind,
    /// The instance ID, unique on its node.
    #[serde(rename = "ID")]
    pub id: String,
    /// The service name.
    pub service: String,
    /// Tags; `[]`, never null.
    pub tags: Vec<String>,
    /// Opaque key/value metadata.
    pub meta: BTreeMap<String, String>,
    /// The port the service listens on.
    pub port: u16,
    /// The service's own address; empty means the node's (see [`ServiceEntry::dial_address`]).
    pub address: String,
    /// Addresses by network (`lan`, `wan`); a mesh gateway's `wan` is where other datacenters
    /// reach it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    /// Proxy settings, for `connect-proxy` services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Connect settings.
    pub connect: ServiceConnect,
    /// Store index at which the service was registered.
    pub create_index: u64,
    /// Store index of the service's last change.
    pub modify_index: u64,
}

impl AgentService {
    /// Consul's `ContentHash` of `GET /v1/agent/service/:id`: an opaque 16-hex-digit digest of
    /// the instance's JSON, which changes whenever any of it does; `?hash=` blocks until it
    /// differs (Consul API docs, Agent Service: hash-based blocking). Consul hashes its Go
    /// struct, we the first 8 bytes of SHA-256 over the JSON; clients only compare it.
    pub fn content_hash(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &json);
        digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether this instance accepts Connect traffic for `destination`: a sidecar proxy for it,
    /// or the service itself speaking Connect natively (Consul API docs, Health).
    pub fn is_connect_endpoint_for(&self, destination: &str) -> bool {
        match self.kind {
            ServiceKind::ConnectProxy => self
                .proxy
                .as_ref()
                .is_some_and(|p| p.destination_service_name == destination),
            ServiceKind::Typical => self.connect.native && self.service == destination,
            _ => false,
        }
    }
}

/// A health check's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum HealthStatus {
    /// Healthy.
    Passing,
    /// Degraded but serving.
    Warning,
    /// Not serving. New checks start here, as in Consul, so that an instance only receives
    /// traffic once something has said it is healthy.
    #[default]
    Critical,
}

impl HealthStatus {
    /// The JSON spelling.
    pub const fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
        }
    }

    /// The status with this exact spelling.
    pub fn from_name(name: &str) -> Option<HealthStatus> {
        match name {
            "passing" => Some(HealthStatus::Passing),
            "warning" => Some(HealthStatus::Warning),
            "critical" => Some(HealthStatus::Critical),
            _ => None,
        }
    }
}

impl fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a check is run; only what libconnect runs (TTL checks) is kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct CheckDefinition {
    /// The Go duration after which a TTL check without an update turns critical.
    #[serde(rename = "TTL", skip_serializing_if = "String::is_empty")]
    pub ttl: String,
}

/// A health check of a node (empty `ServiceID`) or of one service instance.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct HealthCheck {
    /// The node the check belongs to.
    pub node: String,
    /// The check's ID, unique on its node.
    #[serde(rename = "CheckID")]
    pub check_id: String,
    /// A name for people.
    pub name: String,
    /// The current state.
    pub status: HealthStatus,
    /// Free text for people.
    pub notes: String,
    /// The last output of the check.
    pub output: String,
    /// The checked service instance; empty for a node check.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// The checked service's name; empty for a node check.
    pub service_name: String,
    /// The checked service's tags.
    pub service_tags: Vec<String>,
    /// `ttl`, or empty for a check whose status is only set through the API.
    #[serde(rename = "Type")]
    pub check_type: String,
    /// How the check runs.
    pub definition: CheckDefinition,
    /// Store index at which the check was registered.
    pub create_index: u64,
    /// Store index of the check's last change.
    pub modify_index: u64,
}

impl HealthCheck {
    /// A node-level check with a status, set only through the API.
    pub fn node_check(node: &str, check_id: &str, status: HealthStatus) -> HealthCheck {
        HealthCheck {
            node: node.to_owned(),
            check_id: check_id.to_owned(),
            name: check_id.to_owned(),
            status,
            ..HealthCheck::default()
        }
    }
}

/// One result of `/v1/health/service/:service` and `/v1/health/connect/:service`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct ServiceEntry {
    /// The node the instance runs on.
    pub node: Node,
    /// The instance.
    pub service: AgentService,
    /// The node's checks and the instance's checks.
    pub checks: Vec<HealthCheck>,
}

impl ServiceEntry {
    /// Where to connect: the service's address if it has one, else its node's, with the
    /// service's port (Consul API docs, Health).
    pub fn dial_address(&self) -> (&str, u16) {
        let host = if self.service.address.is_empty() {
            &self.node.address
        } else {
            &self.service.address
        };
        (host, self.service.port)
    }

    /// Where another datacenter connects: the service's `wan` tagged address if it has one,
    /// else [`ServiceEntry::dial_address`] (Consul docs: Mesh Gateways).
    pub fn wan_address(&self) -> (&str, u16) {
        match self.service.tagged_addresses.get("wan") {
            Some(a) if !a.address.is_empty() && a.port != 0 => (&a.address, a.port),
            _ => self.dial_address(),
        }
    }

    /// Whether every check passes; what `?passing` keeps. Warning counts as not passing, as in
    /// Consul.
    pub fn is_passing(&self) -> bool {
        self.checks
            .iter()
            .all(|c| c.status == HealthStatus::Passing)
    }
}

/// `/v1/catalog/node/:node`: a node and its service instances by ID.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct NodeServices {
    /// The node.
    pub node: Node,
    /// Its instances, by ID.
    pub services: BTreeMap<String, AgentService>,
}

/// One row of `/v1/catalog/service/:service`: a node and a service instance, flattened.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct CatalogService {
    /// The node's UUID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The node's name.
    pub node: String,
    /// The node's address.
    pub address: String,
    /// The node's datacenter.
    pub datacenter: String,
    /// The node's tagged addresses.
    pub tagged_addresses: BTreeMap<String, String>,
    /// The node's metadata.
    pub node_meta: BTreeMap<String, String>,
    /// The service's kind.
    pub service_kind: ServiceKind,
    /// The instance ID.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// The service name.
    pub service_name: String,
    /// The service's tags.
    pub service_tags: Vec<String>,
    /// The service's own address; may be empty.
    pub service_address: String,
    /// The service's metadata.
    pub service_meta: BTreeMap<String, String>,
    /// The service's port.
    pub service_port: u16,
    /// Proxy settings, for proxies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_proxy: Option<ProxyConfig>,
    /// Connect settings.
    pub service_connect: ServiceConnect,
    /// Store index at which the service was registered.
    pub create_index: u64,
    /// Store index of the service's last change.
    pub modify_index: u64,
}

impl CatalogService {
    /// The row for `service` on `node`.
    pub fn new(node: &Node, service: &AgentService) -> CatalogService {
        CatalogService {
            id: node.id.clone(),
            node: node.node.clone(),
            address: node.address.clone(),
            datacenter: node.datacenter.clone(),
            tagged_addresses: node.tagged_addresses.clone(),
            node_meta: node.meta.clone(),
            service_kind: service.kind,
            service_id: service.id.clone(),
            service_name: service.service.clone(),
            service_tags: service.tags.clone(),
            service_address: service.address.clone(),
            service_meta: service.meta.clone(),
            service_port: service.port,
            service_proxy: service.proxy.clone(),
            service_connect: service.connect.clone(),
            create_index: service.create_index,
            modify_index: service.modify_index,
        }
    }
}

fn is_zero(port: &u16) -> bool {
    *port == 0
}

fn is_false(b: &bool) -> bool {
    !*b
}
