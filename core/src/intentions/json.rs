//! Reading intentions from JSON the way Consul does.
//!
//! Go's `encoding/json` matches object keys to struct fields case-insensitively, ignores keys it
//! does not know, and leaves a field at its zero value when the JSON says `null`. Consul clients
//! rely on all three (`"sourcename"`, extra fields from newer servers, `"Meta": null`); the
//! shared decoder in [`crate::json`] does exactly that.

use serde_json::Value;

use super::{Intention, IntentionAction, IntentionError};

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
        if !document.is_object() {
            return Err(IntentionError::Json {
                message: "expected a JSON object".to_owned(),
            });
        }
        check_actions(&document)?;
        crate::json::from_value(document).map_err(|message| IntentionError::Json { message })
    }
}

/// The value of `key` in `object`, matched as the decoder matches it.
fn field<'a>(object: &'a Value, key: &str) -> Option<&'a Value> {
    crate::json::Rules::GO.get(object.as_object()?, key)
}

/// Gives unknown action texts Consul's validation message instead of a decoding error.
fn check_actions(object: &Value) -> Result<(), IntentionError> {
    if let Some(Value::String(action)) = field(object, "Action")
        && !action.is_empty()
        && IntentionAction::from_name(action).is_none()
    {
        return Err(IntentionError::InvalidAction);
    }
    if let Some(Value::Array(permissions)) = field(object, "Permissions") {
        for (index, permission) in permissions.iter().enumerate() {
            if !permission.is_object() {
                continue;
            }
            match field(permission, "Action") {
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
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn decode(value: Value) -> Result<Intention, IntentionError> {
        Intention::from_json(value.to_string().as_bytes())
    }

    fn json_error(value: Value) -> String {
        match decode(value) {
            Err(IntentionError::Json { message }) => message,
            other => panic!("expected a JSON error, got {other:?}"),
        }
    }

    /// The answer of Consul's `GET /v1/connect/intentions/:uuid` from its HTTP API docs;
    /// every field is one this type writes back.
    fn get_response() -> Value {
        json!({
            "ID": "e9ebc19f-d481-42b1-4871-4d298d3acd5c", "Description": "",
            "SourceNS": "default", "SourceName": "web",
            "DestinationNS": "default", "DestinationName": "db",
            "SourceType": "consul", "Action": "allow", "Meta": {}, "Precedence": 9,
            "CreatedAt": "2018-05-21T16:41:27.977155457Z", "UpdatedAt": "2018-05-21T16:41:27.977157724Z",
            "CreateIndex": 11, "ModifyIndex": 11
        })
    }

    #[test]
    fn reads_the_get_response_of_consuls_docs() {
        let ixn = decode(get_response()).unwrap();
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
        let ixn = decode(get_response()).unwrap();
        let written = serde_json::to_value(&ixn).unwrap();
        assert_eq!(written, get_response());
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
            "key Action given more than once (keys are case-insensitive)"
        );
        let message = json_error(
            json!({ "Permissions": [{ "Action": "allow", "HTTP": { "PathExact": "/a", "pathexact": "/b" } }] }),
        );
        assert!(message.starts_with("Permissions[0].HTTP: key PathExact given more than once"));
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
}
