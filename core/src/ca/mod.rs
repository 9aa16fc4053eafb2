//! The certificate authority: keys, CSRs, the provider interface and the built-in
//! provider, CA configuration, the roots model, and one datacenter's CA manager.

mod builtin;
mod config;
mod csr;
mod error;
mod jwt;
mod keys;
mod leaf;
mod manager;
mod provider;
mod roots;
mod vault;

#[cfg(test)]
pub(crate) use vault::SkipVerify;

pub use builtin::{BuiltinProvider, BuiltinSecrets, ca_common_name, compact_uid, signing_uri};
pub use config::{
    CLOCK_DRIFT_BUFFER, CROSS_SIGN_VALIDITY, CommonCaConfig, ConsulCaConfig,
    INTERMEDIATE_RENEW_INTERVAL, MAX_LEAF_CERT_TTL, MIN_LEAF_CERT_TTL,
};
pub use csr::{Csr, build_csr};
pub use error::CaError;
pub use jwt::{
    DEFAULT_JWT_TTL, JwtKeySet, MAX_AUDIENCE_LEN, MAX_AUDIENCES, MAX_JWT_LEN, MAX_JWT_TTL,
    ValidatedJwt, check_audiences,
};
pub use keys::{KeySpec, KeyType, PrivateKey};
pub use leaf::{LeafCsr, generate_leaf_request, pick_renewal_time, renewal_window};
pub use manager::{
    CaConfiguration, CaManager, IssuedCert, LeafJob, RotationOutcome, SignPolicy, SignedLeaf,
};
pub use provider::{Provider, ProviderConfig, RemoteSigner, Serials};
pub use roots::{CaRoot, IndexedCaRoots};
pub(crate) use vault::redact_config;
pub use vault::{VaultAuthMethod, VaultCaConfig, VaultProvider};

#[cfg(test)]
mod tests;
