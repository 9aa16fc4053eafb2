use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use time::macros::datetime;

use super::*;
use crate::acl::{Policy, PolicyLink, Token};
use crate::ca::{BuiltinSecrets, CaConfiguration, CaRoot};
use crate::catalog::{CheckRegistration, HealthCheck, HealthStatus, Node, ServiceRegistration};
use crate::intentions::{Intention, IntentionAction};

/// Where a store under test keeps its state: the store tests run against each (the
/// `on_every_backend!` tests), so every write behaves the same whatever persists it.
#[derive(Debug, Clone, Copy)]
enum Backend {
    Memory,
    Sqlite,
    #[cfg(feature = "etcd")]
    Etcd,
}

/// A store and what must outlive it.
struct Opened {
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

impl Backend {
    /// A new, empty store; `None` (with a printed SKIPPED line) when etcd is not installed.
    fn open(self, test: &str) -> Option<Opened> {
        match self {
            Backend::Memory => Some(Opened {
                store: Store::in_memory(),
                _dir: None,
            }),
            Backend::Sqlite => {
                let dir = tempfile::tempdir().unwrap();
                Some(Opened {
                    store: Store::open_dir(dir.path()).unwrap(),
                    _dir: Some(dir),
                })
            }
            #[cfg(feature = "etcd")]
            Backend::Etcd => {
                let config = etcd_harness::config(test)?;
                Some(Opened {
                    store: Store::open(EtcdPersistence::open(config).unwrap()).unwrap(),
                    _dir: None,
                })
            }
        }
    }
}

/// `fn name(store) { … }` becomes a module `name` with one test per [`Backend`], each running
/// the body on a new store of that backend; `async fn` makes tokio tests.
macro_rules! on_every_backend {
    (fn $name:ident($store:ident) $body:block) => {
        mod $name {
            use super::*;

            fn run($store: Store) $body

            fn on(backend: Backend) {
                if let Some(opened) = backend.open(stringify!($name)) {
                    run(opened.store.clone());
                }
            }

            #[test]
            fn memory() {
                on(Backend::Memory)
            }

            #[test]
            fn sqlite() {
                on(Backend::Sqlite)
            }

            #[cfg(feature = "etcd")]
            #[test]
            fn etcd() {
                on(Backend::Etcd)
            }
        }
    };
    (async fn $name:ident($store:ident) $body:block) => {
        mod $name {
            use super::*;

            async fn run($store: Store) $body

            async fn on(backend: Backend) {
                if let Some(opened) = backend.open(stringify!($name)) {
                    run(opened.store.clone()).await;
                }
            }

            #[tokio::test]
            async fn memory() {
                on(Backend::Memory).await
            }

            #[tokio::test]
            async fn sqlite() {
                on(Backend::Sqlite).await
            }

            #[cfg(feature = "etcd")]
            #[tokio::test]
            async fn etcd() {
                on(Backend::Etcd).await
            }
        }
    };
}

#[cfg(feature = "etcd")]
#[path = "../../tests/etcd_support/mod.rs"]
mod etcd_support;

/// One single-member etcd per test binary, started on first use; each test gets a prefix of
/// its own.
#[cfg(feature = "etcd")]
mod etcd_harness {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::{EtcdConfig, Kek};

    use super::etcd_support;

    static CLUSTER: OnceLock<Option<etcd_support::EtcdCluster>> = OnceLock::new();

    /// The endpoints of the shared etcd, or `None` (printed as SKIPPED) without one.
    pub(super) fn endpoints(test: &str) -> Option<Vec<String>> {
        CLUSTER
            .get_or_init(|| {
                etcd_support::etcd_or_skip(test).map(|bin| etcd_support::EtcdCluster::start(bin, 1))
            })
            .as_ref()
            .map(etcd_support::EtcdCluster::endpoints)
    }

    /// A fixed test key (32 bytes of base64).
    pub(super) const KEK: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

    pub(super) fn kek() -> Kek {
        Kek::from_base64(KEK, "test").unwrap()
    }

    /// A fresh prefix: tests share the etcd but never each other's state.
    pub(super) fn prefix(test: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!(
            "/libconnect-test/{}-{}/{test}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// The configuration of a new store under a fresh prefix.
    pub(super) fn config(test: &str) -> Option<EtcdConfig> {
        Some(EtcdConfig {
            endpoints: endpoints(test)?,
            prefix: prefix(test),
            tls: None,
            kek: kek(),
        })
    }
}

fn intention(id: &str, src: &str, dst: &str) -> Intention {
    let mut i = Intention::new(src, dst, IntentionAction::Allow);
    i.id = id.to_owned();
    i
}

fn token(accessor: &str) -> Token {
    Token {
        accessor_id: accessor.to_owned(),
        secret_id: format!("secret-{accessor}"),
        description: "test".into(),
        policies: vec![PolicyLink::by_id("p1")],
        ..Token::default()
    }
}

fn policy(id: &str) -> Policy {
    let mut p = Policy::new(
        format!("policy-{id}"),
        r#"service "web" { policy = "write" }"#,
    );
    p.id = id.to_owned();
    p
}

fn root(id: &str, active: bool) -> CaRoot {
    CaRoot {
        id: id.to_owned(),
        name: "Consul CA Root Cert".into(),
        serial_number: 7,
        signing_key_id: "aa:bb".into(),
        external_trust_domain: "11111111-2222-3333-4444-555555555555".into(),
        not_before: datetime!(2024-01-01 00:00:00 UTC),
        not_after: datetime!(2034-01-01 00:00:00 UTC),
        root_cert: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        intermediate_certs: Some(vec![
            "-----BEGIN CERTIFICATE-----\nX\n-----END CERTIFICATE-----\n".into(),
        ]),
        active,
        rotated_out_at: (!active).then_some(datetime!(2025-06-01 12:00:00 UTC)),
        private_key_type: "ec".into(),
        private_key_bits: 256,
        create_index: 0,
        modify_index: 0,
    }
}

fn secrets() -> BuiltinSecrets {
    BuiltinSecrets {
        private_key_pem: "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n".into(),
        cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
    }
}

fn web_with_check() -> ServiceRegistration {
    let mut r = ServiceRegistration::new("web", 8080);
    r.check = Some(CheckRegistration::ttl("15s"));
    r
}

/// Writes a row to every table, including deletes, through `store`.
fn fill(store: &Store) {
    let mut config = CaConfiguration::consul(
        json!({"LeafCertTTL": "72h", "RotationPeriod": "2160h"})
            .as_object()
            .unwrap()
            .clone(),
    );
    config.force_without_cross_signing = true;
    store.set_ca_config(config).unwrap();
    store
        .set_ca_roots(vec![root("old", false), root("new", true)])
        .unwrap();
    store.set_ca_secrets(secrets()).unwrap();
    store.set_ca_serial(41).unwrap();
    store.put_intention(intention("i1", "web", "db")).unwrap();
    store.put_intention(intention("i2", "api", "db")).unwrap();
    store.put_intention(intention("i3", "*", "db")).unwrap();
    store.delete_intention("i2").unwrap();
    store.put_acl_policy(policy("p1")).unwrap();
    store.put_acl_policy(policy("p2")).unwrap();
    store.delete_acl_policy("p2").unwrap();
    store.put_acl_token(token("t1")).unwrap();
    store.set_acl_bootstrapped(true).unwrap();
    store
        .register_node(Node::new("node1", "10.0.0.5", "dc1"))
        .unwrap();
    store
        .register_node(Node::new("node2", "10.0.0.6", "dc1"))
        .unwrap();
    store.register_service("node1", &web_with_check()).unwrap();
    store
        .register_service("node1", &ServiceRegistration::sidecar_proxy("web", 21000))
        .unwrap();
    store
        .register_check(HealthCheck::node_check(
            "node1",
            "serfHealth",
            HealthStatus::Passing,
        ))
        .unwrap();
    store
        .update_check("node1", "service:web", HealthStatus::Passing, "ok")
        .unwrap();
    store.register_service("node2", &web_with_check()).unwrap();
    assert!(store.deregister_node("node2").unwrap().value);
}

/// A reader blocked in `wait_any(tables, min_index, timeout)` on a task of its own, as a
/// blocking query is; the task's result is the index it returned.
fn blocked_reader(
    store: &Store,
    tables: &'static [Table],
    min_index: u64,
    timeout: Duration,
) -> tokio::task::JoinHandle<u64> {
    let store = store.clone();
    tokio::spawn(async move { store.wait_any(tables, min_index, timeout).await })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

on_every_backend! {
    fn index_is_monotonic_across_tables_and_never_zero(store) {
        assert_eq!(store.index(), 1);
        for table in Table::ALL {
            assert_eq!(store.table_index(*table), 1, "{table}");
        }
        assert_eq!(store.intentions().index, 1);
        assert_eq!(store.health_connect("web", false).index, 1);

        let mut last = store.index();
        let mut step = |index: u64| {
            assert_eq!(index, last + 1, "every write takes the next index");
            last = index;
        };
        step(
            store
                .put_intention(intention("i1", "web", "db"))
                .unwrap()
                .index,
        );
        step(store.put_acl_token(token("t1")).unwrap().index);
        step(
            store
                .register_node(Node::new("n1", "10.0.0.1", "dc1"))
                .unwrap()
                .index,
        );
        step(
            store
                .put_intention(intention("i2", "api", "db"))
                .unwrap()
                .index,
        );
        step(store.set_ca_serial(5).unwrap());
        assert_eq!(store.index(), last);
        assert_eq!(store.table_index(Table::Intentions), 5);
        assert_eq!(store.table_index(Table::AclTokens), 3);
        assert_eq!(store.table_index(Table::Nodes), 4);
        assert_eq!(store.table_index(Table::CaSecrets), 6);
        assert_eq!(store.table_index(Table::AclPolicies), 1, "never written");
        assert_eq!(store.intentions().index, 5);
        assert_eq!(store.acl_policies().index, 1);

        // Writes that change nothing take no index.
        assert_eq!(
            store.set_ca_serial(3).unwrap(),
            last,
            "the serial never goes back"
        );
        assert_eq!(
            store
                .register_node(Node::new("n1", "10.0.0.1", "dc1"))
                .unwrap()
                .index,
            last
        );
        assert_eq!(store.index(), last);
    }
}

on_every_backend! {
    fn rows_carry_create_and_modify_indexes(store) {
        let first = store.put_intention(intention("i1", "web", "db")).unwrap();
        assert_eq!(first.value.create_index, first.index);
        assert_eq!(first.value.modify_index, first.index);
        store.put_acl_token(token("t1")).unwrap();
        let mut changed = intention("i1", "web", "db");
        changed.description = "changed".into();
        let second = store.put_intention(changed).unwrap();
        assert_eq!(second.value.create_index, first.index);
        assert_eq!(second.value.modify_index, second.index);
        assert_eq!(store.intention("i1").value.unwrap(), second.value);

        let roots = store.set_ca_roots(vec![root("r1", true)]).unwrap();
        let r1 = roots.value[0].clone();
        assert_eq!(
            (r1.create_index, r1.modify_index),
            (roots.index, roots.index)
        );
        let mut rotated = r1.clone();
        rotated.active = false;
        let again = store.set_ca_roots(vec![rotated, root("r2", true)]).unwrap();
        assert_eq!(again.value[0].create_index, roots.index);
        assert_eq!(again.value[0].modify_index, again.index, "changed root");
        let third = store
            .set_ca_roots(vec![again.value[0].clone(), root("r2", true)])
            .unwrap();
        assert_eq!(
            third.value[1].modify_index, again.index,
            "unchanged root keeps its index"
        );
    }
}

on_every_backend! {
    async fn wait_wakes_on_a_write_to_its_table_and_not_on_others(store) {
        let start = store
            .put_intention(intention("i1", "web", "db"))
            .unwrap()
            .index;
        let waiter = blocked_reader(&store, &[Table::Intentions], start, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.put_acl_token(token("t1")).unwrap();
        store
            .register_node(Node::new("n1", "10.0.0.1", "dc1"))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "woke on another table's write");
        let written = store
            .put_intention(intention("i2", "api", "db"))
            .unwrap()
            .index;
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("did not wake on its own table's write")
            .unwrap();
        assert_eq!(woke, written);
        assert_eq!(woke, store.intentions().index);
    }
}

on_every_backend! {
    async fn wait_returns_at_once_when_the_index_is_already_past(store) {
        // Index 0 means "don't block", as in Consul; an empty table is at 1.
        assert_eq!(
            store
                .wait(Table::Intentions, 0, Duration::from_secs(30))
                .await,
            1
        );
        let i = store
            .put_intention(intention("i1", "web", "db"))
            .unwrap()
            .index;
        assert_eq!(
            store
                .wait(Table::Intentions, 1, Duration::from_secs(30))
                .await,
            i
        );
        assert_eq!(
            store
                .wait(Table::Intentions, i - 1, Duration::from_secs(30))
                .await,
            i
        );
    }
}

on_every_backend! {
    async fn wait_times_out_with_the_current_index_and_no_error(store) {
        let i = store
            .put_intention(intention("i1", "web", "db"))
            .unwrap()
            .index;
        store.put_acl_token(token("t1")).unwrap();
        let started = std::time::Instant::now();
        let index = store
            .wait(Table::Intentions, i, Duration::from_millis(100))
            .await;
        assert!(started.elapsed() >= Duration::from_millis(100));
        assert_eq!(index, i, "the table's index, not the store's");
        assert_eq!(
            store.wait(Table::AclPolicies, 1, Duration::ZERO).await,
            1,
            "never 0"
        );
    }
}

on_every_backend! {
    async fn wait_any_wakes_on_any_of_its_tables(store) {
        store
            .register_node(Node::new("n1", "10.0.0.1", "dc1"))
            .unwrap();
        let start = store.health_service("web", false).index;
        let waiter = blocked_reader(&store, Table::CATALOG, start, Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(50)).await;
        store.put_intention(intention("i1", "web", "db")).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        let written = store
            .register_service("n1", &web_with_check())
            .unwrap()
            .index;
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(woke, written);
        assert_eq!(store.health_service("web", false).index, written);
    }
}

on_every_backend! {
    fn a_failed_transaction_changes_nothing(store) {
        let before = store.index();
        let result: Result<Indexed<()>, StateError> = store.write(|tx| {
            tx.put_intention(intention("i1", "web", "db"))?;
            assert!(
                tx.intention("i1").is_some(),
                "a transaction reads its own writes"
            );
            tx.delete_acl_token("missing")?;
            Ok(())
        });
        assert_eq!(
            result.unwrap_err(),
            StateError::NotFound("ACL token with AccessorID \"missing\" not found".into())
        );
        assert_eq!(store.index(), before);
        assert!(store.intention("i1").value.is_none());
    }
}

/// Refuses every commit, as a full disk would.
#[derive(Debug)]
struct FailingPersistence;

impl Persistence for FailingPersistence {
    fn load(&self) -> Result<Snapshot, StateError> {
        Ok(Snapshot::default())
    }

    fn commit(&self, _txn: &Txn) -> Result<(), StateError> {
        Err(StateError::Database {
            path: "test".into(),
            message: "disk full".into(),
        })
    }
}

#[tokio::test]
async fn a_write_that_cannot_be_persisted_is_neither_visible_nor_published() {
    let store = Store::open(FailingPersistence).unwrap();
    let waiter = blocked_reader(&store, &[Table::Intentions], 1, Duration::from_millis(300));
    let err = store
        .put_intention(intention("i1", "web", "db"))
        .unwrap_err();
    assert_eq!(err.to_string(), "state database test: disk full");
    assert_eq!(crate::Error::from(err).kind(), crate::ErrorKind::Io);
    assert_eq!(store.index(), 1);
    assert!(store.intentions().value.is_empty());
    assert_eq!(waiter.await.unwrap(), 1, "the waiter timed out, not woken");
}

/// Hands the store a snapshot whose rows contradict each other.
#[derive(Debug)]
struct SnapshotPersistence(Snapshot);

impl Persistence for SnapshotPersistence {
    fn load(&self) -> Result<Snapshot, StateError> {
        Ok(self.0.clone())
    }

    fn commit(&self, _txn: &Txn) -> Result<(), StateError> {
        Ok(())
    }
}

#[test]
fn an_inconsistent_snapshot_is_refused() {
    let orphan = Snapshot {
        index: 9,
        services: vec![("ghost".into(), web_with_check().to_service())],
        ..Snapshot::default()
    };
    let err = Store::open(SnapshotPersistence(orphan)).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("node \"ghost\", which does not exist"),
        "{err}"
    );

    let ahead = Snapshot {
        index: 3,
        table_indexes: [(Table::Nodes, 4)].into(),
        ..Snapshot::default()
    };
    let err = Store::open(SnapshotPersistence(ahead)).unwrap_err();
    assert!(err.to_string().contains("above the store index"), "{err}");
}

#[test]
fn sqlite_round_trip_restores_every_table_index_and_the_serial() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    round_trip(|| Store::open_dir(&data).unwrap());
}

/// `fill` through one store, dropped, then everything back through the next `open`.
fn round_trip(open: impl Fn() -> Store) {
    let (before, index) = {
        let store = open();
        fill(&store);
        (store.snapshot(), store.index())
    };
    assert!(index > 20);
    let store = open();
    let after = store.snapshot();
    assert_eq!(after, before);
    assert_eq!(store.index(), index);
    for table in Table::ALL {
        assert_eq!(
            store.table_index(*table),
            before.table_indexes[table],
            "{table}"
        );
    }
    let (secrets_back, serial) = store.ca_secrets().value;
    assert_eq!(secrets_back, Some(secrets()));
    assert_eq!(serial, 41);
    let roots = store.ca_roots().value;
    assert_eq!(
        roots.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["old", "new"]
    );
    assert_eq!(
        roots[0].rotated_out_at,
        Some(datetime!(2025-06-01 12:00:00 UTC))
    );
    assert!(store.ca_config().value.unwrap().force_without_cross_signing);
    assert_eq!(
        store
            .intentions()
            .value
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        ["i1", "i3"]
    );
    assert_eq!(store.acl_token("t1").value.unwrap().secret_id, "secret-t1");
    assert!(store.acl_policy("p2").value.is_none());
    assert!(store.acl_bootstrapped().value);
    let web = store.health_connect("web", true).value;
    assert_eq!(
        web.len(),
        1,
        "the sidecar, whose only check is the passing node check"
    );
    let checks = store.health_service("web", false).value;
    assert_eq!(checks.len(), 1);
    let ttl = checks[0]
        .checks
        .iter()
        .find(|c| c.check_id == "service:web")
        .unwrap();
    assert_eq!(
        (ttl.status, ttl.output.as_str()),
        (HealthStatus::Passing, "ok")
    );
    assert!(store.view().catalog().node("node2").is_none());

    // The next write continues the index.
    let next = store
        .put_intention(intention("i4", "x", "y"))
        .unwrap()
        .index;
    assert_eq!(next, index + 1);
}

#[test]
fn sqlite_files_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("a/b/data");
    let store = Store::open_dir(&data).unwrap();
    store.set_ca_secrets(secrets()).unwrap();
    let db = data.join(SqlitePersistence::FILE_NAME);
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&db), 0o600);
    let wal = data.join("state.db-wal");
    assert!(wal.exists(), "WAL mode");
    assert_eq!(mode(&wal), 0o600);
    assert!(
        !data.join("state.db-shm").exists(),
        "exclusive mode keeps the index in memory"
    );
    drop(store);

    // An existing directory keeps the operator's mode (`-data-dir /tmp` must not make /tmp
    // private); a too-open database file is narrowed on open.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o1777)).unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = Store::open_dir(&data).unwrap();
    assert_eq!(
        std::fs::metadata(&data).unwrap().permissions().mode() & 0o7777,
        0o1777
    );
    assert_eq!(mode(&db), 0o600);
    assert_eq!(store.ca_secrets().value.0, Some(secrets()));
}

#[test]
fn a_garbage_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("state.db"),
        "this is not a SQLite database, just some text that is long enough ".repeat(40),
    )
    .unwrap();
    let err = Store::open_dir(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("state.db is corrupt or not a libconnect state database"),
        "{text}"
    );
    assert!(text.contains("file is not a database"), "{text}");
    assert_eq!(crate::Error::from(err).kind(), crate::ErrorKind::Io);
}

#[test]
fn a_foreign_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, data BLOB);")
        .unwrap();
    drop(conn);
    let err = Store::open_dir(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("it has tables photos but no libconnect meta table"),
        "{err}"
    );
}

#[test]
fn a_row_that_does_not_decode_names_its_table_and_key() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open_dir(dir.path()).unwrap();
        store.put_intention(intention("i1", "web", "db")).unwrap();
    }
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute("UPDATE intentions SET json = '{\"Action\": 7}'", [])
        .unwrap();
    drop(conn);
    let err = Store::open_dir(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string().contains("table intentions, row \"i1\""),
        "{err}"
    );
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open_dir(dir.path()).unwrap());
    let conn = rusqlite::Connection::open(dir.path().join("state.db")).unwrap();
    conn.execute(
        "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
        [],
    )
    .unwrap();
    drop(conn);
    let err = Store::open_dir(dir.path()).unwrap_err();
    assert_eq!(
        err,
        StateError::UnsupportedSchema {
            path: dir.path().join("state.db").display().to_string(),
            found: 99,
            supported: 1,
        }
    );
}

#[test]
fn a_data_dir_in_use_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_dir(dir.path()).unwrap();
    let err = Store::open_dir(dir.path()).unwrap_err();
    assert!(matches!(err, StateError::Locked { .. }), "{err:?}");
    assert!(err.to_string().contains("in use by another process"));
    drop(store);
    Store::open_dir(dir.path()).unwrap();
}

fn concurrent_writers(store: &Store, threads: usize, per_thread: usize) {
    let start = store.index();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        let id = format!("t{t}-{i}");
                        match i % 3 {
                            0 => {
                                store
                                    .put_intention(intention(&id, &id, "db"))
                                    .unwrap()
                                    .index
                            }
                            1 => store.put_acl_token(token(&id)).unwrap().index,
                            _ => {
                                store
                                    .register_node(Node::new(&id, "10.0.0.1", "dc1"))
                                    .unwrap()
                                    .index
                            }
                        }
                    })
                    .collect::<Vec<u64>>()
            })
        })
        .collect();
    let mut all = BTreeSet::new();
    for h in handles {
        let indexes = h.join().unwrap();
        assert!(indexes.windows(2).all(|w| w[0] < w[1]), "per-thread order");
        for i in indexes {
            assert!(all.insert(i), "index {i} handed out twice");
        }
    }
    let total = (threads * per_thread) as u64;
    assert_eq!(all.len() as u64, total);
    assert_eq!(
        all.iter().copied().collect::<Vec<_>>(),
        ((start + 1)..=(start + total)).collect::<Vec<_>>(),
        "no gaps"
    );
    assert_eq!(store.index(), start + total);
    let view = store.view();
    let rows =
        view.intentions().count() + view.acl_tokens().count() + view.catalog().nodes().count();
    assert_eq!(rows as u64, total);
    let max_of = |f: &dyn Fn(&Tables) -> Vec<u64>| f(&view).into_iter().max().unwrap();
    assert_eq!(
        view.table_index(Table::Intentions),
        max_of(&|v| v.intentions().map(|i| i.modify_index).collect())
    );
    assert_eq!(
        view.table_index(Table::AclTokens),
        max_of(&|v| v.acl_tokens().map(|t| t.modify_index).collect())
    );
    assert_eq!(
        view.table_index(Table::Nodes),
        max_of(&|v| v.catalog().nodes().map(|n| n.modify_index).collect())
    );
}

#[test]
fn concurrent_writers_keep_the_index_consistent_in_memory() {
    concurrent_writers(&Store::in_memory(), 8, 150);
}

#[test]
fn concurrent_writers_keep_the_index_consistent_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let (snapshot, index) = {
        let store = Store::open_dir(dir.path()).unwrap();
        concurrent_writers(&store, 4, 15);
        (store.snapshot(), store.index())
    };
    let store = Store::open_dir(dir.path()).unwrap();
    assert_eq!(store.index(), index);
    assert_eq!(store.snapshot(), snapshot);
}

on_every_backend! {
    fn catalog_register_and_deregister(store) {
        let err = store
            .register_service("node1", &web_with_check())
            .unwrap_err();
        assert_eq!(
            err,
            StateError::NotFound("node \"node1\" is not registered".into())
        );
        store
            .register_node(Node::new("node1", "10.0.0.5", "dc1"))
            .unwrap();
        let web = store.register_service("node1", &web_with_check()).unwrap();
        assert_eq!(web.value.id, "web");
        assert_eq!(web.value.create_index, web.index);
        let mut native = ServiceRegistration::from_json(
            br#"{"name":"web","id":"web-native","port":9090,"connect":{"native":true}}"#,
        )
        .unwrap();
        store.register_service("node1", &native).unwrap();
        let mut sidecar = ServiceRegistration::sidecar_proxy("web", 21000);
        sidecar.check = Some(CheckRegistration::ttl("10s"));
        store.register_service("node1", &sidecar).unwrap();
        store
            .register_check(HealthCheck::node_check(
                "node1",
                "serfHealth",
                HealthStatus::Passing,
            ))
            .unwrap();

        let connect = store.health_connect("web", false);
        let ids: Vec<_> = connect
            .value
            .iter()
            .map(|e| e.service.id.as_str())
            .collect();
        assert_eq!(ids, ["web-native", "web-sidecar-proxy"]);
        assert_eq!(connect.index, store.index());
        assert_eq!(connect.value[1].dial_address(), ("10.0.0.5", 21000));
        // Only the native service has no failing check yet; new TTL checks start critical.
        let passing: Vec<_> = store
            .health_connect("web", true)
            .value
            .into_iter()
            .map(|e| e.service.id)
            .collect();
        assert_eq!(passing, ["web-native"]);
        let sidecar_passes = || {
            store
                .update_check(
                    "node1",
                    "service:web-sidecar-proxy",
                    HealthStatus::Passing,
                    "",
                )
                .unwrap()
        };
        sidecar_passes();
        assert_eq!(store.health_connect("web", true).value.len(), 2);

        // Heartbeats that change nothing write nothing.
        let i = store.index();
        sidecar_passes();
        assert_eq!(store.index(), i);

        // Re-registering keeps a check's status; a registration without the check drops it.
        store.register_service("node1", &sidecar).unwrap();
        assert_eq!(
            store
                .view()
                .catalog()
                .check("node1", "service:web-sidecar-proxy")
                .unwrap()
                .status,
            HealthStatus::Passing
        );
        sidecar.check = None;
        store.register_service("node1", &sidecar).unwrap();
        assert!(
            store
                .view()
                .catalog()
                .check("node1", "service:web-sidecar-proxy")
                .is_none()
        );

        native.port = 0;
        native.kind = crate::catalog::ServiceKind::ConnectProxy;
        let err = store.register_service("node1", &native).unwrap_err();
        assert_eq!(
            err,
            StateError::Catalog(crate::catalog::CatalogError::ProxyMissingDestination)
        );
        assert_eq!(err.kind(), crate::ErrorKind::InvalidParameter);

        store.deregister_service("node1", "web").unwrap();
        assert!(
            store
                .view()
                .catalog()
                .check("node1", "service:web")
                .is_none(),
            "checks go too"
        );
        let err = store.deregister_service("node1", "web").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::NotFound);
        assert_eq!(
            err.to_string(),
            "Unknown service ID \"web\". Ensure that the service ID is passed, not the service name."
        );
        let err = store.deregister_check("node1", "nope").unwrap_err();
        assert!(err.to_string().starts_with("Unknown check ID \"nope\""));
        let mut orphan = HealthCheck::node_check("node1", "c", HealthStatus::Passing);
        orphan.service_id = "missing".into();
        assert!(matches!(
            store.register_check(orphan).unwrap_err(),
            StateError::NotFound(_)
        ));

        assert!(store.deregister_node("node1").unwrap().value);
        let view = store.view();
        assert_eq!(view.catalog().services().count(), 0);
        assert_eq!(view.catalog().checks().count(), 0);
        assert!(!store.deregister_node("node1").unwrap().value);
        assert!(store.catalog_services().value.is_empty());
    }
}

on_every_backend! {
    fn acl_bootstrap_is_race_free_inside_a_transaction(store) {
        let bootstrap = |store: &Store| {
            store.write(|tx| {
                if tx.acl_bootstrapped() {
                    return Err(StateError::InvalidRow(
                        "ACL bootstrap no longer allowed".into(),
                    ));
                }
                tx.set_acl_bootstrapped(true);
                tx.put_acl_token(token("root"))
            })
        };
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let store = store.clone();
                std::thread::spawn(move || bootstrap(&store).is_ok())
            })
            .collect();
        let wins = handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .filter(|ok| *ok)
            .count();
        assert_eq!(wins, 1);
        let b = store.acl_bootstrapped();
        assert!(b.value);
        assert_eq!(
            b.index,
            store.acl_token("root").index,
            "one transaction, one index"
        );
    }
}

on_every_backend! {
    fn debug_output_holds_no_secrets(store) {
        store.set_ca_secrets(secrets()).unwrap();
        store.put_acl_token(token("t1")).unwrap();
        let rendered = format!("{store:?} {:?}", store.snapshot());
        assert!(!rendered.contains("PRIVATE KEY"), "{rendered}");
        assert!(!rendered.contains("secret-t1"), "{rendered}");
        let _shared: Arc<Tables> = store.view();
    }
}

/// What only a shared (etcd) store does: other servers' writes, sealed secrets, conflicts and
/// the leader fence.
#[cfg(feature = "etcd")]
mod etcd {
    use super::*;

    fn open(config: &EtcdConfig) -> Store {
        Store::open(EtcdPersistence::open(config.clone()).unwrap()).unwrap()
    }

    #[test]
    fn etcd_round_trip_restores_every_table_index_and_the_serial() {
        let Some(config) = etcd_harness::config("etcd_round_trip") else {
            return;
        };
        round_trip(|| open(&config));
    }

    /// Every value under the prefix, as etcd holds it.
    async fn raw_values(config: &EtcdConfig) -> Vec<(String, String)> {
        let mut client = etcd_client::Client::connect(&config.endpoints, None)
            .await
            .unwrap();
        let response = client
            .get(
                config.prefix.as_str(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        response
            .kvs()
            .iter()
            .map(|kv| {
                (
                    String::from_utf8_lossy(kv.key()).into_owned(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect()
    }

    #[tokio::test]
    async fn secrets_are_sealed_in_etcd_and_open_only_with_the_kek() {
        let Some(config) = etcd_harness::config("sealed") else {
            return;
        };
        let store = open(&config);
        store.set_ca_secrets(secrets()).unwrap();
        store.put_acl_token(token("t1")).unwrap();
        drop(store);
        let raw = raw_values(&config).await;
        let secrets_value = raw
            .iter()
            .find(|(k, _)| k.ends_with("/state/ca_secrets/builtin"))
            .map(|(_, v)| v.clone())
            .unwrap();
        assert!(secrets_value.starts_with("lcsealed1:"), "{secrets_value}");
        for (key, value) in &raw {
            assert!(!value.contains("PRIVATE KEY"), "{key}: {value}");
            assert!(!value.contains("secret-t1"), "{key}: {value}");
        }

        let store = open(&config);
        assert_eq!(store.ca_secrets().value.0, Some(secrets()));
        assert_eq!(store.acl_token("t1").value.unwrap().secret_id, "secret-t1");
        drop(store);

        let mut wrong = config.clone();
        wrong.kek =
            Kek::from_base64("QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY=", "wrong").unwrap();
        let err = Store::open(EtcdPersistence::open(wrong).unwrap()).unwrap_err();
        assert!(matches!(err, StateError::Decrypt { .. }), "{err:?}");
        assert!(err.to_string().contains("key-encryption key"), "{err}");
    }

    #[test]
    fn a_kek_must_be_32_bytes_of_base64() {
        for bad in ["", "not base64!", "c2hvcnQ="] {
            let err = Kek::from_base64(bad, "kek.b64").unwrap_err();
            assert!(matches!(err, StateError::Kek { .. }), "{err:?}");
            assert_eq!(err.kind(), crate::ErrorKind::InvalidParameter);
            assert!(
                err.to_string().starts_with("key-encryption key kek.b64: "),
                "{err}"
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let missing = Kek::from_file(&dir.path().join("none")).unwrap_err();
        assert!(matches!(missing, StateError::Kek { .. }), "{missing:?}");
        assert!(!format!("{:?}", etcd_harness::kek()).contains(etcd_harness::KEK));
    }

    #[tokio::test]
    async fn a_second_server_sees_the_first_ones_writes_and_its_blocking_queries_wake() {
        let Some(config) = etcd_harness::config("two_servers") else {
            return;
        };
        let a = open(&config);
        let b = open(&config);
        let start = b.intentions().index;
        let reader = blocked_reader(&b, &[Table::Intentions], start, Duration::from_secs(30));
        let written = a.put_intention(intention("i1", "web", "db")).unwrap().index;
        assert_eq!(
            reader.await.unwrap(),
            written,
            "b's query woke at a's index"
        );
        assert_eq!(b.intention("i1").value.unwrap().modify_index, written);
        // b writes next, at the next index, and a sees it.
        let back = b.put_intention(intention("i2", "api", "db")).unwrap().index;
        assert_eq!(back, written + 1);
        assert_eq!(
            a.wait(Table::Intentions, written, Duration::from_secs(30))
                .await,
            back
        );
        assert_eq!(a.snapshot(), b.snapshot());
    }

    #[test]
    fn a_stale_writer_gets_a_conflict_and_nothing_is_written() {
        let Some(config) = etcd_harness::config("conflict") else {
            return;
        };
        let store = open(&config);
        for i in 0..3 {
            store
                .put_intention(intention(&format!("i{i}"), "a", "b"))
                .unwrap();
        }
        let stale = EtcdPersistence::open(config.clone()).unwrap();
        let txn = Txn {
            index: 3,
            ops: vec![Op::DeleteIntention { id: "i0".into() }],
        };
        let err = stale.commit(&txn).unwrap_err();
        assert!(matches!(err, StateError::Conflict(_)), "{err:?}");
        assert!(
            err.to_string().contains("found the store at index 4"),
            "{err}"
        );
        assert!(open(&config).intention("i0").value.is_some());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deposed_leaders_write_is_refused() {
        let Some(config) = etcd_harness::config("fence") else {
            return;
        };
        let first = EtcdPersistence::open(config.clone()).unwrap();
        let first_lead = first.leadership();
        let first_store = Store::open(first).unwrap();
        let second = EtcdPersistence::open(config.clone()).unwrap();
        let second_lead = second.leadership();
        let second_store = Store::open(second).unwrap();

        let ttl = Duration::from_secs(2);
        let (stop_first, stopped_first) = tokio::sync::oneshot::channel::<()>();
        let campaign = {
            let lead = first_lead.clone();
            tokio::spawn(async move {
                lead.campaign("first:8500".into(), ttl, |_| {}, async {
                    let _ = stopped_first.await;
                })
                .await;
            })
        };
        let old_fence = wait_for(|| first_lead.fence()).await;
        assert_eq!(
            first_lead.leader().unwrap(),
            Some(("first:8500".into(), old_fence))
        );
        first_store
            .put_intention(intention("i1", "a", "b"))
            .unwrap();

        let second_campaign = {
            let lead = second_lead.clone();
            tokio::spawn(async move {
                lead.campaign("second:8500".into(), ttl, |_| {}, std::future::pending())
                    .await;
            })
        };
        assert_eq!(second_lead.fence(), None, "one leader at a time");
        // The first server stops campaigning without resigning, as a crashed one would: its
        // lease runs out and the second takes over.
        stop_first.send(()).unwrap();
        campaign.await.unwrap();
        let new_fence = wait_for(|| second_lead.fence()).await;
        assert!(new_fence > old_fence);
        second_store
            .put_intention(intention("i2", "a", "b"))
            .unwrap();

        // The first server's writes keep its old fence after its campaign ends.
        assert_eq!(first_lead.fence(), Some(old_fence));
        let _ = first_store
            .wait(Table::Intentions, 2, Duration::from_secs(30))
            .await;
        let err = first_store
            .put_intention(intention("i3", "a", "b"))
            .unwrap_err();
        assert!(matches!(err, StateError::NotLeader(_)), "{err:?}");
        assert!(second_store.intention("i3").value.is_none());
        second_lead.resign().await;
        assert_eq!(second_lead.leader().unwrap(), None);
        let err = second_store
            .put_intention(intention("i4", "a", "b"))
            .unwrap_err();
        assert!(
            matches!(err, StateError::NotLeader(_)),
            "a resigned leader writes no more: {err:?}"
        );
        second_campaign.abort();
    }

    /// Polls `f` until it returns a value (an election takes a lease's TTL, not a fixed time).
    async fn wait_for<T>(f: impl Fn() -> Option<T>) -> T {
        for _ in 0..600 {
            if let Some(v) = f() {
                return v;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("not within 30 s");
    }

    #[test]
    fn concurrent_writers_keep_the_index_consistent_in_etcd() {
        let Some(config) = etcd_harness::config("concurrent") else {
            return;
        };
        let store = open(&config);
        concurrent_writers(&store, 4, 15);
        assert_eq!(open(&config).snapshot(), store.snapshot());
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in
    /// `dir`: (ca, server cert, server key, client cert, client key).
    fn tls_files(dir: &Path) -> [std::path::PathBuf; 5] {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);
        let issue = |sans: Vec<SanType>| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = sans;
            let cert = params.signed_by(&key, &issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server, server_key) = issue(vec![SanType::IpAddress([127, 0, 0, 1].into())]);
        let (client, client_key) = issue(vec![SanType::DnsName("connect".try_into().unwrap())]);
        let files = [
            "ca.pem",
            "server.pem",
            "server-key.pem",
            "client.pem",
            "client-key.pem",
        ]
        .map(|f| dir.join(f));
        for (path, pem) in files
            .iter()
            .zip([ca_cert.pem(), server, server_key, client, client_key])
        {
            std::fs::write(path, pem).unwrap();
        }
        files
    }

    #[test]
    fn mutual_tls_to_etcd() {
        let Some(bin) = etcd_support::etcd_or_skip("mutual_tls_to_etcd") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let [ca, cert, key, client_cert, client_key] = tls_files(dir.path());
        let cluster = etcd_support::EtcdCluster::start_with(
            bin,
            1,
            Some(etcd_support::ServerTls {
                ca: ca.clone(),
                cert,
                key,
            }),
        );
        let config = |tls| EtcdConfig {
            endpoints: cluster.endpoints(),
            prefix: "/tls".into(),
            tls,
            kek: etcd_harness::kek(),
        };
        let with_cert = EtcdTls {
            ca_file: Some(ca.clone()),
            cert_file: Some(client_cert),
            key_file: Some(client_key),
        };
        let store = open(&config(Some(with_cert.clone())));
        store.put_intention(intention("i1", "web", "db")).unwrap();
        assert!(
            open(&config(Some(with_cert)))
                .intention("i1")
                .value
                .is_some()
        );

        // etcd refuses a client without a certificate.
        let without = EtcdTls {
            ca_file: Some(ca),
            cert_file: None,
            key_file: None,
        };
        let err = EtcdPersistence::open(config(Some(without))).unwrap_err();
        assert!(matches!(err, StateError::Etcd { .. }), "{err:?}");
        // Half a client identity is a configuration error.
        let half = EtcdTls {
            cert_file: Some(dir.path().join("client.pem")),
            ..EtcdTls::default()
        };
        let err = EtcdPersistence::open(config(Some(half))).unwrap_err();
        assert!(
            err.to_string().contains("both cert_file and key_file"),
            "{err}"
        );
    }
}
