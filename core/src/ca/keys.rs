//! CA and leaf private keys: generation by configured type and size, PEM in Consul's block
//! types (`EC PRIVATE KEY`, `RSA PRIVATE KEY`; `PRIVATE KEY` accepted on input).

use std::fmt;

use rcgen::{KeyPair, PublicKeyData, SignatureAlgorithm};
use rustls_pki_types::PrivateKeyDer;
use x509_parser::der_parser::ber::BerObjectContent;
use zeroize::Zeroizing;

use super::CaError;
use crate::certs::{self, pem_encode};

/// A CA key type, as `PrivateKeyType` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// ECDSA over a NIST curve.
    Ec,
    /// RSA.
    Rsa,
}

impl KeyType {
    /// `"ec"` or `"rsa"`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Ec => "ec",
            KeyType::Rsa => "rsa",
        }
    }

    /// Parses `"ec"` / `"rsa"` with Consul's message on anything else.
    pub fn parse(s: &str) -> Result<KeyType, CaError> {
        match s {
            "ec" => Ok(KeyType::Ec),
            "rsa" => Ok(KeyType::Rsa),
            _ => Err(CaError::InvalidConfig(
                "private key type must be either 'ec' or 'rsa'".into(),
            )),
        }
    }
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A key type and size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeySpec {
    /// The algorithm.
    pub key_type: KeyType,
    /// Curve size for EC, modulus size for RSA.
    pub bits: u32,
}

impl KeySpec {
    /// EC P-256: Consul's default CA key and the only leaf key type.
    pub const EC_P256: KeySpec = KeySpec {
        key_type: KeyType::Ec,
        bits: 256,
    };

    /// Checks the size against Consul's rules (Consul CA docs, PrivateKeyBits), with Consul's
    /// messages.
    pub fn validate(&self) -> Result<(), CaError> {
        match self.key_type {
            KeyType::Ec if ![224, 256, 384, 521].contains(&self.bits) => {
                Err(CaError::InvalidConfig(
                    "EC key length must be one of (224, 256, 384, 521) bits".into(),
                ))
            }
            KeyType::Rsa if ![2048, 4096].contains(&self.bits) => Err(CaError::InvalidConfig(
                "RSA key length must be 2048 or 4096 bits".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The signature algorithm a key of this spec signs with.
    ///
    /// Consul signs with SHA-256 whatever the curve; our crypto provider pairs each curve with
    /// its own hash (P-384 → SHA-384, P-521 → SHA-512), which every TLS stack accepts.
    fn algorithm(&self) -> Result<&'static SignatureAlgorithm, CaError> {
        match (self.key_type, self.bits) {
            (KeyType::Ec, 256) => Ok(&rcgen::PKCS_ECDSA_P256_SHA256),
            (KeyType::Ec, 384) => Ok(&rcgen::PKCS_ECDSA_P384_SHA384),
            (KeyType::Ec, 521) => Ok(&rcgen::PKCS_ECDSA_P521_SHA512),
            (KeyType::Rsa, 2048 | 4096) => Ok(&rcgen::PKCS_RSA_SHA256),
            (KeyType::Ec, 224) => Err(CaError::UnsupportedKey(
                "EC P-224 is valid Consul configuration but not supported by libconnect's crypto provider; use 256, 384 or 521".into(),
            )),
            (t, b) => Err(CaError::UnsupportedKey(format!("{t} key of {b} bits"))),
        }
    }
}

/// A private key with its signer. `Debug` never shows key material.
pub struct PrivateKey {
    pair: KeyPair,
    spec: KeySpec,
    pem: Zeroizing<String>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("type", &self.spec.key_type)
            .field("bits", &self.spec.bits)
            .field("key_id", &certs::colon_hex(&self.key_id()))
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Generates a new key.
    pub fn generate(spec: KeySpec) -> Result<PrivateKey, CaError> {
        spec.validate()?;
        let alg = spec.algorithm()?;
        let pair = match spec.key_type {
            KeyType::Ec => KeyPair::generate_for(alg)?,
            KeyType::Rsa => {
                let size = if spec.bits == 4096 {
                    rcgen::RsaKeySize::_4096
                } else {
                    rcgen::RsaKeySize::_2048
                };
                KeyPair::generate_rsa_for(alg, size)?
            }
        };
        let pem = Zeroizing::new(consul_pem(&pair, spec.key_type)?);
        Ok(PrivateKey { pair, spec, pem })
    }

    /// Loads a key from PEM: `EC PRIVATE KEY` (SEC1), `RSA PRIVATE KEY` (PKCS#1) or
    /// `PRIVATE KEY` (PKCS#8).
    pub fn from_pem(pem: &str) -> Result<PrivateKey, CaError> {
        let der = PrivateKeyDer::from_pem_slice(pem.as_bytes())
            .map_err(|e| CaError::InvalidKey(format!("no private key in PEM: {e}")))?;
        Self::from_der(&der)
    }

    /// Loads a key from DER.
    pub fn from_der(der: &PrivateKeyDer<'_>) -> Result<PrivateKey, CaError> {
        // The DER does not say which algorithm it is for, so try each one the format allows;
        // the key parser rejects a mismatched curve.
        let candidates: &[(&'static SignatureAlgorithm, KeySpec)] = &[
            (&rcgen::PKCS_ECDSA_P256_SHA256, KeySpec::EC_P256),
            (
                &rcgen::PKCS_ECDSA_P384_SHA384,
                KeySpec {
                    key_type: KeyType::Ec,
                    bits: 384,
                },
            ),
            (
                &rcgen::PKCS_ECDSA_P521_SHA512,
                KeySpec {
                    key_type: KeyType::Ec,
                    bits: 521,
                },
            ),
            (
                &rcgen::PKCS_RSA_SHA256,
                KeySpec {
                    key_type: KeyType::Rsa,
                    bits: 0,
                },
            ),
        ];
        for (alg, spec) in candidates {
            let is_rsa = spec.key_type == KeyType::Rsa;
            match der {
                PrivateKeyDer::Sec1(_) if is_rsa => continue,
                PrivateKeyDer::Pkcs1(_) if !is_rsa => continue,
                _ => {}
            }
            if let Ok(pair) = KeyPair::from_der_and_sign_algo(der, alg) {
                let mut spec = *spec;
                if is_rsa {
                    spec.bits = rsa_bits(&pair)?;
                    if ![2048, 3072, 4096].contains(&spec.bits) {
                        return Err(CaError::UnsupportedKey(format!(
                            "RSA key of {} bits",
                            spec.bits
                        )));
                    }
                }
                // rcgen keeps the DER it was given, so only PKCS#8 needs re-encoding into
                // the block type Consul writes.
                let pem = Zeroizing::new(match der {
                    PrivateKeyDer::Sec1(d) => pem_encode("EC PRIVATE KEY", d.secret_sec1_der()),
                    PrivateKeyDer::Pkcs1(d) => pem_encode("RSA PRIVATE KEY", d.secret_pkcs1_der()),
                    _ => consul_pem(&pair, spec.key_type)?,
                });
                return Ok(PrivateKey { pair, spec, pem });
            }
        }
        Err(CaError::UnsupportedKey(
            "key is not EC P-256/P-384/P-521 or RSA, or is malformed".into(),
        ))
    }

    /// The key's type and size.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// PEM in Consul's block type (`EC PRIVATE KEY` or `RSA PRIVATE KEY`).
    pub fn to_pem(&self) -> Zeroizing<String> {
        self.pem.clone()
    }

    /// DER SubjectPublicKeyInfo of the public half.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// Consul's key identifier (SHA-256 of the SPKI).
    pub fn key_id(&self) -> Vec<u8> {
        certs::key_id(&self.public_key_der())
    }

    /// Unencrypted PKCS#8 DER, the form the SPIFFE Workload API hands keys out in
    /// (SPIFFE spec: SPIFFE Workload API, `x509_svid_key`).
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CaError> {
        use aws_lc_rs::encoding::AsDer as _;
        // rcgen keeps the DER a key was loaded from: SEC1, PKCS#1 or PKCS#8.
        let der = self.pair.serialized_der();
        let bad = |e: aws_lc_rs::error::KeyRejected| CaError::InvalidKey(e.to_string());
        let pkcs8 = match self.spec.key_type {
            KeyType::Ec => aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(
                ec_signing_alg(&self.pair)?,
                der,
            )
            .map_err(bad)?
            .to_pkcs8v1()
            .map_err(|_| CaError::InvalidKey("cannot encode EC key".into()))?
            .as_ref()
            .to_vec(),
            KeyType::Rsa => {
                let pair = aws_lc_rs::rsa::KeyPair::from_pkcs8(der)
                    .or_else(|_| aws_lc_rs::rsa::KeyPair::from_der(der))
                    .map_err(bad)?;
                let encoded: aws_lc_rs::encoding::Pkcs8V1Der<'static> = pair
                    .as_der()
                    .map_err(|_| CaError::InvalidKey("cannot encode RSA key".into()))?;
                encoded.as_ref().to_vec()
            }
        };
        Ok(Zeroizing::new(pkcs8))
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }
}

fn rsa_bits(pair: &KeyPair) -> Result<u32, CaError> {
    let spki = pair.subject_public_key_info();
    let (_, parsed) = x509_parser::x509::SubjectPublicKeyInfo::from_der_checked(&spki)?;
    Ok(certs::key_algorithm(&parsed).1)
}

trait FromDerChecked<'a>: Sized {
    fn from_der_checked(der: &'a [u8]) -> Result<(&'a [u8], Self), CaError>;
}

impl<'a> FromDerChecked<'a> for x509_parser::x509::SubjectPublicKeyInfo<'a> {
    fn from_der_checked(der: &'a [u8]) -> Result<(&'a [u8], Self), CaError> {
        use x509_parser::prelude::FromDer;
        Self::from_der(der).map_err(|e| CaError::InvalidKey(format!("bad public key: {e}")))
    }
}

/// Serialises a key pair in the block type Consul writes.
fn consul_pem(pair: &KeyPair, key_type: KeyType) -> Result<String, CaError> {
    let pkcs8 = pair.serialized_der();
    match key_type {
        KeyType::Ec => {
            let key = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(ec_signing_alg(pair)?, pkcs8)
                .map_err(|e| CaError::InvalidKey(e.to_string()))?;
            use aws_lc_rs::encoding::AsDer;
            let sec1 = key
                .private_key()
                .as_der()
                .map_err(|_| CaError::InvalidKey("cannot encode EC key".into()))?;
            Ok(pem_encode("EC PRIVATE KEY", sec1.as_ref()))
        }
        KeyType::Rsa => Ok(pem_encode("RSA PRIVATE KEY", &pkcs1_from_pkcs8(pkcs8)?)),
    }
}

fn ec_signing_alg(
    pair: &KeyPair,
) -> Result<&'static aws_lc_rs::signature::EcdsaSigningAlgorithm, CaError> {
    use aws_lc_rs::signature as s;
    let alg = pair.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Ok(&s::ECDSA_P256_SHA256_ASN1_SIGNING)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        Ok(&s::ECDSA_P384_SHA384_ASN1_SIGNING)
    } else if alg == &rcgen::PKCS_ECDSA_P521_SHA512 {
        Ok(&s::ECDSA_P521_SHA512_ASN1_SIGNING)
    } else {
        Err(CaError::UnsupportedKey("not an EC key".into()))
    }
}

/// PKCS#8 wraps the PKCS#1 `RSAPrivateKey` in its third field (an OCTET STRING).
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Result<Vec<u8>, CaError> {
    let bad = || CaError::InvalidKey("malformed PKCS#8".into());
    let (_, obj) = x509_parser::der_parser::parse_der(pkcs8).map_err(|_| bad())?;
    let BerObjectContent::Sequence(items) = obj.content else {
        return Err(bad());
    };
    match items.get(2).map(|o| &o.content) {
        Some(BerObjectContent::OctetString(inner)) => Ok(inner.to_vec()),
        _ => Err(bad()),
    }
}

use rustls_pki_types::pem::PemObject as _;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn ec_keys_round_trip_in_consul_block_types() {
        for bits in [256, 384, 521] {
            let k = PrivateKey::generate(KeySpec {
                key_type: KeyType::Ec,
                bits,
            })
            .unwrap();
            assert!(k.to_pem().starts_with("-----BEGIN EC PRIVATE KEY-----\n"));
            let back = PrivateKey::from_pem(&k.to_pem()).unwrap();
            assert_eq!(back.spec(), k.spec());
            assert_eq!(back.key_id(), k.key_id());
            assert_eq!(k.key_id().len(), 32);
        }
    }

    #[test]
    fn rsa_keys_round_trip_as_pkcs1() {
        let k = PrivateKey::generate(KeySpec {
            key_type: KeyType::Rsa,
            bits: 2048,
        })
        .unwrap();
        assert!(k.to_pem().starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
        let back = PrivateKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(
            back.spec(),
            KeySpec {
                key_type: KeyType::Rsa,
                bits: 2048
            }
        );
        assert_eq!(back.key_id(), k.key_id());
    }

    #[test]
    fn pkcs8_output_loads_back_as_the_same_key() {
        for pem in [
            PrivateKey::generate(KeySpec::EC_P256).unwrap().to_pem(),
            PrivateKey::generate(KeySpec {
                key_type: KeyType::Rsa,
                bits: 2048,
            })
            .unwrap()
            .to_pem(),
        ] {
            let k = PrivateKey::from_pem(&pem).unwrap();
            let der = k.to_pkcs8_der().unwrap();
            let back = PrivateKey::from_der(&PrivateKeyDer::Pkcs8(der.to_vec().into())).unwrap();
            assert_eq!(back.key_id(), k.key_id());
        }
    }

    #[test]
    fn pkcs8_input_is_accepted() {
        let k = PrivateKey::generate(KeySpec::EC_P256).unwrap();
        let pkcs8 = pem_encode("PRIVATE KEY", k.pair().serialized_der());
        assert_eq!(PrivateKey::from_pem(&pkcs8).unwrap().key_id(), k.key_id());
    }

    #[test]
    fn unsupported_and_invalid_sizes_are_typed() {
        let e = PrivateKey::generate(KeySpec {
            key_type: KeyType::Ec,
            bits: 224,
        })
        .unwrap_err();
        assert_eq!(crate::Error::from(e).kind(), ErrorKind::UnsupportedKey);
        let e = PrivateKey::generate(KeySpec {
            key_type: KeyType::Ec,
            bits: 255,
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "EC key length must be one of (224, 256, 384, 521) bits"
        );
        let e = PrivateKey::generate(KeySpec {
            key_type: KeyType::Rsa,
            bits: 1024,
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "RSA key length must be 2048 or 4096 bits");
        assert_eq!(
            KeyType::parse("dsa").unwrap_err().to_string(),
            "private key type must be either 'ec' or 'rsa'"
        );
    }

    #[test]
    fn malformed_key_pem_is_typed() {
        let e = PrivateKey::from_pem("nope").unwrap_err();
        assert_eq!(crate::Error::from(e).kind(), ErrorKind::InvalidKey);
        let garbage = pem_encode("EC PRIVATE KEY", b"garbage");
        let e = PrivateKey::from_pem(&garbage).unwrap_err();
        assert_eq!(crate::Error::from(e).kind(), ErrorKind::UnsupportedKey);
    }

    #[test]
    fn debug_hides_key_material() {
        let k = PrivateKey::generate(KeySpec::EC_P256).unwrap();
        let dbg = format!("{k:?}");
        assert!(!dbg.contains("PRIVATE"), "{dbg}");
        let body: String = k
            .to_pem()
            .lines()
            .nth(1)
            .unwrap()
            .chars()
            .take(20)
            .collect();
        assert!(!dbg.contains(&body));
    }
}
