//! The server side: a rustls `ServerConfig` that serves the current leaf and verifies and
//! authorizes clients inside the handshake (Consul docs: Connect-Native).

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DistinguishedName, ServerConfig};
use rustls_pki_types::{CertificateDer, UnixTime};
use tokio::net::{TcpStream, ToSocketAddrs};

use super::authorizer::{Authorizer, AuthzDenied, SharedAuthorizer};
use super::errors::{VerifyFailure, error_from_io};
use super::identity::Identity;
use super::material::{PeerAuthorization, PeerInput};
use super::net::{Connection, Listener, Socket};
use super::verify::{PeerRole, check_chain, leaf_identity};
use super::{DEFAULT_HANDSHAKE_TIMEOUT, KeyExchange, crypto_provider};
use crate::certs;
use crate::spiffe::SpiffeId;
use crate::{Error, ErrorKind, Result};

/// Called with the peer and the reason whenever the authorizer refuses a client.
pub type DenyHook = Arc<dyn Fn(&SpiffeId, &AuthzDenied) + Send + Sync>;

/// Called whenever an incoming handshake fails (denials included), with the client's address.
pub type HandshakeErrorHook = Arc<dyn Fn(Option<SocketAddr>, &Error) + Send + Sync>;

/// Counters of one [`MtlsServer`], for metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerStats {
    /// Handshakes that completed and passed authorization.
    pub accepted: u64,
    /// Of those, how many resumed a session.
    pub resumed: u64,
    /// Handshakes that failed for any reason (denials included).
    pub failed: u64,
    /// Clients refused by the authorizer.
    pub denied: u64,
    /// The reason of the latest denial.
    pub last_denial: Option<String>,
    /// Live connections closed because their peer was no longer authorized.
    pub revoked: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    resumed: AtomicU64,
    failed: AtomicU64,
    denied: AtomicU64,
    last_denial: Mutex<Option<String>>,
    revoked: AtomicU64,
}

/// The session store and ticketer of one identity generation and one authorizer version.
///
/// A new leaf or new roots bring new ones, so a client cannot resume into a session made under
/// the old certificates: its first handshake after the change is a full one and sees this
/// server's current leaf. A change the authorizer announces (for intentions, every new index)
/// brings new ones too: a resumed handshake skips the client verifier, so a client the
/// change denies would otherwise only be caught after the handshake, where rustls can no
/// longer send it an `access_denied` alert. Its next handshake is a full one instead, and it
/// is refused inside it like any other denied client.
struct Resumption {
    generation: u64,
    authz_version: u64,
    storage: Arc<dyn rustls::server::StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl Resumption {
    fn new(generation: u64, authz_version: u64, cache_size: usize) -> Result<Resumption> {
        let ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| Error::new(ErrorKind::Internal, format!("session tickets: {e}")))?;
        Ok(Resumption {
            generation,
            authz_version,
            storage: ServerSessionMemoryCache::new(cache_size),
            ticketer,
        })
    }
}

pub(crate) struct Shared {
    pub(crate) identity: Identity,
    authorizer: SharedAuthorizer,
    /// The authorizer's change notifications (`None` if it has none): their value keys the
    /// [`Resumption`].
    authz_changes: Option<tokio::sync::watch::Receiver<u64>>,
    on_deny: Option<DenyHook>,
    on_handshake_error: Option<HandshakeErrorHook>,
    counters: Counters,
    kx: KeyExchange,
    alpn: Vec<Vec<u8>>,
    session_cache_size: usize,
    resumption: Mutex<Resumption>,
    pub(crate) handshake_timeout: Duration,
    pub(crate) revocation_interval: Option<Duration>,
}

impl Shared {
    /// The whole server-side check of a client chain: roots, identity, usage, authorizer.
    /// Used by the handshake verifier, after resumed handshakes, and by `authorize_peer`.
    fn verify_client(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        denial: Option<&Mutex<Option<AuthzDenied>>>,
    ) -> std::result::Result<SpiffeId, rustls::Error> {
        let snapshot = self.identity.snapshot();
        let bundle = snapshot.bundle().ok_or_else(|| {
            VerifyFailure::new(ErrorKind::NotReady, "connect: no CA roots yet").into_rustls()
        })?;
        let now = self.identity.clock().now();
        check_chain(bundle, end_entity, intermediates, now, PeerRole::Client)?;
        let (id, info) = leaf_identity(end_entity).map_err(VerifyFailure::into_rustls)?;
        if id.as_service().is_none() {
            return Err(VerifyFailure::new(
                ErrorKind::CertificateVerification,
                format!("connect: client certificate names {id}, which is not a service"),
            )
            .into_rustls());
        }
        if !info.eku_client_auth {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::InvalidPurpose,
            ));
        }
        let mut chain = Vec::with_capacity(1 + intermediates.len());
        chain.push(CertificateDer::from(end_entity.as_ref()));
        chain.extend(
            intermediates
                .iter()
                .map(|c| CertificateDer::from(c.as_ref())),
        );
        if let Err(denied) = self.authorizer.authorize(&id, &chain) {
            self.record_denial(&id, &denied);
            if let Some(slot) = denial {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(denied);
            }
            // ApplicationVerificationFailure is what rustls turns into an access_denied alert.
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(id)
    }

    fn record_denial(&self, peer: &SpiffeId, denied: &AuthzDenied) {
        self.counters.denied.fetch_add(1, Ordering::Relaxed);
        // The peer only sees an access_denied alert; the reason is for this side's operators.
        tracing::info!(
            peer = %peer,
            reason = denied.reason(),
            "connect: refused a client during the TLS handshake"
        );
        *self
            .counters
            .last_denial
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(denied.reason().to_owned());
        if let Some(hook) = &self.on_deny {
            hook(peer, denied);
        }
    }

    fn record_failure(&self, addr: Option<SocketAddr>, e: &Error) {
        self.counters.failed.fetch_add(1, Ordering::Relaxed);
        if let Some(hook) = &self.on_handshake_error {
            hook(addr, e);
        }
    }

    /// A config whose verifier reports its denial into `denial` (one per connection), so the
    /// server's own error can carry the reason while the client only gets the alert.
    fn config(
        self: &Arc<Self>,
        denial: Option<Arc<Mutex<Option<AuthzDenied>>>>,
    ) -> Result<Arc<ServerConfig>> {
        let verifier = Arc::new(ClientVerifier {
            shared: self.clone(),
            denial,
        });
        let mut config = ServerConfig::builder_with_provider(crypto_provider(self.kx))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| Error::new(ErrorKind::Internal, format!("tls config: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(CurrentLeaf(self.identity.clone())));
        config.alpn_protocols = self.alpn.clone();
        let generation = self.identity.snapshot().generation();
        let authz_version = self.authz_version();
        let mut resumption = self
            .resumption
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if resumption.generation != generation || resumption.authz_version != authz_version {
            *resumption = Resumption::new(generation, authz_version, self.session_cache_size)?;
        }
        config.session_storage = resumption.storage.clone();
        config.ticketer = resumption.ticketer.clone();
        Ok(Arc::new(config))
    }

    /// The authorizer's current change count (0 for authorizers that announce none).
    fn authz_version(&self) -> u64 {
        self.authz_changes.as_ref().map_or(0, |rx| *rx.borrow())
    }

    /// Drops every session and ticket issued so far: after a resumed peer failed the
    /// post-handshake check (an authorizer that announces no changes, or a change that
    /// landed during the handshake), its next handshake is a full one.
    fn forget_sessions(&self) -> Result<()> {
        let fresh = Resumption::new(
            self.identity.snapshot().generation(),
            self.authz_version(),
            self.session_cache_size,
        )?;
        *self
            .resumption
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        Ok(())
    }
}

/// Where a server's current certificate is read from on every handshake.
pub(crate) trait CurrentCert: fmt::Debug + Send + Sync {
    /// The certificate to serve now, if there is one yet.
    fn current(&self) -> Option<Arc<CertifiedKey>>;
}

impl CurrentCert for Identity {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.snapshot().svid().map(|s| s.certified_key().clone())
    }
}

impl<T: CurrentCert + ?Sized> CurrentCert for Arc<T> {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        (**self).current()
    }
}

impl CurrentCert for arc_swap::ArcSwapOption<CertifiedKey> {
    fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.load_full()
    }
}

/// Serves the current leaf: reads it on every handshake, so a rotated leaf is used from the
/// next handshake on without rebuilding anything.
#[derive(Debug)]
pub(crate) struct CurrentLeaf<S>(pub(crate) S);

impl<S: CurrentCert> ResolvesServerCert for CurrentLeaf<S> {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

struct ClientVerifier {
    shared: Arc<Shared>,
    denial: Option<Arc<Mutex<Option<AuthzDenied>>>>,
}

impl fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("service", &self.shared.identity.service())
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: during a rotation they would name only some roots, and every client of
        // the mesh has exactly one leaf to offer anyway.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.shared
            .verify_client(end_entity, intermediates, self.denial.as_deref())
            .map(|_| ClientCertVerified::assertion())
    }

    super::provider::provider_signature_checks!();
}

/// Builds an [`MtlsServer`]; see [`mtls_server`].
#[must_use]
pub struct MtlsServerBuilder {
    identity: Identity,
    authorizer: Option<SharedAuthorizer>,
    on_deny: Option<DenyHook>,
    on_handshake_error: Option<HandshakeErrorHook>,
    kx: KeyExchange,
    alpn: Vec<Vec<u8>>,
    handshake_timeout: Duration,
    session_cache_size: usize,
    revocation_interval: Option<Duration>,
}

impl fmt::Debug for MtlsServerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MtlsServerBuilder")
            .field("service", &self.identity.service())
            .field("kx", &self.kx)
            .finish_non_exhaustive()
    }
}

/// Starts a server for `identity`. Set who may connect with
/// [`authorize`](MtlsServerBuilder::authorize) (required: there is no silent allow-all),
/// then [`build`](MtlsServerBuilder::build).
pub fn mtls_server(identity: &Identity) -> MtlsServerBuilder {
    MtlsServerBuilder {
        identity: identity.clone(),
        authorizer: None,
        on_deny: None,
        on_handshake_error: None,
        kx: KeyExchange::default(),
        alpn: Vec::new(),
        handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
        session_cache_size: 1024,
        revocation_interval: Some(super::DEFAULT_REVOCATION_INTERVAL),
    }
}

impl MtlsServerBuilder {
    /// Who may connect, decided after the chain verified.
    pub fn authorize(mut self, authorizer: impl Authorizer) -> Self {
        self.authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Same as [`authorize`](Self::authorize), for an authorizer already shared.
    pub fn authorize_shared(mut self, authorizer: SharedAuthorizer) -> Self {
        self.authorizer = Some(authorizer);
        self
    }

    /// Called on every denial with the peer and the reason (for logs and metrics; the client
    /// only gets an `access_denied` alert).
    pub fn on_deny(
        mut self,
        hook: impl Fn(&SpiffeId, &AuthzDenied) + Send + Sync + 'static,
    ) -> Self {
        self.on_deny = Some(Arc::new(hook));
        self
    }

    /// Called on every failed incoming handshake handled by [`MtlsServer::accept`] or a
    /// [`Listener`].
    pub fn on_handshake_error(
        mut self,
        hook: impl Fn(Option<SocketAddr>, &Error) + Send + Sync + 'static,
    ) -> Self {
        self.on_handshake_error = Some(Arc::new(hook));
        self
    }

    /// The key-exchange groups to offer.
    pub fn key_exchange(mut self, kx: KeyExchange) -> Self {
        self.kx = kx;
        self
    }

    /// ALPN protocols, in preference order (none by default; Go's client uses `h2`).
    pub fn alpn(mut self, protocols: Vec<Vec<u8>>) -> Self {
        self.alpn = protocols;
        self
    }

    /// How long [`MtlsServer::accept`] waits for a handshake.
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout;
        self
    }

    /// Sessions the server remembers for ID-based resumption (TLS 1.2); tickets need none.
    pub fn session_cache_size(mut self, size: usize) -> Self {
        self.session_cache_size = size;
        self
    }

    /// Revocation of live connections accepted by a [`Listener`]: they are re-authorized as
    /// soon as the authorizer reports a change ([`Authorizer::changes`]; intentions do) and
    /// at least every `interval` (which bounds the delay for authorizers that cannot report
    /// changes); a peer that no longer passes has its socket shut down, so both ends read
    /// end-of-stream. Default: on, every
    /// [`DEFAULT_REVOCATION_INTERVAL`](super::DEFAULT_REVOCATION_INTERVAL). `None` turns it
    /// off: a connection then lives as long as its ends keep it, as in Consul.
    pub fn revocation_interval(mut self, interval: Option<Duration>) -> Self {
        self.revocation_interval = interval.filter(|d| !d.is_zero());
        self
    }

    /// Builds the server. Fails without an authorizer (`InvalidParameter`).
    pub fn build(self) -> Result<MtlsServer> {
        let authorizer = self.authorizer.ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidParameter,
                "mtls_server needs an authorizer: use authorizer::any() to allow every verified peer",
            )
        })?;
        let authz_changes = authorizer.changes();
        let resumption = Resumption::new(
            self.identity.snapshot().generation(),
            authz_changes.as_ref().map_or(0, |rx| *rx.borrow()),
            self.session_cache_size,
        )?;
        let shared = Arc::new(Shared {
            identity: self.identity,
            authorizer,
            authz_changes,
            on_deny: self.on_deny,
            on_handshake_error: self.on_handshake_error,
            counters: Counters::default(),
            kx: self.kx,
            alpn: self.alpn,
            session_cache_size: self.session_cache_size,
            resumption: Mutex::new(resumption),
            handshake_timeout: self.handshake_timeout,
            revocation_interval: self.revocation_interval,
        });
        let config = shared.config(None)?;
        Ok(MtlsServer { shared, config })
    }
}

/// The server side of one service's mTLS. Cheap to clone.
#[derive(Clone)]
pub struct MtlsServer {
    shared: Arc<Shared>,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for MtlsServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MtlsServer")
            .field("service", &self.shared.identity.service())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl MtlsServer {
    /// The rustls config, for applications that drive rustls themselves. It stays current:
    /// every handshake reads the latest leaf and roots. Denials are reported to the
    /// [`on_deny`](MtlsServerBuilder::on_deny) hook and the [`stats`](Self::stats).
    ///
    /// A resumed session skips certificate verification in rustls; [`MtlsServer::accept`]
    /// re-checks resumed peers, a bare config cannot.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.config.clone()
    }

    /// The identity this server presents.
    pub fn identity(&self) -> &Identity {
        &self.shared.identity
    }

    /// The counters so far.
    pub fn stats(&self) -> ServerStats {
        let c = &self.shared.counters;
        ServerStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            resumed: c.resumed.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            denied: c.denied.load(Ordering::Relaxed),
            revoked: c.revoked.load(Ordering::Relaxed),
            last_denial: c
                .last_denial
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Runs the server handshake on an accepted TCP stream, within the handshake timeout.
    ///
    /// Errors: `AuthorizationDenied` with the authorizer's reason, `CertificateVerification`,
    /// `NotReady` (no leaf or roots), `Timeout`, `Tls`, `Io`.
    pub async fn accept(&self, tcp: TcpStream) -> Result<Connection> {
        let addr = tcp.peer_addr().ok();
        let r = self.handshake(tcp).await;
        match &r {
            Ok(c) => {
                self.shared
                    .counters
                    .accepted
                    .fetch_add(1, Ordering::Relaxed);
                if c.is_resumed() {
                    self.shared.counters.resumed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => self.shared.record_failure(addr, e),
        }
        r
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<Connection> {
        let denial = Arc::new(Mutex::new(None));
        let acceptor = tokio_rustls::TlsAcceptor::from(self.shared.config(Some(denial.clone()))?);
        let timeout = self.shared.handshake_timeout;
        let stream = match tokio::time::timeout(timeout, acceptor.accept(Socket::new(tcp))).await {
            Err(_) => {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!("tls: handshake not finished after {timeout:?}"),
                ));
            }
            Ok(Err(io)) => return Err(self.handshake_error(&io, &denial)),
            Ok(Ok(s)) => s,
        };
        let (_, conn) = stream.get_ref();
        let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let chain = conn.peer_certificates().unwrap_or_default().to_vec();
        let peer = match chain.split_first() {
            Some((leaf, rest)) if resumed => {
                // Tickets skip the verifier: check the stored chain against today's roots
                // and authorizer, so a ticket cannot outlive an intention change.
                self.shared.verify_client(leaf, rest, Some(&denial))
            }
            Some((leaf, _)) => leaf_identity(leaf)
                .map(|(id, _)| id)
                .map_err(VerifyFailure::into_rustls),
            None => Err(rustls::Error::NoCertificatesPresented),
        };
        match peer {
            Ok(peer) => Ok(Connection::new(
                tokio_rustls::TlsStream::Server(stream),
                peer,
            )),
            Err(e) => {
                // rustls cannot send an alert once the handshake is done, and a close_notify
                // would read as a clean end of stream: the stream is dropped without one, so
                // the client's read fails ("closed without close_notify"). Sessions are
                // forgotten, so its next handshake is a full one and a denial there is an
                // `access_denied` alert.
                let _ = self.shared.forget_sessions();
                drop(stream);
                let io = std::io::Error::new(std::io::ErrorKind::InvalidData, e);
                Err(self.handshake_error(&io, &denial))
            }
        }
    }

    fn handshake_error(&self, io: &std::io::Error, denial: &Mutex<Option<AuthzDenied>>) -> Error {
        let e = error_from_io(io);
        if e.kind() == ErrorKind::AuthorizationDenied
            && let Some(d) = denial.lock().unwrap_or_else(PoisonError::into_inner).take()
        {
            return Error::new(ErrorKind::AuthorizationDenied, d.reason().to_owned());
        }
        let snapshot = self.shared.identity.snapshot();
        if e.kind() == ErrorKind::Tls && snapshot.svid().is_none() {
            return Error::new(
                ErrorKind::NotReady,
                format!(
                    "tls: no certificates configured: service {:?} has no leaf yet",
                    self.shared.identity.service()
                ),
            );
        }
        e
    }

    /// Binds `addr` and accepts connections in the background; see [`Listener`].
    pub async fn listen(&self, addr: impl ToSocketAddrs) -> Result<Listener> {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| error_from_io(&e))?;
        Listener::spawn(tcp, self.clone())
    }

    /// Explains whether a peer would be let in, for applications with their own TLS stack.
    ///
    /// A certificate input is verified against the current roots first (give the chain as
    /// PEM when the leaf is signed by an intermediate); a URI is only authorized.
    pub fn authorize_peer(&self, input: PeerInput<'_>) -> Result<PeerAuthorization> {
        let owned: Vec<CertificateDer<'static>>;
        let (peer, chain): (SpiffeId, &[CertificateDer<'_>]) = match input {
            PeerInput::Uri(uri) => (SpiffeId::parse(uri)?, &[]),
            PeerInput::CertDer(der) => {
                certs::CertInfo::from_der(der)?;
                owned = vec![CertificateDer::from(der.to_vec())];
                (self.verified_peer(&owned)?, &owned)
            }
            PeerInput::ChainDer(chain) => (self.verified_peer(chain)?, chain),
            PeerInput::ChainPem(pem) => {
                owned = certs::parse_pem_certificates(pem)?;
                (self.verified_peer(&owned)?, &owned)
            }
        };
        if peer.as_service().is_none() {
            return Ok(PeerAuthorization {
                peer,
                allowed: false,
                reason: "ClientCertURI not a valid Service identifier".into(),
            });
        }
        let d = self.shared.authorizer.explain(&peer, chain);
        Ok(PeerAuthorization {
            peer,
            allowed: d.allowed,
            reason: d.reason,
        })
    }

    /// Whether the live connections that `peer` opened with `chain` (`connections` of them)
    /// still pass the authorizer; counts and logs their revocation when they do not.
    pub(crate) fn still_authorized(
        &self,
        peer: &SpiffeId,
        chain: &[CertificateDer<'_>],
        connections: usize,
    ) -> bool {
        match self.shared.authorizer.authorize(peer, chain) {
            Ok(()) => true,
            Err(denied) => {
                self.shared
                    .counters
                    .revoked
                    .fetch_add(connections as u64, Ordering::Relaxed);
                tracing::info!(
                    service = self.shared.identity.service(),
                    peer = %peer,
                    reason = denied.reason(),
                    connections,
                    "connect: closing live connections: peer no longer authorized"
                );
                false
            }
        }
    }

    /// The authorizer's change notifications, if it has any.
    pub(crate) fn authorizer_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        self.shared.authorizer.changes()
    }

    /// See [`MtlsServerBuilder::revocation_interval`].
    pub fn revocation_interval(&self) -> Option<Duration> {
        self.shared.revocation_interval
    }

    fn verified_peer(&self, chain: &[CertificateDer<'_>]) -> Result<SpiffeId> {
        let bundle = self.shared.identity.require_bundle()?;
        let now = self.shared.identity.clock().now();
        super::verify::verify_chain(&bundle, chain, now, PeerRole::Client)?;
        super::verify::peer_identity(&chain[0])
    }
}
