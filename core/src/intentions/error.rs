//! The error type of the intentions module.
//!
//! Validation messages are Consul's own texts (Consul docs: Intentions) because clients and
//! operators compare them; the config-entry prefix `Sources[i].` is dropped since an [`Intention`]
//! has one source.
//!
//! [`Intention`]: super::Intention

use crate::ErrorKind;

/// Why an intention was rejected, or why an intentions request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntentionError {
    /// The JSON body is not an intention: malformed JSON, a field of the wrong type, or a key
    /// given twice under different cases.
    #[error("invalid intention JSON: {message}")]
    Json {
        /// What was wrong, with the path of the field where known.
        message: String,
    },
    /// A required name is empty (run [`Intention::normalize`] to default the namespaces).
    ///
    /// [`Intention::normalize`]: super::Intention::normalize
    #[error("{field} must be set")]
    MissingField {
        /// `SourceNS`, `SourceName`, `DestinationNS` or `DestinationName`.
        field: &'static str,
    },
    /// A source or destination name breaks the one service-name rule, or a namespace or
    /// partition other than `default` was given. A bad argument rather than a bad intention,
    /// so that every entry point reports a bad name alike.
    #[error(transparent)]
    Name(#[from] crate::spiffe::NameError),
    /// A namespace or name contains `*` without being exactly `*`.
    #[error("{field}: wildcard character '*' cannot be used with partial values")]
    PartialWildcard {
        /// The offending field.
        field: &'static str,
    },
    /// An exact name under a wildcard namespace (`*/web`).
    #[error("{field}: exact value cannot follow wildcard namespace")]
    ExactAfterWildcardNamespace {
        /// `SourceName` or `DestinationName`.
        field: &'static str,
    },
    /// A partition contains `*`; partitions are never wildcards.
    #[error("{field}: cannot use wildcard '*' in partition")]
    WildcardPartition {
        /// `SourcePartition` or `DestinationPartition`.
        field: &'static str,
    },
    /// The source peer contains `*`; peers are never wildcards.
    #[error("SourcePeer: cannot use wildcard '*' in peer")]
    WildcardPeer,
    /// Both a source peer and a source partition are set.
    #[error("SourcePeer: cannot set Peer and Partition at the same time.")]
    PeerAndPartition,
    /// `Description` is longer than 512 bytes.
    #[error("Description exceeds maximum length {}", super::MAX_DESCRIPTION_LEN)]
    DescriptionTooLong,
    /// `Meta` has more than 64 pairs.
    #[error("Meta exceeds maximum element count {}", super::MAX_META_PAIRS)]
    TooManyMeta,
    /// A `Meta` key is longer than 128 bytes.
    #[error("Meta key {key:?} exceeds maximum length {}", super::MAX_META_KEY_LEN)]
    MetaKeyTooLong {
        /// The key.
        key: String,
    },
    /// A `Meta` value is longer than 512 bytes.
    #[error(
        "Meta value for key {key:?} exceeds maximum length {}",
        super::MAX_META_VALUE_LEN
    )]
    MetaValueTooLong {
        /// The key whose value is too long.
        key: String,
    },
    /// `Action` is neither `allow` nor `deny` on an intention without permissions.
    #[error("Action must be set to 'allow' or 'deny'")]
    InvalidAction,
    /// Both an `Action` and `Permissions` are set; the permissions decide, so the action must
    /// be left out.
    #[error("Action must be omitted if Permissions are specified")]
    ActionWithPermissions,
    /// L7 permissions on an intention whose destination is a wildcard.
    #[error("Permissions cannot be specified on intentions with wildcarded destinations")]
    PermissionsOnWildcardDestination,
    /// `SourceType` is not `consul`.
    #[error("SourceType must be set to 'consul'")]
    InvalidSourceType,
    /// An L7 permission's `Action` is neither `allow` nor `deny`.
    #[error("Permissions[{index}].Action must be set to 'allow' or 'deny'")]
    PermissionInvalidAction {
        /// The position of the permission.
        index: usize,
    },
    /// An L7 permission has no `HTTP` section.
    #[error("Permissions[{index}].HTTP is required")]
    PermissionMissingHttp {
        /// The position of the permission.
        index: usize,
    },
    /// `PathExact` or `PathPrefix` does not start with `/`.
    #[error("Permissions[{index}].HTTP.{field} doesn't start with '/': {value:?}")]
    PathWithoutSlash {
        /// The position of the permission.
        index: usize,
        /// `PathExact` or `PathPrefix`.
        field: &'static str,
        /// The path given.
        value: String,
    },
    /// More than one of `PathExact`, `PathPrefix`, `PathRegex`.
    #[error(
        "Permissions[{index}].HTTP should only contain at most one of PathExact, PathPrefix, or PathRegex"
    )]
    MultiplePathMatchers {
        /// The position of the permission.
        index: usize,
    },
    /// A header rule without a `Name`.
    #[error("Permissions[{index}].HTTP.Header[{header}] missing required Name field")]
    HeaderMissingName {
        /// The position of the permission.
        index: usize,
        /// The position of the header rule.
        header: usize,
    },
    /// A header rule with none, or more than one, of its matchers.
    #[error(
        "Permissions[{index}].HTTP.Header[{header}] should only contain one of Present, Exact, Prefix, Suffix, or Regex"
    )]
    HeaderMatcherCount {
        /// The position of the permission.
        index: usize,
        /// The position of the header rule.
        header: usize,
    },
    /// A method Go's `net/http` does not name (methods are compared upper-case).
    #[error("Permissions[{index}].HTTP.Methods contains an invalid method {method:?}")]
    InvalidMethod {
        /// The position of the permission.
        index: usize,
        /// The method given.
        method: String,
    },
    /// A method listed twice.
    #[error("Permissions[{index}].HTTP.Methods contains {method:?} more than once")]
    DuplicateMethod {
        /// The position of the permission.
        index: usize,
        /// The repeated method.
        method: String,
    },
    /// An `HTTP` section that matches nothing: no path, header or method.
    #[error("Permissions[{index}].HTTP should not be empty")]
    EmptyHttp {
        /// The position of the permission.
        index: usize,
    },
    /// A match type other than `source` or `destination`.
    #[error("unknown intention match type {value:?}: must be 'source' or 'destination'")]
    UnknownMatchType {
        /// The rejected value.
        value: String,
    },
}

impl IntentionError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            IntentionError::UnknownMatchType { .. } | IntentionError::Name(_) => {
                ErrorKind::InvalidParameter
            }
            _ => ErrorKind::InvalidIntention,
        }
    }
}
