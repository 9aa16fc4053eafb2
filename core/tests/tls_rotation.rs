//! CA rotation and leaf renewal under live traffic (spec §2.7, §8.2, §8.5; conventions 39, 41):
//! cross-signed chains bridge the old and new roots, open connections survive, new handshakes
//! present the new leaf, and a leaf that does not fit is never published.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up panics on failure"
)]

mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use connect_core::ErrorKind;
use connect_core::ca::{CaConfiguration, SignPolicy, generate_leaf_request};
use connect_core::certs;
use connect_core::tls::{Identity, Service, Svid, authorizer, mtls_client};
use serde_json::json;
use tls_support::{IO, Mesh, db_intentions};
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
    let mut forced = CaConfiguration::consul(
        json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
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
