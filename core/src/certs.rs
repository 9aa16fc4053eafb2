//! X.509 helpers shared by the CA, the agent and TLS: key identifiers, colon-hex, PEM, and
//! a parsed view of the fields Consul cares about.

use std::net::IpAddr;

use aws_lc_rs::digest;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::{PemObject, SectionKind};
use time::OffsetDateTime;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use crate::ca::CaError;

/// Consul's key identifier: SHA-256 over the DER SubjectPublicKeyInfo, all 32 bytes.
///
/// RFC 5280 suggests SHA-1; Consul deliberately uses the full SHA-256 (ARCHITECTURE.md, certs), and
/// peers match AKID to SKID byte for byte, so we must too.
pub fn key_id(spki_der: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA256, spki_der).as_ref().to_vec()
}

/// Lower-case hex bytes joined by `:` (Go's `% x` with spaces replaced).
pub fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Consul's root ID: colon-hex SHA-1 of the certificate DER.
pub(crate) fn sha1_fingerprint(der: &[u8]) -> String {
    colon_hex(digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der).as_ref())
}

/// The minimal big-endian bytes of a serial number, as Consul prints it (`8` → `08`).
pub(crate) fn serial_bytes(serial: u64) -> Vec<u8> {
    let bytes = serial.to_be_bytes();
    let first = bytes
        .iter()
        .position(|b| *b != 0)
        .unwrap_or(bytes.len() - 1);
    bytes[first..].to_vec()
}

/// Encodes one DER certificate as PEM, newline-terminated.
pub fn der_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// Encodes DER bytes as a PEM block with 64-column lines, newline-terminated.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    use std::fmt::Write;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    let _ = writeln!(out, "-----BEGIN {label}-----");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    let _ = writeln!(out, "-----END {label}-----");
    out
}

/// Parses every `CERTIFICATE` block of a PEM text, in order.
///
/// Errors when the text holds no certificate, when a block is not valid base64, or when a
/// block does not parse as X.509.
pub fn parse_pem_certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let mut out = Vec::new();
    for item in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem.as_bytes()) {
        let (kind, der) = item.map_err(|e| CaError::InvalidPem(e.to_string()))?;
        if kind == SectionKind::Certificate {
            X509Certificate::from_der(&der)
                .map_err(|e| CaError::InvalidCertificate(format!("bad DER in PEM: {e}")))?;
            out.push(CertificateDer::from(der));
        }
    }
    if out.is_empty() {
        return Err(CaError::InvalidPem("no CERTIFICATE block found".into()));
    }
    Ok(out)
}

/// Parses exactly one certificate from PEM (the first block; further blocks are an error).
pub fn parse_pem_certificate(pem: &str) -> Result<CertificateDer<'static>, CaError> {
    let mut certs = parse_pem_certificates(pem)?;
    if certs.len() != 1 {
        return Err(CaError::InvalidPem(format!(
            "expected one certificate, found {}",
            certs.len()
        )));
    }
    Ok(certs.remove(0))
}

/// The public-key algorithm of a certificate or CSR, as Consul names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// Elliptic curve (ECDSA).
    Ec,
    /// RSA.
    Rsa,
    /// Anything else (Ed25519, DSA, …).
    Other,
}

impl KeyAlgorithm {
    /// `"ec"`, `"rsa"` or `"other"`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Ec => "ec",
            KeyAlgorithm::Rsa => "rsa",
            KeyAlgorithm::Other => "other",
        }
    }
}

/// The fields of a certificate that libconnect reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct CertInfo {
    /// Serial number, minimal big-endian bytes.
    pub serial: Vec<u8>,
    /// Subject common name, if any.
    pub subject_cn: Option<String>,
    /// Whether the subject is empty.
    pub subject_empty: bool,
    /// URI SANs in order.
    pub uris: Vec<String>,
    /// DNS SANs in order.
    pub dns_names: Vec<String>,
    /// IP SANs in order.
    pub ip_addresses: Vec<IpAddr>,
    /// Whether the SAN extension is marked critical.
    pub san_critical: bool,
    /// BasicConstraints CA flag.
    pub is_ca: bool,
    /// BasicConstraints path length, when given.
    pub path_len: Option<u32>,
    /// SubjectKeyIdentifier bytes.
    pub subject_key_id: Option<Vec<u8>>,
    /// AuthorityKeyIdentifier key id bytes.
    pub authority_key_id: Option<Vec<u8>>,
    /// NotBefore.
    pub not_before: OffsetDateTime,
    /// NotAfter.
    pub not_after: OffsetDateTime,
    /// DER of the SubjectPublicKeyInfo.
    pub spki_der: Vec<u8>,
    /// Public key algorithm.
    pub key_algorithm: KeyAlgorithm,
    /// Public key size in bits (curve size for EC, modulus size for RSA).
    pub key_bits: u32,
    /// Whether ExtKeyUsage includes clientAuth.
    pub eku_client_auth: bool,
    /// Whether ExtKeyUsage includes serverAuth.
    pub eku_server_auth: bool,
}

impl CertInfo {
    /// The certificate's key ID: its subject key ID, or [`key_id`] of its public key when it
    /// has none (a CA's `SigningKeyID` in the roots answer).
    pub fn key_id(&self) -> Vec<u8> {
        self.subject_key_id
            .clone()
            .unwrap_or_else(|| key_id(&self.spki_der))
    }

    /// Parses a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<CertInfo, CaError> {
        let (rest, cert) = X509Certificate::from_der(der)
            .map_err(|e| CaError::InvalidCertificate(format!("malformed DER: {e}")))?;
        if !rest.is_empty() {
            return Err(CaError::InvalidCertificate(
                "trailing bytes after certificate".into(),
            ));
        }
        let mut info = CertInfo {
            serial: {
                let s = cert.raw_serial();
                let first = s
                    .iter()
                    .position(|b| *b != 0)
                    .unwrap_or(s.len().saturating_sub(1));
                s[first..].to_vec()
            },
            subject_cn: cert
                .subject()
                .iter_common_name()
                .next()
                .and_then(|cn| cn.as_str().ok())
                .map(str::to_owned),
            subject_empty: cert.subject().iter().next().is_none(),
            uris: Vec::new(),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            san_critical: false,
            is_ca: false,
            path_len: None,
            subject_key_id: None,
            authority_key_id: None,
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            spki_der: cert.public_key().raw.to_vec(),
            key_algorithm: KeyAlgorithm::Other,
            key_bits: 0,
            eku_client_auth: false,
            eku_server_auth: false,
        };
        (info.key_algorithm, info.key_bits) = key_algorithm(cert.public_key());
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    info.san_critical = ext.critical;
                    collect_sans(&san.general_names, &mut info);
                }
                ParsedExtension::BasicConstraints(bc) => {
                    info.is_ca = bc.ca;
                    info.path_len = bc.path_len_constraint;
                }
                ParsedExtension::SubjectKeyIdentifier(k) => {
                    info.subject_key_id = Some(k.0.to_vec());
                }
                ParsedExtension::AuthorityKeyIdentifier(a) => {
                    info.authority_key_id = a.key_identifier.as_ref().map(|k| k.0.to_vec());
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    info.eku_client_auth = eku.client_auth;
                    info.eku_server_auth = eku.server_auth;
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// Colon-hex of the serial, as in Consul's `IssuedCert.SerialNumber`.
    pub fn serial_hex(&self) -> String {
        colon_hex(&self.serial)
    }

    /// The serial as an integer, when it fits in 64 bits.
    pub fn serial_u64(&self) -> Option<u64> {
        if self.serial.len() > 8 {
            return None;
        }
        Some(
            self.serial
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }
}

pub(crate) fn collect_sans(names: &[GeneralName<'_>], info: &mut CertInfo) {
    for name in names {
        match name {
            GeneralName::URI(u) => info.uris.push((*u).to_owned()),
            GeneralName::DNSName(d) => info.dns_names.push((*d).to_owned()),
            GeneralName::IPAddress(ip) => {
                if let Ok(b) = <[u8; 4]>::try_from(*ip) {
                    info.ip_addresses.push(IpAddr::from(b));
                } else if let Ok(b) = <[u8; 16]>::try_from(*ip) {
                    info.ip_addresses.push(IpAddr::from(b));
                }
            }
            _ => {}
        }
    }
}

pub(crate) fn key_algorithm(
    spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
) -> (KeyAlgorithm, u32) {
    match spki.parsed() {
        Ok(PublicKey::EC(ec)) => (KeyAlgorithm::Ec, ec.key_size() as u32),
        Ok(PublicKey::RSA(rsa)) => (KeyAlgorithm::Rsa, rsa.key_size() as u32),
        _ => (KeyAlgorithm::Other, 0),
    }
}

/// Checks that `child` carries a valid signature by the key of `issuer`.
pub fn verify_signed_by(child: &[u8], issuer: &[u8]) -> Result<(), CaError> {
    let (_, child) = X509Certificate::from_der(child)
        .map_err(|e| CaError::InvalidCertificate(format!("malformed DER: {e}")))?;
    let (_, issuer) = X509Certificate::from_der(issuer)
        .map_err(|e| CaError::InvalidCertificate(format!("malformed DER: {e}")))?;
    child
        .verify_signature(Some(issuer.public_key()))
        .map_err(|e| CaError::Verification(format!("signature check failed: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colon_hex_matches_go() {
        assert_eq!(colon_hex(&[0x0a, 0x1b, 0xff]), "0a:1b:ff");
        assert_eq!(colon_hex(&[]), "");
        assert_eq!(colon_hex(&serial_bytes(8)), "08");
        assert_eq!(colon_hex(&serial_bytes(0)), "00");
        assert_eq!(colon_hex(&serial_bytes(0x0100)), "01:00");
    }

    #[test]
    fn pem_lines_are_64_columns_and_round_trip() {
        let der: Vec<u8> = (0..=255u8).collect();
        let pem = pem_encode("CERTIFICATE", &der);
        assert!(pem.lines().all(|l| l.len() <= 64));
        let back = <CertificateDer<'_> as PemObject>::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_slice());
    }

    #[test]
    fn malformed_pem_and_der_are_typed_errors() {
        use crate::ErrorKind;
        let e = parse_pem_certificates("hello").unwrap_err();
        assert_eq!(crate::Error::from(e).kind(), ErrorKind::InvalidCertificate);
        let e =
            parse_pem_certificates("-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert_eq!(crate::Error::from(e).kind(), ErrorKind::InvalidCertificate);
        let bogus = pem_encode("CERTIFICATE", b"not a certificate");
        let e = parse_pem_certificates(&bogus).unwrap_err();
        assert!(e.to_string().contains("DER"), "{e}");
        assert!(CertInfo::from_der(b"\x30\x03\x02\x01\x01").is_err());
    }
}
