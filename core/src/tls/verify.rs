//! Chain verification against the current roots, and the identity a leaf names (Consul docs:
//! Connect-Native).

use rustls::CertificateError;
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use webpki::{EndEntityCert, KeyUsage};

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
pub(crate) fn check_chain(
    bundle: &Bundle,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: OffsetDateTime,
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
        unix_time(now),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(webpki_error)
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
