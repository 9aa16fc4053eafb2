//! The agent cache (Consul docs: Agent Caching): what makes the hot path in-process memory.
//!
//! A [`Cache`] holds typed entries — CA roots, leaf certificates, intention matches, health —
//! keyed by type, datacenter, ACL token and a type-specific key ([`CacheKey`]). Each kind of
//! data is a [`CacheType`]: its fetch function and its [`TypeOptions`]. The cache adds what
//! Consul's agent cache adds on top of a fetch:
//!
//! * blocking Gets with an index, whose timeout returns the last value without an error, and
//!   whose fetch errors reach waiting callers at once ([`Cache::get`], Consul docs: Blocking
//!   Queries);
//! * one fetch per entry however many callers wait (request coalescing, ARCHITECTURE.md, cache),
//!   and a per-entry fetch rate limit ([`CacheOptions::entry_fetch_rate`]);
//! * background refresh with blocking queries and exponential back-off ([`backoff`],
//!   ARCHITECTURE.md, cache), stopped by eviction, close, or an ACL-not-found error;
//! * idle eviction 72 h after the last Get (Consul docs: Agent Caching) and [`Cache::prepopulate`];
//! * watches that deliver every newer index ([`Cache::notify`], [`Cache::watch`], ARCHITECTURE.md,
//!   cache);
//! * metrics per type and in total, also as Prometheus text ([`Cache::metrics`],
//!   [`Cache::prometheus`], ARCHITECTURE.md, cache).
//!
//! Time: TTLs and ages read the injected [`Clock`](crate::Clock); waits that are real waits
//! (blocking-Get timeouts, back-off, the rate limiter) use tokio time, so tests drive the
//! first with a [`ManualClock`](crate::ManualClock) and the second with
//! `tokio::time::pause`.

mod backoff;
mod metrics;
mod notify;
mod ratelimit;
mod store;
mod types;

pub use backoff::{
    REFRESH_BACKOFF_MIN, REFRESH_MAX_WAIT, backoff, backoff_base, backoff_with, random_stagger,
};
pub use metrics::{MetricsSnapshot, TypeMetrics};
pub use notify::WATCH_BUFFER;
pub use store::{Cache, CacheOptions};
pub use types::{
    CacheKey, CacheRequest, CacheType, DEFAULT_LAST_GET_TTL, DEFAULT_QUERY_TIMEOUT, FetchOptions,
    FetchResult, GetOptions, ResultMeta, TypeOptions, UpdateEvent,
};
