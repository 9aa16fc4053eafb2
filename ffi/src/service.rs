//! `connect_service`: one Connect service's identity (leaf, key, roots kept current), explained
//! authorization for applications with their own TLS stack, and the change callback.

use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use connect_core::agent::ConnectService;
use connect_core::tls::{PeerAuthorization, PeerInput, Snapshot};
use connect_core::{Error, ErrorKind};
use tokio::task::JoinHandle;

use crate::agent::{AgentInner, connect_agent};
use crate::error::{boundary, boundary_or, connect_result, err};
use crate::handle::{
    Castable, OwnershipArc, OwnershipBox, arc_into_ptr, box_into_ptr, free_arc, free_box, try_arc,
    try_box_mut, try_clone_arc,
};
use crate::strings::{
    connect_str, copy_bytes_out, copy_text_out, try_bytes, try_out, try_str, write_out,
};

/// Wait without a time limit (for the `timeout_ms` parameters that accept it).
pub const CONNECT_WAIT_FOREVER: u32 = u32::MAX;

/// A Connect service on an agent: its leaf certificate and the CA roots, kept current in the
/// background (renewal and root rotation), and the intentions that decide who may connect.
/// Shared and thread-safe (`const connect_service *`).
#[derive(Debug)]
#[allow(non_camel_case_types, reason = "C type name")]
pub struct connect_service {
    _private: [u8; 0],
}

/// The explained answer of `connect_service_authorize_*`: allowed or not, the peer, and why
/// (`Matched L4 intention: …`, `Default behavior configured by ACLs`, …). Exclusively owned.
#[derive(Debug)]
#[allow(non_camel_case_types, reason = "C type name")]
pub struct connect_authorization {
    _private: [u8; 0],
}

/// What changed, passed to a `connect_service_change_callback`. Valid only during the call.
#[repr(C)]
#[derive(Debug)]
#[allow(non_camel_case_types, reason = "C type name")]
pub struct connect_service_change_params {
    /// The identity's generation: it grows by one with every new leaf or new set of roots.
    pub generation: u64,
    /// Whether the service has a leaf that verifies against the current roots.
    pub ready: bool,
    /// The leaf's SPIFFE ID (empty before the first leaf).
    pub spiffe_id: connect_str,
    /// The leaf's serial number, colon-hex (empty before the first leaf).
    pub serial: connect_str,
    /// The leaf's NotAfter, in seconds since the Unix epoch (0 before the first leaf).
    pub not_after_unix: i64,
    /// The number of trusted CA roots (2 during a rotation, for example).
    pub roots_count: usize,
}

/// Called after the service's identity changed (a new leaf, renewed or re-issued after a CA
/// rotation, or new roots).
///
/// `userdata` is the pointer given to `connect_service_set_change_callback`; `params` is valid
/// only during the call.
///
/// The callback runs on one of the agent's background threads, possibly at the same time as
/// calls the application makes on other threads; calls for one service never overlap. It must
/// return (no `longjmp`) and must not unwind (no C++ exception). It may call the non-blocking
/// getters (`connect_service_get_*`, `connect_service_is_ready`,
/// `connect_service_authorize_*`); blocking calls return `CONNECT_RESULT_INVALID_PARAMETER`
/// there, and it must not call `connect_service_set_change_callback`,
/// `connect_service_free` or `connect_agent_free`.
#[allow(non_camel_case_types, reason = "C type name")]
pub type connect_service_change_callback = Option<
    unsafe extern "C" fn(userdata: *mut c_void, params: *const connect_service_change_params),
>;

/// Frees a callback's `userdata` once libconnect no longer uses it.
#[allow(non_camel_case_types, reason = "C type name")]
pub type connect_userdata_free_callback = Option<unsafe extern "C" fn(userdata: *mut c_void)>;

/// A C callback with its userdata, owned by one service.
struct ChangeCallback {
    callback: unsafe extern "C" fn(*mut c_void, *const connect_service_change_params),
    userdata: *mut c_void,
    userdata_free: connect_userdata_free_callback,
}

// SAFETY: the documented callback rule: the callback and its userdata may be used from any
// of the agent's threads (one call at a time, guarded by the slot's mutex), and
// `userdata_free` from whichever thread drops the last reference.
unsafe impl Send for ChangeCallback {}

impl Drop for ChangeCallback {
    fn drop(&mut self) {
        if let Some(free) = self.userdata_free {
            // SAFETY: the application gave us `userdata` with this destructor, and this is
            // the one place it is released.
            unsafe { free(self.userdata) };
        }
    }
}

type Slot = Arc<Mutex<Option<ChangeCallback>>>;

/// The service behind a `connect_service`.
pub(crate) struct ServiceInner {
    agent: Arc<AgentInner>,
    service: ConnectService,
    callback: Slot,
    watcher: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for ServiceInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceInner")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl ServiceInner {
    pub(crate) fn agent(&self) -> &AgentInner {
        &self.agent
    }

    pub(crate) fn service(&self) -> &ConnectService {
        &self.service
    }
}

impl Drop for ServiceInner {
    fn drop(&mut self) {
        if let Some(t) = self
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
        // Taking the callback waits for a call in progress; none starts afterwards. The
        // userdata is released after the lock is given back.
        let old = self
            .callback
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        drop(old);
        self.service.close();
    }
}

impl Castable for connect_service {
    type Ownership = OwnershipArc;
    type RustType = ServiceInner;
    const NAME: &'static str = "service";
}

impl Castable for connect_authorization {
    type Ownership = OwnershipBox;
    type RustType = Authorization;
    const NAME: &'static str = "authorization";
}

/// The value behind a `connect_authorization`.
#[derive(Debug)]
pub(crate) struct Authorization {
    peer: String,
    allowed: bool,
    reason: String,
}

impl From<PeerAuthorization> for Authorization {
    fn from(a: PeerAuthorization) -> Self {
        Authorization {
            peer: a.peer.to_string(),
            allowed: a.allowed,
            reason: a.reason,
        }
    }
}

/// Milliseconds to a timeout: `CONNECT_WAIT_FOREVER` is none.
pub(crate) fn timeout_of(ms: u32) -> Option<Duration> {
    (ms != CONNECT_WAIT_FOREVER).then(|| Duration::from_millis(u64::from(ms)))
}

/// Creates a service named `name` on `agent`: its leaf is generated and signed in the
/// background, and kept current (renewal, CA rotation). Wait for it with
/// `connect_service_ready_wait`.
///
/// Parameters:
/// - `agent`: the agent.
/// - `name`: the service name, NUL-terminated UTF-8: 1 to 256 of `A-Z a-z 0-9 . _ -`, not
///   `.` or `..`.
/// - `out`: receives the service on success.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (a name outside that rule, not UTF-8),
/// `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_service_free`. The service
/// keeps the agent's state alive, but `connect_agent_free` still stops it.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_new(
    agent: *const connect_agent,
    name: *const c_char,
    out: *mut *const connect_service,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle and a C string (documented).
        let (a, name) = unsafe { (try_clone_arc(agent)?, try_str(name, "name")?) };
        let out = try_out(out, "out")?;
        let handle = a.handle()?;
        let service = {
            let _guard = handle.enter();
            a.agent().service(name)?
        };
        let inner = ServiceInner {
            agent: a,
            service,
            callback: Arc::new(Mutex::new(None)),
            watcher: Mutex::new(None),
        };
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out, arc_into_ptr::<connect_service>(Arc::new(inner))) };
        Ok(())
    })
}

/// Frees a service: its background watchers stop, its change callback is removed (waiting for
/// a call in progress) and the callback's `userdata_free` runs. NULL is ignored.
///
/// Parameters:
/// - `service`: the service; never use it again.
///
/// Returns: nothing.
///
/// Memory and lifetimes: listeners and connections made from the service stay valid and must
/// still be freed.
///
/// Thread safety: any thread except libconnect's own (never from the service's callback); not
/// twice for the same handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_free(service: *const connect_service) {
    boundary_or((), || {
        // SAFETY: NULL or a live service handle, freed once (documented).
        unsafe { free_arc(service) }
    });
}

/// Waits until the service has a leaf that verifies against the current roots.
///
/// Parameters:
/// - `service`: the service.
/// - `timeout_ms`: the longest wait, in milliseconds, or `CONNECT_WAIT_FOREVER`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`, `CONNECT_RESULT_TIMEOUT`,
/// `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_ready_wait(
    service: *const connect_service,
    timeout_ms: u32,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live service handle (documented).
        let s = unsafe { try_arc(service) }?;
        // "Forever" is thirty years: far enough, and safe for the timer's arithmetic.
        let limit = timeout_of(timeout_ms).unwrap_or(Duration::from_secs(30 * 365 * 86_400));
        s.agent.run(None, "ready wait", s.service.ready_wait(limit))
    })
}

/// Whether the service has a leaf that verifies against the current roots.
///
/// Parameters:
/// - `service`: the service.
///
/// Returns: the answer; `false` for NULL or if a panic was caught.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_is_ready(service: *const connect_service) -> bool {
    boundary_or(false, || {
        // SAFETY: NULL or a live service handle (documented).
        unsafe { try_arc(service) }.is_ok_and(|s| s.service.ready())
    })
}

/// The generation of the service's identity: it grows by one with every new leaf or set of
/// roots. Material read with the same generation before and after is consistent.
///
/// Parameters:
/// - `service`: the service.
///
/// Returns: the generation; 0 for NULL or if a panic was caught.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_get_generation(service: *const connect_service) -> u64 {
    boundary_or(0, || {
        // SAFETY: NULL or a live service handle (documented).
        unsafe { try_arc(service) }.map_or(0, |s| s.service.identity().generation())
    })
}

/// Which part of the material a getter copies.
#[derive(Clone, Copy)]
enum Part {
    Chain,
    Key,
    Roots,
}

/// # Safety
/// `service` is NULL or live; `buf`/`out_n` as documented on the getters.
unsafe fn copy_material(
    service: *const connect_service,
    part: Part,
    buf: *mut u8,
    len: usize,
    out_n: *mut usize,
) -> Result<(), Error> {
    // SAFETY: forwarded contract.
    let s = unsafe { try_arc(service) }?;
    try_out(out_n, "out_n")?;
    let m = s.service.material()?;
    let bytes = match part {
        Part::Chain => m.chain_pem.as_bytes(),
        Part::Key => m.key_pem.as_bytes(),
        Part::Roots => m.roots_pem.as_bytes(),
    };
    // SAFETY: forwarded contract.
    unsafe { copy_bytes_out(bytes, buf, len, out_n) }
}

/// Copies the service's current certificate chain as PEM (leaf first, then intermediates), for
/// applications that keep their own TLS stack.
///
/// Parameters:
/// - `service`: the service.
/// - `buf`, `len`: the output buffer; PEM text, **not** NUL-terminated. `buf` may be NULL with
///   `len` 0 to ask for the size.
/// - `out_n`: receives the number of bytes written, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_NOT_READY` (no leaf yet),
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained. The chain changes on renewal and rotation:
/// compare `connect_service_get_generation` or use the change callback.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_get_chain_pem(
    service: *const connect_service,
    buf: *mut u8,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    // SAFETY: forwarded contract (documented).
    boundary(|| unsafe { copy_material(service, Part::Chain, buf, len, out_n) })
}

/// Copies the private key of the service's current leaf as PEM. The key never left this
/// process (dev agents) or came from the local agent (HTTP agents).
///
/// Parameters:
/// - `service`: the service.
/// - `buf`, `len`: the output buffer; PEM text, **not** NUL-terminated. `buf` may be NULL with
///   `len` 0 to ask for the size.
/// - `out_n`: receives the number of bytes written, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_NOT_READY`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained; the caller should wipe the copy when done.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_get_key_pem(
    service: *const connect_service,
    buf: *mut u8,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    // SAFETY: forwarded contract (documented).
    boundary(|| unsafe { copy_material(service, Part::Key, buf, len, out_n) })
}

/// Copies the CA roots the service trusts as PEM.
///
/// Parameters:
/// - `service`: the service.
/// - `buf`, `len`: the output buffer; PEM text, **not** NUL-terminated. `buf` may be NULL with
///   `len` 0 to ask for the size.
/// - `out_n`: receives the number of bytes written, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_NOT_READY`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_get_roots_pem(
    service: *const connect_service,
    buf: *mut u8,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    // SAFETY: forwarded contract (documented).
    boundary(|| unsafe { copy_material(service, Part::Roots, buf, len, out_n) })
}

/// Copies the SPIFFE ID of the service's current leaf
/// (`spiffe://<trust domain>/ns/default/dc/<dc>/svc/<name>`).
///
/// Parameters:
/// - `service`: the service.
/// - `buf`, `len`: the output buffer; the ID is NUL-terminated. `buf` may be NULL with `len` 0
///   to ask for the size.
/// - `out_n`: receives the length without the NUL, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_NOT_READY`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_get_spiffe_id(
    service: *const connect_service,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live service handle (documented).
        let s = unsafe { try_arc(service) }?;
        try_out(out_n, "out_n")?;
        let id = s.service.material()?.spiffe_id.to_string();
        // SAFETY: `buf`/`out_n` as documented.
        unsafe { copy_text_out(&id, buf, len, out_n) }
    })
}

/// Signs a JWT-SVID (SPIFFE spec: JWT-SVID; ES256, valid 5 minutes) for the service with one
/// audience, and copies it out. The agent's token needs `service:write` on the service.
///
/// Parameters:
/// - `service`: the service.
/// - `audience`: the token's audience, NUL-terminated UTF-8.
/// - `buf`, `len`: the output buffer; the token, NUL-terminated. Tokens are a few hundred
///   bytes: pass 1024. Asking for the size first (`buf` NULL, `len` 0) signs a token too.
/// - `out_n`: receives the length without the NUL, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (an empty or too long audience),
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_PERMISSION_DENIED`,
/// `CONNECT_RESULT_CA_NOT_INITIALIZED`, `CONNECT_RESULT_HTTP`, `CONNECT_RESULT_CLOSED`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained. The token is a bearer credential until it
/// expires: keep it out of logs.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_get_jwt_svid(
    service: *const connect_service,
    audience: *const c_char,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live service handle and a C string (documented).
        let (s, audience) = unsafe { (try_arc(service)?, try_str(audience, "audience")?) };
        try_out(out_n, "out_n")?;
        let audiences = [audience.to_owned()];
        let token = s
            .agent
            .run(None, "JWT-SVID", s.service.jwt_svid(&audiences))?;
        // SAFETY: `buf`/`out_n` as documented.
        unsafe { copy_text_out(&token, buf, len, out_n) }
    })
}

/// # Safety
/// `service` NULL or live, `out` NULL or valid for one write.
unsafe fn authorize(
    service: *const connect_service,
    peer: PeerInput<'_>,
    out: *mut *mut connect_authorization,
) -> Result<(), Error> {
    // SAFETY: forwarded contract.
    let s = unsafe { try_arc(service) }?;
    let out = try_out(out, "out")?;
    let decision = s.service.authorize(peer)?;
    let ptr = box_into_ptr::<connect_authorization>(decision.into());
    // SAFETY: checked non-NULL; valid for one write (documented).
    unsafe { write_out(out, ptr) };
    Ok(())
}

/// Explains whether a peer with this SPIFFE ID may connect to the service, by its intentions
/// (the caller's own TLS stack has verified the peer's certificate). A denial is an answer,
/// not an error.
///
/// Parameters:
/// - `service`: the service (the destination).
/// - `uri`: the peer's SPIFFE ID, NUL-terminated UTF-8.
/// - `out`: receives the decision on success.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (not UTF-8), `CONNECT_RESULT_INVALID_SPIFFE_ID`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_authorization_free`.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_authorize_uri(
    service: *const connect_service,
    uri: *const c_char,
    out: *mut *mut connect_authorization,
) -> connect_result {
    boundary(|| {
        // SAFETY: a C string (documented).
        let uri = unsafe { try_str(uri, "uri") }?;
        // SAFETY: forwarded contract (documented).
        unsafe { authorize(service, PeerInput::Uri(uri), out) }
    })
}

/// Explains whether the peer holding this leaf certificate may connect to the service: the
/// certificate is verified against the service's roots first, then its SPIFFE ID is
/// authorized by intentions.
///
/// Parameters:
/// - `service`: the service (the destination).
/// - `der`, `len`: the peer's leaf certificate, DER.
/// - `out`: receives the decision on success.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_CERTIFICATE`, `CONNECT_RESULT_CERTIFICATE_VERIFICATION`,
/// `CONNECT_RESULT_INVALID_SPIFFE_ID`, `CONNECT_RESULT_NOT_READY` (no roots yet),
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_authorization_free`. `der`
/// is not retained.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_authorize_der(
    service: *const connect_service,
    der: *const u8,
    len: usize,
    out: *mut *mut connect_authorization,
) -> connect_result {
    boundary(|| {
        // SAFETY: `der` valid for `len` bytes (documented).
        let der = unsafe { try_bytes(der, len, "der") }?;
        // SAFETY: forwarded contract (documented).
        unsafe { authorize(service, PeerInput::CertDer(der), out) }
    })
}

/// Like `connect_service_authorize_der` for a PEM chain (leaf first, then intermediates).
///
/// Parameters:
/// - `service`: the service (the destination).
/// - `pem`, `len`: the peer's chain, PEM text (need not be NUL-terminated).
/// - `out`: receives the decision on success.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (not UTF-8), `CONNECT_RESULT_INVALID_CERTIFICATE` (bad
/// PEM), `CONNECT_RESULT_CERTIFICATE_VERIFICATION`, `CONNECT_RESULT_INVALID_SPIFFE_ID`,
/// `CONNECT_RESULT_NOT_READY`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_authorization_free`. `pem`
/// is not retained.
///
/// Thread safety: may be called from any thread, callbacks included.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_authorize_chain_pem(
    service: *const connect_service,
    pem: *const u8,
    len: usize,
    out: *mut *mut connect_authorization,
) -> connect_result {
    boundary(|| {
        // SAFETY: `pem` valid for `len` bytes (documented).
        let bytes = unsafe { try_bytes(pem, len, "pem") }?;
        let text = std::str::from_utf8(bytes)
            .map_err(|e| err(ErrorKind::InvalidParameter, format!("pem: {e}")))?;
        // SAFETY: forwarded contract (documented).
        unsafe { authorize(service, PeerInput::ChainPem(text), out) }
    })
}

/// A text of the decision behind `authorization`, borrowed from it; empty for NULL or if a
/// panic was caught.
///
/// # Safety
///
/// `authorization` is NULL or a live decision that outlives the C caller's use of the text.
unsafe fn authorization_text(
    authorization: *mut connect_authorization,
    text: impl FnOnce(&Authorization) -> &str,
) -> connect_str {
    boundary_or(connect_str::EMPTY, || {
        // SAFETY: per this function's contract.
        unsafe { try_box_mut(authorization) }
            .map_or(connect_str::EMPTY, |a| connect_str::borrow(text(a)))
    })
}

/// Whether the decision allows the peer.
///
/// Parameters:
/// - `authorization`: the decision.
///
/// Returns: the answer; `false` for NULL or if a panic was caught.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `authorization`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_authorization_is_allowed(
    authorization: *mut connect_authorization,
) -> bool {
    boundary_or(false, || {
        // SAFETY: NULL or a live decision (documented).
        unsafe { try_box_mut(authorization) }.is_ok_and(|a| a.allowed)
    })
}

/// Why the peer is allowed or denied, as Consul words it (`Matched L4 intention: …`).
///
/// Parameters:
/// - `authorization`: the decision.
///
/// Returns: the reason; empty for NULL or if a panic was caught.
///
/// Memory and lifetimes: borrowed from `authorization`; valid until it is freed.
///
/// Thread safety: needs external synchronization of `authorization`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_authorization_get_reason(
    authorization: *mut connect_authorization,
) -> connect_str {
    // SAFETY: NULL or a live decision (documented).
    unsafe { authorization_text(authorization, |a| &a.reason) }
}

/// The SPIFFE ID of the peer the decision is about.
///
/// Parameters:
/// - `authorization`: the decision.
///
/// Returns: the ID; empty for NULL or if a panic was caught.
///
/// Memory and lifetimes: borrowed from `authorization`; valid until it is freed.
///
/// Thread safety: needs external synchronization of `authorization`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_authorization_get_peer(
    authorization: *mut connect_authorization,
) -> connect_str {
    // SAFETY: NULL or a live decision (documented).
    unsafe { authorization_text(authorization, |a| &a.peer) }
}

/// Frees a decision. NULL is ignored.
///
/// Parameters:
/// - `authorization`: the decision; never use it (or strings borrowed from it) again.
///
/// Returns: nothing.
///
/// Memory and lifetimes: releases the decision.
///
/// Thread safety: needs external synchronization of `authorization`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_authorization_free(authorization: *mut connect_authorization) {
    boundary_or((), || {
        // SAFETY: NULL or a live decision, freed once (documented).
        unsafe { free_box(authorization) }
    });
}

fn call(slot: &Slot, snapshot: &Snapshot, ready: bool) {
    let guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(cb) = guard.as_ref() else { return };
    let svid = snapshot.svid();
    let spiffe_id = svid.map(|s| s.spiffe_id().to_string()).unwrap_or_default();
    let serial = svid.map(|s| s.serial().to_owned()).unwrap_or_default();
    let params = connect_service_change_params {
        generation: snapshot.generation(),
        ready,
        spiffe_id: connect_str::borrow(&spiffe_id),
        serial: connect_str::borrow(&serial),
        not_after_unix: svid.map_or(0, |s| s.not_after().unix_timestamp()),
        roots_count: snapshot.bundle().map_or(0, |b| b.roots().len()),
    };
    // SAFETY: the application registered this callback and userdata together; `params` and
    // the strings it borrows outlive the call. A C callback cannot unwind into Rust (it is
    // documented as not allowed; an `extern "C"` call that unwinds aborts).
    unsafe { (cb.callback)(cb.userdata, &params) };
}

/// Sets (or, with a NULL `callback`, removes) the function called after the service's
/// identity changes: a renewed leaf, new roots after a CA rotation, a leaf re-issued from the
/// new root. Only the latest state is reported: changes in quick succession may be coalesced.
///
/// Parameters:
/// - `service`: the service.
/// - `callback`: the function, or NULL to remove the current one.
/// - `userdata`: passed to every call; may be NULL.
/// - `userdata_free`: called once with `userdata` when libconnect is done with it (the
///   callback is replaced or removed, or the service is freed); may be NULL.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`, `CONNECT_RESULT_CLOSED` (the
/// agent was freed), `CONNECT_RESULT_PANIC`. On failure libconnect does not take `userdata`:
/// the caller still owns it.
///
/// Memory and lifetimes: on success, `userdata` belongs to the service until `userdata_free`
/// is called. The previous callback's `userdata_free` runs before this returns, after any call
/// of it in progress has finished.
///
/// Thread safety: any thread except the callback's own; the callback's rules are those of
/// `connect_service_change_callback`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_service_set_change_callback(
    service: *const connect_service,
    callback: connect_service_change_callback,
    userdata: *mut c_void,
    userdata_free: connect_userdata_free_callback,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live service handle (documented).
        let s = unsafe { try_arc(service) }?;
        let new = callback.map(|callback| ChangeCallback {
            callback,
            userdata,
            userdata_free,
        });
        if new.is_some() {
            start_watcher(s)?;
        }
        let old = {
            let mut slot = s.callback.lock().unwrap_or_else(PoisonError::into_inner);
            std::mem::replace(&mut *slot, new)
        };
        drop(old);
        Ok(())
    })
}

/// Starts the task that reports identity changes, once per service.
fn start_watcher(s: &ServiceInner) -> Result<(), Error> {
    let mut watcher = s.watcher.lock().unwrap_or_else(PoisonError::into_inner);
    if watcher.is_some() {
        return Ok(());
    }
    if s.agent.agent().is_closed() {
        return Err(err(ErrorKind::Closed, "the agent is closed"));
    }
    let handle = s.agent.handle()?;
    let identity = s.service.identity().clone();
    let mut rx = identity.watch();
    rx.mark_unchanged();
    let slot = Arc::clone(&s.callback);
    *watcher = Some(handle.spawn(async move {
        while rx.changed().await.is_ok() {
            let snapshot = rx.borrow_and_update().clone();
            let ready = snapshot.is_ready_at(identity.clock().now());
            // A panic in our own code here must not take the agent's thread down.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                call(&slot, &snapshot, ready);
            }));
        }
    }));
    Ok(())
}
