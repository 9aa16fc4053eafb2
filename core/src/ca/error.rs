//! Errors of certificates, keys, CSRs and the CA, with Consul's texts where clients compare
//! them.

use crate::ErrorKind;

/// A certificate, key, CSR or CA failure.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CaError {
    /// PEM text is malformed or holds no block of the expected type.
    #[error("invalid PEM: {0}")]
    InvalidPem(String),
    /// DER does not parse as the expected X.509 structure.
    #[error("invalid certificate: {0}")]
    InvalidCertificate(String),
    /// A signature or chain does not verify.
    #[error("certificate verification failed: {0}")]
    Verification(String),
    /// A CSR does not parse.
    #[error("invalid CSR: {0}")]
    InvalidCsr(String),
    /// A CSR's self-signature does not verify (forged or corrupted).
    #[error("invalid CSR: signature does not verify")]
    CsrSignature,
    /// A leaf CSR carries no URI SAN.
    #[error("CSR must have exactly one URI SAN, found none")]
    CsrNoUri,
    /// A CSR carries more than one URI SAN.
    #[error("CSR must have exactly one URI SAN, found {0}")]
    CsrTooManyUris(usize),
    /// The CSR's URI SAN is not a SPIFFE ID Consul knows.
    #[error("CSR URI SAN is not a valid SPIFFE ID: {0}")]
    CsrBadSpiffeId(String),
    /// The CSR asks for an identity kind this signing path does not issue.
    #[error("SPIFFE ID in CSR must be a {allowed} ID, got {got}")]
    CsrWrongKind {
        /// What this path accepts (`service`, or `service or agent`).
        allowed: &'static str,
        /// The URI in the CSR.
        got: String,
    },
    /// The CSR's service ID names another datacenter.
    #[error("SPIFFE ID in CSR from a different datacenter: {got}, we are {want}")]
    CsrWrongDatacenter {
        /// The CSR's datacenter.
        got: String,
        /// Ours.
        want: String,
    },
    /// The CSR's service ID names another trust domain.
    #[error("SPIFFE ID in CSR from a different trust domain: {got}, we are {want}")]
    CsrWrongTrustDomain {
        /// The CSR's trust domain.
        got: String,
        /// Ours.
        want: String,
    },
    /// The CSR's service ID names a service that breaks the one name rule, or a namespace or
    /// partition other than `default`.
    #[error("SPIFFE ID in CSR: {0}")]
    CsrName(#[from] crate::spiffe::NameError),
    /// An intermediate CSR's URI is not our trust domain.
    #[error("incoming CSR domain {got:?} is not valid for our domain {want:?}")]
    IntermediateCsrDomain {
        /// The CSR's URI.
        got: String,
        /// Our signing ID.
        want: String,
    },
    /// A private key is malformed.
    #[error("invalid private key: {0}")]
    InvalidKey(String),
    /// A key type or size is not supported.
    #[error("unsupported key: {0}")]
    UnsupportedKey(String),
    /// A CA configuration breaks a rule; the text is Consul's.
    #[error("{0}")]
    InvalidConfig(String),
    /// The CA has no root yet.
    #[error("CA has not finished initializing")]
    NotInitialized,
    /// The signing root has expired.
    #[error("root expired: {0}")]
    RootExpired(String),
    /// The signing intermediate has expired.
    #[error("intermediate expired: {0}")]
    IntermediateExpired(String),
    /// The CSR rate limit was hit; the text is compared by clients.
    #[error("Rate limit reached, try again later")]
    RateLimited,
    /// Rotation needs cross-signing the current provider cannot do.
    #[error(
        "The current CA Provider does not support cross-signing. You can try again with ForceWithoutCrossSigningSet but this may cause disruption - see documentation for more."
    )]
    CrossSigningUnsupported,
    /// An intermediate does not fit the pending key, URI or root (Consul's texts).
    #[error("{0}")]
    InvalidIntermediate(String),
    /// An operation only the primary datacenter may perform.
    #[error("not the primary datacenter")]
    NotPrimary,
    /// An operation only a secondary datacenter may perform.
    #[error("not a secondary datacenter")]
    NotSecondary,
    /// An external CA provider (Vault) failed or could not be reached; `kind` says how
    /// (`ConnectionRefused`, `Timeout`, `Http` for Vault's own refusals, `RateLimited`). The
    /// text never holds a token.
    #[error("{message}")]
    Provider {
        /// How the provider failed.
        kind: ErrorKind,
        /// What failed, with the provider's own message.
        message: String,
    },
    /// The certificate library failed unexpectedly.
    #[error("certificate generation failed: {0}")]
    Internal(String),
}

impl CaError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            CaError::InvalidPem(_) | CaError::InvalidCertificate(_) => {
                ErrorKind::InvalidCertificate
            }
            CaError::Verification(_) => ErrorKind::CertificateVerification,
            CaError::InvalidCsr(_) | CaError::CsrSignature => ErrorKind::InvalidCsr,
            CaError::CsrNoUri
            | CaError::CsrTooManyUris(_)
            | CaError::CsrBadSpiffeId(_)
            | CaError::CsrWrongKind { .. }
            | CaError::CsrWrongDatacenter { .. }
            | CaError::CsrWrongTrustDomain { .. }
            | CaError::IntermediateCsrDomain { .. } => ErrorKind::CsrRejected,
            CaError::InvalidKey(_) => ErrorKind::InvalidKey,
            CaError::UnsupportedKey(_) => ErrorKind::UnsupportedKey,
            CaError::InvalidConfig(_) => ErrorKind::InvalidCaConfig,
            CaError::NotInitialized => ErrorKind::CaNotInitialized,
            CaError::RootExpired(_) | CaError::IntermediateExpired(_) => ErrorKind::CaExpired,
            CaError::RateLimited => ErrorKind::RateLimited,
            CaError::CrossSigningUnsupported => ErrorKind::CrossSigningUnsupported,
            CaError::InvalidIntermediate(_) => ErrorKind::InvalidIntermediate,
            CaError::NotPrimary | CaError::NotSecondary | CaError::CsrName(_) => {
                ErrorKind::InvalidParameter
            }
            CaError::Provider { kind, .. } => *kind,
            CaError::Internal(_) => ErrorKind::Internal,
        }
    }
}

impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        CaError::Internal(e.to_string())
    }
}
