//! Running core futures from Python through the core's blocking bridge
//! ([`connect_core::blocking`]): on libconnect's I/O runtime, with the GIL released, in short
//! slices so that Ctrl-C (and any other signal handler) runs between them.

use std::future::Future;
use std::time::Duration;

use pyo3::Python;
use tokio::runtime::Handle;

use connect_core::blocking::{self, Call, CloseSignal};

use crate::errors::{Error, Result, invalid};

/// How long one slice of a blocking call waits before signals are checked again.
const SLICE: Duration = Duration::from_millis(50);

/// "Forever", for core calls that take a timeout: far enough, small enough not to overflow.
pub(crate) const FOREVER: Duration = Duration::from_secs(365 * 24 * 3600);

/// The runtime every call of the binding runs on: libconnect's own I/O runtime, which lives
/// as long as the process (an agent's runtime stops with the agent; connections and
/// listeners outlive it).
pub(crate) fn handle() -> Result<Handle> {
    Ok(blocking::runtime()?)
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
    run(py, Call::new(what)?.timeout(limit), fut)
}

/// [`wait`], ended with `signal`'s `CLOSED` as soon as the object's `close()` closes it.
pub(crate) fn wait_or_close<T, F>(
    py: Python<'_>,
    limit: Option<Duration>,
    what: &str,
    signal: &CloseSignal,
    fut: F,
) -> Result<T>
where
    F: Future<Output = Result<T>> + Send,
    T: Send,
{
    run(py, Call::new(what)?.timeout(limit).cancel_on(signal), fut)
}

fn run<T, F>(py: Python<'_>, call: Call<'_>, fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send,
    T: Send,
{
    let handle = handle()?;
    let mut fut = std::pin::pin!(fut);
    loop {
        let fut = fut.as_mut();
        if let Some(done) = py.detach(|| call.run_slice(&handle, fut, SLICE)) {
            return done;
        }
        py.check_signals().map_err(Error::Py)?;
    }
}
