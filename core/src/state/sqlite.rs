//! The SQLite persistence: one database file in the data directory.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use zeroize::Zeroizing;

use crate::ca::{BuiltinSecrets, CaRoot};

use super::{Op, Persistence, Snapshot, StateError, Table, Txn};

/// The version of the layout below; bumped on any incompatible change.
const SCHEMA_VERSION: i64 = 1;

/// Tables keyed by one ID. Table names are [`Table::name`]s.
const KEYED_TABLES: &[&str] = &[
    "ca_config",
    "ca_secrets",
    "intentions",
    "acl_tokens",
    "acl_policies",
    "nodes",
];

/// Tables keyed by node and ID: service and check IDs are only unique on their node.
const NODE_TABLES: &[&str] = &["services", "checks"];

/// The key of the single row of `ca_config`.
const CA_CONFIG_ROW: &str = "config";
/// The key of the single row of `ca_secrets`.
const CA_SECRETS_ROW: &str = "builtin";

/// Persists the store in `<data dir>/state.db`, a SQLite database in WAL mode with
/// `synchronous=FULL`, so a commit is on disk before the store acknowledges the write.
///
/// Layout (schema version 1):
///
/// | table | key | row |
/// |---|---|---|
/// | `meta` | `key` | integer `value`: `schema_version`, `index`, `ca_serial`, `acl_bootstrapped` (0/1), `table_index.<table>` |
/// | `ca_config` | `id` = `config` | `CaConfiguration` JSON |
/// | `ca_roots` | `id` = root ID, `position` | `CaRoot` JSON plus `RotatedOutAt` |
/// | `ca_secrets` | `id` = `builtin` | `{"PrivateKeyPEM", "CertPEM"}` |
/// | `intentions` | `id` = intention ID | `Intention` JSON |
/// | `acl_tokens` | `id` = AccessorID | `Token` JSON |
/// | `acl_policies` | `id` = policy ID | `Policy` JSON |
/// | `nodes` | `id` = node name | `Node` JSON |
/// | `services` | `node`, `id` = service ID | `AgentService` JSON |
/// | `checks` | `node`, `id` = check ID | `HealthCheck` JSON |
///
/// Rows are Consul's JSON so that the file can be inspected with the `sqlite3` shell and read
/// by any tool that knows Consul's API.
///
/// The database holds the CA's private key, so the data directory is made mode 0700 and the
/// database (with its `-wal` file) mode 0600, set explicitly rather than left to the umask. The
/// database is opened with an exclusive lock, held until the persistence is dropped: a second
/// process on the same directory would otherwise keep its own copy of the state in memory and
/// the two would overwrite each other.
#[derive(Debug)]
pub struct SqlitePersistence {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl SqlitePersistence {
    /// The database's file name in the data directory.
    pub const FILE_NAME: &'static str = "state.db";

    /// Opens (or creates) the database in `data_dir`, creating the directory if needed.
    ///
    /// Errors: [`StateError::Io`] if the directory or file cannot be created or secured,
    /// [`StateError::Locked`] if another store has it open, [`StateError::Corrupt`] if the
    /// file is not a SQLite database or not libconnect's, [`StateError::UnsupportedSchema`] if
    /// a newer libconnect wrote it.
    pub fn open(data_dir: &Path) -> Result<SqlitePersistence, StateError> {
        secure_dir(data_dir)?;
        let path = data_dir.join(Self::FILE_NAME);
        secure_file(&path, true)?;
        let err = |e| map_err(&path, e);
        let mut conn = Connection::open(&path).map_err(err)?;
        // Fail at once rather than wait: the only other holder of the lock is another store,
        // which never lets go.
        conn.busy_timeout(Duration::ZERO).map_err(err)?;
        // Exclusive mode also keeps WAL's shared-memory index in the process (no `-shm` file).
        let _: String = conn
            .query_row("PRAGMA locking_mode = EXCLUSIVE", [], |r| r.get(0))
            .map_err(err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StateError::Database {
                path: path.display().to_string(),
                message: format!("cannot switch to WAL journal mode (got {mode:?})"),
            });
        }
        conn.execute_batch("PRAGMA synchronous = FULL")
            .map_err(err)?;
        init_schema(&mut conn, &path)?;
        // SQLite gives the WAL file the database's mode; make sure of it anyway.
        for suffix in ["-wal", "-shm"] {
            secure_file(&sibling(&path, suffix), false)?;
        }
        Ok(SqlitePersistence {
            path,
            conn: Mutex::new(conn),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic mid-commit drops the SQLite transaction, which rolls back; the connection
        // itself is still sound.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn err(&self, e: rusqlite::Error) -> StateError {
        map_err(&self.path, e)
    }

    fn corrupt(&self, message: String) -> StateError {
        StateError::Corrupt {
            location: self.path.display().to_string(),
            message,
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        table: &str,
        key: &str,
        json: &str,
    ) -> Result<T, StateError> {
        serde_json::from_str(json)
            .map_err(|e| self.corrupt(format!("table {table}, row {key:?}: {e}")))
    }

    fn keyed_rows<T: DeserializeOwned>(
        &self,
        conn: &Connection,
        table: &str,
    ) -> Result<Vec<T>, StateError> {
        let mut stmt = conn
            .prepare(&format!("SELECT id, json FROM {table} ORDER BY id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    Zeroizing::new(r.get::<_, String>(1)?),
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.map(|row| {
            let (key, json) = row.map_err(|e| self.err(e))?;
            self.decode(table, &key, &json)
        })
        .collect()
    }

    fn node_rows<T: DeserializeOwned>(
        &self,
        conn: &Connection,
        table: &str,
    ) -> Result<Vec<(String, T)>, StateError> {
        let mut stmt = conn
            .prepare(&format!(
                "SELECT node, id, json FROM {table} ORDER BY node, id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        rows.map(|row| {
            let (node, key, json) = row.map_err(|e| self.err(e))?;
            Ok((
                node.clone(),
                self.decode(table, &format!("{node}/{key}"), &json)?,
            ))
        })
        .collect()
    }
}

impl Persistence for SqlitePersistence {
    fn load(&self) -> Result<Snapshot, StateError> {
        let conn = self.conn();
        let meta: HashMap<String, i64> = {
            let mut stmt = conn
                .prepare("SELECT key, value FROM meta")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(|e| self.err(e))?;
            rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?
        };
        let counter = |key: &str| -> Result<u64, StateError> {
            let value = meta.get(key).copied().unwrap_or(0);
            u64::try_from(value)
                .map_err(|_| self.corrupt(format!("meta {key:?} is negative ({value})")))
        };
        let mut table_indexes = std::collections::BTreeMap::new();
        for table in Table::ALL {
            let key = format!("table_index.{}", table.name());
            if meta.contains_key(&key) {
                table_indexes.insert(*table, counter(&key)?);
            }
        }
        let ca_roots = {
            let mut stmt = conn
                .prepare("SELECT id, json FROM ca_roots ORDER BY position")
                .map_err(|e| self.err(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(|e| self.err(e))?;
            rows.map(|row| {
                let (key, json) = row.map_err(|e| self.err(e))?;
                let row: RootRow = self.decode("ca_roots", &key, &json)?;
                Ok(row.into_root())
            })
            .collect::<Result<Vec<_>, StateError>>()?
        };
        let ca_secrets = self
            .keyed_rows::<SecretsRow>(&conn, "ca_secrets")?
            .into_iter()
            .next()
            .map(SecretsRow::into_secrets);
        Ok(Snapshot {
            index: counter("index")?,
            table_indexes,
            ca_config: self.keyed_rows(&conn, "ca_config")?.into_iter().next(),
            ca_roots,
            ca_secrets,
            ca_serial: counter("ca_serial")?,
            intentions: self.keyed_rows(&conn, "intentions")?,
            acl_tokens: self.keyed_rows(&conn, "acl_tokens")?,
            acl_policies: self.keyed_rows(&conn, "acl_policies")?,
            acl_bootstrapped: counter("acl_bootstrapped")? != 0,
            nodes: self.keyed_rows(&conn, "nodes")?,
            services: self.node_rows(&conn, "services")?,
            checks: self
                .node_rows(&conn, "checks")?
                .into_iter()
                .map(|(_, c)| c)
                .collect(),
        })
    }

    fn commit(&self, txn: &Txn) -> Result<(), StateError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|e| self.err(e))?;
        for op in &txn.ops {
            self.write_op(&tx, op)?;
        }
        set_meta(&tx, "index", txn.index).map_err(|e| self.err(e))?;
        for table in txn.tables() {
            set_meta(&tx, &format!("table_index.{}", table.name()), txn.index)
                .map_err(|e| self.err(e))?;
        }
        // With WAL and synchronous=FULL, the commit returns after the WAL is synced.
        tx.commit().map_err(|e| self.err(e))
    }
}

impl SqlitePersistence {
    fn write_op(&self, tx: &Transaction<'_>, op: &Op) -> Result<(), StateError> {
        let result = match op {
            Op::SetCaConfig(config) => put(tx, "ca_config", CA_CONFIG_ROW, &json(config)?),
            Op::SetCaRoots(roots) => {
                tx.execute("DELETE FROM ca_roots", [])
                    .map_err(|e| self.err(e))?;
                for (position, root) in roots.iter().enumerate() {
                    let row = RootRow::new(root);
                    tx.execute(
                        "INSERT INTO ca_roots (id, position, json) VALUES (?1, ?2, ?3)",
                        params![root.id, to_int(position as u64)?, json(&row)?],
                    )
                    .map_err(|e| self.err(e))?;
                }
                Ok(0)
            }
            Op::SetCaSecrets(secrets) => {
                let row = Zeroizing::new(json(&SecretsRow::new(secrets))?);
                put(tx, "ca_secrets", CA_SECRETS_ROW, &row)
            }
            Op::SetCaSerial(last) => set_meta(tx, "ca_serial", *last),
            Op::PutIntention(i) => put(tx, "intentions", &i.id, &json(i)?),
            Op::DeleteIntention { id } => delete(tx, "intentions", id),
            Op::PutAclToken(t) => put(tx, "acl_tokens", &t.accessor_id, &json(t)?),
            Op::DeleteAclToken { accessor_id } => delete(tx, "acl_tokens", accessor_id),
            Op::PutAclPolicy(p) => put(tx, "acl_policies", &p.id, &json(p)?),
            Op::DeleteAclPolicy { id } => delete(tx, "acl_policies", id),
            Op::SetAclBootstrapped(b) => set_meta(tx, "acl_bootstrapped", u64::from(*b)),
            Op::PutNode(n) => put(tx, "nodes", &n.node, &json(n)?),
            Op::DeleteNode { node } => delete(tx, "nodes", node),
            Op::PutService { node, service } => {
                put_scoped(tx, "services", node, &service.id, &json(service)?)
            }
            Op::DeleteService { node, service_id } => {
                delete_scoped(tx, "services", node, service_id)
            }
            Op::PutCheck(c) => put_scoped(tx, "checks", &c.node, &c.check_id, &json(c)?),
            Op::DeleteCheck { node, check_id } => delete_scoped(tx, "checks", node, check_id),
        };
        result.map(drop).map_err(|e| self.err(e))
    }
}

pub(super) fn json<T: Serialize>(row: &T) -> Result<String, StateError> {
    serde_json::to_string(row)
        .map_err(|e| StateError::InvalidRow(format!("cannot encode a row as JSON: {e}")))
}

/// A CA root row: `CaRoot` leaves `rotated_out_at` out of its (API) JSON, but pruning needs it
/// after a restart. The etcd persistence stores the same rows.
#[derive(Serialize, Deserialize)]
pub(super) struct RootRow {
    #[serde(flatten)]
    root: CaRoot,
    #[serde(
        rename = "RotatedOutAt",
        default,
        with = "time::serde::rfc3339::option"
    )]
    rotated_out_at: Option<OffsetDateTime>,
}

impl RootRow {
    pub(super) fn new(root: &CaRoot) -> RootRow {
        RootRow {
            root: root.clone(),
            rotated_out_at: root.rotated_out_at,
        }
    }

    pub(super) fn into_root(self) -> CaRoot {
        let mut root = self.root;
        root.rotated_out_at = self.rotated_out_at;
        root
    }
}

/// `BuiltinSecrets` has no serde form of its own, on purpose; this is the one place it is
/// written down (for SQLite and etcd alike).
#[derive(Serialize, Deserialize)]
pub(super) struct SecretsRow {
    #[serde(rename = "PrivateKeyPEM")]
    private_key_pem: String,
    #[serde(rename = "CertPEM")]
    cert_pem: String,
}

impl SecretsRow {
    pub(super) fn new(secrets: &BuiltinSecrets) -> SecretsRow {
        SecretsRow {
            private_key_pem: secrets.private_key_pem.clone(),
            cert_pem: secrets.cert_pem.clone(),
        }
    }

    pub(super) fn into_secrets(self) -> BuiltinSecrets {
        BuiltinSecrets {
            private_key_pem: self.private_key_pem,
            cert_pem: self.cert_pem,
        }
    }
}

fn init_schema(conn: &mut Connection, path: &Path) -> Result<(), StateError> {
    let err = |e| map_err(path, e);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err)?;
    let existing: Vec<String> = {
        let mut stmt = tx
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .map_err(err)?;
        let names = stmt.query_map([], |r| r.get(0)).map_err(err)?;
        names.collect::<Result<_, _>>().map_err(err)?
    };
    if !existing.is_empty() && !existing.iter().any(|t| t == "meta") {
        return Err(StateError::Corrupt {
            location: path.display().to_string(),
            message: format!(
                "it has tables {} but no libconnect meta table",
                existing.join(", ")
            ),
        });
    }
    let mut ddl = String::from(
        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS ca_roots (id TEXT PRIMARY KEY NOT NULL,
             position INTEGER NOT NULL, json TEXT NOT NULL);",
    );
    for table in KEYED_TABLES {
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (id TEXT PRIMARY KEY NOT NULL, json TEXT NOT NULL);"
        ));
    }
    for table in NODE_TABLES {
        ddl.push_str(&format!(
            "CREATE TABLE IF NOT EXISTS {table} (node TEXT NOT NULL, id TEXT NOT NULL,
                 json TEXT NOT NULL, PRIMARY KEY (node, id));"
        ));
    }
    tx.execute_batch(&ddl).map_err(err)?;
    let version: Option<i64> = tx
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .optional()
        .map_err(err)?;
    match version {
        None => {
            tx.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION],
            )
            .map_err(err)?;
        }
        Some(SCHEMA_VERSION) => {}
        Some(found) if found > SCHEMA_VERSION => {
            return Err(StateError::UnsupportedSchema {
                path: path.display().to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        Some(found) => {
            return Err(StateError::Corrupt {
                location: path.display().to_string(),
                message: format!("schema version {found} was never written by libconnect"),
            });
        }
    }
    tx.commit().map_err(err)
}

fn put(tx: &Transaction<'_>, table: &str, id: &str, json: &str) -> rusqlite::Result<usize> {
    tx.execute(
        &format!("INSERT OR REPLACE INTO {table} (id, json) VALUES (?1, ?2)"),
        params![id, json],
    )
}

fn delete(tx: &Transaction<'_>, table: &str, id: &str) -> rusqlite::Result<usize> {
    tx.execute(&format!("DELETE FROM {table} WHERE id = ?1"), params![id])
}

fn put_scoped(
    tx: &Transaction<'_>,
    table: &str,
    node: &str,
    id: &str,
    json: &str,
) -> rusqlite::Result<usize> {
    tx.execute(
        &format!("INSERT OR REPLACE INTO {table} (node, id, json) VALUES (?1, ?2, ?3)"),
        params![node, id, json],
    )
}

fn delete_scoped(
    tx: &Transaction<'_>,
    table: &str,
    node: &str,
    id: &str,
) -> rusqlite::Result<usize> {
    tx.execute(
        &format!("DELETE FROM {table} WHERE node = ?1 AND id = ?2"),
        params![node, id],
    )
}

fn set_meta(tx: &Transaction<'_>, key: &str, value: u64) -> rusqlite::Result<usize> {
    let value =
        i64::try_from(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )
}

fn to_int(value: u64) -> Result<i64, StateError> {
    i64::try_from(value)
        .map_err(|_| StateError::InvalidRow(format!("{value} does not fit SQLite's integers")))
}

/// Classifies SQLite failures: what an operator must act on differently gets its own variant.
fn map_err(path: &Path, e: rusqlite::Error) -> StateError {
    let path = path.display().to_string();
    match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt) => StateError::Corrupt {
            location: path,
            message: e.to_string(),
        },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StateError::Locked { path },
        _ => StateError::Database {
            path,
            message: e.to_string(),
        },
    }
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> StateError {
    StateError::Io {
        path: path.display().to_string(),
        message: format!("{what}: {e}"),
    }
}

/// Creates the data directory owner-only (0700). An existing directory keeps its mode: it is
/// the operator's (`-data-dir /tmp` must not turn `/tmp` into a private directory), and what
/// needs protecting, the database holding the CA's private key, is 0600 by itself. A warning
/// says when others may list or enter the directory.
fn secure_dir(dir: &Path) -> Result<(), StateError> {
    if let Ok(meta) = fs::metadata(dir) {
        if !meta.is_dir() {
            return Err(io_err(
                dir,
                "cannot use data directory",
                std::io::Error::other("not a directory"),
            ));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            tracing::warn!(
                data_dir = %dir.display(),
                mode = format!("{mode:o}"),
                "data directory is accessible by other users; its state files are kept 0600"
            );
        }
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io_err(dir, "cannot create data directory", e))?;
    // The umask may have narrowed the mode further, never widened it; make it exact.
    fs::set_permissions(dir, Permissions::from_mode(0o700))
        .map_err(|e| io_err(dir, "cannot restrict data directory to its owner", e))
}

/// Makes `path` owner-read/write only (0600). With `create`, creates it empty first — with that
/// mode from the start, so there is no moment when it is readable by others.
fn secure_file(path: &Path, create: bool) -> Result<(), StateError> {
    if create {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|e| io_err(path, "cannot create state database", e))?;
    } else if !path.exists() {
        return Ok(());
    }
    fs::set_permissions(path, Permissions::from_mode(0o600))
        .map_err(|e| io_err(path, "cannot restrict state database to its owner", e))
}

fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_pragmas_are_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let p = SqlitePersistence::open(dir.path()).unwrap();
        let conn = p.conn();
        let pragma = |name: &str| -> String {
            conn.query_row(&format!("PRAGMA {name}"), [], |r| {
                r.get::<_, rusqlite::types::Value>(0)
            })
            .map(|v| match v {
                rusqlite::types::Value::Integer(i) => i.to_string(),
                rusqlite::types::Value::Text(t) => t,
                other => format!("{other:?}"),
            })
            .unwrap()
        };
        assert_eq!(pragma("journal_mode"), "wal");
        assert_eq!(pragma("synchronous"), "2", "FULL");
        assert_eq!(pragma("locking_mode"), "exclusive");
        assert_eq!(p.path(), dir.path().join("state.db"));
    }
}
