//! The intention data model and its Consul JSON shape (Consul API docs, Intentions).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The value that stands for "any namespace" or "any service"; only ever a whole value.
pub const WILDCARD: &str = "*";

/// The namespace an empty value stands for.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The partition an empty value stands for.
pub const DEFAULT_PARTITION: &str = "default";

/// The only source type Consul accepts (`SourceType`).
pub const SOURCE_TYPE_CONSUL: &str = "consul";

/// Whether an intention (or one of its L7 permissions) allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntentionAction {
    /// Allow the connection (or request).
    Allow,
    /// Deny the connection (or request).
    Deny,
}

impl IntentionAction {
    /// The JSON spelling: `allow` or `deny`.
    pub const fn as_str(self) -> &'static str {
        match self {
            IntentionAction::Allow => "allow",
            IntentionAction::Deny => "deny",
        }
    }

    /// The action with this exact JSON spelling; Consul compares case-sensitively, so `ALLOW`
    /// is not an action.
    pub fn from_name(name: &str) -> Option<IntentionAction> {
        match name {
            "allow" => Some(IntentionAction::Allow),
            "deny" => Some(IntentionAction::Deny),
            _ => None,
        }
    }
}

impl fmt::Display for IntentionAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An intention as Consul's legacy intentions API shows it (`/v1/connect/intentions`).
///
/// Field names, and which fields are left out when empty, follow Consul's JSON so that a
/// serialised intention can be served to Consul clients unchanged. To read JSON from a client,
/// use [`Intention::from_json`], which matches keys case-insensitively as Consul does; plain
/// `serde` deserialisation only accepts the exact names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct Intention {
    /// Server-generated UUID; empty for intentions that only exist as a config entry.
    #[serde(rename = "ID")]
    pub id: String,
    /// Free text for people, at most 512 bytes.
    pub description: String,
    /// The peer the source service lives in; empty for a local source.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source_peer: String,
    /// Source namespace, or `*`.
    #[serde(rename = "SourceNS")]
    pub source_ns: String,
    /// Source service name, or `*`.
    pub source_name: String,
    /// Destination namespace, or `*`.
    #[serde(rename = "DestinationNS")]
    pub destination_ns: String,
    /// Destination service name, or `*`.
    pub destination_name: String,
    /// Source admin partition; never a wildcard.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub source_partition: String,
    /// Destination admin partition; never a wildcard.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub destination_partition: String,
    /// Always `consul`; kept as text so that other values reach validation and get Consul's
    /// message rather than a decoding error.
    pub source_type: String,
    /// The L4 action; `None` exactly when [`permissions`](Self::permissions) decide instead.
    #[serde(with = "action_or_empty")]
    pub action: Option<IntentionAction>,
    /// L7 rules, evaluated in order by the proxy; any of them makes the intention deny at L4.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<IntentionPermission>,
    /// Deprecated and unused; carried so that it round-trips.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub default_addr: String,
    /// Deprecated and unused; carried so that it round-trips.
    #[serde(skip_serializing_if = "port_is_zero")]
    pub default_port: u16,
    /// Opaque key/value metadata: at most 64 pairs, keys ≤ 128 bytes, values ≤ 512 bytes.
    pub meta: BTreeMap<String, String>,
    /// Evaluation order, 1–9, higher first; derived from the wildcards by
    /// [`Intention::normalize`], never trusted from input.
    pub precedence: u32,
    /// When the intention was created (RFC 3339).
    #[serde(with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<OffsetDateTime>,
    /// When the intention was last changed (RFC 3339).
    #[serde(with = "rfc3339", skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<OffsetDateTime>,
    /// Content hash used by replication; base64 in JSON, as Go encodes bytes.
    #[serde(with = "base64_bytes", skip_serializing_if = "Vec::is_empty")]
    pub hash: Vec<u8>,
    /// Raft index at creation.
    pub create_index: u64,
    /// Raft index of the last change.
    pub modify_index: u64,
}

impl Intention {
    /// A local L4 intention between two services in the default namespace, normalized.
    pub fn new(source_name: &str, destination_name: &str, action: IntentionAction) -> Intention {
        let mut ixn = Intention {
            source_name: source_name.to_owned(),
            destination_name: destination_name.to_owned(),
            action: Some(action),
            ..Intention::default()
        };
        ixn.normalize();
        ixn
    }
}

/// Consul's server-side string form, `ALLOW default/web => default/db (ID: <id>)`, which the
/// authorize endpoint puts in its reason.
impl fmt::Display for Intention {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Consul upper-cases an empty action to an empty word for L7 intentions; keep that
        // shape rather than invent a word clients have never seen.
        let action = match self.action {
            Some(IntentionAction::Allow) => "ALLOW",
            Some(IntentionAction::Deny) => "DENY",
            None => "",
        };
        write!(
            f,
            "{action} {}/{} => {}/{} (ID: {})",
            self.source_ns, self.source_name, self.destination_ns, self.destination_name, self.id
        )
    }
}

/// One L7 rule of an intention.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct IntentionPermission {
    /// What happens to a request that matches.
    #[serde(rename = "Action")]
    pub action: IntentionAction,
    /// The HTTP request attributes to match; required by validation.
    #[serde(rename = "HTTP", default, skip_serializing_if = "Option::is_none")]
    pub http: Option<IntentionHttpPermission>,
}

impl IntentionPermission {
    /// A permission matching `http`.
    pub fn new(action: IntentionAction, http: IntentionHttpPermission) -> IntentionPermission {
        IntentionPermission {
            action,
            http: Some(http),
        }
    }
}

/// The HTTP attributes an L7 permission matches.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct IntentionHttpPermission {
    /// Matches this exact path; starts with `/`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path_exact: String,
    /// Matches paths with this prefix; starts with `/`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path_prefix: String,
    /// Matches paths against this regular expression.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path_regex: String,
    /// Header rules; all must match.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub header: Vec<IntentionHttpHeaderPermission>,
    /// Allowed methods, upper case, each once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
}

/// One header rule of an L7 permission: exactly one of the matchers is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
#[non_exhaustive]
pub struct IntentionHttpHeaderPermission {
    /// The header name; required.
    pub name: String,
    /// The header is present.
    #[serde(skip_serializing_if = "is_false")]
    pub present: bool,
    /// The header has exactly this value.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub exact: String,
    /// The header value starts with this.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// The header value ends with this.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub suffix: String,
    /// The header value matches this regular expression.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub regex: String,
    /// Negates the match.
    #[serde(skip_serializing_if = "is_false")]
    pub invert: bool,
}

fn port_is_zero(port: &u16) -> bool {
    *port == 0
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Consul writes `"Action": ""` for L7 intentions, so an absent action is the empty string on
/// the wire in both directions.
mod action_or_empty {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    use super::IntentionAction;

    pub(super) fn serialize<S: Serializer>(
        action: &Option<IntentionAction>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(action.map_or("", IntentionAction::as_str))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<IntentionAction>, D::Error> {
        match Option::<String>::deserialize(deserializer)?.as_deref() {
            None | Some("") => Ok(None),
            Some(name) => IntentionAction::from_name(name).map(Some).ok_or_else(|| {
                D::Error::custom(format!(
                    "unknown action {name:?}, expected \"allow\" or \"deny\""
                ))
            }),
        }
    }
}

/// Go's `time.Time` in JSON: RFC 3339 with nanoseconds, and `0001-01-01T00:00:00Z` for "unset".
mod rfc3339 {
    use serde::de::Error as _;
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};
    use time::OffsetDateTime;
    use time::format_description::well_known::Rfc3339;
    use time::macros::datetime;

    /// Go's zero time, which Consul sends for config-entry intentions that have no timestamps.
    const GO_ZERO_TIME: OffsetDateTime = datetime!(0001-01-01 0:00 UTC);

    pub(super) fn serialize<S: Serializer>(
        value: &Option<OffsetDateTime>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(t) => serializer.serialize_str(&t.format(&Rfc3339).map_err(S::Error::custom)?),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let Some(text) = Option::<String>::deserialize(deserializer)? else {
            return Ok(None);
        };
        let t = OffsetDateTime::parse(&text, &Rfc3339)
            .map_err(|e| D::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}")))?;
        Ok((t != GO_ZERO_TIME).then_some(t))
    }
}

/// Go encodes `[]byte` as standard base64 with padding.
mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<u8>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(Vec::new()),
            Some(text) => STANDARD
                .decode(text.as_bytes())
                .map_err(|e| D::Error::custom(format!("not base64: {e}"))),
        }
    }
}
