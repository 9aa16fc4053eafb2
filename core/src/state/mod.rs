//! The state store: every table of one datacenter's control plane, one index, blocking queries.
//!
//! # Model
//!
//! A [`Store`] holds the CA configuration, roots, provider secrets and serial counter,
//! intentions, ACL tokens, policies and the bootstrap flag, and the catalog (nodes, services,
//! checks) in memory, as one immutable version of all [`Tables`] that readers share without
//! locks. There is one index for the whole store, as Consul's Raft index: every committed
//! write takes the next value, and records it as the index of each [`Table`] it changed and as
//! the `ModifyIndex` of each row (and `CreateIndex` of new rows). An empty store has index 1
//! and so does every table nobody wrote to, so no index a client sees is ever 0.
//!
//! Reads return [`Indexed`] values: the value and the index of the table(s) it came from, which
//! the HTTP layer sends as `X-Consul-Index`. A client then blocks with
//! [`Store::wait`]/[`Store::wait_any`] until that table's index passes the one it has, or its
//! wait time runs out — in which case it gets the unchanged index and no error (Consul docs:
//! Blocking Queries). Each table has its own `tokio::sync::watch` channel, so a write wakes only
//! the queries on the tables it changed.
//!
//! # Writes and durability
//!
//! [`Store::write`] runs a closure over a [`Tx`]: typed changes to a private copy of the tables.
//! When the closure returns `Ok`, the store hands the changes to its [`Persistence`] as one
//! [`Txn`] — a list of typed row operations ([`Op`]) at the new index — and only when that
//! returns, publishes the new version and wakes waiters. A write is therefore durable before
//! anyone can see or acknowledge it; if persisting fails, nothing changes.
//!
//! [`MemoryPersistence`] keeps nothing (`connect agent -dev`). [`SqlitePersistence`] keeps one
//! SQLite database in the data directory (layout in its docs), made owner-only because it holds
//! the CA's private key.
//!
//! # An etcd-backed persistence (not built)
//!
//! Nothing in the store is SQLite-specific; an etcd (or any MVCC key-value store) persistence
//! maps onto it as follows:
//!
//! - Each row is a key `/<prefix>/<table>/<id>` (`/<table>/<node>/<id>` for services and
//!   checks) holding the same JSON as the SQLite rows; the serial counter, bootstrap flag and
//!   table indexes are keys under `/<prefix>/meta/`.
//! - [`Persistence::commit`] is one etcd transaction: `If(mod_revision(meta/index) ==
//!   <revision of the last commit>)` `Then(puts and deletes of the ops, put meta/index)`. The
//!   compare makes a second writer fail instead of interleaving, as SQLite's exclusive lock
//!   does.
//! - The store index is the etcd revision of that transaction (revisions are cluster-wide and
//!   monotonic, like Raft indexes; they advance by more than one per transaction when other
//!   keys change, which blocking clients accept since Consul's indexes also jump).
//!   `ModifyIndex`/`CreateIndex` are then a key's `mod_revision`/`create_revision`, and a
//!   table's index is the highest `mod_revision` under its prefix (deletes need a tombstone
//!   key or the `meta/table_index` keys to be seen).
//! - [`Persistence::load`] is a range read of the prefix at one revision.
//! - Blocking queries map to etcd watches: a watch on `/<prefix>/<table>/` from the client's
//!   index + 1 fires on the next change, which is what `wait(table, index, timeout)` waits for.
//!   With several servers sharing one etcd, each would feed that watch into its own store
//!   (apply the events, bump the table's channel) instead of only its own commits, which is
//!   the one structural change: the store would take writes from the watch as well as from
//!   [`Store::write`].
//!
//! Scale beyond one machine is otherwise the job of a real Consul cluster behind the HTTP
//! backend (ARCHITECTURE.md, Principles: scale elsewhere).

mod error;
#[cfg(feature = "etcd")]
mod etcd;
mod ops;
mod persist;
mod sqlite;
mod store;
mod table;
mod tables;
mod tx;

pub use error::StateError;
#[cfg(feature = "etcd")]
pub use etcd::{EtcdConfig, EtcdPersistence, EtcdTls, Kek, Leadership};
pub use ops::{Op, Snapshot, Txn};
pub use persist::{MemoryPersistence, Persistence};
pub use sqlite::SqlitePersistence;
pub use store::{Feed, Store};
pub use table::{Indexed, Table};
pub use tables::Tables;
pub use tx::Tx;

#[cfg(test)]
mod tests;
