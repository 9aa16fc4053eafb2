//! The server-wide CSR limit (Consul CA docs, CSR rate limits): a token bucket of `CSRMaxPerSecond`
//! with burst 1, or, when the rate is 0, at most `CSRMaxConcurrent` signings at once. A request
//! waits at most 500 ms, then fails with the exact text clients compare.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::ca::{CaError, CommonCaConfig};

/// How long a signing request may wait for the limiter.
pub const CSR_LIMIT_WAIT: Duration = Duration::from_millis(500);

#[derive(Debug)]
struct State {
    rate: f64,
    max_concurrent: u32,
    /// When the bucket's next token is available.
    next_token: Instant,
    in_flight: u32,
}

/// The limiter; rebuilt lazily when the configured rate changes.
#[derive(Debug)]
pub struct CsrLimiter {
    state: Mutex<State>,
    freed: Condvar,
}

/// Holds a concurrency slot until dropped.
#[derive(Debug)]
pub struct Permit<'a> {
    limiter: Option<&'a CsrLimiter>,
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if let Some(l) = self.limiter {
            let mut s = l.lock();
            s.in_flight = s.in_flight.saturating_sub(1);
            l.freed.notify_one();
        }
    }
}

impl CsrLimiter {
    /// A limiter for these options.
    pub fn new(config: &CommonCaConfig) -> CsrLimiter {
        CsrLimiter {
            state: Mutex::new(State {
                rate: config.csr_max_per_second,
                max_concurrent: config.csr_max_concurrent,
                next_token: Instant::now(),
                in_flight: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies new options; a changed rate starts a fresh bucket.
    pub fn reconfigure(&self, config: &CommonCaConfig) {
        let mut s = self.lock();
        if s.rate != config.csr_max_per_second {
            s.rate = config.csr_max_per_second;
            s.next_token = Instant::now();
        }
        s.max_concurrent = config.csr_max_concurrent;
        self.freed.notify_all();
    }

    /// Waits (at most 500 ms) for the right to sign.
    pub fn acquire(&self) -> Result<Permit<'_>, CaError> {
        self.acquire_at(Instant::now())
    }

    fn acquire_at(&self, now: Instant) -> Result<Permit<'_>, CaError> {
        let mut s = self.lock();
        if s.rate > 0.0 {
            let interval = Duration::from_secs_f64(1.0 / s.rate);
            let start = s.next_token.max(now);
            let wait = start - now;
            if wait > CSR_LIMIT_WAIT {
                return Err(CaError::RateLimited);
            }
            s.next_token = start + interval;
            drop(s);
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            return Ok(Permit { limiter: None });
        }
        if s.max_concurrent == 0 {
            return Ok(Permit { limiter: None });
        }
        let deadline = now + CSR_LIMIT_WAIT;
        while s.in_flight >= s.max_concurrent {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(CaError::RateLimited);
            }
            s = self
                .freed
                .wait_timeout(s, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        s.in_flight += 1;
        Ok(Permit {
            limiter: Some(self),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(rate: f64, concurrent: u32) -> CommonCaConfig {
        CommonCaConfig {
            csr_max_per_second: rate,
            csr_max_concurrent: concurrent,
            ..CommonCaConfig::default()
        }
    }

    #[test]
    fn bucket_allows_burst_one_then_refuses_beyond_half_a_second() {
        // At 1/s the second request would wait ~1 s, more than the 500 ms allowed.
        let l = CsrLimiter::new(&config(1.0, 0));
        let t = Instant::now();
        assert!(l.acquire_at(t).is_ok());
        let e = l.acquire_at(t).unwrap_err();
        assert_eq!(e.to_string(), "Rate limit reached, try again later");
        assert_eq!(crate::Error::from(e).kind(), crate::ErrorKind::RateLimited);
        // A second later the next token is there.
        assert!(l.acquire_at(t + Duration::from_secs(1)).is_ok());
    }

    #[test]
    fn concurrency_limit_applies_only_when_rate_is_zero() {
        let l = CsrLimiter::new(&config(0.0, 1));
        let held = l.acquire().unwrap();
        assert!(matches!(l.acquire(), Err(CaError::RateLimited)));
        drop(held);
        assert!(l.acquire().is_ok());
        // Default (50/s) ignores the concurrency setting, as Consul does.
        let l = CsrLimiter::new(&config(50.0, 1));
        let _a = l.acquire().unwrap();
        assert!(l.acquire().is_ok());
        // Both zero: unlimited.
        let l = CsrLimiter::new(&config(0.0, 0));
        let _held: Vec<_> = (0..100).map(|_| l.acquire().unwrap()).collect();
    }

    #[test]
    fn reconfiguring_the_rate_starts_a_fresh_bucket() {
        let l = CsrLimiter::new(&config(1.0, 0));
        let _ = l.acquire().unwrap();
        l.reconfigure(&config(0.0, 0));
        assert!(l.acquire().is_ok());
    }
}
