//! CA federation between datacenters (Consul CA docs, secondary datacenters; Consul docs: WAN
//! federation).
//!
//! The primary signs a secondary's intermediate on
//! [`SIGN_INTERMEDIATE_PATH`] (`operator:write`, the secondary's replication token). The
//! secondary ([`PrimaryClient`], [`run_secondary`]) reaches the primary's HTTPS API only if
//! it presents `spiffe://<td>/agent/server/dc/<primary>` chained to the primary's roots —
//! first the roots of a configured file, then the roots it watches — and presents its own
//! server certificate once it has one. Its CA key is made and kept in the secondary: only
//! the CSR travels. It then signs leaves locally, watches the primary's roots with a
//! blocking query, and gets a new intermediate when the primary's active root changes or
//! the current one is half way through its life.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Server;
use crate::ca::IndexedCaRoots;
use crate::certs::{self, CertInfo};
use crate::http::client::{ApiClient, ClientConfig, HttpEndpoint, blocking_query};
use crate::intentions::Intention;
use crate::spiffe::SpiffeId;
use crate::state::Indexed;
use crate::tls::{Bundle, ClientCertSlot, SharedBundle, server_client_config};
use crate::{Error, ErrorKind, SharedClock};

/// The primary's endpoint that signs a secondary's intermediate CSR (Consul has an internal
/// RPC, `ConnectCA.SignIntermediate`, instead). `POST` (or `PUT`) a
/// [`SignIntermediateRequest`]; the answer is a [`SignIntermediateResponse`].
pub const SIGN_INTERMEDIATE_PATH: &str = "/v1/internal/connect/ca/sign-intermediate";

/// The largest body [`SIGN_INTERMEDIATE_PATH`] reads: a CSR for the largest key libconnect
/// makes (RSA 4096) is under 2 KiB.
pub const MAX_SIGN_INTERMEDIATE_BODY: usize = 16 * 1024;

/// How many other datacenters a server remembers (a bound, since names come from requests).
const MAX_DATACENTERS: usize = 256;

/// How long one blocking query on the primary's roots waits.
const ROOTS_WAIT: Duration = Duration::from_secs(60);
/// First and largest pause between failed attempts to reach the primary. Consul goes up to
/// 256 s; a secondary here converges within seconds of the primary's return instead, at
/// the price of one small request every few seconds during an outage.
const BACKOFF_MIN: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(8);
/// How often the loop re-checks the intermediate's age when the primary is quiet.
const RENEW_CHECK: Duration = Duration::from_secs(3600);

/// What a secondary datacenter's server needs to reach the primary.
#[derive(Clone)]
pub struct FederationConfig {
    /// The primary servers' HTTPS addresses (`host:port` or `https://…`), tried in order
    /// (Consul's `retry_join_wan`).
    pub primary_addresses: Vec<String>,
    /// The replication token (`acl.tokens.replication`): `operator:write` in the primary.
    pub replication_token: Option<String>,
    /// PEM of the primary's CA root(s), trusted for the first contact (no trust on first
    /// use); from then on the roots the primary answers are trusted.
    pub primary_ca_pem: String,
}

impl fmt::Debug for FederationConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FederationConfig")
            .field("primary_addresses", &self.primary_addresses)
            .field(
                "replication_token",
                &self.replication_token.as_ref().map(|_| "<redacted>"),
            )
            .finish_non_exhaustive()
    }
}

/// The body of [`SIGN_INTERMEDIATE_PATH`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignIntermediateRequest {
    /// The secondary's intermediate CSR, PEM.
    #[serde(rename = "CSR")]
    pub csr: String,
    /// The secondary's datacenter (remembered for `/v1/catalog/datacenters`).
    #[serde(rename = "Datacenter", default)]
    pub datacenter: String,
}

/// The answer of [`SIGN_INTERMEDIATE_PATH`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SignIntermediateResponse {
    /// The signed intermediate, PEM.
    #[serde(rename = "IntermediatePEM")]
    pub intermediate_pem: String,
}

/// Datacenter names as Consul accepts them: letters, digits, `-`, `_`, at most 64.
fn valid_datacenter(dc: &str) -> bool {
    !dc.is_empty()
        && dc.len() <= 64
        && dc
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

impl Server {
    /// What a secondary's call may name as its datacenter (signing its intermediate,
    /// advertising its address): a valid name, and not this primary's own.
    fn check_secondary_name(&self, dc: &str) -> Result<(), Error> {
        if !valid_datacenter(dc) {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("Datacenter {dc:?} is invalid: use letters, digits, '-' and '_'"),
            ));
        }
        if dc == self.datacenter() {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("datacenter {dc:?} is this (primary) datacenter, not a secondary"),
            ));
        }
        Ok(())
    }

    /// Primary: [`Server::sign_intermediate`] for a secondary datacenter's request, which is
    /// then remembered as a datacenter of this federation.
    pub fn sign_intermediate_for(
        &self,
        token: Option<&str>,
        req: &SignIntermediateRequest,
    ) -> Result<SignIntermediateResponse, Error> {
        self.authorizer(token)?
            .require(crate::acl::Permission::OperatorWrite)?;
        self.check_secondary_name(&req.datacenter)?;
        let intermediate_pem = self.sign_intermediate(token, &req.csr)?;
        self.note_datacenter(&req.datacenter);
        Ok(SignIntermediateResponse { intermediate_pem })
    }

    /// Remembers another datacenter of the federation (bounded; invalid names ignored).
    pub fn note_datacenter(&self, dc: &str) {
        if !valid_datacenter(dc) || dc == self.datacenter() {
            return;
        }
        let mut known = self
            .inner
            .datacenters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if known.len() < MAX_DATACENTERS {
            known.insert(dc.to_owned());
        }
    }

    /// The datacenters this server knows (`/v1/catalog/datacenters`): its own first, then
    /// the primary and the others it has heard from, sorted. A primary learns a secondary
    /// when the secondary asks it to sign an intermediate (at its first start, on every
    /// root rotation and intermediate renewal). This is kept in memory only: Consul learns
    /// datacenters from WAN gossip, which libconnect does not have.
    pub fn datacenters(&self) -> Vec<String> {
        let own = self.datacenter().to_owned();
        let mut others: BTreeSet<String> = self
            .inner
            .datacenters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(p) = &self.config().primary_datacenter {
            others.insert(p.clone());
        }
        others.remove(&own);
        std::iter::once(own).chain(others).collect()
    }
}

impl Server {
    /// Intentions are written in the primary datacenter only: a secondary replicates them
    /// (see [`run_intention_replication`]), and a local write would be undone by the next
    /// replication pass.
    pub(super) fn check_intention_writes(&self) -> Result<(), Error> {
        match &self.config().primary_datacenter {
            Some(p) if !self.config().is_primary() => Err(Error::new(
                ErrorKind::InvalidParameter,
                format!(
                    "intentions are written in the primary datacenter {p:?}; datacenter {:?} \
                     replicates them from there",
                    self.datacenter()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Secondary: makes the local intentions exactly `remote` (the primary's full list, as
    /// Consul's legacy intention replication does): local IDs the primary no longer has are
    /// deleted, and intentions new or changed in content are written, in one transaction.
    /// Returns (deleted, written).
    ///
    /// Errors: `InvalidIntention` (nothing applied) when an intention of the primary has no
    /// ID or does not validate.
    pub fn replicate_intentions(&self, remote: Vec<Intention>) -> Result<(usize, usize), Error> {
        let mut wanted = std::collections::BTreeMap::new();
        for mut ixn in remote {
            if ixn.id.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidIntention,
                    "the primary datacenter sent an intention without an ID",
                ));
            }
            ixn.normalize();
            ixn.validate()?;
            wanted.insert(ixn.id.clone(), ixn);
        }
        // Indexes are each datacenter's own; content is everything else.
        let content = |i: &Intention| {
            let mut i = i.clone();
            i.create_index = 0;
            i.modify_index = 0;
            i
        };
        let counts = self
            .store()
            .write(|tx| {
                let gone: Vec<String> = tx
                    .intentions()
                    .filter(|l| !wanted.contains_key(&l.id))
                    .map(|l| l.id.clone())
                    .collect();
                for id in &gone {
                    tx.delete_intention(id)?;
                }
                let mut written = 0;
                for (id, r) in &wanted {
                    if tx.intention(id).is_some_and(|l| content(l) == content(r)) {
                        continue;
                    }
                    tx.put_intention(r.clone())?;
                    written += 1;
                }
                Ok::<_, Error>((gone.len(), written))
            })?
            .value;
        if counts != (0, 0) {
            self.rebuild_intentions();
        }
        Ok(counts)
    }
}

/// The trust domain a root certificate signs for: its one URI SAN is the CA's signing ID.
fn root_trust_domain(pem: &str) -> Result<String, Error> {
    let der = certs::parse_pem_certificates(pem)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::new(ErrorKind::InvalidCertificate, "no certificate"))?;
    let info = CertInfo::from_der(&der)?;
    let id = match info.uris.as_slice() {
        [uri] => SpiffeId::parse(uri).ok(),
        _ => None,
    };
    id.as_ref()
        .and_then(SpiffeId::as_signing)
        .map(|s| s.host())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidCertificate,
                "the primary's CA certificate has no Consul signing ID (spiffe://<cluster>.consul)",
            )
        })
}

/// A secondary's client of the primary datacenter's servers.
pub struct PrimaryClient {
    primary: String,
    datacenter: String,
    clients: Vec<ApiClient>,
    next: usize,
    roots: SharedBundle,
    client_cert: ClientCertSlot,
}

impl fmt::Debug for PrimaryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrimaryClient")
            .field("primary", &self.primary)
            .field("servers", &self.clients.len())
            .finish_non_exhaustive()
    }
}

impl PrimaryClient {
    /// A client of the servers of `primary`, for the secondary `datacenter`.
    ///
    /// Errors: `InvalidParameter` without an address or with a bad one,
    /// `InvalidCertificate` when the CA file holds no usable Consul root.
    pub fn new(
        primary: &str,
        datacenter: &str,
        config: &FederationConfig,
        clock: SharedClock,
    ) -> Result<PrimaryClient, Error> {
        if config.primary_addresses.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                "retry_join_wan: a secondary datacenter needs the primary's HTTPS address",
            ));
        }
        let td = root_trust_domain(&config.primary_ca_pem)?;
        let roots: SharedBundle = Arc::new(ArcSwap::from_pointee(Bundle::from_pem(
            &td,
            &config.primary_ca_pem,
        )?));
        let client_cert = ClientCertSlot::default();
        let mut clients = Vec::new();
        for address in &config.primary_addresses {
            let tls =
                server_client_config(roots.clone(), primary, clock.clone(), client_cert.clone())?;
            let client = ApiClient::with_tls(
                &ClientConfig {
                    endpoint: HttpEndpoint::new(address.clone()),
                    token: config.replication_token.clone(),
                    datacenter: None,
                },
                tls,
            )
            .map_err(|e| Error::new(e.kind(), format!("retry_join_wan {address:?}: {e}")))?;
            clients.push(client);
        }
        Ok(PrimaryClient {
            primary: primary.to_owned(),
            datacenter: datacenter.to_owned(),
            clients,
            next: 0,
            roots,
            client_cert,
        })
    }

    /// Another client of the same servers, sharing the trusted roots and the certificate it
    /// presents (one per background loop, since a call in flight holds the client).
    pub fn sibling(&self) -> PrimaryClient {
        PrimaryClient {
            primary: self.primary.clone(),
            datacenter: self.datacenter.clone(),
            clients: self.clients.clone(),
            next: 0,
            roots: self.roots.clone(),
            client_cert: self.client_cert.clone(),
        }
    }

    /// The primary's intentions (a blocking query from `min_index`), read with the
    /// replication token.
    pub async fn intentions(
        &mut self,
        min_index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<Intention>>, Error> {
        self.blocking_get("/v1/connect/intentions", min_index, wait)
            .await
    }

    /// A blocking read of `path` from the primary; a failure moves on to the next address.
    async fn blocking_get<T: DeserializeOwned>(
        &mut self,
        path: &str,
        min_index: u64,
        wait: Duration,
    ) -> Result<Indexed<T>, Error> {
        let got = self
            .client()
            .get::<T>(path, &blocking_query(min_index, wait))
            .await;
        if got.is_err() {
            self.fail_over();
        }
        got
    }

    /// Where this server's own certificate goes once it has one, to be presented to the
    /// primary.
    pub fn client_certificate(&self) -> ClientCertSlot {
        self.client_cert.clone()
    }

    /// Trusts `roots` (a resumed secondary's stored copy of the primary's roots, newer than
    /// the configured file after a rotation) for the next connections.
    ///
    /// Errors: `InvalidCertificate` when they hold no usable root.
    pub fn trust_roots(&self, roots: &IndexedCaRoots) -> Result<(), Error> {
        self.roots.store(Arc::new(Bundle::from_ca_roots(roots)?));
        Ok(())
    }

    /// The client of the primary address in use (the next one after a failure): e.g. for
    /// [`ApiClient::forward`], which sends a caller's request on unchanged so that the
    /// caller's token decides there.
    pub fn client(&self) -> &ApiClient {
        &self.clients[self.next % self.clients.len()]
    }

    /// After a failure, the next attempt goes to the next address.
    fn fail_over(&mut self) {
        self.next = (self.next + 1) % self.clients.len();
    }

    /// The primary's roots; with `min_index`, a blocking query. Roots that verified over the
    /// authenticated channel become the trusted roots for the next connections.
    pub async fn roots(
        &mut self,
        min_index: u64,
        wait: Duration,
    ) -> Result<Indexed<IndexedCaRoots>, Error> {
        let got: Indexed<IndexedCaRoots> = self
            .blocking_get("/v1/connect/ca/roots", min_index, wait)
            .await?;
        let td = self.roots.load().trust_domain().as_str().to_owned();
        if !got.value.trust_domain.eq_ignore_ascii_case(&td) {
            return Err(Error::new(
                ErrorKind::InvalidCertificate,
                format!(
                    "the primary answered roots for trust domain {:?}, expected {td:?}",
                    got.value.trust_domain
                ),
            ));
        }
        if got.value.active().is_none() {
            return Err(Error::new(
                ErrorKind::CaNotInitialized,
                "trust domain from primary datacenter is not initialized",
            ));
        }
        self.roots
            .store(Arc::new(Bundle::from_ca_roots(&got.value)?));
        Ok(got)
    }

    /// Has the primary sign `csr_pem` (the replication token authenticates the call).
    pub async fn sign_intermediate(&mut self, csr_pem: &str) -> Result<String, Error> {
        let req = SignIntermediateRequest {
            csr: csr_pem.to_owned(),
            datacenter: self.datacenter.clone(),
        };
        let got: Result<SignIntermediateResponse, Error> = self
            .client()
            .call(Method::POST, SIGN_INTERMEDIATE_PATH, &[], Some(&req))
            .await;
        match got {
            Ok(r) => Ok(r.intermediate_pem),
            Err(e) => {
                if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::Timeout) {
                    self.fail_over();
                }
                Err(e)
            }
        }
    }

    /// The primary's roots, retried with back-off until it answers; the first failure of an
    /// outage is logged, not every retry.
    pub async fn roots_when_reachable(&mut self) -> IndexedCaRoots {
        let mut outage = Outage::new(&self.primary);
        loop {
            match self.roots(0, Duration::ZERO).await {
                Ok(r) => {
                    outage.ended();
                    return r.value;
                }
                Err(e) => {
                    outage.failed(&e);
                    tokio::time::sleep(outage.backoff()).await;
                }
            }
        }
    }
}

/// One log line when the primary becomes unreachable, one when it is back, and the growing
/// pause in between.
struct Outage {
    primary: String,
    down: Option<std::time::Instant>,
    backoff: Duration,
}

impl Outage {
    fn new(primary: &str) -> Outage {
        Outage {
            primary: primary.to_owned(),
            down: None,
            backoff: BACKOFF_MIN,
        }
    }

    fn failed(&mut self, e: &Error) {
        if self.down.is_none() {
            self.down = Some(std::time::Instant::now());
            tracing::warn!(
                primary = %self.primary,
                error = %e,
                "primary datacenter is unreachable or refused us; this datacenter goes on \
                 from its own state (intermediate, replicated intentions), retrying with \
                 back-off (logged once per outage)"
            );
        } else {
            tracing::debug!(error = %e, "primary datacenter still unreachable");
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    fn ended(&mut self) {
        if let Some(since) = self.down.take() {
            tracing::info!(
                primary = %self.primary,
                outage_ms = since.elapsed().as_millis() as u64,
                "primary datacenter is reachable again"
            );
        }
        self.backoff = BACKOFF_MIN;
    }

    fn backoff(&self) -> Duration {
        self.backoff
    }

    /// Accounts for one blocking round against the primary (both replication loops): on
    /// success the next round blocks from the new index — reset to 0 when it went backwards,
    /// as Consul does for a restored primary; on failure, waits out the back-off.
    async fn account(&mut self, pass: Result<u64, Error>, index: &mut u64) {
        match pass {
            Ok(new_index) => {
                self.ended();
                *index = if new_index < *index { 0 } else { new_index };
            }
            Err(e) => {
                self.failed(&e);
                tokio::time::sleep(self.backoff()).await;
            }
        }
    }
}

/// Gets a new intermediate for `roots` from the primary and installs it.
async fn renew_intermediate(
    server: &Server,
    client: &mut PrimaryClient,
    roots: &IndexedCaRoots,
) -> Result<(), Error> {
    let s = server.clone();
    let csr = tokio::task::spawn_blocking(move || s.intermediate_csr())
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))??;
    let pem = client.sign_intermediate(&csr).await.map_err(|e| {
        Error::new(
            e.kind(),
            format!("Primary datacenter refused to sign our intermediate CA certificate: {e}"),
        )
    })?;
    let (s, r) = (server.clone(), roots.clone());
    tokio::task::spawn_blocking(move || s.install_intermediate(&pem, &r))
        .await
        .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))??;
    tracing::info!(
        active_root = %roots.active_root_id,
        "installed a new intermediate CA certificate signed by the primary datacenter"
    );
    Ok(())
}

/// One pass over the primary's current roots: a new intermediate when needed, else the
/// roots list followed.
async fn reconcile(
    server: &Server,
    client: &mut PrimaryClient,
    roots: &IndexedCaRoots,
) -> Result<(), Error> {
    if server.needs_intermediate(roots) {
        renew_intermediate(server, client, roots).await
    } else {
        let (s, r) = (server.clone(), roots.clone());
        tokio::task::spawn_blocking(move || s.sync_primary_roots(&r))
            .await
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))??;
        Ok(())
    }
}

/// The secondary's loop (Consul's secondary root watch and intermediate renewal): a blocking
/// query on the primary's roots; after every answer, a new intermediate when the active root
/// changed or the current one is past half its life. Failures are retried with back-off
/// and logged once per outage; signing goes on with the intermediate in hand. Runs until
/// the task is dropped.
pub async fn run_secondary(server: Server, mut client: PrimaryClient) {
    let mut outage = Outage::new(&client.primary);
    let mut index = 0;
    loop {
        // A fresh server has no intermediate yet: ask at once; otherwise wait for a change,
        // waking at least hourly to check the intermediate's age.
        let wait = if server.ca_ready() {
            ROOTS_WAIT.min(RENEW_CHECK)
        } else {
            Duration::ZERO
        };
        let min_index = if wait.is_zero() { 0 } else { index };
        let pass = async {
            let got = client.roots(min_index, wait).await?;
            reconcile(&server, &mut client, &got.value).await?;
            Ok::<_, Error>(got.index)
        }
        .await;
        server.note_replication(Replicated::Roots, pass.as_ref().copied());
        outage.account(pass, &mut index).await;
    }
}

/// The secondary's intention replication (Consul's legacy `replicateIntentions`): a blocking
/// list of the primary's intentions with the replication token, applied by
/// [`Server::replicate_intentions`]; failures retried with back-off and logged once per
/// outage, while authorization goes on from the local copy. Runs until the task is dropped.
pub async fn run_intention_replication(server: Server, mut client: PrimaryClient) {
    let mut outage = Outage::new(&client.primary);
    let mut index = 0;
    loop {
        let pass = async {
            let got = client.intentions(index, ROOTS_WAIT).await?;
            let s = server.clone();
            let (deleted, written) =
                tokio::task::spawn_blocking(move || s.replicate_intentions(got.value))
                    .await
                    .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))??;
            if deleted + written > 0 {
                tracing::info!(deleted, written, "replicated intentions from the primary");
            }
            Ok::<_, Error>(got.index)
        }
        .await;
        server.note_replication(Replicated::Intentions, pass.as_ref().copied());
        outage.account(pass, &mut index).await;
    }
}

/// Which of a secondary's replication loops a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Replicated {
    /// The intention list ([`run_intention_replication`]).
    Intentions,
    /// The primary's roots and this datacenter's intermediate ([`run_secondary`]).
    Roots,
}

/// One replication loop's progress, with the fields Consul reports for its ACL replication
/// (Consul API docs, ACL: Check ACL Replication): the primary's index last applied, the time
/// of the last success and of the last failure (`null` when none yet), and that failure's
/// message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplicationProgress {
    /// The primary's `X-Consul-Index` of the last answer applied.
    #[serde(rename = "ReplicatedIndex")]
    pub replicated_index: u64,
    /// When a pass last succeeded.
    #[serde(rename = "LastSuccess", with = "time::serde::rfc3339::option")]
    pub last_success: Option<time::OffsetDateTime>,
    /// When a pass last failed.
    #[serde(rename = "LastError", with = "time::serde::rfc3339::option")]
    pub last_error: Option<time::OffsetDateTime>,
    /// What the last failure said (kept after a later success, as Consul does).
    #[serde(rename = "LastErrorMessage")]
    pub last_error_message: String,
}

/// Where a secondary's intermediate CA certificate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum IntermediateState {
    /// No intermediate and none asked for: leaves fail with `CaNotInitialized`.
    None,
    /// A key and CSR wait for the primary's signature: the first intermediate (leaves fail
    /// with `CaNotInitialized` until it comes) or a replacement after a primary rotation or at
    /// half life (leaves go on from the current one).
    Waiting,
    /// Installed for the primary's active root, nothing asked for.
    Active,
}

/// A secondary's intermediate: its state, the active root it chains to and when it expires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IntermediateStatus {
    /// none, waiting or active.
    #[serde(rename = "Status")]
    pub state: IntermediateState,
    /// The active root's ID in this datacenter's roots.
    #[serde(rename = "ActiveRootID")]
    pub active_root_id: String,
    /// The signing key ID of the intermediate in use (empty without one).
    #[serde(rename = "SigningKeyID")]
    pub signing_key_id: String,
    /// The intermediate's NotAfter (`null` without one).
    #[serde(rename = "NotAfter", with = "time::serde::rfc3339::option")]
    pub not_after: Option<time::OffsetDateTime>,
}

/// What `/v1/agent/self` reports under `Replication` (a libconnect field): in a secondary,
/// the progress of intention and roots replication from the primary and the intermediate's
/// state; in a primary, `Enabled: false` and nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplicationStatus {
    /// Whether this datacenter replicates from a primary (it is a secondary).
    #[serde(rename = "Enabled")]
    pub enabled: bool,
    /// The primary datacenter (empty in the primary).
    #[serde(rename = "SourceDatacenter")]
    pub source_datacenter: String,
    /// Intention replication.
    #[serde(rename = "Intentions", skip_serializing_if = "Option::is_none")]
    pub intentions: Option<ReplicationProgress>,
    /// The primary's roots (the blocking query and the intermediate requests it leads to).
    #[serde(rename = "Roots", skip_serializing_if = "Option::is_none")]
    pub roots: Option<ReplicationProgress>,
    /// This datacenter's intermediate CA certificate.
    #[serde(rename = "Intermediate", skip_serializing_if = "Option::is_none")]
    pub intermediate: Option<IntermediateStatus>,
}

/// A secondary's replication progress, kept by the server and written by the loops.
#[derive(Debug, Default)]
pub(super) struct ReplicationState {
    intentions: ReplicationProgress,
    roots: ReplicationProgress,
}

impl Server {
    /// Secondary: records the outcome of one replication pass (`Ok` with the primary's
    /// index). Times come from the server's clock.
    pub fn note_replication(&self, what: Replicated, outcome: Result<u64, &Error>) {
        let now = self.clock().now();
        let mut state = self
            .inner
            .replication
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let progress = match what {
            Replicated::Intentions => &mut state.intentions,
            Replicated::Roots => &mut state.roots,
        };
        match outcome {
            Ok(index) => {
                progress.replicated_index = index;
                progress.last_success = Some(now);
            }
            Err(e) => {
                progress.last_error = Some(now);
                progress.last_error_message = e.to_string();
            }
        }
    }

    /// This datacenter's replication status (see [`ReplicationStatus`]).
    pub fn replication_status(&self) -> ReplicationStatus {
        let config = self.config();
        if config.is_primary() {
            return ReplicationStatus {
                enabled: false,
                source_datacenter: String::new(),
                intentions: None,
                roots: None,
                intermediate: None,
            };
        }
        let (intentions, roots) = {
            let s = self
                .inner
                .replication
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (s.intentions.clone(), s.roots.clone())
        };
        ReplicationStatus {
            enabled: true,
            source_datacenter: config.primary_datacenter.clone().unwrap_or_default(),
            intentions: Some(intentions),
            roots: Some(roots),
            intermediate: Some(self.intermediate_status()),
        }
    }

    fn intermediate_status(&self) -> IntermediateStatus {
        let pending = self.ca().intermediate_pending();
        let ready = self.ca_ready();
        let roots = self.ca_roots().value;
        let active = roots.active();
        let signing_key_id = active.map(|a| a.signing_key_id.clone()).unwrap_or_default();
        // The intermediate in use is the one whose key signs: its subject key ID is the
        // active root's SigningKeyID in this datacenter's answer (else the last one added).
        let infos: Vec<CertInfo> = active
            .and_then(|a| a.intermediate_certs.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|pem| certs::parse_pem_certificate(pem).ok())
            .filter_map(|der| CertInfo::from_der(&der).ok())
            .collect();
        let not_after = infos
            .iter()
            .find(|info| {
                info.subject_key_id
                    .as_deref()
                    .is_some_and(|k| certs::colon_hex(k).eq_ignore_ascii_case(&signing_key_id))
            })
            .or(infos.last())
            .map(|info| info.not_after);
        let state = match (pending, ready) {
            (true, _) => IntermediateState::Waiting,
            (false, true) => IntermediateState::Active,
            (false, false) => IntermediateState::None,
        };
        IntermediateStatus {
            state,
            active_root_id: roots.active_root_id.clone(),
            signing_key_id: if ready { signing_key_id } else { String::new() },
            not_after: if ready { not_after } else { None },
        }
    }
}

/// The primary's endpoint where a secondary's server says where its HTTPS API answers, so
/// that the primary can forward `?dc=<secondary>` to it (Consul's servers learn each other's
/// addresses from WAN gossip, which libconnect does not have). `POST` (or `PUT`) an
/// [`AdvertiseRequest`] over HTTPS with the secondary's server certificate and a token with
/// `operator:write`.
pub const ADVERTISE_PATH: &str = "/v1/internal/federation/advertise";

/// How often a secondary repeats its [`ADVERTISE_PATH`] call (the primary keeps addresses in
/// memory only, so a restarted primary learns them again within this time).
const ADVERTISE_EVERY: Duration = Duration::from_secs(30);

/// The body of [`ADVERTISE_PATH`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdvertiseRequest {
    /// The secondary's datacenter.
    #[serde(rename = "Datacenter")]
    pub datacenter: String,
    /// Where its servers' HTTPS API answers, `IP:port`.
    #[serde(rename = "Address")]
    pub address: String,
}

impl Server {
    /// Primary: remembers where the servers of a secondary datacenter answer
    /// ([`ADVERTISE_PATH`]); the caller proved that it is one of them (the HTTP layer checks
    /// its server certificate). Calls to that address will again require the secondary's
    /// server identity.
    ///
    /// Returns whether the address is new for that datacenter.
    ///
    /// Errors: `PermissionDenied`/`AclNotFound` without `operator:write`; `InvalidParameter`
    /// for a bad datacenter name, this datacenter's own name, or an address that is not
    /// `IP:port`.
    pub fn advertise_for(
        &self,
        token: Option<&str>,
        req: &AdvertiseRequest,
    ) -> Result<bool, Error> {
        self.authorizer(token)?
            .require(crate::acl::Permission::OperatorWrite)?;
        self.check_secondary_name(&req.datacenter)?;
        let addr: std::net::SocketAddr = req.address.parse().map_err(|_| {
            Error::new(
                ErrorKind::InvalidParameter,
                format!("Address {:?} is not IP:port", req.address),
            )
        })?;
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("Address {:?} is not one to connect to", req.address),
            ));
        }
        let mut known = self
            .inner
            .server_addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut changed = false;
        if known.len() < MAX_DATACENTERS || known.contains_key(&req.datacenter) {
            let addr = addr.to_string();
            changed = known.get(&req.datacenter) != Some(&addr);
            known.insert(req.datacenter.clone(), addr);
        }
        drop(known);
        self.note_datacenter(&req.datacenter);
        Ok(changed)
    }

    /// Where the servers of datacenter `dc` answer, if they told this server
    /// ([`Server::advertise_for`]).
    pub fn server_address(&self, dc: &str) -> Option<String> {
        self.inner
            .server_addresses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(dc)
            .cloned()
    }
}

impl PrimaryClient {
    /// Tells the primary where this datacenter's servers answer ([`ADVERTISE_PATH`]).
    pub async fn advertise(&mut self, address: &str) -> Result<(), Error> {
        let req = AdvertiseRequest {
            datacenter: self.datacenter.clone(),
            address: address.to_owned(),
        };
        let got: Result<serde_json::Value, Error> = self
            .client()
            .call(Method::POST, ADVERTISE_PATH, &[], Some(&req))
            .await;
        if got.is_err() {
            self.fail_over();
        }
        got.map(|_| ())
    }
}

/// The secondary's advertisement loop: tells the primary where this datacenter's HTTPS API
/// answers at once and every 30 s, retrying with back-off and logging once per outage. Runs
/// until the task is dropped.
pub async fn run_advertise(mut client: PrimaryClient, address: String) {
    let mut outage = Outage::new(&client.primary);
    loop {
        match client.advertise(&address).await {
            Ok(()) => {
                outage.ended();
                tokio::time::sleep(ADVERTISE_EVERY).await;
            }
            Err(e) => {
                outage.failed(&e);
                tokio::time::sleep(outage.backoff()).await;
            }
        }
    }
}

/// A primary's clients of its secondaries' servers, for forwarding `?dc=<secondary>`: each
/// call goes to the address the secondary advertised, requires
/// `spiffe://<td>/agent/server/dc/<secondary>` chained to this datacenter's current roots,
/// and presents this server's own certificate once it has one.
pub struct SecondaryClients {
    server: Server,
    client_cert: ClientCertSlot,
    roots: std::sync::Mutex<Option<(u64, SharedBundle)>>,
    clients: std::sync::Mutex<std::collections::HashMap<String, (String, ApiClient)>>,
}

impl fmt::Debug for SecondaryClients {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecondaryClients").finish_non_exhaustive()
    }
}

impl SecondaryClients {
    /// Clients for `server` (a primary), presenting the certificate put in `client_cert`.
    pub fn new(server: Server, client_cert: ClientCertSlot) -> SecondaryClients {
        SecondaryClients {
            server,
            client_cert,
            roots: std::sync::Mutex::default(),
            clients: std::sync::Mutex::default(),
        }
    }

    /// This datacenter's roots as the bundle the clients verify with, updated when they change.
    fn roots(&self) -> Result<SharedBundle, Error> {
        let current = self.server.ca_roots();
        let mut cached = self
            .roots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((index, shared)) = &*cached
            && *index == current.index
        {
            return Ok(shared.clone());
        }
        let bundle = Arc::new(Bundle::from_ca_roots(&current.value)?);
        let shared = match cached.take() {
            Some((_, shared)) => {
                shared.store(bundle);
                shared
            }
            None => Arc::new(ArcSwap::from(bundle)),
        };
        *cached = Some((current.index, shared.clone()));
        Ok(shared)
    }

    fn client(&self, dc: &str) -> Result<Option<ApiClient>, Error> {
        let Some(address) = self.server.server_address(dc) else {
            return Ok(None);
        };
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, c)) = clients.get(dc)
            && *at == address
        {
            return Ok(Some(c.clone()));
        }
        let tls = server_client_config(
            self.roots()?,
            dc,
            self.server.clock().clone(),
            self.client_cert.clone(),
        )?;
        let client = ApiClient::with_tls(
            &ClientConfig {
                endpoint: HttpEndpoint::new(address.clone()),
                token: None,
                datacenter: None,
            },
            tls,
        )?;
        clients.insert(dc.to_owned(), (address, client.clone()));
        Ok(Some(client))
    }

    /// Forwards a caller's request to the servers of `dc` unchanged (the caller's token
    /// decides there); `None` when `dc` never advertised an address.
    pub async fn forward(
        &self,
        dc: &str,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Option<crate::http::client::Forwarded>, Error> {
        let Some(client) = self.client(dc)? else {
            return Ok(None);
        };
        self.roots()?;
        client
            .forward(method, path_and_query, headers, body, timeout)
            .await
            .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ca::generate_leaf_request;
    use crate::server::ServerConfig;
    use crate::tls::{PeerRole, verify_chain};
    use crate::{ManualClock, SharedClock};

    const ROOT: &str = "root-secret";

    fn clock() -> Arc<ManualClock> {
        Arc::new(ManualClock::new(
            time::macros::datetime!(2026-01-01 00:00:00 UTC),
        ))
    }

    fn primary(clock: SharedClock) -> Server {
        let mut c = ServerConfig::dev();
        c.acl_enabled = true;
        c.acl_default_policy = crate::acl::AclDefaultPolicy::Deny;
        c.acl_initial_management_token = Some(ROOT.into());
        Server::start(c, clock).unwrap()
    }

    fn secondary_config() -> ServerConfig {
        let mut c = ServerConfig::dev();
        c.datacenter = "dc2".into();
        c.primary_datacenter = Some("dc1".into());
        c
    }

    /// What `run_secondary` does in one pass, with the primary in process.
    fn join(primary: &Server, secondary: &Server) {
        let roots = primary.ca_roots().value;
        assert!(secondary.needs_intermediate(&roots));
        let csr = secondary.intermediate_csr().unwrap();
        let req = SignIntermediateRequest {
            csr,
            datacenter: "dc2".into(),
        };
        let signed = primary.sign_intermediate_for(Some(ROOT), &req).unwrap();
        secondary
            .install_intermediate(&signed.intermediate_pem, &roots)
            .unwrap();
        assert!(!secondary.needs_intermediate(&roots));
    }

    fn leaf_chain(server: &Server, service: &str) -> Result<Vec<Vec<u8>>, Error> {
        let uri = format!(
            "spiffe://{}/ns/default/dc/{}/svc/{service}",
            server.trust_domain(),
            server.datacenter()
        );
        let csr = generate_leaf_request(&uri, &[], &[]).unwrap().csr_pem;
        let issued = server.sign_local(&csr, crate::ca::SignPolicy::Local)?;
        Ok(certs::parse_pem_certificates(&issued.cert_pem)
            .unwrap()
            .into_iter()
            .map(|c| c.to_vec())
            .collect())
    }

    fn verifies_against(chain: &[Vec<u8>], root_pem: &str, td: &str, clock: &SharedClock) -> bool {
        let bundle = Bundle::from_pem(td, root_pem).unwrap();
        let chain: Vec<_> = chain
            .iter()
            .map(|c| rustls_pki_types::CertificateDer::from(c.clone()))
            .collect();
        verify_chain(&bundle, &chain, clock.now(), PeerRole::Client).is_ok()
    }

    fn active_root_pem(s: &Server) -> String {
        s.ca_roots().value.active().unwrap().root_cert.clone()
    }

    #[test]
    fn a_secondary_signs_only_once_the_primary_signed_its_intermediate() {
        let clock = clock();
        let shared: SharedClock = clock.clone();
        let p = primary(shared.clone());
        let s = Server::start_secondary(secondary_config(), shared.clone(), &p.ca_roots().value)
            .unwrap();
        assert!(!s.ca_ready());
        let err = leaf_chain(&s, "web").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CaNotInitialized, "{err}");

        join(&p, &s);
        assert!(s.ca_ready());
        let chain = leaf_chain(&s, "web").unwrap();
        assert_eq!(chain.len(), 2, "leaf and the secondary's intermediate");
        let td = p.trust_domain();
        assert!(verifies_against(&chain, &active_root_pem(&p), &td, &shared));
        assert!(!verifies_against(
            &chain[..1],
            &active_root_pem(&p),
            &td,
            &shared
        ));

        // The secondary answers the primary's roots with its own signing key.
        let (pr, sr) = (p.ca_roots().value, s.ca_roots().value);
        assert_eq!(pr.active_root_id, sr.active_root_id);
        assert_ne!(
            pr.active().unwrap().signing_key_id,
            sr.active().unwrap().signing_key_id
        );
        assert_eq!(p.datacenters(), ["dc1", "dc2"]);
        assert_eq!(s.datacenters(), ["dc2", "dc1"]);
    }

    #[test]
    fn the_replication_status_follows_the_loops_and_the_intermediate() {
        let clock = clock();
        let shared: SharedClock = clock.clone();
        let p = primary(shared.clone());
        let v = serde_json::to_value(p.replication_status()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"Enabled": false, "SourceDatacenter": ""})
        );

        let s = Server::start_secondary(secondary_config(), shared.clone(), &p.ca_roots().value)
            .unwrap();
        let st = s.replication_status();
        assert!(st.enabled);
        assert_eq!(st.source_datacenter, "dc1");
        assert_eq!(st.roots, Some(ReplicationProgress::default()));
        let i = st.intermediate.unwrap();
        assert_eq!(i.state, IntermediateState::None);
        assert_eq!((i.not_after, i.signing_key_id.as_str()), (None, ""));

        // A key and CSR made: waiting until the primary's signature is installed.
        let csr = s.intermediate_csr().unwrap();
        let waiting = s.replication_status().intermediate.unwrap();
        assert_eq!(waiting.state, IntermediateState::Waiting);
        assert_eq!(waiting.not_after, None, "nothing installed yet");
        let req = SignIntermediateRequest {
            csr,
            datacenter: "dc2".into(),
        };
        let signed = p.sign_intermediate_for(Some(ROOT), &req).unwrap();
        s.install_intermediate(&signed.intermediate_pem, &p.ca_roots().value)
            .unwrap();
        let i = s.replication_status().intermediate.unwrap();
        assert_eq!(i.state, IntermediateState::Active);
        let der = certs::parse_pem_certificate(&signed.intermediate_pem).unwrap();
        let expected = CertInfo::from_der(&der).unwrap().not_after;
        assert_eq!(i.not_after, Some(expected));
        assert_eq!(i.active_root_id, p.ca_roots().value.active_root_id);
        assert_eq!(
            i.signing_key_id,
            s.ca_roots().value.active().unwrap().signing_key_id
        );

        // A replacement asked for (as after a primary rotation): waiting, the current one
        // still reported.
        s.intermediate_csr().unwrap();
        let i = s.replication_status().intermediate.unwrap();
        assert_eq!(i.state, IntermediateState::Waiting);
        assert_eq!(i.not_after, Some(expected));

        // A pass's success sets the index and its time; a failure its time and message,
        // keeping the index; each loop has its own.
        let t0 = shared.now();
        s.note_replication(Replicated::Intentions, Ok(42));
        clock.advance(Duration::from_secs(5));
        let e = Error::new(ErrorKind::ConnectionRefused, "primary down");
        s.note_replication(Replicated::Intentions, Err(&e));
        let st = s.replication_status();
        let ixn = st.intentions.clone().unwrap();
        assert_eq!(ixn.replicated_index, 42);
        assert_eq!(ixn.last_success, Some(t0));
        assert_eq!(ixn.last_error, Some(t0 + Duration::from_secs(5)));
        assert!(ixn.last_error_message.contains("primary down"), "{ixn:?}");
        assert_eq!(st.roots, Some(ReplicationProgress::default()));
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["Intentions"]["LastSuccess"], "2026-01-01T00:00:00Z");
        assert_eq!(v["Intentions"]["LastError"], "2026-01-01T00:00:05Z");
        assert_eq!(v["Roots"]["LastSuccess"], serde_json::Value::Null);
        assert_eq!(v["Intermediate"]["Status"], "waiting");
    }

    #[test]
    fn a_primary_learns_where_a_secondary_answers() {
        let p = primary(clock());
        let req = |dc: &str, address: &str| AdvertiseRequest {
            datacenter: dc.into(),
            address: address.into(),
        };
        let err = p
            .advertise_for(None, &req("dc2", "127.0.0.1:8501"))
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PermissionDenied, "{err}");
        for (dc, address) in [
            ("dc1", "127.0.0.1:8501"),
            ("a.b", "127.0.0.1:8501"),
            ("dc2", "server.dc2.consul:8501"),
            ("dc2", "0.0.0.0:8501"),
            ("dc2", "127.0.0.1:0"),
        ] {
            let err = p.advertise_for(Some(ROOT), &req(dc, address)).unwrap_err();
            assert_eq!(
                err.kind(),
                ErrorKind::InvalidParameter,
                "{dc} {address}: {err}"
            );
        }
        assert_eq!(p.server_address("dc2"), None);
        p.advertise_for(Some(ROOT), &req("dc2", "127.0.0.1:8501"))
            .unwrap();
        p.advertise_for(Some(ROOT), &req("dc2", "[::1]:8502"))
            .unwrap();
        assert_eq!(p.server_address("dc2").as_deref(), Some("[::1]:8502"));
        assert_eq!(p.datacenters(), ["dc1", "dc2"]);
    }

    #[test]
    fn a_primary_rotation_and_half_life_call_for_a_new_intermediate() {
        let clock = clock();
        let shared: SharedClock = clock.clone();
        let p = primary(shared.clone());
        let s = Server::start_secondary(secondary_config(), shared.clone(), &p.ca_roots().value)
            .unwrap();
        join(&p, &s);
        let cfg = crate::ca::CaConfiguration::consul(
            serde_json::json!({"PrivateKeyType": "ec", "PrivateKeyBits": 384})
                .as_object()
                .cloned()
                .unwrap(),
        );
        p.set_ca_config(Some(ROOT), cfg).unwrap();
        let rotated = p.ca_roots().value;
        assert!(s.needs_intermediate(&rotated));
        // Until the new intermediate arrives, leaves still come from the old one.
        let old = leaf_chain(&s, "web").unwrap();
        join(&p, &s);
        let new = leaf_chain(&s, "web").unwrap();
        let td = p.trust_domain();
        assert!(verifies_against(&new, &active_root_pem(&p), &td, &shared));
        assert!(!verifies_against(&old, &active_root_pem(&p), &td, &shared));

        // Past half of the intermediate's year, renewal is due; not before.
        clock.advance(Duration::from_secs(150 * 86_400));
        assert!(!s.needs_intermediate(&p.ca_roots().value));
        clock.advance(Duration::from_secs(40 * 86_400));
        assert!(s.needs_intermediate(&p.ca_roots().value));
        join(&p, &s);
        assert!(!s.needs_intermediate(&p.ca_roots().value));
    }

    #[test]
    fn a_secondary_keeps_its_key_through_a_configuration_change() {
        let shared: SharedClock = clock();
        let p = primary(shared.clone());
        let s = Server::start_secondary(secondary_config(), shared, &p.ca_roots().value).unwrap();
        join(&p, &s);
        let cfg = |v: serde_json::Value| {
            crate::ca::CaConfiguration::consul(v.as_object().cloned().unwrap())
        };
        let err = s
            .set_ca_config(
                None,
                cfg(serde_json::json!({"PrivateKeyType": "rsa", "PrivateKeyBits": 2048})),
            )
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCaConfig, "{err}");
        assert!(err.to_string().contains("primary datacenter"), "{err}");
        s.set_ca_config(None, cfg(serde_json::json!({"LeafCertTTL": "48h"})))
            .unwrap();
        assert!(s.ca_ready());
        assert!(leaf_chain(&s, "web").is_ok());
    }

    #[test]
    fn signing_an_intermediate_needs_operator_write_and_a_secondary_name() {
        let p = primary(clock());
        let s = Server::start_secondary(secondary_config(), clock(), &p.ca_roots().value).unwrap();
        let csr = s.intermediate_csr().unwrap();
        let req = |dc: &str| SignIntermediateRequest {
            csr: csr.clone(),
            datacenter: dc.into(),
        };
        for (token, kind) in [
            (None, ErrorKind::PermissionDenied),
            (Some("nope"), ErrorKind::AclNotFound),
        ] {
            let err = p.sign_intermediate_for(token, &req("dc2")).unwrap_err();
            assert_eq!(err.kind(), kind, "{err}");
        }
        for dc in ["", "dc1", "a.b", &"x".repeat(65)] {
            let err = p.sign_intermediate_for(Some(ROOT), &req(dc)).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidParameter, "{dc:?}: {err}");
        }
        let bad = SignIntermediateRequest {
            csr: "not a csr".into(),
            datacenter: "dc2".into(),
        };
        assert!(p.sign_intermediate_for(Some(ROOT), &bad).is_err());
        // A secondary cannot sign intermediates for others.
        assert!(s.sign_intermediate_for(None, &req("dc3")).is_err());
        assert_eq!(p.datacenters(), ["dc1"], "refused requests teach nothing");
    }

    #[test]
    fn a_secondary_replicates_the_primarys_intentions_and_refuses_local_writes() {
        use crate::intentions::IntentionAction;
        let shared: SharedClock = clock();
        let p = primary(shared.clone());
        let mut c = secondary_config();
        c.default_intention_policy = None;
        c.acl_enabled = true;
        c.acl_default_policy = crate::acl::AclDefaultPolicy::Deny;
        c.acl_initial_management_token = Some(ROOT.into());
        let s = Server::start_secondary(c, shared, &p.ca_roots().value).unwrap();
        let allow = |src: &str, dst: &str| {
            p.intention_upsert_exact(
                Some(ROOT),
                src,
                dst,
                Intention::new(src, dst, IntentionAction::Allow),
            )
            .unwrap()
        };
        let web_db = allow("web", "db");
        allow("api", "db");
        let list = || p.intention_list(Some(ROOT), None).unwrap().value;
        assert_eq!(s.replicate_intentions(list()).unwrap(), (0, 2));
        assert!(s.intention_check(Some(ROOT), "web", "db").unwrap());
        assert_eq!(
            s.replicate_intentions(list()).unwrap(),
            (0, 0),
            "nothing changed"
        );
        let local = s.intention_get(Some(ROOT), &web_db.id).unwrap().value;
        assert_eq!(local.id, web_db.id, "IDs are the primary's");

        p.intention_delete(Some(ROOT), &web_db.id).unwrap();
        assert_eq!(s.replicate_intentions(list()).unwrap(), (1, 0));
        assert!(!s.intention_check(Some(ROOT), "web", "db").unwrap());
        assert!(s.intention_check(Some(ROOT), "api", "db").unwrap());

        let err = s
            .intention_upsert_exact(
                Some(ROOT),
                "x",
                "db",
                Intention::new("x", "db", IntentionAction::Allow),
            )
            .unwrap_err();
        assert!(err.to_string().contains("primary datacenter"), "{err}");
        let err = s
            .intention_delete_exact(Some(ROOT), "api", "db")
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParameter, "{err}");
        assert!(s.intention_check(Some(ROOT), "api", "db").unwrap());

        // A bad list changes nothing.
        let mut bad = list();
        bad.push(Intention::default());
        assert!(s.replicate_intentions(bad).is_err());
        assert!(s.intention_check(Some(ROOT), "api", "db").unwrap());
    }

    #[test]
    fn an_outage_is_noted_once_and_backs_off_up_to_the_cap() {
        let mut o = Outage::new("dc1");
        let e = Error::new(ErrorKind::ConnectionRefused, "refused");
        let mut pauses = Vec::new();
        for _ in 0..6 {
            o.failed(&e);
            pauses.push(o.backoff().as_secs());
        }
        assert_eq!(pauses, [1, 2, 4, 8, 8, 8]);
        let since = o.down;
        o.failed(&e);
        assert_eq!(o.down, since, "the outage started once");
        o.ended();
        assert!(o.down.is_none());
        assert_eq!(o.backoff(), BACKOFF_MIN);
    }

    #[test]
    fn the_configured_root_must_be_a_consul_ca() {
        let p = primary(clock());
        let config = |pem: &str| FederationConfig {
            primary_addresses: vec!["127.0.0.1:1".into()],
            replication_token: Some("secret-token".into()),
            primary_ca_pem: pem.into(),
        };
        let good = config(&active_root_pem(&p));
        assert!(PrimaryClient::new("dc1", "dc2", &good, clock()).is_ok());
        assert!(!format!("{good:?}").contains("secret-token"));
        let err = PrimaryClient::new("dc1", "dc2", &config("junk"), clock()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidCertificate, "{err}");
        let mut none = good.clone();
        none.primary_addresses.clear();
        let err = PrimaryClient::new("dc1", "dc2", &none, clock()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidParameter, "{err}");
    }
}
