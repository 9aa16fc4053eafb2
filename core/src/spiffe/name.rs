//! The one rule for service names, and the one tenancy libconnect has.
//!
//! A service name ends up as a path segment of a SPIFFE ID (`…/svc/<name>`), as an ACL
//! resource, as an intention source or destination and as a cache key. Every entry point that
//! accepts a name — registration, intentions, leaf requests, CSR signing and
//! `Agent::service` in every language — checks it here, so that a name accepted by one is
//! accepted by all and means the same thing to each.
//!
//! Namespaces and admin partitions are Consul Enterprise features. Like Consul CE, libconnect
//! has only the `default` namespace and partition and refuses any other value, rather than
//! ignore it: an ignored namespace would let a certificate, an intention or an ACL check speak
//! about a different service than the one the others see.

use std::fmt;

use crate::ErrorKind;

/// The longest service name accepted, in bytes.
///
/// Consul itself sets no limit; this one is far above any name seen in practice (Kubernetes
/// caps its service names at 63) and keeps a full service SPIFFE ID — trust domain, partition,
/// namespace, datacenter and name — well inside the 2048 bytes the SPIFFE standard allows.
pub const MAX_SERVICE_NAME_LEN: usize = 256;

/// The rule as the error messages state it.
pub const SERVICE_NAME_RULE: &str = "1 to 256 characters from A-Z, a-z, 0-9, '.', '_' and '-', \
                                     and not \".\" or \"..\"";

/// The datacenter-name rule as the error messages state it: Consul's agent accepts
/// `^[a-z0-9_-]+$` (Consul docs: Agent configuration, `datacenter`); the 63-byte cap is the
/// DNS label limit, since the name becomes a label of the SNI mesh gateways route by.
pub const DATACENTER_NAME_RULE: &str = "1 to 63 characters from a-z, 0-9, '_' and '-'";

/// How many characters of a rejected value an error message repeats.
const SHOWN: usize = 64;

/// The wildcard an intention may name instead of a service.
const WILDCARD: &str = "*";

/// The namespace and partition libconnect has.
const DEFAULT: &str = "default";

/// A name or tenancy value that libconnect does not accept. Its kind is
/// [`ErrorKind::InvalidParameter`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// A service name breaks [`SERVICE_NAME_RULE`].
    #[error("invalid {field} {value}: a service name must be {SERVICE_NAME_RULE}{wildcard}")]
    InvalidServiceName {
        /// Which field or argument held the name.
        field: &'static str,
        /// The name, quoted with escapes and shortened.
        value: Shown,
        /// `, or "*"` where a wildcard is allowed.
        wildcard: &'static str,
    },
    /// A datacenter name breaks [`DATACENTER_NAME_RULE`].
    #[error("invalid {field} {value}: a datacenter name must be {DATACENTER_NAME_RULE}")]
    InvalidDatacenterName {
        /// Which field or argument held the name.
        field: &'static str,
        /// The name, quoted with escapes and shortened.
        value: Shown,
    },
    /// A namespace other than `default`.
    #[error(
        "namespaces are not supported: {field} is {value}, and only the \"default\" namespace \
         exists (as in Consul CE)"
    )]
    UnsupportedNamespace {
        /// Which field or argument held it.
        field: &'static str,
        /// The namespace, quoted with escapes and shortened.
        value: Shown,
    },
    /// An admin partition other than `default`.
    #[error(
        "admin partitions are not supported: {field} is {value}, and only the \"default\" \
         partition exists (as in Consul CE)"
    )]
    UnsupportedPartition {
        /// Which field or argument held it.
        field: &'static str,
        /// The partition, quoted with escapes and shortened.
        value: Shown,
    },
}

impl NameError {
    /// The stable kind: a bad argument.
    pub const fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidParameter
    }
}

impl From<NameError> for crate::Error {
    fn from(e: NameError) -> Self {
        crate::Error::new(e.kind(), e.to_string())
    }
}

/// A rejected value as an error shows it: quoted, control characters escaped, and cut short so
/// that a 10,000-character name does not become a 10,000-character log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Shown(String);

impl Shown {
    fn new(value: &str) -> Shown {
        let mut chars = value.chars();
        let head: String = chars.by_ref().take(SHOWN).collect();
        let rest = chars.count();
        if rest == 0 {
            Shown(format!("{head:?}"))
        } else {
            Shown(format!("{head:?}… ({rest} more characters)"))
        }
    }
}

impl fmt::Display for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Shown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether `name` follows [`SERVICE_NAME_RULE`]: the characters a SPIFFE ID path segment
/// carries without escaping, so that the name in a certificate reads exactly as it was
/// registered, authorized and written in intentions.
pub fn is_valid_service_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_SERVICE_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Checks a service name against [`SERVICE_NAME_RULE`]. `field` names the argument in the
/// error (`Name`, `DestinationName`, …).
///
/// # Errors
///
/// [`NameError::InvalidServiceName`].
pub fn check_service_name(field: &'static str, name: &str) -> Result<(), NameError> {
    if is_valid_service_name(name) {
        return Ok(());
    }
    Err(NameError::InvalidServiceName {
        field,
        value: Shown::new(name),
        wildcard: "",
    })
}

/// Like [`check_service_name`], but also accepts `*`: for intention sources and
/// destinations, the only places a wildcard means something.
///
/// # Errors
///
/// [`NameError::InvalidServiceName`].
pub fn check_service_name_or_wildcard(field: &'static str, name: &str) -> Result<(), NameError> {
    if name == WILDCARD || is_valid_service_name(name) {
        return Ok(());
    }
    Err(NameError::InvalidServiceName {
        field,
        value: Shown::new(name),
        wildcard: ", or \"*\"",
    })
}

/// Whether `dc` follows [`DATACENTER_NAME_RULE`].
pub fn is_valid_datacenter_name(dc: &str) -> bool {
    !dc.is_empty()
        && dc.len() <= 63
        && dc
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Checks a datacenter name against [`DATACENTER_NAME_RULE`]: every place a caller names a
/// datacenter to reach (a dial's option, an upstream's `Datacenter`, `-upstream name:port:dc`).
///
/// # Errors
///
/// [`NameError::InvalidDatacenterName`].
pub fn check_datacenter_name(field: &'static str, dc: &str) -> Result<(), NameError> {
    if is_valid_datacenter_name(dc) {
        return Ok(());
    }
    Err(NameError::InvalidDatacenterName {
        field,
        value: Shown::new(dc),
    })
}

fn is_default(value: &str) -> bool {
    value.is_empty() || value.eq_ignore_ascii_case(DEFAULT)
}

/// Accepts an empty namespace or `default` (any case, as Consul CE compares it).
///
/// # Errors
///
/// [`NameError::UnsupportedNamespace`] for anything else, `*` included.
pub fn check_default_namespace(field: &'static str, namespace: &str) -> Result<(), NameError> {
    if is_default(namespace) {
        return Ok(());
    }
    Err(NameError::UnsupportedNamespace {
        field,
        value: Shown::new(namespace),
    })
}

/// Accepts an empty partition or `default` (any case, as Consul compares partitions).
///
/// # Errors
///
/// [`NameError::UnsupportedPartition`] for anything else, `*` included.
pub fn check_default_partition(field: &'static str, partition: &str) -> Result<(), NameError> {
    if is_default(partition) {
        return Ok(());
    }
    Err(NameError::UnsupportedPartition {
        field,
        value: Shown::new(partition),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datacenter_names_follow_consuls_agent_rule() {
        for ok in ["dc1", "us-east_1", "a", &"d".repeat(63)] {
            assert!(check_datacenter_name("datacenter", ok).is_ok(), "{ok:?}");
        }
        for bad in ["", "DC1", "dc.1", "dc/2", "dc 2", "dc1\n", &"d".repeat(64)] {
            let e = check_datacenter_name("datacenter", bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter);
            assert!(e.to_string().contains("datacenter name must be"), "{e}");
        }
    }

    #[test]
    fn the_rule_accepts_spiffe_segment_characters() {
        for ok in [
            "web",
            "Web-2",
            "a",
            "db.prod",
            "my_svc",
            "...",
            ".hidden",
            "-",
            &"x".repeat(MAX_SERVICE_NAME_LEN),
        ] {
            assert!(check_service_name("Name", ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn the_rule_refuses_everything_else_and_says_why() {
        let long = "x".repeat(MAX_SERVICE_NAME_LEN + 1);
        let huge = "y".repeat(10_000);
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "../db",
            "web\0",
            "web\n",
            "we b",
            "web%2F",
            "café",
            "*",
            "web*",
            long.as_str(),
            huge.as_str(),
        ] {
            let err = check_service_name("Name", bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidParameter);
            let text = err.to_string();
            assert!(text.starts_with("invalid Name "), "{text}");
            assert!(text.contains(SERVICE_NAME_RULE), "{text}");
            assert!(
                text.len() < 400,
                "the message repeats too much: {}",
                text.len()
            );
            assert!(!text.contains('\0') && !text.contains('\n'), "{text:?}");
            let e: crate::Error = err.into();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter);
        }
    }

    #[test]
    fn a_wildcard_only_where_one_is_meant() {
        assert!(check_service_name_or_wildcard("SourceName", "*").is_ok());
        assert!(check_service_name_or_wildcard("SourceName", "web").is_ok());
        let err = check_service_name_or_wildcard("SourceName", "we*").unwrap_err();
        assert!(err.to_string().contains("or \"*\""), "{err}");
        assert!(check_service_name("Name", "*").is_err());
    }

    #[test]
    fn only_the_default_tenancy_exists() {
        for ok in ["", "default", "Default", "DEFAULT"] {
            assert!(check_default_namespace("SourceNS", ok).is_ok());
            assert!(check_default_partition("SourcePartition", ok).is_ok());
        }
        for bad in ["prod", "*", "default2", "ns/x"] {
            let err = check_default_namespace("SourceNS", bad).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidParameter);
            assert!(
                err.to_string()
                    .starts_with("namespaces are not supported: SourceNS is"),
                "{err}"
            );
            let err = check_default_partition("DestinationPartition", bad).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("admin partitions are not supported: DestinationPartition"),
                "{err}"
            );
        }
    }
}
