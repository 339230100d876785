//! OTLP/JSON to protobuf in one pass: the JSON document is read with `serde_json` and each
//! field is encoded as it is read, against a table of the OTLP messages, without building
//! the request as structs first.
//!
//! It accepts what the OTLP specification's JSON encoding allows (the protobuf JSON mapping
//! with OTLP's deviations) and what real SDKs send:
//!
//! - keys are the lowerCamelCase field names; unknown keys are skipped, with their values;
//! - every integer field (32- and 64-bit, enums included) takes a JSON number or a string
//!   holding a decimal integer, checked against the field's range;
//! - `double` fields take a number, a numeric string, `"NaN"`, `"Infinity"` or `"-Infinity"`;
//!   `null` is read as NaN, because `JSON.stringify` (the OpenTelemetry JavaScript exporter)
//!   writes NaN and the infinities as `null`, and NaN is the one value that claims no more
//!   than that. The exception is a proto3 `optional` double (a histogram point's `sum`,
//!   `min`, `max`), where `null` is how the Rust SDK's JSON writes "not set";
//! - `null` for any other field means the field is absent, as in the protobuf JSON mapping;
//! - trace and span ids are hex, of the length OTLP gives each (see
//!   [`Id`](super::schema::Id)); `bytes` are base64 (standard or URL-safe alphabet, padding
//!   optional);
//! - a key given twice, or two fields of one oneof (an `AnyValue` with both `stringValue`
//!   and `intValue`), is refused rather than resolved by keeping the last.
//!
//! Errors name the field with its path from the request down (`resourceSpans[0].scopeSpans[0]
//! .spans[2].traceId`) and where in the document it is. The output is the protobuf that
//! `prost` would write for the same request, up to the order of fields; `tests` checks it
//! against `prost` on random requests and that damaged documents are refused, never
//! panicked on or converted into protobuf that validation (`wire`) refuses.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::proto::{WireType, LEN};
use super::schema::Msg;
use scalar::{encode, expected, Json};
use table::{fields, Field, Presence, Ty};

mod scalar;
mod table;
#[cfg(test)]
mod tests;

/// The message's name in errors about it as a whole.
fn message_name(msg: Msg) -> &'static str {
    match msg {
        Msg::AnyValue => "an AnyValue",
        Msg::Metric => "a metric",
        Msg::NumberDataPoint => "a number data point",
        Msg::Exemplar => "an exemplar",
        Msg::Span => "a span",
        _ => "this message",
    }
}

/// Why an OTLP/JSON document was refused: where, and what `serde_json` says (which includes
/// the line and column).
#[derive(Debug)]
pub struct JsonError {
    path: String,
    source: serde_json::Error,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        write!(f, "{}", self.source)
    }
}

impl std::error::Error for JsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Converts an OTLP/JSON document of the request `msg` into its protobuf encoding.
pub fn to_protobuf(msg: Msg, json: &[u8]) -> Result<Vec<u8>, JsonError> {
    let mut ctx = Ctx {
        out: Vec::with_capacity(json.len() / 2),
        path: Vec::new(),
    };
    let mut reader = serde_json::Deserializer::from_slice(json);
    let result = reader
        .deserialize_map(MessageVisitor { msg, ctx: &mut ctx })
        .and_then(|()| reader.end());
    match result {
        Ok(()) => Ok(ctx.out),
        Err(source) => Err(JsonError {
            path: ctx.path_text(),
            source,
        }),
    }
}

/// The output, and the path to the field being read: on an error, it is left as it was
/// where the error happened.
struct Ctx {
    out: Vec<u8>,
    path: Vec<Step>,
}

enum Step {
    Field(&'static str),
    Index(usize),
}

impl Ctx {
    fn path_text(&self) -> String {
        let mut text = String::new();
        for step in &self.path {
            match step {
                Step::Field(name) if text.is_empty() => text.push_str(name),
                Step::Field(name) => {
                    text.push('.');
                    text.push_str(name);
                }
                Step::Index(i) => text.push_str(&format!("[{i}]")),
            }
        }
        text
    }

    #[inline]
    fn key(&mut self, tag: u32, wire_type: WireType) {
        prost::encoding::encode_varint(u64::from(tag << 3 | u32::from(wire_type)), &mut self.out);
    }

    #[inline]
    fn bytes(&mut self, tag: u32, bytes: &[u8]) {
        self.key(tag, LEN);
        prost::encoding::encode_varint(bytes.len() as u64, &mut self.out);
        self.out.extend_from_slice(bytes);
    }

    /// Starts a length-delimited field whose length is not known yet: a one-byte
    /// placeholder, which [`Ctx::end_len`] fills in. Returns where its contents start.
    fn begin_len(&mut self, tag: u32) -> usize {
        self.key(tag, LEN);
        self.out.push(0);
        self.out.len()
    }

    fn end_len(&mut self, start: usize) {
        let len = self.out.len() - start;
        if len < 0x80 {
            self.out[start - 1] = len as u8;
        } else {
            let mut prefix = Vec::with_capacity(10);
            prost::encoding::encode_varint(len as u64, &mut prefix);
            self.out[start - 1] = prefix[0];
            self.out.splice(start..start, prefix[1..].iter().copied());
        }
    }
}

/// Reads one message's object, writing its fields to the output as they come.
struct MessageVisitor<'c> {
    msg: Msg,
    ctx: &'c mut Ctx,
}

impl<'de> Visitor<'de> for MessageVisitor<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    #[inline]
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let fields = fields(self.msg);
        // Fields by tag: keys read, and values given (not `null`).
        let mut seen = 0u32;
        let mut given = 0u32;
        let mut oneof: Option<&'static str> = None;
        while let Some(field) = map.next_key_seed(KeySeed(fields))? {
            let Some(field) = field else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if seen & 1 << field.tag != 0 {
                return Err(de::Error::custom(format_args!(
                    "`{}` is given twice",
                    field.json
                )));
            }
            seen |= 1 << field.tag;
            self.ctx.path.push(Step::Field(field.json));
            let value_given = map.next_value_seed(FieldSeed {
                field,
                ctx: &mut *self.ctx,
            })?;
            self.ctx.path.pop();
            if !value_given {
                continue;
            }
            given |= 1 << field.tag;
            if field.presence == Presence::Oneof {
                if let Some(first) = oneof {
                    return Err(de::Error::custom(format_args!(
                        "`{first}` and `{}` are both set; {} holds one of them",
                        field.json,
                        message_name(self.msg)
                    )));
                }
                oneof = Some(field.json);
            }
        }
        for field in fields {
            if let Ty::Id(id) = field.ty {
                if id.required && given & 1 << field.tag == 0 {
                    return Err(de::Error::custom(format_args!(
                        "`{}` is {}",
                        field.json,
                        id.refusal(0)
                    )));
                }
            }
        }
        Ok(())
    }
}

/// Reads a key, finding its field; `None` for an unknown key.
struct KeySeed(&'static [Field]);

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Option<&'static Field>;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Option<&'static Field>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    #[inline]
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().find(|field| field.json == key))
    }
}

/// Reads a field's value; `true` if it was given (not `null`).
struct FieldSeed<'c> {
    field: &'static Field,
    ctx: &'c mut Ctx,
}

impl<'de> DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = bool;

    #[inline]
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        let FieldSeed { field, ctx } = self;
        match (field.repeated, field.ty) {
            (true, _) => d.deserialize_any(ListVisitor { field, ctx }),
            (false, Ty::Message(msg)) => d.deserialize_option(NestedVisitor {
                msg,
                tag: field.tag,
                ctx,
            }),
            (false, ty) => d.deserialize_any(ScalarVisitor {
                expected: expected(ty),
                write: |value: Json<'_>| match encode(ty, value)? {
                    // `null` for a proto3 `optional` double is its absence, not NaN: the
                    // opentelemetry-proto crate writes a histogram's unset `min` so.
                    _ if matches!(value, Json::Null) && field.presence == Presence::Explicit => {
                        Ok(false)
                    }
                    None => Ok(false),
                    Some(encoded) => {
                        if field.presence != Presence::Implicit || !encoded.is_default() {
                            encoded.write(ctx, Some(field.tag));
                        }
                        Ok(true)
                    }
                },
            }),
        }
    }
}

/// Reads a message field, or `null` for none: `true` if given.
struct NestedVisitor<'c> {
    msg: Msg,
    tag: u32,
    ctx: &'c mut Ctx,
}

impl<'de> Visitor<'de> for NestedVisitor<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_none<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        let start = self.ctx.begin_len(self.tag);
        d.deserialize_map(MessageVisitor {
            msg: self.msg,
            ctx: &mut *self.ctx,
        })?;
        self.ctx.end_len(start);
        Ok(true)
    }
}

/// Reads a list: messages and strings as one field each, numbers packed into one field.
/// `null` is an empty list.
struct ListVisitor<'c> {
    field: &'static Field,
    ctx: &'c mut Ctx,
}

impl<'de> Visitor<'de> for ListVisitor<'_> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let ListVisitor { field, ctx } = self;
        let packed = !matches!(field.ty, Ty::Message(_) | Ty::Str);
        let before = ctx.out.len();
        let start = packed.then(|| ctx.begin_len(field.tag));
        let mut index = 0;
        loop {
            ctx.path.push(Step::Index(index));
            let more = match field.ty {
                Ty::Message(msg) => seq.next_element_seed(ElementSeed::Message {
                    msg,
                    tag: field.tag,
                    ctx: &mut *ctx,
                })?,
                ty => seq.next_element_seed(ElementSeed::Scalar {
                    ty,
                    tag: (!packed).then_some(field.tag),
                    ctx: &mut *ctx,
                })?,
            };
            ctx.path.pop();
            if more.is_none() {
                break;
            }
            index += 1;
        }
        match start {
            Some(_) if index == 0 => ctx.out.truncate(before),
            Some(start) => ctx.end_len(start),
            None => {}
        }
        Ok(true)
    }
}

/// One element of a list: a message, or a scalar written with its key (`tag`) or packed.
enum ElementSeed<'c> {
    Message {
        msg: Msg,
        tag: u32,
        ctx: &'c mut Ctx,
    },
    Scalar {
        ty: Ty,
        tag: Option<u32>,
        ctx: &'c mut Ctx,
    },
}

impl<'de> DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        match self {
            ElementSeed::Message { msg, tag, ctx } => {
                let given = d.deserialize_option(NestedVisitor { msg, tag, ctx })?;
                if !given {
                    return Err(de::Error::custom("a list element cannot be null"));
                }
                Ok(())
            }
            ElementSeed::Scalar { ty, tag, ctx } => d.deserialize_any(ScalarVisitor {
                expected: expected(ty),
                write: |value: Json<'_>| match encode(ty, value)? {
                    Some(encoded) => {
                        encoded.write(ctx, tag);
                        Ok(())
                    }
                    None => Err("a list element cannot be null".to_owned()),
                },
            }),
        }
    }
}

/// Reads a JSON scalar and hands it to `write`.
struct ScalarVisitor<F> {
    expected: &'static str,
    write: F,
}

impl<'de, T, F> Visitor<'de> for ScalarVisitor<F>
where
    F: FnOnce(Json<'_>) -> Result<T, String>,
{
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_unit<E: de::Error>(self) -> Result<T, E> {
        (self.write)(Json::Null).map_err(E::custom)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<T, E> {
        (self.write)(Json::Bool(v)).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        (self.write)(Json::I64(v)).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        (self.write)(Json::U64(v)).map_err(E::custom)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        (self.write)(Json::F64(v)).map_err(E::custom)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.write)(Json::Str(v)).map_err(E::custom)
    }
}
