//! Unit tests of the TLS module that need no sockets: snapshots, and the key-exchange cost.

use std::sync::Arc;
use std::time::Instant;

use rustls::{ClientConnection, ServerConnection};
use rustls_pki_types::ServerName;
use serde_json::json;
use time::OffsetDateTime;

use super::*;
use crate::ca::{CaConfiguration, CaManager, SignPolicy, generate_leaf_request};
use crate::{ErrorKind, ManualClock, SharedClock};

struct Ca {
    ca: CaManager,
    clock: SharedClock,
}

impl Ca {
    fn new() -> Ca {
        let clock: SharedClock = Arc::new(ManualClock::new(OffsetDateTime::now_utc()));
        let cfg = CaConfiguration::consul(json!({}).as_object().cloned().unwrap_or_default());
        let ca = CaManager::new_primary("dc1", None, cfg, clock.clone()).unwrap();
        Ca { ca, clock }
    }

    fn svid(&mut self, service: &str) -> Svid {
        let uri = format!(
            "spiffe://{}/ns/default/dc/dc1/svc/{service}",
            self.ca.trust_domain()
        );
        let req = generate_leaf_request(&uri, &[], &[]).unwrap();
        let issued = self
            .ca
            .sign_leaf(&req.csr_pem, SignPolicy::ServiceOnly)
            .unwrap();
        Svid::from_issued(&issued, &req.key).unwrap()
    }

    fn identity(&mut self, service: &str) -> Identity {
        let id = Identity::new(service, self.clock.clone());
        id.update_bundle(Bundle::from_ca_roots(&self.ca.roots()).unwrap())
            .unwrap();
        id.update_svid(self.svid(service)).unwrap();
        id
    }
}

#[test]
fn snapshots_count_generations_and_readiness() {
    let mut ca = Ca::new();
    let id = Identity::new("web", ca.clock.clone());
    assert_eq!(id.generation(), 0);
    assert!(!id.ready());
    assert_eq!(id.material().unwrap_err().kind(), ErrorKind::NotReady);
    let svid = ca.svid("web");
    // Without roots the leaf cannot be checked yet; it is kept, but not ready.
    assert_eq!(id.update_svid(svid).unwrap(), 1);
    assert!(!id.ready());
    let mut rx = id.watch();
    id.update_bundle(Bundle::from_ca_roots(&ca.ca.roots()).unwrap())
        .unwrap();
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().generation(), 2);
    assert!(id.ready());
    let m = id.material().unwrap();
    assert!(m.chain_pem.starts_with("-----BEGIN CERTIFICATE-----"));
    assert!(m.key_pem.contains("PRIVATE KEY"));
    assert_eq!(m.generation, 2);
}

#[test]
fn an_svid_for_another_service_is_refused_and_the_old_one_kept() {
    let mut ca = Ca::new();
    let id = ca.identity("web");
    let before = id.snapshot();
    let e = id.update_svid(ca.svid("db")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidCertificate);
    assert!(e.to_string().contains("svc/db"), "{e}");
    let after = id.snapshot();
    assert!(Arc::ptr_eq(&before, &after));
    assert_eq!(
        after.svid().unwrap().serial(),
        before.svid().unwrap().serial()
    );
}

/// Hands everything `from` has to send to `to` and lets `to` process it; returns the bytes
/// moved.
fn pump<A, B>(
    from: &mut rustls::ConnectionCommon<A>,
    to: &mut rustls::ConnectionCommon<B>,
) -> usize {
    let mut buf = Vec::new();
    let mut sent = 0;
    while from.wants_write() {
        sent += from.write_tls(&mut buf).unwrap();
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).unwrap();
    }
    to.process_new_packets().unwrap();
    sent
}

/// Runs one full handshake in memory and returns the bytes each side sent.
fn handshake_bytes(server: &MtlsServer, client: &MtlsClient) -> (usize, usize, rustls::NamedGroup) {
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut c = ClientConnection::new(client.config(), name).unwrap();
    let mut s = ServerConnection::new(server.config()).unwrap();
    let (mut c2s, mut s2c) = (0usize, 0usize);
    for _ in 0..20 {
        c2s += pump(&mut c, &mut s);
        s2c += pump(&mut s, &mut c);
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    let group = c.negotiated_key_exchange_group().unwrap().name();
    (c2s, s2c, group)
}

/// Measures what the hybrid post-quantum group costs per full handshake (module docs).
/// Session tickets are part of the server's flight in both cases, so the difference is the
/// key exchange alone.
#[test]
fn kx_cost_of_a_full_handshake() {
    let mut ca = Ca::new();
    let web = ca.identity("web");
    let db = ca.identity("db");
    let mut results = Vec::new();
    for kx in [KeyExchange::Classical, KeyExchange::HybridPostQuantum] {
        let server = mtls_server(&db)
            .authorize(authorizer::any())
            .key_exchange(kx)
            .build()
            .unwrap();
        for _ in 0..5 {
            // Warm-up, so the first group measured does not pay for lazy initialisation.
            handshake_bytes(
                &server,
                &mtls_client(&web, "db").key_exchange(kx).build().unwrap(),
            );
        }
        let rounds = 20;
        let start = Instant::now();
        let mut last = (0, 0, rustls::NamedGroup::X25519);
        for _ in 0..rounds {
            // A new client each time: no session to resume, so every handshake is full.
            let client = mtls_client(&web, "db").key_exchange(kx).build().unwrap();
            last = handshake_bytes(&server, &client);
        }
        let per = start.elapsed() / rounds;
        println!(
            "{kx:?}: group {:?}, client->server {} B, server->client {} B, {per:?} per handshake (both sides, debug build)",
            last.2, last.0, last.1
        );
        results.push(last);
    }
    let (classic, hybrid) = (results[0], results[1]);
    assert_eq!(classic.2, rustls::NamedGroup::X25519);
    assert_eq!(hybrid.2, rustls::NamedGroup::X25519MLKEM768);
    // ML-KEM-768: a 1184-byte encapsulation key up, a 1088-byte ciphertext down; ECDSA
    // signatures vary by a few bytes from one handshake to the next, hence the slack.
    let up = hybrid.0 as i64 - classic.0 as i64;
    let down = hybrid.1 as i64 - classic.1 as i64;
    assert!((1180..=1250).contains(&up), "client->server extra {up}");
    assert!((1080..=1110).contains(&down), "server->client extra {down}");
}

// The cache of verified chains (`verify::VerifiedChains`): what a hit may skip, and that
// every rejection still happens.

#[test]
fn a_remembered_chain_still_expires_on_the_clock() {
    let mut ca = Ca::new();
    let bundle = Bundle::from_ca_roots(&ca.ca.roots()).unwrap();
    let svid = ca.svid("web");
    let now = ca.clock.now();
    verify_chain(&bundle, svid.chain(), now, PeerRole::Client).unwrap();
    assert_eq!(bundle.verified_chains().len(), 1);
    // A hit, then the same chain a second after the leaf's notAfter: refused as expired.
    verify_chain(&bundle, svid.chain(), now, PeerRole::Client).unwrap();
    let late = svid.not_after() + time::Duration::seconds(1);
    let e = verify_chain(&bundle, svid.chain(), late, PeerRole::Client).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CertificateVerification, "{e}");
    assert!(e.to_string().contains("expired"), "{e}");
    // And before its notBefore (a clock set back).
    let early = now - time::Duration::days(2);
    let e = verify_chain(&bundle, svid.chain(), early, PeerRole::Client).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::CertificateVerification, "{e}");
}

#[test]
fn failures_are_not_remembered_and_new_roots_start_empty() {
    let mut ca = Ca::new();
    let mut other = Ca::new();
    let bundle = Bundle::from_ca_roots(&ca.ca.roots()).unwrap();
    let now = ca.clock.now();
    let stranger = other.svid("web");
    for _ in 0..2 {
        let e = verify_chain(&bundle, stranger.chain(), now, PeerRole::Client).unwrap_err();
        assert!(e.to_string().contains("unknown authority"), "{e}");
    }
    assert_eq!(bundle.verified_chains().len(), 0);

    // A chain remembered by one bundle means nothing to a bundle of other roots, nor to a
    // copy of the same roots.
    let ours = ca.svid("web");
    verify_chain(&bundle, ours.chain(), now, PeerRole::Client).unwrap();
    let rotated = Bundle::from_ca_roots(&other.ca.roots()).unwrap();
    let e = verify_chain(&rotated, ours.chain(), now, PeerRole::Client).unwrap_err();
    assert!(e.to_string().contains("unknown authority"), "{e}");
    assert_eq!(bundle.clone().verified_chains().len(), 0);
}

#[test]
fn a_chain_is_remembered_by_its_exact_bytes_and_role_and_the_cache_is_bounded() {
    let mut ca = Ca::new();
    let bundle = Bundle::from_ca_roots(&ca.ca.roots()).unwrap();
    let now = ca.clock.now();
    let svid = ca.svid("web");
    verify_chain(&bundle, svid.chain(), now, PeerRole::Client).unwrap();
    verify_chain(&bundle, svid.chain(), now, PeerRole::Server).unwrap();
    assert_eq!(bundle.verified_chains().len(), 2);
    // One byte changed in the signature: a different chain, verified (and refused) in full.
    let mut forged = svid.chain()[0].as_ref().to_vec();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    let forged = [rustls_pki_types::CertificateDer::from(forged)];
    assert!(verify_chain(&bundle, &forged, now, PeerRole::Client).is_err());
    assert_eq!(bundle.verified_chains().len(), 2);

    for i in 0..super::verify::VERIFIED_CHAINS_CAPACITY + 3 {
        let s = ca.svid(&format!("svc{i}"));
        verify_chain(&bundle, s.chain(), now, PeerRole::Client).unwrap();
    }
    assert_eq!(
        bundle.verified_chains().len(),
        super::verify::VERIFIED_CHAINS_CAPACITY
    );
}

/// Presents a fixed chain with a fixed key, whatever it matches.
#[derive(Debug)]
struct FixedClientCert(Arc<rustls::sign::CertifiedKey>);

impl rustls::client::ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _: &[&[u8]],
        _: &[rustls::SignatureScheme],
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Runs a handshake in memory until it completes or one side fails; the first error wins.
fn try_handshake(
    server: &MtlsServer,
    client: Arc<rustls::ClientConfig>,
) -> Result<(), rustls::Error> {
    let name = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    let mut c = ClientConnection::new(client, name)?;
    let mut s = ServerConnection::new(server.config())?;
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        s.read_tls(&mut &buf[..]).unwrap();
        s.process_new_packets()?;
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        c.read_tls(&mut &buf[..]).unwrap();
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            return Ok(());
        }
    }
    panic!("the handshake neither completed nor failed")
}

/// The attack the cache must not open: a peer replaying a chain the server has verified and
/// remembered, without the leaf's private key, fails the handshake's CertificateVerify.
#[test]
fn a_remembered_chain_without_its_key_is_refused_in_the_handshake() {
    let mut ca = Ca::new();
    let web = ca.identity("web");
    let db = ca.identity("db");
    let server = mtls_server(&db)
        .authorize(authorizer::any())
        .build()
        .unwrap();
    // db's bundle already holds db's own chain, checked when its SVID was installed.
    let bundle = db.snapshot().bundle().cloned().unwrap();
    let before = bundle.verified_chains().len();
    try_handshake(&server, mtls_client(&web, "db").build().unwrap().config()).unwrap();
    assert_eq!(
        bundle.verified_chains().len(),
        before + 1,
        "web's chain is remembered"
    );

    let provider = crypto_provider(KeyExchange::default());
    let other = crate::ca::PrivateKey::generate(crate::ca::KeySpec::EC_P256).unwrap();
    let key = provider
        .key_provider
        .load_private_key(rustls_pki_types::PrivateKeyDer::Pkcs8(
            other.to_pkcs8_der().unwrap().to_vec().into(),
        ))
        .unwrap();
    let stolen = web.snapshot().svid().unwrap().chain().to_vec();
    let forger = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        // Any server: the test is about what the server makes of the client.
        .with_custom_certificate_verifier(Arc::new(crate::ca::SkipVerify(provider)))
        .with_client_cert_resolver(Arc::new(FixedClientCert(Arc::new(
            rustls::sign::CertifiedKey::new(stolen, key),
        ))));
    let e = try_handshake(&server, Arc::new(forger)).unwrap_err();
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
                | rustls::Error::PeerMisbehaved(_)
                | rustls::Error::AlertReceived(_)
        ),
        "{e:?}"
    );
    // The real web still gets in, from the cache.
    try_handshake(&server, mtls_client(&web, "db").build().unwrap().config()).unwrap();
}
