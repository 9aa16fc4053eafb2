//! The [`Agent`] type: its runtime, its cache and the watches that keep it fresh.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::{
    AgentBackend, AgentConfig, Backend, ConnectService, HealthConnectType, HttpBackend, InProcess,
    IntentionMatchType, Leaf, LeafCacheRequest, LeafKind, LeafType, MeshGatewaysType, RootsType,
    Scoped,
};
use crate::ca::{CaConfiguration, IndexedCaRoots};
use crate::cache::{Cache, CacheOptions, CacheType, GetOptions, ResultMeta};
use crate::catalog::{ServiceEntry, ServiceRegistration};
use crate::intentions::{DefaultPolicy, Intention, IntentionAction};
use crate::server::{Server, ServerConfig};
use crate::{Error, ErrorKind, SharedClock};

enum Rt {
    Owned(Runtime),
    Borrowed(Handle),
}

impl Rt {
    fn handle(&self) -> &Handle {
        match self {
            Rt::Owned(r) => r.handle(),
            Rt::Borrowed(h) => h,
        }
    }
}

struct Inner {
    backend: Backend,
    cache: Cache,
    token: Option<String>,
    datacenter: String,
    clock: SharedClock,
    default_policy: DefaultPolicy,
    roots_tx: watch::Sender<Option<Arc<IndexedCaRoots>>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    // Dropped last: tasks above run on it.
    runtime: Mutex<Option<Rt>>,
    handle: Handle,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl Inner {
    fn shutdown(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.cache.close();
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
        if let Some(Rt::Owned(rt)) = self
            .runtime
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            // Never blocks, so closing from any thread (or inside a runtime) is safe.
            rt.shutdown_background();
        }
    }
}

/// The agent. Cheap to clone; [`Agent::close`] (or dropping the last clone) stops every
/// background task and, if the agent owns its runtime, the runtime's threads.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<Inner>,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("datacenter", &self.inner.datacenter)
            .field("backend", &self.inner.backend)
            .field("closed", &self.inner.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

fn agent_runtime() -> Result<Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("libconnect-agent")
        .enable_all()
        .build()
        .map_err(|e| Error::new(ErrorKind::Io, format!("starting the agent runtime: {e}")))
}

impl Agent {
    /// Starts an agent with an in-process `-dev` server.
    pub fn dev() -> Result<Agent, Error> {
        Agent::new(AgentConfig::dev())
    }

    /// Starts an agent (and, if `LIBCONNECT_LOG` is set to `tracing` filter directives such as
    /// `info`, logging to standard error). With an HTTP backend this reads `/v1/agent/self` once
    /// to learn the datacenter and the default intention policy; from async code use
    /// [`Agent::new_async`] for that.
    pub fn new(config: AgentConfig) -> Result<Agent, Error> {
        crate::logging::init_from_env();
        let rt = match config.runtime.clone() {
            Some(h) => Rt::Borrowed(h),
            None => Rt::Owned(agent_runtime()?),
        };
        match config.client_config() {
            Some(client) => {
                let http = HttpBackend::new(&client)?;
                let (dc, policy) =
                    run_sync(rt.handle(), describe_peer(http.clone(), client.datacenter))??;
                Agent::build(config, rt, Backend::Http(http), dc, policy)
            }
            None => Agent::in_process(config, rt),
        }
    }

    /// [`Agent::new`] for async callers; the agent runs on the current runtime unless the
    /// configuration names one.
    pub async fn new_async(config: AgentConfig) -> Result<Agent, Error> {
        if config.client_config().is_some() {
            return Agent::new_http_async(config).await;
        }
        crate::logging::init_from_env();
        let rt = Rt::Borrowed(config.runtime.clone().unwrap_or_else(Handle::current));
        Agent::in_process(config, rt)
    }

    /// [`Agent::new_async`] for an HTTP backend only; `InvalidParameter` for `Dev` or
    /// `InProcess`. An executable that starts its agents only this way links none of the
    /// in-process server — no state store, SQLite or CA signing — which is what keeps
    /// `connect-proxy` small (`agent::local`).
    pub async fn new_http_async(mut config: AgentConfig) -> Result<Agent, Error> {
        crate::logging::init_from_env();
        let Some(client) = config.client_config() else {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                "new_http_async needs an HTTP backend (AgentConfig::http or from_env)",
            ));
        };
        let handle = config.runtime.get_or_insert_with(Handle::current).clone();
        let http = HttpBackend::new(&client)?;
        let (dc, policy) = describe_peer(http.clone(), client.datacenter).await?;
        Agent::build(
            config,
            Rt::Borrowed(handle),
            Backend::Http(http),
            dc,
            policy,
        )
    }

    /// The agent of a `Dev` or `InProcess` configuration: a `Dev` agent starts its own
    /// server and keeps that server's TTL checks honest, as `connect agent` does; an
    /// embedder's own server is the embedder's to run.
    fn in_process(config: AgentConfig, rt: Rt) -> Result<Agent, Error> {
        let (server, owned) = match &config.backend {
            AgentBackend::Dev => (
                Server::start(ServerConfig::dev(), config.clock.clone())?,
                true,
            ),
            AgentBackend::InProcess(server) => (server.clone(), false),
            AgentBackend::Http(_) => {
                return Err(Error::new(
                    ErrorKind::Internal,
                    "an HTTP backend has no server in this process",
                ));
            }
        };
        let dc = server.datacenter().to_owned();
        let policy = server.config().intention_default();
        let backend = Backend::InProcess(InProcess::new(server.clone()));
        let agent = Agent::build(config, rt, backend, dc, policy)?;
        if owned {
            let task = agent.inner.handle.spawn(server.run_ttl_expiry());
            agent.track(task);
        }
        Ok(agent)
    }

    fn build(
        config: AgentConfig,
        rt: Rt,
        backend: Backend,
        datacenter: String,
        default_policy: DefaultPolicy,
    ) -> Result<Agent, Error> {
        let handle = rt.handle().clone();
        let datacenter = config.datacenter.clone().unwrap_or(datacenter);
        let cache = {
            let _guard = handle.enter();
            Cache::new(
                handle.clone(),
                CacheOptions::with_clock(config.clock.clone()),
            )?
        };
        let (roots_tx, roots_rx) = watch::channel(None);
        cache.register(RootsType {
            backend: backend.clone(),
        })?;
        cache.register(IntentionMatchType {
            backend: backend.clone(),
        })?;
        cache.register(HealthConnectType {
            backend: backend.clone(),
            datacenter: datacenter.clone(),
        })?;
        cache.register(MeshGatewaysType {
            backend: backend.clone(),
            datacenter: datacenter.clone(),
        })?;
        cache.register(LeafType {
            backend: backend.clone(),
            clock: config.clock.clone(),
            roots: roots_rx,
            root_change_jitter: config.root_change_jitter,
        })?;
        let agent = Agent {
            inner: Arc::new(Inner {
                backend,
                cache,
                token: config.token.clone(),
                datacenter,
                clock: config.clock.clone(),
                default_policy,
                roots_tx,
                tasks: Mutex::new(Vec::new()),
                closed: AtomicBool::new(false),
                runtime: Mutex::new(Some(rt)),
                handle,
            }),
        };
        agent.start_roots_watch()?;
        Ok(agent)
    }

    /// Publishes every new roots value to the leaf type and to services.
    fn start_roots_watch(&self) -> Result<(), Error> {
        let mut rx = {
            let _guard = self.inner.handle.enter();
            self.inner
                .cache
                .watch::<RootsType>(self.scoped(""), GetOptions::default())?
        };
        let weak = Arc::downgrade(&self.inner);
        let task = self.inner.handle.spawn(async move {
            while let Some(event) = rx.recv().await {
                let Some(inner) = weak.upgrade() else { return };
                if let Some(v) = event.value {
                    inner.roots_tx.send_replace(Some(v));
                }
            }
        });
        self.track(task);
        Ok(())
    }

    pub(crate) fn track(&self, task: JoinHandle<()>) {
        let mut tasks = self
            .inner
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    pub(crate) fn scoped(&self, name: &str) -> Scoped {
        Scoped {
            datacenter: self.inner.datacenter.clone(),
            token: self.inner.token.clone().unwrap_or_default(),
            name: name.to_owned(),
        }
    }

    /// The runtime the agent's work runs on.
    pub fn handle(&self) -> &Handle {
        &self.inner.handle
    }

    /// Runs `f` on the agent's runtime and waits for it; for callers outside async code
    /// (the C, Python and Node bindings). Refused inside an async context, where it would
    /// block a worker.
    pub fn block_on<F>(&self, f: F) -> Result<F::Output, Error>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        run_sync(&self.inner.handle, f)
    }

    /// The in-process server, when there is one.
    pub fn server(&self) -> Option<&Server> {
        match &self.inner.backend {
            Backend::InProcess(s) => Some(s.server()),
            Backend::Http(_) => None,
        }
    }

    /// The backend.
    pub fn backend(&self) -> &Backend {
        &self.inner.backend
    }

    /// The datacenter.
    pub fn datacenter(&self) -> &str {
        &self.inner.datacenter
    }

    /// The clock.
    pub fn clock(&self) -> &SharedClock {
        &self.inner.clock
    }

    /// The ACL token.
    pub fn token(&self) -> Option<&str> {
        self.inner.token.as_deref()
    }

    /// What decides when no intention matches.
    pub fn default_policy(&self) -> DefaultPolicy {
        self.inner.default_policy
    }

    /// The cache (metrics, Prometheus text).
    pub fn cache(&self) -> &Cache {
        &self.inner.cache
    }

    fn check_open(&self) -> Result<(), Error> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::new(ErrorKind::Closed, "the agent is closed"));
        }
        Ok(())
    }

    /// The CA roots (a cache read after the first call).
    pub async fn roots(&self) -> Result<Arc<IndexedCaRoots>, Error> {
        self.check_open()?;
        Ok(self
            .inner
            .cache
            .get::<RootsType>(&self.scoped(""), GetOptions::default())
            .await?
            .0)
    }

    /// A leaf for `service`, generated in this process and renewed as needed. A leaf past
    /// its expiry is never returned: if renewing fails, this is a `NOT_READY` error.
    pub async fn leaf(&self, service: &str) -> Result<Arc<Leaf>, Error> {
        self.check_open()?;
        let req = self.leaf_request(service);
        let (leaf, _) = self
            .inner
            .cache
            .get::<LeafType>(&req, GetOptions::default())
            .await?;
        if self.inner.clock.now() < leaf.valid_before() {
            return Ok(leaf);
        }
        let revalidate = GetOptions {
            must_revalidate: true,
            ..GetOptions::default()
        };
        let (leaf, _) = self.inner.cache.get::<LeafType>(&req, revalidate).await?;
        if self.inner.clock.now() < leaf.valid_before() {
            return Ok(leaf);
        }
        Err(Error::new(
            ErrorKind::NotReady,
            format!("the leaf for {service:?} expired and could not be renewed"),
        ))
    }

    pub(crate) fn leaf_request(&self, service: &str) -> LeafCacheRequest {
        LeafCacheRequest {
            scope: self.scoped(service),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            kind: LeafKind::Service,
        }
    }

    /// The scope of `name` under a caller's `token` rather than the agent's own: the HTTP
    /// agent endpoints serve every caller from this cache, partitioned by token as Consul's
    /// is. The caller checks its ACLs first.
    pub(crate) fn scoped_for(&self, token: Option<&str>, name: &str) -> Scoped {
        Scoped {
            datacenter: self.inner.datacenter.clone(),
            token: token.unwrap_or_default().to_owned(),
            name: name.to_owned(),
        }
    }

    /// The leaf request for `service` under a caller's `token` (see [`Agent::scoped_for`]).
    pub(crate) fn leaf_request_for_token(
        &self,
        token: Option<&str>,
        service: &str,
    ) -> LeafCacheRequest {
        LeafCacheRequest {
            scope: self.scoped_for(token, service),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            kind: LeafKind::Service,
        }
    }

    /// The request for this datacenter's server identity (a server's HTTPS certificate;
    /// `node` keeps one entry per node), with extra SANs.
    pub(crate) fn server_leaf_request(
        &self,
        node: &str,
        dns_names: Vec<String>,
        ip_addresses: Vec<std::net::IpAddr>,
    ) -> LeafCacheRequest {
        LeafCacheRequest {
            scope: self.scoped_for(None, node),
            dns_names,
            ip_addresses,
            kind: LeafKind::Server,
        }
    }

    /// A leaf-cache read.
    pub(crate) async fn leaf_get(
        &self,
        req: &LeafCacheRequest,
        opts: GetOptions,
    ) -> Result<(Arc<Leaf>, ResultMeta), Error> {
        self.check_open()?;
        self.inner.cache.get::<LeafType>(req, opts).await
    }

    /// A roots-cache read, with how it was answered.
    pub(crate) async fn roots_get(
        &self,
        opts: GetOptions,
    ) -> Result<(Arc<IndexedCaRoots>, ResultMeta), Error> {
        self.check_open()?;
        self.inner
            .cache
            .get::<RootsType>(&self.scoped(""), opts)
            .await
    }

    /// An intention-match read for `service` under a caller's `token` (see
    /// [`Agent::scoped_for`]), with how it was answered.
    pub(crate) async fn intentions_for_token(
        &self,
        token: Option<&str>,
        service: &str,
        opts: GetOptions,
    ) -> Result<(Arc<Vec<Arc<Intention>>>, ResultMeta), Error> {
        self.check_open()?;
        self.inner
            .cache
            .get::<IntentionMatchType>(&self.scoped_for(token, service), opts)
            .await
    }

    /// The roots the leaf type judges leaves by, as they change.
    pub(crate) fn roots_watch(&self) -> watch::Receiver<Option<Arc<IndexedCaRoots>>> {
        self.inner.roots_tx.subscribe()
    }

    /// Waits at most `wait` until the roots the leaf type judges leaves by name
    /// `active_root_id` as active: they arrive through a background watch, so right after a
    /// rotation they can lag the server by a moment. Returns whether they caught up.
    pub(crate) async fn roots_caught_up(&self, active_root_id: &str, wait: Duration) -> bool {
        let mut rx = self.inner.roots_tx.subscribe();
        tokio::time::timeout(
            wait,
            rx.wait_for(|r| {
                r.as_ref()
                    .is_some_and(|r| r.active_root_id == active_root_id)
            }),
        )
        .await
        .is_ok_and(|r| r.is_ok())
    }

    /// Checks a JWT-SVID (from [`ConnectService::jwt_svid`](super::ConnectService::jwt_svid), a
    /// SPIFFE Workload API, or any issuer of this trust domain's JWT keys) for `audience`:
    /// signature, expiry and audience. Answers its SPIFFE ID and claims; `InvalidParameter` says
    /// which check failed.
    pub async fn validate_jwt_svid(
        &self,
        jwt: &str,
        audience: &str,
    ) -> Result<crate::server::JwtValidation, Error> {
        self.check_open()?;
        self.backend()
            .validate_jwt_svid(self.token(), jwt, audience)
            .await
    }

    /// Intentions whose destination covers `service`, in evaluation order.
    pub async fn intentions_for(&self, service: &str) -> Result<Arc<Vec<Arc<Intention>>>, Error> {
        self.check_open()?;
        Ok(self
            .inner
            .cache
            .get::<IntentionMatchType>(&self.scoped(service), GetOptions::default())
            .await?
            .0)
    }

    /// Healthy connect-capable instances of `service`.
    pub async fn health_connect(&self, service: &str) -> Result<Arc<Vec<ServiceEntry>>, Error> {
        self.check_open()?;
        Ok(self
            .inner
            .cache
            .get::<HealthConnectType>(&self.scoped(service), GetOptions::default())
            .await?
            .0)
    }

    /// Healthy connect-capable instances of `service` in `datacenter` (asked of the backend
    /// with `?dc=` when it is not this agent's).
    ///
    /// Errors: `InvalidParameter` for a malformed datacenter name, or one the backend has no
    /// path to (`No path to datacenter: …`).
    pub async fn health_connect_in(
        &self,
        service: &str,
        datacenter: &str,
    ) -> Result<Arc<Vec<ServiceEntry>>, Error> {
        self.get_in::<HealthConnectType>(service, datacenter).await
    }

    /// Healthy mesh gateways (instances of `gateway_service` with `Kind: mesh-gateway`) in
    /// `datacenter`.
    ///
    /// Errors: as [`Agent::health_connect_in`].
    pub async fn mesh_gateways(
        &self,
        gateway_service: &str,
        datacenter: &str,
    ) -> Result<Arc<Vec<ServiceEntry>>, Error> {
        self.get_in::<MeshGatewaysType>(gateway_service, datacenter)
            .await
    }

    /// A cache read of `name` in `datacenter` (a checked name) with this agent's token.
    async fn get_in<T: CacheType<Request = Scoped>>(
        &self,
        name: &str,
        datacenter: &str,
    ) -> Result<Arc<T::Value>, Error> {
        self.check_open()?;
        crate::spiffe::check_datacenter_name("datacenter", datacenter)?;
        let mut req = self.scoped(name);
        req.datacenter = datacenter.to_owned();
        Ok(self
            .inner
            .cache
            .get::<T>(&req, GetOptions::default())
            .await?
            .0)
    }

    /// Creates or replaces the intention `source → destination`.
    pub async fn intention_upsert(
        &self,
        source: &str,
        destination: &str,
        action: IntentionAction,
    ) -> Result<(), Error> {
        self.check_open()?;
        self.inner
            .backend
            .intention_upsert(self.token(), source, destination, action)
            .await
    }

    /// Deletes the intention `source → destination`; `NotFound` when there is none (unlike
    /// Consul's `DELETE /v1/connect/intentions/exact`, which answers success either way).
    pub async fn intention_delete(&self, source: &str, destination: &str) -> Result<(), Error> {
        self.check_open()?;
        self.inner
            .backend
            .intention_delete(self.token(), source, destination)
            .await
    }

    /// Whether `source` may connect to `destination`.
    pub async fn intention_check(&self, source: &str, destination: &str) -> Result<bool, Error> {
        self.check_open()?;
        self.inner
            .backend
            .intention_check(self.token(), source, destination)
            .await
    }

    /// Applies a CA configuration; a key change rotates the root with cross-signing.
    pub async fn ca_set_config(&self, config: CaConfiguration) -> Result<(), Error> {
        self.check_open()?;
        self.inner.backend.ca_set_config(self.token(), config).await
    }

    /// Registers a service instance on the agent's node, so that `dial` by name finds it.
    pub async fn register_service(&self, registration: ServiceRegistration) -> Result<(), Error> {
        self.check_open()?;
        self.inner
            .backend
            .register_service(self.token(), registration)
            .await
    }

    /// Deregisters the instance `service_id`.
    pub async fn deregister_service(&self, service_id: &str) -> Result<(), Error> {
        self.check_open()?;
        self.inner
            .backend
            .deregister_service(self.token(), service_id)
            .await
    }

    /// A Connect service named `name` on this agent: its identity follows the agent's leaf
    /// and roots, and its server side authorizes peers by intentions during the handshake.
    pub fn service(&self, name: &str) -> Result<ConnectService, Error> {
        self.check_open()?;
        ConnectService::start(self.clone(), name)
    }

    /// Stops every background task (and the owned runtime). Idempotent; later calls fail
    /// with `CLOSED`.
    pub fn close(&self) {
        self.inner.shutdown();
    }

    /// Whether [`Agent::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.load(Ordering::SeqCst)
    }
}

/// Runs a future to completion from synchronous code.
fn run_sync<F>(handle: &Handle, f: F) -> Result<F::Output, Error>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::InvalidParameter,
            "a blocking libconnect call was made inside an async runtime; use the async API",
        ));
    }
    Ok(handle.block_on(f))
}

/// The datacenter and default intention policy of an HTTP peer, from `/v1/agent/self`.
///
/// `/v1/agent/self` needs `agent:read`, which a service's own token usually lacks (Consul's
/// `consul connect envoy` met the same). Refused, the agent goes on with the configured
/// datacenter (else `dc1`) and, since the refusal shows ACLs are on, a default of deny: the
/// safe reading of a policy it may not see.
async fn describe_peer(
    http: HttpBackend,
    datacenter: Option<String>,
) -> Result<(String, DefaultPolicy), Error> {
    let me = match http
        .client()
        .get::<serde_json::Value>("/v1/agent/self", &[])
        .await
    {
        Ok(me) => me.value,
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            let dc = datacenter.unwrap_or_else(|| "dc1".to_owned());
            return Ok((dc, DefaultPolicy::acl(IntentionAction::Deny)));
        }
        Err(e) => return Err(e),
    };
    let dc = me["Config"]["Datacenter"]
        .as_str()
        .unwrap_or("dc1")
        .to_owned();
    let debug = &me["DebugConfig"];
    let action = |v: &serde_json::Value| match v.as_str() {
        Some("deny") => Some(IntentionAction::Deny),
        Some("allow") => Some(IntentionAction::Allow),
        _ => None,
    };
    let policy = if let Some(a) = action(&debug["DefaultIntentionPolicy"]) {
        DefaultPolicy::intention_policy(a)
    } else if debug["ACLsEnabled"].as_bool() == Some(true) {
        DefaultPolicy::acl(action(&debug["ACLDefaultPolicy"]).unwrap_or(IntentionAction::Deny))
    } else {
        DefaultPolicy::ACLS_DISABLED
    };
    Ok((dc, policy))
}
