//! [`MeshGateway`]: the accept loop, SNI routing and byte splicing.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use super::hello::read_client_hello;
use crate::agent::service::{addresses, shuffle};
use crate::agent::{Agent, MESH_GATEWAY_SERVICE};
use crate::catalog::{ServiceAddress, ServiceEntry, ServiceKind, ServiceRegistration};
use crate::spiffe::{DEFAULT_NAMESPACE, TrustDomain, is_valid_datacenter_name};
use crate::{Error, ErrorKind};

/// A gateway's settings. Defaults: service `mesh-gateway`, 10 s for the ClientHello, 5 s to
/// connect onwards, 4096 connections at once.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// The name the gateway registers under, and looks other datacenters' gateways up by.
    pub service: String,
    /// How long a client may take to send its whole ClientHello.
    pub hello_timeout: Duration,
    /// How long connecting to the next hop may take.
    pub connect_timeout: Duration,
    /// Connections open at once; beyond this new ones are closed at once.
    pub max_connections: usize,
    /// Fixed WAN addresses of other datacenters' gateways, used instead of asking the catalog
    /// (`?dc=`) for those datacenters.
    pub remote_gateways: BTreeMap<String, Vec<SocketAddr>>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            service: MESH_GATEWAY_SERVICE.to_owned(),
            hello_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            max_connections: 4096,
            remote_gateways: BTreeMap::new(),
        }
    }
}

/// Where an SNI sends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An instance of this service in the gateway's datacenter.
    Local(String),
    /// The gateway of this (other) datacenter.
    Datacenter(String),
}

/// Routes an SNI (Consul docs: Mesh Gateways, SNI names): `<svc>.default.<dc>.internal.<td>`
/// goes to a local instance when `dc` is the gateway's, else to `dc`'s gateway, as does
/// `<dc>.internal.<td>`. Subsets, other namespaces and partitions (`internal-v1`), prepared
/// queries, peers, another trust domain and the local datacenter's own wildcard route
/// nowhere (`None`).
pub fn classify(sni: &str, trust_domain: &TrustDomain, local_dc: &str) -> Option<Route> {
    let sni = sni.to_ascii_lowercase();
    let suffix = format!(".internal.{}", trust_domain.as_str().to_ascii_lowercase());
    let head = sni.strip_suffix(&suffix)?;
    let labels: Vec<&str> = head.split('.').collect();
    let route = match labels.as_slice() {
        [dc] => Route::Datacenter((*dc).to_owned()),
        [service, namespace, dc] if *namespace == DEFAULT_NAMESPACE => {
            if !crate::spiffe::is_valid_service_name(service) {
                return None;
            }
            if *dc == local_dc {
                Route::Local((*service).to_owned())
            } else {
                Route::Datacenter((*dc).to_owned())
            }
        }
        _ => return None,
    };
    match &route {
        Route::Datacenter(dc) if dc == local_dc || !is_valid_datacenter_name(dc) => None,
        _ => Some(route),
    }
}

/// What a gateway has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GatewayStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections spliced to a next hop.
    pub routed: u64,
    /// Connections closed without a route: no or bad ClientHello, unknown SNI, no healthy
    /// next hop, over the connection limit.
    pub refused: u64,
    /// Connections open now.
    pub active: u64,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    routed: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
}

struct Inner {
    agent: Agent,
    config: GatewayConfig,
    counters: Counters,
    slots: Arc<Semaphore>,
}

/// A mesh gateway over an agent's catalog. Cheap to clone.
#[derive(Clone)]
pub struct MeshGateway {
    inner: Arc<Inner>,
}

impl fmt::Debug for MeshGateway {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeshGateway")
            .field("service", &self.inner.config.service)
            .field("datacenter", &self.inner.agent.datacenter())
            .finish_non_exhaustive()
    }
}

/// Closes an active slot's count when a connection ends, however it ends.
struct Active<'a>(&'a Counters);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl MeshGateway {
    /// A gateway for `agent`'s datacenter.
    ///
    /// Errors: `InvalidParameter` for a bad service name, a zero connection limit or a bad
    /// datacenter name among the fixed remote gateways.
    pub fn new(agent: Agent, config: GatewayConfig) -> Result<MeshGateway, Error> {
        crate::spiffe::check_service_name("gateway service", &config.service)?;
        if config.max_connections == 0 {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                "a gateway's connection limit must be at least 1",
            ));
        }
        for dc in config.remote_gateways.keys() {
            crate::spiffe::check_datacenter_name("remote gateway datacenter", dc)?;
        }
        let slots = Arc::new(Semaphore::new(config.max_connections));
        Ok(MeshGateway {
            inner: Arc::new(Inner {
                agent,
                config,
                counters: Counters::default(),
                slots,
            }),
        })
    }

    /// The counters so far.
    pub fn stats(&self) -> GatewayStats {
        let c = &self.inner.counters;
        GatewayStats {
            accepted: c.accepted.load(Ordering::Relaxed),
            routed: c.routed.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            active: c.active.load(Ordering::Relaxed),
        }
    }

    /// The registration Consul makes for a mesh gateway: `Kind: mesh-gateway`, the LAN address
    /// as the service's, and `TaggedAddresses` `lan` and `wan` (Consul docs: Mesh Gateways).
    pub fn registration(&self, lan: SocketAddr, wan: SocketAddr) -> ServiceRegistration {
        let mut reg = ServiceRegistration::new(&self.inner.config.service, lan.port());
        reg.kind = ServiceKind::MeshGateway;
        reg.id = format!("{}-{}", self.inner.config.service, lan.port());
        reg.address = lan.ip().to_string();
        reg.tagged_addresses.insert(
            "lan".into(),
            ServiceAddress::new(&lan.ip().to_string(), lan.port()),
        );
        reg.tagged_addresses.insert(
            "wan".into(),
            ServiceAddress::new(&wan.ip().to_string(), wan.port()),
        );
        reg
    }

    /// Registers this gateway in its agent's catalog; returns the instance ID.
    pub async fn register(&self, lan: SocketAddr, wan: SocketAddr) -> Result<String, Error> {
        let reg = self.registration(lan, wan);
        let id = reg.id.clone();
        let agent = &self.inner.agent;
        agent.backend().register_service(agent.token(), reg).await?;
        Ok(id)
    }

    /// Removes a registration made by [`MeshGateway::register`].
    pub async fn deregister(&self, id: &str) -> Result<(), Error> {
        let agent = &self.inner.agent;
        agent.backend().deregister_service(agent.token(), id).await
    }

    /// Serves `listener` on the agent's runtime until the returned task is aborted.
    pub fn spawn(&self, listener: TcpListener) -> JoinHandle<()> {
        let gw = self.clone();
        self.inner.agent.handle().spawn(gw.serve(listener))
    }

    /// Accepts connections for ever, one task each.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let tcp = match listener.accept().await {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors and the like pass; a pause keeps this from spinning.
                    tracing::warn!(error = %e, "mesh gateway: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let c = &self.inner.counters;
            c.accepted.fetch_add(1, Ordering::Relaxed);
            let Ok(permit) = Arc::clone(&self.inner.slots).try_acquire_owned() else {
                c.refused.fetch_add(1, Ordering::Relaxed);
                drop(tcp);
                continue;
            };
            c.active.fetch_add(1, Ordering::Relaxed);
            let gw = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _active = Active(&gw.inner.counters);
                if let Err(e) = gw.handle(tcp).await {
                    gw.inner.counters.refused.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(error = %e, "mesh gateway: connection closed");
                }
            });
        }
    }

    async fn handle(&self, mut tcp: TcpStream) -> Result<(), Error> {
        let _ = tcp.set_nodelay(true);
        let hello = read_client_hello(&mut tcp, self.inner.config.hello_timeout).await?;
        let sni = hello
            .server_name
            .as_deref()
            .ok_or_else(|| Error::new(ErrorKind::Tls, "ClientHello without SNI"))?;
        let agent = &self.inner.agent;
        let roots = agent.roots().await?;
        let td = TrustDomain::new(&roots.trust_domain)?;
        let route = classify(sni, &td, agent.datacenter())
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no route for SNI {sni:?}")))?;
        let addrs = self.next_hops(&route).await?;
        let mut upstream = None;
        let mut last = Error::new(
            ErrorKind::ConnectionRefused,
            format!("no healthy next hop for SNI {sni:?}"),
        );
        for addr in addrs {
            match tokio::time::timeout(self.inner.config.connect_timeout, TcpStream::connect(addr))
                .await
            {
                Ok(Ok(s)) => {
                    upstream = Some(s);
                    break;
                }
                Ok(Err(e)) => last = crate::tls::error_from_io(&e),
                Err(_) => {
                    last = Error::new(ErrorKind::Timeout, format!("connect {addr}: timed out"))
                }
            }
        }
        let mut upstream = upstream.ok_or(last)?;
        let _ = upstream.set_nodelay(true);
        self.inner.counters.routed.fetch_add(1, Ordering::Relaxed);
        tokio::io::AsyncWriteExt::write_all(&mut upstream, &hello.raw)
            .await
            .map_err(|e| crate::tls::error_from_io(&e))?;
        // Either side ending ends both: the TLS session inside is the peers' business.
        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
        Ok(())
    }

    async fn next_hops(&self, route: &Route) -> Result<Vec<SocketAddr>, Error> {
        let agent = &self.inner.agent;
        let (entries, wan): (Arc<Vec<ServiceEntry>>, bool) = match route {
            Route::Local(service) => (agent.health_connect(service).await?, false),
            Route::Datacenter(dc) => {
                if let Some(fixed) = self.inner.config.remote_gateways.get(dc) {
                    let mut v = fixed.clone();
                    shuffle(&mut v);
                    return Ok(v);
                }
                (
                    agent.mesh_gateways(&self.inner.config.service, dc).await?,
                    true,
                )
            }
        };
        Ok(addresses(&entries, wan).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    #[test]
    fn sni_routes_as_consuls_gateways() {
        let td = TrustDomain::new(TD).unwrap();
        let r = |s: &str| classify(&s.replace("TD", TD), &td, "dc1");
        assert_eq!(
            r("db.default.dc1.internal.TD"),
            Some(Route::Local("db".into()))
        );
        assert_eq!(
            r("DB.Default.DC2.internal.TD"),
            Some(Route::Datacenter("dc2".into())),
            "compared without case, as DNS names are"
        );
        assert_eq!(r("dc2.internal.TD"), Some(Route::Datacenter("dc2".into())));
        for none in [
            "dc1.internal.TD",
            "db.default.dc1.internal.other.consul",
            "v2.db.default.dc1.internal.TD",
            "db.ns1.dc1.internal.TD",
            "db.default.part1.dc1.internal-v1.TD",
            "q.default.dc1.query.TD",
            "db.default.default.peer.external.TD",
            "internal.TD",
            ".internal.TD",
            "db..dc2.internal.TD",
            "localhost",
            "",
        ] {
            assert_eq!(r(none), None, "{none}");
        }
    }
}
