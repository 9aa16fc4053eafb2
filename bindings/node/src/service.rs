//! `Service`: one Connect service's identity (PEM material for Node's `tls`), the explained
//! authorization of peers, the client-side check of servers, and the change events that
//! drive certificate rotation.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use connect_core::agent::ConnectService;
use connect_core::catalog::MeshGatewayMode;
use connect_core::tls::PeerInput;
use connect_core::{Error, ErrorKind};
use napi::bindgen_prelude::{Buffer, Either3, Function};
use napi::threadsafe_function::ThreadsafeFunctionCallMode;
use napi_derive::napi;
use rustls_pki_types::CertificateDer;
use tokio::task::AbortHandle;

use crate::error::{Outcome, Result, map_error};
use crate::lazy::Lazy;

/// How long `ready()` waits by default.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The service's current certificate material, for Node's `tls`.
#[napi(object)]
#[derive(Debug)]
pub struct Material {
    /// Our SPIFFE ID (`spiffe://<trust domain>/ns/default/dc/<dc>/svc/<name>`).
    pub spiffe_id: String,
    /// Leaf then intermediates, PEM.
    pub chain_pem: String,
    /// The leaf's private key, PEM.
    pub key_pem: String,
    /// Every trusted CA root, PEM.
    pub roots_pem: String,
    /// The trust domain of the roots.
    pub trust_domain: String,
    /// The leaf's NotAfter, in milliseconds since the Unix epoch.
    pub not_after_ms: f64,
    /// The generation of the identity this material comes from; it moves on every change.
    pub generation: i64,
}

/// Whether a peer may connect, and why (Consul's reasons).
#[napi(object)]
#[derive(Debug)]
pub struct PeerAuthorization {
    /// The peer's SPIFFE ID.
    pub peer: String,
    /// Whether intentions allow it.
    pub allowed: bool,
    /// Why (`Matched L4 intention: …`, `Default behavior configured by ACLs`, …).
    pub reason: String,
}

/// A healthy instance to dial.
#[napi(object)]
#[derive(Debug)]
pub struct Address {
    /// The IP address.
    pub host: String,
    /// The port.
    pub port: u32,
}

/// Where a dial goes: Consul's upstream `Datacenter` and `MeshGateway.Mode`.
#[napi(object)]
#[derive(Debug, Default)]
pub struct DialOptions {
    /// The destination's datacenter (default: the agent's own). The server must then present
    /// the target's SPIFFE ID in that datacenter of our trust domain.
    pub datacenter: Option<String>,
    /// `'none'` (default: dial the instance directly), `'local'` (through a mesh gateway of
    /// our datacenter) or `'remote'` (through one of the target's datacenter).
    #[napi(ts_type = "'none' | 'local' | 'remote'")]
    pub mesh_gateway: Option<String>,
}

impl DialOptions {
    fn to_core(&self) -> std::result::Result<connect_core::agent::DialOptions, Error> {
        let mode = match self.mesh_gateway.as_deref() {
            None => MeshGatewayMode::None,
            Some(m) => MeshGatewayMode::from_name(m).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidParameter,
                    format!("invalid mesh gateway mode {m:?}: must be 'none', 'local' or 'remote'"),
                )
            })?,
        };
        match &self.datacenter {
            Some(dc) => {
                Ok(connect_core::agent::DialOptions::datacenter(dc.clone()).mesh_gateway(mode))
            }
            None if self.mesh_gateway.is_some() => Err(Error::new(
                ErrorKind::InvalidParameter,
                "meshGateway applies to a dial to another datacenter: give datacenter too",
            )),
            None => Ok(connect_core::agent::DialOptions::default()),
        }
    }
}

/// Where and how to dial: the addresses in order, and the SNI to send.
#[napi(object)]
#[derive(Debug)]
pub struct DialRoute {
    /// Instances of the target, or mesh gateways, in the order to try them.
    pub addrs: Vec<Address>,
    /// The SNI to send (mesh gateways route by it); absent for a plain dial.
    pub server_name: Option<String>,
}

/// The native service; `require('libconnect')`'s `Service` wraps it.
#[napi]
#[derive(Debug)]
pub struct NativeService {
    name: String,
    svc: Lazy<Arc<ConnectService>>,
    watches: Mutex<Vec<AbortHandle>>,
}

impl NativeService {
    pub(crate) fn new(name: String, svc: Lazy<Arc<ConnectService>>) -> Self {
        NativeService {
            name,
            svc,
            watches: Mutex::new(Vec::new()),
        }
    }

    fn get(&self) -> Result<Arc<ConnectService>> {
        self.svc.get().map_err(map_error)
    }
}

/// Runs `f` with the service on its agent's runtime once the service is up, and waits for it.
async fn on_service<T, F, Fut>(
    svc: &Lazy<Arc<ConnectService>>,
    f: F,
) -> std::result::Result<T, Error>
where
    F: FnOnce(Arc<ConnectService>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    let svc = svc.wait().await?;
    let handle = svc.agent().handle().clone();
    handle
        .spawn(f(svc))
        .await
        .map_err(|e| Error::new(ErrorKind::Closed, format!("the agent is closed: {e}")))?
}

fn generation(g: u64) -> i64 {
    i64::try_from(g).unwrap_or(i64::MAX)
}

#[napi]
impl NativeService {
    /// The service name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.name.clone()
    }

    /// Resolves once the service has a leaf that verifies against the current roots; rejects
    /// with `TIMEOUT` after `timeoutMs` (default 10 000).
    #[napi(ts_return_type = "Promise<void>")]
    pub async fn ready(&self, timeout_ms: Option<u32>) -> Outcome<()> {
        let timeout = timeout_ms.map_or(DEFAULT_READY_TIMEOUT, |ms| {
            Duration::from_millis(u64::from(ms))
        });
        let svc = match self.svc.wait().await {
            Ok(s) => s,
            Err(e) => return Outcome(Err(e)),
        };
        let handle = svc.agent().handle().clone();
        handle
            .spawn(async move { svc.ready_wait(timeout).await })
            .await
            .unwrap_or_else(|e| {
                Err(Error::new(
                    ErrorKind::Closed,
                    format!("the agent is closed: {e}"),
                ))
            })
            .into()
    }

    /// Whether the service has a leaf that verifies against the current roots.
    #[napi]
    pub fn is_ready(&self) -> bool {
        self.svc.get().is_ok_and(|s| s.ready())
    }

    /// The current chain, key and roots. Throws `NOT_READY` before the first leaf.
    #[napi]
    pub fn material(&self) -> Result<Material> {
        let m = self.get()?.material().map_err(map_error)?;
        Ok(Material {
            spiffe_id: m.spiffe_id.to_string(),
            chain_pem: m.chain_pem,
            key_pem: m.key_pem.to_string(),
            roots_pem: m.roots_pem,
            trust_domain: m.trust_domain,
            // Milliseconds fit an f64 exactly for any date a certificate can carry.
            #[expect(clippy::cast_precision_loss, reason = "exact below 2^53 ms")]
            not_after_ms: (m.not_after.unix_timestamp_nanos() / 1_000_000) as f64,
            generation: generation(m.generation),
        })
    }

    /// The identity's generation (moves on every leaf or roots change).
    #[napi]
    pub fn generation(&self) -> Result<i64> {
        Ok(generation(self.get()?.identity().generation()))
    }

    /// Explains whether a peer may connect to this service: a SPIFFE URI (already verified
    /// by the caller's TLS stack), a PEM chain, the peer's leaf as DER, or its chain as DER
    /// certificates (leaf first). Certificates are verified against the current roots first.
    #[napi]
    pub fn authorize(
        &self,
        peer: Either3<String, Buffer, Vec<Buffer>>,
    ) -> Result<PeerAuthorization> {
        let svc = self.get()?;
        let decision = match &peer {
            Either3::A(s) if s.contains("-----BEGIN") => svc.authorize(PeerInput::ChainPem(s)),
            Either3::A(s) => svc.authorize(PeerInput::Uri(s)),
            Either3::B(der) => svc.authorize(PeerInput::CertDer(der)),
            Either3::C(chain) => {
                let ders: Vec<CertificateDer<'_>> = chain
                    .iter()
                    .map(|b| CertificateDer::from(b.as_ref()))
                    .collect();
                svc.authorize(PeerInput::ChainDer(&ders))
            }
        }
        .map_err(map_error)?;
        Ok(PeerAuthorization {
            peer: decision.peer.to_string(),
            allowed: decision.allowed,
            reason: decision.reason,
        })
    }

    /// `authorize` for a server's accept path: returns the decision when the
    /// peer is allowed, throws `AUTHORIZATION_DENIED` (with Consul's reason) when it is not.
    #[napi]
    pub fn admit(&self, peer: Either3<String, Buffer, Vec<Buffer>>) -> Result<PeerAuthorization> {
        let d = self.authorize(peer)?;
        if d.allowed {
            Ok(d)
        } else {
            Err(crate::error::error(
                ErrorKind::AuthorizationDenied,
                format!("{} may not connect: {}", d.peer, d.reason),
            ))
        }
    }

    /// A JWT-SVID (ES256, valid 5 minutes) for this service with `audiences`.
    #[napi(ts_return_type = "Promise<string>")]
    pub async fn jwt_svid(&self, audiences: Vec<String>) -> Outcome<String> {
        on_service(&self.svc, move |svc| async move {
            svc.jwt_svid(&audiences).await
        })
        .await
        .into()
    }

    /// The addresses of healthy instances of `target`, in the order to try them. Rejects with
    /// `CONNECTION_REFUSED` when there is none.
    #[napi(ts_return_type = "Promise<Array<Address>>")]
    pub async fn resolve(&self, target: String) -> Outcome<Vec<Address>> {
        let svc = match self.svc.wait().await {
            Ok(s) => s,
            Err(e) => return Outcome(Err(e)),
        };
        let handle = svc.agent().handle().clone();
        handle
            .spawn(async move { svc.resolve(&target).await })
            .await
            .unwrap_or_else(|e| {
                Err(Error::new(
                    ErrorKind::Closed,
                    format!("the agent is closed: {e}"),
                ))
            })
            .map(|addrs| {
                addrs
                    .into_iter()
                    .map(|a| Address {
                        host: a.ip().to_string(),
                        port: u32::from(a.port()),
                    })
                    .collect()
            })
            .into()
    }

    /// Where a dial to `target` with `options` goes: the addresses to try in order (instances
    /// of the target in its datacenter, or mesh gateways) and the SNI to send. Rejects with
    /// `INVALID_PARAMETER` for a malformed target or datacenter name, an unknown mode or a
    /// datacenter the agent has no path to; `CONNECTION_REFUSED` when no instance or gateway
    /// is healthy.
    #[napi(ts_return_type = "Promise<DialRoute>")]
    pub async fn route(&self, target: String, options: Option<DialOptions>) -> Outcome<DialRoute> {
        let opts = match options.unwrap_or_default().to_core() {
            Ok(o) => o,
            Err(e) => return Outcome(Err(e)),
        };
        let svc = match self.svc.wait().await {
            Ok(s) => s,
            Err(e) => return Outcome(Err(e)),
        };
        let handle = svc.agent().handle().clone();
        handle
            .spawn(async move { svc.route(&target, &opts).await })
            .await
            .unwrap_or_else(|e| {
                Err(Error::new(
                    ErrorKind::Closed,
                    format!("the agent is closed: {e}"),
                ))
            })
            .map(|r| DialRoute {
                addrs: r
                    .addrs
                    .into_iter()
                    .map(|a| Address {
                        host: a.ip().to_string(),
                        port: u32::from(a.port()),
                    })
                    .collect(),
                server_name: r.server_name,
            })
            .into()
    }

    /// The SNI a dial to `target` with `options` sends (`<target>.default.<dc>.internal.<trust
    /// domain>`, by which mesh gateways route); throws `INVALID_PARAMETER` for a bad target or
    /// datacenter name, `NOT_READY` before the first roots.
    #[napi]
    pub fn server_name(&self, target: String, options: DialOptions) -> Result<String> {
        let opts = options.to_core().map_err(map_error)?;
        let svc = self.get()?;
        connect_core::spiffe::check_service_name("target", &target)
            .map_err(|e| map_error(e.into()))?;
        let Some(dc) = opts.datacenter.as_deref() else {
            return Err(crate::error::error(
                ErrorKind::InvalidParameter,
                "a server name is for a dial to a datacenter: give datacenter",
            ));
        };
        connect_core::spiffe::check_datacenter_name("datacenter", dc)
            .map_err(|e| map_error(e.into()))?;
        let td = connect_core::spiffe::TrustDomain::new(
            &svc.material().map_err(map_error)?.trust_domain,
        )
        .map_err(|e| map_error(e.into()))?;
        Ok(connect_core::spiffe::service_sni(
            &target, None, "", "", dc, &td,
        ))
    }

    /// `verifyServer` for a dial with `options`: with a datacenter, the server must be
    /// `target` in that datacenter of our trust domain.
    #[napi]
    pub fn verify_server_with(
        &self,
        target: String,
        options: Option<DialOptions>,
        chain: Vec<Buffer>,
    ) -> Result<String> {
        let opts = options.unwrap_or_default().to_core().map_err(map_error)?;
        let ders: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|b| CertificateDer::from(b.as_ref()))
            .collect();
        self.get()?
            .verify_server_with(&target, &opts, &ders)
            .map(|id| id.to_string())
            .map_err(map_error)
    }

    /// Checks a server's chain (DER, leaf first) the way libconnect's own client does: it
    /// verifies against the current roots and names `target`. Returns the server's SPIFFE
    /// ID; throws `PEER_IDENTITY_MISMATCH`, `CERTIFICATE_VERIFICATION` or
    /// `INVALID_CERTIFICATE`.
    #[napi]
    pub fn verify_server(&self, target: String, chain: Vec<Buffer>) -> Result<String> {
        let ders: Vec<CertificateDer<'_>> = chain
            .iter()
            .map(|b| CertificateDer::from(b.as_ref()))
            .collect();
        self.get()?
            .verify_server(&target, &ders)
            .map(|id| id.to_string())
            .map_err(map_error)
    }

    /// Calls `callback(generation)` on the JavaScript thread after every change of the leaf
    /// or the roots. Does not keep the process alive; stop it with the handle's `close()`.
    #[napi(ts_args_type = "callback: (generation: number) => void")]
    pub fn watch(&self, callback: Function<'_, i64, ()>) -> Result<ServiceWatch> {
        let tsfn = callback
            .build_threadsafe_function()
            .weak::<true>()
            .callee_handled::<false>()
            .build()
            .map_err(|e| crate::error::error(ErrorKind::Internal, e.to_string()))?;
        let svc = self.svc.clone();
        let task = napi::bindgen_prelude::spawn(async move {
            let Ok(s) = svc.wait().await else { return };
            let mut rx = s.identity().watch();
            drop(s);
            // A service that became ready while we waited has changed too.
            rx.mark_changed();
            while rx.changed().await.is_ok() {
                let g = rx.borrow_and_update().generation();
                tsfn.call(generation(g), ThreadsafeFunctionCallMode::NonBlocking);
            }
        });
        let abort = task.abort_handle();
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches.retain(|w| !w.is_finished());
        watches.push(abort.clone());
        Ok(ServiceWatch { abort })
    }

    /// Stops the service's watchers (open connections are unaffected). Idempotent.
    #[napi]
    pub fn close(&self) {
        for w in self
            .watches
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            w.abort();
        }
        if let Ok(s) = self.svc.get() {
            s.close();
        }
    }
}

/// A running `watch()`; `close()` stops it.
#[napi]
#[derive(Debug)]
pub struct ServiceWatch {
    abort: AbortHandle,
}

#[napi]
impl ServiceWatch {
    /// Stops the watch. Idempotent.
    #[napi]
    pub fn close(&self) {
        self.abort.abort();
    }
}
