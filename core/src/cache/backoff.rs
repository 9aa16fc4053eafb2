//! The refresh and watch back-off (ARCHITECTURE.md, cache, Consul's `backOffWait`).

use std::time::Duration;

use rand::Rng;

/// Failures tolerated before any back-off (`CacheRefreshBackoffMin`): a few quick retries
/// cover a server restart or a leader election without making callers wait.
pub const REFRESH_BACKOFF_MIN: u32 = 3;

/// The longest back-off before the stagger (`CacheRefreshMaxWait`).
pub const REFRESH_MAX_WAIT: Duration = Duration::from_secs(60);

/// The deterministic part of the back-off after `attempt` consecutive failures: 0 for
/// `attempt ≤ 3`, then `2^(attempt−3)` seconds, capped at one minute.
pub fn backoff_base(attempt: u32) -> Duration {
    if attempt <= REFRESH_BACKOFF_MIN {
        return Duration::ZERO;
    }
    let shift = attempt - REFRESH_BACKOFF_MIN;
    // Past 2^6 s the cap applies anyway; checking first keeps the shift from overflowing.
    if shift >= 6 {
        return REFRESH_MAX_WAIT;
    }
    Duration::from_secs(1 << shift).min(REFRESH_MAX_WAIT)
}

/// The full back-off: [`backoff_base`] plus `stagger(base)`. The cache passes its configured
/// stagger ([`random_stagger`] unless a test pins it).
pub fn backoff_with(attempt: u32, stagger: fn(Duration) -> Duration) -> Duration {
    let base = backoff_base(attempt);
    if base.is_zero() {
        return base;
    }
    base + stagger(base)
}

/// The back-off with Consul's random stagger: uniform in `[base, 2·base)`.
pub fn backoff(attempt: u32) -> Duration {
    backoff_with(attempt, random_stagger)
}

/// A uniformly random duration in `[0, max)` (zero for a zero `max`), so that many entries
/// failing together do not retry together.
pub fn random_stagger(max: Duration) -> Duration {
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::rng().random_range(0..nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_schedule_for_the_first_attempts() {
        let secs: Vec<u64> = (0..=10).map(|n| backoff_base(n).as_secs()).collect();
        //            n: 0  1  2  3  4  5  6   7   8   9   10
        assert_eq!(secs, [0, 0, 0, 0, 2, 4, 8, 16, 32, 60, 60]);
        for n in 0..=10 {
            assert_eq!(backoff_base(n).subsec_nanos(), 0);
        }
    }

    #[test]
    fn base_is_capped_for_huge_attempts() {
        for n in [11, 31, 32, 33, 64, 1000, u32::MAX] {
            assert_eq!(backoff_base(n), REFRESH_MAX_WAIT, "attempt {n}");
        }
    }

    #[test]
    fn random_backoff_stays_in_base_to_twice_base() {
        for n in 0..=10 {
            let base = backoff_base(n);
            for _ in 0..200 {
                let d = backoff(n);
                if base.is_zero() {
                    assert_eq!(d, Duration::ZERO);
                } else {
                    assert!(d >= base && d < base * 2, "attempt {n}: {d:?}");
                }
            }
        }
    }

    #[test]
    fn stagger_is_below_its_bound_and_actually_varies() {
        assert_eq!(random_stagger(Duration::ZERO), Duration::ZERO);
        assert_eq!(random_stagger(Duration::from_nanos(1)), Duration::ZERO);
        let max = Duration::from_secs(2);
        let samples: Vec<Duration> = (0..500).map(|_| random_stagger(max)).collect();
        assert!(samples.iter().all(|d| *d < max));
        // 500 draws from [0, 2 s): both halves are hit unless the generator is broken.
        assert!(samples.iter().any(|d| *d < Duration::from_secs(1)));
        assert!(samples.iter().any(|d| *d >= Duration::from_secs(1)));
    }

    #[test]
    fn injected_stagger_is_added_to_the_base() {
        assert_eq!(backoff_with(3, |_| Duration::from_secs(99)), Duration::ZERO);
        assert_eq!(
            backoff_with(4, |b| b / 2),
            Duration::from_secs(3),
            "2 s base + 1 s stagger"
        );
        assert_eq!(backoff_with(12, |_| Duration::ZERO), REFRESH_MAX_WAIT);
    }
}
