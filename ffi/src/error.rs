//! Result codes, error text, and the one boundary helper every exported function runs through.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CStr, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use connect_core::{Error, ErrorKind};

use crate::strings::copy_text_out;

/// The result of every fallible libconnect call.
///
/// `CONNECT_RESULT_OK` (also spelled `CONNECT_OK`) is 0; every other value is a failure whose
/// number comes from the core's error table and never changes. Bands: 1–99 argument and
/// boundary errors, 1xx SPIFFE IDs, 2xx certificates and the CA, 3xx intentions, ACLs and
/// authorization, 4xx TLS, 5xx cache, 6xx I/O. Values are never renumbered or reused; gaps are
/// reserved. Treat a value this header does not list as `CONNECT_RESULT_INVALID_PARAMETER`.
///
/// The type is `uint32_t` in C (an enum's size is not fixed before C23).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types, reason = "C type name")]
pub enum connect_result {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullParameter = 1,
    /// An argument was malformed or out of range (including invalid UTF-8).
    InvalidParameter = 2,
    /// A Rust panic was caught at the API boundary; the process goes on.
    Panic = 3,
    /// A one-shot object (a builder) was used twice.
    AlreadyUsed = 4,
    /// An output buffer was too small; `*out_n` holds the size needed.
    InsufficientSize = 5,
    /// The object (or the agent it belongs to) was closed.
    Closed = 6,
    /// An internal invariant failed; this is a bug in libconnect.
    Internal = 7,
    /// The requested object does not exist.
    NotFound = 8,
    // 9–99 reserved.
    /// A string is not a valid SPIFFE ID.
    InvalidSpiffeId = 100,
    /// A trust domain or SNI name is malformed.
    InvalidTrustDomain = 101,
    // 102–199 reserved.
    /// PEM or DER input does not hold a well-formed certificate.
    InvalidCertificate = 200,
    /// A certificate signing request is malformed.
    InvalidCsr = 201,
    /// A CSR asks for an identity this CA must not sign.
    CsrRejected = 202,
    /// A private key is malformed.
    InvalidKey = 203,
    /// A key type or size is not supported.
    UnsupportedKey = 204,
    /// A CA configuration is invalid.
    InvalidCaConfig = 205,
    /// The CA has not been initialised yet.
    CaNotInitialized = 206,
    /// A CA certificate has expired.
    CaExpired = 207,
    /// The CA refused to sign because of its rate limit.
    RateLimited = 208,
    /// The CA provider cannot cross-sign and the rotation was not forced.
    CrossSigningUnsupported = 209,
    /// An intermediate certificate does not fit.
    InvalidIntermediate = 210,
    /// A certificate chain does not verify against the trusted roots.
    CertificateVerification = 211,
    // 212–299 reserved.
    /// An intention is invalid.
    InvalidIntention = 300,
    /// Intentions deny this connection.
    AuthorizationDenied = 301,
    /// The ACL token lacks a permission.
    PermissionDenied = 302,
    /// An ACL policy or rule set is invalid.
    InvalidAclPolicy = 303,
    /// The ACL token is unknown.
    AclNotFound = 304,
    // 305–399 reserved.
    /// A TLS handshake or record-layer failure (a denied client sees its first read fail
    /// with this code and the detail `remote error: tls: access denied`).
    Tls = 400,
    /// The peer's certificate does not name the expected service.
    PeerIdentityMismatch = 401,
    /// The service has no leaf certificate and roots yet.
    NotReady = 402,
    // 403–499 reserved.
    /// A cache fetch failed.
    CacheFetch = 500,
    // 501–599 reserved.
    /// An operating-system I/O error.
    Io = 600,
    /// An operation timed out.
    Timeout = 601,
    /// The peer refused the connection.
    ConnectionRefused = 602,
    /// A non-blocking operation would block: poll the file descriptor and try again.
    WouldBlock = 603,
    /// An HTTP API call failed.
    Http = 604,
    // 605–699 reserved.
}

impl connect_result {
    /// Every code, in numeric order.
    pub const ALL: &'static [connect_result] = &[
        connect_result::Ok,
        connect_result::NullParameter,
        connect_result::InvalidParameter,
        connect_result::Panic,
        connect_result::AlreadyUsed,
        connect_result::InsufficientSize,
        connect_result::Closed,
        connect_result::Internal,
        connect_result::NotFound,
        connect_result::InvalidSpiffeId,
        connect_result::InvalidTrustDomain,
        connect_result::InvalidCertificate,
        connect_result::InvalidCsr,
        connect_result::CsrRejected,
        connect_result::InvalidKey,
        connect_result::UnsupportedKey,
        connect_result::InvalidCaConfig,
        connect_result::CaNotInitialized,
        connect_result::CaExpired,
        connect_result::RateLimited,
        connect_result::CrossSigningUnsupported,
        connect_result::InvalidIntermediate,
        connect_result::CertificateVerification,
        connect_result::InvalidIntention,
        connect_result::AuthorizationDenied,
        connect_result::PermissionDenied,
        connect_result::InvalidAclPolicy,
        connect_result::AclNotFound,
        connect_result::Tls,
        connect_result::PeerIdentityMismatch,
        connect_result::NotReady,
        connect_result::CacheFetch,
        connect_result::Io,
        connect_result::Timeout,
        connect_result::ConnectionRefused,
        connect_result::WouldBlock,
        connect_result::Http,
    ];

    /// The code as C sees it.
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The code with this number, if any.
    pub fn from_code(code: u32) -> Option<connect_result> {
        Self::ALL.iter().copied().find(|r| r.code() == code)
    }

    /// The code of a core error kind. A kind this table lacks (a core addition not yet
    /// mirrored here, which `tests/header.rs` forbids) is reported as `INTERNAL`.
    pub fn from_kind(kind: ErrorKind) -> connect_result {
        Self::from_code(kind.code()).unwrap_or(connect_result::Internal)
    }

    /// The core kind of this code (`None` for `OK`).
    pub fn kind(self) -> Option<ErrorKind> {
        ErrorKind::from_code(self.code())
    }
}

/// Static, NUL-terminated text for `CONNECT_RESULT_OK` and for each kind, built from the core
/// table once (so the descriptions are the core's).
struct StaticTexts {
    descriptions: Vec<(u32, Box<CStr>)>,
    names: Vec<(u32, Box<CStr>)>,
}

fn static_texts() -> &'static StaticTexts {
    static TEXTS: std::sync::OnceLock<StaticTexts> = std::sync::OnceLock::new();
    TEXTS.get_or_init(|| {
        let cstr = |s: &str| -> Box<CStr> {
            let clean: Vec<u8> = s.bytes().filter(|b| *b != 0).collect();
            std::ffi::CString::new(clean)
                .unwrap_or_default()
                .into_boxed_c_str()
        };
        let mut descriptions = vec![(0, cstr("success"))];
        let mut names = vec![(0, cstr("OK"))];
        for k in ErrorKind::ALL {
            descriptions.push((k.code(), cstr(k.description())));
            names.push((k.code(), cstr(k.name())));
        }
        StaticTexts {
            descriptions,
            names,
        }
    })
}

fn lookup(table: &'static [(u32, Box<CStr>)], code: u32) -> *const c_char {
    let fallback = ErrorKind::InvalidParameter.code();
    table
        .iter()
        .find(|(c, _)| *c == code)
        .or_else(|| table.iter().find(|(c, _)| *c == fallback))
        .map_or(c"invalid parameter".as_ptr(), |(_, s)| s.as_ptr())
}

thread_local! {
    static LAST_ERROR: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records the detail of a failure for `connect_last_error_message` on this thread.
pub(crate) fn set_last_error(message: String) {
    LAST_ERROR.with(|slot| *slot.borrow_mut() = Some(message));
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a non-string payload".to_owned()
    }
}

/// Runs `f`, turning a panic into `None` and keeping its detail for
/// `connect_last_error_message`: the one panic rule of [`boundary`] and [`boundary_or`].
fn catch_panic<T>(f: impl FnOnce() -> T) -> Option<T> {
    match catch_unwind(AssertUnwindSafe(|| {
        #[cfg(test)]
        crate::testing::maybe_panic();
        f()
    })) {
        Ok(v) => Some(v),
        Err(payload) => {
            set_last_error(format!(
                "panic caught at the libconnect API boundary: {}",
                panic_message(payload.as_ref())
            ));
            None
        }
    }
}

/// Runs the body of an exported fallible function: panics become `CONNECT_RESULT_PANIC`, errors
/// become their code, and the detail of any failure is kept for `connect_last_error_message`.
pub(crate) fn boundary(f: impl FnOnce() -> Result<(), Error>) -> connect_result {
    match catch_panic(f) {
        Some(Ok(())) => connect_result::Ok,
        Some(Err(e)) => {
            let code = connect_result::from_kind(e.kind());
            set_last_error(e.to_string());
            code
        }
        None => connect_result::Panic,
    }
}

/// Runs the body of an exported function that cannot fail: a panic returns `fallback` (and
/// leaves its detail for `connect_last_error_message`).
pub(crate) fn boundary_or<T>(fallback: T, f: impl FnOnce() -> T) -> T {
    catch_panic(f).unwrap_or(fallback)
}

/// Shorthand for an error of `kind`.
pub(crate) fn err(kind: ErrorKind, message: impl Into<String>) -> Error {
    Error::new(kind, message)
}

/// A static, NUL-terminated, English description of a result code.
///
/// Parameters:
/// - `code`: any value; one the library does not know is described as
///   `CONNECT_RESULT_INVALID_PARAMETER`.
///
/// Returns: a pointer to a static string; never NULL.
///
/// Memory and lifetimes: the string is static; do not free it.
///
/// Thread safety: may be called from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn connect_result_str(code: u32) -> *const c_char {
    boundary_or(c"invalid parameter".as_ptr(), || {
        lookup(&static_texts().descriptions, code)
    })
}

/// The stable name of a result code without its prefix (`"INVALID_SPIFFE_ID"`, `"OK"`), the
/// same string the Python and Node bindings use as an error's `code`.
///
/// Parameters:
/// - `code`: any value; one the library does not know is named `"INVALID_PARAMETER"`.
///
/// Returns: a pointer to a static, NUL-terminated string; never NULL.
///
/// Memory and lifetimes: the string is static; do not free it.
///
/// Thread safety: may be called from any thread.
#[unsafe(no_mangle)]
pub extern "C" fn connect_result_name(code: u32) -> *const c_char {
    boundary_or(c"INVALID_PARAMETER".as_ptr(), || {
        lookup(&static_texts().names, code)
    })
}

/// Copies the detail message of the most recent failing call made on this thread (for
/// example the SPIFFE ID that was rejected, or `remote error: tls: access denied`).
///
/// The detail is overwritten by the next failing call on the same thread; successful calls
/// leave it alone. Before any failure it is the empty string.
///
/// Parameters:
/// - `buf`: where to write the message, NUL-terminated. May be NULL when `len` is 0, to ask
///   for the size.
/// - `len`: the size of `buf` in bytes.
/// - `out_n`: receives the message length without the NUL on success, or the buffer size
///   needed (length + 1) on `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`; `CONNECT_RESULT_NULL_PARAMETER` if `out_n` is NULL, or `buf`
/// is NULL while `len` > 0; `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Memory and lifetimes: nothing is retained; the caller owns `buf`. This call does not change
/// the stored detail, even when it fails.
///
/// Thread safety: reads this thread's detail only; may be called from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_last_error_message(
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    let message = LAST_ERROR.with(|slot| slot.borrow().clone().unwrap_or_default());
    let r = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the caller passes `buf` valid for `len` bytes (or NULL with 0) and `out_n`
        // valid for one write, as documented.
        unsafe { copy_text_out(&message, buf, len, out_n) }
    }));
    match r {
        Ok(Ok(())) => connect_result::Ok,
        Ok(Err(e)) => connect_result::from_kind(e.kind()),
        Err(_) => connect_result::Panic,
    }
}
