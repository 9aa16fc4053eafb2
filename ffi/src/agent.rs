//! `connect_agent_config_builder` and `connect_agent`: the per-process agent, its runtime, and
//! the dev and admin helpers (intentions, CA roots, CA configuration).

use std::ffi::c_char;
use std::future::Future;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use connect_core::agent::{Agent, AgentConfig, AgentOverrides};
use connect_core::blocking::{Call, CloseSignal};
use connect_core::ca::CaConfiguration;
use connect_core::catalog::{ServiceConnect, ServiceRegistration};
use connect_core::http::client::HttpEndpoint;
use connect_core::intentions::IntentionAction;
use connect_core::{Error, ErrorKind};
use tokio::runtime::Runtime;

use crate::error::{boundary, connect_result, err};
use crate::handle::{
    Castable, OwnershipArc, OwnershipBox, arc_into_ptr, box_into_ptr, free_arc, free_box, try_arc,
    try_box_mut,
};
use crate::sigpipe::SigpipeGuard;
use crate::strings::{copy_bytes_out, copy_text_out, try_out, try_str, write_out};

/// How long freeing an agent waits for its threads to finish their current work.
const JOIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Builds a `connect_agent`. Exclusively owned: use it from one thread at a time.
///
/// Starts as a dev agent (an in-process `-dev` server with its own CA, like `connect agent
/// -dev`); `connect_agent_config_builder_set_http_address` switches it to an agent that talks to
/// a `connect agent` or Consul agent over HTTP(S).
#[derive(Debug)]
#[allow(non_camel_case_types, reason = "C type name")]
pub struct connect_agent_config_builder {
    _private: [u8; 0],
}

/// A running agent: the cache of roots, leaves and intentions, its background threads, and
/// the control plane it talks to. Shared and thread-safe (`const connect_agent *`): any
/// number of threads may use one agent at once.
#[derive(Debug)]
#[allow(non_camel_case_types, reason = "C type name")]
pub struct connect_agent {
    _private: [u8; 0],
}

/// What an intention does (the `action` of `connect_agent_intention_upsert`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types, reason = "C type name")]
pub enum connect_intention_action {
    /// Refuse connections from the source to the destination.
    Deny = 0,
    /// Allow connections from the source to the destination.
    Allow = 1,
}

/// The builder's state: the setters' values, merged over the environment by the core.
#[derive(Debug, Default)]
pub(crate) struct AgentConfigBuilder {
    /// What the setters said.
    overrides: AgentOverrides,
    /// Consul's environment as `connect_agent_config_builder_new_with_env` read it; `None`
    /// for `connect_agent_config_builder_new`, whose agents read no environment.
    env: Option<AgentConfig>,
    built: bool,
}

impl AgentConfigBuilder {
    /// A builder over Consul's variables as `get` reads them.
    fn with_env(get: impl Fn(&str) -> Option<String>) -> AgentConfigBuilder {
        AgentConfigBuilder {
            env: Some(AgentConfig::from_lookup(get)),
            ..AgentConfigBuilder::default()
        }
    }

    /// The agent's configuration: the setters over the environment read at creation, if
    /// any, over the defaults; a dev agent unless an HTTP address is known.
    fn config(&self) -> Result<AgentConfig, Error> {
        let base = match &self.env {
            Some(env) => env.clone(),
            None if self.overrides.address.is_some() => AgentConfig::http(HttpEndpoint::default()),
            None => AgentConfig::dev(),
        };
        base.with_overrides(self.overrides.clone())
    }
}

impl Castable for connect_agent_config_builder {
    type Ownership = OwnershipBox;
    type RustType = AgentConfigBuilder;
    const NAME: &'static str = "connect_agent_config_builder";
}

/// The agent behind a `connect_agent`: the core agent and the runtime this handle owns, so
/// that freeing the handle can stop and join every thread.
pub(crate) struct AgentInner {
    agent: Agent,
    rt: RwLock<Option<Runtime>>,
    closing: CloseSignal,
}

impl std::fmt::Debug for AgentInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentInner")
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

impl Castable for connect_agent {
    type Ownership = OwnershipArc;
    type RustType = AgentInner;
    const NAME: &'static str = "agent";
}

/// The `CLOSED` message of every call on a freed agent.
const CLOSED: &str = "the agent is closed (connect_agent_free was called)";

fn closed() -> Error {
    err(ErrorKind::Closed, CLOSED)
}

impl AgentInner {
    /// The core agent.
    pub(crate) fn agent(&self) -> &Agent {
        &self.agent
    }

    /// A handle to the runtime, for spawning background tasks; `CLOSED` after free.
    pub(crate) fn handle(&self) -> Result<tokio::runtime::Handle, Error> {
        let guard = self.rt.read().unwrap_or_else(PoisonError::into_inner);
        guard
            .as_ref()
            .map(|rt| rt.handle().clone())
            .ok_or_else(closed)
    }

    /// Runs `fut` on this agent's runtime from a C thread, within `timeout` (`None`: no
    /// limit), and gives up with `CLOSED` as soon as the agent is being freed.
    pub(crate) fn run<T>(
        &self,
        timeout: Option<Duration>,
        what: &str,
        fut: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let call = Call::new(what)?.timeout(timeout).cancel_on(&self.closing);
        let guard = self.rt.read().unwrap_or_else(PoisonError::into_inner);
        let rt = guard.as_ref().ok_or_else(closed)?;
        let _sigpipe = SigpipeGuard::new();
        call.run(rt.handle(), fut)
    }

    /// Stops the agent: calls in flight return `CLOSED`, background tasks stop, and the
    /// runtime's threads are joined. Idempotent.
    fn close(&self) {
        self.closing.close();
        self.agent.close();
        let rt = self
            .rt
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(rt) = rt {
            if tokio::runtime::Handle::try_current().is_ok() {
                // Freed from one of our own threads (documented as not allowed): joining would
                // wait for ourselves, so only signal the shutdown.
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(JOIN_TIMEOUT);
            }
        }
    }
}

impl Drop for AgentInner {
    fn drop(&mut self) {
        self.close();
    }
}

fn start_agent(b: &AgentConfigBuilder) -> Result<AgentInner, Error> {
    let mut config = b.config()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("libconnect-agent")
        .on_thread_start(crate::sigpipe::block_on_this_thread)
        .enable_all()
        .build()
        .map_err(|e| err(ErrorKind::Io, format!("starting the agent's threads: {e}")))?;
    config.runtime = Some(rt.handle().clone());
    let started = {
        let _sigpipe = SigpipeGuard::new();
        Agent::new(config)
    };
    let agent = match started {
        Ok(a) => a,
        Err(e) => {
            rt.shutdown_timeout(JOIN_TIMEOUT);
            return Err(e);
        }
    };
    Ok(AgentInner {
        agent,
        rt: RwLock::new(Some(rt)),
        closing: CloseSignal::new(CLOSED),
    })
}

/// The builder behind `b`, refusing one that was already built.
///
/// # Safety
/// As [`try_box_mut`].
unsafe fn try_builder<'a>(
    b: *mut connect_agent_config_builder,
) -> Result<&'a mut AgentConfigBuilder, Error> {
    // SAFETY: forwarded contract.
    let b = unsafe { try_box_mut(b) }?;
    if b.built {
        return Err(err(
            ErrorKind::AlreadyUsed,
            "this agent config builder was already built",
        ));
    }
    Ok(b)
}

/// The body of the builder's text setters: the unbuilt builder behind `builder`, the C string
/// `value` (named `what` in errors), then `set` on the overrides, all inside [`boundary`].
///
/// # Safety
/// As [`try_builder`] and [`try_str`].
unsafe fn set_text(
    builder: *mut connect_agent_config_builder,
    value: *const c_char,
    what: &str,
    set: impl FnOnce(&mut AgentOverrides, &str) -> Result<(), Error>,
) -> connect_result {
    boundary(|| {
        // SAFETY: forwarded contract.
        let (b, value) = unsafe { (try_builder(builder)?, try_str(value, what)?) };
        set(&mut b.overrides, value)
    })
}

/// `InvalidParameter` with `message` when `value` is empty.
fn refuse_empty(value: &str, message: &str) -> Result<(), Error> {
    if value.is_empty() {
        return Err(err(ErrorKind::InvalidParameter, message));
    }
    Ok(())
}

/// A new agent config builder, set up for a dev agent (an in-process `-dev` server).
///
/// A dev agent's default intention policy is **allow**, as with `consul agent -dev` (ACLs
/// off): two services with no intention between them may connect. Add a `*` → `<service>`
/// deny intention (`connect_agent_intention_upsert`) to refuse everything not allowed
/// explicitly. An HTTP agent reports its own policy when built.
///
/// Returns: the builder, or NULL if a panic was caught.
///
/// Memory and lifetimes: caller owns the result; free with `connect_agent_config_builder_free`
/// (also after `connect_agent_config_builder_build`).
///
/// Thread safety: the builder is not synchronized; use it from one thread at a time.
#[unsafe(no_mangle)]
pub extern "C" fn connect_agent_config_builder_new() -> *mut connect_agent_config_builder {
    crate::error::boundary_or(std::ptr::null_mut(), || {
        box_into_ptr::<connect_agent_config_builder>(AgentConfigBuilder::default())
    })
}

/// A new agent config builder for an HTTP agent configured from Consul's environment
/// variables: `CONSUL_HTTP_ADDR` (default `127.0.0.1:8500`), `CONSUL_HTTP_TOKEN`,
/// `CONSUL_CACERT` and `CONSUL_HTTP_SSL`. Later setters override them.
///
/// Returns: the builder, or NULL if a panic was caught.
///
/// Memory and lifetimes: caller owns the result; free with `connect_agent_config_builder_free`.
///
/// Thread safety: reads the environment; the builder is not synchronized.
#[unsafe(no_mangle)]
pub extern "C" fn connect_agent_config_builder_new_with_env() -> *mut connect_agent_config_builder {
    crate::error::boundary_or(std::ptr::null_mut(), || {
        box_into_ptr::<connect_agent_config_builder>(AgentConfigBuilder::with_env(|k| {
            std::env::var(k).ok()
        }))
    })
}

/// Makes the agent talk to a `connect agent` or Consul agent over HTTP at `address`
/// (`host:port`, or a URL `http://…` / `https://…`) instead of starting a dev server.
///
/// Parameters:
/// - `builder`: the builder.
/// - `address`: NUL-terminated UTF-8, not empty.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (empty or not UTF-8), `CONNECT_RESULT_ALREADY_USED`
/// (after build), `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: the string is copied.
///
/// Thread safety: needs external synchronization of `builder`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_config_builder_set_http_address(
    builder: *mut connect_agent_config_builder,
    address: *const c_char,
) -> connect_result {
    // SAFETY: `builder` is a live builder handle, `address` a C string (documented).
    unsafe {
        set_text(builder, address, "address", |o, address| {
            refuse_empty(address.trim(), "address is empty")?;
            o.address = Some(address.to_owned());
            Ok(())
        })
    }
}

/// Sets the ACL token sent with every request (Consul's `X-Consul-Token`).
///
/// Parameters:
/// - `builder`: the builder.
/// - `token`: NUL-terminated UTF-8; the empty string clears it (a token from
///   `CONSUL_HTTP_TOKEN` too).
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (not UTF-8), `CONNECT_RESULT_ALREADY_USED`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: the string is copied.
///
/// Thread safety: needs external synchronization of `builder`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_config_builder_set_token(
    builder: *mut connect_agent_config_builder,
    token: *const c_char,
) -> connect_result {
    // SAFETY: live builder handle and C string (documented).
    unsafe {
        set_text(builder, token, "token", |o, token| {
            o.token = Some(token.to_owned());
            Ok(())
        })
    }
}

/// Sets the datacenter (default: the one the control plane reports, `dc1` for dev).
///
/// Parameters:
/// - `builder`: the builder.
/// - `datacenter`: NUL-terminated UTF-8, not empty.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER`, `CONNECT_RESULT_ALREADY_USED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: the string is copied.
///
/// Thread safety: needs external synchronization of `builder`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_config_builder_set_datacenter(
    builder: *mut connect_agent_config_builder,
    datacenter: *const c_char,
) -> connect_result {
    // SAFETY: live builder handle and C string (documented).
    unsafe {
        set_text(builder, datacenter, "datacenter", |o, dc| {
            refuse_empty(dc, "datacenter is empty")?;
            o.datacenter = Some(dc.to_owned());
            Ok(())
        })
    }
}

/// Sets a PEM file of CA certificates to trust for HTTPS to the agent (Consul's
/// `CONSUL_CACERT`). HTTP agents only.
///
/// Parameters:
/// - `builder`: the builder.
/// - `path`: NUL-terminated UTF-8 path, not empty. The file is read when the agent is built.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER`, `CONNECT_RESULT_ALREADY_USED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: the string is copied.
///
/// Thread safety: needs external synchronization of `builder`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_config_builder_set_ca_file(
    builder: *mut connect_agent_config_builder,
    path: *const c_char,
) -> connect_result {
    // SAFETY: live builder handle and C string (documented).
    unsafe {
        set_text(builder, path, "path", |o, path| {
            refuse_empty(path, "CA file path is empty")?;
            o.ca_file = Some(path.to_owned());
            Ok(())
        })
    }
}

/// Uses HTTPS, or not, for an HTTP address given without a scheme (Consul's
/// `CONSUL_HTTP_SSL`, which this overrides either way). HTTP agents only.
///
/// Parameters:
/// - `builder`: the builder.
/// - `https`: whether to use HTTPS.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`, `CONNECT_RESULT_ALREADY_USED`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `builder`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_config_builder_set_https(
    builder: *mut connect_agent_config_builder,
    https: bool,
) -> connect_result {
    boundary(|| {
        // SAFETY: live builder handle (documented).
        let b = unsafe { try_builder(builder) }?;
        b.overrides.https = Some(https);
        Ok(())
    })
}

/// Sets the upper bound of the random delay before leaves are re-issued after a CA root
/// rotation (default 30 000 ms, as Consul). Tests and demos set 0.
///
/// Parameters:
/// - `builder`: the builder.
/// - `jitter_ms`: milliseconds.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`, `CONNECT_RESULT_ALREADY_USED`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: needs external synchronization of `builder`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_config_builder_set_root_change_jitter_ms(
    builder: *mut connect_agent_config_builder,
    jitter_ms: u64,
) -> connect_result {
    boundary(|| {
        // SAFETY: live builder handle (documented).
        let b = unsafe { try_builder(builder) }?;
        b.overrides.root_change_jitter = Some(Duration::from_millis(jitter_ms));
        Ok(())
    })
}

/// Starts the agent described by the builder: a dev server in this process, or a connection
/// to the HTTP agent (read once here to learn its datacenter and default intention policy).
///
/// Parameters:
/// - `builder`: the builder; it is spent by a successful or failed build: a second call
///   returns `CONNECT_RESULT_ALREADY_USED`.
/// - `out`: receives the agent on success.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (an inconsistent configuration),
/// `CONNECT_RESULT_ALREADY_USED`, `CONNECT_RESULT_HTTP`, `CONNECT_RESULT_CONNECTION_REFUSED`,
/// `CONNECT_RESULT_IO`, `CONNECT_RESULT_TIMEOUT`, `CONNECT_RESULT_PERMISSION_DENIED`, the CA
/// codes of a failing dev CA, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: caller owns the result; free with `connect_agent_free`. The builder
/// must still be freed with `connect_agent_config_builder_free`.
///
/// Thread safety: needs external synchronization of `builder`. Do not call from a libconnect
/// callback.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_config_builder_build(
    builder: *mut connect_agent_config_builder,
    out: *mut *const connect_agent,
) -> connect_result {
    boundary(|| {
        // SAFETY: live builder handle (documented).
        let b = unsafe { try_builder(builder) }?;
        let out = try_out(out, "out")?;
        connect_core::blocking::refuse_inside_runtime("connect_agent_config_builder_build")?;
        b.built = true;
        let inner = start_agent(b)?;
        let ptr = arc_into_ptr::<connect_agent>(std::sync::Arc::new(inner));
        // SAFETY: `out` was checked non-NULL; the caller passes it valid for one write.
        unsafe { write_out(out, ptr) };
        Ok(())
    })
}

/// Frees an agent config builder. NULL is ignored.
///
/// Parameters:
/// - `builder`: the builder, built or not; never use it again.
///
/// Returns: nothing.
///
/// Memory and lifetimes: the builder's memory is released; agents built from it live on.
///
/// Thread safety: needs external synchronization of `builder`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_config_builder_free(
    builder: *mut connect_agent_config_builder,
) {
    crate::error::boundary_or((), || {
        // SAFETY: NULL or a live builder handle freed once (documented).
        unsafe { free_box(builder) }
    });
}

/// Stops the agent and frees the handle: calls in flight on other threads return
/// `CONNECT_RESULT_CLOSED`, background work stops, and the agent's threads are joined before
/// this returns. NULL is ignored.
///
/// Services and listeners of this agent should be freed first; any still alive only return
/// `CONNECT_RESULT_CLOSED` from calls that need the agent (their getters still answer) and must
/// still be freed. Open connections (`connect_conn`) keep working.
///
/// Parameters:
/// - `agent`: the agent; never use it again.
///
/// Returns: nothing.
///
/// Memory and lifetimes: releases the handle's reference.
///
/// Thread safety: may be called from any thread except libconnect's own (never from inside a
/// callback); not twice for the same handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_free(agent: *const connect_agent) {
    crate::error::boundary_or((), || {
        if agent.is_null() {
            return;
        }
        // SAFETY: a live agent handle (documented); the reference is released just below.
        if let Ok(inner) = unsafe { try_arc(agent) } {
            inner.close();
        }
        // SAFETY: a live agent handle freed once (documented).
        unsafe { free_arc(agent) }
    });
}

/// Copies the agent's datacenter name.
///
/// Parameters:
/// - `agent`: the agent.
/// - `buf`, `len`: the output buffer; the name is NUL-terminated. `buf` may be NULL with `len`
///   0 to ask for the size.
/// - `out_n`: receives the length without the NUL, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_get_datacenter(
    agent: *const connect_agent,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle; `buf`/`out_n` as documented.
        unsafe {
            let a = try_arc(agent)?;
            copy_text_out(a.agent.datacenter(), buf, len, out_n)
        }
    })
}

fn action_of(action: u32) -> Result<IntentionAction, Error> {
    match action {
        a if a == connect_intention_action::Allow as u32 => Ok(IntentionAction::Allow),
        a if a == connect_intention_action::Deny as u32 => Ok(IntentionAction::Deny),
        other => Err(err(
            ErrorKind::InvalidParameter,
            format!("intention action {other} is neither CONNECT_INTENTION_ACTION_ALLOW nor _DENY"),
        )),
    }
}

/// Creates or replaces the intention `source → destination` (admin helper for tests and
/// demos; `*` is a wildcard name).
///
/// Parameters:
/// - `agent`: the agent.
/// - `source`, `destination`: service names, NUL-terminated UTF-8.
/// - `action`: `CONNECT_INTENTION_ACTION_ALLOW` or `CONNECT_INTENTION_ACTION_DENY`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (unknown action, not UTF-8),
/// `CONNECT_RESULT_INVALID_INTENTION`, `CONNECT_RESULT_PERMISSION_DENIED`,
/// `CONNECT_RESULT_HTTP`, `CONNECT_RESULT_IO`, `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_intention_upsert(
    agent: *const connect_agent,
    source: *const c_char,
    destination: *const c_char,
    action: u32,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle and C strings (documented).
        let (a, src, dst) = unsafe {
            (
                try_arc(agent)?,
                try_str(source, "source")?,
                try_str(destination, "destination")?,
            )
        };
        let action = action_of(action)?;
        a.run(
            None,
            "intention upsert",
            a.agent.intention_upsert(src, dst, action),
        )
    })
}

/// Deletes the intention `source → destination`.
///
/// Unlike Consul's `DELETE /v1/connect/intentions/exact`, which answers success for a pair
/// that has no intention (and which `connect agent` serves the same way), this call reports
/// it: with an HTTP agent it reads the pair first, then deletes it.
///
/// Parameters:
/// - `agent`: the agent.
/// - `source`, `destination`: service names, NUL-terminated UTF-8.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (not UTF-8, or not a valid service name or `*`),
/// `CONNECT_RESULT_NOT_FOUND` (no intention from `source` to `destination`),
/// `CONNECT_RESULT_PERMISSION_DENIED`, `CONNECT_RESULT_HTTP`, `CONNECT_RESULT_IO`,
/// `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_intention_delete(
    agent: *const connect_agent,
    source: *const c_char,
    destination: *const c_char,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle and C strings (documented).
        let (a, src, dst) = unsafe {
            (
                try_arc(agent)?,
                try_str(source, "source")?,
                try_str(destination, "destination")?,
            )
        };
        a.run(None, "intention delete", a.agent.intention_delete(src, dst))
    })
}

/// Asks the control plane whether `source` may connect to `destination` (Consul's
/// `intention check`).
///
/// Parameters:
/// - `agent`: the agent.
/// - `source`, `destination`: service names, NUL-terminated UTF-8.
/// - `out_allowed`: receives the answer on success.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER`, `CONNECT_RESULT_PERMISSION_DENIED`,
/// `CONNECT_RESULT_HTTP`, `CONNECT_RESULT_IO`, `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_intention_check(
    agent: *const connect_agent,
    source: *const c_char,
    destination: *const c_char,
    out_allowed: *mut bool,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle and C strings (documented).
        let (a, src, dst) = unsafe {
            (
                try_arc(agent)?,
                try_str(source, "source")?,
                try_str(destination, "destination")?,
            )
        };
        let out = try_out(out_allowed, "out_allowed")?;
        let allowed = a.run(None, "intention check", a.agent.intention_check(src, dst))?;
        // SAFETY: checked non-NULL; valid for one write (documented).
        unsafe { write_out(out, allowed) };
        Ok(())
    })
}

/// Checks a JWT-SVID (from `connect_service_get_jwt_svid`, a SPIFFE Workload API, or any
/// issuer of this trust domain's JWT keys) for `audience`: signature, expiry and audience; on
/// success copies out its subject, the SPIFFE ID.
///
/// Parameters:
/// - `agent`: the agent.
/// - `token`, `audience`: NUL-terminated UTF-8.
/// - `buf`, `len`: the output buffer for the SPIFFE ID, NUL-terminated.
/// - `out_n`: receives the length without the NUL, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (the token is malformed, expired, not for `audience`,
/// or not signed by a key of this trust domain; `connect_last_error_message` says which),
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_HTTP`, `CONNECT_RESULT_CLOSED`,
/// `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_validate_jwt_svid(
    agent: *const connect_agent,
    token: *const c_char,
    audience: *const c_char,
    buf: *mut c_char,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle and C strings (documented).
        let (a, token, audience) = unsafe {
            (
                try_arc(agent)?,
                try_str(token, "token")?,
                try_str(audience, "audience")?,
            )
        };
        try_out(out_n, "out_n")?;
        let valid = a.run(
            None,
            "JWT-SVID validation",
            a.agent.validate_jwt_svid(token, audience),
        )?;
        // SAFETY: `buf`/`out_n` as documented.
        unsafe { copy_text_out(&valid.spiffe_id, buf, len, out_n) }
    })
}

/// Copies the PEM of every trusted CA root (the active one and any kept during a rotation).
///
/// Parameters:
/// - `agent`: the agent.
/// - `buf`, `len`: the output buffer; PEM text, **not** NUL-terminated. `buf` may be NULL with
///   `len` 0 to ask for the size.
/// - `out_n`: receives the number of bytes written, or the size needed on
///   `CONNECT_RESULT_INSUFFICIENT_SIZE`.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INSUFFICIENT_SIZE`, `CONNECT_RESULT_CACHE_FETCH`, `CONNECT_RESULT_HTTP`,
/// `CONNECT_RESULT_CA_NOT_INITIALIZED`, `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_get_roots_pem(
    agent: *const connect_agent,
    buf: *mut u8,
    len: usize,
    out_n: *mut usize,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle (documented).
        let a = unsafe { try_arc(agent) }?;
        try_out(out_n, "out_n")?;
        let roots = a.run(None, "CA roots", a.agent.roots())?;
        // SAFETY: `buf`/`out_n` as documented.
        unsafe { copy_bytes_out(roots.roots_pem().as_bytes(), buf, len, out_n) }
    })
}

/// Applies a CA configuration, as `PUT /v1/connect/ca/configuration` does: a new key (for
/// example `{"Provider":"consul","Config":{"PrivateKeyType":"ec","PrivateKeyBits":384}}`)
/// rotates the root with cross-signing; services pick up the new roots and leaves by
/// themselves (see `connect_service_set_change_callback`).
///
/// Parameters:
/// - `agent`: the agent.
/// - `config_json`: NUL-terminated UTF-8 JSON with Consul's field names (`Provider`, `Config`,
///   optionally `ForceWithoutCrossSigning`).
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (not UTF-8), `CONNECT_RESULT_INVALID_CA_CONFIG` (bad JSON
/// or options), `CONNECT_RESULT_CROSS_SIGNING_UNSUPPORTED`, `CONNECT_RESULT_PERMISSION_DENIED`,
/// `CONNECT_RESULT_HTTP`, `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread except libconnect's own.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_set_ca_config(
    agent: *const connect_agent,
    config_json: *const c_char,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle and a C string (documented).
        let (a, json) = unsafe { (try_arc(agent)?, try_str(config_json, "config_json")?) };
        let config: CaConfiguration = serde_json::from_str(json).map_err(|e| {
            err(
                ErrorKind::InvalidCaConfig,
                format!("CA configuration JSON: {e}"),
            )
        })?;
        a.run(None, "CA configuration", a.agent.ca_set_config(config))
    })
}

/// Registers a Connect-native service instance in the dev server's catalog, so that
/// `connect_conn_dial` finds it by name (dev agents only; register with the agent's own API
/// when it runs elsewhere).
///
/// Parameters:
/// - `agent`: a dev agent.
/// - `name`: the service name, NUL-terminated UTF-8: 1 to 256 of `A-Z a-z 0-9 . _ -`, not
///   `.` or `..` (the one service-name rule of `connect_service_new` and intentions).
/// - `address`: the instance's IP address or host name, NUL-terminated UTF-8.
/// - `port`: the instance's port, not 0.
///
/// Returns: `CONNECT_RESULT_OK`, `CONNECT_RESULT_NULL_PARAMETER`,
/// `CONNECT_RESULT_INVALID_PARAMETER` (a name outside that rule, not UTF-8, port 0, or not a
/// dev agent),
/// `CONNECT_RESULT_PERMISSION_DENIED`, `CONNECT_RESULT_CLOSED`, `CONNECT_RESULT_PANIC`.
///
/// Memory and lifetimes: nothing is retained.
///
/// Thread safety: may be called from any thread.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn connect_agent_register_service(
    agent: *const connect_agent,
    name: *const c_char,
    address: *const c_char,
    port: u16,
) -> connect_result {
    boundary(|| {
        // SAFETY: a live agent handle and C strings (documented).
        let (a, name, address) = unsafe {
            (
                try_arc(agent)?,
                try_str(name, "name")?,
                try_str(address, "address")?,
            )
        };
        if a.agent.is_closed() {
            return Err(closed());
        }
        if port == 0 {
            return Err(err(ErrorKind::InvalidParameter, "port is 0"));
        }
        let server = a.agent.server().ok_or_else(|| {
            err(
                ErrorKind::InvalidParameter,
                "connect_agent_register_service needs a dev agent; register with the HTTP agent's API",
            )
        })?;
        let mut reg = ServiceRegistration::new(name, port);
        reg.address = address.to_owned();
        reg.connect = Some(ServiceConnect::native());
        server.register_service(a.agent.token(), reg)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "test code")]

    use super::*;

    const ENV: [(&str, &str); 4] = [
        ("CONSUL_HTTP_ADDR", "env.example:8500"),
        ("CONSUL_HTTP_TOKEN", "env-token"),
        ("CONSUL_CACERT", "/env/ca.pem"),
        ("CONSUL_HTTP_SSL", "true"),
    ];

    /// The configuration a builder over `ENV` makes after `set`, through the C setters.
    fn configured(set: impl FnOnce(*mut connect_agent_config_builder)) -> AgentConfig {
        let b = box_into_ptr::<connect_agent_config_builder>(AgentConfigBuilder::with_env(|k| {
            ENV.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }));
        set(b);
        // SAFETY: a live builder handle, freed once just below.
        let config = unsafe { try_box_mut::<connect_agent_config_builder>(b) }
            .unwrap()
            .config()
            .unwrap();
        // SAFETY: as above.
        unsafe { connect_agent_config_builder_free(b) };
        config
    }

    #[test]
    fn setters_win_over_the_environment_read_by_new_with_env() {
        let c = configured(|b| {
            // SAFETY: a live builder handle and C strings.
            unsafe {
                assert_eq!(
                    connect_agent_config_builder_set_http_address(b, c"opt.example:1".as_ptr()),
                    connect_result::Ok
                );
                assert_eq!(
                    connect_agent_config_builder_set_token(b, c"opt-token".as_ptr()),
                    connect_result::Ok
                );
                assert_eq!(
                    connect_agent_config_builder_set_ca_file(b, c"/opt/ca.pem".as_ptr()),
                    connect_result::Ok
                );
            }
        });
        let client = c.client_config().unwrap();
        assert_eq!(client.base_url().unwrap(), "https://opt.example:1");
        assert_eq!(client.token.as_deref(), Some("opt-token"));
        assert_eq!(client.endpoint.ca_file.as_deref(), Some("/opt/ca.pem"));
        let env = configured(|_| {}).client_config().unwrap();
        assert_eq!(env.base_url().unwrap(), "https://env.example:8500");
        assert_eq!(env.token.as_deref(), Some("env-token"));
    }

    #[test]
    fn https_off_and_an_empty_token_override_the_environment() {
        let c = configured(|b| {
            // SAFETY: a live builder handle and a C string.
            unsafe {
                assert_eq!(
                    connect_agent_config_builder_set_https(b, false),
                    connect_result::Ok
                );
                assert_eq!(
                    connect_agent_config_builder_set_token(b, c"".as_ptr()),
                    connect_result::Ok
                );
            }
        });
        let client = c.client_config().unwrap();
        assert_eq!(client.base_url().unwrap(), "http://env.example:8500");
        assert_eq!(client.token, None);
    }
}
