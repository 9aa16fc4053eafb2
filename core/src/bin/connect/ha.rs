//! Several `connect agent -server`s of one datacenter on one etcd cluster (`store { etcd }`).
//!
//! The state lives in etcd ([`connect_core::state::EtcdPersistence`]); the servers elect one
//! leader with an etcd lease ([`Leadership::campaign`], TTL [`LEASE_TTL`]). The leader opens the
//! store and runs the whole server — API, CA manager, root pruning, TTL checks, federation —
//! as a single server does, with every commit fenced by its leader key. The others serve their
//! HTTP listener by forwarding every request to the leader's advertised HTTP address (Consul
//! forwards writes, and reads in its default consistency mode, to its leader too: Consul docs,
//! Consistency Modes); while there is no leader they answer `No cluster leader`, as Consul does.
//!
//! Why followers forward rather than write through the fenced transaction themselves: a
//! server keeps more than the store in memory (the CA manager with its serial reservations, the
//! ACL resolver, the intention index), built from the store when it starts; one process owning
//! all of it at a time keeps every rule exactly as in a single server. A follower's own etcd
//! transaction would be safe (the compare on `meta/index` serializes it with the leader's), but
//! its in-memory state would lag. When the leader dies, its lease expires within
//! [`LEASE_TTL`]; a follower wins, loads the state at one revision and serves. A leader that
//! loses its lease (cut off from etcd) exits: its fenced writes already fail, and the
//! supervisor restarts it as a follower.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use connect_core::http::client::{ApiClient, ClientConfig, HttpEndpoint};
use connect_core::state::{EtcdConfig, EtcdPersistence, EtcdTls, Kek, Leadership, Store};
use connect_core::{Error, ErrorKind};
use tokio::sync::watch;

use crate::AgentArgs;
use crate::config_file::AgentConfigFile;

/// The leader's lease: a new leader takes over within about this long after the old one dies.
pub(crate) const LEASE_TTL: Duration = Duration::from_secs(2);

/// The environment variable that may name the key-encryption key file.
const KEK_FILE_ENV: &str = "CONNECT_ETCD_KEK_FILE";

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidParameter, msg)
}

/// The etcd store's configuration from flags and files: `endpoints` already resolved, the
/// prefix defaulting to `/connect/<datacenter>`, the key-encryption key required.
pub(crate) fn etcd_config(
    args: &AgentArgs,
    file: &AgentConfigFile,
    endpoints: Vec<String>,
    datacenter: &str,
) -> Result<EtcdConfig, Error> {
    for e in &endpoints {
        if !(e.starts_with("http://") || e.starts_with("https://")) {
            return Err(invalid(format!(
                "store.etcd.endpoints: {e:?} is not an http:// or https:// URL"
            )));
        }
    }
    let e = &file.etcd;
    let kek_file: Option<PathBuf> = args
        .store_etcd_kek_file
        .clone()
        .or_else(|| std::env::var_os(KEK_FILE_ENV).map(PathBuf::from))
        .or(e.kek_file.clone());
    let Some(kek_file) = kek_file else {
        return Err(invalid(format!(
            "store.etcd: a key-encryption key is required (CA private keys and token secrets \
             are sealed with it in etcd): set store.etcd.kek_file, {KEK_FILE_ENV} or \
             -store-etcd-kek-file to a file made with `openssl rand -base64 32`"
        )));
    };
    let kek = Kek::from_file(&kek_file).map_err(|e| invalid(e.to_string()))?;
    let prefix = e
        .prefix
        .clone()
        .unwrap_or_else(|| format!("/connect/{datacenter}"));
    if !prefix.starts_with('/') {
        return Err(invalid(format!(
            "store.etcd.prefix: {prefix:?} must start with '/'"
        )));
    }
    let tls =
        (e.ca_file.is_some() || e.cert_file.is_some() || e.key_file.is_some()).then(|| EtcdTls {
            ca_file: e.ca_file.clone(),
            cert_file: e.cert_file.clone(),
            key_file: e.key_file.clone(),
        });
    Ok(EtcdConfig {
        endpoints,
        prefix,
        tls,
        kek,
    })
}

/// A server's part in the election, once it leads.
pub(crate) struct Elected {
    /// The store, opened when this server won (so its state is the latest).
    pub(crate) store: Store,
    elected: watch::Receiver<bool>,
    leadership: Leadership,
}

impl Elected {
    /// Resolves when this server is no longer the leader.
    pub(crate) async fn lost(&self) {
        let mut rx = self.elected.clone();
        let _ = rx.wait_for(|e| !*e).await;
    }

    /// Gives the leadership up at once (a clean shutdown), so that another server need not
    /// wait for the lease to expire.
    pub(crate) async fn resign(&self) {
        self.leadership.resign().await;
    }
}

/// A follower's view of the leader: a client of its advertised HTTP address.
pub(crate) type LeaderClient = watch::Receiver<Option<ApiClient>>;

/// Connects to etcd and campaigns; returns at once with the follower's view of the leader and
/// a future that resolves once this server leads.
pub(crate) async fn join(
    config: EtcdConfig,
    advertise: String,
) -> Result<(LeaderClient, impl Future<Output = Result<Elected, Error>>), Error> {
    let persistence = tokio::task::spawn_blocking(move || EtcdPersistence::open(config))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))??;
    let leadership = persistence.leadership();
    let (tx, elected) = watch::channel(false);
    {
        let leadership = leadership.clone();
        tokio::spawn(async move {
            leadership
                .campaign(
                    advertise,
                    LEASE_TTL,
                    move |e| {
                        let _ = tx.send(e);
                    },
                    std::future::pending(),
                )
                .await;
        });
    }
    let (leader_tx, leader_rx) = watch::channel(None);
    let mut won = elected.clone();
    let watcher = {
        let leadership = leadership.clone();
        tokio::spawn(async move {
            let mut current: Option<String> = None;
            loop {
                let l = leadership.clone();
                // A failed read (an etcd member just died) says nothing: keep what we have.
                let Ok(Ok(found)) = tokio::task::spawn_blocking(move || l.leader()).await else {
                    tokio::time::sleep(LEASE_TTL / 8).await;
                    continue;
                };
                let found = found.map(|(address, _)| address);
                if found != current {
                    tracing::info!(leader = ?found, "etcd: the datacenter's leader");
                    let client = found.as_ref().and_then(|a| {
                        ApiClient::new(&ClientConfig {
                            endpoint: HttpEndpoint::new(a.clone()),
                            ..ClientConfig::default()
                        })
                        .ok()
                    });
                    let _ = leader_tx.send(client);
                    current = found;
                }
                tokio::time::sleep(LEASE_TTL / 8).await;
            }
        })
    };
    let leads = async move {
        let _ = won.wait_for(|e| *e).await;
        watcher.abort();
        let store = tokio::task::spawn_blocking(move || Store::open(persistence))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))??;
        Ok(Elected {
            store,
            elected,
            leadership,
        })
    };
    Ok((leader_rx, leads))
}

/// The address followers forward to: the HTTP listener's, with the node address for an
/// unspecified IP.
pub(crate) fn advertise(http: SocketAddr, node_address: &str) -> String {
    if http.ip().is_unspecified() {
        format!("{node_address}:{}", http.port())
    } else {
        http.to_string()
    }
}
