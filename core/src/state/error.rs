//! The error type of the state store.

use crate::ErrorKind;
use crate::catalog::CatalogError;

/// Why a state-store operation failed.
///
/// Persistence failures say which file and why, so that an operator can act on them without
/// reading code; a corrupt or foreign database is reported as such, never as a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The data directory or a file in it could not be created, opened or secured.
    #[error("{path}: {message}")]
    Io {
        /// The directory or file.
        path: String,
        /// The operating system's message.
        message: String,
    },
    /// The persisted state is not a libconnect state database, or part of it does not decode.
    #[error("{location} is corrupt or not a libconnect state database: {message}")]
    Corrupt {
        /// The database file, or `snapshot` for state handed over by a [`Persistence`].
        ///
        /// [`Persistence`]: super::Persistence
        location: String,
        /// What did not decode.
        message: String,
    },
    /// The database was written by a newer libconnect with a schema this one cannot read.
    #[error(
        "state database {path} has schema version {found}; this libconnect reads version {supported}"
    )]
    UnsupportedSchema {
        /// The database file.
        path: String,
        /// The version found.
        found: i64,
        /// The version this build reads and writes.
        supported: i64,
    },
    /// Another process (or another store in this one) has the database open.
    #[error("state database {path} is in use by another process")]
    Locked {
        /// The database file.
        path: String,
    },
    /// The database refused a read or write (disk full, I/O error, …); nothing was committed.
    #[error("state database {path}: {message}")]
    Database {
        /// The database file.
        path: String,
        /// SQLite's message.
        message: String,
    },
    /// The etcd cluster could not be reached or refused a request; nothing was committed (or,
    /// for a commit whose answer was lost, the caller cannot know and should read again).
    #[error("etcd ({endpoints}): {message}")]
    Etcd {
        /// The endpoints configured.
        endpoints: String,
        /// The client's or server's message.
        message: String,
    },
    /// Another server sharing the store committed first; nothing was committed. The store
    /// catches up from the other server's commit, after which the write can be retried.
    #[error("state changed on another server; retry: {0}")]
    Conflict(String),
    /// This server wrote as the leader but no longer is: another server holds the leader key
    /// (Consul docs: Consensus Protocol — only the leader writes). Nothing was committed.
    #[error("not the leader: {0}")]
    NotLeader(String),
    /// The key-encryption key is missing, unreadable or not 32 bytes of base64.
    #[error("key-encryption key {path}: {message}")]
    Kek {
        /// The key file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A value stored encrypted does not decrypt with this key-encryption key: a wrong key, or
    /// a value moved to another key.
    #[error("{key} does not decrypt with the configured key-encryption key")]
    Decrypt {
        /// The etcd key of the value.
        key: String,
    },
    /// The row to change or delete does not exist; the message is Consul's where it has one.
    #[error("{0}")]
    NotFound(String),
    /// A row cannot be stored as given, e.g. an intention without an ID.
    #[error("{0}")]
    InvalidRow(String),
    /// A service registration was rejected.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
}

impl StateError {
    /// The stable category.
    pub fn kind(&self) -> ErrorKind {
        match self {
            StateError::Io { .. }
            | StateError::Corrupt { .. }
            | StateError::UnsupportedSchema { .. }
            | StateError::Locked { .. }
            | StateError::Database { .. }
            | StateError::Etcd { .. }
            | StateError::Conflict(_)
            | StateError::NotLeader(_)
            | StateError::Decrypt { .. } => ErrorKind::Io,
            StateError::Kek { .. } => ErrorKind::InvalidParameter,
            StateError::NotFound(_) => ErrorKind::NotFound,
            StateError::InvalidRow(_) => ErrorKind::InvalidParameter,
            StateError::Catalog(e) => e.kind(),
        }
    }
}

/// State errors surface through the crate error with their kind and message; `Error` has no
/// state variant of its own.
impl From<StateError> for crate::Error {
    fn from(e: StateError) -> Self {
        crate::Error::new(e.kind(), e.to_string())
    }
}
