//! From rustls and I/O failures to libconnect's [`Error`] kinds, with Go's texts where Consul
//! clients show them.

use std::io;
use std::sync::Arc;

use rustls::{AlertDescription, CertificateError, OtherError};
use rustls_pki_types::UnixTime;

use crate::{Error, ErrorKind};

/// A verification failure of ours, carried through rustls inside
/// [`CertificateError::Other`] so that the handshake error still says what went wrong and
/// which [`ErrorKind`] it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VerifyFailure {
    pub(crate) kind: ErrorKind,
    pub(crate) message: String,
}

impl std::fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for VerifyFailure {}

impl VerifyFailure {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        VerifyFailure {
            kind,
            message: message.into(),
        }
    }

    /// As a rustls error: the peer gets a `certificate_unknown` alert.
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(self))))
    }

    pub(crate) fn into_error(self) -> Error {
        Error::new(self.kind, self.message)
    }
}

/// Go's wording for the alerts a Consul peer sends, so logs read the same on both sides.
fn alert_text(alert: AlertDescription) -> String {
    let s = match alert {
        AlertDescription::AccessDenied => "access denied",
        AlertDescription::BadCertificate => "bad certificate",
        AlertDescription::UnknownCA => "unknown certificate authority",
        AlertDescription::CertificateUnknown => "unknown certificate",
        AlertDescription::CertificateExpired => "expired certificate",
        AlertDescription::UnsupportedCertificate => "unsupported certificate",
        AlertDescription::HandshakeFailure => "handshake failure",
        AlertDescription::ProtocolVersion => "protocol version not supported",
        AlertDescription::CertificateRequired => "certificate required",
        AlertDescription::DecryptError => "error decrypting message",
        AlertDescription::InternalError => "internal error",
        other => return format!("{other:?}"),
    };
    s.to_owned()
}

/// Maps a rustls error seen by this side of a connection.
pub(crate) fn from_rustls(e: &rustls::Error) -> Error {
    use rustls::Error as R;
    match e {
        R::InvalidCertificate(ce) => from_certificate_error(ce),
        R::NoCertificatesPresented => Error::new(
            ErrorKind::CertificateVerification,
            "tls: no certificates from peer",
        ),
        R::AlertReceived(alert) => {
            let mut msg = format!("remote error: tls: {}", alert_text(*alert));
            if *alert == AlertDescription::AccessDenied {
                msg.push_str(" (the server's intentions deny this client)");
            }
            Error::new(ErrorKind::Tls, msg)
        }
        other => Error::new(ErrorKind::Tls, format!("tls: {other}")),
    }
}

fn from_certificate_error(ce: &CertificateError) -> Error {
    use CertificateError as C;
    let verification = |m: &str| Error::new(ErrorKind::CertificateVerification, m);
    match ce {
        C::UnknownIssuer => verification("x509: certificate signed by unknown authority"),
        C::Expired | C::NotValidYet => {
            verification("x509: certificate has expired or is not yet valid")
        }
        // Go's detail, so that a skewed clock is told apart from a stale leaf.
        C::ExpiredContext { time, not_after } => verification(&format!(
            "x509: certificate has expired or is not yet valid: current time {} is after {}",
            rfc3339(*time),
            rfc3339(*not_after)
        )),
        C::NotValidYetContext { time, not_before } => verification(&format!(
            "x509: certificate has expired or is not yet valid: current time {} is before {}",
            rfc3339(*time),
            rfc3339(*not_before)
        )),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            verification("x509: certificate specifies an incompatible key usage")
        }
        C::BadEncoding => verification("x509: malformed certificate"),
        C::ApplicationVerificationFailure => {
            Error::new(ErrorKind::AuthorizationDenied, "connect: authz denied")
        }
        C::Other(OtherError(inner)) => match inner.downcast_ref::<VerifyFailure>() {
            Some(v) => v.clone().into_error(),
            None => verification(&format!("x509: {inner}")),
        },
        other => verification(&format!("x509: {other}")),
    }
}

/// A certificate time as Go prints it (RFC 3339, UTC).
fn rfc3339(t: UnixTime) -> String {
    i64::try_from(t.as_secs())
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{} s after the epoch", t.as_secs()))
}

/// Maps an I/O error from a libconnect [`Connection`](super::Connection) or handshake to an
/// [`Error`]: rustls failures inside it become `Tls`, `CertificateVerification`,
/// `PeerIdentityMismatch` or `AuthorizationDenied`; refused connections, timeouts and other
/// I/O errors become `ConnectionRefused`, `Timeout` and `Io`.
pub fn error_from_io(e: &io::Error) -> Error {
    if let Some(inner) = e.get_ref() {
        if let Some(r) = inner.downcast_ref::<rustls::Error>() {
            return from_rustls(r);
        }
        if let Some(v) = inner.downcast_ref::<VerifyFailure>() {
            return v.clone().into_error();
        }
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => Error::new(
            ErrorKind::ConnectionRefused,
            format!("connection refused: {e}"),
        ),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => {
            Error::new(ErrorKind::Timeout, format!("i/o timeout: {e}"))
        }
        io::ErrorKind::UnexpectedEof => Error::new(
            ErrorKind::Tls,
            "tls: connection closed by peer without close_notify",
        ),
        _ => Error::new(ErrorKind::Io, e.to_string()),
    }
}

/// An [`Error`] as an `io::Error` that [`error_from_io`] maps back to the same kind and text.
#[cfg(test)]
pub(crate) fn to_io(e: Error) -> io::Error {
    let io_kind = match e.kind() {
        ErrorKind::Timeout => io::ErrorKind::TimedOut,
        ErrorKind::ConnectionRefused => io::ErrorKind::ConnectionRefused,
        ErrorKind::AuthorizationDenied | ErrorKind::PeerIdentityMismatch => {
            io::ErrorKind::PermissionDenied
        }
        _ => io::ErrorKind::Other,
    };
    io::Error::new(io_kind, VerifyFailure::new(e.kind(), e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_to_their_kinds() {
        let refused = io::Error::from(io::ErrorKind::ConnectionRefused);
        assert_eq!(error_from_io(&refused).kind(), ErrorKind::ConnectionRefused);
        let timeout = io::Error::from(io::ErrorKind::TimedOut);
        assert_eq!(error_from_io(&timeout).kind(), ErrorKind::Timeout);
        let other = io::Error::other("disk on fire");
        assert_eq!(error_from_io(&other).kind(), ErrorKind::Io);
        let tls = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        let e = error_from_io(&tls);
        assert_eq!(e.kind(), ErrorKind::CertificateVerification);
        assert_eq!(
            e.to_string(),
            "x509: certificate signed by unknown authority"
        );
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::AccessDenied),
        );
        let e = error_from_io(&alert);
        assert_eq!(e.kind(), ErrorKind::Tls);
        assert!(
            e.to_string()
                .starts_with("remote error: tls: access denied")
        );
    }

    #[test]
    fn validity_errors_carry_go_s_detail() {
        let at = |s: u64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(s));
        let e = from_rustls(&rustls::Error::InvalidCertificate(
            CertificateError::ExpiredContext {
                time: at(1_700_000_000),
                not_after: at(1_699_999_999),
            },
        ));
        assert_eq!(e.kind(), ErrorKind::CertificateVerification);
        assert_eq!(
            e.to_string(),
            "x509: certificate has expired or is not yet valid: \
             current time 2023-11-14T22:13:20Z is after 2023-11-14T22:13:19Z"
        );
        let e = from_rustls(&rustls::Error::InvalidCertificate(
            CertificateError::NotValidYetContext {
                time: at(0),
                not_before: at(60),
            },
        ));
        assert_eq!(
            e.to_string(),
            "x509: certificate has expired or is not yet valid: \
             current time 1970-01-01T00:00:00Z is before 1970-01-01T00:01:00Z"
        );
    }

    #[test]
    fn our_failures_survive_the_trip_through_rustls_and_io() {
        let v = VerifyFailure::new(ErrorKind::PeerIdentityMismatch, "peer certificate mismatch");
        let io = io::Error::new(io::ErrorKind::InvalidData, v.clone().into_rustls());
        let e = error_from_io(&io);
        assert_eq!(e.kind(), ErrorKind::PeerIdentityMismatch);
        assert_eq!(e.to_string(), "peer certificate mismatch");
        let back = error_from_io(&to_io(Error::new(ErrorKind::AuthorizationDenied, "no")));
        assert_eq!(back.kind(), ErrorKind::AuthorizationDenied);
        assert_eq!(back.to_string(), "no");
    }
}
