//! Cache metrics (ARCHITECTURE.md, cache), readable from code and as Prometheus text.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one type. Relaxed atomics: each number is exact, but a snapshot is not
/// one atomic cut across them, which no consumer of metrics needs.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) hits: AtomicU64,
    pub(crate) misses_new: AtomicU64,
    pub(crate) misses_block: AtomicU64,
    pub(crate) fetch_success: AtomicU64,
    pub(crate) fetch_not_modified: AtomicU64,
    pub(crate) fetch_error: AtomicU64,
    pub(crate) fetch_error_fatal: AtomicU64,
    pub(crate) bypass: AtomicU64,
    pub(crate) evictions: AtomicU64,
    pub(crate) entries: AtomicU64,
    pub(crate) bytes: AtomicU64,
}

/// Adds one to a counter.
pub(crate) fn incr(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Moves a gauge by `delta`, never below zero.
pub(crate) fn adjust(g: &AtomicU64, delta: i64) {
    let step = delta.unsigned_abs();
    if delta >= 0 {
        g.fetch_add(step, Ordering::Relaxed);
    } else {
        // Gauges are only moved under their shard's lock, so this never races with itself;
        // saturating keeps a bookkeeping slip from wrapping to 2^64.
        let _ = g.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(step))
        });
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> TypeMetrics {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TypeMetrics {
            hits: r(&self.hits),
            misses_new: r(&self.misses_new),
            misses_block: r(&self.misses_block),
            fetch_success: r(&self.fetch_success),
            fetch_not_modified: r(&self.fetch_not_modified),
            fetch_error: r(&self.fetch_error),
            fetch_error_fatal: r(&self.fetch_error_fatal),
            bypass: r(&self.bypass),
            evictions: r(&self.evictions),
            entries: r(&self.entries),
            bytes: r(&self.bytes),
        }
    }
}

/// The metrics of one cache type (or, in [`MetricsSnapshot::total`], of all of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct TypeMetrics {
    /// Gets answered from a valid entry without waiting (`cache.<type>.hit`).
    pub hits: u64,
    /// Gets with no index that had to wait for a fetch (`cache.<type>.miss_new`).
    pub misses_new: u64,
    /// Gets with an index that had to wait for newer data (`cache.<type>.miss_block`).
    pub misses_block: u64,
    /// Fetches that succeeded (`cache.<type>.fetch_success`).
    pub fetch_success: u64,
    /// Of those, the ones that reported "not modified" (label `result_not_modified`).
    pub fetch_not_modified: u64,
    /// Fetches that failed (`cache.<type>.fetch_error`).
    pub fetch_error: u64,
    /// Of those, the ones that stopped background refresh (label `fatal`: ACL not found).
    pub fetch_error_fatal: u64,
    /// Requests with an empty key, fetched without the cache (`cache.bypass`).
    pub bypass: u64,
    /// Entries evicted after their idle TTL (`cache.evict_expired`).
    pub evictions: u64,
    /// Entries currently held (gauge `cache.entries_count`).
    pub entries: u64,
    /// Approximate bytes of the values held, as estimated by the type's `size_of` (gauge).
    pub bytes: u64,
}

impl TypeMetrics {
    /// All misses, new and blocking.
    pub fn misses(&self) -> u64 {
        self.misses_new + self.misses_block
    }

    fn add(&mut self, o: &TypeMetrics) {
        self.hits += o.hits;
        self.misses_new += o.misses_new;
        self.misses_block += o.misses_block;
        self.fetch_success += o.fetch_success;
        self.fetch_not_modified += o.fetch_not_modified;
        self.fetch_error += o.fetch_error;
        self.fetch_error_fatal += o.fetch_error_fatal;
        self.bypass += o.bypass;
        self.evictions += o.evictions;
        self.entries += o.entries;
        self.bytes += o.bytes;
    }
}

/// A point-in-time copy of every cache metric.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Per registered type, by type name.
    pub types: BTreeMap<&'static str, TypeMetrics>,
    /// The sum over all types.
    pub total: TypeMetrics,
    /// Background tasks alive (fetches, refresh loops, watchers, the expiry loop); zero once
    /// a closed cache has wound down.
    pub background_tasks: u64,
}

impl MetricsSnapshot {
    pub(crate) fn new(types: BTreeMap<&'static str, TypeMetrics>, background_tasks: u64) -> Self {
        let mut total = TypeMetrics::default();
        for m in types.values() {
            total.add(m);
        }
        MetricsSnapshot {
            types,
            total,
            background_tasks,
        }
    }

    /// The metrics of the type named `name`.
    pub fn get(&self, name: &str) -> Option<&TypeMetrics> {
        self.types.get(name)
    }

    /// The snapshot in the Prometheus text exposition format (version 0.0.4).
    ///
    /// Every series carries a `type` label and no unlabelled "total" series is written:
    /// Prometheus sums over labels itself, and a total inside the same family would be
    /// counted twice by `sum()`.
    pub fn to_prometheus(&self) -> String {
        let mut out = String::new();
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP libconnect_cache_{name} {help}");
            let _ = writeln!(out, "# TYPE libconnect_cache_{name} {kind}");
        };
        let simple: [Family; 7] = [
            (
                "hit_total",
                "counter",
                "Gets answered from a valid entry without waiting.",
                |m| m.hits,
            ),
            (
                "miss_new_total",
                "counter",
                "Gets without an index that waited for a fetch.",
                |m| m.misses_new,
            ),
            (
                "miss_block_total",
                "counter",
                "Gets with an index that waited for newer data.",
                |m| m.misses_block,
            ),
            (
                "bypass_total",
                "counter",
                "Requests with an empty key, fetched without the cache.",
                |m| m.bypass,
            ),
            (
                "evict_expired_total",
                "counter",
                "Entries evicted after their idle TTL.",
                |m| m.evictions,
            ),
            ("entries", "gauge", "Entries held.", |m| m.entries),
            (
                "bytes",
                "gauge",
                "Approximate bytes of the values held.",
                |m| m.bytes,
            ),
        ];
        for (name, kind, help, get) in simple {
            family(&mut out, name, kind, help);
            for (ty, m) in &self.types {
                let _ = writeln!(
                    out,
                    "libconnect_cache_{name}{{type=\"{}\"}} {}",
                    escape(ty),
                    get(m)
                );
            }
        }
        family(
            &mut out,
            "fetch_success_total",
            "counter",
            "Fetches that succeeded.",
        );
        for (ty, m) in &self.types {
            let ty = escape(ty);
            let changed = m.fetch_success - m.fetch_not_modified.min(m.fetch_success);
            let _ = writeln!(
                out,
                "libconnect_cache_fetch_success_total{{type=\"{ty}\",result_not_modified=\"false\"}} {changed}"
            );
            let _ = writeln!(
                out,
                "libconnect_cache_fetch_success_total{{type=\"{ty}\",result_not_modified=\"true\"}} {}",
                m.fetch_not_modified
            );
        }
        family(
            &mut out,
            "fetch_error_total",
            "counter",
            "Fetches that failed; fatal ones stopped background refresh.",
        );
        for (ty, m) in &self.types {
            let ty = escape(ty);
            let transient = m.fetch_error - m.fetch_error_fatal.min(m.fetch_error);
            let _ = writeln!(
                out,
                "libconnect_cache_fetch_error_total{{type=\"{ty}\",fatal=\"false\"}} {transient}"
            );
            let _ = writeln!(
                out,
                "libconnect_cache_fetch_error_total{{type=\"{ty}\",fatal=\"true\"}} {}",
                m.fetch_error_fatal
            );
        }
        family(
            &mut out,
            "background_tasks",
            "gauge",
            "Background tasks alive.",
        );
        let _ = writeln!(
            out,
            "libconnect_cache_background_tasks {}",
            self.background_tasks
        );
        out
    }
}

/// One labelled-by-type family: name suffix, Prometheus type, help text, and the field.
type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&TypeMetrics) -> u64,
);

/// Escapes a label value as the exposition format requires.
fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_the_types() {
        let a = TypeMetrics {
            hits: 2,
            misses_new: 1,
            entries: 3,
            bytes: 10,
            ..TypeMetrics::default()
        };
        let b = TypeMetrics {
            hits: 5,
            misses_block: 4,
            entries: 1,
            bytes: 7,
            ..TypeMetrics::default()
        };
        let s = MetricsSnapshot::new(BTreeMap::from([("a", a), ("b", b)]), 3);
        assert_eq!(s.total.hits, 7);
        assert_eq!(s.total.misses(), 5);
        assert_eq!(s.total.entries, 4);
        assert_eq!(s.total.bytes, 17);
        assert_eq!(s.get("a"), Some(&a));
        assert_eq!(s.get("c"), None);
    }

    #[test]
    fn prometheus_text_has_help_type_and_labelled_series() {
        let m = TypeMetrics {
            hits: 3,
            fetch_success: 5,
            fetch_not_modified: 2,
            fetch_error: 4,
            fetch_error_fatal: 1,
            ..TypeMetrics::default()
        };
        let text =
            MetricsSnapshot::new(BTreeMap::from([("connect-ca-root", m)]), 2).to_prometheus();
        for line in [
            "# TYPE libconnect_cache_hit_total counter",
            "libconnect_cache_hit_total{type=\"connect-ca-root\"} 3",
            "libconnect_cache_fetch_success_total{type=\"connect-ca-root\",result_not_modified=\"false\"} 3",
            "libconnect_cache_fetch_success_total{type=\"connect-ca-root\",result_not_modified=\"true\"} 2",
            "libconnect_cache_fetch_error_total{type=\"connect-ca-root\",fatal=\"false\"} 3",
            "libconnect_cache_fetch_error_total{type=\"connect-ca-root\",fatal=\"true\"} 1",
            "# TYPE libconnect_cache_entries gauge",
            "libconnect_cache_background_tasks 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        // Every sample line is `name{labels} value` or `name value` with an integer value.
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = l.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
        }
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn gauges_do_not_wrap_below_zero() {
        let g = AtomicU64::new(1);
        adjust(&g, -5);
        assert_eq!(g.load(Ordering::Relaxed), 0);
        adjust(&g, 3);
        assert_eq!(g.load(Ordering::Relaxed), 3);
    }
}
