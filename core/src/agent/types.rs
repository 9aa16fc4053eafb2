//! The Connect cache types (ARCHITECTURE.md, agent): CA roots, leaf certificates (with the
//! lifecycle of ARCHITECTURE.md, agent), intention match by destination, and healthy connect
//! instances of a service.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::backend::Backend;
use crate::ca::{IndexedCaRoots, IssuedCert, generate_leaf_request, pick_renewal_time};
use crate::cache::{CacheKey, CacheRequest, CacheType, FetchOptions, FetchResult, TypeOptions};
use crate::catalog::{ServiceEntry, ServiceKind};
use crate::certs::{self, CertInfo};
use crate::intentions::Intention;
use crate::spiffe::{ServerId, ServiceId, SpiffeId, TrustDomain};
use crate::state::Indexed;
use crate::tls::Svid;
use crate::{Error, ErrorKind, SharedClock};

/// A request scoped to a datacenter and token, naming one thing.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scoped {
    /// Datacenter.
    pub datacenter: String,
    /// ACL token (part of the cache key: data is never shared across tokens).
    pub token: String,
    /// The service (or empty for roots).
    pub name: String,
}

impl std::fmt::Debug for Scoped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scoped")
            .field("datacenter", &self.datacenter)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Scoped {
    fn token(&self) -> Option<&str> {
        (!self.token.is_empty()).then_some(self.token.as_str())
    }
}

impl CacheRequest for Scoped {
    fn cache_key(&self) -> CacheKey {
        // The prefix keeps the key non-empty (an empty key bypasses the cache); built by hand
        // since `format!` was a measurable part of an authorize call (BENCHMARKS.md, issue 18).
        let mut key = String::with_capacity(5 + self.name.len());
        key.push_str("name:");
        key.push_str(&self.name);
        CacheKey::new(&self.datacenter, &self.token, key)
    }
}

fn timeout_of<V, S>(opts: &FetchOptions<V, S>) -> Duration {
    opts.timeout.unwrap_or(crate::cache::DEFAULT_QUERY_TIMEOUT)
}

/// `connect-ca-root`: blocking, refreshed in the background.
#[derive(Debug, Clone)]
pub struct RootsType {
    pub(super) backend: Backend,
}

impl CacheType for RootsType {
    const NAME: &'static str = "connect-ca-root";
    type Request = Scoped;
    type Value = IndexedCaRoots;
    type State = ();

    fn options(&self) -> TypeOptions {
        TypeOptions::blocking_refresh()
    }

    async fn fetch(
        &self,
        opts: FetchOptions<IndexedCaRoots, ()>,
        _req: &Scoped,
    ) -> Result<FetchResult<IndexedCaRoots, ()>, Error> {
        let r = self
            .backend
            .roots(opts.min_index, timeout_of(&opts))
            .await?;
        Ok(blocking_result(&opts, r))
    }

    fn size_of(&self, v: &IndexedCaRoots) -> usize {
        v.roots
            .iter()
            .map(|r| {
                r.root_cert.len() + r.intermediates().iter().map(String::len).sum::<usize>() + 256
            })
            .sum()
    }
}

/// `intention-match` (by destination): blocking, refreshed in the background.
#[derive(Debug, Clone)]
pub struct IntentionMatchType {
    pub(super) backend: Backend,
}

impl CacheType for IntentionMatchType {
    const NAME: &'static str = "intention-match";
    type Request = Scoped;
    type Value = Vec<Arc<Intention>>;
    type State = ();

    fn options(&self) -> TypeOptions {
        TypeOptions::blocking_refresh()
    }

    async fn fetch(
        &self,
        opts: FetchOptions<Vec<Arc<Intention>>, ()>,
        req: &Scoped,
    ) -> Result<FetchResult<Vec<Arc<Intention>>, ()>, Error> {
        let r = self
            .backend
            .intention_match(req.token(), &req.name, opts.min_index, timeout_of(&opts))
            .await?;
        // Shared, so that a decision taken over the cached list points at its intention
        // instead of copying it (the HTTP authorize endpoint, BENCHMARKS.md).
        let r = Indexed {
            value: r.value.into_iter().map(Arc::new).collect(),
            index: r.index,
        };
        Ok(blocking_result(&opts, r))
    }

    fn size_of(&self, v: &Vec<Arc<Intention>>) -> usize {
        v.len() * std::mem::size_of::<Intention>()
    }
}

/// `health-services` with `?connect&passing`: blocking, refreshed in the background. A
/// request for another datacenter than the agent's asks with `?dc=`.
#[derive(Debug, Clone)]
pub struct HealthConnectType {
    pub(super) backend: Backend,
    /// The agent's datacenter: requests for it go without `?dc=`.
    pub(super) datacenter: String,
}

/// `?dc=` for a request, only when it names another datacenter than the agent's.
fn remote_dc<'a>(local: &str, req: &'a Scoped) -> Option<&'a str> {
    (!req.datacenter.is_empty() && req.datacenter != local).then_some(req.datacenter.as_str())
}

/// The passing instances of `req.name` for both health types (`connect`: connect-capable
/// only), blocking from the cached index.
async fn fetch_health(
    backend: &Backend,
    local_dc: &str,
    connect: bool,
    opts: &FetchOptions<Vec<ServiceEntry>, ()>,
    req: &Scoped,
) -> Result<Indexed<Vec<ServiceEntry>>, Error> {
    backend
        .health(
            req.token(),
            &req.name,
            connect,
            remote_dc(local_dc, req),
            opts.min_index,
            timeout_of(opts),
        )
        .await
}

/// A blocking fetch's answer: "not modified" while the index has not moved past the cached
/// value's, so that watchers wake only on change.
fn blocking_result<T>(opts: &FetchOptions<T, ()>, r: Indexed<T>) -> FetchResult<T, ()> {
    if opts.last_value.is_some() && r.index <= opts.last_index {
        FetchResult::not_modified(r.index)
    } else {
        FetchResult::new(Arc::new(r.value), r.index)
    }
}

impl CacheType for HealthConnectType {
    const NAME: &'static str = "health-services";
    type Request = Scoped;
    type Value = Vec<ServiceEntry>;
    type State = ();

    fn options(&self) -> TypeOptions {
        TypeOptions::blocking_refresh()
    }

    async fn fetch(
        &self,
        opts: FetchOptions<Vec<ServiceEntry>, ()>,
        req: &Scoped,
    ) -> Result<FetchResult<Vec<ServiceEntry>, ()>, Error> {
        let r = fetch_health(&self.backend, &self.datacenter, true, &opts, req).await?;
        Ok(blocking_result(&opts, r))
    }

    fn size_of(&self, v: &Vec<ServiceEntry>) -> usize {
        v.len() * std::mem::size_of::<ServiceEntry>()
    }
}

/// `mesh-gateways`: the passing instances of a gateway service (`Kind: mesh-gateway`) in a
/// datacenter, for dials and gateways that route through them. Blocking, refreshed in the
/// background.
#[derive(Debug, Clone)]
pub struct MeshGatewaysType {
    pub(super) backend: Backend,
    /// The agent's datacenter: requests for it go without `?dc=`.
    pub(super) datacenter: String,
}

impl CacheType for MeshGatewaysType {
    const NAME: &'static str = "mesh-gateways";
    type Request = Scoped;
    type Value = Vec<ServiceEntry>;
    type State = ();

    fn options(&self) -> TypeOptions {
        TypeOptions::blocking_refresh()
    }

    async fn fetch(
        &self,
        opts: FetchOptions<Vec<ServiceEntry>, ()>,
        req: &Scoped,
    ) -> Result<FetchResult<Vec<ServiceEntry>, ()>, Error> {
        let mut r = fetch_health(&self.backend, &self.datacenter, false, &opts, req).await?;
        r.value
            .retain(|e| e.service.kind == ServiceKind::MeshGateway);
        Ok(blocking_result(&opts, r))
    }

    fn size_of(&self, v: &Vec<ServiceEntry>) -> usize {
        v.len() * std::mem::size_of::<ServiceEntry>()
    }
}

/// A leaf certificate with the key generated in this process.
///
/// Held as DER, the form a handshake loads: with thousands of services cached, the PEM text
/// and the API's string fields were most of the memory per service (BENCHMARKS.md). The PEM
/// forms and the [`IssuedCert`] view are built on demand, off the hot path.
pub struct Leaf {
    cert: CertificateDer<'static>,
    intermediates: Box<[CertificateDer<'static>]>,
    key: Zeroizing<PrivateKeyDer<'static>>,
    /// Which signing key issued the leaf, compared with the active root's on every renewal
    /// check; kept so that check does not parse the certificate.
    authority_key_id: Box<[u8]>,
    valid_after: OffsetDateTime,
    valid_before: OffsetDateTime,
    renew_at: OffsetDateTime,
    create_index: u64,
    modify_index: u64,
}

impl Clone for Leaf {
    fn clone(&self) -> Self {
        Leaf {
            cert: self.cert.clone(),
            intermediates: self.intermediates.clone(),
            key: Zeroizing::new(self.key.clone_key()),
            authority_key_id: self.authority_key_id.clone(),
            valid_after: self.valid_after,
            valid_before: self.valid_before,
            renew_at: self.renew_at,
            create_index: self.create_index,
            modify_index: self.modify_index,
        }
    }
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let info = CertInfo::from_der(&self.cert).ok();
        f.debug_struct("Leaf")
            .field(
                "service_uri",
                &info
                    .as_ref()
                    .and_then(|i| i.uris.first())
                    .map_or("", String::as_str),
            )
            .field("serial", &info.as_ref().map(CertInfo::serial_hex))
            .field("valid_before", &self.valid_before)
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

/// Copies `der` into an allocation of exactly its size: PEM decoding leaves spare capacity,
/// which would otherwise stay allocated for the life of the entry.
fn exact_cert(der: &[u8]) -> CertificateDer<'static> {
    CertificateDer::from(der.to_vec())
}

impl Leaf {
    /// A leaf from what the CA returned and the PEM of its key (`EC PRIVATE KEY`,
    /// `RSA PRIVATE KEY` or `PRIVATE KEY`), to be renewed at `renew_at`.
    ///
    /// Errors: `InvalidPem`/`InvalidCertificate` when `issued.cert_pem` holds no
    /// certificate, `InvalidKey` when `key_pem` holds no key.
    pub fn from_issued(
        issued: &IssuedCert,
        key_pem: &str,
        renew_at: OffsetDateTime,
    ) -> Result<Leaf, Error> {
        let chain = certs::parse_pem_certificates(&issued.cert_pem)?;
        let info = CertInfo::from_der(&chain[0])?;
        let key = Zeroizing::new(PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(
            |e| Error::new(ErrorKind::InvalidKey, format!("no private key in PEM: {e}")),
        )?);
        let key = Zeroizing::new(match &*key {
            PrivateKeyDer::Pkcs1(k) => PrivateKeyDer::Pkcs1(k.secret_pkcs1_der().to_vec().into()),
            PrivateKeyDer::Sec1(k) => PrivateKeyDer::Sec1(k.secret_sec1_der().to_vec().into()),
            other => PrivateKeyDer::Pkcs8(other.secret_der().to_vec().into()),
        });
        Ok(Leaf {
            cert: exact_cert(&chain[0]),
            intermediates: chain[1..].iter().map(|c| exact_cert(c)).collect(),
            key,
            authority_key_id: info.authority_key_id.unwrap_or_default().into(),
            valid_after: info.not_before,
            valid_before: info.not_after,
            renew_at,
            create_index: issued.create_index,
            modify_index: issued.modify_index,
        })
    }

    /// The leaf certificate, DER.
    pub fn cert(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The intermediates that follow the leaf in its chain, DER.
    pub fn intermediates(&self) -> &[CertificateDer<'static>] {
        &self.intermediates
    }

    /// The chain, leaf first, as owned DER (what a TLS configuration takes).
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        std::iter::once(&self.cert)
            .chain(self.intermediates.iter())
            .cloned()
            .collect()
    }

    /// The chain as PEM, leaf first (the `CertPEM` of the API).
    pub fn chain_pem(&self) -> String {
        std::iter::once(&self.cert)
            .chain(self.intermediates.iter())
            .map(|c| certs::der_to_pem(c))
            .collect()
    }

    /// The private key, DER; it never leaves the process.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The private key as PEM, in the block type it was given in (`EC PRIVATE KEY` for the
    /// keys generated here).
    pub fn key_pem(&self) -> Zeroizing<String> {
        let label = match &*self.key {
            PrivateKeyDer::Pkcs1(_) => "RSA PRIVATE KEY",
            PrivateKeyDer::Sec1(_) => "EC PRIVATE KEY",
            _ => "PRIVATE KEY",
        };
        Zeroizing::new(certs::pem_encode(label, self.key.secret_der()))
    }

    /// The certificate and key as an SVID (what a service's identity serves).
    pub fn to_svid(&self) -> Result<Svid, Error> {
        Svid::from_der(self.chain(), self.key.clone_key())
    }

    /// Colon-hex authority key ID of the leaf: which signing key issued it.
    pub fn authority_key_id(&self) -> String {
        certs::colon_hex(&self.authority_key_id)
    }

    /// NotBefore.
    pub fn valid_after(&self) -> OffsetDateTime {
        self.valid_after
    }

    /// NotAfter: the leaf is never handed out from this point on.
    pub fn valid_before(&self) -> OffsetDateTime {
        self.valid_before
    }

    /// When to renew: a random point in 60–90 % of the lifetime (ARCHITECTURE.md, agent).
    pub fn renew_at(&self) -> OffsetDateTime {
        self.renew_at
    }

    /// The index of the signing.
    pub fn modify_index(&self) -> u64 {
        self.modify_index
    }

    /// The leaf as the API describes it (Consul API docs, Agent Connect), rebuilt from the
    /// certificate: serial, service and SPIFFE ID, namespace and partition as the built-in CA fills
    /// them. `PrivateKeyPEM` stays empty: the key is [`Leaf::key_pem`].
    ///
    /// Errors: `InvalidCertificate` if the stored certificate no longer parses (it was
    /// parsed when the leaf was made, so this does not happen in practice).
    pub fn issued(&self) -> Result<IssuedCert, Error> {
        let info = CertInfo::from_der(&self.cert)?;
        let uri = info.uris.first().cloned().unwrap_or_default();
        let (mut service, mut namespace, mut partition) =
            (String::new(), String::new(), String::new());
        if let Ok(SpiffeId::Service(s)) = SpiffeId::parse(&uri) {
            service = s.service;
            namespace = s.namespace;
            if !s.partition.is_empty() && !s.partition.eq_ignore_ascii_case("default") {
                partition = s.partition;
            }
        }
        Ok(IssuedCert {
            serial_number: info.serial_hex(),
            cert_pem: self.chain_pem(),
            private_key_pem: String::new(),
            service,
            service_uri: uri,
            agent: String::new(),
            agent_uri: String::new(),
            valid_after: self.valid_after,
            valid_before: self.valid_before,
            namespace,
            partition,
            create_index: self.create_index,
            modify_index: self.modify_index,
        })
    }

    /// An estimate of the heap bytes the leaf holds, for the cache's `bytes` gauge.
    fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Leaf>()
            + self.cert.len()
            + self
                .intermediates
                .iter()
                .map(|c| c.len() + std::mem::size_of::<CertificateDer<'_>>())
                .sum::<usize>()
            + self.key.secret_der().len()
            + self.authority_key_id.len()
    }
}

/// The leaf type's per-entry bookkeeping (ARCHITECTURE.md, agent).
#[derive(Debug, Clone, Default)]
pub struct LeafState {
    force_expire_after: Option<OffsetDateTime>,
    rotation_start: Option<OffsetDateTime>,
    consecutive_rate_limit_errors: u32,
}

/// A leaf request: the service, and extra SANs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeafCacheRequest {
    /// Datacenter, token and service name.
    pub scope: Scoped,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Extra IP SANs.
    pub ip_addresses: Vec<IpAddr>,
    /// Whose leaf this is.
    pub(crate) kind: LeafKind,
}

/// Whose identity a leaf request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum LeafKind {
    /// A service's (`scope.name`).
    Service,
    /// This datacenter's servers' (`spiffe://<td>/agent/server/dc/<dc>`, the HTTPS
    /// listener of a server), signed by the in-process server.
    Server,
}

impl std::fmt::Debug for LeafCacheRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafCacheRequest")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl CacheRequest for LeafCacheRequest {
    fn cache_key(&self) -> CacheKey {
        let kind = match self.kind {
            LeafKind::Service => "service",
            LeafKind::Server => "server",
        };
        let mut key = format!("{kind}:{}", self.scope.name);
        for d in &self.dns_names {
            key.push_str(&format!(";dns={d}"));
        }
        for i in &self.ip_addresses {
            key.push_str(&format!(";ip={i}"));
        }
        CacheKey::new(&self.scope.datacenter, &self.scope.token, key)
    }
}

/// `connect-ca-leaf`: blocking, not refreshed in the background; the blocking fetch itself
/// waits for the renewal point or a root rotation (ARCHITECTURE.md, agent).
#[derive(Debug, Clone)]
pub struct LeafType {
    pub(super) backend: Backend,
    pub(super) clock: SharedClock,
    /// The latest roots, published by the agent's roots watcher.
    pub(super) roots: watch::Receiver<Option<Arc<IndexedCaRoots>>>,
    /// Upper bound of the random delay before re-issuing after a root change (30 s).
    pub(super) root_change_jitter: Duration,
}

fn active_signing_key(roots: &IndexedCaRoots) -> Option<&str> {
    roots.active().map(|r| r.signing_key_id.as_str())
}

fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        Duration::ZERO
    } else {
        max.mul_f64(rand::random::<f64>())
    }
}

impl LeafType {
    async fn current_roots(&self) -> Result<Arc<IndexedCaRoots>, Error> {
        let mut rx = self.roots.clone();
        let roots = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::new(ErrorKind::Closed, "the agent is closed"))?;
        roots
            .clone()
            .ok_or_else(|| Error::new(ErrorKind::Internal, "roots vanished"))
    }

    /// Makes a new key and CSR here and has the backend sign it.
    async fn generate(
        &self,
        req: &LeafCacheRequest,
        last_index: u64,
    ) -> Result<(Arc<Leaf>, u64), Error> {
        let roots = self.current_roots().await?;
        if roots.trust_domain.is_empty() {
            return Err(Error::new(
                ErrorKind::CaNotInitialized,
                "cluster has no CA bootstrapped yet",
            ));
        }
        let td = TrustDomain::new(&roots.trust_domain)?;
        let uri = match req.kind {
            LeafKind::Server => ServerId::new(&td, &req.scope.datacenter).uri(),
            LeafKind::Service => ServiceId::new(&td, &req.scope.datacenter, &req.scope.name).uri(),
        };
        let (dns, ips, service) = (
            req.dns_names.clone(),
            req.ip_addresses.clone(),
            req.scope.name.clone(),
        );
        let (csr, key) = tokio::task::spawn_blocking(move || {
            generate_leaf_request(&uri, &dns, &ips).map(|r| (r.csr_pem, r.key))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))??;
        let signed = if req.kind != LeafKind::Service {
            self.backend.sign_agent(&csr).await?
        } else {
            self.backend.sign(req.scope.token(), &service, &csr).await?
        };
        let key_pem = match signed.peer_key_pem {
            Some(k) => Zeroizing::new(k),
            None => key.to_pem(),
        };
        let issued = signed.issued;
        let mut leaf = Leaf::from_issued(&issued, &key_pem, OffsetDateTime::UNIX_EPOCH)?;
        leaf.renew_at = pick_renewal_time(leaf.valid_after, leaf.valid_before, self.clock.now());
        // A new certificate must look new to blocked readers even if the backend's index has
        // not moved.
        let index = issued.modify_index.max(last_index + 1);
        Ok((Arc::new(leaf), index))
    }

    /// Generates, applying the rate-limit retry window of ARCHITECTURE.md, agent when a previous
    /// leaf can still be served.
    async fn renew(
        &self,
        req: &LeafCacheRequest,
        last: Option<&Arc<Leaf>>,
        last_index: u64,
        mut state: LeafState,
    ) -> Result<FetchResult<Leaf, LeafState>, Error> {
        match self.generate(req, last_index).await {
            Ok((leaf, index)) => Ok(FetchResult::new(leaf, index).with_state(LeafState::default())),
            Err(e) if e.kind() == ErrorKind::RateLimited => {
                let now = self.clock.now();
                // Keep serving the old leaf only while it is valid: an expired leaf is never
                // handed out.
                if last.is_none_or(|l| now >= l.valid_before) {
                    return Err(e);
                }
                let start = *state.rotation_start.get_or_insert(now);
                state.consecutive_rate_limit_errors += 1;
                let delay = jitter(Duration::from_secs(30));
                let window_start = start + delay * state.consecutive_rate_limit_errors;
                state.force_expire_after = Some(window_start + delay);
                Ok(FetchResult::not_modified(last_index).with_state(state))
            }
            Err(e) => Err(e),
        }
    }
}

impl CacheType for LeafType {
    const NAME: &'static str = "connect-ca-leaf";
    type Request = LeafCacheRequest;
    type Value = Leaf;
    type State = LeafState;

    fn options(&self) -> TypeOptions {
        TypeOptions::blocking_no_refresh()
    }

    async fn fetch(
        &self,
        opts: FetchOptions<Leaf, LeafState>,
        req: &LeafCacheRequest,
    ) -> Result<FetchResult<Leaf, LeafState>, Error> {
        let timeout = timeout_of(&opts);
        let Some(last) = opts.last_value.clone() else {
            return self.renew(req, None, opts.last_index, opts.state).await;
        };
        let mut state = opts.state;
        let mut expires_at = last.renew_at;
        if let Some(f) = state.force_expire_after {
            expires_at = expires_at.min(f);
        }
        if expires_at <= self.clock.now() {
            return self.renew(req, Some(&last), opts.last_index, state).await;
        }
        let roots = self.current_roots().await?;
        if opts.must_revalidate || opts.min_index == 0 {
            // A fresh read: serve the leaf only if the active root still signs with its key.
            if active_signing_key(&roots) == Some(last.authority_key_id().as_str()) {
                return Ok(FetchResult::not_modified(opts.last_index).with_state(state));
            }
            return self.renew(req, Some(&last), opts.last_index, state).await;
        }
        // Blocking: wait for the renewal point, a root rotation, or the query timeout.
        let mut roots_rx = self.roots.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                () = self.clock.sleep_until(expires_at) => {
                    return self.renew(req, Some(&last), opts.last_index, state).await;
                }
                () = tokio::time::sleep_until(deadline) => {
                    return Ok(FetchResult::not_modified(opts.last_index).with_state(state));
                }
                changed = roots_rx.changed() => {
                    if changed.is_err() {
                        return Err(Error::new(ErrorKind::Closed, "the agent is closed"));
                    }
                    let now_roots = roots_rx.borrow_and_update().clone();
                    let rotated = now_roots
                        .as_deref()
                        .and_then(active_signing_key)
                        .is_some_and(|k| k != last.authority_key_id());
                    if rotated && state.rotation_start.is_none() {
                        // Spread re-issues over the jitter window so thousands of instances
                        // do not hit the CA at once (ARCHITECTURE.md, agent).
                        let now = self.clock.now();
                        state.rotation_start = Some(now);
                        let force = now + jitter(self.root_change_jitter);
                        state.force_expire_after = Some(force);
                        expires_at = expires_at.min(force);
                    }
                }
            }
        }
    }

    fn size_of(&self, v: &Leaf) -> usize {
        v.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::SignPolicy;
    use crate::server::{Server, ServerConfig};

    fn signed(service: &str) -> (IssuedCert, Zeroizing<String>) {
        let server = Server::start(ServerConfig::dev(), crate::clock::system()).unwrap();
        let td = TrustDomain::new(&server.trust_domain()).unwrap();
        let uri = ServiceId::new(&td, server.datacenter(), service).uri();
        let req = generate_leaf_request(&uri, &[], &[]).unwrap();
        let issued = server
            .sign(None, &req.csr_pem, SignPolicy::ServiceOnly)
            .unwrap();
        (issued, req.key.to_pem())
    }

    /// What used to be stored is now derived: it must come back exactly as the CA gave it.
    #[test]
    fn a_leaf_held_as_der_gives_back_what_was_issued() {
        let (issued, key_pem) = signed("web");
        let renew_at = issued.valid_after + time::Duration::hours(1);
        let leaf = Leaf::from_issued(&issued, &key_pem, renew_at).unwrap();
        assert_eq!(leaf.issued().unwrap(), issued);
        assert_eq!(leaf.chain_pem(), issued.cert_pem);
        assert_eq!(*leaf.key_pem(), *key_pem);
        assert_eq!(leaf.valid_after(), issued.valid_after);
        assert_eq!(leaf.valid_before(), issued.valid_before);
        assert_eq!(leaf.renew_at(), renew_at);
        assert_eq!(leaf.modify_index(), issued.modify_index);
        let info = CertInfo::from_der(leaf.cert()).unwrap();
        assert_eq!(
            leaf.authority_key_id(),
            certs::colon_hex(&info.authority_key_id.unwrap())
        );
        let svid = leaf.to_svid().unwrap();
        assert_eq!(svid.serial(), issued.serial_number);
        assert_eq!(leaf.clone().issued().unwrap(), issued);
    }

    #[test]
    fn leaf_debug_output_holds_no_key() {
        let (issued, key_pem) = signed("web");
        let leaf = Leaf::from_issued(&issued, &key_pem, issued.valid_after).unwrap();
        let debug = format!("{leaf:?}");
        assert!(debug.contains(&issued.service_uri), "{debug}");
        assert!(!debug.contains("PRIVATE"), "{debug}");
        for line in key_pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!debug.contains(line), "{debug}");
        }
        let hex: String = leaf
            .key()
            .secret_der()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert!(!debug.contains(&hex[..16]), "{debug}");
    }

    /// A Consul peer hands out PKCS#8 keys; they keep their block type.
    #[test]
    fn a_pkcs8_key_stays_pkcs8() {
        let (issued, _) = signed("api");
        let key = crate::ca::PrivateKey::generate(crate::ca::KeySpec::EC_P256).unwrap();
        let pkcs8 = certs::pem_encode("PRIVATE KEY", key.pair().serialized_der());
        let leaf = Leaf::from_issued(&issued, &pkcs8, issued.valid_after).unwrap();
        assert!(matches!(leaf.key(), PrivateKeyDer::Pkcs8(_)));
        assert_eq!(*leaf.key_pem(), pkcs8);
        assert!(Leaf::from_issued(&issued, "no key here", issued.valid_after).is_err());
    }
}
