//! The CA side of the server: first start and restart, roots, configuration changes
//! (rotation), signing with ACLs and the CSR rate limit, pruning.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Server, ServerConfig, internal};
use crate::acl::Permission;
use crate::ca::{
    CaConfiguration, CaError, CaManager, Csr, IndexedCaRoots, IssuedCert, RotationOutcome,
    SignPolicy,
};
use crate::spiffe::SpiffeId;
use crate::state::{Indexed, Store, Table};
use crate::{Error, SharedClock};

/// Serials are reserved in the store in blocks, so that signing does not cost a durable write
/// each time while a restart still never reuses a serial.
const SERIAL_BLOCK: u64 = 1024;

/// Restores the CA from the store, or creates it and persists it.
pub(super) fn open_ca(
    config: &ServerConfig,
    store: &Store,
    clock: &SharedClock,
    primary_roots: Option<&IndexedCaRoots>,
) -> Result<CaManager, Error> {
    let view = store.view();
    // A provider that keeps its keys elsewhere (Vault) has stored no secrets.
    if let Some(ca_config) = view
        .ca_config()
        .filter(|c| c.provider != "consul" || view.ca_secrets().is_some())
    {
        let roots = view.ca_roots().to_vec();
        let cluster_id = roots
            .iter()
            .find(|r| r.active)
            .or(roots.first())
            .map(|r| r.external_trust_domain.clone())
            .ok_or_else(|| internal("stored CA has a key but no roots"))?;
        return Ok(CaManager::restore(
            &config.datacenter,
            config.is_primary(),
            &cluster_id,
            ca_config.clone(),
            roots,
            view.ca_secrets().cloned(),
            view.ca_serial(),
            clock.clone(),
        )?);
    }
    if !config.is_primary() {
        // Nothing is persisted until the primary has signed our intermediate: a restart
        // before that starts over from the primary's roots.
        let roots = primary_roots.ok_or_else(|| {
            Error::new(
                crate::ErrorKind::CaNotInitialized,
                "a secondary datacenter starts from the primary datacenter's roots, and has none yet",
            )
        })?;
        return Ok(CaManager::new_secondary(
            &config.datacenter,
            roots,
            config.ca.clone(),
            clock.clone(),
        )?);
    }
    let ca = CaManager::new_primary(
        &config.datacenter,
        config.cluster_id.clone(),
        config.ca.clone(),
        clock.clone(),
    )?;
    persist_ca(store, &ca)?;
    Ok(ca)
}

/// Writes configuration, roots, key and serial in one transaction.
fn persist_ca(store: &Store, ca: &CaManager) -> Result<u64, Error> {
    let secrets = ca.secrets();
    if secrets.is_none() && ca.provider_name() == "consul" {
        return Err(CaError::NotInitialized.into());
    }
    let roots = ca.roots().roots;
    let config = ca.config().clone();
    let serial = ca.serials().last();
    Ok(store
        .write(|tx| {
            tx.set_ca_config(config);
            tx.set_ca_roots(roots);
            // Switching to Vault keeps the built-in key stored last; it is unused until a
            // switch back generates a new one.
            if let Some(secrets) = secrets {
                tx.set_ca_secrets(secrets);
            }
            tx.set_ca_serial(serial);
            Ok::<_, Error>(())
        })?
        .index)
}

impl Server {
    /// The roots response with the index of the roots table (no ACL, as in Consul).
    pub fn ca_roots(&self) -> Indexed<IndexedCaRoots> {
        let roots = self.ca().roots();
        Indexed {
            value: roots,
            index: self.store().table_index(Table::CaRoots).max(1),
        }
    }

    /// The CA configuration (`operator:read`).
    pub fn ca_config(&self, token: Option<&str>) -> Result<Indexed<CaConfiguration>, Error> {
        self.authorizer(token)?.require(Permission::OperatorRead)?;
        let ca = self.ca();
        let mut config = ca.config().clone();
        // Consul shows the settings in force, defaults included, keyed CamelCase; what the
        // operator supplied beyond them (RootCert, …) follows.
        let mut effective = ca.common_config().to_map();
        for (k, v) in std::mem::take(&mut config.config) {
            let bare = k.replace('_', "");
            let known = effective.keys().any(|e| e.eq_ignore_ascii_case(&bare));
            if !known {
                effective.insert(k, v);
            }
        }
        // Secrets the operator supplied (the built-in CA's key, Vault's token, login secrets)
        // are write-only, as Vault's token is in Consul.
        config.config = crate::ca::redact_config(&effective);
        Ok(Indexed {
            value: config,
            index: self.store().table_index(Table::CaConfig).max(1),
        })
    }

    /// Applies a new CA configuration (`operator:write`); a change of key material rotates
    /// the root with cross-signing (Consul CA docs, root rotation).
    pub fn set_ca_config(
        &self,
        token: Option<&str>,
        config: CaConfiguration,
    ) -> Result<RotationOutcome, Error> {
        self.authorizer(token)?.require(Permission::OperatorWrite)?;
        let mut ca = self.ca();
        let outcome = ca.set_config(config)?;
        if outcome != RotationOutcome::Unchanged {
            persist_ca(self.store(), &ca)?;
            self.inner.limiter.reconfigure(ca.common_config());
        }
        Ok(outcome)
    }

    /// Signs a leaf for the identity in `csr_pem`: the token needs `service:write` on the
    /// service (or `node:write` on an agent's node), and the server-wide CSR rate limit
    /// applies (Consul CA docs, CSR rate limits).
    pub fn sign(
        &self,
        token: Option<&str>,
        csr_pem: &str,
        policy: SignPolicy,
    ) -> Result<IssuedCert, Error> {
        let csr = Csr::from_pem(csr_pem)?;
        let authz = self.authorizer(token)?;
        if let Some(uri) = csr.uris().first()
            && let Ok(id) = SpiffeId::parse(uri)
        {
            match &id {
                SpiffeId::Service(s) => authz.require(Permission::ServiceWrite(&s.service))?,
                SpiffeId::Agent(a) => authz.require(Permission::NodeWrite(&a.agent))?,
                _ => {}
            }
        }
        let _permit = self.inner.limiter.acquire()?;
        let mut issued = self.sign_unlocked(csr_pem, policy)?;
        let floor = self.store().index().max(1);
        let index = self
            .inner
            .last_sign_index
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |last| {
                Some(floor.max(last + 1))
            })
            .map_or(floor, |last| floor.max(last + 1));
        issued.create_index = index;
        issued.modify_index = index;
        Ok(issued)
    }

    /// Signs a leaf for this server's own use (the agent's HTTPS listener): the request
    /// comes from inside the process, so no token is checked; the CSR rules of
    /// [`SignPolicy`] still apply.
    pub fn sign_local(&self, csr_pem: &str, policy: SignPolicy) -> Result<IssuedCert, Error> {
        let mut issued = self.sign_unlocked(csr_pem, policy)?;
        let index = self.store().index().max(1);
        issued.create_index = index;
        issued.modify_index = index;
        Ok(issued)
    }

    /// Primary: signs a secondary datacenter's intermediate CSR (`operator:write`, which a
    /// secondary's replication token holds).
    pub fn sign_intermediate(&self, token: Option<&str>, csr_pem: &str) -> Result<String, Error> {
        self.authorizer(token)?.require(Permission::OperatorWrite)?;
        let ca = self.ca();
        self.reserve_serial(&ca)?;
        Ok(ca.sign_intermediate(csr_pem)?)
    }

    /// Whether this server's CA can sign leaves: always in a primary; in a secondary once the
    /// primary has signed its intermediate.
    pub fn ca_ready(&self) -> bool {
        self.ca().can_sign()
    }

    /// Secondary: whether `primary_roots` (the primary's current answer) call for a new
    /// intermediate, or the current one is past half its life.
    pub fn needs_intermediate(&self, primary_roots: &IndexedCaRoots) -> bool {
        let ca = self.ca();
        ca.needs_intermediate(primary_roots) || ca.intermediate_renewal_due()
    }

    /// Secondary: a new CA key, kept here, and the CSR for its intermediate. The key stays
    /// pending until [`Server::install_intermediate`]; a newer CSR replaces it.
    pub fn intermediate_csr(&self) -> Result<String, Error> {
        Ok(self.ca().intermediate_csr()?)
    }

    /// Secondary: installs the intermediate the primary signed for the pending key, and
    /// persists it with the primary's roots; leaves are signed with it from then on, and the
    /// agent cache re-issues every leaf as it sees the roots change.
    pub fn install_intermediate(
        &self,
        intermediate_pem: &str,
        primary_roots: &IndexedCaRoots,
    ) -> Result<(), Error> {
        let mut ca = self.ca();
        ca.set_intermediate(intermediate_pem, primary_roots)?;
        persist_ca(self.store(), &ca)?;
        Ok(())
    }

    /// Secondary: follows the primary's roots when its active root stays (see
    /// [`CaManager::sync_primary_roots`]); returns whether anything changed.
    pub fn sync_primary_roots(&self, primary_roots: &IndexedCaRoots) -> Result<bool, Error> {
        let mut ca = self.ca();
        if !ca.sync_primary_roots(primary_roots) {
            return Ok(false);
        }
        if ca.can_sign() {
            persist_ca(self.store(), &ca)?;
        }
        Ok(true)
    }

    /// Removes roots rotated out more than 2 × LeafCertTTL ago; the server runs this hourly.
    pub fn prune_roots(&self) -> Result<usize, Error> {
        let mut ca = self.ca();
        let removed = ca.prune();
        if removed > 0 {
            persist_ca(self.store(), &ca)?;
        }
        Ok(removed)
    }

    /// Renews the primary's Vault intermediate once past half its life (a no-op for the
    /// built-in CA); the server runs this with [`Server::prune_roots`]. Returns whether it
    /// renewed.
    pub fn renew_intermediate(&self) -> Result<bool, Error> {
        let mut ca = self.ca();
        let renewed = ca.renew_intermediate_if_needed()?;
        if renewed {
            persist_ca(self.store(), &ca)?;
        }
        Ok(renewed)
    }

    /// How often [`Server::prune_roots`] should run (Consul's leader does it hourly).
    pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

    /// Signs with the CA lock held for the checks and the bundle only: Vault signs over the
    /// network in between, so while it is slow or hung the roots, the configuration and a
    /// rotation are still served.
    fn sign_unlocked(&self, csr_pem: &str, policy: SignPolicy) -> Result<IssuedCert, Error> {
        let job = {
            let mut ca = self.ca();
            self.reserve_serial(&ca)?;
            ca.begin_leaf(csr_pem, policy)?
        };
        let signed = job.sign()?;
        Ok(self.ca().finish_leaf(signed)?)
    }

    fn reserve_serial(&self, ca: &CaManager) -> Result<(), Error> {
        let mut reserved = self
            .inner
            .serial_reserved
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // One serial per signing; leave room for the next block before it is needed.
        if ca.serials().last() + 1 > *reserved {
            let next = ca.serials().last() + SERIAL_BLOCK;
            self.store().set_ca_serial(next)?;
            *reserved = next;
        }
        Ok(())
    }
}
