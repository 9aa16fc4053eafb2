//! The per-entry fetch rate limit (Consul's `cache.entry_fetch_rate` and
//! `entry_fetch_max_burst`, Consul docs: Agent configuration, cache).
//!
//! It measures real waiting, so it runs on tokio time (which tests pause and advance), not on
//! the injected wall clock.

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket that hands out reservations: a caller takes a token now and is told how
/// long to wait for it, so concurrent callers queue up in order without holding a lock while
/// they sleep (the behaviour of Go's `rate.Limiter.Wait`).
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    /// Tokens per second; `None` is unlimited.
    rate: Option<f64>,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub(crate) fn new(rate: Option<f64>, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes one token and returns how long to wait before using it.
    pub(crate) fn reserve(&mut self, now: Instant) -> Duration {
        let Some(rate) = self.rate else {
            return Duration::ZERO;
        };
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now.max(self.last);
        self.tokens = (self.tokens + elapsed * rate).min(self.burst) - 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    #[test]
    fn unlimited_never_waits() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(None, 2, t0);
        for _ in 0..1000 {
            assert_eq!(b.reserve(t0), Duration::ZERO);
        }
    }

    #[test]
    fn burst_then_one_per_interval() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(2.0), 2, t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        // Reservations queue: the third waits 0.5 s, the fourth 1 s.
        assert_eq!(ms(b.reserve(t0)), 500);
        assert_eq!(ms(b.reserve(t0)), 1000);
        // After 1 s the debt is paid and nothing is banked.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(ms(b.reserve(t1)), 500);
    }

    #[test]
    fn refill_is_capped_at_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(1.0), 2, t0);
        let later = t0 + Duration::from_secs(3600);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(b.reserve(later), Duration::ZERO);
        assert_eq!(ms(b.reserve(later)), 1000);
    }

    #[test]
    fn zero_burst_is_read_as_one() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(Some(10.0), 0, t0);
        assert_eq!(b.reserve(t0), Duration::ZERO);
        assert_eq!(ms(b.reserve(t0)), 100);
    }
}
