//! The HTTP API server: Consul's paths, JSON field names, status codes and headers over one
//! [`Server`] (Consul API docs). Handlers convert, call the server, and map errors — no rule lives
//! here.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, any, on};
use futures_util::future::BoxFuture;
use rustls::sign::CertifiedKey;
use serde::Serialize;
use serde_json::json;

use super::ApiError;
use super::intercept::{Intercept, InterceptLayer, Next, Verdict};
use super::query::{Params, QueryOptions, index_headers};
use crate::agent::{Agent, AgentBackend, AgentConfig, Leaf, LeafCacheRequest};
use crate::ca::{CaConfiguration, IndexedCaRoots, SignPolicy};
use crate::cache::{GetOptions, ResultMeta};
use crate::catalog::{
    AgentService, CatalogService, CheckRegistration, HealthCheck, HealthStatus, Node, ServiceEntry,
    ServiceRegistration,
};
use crate::filter::{Filter, Selectable};
use crate::intentions::{Decision, Intention, MatchType, ServiceRef, authorize_candidates};
use crate::server::{AclFiltered, HealthChecksOf, Server, ServiceQuery, parse_node_meta};
use crate::state::{Indexed, Table};
use crate::tls::{
    Bundle, CurrentLeaf, KeyExchange, RootsSource, certified_key, crypto_provider,
    optional_peer_verifier,
};
use crate::{Error, ErrorKind};

/// Request bodies larger than this are refused with 413.
pub(crate) const MAX_BODY: usize = 1 << 20;

type ApiResult = Result<Response, ApiError>;

/// The identity a client proved with a certificate on the HTTPS listener (chained to this
/// datacenter's current roots, checked during the handshake): the listener adds it to each
/// request's extensions, and handlers that care (the secondary CA's signing endpoint) read
/// it. Plain HTTP requests and clients without a certificate have none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer(pub crate::spiffe::SpiffeId);

#[derive(Clone)]
struct AppState {
    server: Server,
    /// The agent whose cache serves the `/v1/agent/connect/...` endpoints and the HTTPS
    /// certificate (Consul's agent cache: roots and intentions kept fresh by blocking
    /// queries; leaves with renewal jitter, dropped after 72 h unused), over this same
    /// server. Started on first use, on the runtime serving it.
    agent: Arc<tokio::sync::OnceCell<Agent>>,
    /// The HTTPS certificate, once [`Api::https_config`] made it.
    https: Arc<std::sync::OnceLock<Arc<ArcSwapOption<CertifiedKey>>>>,
}

/// The router for every endpoint libconnect serves.
pub fn router(server: Server) -> Router {
    Api::new(server).router()
}

/// The HTTP API over one server, with the agent cache that its agent endpoints and its HTTPS
/// certificate are served from. Cheap to clone.
#[derive(Clone)]
pub struct Api {
    state: AppState,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("datacenter", &self.state.server.datacenter())
            .finish_non_exhaustive()
    }
}

impl Api {
    /// The API over `server`; its agent cache starts on first use.
    pub fn new(server: Server) -> Api {
        Api {
            state: AppState::new(server),
        }
    }

    /// The router for every endpoint libconnect serves.
    pub fn router(&self) -> Router {
        routes(self.state.clone())
    }

    /// The TLS configuration of the HTTPS listener: it serves this datacenter's server
    /// certificate (`spiffe://<td>/agent/server/dc/<dc>`, DNS SANs `server.<dc>.consul` and
    /// `localhost`, IP SANs for the loopback addresses and `bind` when it is a specific
    /// address; `node` keys it in the cache), issued by this datacenter's CA through the
    /// agent cache's leaf lifecycle like every service leaf: renewed in its renewal window
    /// and reissued when the active root changes. Waits for the first certificate.
    pub async fn https_config(
        &self,
        node: &str,
        bind: IpAddr,
    ) -> Result<Arc<rustls::ServerConfig>, Error> {
        let current = self.state.https_cert(node, bind).await?;
        let mut config =
            rustls::ServerConfig::builder_with_provider(crypto_provider(KeyExchange::default()))
                .with_safe_default_protocol_versions()
                .map_err(|e| Error::new(ErrorKind::Tls, e.to_string()))?
                .with_client_cert_verifier(optional_peer_verifier(
                    self.roots_source(),
                    self.state.server.clock().clone(),
                ))
                .with_cert_resolver(Arc::new(CurrentLeaf(current)));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl Api {
    /// This datacenter's current roots as a trust bundle, parsed again only when they change.
    fn roots_source(&self) -> RootsSource {
        let server = self.state.server.clone();
        let cache: std::sync::Mutex<Option<(u64, usize, Arc<Bundle>)>> = Default::default();
        Arc::new(move || {
            let roots = server.ca_roots();
            let mut cached = cache
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((index, len, bundle)) = &*cached
                && *index == roots.index
                && *len == roots.value.roots.len()
            {
                return Some(bundle.clone());
            }
            let bundle = Arc::new(Bundle::from_ca_roots(&roots.value).ok()?);
            *cached = Some((roots.index, roots.value.roots.len(), bundle.clone()));
            Some(bundle)
        })
    }

    /// The certificate the HTTPS listener serves (kept current), once
    /// [`Api::https_config`] made it: a server presents it as a client when it calls the
    /// primary datacenter's servers.
    pub fn https_certificate(&self) -> Option<Arc<ArcSwapOption<CertifiedKey>>> {
        self.state.https.get().cloned()
    }
}

impl AppState {
    /// The HTTPS certificate of [`Api::https_config`], and the task that keeps it current.
    async fn https_cert(
        &self,
        node: &str,
        bind: IpAddr,
    ) -> Result<Arc<ArcSwapOption<CertifiedKey>>, Error> {
        let mut ips = vec![
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(Ipv6Addr::LOCALHOST),
        ];
        if !bind.is_unspecified() && !ips.contains(&bind) {
            ips.push(bind);
        }
        // Consul's server certificates name `server.<datacenter>.<domain>`; the domain is
        // Consul's default, `consul`.
        let dns = vec![
            format!("server.{}.consul", self.server.datacenter()),
            "localhost".to_owned(),
        ];
        let req = self.agent().await?.server_leaf_request(node, dns, ips);
        let (leaf, _) = self.leaf_of(&req, 0, Duration::ZERO).await?;
        let current = Arc::new(ArcSwapOption::from_pointee(https_key(&leaf)?));
        tokio::spawn(keep_https_cert(self.clone(), req, leaf, current.clone()));
        let _ = self.https.set(current.clone());
        Ok(current)
    }
}

fn https_key(leaf: &Leaf) -> Result<CertifiedKey, Error> {
    certified_key(leaf.chain(), leaf.key().clone_key(), "HTTPS certificate")
}

/// How long the HTTPS certificate's keeper waits after a failed renewal.
const HTTPS_RETRY: Duration = Duration::from_secs(60);

/// Keeps the HTTPS certificate current: at the leaf's renewal point, and whenever the roots
/// change, it reads the leaf afresh (the leaf cache renews it when due or when the active
/// root no longer signs it) and serves the new one from the next handshake on.
async fn keep_https_cert(
    st: AppState,
    req: LeafCacheRequest,
    mut leaf: Arc<Leaf>,
    current: Arc<ArcSwapOption<CertifiedKey>>,
) {
    let Ok(agent) = st.agent().await.cloned() else {
        return;
    };
    let mut roots = agent.roots_watch();
    roots.borrow_and_update();
    let clock = st.server.clock().clone();
    loop {
        tokio::select! {
            () = clock.sleep_until(leaf.renew_at()) => {}
            changed = roots.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let renewed = st
            .leaf_of(&req, 0, Duration::ZERO)
            .await
            .and_then(|(next, _)| Ok((https_key(&next)?, next)));
        match renewed {
            Ok((_, next)) if next.cert() == leaf.cert() => {
                // Not renewed although due (a renewal put off): do not spin on it.
                if clock.now() >= leaf.renew_at() {
                    tokio::time::sleep(HTTPS_RETRY).await;
                }
            }
            Ok((key, next)) => {
                current.store(Some(Arc::new(key)));
                leaf = next;
                tracing::info!(renew_at = %leaf.renew_at(), "HTTPS certificate renewed");
            }
            Err(e) => {
                tracing::warn!(error = %e, "renewing the HTTPS certificate failed; retrying in 1m");
                tokio::time::sleep(HTTPS_RETRY).await;
            }
        }
    }
}

/// How closely an endpoint follows Consul (the README's compatibility matrix).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Support {
    /// Consul's paths, parameters, JSON shapes, status codes and ACL rules.
    Full,
    /// Served, with the differences the notes name.
    Partial,
    /// Consul has it; libconnect answers 404.
    No,
    /// libconnect's own, not in Consul.
    Extension,
}

impl Support {
    /// The matrix's word.
    pub const fn as_str(self) -> &'static str {
        match self {
            Support::Full => "yes",
            Support::Partial => "partial",
            Support::No => "no",
            Support::Extension => "libconnect only",
        }
    }
}

/// One method and path of the HTTP API, as the router serves it (or, for [`Support::No`],
/// a Consul endpoint it does not serve).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Endpoint {
    /// `GET`, `PUT`, `POST` or `DELETE`.
    pub method: &'static str,
    /// The path, parameters in braces.
    pub path: &'static str,
    /// How closely it follows Consul.
    pub support: Support,
    /// What differs, or what to know.
    pub notes: &'static str,
}

/// The router's table: every endpoint, with its handler (none for Consul endpoints not served).
struct Route {
    endpoint: Endpoint,
    handler: Option<MethodRouter<AppState>>,
}

fn route<H, T>(
    method: Method,
    path: &'static str,
    support: Support,
    notes: &'static str,
    handler: H,
) -> Route
where
    H: axum::handler::Handler<T, AppState>,
    T: 'static,
{
    let filter = match method {
        Method::Get => MethodFilter::GET,
        Method::Put => MethodFilter::PUT,
        Method::Post => MethodFilter::POST,
        Method::Delete => MethodFilter::DELETE,
    };
    Route {
        endpoint: Endpoint {
            method: method.as_str(),
            path,
            support,
            notes,
        },
        handler: Some(on(filter, handler)),
    }
}

fn consul_only(method: Method, path: &'static str, notes: &'static str) -> Route {
    Route {
        endpoint: Endpoint {
            method: method.as_str(),
            path,
            support: Support::No,
            notes,
        },
        handler: None,
    }
}

#[derive(Clone, Copy)]
enum Method {
    Get,
    Put,
    Post,
    Delete,
}

impl Method {
    const fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// Every endpoint of the HTTP API, in the router's order, and the Consul endpoints it does not
/// serve: the source of the README's compatibility matrix.
pub fn endpoints() -> Vec<Endpoint> {
    table().into_iter().map(|r| r.endpoint).collect()
}

/// The README's compatibility matrix (a Markdown table, one row per path) made from
/// [`endpoints`].
pub fn compatibility_matrix() -> String {
    let mut rows: Vec<(Vec<&str>, Endpoint, Vec<&str>)> = Vec::new();
    for e in endpoints() {
        match rows.iter_mut().find(|(_, first, _)| first.path == e.path) {
            Some((methods, _, notes)) => {
                methods.push(e.method);
                if !e.notes.is_empty() {
                    notes.push(e.notes);
                }
            }
            None => {
                let notes = if e.notes.is_empty() {
                    vec![]
                } else {
                    vec![e.notes]
                };
                rows.push((vec![e.method], e, notes));
            }
        }
    }
    let mut out = String::from("| endpoint | methods | supported | notes |\n|---|---|---|---|\n");
    for (methods, e, notes) in rows {
        let path = e.path.replace('{', ":").replace('}', "");
        out.push_str(&format!(
            "| `{path}` | {} | {} | {} |\n",
            methods.join(", "),
            e.support.as_str(),
            notes.join("; ")
        ));
    }
    out
}

fn table() -> Vec<Route> {
    use Method::{Delete, Get, Post, Put};
    use Support::{Extension, Full, Partial};
    let filtered = "filtered by ACLs (`X-Consul-Results-Filtered-By-ACLs`), blocking, `?filter=`";
    vec![
        route(
            Get,
            "/v1/connect/ca/roots",
            Full,
            "`?pem=true`; blocking",
            ca_roots,
        ),
        route(
            Get,
            "/v1/agent/connect/ca/roots",
            Full,
            "from the agent cache (`X-Cache`)",
            agent_ca_roots,
        ),
        route(Get, "/v1/connect/ca/configuration", Full, "", ca_config_get),
        route(
            Put,
            "/v1/connect/ca/configuration",
            Full,
            "a new key or provider rotates the root, cross-signed",
            ca_config_put,
        ),
        route(
            Put,
            "/v1/connect/ca/sign",
            Extension,
            "signs a CSR made in the service's process (`service:write`)",
            ca_sign,
        ),
        route(Post, "/v1/connect/ca/sign", Extension, "", ca_sign),
        route(
            Post,
            crate::server::SIGN_INTERMEDIATE_PATH,
            Extension,
            "federation: the primary signs a secondary's intermediate (`operator:write`)",
            sign_intermediate,
        ),
        route(
            Put,
            crate::server::SIGN_INTERMEDIATE_PATH,
            Extension,
            "",
            sign_intermediate,
        ),
        route(
            Post,
            crate::server::ADVERTISE_PATH,
            Extension,
            "federation: a secondary's server tells the primary where it answers (`operator:write`)",
            federation_advertise,
        ),
        route(
            Put,
            crate::server::ADVERTISE_PATH,
            Extension,
            "",
            federation_advertise,
        ),
        route(
            Get,
            "/v1/catalog/datacenters",
            Full,
            "this datacenter and those learnt from federation",
            catalog_datacenters,
        ),
        route(
            Get,
            "/v1/agent/connect/ca/leaf/{service}",
            Full,
            "from the agent cache; blocking until renewal",
            agent_leaf,
        ),
        route(
            Post,
            "/v1/agent/connect/authorize",
            Full,
            "from the agent cache",
            agent_authorize,
        ),
        route(
            Put,
            "/v1/agent/connect/jwt/sign/{service}",
            Extension,
            "a JWT-SVID for the service (`service:write`): `{\"Audience\": [...]}`",
            agent_jwt_sign,
        ),
        route(
            Post,
            "/v1/agent/connect/jwt/validate",
            Extension,
            "checks a JWT-SVID's signature, expiry and audience: `{\"Token\", \"Audience\"}`",
            agent_jwt_validate,
        ),
        route(
            Put,
            "/v1/agent/connect/authorize",
            Full,
            "",
            agent_authorize,
        ),
        route(
            Get,
            "/v1/connect/intentions",
            Full,
            "`?filter=`; blocking",
            intention_list,
        ),
        route(
            Post,
            "/v1/connect/intentions",
            Full,
            "legacy create",
            intention_create,
        ),
        route(
            Get,
            "/v1/connect/intentions/exact",
            Full,
            "",
            intention_exact_get,
        ),
        route(
            Put,
            "/v1/connect/intentions/exact",
            Full,
            "",
            intention_exact_put,
        ),
        route(
            Delete,
            "/v1/connect/intentions/exact",
            Full,
            "",
            intention_exact_delete,
        ),
        route(
            Get,
            "/v1/connect/intentions/match",
            Full,
            "",
            intention_match,
        ),
        route(
            Get,
            "/v1/connect/intentions/check",
            Full,
            "",
            intention_check,
        ),
        route(Get, "/v1/connect/intentions/{id}", Full, "", intention_get),
        route(Put, "/v1/connect/intentions/{id}", Full, "", intention_put),
        route(
            Delete,
            "/v1/connect/intentions/{id}",
            Full,
            "",
            intention_delete,
        ),
        route(
            Put,
            "/v1/agent/service/register",
            Partial,
            "TTL checks only; no `Connect.SidecarService` (register the proxy itself)",
            service_register,
        ),
        route(
            Put,
            "/v1/agent/service/deregister/{id}",
            Full,
            "",
            service_deregister,
        ),
        route(
            Get,
            "/v1/agent/service/{id}",
            Full,
            "`ContentHash` and `X-Consul-ContentHash`; `?hash=&wait=` blocks until it changes",
            agent_service,
        ),
        route(
            Put,
            "/v1/agent/service/maintenance/{id}",
            Full,
            "`?enable=&reason=`: the critical `_service_maintenance:<id>` check",
            service_maintenance,
        ),
        route(
            Get,
            "/v1/agent/services",
            Full,
            "`?filter=`",
            agent_services,
        ),
        route(Get, "/v1/agent/checks", Full, "`?filter=`", agent_checks),
        route(
            Put,
            "/v1/agent/check/register",
            Partial,
            "TTL checks only; other types refused by name",
            check_register,
        ),
        route(
            Put,
            "/v1/agent/check/deregister/{id}",
            Full,
            "",
            check_deregister,
        ),
        route(
            Put,
            "/v1/agent/check/pass/{id}",
            Full,
            "`?note=`; `service:write` on the check's service; a TTL check not updated in time turns critical (`TTL expired`) in `connect agent` and in an agent with its own in-process server",
            check_pass,
        ),
        route(
            Put,
            "/v1/agent/check/warn/{id}",
            Full,
            "`?note=`",
            check_warn,
        ),
        route(
            Put,
            "/v1/agent/check/fail/{id}",
            Full,
            "`?note=`",
            check_fail,
        ),
        route(
            Put,
            "/v1/agent/check/update/{id}",
            Full,
            "`{Status, Output}`; output cut at 4 KiB",
            check_update,
        ),
        route(
            Get,
            "/v1/agent/self",
            Partial,
            "`Config`, `DebugConfig` (Connect and ACL settings), `Member`",
            agent_self,
        ),
        route(
            Get,
            "/v1/agent/members",
            Partial,
            "this agent only (no gossip pool)",
            agent_members,
        ),
        route(
            Get,
            "/v1/catalog/services",
            Full,
            "filtered by ACLs (`X-Consul-Results-Filtered-By-ACLs`), blocking",
            catalog_services,
        ),
        route(
            Get,
            "/v1/catalog/service/{name}",
            Partial,
            "`?tag=` (all must match), `?node-meta=`, `?filter=`; filtered by `service:read` and `node:read`; no `?near=`",
            catalog_service,
        ),
        route(
            Get,
            "/v1/catalog/connect/{name}",
            Partial,
            "as `/v1/catalog/service/:name`",
            catalog_connect,
        ),
        route(
            Get,
            "/v1/catalog/nodes",
            Full,
            "`?node-meta=`, `?filter=`, filtered by `node:read`",
            catalog_nodes,
        ),
        route(
            Get,
            "/v1/catalog/node/{node}",
            Full,
            "`null` for an unknown node",
            catalog_node,
        ),
        route(
            Get,
            "/v1/health/service/{name}",
            Partial,
            "`?tag=`, `?node-meta=`, `?passing`, `?filter=`; filtered by `service:read` and `node:read`; no `?near=`",
            health_service,
        ),
        route(
            Get,
            "/v1/health/connect/{name}",
            Partial,
            "as `/v1/health/service/:name`",
            health_connect,
        ),
        route(Get, "/v1/health/node/{node}", Full, filtered, health_node),
        route(
            Get,
            "/v1/health/checks/{service}",
            Full,
            filtered,
            health_service_checks,
        ),
        route(
            Get,
            "/v1/health/state/{state}",
            Full,
            filtered,
            health_state,
        ),
        route(
            Get,
            "/v1/status/leader",
            Partial,
            "a fixed `127.0.0.1:8300` (one server)",
            status_leader,
        ),
        route(
            Get,
            "/v1/status/peers",
            Partial,
            "as `/v1/status/leader`",
            status_peers,
        ),
        route(
            Get,
            "/v1/coordinate/nodes",
            Partial,
            "always `[]`: no network coordinates",
            coordinate_nodes,
        ),
        route(Put, "/v1/acl/bootstrap", Full, "", acl_bootstrap),
        route(Put, "/v1/acl/policy", Full, "", acl_policy_create),
        route(
            Get,
            "/v1/acl/policy/name/{name}",
            Full,
            "",
            acl_policy_by_name,
        ),
        route(Get, "/v1/acl/policy/{id}", Full, "", acl_policy_read),
        route(Put, "/v1/acl/policy/{id}", Full, "", acl_policy_update),
        route(Delete, "/v1/acl/policy/{id}", Full, "", acl_policy_delete),
        route(Get, "/v1/acl/policies", Full, "", acl_policy_list),
        route(
            Put,
            "/v1/acl/token",
            Partial,
            "policies only (no roles, identities, auth methods)",
            acl_token_create,
        ),
        route(Get, "/v1/acl/token/self", Full, "", acl_token_self),
        route(Get, "/v1/acl/token/{id}", Full, "", acl_token_read),
        route(Put, "/v1/acl/token/{id}", Full, "", acl_token_update),
        route(Delete, "/v1/acl/token/{id}", Full, "", acl_token_delete),
        route(Get, "/v1/acl/tokens", Full, "", acl_token_list),
        consul_only(Get, "/v1/kv/{key}", "no key/value store"),
        consul_only(
            Put,
            "/v1/catalog/register",
            "register through the agent endpoints",
        ),
        consul_only(
            Put,
            "/v1/agent/maintenance",
            "node maintenance: use `/v1/agent/service/maintenance/:id`",
        ),
        consul_only(Put, "/v1/session/create", "no sessions"),
        consul_only(Put, "/v1/event/fire/{name}", "no events"),
        consul_only(Get, "/v1/config/{kind}", "no configuration entries"),
        consul_only(Post, "/v1/query", "no prepared queries"),
        consul_only(Put, "/v1/txn", "no transactions"),
    ]
}

fn routes(state: AppState) -> Router {
    let mut by_path: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for r in table() {
        let Some(handler) = r.handler else { continue };
        match by_path.iter_mut().find(|(p, _)| *p == r.endpoint.path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(handler),
            None => by_path.push((r.endpoint.path, handler)),
        }
    }
    by_path
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(any(not_found))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(InterceptLayer(RefuseDeclaredOversize))
        .with_state(state)
}

/// Answers 413 at once when `Content-Length` already says the body is over [`MAX_BODY`]:
/// the body limit alone reads up to the limit first, so a client declaring 10 GiB and
/// sending two bytes held its connection until the body-read timeout.
#[derive(Clone)]
struct RefuseDeclaredOversize;

impl RefuseDeclaredOversize {
    fn declared(req: &axum::extract::Request) -> Option<u64> {
        req.headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    }
}

impl Intercept for RefuseDeclaredOversize {
    fn check(&self, req: axum::extract::Request) -> Verdict {
        if Self::declared(&req).is_some_and(|n| n > MAX_BODY as u64) {
            Verdict::Take(req)
        } else {
            Verdict::Pass(req)
        }
    }

    fn take(self, req: axum::extract::Request, _next: Next) -> BoxFuture<'static, Response> {
        let mut resp = (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Request body too large: {} bytes declared, at most {MAX_BODY}",
                Self::declared(&req).unwrap_or_default()
            ),
        )
            .into_response();
        // The unread body stays on the socket: this connection cannot serve another request.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        Box::pin(std::future::ready(resp))
    }
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "404 page not found").into_response()
}

/// Runs blocking server work (durable writes, signing, the CSR limiter) off the async
/// workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError(Error::new(ErrorKind::Internal, e.to_string())))?
        .map_err(ApiError)
}

/// What every handler reads first: Consul's query options (token, `dc`, blocking, filter)
/// and the raw parameters, from the request's head.
struct Req {
    o: QueryOptions,
    params: Params,
}

impl Req {
    fn parse(headers: &HeaderMap, query: Option<&str>) -> Result<Req, ApiError> {
        let params = Params::parse(query);
        let o = QueryOptions::from_request(headers, &params)?;
        Ok(Req { o, params })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Req {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Req, ApiError> {
        Req::parse(&parts.headers, parts.uri.query())
    }
}

impl AppState {
    /// A read of the server with the request's token, blocking first when `?index` asks for
    /// something newer (Consul's blocking queries) than what `tables` hold.
    async fn read<T: Serialize>(
        &self,
        o: &QueryOptions,
        tables: &[Table],
        read: impl Fn(&Server, Option<&str>) -> Result<Indexed<T>, Error>,
    ) -> ApiResult {
        let current = self.read_indexed(o, tables, read).await?;
        Ok(json_response(&current.value, Some(current.index)))
    }

    /// [`AppState::read`] of a result filtered by ACLs: Consul's
    /// `X-Consul-Results-Filtered-By-ACLs: true` when the server left something out.
    async fn read_filtered<T: Serialize>(
        &self,
        o: &QueryOptions,
        tables: &[Table],
        read: impl Fn(&Server, Option<&str>) -> Result<Indexed<AclFiltered<T>>, Error>,
    ) -> ApiResult {
        let current = self.read_indexed(o, tables, read).await?;
        let mut resp = json_response(&current.value.value, Some(current.index));
        if current.value.filtered_by_acls {
            resp.headers_mut().insert(
                "x-consul-results-filtered-by-acls",
                HeaderValue::from_static("true"),
            );
        }
        Ok(resp)
    }

    /// The blocking loop of [`AppState::read`]: index-based blocking (Consul docs: Blocking
    /// Queries).
    async fn read_indexed<T>(
        &self,
        o: &QueryOptions,
        tables: &[Table],
        read: impl Fn(&Server, Option<&str>) -> Result<Indexed<T>, Error>,
    ) -> Result<Indexed<T>, ApiError> {
        // The read's own index decides, not the watched tables': a read may report one
        // table's index while it watches several (`/v1/catalog/services` reports the services
        // table and watches nodes and checks too), and waiting for the tables to pass
        // `min_index` would then return at once, forever, to a watcher on an idle agent.
        self.read_while(o, tables, read, |current| {
            o.min_index > 0 && current.index <= o.min_index
        })
        .await
    }

    /// Reads, and while `unchanged` holds of what it read, waits for a write to `tables` and
    /// reads again, until `?wait=` (with jitter) runs out. Index-based blocking
    /// ([`AppState::read_indexed`]) and hash-based blocking (`agent/service/:id`) both run on it.
    async fn read_while<T>(
        &self,
        o: &QueryOptions,
        tables: &[Table],
        read: impl Fn(&Server, Option<&str>) -> Result<T, Error>,
        unchanged: impl Fn(&T) -> bool,
    ) -> Result<T, ApiError> {
        let (server, token) = (&self.server, o.token.as_deref());
        let deadline = tokio::time::Instant::now() + o.wait_with_jitter();
        // Taken before the read, so a change between the two wakes the wait below.
        let mut seen = server.store().view().max_index(tables);
        let mut current = read(server, token)?;
        while unchanged(&current) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            server
                .wait(tables, seen.max(o.min_index).max(1), left)
                .await;
            seen = server.store().view().max_index(tables);
            current = read(server, token)?;
        }
        Ok(current)
    }

    /// A write to the server with the request's token, off the async workers (writes are
    /// durable before they return).
    async fn write<T: Send + 'static>(
        &self,
        o: QueryOptions,
        write: impl FnOnce(&Server, Option<&str>) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, ApiError> {
        let s = self.server.clone();
        blocking(move || write(&s, o.token.as_deref())).await
    }
}

fn check_dc(server: &Server, o: &QueryOptions) -> Result<(), ApiError> {
    match &o.datacenter {
        Some(dc) if dc != server.datacenter() => Err(ApiError(Error::new(
            ErrorKind::InvalidParameter,
            format!("No path to datacenter: {dc}"),
        ))),
        _ => Ok(()),
    }
}

/// Parses `?filter=` only after the request's token resolves, so that a request with an
/// unknown token is refused (403) before any work on a filter it chose; a selector that `T`
/// does not have is refused (400) as go-bexpr refuses it.
fn filter<T: Selectable>(server: &Server, o: &QueryOptions) -> Result<Option<Filter>, ApiError> {
    let Some(expr) = o.filter.as_deref() else {
        return Ok(None);
    };
    server.authorizer(o.token.as_deref())?;
    let f = Filter::parse(expr)?;
    f.check_selectors::<T>()?;
    Ok(Some(f))
}

/// `?tag=` and `?node-meta=` (each repeatable, all must match), `?passing` and `?filter=` of
/// a catalog or health query of one service.
fn service_query<T: Selectable>(
    server: &Server,
    o: &QueryOptions,
    params: &Params,
    connect: bool,
) -> Result<ServiceQuery, ApiError> {
    Ok(ServiceQuery {
        connect,
        tags: params.all("tag").into_iter().map(str::to_owned).collect(),
        node_meta: node_meta(params)?,
        passing_only: params.flag("passing"),
        filter: filter::<T>(server, o)?,
    })
}

fn node_meta(params: &Params) -> Result<Vec<(String, String)>, ApiError> {
    Ok(params
        .all("node-meta")
        .into_iter()
        .map(parse_node_meta)
        .collect::<Result<_, _>>()?)
}

fn json_response<T: Serialize>(value: &T, index: Option<u64>) -> Response {
    let body = match serde_json::to_vec(value) {
        Ok(b) => b,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    let mut resp = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response();
    if let Some(i) = index {
        for (k, v) in index_headers(i) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    crate::json::from_slice(body).map_err(|m| {
        ApiError(Error::new(
            ErrorKind::InvalidParameter,
            format!("Request decode failed: {m}"),
        ))
    })
}

// ---- CA -------------------------------------------------------------------------------

/// `GET /v1/connect/ca/roots`: read from the server, as Consul's is.
async fn ca_roots(State(st): State<AppState>, Req { o, params }: Req) -> ApiResult {
    check_dc(&st.server, &o)?;
    if params.flag("pem") {
        let roots = st.server.ca_roots();
        return Ok(pem_response(&roots.value, roots.index));
    }
    st.read(&o, &[Table::CaRoots], |s, _| Ok(s.ca_roots()))
        .await
}

/// `GET /v1/agent/connect/ca/roots`: from the agent cache, blocking on `?index` there.
async fn agent_ca_roots(State(st): State<AppState>, Req { o, params }: Req) -> ApiResult {
    check_dc(&st.server, &o)?;
    let agent = st.agent().await?;
    let (roots, meta) = if o.min_index > 0 {
        let wait = GetOptions::blocking(o.min_index, o.wait_with_jitter());
        agent.roots_get(wait).await?
    } else {
        let server_index = st.server.ca_roots().index;
        not_older_than(server_index, |opts| agent.roots_get(opts)).await?
    };
    let mut resp = if params.flag("pem") {
        pem_response(&roots, meta.index)
    } else {
        json_response(&*roots, Some(meta.index))
    };
    cache_headers(&mut resp, &meta);
    Ok(resp)
}

fn pem_response(roots: &IndexedCaRoots, index: u64) -> Response {
    let mut resp = roots.roots_pem().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/pem-certificate-chain"),
    );
    for (k, v) in index_headers(index) {
        resp.headers_mut().insert(k, v);
    }
    resp
}

/// Consul's cache headers: `X-Cache`, and on a hit `Age` in seconds.
fn cache_headers(resp: &mut Response, meta: &ResultMeta) {
    let headers = resp.headers_mut();
    const X_CACHE: header::HeaderName = header::HeaderName::from_static("x-cache");
    let cache = if meta.hit { "HIT" } else { "MISS" };
    headers.insert(X_CACHE, HeaderValue::from_static(cache));
    if meta.hit {
        headers.insert(header::AGE, HeaderValue::from(meta.age.as_secs()));
    }
}

/// How long a fresh read waits for the cache's background refresh to reach a write the
/// server already made.
const CATCH_UP: Duration = Duration::from_secs(5);

/// A cache read no older than the server's `index`. In process the server's index is at
/// hand, so a read right after a write (an intention change, a root rotation) waits for the
/// cache's background refresh, at most [`CATCH_UP`], rather than answering from before it.
async fn not_older_than<V, F, Fut>(index: u64, get: F) -> Result<(Arc<V>, ResultMeta), Error>
where
    F: Fn(GetOptions) -> Fut,
    Fut: Future<Output = Result<(Arc<V>, ResultMeta), Error>>,
{
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    let (mut value, mut meta) = get(GetOptions::default()).await?;
    while meta.index < index {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        (value, meta) = get(GetOptions::blocking(meta.index, left)).await?;
    }
    Ok((value, meta))
}

async fn ca_config_get(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    st.read(&o, &[Table::CaConfig], move |s, token| s.ca_config(token))
        .await
}

async fn ca_config_put(State(st): State<AppState>, Req { o, .. }: Req, body: Bytes) -> ApiResult {
    let config: CaConfiguration = decode(&body)?;
    if config.provider.is_empty() {
        return Err(Error::new(ErrorKind::InvalidParameter, "Provider must be set").into());
    }
    st.write(o, move |s, token| s.set_ca_config(token, config))
        .await?;
    Ok(json_response(&true, None))
}

#[derive(serde::Deserialize)]
struct SignRequest {
    #[serde(rename = "CSR")]
    csr: String,
}

/// Not in Consul: signs a CSR made elsewhere, so that an agent keeps its key in its own
/// process (`service:write` on the CSR's service).
async fn ca_sign(State(st): State<AppState>, Req { o, .. }: Req, body: Bytes) -> ApiResult {
    let req: SignRequest = decode(&body)?;
    let issued = st
        .write(o, move |s, token| {
            s.sign(token, &req.csr, SignPolicy::ServiceOnly)
        })
        .await?;
    Ok(json_response(&issued, Some(issued.modify_index)))
}

/// The primary's side of CA federation ([`crate::server::SIGN_INTERMEDIATE_PATH`]). The
/// token is checked before the body is read, and the body is bounded well below the API's
/// general limit: a caller without `operator:write` costs one token lookup.
///
/// A caller that proved a server identity on the HTTPS listener may only ask for its own
/// datacenter's intermediate.
async fn sign_intermediate(
    State(st): State<AppState>,
    peer: Option<axum::Extension<TlsPeer>>,
    Req { o, .. }: Req,
    body: axum::body::Body,
) -> ApiResult {
    let body = match operator_body(&st, &o, body).await? {
        Ok(body) => body,
        Err(too_large) => return Ok(too_large),
    };
    let req: crate::server::SignIntermediateRequest = decode(&body)?;
    check_peer_datacenter(&peer, &req.datacenter, "intermediate")?;
    let resp = st
        .write(o, move |s, token| s.sign_intermediate_for(token, &req))
        .await?;
    Ok(json_response(&resp, None))
}

/// The body of a server-to-server call, read only once the token has `operator:write` and
/// bounded by [`crate::server::MAX_SIGN_INTERMEDIATE_BODY`]; a larger one is answered 413
/// (`Err`) and the connection closed.
async fn operator_body(
    st: &AppState,
    o: &QueryOptions,
    body: axum::body::Body,
) -> Result<Result<Bytes, Response>, ApiError> {
    st.server
        .authorizer(o.token.as_deref())?
        .require(crate::acl::Permission::OperatorWrite)?;
    let limit = crate::server::MAX_SIGN_INTERMEDIATE_BODY;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        let mut resp = (
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("Request body too large: at most {limit} bytes"),
        )
            .into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return Ok(Err(resp));
    };
    Ok(Ok(body))
}

/// A caller that proved a server identity on the HTTPS listener acts for its own datacenter
/// only: asking for another's `what` is refused. Without a certificate the token decides.
fn check_peer_datacenter(
    peer: &Option<axum::Extension<TlsPeer>>,
    datacenter: &str,
    what: &str,
) -> Result<(), ApiError> {
    match peer {
        Some(axum::Extension(TlsPeer(crate::spiffe::SpiffeId::Server(id))))
            if id.datacenter != datacenter =>
        {
            Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "Permission denied: a server of datacenter {:?} asked for datacenter {:?}'s \
                     {what}",
                    id.datacenter, datacenter
                ),
            )
            .into())
        }
        _ => Ok(()),
    }
}

/// A secondary's server telling the primary where its HTTPS API answers
/// ([`crate::server::ADVERTISE_PATH`]), with `operator:write` (the replication token). As for
/// the intermediate, a caller that proved a server identity may only speak for its own
/// datacenter; a wrong address gains nothing, since the primary requires that datacenter's
/// server identity from whatever answers there.
async fn federation_advertise(
    State(st): State<AppState>,
    peer: Option<axum::Extension<TlsPeer>>,
    Req { o, .. }: Req,
    body: axum::body::Body,
) -> ApiResult {
    let body = match operator_body(&st, &o, body).await? {
        Ok(body) => body,
        Err(too_large) => return Ok(too_large),
    };
    let req: crate::server::AdvertiseRequest = decode(&body)?;
    check_peer_datacenter(&peer, &req.datacenter, "address")?;
    let (dc, address) = (req.datacenter.clone(), req.address.clone());
    let changed = st
        .write(o, move |s, token| s.advertise_for(token, &req))
        .await?;
    // Once per new address (it is repeated every 30 s), saying how the caller proved itself.
    if changed {
        let proof = match &peer {
            Some(axum::Extension(TlsPeer(id))) => format!("server identity {id}"),
            None => "token only, no server certificate".to_owned(),
        };
        tracing::info!(datacenter = %dc, %address, %proof, "a secondary datacenter's server advertised its address");
    }
    Ok(json_response(&true, None))
}

/// `GET /v1/catalog/datacenters`: this datacenter first, then the others this server knows
/// (see [`Server::datacenters`]). No ACL, as in Consul.
async fn catalog_datacenters(State(st): State<AppState>) -> ApiResult {
    Ok(json_response(&st.server.datacenters(), None))
}

impl AppState {
    fn new(server: Server) -> AppState {
        AppState {
            server,
            agent: Arc::default(),
            https: Arc::default(),
        }
    }

    async fn agent(&self) -> Result<&Agent, Error> {
        self.agent
            .get_or_try_init(|| {
                Agent::new_async(AgentConfig {
                    backend: AgentBackend::InProcess(self.server.clone()),
                    token: None,
                    datacenter: None,
                    clock: self.server.clock().clone(),
                    root_change_jitter: LEAF_ROOT_CHANGE_JITTER,
                    runtime: None,
                })
            })
            .await
    }

    /// Whether a fresh read may be answered with `leaf`: signed by the active root's key
    /// and not yet due for renewal. The cache answers a hit without asking its type, so
    /// this is checked here.
    fn leaf_current(&self, leaf: &Leaf) -> bool {
        if self.server.clock().now() >= leaf.renew_at() {
            return false;
        }
        let roots = self.server.ca_roots().value;
        roots
            .active()
            .is_some_and(|r| r.signing_key_id == leaf.authority_key_id())
    }

    /// The leaf for (`token`, `service`) from the agent cache; with `min_index`, blocks until
    /// a newer one is issued (renewal or root rotation) or `wait` passes.
    async fn leaf(
        &self,
        token: Option<&str>,
        service: &str,
        min_index: u64,
        wait: Duration,
    ) -> Result<(Arc<Leaf>, ResultMeta), Error> {
        let req = self.agent().await?.leaf_request_for_token(token, service);
        self.leaf_of(&req, min_index, wait).await
    }

    /// [`AppState::leaf`] for any leaf request (a service's, or the agent's own).
    async fn leaf_of(
        &self,
        req: &LeafCacheRequest,
        min_index: u64,
        wait: Duration,
    ) -> Result<(Arc<Leaf>, ResultMeta), Error> {
        let agent = self.agent().await?;
        let opts = if min_index > 0 {
            GetOptions::blocking(min_index, wait)
        } else {
            GetOptions::default()
        };
        let (mut leaf, mut meta) = match agent.leaf_get(req, opts).await {
            // A blocking read of a leaf not issued yet: the cache has nothing to answer with
            // when `wait` passes, and Consul's agent answers with the first certificate once
            // it is signed rather than an error.
            Err(e) if e.kind() == ErrorKind::Timeout && min_index > 0 => {
                agent.leaf_get(req, GetOptions::default()).await?
            }
            r => r?,
        };
        let expired = self.server.clock().now() >= leaf.valid_before();
        if expired || (min_index == 0 && !self.leaf_current(&leaf)) {
            if let Some(active) = self.server.ca_roots().value.active() {
                let id = active.id.clone();
                agent.roots_caught_up(&id, ROOTS_CATCH_UP).await;
            }
            let revalidate = GetOptions {
                must_revalidate: true,
                ..GetOptions::default()
            };
            (leaf, meta) = agent.leaf_get(req, revalidate).await?;
        }
        if self.server.clock().now() >= leaf.valid_before() {
            return Err(Error::new(
                ErrorKind::NotReady,
                format!(
                    "the leaf for {:?} expired and could not be renewed",
                    req.scope.name
                ),
            ));
        }
        Ok((leaf, meta))
    }
}

/// Upper bound of the random delay before blocked leaf readers get a leaf from a new root
/// (Consul: 30 s), so that a rotation does not make every client re-issue at once.
const LEAF_ROOT_CHANGE_JITTER: Duration = Duration::from_secs(30);
/// How long a fresh leaf read waits for the cache's view of the roots to catch up with a
/// rotation the server already made.
const ROOTS_CATCH_UP: Duration = Duration::from_secs(5);

/// `GET /v1/agent/connect/ca/leaf/:service`: the agent generates the key here and returns
/// it with the certificate; `?index` blocks until a new certificate is due (renewal point
/// or root rotation).
async fn agent_leaf(
    State(st): State<AppState>,
    Path(service): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    check_dc(&st.server, &o)?;
    st.server
        .authorizer(o.token.as_deref())?
        .require(crate::acl::Permission::ServiceWrite(&service))?;
    let token = o.token.as_deref().filter(|t| !t.is_empty());
    let (leaf, meta) = st
        .leaf(token, &service, o.min_index, o.wait_with_jitter())
        .await?;
    let mut issued = leaf.issued()?;
    issued.private_key_pem = leaf.key_pem().to_string();
    let mut resp = json_response(&issued, Some(meta.index));
    cache_headers(&mut resp, &meta);
    Ok(resp)
}

/// Not in Consul: a JWT-SVID for `service` (SPIFFE spec: JWT-SVID), signed by this datacenter's
/// JWT key (`service:write`, as for its leaf). The SPIFFE Workload API hands out the same tokens.
async fn agent_jwt_sign(
    State(st): State<AppState>,
    Path(service): Path<String>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    check_dc(&st.server, &o)?;
    let req: crate::server::JwtSvidRequest = decode(&body)?;
    let svid = st
        .write(o, move |s, token| {
            s.jwt_svid(token, &service, &req.audience)
        })
        .await?;
    Ok(json_response(&svid, None))
}

/// Not in Consul: checks a JWT-SVID's signature (a key of this trust domain's JWKS), expiry and
/// audience; answers its SPIFFE ID and claims. No ACL, as for the roots.
async fn agent_jwt_validate(
    State(st): State<AppState>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    check_dc(&st.server, &o)?;
    let req: crate::server::JwtValidateRequest = decode(&body)?;
    let valid = st.server.validate_jwt_svid(&req.token, &req.audience)?;
    Ok(json_response(
        &crate::server::JwtValidation::from(valid),
        None,
    ))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct AuthorizeRequest {
    #[serde(rename = "Target")]
    target: String,
    #[serde(rename = "ClientCertURI")]
    client_cert_uri: String,
    #[serde(rename = "ClientCertSerial")]
    client_cert_serial: String,
}

async fn agent_authorize(State(st): State<AppState>, Req { o, .. }: Req, body: Bytes) -> ApiResult {
    let req: AuthorizeRequest = decode(&body)?;
    let _unused_as_in_consul = req.client_cert_serial;
    let token = o.token.as_deref().filter(|t| !t.is_empty());
    let source = st
        .server
        .authorize_request(token, &req.target, &req.client_cert_uri)?;
    if !crate::spiffe::is_valid_service_name(&req.target) {
        // No intention can name such a target, and the intention-match lookup would refuse
        // it as a name: the server's own index answers, with the wildcards and the default.
        let d = st
            .server
            .authorize(token, &req.target, &req.client_cert_uri)?;
        let mut resp = authorize_response(&d);
        cache_headers(&mut resp, &ResultMeta::default());
        return Ok(resp);
    }
    let agent = st.agent().await?;
    let server_index = st.server.store().table_index(Table::Intentions).max(1);
    let (intentions, meta) = not_older_than(server_index, |opts| {
        agent.intentions_for_token(token, &req.target, opts)
    })
    .await?;
    // The cached list holds the intentions whose destination covers the target, in
    // evaluation order: the first whose source covers the client decides.
    let d = authorize_candidates(
        intentions.iter(),
        &ServiceRef::new(&source),
        agent.default_policy(),
    );
    let mut resp = authorize_response(&d);
    cache_headers(&mut resp, &meta);
    Ok(resp)
}

fn authorize_response(d: &Decision) -> Response {
    // Serialized straight from the decision: a `json!` value cost a map, two keys and the
    // reason's `String` on every authorize call, the agent's hottest endpoint.
    #[derive(Serialize)]
    struct Body<'a> {
        #[serde(rename = "Authorized")]
        authorized: bool,
        #[serde(rename = "Reason", serialize_with = "serialize_display")]
        reason: &'a crate::intentions::DecisionReason,
    }
    json_response(
        &Body {
            authorized: d.allowed,
            reason: &d.reason,
        },
        None,
    )
}

fn serialize_display<S: serde::Serializer>(
    v: &impl std::fmt::Display,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

// ---- Intentions ------------------------------------------------------------------------

async fn intention_list(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    let f = filter::<Intention>(&st.server, &o)?;
    st.read(&o, &[Table::Intentions], move |s, token| {
        s.intention_list(token, f.as_ref())
    })
    .await
}

async fn intention_create(
    State(st): State<AppState>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    let ixn = Intention::from_json(&body)?;
    let created = st
        .write(o, move |s, token| s.intention_create(token, ixn))
        .await?;
    Ok(json_response(&json!({"ID": created.id}), None))
}

fn required<'a>(params: &'a Params, key: &str) -> Result<&'a str, ApiError> {
    params.get(key).filter(|v| !v.is_empty()).ok_or_else(|| {
        ApiError(Error::new(
            ErrorKind::InvalidParameter,
            format!("required query parameter '{key}' not set"),
        ))
    })
}

async fn intention_exact_get(State(st): State<AppState>, Req { o, params }: Req) -> ApiResult {
    let (src, dst) = (
        required(&params, "source")?.to_owned(),
        required(&params, "destination")?.to_owned(),
    );
    st.read(&o, &[Table::Intentions], move |s, token| {
        s.intention_get_exact(token, &src, &dst)
    })
    .await
}

async fn intention_exact_put(
    State(st): State<AppState>,
    Req { o, params }: Req,
    body: Bytes,
) -> ApiResult {
    let (src, dst) = (
        required(&params, "source")?.to_owned(),
        required(&params, "destination")?.to_owned(),
    );
    let ixn = Intention::from_json(&body)?;
    st.write(o, move |s, token| {
        s.intention_upsert_exact(token, &src, &dst, ixn)
    })
    .await?;
    Ok(json_response(&true, None))
}

async fn intention_exact_delete(State(st): State<AppState>, Req { o, params }: Req) -> ApiResult {
    let (src, dst) = (
        required(&params, "source")?.to_owned(),
        required(&params, "destination")?.to_owned(),
    );
    // `true` whether or not the pair existed: by-name deletes are idempotent in Consul.
    st.write(o, move |s, token| {
        s.intention_delete_exact(token, &src, &dst)
    })
    .await?;
    Ok(json_response(&true, None))
}

async fn intention_match(State(st): State<AppState>, Req { o, params }: Req) -> ApiResult {
    let by: MatchType = required(&params, "by")?.parse()?;
    let names: Vec<String> = params.all("name").into_iter().map(str::to_owned).collect();
    st.read(&o, &[Table::Intentions], move |s, token| {
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        s.intention_match(token, by, &refs)
    })
    .await
}

async fn intention_check(State(st): State<AppState>, Req { o, params }: Req) -> ApiResult {
    let (src, dst) = (
        required(&params, "source")?,
        required(&params, "destination")?,
    );
    if let Some(t) = params.get("source-type")
        && t != "consul"
    {
        return Err(Error::new(
            ErrorKind::InvalidParameter,
            format!("unsupported SourceType: {t}"),
        )
        .into());
    }
    let allowed = st.server.intention_check(o.token.as_deref(), src, dst)?;
    Ok(json_response(&json!({"Allowed": allowed}), None))
}

async fn intention_get(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    st.read(&o, &[Table::Intentions], move |s, token| {
        s.intention_get(token, &id)
    })
    .await
}

async fn intention_put(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    let ixn = Intention::from_json(&body)?;
    st.write(o, move |s, token| s.intention_update(token, &id, ixn))
        .await?;
    Ok(json_response(&true, None))
}

async fn intention_delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    st.write(o, move |s, token| s.intention_delete(token, &id))
        .await?;
    Ok(json_response(&true, None))
}

// ---- Catalog and agent -----------------------------------------------------------------

async fn service_register(
    State(st): State<AppState>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    let reg = ServiceRegistration::from_json(&body)?;
    st.write(o, move |s, token| s.register_service(token, reg))
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn service_deregister(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    st.write(o, move |s, token| s.deregister_service(token, &id))
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn agent_services(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    let f = filter::<AgentService>(&st.server, &o)?;
    Ok(json_response(
        &st.server.agent_services(o.token.as_deref(), f.as_ref())?,
        None,
    ))
}

async fn agent_self(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    st.server.agent_self_allowed(o.token.as_deref())?;
    let c = st.server.config();
    Ok(json_response(
        &json!({
            "Config": {
                "Datacenter": c.datacenter,
                "PrimaryDatacenter": c.primary_datacenter.clone().unwrap_or_else(|| c.datacenter.clone()),
                "NodeName": c.node_name,
                "Server": true,
                "Version": crate::VERSION,
                "Revision": "libconnect",
            },
            "DebugConfig": {
                "ConnectEnabled": true,
                "ACLsEnabled": c.acl_enabled,
                "ACLDefaultPolicy": match c.acl_default_policy {
                    crate::acl::AclDefaultPolicy::Allow => "allow",
                    crate::acl::AclDefaultPolicy::Deny => "deny",
                },
                "DefaultIntentionPolicy": c.default_intention_policy.map(|a| a.as_str()).unwrap_or(""),
            },
            "Member": { "Name": c.node_name, "Addr": c.node_address, "Status": 1 },
            "Meta": {},
            // libconnect's: a secondary's replication from the primary (Server::replication_status).
            "Replication": st.server.replication_status(),
        }),
        None,
    ))
}

async fn catalog_services(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    check_dc(&st.server, &o)?;
    st.read_filtered(&o, Table::CATALOG, move |s, token| {
        s.catalog_services(token)
    })
    .await
}

async fn catalog_rows(
    st: AppState,
    name: String,
    Req { o, params }: Req,
    connect: bool,
) -> ApiResult {
    check_dc(&st.server, &o)?;
    let q = service_query::<CatalogService>(&st.server, &o, &params, connect)?;
    st.read_filtered(&o, Table::CATALOG, move |s, token| {
        s.catalog_service(token, &name, &q)
    })
    .await
}

async fn catalog_service(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: Req,
) -> ApiResult {
    catalog_rows(st, name, req, false).await
}

async fn catalog_connect(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: Req,
) -> ApiResult {
    catalog_rows(st, name, req, true).await
}

async fn health_rows(
    st: AppState,
    name: String,
    Req { o, params }: Req,
    connect: bool,
) -> ApiResult {
    check_dc(&st.server, &o)?;
    let q = service_query::<ServiceEntry>(&st.server, &o, &params, connect)?;
    st.read_filtered(&o, Table::CATALOG, move |s, token| {
        s.health(token, &name, &q)
    })
    .await
}

async fn health_service(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: Req,
) -> ApiResult {
    health_rows(st, name, req, false).await
}

async fn health_connect(
    State(st): State<AppState>,
    Path(name): Path<String>,
    req: Req,
) -> ApiResult {
    health_rows(st, name, req, true).await
}

/// `GET /v1/catalog/nodes` (`?node-meta=`, `?filter=`).
async fn catalog_nodes(State(st): State<AppState>, Req { o, params }: Req) -> ApiResult {
    check_dc(&st.server, &o)?;
    let meta = node_meta(&params)?;
    let f = filter::<Node>(&st.server, &o)?;
    st.read_filtered(&o, &[Table::Nodes], move |s, token| {
        s.catalog_nodes(token, &meta, f.as_ref())
    })
    .await
}

/// `GET /v1/catalog/node/:node`: `{"Node": …, "Services": {id: …}}`, or `null` for a node
/// that does not exist (as Consul answers).
async fn catalog_node(
    State(st): State<AppState>,
    Path(node): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    check_dc(&st.server, &o)?;
    st.read_filtered(&o, Table::CATALOG, move |s, token| {
        s.catalog_node(token, &node)
    })
    .await
}

async fn health_checks_of(st: AppState, o: QueryOptions, select: HealthChecksOf) -> ApiResult {
    check_dc(&st.server, &o)?;
    let f = filter::<HealthCheck>(&st.server, &o)?;
    st.read_filtered(&o, Table::CATALOG, move |s, token| {
        s.health_checks(token, &select, f.as_ref())
    })
    .await
}

/// `GET /v1/health/node/:node`: every check on the node.
async fn health_node(
    State(st): State<AppState>,
    Path(node): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    health_checks_of(st, o, HealthChecksOf::Node(node)).await
}

/// `GET /v1/health/checks/:service`: the checks of the service's instances.
async fn health_service_checks(
    State(st): State<AppState>,
    Path(service): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    health_checks_of(st, o, HealthChecksOf::Service(service)).await
}

/// `GET /v1/health/state/:state`: checks in one state (`passing`, `warning`, `critical`), or
/// all (`any`).
async fn health_state(
    State(st): State<AppState>,
    Path(state): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    let state = match state.as_str() {
        "any" => None,
        s => Some(
            HealthStatus::from_name(s)
                .ok_or_else(|| Error::new(ErrorKind::InvalidParameter, "Bad check state"))?,
        ),
    };
    health_checks_of(st, o, HealthChecksOf::State(state)).await
}

/// `GET /v1/agent/service/:id`.
async fn agent_service(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    let (service, hash) = st
        .read_while(
            &o,
            Table::CATALOG,
            |server, token| {
                let service = server.agent_service(token, &id)?;
                let hash = service.content_hash();
                Ok((service, hash))
            },
            |(_, hash)| o.hash.as_deref() == Some(hash.as_str()),
        )
        .await?;
    let mut body = serde_json::to_value(&service).map_err(|e| {
        ApiError(Error::new(
            ErrorKind::Internal,
            format!("encoding the service: {e}"),
        ))
    })?;
    if let Some(map) = body.as_object_mut() {
        map.insert("ContentHash".to_owned(), json!(hash));
    }
    let mut resp = json_response(&body, None);
    if let Ok(v) = HeaderValue::from_str(&hash) {
        resp.headers_mut().insert("x-consul-contenthash", v);
    }
    Ok(resp)
}

/// `GET /v1/agent/checks` (`?filter=`).
async fn agent_checks(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    let f = filter::<HealthCheck>(&st.server, &o)?;
    Ok(json_response(
        &st.server.agent_checks(o.token.as_deref(), f.as_ref())?,
        None,
    ))
}

/// `PUT /v1/agent/check/register` (TTL checks).
async fn check_register(State(st): State<AppState>, Req { o, .. }: Req, body: Bytes) -> ApiResult {
    let reg = CheckRegistration::from_json(&body)?;
    st.write(o, move |s, token| s.register_check(token, reg))
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/deregister/:id`.
async fn check_deregister(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    st.write(o, move |s, token| s.deregister_check(token, &id))
        .await?;
    Ok(StatusCode::OK.into_response())
}

async fn ttl_update(
    st: AppState,
    id: String,
    o: QueryOptions,
    status: HealthStatus,
    note: String,
) -> ApiResult {
    st.write(o, move |s, token| s.update_check(token, &id, status, &note))
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `PUT /v1/agent/check/pass/:id` (`?note=` becomes the output).
async fn check_pass(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, params }: Req,
) -> ApiResult {
    let note = params.get("note").unwrap_or_default().to_owned();
    ttl_update(st, id, o, HealthStatus::Passing, note).await
}

/// `PUT /v1/agent/check/warn/:id`.
async fn check_warn(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, params }: Req,
) -> ApiResult {
    let note = params.get("note").unwrap_or_default().to_owned();
    ttl_update(st, id, o, HealthStatus::Warning, note).await
}

/// `PUT /v1/agent/check/fail/:id`.
async fn check_fail(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, params }: Req,
) -> ApiResult {
    let note = params.get("note").unwrap_or_default().to_owned();
    ttl_update(st, id, o, HealthStatus::Critical, note).await
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct CheckUpdate {
    #[serde(rename = "Status")]
    status: String,
    #[serde(rename = "Output")]
    output: String,
}

/// `PUT /v1/agent/check/update/:id`: `{"Status": …, "Output": …}`.
async fn check_update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    let update: CheckUpdate = decode(&body)?;
    let status = HealthStatus::from_name(&update.status).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidParameter,
            format!("Invalid check status: '{}'", update.status),
        )
    })?;
    ttl_update(st, id, o, status, update.output).await
}

/// `PUT /v1/agent/service/maintenance/:id?enable=true|false&reason=…`.
async fn service_maintenance(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, params }: Req,
) -> ApiResult {
    let enable = match params.get("enable") {
        None | Some("") => {
            return Err(Error::new(ErrorKind::InvalidParameter, "Missing value for enable").into());
        }
        // Go's `strconv.ParseBool`, as Consul reads it.
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => true,
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => false,
        Some(v) => {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("Invalid value for enable: {v:?}"),
            )
            .into());
        }
    };
    let reason = params.get("reason").unwrap_or_default().to_owned();
    st.write(o, move |s, token| {
        s.service_maintenance(token, &id, enable, &reason)
    })
    .await?;
    Ok(StatusCode::OK.into_response())
}

/// `GET /v1/agent/members`: this agent, the only member of its LAN pool (libconnect has no
/// gossip), in Consul's shape; `node:read` on it.
async fn agent_members(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    let c = st.server.config();
    let members = if st
        .server
        .authorizer(o.token.as_deref())?
        .node_read(&c.node_name)
    {
        vec![json!({
            "Name": c.node_name,
            "Addr": c.node_address,
            "Port": 8301,
            "Tags": {
                "dc": c.datacenter,
                "role": "consul",
                "port": "8300",
                "build": crate::VERSION,
                "vsn": "2",
                "vsn_min": "2",
                "vsn_max": "3",
            },
            "Status": 1,
            "ProtocolMin": 1,
            "ProtocolMax": 5,
            "ProtocolCur": 2,
            "DelegateMin": 2,
            "DelegateMax": 5,
            "DelegateCur": 4,
        })]
    } else {
        Vec::new()
    };
    Ok(json_response(&members, None))
}

/// `GET /v1/status/peers`: the one server, this one (as `/v1/status/leader`).
async fn status_peers() -> Response {
    json_response(&[STATUS_ADDRESS], None)
}

/// `GET /v1/coordinate/nodes`: libconnect keeps no network coordinates, so the list Consul
/// answers before any are known, `[]`.
async fn coordinate_nodes(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    check_dc(&st.server, &o)?;
    st.server.authorizer(o.token.as_deref())?;
    Ok(json_response(
        &Vec::<()>::new(),
        Some(st.server.store().index().max(1)),
    ))
}

/// The server address `/v1/status/leader` and `/v1/status/peers` report.
const STATUS_ADDRESS: &str = "127.0.0.1:8300";

async fn status_leader() -> Response {
    json_response(&STATUS_ADDRESS, None)
}

// ---- ACL -------------------------------------------------------------------------------

async fn acl_bootstrap(State(st): State<AppState>) -> ApiResult {
    let s = st.server.clone();
    let token = blocking(move || s.acl_bootstrap()).await?;
    Ok(json_response(&token, None))
}

async fn acl_policy_create(
    State(st): State<AppState>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    let policy = decode(&body)?;
    let p = st
        .write(o, move |s, token| s.acl_policy_create(token, policy))
        .await?;
    Ok(json_response(&p, None))
}

async fn acl_policy_read(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    Ok(json_response(
        &st.server.acl_policy_read(o.token.as_deref(), &id)?,
        None,
    ))
}

async fn acl_policy_by_name(
    State(st): State<AppState>,
    Path(name): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    Ok(json_response(
        &st.server
            .acl_policy_read_by_name(o.token.as_deref(), &name)?,
        None,
    ))
}

async fn acl_policy_update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    let mut policy: crate::acl::Policy = decode(&body)?;
    if policy.id.is_empty() {
        policy.id = id;
    }
    let p = st
        .write(o, move |s, token| s.acl_policy_update(token, policy))
        .await?;
    Ok(json_response(&p, None))
}

async fn acl_policy_delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    st.write(o, move |s, token| s.acl_policy_delete(token, &id))
        .await?;
    Ok(json_response(&true, None))
}

async fn acl_policy_list(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    Ok(json_response(
        &st.server.acl_policy_list(o.token.as_deref())?,
        None,
    ))
}

async fn acl_token_create(
    State(st): State<AppState>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    let token = decode(&body)?;
    let t = st
        .write(o, move |s, caller| s.acl_token_create(caller, token))
        .await?;
    Ok(json_response(&t, None))
}

async fn acl_token_read(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    Ok(json_response(
        &st.server.acl_token_read(o.token.as_deref(), &id)?,
        None,
    ))
}

async fn acl_token_self(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    Ok(json_response(
        &st.server.acl_token_self(o.token.as_deref())?,
        None,
    ))
}

async fn acl_token_update(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
    body: Bytes,
) -> ApiResult {
    let mut token: crate::acl::Token = decode(&body)?;
    if token.accessor_id.is_empty() {
        token.accessor_id = id;
    }
    let t = st
        .write(o, move |s, caller| s.acl_token_update(caller, token))
        .await?;
    Ok(json_response(&t, None))
}

async fn acl_token_delete(
    State(st): State<AppState>,
    Path(id): Path<String>,
    Req { o, .. }: Req,
) -> ApiResult {
    st.write(o, move |s, token| s.acl_token_delete(token, &id))
        .await?;
    Ok(json_response(&true, None))
}

async fn acl_token_list(State(st): State<AppState>, Req { o, .. }: Req) -> ApiResult {
    Ok(json_response(
        &st.server.acl_token_list(o.token.as_deref())?,
        None,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;
    use crate::cache::DEFAULT_LAST_GET_TTL;
    use crate::http::status_for;
    use crate::server::ServerConfig;

    fn state() -> (AppState, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(
            time::macros::datetime!(2026-01-01 00:00:00 UTC),
        ));
        let server = Server::start(ServerConfig::dev(), clock.clone()).unwrap();
        (AppState::new(server), clock)
    }

    #[tokio::test]
    async fn a_server_peer_may_ask_only_for_its_own_datacenters_intermediate() {
        let (st, clock) = state();
        let mut c = ServerConfig::dev();
        c.datacenter = "dc2".into();
        c.primary_datacenter = Some("dc1".into());
        let secondary = Server::start_secondary(c, clock, &st.server.ca_roots().value).unwrap();
        let td = crate::spiffe::TrustDomain::new(&st.server.trust_domain()).unwrap();
        let peer = TlsPeer(crate::spiffe::ServerId::new(&td, "dc2").into());
        let call = |dc: &str, peer: Option<TlsPeer>| {
            let body = serde_json::json!({
                "CSR": secondary.intermediate_csr().unwrap(),
                "Datacenter": dc,
            })
            .to_string();
            sign_intermediate(
                State(st.clone()),
                peer.map(axum::Extension),
                Req::parse(&HeaderMap::new(), None).unwrap(),
                axum::body::Body::from(body),
            )
        };
        let err = call("dc3", Some(peer.clone())).await.unwrap_err();
        assert_eq!(err.0.kind(), ErrorKind::PermissionDenied, "{}", err.0);
        assert_eq!(st.server.datacenters(), ["dc1"]);
        let ok = call("dc2", Some(peer)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        // Without a certificate (the first request of a secondary) the token decides.
        let ok = call("dc3", None).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(st.server.datacenters(), ["dc1", "dc2", "dc3"]);
    }

    #[tokio::test]
    async fn a_server_peer_may_advertise_only_its_own_datacenter() {
        let (st, _) = state();
        let td = crate::spiffe::TrustDomain::new(&st.server.trust_domain()).unwrap();
        let peer = TlsPeer(crate::spiffe::ServerId::new(&td, "dc2").into());
        let call = |dc: &str, peer: Option<TlsPeer>| {
            let body = serde_json::json!({"Datacenter": dc, "Address": "127.0.0.1:8501"});
            federation_advertise(
                State(st.clone()),
                peer.map(axum::Extension),
                Req::parse(&HeaderMap::new(), None).unwrap(),
                axum::body::Body::from(body.to_string()),
            )
        };
        let err = call("dc3", Some(peer.clone())).await.unwrap_err();
        assert_eq!(err.0.kind(), ErrorKind::PermissionDenied, "{}", err.0);
        assert_eq!(st.server.server_address("dc3"), None);
        let ok = call("dc2", Some(peer)).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            st.server.server_address("dc2").as_deref(),
            Some("127.0.0.1:8501")
        );
    }

    fn cached_leaves(st: &AppState) -> u64 {
        st.agent.get().map_or(0, |a| {
            a.cache()
                .metrics()
                .get("connect-ca-leaf")
                .map_or(0, |m| m.entries)
        })
    }

    /// Waits (in real time, bounded) for the cache's eviction loop to notice the moved clock.
    async fn until_cached(st: &AppState, n: u64) {
        for _ in 0..500 {
            if cached_leaves(st) == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} leaves cached, expected {n}", cached_leaves(st));
    }

    fn acl_state() -> AppState {
        let mut c = ServerConfig::dev();
        c.acl_enabled = true;
        c.acl_default_policy = crate::acl::AclDefaultPolicy::Deny;
        c.acl_initial_management_token = Some("root-secret".into());
        AppState::new(Server::start(c, crate::clock::system()).unwrap())
    }

    fn with_token(token: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            headers.insert("x-consul-token", HeaderValue::from_static(t));
        }
        headers
    }

    fn header<'a>(resp: &'a Response, name: &str) -> Option<&'a str> {
        resp.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn body_json(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_BODY)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn entries(st: &AppState, cache_type: &str) -> u64 {
        st.agent.get().map_or(0, |a| {
            a.cache().metrics().get(cache_type).map_or(0, |m| m.entries)
        })
    }

    async fn authorize_call(
        st: &AppState,
        token: Option<&'static str>,
        target: &str,
        source_uri: &str,
    ) -> ApiResult {
        let body = json!({"Target": target, "ClientCertURI": source_uri}).to_string();
        agent_authorize(
            State(st.clone()),
            Req::parse(&with_token(token), None).unwrap(),
            Bytes::from(body),
        )
        .await
    }

    fn uri(st: &AppState, service: &str) -> String {
        format!(
            "spiffe://{}/ns/default/dc/dc1/svc/{service}",
            st.server.trust_domain()
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn agent_roots_come_from_the_cache_and_say_so() {
        let (st, _) = state();
        let call = |q: Option<&str>| {
            let q = q.map(str::to_owned);
            agent_ca_roots(
                State(st.clone()),
                Req::parse(&HeaderMap::new(), q.as_deref()).unwrap(),
            )
        };
        // One entry: the agent's own roots watch and the endpoint share it.
        call(None).await.unwrap();
        assert_eq!(entries(&st, "connect-ca-root"), 1);
        let second = call(None).await.unwrap();
        assert_eq!(header(&second, "x-cache"), Some("HIT"));
        assert_eq!(header(&second, "age"), Some("0"));
        let index = header(&second, "x-consul-index").unwrap().to_owned();
        let roots = body_json(second).await;
        assert_eq!(
            roots,
            serde_json::to_value(st.server.ca_roots().value).unwrap()
        );
        let pem = call(Some("pem")).await.unwrap();
        assert_eq!(header(&pem, "x-cache"), Some("HIT"));
        assert_eq!(
            header(&pem, "content-type"),
            Some("application/pem-certificate-chain")
        );

        // A rotation is seen by the next read at once, and wakes a blocked one.
        let blocked = tokio::spawn(call(Some(&format!("index={index}&wait=30s"))));
        // Let it block first: a reader that waited for the new roots was not a hit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut config = st.server.ca_config(None).unwrap().value;
        config.config.insert("PrivateKeyBits".into(), json!(384));
        st.server.set_ca_config(None, config).unwrap();
        let after = body_json(call(None).await.unwrap()).await;
        let active = st.server.ca_roots().value.active_root_id.clone();
        assert_eq!(after["ActiveRootID"], json!(active));
        let woken = blocked.await.unwrap().unwrap();
        assert_eq!(header(&woken, "x-cache"), Some("MISS"));
        assert_eq!(header(&woken, "age"), None);
        let woken = body_json(woken).await;
        assert_eq!(woken["ActiveRootID"], json!(active));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn authorize_comes_from_the_intention_cache_and_follows_writes() {
        let (st, _) = state();
        let put = |src: &str, action: &str| {
            let ixn =
                Intention::from_json(json!({"Action": action}).to_string().as_bytes()).unwrap();
            st.server
                .intention_upsert_exact(None, src, "db", ixn)
                .unwrap();
        };
        put("web", "allow");
        put("*", "deny");
        let first = authorize_call(&st, None, "db", &uri(&st, "web"))
            .await
            .unwrap();
        assert_eq!(header(&first, "x-cache"), Some("MISS"));
        assert_eq!(
            body_json(first).await,
            json!({"Authorized": true, "Reason": st.server.authorize(None, "db", &uri(&st, "web")).unwrap().reason.to_string()})
        );
        // Every answer is the server's own, for sources matched and not.
        for src in ["web", "api", "cache"] {
            let resp = authorize_call(&st, None, "db", &uri(&st, src))
                .await
                .unwrap();
            assert_eq!(header(&resp, "x-cache"), Some("HIT"));
            assert_eq!(header(&resp, "age"), Some("0"));
            let d = st.server.authorize(None, "db", &uri(&st, src)).unwrap();
            assert_eq!(
                body_json(resp).await,
                json!({"Authorized": d.allowed, "Reason": d.reason.to_string()}),
                "{src}"
            );
        }
        // A target no intention names falls to the default, as the server's does.
        let other = body_json(
            authorize_call(&st, None, "other", &uri(&st, "web"))
                .await
                .unwrap(),
        )
        .await;
        let d = st
            .server
            .authorize(None, "other", &uri(&st, "web"))
            .unwrap();
        assert_eq!(
            other,
            json!({"Authorized": d.allowed, "Reason": d.reason.to_string()})
        );
        // Targets that are no service name are answered as the server answers them.
        for target in ["default/db", "a b", "*"] {
            let resp = authorize_call(&st, None, target, &uri(&st, "web"))
                .await
                .unwrap();
            let d = st.server.authorize(None, target, &uri(&st, "web")).unwrap();
            assert_eq!(
                body_json(resp).await,
                json!({"Authorized": d.allowed, "Reason": d.reason.to_string()}),
                "{target}"
            );
        }
        // A write is seen by the very next request.
        put("web", "deny");
        let after = body_json(
            authorize_call(&st, None, "db", &uri(&st, "web"))
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(after["Authorized"], false, "{after}");
        assert_eq!(entries(&st, "intention-match"), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn authorize_checks_the_request_and_the_token_before_any_cache_work() {
        let st = acl_state();
        let web = uri(&st, "web");
        for (token, target, client, status) in [
            (None, "db", web.as_str(), StatusCode::FORBIDDEN),
            (
                Some("not-a-token"),
                "db",
                web.as_str(),
                StatusCode::FORBIDDEN,
            ),
            (
                Some("root-secret"),
                "",
                web.as_str(),
                StatusCode::BAD_REQUEST,
            ),
            (Some("root-secret"), "db", "nope", StatusCode::BAD_REQUEST),
        ] {
            let e = authorize_call(&st, token, target, client)
                .await
                .unwrap_err();
            assert_eq!(status_for(e.0.kind()), status, "{}", e.0);
        }
        assert!(st.agent.get().is_none(), "no cache work");
        let ok = authorize_call(&st, Some("root-secret"), "db", &web)
            .await
            .unwrap();
        let d = st
            .server
            .authorize(Some("root-secret"), "db", &web)
            .unwrap();
        assert_eq!(
            body_json(ok).await,
            json!({"Authorized": d.allowed, "Reason": d.reason.to_string()})
        );
        assert_eq!(entries(&st, "intention-match"), 1);
    }

    fn served(cert: &ArcSwapOption<CertifiedKey>) -> crate::certs::CertInfo {
        let key = cert.load_full().unwrap();
        crate::certs::CertInfo::from_der(&key.cert[0]).unwrap()
    }

    /// Waits (in real time, bounded) for the HTTPS certificate's keeper.
    async fn until_served(
        cert: &ArcSwapOption<CertifiedKey>,
        what: &str,
        done: impl Fn(&crate::certs::CertInfo) -> bool,
    ) -> crate::certs::CertInfo {
        for _ in 0..500 {
            let info = served(cert);
            if done(&info) {
                return info;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the HTTPS certificate was not {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_https_certificate_is_the_servers_and_follows_renewal_and_rotation() {
        let (st, clock) = state();
        let bind: IpAddr = "10.1.2.3".parse().unwrap();
        let cert = st.https_cert("node-1", bind).await.unwrap();
        let td = crate::spiffe::TrustDomain::new(&st.server.trust_domain()).unwrap();
        let first = served(&cert);
        assert_eq!(first.uris, [crate::spiffe::ServerId::new(&td, "dc1").uri()]);
        assert_eq!(first.dns_names, ["server.dc1.consul", "localhost"]);
        assert_eq!(
            first.ip_addresses,
            [
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
                bind
            ]
        );
        // One leaf-cache entry, apart from every service's.
        assert_eq!(cached_leaves(&st), 1);

        // Renewed in its renewal window.
        let renew_at = first.not_before + (first.not_after - first.not_before) * 0.9;
        clock.advance(Duration::try_from(renew_at - st.server.clock().now()).unwrap());
        let renewed = until_served(&cert, "renewed", |i| i.serial != first.serial).await;
        assert_eq!(renewed.uris, first.uris);

        // Reissued from the new root when the active root changes.
        let mut config = st.server.ca_config(None).unwrap().value;
        config.config.insert("PrivateKeyBits".into(), json!(384));
        st.server.set_ca_config(None, config).unwrap();
        let active = st
            .server
            .ca_roots()
            .value
            .active()
            .unwrap()
            .signing_key_id
            .clone();
        let rotated = until_served(&cert, "reissued from the new root", |i| {
            i.authority_key_id
                .as_deref()
                .is_some_and(|k| crate::certs::colon_hex(k) == active)
        })
        .await;
        assert_eq!(rotated.ip_addresses, first.ip_addresses);
        assert_eq!(cached_leaves(&st), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leaves_for_many_names_are_evicted_once_unused_for_the_ttl() {
        let (st, clock) = state();
        for i in 0..20 {
            st.leaf(None, &format!("svc-{i}"), 0, Duration::ZERO)
                .await
                .unwrap();
        }
        assert_eq!(cached_leaves(&st), 20);
        clock.advance(DEFAULT_LAST_GET_TTL - Duration::from_secs(3600));
        // Reading counts as use (and renews the leaf, now past its renewal point).
        let (again, _) = st.leaf(None, "svc-0", 0, Duration::ZERO).await.unwrap();
        assert!(st.server.clock().now() < again.renew_at());
        clock.advance(Duration::from_secs(2 * 3600));
        until_cached(&st, 1).await;
        clock.advance(DEFAULT_LAST_GET_TTL);
        until_cached(&st, 0).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leaves_are_kept_apart_by_token() {
        let (st, _) = state();
        let (a, _) = st.leaf(None, "web", 0, Duration::ZERO).await.unwrap();
        let (b, _) = st
            .leaf(Some("other"), "web", 0, Duration::ZERO)
            .await
            .unwrap();
        assert_ne!(
            a.issued().unwrap().serial_number,
            b.issued().unwrap().serial_number
        );
        assert_eq!(cached_leaves(&st), 2);
        let (a2, meta) = st.leaf(None, "web", 0, Duration::ZERO).await.unwrap();
        assert!(meta.hit);
        assert!(Arc::ptr_eq(&a, &a2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_token_without_service_write_is_refused_before_any_leaf_work() {
        let mut c = ServerConfig::dev();
        c.acl_enabled = true;
        c.acl_default_policy = crate::acl::AclDefaultPolicy::Deny;
        c.acl_initial_management_token = Some("root-secret".into());
        let st = AppState::new(Server::start(c, crate::clock::system()).unwrap());
        let call = |token: Option<&'static str>| {
            let mut headers = HeaderMap::new();
            if let Some(t) = token {
                headers.insert("x-consul-token", HeaderValue::from_static(t));
            }
            agent_leaf(
                State(st.clone()),
                Path("web".to_owned()),
                Req::parse(&headers, None).unwrap(),
            )
        };
        for token in [None, Some("not-a-token")] {
            let e = call(token).await.unwrap_err();
            assert_eq!(status_for(e.0.kind()), StatusCode::FORBIDDEN, "{}", e.0);
        }
        assert!(st.agent.get().is_none(), "no cache, no key, no CSR");
        let ok = call(Some("root-secret")).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(cached_leaves(&st), 1);
    }
}
