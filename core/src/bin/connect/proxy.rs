//! `connect proxy`: Consul's built-in proxy on libconnect's `ConnectService`.
//!
//! Inbound (`-listen` with `-service-addr`): terminates mTLS with the service's leaf, where
//! intentions are enforced inside the handshake (and live connections are revoked when an
//! intention turns to deny), and forwards plaintext to the local application. The listener
//! registers the instance in the catalog, so that peers find it by name; it is deregistered on
//! a graceful shutdown.
//!
//! Outbound (`-upstream NAME:PORT`, repeatable): a plaintext listener on localhost; every
//! connection accepted there is carried over mTLS to a healthy instance of NAME. An upstream
//! in another datacenter (`NAME:PORT:DC`, or Consul's upstream JSON with `Datacenter` and
//! `MeshGateway.Mode`) is dialled there, directly or through mesh gateways, and its server must
//! present NAME's identity in that datacenter.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connect_core::agent::{Agent, ConnectService, DialOptions};
use connect_core::catalog::{MeshGatewayMode, ServiceRegistration};
use connect_core::{Error, ErrorKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use clap::Args;

/// `connect proxy` flags (Consul's names).
#[derive(Debug, Args)]
pub(crate) struct ProxyArgs {
    #[command(flatten)]
    pub(crate) http: crate::cli::HttpArgs,
    /// The service this proxy represents: its identity, and the destination that intentions
    /// name for inbound connections.
    #[arg(long, value_name = "NAME", required = true)]
    pub(crate) service: String,
    /// The local application's address, where inbound connections are forwarded in
    /// plaintext (with -listen).
    #[arg(long = "service-addr", value_name = "ADDR")]
    pub(crate) service_addr: Option<String>,
    /// Address for inbound mTLS (with -service-addr); the instance is registered there.
    #[arg(long, value_name = "ADDR")]
    pub(crate) listen: Option<String>,
    /// An upstream, `NAME:PORT` (plaintext listener on 127.0.0.1:PORT) or `NAME:HOST:PORT`,
    /// each optionally followed by `:DC` for a service in another datacenter; or Consul's
    /// upstream JSON (`{"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": 9191,
    /// "MeshGateway": {"Mode": "local"}}`). May be repeated.
    #[arg(long, value_name = "NAME:PORT[:DC]", value_parser = parse_upstream)]
    pub(crate) upstream: Vec<Upstream>,
    /// How upstreams in another datacenter use mesh gateways unless they say: none, local or
    /// remote (default none).
    #[arg(long = "mesh-gateway-mode", value_name = "MODE", value_parser = parse_mesh_gateway_mode)]
    pub(crate) mesh_gateway_mode: Option<MeshGatewayMode>,
    /// Log level: trace, debug, info, warn or error (default info).
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
}

/// How long the proxy waits for its first leaf and roots before giving up.
const READY: Duration = Duration::from_secs(30);

/// One `-upstream`: the service to reach, where to listen for plaintext, and (Consul's
/// `Datacenter` and `MeshGateway.Mode`) in which datacenter and through which gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub(crate) service: String,
    pub(crate) bind: SocketAddr,
    /// `None`: the agent's own datacenter.
    pub(crate) datacenter: Option<String>,
    /// `None`: the proxy's `-mesh-gateway-mode` (Consul's precedence: upstream, then the
    /// proxy's own setting).
    pub(crate) mesh_gateway: Option<MeshGatewayMode>,
}

/// Parses `NAME:PORT` (on 127.0.0.1, as Consul's) or `NAME:HOST:PORT`, either followed by
/// `:DC`; or Consul's upstream JSON object, decoded and checked as the agent's
/// `/v1/agent/service/register` does for `Proxy.Upstreams`.
pub(crate) fn parse_upstream(s: &str) -> Result<Upstream, String> {
    if s.trim_start().starts_with('{') {
        return parse_upstream_json(s);
    }
    let (service, rest) = s
        .split_once(':')
        .filter(|(n, r)| !n.is_empty() && !r.is_empty())
        .ok_or_else(|| format!("upstream {s:?}: want NAME:PORT[:DC]"))?;
    connect_core::spiffe::check_service_name("upstream", service).map_err(|e| e.to_string())?;
    let bind_of = |text: &str| match text.parse::<u16>() {
        Ok(port) => Some(SocketAddr::from(([127, 0, 0, 1], port))),
        Err(_) => text.parse::<SocketAddr>().ok(),
    };
    let (bind, datacenter) = match bind_of(rest) {
        Some(bind) => (bind, None),
        None => {
            let (addr, dc) = rest
                .rsplit_once(':')
                .and_then(|(a, dc)| Some((bind_of(a)?, dc)))
                .ok_or_else(|| {
                    format!("upstream {s:?}: {rest:?} is neither PORT nor HOST:PORT, with or without :DC")
                })?;
            connect_core::spiffe::check_datacenter_name("upstream datacenter", dc)
                .map_err(|e| e.to_string())?;
            (addr, Some(dc.to_owned()))
        }
    };
    Ok(Upstream {
        service: service.to_owned(),
        bind,
        datacenter,
        mesh_gateway: None,
    })
}

fn parse_upstream_json(s: &str) -> Result<Upstream, String> {
    let value: serde_json::Value =
        serde_json::from_str(s).map_err(|e| format!("upstream JSON: {e}"))?;
    // The one decoder and rule set for upstreams is the registration's: wrap it in one.
    let registration = serde_json::json!({
        "Name": "upstream",
        "Kind": "connect-proxy",
        "Port": 1,
        "Proxy": {"DestinationServiceName": "upstream", "Upstreams": [value]},
    });
    let reg = ServiceRegistration::from_json(registration.to_string().as_bytes())
        .map_err(|e| format!("upstream JSON: {e}"))?;
    let Some(up) = reg.proxy.and_then(|p| p.upstreams.into_iter().next()) else {
        return Err("upstream JSON: no upstream".to_owned());
    };
    if up.destination_type == "prepared_query" {
        return Err("upstream JSON: prepared query upstreams are not supported".to_owned());
    }
    let host = if up.local_bind_address.is_empty() {
        "127.0.0.1"
    } else {
        up.local_bind_address.as_str()
    };
    let ip = host
        .parse::<std::net::IpAddr>()
        .map_err(|_| format!("upstream JSON: LocalBindAddress {host:?} is not an IP address"))?;
    Ok(Upstream {
        service: up.destination_name.clone(),
        bind: SocketAddr::new(ip, up.local_bind_port),
        datacenter: (!up.datacenter.is_empty()).then(|| up.datacenter.clone()),
        mesh_gateway: if up.mesh_gateway.mode.is_empty() {
            None
        } else {
            up.mesh_gateway.parsed_mode()
        },
    })
}

/// Parses `-mesh-gateway-mode`: `none`, `local` or `remote`, as Consul spells them.
pub(crate) fn parse_mesh_gateway_mode(s: &str) -> Result<MeshGatewayMode, String> {
    MeshGatewayMode::from_name(s)
        .ok_or_else(|| format!("invalid mesh gateway mode {s:?}: must be none, local or remote"))
}

impl Upstream {
    /// How [`outbound`] dials this upstream, `default_mode` filling an unset mode.
    fn dial_options(&self, default_mode: MeshGatewayMode) -> DialOptions {
        match &self.datacenter {
            Some(dc) => DialOptions::datacenter(dc.clone())
                .mesh_gateway(self.mesh_gateway.unwrap_or(default_mode)),
            None => DialOptions::default(),
        }
    }
}

/// Runs the proxy until SIGINT or SIGTERM; returns the exit code.
pub(crate) fn run(args: ProxyArgs) -> u8 {
    let level = args.log_level.clone();
    crate::cli::serve_until_signal(level.as_deref(), serve(args), |svc| {
        svc.close();
        svc.agent().close();
    })
}

type Failed = (Error, Option<ServiceHandle>);

async fn serve(args: ProxyArgs) -> Result<ServiceHandle, Failed> {
    let fail = |e: Error| (e, None);
    if args.listen.is_some() != args.service_addr.is_some() {
        return Err(fail(Error::new(
            ErrorKind::InvalidParameter,
            "-listen and -service-addr go together (inbound proxying needs both)",
        )));
    }
    if args.listen.is_none() && args.upstream.is_empty() {
        return Err(fail(Error::new(
            ErrorKind::InvalidParameter,
            "nothing to proxy: give -listen with -service-addr, or -upstream",
        )));
    }
    let config = crate::cli::agent_config(&args.http).map_err(fail)?;
    let agent = Agent::new_http_async(config).await.map_err(fail)?;
    let svc = Arc::new(agent.service(&args.service).map_err(fail)?);
    if let Err(e) = svc.ready_wait(READY).await {
        return Err((e, Some(svc)));
    }
    let mut tasks = JoinSet::new();
    if let (Some(listen), Some(app)) = (&args.listen, &args.service_addr) {
        let listener = match svc.listen(listen.as_str()).await {
            Ok(l) => l,
            Err(e) => return Err((e, Some(svc))),
        };
        eprintln!(
            "==> Inbound {} listening on {}, forwarding to {app}",
            args.service,
            listener.local_addr()
        );
        tasks.spawn(inbound(listener, app.clone()));
    }
    for up in &args.upstream {
        let l = match TcpListener::bind(up.bind).await {
            Ok(l) => l,
            Err(e) => {
                let e = Error::new(ErrorKind::Io, format!("upstream {}: {e}", up.service));
                return Err((e, Some(svc)));
            }
        };
        let bound = l.local_addr().unwrap_or(up.bind);
        let opts = up.dial_options(args.mesh_gateway_mode.unwrap_or_default());
        match &opts.datacenter {
            Some(dc) => eprintln!(
                "==> Upstream {} in {dc} (mesh gateway mode {}) listening on {bound}",
                up.service, opts.mesh_gateway
            ),
            None => eprintln!("==> Upstream {} listening on {bound}", up.service),
        }
        tasks.spawn(outbound(l, Arc::clone(&svc), up.service.clone(), opts));
    }
    eprintln!("==> Proxy for {} running!", args.service);
    match crate::cli::shutdown_signal().await {
        Ok(signal) => {
            eprintln!("==> Caught signal: {signal}");
            // Stop accepting; connections in flight end with the process.
            tasks.abort_all();
            Ok(svc)
        }
        Err(e) => Err((e, Some(svc))),
    }
}

/// Accepts authorized mTLS connections and forwards each to the local application.
async fn inbound(mut listener: connect_core::tls::Listener, app: String) {
    while let Ok(conn) = listener.accept().await {
        let app = app.clone();
        tokio::spawn(async move {
            let peer = conn.peer_id().to_string();
            match TcpStream::connect(app.as_str()).await {
                Ok(local) => {
                    let _ = local.set_nodelay(true);
                    pipe(conn, local).await;
                }
                Err(e) => tracing::warn!(%peer, error = %e, app, "local application unreachable"),
            }
        });
    }
}

/// Accepts plaintext connections and carries each over mTLS to a healthy `target`, in the
/// datacenter and through the gateways `opts` name.
async fn outbound(listener: TcpListener, svc: ServiceHandle, target: String, opts: DialOptions) {
    let opts = Arc::new(opts);
    loop {
        let Ok((local, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = local.set_nodelay(true);
        let svc = svc.clone();
        let target = target.clone();
        let opts = Arc::clone(&opts);
        tokio::spawn(async move {
            match svc.dial_with(&target, &opts).await {
                Ok(remote) => pipe(local, remote).await,
                // Dropping `local` closes it: the application sees the refusal as a close.
                Err(e) => tracing::warn!(upstream = target, error = %e, "dial failed"),
            }
        });
    }
}

/// Copies both ways until either side ends.
async fn pipe<A, B>(mut a: A, mut b: B)
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}

/// The proxy's service, shared with the per-connection tasks.
type ServiceHandle = Arc<ConnectService>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_parse_as_consuls() {
        assert_eq!(
            parse_upstream("db:9191").unwrap(),
            Upstream {
                service: "db".into(),
                bind: "127.0.0.1:9191".parse().unwrap(),
                datacenter: None,
                mesh_gateway: None,
            }
        );
        assert_eq!(
            parse_upstream("db:0.0.0.0:9191").unwrap().bind,
            "0.0.0.0:9191".parse().unwrap()
        );
        let dc2 = parse_upstream("db:9191:dc2").unwrap();
        assert_eq!(dc2.bind, "127.0.0.1:9191".parse().unwrap());
        assert_eq!(dc2.datacenter.as_deref(), Some("dc2"));
        let v6 = parse_upstream("db:[::1]:9191:us-east_1").unwrap();
        assert_eq!(v6.bind, "[::1]:9191".parse().unwrap());
        assert_eq!(v6.datacenter.as_deref(), Some("us-east_1"));
        for bad in [
            "db",
            ":9191",
            "db:",
            "db:x",
            "db:9191:",
            "db/x:9191",
            "db:x:dc2",
        ] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
        let e = parse_upstream("db:9191:DC2").unwrap_err();
        assert!(e.contains("datacenter name must be"), "{e}");
    }

    #[test]
    fn upstreams_parse_from_consuls_json() {
        let up = parse_upstream(
            r#"{"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": 9191,
                "MeshGateway": {"Mode": "local"}}"#,
        )
        .unwrap();
        assert_eq!(
            up,
            Upstream {
                service: "db".into(),
                bind: "127.0.0.1:9191".parse().unwrap(),
                datacenter: Some("dc2".into()),
                mesh_gateway: Some(MeshGatewayMode::Local),
            }
        );
        // Consul's snake_case keys, as in a service definition file.
        let up = parse_upstream(
            r#"{"destination_name": "db", "local_bind_address": "127.0.0.2", "local_bind_port": 1}"#,
        )
        .unwrap();
        assert_eq!(up.bind, "127.0.0.2:1".parse().unwrap());
        assert_eq!(up.datacenter, None);
        assert_eq!(
            up.dial_options(MeshGatewayMode::Remote),
            DialOptions::default()
        );
        assert_eq!(
            dc2_local().dial_options(MeshGatewayMode::Remote),
            DialOptions::datacenter("dc2").mesh_gateway(MeshGatewayMode::Local)
        );
        let mut unset = dc2_local();
        unset.mesh_gateway = None;
        assert_eq!(
            unset.dial_options(MeshGatewayMode::Remote).mesh_gateway,
            MeshGatewayMode::Remote
        );
        for (bad, why) in [
            (
                r#"{"DestinationName": "db"}"#,
                "local bind port cannot be zero",
            ),
            (
                r#"{"LocalBindPort": 1}"#,
                "destination name cannot be empty",
            ),
            (
                r#"{"DestinationName": "db", "LocalBindPort": 1, "Datacenter": "DC2"}"#,
                "datacenter name must be",
            ),
            (
                r#"{"DestinationName": "db", "LocalBindPort": 1, "MeshGateway": {"Mode": "Local"}}"#,
                "invalid mesh gateway mode",
            ),
            (
                r#"{"DestinationName": "q", "LocalBindPort": 1, "DestinationType": "prepared_query"}"#,
                "not supported",
            ),
            (
                r#"{"DestinationName": "db", "LocalBindPort": 1, "LocalBindAddress": "host"}"#,
                "not an IP address",
            ),
            (
                r#"{"DestinationName": "db", "LocalBindPort": 70000}"#,
                "LocalBindPort",
            ),
            (r#"{"DestinationName": "db""#, "upstream JSON"),
        ] {
            let e = parse_upstream(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(parse_mesh_gateway_mode("remote").is_ok());
        assert!(parse_mesh_gateway_mode("REMOTE").is_err());
    }

    fn dc2_local() -> Upstream {
        parse_upstream(
            r#"{"DestinationName": "db", "Datacenter": "dc2", "LocalBindPort": 9191,
                "MeshGateway": {"Mode": "local"}}"#,
        )
        .unwrap()
    }
}
