//! The trust domain: the authority of every SPIFFE ID and the suffix of every SNI name.

use std::fmt;
use std::str::FromStr;

use super::SpiffeIdError;
use super::id::SIGNING_DOMAIN;

/// A validated, lowercase trust domain such as `11111111-2222-3333-4444-555555555555.consul`.
///
/// Consul derives it from the cluster ID (`<cluster-id>.consul`) and compares hosts
/// case-insensitively, so the name is lowercased once here and every comparison and emission is
/// then a plain string operation.
///
/// Rules: 1–255 bytes of ASCII letters, digits, `.`, `-` and `_` (the SPIFFE character set;
/// upper case is accepted and folded), with no empty label, because the name ends up as a DNS
/// suffix in SNI names and DNS SANs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// The longest trust domain SPIFFE allows, in bytes.
    pub const MAX_LEN: usize = 255;

    /// Validates `name` and lowercases it.
    pub fn new(name: &str) -> Result<TrustDomain, SpiffeIdError> {
        check_name(name).map_err(|reason| SpiffeIdError::InvalidTrustDomain {
            input: name.to_owned(),
            reason,
        })?;
        Ok(TrustDomain(name.to_ascii_lowercase()))
    }

    /// `<cluster_id>.consul`, the trust domain of a Consul cluster.
    ///
    /// The cluster ID must be a single label: everything after its first `.` would otherwise be
    /// lost when a secondary datacenter recovers it with [`TrustDomain::cluster_id`].
    pub fn from_cluster_id(cluster_id: &str) -> Result<TrustDomain, SpiffeIdError> {
        let invalid = |reason| SpiffeIdError::InvalidTrustDomain {
            input: cluster_id.to_owned(),
            reason,
        };
        if cluster_id.is_empty() {
            return Err(invalid("cluster ID is empty"));
        }
        if cluster_id.contains('.') {
            return Err(invalid("cluster ID must not contain '.'"));
        }
        let name = format!("{cluster_id}.{SIGNING_DOMAIN}");
        check_name(&name).map_err(invalid)?;
        Ok(TrustDomain(name.to_ascii_lowercase()))
    }

    /// `<uuid>.consul` for a generated cluster ID; infallible because a hyphenated UUID always
    /// forms a valid label.
    pub fn from_cluster_uuid(cluster_id: uuid::Uuid) -> TrustDomain {
        TrustDomain(format!("{}.{SIGNING_DOMAIN}", cluster_id.hyphenated()))
    }

    /// The trust domain as a lowercase string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The cluster ID: the part before the first `.`, which is how secondary datacenters learn
    /// it from the primary's roots response (Consul API docs, Connect CA).
    pub fn cluster_id(&self) -> &str {
        self.0
            .split_once('.')
            .map_or(self.0.as_str(), |(cluster_id, _)| cluster_id)
    }

    /// The owned lowercase string.
    pub fn into_string(self) -> String {
        self.0
    }
}

/// The first rule `name` breaks, if any.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("is empty");
    }
    if name.len() > TrustDomain::MAX_LEN {
        return Err("is longer than 255 bytes");
    }
    if !name.bytes().all(is_trust_domain_byte) {
        return Err("may contain only letters, digits, '.', '-' and '_'");
    }
    if name.split('.').any(str::is_empty) {
        return Err("has an empty label");
    }
    Ok(())
}

/// The SPIFFE trust-domain character set, with upper case allowed because Consul's parser keeps
/// the host's case and compares case-insensitively.
pub(super) fn is_trust_domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TrustDomain::new(s)
    }
}

impl TryFrom<&str> for TrustDomain {
    type Error = SpiffeIdError;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        TrustDomain::new(s)
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl From<TrustDomain> for String {
    fn from(td: TrustDomain) -> String {
        td.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Error, ErrorKind};

    const TEST_CLUSTER_ID: &str = "11111111-2222-3333-4444-555555555555";
    const TEST_TRUST_DOMAIN: &str = "11111111-2222-3333-4444-555555555555.consul";

    #[test]
    fn from_cluster_id_appends_consul() {
        let td = TrustDomain::from_cluster_id(TEST_CLUSTER_ID).unwrap();
        assert_eq!(td.as_str(), TEST_TRUST_DOMAIN);
        assert_eq!(td.to_string(), TEST_TRUST_DOMAIN);
        assert_eq!(td.cluster_id(), TEST_CLUSTER_ID);
    }

    #[test]
    fn from_cluster_uuid_matches_the_string_form() {
        let uuid = uuid::Uuid::parse_str("5FCD4B81-A2CA-405A-AC62-0FAC602C1949").unwrap();
        let td = TrustDomain::from_cluster_uuid(uuid);
        assert_eq!(td.as_str(), "5fcd4b81-a2ca-405a-ac62-0fac602c1949.consul");
        assert_eq!(td, TrustDomain::from_cluster_id(&uuid.to_string()).unwrap());
        assert_eq!(td.cluster_id(), "5fcd4b81-a2ca-405a-ac62-0fac602c1949");
    }

    #[test]
    fn upper_case_is_folded_so_equality_is_case_insensitive() {
        let td: TrustDomain = "11111111-2222-3333-4444-555555555555.CONsuL"
            .parse()
            .unwrap();
        assert_eq!(td.as_str(), TEST_TRUST_DOMAIN);
        assert_eq!(
            td,
            TrustDomain::from_cluster_id("11111111-2222-3333-4444-555555555555").unwrap()
        );
        let mixed = TrustDomain::from_cluster_id("ABCDEF").unwrap();
        assert_eq!(mixed.as_str(), "abcdef.consul");
    }

    #[test]
    fn cluster_id_is_the_first_label() {
        let td = TrustDomain::new("abc.def.consul").unwrap();
        assert_eq!(td.cluster_id(), "abc");
        let single = TrustDomain::new("localdomain").unwrap();
        assert_eq!(single.cluster_id(), "localdomain");
    }

    #[test]
    fn accepts_the_spiffe_character_set() {
        for ok in ["a", "a-b_c.d", "1234.consul", "x.y.z", &"a".repeat(255)] {
            assert_eq!(TrustDomain::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_malformed_names() {
        let long = "a".repeat(256);
        let cases: &[(&str, &str)] = &[
            ("", "is empty"),
            (&long, "is longer than 255 bytes"),
            (
                "a b.consul",
                "may contain only letters, digits, '.', '-' and '_'",
            ),
            ("a/b", "may contain only letters, digits, '.', '-' and '_'"),
            (
                "spiffe://a.consul",
                "may contain only letters, digits, '.', '-' and '_'",
            ),
            (
                "a:8080",
                "may contain only letters, digits, '.', '-' and '_'",
            ),
            (
                "é.consul",
                "may contain only letters, digits, '.', '-' and '_'",
            ),
            (".consul", "has an empty label"),
            ("a.", "has an empty label"),
            ("a..consul", "has an empty label"),
        ];
        for (input, reason) in cases {
            let err = TrustDomain::new(input).unwrap_err();
            assert_eq!(
                err,
                SpiffeIdError::InvalidTrustDomain {
                    input: (*input).to_owned(),
                    reason
                },
                "{input:?}"
            );
            assert!(err.to_string().contains(reason));
            assert_eq!(Error::from(err).kind(), ErrorKind::InvalidTrustDomain);
        }
    }

    #[test]
    fn rejects_bad_cluster_ids() {
        for (input, reason) in [
            ("", "cluster ID is empty"),
            ("a.b", "cluster ID must not contain '.'"),
            ("a b", "may contain only letters, digits, '.', '-' and '_'"),
        ] {
            let err = TrustDomain::from_cluster_id(input).unwrap_err();
            assert_eq!(
                err,
                SpiffeIdError::InvalidTrustDomain {
                    input: input.to_owned(),
                    reason
                }
            );
            assert_eq!(Error::from(err).kind(), ErrorKind::InvalidTrustDomain);
        }
    }
}
