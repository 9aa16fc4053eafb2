//! `Service`: one Connect service's identity, listener, dialer and authorizer; `Subscription`
//! for `on_change`; the `Authorization` value.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyString, PyType};
use rustls_pki_types::CertificateDer;

use connect_core::ErrorKind;
use connect_core::agent::{ConnectService, DialOptions};
use connect_core::blocking::{Call, CloseSignal};
use connect_core::catalog::MeshGatewayMode;
use connect_core::tls::PeerInput;

use crate::errors::{Result, closed, error, invalid};
use crate::net::{Addr, PyConnection, PyListener};
use crate::runtime::{self, FOREVER, wait};

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `on_change` callbacks of a service, by subscription id.
type CallbackList = Mutex<Vec<(u64, Py<PyAny>)>>;
type Callbacks = Arc<CallbackList>;

/// The `on_change` callbacks of one service and the thread that calls them.
struct Dispatcher {
    callbacks: Callbacks,
    next_id: u64,
    stop: Arc<CloseSignal>,
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.stop.close();
    }
}

/// A Connect service on an agent (see `Agent.service`).
#[pyclass(frozen, weakref, module = "libconnect", name = "Service")]
pub(crate) struct Service {
    name: String,
    inner: Mutex<Option<Arc<ConnectService>>>,
    dispatcher: Mutex<Option<Dispatcher>>,
}

impl Drop for Service {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The Python half of the binding: `ssl` and `asyncio` glue in `libconnect._ssl`.
fn helper<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    py.import("libconnect._ssl")?.getattr(name)
}

impl Service {
    pub(crate) fn new(inner: ConnectService) -> Service {
        Service {
            name: inner.name().to_owned(),
            inner: Mutex::new(Some(Arc::new(inner))),
            dispatcher: Mutex::new(None),
        }
    }

    fn get(&self) -> Result<Arc<ConnectService>> {
        lock(&self.inner).clone().ok_or_else(|| closed("service"))
    }

    pub(crate) fn ready_wait(
        &self,
        py: Python<'_>,
        limit: Option<std::time::Duration>,
    ) -> Result<()> {
        let svc = self.get()?;
        wait(py, None, "ready_wait", async move {
            Ok(svc.ready_wait(limit.unwrap_or(FOREVER)).await?)
        })
    }

    fn shutdown(&self) {
        if let Some(svc) = lock(&self.inner).take() {
            svc.close();
        }
        if let Some(d) = lock(&self.dispatcher).take() {
            d.stop.close();
        }
    }
}

/// The audience of a JWT-SVID: one string or a list of them.
#[derive(Debug, FromPyObject)]
pub(crate) enum Audience {
    One(String),
    Many(Vec<String>),
}

/// Calls every callback after each change of `svc`'s identity until `stop`.
fn dispatch(svc: &ConnectService, callbacks: Callbacks, stop: Arc<CloseSignal>) -> Result<()> {
    let handle = runtime::handle()?;
    let mut changes = svc.identity().watch();
    std::thread::Builder::new()
        .name(format!("libconnect-on-change-{}", svc.name()))
        .spawn(move || {
            loop {
                let go = Call::new("on_change")
                    .and_then(|call| {
                        call.cancel_on(&stop).run(&handle, async {
                            changes.changed().await.map_err(|_| stop.error())
                        })
                    })
                    .is_ok();
                if !go {
                    return;
                }
                Python::attach(|py| {
                    let now: Vec<Py<PyAny>> = lock(&callbacks)
                        .iter()
                        .map(|(_, c)| c.clone_ref(py))
                        .collect();
                    for cb in now {
                        if let Err(e) = cb.call0(py) {
                            e.write_unraisable(py, Some(cb.bind(py)));
                        }
                    }
                });
            }
        })
        .map_err(|e| error(ErrorKind::Io, format!("starting the on_change thread: {e}")))?;
    Ok(())
}

/// What `Service.authorize` accepts: a SPIFFE URI, a PEM chain (str or bytes), or DER.
enum Peer {
    Uri(String),
    Pem(String),
    Der(Vec<u8>),
}

impl Peer {
    fn from_py(peer: &Bound<'_, PyAny>) -> Result<Peer> {
        const PEM: &str = "-----BEGIN";
        if let Ok(s) = peer.cast::<PyString>() {
            let s = s.to_cow()?.into_owned();
            return Ok(if s.trim_start().starts_with(PEM) {
                Peer::Pem(s)
            } else {
                Peer::Uri(s)
            });
        }
        let bytes = if let Ok(b) = peer.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(b) = peer.cast::<PyByteArray>() {
            b.to_vec()
        } else {
            return Err(invalid(
                "peer must be a SPIFFE URI (str), a PEM chain (str or bytes) or a DER \
                 certificate (bytes)",
            ));
        };
        if bytes.trim_ascii_start().starts_with(PEM.as_bytes()) {
            String::from_utf8(bytes)
                .map(Peer::Pem)
                .map_err(|_| error(ErrorKind::InvalidCertificate, "PEM input is not UTF-8"))
        } else {
            Ok(Peer::Der(bytes))
        }
    }

    fn input(&self) -> PeerInput<'_> {
        match self {
            Peer::Uri(s) => PeerInput::Uri(s),
            Peer::Pem(s) => PeerInput::ChainPem(s),
            Peer::Der(d) => PeerInput::CertDer(d),
        }
    }
}

#[pymethods]
impl Service {
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    #[getter]
    fn spiffe_id(&self) -> Result<String> {
        Ok(self.get()?.material()?.spiffe_id.to_string())
    }

    #[getter]
    fn ready(&self) -> Result<bool> {
        Ok(self.get()?.ready())
    }

    #[getter]
    fn closed(&self) -> bool {
        lock(&self.inner).is_none()
    }

    #[pyo3(name = "ready_wait", signature = (timeout=Some(10.0)), text_signature = "(self, /, timeout=10.0)")]
    fn py_ready_wait(&self, py: Python<'_>, timeout: Option<f64>) -> Result<()> {
        self.ready_wait(py, runtime::timeout(timeout)?)
    }

    #[pyo3(signature = (addr=Addr::default()), text_signature = "(self, /, addr='127.0.0.1:0')")]
    fn listen(&self, py: Python<'_>, addr: Addr) -> Result<PyListener> {
        let svc = self.get()?;
        let l = wait(py, None, "listen", async move {
            Ok(match addr {
                Addr::Text(a) => svc.listen(a).await?,
                Addr::Pair(h, p) => svc.listen((h, p)).await?,
            })
        })?;
        Ok(PyListener::new(l))
    }

    #[pyo3(signature = (target, timeout=None, datacenter=None, mesh_gateway=None))]
    fn dial(
        &self,
        py: Python<'_>,
        target: &str,
        timeout: Option<f64>,
        datacenter: Option<String>,
        mesh_gateway: Option<&str>,
    ) -> Result<PyConnection> {
        let svc = self.get()?;
        let opts = match datacenter {
            Some(dc) => DialOptions::datacenter(dc).mesh_gateway(mesh_gateway_mode(mesh_gateway)?),
            None if mesh_gateway.is_some() => {
                return Err(invalid(
                    "mesh_gateway applies to a dial to another datacenter: give datacenter too",
                ));
            }
            None => DialOptions::default(),
        };
        let c = wait(py, runtime::timeout(timeout)?, "dial", async move {
            Ok(svc.dial_with(target, &opts).await?)
        })?;
        Ok(PyConnection::new(c))
    }

    #[pyo3(signature = (addr, target, timeout=None))]
    fn dial_addr(
        &self,
        py: Python<'_>,
        addr: Addr,
        target: &str,
        timeout: Option<f64>,
    ) -> Result<PyConnection> {
        let svc = self.get()?;
        let c = wait(py, runtime::timeout(timeout)?, "dial_addr", async move {
            Ok(match addr {
                Addr::Text(a) => svc.dial_addr(a, target).await?,
                Addr::Pair(h, p) => svc.dial_addr((h, p), target).await?,
            })
        })?;
        Ok(PyConnection::new(c))
    }

    /// A JWT-SVID for this service with `audience` (one string or a list).
    fn jwt_svid(&self, py: Python<'_>, audience: Audience) -> Result<String> {
        let svc = self.get()?;
        let audiences = match audience {
            Audience::One(a) => vec![a],
            Audience::Many(list) => list,
        };
        wait(py, None, "jwt_svid", async move {
            Ok(svc.jwt_svid(&audiences).await?)
        })
    }

    fn resolve(&self, py: Python<'_>, target: &str) -> Result<Vec<(String, u16)>> {
        let svc = self.get()?;
        wait(py, None, "resolve", async move {
            let entries = svc.agent().health_connect(target).await?;
            Ok(entries
                .iter()
                .map(|e| {
                    let (host, port) = e.dial_address();
                    (host.to_owned(), port)
                })
                .collect())
        })
    }

    fn authorize(&self, py: Python<'_>, peer: Bound<'_, PyAny>) -> Result<Authorization> {
        let svc = self.get()?;
        let peer = Peer::from_py(&peer)?;
        let a = py.detach(|| svc.authorize(peer.input()))?;
        Ok(Authorization {
            peer: a.peer.to_string(),
            allowed: a.allowed,
            reason: a.reason,
        })
    }

    fn verify_server(&self, py: Python<'_>, cert: &[u8], target: &str) -> Result<String> {
        let svc = self.get()?;
        let chain = [CertificateDer::from(cert.to_vec())];
        let id = py.detach(|| svc.verify_server(target, &chain))?;
        Ok(id.to_string())
    }

    fn leaf_pem<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>> {
        let pem = self.get()?.identity().chain_pem()?;
        Ok(PyBytes::new(py, pem.as_bytes()))
    }

    fn key_pem<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>> {
        let pem = self.get()?.identity().key_pem()?;
        Ok(PyBytes::new(py, pem.as_bytes()))
    }

    fn roots_pem<'py>(&self, py: Python<'py>) -> Result<Bound<'py, PyBytes>> {
        let pem = self.get()?.identity().roots_pem()?;
        Ok(PyBytes::new(py, pem.as_bytes()))
    }

    fn on_change(&self, callback: Bound<'_, PyAny>) -> Result<Subscription> {
        if !callback.is_callable() {
            return Err(invalid("callback must be callable"));
        }
        let svc = self.get()?;
        let mut slot = lock(&self.dispatcher);
        if slot.is_none() {
            let callbacks: Callbacks = Arc::new(Mutex::new(Vec::new()));
            let stop = Arc::new(CloseSignal::new("the service is closed"));
            dispatch(&svc, Arc::clone(&callbacks), Arc::clone(&stop))?;
            *slot = Some(Dispatcher {
                callbacks,
                next_id: 0,
                stop,
            });
        }
        let Some(d) = slot.as_mut() else {
            return Err(closed("service"));
        };
        d.next_id += 1;
        lock(&d.callbacks).push((d.next_id, callback.unbind()));
        Ok(Subscription {
            callbacks: Arc::downgrade(&d.callbacks),
            id: d.next_id,
            closed: AtomicBool::new(false),
        })
    }

    fn ssl_context<'py>(slf: &Bound<'py, Self>, server_side: bool) -> PyResult<Bound<'py, PyAny>> {
        helper(slf.py(), "ssl_context")?.call1((slf, server_side))
    }

    #[pyo3(signature = (ssl_object, target=None))]
    fn check_peer(
        slf: &Bound<'_, Self>,
        ssl_object: Bound<'_, PyAny>,
        target: Option<String>,
    ) -> PyResult<String> {
        helper(slf.py(), "check_peer")?
            .call1((slf, ssl_object, target))?
            .extract()
    }

    fn wrap_server_socket<'py>(
        slf: &Bound<'py, Self>,
        sock: Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        helper(slf.py(), "wrap_server_socket")?.call1((slf, sock))
    }

    #[pyo3(signature = (target, *, addr=None, timeout=None, limit=65536))]
    fn open_connection<'py>(
        slf: &Bound<'py, Self>,
        target: String,
        addr: Option<Bound<'py, PyAny>>,
        timeout: Option<f64>,
        limit: usize,
    ) -> PyResult<Bound<'py, PyAny>> {
        helper(slf.py(), "open_connection")?.call1((slf, target, addr, timeout, limit))
    }

    #[pyo3(signature = (handler, host=None, port=None, **kwargs))]
    fn start_server<'py>(
        slf: &Bound<'py, Self>,
        handler: Bound<'py, PyAny>,
        host: Option<Bound<'py, PyAny>>,
        port: Option<u16>,
        kwargs: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        helper(slf.py(), "start_server")?.call((slf, handler, host, port), kwargs)
    }

    fn close(&self) {
        self.shutdown();
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        _exc_type: Option<Bound<'_, PyType>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> bool {
        self.shutdown();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<libconnect.Service name={:?}{}>",
            self.name,
            if self.closed() { " closed" } else { "" }
        )
    }
}

/// A registered `on_change` callback; `close()` unregisters it.
#[pyclass(frozen, module = "libconnect", name = "Subscription")]
pub(crate) struct Subscription {
    callbacks: Weak<CallbackList>,
    id: u64,
    closed: AtomicBool,
}

#[pymethods]
impl Subscription {
    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(cbs) = self.callbacks.upgrade() {
            lock(&cbs).retain(|(id, _)| *id != self.id);
        }
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        _exc_type: Option<Bound<'_, PyType>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "<libconnect.Subscription id={}{}>",
            self.id,
            if self.closed() { " closed" } else { "" }
        )
    }
}

/// What `Authorization.__reduce__` returns: the class and its constructor's arguments.
type Reduced<'py> = (Bound<'py, PyType>, (String, bool, String));

/// Whether a peer may connect to a service, and why (Consul's reason text).
#[pyclass(frozen, eq, hash, module = "libconnect", name = "Authorization")]
#[derive(PartialEq, Eq, Hash)]
pub(crate) struct Authorization {
    #[pyo3(get)]
    peer: String,
    #[pyo3(get)]
    allowed: bool,
    #[pyo3(get)]
    reason: String,
}

#[pymethods]
impl Authorization {
    #[new]
    fn py_new(peer: String, allowed: bool, reason: String) -> Self {
        Authorization {
            peer,
            allowed,
            reason,
        }
    }

    fn __bool__(&self) -> bool {
        self.allowed
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Reduced<'py>> {
        let me = slf.get();
        Ok((
            slf.get_type(),
            (me.peer.clone(), me.allowed, me.reason.clone()),
        ))
    }

    fn __repr__(&self) -> String {
        format!(
            "Authorization(peer={:?}, allowed={}, reason={:?})",
            self.peer,
            if self.allowed { "True" } else { "False" },
            self.reason
        )
    }

    fn __str__(&self) -> String {
        format!(
            "{} {}: {}",
            self.peer,
            if self.allowed { "allowed" } else { "denied" },
            self.reason
        )
    }
}

/// `mesh_gateway=`: Consul's spelling of an upstream's `MeshGateway.Mode`, `None` for `none`.
fn mesh_gateway_mode(mode: Option<&str>) -> Result<MeshGatewayMode> {
    match mode {
        None => Ok(MeshGatewayMode::None),
        Some(m) => MeshGatewayMode::from_name(m).ok_or_else(|| {
            invalid(format!(
                "invalid mesh gateway mode {m:?}: must be \"none\", \"local\" or \"remote\""
            ))
        }),
    }
}
