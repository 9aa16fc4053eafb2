//! Placeholder: replaced by the module's implementation.

use crate::ErrorKind;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AclError {
    /// Placeholder variant.
    #[error("placeholder")]
    Placeholder,
}

impl AclError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidAclPolicy
    }
}
