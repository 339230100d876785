//! Borrowed views of the OTLP records the sink turns into rows, decoded straight from the
//! request bytes: strings and ids point into the body instead of being copied, and only
//! the fields rows can read are kept. Decoding a request with `prost` allocated every string
//! and list and freed them again, most of the sink's extraction time.
//!
//! The body was validated by the receiver (`Signal::count_protobuf`), so malformed input is
//! not expected here; it is still refused with an error, never read past its end. Repeated
//! fields, singular fields and oneofs follow protobuf's (and `prost`'s) merge rules: the
//! last scalar wins, a repeated message field appends, a message field seen twice merges, a
//! oneof takes the last variant, merging into it when it is the same message variant.
//! `tests` compares the views with `prost`'s decoding of damaged but decodable requests.

use crate::signal::wire::{
    read_varint, usual_key_value, Scalar, END_GROUP, FIXED32, FIXED64, LEN, START_GROUP, VARINT,
};

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed OTLP protobuf: {0}")]
pub struct ViewError(&'static str);

type Result<T> = std::result::Result<T, ViewError>;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyValue<'a> {
    pub key: &'a str,
    pub value: Option<AnyValue<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnyValue<'a> {
    pub value: Option<Value<'a>>,
}

/// `AnyValue`'s oneof; variants named as in OTLP and `prost`.
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    StringValue(&'a str),
    BoolValue(bool),
    IntValue(i64),
    DoubleValue(f64),
    ArrayValue(Vec<AnyValue<'a>>),
    KvlistValue(Vec<KeyValue<'a>>),
    BytesValue(&'a [u8]),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status<'a> {
    pub message: &'a str,
    pub code: i32,
}

/// A span event. Its attributes live in its span (`Span::event_attributes`), so the events
/// of one span share one list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Event<'a> {
    pub time_unix_nano: u64,
    pub name: &'a str,
    attributes: std::ops::Range<usize>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Span<'a> {
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub parent_span_id: &'a [u8],
    pub name: &'a str,
    pub kind: i32,
    pub start_time_unix_nano: u64,
    pub end_time_unix_nano: u64,
    pub attributes: Vec<KeyValue<'a>>,
    pub events: Vec<Event<'a>>,
    pub status: Option<Status<'a>>,
    /// The attributes of all `events`, each event's a range of them.
    event_attributes: Vec<KeyValue<'a>>,
}

impl<'a> Span<'a> {
    /// The attributes of `event`, one of this span's `events`.
    pub fn event_attributes(&self, event: &Event<'a>) -> &[KeyValue<'a>] {
        &self.event_attributes[event.attributes.clone()]
    }

    /// Empties the span for the next one, keeping the lists' memory: spans are read one
    /// after another into the same `Span`, so a request allocates its lists once, not per
    /// span and event.
    fn clear(&mut self) {
        let mut attributes = std::mem::take(&mut self.attributes);
        let mut events = std::mem::take(&mut self.events);
        let mut event_attributes = std::mem::take(&mut self.event_attributes);
        attributes.clear();
        events.clear();
        event_attributes.clear();
        *self = Span {
            attributes,
            events,
            event_attributes,
            ..Span::default()
        };
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LogRecord<'a> {
    pub time_unix_nano: u64,
    pub observed_time_unix_nano: u64,
    pub severity_number: i32,
    pub severity_text: &'a str,
    pub body: Option<AnyValue<'a>>,
    pub attributes: Vec<KeyValue<'a>>,
    pub trace_id: &'a [u8],
    pub span_id: &'a [u8],
    pub event_name: &'a str,
}

impl LogRecord<'_> {
    /// Empties the record for the next one, keeping the attribute list's memory.
    fn clear(&mut self) {
        let mut attributes = std::mem::take(&mut self.attributes);
        attributes.clear();
        *self = LogRecord {
            attributes,
            ..LogRecord::default()
        };
    }
}

/// Resource attributes and scope name of a group of records.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scope<'a> {
    pub resource: Vec<KeyValue<'a>>,
    pub name: &'a str,
}

/// A cursor over one message's bytes.
struct Fields<'a> {
    buf: &'a [u8],
}

impl<'a> Fields<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Fields { buf }
    }

    fn varint(&mut self) -> Result<u64> {
        read_varint(&mut self.buf).ok_or(ViewError("invalid varint"))
    }

    fn take(&mut self, len: u64) -> Result<&'a [u8]> {
        if len > self.buf.len() as u64 {
            return Err(ViewError("length past the end of the message"));
        }
        let (head, tail) = self.buf.split_at(len as usize);
        self.buf = tail;
        Ok(head)
    }

    /// The next field: (number, value).
    fn next(&mut self) -> Option<Result<(u32, Field<'a>)>> {
        if self.buf.is_empty() {
            return None;
        }
        Some(self.field())
    }

    fn field(&mut self) -> Result<(u32, Field<'a>)> {
        let key = self.varint()?;
        let tag = (key >> 3) as u32;
        let field = match (key & 7) as u8 {
            VARINT => Field::Varint(self.varint()?),
            FIXED64 => Field::Fixed64(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            )),
            LEN => {
                let len = self.varint()?;
                Field::Len(self.take(len)?)
            }
            FIXED32 => {
                self.take(4)?;
                Field::Fixed32
            }
            START_GROUP => {
                self.skip_group(tag)?;
                Field::Group
            }
            _ => return Err(ViewError("invalid wire type")),
        };
        Ok((tag, field))
    }

    /// Skips a (deprecated) group up to its end tag; only unknown fields can be groups.
    fn skip_group(&mut self, tag: u32) -> Result<()> {
        loop {
            let key = self.varint()?;
            let inner = (key >> 3) as u32;
            match (key & 7) as u8 {
                VARINT => drop(self.varint()?),
                FIXED64 => drop(self.take(8)?),
                LEN => {
                    let len = self.varint()?;
                    self.take(len)?;
                }
                START_GROUP => self.skip_group(inner)?,
                END_GROUP if inner == tag => return Ok(()),
                FIXED32 => drop(self.take(4)?),
                _ => return Err(ViewError("unmatched group end")),
            }
        }
    }
}

/// One field's value, by wire type.
enum Field<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    Len(&'a [u8]),
    Group,
}

impl<'a> Field<'a> {
    fn varint(self) -> Result<u64> {
        match self {
            Field::Varint(v) => Ok(v),
            _ => Err(ViewError("expected a varint")),
        }
    }

    fn fixed64(self) -> Result<u64> {
        match self {
            Field::Fixed64(v) => Ok(v),
            _ => Err(ViewError("expected a fixed64")),
        }
    }

    fn bytes(self) -> Result<&'a [u8]> {
        match self {
            Field::Len(b) => Ok(b),
            _ => Err(ViewError("expected a length-delimited field")),
        }
    }

    fn str(self) -> Result<&'a str> {
        std::str::from_utf8(self.bytes()?).map_err(|_| ViewError("string is not UTF-8"))
    }
}

fn merge_key_value<'a>(kv: &mut KeyValue<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some(field) = fields.next() {
        match field? {
            (1, f) => kv.key = f.str()?,
            (2, f) => merge_any(kv.value.get_or_insert_with(Default::default), f.bytes()?)?,
            _ => {}
        }
    }
    Ok(())
}

fn key_value(buf: &[u8]) -> Result<KeyValue<'_>> {
    // Attributes are most of the decoding a span costs: read the usual layout directly,
    // anything else by the general rules.
    if let Some((key, value)) = usual_key_value(buf) {
        let text = |bytes| std::str::from_utf8(bytes).map_err(|_| ViewError("string is not UTF-8"));
        let value = match value {
            Scalar::Str(s) => Value::StringValue(text(s)?),
            Scalar::Bool(b) => Value::BoolValue(b),
            Scalar::Int(i) => Value::IntValue(i),
            Scalar::Double(d) => Value::DoubleValue(d),
        };
        return Ok(KeyValue {
            key: text(key)?,
            value: Some(AnyValue { value: Some(value) }),
        });
    }
    let mut kv = KeyValue::default();
    merge_key_value(&mut kv, buf)?;
    Ok(kv)
}

fn merge_any<'a>(any: &mut AnyValue<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some(field) = fields.next() {
        let (tag, f) = field?;
        any.value = Some(match (tag, any.value.take()) {
            (1, _) => Value::StringValue(f.str()?),
            (2, _) => Value::BoolValue(f.varint()? != 0),
            (3, _) => Value::IntValue(f.varint()? as i64),
            (4, _) => Value::DoubleValue(f64::from_bits(f.fixed64()?)),
            (5, previous) => {
                let mut values = match previous {
                    Some(Value::ArrayValue(values)) => values,
                    _ => Vec::new(),
                };
                let mut array = Fields::new(f.bytes()?);
                while let Some(field) = array.next() {
                    if let (1, f) = field? {
                        let mut value = AnyValue::default();
                        merge_any(&mut value, f.bytes()?)?;
                        values.push(value);
                    }
                }
                Value::ArrayValue(values)
            }
            (6, previous) => {
                let mut values = match previous {
                    Some(Value::KvlistValue(values)) => values,
                    _ => Vec::new(),
                };
                let mut list = Fields::new(f.bytes()?);
                while let Some(field) = list.next() {
                    if let (1, f) = field? {
                        values.push(key_value(f.bytes()?)?);
                    }
                }
                Value::KvlistValue(values)
            }
            (7, _) => Value::BytesValue(f.bytes()?),
            (_, previous) => {
                any.value = previous;
                continue;
            }
        });
    }
    Ok(())
}

/// Reads an event into `span`: the event into `events`, its attributes into
/// `event_attributes`.
fn event<'a>(span: &mut Span<'a>, buf: &'a [u8]) -> Result<()> {
    let start = span.event_attributes.len();
    let mut event = Event::default();
    let mut fields = Fields::new(buf);
    while let Some(field) = fields.next() {
        match field? {
            (1, f) => event.time_unix_nano = f.fixed64()?,
            (2, f) => event.name = f.str()?,
            (3, f) => span.event_attributes.push(key_value(f.bytes()?)?),
            _ => {}
        }
    }
    event.attributes = start..span.event_attributes.len();
    span.events.push(event);
    Ok(())
}

fn merge_status<'a>(status: &mut Status<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = Fields::new(buf);
    while let Some(field) = fields.next() {
        match field? {
            (2, f) => status.message = f.str()?,
            (3, f) => status.code = f.varint()? as i32,
            _ => {}
        }
    }
    Ok(())
}

/// Reads a span into `span`, which it empties first.
fn span<'a>(span: &mut Span<'a>, buf: &'a [u8]) -> Result<()> {
    span.clear();
    let mut fields = Fields::new(buf);
    while let Some(field) = fields.next() {
        match field? {
            (1, f) => span.trace_id = f.bytes()?,
            (2, f) => span.span_id = f.bytes()?,
            (4, f) => span.parent_span_id = f.bytes()?,
            (5, f) => span.name = f.str()?,
            (6, f) => span.kind = f.varint()? as i32,
            (7, f) => span.start_time_unix_nano = f.fixed64()?,
            (8, f) => span.end_time_unix_nano = f.fixed64()?,
            (9, f) => span.attributes.push(key_value(f.bytes()?)?),
            (11, f) => event(span, f.bytes()?)?,
            (15, f) => merge_status(span.status.get_or_insert_with(Default::default), f.bytes()?)?,
            _ => {}
        }
    }
    Ok(())
}

/// Reads a log record into `log`, which it empties first.
fn log_record<'a>(log: &mut LogRecord<'a>, buf: &'a [u8]) -> Result<()> {
    log.clear();
    let mut fields = Fields::new(buf);
    while let Some(field) = fields.next() {
        match field? {
            (1, f) => log.time_unix_nano = f.fixed64()?,
            (2, f) => log.severity_number = f.varint()? as i32,
            (3, f) => log.severity_text = f.str()?,
            (5, f) => merge_any(log.body.get_or_insert_with(Default::default), f.bytes()?)?,
            (6, f) => log.attributes.push(key_value(f.bytes()?)?),
            (9, f) => log.trace_id = f.bytes()?,
            (10, f) => log.span_id = f.bytes()?,
            (11, f) => log.observed_time_unix_nano = f.fixed64()?,
            (12, f) => log.event_name = f.str()?,
            _ => {}
        }
    }
    Ok(())
}

/// Walks `Export{Trace,Logs}ServiceRequest` bytes: resource (field 1 of each resource
/// group) and scope (field 1 of each scope group), and calls `record` with every record
/// (field 2 of a scope group) in order.
fn walk<'a>(
    body: &'a [u8],
    mut record: impl FnMut(&Scope<'a>, &'a [u8]) -> Result<()>,
) -> Result<()> {
    let mut request = Fields::new(body);
    while let Some(field) = request.next() {
        let (1, f) = field? else { continue };
        let group = f.bytes()?;
        // The resource may follow its scopes on the wire; it applies to all of them.
        let mut scope = Scope::default();
        let mut fields = Fields::new(group);
        while let Some(field) = fields.next() {
            if let (1, f) = field? {
                let mut resource = Fields::new(f.bytes()?);
                while let Some(field) = resource.next() {
                    if let (1, f) = field? {
                        scope.resource.push(key_value(f.bytes()?)?);
                    }
                }
            }
        }
        let mut fields = Fields::new(group);
        while let Some(field) = fields.next() {
            let (2, f) = field? else { continue };
            let scoped = f.bytes()?;
            scope.name = "";
            let mut inner = Fields::new(scoped);
            while let Some(field) = inner.next() {
                if let (1, f) = field? {
                    let mut scope_fields = Fields::new(f.bytes()?);
                    while let Some(field) = scope_fields.next() {
                        if let (1, f) = field? {
                            scope.name = f.str()?;
                        }
                    }
                }
            }
            let mut inner = Fields::new(scoped);
            while let Some(field) = inner.next() {
                if let (2, f) = field? {
                    record(&scope, f.bytes()?)?;
                }
            }
        }
    }
    Ok(())
}

/// Calls `each` with every span of an `ExportTraceServiceRequest`.
pub fn spans<'a>(body: &'a [u8], mut each: impl FnMut(&Scope<'a>, &Span<'a>)) -> Result<()> {
    let mut view = Span::default();
    walk(body, |scope, bytes| {
        span(&mut view, bytes)?;
        each(scope, &view);
        Ok(())
    })
}

/// Calls `each` with every log record of an `ExportLogsServiceRequest`.
pub fn log_records<'a>(
    body: &'a [u8],
    mut each: impl FnMut(&Scope<'a>, &LogRecord<'a>),
) -> Result<()> {
    let mut view = LogRecord::default();
    walk(body, |scope, bytes| {
        log_record(&mut view, bytes)?;
        each(scope, &view);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1 as pb;
    use opentelemetry_proto::tonic::logs::v1 as pb_logs;
    use opentelemetry_proto::tonic::trace::v1 as pb_trace;
    use otelgate_cli::demo::generator::TelemetryGenerator;
    use prost::Message;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::Signal;

    fn kv(pair: &KeyValue<'_>) -> pb::KeyValue {
        pb::KeyValue {
            key: pair.key.into(),
            value: pair.value.as_ref().map(any),
        }
    }

    fn any(value: &AnyValue<'_>) -> pb::AnyValue {
        use pb::any_value::Value as P;
        pb::AnyValue {
            value: value.value.as_ref().map(|v| match v {
                Value::StringValue(s) => P::StringValue((*s).into()),
                Value::BoolValue(b) => P::BoolValue(*b),
                Value::IntValue(i) => P::IntValue(*i),
                Value::DoubleValue(d) => P::DoubleValue(*d),
                Value::BytesValue(b) => P::BytesValue(b.to_vec()),
                Value::ArrayValue(a) => P::ArrayValue(pb::ArrayValue {
                    values: a.iter().map(any).collect(),
                }),
                Value::KvlistValue(l) => P::KvlistValue(pb::KeyValueList {
                    values: l.iter().map(kv).collect(),
                }),
            }),
        }
    }

    /// (resource attributes, scope name, record) as Debug text: NaN equals NaN there.
    type Seen = Vec<String>;

    fn spans_by_view(body: &[u8]) -> Result<Seen> {
        let mut seen = Vec::new();
        spans(body, |scope, s| {
            let span = pb_trace::Span {
                trace_id: s.trace_id.to_vec(),
                span_id: s.span_id.to_vec(),
                parent_span_id: s.parent_span_id.to_vec(),
                name: s.name.into(),
                kind: s.kind,
                start_time_unix_nano: s.start_time_unix_nano,
                end_time_unix_nano: s.end_time_unix_nano,
                attributes: s.attributes.iter().map(kv).collect(),
                events: s
                    .events
                    .iter()
                    .map(|e| pb_trace::span::Event {
                        time_unix_nano: e.time_unix_nano,
                        name: e.name.into(),
                        attributes: s.event_attributes(e).iter().map(kv).collect(),
                        dropped_attributes_count: 0,
                    })
                    .collect(),
                status: s.status.as_ref().map(|st| pb_trace::Status {
                    message: st.message.into(),
                    code: st.code,
                }),
                ..Default::default()
            };
            let resource: Vec<_> = scope.resource.iter().map(kv).collect();
            seen.push(format!("{resource:?} {:?} {span:?}", scope.name));
        })?;
        Ok(seen)
    }

    fn spans_by_prost(body: &[u8]) -> Seen {
        let request = ExportTraceServiceRequest::decode(body).expect("decodable");
        let mut seen = Vec::new();
        for rs in request.resource_spans {
            let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
            for ss in rs.scope_spans {
                let scope = ss.scope.map(|s| s.name).unwrap_or_default();
                for span in ss.spans {
                    let span = pb_trace::Span {
                        trace_state: String::new(),
                        flags: 0,
                        dropped_attributes_count: 0,
                        dropped_events_count: 0,
                        dropped_links_count: 0,
                        links: Vec::new(),
                        events: span
                            .events
                            .into_iter()
                            .map(|e| pb_trace::span::Event {
                                dropped_attributes_count: 0,
                                ..e
                            })
                            .collect(),
                        ..span
                    };
                    seen.push(format!("{resource:?} {scope:?} {span:?}"));
                }
            }
        }
        seen
    }

    fn logs_by_view(body: &[u8]) -> Result<Seen> {
        let mut seen = Vec::new();
        log_records(body, |scope, l| {
            let log = pb_logs::LogRecord {
                time_unix_nano: l.time_unix_nano,
                observed_time_unix_nano: l.observed_time_unix_nano,
                severity_number: l.severity_number,
                severity_text: l.severity_text.into(),
                body: l.body.as_ref().map(any),
                attributes: l.attributes.iter().map(kv).collect(),
                trace_id: l.trace_id.to_vec(),
                span_id: l.span_id.to_vec(),
                event_name: l.event_name.into(),
                ..Default::default()
            };
            let resource: Vec<_> = scope.resource.iter().map(kv).collect();
            seen.push(format!("{resource:?} {:?} {log:?}", scope.name));
        })?;
        Ok(seen)
    }

    fn logs_by_prost(body: &[u8]) -> Seen {
        let request = ExportLogsServiceRequest::decode(body).expect("decodable");
        let mut seen = Vec::new();
        for rl in request.resource_logs {
            let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
            for sl in rl.scope_logs {
                let scope = sl.scope.map(|s| s.name).unwrap_or_default();
                for log in sl.log_records {
                    let log = pb_logs::LogRecord {
                        flags: 0,
                        dropped_attributes_count: 0,
                        ..log
                    };
                    seen.push(format!("{resource:?} {scope:?} {log:?}"));
                }
            }
        }
        seen
    }

    /// Every request the receiver accepts, including damaged ones that still decode, reads
    /// the same through the views as through `prost`.
    #[test]
    fn views_read_what_prost_decodes() {
        let mut generator = TelemetryGenerator::new(11);
        let corpus = [
            (Signal::Traces, generator.traces(6).0.encode_to_vec()),
            (Signal::Logs, generator.logs(6).0.encode_to_vec()),
            (
                Signal::Traces,
                include_bytes!(
                    "../../../tests/fixtures/otlp-sdk-payloads/traces_frames_detections_genai.pb"
                )
                .to_vec(),
            ),
            (
                Signal::Logs,
                include_bytes!("../../../tests/fixtures/otlp-sdk-payloads/logs.pb").to_vec(),
            ),
        ];
        let mut rng = SmallRng::seed_from_u64(0x5eed_f1e5);
        let mut compared = 0;
        for (signal, body) in &corpus {
            // OTELGATE_WIRE_MUTATIONS raises the count for a longer search.
            let rounds = std::env::var("OTELGATE_WIRE_MUTATIONS")
                .ok()
                .and_then(|n| n.parse().ok())
                .unwrap_or(1500);
            for round in 0..rounds {
                let mut damaged = body.clone();
                if round > 0 {
                    for _ in 0..rng.random_range(1..3) {
                        let at = rng.random_range(0..damaged.len());
                        match rng.random_range(0..4) {
                            0 => damaged[at] ^= 1 << rng.random_range(0..8),
                            1 => damaged[at] = rng.random(),
                            2 => {
                                let end = (at + rng.random_range(1..48)).min(damaged.len());
                                let copy = damaged[at..end].to_vec();
                                damaged.splice(at..at, copy);
                            }
                            _ => damaged.truncate(at),
                        }
                        if damaged.is_empty() {
                            break;
                        }
                    }
                }
                if signal.count_protobuf(&damaged).is_err() {
                    continue;
                }
                compared += 1;
                match signal {
                    Signal::Traces => assert_eq!(
                        spans_by_view(&damaged).expect("accepted, so readable"),
                        spans_by_prost(&damaged)
                    ),
                    _ => assert_eq!(
                        logs_by_view(&damaged).expect("accepted, so readable"),
                        logs_by_prost(&damaged)
                    ),
                }
            }
        }
        assert!(
            compared > 1000,
            "only {compared} decodable requests compared"
        );
    }

    /// Attributes in the layout `key_value` reads directly, and near misses of it that must
    /// take the general path, read as `prost` decodes them.
    #[test]
    fn attributes_read_like_prost_in_and_out_of_the_usual_layout() {
        use crate::signal::wire::encoding::{key, len_field as len};
        let varint = |tag: u32, value: u64| {
            let mut out = key(tag, 0);
            prost::encoding::encode_varint(value, &mut out);
            out
        };
        let double = |value: f64| [key(4, 1), value.to_le_bytes().to_vec()].concat();
        let long = "x".repeat(200);
        let values: Vec<Vec<u8>> = vec![
            len(1, b"text"),
            len(1, b""),
            len(1, long.as_bytes()),
            varint(2, 1),
            varint(2, 300),
            varint(3, 42),
            varint(3, -5i64 as u64),
            double(0.25),
            [len(1, b"a"), varint(3, 7)].concat(),
            [varint(3, 7), len(1, b"a")].concat(),
            [len(1, b"a"), key(9, 5), vec![0; 4]].concat(),
            len(5, &len(1, &len(1, b"nested"))),
            len(7, &[0, 1, 2]),
            Vec::new(),
        ];
        let mut attributes = Vec::new();
        for value in &values {
            attributes.push(len(9, &[len(1, b"k"), len(2, value)].concat()));
            attributes.push(len(9, &[len(1, long.as_bytes()), len(2, value)].concat()));
            attributes.push(len(9, &[len(2, value), len(1, b"k")].concat()));
            attributes.push(len(
                9,
                &[len(1, b"k"), len(2, value), len(1, b"j")].concat(),
            ));
            attributes.push(len(
                9,
                &[len(1, b"k"), len(2, value), len(2, value)].concat(),
            ));
        }
        attributes.push(len(9, &len(1, b"only a key")));
        attributes.push(len(9, b""));
        // A span's ids, which validation requires.
        let ids = [len(1, &[1; 16]), len(2, &[2; 8])].concat();
        let body = len(1, &len(2, &len(2, &[ids, attributes.concat()].concat())));
        assert!(Signal::Traces.count_protobuf(&body).is_ok());
        assert_eq!(spans_by_view(&body).unwrap(), spans_by_prost(&body));
    }

    /// Merge rules: a message field seen twice merges, a oneof keeps the last variant and
    /// merges a repeated message variant, unknown fields (groups too) are skipped.
    #[test]
    fn follows_the_merge_rules() {
        use crate::signal::wire::encoding::{key, len_field as len};
        let attribute = |value: &[u8]| len(9, &[len(1, b"k"), len(2, value)].concat());
        let span = [
            len(1, &[1; 16]),
            len(2, &[2; 8]),
            len(5, b"first"),
            len(15, &[key(3, 0), vec![2]].concat()),
            len(15, &len(2, b"message")),
            // kvlist, then another kvlist (merged), then string, then array twice (merged).
            attribute(
                &[
                    len(6, &len(1, &len(1, b"a"))),
                    len(6, &len(1, &len(1, b"b"))),
                ]
                .concat(),
            ),
            attribute(&[len(6, &len(1, &len(1, b"a"))), len(1, b"s")].concat()),
            attribute(
                &[
                    len(5, &len(1, &len(1, b"x"))),
                    len(5, &len(1, &len(1, b"y"))),
                ]
                .concat(),
            ),
            [key(99, 3), key(1, 0), vec![1], key(99, 4)].concat(),
            len(5, b"last"),
        ]
        .concat();
        let body = len(
            1,
            &[len(2, &len(2, &span)), len(1, &len(1, &len(1, b"svc")))].concat(),
        );
        assert!(Signal::Traces.count_protobuf(&body).is_ok());
        assert_eq!(spans_by_view(&body).unwrap(), spans_by_prost(&body));
        let mut names = Vec::new();
        spans(&body, |scope, span| {
            names.push(span.name);
            assert_eq!(
                scope.resource.len(),
                1,
                "the resource after its scopes applies"
            );
            assert_eq!(
                span.status.as_ref().map(|s| (s.code, s.message)),
                Some((2, "message"))
            );
        })
        .unwrap();
        assert_eq!(names, ["last"]);
    }
}
