//! The one crypto provider (aws-lc-rs) and the key-exchange policy.

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::crypto::aws_lc_rs::{self, kx_group};

/// Which key-exchange groups a config offers, in preference order (see the module docs for the
/// measured cost).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum KeyExchange {
    /// X25519MLKEM768, then X25519, then P-256: post-quantum protection for recorded traffic,
    /// about 2.3 KB more per full handshake. The default.
    #[default]
    HybridPostQuantum,
    /// X25519, then P-256: the smallest handshakes, no post-quantum protection.
    Classical,
}

/// The aws-lc-rs provider with the groups of `kx`.
///
/// Every libconnect config is built from this, never from rustls's process-wide default, so a
/// second provider compiled into the same program by another crate is never used by accident.
pub fn crypto_provider(kx: KeyExchange) -> Arc<CryptoProvider> {
    static HYBRID: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    static CLASSICAL: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    let cell = match kx {
        KeyExchange::HybridPostQuantum => &HYBRID,
        KeyExchange::Classical => &CLASSICAL,
    };
    cell.get_or_init(|| {
        let mut p = aws_lc_rs::default_provider();
        p.kx_groups = match kx {
            KeyExchange::HybridPostQuantum => {
                vec![
                    kx_group::X25519MLKEM768,
                    kx_group::X25519,
                    kx_group::SECP256R1,
                ]
            }
            KeyExchange::Classical => vec![kx_group::X25519, kx_group::SECP256R1],
        };
        Arc::new(p)
    })
    .clone()
}

/// The signature algorithms chain and handshake verification accept (aws-lc-rs's set).
pub(crate) fn sig_algs() -> rustls::crypto::WebPkiSupportedAlgorithms {
    crypto_provider(KeyExchange::default()).signature_verification_algorithms
}

/// The three handshake-signature methods that rustls's verifier traits (`ServerCertVerifier`,
/// `ClientCertVerifier`) require and do not default: every verifier of ours checks
/// CertificateVerify with the one provider's algorithms, so they are written once here and
/// expanded inside each `impl`.
macro_rules! provider_signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &::rustls_pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> ::std::result::Result<
            ::rustls::client::danger::HandshakeSignatureValid,
            ::rustls::Error,
        > {
            ::rustls::crypto::verify_tls12_signature(
                message,
                cert,
                dss,
                &$crate::tls::provider::sig_algs(),
            )
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &::rustls_pki_types::CertificateDer<'_>,
            dss: &::rustls::DigitallySignedStruct,
        ) -> ::std::result::Result<
            ::rustls::client::danger::HandshakeSignatureValid,
            ::rustls::Error,
        > {
            ::rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &$crate::tls::provider::sig_algs(),
            )
        }

        fn supported_verify_schemes(&self) -> Vec<::rustls::SignatureScheme> {
            $crate::tls::provider::sig_algs().supported_schemes()
        }
    };
}
pub(crate) use provider_signature_checks;
