//! Certificate signing requests: parsed and signature-checked before anything reads them.

use std::net::IpAddr;

use rcgen::{CertificateSigningRequestParams, PublicKeyData, SanType};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;

use super::CaError;
use super::keys::PrivateKey;
use crate::certs;

/// A CSR whose self-signature has been verified.
#[derive(Debug)]
pub struct Csr {
    params: CertificateSigningRequestParams,
    uris: Vec<String>,
    dns_names: Vec<String>,
    ip_addresses: Vec<IpAddr>,
    spki_der: Vec<u8>,
    der: Vec<u8>,
}

impl Csr {
    /// Parses a PEM `CERTIFICATE REQUEST` and verifies its signature.
    pub fn from_pem(pem: &str) -> Result<Csr, CaError> {
        let der = CertificateSigningRequestDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CaError::InvalidPem(format!("no CERTIFICATE REQUEST block: {e}")))?;
        Self::from_der(der.as_ref())
    }

    /// Parses a DER CSR and verifies its signature.
    pub fn from_der(der: &[u8]) -> Result<Csr, CaError> {
        let params = CertificateSigningRequestParams::from_der(&der.to_vec().into()).map_err(
            |e| match e {
                rcgen::Error::InvalidCertificationRequestSignature => CaError::CsrSignature,
                rcgen::Error::UnsupportedExtension => {
                    CaError::InvalidCsr("CSR requests an unsupported extension".into())
                }
                rcgen::Error::UnsupportedSignatureAlgorithm => {
                    CaError::InvalidCsr("unsupported CSR signature algorithm".into())
                }
                other => CaError::InvalidCsr(other.to_string()),
            },
        )?;
        let mut csr = Csr {
            spki_der: params.public_key.subject_public_key_info(),
            der: der.to_vec(),
            params,
            uris: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        };
        for san in &csr.params.params.subject_alt_names {
            match san {
                SanType::URI(u) => csr.uris.push(u.as_str().to_owned()),
                SanType::DnsName(d) => {
                    // Consul strips anything after the first ':' (a port) and drops repeats.
                    let name = d.as_str().split(':').next().unwrap_or_default().to_owned();
                    if !name.is_empty() && !csr.dns_names.contains(&name) {
                        csr.dns_names.push(name);
                    }
                }
                SanType::IpAddress(ip) => csr.ip_addresses.push(*ip),
                _ => {}
            }
        }
        Ok(csr)
    }

    /// URI SANs, in order.
    pub fn uris(&self) -> &[String] {
        &self.uris
    }

    /// DNS SANs (port suffixes stripped, de-duplicated).
    pub fn dns_names(&self) -> &[String] {
        &self.dns_names
    }

    /// IP SANs.
    pub fn ip_addresses(&self) -> &[IpAddr] {
        &self.ip_addresses
    }

    /// DER SubjectPublicKeyInfo of the requester's key.
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// Consul's key id of the requester's key.
    pub fn key_id(&self) -> Vec<u8> {
        certs::key_id(&self.spki_der)
    }

    /// Whether the CSR asks for a CA (BasicConstraints CA=true).
    pub fn requests_ca(&self) -> bool {
        matches!(self.params.params.is_ca, rcgen::IsCa::Ca(_))
    }

    pub(crate) fn public_key(&self) -> &rcgen::PublicKey {
        &self.params.public_key
    }

    pub(crate) fn distinguished_name(&self) -> &rcgen::DistinguishedName {
        &self.params.params.distinguished_name
    }

    /// The CSR as received (PEM), for a provider that signs elsewhere (Vault): its signature
    /// stays valid, so a rewritten URI SAN travels beside it, not inside it.
    pub fn to_pem(&self) -> String {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.der);
        let mut pem = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(line));
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE REQUEST-----\n");
        pem
    }

    /// Replaces the URI SAN; the server rewrites agent IDs to the local trust domain.
    pub(crate) fn set_uri(&mut self, uri: String) {
        self.uris = vec![uri];
    }
}

/// Builds a CSR for `uri` with the given DNS and IP SANs and an empty subject; the SAN
/// extension is then critical, as RFC 5280 requires.
pub fn build_csr(
    key: &PrivateKey,
    uri: &str,
    dns_names: &[String],
    ip_addresses: &[IpAddr],
    ca: bool,
) -> Result<String, CaError> {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .subject_alt_names
        .push(SanType::URI(uri.try_into().map_err(|_| {
            CaError::InvalidCsr(format!("URI is not ASCII: {uri}"))
        })?));
    for d in dns_names {
        params.subject_alt_names.push(SanType::DnsName(
            d.as_str()
                .try_into()
                .map_err(|_| CaError::InvalidCsr(format!("bad DNS SAN: {d}")))?,
        ));
    }
    for ip in ip_addresses {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    if ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    }
    Ok(params.serialize_request(key.pair())?.pem()?)
}
