//! Reading registration bodies the way Consul's agent does.
//!
//! Go's `encoding/json` matches object keys to struct fields case-insensitively, ignores keys it
//! does not know and leaves a field at its zero value for `null`; on top of that, Consul's agent
//! translates snake_case keys (`destination_service_name`) before decoding. Clients rely on all
//! of it, so the document is first rewritten into the exact field names — comparing keys with
//! case and underscores ignored — and only then handed to `serde`.

use serde_json::{Map, Value};

use super::CatalogError;

/// Where a field's value leads: to a scalar (or a map whose keys are data, like `Meta`), to a
/// nested object, or to a list of nested objects.
#[derive(Clone, Copy)]
pub(super) enum Shape {
    Leaf,
    Object(&'static [Field]),
    ListOf(&'static [Field]),
}

/// A key as clients may spell it, the field name it stands for, and the shape of its value.
/// The two names differ only for aliases (`ID` for `CheckID` in a check).
pub(super) type Field = (&'static str, &'static str, Shape);

/// Check fields that select a check type libconnect does not run; known so that they are
/// refused with a clear message rather than silently dropped as unknown keys.
pub(super) const UNSUPPORTED_CHECK_FIELDS: &[&str] = &[
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

const CHECK_FIELDS: &[Field] = &[
    ("CheckID", "CheckID", Shape::Leaf),
    ("ID", "CheckID", Shape::Leaf),
    ("Name", "Name", Shape::Leaf),
    ("TTL", "TTL", Shape::Leaf),
    ("Status", "Status", Shape::Leaf),
    ("Notes", "Notes", Shape::Leaf),
    ("Args", "Args", Shape::Leaf),
    ("ScriptArgs", "ScriptArgs", Shape::Leaf),
    ("HTTP", "HTTP", Shape::Leaf),
    ("TCP", "TCP", Shape::Leaf),
    ("UDP", "UDP", Shape::Leaf),
    ("GRPC", "GRPC", Shape::Leaf),
    ("H2PING", "H2PING", Shape::Leaf),
    ("DockerContainerID", "DockerContainerID", Shape::Leaf),
    ("Shell", "Shell", Shape::Leaf),
    ("AliasNode", "AliasNode", Shape::Leaf),
    ("AliasService", "AliasService", Shape::Leaf),
    ("OSService", "OSService", Shape::Leaf),
];

const MESH_GATEWAY_FIELDS: &[Field] = &[("Mode", "Mode", Shape::Leaf)];

const UPSTREAM_FIELDS: &[Field] = &[
    ("DestinationType", "DestinationType", Shape::Leaf),
    ("DestinationNamespace", "DestinationNamespace", Shape::Leaf),
    ("DestinationPartition", "DestinationPartition", Shape::Leaf),
    ("DestinationPeer", "DestinationPeer", Shape::Leaf),
    ("DestinationName", "DestinationName", Shape::Leaf),
    ("Datacenter", "Datacenter", Shape::Leaf),
    ("LocalBindAddress", "LocalBindAddress", Shape::Leaf),
    ("LocalBindPort", "LocalBindPort", Shape::Leaf),
    ("Config", "Config", Shape::Leaf),
    (
        "MeshGateway",
        "MeshGateway",
        Shape::Object(MESH_GATEWAY_FIELDS),
    ),
];

const PROXY_FIELDS: &[Field] = &[
    (
        "DestinationServiceName",
        "DestinationServiceName",
        Shape::Leaf,
    ),
    ("DestinationServiceID", "DestinationServiceID", Shape::Leaf),
    ("LocalServiceAddress", "LocalServiceAddress", Shape::Leaf),
    ("LocalServicePort", "LocalServicePort", Shape::Leaf),
    ("Config", "Config", Shape::Leaf),
    ("Upstreams", "Upstreams", Shape::ListOf(UPSTREAM_FIELDS)),
];

const CONNECT_FIELDS: &[Field] = &[
    ("Native", "Native", Shape::Leaf),
    ("SidecarService", "SidecarService", Shape::Leaf),
];

/// The fields of `/v1/agent/service/register`.
pub(super) const REGISTRATION_FIELDS: &[Field] = &[
    ("Kind", "Kind", Shape::Leaf),
    ("ID", "ID", Shape::Leaf),
    ("Name", "Name", Shape::Leaf),
    ("Tags", "Tags", Shape::Leaf),
    ("Address", "Address", Shape::Leaf),
    ("Port", "Port", Shape::Leaf),
    ("Meta", "Meta", Shape::Leaf),
    ("Proxy", "Proxy", Shape::Object(PROXY_FIELDS)),
    ("Connect", "Connect", Shape::Object(CONNECT_FIELDS)),
    ("Check", "Check", Shape::Object(CHECK_FIELDS)),
    ("Checks", "Checks", Shape::ListOf(CHECK_FIELDS)),
    // Known so that a namespace or partition is refused rather than silently dropped.
    ("Namespace", "Namespace", Shape::Leaf),
    ("Partition", "Partition", Shape::Leaf),
];

/// Whether `key` names `field`, ignoring ASCII case and underscores.
fn key_matches(key: &str, field: &str) -> bool {
    let mut key = key.bytes().filter(|b| *b != b'_');
    let mut field = field.bytes();
    loop {
        match (key.next(), field.next()) {
            (None, None) => return true,
            (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
            _ => return false,
        }
    }
}

/// Renames the keys of `object` to the field names of `fields`, recursing into nested objects,
/// and drops `null`s and unknown keys.
pub(super) fn canonical_object(
    object: Map<String, Value>,
    fields: &'static [Field],
    path: &str,
) -> Result<Map<String, Value>, CatalogError> {
    let mut out = Map::new();
    for (key, value) in object {
        let Some(&(_, name, shape)) = fields
            .iter()
            .find(|(spelling, _, _)| key_matches(&key, spelling))
        else {
            continue;
        };
        if value.is_null() {
            continue;
        }
        let field_path = format!("{path}{name}");
        let value = match (shape, value) {
            (Shape::Object(inner), Value::Object(object)) => {
                Value::Object(canonical_object(object, inner, &format!("{field_path}."))?)
            }
            (Shape::ListOf(inner), Value::Array(items)) => Value::Array(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, item)| match item {
                        Value::Object(object) => {
                            canonical_object(object, inner, &format!("{field_path}[{i}]."))
                                .map(Value::Object)
                        }
                        // Left for serde to reject with the field's path.
                        other => Ok(other),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            // Scalars, and wrong types that serde will reject with the field's path.
            (_, value) => value,
        };
        // Object order is lost by now, so Go's "last one wins" cannot be honoured; refusing is
        // better than silently picking one.
        if out.insert(name.to_owned(), value).is_some() {
            return Err(CatalogError::Json {
                message: format!(
                    "{field_path}: key given more than once (keys are case-insensitive)"
                ),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_ignoring_case_and_underscores() {
        assert!(key_matches(
            "destination_service_name",
            "DestinationServiceName"
        ));
        assert!(key_matches(
            "DESTINATIONSERVICENAME",
            "DestinationServiceName"
        ));
        assert!(key_matches("ttl", "TTL"));
        assert!(!key_matches("name", "Names"));
        assert!(!key_matches("names", "Name"));
        assert!(!key_matches("", "Name"));
    }
}
