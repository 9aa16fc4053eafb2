//! A client of the Consul HTTP API, used by `Backend::Http` and the `connect` CLI. It speaks
//! to a `connect agent` or to a real Consul agent alike.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::state::Indexed;
use crate::{Error, ErrorKind};

/// Where the HTTP API is and how to reach it: the part of a client's settings that does not
/// depend on who asks (an agent's token and datacenter live in its `AgentConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpEndpoint {
    /// `host:port`, or a URL (`http://…`, `https://…`). Default `127.0.0.1:8500`.
    pub address: Option<String>,
    /// PEM file of CAs to trust for HTTPS (`CONSUL_CACERT`).
    pub ca_file: Option<String>,
    /// Use HTTPS when the address has no scheme (`CONSUL_HTTP_SSL`).
    pub https: bool,
}

impl HttpEndpoint {
    /// The endpoint at `address`, plain HTTP unless the address says `https://`.
    pub fn new(address: impl Into<String>) -> HttpEndpoint {
        HttpEndpoint {
            address: Some(address.into()),
            ..HttpEndpoint::default()
        }
    }

    /// The base URL, `scheme://host:port`.
    pub fn base_url(&self) -> Result<String, Error> {
        let addr = self
            .address
            .as_deref()
            .unwrap_or("127.0.0.1:8500")
            .trim_end_matches('/');
        let url = if addr.starts_with("http://") || addr.starts_with("https://") {
            addr.to_owned()
        } else if let Some(rest) = addr.strip_prefix("unix://") {
            return Err(Error::new(
                ErrorKind::InvalidParameter,
                format!("unix socket addresses are not supported: {rest}"),
            ));
        } else {
            format!("{}://{addr}", if self.https { "https" } else { "http" })
        };
        reqwest::Url::parse(&url).map_err(|e| {
            Error::new(
                ErrorKind::InvalidParameter,
                format!("invalid address {url:?}: {e}"),
            )
        })?;
        Ok(url)
    }
}

/// Where and how to reach the API, and as whom; read from code or from Consul's environment
/// variables.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientConfig {
    /// Address and TLS settings.
    pub endpoint: HttpEndpoint,
    /// The ACL token sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// Default datacenter for requests.
    pub datacenter: Option<String>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("endpoint", &self.endpoint)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .finish()
    }
}

impl ClientConfig {
    /// Consul's variables: `CONSUL_HTTP_ADDR`, `CONSUL_HTTP_TOKEN`, `CONSUL_CACERT`,
    /// `CONSUL_HTTP_SSL`.
    pub fn from_env() -> ClientConfig {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Like [`ClientConfig::from_env`] over any lookup (tests pass a map). The one reader of
    /// Consul's variables: an empty variable counts as unset, as in Consul's API client.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> ClientConfig {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        ClientConfig {
            endpoint: HttpEndpoint {
                address: nonempty("CONSUL_HTTP_ADDR"),
                ca_file: nonempty("CONSUL_CACERT"),
                https: nonempty("CONSUL_HTTP_SSL")
                    .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "t")),
            },
            token: nonempty("CONSUL_HTTP_TOKEN"),
            datacenter: None,
        }
    }

    /// The base URL, `scheme://host:port`.
    pub fn base_url(&self) -> Result<String, Error> {
        self.endpoint.base_url()
    }
}

/// A forwarded request's answer ([`ApiClient::forward`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    /// The HTTP status.
    pub status: u16,
    /// `Content-Type` and the `X-Consul-*` headers, lower-case names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

/// An API client.
#[derive(Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    datacenter: Option<String>,
    http: reqwest::Client,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

fn tls_config(ca_file: Option<&str>) -> Result<rustls::ClientConfig, Error> {
    let mut roots = rustls::RootCertStore::empty();
    if let Some(path) = ca_file {
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::new(ErrorKind::Io, format!("reading CA file {path}: {e}")))?;
        for cert in crate::certs::parse_pem_certificates(&pem)? {
            roots.add(cert).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidCertificate,
                    format!("CA file {path}: {e}"),
                )
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::new(ErrorKind::Tls, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The query of a Consul blocking query (Consul API docs: Blocking Queries): `index` and
/// `wait` when `min_index` is set, nothing for a plain read.
pub fn blocking_query(min_index: u64, wait: Duration) -> Vec<(&'static str, String)> {
    if min_index == 0 {
        return Vec::new();
    }
    vec![
        ("index", min_index.to_string()),
        ("wait", format!("{}ms", wait.as_millis().max(1))),
    ]
}

impl ApiClient {
    /// A client for `config`.
    pub fn new(config: &ClientConfig) -> Result<ApiClient, Error> {
        let tls = tls_config(config.endpoint.ca_file.as_deref())?;
        ApiClient::build(config, config.base_url()?, tls, usize::MAX)
    }

    /// A client with its own TLS configuration (server-to-server calls, which check a
    /// SPIFFE identity rather than a host name); the address is reached over HTTPS unless it
    /// says `http://`.
    pub fn with_tls(config: &ClientConfig, tls: rustls::ClientConfig) -> Result<ApiClient, Error> {
        let mut endpoint = config.endpoint.clone();
        endpoint.https = true;
        // No idle connections kept: the server's own certificate arrives after its first
        // calls, and a pooled connection would keep calling without it.
        ApiClient::build(config, endpoint.base_url()?, tls, 0)
    }

    fn build(
        config: &ClientConfig,
        base: String,
        tls: rustls::ClientConfig,
        max_idle: usize,
    ) -> Result<ApiClient, Error> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_secs(10))
            .pool_max_idle_per_host(max_idle)
            .build()
            .map_err(|e| Error::new(ErrorKind::Http, e.to_string()))?;
        Ok(ApiClient {
            base,
            token: config.token.clone(),
            datacenter: config.datacenter.clone(),
            http,
        })
    }

    /// The same client sending `token` instead of the configured one.
    pub fn with_token(&self, token: &str) -> ApiClient {
        ApiClient {
            token: (!token.is_empty()).then(|| token.to_owned()),
            ..self.clone()
        }
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<(Vec<u8>, u64), Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .query(query);
        if let Some(dc) = &self.datacenter
            && !query.iter().any(|(k, _)| *k == "dc")
        {
            req = req.query(&[("dc", dc)]);
        }
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t);
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        req = req.timeout(timeout.unwrap_or(Duration::from_secs(60)));
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status();
        let index = resp
            .headers()
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let bytes = resp.bytes().await.map_err(transport_error)?.to_vec();
        if !status.is_success() {
            return Err(status_error(status, &bytes));
        }
        Ok((bytes, index))
    }

    /// GET a JSON document; `wait` blocks as Consul's blocking queries do.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<Indexed<T>, Error> {
        let wait = query
            .iter()
            .find(|(k, _)| *k == "wait")
            .and_then(|(_, v)| crate::duration::parse_go_duration(v).ok());
        // Leave the server room to answer a blocking query before we give up on it.
        let timeout = wait.map(|w| w + w / 16 + Duration::from_secs(10));
        let (bytes, index) = self.send(Method::GET, path, query, None, timeout).await?;
        let value = crate::json::from_slice(&bytes)
            .map_err(|m| Error::new(ErrorKind::Http, format!("decoding {path}: {m}")))?;
        Ok(Indexed { value, index })
    }

    /// Sends a request as received from a caller (`path_and_query` as it came, the caller's
    /// `headers`) and returns the answer's status, `Content-Type`, `X-Consul-*` headers (the
    /// index a blocking client waits on) and body unchanged: a server forwarding a request to
    /// another datacenter's servers, or to its datacenter's leader.
    pub async fn forward(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Forwarded, Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path_and_query}", self.base))
            .timeout(timeout)
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.map_err(transport_error)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter(|(k, _)| *k == "content-type" || k.as_str().starts_with("x-consul-"))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let body = resp.bytes().await.map_err(transport_error)?.to_vec();
        Ok(Forwarded {
            status,
            headers,
            body,
        })
    }

    /// GET a raw body (`?pem=true`).
    pub async fn get_raw(&self, path: &str, query: &[(&str, String)]) -> Result<Vec<u8>, Error> {
        Ok(self.send(Method::GET, path, query, None, None).await?.0)
    }

    /// Sends `body` as JSON with `method` and decodes the JSON answer.
    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&B>,
    ) -> Result<T, Error> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| Error::new(ErrorKind::Internal, e.to_string()))?;
        let (bytes, _) = self.send(method, path, query, body, None).await?;
        let bytes = if bytes.is_empty() {
            b"null".to_vec()
        } else {
            bytes
        };
        crate::json::from_slice(&bytes)
            .map_err(|m| Error::new(ErrorKind::Http, format!("decoding {path}: {m}")))
    }
}

fn transport_error(e: reqwest::Error) -> Error {
    let kind = if e.is_timeout() {
        ErrorKind::Timeout
    } else if e.is_connect() {
        ErrorKind::ConnectionRefused
    } else {
        ErrorKind::Http
    };
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    Error::new(kind, msg)
}

/// Maps Consul's status codes back to kinds, keeping the server's text.
fn status_error(status: StatusCode, body: &[u8]) -> Error {
    let text = String::from_utf8_lossy(body).trim().to_owned();
    let kind = match status {
        StatusCode::FORBIDDEN if text.contains("ACL not found") => ErrorKind::AclNotFound,
        StatusCode::FORBIDDEN => ErrorKind::PermissionDenied,
        StatusCode::NOT_FOUND => ErrorKind::NotFound,
        StatusCode::BAD_REQUEST => ErrorKind::InvalidParameter,
        StatusCode::TOO_MANY_REQUESTS => ErrorKind::RateLimited,
        _ if text == "Rate limit reached, try again later" => ErrorKind::RateLimited,
        _ => ErrorKind::Http,
    };
    let msg = if text.is_empty() {
        format!("HTTP {status}")
    } else {
        text
    };
    Error::new(kind, msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn config_reads_consuls_environment() {
        let env: HashMap<&str, &str> = [
            ("CONSUL_HTTP_ADDR", "10.0.0.1:8501"),
            ("CONSUL_HTTP_TOKEN", "tok"),
            ("CONSUL_CACERT", "/ca.pem"),
            ("CONSUL_HTTP_SSL", "true"),
        ]
        .into();
        let c = ClientConfig::from_lookup(|k| env.get(k).map(|v| (*v).to_owned()));
        assert_eq!(c.base_url().unwrap(), "https://10.0.0.1:8501");
        assert_eq!(c.token.as_deref(), Some("tok"));
        assert_eq!(c.endpoint.ca_file.as_deref(), Some("/ca.pem"));
        assert!(!format!("{c:?}").contains("tok\""));
        let d = ClientConfig::from_lookup(|_| None);
        assert_eq!(d.base_url().unwrap(), "http://127.0.0.1:8500");
        let e = ClientConfig {
            endpoint: HttpEndpoint::new("http://[bad"),
            ..Default::default()
        };
        assert_eq!(
            e.base_url().unwrap_err().kind(),
            ErrorKind::InvalidParameter
        );
    }

    #[test]
    fn statuses_map_to_kinds() {
        assert_eq!(
            status_error(StatusCode::FORBIDDEN, b"Permission denied").kind(),
            ErrorKind::PermissionDenied
        );
        assert_eq!(
            status_error(StatusCode::FORBIDDEN, b"ACL not found").kind(),
            ErrorKind::AclNotFound
        );
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, b"").to_string(),
            "HTTP 404 Not Found"
        );
        assert_eq!(
            status_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                b"Rate limit reached, try again later"
            )
            .kind(),
            ErrorKind::RateLimited
        );
    }

    #[tokio::test]
    async fn refused_connections_are_typed() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let c = ApiClient::new(&ClientConfig {
            endpoint: HttpEndpoint::new(addr.to_string()),
            ..Default::default()
        })
        .unwrap();
        let e = c
            .get::<serde_json::Value>("/v1/agent/self", &[])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    }
}
