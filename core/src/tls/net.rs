//! tokio plumbing: an authenticated [`Connection`] and a [`Listener`] that hands out only
//! connections that passed verification and authorization.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsStream;

use super::errors::error_from_io;
use super::server::MtlsServer;
use crate::certs::CertInfo;
use crate::spiffe::SpiffeId;
use crate::{Error, ErrorKind, Result};

/// An mTLS connection whose peer has been verified (and, on the server side, authorized).
///
/// Read and write it with tokio's `AsyncReadExt`/`AsyncWriteExt`; I/O errors can be mapped
/// with [`error_from_io`](super::error_from_io).
pub struct Connection {
    /// Present while a listener may revoke this connection; dropping it unregisters. Declared
    /// first so that it drops first: a peer that sees the socket close can count on the
    /// connection being gone from the listener's registry.
    live: Option<LiveGuard>,
    stream: TlsStream<Socket>,
    peer_id: SpiffeId,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("peer_id", &self.peer_id.to_string())
            .field("peer_addr", &self.peer_addr().ok())
            .field("resumed", &self.is_resumed())
            .finish_non_exhaustive()
    }
}

impl Connection {
    pub(crate) fn new(stream: TlsStream<Socket>, peer_id: SpiffeId) -> Connection {
        Connection {
            live: None,
            stream,
            peer_id,
        }
    }

    fn common(&self) -> &rustls::CommonState {
        match &self.stream {
            TlsStream::Client(s) => s.get_ref().1,
            TlsStream::Server(s) => s.get_ref().1,
        }
    }

    fn socket(&self) -> &Socket {
        match &self.stream {
            TlsStream::Client(s) => s.get_ref().0,
            TlsStream::Server(s) => s.get_ref().0,
        }
    }

    fn tcp(&self) -> &TcpStream {
        self.socket().get_ref()
    }

    /// The peer's SPIFFE ID (Go's `CertURIFromConn`).
    pub fn peer_id(&self) -> &SpiffeId {
        &self.peer_id
    }

    /// The chain the peer presented, leaf first.
    pub fn peer_certificates(&self) -> &[CertificateDer<'static>] {
        self.common().peer_certificates().unwrap_or_default()
    }

    /// The serial of the peer's leaf, colon-hex.
    pub fn peer_serial(&self) -> Option<String> {
        let leaf = self.peer_certificates().first()?;
        CertInfo::from_der(leaf).ok().map(|i| i.serial_hex())
    }

    /// Whether the handshake resumed an earlier session.
    pub fn is_resumed(&self) -> bool {
        self.common().handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> Option<rustls::ProtocolVersion> {
        self.common().protocol_version()
    }

    /// The negotiated key-exchange group.
    pub fn key_exchange_group(&self) -> Option<rustls::NamedGroup> {
        self.common()
            .negotiated_key_exchange_group()
            .map(|g| g.name())
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.common().alpn_protocol()
    }

    /// Our address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// The peer's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// The tokio-rustls stream. The stream is no longer tracked for revocation (see the
    /// [module documentation](super#revocation-of-live-connections)).
    pub fn into_inner(self) -> TlsStream<Socket> {
        drop(self.live);
        self.stream
    }

    /// The connection as a blocking `std` socket and the rustls state, for a caller that
    /// drives the TLS records itself, blocking or with poll/epoll (the C ABI does). For a
    /// connection a listener accepted, [`SyncParts::revocable`] keeps it registered: while it
    /// is kept, a change of intentions that denies the peer still shuts the socket down
    /// (reads see end-of-stream, the peer a FIN).
    ///
    /// Errors: `Io` when the socket cannot be taken from the tokio runtime.
    pub fn into_sync_parts(self) -> Result<SyncParts> {
        let Connection { stream, live, .. } = self;
        let (socket, tls) = match stream {
            TlsStream::Client(s) => {
                let (io, conn) = s.into_inner();
                (io, rustls::Connection::Client(conn))
            }
            TlsStream::Server(s) => {
                let (io, conn) = s.into_inner();
                (io, rustls::Connection::Server(conn))
            }
        };
        // Under the registry's lock the revocation task holds no strong reference to the
        // socket (it takes them only under the lock), and it cannot take one while the
        // registration is moved to the std socket.
        let mut registered = live.as_ref().map(|g| (g.set.lock(), g.id));
        let socket = socket.into_std().map_err(|e| error_from_io(&e))?;
        if let Some(l) = registered
            .as_mut()
            .and_then(|(reg, id)| reg.conns.get_mut(id))
        {
            l.socket = SocketRef::Sync(Arc::downgrade(&socket));
        }
        drop(registered);
        Ok(SyncParts {
            socket,
            tls,
            revocable: live.map(Revocable),
        })
    }
}

/// A [`Connection`] taken apart by [`Connection::into_sync_parts`].
pub struct SyncParts {
    /// The socket, in blocking mode. Shared only with the listener's revocation, which holds
    /// a weak reference and shuts the socket down through it: the descriptor closes when
    /// this `Arc` is dropped.
    pub socket: Arc<std::net::TcpStream>,
    /// The TLS state, handshake done.
    pub tls: rustls::Connection,
    /// For a connection a listener accepted: its registration with the listener's
    /// revocation. Drop it with the socket.
    pub revocable: Option<Revocable>,
}

impl fmt::Debug for SyncParts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyncParts")
            .field("peer_addr", &self.socket.peer_addr().ok())
            .field("revocable", &self.revocable)
            .finish_non_exhaustive()
    }
}

/// Keeps a connection taken apart with [`Connection::into_sync_parts`] registered with its
/// listener's revocation; dropping it unregisters.
pub struct Revocable(LiveGuard);

impl fmt::Debug for Revocable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Revocable").field("id", &self.0.id).finish()
    }
}

/// The TCP socket under a [`Connection`]'s TLS. It is a tokio [`TcpStream`] that the
/// connection's listener can also reach, through a weak reference, to shut it down when the
/// peer stops being authorized: a held connection costs one descriptor, not a second one
/// kept for revocation.
pub struct Socket {
    tcp: Arc<TcpStream>,
}

impl fmt::Debug for Socket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Socket")
            .field("local_addr", &self.tcp.local_addr().ok())
            .field("peer_addr", &self.tcp.peer_addr().ok())
            .finish()
    }
}

impl Socket {
    pub(crate) fn new(tcp: TcpStream) -> Socket {
        Socket { tcp: Arc::new(tcp) }
    }

    /// The tokio stream, for its addresses and socket options.
    pub fn get_ref(&self) -> &TcpStream {
        &self.tcp
    }

    fn downgrade(&self) -> Weak<TcpStream> {
        Arc::downgrade(&self.tcp)
    }

    /// Runs `write` once the socket is writable, again after each `WouldBlock` (which clears
    /// the readiness it waited for), as tokio's own `poll_write` does with `&mut`.
    fn poll_write_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.tcp.poll_write_ready(cx))?;
            match write(&self.tcp) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }

    /// The socket as a blocking `std` stream, leaving the tokio runtime.
    fn into_std(self) -> io::Result<Arc<std::net::TcpStream>> {
        // The only other strong references are the revocation task's, taken and dropped
        // under its registry's lock; callers hold that lock or were never registered.
        let tcp = Arc::try_unwrap(self.tcp).map_err(|_| {
            io::Error::other("the socket is being shut down by revocation; try again")
        })?;
        let std = tcp.into_std()?;
        std.set_nonblocking(false)?;
        Ok(Arc::new(std))
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // tokio's own `poll_read` needs `&mut TcpStream`; through the shared reference this
        // is the same readiness loop (a `WouldBlock` clears the readiness it waited for).
        loop {
            std::task::ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |tcp| tcp.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_with(cx, |tcp| tcp.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(SockRef::from(&*self.tcp).shutdown(std::net::Shutdown::Write))
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// How many authenticated connections wait for [`Listener::accept`] before handshakes of new
/// ones wait for room.
const BACKLOG: usize = 64;

/// One live connection as the revocation task sees it.
struct Live {
    /// The chain the peer presented, shared with the other live connections that presented
    /// the same bytes (the key of [`Registry::peers`]).
    chain: Arc<[CertificateDer<'static>]>,
    /// The connection's socket: shutting it down ends the connection whatever the
    /// application is doing with it (reads return end-of-stream, the peer gets a FIN).
    socket: SocketRef,
}

/// A weak reference to a live connection's socket, tokio's or (once taken apart for the C
/// ABI) std's. Weak, so that the descriptor closes with the connection; upgraded only under
/// the registry's lock, so that [`Connection::into_sync_parts`] can take the socket over.
enum SocketRef {
    Async(Weak<TcpStream>),
    Sync(Weak<std::net::TcpStream>),
}

impl SocketRef {
    /// Shuts the socket down both ways, if the connection still has it.
    fn shut_down(&self) {
        let both = std::net::Shutdown::Both;
        let _ = match self {
            SocketRef::Async(w) => w.upgrade().map(|s| SockRef::from(&*s).shutdown(both)),
            SocketRef::Sync(w) => w.upgrade().map(|s| s.shutdown(both)),
        };
    }
}

/// A distinct peer chain among the live connections.
struct PeerEntry {
    peer: SpiffeId,
    /// How many entries of [`Registry::conns`] share the chain.
    connections: usize,
}

/// The live connections of one listener. A mesh's clients present the same few chains again
/// and again, so each distinct chain is held (and re-authorized) once, however many
/// connections presented it: a held connection costs a map slot and a weak reference to its
/// socket, not a copy of its chain or a descriptor.
#[derive(Default)]
struct Registry {
    conns: HashMap<u64, Live>,
    peers: HashMap<Arc<[CertificateDer<'static>]>, PeerEntry>,
}

impl Registry {
    fn insert(
        &mut self,
        id: u64,
        peer: &SpiffeId,
        chain: &[CertificateDer<'static>],
        socket: SocketRef,
    ) {
        let known = self.peers.get_key_value(chain).map(|(k, _)| Arc::clone(k));
        let chain = match known {
            Some(shared) => {
                if let Some(entry) = self.peers.get_mut(&*shared) {
                    entry.connections += 1;
                }
                shared
            }
            None => {
                let shared: Arc<[CertificateDer<'static>]> = chain.iter().cloned().collect();
                self.peers.insert(
                    Arc::clone(&shared),
                    PeerEntry {
                        peer: peer.clone(),
                        connections: 1,
                    },
                );
                shared
            }
        };
        self.conns.insert(id, Live { chain, socket });
    }

    fn remove(&mut self, id: u64) -> Option<Live> {
        let live = self.conns.remove(&id)?;
        if let Some(entry) = self.peers.get_mut(&*live.chain) {
            entry.connections -= 1;
            if entry.connections == 0 {
                self.peers.remove(&*live.chain);
            }
        }
        Some(live)
    }
}

/// The live connections of one listener and the ids it hands out.
#[derive(Default)]
struct LiveSet {
    next: AtomicU64,
    registry: Mutex<Registry>,
}

impl LiveSet {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Re-authorizes every distinct live peer chain and shuts down the connections of the
    /// ones now denied.
    fn recheck(&self, server: &MtlsServer) {
        // Decide and shut down under the lock: authorizers are cheap and never block, a
        // shutdown is one system call, and a socket is upgraded only under the lock (see
        // `SocketRef`).
        let mut reg = self.lock();
        let denied: Vec<Arc<[CertificateDer<'static>]>> = reg
            .peers
            .iter()
            .filter(|(chain, e)| !server.still_authorized(&e.peer, chain, e.connections))
            .map(|(chain, _)| Arc::clone(chain))
            .collect();
        if denied.is_empty() {
            return;
        }
        let ids: Vec<u64> = reg
            .conns
            .iter()
            .filter(|(_, l)| denied.iter().any(|d| Arc::ptr_eq(d, &l.chain)))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(l) = reg.remove(id) {
                l.socket.shut_down();
            }
        }
    }
}

/// Unregisters a connection from its listener's [`LiveSet`] when the connection goes.
struct LiveGuard {
    set: Arc<LiveSet>,
    id: u64,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.set.lock().remove(self.id);
    }
}

/// Registers `conn` with `set`, then checks it once more: an authorizer change that landed
/// between its handshake and its registration was not seen by the revocation task.
fn track(mut conn: Connection, set: &Arc<LiveSet>, server: &MtlsServer) -> Option<Connection> {
    let id = set.next.fetch_add(1, Ordering::Relaxed);
    let socket = SocketRef::Async(conn.socket().downgrade());
    set.lock()
        .insert(id, &conn.peer_id, conn.peer_certificates(), socket);
    conn.live = Some(LiveGuard {
        set: Arc::clone(set),
        id,
    });
    // Checked after the insert: a change that lands later is seen by the task (it reads the
    // map after the change), one that landed earlier is seen here.
    server
        .still_authorized(&conn.peer_id, conn.peer_certificates(), 1)
        .then_some(conn)
}

/// Re-authorizes `set` on every change of the authorizer and every `interval`; ends when the
/// listener (the only strong owner besides live connections) and its connections are gone.
async fn revocation_task(server: MtlsServer, set: Weak<LiveSet>, interval: Duration) {
    let mut changes = server.authorizer_changes();
    loop {
        match changes.as_mut() {
            Some(rx) => {
                tokio::select! {
                    r = rx.changed() => if r.is_err() { changes = None; },
                    () = tokio::time::sleep(interval) => {}
                }
            }
            None => tokio::time::sleep(interval).await,
        }
        let Some(set) = set.upgrade() else { return };
        set.recheck(&server);
    }
}

/// Accepts TCP connections in the background and runs each handshake in its own task, so a
/// slow or silent client never holds up the others. [`accept`](Listener::accept) returns only
/// connections that passed verification and authorization; failures go to the server's
/// hooks and [`stats`](MtlsServer::stats). Dropping the listener stops it.
pub struct Listener {
    local_addr: SocketAddr,
    rx: mpsc::Receiver<Connection>,
    task: JoinHandle<()>,
    server: MtlsServer,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("local_addr", &self.local_addr)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Listener {
    pub(crate) fn spawn(tcp: TcpListener, server: MtlsServer) -> Result<Listener> {
        let local_addr = tcp.local_addr().map_err(|e| error_from_io(&e))?;
        let (tx, rx) = mpsc::channel(BACKLOG);
        let srv = server.clone();
        let live = server.revocation_interval().map(|interval| {
            let set = Arc::new(LiveSet::default());
            let task = tokio::spawn(revocation_task(
                server.clone(),
                Arc::downgrade(&set),
                interval,
            ));
            (set, task)
        });
        // The revocation task is not aborted with the listener: it keeps watching the
        // connections already handed out, and ends once they are all gone.
        let live = live.map(|(set, _task)| set);
        let task = tokio::spawn(async move {
            let mut handshakes = JoinSet::new();
            loop {
                while handshakes.try_join_next().is_some() {}
                let (stream, _) = match tcp.accept().await {
                    Ok(s) => s,
                    Err(_) => {
                        // Out of descriptors and the like: back off briefly instead of
                        // spinning, then keep serving.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let srv = srv.clone();
                let tx = tx.clone();
                let live = live.clone();
                handshakes.spawn(async move {
                    let Ok(conn) = srv.accept(stream).await else {
                        return;
                    };
                    let conn = match live {
                        Some(set) => track(conn, &set, &srv),
                        None => Some(conn),
                    };
                    if let Some(conn) = conn {
                        let _ = tx.send(conn).await;
                    }
                });
            }
        });
        Ok(Listener {
            local_addr,
            rx,
            task,
            server,
        })
    }

    /// The bound address (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The server behind this listener.
    pub fn server(&self) -> &MtlsServer {
        &self.server
    }

    /// The next authenticated connection.
    pub async fn accept(&mut self) -> Result<Connection> {
        self.rx
            .recv()
            .await
            .ok_or_else(|| Error::new(ErrorKind::Closed, "listener stopped"))
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}
