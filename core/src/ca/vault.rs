//! The Vault CA provider (Consul CA docs, Vault CA provider): the root and the leaf-signing
//! intermediate live in two PKI secrets engines of a Vault (or OpenBao) server, which signs
//! every leaf; libconnect keeps no CA key.
//!
//! HTTP to Vault goes through reqwest on the process-wide runtime ([`crate::blocking::runtime`]):
//! the provider's methods are synchronous (they run under the CA manager's lock, on the
//! server's blocking threads), so each call is spawned on that runtime and waited for, inside
//! `block_in_place` when the caller is a worker of a multi-threaded runtime.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

use super::builtin::{ca_common_name, check_intermediate_csr, compact_uid, signing_uri};
use super::config::CommonCaConfig;
use super::provider::{Provider, ProviderConfig, RemoteSigner};
use super::{CaError, Csr, KeyType};
use crate::ErrorKind;
use crate::certs;
use crate::duration::format_go_duration;
use crate::json::{DecodeError, Rules};

/// The role Consul creates in the intermediate mount and signs leaves with.
const LEAF_ROLE: &str = "leaf-cert";
/// How long one request to Vault may take before the signing fails with `Timeout`.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// `AuthMethod`: how to log in to Vault instead of a fixed token.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct VaultAuthMethod {
    /// `Type`: `approle`, `token`, ... (the login path is `auth/<MountPath>/login`).
    #[serde(rename = "Type")]
    pub method_type: String,
    /// `MountPath`, default the type.
    pub mount_path: String,
    /// `Params`: the login request's body (for AppRole `role_id` and `secret_id`).
    pub params: Map<String, Value>,
}

impl fmt::Debug for VaultAuthMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultAuthMethod")
            .field("type", &self.method_type)
            .field("mount_path", &self.mount_path)
            .field("params", &self.params.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Options of the `vault` provider, with Consul's names.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub struct VaultCaConfig {
    /// The common options.
    #[serde(skip)]
    pub common: CommonCaConfig,
    /// `Address` of the Vault server (`http://…` or `https://…`).
    pub address: String,
    /// `Token`: write-only; exactly one of it and `AuthMethod`.
    #[serde(deserialize_with = "secret")]
    pub token: Option<Zeroizing<String>>,
    /// `AuthMethod`.
    pub auth_method: Option<VaultAuthMethod>,
    /// `RootPKIPath`, with a trailing `/`.
    #[serde(rename = "RootPKIPath")]
    pub root_pki_path: String,
    /// `IntermediatePKIPath`, with a trailing `/`; unique per datacenter.
    #[serde(rename = "IntermediatePKIPath")]
    pub intermediate_pki_path: String,
    /// `Namespace` (Vault Enterprise): sent as `X-Vault-Namespace`.
    pub namespace: String,
    /// `RootPKINamespace`: namespace of the root mount, when not `Namespace`.
    #[serde(rename = "RootPKINamespace")]
    pub root_pki_namespace: String,
    /// `IntermediatePKINamespace`: namespace of the intermediate mount.
    #[serde(rename = "IntermediatePKINamespace")]
    pub intermediate_pki_namespace: String,
    /// `CAFile`: PEM of the CAs that sign Vault's HTTPS certificate.
    #[serde(rename = "CAFile")]
    pub ca_file: String,
    /// `CAPath`: a directory of such PEM files.
    #[serde(rename = "CAPath")]
    pub ca_path: String,
    /// `CertFile`: client certificate for Vault's TLS (with `KeyFile`).
    pub cert_file: String,
    /// `KeyFile`: its key.
    pub key_file: String,
    /// `TLSServerName`: the name to verify Vault's certificate against.
    #[serde(rename = "TLSServerName")]
    pub tls_server_name: String,
    /// `TLSSkipVerify`: do not verify Vault's certificate (tests only).
    #[serde(rename = "TLSSkipVerify")]
    pub tls_skip_verify: bool,
}

impl fmt::Debug for VaultCaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultCaConfig")
            .field("common", &self.common)
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("auth_method", &self.auth_method)
            .field("root_pki_path", &self.root_pki_path)
            .field("intermediate_pki_path", &self.intermediate_pki_path)
            .field("namespace", &self.namespace)
            .field("ca_file", &self.ca_file)
            .field("tls_skip_verify", &self.tls_skip_verify)
            .finish_non_exhaustive()
    }
}

impl VaultCaConfig {
    /// Reads and validates a raw `Config` map, with Consul's messages.
    pub fn from_map(map: &Map<String, Value>) -> Result<Self, CaError> {
        let common = CommonCaConfig::from_map(map)?;
        let mut c: VaultCaConfig =
            crate::json::decode(Value::Object(map.clone()), Rules::CONFIG)
                .map_err(|e: DecodeError| CaError::InvalidConfig(e.to_string()))?;
        c.common = common;
        for path in [&mut c.root_pki_path, &mut c.intermediate_pki_path] {
            if !path.is_empty() && !path.ends_with('/') {
                path.push('/');
            }
        }
        if let Some(auth) = &mut c.auth_method
            && auth.mount_path.is_empty()
        {
            auth.mount_path = auth.method_type.clone();
        }
        c.validate()?;
        Ok(c)
    }

    /// Consul's provider-level checks, in Consul's order.
    pub fn validate(&self) -> Result<(), CaError> {
        let bad = |m: &str| Err(CaError::InvalidConfig(m.to_owned()));
        match (&self.token, &self.auth_method) {
            (None, None) => {
                return bad("must provide a Vault token or configure a Vault auth method");
            }
            (Some(_), Some(_)) => {
                return bad(
                    "only one of Vault token or Vault auth method can be provided, but not both",
                );
            }
            _ => {}
        }
        if let Some(auth) = &self.auth_method {
            match auth.method_type.as_str() {
                "" => return bad("auth method type must be set"),
                "approle" | "token" | "userpass" | "ldap" | "jwt" | "kubernetes" | "cert"
                | "github" | "okta" | "radius" => {}
                other => {
                    return Err(CaError::InvalidConfig(format!(
                        "auth method {other:?} is not supported by libconnect's Vault provider"
                    )));
                }
            }
        }
        if self.root_pki_path.trim_matches('/').is_empty() {
            return bad("must provide a valid path to a root PKI backend");
        }
        if self.intermediate_pki_path.trim_matches('/').is_empty() {
            return bad("must provide a valid path for the intermediate PKI backend");
        }
        if self.root_pki_path == self.intermediate_pki_path {
            return bad("RootPKIPath and IntermediatePKIPath must not be the same");
        }
        if self.address.is_empty() {
            return bad("must provide the Vault address (Address)");
        }
        match reqwest::Url::parse(&self.address) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => {
                return Err(CaError::InvalidConfig(format!(
                    "Vault Address {:?} is not an http:// or https:// URL",
                    self.address
                )));
            }
        }
        self.common.validate()
    }
}

fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Zeroizing<String>>, D::Error> {
    let s = String::deserialize(d)?;
    Ok((!s.is_empty()).then(|| Zeroizing::new(s)))
}

/// Whether a key of a provider's `Config` (or of its `AuthMethod.Params`) holds a secret that
/// the API never returns: the built-in CA's `PrivateKey`, Vault's `Token`, and the login
/// secrets of an auth method (`secret_id`, `password`, `jwt`, ...).
pub(crate) fn is_secret_key(key: &str) -> bool {
    let k = key.replace(['_', '-'], "").to_ascii_lowercase();
    k == "privatekey"
        || k == "token"
        || k.contains("secret")
        || k.contains("password")
        || k == "jwt"
}

/// `map` without its secrets: top-level secret keys removed, and the secret parameters of an
/// `AuthMethod` replaced by `<redacted>`.
pub(crate) fn redact_config(map: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in map {
        if is_secret_key(k) {
            continue;
        }
        let mut v = v.clone();
        if k.replace('_', "").eq_ignore_ascii_case("AuthMethod")
            && let Value::Object(auth) = &mut v
        {
            for (ak, av) in auth.iter_mut() {
                if ak.eq_ignore_ascii_case("params")
                    && let Value::Object(params) = av
                {
                    for (pk, pv) in params.iter_mut() {
                        if is_secret_key(pk) {
                            *pv = Value::String("<redacted>".into());
                        }
                    }
                }
            }
        }
        out.insert(k.clone(), v);
    }
    out
}

/// The HTTP side: address, TLS, the current token and the outage flag, shared with the
/// token-renewal task.
struct VaultClient {
    base: String,
    http: reqwest::Client,
    token: RwLock<Zeroizing<String>>,
    namespace: String,
    auth: Option<VaultAuthMethod>,
    /// Set while Vault cannot be reached, so that an outage is logged once.
    down: AtomicBool,
}

impl fmt::Debug for VaultClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultClient")
            .field("base", &self.base)
            .field("namespace", &self.namespace)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// A failed call to Vault, already typed.
fn vault_error(kind: ErrorKind, message: String) -> CaError {
    CaError::Provider { kind, message }
}

fn tls_config(cfg: &VaultCaConfig) -> Result<rustls::ClientConfig, CaError> {
    let provider = crate::tls::crypto_provider(crate::tls::KeyExchange::default());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CaError::Internal(e.to_string()))?;
    let builder = if cfg.tls_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let mut files = Vec::new();
        if !cfg.ca_file.is_empty() {
            files.push(std::path::PathBuf::from(&cfg.ca_file));
        }
        if !cfg.ca_path.is_empty() {
            let dir = std::fs::read_dir(&cfg.ca_path).map_err(|e| {
                CaError::InvalidConfig(format!("reading CAPath {}: {e}", cfg.ca_path))
            })?;
            files.extend(dir.flatten().map(|e| e.path()).filter(|p| p.is_file()));
        }
        for path in files {
            let pem = std::fs::read_to_string(&path).map_err(|e| {
                CaError::InvalidConfig(format!("reading CA file {}: {e}", path.display()))
            })?;
            for cert in certs::parse_pem_certificates(&pem)? {
                roots.add(cert).map_err(|e| {
                    CaError::InvalidConfig(format!("CA file {}: {e}", path.display()))
                })?;
            }
        }
        builder.with_root_certificates(roots)
    };
    if cfg.cert_file.is_empty() != cfg.key_file.is_empty() {
        return Err(CaError::InvalidConfig(
            "CertFile and KeyFile must be set together".into(),
        ));
    }
    if cfg.cert_file.is_empty() {
        return Ok(builder.with_no_client_auth());
    }
    let read = |p: &str| {
        std::fs::read_to_string(p).map_err(|e| CaError::InvalidConfig(format!("reading {p}: {e}")))
    };
    let chain = certs::parse_pem_certificates(&read(&cfg.cert_file)?)?;
    let key_pem = Zeroizing::new(read(&cfg.key_file)?);
    let key = {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| CaError::InvalidKey(format!("KeyFile {}: {e}", cfg.key_file)))?
    };
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| CaError::InvalidConfig(format!("CertFile/KeyFile: {e}")))
}

/// `TLSSkipVerify`: any certificate is accepted, signatures are still checked. The TLS tests
/// use it too, for a client that is about what a server makes of it.
#[derive(Debug)]
pub(crate) struct SkipVerify(pub(crate) Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Runs `fut` on the process-wide runtime and waits for it from synchronous code.
fn run_blocking<T: Send + 'static>(
    fut: impl Future<Output = Result<T, CaError>> + Send + 'static,
) -> Result<T, CaError> {
    let handle = crate::blocking::runtime().map_err(|e| CaError::Internal(e.to_string()))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    handle.spawn(async move {
        let _ = tx.send(fut.await);
    });
    let wait = move || {
        rx.recv().unwrap_or_else(|_| {
            Err(CaError::Internal(
                "the Vault request was dropped by its runtime".into(),
            ))
        })
    };
    // On a worker of a multi-threaded runtime, hand the worker's other tasks to another thread
    // while this one waits; elsewhere (a blocking thread, a plain thread) just wait. The request
    // itself never runs on the waiting thread, so a current-thread runtime cannot deadlock.
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

impl VaultClient {
    fn new(cfg: &VaultCaConfig) -> Result<VaultClient, CaError> {
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config(cfg)?)
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| CaError::Internal(format!("building the Vault client: {e}")))?;
        Ok(VaultClient {
            base: cfg.address.trim_end_matches('/').to_owned(),
            http,
            token: RwLock::new(cfg.token.clone().unwrap_or_default()),
            namespace: cfg.namespace.clone(),
            auth: cfg.auth_method.clone(),
            down: AtomicBool::new(false),
        })
    }

    fn token(&self) -> Zeroizing<String> {
        self.token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_token(&self, token: Zeroizing<String>) {
        *self
            .token
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token;
    }

    /// One request; `Ok(None)` for 404 or an empty body. Transport failures are logged once
    /// per outage; Vault's own refusals carry its messages (which never hold the token).
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        namespace: &str,
        body: Option<&Value>,
        authenticated: bool,
    ) -> Result<Option<Value>, CaError> {
        let mut req = self
            .http
            .request(method.clone(), format!("{}/v1/{path}", self.base));
        if authenticated {
            req = req.header("X-Vault-Token", self.token().as_str());
        }
        let ns = if namespace.is_empty() {
            &self.namespace
        } else {
            namespace
        };
        if !ns.is_empty() {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(&e)),
        };
        let status = resp.status();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Err(self.transport_error(&e)),
        };
        if self.down.swap(false, Ordering::Relaxed) {
            tracing::info!(vault = %self.base, "Vault is reachable again");
        }
        if status == reqwest::StatusCode::NOT_FOUND && method == reqwest::Method::GET {
            return Ok(None);
        }
        if !status.is_success() {
            let text = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| {
                    v.get("errors").and_then(Value::as_array).map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                })
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
            // A refusal by Vault is the CA's failure, not the API caller's: 500, as in Consul
            // (a 403 here would read as the caller's ACL token being refused).
            let kind = match status.as_u16() {
                429 => ErrorKind::RateLimited,
                _ => ErrorKind::Http,
            };
            return Err(vault_error(
                kind,
                format!("Vault {method} {path}: HTTP {status}: {text}"),
            ));
        }
        if bytes.is_empty() {
            return Ok(None);
        }
        serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            vault_error(
                ErrorKind::Http,
                format!("Vault {method} {path}: invalid JSON: {e}"),
            )
        })
    }

    fn transport_error(&self, e: &reqwest::Error) -> CaError {
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::ConnectionRefused
        };
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        let message = format!("Vault at {} is unreachable: {msg}", self.base);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                vault = %self.base,
                error = %msg,
                "Vault is unreachable: new certificates cannot be signed until it returns; issued ones keep serving"
            );
        }
        vault_error(kind, message)
    }

    /// Logs in with the auth method; stores the token and returns its lease.
    async fn login(&self) -> Result<Lease, CaError> {
        let Some(auth) = &self.auth else {
            return Err(CaError::Internal(
                "no Vault auth method to log in with".into(),
            ));
        };
        if auth.method_type == "token" {
            // The `token` method logs in with the token it is given.
            let token = auth
                .params
                .get("token")
                .and_then(Value::as_str)
                .unwrap_or_default();
            self.set_token(Zeroizing::new(token.to_owned()));
            return self.lookup_self().await;
        }
        let path = format!("auth/{}/login", auth.mount_path.trim_matches('/'));
        let body = Value::Object(auth.params.clone());
        let resp = self
            .call(reqwest::Method::POST, &path, "", Some(&body), false)
            .await?
            .unwrap_or_default();
        let a = resp.get("auth").cloned().unwrap_or_default();
        let token = a
            .get("client_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                vault_error(
                    ErrorKind::Http,
                    format!("Vault login at {path} returned no token"),
                )
            })?;
        self.set_token(Zeroizing::new(token.to_owned()));
        Ok(Lease {
            ttl: Duration::from_secs(a.get("lease_duration").and_then(Value::as_u64).unwrap_or(0)),
            renewable: a.get("renewable").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    async fn lookup_self(&self) -> Result<Lease, CaError> {
        let resp = self
            .call(
                reqwest::Method::GET,
                "auth/token/lookup-self",
                "",
                None,
                true,
            )
            .await?
            .unwrap_or_default();
        let d = resp.get("data").cloned().unwrap_or_default();
        Ok(Lease {
            ttl: Duration::from_secs(d.get("ttl").and_then(Value::as_u64).unwrap_or(0)),
            renewable: d.get("renewable").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    async fn renew_self(&self, increment: Duration) -> Result<Lease, CaError> {
        let body = json!({ "increment": format!("{}s", increment.as_secs()) });
        let resp = self
            .call(
                reqwest::Method::POST,
                "auth/token/renew-self",
                "",
                Some(&body),
                true,
            )
            .await?
            .unwrap_or_default();
        let a = resp.get("auth").cloned().unwrap_or_default();
        Ok(Lease {
            ttl: Duration::from_secs(a.get("lease_duration").and_then(Value::as_u64).unwrap_or(0)),
            renewable: a.get("renewable").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// A token's remaining lifetime and whether it can be renewed.
#[derive(Debug, Clone, Copy)]
struct Lease {
    ttl: Duration,
    renewable: bool,
}

/// Keeps the token alive: renews it after half its lease (Vault's lifetime watcher), logs in
/// again with the auth method when it can no longer be renewed, retrying as Consul does (five
/// quick attempts, then every 1–5 s).
async fn keep_token_alive(client: Arc<VaultClient>, mut lease: Lease) {
    let mut failures = 0u32;
    loop {
        if lease.renewable && !lease.ttl.is_zero() {
            tokio::time::sleep(lease.ttl / 2).await;
            match client.renew_self(lease.ttl).await {
                // Renewed to (nearly) what was asked: keep renewing.
                Ok(l) if l.ttl * 2 > lease.ttl => {
                    failures = 0;
                    lease = l;
                    continue;
                }
                // Near its max TTL: what is left must still be used, then a new login.
                Ok(l) if client.auth.is_none() => {
                    lease = l;
                    if l.ttl.is_zero() {
                        return;
                    }
                    continue;
                }
                Ok(_) => {}
                Err(e) => tracing::debug!(error = %e, "renewing the Vault token failed"),
            }
        } else if client.auth.is_none() {
            // A fixed, non-renewable token: nothing to do until it expires.
            return;
        } else if !lease.ttl.is_zero() {
            tokio::time::sleep(lease.ttl / 2).await;
        }
        if client.auth.is_none() {
            // Renewal failed and there is no way to log in: try renewing again shortly.
            tokio::time::sleep(retry_delay(&mut failures)).await;
            continue;
        }
        loop {
            match client.login().await {
                Ok(l) => {
                    tracing::info!(vault = %client.base, "logged in to Vault again");
                    failures = 0;
                    lease = l;
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "Vault login failed");
                    tokio::time::sleep(retry_delay(&mut failures)).await;
                }
            }
        }
    }
}

/// Consul's retrier: no wait for the first five failures (here 100 ms, to spare the server),
/// then 1–5 s with jitter.
fn retry_delay(failures: &mut u32) -> Duration {
    *failures = failures.saturating_add(1);
    if *failures <= 5 {
        return Duration::from_millis(100);
    }
    Duration::from_millis(rand::random_range(1000..=5000))
}

/// The `vault` CA provider.
#[derive(Debug, Default)]
pub struct VaultProvider {
    config: Option<(ProviderConfig, VaultCaConfig)>,
    client: Option<Arc<VaultClient>>,
    renewer: Option<tokio::task::AbortHandle>,
    root_pem: Option<String>,
    intermediate_pem: Option<String>,
}

impl Drop for VaultProvider {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}

impl VaultProvider {
    /// An unconfigured provider.
    pub fn new() -> VaultProvider {
        VaultProvider::default()
    }

    fn cfg(&self) -> Result<(&ProviderConfig, &VaultCaConfig, Arc<VaultClient>), CaError> {
        match (&self.config, &self.client) {
            (Some((p, v)), Some(c)) => Ok((p, v, c.clone())),
            _ => Err(CaError::NotInitialized),
        }
    }

    fn call(
        &self,
        method: reqwest::Method,
        path: String,
        namespace: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, CaError> {
        let (_, _, client) = self.cfg()?;
        call_blocking(client, method, path, namespace.to_owned(), body)
    }

    /// The leaf signer of the configured intermediate mount.
    fn signer(&self) -> Result<VaultSigner, CaError> {
        let (_, vc, client) = self.cfg()?;
        Ok(VaultSigner {
            client,
            intermediate: vc.intermediate_pki_path.trim_end_matches('/').to_owned(),
            namespace: vc.intermediate_pki_namespace.clone(),
            ttl: vc.common.leaf_cert_ttl,
        })
    }

    fn data_str(resp: &Option<Value>, field: &str) -> Option<String> {
        resp.as_ref()?
            .get("data")?
            .get(field)?
            .as_str()
            .map(str::to_owned)
            .filter(|s| !s.trim().is_empty())
    }

    /// Mounts a PKI engine at `path` unless one is there; an existing intermediate mount is
    /// tuned to the configured TTL (a refusal to tune is tolerated, as in Consul).
    fn ensure_mount(
        &self,
        path: &str,
        namespace: &str,
        description: &str,
        ttl: Duration,
        tune: bool,
    ) -> Result<(), CaError> {
        let mount = path.trim_end_matches('/');
        let ttl = format_go_duration(ttl);
        let mounts = self.call(reqwest::Method::GET, "sys/mounts".into(), namespace, None);
        let exists = match &mounts {
            Ok(Some(v)) => {
                let table = v.get("data").unwrap_or(v);
                table.get(format!("{mount}/")).is_some()
            }
            // Listing may be refused by the policy; mounting then tells.
            _ => false,
        };
        if exists {
            if tune {
                let body = json!({ "max_lease_ttl": ttl });
                match self.call(
                    reqwest::Method::POST,
                    format!("sys/mounts/{mount}/tune"),
                    namespace,
                    Some(body),
                ) {
                    Err(e) if is_forbidden(&e) => {}
                    other => {
                        other?;
                    }
                }
            }
            return Ok(());
        }
        let body = json!({
            "type": "pki",
            "description": description,
            "config": { "max_lease_ttl": ttl, "default_lease_ttl": ttl },
        });
        match self.call(
            reqwest::Method::POST,
            format!("sys/mounts/{mount}"),
            namespace,
            Some(body),
        ) {
            Err(CaError::Provider { message, .. })
                if message.contains("path is already in use") =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }

    /// The default issuer's certificate of the mount at `mount`, `None` when it has none yet
    /// (an empty body before Vault 1.11, "no default issuer" since).
    fn read_ca_cert(&self, mount: &str, namespace: &str) -> Result<Option<String>, CaError> {
        match self.call(
            reqwest::Method::GET,
            format!("{mount}/cert/ca"),
            namespace,
            None,
        ) {
            Ok(resp) => Ok(Self::data_str(&resp, "certificate")),
            Err(CaError::Provider { message, .. }) if message.contains("no default issuer") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn key_params(common: &CommonCaConfig) -> (String, u32) {
        let t = match common.private_key_type {
            KeyType::Rsa => "rsa",
            _ => "ec",
        };
        (t.to_owned(), common.private_key_bits)
    }

    /// The root: read from the root mount, or generated there on first use.
    fn ensure_root(&mut self) -> Result<String, CaError> {
        let (pc, vc, _) = self.cfg()?;
        let (cluster_id, vc) = (pc.cluster_id.clone(), vc.clone());
        self.ensure_mount(
            &vc.root_pki_path,
            &vc.root_pki_namespace,
            "root CA backend for Consul Connect",
            vc.common.root_cert_ttl,
            false,
        )?;
        let ns = &vc.root_pki_namespace;
        let root = vc.root_pki_path.trim_end_matches('/');
        if let Some(pem) = self.read_ca_cert(root, ns)? {
            return Ok(pem);
        }
        let (key_type, key_bits) = Self::key_params(&vc.common);
        let body = json!({
            "common_name": ca_common_name("vault", &compact_uid(), &cluster_id, true),
            "uri_sans": signing_uri(&cluster_id),
            "key_type": key_type,
            "key_bits": key_bits,
            "ttl": format_go_duration(vc.common.root_cert_ttl),
        });
        let resp = self.call(
            reqwest::Method::POST,
            format!("{root}/root/generate/internal"),
            ns,
            Some(body),
        )?;
        Self::data_str(&resp, "certificate").ok_or_else(|| {
            vault_error(
                ErrorKind::Http,
                format!("Vault {root}/root/generate/internal returned no certificate"),
            )
        })
    }

    /// The intermediate mount, its `leaf-cert` role, and an intermediate signed by the current
    /// root (a new one unless the mount's default issuer already is).
    fn ensure_intermediate(&mut self, root_pem: &str) -> Result<String, CaError> {
        self.ensure_intermediate_mount()?;
        let (_, vc, _) = self.cfg()?;
        let (inter, ns) = (
            vc.intermediate_pki_path.trim_end_matches('/').to_owned(),
            vc.intermediate_pki_namespace.clone(),
        );
        if let Some(pem) = self.read_ca_cert(&inter, &ns)?
            && signed_by(&pem, root_pem)
        {
            return Ok(pem);
        }
        self.generate_intermediate(root_pem)
    }

    /// The intermediate mount (tuned to the intermediate TTL) and its `leaf-cert` role.
    fn ensure_intermediate_mount(&mut self) -> Result<(), CaError> {
        let (_, vc, _) = self.cfg()?;
        let vc = vc.clone();
        let ns = vc.intermediate_pki_namespace.clone();
        self.ensure_mount(
            &vc.intermediate_pki_path,
            &ns,
            "intermediate CA backend for Consul Connect",
            vc.common.intermediate_cert_ttl,
            true,
        )?;
        let inter = vc.intermediate_pki_path.trim_end_matches('/');
        let role = json!({
            "allow_any_name": true,
            "allowed_uri_sans": "spiffe://*",
            "key_type": "any",
            "max_ttl": format_go_duration(vc.common.leaf_cert_ttl),
            "no_store": true,
            "require_cn": false,
            // The SANs come from the request (the identity the manager checked), not the CSR.
            "use_csr_sans": false,
            "allow_ip_sans": true,
            "enforce_hostnames": false,
        });
        self.call(
            reqwest::Method::POST,
            format!("{inter}/roles/{LEAF_ROLE}"),
            &ns,
            Some(role),
        )
        .map(|_| ())
    }

    /// A new intermediate key in the intermediate mount, signed by the root mount and made the
    /// mount's default issuer.
    fn generate_intermediate(&mut self, root_pem: &str) -> Result<String, CaError> {
        let csr = self.intermediate_key_csr()?;
        let cert = self.sign_with_root(&csr)?;
        if !signed_by(&cert, root_pem) {
            return Err(CaError::InvalidIntermediate(
                "could not verify intermediate cert against root".into(),
            ));
        }
        self.install_signed_intermediate(&cert)?;
        Ok(cert)
    }

    /// A new key in the intermediate mount (`intermediate/generate/internal`: the key never
    /// leaves Vault) and its CSR, naming the trust domain's signing ID.
    fn intermediate_key_csr(&self) -> Result<String, CaError> {
        let (pc, vc, _) = self.cfg()?;
        let inter = vc.intermediate_pki_path.trim_end_matches('/');
        let (key_type, key_bits) = Self::key_params(&vc.common);
        let csr_resp = self.call(
            reqwest::Method::POST,
            format!("{inter}/intermediate/generate/internal"),
            &vc.intermediate_pki_namespace,
            Some(json!({
                "common_name": ca_common_name("vault", &compact_uid(), &pc.cluster_id, true),
                "key_type": key_type,
                "key_bits": key_bits,
                "uri_sans": signing_uri(&pc.cluster_id),
            })),
        )?;
        Self::data_str(&csr_resp, "csr").ok_or_else(|| {
            vault_error(
                ErrorKind::Http,
                format!("Vault {inter}/intermediate/generate/internal returned no CSR"),
            )
        })
    }

    /// Signs an intermediate CSR with the root mount (`root/sign-intermediate`, path length
    /// 0 as Consul asks): this datacenter's own intermediate, or a secondary's.
    fn sign_with_root(&self, csr_pem: &str) -> Result<String, CaError> {
        let (_, vc, _) = self.cfg()?;
        let root = vc.root_pki_path.trim_end_matches('/');
        let signed = self.call(
            reqwest::Method::POST,
            format!("{root}/root/sign-intermediate"),
            &vc.root_pki_namespace,
            Some(json!({
                "csr": csr_pem,
                "use_csr_values": true,
                "format": "pem",
                "max_path_length": 0,
                "ttl": format_go_duration(vc.common.intermediate_cert_ttl),
            })),
        )?;
        Self::data_str(&signed, "certificate").ok_or_else(|| {
            vault_error(
                ErrorKind::Http,
                format!("Vault {root}/root/sign-intermediate returned no certificate"),
            )
        })
    }

    /// Installs a signed intermediate for the mount's pending key (`intermediate/set-signed`)
    /// and makes it the default issuer.
    fn install_signed_intermediate(&self, cert: &str) -> Result<(), CaError> {
        let (_, vc, _) = self.cfg()?;
        let inter = vc.intermediate_pki_path.trim_end_matches('/');
        let ns = &vc.intermediate_pki_namespace;
        let set = self.call(
            reqwest::Method::POST,
            format!("{inter}/intermediate/set-signed"),
            ns,
            Some(json!({ "certificate": cert })),
        )?;
        // Vault ≥ 1.11 keeps every issuer of a mount: the new one must become the default, or
        // `sign/leaf-cert` would keep signing with the old intermediate.
        let issuer = set
            .as_ref()
            .and_then(|v| {
                v.get("data")?
                    .get("imported_issuers")?
                    .as_array()?
                    .first()
                    .cloned()
            })
            .and_then(|v| v.as_str().map(str::to_owned));
        if let Some(issuer) = issuer {
            self.call(
                reqwest::Method::POST,
                format!("{inter}/config/issuers"),
                ns,
                Some(json!({ "default": issuer })),
            )?;
        }
        Ok(())
    }

    fn require_secondary(&self) -> Result<(), CaError> {
        let (pc, _, _) = self.cfg()?;
        if pc.is_primary {
            return Err(CaError::NotSecondary);
        }
        Ok(())
    }
}

/// One authenticated request from synchronous code; a token revoked or expired under us makes
/// an auth method log in again once, and the request is retried.
fn call_blocking(
    client: Arc<VaultClient>,
    method: reqwest::Method,
    path: String,
    ns: String,
    body: Option<Value>,
) -> Result<Option<Value>, CaError> {
    run_blocking(async move {
        match client
            .call(method.clone(), &path, &ns, body.as_ref(), true)
            .await
        {
            Err(e) if client.auth.is_some() && is_forbidden(&e) => {
                client.login().await?;
                client.call(method, &path, &ns, body.as_ref(), true).await
            }
            other => other,
        }
    })
}

/// Signs leaves with the intermediate mount's `leaf-cert` role. It holds what one signing
/// needs, so the manager signs without its lock and a reconfiguration meanwhile does not
/// change a signing in flight.
#[derive(Debug)]
struct VaultSigner {
    client: Arc<VaultClient>,
    intermediate: String,
    namespace: String,
    ttl: Duration,
}

impl RemoteSigner for VaultSigner {
    fn sign(&self, csr: &Csr) -> Result<String, CaError> {
        let inter = &self.intermediate;
        let mut body = json!({
            "csr": csr.to_pem(),
            "ttl": format_go_duration(self.ttl),
            "uri_sans": csr.uris().join(","),
        });
        if !csr.dns_names().is_empty() {
            body["alt_names"] = csr.dns_names().join(",").into();
        }
        if !csr.ip_addresses().is_empty() {
            body["ip_sans"] = csr
                .ip_addresses()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
                .into();
        }
        let resp = call_blocking(
            self.client.clone(),
            reqwest::Method::POST,
            format!("{inter}/sign/{LEAF_ROLE}"),
            self.namespace.clone(),
            Some(body),
        )?;
        if VaultProvider::data_str(&resp, "issuing_ca").is_none() {
            return Err(vault_error(
                ErrorKind::Http,
                format!("Vault {inter}/sign/{LEAF_ROLE} returned no issuing CA"),
            ));
        }
        let leaf = VaultProvider::data_str(&resp, "certificate").ok_or_else(|| {
            vault_error(
                ErrorKind::Http,
                format!("Vault {inter}/sign/{LEAF_ROLE} returned no certificate"),
            )
        })?;
        // Only the leaf: the manager appends the root's intermediates.
        let der = certs::parse_pem_certificate(&leaf)?;
        Ok(certs::der_to_pem(&der))
    }
}

/// Whether Vault answered 403 (a missing policy, or a token that expired or was revoked).
fn is_forbidden(e: &CaError) -> bool {
    matches!(e, CaError::Provider { message, .. } if message.contains("HTTP 403"))
}

/// Whether `child_pem` is signed by `issuer_pem`'s key.
fn signed_by(child_pem: &str, issuer_pem: &str) -> bool {
    match (
        certs::parse_pem_certificate(child_pem),
        certs::parse_pem_certificate(issuer_pem),
    ) {
        (Ok(c), Ok(i)) => certs::verify_signed_by(&c, &i).is_ok(),
        _ => false,
    }
}

impl Provider for VaultProvider {
    fn name(&self) -> &'static str {
        "vault"
    }

    fn configure(&mut self, config: ProviderConfig) -> Result<(), CaError> {
        let vc = VaultCaConfig::from_map(&config.raw)?;
        let client = Arc::new(VaultClient::new(&vc)?);
        let c = client.clone();
        let lease = run_blocking(async move {
            if c.auth.is_some() {
                c.login().await
            } else {
                c.lookup_self().await
            }
        })?;
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        if lease.renewable || client.auth.is_some() {
            let handle =
                crate::blocking::runtime().map_err(|e| CaError::Internal(e.to_string()))?;
            self.renewer = Some(
                handle
                    .spawn(keep_token_alive(client.clone(), lease))
                    .abort_handle(),
            );
        }
        self.client = Some(client);
        self.config = Some((config, vc));
        self.root_pem = None;
        self.intermediate_pem = None;
        Ok(())
    }

    fn state(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    fn generate_ca_chain(&mut self) -> Result<String, CaError> {
        let (pc, _, _) = self.cfg()?;
        if !pc.is_primary {
            return Err(CaError::NotPrimary);
        }
        let root = self.ensure_root()?;
        let intermediate = self.ensure_intermediate(&root)?;
        self.root_pem = Some(root.clone());
        self.intermediate_pem = Some(intermediate);
        Ok(root)
    }

    fn active_leaf_signing_cert(&self) -> Result<String, CaError> {
        self.intermediate_pem.clone().ok_or(CaError::NotInitialized)
    }

    fn sign(&self, csr: &Csr) -> Result<String, CaError> {
        self.signer()?.sign(csr)
    }

    fn remote_signer(&self) -> Option<Arc<dyn RemoteSigner>> {
        let signer: Arc<dyn RemoteSigner> = Arc::new(self.signer().ok()?);
        Some(signer)
    }

    fn sign_intermediate(&self, csr: &Csr) -> Result<String, CaError> {
        let (pc, _, _) = self.cfg()?;
        if !pc.is_primary {
            return Err(CaError::NotPrimary);
        }
        check_intermediate_csr(csr, &pc.cluster_id)?;
        self.sign_with_root(&csr.to_pem())
    }

    fn cross_sign_ca(&self, cert_pem: &str) -> Result<String, CaError> {
        let (_, vc, _) = self.cfg()?;
        let root = vc.root_pki_path.trim_end_matches('/');
        let resp = self.call(
            reqwest::Method::POST,
            format!("{root}/root/sign-self-issued"),
            &vc.root_pki_namespace,
            Some(json!({ "certificate": cert_pem })),
        )?;
        Self::data_str(&resp, "certificate").ok_or_else(|| {
            vault_error(
                ErrorKind::Http,
                format!("Vault {root}/root/sign-self-issued returned no certificate"),
            )
        })
    }

    fn supports_cross_signing(&self) -> bool {
        true
    }

    fn primary_uses_intermediate(&self) -> bool {
        true
    }

    fn renew_intermediate(&mut self) -> Result<String, CaError> {
        let root = match &self.root_pem {
            Some(r) => r.clone(),
            None => self.ensure_root()?,
        };
        let pem = self.generate_intermediate(&root)?;
        self.root_pem = Some(root);
        self.intermediate_pem = Some(pem.clone());
        Ok(pem)
    }

    /// The key is made and kept in the intermediate mount; the opaque part is empty, since
    /// Vault pairs the signed certificate with its pending key itself.
    fn generate_intermediate_csr(&mut self) -> Result<(String, String), CaError> {
        self.require_secondary()?;
        self.ensure_intermediate_mount()?;
        Ok((self.intermediate_key_csr()?, String::new()))
    }

    fn set_intermediate(
        &mut self,
        intermediate_pem: &str,
        root_pem: &str,
        _opaque: &str,
    ) -> Result<(), CaError> {
        self.require_secondary()?;
        if !signed_by(intermediate_pem, root_pem) {
            return Err(CaError::InvalidIntermediate(
                "could not verify intermediate cert against root".into(),
            ));
        }
        self.install_signed_intermediate(intermediate_pem)?;
        self.root_pem = Some(root_pem.to_owned());
        self.intermediate_pem = Some(intermediate_pem.to_owned());
        Ok(())
    }

    /// Resumes when the mount's default issuer is still `intermediate_pem` (the key is
    /// Vault's; a mount changed under us means a new intermediate from the primary).
    fn resume_intermediate(&mut self, intermediate_pem: &str) -> Result<(), CaError> {
        self.require_secondary()?;
        let (_, vc, _) = self.cfg()?;
        let (inter, ns) = (
            vc.intermediate_pki_path.trim_end_matches('/').to_owned(),
            vc.intermediate_pki_namespace.clone(),
        );
        let same = |a: &str, b: &str| {
            matches!(
                (certs::parse_pem_certificate(a), certs::parse_pem_certificate(b)),
                (Ok(x), Ok(y)) if x == y
            )
        };
        match self.read_ca_cert(&inter, &ns)? {
            Some(current) if same(&current, intermediate_pem) => {
                self.intermediate_pem = Some(current);
                Ok(())
            }
            _ => Err(CaError::NotInitialized),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    fn err(v: Value) -> String {
        let e = VaultCaConfig::from_map(&map(v)).unwrap_err();
        assert_eq!(
            crate::Error::from(e.clone()).kind(),
            ErrorKind::InvalidCaConfig
        );
        e.to_string()
    }

    #[test]
    fn consul_validation_messages() {
        let base = json!({"Address": "http://127.0.0.1:8200", "RootPKIPath": "r", "IntermediatePKIPath": "i"});
        assert_eq!(
            err(base.clone()),
            "must provide a Vault token or configure a Vault auth method"
        );
        let mut both = base.clone();
        both["Token"] = "t".into();
        both["AuthMethod"] = json!({"Type": "approle", "Params": {"role_id": "x"}});
        assert_eq!(
            err(both),
            "only one of Vault token or Vault auth method can be provided, but not both"
        );
        assert_eq!(
            err(json!({"Address": "http://a:1", "Token": "t", "IntermediatePKIPath": "i"})),
            "must provide a valid path to a root PKI backend"
        );
        assert_eq!(
            err(json!({"Address": "http://a:1", "Token": "t", "RootPKIPath": "r"})),
            "must provide a valid path for the intermediate PKI backend"
        );
        assert!(err(json!({"Address": "ftp://x", "Token": "t", "RootPKIPath": "r", "IntermediatePKIPath": "i"})).contains("not an http"));
        assert_eq!(
            err(
                json!({"Address": "http://a:1", "Token": "t", "RootPKIPath": "r", "IntermediatePKIPath": "i", "LeafCertTTL": "1m"})
            ),
            "leaf cert TTL must be greater or equal than 1h0m0s"
        );
    }

    #[test]
    fn keys_are_case_insensitive_and_paths_get_a_slash() {
        let c = VaultCaConfig::from_map(&map(json!({
            "address": "http://127.0.0.1:8200", "token": "s.secret",
            "root_pki_path": "connect-root", "intermediate_pki_path": "dc1/connect-inter/",
            "leaf_cert_ttl": "2h", "TLS_Skip_Verify": "true",
        })))
        .unwrap();
        assert_eq!(c.root_pki_path, "connect-root/");
        assert_eq!(c.intermediate_pki_path, "dc1/connect-inter/");
        assert_eq!(c.common.leaf_cert_ttl, Duration::from_secs(7200));
        assert!(c.tls_skip_verify);
        let debug = format!("{c:?}");
        assert!(!debug.contains("s.secret"), "{debug}");
        let approle = VaultCaConfig::from_map(&map(json!({
            "Address": "http://a:1", "RootPKIPath": "r", "IntermediatePKIPath": "i",
            "AuthMethod": {"Type": "approle", "Params": {"role_id": "r", "secret_id": "hush"}},
        })))
        .unwrap();
        assert_eq!(approle.auth_method.as_ref().unwrap().mount_path, "approle");
        assert!(!format!("{approle:?}").contains("hush"));
    }

    #[test]
    fn redaction_drops_tokens_and_login_secrets() {
        let m = map(json!({
            "Address": "http://a:1", "Token": "s.secret", "private_key": "k",
            "AuthMethod": {"Type": "approle", "Params": {"role_id": "r", "secret_id": "hush"}},
        }));
        let text = serde_json::to_string(&redact_config(&m)).unwrap();
        assert!(!text.contains("s.secret") && !text.contains("hush") && !text.contains("\"k\""));
        assert!(text.contains("role_id") && text.contains("Address"));
    }
}
