//! JSON scalars to protobuf values: integers from numbers or decimal strings within their
//! field's range, doubles with their JSON spellings, ids from hex, bytes from base64.

use std::fmt;

use base64::Engine as _;

use super::table::Ty;
use super::Ctx;
use crate::signal::proto::{FIXED32, FIXED64, VARINT};

/// A JSON scalar as read.
#[derive(Debug, Clone, Copy)]
pub(super) enum Json<'a> {
    Null,
    Bool(bool),
    U64(u64),
    I64(i64),
    F64(f64),
    Str(&'a str),
}

impl fmt::Display for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Json::Null => f.write_str("null"),
            Json::Bool(b) => write!(f, "{b}"),
            Json::U64(n) => write!(f, "{n}"),
            Json::I64(n) => write!(f, "{n}"),
            Json::F64(n) => write!(f, "{n}"),
            Json::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// A scalar's protobuf encoding.
pub(super) enum Encoded<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64(u64),
    Double(f64),
    Borrowed(&'a [u8]),
    Owned(Vec<u8>),
}

impl Encoded<'_> {
    #[inline]
    pub(super) fn write(&self, ctx: &mut Ctx, tag: Option<u32>) {
        let out = |ctx: &mut Ctx, wire_type| {
            if let Some(tag) = tag {
                ctx.key(tag, wire_type);
            }
        };
        match self {
            Encoded::Varint(v) => {
                out(ctx, VARINT);
                prost::encoding::encode_varint(*v, &mut ctx.out);
            }
            Encoded::Fixed32(v) => {
                out(ctx, FIXED32);
                ctx.out.extend_from_slice(&v.to_le_bytes());
            }
            Encoded::Fixed64(v) => {
                out(ctx, FIXED64);
                ctx.out.extend_from_slice(&v.to_le_bytes());
            }
            Encoded::Double(v) => {
                out(ctx, FIXED64);
                ctx.out.extend_from_slice(&v.to_le_bytes());
            }
            Encoded::Borrowed(bytes) => match tag {
                Some(tag) => ctx.bytes(tag, bytes),
                None => ctx.out.extend_from_slice(bytes),
            },
            Encoded::Owned(bytes) => match tag {
                Some(tag) => ctx.bytes(tag, bytes),
                None => ctx.out.extend_from_slice(bytes),
            },
        }
    }

    #[inline]
    pub(super) fn is_default(&self) -> bool {
        match self {
            Encoded::Varint(v) => *v == 0,
            Encoded::Fixed32(v) => *v == 0,
            Encoded::Fixed64(v) => *v == 0,
            // -0.0 compares equal to the default 0.0, and prost skips both.
            Encoded::Double(v) => *v == 0.0,
            Encoded::Borrowed(b) => b.is_empty(),
            Encoded::Owned(b) => b.is_empty(),
        }
    }
}

/// Encodes a JSON scalar as a field of type `ty`; `None` for `null` (absent).
#[inline]
pub(super) fn encode(ty: Ty, value: Json<'_>) -> Result<Option<Encoded<'_>>, String> {
    let encoded = match (ty, value) {
        (Ty::Double, value) => Encoded::Double(double(value)?),
        (_, Json::Null) => return Ok(None),
        (Ty::Bool, Json::Bool(b)) => Encoded::Varint(u64::from(b)),
        (Ty::Int32, value) => Encoded::Varint(integer(value, i32::MIN, i32::MAX)? as i64 as u64),
        (Ty::Sint32, value) => {
            let n = integer(value, i32::MIN, i32::MAX)? as i32;
            Encoded::Varint(u64::from(((n << 1) ^ (n >> 31)) as u32))
        }
        (Ty::Uint32, value) => Encoded::Varint(integer(value, 0, u32::MAX)? as u64),
        (Ty::Fixed32, value) => Encoded::Fixed32(integer(value, 0, u32::MAX)? as u32),
        (Ty::Int64, value) => Encoded::Varint(integer(value, i64::MIN, i64::MAX)? as i64 as u64),
        (Ty::Sfixed64, value) => {
            Encoded::Fixed64(integer(value, i64::MIN, i64::MAX)? as i64 as u64)
        }
        (Ty::Uint64, value) => Encoded::Varint(integer(value, 0, u64::MAX)? as u64),
        (Ty::Fixed64, value) => Encoded::Fixed64(integer(value, 0, u64::MAX)? as u64),
        (Ty::Str, Json::Str(s)) => Encoded::Borrowed(s.as_bytes()),
        (Ty::Bytes, Json::Str(s)) => Encoded::Owned(base64(s)?),
        (Ty::Id(id), Json::Str(s)) => {
            let bytes = hex_id(s)?;
            if !id.accepts(bytes.len()) {
                return Err(id.refusal(bytes.len()));
            }
            Encoded::Owned(bytes)
        }
        (ty, value) => return Err(format!("expected {}, found {value}", expected(ty))),
    };
    Ok(Some(encoded))
}

#[inline]
pub(super) fn expected(ty: Ty) -> &'static str {
    match ty {
        Ty::Bool => "true or false",
        Ty::Str => "a string",
        Ty::Bytes => "a base64 string",
        Ty::Id(_) => "a hex string",
        Ty::Double => "a number",
        Ty::Message(_) => "an object",
        _ => "an integer",
    }
}

/// An integer given as a JSON number or a string, within `min..=max`.
fn integer(value: Json<'_>, min: impl Into<i128>, max: impl Into<i128>) -> Result<i128, String> {
    let n = match value {
        Json::U64(n) => i128::from(n),
        Json::I64(n) => i128::from(n),
        Json::F64(f) => whole(f).ok_or_else(|| format!("{value} is not an integer"))?,
        Json::Str(s) => match s.parse::<i128>() {
            Ok(n) => n,
            Err(_) => numeric(s)
                .and_then(whole)
                .ok_or_else(|| format!("{value} is not an integer"))?,
        },
        Json::Null | Json::Bool(_) => return Err(format!("expected an integer, found {value}")),
    };
    let (min, max) = (min.into(), max.into());
    if n < min || n > max {
        return Err(format!("{value} is out of range ({min} to {max})"));
    }
    Ok(n)
}

/// A float that holds a whole number in the range of a 64-bit integer.
fn whole(f: f64) -> Option<i128> {
    (f.fract() == 0.0 && f.abs() < 2f64.powi(64)).then_some(f as i128)
}

/// A JSON number written in a string (`"1.5"`, `"1e3"`), not Rust's wider float syntax.
fn numeric(s: &str) -> Option<f64> {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'-' | b'+' | b'.' | b'e' | b'E'));
    plain.then(|| s.parse().ok()).flatten()
}

#[inline]
fn double(value: Json<'_>) -> Result<f64, String> {
    Ok(match value {
        Json::Null => f64::NAN,
        Json::U64(n) => n as f64,
        Json::I64(n) => n as f64,
        Json::F64(f) => f,
        Json::Str("NaN") => f64::NAN,
        Json::Str("Infinity") => f64::INFINITY,
        Json::Str("-Infinity") => f64::NEG_INFINITY,
        Json::Str(s) => numeric(s).ok_or_else(|| {
            format!("{value} is not a number (nor \"NaN\", \"Infinity\" or \"-Infinity\")")
        })?,
        Json::Bool(_) => return Err(format!("expected a number, found {value}")),
    })
}

/// A trace or span id's bytes from its hex text (either case).
fn hex_id(s: &str) -> Result<Vec<u8>, String> {
    hex::decode(s).map_err(|e| match e {
        hex::FromHexError::OddLength => format!("{s:?} is not hex: odd length"),
        _ => format!("{s:?} is not hex"),
    })
}

fn base64(s: &str) -> Result<Vec<u8>, String> {
    use base64::alphabet::{STANDARD, URL_SAFE};
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const CONFIG: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    const STANDARD_ANY: GeneralPurpose = GeneralPurpose::new(&STANDARD, CONFIG);
    const URL_SAFE_ANY: GeneralPurpose = GeneralPurpose::new(&URL_SAFE, CONFIG);
    let engine = if s.contains(['-', '_']) {
        &URL_SAFE_ANY
    } else {
        &STANDARD_ANY
    };
    engine
        .decode(s)
        .map_err(|e| format!("{s:?} is not base64: {e}"))
}
