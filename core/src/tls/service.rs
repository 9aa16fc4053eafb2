//! [`Service`]: one service's server and clients together, as Consul's Go `connect.Service`.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use rustls::{ClientConfig, ServerConfig};
use tokio::net::ToSocketAddrs;

use super::authorizer::Authorizer;
use super::client::{ExpectedPeer, MtlsClient, mtls_client};
use super::identity::Identity;
use super::material::{Material, PeerAuthorization, PeerInput};
use super::net::{Connection, Listener};
use super::server::{MtlsServer, mtls_server};
use crate::Result;

/// Clients kept per expected peer; beyond this the cache starts over (a service talks to a
/// handful of upstreams, so this only bounds a misuse).
const MAX_CLIENTS: usize = 256;

/// What tells two clients of one service apart: whom they expect, the SNI they send and
/// whether they check trust domain and datacenter too.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    expected: ExpectedPeer,
    server_name: Option<String>,
    strict: bool,
}

/// One service's mTLS: the server side, and a client per expected peer (each with its own
/// session cache). Cheap to clone.
#[derive(Clone)]
pub struct Service {
    server: MtlsServer,
    /// Each client with the identity generation it was built at.
    clients: Arc<Mutex<HashMap<ClientKey, (u64, MtlsClient)>>>,
}

impl fmt::Debug for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Service")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service presenting `identity` and admitting the peers `authorizer` allows.
    pub fn new(identity: Identity, authorizer: impl Authorizer) -> Result<Service> {
        crate::spiffe::check_service_name("service name", identity.service())?;
        Ok(Service::from_server(
            mtls_server(&identity).authorize(authorizer).build()?,
        ))
    }

    /// A service around a server configured by hand.
    pub fn from_server(server: MtlsServer) -> Service {
        Service {
            server,
            clients: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The identity.
    pub fn identity(&self) -> &Identity {
        self.server.identity()
    }

    /// The server side.
    pub fn server(&self) -> &MtlsServer {
        &self.server
    }

    /// The rustls server config (Go's `ServerTLSConfig`).
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.server.config()
    }

    /// The client for `expected`, built on first use and kept, so its sessions resume —
    /// until this service's identity changes (a new leaf or new roots): then a new client
    /// with an empty session cache is built, so the next handshakes are full ones in which
    /// both sides present their current certificates. A resumed session would carry the
    /// certificates of before a rotation on into the new one.
    pub fn client(&self, expected: impl Into<ExpectedPeer>) -> Result<MtlsClient> {
        self.client_with(expected, None, false)
    }

    /// Like [`Service::client`], for a client that sends `server_name` as SNI (mesh gateways
    /// route by it) and, when `strict`, also requires the server's trust domain and
    /// datacenter (see [`MtlsClientBuilder::strict`](super::MtlsClientBuilder::strict)).
    pub fn client_with(
        &self,
        expected: impl Into<ExpectedPeer>,
        server_name: Option<&str>,
        strict: bool,
    ) -> Result<MtlsClient> {
        let key = ClientKey {
            expected: expected.into(),
            server_name: server_name.map(str::to_owned),
            strict,
        };
        let generation = self.identity().snapshot().generation();
        let mut clients = self.clients.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((built_at, c)) = clients.get(&key)
            && *built_at == generation
        {
            return Ok(c.clone());
        }
        if clients.len() >= MAX_CLIENTS {
            clients.clear();
        }
        let mut builder = mtls_client(self.identity(), key.expected.clone()).strict(strict);
        if let Some(name) = &key.server_name {
            builder = builder.server_name(name.clone());
        }
        let c = builder.build()?;
        clients.insert(key, (generation, c.clone()));
        Ok(c)
    }

    /// The rustls client config for `expected`.
    pub fn client_config(&self, expected: impl Into<ExpectedPeer>) -> Result<Arc<ClientConfig>> {
        Ok(self.client(expected)?.config())
    }

    /// Listens on `addr`; see [`Listener`].
    pub async fn listen(&self, addr: impl ToSocketAddrs) -> Result<Listener> {
        self.server.listen(addr).await
    }

    /// Connects to `addr` and expects `expected` there (Go's `Dial` with a static resolver).
    pub async fn dial_addr(
        &self,
        addr: impl ToSocketAddrs,
        expected: impl Into<ExpectedPeer>,
    ) -> Result<Connection> {
        self.client(expected)?.dial_addr(addr).await
    }

    /// The current PEM material.
    pub fn material(&self) -> Result<Material> {
        self.identity().material()
    }

    /// Whether a peer would be admitted, and why; see [`MtlsServer::authorize_peer`].
    pub fn authorize_peer(&self, input: PeerInput<'_>) -> Result<PeerAuthorization> {
        self.server.authorize_peer(input)
    }
}
