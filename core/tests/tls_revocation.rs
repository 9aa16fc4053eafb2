//! Revocation of live connections: when intentions change so that an open connection's peer
//! is no longer allowed, the listener closes it within the bound, and leaves the others open.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod tls_support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use connect_core::agent::{Agent, AgentBackend, AgentConfig};
use connect_core::intentions::IntentionAction;
use connect_core::server::{Server, ServerConfig};
use connect_core::spiffe::SpiffeId;
use connect_core::tls::{self, AuthzDenied, Connection, Service, authorizer};
use rustls_pki_types::CertificateDer;
use tls_support::{IO, Mesh, echo, round_trip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long until a read on `c` ends (end-of-stream or error); panics after `limit`.
async fn closed_within(c: &mut Connection, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 16];
    match tokio::time::timeout(limit, c.read(&mut buf)).await {
        Ok(Ok(0) | Err(_)) => start.elapsed(),
        Ok(Ok(n)) => panic!("read {n} bytes from a revoked connection"),
        Err(_) => panic!("connection still open after {limit:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_intention_flipped_to_deny_closes_the_open_connection() {
    let mut c = ServerConfig::dev();
    c.default_intention_policy = Some(IntentionAction::Deny);
    let server = Server::start(c, connect_core::clock::system()).unwrap();
    let agent = Agent::new(AgentConfig {
        backend: AgentBackend::InProcess(server.clone()),
        runtime: Some(tokio::runtime::Handle::current()),
        ..AgentConfig::dev()
    })
    .unwrap();
    for src in ["web", "api"] {
        agent
            .intention_upsert(src, "db", IntentionAction::Allow)
            .await
            .unwrap();
    }
    let db = agent.service("db").unwrap();
    let web = agent.service("web").unwrap();
    let api = agent.service("api").unwrap();
    for s in [&db, &web, &api] {
        s.ready_wait(IO).await.unwrap();
    }
    let l = db.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    let server_side = l.server().clone();
    echo(l);
    // web's connections present one chain, which the listener holds once for all of them;
    // one of them closes before the change and must not count.
    let mut from_web = web.dial_addr(addr, "db").await.unwrap();
    let mut from_web_too = web.dial_addr(addr, "db").await.unwrap();
    let mut gone = web.dial_addr(addr, "db").await.unwrap();
    let mut from_api = api.dial_addr(addr, "db").await.unwrap();
    round_trip(&mut from_web, b"web before").await;
    round_trip(&mut from_web_too, b"web again").await;
    round_trip(&mut gone, b"web, briefly").await;
    round_trip(&mut from_api, b"api before").await;
    // Closed, and the server's close seen: the server has dropped its side (which
    // unregisters before the socket closes) before the change below.
    gone.shutdown().await.unwrap();
    closed_within(&mut gone, IO).await;
    drop(gone);

    agent
        .intention_upsert("web", "db", IntentionAction::Deny)
        .await
        .unwrap();
    // The bound is DEFAULT_REVOCATION_INTERVAL; intentions notify, so it is much less.
    let took = closed_within(&mut from_web, tls::DEFAULT_REVOCATION_INTERVAL * 3).await;
    assert!(took < tls::DEFAULT_REVOCATION_INTERVAL * 2, "{took:?}");
    closed_within(&mut from_web_too, tls::DEFAULT_REVOCATION_INTERVAL).await;
    // The peer that is still allowed keeps its connection.
    round_trip(&mut from_api, b"api after").await;
    // Counted per connection, not per chain.
    assert_eq!(server_side.stats().revoked, 2);
    // And web cannot come back.
    let again = async {
        let mut c = web.dial_addr(addr, "db").await?;
        c.write_all(b"x")
            .await
            .map_err(|e| tls::error_from_io(&e))?;
        let mut b = [0u8; 1];
        c.read_exact(&mut b)
            .await
            .map_err(|e| tls::error_from_io(&e))?;
        Ok::<_, connect_core::Error>(())
    };
    assert!(tokio::time::timeout(IO, again).await.unwrap().is_err());
    agent.close();
}

/// An authorizer that cannot report changes: a closure allowing every peer while the flag is
/// up.
fn flag_authorizer() -> (Arc<AtomicBool>, impl tls::Authorizer + Clone) {
    let allow = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&allow);
    let by_flag = move |_: &SpiffeId, _: &[CertificateDer<'_>]| {
        if flag.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(AuthzDenied::new("flag down"))
        }
    };
    (allow, by_flag)
}

/// An authorizer that cannot report changes (a closure over a flag): the interval bounds the
/// delay; with revocation off, the connection stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_interval_bounds_authorizers_without_notifications_and_off_means_off() {
    let mut mesh = Mesh::new();
    let (allow, by_flag) = flag_authorizer();
    let db_identity = mesh.identity("db");
    let revoking = Service::from_server(
        tls::mtls_server(&db_identity)
            .authorize(by_flag.clone())
            .revocation_interval(Some(Duration::from_millis(200)))
            .build()
            .unwrap(),
    );
    let keeping = Service::from_server(
        tls::mtls_server(&db_identity)
            .authorize(by_flag)
            .revocation_interval(None)
            .build()
            .unwrap(),
    );
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let l1 = revoking.listen("127.0.0.1:0").await.unwrap();
    let l2 = keeping.listen("127.0.0.1:0").await.unwrap();
    let (a1, a2) = (l1.local_addr(), l2.local_addr());
    echo(l1);
    echo(l2);
    let mut c1 = web.dial_addr(a1, "db").await.unwrap();
    let mut c2 = web.dial_addr(a2, "db").await.unwrap();
    round_trip(&mut c1, b"one").await;
    round_trip(&mut c2, b"two").await;
    allow.store(false, Ordering::SeqCst);
    let took = closed_within(&mut c1, Duration::from_secs(3)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    round_trip(&mut c2, b"still here").await;
    assert_eq!(revoking.server().stats().revoked, 1);
    assert_eq!(keeping.server().stats().revoked, 0);
}

/// The inodes of the IPv4 TCP sockets whose local port is `port`: a listener's own socket and
/// the ones it accepted (`/proc/net/tcp`).
fn sockets_on_port(port: u16) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let inode: u64 = f.get(9)?.parse().ok()?;
            // Inode 0: a socket no descriptor holds any more (TIME_WAIT).
            (local == port && inode != 0).then_some(inode)
        })
        .collect()
}

/// How many of this process's descriptors refer to one of `inodes` (other tests running in
/// the same process open descriptors of their own, so a plain count would not do).
fn descriptors_of(inodes: &HashSet<u64>) -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|t| {
            let t = t
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .to_owned();
            t.parse::<u64>().ok()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

/// Revocation reaches a live connection through the socket the connection owns: a held
/// connection costs the listener its one descriptor (a second one kept for revocation would
/// cap a listener at half the open-file limit). A connection taken apart for a caller that
/// drives the socket itself, as the C ABI does, is still shut down when its peer is denied,
/// and its descriptor closes when the caller drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_connection_costs_one_descriptor_and_taken_apart_is_still_revoked() {
    let mut mesh = Mesh::new();
    let (allow, by_flag) = flag_authorizer();
    let db = Service::from_server(
        tls::mtls_server(&mesh.identity("db"))
            .authorize(by_flag)
            .revocation_interval(Some(Duration::from_millis(100)))
            .build()
            .unwrap(),
    );
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let mut l = db.listen("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr();
    // Warm: the first dial and accept set up the runtime's and the resolver's descriptors.
    let first = web.dial_addr(addr, "db").await.unwrap();
    let first_server = l.accept().await.unwrap();

    const N: usize = 40;
    let mut held = Vec::new();
    for _ in 0..N {
        let c = web.dial_addr(addr, "db").await.unwrap();
        let s = tokio::time::timeout(IO, l.accept()).await.unwrap().unwrap();
        held.push((c, s));
    }
    // The listener's socket and every accepted one, each behind exactly one descriptor (a
    // duplicate kept for revocation would make it two).
    let sockets = sockets_on_port(addr.port());
    assert!(
        sockets.len() > N,
        "{} sockets on the listener's port",
        sockets.len()
    );
    assert_eq!(descriptors_of(&sockets), sockets.len());

    // Taken apart: a blocking std socket and the rustls state; the registration goes along.
    let mut client = first;
    let parts = first_server.into_sync_parts().unwrap();
    assert!(parts.revocable.is_some());
    assert!(format!("{parts:?}").contains("SyncParts"));
    let socket = Arc::clone(&parts.socket);
    socket.set_read_timeout(Some(IO)).unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut buf = [0u8; 64];
        // Shut down both ways by the revocation: the blocked read ends with end-of-stream.
        (&*socket).read(&mut buf)
    });
    allow.store(false, Ordering::SeqCst);
    let n = tokio::time::timeout(IO * 2, reader)
        .await
        .unwrap()
        .unwrap()
        .expect("the read ends with end-of-stream, not a timeout");
    assert_eq!(n, 0);
    // The client of the taken-apart connection sees it close, as do the tracked ones.
    closed_within(&mut client, IO).await;
    for (c, _) in &mut held {
        closed_within(c, IO).await;
    }
    assert_eq!(db.server().stats().revoked, N as u64 + 1);
    // The caller's socket is the only strong reference: dropping it closes the descriptor.
    let fd = {
        use std::os::fd::AsRawFd;
        parts.socket.as_raw_fd()
    };
    let own = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
    drop(parts);
    let now = std::fs::read_link(format!("/proc/self/fd/{fd}")).ok();
    assert_ne!(now, Some(own), "the descriptor is still open");
}
