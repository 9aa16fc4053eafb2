//! Hardening, ACL and names: SecretIDs hidden without `acl:write`, the ACL endpoints
//! when ACLs are off, `agent:read` on `/v1/agent/self`, no takeover of another service's
//! instance or check IDs, one service-name rule at every entry point, and only the `default`
//! namespace and partition. Driven through a real HTTP listener and through the `Server` and
//! `Agent` APIs the bindings call.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;

use connect_core::acl::AclDefaultPolicy;
use connect_core::agent::{Agent, AgentConfig};
use connect_core::ca::{SignPolicy, generate_leaf_request};
use connect_core::catalog::{HealthCheck, HealthStatus, ServiceRegistration};
use connect_core::certs::{CertInfo, parse_pem_certificates};
use connect_core::intentions::{Intention, IntentionAction};
use connect_core::server::{Server, ServerConfig};
use connect_core::spiffe::SERVICE_NAME_RULE;
use connect_core::{Error, ErrorKind};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const ROOT: &str = "b0d7a1c6-1111-4222-8333-944445555666";

fn acl_config() -> ServerConfig {
    let mut c = ServerConfig::dev();
    c.acl_enabled = true;
    c.acl_default_policy = AclDefaultPolicy::Deny;
    c.acl_initial_management_token = Some(ROOT.into());
    c.default_intention_policy = None;
    c
}

fn start_server(config: ServerConfig) -> Server {
    Server::start(config, Arc::new(connect_core::SystemClock)).unwrap()
}

/// Serves `server` on a loopback port; returns its base URL.
async fn serve(server: Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        async move { axum::serve(listener, connect_core::http::api::router(server)).await },
    );
    format!("http://{addr}")
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}

/// One request; the status and the body (JSON when it parses, else a string).
async fn req(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut r = http().request(method, format!("{base}{path}"));
    if let Some(t) = token {
        r = r.header("X-Consul-Token", t);
    }
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

/// Creates a policy with `rules` and a token linked to it (with the management token);
/// returns the token's SecretID.
async fn token_with(base: &str, name: &str, rules: &str) -> String {
    let (s, _) = req(
        base,
        Method::PUT,
        "/v1/acl/policy",
        Some(ROOT),
        Some(json!({"Name": name, "Rules": rules})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, t) = req(
        base,
        Method::PUT,
        "/v1/acl/token",
        Some(ROOT),
        Some(json!({"Description": name, "Policies": [{"Name": name}]})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    t["SecretID"].as_str().unwrap().to_owned()
}

// ---- SecretIDs ------------------------------------------------------------------------------

#[tokio::test]
async fn secret_ids_are_hidden_without_acl_write() {
    let base = serve(start_server(acl_config())).await;
    let reader = token_with(&base, "acl-reader", r#"acl = "read""#).await;

    let (s, list) = req(&base, Method::GET, "/v1/acl/tokens", Some(&reader), None).await;
    assert_eq!(s, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert!(list.len() >= 3, "{list:?}");
    for t in list {
        assert_eq!(t["SecretID"], "<hidden>", "{t}");
    }
    let text = serde_json::to_string(list).unwrap();
    assert!(!text.contains(ROOT) && !text.contains(&reader));

    // One by one, the management token's included.
    for t in list {
        let path = format!("/v1/acl/token/{}", t["AccessorID"].as_str().unwrap());
        let (s, one) = req(&base, Method::GET, &path, Some(&reader), None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(one["SecretID"], "<hidden>", "{one}");
        assert_eq!(one["AccessorID"], t["AccessorID"]);
    }

    // The caller's own token: it presented the secret, so it sees it (Consul's token/self).
    let (s, me) = req(
        &base,
        Method::GET,
        "/v1/acl/token/self",
        Some(&reader),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["SecretID"], reader.as_str());

    // acl:write sees the real secrets.
    let (s, list) = req(&base, Method::GET, "/v1/acl/tokens", Some(ROOT), None).await;
    assert_eq!(s, StatusCode::OK);
    let secrets: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["SecretID"].as_str().unwrap())
        .collect();
    assert!(secrets.contains(&ROOT) && secrets.contains(&reader.as_str()));
    assert!(!secrets.contains(&"<hidden>"));
}

// ---- ACLs disabled --------------------------------------------------------------------------

#[tokio::test]
async fn every_acl_endpoint_answers_acl_support_disabled_when_acls_are_off() {
    let base = serve(start_server(ServerConfig::dev())).await;
    let id = "6a1253d2-1785-24fd-91c2-f8e78c745512";
    let policy = json!({"Name": "p", "Rules": ""});
    let token = json!({"Description": "t"});
    let routes: Vec<(Method, String, Option<Value>)> = vec![
        (Method::PUT, "/v1/acl/bootstrap".into(), None),
        (Method::PUT, "/v1/acl/policy".into(), Some(policy.clone())),
        (Method::GET, "/v1/acl/policy/name/p".into(), None),
        (Method::GET, format!("/v1/acl/policy/{id}"), None),
        (Method::PUT, format!("/v1/acl/policy/{id}"), Some(policy)),
        (Method::DELETE, format!("/v1/acl/policy/{id}"), None),
        (Method::GET, "/v1/acl/policies".into(), None),
        (Method::PUT, "/v1/acl/token".into(), Some(token.clone())),
        (Method::GET, "/v1/acl/token/self".into(), None),
        (Method::GET, format!("/v1/acl/token/{id}"), None),
        (Method::PUT, format!("/v1/acl/token/{id}"), Some(token)),
        (Method::DELETE, format!("/v1/acl/token/{id}"), None),
        (Method::GET, "/v1/acl/tokens".into(), None),
    ];
    for (method, path, body) in routes {
        for tok in [None, Some("anything")] {
            let (s, b) = req(&base, method.clone(), &path, tok, body.clone()).await;
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{method} {path}: {b}");
            assert_eq!(b, "ACL support disabled", "{method} {path}");
        }
    }
    // Nothing was created behind the refusal.
    let server = start_server(ServerConfig::dev());
    let e = server.acl_token_list(None).unwrap_err();
    assert_eq!(e.to_string(), "ACL support disabled");
}

// ---- /v1/agent/self -------------------------------------------------------------------------

#[tokio::test]
async fn agent_self_needs_agent_read() {
    let base = serve(start_server(acl_config())).await;
    // Anonymous under default deny.
    let (s, b) = req(&base, Method::GET, "/v1/agent/self", None, None).await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{b}");
    // A service token and a node token are not agent tokens.
    let svc = token_with(&base, "svc", r#"service_prefix "" { policy = "write" }"#).await;
    let node = token_with(&base, "node", r#"node_prefix "" { policy = "write" }"#).await;
    for t in [&svc, &node] {
        let (s, _) = req(&base, Method::GET, "/v1/agent/self", Some(t), None).await;
        assert_eq!(s, StatusCode::FORBIDDEN);
    }
    let agent = token_with(&base, "agent", r#"agent_prefix "" { policy = "read" }"#).await;
    let denied = token_with(
        &base,
        "agent-denied",
        "agent_prefix \"\" {\n  policy = \"deny\"\n}",
    )
    .await;
    let (s, me) = req(&base, Method::GET, "/v1/agent/self", Some(&agent), None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    let (s, _) = req(&base, Method::GET, "/v1/agent/self", Some(&denied), None).await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // The management token (its builtin policy grants agent rules).
    let (s, _) = req(&base, Method::GET, "/v1/agent/self", Some(ROOT), None).await;
    assert_eq!(s, StatusCode::OK);

    // ACLs off: open, as in Consul.
    let dev = serve(start_server(ServerConfig::dev())).await;
    let (s, _) = req(&dev, Method::GET, "/v1/agent/self", None, None).await;
    assert_eq!(s, StatusCode::OK);
}

/// A service's own token has no `agent:read`; an HTTP-backend agent holding one still starts
/// (on the configured datacenter, default deny) and gets the leaves its token allows.
#[tokio::test]
async fn an_http_agent_with_a_service_token_starts_without_agent_read() {
    let base = serve(start_server(acl_config())).await;
    let web = token_with(&base, "web", r#"service "web" { policy = "write" }"#).await;
    let http = connect_core::http::client::HttpEndpoint::new(base.trim_start_matches("http://"));
    let config = AgentConfig {
        backend: connect_core::agent::AgentBackend::Http(http),
        token: Some(web),
        ..AgentConfig::dev()
    };
    let agent = Agent::new_async(config).await.unwrap();
    let leaf = agent.leaf("web").await.unwrap();
    let uri = CertInfo::from_der(leaf.cert()).unwrap().uris[0].clone();
    assert!(uri.ends_with("/ns/default/dc/dc1/svc/web"), "{uri}");
    let e = agent.leaf("db").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
    agent.close();
}

#[test]
fn a_data_dir_from_an_older_release_gets_the_current_management_rules() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = acl_config();
    config.data_dir = Some(dir.path().to_owned());
    let server = start_server(config.clone());
    // What an older release stored: the builtin policy without agent rules.
    let mut old = server
        .store()
        .view()
        .acl_policy(connect_core::acl::GLOBAL_MANAGEMENT_POLICY_ID)
        .cloned()
        .unwrap();
    old.rules = "acl = \"write\"\noperator = \"write\"\n".into();
    server.store().put_acl_policy(old).unwrap();
    drop(server);
    let server = start_server(config);
    server.agent_self_allowed(Some(ROOT)).unwrap();
    let stored = server
        .store()
        .view()
        .acl_policy(connect_core::acl::GLOBAL_MANAGEMENT_POLICY_ID)
        .cloned()
        .unwrap();
    assert_eq!(stored.rules, connect_core::acl::GLOBAL_MANAGEMENT_RULES);
}

// ---- Registration takeover ------------------------------------------------------------------

#[tokio::test]
async fn a_service_token_cannot_take_over_another_services_ids() {
    let server = start_server(acl_config());
    let base = serve(server.clone()).await;
    let web = token_with(&base, "web", r#"service "web" { policy = "write" }"#).await;
    let db = json!({"ID": "db-1", "Name": "db", "Port": 5432,
                    "Check": {"CheckID": "db-alive", "TTL": "30s"}});
    let (s, b) = req(
        &base,
        Method::PUT,
        "/v1/agent/service/register",
        Some(ROOT),
        Some(db),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{b}");
    let node = server.config().node_name.clone();
    server
        .store()
        .register_check(HealthCheck::node_check(
            &node,
            "node-alive",
            HealthStatus::Passing,
        ))
        .unwrap();

    let attempts = [
        // db's instance ID under web's name.
        json!({"ID": "db-1", "Name": "web", "Port": 1}),
        // db's check ID on web's instance.
        json!({"ID": "web-1", "Name": "web", "Port": 1,
               "Check": {"CheckID": "db-alive", "TTL": "30s"}}),
        json!({"ID": "web-1", "Name": "web", "Port": 1,
               "Checks": [{"TTL": "30s"}, {"CheckID": "db-alive", "TTL": "30s"}]}),
        // The node's own check.
        json!({"ID": "web-1", "Name": "web", "Port": 1,
               "Check": {"CheckID": "node-alive", "TTL": "30s"}}),
    ];
    for body in attempts {
        let (s, b) = req(
            &base,
            Method::PUT,
            "/v1/agent/service/register",
            Some(&web),
            Some(body.clone()),
        )
        .await;
        assert_eq!(s, StatusCode::FORBIDDEN, "{body}: {b}");
        assert!(b.as_str().unwrap().starts_with("Permission denied"), "{b}");
    }
    let view = server.store().view();
    let catalog = view.catalog();
    assert_eq!(catalog.service(&node, "db-1").unwrap().service, "db");
    assert_eq!(catalog.check(&node, "db-alive").unwrap().service_id, "db-1");
    assert_eq!(catalog.check(&node, "node-alive").unwrap().service_id, "");
    assert!(catalog.service(&node, "web-1").is_none());
    drop(view);

    // Its own IDs, again and again, are fine; and the management token may replace db's.
    for _ in 0..2 {
        let body = json!({"ID": "web-1", "Name": "web", "Port": 1,
                          "Check": {"CheckID": "web-alive", "TTL": "30s"}});
        let (s, b) = req(
            &base,
            Method::PUT,
            "/v1/agent/service/register",
            Some(&web),
            Some(body),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let body = json!({"ID": "db-1", "Name": "web", "Port": 1});
    let (s, _) = req(
        &base,
        Method::PUT,
        "/v1/agent/service/register",
        Some(ROOT),
        Some(body),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let view = server.store().view();
    assert_eq!(
        view.catalog().service(&node, "db-1").unwrap().service,
        "web"
    );
}

// ---- One name rule --------------------------------------------------------------------------

fn bad_names() -> Vec<String> {
    vec![
        "web\0".into(),
        "web\nX-Injected: 1".into(),
        "a/b".into(),
        "..".into(),
        ".".into(),
        "we b".into(),
        "x".repeat(10_000),
    ]
}

fn assert_name_error(e: &Error, what: &str) {
    assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{what}: {e}");
    let text = e.to_string();
    assert!(text.contains(SERVICE_NAME_RULE), "{what}: {text}");
    assert!(text.len() < 500, "{what}: message of {} bytes", text.len());
}

#[test]
fn registration_refuses_bad_names() {
    let server = start_server(ServerConfig::dev());
    for name in bad_names() {
        let e = server
            .register_service(None, ServiceRegistration::new(&name, 80))
            .unwrap_err();
        assert_name_error(&e, "register");
        let e = server
            .register_service(None, ServiceRegistration::sidecar_proxy(&name, 21000))
            .unwrap_err();
        assert_name_error(&e, "sidecar destination");
        let body = serde_json::to_vec(&json!({"Name": name, "Port": 80})).unwrap();
        let e: Error = ServiceRegistration::from_json(&body).unwrap_err().into();
        assert_name_error(&e, "register JSON");
    }
    assert!(
        server
            .store()
            .view()
            .catalog()
            .services()
            .all(|(_, s)| s.service != "a/b")
    );
    server
        .register_service(None, ServiceRegistration::new("web.v2_a-B", 80))
        .unwrap();
}

#[test]
fn intentions_refuse_bad_names_and_keep_the_wildcard() {
    let server = start_server(ServerConfig::dev());
    for name in bad_names() {
        for (src, dst) in [(name.as_str(), "db"), ("web", name.as_str())] {
            let ixn = Intention::new(src, dst, IntentionAction::Deny);
            let e = server.intention_create(None, ixn).unwrap_err();
            assert_name_error(&e, "intention create");
            let mut body = Intention::default();
            body.action = Some(IntentionAction::Deny);
            let e = server
                .intention_upsert_exact(None, src, dst, body)
                .unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{e}");
        }
    }
    assert!(server.intention_list(None, None).unwrap().value.is_empty());
    server
        .intention_create(None, Intention::new("*", "db", IntentionAction::Deny))
        .unwrap();
}

fn csr_for(server: &Server, path: &str) -> String {
    let uri = format!("spiffe://{}{path}", server.trust_domain());
    generate_leaf_request(&uri, &[], &[]).unwrap().csr_pem
}

fn cert_uri(pem: &str) -> String {
    let der = parse_pem_certificates(pem).unwrap();
    CertInfo::from_der(&der[0]).unwrap().uris[0].clone()
}

#[test]
fn csr_signing_refuses_bad_names_and_other_tenancies() {
    let server = start_server(ServerConfig::dev());
    for svc in [
        "a%2Fb",
        "web%00",
        "web%0A",
        "%2E%2E",
        "x%20y",
        &"x".repeat(300),
    ] {
        let csr = csr_for(&server, &format!("/ns/default/dc/dc1/svc/{svc}"));
        let e = server
            .sign(None, &csr, SignPolicy::ServiceOnly)
            .unwrap_err();
        assert_name_error(&e, svc);
    }
    for (path, says) in [
        ("/ns/prod/dc/dc1/svc/web", "namespaces are not supported"),
        ("/ns/*/dc/dc1/svc/web", "namespaces are not supported"),
        (
            "/ap/bizdev/ns/default/dc/dc1/svc/web",
            "admin partitions are not supported",
        ),
    ] {
        let e = server
            .sign(None, &csr_for(&server, path), SignPolicy::ServiceOnly)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{path}: {e}");
        assert!(e.to_string().contains(says), "{path}: {e}");
    }
    // Other spellings of the default identity are signed as the canonical URI, so the
    // certificate says exactly what `ServiceURI` says.
    let canonical = format!(
        "spiffe://{}/ns/default/dc/dc1/svc/web",
        server.trust_domain()
    );
    for path in [
        "/ns/default/dc/dc1/svc/web",
        "/ns/DEFAULT/dc/dc1/svc/web",
        "/ap/default/ns/default/dc/dc1/svc/web",
        "/ns/default/dc/dc1/svc/w%65b",
    ] {
        let issued = server
            .sign(None, &csr_for(&server, path), SignPolicy::ServiceOnly)
            .unwrap();
        assert_eq!(issued.service_uri, canonical, "{path}");
        assert_eq!(cert_uri(&issued.cert_pem), canonical, "{path}");
        assert_eq!(issued.namespace, "default");
        assert_eq!(issued.partition, "");
    }
}

#[test]
fn a_token_for_web_cannot_get_a_certificate_for_web_in_another_namespace() {
    let server = start_server(acl_config());
    let policy = server
        .acl_policy_create(
            Some(ROOT),
            connect_core::acl::Policy::new("web", r#"service "web" { policy = "write" }"#),
        )
        .unwrap();
    let token = server
        .acl_token_create(
            Some(ROOT),
            connect_core::acl::Token {
                policies: vec![connect_core::acl::PolicyLink::by_id(policy.id)],
                ..Default::default()
            },
        )
        .unwrap();
    let tok = Some(token.secret_id.as_str());
    for path in [
        "/ns/prod/dc/dc1/svc/web",
        "/ap/prod/ns/default/dc/dc1/svc/web",
    ] {
        let e = server
            .sign(tok, &csr_for(&server, path), SignPolicy::ServiceOnly)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{path}: {e}");
    }
    let ok = server
        .sign(
            tok,
            &csr_for(&server, "/ns/default/dc/dc1/svc/web"),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    assert_eq!(cert_uri(&ok.cert_pem), ok.service_uri);
}

#[test]
fn namespaces_and_partitions_are_refused_in_registration_and_intentions() {
    let server = start_server(ServerConfig::dev());
    for (body, says) in [
        (
            json!({"Name": "web", "Namespace": "prod"}),
            "namespaces are not supported",
        ),
        (
            json!({"Name": "web", "partition": "bizdev"}),
            "admin partitions are not supported",
        ),
        (
            json!({"Name": "web-proxy", "Kind": "connect-proxy", "Port": 21000,
                   "Proxy": {"DestinationServiceName": "web",
                             "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191,
                                            "DestinationNamespace": "prod"}]}}),
            "namespaces are not supported",
        ),
    ] {
        let e: Error = ServiceRegistration::from_json(&serde_json::to_vec(&body).unwrap())
            .unwrap_err()
            .into();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{body}");
        assert!(e.to_string().contains(says), "{body}: {e}");
    }
    assert!(ServiceRegistration::from_json(br#"{"Name": "web", "Namespace": "default"}"#).is_ok());
    for (src, dst) in [
        ("prod/web", "db"),
        ("web", "prod/db"),
        ("*/*", "db"),
        ("bizdev/default/web", "db"),
    ] {
        let mut body = Intention::default();
        body.action = Some(IntentionAction::Allow);
        let e = server
            .intention_upsert_exact(None, src, dst, body)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{src} => {dst}: {e}");
        assert!(e.to_string().contains("not supported"), "{e}");
    }
    assert!(server.intention_list(None, None).unwrap().value.is_empty());

    // Reads speak only of what a write could name.
    for (src, dst) in [
        ("prod/web", "db"),
        ("web", "bizdev/default/db"),
        ("a b", "db"),
    ] {
        let e = server.intention_check(None, src, dst).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{src} => {dst}: {e}");
        let e = server
            .intention_match(
                None,
                connect_core::intentions::MatchType::Source,
                &[src, dst],
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{src}: {e}");
    }
    // And a client certificate URI of another namespace gets no answer.
    let td = server.trust_domain();
    for uri in [
        format!("spiffe://{td}/ns/prod/dc/dc1/svc/web"),
        format!("spiffe://{td}/ap/bizdev/ns/default/dc/dc1/svc/web"),
    ] {
        let e = server.authorize(None, "db", &uri).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{uri}: {e}");
        assert!(e.to_string().contains("not supported"), "{e}");
    }
    let ok = format!("spiffe://{td}/ns/default/dc/dc1/svc/web");
    assert!(server.authorize(None, "db", &ok).is_ok());
}

/// `default` in another case is the default namespace, not one of its own: a deny written
/// as `DEFAULT/web` applies to `web`, and a URI spelling `ns/DEFAULT` is matched as `web`.
#[test]
fn default_in_any_case_is_the_one_namespace() {
    let server = start_server(ServerConfig::dev());
    let mut deny = Intention::default();
    deny.action = Some(IntentionAction::Deny);
    server
        .intention_upsert_exact(None, "DEFAULT/web", "Default/db", deny)
        .unwrap();
    let mut ixn = Intention::new("api", "db", IntentionAction::Deny);
    ixn.source_ns = "DEFAULT".into();
    ixn.destination_partition = "Default".into();
    server.intention_create(None, ixn).unwrap();
    for i in server.intention_list(None, None).unwrap().value {
        assert_eq!(
            (i.source_ns.as_str(), i.destination_ns.as_str()),
            ("default", "default")
        );
    }
    // The dev default is allow: only the intentions can deny.
    assert!(!server.intention_check(None, "web", "db").unwrap());
    assert!(!server.intention_check(None, "api", "db").unwrap());
    assert!(server.intention_check(None, "other", "db").unwrap());
    let td = server.trust_domain();
    for uri in [
        format!("spiffe://{td}/ns/default/dc/dc1/svc/web"),
        format!("spiffe://{td}/ns/DEFAULT/dc/dc1/svc/web"),
        format!("spiffe://{td}/ap/Default/ns/Default/dc/dc1/svc/web"),
    ] {
        assert!(
            !server.authorize(None, "db", &uri).unwrap().allowed,
            "{uri}"
        );
    }
}

#[tokio::test]
async fn the_leaf_endpoint_refuses_bad_names() {
    let base = serve(start_server(ServerConfig::dev())).await;
    for name in ["a%2Fb", "web%00", "web%0A", "x%20y", &"x".repeat(10_000)] {
        let path = format!("/v1/agent/connect/ca/leaf/{name}");
        let (s, b) = req(&base, Method::GET, &path, None, None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{name}: {b}");
        assert!(b.as_str().unwrap().contains(SERVICE_NAME_RULE), "{b}");
    }
    let (s, _) = req(
        &base,
        Method::GET,
        "/v1/agent/connect/ca/leaf/web",
        None,
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test]
async fn the_agent_refuses_bad_names_for_services_and_leaves() {
    let agent = Agent::new_async(AgentConfig::dev()).await.unwrap();
    for name in bad_names() {
        let e = agent.service(&name).unwrap_err();
        assert_name_error(&e, "Agent::service");
        let e = agent.leaf(&name).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "Agent::leaf: {e}");
    }
    agent.service("web").unwrap();
    agent.close();
}
