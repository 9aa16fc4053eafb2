//! The errors of the ACL module.
//!
//! Messages follow Consul's wording where Consul has one, because operators grep for them and
//! clients match on them (`Permission denied`, `ACL not found`). No message ever carries a
//! SecretID: the caller's own secret is the one thing an error must not echo into a log.

use crate::ErrorKind;

/// Errors of ACL rule parsing, token and policy management, and permission checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// The rules text is neither well-formed HCL nor well-formed JSON.
    #[error("Failed to parse ACL rules: {message}")]
    RulesSyntax {
        /// The parser's description of the problem.
        message: String,
    },
    /// One rule is well-formed but not meaningful: an unknown block or key, a bad access level,
    /// a missing `policy`.
    #[error("Invalid ACL rule {rule}: {message}")]
    InvalidRule {
        /// The offending rule, e.g. `service "web"` or `operator`.
        rule: String,
        /// What is wrong with it.
        message: String,
    },
    /// A policy failed validation (name, ID, datacenters, or a builtin-policy restriction).
    #[error("Invalid Policy: {0}")]
    InvalidPolicy(String),
    /// A token failed validation (IDs, policy links, or an attempt to change what cannot
    /// change).
    #[error("Invalid Token: {0}")]
    InvalidToken(String),
    /// No policy has this ID or name.
    #[error("ACL policy not found: {0}")]
    PolicyNotFound(String),
    /// The token is unknown (by SecretID when resolving, by AccessorID when managing).
    #[error("ACL not found")]
    NotFound,
    /// The token lacks a permission. `detail` names the accessor and the permission, never the
    /// secret.
    #[error("Permission denied{}", .detail.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    PermissionDenied {
        /// Which token lacked which permission on what, when known.
        detail: Option<String>,
    },
    /// The one-time bootstrap already happened (or an initial management token took its place).
    #[error("Permission denied: ACL bootstrap no longer allowed")]
    BootstrapNotAllowed,
    /// ACLs are not enabled, so the ACL endpoints have nothing to manage. Consul's text; its
    /// HTTP status is 401, as in Consul.
    #[error("ACL support disabled")]
    Disabled,
    /// The operation would remove or alter something Consul keeps built in: the anonymous
    /// token, or the rules of the global-management policy.
    #[error("{0}")]
    NotPermitted(String),
}

impl AclError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AclError::RulesSyntax { .. }
            | AclError::InvalidRule { .. }
            | AclError::InvalidPolicy(_) => ErrorKind::InvalidAclPolicy,
            AclError::InvalidToken(_) | AclError::NotPermitted(_) | AclError::Disabled => {
                ErrorKind::InvalidParameter
            }
            AclError::PolicyNotFound(_) => ErrorKind::NotFound,
            AclError::NotFound => ErrorKind::AclNotFound,
            AclError::PermissionDenied { .. } | AclError::BootstrapNotAllowed => {
                ErrorKind::PermissionDenied
            }
        }
    }

    /// A bare `Permission denied`, for callers that must not say more (for example to avoid
    /// confirming that a resource exists).
    pub fn permission_denied() -> Self {
        AclError::PermissionDenied { detail: None }
    }

    pub(crate) fn invalid_rule(rule: impl Into<String>, message: impl Into<String>) -> Self {
        AclError::InvalidRule {
            rule: rule.into(),
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_consul_wording() {
        assert_eq!(AclError::NotFound.to_string(), "ACL not found");
        assert_eq!(AclError::NotFound.kind(), ErrorKind::AclNotFound);
        assert_eq!(
            AclError::permission_denied().to_string(),
            "Permission denied"
        );
        let e = AclError::PermissionDenied {
            detail: Some("token with AccessorID 'a' lacks permission 'acl:write'".into()),
        };
        assert_eq!(
            e.to_string(),
            "Permission denied: token with AccessorID 'a' lacks permission 'acl:write'"
        );
        assert_eq!(e.kind(), ErrorKind::PermissionDenied);
        assert_eq!(
            AclError::BootstrapNotAllowed.to_string(),
            "Permission denied: ACL bootstrap no longer allowed"
        );
        assert_eq!(
            AclError::BootstrapNotAllowed.kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            AclError::invalid_rule("operator", "x").kind(),
            ErrorKind::InvalidAclPolicy
        );
        assert_eq!(
            AclError::RulesSyntax {
                message: "x".into()
            }
            .kind(),
            ErrorKind::InvalidAclPolicy
        );
        assert_eq!(
            AclError::InvalidPolicy("x".into()).kind(),
            ErrorKind::InvalidAclPolicy
        );
        assert_eq!(
            AclError::PolicyNotFound("x".into()).kind(),
            ErrorKind::NotFound
        );
    }

    #[test]
    fn wraps_into_the_crate_error() {
        let e: crate::Error = AclError::NotFound.into();
        assert_eq!(e.kind(), ErrorKind::AclNotFound);
        assert_eq!(e.to_string(), "ACL not found");
    }
}
