//! The etcd persistence: several servers of one datacenter share one state in an etcd cluster
//! (layout, transaction and watch: [`EtcdPersistence`]).

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, TxnOp, WatchOptions,
};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode_str, utf8_percent_encode};
use serde::de::DeserializeOwned;
use tokio::runtime::{Handle, Runtime};
use zeroize::Zeroizing;

use super::sqlite::{RootRow, SecretsRow, json};
use super::store::Feed;
use super::{Op, Persistence, Snapshot, StateError, Table, Txn};

/// Characters escaped in a key segment: `/` separates segments, `%` escapes.
const SEGMENT: &AsciiSet = &CONTROLS.add(b'/').add(b'%');

/// The prefix of a sealed value.
const SEALED: &str = "lcsealed1:";

/// How long one etcd request may take before the commit or read fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The key-encryption key: AES-256-GCM, 32 bytes. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Kek {
    key: Arc<LessSafeKey>,
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

impl Kek {
    /// The key from its base64 text (32 bytes; `openssl rand -base64 32` makes one); `origin`
    /// names where the text came from in errors.
    pub fn from_base64(text: &str, origin: &str) -> Result<Kek, StateError> {
        let err = |message: String| StateError::Kek {
            path: origin.to_owned(),
            message,
        };
        let bytes = Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(text.trim())
                .map_err(|e| err(format!("not base64: {e}")))?,
        );
        if bytes.len() != 32 {
            return Err(err(format!(
                "{} bytes; an AES-256 key is 32 (make one with `openssl rand -base64 32`)",
                bytes.len()
            )));
        }
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| err("not an AES-256 key".to_owned()))?;
        Ok(Kek {
            key: Arc::new(LessSafeKey::new(key)),
        })
    }

    /// The key from a file holding its base64 text.
    pub fn from_file(path: &Path) -> Result<Kek, StateError> {
        let origin = path.display().to_string();
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| StateError::Kek {
            path: origin.clone(),
            message: e.to_string(),
        })?);
        Kek::from_base64(&text, &origin)
    }

    /// `plain` sealed for the etcd key `aad`.
    fn seal(&self, aad: &str, plain: &[u8]) -> Result<String, StateError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce)
            .map_err(|_| StateError::InvalidRow("no randomness for a nonce".to_owned()))?;
        let mut buf = Zeroizing::new(plain.to_vec());
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_bytes()),
                &mut *buf,
            )
            .map_err(|_| StateError::InvalidRow(format!("cannot seal {aad}")))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(format!(
            "{SEALED}{}",
            base64::engine::general_purpose::STANDARD.encode(out)
        ))
    }

    /// The plaintext of a value [`seal`](Self::seal)ed for `aad`.
    fn open(&self, aad: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StateError> {
        let err = || StateError::Decrypt {
            key: aad.to_owned(),
        };
        let body = sealed.strip_prefix(SEALED.as_bytes()).ok_or_else(err)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|_| err())?;
        if raw.len() < NONCE_LEN {
            return Err(err());
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| err())?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad.as_bytes()), &mut buf)
            .map_err(|_| err())?;
        Ok(Zeroizing::new(plain.to_vec()))
    }
}

/// Client certificates for mutual TLS to etcd (`https://` endpoints).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    /// The CA that signed the etcd members' certificates (PEM); without it, the system's
    /// roots are not consulted and the connection fails.
    pub ca_file: Option<PathBuf>,
    /// This server's client certificate (PEM), for etcd's `--client-cert-auth`.
    pub cert_file: Option<PathBuf>,
    /// Its private key (PEM).
    pub key_file: Option<PathBuf>,
}

/// Where the state lives in etcd and how to reach it.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of the etcd members, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// The key prefix of this datacenter's state, e.g. `/connect/dc1`; servers sharing it are
    /// one datacenter's replicas.
    pub prefix: String,
    /// TLS to etcd, for `https://` endpoints.
    pub tls: Option<EtcdTls>,
    /// Seals the values that hold secrets.
    pub kek: Kek,
}

/// The leader fence: the leader key's `create_revision` when this server won the campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fence {
    create_revision: i64,
}

/// What the persistence, its watch task and [`Leadership`] share.
struct Shared {
    client: Client,
    /// For error messages.
    endpoints: String,
    /// `<p>/state/`.
    state_prefix: String,
    /// `<p>/leader`.
    leader_key: String,
    kek: Kek,
    fence: Mutex<Option<Fence>>,
    /// The etcd revision [`Persistence::load`] read at; the watch starts after it.
    loaded_at: Mutex<i64>,
}

/// Persists the store in etcd, shared by the servers of one datacenter.
///
/// Layout under the configured prefix `<p>` (every key segment percent-encoded, so IDs holding
/// `/` stay one segment):
///
/// | key | value |
/// |---|---|
/// | `<p>/state/meta/index` | the store index of the last commit, decimal |
/// | `<p>/state/meta/table_index/<table>` | the index of the last commit to the table |
/// | `<p>/state/meta/ca_serial`, `…/acl_bootstrapped` | decimal, `0`/`1` |
/// | `<p>/state/ca_config/config` | `CaConfiguration` JSON, **sealed** |
/// | `<p>/state/ca_roots/all` | the list of roots, in order, with `RotatedOutAt` |
/// | `<p>/state/ca_secrets/builtin` | `{"PrivateKeyPEM", "CertPEM"}`, **sealed** |
/// | `<p>/state/intentions/<id>`, `…/acl_policies/<id>`, `…/nodes/<name>` | the row's JSON |
/// | `<p>/state/acl_tokens/<accessor>` | `Token` JSON, **sealed** |
/// | `<p>/state/services/<node>/<id>`, `…/checks/<node>/<id>` | the row's JSON |
/// | `<p>/leader` | the elected server's advertised address, under its lease (see [`Leadership`]) |
///
/// Rows are the same JSON as the SQLite persistence's. Sealed values — everything that holds a
/// secret: the CA's private key, the CA configuration (a Vault token), ACL token secrets — are
/// `lcsealed1:` and the base64 of a random 96-bit nonce, the AES-256-GCM ciphertext and its tag,
/// under the key-encryption key ([`Kek`]) from the server configuration, with the etcd key as
/// associated data (so a value copied to another key does not open).
///
/// A commit is one etcd transaction: `If(meta/index == <the store's index>)` (absent for the
/// first), and, for a leader's writes, `If(create_revision(<p>/leader) == <its campaign's>)`;
/// `Then(the puts and deletes, meta/index, meta/table_index/…)`. A second writer therefore
/// fails ([`StateError::Conflict`]) instead of interleaving, and a deposed leader fails
/// ([`StateError::NotLeader`]) even before it knows it was deposed — the fencing that etcd's
/// own locks lack. The store index is the store's own counter, committed in the same
/// transaction, not the etcd revision: it stays dense (one per write, as the memory and SQLite
/// stores give), and keys outside the prefix (the leader key, other datacenters) do not move it.
///
/// Every server follows the prefix with an etcd watch from the revision it loaded at: each
/// revision's events (etcd never splits one revision over two watch responses) are decoded
/// back into the transaction's ops and handed to the store's [`Feed`], which applies the ones
/// other servers committed and wakes the blocking queries on their tables. If the watch falls
/// behind a compaction, or the feed finds a gap, the server reloads the prefix at one revision.
///
/// etcd's client is async; this persistence runs it on a small runtime of its own, so that the
/// store's synchronous [`Persistence`] calls can wait for it from any thread (including a
/// runtime's, as the store's callers do for SQLite).
pub struct EtcdPersistence {
    shared: Arc<Shared>,
    handle: Handle,
    /// Taken on drop and shut down without waiting (dropping a runtime from async code would
    /// panic).
    runtime: Option<Runtime>,
}

impl fmt::Debug for EtcdPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdPersistence")
            .field("endpoints", &self.shared.endpoints)
            .field("state_prefix", &self.shared.state_prefix)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdPersistence {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl EtcdPersistence {
    /// Connects to the etcd cluster and checks that it answers.
    ///
    /// Errors: [`StateError::Etcd`] if no endpoint is given, a TLS file cannot be read, or the
    /// cluster does not answer within a few seconds.
    pub fn open(config: EtcdConfig) -> Result<EtcdPersistence, StateError> {
        let endpoints = config.endpoints.join(",");
        let err = |message: String| StateError::Etcd {
            endpoints: endpoints.clone(),
            message,
        };
        if config.endpoints.is_empty() {
            return Err(err("no endpoints configured".to_owned()));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd-client")
            .enable_all()
            .build()
            .map_err(|e| err(format!("cannot start the client's runtime: {e}")))?;
        let mut options = ConnectOptions::new()
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        if let Some(tls) = &config.tls {
            options = options.with_tls(tls_options(tls).map_err(&err)?);
        }
        let root = config.prefix.trim_end_matches('/');
        let handle = runtime.handle().clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let client_endpoints = config.endpoints.clone();
        handle.spawn(async move {
            let connected = async {
                let client = Client::connect(client_endpoints, Some(options)).await?;
                // Members that are still starting (or one that is down) are waited for.
                retry_unavailable(|| {
                    let mut client = client.clone();
                    async move { client.status().await }
                })
                .await?;
                Ok::<_, etcd_client::Error>(client)
            };
            let _ = tx.send(tokio::time::timeout(REQUEST_TIMEOUT * 2, connected).await);
        });
        let client = match rx.recv() {
            Ok(Ok(Ok(client))) => client,
            Ok(Ok(Err(e))) => return Err(err(e.to_string())),
            Ok(Err(_)) | Err(_) => return Err(err("no answer".to_owned())),
        };
        Ok(EtcdPersistence {
            shared: Arc::new(Shared {
                client,
                endpoints: endpoints.clone(),
                state_prefix: format!("{root}/state/"),
                leader_key: format!("{root}/leader"),
                kek: config.kek,
                fence: Mutex::new(None),
                loaded_at: Mutex::new(0),
            }),
            handle,
            runtime: Some(runtime),
        })
    }

    /// The handle through which this server campaigns for leadership and fences its writes.
    pub fn leadership(&self) -> Leadership {
        Leadership {
            shared: self.shared.clone(),
            handle: self.handle.clone(),
        }
    }

    /// Runs `fut` on the client's runtime and waits for it from this (any) thread.
    fn block<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StateError>> + Send + 'static,
    ) -> Result<T, StateError> {
        block_on(&self.handle, &self.shared.endpoints, fut)
    }
}

fn block_on<T: Send + 'static>(
    handle: &Handle,
    endpoints: &str,
    fut: impl Future<Output = Result<T, StateError>> + Send + 'static,
) -> Result<T, StateError> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    rx.recv().unwrap_or_else(|_| {
        Err(StateError::Etcd {
            endpoints: endpoints.to_owned(),
            message: "the etcd client stopped".to_owned(),
        })
    })
}

fn tls_options(tls: &EtcdTls) -> Result<etcd_client::TlsOptions, String> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| format!("TLS file {}: {e}", path.display()));
    let mut options = etcd_client::TlsOptions::new();
    if let Some(ca) = &tls.ca_file {
        options = options.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let key = Zeroizing::new(read(key)?);
            options = options.identity(etcd_client::Identity::from_pem(read(cert)?, &*key));
        }
        (None, None) => {}
        _ => return Err("TLS needs both cert_file and key_file, or neither".to_owned()),
    }
    Ok(options)
}

impl Persistence for EtcdPersistence {
    fn load(&self) -> Result<Snapshot, StateError> {
        let shared = self.shared.clone();
        let (snapshot, revision) = self.block(async move { shared.load().await })?;
        *self
            .shared
            .loaded_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = revision;
        Ok(snapshot)
    }

    fn commit(&self, txn: &Txn) -> Result<(), StateError> {
        let request = self.shared.commit_request(txn)?;
        let shared = self.shared.clone();
        self.block(async move { shared.commit(request).await })
    }

    fn follow(&self, feed: Feed) {
        let shared = self.shared.clone();
        let from = *self
            .shared
            .loaded_at
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            + 1;
        self.handle
            .spawn(async move { shared.follow(feed, from).await });
    }
}

/// A prepared commit: the transaction and what its compares were.
struct CommitRequest {
    txn: etcd_client::Txn,
    index: u64,
    fence: Option<Fence>,
}

/// What one key decodes to.
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived value per key read; boxing would only add an allocation"
)]
enum Row {
    Index(u64),
    /// `meta/table_index/*`: recomputed from the ops on a watch, read on load.
    TableIndex(Table, u64),
    Op(Op),
}

impl Shared {
    fn etcd_err(&self, e: impl fmt::Display) -> StateError {
        StateError::Etcd {
            endpoints: self.endpoints.clone(),
            message: e.to_string(),
        }
    }

    fn key(&self, segments: &[&str]) -> String {
        let mut key = self.state_prefix.clone();
        for (i, segment) in segments.iter().enumerate() {
            if i > 0 {
                key.push('/');
            }
            key.extend(utf8_percent_encode(segment, SEGMENT));
        }
        key
    }

    fn meta_key(&self, name: &str) -> String {
        self.key(&["meta", name])
    }

    /// The key and value (`None`: delete) one op writes.
    fn encode(&self, op: &Op) -> Result<(String, Option<String>), StateError> {
        let sealed = |key: String, plain: Zeroizing<String>| {
            let value = self.kek.seal(&key, plain.as_bytes())?;
            Ok((key, Some(value)))
        };
        let plain = |key: String, value: String| Ok((key, Some(value)));
        let t = |table: Table| table.name();
        match op {
            Op::SetCaConfig(c) => sealed(
                self.key(&[t(Table::CaConfig), "config"]),
                Zeroizing::new(json(c)?),
            ),
            Op::SetCaRoots(roots) => plain(
                self.key(&[t(Table::CaRoots), "all"]),
                json(&roots.iter().map(RootRow::new).collect::<Vec<_>>())?,
            ),
            Op::SetCaSecrets(s) => sealed(
                self.key(&[t(Table::CaSecrets), "builtin"]),
                Zeroizing::new(json(&SecretsRow::new(s))?),
            ),
            Op::SetCaSerial(n) => plain(self.meta_key("ca_serial"), n.to_string()),
            Op::PutIntention(i) => plain(self.key(&[t(Table::Intentions), &i.id]), json(i)?),
            Op::DeleteIntention { id } => Ok((self.key(&[t(Table::Intentions), id]), None)),
            Op::PutAclToken(tok) => sealed(
                self.key(&[t(Table::AclTokens), &tok.accessor_id]),
                Zeroizing::new(json(tok)?),
            ),
            Op::DeleteAclToken { accessor_id } => {
                Ok((self.key(&[t(Table::AclTokens), accessor_id]), None))
            }
            Op::PutAclPolicy(p) => plain(self.key(&[t(Table::AclPolicies), &p.id]), json(p)?),
            Op::DeleteAclPolicy { id } => Ok((self.key(&[t(Table::AclPolicies), id]), None)),
            Op::SetAclBootstrapped(b) => {
                plain(self.meta_key("acl_bootstrapped"), u64::from(*b).to_string())
            }
            Op::PutNode(n) => plain(self.key(&[t(Table::Nodes), &n.node]), json(n)?),
            Op::DeleteNode { node } => Ok((self.key(&[t(Table::Nodes), node]), None)),
            Op::PutService { node, service } => plain(
                self.key(&[t(Table::Services), node, &service.id]),
                json(service)?,
            ),
            Op::DeleteService { node, service_id } => {
                Ok((self.key(&[t(Table::Services), node, service_id]), None))
            }
            Op::PutCheck(c) => plain(
                self.key(&[t(Table::Checks), &c.node, &c.check_id]),
                json(c)?,
            ),
            Op::DeleteCheck { node, check_id } => {
                Ok((self.key(&[t(Table::Checks), node, check_id]), None))
            }
        }
    }

    /// Decodes one key under the state prefix; `value` is `None` for a delete. Keys this
    /// version does not know are skipped (`None`), so that a newer server's additions do not
    /// stop an older one from reading.
    fn decode(&self, key: &[u8], value: Option<&[u8]>) -> Result<Option<Row>, StateError> {
        let corrupt = |message: String| StateError::Corrupt {
            location: format!("etcd key {}", String::from_utf8_lossy(key)),
            message,
        };
        let Some(rest) = key.strip_prefix(self.state_prefix.as_bytes()) else {
            return Ok(None);
        };
        let rest = std::str::from_utf8(rest).map_err(|e| corrupt(e.to_string()))?;
        let segments = rest
            .split('/')
            .map(|s| percent_decode_str(s).decode_utf8().map(|s| s.into_owned()))
            .collect::<Result<Vec<String>, _>>()
            .map_err(|e| corrupt(e.to_string()))?;
        let full_key = String::from_utf8_lossy(key).into_owned();
        let number = |v: &[u8]| -> Result<u64, StateError> {
            std::str::from_utf8(v)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("not a decimal number".to_owned()))
        };
        let seg: Vec<&str> = segments.iter().map(String::as_str).collect();
        let decoded = match (seg.as_slice(), value) {
            (["meta", "index"], Some(v)) => Row::Index(number(v)?),
            (["meta", "table_index", name], Some(v)) => match Table::from_name(name) {
                Some(table) => Row::TableIndex(table, number(v)?),
                None => return Ok(None),
            },
            (["meta", "ca_serial"], Some(v)) => Row::Op(Op::SetCaSerial(number(v)?)),
            (["meta", "acl_bootstrapped"], Some(v)) => {
                Row::Op(Op::SetAclBootstrapped(number(v)? != 0))
            }
            (["ca_config", "config"], Some(v)) => {
                Row::Op(Op::SetCaConfig(self.open_json(&full_key, v)?))
            }
            (["ca_roots", "all"], Some(v)) => Row::Op(Op::SetCaRoots(
                from_json::<Vec<RootRow>>(&full_key, v)?
                    .into_iter()
                    .map(RootRow::into_root)
                    .collect(),
            )),
            (["ca_secrets", "builtin"], Some(v)) => Row::Op(Op::SetCaSecrets(
                self.open_json::<SecretsRow>(&full_key, v)?.into_secrets(),
            )),
            (["intentions", _], Some(v)) => Row::Op(Op::PutIntention(from_json(&full_key, v)?)),
            (["intentions", id], None) => Row::Op(Op::DeleteIntention {
                id: (*id).to_owned(),
            }),
            (["acl_tokens", _], Some(v)) => Row::Op(Op::PutAclToken(self.open_json(&full_key, v)?)),
            (["acl_tokens", id], None) => Row::Op(Op::DeleteAclToken {
                accessor_id: (*id).to_owned(),
            }),
            (["acl_policies", _], Some(v)) => Row::Op(Op::PutAclPolicy(from_json(&full_key, v)?)),
            (["acl_policies", id], None) => Row::Op(Op::DeleteAclPolicy {
                id: (*id).to_owned(),
            }),
            (["nodes", _], Some(v)) => Row::Op(Op::PutNode(from_json(&full_key, v)?)),
            (["nodes", node], None) => Row::Op(Op::DeleteNode {
                node: (*node).to_owned(),
            }),
            (["services", node, _], Some(v)) => Row::Op(Op::PutService {
                node: (*node).to_owned(),
                service: from_json(&full_key, v)?,
            }),
            (["services", node, id], None) => Row::Op(Op::DeleteService {
                node: (*node).to_owned(),
                service_id: (*id).to_owned(),
            }),
            (["checks", _, _], Some(v)) => Row::Op(Op::PutCheck(from_json(&full_key, v)?)),
            (["checks", node, id], None) => Row::Op(Op::DeleteCheck {
                node: (*node).to_owned(),
                check_id: (*id).to_owned(),
            }),
            _ => return Ok(None),
        };
        Ok(Some(decoded))
    }

    fn open_json<T: DeserializeOwned>(&self, key: &str, sealed: &[u8]) -> Result<T, StateError> {
        let plain = self.kek.open(key, sealed)?;
        from_json(key, &plain)
    }

    /// The whole state at one revision, and that revision.
    async fn load(&self) -> Result<(Snapshot, i64), StateError> {
        let response = retry_unavailable(|| {
            let mut kv = self.client.kv_client();
            let prefix = self.state_prefix.clone();
            async move { kv.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await
        .map_err(|e| self.etcd_err(e))?;
        let revision = response
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| self.etcd_err("a range response without a header"))?;
        let mut snapshot = Snapshot::default();
        for kv in response.kvs() {
            match self.decode(kv.key(), Some(kv.value()))? {
                Some(Row::Index(i)) => snapshot.index = i,
                Some(Row::TableIndex(t, i)) => {
                    snapshot.table_indexes.insert(t, i);
                }
                Some(Row::Op(op)) => add_to_snapshot(&mut snapshot, op),
                None => {}
            }
        }
        Ok((snapshot, revision))
    }

    fn commit_request(&self, txn: &Txn) -> Result<CommitRequest, StateError> {
        // etcd refuses a transaction that writes one key twice; the last write of a key is
        // its final state, so only that one is sent, in its place.
        let mut writes: BTreeMap<String, (usize, Option<String>)> = BTreeMap::new();
        for (position, op) in txn.ops.iter().enumerate() {
            let (key, value) = self.encode(op)?;
            writes.insert(key, (position, value));
        }
        let mut ordered: Vec<(String, (usize, Option<String>))> = writes.into_iter().collect();
        ordered.sort_by_key(|(_, (position, _))| *position);
        let mut ops: Vec<TxnOp> = ordered
            .into_iter()
            .map(|(key, (_, value))| match value {
                Some(v) => TxnOp::put(key, v, None),
                None => TxnOp::delete(key, None),
            })
            .collect();
        for table in txn.tables() {
            ops.push(TxnOp::put(
                self.key(&["meta", "table_index", table.name()]),
                txn.index.to_string(),
                None,
            ));
        }
        ops.push(TxnOp::put(
            self.meta_key("index"),
            txn.index.to_string(),
            None,
        ));
        let index_key = self.meta_key("index");
        let previous = txn.index.saturating_sub(1);
        // The empty store is at index 1 and has no meta/index key.
        let mut compares = vec![if previous <= 1 {
            Compare::version(index_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::value(index_key.clone(), CompareOp::Equal, previous.to_string())
        }];
        let fence = *self.fence.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = fence {
            compares.push(Compare::create_revision(
                self.leader_key.clone(),
                CompareOp::Equal,
                f.create_revision,
            ));
        }
        let txn_request = etcd_client::Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(vec![
                TxnOp::get(index_key, None),
                TxnOp::get(self.leader_key.clone(), None),
            ]);
        Ok(CommitRequest {
            txn: txn_request,
            index: txn.index,
            fence,
        })
    }

    async fn commit(&self, request: CommitRequest) -> Result<(), StateError> {
        let response = retry_unavailable(|| {
            let mut kv = self.client.kv_client();
            let txn = request.txn.clone();
            async move { kv.txn(txn).await }
        })
        .await
        .map_err(|e| self.etcd_err(e))?;
        if response.succeeded() {
            return Ok(());
        }
        // Which compare failed: the fence first, since a deposed leader must learn that.
        let mut found_index = None;
        let mut leader = None;
        for (i, op) in response.op_responses().into_iter().enumerate() {
            if let etcd_client::TxnOpResponse::Get(get) = op {
                let kv = get.kvs().first();
                if i == 0 {
                    found_index = kv.map(|kv| String::from_utf8_lossy(kv.value()).into_owned());
                } else {
                    leader = Some(kv.map(etcd_client::KeyValue::create_revision));
                }
            }
        }
        if let Some(fence) = request.fence
            && leader.flatten() != Some(fence.create_revision)
        {
            return Err(StateError::NotLeader(format!(
                "the leader key {} is no longer this server's (campaign revision {})",
                self.leader_key, fence.create_revision
            )));
        }
        Err(StateError::Conflict(format!(
            "committing index {} found the store at index {}",
            request.index,
            found_index.as_deref().unwrap_or("1")
        )))
    }

    /// Follows the prefix from `from`, handing other servers' commits to `feed`, until the
    /// store is dropped.
    async fn follow(self: Arc<Self>, feed: Feed, mut from: i64) {
        let mut watch = self.client.watch_client();
        let retry = Duration::from_millis(200);
        loop {
            let options = WatchOptions::new().with_prefix().with_start_revision(from);
            let mut stream = match watch
                .watch(self.state_prefix.as_bytes(), Some(options))
                .await
            {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::debug!(error = %e, "etcd watch: cannot start; retrying");
                    tokio::time::sleep(retry).await;
                    continue;
                }
            };
            let resync = loop {
                let response = match stream.message().await {
                    Ok(Some(r)) => r,
                    Ok(None) => break false,
                    Err(e) => {
                        tracing::debug!(error = %e, "etcd watch: stream ended; resuming");
                        break false;
                    }
                };
                if response.canceled() || response.compact_revision() > 0 {
                    break true;
                }
                // The feed takes the store's writer lock, which a commit holds while it waits
                // for this runtime: apply off the runtime's worker, or the two would deadlock.
                let applied = {
                    let (this, feed) = (self.clone(), feed.clone());
                    tokio::task::spawn_blocking(move || this.apply_events(&feed, response.events()))
                        .await
                        .unwrap_or_else(|e| Err(self.etcd_err(e)))
                };
                match applied {
                    Ok(Some(next)) => from = from.max(next),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "etcd watch: reloading the state");
                        break true;
                    }
                }
            };
            if resync {
                loop {
                    if feed.index().is_none() {
                        return;
                    }
                    match self.load().await {
                        Ok((snapshot, revision)) => {
                            let reloaded = {
                                let feed = feed.clone();
                                tokio::task::spawn_blocking(move || feed.reload(snapshot))
                                    .await
                                    .unwrap_or_else(|e| Err(self.etcd_err(e)))
                            };
                            match reloaded {
                                Ok(true) => {
                                    from = revision + 1;
                                    break;
                                }
                                Ok(false) => return,
                                Err(e) => {
                                    tracing::warn!(error = %e, "etcd: reloaded state refused");
                                }
                            }
                        }
                        Err(e) => tracing::debug!(error = %e, "etcd: reload failed; retrying"),
                    }
                    tokio::time::sleep(retry).await;
                }
            } else {
                tokio::time::sleep(retry).await;
            }
        }
    }

    /// Applies one watch response's events, a revision at a time; returns the revision to
    /// watch from next, or `None` once the store is gone.
    fn apply_events(
        &self,
        feed: &Feed,
        events: &[etcd_client::Event],
    ) -> Result<Option<i64>, StateError> {
        let mut next = 0;
        let mut i = 0;
        while i < events.len() {
            let Some(revision) = events[i].kv().map(etcd_client::KeyValue::mod_revision) else {
                i += 1;
                continue;
            };
            let mut txn = Txn {
                index: 0,
                ops: Vec::new(),
            };
            while let Some(kv) = events.get(i).and_then(etcd_client::Event::kv) {
                if kv.mod_revision() != revision {
                    break;
                }
                let value = match events[i].event_type() {
                    EventType::Put => Some(kv.value()),
                    EventType::Delete => None,
                };
                match self.decode(kv.key(), value)? {
                    Some(Row::Index(index)) => txn.index = index,
                    Some(Row::Op(op)) => txn.ops.push(op),
                    Some(Row::TableIndex(..)) | None => {}
                }
                i += 1;
            }
            if txn.index > 0 && !feed.apply(&txn)? {
                return Ok(None);
            }
            next = revision + 1;
        }
        Ok(Some(next))
    }
}

/// Runs an etcd request again while it fails without reaching a member (one just died, and
/// the client's balancer still tried it), for up to [`REQUEST_TIMEOUT`]. Safe for commits too:
/// a transaction that never reached etcd did nothing, and one that did would fail its compare
/// on a second try rather than apply twice.
async fn retry_unavailable<T, Fut>(
    mut request: impl FnMut() -> Fut,
) -> Result<T, etcd_client::Error>
where
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        match request().await {
            Err(e) if unreachable_member(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            result => return result,
        }
    }
}

/// gRPC's `UNAVAILABLE` (14), or a transport error: the request did not reach a member.
fn unreachable_member(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => i32::from(status.code()) == 14,
        etcd_client::Error::TransportError(_) => true,
        _ => false,
    }
}

fn from_json<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        location: format!("etcd key {key}"),
        message: e.to_string(),
    })
}

/// Adds the row an op puts to a snapshot being loaded (loads see only puts).
fn add_to_snapshot(s: &mut Snapshot, op: Op) {
    match op {
        Op::SetCaConfig(c) => s.ca_config = Some(c),
        Op::SetCaRoots(r) => s.ca_roots = r,
        Op::SetCaSecrets(x) => s.ca_secrets = Some(x),
        Op::SetCaSerial(n) => s.ca_serial = n,
        Op::PutIntention(i) => s.intentions.push(i),
        Op::PutAclToken(t) => s.acl_tokens.push(t),
        Op::PutAclPolicy(p) => s.acl_policies.push(p),
        Op::SetAclBootstrapped(b) => s.acl_bootstrapped = b,
        Op::PutNode(n) => s.nodes.push(n),
        Op::PutService { node, service } => s.services.push((node, service)),
        Op::PutCheck(c) => s.checks.push(c),
        Op::DeleteIntention { .. }
        | Op::DeleteAclToken { .. }
        | Op::DeleteAclPolicy { .. }
        | Op::DeleteNode { .. }
        | Op::DeleteService { .. }
        | Op::DeleteCheck { .. } => {}
    }
}

/// One server's part in electing the datacenter's leader, and the fence on its writes.
///
/// Clones share one campaign. Built by [`EtcdPersistence::leadership`].
#[derive(Clone)]
pub struct Leadership {
    shared: Arc<Shared>,
    handle: Handle,
}

impl fmt::Debug for Leadership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Leadership")
            .field("leader_key", &self.shared.leader_key)
            .field("fence", &self.fence())
            .finish_non_exhaustive()
    }
}

impl Leadership {
    /// The `create_revision` this server's writes are fenced with, while it leads.
    pub fn fence(&self) -> Option<i64> {
        self.shared
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .map(|f| f.create_revision)
    }

    /// Fences every later commit of this server with the leader key's `create_revision`, or
    /// (with `None`) stops fencing. [`campaign`](Self::campaign) sets it and never clears it.
    pub fn set_fence(&self, create_revision: Option<i64>) {
        *self
            .shared
            .fence
            .lock()
            .unwrap_or_else(PoisonError::into_inner) =
            create_revision.map(|r| Fence { create_revision: r });
    }

    /// The address the current leader advertises, and its key's `create_revision`; `None`
    /// while there is no leader.
    pub fn leader(&self) -> Result<Option<(String, i64)>, StateError> {
        let shared = self.shared.clone();
        block_on(&self.handle, &self.shared.endpoints, async move {
            let response = retry_unavailable(|| {
                let mut kv = shared.client.kv_client();
                let key = shared.leader_key.clone();
                async move { kv.get(key, None).await }
            })
            .await
            .map_err(|e| shared.etcd_err(e))?;
            Ok(response.kvs().first().map(|kv| {
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.create_revision(),
                )
            }))
        })
    }

    /// Campaigns until this server is the leader or `stop` resolves, then keeps the lease alive
    /// until it is lost or `stop` resolves; calls `on_change(true)` on winning (after fencing
    /// writes) and `on_change(false)` on losing. Runs on the caller's runtime; the etcd calls
    /// themselves run on the client's.
    ///
    /// Losing (or stopping) leaves the fence in place: the server's later writes still compare
    /// the revision it won with, and fail with [`StateError::NotLeader`] — a deposed leader
    /// must never write again, not even unfenced.
    ///
    /// The leader key is put only if absent (`create_revision == 0`), under a lease of `ttl`
    /// that this server keeps alive at a third of it: when the server dies or is cut off, the
    /// lease expires and another server's put succeeds within about `ttl`.
    pub async fn campaign(
        &self,
        advertise: String,
        ttl: Duration,
        mut on_change: impl FnMut(bool) + Send,
        stop: impl Future<Output = ()> + Send,
    ) {
        let this = self.clone();
        let campaign = async move {
            loop {
                match this.win(&advertise, ttl).await {
                    Ok(Some((lease, revision))) => {
                        this.set_fence(Some(revision));
                        tracing::info!(revision, "etcd: this server is the leader");
                        on_change(true);
                        this.hold(lease, ttl).await;
                        tracing::warn!("etcd: this server lost the leadership");
                        on_change(false);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "etcd campaign: retrying"),
                }
                tokio::time::sleep(ttl / 6).await;
            }
        };
        tokio::select! {
            () = campaign => {}
            () = stop => {}
        }
    }

    /// One attempt: grants a lease and puts the leader key if it is absent. Returns the lease
    /// and the key's `create_revision` on winning.
    async fn win(&self, advertise: &str, ttl: Duration) -> Result<Option<(i64, i64)>, StateError> {
        let shared = self.shared.clone();
        let advertise = advertise.to_owned();
        self.spawn(async move {
            let mut client = shared.client.clone();
            let current = client
                .get(shared.leader_key.as_bytes(), None)
                .await
                .map_err(|e| shared.etcd_err(e))?;
            if !current.kvs().is_empty() {
                return Ok(None);
            }
            let ttl_secs = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
            let lease = client
                .lease_grant(ttl_secs, None)
                .await
                .map_err(|e| shared.etcd_err(e))?
                .id();
            let put = etcd_client::Txn::new()
                .when(vec![Compare::create_revision(
                    shared.leader_key.clone(),
                    CompareOp::Equal,
                    0,
                )])
                .and_then(vec![TxnOp::put(
                    shared.leader_key.clone(),
                    advertise,
                    Some(etcd_client::PutOptions::new().with_lease(lease)),
                )]);
            let response = client.txn(put).await.map_err(|e| shared.etcd_err(e))?;
            if !response.succeeded() {
                let _ = client.lease_revoke(lease).await;
                return Ok(None);
            }
            let revision = response
                .header()
                .map_or(0, etcd_client::ResponseHeader::revision);
            Ok(Some((lease, revision)))
        })
        .await
    }

    /// Keeps the lease alive until etcd says it is gone or no keep-alive got through for its
    /// whole TTL. A failed keep-alive stream (an etcd member died under it) is opened again:
    /// leadership is lost only when the lease may have expired.
    async fn hold(&self, lease: i64, ttl: Duration) {
        let shared = self.shared.clone();
        let _ = self
            .spawn(async move {
                let mut client = shared.client.clone();
                let now = tokio::time::Instant::now;
                let mut deadline = now() + ttl;
                while now() < deadline {
                    let Ok((mut keeper, mut responses)) = client.lease_keep_alive(lease).await
                    else {
                        tokio::time::sleep(ttl / 10).await;
                        continue;
                    };
                    while now() < deadline {
                        let sent = tokio::time::timeout(ttl / 3, async {
                            keeper.keep_alive().await?;
                            responses.message().await
                        })
                        .await;
                        match sent {
                            Ok(Ok(Some(r))) if r.ttl() > 0 => {
                                let granted = u64::try_from(r.ttl()).unwrap_or(0);
                                deadline = now() + Duration::from_secs(granted).min(ttl);
                            }
                            // etcd answered: the lease is gone.
                            Ok(Ok(Some(_))) => return Ok::<(), StateError>(()),
                            // The stream broke or stalled: open another.
                            Ok(Ok(None) | Err(_)) | Err(_) => break,
                        }
                        tokio::time::sleep(ttl / 3).await;
                    }
                }
                Ok(())
            })
            .await;
    }

    /// Gives the leadership up: revokes the lease (deleting the key) if this server holds it.
    /// The fence stays: this server's writes fail from now on.
    pub async fn resign(&self) {
        let shared = self.shared.clone();
        let _ = self
            .spawn(async move {
                let mut client = shared.client.clone();
                let current = client
                    .get(shared.leader_key.as_bytes(), None)
                    .await
                    .map_err(|e| shared.etcd_err(e))?;
                let fence = *shared.fence.lock().unwrap_or_else(PoisonError::into_inner);
                if let (Some(kv), Some(f)) = (current.kvs().first(), fence)
                    && kv.create_revision() == f.create_revision
                {
                    let _ = client.lease_revoke(kv.lease()).await;
                }
                Ok(())
            })
            .await;
    }

    /// Runs `fut` on the client's runtime and awaits it from the caller's; dropping the
    /// returned future stops it (a campaign that is stopped stops keeping its lease alive).
    async fn spawn<T: Send + 'static>(
        &self,
        fut: impl Future<Output = Result<T, StateError>> + Send + 'static,
    ) -> Result<T, StateError> {
        let mut task = AbortOnDrop(self.handle.spawn(fut));
        (&mut task.0)
            .await
            .unwrap_or_else(|e| Err(self.shared.etcd_err(e)))
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
