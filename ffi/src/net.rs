//! `connect_listener` and `connect_conn`: mutual-TLS sockets, blocking or non-blocking.
//!
//! Handshakes run in the core (verification, intentions, resumption checks) on the agent's
//! runtime. A finished connection is then handed to C as a plain socket plus the rustls
//! connection state, driven synchronously here, so that it works both blocking and with
//! poll/epoll and survives the agent.

use std::ffi::{c_char, c_int};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::Duration;

use connect_core::agent::DialOptions;
use connect_core::catalog::MeshGatewayMode;
use connect_core::tls::{Connection, Listener, error_from_io};
use connect_core::{Error, ErrorKind};

use crate::error::{boundary, boundary_or, connect_result, err};
use crate::handle::{
    Castable, OwnershipBox, box_into_ptr, free_box, try_arc, try_box_mut, try_clone_arc,
};
use crate::service::{ServiceInner, connect_service, timeout_of};
use crate::sigpipe::NoSigpipe;
use crate::strings::{connect_str, copy_text_out, try_out, try_str, write_out};

/// A listening socket that hands out only connections whose peer passed verification and the
/// service's intentions (a denied client is refused inside the handshake and never seen
/// here). Exclusively owned: use it from one thread at a time.
#[derive(Debug)]
#[allow(non_camel_case_types, reason = "C type name")]
pub struct connect_listener {
    _private: [u8; 0],
}

/// An established mutual-TLS connection with a verified peer. Blocking by default; see
/// `connect_conn_set_nonblocking` for poll/epoll. Exclusively owned: use it from one thread at
/// a time.
#[derive(Debug)]
#[allow(non_camel_case_types, reason = "C type name")]
pub struct connect_conn {
    _private: [u8; 0],
}

/// The value behind a `connect_listener`.
#[derive(Debug)]
pub(crate) struct ListenerInner {
    service: Arc<ServiceInner>,
    listener: Listener,
}

impl Castable for connect_listener {
    type Ownership = OwnershipBox;
    type RustType = ListenerInner;
    const NAME: &'static str = "listener";
}

impl Castable for connect_conn {
    type Ownership = OwnershipBox;
    type RustType = Conn;
    const NAME: &'static str = "conn";
}

/// The value behind a `connect_conn`: the socket and the rustls state.
#[derive(Debug)]
pub(crate) struct Conn {
    /// Shared only with the listener's revocation, which holds a weak reference.
    sock: Arc<TcpStream>,
    tls: rustls::Connection,
    peer_id: String,
    nonblocking: bool,
    close_notify_queued: bool,
    /// The TLS failure that ended the connection (an alert from the peer, a bad record):
    /// every later call reports it again.
    failed: Option<Error>,
    /// For an accepted connection: its listener's revocation may shut the socket down when
    /// the intentions stop allowing the peer. Dropped with the connection.
    _revocable: Option<connect_core::tls::Revocable>,
}

impl Conn {
    /// Takes over a connection whose handshake the core finished.
    fn from_core(c: Connection) -> Result<Conn, Error> {
        let peer_id = c.peer_id().to_string();
        let parts = c.into_sync_parts()?;
        Ok(Conn {
            sock: parts.socket,
            tls: parts.tls,
            peer_id,
            nonblocking: false,
            close_notify_queued: false,
            failed: None,
            _revocable: parts.revocable,
        })
    }

    fn io_error(&self, e: &io::Error, what: &str) -> Error {
        match e.kind() {
            io::ErrorKind::WouldBlock if self.nonblocking => {
                err(ErrorKind::WouldBlock, format!("{what} would block"))
            }
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                err(ErrorKind::Timeout, format!("{what}: i/o timeout"))
            }
            _ => error_from_io(e),
        }
    }

    /// Sends every TLS byte rustls has queued.
    fn flush_tls(&mut self) -> Result<(), Error> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut NoSigpipe(&self.sock)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                    ) =>
                {
                    return Err(self.peer_gone(&e));
                }
                Err(e) => return Err(self.io_error(&e, "write")),
            }
        }
        Ok(())
    }

    /// A write found the peer gone. If it said why first (a server denying us sends an
    /// `access_denied` alert, then closes), report that rather than the broken pipe.
    fn peer_gone(&mut self, e: &io::Error) -> Error {
        // A reset socket never blocks: this reads what arrived before the reset, if anything.
        for _ in 0..8 {
            match self.tls.read_tls(&mut &*self.sock) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Err(tls) = self.tls.process_new_packets() {
                        return self.fail(tls);
                    }
                }
            }
        }
        error_from_io(e)
    }

    /// [`Conn::flush_tls`] where "would block" is fine (the bytes stay queued).
    fn try_flush_tls(&mut self) -> Result<(), Error> {
        match self.flush_tls() {
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(()),
            other => other,
        }
    }

    /// Records the TLS failure that ends the connection.
    fn fail(&mut self, e: rustls::Error) -> Error {
        let e = error_from_io(&io::Error::new(io::ErrorKind::InvalidData, e));
        self.failed = Some(e.clone());
        e
    }

    /// The failure that ended the connection, if any.
    fn check_failed(&self) -> Result<(), Error> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn process(&mut self) -> Result<(), Error> {
        if let Err(e) = self.tls.process_new_packets() {
            let e = self.fail(e);
            // Tell the peer (the alert rustls queued), then report.
            let _ = self.try_flush_tls();
            return Err(e);
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        self.check_failed()?;
        loop {
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(error_from_io(&e)),
            }
            // Nothing decrypted is waiting: send what rustls queued (tickets, alerts), then
            // read more from the socket. A failure to send is for the next write to report:
            // what the peer sent may still be readable.
            let _ = self.try_flush_tls();
            match self.tls.read_tls(&mut &*self.sock) {
                // End of stream: the reader now reports a clean close or a truncation.
                Ok(_) => self.process()?,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.io_error(&e, "read")),
            }
        }
    }

    fn write(&mut self, data: &[u8]) -> Result<usize, Error> {
        self.check_failed()?;
        if self.close_notify_queued {
            return Err(err(ErrorKind::Closed, "write after connect_conn_shutdown"));
        }
        if !self.nonblocking {
            let mut done = 0;
            while done < data.len() {
                done += self
                    .tls
                    .writer()
                    .write(&data[done..])
                    .map_err(|e| error_from_io(&e))?;
                self.flush_tls()?;
            }
            return Ok(done);
        }
        self.try_flush_tls()?;
        let n = self
            .tls
            .writer()
            .write(data)
            .map_err(|e| error_from_io(&e))?;
        self.try_flush_tls()?;
        if n == 0 && !data.is_empty() {
            return Err(err(
                ErrorKind::WouldBlock,
                "write would block: the send buffer is full",
            ));
        }
        Ok(n)
    }

    fn shutdown(&mut self) -> Result<(), Error> {
        self.check_failed()?;
        if !self.close_notify_queued {
            self.tls.send_close_notify();
            self.close_notify_queued = true;
        }
        self.flush_tls()?;
        match self.sock.shutdown(Shutdown::Write) {
            Ok(()) => Ok(()),
            // The peer may have gone already; our side is closed either way.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(e) => Err(error_from_io(&e)),
        }
    }
}

/// Starts listening on `address` for mutual-TLS connections to `service`. Handshakes run in
/// the background; clients that fail verification or are denied by intentions are refused
/// there.
///
/// Registration: the listener also registers the instance in the agent's catalog as a
/// Connect-native service named like `service`, with the ID `<name>-<port>` and the address
/// and port it is bound to (a dev agent's own catalog, or the HTTP agent's
/// `/v1/agent/service/register`), so that `connect_conn_dial` finds it by name (a client
/// whose agent cached an answer without it sees it once the agent's blocking query on the
/// catalog returns, moments later). The instance is deregistered when the service is
/// released: after `connect_service_free` and the `connect_listener_free` of every listener
/// made from it.
///
/// Revocation: the listener re-checks every connection it accepted whenever the intentions
/// change, and at least once a second. A connection whose peer the intentions now deny is shut
/// down under both ends (no close_notify is sent): the client's next `connect_conn_read`
/// returns `CONNECT_RESULT_TLS` (the detail says the peer closed without close_notify), and
/// the server's own `connect_conn_read` on it returns `CONNECT_RESULT_TLS` as well (or data
/// already received before the shutdown first). This goes on after the listener is freed, as
/// long as a connection it accepted lives. New handshakes of the denied peer, resumed sessions
/// included, are refused with an `access_denied` alert.
///
/// Parameters:
/// - `service`: the service whose identity the listener presents and whose intentions it
///   enforces.
/// - `address`: `host:port`, NUL-terminated UTF-8 (`127.0.0.1:0` picks a free port; see
///   `connect_listener_get_local_addr`).
/// - `out`: receives the listener on success.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (not UTF-8), `CONNECT_RESULT_IO` (cannot bind),
/// `CONNECT_RESULT_PERMISSION_DENIED` (the agent's token may not register the service),
/// `CONNECT_RESULT_HTTP` (the HTTP agent refused the registration), `CONNECT_RESULT_CLOSED`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_listener_free`. The
/// listener keeps the service alive.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_listener_new(
    service: *const connect_service,
    address: *const c_char,
    out: *mut *mut connect_listener,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live service handle and a C string (documented).
        let (s, address) = unsafe { (try_clone_arc(service)?, try_str(address, "address")?) };
        let out = try_out(out, "out")?;
        let listener = s.agent().run(None, "listen", s.service().listen(address))?;
        let ptr = box_into_ptr::<connect_listener>(ListenerInner {
            service: s,
            listener,
        });
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out, ptr) };
        Ok(())
    })
}

/// Waits for the next connection that passed verification and authorization.
///
/// Parameters:
/// - `listener`: the listener.
/// - `timeout_ms`: the longest wait in milliseconds, or `CONNECT_WAIT_FOREVER`. 0 takes a
///   connection that already finished its handshake and returns `CONNECT_RESULT_TIMEOUT` at
///   once when none is waiting.
/// - `out`: receives the connection on success (blocking mode).
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`, `CONNECT_RESULT_TIMEOUT`,
/// `CONNECT_RESULT_CLOSED` (the agent was freed), `CONNECT_RESULT_IO`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_conn_free`. The connection
/// outlives the listener, the service and the agent.
///
/// Thread safety: needs external synchronization of `listener`; not from libconnect's threads.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_listener_accept(
    listener: *mut connect_listener,
    timeout_ms: u32,
    out: *mut *mut connect_conn,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live listener handle (documented).
        let l = unsafe { try_box_mut(listener) }?;
        let out = try_out(out, "out")?;
        let ListenerInner { service, listener } = l;
        let conn = service
            .agent()
            .run(timeout_of(timeout_ms), "accept", async {
                Conn::from_core(listener.accept().await?)
            })?;
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out, box_into_ptr::<connect_conn>(conn)) };
        Ok(())
    })
}

/// Copies the address the listener is bound to (`127.0.0.1:40123`, `[::1]:40123`).
///
/// Parameters:
/// - `listener`: the listener.
/// - `buf`, `len`: the output buffer; NUL-terminated. `buf` may be NULL with `len` 0 to ask
///   for the size.
/// - `out_n`: receives the length without the NUL, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `listener`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_listener_get_local_addr(
    listener: *mut connect_listener,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live listener handle; `buf`/`out_n` as documented.
        unsafe {
            let l = try_box_mut(listener)?;
            copy_text_out(&l.listener.local_addr().to_string(), buf, len, out_n)
        }
    })
}

/// The port the listener is bound to.
///
/// Parameters:
/// - `listener`: the listener.
///
/// Returns: the port; 0 for NULL or if a panic was caught.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `listener`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_listener_get_port(listener: *mut connect_listener) -> u16 {
    boundary_or(0, || {
        // SAFETY: NULL or a live listener handle (documented).
        unsafe { try_box_mut(listener) }.map_or(0, |l| l.listener.local_addr().port())
    })
}

/// Stops listening and frees the listener. Handshakes in progress are dropped; connections
/// already accepted are not affected. NULL is ignored.
///
/// Parameters:
/// - `listener`: the listener; never use it again.
///
/// Returns: nothing.
///
/// Memory and lifetimes: releases the listener and its reference to the service.
///
/// Thread safety: needs external synchronization of `listener`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_listener_free(listener: *mut connect_listener) {
    boundary_or((), || {
        // SAFETY: NULL or a live listener handle, freed once (documented).
        unsafe { free_box(listener) }
    });
}

/// Connects to a healthy instance of the service `target`, found through the catalog, and
/// runs the mTLS handshake: the server must present `target`'s identity.
///
/// With TLS 1.3 the server decides on intentions after the client's side of the handshake
/// is done: a client that intentions deny gets a connection whose first read fails with
/// `CONNECT_RESULT_TLS` ("remote error: tls: access denied").
///
/// Parameters:
/// - `service`: the calling service (its leaf is the client certificate).
/// - `target`: the destination service name, NUL-terminated UTF-8.
/// - `timeout_ms`: the longest time for lookup, TCP connect and handshake, or
///   `CONNECT_WAIT_FOREVER` (the handshake is still bounded by 10 s).
/// - `out`: receives the connection on success (blocking mode).
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER`, `CONNECT_RESULT_CONNECTION_REFUSED` (no healthy
/// instance, or every instance refused), `CONNECT_RESULT_TIMEOUT`,
/// `CONNECT_RESULT_PEER_IDENTITY_MISMATCH`, `CONNECT_RESULT_CERTIFICATE_VERIFICATION`,
/// `CONNECT_RESULT_NOT_READY`, `CONNECT_RESULT_TLS`, `CONNECT_RESULT_IO`,
/// `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_conn_free`.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_dial(
    service: *const connect_service,
    target: *const c_char,
    timeout_ms: u32,
    out: *mut *mut connect_conn,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live service handle and a C string (documented).
        let (s, target) = unsafe { (try_arc(service)?, try_str(target, "target")?) };
        let out = try_out(out, "out")?;
        let conn = s.agent().run(timeout_of(timeout_ms), "dial", async {
            Conn::from_core(s.service().dial(target).await?)
        })?;
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out, box_into_ptr::<connect_conn>(conn)) };
        Ok(())
    })
}

/// How a dial to another datacenter uses mesh gateways (Consul's upstream `MeshGateway.Mode`),
/// the `mesh_gateway_mode` of `connect_conn_dial_dc`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, reason = "C type name")]
pub enum connect_mesh_gateway_mode {
    /// Straight to an instance of the target in its datacenter (its address must be
    /// routable from here).
    None = 0,
    /// Through a mesh gateway of the caller's datacenter, which forwards to the target
    /// datacenter's gateway.
    Local = 1,
    /// Straight to a mesh gateway of the target's datacenter (its WAN address).
    Remote = 2,
}

fn mesh_gateway_mode_of(mode: u32) -> Result<MeshGatewayMode, Error> {
    match mode {
        m if m == connect_mesh_gateway_mode::None as u32 => Ok(MeshGatewayMode::None),
        m if m == connect_mesh_gateway_mode::Local as u32 => Ok(MeshGatewayMode::Local),
        m if m == connect_mesh_gateway_mode::Remote as u32 => Ok(MeshGatewayMode::Remote),
        other => Err(err(
            ErrorKind::InvalidParameter,
            format!("mesh gateway mode {other} is not a CONNECT_MESH_GATEWAY_MODE_* value"),
        )),
    }
}

/// Connects to a healthy instance of the service `target` in the datacenter `datacenter`
/// (Consul's upstream `Datacenter`), directly or through mesh gateways, and runs the mTLS
/// handshake. The server must present exactly
/// `spiffe://<our trust domain>/ns/default/dc/<datacenter>/svc/<target>`, and the dial sends
/// the SNI `<target>.default.<datacenter>.internal.<trust domain>` by which mesh gateways
/// route; gateways never see plaintext. A denial by the server's intentions shows as in
/// `connect_conn_dial`.
///
/// Parameters:
/// - `service`: the calling service (its leaf is the client certificate).
/// - `target`: the destination service name, NUL-terminated UTF-8.
/// - `datacenter`: the destination's datacenter, NUL-terminated UTF-8: 1 to 63 characters
///   from a-z, 0-9, `_` and `-`. The caller's own datacenter is allowed (the dial then
///   checks the datacenter too, and never uses gateways).
/// - `mesh_gateway_mode`: a `connect_mesh_gateway_mode` value.
/// - `timeout_ms`: the longest time for lookup, TCP connect and handshake, or
///   `CONNECT_WAIT_FOREVER` (the handshake is still bounded by 10 s).
/// - `out`: receives the connection on success (blocking mode).
///
/// Returns: `CONNECT_RESULT_OK`; `CONNECT_RESULT_NULL_PARAMETER`;
/// `CONNECT_RESULT_INVALID_PARAMETER` (a malformed target or datacenter name, an unknown
/// mode, a datacenter the agent has no path to — detail `No path to datacenter: <dc>` —, not
/// UTF-8); `CONNECT_RESULT_CONNECTION_REFUSED` (no healthy instance, or no healthy mesh
/// gateway for the mode, or every address refused); `CONNECT_RESULT_TIMEOUT`;
/// `CONNECT_RESULT_PEER_IDENTITY_MISMATCH` (the server is not `target` in `datacenter` of our
/// trust domain); `CONNECT_RESULT_CERTIFICATE_VERIFICATION`; `CONNECT_RESULT_NOT_READY`;
/// `CONNECT_RESULT_TLS`; `CONNECT_RESULT_HTTP` (the agent's catalog lookup failed);
/// `CONNECT_RESULT_IO`; `CONNECT_RESULT_CLOSED`; `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_conn_free`.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_dial_dc(
    service: *const connect_service,
    target: *const c_char,
    datacenter: *const c_char,
    mesh_gateway_mode: u32,
    timeout_ms: u32,
    out: *mut *mut connect_conn,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live service handle and C strings (documented).
        let (s, target, datacenter) = unsafe {
            (
                try_arc(service)?,
                try_str(target, "target")?,
                try_str(datacenter, "datacenter")?,
            )
        };
        let out = try_out(out, "out")?;
        let opts = DialOptions::datacenter(datacenter)
            .mesh_gateway(mesh_gateway_mode_of(mesh_gateway_mode)?);
        let conn = s.agent().run(timeout_of(timeout_ms), "dial", async {
            Conn::from_core(s.service().dial_with(target, &opts).await?)
        })?;
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out, box_into_ptr::<connect_conn>(conn)) };
        Ok(())
    })
}

/// Connects to `address` and runs the mTLS handshake, expecting the server there to be an
/// instance of `target`. See `connect_conn_dial` for how a denial shows.
///
/// Parameters:
/// - `service`: the calling service.
/// - `address`: `host:port`, NUL-terminated UTF-8.
/// - `target`: the destination service name, NUL-terminated UTF-8.
/// - `timeout_ms`: the longest time for TCP connect and handshake, or `CONNECT_WAIT_FOREVER`
///   (the handshake is still bounded by 10 s).
/// - `out`: receives the connection on success (blocking mode).
///
/// Returns: as `connect_conn_dial`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_conn_free`.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_dial_addr(
    service: *const connect_service,
    address: *const c_char,
    target: *const c_char,
    timeout_ms: u32,
    out: *mut *mut connect_conn,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live service handle and C strings (documented).
        let (s, address, target) = unsafe {
            (
                try_arc(service)?,
                try_str(address, "address")?,
                try_str(target, "target")?,
            )
        };
        let out = try_out(out, "out")?;
        let conn = s.agent().run(timeout_of(timeout_ms), "dial", async {
            Conn::from_core(s.service().dial_addr(address, target).await?)
        })?;
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out, box_into_ptr::<connect_conn>(conn)) };
        Ok(())
    })
}

/// Reads decrypted application data.
///
/// In non-blocking mode, after poll reports the descriptor readable, call this until it
/// returns `CONNECT_RESULT_WOULD_BLOCK`: decrypted data may wait inside the connection where
/// poll cannot see it.
///
/// Parameters:
/// - `conn`: the connection.
/// - `buf`, `len`: where to put the data; `len` > 0.
/// - `out_n`: receives the number of bytes read on success; 0 means the peer closed the
///   connection cleanly (close_notify).
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (`len` 0), `CONNECT_RESULT_WOULD_BLOCK` (non-blocking
/// mode, nothing to read yet), `CONNECT_RESULT_TIMEOUT` (blocking mode, past the timeout of
/// `connect_conn_set_timeout`), `CONNECT_RESULT_TLS` (an alert such as `access denied` from a
/// server whose intentions refuse us — also when this client dials again with a resumed
/// session after the intention turned to deny —, a bad record, or the peer closing without
/// close_notify, as a listener does when it revokes the connection: see
/// `connect_listener_new`), `CONNECT_RESULT_IO`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_read(
    conn: *mut connect_conn,
    buf: *mut u8,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live connection handle (documented).
        let c = unsafe { try_box_mut(conn) }?;
        let out_n = try_out(out_n, "out_n")?;
        let buf = try_out(buf, "buf")?;
        if len == 0 {
            return Err(err(ErrorKind::InvalidParameter, "len is 0"));
        }
        // SAFETY: `buf` is non-NULL and valid for `len` byte writes (documented); u8 has no
        // invalid values, so exposing possibly uninitialized C memory as bytes is fine.
        let slice = unsafe { std::slice::from_raw_parts_mut(buf, len) };
        let n = c.read(slice)?;
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out_n, n) };
        Ok(())
    })
}

/// Encrypts and sends application data.
///
/// Blocking mode: returns once all `len` bytes were handed to the kernel (`*out_n == len`).
/// Non-blocking mode: accepts as much as fits (`*out_n` may be less than `len`) and sends what
/// it can; bytes accepted but not yet sent stay queued inside the connection, so while
/// `connect_conn_is_write_pending` is true, wait for POLLOUT and call `connect_conn_flush`.
///
/// Parameters:
/// - `conn`: the connection.
/// - `buf`, `len`: the data.
/// - `out_n`: receives the number of bytes accepted on success.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_WOULD_BLOCK` (non-blocking mode, nothing accepted),
/// `CONNECT_RESULT_TIMEOUT` (blocking mode), `CONNECT_RESULT_CLOSED` (after
/// `connect_conn_shutdown`), `CONNECT_RESULT_TLS`, `CONNECT_RESULT_IO`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: `buf` is not retained.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_write(
    conn: *mut connect_conn,
    buf: *const u8,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live connection handle and `buf` valid for `len` bytes (documented).
        let (c, data) = unsafe {
            (
                try_box_mut(conn)?,
                crate::strings::try_bytes(buf, len, "buf")?,
            )
        };
        let out_n = try_out(out_n, "out_n")?;
        let n = c.write(data)?;
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out_n, n) };
        Ok(())
    })
}

/// Sends TLS data queued inside the connection (non-blocking mode; in blocking mode nothing
/// stays queued after a call returns).
///
/// Parameters:
/// - `conn`: the connection.
///
/// Returns: `CONNECT_RESULT_OK` (nothing left queued), `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_WOULD_BLOCK` (some still queued: wait for POLLOUT),
/// `CONNECT_RESULT_TIMEOUT`, `CONNECT_RESULT_IO`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_flush(conn: *mut connect_conn) -> connect_result {
    boundary(|| {
        // SAFETY: a live connection handle (documented).
        let c = unsafe { try_box_mut(conn) }?;
        c.check_failed()?;
        c.flush_tls()
    })
}

/// Whether TLS data is queued inside the connection, waiting for `connect_conn_flush`
/// (non-blocking mode): poll for POLLOUT while this is true.
///
/// Parameters:
/// - `conn`: the connection.
///
/// Returns: the answer; `false` for NULL or if a panic was caught.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_is_write_pending(conn: *mut connect_conn) -> bool {
    boundary_or(false, || {
        // SAFETY: NULL or a live connection handle (documented).
        unsafe { try_box_mut(conn) }.is_ok_and(|c| c.tls.wants_write())
    })
}

/// Closes the sending side: sends a TLS close_notify and shuts down the socket for writing.
/// Reading goes on until the peer closes. Later writes return `CONNECT_RESULT_CLOSED`.
///
/// Parameters:
/// - `conn`: the connection.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_WOULD_BLOCK` (non-blocking mode: call again when writable),
/// `CONNECT_RESULT_TIMEOUT`, `CONNECT_RESULT_IO`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: the connection must still be freed.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_shutdown(conn: *mut connect_conn) -> connect_result {
    boundary(|| {
        // SAFETY: a live connection handle (documented).
        unsafe { try_box_mut(conn) }?.shutdown()
    })
}

/// The peer's SPIFFE ID, verified during the handshake
/// (`spiffe://<trust domain>/ns/default/dc/<dc>/svc/<name>`).
///
/// Parameters:
/// - `conn`: the connection.
///
/// Returns: the ID; empty for NULL or if a panic was caught.
///
/// Memory and lifetimes: borrowed from `conn`; valid until `connect_conn_free`.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_get_peer_id(conn: *mut connect_conn) -> connect_str {
    boundary_or(connect_str::EMPTY, || {
        // SAFETY: NULL or a live connection handle (documented).
        unsafe { try_box_mut(conn) }.map_or(connect_str::EMPTY, |c| connect_str::borrow(&c.peer_id))
    })
}

/// Whether the handshake resumed an earlier TLS session (a client's second dial of the same
/// server from the same service usually does). A resumed session is authorized again: after
/// an intention change the listener no longer resumes sessions made before it.
///
/// Parameters:
/// - `conn`: the connection.
///
/// Returns: the answer; `false` for NULL or if a panic was caught.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_is_resumed(conn: *mut connect_conn) -> bool {
    boundary_or(false, || {
        // SAFETY: NULL or a live connection handle (documented).
        unsafe { try_box_mut(conn) }
            .is_ok_and(|c| c.tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
    })
}

/// The connection's socket, for poll/epoll/select. Do not read, write or close it directly:
/// the TLS state lives in the connection.
///
/// Parameters:
/// - `conn`: the connection.
///
/// Returns: the file descriptor; -1 for NULL or if a panic was caught.
///
/// Memory and lifetimes: owned by `conn`; closed by `connect_conn_free`.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_get_fd(conn: *mut connect_conn) -> c_int {
    boundary_or(-1, || {
        // SAFETY: NULL or a live connection handle (documented).
        unsafe { try_box_mut(conn) }.map_or(-1, |c| c.sock.as_raw_fd())
    })
}

/// Switches the connection between blocking (the default) and non-blocking mode. In
/// non-blocking mode, read, write, flush and shutdown return `CONNECT_RESULT_WOULD_BLOCK`
/// instead of waiting.
///
/// Parameters:
/// - `conn`: the connection.
/// - `nonblocking`: the mode.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`, `CONNECT_RESULT_IO`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_set_nonblocking(
    conn: *mut connect_conn,
    nonblocking: bool,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live connection handle (documented).
        let c = unsafe { try_box_mut(conn) }?;
        c.sock
            .set_nonblocking(nonblocking)
            .map_err(|e| error_from_io(&e))?;
        c.nonblocking = nonblocking;
        Ok(())
    })
}

/// Bounds each blocking read and write (default: no bound). A read or write that waits longer
/// returns `CONNECT_RESULT_TIMEOUT`; the connection stays usable.
///
/// Parameters:
/// - `conn`: the connection.
/// - `timeout_ms`: milliseconds (> 0), or `CONNECT_WAIT_FOREVER`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (0: use non-blocking mode instead), `CONNECT_RESULT_IO`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_set_timeout(
    conn: *mut connect_conn,
    timeout_ms: u32,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live connection handle (documented).
        let c = unsafe { try_box_mut(conn) }?;
        if timeout_ms == 0 {
            return Err(err(
                ErrorKind::InvalidParameter,
                "timeout_ms is 0: use connect_conn_set_nonblocking instead",
            ));
        }
        let t = timeout_of(timeout_ms);
        let set = |t: Option<Duration>| -> io::Result<()> {
            c.sock.set_read_timeout(t)?;
            c.sock.set_write_timeout(t)
        };
        set(t).map_err(|e| error_from_io(&e))
    })
}

/// Closes the connection (without close_notify: call `connect_conn_shutdown` first for a
/// clean close) and frees it. NULL is ignored.
///
/// Parameters:
/// - `conn`: the connection; never use it (or its peer ID string) again.
///
/// Returns: nothing.
///
/// Memory and lifetimes: releases the connection and closes its socket.
///
/// Thread safety: needs external synchronization of `conn`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_conn_free(conn: *mut connect_conn) {
    boundary_or((), || {
        // SAFETY: NULL or a live connection handle, freed once (documented).
        unsafe { free_box(conn) }
    });
}
