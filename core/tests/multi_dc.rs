//! End to end: CA federation between two datacenters, each a real `connect agent -server`
//! process on loopback. dc2 (a secondary) gets its intermediate from dc1 (the primary) over
//! server-to-server HTTPS, signs its leaves itself, follows dc1's root rotations by itself,
//! and keeps signing while dc1 is stopped (SIGSTOP). Every process is killed when its guard
//! drops, also when an assertion fails — a stopped process too (SIGKILL needs no SIGCONT).

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cli_support::{Agent, Resp, command, openssl_verify, pem_blocks, try_http};
use serde_json::{Value, json};

const DC1_ROOT: &str = "dc1-management-secret";
const DC2_ROOT: &str = "dc2-management-secret";
/// How long dc2 may take to follow dc1 (a blocking query, a CSR, a signature): seconds on an
/// idle machine; generous for a shared one.
const CONVERGE: Duration = Duration::from_secs(45);

struct Federation {
    dir: tempfile::TempDir,
    dc1: Agent,
    dc2: Agent,
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, v.to_string()).unwrap();
}

fn get(addr: &str, path: &str, token: &str) -> Resp {
    try_http(
        addr,
        "GET",
        path,
        &[("X-Consul-Token", token)],
        "",
        Duration::from_secs(10),
    )
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

fn ok_json(r: Resp) -> Value {
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()
}

/// Starts dc1, then dc2 joined to it (with the replication token and dc1's root as the file
/// that trusts the first contact).
fn federation() -> Federation {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    write_json(
        &p("dc1.json"),
        &json!({
            "datacenter": "dc1",
            "acl": {"enabled": true, "default_policy": "deny",
                    "tokens": {"initial_management": DC1_ROOT}},
        }),
    );
    // HCL, as most Consul configurations are written.
    std::fs::write(
        p("dc2.hcl"),
        format!(
            "datacenter = \"dc2\"\nprimary_datacenter = \"dc1\"\n\
             acl {{\n  enabled = true\n  default_policy = \"deny\"\n  tokens {{\n    \
             initial_management = \"{DC2_ROOT}\"\n    replication = \"{DC1_ROOT}\"\n  }}\n}}\n"
        ),
    )
    .unwrap();
    let (dc1, dc2) =
        cli_support::start_federation(dir.path(), &p("dc1.json"), &p("dc2.hcl"), CONVERGE);
    Federation { dir, dc1, dc2 }
}

impl Federation {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// dc2's leaf for `service`: the chain's certificates, leaf first.
    fn dc2_leaf(&self, service: &str) -> Vec<String> {
        let leaf = ok_json(get(
            &self.dc2.http,
            &format!("/v1/agent/connect/ca/leaf/{service}"),
            DC2_ROOT,
        ));
        assert_eq!(leaf["Service"], service);
        assert!(
            leaf["ServiceURI"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/dc/dc2/svc/{service}")),
            "{leaf:#}"
        );
        pem_blocks(leaf["CertPEM"].as_str().unwrap())
    }

    /// Whether the leaf (with the intermediates it carries, and nothing else) verifies with
    /// `openssl verify` against `root_pem` alone.
    fn verifies(&self, chain: &[String], root_pem: &str, tag: &str) -> (bool, String) {
        let (root, leaf, untrusted) = (
            self.path(&format!("{tag}-root.pem")),
            self.path(&format!("{tag}-leaf.pem")),
            self.path(&format!("{tag}-chain.pem")),
        );
        std::fs::write(&root, root_pem).unwrap();
        std::fs::write(&leaf, &chain[0]).unwrap();
        std::fs::write(&untrusted, chain[1..].concat()).unwrap();
        openssl_verify(&root, Some(&untrusted), &leaf)
    }

    fn dc1_active_root(&self) -> (String, String) {
        cli_support::active_root(&self.dc1)
    }

    /// A root rotation in dc1 (a new key type makes a new root, cross-signed by the old).
    fn rotate_dc1(&self, key_type: &str, bits: u32) -> String {
        cli_support::rotate_root(&self.dc1, DC1_ROOT, key_type, bits)
    }

    /// Waits until dc2's roots name `root_id` as active with its own signing key (a new
    /// intermediate installed); returns dc2's roots answer.
    fn dc2_follows(&self, root_id: &str) -> Value {
        cli_support::follows(&self.dc2, root_id, Duration::from_millis(200), CONVERGE)
    }
}

/// The base64 body of the first PEM private key in `bytes` (the store keeps PEM inside JSON,
/// so line breaks may be written `\n`): its first 64 characters, a needle no other key has.
fn private_key_needle(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes);
    let start = text.find("PRIVATE KEY-----")? + "PRIVATE KEY-----".len();
    let body: String = text[start..]
        .replace("\\n", "\n")
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/')
        .collect();
    (body.len() >= 64).then(|| body[..64].to_owned())
}

/// dc2's CA private key, read from its store (and its write-ahead log).
fn dc2_ca_key_needle(data: &Path) -> String {
    for f in cli_support::files_under(data) {
        if let Some(n) = private_key_needle(&std::fs::read(&f).unwrap()) {
            return n;
        }
    }
    panic!("no CA private key found in dc2's data directory {data:?}");
}

#[test]
fn a_secondary_gets_its_intermediate_from_the_primary_and_signs_leaves_itself() {
    let fed = federation();

    // dc2's roots are dc1's, with dc2's intermediate on the active root and its own signing
    // key ID.
    let dc1_roots = fed.dc1.roots();
    let dc2_roots = fed.dc2.roots();
    assert_eq!(dc2_roots["TrustDomain"], dc1_roots["TrustDomain"]);
    assert_eq!(dc2_roots["ActiveRootID"], dc1_roots["ActiveRootID"]);
    let (a1, a2) = (&dc1_roots["Roots"][0], &dc2_roots["Roots"][0]);
    assert_eq!(a1["RootCert"], a2["RootCert"]);
    assert_ne!(a1["SigningKeyID"], a2["SigningKeyID"], "{dc2_roots:#}");
    let inter = a2["IntermediateCerts"].as_array().unwrap();
    assert_eq!(inter.len(), 1, "{dc2_roots:#}");
    let info = Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .unwrap()
                .write_all(inter[0].as_str().unwrap().as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(
        text.contains("CA:TRUE, pathlen:0"),
        "the intermediate is a CA with path length 0:\n{text}"
    );

    // A dc2 leaf verifies with OpenSSL against dc1's root through dc2's intermediate, and not
    // without it.
    let (_, dc1_root) = fed.dc1_active_root();
    let chain = fed.dc2_leaf("web");
    assert_eq!(chain.len(), 2, "leaf and dc2's intermediate");
    let (ok, out) = fed.verifies(&chain, &dc1_root, "first");
    assert!(ok, "{out}");
    let (ok, _) = fed.verifies(&chain[..1], &dc1_root, "bare");
    assert!(!ok, "without dc2's intermediate the leaf does not verify");

    // dc2 authorizes from its own intentions (default deny, ACLs on).
    let r = try_http(
        &fed.dc2.http,
        "POST",
        "/v1/agent/connect/authorize",
        &[("X-Consul-Token", DC2_ROOT)],
        &json!({"Target": "db", "ClientCertURI":
            format!("spiffe://{}/ns/default/dc/dc2/svc/web",
                    dc2_roots["TrustDomain"].as_str().unwrap())})
        .to_string(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["Authorized"], false);

    // Each datacenter lists itself first.
    let dcs = ok_json(get(&fed.dc1.http, "/v1/catalog/datacenters", ""));
    assert_eq!(dcs, json!(["dc1", "dc2"]));
    let dcs = ok_json(get(&fed.dc2.http, "/v1/catalog/datacenters", ""));
    assert_eq!(dcs, json!(["dc2", "dc1"]));

    // dc2's CA key is in dc2's store and nowhere in dc1: not in any answer, log or file.
    let needle = dc2_ca_key_needle(&fed.path("data2"));
    let mut seen = Vec::new();
    for path in [
        "/v1/connect/ca/roots",
        "/v1/agent/connect/ca/roots",
        "/v1/connect/ca/configuration",
        "/v1/catalog/datacenters",
        "/v1/agent/connect/ca/leaf/web",
        "/v1/agent/self",
    ] {
        let r = get(&fed.dc1.http, path, DC1_ROOT);
        seen.push(format!("{path} {}: {}", r.status, r.body));
    }
    seen.push(fed.dc1.stderr());
    for (i, s) in seen.iter().enumerate() {
        assert!(!s.contains(&needle), "dc2's CA key in dc1's answer #{i}");
    }
    for f in cli_support::files_under(&fed.path("data1")) {
        let bytes = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).replace("\\n", "");
        assert!(!bytes.contains(&needle), "dc2's CA key in dc1's file {f:?}");
    }
}

#[test]
fn the_server_to_server_endpoints_check_the_token_first() {
    let fed = federation();
    let post = |path: &str, token: &str, body: &str| {
        try_http(
            &fed.dc1.http,
            "POST",
            path,
            &[("X-Consul-Token", token)],
            body,
            Duration::from_secs(10),
        )
    };
    for path in [
        "/v1/internal/connect/ca/sign-intermediate",
        "/v1/internal/federation/advertise",
    ] {
        // Over plain HTTP on dc1 with no or a weak token: refused before the body is read.
        for (token, body) in [("", "{\"CSR\": 1}"), ("nope", "not json at all")] {
            let r = post(path, token, body).unwrap();
            assert_eq!(r.status, 403, "{path}: {}", r.body);
        }
        // With the token: a body that is not what the endpoint takes is a clear 400, an
        // oversized one a 413.
        let r = post(
            path,
            DC1_ROOT,
            &json!({"CSR": "garbage", "Address": "nowhere", "Datacenter": "dc3"}).to_string(),
        )
        .unwrap();
        assert_eq!(r.status, 400, "{path}: {}", r.body);
        if let Ok(r) = post(path, DC1_ROOT, &"x".repeat(64 * 1024)) {
            assert_eq!(r.status, 413, "{path}: {}", r.body);
        }
        // This datacenter's own name is refused: only a secondary asks.
        let r = post(
            path,
            DC1_ROOT,
            &json!({"CSR": "garbage", "Address": "127.0.0.1:1", "Datacenter": "dc1"}).to_string(),
        )
        .unwrap();
        assert_eq!(r.status, 400, "{path}: {}", r.body);
    }
    // dc1 still serves after all of it.
    assert_eq!(get(&fed.dc1.http, "/v1/connect/ca/roots", "").status, 200);
}

#[test]
fn a_primary_rotation_rotates_the_secondary_and_an_outage_does_not_stop_it() {
    let fed = federation();
    let web_before = fed.dc2_leaf("web");

    // A rotation in dc1: dc2 gets a new intermediate from the new root by itself, and its
    // leaves (a cached one re-issued, a new one) chain to the new root alone.
    let rotated_at = Instant::now();
    let new_id = fed.rotate_dc1("rsa", 2048);
    let (_, new_root) = fed.dc1_active_root();
    fed.dc2_follows(&new_id);
    // A figure for BENCHMARKS.md (polled every 200 ms, so an upper bound), not a bound.
    eprintln!(
        "dc2 followed dc1's root rotation {} ms after the rotation request",
        rotated_at.elapsed().as_millis()
    );
    let chain = fed.dc2_leaf("api");
    let (ok, out) = fed.verifies(&chain, &new_root, "rotated");
    assert!(ok, "{out}");
    let web_after = fed.dc2_leaf("web");
    assert_ne!(web_before[0], web_after[0], "the cached leaf was re-issued");
    let (ok, out) = fed.verifies(&web_after, &new_root, "rotated-web");
    assert!(ok, "{out}");
    let log = fed.dc2.stderr();
    assert!(
        log.contains("installed a new intermediate CA certificate"),
        "{log}"
    );

    // dc1 stopped: dc2 keeps signing new leaves and authorizing.
    let stop = Command::new("kill")
        .args(["-STOP", &fed.dc1.pid().to_string()])
        .status()
        .unwrap();
    assert!(stop.success());
    let started = Instant::now();
    let chain = fed.dc2_leaf("during-outage");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "signing in dc2 does not wait for dc1"
    );
    let (ok, out) = fed.verifies(&chain, &new_root, "outage");
    assert!(ok, "{out}");
    let r = fed.dc2.http("GET", "/v1/connect/ca/roots", &[], "");
    assert_eq!(r.status, 200);
    let td = r.json()["TrustDomain"].as_str().unwrap().to_owned();
    assert!(!dc2_authorizes(&fed, &td), "authorized from dc2's own copy");
    let cont = Command::new("kill")
        .args(["-CONT", &fed.dc1.pid().to_string()])
        .status()
        .unwrap();
    assert!(cont.success());

    // dc1 back: dc2 follows the next rotation as before.
    let newer_id = fed.rotate_dc1("ec", 256);
    let (_, newer_root) = fed.dc1_active_root();
    fed.dc2_follows(&newer_id);
    let chain = fed.dc2_leaf("after-outage");
    let (ok, out) = fed.verifies(&chain, &newer_root, "after");
    assert!(ok, "{out}");
}

#[test]
fn a_secondary_without_the_primarys_address_or_root_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let base = [
        "agent",
        "-server",
        "-data-dir",
        data.to_str().unwrap(),
        "-datacenter",
        "dc2",
        "-primary-datacenter",
        "dc1",
        "-http-port",
        "0",
    ];
    let out = cli_support::run(command().args(base));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("retry_join_wan"), "{out:?}");
    let out = cli_support::run(
        command()
            .args(base)
            .args(["-retry-join-wan", "127.0.0.1:1"]),
    );
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("ca_file"), "{out:?}");
    let out = cli_support::run(command().args(base).args([
        "-retry-join-wan",
        "http://127.0.0.1:1",
        "-primary-ca-file",
        "/nonexistent.pem",
    ]));
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("HTTPS"), "{out:?}");
}

/// `curl` to `url` trusting `ca`, with an optional client certificate; returns (exit code,
/// body).
fn curl(url: &str, ca: &Path, client: Option<(&Path, &Path)>) -> (i32, String) {
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", "--cacert"]).arg(ca);
    if let Some((cert, key)) = client {
        c.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    c.arg(url);
    let o = cli_support::run(&mut c);
    (o.code, format!("{}{}", o.stdout, o.stderr))
}

#[test]
fn server_to_server_tls_is_checked_both_ways() {
    let fed = federation();
    let dc1_https = fed.dc1.https.clone().unwrap();
    let url = format!("https://127.0.0.1:{}/v1/catalog/datacenters", {
        dc1_https.rsplit(':').next().unwrap()
    });
    let root = fed.path("dc1-root.pem");

    // dc1's listener: no client certificate is fine (API clients use tokens); one chained to
    // the federation's roots (a dc2 leaf, through dc2's intermediate) is accepted; one from
    // anywhere else fails the handshake.
    let (code, out) = curl(&url, &root, None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("dc2"), "{out}");
    let leaf = ok_json(get(
        &fed.dc2.http,
        "/v1/agent/connect/ca/leaf/web",
        DC2_ROOT,
    ));
    let (cert, key) = (fed.path("web-chain.pem"), fed.path("web-key.pem"));
    std::fs::write(&cert, leaf["CertPEM"].as_str().unwrap()).unwrap();
    std::fs::write(&key, leaf["PrivateKeyPEM"].as_str().unwrap()).unwrap();
    let (code, out) = curl(&url, &root, Some((&cert, &key)));
    assert_eq!(code, 0, "{out}");
    let (stranger, stranger_key) = (fed.path("stranger.pem"), fed.path("stranger-key.pem"));
    let made = cli_support::run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-days", "1", "-subj", "/CN=stranger", "-keyout"])
            .arg(&stranger_key)
            .arg("-out")
            .arg(&stranger),
    );
    assert_eq!(made.code, 0, "{made:?}");
    let (code, out) = curl(&url, &root, Some((&stranger, &stranger_key)));
    assert_ne!(code, 0, "a certificate from outside the federation: {out}");

    // A secondary accepts only the primary's server identity: pointed at dc2's servers
    // (valid chain, but `.../agent/server/dc/dc2`) as if they were dc1's, dc3 refuses them and
    // never gets an intermediate.
    let dc2_https = fed.dc2.https.clone().unwrap();
    std::fs::write(
        fed.path("dc3.json"),
        json!({"datacenter": "dc3", "primary_datacenter": "dc1",
               "acl": {"tokens": {"replication": DC1_ROOT}}})
        .to_string(),
    )
    .unwrap();
    let mut cmd = command();
    cmd.arg("agent")
        .args(["-server", "-data-dir"])
        .arg(fed.path("data3"))
        .arg("-config-file")
        .arg(fed.path("dc3.json"))
        .args(["-http-port", "0", "-retry-join-wan", &dc2_https])
        .arg("-primary-ca-file")
        .arg(&root);
    let dc3 = Agent::spawn(cmd);
    let log = dc3.wait_for_log("peer certificate mismatch", CONVERGE);
    assert!(log.contains("/agent/server/dc/dc1"), "{log}");
    assert!(!log.contains("installed a new intermediate"), "{log}");
}

/// `POST /v1/agent/connect/authorize` in dc2 for `web` (of dc2) to `db`.
fn dc2_authorizes(fed: &Federation, td: &str) -> bool {
    let r = try_http(
        &fed.dc2.http,
        "POST",
        "/v1/agent/connect/authorize",
        &[("X-Consul-Token", DC2_ROOT)],
        &json!({"Target": "db",
                "ClientCertURI": format!("spiffe://{td}/ns/default/dc/dc2/svc/web")})
        .to_string(),
        Duration::from_secs(10),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["Authorized"] == true
}

/// Waits until dc2 answers `want`; returns how long that took.
fn until_dc2_authorizes(fed: &Federation, td: &str, want: bool) -> Duration {
    let start = Instant::now();
    while dc2_authorizes(fed, td) != want {
        assert!(
            start.elapsed() < CONVERGE,
            "dc2 did not apply dc1's intention change within {CONVERGE:?}:\n{}",
            fed.dc2.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

#[test]
fn intentions_written_in_the_primary_govern_the_secondary() {
    let fed = federation();
    let td = fed.dc1.roots()["TrustDomain"].as_str().unwrap().to_owned();
    assert!(!dc2_authorizes(&fed, &td));
    let put = |method: &str| {
        let r = try_http(
            &fed.dc1.http,
            method,
            "/v1/connect/intentions/exact?source=web&destination=db",
            &[("X-Consul-Token", DC1_ROOT)],
            &json!({"Action": "allow"}).to_string(),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
    };
    put("PUT");
    let applied = until_dc2_authorizes(&fed, &td, true);
    put("DELETE");
    let deleted = until_dc2_authorizes(&fed, &td, false);
    eprintln!(
        "dc2 enforced dc1's intention write after {} ms, its deletion after {} ms",
        applied.as_millis(),
        deleted.as_millis()
    );
    // A write sent to dc2 is forwarded to dc1 (the caller's token decides there), and comes
    // back to dc2 by replication.
    let dc2_write = |token: &str| {
        try_http(
            &fed.dc2.http,
            "PUT",
            "/v1/connect/intentions/exact?source=web&destination=db",
            &[("X-Consul-Token", token)],
            &json!({"Action": "allow"}).to_string(),
            Duration::from_secs(10),
        )
        .unwrap()
    };
    let r = dc2_write(DC2_ROOT);
    assert_eq!(
        r.status, 403,
        "dc2's own token means nothing in dc1: {}",
        r.body
    );
    let r = dc2_write(DC1_ROOT);
    assert_eq!(r.status, 200, "{}", r.body);
    let in_dc1 = get(
        &fed.dc1.http,
        "/v1/connect/intentions/exact?source=web&destination=db",
        DC1_ROOT,
    );
    assert_eq!(in_dc1.status, 200, "{}", in_dc1.body);
    until_dc2_authorizes(&fed, &td, true);

    // `?dc=dc1` sent to dc2 is answered by dc1: its roots carry dc1's signing key, not dc2's.
    let signing = |r: Value| r["Roots"][0]["SigningKeyID"].as_str().unwrap().to_owned();
    let via_dc2 = ok_json(get(&fed.dc2.http, "/v1/connect/ca/roots?dc=dc1", ""));
    assert_eq!(signing(via_dc2), signing(fed.dc1.roots()));
    assert_ne!(signing(fed.dc2.roots()), signing(fed.dc1.roots()));
    let listed = ok_json(get(
        &fed.dc2.http,
        "/v1/connect/intentions?dc=dc1",
        DC1_ROOT,
    ));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed:#}");
    let r = get(&fed.dc2.http, "/v1/connect/ca/roots?dc=dc3", "");
    assert!(r.body.contains("No path to datacenter"), "{}", r.body);
    // `?dc=dc2` sent to dc1 is answered by dc2, at the address dc2's servers advertised.
    let start = Instant::now();
    let via_dc1 = loop {
        let r = get(&fed.dc1.http, "/v1/connect/ca/roots?dc=dc2", "");
        if r.status == 200 {
            break r.json();
        }
        assert!(start.elapsed() < CONVERGE, "{}", r.body);
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(signing(via_dc1), signing(fed.dc2.roots()));
    // dc2's server proved its identity with its server certificate, not with the token alone.
    let said = fed.dc1.wait_for_log("advertised its address", CONVERGE);
    assert!(
        said.contains("server identity spiffe://") && said.contains("/agent/server/dc/dc2"),
        "{said}"
    );
}
