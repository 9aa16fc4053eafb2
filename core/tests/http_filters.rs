//! `?filter=` against a real `connect agent`: hostile expressions get a 400 and the agent
//! keeps serving; with ACLs on, the token is checked before the filter is parsed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use cli_support::{Agent, default_deny_config};

/// Every endpoint that takes `?filter=`.
const FILTERED: &[&str] = &[
    "/v1/agent/services",
    "/v1/catalog/service/web",
    "/v1/catalog/connect/web",
    "/v1/health/service/web",
    "/v1/health/connect/web",
    "/v1/connect/intentions",
    "/v1/agent/checks",
    "/v1/catalog/nodes",
    "/v1/health/node/web",
    "/v1/health/checks/web",
    "/v1/health/state/any",
];

fn with_filter(path: &str, expr: &str) -> String {
    let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    format!("{path}?filter={q}")
}

fn deep_parens() -> String {
    format!("{}A==b{}", "(".repeat(5000), ")".repeat(5000))
}

fn deep_nots() -> String {
    format!("{}A == b", "not ".repeat(2000))
}

fn many_regexes() -> String {
    vec![r#"X matches "a{30000}""#; 300].join(" or ")
}

fn register_web(agent: &Agent, headers: &[(&str, &str)]) {
    let r = agent.http(
        "PUT",
        "/v1/agent/service/register",
        headers,
        r#"{"Name":"web","ID":"web-1","Port":8080,"Connect":{"Native":true}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn hostile_filters_get_400_and_the_agent_keeps_serving() {
    let agent = Agent::start(&["-dev"]);
    register_web(&agent, &[]);
    for path in FILTERED {
        for (expr, limit) in [
            (deep_parens(), "more than 2048 tokens"),
            (deep_nots(), "nested too deeply"),
            (many_regexes(), "more than 16 'matches' clauses"),
        ] {
            let r = agent.http("GET", &with_filter(path, &expr), &[], "");
            assert_eq!(r.status, 400, "{path}: {}", r.body);
            assert!(
                r.body
                    .starts_with("Failed to create boolean expression evaluator")
                    && r.body.contains(limit),
                "{path}: {}",
                r.body
            );
        }
    }
    // Still alive, and filters still work.
    let r = agent.http(
        "GET",
        &with_filter("/v1/agent/services", r#"Service == "web""#),
        &[],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()["web-1"].is_object(), "{}", r.body);
    let r = agent.http(
        "GET",
        &with_filter("/v1/health/service/web", "Service.Port == 8081"),
        &[],
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json(), serde_json::json!([]));
    assert!(!agent.stderr().contains("overflow"), "{}", agent.stderr());
}

#[test]
fn with_default_deny_a_bad_token_is_refused_before_its_filter_is_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = default_deny_config(dir.path(), "root-secret-1234");
    let agent = Agent::start(&["-dev", "-config-file", cfg.to_str().unwrap()]);
    let root = [("X-Consul-Token", "root-secret-1234")];
    register_web(&agent, &root);
    let bad = [("X-Consul-Token", "not-a-token")];
    for path in FILTERED {
        for expr in [deep_parens(), many_regexes(), "Service ==".to_owned()] {
            let r = agent.http("GET", &with_filter(path, &expr), &bad, "");
            assert_eq!(r.status, 403, "{path}: {}", r.body);
            assert!(r.body.contains("ACL not found"), "{path}: {}", r.body);
            // A known token gets to the filter, and its error.
            let r = agent.http("GET", &with_filter(path, &expr), &root, "");
            assert_eq!(r.status, 400, "{path}: {}", r.body);
        }
    }
    let r = agent.http(
        "GET",
        &with_filter("/v1/catalog/service/web", "ServicePort == 8080"),
        &root,
        "",
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json().as_array().map(Vec::len), Some(1), "{}", r.body);
}
