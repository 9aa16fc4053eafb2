//! Chain verification against the current roots, and the identity a leaf names (Consul docs:
//! Connect-Native).

use std::hash::{Hash, Hasher};
use std::sync::{Mutex, PoisonError};

use rustc_hash::{FxHashMap, FxHasher};
use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::errors::VerifyFailure;
use super::identity::Bundle;
use super::provider::sig_algs;
use crate::certs::CertInfo;
use crate::spiffe::SpiffeId;
use crate::{Error, ErrorKind, Result};

/// The TLS role a certificate's holder plays; it picks the extended key usage the chain must
/// allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRole {
    /// The holder is a TLS client (needs clientAuth).
    Client,
    /// The holder is a TLS server (needs serverAuth when its leaf lists usages).
    Server,
}

/// Our clock's time as webpki wants it; times before 1970 cannot verify anything anyway.
pub(crate) fn unix_time(t: OffsetDateTime) -> UnixTime {
    let secs = u64::try_from(t.unix_timestamp()).unwrap_or(0);
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
}

/// Verifies `end_entity` through `intermediates` to any root of `bundle` at `now`.
///
/// Every root of the bundle is a trust anchor, so during a CA rotation leaves of the old and
/// the new root both verify, and a new leaf whose chain carries the new root cross-signed by the
/// old one verifies for a peer that has only the old root (Consul CA docs, root rotation).
///
/// A chain that verified before against the same bundle for the same role is not verified
/// again while `now` lies inside the validity of every certificate it carries (see
/// [`VerifiedChains`]); anything else — a new chain, a failed one, a time outside that window —
/// runs webpki's whole verification.
pub(crate) fn check_chain(
    bundle: &Bundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: OffsetDateTime,
    role: PeerRole,
) -> std::result::Result<(), rustls::Error> {
    let now = unix_time(now);
    let verified = bundle.verified_chains();
    if verified.contains(end_entity, intermediates, role, now) {
        return Ok(());
    }
    verify_with_webpki(bundle, end_entity, intermediates, now, role)?;
    verified.insert(end_entity, intermediates, role);
    Ok(())
}

fn verify_with_webpki(
    bundle: &Bundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    role: PeerRole,
) -> std::result::Result<(), rustls::Error> {
    let ee = EndEntityCert::try_from(end_entity)
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let usage = match role {
        PeerRole::Client => KeyUsage::client_auth(),
        PeerRole::Server => KeyUsage::server_auth(),
    };
    ee.verify_for_usage(
        sig_algs().all,
        bundle.anchors(),
        intermediates,
        now,
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(webpki_error)
}

/// How many verified chains a bundle remembers. A service meets the chains of its peers'
/// instances; beyond this many, the oldest-placed entries give way (a miss only costs the
/// verification the cache would have saved).
pub(crate) const VERIFIED_CHAINS_CAPACITY: usize = 512;

/// Chains that verified against one [`Bundle`], keyed by their exact DER bytes and the role
/// they verified for, with the time window in which every certificate of the chain is valid.
///
/// In a mesh the same peer chains arrive again and again, and verifying one costs a signature
/// check per certificate. What a hit skips is only that: the chain's bytes are compared in
/// full, the window is checked against the clock on every use, failures are never stored, the
/// cache belongs to the bundle so new roots start with an empty one, and the handshake's
/// CertificateVerify signature — the proof that the peer holds the leaf's key — is checked by
/// rustls on every handshake as before.
#[derive(Default)]
pub(crate) struct VerifiedChains {
    entries: Mutex<FxHashMap<u64, VerifiedChain>>,
}

struct VerifiedChain {
    role: PeerRole,
    chain: Vec<CertificateDer<'static>>,
    /// Seconds since the epoch: the latest notBefore and the earliest notAfter of the chain,
    /// compared as webpki compares them (valid when `not_before <= now <= not_after`).
    not_before: u64,
    not_after: u64,
}

impl VerifiedChains {
    fn key(end_entity: &[u8], intermediates: &[CertificateDer<'_>], role: PeerRole) -> u64 {
        let mut h = FxHasher::default();
        role.hash(&mut h);
        end_entity.hash(&mut h);
        for c in intermediates {
            c.as_ref().hash(&mut h);
        }
        h.finish()
    }

    fn contains(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
        now: UnixTime,
    ) -> bool {
        let key = Self::key(end_entity, intermediates, role);
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(e) = entries.get(&key) else {
            return false;
        };
        let now = now.as_secs();
        e.role == role
            && e.not_before <= now
            && now <= e.not_after
            && e.chain.len() == 1 + intermediates.len()
            && e.chain[0].as_ref() == end_entity.as_ref()
            && e.chain[1..]
                .iter()
                .zip(intermediates)
                .all(|(a, b)| a.as_ref() == b.as_ref())
    }

    /// Remembers a chain that has just verified. A chain whose validity cannot be read is not
    /// remembered (it is verified again each time).
    fn insert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        role: PeerRole,
    ) {
        let mut not_before = 0u64;
        let mut not_after = u64::MAX;
        for der in std::iter::once(end_entity).chain(intermediates) {
            let Ok((_, cert)) = X509Certificate::from_der(der) else {
                return;
            };
            let v = cert.validity();
            let (Ok(nb), Ok(na)) = (
                u64::try_from(v.not_before.timestamp()),
                u64::try_from(v.not_after.timestamp()),
            ) else {
                return;
            };
            not_before = not_before.max(nb);
            not_after = not_after.min(na);
        }
        let chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|c| c.clone().into_owned())
            .collect();
        let key = Self::key(end_entity, intermediates, role);
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= VERIFIED_CHAINS_CAPACITY
            && !entries.contains_key(&key)
            && let Some(&evict) = entries.keys().next()
        {
            entries.remove(&evict);
        }
        entries.insert(
            key,
            VerifiedChain {
                role,
                chain,
                not_before,
                not_after,
            },
        );
    }

    /// How many chains are remembered (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

fn webpki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as W;
    let ce = match e {
        W::UnknownIssuer => CertificateError::UnknownIssuer,
        // The times go along, so the error can say which clock reading failed which bound.
        W::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        W::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        W::InvalidCertValidity => CertificateError::Expired,
        W::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        W::BadDer | W::BadDerTime | W::TrailingData(_) => CertificateError::BadEncoding,
        other => {
            return VerifyFailure::new(
                ErrorKind::CertificateVerification,
                format!("x509: certificate chain does not verify: {other:?}"),
            )
            .into_rustls();
        }
    };
    rustls::Error::InvalidCertificate(ce)
}

/// Verifies a chain (leaf first, then intermediates) against `bundle` at `now` for `role`.
///
/// Errors: `CertificateVerification` with Go's texts (`x509: certificate signed by unknown
/// authority`, …), `InvalidCertificate` for an empty chain.
pub fn verify_chain(
    bundle: &Bundle,
    chain: &[CertificateDer<'_>],
    now: OffsetDateTime,
    role: PeerRole,
) -> Result<()> {
    let (leaf, rest) = chain.split_first().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidCertificate,
            "tls: no certificates from peer",
        )
    })?;
    check_chain(bundle, leaf, rest, now, role).map_err(|e| super::errors::from_rustls(&e))
}

/// The SPIFFE ID a leaf names, with the parsed leaf.
///
/// The leaf must carry exactly one URI SAN and it must parse as an identity Consul knows.
/// Consul's texts (`connect: invalid leaf certificate`, `… URI`) start the messages, and the
/// rest says which of these rules the leaf broke.
pub(crate) fn leaf_identity(
    leaf: &CertificateDer<'_>,
) -> std::result::Result<(SpiffeId, CertInfo), VerifyFailure> {
    let info = CertInfo::from_der(leaf).map_err(|e| {
        VerifyFailure::new(
            ErrorKind::InvalidCertificate,
            format!("connect: invalid leaf certificate: {e}"),
        )
    })?;
    let uri = match info.uris.as_slice() {
        [] => {
            return Err(VerifyFailure::new(
                ErrorKind::InvalidCertificate,
                "connect: invalid leaf certificate: no URI SAN, want exactly one SPIFFE ID",
            ));
        }
        [one] => one,
        many => {
            return Err(VerifyFailure::new(
                ErrorKind::InvalidCertificate,
                format!(
                    "connect: invalid leaf certificate: {} URI SANs, want exactly one SPIFFE ID",
                    many.len()
                ),
            ));
        }
    };
    let id = SpiffeId::parse(uri).map_err(|e| {
        VerifyFailure::new(
            ErrorKind::InvalidCertificate,
            format!("connect: invalid leaf certificate URI: {e}"),
        )
    })?;
    Ok((id, info))
}

/// The SPIFFE ID a leaf certificate (DER) names: its one URI SAN, parsed as Consul does.
pub fn peer_identity(leaf: &CertificateDer<'_>) -> Result<SpiffeId> {
    leaf_identity(leaf)
        .map(|(id, _)| id)
        .map_err(VerifyFailure::into_error)
}
