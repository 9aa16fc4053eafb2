//! Running core futures from Python: on libconnect's I/O runtime, with the GIL released, in
//! short slices so that Ctrl-C (and any other signal handler) runs between them.

use std::future::Future;
use std::time::{Duration, Instant};

use pyo3::Python;
use tokio::runtime::Handle;

use crate::errors::{Error, Result, error, invalid};
use connect_core::ErrorKind;

/// How long one slice of a blocking call waits before signals are checked again.
const SLICE: Duration = Duration::from_millis(50);

/// "Forever", for core calls that take a timeout: far enough, small enough not to overflow.
pub(crate) const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// The runtime every call of the binding runs on: libconnect's own I/O runtime, which lives
/// as long as the process (an agent's runtime stops with the agent; connections and
/// listeners outlive it).
pub(crate) fn handle() -> Result<Handle> {
    Ok(connect_core::tls::blocking::handle()?)
}

/// A Python timeout (`float` seconds, `None` for none) as a `Duration`.
pub(crate) fn timeout(secs: Option<f64>) -> Result<Option<Duration>> {
    secs.map(|s| {
        Duration::try_from_secs_f64(s)
            .map_err(|_| invalid(format!("timeout must be a non-negative number, got {s}")))
    })
    .transpose()
}

/// Runs `fut` to completion with the GIL released, at most `limit` (then `TIMEOUT`), and
/// checks for signals every [`SLICE`]: a `KeyboardInterrupt` raised by the handler drops the
/// future and is raised instead.
pub(crate) fn wait<T, F>(py: Python<'_>, limit: Option<Duration>, what: &str, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send,
    T: Send,
{
    if Handle::try_current().is_ok() {
        return Err(invalid(
            "a blocking libconnect call was made from a libconnect runtime thread",
        ));
    }
    let handle = handle()?;
    let deadline = limit.map(|l| Instant::now() + l);
    let mut fut = std::pin::pin!(fut);
    loop {
        let slice = match deadline {
            Some(d) => SLICE.min(d.saturating_duration_since(Instant::now())),
            None => SLICE,
        };
        let fut = fut.as_mut();
        let step = py.detach(|| handle.block_on(async { tokio::time::timeout(slice, fut).await }));
        if let Ok(done) = step {
            return done;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let limit = limit.unwrap_or_default();
            return Err(error(
                ErrorKind::Timeout,
                format!("{what}: timed out after {limit:?}"),
            ));
        }
        py.check_signals().map_err(Error::Py)?;
    }
}
