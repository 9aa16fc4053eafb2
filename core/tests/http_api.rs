//! The HTTP API in-process: a real listener, Consul's paths and shapes, driven by our client
//! and by raw requests.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;

use connect_core::http::client::{ApiClient, ClientConfig, HttpEndpoint};
use connect_core::server::{Server, ServerConfig};
use reqwest::Method;
use serde_json::{Value, json};

async fn start(config: ServerConfig) -> (ApiClient, String) {
    let server = Server::start(config, Arc::new(connect_core::SystemClock)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        async move { axum::serve(listener, connect_core::http::api::router(server)).await },
    );
    let client = ApiClient::new(&ClientConfig {
        endpoint: HttpEndpoint::new(addr.clone()),
        ..Default::default()
    })
    .unwrap();
    (client, addr)
}

/// A plain HTTP client for raw requests; reqwest needs the one crypto provider named.
fn raw_client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}

#[tokio::test]
async fn roots_leaf_authorize_and_intentions_round_trip() {
    let (c, addr) = start(ServerConfig::dev()).await;
    let roots = c.get::<Value>("/v1/connect/ca/roots", &[]).await.unwrap();
    assert!(roots.index >= 1);
    let td = roots.value["TrustDomain"].as_str().unwrap().to_owned();
    assert_eq!(roots.value["Roots"][0]["Name"], "Consul CA Root Cert");
    let leaf = c
        .get::<Value>("/v1/agent/connect/ca/leaf/web", &[])
        .await
        .unwrap();
    assert_eq!(leaf.value["Service"], "web");
    assert!(
        leaf.value["PrivateKeyPEM"]
            .as_str()
            .unwrap()
            .contains("EC PRIVATE KEY")
    );
    // A second GET returns the cached leaf.
    let again = c
        .get::<Value>("/v1/agent/connect/ca/leaf/web", &[])
        .await
        .unwrap();
    assert_eq!(again.value["SerialNumber"], leaf.value["SerialNumber"]);

    let ok: Value = c
        .call(
            Method::PUT,
            "/v1/connect/intentions/exact",
            &[("source", "web".into()), ("destination", "db".into())],
            Some(&json!({"Action": "allow"})),
        )
        .await
        .unwrap();
    assert_eq!(ok, json!(true));
    let _: Value = c
        .call(
            Method::PUT,
            "/v1/connect/intentions/exact",
            &[("source", "*".into()), ("destination", "db".into())],
            Some(&json!({"action": "deny"})),
        )
        .await
        .unwrap();
    let web = format!("spiffe://{td}/ns/default/dc/dc1/svc/web");
    let api = format!("spiffe://{td}/ns/default/dc/dc1/svc/api");
    let a: Value = c
        .call(
            Method::POST,
            "/v1/agent/connect/authorize",
            &[],
            Some(&json!({"Target": "db", "ClientCertURI": web})),
        )
        .await
        .unwrap();
    assert_eq!(a["Authorized"], true);
    let d: Value = c
        .call(
            Method::POST,
            "/v1/agent/connect/authorize",
            &[],
            Some(&json!({"target": "db", "clientcerturi": api})),
        )
        .await
        .unwrap();
    assert_eq!(d["Authorized"], false);
    assert!(
        d["Reason"]
            .as_str()
            .unwrap()
            .starts_with("Matched L4 intention: DENY")
    );
    let m = c
        .get::<Value>(
            "/v1/connect/intentions/match",
            &[("by", "destination".into()), ("name", "db".into())],
        )
        .await
        .unwrap();
    let order: Vec<&str> = m.value["db"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["SourceName"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["web", "*"]);
    let chk = c
        .get::<Value>(
            "/v1/connect/intentions/check",
            &[("source", "api".into()), ("destination", "db".into())],
        )
        .await
        .unwrap();
    assert_eq!(chk.value, json!({"Allowed": false}));
    let list = c
        .get::<Value>(
            "/v1/connect/intentions",
            &[("filter", "SourceName == web".into())],
        )
        .await
        .unwrap();
    assert_eq!(list.value.as_array().unwrap().len(), 1);

    // Raw bad inputs: 4xx with a message, never 5xx.
    let http = raw_client();
    for (method, path, body) in [
        (
            "PUT",
            "/v1/connect/intentions/exact?source=web&destination=db",
            "{\"Action\": ",
        ),
        (
            "PUT",
            "/v1/connect/intentions/exact?source=web&destination=db",
            "{\"Action\": 7}",
        ),
        (
            "PUT",
            "/v1/connect/intentions/exact?source=web&destination=db",
            "{\"Action\": \"maybe\"}",
        ),
        ("GET", "/v1/connect/intentions?index=abc", ""),
        ("GET", "/v1/connect/intentions?wait=soon&index=1", ""),
        ("GET", "/v1/connect/intentions?filter=SourceName%20%3D", ""),
        ("GET", "/v1/no/such/path", ""),
        (
            "POST",
            "/v1/agent/connect/authorize",
            "{\"Target\": \"db\", \"ClientCertURI\": \"nope\"}",
        ),
        (
            "PUT",
            "/v1/connect/ca/configuration",
            "{\"Provider\": \"consul\", \"Config\": {\"LeafCertTTL\": \"1m\"}}",
        ),
        ("PUT", "/v1/agent/service/register", "{\"Name\": \"\"}"),
    ] {
        let resp = http
            .request(method.parse().unwrap(), format!("http://{addr}{path}"))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        assert!(
            status.is_client_error(),
            "{method} {path} {body:?} → {status} {text}"
        );
        assert!(!text.is_empty(), "{method} {path}: empty error body");
    }
    let big = "x".repeat(2 << 20);
    let resp = http
        .put(format!("http://{addr}/v1/agent/service/register"))
        .body(big)
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error(), "{}", resp.status());
}

#[tokio::test]
async fn blocking_queries_wake_on_change_and_time_out_with_the_same_index() {
    let (c, _) = start(ServerConfig::dev()).await;
    let first = c.get::<Value>("/v1/connect/intentions", &[]).await.unwrap();
    let c2 = c.clone();
    let idx = first.index;
    let waiter = tokio::spawn(async move {
        c2.get::<Value>(
            "/v1/connect/intentions",
            &[("index", idx.to_string()), ("wait", "10s".into())],
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    let _: Value = c
        .call(
            Method::PUT,
            "/v1/connect/intentions/exact",
            &[("source", "web".into()), ("destination", "db".into())],
            Some(&json!({"Action": "allow"})),
        )
        .await
        .unwrap();
    let woke = waiter.await.unwrap().unwrap();
    assert!(woke.index > idx);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let same = c
        .get::<Value>(
            "/v1/connect/intentions",
            &[("index", woke.index.to_string()), ("wait", "200ms".into())],
        )
        .await
        .unwrap();
    assert_eq!(same.index, woke.index);
}

/// `/v1/catalog/services` reports the services table's index but also watches nodes and
/// checks; a watcher on an idle agent passing back that index was answered at once, every
/// time (a busy loop). It must hold the query until something changes or `wait` passes,
/// and then wake on a service registration.
#[tokio::test]
async fn blocking_catalog_services_holds_on_an_idle_agent() {
    let (c, _) = start(ServerConfig::dev()).await;
    let first = c.get::<Value>("/v1/catalog/services", &[]).await.unwrap();
    let started = std::time::Instant::now();
    let same = c
        .get::<Value>(
            "/v1/catalog/services",
            &[("index", first.index.to_string()), ("wait", "1s".into())],
        )
        .await
        .unwrap();
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(900),
        "answered after {:?} without a change",
        started.elapsed()
    );
    assert_eq!(same.index, first.index);

    let c2 = c.clone();
    let idx = first.index;
    let waiter = tokio::spawn(async move {
        c2.get::<Value>(
            "/v1/catalog/services",
            &[("index", idx.to_string()), ("wait", "30s".into())],
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let _: Value = c
        .call(
            Method::PUT,
            "/v1/agent/service/register",
            &[],
            Some(&json!({"Name": "web", "Port": 8080})),
        )
        .await
        .unwrap();
    let woke = waiter.await.unwrap().unwrap();
    assert!(woke.index > idx);
    assert!(woke.value.get("web").is_some(), "{}", woke.value);
}

/// A body declared larger than the 1 MiB limit is refused at once with 413, without waiting
/// for bytes that never come (before, the request hung until the client gave up).
#[tokio::test]
async fn a_declared_oversized_body_is_refused_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, addr) = start(ServerConfig::dev()).await;
    let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
    s.write_all(
        b"PUT /v1/agent/service/register HTTP/1.1\r\nHost: x\r\n\
          Content-Length: 10737418240\r\n\r\n{}",
    )
    .await
    .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("no answer to a declared 10 GiB body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
}

#[tokio::test]
async fn acl_enforcement_over_http() {
    let mut cfg = ServerConfig::dev();
    cfg.acl_enabled = true;
    cfg.acl_default_policy = connect_core::acl::AclDefaultPolicy::Deny;
    cfg.acl_initial_management_token = Some("root".into());
    let (c, addr) = start(cfg).await;
    let http = raw_client();
    let config = format!("http://{addr}/v1/connect/ca/configuration");
    // The token in Consul's three places: none, X-Consul-Token, a bearer token, `?token=`.
    let get = |url: &str, header: Option<(&str, &str)>| {
        let mut req = http.get(url);
        if let Some((name, value)) = header {
            req = req.header(name, value);
        }
        req.send()
    };
    assert_eq!(get(&config, None).await.unwrap().status(), 403);
    let r = get(&config, Some(("X-Consul-Token", "root")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get(&config, Some(("Authorization", "Bearer root")))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = get(&format!("{config}?token=wrong"), None).await.unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.text().await.unwrap(), "ACL not found");
    let _ = c;
}

/// libconnect's JWT-SVID endpoints (`PUT /v1/agent/connect/jwt/sign/:service`, `POST
/// /v1/agent/connect/jwt/validate`), through an HTTP agent's service and directly: a token
/// needs `service:write` to sign; validation checks audience and signature.
#[tokio::test]
async fn jwt_svids_over_http() {
    use connect_core::agent::{Agent, AgentConfig};
    let mut cfg = ServerConfig::dev();
    cfg.acl_enabled = true;
    cfg.acl_default_policy = connect_core::acl::AclDefaultPolicy::Deny;
    cfg.acl_initial_management_token = Some("root".into());
    let (_c, addr) = start(cfg).await;
    let agent = Agent::new_async(AgentConfig {
        token: Some("root".into()),
        ..AgentConfig::http(HttpEndpoint::new(addr.clone()))
    })
    .await
    .unwrap();
    let web = agent.service("web").unwrap();
    let token = web.jwt_svid(&["db".to_owned()]).await.unwrap();
    let valid = agent.validate_jwt_svid(&token, "db").await.unwrap();
    assert!(
        valid.spiffe_id.ends_with("/ns/default/dc/dc1/svc/web"),
        "{valid:?}"
    );
    assert_eq!(valid.claims["aud"], "db");
    let err = agent.validate_jwt_svid(&token, "api").await.unwrap_err();
    assert_eq!(
        err.kind(),
        connect_core::ErrorKind::InvalidParameter,
        "{err}"
    );
    let err = web.jwt_svid(&[]).await.unwrap_err();
    assert_eq!(
        err.kind(),
        connect_core::ErrorKind::InvalidParameter,
        "{err}"
    );

    // Without a token that may write the service: refused.
    let http = raw_client();
    let r = http
        .put(format!("http://{addr}/v1/agent/connect/jwt/sign/web"))
        .body(r#"{"Audience": ["db"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("http://{addr}/v1/agent/connect/jwt/validate"))
        .body(json!({"Token": token, "Audience": "db"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["SpiffeID"], valid.spiffe_id);
}

/// The same in process (`Agent::dev`): the service's token validates with the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_svids_in_process() {
    let agent = connect_core::agent::Agent::new_async(connect_core::agent::AgentConfig::dev())
        .await
        .unwrap();
    let web = agent.service("web").unwrap();
    let token = web
        .jwt_svid(&["db".to_owned(), "api".to_owned()])
        .await
        .unwrap();
    for aud in ["db", "api"] {
        let v = agent.validate_jwt_svid(&token, aud).await.unwrap();
        assert!(v.spiffe_id.ends_with("/svc/web"));
    }
    assert!(agent.validate_jwt_svid("x.y.z", "db").await.is_err());
}
