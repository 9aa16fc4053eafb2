//! `Listener` and `Connection`: blocking, socket-like objects over the core's tokio types. Every
//! blocking call runs with the GIL released and can be interrupted by Ctrl-C or `close()`.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyType};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Mutex as AsyncMutex;

use connect_core::blocking::{Call, CloseSignal};
use connect_core::tls;

use crate::errors::{Error, Result, closed};
use crate::runtime::{self, wait_or_close};
use crate::service::lock;

/// An address: `"host:port"` or `(host, port)`.
#[derive(Debug, FromPyObject)]
pub(crate) enum Addr {
    Text(String),
    Pair(String, u16),
}

impl Default for Addr {
    fn default() -> Self {
        Addr::Text("127.0.0.1:0".into())
    }
}

fn io_error(e: &std::io::Error) -> Error {
    Error::Core(tls::error_from_io(e))
}

/// Accepts mutual-TLS connections that passed verification and the intention check.
#[pyclass(frozen, module = "libconnect", name = "Listener")]
pub(crate) struct PyListener {
    inner: AsyncMutex<Option<tls::Listener>>,
    address: SocketAddr,
    closed: CloseSignal,
}

impl PyListener {
    pub(crate) fn new(l: tls::Listener) -> PyListener {
        PyListener {
            address: l.local_addr(),
            inner: AsyncMutex::new(Some(l)),
            closed: CloseSignal::new("the listener is closed"),
        }
    }
}

#[pymethods]
impl PyListener {
    #[getter]
    fn address(&self) -> (String, u16) {
        (self.address.ip().to_string(), self.address.port())
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed.is_closed()
    }

    #[pyo3(signature = (timeout=None))]
    fn accept(&self, py: Python<'_>, timeout: Option<f64>) -> Result<PyConnection> {
        let limit = runtime::timeout(timeout)?;
        let conn = wait_or_close(py, limit, "accept", &self.closed, async {
            let mut guard = self.inner.lock().await;
            let l = guard.as_mut().ok_or_else(|| closed("listener"))?;
            Ok(l.accept().await?)
        })?;
        Ok(PyConnection::new(conn))
    }

    fn close(&self, py: Python<'_>) -> Result<()> {
        self.closed.close();
        let handle = runtime::handle()?;
        // Blocked accepts see the flag and let go of the listener; dropping it stops it.
        let call = Call::new("close")?;
        let l = py.detach(|| {
            call.run(&handle, async {
                Ok::<_, Error>(self.inner.lock().await.take())
            })
        })?;
        drop(l);
        Ok(())
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyType>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> Result<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<libconnect.Listener address={}{}>",
            self.address,
            if self.closed() { " closed" } else { "" }
        )
    }
}

/// Reads are capped per call so that `recv(huge)` does not allocate `huge`.
const MAX_RECV: usize = 1 << 20;

/// An authenticated mutual-TLS connection, used like a blocking socket. One thread may read
/// while another writes.
#[pyclass(frozen, module = "libconnect", name = "Connection")]
pub(crate) struct PyConnection {
    reader: AsyncMutex<Option<ReadHalf<tls::Connection>>>,
    writer: AsyncMutex<Option<WriteHalf<tls::Connection>>>,
    closed: CloseSignal,
    timeout: Mutex<Option<Duration>>,
    peer_id: String,
    peer_certificate: Vec<u8>,
    peer_address: Option<SocketAddr>,
    local_address: Option<SocketAddr>,
    resumed: bool,
}

fn pair(a: Option<SocketAddr>) -> Option<(String, u16)> {
    a.map(|a| (a.ip().to_string(), a.port()))
}

impl PyConnection {
    pub(crate) fn new(c: tls::Connection) -> PyConnection {
        let peer_id = c.peer_id().to_string();
        let peer_certificate = c
            .peer_certificates()
            .first()
            .map(|d| d.to_vec())
            .unwrap_or_default();
        let peer_address = c.peer_addr().ok();
        let local_address = c.local_addr().ok();
        let resumed = c.is_resumed();
        let (r, w) = tokio::io::split(c);
        PyConnection {
            reader: AsyncMutex::new(Some(r)),
            writer: AsyncMutex::new(Some(w)),
            closed: CloseSignal::new("the connection is closed"),
            timeout: Mutex::new(None),
            peer_id,
            peer_certificate,
            peer_address,
            local_address,
            resumed,
        }
    }

    fn limit(&self) -> Option<Duration> {
        *lock(&self.timeout)
    }

    fn write(&self, py: Python<'_>, data: &[u8], all: bool) -> Result<usize> {
        wait_or_close(py, self.limit(), "send", &self.closed, async {
            let mut guard = self.writer.lock().await;
            let w = guard.as_mut().ok_or_else(|| closed("connection"))?;
            let n = if all {
                w.write_all(data).await.map_err(|e| io_error(&e))?;
                data.len()
            } else {
                w.write(data).await.map_err(|e| io_error(&e))?
            };
            w.flush().await.map_err(|e| io_error(&e))?;
            Ok(n)
        })
    }
}

#[pymethods]
impl PyConnection {
    #[getter]
    fn peer_id(&self) -> &str {
        &self.peer_id
    }

    #[getter]
    fn peer_certificate<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.peer_certificate)
    }

    #[getter]
    fn peer_address(&self) -> Option<(String, u16)> {
        pair(self.peer_address)
    }

    #[getter]
    fn local_address(&self) -> Option<(String, u16)> {
        pair(self.local_address)
    }

    #[getter]
    fn resumed(&self) -> bool {
        self.resumed
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed.is_closed()
    }

    fn settimeout(&self, timeout: Option<f64>) -> Result<()> {
        *lock(&self.timeout) = runtime::timeout(timeout)?;
        Ok(())
    }

    fn gettimeout(&self) -> Option<f64> {
        self.limit().map(|d| d.as_secs_f64())
    }

    fn recv<'py>(&self, py: Python<'py>, bufsize: usize) -> Result<Bound<'py, PyBytes>> {
        let data = wait_or_close(py, self.limit(), "recv", &self.closed, async {
            let mut guard = self.reader.lock().await;
            let r = guard.as_mut().ok_or_else(|| closed("connection"))?;
            let mut buf = vec![0u8; bufsize.min(MAX_RECV)];
            let n = r.read(&mut buf).await.map_err(|e| io_error(&e))?;
            buf.truncate(n);
            Ok(buf)
        })?;
        Ok(PyBytes::new(py, &data))
    }

    fn send(&self, py: Python<'_>, data: Cow<'_, [u8]>) -> Result<usize> {
        self.write(py, &data, false)
    }

    fn sendall(&self, py: Python<'_>, data: Cow<'_, [u8]>) -> Result<()> {
        self.write(py, &data, true).map(|_| ())
    }

    #[pyo3(signature = (mode="r", buffering=None, *, encoding=None, errors=None, newline=None))]
    fn makefile<'py>(
        slf: &Bound<'py, Self>,
        mode: &str,
        buffering: Option<i64>,
        encoding: Option<&str>,
        errors: Option<&str>,
        newline: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let kwargs = PyDict::new(py);
        kwargs.set_item("encoding", encoding)?;
        kwargs.set_item("errors", errors)?;
        kwargs.set_item("newline", newline)?;
        py.import("libconnect._ssl")?
            .getattr("makefile")?
            .call((slf, mode, buffering), Some(&kwargs))
    }

    /// Sends close_notify (bounded by a short timeout) and releases the socket. Blocked
    /// `recv`/`send` calls in other threads fail with `CLOSED`.
    fn close(&self, py: Python<'_>) -> Result<()> {
        if self.closed.close() {
            return Ok(());
        }
        let handle = runtime::handle()?;
        let call = Call::new("close")?;
        py.detach(|| {
            call.run(&handle, async {
                let r = self.reader.lock().await.take();
                let w = self.writer.lock().await.take();
                if let (Some(r), Some(w)) = (r, w) {
                    let mut c = r.unsplit(w);
                    let _ = tokio::time::timeout(Duration::from_secs(1), c.shutdown()).await;
                }
                Ok::<(), Error>(())
            })
        })
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __exit__(
        &self,
        py: Python<'_>,
        _exc_type: Option<Bound<'_, PyType>>,
        _exc: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> Result<bool> {
        self.close(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "<libconnect.Connection peer_id={:?}{}>",
            self.peer_id,
            if self.closed() { " closed" } else { "" }
        )
    }
}
