//! Why a SPIFFE ID or trust domain was rejected.
//!
//! Messages keep Consul's wording (`SPIFFE ID must have 'spiffe' scheme`, `Invalid service: …`,
//! `SPIFFE ID is not in the expected format: <uri>`) because operators grep logs for it, and add
//! the offending input so a rejected identity can be found without a debugger.

use crate::ErrorKind;

/// Why one percent-escaped path segment could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum UnescapeError {
    /// A `%` is not followed by two hex digits. The text matches Go's `url.PathUnescape`.
    #[error("invalid URL escape {0:?}")]
    InvalidEscape(String),
    /// The escapes decode to bytes that are not UTF-8; identities are text in every binding.
    #[error("escapes do not decode to UTF-8")]
    NotUtf8,
}

/// A string that is not a SPIFFE ID Consul knows, or a malformed trust domain.
///
/// One variant per rule, so callers and tests can tell the rules apart; [`SpiffeIdError::kind`]
/// folds them into the two stable [`ErrorKind`]s.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The input has no URI scheme at all (this includes the empty string).
    #[error("SPIFFE ID must have 'spiffe' scheme: no scheme in {input:?}")]
    MissingScheme {
        /// The rejected input.
        input: String,
    },
    /// The input is a URI of another scheme, such as `http`.
    #[error("SPIFFE ID must have 'spiffe' scheme, not {scheme:?}: {input:?}")]
    WrongScheme {
        /// The scheme that was found.
        scheme: String,
        /// The rejected input.
        input: String,
    },
    /// The scheme is not followed by `//`, so there is no trust domain.
    #[error("SPIFFE ID must have the form 'spiffe://<trust-domain>[/<path>]': {input:?}")]
    MissingAuthority {
        /// The rejected input.
        input: String,
    },
    /// The input contains whitespace or a control character, which no identity may hold raw.
    #[error(
        "SPIFFE ID must not contain whitespace or control characters, found {ch:?} in {input:?}"
    )]
    InvalidCharacter {
        /// The first offending character.
        ch: char,
        /// The rejected input.
        input: String,
    },
    /// `spiffe:///…`: the trust domain is empty.
    #[error("SPIFFE ID has an empty trust domain (host): {input:?}")]
    EmptyHost {
        /// The rejected input.
        input: String,
    },
    /// The authority carries user info (`user@host`), which SPIFFE forbids.
    #[error("SPIFFE ID must not contain user info: {input:?}")]
    UserInfo {
        /// The rejected input.
        input: String,
    },
    /// The authority carries a port (`host:port`), which SPIFFE forbids.
    #[error("SPIFFE ID must not contain a port: {input:?}")]
    Port {
        /// The rejected input.
        input: String,
    },
    /// The input has a `?query` or `#fragment`, which SPIFFE forbids.
    #[error("SPIFFE ID must not contain a query or fragment: {input:?}")]
    QueryOrFragment {
        /// The rejected input.
        input: String,
    },
    /// The host holds characters a trust domain cannot (percent escapes, brackets, …).
    #[error(
        "SPIFFE ID trust domain {host:?} may contain only letters, digits, '.', '-' and '_': \
         {input:?}"
    )]
    InvalidHost {
        /// The host as written.
        host: String,
        /// The rejected input.
        input: String,
    },
    /// The `/ap/<partition>` segment has a bad percent escape.
    #[error("Invalid admin partition: {reason} in segment {segment:?}")]
    InvalidPartition {
        /// The raw (still escaped) segment.
        segment: String,
        /// What is wrong with it.
        #[source]
        reason: UnescapeError,
    },
    /// The `/ns/<namespace>` segment has a bad percent escape.
    #[error("Invalid namespace: {reason} in segment {segment:?}")]
    InvalidNamespace {
        /// The raw (still escaped) segment.
        segment: String,
        /// What is wrong with it.
        #[source]
        reason: UnescapeError,
    },
    /// The `/dc/<datacenter>` segment has a bad percent escape.
    #[error("Invalid datacenter: {reason} in segment {segment:?}")]
    InvalidDatacenter {
        /// The raw (still escaped) segment.
        segment: String,
        /// What is wrong with it.
        #[source]
        reason: UnescapeError,
    },
    /// The `/svc/<service>` segment has a bad percent escape.
    #[error("Invalid service: {reason} in segment {segment:?}")]
    InvalidService {
        /// The raw (still escaped) segment.
        segment: String,
        /// What is wrong with it.
        #[source]
        reason: UnescapeError,
    },
    /// The `/id/<node>` segment of an agent ID has a bad percent escape.
    #[error("Invalid node: {reason} in segment {segment:?}")]
    InvalidNode {
        /// The raw (still escaped) segment.
        segment: String,
        /// What is wrong with it.
        #[source]
        reason: UnescapeError,
    },
    /// A well-formed `spiffe://` URI whose path matches no identity kind (trailing slash, extra
    /// or missing segments, a bare host without a dot, …).
    #[error("SPIFFE ID is not in the expected format: {uri}")]
    NotExpectedFormat {
        /// The rejected input.
        uri: String,
    },
    /// A trust domain (or a cluster ID meant to become one) is malformed.
    #[error("invalid trust domain {input:?}: {reason}")]
    InvalidTrustDomain {
        /// The rejected input.
        input: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
}

impl SpiffeIdError {
    /// The stable kind of this error: [`ErrorKind::InvalidTrustDomain`] for trust domains,
    /// [`ErrorKind::InvalidSpiffeId`] for everything about a SPIFFE ID.
    pub fn kind(&self) -> ErrorKind {
        // Exhaustive on purpose: a new rule must decide its kind here.
        match self {
            SpiffeIdError::InvalidTrustDomain { .. } => ErrorKind::InvalidTrustDomain,
            SpiffeIdError::MissingScheme { .. }
            | SpiffeIdError::WrongScheme { .. }
            | SpiffeIdError::MissingAuthority { .. }
            | SpiffeIdError::InvalidCharacter { .. }
            | SpiffeIdError::EmptyHost { .. }
            | SpiffeIdError::UserInfo { .. }
            | SpiffeIdError::Port { .. }
            | SpiffeIdError::QueryOrFragment { .. }
            | SpiffeIdError::InvalidHost { .. }
            | SpiffeIdError::InvalidPartition { .. }
            | SpiffeIdError::InvalidNamespace { .. }
            | SpiffeIdError::InvalidDatacenter { .. }
            | SpiffeIdError::InvalidService { .. }
            | SpiffeIdError::InvalidNode { .. }
            | SpiffeIdError::NotExpectedFormat { .. } => ErrorKind::InvalidSpiffeId,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Error;

    #[test]
    fn kinds_reach_the_top_level_error() {
        let td = SpiffeIdError::InvalidTrustDomain {
            input: "a..b".into(),
            reason: "has an empty label",
        };
        assert_eq!(
            Error::from(td.clone()).kind(),
            ErrorKind::InvalidTrustDomain
        );
        assert_eq!(
            Error::from(td).to_string(),
            "invalid trust domain \"a..b\": has an empty label"
        );

        let id = SpiffeIdError::NotExpectedFormat {
            uri: "spiffe://x/".into(),
        };
        assert_eq!(Error::from(id.clone()).kind(), ErrorKind::InvalidSpiffeId);
        assert_eq!(
            Error::from(id).to_string(),
            "SPIFFE ID is not in the expected format: spiffe://x/"
        );
    }

    #[test]
    fn segment_errors_keep_go_wording_and_their_cause() {
        let e = SpiffeIdError::InvalidService {
            segment: "web%zz".into(),
            reason: UnescapeError::InvalidEscape("%zz".into()),
        };
        assert_eq!(
            e.to_string(),
            r#"Invalid service: invalid URL escape "%zz" in segment "web%zz""#
        );
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some(r#"invalid URL escape "%zz""#));
    }
}
