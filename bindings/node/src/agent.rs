//! `Agent`: the per-process agent (an in-process `-dev` server, or a `connect agent` / Consul
//! agent over HTTP), its intentions and CA calls, and the services built on it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use connect_core::agent::{Agent, AgentConfig, AgentOverrides};
use connect_core::ca::CaConfiguration;
use connect_core::catalog::{ServiceConnect, ServiceRegistration};
use connect_core::intentions::IntentionAction;
use connect_core::{Error, ErrorKind};
use napi_derive::napi;

use crate::error::{Outcome, Result, map_error};
use crate::lazy::{Filler, Lazy};
use crate::service::NativeService;

/// How to reach the agent. Every field is optional and defaults to Consul's environment
/// variables (`CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT`, `CONSUL_HTTP_SSL`).
#[napi(object)]
#[derive(Debug, Default)]
pub struct AgentOptions {
    /// `host:port` or a URL (`http://…`, `https://…`) of a `connect agent` or a Consul
    /// agent; default `CONSUL_HTTP_ADDR`, then `127.0.0.1:8500`.
    pub address: Option<String>,
    /// The ACL token sent with every request; default `CONSUL_HTTP_TOKEN`.
    pub token: Option<String>,
    /// The datacenter; default the agent's own.
    pub datacenter: Option<String>,
    /// A PEM file of CAs to trust for HTTPS; default `CONSUL_CACERT`.
    pub ca_file: Option<String>,
    /// Use HTTPS when `address` has no scheme; default `CONSUL_HTTP_SSL`.
    pub https: Option<bool>,
    /// Upper bound, in milliseconds, of the random delay before leaves are re-issued after a
    /// CA root rotation (Consul: 30 000).
    pub root_change_jitter_ms: Option<u32>,
}

/// Options of `Agent.dev()`.
#[napi(object)]
#[derive(Debug, Default)]
pub struct DevOptions {
    /// As in `AgentOptions`: the bound of the delay before leaves follow a root rotation.
    pub root_change_jitter_ms: Option<u32>,
}

/// A service instance to register on the agent's node, so that `connect(name)` finds it.
#[napi(object)]
#[derive(Debug, Default)]
pub struct ServiceRegistrationOptions {
    /// The service name.
    pub name: String,
    /// The port the instance listens on.
    pub port: u32,
    /// The address to dial; default the node's address.
    pub address: Option<String>,
    /// The instance ID; default the name.
    pub id: Option<String>,
    /// Tags.
    pub tags: Option<Vec<String>>,
}

fn jitter(ms: Option<u32>) -> Option<Duration> {
    ms.map(|ms| Duration::from_millis(u64::from(ms)))
}

/// Starts the agent on a thread of its own (with an HTTP backend, starting asks the peer
/// for its datacenter, which must not block the event loop). A configuration that could not
/// be made rejects `ready()`, as a failed start does.
fn start(config: std::result::Result<AgentConfig, Error>) -> Lazy<Agent> {
    let config = match config {
        Ok(c) => c,
        Err(e) => return Lazy::ready(Err(e), "agent"),
    };
    let (tx, lazy): (Filler<Agent>, _) = Lazy::new("agent");
    let spawned = std::thread::Builder::new()
        .name("libconnect-start".into())
        .spawn({
            let tx = tx.clone();
            move || {
                tx.send_replace(Some(Agent::new(config)));
            }
        });
    if let Err(e) = spawned {
        tx.send_replace(Some(Err(Error::new(
            ErrorKind::Io,
            format!("starting the agent thread: {e}"),
        ))));
    }
    lazy
}

/// Runs `f` on the agent's own runtime once the agent is up, and waits for it.
pub(crate) async fn on_agent<T, F, Fut>(agent: &Lazy<Agent>, f: F) -> std::result::Result<T, Error>
where
    F: FnOnce(Agent) -> Fut,
    Fut: Future<Output = std::result::Result<T, Error>> + Send + 'static,
    T: Send + 'static,
{
    let agent = agent.wait().await?;
    if agent.is_closed() {
        return Err(Error::new(ErrorKind::Closed, "the agent is closed"));
    }
    let handle = agent.handle().clone();
    handle
        .spawn(f(agent))
        .await
        .map_err(|e| Error::new(ErrorKind::Closed, format!("the agent is closed: {e}")))?
}

/// The native agent; `require('libconnect').Agent` wraps it.
#[napi]
#[derive(Debug)]
pub struct NativeAgent {
    agent: Lazy<Agent>,
}

#[napi]
impl NativeAgent {
    /// Starts an agent that talks to a `connect agent` or a Consul agent over HTTP. Returns at
    /// once; `ready()` settles when the agent has answered.
    #[napi(constructor)]
    pub fn new(options: Option<AgentOptions>) -> Self {
        let o = options.unwrap_or_default();
        let config = AgentConfig::from_env_with(AgentOverrides {
            address: o.address,
            token: o.token,
            datacenter: o.datacenter,
            ca_file: o.ca_file,
            https: o.https,
            root_change_jitter: jitter(o.root_change_jitter_ms),
        });
        NativeAgent {
            agent: start(config),
        }
    }

    /// Starts an agent with an in-process `-dev` server (CA, intentions and catalog in this
    /// process). Returns at once; `ready()` settles when the CA is initialized.
    #[napi(factory)]
    pub fn dev(options: Option<DevOptions>) -> Self {
        let config = AgentConfig::dev().with_overrides(AgentOverrides {
            root_change_jitter: jitter(options.unwrap_or_default().root_change_jitter_ms),
            ..AgentOverrides::default()
        });
        NativeAgent {
            agent: start(config),
        }
    }

    /// Resolves when the agent is up; rejects with the reason it could not start, or with
    /// `TIMEOUT` after `timeoutMs` when given (the start goes on; a later `ready()` can still
    /// resolve). Without it, an agent that accepts connections but never answers rejects with
    /// `TIMEOUT` after the HTTP client's 60 s.
    #[napi(ts_return_type = "Promise<void>")]
    pub async fn ready(&self, timeout_ms: Option<u32>) -> Outcome<()> {
        let started = match timeout_ms {
            None => self.agent.wait().await,
            Some(ms) => {
                tokio::time::timeout(Duration::from_millis(u64::from(ms)), self.agent.wait())
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::new(
                            ErrorKind::Timeout,
                            format!("the agent did not start within {ms} ms"),
                        ))
                    })
            }
        };
        started.map(|_| ()).into()
    }

    /// The datacenter. Throws `NOT_READY` before `ready()`.
    #[napi(getter)]
    pub fn datacenter(&self) -> Result<String> {
        Ok(self.agent.get().map_err(map_error)?.datacenter().to_owned())
    }

    /// Creates or replaces the intention `source → destination`.
    #[napi(
        ts_args_type = "source: string, destination: string, action: 'allow' | 'deny'",
        ts_return_type = "Promise<void>"
    )]
    pub async fn intention_upsert(
        &self,
        source: String,
        destination: String,
        action: String,
    ) -> Outcome<()> {
        let Some(action) = IntentionAction::from_name(&action) else {
            return Outcome(Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("intention action {action:?}: want \"allow\" or \"deny\""),
            )));
        };
        on_agent(&self.agent, move |a| async move {
            a.intention_upsert(&source, &destination, action).await
        })
        .await
        .into()
    }

    /// Deletes the intention `source → destination` (absent is fine).
    #[napi(ts_return_type = "Promise<void>")]
    pub async fn intention_delete(&self, source: String, destination: String) -> Outcome<()> {
        on_agent(&self.agent, move |a| async move {
            a.intention_delete(&source, &destination).await
        })
        .await
        .into()
    }

    /// Whether `source` may connect to `destination`.
    #[napi(ts_return_type = "Promise<boolean>")]
    pub async fn intention_check(&self, source: String, destination: String) -> Outcome<bool> {
        on_agent(&self.agent, move |a| async move {
            a.intention_check(&source, &destination).await
        })
        .await
        .into()
    }

    /// Checks a JWT-SVID for `audience` (signature, expiry, audience); resolves with its
    /// claims as JSON text (`sub` is the SPIFFE ID).
    #[napi(ts_return_type = "Promise<string>")]
    pub async fn validate_jwt_svid(&self, token: String, audience: String) -> Outcome<String> {
        on_agent(&self.agent, move |a| async move {
            let valid = a.validate_jwt_svid(&token, &audience).await?;
            Ok(serde_json::Value::Object(valid.claims).to_string())
        })
        .await
        .into()
    }

    /// Every trusted CA root, PEM.
    #[napi(ts_return_type = "Promise<string>")]
    pub async fn roots_pem(&self) -> Outcome<String> {
        on_agent(
            &self.agent,
            |a| async move { Ok(a.roots().await?.roots_pem()) },
        )
        .await
        .into()
    }

    /// Applies a CA configuration (`provider` and its options, keys as Consul spells them);
    /// a key change rotates the root with cross-signing.
    #[napi(ts_return_type = "Promise<void>")]
    pub async fn ca_set_config(
        &self,
        provider: String,
        config: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Outcome<()> {
        let mut c = CaConfiguration::consul(config.unwrap_or_default());
        c.provider = provider;
        on_agent(
            &self.agent,
            move |a| async move { a.ca_set_config(c).await },
        )
        .await
        .into()
    }

    /// Registers a service instance on the agent's node.
    #[napi(ts_return_type = "Promise<void>")]
    pub async fn register_service(&self, registration: ServiceRegistrationOptions) -> Outcome<()> {
        let Ok(port) = u16::try_from(registration.port) else {
            return Outcome(Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("port {} is out of range", registration.port),
            )));
        };
        let mut reg = ServiceRegistration::new(&registration.name, port);
        reg.address = registration.address.unwrap_or_default();
        reg.id = registration.id.unwrap_or_default();
        reg.tags = registration.tags.unwrap_or_default();
        reg.connect = Some(ServiceConnect::native());
        on_agent(&self.agent, move |a| async move {
            a.register_service(reg).await
        })
        .await
        .into()
    }

    /// Deregisters the instance `id`.
    #[napi(ts_return_type = "Promise<void>")]
    pub async fn deregister_service(&self, id: String) -> Outcome<()> {
        on_agent(&self.agent, move |a| async move {
            a.deregister_service(&id).await
        })
        .await
        .into()
    }

    /// A Connect service named `name`: its certificate follows the agent's leaf and roots.
    #[napi]
    pub fn service(&self, name: String) -> Result<NativeService> {
        let svc = match self.agent.get() {
            Ok(agent) => Lazy::ready(agent.service(&name).map(Arc::new), "service"),
            Err(e) if e.kind() == ErrorKind::NotReady => {
                let (tx, lazy) = Lazy::new("service");
                let agent = self.agent.clone();
                let n = name.clone();
                napi::bindgen_prelude::spawn(async move {
                    let r = agent.wait().await.and_then(|a| a.service(&n).map(Arc::new));
                    tx.send_replace(Some(r));
                });
                lazy
            }
            Err(e) => return Err(map_error(e)),
        };
        // Errors of a service that could not start surface synchronously when they are known.
        if let Err(e) = svc.get()
            && e.kind() != ErrorKind::NotReady
        {
            return Err(map_error(e));
        }
        Ok(NativeService::new(name, svc))
    }

    /// Stops every background task of the agent. Idempotent; later calls reject with
    /// `CLOSED`.
    #[napi]
    pub fn close(&self) {
        match self.agent.get() {
            Ok(a) => a.close(),
            Err(_) => {
                let agent = self.agent.clone();
                napi::bindgen_prelude::spawn(async move {
                    if let Ok(a) = agent.wait().await {
                        a.close();
                    }
                });
            }
        }
    }
}
