//! `authorize(destination, source)` on the hot-path index with 10, 1,000 and 100,000
//! intentions (mixed exact and wildcard, realistic name lengths), source already parsed.

use std::hint::black_box;

use connect_core::intentions::{
    DefaultPolicy, Intention, IntentionAction, IntentionIndex, ServiceRef, SharedIntentionIndex,
};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

fn service(i: usize) -> String {
    format!("payments-ledger-{i:06}")
}

/// `n` intentions over `n / 4` destinations: per destination three exact sources and one
/// `*` source, plus a few namespace- and cluster-wide wildcards.
fn intentions(n: usize) -> Vec<Intention> {
    let dests = (n / 4).max(1);
    let mut out = Vec::with_capacity(n + 2);
    for d in 0..dests {
        for k in 0..3 {
            let action = if k % 2 == 0 {
                IntentionAction::Allow
            } else {
                IntentionAction::Deny
            };
            out.push(Intention::new(
                &service((d * 7 + k + 1) % (dests * 4)),
                &service(d),
                action,
            ));
        }
        out.push(Intention::new("*", &service(d), IntentionAction::Deny));
    }
    out.truncate(n.saturating_sub(1).max(1));
    out.push(Intention::new("*", "*", IntentionAction::Deny));
    out
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("authorize");
    for n in [10usize, 1_000, 100_000] {
        let index = IntentionIndex::new(intentions(n), DefaultPolicy::acl(IntentionAction::Deny));
        let dests = (n / 4).max(1);
        let dst_name = service(dests / 2);
        let src_name = service(((dests / 2) * 7 + 1) % (dests * 4));
        let dst = ServiceRef::new(&dst_name);
        let src = ServiceRef::new(&src_name);
        let miss_name = service(999_999);
        let miss = ServiceRef::new(&miss_name);
        assert!(index.authorize(&dst, &src).matched.is_some());
        g.bench_with_input(BenchmarkId::new("matched", n), &n, |b, _| {
            b.iter(|| index.authorize(black_box(&dst), black_box(&src)).allowed)
        });
        g.bench_with_input(BenchmarkId::new("wildcard_fallthrough", n), &n, |b, _| {
            b.iter(|| index.authorize(black_box(&dst), black_box(&miss)).allowed)
        });
        let shared = SharedIntentionIndex::new(index);
        g.bench_with_input(BenchmarkId::new("shared_swappable", n), &n, |b, _| {
            b.iter(|| shared.authorize(black_box(&dst), black_box(&src)).allowed)
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
