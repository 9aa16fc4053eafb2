//! tokio plumbing: an authenticated [`Connection`] and a [`Listener`] that hands out only
//! connections that passed verification and authorization.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
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
    stream: TlsStream<TcpStream>,
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
    pub(crate) fn new(stream: TlsStream<TcpStream>, peer_id: SpiffeId) -> Connection {
        Connection { stream, peer_id }
    }

    fn common(&self) -> &rustls::CommonState {
        match &self.stream {
            TlsStream::Client(s) => s.get_ref().1,
            TlsStream::Server(s) => s.get_ref().1,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.stream {
            TlsStream::Client(s) => s.get_ref().0,
            TlsStream::Server(s) => s.get_ref().0,
        }
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

    /// The tokio-rustls stream.
    pub fn into_inner(self) -> TlsStream<TcpStream> {
        self.stream
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
                handshakes.spawn(async move {
                    if let Ok(conn) = srv.accept(stream).await {
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
