//! The roots model (Consul API docs, Connect CA): what `/v1/connect/ca/roots` returns.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::CaError;
use crate::certs::{self, CertInfo};

/// One CA root as Consul's API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaRoot {
    /// Colon-hex SHA-1 of the root certificate DER.
    #[serde(rename = "ID")]
    pub id: String,
    /// `Consul CA Root Cert`.
    pub name: String,
    /// The root's serial number.
    pub serial_number: u64,
    /// Colon-hex SKID of the certificate that signs leaves (root, or this DC's intermediate).
    #[serde(rename = "SigningKeyID")]
    pub signing_key_id: String,
    /// The cluster ID under which the root was created.
    pub external_trust_domain: String,
    /// NotBefore of the root.
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: OffsetDateTime,
    /// NotAfter of the root.
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: OffsetDateTime,
    /// The root certificate, PEM, newline-terminated.
    pub root_cert: String,
    /// Intermediates and cross-signed certificates served after a leaf, in order.
    pub intermediate_certs: Option<Vec<String>>,
    /// Whether this root signs new leaves.
    pub active: bool,
    /// When the root stopped being active; hidden from JSON as in Consul.
    #[serde(skip)]
    pub rotated_out_at: Option<OffsetDateTime>,
    /// `ec` or `rsa`.
    pub private_key_type: String,
    /// Key size in bits.
    pub private_key_bits: u32,
    /// Raft-style index at creation.
    pub create_index: u64,
    /// Raft-style index at last change.
    pub modify_index: u64,
}

impl CaRoot {
    /// Describes a root certificate, signing leaves itself (a primary's root).
    pub fn from_pem(root_pem: &str, cluster_id: &str, provider: &str) -> Result<CaRoot, CaError> {
        let der = certs::parse_pem_certificate(root_pem)?;
        let info = CertInfo::from_der(&der)?;
        let skid = info.key_id();
        Ok(CaRoot {
            id: certs::sha1_fingerprint(&der),
            name: format!("{} CA Root Cert", title_case(provider)),
            serial_number: info.serial_u64().unwrap_or(0),
            signing_key_id: certs::colon_hex(&skid),
            external_trust_domain: cluster_id.to_owned(),
            not_before: info.not_before,
            not_after: info.not_after,
            root_cert: certs::der_to_pem(&der),
            intermediate_certs: None,
            active: true,
            rotated_out_at: None,
            private_key_type: info.key_algorithm.as_str().to_owned(),
            private_key_bits: info.key_bits,
            create_index: 0,
            modify_index: 0,
        })
    }

    /// The intermediates, or nothing.
    pub fn intermediates(&self) -> &[String] {
        self.intermediate_certs.as_deref().unwrap_or_default()
    }
}

/// `Aws-Pca`, `Consul`, `Vault`: Go's `strings.Title` of the provider name.
fn title_case(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

/// The roots response (`/v1/connect/ca/roots`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IndexedCaRoots {
    /// ID of the active root.
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    /// `<cluster-id>.consul`.
    pub trust_domain: String,
    /// All roots; `[]`, never null.
    pub roots: Vec<CaRoot>,
}

impl IndexedCaRoots {
    /// The active root, if any.
    pub fn active(&self) -> Option<&CaRoot> {
        self.roots.iter().find(|r| r.active)
    }

    /// Every root certificate, PEM, concatenated (`?pem=true`).
    pub fn roots_pem(&self) -> String {
        self.roots.iter().map(|r| r.root_cert.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn provider_names_are_title_cased_like_go() {
        assert_eq!(super::title_case("consul"), "Consul");
        assert_eq!(super::title_case("aws-pca"), "Aws-Pca");
    }
}
