//! `connect agent`: one datacenter's control plane behind Consul's HTTP API.
//!
//! Configuration comes from `-config-file`s (Consul's keys, JSON or HCL), overridden by
//! flags. On start the agent prints, on stderr, one line per listener:
//!
//! ```text
//! ==> HTTP API listening on http://127.0.0.1:8500
//! ==> HTTPS API listening on https://127.0.0.1:8501
//! ```
//!
//! The HTTPS listener serves the server certificate the CA issues to this datacenter
//! (`spiffe://<td>/agent/server/dc/<dc>`, DNS SANs `server.<dc>.consul` and `localhost`, the
//! loopback IPs and the bind address), kept current by the same agent cache that serves the
//! `/v1/agent/connect/...` endpoints: see [`connect_core::http::api::Api::https_config`].
//!
//! A secondary datacenter's server (`primary_datacenter` set to another datacenter) starts
//! from the primary's roots, waits for the primary to sign its intermediate before it serves
//! HTTPS, and keeps following the primary: see [`connect_core::server::run_secondary`].
//!
//! SIGINT or SIGTERM stops it: listeners close, requests in flight get a few seconds to
//! finish (blocking queries are cut short), and the process exits 0. Every write was durable
//! when it was acknowledged, so nothing else needs flushing.
//!
//! Both listeners bound every connection (see [`crate::http_server`]), set in the `limits`
//! block of a configuration file:
//!
//! ```hcl
//! limits {
//!   http_max_conns_per_client = 200    # Consul's key; 0 = no per-client limit
//!   https_handshake_timeout   = "5s"   # Consul's key
//!   http_max_conns            = 4096   # all clients, both listeners
//!   http_header_read_timeout  = "10s"
//!   http_body_read_timeout    = "30s"
//!   http_idle_timeout         = "90s"
//! }
//! ```

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config_file::AgentConfigFile;
use axum::extract::Request;
use axum::response::Response;
use connect_core::ca::CaConfiguration;
use connect_core::http::intercept::{Intercept, InterceptLayer, Next, Verdict};
use connect_core::intentions::IntentionAction;
use connect_core::server::{Server, ServerConfig};
use connect_core::{Error, ErrorKind};
use tokio::sync::watch;

use crate::AgentArgs;
use crate::http_server::{ConnTracker, HttpLimits};

/// How long requests in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Everything the agent needs, resolved from files, flags and defaults.
#[derive(Debug)]
struct AgentSettings {
    server: ServerConfig,
    dev: bool,
    http: Option<SocketAddr>,
    https: Option<SocketAddr>,
    log_level: String,
    unknown_keys: Vec<String>,
    connect_disabled: bool,
    limits: HttpLimits,
    /// A secondary datacenter's way to the primary; `None` in a primary.
    federation: Option<connect_core::server::FederationConfig>,
    /// The SPIFFE Workload API socket, when configured.
    workload_api: Option<WorkloadApiSettings>,
    /// The etcd store shared with the datacenter's other servers (see `crate::ha`).
    etcd: Option<connect_core::state::EtcdConfig>,
}

/// The Workload API's socket and the agent that serves it (see [`workload_api`]).
#[derive(Debug)]
struct WorkloadApiSettings {
    config: connect_core::workload::WorkloadApiConfig,
    root_change_jitter: Option<Duration>,
    token: Option<String>,
}

/// `-workload-api-socket` over `workload_api.socket`; the block's other keys over the
/// defaults. No socket: no Workload API.
fn workload_api(
    args: &AgentArgs,
    file: &crate::config_file::WorkloadApiFileConfig,
) -> Result<Option<WorkloadApiSettings>, Error> {
    let Some(socket) = args.workload_api_socket.clone().or(file.socket.clone()) else {
        if !file.workloads.is_empty() {
            tracing::warn!("workload_api has workloads but no socket: the Workload API is off");
        }
        return Ok(None);
    };
    let mut config = connect_core::workload::WorkloadApiConfig::new(socket);
    if let Some(mode) = file.socket_mode {
        config.socket_mode = mode;
    }
    config.socket_uid = file.socket_user;
    config.socket_gid = file.socket_group;
    if let Some(n) = file.max_conns {
        config.max_conns = n as usize;
    }
    if let Some(ttl) = file.jwt_svid_ttl {
        config.jwt_ttl = ttl;
    }
    config.workloads = file.workloads.clone();
    config.check()?;
    Ok(Some(WorkloadApiSettings {
        config,
        root_change_jitter: file.root_change_jitter,
        token: file.token.clone().filter(|t| !t.is_empty()),
    }))
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidParameter, msg)
}

/// Datacenter names: letters, digits, `-` and `_`, as Consul requires (a datacenter is a
/// label of SNI names, so no dots). Node names may also hold dots (host names).
fn check_name(what: &str, name: &str, dots: bool) -> Result<(), Error> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_' || (dots && c == '.');
    if name.is_empty() || !name.chars().all(ok) {
        return Err(invalid(format!(
            "{what} {name:?} is invalid: use letters, digits, '-' and '_'{}",
            if dots { " and '.'" } else { "" }
        )));
    }
    Ok(())
}

fn port(what: &str, value: i64) -> Result<Option<u16>, Error> {
    if value < 0 {
        return Ok(None);
    }
    u16::try_from(value)
        .map(Some)
        .map_err(|_| invalid(format!("{what} {value} is out of range")))
}

fn bind_addr(what: &str, addr: &str) -> Result<IpAddr, Error> {
    addr.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            invalid(format!(
                "{what} {addr:?} is not an IP address (one address is supported)"
            ))
        })
}

fn settings(args: &AgentArgs) -> Result<AgentSettings, Error> {
    let mut file = AgentConfigFile::default();
    for path in &args.config_file {
        file.merge(AgentConfigFile::load(path)?);
    }
    let dev = args.dev;
    let server_flag = args.server || file.server.unwrap_or(false);
    let data_dir = args.data_dir.clone().or(file.data_dir.clone());
    if dev && data_dir.is_some() {
        return Err(invalid(
            "-dev keeps its state in memory and cannot be combined with -data-dir (or data_dir)",
        ));
    }
    if !dev && !server_flag {
        return Err(invalid(
            "libconnect runs server agents only: pass -server (or -dev for a development agent)",
        ));
    }
    let etcd_endpoints = if args.store_etcd.is_empty() {
        file.etcd.endpoints.clone().unwrap_or_default()
    } else {
        args.store_etcd.clone()
    };
    if !etcd_endpoints.is_empty() && (dev || data_dir.is_some()) {
        return Err(invalid(
            "store.etcd (-store-etcd) keeps the state in etcd and cannot be combined with -dev \
             or data_dir",
        ));
    }
    if !dev && data_dir.is_none() && etcd_endpoints.is_empty() {
        return Err(invalid(
            "data_dir is required: pass -data-dir DIR (or -dev for in-memory state, or \
             -store-etcd URL to share the state in etcd)",
        ));
    }

    let mut server = ServerConfig::dev();
    server.data_dir = data_dir;
    if let Some(dc) = args.datacenter.clone().or(file.datacenter.clone()) {
        server.datacenter = dc.to_ascii_lowercase();
    }
    check_name("datacenter", &server.datacenter, false)?;
    let etcd = (!etcd_endpoints.is_empty())
        .then(|| crate::ha::etcd_config(args, &file, etcd_endpoints, &server.datacenter))
        .transpose()?;
    server.primary_datacenter = args
        .primary_datacenter
        .clone()
        .or(file.primary_datacenter.clone())
        .map(|p| p.to_ascii_lowercase());
    if let Some(p) = &server.primary_datacenter {
        check_name("primary datacenter", p, false)?;
    }
    if let Some(node) = args.node.clone().or(file.node_name.clone()) {
        server.node_name = node;
    }
    check_name("node name", &server.node_name, true)?;

    server.acl_enabled = file.acl.enabled.unwrap_or(false);
    if let Some(p) = file.acl.default_policy {
        server.acl_default_policy = p;
    }
    server.acl_initial_management_token = file
        .acl
        .initial_management
        .clone()
        .filter(|t| !t.is_empty());
    // Consul's dev agent allows by default because its ACLs are off; with ACLs on, the ACL
    // default policy decides, in dev mode as elsewhere.
    server.default_intention_policy =
        (dev && !server.acl_enabled).then_some(IntentionAction::Allow);

    let provider = file
        .connect
        .ca_provider
        .clone()
        .unwrap_or_else(|| "consul".into());
    let ca_config = file.connect.ca_config.clone().unwrap_or_default();
    // Validate now, with the file's keys, rather than on first start deep in the server.
    match provider.as_str() {
        "consul" => connect_core::ca::ConsulCaConfig::from_map(&ca_config).map(drop),
        "vault" => connect_core::ca::VaultCaConfig::from_map(&ca_config).map(drop),
        other => {
            return Err(invalid(format!(
                "CA provider {other:?} is not supported by the agent: use \"consul\" (built-in) or \"vault\""
            )));
        }
    }
    .map_err(|e| invalid(format!("connect.ca_config: {e}")))?;
    server.ca = CaConfiguration {
        provider,
        ..CaConfiguration::consul(ca_config)
    };

    let client = args
        .client
        .clone()
        .or(file.client_addr.clone())
        .unwrap_or_else(|| "127.0.0.1".into());
    let client_ip = bind_addr("-client", &client)?;
    let http_ip = match (&args.client, &file.http_addr) {
        (None, Some(a)) => bind_addr("addresses.http", a)?,
        _ => client_ip,
    };
    let https_ip = match (&args.client, &file.https_addr) {
        (None, Some(a)) => bind_addr("addresses.https", a)?,
        _ => client_ip,
    };
    let http_port = port(
        "-http-port",
        args.http_port.or(file.http_port).unwrap_or(8500),
    )?;
    let https_port = port(
        "-https-port",
        args.https_port.or(file.https_port).unwrap_or(-1),
    )?;
    if http_port.is_none() && https_port.is_none() {
        return Err(invalid(
            "both HTTP and HTTPS are disabled: the agent would serve nothing",
        ));
    }
    server.node_address = if http_ip.is_unspecified() {
        "127.0.0.1".into()
    } else {
        http_ip.to_string()
    };
    let federation = federation(args, &file, &server)?;
    let level = args
        .log_level
        .clone()
        .or(file.log_level.clone())
        .unwrap_or_else(|| "info".into());
    Ok(AgentSettings {
        log_level: crate::cli::log_level(&level)?.to_owned(),
        dev,
        http: http_port.map(|p| SocketAddr::new(http_ip, p)),
        https: https_port.map(|p| SocketAddr::new(https_ip, p)),
        unknown_keys: file.unknown_keys,
        connect_disabled: file.connect.enabled == Some(false),
        limits: HttpLimits::from_file(&file.limits),
        workload_api: workload_api(args, &file.workload_api)?,
        federation,
        server,
        etcd,
    })
}

/// The environment variable that may hold the replication token instead of the file (a
/// secret kept out of configuration files).
const REPLICATION_TOKEN_ENV: &str = "CONNECT_REPLICATION_TOKEN";

/// A secondary's federation settings: `retry_join_wan` (files, then `-retry-join-wan`
/// flags, in order), the primary's root for the first contact (`-primary-ca-file`, else
/// `tls.defaults.ca_file`) and `acl.tokens.replication` (else `CONNECT_REPLICATION_TOKEN`).
fn federation(
    args: &AgentArgs,
    file: &AgentConfigFile,
    server: &ServerConfig,
) -> Result<Option<connect_core::server::FederationConfig>, Error> {
    let mut addresses = file.retry_join_wan.clone().unwrap_or_default();
    addresses.extend(args.retry_join_wan.iter().cloned());
    if server.is_primary() {
        if !addresses.is_empty() {
            tracing::debug!("retry_join_wan is not used in the primary datacenter");
        }
        return Ok(None);
    }
    let primary = server.primary_datacenter.as_deref().unwrap_or_default();
    if addresses.is_empty() {
        return Err(invalid(format!(
            "retry_join_wan: datacenter {:?} is a secondary (primary_datacenter is {primary:?}) \
             and needs the primary's HTTPS address: set retry_join_wan or pass -retry-join-wan ADDR",
            server.datacenter
        )));
    }
    for a in &addresses {
        let endpoint = connect_core::http::client::HttpEndpoint {
            address: Some(a.clone()),
            ca_file: None,
            https: true,
        };
        let url = endpoint
            .base_url()
            .map_err(|e| invalid(format!("retry_join_wan {a:?}: {e}")))?;
        if !url.starts_with("https://") {
            return Err(invalid(format!(
                "retry_join_wan {a:?}: servers talk to each other over HTTPS only"
            )));
        }
    }
    let (key, path) = match (&args.primary_ca_file, &file.ca_file) {
        (Some(p), _) => ("-primary-ca-file", p.clone()),
        (None, Some(p)) => ("tls.defaults.ca_file", p.clone()),
        (None, None) => {
            return Err(invalid(
                "tls.defaults.ca_file: a secondary datacenter needs the primary's CA root to \
                 trust its first contact with the primary: set tls.defaults.ca_file or pass \
                 -primary-ca-file FILE",
            ));
        }
    };
    let primary_ca_pem = std::fs::read_to_string(&path)
        .map_err(|e| invalid(format!("{key} {}: {e}", path.display())))?;
    connect_core::certs::parse_pem_certificates(&primary_ca_pem)
        .map_err(|e| invalid(format!("{key} {}: {e}", path.display())))?;
    let replication_token = file
        .acl
        .replication
        .clone()
        .or_else(|| std::env::var(REPLICATION_TOKEN_ENV).ok())
        .filter(|t| !t.is_empty());
    Ok(Some(connect_core::server::FederationConfig {
        primary_addresses: addresses,
        replication_token,
        primary_ca_pem,
    }))
}

/// Runs the agent until a signal; returns the exit code.
pub(crate) fn run(args: AgentArgs) -> u8 {
    let settings = match settings(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("Error: {e}");
            return 1;
        }
    };
    crate::cli::init_logging(&settings.log_level);
    // Blocking work still running (a write mid-commit) gets a moment; nothing waits longer.
    let runtime = crate::cli::Runtime::MultiThread {
        grace: Duration::from_secs(2),
    };
    crate::cli::with_runtime(runtime, |rt| match rt.block_on(serve(settings)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    })
}

/// Logs each request's method, path (never the query, which may carry `?token=`), status
/// and duration at debug level.
/// The agent's one layer around the API: forwarding to other datacenters
/// ([`forward_requests`]) and a debug line per request. One layer rather than two, because
/// each axum layer costs a boxed future and a state clone on every request (BENCHMARKS.md,
/// issue 18's re-run); the log line's copies are made only when debug logging is on.
/// The agent's own middleware: forwarding to other datacenters and, at debug level, the
/// request log. An [`Intercept`], so the requests it leaves alone (nearly all) pay nothing
/// for it.
#[derive(Clone)]
struct AgentIntercept(Arc<(Forwarding, String)>);

impl Intercept for AgentIntercept {
    fn check(&self, req: Request) -> Verdict {
        let (fwd, own_dc) = &*self.0;
        if tracing::enabled!(tracing::Level::DEBUG) || forwarded_to(fwd, own_dc, &req).is_some() {
            Verdict::Take(req)
        } else {
            Verdict::Pass(req)
        }
    }

    fn take(self, req: Request, next: Next) -> futures_util::future::BoxFuture<'static, Response> {
        Box::pin(async move {
            let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| {
                (
                    req.method().clone(),
                    req.uri().path().to_owned(),
                    Instant::now(),
                )
            });
            let resp = forward_requests(&self.0.0, &self.0.1, req, next).await;
            if let Some((method, path, started)) = logged {
                tracing::debug!(
                    %method,
                    %path,
                    status = resp.status().as_u16(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "http request"
                );
            }
            resp
        })
    }
}

/// A follower's HTTP listener (see `crate::ha`): every request goes to the leader. Returns
/// what stops it.
async fn serve_follower(
    addr: SocketAddr,
    leader: crate::ha::LeaderClient,
    datacenter: String,
    limits: HttpLimits,
) -> Result<(watch::Sender<bool>, tokio::task::JoinHandle<()>), Error> {
    let (listener, local) = bind("HTTP", addr).await?;
    eprintln!("==> HTTP API listening on http://{local}, forwarding to the leader");
    let app = axum::Router::new()
        .fallback(|| async { axum::http::StatusCode::NOT_FOUND })
        .layer(InterceptLayer(AgentIntercept(Arc::new((
            Forwarding::AllToLeader(leader),
            datacenter,
        )))));
    let (stop_tx, stop_rx) = watch::channel(false);
    let task = tokio::spawn(crate::http_server::serve(
        listener,
        None,
        app,
        ConnTracker::new(limits),
        stop_rx,
    ));
    Ok((stop_tx, task))
}

async fn serve(mut settings: AgentSettings) -> Result<(), Error> {
    for key in &settings.unknown_keys {
        tracing::warn!(key = %key, "configuration key not used by libconnect; ignored");
    }
    if settings.connect_disabled {
        tracing::warn!("connect.enabled = false is ignored: Connect is always on");
    }
    // Signals are handled from the start: a secondary may wait a long time for its primary.
    let signal = crate::cli::shutdown_signal();
    tokio::pin!(signal);
    let clock: connect_core::SharedClock = Arc::new(connect_core::SystemClock);
    // With an etcd store: forward to the leader until this server leads (see `crate::ha`).
    let elected = match settings.etcd.take() {
        None => None,
        Some(etcd) => {
            let http = settings.http.filter(|a| a.port() != 0).ok_or_else(|| {
                invalid(
                    "store.etcd needs a fixed HTTP port: the other servers forward to the \
                     leader's",
                )
            })?;
            let advertise = crate::ha::advertise(http, &settings.server.node_address);
            let (leader, leads) = crate::ha::join(etcd, advertise).await?;
            let (stop_follower, follower) = serve_follower(
                http,
                leader,
                settings.server.datacenter.clone(),
                settings.limits.clone(),
            )
            .await?;
            let elected = tokio::select! {
                r = leads => r?,
                s = &mut signal => {
                    eprintln!("==> Caught signal: {}", s?);
                    return Ok(());
                }
            };
            let _ = stop_follower.send(true);
            let _ = follower.await;
            eprintln!("==> This server leads the datacenter");
            settings.server.store = Some(elected.store.clone());
            Some(elected)
        }
    };
    let started = tokio::select! {
        r = start_server(settings.server.clone(), settings.federation.clone(), clock) => r?,
        s = &mut signal => {
            eprintln!("==> Caught signal: {}", s?);
            return Ok(());
        }
    };
    let (server, primary) = started;
    tracing::info!(
        datacenter = server.datacenter(),
        trust_domain = %server.trust_domain(),
        index = server.store().index(),
        "server started"
    );

    let api = connect_core::http::api::Api::new(server.clone());
    let app = api.router();
    // The certificate this server presents when it calls another datacenter's servers.
    let own_cert = connect_core::tls::ClientCertSlot::default();
    let forwarding = match &primary {
        Some(primary) => Forwarding::ToPrimary(Arc::new(primary.sibling())),
        None => Forwarding::ToSecondaries(Arc::new(connect_core::server::SecondaryClients::new(
            server.clone(),
            own_cert.clone(),
        ))),
    };
    let app = app.layer(InterceptLayer(AgentIntercept(Arc::new((
        forwarding,
        server.datacenter().to_owned(),
    )))));
    let mut limits = settings.limits.clone();
    if let Some(open_files) = crate::http_server::raise_open_file_limit()
        && let Some(configured) = limits.fit_open_files(open_files)
    {
        tracing::warn!(
            configured,
            open_file_limit = open_files,
            using = limits.max_conns,
            "limits.http_max_conns is more than the open-file limit allows; lowered"
        );
    }
    tracing::debug!(?limits, "HTTP limits");
    let tracker = ConnTracker::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut lines = Vec::new();

    if let Some(addr) = settings.http {
        let (listener, local) = bind("HTTP", addr).await?;
        lines.push(format!("==> HTTP API listening on http://{local}"));
        tasks.spawn(crate::http_server::serve(
            listener,
            None,
            app.clone(),
            tracker.clone(),
            stop_rx.clone(),
        ));
    }
    // A secondary's own leaves, its HTTPS certificate among them, need its intermediate.
    let mut background = tokio::task::JoinSet::new();
    let client_cert = primary.as_ref().map(|p| p.client_certificate());
    let advertiser = primary.as_ref().map(|p| p.sibling());
    if let Some(primary) = primary {
        background.spawn(connect_core::server::run_intention_replication(
            server.clone(),
            primary.sibling(),
        ));
        background.spawn(connect_core::server::run_secondary(server.clone(), primary));
        if !server.ca_ready() {
            tracing::info!(
                "waiting for the primary datacenter to sign this datacenter's intermediate CA"
            );
            let ready = async {
                while !server.ca_ready() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            tokio::select! {
                () = ready => {}
                s = &mut signal => {
                    eprintln!("==> Caught signal: {}", s?);
                    return Ok(());
                }
            }
        }
    }
    if let Some(addr) = settings.https {
        let (listener, local) = bind("HTTPS", addr).await?;
        let tls_config = api
            .https_config(&server.config().node_name, addr.ip())
            .await?;
        // A server presents the same certificate to other datacenters' servers.
        if let Some(cert) = api.https_certificate() {
            let _ = own_cert.set(cert.clone());
            if let Some(slot) = &client_cert {
                let _ = slot.set(cert);
            }
        }
        // A secondary tells the primary where it answers, so that the primary can forward
        // `?dc=<this datacenter>` here.
        if let Some(advertiser) = advertiser {
            let bound = listener
                .local_addr()
                .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
            let ip = if bound.ip().is_unspecified() {
                server
                    .config()
                    .node_address
                    .parse()
                    .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            } else {
                bound.ip()
            };
            let address = std::net::SocketAddr::new(ip, bound.port()).to_string();
            background.spawn(connect_core::server::run_advertise(advertiser, address));
        }
        lines.push(format!("==> HTTPS API listening on https://{local}"));
        tasks.spawn(crate::http_server::serve(
            listener,
            Some(tokio_rustls::TlsAcceptor::from(tls_config)),
            app.clone(),
            tracker.clone(),
            stop_rx.clone(),
        ));
    }

    if let Some(wl) = settings.workload_api {
        if wl.config.workloads.is_empty() {
            tracing::warn!("workload_api has no workload block: every caller will be refused");
        }
        let listener = connect_core::workload::WorkloadApiListener::bind(wl.config)?;
        // An agent cache of its own over this server: the workloads' leaves are signed with
        // the block's token and re-issued after a rotation within its jitter.
        let mut config = connect_core::agent::AgentConfig::dev();
        config.backend = connect_core::agent::AgentBackend::InProcess(server.clone());
        config.token = wl.token;
        config.clock = server.clock().clone();
        if let Some(jitter) = wl.root_change_jitter {
            config.root_change_jitter = jitter;
        }
        let agent = connect_core::agent::Agent::new_async(config).await?;
        lines.push(format!(
            "==> SPIFFE Workload API listening on unix://{}",
            listener.path().display()
        ));
        let mut stop = stop_rx.clone();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = listener.serve(agent, stopped).await {
                tracing::error!(error = %e, "the SPIFFE Workload API stopped");
            }
        });
    }

    background.spawn(prune_roots(server.clone()));
    background.spawn(server.clone().run_ttl_expiry());

    let c = server.config();
    eprintln!("==> Starting libconnect agent...");
    eprintln!("           Version: '{}'", connect_core::VERSION);
    eprintln!("         Node name: '{}'", c.node_name);
    eprintln!(
        "        Datacenter: '{}' (primary: '{}')",
        c.datacenter,
        c.primary_datacenter.as_deref().unwrap_or(&c.datacenter)
    );
    eprintln!(
        "            Server: true (dev: {}, ACLs: {})",
        settings.dev, c.acl_enabled
    );
    eprintln!(
        "          Data dir: {}",
        c.data_dir.as_ref().map_or_else(
            || if c.store.is_some() {
                "(etcd)"
            } else {
                "(in memory)"
            }
            .to_owned(),
            |d| d.display().to_string()
        )
    );
    eprintln!("      Trust domain: {}", server.trust_domain());
    for line in &lines {
        eprintln!("{line}");
    }
    eprintln!("==> libconnect agent running!");

    let lost = async {
        match &elected {
            Some(e) => e.lost().await,
            None => std::future::pending().await,
        }
    };
    // Leadership lost: requests in flight finish (their fenced writes fail with "not the
    // leader"), then the process exits with an error so that a supervisor restarts it as a
    // follower.
    let lost = tokio::select! {
        s = signal => {
            let signal = s?;
            eprintln!("==> Caught signal: {signal}");
            tracing::info!(signal, "shutting down");
            if let Some(e) = &elected {
                e.resign().await;
            }
            false
        }
        () = lost => {
            tracing::error!("this server lost the leadership; stopping");
            true
        }
    };
    background.abort_all();
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
        tracker.drained().await;
    })
    .await;
    if drained.is_err() {
        tracing::info!("requests still in flight after the grace period were cut off");
        tasks.abort_all();
    }
    if lost {
        return Err(Error::new(
            ErrorKind::Io,
            "this server lost the leadership of the datacenter's etcd store; exiting",
        ));
    }
    eprintln!("==> libconnect agent stopped");
    Ok(())
}

/// The largest intention write a secondary forwards (the API's own body limit).
const MAX_FORWARDED_BODY: usize = 1 << 20;

/// Where this server forwards requests for other datacenters.
#[derive(Clone)]
enum Forwarding {
    /// A secondary: to the primary's servers (intention writes, and `?dc=` of any other
    /// datacenter, which the primary forwards on).
    ToPrimary(Arc<connect_core::server::PrimaryClient>),
    /// The primary: `?dc=<secondary>` to the servers that secondary advertised.
    ToSecondaries(Arc<connect_core::server::SecondaryClients>),
    /// A server that does not lead its datacenter's etcd-shared state: everything to the
    /// leader (see `crate::ha`); `None` while there is none.
    AllToLeader(watch::Receiver<Option<connect_core::http::client::ApiClient>>),
}

/// The longest a forwarded request may take: a blocking query's `wait` (at most Consul's
/// 10 min) plus room for the answer.
fn forward_timeout(query: &str) -> Duration {
    let wait = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("wait="))
        .and_then(|w| connect_core::duration::parse_go_duration(w).ok())
        .unwrap_or(Duration::ZERO)
        .min(Duration::from_secs(600));
    wait + wait / 16 + Duration::from_secs(30)
}

/// Whether `req` goes to other servers: `None` when it is served here, `Some(Some(dc))` for
/// `?dc=<dc>`, `Some(None)` for an intention write a secondary hands to its primary and for
/// everything a server that does not lead its etcd-shared datacenter hands to the leader.
fn forwarded_to<'r>(fwd: &Forwarding, own_dc: &str, req: &'r Request) -> Option<Option<&'r str>> {
    use axum::http::Method;
    let path = req.uri().path();
    let other_dc = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .find_map(|kv| kv.strip_prefix("dc="))
        .filter(|dc| !dc.is_empty() && *dc != own_dc)
        .filter(|_| !path.starts_with("/v1/agent/") && !path.starts_with("/v1/internal/"));
    let forward = match fwd {
        Forwarding::AllToLeader(_) => true,
        Forwarding::ToPrimary(_) => {
            other_dc.is_some()
                || ((path == "/v1/connect/intentions"
                    || path.starts_with("/v1/connect/intentions/"))
                    && !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS))
        }
        Forwarding::ToSecondaries(_) => other_dc.is_some(),
    };
    forward.then_some(other_dc)
}

/// As Consul forwards them: in a secondary, intention writes and any request with
/// `?dc=<another datacenter>` go to the primary; in the primary, `?dc=<secondary>` goes to
/// that secondary's servers (once they advertised their address; else the local answer is
/// `No path to datacenter`). Catalog, health, intentions, CA roots …; not the agent's own
/// endpoints nor the internal ones. The request is passed on unchanged over the
/// server-to-server channel (the caller's token decides there) and the answer returned;
/// replication then brings an intention change back.
async fn forward_requests(fwd: &Forwarding, own_dc: &str, req: Request, next: Next) -> Response {
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    let Some(other_dc) = forwarded_to(fwd, own_dc, &req) else {
        return next.run(req).await;
    };
    let other_dc = other_dc.map(str::to_owned);
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or_default();
    let timeout = forward_timeout(query);
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or_else(|| path.to_owned(), |p| p.as_str().to_owned());
    let headers: Vec<(String, String)> = ["x-consul-token", "authorization", "content-type"]
        .into_iter()
        .filter_map(|k| {
            let v = req.headers().get(k)?.to_str().ok()?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect();
    let method =
        reqwest::Method::from_bytes(method.as_str().as_bytes()).unwrap_or(reqwest::Method::POST);
    let (req, body) = {
        let (parts, body) = req.into_parts();
        let Ok(body) = axum::body::to_bytes(body, MAX_FORWARDED_BODY).await else {
            return (StatusCode::PAYLOAD_TOO_LARGE, "Request body too large").into_response();
        };
        (
            Request::from_parts(parts, axum::body::Body::from(body.clone())),
            body,
        )
    };
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let (answer, to) = match (&fwd, &other_dc) {
        (Forwarding::ToPrimary(primary), _) => (
            primary
                .client()
                .forward(method, &target, &headers, body.to_vec(), timeout)
                .await
                .map(Some),
            "the primary datacenter",
        ),
        (Forwarding::ToSecondaries(secondaries), Some(dc)) => (
            secondaries
                .forward(dc, method, &target, &headers, body.to_vec(), timeout)
                .await,
            "another datacenter",
        ),
        (Forwarding::ToSecondaries(_), None) => (Ok(None), ""),
        (Forwarding::AllToLeader(leader), _) => {
            let leader = leader.borrow().clone();
            let Some(leader) = leader else {
                // Consul's answer while a datacenter has no leader.
                return (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader").into_response();
            };
            (
                leader
                    .forward(method, &target, &headers, body.to_vec(), timeout)
                    .await
                    .map(Some),
                "the leader",
            )
        }
    };
    match answer {
        Ok(Some(answer)) => {
            let mut resp = (
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY),
                answer.body,
            )
                .into_response();
            for (name, value) in answer.headers {
                if let (Ok(name), Ok(value)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    header::HeaderValue::from_str(&value),
                ) {
                    resp.headers_mut().insert(name, value);
                }
            }
            resp
        }
        // A datacenter that never advertised its servers: the local answer says so.
        Ok(None) => next.run(req).await,
        Err(e) => {
            tracing::warn!(error = %e, "forwarding a request to {to} failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("forwarding to {to} failed: {e}"),
            )
                .into_response()
        }
    }
}

/// Starts the server. A secondary resumes from its store, or on its first start fetches the
/// primary's roots (retried with back-off until the primary answers); it also returns its
/// client of the primary, which then trusts the roots the server holds.
async fn start_server(
    config: ServerConfig,
    federation: Option<connect_core::server::FederationConfig>,
    clock: connect_core::SharedClock,
) -> Result<(Server, Option<connect_core::server::PrimaryClient>), Error> {
    let blocking = |f: Box<dyn FnOnce() -> Result<Server, Error> + Send>| async move {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?
    };
    let Some(federation) = federation else {
        return Ok((
            blocking(Box::new(move || Server::start(config, clock))).await?,
            None,
        ));
    };
    let primary_dc = config.primary_datacenter.clone().unwrap_or_default();
    let mut client = connect_core::server::PrimaryClient::new(
        &primary_dc,
        &config.datacenter,
        &federation,
        clock.clone(),
    )?;
    let (c, k) = (config.clone(), clock.clone());
    match blocking(Box::new(move || Server::start(c, k))).await {
        Ok(server) => {
            client.trust_roots(&server.ca_roots().value)?;
            Ok((server, Some(client)))
        }
        Err(e) if e.kind() == ErrorKind::CaNotInitialized => {
            tracing::info!(
                primary = %primary_dc,
                "secondary datacenter: fetching the primary datacenter's CA roots"
            );
            let roots = client.roots_when_reachable().await;
            let server = blocking(Box::new(move || {
                Server::start_secondary(config, clock, &roots)
            }))
            .await?;
            Ok((server, Some(client)))
        }
        Err(e) => Err(e),
    }
}

/// Binds the `what` listener on `addr`; returns it with the `host:port` it is reached at.
async fn bind(what: &str, addr: SocketAddr) -> Result<(tokio::net::TcpListener, String), Error> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Error::new(ErrorKind::Io, format!("binding {what} on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
    Ok((listener, url_host(local)))
}

/// `host:port` for a URL (IPv6 in brackets; the unspecified address as loopback, since that
/// is where a local client reaches it).
fn url_host(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port()).to_string()
}

/// Prunes roots rotated out long ago and renews a Vault intermediate, hourly (Consul's leader
/// loop).
async fn prune_roots(server: Server) {
    let mut tick = tokio::time::interval(Server::PRUNE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let s = server.clone();
        match tokio::task::spawn_blocking(move || s.prune_roots()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(removed = n, "pruned old CA roots"),
            Ok(Err(e)) => tracing::warn!(error = %e, "pruning CA roots failed"),
            Err(e) => tracing::warn!(error = %e, "pruning CA roots panicked"),
        }
        // A Vault primary renews its intermediate at half life (Consul's leader loop checks
        // hourly too); the built-in CA has none.
        let s = server.clone();
        match tokio::task::spawn_blocking(move || s.renew_intermediate()).await {
            Ok(Ok(true)) => tracing::info!("renewed the CA intermediate"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "renewing the CA intermediate failed"),
            Err(e) => tracing::warn!(error = %e, "renewing the CA intermediate panicked"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<AgentSettings, Error> {
        let mut argv = vec!["connect", "agent"];
        argv.extend_from_slice(args);
        let cli = crate::Cli::try_parse_from(crate::cli::go_style_args(
            argv.iter().map(std::ffi::OsString::from),
        ))
        .unwrap();
        match cli.command {
            crate::Command::Agent(a) => settings(&a),
            _ => unreachable!(),
        }
    }

    #[test]
    fn dev_defaults_are_consuls() {
        let s = parse(&["-dev"]).unwrap();
        assert_eq!(s.server.datacenter, "dc1");
        assert!(s.server.data_dir.is_none());
        assert_eq!(s.http, Some("127.0.0.1:8500".parse().unwrap()));
        assert_eq!(s.https, None);
        assert_eq!(
            s.server.default_intention_policy,
            Some(IntentionAction::Allow)
        );
        assert_eq!(s.log_level, "info");
    }

    #[test]
    fn the_workload_api_socket_comes_from_the_flag_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("w.hcl");
        std::fs::write(
            &f,
            r#"workload_api {
                 socket = "/run/file.sock"
                 socket_mode = "0700"
                 root_change_jitter = "0s"
                 workload {
                   service = "web"
                   uid = 1000
                 }
               }"#,
        )
        .unwrap();
        let s = parse(&["-dev", "-config-file", f.to_str().unwrap()]).unwrap();
        let w = s.workload_api.unwrap();
        assert_eq!(w.config.socket, std::path::PathBuf::from("/run/file.sock"));
        assert_eq!(w.config.socket_mode, 0o700);
        assert_eq!(w.root_change_jitter, Some(Duration::ZERO));
        assert_eq!(w.config.workloads.len(), 1);
        let s = parse(&[
            "-dev",
            "-config-file",
            f.to_str().unwrap(),
            "-workload-api-socket",
            "/run/flag.sock",
        ])
        .unwrap();
        assert_eq!(
            s.workload_api.unwrap().config.socket,
            std::path::PathBuf::from("/run/flag.sock")
        );
        assert!(parse(&["-dev"]).unwrap().workload_api.is_none());
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.hcl");
        std::fs::write(
            &f,
            r#"datacenter = "east"
               node_name = "from-file"
               server = true
               data_dir = "/nonexistent"
               ports { https = 8501 }
               acl {
                 enabled = true
                 default_policy = "deny"
                 tokens { initial_management = "root" }
               }"#,
        )
        .unwrap();
        let s = parse(&[
            "-config-file",
            f.to_str().unwrap(),
            "-node=n2",
            "-data-dir",
            "/tmp/x",
            "-http-port",
            "0",
            "-log-level",
            "DEBUG",
        ])
        .unwrap();
        assert_eq!(s.server.datacenter, "east");
        assert_eq!(s.server.node_name, "n2");
        assert_eq!(
            s.server.data_dir.as_deref(),
            Some(std::path::Path::new("/tmp/x"))
        );
        assert_eq!(s.http.unwrap().port(), 0);
        assert_eq!(s.https.unwrap().port(), 8501);
        assert!(s.server.acl_enabled);
        assert_eq!(s.server.default_intention_policy, None);
        assert_eq!(s.log_level, "debug");
    }

    #[test]
    fn limits_come_from_the_files_over_the_defaults() {
        assert_eq!(parse(&["-dev"]).unwrap().limits, HttpLimits::default());
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.hcl"), dir.path().join("b.json"));
        std::fs::write(
            &a,
            r#"limits {
                 http_max_conns_per_client = 10
                 http_idle_timeout = "5s"
               }"#,
        )
        .unwrap();
        std::fs::write(&b, r#"{"limits": {"http_idle_timeout": "7s"}}"#).unwrap();
        let s = parse(&[
            "-dev",
            "-config-file",
            a.to_str().unwrap(),
            "-config-file",
            b.to_str().unwrap(),
        ])
        .unwrap();
        assert_eq!(
            s.limits,
            HttpLimits {
                max_conns_per_client: 10,
                idle_timeout: Duration::from_secs(7),
                ..HttpLimits::default()
            }
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        for (args, want) in [
            (&["-server"][..], "data_dir is required"),
            (&["-data-dir", "/x"][..], "server agents only"),
            (&["-dev", "-data-dir", "/x"][..], "cannot be combined"),
            (&["-dev", "-log-level", "loud"][..], "invalid log level"),
            (&["-dev", "-client", "localhost"][..], "not an IP address"),
            (&["-dev", "-http-port", "70000"][..], "out of range"),
            (&["-dev", "-datacenter", "d c"][..], "datacenter"),
            (&["-dev", "-datacenter", "dc.1"][..], "datacenter"),
            (&["-dev", "-node", "a/b"][..], "node name"),
            (
                &["-dev", "-http-port", "-1"][..],
                "both HTTP and HTTPS are disabled",
            ),
        ] {
            let e = parse(args).unwrap_err().to_string();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn the_etcd_store_comes_from_flags_or_the_file_and_needs_a_kek() {
        let dir = tempfile::tempdir().unwrap();
        let kek = dir.path().join("kek.b64");
        std::fs::write(&kek, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=").unwrap();
        let kek = kek.to_str().unwrap();
        let s = parse(&[
            "-server",
            "-datacenter",
            "east",
            "-store-etcd",
            "http://127.0.0.1:2379",
            "-store-etcd",
            "http://127.0.0.1:22379",
            "-store-etcd-kek-file",
            kek,
        ])
        .unwrap();
        let etcd = s.etcd.unwrap();
        assert_eq!(
            etcd.endpoints,
            ["http://127.0.0.1:2379", "http://127.0.0.1:22379"]
        );
        assert_eq!(etcd.prefix, "/connect/east", "the default prefix");
        assert!(etcd.tls.is_none());
        assert!(s.server.data_dir.is_none());

        let file = dir.path().join("etcd.hcl");
        std::fs::write(
            &file,
            format!(
                r#"store {{
                  etcd {{
                    endpoints = ["https://10.0.0.1:2379"]
                    prefix    = "/c/dc1"
                    kek_file  = "{kek}"
                    tls {{
                      ca_file = "ca.pem"
                    }}
                  }}
                }}"#
            ),
        )
        .unwrap();
        let s = parse(&["-server", "-config-file", file.to_str().unwrap()]).unwrap();
        let etcd = s.etcd.unwrap();
        assert_eq!(etcd.endpoints, ["https://10.0.0.1:2379"]);
        assert_eq!(etcd.prefix, "/c/dc1");
        assert_eq!(
            etcd.tls.unwrap().ca_file.as_deref(),
            Some(std::path::Path::new("ca.pem"))
        );

        let bad_kek = dir.path().join("short.b64");
        std::fs::write(&bad_kek, "c2hvcnQ=").unwrap();
        let bad_kek = bad_kek.to_str().unwrap();
        for (args, want) in [
            (
                &["-server", "-store-etcd", "http://e:2379"][..],
                "a key-encryption key is required",
            ),
            (
                &[
                    "-server",
                    "-store-etcd",
                    "e:2379",
                    "-store-etcd-kek-file",
                    kek,
                ][..],
                "is not an http:// or https:// URL",
            ),
            (
                &[
                    "-server",
                    "-store-etcd",
                    "http://e:2379",
                    "-store-etcd-kek-file",
                    bad_kek,
                ][..],
                "5 bytes; an AES-256 key is 32",
            ),
            (
                &[
                    "-dev",
                    "-store-etcd",
                    "http://e:2379",
                    "-store-etcd-kek-file",
                    kek,
                ][..],
                "cannot be combined with -dev",
            ),
            (
                &[
                    "-server",
                    "-data-dir",
                    "/tmp/x",
                    "-store-etcd",
                    "http://e:2379",
                    "-store-etcd-kek-file",
                    kek,
                ][..],
                "cannot be combined with -dev or data_dir",
            ),
        ] {
            let e = parse(args).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{args:?}");
            assert!(e.to_string().contains(want), "{args:?}: {e}");
        }
    }
}
