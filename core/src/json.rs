//! Consul-compatible JSON decoding: object keys match struct fields case-insensitively, at
//! every depth, as Go's `encoding/json` does, so `{"sourcename": "web"}` decodes like
//! `{"SourceName": "web"}`. Keys of maps (`Meta`) are left exactly as sent.

use serde::de::{
    DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess,
    Visitor,
};
use serde_json::{Map, Value};

/// Decodes `bytes` into `T`, matching struct keys case-insensitively. Errors name the path of
/// the offending field (`Permissions[0].HTTP.Methods: invalid type …`).
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    from_value(value)
}

/// [`from_slice`] over an already parsed value.
pub fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(CaseInsensitive(value)).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.into_inner().to_string()
        } else {
            format!("{path}: {}", e.into_inner())
        }
    })
}

/// A JSON value whose structs accept keys in any case.
struct CaseInsensitive(Value);

/// Renames each key to the field it matches: an exact match wins, else the field equal
/// ignoring ASCII case; unmatched keys stay (serde then ignores or rejects them). A `null`
/// value is dropped so the field keeps its default, as Go leaves a zero value.
fn canonical_keys(
    map: Map<String, Value>,
    fields: &'static [&'static str],
) -> Result<Map<String, Value>, serde_json::Error> {
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
                .find(|f| f.eq_ignore_ascii_case(&k))
                .map_or(k, |f| (*f).to_owned())
        };
        // Go keeps the last of two spellings, but object order is gone by now: refusing is
        // better than silently picking one.
        if out.contains_key(&key) {
            return Err(serde::de::Error::custom(format!(
                "key {key} given more than once (keys are case-insensitive)"
            )));
        }
        out.insert(key, v);
    }
    Ok(out)
}

struct Entries {
    iter: serde_json::map::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for Entries {
    type Error = serde_json::Error;

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
        let v = self.value.take().unwrap_or(Value::Null);
        seed.deserialize(CaseInsensitive(v))
    }
}

struct Items(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Items {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(CaseInsensitive(v)))
            .transpose()
    }
}

impl<'de> Deserializer<'de> for CaseInsensitive {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries {
                iter: m.into_iter(),
                value: None,
            }),
            Value::Array(a) => visitor.visit_seq(Items(a.into_iter())),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            v => visitor.visit_some(CaseInsensitive(v)),
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
        match self.0 {
            Value::Object(m) => visitor.visit_map(Entries {
                iter: canonical_keys(m, fields)?.into_iter(),
                value: None,
            }),
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
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
}
