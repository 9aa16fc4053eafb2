//! The store: current tables, serialized durable writes, and blocking queries.

use std::collections::BTreeMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Poll;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::acl::{Policy, Token};
use crate::ca::{BuiltinSecrets, CaConfiguration, CaRoot};
use crate::catalog::{
    AgentService, CatalogService, HealthCheck, HealthStatus, Node, ServiceEntry,
    ServiceRegistration,
};
use crate::intentions::Intention;

use super::{
    Indexed, MemoryPersistence, Persistence, Snapshot, SqlitePersistence, StateError, Table,
    Tables, Tx, Txn,
};

/// libconnect's state store: every table of one datacenter's control plane, one index, and
/// blocking queries. Cloning is cheap and every clone is the same store.
///
/// Reads ([`view`](Self::view) and the typed getters) never wait for writers. Writes
/// ([`write`](Self::write) and the typed setters) are serialized; each is persisted by the
/// [`Persistence`] before it becomes visible or is acknowledged, then wakes the blocking queries
/// of the tables it changed.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    current: ArcSwap<Tables>,
    /// Serializes writers, so that indexes are handed out, persisted and published in one
    /// order. Readers never take it.
    writer: Mutex<()>,
    persistence: Box<dyn Persistence>,
    /// One channel per table carrying the table's index: a write wakes only the queries
    /// blocked on the tables it changed.
    watches: Vec<watch::Sender<u64>>,
}

impl Inner {
    /// Makes `tables` the current version and wakes the queries blocked on `changed`. Called
    /// with the writer lock held.
    fn publish(&self, tables: Tables, changed: &std::collections::BTreeSet<Table>) {
        let index = tables.index();
        self.current.store(Arc::new(tables));
        for table in changed {
            self.watches[table.slot()].send_replace(index);
        }
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic in an earlier writer poisons the lock but cannot have left anything half
        // written: writers only ever change a private copy.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// How a [`Persistence`] shared with other servers hands their commits to the store
/// ([`Persistence::follow`]). It holds the store weakly: once the store is dropped, the
/// methods return `false` and the persistence should stop following.
#[derive(Clone)]
pub struct Feed {
    store: Weak<Inner>,
}

impl fmt::Debug for Feed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Feed")
            .field("open", &(self.store.strong_count() > 0))
            .finish()
    }
}

impl Feed {
    /// The store's current index, or `None` once the store is gone.
    pub fn index(&self) -> Option<u64> {
        self.store.upgrade().map(|s| s.current.load().index())
    }

    /// Applies a transaction another server committed. One at or below the store's index is
    /// already here (this store's own commits come back this way) and is skipped; the next one
    /// is applied and wakes the queries on its tables. Returns `Ok(false)` once the store is
    /// gone, and [`StateError::Conflict`] for a transaction past the next index — the caller
    /// missed some and must [`reload`](Self::reload).
    pub fn apply(&self, txn: &Txn) -> Result<bool, StateError> {
        let Some(inner) = self.store.upgrade() else {
            return Ok(false);
        };
        let _writer = inner.lock_writer();
        let current = inner.current.load_full();
        if txn.index <= current.index() {
            return Ok(true);
        }
        if txn.index != current.index() + 1 {
            return Err(StateError::Conflict(format!(
                "the store is at index {} and was handed a transaction at {}",
                current.index(),
                txn.index
            )));
        }
        let mut tables = (*current).clone();
        for op in &txn.ops {
            tables.apply(op, txn.index);
        }
        tables.set_index(txn.index);
        inner.publish(tables, &txn.tables());
        Ok(true)
    }

    /// Replaces the store's state with `snapshot` if it is newer, waking every blocking query;
    /// for when the transactions in between cannot be had one by one. Returns `Ok(false)` once
    /// the store is gone.
    pub fn reload(&self, snapshot: Snapshot) -> Result<bool, StateError> {
        let Some(inner) = self.store.upgrade() else {
            return Ok(false);
        };
        let tables = Tables::from_snapshot(snapshot)?;
        let _writer = inner.lock_writer();
        if tables.index() > inner.current.load().index() {
            inner.publish(tables, &Table::ALL.iter().copied().collect());
        }
        Ok(true)
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("tables", &self.inner.current.load())
            .field("persistence", &self.inner.persistence)
            .finish()
    }
}

impl Store {
    /// Opens a store over `persistence`, starting from the state it loads.
    pub fn open(persistence: impl Persistence) -> Result<Store, StateError> {
        let tables = Tables::from_snapshot(persistence.load()?)?;
        let store = Store::with_tables(tables, Box::new(persistence));
        store.inner.persistence.follow(Feed {
            store: Arc::downgrade(&store.inner),
        });
        Ok(store)
    }

    /// An empty store that keeps nothing across restarts (`connect agent -dev`).
    pub fn in_memory() -> Store {
        Store::with_tables(Tables::empty(), Box::new(MemoryPersistence))
    }

    fn with_tables(tables: Tables, persistence: Box<dyn Persistence>) -> Store {
        let watches = Table::ALL
            .iter()
            .map(|t| watch::Sender::new(tables.table_index(*t)))
            .collect();
        Store {
            inner: Arc::new(Inner {
                current: ArcSwap::from_pointee(tables),
                writer: Mutex::new(()),
                persistence,
                watches,
            }),
        }
    }

    /// Opens (or creates) the SQLite store in `data_dir`; see [`SqlitePersistence::open`].
    pub fn open_dir(data_dir: impl AsRef<Path>) -> Result<Store, StateError> {
        Store::open(SqlitePersistence::open(data_dir.as_ref())?)
    }

    /// The current version of every table: a consistent snapshot to read from, without locks.
    pub fn view(&self) -> Arc<Tables> {
        self.inner.current.load_full()
    }

    /// The index of the last committed write; at least 1.
    pub fn index(&self) -> u64 {
        self.inner.current.load().index()
    }

    /// The index of the last write to `table`; at least 1.
    pub fn table_index(&self, table: Table) -> u64 {
        self.inner.current.load().table_index(table)
    }

    /// The whole state as plain data, e.g. to move it to another [`Persistence`].
    pub fn snapshot(&self) -> Snapshot {
        self.inner.current.load().to_snapshot()
    }

    /// Runs `f` as one transaction and commits what it changed.
    ///
    /// `f` reads and changes a private copy of the tables through [`Tx`]. If it returns an
    /// error nothing happens. Otherwise the changes are persisted — durably, before this
    /// returns — then published to readers, then the blocking queries of the changed tables
    /// wake. The result carries the index the transaction committed at; a transaction that
    /// changed nothing writes nothing and carries the current index.
    ///
    /// Writers are serialized and `f` runs under the write lock: it must not call `write`
    /// itself (that deadlocks) and should not wait on anything slow. `write` blocks on the
    /// persistence's disk sync, so async callers should run it on a blocking thread
    /// (`tokio::task::spawn_blocking`).
    pub fn write<T, E>(&self, f: impl FnOnce(&mut Tx) -> Result<T, E>) -> Result<Indexed<T>, E>
    where
        E: From<StateError>,
    {
        let _writer = self.inner.lock_writer();
        let current = self.inner.current.load_full();
        let index = current.index() + 1;
        let mut tx = Tx::new((*current).clone(), index);
        let value = f(&mut tx)?;
        let (mut tables, ops) = tx.into_parts();
        if ops.is_empty() {
            return Ok(Indexed {
                value,
                index: current.index(),
            });
        }
        tables.set_index(index);
        let txn = Txn { index, ops };
        self.inner.persistence.commit(&txn)?;
        self.inner.publish(tables, &txn.tables());
        Ok(Indexed { value, index })
    }

    /// Waits until `table`'s index exceeds `min_index` or `timeout` passes, and returns the
    /// table's index then (a blocking query, Consul docs: Blocking Queries). Timing out is not an
    /// error: the caller answers with what it has, as Consul does.
    pub async fn wait(&self, table: Table, min_index: u64, timeout: Duration) -> u64 {
        self.wait_any(&[table], min_index, timeout).await
    }

    /// Like [`wait`](Self::wait), for a query that reads several tables (health queries read
    /// [`Table::CATALOG`]): returns as soon as any of them exceeds `min_index`, with the highest
    /// of their indexes.
    pub async fn wait_any(&self, tables: &[Table], min_index: u64, timeout: Duration) -> u64 {
        let mut receivers: Vec<watch::Receiver<u64>> = tables
            .iter()
            .map(|t| self.inner.watches[t.slot()].subscribe())
            .collect();
        let woken = async {
            loop {
                // Values, not change notifications, decide: a write that landed before the
                // subscription is seen here. `any` stops at the first hit, and when there is
                // none every receiver has been marked seen, so the wait below sleeps.
                if receivers
                    .iter_mut()
                    .any(|rx| *rx.borrow_and_update() > min_index)
                {
                    return;
                }
                any_changed(&mut receivers).await;
            }
        };
        let _timed_out = tokio::time::timeout(timeout, woken).await;
        self.inner.current.load().max_index(tables)
    }

    // Typed reads: each returns the value with the index of the table(s) it came from.

    fn read<T>(&self, tables: &[Table], f: impl FnOnce(&Tables) -> T) -> Indexed<T> {
        let view = self.inner.current.load();
        Indexed {
            value: f(&view),
            index: view.max_index(tables),
        }
    }

    /// The CA configuration.
    pub fn ca_config(&self) -> Indexed<Option<CaConfiguration>> {
        self.read(&[Table::CaConfig], |t| t.ca_config().cloned())
    }

    /// The CA roots, in order.
    pub fn ca_roots(&self) -> Indexed<Vec<CaRoot>> {
        self.read(&[Table::CaRoots], |t| t.ca_roots().to_vec())
    }

    /// The built-in CA's key and certificate, and the last serial handed out.
    pub fn ca_secrets(&self) -> Indexed<(Option<BuiltinSecrets>, u64)> {
        self.read(&[Table::CaSecrets], |t| {
            (t.ca_secrets().cloned(), t.ca_serial())
        })
    }

    /// Every intention, by ID.
    pub fn intentions(&self) -> Indexed<Vec<Intention>> {
        self.read(&[Table::Intentions], |t| t.intentions().cloned().collect())
    }

    /// The intention with this ID.
    pub fn intention(&self, id: &str) -> Indexed<Option<Intention>> {
        self.read(&[Table::Intentions], |t| t.intention(id).cloned())
    }

    /// Every ACL token, by AccessorID.
    pub fn acl_tokens(&self) -> Indexed<Vec<Token>> {
        self.read(&[Table::AclTokens], |t| t.acl_tokens().cloned().collect())
    }

    /// The ACL token with this AccessorID.
    pub fn acl_token(&self, accessor_id: &str) -> Indexed<Option<Token>> {
        self.read(&[Table::AclTokens], |t| t.acl_token(accessor_id).cloned())
    }

    /// Every ACL policy, by ID.
    pub fn acl_policies(&self) -> Indexed<Vec<Policy>> {
        self.read(&[Table::AclPolicies], |t| {
            t.acl_policies().cloned().collect()
        })
    }

    /// The ACL policy with this ID.
    pub fn acl_policy(&self, id: &str) -> Indexed<Option<Policy>> {
        self.read(&[Table::AclPolicies], |t| t.acl_policy(id).cloned())
    }

    /// Whether the ACL bootstrap has happened.
    pub fn acl_bootstrapped(&self) -> Indexed<bool> {
        self.read(&[Table::AclBootstrap], Tables::acl_bootstrapped)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> Indexed<Vec<Node>> {
        self.read(&[Table::Nodes], |t| t.catalog().nodes().cloned().collect())
    }

    /// `/v1/health/service/:service`; see [`Catalog::health_service`].
    ///
    /// [`Catalog::health_service`]: crate::catalog::Catalog::health_service
    pub fn health_service(&self, name: &str, passing_only: bool) -> Indexed<Vec<ServiceEntry>> {
        self.read(Table::CATALOG, |t| {
            t.catalog().health_service(name, passing_only)
        })
    }

    /// `/v1/health/connect/:service`; see [`Catalog::health_connect`].
    ///
    /// [`Catalog::health_connect`]: crate::catalog::Catalog::health_connect
    pub fn health_connect(&self, name: &str, passing_only: bool) -> Indexed<Vec<ServiceEntry>> {
        self.read(Table::CATALOG, |t| {
            t.catalog().health_connect(name, passing_only)
        })
    }

    /// `/v1/catalog/services`: service names with their tags.
    pub fn catalog_services(&self) -> Indexed<BTreeMap<String, Vec<String>>> {
        self.read(&[Table::Services], |t| t.catalog().catalog_services())
    }

    /// `/v1/catalog/service/:service`.
    pub fn catalog_service(&self, name: &str) -> Indexed<Vec<CatalogService>> {
        self.read(&[Table::Nodes, Table::Services], |t| {
            t.catalog().catalog_service(name)
        })
    }

    // Typed writes: one transaction each; see `Tx` for the rules of each.

    /// A write whose only possible failure is persisting it; returns the index.
    fn write_infallible(&self, f: impl FnOnce(&mut Tx)) -> Result<u64, StateError> {
        self.write(|tx| {
            f(tx);
            Ok::<_, StateError>(())
        })
        .map(|done| done.index)
    }

    /// Replaces the CA configuration.
    pub fn set_ca_config(
        &self,
        config: CaConfiguration,
    ) -> Result<Indexed<CaConfiguration>, StateError> {
        self.write(|tx| Ok(tx.set_ca_config(config)))
    }

    /// Replaces the CA roots.
    pub fn set_ca_roots(&self, roots: Vec<CaRoot>) -> Result<Indexed<Vec<CaRoot>>, StateError> {
        self.write(|tx| Ok(tx.set_ca_roots(roots)))
    }

    /// Stores the built-in CA's key and certificate.
    pub fn set_ca_secrets(&self, secrets: BuiltinSecrets) -> Result<u64, StateError> {
        self.write_infallible(|tx| tx.set_ca_secrets(secrets))
    }

    /// Records the last CA serial handed out; lower values are ignored.
    pub fn set_ca_serial(&self, last: u64) -> Result<u64, StateError> {
        self.write_infallible(|tx| tx.set_ca_serial(last))
    }

    /// Inserts or replaces an intention.
    pub fn put_intention(&self, intention: Intention) -> Result<Indexed<Intention>, StateError> {
        self.write(|tx| tx.put_intention(intention))
    }

    /// Deletes an intention.
    pub fn delete_intention(&self, id: &str) -> Result<Indexed<Intention>, StateError> {
        self.write(|tx| tx.delete_intention(id))
    }

    /// Inserts or replaces an ACL token.
    pub fn put_acl_token(&self, token: Token) -> Result<Indexed<Token>, StateError> {
        self.write(|tx| tx.put_acl_token(token))
    }

    /// Deletes an ACL token.
    pub fn delete_acl_token(&self, accessor_id: &str) -> Result<Indexed<Token>, StateError> {
        self.write(|tx| tx.delete_acl_token(accessor_id))
    }

    /// Inserts or replaces an ACL policy.
    pub fn put_acl_policy(&self, policy: Policy) -> Result<Indexed<Policy>, StateError> {
        self.write(|tx| tx.put_acl_policy(policy))
    }

    /// Deletes an ACL policy.
    pub fn delete_acl_policy(&self, id: &str) -> Result<Indexed<Policy>, StateError> {
        self.write(|tx| tx.delete_acl_policy(id))
    }

    /// Sets whether the ACL bootstrap has happened.
    pub fn set_acl_bootstrapped(&self, bootstrapped: bool) -> Result<u64, StateError> {
        self.write_infallible(|tx| tx.set_acl_bootstrapped(bootstrapped))
    }

    /// Registers or updates a node.
    pub fn register_node(&self, node: Node) -> Result<Indexed<Node>, StateError> {
        self.write(|tx| tx.register_node(node))
    }

    /// Deregisters a node with its services and checks; `false` if it was not registered.
    pub fn deregister_node(&self, name: &str) -> Result<Indexed<bool>, StateError> {
        self.write(|tx| Ok(tx.deregister_node(name)))
    }

    /// Registers a service instance and its checks on a registered node.
    pub fn register_service(
        &self,
        node: &str,
        registration: &ServiceRegistration,
    ) -> Result<Indexed<AgentService>, StateError> {
        self.write(|tx| tx.register_service(node, registration))
    }

    /// Deregisters a service instance and its checks.
    pub fn deregister_service(&self, node: &str, service_id: &str) -> Result<u64, StateError> {
        Ok(self
            .write(|tx| tx.deregister_service(node, service_id))?
            .index)
    }

    /// Registers or replaces a check.
    pub fn register_check(&self, check: HealthCheck) -> Result<Indexed<HealthCheck>, StateError> {
        self.write(|tx| tx.register_check(check))
    }

    /// Sets a check's status and output.
    pub fn update_check(
        &self,
        node: &str,
        check_id: &str,
        status: HealthStatus,
        output: &str,
    ) -> Result<Indexed<HealthCheck>, StateError> {
        self.write(|tx| tx.update_check(node, check_id, status, output))
    }

    /// Deregisters a check.
    pub fn deregister_check(&self, node: &str, check_id: &str) -> Result<u64, StateError> {
        Ok(self.write(|tx| tx.deregister_check(node, check_id))?.index)
    }
}

/// Resolves when any receiver sees a change. The store owns the senders and outlives every
/// wait (which borrows it), so a closed channel cannot make this spin.
async fn any_changed(receivers: &mut [watch::Receiver<u64>]) {
    type Change<'a> =
        Pin<Box<dyn Future<Output = Result<(), watch::error::RecvError>> + Send + 'a>>;
    let mut changes: Vec<Change<'_>> = receivers
        .iter_mut()
        .map(|rx| Box::pin(rx.changed()) as Change<'_>)
        .collect();
    poll_fn(|cx| {
        if changes.iter_mut().any(|c| c.as_mut().poll(cx).is_ready()) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
}
