//! The CA provider interface (ARCHITECTURE.md, ca).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Map, Value};

use super::{BuiltinSecrets, CaError, Csr};

/// What a provider is configured with.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderConfig {
    /// The cluster ID (the trust domain is `<cluster_id>.consul`).
    pub cluster_id: String,
    /// This datacenter.
    pub datacenter: String,
    /// Whether this datacenter owns the root.
    pub is_primary: bool,
    /// The provider's raw `Config` map.
    pub raw: Map<String, Value>,
    /// Provider state visible through the API (no secrets).
    pub state: BTreeMap<String, String>,
}

/// The certificate-authority back end: Consul's built-in CA (`builtin.rs`) or Vault
/// (`vault.rs`); a third provider is a file of its own implementing this trait.
///
/// Signing takes `&self` so one provider signs from many threads at once; everything that
/// changes the provider's keys takes `&mut self` and happens under the manager's lock.
pub trait Provider: Send + Sync + Debug {
    /// The provider's name (`consul`, `vault`).
    fn name(&self) -> &'static str;
    /// Applies configuration; may load or create keys.
    fn configure(&mut self, config: ProviderConfig) -> Result<(), CaError>;
    /// State shown by the API; never holds secrets.
    fn state(&self) -> BTreeMap<String, String>;
    /// Primary: creates (or loads the configured) root; returns its PEM.
    fn generate_ca_chain(&mut self) -> Result<String, CaError>;
    /// The certificate that signs leaves: the root in a primary, the intermediate in a
    /// secondary.
    fn active_leaf_signing_cert(&self) -> Result<String, CaError>;
    /// Signs a leaf from a validated CSR; returns the leaf PEM only.
    fn sign(&self, csr: &Csr) -> Result<String, CaError>;
    /// Primary: signs a secondary datacenter's intermediate CSR (pathlen 0).
    fn sign_intermediate(&self, csr: &Csr) -> Result<String, CaError>;
    /// Cross-signs another root with this provider's root (keeps subject, SANs and SKID).
    fn cross_sign_ca(&self, cert_pem: &str) -> Result<String, CaError>;
    /// Whether [`Provider::cross_sign_ca`] works.
    fn supports_cross_signing(&self) -> bool;
    /// Secondary: creates a new key and its intermediate CSR; returns `(csr_pem, opaque)`.
    fn generate_intermediate_csr(&mut self) -> Result<(String, String), CaError>;
    /// Secondary: installs the intermediate the primary signed for the pending key.
    fn set_intermediate(
        &mut self,
        intermediate_pem: &str,
        root_pem: &str,
        opaque: &str,
    ) -> Result<(), CaError>;
    /// Secondary, after a restart: resumes with `intermediate_pem`, the intermediate this
    /// datacenter installed last (kept with its roots), when the provider still holds its key
    /// outside our store (Vault). An error leaves the secondary without an intermediate until
    /// the primary signs a new one.
    fn resume_intermediate(&mut self, _intermediate_pem: &str) -> Result<(), CaError> {
        Err(CaError::NotInitialized)
    }
    /// Whether leaves are signed by an intermediate even in the primary (Vault), which then
    /// appears after the root in the roots' `IntermediateCerts` and is renewed at half life.
    fn primary_uses_intermediate(&self) -> bool {
        false
    }
    /// Primary with an intermediate: a new intermediate from the same root; returns its PEM.
    fn renew_intermediate(&mut self) -> Result<String, CaError> {
        Err(CaError::NotSecondary)
    }
    /// A signer the manager calls without holding its lock, for a provider whose signing waits
    /// on the network (Vault); `None` for one that signs in process.
    fn remote_signer(&self) -> Option<Arc<dyn RemoteSigner>> {
        None
    }
    /// Key material the store must keep to resume this provider (the built-in CA's key);
    /// `None` for providers whose keys live elsewhere.
    fn persisted_secrets(&self) -> Option<BuiltinSecrets> {
        None
    }
}

/// Signs leaves over the network ([`Provider::remote_signer`]); shares nothing with the
/// provider that a reconfiguration changes, so a signing in flight is unaffected by one.
pub trait RemoteSigner: Send + Sync + Debug {
    /// Signs a leaf from a validated CSR; returns the leaf PEM only.
    fn sign(&self, csr: &Csr) -> Result<String, CaError>;
}

/// The one serial-number counter shared by root generation, leaf, intermediate and
/// cross-signing (Consul keeps it in raft; a later store persists it).
#[derive(Debug, Clone, Default)]
pub struct Serials(Arc<AtomicU64>);

impl Serials {
    /// A counter whose next value is `last + 1`.
    pub fn starting_after(last: u64) -> Self {
        Serials(Arc::new(AtomicU64::new(last)))
    }

    /// The next serial (first is 1).
    pub fn next(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The last serial handed out.
    pub fn last(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
