//! The blocking bridge: how callers without an async runtime (the C ABI, Python) run the
//! core's async calls.
//!
//! One rule set for every binding:
//! * a blocking call made inside an async runtime (a libconnect callback, an async task) is
//!   refused with `InvalidParameter`, because blocking there would stall or panic that
//!   runtime's worker: use the async API instead;
//! * a call may be bounded ([`Call::timeout`]; past it, `Timeout`);
//! * a call may be tied to its handle's [`CloseSignal`] ([`Call::cancel_on`]), so that closing
//!   or freeing the handle wakes every caller blocked on it with `Closed`;
//! * a caller that must run code between waits (Python checks for Ctrl-C) runs the call in
//!   slices ([`Call::run_slice`]).
//!
//! The runtime is the caller's: a handle that owns one (a C agent) passes its own, everything
//! else uses the process-wide [`runtime`].

use std::borrow::Cow;
use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::runtime::{Handle, Runtime};
use tokio::sync::watch;

use crate::{Error, ErrorKind, Result};

/// The process-wide runtime of libconnect (two worker threads named `libconnect-io`, created
/// on first use and kept for the life of the process), for blocking callers whose handle
/// owns no runtime.
pub fn runtime() -> Result<Handle> {
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

/// A handle's "closed" flag: once [`close`](CloseSignal::close)d, every [`Call`] tied to it
/// returns `Closed` with the signal's message, including calls already blocked.
#[derive(Debug)]
pub struct CloseSignal {
    closed: watch::Sender<bool>,
    message: Cow<'static, str>,
}

impl CloseSignal {
    /// An open signal; `message` is the text of the `Closed` error its calls return
    /// ("the listener is closed").
    pub fn new(message: impl Into<Cow<'static, str>>) -> CloseSignal {
        CloseSignal {
            closed: watch::channel(false).0,
            message: message.into(),
        }
    }

    /// Closes the signal, waking every call blocked on it. Returns whether it was already
    /// closed, so that a handle's close can run its teardown once.
    pub fn close(&self) -> bool {
        self.closed.send_replace(true)
    }

    /// Whether [`close`](CloseSignal::close) was called.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Resolves once the signal is closed.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        // The sender is `self`, so the channel cannot close while this borrow lives.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The `Closed` error of this signal's calls.
    pub fn error(&self) -> Error {
        Error::new(ErrorKind::Closed, self.message.clone().into_owned())
    }
}

/// Refuses a blocking call made inside an async runtime, which it would stall (or, inside
/// `block_on`, panic): `InvalidParameter`, naming the call.
pub fn refuse_inside_runtime(what: &str) -> Result<()> {
    if Handle::try_current().is_ok() {
        return Err(Error::new(
            ErrorKind::InvalidParameter,
            format!(
                "{what}: blocking libconnect calls are refused inside an async runtime \
                 (libconnect's own threads, a callback, an async task); use the async API"
            ),
        ));
    }
    Ok(())
}

/// One blocking call: its name (for errors), its deadline and the signal that cancels it.
///
/// ```no_run
/// # fn demo(svc: &connect_core::tls::Service, closing: &connect_core::blocking::CloseSignal)
/// # -> connect_core::Result<()> {
/// use std::time::Duration;
/// use connect_core::blocking::{Call, runtime};
///
/// let listener = Call::new("listen")?
///     .timeout(Some(Duration::from_secs(5)))
///     .cancel_on(closing)
///     .run(&runtime()?, svc.listen("127.0.0.1:0"))?;
/// # drop(listener); Ok(()) }
/// ```
#[derive(Debug)]
pub struct Call<'a> {
    what: &'a str,
    limit: Option<Duration>,
    deadline: Option<Instant>,
    cancel: Option<&'a CloseSignal>,
}

impl<'a> Call<'a> {
    /// A call named `what`, without timeout or cancellation; refused inside an async runtime
    /// (see [`refuse_inside_runtime`]).
    pub fn new(what: &'a str) -> Result<Call<'a>> {
        refuse_inside_runtime(what)?;
        Ok(Call {
            what,
            limit: None,
            deadline: None,
            cancel: None,
        })
    }

    /// Bounds the call to `limit` from now (`None`: no bound). A limit too large to represent
    /// is no bound.
    pub fn timeout(mut self, limit: Option<Duration>) -> Call<'a> {
        self.limit = limit;
        self.deadline = limit.and_then(|l| Instant::now().checked_add(l));
        self
    }

    /// Ends the call with `signal`'s `Closed` error as soon as `signal` is closed.
    pub fn cancel_on(mut self, signal: &'a CloseSignal) -> Call<'a> {
        self.cancel = Some(signal);
        self
    }

    /// Runs `fut` on `runtime` to its end, its deadline or its cancellation. The future's
    /// error type is the caller's (a binding's own error), as long as it holds a core
    /// [`Error`].
    pub fn run<T, E>(
        &self,
        runtime: &Handle,
        fut: impl Future<Output = std::result::Result<T, E>>,
    ) -> std::result::Result<T, E>
    where
        E: From<Error>,
    {
        let fut = pin!(fut);
        match self.drive(runtime, fut, None) {
            Some(r) => r,
            // Unreachable: without a slice only the deadline ends the wait early, and that
            // is an answer.
            None => Err(self.timed_out().into()),
        }
    }

    /// Runs `fut` on `runtime` for at most `slice`: `Some` with its outcome once it ended
    /// (or its deadline passed, or it was cancelled), `None` when the slice ran out first;
    /// call again with the same future to go on.
    pub fn run_slice<T, E, F>(
        &self,
        runtime: &Handle,
        fut: Pin<&mut F>,
        slice: Duration,
    ) -> Option<std::result::Result<T, E>>
    where
        F: Future<Output = std::result::Result<T, E>>,
        E: From<Error>,
    {
        self.drive(runtime, fut, Some(slice))
    }

    fn drive<T, E, F>(
        &self,
        runtime: &Handle,
        fut: Pin<&mut F>,
        slice: Option<Duration>,
    ) -> Option<std::result::Result<T, E>>
    where
        F: Future<Output = std::result::Result<T, E>>,
        E: From<Error>,
    {
        if let Some(signal) = self.cancel.filter(|s| s.is_closed()) {
            return Some(Err(signal.error().into()));
        }
        let slice_end = slice.and_then(|s| Instant::now().checked_add(s));
        let wake = match (slice_end, self.deadline) {
            (Some(s), Some(d)) => Some(s.min(d)),
            (s, d) => s.or(d),
        };
        runtime.block_on(async {
            let work = async {
                match self.cancel {
                    None => fut.await,
                    Some(signal) => tokio::select! {
                        r = fut => r,
                        () = signal.closed() => Err(signal.error().into()),
                    },
                }
            };
            let Some(wake) = wake else {
                return Some(work.await);
            };
            match tokio::time::timeout_at(wake.into(), work).await {
                Ok(r) => Some(r),
                Err(_) if Some(wake) == self.deadline => Some(Err(self.timed_out().into())),
                Err(_) => None,
            }
        })
    }

    fn timed_out(&self) -> Error {
        let ms = self.limit.unwrap_or_default().as_millis();
        Error::new(
            ErrorKind::Timeout,
            format!("{}: timed out after {ms} ms", self.what),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> Handle {
        runtime().unwrap()
    }

    #[test]
    fn a_call_returns_its_future_s_outcome() {
        let call = Call::new("answer").unwrap();
        assert_eq!(call.run(&rt(), async { Ok::<_, Error>(42) }).unwrap(), 42);
        let e = call
            .run(&rt(), async {
                Err::<(), _>(Error::new(ErrorKind::NotFound, "no such thing"))
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn a_bounded_call_times_out_naming_itself() {
        let call = Call::new("accept")
            .unwrap()
            .timeout(Some(Duration::from_millis(20)));
        let e = call
            .run(&rt(), std::future::pending::<Result<()>>())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        assert_eq!(e.to_string(), "accept: timed out after 20 ms");
    }

    #[test]
    fn closing_the_signal_wakes_a_blocked_call_with_closed() {
        let signal = std::sync::Arc::new(CloseSignal::new("the listener is closed"));
        let closer = std::sync::Arc::clone(&signal);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let blocked = std::thread::spawn(move || {
            let call = Call::new("accept").unwrap().cancel_on(&signal);
            call.run(&rt(), async {
                let _ = started_tx.send(());
                std::future::pending::<Result<()>>().await
            })
        });
        started_rx.recv().unwrap();
        assert!(!closer.close(), "the first close");
        let e = blocked.join().unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed);
        assert_eq!(e.to_string(), "the listener is closed");
        assert!(closer.close(), "a second close sees the first");
        assert!(closer.is_closed());
    }

    #[test]
    fn a_call_on_a_closed_signal_does_not_start() {
        let signal = CloseSignal::new("the agent is closed");
        signal.close();
        let polled = std::sync::atomic::AtomicBool::new(false);
        let e = Call::new("roots")
            .unwrap()
            .cancel_on(&signal)
            .run(&rt(), async {
                polled.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok::<(), Error>(())
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Closed);
        assert!(!polled.load(std::sync::atomic::Ordering::SeqCst));
    }

    #[test]
    fn slices_resume_the_same_future_until_it_ends() {
        let call = Call::new("recv").unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<u8>();
        let mut fut =
            pin!(async move { rx.await.map_err(|_| Error::new(ErrorKind::Closed, "gone")) });
        assert!(
            call.run_slice(&rt(), fut.as_mut(), Duration::from_millis(5))
                .is_none(),
            "nothing sent yet: the slice runs out"
        );
        tx.send(7).unwrap();
        let got = call.run_slice(&rt(), fut.as_mut(), Duration::from_secs(60));
        assert_eq!(got.unwrap().unwrap(), 7);
    }

    #[test]
    fn slices_end_with_timeout_at_the_deadline() {
        let call = Call::new("recv")
            .unwrap()
            .timeout(Some(Duration::from_millis(10)));
        let mut fut = pin!(std::future::pending::<Result<()>>());
        let mut slices = 0;
        let e = loop {
            if let Some(r) = call.run_slice(&rt(), fut.as_mut(), Duration::from_millis(1)) {
                break r.unwrap_err();
            }
            slices += 1;
            assert!(slices < 100_000, "the deadline must end the call");
        };
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }

    #[tokio::test]
    async fn blocking_inside_a_runtime_is_refused() {
        let e = Call::new("listen").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter);
        assert!(e.to_string().starts_with("listen: "), "{e}");
    }
}
