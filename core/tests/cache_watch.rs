//! Watching cache entries (ARCHITECTURE.md, cache): `Cache::notify` / `Cache::watch`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "integration tests fail loudly on any unexpected error"
)]

mod cache_support;

use std::time::Duration;

use cache_support::{A, Backend, Fake, Req, advance, cache_for, secs, settle};
use connect_core::ErrorKind;
use connect_core::cache::{GetOptions, TypeOptions, UpdateEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;

type F = Fake<A>;

fn drain(rx: &mut mpsc::Receiver<UpdateEvent<String>>) -> Vec<UpdateEvent<String>> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn summary(events: &[UpdateEvent<String>]) -> Vec<(u64, String)> {
    events
        .iter()
        .map(|e| {
            let v = match (&e.value, &e.error) {
                (Some(v), None) => v.to_string(),
                (None, Some(err)) => format!("error:{}", err.kind()),
                other => panic!("malformed event {other:?}"),
            };
            (e.index, v)
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn notify_delivers_the_first_result_and_only_higher_indexes() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let (tx, mut rx) = mpsc::channel(16);
    // Each blocking Get gives up after 30 s and returns the same index: not an event.
    let opts = GetOptions {
        timeout: Some(secs(30)),
        ..GetOptions::default()
    };
    cache.notify::<F>(Req::new("k"), opts, tx).unwrap();
    settle().await;
    backend.publish(7, "v7");
    settle().await;
    advance(secs(95)).await;
    // An older index (a server that went back) is not news either.
    backend.publish(6, "v6-older");
    advance(secs(95)).await;
    backend.publish(9, "v9");
    settle().await;
    assert_eq!(
        summary(&drain(&mut rx)),
        [(5, "v5".into()), (7, "v7".into()), (9, "v9".into())]
    );
}

#[tokio::test(start_paused = true)]
async fn watch_sees_background_refresh() {
    let backend = Backend::blocking(1, "v1");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let mut rx = cache
        .watch::<F>(Req::new("k"), GetOptions::default())
        .unwrap();
    for i in 2..=4 {
        settle().await;
        backend.publish(i, &format!("v{i}"));
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(rx.recv().await.unwrap());
    }
    assert_eq!(
        got.iter().map(|e| e.index).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    // Refresh and watcher share the entry: one fetch per index.
    assert_eq!(
        backend.fetches(),
        5,
        "indexes 0,1,2,3 answered + one blocking on 4"
    );
}

#[tokio::test(start_paused = true)]
async fn errors_are_reported_until_the_first_value_and_back_off() {
    let backend = Backend::blocking(5, "v5");
    backend.fail(ErrorKind::CacheFetch, "no leader");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let start = Instant::now();
    let mut rx = cache
        .watch::<F>(Req::new("k"), GetOptions::default())
        .unwrap();
    let mut times = Vec::new();
    while times.len() < 7 {
        let e = rx.recv().await.unwrap();
        assert_eq!(e.error.as_ref().unwrap().kind(), ErrorKind::CacheFetch);
        assert!(e.value.is_none());
        times.push((Instant::now() - start).as_secs());
    }
    // Back-off after failures 1..6 (stagger pinned to 0): 0, 0, 0, 2, 4, 8 s.
    assert_eq!(times, [0, 0, 0, 0, 2, 6, 14]);
    backend.heal();
    let e = rx.recv().await.unwrap();
    assert_eq!(
        (e.index, e.value.as_deref().map(String::as_str)),
        (5, Some("v5"))
    );
    assert!(e.error.is_none());

    // Errors after a value at an unchanged index are not delivered.
    backend.fail(ErrorKind::CacheFetch, "no leader");
    advance(secs(120)).await;
    assert!(drain(&mut rx).is_empty());
    backend.heal();
    backend.publish(6, "v6");
    advance(secs(61)).await;
    assert_eq!(summary(&drain(&mut rx)), [(6, "v6".into())]);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_receiver_ends_the_watch() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_refresh());
    let mut rx = cache
        .watch::<F>(Req::new("k"), GetOptions::default())
        .unwrap();
    rx.recv().await.unwrap();
    settle().await;
    let before = cache.metrics().background_tasks;
    drop(rx);
    settle().await;
    assert_eq!(cache.metrics().background_tasks, before - 1);
}

#[tokio::test(start_paused = true)]
async fn closing_the_cache_ends_the_watch() {
    let backend = Backend::blocking(5, "v5");
    let (cache, _clock) = cache_for(&backend, TypeOptions::blocking_no_refresh());
    let mut rx = cache
        .watch::<F>(Req::new("k"), GetOptions::default())
        .unwrap();
    assert_eq!(rx.recv().await.unwrap().index, 5);
    cache.close();
    assert!(rx.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn polling_types_need_max_age_and_report_changes() {
    let backend = Backend::new(1, "v1");
    let (cache, clock) = cache_for(&backend, TypeOptions::no_refresh());
    let err = cache
        .watch::<F>(Req::new("k"), GetOptions::default())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidParameter);

    let opts = GetOptions {
        max_age: Some(secs(10)),
        ..GetOptions::default()
    };
    let mut rx = cache.watch::<F>(Req::new("k"), opts).unwrap();
    assert_eq!(rx.recv().await.unwrap().index, 1);
    // Ages come from the injected clock and sleeps from tokio time: move both.
    let step = |n: u64| {
        let clock = clock.clone();
        async move {
            for _ in 0..n {
                clock.advance(Duration::from_secs(1));
                advance(Duration::from_secs(1)).await;
            }
        }
    };
    step(25).await;
    assert!(drain(&mut rx).is_empty(), "same data, nothing to report");
    let polls = backend.fetches();
    assert!((2..=4).contains(&polls), "one fetch per max_age: {polls}");
    backend.publish(2, "v2");
    step(12).await;
    assert_eq!(summary(&drain(&mut rx)), [(2, "v2".into())]);
}
