//! The built-in (`consul`) CA provider (Consul docs: Built-in CA): rcgen for writing certificates,
//! x509-parser for reading them, aws-lc-rs for every signature.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber, SignatureAlgorithm,
    SigningKey, SubjectPublicKeyInfo,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::config::{CLOCK_DRIFT_BUFFER, CROSS_SIGN_VALIDITY, ConsulCaConfig};
use super::csr::build_csr;
use super::keys::PrivateKey;
use super::provider::{Provider, ProviderConfig, Serials};
use super::{CaError, Csr};
use crate::SharedClock;
use crate::certs::{self, CertInfo};
use crate::spiffe::SpiffeId;

/// Consul's short random CA name component (ARCHITECTURE.md, ca): 8 random bytes read
/// little-endian, taken as a signed 64-bit number, written in base 36 and cut to 8 characters.
pub fn compact_uid() -> String {
    let v = i64::from_le_bytes(rand::random::<[u8; 8]>());
    let mut n = v.unsigned_abs();
    let mut digits = Vec::new();
    loop {
        let d = (n % 36) as u8;
        digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        digits.push(b'-');
    }
    digits.reverse();
    let s = String::from_utf8(digits).unwrap_or_default();
    s.chars().take(8).collect()
}

/// Consul's CA common name: `<pri|sec>-<uid8>.<provider32>.ca.<td8>.consul` (ARCHITECTURE.md, ca).
pub fn ca_common_name(provider: &str, uid: &str, trust_domain: &str, primary: bool) -> String {
    let clean = |s: &str, n: usize| -> String {
        s.to_lowercase()
            .chars()
            .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            .take(n)
            .collect()
    };
    let typ = if primary { "pri" } else { "sec" };
    let td: String = trust_domain.chars().take(8).collect();
    format!(
        "{typ}-{}.{}.ca.{td}.consul",
        clean(uid, 8),
        clean(provider, 32)
    )
}

/// The signing SPIFFE ID of a cluster: `spiffe://<cluster-id>.consul`.
pub fn signing_uri(cluster_id: &str) -> String {
    format!("spiffe://{}.consul", cluster_id.to_lowercase())
}

/// What a primary checks of a secondary's intermediate CSR before any provider signs it: at
/// most one URI SAN, and one this trust domain's signing ID may sign (Consul's
/// `SignIntermediate`).
pub(crate) fn check_intermediate_csr(csr: &Csr, cluster_id: &str) -> Result<(), CaError> {
    let want = signing_uri(cluster_id);
    match csr.uris() {
        [] => Ok(()),
        [uri] => {
            let ok = SpiffeId::parse(uri).is_ok_and(|id| {
                SpiffeId::parse(&want)
                    .ok()
                    .and_then(|s| s.as_signing().cloned())
                    .is_some_and(|s| s.can_sign(&id))
            });
            if ok {
                Ok(())
            } else {
                Err(CaError::IntermediateCsrDomain {
                    got: uri.clone(),
                    want,
                })
            }
        }
        many => Err(CaError::CsrTooManyUris(many.len())),
    }
}

/// A [`PrivateKey`] shared between the provider and its cached issuer.
#[derive(Debug, Clone)]
struct SharedKey(Arc<PrivateKey>);

impl PublicKeyData for SharedKey {
    fn der_bytes(&self) -> &[u8] {
        self.0.pair().der_bytes()
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        PublicKeyData::algorithm(self.0.pair())
    }
}

impl SigningKey for SharedKey {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.0.pair().sign(msg)
    }
}

/// A CA certificate with its key, ready to sign.
struct Signer {
    issuer: Issuer<'static, SharedKey>,
    pem: String,
    info: CertInfo,
    is_root: bool,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.info.subject_cn)
            .field("not_after", &self.info.not_after)
            .field("is_root", &self.is_root)
            .finish_non_exhaustive()
    }
}

impl Signer {
    fn new(cert_pem: &str, key: Arc<PrivateKey>, is_root: bool) -> Result<Signer, CaError> {
        let der = certs::parse_pem_certificate(cert_pem)?;
        let info = CertInfo::from_der(&der)?;
        if info.spki_der != key.public_key_der() {
            return Err(CaError::InvalidConfig(
                "the private key does not match the certificate's public key".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&der, SharedKey(key))?;
        Ok(Signer {
            issuer,
            pem: certs::der_to_pem(&der),
            info,
            is_root,
        })
    }

    fn check_not_expired(&self, now: OffsetDateTime) -> Result<(), CaError> {
        if now > self.info.not_after {
            let what = format!("certificate expired at {}", self.info.not_after);
            return Err(if self.is_root {
                CaError::RootExpired(what)
            } else {
                CaError::IntermediateExpired(what)
            });
        }
        Ok(())
    }
}

/// Keys a built-in provider must persist to survive a restart. `Debug` redacts the key.
#[derive(Clone, PartialEq, Eq)]
pub struct BuiltinSecrets {
    /// The active CA key, PEM.
    pub private_key_pem: String,
    /// The certificate the key belongs to: the root (primary) or intermediate (secondary).
    pub cert_pem: String,
}

impl fmt::Debug for BuiltinSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BuiltinSecrets")
            .field("private_key_pem", &"<redacted>")
            .field("cert_pem", &self.cert_pem)
            .finish()
    }
}

/// Consul's built-in CA.
#[derive(Debug)]
pub struct BuiltinProvider {
    clock: SharedClock,
    serials: Serials,
    config: Option<ProviderConfig>,
    parsed: Option<ConsulCaConfig>,
    signer: Option<Signer>,
    pending_key: Option<PrivateKey>,
    restored: Option<BuiltinSecrets>,
}

impl BuiltinProvider {
    /// A provider that reads time from `clock` and serials from `serials`.
    pub fn new(clock: SharedClock, serials: Serials) -> Self {
        BuiltinProvider {
            clock,
            serials,
            config: None,
            parsed: None,
            signer: None,
            pending_key: None,
            restored: None,
        }
    }

    /// A provider that resumes with keys persisted by [`BuiltinProvider::secrets`].
    pub fn with_secrets(clock: SharedClock, serials: Serials, secrets: BuiltinSecrets) -> Self {
        let mut p = Self::new(clock, serials);
        p.restored = Some(secrets);
        p
    }

    /// The keys to persist (mode 0600 on disk); `None` before initialisation.
    pub fn secrets(&self) -> Option<BuiltinSecrets> {
        self.signer.as_ref().map(|s| BuiltinSecrets {
            private_key_pem: s.issuer_key().to_pem().to_string(),
            cert_pem: s.pem.clone(),
        })
    }

    fn cfg(&self) -> Result<(&ProviderConfig, &ConsulCaConfig), CaError> {
        match (&self.config, &self.parsed) {
            (Some(c), Some(p)) => Ok((c, p)),
            _ => Err(CaError::NotInitialized),
        }
    }

    fn signer(&self) -> Result<&Signer, CaError> {
        self.signer.as_ref().ok_or(CaError::NotInitialized)
    }

    fn serial(&self) -> SerialNumber {
        SerialNumber::from_slice(&certs::serial_bytes(self.serials.next()))
    }

    fn backdated_now(&self) -> OffsetDateTime {
        self.clock.now() - CLOCK_DRIFT_BUFFER
    }
}

impl Signer {
    fn issuer_key(&self) -> &PrivateKey {
        &self.issuer.key().0
    }
}

fn ia5(s: &str) -> Result<rcgen::string::Ia5String, CaError> {
    s.try_into()
        .map_err(|_| CaError::InvalidCsr(format!("SAN is not ASCII: {s}")))
}

/// Rebuilds an X.509 name as rcgen's type, attribute by attribute.
fn distinguished_name(cert_der: &[u8]) -> Result<DistinguishedName, CaError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(cert_der)
        .map_err(|e| CaError::InvalidCertificate(e.to_string()))?;
    let mut dn = DistinguishedName::new();
    for attr in cert.subject().iter_attributes() {
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .map(Iterator::collect)
            .unwrap_or_default();
        let value = attr
            .as_str()
            .map_err(|_| CaError::InvalidCertificate("non-string subject attribute".into()))?;
        dn.push(DnType::from_oid(&oid), value);
    }
    Ok(dn)
}

impl Provider for BuiltinProvider {
    fn name(&self) -> &'static str {
        "consul"
    }

    fn configure(&mut self, config: ProviderConfig) -> Result<(), CaError> {
        let parsed = ConsulCaConfig::from_map(&config.raw)?;
        self.parsed = Some(parsed);
        self.config = Some(config);
        if let Some(secrets) = self.restored.take() {
            let key = Arc::new(PrivateKey::from_pem(&secrets.private_key_pem)?);
            let is_root = self.config.as_ref().is_some_and(|c| c.is_primary);
            self.signer = Some(Signer::new(&secrets.cert_pem, key, is_root)?);
        }
        Ok(())
    }

    fn state(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn generate_ca_chain(&mut self) -> Result<String, CaError> {
        let (config, parsed) = self.cfg()?;
        if !config.is_primary {
            return Err(CaError::NotPrimary);
        }
        if let Some(s) = &self.signer {
            return Ok(s.pem.clone());
        }
        let want_uri = signing_uri(&config.cluster_id);
        let signer = if let (Some(root), Some(key)) = (&parsed.root_cert, &parsed.private_key) {
            // Operator-supplied root: used verbatim, but it must be a signing cert of ours.
            let key = Arc::new(PrivateKey::from_pem(key)?);
            let signer = Signer::new(root, key, true)?;
            if signer.info.uris.len() != 1 || !signer.info.uris[0].eq_ignore_ascii_case(&want_uri) {
                return Err(CaError::InvalidConfig(format!(
                    "RootCert must have exactly one URI SAN {want_uri}, found {:?}",
                    signer.info.uris
                )));
            }
            if !signer.info.is_ca {
                return Err(CaError::InvalidConfig(
                    "RootCert is not a CA certificate".into(),
                ));
            }
            signer
        } else {
            let key = match &parsed.private_key {
                Some(pem) => PrivateKey::from_pem(pem)?,
                None => PrivateKey::generate(parsed.common.key_spec())?,
            };
            let now = self.clock.now();
            let mut p = CertificateParams::default();
            p.distinguished_name = DistinguishedName::new();
            p.distinguished_name.push(
                DnType::CommonName,
                ca_common_name("consul", &compact_uid(), &config.cluster_id, true),
            );
            p.serial_number = Some(self.serial());
            p.subject_alt_names = vec![SanType::URI(ia5(&want_uri)?)];
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            p.key_identifier_method = KeyIdMethod::PreSpecified(key.key_id());
            p.use_authority_key_identifier_extension = true;
            p.not_before = now;
            p.not_after = now + parsed.common.root_cert_ttl;
            let cert = p.self_signed(key.pair())?;
            Signer::new(&cert.pem(), Arc::new(key), true)?
        };
        let pem = signer.pem.clone();
        self.signer = Some(signer);
        Ok(pem)
    }

    fn active_leaf_signing_cert(&self) -> Result<String, CaError> {
        Ok(self.signer()?.pem.clone())
    }

    fn sign(&self, csr: &Csr) -> Result<String, CaError> {
        let (_, parsed) = self.cfg()?;
        let signer = self.signer()?;
        signer.check_not_expired(self.clock.now())?;
        let mut p = CertificateParams::default();
        p.distinguished_name = DistinguishedName::new();
        p.serial_number = Some(self.serial());
        for uri in csr.uris() {
            p.subject_alt_names.push(SanType::URI(ia5(uri)?));
        }
        for dns in csr.dns_names() {
            p.subject_alt_names.push(SanType::DnsName(ia5(dns)?));
        }
        for ip in csr.ip_addresses() {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::DataEncipherment,
            KeyUsagePurpose::KeyAgreement,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        p.not_before = self.backdated_now();
        p.not_after = p.not_before + parsed.common.leaf_cert_ttl;
        p.key_identifier_method = KeyIdMethod::PreSpecified(csr.key_id());
        p.use_authority_key_identifier_extension = true;
        Ok(p.signed_by(csr.public_key(), &signer.issuer)?.pem())
    }

    fn sign_intermediate(&self, csr: &Csr) -> Result<String, CaError> {
        let (config, parsed) = self.cfg()?;
        if !config.is_primary {
            return Err(CaError::NotPrimary);
        }
        let signer = self.signer()?;
        signer.check_not_expired(self.clock.now())?;
        check_intermediate_csr(csr, &config.cluster_id)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = csr.distinguished_name().clone();
        p.serial_number = Some(self.serial());
        for uri in csr.uris() {
            p.subject_alt_names.push(SanType::URI(ia5(uri)?));
        }
        for dns in csr.dns_names() {
            p.subject_alt_names.push(SanType::DnsName(ia5(dns)?));
        }
        for ip in csr.ip_addresses() {
            p.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.key_identifier_method = KeyIdMethod::PreSpecified(csr.key_id());
        p.use_authority_key_identifier_extension = true;
        p.not_before = self.backdated_now();
        p.not_after = p.not_before + parsed.common.intermediate_cert_ttl;
        Ok(p.signed_by(csr.public_key(), &signer.issuer)?.pem())
    }

    fn cross_sign_ca(&self, cert_pem: &str) -> Result<String, CaError> {
        let (config, parsed) = self.cfg()?;
        if !config.is_primary {
            return Err(CaError::NotPrimary);
        }
        if parsed.disable_cross_signing {
            return Err(CaError::CrossSigningUnsupported);
        }
        let signer = self.signer()?;
        signer.check_not_expired(self.clock.now())?;
        let der = certs::parse_pem_certificate(cert_pem)?;
        let info = CertInfo::from_der(&der)?;
        if !info.is_ca {
            return Err(CaError::InvalidCertificate(
                "only a CA certificate can be cross-signed".into(),
            ));
        }
        let mut p = CertificateParams::default();
        p.distinguished_name = distinguished_name(&der)?;
        p.serial_number = Some(self.serial());
        for uri in &info.uris {
            p.subject_alt_names.push(SanType::URI(ia5(uri)?));
        }
        for dns in &info.dns_names {
            p.subject_alt_names.push(SanType::DnsName(ia5(dns)?));
        }
        p.is_ca = IsCa::Ca(match info.path_len {
            Some(n) => BasicConstraints::Constrained(u8::try_from(n).unwrap_or(u8::MAX)),
            None => BasicConstraints::Unconstrained,
        });
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.key_identifier_method = KeyIdMethod::PreSpecified(info.key_id());
        p.use_authority_key_identifier_extension = true;
        p.not_before = self.backdated_now();
        p.not_after = p.not_before + CROSS_SIGN_VALIDITY;
        let spki = SubjectPublicKeyInfo::from_der(&info.spki_der)?;
        Ok(p.signed_by(&spki, &signer.issuer)?.pem())
    }

    fn persisted_secrets(&self) -> Option<BuiltinSecrets> {
        self.secrets()
    }

    fn supports_cross_signing(&self) -> bool {
        !self
            .parsed
            .as_ref()
            .is_some_and(|p| p.disable_cross_signing)
    }

    fn generate_intermediate_csr(&mut self) -> Result<(String, String), CaError> {
        let (config, parsed) = self.cfg()?;
        if config.is_primary {
            return Err(CaError::NotSecondary);
        }
        let key = PrivateKey::generate(parsed.common.key_spec())?;
        let csr = build_csr(&key, &signing_uri(&config.cluster_id), &[], &[], true)?;
        let opaque = certs::colon_hex(&key.key_id());
        self.pending_key = Some(key);
        Ok((csr, opaque))
    }

    fn set_intermediate(
        &mut self,
        intermediate_pem: &str,
        root_pem: &str,
        opaque: &str,
    ) -> Result<(), CaError> {
        let (config, _) = self.cfg()?;
        if config.is_primary {
            return Err(CaError::NotSecondary);
        }
        let want_uri = signing_uri(&config.cluster_id);
        let key = self
            .pending_key
            .as_ref()
            .ok_or_else(|| CaError::InvalidIntermediate("no intermediate CSR is pending".into()))?;
        if certs::colon_hex(&key.key_id()) != opaque {
            return Err(CaError::InvalidIntermediate(
                "intermediate cert is for a different private key".into(),
            ));
        }
        let der = certs::parse_pem_certificate(intermediate_pem)?;
        let info = CertInfo::from_der(&der)?;
        if info.spki_der != key.public_key_der() {
            return Err(CaError::InvalidIntermediate(
                "intermediate cert is for a different private key".into(),
            ));
        }
        if !info.is_ca {
            return Err(CaError::InvalidIntermediate(
                "intermediate is not a CA certificate".into(),
            ));
        }
        if info.uris.len() != 1 {
            return Err(CaError::InvalidIntermediate(format!(
                "intermediate cert has unexpected number of URIs: {}",
                info.uris.len()
            )));
        }
        if !info.uris[0].eq_ignore_ascii_case(&want_uri) {
            return Err(CaError::InvalidIntermediate(format!(
                "incoming cert URI {:?} does not match current URI: {want_uri:?}",
                info.uris[0]
            )));
        }
        let root: CertificateDer<'_> = certs::parse_pem_certificate(root_pem)?;
        certs::verify_signed_by(&der, &root).map_err(|e| {
            CaError::InvalidIntermediate(format!(
                "could not verify intermediate cert against root: {e}"
            ))
        })?;
        let now = self.clock.now();
        if now > info.not_after || now < info.not_before {
            return Err(CaError::InvalidIntermediate(
                "could not verify intermediate cert against root: certificate is not valid now"
                    .into(),
            ));
        }
        let key = self.pending_key.take().ok_or(CaError::NotInitialized)?;
        self.signer = Some(Signer::new(intermediate_pem, Arc::new(key), false)?);
        Ok(())
    }
}
