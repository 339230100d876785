//! OTLP records to rows: walks a request, offers every span, span event and log record to
//! the mappings that select its kind, and writes the selected ones as rows of binary COPY
//! data (see `copy::Rows`).
//! A record that cannot be converted becomes a rejected row (table, reason, record as JSON)
//! instead of stopping the others.

use std::collections::BTreeMap;

use serde_json::Value;

use super::config::{LlmPrice, TimescaleSinkConfig};
use super::copy::{RowWriter, Rows};
use super::mapping::{self, ColumnType, Mapping, RecordKind};
use super::view::{self, Value as AnyKind, ViewError};
use crate::Signal;
use json::{any_to_json, AnyJson, AttributesJson};
use record::{find, Raw, RecordContext};

mod json;
mod record;

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
                (Raw::Bytes(b), T::Text) => row.text(&hex::encode(b)),
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
                let record = RecordContext {
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
                    let record = RecordContext {
                        kind: RecordKind::SpanEvent,
                        event: Some(event),
                        attributes: span.event_attributes(event),
                        ..record
                    };
                    self.offer(&record, out);
                }
            }),
            Signal::Logs => view::log_records(body, |scope, log| {
                let record = RecordContext {
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

    fn offer(&self, record: &RecordContext<'_>, out: &mut RowBatch) {
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
    fn row(
        &self,
        mapping: &Mapping,
        record: &RecordContext<'_>,
        rows: &mut Rows,
    ) -> Result<(), String> {
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

fn selects(mapping: &Mapping, record: &RecordContext<'_>) -> bool {
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
