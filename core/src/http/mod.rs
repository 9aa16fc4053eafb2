//! The Consul-compatible HTTP API: request conventions, the server routes, and the client.

pub mod api;
pub mod client;
pub mod intercept;
pub(crate) mod query;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::{Error, ErrorKind};

/// The status Consul answers with for an error of `kind`.
pub(crate) fn status_for(kind: ErrorKind) -> StatusCode {
    use ErrorKind as K;
    match kind {
        K::PermissionDenied | K::AclNotFound => StatusCode::FORBIDDEN,
        K::NotFound => StatusCode::NOT_FOUND,
        K::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        K::NullParameter
        | K::InvalidParameter
        | K::InvalidSpiffeId
        | K::InvalidTrustDomain
        | K::InvalidCertificate
        | K::InvalidCsr
        | K::CsrRejected
        | K::InvalidKey
        | K::UnsupportedKey
        | K::InvalidCaConfig
        | K::CrossSigningUnsupported
        | K::InvalidIntermediate
        | K::InvalidIntention
        | K::InvalidAclPolicy => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An error on its way out of a handler: Consul's status and a plain-text body.
#[derive(Debug)]
pub(crate) struct ApiError(pub(crate) Error);

impl<E: Into<Error>> From<E> for ApiError {
    fn from(e: E) -> Self {
        ApiError(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // Consul answers every ACL endpoint with 401 when ACLs are off; no kind maps to 401,
        // so this one error is told apart here.
        let status = match &self.0 {
            Error::Acl(crate::acl::AclError::Disabled) => StatusCode::UNAUTHORIZED,
            e => status_for(e.kind()),
        };
        (status, self.0.to_string()).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_status_and_the_common_ones_are_consuls() {
        for k in ErrorKind::ALL {
            let s = status_for(*k);
            assert!(s.is_client_error() || s.is_server_error(), "{k}");
        }
        assert_eq!(
            status_for(ErrorKind::PermissionDenied),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status_for(ErrorKind::InvalidIntention),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(status_for(ErrorKind::NotFound), StatusCode::NOT_FOUND);
    }
}
