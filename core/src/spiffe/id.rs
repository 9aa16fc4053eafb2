//! The identity kinds Consul issues certificates for, and how each is written as a URI
//! (ARCHITECTURE.md, spiffe).
//!
//! The structs are plain data with public fields, mirroring Consul's `SpiffeID*` types, so the
//! binding layers and tests can build any value. Emission therefore does not validate: a value
//! with an empty segment emits a URI that [`SpiffeId::parse`] rejects, exactly as in Consul.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, PercentEncode, utf8_percent_encode};

use super::{SpiffeIdError, TrustDomain};

/// The partition an identity without an `/ap/` segment belongs to.
pub const DEFAULT_PARTITION: &str = "default";

/// The namespace CE writes into every service ID.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The domain of signing IDs and trust domains. It is fixed, not the DNS `domain` setting, so that
/// changing the DNS domain cannot invalidate every certificate in the cluster.
pub const SIGNING_DOMAIN: &str = "consul";

/// Bytes escaped inside one path segment on emission: Go's path escaping (everything except the
/// unreserved characters and `$&+,:;=@`) plus `/`, so that a name containing `/` stays one
/// segment and `parse(emit(x))` gives `x` back. Plain names are emitted unchanged.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b',')
    .remove(b':')
    .remove(b';')
    .remove(b'=')
    .remove(b'@');

fn segment(s: &str) -> PercentEncode<'_> {
    utf8_percent_encode(s, SEGMENT)
}

/// Consul's `PartitionOrDefault`: lowercased, and `default` when empty.
fn partition_or_default(partition: &str) -> Cow<'_, str> {
    if partition.is_empty() {
        Cow::Borrowed(DEFAULT_PARTITION)
    } else if partition.chars().any(char::is_uppercase) {
        Cow::Owned(partition.to_lowercase())
    } else {
        Cow::Borrowed(partition)
    }
}

/// Writes `/ap/<partition>` unless the partition is the default one; the default stays implicit
/// so that IDs issued before partitions existed keep their exact bytes.
fn write_partition_prefix(f: &mut fmt::Formatter<'_>, partition: &str) -> fmt::Result {
    let partition = partition_or_default(partition);
    if partition != DEFAULT_PARTITION {
        write!(f, "/ap/{}", segment(&partition))?;
    }
    Ok(())
}

/// The identity of a service instance:
/// `spiffe://<host>[/ap/<partition>]/ns/<namespace>/dc/<datacenter>/svc/<service>`.
///
/// CE emits `/ns/default/` whatever `namespace` holds (Consul's "namespaces are ignored"), yet the
/// field keeps the parsed value so that IDs from Enterprise peers can still be inspected.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceId {
    /// The trust domain, case preserved as parsed.
    pub host: String,
    /// The admin partition (`default` when the URI has no `/ap/` segment).
    pub partition: String,
    /// The namespace as parsed; not emitted by CE.
    pub namespace: String,
    /// The datacenter.
    pub datacenter: String,
    /// The service name.
    pub service: String,
}

impl ServiceId {
    /// A service in the default partition and namespace, the only ones CE has.
    pub fn new(
        trust_domain: &TrustDomain,
        datacenter: impl Into<String>,
        service: impl Into<String>,
    ) -> ServiceId {
        ServiceId {
            host: trust_domain.as_str().to_owned(),
            partition: DEFAULT_PARTITION.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            datacenter: datacenter.into(),
            service: service.into(),
        }
    }

    /// The partition as emitted: lowercased, `default` when empty.
    pub fn partition_or_default(&self) -> Cow<'_, str> {
        partition_or_default(&self.partition)
    }

    /// The URI, as placed in the certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ServiceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.host)?;
        write_partition_prefix(f, &self.partition)?;
        write!(
            f,
            "/ns/{DEFAULT_NAMESPACE}/dc/{}/svc/{}",
            segment(&self.datacenter),
            segment(&self.service)
        )
    }
}

/// The identity of a client agent: `spiffe://<host>/agent/client/dc/<datacenter>/id/<agent>`.
///
/// The parser accepts an `/ap/<partition>` prefix, but CE never emits one.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct AgentId {
    /// The trust domain, case preserved as parsed.
    pub host: String,
    /// The admin partition (`default` when the URI has no `/ap/` segment); not emitted by CE.
    pub partition: String,
    /// The datacenter.
    pub datacenter: String,
    /// The agent's node ID.
    pub agent: String,
}

impl AgentId {
    /// An agent in the default partition.
    pub fn new(
        trust_domain: &TrustDomain,
        datacenter: impl Into<String>,
        agent: impl Into<String>,
    ) -> AgentId {
        AgentId {
            host: trust_domain.as_str().to_owned(),
            partition: DEFAULT_PARTITION.to_owned(),
            datacenter: datacenter.into(),
            agent: agent.into(),
        }
    }

    /// The URI, as placed in the certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for AgentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/agent/client/dc/{}/id/{}",
            self.host,
            segment(&self.datacenter),
            segment(&self.agent)
        )
    }
}

/// The identity shared by all servers of a datacenter: `spiffe://<host>/agent/server/dc/<dc>`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerId {
    /// The trust domain, case preserved as parsed.
    pub host: String,
    /// The datacenter.
    pub datacenter: String,
}

impl ServerId {
    /// The servers of `datacenter`.
    pub fn new(trust_domain: &TrustDomain, datacenter: impl Into<String>) -> ServerId {
        ServerId {
            host: trust_domain.as_str().to_owned(),
            datacenter: datacenter.into(),
        }
    }

    /// The URI, as placed in the certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/agent/server/dc/{}",
            self.host,
            segment(&self.datacenter)
        )
    }
}

/// The identity of a mesh gateway: `spiffe://<host>/gateway/mesh/dc/<datacenter>`.
///
/// The parser accepts an `/ap/<partition>` prefix, but CE never emits one (Consul's "partitions
/// are ignored").
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MeshGatewayId {
    /// The trust domain, case preserved as parsed.
    pub host: String,
    /// The admin partition (`default` when the URI has no `/ap/` segment); not emitted by CE.
    pub partition: String,
    /// The datacenter.
    pub datacenter: String,
}

impl MeshGatewayId {
    /// The mesh gateway of `datacenter`, in the default partition.
    pub fn new(trust_domain: &TrustDomain, datacenter: impl Into<String>) -> MeshGatewayId {
        MeshGatewayId {
            host: trust_domain.as_str().to_owned(),
            partition: DEFAULT_PARTITION.to_owned(),
            datacenter: datacenter.into(),
        }
    }

    /// The URI, as placed in the certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for MeshGatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/gateway/mesh/dc/{}",
            self.host,
            segment(&self.datacenter)
        )
    }
}

/// The identity of the CA itself, `spiffe://<cluster_id>.<domain>` with an empty path; it names
/// the trust domain a CA may sign for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SigningId {
    /// The cluster ID (the host up to its first `.`), case preserved as parsed.
    pub cluster_id: String,
    /// The rest of the host; [`SIGNING_DOMAIN`] for IDs this library creates.
    pub domain: String,
}

impl SigningId {
    /// The signing ID of a cluster, in the fixed [`SIGNING_DOMAIN`].
    pub fn new(cluster_id: impl Into<String>) -> SigningId {
        SigningId {
            cluster_id: cluster_id.into(),
            domain: SIGNING_DOMAIN.to_owned(),
        }
    }

    /// `lowercase(<cluster_id>.<domain>)`, the trust domain this ID signs for.
    pub fn host(&self) -> String {
        format!("{}.{}", self.cluster_id, self.domain).to_lowercase()
    }

    /// The host as a validated [`TrustDomain`].
    pub fn trust_domain(&self) -> Result<TrustDomain, SpiffeIdError> {
        TrustDomain::new(&self.host())
    }

    /// The URI, as placed in the CA certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// Whether a CA with this signing ID may issue a certificate for `other` (ARCHITECTURE.md,
    /// spiffe).
    ///
    /// Services, mesh gateways and servers qualify when their host equals this trust domain,
    /// ignoring case; another signing ID only when its URI is identical. Agent IDs never do:
    /// auto-encrypt clients do not know the trust domain yet, so the server rewrites their host
    /// before signing instead of trusting what they sent.
    pub fn can_sign(&self, other: &SpiffeId) -> bool {
        match other {
            SpiffeId::Signing(signing) => self.uri() == signing.uri(),
            SpiffeId::Service(ServiceId { host, .. })
            | SpiffeId::MeshGateway(MeshGatewayId { host, .. })
            | SpiffeId::Server(ServerId { host, .. }) => host.to_lowercase() == self.host(),
            SpiffeId::Agent(_) => false,
        }
    }
}

impl fmt::Display for SigningId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}", self.host())
    }
}

/// A workload identity of Consul's experimental v2 catalog:
/// `spiffe://<trust_domain>/ap/<partition>/ns/<namespace>/identity/<name>`.
///
/// Emit-only: Consul's v1 parser does not read it back, so neither does [`SpiffeId::parse`].
/// Unlike service IDs, both the partition and namespace segments are always written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct WorkloadIdentityId {
    /// The trust domain.
    pub trust_domain: String,
    /// The admin partition; lowercased on emission, `default` when empty.
    pub partition: String,
    /// The namespace; `default` when empty.
    pub namespace: String,
    /// The workload identity name.
    pub name: String,
}

impl WorkloadIdentityId {
    /// A workload identity in the default partition and namespace.
    pub fn new(trust_domain: &TrustDomain, name: impl Into<String>) -> WorkloadIdentityId {
        WorkloadIdentityId {
            trust_domain: trust_domain.as_str().to_owned(),
            partition: DEFAULT_PARTITION.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            name: name.into(),
        }
    }

    /// The URI, as placed in the certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for WorkloadIdentityId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let namespace = match self.namespace.as_str() {
            "" => DEFAULT_NAMESPACE,
            namespace => namespace,
        };
        write!(
            f,
            "spiffe://{}/ap/{}/ns/{}/identity/{}",
            self.trust_domain,
            segment(&partition_or_default(&self.partition)),
            segment(namespace),
            segment(&self.name)
        )
    }
}

/// Any identity Consul's parser recognises.
///
/// Non-exhaustive because Consul has grown new kinds over time (servers and mesh gateways came
/// after services and agents).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpiffeId {
    /// A service instance.
    Service(ServiceId),
    /// A client agent.
    Agent(AgentId),
    /// The servers of a datacenter.
    Server(ServerId),
    /// A mesh gateway.
    MeshGateway(MeshGatewayId),
    /// The CA of a trust domain.
    Signing(SigningId),
}

impl SpiffeId {
    /// Parses a SPIFFE ID as Consul's `ParseCertURI` does (ARCHITECTURE.md, spiffe).
    ///
    /// The path is matched against the service, agent, mesh gateway and server grammars, each
    /// captured segment is percent-decoded on its own (so `%2F` stays inside a name), a missing
    /// `/ap/` means partition `default`, and the host keeps its case. An empty path with a host
    /// like `<cluster>.<domain>` is a signing ID. Anything else — trailing slash, `/` alone,
    /// extra segments, a bare dotless host — is [`SpiffeIdError::NotExpectedFormat`].
    ///
    /// Where Go's URL parser is merely lenient, this one is strict: whitespace, control
    /// characters, user info, ports, queries, fragments, empty hosts and hosts outside the
    /// trust-domain alphabet are rejected, each with its own error. The scheme is
    /// case-insensitive, as it is after Go lowercases it.
    pub fn parse(input: &str) -> Result<SpiffeId, SpiffeIdError> {
        super::parse::parse(input)
    }

    /// The URI, as placed in a certificate's URI SAN.
    pub fn uri(&self) -> String {
        self.to_string()
    }

    /// The host (trust domain) as written in the ID; for a signing ID, its lowercased host.
    pub fn host(&self) -> Cow<'_, str> {
        match self {
            SpiffeId::Service(id) => Cow::Borrowed(&id.host),
            SpiffeId::Agent(id) => Cow::Borrowed(&id.host),
            SpiffeId::Server(id) => Cow::Borrowed(&id.host),
            SpiffeId::MeshGateway(id) => Cow::Borrowed(&id.host),
            SpiffeId::Signing(id) => Cow::Owned(id.host()),
        }
    }

    /// The host as a validated, lowercased [`TrustDomain`]. Fails for hosts the parser lets
    /// through but a trust domain forbids, such as `a..consul`.
    pub fn trust_domain(&self) -> Result<TrustDomain, SpiffeIdError> {
        TrustDomain::new(&self.host())
    }

    /// The service identity, if this is one.
    pub fn as_service(&self) -> Option<&ServiceId> {
        match self {
            SpiffeId::Service(id) => Some(id),
            _ => None,
        }
    }

    /// The agent identity, if this is one.
    pub fn as_agent(&self) -> Option<&AgentId> {
        match self {
            SpiffeId::Agent(id) => Some(id),
            _ => None,
        }
    }

    /// The server identity, if this is one.
    pub fn as_server(&self) -> Option<&ServerId> {
        match self {
            SpiffeId::Server(id) => Some(id),
            _ => None,
        }
    }

    /// The mesh gateway identity, if this is one.
    pub fn as_mesh_gateway(&self) -> Option<&MeshGatewayId> {
        match self {
            SpiffeId::MeshGateway(id) => Some(id),
            _ => None,
        }
    }

    /// The signing identity, if this is one.
    pub fn as_signing(&self) -> Option<&SigningId> {
        match self {
            SpiffeId::Signing(id) => Some(id),
            _ => None,
        }
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpiffeId::Service(id) => id.fmt(f),
            SpiffeId::Agent(id) => id.fmt(f),
            SpiffeId::Server(id) => id.fmt(f),
            SpiffeId::MeshGateway(id) => id.fmt(f),
            SpiffeId::Signing(id) => id.fmt(f),
        }
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl TryFrom<&str> for SpiffeId {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        SpiffeId::parse(s)
    }
}

impl From<ServiceId> for SpiffeId {
    fn from(id: ServiceId) -> SpiffeId {
        SpiffeId::Service(id)
    }
}

impl From<AgentId> for SpiffeId {
    fn from(id: AgentId) -> SpiffeId {
        SpiffeId::Agent(id)
    }
}

impl From<ServerId> for SpiffeId {
    fn from(id: ServerId) -> SpiffeId {
        SpiffeId::Server(id)
    }
}

impl From<MeshGatewayId> for SpiffeId {
    fn from(id: MeshGatewayId) -> SpiffeId {
        SpiffeId::MeshGateway(id)
    }
}

impl From<SigningId> for SpiffeId {
    fn from(id: SigningId) -> SpiffeId {
        SpiffeId::Signing(id)
    }
}

/// The DNS SAN servers present to peered clusters: `server.<datacenter>.peering.<trust_domain>`.
pub fn server_peering_dns_san(datacenter: &str, trust_domain: &TrustDomain) -> String {
    format!("server.{datacenter}.peering.{trust_domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_CLUSTER_ID: &str = "11111111-2222-3333-4444-555555555555";

    fn td(name: &str) -> TrustDomain {
        TrustDomain::new(name).unwrap()
    }

    fn service(host: &str, partition: &str, namespace: &str, dc: &str, svc: &str) -> ServiceId {
        ServiceId {
            host: host.into(),
            partition: partition.into(),
            namespace: namespace.into(),
            datacenter: dc.into(),
            service: svc.into(),
        }
    }

    // Consul's emit vectors (ARCHITECTURE.md, spiffe).

    #[test]
    fn emit_service() {
        let id = ServiceId::new(&td("1234.consul"), "dc1", "web");
        assert_eq!(id.uri(), "spiffe://1234.consul/ns/default/dc/dc1/svc/web");
        // An empty partition and namespace emit as the defaults.
        let id = service("1234.consul", "", "", "dc1", "web");
        assert_eq!(id.uri(), "spiffe://1234.consul/ns/default/dc/dc1/svc/web");
    }

    #[test]
    fn emit_service_ignores_namespace_in_ce() {
        let id = service("1234.consul", "default", "other", "dc1", "web");
        assert_eq!(id.uri(), "spiffe://1234.consul/ns/default/dc/dc1/svc/web");
        assert_eq!(id.namespace, "other", "the field keeps what it was given");
    }

    #[test]
    fn emit_service_honours_non_default_partition_lowercased() {
        let id = service("1234.consul", "bizdev", "default", "dc1", "web");
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ap/bizdev/ns/default/dc/dc1/svc/web"
        );
        let id = service("1234.consul", "BizDev", "default", "dc1", "web");
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ap/bizdev/ns/default/dc/dc1/svc/web"
        );
        assert_eq!(id.partition_or_default(), "bizdev");
        let id = service("1234.consul", "DEFAULT", "default", "dc1", "web");
        assert_eq!(id.uri(), "spiffe://1234.consul/ns/default/dc/dc1/svc/web");
    }

    #[test]
    fn emit_keeps_host_case_like_consul() {
        let id = service("1234.CONSUL", "default", "default", "dc1", "web");
        assert_eq!(id.uri(), "spiffe://1234.CONSUL/ns/default/dc/dc1/svc/web");
    }

    #[test]
    fn emit_escapes_segments() {
        let id = service("1234.consul", "biz/dev", "default", "bar/baz", "baz/qux");
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ap/biz%2Fdev/ns/default/dc/bar%2Fbaz/svc/baz%2Fqux"
        );
        let id = service("1234.consul", "", "", "dc1", "a b?c#d%e");
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ns/default/dc/dc1/svc/a%20b%3Fc%23d%25e"
        );
        // Characters Go leaves alone in a path stay readable.
        let id = service("1234.consul", "", "", "dc1", "a-b_c.d~e$f&g+h,i:j;k=l@m");
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ns/default/dc/dc1/svc/a-b_c.d~e$f&g+h,i:j;k=l@m"
        );
        let id = service("1234.consul", "", "", "dc1", "wéb");
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ns/default/dc/dc1/svc/w%C3%A9b"
        );
    }

    #[test]
    fn emit_agent_drops_partition_in_ce() {
        let mut id = AgentId::new(&td("1234.consul"), "dc1", "uuid");
        assert_eq!(id.uri(), "spiffe://1234.consul/agent/client/dc/dc1/id/uuid");
        id.partition = "bizdev".into();
        assert_eq!(id.uri(), "spiffe://1234.consul/agent/client/dc/dc1/id/uuid");
    }

    #[test]
    fn emit_server() {
        let id = ServerId::new(&td("1234.consul"), "dc1");
        assert_eq!(id.uri(), "spiffe://1234.consul/agent/server/dc/dc1");
    }

    #[test]
    fn emit_mesh_gateway_ignores_partition_in_ce() {
        let mut id = MeshGatewayId::new(&td("1234.consul"), "dc1");
        assert_eq!(id.uri(), "spiffe://1234.consul/gateway/mesh/dc/dc1");
        for partition in ["", "default", "bizdev", "Other"] {
            id.partition = partition.into();
            assert_eq!(id.uri(), "spiffe://1234.consul/gateway/mesh/dc/dc1");
        }
    }

    #[test]
    fn emit_signing() {
        let id = SigningId::new(TEST_CLUSTER_ID);
        assert_eq!(
            id.uri(),
            "spiffe://11111111-2222-3333-4444-555555555555.consul"
        );
        assert_eq!(id.host(), "11111111-2222-3333-4444-555555555555.consul");
        assert_eq!(
            id.trust_domain().unwrap(),
            TrustDomain::from_cluster_id(TEST_CLUSTER_ID).unwrap()
        );
        // The signing host is lowercased on emission.
        let id = SigningId {
            cluster_id: "ABC".into(),
            domain: "Consul".into(),
        };
        assert_eq!(id.uri(), "spiffe://abc.consul");
    }

    #[test]
    fn emit_workload_identity() {
        let id = WorkloadIdentityId::new(&td("1234.consul"), "web");
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ap/default/ns/default/identity/web"
        );
        let id = WorkloadIdentityId {
            trust_domain: "1234.consul".into(),
            partition: "part1".into(),
            namespace: "dev".into(),
            name: "web".into(),
        };
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ap/part1/ns/dev/identity/web"
        );
        let id = WorkloadIdentityId {
            trust_domain: "1234.consul".into(),
            partition: String::new(),
            namespace: String::new(),
            name: "a/b".into(),
        };
        assert_eq!(
            id.uri(),
            "spiffe://1234.consul/ap/default/ns/default/identity/a%2Fb"
        );
    }

    #[test]
    fn emit_through_the_enum_and_display() {
        let id: SpiffeId = ServerId::new(&td("1234.consul"), "dc1").into();
        assert_eq!(id.uri(), "spiffe://1234.consul/agent/server/dc/dc1");
        assert_eq!(format!("{id}"), id.uri());
    }

    #[test]
    fn server_peering_san() {
        let td = TrustDomain::from_cluster_id(TEST_CLUSTER_ID).unwrap();
        assert_eq!(
            server_peering_dns_san("dc1", &td),
            "server.dc1.peering.11111111-2222-3333-4444-555555555555.consul"
        );
    }

    #[test]
    fn accessors_pick_the_right_kind() {
        let td = td("1234.consul");
        let ids: [SpiffeId; 5] = [
            ServiceId::new(&td, "dc1", "web").into(),
            AgentId::new(&td, "dc1", "uuid").into(),
            ServerId::new(&td, "dc1").into(),
            MeshGatewayId::new(&td, "dc1").into(),
            SigningId::new("1234").into(),
        ];
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(id.as_service().is_some(), i == 0);
            assert_eq!(id.as_agent().is_some(), i == 1);
            assert_eq!(id.as_server().is_some(), i == 2);
            assert_eq!(id.as_mesh_gateway().is_some(), i == 3);
            assert_eq!(id.as_signing().is_some(), i == 4);
            assert_eq!(id.host(), "1234.consul");
            assert_eq!(id.trust_domain().unwrap(), td);
        }
    }

    // Consul's CanSign (ARCHITECTURE.md, spiffe).

    fn signing() -> SigningId {
        SigningId::new(TEST_CLUSTER_ID)
    }

    fn parsed(uri: &str) -> SpiffeId {
        SpiffeId::parse(uri).unwrap()
    }

    #[test]
    fn can_sign_same_signing_id() {
        assert!(signing().can_sign(&signing().into()));
        // Case differences vanish because both sides emit a lowercased host.
        let upper = SigningId {
            cluster_id: TEST_CLUSTER_ID.to_uppercase(),
            domain: "CONSUL".into(),
        };
        assert!(signing().can_sign(&upper.into()));
    }

    #[test]
    fn cannot_sign_other_signing_ids() {
        let other_cluster = SigningId::new("55555555-4444-3333-2222-111111111111");
        assert!(!signing().can_sign(&other_cluster.into()));
        let evil = SigningId {
            cluster_id: TEST_CLUSTER_ID.into(),
            domain: "evil".into(),
        };
        assert!(!signing().can_sign(&evil.into()));
    }

    #[test]
    fn can_sign_service_in_trust_domain() {
        let id = parsed(
            "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web",
        );
        assert!(signing().can_sign(&id));
    }

    #[test]
    fn can_sign_mixed_case_service() {
        let id = parsed(
            "spiffe://11111111-2222-3333-4444-555555555555.CONsuL/ns/defAUlt/dc/dc1/svc/WEB",
        );
        assert!(signing().can_sign(&id));
        // With hex letters in the cluster ID the upper-casing actually changes bytes.
        let lower = SigningId::new("5fcd4b81-a2ca-405a-ac62-0fac602c1949");
        let id = parsed(
            "spiffe://5FCD4B81-A2CA-405A-AC62-0FAC602C1949.CONsuL/ns/defAUlt/dc/dc1/svc/WEB",
        );
        assert!(lower.can_sign(&id));
        let upper = SigningId::new("5FCD4B81-A2CA-405A-AC62-0FAC602C1949");
        let id = parsed(
            "spiffe://5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul/ns/default/dc/dc1/svc/web",
        );
        assert!(upper.can_sign(&id));
    }

    #[test]
    fn cannot_sign_service_in_other_cluster() {
        let id = parsed(
            "spiffe://55555555-4444-3333-2222-111111111111.consul/ns/default/dc/dc1/svc/web",
        );
        assert!(!signing().can_sign(&id));
    }

    #[test]
    fn cannot_sign_service_in_other_tld() {
        let id =
            parsed("spiffe://11111111-2222-3333-4444-555555555555.fake/ns/default/dc/dc1/svc/web");
        assert!(!signing().can_sign(&id));
        let evil = SigningId {
            cluster_id: TEST_CLUSTER_ID.into(),
            domain: "evil".into(),
        };
        let id = parsed(
            "spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc1/svc/web",
        );
        assert!(!evil.can_sign(&id));
    }

    #[test]
    fn can_sign_mesh_gateway_and_server_in_trust_domain_only() {
        for path in [
            "/gateway/mesh/dc/dc1",
            "/ap/bizdev/gateway/mesh/dc/dc1",
            "/agent/server/dc/dc1",
        ] {
            let ok = parsed(&format!(
                "spiffe://11111111-2222-3333-4444-555555555555.consul{path}"
            ));
            assert!(signing().can_sign(&ok), "{path}");
            let other = parsed(&format!(
                "spiffe://55555555-4444-3333-2222-111111111111.consul{path}"
            ));
            assert!(!signing().can_sign(&other), "{path}");
            let tld = parsed(&format!(
                "spiffe://11111111-2222-3333-4444-555555555555.fake{path}"
            ));
            assert!(!signing().can_sign(&tld), "{path}");
        }
    }

    #[test]
    fn cannot_sign_agents_even_in_trust_domain() {
        let id = parsed(
            "spiffe://11111111-2222-3333-4444-555555555555.consul/agent/client/dc/dc1/id/uuid",
        );
        assert!(!signing().can_sign(&id));
        let id = parsed(
            "spiffe://11111111-2222-3333-4444-555555555555.consul/ap/bizdev/agent/client/dc/dc1/id/uuid",
        );
        assert!(!signing().can_sign(&id));
    }
}
