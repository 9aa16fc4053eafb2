//! The agent end to end: an in-process or HTTP backend, services whose identity follows the
//! cache, intentions enforced in the handshake, dialing by name, rotation while connected,
//! and renewal driven by an injected clock.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use connect_core::agent::{Agent, AgentBackend, AgentConfig, ConnectService};
use connect_core::ca::CaConfiguration;
use connect_core::catalog::{ServiceConnect, ServiceRegistration};
use connect_core::http::client::HttpEndpoint;
use connect_core::intentions::IntentionAction;
use connect_core::server::{Server, ServerConfig};
use connect_core::{ErrorKind, ManualClock};
use serde_json::json;
use tls_support::{echo, p384_ca, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const T: Duration = Duration::from_secs(10);

async fn echo_server(svc: &ConnectService) -> std::net::SocketAddr {
    let l = svc.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    echo(l);
    addr
}

/// A client the target's intentions deny: under TLS 1.3 its dial completes, and the server's
/// alert fails its first exchange.
async fn assert_refused(client: &ConnectService, addr: std::net::SocketAddr, target: &str) {
    let attempt = async {
        let mut c = client.dial_addr(addr, target).await?;
        c.write_all(b"x")
            .await
            .map_err(|e| connect_core::tls::error_from_io(&e))?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .await
            .map_err(|e| connect_core::tls::error_from_io(&e))?;
        Ok::<_, connect_core::Error>(())
    };
    assert!(tokio::time::timeout(T, attempt).await.unwrap().is_err());
}

fn config_in(server: &Server, clock: connect_core::SharedClock) -> AgentConfig {
    AgentConfig {
        backend: AgentBackend::InProcess(server.clone()),
        clock,
        root_change_jitter: Duration::ZERO,
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    }
}

/// Serves `server`'s HTTP API on a free loopback port; returns its `host:port`.
async fn serve_http(server: &Server) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = listener.local_addr().unwrap().to_string();
    let router = connect_core::http::api::router(server.clone());
    tokio::spawn(async move { axum::serve(listener, router).await });
    http_addr
}

/// The service `name` of `agent`, once it has a leaf that verifies against the roots.
async fn ready(agent: &Agent, name: &str) -> ConnectService {
    let service = agent.service(name).unwrap();
    service.ready_wait(T).await.unwrap();
    service
}

/// A [`strict_server`] on the system clock and an in-process agent of it, with the intentions
/// `source → destination` of `allow` allowed.
async fn strict_agent(allow: &[(&str, &str)]) -> (Server, Agent) {
    let server = strict_server(connect_core::clock::system());
    let agent = Agent::new(config_in(&server, connect_core::clock::system())).unwrap();
    for (source, destination) in allow {
        agent
            .intention_upsert(source, destination, IntentionAction::Allow)
            .await
            .unwrap();
    }
    (server, agent)
}

fn strict_server(clock: connect_core::SharedClock) -> Server {
    let mut c = ServerConfig::dev();
    c.default_intention_policy = Some(IntentionAction::Deny);
    Server::start(c, clock).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intentions_decide_in_the_handshake_and_dial_finds_instances() {
    let (server, agent) = strict_agent(&[("web", "db")]).await;
    let db = ready(&agent, "db").await;
    let web = ready(&agent, "web").await;
    let api = ready(&agent, "api").await;
    let addr = echo_server(&db).await;
    let mut c = web.dial_addr(addr, "db").await.unwrap();
    round_trip(&mut c, b"hello").await;
    assert_eq!(c.peer_id().as_service().unwrap().service, "db");
    // api is refused during the handshake: its first read fails.
    assert_refused(&api, addr, "db").await;
    assert!(!agent.intention_check("api", "db").await.unwrap());
    // Dial by name through the catalog.
    let mut reg = ServiceRegistration::new("db", addr.port());
    reg.address = "127.0.0.1".into();
    reg.connect = Some(ServiceConnect::native());
    server.register_service(None, reg).unwrap();
    let mut c = web.dial("db").await.unwrap();
    round_trip(&mut c, b"by name").await;
    assert_eq!(
        web.dial("nothing-here").await.unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    agent.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_open_connections_and_reissues_leaves() {
    let (server, agent) = strict_agent(&[("web", "db")]).await;
    let db = ready(&agent, "db").await;
    let web = ready(&agent, "web").await;
    let addr = echo_server(&db).await;
    let mut open = web.dial_addr(addr, "db").await.unwrap();
    round_trip(&mut open, b"before").await;
    let old_serial = open.peer_serial().unwrap();
    let old_root = agent.roots().await.unwrap().active_root_id.clone();
    let (web_gen, db_gen) = (web.identity().generation(), db.identity().generation());

    agent.ca_set_config(p384_ca()).await.unwrap();
    // Both services pick up the new roots and a leaf from the new root, without restarting.
    let new_root = server.ca_roots().value.active_root_id;
    assert_ne!(new_root, old_root);
    tokio::time::timeout(T, async {
        loop {
            let ok = |s: &ConnectService| {
                s.identity().snapshot().svid().is_some_and(|v| {
                    connect_core::certs::CertInfo::from_der(v.leaf())
                        .unwrap()
                        .authority_key_id
                        == server
                            .ca_roots()
                            .value
                            .active()
                            .map(|r| hex_to_bytes(&r.signing_key_id))
                })
            };
            if ok(&web) && ok(&db) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("leaves re-issued after rotation");
    assert!(web.identity().generation() > web_gen && db.identity().generation() > db_gen);
    // The connection opened before the rotation still works.
    round_trip(&mut open, b"during").await;
    let mut fresh = web.dial_addr(addr, "db").await.unwrap();
    round_trip(&mut fresh, b"after").await;
    // A resumed session keeps the certificate it was made with; a full handshake shows the
    // new one.
    assert_ne!(
        db.identity().snapshot().svid().unwrap().serial(),
        old_serial
    );
    if !fresh.is_resumed() {
        assert_ne!(fresh.peer_serial().unwrap(), old_serial);
    }
    agent.close();
}

fn hex_to_bytes(colon_hex: &str) -> Vec<u8> {
    colon_hex
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_renew_when_the_injected_clock_reaches_the_renewal_window() {
    let manual = ManualClock::new(time::OffsetDateTime::now_utc());
    let clock: connect_core::SharedClock = Arc::new(manual.clone());
    let server = strict_server(clock.clone());
    let agent = Agent::new(config_in(&server, clock)).unwrap();
    let web = ready(&agent, "web").await;
    let first = web
        .identity()
        .snapshot()
        .svid()
        .unwrap()
        .serial()
        .to_owned();
    // 72 h leaves renew somewhere in 43.2–64.8 h; 65 h is past every choice.
    manual.advance(Duration::from_secs(65 * 3600));
    tokio::time::timeout(T, async {
        while web.identity().snapshot().svid().unwrap().serial() == first {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("renewed without real sleeping");
    assert!(web.ready());
    agent.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_gets_leaves_by_csr_and_intentions_from_the_match_cache() {
    let server = strict_server(connect_core::clock::system());
    let http_addr = serve_http(&server).await;
    let http_cfg = HttpEndpoint::new(http_addr);
    let config = AgentConfig {
        backend: AgentBackend::Http(http_cfg),
        root_change_jitter: Duration::ZERO,
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    };
    // The HTTP-only constructor (what connect-proxy uses) refuses a server in this process.
    for in_process in [
        AgentConfig::dev(),
        AgentConfig {
            backend: AgentBackend::InProcess(server.clone()),
            ..AgentConfig::dev()
        },
    ] {
        let e = Agent::new_http_async(in_process).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{e}");
    }
    let agent = Agent::new_http_async(config).await.unwrap();
    assert!(agent.server().is_none());
    assert_eq!(agent.datacenter(), "dc1");
    agent
        .intention_upsert("web", "db", IntentionAction::Allow)
        .await
        .unwrap();
    let db = ready(&agent, "db").await;
    let web = ready(&agent, "web").await;
    let api = ready(&agent, "api").await;
    // The leaf's key was generated here: the server never saw it (it has no leaf cache entry).
    let leaf = agent.leaf("web").await.unwrap();
    assert!(leaf.key_pem().contains("EC PRIVATE KEY"));
    let addr = echo_server(&db).await;
    // Wait until db's index has the allow intention from the match cache.
    tokio::time::timeout(T, async {
        while db.intention_index().load().intentions().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    let mut c = web.dial_addr(addr, "db").await.unwrap();
    round_trip(&mut c, b"over http").await;
    assert_refused(&api, addr, "db").await;
    agent.close();
}

#[test]
fn an_owned_runtime_agent_closes_cleanly_and_refuses_later_calls() {
    let agent = Agent::dev().unwrap();
    let roots = agent.block_on({
        let a = agent.clone();
        async move { a.roots().await }
    });
    assert!(roots.unwrap().unwrap().roots.len() == 1);
    let svc = agent.service("web").unwrap();
    let a2 = agent.clone();
    agent
        .block_on(async move { a2.service("x").map(|_| ()) })
        .unwrap()
        .unwrap();
    drop(svc);
    agent.close();
    agent.close();
    assert!(agent.is_closed());
    assert_eq!(agent.service("web").unwrap_err().kind(), ErrorKind::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_resolve_and_verify_server_for_other_tls_stacks() {
    let (_server, agent) = strict_agent(&[]).await;
    let db = ready(&agent, "db").await;
    let web = ready(&agent, "web").await;
    assert_eq!(
        web.resolve("db").await.unwrap_err().kind(),
        ErrorKind::ConnectionRefused
    );
    let mut reg = ServiceRegistration::new("db", 4242);
    reg.address = "127.0.0.1".into();
    reg.connect = Some(ServiceConnect::native());
    agent.register_service(reg).await.unwrap();
    // The cached empty answer is replaced by the background blocking query.
    let addrs = tokio::time::timeout(T, async {
        loop {
            if let Ok(a) = web.resolve("db").await {
                return a;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(addrs, vec!["127.0.0.1:4242".parse().unwrap()]);

    let chain =
        connect_core::certs::parse_pem_certificates(&db.material().unwrap().chain_pem).unwrap();
    let id = web.verify_server("db", &chain).unwrap();
    assert_eq!(id.as_service().unwrap().service, "db");
    assert_eq!(
        web.verify_server("api", &chain).unwrap_err().kind(),
        ErrorKind::PeerIdentityMismatch
    );
    assert_eq!(
        web.verify_server("db", &[]).unwrap_err().kind(),
        ErrorKind::InvalidCertificate
    );

    agent.deregister_service("db").await.unwrap();
    agent.close();
}

/// `/v1/health/connect/:service?passing`.
fn connect_passing() -> connect_core::server::ServiceQuery {
    let mut q = connect_core::server::ServiceQuery::default();
    q.connect = true;
    q.passing_only = true;
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listening_registers_the_instance_and_closing_deregisters_it() {
    let (server, agent) = strict_agent(&[("web", "db")]).await;
    let db = ready(&agent, "db").await;
    let web = ready(&agent, "web").await;
    let addr = echo_server(&db).await;
    let found = server
        .health(None, "db", &connect_passing())
        .unwrap()
        .value
        .value;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].dial_address(), ("127.0.0.1", addr.port()));
    let mut c = web.dial("db").await.unwrap();
    round_trip(&mut c, b"found").await;
    db.close();
    tokio::time::timeout(T, async {
        while !server
            .health(None, "db", &connect_passing())
            .unwrap()
            .value
            .value
            .is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("closing the service deregisters it");
    agent.close();
}

/// A TCP proxy in front of the API whose tasks can all be killed at once: a real outage,
/// in which open connections drop too.
async fn proxy(
    listener: tokio::net::TcpListener,
    upstream: std::net::SocketAddr,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    let conns = Arc::new(tokio::sync::Mutex::new(tokio::task::JoinSet::new()));
    let c2 = Arc::clone(&conns);
    set.spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            c2.lock().await.spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect(upstream).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    set.spawn(async move {
        // Owns the connection tasks: aborting this task drops them all.
        let _keep = conns;
        std::future::pending::<()>().await;
    });
    set
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_rides_out_a_server_outage_and_catches_up() {
    let server = strict_server(connect_core::clock::system());
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = api.local_addr().unwrap();
    let router = connect_core::http::api::router(server.clone());
    tokio::spawn(async move { axum::serve(api, router).await });
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = front.local_addr().unwrap();
    let mut outage = proxy(front, upstream).await;
    let config = AgentConfig {
        backend: AgentBackend::Http(HttpEndpoint::new(http_addr.to_string())),
        root_change_jitter: Duration::ZERO,
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    };
    let agent = Agent::new_async(config).await.unwrap();
    agent
        .intention_upsert("web", "db", IntentionAction::Allow)
        .await
        .unwrap();
    let db = ready(&agent, "db").await;
    let web = ready(&agent, "web").await;
    let addr = echo_server(&db).await;
    tokio::time::timeout(T, async {
        while db.intention_index().load().intentions().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();

    // Outage: the API goes away. Cached leaf, roots and intentions keep services working.
    outage.abort_all();
    while outage.join_next().await.is_some() {}
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        agent.intention_check("web", "db").await.is_err(),
        "the server is really down"
    );
    let mut c = web.dial_addr(addr, "db").await.unwrap();
    round_trip(&mut c, b"during outage").await;
    assert!(agent.roots().await.is_ok(), "roots served from the cache");

    // The server comes back on the same address; the agent catches up by itself.
    let mut deny = connect_core::intentions::Intention::default();
    deny.action = Some(IntentionAction::Deny);
    server
        .intention_upsert_exact(None, "web", "db", deny)
        .unwrap();
    let front = tokio::net::TcpListener::bind(http_addr).await.unwrap();
    let _back = proxy(front, upstream).await;
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let denied = db
                .intention_index()
                .load()
                .intentions()
                .iter()
                .any(|i| i.source_name == "web" && i.action == Some(IntentionAction::Deny));
            if denied {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("intention change after the outage reached the agent");
    let m = agent.cache().metrics();
    assert!(m.total.fetch_error > 0, "the outage shows in the metrics");
    agent.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_leaf_is_never_returned() {
    let manual = ManualClock::new(time::OffsetDateTime::now_utc());
    let clock: connect_core::SharedClock = Arc::new(manual.clone());
    let server = strict_server(clock.clone());
    let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = api.local_addr().unwrap();
    let router = connect_core::http::api::router(server.clone());
    tokio::spawn(async move { axum::serve(api, router).await });
    let front = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_addr = front.local_addr().unwrap();
    let mut link = proxy(front, upstream).await;
    let config = AgentConfig {
        backend: AgentBackend::Http(HttpEndpoint::new(http_addr.to_string())),
        clock,
        root_change_jitter: Duration::ZERO,
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    };
    let agent = Agent::new_async(config).await.unwrap();
    let leaf = agent.leaf("web").await.unwrap();
    // The backend goes away and the leaf's lifetime passes: no renewal is possible.
    link.abort_all();
    while link.join_next().await.is_some() {}
    manual.advance(Duration::from_secs(73 * 3600));
    assert!(connect_core::Clock::now(&manual) > leaf.valid_before());
    let e = tokio::time::timeout(T, agent.leaf("web"))
        .await
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::NotReady | ErrorKind::ConnectionRefused),
        "{e}"
    );
    agent.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_rotation_reissues_every_leaf_inside_the_jitter_window() {
    let manual = ManualClock::new(time::OffsetDateTime::now_utc());
    let clock: connect_core::SharedClock = Arc::new(manual.clone());
    let server = strict_server(clock.clone());
    let jitter = Duration::from_secs(30);
    let agent = Agent::new(AgentConfig {
        root_change_jitter: jitter,
        ..config_in(&server, clock)
    })
    .unwrap();
    let services: Vec<ConnectService> = (0..5)
        .map(|i| agent.service(&format!("svc{i}")).unwrap())
        .collect();
    for s in &services {
        s.ready_wait(T).await.unwrap();
    }
    agent
        .ca_set_config(CaConfiguration::consul(
            json!({"PrivateKeyBits": 384}).as_object().cloned().unwrap(),
        ))
        .await
        .unwrap();
    let rotated_at = connect_core::Clock::now(&manual);
    let signing_key = server
        .ca_roots()
        .value
        .active()
        .unwrap()
        .signing_key_id
        .clone();
    let on_new_root = |s: &ConnectService| {
        s.identity().snapshot().svid().is_some_and(|v| {
            connect_core::certs::CertInfo::from_der(v.leaf())
                .unwrap()
                .authority_key_id
                == Some(hex_to_bytes(&signing_key))
        })
    };
    // Let every service see the new roots: the leaf fetches pick their random re-issue point
    // in the window then, and with the injected clock standing still none can fire yet.
    tokio::time::timeout(T, async {
        while !services.iter().all(|s| {
            s.identity()
                .snapshot()
                .bundle()
                .is_some_and(|b| b.roots().len() == 2)
        }) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Moving the injected clock past the window re-issues every leaf; none needs real time.
    manual.advance(jitter);
    tokio::time::timeout(T, async {
        while !services.iter().all(on_new_root) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("every leaf re-issued once the jitter window has passed");
    for s in &services {
        let svid = s.identity().snapshot();
        let issued = svid.svid().unwrap().not_before() + Duration::from_secs(60);
        assert!(
            issued >= rotated_at && issued <= rotated_at + jitter,
            "{issued} outside the window"
        );
    }
    agent.close();
}

/// Deleting a missing intention through the agent is `NotFound` with either backend (the C,
/// Python and Node `delete` document it), while Consul's by-name endpoint itself keeps
/// answering 200 `true` for a missing pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_intention_is_not_found_in_process_and_over_http() {
    let server = strict_server(connect_core::clock::system());
    let http_addr = serve_http(&server).await;
    let over_http = Agent::new_async(AgentConfig {
        backend: AgentBackend::Http(HttpEndpoint::new(http_addr.clone())),
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    })
    .await
    .unwrap();
    let in_process = Agent::new_async(config_in(&server, connect_core::clock::system()))
        .await
        .unwrap();
    for agent in [&in_process, &over_http] {
        agent
            .intention_upsert("web", "db", IntentionAction::Deny)
            .await
            .unwrap();
        agent.intention_delete("web", "db").await.unwrap();
        let e = agent.intention_delete("web", "db").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains("web => db"), "{e}");
        // A bad name is still refused before any lookup.
        let e = agent.intention_delete("web/x", "db").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidParameter, "{e}");
    }
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let r = reqwest::Client::new()
        .delete(format!(
            "http://{http_addr}/v1/connect/intentions/exact?source=web&destination=db"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), "true");
    in_process.close();
    over_http.close();
}

/// An agent with its own in-process server expires TTL checks as `connect agent` does: a
/// check not updated within its TTL turns critical with Consul's output, and closing the
/// agent stops the timer with everything else.
#[test]
fn an_in_process_agent_turns_overdue_ttl_checks_critical() {
    let agent = Agent::new(AgentConfig::dev()).unwrap();
    let server = agent.server().expect("a dev agent has its server").clone();
    let reg = ServiceRegistration::from_json(
        br#"{"Name": "web", "ID": "web-1", "Port": 1, "Check": {"CheckID": "web-ttl", "TTL": "1s"}}"#,
    )
    .unwrap();
    server.register_service(None, reg).unwrap();
    server
        .update_check(
            None,
            "web-ttl",
            connect_core::catalog::HealthStatus::Passing,
            "ok",
        )
        .unwrap();
    let status = || {
        let view = server.store().view();
        let c = view
            .catalog()
            .check(&server.config().node_name, "web-ttl")
            .cloned()
            .unwrap();
        (c.status, c.output)
    };
    // The timer runs in real time (1 s TTL, checked at least every second): allow 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status().0 != connect_core::catalog::HealthStatus::Critical {
        assert!(
            std::time::Instant::now() < deadline,
            "still {:?} after 10 s",
            status()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status().1, "TTL expired");
    agent.close();
}
