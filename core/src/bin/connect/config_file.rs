//! Consul's agent configuration files, the keys libconnect uses.
//!
//! A file is JSON or HCL (chosen by the `.json` / `.hcl` extension, else by its first
//! character) with Consul's snake_case keys:
//!
//! ```hcl
//! datacenter         = "dc1"
//! primary_datacenter = "dc1"
//! node_name          = "node-1"
//! data_dir           = "/var/lib/connect"
//! server             = true
//! client_addr        = "127.0.0.1"
//! addresses { http = "0.0.0.0" }
//! ports {
//!   http  = 8500
//!   https = 8501
//! }
//! log_level = "info"
//! retry_join_wan = ["10.0.0.1:8501"]   # a secondary: the primary's HTTPS address
//! tls { defaults { ca_file = "dc1-root.pem" } }   # the primary's root, for first contact
//! acl {
//!   enabled        = true
//!   default_policy = "deny"
//!   tokens {
//!     initial_management = "..."
//!     replication        = "..."   # a secondary: operator:write in the primary
//!   }
//! }
//! connect {
//!   enabled     = true
//!   ca_provider = "consul"
//!   ca_config {
//!     leaf_cert_ttl    = "72h"
//!     private_key_type = "ec"
//!   }
//! }
//! workload_api {                      # the SPIFFE Workload API (connect_core::workload)
//!   socket       = "/run/connect/workload.sock"
//!   socket_mode  = "0770"               # octal; socket_user / socket_group: numeric IDs
//!   jwt_svid_ttl = "5m"
//!   workload {                          # every selector set must match the caller
//!     service = "web"
//!     uid     = 1000
//!   }
//!   workload {
//!     service = "db"
//!     uid     = 1001
//!     path    = "/usr/bin/db"
//!   }
//! }
//! limits {
//!   http_max_conns_per_client = 200
//!   https_handshake_timeout   = "5s"
//!   http_max_conns            = 4096
//!   http_header_read_timeout  = "10s"
//!   http_body_read_timeout    = "30s"
//!   http_idle_timeout         = "90s"
//! }
//! store {                                  # several servers share one etcd (examples/ha)
//!   etcd {
//!     endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]
//!     prefix    = "/connect/dc1"           # default: /connect/<datacenter>
//!     kek_file  = "/etc/connect/kek.b64"   # seals CA keys and token secrets in etcd
//!     tls { ca_file = "etcd-ca.pem"  cert_file = "client.pem"  key_file = "client-key.pem" }
//!   }
//! }
//! ```
//!
//! Values are read weakly, as Consul reads them: `"8500"` is a port, `"true"` a boolean, a
//! lone string a list of one. Lists (`retry_join_wan`) add up across files, as in Consul.
//! Keys libconnect does not use are collected in [`AgentConfigFile::unknown_keys`] (names
//! only) so that the agent can warn about them instead of refusing a Consul file.
//! `ca_config` is passed through as a map; [`connect_core::ca::CaConfiguration`] accepts its
//! snake_case keys.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use connect_core::{Error, ErrorKind};

/// The format of a configuration file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConfigFormat {
    /// JSON.
    Json,
    /// HCL (version 2 syntax, as Consul reads it).
    Hcl,
}

impl ConfigFormat {
    /// By extension (`.json`, `.hcl`); otherwise JSON when the text starts with `{`.
    pub(crate) fn detect(path: &Path, text: &str) -> ConfigFormat {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("json") => ConfigFormat::Json,
            Some(e) if e.eq_ignore_ascii_case("hcl") => ConfigFormat::Hcl,
            _ if text.trim_start().starts_with('{') => ConfigFormat::Json,
            _ => ConfigFormat::Hcl,
        }
    }
}

/// The `acl` block.
#[derive(Clone, Default, PartialEq)]
pub(crate) struct AclFileConfig {
    /// `acl.enabled`.
    pub(crate) enabled: Option<bool>,
    /// `acl.default_policy`: `allow` or `deny`.
    pub(crate) default_policy: Option<connect_core::acl::AclDefaultPolicy>,
    /// `acl.tokens.initial_management` (or the legacy `acl.tokens.master`).
    pub(crate) initial_management: Option<String>,
    /// `acl.tokens.replication` (or the legacy top-level `acl_replication_token`): what a
    /// secondary datacenter's server presents to the primary.
    pub(crate) replication: Option<String>,
}

impl fmt::Debug for AclFileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AclFileConfig")
            .field("enabled", &self.enabled)
            .field("default_policy", &self.default_policy)
            .field(
                "initial_management",
                &self.initial_management.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "replication",
                &self.replication.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The `connect` block.
#[derive(Clone, Default, PartialEq)]
pub(crate) struct ConnectFileConfig {
    /// `connect.enabled` (libconnect always runs Connect; `false` is reported).
    pub(crate) enabled: Option<bool>,
    /// `connect.ca_provider` (`consul`).
    pub(crate) ca_provider: Option<String>,
    /// `connect.ca_config`, keys as written (snake_case or CamelCase).
    pub(crate) ca_config: Option<Map<String, Value>>,
}

impl fmt::Debug for ConnectFileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ca_config may hold a private key: show its keys only.
        f.debug_struct("ConnectFileConfig")
            .field("enabled", &self.enabled)
            .field("ca_provider", &self.ca_provider)
            .field(
                "ca_config_keys",
                &self
                    .ca_config
                    .as_ref()
                    .map(|m| m.keys().cloned().collect::<Vec<_>>()),
            )
            .finish()
    }
}

/// The `limits` block: what the HTTP(S) API lets one client, and all clients together, hold.
///
/// `http_max_conns_per_client` and `https_handshake_timeout` are Consul's keys, with
/// Consul's meaning; the others are libconnect's own (Consul has no equivalent). Values are
/// checked when the file is read: counts are integers in range, durations Go duration
/// strings (`"10s"`, `"1m30s"`) greater than zero and at most [`LimitsFileConfig::MAX_TIMEOUT`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LimitsFileConfig {
    /// `limits.http_max_conns_per_client`: concurrent connections from one client IP
    /// address (Consul's key; `0` means no limit, as in Consul).
    pub(crate) http_max_conns_per_client: Option<u32>,
    /// `limits.https_handshake_timeout`: time a client has to finish the TLS handshake
    /// (Consul's key).
    pub(crate) https_handshake_timeout: Option<Duration>,
    /// `limits.http_max_conns`: concurrent connections from all clients together, over the
    /// HTTP and HTTPS listeners (at least 1).
    pub(crate) http_max_conns: Option<u32>,
    /// `limits.http_header_read_timeout`: time a client has to send a whole request head
    /// once it starts one, and a new connection to start its first request.
    pub(crate) http_header_read_timeout: Option<Duration>,
    /// `limits.http_body_read_timeout`: time a client has to send a request body once the
    /// head is in.
    pub(crate) http_body_read_timeout: Option<Duration>,
    /// `limits.http_idle_timeout`: how long a keep-alive connection may wait, with no
    /// request running, for its next request.
    pub(crate) http_idle_timeout: Option<Duration>,
}

impl LimitsFileConfig {
    /// The longest timeout accepted: a day (a longer one is a mistake, not a limit).
    pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
    /// The largest connection count accepted.
    pub(crate) const MAX_CONNS: u32 = 1 << 20;

    fn read(&mut self, value: &Value, unknown: &mut Vec<String>) -> Result<(), Error> {
        for (k, v) in object(value, "limits")? {
            let name = format!("limits.{k}");
            match k.as_str() {
                "http_max_conns_per_client" => {
                    self.http_max_conns_per_client = Some(count(&name, &v, 0)?);
                }
                "http_max_conns" => self.http_max_conns = Some(count(&name, &v, 1)?),
                "https_handshake_timeout" => {
                    self.https_handshake_timeout = Some(timeout(&name, &v)?);
                }
                "http_header_read_timeout" => {
                    self.http_header_read_timeout = Some(timeout(&name, &v)?);
                }
                "http_body_read_timeout" => {
                    self.http_body_read_timeout = Some(timeout(&name, &v)?);
                }
                "http_idle_timeout" => self.http_idle_timeout = Some(timeout(&name, &v)?),
                _ => unknown.push(name),
            }
        }
        Ok(())
    }

    fn merge(&mut self, later: LimitsFileConfig) {
        fn over<T>(a: &mut Option<T>, b: Option<T>) {
            if b.is_some() {
                *a = b;
            }
        }
        over(
            &mut self.http_max_conns_per_client,
            later.http_max_conns_per_client,
        );
        over(
            &mut self.https_handshake_timeout,
            later.https_handshake_timeout,
        );
        over(&mut self.http_max_conns, later.http_max_conns);
        over(
            &mut self.http_header_read_timeout,
            later.http_header_read_timeout,
        );
        over(
            &mut self.http_body_read_timeout,
            later.http_body_read_timeout,
        );
        over(&mut self.http_idle_timeout, later.http_idle_timeout);
    }
}

/// The `workload_api` block: the SPIFFE Workload API socket and its registrations
/// (`connect_core::workload`).
#[derive(Clone, Default, PartialEq)]
pub(crate) struct WorkloadApiFileConfig {
    /// `workload_api.socket`.
    pub(crate) socket: Option<PathBuf>,
    /// `workload_api.socket_mode`: octal text such as `"0770"`.
    pub(crate) socket_mode: Option<u32>,
    /// `workload_api.socket_user`: a numeric uid.
    pub(crate) socket_user: Option<u32>,
    /// `workload_api.socket_group`: a numeric gid.
    pub(crate) socket_group: Option<u32>,
    /// `workload_api.max_conns`.
    pub(crate) max_conns: Option<u32>,
    /// `workload_api.jwt_svid_ttl`.
    pub(crate) jwt_svid_ttl: Option<Duration>,
    /// `workload_api.root_change_jitter`: upper bound of the random delay before the
    /// workloads' SVIDs are re-issued after a root rotation (default Consul's 30s; `"0s"`
    /// re-issues at once).
    pub(crate) root_change_jitter: Option<Duration>,
    /// `workload_api.token`: the ACL token the workloads' leaves are signed with (needs
    /// `service:write` on each registered service when ACLs are on).
    pub(crate) token: Option<String>,
    /// `workload_api.workload` blocks, in order; they add up across files.
    pub(crate) workloads: Vec<connect_core::workload::WorkloadSelector>,
}

impl fmt::Debug for WorkloadApiFileConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadApiFileConfig")
            .field("socket", &self.socket)
            .field("socket_mode", &self.socket_mode)
            .field("socket_user", &self.socket_user)
            .field("socket_group", &self.socket_group)
            .field("max_conns", &self.max_conns)
            .field("jwt_svid_ttl", &self.jwt_svid_ttl)
            .field("root_change_jitter", &self.root_change_jitter)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("workloads", &self.workloads)
            .finish()
    }
}

impl WorkloadApiFileConfig {
    fn read(&mut self, value: &Value, unknown: &mut Vec<String>) -> Result<(), Error> {
        let id = |name: &str, v: &Value| {
            u32::try_from(integer(name, v)?)
                .map_err(|_| invalid(format!("{name}: expected a numeric ID")))
        };
        for (k, v) in object(value, "workload_api")? {
            let name = format!("workload_api.{k}");
            match k.as_str() {
                "socket" => self.socket = Some(PathBuf::from(string(&name, &v)?)),
                "socket_mode" => {
                    let text = string(&name, &v)?;
                    let mode = u32::from_str_radix(text.trim(), 8)
                        .ok()
                        .filter(|m| *m <= 0o777)
                        .ok_or_else(|| {
                            invalid(format!("{name}: expected an octal mode such as \"0770\""))
                        })?;
                    self.socket_mode = Some(mode);
                }
                "socket_user" => self.socket_user = Some(id(&name, &v)?),
                "socket_group" => self.socket_group = Some(id(&name, &v)?),
                "max_conns" => self.max_conns = Some(count(&name, &v, 1)?),
                "jwt_svid_ttl" => self.jwt_svid_ttl = Some(timeout(&name, &v)?),
                "root_change_jitter" => {
                    let text = string(&name, &v)?;
                    self.root_change_jitter = Some(
                        connect_core::duration::parse_go_duration(text.trim())
                            .map_err(|e| invalid(format!("{name}: {e}")))?,
                    );
                }
                "token" => self.token = Some(string(&name, &v)?),
                "workload" => {
                    // A repeated block is a list: one registration each (never merged).
                    let blocks = match &v {
                        Value::Array(items) => items.clone(),
                        other => vec![other.clone()],
                    };
                    for (i, block) in blocks.iter().enumerate() {
                        let bname = format!("{name}[{i}]");
                        let mut w = connect_core::workload::WorkloadSelector::default();
                        for (wk, wv) in object(block, &bname)? {
                            let wname = format!("{bname}.{wk}");
                            match wk.as_str() {
                                "service" => w.service = string(&wname, &wv)?,
                                "uid" => w.uid = Some(id(&wname, &wv)?),
                                "gid" => w.gid = Some(id(&wname, &wv)?),
                                "path" => w.path = Some(PathBuf::from(string(&wname, &wv)?)),
                                _ => unknown.push(wname),
                            }
                        }
                        w.check().map_err(|e| invalid(format!("{bname}: {e}")))?;
                        self.workloads.push(w);
                    }
                }
                _ => unknown.push(name),
            }
        }
        Ok(())
    }

    fn merge(&mut self, later: WorkloadApiFileConfig) {
        set_if_some(&mut self.socket, later.socket);
        set_if_some(&mut self.socket_mode, later.socket_mode);
        set_if_some(&mut self.socket_user, later.socket_user);
        set_if_some(&mut self.socket_group, later.socket_group);
        set_if_some(&mut self.max_conns, later.max_conns);
        set_if_some(&mut self.jwt_svid_ttl, later.jwt_svid_ttl);
        set_if_some(&mut self.root_change_jitter, later.root_change_jitter);
        set_if_some(&mut self.token, later.token);
        self.workloads.extend(later.workloads);
    }
}

/// A later file's value, when set, replaces the earlier one.
fn set_if_some<T>(a: &mut Option<T>, b: Option<T>) {
    if b.is_some() {
        *a = b;
    }
}

/// A connection count in `min..=MAX_CONNS`.
fn count(name: &str, value: &Value, min: u32) -> Result<u32, Error> {
    let n = integer(name, value)?;
    let max = LimitsFileConfig::MAX_CONNS;
    match u32::try_from(n) {
        Ok(n) if n >= min && n <= max => Ok(n),
        _ if min == 0 => Err(invalid(format!(
            "{name}: must be between 0 (no limit) and {max}, got {n}"
        ))),
        _ => Err(invalid(format!(
            "{name}: must be between {min} and {max}, got {n}"
        ))),
    }
}

/// A Go duration string, greater than zero and at most a day.
fn timeout(name: &str, value: &Value) -> Result<Duration, Error> {
    let Value::String(text) = value else {
        return Err(invalid(format!(
            "{name}: expected a duration string such as \"10s\""
        )));
    };
    let d = connect_core::duration::parse_go_duration(text.trim())
        .map_err(|e| invalid(format!("{name}: {e}")))?;
    if d.is_zero() {
        return Err(invalid(format!(
            "{name}: must be greater than zero, got {text:?}"
        )));
    }
    if d > LimitsFileConfig::MAX_TIMEOUT {
        return Err(invalid(format!(
            "{name}: must be at most 24h, got {text:?}"
        )));
    }
    Ok(d)
}

/// One agent configuration file (or several merged). Every field is optional: command-line
/// flags override what is set, and defaults fill the rest.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct AgentConfigFile {
    /// `datacenter`.
    pub(crate) datacenter: Option<String>,
    /// `primary_datacenter`.
    pub(crate) primary_datacenter: Option<String>,
    /// `node_name`.
    pub(crate) node_name: Option<String>,
    /// `data_dir`.
    pub(crate) data_dir: Option<PathBuf>,
    /// `server`.
    pub(crate) server: Option<bool>,
    /// `client_addr`: the address the HTTP(S) API binds to.
    pub(crate) client_addr: Option<String>,
    /// `addresses.http`: overrides `client_addr` for HTTP.
    pub(crate) http_addr: Option<String>,
    /// `addresses.https`: overrides `client_addr` for HTTPS.
    pub(crate) https_addr: Option<String>,
    /// `ports.http` (negative disables the listener).
    pub(crate) http_port: Option<i64>,
    /// `ports.https` (negative disables the listener).
    pub(crate) https_port: Option<i64>,
    /// `log_level`.
    pub(crate) log_level: Option<String>,
    /// `retry_join_wan`: the primary servers' HTTPS addresses (a secondary datacenter).
    pub(crate) retry_join_wan: Option<Vec<String>>,
    /// `tls.defaults.ca_file` (or the legacy top-level `ca_file`): the CA certificates a
    /// secondary trusts when it first contacts the primary.
    pub(crate) ca_file: Option<PathBuf>,
    /// `acl { … }`.
    pub(crate) acl: AclFileConfig,
    /// `connect { … }`.
    pub(crate) connect: ConnectFileConfig,
    /// `limits { … }`.
    pub(crate) limits: LimitsFileConfig,
    /// `workload_api { … }`.
    pub(crate) workload_api: WorkloadApiFileConfig,
    /// `store { etcd { … } }`.
    pub(crate) etcd: EtcdFileConfig,
    /// Dotted names of keys libconnect does not use (values are never kept).
    pub(crate) unknown_keys: Vec<String>,
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidParameter, msg)
}

impl AgentConfigFile {
    /// Reads and parses a file.
    pub(crate) fn load(path: &Path) -> Result<AgentConfigFile, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("reading config file {}: {e}", path.display()),
            )
        })?;
        AgentConfigFile::parse(&text, ConfigFormat::detect(path, &text))
            .map_err(|e| invalid(format!("config file {}: {e}", path.display())))
    }

    /// Parses the text of a file.
    pub(crate) fn parse(text: &str, format: ConfigFormat) -> Result<AgentConfigFile, Error> {
        let doc: Value = match format {
            ConfigFormat::Json => {
                serde_json::from_str(text).map_err(|e| invalid(format!("invalid JSON: {e}")))?
            }
            ConfigFormat::Hcl => {
                hcl::from_str(text).map_err(|e| invalid(format!("invalid HCL: {e}")))?
            }
        };
        let root = object(&doc, "")?;
        let mut c = AgentConfigFile::default();
        for (key, value) in &root {
            match key.as_str() {
                "datacenter" => c.datacenter = Some(string(key, value)?),
                "primary_datacenter" => c.primary_datacenter = Some(string(key, value)?),
                "node_name" => c.node_name = Some(string(key, value)?),
                "data_dir" => c.data_dir = Some(PathBuf::from(string(key, value)?)),
                "server" => c.server = Some(boolean(key, value)?),
                "client_addr" => c.client_addr = Some(string(key, value)?),
                "log_level" => c.log_level = Some(string(key, value)?),
                "retry_join_wan" => c.retry_join_wan = Some(strings(key, value)?),
                "ca_file" => c.ca_file = Some(PathBuf::from(string(key, value)?)),
                "acl_replication_token" => c.acl.replication = Some(string(key, value)?),
                "tls" => c.read_tls(value)?,
                "addresses" => {
                    for (k, v) in object(value, key)? {
                        let name = format!("addresses.{k}");
                        match k.as_str() {
                            "http" => c.http_addr = Some(string(&name, &v)?),
                            "https" => c.https_addr = Some(string(&name, &v)?),
                            _ => c.unknown_keys.push(name),
                        }
                    }
                }
                "ports" => {
                    for (k, v) in object(value, key)? {
                        let name = format!("ports.{k}");
                        match k.as_str() {
                            "http" => c.http_port = Some(integer(&name, &v)?),
                            "https" => c.https_port = Some(integer(&name, &v)?),
                            _ => c.unknown_keys.push(name),
                        }
                    }
                }
                "acl" => c.read_acl(value)?,
                "connect" => c.read_connect(value)?,
                "limits" => c.limits.read(value, &mut c.unknown_keys)?,
                "workload_api" => c.workload_api.read(value, &mut c.unknown_keys)?,
                "store" => c.read_store(value)?,
                _ => c.unknown_keys.push(key.clone()),
            }
        }
        Ok(c)
    }

    fn read_acl(&mut self, value: &Value) -> Result<(), Error> {
        for (k, v) in object(value, "acl")? {
            let name = format!("acl.{k}");
            match k.as_str() {
                "enabled" => self.acl.enabled = Some(boolean(&name, &v)?),
                "default_policy" => {
                    self.acl.default_policy = Some(match string(&name, &v)?.as_str() {
                        "allow" => connect_core::acl::AclDefaultPolicy::Allow,
                        "deny" => connect_core::acl::AclDefaultPolicy::Deny,
                        other => {
                            return Err(invalid(format!(
                                "{name}: must be \"allow\" or \"deny\", got {other:?}"
                            )));
                        }
                    });
                }
                "tokens" => {
                    for (tk, tv) in object(&v, &name)? {
                        let tname = format!("{name}.{tk}");
                        match tk.as_str() {
                            "initial_management" | "master" => {
                                self.acl.initial_management = Some(string(&tname, &tv)?);
                            }
                            "replication" => self.acl.replication = Some(string(&tname, &tv)?),
                            _ => self.unknown_keys.push(tname),
                        }
                    }
                }
                _ => self.unknown_keys.push(name),
            }
        }
        Ok(())
    }

    /// The `tls` block: only `tls.defaults.ca_file` is used; Consul's other TLS keys are
    /// reported as unused.
    fn read_tls(&mut self, value: &Value) -> Result<(), Error> {
        for (k, v) in object(value, "tls")? {
            let name = format!("tls.{k}");
            if k != "defaults" {
                self.unknown_keys.push(name);
                continue;
            }
            for (dk, dv) in object(&v, &name)? {
                let dname = format!("{name}.{dk}");
                match dk.as_str() {
                    "ca_file" => self.ca_file = Some(PathBuf::from(string(&dname, &dv)?)),
                    _ => self.unknown_keys.push(dname),
                }
            }
        }
        Ok(())
    }

    fn read_connect(&mut self, value: &Value) -> Result<(), Error> {
        for (k, v) in object(value, "connect")? {
            let name = format!("connect.{k}");
            match k.as_str() {
                "enabled" => self.connect.enabled = Some(boolean(&name, &v)?),
                "ca_provider" => self.connect.ca_provider = Some(string(&name, &v)?),
                "ca_config" => self.connect.ca_config = Some(object(&v, &name)?),
                _ => self.unknown_keys.push(name),
            }
        }
        Ok(())
    }

    /// The `store` block: `store { etcd { endpoints, prefix, kek_file, tls { … } } }`.
    fn read_store(&mut self, value: &Value) -> Result<(), Error> {
        for (k, v) in object(value, "store")? {
            let name = format!("store.{k}");
            if k != "etcd" {
                return Err(invalid(format!(
                    "{name}: unknown store (the one shared store is \"etcd\")"
                )));
            }
            for (ek, ev) in object(&v, &name)? {
                let ename = format!("{name}.{ek}");
                let e = &mut self.etcd;
                match ek.as_str() {
                    "endpoints" => e.endpoints = Some(strings(&ename, &ev)?),
                    "prefix" => e.prefix = Some(string(&ename, &ev)?),
                    "kek_file" => e.kek_file = Some(PathBuf::from(string(&ename, &ev)?)),
                    "tls" => {
                        for (tk, tv) in object(&ev, &ename)? {
                            let tname = format!("{ename}.{tk}");
                            let path = Some(PathBuf::from(string(&tname, &tv)?));
                            match tk.as_str() {
                                "ca_file" => e.ca_file = path,
                                "cert_file" => e.cert_file = path,
                                "key_file" => e.key_file = path,
                                _ => return Err(invalid(format!("{tname}: unknown key"))),
                            }
                        }
                    }
                    // A typo here would silently fall back to another store: refuse it.
                    _ => return Err(invalid(format!("{ename}: unknown key"))),
                }
            }
        }
        Ok(())
    }

    /// Merges `later` over `self`, as Consul merges several `-config-file`s: a value set
    /// in `later` wins; `ca_config` maps merge key by key.
    pub(crate) fn merge(&mut self, later: AgentConfigFile) {
        fn over<T>(a: &mut Option<T>, b: Option<T>) {
            if b.is_some() {
                *a = b;
            }
        }
        over(&mut self.datacenter, later.datacenter);
        over(&mut self.primary_datacenter, later.primary_datacenter);
        over(&mut self.node_name, later.node_name);
        over(&mut self.data_dir, later.data_dir);
        over(&mut self.server, later.server);
        over(&mut self.client_addr, later.client_addr);
        over(&mut self.http_addr, later.http_addr);
        over(&mut self.https_addr, later.https_addr);
        over(&mut self.http_port, later.http_port);
        over(&mut self.https_port, later.https_port);
        over(&mut self.log_level, later.log_level);
        // Lists add up across files, as Consul merges them.
        match (&mut self.retry_join_wan, later.retry_join_wan) {
            (Some(a), Some(b)) => a.extend(b),
            (a, b) => over(a, b),
        }
        over(&mut self.ca_file, later.ca_file);
        over(&mut self.acl.replication, later.acl.replication);
        over(&mut self.acl.enabled, later.acl.enabled);
        over(&mut self.acl.default_policy, later.acl.default_policy);
        over(
            &mut self.acl.initial_management,
            later.acl.initial_management,
        );
        over(&mut self.connect.enabled, later.connect.enabled);
        over(&mut self.connect.ca_provider, later.connect.ca_provider);
        match (&mut self.connect.ca_config, later.connect.ca_config) {
            (Some(a), Some(b)) => a.extend(b),
            (a, b) => over(a, b),
        }
        self.limits.merge(later.limits);
        self.workload_api.merge(later.workload_api);
        let (e, l) = (&mut self.etcd, later.etcd);
        over(&mut e.endpoints, l.endpoints);
        over(&mut e.prefix, l.prefix);
        over(&mut e.kek_file, l.kek_file);
        over(&mut e.ca_file, l.ca_file);
        over(&mut e.cert_file, l.cert_file);
        over(&mut e.key_file, l.key_file);
        self.unknown_keys.extend(later.unknown_keys);
    }
}

/// `store { etcd { … } }`: where several servers of a datacenter share their state.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct EtcdFileConfig {
    /// `endpoints`: client URLs of the etcd members.
    pub(crate) endpoints: Option<Vec<String>>,
    /// `prefix`: the datacenter's key prefix.
    pub(crate) prefix: Option<String>,
    /// `kek_file`: the key-encryption key (32 bytes, base64).
    pub(crate) kek_file: Option<PathBuf>,
    /// `tls.ca_file`.
    pub(crate) ca_file: Option<PathBuf>,
    /// `tls.cert_file`.
    pub(crate) cert_file: Option<PathBuf>,
    /// `tls.key_file`.
    pub(crate) key_file: Option<PathBuf>,
}

/// A block as an object. HCL gives a repeated block as an array of objects (and JSON may
/// too, as Consul allows): they merge in order.
fn object(value: &Value, name: &str) -> Result<Map<String, Value>, Error> {
    match value {
        Value::Object(m) => Ok(m.clone()),
        Value::Array(items) => {
            let mut merged = Map::new();
            for item in items {
                merged.extend(object(item, name)?);
            }
            Ok(merged)
        }
        _ => Err(invalid(if name.is_empty() {
            "expected an object at the top level".to_owned()
        } else {
            format!("{name}: expected a block (object)")
        })),
    }
}

fn string(name: &str, value: &Value) -> Result<String, Error> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(invalid(format!("{name}: expected a string"))),
    }
}

/// A list of strings (a lone string counts as a list of one, as Consul's weak decoding
/// reads it).
fn strings(name: &str, value: &Value) -> Result<Vec<String>, Error> {
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| string(&format!("{name}[{i}]"), v))
            .collect(),
        Value::String(s) => Ok(vec![s.clone()]),
        _ => Err(invalid(format!("{name}: expected a list of strings"))),
    }
}

fn boolean(name: &str, value: &Value) -> Result<bool, Error> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "1" | "t" | "true" => Ok(true),
            "0" | "f" | "false" => Ok(false),
            _ => Err(invalid(format!("{name}: expected a boolean, got {s:?}"))),
        },
        Value::Number(n) => Ok(n.as_f64().is_some_and(|f| f != 0.0)),
        _ => Err(invalid(format!("{name}: expected a boolean"))),
    }
}

fn integer(name: &str, value: &Value) -> Result<i64, Error> {
    let n = match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.ok_or_else(|| invalid(format!("{name}: expected an integer")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const HCL: &str = r#"
        datacenter = "east"
        primary_datacenter = "east"
        node_name = "n1"
        data_dir = "/tmp/x"
        server = true
        client_addr = "0.0.0.0"
        ui_config { enabled = true }
        addresses { http = "127.0.0.1" }
        ports {
          http  = 8600
          https = "8601"
          grpc  = 8502
        }
        acl {
          enabled        = true
          default_policy = "deny"
          tokens { initial_management = "s3cr3t" }
        }
        connect {
          enabled     = true
          ca_provider = "consul"
          ca_config {
            leaf_cert_ttl    = "24h"
            private_key_type = "rsa"
            private_key_bits = 2048
          }
        }
    "#;

    #[test]
    fn workload_api_blocks_in_hcl_and_json() {
        let hcl = r#"
            workload_api {
              socket       = "/run/w.sock"
              socket_mode  = "0770"
              socket_group = 100
              jwt_svid_ttl = "10m"
              token        = "s3cr3t"
              workload {
                service = "web"
                uid     = 1000
              }
              workload {
                service = "db"
                gid     = 7
                path    = "/usr/bin/db"
              }
            }
        "#;
        let c = AgentConfigFile::parse(hcl, ConfigFormat::Hcl).unwrap();
        let w = &c.workload_api;
        assert_eq!(w.socket, Some(PathBuf::from("/run/w.sock")));
        assert_eq!(w.socket_mode, Some(0o770));
        assert_eq!(w.socket_group, Some(100));
        assert_eq!(w.jwt_svid_ttl, Some(Duration::from_secs(600)));
        assert_eq!(w.workloads.len(), 2);
        assert_eq!(w.workloads[0].service, "web");
        assert_eq!(w.workloads[0].uid, Some(1000));
        assert_eq!(w.workloads[1].path, Some(PathBuf::from("/usr/bin/db")));
        assert!(
            !format!("{c:?}").contains("s3cr3t"),
            "the token is redacted"
        );

        let json = r#"{"workload_api": {"socket": "/run/w.sock",
            "workload": {"service": "web", "uid": "1000"}}}"#;
        let mut j = AgentConfigFile::parse(json, ConfigFormat::Json).unwrap();
        assert_eq!(j.workload_api.workloads.len(), 1);
        j.merge(c);
        assert_eq!(
            j.workload_api.workloads.len(),
            3,
            "registrations add up across files"
        );

        for bad in [
            r#"workload_api { socket_mode = "999" }"#,
            r#"workload_api { workload { service = "web" } }"#,
            r#"workload_api { workload { uid = 1 } }"#,
            r#"workload_api { jwt_svid_ttl = "0s" }"#,
        ] {
            assert!(
                AgentConfigFile::parse(bad, ConfigFormat::Hcl).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn hcl_with_consuls_keys() {
        let c = AgentConfigFile::parse(HCL, ConfigFormat::Hcl).unwrap();
        assert_eq!(c.datacenter.as_deref(), Some("east"));
        assert_eq!(c.primary_datacenter.as_deref(), Some("east"));
        assert_eq!(c.node_name.as_deref(), Some("n1"));
        assert_eq!(c.data_dir, Some(PathBuf::from("/tmp/x")));
        assert_eq!(c.server, Some(true));
        assert_eq!(c.client_addr.as_deref(), Some("0.0.0.0"));
        assert_eq!(c.http_addr.as_deref(), Some("127.0.0.1"));
        assert_eq!(c.http_port, Some(8600));
        assert_eq!(c.https_port, Some(8601));
        assert_eq!(c.acl.enabled, Some(true));
        assert_eq!(
            c.acl.default_policy,
            Some(connect_core::acl::AclDefaultPolicy::Deny)
        );
        assert_eq!(c.acl.initial_management.as_deref(), Some("s3cr3t"));
        assert_eq!(c.connect.ca_provider.as_deref(), Some("consul"));
        let ca = c.connect.ca_config.clone().unwrap();
        assert_eq!(ca["leaf_cert_ttl"], json!("24h"));
        assert_eq!(ca["private_key_bits"], json!(2048));
        let mut unknown = c.unknown_keys.clone();
        unknown.sort();
        assert_eq!(unknown, ["ports.grpc", "ui_config"]);
        // The CA accepts the snake_case keys as they are.
        let cfg = connect_core::ca::ConsulCaConfig::from_map(&ca).unwrap();
        assert_eq!(cfg.common.leaf_cert_ttl.as_secs(), 24 * 3600);
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    #[test]
    fn json_is_the_same_model() {
        let text = json!({
            "datacenter": "dc2",
            "server": "true",
            "ports": {"http": -1, "https": 8501},
            "acl": {"enabled": true, "tokens": {"master": "legacy"}},
            "connect": {"ca_config": {"PrivateKey": "KEY-MATERIAL"}}
        })
        .to_string();
        let c = AgentConfigFile::parse(&text, ConfigFormat::Json).unwrap();
        assert_eq!(c.datacenter.as_deref(), Some("dc2"));
        assert_eq!(c.server, Some(true));
        assert_eq!(c.http_port, Some(-1));
        assert_eq!(c.acl.initial_management.as_deref(), Some("legacy"));
        assert!(!format!("{c:?}").contains("KEY-MATERIAL"));
    }

    #[test]
    fn bad_files_are_refused_with_the_key_named() {
        for (text, format, want) in [
            ("{", ConfigFormat::Json, "invalid JSON"),
            ("[1]", ConfigFormat::Json, "top level"),
            ("server = \"maybe\"", ConfigFormat::Hcl, "server"),
            ("ports { http = \"x\" }", ConfigFormat::Hcl, "ports.http"),
            ("acl = 3", ConfigFormat::Hcl, "acl"),
            (
                "acl { default_policy = \"sometimes\" }",
                ConfigFormat::Hcl,
                "acl.default_policy",
            ),
            ("datacenter = [1]", ConfigFormat::Hcl, "datacenter"),
            ("x = = 1", ConfigFormat::Hcl, "invalid HCL"),
        ] {
            let e = AgentConfigFile::parse(text, format).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn later_files_win_and_ca_config_merges() {
        let mut a = AgentConfigFile::parse(
            r#"datacenter = "a"
               node_name = "n"
               connect {
                 ca_config {
                   leaf_cert_ttl = "24h"
                   private_key_type = "ec"
                 }
               }"#,
            ConfigFormat::Hcl,
        )
        .unwrap();
        let b = AgentConfigFile::parse(
            r#"{"datacenter": "b", "connect": {"ca_config": {"private_key_type": "rsa"}}}"#,
            ConfigFormat::Json,
        )
        .unwrap();
        a.merge(b);
        assert_eq!(a.datacenter.as_deref(), Some("b"));
        assert_eq!(a.node_name.as_deref(), Some("n"));
        let ca = a.connect.ca_config.unwrap();
        assert_eq!(ca["leaf_cert_ttl"], json!("24h"));
        assert_eq!(ca["private_key_type"], json!("rsa"));
    }

    #[test]
    fn repeated_blocks_merge_in_order() {
        let c = AgentConfigFile::parse(
            r#"acl { enabled = true }
               acl { default_policy = "deny" }"#,
            ConfigFormat::Hcl,
        )
        .unwrap();
        assert_eq!(c.acl.enabled, Some(true));
        assert_eq!(
            c.acl.default_policy,
            Some(connect_core::acl::AclDefaultPolicy::Deny)
        );
    }

    #[test]
    fn limits_in_hcl_and_json_merge_key_by_key() {
        let mut a = AgentConfigFile::parse(
            r#"limits {
                 http_max_conns_per_client = 50
                 https_handshake_timeout   = "2s"
                 http_idle_timeout         = "1m30s"
                 rpc_rate                  = 100
               }"#,
            ConfigFormat::Hcl,
        )
        .unwrap();
        assert_eq!(a.limits.http_max_conns_per_client, Some(50));
        assert_eq!(
            a.limits.https_handshake_timeout,
            Some(Duration::from_secs(2))
        );
        assert_eq!(a.limits.http_idle_timeout, Some(Duration::from_secs(90)));
        // Consul's other limits (RPC, KV) mean nothing here: reported, not refused.
        assert_eq!(a.unknown_keys, ["limits.rpc_rate"]);
        let b = AgentConfigFile::parse(
            r#"{"limits": {"http_max_conns": "64", "http_header_read_timeout": "500ms",
                           "http_body_read_timeout": "5s", "http_max_conns_per_client": 0}}"#,
            ConfigFormat::Json,
        )
        .unwrap();
        a.merge(b);
        assert_eq!(
            a.limits,
            LimitsFileConfig {
                http_max_conns_per_client: Some(0),
                https_handshake_timeout: Some(Duration::from_secs(2)),
                http_max_conns: Some(64),
                http_header_read_timeout: Some(Duration::from_millis(500)),
                http_body_read_timeout: Some(Duration::from_secs(5)),
                http_idle_timeout: Some(Duration::from_secs(90)),
            }
        );
    }

    #[test]
    fn bad_limits_are_refused_with_the_key_named() {
        for (text, want) in [
            (
                "limits { http_max_conns_per_client = -1 }",
                "limits.http_max_conns_per_client: must be between 0 (no limit) and 1048576, got -1",
            ),
            (
                "limits { http_max_conns_per_client = 1048577 }",
                "limits.http_max_conns_per_client: must be between 0",
            ),
            (
                "limits { http_max_conns = 0 }",
                "limits.http_max_conns: must be between 1 and 1048576, got 0",
            ),
            (
                "limits { http_max_conns = 1.5 }",
                "limits.http_max_conns: expected an integer",
            ),
            (
                "limits { https_handshake_timeout = \"5\" }",
                "limits.https_handshake_timeout: time: missing unit",
            ),
            (
                "limits { http_idle_timeout = \"-1s\" }",
                "limits.http_idle_timeout: duration must not be negative",
            ),
            (
                "limits { http_idle_timeout = \"0\" }",
                "limits.http_idle_timeout: must be greater than zero",
            ),
            (
                "limits { http_header_read_timeout = true }",
                "limits.http_header_read_timeout: expected a duration string",
            ),
            (
                "limits { http_body_read_timeout = \"24h0m1s\" }",
                "limits.http_body_read_timeout: must be at most 24h",
            ),
            ("limits = \"none\"", "limits: expected a block"),
        ] {
            let e = AgentConfigFile::parse(text, ConfigFormat::Hcl).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidParameter);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn format_detection() {
        assert_eq!(
            ConfigFormat::detect(Path::new("a.json"), "x"),
            ConfigFormat::Json
        );
        assert_eq!(
            ConfigFormat::detect(Path::new("a.hcl"), "{"),
            ConfigFormat::Hcl
        );
        assert_eq!(
            ConfigFormat::detect(Path::new("a"), "  {\"x\": 1}"),
            ConfigFormat::Json
        );
        assert_eq!(
            ConfigFormat::detect(Path::new("a.conf"), "x = 1"),
            ConfigFormat::Hcl
        );
    }

    #[test]
    fn store_etcd_block_in_hcl_and_json() {
        let hcl = r#"
            store {
              etcd {
                endpoints = ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]
                prefix    = "/connect/east"
                kek_file  = "/etc/connect/kek.b64"
                tls {
                  ca_file   = "ca.pem"
                  cert_file = "c.pem"
                  key_file  = "k.pem"
                }
              }
            }
        "#;
        let json = r#"{"store": {"etcd": {
            "endpoints": ["http://10.0.0.1:2379", "http://10.0.0.2:2379"],
            "prefix": "/connect/east", "kek_file": "/etc/connect/kek.b64",
            "tls": {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem"}}}}"#;
        let want = EtcdFileConfig {
            endpoints: Some(vec![
                "http://10.0.0.1:2379".into(),
                "http://10.0.0.2:2379".into(),
            ]),
            prefix: Some("/connect/east".into()),
            kek_file: Some("/etc/connect/kek.b64".into()),
            ca_file: Some("ca.pem".into()),
            cert_file: Some("c.pem".into()),
            key_file: Some("k.pem".into()),
        };
        for (text, format) in [(hcl, ConfigFormat::Hcl), (json, ConfigFormat::Json)] {
            let c = AgentConfigFile::parse(text, format).unwrap();
            assert_eq!(c.etcd, want);
            assert!(c.unknown_keys.is_empty(), "{:?}", c.unknown_keys);
        }
        // A lone endpoint is a list of one; a later file's values win.
        let mut merged = AgentConfigFile::parse(hcl, ConfigFormat::Hcl).unwrap();
        merged.merge(
            AgentConfigFile::parse(
                r#"{"store": {"etcd": {"endpoints": "http://e:2379"}}}"#,
                ConfigFormat::Json,
            )
            .unwrap(),
        );
        assert_eq!(merged.etcd.endpoints, Some(vec!["http://e:2379".into()]));
        assert_eq!(merged.etcd.prefix.as_deref(), Some("/connect/east"));
    }

    #[test]
    fn bad_store_blocks_are_refused_with_the_key() {
        for (text, needle) in [
            (
                r#"{"store": {"consul": {}}}"#,
                "store.consul: unknown store",
            ),
            (
                r#"{"store": {"etcd": {"endpoint": "x"}}}"#,
                "store.etcd.endpoint: unknown key",
            ),
            (
                r#"{"store": {"etcd": {"tls": {"ca": "x"}}}}"#,
                "store.etcd.tls.ca: unknown key",
            ),
            (
                r#"{"store": {"etcd": {"endpoints": {"a": 1}}}}"#,
                "store.etcd.endpoints",
            ),
            (r#"{"store": "etcd"}"#, "store: expected a block"),
        ] {
            let err = AgentConfigFile::parse(text, ConfigFormat::Json).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidParameter);
            assert!(err.to_string().contains(needle), "{text}: {err}");
        }
    }
}
