//! Placeholder: replaced by the module's implementation.

use crate::ErrorKind;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// Placeholder variant.
    #[error("placeholder")]
    Placeholder,
}

impl SpiffeIdError {
    /// The stable kind of this error.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidSpiffeId
    }
}
