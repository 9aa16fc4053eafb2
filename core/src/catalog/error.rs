//! The error type of the catalog module.
//!
//! Where Consul's agent answers a bad registration with a message clients may show or compare
//! (`Missing service name`), the same text is used; elsewhere the message names the field.

use crate::ErrorKind;

/// Why a registration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    /// The body is not a registration: malformed JSON, a field of the wrong type, or a key given
    /// twice under different cases.
    #[error("invalid service registration JSON: {message}")]
    Json {
        /// What was wrong, with the path of the field where known.
        message: String,
    },
    /// `Name` is empty.
    #[error("Missing service name")]
    MissingServiceName,
    /// A check registered without `Name` (Consul's text).
    #[error("Missing check name")]
    MissingCheckName,
    /// `Kind` is not a kind Consul knows.
    #[error("Invalid service kind: {kind:?}")]
    InvalidKind {
        /// The kind as given.
        kind: String,
    },
    /// A port is outside 0–65535.
    #[error("{field} must be between 0 and 65535, got {value}")]
    InvalidPort {
        /// The path of the field, e.g. `Port` or `Proxy.LocalServicePort`.
        field: String,
        /// The value as given.
        value: String,
    },
    /// A `connect-proxy` service without `Proxy.DestinationServiceName`.
    #[error("Proxy.DestinationServiceName must be set for a Connect proxy")]
    ProxyMissingDestination,
    /// A `connect-proxy` service without a port to accept connections on.
    #[error("Port must be set for a Connect proxy")]
    ProxyMissingPort,
    /// A `connect-proxy` service that also claims to be Connect-native.
    #[error("A Proxy cannot also be Connect Native, only typical services")]
    NativeProxy,
    /// A field Consul accepts that libconnect does not implement, e.g. `Connect.SidecarService`.
    #[error("{field} is not supported: {hint}")]
    UnsupportedField {
        /// The path of the field.
        field: &'static str,
        /// What to do instead.
        hint: &'static str,
    },
    /// An upstream without `DestinationName`.
    #[error("Proxy.Upstreams[{index}]: upstream destination name cannot be empty")]
    UpstreamMissingName {
        /// Position of the upstream.
        index: usize,
    },
    /// An upstream without `LocalBindPort`.
    #[error("Proxy.Upstreams[{index}]: upstream local bind port cannot be zero")]
    UpstreamZeroPort {
        /// Position of the upstream.
        index: usize,
    },
    /// An upstream `DestinationType` other than `service` or `prepared_query`.
    #[error("Proxy.Upstreams[{index}]: unknown upstream destination type {kind:?}")]
    UpstreamUnknownType {
        /// Position of the upstream.
        index: usize,
        /// The type as given.
        kind: String,
    },
    /// An upstream `MeshGateway.Mode` other than `none`, `local` or `remote`.
    #[error(
        "Proxy.Upstreams.MeshGateway.Mode: invalid mesh gateway mode {mode:?}: must be none, \
         local or remote"
    )]
    UpstreamMeshGatewayMode {
        /// The mode as given.
        mode: String,
    },
    /// A `Meta` map breaks Consul's limits or uses the reserved `consul-` prefix.
    #[error("Invalid meta: {message}")]
    InvalidMeta {
        /// Which limit, and for which key.
        message: String,
    },
    /// A check of a type libconnect does not run (HTTP, TCP, script, …); only TTL checks and no
    /// check at all are supported.
    #[error("check {check:?}: {field} checks are not supported; use a TTL check")]
    UnsupportedCheck {
        /// The check's ID or position.
        check: String,
        /// The field that selects the unsupported type, e.g. `HTTP`.
        field: &'static str,
    },
    /// A check with no `TTL`.
    #[error("check {check:?}: TTL must be set (only TTL checks are supported)")]
    CheckMissingTtl {
        /// The check's ID or position.
        check: String,
    },
    /// A `TTL` that is not a positive Go duration.
    #[error("check {check:?}: invalid TTL {value:?}: {reason}")]
    InvalidTtl {
        /// The check's ID or position.
        check: String,
        /// The TTL as given.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A check `Status` other than `passing`, `warning` or `critical`.
    #[error("check {check:?}: invalid Status {value:?}: must be passing, warning or critical")]
    InvalidCheckStatus {
        /// The check's ID or position.
        check: String,
        /// The status as given.
        value: String,
    },
    /// A service name breaks the one name rule, or a namespace or partition other than
    /// `default` was asked for.
    #[error(transparent)]
    Name(#[from] crate::spiffe::NameError),
    /// Two checks of one registration end up with the same `CheckID`.
    #[error("duplicate check ID {check:?}")]
    DuplicateCheckId {
        /// The repeated ID.
        check: String,
    },
}

impl CatalogError {
    /// The stable category: every catalog error is a bad argument.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidParameter
    }
}

/// Catalog errors surface through the crate error as [`ErrorKind::InvalidParameter`] with the
/// same message; `Error` has no catalog variant of its own.
impl From<CatalogError> for crate::Error {
    fn from(e: CatalogError) -> Self {
        crate::Error::new(e.kind(), e.to_string())
    }
}
