//! `connect proxy`: Consul's built-in proxy on libconnect's `ConnectService`.
//!
//! Inbound (`-listen` with `-service-addr`): terminates mTLS with the service's leaf, where
//! intentions are enforced inside the handshake (and live connections are revoked when an
//! intention turns to deny), and forwards plaintext to the local application. The listener
//! registers the instance in the catalog, so that peers find it by name; it is deregistered on
//! a graceful shutdown.
//!
//! Outbound (`-upstream NAME:PORT`, repeatable): a plaintext listener on localhost; every
//! connection accepted there is carried over mTLS to a healthy instance of NAME.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connect_core::agent::{Agent, ConnectService};
use connect_core::{Error, ErrorKind};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::ProxyArgs;

/// How long the proxy waits for its first leaf and roots before giving up.
const READY: Duration = Duration::from_secs(30);

/// One `-upstream`: the service to reach and where to listen for plaintext.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Upstream {
    pub(crate) service: String,
    pub(crate) bind: SocketAddr,
}

/// Parses `NAME:PORT` (on 127.0.0.1, as Consul's) or `NAME:HOST:PORT`.
pub(crate) fn parse_upstream(s: &str) -> Result<Upstream, String> {
    let (service, rest) = s
        .split_once(':')
        .filter(|(n, r)| !n.is_empty() && !r.is_empty())
        .ok_or_else(|| format!("upstream {s:?}: want NAME:PORT"))?;
    let bind = match rest.parse::<u16>() {
        Ok(port) => SocketAddr::from(([127, 0, 0, 1], port)),
        Err(_) => rest
            .parse::<SocketAddr>()
            .map_err(|_| format!("upstream {s:?}: {rest:?} is neither a port nor HOST:PORT"))?,
    };
    Ok(Upstream {
        service: service.to_owned(),
        bind,
    })
}

/// Runs the proxy until SIGINT or SIGTERM; returns the exit code.
pub(crate) fn run(args: ProxyArgs) -> u8 {
    crate::init_logging(args.log_level.as_deref().unwrap_or("info"));
    let runtime = crate::Runtime::MultiThread {
        grace: Duration::from_secs(1),
    };
    crate::with_runtime(runtime, |rt| {
        let (code, svc) = match rt.block_on(serve(args)) {
            Ok(svc) => (0, Some(svc)),
            Err((e, svc)) => {
                eprintln!("Error: {e}");
                (1, svc)
            }
        };
        // Closed outside the runtime's block_on, where close waits for the deregistration to
        // reach the agent (inside a runtime it would only start it).
        if let Some(svc) = svc {
            svc.close();
            svc.agent().close();
        }
        code
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
    let config = crate::client::agent_config(&args.http).map_err(fail)?;
    let agent = Agent::new_async(config).await.map_err(fail)?;
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
        eprintln!("==> Upstream {} listening on {bound}", up.service);
        tasks.spawn(outbound(l, Arc::clone(&svc), up.service.clone()));
    }
    eprintln!("==> Proxy for {} running!", args.service);
    match crate::shutdown_signal().await {
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

/// Accepts plaintext connections and carries each over mTLS to a healthy `target`.
async fn outbound(listener: TcpListener, svc: ServiceHandle, target: String) {
    loop {
        let Ok((local, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let _ = local.set_nodelay(true);
        let svc = svc.clone();
        let target = target.clone();
        tokio::spawn(async move {
            match svc.dial(&target).await {
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
                bind: "127.0.0.1:9191".parse().unwrap()
            }
        );
        assert_eq!(
            parse_upstream("db:0.0.0.0:9191").unwrap().bind,
            "0.0.0.0:9191".parse().unwrap()
        );
        for bad in ["db", ":9191", "db:", "db:x"] {
            assert!(parse_upstream(bad).is_err(), "{bad}");
        }
    }
}
