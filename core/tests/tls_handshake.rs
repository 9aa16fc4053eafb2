//! Real loopback mTLS between services whose leaves the built-in CA issued (ARCHITECTURE.md, Test
//! habits): data both ways, the identity checks of ARCHITECTURE.md, Data path: a handshake, typed
//! errors, resumption, and the blocking bridge driving the async API.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test set-up panics on failure"
)]

mod tls_support;

use std::time::Duration;

use connect_core::ErrorKind;
use connect_core::blocking::{self, Call};
use connect_core::tls::{self, Bundle, Identity, Service, authorizer, mtls_client};
use tls_support::{IO, Mesh, accept_once};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::timeout;

#[tokio::test]
async fn web_and_db_talk_both_ways_and_know_each_other() {
    let mut mesh = Mesh::new();
    let db = Service::new(mesh.identity("db"), authorizer::any()).unwrap();
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let mut listener = db.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();

    let server = tokio::spawn(async move {
        let mut conn = timeout(IO, listener.accept()).await.unwrap().unwrap();
        let peer = conn.peer_id().to_string();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").await.unwrap();
        conn.flush().await.unwrap();
        (peer, conn.protocol_version(), conn.key_exchange_group())
    });

    let mut conn = timeout(IO, web.dial_addr(addr, "db"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(conn.peer_id().to_string(), mesh.uri("db"));
    conn.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    timeout(IO, conn.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf, b"pong");

    let (server_saw, version, group) = server.await.unwrap();
    assert_eq!(server_saw, mesh.uri("web"));
    assert_eq!(version, Some(rustls::ProtocolVersion::TLSv1_3));
    assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
    assert_eq!(db.server().stats().accepted, 1);
}

#[tokio::test]
async fn a_server_presenting_web_when_db_is_expected_is_a_mismatch() {
    let mut mesh = Mesh::new();
    let impostor = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let client = Service::new(mesh.identity("api"), authorizer::any()).unwrap();
    let listener = impostor.listen("127.0.0.1:0").await.unwrap();

    let e = timeout(IO, client.dial_addr(listener.local_addr(), "db"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerIdentityMismatch);
    assert_eq!(
        e.to_string(),
        format!(
            "peer certificate mismatch got {}, want {}",
            mesh.uri("web"),
            mesh.uri("db")
        )
    );
    // The same with a full SPIFFE ID as the expectation (Go's StaticResolver CertURI).
    let want = connect_core::spiffe::SpiffeId::parse(&mesh.uri("db")).unwrap();
    let e = client
        .dial_addr(listener.local_addr(), want)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PeerIdentityMismatch);
}

#[tokio::test]
async fn dialing_a_closed_port_is_connection_refused() {
    let mut mesh = Mesh::new();
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let e = web.dial_addr(("127.0.0.1", port), "db").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

#[tokio::test]
async fn a_silent_server_times_out_the_handshake() {
    let mut mesh = Mesh::new();
    let web = mesh.identity("web");
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let (s, _) = silent.accept().await.unwrap();
        tokio::time::sleep(IO).await;
        drop(s);
    });
    let client = mtls_client(&web, "db")
        .handshake_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let e = client.dial_addr(addr).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    hold.abort();
}

#[tokio::test]
async fn an_untrusted_ca_fails_verification_on_both_sides() {
    let mut mesh = Mesh::new();
    let mut other = Mesh::new();
    let db = Service::new(mesh.identity("db"), authorizer::any()).unwrap();
    let listener = db.listen("127.0.0.1:0").await.unwrap();

    // A client of another cluster does not trust db's root.
    let stranger = Service::new(other.identity("web"), authorizer::any()).unwrap();
    let e = stranger
        .dial_addr(listener.local_addr(), "db")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CertificateVerification, "{e}");
    assert_eq!(
        e.to_string(),
        "x509: certificate signed by unknown authority"
    );

    // A client that trusts db's root but holds a leaf of another CA is refused by db.
    let web = Identity::new("web", mesh.clock.clone());
    web.update_svid(other.svid("web")).unwrap();
    web.update_bundle(mesh.bundle()).unwrap();
    let (addr, accept) = accept_once(db.server()).await;
    let client = mtls_client(&web, "db").build().unwrap();
    let dialed = client.dial_addr(addr).await;
    let server_err = timeout(IO, accept).await.unwrap().unwrap().unwrap_err();
    assert_eq!(server_err.kind(), ErrorKind::CertificateVerification);
    assert_eq!(
        server_err.to_string(),
        "x509: certificate signed by unknown authority"
    );
    // TLS 1.3: the client may finish before the server's verdict; its first read fails.
    if let Ok(mut c) = dialed {
        let mut buf = [0u8; 1];
        let r = timeout(IO, c.read(&mut buf)).await.unwrap();
        let e = tls::error_from_io(&r.unwrap_err());
        assert_eq!(e.kind(), ErrorKind::Tls);
        assert!(
            e.to_string().contains("unknown certificate authority"),
            "{e}"
        );
    }
}

#[tokio::test]
async fn no_leaf_yet_is_not_ready() {
    let mesh = Mesh::new();
    let web = Identity::new("web", mesh.clock.clone());
    web.update_bundle(mesh.bundle()).unwrap();
    let svc = Service::new(web.clone(), authorizer::any()).unwrap();
    let e = svc.dial_addr("127.0.0.1:9", "db").await.unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::NotReady | ErrorKind::ConnectionRefused),
        "{e}"
    );
    let client = mtls_client(&web, "db").build().unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tcp = tokio::net::TcpStream::connect(l.local_addr().unwrap())
        .await
        .unwrap();
    let e = client.connect(tcp).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotReady);
    let e = web.ready_wait(Duration::from_millis(50)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);
}

#[tokio::test]
async fn a_second_dial_resumes_the_session() {
    let mut mesh = Mesh::new();
    let db = Service::new(mesh.identity("db"), authorizer::any()).unwrap();
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let mut listener = db.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let mut resumed = Vec::new();
    for _ in 0..2 {
        let mut c = web.dial_addr(addr, "db").await.unwrap();
        let mut s = timeout(IO, listener.accept()).await.unwrap().unwrap();
        // Exchange data so the client has read the server's session tickets.
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(s.peer_id().to_string(), mesh.uri("web"));
        assert_eq!(c.peer_id().to_string(), mesh.uri("db"));
        resumed.push((c.is_resumed(), s.is_resumed()));
    }
    assert_eq!(resumed, [(false, false), (true, true)]);
    assert_eq!(db.server().stats().resumed, 1);
}

/// After a rotation the client's next handshake is a full one, so it sees the server's new
/// leaf; a resumed session would keep reporting the certificate of before the rotation.
#[tokio::test]
async fn a_new_leaf_or_new_roots_end_resumption() {
    let mut mesh = Mesh::new();
    let db_identity = mesh.identity("db");
    let web_identity = mesh.identity("web");
    let db = Service::new(db_identity.clone(), authorizer::any()).unwrap();
    let web = Service::new(web_identity.clone(), authorizer::any()).unwrap();
    let mut listener = db.listen("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr();
    let mut dial = async || {
        let mut c = web.dial_addr(addr, "db").await.unwrap();
        let mut s = timeout(IO, listener.accept()).await.unwrap().unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        (c.is_resumed(), c.peer_certificates()[0].clone())
    };
    let (first_resumed, before) = dial().await;
    assert!(!first_resumed);
    assert!(dial().await.0, "the second dial should resume");

    mesh.rotate();
    db_identity.update_bundle(mesh.bundle()).unwrap();
    db_identity.update_svid(mesh.svid("db")).unwrap();
    web_identity.update_bundle(mesh.bundle()).unwrap();
    let (resumed, after) = dial().await;
    assert!(
        !resumed,
        "the first dial after new roots must be a full handshake"
    );
    assert_ne!(before, after, "the server's re-issued leaf is seen");
    assert!(dial().await.0, "and later dials resume again");

    // Only the server's leaf changes (re-issued before the client's, say): the server's
    // tickets start over too, so the client cannot resume into the old certificate.
    db_identity.update_svid(mesh.svid("db")).unwrap();
    let (resumed, newest) = dial().await;
    assert!(
        !resumed,
        "a ticket from before the server's new leaf must not resume"
    );
    assert_ne!(after, newest);
}

#[test]
fn blocking_bridge_echoes_and_times_out() {
    let mut mesh = Mesh::new();
    let db = Service::new(mesh.identity("db"), authorizer::any()).unwrap();
    let web = Service::new(mesh.identity("web"), authorizer::any()).unwrap();
    let rt = blocking::runtime().unwrap();
    Call::new("ready wait")
        .unwrap()
        .run(&rt, web.identity().ready_wait(IO))
        .unwrap();
    let mut listener = Call::new("listen")
        .unwrap()
        .run(&rt, db.listen("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr();

    let e = Call::new("accept")
        .unwrap()
        .timeout(Some(Duration::from_millis(50)))
        .run(&rt, listener.accept())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout);

    let client = std::thread::spawn(move || {
        let rt = blocking::runtime().unwrap();
        let io = |what| Call::new(what).unwrap().timeout(Some(IO));
        let mut c = Call::new("dial")
            .unwrap()
            .run(&rt, web.dial_addr(addr, "db"))
            .unwrap();
        io("write")
            .run(&rt, async {
                c.write_all(b"hello")
                    .await
                    .map_err(|e| tls::error_from_io(&e))
            })
            .unwrap();
        let mut buf = [0u8; 5];
        io("read")
            .run(&rt, async {
                c.read_exact(&mut buf)
                    .await
                    .map_err(|e| tls::error_from_io(&e))
            })
            .unwrap();
        // A read with nothing to read times out instead of hanging.
        let e = Call::new("read")
            .unwrap()
            .timeout(Some(Duration::from_millis(50)))
            .run(&rt, async {
                c.read(&mut [0u8; 1])
                    .await
                    .map_err(|e| tls::error_from_io(&e))
            })
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Timeout);
        (buf, c.peer_id().to_string())
    });
    let io = |what| Call::new(what).unwrap().timeout(Some(IO));
    let mut s = io("accept").run(&rt, listener.accept()).unwrap();
    assert_eq!(s.peer_id().to_string(), mesh.uri("web"));
    let mut buf = [0u8; 5];
    io("read")
        .run(&rt, async {
            s.read_exact(&mut buf)
                .await
                .map_err(|e| tls::error_from_io(&e))
        })
        .unwrap();
    io("write")
        .run(&rt, async {
            s.write_all(&buf)
                .await
                .map_err(|e| tls::error_from_io(&e))?;
            s.flush().await.map_err(|e| tls::error_from_io(&e))
        })
        .unwrap();
    let (echo, peer) = client.join().unwrap();
    assert_eq!(&echo, b"hello");
    assert_eq!(peer, mesh.uri("db"));
}

#[tokio::test]
async fn blocking_calls_inside_a_runtime_are_refused() {
    let e = Call::new("listen").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidParameter);
}

#[test]
fn garbage_material_is_a_typed_error() {
    use connect_core::tls::Svid;
    let mut mesh = Mesh::new();
    let e = Svid::from_pem("not pem", "not pem").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);
    let (chain, key) = mesh.pem_pair("web");
    let e = Svid::from_pem(
        &chain,
        "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n",
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey, "{e}");
    // The key of another leaf does not match.
    let (_, other_key) = mesh.pem_pair("web");
    let e = Svid::from_pem(&chain, &other_key).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidKey);
    assert!(e.to_string().contains("does not match"), "{e}");
    assert!(Svid::from_pem(&chain, &key).is_ok());
    let e = Svid::from_der(
        vec![rustls::pki_types::CertificateDer::from(
            b"\x30\x03\x02\x01\x01".to_vec(),
        )],
        rustls::pki_types::PrivateKeyDer::Pkcs8(b"junk".to_vec().into()),
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);
    let e = Bundle::new(mesh.ca.trust_domain().as_str(), vec![]).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);
    let e = Bundle::new(
        &mesh.ca.trust_domain(),
        vec![rustls::pki_types::CertificateDer::from(vec![0u8; 10])],
    )
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);
    let e = Bundle::from_pem("not a trust domain!", &mesh.ca.roots().roots_pem()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidTrustDomain);
    let e =
        tls::peer_identity(&rustls::pki_types::CertificateDer::from(vec![1u8, 2, 3])).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);
}
