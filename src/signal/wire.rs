//! Validation of OTLP protobuf requests without decoding them into owned structs.
//!
//! The receiver must reject every body that `prost` would refuse to decode (the log and the
//! backends only ever see valid requests), and must count its items, but it does not need
//! the decoded request: the bytes are what it forwards. Decoding with `prost` allocates every
//! string, id and attribute list and frees them again, which was the largest per-span cost of
//! forwarding. This walks the wire format against a table of the OTLP messages instead and
//! applies the same rules as `prost` 0.14's generated decoders:
//!
//! - keys: a varint of at most 32 bits, field number >= 1, wire type 0-5;
//! - varints of at most 10 bytes, the tenth byte < 2;
//! - a known field with the wrong wire type is an error, except that repeated scalar fields
//!   accept both the packed and the unpacked form;
//! - `string` fields must be UTF-8; `bytes` fields are not checked;
//! - every length must fit its enclosing message, and packed elements must fill their length;
//! - unknown fields are skipped (groups included, matched by field number), which is also
//!   limited by the nesting depth;
//! - nesting deeper than `prost`'s limit of 100 messages is an error.
//!
//! Items are counted like the decoded request's `items()`: spans, log records, or metric
//! data points, where a metric's `data` oneof keeps only its last variant (a repeat of the
//! same variant merges into it, as in `prost`).
//! Trace and span ids must have the lengths OTLP gives them ([`Id`]), which `prost` does
//! not check. `tests` compares the walk with `prost` on mutated real requests.

use std::borrow::Cow;
use std::fmt;

/// `prost`'s recursion limit.
const DEPTH_LIMIT: u32 = 100;

/// Why a body is not a valid OTLP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireError {
    /// Where: fields from the innermost outwards, with the index of an element of a
    /// repeated message field (`spans[3]`).
    path: Vec<(&'static str, Option<usize>)>,
    reason: Cow<'static, str>,
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

fn fail<T>(reason: impl Into<Cow<'static, str>>) -> Result<T, WireError> {
    Err(WireError {
        path: Vec::new(),
        reason: reason.into(),
    })
}

/// What OTLP asks of a trace or span id field: its length, and whether it may be empty
/// (absent). A downstream that decodes ids into fixed-size arrays (the OpenTelemetry
/// Collector does) refuses a whole request for one id of another length, so such requests are
/// refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Id {
    pub len: u8,
    /// Whether it must be present: a span's own ids must; parent span ids and the ids of
    /// links, log records and exemplars may be empty.
    pub required: bool,
}

/// A span's own trace id.
pub(crate) const TRACE_ID: Id = Id {
    len: 16,
    required: true,
};
/// A span's own span id.
pub(crate) const SPAN_ID: Id = Id {
    len: 8,
    required: true,
};
/// The trace id of a link, log record or exemplar.
pub(crate) const OPTIONAL_TRACE_ID: Id = Id {
    len: 16,
    required: false,
};
/// A parent span id, or the span id of a link, log record or exemplar.
pub(crate) const OPTIONAL_SPAN_ID: Id = Id {
    len: 8,
    required: false,
};

impl Id {
    /// Whether an id of `len` bytes is acceptable.
    #[inline]
    pub(crate) fn accepts(self, len: usize) -> bool {
        len == usize::from(self.len) || (len == 0 && !self.required)
    }

    /// Why an id of `len` bytes (0: absent) is not acceptable.
    #[cold]
    #[inline(never)]
    pub(crate) fn refusal(self, len: usize) -> String {
        let found = if len == 0 {
            "empty or missing".to_owned()
        } else {
            format!("{len} bytes long")
        };
        if self.required {
            format!("{found}; must be {} bytes", self.len)
        } else {
            format!("{found}; must be empty or {} bytes", self.len)
        }
    }
}

/// The messages of the three `Export*ServiceRequest`s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    ExportTraces,
    ResourceSpans,
    ScopeSpans,
    Span,
    Event,
    Link,
    Status,
    ExportLogs,
    ResourceLogs,
    ScopeLogs,
    LogRecord,
    ExportMetrics,
    ResourceMetrics,
    ScopeMetrics,
    Metric,
    Gauge,
    Sum,
    Histogram,
    ExponentialHistogram,
    Summary,
    NumberDataPoint,
    HistogramDataPoint,
    ExponentialHistogramDataPoint,
    Buckets,
    SummaryDataPoint,
    ValueAtQuantile,
    Exemplar,
    Resource,
    EntityRef,
    InstrumentationScope,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
}

/// What a field holds, as far as validation cares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    /// int32/int64/uint32/uint64/sint32/bool/enum, not repeated.
    Varint,
    Fixed32,
    /// fixed64, sfixed64, double.
    Fixed64,
    /// `repeated uint64` (packed or not).
    RepeatedVarint,
    /// `repeated fixed64` / `repeated double` (packed or not).
    RepeatedFixed64,
    Str,
    Bytes,
    /// A trace or span id: `bytes` of a fixed length.
    Id(Id),
    /// A message; `counted`: each occurrence is one item of the request; `repeated`: a
    /// list, whose elements errors name by index.
    Message {
        msg: Msg,
        counted: bool,
        repeated: bool,
    },
}

const fn message(msg: Msg) -> Kind {
    Kind::Message {
        msg,
        counted: false,
        repeated: false,
    }
}

const fn list(msg: Msg) -> Kind {
    Kind::Message {
        msg,
        counted: false,
        repeated: true,
    }
}

const fn item(msg: Msg) -> Kind {
    Kind::Message {
        msg,
        counted: true,
        repeated: true,
    }
}

/// The field table: (name, kind) of field `tag` of `msg`, from opentelemetry-proto's
/// generated types (OTLP 1.7).
pub(crate) fn field(msg: Msg, tag: u32) -> Option<(&'static str, Kind)> {
    use Kind::*;
    use Msg as M;
    Some(match (msg, tag) {
        (M::ExportTraces, 1) => ("resource_spans", list(M::ResourceSpans)),
        (M::ResourceSpans, 1) => ("resource", message(M::Resource)),
        (M::ResourceSpans, 2) => ("scope_spans", list(M::ScopeSpans)),
        (M::ResourceSpans, 3) => ("schema_url", Str),
        (M::ScopeSpans, 1) => ("scope", message(M::InstrumentationScope)),
        (M::ScopeSpans, 2) => ("spans", item(M::Span)),
        (M::ScopeSpans, 3) => ("schema_url", Str),
        (M::Span, 1) => ("trace_id", Kind::Id(TRACE_ID)),
        (M::Span, 2) => ("span_id", Kind::Id(SPAN_ID)),
        (M::Span, 3) => ("trace_state", Str),
        (M::Span, 4) => ("parent_span_id", Kind::Id(OPTIONAL_SPAN_ID)),
        (M::Span, 5) => ("name", Str),
        (M::Span, 6) => ("kind", Varint),
        (M::Span, 7) => ("start_time_unix_nano", Fixed64),
        (M::Span, 8) => ("end_time_unix_nano", Fixed64),
        (M::Span, 9) => ("attributes", list(M::KeyValue)),
        (M::Span, 10) => ("dropped_attributes_count", Varint),
        (M::Span, 11) => ("events", list(M::Event)),
        (M::Span, 12) => ("dropped_events_count", Varint),
        (M::Span, 13) => ("links", list(M::Link)),
        (M::Span, 14) => ("dropped_links_count", Varint),
        (M::Span, 15) => ("status", message(M::Status)),
        (M::Span, 16) => ("flags", Fixed32),
        (M::Event, 1) => ("time_unix_nano", Fixed64),
        (M::Event, 2) => ("name", Str),
        (M::Event, 3) => ("attributes", list(M::KeyValue)),
        (M::Event, 4) => ("dropped_attributes_count", Varint),
        (M::Link, 1) => ("trace_id", Kind::Id(OPTIONAL_TRACE_ID)),
        (M::Link, 2) => ("span_id", Kind::Id(OPTIONAL_SPAN_ID)),
        (M::Link, 3) => ("trace_state", Str),
        (M::Link, 4) => ("attributes", list(M::KeyValue)),
        (M::Link, 5) => ("dropped_attributes_count", Varint),
        (M::Link, 6) => ("flags", Fixed32),
        (M::Status, 2) => ("message", Str),
        (M::Status, 3) => ("code", Varint),

        (M::ExportLogs, 1) => ("resource_logs", list(M::ResourceLogs)),
        (M::ResourceLogs, 1) => ("resource", message(M::Resource)),
        (M::ResourceLogs, 2) => ("scope_logs", list(M::ScopeLogs)),
        (M::ResourceLogs, 3) => ("schema_url", Str),
        (M::ScopeLogs, 1) => ("scope", message(M::InstrumentationScope)),
        (M::ScopeLogs, 2) => ("log_records", item(M::LogRecord)),
        (M::ScopeLogs, 3) => ("schema_url", Str),
        (M::LogRecord, 1) => ("time_unix_nano", Fixed64),
        (M::LogRecord, 2) => ("severity_number", Varint),
        (M::LogRecord, 3) => ("severity_text", Str),
        (M::LogRecord, 5) => ("body", message(M::AnyValue)),
        (M::LogRecord, 6) => ("attributes", list(M::KeyValue)),
        (M::LogRecord, 7) => ("dropped_attributes_count", Varint),
        (M::LogRecord, 8) => ("flags", Fixed32),
        (M::LogRecord, 9) => ("trace_id", Kind::Id(OPTIONAL_TRACE_ID)),
        (M::LogRecord, 10) => ("span_id", Kind::Id(OPTIONAL_SPAN_ID)),
        (M::LogRecord, 11) => ("observed_time_unix_nano", Fixed64),
        (M::LogRecord, 12) => ("event_name", Str),

        (M::ExportMetrics, 1) => ("resource_metrics", list(M::ResourceMetrics)),
        (M::ResourceMetrics, 1) => ("resource", message(M::Resource)),
        (M::ResourceMetrics, 2) => ("scope_metrics", list(M::ScopeMetrics)),
        (M::ResourceMetrics, 3) => ("schema_url", Str),
        (M::ScopeMetrics, 1) => ("scope", message(M::InstrumentationScope)),
        (M::ScopeMetrics, 2) => ("metrics", list(M::Metric)),
        (M::ScopeMetrics, 3) => ("schema_url", Str),
        (M::Metric, 1) => ("name", Str),
        (M::Metric, 2) => ("description", Str),
        (M::Metric, 3) => ("unit", Str),
        (M::Metric, 5) => ("gauge", message(M::Gauge)),
        (M::Metric, 7) => ("sum", message(M::Sum)),
        (M::Metric, 9) => ("histogram", message(M::Histogram)),
        (M::Metric, 10) => ("exponential_histogram", message(M::ExponentialHistogram)),
        (M::Metric, 11) => ("summary", message(M::Summary)),
        (M::Metric, 12) => ("metadata", list(M::KeyValue)),
        (M::Gauge, 1) => ("data_points", item(M::NumberDataPoint)),
        (M::Sum, 1) => ("data_points", item(M::NumberDataPoint)),
        (M::Sum, 2) => ("aggregation_temporality", Varint),
        (M::Sum, 3) => ("is_monotonic", Varint),
        (M::Histogram, 1) => ("data_points", item(M::HistogramDataPoint)),
        (M::Histogram, 2) => ("aggregation_temporality", Varint),
        (M::ExponentialHistogram, 1) => ("data_points", item(M::ExponentialHistogramDataPoint)),
        (M::ExponentialHistogram, 2) => ("aggregation_temporality", Varint),
        (M::Summary, 1) => ("data_points", item(M::SummaryDataPoint)),
        (M::NumberDataPoint, 2) => ("start_time_unix_nano", Fixed64),
        (M::NumberDataPoint, 3) => ("time_unix_nano", Fixed64),
        (M::NumberDataPoint, 4) => ("as_double", Fixed64),
        (M::NumberDataPoint, 5) => ("exemplars", list(M::Exemplar)),
        (M::NumberDataPoint, 6) => ("as_int", Fixed64),
        (M::NumberDataPoint, 7) => ("attributes", list(M::KeyValue)),
        (M::NumberDataPoint, 8) => ("flags", Varint),
        (M::HistogramDataPoint, 2) => ("start_time_unix_nano", Fixed64),
        (M::HistogramDataPoint, 3) => ("time_unix_nano", Fixed64),
        (M::HistogramDataPoint, 4) => ("count", Fixed64),
        (M::HistogramDataPoint, 5) => ("sum", Fixed64),
        (M::HistogramDataPoint, 6) => ("bucket_counts", RepeatedFixed64),
        (M::HistogramDataPoint, 7) => ("explicit_bounds", RepeatedFixed64),
        (M::HistogramDataPoint, 8) => ("exemplars", list(M::Exemplar)),
        (M::HistogramDataPoint, 9) => ("attributes", list(M::KeyValue)),
        (M::HistogramDataPoint, 10) => ("flags", Varint),
        (M::HistogramDataPoint, 11) => ("min", Fixed64),
        (M::HistogramDataPoint, 12) => ("max", Fixed64),
        (M::ExponentialHistogramDataPoint, 1) => ("attributes", list(M::KeyValue)),
        (M::ExponentialHistogramDataPoint, 2) => ("start_time_unix_nano", Fixed64),
        (M::ExponentialHistogramDataPoint, 3) => ("time_unix_nano", Fixed64),
        (M::ExponentialHistogramDataPoint, 4) => ("count", Fixed64),
        (M::ExponentialHistogramDataPoint, 5) => ("sum", Fixed64),
        (M::ExponentialHistogramDataPoint, 6) => ("scale", Varint),
        (M::ExponentialHistogramDataPoint, 7) => ("zero_count", Fixed64),
        (M::ExponentialHistogramDataPoint, 8) => ("positive", message(M::Buckets)),
        (M::ExponentialHistogramDataPoint, 9) => ("negative", message(M::Buckets)),
        (M::ExponentialHistogramDataPoint, 10) => ("flags", Varint),
        (M::ExponentialHistogramDataPoint, 11) => ("exemplars", list(M::Exemplar)),
        (M::ExponentialHistogramDataPoint, 12) => ("min", Fixed64),
        (M::ExponentialHistogramDataPoint, 13) => ("max", Fixed64),
        (M::ExponentialHistogramDataPoint, 14) => ("zero_threshold", Fixed64),
        (M::Buckets, 1) => ("offset", Varint),
        (M::Buckets, 2) => ("bucket_counts", RepeatedVarint),
        (M::SummaryDataPoint, 2) => ("start_time_unix_nano", Fixed64),
        (M::SummaryDataPoint, 3) => ("time_unix_nano", Fixed64),
        (M::SummaryDataPoint, 4) => ("count", Fixed64),
        (M::SummaryDataPoint, 5) => ("sum", Fixed64),
        (M::SummaryDataPoint, 6) => ("quantile_values", list(M::ValueAtQuantile)),
        (M::SummaryDataPoint, 7) => ("attributes", list(M::KeyValue)),
        (M::SummaryDataPoint, 8) => ("flags", Varint),
        (M::ValueAtQuantile, 1) => ("quantile", Fixed64),
        (M::ValueAtQuantile, 2) => ("value", Fixed64),
        (M::Exemplar, 2) => ("time_unix_nano", Fixed64),
        (M::Exemplar, 3) => ("as_double", Fixed64),
        (M::Exemplar, 4) => ("span_id", Kind::Id(OPTIONAL_SPAN_ID)),
        (M::Exemplar, 5) => ("trace_id", Kind::Id(OPTIONAL_TRACE_ID)),
        (M::Exemplar, 6) => ("as_int", Fixed64),
        (M::Exemplar, 7) => ("filtered_attributes", list(M::KeyValue)),

        (M::Resource, 1) => ("attributes", list(M::KeyValue)),
        (M::Resource, 2) => ("dropped_attributes_count", Varint),
        (M::Resource, 3) => ("entity_refs", list(M::EntityRef)),
        (M::EntityRef, 1) => ("schema_url", Str),
        (M::EntityRef, 2) => ("type", Str),
        (M::EntityRef, 3) => ("id_keys", Str),
        (M::EntityRef, 4) => ("description_keys", Str),
        (M::InstrumentationScope, 1) => ("name", Str),
        (M::InstrumentationScope, 2) => ("version", Str),
        (M::InstrumentationScope, 3) => ("attributes", list(M::KeyValue)),
        (M::InstrumentationScope, 4) => ("dropped_attributes_count", Varint),
        (M::KeyValue, 1) => ("key", Str),
        (M::KeyValue, 2) => ("value", message(M::AnyValue)),
        (M::AnyValue, 1) => ("string_value", Str),
        (M::AnyValue, 2) => ("bool_value", Varint),
        (M::AnyValue, 3) => ("int_value", Varint),
        (M::AnyValue, 4) => ("double_value", Fixed64),
        (M::AnyValue, 5) => ("array_value", message(M::ArrayValue)),
        (M::AnyValue, 6) => ("kvlist_value", message(M::KeyValueList)),
        (M::AnyValue, 7) => ("bytes_value", Bytes),
        (M::ArrayValue, 1) => ("values", list(M::AnyValue)),
        (M::KeyValueList, 1) => ("values", list(M::KeyValue)),
        _ => return None,
    })
}

fn name(msg: Msg) -> &'static str {
    match msg {
        Msg::ExportTraces => "ExportTraceServiceRequest",
        Msg::ExportLogs => "ExportLogsServiceRequest",
        Msg::ExportMetrics => "ExportMetricsServiceRequest",
        _ => "",
    }
}

/// Protobuf wire types.
pub(crate) const VARINT: u8 = 0;
pub(crate) const FIXED64: u8 = 1;
pub(crate) const LEN: u8 = 2;
pub(crate) const START_GROUP: u8 = 3;
pub(crate) const END_GROUP: u8 = 4;
pub(crate) const FIXED32: u8 = 5;

/// Reads a varint off the front of `buf` as `prost` does: at most 10 bytes, the tenth below
/// 2. `None` if it is longer, overflows or is cut off.
#[inline]
pub(crate) fn read_varint(buf: &mut &[u8]) -> Option<u64> {
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

/// The value of an attribute in the usual layout (see [`usual_key_value`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Scalar<'a> {
    /// A `string_value`, not yet checked for UTF-8.
    Str(&'a [u8]),
    Bool(bool),
    Int(i64),
    Double(f64),
}

/// Splits a `KeyValue` written the way every SDK writes attributes: field 1 (the key), then
/// field 2 (the value) holding exactly one string, bool, int or double field, each length
/// one byte. Returns the key and the value, strings not checked for UTF-8; `None` for any
/// other layout, which the general rules then read. Attributes are most of a request:
/// reading them this way took validating a 55 KB trace request from 61 to 41 µs
/// (criterion, `decode/protobuf_validate_and_count`).
#[inline(always)]
pub(crate) fn usual_key_value(buf: &[u8]) -> Option<(&[u8], Scalar<'_>)> {
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
            return Some((key, Scalar::Str(tail)))
        }
        [0x21, tail @ ..] => {
            let bits = u64::from_le_bytes(tail.try_into().ok()?);
            return Some((key, Scalar::Double(f64::from_bits(bits))));
        }
        [0x10, ..] => {
            rest = &rest[1..];
            Scalar::Bool(read_varint(&mut rest)? != 0)
        }
        [0x18, ..] => {
            rest = &rest[1..];
            Scalar::Int(read_varint(&mut rest)? as i64)
        }
        _ => return None,
    };
    rest.is_empty().then_some((key, scalar))
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        read_varint(&mut self.buf).map_or_else(|| fail("invalid varint"), Ok)
    }

    fn key(&mut self) -> Result<(u32, u8), WireError> {
        let key = self.varint()?;
        if key > u64::from(u32::MAX) {
            return fail("invalid key value");
        }
        let wire_type = (key & 7) as u8;
        if wire_type > FIXED32 {
            return fail("invalid wire type value");
        }
        let tag = (key >> 3) as u32;
        if tag == 0 {
            return fail("invalid tag value: 0");
        }
        Ok((tag, wire_type))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8], WireError> {
        if len > self.buf.len() as u64 {
            return fail("buffer underflow");
        }
        let (head, tail) = self.buf.split_at(len as usize);
        self.buf = tail;
        Ok(head)
    }

    fn delimited(&mut self) -> Result<&'a [u8], WireError> {
        let len = self.varint()?;
        self.take(len)
    }

    /// Skips an unknown field, as `prost::encoding::skip_field` does.
    fn skip(&mut self, wire_type: u8, tag: u32, depth: u32) -> Result<(), WireError> {
        if depth == 0 {
            return fail("recursion limit reached");
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
                        return fail("unexpected end group tag");
                    }
                    return Ok(());
                }
                self.skip(inner_type, inner_tag, depth - 1)?;
            },
            _ => fail("unexpected end group tag"),
        }
    }
}

/// Validates `body` as the top-level message `msg` and returns its item count.
pub fn validate(msg: Msg, body: &[u8]) -> Result<u64, WireError> {
    walk(msg, body, DEPTH_LIMIT).map_err(|mut e| {
        e.path.push((name(msg), None));
        e
    })
}

/// Validates one message's fields (`depth`: how many more levels may nest below it).
fn walk(msg: Msg, body: &[u8], depth: u32) -> Result<u64, WireError> {
    let mut reader = Reader { buf: body };
    let mut items = 0u64;
    // Metric.data: the variant seen last and its data points.
    let mut data: Option<(u32, u64)> = None;
    // Id fields present, by tag: a span must have both of its own.
    let mut ids = 0u32;
    while !reader.buf.is_empty() {
        let (tag, wire_type) = reader.key()?;
        let Some((field_name, kind)) = field(msg, tag) else {
            reader.skip(wire_type, tag, depth)?;
            continue;
        };
        let at = |mut e: WireError| {
            e.path.push((field_name, None));
            e
        };
        let expect = |expected: u8| {
            if wire_type == expected {
                Ok(())
            } else {
                fail("invalid wire type").map_err(at)
            }
        };
        match kind {
            Kind::Varint => {
                expect(VARINT)?;
                reader.varint().map_err(at)?;
            }
            Kind::Fixed32 => {
                expect(FIXED32)?;
                reader.take(4).map_err(at)?;
            }
            Kind::Fixed64 => {
                expect(FIXED64)?;
                reader.take(8).map_err(at)?;
            }
            Kind::Bytes => {
                expect(LEN)?;
                reader.delimited().map_err(at)?;
            }
            Kind::Id(id) => {
                expect(LEN)?;
                let bytes = reader.delimited().map_err(at)?;
                if !id.accepts(bytes.len()) {
                    return fail(id.refusal(bytes.len())).map_err(at);
                }
                ids |= 1 << tag;
            }
            Kind::Str => {
                expect(LEN)?;
                let bytes = reader.delimited().map_err(at)?;
                if std::str::from_utf8(bytes).is_err() {
                    return fail("invalid string value: data is not UTF-8 encoded").map_err(at);
                }
            }
            Kind::RepeatedVarint if wire_type == LEN => {
                let mut packed = Reader {
                    buf: reader.delimited().map_err(at)?,
                };
                while !packed.buf.is_empty() {
                    packed.varint().map_err(at)?;
                }
            }
            Kind::RepeatedVarint => {
                expect(VARINT)?;
                reader.varint().map_err(at)?;
            }
            Kind::RepeatedFixed64 if wire_type == LEN => {
                let packed = reader.delimited().map_err(at)?;
                if packed.len() % 8 != 0 {
                    return fail("packed fixed64 values do not fill their length").map_err(at);
                }
            }
            Kind::RepeatedFixed64 => {
                expect(FIXED64)?;
                reader.take(8).map_err(at)?;
            }
            Kind::Message {
                msg: child,
                counted,
                repeated,
            } => {
                expect(LEN)?;
                if depth == 0 {
                    return fail("recursion limit reached").map_err(at);
                }
                let bytes = reader.delimited().map_err(at)?;
                if child == Msg::KeyValue && depth >= 2 {
                    if let Some((key, value)) = usual_key_value(bytes) {
                        let text = match value {
                            Scalar::Str(text) => text,
                            _ => &[],
                        };
                        if std::str::from_utf8(key).is_ok() && std::str::from_utf8(text).is_ok() {
                            // An attribute holds no items.
                            continue;
                        }
                        // Not UTF-8: the walk below names the field in its error.
                    }
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
        }
    }
    if msg == Msg::Span && ids & SPAN_IDS != SPAN_IDS {
        return Err(missing_span_id(ids));
    }
    Ok(items + data.map_or(0, |(_, points)| points))
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
    WireError {
        path: vec![(name, None)],
        reason: id.refusal(0).into(),
    }
}

/// The tags of a span's own ids (`trace_id` = 1, `span_id` = 2), which it must have.
const SPAN_IDS: u32 = 1 << 1 | 1 << 2;

/// How many fields numbered `tag` start in `fields`, the valid beginning of a message.
fn occurrences(tag: u32, fields: &[u8]) -> usize {
    let mut reader = Reader { buf: fields };
    let mut count = 0;
    while let Ok((field, wire_type)) = reader.key() {
        count += usize::from(field == tag);
        if reader.skip(wire_type, field, DEPTH_LIMIT).is_err() {
            break;
        }
    }
    count
}

/// Hand-made protobuf for tests of the wire format.
#[cfg(test)]
pub(crate) mod encoding {
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

#[cfg(test)]
mod tests {
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use crate::signal::testing::{corpus, reference};
    use crate::Signal;

    /// Mutations per corpus entry; `OTELGATE_WIRE_MUTATIONS` raises it for a longer search.
    fn mutations() -> usize {
        std::env::var("OTELGATE_WIRE_MUTATIONS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1500)
    }

    fn agree(signal: Signal, body: &[u8]) {
        let walked = signal.count_protobuf(body).map_err(|e| e.to_string());
        let decoded = reference(signal, body);
        match (&walked, &decoded) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{signal} item count of {body:02x?}"),
            (Err(_), Err(_)) => {}
            _ => panic!("{signal}: validation {walked:?} but prost {decoded:?} for {body:02x?}"),
        }
    }

    #[test]
    fn valid_requests_are_accepted_with_the_decoded_count() {
        for (signal, body) in corpus() {
            let count = signal.count_protobuf(&body).expect("valid request");
            assert!(count > 0, "{signal}: empty corpus entry");
            assert_eq!(Ok(count), reference(signal, &body));
        }
    }

    /// Random damage to real requests: flipped bits, random bytes, cuts, inserted and
    /// repeated spans of bytes. Whatever prost decodes (with ids of OTLP's lengths) must be
    /// accepted with the same count, and whatever it refuses must be refused.
    #[test]
    fn agrees_with_prost_on_damaged_requests() {
        let mut rng = SmallRng::seed_from_u64(0x07e1_6a7e);
        let mut accepted = 0;
        let mut refused = 0;
        for (signal, body) in corpus() {
            for _ in 0..mutations() {
                let mut damaged = body.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..damaged.len());
                    match rng.random_range(0..6) {
                        0 => damaged[at] ^= 1 << rng.random_range(0..8),
                        1 => damaged[at] = rng.random(),
                        2 => damaged.truncate(at),
                        3 => {
                            let len = rng.random_range(1..8);
                            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                            damaged.splice(at..at, bytes);
                        }
                        4 => {
                            let end = (at + rng.random_range(1..64)).min(damaged.len());
                            let copy = damaged[at..end].to_vec();
                            damaged.splice(at..at, copy);
                        }
                        _ => damaged[at] = [0x00, 0x7f, 0x80, 0xff, 0x08, 0x0a][at % 6],
                    }
                    if damaged.is_empty() {
                        break;
                    }
                }
                agree(signal, &damaged);
                match reference(signal, &damaged) {
                    Ok(_) => accepted += 1,
                    Err(_) => refused += 1,
                }
            }
        }
        // Both outcomes must be exercised, or the comparison proves little.
        assert!(
            accepted > 500 && refused > 500,
            "{accepted} accepted, {refused} refused"
        );
    }

    /// Edge cases of the wire format, each compared with prost.
    #[test]
    fn agrees_with_prost_on_wire_format_edges() {
        use super::encoding::{key, len_field};
        // ExportTraceServiceRequest > ResourceSpans > ScopeSpans > Span with valid ids and
        // `span` bytes.
        let traces = |span: &[u8]| {
            let span = [len_field(1, &[1; 16]), len_field(2, &[2; 8]), span.to_vec()].concat();
            len_field(1, &len_field(2, &len_field(2, &span)))
        };
        // A span attribute (`key`, `value` as AnyValue bytes).
        let attribute =
            |k: &[u8], value: &[u8]| len_field(9, &[len_field(1, k), len_field(2, value)].concat());
        // A log record whose body is an AnyValue nested `depth` array levels deep.
        let nested_body = |depth: usize| {
            let mut value = len_field(1, b"leaf");
            for _ in 0..depth {
                value = len_field(5, &len_field(1, &value));
            }
            len_field(1, &len_field(2, &len_field(2, &len_field(5, &value))))
        };
        let mut cases: Vec<(Signal, Vec<u8>)> = vec![
            (Signal::Traces, vec![]),
            (Signal::Traces, traces(&[])),
            (Signal::Traces, traces(&len_field(5, b"ok"))),
            (Signal::Traces, traces(&len_field(5, &[0xff, 0xfe]))),
            (Signal::Traces, traces(&len_field(1, &[0xff, 0xfe]))),
            (Signal::Traces, traces(&[key(5, 0), vec![1]].concat())),
            (Signal::Traces, traces(&[key(7, 1), vec![0; 8]].concat())),
            (Signal::Traces, traces(&[key(7, 1), vec![0; 7]].concat())),
            (Signal::Traces, traces(&[key(16, 5), vec![0; 4]].concat())),
            (Signal::Traces, traces(&[key(16, 1), vec![0; 8]].concat())),
            (
                Signal::Traces,
                traces(&[key(99, 0), vec![0x80, 0x01]].concat()),
            ),
            (
                Signal::Traces,
                traces(&[key(99, 3), key(1, 0), vec![5], key(99, 4)].concat()),
            ),
            (
                Signal::Traces,
                traces(&[key(99, 3), key(1, 0), vec![5], key(98, 4)].concat()),
            ),
            (Signal::Traces, traces(&key(99, 4))),
            (Signal::Traces, traces(&[0x00, 0x01])),
            (Signal::Traces, traces(&[0x0f])),
            (
                Signal::Traces,
                traces(&[
                    0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ]),
            ),
            (
                Signal::Traces,
                traces(&[
                    0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
                ]),
            ),
            (
                Signal::Traces,
                traces(&[
                    0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
                ]),
            ),
            (
                Signal::Traces,
                traces(&[0xf8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]),
            ),
            // Attributes in the usual layout (read by `usual_key_value`) and near it.
            (
                Signal::Traces,
                traces(&attribute(b"k", &len_field(1, b"v"))),
            ),
            (
                Signal::Traces,
                traces(&attribute(&[0xff], &len_field(1, b"v"))),
            ),
            (
                Signal::Traces,
                traces(&attribute(b"k", &len_field(1, &[0xc3]))),
            ),
            (
                Signal::Traces,
                traces(&attribute(b"k", &[key(4, 1), vec![0; 8]].concat())),
            ),
            (
                Signal::Traces,
                traces(&attribute(b"k", &[key(4, 1), vec![0; 7]].concat())),
            ),
            (
                Signal::Traces,
                traces(&attribute(b"k", &[key(3, 0), vec![0x80]].concat())),
            ),
            (
                Signal::Traces,
                traces(&attribute(b"k", &[key(2, 0), vec![1, 1]].concat())),
            ),
            (
                Signal::Traces,
                traces(&attribute(b"k", &[key(3, 2), vec![0]].concat())),
            ),
            (
                Signal::Traces,
                traces(&attribute(b"k", &[key(1, 0), vec![0]].concat())),
            ),
            (
                Signal::Traces,
                traces(&attribute(&[b'k'; 200], &len_field(1, &[0xc3]))),
            ),
            (Signal::Logs, nested_body(40)),
            (Signal::Logs, nested_body(48)),
            (Signal::Logs, nested_body(49)),
            (Signal::Logs, nested_body(60)),
        ];
        // Metrics: packed and unpacked repeated fields, and the `data` oneof.
        let point = |body: &[u8]| len_field(1, body);
        let metric = |fields: &[u8]| len_field(1, &len_field(2, &len_field(2, fields)));
        let histogram_point = |fields: &[u8]| len_field(9, &point(fields));
        for fields in [
            histogram_point(&len_field(6, &[0; 16])),
            histogram_point(&len_field(6, &[0; 12])),
            histogram_point(&[key(7, 1), vec![0; 8], key(7, 1), vec![0; 8]].concat()),
            histogram_point(&[key(6, 0), vec![3]].concat()),
            len_field(
                10,
                &point(&len_field(8, &len_field(2, &[1, 0x80, 0x01, 3]))),
            ),
            len_field(10, &point(&len_field(8, &len_field(2, &[1, 0x80])))),
            len_field(10, &point(&len_field(8, &[key(2, 0), vec![7]].concat()))),
            [
                len_field(5, &[point(&[]), point(&[])].concat()),
                len_field(7, &point(&[])),
            ]
            .concat(),
            [len_field(5, &point(&[])), len_field(5, &point(&[]))].concat(),
            [
                len_field(5, &point(&[])),
                len_field(7, &[]),
                len_field(5, &[point(&[]), point(&[])].concat()),
            ]
            .concat(),
            [
                len_field(11, &point(&[])),
                len_field(12, &len_field(1, b"k")),
            ]
            .concat(),
        ] {
            cases.push((Signal::Metrics, metric(&fields)));
        }
        for (signal, body) in &cases {
            agree(*signal, body);
        }
        // An attribute in the usual layout that is not UTF-8 is named like any other field.
        let error = Signal::Traces
            .count_protobuf(&traces(&attribute(b"k", &len_field(1, &[0xc3]))))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("spans[0].attributes[0].value.string_value: invalid string value"),
            "{error}"
        );
        // The depth limit is reached between these two.
        assert!(Signal::Logs.count_protobuf(&nested_body(40)).is_ok());
        assert!(Signal::Logs.count_protobuf(&nested_body(60)).is_err());
        let refused = cases
            .iter()
            .filter(|(signal, body)| signal.count_protobuf(body).is_err())
            .count();
        assert!(
            refused > 10 && refused < cases.len() - 10,
            "{refused} of {}",
            cases.len()
        );
    }

    /// A name, a request, and its count or a part of the refusal's message.
    type IdCase = (&'static str, Signal, Vec<u8>, Result<u64, &'static str>);

    /// Trace and span ids of the wrong length are refused, naming the field and which
    /// element of each list holds it; empty ids only where OTLP makes them optional.
    #[test]
    fn ids_must_have_the_lengths_otlp_gives_them() {
        use super::encoding::len_field;
        let span = |trace: Option<usize>, span: Option<usize>, extra: &[u8]| {
            let mut fields = Vec::new();
            if let Some(len) = trace {
                fields.extend(len_field(1, &vec![1; len]));
            }
            if let Some(len) = span {
                fields.extend(len_field(2, &vec![2; len]));
            }
            fields.extend_from_slice(extra);
            len_field(2, &fields)
        };
        let good = span(Some(16), Some(8), &[]);
        let traces = |resources: &[Vec<u8>]| -> Vec<u8> {
            resources
                .iter()
                .flat_map(|spans| len_field(1, &len_field(2, spans)))
                .collect()
        };
        let link = |trace: usize, span: usize| {
            len_field(
                13,
                &[len_field(1, &vec![3; trace]), len_field(2, &vec![4; span])].concat(),
            )
        };
        let log = |fields: &[u8]| len_field(1, &len_field(2, &len_field(2, fields)));
        let exemplar = |span: usize| {
            let point = len_field(5, &len_field(4, &vec![5; span]));
            let metric = len_field(5, &len_field(1, &point));
            len_field(1, &len_field(2, &len_field(2, &metric)))
        };
        let cases: Vec<IdCase> =
            vec![
            ("valid span", Signal::Traces, traces(std::slice::from_ref(&good)), Ok(1)),
            (
                "short trace id",
                Signal::Traces,
                traces(&[span(Some(15), Some(8), &[])]),
                Err("ExportTraceServiceRequest.resource_spans[0].scope_spans[0].spans[0].\
                     trace_id: 15 bytes long; must be 16 bytes"),
            ),
            (
                "long span id in the second span of the second resource",
                Signal::Traces,
                traces(&[good.clone(), [good.clone(), span(Some(16), Some(9), &[])].concat()]),
                Err("resource_spans[1].scope_spans[0].spans[1].span_id: 9 bytes long; must be 8 \
                     bytes"),
            ),
            (
                "no trace id",
                Signal::Traces,
                traces(&[span(None, Some(8), &[])]),
                Err("spans[0].trace_id: empty or missing; must be 16 bytes"),
            ),
            (
                "empty span id",
                Signal::Traces,
                traces(&[span(Some(16), Some(0), &[])]),
                Err("spans[0].span_id: empty or missing; must be 8 bytes"),
            ),
            (
                "parent span id of 8",
                Signal::Traces,
                traces(&[span(Some(16), Some(8), &len_field(4, &[7; 8]))]),
                Ok(1),
            ),
            (
                "empty parent span id",
                Signal::Traces,
                traces(&[span(Some(16), Some(8), &len_field(4, &[]))]),
                Ok(1),
            ),
            (
                "parent span id of 4",
                Signal::Traces,
                traces(&[span(Some(16), Some(8), &len_field(4, &[7; 4]))]),
                Err("spans[0].parent_span_id: 4 bytes long; must be empty or 8 \
                     bytes"),
            ),
            (
                "links with and without ids",
                Signal::Traces,
                traces(&[span(Some(16), Some(8), &[link(16, 8), link(0, 0)].concat())]),
                Ok(1),
            ),
            (
                "a link's short trace id",
                Signal::Traces,
                traces(&[span(Some(16), Some(8), &[link(16, 8), link(3, 8)].concat())]),
                Err("spans[0].links[1].trace_id: 3 bytes long; must be empty or \
                     16 bytes"),
            ),
            ("log record without ids", Signal::Logs, log(&len_field(3, b"x")), Ok(1)),
            (
                "log record with ids",
                Signal::Logs,
                log(&[len_field(9, &[1; 16]), len_field(10, &[2; 8])].concat()),
                Ok(1),
            ),
            (
                "log record with a hex text trace id",
                Signal::Logs,
                log(&len_field(9, &[b'a'; 32])),
                Err("ExportLogsServiceRequest.resource_logs[0].scope_logs[0].log_records[0].\
                     trace_id: 32 bytes long; must be empty or 16 bytes"),
            ),
            ("exemplar span id", Signal::Metrics, exemplar(8), Ok(1)),
            (
                "exemplar short span id",
                Signal::Metrics,
                exemplar(7),
                Err("metrics[0].gauge.data_points[0].exemplars[0].span_id: 7 bytes long; must be \
                     empty or 8 bytes"),
            ),
        ];
        for (name, signal, body, expected) in cases {
            let result = signal.count_protobuf(&body).map_err(|e| e.to_string());
            match (expected, &result) {
                (Ok(want), Ok(got)) => assert_eq!(want, *got, "{name}"),
                (Err(want), Err(got)) => assert!(got.contains(want), "{name}: {got}"),
                _ => panic!("{name}: {result:?}"),
            }
            agree(signal, &body);
        }
    }
}
