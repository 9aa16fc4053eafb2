//! Proves libconnect's certificates to a TLS implementation nobody here wrote: the `openssl`
//! command-line tool verifies chains and prints the fields Consul's built-in CA sets
//! (ARCHITECTURE.md, ca).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers panic on setup failure"
)]

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use connect_core::ca::{CaConfiguration, CaManager, SignPolicy, generate_leaf_request};
use connect_core::certs;
use serde_json::json;

fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .expect("the openssl CLI is installed");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn write(dir: &Path, name: &str, pem: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pem).unwrap();
    p.to_string_lossy().into_owned()
}

fn primary(config: serde_json::Value) -> CaManager {
    CaManager::new_primary(
        "dc1",
        None,
        CaConfiguration::consul(config.as_object().cloned().unwrap_or_default()),
        Arc::new(connect_core::SystemClock),
    )
    .unwrap()
}

fn leaf(ca: &mut CaManager, dc: &str, service: &str) -> (String, Vec<String>) {
    let uri = format!(
        "spiffe://{}/ns/default/dc/{dc}/svc/{service}",
        ca.trust_domain()
    );
    let req = generate_leaf_request(&uri, &[], &[]).unwrap();
    let issued = ca.sign_leaf(&req.csr_pem, SignPolicy::ServiceOnly).unwrap();
    let chain: Vec<String> = certs::parse_pem_certificates(&issued.cert_pem)
        .unwrap()
        .iter()
        .map(|d| certs::der_to_pem(d))
        .collect();
    (chain[0].clone(), chain[1..].to_vec())
}

#[test]
fn openssl_verifies_a_primary_leaf_and_shows_its_fields() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = primary(json!({}));
    let root = write(dir.path(), "root.pem", &ca.roots().roots_pem());
    let (leaf_pem, rest) = leaf(&mut ca, "dc1", "web");
    assert!(rest.is_empty());
    let leaf_path = write(dir.path(), "leaf.pem", &leaf_pem);
    for purpose in ["sslclient", "sslserver"] {
        let (ok, out) = openssl(&["verify", "-purpose", purpose, "-CAfile", &root, &leaf_path]);
        assert!(ok, "openssl verify ({purpose}) failed: {out}");
    }
    let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", &leaf_path]);
    assert!(ok, "{text}");
    let subject_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("Subject:"))
        .unwrap();
    assert_eq!(
        subject_line.trim(),
        "Subject:",
        "empty subject: {subject_line}"
    );
    assert!(
        text.contains("X509v3 Subject Alternative Name: critical"),
        "{text}"
    );
    assert!(text.contains(&format!(
        "URI:spiffe://{}/ns/default/dc/dc1/svc/web",
        ca.trust_domain()
    )));
    assert!(
        text.contains("TLS Web Client Authentication, TLS Web Server Authentication"),
        "{text}"
    );
    assert!(
        text.contains("Digital Signature, Key Encipherment, Data Encipherment, Key Agreement"),
        "{text}"
    );
    assert!(text.contains("CA:FALSE"));
    let (_, root_text) = openssl(&["x509", "-noout", "-text", "-in", &root]);
    assert!(root_text.contains("X509v3 Basic Constraints: critical"));
    assert!(root_text.contains("CA:TRUE"));
    assert!(root_text.contains("Certificate Sign, CRL Sign"));
    assert!(root_text.contains(&format!("URI:spiffe://{}", ca.trust_domain())));
}

#[test]
fn openssl_verifies_a_secondary_leaf_through_its_intermediate() {
    let dir = tempfile::tempdir().unwrap();
    let pri = primary(json!({}));
    let mut sec = CaManager::new_secondary(
        "dc2",
        &pri.roots(),
        CaConfiguration::consul(Default::default()),
        Arc::new(connect_core::SystemClock),
    )
    .unwrap();
    let csr = sec.intermediate_csr().unwrap();
    let inter = pri.sign_intermediate(&csr).unwrap();
    sec.set_intermediate(&inter, &pri.roots()).unwrap();
    let (leaf_pem, rest) = leaf(&mut sec, "dc2", "api");
    assert_eq!(rest.len(), 1, "the bundle carries the intermediate");
    let root = write(dir.path(), "root.pem", &pri.roots().roots_pem());
    let untrusted = write(dir.path(), "inter.pem", &rest.concat());
    let leaf_path = write(dir.path(), "leaf.pem", &leaf_pem);
    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslclient",
        "-CAfile",
        &root,
        "-untrusted",
        &untrusted,
        &leaf_path,
    ]);
    assert!(ok, "{out}");
    let (ok, _) = openssl(&["verify", "-CAfile", &root, &leaf_path]);
    assert!(!ok, "without the intermediate the leaf must not verify");
    let (_, text) = openssl(&["x509", "-noout", "-text", "-in", &untrusted]);
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
}

#[test]
fn after_rotation_a_peer_trusting_only_the_old_root_accepts_new_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = primary(json!({}));
    let old_root = write(dir.path(), "old-root.pem", &ca.roots().roots_pem());
    ca.set_config(CaConfiguration::consul(
        json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048})
            .as_object()
            .cloned()
            .unwrap(),
    ))
    .unwrap();
    let (leaf_pem, rest) = leaf(&mut ca, "dc1", "web");
    assert_eq!(rest.len(), 1, "the bundle carries the cross-signed root");
    let cross = write(dir.path(), "cross.pem", &rest.concat());
    let leaf_path = write(dir.path(), "leaf.pem", &leaf_pem);
    let new_root = write(
        dir.path(),
        "new-root.pem",
        &ca.roots().active().unwrap().root_cert,
    );
    let (ok, out) = openssl(&[
        "verify",
        "-purpose",
        "sslserver",
        "-CAfile",
        &old_root,
        "-untrusted",
        &cross,
        &leaf_path,
    ]);
    assert!(
        ok,
        "old-root-only peer must accept via the cross-signed cert: {out}"
    );
    let (ok, _) = openssl(&["verify", "-CAfile", &old_root, &leaf_path]);
    assert!(
        !ok,
        "without the cross-signed cert the old root must not accept the new leaf"
    );
    let (ok, out) = openssl(&["verify", "-CAfile", &new_root, &leaf_path]);
    assert!(ok, "new-root peers verify directly: {out}");
    // And every root together (what clients get from /v1/connect/ca/roots) accepts old leaves too.
    let all = write(dir.path(), "all.pem", &ca.roots().roots_pem());
    let (ok, out) = openssl(&["verify", "-CAfile", &all, &leaf_path]);
    assert!(ok, "{out}");
}
