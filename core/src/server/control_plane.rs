//! [`Server`] and [`ServerConfig`]: opening the store and resuming the CA, the ACL system and
//! the intention index; the other files in this module add the rules to `impl Server`.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use super::limiter::CsrLimiter;
use super::{acl, ca};
use crate::acl::{AclAuthorizer, AclStore};
use crate::ca::{CaConfiguration, CaManager};
use crate::intentions::{DefaultPolicy, IntentionAction, IntentionIndex, SharedIntentionIndex};
use crate::state::{Store, Table};
use crate::{Error, ErrorKind, SharedClock};

/// How a server is set up (Consul's agent configuration, the parts libconnect uses).
#[derive(Clone)]
pub struct ServerConfig {
    /// This datacenter (`dc1`).
    pub datacenter: String,
    /// The datacenter that owns the root (defaults to this one).
    pub primary_datacenter: Option<String>,
    /// This node's name.
    pub node_name: String,
    /// This node's address, as registered services see it.
    pub node_address: String,
    /// Where state is kept; `None` keeps it in memory (`-dev`).
    pub data_dir: Option<PathBuf>,
    /// A store opened by the caller, used instead of `data_dir`: the etcd store that several
    /// servers of the datacenter share (`connect agent` opens it once it leads).
    pub store: Option<Store>,
    /// Whether ACLs are enforced.
    pub acl_enabled: bool,
    /// The ACL default policy.
    pub acl_default_policy: crate::acl::AclDefaultPolicy,
    /// `acl.tokens.initial_management`.
    pub acl_initial_management_token: Option<String>,
    /// An explicit default for connections no intention matches (`allow` in `-dev`).
    pub default_intention_policy: Option<IntentionAction>,
    /// The CA configuration used on first start.
    pub ca: CaConfiguration,
    /// A fixed cluster ID (tests); a random UUID otherwise.
    pub cluster_id: Option<String>,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("datacenter", &self.datacenter)
            .field("primary_datacenter", &self.primary_datacenter)
            .field("node_name", &self.node_name)
            .field("data_dir", &self.data_dir)
            .field("acl_enabled", &self.acl_enabled)
            .field("acl_default_policy", &self.acl_default_policy)
            .field(
                "acl_initial_management_token",
                &self
                    .acl_initial_management_token
                    .as_ref()
                    .map(|_| "<redacted>"),
            )
            .field("default_intention_policy", &self.default_intention_policy)
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// What `connect agent -dev` runs: in memory, `dc1`, no ACLs, intentions default allow.
    pub fn dev() -> ServerConfig {
        ServerConfig {
            datacenter: "dc1".into(),
            primary_datacenter: None,
            node_name: hostname(),
            node_address: "127.0.0.1".into(),
            data_dir: None,
            store: None,
            acl_enabled: false,
            acl_default_policy: crate::acl::AclDefaultPolicy::Allow,
            acl_initial_management_token: None,
            default_intention_policy: Some(IntentionAction::Allow),
            ca: CaConfiguration::consul(Default::default()),
            cluster_id: None,
        }
    }

    /// Whether this datacenter owns the root (`primary_datacenter` unset or this one).
    pub fn is_primary(&self) -> bool {
        self.primary_datacenter
            .as_deref()
            .is_none_or(|p| p == self.datacenter)
    }

    /// The default decision for connections no intention matches (Consul docs: Intentions, default
    /// behavior).
    pub fn intention_default(&self) -> DefaultPolicy {
        match (self.default_intention_policy, self.acl_enabled) {
            (Some(action), _) => DefaultPolicy::intention_policy(action),
            (None, true) => DefaultPolicy::acl(match self.acl_default_policy {
                crate::acl::AclDefaultPolicy::Allow => IntentionAction::Allow,
                crate::acl::AclDefaultPolicy::Deny => IntentionAction::Deny,
            }),
            (None, false) => DefaultPolicy::ACLS_DISABLED,
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "node-1".into())
}

pub(super) struct Inner {
    pub(super) config: ServerConfig,
    pub(super) clock: SharedClock,
    pub(super) store: Store,
    pub(super) ca: Mutex<CaManager>,
    /// Serials below this are already reserved in the store (see `ca.rs`).
    pub(super) serial_reserved: Mutex<u64>,
    /// The index of the last signing: each new leaf gets a higher one, so that blocked
    /// readers see it as new even when no table changed in between.
    pub(super) last_sign_index: std::sync::atomic::AtomicU64,
    pub(super) acl: AclStore,
    pub(super) intentions: Arc<SharedIntentionIndex>,
    pub(super) limiter: CsrLimiter,
    /// Other datacenters this server has heard from (see [`Server::datacenters`]).
    pub(super) datacenters: Mutex<std::collections::BTreeSet<String>>,
    /// A secondary's replication progress (see [`Server::replication_status`]).
    pub(super) replication: Mutex<super::federation::ReplicationState>,
    /// Where other datacenters' servers answer, as they advertised it (see
    /// [`Server::advertise_for`]).
    pub(super) server_addresses: Mutex<std::collections::BTreeMap<String, String>>,
    /// When each TTL check of this node turns critical unless updated (see `catalog.rs`).
    pub(super) ttl_deadlines: Mutex<std::collections::HashMap<String, time::OffsetDateTime>>,
    /// The JWT-SVID signing keys, made on first use and renewed with the active root (see
    /// `jwt.rs`).
    pub(super) jwt: Mutex<Option<crate::ca::JwtKeySet>>,
}

/// One datacenter's control plane. Cheap to clone.
#[derive(Clone)]
pub struct Server {
    pub(super) inner: Arc<Inner>,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("datacenter", &self.inner.config.datacenter)
            .field("index", &self.inner.store.index())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Opens the store (SQLite under `data_dir`, or memory), then resumes or initialises
    /// the CA, the ACL system and the intention index.
    ///
    /// A secondary datacenter's server resumes from its store; on its first start it has
    /// nothing to resume and fails with `CaNotInitialized`: see
    /// [`Server::start_secondary`].
    pub fn start(config: ServerConfig, clock: SharedClock) -> Result<Server, Error> {
        Server::open(config, clock, None)
    }

    /// Starts a secondary datacenter's server: it resumes from its store when that holds a
    /// CA, and otherwise starts from `primary_roots` (the primary's `/v1/connect/ca/roots`)
    /// with no intermediate yet — leaf requests fail with `CaNotInitialized` until
    /// [`Server::install_intermediate`].
    pub fn start_secondary(
        config: ServerConfig,
        clock: SharedClock,
        primary_roots: &crate::ca::IndexedCaRoots,
    ) -> Result<Server, Error> {
        Server::open(config, clock, Some(primary_roots))
    }

    fn open(
        config: ServerConfig,
        clock: SharedClock,
        primary_roots: Option<&crate::ca::IndexedCaRoots>,
    ) -> Result<Server, Error> {
        let store = match (&config.store, &config.data_dir) {
            (Some(store), _) => store.clone(),
            (None, Some(dir)) => Store::open_dir(dir)?,
            (None, None) => Store::in_memory(),
        };
        let ca = ca::open_ca(&config, &store, &clock, primary_roots)?;
        let acl = acl::open_acl(&config, &store)?;
        let view = store.view();
        let index = IntentionIndex::new(view.intentions().cloned(), config.intention_default());
        let serial_reserved = store.view().ca_serial();
        let limiter = CsrLimiter::new(ca.common_config());
        let server = Server {
            inner: Arc::new(Inner {
                config,
                clock,
                store,
                ca: Mutex::new(ca),
                serial_reserved: Mutex::new(serial_reserved),
                last_sign_index: std::sync::atomic::AtomicU64::new(0),
                acl,
                intentions: Arc::new(SharedIntentionIndex::new(index)),
                limiter,
                datacenters: Mutex::default(),
                replication: Mutex::default(),
                server_addresses: Mutex::default(),
                ttl_deadlines: Mutex::default(),
                jwt: Mutex::default(),
            }),
        };
        server.register_self()?;
        Ok(server)
    }

    /// This server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// This datacenter.
    pub fn datacenter(&self) -> &str {
        &self.inner.config.datacenter
    }

    /// The state store (reads, and blocking waits).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The clock the server reads.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// `<cluster-id>.consul`.
    pub fn trust_domain(&self) -> String {
        self.ca().trust_domain()
    }

    /// The intention index, shared with in-process TLS authorizers; it is swapped on every
    /// intention change.
    pub fn intention_index(&self) -> Arc<SharedIntentionIndex> {
        Arc::clone(&self.inner.intentions)
    }

    pub(super) fn ca(&self) -> MutexGuard<'_, CaManager> {
        self.inner.ca.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The authorizer for a request's token: everything allowed when ACLs are off; the
    /// anonymous token when the request has none.
    pub fn authorizer(&self, token: Option<&str>) -> Result<Arc<AclAuthorizer>, Error> {
        if !self.inner.config.acl_enabled {
            return Ok(Arc::new(AclAuthorizer::allow_all()));
        }
        Ok(self.inner.acl.resolve(token.filter(|t| !t.is_empty()))?)
    }

    /// Blocks until one of `tables` changes past `min_index` or `wait` passes; returns the
    /// index then (never 0).
    pub async fn wait(&self, tables: &[Table], min_index: u64, wait: Duration) -> u64 {
        if min_index == 0 {
            return self.inner.store.view().max_index(tables).max(1);
        }
        self.inner
            .store
            .wait_any(tables, min_index, wait)
            .await
            .max(1)
    }
}

pub(crate) fn internal(e: impl fmt::Display) -> Error {
    Error::new(ErrorKind::Internal, e.to_string())
}
