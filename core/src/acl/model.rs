//! ACL tokens and policies as Consul's HTTP API shows them.
//!
//! Field names on the wire are Consul's (`AccessorID`, `SecretID`, …) so that JSON from and
//! for Consul clients round-trips unchanged. Fields Consul has and libconnect does not use yet
//! (roles, service identities, expiration) are ignored on input.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// The AccessorID of the anonymous token, used for requests that carry no token.
pub const ANONYMOUS_TOKEN_ACCESSOR_ID: &str = "00000000-0000-0000-0000-000000000002";

/// The SecretID of the anonymous token. It is public by design: presenting it is the same as
/// presenting nothing.
pub const ANONYMOUS_TOKEN_SECRET_ID: &str = "anonymous";

/// What a token's SecretID reads as for a caller without `acl:write` (Consul's text).
pub const REDACTED_SECRET_ID: &str = "<hidden>";

/// The ID of the builtin `global-management` policy.
pub const GLOBAL_MANAGEMENT_POLICY_ID: &str = "00000000-0000-0000-0000-000000000001";

/// The name of the builtin `global-management` policy.
pub const GLOBAL_MANAGEMENT_POLICY_NAME: &str = "global-management";

/// The rules of the builtin `global-management` policy: write on every resource libconnect
/// knows. They are ordinary rules, as in Consul, so a management token is compiled like any
/// other token rather than special-cased.
pub const GLOBAL_MANAGEMENT_RULES: &str = r#"acl = "write"
agent_prefix "" {
  policy = "write"
}
operator = "write"
mesh = "write"
node_prefix "" {
  policy = "write"
}
service_prefix "" {
  policy = "write"
  intentions = "write"
}
"#;

/// IDs starting with this are reserved for builtin tokens and policies.
pub const RESERVED_ID_PREFIX: &str = "00000000-0000-0000-0000-0000000000";

/// A token's reference to a policy. Either field identifies the policy on input; the store
/// fills in both on output, with the policy's current name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct PolicyLink {
    /// The policy's ID.
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The policy's name.
    #[serde(rename = "Name", default)]
    pub name: String,
}

impl PolicyLink {
    /// A link by policy ID.
    pub fn by_id(id: impl Into<String>) -> PolicyLink {
        PolicyLink {
            id: id.into(),
            name: String::new(),
        }
    }

    /// A link by policy name.
    pub fn by_name(name: impl Into<String>) -> PolicyLink {
        PolicyLink {
            id: String::new(),
            name: name.into(),
        }
    }
}

/// An ACL token.
///
/// `Debug` never prints the SecretID: tokens end up in logs through `{:?}` far more often than
/// anyone intends.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Token {
    /// The public identifier, safe to log and to use in management calls.
    #[serde(rename = "AccessorID", default)]
    pub accessor_id: String,
    /// The bearer secret presented in `X-Consul-Token`.
    #[serde(rename = "SecretID", default)]
    pub secret_id: String,
    /// Free text for people.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// The policies whose union this token grants.
    #[serde(rename = "Policies", default, deserialize_with = "null_as_default")]
    pub policies: Vec<PolicyLink>,
    /// Whether the token is local to its datacenter rather than replicated.
    #[serde(rename = "Local", default)]
    pub local: bool,
    /// The store index at which the token was created.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// The store index at which the token last changed.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("accessor_id", &self.accessor_id)
            .field("secret_id", &"<redacted>")
            .field("description", &self.description)
            .field("policies", &self.policies)
            .field("local", &self.local)
            .field("create_index", &self.create_index)
            .field("modify_index", &self.modify_index)
            .finish()
    }
}

/// An ACL policy: named rules, optionally limited to some datacenters.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    /// The policy's ID (a UUID).
    #[serde(rename = "ID", default)]
    pub id: String,
    /// The unique name (`^[A-Za-z0-9\-_]{1,128}$`, compared case-insensitively).
    #[serde(rename = "Name", default)]
    pub name: String,
    /// Free text for people.
    #[serde(rename = "Description", default)]
    pub description: String,
    /// The rules, in HCL or JSON; see [`PolicyRules`](super::PolicyRules).
    #[serde(rename = "Rules", default)]
    pub rules: String,
    /// The datacenters where the policy applies; empty means all.
    #[serde(rename = "Datacenters", default, deserialize_with = "null_as_default")]
    pub datacenters: Vec<String>,
    /// The store index at which the policy was created.
    #[serde(rename = "CreateIndex", default)]
    pub create_index: u64,
    /// The store index at which the policy last changed.
    #[serde(rename = "ModifyIndex", default)]
    pub modify_index: u64,
}

impl Policy {
    /// A policy with a name and rules; the store assigns the ID and indexes.
    pub fn new(name: impl Into<String>, rules: impl Into<String>) -> Policy {
        Policy {
            name: name.into(),
            rules: rules.into(),
            ..Policy::default()
        }
    }
}

/// Consul's Go encoder writes empty slices as `null`.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "6a1253d2-1785-24fd-91c2-f8e78c745511";

    fn token() -> Token {
        Token {
            accessor_id: "6a1253d2-1785-24fd-91c2-f8e78c745512".into(),
            secret_id: SECRET.into(),
            description: "web sidecar".into(),
            policies: vec![PolicyLink::by_name("web")],
            local: true,
            create_index: 3,
            modify_index: 4,
        }
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let t = token();
        for rendered in [
            format!("{t:?}"),
            format!("{t:#?}"),
            format!("{:?}", vec![t.clone()]),
        ] {
            assert!(!rendered.contains(SECRET), "{rendered}");
            assert!(rendered.contains("<redacted>"));
            assert!(rendered.contains(&t.accessor_id));
        }
    }

    #[test]
    fn token_json_uses_consul_names() {
        let json = serde_json::to_value(token()).unwrap();
        assert_eq!(json["AccessorID"], "6a1253d2-1785-24fd-91c2-f8e78c745512");
        assert_eq!(json["SecretID"], SECRET);
        assert_eq!(json["Description"], "web sidecar");
        assert_eq!(json["Policies"][0]["Name"], "web");
        assert_eq!(json["Policies"][0]["ID"], "");
        assert_eq!(json["Local"], true);
        assert_eq!(json["CreateIndex"], 3);
        assert_eq!(json["ModifyIndex"], 4);
        let back: Token = serde_json::from_value(json).unwrap();
        assert_eq!(back, token());
    }

    #[test]
    fn consul_json_decodes_with_nulls_and_extra_fields() {
        let t: Token = serde_json::from_str(
            r#"{"AccessorID":"a","SecretID":"s","Description":"","Policies":null,
                "Roles":null,"Local":false,"CreateTime":"2018-10-24T12:25:06Z",
                "Hash":"UuiRkOQPRCvoRZHRtUxxbrmwZ5crYrOdZ0Z1FTFbTbA=","CreateIndex":59,"ModifyIndex":59}"#,
        )
        .unwrap();
        assert!(t.policies.is_empty());
        assert_eq!(t.create_index, 59);
        let p: Policy = serde_json::from_str(
            r#"{"ID":"e359bd81-baca-903e-7e64-1ccd9fdc78f5","Name":"node-read",
                "Description":"Grants read access to all node information",
                "Rules":"node_prefix \"\" { policy = \"read\"}","Datacenters":null,
                "Hash":"OtZUUKhInTLEqTPfNSSOYbRiSBKm3c4vI2p6MxZnGWc=","CreateIndex":14,"ModifyIndex":14}"#,
        )
        .unwrap();
        assert_eq!(p.name, "node-read");
        assert!(p.datacenters.is_empty());
        let json = serde_json::to_value(&p).unwrap();
        for key in [
            "ID",
            "Name",
            "Description",
            "Rules",
            "Datacenters",
            "CreateIndex",
            "ModifyIndex",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
    }

    #[test]
    fn builtin_rules_parse() {
        let rules = super::super::PolicyRules::parse(GLOBAL_MANAGEMENT_RULES).unwrap();
        assert!(!rules.is_empty());
    }
}
