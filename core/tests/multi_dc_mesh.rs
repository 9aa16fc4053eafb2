//! Federation and mesh gateways together (Consul docs: Mesh Gateways; Consul CA docs,
//! secondary datacenters): dc1, the primary, and dc2, a secondary whose intermediate dc1's root
//! signed, as two `connect agent -server` processes on loopback; a `connect gateway mesh`
//! process in each; and services in this process on a Rust `Agent` over each datacenter's HTTP
//! API: `api` (dc1) and `db` (dc2) echo, `web` (dc1) and `worker` (dc2) dial.
//!
//! Every path comes from the catalogs, as in a real deployment: dc2's server forwards
//! `?dc=dc1` to the primary, and the primary forwards `?dc=dc2` to the address dc2's server
//! advertised; so `worker` finds `api`'s instances (direct) and dc1's gateways (mode
//! `remote`), `web` finds `db`'s and dc2's gateways, and each gateway finds the other by its
//! registration (`Kind: mesh-gateway`, `wan` tagged address); no `-remote-gateway`.
//!
//! `federation_figures` (ignored) measures what BENCHMARKS.md reports; run it with
//! `cargo test --release -p connect-core --features cli --test multi_dc_mesh -- --ignored
//! --nocapture`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod cli_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cli_support::{Agent, Daemon, Resp, active_root, follows, rotate_root, try_http};
use connect_core::agent::{
    Agent as ConnectAgent, AgentBackend, AgentConfig, ConnectService, DialOptions,
};
use connect_core::catalog::MeshGatewayMode;
use connect_core::certs::{self, CertInfo};
use connect_core::http::client::HttpEndpoint;
use connect_core::spiffe::{ServiceId, TrustDomain, service_sni};
use connect_core::tls;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// How long dc2 may take to follow dc1: seconds on an idle machine; generous for a shared one.
const CONVERGE: Duration = Duration::from_secs(45);
const IO: Duration = Duration::from_secs(10);

/// Runs blocking work (processes, plain HTTP) without stalling the runtime's other worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn http(addr: &str, method: &str, path: &str, body: &str) -> Resp {
    blocking(|| try_http(addr, method, path, &[], body, IO))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

/// One way from a client to a server in the other datacenter.
struct Path {
    name: &'static str,
    client: tls::Identity,
    expected: ServiceId,
    sni: String,
    addr: SocketAddr,
}

impl Path {
    /// A full handshake (a client with an empty session cache), as a dial through the route
    /// would make after a rotation.
    async fn dial(&self) -> Result<tls::Connection, String> {
        let client = tls::mtls_client(&self.client, self.expected.clone())
            .strict(true)
            .server_name(self.sni.clone())
            .build()
            .map_err(|e| e.to_string())?;
        match timeout(IO, client.dial_addr(self.addr)).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(format!("{}: {e}", self.name)),
            Err(_) => Err(format!("{}: dial timed out", self.name)),
        }
    }
}

async fn echo(c: &mut tls::Connection, msg: &[u8]) -> Result<(), String> {
    let round = async {
        c.write_all(msg).await?;
        let mut back = vec![0u8; msg.len()];
        c.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back == msg)
    };
    match timeout(IO, round).await {
        Ok(Ok(true)) => Ok(()),
        other => Err(format!("echo: {other:?}")),
    }
}

struct Mesh {
    dir: tempfile::TempDir,
    dc1: Agent,
    dc2: Agent,
    _gateways: (Daemon, Daemon),
    gw1: SocketAddr,
    gw2: SocketAddr,
    _agents: (ConnectAgent, ConnectAgent),
    api: ConnectService,
    api_addr: SocketAddr,
    db: ConnectService,
    db_addr: SocketAddr,
    web: ConnectService,
    worker: ConnectService,
    td: String,
}

async fn connect_agent(agent: &Agent, jitter: Duration) -> ConnectAgent {
    ConnectAgent::new_async(AgentConfig {
        backend: AgentBackend::Http(HttpEndpoint::new(agent.http.clone())),
        root_change_jitter: jitter,
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    })
    .await
    .unwrap()
}

/// `name` listening on loopback and registered in its agent's catalog; echoes until EOF.
async fn echo_service(agent: &ConnectAgent, name: &str) -> (ConnectService, SocketAddr) {
    let svc = agent.service(name).unwrap();
    svc.ready_wait(IO).await.unwrap();
    let mut l = svc.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    tokio::spawn(async move {
        while let Ok(mut c) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 512];
                loop {
                    match c.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if c.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    });
    (svc, addr)
}

/// Both datacenters, both gateways, the four services; `jitter` bounds the delay before a
/// service's leaf follows a root change (Consul's is 30 s).
async fn mesh(jitter: Duration) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    std::fs::write(p("dc1.json"), json!({"datacenter": "dc1"}).to_string()).unwrap();
    std::fs::write(
        p("dc2.json"),
        json!({"datacenter": "dc2", "primary_datacenter": "dc1"}).to_string(),
    )
    .unwrap();
    let (dc1, dc2) = blocking(|| {
        cli_support::start_federation(dir.path(), &p("dc1.json"), &p("dc2.json"), CONVERGE)
    });
    let (gw2, gw2_addr) = blocking(|| cli_support::mesh_gateway(&dc2, &[]));
    let (gw1, gw1_addr) = blocking(|| cli_support::mesh_gateway(&dc1, &[]));
    let a1 = connect_agent(&dc1, jitter).await;
    let a2 = connect_agent(&dc2, jitter).await;
    assert_eq!((a1.datacenter(), a2.datacenter()), ("dc1", "dc2"));
    let (api, api_addr) = echo_service(&a1, "api").await;
    let (db, db_addr) = echo_service(&a2, "db").await;
    let web = a1.service("web").unwrap();
    let worker = a2.service("worker").unwrap();
    web.ready_wait(IO).await.unwrap();
    worker.ready_wait(IO).await.unwrap();
    let td = blocking(|| dc1.roots())["TrustDomain"]
        .as_str()
        .unwrap()
        .to_owned();
    Mesh {
        dir,
        dc1,
        dc2,
        _gateways: (gw1, gw2),
        gw1: gw1_addr.parse().unwrap(),
        gw2: gw2_addr.parse().unwrap(),
        _agents: (a1, a2),
        api,
        api_addr,
        db,
        db_addr,
        web,
        worker,
        td,
    }
}

impl Mesh {
    fn id(&self, service: &str, dc: &str) -> ServiceId {
        ServiceId {
            host: self.td.clone(),
            partition: "default".into(),
            namespace: "default".into(),
            datacenter: dc.into(),
            service: service.into(),
        }
    }

    fn uri(&self, service: &str, dc: &str) -> String {
        format!("spiffe://{}/ns/default/dc/{dc}/svc/{service}", self.td)
    }

    fn sni(&self, service: &str, dc: &str) -> String {
        service_sni(
            service,
            None,
            "",
            "",
            dc,
            &TrustDomain::new(&self.td).unwrap(),
        )
    }

    /// The four ways: each direction direct and through both gateways.
    fn paths(&self) -> Vec<Arc<Path>> {
        let to_db = |name, addr| Path {
            name,
            client: self.web.identity().clone(),
            expected: self.id("db", "dc2"),
            sni: self.sni("db", "dc2"),
            addr,
        };
        let to_api = |name, addr| Path {
            name,
            client: self.worker.identity().clone(),
            expected: self.id("api", "dc1"),
            sni: self.sni("api", "dc1"),
            addr,
        };
        vec![
            Arc::new(to_db("dc1->dc2 direct", self.db_addr)),
            Arc::new(to_db("dc1->dc2 via gateways", self.gw1)),
            Arc::new(to_api("dc2->dc1 direct", self.api_addr)),
            Arc::new(to_api("dc2->dc1 via gateways", self.gw2)),
        ]
    }

    /// `openssl s_client -servername SNI` to `gateway` with `client`'s certificate, trusting
    /// dc1's root alone; returns its output (stdout and stderr).
    fn s_client(&self, client: &ConnectService, gateway: SocketAddr, sni: &str) -> String {
        let m = client.material().unwrap();
        let write = |name: &str, text: &str| {
            let p = self.dir.path().join(format!("{}-{name}", client.name()));
            std::fs::write(&p, text).unwrap();
            p
        };
        let cert = write("chain.pem", &m.chain_pem);
        let key = write("key.pem", m.key_pem.as_str());
        let ca = self.dir.path().join("dc1-root.pem");
        let input = b"ping-across-datacenters\n";
        blocking(|| cli_support::s_client(&gateway.to_string(), sni, &cert, &key, &ca, input)).1
    }

    /// `/v1/agent/self`'s `Replication` of `agent`.
    fn replication(&self, agent: &Agent) -> Value {
        let r = http(&agent.http, "GET", "/v1/agent/self", "");
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()["Replication"].clone()
    }
}

/// The active root's SigningKeyID in `agent`'s roots.
fn signing_key(agent: &Agent) -> String {
    let active = cli_support::active_entry(&blocking(|| agent.roots())).unwrap();
    active["SigningKeyID"].as_str().unwrap().to_owned()
}

fn signed_by(svc: &ConnectService, key: &str) -> bool {
    svc.identity()
        .snapshot()
        .svid()
        .is_some_and(|s| cli_support::issuer_key(s.leaf()).eq_ignore_ascii_case(key))
}

/// Retries `attempt` until it gives `want` (the catalogs and caches fill in the background,
/// replication takes a moment); returns how long that took.
async fn until<F, Fut>(what: &str, want: bool, mut attempt: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        let got = attempt().await;
        if got.is_ok() == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < CONVERGE,
            "{what}: still {got:?} after {CONVERGE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn round_trip(svc: &ConnectService, target: &str, opts: &DialOptions) -> Result<(), String> {
    let mut c = timeout(IO, svc.dial_with(target, opts))
        .await
        .map_err(|_| "dial timed out".to_owned())?
        .map_err(|e| e.to_string())?;
    let want = opts.datacenter.clone().unwrap_or_default();
    let peer = c.peer_id().as_service().cloned();
    if peer.as_ref().map(|p| p.datacenter.as_str()) != Some(want.as_str()) {
        return Err(format!("peer {peer:?} is not in {want}"));
    }
    echo(&mut c, b"across datacenters").await
}

async fn route(svc: &ConnectService, target: &str, opts: DialOptions) -> Vec<SocketAddr> {
    svc.route(target, &opts).await.unwrap().addrs
}

/// `PUT` (with `action`) or `DELETE` of the intention `source → destination` on `agent`.
fn intention(agent: &Agent, source: &str, destination: &str, action: Option<&str>) {
    let path = format!("/v1/connect/intentions/exact?source={source}&destination={destination}");
    let r = match action {
        Some(a) => http(&agent.http, "PUT", &path, &json!({"Action": a}).to_string()),
        None => http(&agent.http, "DELETE", &path, ""),
    };
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Everything that needs no rotation: the paths (from the catalogs where the servers allow),
/// the gateways' registrations, OpenSSL through the gateways against dc1's root, intentions
/// across datacenters and the replication status.
async fn paths_across_two_federated_datacenters(m: &Mesh) {
    // Both ways, from the catalogs: direct, through both gateways (mode local: the local
    // gateway finds the other datacenter's in that datacenter's catalog) and through the far
    // gateway only (mode remote).
    for (svc, target, dc, gateways) in [
        (&m.worker, "api", "dc1", (m.gw2, m.gw1)),
        (&m.web, "db", "dc2", (m.gw1, m.gw2)),
    ] {
        let (local_gw, remote_gw) = gateways;
        for mode in [
            MeshGatewayMode::None,
            MeshGatewayMode::Local,
            MeshGatewayMode::Remote,
        ] {
            let opts = DialOptions::datacenter(dc).mesh_gateway(mode);
            until(
                &format!("{} -> {target} in {dc} ({mode:?})", svc.name()),
                true,
                || round_trip(svc, target, &opts),
            )
            .await;
        }
        let instance = if dc == "dc1" { m.api_addr } else { m.db_addr };
        let route_in = |mode| route(svc, target, DialOptions::datacenter(dc).mesh_gateway(mode));
        assert_eq!(route_in(MeshGatewayMode::None).await, [instance]);
        assert_eq!(route_in(MeshGatewayMode::Local).await, [local_gw]);
        assert_eq!(
            route_in(MeshGatewayMode::Remote).await,
            [remote_gw],
            "the far gateway by its wan address, from its datacenter's catalog"
        );
    }
    // Each datacenter's view of the other's gateway, as the gateways ask for it.
    for (agent, dc, gw) in [(&m.dc2, "dc1", m.gw1), (&m.dc1, "dc2", m.gw2)] {
        let r = http(
            &agent.http,
            "GET",
            &format!("/v1/health/service/mesh-gateway?dc={dc}&passing=1"),
            "",
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        assert_eq!(v[0]["Service"]["Kind"], "mesh-gateway", "{v:#}");
        assert_eq!(
            v[0]["Service"]["TaggedAddresses"]["wan"]["Port"],
            gw.port(),
            "{v:#}"
        );
    }
    // An advertisement for the primary itself, or of no address to connect to, is refused.
    for (dc, address) in [("dc1", "127.0.0.1:1"), ("dc2", "0.0.0.0:8501")] {
        let r = http(
            &m.dc1.http,
            "POST",
            "/v1/internal/federation/advertise",
            &json!({"Datacenter": dc, "Address": address}).to_string(),
        );
        assert_eq!(r.status, 400, "{}", r.body);
    }
    let dc2_local = DialOptions::datacenter("dc2").mesh_gateway(MeshGatewayMode::Local);
    let dc1_local = DialOptions::datacenter("dc1").mesh_gateway(MeshGatewayMode::Local);
    for p in m.paths() {
        let mut c = p.dial().await.unwrap();
        assert_eq!(c.peer_id().as_service(), Some(&p.expected), "{}", p.name);
        echo(&mut c, p.name.as_bytes()).await.unwrap();
    }

    // OpenSSL as an independent client through both gateways, each way, trusting dc1's root
    // alone: dc2's leaves verify through dc2's intermediate, and the gateways never
    // terminated TLS (the certificate openssl saw is the far service's).
    for (client, gateway, target, dc) in [
        (&m.web, m.gw1, "db", "dc2"),
        (&m.worker, m.gw2, "api", "dc1"),
    ] {
        let out = m.s_client(client, gateway, &m.sni(target, dc));
        assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
        // The echo follows s_client's own output on the same line: look for it anywhere.
        assert!(out.contains("ping-across-datacenters"), "{out}");
        let first = cli_support::pem_blocks(&out).into_iter().next().unwrap();
        let der = certs::parse_pem_certificate(&first).unwrap();
        assert_eq!(CertInfo::from_der(&der).unwrap().uris, [m.uri(target, dc)]);
    }

    // An intention written in dc1 governs dc2's db through the gateways; one sent to dc2 is
    // forwarded to dc1 and governs dc1's api. Names match whatever the datacenter.
    intention(&m.dc1, "web", "db", Some("deny"));
    let denied = until("dc2 enforces dc1's deny", false, || {
        round_trip(&m.web, "db", &dc2_local)
    })
    .await;
    intention(&m.dc1, "web", "db", None);
    until("dc2 enforces the deletion", true, || {
        round_trip(&m.web, "db", &dc2_local)
    })
    .await;
    intention(&m.dc2, "worker", "api", Some("deny"));
    until("dc1 enforces a deny sent to dc2", false, || {
        round_trip(&m.worker, "api", &dc1_local)
    })
    .await;
    let r = http(
        &m.dc1.http,
        "GET",
        "/v1/connect/intentions/exact?source=worker&destination=api",
        "",
    );
    assert_eq!(r.status, 200, "the write landed in dc1: {}", r.body);
    let modify_index = r.json()["ModifyIndex"].as_u64().unwrap();
    intention(&m.dc2, "worker", "api", None);
    until("dc1 enforces the deletion sent to dc2", true, || {
        round_trip(&m.worker, "api", &dc1_local)
    })
    .await;
    eprintln!(
        "dc2 enforced dc1's deny through the gateways after {} ms",
        denied.as_millis()
    );

    // The replication status: dc1 is the source, dc2 replicates from it.
    assert_eq!(
        m.replication(&m.dc1),
        json!({"Enabled": false, "SourceDatacenter": ""})
    );
    let start = Instant::now();
    let status = loop {
        let s = m.replication(&m.dc2);
        if s["Intentions"]["ReplicatedIndex"].as_u64().unwrap() > modify_index {
            break s;
        }
        assert!(start.elapsed() < CONVERGE, "{s:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["Enabled"], true, "{status:#}");
    assert_eq!(status["SourceDatacenter"], "dc1");
    for loop_ in ["Intentions", "Roots"] {
        let l = &status[loop_];
        assert!(l["LastSuccess"].is_string(), "{status:#}");
        assert_eq!(l["LastError"], Value::Null, "{status:#}");
        assert!(l["ReplicatedIndex"].as_u64().unwrap() > 0, "{status:#}");
    }
    let inter = &status["Intermediate"];
    assert_eq!(inter["Status"], "active", "{status:#}");
    assert_eq!(inter["SigningKeyID"], signing_key(&m.dc2).as_str());
    assert_eq!(inter["ActiveRootID"], blocking(|| active_root(&m.dc1)).0);
    let not_after = time::OffsetDateTime::parse(
        inter["NotAfter"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert!(not_after > time::OffsetDateTime::now_utc() + Duration::from_secs(86_400));
}

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: AtomicU64,
}

struct Load {
    done: AtomicBool,
    /// Set once every leaf is on the new root: live connections count round trips from then.
    rotated: AtomicBool,
    tallies: Vec<Tally>,
    live_after: Vec<AtomicU64>,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        let mut f = self.failures.lock().unwrap();
        if f.len() < 20 {
            f.push(what);
        }
    }

    /// Handshakes so far: dc1→dc2 and dc2→dc1 (paths 0-1 and 2-3).
    fn by_direction(&self) -> (u64, u64) {
        let ok = |i: usize| self.tallies[i].ok.load(Ordering::Relaxed);
        (ok(0) + ok(1), ok(2) + ok(3))
    }

    fn failed(&self) -> u64 {
        self.tallies
            .iter()
            .map(|t| t.failed.load(Ordering::Relaxed))
            .sum()
    }
}

/// New connections on `path`, one after the other, each a full handshake and an echo.
async fn handshakes(path: Arc<Path>, i: usize, load: Arc<Load>) {
    while !load.done.load(Ordering::SeqCst) {
        let got = match path.dial().await {
            Ok(mut c) => echo(&mut c, b"handshake").await,
            Err(e) => Err(e),
        };
        match got {
            Ok(()) => load.tallies[i].ok.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                load.fail(format!("{}: {e}", path.name));
                load.tallies[i].failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A connection opened before the rotation and used every 100 ms until the end.
async fn live(mut c: tls::Connection, name: &'static str, i: usize, load: Arc<Load>) {
    while !load.done.load(Ordering::SeqCst) {
        if let Err(e) = echo(&mut c, b"live").await {
            return load.fail(format!("live connection {name} broke: {e}"));
        }
        if load.rotated.load(Ordering::SeqCst) {
            load.live_after[i].fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A root rotation in dc1 under continuous handshakes both ways, direct and through the
/// gateways: dc2 follows by itself, every service moves to a leaf of the new root, no
/// handshake fails and the connections opened before keep working.
async fn rotation_under_cross_dc_load(m: &Mesh) {
    /// Handshakes each way while dc1 rotates (counted from the rotation request).
    const PER_DIRECTION: u64 = 1000;
    let paths = m.paths();
    let load = Arc::new(Load {
        done: AtomicBool::new(false),
        rotated: AtomicBool::new(false),
        tallies: paths.iter().map(|_| Tally::default()).collect(),
        live_after: paths.iter().map(|_| AtomicU64::new(0)).collect(),
        failures: Mutex::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    for (i, p) in paths.iter().enumerate() {
        let c = p.dial().await.unwrap();
        tasks.push(tokio::spawn(live(c, p.name, i, Arc::clone(&load))));
        tasks.push(tokio::spawn(handshakes(
            Arc::clone(p),
            i,
            Arc::clone(&load),
        )));
    }
    let warm = Instant::now();
    while load.by_direction().0.min(load.by_direction().1) < 50 {
        assert!(warm.elapsed() < CONVERGE, "no load: {:?}", load.failures);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let before = load.by_direction();
    let rotated_at = Instant::now();
    let new_root = blocking(|| rotate_root(&m.dc1, "", "ec", 384));
    let dc1_key = signing_key(&m.dc1);
    blocking(|| follows(&m.dc2, &new_root, Duration::from_millis(20), CONVERGE));
    let followed = rotated_at.elapsed();
    let dc2_key = signing_key(&m.dc2);
    let services = [
        (&m.api, &dc1_key),
        (&m.web, &dc1_key),
        (&m.db, &dc2_key),
        (&m.worker, &dc2_key),
    ];
    while !services.iter().all(|(s, k)| signed_by(s, k)) {
        assert!(
            rotated_at.elapsed() < CONVERGE,
            "leaves not on the new root within {CONVERGE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let leaves = rotated_at.elapsed();
    load.rotated.store(true, Ordering::SeqCst);
    loop {
        let (a, b) = load.by_direction();
        let live_ok = load
            .live_after
            .iter()
            .all(|n| n.load(Ordering::Relaxed) >= 3);
        if a - before.0 >= PER_DIRECTION && b - before.1 >= PER_DIRECTION && live_ok {
            break;
        }
        assert!(
            load.failures.lock().unwrap().is_empty(),
            "{:?}",
            load.failures
        );
        assert!(
            rotated_at.elapsed() < 4 * CONVERGE,
            "too slow: {:?} handshakes after {:?}",
            (a - before.0, b - before.1),
            rotated_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    load.done.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
    let (a, b) = load.by_direction();
    let per_path: Vec<String> = paths
        .iter()
        .zip(&load.tallies)
        .map(|(p, t)| format!("{} {}", p.name, t.ok.load(Ordering::Relaxed)))
        .collect();
    eprintln!(
        "dc1 root rotation under cross-DC load: {} handshakes dc1->dc2 and {} dc2->dc1 from \
         the rotation request on ({}; since the start {}), {} failed; dc2 followed after {} \
         ms, every leaf on the new root after {} ms; {} live connections kept ({} round \
         trips after the rotation)",
        a - before.0,
        b - before.1,
        per_path.join(", "),
        a + b,
        load.failed(),
        followed.as_millis(),
        leaves.as_millis(),
        paths.len(),
        load.live_after
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum::<u64>()
    );
    assert_eq!(load.failed(), 0, "{:?}", load.failures.lock().unwrap());
    assert!(load.failures.lock().unwrap().is_empty());

    // The status shows the new intermediate.
    let status = m.replication(&m.dc2);
    assert_eq!(status["Intermediate"]["Status"], "active", "{status:#}");
    assert_eq!(status["Intermediate"]["ActiveRootID"], new_root.as_str());
    assert_eq!(status["Intermediate"]["SigningKeyID"], dc2_key.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federated_datacenters_talk_through_gateways_and_survive_a_root_rotation() {
    let m = mesh(Duration::from_secs(2)).await;
    paths_across_two_federated_datacenters(&m).await;
    rotation_under_cross_dc_load(&m).await;
}

fn quantiles(mut t: Vec<Duration>) -> String {
    t.sort();
    let p = |q: f64| t[((t.len() as f64 - 1.0) * q).round() as usize];
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n = {})",
        p(0.5).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3,
        t[t.len() - 1].as_secs_f64() * 1e3,
        t.len()
    )
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Whether dc2 authorizes `web` (of dc1) to `db`, by dc2's agent endpoint.
fn dc2_authorizes(m: &Mesh) -> bool {
    let r = http(
        &m.dc2.http,
        "POST",
        "/v1/agent/connect/authorize",
        &json!({"Target": "db", "ClientCertURI": m.uri("web", "dc1")}).to_string(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["Authorized"] == true
}

/// The figures of BENCHMARKS.md, "Datacenters": a dc1 intention write until dc2 enforces it
/// (`INTENTION_WRITES`, default 100), dc2 following a dc1 root rotation (`ROTATIONS`, default
/// 6), and new cross-datacenter handshakes direct and through the two gateways, the paths
/// taking turns (`HANDSHAKES` per path, default 300).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement for BENCHMARKS.md"]
async fn federation_figures() {
    let m = mesh(Duration::ZERO).await;

    // Intention write in dc1 → dc2's authorize answer changes (polled every 2 ms).
    let mut writes = Vec::new();
    let mut allow = false;
    assert!(dc2_authorizes(&m), "default allow without ACLs");
    for _ in 0..env_or("INTENTION_WRITES", 100) {
        let action = if allow { "allow" } else { "deny" };
        let start = Instant::now();
        intention(&m.dc1, "web", "db", Some(action));
        blocking(|| {
            while dc2_authorizes(&m) != allow {
                assert!(start.elapsed() < CONVERGE);
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        writes.push(start.elapsed());
        allow = !allow;
    }
    intention(&m.dc1, "web", "db", None);
    println!(
        "dc1 intention write -> dc2 enforcement: {}",
        quantiles(writes)
    );

    // Handshakes: the four paths take turns, so a noisy machine weighs on all alike.
    let paths = m.paths();
    let rounds = env_or("HANDSHAKES", 300);
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); paths.len()];
    for round in 0..rounds + 20 {
        for (i, p) in paths.iter().enumerate() {
            let start = Instant::now();
            let c = p.dial().await.unwrap();
            let took = start.elapsed();
            drop(c);
            if round >= 20 {
                times[i].push(took);
            }
        }
    }
    for (p, t) in paths.iter().zip(times) {
        println!("handshake {}: {}", p.name, quantiles(t));
    }

    // dc1 rotations, each until dc2 installed its new intermediate (polled every 10 ms), then
    // until dc2's services hold leaves from it (a root-change jitter of 0 here; Consul's
    // agents wait up to 30 s on purpose).
    let (mut follow, mut leaves) = (Vec::new(), Vec::new());
    for (i, bits) in [384, 256]
        .iter()
        .cycle()
        .take(env_or("ROTATIONS", 6))
        .enumerate()
    {
        let start = Instant::now();
        let root = blocking(|| rotate_root(&m.dc1, "", "ec", *bits));
        blocking(|| follows(&m.dc2, &root, Duration::from_millis(10), CONVERGE));
        let took = start.elapsed();
        let key = signing_key(&m.dc2);
        while !(signed_by(&m.db, &key) && signed_by(&m.worker, &key)) {
            assert!(start.elapsed() < CONVERGE, "dc2's leaves did not follow");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let reissued = start.elapsed();
        println!(
            "rotation {}: dc2 followed after {} ms, its services' leaves after {} ms",
            i + 1,
            took.as_millis(),
            reissued.as_millis()
        );
        follow.push(took);
        leaves.push(reissued);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!("dc2 follows a dc1 root rotation: {}", quantiles(follow));
    println!("dc2's services on leaves of it: {}", quantiles(leaves));
}
