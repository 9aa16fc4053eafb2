//! Robustness properties: every parser that sees input from outside the process (HTTP bodies,
//! query strings, ACL rules, CSRs and certificates, SPIFFE IDs, Go durations) is thrown
//! random bytes and structured garbage (deep nesting, huge numbers, long fractions, NUL,
//! newlines and `..` in names, overlong strings). It must answer `Ok` or a typed error, never
//! panic, overflow its stack or answer a 5xx.
//!
//! Each property runs a few hundred cases by default, so the file takes seconds. For a long
//! run set `LIBCONNECT_FUZZ_CASES` (every property then runs that many cases), as
//! `make fuzz` does. Inputs that would overflow the stack of an unfixed parser run in a
//! child process of this test binary (see [`in_child`]), so that such a crash fails one test
//! instead of aborting the whole file.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use connect_core::acl::{Policy, PolicyRules, Token};
use connect_core::ca::{CaConfiguration, Csr, SignPolicy, generate_leaf_request};
use connect_core::catalog::ServiceRegistration;
use connect_core::certs::{CertInfo, parse_pem_certificate, parse_pem_certificates};
use connect_core::filter::Filter;
use connect_core::intentions::Intention;
use connect_core::server::{Server, ServerConfig};
use connect_core::spiffe::{SpiffeId, TrustDomain};
use connect_core::{Error, ErrorKind};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Value, json};

// ---- running ----------------------------------------------------------------------------

/// `default` cases, or `LIBCONNECT_FUZZ_CASES` when set (the long mode of `make fuzz`).
fn config(default: u32) -> Config {
    let cases = std::env::var("LIBCONNECT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        // Shrinking a crash in a 100,000-byte input can take longer than finding it.
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// Runs `body` in a fresh copy of this test binary when called from the harness, so that a
/// stack overflow or abort fails this test (with the child's stderr) instead of killing
/// every test of the file. Test names are the functions' names: keep callers at top level.
fn in_child(test: &str, body: impl FnOnce()) {
    const VAR: &str = "LIBCONNECT_ROBUSTNESS_CHILD";
    if std::env::var(VAR).as_deref() == Ok(test) {
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads", "1"])
        .env(VAR, test)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} failed in a child process ({}):\n{}\n{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- generators -------------------------------------------------------------------------

/// Names as an attacker writes them: the characters a name may not carry, the edges of the
/// allowed set, and overlong ones.
fn nasty_name() -> BoxedStrategy<String> {
    prop_oneof![
        3 => "[A-Za-z0-9._-]{1,24}",
        1 => Just(String::new()),
        1 => prop::sample::select(vec![
            "\0", "web\0db", "web\n", "\r\nX-Injected: 1", "..", ".", "/", "../../etc/passwd",
            "a/b", "%2F", "%00", "*", "**", "web*", " ", "\t", "\u{202e}web", "\u{feff}",
            "é", "web\u{0}", "\\", "\"", "'", "{}", "${x}", "<hidden>",
        ])
        .prop_map(str::to_owned),
        1 => (1usize..=20_000).prop_map(|n| "a".repeat(n)),
        2 => any::<String>(),
    ]
    .boxed()
}

/// Number texts JSON allows but Rust types may not hold.
fn nasty_number() -> BoxedStrategy<String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| f.to_string()),
        prop::sample::select(vec![
            "0",
            "-0",
            "1e999",
            "-1e999",
            "1e-999",
            "18446744073709551616",
            "-9223372036854775809",
            "123456789012345678901234567890123456789",
            "1.0000000000000000000000000000000000001",
            "65536",
            "-1",
            "4294967296",
        ])
        .prop_map(str::to_owned),
        (1usize..400).prop_map(|n| "9".repeat(n)),
    ]
    .boxed()
}

/// Go durations, well- and ill-formed: long digit runs, long fractions, every unit.
fn duration_text() -> impl Strategy<Value = String> {
    let part = (
        prop_oneof!["[0-9]{0,3}", "[0-9]{0,40}"],
        prop::option::of(prop_oneof!["[0-9]{0,3}", "[0-9]{0,60}"]),
        prop::sample::select(vec![
            "ns", "us", "µs", "μs", "ms", "s", "m", "h", "", "d", "H", "x",
        ]),
    )
        .prop_map(|(int, frac, unit)| match frac {
            Some(f) => format!("{int}.{f}{unit}"),
            None => format!("{int}{unit}"),
        });
    (
        prop::sample::select(vec!["", "", "+", "-"]),
        prop::collection::vec(part, 1..5),
    )
        .prop_map(|(sign, parts)| format!("{sign}{}", parts.concat()))
}

/// Every field name the decoders know, in several spellings, and garbage keys.
const KEYS: &[&str] = &[
    // Intentions.
    "ID",
    "SourceName",
    "DestinationName",
    "SourceNS",
    "DestinationNS",
    "SourcePartition",
    "DestinationPartition",
    "SourcePeer",
    "SourceSamenessGroup",
    "SourceType",
    "Action",
    "Description",
    "Meta",
    "Precedence",
    "Permissions",
    "HTTP",
    "PathExact",
    "PathPrefix",
    "PathRegex",
    "Methods",
    "Header",
    "Name",
    "Present",
    "Exact",
    "Prefix",
    "Suffix",
    "Regex",
    "Contains",
    "IgnoreCase",
    "Invert",
    "CreateIndex",
    "ModifyIndex",
    "LegacyID",
    "Hash",
    // Service registration.
    "Tags",
    "Address",
    "Port",
    "Kind",
    "Proxy",
    "DestinationServiceName",
    "DestinationServiceID",
    "LocalServiceAddress",
    "LocalServicePort",
    "Upstreams",
    "DestinationType",
    "LocalBindPort",
    "Check",
    "Checks",
    "CheckID",
    "TTL",
    "Status",
    "Notes",
    "Connect",
    "Native",
    "SidecarService",
    "EnableTagOverride",
    "Weights",
    "Passing",
    "Warning",
    "TaggedAddresses",
    "Namespace",
    "Partition",
    "Datacenter",
    // CA configuration.
    "Provider",
    "Config",
    "LeafCertTTL",
    "leaf_cert_ttl",
    "RotationPeriod",
    "IntermediateCertTTL",
    "RootCertTTL",
    "PrivateKeyType",
    "PrivateKeyBits",
    "PrivateKey",
    "RootCert",
    "ForceWithoutCrossSigning",
    "ClusterID",
    "CSRMaxPerSecond",
    "CSRMaxConcurrent",
    "csr_max_per_second",
    "State",
    // ACL policies and tokens.
    "Rules",
    "Datacenters",
    "AccessorID",
    "SecretID",
    "Policies",
    "Local",
    "ExpirationTTL",
    "ExpirationTime",
    "ServiceIdentities",
    "ServiceName",
    "NodeIdentities",
    "Roles",
    // Authorize and sign.
    "Target",
    "ClientCertURI",
    "ClientCertSerial",
    "CSR",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => prop::sample::select(KEYS).prop_map(str::to_owned),
        2 => prop::sample::select(KEYS).prop_map(str::to_ascii_lowercase),
        1 => prop::sample::select(KEYS).prop_map(str::to_ascii_uppercase),
        1 => nasty_name(),
    ]
}

/// A JSON string literal of `s`.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// JSON text (not a `Value`: numbers like `1e999` must reach the decoder as written) whose
/// objects use the decoders' keys, nested a few levels.
fn json_text() -> BoxedStrategy<String> {
    let leaf = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("false".to_owned()),
        nasty_number(),
        nasty_name().prop_map(|s| quoted(&s)),
        duration_text().prop_map(|s| quoted(&s)),
        prop::sample::select(vec![
            "allow",
            "deny",
            "consul",
            "ec",
            "rsa",
            "connect-proxy"
        ])
        .prop_map(quoted),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key(), inner), 0..8).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{}:{v}", quoted(&k)))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
    .boxed()
}

/// `depth` levels of `open` around `inner`, closed or (when `close` is false) not.
fn nest(open: &str, inner: &str, closer: &str, depth: usize, close: bool) -> String {
    let mut s = open.repeat(depth);
    s.push_str(inner);
    if close {
        s.push_str(&closer.repeat(depth));
    }
    s
}

/// Bodies for any JSON endpoint: structured JSON, random bytes, broken and deeply nested
/// documents.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => json_text().prop_map(String::into_bytes),
        2 => prop::collection::vec(any::<u8>(), 0..512),
        1 => (json_text(), any::<prop::sample::Index>()).prop_map(|(t, i)| {
            // Cut anywhere: unterminated strings, objects and escapes.
            let b = t.into_bytes();
            let at = i.index(b.len() + 1);
            b[..at].to_vec()
        }),
        1 => (1usize..300, any::<bool>(), any::<bool>()).prop_map(|(d, obj, close)| {
            if obj {
                nest("{\"Meta\":", "1", "}", d, close).into_bytes()
            } else {
                nest("[", "1", "]", d, close).into_bytes()
            }
        }),
    ]
}

/// The kinds a typed decoding or validation error may have.
fn is_input_error(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidParameter
            | ErrorKind::InvalidIntention
            | ErrorKind::InvalidAclPolicy
            | ErrorKind::InvalidCaConfig
            | ErrorKind::InvalidSpiffeId
            | ErrorKind::InvalidTrustDomain
            | ErrorKind::InvalidCsr
            | ErrorKind::InvalidCertificate
            | ErrorKind::CsrRejected
            | ErrorKind::InvalidKey
            | ErrorKind::UnsupportedKey
            | ErrorKind::NotFound
            | ErrorKind::AclNotFound
            | ErrorKind::PermissionDenied
    )
}

fn assert_typed<T>(r: Result<T, Error>) -> Result<(), TestCaseError> {
    if let Err(e) = r {
        prop_assert!(
            is_input_error(e.kind()),
            "untyped error {:?}: {e}",
            e.kind()
        );
        prop_assert!(!e.to_string().is_empty());
    }
    Ok(())
}

// ---- filters ----------------------------------------------------------------------------

const SELECTORS: &[&str] = &[
    "ServiceName",
    "Service",
    "ServiceTags",
    "ServiceMeta.env",
    "Meta.env",
    "Tags",
    "SourceName",
    "DestinationName",
    "Action",
    "Node",
    "Service.Meta.a.b.c",
    "Checks.Status",
];

/// One comparison, as written or broken.
fn comparison() -> BoxedStrategy<String> {
    let sel = prop_oneof![
        4 => prop::sample::select(SELECTORS).prop_map(str::to_owned),
        1 => nasty_name(),
        1 => (1usize..40).prop_map(|n| vec!["a"; n].join(".")),
    ]
    .boxed();
    let value = prop_oneof![
        3 => "[a-z0-9-]{0,10}".prop_map(|v| quoted(&v)),
        1 => nasty_name().prop_map(|v| quoted(&v)),
        1 => "[a-z]{1,8}",
        1 => nasty_number(),
        1 => "`[^`]{0,10}`",
    ]
    .boxed();
    let regex = prop_oneof![
        "[a-z.*+?|()\\[\\]^$]{0,16}",
        (1usize..2_000).prop_map(|n| format!("a{{{n}}}")),
        Just("(a*)*b".to_owned()),
        Just("(".to_owned()),
        Just("\\p{Greek}+".to_owned()),
        Just("[[:alpha:]".to_owned()),
    ]
    .boxed();
    prop_oneof![
        (
            sel.clone(),
            prop::sample::select(vec!["==", "!="]),
            value.clone()
        )
            .prop_map(|(s, op, v)| format!("{s} {op} {v}")),
        (
            value.clone(),
            prop::sample::select(vec!["in", "not in"]),
            sel.clone()
        )
            .prop_map(|(v, op, s)| format!("{v} {op} {s}")),
        (
            sel.clone(),
            prop::sample::select(vec!["contains", "not contains"]),
            value
        )
            .prop_map(|(s, op, v)| format!("{s} {op} {v}")),
        (
            sel.clone(),
            prop::sample::select(vec!["is empty", "is not empty"])
        )
            .prop_map(|(s, op)| format!("{s} {op}")),
        (
            sel,
            prop::sample::select(vec!["matches", "not matches"]),
            regex
        )
            .prop_map(|(s, op, r)| format!("{s} {op} {}", quoted(&r))),
    ]
    .boxed()
}

/// Filter expressions: well-formed trees, broken token soup, long chains and many regexes.
fn filter_text() -> BoxedStrategy<String> {
    let tree = comparison().prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            (
                inner.clone(),
                prop::sample::select(vec!["and", "or"]),
                inner.clone()
            )
                .prop_map(|(a, op, b)| format!("{a} {op} {b}")),
            inner.clone().prop_map(|a| format!("not {a}")),
            inner.prop_map(|a| format!("({a})")),
        ]
    });
    let soup = prop::collection::vec(
        prop_oneof![
            prop::sample::select(vec![
                "(", ")", "and", "or", "not", "==", "!=", "in", "contains", "matches", "is",
                "empty", "\"", "`", "\\", "Name", "\"x\"", "", "\0", "\n",
            ])
            .prop_map(str::to_owned),
            nasty_name(),
        ],
        0..40,
    )
    .prop_map(|t| t.join(" "));
    prop_oneof![
        5 => tree,
        3 => soup,
        1 => any::<String>(),
        1 => (comparison(), 1usize..200).prop_map(|(c, n)| vec![c; n].join(" and ")),
        1 => (1usize..40, 1usize..500).prop_map(|(n, size)| {
            vec![format!("ServiceName matches \"a{{{size}}}\""); n].join(" or ")
        }),
        1 => (1usize..64, any::<bool>(), comparison())
            .prop_map(|(d, close, c)| nest("(", &c, ")", d, close)),
        1 => (1usize..64, comparison()).prop_map(|(d, c)| nest("not ", &c, "", d, true)),
    ]
    .boxed()
}

fn catalog_like_item() -> Value {
    json!({
        "ServiceName": "web", "ServiceTags": ["a", "b"], "ServiceMeta": {"env": "prod"},
        "Service": {"Meta": {"a": {"b": {"c": "x"}}}}, "Tags": [], "Node": "n1",
        "SourceName": "web", "DestinationName": "db", "Action": "allow",
        "Checks": [{"Status": "passing"}], "Meta": {"env": "aaaaaaaaaa"}
    })
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn filter_parse_never_panics(text in filter_text()) {
        let parsed = Filter::parse(&text);
        if let Err(e) = &parsed {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{}", e);
        }
        assert_typed(parsed.map(|f| f.matches(&catalog_like_item())))?;
    }
}

/// Thousands of parentheses or `not`s: the parser must refuse them, not recurse into them
/// until the stack overflows (one unauthenticated `?filter=` killed the agent).
#[test]
fn filter_deep_nesting_is_refused_not_a_stack_overflow() {
    in_child(
        "filter_deep_nesting_is_refused_not_a_stack_overflow",
        || {
            for depth in [1_000, 10_000, 100_000] {
                for text in [
                    nest("(", "Name == x", ")", depth, true),
                    nest("(", "", "", depth, false),
                    nest("not ", "Name == x", "", depth, true),
                    nest("(not ", "Name == x", ")", depth, true),
                ] {
                    match Filter::parse(&text) {
                        Ok(f) => {
                            f.matches(&catalog_like_item());
                        }
                        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{e}"),
                    }
                }
            }
        },
    );
}

// ---- SPIFFE IDs and trust domains ---------------------------------------------------------

fn spiffe_text() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        4 => "[a-z0-9.-]{1,12}",
        1 => nasty_name(),
        1 => "(%[0-9A-Fa-f]{0,2}|%|[a-z]){1,8}",
        1 => prop::sample::select(vec!["ns", "dc", "svc", "agent", "ap", "gateway", "mesh",
            "identity", "default", "client", "server"]).prop_map(str::to_owned),
    ];
    let host = prop_oneof![
        4 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\\.consul",
        1 => "[a-zA-Z0-9.:@\\[\\]-]{0,20}",
        1 => nasty_name(),
    ];
    prop_oneof![
        4 => (
            prop::sample::select(vec!["spiffe://", "SPIFFE://", "spiffe:", "http://", "", "spiffe:///"]),
            host,
            prop::collection::vec(segment, 0..10),
            prop::sample::select(vec!["", "/", "?x=1", "#f", "//", "/%"]),
        )
            .prop_map(|(scheme, host, segs, tail)| {
                let path: String = segs.iter().map(|s| format!("/{s}")).collect();
                format!("{scheme}{host}{path}{tail}")
            }),
        1 => any::<String>(),
        1 => (1usize..20_000).prop_map(|n| format!("spiffe://{}.consul/ns/default/dc/dc1/svc/{}", "a".repeat(n), "%41".repeat(n))),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn spiffe_ids_parse_or_say_why(text in spiffe_text()) {
        match SpiffeId::parse(&text) {
            Ok(id) => {
                // What the parser accepted, it must print in a form it accepts again.
                let again = SpiffeId::parse(&id.uri());
                prop_assert!(again.is_ok(), "{text:?} -> {} -> {again:?}", id.uri());
                let _ = id.host();
                let _ = id.trust_domain();
            }
            Err(e) => {
                let e = Error::from(e);
                prop_assert!(
                    matches!(e.kind(), ErrorKind::InvalidSpiffeId | ErrorKind::InvalidTrustDomain),
                    "{:?}: {e}", e.kind()
                );
            }
        }
    }

    #[test]
    fn trust_domains_parse_or_say_why(text in prop_oneof![
        3 => "[0-9a-f-]{0,40}(\\.consul)?",
        1 => nasty_name(),
        1 => any::<String>(),
    ]) {
        for r in [TrustDomain::new(&text), TrustDomain::from_cluster_id(&text)] {
            match r {
                Ok(td) => {
                    let _ = connect_core::spiffe::service_sni(&text, Some(&text), "default", "default", "dc1", &td);
                    let _ = connect_core::spiffe::query_sni(&text, &text, &td);
                    prop_assert!(TrustDomain::new(td.as_str()).is_ok());
                }
                Err(e) => {
                    let e = Error::from(e);
                    prop_assert!(
                        matches!(e.kind(), ErrorKind::InvalidSpiffeId | ErrorKind::InvalidTrustDomain),
                        "{:?}: {e}", e.kind()
                    );
                }
            }
        }
    }
}

// ---- JSON decoders ------------------------------------------------------------------------

fn decode_all(bytes: &[u8]) -> Result<(), TestCaseError> {
    assert_typed(Intention::from_json(bytes).map_err(Error::from))?;
    assert_typed(ServiceRegistration::from_json(bytes).map_err(Error::from))?;
    // The decoders that report a message (the HTTP layer makes it a 400): any result is fine
    // but a panic; the value, when there is one, must survive a round trip.
    if let Ok(p) = connect_core::json::from_slice::<Policy>(bytes) {
        let _ = serde_json::to_vec(&p).unwrap();
    }
    if let Ok(t) = connect_core::json::from_slice::<Token>(bytes) {
        let _ = serde_json::to_vec(&t).unwrap();
    }
    if let Ok(c) = connect_core::json::from_slice::<CaConfiguration>(bytes) {
        let text = serde_json::to_vec(&c).unwrap();
        prop_assert!(connect_core::json::from_slice::<CaConfiguration>(&text).is_ok());
        assert_typed(connect_core::ca::CommonCaConfig::from_map(&c.config).map_err(Error::from))?;
        assert_typed(connect_core::ca::ConsulCaConfig::from_map(&c.config).map_err(Error::from))?;
    }
    let _ = connect_core::json::from_slice::<Value>(bytes);
    Ok(())
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn json_decoders_never_panic(bytes in body()) {
        decode_all(&bytes)?;
    }

    /// Every endpoint's body with the endpoint's own shape, garbage in each field.
    #[test]
    fn shaped_bodies_never_panic(
        name in nasty_name(),
        other in nasty_name(),
        number in nasty_number(),
        duration in duration_text(),
        junk in json_text(),
    ) {
        let (n, o, d) = (quoted(&name), quoted(&other), quoted(&duration));
        for text in [
            format!(r#"{{"SourceName":{n},"DestinationName":{o},"Action":"allow"}}"#),
            format!(r#"{{"SourceName":"web","DestinationName":{n},"Permissions":[{{"Action":"deny","HTTP":{{"PathRegex":{o},"Header":[{{"Name":{n},"Regex":{o}}}]}}}}]}}"#),
            format!(r#"{{"SourceName":"web","DestinationName":"db","Action":"allow","Meta":{{{n}:{o}}},"Description":{o},"Precedence":{number}}}"#),
            format!(r#"{{"ID":{n},"Name":{o},"Port":{number},"Tags":[{n}],"Meta":{{{n}:{o}}}}}"#),
            format!(r#"{{"Name":"web","Check":{{"TTL":{d},"CheckID":{n}}}}}"#),
            format!(r#"{{"Name":"web-proxy","Kind":"connect-proxy","Proxy":{{"DestinationServiceName":{n},"LocalServicePort":{number},"Upstreams":[{{"DestinationName":{o},"LocalBindPort":{number}}}]}}}}"#),
            format!(r#"{{"Name":"web","Connect":{{"SidecarService":{junk}}}}}"#),
            format!(r#"{{"Provider":"consul","Config":{{"LeafCertTTL":{d},"RotationPeriod":{d},"IntermediateCertTTL":{number},"PrivateKeyBits":{number},"PrivateKeyType":{n},"CSRMaxPerSecond":{number}}}}}"#),
            format!(r#"{{"Provider":{n},"Config":{junk}}}"#),
            format!(r#"{{"Name":{n},"Rules":{o},"Datacenters":[{n}]}}"#),
            format!(r#"{{"Description":{n},"Policies":[{{"ID":{o}}},{{"Name":{n}}}],"ExpirationTTL":{d},"ServiceIdentities":[{{"ServiceName":{n}}}]}}"#),
            format!(r#"{{"Target":{n},"ClientCertURI":{o},"ClientCertSerial":{number}}}"#),
            format!(r#"{{"CSR":{n}}}"#),
        ] {
            decode_all(text.as_bytes())?;
        }
    }
}

/// Thousands of nested arrays or objects in every decoder: refused by the JSON parser's
/// depth limit, never a stack overflow.
#[test]
fn json_deep_nesting_is_refused_not_a_stack_overflow() {
    in_child("json_deep_nesting_is_refused_not_a_stack_overflow", || {
        for depth in [1_000, 100_000] {
            for text in [
                nest("[", "1", "]", depth, true),
                nest("{\"Meta\":", "1", "}", depth, true),
                nest("{\"Permissions\":[", "{}", "]}", depth, true),
                format!(
                    r#"{{"Provider":"consul","Config":{}}}"#,
                    nest("{\"a\":", "1", "}", depth, true)
                ),
            ] {
                decode_all(text.as_bytes()).unwrap();
                assert_typed(PolicyRules::parse(&text).map_err(Error::from)).unwrap();
            }
        }
    });
}

// ---- ACL rules ---------------------------------------------------------------------------

fn rules_text() -> BoxedStrategy<String> {
    let level = prop_oneof![
        4 => prop::sample::select(vec!["read", "write", "deny", "list", "", "READ", "admin"])
            .prop_map(quoted),
        1 => nasty_name().prop_map(|s| quoted(&s)),
        1 => nasty_number(),
        1 => Just("[\"read\"]".to_owned()),
        1 => Just("{}".to_owned()),
    ];
    let resource = prop::sample::select(vec![
        "service",
        "service_prefix",
        "node",
        "node_prefix",
        "key",
        "key_prefix",
        "agent",
        "agent_prefix",
        "query",
        "session",
        "event",
        "intentions",
        "identity",
        "mesh",
        "operator",
        "acl",
        "keyring",
        "peering",
        "namespace",
        "partition",
        "unknown",
    ]);
    let hcl_rule = (resource.clone(), nasty_name(), level.clone(), any::<bool>()).prop_map(
        |(r, name, level, labelled)| {
            if labelled {
                format!(
                    "{r} {} {{\n  policy = {level}\n  intentions = {level}\n}}\n",
                    quoted(&name)
                )
            } else {
                format!("{r} = {level}\n")
            }
        },
    );
    let json_rule = (resource, nasty_name(), level).prop_map(|(r, name, level)| {
        format!("{}:{{{}:{{\"policy\":{level}}}}}", quoted(r), quoted(&name))
    });
    prop_oneof![
        4 => prop::collection::vec(hcl_rule, 0..6).prop_map(|r| r.concat()),
        2 => prop::collection::vec(json_rule, 0..6).prop_map(|r| format!("{{{}}}", r.join(","))),
        1 => json_text(),
        1 => any::<String>(),
        1 => prop::collection::vec(
            prop::sample::select(vec![
                "service", "\"web\"", "{", "}", "=", "policy", "\"read\"", "[", "]", "(", ")",
                "\n", "#", "/*", "*/", "${", "<<EOF", "EOF", ",", ":", "true", "null", "1e999",
            ]),
            0..40,
        )
        .prop_map(|t| t.join(" ")),
        1 => (1usize..200, any::<bool>()).prop_map(|(d, close)| {
            nest("service \"x\" {\n", "policy = \"read\"\n", "}\n", d, close)
        }),
        1 => (1usize..200, any::<bool>())
            .prop_map(|(d, close)| format!("service = {}", nest("[", "1", "]", d, close))),
    ]
    .boxed()
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn acl_rules_parse_or_say_why(text in rules_text()) {
        let parsed = PolicyRules::parse(&text).map_err(Error::from);
        if let Err(e) = &parsed {
            prop_assert_eq!(e.kind(), ErrorKind::InvalidAclPolicy, "{}", e);
        }
    }
}

/// Deeply nested HCL (blocks, lists, parentheses, objects) and JSON rules: a typed error or
/// a rule set, never a stack overflow. Only a token with `acl:write` may send rules, but a
/// policy must not be able to take the agent down either.
#[test]
fn acl_rules_deep_nesting_is_refused_not_a_stack_overflow() {
    in_child(
        "acl_rules_deep_nesting_is_refused_not_a_stack_overflow",
        || {
            for depth in [1_000, 10_000, 100_000] {
                for text in [
                    nest(
                        "service \"x\" {\n",
                        "policy = \"read\"\n",
                        "}\n",
                        depth,
                        true,
                    ),
                    format!("service = {}", nest("[", "1", "]", depth, true)),
                    format!("service = {}", nest("(", "1", ")", depth, true)),
                    format!("service = {}", nest("{a = ", "1", "}", depth, true)),
                    format!("service = {}", nest("-", "1", "", depth, true)),
                    format!("service = {}", nest("!", "true", "", depth, true)),
                    nest("{\"service\":", "{}", "}", depth, true),
                ] {
                    assert_typed(PolicyRules::parse(&text).map_err(Error::from)).unwrap();
                }
            }
        },
    );
}

// ---- CSRs, certificates and PEM ---------------------------------------------------------

/// A dev server in this process, its root and one leaf, and its HTTP API on loopback.
struct Fixture {
    root_pem: String,
    leaf_pem: String,
    csr_der: Vec<u8>,
    http: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let server = Server::start(ServerConfig::dev(), Arc::new(connect_core::SystemClock))
            .expect("dev server");
        let roots = server.ca_roots().value;
        let root_pem = roots.roots_pem();
        let td = TrustDomain::new(&server.trust_domain()).unwrap();
        let uri = connect_core::spiffe::ServiceId::new(&td, "dc1", "web").uri();
        let req = generate_leaf_request(&uri, &[], &[]).unwrap();
        let leaf_pem = server
            .sign_local(&req.csr_pem, SignPolicy::ServiceOnly)
            .unwrap()
            .cert_pem;
        let csr_der = pem_body(&req.csr_pem);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                tx.send(listener.local_addr().unwrap().to_string()).unwrap();
                axum::serve(listener, connect_core::http::api::router(server))
                    .await
                    .unwrap();
            });
        });
        Fixture {
            root_pem,
            leaf_pem,
            csr_der,
            http: rx.recv().unwrap(),
        }
    })
}

/// The DER inside the first PEM block of `pem`.
fn pem_body(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let b64: String = pem
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn to_pem(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Edits of a valid DER document: flipped bytes, cuts, insertions, bogus lengths.
fn mutated(der: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = der.len();
    prop::collection::vec((0..len, any::<u8>(), 0u8..4), 1..6).prop_map(move |edits| {
        let mut d = der.clone();
        for (at, byte, how) in edits {
            let at = at.min(d.len().saturating_sub(1));
            match how {
                0 => d[at] = byte,
                1 => d.truncate(at),
                2 => d.insert(at, byte),
                _ => {
                    // A length byte claiming far more than follows.
                    d[at] = 0x84;
                    d.splice(at + 1..at + 1, [0xff, 0xff, 0xff, byte]);
                }
            }
            if d.is_empty() {
                break;
            }
        }
        d
    })
}

fn csr_kinds(e: &Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::InvalidCsr
            | ErrorKind::CsrRejected
            | ErrorKind::InvalidKey
            | ErrorKind::UnsupportedKey
            | ErrorKind::InvalidCertificate
            | ErrorKind::InvalidParameter
    )
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn csrs_parse_or_say_why(der in mutated(fixture().csr_der.clone())) {
        for r in [Csr::from_der(&der), Csr::from_pem(&to_pem("CERTIFICATE REQUEST", &der))] {
            match r {
                Ok(csr) => {
                    let _ = (csr.uris(), csr.dns_names(), csr.key_id(), csr.requests_ca());
                }
                Err(e) => {
                    let e = Error::from(e);
                    prop_assert!(csr_kinds(&e), "{:?}: {e}", e.kind());
                }
            }
        }
    }

    #[test]
    fn certificates_parse_or_say_why(der in mutated(pem_body(&fixture().leaf_pem))) {
        let root = pem_body(&fixture().root_pem);
        match CertInfo::from_der(&der) {
            Ok(info) => {
                let _ = (info.serial_hex(), info.serial_u64());
            }
            Err(e) => {
                let e = Error::from(e);
                prop_assert!(csr_kinds(&e), "{:?}: {e}", e.kind());
            }
        }
        let _ = connect_core::certs::verify_signed_by(&der, &root);
        let _ = connect_core::certs::verify_signed_by(&root, &der);
        let _ = parse_pem_certificates(&to_pem("CERTIFICATE", &der));
    }

    #[test]
    fn pem_text_parses_or_says_why(text in prop_oneof![
        2 => any::<String>(),
        2 => (nasty_name(), "[A-Za-z0-9+/=\n]{0,200}", nasty_name()).prop_map(|(a, b64, c)| {
            format!("-----BEGIN {a}-----\n{b64}\n-----END {c}-----\n")
        }),
        1 => "(-----BEGIN CERTIFICATE-----\n|-----END CERTIFICATE-----\n|[A-Za-z0-9+/=]{0,70}\n|\0|\r\n){0,20}",
        1 => (0usize..4, "[A-Za-z0-9+/]{0,2000}").prop_map(|(n, b)| {
            format!("-----BEGIN CERTIFICATE-----\n{b}{}\n-----END CERTIFICATE-----\n", "=".repeat(n))
        }),
    ]) {
        for r in [parse_pem_certificates(&text).map(|_| ()), parse_pem_certificate(&text).map(|_| ())] {
            assert_typed(r.map_err(Error::from))?;
        }
        assert_typed(Csr::from_pem(&text).map(|_| ()).map_err(Error::from))?;
    }
}

// ---- Go durations --------------------------------------------------------------------------

/// `int.frac<unit>` in nanoseconds, from the first 25 fraction digits (the rest weigh less
/// than a nanosecond for every unit up to an hour), or `None` past `i64::MAX`.
fn exact_nanos(int: &str, frac: &str, unit_nanos: u128) -> Option<u128> {
    let whole: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let digits = &frac[..frac.len().min(25)];
    let f: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().unwrap()
    };
    let frac_ns = f * unit_nanos / 10u128.pow(digits.len() as u32);
    let total = whole.checked_mul(unit_nanos)?.checked_add(frac_ns)?;
    (total <= i64::MAX as u128).then_some(total)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn go_durations_parse_or_say_why(text in prop_oneof![
        4 => duration_text(),
        1 => any::<String>(),
    ]) {
        if let Ok(d) = connect_core::duration::parse_go_duration(&text) {
            prop_assert!(d.as_nanos() <= i64::MAX as u128);
            let printed = connect_core::duration::format_go_duration(d);
            prop_assert_eq!(connect_core::duration::parse_go_duration(&printed), Ok(d), "{}", printed);
        }
    }

    /// Long fractions (`1.0000000000000000000000000000000000001h`) are worth what they say,
    /// to the nanosecond, or refused: never a wrapped or overflowed value.
    #[test]
    fn go_duration_fractions_are_exact(
        int in prop_oneof!["[0-9]{0,4}", "[0-9]{1,20}"],
        frac in prop_oneof!["[0-9]{1,9}", "[0-9]{10,80}", "0{20,60}[1-9]"],
        unit in prop::sample::select(vec![
            ("ns", 1u128), ("us", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000),
            ("m", 60_000_000_000), ("h", 3_600_000_000_000),
        ]),
    ) {
        let text = format!("{int}.{frac}{}", unit.0);
        let got = connect_core::duration::parse_go_duration(&text);
        match exact_nanos(&int, &frac, unit.1) {
            Some(want) => {
                let got = got.map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
                // Go computes the fraction in floating point: allow its rounding, no more.
                let diff = got.as_nanos().abs_diff(want);
                prop_assert!(diff <= 1 + want / 1_000_000_000_000, "{text}: {} ns, want {want}", got.as_nanos());
            }
            None => prop_assert!(got.is_err(), "{text}: {got:?}"),
        }
    }
}

// ---- the HTTP API, in process ---------------------------------------------------------------

/// Endpoints that take a body, with their methods.
const BODY_ENDPOINTS: &[(&str, &str)] = &[
    ("PUT", "/v1/connect/ca/sign"),
    ("POST", "/v1/agent/connect/authorize"),
    ("PUT", "/v1/agent/service/register"),
    ("PUT", "/v1/agent/check/register"),
    ("PUT", "/v1/agent/check/update/web-ttl"),
    ("POST", "/v1/connect/intentions"),
    (
        "PUT",
        "/v1/connect/intentions/exact?source=web&destination=db",
    ),
    (
        "PUT",
        "/v1/connect/intentions/00000000-0000-0000-0000-000000000000",
    ),
    ("PUT", "/v1/acl/policy"),
    ("PUT", "/v1/acl/token"),
    ("PUT", "/v1/acl/bootstrap"),
];

/// GET endpoints that take query parameters (and names in their paths).
const QUERY_ENDPOINTS: &[&str] = &[
    "/v1/catalog/services",
    "/v1/catalog/service/web",
    "/v1/health/service/web",
    "/v1/health/connect/web",
    "/v1/catalog/connect/web",
    "/v1/agent/services",
    "/v1/agent/checks",
    "/v1/agent/service/",
    "/v1/health/state/",
    "/v1/catalog/nodes",
    "/v1/catalog/node/web",
    "/v1/health/node/web",
    "/v1/health/checks/web",
    "/v1/health/state/any",
    "/v1/connect/intentions",
    "/v1/connect/intentions/match",
    "/v1/connect/intentions/check",
    "/v1/connect/intentions/exact",
    "/v1/connect/ca/roots",
    "/v1/agent/connect/ca/leaf/",
    "/v1/acl/tokens",
];

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn query_text() -> impl Strategy<Value = String> {
    let param = prop_oneof![
        3 => filter_text().prop_map(|f| format!("filter={}", encode(&f))),
        // `wait` and `index` make a blocking query: keep the wait short so the case ends.
        2 => duration_text().prop_map(|d| format!("wait={}", encode(&d))),
        1 => nasty_number().prop_map(|n| format!("index={}&wait=1ms", encode(&n))),
        1 => nasty_name().prop_map(|n| format!("dc={}", encode(&n))),
        1 => nasty_name().prop_map(|n| format!("token={}", encode(&n))),
        1 => (nasty_name(), nasty_name())
            .prop_map(|(s, d)| format!("source={}&destination={}", encode(&s), encode(&d))),
        1 => nasty_name().prop_map(|n| format!("by=source&name={}", encode(&n))),
        1 => "[a-z%=&?#0-9]{0,40}",
    ];
    prop::collection::vec(param, 0..4).prop_map(|p| p.join("&"))
}

/// Sends one request to the in-process API and insists on a well-formed answer below 500.
fn request(method: &str, path: &str, body: &[u8]) -> Result<u16, TestCaseError> {
    let body = String::from_utf8_lossy(body);
    let resp = cli_support::try_http(
        &fixture().http,
        method,
        path,
        &[],
        &body,
        Duration::from_secs(20),
    )
    .map_err(|e| TestCaseError::fail(format!("{method} {path}: no answer: {e}")))?;
    prop_assert!(
        resp.status < 500,
        "{method} {path} -> {}: {}",
        resp.status,
        resp.body
    );
    Ok(resp.status)
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn http_bodies_get_an_answer_below_500(
        endpoint in prop::sample::select(BODY_ENDPOINTS),
        body in body(),
    ) {
        request(endpoint.0, endpoint.1, &body)?;
    }

    #[test]
    fn http_queries_get_an_answer_below_500(
        endpoint in prop::sample::select(QUERY_ENDPOINTS),
        name in nasty_name(),
        query in query_text(),
    ) {
        let path = if endpoint.ends_with('/') {
            format!("{endpoint}{}", encode(&name).replace('+', "%20"))
        } else {
            endpoint.to_owned()
        };
        // A blocking query takes the first `wait` (as Consul's Go handlers do): one generated
        // before `index=` (say `wait=5h&index=99999999&wait=1ms`) would block for Consul's
        // ten-minute cap. Such a query gets a short wait first; the others keep theirs.
        let query = if query.contains("index=") || query.contains("hash=") {
            format!("wait=1ms&{query}")
        } else {
            query
        };
        request("GET", &format!("{path}?{query}"), b"")?;
    }
}
