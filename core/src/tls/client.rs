//! The client side: a rustls `ClientConfig` that checks the server's chain and that it names
//! the service we meant to reach (Consul docs: Connect-Native), and presents our current leaf.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::errors::{VerifyFailure, error_from_io};
use super::identity::Identity;
use super::net::{Connection, Socket};
use super::verify::{PeerRole, check_chain, leaf_identity};
use super::{DEFAULT_HANDSHAKE_TIMEOUT, KeyExchange, crypto_provider};
use crate::spiffe::{DEFAULT_NAMESPACE, DEFAULT_PARTITION, ServiceId, SpiffeId};
use crate::{Error, ErrorKind, Result};

/// Whom a client expects to reach.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ExpectedPeer {
    /// Exactly this identity, compared as Consul's Go client does in that the trust domain is
    /// ignored (the presented host replaces the expected one). Unlike Go's client the rest of
    /// the URI must match exactly, case included: ACLs and intentions tell `db` from `DB`, so
    /// a token allowed to write `DB` must not obtain a certificate that passes for `db`.
    Id(SpiffeId),
    /// A service of this name in the default partition and namespace, in any datacenter.
    Service(String),
}

impl From<SpiffeId> for ExpectedPeer {
    fn from(id: SpiffeId) -> Self {
        ExpectedPeer::Id(id)
    }
}

impl From<ServiceId> for ExpectedPeer {
    fn from(id: ServiceId) -> Self {
        ExpectedPeer::Id(SpiffeId::Service(id))
    }
}

impl From<&str> for ExpectedPeer {
    fn from(name: &str) -> Self {
        ExpectedPeer::Service(name.to_owned())
    }
}

impl From<String> for ExpectedPeer {
    fn from(name: String) -> Self {
        ExpectedPeer::Service(name)
    }
}

impl fmt::Display for ExpectedPeer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedPeer::Id(id) => id.fmt(f),
            ExpectedPeer::Service(name) => write!(f, "service {name}"),
        }
    }
}

/// The part of a SPIFFE URI after `spiffe://<host>`.
fn path_of(uri: &str) -> &str {
    let rest = uri.strip_prefix("spiffe://").unwrap_or(uri);
    rest.find('/').map_or("", |i| &rest[i..])
}

impl ExpectedPeer {
    /// Checks the SPIFFE ID a server presented the way the handshake does (Go's URI
    /// comparison), for applications that keep their own TLS stack (Python `ssl`):
    /// `PeerIdentityMismatch` when it names another service.
    pub fn check_presented(&self, presented: &SpiffeId) -> Result<()> {
        self.check(presented, None, None, false)
            .map_err(VerifyFailure::into_error)
    }

    /// Checks the identity the server presented. `own_dc` is our datacenter, used for a
    /// name-only expectation; `strict` adds the trust domain and datacenter checks.
    pub(crate) fn check(
        &self,
        presented: &SpiffeId,
        own_trust_domain: Option<&str>,
        own_dc: Option<&str>,
        strict: bool,
    ) -> std::result::Result<(), VerifyFailure> {
        let got = presented.to_string();
        let host = presented.host();
        // The expected URI with the presented host, as Go overwrites it (ARCHITECTURE.md, Data
        // path: a handshake).
        let want = match self {
            ExpectedPeer::Id(id) => format!("spiffe://{host}{}", path_of(&id.to_string())),
            ExpectedPeer::Service(name) => {
                let dc = presented
                    .as_service()
                    .map(|s| s.datacenter.as_str())
                    .or(own_dc)
                    .unwrap_or_default();
                ServiceId {
                    host: host.to_string(),
                    partition: DEFAULT_PARTITION.to_owned(),
                    namespace: DEFAULT_NAMESPACE.to_owned(),
                    datacenter: dc.to_owned(),
                    service: name.clone(),
                }
                .to_string()
            }
        };
        // Exact, unlike Go's `strings.EqualFold`: see `ExpectedPeer::Id`.
        if got != want {
            return Err(VerifyFailure::new(
                ErrorKind::PeerIdentityMismatch,
                format!("peer certificate mismatch got {got}, want {want}"),
            ));
        }
        if strict {
            if let Some(td) = own_trust_domain
                && !host.eq_ignore_ascii_case(td)
            {
                return Err(VerifyFailure::new(
                    ErrorKind::PeerIdentityMismatch,
                    format!("peer certificate mismatch: {got} is not in trust domain {td}"),
                ));
            }
            let want_dc = match self {
                ExpectedPeer::Id(SpiffeId::Service(s)) => Some(s.datacenter.as_str()),
                ExpectedPeer::Id(_) => None,
                ExpectedPeer::Service(_) => own_dc,
            };
            let got_dc = presented.as_service().map(|s| s.datacenter.as_str());
            if let (Some(w), Some(g)) = (want_dc, got_dc)
                && !w.eq_ignore_ascii_case(g)
            {
                return Err(VerifyFailure::new(
                    ErrorKind::PeerIdentityMismatch,
                    format!("peer certificate mismatch: {got} is not in datacenter {w}"),
                ));
            }
        }
        Ok(())
    }
}

struct Expectation {
    identity: Identity,
    expected: ExpectedPeer,
    strict: bool,
}

impl Expectation {
    /// The whole client-side check of a server chain: roots, identity, expectation.
    fn verify_server(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> std::result::Result<SpiffeId, rustls::Error> {
        let snapshot = self.identity.snapshot();
        let bundle = snapshot.bundle().ok_or_else(|| {
            VerifyFailure::new(ErrorKind::NotReady, "connect: no CA roots yet").into_rustls()
        })?;
        let now = self.identity.clock().now();
        check_chain(bundle, end_entity, intermediates, now, PeerRole::Server)?;
        let (id, _) = leaf_identity(end_entity).map_err(|f| {
            // Go reports a server leaf without a usable URI as a mismatch.
            VerifyFailure::new(
                ErrorKind::PeerIdentityMismatch,
                format!("peer certificate mismatch: {}", f.message),
            )
            .into_rustls()
        })?;
        let own_dc = snapshot
            .svid()
            .and_then(|s| s.spiffe_id().as_service().map(|s| s.datacenter.clone()));
        self.expected
            .check(
                &id,
                Some(bundle.trust_domain().as_str()),
                own_dc.as_deref(),
                self.strict,
            )
            .map_err(VerifyFailure::into_rustls)?;
        Ok(id)
    }
}

struct ServerVerifier(Arc<Expectation>);

impl fmt::Debug for ServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerVerifier")
            .field("expected", &self.0.expected)
            .field("strict", &self.0.strict)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        // The identity check happens here, inside the handshake, not after it as in Go: a
        // client that reached the wrong service never sends it its own certificate.
        self.0
            .verify_server(end_entity, intermediates)
            .map(|_| ServerCertVerified::assertion())
    }

    super::provider::provider_signature_checks!();
}

/// Presents the current leaf, read from the latest snapshot on every handshake.
#[derive(Debug)]
struct CurrentClientLeaf(Identity);

impl ResolvesClientCert for CurrentClientLeaf {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.snapshot().svid().map(|s| s.certified_key().clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Builds an [`MtlsClient`]; see [`mtls_client`].
#[must_use]
#[derive(Debug)]
pub struct MtlsClientBuilder {
    identity: Identity,
    expected: ExpectedPeer,
    strict: bool,
    server_name: Option<String>,
    kx: KeyExchange,
    alpn: Vec<Vec<u8>>,
    handshake_timeout: Duration,
}

/// Starts a client of `identity` that expects to reach `expected` (a [`SpiffeId`], a
/// [`ServiceId`] or a service name).
pub fn mtls_client(identity: &Identity, expected: impl Into<ExpectedPeer>) -> MtlsClientBuilder {
    MtlsClientBuilder {
        identity: identity.clone(),
        expected: expected.into(),
        strict: false,
        server_name: None,
        kx: KeyExchange::default(),
        alpn: Vec::new(),
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
    }
}

impl MtlsClientBuilder {
    /// Also require the server to be in our trust domain and in the expected datacenter (our
    /// own for a name-only expectation). Consul does neither (ARCHITECTURE.md, Differences from
    /// Consul); off by default.
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Sends this name as SNI (a DNS name; mesh gateways route by it, Consul docs: Mesh Gateways).
    /// Without it no SNI is sent. Never used for hostname verification.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// The key-exchange groups to offer.
    pub fn key_exchange(mut self, kx: KeyExchange) -> Self {
        self.kx = kx;
        self
    }

    /// ALPN protocols to offer (none by default).
    pub fn alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// How long a dial (TCP connect and handshake together) may take.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Builds the client. Its session cache is its own, so a session is only ever resumed
    /// with a server that passed this client's identity check.
    pub fn build(self) -> Result<MtlsClient> {
        let server_name = match &self.server_name {
            Some(n) => Some(ServerName::try_from(n.clone()).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidParameter,
                    format!("server name {n:?}: {e}"),
                )
            })?),
            None => None,
        };
        let expectation = Arc::new(Expectation {
            identity: self.identity.clone(),
            expected: self.expected,
            strict: self.strict,
        });
        let mut config = ClientConfig::builder_with_provider(crypto_provider(self.kx))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::new(ErrorKind::Internal, format!("tls config: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(ServerVerifier(expectation.clone())))
            .with_client_cert_resolver(Arc::new(CurrentClientLeaf(self.identity.clone())));
        config.alpn_protocols = self.alpn;
        config.enable_sni = server_name.is_some();
        Ok(MtlsClient {
            config: Arc::new(config),
            expectation,
            server_name,
            handshake_timeout: self.handshake_timeout,
        })
    }
}

/// The client side of one service's mTLS towards one expected peer. Cheap to clone.
#[derive(Clone)]
pub struct MtlsClient {
    config: Arc<ClientConfig>,
    expectation: Arc<Expectation>,
    server_name: Option<ServerName<'static>>,
    handshake_timeout: Duration,
}

impl fmt::Debug for MtlsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MtlsClient")
            .field("expected", &self.expectation.expected)
            .field("strict", &self.expectation.strict)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl MtlsClient {
    /// The rustls config, for applications that drive rustls themselves. Resumed sessions
    /// skip its verifier; [`MtlsClient::connect`] re-checks them.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Whom this client expects.
    pub fn expected(&self) -> &ExpectedPeer {
        &self.expectation.expected
    }

    /// Checks a server chain (leaf first) as the handshake does: against the current roots,
    /// and that it names the expected peer. For applications with their own TLS stack.
    ///
    /// Errors: `PeerIdentityMismatch`, `CertificateVerification`, `InvalidCertificate`,
    /// `NotReady`.
    pub fn verify_server_chain(&self, chain: &[CertificateDer<'_>]) -> Result<SpiffeId> {
        let (leaf, rest) = chain.split_first().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidCertificate,
                "tls: no certificates from peer",
            )
        })?;
        self.expectation
            .verify_server(leaf, rest)
            .map_err(|e| super::errors::from_rustls(&e))
    }

    /// Connects to `addr` and runs the handshake, all within the handshake timeout.
    ///
    /// Errors: `ConnectionRefused`, `Timeout`, `PeerIdentityMismatch` (`peer certificate
    /// mismatch got …, want …`), `CertificateVerification`, `NotReady`, `Tls`, `Io`.
    pub async fn dial_addr(&self, addr: impl ToSocketAddrs) -> Result<Connection> {
        let timeout = self.handshake_timeout;
        let dial = async {
            let tcp = TcpStream::connect(addr)
                .await
                .map_err(|e| error_from_io(&e))?;
            // Small requests go out at once (Nagle would hold them for the peer's ACK); the
            // listener sets the same on its side, as Go's net package does on both.
            let _ = tcp.set_nodelay(true);
            self.handshake(tcp).await
        };
        tokio::time::timeout(timeout, dial)
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("dial: i/o timeout after {timeout:?}"),
                ))
            })
    }

    /// Runs the client handshake on a connected TCP stream, within the handshake timeout.
    pub async fn connect(&self, tcp: TcpStream) -> Result<Connection> {
        let timeout = self.handshake_timeout;
        tokio::time::timeout(timeout, self.handshake(tcp))
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("tls: handshake i/o timeout after {timeout:?}"),
                ))
            })
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<Connection> {
        let peer_addr: Option<SocketAddr> = tcp.peer_addr().ok();
        let name = match (&self.server_name, peer_addr) {
            (Some(n), _) => n.clone(),
            (None, Some(a)) => ServerName::IpAddress(a.ip().into()),
            (None, None) => {
                return Err(Error::new(ErrorKind::Io, "socket has no peer address"));
            }
        };
        if self.expectation.identity.snapshot().svid().is_none() {
            return Err(Error::new(
                ErrorKind::NotReady,
                format!(
                    "service {:?} has no leaf certificate yet",
                    self.expectation.identity.service()
                ),
            ));
        }
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let stream = connector
            .connect(name, Socket::new(tcp))
            .await
            .map_err(|e| error_from_io(&e))?;
        let (_, conn) = stream.get_ref();
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let chain = conn.peer_certificates().unwrap_or_default();
        let (leaf, rest) = chain.split_first().ok_or_else(|| {
            Error::new(ErrorKind::PeerIdentityMismatch, "peer certificate mismatch")
        })?;
        let peer = if resumed {
            // Resumption skips the verifier: check the stored chain against today's roots.
            self.expectation.verify_server(leaf, rest)
        } else {
            leaf_identity(leaf)
                .map(|(id, _)| id)
                .map_err(VerifyFailure::into_rustls)
        }
        .map_err(|e| super::errors::from_rustls(&e))?;
        Ok(Connection::new(
            tokio_rustls::TlsStream::Client(stream),
            peer,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    /// The vectors of Go's `verifyServerCertMatchesURI` (ARCHITECTURE.md, Test habits).
    #[test]
    fn go_uri_matching() {
        let web = id(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/web"));
        let want = ExpectedPeer::Id(web.clone());
        assert!(want.check(&web, Some(TD), None, false).is_ok());
        // A different trust domain is allowed: the host is overwritten before comparing.
        let other_td = id("spiffe://other.consul/ns/default/dc/dc1/svc/web");
        assert!(want.check(&other_td, Some(TD), None, false).is_ok());
        // ... unless strict.
        let e = want.check(&other_td, Some(TD), None, true).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PeerIdentityMismatch);
        // Case-sensitive, unlike Go: a certificate for `WEB` (which a token with write on
        // `WEB`, not `web`, can obtain) does not pass for `web`.
        let upper = id(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/WEB"));
        let e = want.check(&upper, Some(TD), None, false).unwrap_err();
        assert_eq!(e.kind, ErrorKind::PeerIdentityMismatch);
        let e = ExpectedPeer::from("web")
            .check(&upper, Some(TD), Some("dc1"), false)
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::PeerIdentityMismatch);
        let db = id(&format!("spiffe://{TD}/ns/default/dc/dc1/svc/db"));
        let e = ExpectedPeer::Id(db)
            .check(&web, Some(TD), None, false)
            .unwrap_err();
        assert_eq!(
            e.message,
            format!(
                "peer certificate mismatch got spiffe://{TD}/ns/default/dc/dc1/svc/web, \
                 want spiffe://{TD}/ns/default/dc/dc1/svc/db"
            )
        );
    }

    #[test]
    fn service_names_match_any_datacenter_unless_strict() {
        let web_dc2 = id(&format!("spiffe://{TD}/ns/default/dc/dc2/svc/web"));
        let want = ExpectedPeer::from("web");
        assert!(want.check(&web_dc2, Some(TD), Some("dc1"), false).is_ok());
        let e = want
            .check(&web_dc2, Some(TD), Some("dc1"), true)
            .unwrap_err();
        assert!(e.message.contains("datacenter dc1"), "{}", e.message);
        let e = ExpectedPeer::from("db")
            .check(&web_dc2, Some(TD), Some("dc1"), false)
            .unwrap_err();
        assert!(
            e.message.ends_with(
                "want spiffe://11111111-2222-3333-4444-555555555555.consul/ns/default/dc/dc2/svc/db"
            ),
            "{}",
            e.message
        );
    }
}
