//! The Connect cache types (spec §4.1): CA roots, leaf certificates (with the lifecycle of
//! §3), intention match by destination, and healthy connect instances of a service.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::backend::Backend;
use crate::ca::{IndexedCaRoots, IssuedCert, generate_leaf_request, pick_renewal_time};
use crate::cache::{CacheKey, CacheRequest, CacheType, FetchOptions, FetchResult, TypeOptions};
use crate::catalog::ServiceEntry;
use crate::certs::{self, CertInfo};
use crate::intentions::Intention;
use crate::spiffe::{ServiceId, TrustDomain};
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
        CacheKey::new(&self.datacenter, &self.token, format!("name:{}", self.name))
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
        if opts.last_value.is_some() && r.index <= opts.last_index {
            return Ok(FetchResult::not_modified(r.index));
        }
        Ok(FetchResult::new(Arc::new(r.value), r.index))
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
    type Value = Vec<Intention>;
    type State = ();

    fn options(&self) -> TypeOptions {
        TypeOptions::blocking_refresh()
    }

    async fn fetch(
        &self,
        opts: FetchOptions<Vec<Intention>, ()>,
        req: &Scoped,
    ) -> Result<FetchResult<Vec<Intention>, ()>, Error> {
        let r = self
            .backend
            .intention_match(req.token(), &req.name, opts.min_index, timeout_of(&opts))
            .await?;
        if opts.last_value.is_some() && r.index <= opts.last_index {
            return Ok(FetchResult::not_modified(r.index));
        }
        Ok(FetchResult::new(Arc::new(r.value), r.index))
    }

    fn size_of(&self, v: &Vec<Intention>) -> usize {
        v.len() * std::mem::size_of::<Intention>()
    }
}

/// `health-services` with `?connect&passing`: blocking, refreshed in the background.
#[derive(Debug, Clone)]
pub struct HealthConnectType {
    pub(super) backend: Backend,
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
        let r = self
            .backend
            .health_connect(req.token(), &req.name, opts.min_index, timeout_of(&opts))
            .await?;
        if opts.last_value.is_some() && r.index <= opts.last_index {
            return Ok(FetchResult::not_modified(r.index));
        }
        Ok(FetchResult::new(Arc::new(r.value), r.index))
    }

    fn size_of(&self, v: &Vec<ServiceEntry>) -> usize {
        v.len() * std::mem::size_of::<ServiceEntry>()
    }
}

/// A leaf certificate with the key generated in this process.
#[derive(Clone)]
pub struct Leaf {
    /// The certificate bundle (leaf then intermediates) and its metadata.
    pub issued: IssuedCert,
    /// The private key, PEM.
    pub key_pem: Zeroizing<String>,
    /// Colon-hex AKID of the leaf: which signing key issued it.
    pub authority_key_id: String,
    /// When to renew: a random point in 60–90 % of the lifetime (spec §3.3).
    pub renew_at: OffsetDateTime,
}

impl std::fmt::Debug for Leaf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leaf")
            .field("service_uri", &self.issued.service_uri)
            .field("serial", &self.issued.serial_number)
            .field("valid_before", &self.issued.valid_before)
            .field("renew_at", &self.renew_at)
            .finish_non_exhaustive()
    }
}

/// The leaf type's per-entry bookkeeping (spec §3.2).
#[derive(Debug, Clone, Default)]
pub struct LeafState {
    force_expire_after: Option<OffsetDateTime>,
    rotation_start: Option<OffsetDateTime>,
    consecutive_rate_limit_errors: u32,
}

/// A leaf request: the service, and extra SANs.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct LeafRequest {
    /// Datacenter, token and service name.
    pub scope: Scoped,
    /// Extra DNS SANs.
    pub dns_names: Vec<String>,
    /// Extra IP SANs.
    pub ip_addresses: Vec<IpAddr>,
}

impl std::fmt::Debug for LeafRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeafRequest")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl CacheRequest for LeafRequest {
    fn cache_key(&self) -> CacheKey {
        let mut key = format!("service:{}", self.scope.name);
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
/// waits for the renewal point or a root rotation (spec §3.2).
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
        req: &LeafRequest,
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
        let uri = ServiceId::new(&td, &req.scope.datacenter, &req.scope.name).uri();
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
        let signed = self.backend.sign(req.scope.token(), &service, &csr).await?;
        let key_pem = match signed.peer_key_pem {
            Some(k) => Zeroizing::new(k),
            None => key.to_pem(),
        };
        let issued = signed.issued;
        let chain = certs::parse_pem_certificates(&issued.cert_pem)?;
        let info = CertInfo::from_der(&chain[0])?;
        let authority_key_id = info
            .authority_key_id
            .as_deref()
            .map(certs::colon_hex)
            .unwrap_or_default();
        let renew_at = pick_renewal_time(info.not_before, info.not_after, self.clock.now());
        // A new certificate must look new to blocked readers even if the backend's index has
        // not moved.
        let index = issued.modify_index.max(last_index + 1);
        Ok((
            Arc::new(Leaf {
                issued,
                key_pem,
                authority_key_id,
                renew_at,
            }),
            index,
        ))
    }

    /// Generates, applying the rate-limit retry window of spec §3.4 when a previous leaf can
    /// still be served.
    async fn renew(
        &self,
        req: &LeafRequest,
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
                if last.is_none_or(|l| now >= l.issued.valid_before) {
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
    type Request = LeafRequest;
    type Value = Leaf;
    type State = LeafState;

    fn options(&self) -> TypeOptions {
        TypeOptions::blocking_no_refresh()
    }

    async fn fetch(
        &self,
        opts: FetchOptions<Leaf, LeafState>,
        req: &LeafRequest,
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
            if active_signing_key(&roots) == Some(last.authority_key_id.as_str()) {
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
                        .is_some_and(|k| k != last.authority_key_id);
                    if rotated && state.rotation_start.is_none() {
                        // Spread re-issues over the jitter window so thousands of instances
                        // do not hit the CA at once (spec §3.2 step 5).
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
        v.issued.cert_pem.len() + v.key_pem.len() + 512
    }
}
