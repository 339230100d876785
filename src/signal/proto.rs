//! The protobuf wire format, read in place: one cursor ([`ProtoReader`]) for both the
//! receiver's validation of OTLP requests (`signal::wire`) and the sink's zero-copy views of
//! them (`sink::timescale::view`), so the two apply the same rules to keys, varints, lengths
//! and groups.
//!
//! The rules are `prost` 0.14's:
//!
//! - keys: a varint of at most 32 bits, field number >= 1, wire type 0-5;
//! - varints of at most 10 bytes, the tenth byte < 2;
//! - every length must fit the bytes left in its message;
//! - unknown fields are skipped, groups included (matched by field number), limited by the
//!   nesting depth the caller has left.
//!
//! Errors are [`ProtoError`]s, whose messages are `prost`'s wording.

use std::fmt;

/// The wire type of a field, from the low 3 bits of its key.
pub type WireType = u8;

/// A varint: int32, int64, uint32, uint64, sint32, sint64, bool, enum.
pub const VARINT: WireType = 0;
/// Eight little-endian bytes: fixed64, sfixed64, double.
pub const FIXED64: WireType = 1;
/// A length, then that many bytes: string, bytes, messages, packed repeated fields.
pub const LEN: WireType = 2;
/// The start of a (deprecated) group.
pub const START_GROUP: WireType = 3;
/// The end of a group.
pub const END_GROUP: WireType = 4;
/// Four little-endian bytes: fixed32, sfixed32, float.
pub const FIXED32: WireType = 5;

/// `prost`'s recursion limit: how deep messages (and groups) may nest.
pub const DEPTH_LIMIT: u32 = 100;

/// Why bytes are not valid protobuf, in `prost`'s words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// A varint longer than 10 bytes, overflowing 64 bits, or cut off.
    InvalidVarint,
    /// A key that does not fit 32 bits.
    InvalidKey,
    /// A key whose wire type is 6 or 7.
    InvalidWireTypeValue,
    /// A key with field number 0.
    ZeroTag,
    /// A known field with another wire type than its type has.
    WrongWireType,
    /// A length past the end of the enclosing message.
    BufferUnderflow,
    /// Messages or groups nested deeper than [`DEPTH_LIMIT`].
    RecursionLimit,
    /// A group end without its start, or ending another group.
    UnexpectedEndGroup,
    /// A `string` field that is not UTF-8.
    InvalidUtf8,
    /// A packed `repeated fixed64` whose length is not a multiple of 8.
    PackedFixed64Length,
}

impl ProtoError {
    /// The message, as `prost` words it where it has one.
    pub const fn as_str(self) -> &'static str {
        match self {
            ProtoError::InvalidVarint => "invalid varint",
            ProtoError::InvalidKey => "invalid key value",
            ProtoError::InvalidWireTypeValue => "invalid wire type value",
            ProtoError::ZeroTag => "invalid tag value: 0",
            ProtoError::WrongWireType => "invalid wire type",
            ProtoError::BufferUnderflow => "buffer underflow",
            ProtoError::RecursionLimit => "recursion limit reached",
            ProtoError::UnexpectedEndGroup => "unexpected end group tag",
            ProtoError::InvalidUtf8 => "invalid string value: data is not UTF-8 encoded",
            ProtoError::PackedFixed64Length => "packed fixed64 values do not fill their length",
        }
    }
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for ProtoError {}

/// Reads a varint off the front of `buf` as `prost` does: at most 10 bytes, the tenth below
/// 2. `None` if it is longer, overflows or is cut off.
#[inline(always)]
pub fn read_varint(buf: &mut &[u8]) -> Option<u64> {
    // Keys and most lengths are one byte.
    if let Some(&byte) = buf.first() {
        if byte < 0x80 {
            *buf = &buf[1..];
            return Some(u64::from(byte));
        }
    }
    let mut value = 0u64;
    for (i, &byte) in buf.iter().take(10).enumerate() {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            if i == 9 && byte >= 2 {
                return None;
            }
            *buf = &buf[i + 1..];
            return Some(value);
        }
    }
    None
}

/// `bytes` as a `string` field's value: UTF-8, or [`ProtoError::InvalidUtf8`].
///
/// OTLP's strings are nearly all short ASCII (attribute keys, ids, names). `is_ascii` scans
/// a word at a time from the first byte, where `str::from_utf8` steps byte by byte until it
/// reaches an aligned word: checking ASCII first halves the cost of a typical string
/// (`benches/hot_paths.rs`, docs/BENCHMARKS.md). Other text takes the full decoder.
#[inline]
pub fn utf8(bytes: &[u8]) -> Result<&str, ProtoError> {
    if bytes.is_ascii() {
        // SAFETY: every byte was just checked to be ASCII, and ASCII is UTF-8.
        return Ok(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).map_err(|_| ProtoError::InvalidUtf8)
}

/// A cursor over one message's bytes. It borrows them: what it reads points into them.
#[derive(Debug, Clone)]
pub struct ProtoReader<'a> {
    buf: &'a [u8],
}

impl<'a> ProtoReader<'a> {
    /// A cursor at the start of a message (or of a packed field's contents).
    #[inline]
    pub fn new(buf: &'a [u8]) -> Self {
        ProtoReader { buf }
    }

    /// Whether the whole message has been read.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[inline(always)]
    pub fn varint(&mut self) -> Result<u64, ProtoError> {
        read_varint(&mut self.buf).ok_or(ProtoError::InvalidVarint)
    }

    /// A field's key, checked as `prost` checks it: (field number, wire type).
    #[inline(always)]
    pub fn key(&mut self) -> Result<(u32, WireType), ProtoError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return Err(ProtoError::InvalidKey);
        }
        let wire_type = (key & 7) as WireType;
        if wire_type > FIXED32 {
            return Err(ProtoError::InvalidWireTypeValue);
        }
        let tag = (key >> 3) as u32;
        if tag == 0 {
            return Err(ProtoError::ZeroTag);
        }
        Ok((tag, wire_type))
    }

    /// The next `len` bytes.
    #[inline(always)]
    pub fn take(&mut self, len: u64) -> Result<&'a [u8], ProtoError> {
        if len > self.buf.len() as u64 {
            return Err(ProtoError::BufferUnderflow);
        }
        let (head, tail) = self.buf.split_at(len as usize);
        self.buf = tail;
        Ok(head)
    }

    /// A fixed64 (or double's bits).
    #[inline]
    pub fn fixed64(&mut self) -> Result<u64, ProtoError> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    /// A fixed32 (or float's bits).
    #[inline]
    pub fn fixed32(&mut self) -> Result<u32, ProtoError> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
    }

    /// A length-delimited field's contents.
    #[inline(always)]
    pub fn delimited(&mut self) -> Result<&'a [u8], ProtoError> {
        let len = self.varint()?;
        self.take(len)
    }

    /// Skips the value of an unknown field whose key was just read, as
    /// `prost::encoding::skip_field` does; `depth`: how many more levels may nest here.
    pub fn skip_field(
        &mut self,
        wire_type: WireType,
        tag: u32,
        depth: u32,
    ) -> Result<(), ProtoError> {
        if depth == 0 {
            return Err(ProtoError::RecursionLimit);
        }
        match wire_type {
            VARINT => self.varint().map(drop),
            FIXED64 => self.take(8).map(drop),
            FIXED32 => self.take(4).map(drop),
            LEN => self.delimited().map(drop),
            START_GROUP => loop {
                let (inner_tag, inner_type) = self.key()?;
                if inner_type == END_GROUP {
                    if inner_tag != tag {
                        return Err(ProtoError::UnexpectedEndGroup);
                    }
                    return Ok(());
                }
                self.skip_field(inner_type, inner_tag, depth - 1)?;
            },
            _ => Err(ProtoError::UnexpectedEndGroup),
        }
    }

    /// The next field, key and value, or `None` at the end of the message. A group is
    /// skipped (only unknown fields can be groups) and read as [`FieldValue::Group`].
    #[inline]
    pub fn next_field(&mut self) -> Option<Result<(u32, FieldValue<'a>), ProtoError>> {
        if self.buf.is_empty() {
            return None;
        }
        Some(self.field())
    }

    #[inline]
    fn field(&mut self) -> Result<(u32, FieldValue<'a>), ProtoError> {
        let (tag, wire_type) = self.key()?;
        let value = match wire_type {
            VARINT => FieldValue::Varint(self.varint()?),
            FIXED64 => FieldValue::Fixed64(self.fixed64()?),
            LEN => FieldValue::Len(self.delimited()?),
            FIXED32 => FieldValue::Fixed32(self.fixed32()?),
            _ => {
                self.skip_field(wire_type, tag, DEPTH_LIMIT)?;
                FieldValue::Group
            }
        };
        Ok((tag, value))
    }
}

/// One field's value, by wire type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FieldValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Len(&'a [u8]),
    /// A group, skipped.
    Group,
}

impl<'a> FieldValue<'a> {
    #[inline]
    pub fn varint(self) -> Result<u64, ProtoError> {
        match self {
            FieldValue::Varint(v) => Ok(v),
            _ => Err(ProtoError::WrongWireType),
        }
    }

    #[inline]
    pub fn fixed64(self) -> Result<u64, ProtoError> {
        match self {
            FieldValue::Fixed64(v) => Ok(v),
            _ => Err(ProtoError::WrongWireType),
        }
    }

    /// A length-delimited field's contents (`bytes`, or a message to read further).
    #[inline]
    pub fn bytes(self) -> Result<&'a [u8], ProtoError> {
        match self {
            FieldValue::Len(b) => Ok(b),
            _ => Err(ProtoError::WrongWireType),
        }
    }

    /// A `string` field's value.
    #[inline]
    pub fn str(self) -> Result<&'a str, ProtoError> {
        utf8(self.bytes()?)
    }
}

/// The value of an attribute in the usual layout (see [`usual_key_value`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalarValue<'a> {
    /// A `string_value`, not yet checked for UTF-8.
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// Splits an OTLP `KeyValue` written the way every SDK writes attributes: field 1 (the key),
/// then field 2 (the value) holding exactly one string, bool, int or double field, each
/// length one byte. Returns the key and the value, strings not checked for UTF-8; `None` for
/// any other layout, which the general rules then read. Attributes are most of a request,
/// so validation and the views both read them this way first (docs/BENCHMARKS.md).
#[inline(always)]
pub fn usual_key_value(buf: &[u8]) -> Option<(&[u8], ScalarValue<'_>)> {
    let [0x0a, key_len @ 0..0x80, rest @ ..] = buf else {
        return None;
    };
    let (key, [0x12, value_len @ 0..0x80, value @ ..]) =
        rest.split_at_checked(*key_len as usize)?
    else {
        return None;
    };
    if *value_len as usize != value.len() {
        return None;
    }
    let mut rest = value;
    let scalar = match value {
        [0x0a, len @ 0..0x80, tail @ ..] if *len as usize == tail.len() => {
            return Some((key, ScalarValue::Str(tail)))
        }
        [0x21, tail @ ..] => {
            let bits = u64::from_le_bytes(tail.try_into().ok()?);
            return Some((key, ScalarValue::Double(f64::from_bits(bits))));
        }
        [0x10, ..] => {
            rest = &rest[1..];
            ScalarValue::Bool(read_varint(&mut rest)? != 0)
        }
        [0x18, ..] => {
            rest = &rest[1..];
            ScalarValue::Int(read_varint(&mut rest)? as i64)
        }
        _ => return None,
    };
    rest.is_empty().then_some((key, scalar))
}

/// Hand-made protobuf for tests of the wire format.
#[cfg(test)]
pub mod encoding {
    /// A field key.
    pub fn key(tag: u32, wire_type: u8) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_varint(u64::from(tag << 3 | u32::from(wire_type)), &mut out);
        out
    }

    /// A length-delimited field.
    pub fn len_field(tag: u32, body: &[u8]) -> Vec<u8> {
        let mut out = key(tag, 2);
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }
}
