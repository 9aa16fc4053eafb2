//! One datacenter's CA: initialise, sign leaves (with Consul's identity checks), rotate with
//! cross-signing, prune, and the secondary-datacenter intermediate dance (Consul CA docs,
//! secondary datacenters). Persistence and rate limiting are layered on by the server.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::builtin::{BuiltinProvider, BuiltinSecrets, signing_uri};
use super::config::needs_renewal;
use super::config::{CommonCaConfig, ConsulCaConfig};
use super::provider::{Provider, ProviderConfig, RemoteSigner, Serials};
use super::roots::{CaRoot, IndexedCaRoots};
use super::vault::{VaultCaConfig, VaultProvider};
use super::{CaError, Csr};
use crate::SharedClock;
use crate::certs::{self, CertInfo};
use crate::spiffe::{
    DEFAULT_NAMESPACE, SpiffeId, check_default_namespace, check_default_partition,
    check_service_name,
};

/// The CA configuration as the API reads and writes it (Consul API docs, Connect CA).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CaConfiguration {
    /// `consul` (built-in) or `vault`.
    pub provider: String,
    /// Provider options; keys CamelCase.
    pub config: Map<String, Value>,
    /// Read-only provider state.
    pub state: Option<std::collections::BTreeMap<String, String>>,
    /// Rotate even when the old provider cannot cross-sign.
    #[serde(default, alias = "force_without_cross_signing")]
    pub force_without_cross_signing: bool,
    /// Index at creation.
    #[serde(default)]
    pub create_index: u64,
    /// Index at last change.
    #[serde(default)]
    pub modify_index: u64,
}

impl std::fmt::Debug for CaConfiguration {
    // Secrets (the built-in CA's key, Vault's token, login secrets) never reach Debug output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaConfiguration")
            .field("provider", &self.provider)
            .field("config", &super::vault::redact_config(&self.config))
            .field("state", &self.state)
            .field(
                "force_without_cross_signing",
                &self.force_without_cross_signing,
            )
            .field("create_index", &self.create_index)
            .field("modify_index", &self.modify_index)
            .finish()
    }
}

impl CaConfiguration {
    /// The built-in provider with the given options.
    pub fn consul(config: Map<String, Value>) -> Self {
        CaConfiguration {
            provider: "consul".into(),
            config,
            state: None,
            force_without_cross_signing: false,
            create_index: 0,
            modify_index: 0,
        }
    }
}

/// A signed leaf as the API returns it (Consul API docs, Agent Connect).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct IssuedCert {
    /// Colon-hex serial.
    pub serial_number: String,
    /// Leaf PEM followed by the active root's intermediates.
    #[serde(rename = "CertPEM")]
    pub cert_pem: String,
    /// The agent adds the key it generated; the server never sees it.
    #[serde(
        rename = "PrivateKeyPEM",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub private_key_pem: String,
    /// Service name, for service leaves.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub service: String,
    /// Service SPIFFE ID.
    #[serde(
        rename = "ServiceURI",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub service_uri: String,
    /// Agent node ID, for agent leaves.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub agent: String,
    /// Agent SPIFFE ID.
    #[serde(rename = "AgentURI", default, skip_serializing_if = "String::is_empty")]
    pub agent_uri: String,
    /// NotBefore.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_after: OffsetDateTime,
    /// NotAfter.
    #[serde(with = "time::serde::rfc3339")]
    pub valid_before: OffsetDateTime,
    /// Namespace of the service.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Partition of the service, when not `default`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub partition: String,
    /// Index of the signing.
    pub create_index: u64,
    /// Index of the signing.
    pub modify_index: u64,
}

/// Which identities a signing request may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignPolicy {
    /// Service IDs only (the agent's leaf endpoint).
    ServiceOnly,
    /// Service or client-agent IDs (agent IDs are rewritten into our trust domain).
    ServiceOrAgent,
    /// What a server signs for itself, in process: service, agent, or this datacenter's
    /// server ID (`spiffe://<td>/agent/server/dc/<dc>`, its own trust domain only).
    Local,
}

/// A leaf that [`CaManager::begin_leaf`] checked, holding its signature or waiting for a
/// provider that signs over the network.
#[derive(Debug)]
pub struct LeafJob {
    csr: Csr,
    issued: IssuedCert,
    root_id: String,
    step: LeafStep,
}

#[derive(Debug)]
enum LeafStep {
    Signed(String),
    Remote(Arc<dyn RemoteSigner>),
}

impl LeafJob {
    /// Signs through a provider that signs over the network (Vault), to be called without
    /// holding the manager's lock; the built-in CA has signed already.
    pub fn sign(self) -> Result<SignedLeaf, CaError> {
        let leaf_pem = match self.step {
            LeafStep::Signed(pem) => pem,
            LeafStep::Remote(signer) => signer.sign(&self.csr)?,
        };
        Ok(SignedLeaf {
            issued: self.issued,
            leaf_pem,
            root_id: self.root_id,
        })
    }
}

/// A signed leaf for [`CaManager::finish_leaf`].
#[derive(Debug)]
pub struct SignedLeaf {
    issued: IssuedCert,
    leaf_pem: String,
    root_id: String,
}

/// What a configuration change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RotationOutcome {
    /// Nothing changed.
    Unchanged,
    /// Options changed; the root stayed.
    ConfigUpdated,
    /// A new root is active; the old one was marked rotated out.
    Rotated {
        /// ID of the new active root.
        new_root_id: String,
        /// Whether the old root cross-signed the new one.
        cross_signed: bool,
    },
}

/// One datacenter's certificate authority.
#[derive(Debug)]
pub struct CaManager {
    clock: SharedClock,
    datacenter: String,
    primary: bool,
    cluster_id: String,
    config: CaConfiguration,
    common: CommonCaConfig,
    provider: Box<dyn Provider>,
    serials: Serials,
    roots: Vec<CaRoot>,
    index: u64,
    pending_intermediate: Option<String>,
}

/// The common options of `config`, read and validated as its provider reads them.
fn parse_common(config: &CaConfiguration) -> Result<CommonCaConfig, CaError> {
    match config.provider.as_str() {
        "vault" => Ok(VaultCaConfig::from_map(&config.config)?.common),
        _ => Ok(ConsulCaConfig::from_map(&config.config)?.common),
    }
}

fn new_provider(
    clock: &SharedClock,
    serials: &Serials,
    cluster_id: &str,
    datacenter: &str,
    primary: bool,
    config: &CaConfiguration,
) -> Result<Box<dyn Provider>, CaError> {
    let mut p: Box<dyn Provider> = match config.provider.as_str() {
        "consul" => Box::new(BuiltinProvider::new(clock.clone(), serials.clone())),
        "vault" => Box::new(VaultProvider::new()),
        other => {
            return Err(CaError::InvalidConfig(format!(
                "unknown CA provider {other:?}: libconnect supports \"consul\" (built-in) and \"vault\""
            )));
        }
    };
    p.configure(provider_config(cluster_id, datacenter, primary, config))?;
    Ok(p)
}

/// What a provider is configured with: the cluster's identity, its role and the operator's
/// settings with the state it saved last time.
fn provider_config(
    cluster_id: &str,
    datacenter: &str,
    primary: bool,
    config: &CaConfiguration,
) -> ProviderConfig {
    ProviderConfig {
        cluster_id: cluster_id.to_owned(),
        datacenter: datacenter.to_owned(),
        is_primary: primary,
        raw: config.config.clone(),
        state: config.state.clone().unwrap_or_default(),
    }
}

/// The roots entry for a provider's new root: with the provider's leaf-signing intermediate
/// after it when it has one (Vault), whose key then signs leaves.
fn root_entry(
    provider: &dyn Provider,
    root_pem: &str,
    cluster_id: &str,
) -> Result<CaRoot, CaError> {
    let mut root = CaRoot::from_pem(root_pem, cluster_id, provider.name())?;
    if provider.primary_uses_intermediate() {
        let inter = provider.active_leaf_signing_cert()?;
        add_intermediate(&mut root, &inter)?;
    }
    Ok(root)
}

/// Appends `inter_pem` to `root`'s intermediates and makes its key the signing key.
fn add_intermediate(root: &mut CaRoot, inter_pem: &str) -> Result<(), CaError> {
    let der = certs::parse_pem_certificate(inter_pem)?;
    let info = CertInfo::from_der(&der)?;
    let mut list = root.intermediate_certs.take().unwrap_or_default();
    list.push(certs::der_to_pem(&der));
    root.intermediate_certs = Some(list);
    root.signing_key_id = certs::colon_hex(&info.key_id());
    Ok(())
}

impl CaManager {
    /// Initialises the primary datacenter's CA: a new cluster ID unless one is given, then
    /// the root.
    pub fn new_primary(
        datacenter: &str,
        cluster_id: Option<String>,
        config: CaConfiguration,
        clock: SharedClock,
    ) -> Result<CaManager, CaError> {
        let cluster_id = cluster_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let serials = Serials::default();
        let mut provider = new_provider(&clock, &serials, &cluster_id, datacenter, true, &config)?;
        let common = parse_common(&config)?;
        let root_pem = provider.generate_ca_chain()?;
        let mut root = root_entry(&*provider, &root_pem, &cluster_id)?;
        root.create_index = 1;
        root.modify_index = 1;
        let mut config = config;
        config.create_index = 1;
        config.modify_index = 1;
        Ok(CaManager {
            clock,
            datacenter: datacenter.to_owned(),
            primary: true,
            cluster_id,
            config,
            common,
            provider,
            serials,
            roots: vec![root],
            index: 1,
            pending_intermediate: None,
        })
    }

    /// Starts a secondary datacenter's CA from the primary's roots: it has its own key and
    /// must get its intermediate signed by the primary ([`CaManager::intermediate_csr`],
    /// then [`CaManager::set_intermediate`]).
    pub fn new_secondary(
        datacenter: &str,
        primary_roots: &IndexedCaRoots,
        config: CaConfiguration,
        clock: SharedClock,
    ) -> Result<CaManager, CaError> {
        if primary_roots.trust_domain.is_empty() {
            return Err(CaError::InvalidConfig(
                "trust domain from primary datacenter is not initialized".into(),
            ));
        }
        let cluster_id = primary_roots
            .trust_domain
            .split('.')
            .next()
            .unwrap_or_default()
            .to_owned();
        let serials = Serials::default();
        let provider = new_provider(&clock, &serials, &cluster_id, datacenter, false, &config)?;
        let common = parse_common(&config)?;
        Ok(CaManager {
            clock,
            datacenter: datacenter.to_owned(),
            primary: false,
            cluster_id,
            config,
            common,
            provider,
            serials,
            roots: primary_roots.roots.clone(),
            index: 1,
            pending_intermediate: None,
        })
    }

    /// Secondary: a new key and its intermediate CSR, to send to the primary.
    pub fn intermediate_csr(&mut self) -> Result<String, CaError> {
        let (csr, opaque) = self.provider.generate_intermediate_csr()?;
        self.pending_intermediate = Some(opaque);
        Ok(csr)
    }

    /// Secondary: whether a key made by [`CaManager::intermediate_csr`] still waits for the
    /// primary's signature.
    pub fn intermediate_pending(&self) -> bool {
        self.pending_intermediate.is_some()
    }

    /// Secondary: installs the intermediate the primary signed. The local view of the
    /// primary's active root gets the intermediate appended and its SigningKeyID replaced.
    pub fn set_intermediate(
        &mut self,
        intermediate_pem: &str,
        primary_roots: &IndexedCaRoots,
    ) -> Result<(), CaError> {
        let active = primary_roots.active().ok_or(CaError::NotInitialized)?;
        let opaque = self.pending_intermediate.clone().unwrap_or_default();
        self.provider
            .set_intermediate(intermediate_pem, &active.root_cert, &opaque)?;
        self.pending_intermediate = None;
        let info = CertInfo::from_der(&certs::parse_pem_certificate(intermediate_pem)?)?;
        let now = self.clock.now();
        self.index += 1;
        let mut roots = primary_roots.roots.clone();
        for root in &mut roots {
            if root.active && root.id == active.id {
                let mut inter = root.intermediate_certs.take().unwrap_or_default();
                inter.push(certs::der_to_pem(&certs::parse_pem_certificate(
                    intermediate_pem,
                )?));
                root.intermediate_certs = Some(inter);
                root.signing_key_id = certs::colon_hex(&info.key_id());
                root.modify_index = self.index;
            } else if root.active {
                root.active = false;
                root.rotated_out_at = Some(now);
            }
        }
        self.roots = roots;
        Ok(())
    }

    /// Secondary: whether a new intermediate is needed for `primary_roots` (Consul CA docs,
    /// secondary datacenters): none yet, the primary's active root is not the one ours chains
    /// to, or our signing key is not the active root's signing key here.
    pub fn needs_intermediate(&self, primary_roots: &IndexedCaRoots) -> bool {
        if self.primary {
            return false;
        }
        let Ok(signing) = self.provider.active_leaf_signing_cert() else {
            return true;
        };
        let Some(local) = self.roots.iter().find(|r| r.active) else {
            return true;
        };
        if primary_roots.active_root_id != local.id {
            return true;
        }
        let ours = certs::parse_pem_certificate(&signing)
            .ok()
            .and_then(|der| CertInfo::from_der(&der).ok())
            .map(|info| certs::colon_hex(&info.key_id()));
        ours.as_deref() != Some(local.signing_key_id.as_str())
    }

    /// Whether this CA can sign leaves: always in a primary; in a secondary once its provider
    /// holds an intermediate the primary signed.
    pub fn can_sign(&self) -> bool {
        self.primary || self.provider.active_leaf_signing_cert().is_ok()
    }

    /// Secondary: whether the intermediate is past half of its validity (Consul renews then;
    /// the window starts at NotBefore + 1 min, the signer's backdating).
    pub fn intermediate_renewal_due(&self) -> bool {
        if self.primary {
            return false;
        }
        // None, or one that does not parse: a new one is due as much as an old one.
        match self.provider.active_leaf_signing_cert() {
            Ok(pem) if certs::parse_pem_certificate(&pem).is_ok() => {
                needs_renewal(&pem, self.clock.now())
            }
            _ => true,
        }
    }

    /// Secondary: follows a change of the primary's roots that keeps its active root (one
    /// pruned, one added): the primary's list, with our view of the active root (our
    /// intermediate appended, our SigningKeyID) kept. Returns whether anything changed.
    pub fn sync_primary_roots(&mut self, primary_roots: &IndexedCaRoots) -> bool {
        if self.primary {
            return false;
        }
        let Some(local_active) = self.roots.iter().find(|r| r.active).cloned() else {
            return false;
        };
        if primary_roots.active_root_id != local_active.id {
            return false;
        }
        let mut roots = primary_roots.roots.clone();
        for root in &mut roots {
            if root.id == local_active.id {
                root.intermediate_certs = local_active.intermediate_certs.clone();
                root.signing_key_id = local_active.signing_key_id.clone();
                root.modify_index = local_active.modify_index;
            }
        }
        let same = roots.len() == self.roots.len()
            && roots.iter().zip(&self.roots).all(|(a, b)| {
                a.id == b.id
                    && a.active == b.active
                    && a.intermediate_certs == b.intermediate_certs
                    && a.signing_key_id == b.signing_key_id
            });
        if same {
            return false;
        }
        self.index += 1;
        self.roots = roots;
        true
    }

    /// Primary: signs a secondary datacenter's intermediate CSR.
    pub fn sign_intermediate(&self, csr_pem: &str) -> Result<String, CaError> {
        if !self.primary {
            return Err(CaError::NotPrimary);
        }
        self.provider.sign_intermediate(&Csr::from_pem(csr_pem)?)
    }

    /// `<cluster-id>.consul`.
    pub fn trust_domain(&self) -> String {
        format!("{}.consul", self.cluster_id)
    }

    /// The cluster ID.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// This datacenter.
    pub fn datacenter(&self) -> &str {
        &self.datacenter
    }

    /// The configuration in force (`State` omitted).
    pub fn config(&self) -> &CaConfiguration {
        &self.config
    }

    /// The parsed common options in force.
    pub fn common_config(&self) -> &CommonCaConfig {
        &self.common
    }

    /// The serial counter (shared with every signing).
    pub fn serials(&self) -> &Serials {
        &self.serials
    }

    /// The roots response.
    pub fn roots(&self) -> IndexedCaRoots {
        let active = self.roots.iter().find(|r| r.active);
        IndexedCaRoots {
            active_root_id: active.map(|r| r.id.clone()).unwrap_or_default(),
            trust_domain: self.trust_domain(),
            roots: self.roots.clone(),
        }
    }

    /// Signs a leaf from a CSR after Consul's checks (ARCHITECTURE.md, ca): exactly one URI SAN
    /// that is a service ID of this datacenter and trust domain (or, when allowed, an agent ID,
    /// whose host is rewritten). Returns the leaf followed by the intermediates of the root that
    /// signed it. [`CaManager::begin_leaf`], [`LeafJob::sign`] and [`CaManager::finish_leaf`]
    /// are the same in three steps, for callers that hold the manager behind a lock.
    pub fn sign_leaf(&mut self, csr_pem: &str, policy: SignPolicy) -> Result<IssuedCert, CaError> {
        let job = self.begin_leaf(csr_pem, policy)?;
        let signed = job.sign()?;
        self.finish_leaf(signed)
    }

    /// The first step of [`CaManager::sign_leaf`]: Consul's checks, then the signature itself
    /// when the provider signs in process (the built-in CA). A provider that signs over the
    /// network (Vault) signs in [`LeafJob::sign`], which the caller runs without holding the
    /// manager's lock: a slow or hung Vault then delays only the leaves waiting for it, never
    /// the roots, the configuration or a rotation.
    pub fn begin_leaf(&mut self, csr_pem: &str, policy: SignPolicy) -> Result<LeafJob, CaError> {
        let mut csr = Csr::from_pem(csr_pem)?;
        let id = self.check_leaf_identity(&csr, policy)?;
        let mut issued = IssuedCert {
            serial_number: String::new(),
            cert_pem: String::new(),
            private_key_pem: String::new(),
            service: String::new(),
            service_uri: String::new(),
            agent: String::new(),
            agent_uri: String::new(),
            valid_after: OffsetDateTime::UNIX_EPOCH,
            valid_before: OffsetDateTime::UNIX_EPOCH,
            namespace: String::new(),
            partition: String::new(),
            create_index: 0,
            modify_index: 0,
        };
        match &id {
            SpiffeId::Service(s) => {
                // The certificate carries the identity exactly as checked and as answered in
                // `ServiceURI`, whatever spelling the CSR used for it (escapes, `/ap/default`,
                // the namespace's case).
                let canonical = id.to_string();
                csr.set_uri(canonical.clone());
                issued.service = s.service.clone();
                issued.service_uri = canonical;
                issued.namespace = DEFAULT_NAMESPACE.to_owned();
            }
            SpiffeId::Agent(a) => {
                let mut a = a.clone();
                a.host = self.trust_domain();
                let rewritten = SpiffeId::Agent(a.clone());
                csr.set_uri(rewritten.to_string());
                issued.agent = a.agent.clone();
                issued.agent_uri = rewritten.to_string();
            }
            _ => {}
        }
        let root_id = self
            .roots
            .iter()
            .find(|r| r.active)
            .map(|r| r.id.clone())
            .unwrap_or_default();
        // A secondary signs only with an intermediate the primary signed: never a leaf that
        // would not chain to the primary's root.
        if !self.can_sign() {
            return Err(CaError::NotInitialized);
        }
        let step = match self.provider.remote_signer() {
            Some(signer) => LeafStep::Remote(signer),
            None => LeafStep::Signed(self.provider.sign(&csr)?),
        };
        Ok(LeafJob {
            csr,
            issued,
            root_id,
            step,
        })
    }

    /// The last step of [`CaManager::sign_leaf`]: the bundle — the leaf, then the
    /// intermediates of the root that was active when the leaf was begun, as they are now (so
    /// an intermediate renewed while Vault signed is in it) — and the index.
    pub fn finish_leaf(&mut self, signed: SignedLeaf) -> Result<IssuedCert, CaError> {
        let SignedLeaf {
            mut issued,
            leaf_pem,
            root_id,
        } = signed;
        let info = CertInfo::from_der(&certs::parse_pem_certificate(&leaf_pem)?)?;
        let mut bundle = leaf_pem;
        let root = self
            .roots
            .iter()
            .find(|r| r.id == root_id)
            .or_else(|| self.roots.iter().find(|r| r.active));
        if let Some(root) = root {
            for pem in root.intermediates() {
                bundle.push_str(pem);
                if !pem.ends_with('\n') {
                    bundle.push('\n');
                }
            }
        }
        self.index += 1;
        issued.serial_number = info.serial_hex();
        issued.cert_pem = bundle;
        issued.valid_after = info.not_before;
        issued.valid_before = info.not_after;
        issued.create_index = self.index;
        issued.modify_index = self.index;
        Ok(issued)
    }

    fn check_leaf_identity(&self, csr: &Csr, policy: SignPolicy) -> Result<SpiffeId, CaError> {
        let uri = match csr.uris() {
            [] => return Err(CaError::CsrNoUri),
            [uri] => uri,
            many => return Err(CaError::CsrTooManyUris(many.len())),
        };
        let id = SpiffeId::parse(uri).map_err(|e| CaError::CsrBadSpiffeId(e.to_string()))?;
        let allowed = match policy {
            SignPolicy::ServiceOnly => "service",
            SignPolicy::ServiceOrAgent => "service or agent",
            SignPolicy::Local => "service, agent or this datacenter's server",
        };
        match &id {
            SpiffeId::Service(s) => {
                check_service_name("service", &s.service)?;
                check_default_namespace("namespace", &s.namespace)?;
                check_default_partition("partition", &s.partition)?;
                if s.datacenter != self.datacenter {
                    return Err(CaError::CsrWrongDatacenter {
                        got: s.datacenter.clone(),
                        want: self.datacenter.clone(),
                    });
                }
                let signing = SpiffeId::parse(&signing_uri(&self.cluster_id))
                    .ok()
                    .and_then(|s| s.as_signing().cloned())
                    .ok_or(CaError::NotInitialized)?;
                if !signing.can_sign(&id) {
                    return Err(CaError::CsrWrongTrustDomain {
                        got: s.host.clone(),
                        want: self.trust_domain(),
                    });
                }
            }
            SpiffeId::Agent(_) if policy != SignPolicy::ServiceOnly => {}
            SpiffeId::Server(s) if policy == SignPolicy::Local => {
                if s.datacenter != self.datacenter {
                    return Err(CaError::CsrWrongDatacenter {
                        got: s.datacenter.clone(),
                        want: self.datacenter.clone(),
                    });
                }
                if !s.host.eq_ignore_ascii_case(&self.trust_domain()) {
                    return Err(CaError::CsrWrongTrustDomain {
                        got: s.host.clone(),
                        want: self.trust_domain(),
                    });
                }
            }
            _ => {
                return Err(CaError::CsrWrongKind {
                    allowed,
                    got: uri.clone(),
                });
            }
        }
        Ok(id)
    }

    /// Applies a new configuration (Consul CA docs, root rotation). A change of key material makes
    /// a new root, cross-signed by the old one unless forced without; other changes keep the root.
    pub fn set_config(&mut self, new: CaConfiguration) -> Result<RotationOutcome, CaError> {
        if let Some(state) = &new.state
            && !state.is_empty()
            && Some(state) != self.config.state.as_ref()
        {
            return Err(CaError::InvalidConfig(
                "CA Provider State is read-only".into(),
            ));
        }
        if new.provider == self.config.provider && new.config == self.config.config {
            return Ok(RotationOutcome::Unchanged);
        }
        let common = parse_common(&new)?;
        let same_key_material = new.provider == "consul" && self.config.provider == "consul" && {
            let parsed = ConsulCaConfig::from_map(&new.config)?;
            let old = ConsulCaConfig::from_map(&self.config.config)?;
            parsed.private_key == old.private_key
                && parsed.root_cert == old.root_cert
                && parsed.common.key_spec() == old.common.key_spec()
        };
        if !self.primary && !same_key_material {
            // The secondary would have no key that its intermediate certifies until the
            // primary signs a new one: refused rather than signing nothing meanwhile.
            return Err(CaError::InvalidConfig(
                "a secondary datacenter's CA key changes only with a new intermediate from the \
                 primary: change the key type or key in the primary datacenter (its rotation \
                 re-keys every secondary)"
                    .into(),
            ));
        }
        let now = self.clock.now();
        let mut provider: Box<dyn Provider> = if same_key_material {
            // Consul identifies built-in provider state by its key material, so a change of
            // TTLs alone keeps the root.
            let secrets = self
                .provider
                .persisted_secrets()
                .ok_or(CaError::NotInitialized)?;
            let mut p =
                BuiltinProvider::with_secrets(self.clock.clone(), self.serials.clone(), secrets);
            p.configure(ProviderConfig {
                cluster_id: self.cluster_id.clone(),
                datacenter: self.datacenter.clone(),
                is_primary: self.primary,
                raw: new.config.clone(),
                state: Default::default(),
            })?;
            Box::new(p)
        } else {
            new_provider(
                &self.clock,
                &self.serials,
                &self.cluster_id,
                &self.datacenter,
                self.primary,
                &new,
            )?
        };
        if !self.primary {
            // Roots belong to the primary; a secondary only reconfigures (a new key needs a
            // new intermediate from the primary, requested by the caller).
            self.provider = provider;
            self.store_config(new, common);
            return Ok(RotationOutcome::ConfigUpdated);
        }
        let new_root_pem = provider.generate_ca_chain()?;
        let mut new_root = root_entry(&*provider, &new_root_pem, &self.cluster_id)?;
        if let Some(active) = self
            .roots
            .iter_mut()
            .find(|r| r.active && r.id == new_root.id)
        {
            // Same root (Vault options changed): a new leaf-signing intermediate, if any, joins
            // the active root's chain.
            if active.signing_key_id != new_root.signing_key_id
                && let Some(inter) = new_root.intermediates().last()
            {
                add_intermediate(active, inter)?;
                self.index += 1;
                active.modify_index = self.index;
            }
            self.provider = provider;
            self.store_config(new, common);
            return Ok(RotationOutcome::ConfigUpdated);
        }
        let mut cross_signed = false;
        if !new.force_without_cross_signing {
            if !self.provider.supports_cross_signing() {
                return Err(CaError::CrossSigningUnsupported);
            }
            // The old root vouches for the new one: leaf → [new intermediate] → cross-signed
            // new root → old root, for peers that still trust only the old root.
            let cross = self.provider.cross_sign_ca(&new_root_pem)?;
            let mut chain = vec![cross];
            chain.extend(new_root.intermediate_certs.take().unwrap_or_default());
            new_root.intermediate_certs = Some(chain);
            cross_signed = true;
        }
        self.index += 1;
        for root in &mut self.roots {
            if root.active {
                root.active = false;
                root.rotated_out_at = Some(now);
                root.modify_index = self.index;
            }
        }
        new_root.create_index = self.index;
        new_root.modify_index = self.index;
        let new_root_id = new_root.id.clone();
        self.roots.push(new_root);
        self.provider = provider;
        self.store_config(new, common);
        Ok(RotationOutcome::Rotated {
            new_root_id,
            cross_signed,
        })
    }

    #[cfg(test)]
    pub(crate) fn provider_secrets_for_test(&self) -> super::BuiltinSecrets {
        self.provider
            .persisted_secrets()
            .unwrap_or_else(|| unreachable!())
    }

    /// The CA key and its certificate, for the state store to persist (mode 0600); `None`
    /// when the provider keeps its keys elsewhere (Vault).
    pub fn secrets(&self) -> Option<BuiltinSecrets> {
        self.provider.persisted_secrets()
    }

    /// The provider's name (`consul`, `vault`).
    pub fn provider_name(&self) -> &'static str {
        self.provider.name()
    }

    /// Primary with an intermediate (Vault): once more than half of the active intermediate's
    /// validity has passed, a new one is made from the same root and appended to the active
    /// root, whose signing key it becomes (Consul CA docs, intermediate renewal). Returns
    /// whether it renewed.
    pub fn renew_intermediate_if_needed(&mut self) -> Result<bool, CaError> {
        if !self.primary || !self.provider.primary_uses_intermediate() {
            return Ok(false);
        }
        let current = self.provider.active_leaf_signing_cert()?;
        if !needs_renewal(&current, self.clock.now()) {
            return Ok(false);
        }
        let inter = self.provider.renew_intermediate()?;
        let active = self
            .roots
            .iter_mut()
            .find(|r| r.active)
            .ok_or(CaError::NotInitialized)?;
        add_intermediate(active, &inter)?;
        self.index += 1;
        active.modify_index = self.index;
        Ok(true)
    }

    /// Resumes a CA from persisted state: configuration, roots, the provider's key and the
    /// last serial handed out (serials never repeat across restarts).
    #[allow(clippy::too_many_arguments, reason = "one value per persisted table")]
    pub fn restore(
        datacenter: &str,
        primary: bool,
        cluster_id: &str,
        config: CaConfiguration,
        roots: Vec<CaRoot>,
        secrets: Option<BuiltinSecrets>,
        last_serial: u64,
        clock: SharedClock,
    ) -> Result<CaManager, CaError> {
        let serials = Serials::starting_after(last_serial);
        let provider: Box<dyn Provider> = if config.provider == "consul" {
            let secrets = secrets.ok_or(CaError::NotInitialized)?;
            let mut p = BuiltinProvider::with_secrets(clock.clone(), serials.clone(), secrets);
            p.configure(provider_config(cluster_id, datacenter, primary, &config))?;
            Box::new(p)
        } else {
            // Keys live in the provider (Vault): configuring it finds the same root and
            // intermediate there again.
            let mut p = new_provider(&clock, &serials, cluster_id, datacenter, primary, &config)?;
            if primary {
                p.generate_ca_chain()?;
            } else if let Some(ours) = roots
                .iter()
                .find(|r| r.active)
                .and_then(|r| r.intermediate_certs.as_ref()?.last())
            {
                // Not resumed (the mount changed under us): the federation loop asks the
                // primary for a new intermediate, and nothing is signed until then.
                if let Err(e) = p.resume_intermediate(ours) {
                    tracing::warn!(error = %e, "the secondary's intermediate could not be resumed from the provider; asking the primary for a new one");
                }
            }
            p
        };
        let common = parse_common(&config)?;
        let index = roots
            .iter()
            .map(|r| r.modify_index)
            .max()
            .unwrap_or(1)
            .max(config.modify_index);
        Ok(CaManager {
            clock,
            datacenter: datacenter.to_owned(),
            primary,
            cluster_id: cluster_id.to_owned(),
            config,
            common,
            provider,
            serials,
            roots,
            index,
            pending_intermediate: None,
        })
    }

    /// Whether this is the primary datacenter's CA.
    pub fn is_primary(&self) -> bool {
        self.primary
    }

    fn store_config(&mut self, mut new: CaConfiguration, common: CommonCaConfig) {
        self.index += 1;
        new.state = None;
        new.create_index = self.config.create_index;
        new.modify_index = self.index;
        new.force_without_cross_signing = false;
        self.config = new;
        self.common = common;
    }

    /// Removes inactive roots rotated out more than 2 × LeafCertTTL ago (Consul CA docs, root
    /// rotation); returns how many were removed.
    pub fn prune(&mut self) -> usize {
        let now = self.clock.now();
        let keep_for = 2 * self.common.leaf_cert_ttl;
        let before = self.roots.len();
        self.roots
            .retain(|r| r.active || r.rotated_out_at.is_none_or(|t| now - t <= keep_for));
        let removed = before - self.roots.len();
        if removed > 0 {
            self.index += 1;
        }
        removed
    }
}
