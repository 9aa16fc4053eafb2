//! The Workload API's Unix socket: created with the configured mode and owner, every
//! connection attested from its peer credentials when accepted, and bounded (connections,
//! streams per connection, message and header sizes) before any request is read
//! (ARCHITECTURE.md, Principles: every socket is an attack surface).

use std::fmt;
use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tonic::codegen::tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::attest::{Caller, WorkloadSelector, attest};
use super::authority::AuthorityFix;
use super::proto::spiffe_workload_api_server::SpiffeWorkloadApiServer;
use super::service::{Attested, WorkloadApi};
use crate::agent::Agent;
use crate::ca::{DEFAULT_JWT_TTL, MAX_JWT_TTL};
use crate::{Error, ErrorKind};

/// The largest request message the socket decodes (Workload API requests are a few audience
/// strings or one token).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The largest header list a request may send.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Settings of the Workload API socket: `workload_api { ... }` of the agent configuration.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WorkloadApiConfig {
    /// Where the socket is created (a stale socket there is replaced; any other file is an
    /// error).
    pub socket: PathBuf,
    /// The socket's permission bits (default `0o770`: the owner and group connect).
    pub socket_mode: u32,
    /// The socket's owner, if not the agent's user.
    pub socket_uid: Option<u32>,
    /// The socket's group, if not the agent's group.
    pub socket_gid: Option<u32>,
    /// The registrations callers are attested against.
    pub workloads: Vec<WorkloadSelector>,
    /// Open connections at most; more are closed when accepted.
    pub max_conns: usize,
    /// Concurrent calls (streams) per connection at most.
    pub max_streams_per_conn: u32,
    /// The lifetime of the JWT-SVIDs issued (at most 1 h).
    pub jwt_ttl: Duration,
}

impl fmt::Debug for WorkloadApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadApiConfig")
            .field("socket", &self.socket)
            .field("socket_mode", &format_args!("{:#o}", self.socket_mode))
            .field("socket_uid", &self.socket_uid)
            .field("socket_gid", &self.socket_gid)
            .field("workloads", &self.workloads)
            .field("max_conns", &self.max_conns)
            .field("max_streams_per_conn", &self.max_streams_per_conn)
            .field("jwt_ttl", &self.jwt_ttl)
            .finish()
    }
}

impl WorkloadApiConfig {
    /// A socket at `socket` with the defaults and no registration yet.
    pub fn new(socket: impl Into<PathBuf>) -> WorkloadApiConfig {
        WorkloadApiConfig {
            socket: socket.into(),
            socket_mode: 0o770,
            socket_uid: None,
            socket_gid: None,
            workloads: Vec::new(),
            max_conns: 1024,
            max_streams_per_conn: 64,
            jwt_ttl: DEFAULT_JWT_TTL,
        }
    }

    /// Checks every registration and bound.
    pub fn check(&self) -> Result<(), Error> {
        let invalid = |m: String| Error::new(ErrorKind::InvalidParameter, m);
        if self.socket.as_os_str().is_empty() {
            return Err(invalid("workload_api.socket is empty".into()));
        }
        if self.socket_mode > 0o777 {
            return Err(invalid(format!(
                "workload_api.socket_mode {:#o} is not a permission mode",
                self.socket_mode
            )));
        }
        if self.max_conns == 0 || self.max_streams_per_conn == 0 {
            return Err(invalid("workload_api limits must be at least 1".into()));
        }
        if self.jwt_ttl.is_zero() || self.jwt_ttl > MAX_JWT_TTL {
            return Err(invalid(format!(
                "workload_api.jwt_svid_ttl must be between 1s and {}s",
                MAX_JWT_TTL.as_secs()
            )));
        }
        for w in &self.workloads {
            w.check()?;
        }
        Ok(())
    }
}

/// A bound Workload API socket; [`WorkloadApiListener::serve`] answers on it.
#[derive(Debug)]
pub struct WorkloadApiListener {
    listener: UnixListener,
    config: WorkloadApiConfig,
}

fn io_error(what: &str, path: &Path, e: &io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

impl WorkloadApiListener {
    /// Creates the socket with the configured mode and owner.
    pub fn bind(config: WorkloadApiConfig) -> Result<WorkloadApiListener, Error> {
        config.check()?;
        let path = &config.socket;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)
                .map_err(|e| io_error("cannot remove the stale socket", path, &e))?,
            Ok(_) => {
                return Err(Error::new(
                    ErrorKind::InvalidParameter,
                    format!(
                        "workload_api.socket {} exists and is not a socket",
                        path.display()
                    ),
                ));
            }
            Err(_) => {}
        }
        let listener =
            UnixListener::bind(path).map_err(|e| io_error("cannot create the socket", path, &e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(config.socket_mode))
            .map_err(|e| io_error("cannot set the mode of", path, &e))?;
        if config.socket_uid.is_some() || config.socket_gid.is_some() {
            std::os::unix::fs::chown(path, config.socket_uid, config.socket_gid)
                .map_err(|e| io_error("cannot set the owner of", path, &e))?;
        }
        Ok(WorkloadApiListener { listener, config })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.config.socket
    }

    /// Serves the Workload API from `agent`'s cache (and JWT-SVIDs from its in-process server)
    /// until `shutdown` completes; the socket file is removed then.
    pub async fn serve(
        self,
        agent: Agent,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let WorkloadApiListener { listener, config } = self;
        let api = WorkloadApi::new(agent, config.jwt_ttl);
        let service = SpiffeWorkloadApiServer::new(api)
            .max_decoding_message_size(MAX_REQUEST_BYTES)
            .max_encoding_message_size(4 * 1024 * 1024);
        let (tx, rx) = mpsc::channel::<io::Result<WorkloadConn>>(16);
        let registrations: Arc<[WorkloadSelector]> = config.workloads.clone().into();
        let limit = Arc::new(Semaphore::new(config.max_conns));
        let accept = tokio::spawn(accept_loop(listener, registrations, limit, tx));
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(config.max_streams_per_conn)
            .concurrency_limit_per_connection(config.max_streams_per_conn as usize)
            .http2_max_header_list_size(MAX_HEADER_LIST)
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .add_service(service)
            .serve_with_incoming(ReceiverStream::new(rx));
        // Streams live as long as their clients: on shutdown the connections are dropped
        // rather than drained.
        let result = tokio::select! {
            r = server => r,
            () = shutdown => Ok(()),
        };
        accept.abort();
        let _ = std::fs::remove_file(&config.socket);
        result.map_err(|e| Error::new(ErrorKind::Io, format!("workload API: {e}")))
    }
}

/// Accepts, bounds and attests connections, and hands them to the gRPC server.
async fn accept_loop(
    listener: UnixListener,
    registrations: Arc<[WorkloadSelector]>,
    limit: Arc<Semaphore>,
    tx: mpsc::Sender<io::Result<WorkloadConn>>,
) {
    loop {
        let (io, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "workload API: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&limit).try_acquire_owned() else {
            tracing::warn!("workload API: connection limit reached; connection closed");
            continue;
        };
        let Ok(cred) = io.peer_cred() else {
            continue;
        };
        let caller = Caller::from_credentials(cred.uid(), cred.gid(), cred.pid());
        let services = attest(&registrations, &caller);
        tracing::debug!(
            uid = caller.uid,
            pid = caller.pid,
            ?services,
            "workload API: connection"
        );
        let conn = WorkloadConn {
            io,
            fix: AuthorityFix::new(),
            eof: false,
            info: Attested(Arc::new((caller, services))),
            _permit: permit,
        };
        if tx.send(Ok(conn)).await.is_err() {
            return;
        }
    }
}

/// An accepted connection with its attestation; holds its slot of the connection limit. What
/// the client sends goes through [`AuthorityFix`].
struct WorkloadConn {
    io: UnixStream,
    fix: AuthorityFix,
    eof: bool,
    info: Attested,
    _permit: OwnedSemaphorePermit,
}

impl Connected for WorkloadConn {
    type ConnectInfo = Attested;

    fn connect_info(&self) -> Attested {
        self.info.clone()
    }
}

impl AsyncRead for WorkloadConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let pending = this.fix.pending();
            if !pending.is_empty() {
                let n = pending.len().min(buf.remaining());
                buf.put_slice(&pending[..n]);
                this.fix.consume(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) if read.filled().is_empty() => this.eof = true,
                Poll::Ready(Ok(())) => this.fix.feed(read.filled())?,
            }
        }
    }
}

impl AsyncWrite for WorkloadConn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}
