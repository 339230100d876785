//! Validation of OTLP protobuf requests without decoding them into owned structs.
//!
//! The receiver must reject every body that `prost` would refuse to decode (the log and the
//! backends only ever see valid requests), and must count its items, but it does not need
//! the decoded request: the bytes are what it forwards. Decoding with `prost` allocates every
//! string, id and attribute list and frees them again, which was the largest per-span cost of
//! forwarding. This walks the wire format (with [`ProtoReader`]) against the table of the OTLP
//! messages in [`schema`](super::schema) instead and applies the same rules as `prost` 0.14's
//! generated decoders:
//!
//! - keys, varints, lengths and unknown fields as [`proto`](super::proto) reads them;
//! - a known field with the wrong wire type is an error, except that repeated scalar fields
//!   accept both the packed and the unpacked form;
//! - `string` fields must be UTF-8; `bytes` fields are not checked;
//! - every length must fit its enclosing message, and packed elements must fill their length;
//! - nesting deeper than `prost`'s limit of 100 messages is an error.
//!
//! Items are counted like the decoded request's `items()`: spans, log records, or metric
//! data points, where a metric's `data` oneof keeps only its last variant (a repeat of the
//! same variant merges into it, as in `prost`).
//! Trace and span ids must have the lengths OTLP gives them ([`Id`]), which `prost` does
//! not check. `tests` compares the walk with `prost` on mutated real requests.

use std::borrow::Cow;
use std::fmt;

use super::proto::{
    usual_key_value, utf8, ProtoError, ProtoReader, ScalarValue, WireType, DEPTH_LIMIT, FIXED32,
    FIXED64, LEN, VARINT,
};
use super::schema::{field, Kind, Msg, SPAN_ID, TRACE_ID};

#[cfg(test)]
mod tests;

/// Why a body is not a valid OTLP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Where: fields from the innermost outwards, with the index of an element of a
    /// repeated message field (`spans[3]`).
    path: Vec<(&'static str, Option<usize>)>,
    reason: Cow<'static, str>,
}

impl WireError {
    fn new(reason: impl Into<Cow<'static, str>>) -> Self {
        WireError {
            path: Vec::new(),
            reason: reason.into(),
        }
    }

    /// The error, happened in the scalar field `name`.
    #[cold]
    #[inline(never)]
    fn in_field(mut self, name: &'static str) -> Self {
        self.path.push((name, None));
        self
    }
}

impl From<ProtoError> for WireError {
    #[cold]
    #[inline(never)]
    fn from(e: ProtoError) -> Self {
        WireError::new(e.as_str())
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The innermost field was pushed first.
        for (i, (name, index)) in self.path.iter().rev().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            f.write_str(name)?;
            if let Some(index) = index {
                write!(f, "[{index}]")?;
            }
        }
        if !self.path.is_empty() {
            f.write_str(": ")?;
        }
        f.write_str(&self.reason)
    }
}

impl std::error::Error for WireError {}

/// Validates `body` as the top-level message `msg` and returns its item count.
pub fn validate(msg: Msg, body: &[u8]) -> Result<u64, WireError> {
    walk(msg, body, DEPTH_LIMIT).map_err(|mut e| {
        e.path.push((msg.request_name(), None));
        e
    })
}

/// Validates one message's fields (`depth`: how many more levels may nest below it).
fn walk(msg: Msg, body: &[u8], depth: u32) -> Result<u64, WireError> {
    let mut reader = ProtoReader::new(body);
    let mut items = 0u64;
    // Metric.data: the variant seen last and its data points.
    let mut data: Option<(u32, u64)> = None;
    // Id fields present, by tag: a span must have both of its own.
    let mut ids = 0u32;
    while !reader.is_empty() {
        let (tag, wire_type) = reader.key()?;
        let Some((field_name, kind)) = field(msg, tag) else {
            reader.skip_field(wire_type, tag, depth)?;
            continue;
        };
        let Kind::Message {
            msg: child,
            counted,
            repeated,
        } = kind
        else {
            check_scalar(&mut reader, kind, wire_type).map_err(|e| e.in_field(field_name))?;
            if let Kind::Id(_) = kind {
                ids |= 1 << tag;
            }
            continue;
        };
        if wire_type != LEN {
            return Err(WireError::from(ProtoError::WrongWireType).in_field(field_name));
        }
        if depth == 0 {
            return Err(WireError::from(ProtoError::RecursionLimit).in_field(field_name));
        }
        let bytes = reader
            .delimited()
            .map_err(|e| WireError::from(e).in_field(field_name))?;
        if child == Msg::KeyValue && depth >= 2 && is_usual_utf8_key_value(bytes) {
            // An attribute holds no items.
            continue;
        }
        let inner = walk(child, bytes, depth - 1)
            .map_err(|e| in_message(e, field_name, repeated.then_some(tag), body, bytes))?;
        if counted {
            items += 1;
        } else if msg == Msg::Metric && matches!(tag, 5 | 7 | 9 | 10 | 11) {
            data = match data {
                Some((variant, points)) if variant == tag => Some((tag, points + inner)),
                _ => Some((tag, inner)),
            };
        } else {
            items += inner;
        }
    }
    if msg == Msg::Span && ids & SPAN_IDS != SPAN_IDS {
        return Err(missing_span_id(ids));
    }
    Ok(items + data.map_or(0, |(_, points)| points))
}

/// Whether `bytes` is a `KeyValue` in the usual layout (see [`usual_key_value`]) whose
/// strings are UTF-8, and so valid. Any other goes through [`walk`], which also names the
/// field of a string that is not UTF-8 in its error.
#[inline(always)]
fn is_usual_utf8_key_value(bytes: &[u8]) -> bool {
    let Some((key, value)) = usual_key_value(bytes) else {
        return false;
    };
    // Field keys and one-byte lengths are ASCII, so a `KeyValue` whose bytes are all ASCII
    // has ASCII strings: one scan of the whole attribute instead of one per string.
    if bytes.is_ascii() {
        return true;
    }
    let text = match value {
        ScalarValue::Str(text) => text,
        _ => &[],
    };
    utf8(key).is_ok() && utf8(text).is_ok()
}

/// Reads the value of a field of the scalar `kind` whose key has `wire_type`, and checks it.
#[inline(always)]
fn check_scalar(
    reader: &mut ProtoReader<'_>,
    kind: Kind,
    wire_type: WireType,
) -> Result<(), WireError> {
    let expect = |expected: WireType| {
        if wire_type == expected {
            Ok(())
        } else {
            Err(ProtoError::WrongWireType)
        }
    };
    match kind {
        Kind::Varint => {
            expect(VARINT)?;
            reader.varint()?;
        }
        Kind::Fixed32 => {
            expect(FIXED32)?;
            reader.take(4)?;
        }
        Kind::Fixed64 => {
            expect(FIXED64)?;
            reader.take(8)?;
        }
        Kind::Bytes => {
            expect(LEN)?;
            reader.delimited()?;
        }
        Kind::Id(id) => {
            expect(LEN)?;
            let bytes = reader.delimited()?;
            if !id.accepts(bytes.len()) {
                return Err(WireError::new(id.refusal(bytes.len())));
            }
        }
        Kind::Str => {
            expect(LEN)?;
            utf8(reader.delimited()?)?;
        }
        Kind::RepeatedVarint if wire_type == LEN => {
            let mut packed = ProtoReader::new(reader.delimited()?);
            while !packed.is_empty() {
                packed.varint()?;
            }
        }
        Kind::RepeatedVarint => {
            expect(VARINT)?;
            reader.varint()?;
        }
        Kind::RepeatedFixed64 if wire_type == LEN => {
            if reader.delimited()?.len() % 8 != 0 {
                return Err(ProtoError::PackedFixed64Length.into());
            }
        }
        Kind::RepeatedFixed64 => {
            expect(FIXED64)?;
            reader.take(8)?;
        }
        Kind::Message { .. } => unreachable!("messages are walked, not checked as scalars"),
    }
    Ok(())
}

/// Adds the message field that an error happened in to its path: `name`, with its index
/// when it is the list numbered `tag`, found from where its `contents` lie in its parent's
/// `body`. Only errors pay for the index.
#[cold]
#[inline(never)]
fn in_message(
    mut e: WireError,
    name: &'static str,
    tag: Option<u32>,
    body: &[u8],
    contents: &[u8],
) -> WireError {
    let index = tag.map(|tag| {
        let before = (contents.as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
        occurrences(tag, &body[..before.min(body.len())]).saturating_sub(1)
    });
    e.path.push((name, index));
    e
}

/// The refusal of a span without its own trace or span id (`ids`: those present, by tag).
#[cold]
#[inline(never)]
fn missing_span_id(ids: u32) -> WireError {
    let (name, id) = if ids & 1 << 1 == 0 {
        ("trace_id", TRACE_ID)
    } else {
        ("span_id", SPAN_ID)
    };
    WireError::new(id.refusal(0)).in_field(name)
}

/// The tags of a span's own ids (`trace_id` = 1, `span_id` = 2), which it must have.
const SPAN_IDS: u32 = 1 << 1 | 1 << 2;

/// How many fields numbered `tag` start in `fields`, the valid beginning of a message.
fn occurrences(tag: u32, fields: &[u8]) -> usize {
    let mut reader = ProtoReader::new(fields);
    let mut count = 0;
    while let Ok((field, wire_type)) = reader.key() {
        count += usize::from(field == tag);
        if reader.skip_field(wire_type, field, DEPTH_LIMIT).is_err() {
            break;
        }
    }
    count
}
