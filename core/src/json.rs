//! Consul-compatible JSON decoding, the one way libconnect reads a Consul JSON body or
//! configuration map into a struct.
//!
//! Object keys match struct fields case-insensitively, at every depth, as Go's `encoding/json`
//! does, so `{"sourcename": "web"}` decodes like `{"SourceName": "web"}`; keys of maps (`Meta`,
//! `Config`) are left exactly as sent. The field names come from the struct's own `serde`
//! attributes (renames and aliases included), so a field added to a struct is decoded with no
//! other change. [`Rules`] says how loosely keys match and whether scalars convert, for the
//! places where Consul reads more loosely than `encoding/json`.

use std::fmt;

use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::{Map, Value};

/// How keys are matched to fields and how scalar values are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Bytes left out of a key before it is compared with a field name, ignoring ASCII case.
    ignored: &'static [u8],
    /// Whether scalars convert to the field's type, as `mapstructure`'s weakly typed input.
    weak: bool,
}

impl Rules {
    /// Go's `encoding/json`: keys match ignoring ASCII case; a value must have the field's
    /// type. What Consul's HTTP API decodes request bodies with.
    pub const GO: Rules = Rules {
        ignored: b"",
        weak: false,
    };

    /// Consul's agent endpoints (`/v1/agent/service/register`): as [`Rules::GO`], and
    /// snake_case keys (`destination_service_name`) too, which the agent translates before
    /// decoding.
    pub const AGENT: Rules = Rules {
        ignored: b"_",
        weak: false,
    };

    /// Consul's configuration maps (the CA `Config`), read with `mapstructure`'s weakly typed
    /// input: keys match ignoring case, `_` and `-` (`leaf_cert_ttl`, `LeafCertTTL`), numbers
    /// and booleans may arrive as strings (`"4096"`, `"true"`), a string may arrive as a number
    /// or a boolean.
    pub const CONFIG: Rules = Rules {
        ignored: b"_-",
        weak: true,
    };

    /// Whether `key` names `field` under these rules.
    pub fn key_matches(self, key: &str, field: &str) -> bool {
        let mut key = key.bytes().filter(|b| !self.ignored.contains(b));
        let mut field = field.bytes().filter(|b| !self.ignored.contains(b));
        loop {
            match (key.next(), field.next()) {
                (None, None) => return true,
                (Some(a), Some(b)) if a.eq_ignore_ascii_case(&b) => {}
                _ => return false,
            }
        }
    }

    /// The value decoding would give the field `field` of a struct read from `object`: the
    /// exact key if present, else the first key matching under these rules. For checks that
    /// must look at the document before it is decoded (to give a value Consul's validation
    /// message rather than a type error).
    pub fn get<'a>(self, object: &'a Map<String, Value>, field: &str) -> Option<&'a Value> {
        object.get(field).or_else(|| {
            object
                .iter()
                .find(|(k, _)| self.key_matches(k, field))
                .map(|(_, v)| v)
        })
    }
}

/// Why a document could not be decoded, with the path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// `serde_path_to_error`'s path; `.` for the document itself.
    path: String,
    reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Reason {
    /// Two keys of one object name the same field.
    DuplicateKey(String),
    /// Anything else, as `serde` words it.
    Other(String),
}

impl DecodeError {
    /// The path of the field or object the error is about (`Permissions[0].HTTP`), or `None`
    /// for the document itself.
    pub fn path(&self) -> Option<&str> {
        (self.path != ".").then_some(self.path.as_str())
    }

    /// When two keys of one object name the same field (`Name` and `name`): that field's path
    /// (`Proxy.Upstreams[0].DestinationName`).
    pub fn duplicate_field(&self) -> Option<String> {
        match &self.reason {
            Reason::DuplicateKey(key) => Some(match self.path() {
                Some(path) => format!("{path}.{key}"),
                None => key.clone(),
            }),
            Reason::Other(_) => None,
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = self.path() {
            write!(f, "{path}: ")?;
        }
        match &self.reason {
            Reason::DuplicateKey(key) => write!(
                f,
                "key {key} given more than once (keys are case-insensitive)"
            ),
            Reason::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes `bytes` into `T` under [`Rules::GO`]. Errors name the path of the offending field
/// (`Permissions[0].HTTP.Methods: invalid type …`).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    from_value(value)
}

/// [`from_slice`] over an already parsed value.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    decode(value, Rules::GO).map_err(|e| e.to_string())
}

/// Decodes `value` into `T` under `rules`.
pub fn decode<T: DeserializeOwned>(value: Value, rules: Rules) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(Document { value, rules }).map_err(|e| DecodeError {
        path: e.path().to_string(),
        reason: match e.into_inner() {
            Inner::DuplicateKey(key) => Reason::DuplicateKey(key),
            Inner::Other(message) => Reason::Other(message),
        },
    })
}

/// The error inside the deserializer, kept apart from `serde_json::Error` so that a duplicate
/// key stays recognisable once the path is known.
#[derive(Debug)]
enum Inner {
    DuplicateKey(String),
    Other(String),
}

impl fmt::Display for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inner::DuplicateKey(key) => write!(f, "key {key} given more than once"),
            Inner::Other(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for Inner {}

impl serde::de::Error for Inner {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Inner::Other(msg.to_string())
    }
}

fn json_error(e: serde_json::Error) -> Inner {
    Inner::Other(e.to_string())
}

/// A JSON value whose structs accept keys as [`Rules`] say.
struct Document {
    value: Value,
    rules: Rules,
}

/// Renames each key to the field it matches: an exact match wins, else the field matching
/// under `rules`; unmatched keys stay (serde then ignores or rejects them). A `null` value is
/// dropped so the field keeps its default, as Go leaves a zero value.
fn canonical_keys(
    map: Map<String, Value>,
    fields: &'static [&'static str],
    rules: Rules,
) -> Result<Map<String, Value>, Inner> {
    let mut out = Map::with_capacity(map.len());
    for (k, v) in map {
        if v.is_null() {
            continue;
        }
        let key = if fields.contains(&k.as_str()) {
            k
        } else {
            fields
                .iter()
                .find(|f| rules.key_matches(&k, f))
                .map_or(k, |f| (*f).to_owned())
        };
        // Go keeps the last of two spellings, but object order is gone by now: refusing is
        // better than silently picking one.
        if out.contains_key(&key) {
            return Err(Inner::DuplicateKey(key));
        }
        out.insert(key, v);
    }
    Ok(out)
}

struct Entries {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
    rules: Rules,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = Inner;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let value = self.value.take().unwrap_or(Value::Null);
        seed.deserialize(Document {
            value,
            rules: self.rules,
        })
    }
}

struct Items {
    iter: std::vec::IntoIter<Value>,
    rules: Rules,
}

impl<'de> SeqAccess<'de> for Items {
    type Error = Inner;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        let rules = self.rules;
        self.iter
            .next()
            .map(|value| seed.deserialize(Document { value, rules }))
            .transpose()
    }
}

impl Document {
    fn weak_error(&self, want: &str) -> Inner {
        Inner::Other(format!("expected {want}, got {}", self.value))
    }
}

/// Under weak rules, reads a scalar the way `mapstructure` does; otherwise hands the value to
/// the visitor as it is, so that serde reports a type mismatch.
macro_rules! weak_scalar {
    ($($method:ident => $convert:ident;)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            if self.rules.weak {
                self.$convert(visitor)
            } else {
                self.deserialize_any(visitor)
            }
        }
    )*};
}

impl Document {
    fn weak_bool<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Inner> {
        let b = match &self.value {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => Some(n.as_f64().is_some_and(|f| f != 0.0)),
            Value::String(s) => match s.to_ascii_lowercase().as_str() {
                "1" | "t" | "true" => Some(true),
                "0" | "f" | "false" | "" => Some(false),
                _ => None,
            },
            _ => None,
        };
        match b {
            Some(b) => visitor.visit_bool(b),
            None => Err(self.weak_error("a boolean")),
        }
    }

    fn weak_unsigned<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Inner> {
        let n = match &self.value {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(n) => visitor.visit_u64(n),
            None => Err(self.weak_error("a non-negative integer")),
        }
    }

    fn weak_signed<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Inner> {
        let n = match &self.value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        match n {
            Some(n) => visitor.visit_i64(n),
            None => Err(self.weak_error("an integer")),
        }
    }

    fn weak_float<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Inner> {
        let n = match &self.value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match n {
            Some(n) => visitor.visit_f64(n),
            None => Err(self.weak_error("a number")),
        }
    }

    fn weak_string<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Inner> {
        match self.value {
            Value::String(s) => visitor.visit_string(s),
            Value::Number(n) => visitor.visit_string(n.to_string()),
            Value::Bool(b) => visitor.visit_str(if b { "1" } else { "0" }),
            Value::Null => visitor.visit_str(""),
            _ => Err(self.weak_error("a string")),
        }
    }
}

impl<'de> Deserializer<'de> for Document {
    type Error = Inner;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        let rules = self.rules;
        match self.value {
            Value::Object(m) => visitor.visit_map(Entries {
                iter: m.into_iter(),
                value: None,
                rules,
            }),
            Value::Array(a) => visitor.visit_seq(Items {
                iter: a.into_iter(),
                rules,
            }),
            other => other.deserialize_any(visitor).map_err(json_error),
        }
    }

    weak_scalar! {
        deserialize_bool => weak_bool;
        deserialize_u8 => weak_unsigned;
        deserialize_u16 => weak_unsigned;
        deserialize_u32 => weak_unsigned;
        deserialize_u64 => weak_unsigned;
        deserialize_u128 => weak_unsigned;
        deserialize_i8 => weak_signed;
        deserialize_i16 => weak_signed;
        deserialize_i32 => weak_signed;
        deserialize_i64 => weak_signed;
        deserialize_i128 => weak_signed;
        deserialize_f32 => weak_float;
        deserialize_f64 => weak_float;
        deserialize_str => weak_string;
        deserialize_string => weak_string;
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.value {
            Value::Null => visitor.visit_none(),
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let rules = self.rules;
        match self.value {
            Value::Object(m) => visitor.visit_map(Entries {
                iter: canonical_keys(m, fields, rules)?.into_iter(),
                value: None,
                rules,
            }),
            other => other
                .deserialize_struct(name, fields, visitor)
                .map_err(json_error),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.value
            .deserialize_enum(name, variants, visitor)
            .map_err(json_error)
    }

    serde::forward_to_deserialize_any! {
        char bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Inner {
        path_prefix: String,
        #[serde(default)]
        methods: Vec<String>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Outer {
        #[serde(rename = "SourceName")]
        source_name: String,
        #[serde(default)]
        meta: BTreeMap<String, String>,
        #[serde(rename = "HTTP")]
        http: Option<Inner>,
        #[serde(default)]
        list: Vec<Inner>,
        #[serde(default)]
        port: u16,
    }

    #[test]
    fn keys_match_in_any_case_at_every_depth_but_map_keys_stay() {
        let o: Outer = super::from_slice(
            br#"{"sourcename":"web","META":{"Owner":"x"},"http":{"pathprefix":"/v1","METHODS":["GET"]},
                 "List":[{"PATHPREFIX":"/a"}],"Port":8080,"unknown":1}"#,
        )
        .unwrap();
        assert_eq!(o.source_name, "web");
        assert_eq!(o.meta.get("Owner").map(String::as_str), Some("x"));
        assert_eq!(o.http.unwrap().methods, vec!["GET"]);
        assert_eq!(o.list[0].path_prefix, "/a");
        assert_eq!(o.port, 8080);
    }

    #[test]
    fn errors_name_the_field_path() {
        let e = super::from_slice::<Outer>(br#"{"SourceName":"web","List":[{"PathPrefix":1}]}"#)
            .unwrap_err();
        assert!(e.starts_with("List[0].PathPrefix: invalid type"), "{e}");
        let e = super::from_slice::<Outer>(b"{not json").unwrap_err();
        assert!(e.contains("key must be a string"), "{e}");
        let e = super::from_slice::<Outer>(br#"{"Port": 70000, "SourceName": "x"}"#).unwrap_err();
        assert!(e.starts_with("Port:"), "{e}");
    }

    #[test]
    fn agent_keys_match_ignoring_case_and_underscores() {
        let m = |key, field| super::Rules::AGENT.key_matches(key, field);
        assert!(m("destination_service_name", "DestinationServiceName"));
        assert!(m("DESTINATIONSERVICENAME", "DestinationServiceName"));
        assert!(m("ttl", "TTL"));
        assert!(!m("name", "Names"));
        assert!(!m("names", "Name"));
        assert!(!m("", "Name"));
        // Go's encoding/json ignores case only.
        assert!(!super::Rules::GO.key_matches("source_name", "SourceName"));
        assert!(super::Rules::GO.key_matches("SOURCENAME", "SourceName"));
        assert!(super::Rules::CONFIG.key_matches("leaf-cert_ttl", "LeafCertTTL"));
    }

    /// A struct nobody wrote a key table for: its fields, renames and aliases come from its
    /// serde attributes, so each field is read under each rule set with no other change.
    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "PascalCase")]
    struct Fresh {
        #[serde(rename = "CheckID", alias = "ID")]
        check_id: String,
        local_bind_port: u16,
        inner: Option<Inner>,
    }

    #[test]
    fn a_new_struct_is_read_with_no_table() {
        let body =
            serde_json::json!({"id": "c", "local_bind_port": 9, "inner": {"path_prefix": "/"}});
        let fresh: Fresh = super::decode(body, super::Rules::AGENT).unwrap();
        assert_eq!(fresh.check_id, "c");
        assert_eq!(fresh.local_bind_port, 9);
        assert_eq!(fresh.inner.unwrap().path_prefix, "/");
        // Under Go's rules snake_case keys are unknown, hence ignored.
        let go: Fresh = super::decode(
            serde_json::json!({"id": "c", "local_bind_port": 9}),
            super::Rules::GO,
        )
        .unwrap();
        assert_eq!(go.local_bind_port, 0);
        assert_eq!(go.check_id, "c");
    }

    #[test]
    fn duplicates_are_recognisable_with_their_path() {
        let e = super::decode::<Outer>(
            serde_json::json!({"SourceName": "x", "List": [{"PathPrefix": "/", "pathprefix": "/b"}]}),
            super::Rules::GO,
        )
        .unwrap_err();
        assert_eq!(e.path(), Some("List[0]"));
        assert_eq!(e.duplicate_field().as_deref(), Some("List[0].PathPrefix"));
        assert_eq!(
            e.to_string(),
            "List[0]: key PathPrefix given more than once (keys are case-insensitive)"
        );
        let e = super::decode::<Outer>(serde_json::json!({"SourceName": 1}), super::Rules::GO)
            .unwrap_err();
        assert_eq!(e.duplicate_field(), None);
    }

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default, rename_all = "PascalCase")]
    struct Settings {
        private_key_bits: u32,
        csr_max_per_second: f64,
        skip_validate: bool,
        private_key_type: String,
        offset: i64,
    }

    #[test]
    fn config_rules_read_scalars_weakly_and_go_rules_do_not() {
        let weak: Settings = super::decode(
            serde_json::json!({"private_key_bits": "4096", "CSR-Max-Per-Second": "2.5",
                "SKIPVALIDATE": "true", "PrivateKeyType": 7, "offset": "-3"}),
            super::Rules::CONFIG,
        )
        .unwrap();
        assert_eq!(
            weak,
            Settings {
                private_key_bits: 4096,
                csr_max_per_second: 2.5,
                skip_validate: true,
                private_key_type: "7".into(),
                offset: -3,
            }
        );
        let bool_of = |v: serde_json::Value| {
            super::decode::<Settings>(
                serde_json::json!({ "SkipValidate": v }),
                super::Rules::CONFIG,
            )
            .map(|s| s.skip_validate)
        };
        assert_eq!(bool_of(serde_json::json!(1)), Ok(true));
        assert_eq!(bool_of(serde_json::json!("")), Ok(false));
        assert_eq!(bool_of(serde_json::json!("f")), Ok(false));
        assert_eq!(
            bool_of(serde_json::json!("maybe")).unwrap_err().to_string(),
            "SkipValidate: expected a boolean, got \"maybe\""
        );
        let e = super::decode::<Settings>(
            serde_json::json!({"PrivateKeyBits": -1}),
            super::Rules::CONFIG,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "PrivateKeyBits: expected a non-negative integer, got -1"
        );
        let e = super::decode::<Settings>(
            serde_json::json!({"PrivateKeyBits": "4096"}),
            super::Rules::GO,
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("PrivateKeyBits: invalid type"),
            "{e}"
        );
    }
}
