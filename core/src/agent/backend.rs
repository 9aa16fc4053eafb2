//! Where the agent's data comes from: a [`Server`] in this process, or the HTTP API of a
//! `connect agent` (or of a real Consul agent).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use super::InProcess;
use crate::ca::{CaConfiguration, IndexedCaRoots, IssuedCert};
use crate::catalog::{ServiceEntry, ServiceRegistration};
use crate::http::client::{ApiClient, ClientConfig, blocking_query};
use crate::intentions::{Intention, IntentionAction};
use crate::server::{JwtSvid, JwtSvidRequest, JwtValidateRequest, JwtValidation};
use crate::state::Indexed;
use crate::{Error, ErrorKind};

/// The agent's source of truth.
#[derive(Debug, Clone)]
pub enum Backend {
    /// A server in this process: every call is a function call (through a trait object, so
    /// that HTTP-only executables do not link the server: `agent::local`).
    InProcess(InProcess),
    /// The HTTP API of a `connect agent` or a Consul agent.
    Http(HttpBackend),
}

/// An HTTP backend with what it learned about its peer.
#[derive(Debug, Clone)]
pub struct HttpBackend {
    client: ApiClient,
    /// Set once the peer answered 404 to our CSR endpoint: it is a Consul agent, which only
    /// hands out leaves with a key it generated itself.
    consul_peer: Arc<AtomicBool>,
}

impl HttpBackend {
    /// A backend speaking to `config`'s address.
    pub fn new(config: &ClientConfig) -> Result<HttpBackend, Error> {
        Ok(HttpBackend {
            client: ApiClient::new(config)?,
            consul_peer: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The underlying API client.
    pub fn client(&self) -> &ApiClient {
        &self.client
    }
}

/// Consul's answer for a datacenter the server cannot forward to.
pub(crate) fn no_path_to_datacenter(dc: &str) -> Error {
    Error::new(
        ErrorKind::InvalidParameter,
        format!("No path to datacenter: {dc}"),
    )
}

/// What signing returned: the certificate, and a key when the peer generated it (a Consul
/// agent), else `None` because the key is ours.
#[derive(Debug, Clone)]
pub struct Signed {
    /// The certificate bundle and its metadata.
    pub issued: IssuedCert,
    /// The peer's key, only from a Consul agent's leaf endpoint.
    pub peer_key_pem: Option<String>,
}

impl Backend {
    /// The CA roots, blocking until their index passes `min_index` (or `wait` elapses).
    pub async fn roots(
        &self,
        min_index: u64,
        wait: Duration,
    ) -> Result<Indexed<IndexedCaRoots>, Error> {
        match self {
            Backend::InProcess(s) => s.local().roots(min_index, wait).await,
            Backend::Http(h) => {
                let r = h
                    .client
                    .get::<IndexedCaRoots>(
                        "/v1/agent/connect/ca/roots",
                        &blocking_query(min_index, wait),
                    )
                    .await?;
                if r.value.trust_domain.is_empty() {
                    return Err(Error::new(
                        ErrorKind::CaNotInitialized,
                        "cluster has no CA bootstrapped yet",
                    ));
                }
                Ok(Indexed {
                    value: r.value,
                    index: r.index,
                })
            }
        }
    }

    /// Signs `csr_pem` for `service` with `token`. Over HTTP it uses libconnect's CSR
    /// endpoint, so the key never leaves this process; a Consul agent has none, and then its
    /// leaf endpoint (which returns the agent's key) is used instead (ARCHITECTURE.md, Principles:
    /// keys stay local, its one exception).
    pub async fn sign(
        &self,
        token: Option<&str>,
        service: &str,
        csr_pem: &str,
    ) -> Result<Signed, Error> {
        match self {
            Backend::InProcess(s) => s.local().sign(token, csr_pem).await,
            Backend::Http(h) => {
                let client = h.with_token(token)?;
                if !h.consul_peer.load(Ordering::Relaxed) {
                    match client
                        .call::<_, IssuedCert>(
                            Method::PUT,
                            "/v1/connect/ca/sign",
                            &[],
                            Some(&json!({"CSR": csr_pem})),
                        )
                        .await
                    {
                        Ok(issued) => {
                            return Ok(Signed {
                                issued,
                                peer_key_pem: None,
                            });
                        }
                        Err(e) if e.kind() == ErrorKind::NotFound => {
                            h.consul_peer.store(true, Ordering::Relaxed)
                        }
                        Err(e) => return Err(e),
                    }
                }
                let leaf = client
                    .get::<IssuedCert>(&format!("/v1/agent/connect/ca/leaf/{service}"), &[])
                    .await?
                    .value;
                let key = leaf.private_key_pem.clone();
                Ok(Signed {
                    issued: leaf,
                    peer_key_pem: Some(key),
                })
            }
        }
    }

    /// A JWT-SVID for `service` with `audiences`, signed by the datacenter's JWT key
    /// (`service:write` with `token`). Over HTTP through libconnect's
    /// `PUT /v1/agent/connect/jwt/sign/:service`; a Consul agent has no such endpoint.
    pub async fn jwt_svid(
        &self,
        token: Option<&str>,
        service: &str,
        audiences: &[String],
    ) -> Result<JwtSvid, Error> {
        match self {
            Backend::InProcess(s) => s.local().jwt_svid(token, service, audiences).await,
            Backend::Http(h) => {
                crate::spiffe::check_service_name("service name", service)?;
                let body = JwtSvidRequest {
                    audience: audiences.to_vec(),
                };
                h.with_token(token)?
                    .call(
                        Method::PUT,
                        &format!("/v1/agent/connect/jwt/sign/{service}"),
                        &[],
                        Some(&body),
                    )
                    .await
            }
        }
    }

    /// Checks a JWT-SVID for `audience` against the datacenter's JWT keys: signature, expiry,
    /// audience. Over HTTP through `POST /v1/agent/connect/jwt/validate`.
    pub async fn validate_jwt_svid(
        &self,
        token: Option<&str>,
        jwt: &str,
        audience: &str,
    ) -> Result<JwtValidation, Error> {
        match self {
            Backend::InProcess(s) => s.local().validate_jwt_svid(jwt, audience),
            Backend::Http(h) => {
                let body = JwtValidateRequest {
                    token: jwt.to_owned(),
                    audience: audience.to_owned(),
                };
                h.with_token(token)?
                    .call(
                        Method::POST,
                        "/v1/agent/connect/jwt/validate",
                        &[],
                        Some(&body),
                    )
                    .await
            }
        }
    }

    /// Signs this server's own certificate (its server identity, the HTTPS listener's), as
    /// the in-process server signs for itself, with no token. Over HTTP no endpoint signs a
    /// server identity for a caller, so this is refused.
    pub(crate) async fn sign_agent(&self, csr_pem: &str) -> Result<Signed, Error> {
        match self {
            Backend::InProcess(s) => s.local().sign_agent(csr_pem).await,
            Backend::Http(_) => Err(Error::new(
                ErrorKind::InvalidParameter,
                "a server certificate is signed only by a server in this process",
            )),
        }
    }

    /// Intentions whose destination covers `service`, in evaluation order.
    pub async fn intention_match(
        &self,
        token: Option<&str>,
        service: &str,
        min_index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<Intention>>, Error> {
        match self {
            Backend::InProcess(s) => {
                s.local()
                    .intention_match(token, service, min_index, wait)
                    .await
            }
            Backend::Http(h) => {
                let mut q = blocking_query(min_index, wait);
                q.push(("by", "destination".into()));
                q.push(("name", service.into()));
                let r = h
                    .with_token(token)?
                    .get::<BTreeMap<String, Vec<Intention>>>("/v1/connect/intentions/match", &q)
                    .await?;
                let list = r.value.into_values().next().unwrap_or_default();
                Ok(Indexed {
                    value: list,
                    index: r.index,
                })
            }
        }
    }

    /// Passing instances of `service` (Consul API docs, Health: `/v1/health/connect` when
    /// `connect`, else `/v1/health/service`, which also lists mesh gateways), in `datacenter`
    /// (`None`: the backend's own). A datacenter this backend cannot reach is an
    /// `InvalidParameter` error (`No path to datacenter: …`), never an empty list.
    pub async fn health(
        &self,
        token: Option<&str>,
        service: &str,
        connect: bool,
        datacenter: Option<&str>,
        min_index: u64,
        wait: Duration,
    ) -> Result<Indexed<Vec<ServiceEntry>>, Error> {
        match self {
            Backend::InProcess(s) => {
                s.local()
                    .health(token, service, connect, datacenter, min_index, wait)
                    .await
            }
            Backend::Http(h) => {
                let mut q = blocking_query(min_index, wait);
                q.push(("passing", "1".into()));
                if let Some(dc) = datacenter {
                    q.push(("dc", dc.into()));
                }
                let kind = if connect { "connect" } else { "service" };
                let r = h
                    .with_token(token)?
                    .get::<Vec<ServiceEntry>>(&format!("/v1/health/{kind}/{service}"), &q)
                    .await?;
                Ok(Indexed {
                    value: r.value,
                    index: r.index,
                })
            }
        }
    }

    /// Creates or replaces the intention `source → destination` with `action`.
    pub async fn intention_upsert(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
        action: IntentionAction,
    ) -> Result<(), Error> {
        match self {
            Backend::InProcess(s) => {
                s.local()
                    .intention_upsert(token, source, destination, action)
                    .await
            }
            Backend::Http(h) => {
                let body = json!({"SourceType": "consul", "Action": action.as_str()});
                let q = exact_pair(source, destination);
                h.write(token, Method::PUT, INTENTIONS_EXACT, &q, Some(&body))
                    .await
            }
        }
    }

    /// Deletes the intention `source → destination`; `NotFound` when there is none.
    ///
    /// Consul's `DELETE /v1/connect/intentions/exact` succeeds for a missing pair (Consul API
    /// docs, Connect Intentions), so over HTTP the pair is first read with
    /// `GET /v1/connect/intentions/exact` (404 when missing), then deleted either way (so a
    /// token that may not write gets `PermissionDenied`, as in process). Between the read and
    /// the delete another client may delete it too; both then succeed, as the endpoint does.
    pub async fn intention_delete(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
    ) -> Result<(), Error> {
        let deleted = match self {
            Backend::InProcess(s) => {
                s.local()
                    .intention_delete(token, source, destination)
                    .await?
            }
            Backend::Http(h) => {
                let q = exact_pair(source, destination);
                let existed = match h
                    .with_token(token)?
                    .get::<serde_json::Value>(INTENTIONS_EXACT, &q)
                    .await
                {
                    Err(e) if e.kind() == ErrorKind::NotFound => false,
                    Err(e) => return Err(e),
                    Ok(_) => true,
                };
                // Sent either way: its ACL check comes first, as in process (a token that may
                // not write gets `PermissionDenied`, not `NotFound`).
                h.write::<()>(token, Method::DELETE, INTENTIONS_EXACT, &q, None)
                    .await?;
                existed
            }
        };
        if deleted {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::NotFound,
            format!("Intention not found: no intention {source} => {destination}"),
        ))
    }

    /// Whether `source` may connect to `destination` (`/v1/connect/intentions/check`).
    pub async fn intention_check(
        &self,
        token: Option<&str>,
        source: &str,
        destination: &str,
    ) -> Result<bool, Error> {
        match self {
            Backend::InProcess(s) => s.local().intention_check(token, source, destination),
            Backend::Http(h) => {
                let q = exact_pair(source, destination);
                let r = h
                    .with_token(token)?
                    .get::<serde_json::Value>("/v1/connect/intentions/check", &q)
                    .await?;
                Ok(r.value
                    .get("Allowed")
                    .and_then(serde_json::Value::as_bool)
                    .unwrap_or(false))
            }
        }
    }

    /// Applies a CA configuration (rotation when the key material changes).
    pub async fn ca_set_config(
        &self,
        token: Option<&str>,
        config: CaConfiguration,
    ) -> Result<(), Error> {
        match self {
            Backend::InProcess(s) => s.local().ca_set_config(token, config).await,
            Backend::Http(h) => {
                h.write(
                    token,
                    Method::PUT,
                    "/v1/connect/ca/configuration",
                    &[],
                    Some(&config),
                )
                .await
            }
        }
    }

    /// Registers a service instance on the agent's node (`/v1/agent/service/register`).
    pub async fn register_service(
        &self,
        token: Option<&str>,
        registration: ServiceRegistration,
    ) -> Result<(), Error> {
        match self {
            Backend::InProcess(s) => s.local().register_service(token, registration).await,
            Backend::Http(h) => {
                let path = "/v1/agent/service/register";
                h.write(token, Method::PUT, path, &[], Some(&registration))
                    .await
            }
        }
    }

    /// Deregisters the instance `service_id` (`/v1/agent/service/deregister/:id`).
    pub async fn deregister_service(
        &self,
        token: Option<&str>,
        service_id: &str,
    ) -> Result<(), Error> {
        match self {
            Backend::InProcess(s) => s.local().deregister_service(token, service_id).await,
            Backend::Http(h) => {
                let path = format!(
                    "/v1/agent/service/deregister/{}",
                    percent_encoding::utf8_percent_encode(
                        service_id,
                        percent_encoding::NON_ALPHANUMERIC
                    )
                );
                h.write::<()>(token, Method::PUT, &path, &[], None).await
            }
        }
    }
}

impl HttpBackend {
    /// The client, with `token` replacing the configured one when given.
    fn with_token(&self, token: Option<&str>) -> Result<ApiClient, Error> {
        Ok(match token {
            Some(t) => self.client.with_token(t),
            None => self.client.clone(),
        })
    }

    /// A write whose answer callers do not need: `method path?query` with `body` as JSON,
    /// under `token` when given.
    async fn write<B: serde::Serialize>(
        &self,
        token: Option<&str>,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<(), Error> {
        self.with_token(token)?
            .call::<B, serde_json::Value>(method, path, query, body)
            .await
            .map(|_| ())
    }
}

/// Consul's endpoint for one intention by its source and destination names.
const INTENTIONS_EXACT: &str = "/v1/connect/intentions/exact";

/// The query of [`INTENTIONS_EXACT`] (and of the check endpoint).
fn exact_pair(source: &str, destination: &str) -> [(&'static str, String); 2] {
    [
        ("source", source.to_owned()),
        ("destination", destination.to_owned()),
    ]
}
