//! `connect gateway mesh`: a mesh gateway (Consul docs: Mesh Gateways) on libconnect's
//! [`MeshGateway`]. It routes raw TLS by the SNI of each ClientHello to a healthy local
//! instance or to another datacenter's gateway, and never terminates TLS: the end-to-end mTLS
//! session, and its SPIFFE checks, stay between the two services.
//!
//! It registers itself as Consul's gateways do (`Kind: mesh-gateway`, `TaggedAddresses` `lan`
//! and `wan`) and deregisters on SIGINT/SIGTERM. The token it runs with needs `service:write`
//! on its own name and `service:read` on the services it routes to.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use connect_core::agent::Agent;
use connect_core::duration::parse_go_duration;
use connect_core::gateway::{GatewayConfig, MeshGateway};
use connect_core::{Error, ErrorKind};
use tokio::net::TcpListener;

use crate::cli::HttpArgs;

/// `connect gateway mesh` flags.
#[derive(Debug, Args)]
pub(crate) struct MeshGatewayArgs {
    #[command(flatten)]
    pub(crate) http: HttpArgs,
    /// Address to accept connections on (port 0 picks a free port).
    #[arg(long, value_name = "ADDR", required = true)]
    pub(crate) listen: String,
    /// The LAN address to register (default: the -listen address).
    #[arg(long, value_name = "IP:PORT")]
    pub(crate) address: Option<SocketAddr>,
    /// The address other datacenters reach this gateway on, registered as the `wan` tagged
    /// address (default: the LAN address).
    #[arg(long = "wan-address", value_name = "IP:PORT")]
    pub(crate) wan_address: Option<SocketAddr>,
    /// The service name to register under (default mesh-gateway).
    #[arg(long, value_name = "NAME")]
    pub(crate) service: Option<String>,
    /// A fixed WAN address of another datacenter's gateway, `DC=IP:PORT`, used instead of
    /// asking the catalog with `?dc=` (for servers that cannot forward to DC); may be repeated.
    #[arg(long = "remote-gateway", value_name = "DC=IP:PORT", value_parser = parse_remote_gateway)]
    pub(crate) remote_gateway: Vec<RemoteGateway>,
    /// Connections open at once; more are closed at once (default 4096).
    #[arg(long = "max-connections", value_name = "N")]
    pub(crate) max_connections: Option<usize>,
    /// How long a client may take to send its ClientHello (default 10s).
    #[arg(long = "hello-timeout", value_name = "DURATION", value_parser = parse_timeout)]
    pub(crate) hello_timeout: Option<Duration>,
    /// How long connecting to the next hop may take (default 5s).
    #[arg(long = "connect-timeout", value_name = "DURATION", value_parser = parse_timeout)]
    pub(crate) connect_timeout: Option<Duration>,
    /// Log level: trace, debug, info, warn or error (default info).
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub(crate) log_level: Option<String>,
}

/// One `-remote-gateway DC=HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RemoteGateway {
    pub(crate) datacenter: String,
    pub(crate) addr: SocketAddr,
}

/// Parses `DC=IP:PORT`.
pub(crate) fn parse_remote_gateway(s: &str) -> Result<RemoteGateway, String> {
    let (dc, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("remote gateway {s:?}: want DC=IP:PORT"))?;
    connect_core::spiffe::check_datacenter_name("remote gateway datacenter", dc)
        .map_err(|e| e.to_string())?;
    let addr = addr
        .parse::<SocketAddr>()
        .map_err(|_| format!("remote gateway {s:?}: {addr:?} is not IP:PORT"))?;
    Ok(RemoteGateway {
        datacenter: dc.to_owned(),
        addr,
    })
}

/// Parses a Go duration (`10s`, `500ms`) that must not be zero.
pub(crate) fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_go_duration(s)? {
        d if d.is_zero() => Err(format!("{s:?}: must be more than zero")),
        d => Ok(d),
    }
}

/// Runs the gateway until SIGINT or SIGTERM; returns the exit code.
pub(crate) fn run(args: MeshGatewayArgs) -> u8 {
    let level = args.log_level.clone();
    crate::cli::serve_until_signal(level.as_deref(), serve(args), |agent| agent.close())
}

type Failed = (Error, Option<Agent>);

fn config(args: &MeshGatewayArgs) -> Result<GatewayConfig, Error> {
    let mut remote: BTreeMap<String, Vec<SocketAddr>> = BTreeMap::new();
    for r in &args.remote_gateway {
        remote.entry(r.datacenter.clone()).or_default().push(r.addr);
    }
    let defaults = GatewayConfig::default();
    let max_connections = args.max_connections.unwrap_or(defaults.max_connections);
    if max_connections == 0 {
        return Err(Error::new(
            ErrorKind::InvalidParameter,
            "-max-connections must be at least 1",
        ));
    }
    Ok(GatewayConfig {
        service: args
            .service
            .clone()
            .unwrap_or_else(|| defaults.service.clone()),
        hello_timeout: args.hello_timeout.unwrap_or(defaults.hello_timeout),
        connect_timeout: args.connect_timeout.unwrap_or(defaults.connect_timeout),
        max_connections,
        remote_gateways: remote,
    })
}

async fn serve(args: MeshGatewayArgs) -> Result<Agent, Failed> {
    let fail = |e: Error| (e, None);
    let gateway_config = config(&args).map_err(fail)?;
    let listener = TcpListener::bind(args.listen.as_str()).await.map_err(|e| {
        fail(Error::new(
            ErrorKind::Io,
            format!("-listen {}: {e}", args.listen),
        ))
    })?;
    let bound = listener
        .local_addr()
        .map_err(|e| fail(Error::new(ErrorKind::Io, e.to_string())))?;
    let lan = match args.address {
        Some(a) => a,
        None if bound.ip().is_unspecified() => {
            return Err(fail(Error::new(
                ErrorKind::InvalidParameter,
                format!("-listen {bound} is every address: give -address, the one to register"),
            )));
        }
        None => bound,
    };
    let wan = args.wan_address.unwrap_or(lan);
    let config = crate::cli::agent_config(&args.http).map_err(fail)?;
    let agent = Agent::new_http_async(config).await.map_err(fail)?;
    let gw = match MeshGateway::new(agent.clone(), gateway_config) {
        Ok(gw) => gw,
        Err(e) => return Err((e, Some(agent))),
    };
    let id = match gw.register(lan, wan).await {
        Ok(id) => id,
        Err(e) => return Err((e, Some(agent))),
    };
    eprintln!(
        "==> Mesh gateway for {} listening on {bound} (lan {lan}, wan {wan})",
        agent.datacenter()
    );
    let task = tokio::spawn(gw.clone().serve(listener));
    eprintln!("==> Mesh gateway running!");
    let result = crate::cli::shutdown_signal().await;
    task.abort();
    if let Ok(signal) = &result {
        eprintln!("==> Caught signal: {signal}");
    }
    // Stopping without deregistering would leave a dead gateway for dials to pick.
    let deregistered = gw.deregister(&id).await;
    let stats = gw.stats();
    eprintln!(
        "==> Mesh gateway stopped: {} accepted, {} routed, {} refused",
        stats.accepted, stats.routed, stats.refused
    );
    match result.and(deregistered) {
        Ok(()) => Ok(agent),
        Err(e) => Err((e, Some(agent))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_gateways_and_timeouts_parse() {
        assert_eq!(
            parse_remote_gateway("dc2=127.0.0.1:8443").unwrap(),
            RemoteGateway {
                datacenter: "dc2".into(),
                addr: "127.0.0.1:8443".parse().unwrap()
            }
        );
        for bad in [
            "dc2",
            "DC2=127.0.0.1:1",
            "dc2=host:1",
            "=1.2.3.4:5",
            "dc2=1.2.3.4",
        ] {
            assert!(parse_remote_gateway(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_timeout("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_timeout("0s").is_err());
        assert!(parse_timeout("ten").is_err());
    }
}
