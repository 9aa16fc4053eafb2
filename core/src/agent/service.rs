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
use crate::catalog::{ServiceConnect, ServiceRegistration};
use crate::intentions::{IntentionIndex, SharedIntentionIndex};
use crate::spiffe::SpiffeId;
use crate::tls::{
    self, Bundle, Connection, Identity, Listener, Material, PeerAuthorization, PeerInput,
};
use crate::{Error, ErrorKind};

/// How long a background watcher waits before retrying after an error (the cache backs off
/// its own fetches; this only paces the loop).
const RETRY: Duration = Duration::from_secs(1);

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
                    shared.store(IntentionIndex::new(list.iter().cloned(), policy));
                }
            }
        }));
        Ok(())
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
        let mut addrs: Vec<SocketAddr> = Vec::new();
        for e in instances.iter() {
            let (host, port) = e.dial_address();
            if let Ok(mut resolved) = tokio::net::lookup_host((host, port)).await
                && let Some(a) = resolved.next()
            {
                addrs.push(a);
            }
        }
        shuffle(&mut addrs);
        Ok(addrs)
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

fn shuffle<T>(v: &mut [T]) {
    for i in (1..v.len()).rev() {
        let j = rand::random_range(0..=i);
        v.swap(i, j);
    }
}
