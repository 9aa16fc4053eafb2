//! Intentions decide inside the handshake (ARCHITECTURE.md, Data path: a handshake): with
//! `*→db deny` and `web→db allow`, `web` gets in, `api` gets an alert and db's application never
//! sees it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up panics on failure"
)]

mod tls_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use connect_core::ErrorKind;
use connect_core::intentions::{
    DefaultPolicy, Intention, IntentionAction, IntentionIndex, SharedIntentionIndex,
};
use connect_core::spiffe::SpiffeId;
use connect_core::tls::{self, PeerInput, Service, authorizer, mtls_server};
use tls_support::{IO, Mesh, accept_once, db_intentions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

type Denials = Arc<Mutex<Vec<(String, String)>>>;

fn db_service(mesh: &mut Mesh, index: Arc<SharedIntentionIndex>) -> (Service, Denials) {
    let denials: Denials = Arc::default();
    let seen = denials.clone();
    let server = mtls_server(&mesh.identity("db"))
        .authorize(authorizer::from_intentions("db", index))
        .on_deny(move |peer, why| {
            seen.lock()
                .unwrap()
                .push((peer.to_string(), why.reason().to_owned()));
        })
        .build()
        .unwrap();
    (Service::from_server(server), denials)
}

#[tokio::test]
async fn web_is_allowed_and_api_is_refused_during_the_handshake() {
    let mut mesh = Mesh::new();
    let (db, denials) = db_service(&mut mesh, Arc::new(db_intentions()));
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let api = Service::new(mesh.identity("api"), authorizer::any()).unwrap();
    let mut listener = db.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();

    // api: the client gets db's alert, on dial (TLS 1.2) or on its first read (TLS 1.3, where
    // the client finishes before the server has judged its certificate).
    match timeout(IO, api.dial_addr(addr, "db")).await.unwrap() {
        Err(e) => assert_eq!(e.kind(), ErrorKind::Tls, "{e}"),
        Ok(mut c) => {
            let _ = c.write_all(b"let me in").await;
            let mut buf = [0u8; 16];
            let err = timeout(IO, c.read(&mut buf)).await.unwrap().unwrap_err();
            let e = tls::error_from_io(&err);
            assert_eq!(e.kind(), ErrorKind::Tls);
            assert!(
                e.to_string()
                    .starts_with("remote error: tls: access denied"),
                "{e}"
            );
        }
    }
    // db's application never saw api's connection.
    assert!(
        timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err(),
        "a denied connection reached accept()"
    );
    let seen = denials.lock().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].0, mesh.uri("api"));
    assert!(
        seen[0]
            .1
            .starts_with("connect: authz denied: Matched L4 intention"),
        "{}",
        seen[0].1
    );
    let stats = db.server().stats();
    assert_eq!((stats.denied, stats.accepted), (1, 0));
    assert_eq!(stats.last_denial.as_deref(), Some(seen[0].1.as_str()));

    // web gets through, and the data flows.
    let mut c = timeout(IO, web.dial_addr(addr, "db"))
        .await
        .unwrap()
        .unwrap();
    let mut s = timeout(IO, listener.accept()).await.unwrap().unwrap();
    assert_eq!(s.peer_id().to_string(), mesh.uri("web"));
    c.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hi");
}

#[tokio::test]
async fn the_servers_own_error_is_authorization_denied_with_the_reason() {
    let mut mesh = Mesh::new();
    let (db, _) = db_service(&mut mesh, Arc::new(db_intentions()));
    let api = Service::new(mesh.identity("api"), authorizer::any()).unwrap();
    let (addr, accept) = accept_once(db.server()).await;
    let _client = api.dial_addr(addr, "db").await;
    let e = timeout(IO, accept).await.unwrap().unwrap().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AuthorizationDenied);
    assert!(
        e.to_string()
            .starts_with("connect: authz denied: Matched L4 intention"),
        "{e}"
    );
}

/// `db` listening and `web` connected to it, having read a byte from db: by then web holds
/// db's session tickets. Returns the listener, its address and both ends of the connection
/// (web's, then db's), which stay open while the caller holds them.
async fn connected_with_tickets(
    db: &Service,
    web: &Service,
) -> (
    tls::Listener,
    std::net::SocketAddr,
    tls::Connection,
    tls::Connection,
) {
    let mut listener = db.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let mut c = web.dial_addr(addr, "db").await.unwrap();
    let mut s = timeout(IO, listener.accept()).await.unwrap().unwrap();
    s.write_all(b"t").await.unwrap();
    let mut b = [0u8; 1];
    c.read_exact(&mut b).await.unwrap();
    (listener, addr, c, s)
}

#[tokio::test]
async fn an_intention_changed_to_deny_also_stops_resumed_sessions() {
    let mut mesh = Mesh::new();
    let index = Arc::new(SharedIntentionIndex::new(IntentionIndex::new(
        [Intention::new("web", "db", IntentionAction::Allow)],
        DefaultPolicy::acl(IntentionAction::Deny),
    )));
    let (db, denials) = db_service(&mut mesh, index.clone());
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let (mut listener, addr, mut c, _s) = connected_with_tickets(&db, &web).await;
    let mut b = [0u8; 1];

    index.store(IntentionIndex::new(
        [Intention::new("web", "db", IntentionAction::Deny)],
        DefaultPolicy::acl(IntentionAction::Deny),
    ));
    // The change retired the server's tickets: web's ticket no longer resumes, so the
    // handshake is a full one, the intentions are checked inside it, and web reads the
    // documented access_denied alert rather than an end of stream.
    assert_access_denied(&web, addr).await;
    assert!(
        timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err()
    );
    assert_eq!(denials.lock().unwrap().len(), 1);
    // The first connection was authorized when it was made; revocation (on by default, see
    // tls_revocation.rs) closes it now that its peer is denied.
    let r = timeout(IO, c.read(&mut b)).await.unwrap();
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
}

/// Dials `addr` as `from` and expects db's `access_denied` alert from a full handshake: on
/// the dial (TLS 1.2) or on the first read (TLS 1.3).
async fn assert_access_denied(from: &Service, addr: std::net::SocketAddr) {
    let e = match timeout(IO, from.dial_addr(addr, "db")).await.unwrap() {
        Err(e) => e,
        Ok(mut c) => {
            assert!(!c.is_resumed(), "a denied client resumed its session");
            let mut b = [0u8; 1];
            let r = timeout(IO, c.read(&mut b)).await.unwrap();
            tls::error_from_io(&r.expect_err("a denied client read data or a clean EOF"))
        }
    };
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert!(
        e.to_string()
            .starts_with("remote error: tls: access denied"),
        "{e}"
    );
}

/// An authorizer that announces no changes cannot retire tickets ahead of time: a resumed
/// peer it now denies is caught after the handshake. The client then reads an error, never a
/// clean end of stream, and its next handshake is a full one that gets the alert.
#[tokio::test]
async fn a_resumed_peer_denied_after_the_handshake_reads_an_error_then_gets_the_alert() {
    let mut mesh = Mesh::new();
    let allow = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = allow.clone();
    let server = mtls_server(&mesh.identity("db"))
        .authorize(
            move |_: &SpiffeId, _: &[rustls_pki_types::CertificateDer<'_>]| {
                if flag.load(std::sync::atomic::Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err(authorizer::AuthzDenied::new("switched off"))
                }
            },
        )
        .revocation_interval(None)
        .build()
        .unwrap();
    let db = Service::from_server(server);
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let (mut listener, addr, _c, _s) = connected_with_tickets(&db, &web).await;
    let mut b = [0u8; 1];

    allow.store(false, std::sync::atomic::Ordering::SeqCst);
    let mut c2 = web.dial_addr(addr, "db").await.unwrap();
    assert!(c2.is_resumed());
    let r = timeout(IO, c2.read(&mut b)).await.unwrap();
    let e = tls::error_from_io(&r.expect_err("a clean EOF would read as a normal close"));
    assert_eq!(e.kind(), ErrorKind::Tls, "{e}");
    assert_access_denied(&web, addr).await;
    assert!(
        timeout(Duration::from_millis(200), listener.accept())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn authorize_peer_explains_for_other_tls_stacks() {
    let mut mesh = Mesh::new();
    let (db, _) = db_service(&mut mesh, Arc::new(db_intentions()));
    let web = mesh.identity("web");
    let api = mesh.identity("api");

    let ok = db.authorize_peer(PeerInput::Uri(&mesh.uri("web"))).unwrap();
    assert!(ok.allowed);
    assert!(
        ok.reason.starts_with("Matched L4 intention"),
        "{}",
        ok.reason
    );

    let chain = web.chain_pem().unwrap();
    let ok = db.authorize_peer(PeerInput::ChainPem(&chain)).unwrap();
    assert!(ok.allowed);
    assert_eq!(ok.peer.to_string(), mesh.uri("web"));

    let leaf = api.snapshot().svid().unwrap().leaf().clone();
    let no = db.authorize_peer(PeerInput::CertDer(&leaf)).unwrap();
    assert!(!no.allowed);
    assert_eq!(no.peer.to_string(), mesh.uri("api"));
    assert!(no.reason.contains("Matched L4 intention"), "{}", no.reason);

    let agent = format!(
        "spiffe://{}/agent/client/dc/dc1/id/node1",
        mesh.ca.trust_domain()
    );
    let no = db.authorize_peer(PeerInput::Uri(&agent)).unwrap();
    assert!(!no.allowed);
    assert_eq!(no.reason, "ClientCertURI not a valid Service identifier");

    let e = db
        .authorize_peer(PeerInput::Uri("http://nope"))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidSpiffeId);
    let e = db.authorize_peer(PeerInput::CertDer(b"junk")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);

    // A DER chain as other TLS stacks report it (Node's getPeerX509Certificate): the same
    // decisions, and typed errors for an empty chain and for bytes that are no certificate.
    let ders = web.snapshot().svid().unwrap().chain().to_vec();
    let ok = db.authorize_peer(PeerInput::ChainDer(&ders)).unwrap();
    assert!(ok.allowed);
    assert_eq!(ok.peer.to_string(), mesh.uri("web"));
    let e = db.authorize_peer(PeerInput::ChainDer(&[])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);
    let junk = [rustls_pki_types::CertificateDer::from(&b"junk"[..])];
    let e = db.authorize_peer(PeerInput::ChainDer(&junk)).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::InvalidCertificate | ErrorKind::CertificateVerification
        ),
        "{e:?}"
    );
    let stranger = Mesh::new().identity("web").chain_pem().unwrap();
    let e = db
        .authorize_peer(PeerInput::ChainPem(&stranger))
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CertificateVerification);

    // The exact and member_of authorizers, end to end in the same API.
    let only_web = Service::new(
        mesh.identity("db"),
        authorizer::exact(SpiffeId::parse(&mesh.uri("web")).unwrap()),
    )
    .unwrap();
    assert!(
        only_web
            .authorize_peer(PeerInput::Uri(&mesh.uri("web")))
            .unwrap()
            .allowed
    );
    assert!(
        !only_web
            .authorize_peer(PeerInput::Uri(&mesh.uri("api")))
            .unwrap()
            .allowed
    );
}

#[test]
fn a_server_needs_an_authorizer() {
    let mut mesh = Mesh::new();
    let e = mtls_server(&mesh.identity("db")).build().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidParameter);
}
