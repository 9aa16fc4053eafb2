//! Where committed transactions go: the [`Persistence`] trait and the in-memory one.

use std::fmt::Debug;

use super::{Snapshot, StateError, Txn, store::Feed};

/// Durable storage under a [`Store`](super::Store).
///
/// The store keeps the whole state in memory and serves every read from there; a persistence
/// only has to record committed transactions and give the state back at start. The store calls
/// [`commit`](Self::commit) from one writer at a time, in index order.
pub trait Persistence: Send + Sync + Debug + 'static {
    /// The state as of the last committed transaction, or [`Snapshot::default`] for a new
    /// store. Called once, when the store opens.
    fn load(&self) -> Result<Snapshot, StateError>;

    /// Records `txn` atomically and durably: when this returns `Ok`, the transaction survives a
    /// crash or power loss; when it returns an error, none of it was recorded, and the store
    /// discards it too.
    fn commit(&self, txn: &Txn) -> Result<(), StateError>;

    /// For a persistence that other servers write to as well (etcd): starts handing their
    /// committed transactions to `feed`, so that this store sees them and wakes its blocking
    /// queries. Called once, right after [`load`](Self::load). A persistence only this store
    /// writes to has nothing to follow, which is the default.
    fn follow(&self, feed: Feed) {
        drop(feed);
    }
}

/// Keeps nothing: for `connect agent -dev` and tests, where state ends with the process.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemoryPersistence;

impl Persistence for MemoryPersistence {
    fn load(&self) -> Result<Snapshot, StateError> {
        Ok(Snapshot::default())
    }

    fn commit(&self, _txn: &Txn) -> Result<(), StateError> {
        Ok(())
    }
}
