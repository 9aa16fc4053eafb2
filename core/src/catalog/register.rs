//! The body of `/v1/agent/service/register`: decoding, defaults and validation.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    AgentService, CatalogError, CheckDefinition, HealthCheck, HealthStatus, ProxyConfig,
    ServiceAddress, ServiceConnect, ServiceKind,
};
use crate::duration::parse_go_duration;
use crate::json::Rules;
use crate::spiffe::{check_default_namespace, check_default_partition, check_service_name};

/// Pairs in a `Meta` map (Consul's `metaMaxKeyPairs`).
pub const MAX_SERVICE_META_PAIRS: usize = 64;
/// `Meta` keys, in bytes (`metaKeyMaxLength`).
pub const MAX_SERVICE_META_KEY_LEN: usize = 128;
/// `Meta` values, in bytes (`metaValueMaxLength`).
pub const MAX_SERVICE_META_VALUE_LEN: usize = 512;
/// Meta keys with this prefix are Consul's own.
pub const RESERVED_META_PREFIX: &str = "consul-";

/// A service registration as `/v1/agent/service/register` accepts it.
///
/// Decode client bodies with [`ServiceRegistration::from_json`], which matches keys as Consul
/// does and validates; plain `serde` accepts only the exact names and checks nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct ServiceRegistration {
    /// What the service is.
    pub kind: ServiceKind,
    /// The instance ID; defaults to [`name`](Self::name).
    #[serde(rename = "ID", skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The service name; required.
    pub name: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The service's own address; empty means the node's.
    pub address: String,
    /// Addresses by network (`lan`, `wan`), as Consul's `TaggedAddresses`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    /// The port the service listens on.
    pub port: u16,
    /// Opaque metadata, within Consul's limits.
    pub meta: BTreeMap<String, String>,
    /// Proxy settings; required for `connect-proxy`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// Connect settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<ServiceConnect>,
    /// One check; registered before [`checks`](Self::checks), as Consul does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<CheckRegistration>,
    /// More checks.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckRegistration>,
}

/// Check fields that select a check type libconnect does not run; known so that they are
/// refused with a clear message rather than ignored as unknown keys.
const UNSUPPORTED_CHECK_FIELDS: &[&str] = &[
    "Args",
    "ScriptArgs",
    "HTTP",
    "TCP",
    "UDP",
    "GRPC",
    "H2PING",
    "DockerContainerID",
    "Shell",
    "AliasNode",
    "AliasService",
    "OSService",
];

/// A check registered with a service. Only TTL checks are run by libconnect.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct CheckRegistration {
    /// The check ID; defaults to `service:<service id>` (`:<n>` appended when the service has
    /// several checks). `ID` is read as an alias, as Consul's agent reads it.
    #[serde(
        rename = "CheckID",
        alias = "ID",
        skip_serializing_if = "String::is_empty"
    )]
    pub check_id: String,
    /// A name for people; defaults to `Service '<name>' check`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The Go duration after which the check turns critical without an update; required.
    #[serde(rename = "TTL")]
    pub ttl: String,
    /// The initial status; empty means `critical`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Free text for people.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub notes: String,
    /// The instance on this node the check belongs to; empty for a node check. Read only by
    /// `/v1/agent/check/register`: a check registered with a service belongs to that service.
    #[serde(rename = "ServiceID", skip_serializing_if = "String::is_empty")]
    pub service_id: String,
}

impl CheckRegistration {
    /// A TTL check with the default ID, name and initial status.
    pub fn ttl(ttl: &str) -> CheckRegistration {
        CheckRegistration {
            ttl: ttl.to_owned(),
            ..CheckRegistration::default()
        }
    }

    /// Decodes and validates a `/v1/agent/check/register` body, as Consul's agent reads it:
    /// keys as [`ServiceRegistration::from_json`] matches them, `Name` required, the ID
    /// defaulting to the name, and only TTL checks (other check types are refused by name).
    pub fn from_json(bytes: &[u8]) -> Result<CheckRegistration, CatalogError> {
        let object = json_object(bytes)?;
        let label = match field(&object, "CheckID").or_else(|| field(&object, "ID")) {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => match field(&object, "Name") {
                Some(Value::String(name)) => name.clone(),
                _ => String::new(),
            },
        };
        refuse_unsupported_check(&label, &object)?;
        let mut check =
            crate::json::decode::<CheckRegistration>(Value::Object(object), Rules::AGENT).map_err(
                |e| CatalogError::Json {
                    message: e.to_string(),
                },
            )?;
        if check.name.is_empty() {
            return Err(CatalogError::MissingCheckName);
        }
        if check.check_id.is_empty() {
            check.check_id.clone_from(&check.name);
        }
        validate_check(&check.check_id, &check)?;
        Ok(check)
    }

    /// The check this registration creates on `node`, of `service` when it names one; the
    /// status starts critical unless the registration says otherwise.
    pub fn to_health_check(&self, node: &str, service: Option<&AgentService>) -> HealthCheck {
        let mut check = HealthCheck::node_check(node, &self.check_id, HealthStatus::Critical);
        check.name.clone_from(&self.name);
        check.status = HealthStatus::from_name(&self.status).unwrap_or_default();
        check.notes.clone_from(&self.notes);
        check.check_type = "ttl".to_owned();
        check.definition.ttl.clone_from(&self.ttl);
        if let Some(s) = service {
            check.service_id.clone_from(&s.id);
            check.service_name.clone_from(&s.service);
            check.service_tags.clone_from(&s.tags);
        }
        check
    }
}

impl ServiceRegistration {
    /// A typical service with a name and a port.
    pub fn new(name: &str, port: u16) -> ServiceRegistration {
        ServiceRegistration {
            name: name.to_owned(),
            port,
            ..ServiceRegistration::default()
        }
    }

    /// A sidecar proxy for `destination`, named `<destination>-sidecar-proxy` as Consul names
    /// the sidecars it creates.
    pub fn sidecar_proxy(destination: &str, port: u16) -> ServiceRegistration {
        ServiceRegistration {
            kind: ServiceKind::ConnectProxy,
            name: format!("{destination}-sidecar-proxy"),
            port,
            proxy: Some(ProxyConfig {
                destination_service_name: destination.to_owned(),
                destination_service_id: destination.to_owned(),
                ..ProxyConfig::default()
            }),
            ..ServiceRegistration::default()
        }
    }

    /// Decodes, defaults and validates a `/v1/agent/service/register` body.
    ///
    /// Keys match with case and underscores ignored, unknown keys are ignored and `null` leaves
    /// a field at its default, as in Consul. Every rejection is a [`CatalogError`] naming the
    /// field: a malformed document or wrong type ([`CatalogError::Json`]), a port out of range,
    /// an unknown kind, a check type other than TTL, or a rule of
    /// [`validate`](Self::validate).
    pub fn from_json(bytes: &[u8]) -> Result<ServiceRegistration, CatalogError> {
        let object = json_object(bytes)?;
        let decoded =
            crate::json::decode::<ServiceRegistration>(Value::Object(object.clone()), Rules::AGENT);
        // A key given twice is reported first, as it is the document that is ambiguous;
        // then Consul's typed errors for the values serde would call type errors.
        if let Err(e) = &decoded
            && let Some(field) = e.duplicate_field()
        {
            return Err(CatalogError::Json {
                message: format!("{field}: key given more than once (keys are case-insensitive)"),
            });
        }
        precheck(&object)?;
        let mut registration = decoded.map_err(|e| CatalogError::Json {
            message: e.to_string(),
        })?;
        registration.normalize();
        registration.validate()?;
        Ok(registration)
    }

    /// Fills Consul's defaults: the ID is the name when empty.
    pub fn normalize(&mut self) {
        if self.id.is_empty() {
            self.id.clone_from(&self.name);
        }
    }

    /// The registration's checks in registration order: `Check`, then `Checks`.
    pub fn all_checks(&self) -> impl Iterator<Item = &CheckRegistration> {
        self.check.iter().chain(&self.checks)
    }

    /// Checks the registration and returns the first broken rule. Run
    /// [`normalize`](Self::normalize) first.
    pub fn validate(&self) -> Result<(), CatalogError> {
        if self.name.is_empty() {
            return Err(CatalogError::MissingServiceName);
        }
        check_service_name("Name", &self.name)?;
        if let Some(dest) = self.proxy.as_ref().map(|p| &p.destination_service_name)
            && !dest.is_empty()
        {
            check_service_name("Proxy.DestinationServiceName", dest)?;
        }
        for upstream in self.proxy.iter().flat_map(|p| &p.upstreams) {
            check_default_namespace(
                "Proxy.Upstreams.DestinationNamespace",
                &upstream.destination_namespace,
            )?;
            check_default_partition(
                "Proxy.Upstreams.DestinationPartition",
                &upstream.destination_partition,
            )?;
            if !upstream.datacenter.is_empty() {
                crate::spiffe::check_datacenter_name(
                    "Proxy.Upstreams.Datacenter",
                    &upstream.datacenter,
                )?;
            }
            if upstream.mesh_gateway.parsed_mode().is_none() {
                return Err(CatalogError::UpstreamMeshGatewayMode {
                    mode: upstream.mesh_gateway.mode.clone(),
                });
            }
            // A prepared query's name is not a service name.
            if matches!(upstream.destination_type.as_str(), "" | "service")
                && !upstream.destination_name.is_empty()
            {
                check_service_name(
                    "Proxy.Upstreams.DestinationName",
                    &upstream.destination_name,
                )?;
            }
        }
        validate_meta(&self.meta)?;
        let native = self.connect.as_ref().is_some_and(|c| c.native);
        if self.kind == ServiceKind::ConnectProxy {
            let proxy = self.proxy.as_ref();
            if proxy.is_none_or(|p| p.destination_service_name.is_empty()) {
                return Err(CatalogError::ProxyMissingDestination);
            }
            if self.port == 0 {
                return Err(CatalogError::ProxyMissingPort);
            }
            if native {
                return Err(CatalogError::NativeProxy);
            }
            for (index, upstream) in proxy.iter().flat_map(|p| &p.upstreams).enumerate() {
                match upstream.destination_type.as_str() {
                    "" | "service" | "prepared_query" => {}
                    other => {
                        return Err(CatalogError::UpstreamUnknownType {
                            index,
                            kind: other.to_owned(),
                        });
                    }
                }
                if upstream.destination_name.is_empty() {
                    return Err(CatalogError::UpstreamMissingName { index });
                }
                if upstream.local_bind_port == 0 {
                    return Err(CatalogError::UpstreamZeroPort { index });
                }
            }
        }
        let mut seen = BTreeSet::new();
        for (position, check) in self.all_checks().enumerate() {
            let id = self.check_id(position, check);
            validate_check(&id, check)?;
            if !seen.insert(id.clone()) {
                return Err(CatalogError::DuplicateCheckId { check: id });
            }
        }
        Ok(())
    }

    /// The service instance this registration creates; indexes are left for the store.
    pub fn to_service(&self) -> AgentService {
        AgentService {
            kind: self.kind,
            id: if self.id.is_empty() {
                self.name.clone()
            } else {
                self.id.clone()
            },
            service: self.name.clone(),
            tags: self.tags.clone(),
            meta: self.meta.clone(),
            port: self.port,
            address: self.address.clone(),
            tagged_addresses: self.tagged_addresses.clone(),
            proxy: self.proxy.clone(),
            connect: self.connect.clone().unwrap_or_default(),
            create_index: 0,
            modify_index: 0,
        }
    }

    /// The checks this registration creates on `node`, with Consul's default IDs, names and
    /// initial status; indexes are left for the store.
    pub fn health_checks(&self, node: &str) -> Vec<HealthCheck> {
        let service = self.to_service();
        self.all_checks()
            .enumerate()
            .map(|(position, check)| HealthCheck {
                node: node.to_owned(),
                check_id: self.check_id(position, check),
                name: if check.name.is_empty() {
                    format!("Service '{}' check", service.service)
                } else {
                    check.name.clone()
                },
                status: HealthStatus::from_name(&check.status).unwrap_or_default(),
                notes: check.notes.clone(),
                output: String::new(),
                service_id: service.id.clone(),
                service_name: service.service.clone(),
                service_tags: service.tags.clone(),
                check_type: "ttl".to_owned(),
                definition: CheckDefinition {
                    ttl: check.ttl.clone(),
                },
                create_index: 0,
                modify_index: 0,
            })
            .collect()
    }

    /// Consul's default check ID: `service:<id>`, with `:<n>` (from 1) when there are several.
    fn check_id(&self, position: usize, check: &CheckRegistration) -> String {
        if !check.check_id.is_empty() {
            return check.check_id.clone();
        }
        let id = if self.id.is_empty() {
            &self.name
        } else {
            &self.id
        };
        if self.all_checks().nth(1).is_some() {
            format!("service:{id}:{}", position + 1)
        } else {
            format!("service:{id}")
        }
    }
}

fn validate_check(id: &str, check: &CheckRegistration) -> Result<(), CatalogError> {
    if check.ttl.is_empty() {
        return Err(CatalogError::CheckMissingTtl {
            check: id.to_owned(),
        });
    }
    let invalid_ttl = |reason: String| CatalogError::InvalidTtl {
        check: id.to_owned(),
        value: check.ttl.clone(),
        reason,
    };
    let ttl = parse_go_duration(&check.ttl).map_err(invalid_ttl)?;
    if ttl.is_zero() {
        return Err(invalid_ttl("must be greater than zero".to_owned()));
    }
    if !check.status.is_empty() && HealthStatus::from_name(&check.status).is_none() {
        return Err(CatalogError::InvalidCheckStatus {
            check: id.to_owned(),
            value: check.status.clone(),
        });
    }
    Ok(())
}

fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), CatalogError> {
    let invalid = |message: String| Err(CatalogError::InvalidMeta { message });
    if meta.len() > MAX_SERVICE_META_PAIRS {
        return invalid(format!(
            "cannot contain more than {MAX_SERVICE_META_PAIRS} key/value pairs"
        ));
    }
    for (key, value) in meta {
        if key.is_empty() {
            return invalid("key cannot be blank".to_owned());
        }
        if key.len() > MAX_SERVICE_META_KEY_LEN {
            return invalid(format!(
                "key {key:?} is too long (limit: {MAX_SERVICE_META_KEY_LEN} characters)"
            ));
        }
        if key.starts_with(RESERVED_META_PREFIX) {
            return invalid(format!(
                "key {key:?}: reserved key prefix '{RESERVED_META_PREFIX}' not allowed"
            ));
        }
        if value.len() > MAX_SERVICE_META_VALUE_LEN {
            return invalid(format!(
                "value for key {key:?} is too long (limit: {MAX_SERVICE_META_VALUE_LEN} characters)"
            ));
        }
    }
    Ok(())
}

/// Turns the mistakes `serde` would report as type errors, or ignore as unknown keys, into the
/// typed errors clients get from Consul's validation: an unknown kind, a port out of range, an
/// unsupported check type, a namespace or partition. Reads the document as it was sent, with
/// keys matched as the decoder matches them.
fn precheck(object: &Map<String, Value>) -> Result<(), CatalogError> {
    if let Some(Value::String(kind)) = field(object, "Kind")
        && ServiceKind::from_name(kind).is_none()
    {
        return Err(CatalogError::InvalidKind { kind: kind.clone() });
    }
    check_port(object, "Port", "Port")?;
    // Consul CE refuses these too; silently registering into `default` instead would leave
    // the client believing in an isolation that does not exist.
    if let Some(Value::String(ns)) = field(object, "Namespace") {
        check_default_namespace("Namespace", ns)?;
    }
    if let Some(Value::String(ap)) = field(object, "Partition") {
        check_default_partition("Partition", ap)?;
    }
    if let Some(Value::Object(proxy)) = field(object, "Proxy") {
        check_port(proxy, "LocalServicePort", "Proxy.LocalServicePort")?;
        if let Some(Value::Array(upstreams)) = field(proxy, "Upstreams") {
            for (i, upstream) in upstreams.iter().enumerate() {
                if let Value::Object(upstream) = upstream {
                    check_port(
                        upstream,
                        "LocalBindPort",
                        &format!("Proxy.Upstreams[{i}].LocalBindPort"),
                    )?;
                }
            }
        }
    }
    if let Some(Value::Object(connect)) = field(object, "Connect")
        && field(connect, "SidecarService").is_some()
    {
        return Err(CatalogError::UnsupportedField {
            field: "Connect.SidecarService",
            hint: "register the sidecar proxy as its own service of kind \"connect-proxy\"",
        });
    }
    let single = field(object, "Check").map(|c| ("Check".to_owned(), c));
    let many = match field(object, "Checks") {
        Some(Value::Array(checks)) => checks
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("Checks[{i}]"), c))
            .collect(),
        _ => Vec::new(),
    };
    for (position, check) in single.into_iter().chain(many) {
        let Value::Object(check) = check else {
            continue;
        };
        let label = match field(check, "CheckID").or_else(|| field(check, "ID")) {
            Some(Value::String(id)) if !id.is_empty() => id.clone(),
            _ => position,
        };
        refuse_unsupported_check(&label, check)?;
    }
    Ok(())
}

/// Refuses a check of a type libconnect does not run, naming the field that selects it.
fn refuse_unsupported_check(label: &str, check: &Map<String, Value>) -> Result<(), CatalogError> {
    match UNSUPPORTED_CHECK_FIELDS
        .iter()
        .find(|f| field(check, f).is_some())
    {
        Some(field) => Err(CatalogError::UnsupportedCheck {
            check: label.to_owned(),
            field,
        }),
        None => Ok(()),
    }
}

/// A request body that must be one JSON object.
fn json_object(bytes: &[u8]) -> Result<Map<String, Value>, CatalogError> {
    match serde_json::from_slice(bytes) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(CatalogError::Json {
            message: "expected a JSON object".to_owned(),
        }),
        Err(e) => Err(CatalogError::Json {
            message: e.to_string(),
        }),
    }
}

fn check_port(object: &Map<String, Value>, key: &str, path: &str) -> Result<(), CatalogError> {
    match field(object, key) {
        Some(Value::Number(n)) if n.as_u64().is_none_or(|p| p > u64::from(u16::MAX)) => {
            Err(CatalogError::InvalidPort {
                field: path.to_owned(),
                value: n.to_string(),
            })
        }
        _ => Ok(()),
    }
}

/// The value of the field `name` in `object`, its key matched as decoding matches it.
fn field<'a>(object: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    Rules::AGENT.get(object, name)
}
