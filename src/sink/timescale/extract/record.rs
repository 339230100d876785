//! [`RecordContext`]: a span, span event or log record with its resource and scope, and
//! what mappings read from it (attributes by key, fields, the LLM cost), as [`Raw`] values
//! before they are converted to a column's type.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::trace::v1::{span, status};
use serde_json::Value;

use super::json::any_to_json;
use crate::sink::timescale::config::LlmPrice;
use crate::sink::timescale::mapping::{Field, RecordKind, Source};
use crate::sink::timescale::view::{AnyValue, Event, KeyValue, LogRecord, Span, Value as AnyKind};

/// One record, with what its mappings may read around it.
pub(super) struct RecordContext<'a> {
    pub(super) kind: RecordKind,
    pub(super) resource: &'a [KeyValue<'a>],
    pub(super) scope_name: &'a str,
    pub(super) span: Option<&'a Span<'a>>,
    pub(super) event: Option<&'a Event<'a>>,
    pub(super) log: Option<&'a LogRecord<'a>>,
    /// The record's own attributes: the span's, the event's or the log record's.
    pub(super) attributes: &'a [KeyValue<'a>],
}

/// Whether two attribute keys are equal. Rows look keys up by comparing them with every
/// attribute of a record, and keys of equal length are common (`bbox.x`, `bbox.y`): `==`
/// called `memcmp` for each of those, a large part of extraction (docs/BENCHMARKS.md). Keys
/// up to 16 bytes are compared as two overlapping words instead.
#[inline]
pub(super) fn same_key(a: &str, b: &str) -> bool {
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

#[inline]
pub(super) fn find<'a, 'b>(attributes: &'a [KeyValue<'b>], key: &str) -> Option<&'a AnyValue<'b>> {
    attributes
        .iter()
        .find(|kv| same_key(kv.key, key))
        .and_then(|kv| kv.value.as_ref())
        .filter(|v| v.value.is_some())
}

impl RecordContext<'_> {
    #[inline]
    pub(super) fn attributes(&self) -> &[KeyValue<'_>] {
        self.attributes
    }

    #[inline]
    pub(super) fn name(&self) -> &str {
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
    #[inline]
    pub(super) fn time(&self) -> i64 {
        let nanos = match (self.kind, self.span, self.event, self.log) {
            (RecordKind::SpanEvent, _, Some(event), _) => event.time_unix_nano,
            (RecordKind::Span, Some(span), _, _) => span.start_time_unix_nano,
            (RecordKind::Log, _, _, Some(log)) if log.time_unix_nano != 0 => log.time_unix_nano,
            (RecordKind::Log, _, _, Some(log)) => log.observed_time_unix_nano,
            _ => 0,
        };
        nanos.min(i64::MAX as u64) as i64
    }

    #[inline]
    pub(super) fn trace_id(&self) -> Option<&[u8]> {
        let id = self
            .span
            .map(|s| s.trace_id)
            .or(self.log.map(|l| l.trace_id))?;
        (!id.is_empty()).then_some(id)
    }

    #[inline]
    pub(super) fn span_id(&self) -> Option<&[u8]> {
        let id = self
            .span
            .map(|s| s.span_id)
            .or(self.log.map(|l| l.span_id))?;
        (!id.is_empty()).then_some(id)
    }

    #[inline]
    pub(super) fn service_name(&self) -> Option<&str> {
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

    #[inline]
    pub(super) fn source(
        &self,
        source: &Source,
        prices: &BTreeMap<String, LlmPrice>,
    ) -> Option<Raw<'_>> {
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

    pub(super) fn to_json(&self) -> Value {
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
            "trace_id": self.trace_id().map(hex::encode),
            "span_id": self.span_id().map(hex::encode),
            "service_name": self.service_name(),
            "attributes": attributes,
        })
    }
}

/// A source's value before conversion to the column type: an attribute's value, or one of
/// the record's fields.
#[derive(Debug)]
pub(super) enum Raw<'a> {
    Any(&'a AnyValue<'a>),
    Text(&'a str),
    Bytes(&'a [u8]),
    Int8(i64),
    Float8(f64),
    Timestamp(i64),
    /// A log body that is not a string: fits jsonb only.
    Json(&'a AnyValue<'a>),
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
