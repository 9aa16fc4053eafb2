//! The Get algorithm of the agent cache (ARCHITECTURE.md, cache): validity, blocking, timeouts,
//! errors, coalescing, partitioning, bypass, rate limit and metrics.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests fail loudly on any unexpected error"
)]

mod cache_support;

use std::sync::Arc;
use std::time::Duration;

use cache_support::{A, B, Backend, Fake, Req, T0, advance, cache_for, cache_with, secs, settle};
use connect_core::cache::{CacheKey, GetOptions, TypeOptions};
use connect_core::{ErrorKind, ManualClock};
use tokio::time::Instant;

type F = Fake<A>;

fn blocking_get(min_index: u64, timeout: u64) -> GetOptions {
    GetOptions::blocking(min_index, secs(timeout))
}

#[tokio::test(start_paused = true)]
async fn min_index_below_the_entry_index_is_valid_at_or_above_is_not() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");

    let (v, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v5", 5, false));
    assert_eq!(backend.fetches(), 1);

    for min in [0, 1, 4] {
        let (v, meta) = cache.get::<F>(&req, blocking_get(min, 30)).await.unwrap();
        assert_eq!((v.as_str(), meta.index), ("v5", 5));
        assert!(meta.hit, "min_index {min} < 5 is answered from the cache");
    }
    assert_eq!(backend.fetches(), 1);

    // MinIndex == entry index (and above) must wait for newer data: a blocking fetch with the
    // entry's index; the Get's timeout returns the last value.
    let (v, meta) = cache.get::<F>(&req, blocking_get(5, 30)).await.unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v5", 5, false));
    assert_eq!(backend.fetches(), 2);
    let call = backend.calls().pop().unwrap();
    assert_eq!(call.min_index, 5, "the fetch blocks on the entry's index");
    assert_eq!(
        call.timeout,
        Some(Duration::from_secs(600)),
        "query timeout"
    );
    assert!(call.had_last_value);
    assert_eq!(call.last_index, 5);
    // That fetch is still blocking server-side (600 s); a Get above the index joins it.
    let (v, meta) = cache.get::<F>(&req, blocking_get(6, 30)).await.unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v5", 5, false));
    assert_eq!(backend.fetches(), 2);
    let m = cache.metrics();
    assert_eq!(m.get("test-a").unwrap().misses_block, 2);
}

#[tokio::test(start_paused = true)]
async fn types_without_blocking_ignore_min_index() {
    let backend = Backend::new(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    let (_, meta) = cache.get::<F>(&req, blocking_get(99, 1)).await.unwrap();
    assert!(meta.hit);
    assert_eq!(backend.fetches(), 1);
    let call = &backend.calls()[0];
    assert_eq!((call.min_index, call.timeout), (0, None));
}

#[tokio::test(start_paused = true)]
async fn hits_and_misses_are_counted_per_type_and_in_total() {
    let backend = Backend::blocking(5, "v");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let b_backend = Backend::new(1, "b");
    cache
        .register(Fake::<B>::new(&b_backend, TypeOptions::no_refresh()))
        .unwrap();
    let req = Req::new("k");

    cache.get::<F>(&req, GetOptions::default()).await.unwrap(); // miss_new
    cache.get::<F>(&req, GetOptions::default()).await.unwrap(); // hit
    cache.get::<F>(&req, blocking_get(3, 1)).await.unwrap(); // hit
    cache.get::<F>(&req, blocking_get(5, 1)).await.unwrap(); // miss_block (times out)
    cache
        .get::<Fake<B>>(&req, GetOptions::default())
        .await
        .unwrap(); // miss_new on B

    let m = cache.metrics();
    let a = m.get("test-a").unwrap();
    assert_eq!((a.hits, a.misses_new, a.misses_block), (2, 1, 1));
    assert_eq!(a.misses(), 2);
    // The blocking fetch behind the miss_block is still waiting server-side.
    assert_eq!((a.fetch_success, a.fetch_error), (1, 0));
    assert_eq!(a.entries, 1);
    let b = m.get("test-b").unwrap();
    assert_eq!((b.hits, b.misses_new, b.entries), (0, 1, 1));
    assert_eq!(m.total.hits, 2);
    assert_eq!(m.total.misses(), 3);
    assert_eq!(m.total.entries, 2);
}

#[tokio::test(start_paused = true)]
async fn blocking_get_returns_as_soon_as_a_newer_index_arrives() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();

    let start = Instant::now();
    let waiter = {
        let cache = cache.clone();
        let req = req.clone();
        tokio::spawn(async move { cache.get::<F>(&req, blocking_get(5, 300)).await })
    };
    advance(secs(7)).await;
    assert!(!waiter.is_finished(), "nothing newer yet");
    backend.publish(6, "v6");
    let (v, meta) = waiter.await.unwrap().unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v6", 6, false));
    assert!(
        start.elapsed() < secs(8),
        "returned on the change, not the timeout"
    );
}

#[tokio::test(start_paused = true)]
async fn blocking_get_timeout_returns_the_last_value_without_error() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();

    let start = Instant::now();
    let (v, meta) = cache.get::<F>(&req, blocking_get(5, 42)).await.unwrap();
    assert_eq!(start.elapsed(), secs(42));
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v5", 5, false));
}

#[tokio::test(start_paused = true)]
async fn timeout_with_nothing_cached_is_a_timeout_error() {
    let backend = Backend::new(5, "v5");
    backend.edit(|s| s.hold = true);
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let err = cache
        .get::<F>(&Req::new("k"), blocking_get(0, 3))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
}

#[tokio::test(start_paused = true)]
async fn a_fetch_error_reaches_blocked_callers_at_once() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();

    let start = Instant::now();
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.get::<F>(&req, blocking_get(5, 600)).await })
        })
        .collect();
    advance(secs(2)).await;
    backend.fail(ErrorKind::CacheFetch, "rpc error: no leader");
    for w in waiters {
        let err = w.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CacheFetch);
        assert_eq!(err.to_string(), "rpc error: no leader");
    }
    assert!(start.elapsed() < secs(3), "not after the 600 s timeout");

    // The good value is still served to callers that do not need newer data.
    let (v, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v5", 5, true));
    let m = cache.metrics();
    assert_eq!(m.get("test-a").unwrap().fetch_error, 1);
}

#[tokio::test(start_paused = true)]
async fn an_older_error_does_not_fail_a_new_wait() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    backend.fail(ErrorKind::CacheFetch, "boom");
    let revalidate = GetOptions {
        must_revalidate: true,
        ..GetOptions::default()
    };
    // The revalidating fetch fails; as in Consul, the Get then serves the last good value
    // (the error is newer than the value, but the value is still valid for index 0).
    let (v, _) = cache.get::<F>(&req, revalidate).await.unwrap();
    assert_eq!(v.as_str(), "v5");
    assert_eq!(cache.metrics().get("test-a").unwrap().fetch_error, 1);

    // The entry now holds that error; a new blocking Get does not return it but waits for a
    // new fetch, and the success replaces the error.
    backend.heal();
    let waiter = {
        let cache = cache.clone();
        let req = req.clone();
        tokio::spawn(async move { cache.get::<F>(&req, blocking_get(5, 600)).await })
    };
    advance(secs(3)).await;
    assert!(!waiter.is_finished());
    backend.publish(6, "v6");
    let (v, meta) = waiter.await.unwrap().unwrap();
    assert_eq!((v.as_str(), meta.index), ("v6", 6));
    assert_eq!(backend.fetches(), 3);
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_gets_share_one_fetch() {
    let backend = Backend::new(3, "v3");
    backend.edit(|s| s.hold = true);
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");
    let gets: Vec<_> = (0..50)
        .map(|_| {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.get::<F>(&req, GetOptions::default()).await })
        })
        .collect();
    settle().await;
    assert_eq!(cache.metrics().get("test-a").unwrap().misses_new, 50);
    assert_eq!(backend.fetches(), 1, "one fetch in flight");
    backend.edit(|s| s.hold = false);
    for g in gets {
        let (v, meta) = g.await.unwrap().unwrap();
        assert_eq!((v.as_str(), meta.index), ("v3", 3));
    }
    assert_eq!(backend.fetches(), 1);
    assert_eq!(cache.metrics().get("test-a").unwrap().fetch_success, 1);
}

#[tokio::test(start_paused = true)]
async fn empty_keys_bypass_the_cache() {
    let backend = Backend::blocking(4, "v4");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("");
    for _ in 0..3 {
        let (v, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
        assert_eq!((v.as_str(), meta.index, meta.hit), ("v4", 4, false));
    }
    assert_eq!(backend.fetches(), 3);
    // The request's own index and timeout go straight to the fetch.
    cache.get::<F>(&req, blocking_get(2, 9)).await.unwrap();
    let call = backend.calls().pop().unwrap();
    assert_eq!((call.min_index, call.timeout), (2, Some(secs(9))));

    let m = cache.metrics();
    let a = m.get("test-a").unwrap();
    assert_eq!((a.bypass, a.entries, a.hits, a.misses()), (4, 0, 0, 0));
    advance(secs(60)).await;
    assert_eq!(
        backend.fetches(),
        4,
        "no background refresh for uncached requests"
    );
    assert!(
        cache
            .prepopulate::<F>(&req, Arc::new("x".into()), 1)
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn tokens_and_datacenters_partition_the_cache() {
    let backend = Backend::new(1, "v");
    let (cache, _clock) = cache_for(&backend, TypeOptions::no_refresh());
    let a = Req::with_token("k", "token-a");
    let b = Req::with_token("k", "token-b");
    let mut dc2 = Req::with_token("k", "token-a");
    dc2.dc = "dc2".into();
    for req in [&a, &b, &a, &b, &dc2] {
        cache.get::<F>(req, GetOptions::default()).await.unwrap();
    }
    assert_eq!(backend.fetches(), 3);
    let m = cache.metrics();
    assert_eq!(m.get("test-a").unwrap().entries, 3);
    assert_eq!(m.get("test-a").unwrap().hits, 2);
}

#[test]
fn entry_keys_follow_consul_and_do_not_collide_across_tokens() {
    let k = CacheKey::new("dc1", "secret-token", "service:web");
    assert_eq!(
        k.entry_key("connect-ca-leaf"),
        "connect-ca-leaf/dc1/secret-token/service:web"
    );
    // Same joined string, different tokens: the cache indexes by fields, so these are two
    // entries.
    let x = CacheKey::new("dc1", "a/b", "c");
    let y = CacheKey::new("dc1", "a", "b/c");
    assert_eq!(x.entry_key("t"), y.entry_key("t"));
    assert_ne!(x, y);
    assert!(CacheKey::new("dc1", "t", "").is_bypass());
    let dbg = format!("{k:?}");
    assert!(!dbg.contains("secret-token"), "{dbg}");
}

#[tokio::test(start_paused = true)]
async fn joined_string_collisions_stay_separate_entries() {
    let backend = Backend::new(1, "v");
    let (cache, _clock) = cache_for(&backend, TypeOptions::no_refresh());
    let x = Req::with_token("c", "a/b");
    let y = Req::with_token("b/c", "a");
    cache.get::<F>(&x, GetOptions::default()).await.unwrap();
    let (_, meta) = cache.get::<F>(&y, GetOptions::default()).await.unwrap();
    assert!(!meta.hit);
    assert_eq!(backend.fetches(), 2);
}

#[tokio::test(start_paused = true)]
async fn index_zero_is_stored_as_one() {
    let backend = Backend::blocking(0, "v");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(meta.index, 1);
    // The next blocking fetch asks for data newer than 1, so it really blocks.
    let (_, meta) = cache.get::<F>(&req, blocking_get(1, 5)).await.unwrap();
    assert_eq!(meta.index, 1);
    assert_eq!(backend.calls()[1].min_index, 1);
}

#[tokio::test(start_paused = true)]
async fn not_modified_keeps_the_value_and_takes_the_index() {
    let backend = Backend::new(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::no_refresh());
    let req = Req::new("k");
    let (first, _) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    backend.edit(|s| {
        s.not_modified = true;
        s.index = 9;
        s.value = "ignored".into();
    });
    let revalidate = GetOptions {
        must_revalidate: true,
        ..GetOptions::default()
    };
    let (v, meta) = cache.get::<F>(&req, revalidate).await.unwrap();
    assert!(Arc::ptr_eq(&v, &first), "the very same value");
    assert_eq!(meta.index, 9);
    assert_eq!(cache.metrics().get("test-a").unwrap().fetch_not_modified, 1);
}

#[tokio::test(start_paused = true)]
async fn state_is_kept_even_when_a_fetch_returns_no_value() {
    let backend = Backend::new(5, "v5");
    backend.edit(|s| s.no_value = true);
    let (cache, _clock) = cache_for(&backend, TypeOptions::no_refresh());
    let req = Req::new("k");
    // No value: the Get keeps waiting (and re-fetching, each fetch taking 1 s) until its
    // timeout.
    let opts = GetOptions {
        timeout: Some(Duration::from_millis(3500)),
        ..GetOptions::default()
    };
    let err = cache.get::<F>(&req, opts).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Timeout);
    assert_eq!(backend.fetches(), 4);
    backend.edit(|s| s.no_value = false);
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    // Each fetch saw the state the previous one returned (the fake counts fetches in it).
    let states: Vec<u32> = backend.calls().iter().map(|c| c.state).collect();
    assert_eq!(states, (0..states.len() as u32).collect::<Vec<_>>());
}

#[tokio::test(start_paused = true)]
async fn max_age_and_must_revalidate_force_a_fetch_for_plain_types() {
    let backend = Backend::new(5, "v5");
    let (cache, clock) = cache_for(&backend, TypeOptions::no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    clock.advance(secs(30));
    let max_age = |s| GetOptions {
        max_age: Some(secs(s)),
        ..GetOptions::default()
    };
    let (_, meta) = cache.get::<F>(&req, max_age(60)).await.unwrap();
    assert!(meta.hit);
    assert_eq!(meta.age, secs(30));
    let (_, meta) = cache.get::<F>(&req, max_age(10)).await.unwrap();
    assert!(!meta.hit);
    assert_eq!(meta.age, Duration::ZERO);
    assert_eq!(backend.fetches(), 2);

    let revalidate = GetOptions {
        must_revalidate: true,
        ..GetOptions::default()
    };
    let (_, meta) = cache.get::<F>(&req, revalidate).await.unwrap();
    assert!(!meta.hit);
    assert_eq!(backend.fetches(), 3);
    assert!(backend.calls()[2].must_revalidate);
}

#[tokio::test(start_paused = true)]
async fn must_revalidate_is_satisfied_by_a_fetch_in_flight() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    let blocked = {
        let cache = cache.clone();
        let req = req.clone();
        tokio::spawn(async move { cache.get::<F>(&req, blocking_get(5, 600)).await })
    };
    settle().await;
    let revalidate = GetOptions {
        must_revalidate: true,
        ..GetOptions::default()
    };
    let (v, meta) = cache.get::<F>(&req, revalidate).await.unwrap();
    assert_eq!((v.as_str(), meta.hit), ("v5", true));
    assert_eq!(
        backend.fetches(),
        2,
        "joined the blocking fetch, started none"
    );
    blocked.abort();
}

#[tokio::test(start_paused = true)]
async fn refresh_types_ignore_max_age_and_report_age_only_after_lost_contact() {
    let backend = Backend::blocking(5, "v5");
    let (cache, clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    clock.advance(secs(3600));
    let opts = GetOptions {
        max_age: Some(secs(1)),
        must_revalidate: true,
        ..GetOptions::default()
    };
    let (_, meta) = cache.get::<F>(&req, opts).await.unwrap();
    assert!(meta.hit);
    assert_eq!(
        meta.age,
        Duration::ZERO,
        "background refresh keeps it current"
    );

    // Refresh fails: the value stays servable but its age counts from the first failure.
    backend.fail(ErrorKind::CacheFetch, "no leader");
    settle().await;
    clock.advance(secs(20));
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert!(meta.hit);
    assert_eq!(meta.age, secs(20));

    // Healed, but the next blocking refresh is still waiting: not yet proven connected.
    backend.heal();
    advance(secs(5)).await;
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(meta.age, secs(20));
    // New data arrives: contact is back, age is zero.
    backend.publish(6, "v6");
    settle().await;
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(meta.age, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_blocking_refresh_alive_for_31s_clears_lost_contact() {
    let backend = Backend::blocking(5, "v5");
    let (cache, clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    // One failure marks lost contact; the next blocking fetch then just waits.
    backend.fail(ErrorKind::CacheFetch, "no leader");
    settle().await;
    backend.heal();
    settle().await;
    clock.advance(secs(10));
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(meta.age, secs(10));
    // The refresh loop is backing off (attempt 4: 2 s), then starts a blocking fetch that
    // the server keeps open: 31 s later that counts as contact.
    advance(secs(2 + 30)).await;
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(meta.age, secs(10), "only 30 s into the blocking query");
    advance(secs(2)).await;
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(
        meta.age,
        Duration::ZERO,
        "the blocking query has been alive 31 s"
    );
}

#[tokio::test(start_paused = true)]
async fn prepopulated_values_are_served_without_a_fetch() {
    let backend = Backend::blocking(5, "fetched");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("k");
    cache
        .prepopulate::<F>(&req, Arc::new("seeded".into()), 0)
        .unwrap();
    let (v, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("seeded", 1, true));
    assert_eq!(backend.fetches(), 0);
    // A Get for newer data starts fetching (and, for this type, refreshing).
    let (v, meta) = cache.get::<F>(&req, blocking_get(1, 5)).await.unwrap();
    assert_eq!((v.as_str(), meta.index), ("fetched", 5));
    assert_eq!(backend.calls()[0].min_index, 1);
}

#[tokio::test(start_paused = true)]
async fn prepopulate_wakes_blocked_gets() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    let waiter = {
        let cache = cache.clone();
        let req = req.clone();
        tokio::spawn(async move { cache.get::<F>(&req, blocking_get(5, 600)).await })
    };
    settle().await;
    cache
        .prepopulate::<F>(&req, Arc::new("v7".into()), 7)
        .unwrap();
    let (v, meta) = waiter.await.unwrap().unwrap();
    assert_eq!((v.as_str(), meta.index), ("v7", 7));
}

#[tokio::test(start_paused = true)]
async fn the_entry_fetch_rate_limit_is_enforced() {
    let backend = Backend::new(1, "v");
    let clock = ManualClock::new(T0);
    let cache = cache_with(&clock, |o| {
        o.entry_fetch_rate = Some(1.0);
        o.entry_fetch_max_burst = 2;
    });
    cache
        .register(F::new(&backend, TypeOptions::no_refresh()))
        .unwrap();
    let req = Req::new("k");
    let revalidate = GetOptions {
        must_revalidate: true,
        ..GetOptions::default()
    };
    let start = Instant::now();
    for _ in 0..5 {
        cache.get::<F>(&req, revalidate).await.unwrap();
    }
    let offsets: Vec<Duration> = backend.calls().iter().map(|c| c.at - start).collect();
    assert_eq!(offsets, [0, 0, 1, 2, 3].map(secs), "burst of 2, then 1/s");

    // Another entry has its own bucket.
    let t = Instant::now();
    cache
        .get::<F>(&Req::new("other"), revalidate)
        .await
        .unwrap();
    assert_eq!(backend.calls().last().unwrap().at, t);
}

#[tokio::test(start_paused = true)]
async fn invalid_rate_limits_are_rejected() {
    let clock = ManualClock::new(T0);
    for rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let mut opts = connect_core::cache::CacheOptions::with_clock(Arc::new(clock.clone()));
        opts.entry_fetch_rate = Some(rate);
        let err =
            connect_core::cache::Cache::new(tokio::runtime::Handle::current(), opts).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParameter, "rate {rate}");
    }
}

#[tokio::test(start_paused = true)]
async fn unregistered_and_duplicate_types_are_rejected() {
    let backend = Backend::new(1, "v");
    let (cache, _clock) = cache_for(&backend, TypeOptions::no_refresh());
    let err = cache
        .get::<Fake<B>>(&Req::new("k"), GetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
    let err = cache
        .register(F::new(&backend, TypeOptions::no_refresh()))
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);
}

#[tokio::test(start_paused = true)]
async fn bytes_follow_the_values_held() {
    let backend = Backend::new(1, "12345");
    let (cache, _clock) = cache_for(&backend, TypeOptions::no_refresh());
    cache
        .get::<F>(&Req::new("a"), GetOptions::default())
        .await
        .unwrap();
    backend.publish(2, "123");
    cache
        .get::<F>(&Req::new("b"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(cache.metrics().get("test-a").unwrap().bytes, 8);
    let revalidate = GetOptions {
        must_revalidate: true,
        ..GetOptions::default()
    };
    cache.get::<F>(&Req::new("a"), revalidate).await.unwrap();
    assert_eq!(cache.metrics().get("test-a").unwrap().bytes, 6);
    cache.close();
    assert_eq!(cache.metrics().total.bytes, 0);
}

#[tokio::test(start_paused = true)]
async fn prometheus_text_carries_the_counters() {
    let backend = Backend::new(1, "v");
    let (cache, _clock) = cache_for(&backend, TypeOptions::no_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    cache
        .get::<F>(&Req::new(""), GetOptions::default())
        .await
        .unwrap();
    let text = cache.prometheus();
    for line in [
        "# TYPE libconnect_cache_hit_total counter",
        "libconnect_cache_hit_total{type=\"test-a\"} 1",
        "libconnect_cache_miss_new_total{type=\"test-a\"} 1",
        "libconnect_cache_miss_block_total{type=\"test-a\"} 0",
        "libconnect_cache_bypass_total{type=\"test-a\"} 1",
        "libconnect_cache_fetch_success_total{type=\"test-a\",result_not_modified=\"false\"} 1",
        "libconnect_cache_fetch_error_total{type=\"test-a\",fatal=\"false\"} 0",
        "libconnect_cache_evict_expired_total{type=\"test-a\"} 0",
        "libconnect_cache_entries{type=\"test-a\"} 1",
        "libconnect_cache_bytes{type=\"test-a\"} 1",
        "libconnect_cache_background_tasks 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn get_is_touch_even_when_invalid_and_t0_is_the_clock() {
    // The manual clock drives ages: nothing here sleeps in real time.
    let backend = Backend::new(1, "v");
    let (cache, clock) = cache_for(&backend, TypeOptions::no_refresh());
    assert_eq!(clock_now(&clock), T0);
    cache
        .get::<F>(&Req::new("k"), GetOptions::default())
        .await
        .unwrap();
    clock.advance(secs(5));
    let (_, meta) = cache
        .get::<F>(&Req::new("k"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(meta.age, secs(5));
}

fn clock_now(c: &ManualClock) -> time::OffsetDateTime {
    use connect_core::Clock;
    c.now()
}

#[tokio::test(start_paused = true)]
async fn a_panicking_fetch_fails_its_waiters_instead_of_hanging_them() {
    let backend = Backend::new(1, "v1");
    backend.edit(|s| s.panic = true);
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("k");
    let err = cache
        .get::<F>(&req, GetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Internal);
    assert_eq!(cache.metrics().background_tasks, 1, "only the expiry loop");
    // The entry is usable again once the type behaves.
    backend.edit(|s| s.panic = false);
    let (v, _) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(v.as_str(), "v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_concurrent_gets_of_a_cold_key_make_one_fetch() {
    let backend = Backend::blocking(3, "v3");
    backend.edit(|s| s.hold = true);
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("k");
    let gets: Vec<_> = (0..1000)
        .map(|_| {
            let cache = cache.clone();
            let req = req.clone();
            tokio::spawn(async move { cache.get::<F>(&req, GetOptions::default()).await })
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cache.metrics().total.misses_new < 1000 {
        assert!(
            std::time::Instant::now() < deadline,
            "Gets did not all start"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    backend.edit(|s| s.hold = false);
    for g in gets {
        assert_eq!(g.await.unwrap().unwrap().1.index, 3);
    }
    assert_eq!(
        backend.calls().iter().filter(|c| c.min_index == 0).count(),
        1
    );
    cache.shutdown().await;
    assert_eq!(cache.metrics().background_tasks, 0);
}
