//! `GET /v1/agent/connect/ca/leaf/:service` served from the agent cache: Consul's JSON
//! shape with the key, the cache headers, blocking with `?index`, and a fresh read after a
//! root rotation getting a leaf from the new root.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use connect_core::server::{Server, ServerConfig};
use serde_json::{Value, json};

async fn start() -> String {
    let server = Server::start(ServerConfig::dev(), Arc::new(connect_core::SystemClock)).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(
        async move { axum::serve(listener, connect_core::http::api::router(server)).await },
    );
    addr
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    reqwest::Client::new()
}

struct Got {
    status: u16,
    index: u64,
    cache: String,
    body: Value,
}

async fn get(addr: &str, path: &str) -> Got {
    let r = client()
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap();
    let header = |k: &str| {
        r.headers()
            .get(k)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default()
    };
    let (index, cache) = (header("x-consul-index"), header("x-cache"));
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    Got {
        status,
        index: index.parse().unwrap_or(0),
        cache,
        body: serde_json::from_str(&text).unwrap_or(Value::String(text)),
    }
}

fn signing_key(leaf: &Value) -> String {
    let chain =
        connect_core::certs::parse_pem_certificates(leaf["CertPEM"].as_str().unwrap()).unwrap();
    let info = connect_core::certs::CertInfo::from_der(&chain[0]).unwrap();
    connect_core::certs::colon_hex(&info.authority_key_id.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_has_consuls_shape_and_is_cached() {
    let addr = start().await;
    let first = get(&addr, "/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(first.status, 200, "{}", first.body);
    let leaf = &first.body;
    assert_eq!(leaf["Service"], "web");
    assert!(
        leaf["ServiceURI"]
            .as_str()
            .unwrap()
            .ends_with("/ns/default/dc/dc1/svc/web")
    );
    assert!(
        leaf["PrivateKeyPEM"]
            .as_str()
            .unwrap()
            .contains("EC PRIVATE KEY")
    );
    for k in [
        "SerialNumber",
        "CertPEM",
        "ValidAfter",
        "ValidBefore",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(!leaf[k].is_null(), "{k} missing: {leaf}");
    }
    assert!(first.index >= 1);
    assert_eq!(first.cache, "MISS");
    let again = get(&addr, "/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(again.cache, "HIT");
    assert_eq!(again.index, first.index);
    assert_eq!(again.body, first.body, "the same leaf and key");

    // Blocking on the current index waits (no renewal is due) and returns the same leaf.
    let started = Instant::now();
    let blocked = get(
        &addr,
        &format!(
            "/v1/agent/connect/ca/leaf/web?index={}&wait=300ms",
            first.index
        ),
    )
    .await;
    assert_eq!(blocked.status, 200, "{}", blocked.body);
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(blocked.index, first.index);
    assert_eq!(blocked.body["SerialNumber"], leaf["SerialNumber"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_read_after_a_root_rotation_gets_a_leaf_from_the_new_root() {
    let addr = start().await;
    let old = get(&addr, "/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(old.status, 200, "{}", old.body);
    let r = client()
        .put(format!("http://{addr}/v1/connect/ca/configuration"))
        .json(&json!({"Provider": "consul",
                      "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let roots = get(&addr, "/v1/connect/ca/roots").await.body;
    let active = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Active"] == true)
        .unwrap()["SigningKeyID"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(signing_key(&old.body), active);

    let new = get(&addr, "/v1/agent/connect/ca/leaf/web").await;
    assert_eq!(new.status, 200, "{}", new.body);
    assert_ne!(new.body["SerialNumber"], old.body["SerialNumber"]);
    assert_eq!(signing_key(&new.body), active);
    assert!(new.index > old.index);
}

/// A blocking read (`?index` far ahead, a 1 ms `wait`) of a leaf never issued: the cache has
/// no value when the wait passes. It answered 500 ("timed out before any value arrived");
/// Consul's agent answers with the first certificate once it is signed.
#[tokio::test]
async fn a_blocking_read_of_a_new_leaf_answers_with_the_first_certificate() {
    let addr = start().await;
    let got = get(
        &addr,
        "/v1/agent/connect/ca/leaf/fresh-name?index=999999&wait=1ms",
    )
    .await;
    assert_eq!(got.status, 200, "{}", got.body);
    assert_eq!(got.body["Service"], "fresh-name");
    assert!(got.index >= 1);
}
