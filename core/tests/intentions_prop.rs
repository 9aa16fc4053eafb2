//! Property: the hot-path `IntentionIndex` decides exactly as a plain reference scan of
//! Consul docs: Intentions, written here independently of the library's matching code.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::cmp::Ordering;

use connect_core::intentions::{
    DefaultPolicy, Intention, IntentionAction, IntentionHttpPermission, IntentionIndex,
    IntentionPermission, ServiceRef,
};
use proptest::prelude::*;

const NAMES: &[&str] = &["web", "db", "api", "*"];
const NAMESPACES: &[&str] = &["default", "ns1", "*"];

#[derive(Debug, Clone)]
struct Spec {
    src_ns: &'static str,
    src: &'static str,
    dst_ns: &'static str,
    dst: &'static str,
    allow: bool,
    l7: bool,
}

fn valid_pair(ns: &str, name: &str) -> bool {
    // Consul rejects an exact name under a wildcard namespace.
    !(ns == "*" && name != "*")
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::sample::select(NAMESPACES),
        prop::sample::select(NAMES),
        prop::sample::select(NAMESPACES),
        prop::sample::select(NAMES),
        any::<bool>(),
        prop::bool::weighted(0.2),
    )
        .prop_filter("valid wildcard use", |(sn, s, dn, d, _, _)| {
            valid_pair(sn, s) && valid_pair(dn, d)
        })
        .prop_map(|(src_ns, src, dst_ns, dst, allow, l7)| Spec {
            src_ns,
            src,
            dst_ns,
            dst,
            allow,
            // Consul forbids Permissions on a wildcard destination.
            l7: l7 && dst != "*",
        })
}

fn to_intention(s: &Spec) -> Intention {
    let mut ixn = Intention::new(s.src, s.dst, IntentionAction::Allow);
    ixn.source_ns = s.src_ns.into();
    ixn.destination_ns = s.dst_ns.into();
    if s.l7 {
        ixn.action = None;
        let mut http = IntentionHttpPermission::default();
        http.path_prefix = "/v1".into();
        ixn.permissions = vec![IntentionPermission::new(IntentionAction::Allow, http)];
    } else {
        ixn.action = Some(if s.allow {
            IntentionAction::Allow
        } else {
            IntentionAction::Deny
        });
    }
    ixn
}

fn exact(ns: &str, name: &str) -> u32 {
    if ns == "*" {
        0
    } else if name == "*" {
        1
    } else {
        2
    }
}

/// Consul's precedence (Consul docs: Intentions), restated.
fn precedence(s: &Spec) -> u32 {
    let max = match exact(s.dst_ns, s.dst) {
        2 => 9,
        1 => 6,
        _ => 3,
    };
    max - (2 - exact(s.src_ns, s.src))
}

fn covers(pattern_ns: &str, pattern: &str, ns: &str, name: &str) -> bool {
    (pattern_ns == "*" || pattern_ns == ns) && (pattern == "*" || pattern == name)
}

/// The reference: filter by destination, sort by precedence then the tie-break tuple, take
/// the first whose source covers the client.
fn reference(
    specs: &[Spec],
    dst: (&str, &str),
    src: (&str, &str),
    default_allow: bool,
) -> (bool, bool) {
    let mut cands: Vec<&Spec> = specs
        .iter()
        .filter(|s| covers(s.dst_ns, s.dst, dst.0, dst.1))
        .collect();
    cands.sort_by(|a, b| match precedence(b).cmp(&precedence(a)) {
        Ordering::Equal => {
            (a.src_ns, a.src, a.dst_ns, a.dst).cmp(&(b.src_ns, b.src, b.dst_ns, b.dst))
        }
        o => o,
    });
    match cands
        .into_iter()
        .find(|s| covers(s.src_ns, s.src, src.0, src.1))
    {
        Some(s) => (!s.l7 && s.allow, false),
        None => (default_allow, true),
    }
}

fn dedup(specs: Vec<Spec>) -> Vec<Spec> {
    // Consul allows one intention per (source, destination) pair.
    let mut out: Vec<Spec> = Vec::new();
    for s in specs {
        if !out
            .iter()
            .any(|o| (o.src_ns, o.src, o.dst_ns, o.dst) == (s.src_ns, s.src, s.dst_ns, s.dst))
        {
            out.push(s);
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn index_decides_like_the_reference_scan(
        specs in prop::collection::vec(spec(), 0..24).prop_map(dedup),
        queries in prop::collection::vec(
            (prop::sample::select(&NAMESPACES[..2]), prop::sample::select(&NAMES[..3]),
             prop::sample::select(&NAMESPACES[..2]), prop::sample::select(&NAMES[..3])),
            1..16),
        default_allow in any::<bool>(),
    ) {
        let policy = DefaultPolicy::acl(if default_allow { IntentionAction::Allow } else { IntentionAction::Deny });
        let index = IntentionIndex::new(specs.iter().map(to_intention), policy);
        for (dns, d, sns, s) in queries {
            let got = index.authorize(&ServiceRef::in_namespace(dns, d), &ServiceRef::in_namespace(sns, s));
            let want = reference(&specs, (dns, d), (sns, s), default_allow);
            prop_assert_eq!((got.allowed, got.default_used), want, "dst {}/{} src {}/{} in {:?}", dns, d, sns, s, specs);
            if let Some(m) = &got.matched {
                prop_assert_eq!(got.precedence, Some(m.precedence));
            }
        }
    }
}
