//! Background refresh, back-off, idle eviction and shutdown of the agent cache
//! (ARCHITECTURE.md, cache).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests fail loudly on any unexpected error"
)]

mod cache_support;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cache_support::{A, Backend, Fake, Req, T0, advance, cache_for, cache_with, secs, settle};
use connect_core::cache::{GetOptions, TypeOptions, backoff_base, random_stagger};
use connect_core::{ErrorKind, ManualClock};
use tokio::time::Instant;

type F = Fake<A>;

/// Gaps between consecutive fetches, in whole seconds.
fn gaps(backend: &Backend) -> Vec<Duration> {
    let calls = backend.calls();
    calls.windows(2).map(|w| w[1].at - w[0].at).collect()
}

fn polling_refresh(every: u64) -> TypeOptions {
    TypeOptions {
        refresh: true,
        refresh_timer: secs(every),
        ..TypeOptions::default()
    }
}

fn tasks(cache: &connect_core::cache::Cache) -> u64 {
    cache.metrics().background_tasks
}

#[tokio::test(start_paused = true)]
async fn refresh_fetches_again_after_each_refresh_timer() {
    let backend = Backend::new(1, "v1");
    let (cache, _clock) = cache_for(&backend, polling_refresh(10));
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    advance(secs(35)).await;
    assert_eq!(backend.fetches(), 4);
    assert_eq!(gaps(&backend), [secs(10); 3]);

    // New data shows up in the cache without any Get asking for it.
    backend.publish(2, "v2");
    advance(secs(10)).await;
    let (v, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v2", 2, true));
    assert_eq!(cache.metrics().get("test-a").unwrap().misses(), 1);
}

#[tokio::test(start_paused = true)]
async fn blocking_refresh_follows_the_index() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    settle().await;
    for (i, v) in [(6, "v6"), (9, "v9")] {
        backend.publish(i, v);
        settle().await;
    }
    let (v, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v9", 9, true));
    let mins: Vec<u64> = backend.calls().iter().map(|c| c.min_index).collect();
    assert_eq!(mins, [0, 5, 6, 9], "each refresh blocks on the last index");
    assert!(
        backend.calls()[1..]
            .iter()
            .all(|c| c.timeout == Some(secs(600)))
    );
    // A blocking Get for newer data joins the running refresh instead of starting a fetch.
    let waiter = {
        let cache = cache.clone();
        let req = req.clone();
        tokio::spawn(async move {
            cache
                .get::<F>(&req, GetOptions::blocking(9, secs(60)))
                .await
        })
    };
    settle().await;
    backend.publish(10, "v10");
    let (v, _) = waiter.await.unwrap().unwrap();
    assert_eq!(v.as_str(), "v10");
    assert_eq!(backend.fetches(), 5);
}

/// After `n` consecutive failures the loop waits `backoff_base(n)` (stagger pinned to 0).
#[tokio::test(start_paused = true)]
async fn errors_back_off_on_the_exact_schedule() {
    let backend = Backend::blocking(5, "v5");
    backend.fail(ErrorKind::CacheFetch, "no leader");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("k");
    let err = cache
        .get::<F>(&req, GetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CacheFetch);
    advance(secs(250)).await;
    let expected: Vec<Duration> = (1..=11).map(backoff_base).collect();
    assert_eq!(
        expected.iter().map(Duration::as_secs).collect::<Vec<_>>(),
        [0, 0, 0, 2, 4, 8, 16, 32, 60, 60, 60]
    );
    assert_eq!(gaps(&backend), expected);

    // One success resets the attempt counter: the next failure retries at once again.
    backend.heal();
    advance(secs(60)).await;
    let healed_at = backend.fetches();
    backend.fail(ErrorKind::CacheFetch, "no leader again");
    settle().await;
    let calls = backend.calls();
    let after: Vec<Duration> = calls[healed_at - 1..]
        .windows(2)
        .map(|w| w[1].at - w[0].at)
        .collect();
    assert!(
        after.len() >= 3 && after[1..3].iter().all(|d| d.is_zero()),
        "{after:?}"
    );
    let m = cache.metrics();
    assert!(m.get("test-a").unwrap().fetch_error >= 12);
}

#[tokio::test(start_paused = true)]
async fn random_stagger_keeps_each_wait_between_base_and_twice_base() {
    let backend = Backend::blocking(5, "v5");
    backend.fail(ErrorKind::CacheFetch, "no leader");
    let clock = ManualClock::new(T0);
    let cache = cache_with(&clock, |o| o.stagger = random_stagger);
    cache
        .register(F::new(&backend, TypeOptions::blocking_refresh()))
        .unwrap();
    let _ = cache.get::<F>(&Req::new("k"), GetOptions::default()).await;
    advance(secs(600)).await;
    let g = gaps(&backend);
    assert!(g.len() >= 10, "{g:?}");
    for (i, gap) in g.iter().enumerate() {
        let base = backoff_base(i as u32 + 1);
        if base.is_zero() {
            assert!(gap.is_zero(), "attempt {}: {gap:?}", i + 1);
        } else {
            // The stagger itself is below `base` (unit-tested exactly); tokio's timer rounds
            // a deadline up to its next millisecond, hence the 1 ms of slack.
            assert!(
                *gap >= base && *gap < base * 2 + Duration::from_millis(1),
                "attempt {}: {gap:?}",
                i + 1
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_success_with_index_zero_backs_off_like_a_failure() {
    // Not a blocking source: it answers index 0 at once, every time.
    let backend = Backend::new(0, "v");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let (_, meta) = cache
        .get::<F>(&Req::new("k"), GetOptions::default())
        .await
        .unwrap();
    assert_eq!(meta.index, 1, "stored as 1");
    advance(secs(40)).await;
    let expected: Vec<Duration> = (1..=7).map(backoff_base).collect();
    assert_eq!(gaps(&backend), expected, "0,0,0,2,4,8,16 s — no hot loop");
    let m = cache.metrics();
    let a = m.get("test-a").unwrap();
    assert_eq!((a.fetch_success, a.fetch_error), (8, 0));
}

#[tokio::test(start_paused = true)]
async fn acl_not_found_stops_refresh_for_that_entry() {
    let backend = Backend::blocking(1, "v1");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    settle().await;
    assert_eq!(backend.fetches(), 2, "the first refresh is blocking");
    assert_eq!(tasks(&cache), 2, "the expiry loop and one refresh loop");

    backend.fail(ErrorKind::AclNotFound, "ACL not found");
    settle().await;
    assert_eq!(
        backend.fetches(),
        2,
        "the blocked refresh failed; none after it"
    );
    assert_eq!(tasks(&cache), 1, "the refresh loop ended");
    advance(secs(3600)).await;
    assert_eq!(backend.fetches(), 2);
    let m = cache.metrics();
    let a = m.get("test-a").unwrap();
    assert_eq!((a.fetch_error, a.fetch_error_fatal), (1, 1));
    // The last good value is still served.
    let (v, _) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(v.as_str(), "v1");

    // Other entries are unaffected by it.
    backend.heal();
    cache
        .get::<F>(&Req::new("other"), GetOptions::default())
        .await
        .unwrap();
    settle().await;
    assert_eq!(tasks(&cache), 2);

    // A Get that needs newer data fetches again, and a success resumes refresh.
    let (v, meta) = cache
        .get::<F>(&req, GetOptions::blocking(1, secs(10)))
        .await
        .unwrap();
    assert_eq!((v.as_str(), meta.index), ("v1", 1), "timed out, same data");
    assert_eq!(tasks(&cache), 3);
    backend.publish(2, "v2");
    settle().await;
    let (v, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!((v.as_str(), meta.index, meta.hit), ("v2", 2, true));
    assert_eq!(tasks(&cache), 3, "refreshing again");
}

/// Log lines written on this thread (the paused-time test runtime runs every task here)
/// while the returned guards live.
fn capture_logs() -> (
    Arc<Mutex<Vec<u8>>>,
    (tracing::subscriber::DefaultGuard, tracing::Dispatch),
) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let buf = Arc::clone(&buf);
        move || Captured(Arc::clone(&buf))
    };
    let subscriber = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::INFO)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    // With a single dispatcher registered, tracing decides whether a log line is wanted from
    // the subscriber of whichever thread reaches it first, and caches that for the process:
    // a parallel test without one would silence these lines (tokio-rs/tracing#3611). A
    // second dispatcher makes it ask every registered one.
    let second = tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default());
    (buf, (guard, second))
}

struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn log_lines(buf: &Mutex<Vec<u8>>) -> Vec<String> {
    String::from_utf8(buf.lock().unwrap().clone())
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

/// An outage is one warning however many retries it takes, and its end one info line,
/// whichever way contact comes back; the entry's ACL token is in none of them.
#[tokio::test(start_paused = true)]
async fn an_outage_logs_one_warning_and_one_recovery_without_the_token() {
    const TOKEN: &str = "secret-acl-token-5f0c";
    let (logs, _guard) = capture_logs();
    let backend = Backend::blocking(5, "v5");
    let (cache, clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let req = Req::with_token("k", TOKEN);
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    settle().await;
    let warnings = || {
        log_lines(&logs)
            .into_iter()
            .filter(|l| l.contains("WARN") && l.contains("lost contact"))
            .count()
    };
    let recoveries = || {
        log_lines(&logs)
            .into_iter()
            .filter(|l| l.contains("INFO") && l.contains("reachable again"))
            .count()
    };

    // First outage: many retries, one warning that names the cause.
    backend.fail(ErrorKind::CacheFetch, "no cluster leader");
    advance(secs(120)).await;
    clock.advance(secs(10));
    let retried = backend.fetches();
    assert!(retried >= 8, "{retried} fetches");
    assert_eq!((warnings(), recoveries()), (1, 0));
    assert!(
        log_lines(&logs)
            .iter()
            .any(|l| l.contains("WARN") && l.contains("no cluster leader"))
    );

    // Contact returns with nothing new to fetch: the blocking refresh held open for 31 s is
    // the proof, and it is announced once. Retries ran at 0, 0, 0, 2, 6, 14, 30 and 62 s
    // (stagger pinned to 0), so the next one starts at 122 s and has lasted 31 s at 153 s.
    backend.heal();
    advance(secs(2 + 30)).await;
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(meta.age, secs(10));
    assert_eq!(recoveries(), 0, "the blocking query is not 31 s old yet");
    advance(secs(2)).await;
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!(meta.age, Duration::ZERO);
    assert_eq!(
        (warnings(), recoveries()),
        (1, 1),
        "{:#?}",
        log_lines(&logs)
    );

    // Second outage, ended by new data: again one of each. No fetch has succeeded since the
    // first one, so the retries keep the longest back-off (60 s).
    backend.fail(ErrorKind::CacheFetch, "no cluster leader");
    advance(secs(130)).await;
    assert!(backend.fetches() >= retried + 3, "{}", backend.fetches());
    assert_eq!((warnings(), recoveries()), (2, 1));
    backend.heal();
    backend.publish(6, "v6");
    advance(secs(61)).await;
    let (v, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert_eq!((v.as_str(), meta.age), ("v6", Duration::ZERO));
    assert_eq!((warnings(), recoveries()), (2, 2));

    let lines = log_lines(&logs);
    assert!(lines.iter().all(|l| !l.contains(TOKEN)), "{lines:#?}");
    assert!(lines.iter().all(|l| !l.contains("secret")), "{lines:#?}");
}

#[tokio::test(start_paused = true)]
async fn idle_entries_are_evicted_after_72h_and_stop_refreshing() {
    let backend = Backend::new(1, "value");
    let (cache, clock) = cache_for(&backend, polling_refresh(10));
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    let m = cache.metrics();
    assert_eq!((m.total.entries, m.total.bytes), (1, 5));

    // Reads reset the TTL.
    clock.advance(secs(71 * 3600));
    advance(secs(2)).await;
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    clock.advance(secs(71 * 3600));
    advance(secs(2)).await;
    assert_eq!(cache.metrics().total.entries, 1, "touched 71 h ago");

    clock.advance(secs(3600 + 1));
    advance(secs(2)).await;
    let m = cache.metrics();
    let a = m.get("test-a").unwrap();
    assert_eq!((a.evictions, a.entries, a.bytes), (1, 0, 0));
    assert_eq!(m.background_tasks, 1, "only the expiry loop is left");
    let fetches = backend.fetches();
    advance(secs(600)).await;
    assert_eq!(
        backend.fetches(),
        fetches,
        "refresh stopped with the eviction"
    );

    // A later Get starts over.
    let (_, meta) = cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    assert!(!meta.hit);
    assert_eq!(cache.metrics().get("test-a").unwrap().misses_new, 2);
}

#[tokio::test(start_paused = true)]
async fn eviction_cancels_a_blocking_refresh_in_flight() {
    let backend = Backend::blocking(5, "v5");
    let (cache, clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    cache
        .get::<F>(&Req::new("k"), GetOptions::default())
        .await
        .unwrap();
    settle().await;
    assert_eq!(backend.live_fetches.load(Ordering::SeqCst), 1);
    clock.advance(secs(72 * 3600 + 1));
    advance(secs(2)).await;
    assert_eq!(cache.metrics().total.evictions, 1);
    assert_eq!(backend.live_fetches.load(Ordering::SeqCst), 0);
    assert_eq!(tasks(&cache), 1);
}

#[tokio::test(start_paused = true)]
async fn ttl_is_per_type_and_touched_by_failing_gets() {
    let backend = Backend::blocking(5, "v5");
    let opts = TypeOptions {
        last_get_ttl: secs(3600),
        ..TypeOptions::blocking_no_refresh()
    };
    let (cache, clock) = cache_for(&backend, opts);
    let req = Req::new("k");
    cache.get::<F>(&req, GetOptions::default()).await.unwrap();
    clock.advance(secs(59 * 60));
    backend.fail(ErrorKind::CacheFetch, "down");
    let err = cache
        .get::<F>(&req, GetOptions::blocking(5, secs(30)))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CacheFetch);
    clock.advance(secs(59 * 60));
    advance(secs(2)).await;
    assert_eq!(
        cache.metrics().total.entries,
        1,
        "the failed Get counted as use"
    );
    clock.advance(secs(2 * 60));
    advance(secs(2)).await;
    assert_eq!(cache.metrics().total.entries, 0);
}

#[tokio::test(start_paused = true)]
async fn close_stops_every_task_and_later_calls_fail_closed() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    for k in ["a", "b"] {
        cache
            .get::<F>(&Req::new(k), GetOptions::default())
            .await
            .unwrap();
    }
    let _watch = cache
        .watch::<F>(Req::new("a"), GetOptions::default())
        .unwrap();
    let blocked = {
        let cache = cache.clone();
        tokio::spawn(async move {
            cache
                .get::<F>(&Req::new("a"), GetOptions::blocking(5, secs(600)))
                .await
        })
    };
    settle().await;
    assert_eq!(
        tasks(&cache),
        4,
        "expiry loop, two refresh loops, one watcher"
    );
    assert_eq!(backend.live_fetches.load(Ordering::SeqCst), 2);

    cache.close();
    cache.close(); // idempotent
    assert!(cache.is_closed());
    let err = blocked.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    let start = Instant::now();
    cache.shutdown().await;
    assert!(start.elapsed() < secs(1));
    assert_eq!(tasks(&cache), 0);
    assert_eq!(backend.live_fetches.load(Ordering::SeqCst), 0);
    let fetches = backend.fetches();
    advance(secs(3600)).await;
    assert_eq!(backend.fetches(), fetches);

    let req = Req::new("a");
    let err = cache
        .get::<F>(&req, GetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    let err = cache
        .get::<F>(&Req::new(""), GetOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Closed);
    assert_eq!(
        cache
            .prepopulate::<F>(&req, Arc::new("x".into()), 1)
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        cache
            .watch::<F>(req.clone(), GetOptions::default())
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
    assert_eq!(
        cache
            .register(Fake::<cache_support::B>::new(
                &backend,
                TypeOptions::no_refresh()
            ))
            .unwrap_err()
            .kind(),
        ErrorKind::Closed
    );
    assert_eq!(cache.metrics().total.entries, 0);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_last_handle_stops_every_task() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    cache
        .get::<F>(&Req::new("k"), GetOptions::default())
        .await
        .unwrap();
    let mut rx = cache
        .watch::<F>(Req::new("k"), GetOptions::default())
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().index, 5);

    let clone = cache.clone();
    drop(cache);
    settle().await;
    assert!(!clone.is_closed(), "another handle is alive");
    backend.publish(6, "v6");
    assert_eq!(
        rx.recv().await.unwrap().index,
        6,
        "still refreshing and watching"
    );

    drop(clone);
    settle().await;
    // The type is owned by the cache's shared state, which every task holds: it is dropped
    // only once the last task has ended.
    assert_eq!(backend.types_dropped.load(Ordering::SeqCst), 1);
    assert_eq!(backend.live_fetches.load(Ordering::SeqCst), 0);
    assert!(rx.recv().await.is_none(), "the watcher ended");
}
