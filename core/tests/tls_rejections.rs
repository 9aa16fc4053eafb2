//! Every way a client certificate can be wrong, one test each: the server refuses it inside
//! the handshake with a typed error that names the problem, and its application never sees
//! the connection (ARCHITECTURE.md, Data path: a handshake).
//!
//! The odd certificates are written with rcgen and, where a CA signature is needed, signed by
//! the test CA's own key with the CA's leaf profile, so each one differs from a good leaf only
//! in the property under test. A raw rustls client presents them, because `Svid` refuses to
//! hold most of them.
//!
//! The client-side rejection of a server naming the wrong service (Go's "peer certificate
//! mismatch") is `a_server_presenting_web_when_db_is_expected_is_a_mismatch` in
//! `tls_handshake.rs`, and against OpenSSL's `s_server` in `tls_interop.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod tls_support;

use std::sync::Arc;
use std::time::Duration;

use connect_core::tls::{self, KeyExchange, Listener, MtlsServer, Service, authorizer};
use connect_core::{Error, ErrorKind};
use rcgen::{
    CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::client::ResolvesClientCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tls_support::{IO, Mesh};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// db's listener, with every failed handshake reported on a channel.
struct Db {
    listener: Listener,
    server: MtlsServer,
    failures: mpsc::UnboundedReceiver<Error>,
}

async fn db(mesh: &mut Mesh) -> Db {
    let (tx, failures) = mpsc::unbounded_channel();
    let server = tls::mtls_server(&mesh.identity("db"))
        // Allow-all, so that nothing but the certificate can be the reason for a refusal.
        .authorize(authorizer::any())
        .on_handshake_error(move |_, e| {
            let _ = tx.send(e.clone());
        })
        .build()
        .unwrap();
    let listener = Service::from_server(server.clone())
        .listen("127.0.0.1:0")
        .await
        .unwrap();
    Db {
        listener,
        server,
        failures,
    }
}

impl Db {
    /// The one handshake failure db saw, after checking that its application got nothing.
    async fn refusal(&mut self) -> Error {
        let e = timeout(IO, self.failures.recv())
            .await
            .expect("db reported no handshake failure")
            .unwrap();
        // The failure is reported by the task that would have queued the connection, so by
        // now a connection that got through would already be waiting.
        assert!(
            timeout(Duration::from_millis(100), self.listener.accept())
                .await
                .is_err(),
            "db's application accepted a refused client"
        );
        let stats = self.server.stats();
        assert_eq!((stats.accepted, stats.failed), (0, 1), "{stats:?}");
        assert!(self.failures.try_recv().is_err(), "more than one failure");
        e
    }
}

/// Presents a fixed certificate, or none.
#[derive(Debug)]
struct Presents(Option<Arc<CertifiedKey>>);

impl ResolvesClientCert for Presents {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.clone()
    }

    fn has_certs(&self) -> bool {
        self.0.is_some()
    }
}

/// A client that checks db as libconnect's does but presents `cert` (or none) instead of a
/// leaf of its own.
fn raw_client(mesh: &mut Mesh, cert: Option<Arc<CertifiedKey>>) -> tokio_rustls::TlsConnector {
    let web = mesh.identity("web");
    let mut config: ClientConfig =
        (*tls::mtls_client(&web, "db").build().unwrap().config()).clone();
    config.client_auth_cert_resolver = Arc::new(Presents(cert));
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Dials db with `connector`; returns the error the client ends with. The client never gets
/// data: db's application never writes, so anything but an error fails the test.
async fn client_failure(connector: &tokio_rustls::TlsConnector, db: &Db) -> Error {
    let addr = db.listener.local_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::IpAddress(addr.ip().into());
    match timeout(IO, connector.connect(name, tcp)).await.unwrap() {
        Err(e) => tls::error_from_io(&e),
        Ok(stream) => first_read_error(stream).await,
    }
}

/// Under TLS 1.3 the client finishes before the server has judged its certificate; the
/// server's alert then fails its first read.
async fn first_read_error(mut stream: impl AsyncRead + Unpin) -> Error {
    let mut buf = [0u8; 16];
    match timeout(IO, stream.read(&mut buf)).await.unwrap() {
        Err(e) => tls::error_from_io(&e),
        Ok(n) => panic!("a refused client read {n} bytes instead of an alert"),
    }
}

/// Dials db with a client that presents `cert`, and checks both ends of the refusal: db's
/// error is `kind` with `message`, and the client gets the TLS alert `alert`.
async fn assert_refused(
    mesh: &mut Mesh,
    db: &mut Db,
    cert: Option<Arc<CertifiedKey>>,
    kind: ErrorKind,
    message: &str,
    alert: &str,
) {
    let connector = raw_client(mesh, cert);
    let client = client_failure(&connector, db).await;
    let e = db.refusal().await;
    assert_eq!(e.kind(), kind, "{e}");
    assert_eq!(e.to_string(), message);
    assert_alert(&client, alert);
}

fn assert_alert(client: &Error, alert: &str) {
    assert_eq!(client.kind(), ErrorKind::Tls, "{client}");
    assert_eq!(client.to_string(), format!("remote error: tls: {alert}"));
}

/// The test CA's active root with its key, as an rcgen issuer.
fn ca_issuer(mesh: &Mesh) -> Issuer<'static, KeyPair> {
    let secrets = mesh.ca.secrets().unwrap();
    let der = PrivateKeyDer::from_pem_slice(secrets.private_key_pem.as_bytes()).unwrap();
    let key = KeyPair::from_der_and_sign_algo(&der, &rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    Issuer::from_ca_cert_pem(&secrets.cert_pem, key).unwrap()
}

/// The built-in CA's leaf profile (key usages, client and server auth, 72 h from a minute
/// ago on the mesh clock) with the given URI SANs.
fn leaf_params(mesh: &Mesh, uris: &[String]) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI(u.as_str().try_into().unwrap()))
        .collect();
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::DataEncipherment,
        KeyUsagePurpose::KeyAgreement,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    p.not_before = mesh.clock.now() - Duration::from_secs(60);
    p.not_after = p.not_before + Duration::from_secs(72 * 3600);
    p.use_authority_key_identifier_extension = true;
    p
}

/// A leaf with `uris`, signed by the test CA.
fn ca_signed_leaf(mesh: &Mesh, uris: &[String]) -> Arc<CertifiedKey> {
    let key = KeyPair::generate().unwrap();
    let cert = leaf_params(mesh, uris)
        .signed_by(&key, &ca_issuer(mesh))
        .unwrap();
    certified(cert.der().clone(), &key)
}

fn certified(leaf: CertificateDer<'static>, key: &KeyPair) -> Arc<CertifiedKey> {
    let der = PrivateKeyDer::try_from(key.serialize_der()).unwrap();
    let signing = tls::crypto_provider(KeyExchange::default())
        .key_provider
        .load_private_key(der)
        .unwrap();
    Arc::new(CertifiedKey::new(vec![leaf], signing))
}

/// The control: a CA-signed leaf built here like the odd ones gets in, so the refusals below
/// are caused by the one property each of them changes.
#[tokio::test]
async fn the_control_leaf_built_like_the_odd_ones_is_accepted() {
    let mut mesh = Mesh::new();
    let mut db = db(&mut mesh).await;
    let web = ca_signed_leaf(&mesh, &[mesh.uri("web")]);
    let connector = raw_client(&mut mesh, Some(web));
    let addr = db.listener.local_addr();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _client = timeout(
        IO,
        connector.connect(ServerName::IpAddress(addr.ip().into()), tcp),
    )
    .await
    .unwrap()
    .unwrap();
    let conn = timeout(IO, db.listener.accept()).await.unwrap().unwrap();
    assert_eq!(conn.peer_id().to_string(), mesh.uri("web"));
    assert_eq!(db.server.stats().failed, 0);
}

#[tokio::test]
async fn a_leaf_of_another_trust_domain_is_an_unknown_authority() {
    let mut mesh = Mesh::new();
    let mut other = Mesh::new();
    assert_ne!(other.ca.trust_domain(), mesh.ca.trust_domain());
    let mut db = db(&mut mesh).await;
    // A well-formed web leaf of the other cluster, with its chain and key.
    let stranger = other.svid("web");
    assert_refused(
        &mut mesh,
        &mut db,
        Some(stranger.certified_key().clone()),
        ErrorKind::CertificateVerification,
        "x509: certificate signed by unknown authority",
        "unknown certificate authority",
    )
    .await;
}

#[tokio::test]
async fn an_expired_client_leaf_is_refused_on_the_injected_clock() {
    let mut mesh = Mesh::new();
    // web gets its 72 h leaf now and keeps it; then the clock moves past its expiry.
    let web = mesh.identity("web");
    let expiry = web.snapshot().svid().unwrap().not_after();
    mesh.manual.advance(Duration::from_secs(73 * 3600));
    assert!(mesh.clock.now() > expiry);
    // db starts now, with a leaf valid now, so only web's leaf is out of date.
    let mut db = db(&mut mesh).await;
    // Dialing does not check our own leaf's age (that is the agent's job), so the stale
    // leaf reaches db.
    let client = tls::mtls_client(&web, "db").build().unwrap();
    let conn = timeout(IO, client.dial_addr(db.listener.local_addr()))
        .await
        .unwrap();
    let client_err = match conn {
        Err(e) => e,
        Ok(c) => first_read_error(c).await,
    };

    let e = db.refusal().await;
    assert_eq!(e.kind(), ErrorKind::CertificateVerification, "{e}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("x509: certificate has expired or is not yet valid: current time "),
        "{msg}"
    );
    let after = format!(
        " is after {}",
        expiry
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    );
    assert!(msg.ends_with(&after), "{msg} does not end with {after}");
    assert_alert(&client_err, "expired certificate");
}

#[tokio::test]
async fn a_self_signed_client_leaf_is_an_unknown_authority() {
    let mut mesh = Mesh::new();
    let mut db = db(&mut mesh).await;
    // web's own URI and the CA's leaf profile, but signed by its own key.
    let key = KeyPair::generate().unwrap();
    let cert = leaf_params(&mesh, &[mesh.uri("web")])
        .self_signed(&key)
        .unwrap();
    assert_refused(
        &mut mesh,
        &mut db,
        Some(certified(cert.der().clone(), &key)),
        ErrorKind::CertificateVerification,
        "x509: certificate signed by unknown authority",
        "unknown certificate authority",
    )
    .await;
}

#[tokio::test]
async fn a_client_leaf_without_a_uri_san_has_no_identity() {
    let mut mesh = Mesh::new();
    let mut db = db(&mut mesh).await;
    let leaf = ca_signed_leaf(&mesh, &[]);
    assert_refused(
        &mut mesh,
        &mut db,
        Some(leaf),
        ErrorKind::InvalidCertificate,
        "connect: invalid leaf certificate: no URI SAN, want exactly one SPIFFE ID",
        "unknown certificate",
    )
    .await;
}

#[tokio::test]
async fn a_client_leaf_with_two_uri_sans_is_ambiguous() {
    let mut mesh = Mesh::new();
    let mut db = db(&mut mesh).await;
    // Two identities db would each admit on their own.
    let leaf = ca_signed_leaf(&mesh, &[mesh.uri("web"), mesh.uri("api")]);
    assert_refused(
        &mut mesh,
        &mut db,
        Some(leaf),
        ErrorKind::InvalidCertificate,
        "connect: invalid leaf certificate: 2 URI SANs, want exactly one SPIFFE ID",
        "unknown certificate",
    )
    .await;
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let mut mesh = Mesh::new();
    let mut db = db(&mut mesh).await;
    // What `with_no_client_auth()` installs: a resolver with nothing to offer.
    assert_refused(
        &mut mesh,
        &mut db,
        None,
        ErrorKind::CertificateVerification,
        "tls: no certificates from peer",
        "certificate required",
    )
    .await;
}
