//! Consul's catalog, health and agent-check endpoints over the real router: `?tag=` and
//! `?node-meta=`, ACL filtering answered as Consul answers it (200 with what the token may see,
//! `X-Consul-Results-Filtered-By-ACLs`), TTL check updates, maintenance mode, the node's
//! `serfHealth` check and UUID, `?filter=` selectors checked against the result type, and
//! hostile input to each new endpoint.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::sync::Arc;
use std::time::Duration;

use connect_core::catalog::{Node, ServiceRegistration};
use connect_core::server::{Server, ServerConfig};
use serde_json::{Value, json};

const ROOT: &str = "root-secret";
const FILTERED_HEADER: &str = "x-consul-results-filtered-by-acls";

struct Api {
    server: Server,
    base: String,
    http: reqwest::Client,
}

struct Resp {
    status: u16,
    filtered: bool,
    body: String,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn ids(&self, field: &str) -> Vec<String> {
        self.json()
            .as_array()
            .unwrap_or_else(|| panic!("not a list: {}", self.body))
            .iter()
            .map(|e| json_path(e, field).as_str().unwrap().to_owned())
            .collect()
    }
}

fn json_path<'a>(mut v: &'a Value, path: &str) -> &'a Value {
    for part in path.split('.') {
        v = &v[part];
    }
    v
}

async fn start(config: ServerConfig) -> Api {
    let server = Server::start(config, Arc::new(connect_core::SystemClock)).unwrap();
    serve(server).await
}

async fn serve(server: Server) -> Api {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = connect_core::http::api::router(server.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    Api {
        server,
        base: format!("http://{addr}"),
        http: reqwest::Client::new(),
    }
}

fn acl_config() -> ServerConfig {
    let mut cfg = ServerConfig::dev();
    cfg.acl_enabled = true;
    cfg.acl_default_policy = connect_core::acl::AclDefaultPolicy::Deny;
    cfg.acl_initial_management_token = Some(ROOT.into());
    cfg
}

impl Api {
    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body.to_owned());
        if let Some(t) = token {
            req = req.header("X-Consul-Token", t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        let filtered = r
            .headers()
            .get(FILTERED_HEADER)
            .is_some_and(|v| v == "true");
        Resp {
            status,
            filtered,
            body: r.text().await.unwrap(),
        }
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.call("GET", path, token, "").await
    }

    async fn put(&self, path: &str, token: Option<&str>, body: &str) -> Resp {
        self.call("PUT", path, token, body).await
    }

    async fn ok(&self, method: &str, path: &str, token: Option<&str>, body: &str) -> Resp {
        let r = self.call(method, path, token, body).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
        r
    }

    async fn register(&self, token: Option<&str>, body: Value) {
        self.ok(
            "PUT",
            "/v1/agent/service/register",
            token,
            &body.to_string(),
        )
        .await;
    }

    /// A token with `rules`, made with the management token.
    async fn token(&self, rules: &str) -> String {
        let p = self
            .ok(
                "PUT",
                "/v1/acl/policy",
                Some(ROOT),
                &json!({"Name": format!("p{}", rand_suffix()), "Rules": rules}).to_string(),
            )
            .await
            .json();
        let t = self
            .ok(
                "PUT",
                "/v1/acl/token",
                Some(ROOT),
                &json!({"Policies": [{"ID": p["ID"]}]}).to_string(),
            )
            .await
            .json();
        t["SecretID"].as_str().unwrap().to_owned()
    }
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn tag_and_node_meta_select_instances_on_catalog_and_health() {
    let api = start(ServerConfig::dev()).await;
    api.register(
        None,
        json!({"Name": "web", "ID": "web-1", "Port": 1, "Tags": ["v1", "primary"], "Connect": {"Native": true}}),
    )
    .await;
    api.register(
        None,
        json!({"Name": "web", "ID": "web-2", "Port": 2, "Tags": ["v2"], "Connect": {"Native": true}}),
    )
    .await;
    // A second node with metadata, written to the store as a catalog sync would.
    let mut node = Node::new("rack-node", "10.0.0.9", "dc1");
    node.meta.insert("rack".into(), "r1".into());
    node.meta.insert("zone".into(), "a:b".into());
    api.server.store().register_node(node).unwrap();
    let mut on_rack = ServiceRegistration::new("web", 3);
    on_rack.id = "web-3".into();
    on_rack.tags = vec!["v1".into()];
    on_rack.connect = Some(connect_core::catalog::ServiceConnect::native());
    api.server
        .store()
        .register_service("rack-node", &on_rack)
        .unwrap();

    for (base, id) in [
        ("/v1/catalog/service/web", "ServiceID"),
        ("/v1/catalog/connect/web", "ServiceID"),
        ("/v1/health/service/web", "Service.ID"),
        ("/v1/health/connect/web", "Service.ID"),
    ] {
        let all = api.ok("GET", base, None, "").await.ids(id);
        assert_eq!(all.len(), 3, "{base}: {all:?}");
        for (query, expected) in [
            ("tag=v1", &["web-1", "web-3"][..]),
            ("tag=v1&tag=primary", &["web-1"]),
            ("tag=v1&tag=v2", &[]),
            ("tag=nope", &[]),
            ("node-meta=rack:r1", &["web-3"]),
            ("node-meta=rack:r1&node-meta=zone:a:b", &["web-3"]),
            ("node-meta=rack:r2", &[]),
            ("node-meta=rack:r1&tag=v2", &[]),
            ("tag=v1&node-meta=rack:r1", &["web-3"]),
        ] {
            let mut got = api
                .ok("GET", &format!("{base}?{query}"), None, "")
                .await
                .ids(id);
            got.sort();
            assert_eq!(got, expected, "{base}?{query}");
        }
        for bad in ["node-meta=norack", "node-meta=:r1"] {
            let r = api.get(&format!("{base}?{bad}"), None).await;
            assert_eq!(r.status, 400, "{base}?{bad}: {}", r.body);
            assert!(r.body.contains("node-meta"), "{}", r.body);
        }
    }
    let r = api
        .ok("GET", "/v1/catalog/nodes?node-meta=rack:r1", None, "")
        .await;
    assert_eq!(r.ids("Node"), ["rack-node"]);
}

#[tokio::test]
async fn acl_filtering_answers_200_with_what_the_token_may_read() {
    let api = start(acl_config()).await;
    for (name, id) in [("web", "web-1"), ("db", "db-1")] {
        api.register(
            Some(ROOT),
            json!({"Name": name, "ID": id, "Port": 1, "Connect": {"Native": true}}),
        )
        .await;
    }
    let web_reader = api.token(r#"service "web" { policy = "read" }"#).await;
    let node_reader = api
        .token("node_prefix \"\" { policy = \"read\" }\nservice \"web\" { policy = \"read\" }")
        .await;
    let paths = [
        "/v1/catalog/service/",
        "/v1/catalog/connect/",
        "/v1/health/service/",
        "/v1/health/connect/",
    ];
    for base in paths {
        // The anonymous token may read nothing: an empty list, and no header (Consul never
        // tells an anonymous caller that something was hidden).
        let r = api.get(&format!("{base}db"), None).await;
        assert_eq!((r.status, r.body.as_str()), (200, "[]"), "{base}");
        assert!(!r.filtered, "{base}");
        // A token that may read web only: db is hidden, and it is told so.
        let r = api.get(&format!("{base}db"), Some(&web_reader)).await;
        assert_eq!(r.status, 200, "{base}: {}", r.body);
        assert_eq!(r.json(), json!([]), "{base}");
        if base.contains("/service/") {
            assert!(r.filtered, "{base}db with a web token");
        }
        // service:read alone does not show an instance: its node needs node:read too
        // (Consul API docs, Catalog and Health: `node:read,service:read`).
        let r = api.get(&format!("{base}web"), Some(&web_reader)).await;
        assert_eq!((r.status, r.json()), (200, json!([])), "{base}: {}", r.body);
        assert!(
            r.filtered,
            "{base}web: the node is hidden, and the token is told"
        );
        let r = api.get(&format!("{base}web"), Some(&node_reader)).await;
        assert_eq!(r.json().as_array().unwrap().len(), 1, "{base}: {}", r.body);
        assert!(!r.filtered, "{base}web: nothing hidden");
        // The management token sees everything; an unknown token is refused.
        let r = api.get(&format!("{base}db"), Some(ROOT)).await;
        assert_eq!(r.json().as_array().unwrap().len(), 1, "{base}");
        let r = api.get(&format!("{base}db"), Some("not-a-token")).await;
        assert_eq!(r.status, 403, "{base}: {}", r.body);
    }
    let r = api
        .ok("GET", "/v1/catalog/services", Some(&web_reader), "")
        .await;
    assert_eq!(r.json(), json!({"web": []}));
    assert!(r.filtered);
    let r = api.ok("GET", "/v1/catalog/services", None, "").await;
    assert_eq!(r.json(), json!({}));
    assert!(!r.filtered);
    // Checks and nodes follow the same rule: node checks need node:read.
    let r = api
        .ok("GET", "/v1/health/state/any", Some(&web_reader), "")
        .await;
    assert_eq!(
        r.json(),
        json!([]),
        "no check of web yet, serfHealth hidden"
    );
    assert!(r.filtered);
    let r = api.ok("GET", "/v1/catalog/nodes", None, "").await;
    assert_eq!(r.json(), json!([]));
    let r = api.ok("GET", "/v1/catalog/nodes", Some(ROOT), "").await;
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    let r = api
        .ok(
            "GET",
            "/v1/catalog/node/dev-node-name-placeholder",
            Some(&node_reader),
            "",
        )
        .await;
    assert_eq!(r.body, "null");
    let node = api.server.config().node_name.clone();
    let r = api
        .ok(
            "GET",
            &format!("/v1/catalog/node/{node}"),
            Some(&node_reader),
            "",
        )
        .await;
    let services = r.json()["Services"].clone();
    assert_eq!(
        services.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["web-1"]
    );
    assert!(r.filtered, "db-1 hidden");
    let r = api
        .ok("GET", &format!("/v1/catalog/node/{node}"), None, "")
        .await;
    assert_eq!(r.body, "null", "the anonymous token may not read the node");
    assert!(!r.filtered);
    let r = api
        .ok(
            "GET",
            &format!("/v1/catalog/node/{node}"),
            Some(&web_reader),
            "",
        )
        .await;
    assert_eq!(r.body, "null");
    assert!(r.filtered, "a known token is told the node is hidden");
    let r = api.ok("GET", "/v1/agent/members", None, "").await;
    assert_eq!(r.json(), json!([]));
    let r = api
        .ok("GET", "/v1/agent/members", Some(&node_reader), "")
        .await;
    assert_eq!(r.json()[0]["Name"], json!(node));
}

#[tokio::test]
async fn ttl_checks_are_turned_by_pass_warn_fail_and_update() {
    let api = start(ServerConfig::dev()).await;
    api.register(
        None,
        json!({"Name": "web", "ID": "web-1", "Port": 1,
               "Check": {"CheckID": "web-ttl", "TTL": "30s"}}),
    )
    .await;
    let passing = || async {
        api.ok("GET", "/v1/health/service/web?passing=1", None, "")
            .await
            .ids("Service.ID")
    };
    let status = || async {
        let r = api
            .ok("GET", "/v1/health/checks/web", None, "")
            .await
            .json();
        (
            r[0]["Status"].as_str().unwrap().to_owned(),
            r[0]["Output"].as_str().unwrap().to_owned(),
        )
    };
    assert!(
        passing().await.is_empty(),
        "a new TTL check starts critical"
    );
    api.ok(
        "PUT",
        "/v1/agent/check/pass/web-ttl?note=all%20good",
        None,
        "",
    )
    .await;
    assert_eq!(passing().await, ["web-1"]);
    assert_eq!(status().await, ("passing".into(), "all good".into()));
    api.ok("PUT", "/v1/agent/check/warn/web-ttl?note=slow", None, "")
        .await;
    assert!(passing().await.is_empty(), "warning is not passing");
    assert_eq!(status().await, ("warning".into(), "slow".into()));
    api.ok("PUT", "/v1/agent/check/fail/web-ttl", None, "")
        .await;
    assert_eq!(status().await, ("critical".into(), String::new()));
    api.ok(
        "PUT",
        "/v1/agent/check/update/web-ttl",
        None,
        r#"{"Status": "passing", "Output": "via update"}"#,
    )
    .await;
    assert_eq!(passing().await, ["web-1"]);
    assert_eq!(status().await, ("passing".into(), "via update".into()));
    // The state endpoint and the node's view agree.
    let r = api.ok("GET", "/v1/health/state/passing", None, "").await;
    let mut ids = r.ids("CheckID");
    ids.sort();
    assert_eq!(ids, ["serfHealth", "web-ttl"]);
    assert_eq!(
        api.ok("GET", "/v1/health/state/critical", None, "")
            .await
            .json(),
        json!([])
    );
    // Output is cut at Consul's 4 KiB and says so.
    let long = "x".repeat(10_000);
    api.ok(
        "PUT",
        "/v1/agent/check/update/web-ttl",
        None,
        &json!({"Status": "passing", "Output": long}).to_string(),
    )
    .await;
    let (_, out) = status().await;
    assert!(
        out.ends_with("... (captured 4096 of 10000 bytes)"),
        "{}",
        &out[4000..]
    );

    // Hostile and wrong input: clear 4xx, nothing changed.
    for (method, path, body, code, needle) in [
        (
            "PUT",
            "/v1/agent/check/pass/nope",
            "",
            404,
            "Unknown check ID",
        ),
        (
            "PUT",
            "/v1/agent/check/update/nope",
            r#"{"Status":"passing"}"#,
            404,
            "Unknown check ID",
        ),
        (
            "PUT",
            "/v1/agent/check/update/web-ttl",
            r#"{"Status":"great"}"#,
            400,
            "Invalid check status: 'great'",
        ),
        (
            "PUT",
            "/v1/agent/check/update/web-ttl",
            r#"{"Output":"x"}"#,
            400,
            "Invalid check status",
        ),
        (
            "PUT",
            "/v1/agent/check/update/web-ttl",
            "[1,2",
            400,
            "Request decode failed",
        ),
        ("GET", "/v1/agent/check/pass/web-ttl", "", 405, ""),
        (
            "PUT",
            "/v1/agent/check/pass/serfHealth",
            "",
            400,
            "does not have associated TTL",
        ),
    ] {
        let r = api.call(method, path, None, body).await;
        assert_eq!(r.status, code, "{method} {path}: {}", r.body);
        assert!(r.body.contains(needle), "{path}: {}", r.body);
    }
    let huge = format!(
        r#"{{"Status":"passing","Output":"{}"}}"#,
        "y".repeat(2 << 20)
    );
    let r = api.put("/v1/agent/check/update/web-ttl", None, &huge).await;
    assert_eq!(r.status, 413, "{}", r.body);
    assert_eq!(status().await.0, "passing");
}

#[tokio::test]
async fn ttl_updates_need_service_write_on_the_checks_service() {
    let api = start(acl_config()).await;
    api.register(
        Some(ROOT),
        json!({"Name": "web", "ID": "web-1", "Port": 1, "Check": {"CheckID": "web-ttl", "TTL": "30s"}}),
    )
    .await;
    let web_reader = api.token(r#"service "web" { policy = "read" }"#).await;
    let db_writer = api.token(r#"service "db" { policy = "write" }"#).await;
    let web_writer = api.token(r#"service "web" { policy = "write" }"#).await;
    for token in [None, Some(web_reader.as_str()), Some(db_writer.as_str())] {
        for path in [
            "/v1/agent/check/pass/web-ttl",
            "/v1/agent/service/maintenance/web-1?enable=true",
            "/v1/agent/check/deregister/web-ttl",
        ] {
            let r = api.put(path, token, "").await;
            assert_eq!(r.status, 403, "{path} {token:?}: {}", r.body);
        }
    }
    let r = api
        .put("/v1/agent/check/pass/web-ttl", Some("not-a-token"), "")
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "ACL not found");
    api.ok("PUT", "/v1/agent/check/pass/web-ttl", Some(&web_writer), "")
        .await;
    let r = api
        .ok("GET", "/v1/health/service/web?passing", Some(ROOT), "")
        .await;
    assert_eq!(r.ids("Service.ID"), ["web-1"]);
    // A node check needs node:write.
    let body = json!({"Name": "disk", "TTL": "10s"}).to_string();
    let r = api
        .put("/v1/agent/check/register", Some(&web_writer), &body)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    api.ok("PUT", "/v1/agent/check/register", Some(ROOT), &body)
        .await;
    let r = api
        .put("/v1/agent/check/pass/disk", Some(&web_writer), "")
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    // Taking over web's check ID from another service's write is refused.
    api.register(Some(ROOT), json!({"Name": "db", "ID": "db-1", "Port": 2}))
        .await;
    let steal = json!({"Name": "x", "ID": "web-ttl", "ServiceID": "db-1", "TTL": "5s"}).to_string();
    let r = api
        .put("/v1/agent/check/register", Some(&db_writer), &steal)
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
}

#[tokio::test]
async fn agent_check_register_deregister_and_maintenance() {
    let api = start(ServerConfig::dev()).await;
    api.register(
        None,
        json!({"Name": "web", "ID": "web-1", "Port": 1, "Tags": ["t"]}),
    )
    .await;
    // A service check registered on its own, passing from the start, and a node check.
    api.ok(
        "PUT",
        "/v1/agent/check/register",
        None,
        r#"{"name": "web alive", "ServiceID": "web-1", "TTL": "10s", "Status": "passing", "Notes": "n"}"#,
    )
    .await;
    api.ok(
        "PUT",
        "/v1/agent/check/register",
        None,
        r#"{"Name": "disk", "CheckID": "disk-ok", "TTL": "1m"}"#,
    )
    .await;
    let checks = api.ok("GET", "/v1/agent/checks", None, "").await.json();
    let mine = &checks["web alive"];
    assert_eq!(mine["ServiceID"], "web-1");
    assert_eq!(mine["ServiceName"], "web");
    assert_eq!(mine["ServiceTags"], json!(["t"]));
    assert_eq!(mine["Status"], "passing");
    assert_eq!(mine["Notes"], "n");
    assert_eq!(mine["Type"], "ttl");
    assert_eq!(checks["disk-ok"]["ServiceID"], "");
    assert_eq!(checks["disk-ok"]["Status"], "critical");
    assert_eq!(checks["serfHealth"]["Status"], "passing");
    let node = api.server.config().node_name.clone();
    let r = api
        .ok("GET", &format!("/v1/health/node/{node}"), None, "")
        .await;
    let mut ids = r.ids("CheckID");
    ids.sort();
    assert_eq!(ids, ["disk-ok", "serfHealth", "web alive"]);
    assert_eq!(
        api.ok("GET", "/v1/health/node/nowhere", None, "")
            .await
            .json(),
        json!([])
    );
    // The node check is critical: web is not passing until it is deregistered.
    let passing = || async {
        api.ok("GET", "/v1/health/service/web?passing", None, "")
            .await
            .ids("Service.ID")
    };
    assert!(passing().await.is_empty());
    api.ok("PUT", "/v1/agent/check/deregister/disk-ok", None, "")
        .await;
    assert_eq!(passing().await, ["web-1"]);

    // Maintenance mode adds Consul's critical check, with the reason, and takes it away.
    api.ok(
        "PUT",
        "/v1/agent/service/maintenance/web-1?enable=true&reason=upgrading",
        None,
        "",
    )
    .await;
    assert!(passing().await.is_empty());
    let checks = api.ok("GET", "/v1/agent/checks", None, "").await.json();
    let maint = &checks["_service_maintenance:web-1"];
    assert_eq!(maint["Status"], "critical");
    assert_eq!(maint["Notes"], "upgrading");
    assert_eq!(maint["Name"], "Service Maintenance Mode");
    assert_eq!(maint["ServiceID"], "web-1");
    api.ok(
        "PUT",
        "/v1/agent/service/maintenance/web-1?enable=false",
        None,
        "",
    )
    .await;
    assert_eq!(passing().await, ["web-1"]);
    api.ok(
        "PUT",
        "/v1/agent/service/maintenance/web-1?enable=true",
        None,
        "",
    )
    .await;
    let checks = api.ok("GET", "/v1/agent/checks", None, "").await.json();
    assert!(
        checks["_service_maintenance:web-1"]["Notes"]
            .as_str()
            .unwrap()
            .starts_with("Maintenance mode is enabled for this service, but no reason")
    );

    // Hostile input: clear 4xx.
    for (path, body, code, needle) in [
        (
            "/v1/agent/service/maintenance/web-1",
            "",
            400,
            "Missing value for enable",
        ),
        (
            "/v1/agent/service/maintenance/web-1?enable=maybe",
            "",
            400,
            "Invalid value for enable",
        ),
        (
            "/v1/agent/service/maintenance/nope?enable=true",
            "",
            404,
            "Unknown service ID",
        ),
        (
            "/v1/agent/check/register",
            r#"{"TTL": "10s"}"#,
            400,
            "Missing check name",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "h", "HTTP": "http://x", "Interval": "1s"}"#,
            400,
            "HTTP checks are not supported",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "h"}"#,
            400,
            "TTL must be set",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "h", "TTL": "soon"}"#,
            400,
            "invalid TTL",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "h", "TTL": "1s", "Status": "great"}"#,
            400,
            "invalid Status",
        ),
        (
            "/v1/agent/check/register",
            r#"{"Name": "h", "TTL": "1s", "ServiceID": "nope"}"#,
            404,
            "Unknown service ID",
        ),
        (
            "/v1/agent/check/register",
            "[]",
            400,
            "expected a JSON object",
        ),
        ("/v1/agent/check/register", "{", 400, "invalid"),
        (
            "/v1/agent/check/deregister/nope",
            "",
            404,
            "Unknown check ID",
        ),
    ] {
        let r = api.put(path, None, body).await;
        assert_eq!(r.status, code, "{path} {body}: {}", r.body);
        assert!(r.body.contains(needle), "{path} {body}: {}", r.body);
    }
    let huge = format!(
        r#"{{"Name":"h","TTL":"1s","Notes":"{}"}}"#,
        "n".repeat(2 << 20)
    );
    let r = api.put("/v1/agent/check/register", None, &huge).await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn the_new_read_endpoints_answer_consuls_shapes() {
    let api = start(ServerConfig::dev()).await;
    api.register(
        None,
        json!({"Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v1"], "Meta": {"env": "prod"}}),
    )
    .await;
    let node = api.server.config().node_name.clone();

    let svc = api
        .ok("GET", "/v1/agent/service/web-1", None, "")
        .await
        .json();
    assert_eq!(svc["ID"], "web-1");
    assert_eq!(svc["Service"], "web");
    assert_eq!(svc["Port"], 8080);
    assert_eq!(svc["Meta"], json!({"env": "prod"}));
    for bad in ["nope", "%00", "a%2Fb", &"x".repeat(4096)] {
        let r = api.get(&format!("/v1/agent/service/{bad}"), None).await;
        assert_eq!(r.status, 404, "{bad}: {}", r.body);
    }
    let r = api.get("/v1/agent/service/nope", None).await;
    assert_eq!(r.body, "unknown service ID: nope");

    let nodes = api.ok("GET", "/v1/catalog/nodes", None, "").await.json();
    assert_eq!(nodes.as_array().unwrap().len(), 1);
    assert_eq!(nodes[0]["Node"], json!(node));
    let one = api
        .ok("GET", &format!("/v1/catalog/node/{node}"), None, "")
        .await
        .json();
    assert_eq!(one["Node"]["Node"], json!(node));
    assert_eq!(one["Services"]["web-1"]["Service"], "web");
    assert_eq!(
        api.ok("GET", "/v1/catalog/node/nope", None, "").await.body,
        "null"
    );

    let members = api.ok("GET", "/v1/agent/members", None, "").await.json();
    assert_eq!(members[0]["Name"], json!(node));
    assert_eq!(members[0]["Status"], 1);
    assert_eq!(members[0]["Tags"]["dc"], "dc1");

    assert_eq!(
        api.ok("GET", "/v1/status/peers", None, "").await.json(),
        json!(["127.0.0.1:8300"])
    );
    assert_eq!(
        api.ok("GET", "/v1/coordinate/nodes", None, "").await.json(),
        json!([])
    );
    assert_eq!(
        api.ok("GET", "/v1/catalog/datacenters", None, "")
            .await
            .json(),
        json!(["dc1"])
    );
    let r = api.get("/v1/health/state/bogus", None).await;
    assert_eq!((r.status, r.body.as_str()), (400, "Bad check state"));
    let any = api.ok("GET", "/v1/health/state/any", None, "").await;
    assert_eq!(any.ids("CheckID"), ["serfHealth"]);
    assert_eq!(
        api.ok("GET", "/v1/health/checks/web", None, "")
            .await
            .json(),
        json!([])
    );
    // Blocking works on the new reads too: a check registered later wakes a waiting read.
    let index = {
        let r = api
            .http
            .get(format!("{}/v1/health/checks/web", api.base))
            .send()
            .await
            .unwrap();
        r.headers()["x-consul-index"].to_str().unwrap().to_owned()
    };
    let waiter = {
        let url = format!("{}/v1/health/checks/web?index={index}&wait=20s", api.base);
        let http = api.http.clone();
        tokio::spawn(async move { http.get(url).send().await.unwrap().text().await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiter.is_finished());
    api.ok(
        "PUT",
        "/v1/agent/check/register",
        None,
        r#"{"Name": "web ttl", "ServiceID": "web-1", "TTL": "5s"}"#,
    )
    .await;
    let woke: Value = serde_json::from_str(&waiter.await.unwrap()).unwrap();
    assert_eq!(woke[0]["CheckID"], "web ttl");
}

#[tokio::test]
async fn health_entries_carry_serf_health_and_a_stable_node_uuid() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServerConfig::dev();
    cfg.data_dir = Some(dir.path().to_owned());
    // The ID is made once, on the first start, and kept in the store across restarts.
    let first = Server::start(cfg.clone(), Arc::new(connect_core::SystemClock)).unwrap();
    let node = first.config().node_name.clone();
    let id = first
        .store()
        .view()
        .catalog()
        .node(&node)
        .unwrap()
        .id
        .clone();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    first
        .register_service(None, ServiceRegistration::new("web", 1))
        .unwrap();
    drop(first);
    let server = Server::start(cfg, Arc::new(connect_core::SystemClock)).unwrap();
    let api = serve(server).await;

    let entry = api
        .ok("GET", "/v1/health/service/web", None, "")
        .await
        .json()[0]
        .clone();
    assert_eq!(entry["Node"]["ID"], json!(id));
    // One serfHealth after the restart, not two.
    assert_eq!(entry["Checks"].as_array().unwrap().len(), 1, "{entry}");
    let serf = &entry["Checks"][0];
    assert_eq!(serf["CheckID"], "serfHealth");
    assert_eq!(serf["Name"], "Serf Health Status");
    assert_eq!(serf["Status"], "passing");
    assert_eq!(serf["ServiceID"], "");
    assert_eq!(serf["Node"], json!(node));
    // Passing with only serfHealth: the instance is in `?passing`.
    let passing = api
        .ok("GET", "/v1/health/service/web?passing", None, "")
        .await;
    assert_eq!(passing.ids("Service.ID"), ["web"]);
    let row = api
        .ok("GET", "/v1/catalog/service/web", None, "")
        .await
        .json();
    assert_eq!(row[0]["ID"], json!(id));
    let nodes = api.ok("GET", "/v1/catalog/nodes", None, "").await.json();
    assert_eq!(nodes[0]["ID"], json!(id));
}

#[tokio::test]
async fn unknown_filter_selectors_are_refused_naming_the_selector() {
    let api = start(ServerConfig::dev()).await;
    api.register(None, json!({"Name": "web", "ID": "web-1", "Port": 1, "Meta": {"env": "prod"}, "Connect": {"Native": true}}))
        .await;
    let node = api.server.config().node_name.clone();
    let health_node = format!("/v1/health/node/{node}");
    // Each endpoint with a selector it has and one it has not.
    for (path, good, bad) in [
        ("/v1/agent/services", "Meta.env == prod", "Bogus"),
        ("/v1/agent/checks", "Status == passing", "Service"),
        (
            "/v1/catalog/service/web",
            "ServiceMeta.env == prod",
            "Service.ID",
        ),
        ("/v1/catalog/connect/web", "ServicePort == 1", "Port"),
        (
            "/v1/health/service/web",
            "Service.Meta.env == prod",
            "ServiceName",
        ),
        ("/v1/health/connect/web", "Node.Node != x", "Node.Bogus"),
        ("/v1/health/checks/web", "ServiceName == web", "Checks"),
        ("/v1/health/state/any", "CheckID == serfHealth", "Foo.Bar"),
        (health_node.as_str(), "Name != x", "Nodes"),
        ("/v1/catalog/nodes", "Meta.rack is empty", "Meta.rack.x"),
        ("/v1/connect/intentions", "SourceName == web", "Source"),
    ] {
        let r = api
            .get(&format!("{path}?filter={}", encode(good)), None)
            .await;
        assert_eq!(r.status, 200, "{path} {good}: {}", r.body);
        let r = api
            .get(
                &format!("{path}?filter={}", encode(&format!("{bad} == x"))),
                None,
            )
            .await;
        assert_eq!(r.status, 400, "{path} {bad}: {}", r.body);
        assert_eq!(
            r.body,
            format!(
                "Failed to create boolean expression evaluator: Selector \"{bad}\" is not valid"
            ),
            "{path}"
        );
    }
    // Selectors inside lists and maps, and in every clause.
    for ok in [
        "Checks.Status == passing",
        "\"passing\" in Checks.Status",
        "Service.TaggedAddresses.lan.Port == 1",
        "Service.Proxy.Upstreams.DestinationName == db",
        "Node.TaggedAddresses.wan is not empty",
        "service.meta.env == prod",
    ] {
        let r = api
            .get(
                &format!("/v1/health/service/web?filter={}", encode(ok)),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{ok}: {}", r.body);
    }
    let r = api
        .get(
            &format!(
                "/v1/health/service/web?filter={}",
                encode("Service.ID == web-1 and (not Checks.Bogus == x)")
            ),
            None,
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("\"Checks.Bogus\""), "{}", r.body);

    // A selector through a list names each element's value: web-2's TTL check starts
    // critical, so `Checks.Status == critical` selects it and `!=` selects web-1.
    api.register(
        None,
        json!({"Name": "web", "ID": "web-2", "Port": 2, "Check": {"CheckID": "web-2-ttl", "TTL": "30s"}}),
    )
    .await;
    for (expr, want) in [
        ("Checks.Status == critical", vec!["web-2"]),
        ("Checks.Status != critical", vec!["web-1"]),
        ("\"critical\" in Checks.Status", vec!["web-2"]),
        ("Checks.CheckID == serfHealth", vec!["web-1", "web-2"]),
    ] {
        let r = api
            .get(
                &format!("/v1/health/service/web?filter={}", encode(expr)),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{expr}: {}", r.body);
        let mut ids = r.ids("Service.ID");
        ids.sort();
        assert_eq!(ids, want, "{expr}");
    }
}

/// In a real `connect agent`, a TTL check not updated within its TTL turns critical with
/// Consul's output, and the next update brings it back.
#[test]
fn a_ttl_check_not_updated_in_time_turns_critical_in_connect_agent() {
    let agent = cli_support::Agent::start(&["-dev"]);
    let r = agent.http(
        "PUT",
        "/v1/agent/service/register",
        &[],
        r#"{"Name": "web", "ID": "web-1", "Port": 1, "Check": {"CheckID": "web-ttl", "TTL": "1s"}}"#,
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let state = || {
        let r = agent.http("GET", "/v1/health/checks/web", &[], "");
        let v: Value = serde_json::from_str(&r.body).unwrap();
        (
            v[0]["Status"].as_str().unwrap().to_owned(),
            v[0]["Output"].as_str().unwrap().to_owned(),
        )
    };
    let r = agent.http("PUT", "/v1/agent/check/pass/web-ttl?note=up", &[], "");
    assert_eq!(r.status, 200, "{}", r.body);
    let passed = std::time::Instant::now();
    assert_eq!(state(), ("passing".into(), "up".into()));
    let deadline = passed + std::time::Duration::from_secs(10);
    while state().0 == "passing" {
        assert!(
            std::time::Instant::now() < deadline,
            "the TTL never expired"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let took = passed.elapsed();
    assert_eq!(state(), ("critical".into(), "TTL expired".into()));
    assert!(
        took >= std::time::Duration::from_millis(950),
        "expired after {took:?}"
    );
    assert!(
        took < std::time::Duration::from_secs(3),
        "expired after {took:?}"
    );
    let r = agent.http("GET", "/v1/health/service/web?passing", &[], "");
    assert_eq!(r.body, "[]");
    agent.http("PUT", "/v1/agent/check/pass/web-ttl", &[], "");
    assert_eq!(state().0, "passing");
    eprintln!("TTL 1s expired after {took:?}");
}

/// `GET /v1/agent/service/:id` carries Consul's `ContentHash` (body and header), and
/// `?hash=` blocks until the instance changes, or answers the same hash when the wait ends.
#[tokio::test]
async fn agent_service_content_hash_blocks_until_the_instance_changes() {
    let api = Arc::new(start(ServerConfig::dev()).await);
    let reg = |tags: Value| json!({"Name": "web", "ID": "web-1", "Port": 1, "Tags": tags});
    api.register(None, reg(json!(["v1"]))).await;
    let r = api.ok("GET", "/v1/agent/service/web-1", None, "").await;
    let hash = r.json()["ContentHash"].as_str().unwrap().to_owned();
    assert_eq!(hash.len(), 16, "{hash}");
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{hash}");
    // The same content, the same hash; a wait that runs out answers it again.
    let path = format!("/v1/agent/service/web-1?hash={hash}&wait=200ms");
    let started = std::time::Instant::now();
    let r = api.ok("GET", &path, None, "").await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert_eq!(r.json()["ContentHash"], json!(hash));
    // A write to another service does not wake it with a changed answer.
    api.register(None, json!({"Name": "db", "ID": "db-1", "Port": 2}))
        .await;
    let r = api.ok("GET", &path, None, "").await;
    assert_eq!(r.json()["ContentHash"], json!(hash));
    // A change of web-1 answers a blocked query with the new content and hash.
    let blocked = {
        let api = Arc::clone(&api);
        let path = format!("/v1/agent/service/web-1?hash={hash}&wait=30s");
        tokio::spawn(async move { api.ok("GET", &path, None, "").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!blocked.is_finished(), "the hash matched: it must block");
    api.register(None, reg(json!(["v2"]))).await;
    let r = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("the change woke the query")
        .unwrap();
    let body = r.json();
    assert_eq!(body["Tags"], json!(["v2"]));
    assert_ne!(body["ContentHash"], json!(hash));
    // A hash that is not the current one answers at once.
    let r = api
        .ok(
            "GET",
            "/v1/agent/service/web-1?hash=0000&wait=30s",
            None,
            "",
        )
        .await;
    assert_eq!(r.json()["ContentHash"], body["ContentHash"]);
    let r = api.get("/v1/agent/service/nope?hash=x", None).await;
    assert_eq!(r.status, 404);
}
