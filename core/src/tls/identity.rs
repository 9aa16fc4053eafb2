//! The current leaf and roots of one service, published as immutable snapshots.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;
use tokio::sync::watch;
use webpki::anchor_from_trusted_cert;
use zeroize::Zeroizing;

use super::verify::{PeerRole, VerifiedChains, check_chain, leaf_identity};
use super::{KeyExchange, crypto_provider, errors::from_rustls};
use crate::ca::{IndexedCaRoots, IssuedCert, PrivateKey};
use crate::certs::{self, pem_encode};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::{Error, ErrorKind, Result, SharedClock};

/// Loads `key` with the one crypto provider, once, and pairs it with `chain` (leaf first), as
/// every certificate libconnect serves is held: a handshake then only clones an `Arc`.
/// `what` names the certificate in errors.
pub(crate) fn certified_key(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    what: &str,
) -> Result<CertifiedKey> {
    let provider = crypto_provider(KeyExchange::default());
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| Error::new(ErrorKind::InvalidKey, format!("{what} private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing);
    // A key whose public half is unknown cannot be checked, and an unchecked pair would fail
    // every handshake later, so both mismatch and "unknown" are refused here.
    certified.keys_match().map_err(|e| {
        Error::new(
            ErrorKind::InvalidKey,
            format!("{what} private key does not match the leaf certificate: {e}"),
        )
    })?;
    Ok(certified)
}

/// A leaf certificate chain with its private key: one service's X.509 SVID.
///
/// Built only through constructors that check it: the chain parses, the leaf names exactly one
/// SPIFFE *service* ID, and the key is the leaf's key (`CertifiedKey` from aws-lc-rs). The
/// signing key is loaded once here, so a handshake only clones an `Arc`.
pub struct Svid {
    certified: Arc<CertifiedKey>,
    key_pem: Zeroizing<String>,
    spiffe_id: SpiffeId,
    serial: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
}

impl fmt::Debug for Svid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("spiffe_id", &self.spiffe_id.to_string())
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("chain_len", &self.certified.cert.len())
            .finish_non_exhaustive()
    }
}

impl Svid {
    /// Builds an SVID from a chain (leaf first, then intermediates) and the leaf's key.
    pub fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Svid> {
        let leaf = chain.first().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidCertificate,
                "SVID chain holds no certificate",
            )
        })?;
        let (spiffe_id, info) = leaf_identity(leaf).map_err(|f| f.into_error())?;
        if spiffe_id.as_service().is_none() {
            return Err(Error::new(
                ErrorKind::InvalidCertificate,
                format!("SVID names {spiffe_id}, which is not a service identity"),
            ));
        }
        for (i, c) in chain.iter().enumerate().skip(1) {
            certs::CertInfo::from_der(c).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidCertificate,
                    format!("SVID chain certificate {i}: {e}"),
                )
            })?;
        }
        let key_pem = Zeroizing::new(match &key {
            PrivateKeyDer::Sec1(k) => pem_encode("EC PRIVATE KEY", k.secret_sec1_der()),
            PrivateKeyDer::Pkcs1(k) => pem_encode("RSA PRIVATE KEY", k.secret_pkcs1_der()),
            PrivateKeyDer::Pkcs8(k) => pem_encode("PRIVATE KEY", k.secret_pkcs8_der()),
            _ => {
                return Err(Error::new(
                    ErrorKind::UnsupportedKey,
                    "unknown private key format",
                ));
            }
        });
        let certified = certified_key(chain, key, "SVID")?;
        Ok(Svid {
            certified: Arc::new(certified),
            key_pem,
            serial: info.serial_hex(),
            not_before: info.not_before,
            not_after: info.not_after,
            spiffe_id,
        })
    }

    /// Builds an SVID from PEM: the chain (`CERTIFICATE` blocks, leaf first) and the key
    /// (`EC PRIVATE KEY`, `RSA PRIVATE KEY` or `PRIVATE KEY`).
    pub fn from_pem(chain_pem: &str, key_pem: &str) -> Result<Svid> {
        let chain = certs::parse_pem_certificates(chain_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
            Error::new(ErrorKind::InvalidKey, format!("no private key in PEM: {e}"))
        })?;
        Svid::from_der(chain, key)
    }

    /// The leaf's key as unencrypted PKCS#8 DER (what the SPIFFE Workload API hands out).
    pub fn key_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>> {
        Ok(crate::ca::PrivateKey::from_pem(&self.key_pem)?.to_pkcs8_der()?)
    }

    /// Builds an SVID from what the CA returned and the key generated for its CSR.
    pub fn from_issued(issued: &IssuedCert, key: &PrivateKey) -> Result<Svid> {
        Svid::from_pem(&issued.cert_pem, &key.to_pem())
    }

    /// The chain: leaf first, then intermediates.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.certified.cert
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        // The constructor refuses empty chains.
        &self.certified.cert[0]
    }

    /// The identity the leaf names (always a service ID).
    pub fn spiffe_id(&self) -> &SpiffeId {
        &self.spiffe_id
    }

    /// The leaf's serial number, colon-hex as Consul prints it.
    pub fn serial(&self) -> &str {
        &self.serial
    }

    /// The leaf's NotBefore.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The leaf's NotAfter.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain().iter().map(|c| certs::der_to_pem(c)).collect()
    }

    /// The private key as PEM; zeroed when dropped.
    pub fn key_pem(&self) -> Zeroizing<String> {
        self.key_pem.clone()
    }

    /// The chain and key as rustls serves them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified
    }
}

/// The roots a service trusts, for one trust domain.
///
/// All roots count, not only the active one: during a rotation peers still hold leaves of the
/// old root (Consul CA docs, root rotation).
pub struct Bundle {
    trust_domain: TrustDomain,
    roots: Vec<CertificateDer<'static>>,
    anchors: Vec<rustls_pki_types::TrustAnchor<'static>>,
    /// Peer chains that verified against these roots; a bundle of other roots starts empty.
    verified: VerifiedChains,
}

impl Clone for Bundle {
    /// The same roots with an empty cache of verified chains.
    fn clone(&self) -> Bundle {
        Bundle {
            trust_domain: self.trust_domain.clone(),
            roots: self.roots.clone(),
            anchors: self.anchors.clone(),
            verified: VerifiedChains::default(),
        }
    }
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("trust_domain", &self.trust_domain.as_str())
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Bundle {
    /// A bundle of `roots` (DER) for `trust_domain`; at least one root, each a usable trust
    /// anchor.
    pub fn new(trust_domain: &str, roots: Vec<CertificateDer<'static>>) -> Result<Bundle> {
        let trust_domain = TrustDomain::new(trust_domain)?;
        if roots.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidCertificate,
                "trust bundle holds no root",
            ));
        }
        let mut anchors = Vec::with_capacity(roots.len());
        for (i, r) in roots.iter().enumerate() {
            certs::CertInfo::from_der(r)
                .map_err(|e| Error::new(ErrorKind::InvalidCertificate, format!("root {i}: {e}")))?;
            let anchor = anchor_from_trusted_cert(r).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidCertificate,
                    format!("root {i} is not a usable trust anchor: {e:?}"),
                )
            })?;
            anchors.push(anchor.to_owned());
        }
        Ok(Bundle {
            trust_domain,
            roots,
            anchors,
            verified: VerifiedChains::default(),
        })
    }

    /// A bundle from PEM text holding one or more `CERTIFICATE` blocks.
    pub fn from_pem(trust_domain: &str, roots_pem: &str) -> Result<Bundle> {
        Bundle::new(trust_domain, certs::parse_pem_certificates(roots_pem)?)
    }

    /// Every root of a roots response (`/v1/agent/connect/ca/roots`), active or not.
    pub fn from_ca_roots(roots: &IndexedCaRoots) -> Result<Bundle> {
        Bundle::from_pem(&roots.trust_domain, &roots.roots_pem())
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The roots as PEM.
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|c| certs::der_to_pem(c)).collect()
    }

    pub(crate) fn anchors(&self) -> &[rustls_pki_types::TrustAnchor<'static>] {
        &self.anchors
    }

    pub(crate) fn verified_chains(&self) -> &VerifiedChains {
        &self.verified
    }
}

/// What an [`Identity`] holds at one moment. Immutable: an update publishes a new one.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    generation: u64,
    svid: Option<Arc<Svid>>,
    bundle: Option<Arc<Bundle>>,
}

impl Snapshot {
    /// Counts successful updates; 0 before the first.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The current SVID, if one was set.
    pub fn svid(&self) -> Option<&Arc<Svid>> {
        self.svid.as_ref()
    }

    /// The current bundle, if one was set.
    pub fn bundle(&self) -> Option<&Arc<Bundle>> {
        self.bundle.as_ref()
    }

    /// Ready at `now` (ARCHITECTURE.md, tls): an SVID and a bundle are set and the leaf verifies
    /// against the roots. A root rotation without a new leaf can make a ready snapshot not ready.
    pub fn is_ready_at(&self, now: OffsetDateTime) -> bool {
        match (&self.svid, &self.bundle) {
            (Some(svid), Some(bundle)) => {
                let chain = svid.chain();
                check_chain(bundle, &chain[0], &chain[1..], now, PeerRole::Server).is_ok()
            }
            _ => false,
        }
    }
}

/// The "give me the current leaf" half of an identity source (ARCHITECTURE.md, tls).
pub trait SvidSource: Send + Sync + 'static {
    /// The current SVID.
    fn current_svid(&self) -> Option<Arc<Svid>>;
    /// A receiver that sees every published snapshot.
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>>;
}

/// The "give me the current roots" half of an identity source (ARCHITECTURE.md, tls).
pub trait BundleSource: Send + Sync + 'static {
    /// The current bundle.
    fn current_bundle(&self) -> Option<Arc<Bundle>>;
    /// A receiver that sees every published snapshot.
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>>;
}

struct Inner {
    service: String,
    clock: SharedClock,
    current: ArcSwap<Snapshot>,
    tx: watch::Sender<Arc<Snapshot>>,
    /// Serialises updates so that validate-then-publish sees the snapshot it replaces.
    update: Mutex<()>,
}

/// One service's mTLS identity: the current [`Snapshot`] of its leaf and roots.
///
/// Cheap to clone (a handle). Handshakes read the snapshot lock-free; updates validate first
/// and publish only what passed, so a bad leaf or bundle never reaches a handshake.
#[derive(Clone)]
pub struct Identity {
    inner: Arc<Inner>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.snapshot();
        f.debug_struct("Identity")
            .field("service", &self.inner.service)
            .field("generation", &s.generation)
            .field("svid", &s.svid)
            .field("bundle", &s.bundle)
            .finish()
    }
}

impl Identity {
    /// An empty identity for service `service`, reading time from `clock`.
    pub fn new(service: impl Into<String>, clock: SharedClock) -> Identity {
        let first = Arc::new(Snapshot::default());
        let (tx, _) = watch::channel(first.clone());
        Identity {
            inner: Arc::new(Inner {
                service: service.into(),
                clock,
                current: ArcSwap::new(first),
                tx,
                update: Mutex::new(()),
            }),
        }
    }

    /// The service this identity is for.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The clock every validity check reads.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The current snapshot (lock-free).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.inner.current.load_full()
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.inner.current.load().generation
    }

    /// A receiver that sees every published snapshot.
    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.inner.tx.subscribe()
    }

    /// Takes the update lock and reads the snapshot the update will replace; publish before
    /// dropping the guard.
    fn begin_update(&self) -> (MutexGuard<'_, ()>, Arc<Snapshot>) {
        let guard = self
            .inner
            .update
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (guard, self.snapshot())
    }

    fn publish(
        &self,
        svid: Option<Arc<Svid>>,
        bundle: Option<Arc<Bundle>>,
        prev: &Snapshot,
    ) -> u64 {
        let next = Arc::new(Snapshot {
            generation: prev.generation + 1,
            svid,
            bundle,
        });
        self.inner.current.store(next.clone());
        self.inner.tx.send_replace(next);
        prev.generation + 1
    }

    /// Publishes a new leaf after checking it: it must name this identity's service, its key
    /// must match (checked when the [`Svid`] was built), and, once roots are known, its chain
    /// must verify against them now. On error the previous snapshot stays in use.
    ///
    /// Returns the new generation.
    pub fn update_svid(&self, svid: Svid) -> Result<u64> {
        let (_guard, prev) = self.begin_update();
        let named = svid.spiffe_id.as_service().map(|s| s.service.as_str());
        if named != Some(self.inner.service.as_str()) {
            return Err(Error::new(
                ErrorKind::InvalidCertificate,
                format!(
                    "leaf certificate names {}, but this identity is for service {:?}",
                    svid.spiffe_id, self.inner.service
                ),
            ));
        }
        if let Some(bundle) = &prev.bundle {
            let chain = svid.chain();
            check_chain(
                bundle,
                &chain[0],
                &chain[1..],
                self.inner.clock.now(),
                PeerRole::Server,
            )
            .map_err(|e| {
                let inner = from_rustls(&e);
                Error::new(
                    inner.kind(),
                    format!("new leaf does not verify against the current roots: {inner}"),
                )
            })?;
        }
        Ok(self.publish(Some(Arc::new(svid)), prev.bundle.clone(), &prev))
    }

    /// Publishes new roots. The current leaf is kept even if it does not verify against them:
    /// the identity is then not [ready](Self::ready) until a new leaf arrives, as in Consul.
    ///
    /// Returns the new generation.
    pub fn update_bundle(&self, bundle: Bundle) -> Result<u64> {
        let (_guard, prev) = self.begin_update();
        Ok(self.publish(prev.svid.clone(), Some(Arc::new(bundle)), &prev))
    }

    /// Ready (ARCHITECTURE.md, tls): leaf and roots are set and the leaf verifies against the roots
    /// now.
    pub fn ready(&self) -> bool {
        self.snapshot().is_ready_at(self.inner.clock.now())
    }

    /// Waits until [`ready`](Self::ready), re-checking on every update, for at most `timeout`
    /// (then `Timeout`).
    pub async fn ready_wait(&self, timeout: Duration) -> Result<()> {
        let mut rx = self.watch();
        let wait = async {
            loop {
                if self.ready() {
                    return Ok(());
                }
                if rx.changed().await.is_err() {
                    return Err(Error::new(ErrorKind::Closed, "identity was dropped"));
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "service {:?} not ready after {timeout:?}: no leaf and roots that verify",
                    self.inner.service
                ),
            )),
        }
    }

    /// The current SVID, or `NotReady`.
    pub(crate) fn require_svid(&self) -> Result<Arc<Svid>> {
        self.snapshot().svid.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::NotReady,
                format!(
                    "service {:?} has no leaf certificate yet",
                    self.inner.service
                ),
            )
        })
    }

    /// The current bundle, or `NotReady`.
    pub(crate) fn require_bundle(&self) -> Result<Arc<Bundle>> {
        self.snapshot().bundle.clone().ok_or_else(|| {
            Error::new(
                ErrorKind::NotReady,
                format!("service {:?} has no CA roots yet", self.inner.service),
            )
        })
    }
}

impl SvidSource for Identity {
    fn current_svid(&self) -> Option<Arc<Svid>> {
        self.snapshot().svid.clone()
    }
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        Identity::watch(self)
    }
}

impl BundleSource for Identity {
    fn current_bundle(&self) -> Option<Arc<Bundle>> {
        self.snapshot().bundle.clone()
    }
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        Identity::watch(self)
    }
}
