//! A Connect service on an agent: a TLS identity kept current from the agent's cache, a
//! server side that authorizes peers by intentions inside the handshake, and dialing by
//! service name through healthy instances.

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use tokio::net::ToSocketAddrs;
use tokio::task::JoinHandle;

use super::{Agent, IntentionMatchType, LeafType, RootsType};
use crate::cache::GetOptions;
use crate::catalog::{MeshGatewayMode, ServiceConnect, ServiceEntry, ServiceRegistration};
use crate::intentions::{Intention, IntentionIndex, SharedIntentionIndex};
use crate::spiffe::{
    DEFAULT_NAMESPACE, DEFAULT_PARTITION, ServiceId, SpiffeId, check_datacenter_name,
    check_service_name, service_sni,
};
use crate::tls::{
    self, Bundle, Connection, Identity, Listener, Material, PeerAuthorization, PeerInput,
};
use crate::{Error, ErrorKind};

/// How long a background watcher waits before retrying after an error (the cache backs off
/// its own fetches; this only paces the loop).
const RETRY: Duration = Duration::from_secs(1);

/// The service name mesh gateways register under and dials look them up by: Consul's
/// default for a mesh gateway (Consul docs: Mesh Gateways).
pub const MESH_GATEWAY_SERVICE: &str = "mesh-gateway";

/// Where a dial goes: Consul's upstream settings `Datacenter` and `MeshGateway.Mode`
/// (Consul docs: Upstream Configuration Reference).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DialOptions {
    /// The destination's datacenter; `None` is the agent's own and keeps the plain
    /// [`ConnectService::dial`] behaviour. With a datacenter, the server must present exactly
    /// `spiffe://<our trust domain>/ns/default/dc/<datacenter>/svc/<target>`, and the dial
    /// sends the SNI `<target>.default.<datacenter>.internal.<trust domain>`.
    pub datacenter: Option<String>,
    /// How a dial to another datacenter uses mesh gateways; within the agent's own
    /// datacenter dials always go direct, as in Consul.
    pub mesh_gateway: MeshGatewayMode,
}

impl DialOptions {
    /// A dial to `datacenter`, direct.
    pub fn datacenter(datacenter: impl Into<String>) -> DialOptions {
        DialOptions {
            datacenter: Some(datacenter.into()),
            mesh_gateway: MeshGatewayMode::None,
        }
    }

    /// The same with `mode` for mesh gateways.
    pub fn mesh_gateway(mut self, mode: MeshGatewayMode) -> DialOptions {
        self.mesh_gateway = mode;
        self
    }
}

/// Where and how a dial with [`DialOptions`] connects: for applications with their own TLS
/// stack, which send [`server_name`](Self::server_name) as SNI and check the server with
/// [`ConnectService::verify_server_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DialRoute {
    /// Addresses to try in order: instances of the target, or mesh gateways.
    pub addrs: Vec<SocketAddr>,
    /// The SNI to send (`None` for a plain dial in the agent's own datacenter).
    pub server_name: Option<String>,
    /// The identity the server must present (`None`: any datacenter, the plain dial's rule).
    pub expected: Option<ServiceId>,
}

/// A Connect service. Dropping it (or [`ConnectService::close`]) stops its watchers; open
/// connections are unaffected.
pub struct ConnectService {
    name: String,
    agent: Agent,
    identity: Identity,
    tls: tls::Service,
    intentions: Arc<SharedIntentionIndex>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// Instance IDs this handle registered; deregistered on close.
    registered: Mutex<Vec<String>>,
}

impl fmt::Debug for ConnectService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectService")
            .field("name", &self.name)
            .field("generation", &self.identity.generation())
            .finish_non_exhaustive()
    }
}

impl Drop for ConnectService {
    fn drop(&mut self) {
        self.close();
    }
}

impl ConnectService {
    pub(super) fn start(agent: Agent, name: &str) -> Result<ConnectService, Error> {
        crate::spiffe::check_service_name("service name", name)?;
        let identity = Identity::new(name, agent.clock().clone());
        // In process, the server's own index is the hot path; over HTTP a per-service index is
        // rebuilt from the intention-match cache.
        let intentions = match agent.server() {
            Some(server) => server.intention_index(),
            None => Arc::new(SharedIntentionIndex::new(IntentionIndex::new(
                Vec::new(),
                agent.default_policy(),
            ))),
        };
        let authorizer = tls::authorizer::from_intentions(name, Arc::clone(&intentions));
        let tls = tls::Service::new(identity.clone(), authorizer)?;
        let svc = ConnectService {
            name: name.to_owned(),
            agent,
            identity,
            tls,
            intentions,
            tasks: Mutex::new(Vec::new()),
            registered: Mutex::new(Vec::new()),
        };
        svc.spawn_roots_watch()?;
        svc.spawn_leaf_watch();
        if svc.agent.server().is_none() {
            svc.spawn_intentions_watch()?;
        }
        Ok(svc)
    }

    fn track(&self, t: JoinHandle<()>) {
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(t);
    }

    fn spawn_roots_watch(&self) -> Result<(), Error> {
        let mut rx = {
            let _g = self.agent.handle().enter();
            self.agent
                .cache()
                .watch::<RootsType>(self.agent.scoped(""), GetOptions::default())?
        };
        let identity = self.identity.clone();
        self.track(self.agent.handle().spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let Some(roots) = ev.value
                    && let Ok(bundle) = Bundle::from_ca_roots(&roots)
                {
                    // A bundle that fails validation keeps the last good one in use.
                    let _ = identity.update_bundle(bundle);
                }
            }
        }));
        Ok(())
    }

    fn spawn_leaf_watch(&self) {
        let agent = self.agent.clone();
        let identity = self.identity.clone();
        let req = agent.leaf_request(&self.name);
        self.track(self.agent.handle().spawn(async move {
            let mut index = 0u64;
            loop {
                let got = agent
                    .cache()
                    .get::<LeafType>(&req, GetOptions::blocking(index, Duration::from_secs(600)))
                    .await;
                match got {
                    Ok((leaf, meta)) => {
                        if meta.index > index || index == 0 {
                            index = meta.index;
                            // Published only once it verifies against the current roots: after a
                            // rotation the new bundle may still be on its way.
                            let mut changes = identity.watch();
                            for _ in 0..30 {
                                let Ok(svid) = leaf.to_svid() else {
                                    break;
                                };
                                if identity.update_svid(svid).is_ok() {
                                    break;
                                }
                                tokio::select! {
                                    _ = changes.changed() => {}
                                    () = tokio::time::sleep(RETRY) => {}
                                }
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::Closed => return,
                    Err(_) => tokio::time::sleep(RETRY).await,
                }
            }
        }));
    }

    fn spawn_intentions_watch(&self) -> Result<(), Error> {
        let mut rx = {
            let _g = self.agent.handle().enter();
            self.agent
                .cache()
                .watch::<IntentionMatchType>(self.agent.scoped(&self.name), GetOptions::default())?
        };
        let shared = Arc::clone(&self.intentions);
        let policy = self.agent.default_policy();
        self.track(self.agent.handle().spawn(async move {
            while let Some(ev) = rx.recv().await {
                if let Some(list) = ev.value {
                    shared.store(IntentionIndex::new(
                        list.iter().map(|ixn| Intention::clone(ixn)),
                        policy,
                    ));
                }
            }
        }));
        Ok(())
    }

    /// A JWT-SVID for this service (SPIFFE spec: JWT-SVID) with `audiences` (1 to 32), signed
    /// by the datacenter's JWT key and valid 5 minutes; the agent's token needs `service:write`
    /// on the service. Errors: `InvalidParameter` (audiences), `PermissionDenied`.
    pub async fn jwt_svid(&self, audiences: &[String]) -> Result<String, Error> {
        let svid = self
            .agent
            .backend()
            .jwt_svid(self.agent.token(), &self.name, audiences)
            .await?;
        Ok(svid.token)
    }

    /// The service name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The agent this service runs on.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The TLS identity (current leaf and roots, with a watch of changes).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The TLS service (server and client configs for callers with their own I/O).
    pub fn tls(&self) -> &tls::Service {
        &self.tls
    }

    /// The intentions that decide who may connect to this service.
    pub fn intention_index(&self) -> &Arc<SharedIntentionIndex> {
        &self.intentions
    }

    /// Whether the service has a leaf that verifies against the current roots (ARCHITECTURE.md,
    /// tls).
    pub fn ready(&self) -> bool {
        self.identity.ready()
    }

    /// Waits until [`ConnectService::ready`], at most `timeout`.
    pub async fn ready_wait(&self, timeout: Duration) -> Result<(), Error> {
        self.identity.ready_wait(timeout).await
    }

    /// Listens for mutual-TLS connections; unauthorized peers are refused in the handshake.
    /// The instance is registered in the catalog as a Connect-native service (ID
    /// `<name>-<port>`) so that peers can [`dial`](Self::dial) it by name, and deregistered
    /// when this handle is closed.
    pub async fn listen(&self, addr: impl ToSocketAddrs) -> Result<Listener, Error> {
        let listener = self.tls.listen(addr).await?;
        self.register(listener.local_addr()).await?;
        Ok(listener)
    }

    /// Registers an instance of this service at `addr` (Connect-native, no health check:
    /// it is passing while registered).
    pub async fn register(&self, addr: SocketAddr) -> Result<(), Error> {
        let id = format!("{}-{}", self.name, addr.port());
        let mut reg = ServiceRegistration::new(&self.name, addr.port());
        reg.id = id.clone();
        reg.address = addr.ip().to_string();
        reg.connect = Some(ServiceConnect::native());
        self.agent
            .backend()
            .register_service(self.agent.token(), reg)
            .await?;
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(id);
        Ok(())
    }

    /// Connects to `addr`, expecting it to be an instance of `target`.
    pub async fn dial_addr(
        &self,
        addr: impl ToSocketAddrs,
        target: &str,
    ) -> Result<Connection, Error> {
        self.tls.dial_addr(addr, target).await
    }

    /// The addresses of healthy instances of `target`, found through the catalog, in random
    /// order: the order in which [`ConnectService::dial`] tries them. For applications with
    /// their own TLS stack, which then check the server with
    /// [`ConnectService::verify_server`].
    ///
    /// Errors: `ConnectionRefused` when there is no healthy instance.
    pub async fn resolve(&self, target: &str) -> Result<Vec<SocketAddr>, Error> {
        let instances = self.agent.health_connect(target).await?;
        if instances.is_empty() {
            return Err(Error::new(
                ErrorKind::ConnectionRefused,
                format!("no healthy instances found for {target:?}"),
            ));
        }
        Ok(addresses(&instances, false).await)
    }

    /// Connects to a healthy instance of `target`, found through the catalog; instances are
    /// tried in random order until one answers.
    pub async fn dial(&self, target: &str) -> Result<Connection, Error> {
        let addrs = self.resolve(target).await?;
        let mut last = Error::new(
            ErrorKind::ConnectionRefused,
            format!("no address for {target:?}"),
        );
        for addr in addrs {
            match self.tls.dial_addr(addr, target).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Connects to `target` as `opts` say: in another datacenter (the server's SPIFFE ID must
    /// name that datacenter and our trust domain), directly or through mesh gateways, which
    /// route by the SNI this dial sends and never see plaintext (Consul docs: Mesh Gateways).
    /// Addresses are tried in random order until one answers.
    ///
    /// Errors: `InvalidParameter` for a malformed target or datacenter name, or a datacenter
    /// the agent has no path to; `NotReady` before the first roots; `ConnectionRefused` when
    /// there is no healthy instance or gateway; then as [`ConnectService::dial`].
    pub async fn dial_with(&self, target: &str, opts: &DialOptions) -> Result<Connection, Error> {
        let route = self.route(target, opts).await?;
        let client = match &route.expected {
            Some(id) => self
                .tls
                .client_with(id.clone(), route.server_name.as_deref(), true)?,
            None => self.tls.client(target)?,
        };
        let mut last = Error::new(
            ErrorKind::ConnectionRefused,
            format!("no address for {target:?}"),
        );
        for addr in route.addrs {
            match client.dial_addr(addr).await {
                Ok(c) => return Ok(c),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Where [`ConnectService::dial_with`] would connect, in the order it would try, with the
    /// SNI and identity it would use.
    ///
    /// Errors: as [`ConnectService::dial_with`] before it connects.
    pub async fn route(&self, target: &str, opts: &DialOptions) -> Result<DialRoute, Error> {
        check_service_name("target", target)?;
        let Some(dc) = opts.datacenter.as_deref() else {
            return Ok(DialRoute {
                addrs: self.resolve(target).await?,
                server_name: None,
                expected: None,
            });
        };
        check_datacenter_name("datacenter", dc)?;
        let expected = self.expected_in(target, dc)?;
        let server_name = service_sni(target, None, "", "", dc, &self.trust_domain()?);
        let local = self.agent.datacenter();
        let mode = if dc == local {
            MeshGatewayMode::None
        } else {
            opts.mesh_gateway
        };
        let (entries, wan, what) = match mode {
            MeshGatewayMode::Local => (
                self.agent
                    .mesh_gateways(MESH_GATEWAY_SERVICE, local)
                    .await?,
                false,
                format!("mesh gateway in {local}"),
            ),
            MeshGatewayMode::Remote => (
                self.agent.mesh_gateways(MESH_GATEWAY_SERVICE, dc).await?,
                true,
                format!("mesh gateway in {dc}"),
            ),
            _ => (
                self.agent.health_connect_in(target, dc).await?,
                false,
                format!("instance of {target:?} in {dc}"),
            ),
        };
        let addrs = addresses(&entries, wan).await;
        if addrs.is_empty() {
            return Err(Error::new(
                ErrorKind::ConnectionRefused,
                format!("no healthy {what} (dialling {target:?} in {dc})"),
            ));
        }
        Ok(DialRoute {
            addrs,
            server_name: Some(server_name),
            expected: Some(expected),
        })
    }

    fn trust_domain(&self) -> Result<crate::spiffe::TrustDomain, Error> {
        let snapshot = self.identity.snapshot();
        let bundle = snapshot.bundle().ok_or_else(|| {
            Error::new(
                ErrorKind::NotReady,
                format!("service {:?} has no CA roots yet", self.name),
            )
        })?;
        Ok(bundle.trust_domain().clone())
    }

    fn expected_in(&self, target: &str, dc: &str) -> Result<ServiceId, Error> {
        Ok(ServiceId {
            host: self.trust_domain()?.to_string(),
            partition: DEFAULT_PARTITION.to_owned(),
            namespace: DEFAULT_NAMESPACE.to_owned(),
            datacenter: dc.to_owned(),
            service: target.to_owned(),
        })
    }

    /// Checks a server's chain as [`ConnectService::dial_with`] does: with a datacenter in
    /// `opts`, the server must be `target` in that datacenter and in our trust domain.
    ///
    /// Errors: `InvalidParameter` for a malformed datacenter name, then as
    /// [`ConnectService::verify_server`].
    pub fn verify_server_with(
        &self,
        target: &str,
        opts: &DialOptions,
        chain: &[CertificateDer<'_>],
    ) -> Result<SpiffeId, Error> {
        let Some(dc) = opts.datacenter.as_deref() else {
            return self.verify_server(target, chain);
        };
        check_service_name("target", target)?;
        check_datacenter_name("datacenter", dc)?;
        let expected = self.expected_in(target, dc)?;
        self.tls
            .client_with(expected, None, true)?
            .verify_server_chain(chain)
    }

    /// Checks a server's chain (leaf first) as [`ConnectService::dial`] does inside its
    /// handshake: it verifies against the current roots and names `target` (Consul docs:
    /// Connect-Native). For applications whose own TLS stack did the handshake.
    ///
    /// Errors: `PeerIdentityMismatch`, `CertificateVerification`, `InvalidCertificate`,
    /// `NotReady`.
    pub fn verify_server(
        &self,
        target: &str,
        chain: &[CertificateDer<'_>],
    ) -> Result<SpiffeId, Error> {
        self.tls.client(target)?.verify_server_chain(chain)
    }

    /// Current chain, key and roots as PEM, for applications with their own TLS stack.
    pub fn material(&self) -> Result<Material, Error> {
        self.tls.material()
    }

    /// Explains whether a peer (certificate or SPIFFE URI) may connect to this service.
    pub fn authorize(&self, peer: PeerInput<'_>) -> Result<PeerAuthorization, Error> {
        self.tls.authorize_peer(peer)
    }

    /// Stops the watchers and deregisters the instances this handle registered. Idempotent.
    pub fn close(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
        let ids: Vec<String> = self
            .registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
            .collect();
        if ids.is_empty() || self.agent.is_closed() {
            return;
        }
        let backend = self.agent.backend().clone();
        let token = self.agent.token().map(str::to_owned);
        let done = self.agent.handle().spawn(async move {
            for id in ids {
                // Best effort: an unreachable backend keeps the instance until it is cleaned up
                // there.
                let _ = backend.deregister_service(token.as_deref(), &id).await;
            }
        });
        // From plain threads, wait, so that a closed service is gone from the catalog when
        // close returns; inside a runtime that would block a worker.
        if tokio::runtime::Handle::try_current().is_err() {
            let _ = self.agent.handle().block_on(done);
        }
    }
}

/// The socket addresses of catalog entries (their WAN address when `wan`), in random order;
/// names that do not resolve are skipped. Dials and the mesh gateway pick next hops with it.
pub(crate) async fn addresses(entries: &[ServiceEntry], wan: bool) -> Vec<SocketAddr> {
    let mut addrs: Vec<SocketAddr> = Vec::new();
    for e in entries {
        let (host, port) = if wan {
            e.wan_address()
        } else {
            e.dial_address()
        };
        if let Ok(mut resolved) = tokio::net::lookup_host((host, port)).await
            && let Some(a) = resolved.next()
        {
            addrs.push(a);
        }
    }
    shuffle(&mut addrs);
    addrs
}

/// Shuffles in place, so that load spreads over instances (and fixed gateway lists).
pub(crate) fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rand::random_range(0..=i);
        v.swap(i, j);
    }
}
