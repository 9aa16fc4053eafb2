//! Injected time.
//!
//! Every validity computation (NotBefore/NotAfter, renewal windows, pruning, rate limits)
//! reads a [`Clock`], so tests move time by hand instead of sleeping.

use std::fmt::Debug;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use time::OffsetDateTime;

/// A future that completes when a clock reaches an instant.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of wall-clock time.
pub trait Clock: Send + Sync + Debug + 'static {
    /// The current time in UTC.
    fn now(&self) -> OffsetDateTime;

    /// Completes once [`Clock::now`] has reached `deadline`. Renewal and rotation timers wait
    /// through this, so a test that moves a [`ManualClock`] wakes them without real sleeps.
    /// Must be polled inside a tokio runtime.
    fn sleep_until(&self, deadline: OffsetDateTime) -> Sleep;
}

/// A shared clock handle.
pub type SharedClock = Arc<dyn Clock>;

/// The operating system's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn sleep_until(&self, deadline: OffsetDateTime) -> Sleep {
        let wait = Duration::try_from(deadline - self.now()).unwrap_or_default();
        Box::pin(tokio::time::sleep(wait))
    }
}

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that only moves when told to; for tests and simulations.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
    /// Bumped on every move, to wake sleepers.
    moved: Arc<tokio::sync::watch::Sender<u64>>,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        ManualClock {
            now: Arc::new(Mutex::new(start)),
            moved: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        {
            let mut now = self.now.lock().unwrap_or_else(PoisonError::into_inner);
            *now += by;
        }
        self.moved.send_modify(|n| *n += 1);
    }

    /// Sets the clock to `to`.
    pub fn set(&self, to: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner) = to;
        self.moved.send_modify(|n| *n += 1);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sleep_until(&self, deadline: OffsetDateTime) -> Sleep {
        let clock = self.clone();
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            while clock.now() < deadline {
                if moved.changed().await.is_err() {
                    // The clock is gone; nothing will ever move it again.
                    std::future::pending::<()>().await;
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(datetime!(2018-01-01 00:00:00 UTC));
        assert_eq!(c.now(), datetime!(2018-01-01 00:00:00 UTC));
        c.advance(Duration::from_secs(90));
        assert_eq!(c.now(), datetime!(2018-01-01 00:01:30 UTC));
        let shared: SharedClock = Arc::new(c.clone());
        c.set(datetime!(2020-02-02 00:00:00 UTC));
        assert_eq!(shared.now(), datetime!(2020-02-02 00:00:00 UTC));
    }

    #[tokio::test]
    async fn manual_sleepers_wake_when_the_clock_passes_their_deadline() {
        let c = ManualClock::new(datetime!(2018-01-01 00:00:00 UTC));
        let sleep = c.sleep_until(datetime!(2018-01-01 01:00:00 UTC));
        let task = tokio::spawn(sleep);
        c.advance(Duration::from_secs(1800));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        c.advance(Duration::from_secs(1800));
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
        // A deadline already passed completes at once.
        c.sleep_until(datetime!(2000-01-01 00:00:00 UTC)).await;
    }

    #[tokio::test]
    async fn system_sleep_until_the_past_is_immediate() {
        SystemClock
            .sleep_until(OffsetDateTime::now_utc() - time::Duration::hours(1))
            .await;
    }

    #[test]
    fn system_clock_is_close_to_now() {
        let d = SystemClock.now() - OffsetDateTime::now_utc();
        assert!(d.abs() < time::Duration::seconds(5));
    }
}
