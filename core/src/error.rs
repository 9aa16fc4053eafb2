//! The one error type of libconnect and the table of error kinds.
//!
//! [`ErrorKind`] is the single source of truth for every language binding: the C
//! `connect_result` codes, the Python exception classes and `.code` strings, and the Node
//! `err.code` strings are all read from [`ErrorKind::ALL`] and its methods. Numbers and
//! strings are a public contract: they are never renumbered or reused (a test pins them).

use std::fmt;

/// Result alias used throughout the core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The stable category of an [`Error`].
///
/// Bands (shared with C): 1–99 argument and boundary errors, 1xx SPIFFE IDs, 2xx certificates
/// and the CA, 3xx intentions, ACLs and authorization, 4xx TLS, 5xx cache, 6xx I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
#[repr(u32)]
pub enum ErrorKind {
    /// A required pointer or argument was absent (C: NULL).
    NullParameter = 1,
    /// An argument was malformed or out of range.
    InvalidParameter = 2,
    /// A panic was caught at a language boundary.
    Panic = 3,
    /// A one-shot object (a builder) was used twice.
    AlreadyUsed = 4,
    /// An output buffer was too small.
    InsufficientSize = 5,
    /// The object was closed or freed.
    Closed = 6,
    /// An internal invariant failed; this is a bug in libconnect.
    Internal = 7,
    /// The requested object does not exist.
    NotFound = 8,
    // 9–99 reserved.
    /// A string is not a valid SPIFFE ID of a kind Consul knows.
    InvalidSpiffeId = 100,
    /// A trust domain or SNI name is malformed.
    InvalidTrustDomain = 101,
    // 102–199 reserved.
    /// PEM or DER input does not hold a well-formed certificate.
    InvalidCertificate = 200,
    /// A certificate signing request is malformed or its signature does not verify.
    InvalidCsr = 201,
    /// A well-formed CSR asks for an identity this CA must not sign.
    CsrRejected = 202,
    /// A private key is malformed.
    InvalidKey = 203,
    /// A key type or size is not supported.
    UnsupportedKey = 204,
    /// A CA configuration is invalid.
    InvalidCaConfig = 205,
    /// The CA has not been initialised yet.
    CaNotInitialized = 206,
    /// A CA certificate (root or intermediate) has expired.
    CaExpired = 207,
    /// The CA refused to sign because of its rate limit (`Rate limit reached, try again later`).
    RateLimited = 208,
    /// The CA provider cannot cross-sign and the rotation was not forced.
    CrossSigningUnsupported = 209,
    /// An intermediate certificate does not fit the pending key, URI or root.
    InvalidIntermediate = 210,
    /// A certificate chain does not verify against the trusted roots.
    CertificateVerification = 211,
    // 212–299 reserved.
    /// An intention is invalid.
    InvalidIntention = 300,
    /// Intentions deny this connection.
    AuthorizationDenied = 301,
    /// The ACL token lacks a permission.
    PermissionDenied = 302,
    /// An ACL policy or rule set is invalid.
    InvalidAclPolicy = 303,
    /// The ACL token is unknown.
    AclNotFound = 304,
    // 305–399 reserved.
    /// A TLS handshake or record-layer failure.
    Tls = 400,
    /// The peer's certificate does not name the expected service.
    PeerIdentityMismatch = 401,
    /// The service has no leaf certificate and roots yet.
    NotReady = 402,
    // 403–499 reserved.
    /// A cache fetch failed.
    CacheFetch = 500,
    // 501–599 reserved.
    /// An operating-system I/O error.
    Io = 600,
    /// An operation timed out.
    Timeout = 601,
    /// The peer refused the connection.
    ConnectionRefused = 602,
    /// A non-blocking operation would block.
    WouldBlock = 603,
    /// An HTTP API call failed (the remote status and message are in the detail).
    Http = 604,
    // 605–699 reserved.
}

/// How one [`ErrorKind`] appears in each language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindInfo {
    /// The numeric code (C `connect_result`).
    pub code: u32,
    /// The stable string code (Python `.code`, Node `err.code`).
    pub name: &'static str,
    /// The Python exception class raised for this kind.
    pub python_class: &'static str,
    /// A static one-line description (C `connect_result_str`).
    pub description: &'static str,
}

macro_rules! kind_table {
    ($($kind:ident => $name:literal, $py:literal, $desc:literal;)*) => {
        impl ErrorKind {
            /// Every kind, in code order.
            pub const ALL: &'static [ErrorKind] = &[$(ErrorKind::$kind),*];

            /// How this kind appears in C, Python and Node.
            pub const fn info(self) -> KindInfo {
                match self {
                    $(ErrorKind::$kind => KindInfo {
                        code: ErrorKind::$kind as u32,
                        name: $name,
                        python_class: $py,
                        description: $desc,
                    },)*
                }
            }
        }
    };
}

kind_table! {
    NullParameter => "NULL_PARAMETER", "ConnectError", "a required parameter was NULL";
    InvalidParameter => "INVALID_PARAMETER", "InvalidArgumentError", "invalid parameter";
    Panic => "PANIC", "ConnectError", "internal panic caught at the API boundary";
    AlreadyUsed => "ALREADY_USED", "ConnectError", "object was already used";
    InsufficientSize => "INSUFFICIENT_SIZE", "ConnectError", "output buffer too small";
    Closed => "CLOSED", "ConnectError", "object is closed";
    Internal => "INTERNAL", "ConnectError", "internal error";
    NotFound => "NOT_FOUND", "NotFoundError", "not found";
    InvalidSpiffeId => "INVALID_SPIFFE_ID", "InvalidSpiffeIdError", "invalid SPIFFE ID";
    InvalidTrustDomain => "INVALID_TRUST_DOMAIN", "InvalidSpiffeIdError", "invalid trust domain";
    InvalidCertificate => "INVALID_CERTIFICATE", "CertificateError", "invalid certificate";
    InvalidCsr => "INVALID_CSR", "CertificateError", "invalid certificate signing request";
    CsrRejected => "CSR_REJECTED", "CertificateError", "certificate signing request rejected";
    InvalidKey => "INVALID_KEY", "CertificateError", "invalid private key";
    UnsupportedKey => "UNSUPPORTED_KEY", "CertificateError", "unsupported key type or size";
    InvalidCaConfig => "INVALID_CA_CONFIG", "CaConfigError", "invalid CA configuration";
    CaNotInitialized => "CA_NOT_INITIALIZED", "CertificateError", "CA has not finished initializing";
    CaExpired => "CA_EXPIRED", "CertificateError", "CA certificate expired";
    RateLimited => "RATE_LIMITED", "RateLimitedError", "Rate limit reached, try again later";
    CrossSigningUnsupported => "CROSS_SIGNING_UNSUPPORTED", "CaConfigError", "CA provider does not support cross-signing";
    InvalidIntermediate => "INVALID_INTERMEDIATE", "CertificateError", "invalid intermediate certificate";
    CertificateVerification => "CERTIFICATE_VERIFICATION", "CertificateError", "certificate chain does not verify";
    InvalidIntention => "INVALID_INTENTION", "IntentionError", "invalid intention";
    AuthorizationDenied => "AUTHORIZATION_DENIED", "AuthorizationDenied", "connection denied by intentions";
    PermissionDenied => "PERMISSION_DENIED", "PermissionDeniedError", "Permission denied";
    InvalidAclPolicy => "INVALID_ACL_POLICY", "AclError", "invalid ACL policy";
    AclNotFound => "ACL_NOT_FOUND", "AclError", "ACL not found";
    Tls => "TLS", "TlsError", "TLS error";
    PeerIdentityMismatch => "PEER_IDENTITY_MISMATCH", "TlsError", "peer certificate mismatch";
    NotReady => "NOT_READY", "ConnectError", "service has no certificate yet";
    CacheFetch => "CACHE_FETCH", "CacheError", "cache fetch failed";
    Io => "IO", "ConnectIoError", "I/O error";
    Timeout => "TIMEOUT", "ConnectTimeout", "operation timed out";
    ConnectionRefused => "CONNECTION_REFUSED", "ConnectIoError", "connection refused";
    WouldBlock => "WOULD_BLOCK", "ConnectIoError", "operation would block";
    Http => "HTTP", "ConnectIoError", "HTTP API error";
}

impl ErrorKind {
    /// The numeric code used by the C API.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The stable string code, e.g. `"INVALID_SPIFFE_ID"`.
    pub const fn name(self) -> &'static str {
        self.info().name
    }

    /// A static description of the kind.
    pub const fn description(self) -> &'static str {
        self.info().description
    }

    /// The kind with this numeric code, if any.
    pub fn from_code(code: u32) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.code() == code)
    }

    /// The kind with this string code, if any.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        Self::ALL.iter().copied().find(|k| k.name() == name)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error type of libconnect: a category enum per concern, each with its own rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A SPIFFE ID or SNI name was rejected.
    #[error(transparent)]
    SpiffeId(#[from] crate::spiffe::SpiffeIdError),
    /// Certificates, keys, CSRs and the CA.
    #[error(transparent)]
    Ca(#[from] crate::ca::CaError),
    /// Intentions and authorization.
    #[error(transparent)]
    Intention(#[from] crate::intentions::IntentionError),
    /// ACL tokens, policies and permissions.
    #[error(transparent)]
    Acl(#[from] crate::acl::AclError),
    /// Any other failure, with its kind and a message for people.
    #[error("{message}")]
    Other {
        /// The category.
        kind: ErrorKind,
        /// The detail.
        message: String,
    },
}

impl Error {
    /// Builds an [`Error::Other`].
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error::Other {
            kind,
            message: message.into(),
        }
    }

    /// The stable category of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::SpiffeId(e) => e.kind(),
            Error::Ca(e) => e.kind(),
            Error::Intention(e) => e.kind(),
            Error::Acl(e) => e.kind(),
            Error::Other { kind, .. } => *kind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published numbers and strings. Adding a kind appends here; changing a line is an
    /// ABI break.
    const PINNED: &[(u32, &str)] = &[
        (1, "NULL_PARAMETER"),
        (2, "INVALID_PARAMETER"),
        (3, "PANIC"),
        (4, "ALREADY_USED"),
        (5, "INSUFFICIENT_SIZE"),
        (6, "CLOSED"),
        (7, "INTERNAL"),
        (8, "NOT_FOUND"),
        (100, "INVALID_SPIFFE_ID"),
        (101, "INVALID_TRUST_DOMAIN"),
        (200, "INVALID_CERTIFICATE"),
        (201, "INVALID_CSR"),
        (202, "CSR_REJECTED"),
        (203, "INVALID_KEY"),
        (204, "UNSUPPORTED_KEY"),
        (205, "INVALID_CA_CONFIG"),
        (206, "CA_NOT_INITIALIZED"),
        (207, "CA_EXPIRED"),
        (208, "RATE_LIMITED"),
        (209, "CROSS_SIGNING_UNSUPPORTED"),
        (210, "INVALID_INTERMEDIATE"),
        (211, "CERTIFICATE_VERIFICATION"),
        (300, "INVALID_INTENTION"),
        (301, "AUTHORIZATION_DENIED"),
        (302, "PERMISSION_DENIED"),
        (303, "INVALID_ACL_POLICY"),
        (304, "ACL_NOT_FOUND"),
        (400, "TLS"),
        (401, "PEER_IDENTITY_MISMATCH"),
        (402, "NOT_READY"),
        (500, "CACHE_FETCH"),
        (600, "IO"),
        (601, "TIMEOUT"),
        (602, "CONNECTION_REFUSED"),
        (603, "WOULD_BLOCK"),
        (604, "HTTP"),
    ];

    #[test]
    fn table_is_pinned_and_total() {
        let actual: Vec<(u32, &str)> = ErrorKind::ALL
            .iter()
            .map(|k| (k.code(), k.name()))
            .collect();
        assert_eq!(actual, PINNED);
        for k in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(k.code()), Some(*k));
            assert_eq!(ErrorKind::from_name(k.name()), Some(*k));
            assert!(!k.description().is_empty());
            assert!(
                k.info()
                    .python_class
                    .chars()
                    .next()
                    .is_some_and(char::is_uppercase)
            );
        }
        assert_eq!(ErrorKind::from_code(0), None);
        assert_eq!(ErrorKind::from_code(9999), None);
    }

    #[test]
    fn codes_are_unique_and_in_their_band() {
        let mut codes: Vec<u32> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert!(
            codes.windows(2).all(|w| w[0] < w[1]),
            "ALL must be in code order"
        );
        for k in ErrorKind::ALL {
            let band = k.code() / 100;
            let name = k.name();
            let ok = match band {
                0 => k.code() >= 1,
                1 => name.contains("SPIFFE") || name.contains("TRUST_DOMAIN"),
                2..=6 => true,
                _ => false,
            };
            assert!(ok, "{name} is outside its band");
        }
    }

    #[test]
    fn other_errors_keep_kind_and_message() {
        let e = Error::new(ErrorKind::Timeout, "waited 5s");
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.to_string(), "waited 5s");
    }
}
