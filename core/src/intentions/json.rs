//! Reading intentions from JSON the way Consul does.
//!
//! Go's `encoding/json` matches object keys to struct fields case-insensitively, ignores keys it
//! does not know, and leaves a field at its zero value when the JSON says `null`. Consul clients
//! rely on all three (`"sourcename"`, extra fields from newer servers, `"Meta": null`), so the
//! document is first rewritten into the exact field names and then handed to `serde`.

use serde_json::{Map, Value};

use super::{Intention, IntentionAction, IntentionError};

/// Where a field's value leads: to a scalar (or a map whose keys are data, like `Meta`), to a
/// nested object, or to a list of nested objects.
#[derive(Clone, Copy)]
enum Shape {
    Leaf,
    Object(&'static [Field]),
    ListOf(&'static [Field]),
}

type Field = (&'static str, Shape);

const HEADER_FIELDS: &[Field] = &[
    ("Name", Shape::Leaf),
    ("Present", Shape::Leaf),
    ("Exact", Shape::Leaf),
    ("Prefix", Shape::Leaf),
    ("Suffix", Shape::Leaf),
    ("Regex", Shape::Leaf),
    ("Invert", Shape::Leaf),
];

const HTTP_FIELDS: &[Field] = &[
    ("PathExact", Shape::Leaf),
    ("PathPrefix", Shape::Leaf),
    ("PathRegex", Shape::Leaf),
    ("Header", Shape::ListOf(HEADER_FIELDS)),
    ("Methods", Shape::Leaf),
];

const PERMISSION_FIELDS: &[Field] = &[
    ("Action", Shape::Leaf),
    ("HTTP", Shape::Object(HTTP_FIELDS)),
];

const INTENTION_FIELDS: &[Field] = &[
    ("ID", Shape::Leaf),
    ("Description", Shape::Leaf),
    ("SourcePeer", Shape::Leaf),
    ("SourceNS", Shape::Leaf),
    ("SourceName", Shape::Leaf),
    ("DestinationNS", Shape::Leaf),
    ("DestinationName", Shape::Leaf),
    ("SourcePartition", Shape::Leaf),
    ("DestinationPartition", Shape::Leaf),
    ("SourceType", Shape::Leaf),
    ("Action", Shape::Leaf),
    ("Permissions", Shape::ListOf(PERMISSION_FIELDS)),
    ("DefaultAddr", Shape::Leaf),
    ("DefaultPort", Shape::Leaf),
    ("Meta", Shape::Leaf),
    ("Precedence", Shape::Leaf),
    ("CreatedAt", Shape::Leaf),
    ("UpdatedAt", Shape::Leaf),
    ("Hash", Shape::Leaf),
    ("CreateIndex", Shape::Leaf),
    ("ModifyIndex", Shape::Leaf),
];

impl Intention {
    /// Decodes an intention from a Consul API JSON body.
    ///
    /// Keys match case-insensitively, unknown keys are ignored and `null` leaves a field at its
    /// default, as in Consul. A value of the wrong type, or the same key given twice in
    /// different cases, is an [`IntentionError::Json`] naming the field. An `Action` other than
    /// `allow`, `deny` or empty is reported with the validation message
    /// ([`IntentionError::InvalidAction`], [`IntentionError::PermissionInvalidAction`]), since
    /// Consul accepts the text and rejects it in validation.
    ///
    /// The result is not normalized or validated: call [`Intention::normalize`] and then
    /// [`Intention::validate`] before storing it.
    pub fn from_json(bytes: &[u8]) -> Result<Intention, IntentionError> {
        let document: Value = serde_json::from_slice(bytes).map_err(|e| IntentionError::Json {
            message: e.to_string(),
        })?;
        let Value::Object(object) = document else {
            return Err(IntentionError::Json {
                message: "expected a JSON object".to_owned(),
            });
        };
        let object = canonical_object(object, INTENTION_FIELDS, "")?;
        check_actions(&object)?;
        serde_path_to_error::deserialize(Value::Object(object)).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            IntentionError::Json {
                message: if path == "." {
                    inner.to_string()
                } else {
                    format!("{path}: {inner}")
                },
            }
        })
    }
}

/// Renames the keys of `object` to the field names of `fields`, recursing into nested objects,
/// and drops `null`s and unknown keys.
fn canonical_object(
    object: Map<String, Value>,
    fields: &'static [Field],
    path: &str,
) -> Result<Map<String, Value>, IntentionError> {
    let mut out = Map::new();
    for (key, value) in object {
        let Some(&(name, shape)) = fields
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(&key))
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
        // JSON object order is lost by now, so "last one wins" as in Go cannot be honoured;
        // refusing is better than silently picking one.
        if out.insert(name.to_owned(), value).is_some() {
            return Err(IntentionError::Json {
                message: format!(
                    "{field_path}: key given more than once (keys are case-insensitive)"
                ),
            });
        }
    }
    Ok(out)
}

/// Gives unknown action texts Consul's validation message instead of a decoding error.
fn check_actions(object: &Map<String, Value>) -> Result<(), IntentionError> {
    if let Some(Value::String(action)) = object.get("Action")
        && !action.is_empty()
        && IntentionAction::from_name(action).is_none()
    {
        return Err(IntentionError::InvalidAction);
    }
    if let Some(Value::Array(permissions)) = object.get("Permissions") {
        for (index, permission) in permissions.iter().enumerate() {
            let Value::Object(permission) = permission else {
                continue;
            };
            match permission.get("Action") {
                Some(Value::String(action)) if IntentionAction::from_name(action).is_some() => {}
                // A non-string action is a type error that serde reports with its path.
                Some(value) if !value.is_string() => {}
                _ => return Err(IntentionError::PermissionInvalidAction { index }),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::json;
    use time::macros::datetime;

    use super::*;
    use crate::intentions::{
        IntentionHttpHeaderPermission, IntentionHttpPermission, IntentionPermission,
    };

    fn decode(value: Value) -> Result<Intention, IntentionError> {
        Intention::from_json(value.to_string().as_bytes())
    }

    fn json_error(value: Value) -> String {
        match decode(value) {
            Err(IntentionError::Json { message }) => message,
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    #[test]
    fn reads_the_get_response_of_the_spec() {
        let ixn = decode(json!({
            "ID": "e9ebc19f-d481-42b1-4871-4d298d3acd5c", "Description": "",
            "SourceNS": "default", "SourceName": "web",
            "DestinationNS": "default", "DestinationName": "db",
            "SourceType": "consul", "Action": "allow", "Meta": {}, "Precedence": 9,
            "CreatedAt": "2018-05-21T16:41:27.977155457Z", "UpdatedAt": "2018-05-21T16:41:27.977157724Z",
            "CreateIndex": 11, "ModifyIndex": 11
        }))
        .unwrap();
        assert_eq!(ixn.id, "e9ebc19f-d481-42b1-4871-4d298d3acd5c");
        assert_eq!(ixn.action, Some(IntentionAction::Allow));
        assert_eq!(ixn.precedence, 9);
        assert_eq!(
            ixn.created_at,
            Some(datetime!(2018-05-21 16:41:27.977155457 UTC))
        );
        assert_eq!((ixn.create_index, ixn.modify_index), (11, 11));
        assert_eq!(
            ixn.to_string(),
            "ALLOW default/web => default/db (ID: e9ebc19f-d481-42b1-4871-4d298d3acd5c)"
        );
    }

    #[test]
    fn writes_consul_field_names_and_round_trips() {
        let ixn = decode(json!({
            "ID": "e9ebc19f-d481-42b1-4871-4d298d3acd5c", "Description": "",
            "SourceNS": "default", "SourceName": "web",
            "DestinationNS": "default", "DestinationName": "db",
            "SourceType": "consul", "Action": "allow", "Meta": {}, "Precedence": 9,
            "CreatedAt": "2018-05-21T16:41:27.977155457Z", "UpdatedAt": "2018-05-21T16:41:27.977157724Z",
            "CreateIndex": 11, "ModifyIndex": 11
        }))
        .unwrap();
        let written = serde_json::to_value(&ixn).unwrap();
        assert_eq!(
            written,
            json!({
                "ID": "e9ebc19f-d481-42b1-4871-4d298d3acd5c", "Description": "",
                "SourceNS": "default", "SourceName": "web",
                "DestinationNS": "default", "DestinationName": "db",
                "SourceType": "consul", "Action": "allow", "Meta": {}, "Precedence": 9,
                "CreatedAt": "2018-05-21T16:41:27.977155457Z",
                "UpdatedAt": "2018-05-21T16:41:27.977157724Z",
                "CreateIndex": 11, "ModifyIndex": 11
            })
        );
        assert_eq!(decode(written).unwrap(), ixn);
    }

    #[test]
    fn reads_the_l7_upsert_example_and_writes_an_empty_action() {
        let ixn = decode(json!({ "SourceType": "consul",
          "Permissions": [
            { "Action": "deny",  "HTTP": { "PathPrefix": "/v2/admin" } },
            { "Action": "allow", "HTTP": { "PathPrefix": "/v2/", "Methods": ["GET"] } } ] }))
        .unwrap();
        assert_eq!(ixn.action, None);
        assert_eq!(ixn.permissions.len(), 2);
        assert_eq!(ixn.permissions[0].action, IntentionAction::Deny);
        let http = ixn.permissions[1].http.as_ref().unwrap();
        assert_eq!(
            (http.path_prefix.as_str(), http.methods.as_slice()),
            ("/v2/", &["GET".to_owned()][..])
        );

        let written = serde_json::to_value(&ixn).unwrap();
        assert_eq!(written["Action"], "");
        assert_eq!(
            written["Permissions"][1],
            json!({ "Action": "allow", "HTTP": { "PathPrefix": "/v2/", "Methods": ["GET"] } })
        );
        assert_eq!(decode(written).unwrap(), ixn);
    }

    #[test]
    fn keys_match_case_insensitively_at_every_level() {
        let ixn = decode(json!({
            "sourcename": "web", "DESTINATIONNAME": "db", "sourcens": "ns1",
            "permissions": [{ "action": "allow", "http": {
                "pathexact": "/x", "methods": ["get"],
                "header": [{ "name": "X-Env", "EXACT": "prod", "invert": true }] } }],
            "meta": { "Owner": "team-a" }
        }))
        .unwrap();
        assert_eq!(
            (ixn.source_name.as_str(), ixn.destination_name.as_str()),
            ("web", "db")
        );
        assert_eq!(ixn.source_ns, "ns1");
        let http = ixn.permissions[0].http.as_ref().unwrap();
        assert_eq!(http.path_exact, "/x");
        assert_eq!(
            http.methods,
            ["get"],
            "case of values is kept; normalize() upper-cases"
        );
        assert_eq!(http.header[0].exact, "prod");
        assert!(http.header[0].invert);
        // Meta keys are data, not field names.
        assert_eq!(ixn.meta.get("Owner").map(String::as_str), Some("team-a"));
    }

    #[test]
    fn nulls_and_unknown_keys_are_ignored_as_in_go() {
        let ixn = decode(json!({
            "SourceName": "web", "DestinationName": "db", "Action": "deny",
            "Meta": null, "Permissions": null, "CreatedAt": null, "Hash": null,
            "SourceSamenessGroup": "", "JWT": { "Providers": [] }, "Kind": 7
        }))
        .unwrap();
        assert!(ixn.meta.is_empty() && ixn.permissions.is_empty());
        assert_eq!(ixn.created_at, None);
        assert_eq!(ixn.action, Some(IntentionAction::Deny));
    }

    #[test]
    fn go_zero_time_reads_as_unset() {
        let ixn = decode(json!({ "CreatedAt": "0001-01-01T00:00:00Z" })).unwrap();
        assert_eq!(ixn.created_at, None);
    }

    #[test]
    fn hash_is_base64() {
        let ixn = decode(json!({ "Hash": "AAEC/w==" })).unwrap();
        assert_eq!(ixn.hash, [0, 1, 2, 255]);
        assert_eq!(serde_json::to_value(&ixn).unwrap()["Hash"], "AAEC/w==");
        assert_eq!(
            json_error(json!({ "Hash": "not base64!" }))
                .split(':')
                .next(),
            Some("Hash")
        );
    }

    #[test]
    fn wrong_types_name_the_field() {
        assert!(
            json_error(json!({ "Precedence": "high" })).starts_with("Precedence: invalid type")
        );
        assert!(json_error(json!({ "SourceName": 7 })).starts_with("SourceName: invalid type"));
        assert!(json_error(json!({ "Meta": { "k": 1 } })).starts_with("Meta.k: invalid type"));
        assert!(json_error(json!({ "Permissions": {} })).starts_with("Permissions: invalid type"));
        assert!(
            json_error(
                json!({ "Permissions": [{ "Action": "allow", "HTTP": { "Methods": "GET" } }] })
            )
            .starts_with("Permissions[0].HTTP.Methods: invalid type")
        );
        assert!(
            json_error(json!({ "Permissions": [{ "Action": 1 }] }))
                .starts_with("Permissions[0].Action: invalid type")
        );
        assert!(
            json_error(json!({ "Permissions": [7] })).starts_with("Permissions[0]: invalid type")
        );
        assert!(
            json_error(json!({ "CreatedAt": "yesterday" }))
                .starts_with("CreatedAt: \"yesterday\" is not an RFC 3339 time")
        );
        assert!(
            json_error(json!({ "DefaultPort": 70000 })).starts_with("DefaultPort: invalid value")
        );
        assert_eq!(json_error(json!(["SourceName"])), "expected a JSON object");
        assert!(Intention::from_json(b"{\"SourceName\": ").is_err());
    }

    #[test]
    fn a_key_given_twice_in_different_cases_is_refused() {
        let message = json_error(json!({ "Action": "allow", "action": "deny" }));
        assert_eq!(
            message,
            "Action: key given more than once (keys are case-insensitive)"
        );
        let message = json_error(
            json!({ "Permissions": [{ "Action": "allow", "HTTP": { "PathExact": "/a", "pathexact": "/b" } }] }),
        );
        assert!(message.starts_with("Permissions[0].HTTP.PathExact: key given more than once"));
    }

    #[test]
    fn unknown_actions_get_the_validation_message() {
        assert_eq!(
            decode(json!({ "Action": "ALLOW" })),
            Err(IntentionError::InvalidAction)
        );
        assert_eq!(
            decode(json!({ "Action": "maybe" })),
            Err(IntentionError::InvalidAction)
        );
        assert_eq!(decode(json!({ "Action": "" })).unwrap().action, None);
        for permission in [
            json!({ "HTTP": { "PathExact": "/" } }),
            json!({ "Action": "" }),
            json!({ "Action": "nope" }),
        ] {
            assert_eq!(
                decode(
                    json!({ "Permissions": [{ "Action": "deny", "HTTP": { "PathExact": "/" } }, permission] })
                ),
                Err(IntentionError::PermissionInvalidAction { index: 1 })
            );
        }
    }

    /// Every key the serialiser writes is one the case-insensitive reader knows, and the other
    /// way round, so the field table cannot drift from the serde attributes.
    #[test]
    fn the_field_table_matches_the_serde_names() {
        fn collect(
            value: &Value,
            fields: &'static [Field],
            out: &mut BTreeSet<String>,
            prefix: &str,
        ) {
            let Value::Object(object) = value else {
                panic!("{prefix} is not an object")
            };
            for (key, value) in object {
                let (_, shape) = fields
                    .iter()
                    .find(|(name, _)| name == key)
                    .unwrap_or_else(|| panic!("{prefix}{key} is not in the field table"));
                out.insert(format!("{prefix}{key}"));
                match shape {
                    Shape::Leaf => {}
                    Shape::Object(inner) => collect(value, inner, out, &format!("{prefix}{key}.")),
                    Shape::ListOf(inner) => {
                        collect(&value[0], inner, out, &format!("{prefix}{key}."))
                    }
                }
            }
        }
        fn table(fields: &'static [Field], out: &mut BTreeSet<String>, prefix: &str) {
            for (name, shape) in fields {
                out.insert(format!("{prefix}{name}"));
                if let Shape::Object(inner) | Shape::ListOf(inner) = shape {
                    table(inner, out, &format!("{prefix}{name}."));
                }
            }
        }

        let header = IntentionHttpHeaderPermission {
            name: "n".into(),
            present: true,
            exact: "e".into(),
            prefix: "p".into(),
            suffix: "s".into(),
            regex: "r".into(),
            invert: true,
        };
        let http = IntentionHttpPermission {
            path_exact: "/e".into(),
            path_prefix: "/p".into(),
            path_regex: "r".into(),
            header: vec![header],
            methods: vec!["GET".into()],
        };
        let full = Intention {
            id: "i".into(),
            description: "d".into(),
            source_peer: "peer".into(),
            source_ns: "ns".into(),
            source_name: "web".into(),
            destination_ns: "ns".into(),
            destination_name: "db".into(),
            source_partition: "ap".into(),
            destination_partition: "ap".into(),
            source_type: "consul".into(),
            action: Some(IntentionAction::Allow),
            permissions: vec![IntentionPermission::new(IntentionAction::Allow, http)],
            default_addr: "127.0.0.1".into(),
            default_port: 8080,
            meta: [("k".to_owned(), "v".to_owned())].into(),
            precedence: 9,
            created_at: Some(datetime!(2020-01-01 0:00 UTC)),
            updated_at: Some(datetime!(2020-01-02 0:00:00.5 UTC)),
            hash: vec![1],
            create_index: 1,
            modify_index: 2,
        };
        let written = serde_json::to_value(&full).unwrap();
        assert_eq!(written["UpdatedAt"], "2020-01-02T00:00:00.5Z");

        let mut seen = BTreeSet::new();
        collect(&written, INTENTION_FIELDS, &mut seen, "");
        let mut known = BTreeSet::new();
        table(INTENTION_FIELDS, &mut known, "");
        assert_eq!(seen, known);
        assert_eq!(decode(written).unwrap(), full);
    }
}
