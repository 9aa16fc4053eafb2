use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::ca::{CaConfiguration, RotationOutcome, SignPolicy, generate_leaf_request};
use crate::catalog::{HealthStatus, ServiceRegistration};
use crate::intentions::{Intention, IntentionAction, MatchType};
use crate::state::Table;
use crate::{Clock, ErrorKind, ManualClock, SharedClock};

fn clock() -> SharedClock {
    Arc::new(ManualClock::new(
        time::macros::datetime!(2026-01-01 00:00:00 UTC),
    ))
}

fn dev() -> Server {
    Server::start(ServerConfig::dev(), clock()).unwrap()
}

fn acl_server(dir: Option<std::path::PathBuf>) -> Server {
    let mut c = ServerConfig::dev();
    c.acl_enabled = true;
    c.acl_default_policy = crate::acl::AclDefaultPolicy::Deny;
    c.acl_initial_management_token = Some("root-secret".into());
    c.default_intention_policy = None;
    c.data_dir = dir;
    Server::start(c, clock()).unwrap()
}

fn leaf_csr(server: &Server, service: &str) -> String {
    let uri = format!(
        "spiffe://{}/ns/default/dc/dc1/svc/{service}",
        server.trust_domain()
    );
    generate_leaf_request(&uri, &[], &[]).unwrap().csr_pem
}

/// An upsert body: the names come from the query, as with `PUT /intentions/exact`.
fn body(action: IntentionAction) -> Intention {
    Intention {
        action: Some(action),
        ..Intention::default()
    }
}

#[test]
fn dev_server_signs_and_authorizes_with_default_allow() {
    let s = dev();
    let issued = s
        .sign(None, &leaf_csr(&s, "web"), SignPolicy::ServiceOnly)
        .unwrap();
    assert_eq!(issued.service, "web");
    let uri = format!("spiffe://{}/ns/default/dc/dc1/svc/web", s.trust_domain());
    let d = s.authorize(None, "db", &uri).unwrap();
    assert!(d.allowed && d.default_used);
    assert_eq!(d.reason.to_string(), "Default intention policy");
}

#[test]
fn ca_config_shows_the_effective_settings_without_secrets() {
    let s = dev();
    let c = s.ca_config(None).unwrap().value;
    assert_eq!(c.provider, "consul");
    assert_eq!(c.config["LeafCertTTL"], "72h0m0s");
    assert_eq!(c.config["PrivateKeyType"], "ec");
    let key = crate::ca::PrivateKey::generate(crate::ca::KeySpec::EC_P256).unwrap();
    let cfg = CaConfiguration::consul(
        json!({"leaf_cert_ttl": "24h", "PrivateKey": key.to_pem().to_string()})
            .as_object()
            .cloned()
            .unwrap(),
    );
    s.set_ca_config(None, cfg).unwrap();
    let c = s.ca_config(None).unwrap().value;
    assert_eq!(c.config["LeafCertTTL"], "24h0m0s");
    assert!(!serde_json::to_string(&c).unwrap().contains("PRIVATE KEY"));
}

#[test]
fn every_signing_gets_a_higher_index() {
    let s = dev();
    let a = s
        .sign(None, &leaf_csr(&s, "web"), SignPolicy::ServiceOnly)
        .unwrap();
    let b = s
        .sign(None, &leaf_csr(&s, "web"), SignPolicy::ServiceOnly)
        .unwrap();
    assert!(b.modify_index > a.modify_index);
}

#[test]
fn intentions_crud_match_check_and_authorize() {
    let s = dev();
    s.intention_upsert_exact(None, "*", "db", body(IntentionAction::Deny))
        .unwrap();
    let web = s
        .intention_upsert_exact(None, "web", "db", body(IntentionAction::Allow))
        .unwrap();
    assert_eq!(web.precedence, 9);
    assert!(!web.id.is_empty());
    // Upsert again keeps the ID.
    let again = s
        .intention_upsert_exact(None, "web", "db", body(IntentionAction::Allow))
        .unwrap();
    assert_eq!(again.id, web.id);
    assert!(s.intention_check(None, "web", "db").unwrap());
    assert!(!s.intention_check(None, "api", "db").unwrap());
    let m = s
        .intention_match(None, MatchType::Destination, &["db"])
        .unwrap()
        .value;
    let order: Vec<&str> = m["db"].iter().map(|i| i.source_name.as_str()).collect();
    assert_eq!(order, ["web", "*"]);
    let td = s.trust_domain();
    let d = s
        .authorize(
            None,
            "db",
            &format!("spiffe://{td}/ns/default/dc/dc1/svc/api"),
        )
        .unwrap();
    assert!(!d.allowed);
    assert!(
        d.reason
            .to_string()
            .starts_with("Matched L4 intention: DENY default/* => default/db"),
        "{}",
        d.reason
    );
    // Legacy create refuses a duplicate pair.
    let mut dup = Intention::new("web", "db", IntentionAction::Deny);
    dup.id.clear();
    let e = s.intention_create(None, dup).unwrap_err();
    assert!(
        e.to_string().starts_with("duplicate intention found"),
        "{e}"
    );
    s.intention_delete(None, &web.id).unwrap();
    assert_eq!(
        s.intention_get(None, &web.id).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!s.intention_check(None, "web", "db").unwrap());
    assert!(s.intention_delete_exact(None, "*", "db").unwrap());
    assert!(s.intention_list(None, None).unwrap().value.is_empty());
    // Missing: not an error (Consul's by-name delete), but reported as nothing deleted.
    assert!(!s.intention_delete_exact(None, "*", "db").unwrap());
}

#[test]
fn authorize_validates_its_input_with_consuls_texts() {
    let s = dev();
    assert_eq!(
        s.authorize(None, "", "x").unwrap_err().to_string(),
        "Target service must be specified"
    );
    assert_eq!(
        s.authorize(None, "db", "nope").unwrap_err().to_string(),
        "ClientCertURI not a valid Connect identifier"
    );
    let agent = format!("spiffe://{}/agent/client/dc/dc1/id/n1", s.trust_domain());
    assert_eq!(
        s.authorize(None, "db", &agent).unwrap_err().to_string(),
        "ClientCertURI not a valid Service identifier"
    );
    assert_eq!(
        parse_service_name("a/b/c/d", "source").unwrap_err().kind(),
        ErrorKind::InvalidParameter
    );
    assert_eq!(
        parse_service_name("default/web", "source")
            .unwrap()
            .namespace,
        "default"
    );
    // Only the default namespace exists, as in Consul CE.
    assert_eq!(
        parse_service_name("ns/web", "source").unwrap_err().kind(),
        ErrorKind::InvalidParameter
    );
}

#[test]
fn acls_are_enforced_on_every_operation() {
    let s = acl_server(None);
    let csr = leaf_csr(&s, "web");
    assert_eq!(
        s.sign(None, &csr, SignPolicy::ServiceOnly)
            .unwrap_err()
            .kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        s.sign(Some("bogus"), &csr, SignPolicy::ServiceOnly)
            .unwrap_err()
            .kind(),
        ErrorKind::AclNotFound
    );
    s.sign(Some("root-secret"), &csr, SignPolicy::ServiceOnly)
        .unwrap();
    // A token with service:write on web only.
    let p = s
        .acl_policy_create(
            Some("root-secret"),
            crate::acl::Policy::new("web", "service \"web\" {\n policy = \"write\"\n}"),
        )
        .unwrap();
    let t = crate::acl::Token {
        policies: vec![crate::acl::PolicyLink::by_id(&p.id)],
        ..crate::acl::Token::default()
    };
    let t = s.acl_token_create(Some("root-secret"), t).unwrap();
    let web = Some(t.secret_id.as_str());
    s.sign(web, &csr, SignPolicy::ServiceOnly).unwrap();
    assert_eq!(
        s.sign(web, &leaf_csr(&s, "web2"), SignPolicy::ServiceOnly)
            .unwrap_err()
            .kind(),
        ErrorKind::PermissionDenied
    );
    assert_eq!(
        s.ca_config(web).unwrap_err().kind(),
        ErrorKind::PermissionDenied
    );
    assert!(s.ca_config(Some("root-secret")).is_ok());
    assert_eq!(
        s.intention_upsert_exact(web, "api", "db", body(IntentionAction::Allow))
            .unwrap_err()
            .kind(),
        ErrorKind::PermissionDenied
    );
    // No explicit default: the ACL default (deny) decides, with Consul's reason.
    let uri = format!("spiffe://{}/ns/default/dc/dc1/svc/api", s.trust_domain());
    let d = s.authorize(web, "web", &uri).unwrap();
    assert!(!d.allowed);
    assert_eq!(d.reason.to_string(), "Default behavior configured by ACLs");
    assert_eq!(s.acl_token_self(web).unwrap().accessor_id, t.accessor_id);
}

#[test]
fn rotation_through_the_server_persists_and_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (root_id, intention_id, index) = {
        let s = acl_server(Some(dir.path().to_path_buf()));
        let tok = Some("root-secret");
        let ixn = s
            .intention_upsert_exact(tok, "web", "db", body(IntentionAction::Allow))
            .unwrap();
        s.register_service(tok, ServiceRegistration::new("web", 8080))
            .unwrap();
        let cfg = CaConfiguration::consul(
            json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384})
                .as_object()
                .cloned()
                .unwrap(),
        );
        assert!(matches!(
            s.set_ca_config(tok, cfg).unwrap(),
            RotationOutcome::Rotated {
                cross_signed: true,
                ..
            }
        ));
        s.sign(tok, &leaf_csr(&s, "web"), SignPolicy::ServiceOnly)
            .unwrap();
        (s.ca_roots().value.active_root_id, ixn.id, s.store().index())
    };
    let s = acl_server(Some(dir.path().to_path_buf()));
    let roots = s.ca_roots().value;
    assert_eq!(roots.active_root_id, root_id);
    assert_eq!(roots.roots.len(), 2);
    assert_eq!(
        s.intention_get(Some("root-secret"), &intention_id)
            .unwrap()
            .value
            .source_name,
        "web"
    );
    assert!(s.intention_check(Some("root-secret"), "web", "db").unwrap());
    assert!(
        s.agent_services(Some("root-secret"), None)
            .unwrap()
            .contains_key("web")
    );
    let issued = s
        .sign(
            Some("root-secret"),
            &leaf_csr(&s, "web"),
            SignPolicy::ServiceOnly,
        )
        .unwrap();
    assert!(s.store().index() >= index);
    // Serials continue past the reserved block: never reused.
    assert!(u64::from_str_radix(&issued.serial_number.replace(':', ""), 16).unwrap() > 1024);
}

#[tokio::test]
async fn blocking_wait_wakes_on_intention_change() {
    let s = dev();
    let start = s.intention_list(None, None).unwrap().index;
    let s2 = s.clone();
    let waiter = tokio::spawn(async move {
        s2.wait(
            &[crate::state::Table::Intentions],
            start,
            Duration::from_secs(5),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.intention_upsert_exact(None, "web", "db", body(IntentionAction::Allow))
        .unwrap();
    let woke = tokio::time::timeout(Duration::from_secs(2), waiter)
        .await
        .unwrap()
        .unwrap();
    assert!(woke > start);
    // No change: returns the same index after the wait.
    let same = s
        .wait(
            &[crate::state::Table::Intentions],
            woke,
            Duration::from_millis(50),
        )
        .await;
    assert_eq!(same, woke);
}

/// Concurrent intention writers rebuild the hot-path index after their commits, outside the
/// store's write lock, so they can finish in any order. After every burst the live decision
/// must be the stored intention's: an older snapshot published last would say allow while
/// the store says deny.
#[test]
fn concurrent_intention_writes_never_leave_an_older_index_live() {
    let s = dev();
    // Enough intentions that a rebuild takes long enough for writers to overtake each other.
    for i in 0..400 {
        s.intention_upsert_exact(
            None,
            &format!("filler-{i}"),
            "elsewhere",
            body(IntentionAction::Allow),
        )
        .unwrap();
    }
    const WRITERS: usize = 4;
    let mut stale = Vec::new();
    for round in 0..60_u64 {
        std::thread::scope(|scope| {
            for w in 0..WRITERS {
                let s = &s;
                scope.spawn(move || {
                    for k in 0..3_u64 {
                        let action = if (round + w as u64 + k).is_multiple_of(2) {
                            IntentionAction::Allow
                        } else {
                            IntentionAction::Deny
                        };
                        s.intention_upsert_exact(None, "web", "db", body(action))
                            .unwrap();
                    }
                });
            }
        });
        let stored = s
            .intention_get_exact(None, "web", "db")
            .unwrap()
            .value
            .action;
        let live = s.intention_check(None, "web", "db").unwrap();
        if live != (stored == Some(IntentionAction::Allow)) {
            stale.push(round);
        }
    }
    assert!(
        stale.is_empty(),
        "the live index disagreed with the store after rounds {stale:?}"
    );
    assert_eq!(
        s.intention_index().version(),
        s.store().table_index(Table::Intentions)
    );
}

/// Consul keeps one intention per (source, destination). Decided on a snapshot taken before
/// the write, concurrent creates or upserts of one pair could each store a row, and a deny
/// could then be shadowed by its allow twin in precedence order.
#[test]
fn concurrent_writes_of_one_pair_store_one_intention() {
    let s = dev();
    // A longer scan for the pair widens the window between looking and writing.
    for i in 0..500 {
        s.intention_upsert_exact(None, &format!("f-{i}"), "x", body(IntentionAction::Allow))
            .unwrap();
    }
    for round in 0..60 {
        let (src, dst) = (format!("web-{round}"), format!("db-{round}"));
        let created = std::sync::atomic::AtomicUsize::new(0);
        let start = std::sync::Barrier::new(4);
        std::thread::scope(|scope| {
            for w in 0..4 {
                let (s, src, dst, created, start) = (&s, &src, &dst, &created, &start);
                scope.spawn(move || {
                    start.wait();
                    if w % 2 == 0 {
                        let mut ixn = Intention::new(src, dst, IntentionAction::Deny);
                        ixn.id.clear();
                        match s.intention_create(None, ixn) {
                            Ok(_) => {
                                created.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            }
                            Err(e) => {
                                assert_eq!(e.kind(), ErrorKind::InvalidIntention, "{e}");
                                assert!(e.to_string().contains("duplicate intention"), "{e}");
                            }
                        }
                    } else {
                        s.intention_upsert_exact(None, src, dst, body(IntentionAction::Deny))
                            .unwrap();
                    }
                });
            }
        });
        let rows = s
            .store()
            .view()
            .intentions()
            .filter(|i| i.source_name == src && i.destination_name == dst)
            .count();
        assert_eq!(rows, 1, "round {round}: {rows} intentions for one pair");
        assert!(created.into_inner() <= 1);
    }
}

#[test]
fn ttl_checks_expire_unless_updated_within_their_ttl() {
    let clock = Arc::new(ManualClock::new(
        time::macros::datetime!(2026-01-01 00:00:00 UTC),
    ));
    let s = Server::start(ServerConfig::dev(), clock.clone()).unwrap();
    let mut reg = ServiceRegistration::new("web", 8080);
    reg.check = Some(crate::catalog::CheckRegistration::ttl("10s"));
    s.register_service(None, reg).unwrap();
    let status = || {
        let c = s
            .store()
            .view()
            .catalog()
            .check(&s.config().node_name, "service:web")
            .cloned()
            .unwrap();
        (c.status, c.output)
    };
    let passing = || (HealthStatus::Passing, "ok".to_owned());
    s.update_check(None, "service:web", HealthStatus::Passing, "ok")
        .unwrap();
    clock.advance(Duration::from_secs(6));
    let next = s.expire_ttl_checks().unwrap().unwrap();
    assert_eq!(next, clock.now() + Duration::from_secs(4));
    assert_eq!(status(), passing());
    // An update restarts the timer.
    s.update_check(None, "service:web", HealthStatus::Passing, "ok")
        .unwrap();
    clock.advance(Duration::from_secs(8));
    s.expire_ttl_checks().unwrap();
    assert_eq!(status(), passing());
    clock.advance(Duration::from_secs(2));
    let index = s.store().index();
    assert_eq!(
        s.expire_ttl_checks().unwrap(),
        None,
        "nothing pending once expired"
    );
    assert_eq!(status(), (HealthStatus::Critical, TTL_EXPIRED.to_owned()));
    assert!(s.store().index() > index);
    // Expired once: later passes write nothing.
    let index = s.store().index();
    clock.advance(Duration::from_secs(30));
    s.expire_ttl_checks().unwrap();
    assert_eq!(s.store().index(), index);
    // The next update passes again, with a new timer.
    s.update_check(None, "service:web", HealthStatus::Passing, "ok")
        .unwrap();
    assert_eq!(
        s.expire_ttl_checks().unwrap(),
        Some(clock.now() + Duration::from_secs(10))
    );
    assert_eq!(status(), passing());
}
