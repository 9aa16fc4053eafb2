//! CA configuration (Consul CA docs, configuration): every option, default, rule and message.
//!
//! Keys arrive CamelCase over HTTP (`LeafCertTTL`) and snake_case from agent config files
//! (`leaf_cert_ttl`); Consul matches them case-insensitively and decodes values weakly
//! (numbers may arrive as strings), so the options are read with [`crate::json`] under
//! [`Rules::CONFIG`], their names taken from the structs below.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

use super::CaError;
use super::keys::{KeySpec, KeyType};
use crate::certs::{self, CertInfo};
use crate::duration::{deserialize_go_duration, format_go_duration};
use crate::json::{DecodeError, Rules};

const HOUR: Duration = Duration::from_secs(3600);
/// Shortest allowed leaf TTL.
pub const MIN_LEAF_CERT_TTL: Duration = HOUR;
/// Longest allowed leaf TTL (365 days).
pub const MAX_LEAF_CERT_TTL: Duration = Duration::from_secs(8760 * 3600);
/// How often intermediates are checked for renewal.
pub const INTERMEDIATE_RENEW_INTERVAL: Duration = HOUR;
/// Validity of a cross-signed root (hard-coded in Consul: leaves live at most 3 days).
pub const CROSS_SIGN_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);
/// How far NotBefore of leaves and intermediates is back-dated for clock drift.
pub const CLOCK_DRIFT_BUFFER: Duration = Duration::from_secs(60);

/// When `pem` (an intermediate) is past half its validity, counted from NotBefore + the
/// clock-drift minute as Consul does.
pub(crate) fn needs_renewal(pem: &str, now: time::OffsetDateTime) -> bool {
    let Ok(der) = certs::parse_pem_certificate(pem) else {
        return false;
    };
    let Ok(info) = CertInfo::from_der(&der) else {
        return false;
    };
    let start = info.not_before + CLOCK_DRIFT_BUFFER;
    let half = (info.not_after - start) / 2;
    now > start + half
}

/// Options shared by every provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct CommonCaConfig {
    /// Lifetime of leaf certificates (`LeafCertTTL`, default 72h).
    #[serde(rename = "LeafCertTTL", deserialize_with = "deserialize_go_duration")]
    pub leaf_cert_ttl: Duration,
    /// Lifetime of intermediates (`IntermediateCertTTL`, default 8760h).
    #[serde(
        rename = "IntermediateCertTTL",
        deserialize_with = "deserialize_go_duration"
    )]
    pub intermediate_cert_ttl: Duration,
    /// Lifetime of generated roots (`RootCertTTL`, default 87600h).
    #[serde(rename = "RootCertTTL", deserialize_with = "deserialize_go_duration")]
    pub root_cert_ttl: Duration,
    /// Type of generated CA keys (`PrivateKeyType`, default `ec`).
    // Read as text by `from_map`: Consul rejects an unknown type in validation, with its own
    // message rather than a decoding error.
    #[serde(skip)]
    pub private_key_type: KeyType,
    /// Size of generated CA keys (`PrivateKeyBits`, default 256).
    pub private_key_bits: u32,
    /// Server-wide CSR rate (`CSRMaxPerSecond`, default 50; 0 disables).
    #[serde(rename = "CSRMaxPerSecond")]
    pub csr_max_per_second: f64,
    /// Concurrent CSR limit (`CSRMaxConcurrent`, default 0; used only when the rate is 0).
    #[serde(rename = "CSRMaxConcurrent")]
    pub csr_max_concurrent: u32,
    /// Skip the checks of [`CommonCaConfig::validate`] (`SkipValidate`).
    pub skip_validate: bool,
}

impl Default for CommonCaConfig {
    fn default() -> Self {
        CommonCaConfig {
            leaf_cert_ttl: 72 * HOUR,
            intermediate_cert_ttl: 8760 * HOUR,
            root_cert_ttl: 87600 * HOUR,
            private_key_type: KeyType::Ec,
            private_key_bits: 256,
            csr_max_per_second: 50.0,
            csr_max_concurrent: 0,
            skip_validate: false,
        }
    }
}

impl CommonCaConfig {
    /// Reads the common options from a raw `Config` map; absent keys keep their defaults.
    pub fn from_map(map: &Map<String, Value>) -> Result<Self, CaError> {
        let mut c: CommonCaConfig = decode(map)?;
        if let Some(value) = Rules::CONFIG.get(map, "PrivateKeyType") {
            let text: String = crate::json::decode(value.clone(), Rules::CONFIG)
                .map_err(|e| CaError::InvalidConfig(format!("PrivateKeyType: {e}")))?;
            c.private_key_type = KeyType::parse(&text)?;
        }
        Ok(c)
    }

    /// The CA key spec these options ask for.
    pub fn key_spec(&self) -> KeySpec {
        KeySpec {
            key_type: self.private_key_type,
            bits: self.private_key_bits,
        }
    }

    /// Consul's rules, in Consul's order, with Consul's messages.
    pub fn validate(&self) -> Result<(), CaError> {
        if self.skip_validate {
            return Ok(());
        }
        let bad = |m: String| Err(CaError::InvalidConfig(m));
        if self.leaf_cert_ttl < MIN_LEAF_CERT_TTL {
            return bad(format!(
                "leaf cert TTL must be greater or equal than {}",
                format_go_duration(MIN_LEAF_CERT_TTL)
            ));
        }
        if self.leaf_cert_ttl > MAX_LEAF_CERT_TTL {
            return bad(format!(
                "leaf cert TTL must be less than {}",
                format_go_duration(MAX_LEAF_CERT_TTL)
            ));
        }
        if self.intermediate_cert_ttl < 3 * INTERMEDIATE_RENEW_INTERVAL {
            return bad("Intermediate Cert TTL must be greater or equal than 3h".into());
        }
        if self.intermediate_cert_ttl < 3 * self.leaf_cert_ttl {
            return bad(format!(
                "Intermediate Cert TTL must be greater or equal than 3 * LeafCertTTL (>={}).",
                format_go_duration(3 * self.leaf_cert_ttl)
            ));
        }
        if !self.root_cert_ttl.is_zero() && self.root_cert_ttl < self.intermediate_cert_ttl {
            return bad(format!(
                "root cert TTL is set and is not greater than intermediate cert ttl. root cert ttl: {}, intermediate cert ttl: {}",
                format_go_duration(self.root_cert_ttl),
                format_go_duration(self.intermediate_cert_ttl)
            ));
        }
        if !self.csr_max_per_second.is_finite() || self.csr_max_per_second < 0.0 {
            return bad("CSRMaxPerSecond must be a non-negative number".into());
        }
        self.key_spec().validate()
    }

    /// The options as a CamelCase map, as the API returns them.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "LeafCertTTL".into(),
            format_go_duration(self.leaf_cert_ttl).into(),
        );
        m.insert(
            "IntermediateCertTTL".into(),
            format_go_duration(self.intermediate_cert_ttl).into(),
        );
        m.insert(
            "RootCertTTL".into(),
            format_go_duration(self.root_cert_ttl).into(),
        );
        m.insert(
            "PrivateKeyType".into(),
            self.private_key_type.as_str().into(),
        );
        m.insert("PrivateKeyBits".into(), self.private_key_bits.into());
        m.insert("CSRMaxPerSecond".into(), self.csr_max_per_second.into());
        m.insert("CSRMaxConcurrent".into(), self.csr_max_concurrent.into());
        m
    }
}

/// Options of the built-in (`consul`) provider.
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct ConsulCaConfig {
    /// The common options.
    // Read from the same map by `CommonCaConfig::from_map`: serde's `flatten` would bypass
    // the decoder's key matching.
    #[serde(skip)]
    pub common: CommonCaConfig,
    /// An operator-supplied CA key (`PrivateKey`), PEM.
    #[serde(deserialize_with = "secret")]
    pub private_key: Option<Zeroizing<String>>,
    /// An operator-supplied root (`RootCert`), PEM.
    #[serde(deserialize_with = "non_empty")]
    pub root_cert: Option<String>,
    /// Legacy `RotationPeriod`: accepted and ignored, as in Consul.
    #[serde(deserialize_with = "some_go_duration")]
    pub rotation_period: Option<Duration>,
    /// Test-only `DisableCrossSigning`.
    pub disable_cross_signing: bool,
}

impl fmt::Debug for ConsulCaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulCaConfig")
            .field("common", &self.common)
            .field(
                "private_key",
                &self.private_key.as_ref().map(|_| "<redacted>"),
            )
            .field("root_cert", &self.root_cert.is_some())
            .field("disable_cross_signing", &self.disable_cross_signing)
            .finish_non_exhaustive()
    }
}

impl ConsulCaConfig {
    /// Reads and validates a raw `Config` map.
    pub fn from_map(map: &Map<String, Value>) -> Result<Self, CaError> {
        let common = CommonCaConfig::from_map(map)?;
        let mut c: ConsulCaConfig = decode(map)?;
        c.common = common;
        c.validate()?;
        Ok(c)
    }

    /// Consul's provider-level checks.
    pub fn validate(&self) -> Result<(), CaError> {
        if self.root_cert.is_some() && self.private_key.is_none() {
            return Err(CaError::InvalidConfig(
                "must provide a private key when providing a root cert".into(),
            ));
        }
        self.common.validate()
    }
}

/// Reads a configuration map into `T`, keys and values as Consul's `mapstructure` reads them.
fn decode<T: serde::de::DeserializeOwned>(map: &Map<String, Value>) -> Result<T, CaError> {
    crate::json::decode(Value::Object(map.clone()), Rules::CONFIG)
        .map_err(|e: DecodeError| CaError::InvalidConfig(e.to_string()))
}

fn non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let s = String::deserialize(deserializer)?;
    Ok((!s.is_empty()).then_some(s))
}

fn secret<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Zeroizing<String>>, D::Error> {
    Ok(non_empty(deserializer)?.map(Zeroizing::new))
}

fn some_go_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    deserialize_go_duration(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn err(v: Value) -> String {
        let e = ConsulCaConfig::from_map(&map(v)).unwrap_err();
        assert_eq!(
            crate::Error::from(e.clone()).kind(),
            ErrorKind::InvalidCaConfig
        );
        e.to_string()
    }

    #[test]
    fn defaults_are_consuls() {
        let c = ConsulCaConfig::from_map(&Map::new()).unwrap();
        assert_eq!(c.common, CommonCaConfig::default());
        assert_eq!(c.common.leaf_cert_ttl, 72 * HOUR);
        assert_eq!(c.common.intermediate_cert_ttl, 8760 * HOUR);
        assert_eq!(c.common.root_cert_ttl, 87600 * HOUR);
        assert_eq!(c.common.key_spec(), KeySpec::EC_P256);
        assert_eq!(c.common.csr_max_per_second, 50.0);
        assert_eq!(c.common.csr_max_concurrent, 0);
    }

    #[test]
    fn keys_match_case_insensitively_and_values_weakly() {
        let c = ConsulCaConfig::from_map(&map(json!({
            "leaf_cert_ttl": "24h", "INTERMEDIATECERTTTL": "100h", "PrivateKeyType": "rsa",
            "privatekeybits": "4096", "CSRMaxPerSecond": "0", "csr_max_concurrent": 4,
            "RotationPeriod": "2160h", "SomethingElse": 1
        })))
        .unwrap();
        assert_eq!(c.common.leaf_cert_ttl, 24 * HOUR);
        assert_eq!(c.common.intermediate_cert_ttl, 100 * HOUR);
        assert_eq!(
            c.common.key_spec(),
            KeySpec {
                key_type: KeyType::Rsa,
                bits: 4096
            }
        );
        assert_eq!(c.common.csr_max_per_second, 0.0);
        assert_eq!(c.common.csr_max_concurrent, 4);
        assert_eq!(c.rotation_period, Some(2160 * HOUR));
    }

    /// Every option the API writes is read back under any spelling Consul accepts: the names
    /// come from the struct, so no table of them can miss one.
    #[test]
    fn every_option_is_read_in_every_spelling() {
        let config = ConsulCaConfig::from_map(&map(json!({
            "LeafCertTTL": "24h", "IntermediateCertTTL": "100h", "RootCertTTL": "1000h",
            "PrivateKeyType": "rsa", "PrivateKeyBits": 2048, "CSRMaxPerSecond": 0,
            "CSRMaxConcurrent": 4
        })))
        .unwrap();
        let written = config.common.to_map();
        assert_eq!(written.len(), 7);
        let snake = |k: &str| {
            let mut out = String::new();
            for (i, c) in k.char_indices() {
                let prev_lower = k[..i]
                    .chars()
                    .last()
                    .is_some_and(|p| p.is_ascii_lowercase());
                if c.is_ascii_uppercase() && prev_lower {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            }
            out
        };
        for rename in [
            &snake as &dyn Fn(&str) -> String,
            &|k: &str| snake(k).replace('_', "-"),
            &|k: &str| k.to_ascii_uppercase(),
        ] {
            let renamed: Map<String, Value> = written
                .iter()
                .map(|(k, v)| (rename(k), v.clone()))
                .collect();
            let read = ConsulCaConfig::from_map(&renamed).unwrap();
            assert_eq!(read.common, config.common, "{renamed:?}");
        }
    }

    #[test]
    fn every_rule_has_consuls_message() {
        assert_eq!(
            err(json!({"LeafCertTTL": "59m"})),
            "leaf cert TTL must be greater or equal than 1h0m0s"
        );
        assert_eq!(
            err(json!({"LeafCertTTL": "8761h"})),
            "leaf cert TTL must be less than 8760h0m0s"
        );
        assert_eq!(
            err(json!({"LeafCertTTL": "1h", "IntermediateCertTTL": "2h"})),
            "Intermediate Cert TTL must be greater or equal than 3h"
        );
        assert_eq!(
            err(json!({"LeafCertTTL": "72h", "IntermediateCertTTL": "100h"})),
            "Intermediate Cert TTL must be greater or equal than 3 * LeafCertTTL (>=216h0m0s)."
        );
        assert_eq!(
            err(json!({"RootCertTTL": "100h"})),
            "root cert TTL is set and is not greater than intermediate cert ttl. root cert ttl: 100h0m0s, intermediate cert ttl: 8760h0m0s"
        );
        assert_eq!(
            err(json!({"PrivateKeyType": "dsa"})),
            "private key type must be either 'ec' or 'rsa'"
        );
        assert_eq!(
            err(json!({"PrivateKeyBits": 512})),
            "EC key length must be one of (224, 256, 384, 521) bits"
        );
        assert_eq!(
            err(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 1024})),
            "RSA key length must be 2048 or 4096 bits"
        );
        assert_eq!(
            err(json!({"RootCert": "x"})),
            "must provide a private key when providing a root cert"
        );
        assert!(err(json!({"LeafCertTTL": "soon"})).contains("invalid duration"));
        assert!(err(json!({"LeafCertTTL": [1]})).contains("expected a duration"));
        assert!(err(json!({"PrivateKeyBits": -1})).contains("non-negative integer"));
        assert!(err(json!({"SkipValidate": "maybe"})).contains("boolean"));
    }

    #[test]
    fn skip_validate_skips_the_ttl_rules() {
        let c = ConsulCaConfig::from_map(&map(json!({"LeafCertTTL": "1m", "SkipValidate": true})))
            .unwrap();
        assert_eq!(c.common.leaf_cert_ttl, Duration::from_secs(60));
    }

    #[test]
    fn debug_redacts_the_private_key() {
        let c =
            ConsulCaConfig::from_map(&map(json!({"PrivateKey": "SECRET-KEY", "RootCert": "x"})))
                .unwrap();
        assert!(!format!("{c:?}").contains("SECRET-KEY"));
    }
}
