//! End to end: a `-server -data-dir` agent keeps its state across a clean restart and
//! across `kill -9` in the middle of a burst of writes.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cli_support::{Agent, openssl_verify, pem_blocks, try_http};
use serde_json::{Value, json};

const ROOT: &str = "management-secret-5678";

fn server_args<'a>(dir: &'a str, cfg: &'a str) -> Vec<&'a str> {
    vec![
        "-server",
        "-data-dir",
        dir,
        "-config-file",
        cfg,
        "-node",
        "node-a",
    ]
}

#[test]
fn restart_keeps_roots_keys_intentions_acls_and_catalog() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("agent.json");
    std::fs::write(
        &cfg,
        json!({
            "datacenter": "dc1",
            "acl": {"enabled": true, "default_policy": "deny",
                    "tokens": {"initial_management": ROOT}},
            "connect": {"enabled": true, "ca_config": {"leaf_cert_ttl": "24h"}}
        })
        .to_string(),
    )
    .unwrap();
    let (data_s, cfg_s) = (data.to_str().unwrap(), cfg.to_str().unwrap());
    let auth = [("X-Consul-Token", ROOT)];

    let mut agent = Agent::start(&server_args(data_s, cfg_s));
    let roots = agent.roots();
    let root_id = roots["ActiveRootID"].as_str().unwrap().to_owned();
    let roots_pem = dir.path().join("roots.pem");
    std::fs::write(&roots_pem, agent.cli(&["ca", "roots", "-pem"]).ok().stdout).unwrap();
    agent
        .cli(&["intention", "create", "-token", ROOT, "-deny", "*", "db"])
        .ok();
    agent
        .cli(&["intention", "create", "-token", ROOT, "web", "db"])
        .ok();
    let policy = agent.http(
        "PUT",
        "/v1/acl/policy",
        &auth,
        &json!({"Name": "web-write", "Rules": "service \"web\" { policy = \"write\" }"})
            .to_string(),
    );
    assert_eq!(policy.status, 200, "{}", policy.body);
    let token = agent.http(
        "PUT",
        "/v1/acl/token",
        &auth,
        &json!({"Description": "web", "Policies": [{"Name": "web-write"}]}).to_string(),
    );
    assert_eq!(token.status, 200, "{}", token.body);
    let token = token.json();
    let accessor = token["AccessorID"].as_str().unwrap().to_owned();
    let secret = token["SecretID"].as_str().unwrap().to_owned();
    let reg = agent.http(
        "PUT",
        "/v1/agent/service/register",
        &auth,
        &json!({"Name": "web", "Port": 8080, "Connect": {"Native": true}}).to_string(),
    );
    assert_eq!(reg.status, 200, "{}", reg.body);
    let intentions_before = agent
        .http("GET", "/v1/connect/intentions", &auth, "")
        .index();
    let index_before = agent
        .http("GET", "/v1/catalog/services", &auth, "")
        .index()
        .max(intentions_before);

    let status = agent.signal_and_wait("TERM", Duration::from_secs(8));
    assert_eq!(status.code(), Some(0));
    drop(agent);

    let agent = Agent::start(&server_args(data_s, cfg_s));
    let after = agent.roots();
    assert_eq!(after["ActiveRootID"], root_id.as_str());
    assert_eq!(after["TrustDomain"], roots["TrustDomain"]);
    assert_eq!(after["Roots"].as_array().unwrap().len(), 1);

    // The CA key survived: a leaf issued now verifies against the root saved before.
    let leaf = agent.cli(&["leaf", "-token", &secret, "web"]).ok().stdout;
    let leaf_pem = dir.path().join("leaf.pem");
    std::fs::write(&leaf_pem, &pem_blocks(&leaf)[0]).unwrap();
    let (ok, out) = openssl_verify(&roots_pem, None, &leaf_pem);
    assert!(ok, "{out}");

    // Intentions.
    let m = agent
        .cli(&["intention", "match", "-token", ROOT, "-destination", "db"])
        .ok()
        .stdout;
    assert_eq!(
        m.lines().collect::<Vec<_>>(),
        ["web => db (allow)", "* => db (deny)"]
    );
    assert_eq!(
        agent
            .cli(&["intention", "check", "-token", ROOT, "api", "db"])
            .code,
        2
    );

    // ACLs: the management token still works, the created token still grants what it did.
    let t = agent.http("GET", &format!("/v1/acl/token/{accessor}"), &auth, "");
    assert_eq!(t.status, 200, "{}", t.body);
    let web_token = [("X-Consul-Token", secret.as_str())];
    let r = agent.http("GET", "/v1/agent/connect/ca/leaf/web", &web_token, "");
    assert_eq!(r.status, 200, "{}", r.body);
    let r = agent.http("GET", "/v1/agent/connect/ca/leaf/db", &web_token, "");
    assert_eq!(r.status, 403, "{}", r.body);
    let r = agent.http("GET", "/v1/connect/ca/configuration", &[], "");
    assert_eq!(r.status, 403, "{}", r.body);

    // Catalog.
    let svc = agent.http("GET", "/v1/catalog/service/web", &auth, "");
    assert_eq!(svc.status, 200, "{}", svc.body);
    let rows = svc.json();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["ServicePort"], 8080);
    assert!(svc.index() >= 1);

    // The index keeps growing from where it was: tables keep their indexes, and the next
    // write lands above every index seen before the restart.
    let read = agent.http("GET", "/v1/connect/intentions", &auth, "");
    assert_eq!(read.index(), intentions_before);
    agent
        .cli(&["intention", "create", "-token", ROOT, "api", "db"])
        .ok();
    let grown = agent.http("GET", "/v1/connect/intentions", &auth, "");
    assert!(
        grown.index() > index_before,
        "{} <= {index_before}",
        grown.index()
    );
}

#[test]
fn kill_9_during_a_burst_of_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("agent.hcl");
    std::fs::write(&cfg, "server = true\n").unwrap();
    let (data_s, cfg_s) = (data.to_str().unwrap(), cfg.to_str().unwrap());

    let mut agent = Agent::start(&server_args(data_s, cfg_s));
    let roots_before = agent.roots();

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (addr, acked, count, stop) = (
            agent.http.clone(),
            acked.clone(),
            count.clone(),
            stop.clone(),
        );
        writers.push(std::thread::spawn(move || {
            for i in 0..10_000 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let src = format!("src-{w}-{i}");
                let path = format!("/v1/connect/intentions/exact?source={src}&destination=db");
                match try_http(
                    &addr,
                    "PUT",
                    &path,
                    &[],
                    r#"{"Action": "allow"}"#,
                    Duration::from_secs(3),
                ) {
                    Ok(r) if r.status == 200 => {
                        acked.lock().unwrap().insert(src);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    // Refused or cut off: the agent is gone.
                    _ => return,
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while count.load(Ordering::Relaxed) < 200 {
        assert!(std::time::Instant::now() < deadline, "writes too slow");
        std::thread::sleep(Duration::from_millis(2));
    }
    agent.kill9();
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    drop(agent);
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 200);

    let agent = Agent::start(&server_args(data_s, cfg_s));
    let list: Value = agent.http("GET", "/v1/connect/intentions", &[], "").json();
    let present: BTreeSet<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["SourceName"].as_str().unwrap().to_owned())
        .collect();
    eprintln!(
        "kill -9: {} writes acknowledged, {} present after restart",
        acked.len(),
        present.len()
    );
    let missing: Vec<&String> = acked.difference(&present).collect();
    assert!(
        missing.is_empty(),
        "acknowledged writes lost: {missing:?} ({} acked, {} present)",
        acked.len(),
        present.len()
    );
    // The CA is the same: same root, same key (a new leaf verifies against the old root).
    let roots_after = agent.roots();
    assert_eq!(roots_after["ActiveRootID"], roots_before["ActiveRootID"]);
    assert_eq!(
        roots_after["Roots"][0]["RootCert"],
        roots_before["Roots"][0]["RootCert"]
    );
    let root_pem = dir.path().join("root.pem");
    std::fs::write(
        &root_pem,
        roots_before["Roots"][0]["RootCert"].as_str().unwrap(),
    )
    .unwrap();
    let leaf = agent.cli(&["leaf", "web"]).ok().stdout;
    let leaf_pem = dir.path().join("leaf.pem");
    std::fs::write(&leaf_pem, &pem_blocks(&leaf)[0]).unwrap();
    let (ok, out) = openssl_verify(&root_pem, None, &leaf_pem);
    assert!(ok, "{out}");
}
