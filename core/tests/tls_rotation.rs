//! CA rotation and leaf renewal under live traffic (Consul CA docs, root rotation; ARCHITECTURE.md,
//! tls): cross-signed chains bridge the old and new roots, open connections survive, new handshakes
//! present the new leaf, a leaf that does not fit is never published, and a rotation through
//! the agent in the middle of continuous handshakes fails none of them.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up panics on failure"
)]

mod tls_support;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use connect_core::ErrorKind;
use connect_core::agent::{Agent, AgentBackend, AgentConfig};
use connect_core::ca::{SignPolicy, generate_leaf_request};
use connect_core::certs;
use connect_core::intentions::IntentionAction;
use connect_core::server::{Server, ServerConfig};
use connect_core::tls::{Identity, Service, Svid, authorizer, mtls_client};
use rustls_pki_types::CertificateDer;
use tls_support::{IO, Mesh, db_intentions, p384_ca, spawn_load, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

/// A new leaf for `service` with only the leaf in its chain (no cross-signed intermediate).
fn leaf_only(mesh: &mut Mesh, service: &str) -> Svid {
    let req = generate_leaf_request(&mesh.uri(service), &[], &[]).unwrap();
    let issued = mesh
        .ca
        .sign_leaf(&req.csr_pem, SignPolicy::ServiceOnly)
        .unwrap();
    let chain = certs::parse_pem_certificates(&issued.cert_pem).unwrap();
    assert_eq!(
        chain.len(),
        2,
        "after rotation a leaf comes with the cross-signed root"
    );
    Svid::from_pem(&certs::der_to_pem(&chain[0]), &req.key.to_pem()).unwrap()
}

async fn echo(c: &mut connect_core::tls::Connection, s: &mut connect_core::tls::Connection) {
    c.write_all(b"abc").await.unwrap();
    let mut b = [0u8; 3];
    timeout(IO, s.read_exact(&mut b)).await.unwrap().unwrap();
    s.write_all(&b).await.unwrap();
    timeout(IO, c.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(&b, b"abc");
}

#[tokio::test]
async fn a_cross_signed_chain_reaches_peers_that_only_know_the_old_root() {
    let mut mesh = Mesh::new();
    let old_only = mesh.bundle();
    // web and an old db know only the old root.
    let web_old = mesh.identity("web");
    let db_old = mesh.identity("db");
    mesh.rotate();
    let both = mesh.bundle();
    assert_eq!(both.roots().len(), 2);

    // db renewed: new leaf + cross-signed new root; web still trusts only the old root.
    let db_new = Identity::new("db", mesh.clock.clone());
    db_new.update_bundle(both.clone()).unwrap();
    db_new.update_svid(mesh.svid("db")).unwrap();
    assert_eq!(db_new.snapshot().svid().unwrap().chain().len(), 2);
    let server = Service::new(db_new, authorizer::any()).unwrap();
    let mut l = server.listen("127.0.0.1:0").await.unwrap();
    let web = Service::new(web_old.clone(), authorizer::any()).unwrap();
    let mut c = web.dial_addr(l.local_addr(), "db").await.unwrap();
    let mut s = timeout(IO, l.accept()).await.unwrap().unwrap();
    echo(&mut c, &mut s).await;

    // Without the cross-signed certificate the same peer cannot build a path.
    let db_bare = Identity::new("db", mesh.clock.clone());
    db_bare.update_bundle(both.clone()).unwrap();
    db_bare.update_svid(leaf_only(&mut mesh, "db")).unwrap();
    let bare = Service::new(db_bare, authorizer::any()).unwrap();
    let l2 = bare.listen("127.0.0.1:0").await.unwrap();
    let e = web.dial_addr(l2.local_addr(), "db").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CertificateVerification);
    assert_eq!(
        e.to_string(),
        "x509: certificate signed by unknown authority"
    );

    // Server side (Go's verifier test): an old-root-only db with intentions admits a web that
    // presents new leaf + cross-signed root.
    assert_eq!(
        db_old.snapshot().bundle().unwrap().roots().len(),
        old_only.roots().len()
    );
    let guarded = Service::new(db_old, authorizer::from_intentions("db", db_intentions())).unwrap();
    let mut l3 = guarded.listen("127.0.0.1:0").await.unwrap();
    let web_new = Identity::new("web", mesh.clock.clone());
    web_new.update_bundle(both).unwrap();
    web_new.update_svid(mesh.svid("web")).unwrap();
    let web_new = Service::new(web_new, authorizer::any()).unwrap();
    let mut c = web_new.dial_addr(l3.local_addr(), "db").await.unwrap();
    let mut s = timeout(IO, l3.accept()).await.unwrap().unwrap();
    assert_eq!(s.peer_id().to_string(), mesh.uri("web"));
    echo(&mut c, &mut s).await;
}

#[tokio::test]
async fn rotation_in_the_middle_of_a_connection_series() {
    let mut mesh = Mesh::new();
    let db_id = mesh.identity("db");
    let web_id = mesh.identity("web");
    let db = Service::new(db_id.clone(), authorizer::any()).unwrap();
    let mut l = db.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    let config_before = db.server_config();

    let first = mtls_client(&web_id, "db").build().unwrap();
    let mut c1 = first.dial_addr(addr).await.unwrap();
    let mut s1 = timeout(IO, l.accept()).await.unwrap().unwrap();
    echo(&mut c1, &mut s1).await;
    let serial1 = c1.peer_serial().unwrap();
    let gen1 = db_id.generation();

    // The CA rotates; db and web pick up the roots, db its new leaf.
    mesh.rotate();
    db_id.update_bundle(mesh.bundle()).unwrap();
    db_id.update_svid(mesh.svid("db")).unwrap();
    web_id.update_bundle(mesh.bundle()).unwrap();
    assert_eq!(db_id.generation(), gen1 + 2);
    let serial_new = db_id.snapshot().svid().unwrap().serial().to_owned();
    assert_ne!(serial_new, serial1);

    // The open connection keeps working.
    echo(&mut c1, &mut s1).await;

    // A new full handshake presents the new leaf.
    let second = mtls_client(&web_id, "db").build().unwrap();
    let mut c2 = second.dial_addr(addr).await.unwrap();
    let mut s2 = timeout(IO, l.accept()).await.unwrap().unwrap();
    echo(&mut c2, &mut s2).await;
    assert!(!c2.is_resumed());
    assert_eq!(c2.peer_serial().unwrap(), serial_new);
    assert_eq!(
        c2.peer_certificates(),
        db_id.snapshot().svid().unwrap().chain()
    );

    // A config handed out before the rotation serves the new leaf too (Go's dynamic config).
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raw_addr = raw.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config_before);
    let accept = tokio::spawn(async move {
        let (tcp, _) = raw.accept().await.unwrap();
        let mut s = acceptor.accept(tcp).await.unwrap();
        s.write_all(b"z").await.unwrap();
        s.flush().await.unwrap();
        let mut b = [0u8; 1];
        let _ = s.read(&mut b).await;
    });
    let third = mtls_client(&web_id, "db").build().unwrap();
    let mut c3 = third.dial_addr(raw_addr).await.unwrap();
    let mut b = [0u8; 1];
    timeout(IO, c3.read_exact(&mut b)).await.unwrap().unwrap();
    assert_eq!(c3.peer_serial().unwrap(), serial_new);
    drop(c3);
    timeout(IO, accept).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_leaf_that_does_not_fit_is_never_published() {
    let mut mesh = Mesh::new();
    let db = mesh.identity("db");
    let good = db.snapshot();

    // Another service's leaf.
    let e = db.update_svid(mesh.svid("web")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);

    // A root rotated without cross-signing: the new leaf does not verify against the roots db
    // has, so it waits until the roots arrive.
    let mut forced = p384_ca();
    forced.force_without_cross_signing = true;
    mesh.ca.set_config(forced).unwrap();
    let early = mesh.svid("db");
    let e = db.update_svid(early).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CertificateVerification, "{e}");
    assert!(
        Arc::ptr_eq(&good, &db.snapshot()),
        "the last good snapshot stays"
    );
    assert!(db.ready());

    db.update_bundle(mesh.bundle()).unwrap();
    db.update_svid(mesh.svid("db")).unwrap();
    assert!(db.ready());
    assert_eq!(db.generation(), good.generation() + 2);
}

#[tokio::test]
async fn readiness_follows_the_clock_and_updates() {
    let mut mesh = Mesh::new();
    let db = mesh.identity("db");
    assert!(db.ready());
    db.ready_wait(Duration::from_millis(10)).await.unwrap();

    // Time passes (by hand: no test sleeps for expiry) beyond the 72 h leaf.
    mesh.manual.advance(Duration::from_secs(73 * 3600));
    assert!(!db.ready());
    // An expired leaf is not accepted either.
    let stale = mesh.svid("db");
    assert!(stale.not_after() > mesh.clock.now());
    mesh.manual.advance(Duration::from_secs(73 * 3600));
    assert_eq!(
        db.update_svid(stale).unwrap_err().kind(),
        ErrorKind::CertificateVerification
    );

    // A waiter is woken by the update that makes the identity ready.
    let waiter = {
        let db = db.clone();
        tokio::spawn(async move { db.ready_wait(IO).await })
    };
    tokio::task::yield_now().await;
    db.update_svid(mesh.svid("db")).unwrap();
    timeout(IO, waiter).await.unwrap().unwrap().unwrap();
    assert!(db.ready());
}

/// Where a rotation under load stands. A handshake is judged by the phase it started in:
/// before the rotation it must show the old root; once both leaves are re-issued, the new.
const BEFORE: u8 = 0;
const ROTATING: u8 = 1;
const ROTATED: u8 = 2;

#[derive(Default)]
struct Load {
    phase: AtomicU8,
    done: AtomicBool,
    /// Successful handshakes + round trips, and those of them started in `ROTATED`.
    total: AtomicU64,
    after: AtomicU64,
    /// Round trips on the connection opened before the rotation, and those in `ROTATED`.
    open_trips: AtomicU64,
    open_trips_after: AtomicU64,
    /// Server-side checks that a client leaf presented in `ROTATED` is the new root's.
    server_checked_after: AtomicU64,
    /// Colon-hex key IDs of the old and the new active root.
    old_key: OnceLock<String>,
    new_key: OnceLock<String>,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push(what);
    }

    fn phase(&self) -> u8 {
        self.phase.load(Ordering::SeqCst)
    }

    /// Records a failure if `leaf`, presented during `phase`, is not from that phase's root.
    fn check_root(&self, who: &str, phase: u8, leaf: &CertificateDer<'_>) -> bool {
        let want = match phase {
            BEFORE => self.old_key.get(),
            ROTATED => self.new_key.get(),
            _ => return true,
        };
        let got = issuer_key_of(leaf);
        if want.is_some_and(|w| w.eq_ignore_ascii_case(&got)) {
            return true;
        }
        self.fail(format!(
            "{who} leaf in phase {phase} is from {got}, want {want:?}"
        ));
        false
    }
}

/// The key ID of the CA that signed `leaf` (its authority key ID), colon-hex.
fn issuer_key_of(leaf: &CertificateDer<'_>) -> String {
    certs::CertInfo::from_der(leaf)
        .unwrap()
        .authority_key_id
        .as_deref()
        .map(certs::colon_hex)
        .unwrap_or_default()
}

/// db's side: echoes one 64-byte request per connection; a request whose first byte says
/// the client started in `ROTATED` must come with a client leaf of the new root.
fn rotation_echo(mut l: connect_core::tls::Listener, load: Arc<Load>) {
    tokio::spawn(async move {
        while let Ok(mut c) = l.accept().await {
            let load = Arc::clone(&load);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                while timeout(IO, c.read_exact(&mut buf))
                    .await
                    .is_ok_and(|r| r.is_ok())
                {
                    if buf[0] == ROTATED
                        && load.check_root("web", ROTATED, &c.peer_certificates()[0])
                    {
                        load.server_checked_after.fetch_add(1, Ordering::Relaxed);
                    }
                    if c.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// One client: back-to-back new full handshakes, each followed by one 64-byte echo.
async fn handshake_loop(web: Identity, addr: std::net::SocketAddr, load: Arc<Load>) {
    while !load.done.load(Ordering::SeqCst) {
        let phase = load.phase();
        let attempt = async {
            // A client of its own per dial: it has no session to resume.
            let client = mtls_client(&web, "db").build()?;
            let mut c = client.dial_addr(addr).await?;
            let sent = [phase; 64];
            let io = |e: std::io::Error| connect_core::tls::error_from_io(&e);
            c.write_all(&sent).await.map_err(io)?;
            let mut back = [0u8; 64];
            c.read_exact(&mut back).await.map_err(io)?;
            Ok::<_, connect_core::Error>((c, sent == back))
        };
        match timeout(IO, attempt).await {
            Err(_) => load.fail(format!("handshake + echo in phase {phase} timed out")),
            Ok(Err(e)) => load.fail(format!("phase {phase}: {:?}: {e}", e.kind())),
            Ok(Ok((_, false))) => load.fail("echo came back different".into()),
            Ok(Ok((c, true))) => {
                if c.is_resumed() {
                    load.fail("a handshake resumed a session".into());
                }
                // Before: only a handshake that also ended before the rotation began is sure
                // to have met the old leaf.
                let judged = match phase {
                    BEFORE if load.phase() != BEFORE => ROTATING,
                    p => p,
                };
                load.check_root("db", judged, &c.peer_certificates()[0]);
                load.total.fetch_add(1, Ordering::Relaxed);
                if phase == ROTATED {
                    load.after.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// The connection opened before the rotation: one echo after another (paced, so that it
/// does not starve the handshakes on a small machine) until the load stops.
async fn open_connection_loop(mut c: connect_core::tls::Connection, load: Arc<Load>) {
    while !load.done.load(Ordering::SeqCst) {
        let phase = load.phase();
        let mut back = [0u8; 64];
        let trip = async {
            c.write_all(&[7u8; 64]).await?;
            c.read_exact(&mut back).await
        };
        match timeout(IO, trip).await {
            Ok(Ok(_)) if back == [7u8; 64] => {
                load.open_trips.fetch_add(1, Ordering::Relaxed);
                if phase == ROTATED {
                    load.open_trips_after.fetch_add(1, Ordering::Relaxed);
                }
            }
            other => {
                load.fail(format!(
                    "the open connection failed in phase {phase}: {other:?}"
                ));
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A CA rotation through the real agent path (`ca_set_config` → roots watch → leaf re-issue
/// with no jitter) in the middle of continuous load: several clients doing back-to-back full
/// handshakes plus one echo each, at least 1,000 in all. None fails; every handshake started
/// after both leaves were re-issued shows the new root on both sides; a connection opened
/// before the rotation keeps echoing through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_under_continuous_handshakes_fails_none() {
    const CLIENTS: usize = 4;
    const HANDSHAKES_BEFORE: u64 = 500;
    const HANDSHAKES_AFTER: u64 = 500;
    let limit = Duration::from_secs(60);

    let mut config = ServerConfig::dev();
    config.default_intention_policy = Some(IntentionAction::Deny);
    let server = Server::start(config, connect_core::clock::system()).unwrap();
    let agent = Agent::new(AgentConfig {
        backend: AgentBackend::InProcess(server.clone()),
        root_change_jitter: Duration::ZERO,
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    })
    .unwrap();
    agent
        .intention_upsert("web", "db", IntentionAction::Allow)
        .await
        .unwrap();
    let db = agent.service("db").unwrap();
    let web = agent.service("web").unwrap();
    db.ready_wait(IO).await.unwrap();
    web.ready_wait(IO).await.unwrap();
    let active_key = |s: &Server| s.ca_roots().value.active().unwrap().signing_key_id.clone();
    let load = Arc::new(Load::default());
    load.old_key.set(active_key(&server)).unwrap();

    let l = db.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    rotation_echo(l, Arc::clone(&load));
    let open = web.dial_addr(addr, "db").await.unwrap();
    let open_task = tokio::spawn(open_connection_loop(open, Arc::clone(&load)));
    let clients = spawn_load(CLIENTS, web.identity(), addr, &load, handshake_loop);

    let progress =
        || load.total.load(Ordering::Relaxed) + load.failures.lock().unwrap().len() as u64;
    wait_for("handshakes before the rotation", limit, || {
        progress() >= HANDSHAKES_BEFORE
    })
    .await;
    load.phase.store(ROTATING, Ordering::SeqCst);
    agent.ca_set_config(p384_ca()).await.unwrap();
    let new_key = active_key(&server);
    assert_ne!(Some(&new_key), load.old_key.get());
    load.new_key.set(new_key.clone()).unwrap();
    let reissued = |s: &connect_core::agent::ConnectService| {
        s.identity()
            .snapshot()
            .svid()
            .is_some_and(|v| issuer_key_of(v.leaf()).eq_ignore_ascii_case(&new_key))
    };
    wait_for("both leaves re-issued by the new root", limit, || {
        reissued(&db) && reissued(&web)
    })
    .await;
    load.phase.store(ROTATED, Ordering::SeqCst);
    wait_for("handshakes after the rotation", limit, || {
        load.after.load(Ordering::Relaxed) >= HANDSHAKES_AFTER
            || !load.failures.lock().unwrap().is_empty()
    })
    .await;
    load.done.store(true, Ordering::SeqCst);
    for c in clients {
        timeout(IO * 2, c).await.unwrap().unwrap();
    }
    timeout(IO * 2, open_task).await.unwrap().unwrap();

    let failures = load.failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    let total = load.total.load(Ordering::Relaxed);
    assert!(total >= HANDSHAKES_BEFORE + HANDSHAKES_AFTER, "{total}");
    assert!(load.after.load(Ordering::Relaxed) >= HANDSHAKES_AFTER);
    // db saw web's new leaf on every request made after the rotation.
    assert_eq!(
        load.server_checked_after.load(Ordering::Relaxed),
        load.after.load(Ordering::Relaxed)
    );
    assert!(load.open_trips_after.load(Ordering::Relaxed) > 0);
    let stats = db.tls().server().stats();
    assert_eq!(stats.failed, 0, "{stats:?}");
    // Every client handshake, plus the connection opened before.
    assert_eq!(stats.accepted, total + 1, "{stats:?}");
    assert_eq!(stats.resumed, 0, "{stats:?}");
    eprintln!(
        "{total} handshakes ({} after the rotation), {} round trips on the open connection",
        load.after.load(Ordering::Relaxed),
        load.open_trips.load(Ordering::Relaxed)
    );
    agent.close();
}
