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
//! the CA's private key. `EtcdPersistence` (core feature `etcd`) keeps the state in an etcd
//! cluster that several servers of one datacenter share.
//!
//! # Several servers on etcd
//!
//! The etcd persistence (layout, transaction and watch in its module docs, `state/etcd.rs`):
//!
//! - Each row is a key `<prefix>/state/<table>/<id>` (`…/<table>/<node>/<id>` for services and
//!   checks) holding the same JSON as the SQLite rows; the store index, table indexes, serial
//!   counter and bootstrap flag are keys under `<prefix>/state/meta/`. Rows holding secrets (the
//!   CA key, the CA configuration, ACL tokens) are sealed with AES-256-GCM under a
//!   key-encryption key (`Kek`) from the server configuration; without one there is no etcd
//!   persistence.
//! - [`Persistence::commit`] is one etcd transaction: `If(meta/index == <the store's index>)`
//!   `Then(puts and deletes of the ops, meta/index, meta/table_index/…)`; a second writer fails
//!   with [`StateError::Conflict`] instead of interleaving, as SQLite's exclusive lock makes it.
//!   A leader's commits also compare its leader key's `create_revision` (`Leadership`), so a
//!   deposed leader's write fails with [`StateError::NotLeader`].
//! - The store index stays the store's own counter, committed in that transaction, not the etcd
//!   revision: it advances by exactly one per write on every backend (the store tests run
//!   against memory, SQLite and etcd and check that), and writes outside the prefix (the leader
//!   key, other datacenters) do not move it. `ModifyIndex`/`CreateIndex` are stamped by [`Tx`]
//!   as everywhere.
//! - [`Persistence::load`] is a range read of the prefix at one revision.
//! - [`Persistence::follow`] is the one structural change: each server watches the prefix from
//!   that revision and hands the transactions other servers commit to the store's [`Feed`],
//!   which applies them as if written here and wakes the blocking queries on their tables; a
//!   gap or a compaction reloads the whole prefix.
//!
//! Which server writes is `connect agent`'s business (`bin/connect/ha.rs`): one leader, elected
//! with an etcd lease, runs the server; the others forward to it.
//! Scale beyond that is the job of a real Consul cluster behind the HTTP backend
//! (ARCHITECTURE.md, Principles: scale elsewhere).

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
