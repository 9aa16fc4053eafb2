//! Tests of the built-in provider and the CA manager against Consul CA docs.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

use super::*;
use crate::certs::{self, CertInfo};
use crate::{ErrorKind, ManualClock, SharedClock};

const CLUSTER: &str = "11111111-2222-3333-4444-555555555555";
const TD: &str = "11111111-2222-3333-4444-555555555555.consul";
const T0: OffsetDateTime = datetime!(2026-01-01 00:00:00 UTC);

fn clock() -> (ManualClock, SharedClock) {
    let c = ManualClock::new(T0);
    (c.clone(), Arc::new(c))
}

fn map(v: Value) -> Map<String, Value> {
    v.as_object().cloned().unwrap_or_default()
}

fn primary(config: Value) -> (ManualClock, CaManager) {
    let (m, c) = clock();
    let ca = CaManager::new_primary(
        "dc1",
        Some(CLUSTER.into()),
        CaConfiguration::consul(map(config)),
        c,
    )
    .unwrap();
    (m, ca)
}

fn service_uri(td: &str, dc: &str, svc: &str) -> String {
    format!("spiffe://{td}/ns/default/dc/{dc}/svc/{svc}")
}

fn csr_for(uri: &str) -> String {
    generate_leaf_request(uri, &[], &[]).unwrap().csr_pem
}

fn info(pem: &str) -> CertInfo {
    CertInfo::from_der(&certs::parse_pem_certificates(pem).unwrap()[0]).unwrap()
}

fn kind(e: CaError) -> ErrorKind {
    crate::Error::from(e).kind()
}

#[test]
fn root_has_the_fields_of_spec_2_3() {
    let (_, ca) = primary(json!({}));
    let roots = ca.roots();
    assert_eq!(roots.trust_domain, TD);
    assert_eq!(roots.roots.len(), 1);
    let root = &roots.roots[0];
    assert_eq!(roots.active_root_id, root.id);
    assert_eq!(root.name, "Consul CA Root Cert");
    assert_eq!(root.id.len(), 59, "colon-hex SHA-1: {}", root.id);
    assert_eq!(root.external_trust_domain, CLUSTER);
    assert_eq!(
        (root.private_key_type.as_str(), root.private_key_bits),
        ("ec", 256)
    );
    assert!(root.root_cert.ends_with('\n'));
    let i = info(&root.root_cert);
    let cn = i.subject_cn.clone().unwrap();
    let re_ok = cn.starts_with("pri-") && cn.ends_with(".consul.ca.11111111.consul");
    assert!(re_ok, "CN {cn}");
    assert_eq!(i.uris, vec![format!("spiffe://{TD}")]);
    assert!(i.is_ca);
    assert_eq!(i.path_len, None);
    let kid = certs::key_id(&i.spki_der);
    assert_eq!(kid.len(), 32);
    assert_eq!(i.subject_key_id.as_deref(), Some(kid.as_slice()));
    assert_eq!(i.authority_key_id.as_deref(), Some(kid.as_slice()));
    assert_eq!(root.signing_key_id, certs::colon_hex(&kid));
    assert_eq!(i.serial_u64(), Some(1));
    assert_eq!(root.serial_number, 1);
    assert_eq!(i.not_before, T0);
    assert_eq!(i.not_after, T0 + Duration::from_secs(87600 * 3600));
    assert_eq!(
        root.id,
        certs::sha1_fingerprint(&certs::parse_pem_certificate(&root.root_cert).unwrap())
    );
}

#[test]
fn roots_json_has_consuls_shape() {
    let (_, ca) = primary(json!({}));
    let v = serde_json::to_value(ca.roots()).unwrap();
    let root = &v["Roots"][0];
    for key in [
        "ID",
        "Name",
        "SerialNumber",
        "SigningKeyID",
        "ExternalTrustDomain",
        "NotBefore",
        "NotAfter",
        "RootCert",
        "IntermediateCerts",
        "Active",
        "PrivateKeyType",
        "PrivateKeyBits",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(root.get(key).is_some(), "missing {key}");
    }
    assert!(root.get("RotatedOutAt").is_none());
    assert!(root["IntermediateCerts"].is_null());
    assert_eq!(root["NotBefore"], "2026-01-01T00:00:00Z");
    assert_eq!(v["ActiveRootID"], root["ID"]);
    assert_eq!(v["TrustDomain"], TD);
}

#[test]
fn leaf_has_the_fields_of_spec_2_4() {
    let (_, mut ca) = primary(json!({}));
    let uri = service_uri(TD, "dc1", "web");
    let req = generate_leaf_request(
        &uri,
        &["web.local:8080".into(), "web.local".into()],
        &["127.0.0.1".parse().unwrap()],
    )
    .unwrap();
    let issued = ca.sign_leaf(&req.csr_pem, SignPolicy::ServiceOnly).unwrap();
    assert_eq!(issued.service, "web");
    assert_eq!(issued.service_uri, uri);
    assert_eq!(issued.namespace, "default");
    assert_eq!(
        certs::parse_pem_certificates(&issued.cert_pem)
            .unwrap()
            .len(),
        1,
        "primary bundle is the leaf alone"
    );
    let leaf = info(&issued.cert_pem);
    let root = info(&ca.roots().roots[0].root_cert);
    assert!(leaf.subject_empty);
    assert_eq!(leaf.subject_cn, None);
    assert!(leaf.san_critical);
    assert_eq!(leaf.uris, vec![uri]);
    assert_eq!(
        leaf.dns_names,
        vec!["web.local".to_string()],
        "port stripped, duplicates removed"
    );
    assert_eq!(
        leaf.ip_addresses,
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert!(!leaf.is_ca);
    assert!(leaf.eku_client_auth && leaf.eku_server_auth);
    assert_eq!(leaf.not_before, T0 - Duration::from_secs(60));
    assert_eq!(
        leaf.not_after,
        leaf.not_before + Duration::from_secs(72 * 3600)
    );
    assert_eq!(
        (issued.valid_after, issued.valid_before),
        (leaf.not_before, leaf.not_after)
    );
    assert_eq!(leaf.authority_key_id, root.subject_key_id);
    assert_eq!(
        leaf.subject_key_id.as_deref(),
        Some(req.key.key_id().as_slice())
    );
    assert_eq!(issued.serial_number, "02");
    certs::verify_signed_by(
        &certs::parse_pem_certificate(&issued.cert_pem).unwrap(),
        &certs::parse_pem_certificate(&ca.roots().roots[0].root_cert).unwrap(),
    )
    .unwrap();
}

#[test]
fn serials_come_from_one_counter() {
    let (_, mut ca) = primary(json!({}));
    let csr = csr_for(&service_uri(TD, "dc1", "web"));
    let serials: Vec<String> = (0..3)
        .map(|_| {
            ca.sign_leaf(&csr, SignPolicy::ServiceOnly)
                .unwrap()
                .serial_number
        })
        .collect();
    assert_eq!(serials, ["02", "03", "04"]);
    assert_eq!(ca.serials().last(), 4);
}

#[test]
fn leaf_ttl_comes_from_config() {
    let (_, mut ca) = primary(json!({"LeafCertTTL": "1h"}));
    let issued = ca
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    assert_eq!(
        issued.valid_before - issued.valid_after,
        time::Duration::hours(1)
    );
}

#[test]
fn bad_csrs_get_typed_errors_with_consuls_texts() {
    let (_, mut ca) = primary(json!({}));
    let other_td = "55555555-4444-3333-2222-111111111111.consul";
    let e = ca
        .sign_leaf(
            &csr_for(&service_uri(other_td, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("SPIFFE ID in CSR from a different trust domain: {other_td}, we are {TD}")
    );
    assert_eq!(kind(e), ErrorKind::CsrRejected);

    let e = ca
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc2", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "SPIFFE ID in CSR from a different datacenter: dc2, we are dc1"
    );

    let agent = format!("spiffe://{TD}/agent/client/dc/dc1/id/node-1");
    let e = ca
        .sign_leaf(&csr_for(&agent), SignPolicy::ServiceOnly)
        .unwrap_err();
    assert!(matches!(e, CaError::CsrWrongKind { .. }), "{e}");
    assert_eq!(kind(e), ErrorKind::CsrRejected);

    let server = format!("spiffe://{TD}/agent/server/dc/dc1");
    assert!(matches!(
        ca.sign_leaf(&csr_for(&server), SignPolicy::ServiceOrAgent)
            .unwrap_err(),
        CaError::CsrWrongKind { .. }
    ));

    let e = ca
        .sign_leaf(&csr_for("https://example.com/x"), SignPolicy::ServiceOnly)
        .unwrap_err();
    assert!(matches!(e, CaError::CsrBadSpiffeId(_)), "{e}");

    // Two URI SANs and none: build them by hand.
    let key = PrivateKey::generate(KeySpec::EC_P256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    for u in [service_uri(TD, "dc1", "web"), service_uri(TD, "dc1", "db")] {
        p.subject_alt_names
            .push(rcgen::SanType::URI(u.as_str().try_into().unwrap()));
    }
    let two = p.serialize_request(key.pair()).unwrap().pem().unwrap();
    assert_eq!(
        ca.sign_leaf(&two, SignPolicy::ServiceOnly).unwrap_err(),
        CaError::CsrTooManyUris(2)
    );
    let mut p = rcgen::CertificateParams::new(vec!["web.example".to_string()]).unwrap();
    p.distinguished_name = rcgen::DistinguishedName::new();
    let none = p.serialize_request(key.pair()).unwrap().pem().unwrap();
    assert_eq!(
        ca.sign_leaf(&none, SignPolicy::ServiceOnly).unwrap_err(),
        CaError::CsrNoUri
    );

    // Forged: flip a bit in the signature at the end of the DER.
    let good = generate_leaf_request(&service_uri(TD, "dc1", "web"), &[], &[]).unwrap();
    let mut der = rustls_pki_types::pem::PemObject::from_pem_slice(good.csr_pem.as_bytes())
        .map(|d: rustls_pki_types::CertificateSigningRequestDer<'_>| d.as_ref().to_vec())
        .unwrap();
    let n = der.len();
    der[n - 5] ^= 0x01;
    let forged = certs::pem_encode("CERTIFICATE REQUEST", &der);
    let e = ca.sign_leaf(&forged, SignPolicy::ServiceOnly).unwrap_err();
    assert_eq!(e, CaError::CsrSignature);
    assert_eq!(kind(e), ErrorKind::InvalidCsr);

    // Malformed PEM and DER.
    assert_eq!(
        kind(
            ca.sign_leaf("not pem", SignPolicy::ServiceOnly)
                .unwrap_err()
        ),
        ErrorKind::InvalidCertificate
    );
    let garbage = certs::pem_encode("CERTIFICATE REQUEST", b"\x30\x03\x02\x01\x00");
    assert_eq!(
        kind(ca.sign_leaf(&garbage, SignPolicy::ServiceOnly).unwrap_err()),
        ErrorKind::InvalidCsr
    );
}

#[test]
fn agent_csrs_are_rewritten_into_our_trust_domain() {
    let (_, mut ca) = primary(json!({}));
    let agent = "spiffe://unknown.consul/agent/client/dc/dc1/id/node-1";
    let issued = ca
        .sign_leaf(&csr_for(agent), SignPolicy::ServiceOrAgent)
        .unwrap();
    let want = format!("spiffe://{TD}/agent/client/dc/dc1/id/node-1");
    assert_eq!(issued.agent_uri, want);
    assert_eq!(issued.agent, "node-1");
    assert_eq!(info(&issued.cert_pem).uris, vec![want]);
}

#[test]
fn rsa_root_signs_ec_leaves() {
    let (_, mut ca) = primary(json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}));
    let root = &ca.roots().roots[0];
    assert_eq!(
        (root.private_key_type.as_str(), root.private_key_bits),
        ("rsa", 2048)
    );
    let issued = ca
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    let leaf = info(&issued.cert_pem);
    assert_eq!(
        (leaf.key_algorithm, leaf.key_bits),
        (certs::KeyAlgorithm::Ec, 256)
    );
}

#[test]
fn p384_root_works() {
    let (_, ca) = primary(json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}));
    assert_eq!(ca.roots().roots[0].private_key_bits, 384);
}

#[test]
fn unsupported_key_and_bad_config_are_typed() {
    let (_, c) = clock();
    let e = CaManager::new_primary(
        "dc1",
        None,
        CaConfiguration::consul(map(json!({"PrivateKeyBits": 224}))),
        c.clone(),
    )
    .unwrap_err();
    assert_eq!(kind(e), ErrorKind::UnsupportedKey);
    let e = CaManager::new_primary(
        "dc1",
        None,
        CaConfiguration::consul(map(json!({"LeafCertTTL": "10m"}))),
        c.clone(),
    )
    .unwrap_err();
    assert_eq!(kind(e), ErrorKind::InvalidCaConfig);
    let mut cfg = CaConfiguration::consul(Map::new());
    cfg.provider = "aws-pca".into();
    assert_eq!(
        kind(CaManager::new_primary("dc1", None, cfg, c).unwrap_err()),
        ErrorKind::InvalidCaConfig
    );
}

#[test]
fn operator_supplied_root_is_used_verbatim() {
    let (_, donor) = primary(json!({}));
    let root_pem = donor.roots().roots[0].root_cert.clone();
    let key_pem = donor.provider_secrets_for_test().private_key_pem;
    let (_, c) = clock();
    let ca = CaManager::new_primary(
        "dc1",
        Some(CLUSTER.into()),
        CaConfiguration::consul(map(json!({"RootCert": root_pem, "PrivateKey": key_pem}))),
        c.clone(),
    )
    .unwrap();
    assert_eq!(ca.roots().roots[0].root_cert, root_pem);
    // A root of another cluster is refused.
    let e = CaManager::new_primary(
        "dc1",
        Some("99999999-2222-3333-4444-555555555555".into()),
        CaConfiguration::consul(map(json!({"RootCert": root_pem, "PrivateKey": key_pem}))),
        c.clone(),
    )
    .unwrap_err();
    assert_eq!(kind(e), ErrorKind::InvalidCaConfig);
    // A key that does not match.
    let other = PrivateKey::generate(KeySpec::EC_P256)
        .unwrap()
        .to_pem()
        .to_string();
    let e = CaManager::new_primary(
        "dc1",
        Some(CLUSTER.into()),
        CaConfiguration::consul(map(json!({"RootCert": root_pem, "PrivateKey": other}))),
        c,
    )
    .unwrap_err();
    assert_eq!(kind(e), ErrorKind::InvalidCaConfig);
}

#[test]
fn expired_root_refuses_to_sign() {
    let (m, mut ca) = primary(json!({"RootCertTTL": "8760h"}));
    m.advance(Duration::from_secs(8761 * 3600));
    let e = ca
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap_err();
    assert!(e.to_string().starts_with("root expired: "), "{e}");
    assert_eq!(kind(e), ErrorKind::CaExpired);
}

#[test]
fn rotation_cross_signs_and_marks_the_old_root() {
    let (m, mut ca) = primary(json!({}));
    let old = ca.roots().roots[0].clone();
    m.advance(Duration::from_secs(3600));
    let out = ca
        .set_config(CaConfiguration::consul(map(
            json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384}),
        )))
        .unwrap();
    let RotationOutcome::Rotated {
        new_root_id,
        cross_signed,
    } = out
    else {
        panic!("{out:?}")
    };
    assert!(cross_signed);
    let roots = ca.roots();
    assert_eq!(roots.roots.len(), 2);
    assert_eq!(roots.active_root_id, new_root_id);
    let old_now = roots.roots.iter().find(|r| r.id == old.id).unwrap();
    assert!(!old_now.active);
    assert_eq!(old_now.rotated_out_at, Some(T0 + Duration::from_secs(3600)));
    let new = roots.active().unwrap();
    assert_ne!(new.id, old.id);
    let cross_pem = &new.intermediates()[0];
    let cross = info(cross_pem);
    let new_root = info(&new.root_cert);
    let old_root = info(&old.root_cert);
    assert_eq!(cross.subject_cn, new_root.subject_cn);
    assert_eq!(cross.uris, new_root.uris);
    assert_eq!(cross.subject_key_id, new_root.subject_key_id);
    assert_eq!(cross.authority_key_id, old_root.subject_key_id);
    assert_eq!(cross.not_after - cross.not_before, time::Duration::days(7));
    certs::verify_signed_by(
        &certs::parse_pem_certificate(cross_pem).unwrap(),
        &certs::parse_pem_certificate(&old.root_cert).unwrap(),
    )
    .unwrap();
    // New leaves carry the cross-signed certificate.
    let issued = ca
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    let chain = certs::parse_pem_certificates(&issued.cert_pem).unwrap();
    assert_eq!(chain.len(), 2);
    certs::verify_signed_by(
        &chain[0],
        &certs::parse_pem_certificate(&new.root_cert).unwrap(),
    )
    .unwrap();
}

#[test]
fn ttl_only_changes_keep_the_root_and_identical_config_is_a_no_op() {
    let (_, mut ca) = primary(json!({"LeafCertTTL": "72h"}));
    let id = ca.roots().active_root_id;
    assert_eq!(
        ca.set_config(CaConfiguration::consul(map(json!({"LeafCertTTL": "72h"}))))
            .unwrap(),
        RotationOutcome::Unchanged
    );
    assert_eq!(
        ca.set_config(CaConfiguration::consul(map(json!({"LeafCertTTL": "24h"}))))
            .unwrap(),
        RotationOutcome::ConfigUpdated
    );
    assert_eq!(ca.roots().active_root_id, id);
    assert_eq!(
        ca.common_config().leaf_cert_ttl,
        Duration::from_secs(24 * 3600)
    );
    let issued = ca
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    assert_eq!(
        issued.valid_before - issued.valid_after,
        time::Duration::hours(24)
    );
}

#[test]
fn state_is_read_only_and_cross_signing_can_be_required() {
    let (_, mut ca) = primary(json!({}));
    let mut cfg = CaConfiguration::consul(map(json!({"PrivateKeyBits": 384})));
    cfg.state = Some([("k".to_string(), "v".to_string())].into());
    assert_eq!(
        ca.set_config(cfg).unwrap_err().to_string(),
        "CA Provider State is read-only"
    );
    // The test-only switch makes the current provider unable to cross-sign.
    let (_, mut ca) = primary(json!({"DisableCrossSigning": true}));
    let e = ca
        .set_config(CaConfiguration::consul(map(json!({"PrivateKeyBits": 384}))))
        .unwrap_err();
    assert_eq!(kind(e.clone()), ErrorKind::CrossSigningUnsupported);
    assert!(
        e.to_string()
            .starts_with("The current CA Provider does not support cross-signing.")
    );
    let mut forced = CaConfiguration::consul(map(json!({"PrivateKeyBits": 384})));
    forced.force_without_cross_signing = true;
    let out = ca.set_config(forced).unwrap();
    assert!(matches!(
        out,
        RotationOutcome::Rotated {
            cross_signed: false,
            ..
        }
    ));
    assert!(ca.roots().active().unwrap().intermediate_certs.is_none());
}

#[test]
fn pruning_waits_two_leaf_ttls() {
    let (m, mut ca) = primary(json!({"LeafCertTTL": "1h", "IntermediateCertTTL": "3h"}));
    ca.set_config(CaConfiguration::consul(map(
        json!({"LeafCertTTL": "1h", "IntermediateCertTTL": "3h", "PrivateKeyBits": 384}),
    )))
    .unwrap();
    m.advance(Duration::from_secs(2 * 3600));
    assert_eq!(ca.prune(), 0);
    assert_eq!(ca.roots().roots.len(), 2);
    m.advance(Duration::from_secs(1));
    assert_eq!(ca.prune(), 1);
    assert_eq!(ca.roots().roots.len(), 1);
    assert!(ca.roots().roots[0].active);
}

fn secondary_of(primary: &CaManager, clock: SharedClock) -> CaManager {
    let mut sec = CaManager::new_secondary(
        "dc2",
        &primary.roots(),
        CaConfiguration::consul(Map::new()),
        clock,
    )
    .unwrap();
    let csr = sec.intermediate_csr().unwrap();
    let inter = primary.sign_intermediate(&csr).unwrap();
    sec.set_intermediate(&inter, &primary.roots()).unwrap();
    sec
}

#[test]
fn secondary_signs_through_its_intermediate() {
    let (_, pri) = primary(json!({}));
    let (_, c) = clock();
    let mut sec = secondary_of(&pri, c);
    let roots = sec.roots();
    assert_eq!(roots.trust_domain, TD);
    let active = roots.active().unwrap();
    assert_eq!(
        active.id,
        pri.roots().active_root_id,
        "same root ID in both DCs"
    );
    assert_ne!(
        active.signing_key_id,
        pri.roots().active().unwrap().signing_key_id
    );
    let inter = info(&active.intermediates()[0]);
    assert!(inter.is_ca);
    assert_eq!(inter.path_len, Some(0));
    assert_eq!(inter.uris, vec![format!("spiffe://{TD}")]);
    assert_eq!(inter.not_before, T0 - Duration::from_secs(60));
    assert_eq!(
        inter.not_after,
        inter.not_before + Duration::from_secs(8760 * 3600)
    );
    assert_eq!(
        active.signing_key_id,
        certs::colon_hex(inter.subject_key_id.as_ref().unwrap())
    );
    let issued = sec
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc2", "api")),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    let chain = certs::parse_pem_certificates(&issued.cert_pem).unwrap();
    assert_eq!(chain.len(), 2, "leaf then intermediate");
    assert_eq!(
        info(&issued.cert_pem).authority_key_id,
        inter.subject_key_id
    );
    // A dc1 identity is refused by dc2.
    let e = sec
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "api")),
            SignPolicy::ServiceOnly,
        )
        .unwrap_err();
    assert!(matches!(e, CaError::CsrWrongDatacenter { .. }));
}

#[test]
fn set_intermediate_checks_have_consuls_texts() {
    let (_, pri) = primary(json!({}));
    let (_, c) = clock();
    let new_sec = || {
        CaManager::new_secondary(
            "dc2",
            &pri.roots(),
            CaConfiguration::consul(Map::new()),
            c.clone(),
        )
        .unwrap()
    };

    // Signed for another key.
    let mut sec = new_sec();
    let _ = sec.intermediate_csr().unwrap();
    let mut other = new_sec();
    let inter_other = pri
        .sign_intermediate(&other.intermediate_csr().unwrap())
        .unwrap();
    let e = sec
        .set_intermediate(&inter_other, &pri.roots())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "intermediate cert is for a different private key"
    );
    assert_eq!(kind(e), ErrorKind::InvalidIntermediate);

    // Signed by another root.
    let (_, stranger) = primary(json!({}));
    let mut sec = new_sec();
    let inter = stranger
        .sign_intermediate(&sec.intermediate_csr().unwrap())
        .unwrap();
    let e = sec.set_intermediate(&inter, &pri.roots()).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("could not verify intermediate cert against root"),
        "{e}"
    );

    // Another trust domain's CSR is refused by the primary.
    let (_, c2) = clock();
    let mut foreign = CaManager::new_primary(
        "dcx",
        Some("99999999-2222-3333-4444-555555555555".into()),
        CaConfiguration::consul(Map::new()),
        c2.clone(),
    )
    .unwrap();
    let _ = &mut foreign;
    let mut foreign_sec = CaManager::new_secondary(
        "dcy",
        &foreign.roots(),
        CaConfiguration::consul(Map::new()),
        c2,
    )
    .unwrap();
    let e = pri
        .sign_intermediate(&foreign_sec.intermediate_csr().unwrap())
        .unwrap_err();
    assert!(e.to_string().starts_with("incoming CSR domain"), "{e}");

    // A leaf is not a CA.
    let mut sec = new_sec();
    let _ = sec.intermediate_csr().unwrap();
    let (_, mut pri2) = primary(json!({}));
    let leaf = pri2
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    let e = sec
        .set_intermediate(&leaf.cert_pem, &pri.roots())
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "intermediate cert is for a different private key"
    );
    assert_eq!(
        kind(pri.sign_intermediate("garbage").unwrap_err()),
        ErrorKind::InvalidCertificate
    );
}

#[test]
fn ca_common_name_format() {
    assert_eq!(
        ca_common_name(
            "consul",
            "1cj8zamm",
            "07933a13-0000-0000-0000-000000000000",
            true
        ),
        "pri-1cj8zamm.consul.ca.07933a13.consul"
    );
    assert_eq!(
        ca_common_name("Consul", "-1NB10VTO", "07933a13", false),
        "sec-1nb10vto.consul.ca.07933a13.consul"
    );
    for _ in 0..100 {
        let uid = compact_uid();
        assert!(!uid.is_empty() && uid.len() <= 8);
        assert!(
            uid.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        );
    }
}

#[test]
fn a_restored_ca_keeps_its_root_and_never_repeats_a_serial() {
    let (_, mut ca) = primary(json!({}));
    let first = ca
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    let (_, c) = clock();
    let mut back = CaManager::restore(
        "dc1",
        true,
        CLUSTER,
        ca.config().clone(),
        ca.roots().roots,
        ca.secrets(),
        ca.serials().last(),
        c,
    )
    .unwrap();
    assert_eq!(back.roots(), ca.roots());
    let next = back
        .sign_leaf(
            &csr_for(&service_uri(TD, "dc1", "web")),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    assert_eq!(
        (first.serial_number.as_str(), next.serial_number.as_str()),
        ("02", "03")
    );
    certs::verify_signed_by(
        &certs::parse_pem_certificate(&next.cert_pem).unwrap(),
        &certs::parse_pem_certificate(&ca.roots().roots[0].root_cert).unwrap(),
    )
    .unwrap();
}
