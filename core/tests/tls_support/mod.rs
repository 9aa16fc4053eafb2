//! Shared set-up of the `tls_*` integration tests: a built-in CA on a manual clock (standing
//! at the real time, so OpenSSL and Python agree on validity) and identities it issues.

#![allow(dead_code, reason = "each test file uses a different part")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use connect_core::ca::{CaConfiguration, CaManager, SignPolicy, generate_leaf_request};
use connect_core::intentions::{
    DefaultPolicy, Intention, IntentionAction, IntentionIndex, SharedIntentionIndex,
};
use connect_core::tls::{Bundle, Connection, Identity, Listener, MtlsServer, Svid};
use connect_core::{ManualClock, SharedClock};
use serde_json::json;
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

/// Every I/O wait in these tests is bounded by this.
pub(crate) const IO: Duration = Duration::from_secs(5);

pub(crate) struct Mesh {
    pub(crate) ca: CaManager,
    pub(crate) manual: ManualClock,
    pub(crate) clock: SharedClock,
}

impl Mesh {
    pub(crate) fn new() -> Mesh {
        let manual = ManualClock::new(OffsetDateTime::now_utc());
        let clock: SharedClock = Arc::new(manual.clone());
        let cfg = CaConfiguration::consul(json!({}).as_object().cloned().unwrap_or_default());
        let ca = CaManager::new_primary("dc1", None, cfg, clock.clone()).unwrap();
        Mesh { ca, manual, clock }
    }

    pub(crate) fn uri(&self, service: &str) -> String {
        format!(
            "spiffe://{}/ns/default/dc/dc1/svc/{service}",
            self.ca.trust_domain()
        )
    }

    /// A fresh leaf (chain = leaf + the active root's intermediates) and its key.
    pub(crate) fn svid(&mut self, service: &str) -> Svid {
        let req = generate_leaf_request(&self.uri(service), &[], &[]).unwrap();
        let issued = self
            .ca
            .sign_leaf(&req.csr_pem, SignPolicy::ServiceOnly)
            .unwrap();
        Svid::from_issued(&issued, &req.key).unwrap()
    }

    /// Leaf and key PEM, as another TLS stack would load them.
    pub(crate) fn pem_pair(&mut self, service: &str) -> (String, String) {
        let req = generate_leaf_request(&self.uri(service), &[], &[]).unwrap();
        let issued = self
            .ca
            .sign_leaf(&req.csr_pem, SignPolicy::ServiceOnly)
            .unwrap();
        (issued.cert_pem, req.key.to_pem().to_string())
    }

    pub(crate) fn bundle(&self) -> Bundle {
        Bundle::from_ca_roots(&self.ca.roots()).unwrap()
    }

    /// An identity with the current roots and a fresh leaf.
    pub(crate) fn identity(&mut self, service: &str) -> Identity {
        let id = Identity::new(service, self.clock.clone());
        id.update_bundle(self.bundle()).unwrap();
        id.update_svid(self.svid(service)).unwrap();
        assert!(id.ready());
        id
    }

    /// Rotates the CA to a P-384 root, cross-signed by the old one.
    pub(crate) fn rotate(&mut self) {
        let cfg = CaConfiguration::consul(
            json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        self.ca.set_config(cfg).unwrap();
    }
}

/// `*` → `db` deny, `web` → `db` allow (ARCHITECTURE.md, Test habits).
pub(crate) fn db_intentions() -> SharedIntentionIndex {
    SharedIntentionIndex::new(IntentionIndex::new(
        [
            Intention::new("*", "db", IntentionAction::Deny),
            Intention::new("web", "db", IntentionAction::Allow),
        ],
        DefaultPolicy::ACLS_DISABLED,
    ))
}

/// Accepts one connection on a fresh port by `server`'s own `accept`, so that a test sees the
/// error the server itself ends with (a listener would only log and count it).
pub(crate) async fn accept_once(
    server: &MtlsServer,
) -> (SocketAddr, JoinHandle<connect_core::Result<Connection>>) {
    let raw = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = raw.local_addr().unwrap();
    let server = server.clone();
    let accept = tokio::spawn(async move {
        let (tcp, _) = raw.accept().await.unwrap();
        server.accept(tcp).await
    });
    (addr, accept)
}

/// Echoes every accepted connection until it ends.
pub(crate) fn echo(mut l: Listener) {
    tokio::spawn(async move {
        while let Ok(mut c) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf).await {
                    if n == 0 || c.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Writes `msg` on `c` and checks that the same bytes come back within [`IO`].
pub(crate) async fn round_trip(c: &mut Connection, msg: &[u8]) {
    c.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(IO, c.read_exact(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(buf, msg);
}

/// A built-in CA configuration with a P-384 key: applied over the default (P-256) one, it
/// rotates the root.
pub(crate) fn p384_ca() -> CaConfiguration {
    CaConfiguration::consul(
        json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384})
            .as_object()
            .cloned()
            .unwrap_or_default(),
    )
}

/// Polls `cond` every 10 ms for at most `limit`; panics with `what` when it never holds.
pub(crate) async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let waited = tokio::time::timeout(limit, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "not within {limit:?}: {what}");
}

/// `n` copies of one load task (a client loop of a rotation test) for `web` against `addr`,
/// sharing the counters in `load`.
pub(crate) fn spawn_load<L, F, Fut>(
    n: usize,
    web: &Identity,
    addr: SocketAddr,
    load: &Arc<L>,
    task: F,
) -> Vec<JoinHandle<()>>
where
    F: Fn(Identity, SocketAddr, Arc<L>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    (0..n)
        .map(|_| tokio::spawn(task(web.clone(), addr, Arc::clone(load))))
        .collect()
}
