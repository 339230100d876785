//! OTLP records to rows: walks a request, offers every span, span event and log record to
//! the mappings that select its kind, and writes the selected ones as rows of binary COPY
//! data (see `copy::Rows`).
//! A record that cannot be converted becomes a rejected row (table, reason, record as JSON)
//! instead of stopping the others.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::trace::v1::{span, status};
use serde::{Serialize, Serializer};
use serde_json::Value;

use super::config::{LlmPrice, TimescaleSinkConfig};
use super::copy::{hex, RowWriter, Rows};
use super::mapping::{self, ColumnType, Field, Mapping, RecordKind, Source};
use super::view::{self, AnyValue, Event, KeyValue, LogRecord, Span, Value as AnyKind, ViewError};
use crate::Signal;

/// A record that could not become a row.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub table: String,
    pub reason: String,
    pub record: Value,
}

/// Rows extracted from requests, per mapping, plus the rejections.
#[derive(Debug, Default)]
pub struct RowBatch {
    /// `rows[i]` belongs to mapping `i`; each row has the standard columns then the mapping's.
    pub rows: Vec<Rows>,
    pub rejected: Vec<Rejected>,
}

impl RowBatch {
    pub fn row_count(&self) -> usize {
        self.rows.iter().map(Rows::len).sum()
    }
}

/// Converts OTLP requests to rows with a fixed set of mappings.
#[derive(Debug, Clone)]
pub struct Extractor {
    mappings: Vec<Mapping>,
    prices: BTreeMap<String, LlmPrice>,
}

/// One record, with what its mappings may read around it.
struct Record<'a> {
    kind: RecordKind,
    resource: &'a [KeyValue<'a>],
    scope_name: &'a str,
    span: Option<&'a Span<'a>>,
    event: Option<&'a Event<'a>>,
    log: Option<&'a LogRecord<'a>>,
    /// The record's own attributes: the span's, the event's or the log record's.
    attributes: &'a [KeyValue<'a>],
}

/// Whether two attribute keys are equal. Rows look keys up by comparing them with every
/// attribute of a record, and keys of equal length are common (`bbox.x`, `bbox.y`): `==`
/// called `memcmp` for each of those, 15% of extraction. Keys up to 16 bytes are compared
/// as two overlapping words instead.
#[inline]
fn same_key(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    match n {
        8..=16 => {
            let word = |s: &[u8], at: usize| {
                u64::from_le_bytes(s[at..at + 8].try_into().expect("8 bytes"))
            };
            word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8)
        }
        4..=7 => {
            let word = |s: &[u8], at: usize| {
                u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"))
            };
            word(a, 0) == word(b, 0) && word(a, n - 4) == word(b, n - 4)
        }
        _ => a == b,
    }
}

fn find<'a, 'b>(attributes: &'a [KeyValue<'b>], key: &str) -> Option<&'a AnyValue<'b>> {
    attributes
        .iter()
        .find(|kv| same_key(kv.key, key))
        .and_then(|kv| kv.value.as_ref())
        .filter(|v| v.value.is_some())
}

impl Record<'_> {
    fn attributes(&self) -> &[KeyValue<'_>] {
        self.attributes
    }

    fn name(&self) -> &str {
        match (self.kind, self.span, self.event, self.log) {
            (RecordKind::SpanEvent, _, Some(event), _) => event.name,
            (RecordKind::Span, Some(span), _, _) => span.name,
            (RecordKind::Log, _, _, Some(log)) if !log.event_name.is_empty() => log.event_name,
            (RecordKind::Log, _, _, Some(log)) => match find(&log.attributes, "event.name") {
                Some(AnyValue {
                    value: Some(AnyKind::StringValue(s)),
                }) => s,
                _ => "",
            },
            _ => "",
        }
    }

    /// Nanoseconds since the Unix epoch of the record.
    fn time(&self) -> i64 {
        let nanos = match (self.kind, self.span, self.event, self.log) {
            (RecordKind::SpanEvent, _, Some(event), _) => event.time_unix_nano,
            (RecordKind::Span, Some(span), _, _) => span.start_time_unix_nano,
            (RecordKind::Log, _, _, Some(log)) if log.time_unix_nano != 0 => log.time_unix_nano,
            (RecordKind::Log, _, _, Some(log)) => log.observed_time_unix_nano,
            _ => 0,
        };
        nanos.min(i64::MAX as u64) as i64
    }

    fn trace_id(&self) -> Option<&[u8]> {
        let id = self
            .span
            .map(|s| s.trace_id)
            .or(self.log.map(|l| l.trace_id))?;
        (!id.is_empty()).then_some(id)
    }

    fn span_id(&self) -> Option<&[u8]> {
        let id = self
            .span
            .map(|s| s.span_id)
            .or(self.log.map(|l| l.span_id))?;
        (!id.is_empty()).then_some(id)
    }

    fn service_name(&self) -> Option<&str> {
        match find(self.resource, "service.name") {
            Some(AnyValue {
                value: Some(AnyKind::StringValue(s)),
            }) => Some(s),
            _ => None,
        }
    }

    fn field(&self, field: Field) -> Option<Raw<'_>> {
        let span = self.span;
        let text = |s| (!str::is_empty(s)).then_some(Raw::Text(s));
        let nanos = |n: u64| n.min(i64::MAX as u64) as i64;
        match field {
            Field::Time => Some(Raw::Timestamp(self.time())),
            Field::EndTime => span.map(|s| Raw::Timestamp(nanos(s.end_time_unix_nano))),
            Field::DurationMs => span.map(|s| {
                Raw::Float8(
                    s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as f64 / 1e6,
                )
            }),
            Field::TraceId => self.trace_id().map(Raw::Bytes),
            Field::SpanId => self.span_id().map(Raw::Bytes),
            Field::ParentSpanId => span
                .filter(|s| !s.parent_span_id.is_empty())
                .map(|s| Raw::Bytes(s.parent_span_id)),
            Field::Name => text(self.name()),
            Field::Kind => span.map(|s| {
                Raw::Text(
                    span::SpanKind::try_from(s.kind).map_or("unspecified", |k| k.as_str_name()),
                )
            }),
            Field::Status => span.map(|s| {
                let code = s.status.as_ref().map_or(0, |st| st.code);
                Raw::Text(match status::StatusCode::try_from(code) {
                    Ok(status::StatusCode::Ok) => "ok",
                    Ok(status::StatusCode::Error) => "error",
                    _ => "unset",
                })
            }),
            Field::StatusMessage => span
                .and_then(|s| s.status.as_ref())
                .and_then(|st| text(st.message)),
            Field::StatusError => span.and_then(|s| s.status.as_ref()).and_then(|st| {
                (st.code == status::StatusCode::Error as i32).then_some(Raw::Text(
                    if st.message.is_empty() {
                        "error"
                    } else {
                        st.message
                    },
                ))
            }),
            Field::SeverityNumber => self
                .log
                .filter(|l| l.severity_number != 0)
                .map(|l| Raw::Int8(l.severity_number.into())),
            Field::SeverityText => self.log.and_then(|l| text(l.severity_text)),
            Field::Body => self
                .log
                .and_then(|l| l.body.as_ref())
                .map(|b| match &b.value {
                    Some(AnyKind::StringValue(s)) => Raw::Text(s),
                    _ => Raw::Json(b),
                }),
            Field::ServiceName => self.service_name().map(Raw::Text),
            Field::ScopeName => text(self.scope_name),
        }
    }

    fn source(&self, source: &Source, prices: &BTreeMap<String, LlmPrice>) -> Option<Raw<'_>> {
        match source {
            Source::Attribute(key) => find(self.attributes(), key).map(Raw::Any),
            Source::Span(key) => self
                .span
                .and_then(|s| find(&s.attributes, key))
                .map(Raw::Any),
            Source::Resource(key) => find(self.resource, key).map(Raw::Any),
            Source::Field(field) => self.field(*field),
            Source::CostUsd => self.cost_usd(prices).map(Raw::Float8),
        }
    }

    /// Cost from the price table: response model first, then request model.
    fn cost_usd(&self, prices: &BTreeMap<String, LlmPrice>) -> Option<f64> {
        let attributes = self.attributes();
        let string = |key| match find(attributes, key) {
            Some(AnyValue {
                value: Some(AnyKind::StringValue(s)),
            }) => Some(*s),
            _ => None,
        };
        let tokens = |keys: [&str; 2]| {
            keys.iter()
                .find_map(|k| match find(attributes, k)?.value.as_ref()? {
                    AnyKind::IntValue(i) => Some(*i as f64),
                    AnyKind::DoubleValue(d) => Some(*d),
                    AnyKind::StringValue(s) => s.trim().parse().ok(),
                    _ => None,
                })
        };
        let price = ["gen_ai.response.model", "gen_ai.request.model"]
            .into_iter()
            .find_map(|k| prices.get(string(k)?))?;
        let input =
            tokens(["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens"]).unwrap_or(0.0);
        let output = tokens([
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
        ])
        .unwrap_or(0.0);
        Some((input * price.input_per_million + output * price.output_per_million) / 1e6)
    }

    fn to_json(&self) -> Value {
        let attributes: serde_json::Map<String, Value> = self
            .attributes()
            .iter()
            .map(|kv| {
                (
                    kv.key.to_owned(),
                    kv.value.as_ref().map_or(Value::Null, any_to_json),
                )
            })
            .collect();
        serde_json::json!({
            "kind": format!("{:?}", self.kind),
            "name": self.name(),
            "time_unix_nano": self.time(),
            "trace_id": self.trace_id().map(hex),
            "span_id": self.span_id().map(hex),
            "service_name": self.service_name(),
            "attributes": attributes,
        })
    }
}

/// A source's value before conversion to the column type: an attribute's value, or one of
/// the record's fields.
#[derive(Debug)]
enum Raw<'a> {
    Any(&'a AnyValue<'a>),
    Text(&'a str),
    Bytes(&'a [u8]),
    Int8(i64),
    Float8(f64),
    Timestamp(i64),
    /// A log body that is not a string: fits jsonb only.
    Json(&'a AnyValue<'a>),
}

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
        Some(AnyKind::BytesValue(b)) => Value::String(hex(b)),
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
/// `serde_json::Value` first (rows are built per record; the tree of maps and strings was
/// most of their cost).
struct AnyJson<'a>(&'a AnyValue<'a>);

impl Serialize for AnyJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0.value {
            None => serializer.serialize_unit(),
            Some(AnyKind::StringValue(s)) => serializer.serialize_str(s),
            Some(AnyKind::BoolValue(b)) => serializer.serialize_bool(*b),
            Some(AnyKind::IntValue(i)) => serializer.serialize_i64(*i),
            // serde_json writes non-finite numbers as null, like `any_to_json`.
            Some(AnyKind::DoubleValue(d)) => serializer.serialize_f64(*d),
            Some(AnyKind::BytesValue(b)) => serializer.serialize_str(&hex(b)),
            Some(AnyKind::ArrayValue(a)) => serializer.collect_seq(a.iter().map(AnyJson)),
            Some(AnyKind::KvlistValue(kv)) => {
                serializer.collect_map(kv.iter().map(|kv| (kv.key, kv.value.as_ref().map(AnyJson))))
            }
        }
    }
}

/// Attributes as one JSON object, leaving out the keys a mapping stored in columns. A key
/// repeated in the record is written twice; jsonb keeps the last, as `any_to_json` does.
struct AttributesJson<'a> {
    attributes: &'a [KeyValue<'a>],
    skip: &'a [String],
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

/// Writes a value as a cell of column type `ty`, or says why it cannot be one (and writes
/// nothing).
fn convert(raw: Raw<'_>, ty: ColumnType, row: &mut RowWriter<'_>) -> Result<(), String> {
    use AnyKind as V;
    use ColumnType as T;
    let any = match raw {
        Raw::Any(any) => any,
        raw => {
            match (raw, ty) {
                (Raw::Text(s), T::Text) => row.text(s),
                (Raw::Text(s), T::Jsonb) => row.json(&s),
                (Raw::Bytes(b), T::Bytea) => row.bytea(b),
                (Raw::Bytes(b), T::Text) => row.text(&hex(b)),
                (Raw::Int8(i), T::Int8) => row.int8(i),
                (Raw::Int8(i), T::Float8) => row.float8(i as f64),
                (Raw::Float8(f), T::Float8) => row.float8(f),
                (Raw::Timestamp(ns), T::Timestamptz) => row.timestamp(ns),
                (Raw::Json(any), T::Jsonb) => row.json(&AnyJson(any)),
                (raw, ty) => return Err(format!("cannot store {raw:?} as {}", ty.sql())),
            }
            return Ok(());
        }
    };
    let value = any.value.as_ref().expect("find() skips empty values");
    let mismatch = || format!("cannot store {} as {}", any_to_json(any), ty.sql());
    match (ty, value) {
        (T::Text, V::StringValue(s)) => row.text(s),
        (T::Text, V::IntValue(i)) => row.text(&i.to_string()),
        (T::Text, V::DoubleValue(d)) => row.text(&d.to_string()),
        (T::Text, V::BoolValue(b)) => row.text(if *b { "true" } else { "false" }),
        (T::Text, _) => row.text(&serde_json::to_string(&AnyJson(any)).expect("string keys")),
        (T::Int8, V::IntValue(i)) => row.int8(*i),
        (T::Int8, V::DoubleValue(d)) if d.fract() == 0.0 && d.abs() < 9.0e18 => row.int8(*d as i64),
        (T::Int8, V::StringValue(s)) => row.int8(s.trim().parse().map_err(|_| mismatch())?),
        (T::Float8, V::DoubleValue(d)) => row.float8(*d),
        (T::Float8, V::IntValue(i)) => row.float8(*i as f64),
        (T::Float8, V::StringValue(s)) => row.float8(s.trim().parse().map_err(|_| mismatch())?),
        (T::Bool, V::BoolValue(b)) => row.bool(*b),
        (T::Bool, V::StringValue(s)) => row.bool(s.parse().map_err(|_| mismatch())?),
        (T::Timestamptz, V::IntValue(ns)) => row.timestamp(*ns),
        (T::Uuid, V::StringValue(s)) => {
            row.uuid(uuid::Uuid::parse_str(s).map_err(|_| mismatch())?.as_bytes())
        }
        (T::Uuid, V::BytesValue(b)) => {
            row.uuid(&<[u8; 16]>::try_from(&b[..]).map_err(|_| mismatch())?)
        }
        (T::Jsonb, _) => row.json(&AnyJson(any)),
        (T::Bytea, V::BytesValue(b)) => row.bytea(b),
        (T::Bytea, V::StringValue(s)) => row.bytea(s.as_bytes()),
        _ => return Err(mismatch()),
    }
    Ok(())
}

impl Extractor {
    pub fn new(config: &TimescaleSinkConfig) -> Result<Self, String> {
        Ok(Extractor {
            mappings: mapping::compile(config)?,
            prices: config.llm_prices.clone(),
        })
    }

    pub fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    /// An empty batch shaped for these mappings.
    pub fn batch(&self) -> RowBatch {
        RowBatch {
            rows: vec![Rows::default(); self.mappings.len()],
            rejected: Vec::new(),
        }
    }

    /// Whether any mapping reads `signal` (metrics never map to rows today).
    pub fn takes(&self, signal: Signal) -> bool {
        self.mappings.iter().any(|m| match m.record {
            RecordKind::Span | RecordKind::SpanEvent => signal == Signal::Traces,
            RecordKind::Log => signal == Signal::Logs,
        })
    }

    /// Extracts the rows of one protobuf `Export*ServiceRequest` into `out`, reading the
    /// records as borrowed views of `body` (see `view`).
    pub fn extract(
        &self,
        signal: Signal,
        body: &[u8],
        out: &mut RowBatch,
    ) -> Result<(), ViewError> {
        match signal {
            Signal::Traces => view::spans(body, |scope, span| {
                let record = Record {
                    kind: RecordKind::Span,
                    resource: &scope.resource,
                    scope_name: scope.name,
                    span: Some(span),
                    event: None,
                    log: None,
                    attributes: &span.attributes,
                };
                self.offer(&record, out);
                for event in &span.events {
                    let record = Record {
                        kind: RecordKind::SpanEvent,
                        event: Some(event),
                        attributes: span.event_attributes(event),
                        ..record
                    };
                    self.offer(&record, out);
                }
            }),
            Signal::Logs => view::log_records(body, |scope, log| {
                let record = Record {
                    kind: RecordKind::Log,
                    resource: &scope.resource,
                    scope_name: scope.name,
                    span: None,
                    event: None,
                    log: Some(log),
                    attributes: &log.attributes,
                };
                self.offer(&record, out);
            }),
            Signal::Metrics => Ok(()),
        }
    }

    fn offer(&self, record: &Record<'_>, out: &mut RowBatch) {
        for (index, mapping) in self.mappings.iter().enumerate() {
            if mapping.record != record.kind || !selects(mapping, record) {
                continue;
            }
            if let Err(reason) = self.row(mapping, record, &mut out.rows[index]) {
                out.rejected.push(Rejected {
                    table: mapping.table.clone(),
                    reason,
                    record: record.to_json(),
                });
            }
        }
    }

    /// Writes the row `mapping` makes of `record` to `rows`, or says why there is none.
    fn row(&self, mapping: &Mapping, record: &Record<'_>, rows: &mut Rows) -> Result<(), String> {
        let mut row = rows.row();
        row.timestamp(record.time());
        match record.trace_id() {
            Some(id) => row.bytea(id),
            None => row.null(),
        }
        match record.span_id() {
            Some(id) => row.bytea(id),
            None => row.null(),
        }
        match record.service_name() {
            Some(name) => row.text(name),
            None => row.null(),
        }
        row.json(&AttributesJson {
            attributes: record.attributes(),
            skip: &mapping.consumed,
        });
        for column in &mapping.columns {
            let raw = column
                .sources
                .iter()
                .find_map(|s| record.source(s, &self.prices));
            match raw {
                Some(raw) => convert(raw, column.ty, &mut row)
                    .map_err(|e| format!("column {}: {e}", column.name))?,
                None if column.required => {
                    return Err(format!("column {}: required value missing", column.name))
                }
                None => row.null(),
            }
        }
        row.finish();
        Ok(())
    }
}

fn selects(mapping: &Mapping, record: &Record<'_>) -> bool {
    if mapping
        .name
        .as_deref()
        .is_some_and(|name| name != record.name())
    {
        return false;
    }
    let attributes = record.attributes();
    if !mapping.has_any.is_empty()
        && !mapping
            .has_any
            .iter()
            .any(|k| find(attributes, k).is_some())
    {
        return false;
    }
    mapping.where_equal.iter().all(|(key, expected)| {
        match find(attributes, key).and_then(|v| v.value.as_ref()) {
            Some(AnyKind::StringValue(s)) => s == expected,
            Some(AnyKind::IntValue(i)) => i.to_string() == *expected,
            Some(AnyKind::BoolValue(b)) => b.to_string() == *expected,
            Some(AnyKind::DoubleValue(d)) => d.to_string() == *expected,
            _ => false,
        }
    })
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
    fn same_key_agrees_with_equality() {
        let base: String = ('a'..='z').take(20).collect();
        for n in 0..=20 {
            let a = &base[..n];
            assert!(same_key(a, a), "{a}");
            for at in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[at] = b'.';
                let b = String::from_utf8(b).unwrap();
                assert!(!same_key(a, &b), "{a} {b}");
            }
            if n < 20 {
                assert!(!same_key(a, &base[..n + 1]), "{a}");
            }
        }
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
