//! Watching an entry: a loop of Gets that turns index changes into events (ARCHITECTURE.md, cache).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::backoff::backoff_with;
use super::store::{Cache, GetOutcome, Inner, Shard};
use super::types::{CacheType, GetOptions, UpdateEvent};
use crate::error::{Error, ErrorKind, Result};

/// The channel size [`Cache::watch`] uses. Events are cumulative (each carries the whole
/// value), so a small buffer only decides how far a slow reader lags before the watcher
/// waits for it.
pub const WATCH_BUFFER: usize = 8;

impl Cache {
    /// Sends an [`UpdateEvent`] to `sender` for the first result of `req` and for every later
    /// result with a higher index, until `sender`'s receiver is dropped or the cache closes.
    ///
    /// Blocking types are watched with blocking Gets (`opts.timeout` bounds each one; `None`
    /// waits for each fetch). Errors and zero indexes back off as background refresh does;
    /// an error is delivered only while no value has been delivered yet. Types without
    /// blocking are polled: `opts.max_age` is required, and the entry is read again when its
    /// data reaches that age (plus up to 1/16 of it, so the read lands after expiry); an
    /// event is sent when the index or the value changes ([`CacheType::same_value`]).
    ///
    /// Errors: [`ErrorKind::InvalidParameter`] if `T` is not registered or a polling type
    /// has no `max_age`; [`ErrorKind::Closed`].
    pub fn notify<T: CacheType>(
        &self,
        req: T::Request,
        opts: GetOptions,
        sender: mpsc::Sender<UpdateEvent<T::Value>>,
    ) -> Result<()> {
        let inner = self.inner();
        inner.ensure_open()?;
        let shard = inner.shard::<T>()?;
        if shard.options().supports_blocking {
            inner.spawn(watch_blocking::<T>(Arc::clone(inner), req, opts, sender));
            return Ok(());
        }
        let Some(max_age) = opts.max_age.filter(|a| !a.is_zero()) else {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!(
                    "cache type {:?} does not block; notify needs a max_age to poll with",
                    T::NAME
                ),
            ));
        };
        inner.spawn(watch_polling::<T>(
            Arc::clone(inner),
            shard,
            req,
            opts,
            max_age,
            sender,
        ));
        Ok(())
    }

    /// [`Cache::notify`] into a new channel of [`WATCH_BUFFER`] events; the watch ends when
    /// the receiver is dropped.
    pub fn watch<T: CacheType>(
        &self,
        req: T::Request,
        opts: GetOptions,
    ) -> Result<mpsc::Receiver<UpdateEvent<T::Value>>> {
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        self.notify::<T>(req, opts, tx)?;
        Ok(rx)
    }
}

/// The shortest pause between two polls of a type without blocking.
const MIN_POLL_WAIT: Duration = Duration::from_millis(1);

/// How one watcher iteration ends.
enum Step {
    Continue,
    Stop,
}

/// A Get that the watcher dropping its receiver cancels: `None` once nobody listens.
async fn get_while_watched<T: CacheType>(
    inner: &Arc<Inner>,
    req: &T::Request,
    opts: GetOptions,
    tx: &mpsc::Sender<UpdateEvent<T::Value>>,
) -> Option<Result<GetOutcome<T::Value>>> {
    tokio::select! {
        biased;
        () = tx.closed() => None,
        r = inner.get::<T>(req, opts) => Some(r),
    }
}

async fn watch_blocking<T: CacheType>(
    inner: Arc<Inner>,
    req: T::Request,
    mut opts: GetOptions,
    tx: mpsc::Sender<UpdateEvent<T::Value>>,
) {
    let mut shutdown = inner.shutdown_signal();
    // Index 0 first, so the current (possibly cached) value is delivered at once.
    let mut index: u64 = 0;
    let mut failures: u32 = 0;
    loop {
        opts.min_index = index;
        let Some(got) = get_while_watched::<T>(&inner, &req, opts, &tx).await else {
            return;
        };
        let succeeded_at = match got {
            Ok(GetOutcome::Value(value, meta)) => {
                if index == 0 || index < meta.index {
                    let event = UpdateEvent::of_value(value, meta.index);
                    if let Step::Stop = send(&tx, event, &mut shutdown).await {
                        return;
                    }
                    index = meta.index;
                }
                Some(meta.index)
            }
            // The Get's own timeout with nothing cached yet: not news, just try again.
            Ok(GetOutcome::TimedOutEmpty) => None,
            Err(e) if e.kind() == ErrorKind::Closed => return,
            Err(e) => {
                if index == 0 {
                    let event = UpdateEvent::of_error(e);
                    if let Step::Stop = send(&tx, event, &mut shutdown).await {
                        return;
                    }
                }
                None
            }
        };
        // A success at index 0 would make the next Get return at once, forever: back off
        // as for an error.
        let wait = match succeeded_at {
            Some(i) if i > 0 => {
                failures = 0;
                Duration::ZERO
            }
            _ => {
                failures = failures.saturating_add(1);
                backoff_with(failures, inner.stagger())
            }
        };
        if let Step::Stop = pause(wait, &tx, &mut shutdown).await {
            return;
        }
        if succeeded_at.is_some() && index < 1 {
            index = 1;
        }
    }
}

async fn watch_polling<T: CacheType>(
    inner: Arc<Inner>,
    shard: Arc<Shard<T>>,
    req: T::Request,
    opts: GetOptions,
    max_age: Duration,
    tx: mpsc::Sender<UpdateEvent<T::Value>>,
) {
    let mut shutdown = inner.shutdown_signal();
    let mut index: u64 = 0;
    let mut last: Option<Arc<T::Value>> = None;
    let mut failures: u32 = 0;
    loop {
        let Some(got) = get_while_watched::<T>(&inner, &req, opts, &tx).await else {
            return;
        };
        let wait = match got {
            Ok(GetOutcome::Value(value, meta)) => {
                failures = 0;
                let changed = last
                    .as_ref()
                    .is_none_or(|l| !Arc::ptr_eq(l, &value) && !shard.same_value(l, &value));
                if index < meta.index || changed {
                    last = Some(Arc::clone(&value));
                    index = meta.index;
                    let event = UpdateEvent::of_value(value, meta.index);
                    if let Step::Stop = send(&tx, event, &mut shutdown).await {
                        return;
                    }
                }
                // Sleep until the data is stale, then a little more so the next Get misses
                // instead of landing exactly on max_age and hitting. The floor keeps a Get
                // that hit at exactly max_age (possible with a pinned stagger, or a clock
                // that is not moving) from turning this loop into a spin.
                (max_age.saturating_sub(meta.age) + (inner.stagger())(max_age / 16))
                    .max(MIN_POLL_WAIT)
            }
            Ok(GetOutcome::TimedOutEmpty) => {
                failures = failures.saturating_add(1);
                backoff_with(failures, inner.stagger())
            }
            Err(e) if e.kind() == ErrorKind::Closed => return,
            Err(e) => {
                failures = failures.saturating_add(1);
                if last.is_none() {
                    let event = UpdateEvent::of_error(e);
                    if let Step::Stop = send(&tx, event, &mut shutdown).await {
                        return;
                    }
                }
                backoff_with(failures, inner.stagger())
            }
        };
        if let Step::Stop = pause(wait, &tx, &mut shutdown).await {
            return;
        }
    }
}

async fn send<V>(
    tx: &mpsc::Sender<UpdateEvent<V>>,
    event: UpdateEvent<V>,
    shutdown: &mut watch::Receiver<bool>,
) -> Step {
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|c| *c) => Step::Stop,
        r = tx.send(event) => if r.is_ok() { Step::Continue } else { Step::Stop },
    }
}

async fn pause<V>(
    wait: Duration,
    tx: &mpsc::Sender<UpdateEvent<V>>,
    shutdown: &mut watch::Receiver<bool>,
) -> Step {
    if wait.is_zero() {
        return Step::Continue;
    }
    tokio::select! {
        biased;
        _ = shutdown.wait_for(|c| *c) => Step::Stop,
        () = tx.closed() => Step::Stop,
        () = tokio::time::sleep(wait) => Step::Continue,
    }
}
