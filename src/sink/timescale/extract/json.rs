//! Records' values as JSON: an `AnyValue` as a `serde_json::Value` (rejected rows) or
//! serialized straight into a jsonb cell ([`AnyJson`], [`AttributesJson`]).

use serde::{Serialize, Serializer};
use serde_json::Value;

use super::record::same_key;
use crate::sink::timescale::view::{AnyValue, KeyValue, Value as AnyKind};

/// AnyValue as JSON (bytes as hex; non-finite doubles as null).
pub fn any_to_json(value: &AnyValue) -> Value {
    match &value.value {
        None => Value::Null,
        Some(AnyKind::StringValue(s)) => Value::String((*s).to_owned()),
        Some(AnyKind::BoolValue(b)) => Value::Bool(*b),
        Some(AnyKind::IntValue(i)) => Value::from(*i),
        Some(AnyKind::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        Some(AnyKind::BytesValue(b)) => Value::String(hex::encode(b)),
        Some(AnyKind::ArrayValue(a)) => Value::Array(a.iter().map(any_to_json).collect()),
        Some(AnyKind::KvlistValue(kv)) => Value::Object(
            kv.iter()
                .map(|kv| {
                    (
                        kv.key.to_owned(),
                        kv.value.as_ref().map_or(Value::Null, any_to_json),
                    )
                })
                .collect(),
        ),
    }
}

/// An `AnyValue` serialized as JSON the way `any_to_json` renders it, without building a
/// `serde_json::Value` first: rows are built per record, and the tree of maps and strings
/// cost more than the rows.
pub(super) struct AnyJson<'a>(pub(super) &'a AnyValue<'a>);

impl Serialize for AnyJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0.value {
            None => serializer.serialize_unit(),
            Some(AnyKind::StringValue(s)) => serializer.serialize_str(s),
            Some(AnyKind::BoolValue(b)) => serializer.serialize_bool(*b),
            Some(AnyKind::IntValue(i)) => serializer.serialize_i64(*i),
            // serde_json writes non-finite numbers as null, like `any_to_json`.
            Some(AnyKind::DoubleValue(d)) => serializer.serialize_f64(*d),
            Some(AnyKind::BytesValue(b)) => serializer.serialize_str(&hex::encode(b)),
            Some(AnyKind::ArrayValue(a)) => serializer.collect_seq(a.iter().map(AnyJson)),
            Some(AnyKind::KvlistValue(kv)) => {
                serializer.collect_map(kv.iter().map(|kv| (kv.key, kv.value.as_ref().map(AnyJson))))
            }
        }
    }
}

/// Attributes as one JSON object, leaving out the keys a mapping stored in columns. A key
/// repeated in the record is written twice; jsonb keeps the last, as `any_to_json` does.
pub(super) struct AttributesJson<'a> {
    pub(super) attributes: &'a [KeyValue<'a>],
    pub(super) skip: &'a [String],
}

impl Serialize for AttributesJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(
            self.attributes
                .iter()
                .filter(|kv| !self.skip.iter().any(|k| same_key(k, kv.key)))
                .map(|kv| (kv.key, kv.value.as_ref().map(AnyJson))),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any(value: AnyKind<'static>) -> AnyValue<'static> {
        AnyValue { value: Some(value) }
    }

    fn kv(key: &'static str, value: AnyKind<'static>) -> KeyValue<'static> {
        KeyValue {
            key,
            value: Some(any(value)),
        }
    }

    fn parsed(value: &impl Serialize) -> Value {
        serde_json::from_str(&serde_json::to_string(value).expect("serializable"))
            .expect("valid JSON")
    }

    #[test]
    fn json_cells_render_like_any_to_json() {
        use AnyKind as V;
        let nested = any(V::KvlistValue(vec![
            kv("s", V::StringValue("a \"quoted\" \u{1F600}")),
            kv("nan", V::DoubleValue(f64::NAN)),
            kv("inf", V::DoubleValue(f64::INFINITY)),
            kv("d", V::DoubleValue(1.5)),
            kv("i", V::IntValue(-7)),
            kv("b", V::BoolValue(true)),
            kv("bytes", V::BytesValue(&[0, 255, 16])),
            kv(
                "array",
                V::ArrayValue(vec![any(V::IntValue(1)), AnyValue { value: None }]),
            ),
            KeyValue {
                key: "empty",
                value: None,
            },
        ]));
        assert_eq!(parsed(&AnyJson(&nested)), any_to_json(&nested));
    }

    #[test]
    fn attribute_json_skips_consumed_keys_and_keeps_the_last_duplicate() {
        use AnyKind as V;
        let attributes = vec![
            kv("frame.id", V::IntValue(1)),
            kv("camera", V::StringValue("a")),
            kv("camera", V::StringValue("b")),
            kv("score", V::DoubleValue(0.5)),
        ];
        let skip = ["frame.id".to_string()];
        let json = AttributesJson {
            attributes: &attributes,
            skip: &skip,
        };
        // serde_json keeps the last of repeated keys when parsing, as jsonb does.
        assert_eq!(
            parsed(&json),
            serde_json::json!({ "camera": "b", "score": 0.5 })
        );
    }
}
