//! The agent's HTTP server, for the HTTP and the HTTPS listener alike: our own accept loop
//! on hyper, so that every connection is bounded.
//!
//! - **Connections** are counted per client IP address and in total, across both
//!   listeners. Over `limits.http_max_conns_per_client` (Consul's key, default 200) a new
//!   connection gets `429 Too Many Requests` (plain HTTP; HTTPS connections are just closed,
//!   there is no TLS session to answer in) and is closed at once, as Consul does. Over
//!   `limits.http_max_conns` (default 4096, and never more than the open-file limit allows)
//!   it gets `503 Service Unavailable` and is closed. Refused connections are accepted and
//!   closed rather than left in the kernel's queue, so the queue never fills with them and
//!   a connection arriving once there is room again is served at once.
//! - **TLS handshake**: `limits.https_handshake_timeout` (Consul's key, default 5s).
//! - **Request head**: a new connection must send its first request head, and a request
//!   head once begun must be complete, within `limits.http_header_read_timeout` (default
//!   10s); otherwise the connection is closed (a slowloris client holds nothing for long).
//! - **Request body**: must arrive within `limits.http_body_read_timeout` (default 30s)
//!   after the head; otherwise the request is answered `408 Request Timeout` and the
//!   connection closed.
//! - **Idle keep-alive**: a connection with no request running is closed after
//!   `limits.http_idle_timeout` (default 90s) without a byte in either direction.
//!
//! A request whose handler is running (a blocking query waiting up to 10 minutes) is not
//! idle: no timeout applies to it, so blocking queries work as before.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use crate::config_file::LimitsFileConfig;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use connect_core::http::api::TlsPeer;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// File descriptors kept free for everything but client connections (listeners, the
/// database, the runtime, logs).
const RESERVED_FDS: u64 = 128;

/// The limits of the HTTP(S) API, resolved from the `limits` block and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HttpLimits {
    /// Concurrent connections over both listeners.
    pub(crate) max_conns: usize,
    /// Concurrent connections from one client IP address (0: no limit).
    pub(crate) max_conns_per_client: usize,
    /// Time to finish a TLS handshake.
    pub(crate) handshake_timeout: Duration,
    /// Time to send a request head (and, on a new connection, to start it).
    pub(crate) header_read_timeout: Duration,
    /// Time to send a request body once the head is in.
    pub(crate) body_read_timeout: Duration,
    /// Time a keep-alive connection may sit with no request and no traffic.
    pub(crate) idle_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_conns: 4096,
            max_conns_per_client: 200,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
        }
    }
}

impl HttpLimits {
    /// The defaults, overridden by what the configuration files set.
    pub(crate) fn from_file(file: &LimitsFileConfig) -> HttpLimits {
        let d = HttpLimits::default();
        let conns = |v: Option<u32>, default: usize| {
            v.and_then(|n| usize::try_from(n).ok()).unwrap_or(default)
        };
        HttpLimits {
            max_conns: conns(file.http_max_conns, d.max_conns),
            max_conns_per_client: conns(file.http_max_conns_per_client, d.max_conns_per_client),
            handshake_timeout: file.https_handshake_timeout.unwrap_or(d.handshake_timeout),
            header_read_timeout: file
                .http_header_read_timeout
                .unwrap_or(d.header_read_timeout),
            body_read_timeout: file.http_body_read_timeout.unwrap_or(d.body_read_timeout),
            idle_timeout: file.http_idle_timeout.unwrap_or(d.idle_timeout),
        }
    }

    /// Lowers `max_conns` to what `open_files` (the process's open-file limit) leaves after
    /// the descriptors the agent needs for itself, so that the cap is reached before
    /// `accept` starts failing. Returns the original value when it was lowered.
    pub(crate) fn fit_open_files(&mut self, open_files: u64) -> Option<usize> {
        let room = if open_files > 2 * RESERVED_FDS {
            open_files - RESERVED_FDS
        } else {
            (open_files / 2).max(1)
        };
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        (self.max_conns > room).then(|| std::mem::replace(&mut self.max_conns, room))
    }
}

/// Raises the soft open-file limit to the hard one, as Go (and so Consul) does at start,
/// and returns the soft limit in force (None when it cannot be read).
pub(crate) fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current != lim.maximum {
        let raised = rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            lim = getrlimit(Resource::Nofile);
        }
    }
    // No soft limit at all: nothing to fit the cap to.
    Some(lim.current.unwrap_or(u64::MAX))
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    PerClient,
    Global,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
    refused_since_warning: u64,
    last_warning: Option<Instant>,
}

/// Open connections, in total and per client IP, shared by both listeners; each admitted
/// connection holds a [`Permit`].
#[derive(Debug)]
pub(crate) struct ConnTracker {
    limits: HttpLimits,
    counts: Mutex<Counts>,
    drained: Notify,
}

impl ConnTracker {
    /// A tracker enforcing `limits`.
    pub(crate) fn new(limits: HttpLimits) -> Arc<ConnTracker> {
        Arc::new(ConnTracker {
            limits,
            counts: Mutex::new(Counts::default()),
            drained: Notify::new(),
        })
    }

    fn counts(&self) -> MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: every update is one step.
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let mut c = self.counts();
        let refusal = if c.total >= self.limits.max_conns {
            Some(Refusal::Global)
        } else if self.limits.max_conns_per_client > 0
            && c.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_conns_per_client
        {
            Some(Refusal::PerClient)
        } else {
            None
        };
        if let Some(r) = refusal {
            // One warning per 10 s at most: an attack must not also flood the log.
            c.refused_since_warning += 1;
            let now = Instant::now();
            if c.last_warning
                .is_none_or(|t| now >= t + Duration::from_secs(10))
            {
                let (what, limit) = match r {
                    Refusal::PerClient => (
                        "limits.http_max_conns_per_client",
                        self.limits.max_conns_per_client,
                    ),
                    Refusal::Global => ("limits.http_max_conns", self.limits.max_conns),
                };
                tracing::warn!(
                    client = %ip,
                    limit = what,
                    value = limit,
                    refused = c.refused_since_warning,
                    "HTTP connections refused: connection limit reached"
                );
                c.refused_since_warning = 0;
                c.last_warning = Some(now);
            }
            return Err(r);
        }
        c.total += 1;
        *c.per_ip.entry(ip).or_insert(0) += 1;
        Ok(Permit {
            tracker: Arc::clone(self),
            ip,
        })
    }

    fn release(&self, ip: IpAddr) {
        let mut c = self.counts();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_ip.remove(&ip);
            }
        }
        if c.total == 0 {
            self.drained.notify_waiters();
        }
    }

    /// Resolves once no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.counts().total == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// One admitted connection; frees its place when dropped.
#[derive(Debug)]
struct Permit {
    tracker: Arc<ConnTracker>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.tracker.release(self.ip);
    }
}

/// Serves `app` on `listener` (over TLS with `tls`) until `stop` turns true. Connections
/// already open are then asked to finish (idle ones close at once, requests in flight
/// complete); [`ConnTracker::drained`] tells when they all have.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    tracker: Arc<ConnTracker>,
    mut stop: watch::Receiver<bool>,
) {
    let service = TowerToHyperService::new(app);
    let mut last_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => break,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                if !is_connection_error(&e) {
                    // Out of descriptors (or memory): wait for connections to close rather
                    // than spin, and say so without flooding the log.
                    let now = Instant::now();
                    if last_warning.is_none_or(|t| now >= t + Duration::from_secs(10)) {
                        tracing::warn!(error = %e, "accepting an HTTP connection failed");
                        last_warning = Some(now);
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                continue;
            }
        };
        let ip = client_ip(peer);
        match tracker.admit(ip) {
            Ok(permit) => {
                tokio::spawn(connection(
                    stream,
                    peer,
                    tls.clone(),
                    service.clone(),
                    tracker.limits.clone(),
                    stop.clone(),
                    permit,
                ));
            }
            Err(r) => refuse(stream, tls.is_none(), r),
        }
    }
}

/// Errors about one connection (which is gone already), not about the listener.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// IPv4 clients of an IPv6 listener count as their IPv4 address.
fn client_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        ip => ip,
    }
}

/// Answers a refused plain-HTTP connection without waiting for anything (the client may
/// not read), then closes it.
fn refuse(stream: TcpStream, plain: bool, why: Refusal) {
    if plain {
        let (status, text) = match why {
            Refusal::PerClient => (
                "429 Too Many Requests",
                "Your IP is issuing too many concurrent connections, please rate limit your calls.",
            ),
            Refusal::Global => (
                "503 Service Unavailable",
                "The agent has too many open connections, please try again later.",
            ),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{text}\n",
            text.len() + 1
        );
        let _ = stream.try_write(answer.as_bytes());
        // Read what already arrived: closing with unread data would reset the connection,
        // which can discard the answer before the client reads it.
        let mut buf = [0u8; 4096];
        for _ in 0..4 {
            match stream.try_read(&mut buf) {
                Ok(n) if n > 0 => continue,
                _ => break,
            }
        }
    }
    drop(stream);
}

type Service = TowerToHyperService<Router>;

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    service: Service,
    limits: HttpLimits,
    mut stop: watch::Receiver<bool>,
    _permit: Permit,
) {
    let _ = stream.set_nodelay(true);
    match tls {
        None => serve_connection(stream, peer, None, service, &limits, stop).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(stream));
            let tls = tokio::select! {
                r = handshake => r,
                _ = stop.wait_for(|s| *s) => return,
            };
            match tls {
                Ok(Ok(tls)) => {
                    // The verifier checked a presented certificate against the roots.
                    let tls_peer = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|chain| chain.first())
                        .and_then(|leaf| connect_core::tls::peer_identity(leaf).ok())
                        .map(TlsPeer);
                    serve_connection(tls, peer, tls_peer, service, &limits, stop).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    tls_peer: Option<TlsPeer>,
    service: Service,
    limits: &HttpLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: io,
        activity: Arc::clone(&activity),
    });
    let service = Tracked {
        tls_peer,
        inner: service,
        activity: Arc::clone(&activity),
        body_read_timeout: limits.body_read_timeout,
    };
    let conn = http1::Builder::new()
        // Our own watchdog times the head: hyper's timer would also run while the
        // connection waits idle for its next request, merging two different limits.
        .header_read_timeout(None)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    let watchdog = activity.expired(limits.header_read_timeout, limits.idle_timeout);
    tokio::pin!(watchdog);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            why = &mut watchdog => {
                // Dropping the connection closes the socket.
                tracing::debug!(%peer, reason = why, "HTTP connection closed");
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                // A request head not yet complete has no answer owed: close now rather
                // than hold the shutdown up. Otherwise hyper finishes what is running.
                if matches!(*activity.phase(), Phase::Head(_)) {
                    return;
                }
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Where a connection is in its request cycle.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// Waiting for a request head to start or finish (since the connection opened, or the
    /// first byte of the head arrived).
    Head(Instant),
    /// A handler is running: no timeout (blocking queries wait here).
    Handler,
    /// No request running since the instant (the last response ended, or last wrote a
    /// byte); the first byte read starts a new head.
    Idle(Instant),
}

/// A connection's phase, kept by its I/O and its service, watched by its watchdog.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            phase: Mutex::new(Phase::Head(Instant::now())),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.phase.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, phase: Phase) {
        *self.phase() = phase;
        self.changed.notify_one();
    }

    /// Bytes arrived: the first of a new request head, when idle.
    fn on_read(&self) {
        let mut p = self.phase();
        if let Phase::Idle(_) = *p {
            *p = Phase::Head(Instant::now());
            drop(p);
            self.changed.notify_one();
        }
    }

    /// Bytes left: a response still being written is progress, not idleness.
    fn on_write(&self) {
        let mut p = self.phase();
        if let Phase::Idle(_) = *p {
            *p = Phase::Idle(Instant::now());
        }
    }

    /// Resolves, with the reason, once the connection has overstayed its phase.
    async fn expired(&self, header_read: Duration, idle: Duration) -> &'static str {
        loop {
            let deadline = match *self.phase() {
                Phase::Head(since) => {
                    Some((since + header_read, "request head not received in time"))
                }
                Phase::Idle(since) => Some((since + idle, "idle")),
                Phase::Handler => None,
            };
            match deadline {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    // Woken early by a change of phase; on time, the loop re-reads the
                    // phase, which writes may have moved on.
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// The connection's byte stream, reporting traffic to its [`Activity`].
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.on_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.on_write();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The router, marking the connection busy while a handler runs and bounding the time the
/// request body may take.
#[derive(Clone)]
struct Tracked {
    /// The identity the client proved with a certificate, handed to every request.
    tls_peer: Option<TlsPeer>,
    inner: Service,
    activity: Arc<Activity>,
    body_read_timeout: Duration,
}

/// Back to idle when the handler is done, also when its future is dropped.
struct HandlerRunning(Arc<Activity>);

impl Drop for HandlerRunning {
    fn drop(&mut self) {
        self.0.set(Phase::Idle(Instant::now()));
    }
}

impl hyper::service::Service<Request<Incoming>> for Tracked {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.set(Phase::Handler);
        let running = HandlerRunning(Arc::clone(&self.activity));
        let whole = http_body::Body::is_end_stream(req.body());
        let received = Arc::new(AtomicBool::new(whole));
        let mut req = req;
        if let Some(p) = &self.tls_peer {
            req.extensions_mut().insert(p.clone());
        }
        let req = req.map(|inner| TimedBody {
            inner,
            received: Arc::clone(&received),
        });
        let handler = hyper::service::Service::call(&self.inner, req);
        let limit = self.body_read_timeout;
        Box::pin(async move {
            let _running = running;
            if whole {
                // No body to wait for (most requests): no timer either.
                return handler.await;
            }
            let late = async {
                tokio::time::sleep(limit).await;
                if received.load(Ordering::Acquire) {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                r = handler => r,
                () = late => Ok(body_too_slow(limit)),
            }
        })
    }
}

/// `408 Request Timeout`, closing the connection (the rest of the body is not wanted).
fn body_too_slow(limit: Duration) -> Response<Body> {
    let text = format!(
        "request body not received within {} (limits.http_body_read_timeout)\n",
        connect_core::duration::format_go_duration(limit)
    );
    let mut resp = Response::new(Body::from(text));
    *resp.status_mut() = StatusCode::REQUEST_TIMEOUT;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A request body that records when it has been received in full (or given up on).
struct TimedBody {
    inner: Incoming,
    received: Arc<AtomicBool>,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        let finished = match &r {
            Poll::Ready(None | Some(Err(_))) => true,
            Poll::Ready(Some(Ok(_))) => self.inner.is_end_stream(),
            Poll::Pending => false,
        };
        if finished {
            self.received.store(true, Ordering::Release);
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for TimedBody {
    fn drop(&mut self) {
        // A handler that dropped the body is not waiting for it.
        self.received.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_conns: usize, per_client: usize) -> HttpLimits {
        HttpLimits {
            max_conns,
            max_conns_per_client: per_client,
            ..HttpLimits::default()
        }
    }

    #[test]
    fn per_client_and_global_caps() {
        let t = ConnTracker::new(limits(3, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let a1 = t.admit(a).unwrap();
        let _a2 = t.admit(a).unwrap();
        assert_eq!(t.admit(a).unwrap_err(), Refusal::PerClient);
        let b1 = t.admit(b).unwrap();
        assert_eq!(t.admit(b).unwrap_err(), Refusal::Global);
        drop(a1);
        let _a3 = t.admit(a).unwrap();
        drop(b1);
        assert_eq!(t.counts().per_ip.get(&b), None, "empty entries are removed");
    }

    #[test]
    fn zero_per_client_means_no_per_client_limit() {
        let t = ConnTracker::new(limits(10, 0));
        let a: IpAddr = "::1".parse().unwrap();
        let held: Vec<_> = (0..10).map(|_| t.admit(a).unwrap()).collect();
        assert_eq!(t.admit(a).unwrap_err(), Refusal::Global);
        drop(held);
        assert_eq!(t.counts().total, 0);
    }

    #[test]
    fn ipv4_mapped_clients_count_as_ipv4() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert_eq!(client_ip(mapped), "127.0.0.1".parse::<IpAddr>().unwrap());
        let v6: SocketAddr = "[::1]:5000".parse().unwrap();
        assert_eq!(client_ip(v6), "::1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn the_cap_fits_the_open_file_limit() {
        let mut l = HttpLimits::default();
        assert_eq!(l.fit_open_files(1 << 20), None);
        assert_eq!(l.max_conns, 4096);
        assert_eq!(l.fit_open_files(1024), Some(4096));
        assert_eq!(l.max_conns, 1024 - RESERVED_FDS as usize);
        let mut tiny = HttpLimits::default();
        tiny.fit_open_files(100);
        assert_eq!(tiny.max_conns, 50);
    }

    #[test]
    fn limits_from_the_file_override_defaults() {
        let file = LimitsFileConfig {
            http_max_conns_per_client: Some(0),
            http_idle_timeout: Some(Duration::from_secs(5)),
            ..LimitsFileConfig::default()
        };
        let l = HttpLimits::from_file(&file);
        assert_eq!(l.max_conns_per_client, 0);
        assert_eq!(l.idle_timeout, Duration::from_secs(5));
        assert_eq!(
            l.header_read_timeout,
            HttpLimits::default().header_read_timeout
        );
        assert_eq!(
            HttpLimits::from_file(&LimitsFileConfig::default()),
            HttpLimits::default()
        );
    }
}
