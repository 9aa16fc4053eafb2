//! Blocking wrappers for callers without an async runtime (the C ABI, simple programs).
//!
//! They run on one small runtime owned by libconnect (two worker threads, created on first
//! use), so a caller never has to know about tokio. Calling them from inside an async
//! runtime is refused with `InvalidParameter` rather than deadlocking: use the async API
//! there.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::ToSocketAddrs;
use tokio::runtime::{Handle, Runtime};

use super::client::ExpectedPeer;
use super::errors::to_io;
use super::identity::Identity;
use super::service::Service;
use crate::spiffe::SpiffeId;
use crate::{Error, ErrorKind, Result};

/// The runtime behind every blocking call.
pub fn handle() -> Result<Handle> {
    static RT: OnceLock<std::result::Result<Runtime, String>> = OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("libconnect-io")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    });
    match rt {
        Ok(rt) => Ok(rt.handle().clone()),
        Err(e) => Err(Error::new(
            ErrorKind::Internal,
            format!("starting the I/O runtime: {e}"),
        )),
    }
}

/// The runtime's handle, refusing to block inside another runtime (which would panic or
/// stall that runtime's worker).
fn blocking_handle() -> Result<Handle> {
    if Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::InvalidParameter,
            "blocking libconnect call made from inside an async runtime; use the async API",
        ));
    }
    handle()
}

fn with_timeout<T>(
    handle: &Handle,
    timeout: Option<Duration>,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    handle.block_on(async {
        match timeout {
            None => fut.await,
            Some(t) => tokio::time::timeout(t, fut).await.unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    format!("{what}: timed out after {t:?}"),
                ))
            }),
        }
    })
}

/// Waits until `identity` is ready, at most `timeout`.
pub fn ready_wait(identity: &Identity, timeout: Duration) -> Result<()> {
    let h = blocking_handle()?;
    h.block_on(identity.ready_wait(timeout))
}

/// A blocking [`super::Listener`].
pub struct Listener {
    inner: super::Listener,
    handle: Handle,
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Listener")
            .field("local_addr", &self.inner.local_addr())
            .finish_non_exhaustive()
    }
}

/// Listens on `addr` for `service`.
pub fn listen(service: &Service, addr: impl ToSocketAddrs) -> Result<Listener> {
    let handle = blocking_handle()?;
    let inner = handle.block_on(service.listen(addr))?;
    Ok(Listener { inner, handle })
}

impl Listener {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr()
    }

    /// The next authenticated connection, waiting at most `timeout` (`None`: forever).
    pub fn accept(&mut self, timeout: Option<Duration>) -> Result<Connection> {
        let handle = self.handle.clone();
        let inner = with_timeout(&handle, timeout, "accept", self.inner.accept())?;
        Ok(Connection {
            inner,
            handle,
            read_timeout: None,
            write_timeout: None,
        })
    }
}

/// Dials `addr` expecting `expected`, within the client's handshake timeout.
pub fn dial_addr(
    service: &Service,
    addr: impl ToSocketAddrs,
    expected: impl Into<ExpectedPeer>,
) -> Result<Connection> {
    let handle = blocking_handle()?;
    let inner = handle.block_on(service.dial_addr(addr, expected))?;
    Ok(Connection {
        inner,
        handle,
        read_timeout: None,
        write_timeout: None,
    })
}

/// A blocking [`super::Connection`]: `std::io::Read` and `Write`, with optional timeouts
/// (`io::ErrorKind::TimedOut`). Map its `io::Error`s with
/// [`error_from_io`](super::error_from_io).
pub struct Connection {
    inner: super::Connection,
    handle: Handle,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("blocking::Connection")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// The peer's SPIFFE ID.
    pub fn peer_id(&self) -> &SpiffeId {
        self.inner.peer_id()
    }

    /// The async connection underneath.
    pub fn get_ref(&self) -> &super::Connection {
        &self.inner
    }

    /// Bounds every later read (`None`: wait forever).
    pub fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// Bounds every later write and flush (`None`: wait forever).
    pub fn set_write_timeout(&mut self, t: Option<Duration>) {
        self.write_timeout = t;
    }

    /// Sends close_notify and shuts down the write side.
    pub fn shutdown(&mut self) -> io::Result<()> {
        let t = self.write_timeout;
        let inner = &mut self.inner;
        run_io(&self.handle, t, inner.shutdown())
    }
}

fn run_io<T>(
    handle: &Handle,
    timeout: Option<Duration>,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> io::Result<T> {
    if Handle::try_current().is_ok() {
        return Err(to_io(Error::new(
            ErrorKind::InvalidParameter,
            "blocking libconnect I/O from inside an async runtime; use the async API",
        )));
    }
    handle.block_on(async {
        match timeout {
            None => fut.await,
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "i/o timeout"))),
        }
    })
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let t = self.read_timeout;
        let inner = &mut self.inner;
        run_io(&self.handle, t, inner.read(buf))
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let t = self.write_timeout;
        let inner = &mut self.inner;
        run_io(&self.handle, t, inner.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        let t = self.write_timeout;
        let inner = &mut self.inner;
        run_io(&self.handle, t, inner.flush())
    }
}
