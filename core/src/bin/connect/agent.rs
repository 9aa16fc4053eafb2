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
//! The HTTPS listener serves a certificate the CA issues to this node (its client-agent
//! SPIFFE ID, DNS SAN `localhost`, the loopback IPs and the bind address), kept current by the
//! same agent cache that serves the `/v1/agent/connect/...` endpoints: see
//! [`connect_core::http::api::Api::https_config`].
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
use axum::middleware::Next;
use axum::response::Response;
use connect_core::ca::CaConfiguration;
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
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidParameter, msg)
}

/// Consul's log levels (and `err`, Consul's spelling of `error`).
fn log_level(level: &str) -> Result<&'static str, Error> {
    Ok(match level.to_ascii_lowercase().as_str() {
        "trace" => "trace",
        "debug" => "debug",
        "info" => "info",
        "warn" | "warning" => "warn",
        "err" | "error" => "error",
        _ => {
            return Err(invalid(format!(
                "invalid log level {level:?}: use trace, debug, info, warn or error"
            )));
        }
    })
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
    if !dev && data_dir.is_none() {
        return Err(invalid(
            "data_dir is required: pass -data-dir DIR (or -dev for in-memory state)",
        ));
    }

    let mut server = ServerConfig::dev();
    server.data_dir = data_dir;
    if let Some(dc) = args.datacenter.clone().or(file.datacenter.clone()) {
        server.datacenter = dc.to_ascii_lowercase();
    }
    check_name("datacenter", &server.datacenter, false)?;
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
    let level = args
        .log_level
        .clone()
        .or(file.log_level.clone())
        .unwrap_or_else(|| "info".into());
    Ok(AgentSettings {
        log_level: log_level(&level)?.to_owned(),
        dev,
        http: http_port.map(|p| SocketAddr::new(http_ip, p)),
        https: https_port.map(|p| SocketAddr::new(https_ip, p)),
        unknown_keys: file.unknown_keys,
        connect_disabled: file.connect.enabled == Some(false),
        limits: HttpLimits::from_file(&file.limits),
        server,
    })
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
    crate::init_logging(&settings.log_level);
    // Blocking work still running (a write mid-commit) gets a moment; nothing waits longer.
    let runtime = crate::Runtime::MultiThread {
        grace: Duration::from_secs(2),
    };
    crate::with_runtime(runtime, |rt| match rt.block_on(serve(settings)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("Error: {e}");
            1
        }
    })
}

/// Logs each request's method, path (never the query, which may carry `?token=`), status
/// and duration at debug level.
async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        %path,
        status = resp.status().as_u16(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "http request"
    );
    resp
}

async fn serve(settings: AgentSettings) -> Result<(), Error> {
    for key in &settings.unknown_keys {
        tracing::warn!(key = %key, "configuration key not used by libconnect; ignored");
    }
    if settings.connect_disabled {
        tracing::warn!("connect.enabled = false is ignored: Connect is always on");
    }
    let config = settings.server.clone();
    let server = tokio::task::spawn_blocking(move || {
        Server::start(config, Arc::new(connect_core::SystemClock))
    })
    .await
    .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))??;
    tracing::info!(
        datacenter = server.datacenter(),
        trust_domain = %server.trust_domain(),
        index = server.store().index(),
        "server started"
    );

    let api = connect_core::http::api::Api::new(server.clone());
    let app = api.router().layer(axum::middleware::from_fn(log_request));
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
    if let Some(addr) = settings.https {
        let (listener, local) = bind("HTTPS", addr).await?;
        let tls_config = api
            .https_config(&server.config().node_name, addr.ip())
            .await?;
        lines.push(format!("==> HTTPS API listening on https://{local}"));
        tasks.spawn(crate::http_server::serve(
            listener,
            Some(tokio_rustls::TlsAcceptor::from(tls_config)),
            app.clone(),
            tracker.clone(),
            stop_rx.clone(),
        ));
    }

    tokio::spawn(prune_roots(server.clone()));

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
        c.data_dir
            .as_ref()
            .map_or_else(|| "(in memory)".to_owned(), |d| d.display().to_string())
    );
    eprintln!("      Trust domain: {}", server.trust_domain());
    for line in &lines {
        eprintln!("{line}");
    }
    eprintln!("==> libconnect agent running!");

    let signal = crate::shutdown_signal().await?;
    eprintln!("==> Caught signal: {signal}");
    tracing::info!(signal, "shutting down");
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
    eprintln!("==> libconnect agent stopped");
    Ok(())
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
        let cli = crate::Cli::try_parse_from(crate::go_style_args(
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
}
