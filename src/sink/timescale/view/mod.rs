//! Borrowed views of the OTLP records the sink turns into rows, decoded straight from the
//! request bytes: strings and ids point into the body instead of being copied, and only
//! the fields rows can read are kept. Decoding a request with `prost` allocated every string
//! and list and freed them again, most of the sink's extraction time.
//!
//! Fields are read with the cursor validation uses (`signal::proto::ProtoReader`), by the
//! same rules. The body was validated by the receiver (`Signal::count_protobuf`), so
//! malformed input is not expected here; it is still refused with an error, never read past
//! its end. Repeated
//! fields, singular fields and oneofs follow protobuf's (and `prost`'s) merge rules: the
//! last scalar wins, a repeated message field appends, a message field seen twice merges, a
//! oneof takes the last variant, merging into it when it is the same message variant.
//! `tests` compares the views with `prost`'s decoding of damaged but decodable requests.

use crate::signal::proto::{usual_key_value, utf8, ProtoError, ProtoReader, ScalarValue};

#[cfg(test)]
mod tests;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed OTLP protobuf: {0}")]
pub struct ViewError(#[from] ProtoError);

type Result<T> = std::result::Result<T, ProtoError>;

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

fn merge_key_value<'a>(kv: &mut KeyValue<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = ProtoReader::new(buf);
    while let Some(field) = fields.next_field() {
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
        let value = match value {
            ScalarValue::Str(s) => Value::StringValue(utf8(s)?),
            ScalarValue::Bool(b) => Value::BoolValue(b),
            ScalarValue::Int(i) => Value::IntValue(i),
            ScalarValue::Double(d) => Value::DoubleValue(d),
        };
        return Ok(KeyValue {
            key: utf8(key)?,
            value: Some(AnyValue { value: Some(value) }),
        });
    }
    let mut kv = KeyValue::default();
    merge_key_value(&mut kv, buf)?;
    Ok(kv)
}

fn merge_any<'a>(any: &mut AnyValue<'a>, buf: &'a [u8]) -> Result<()> {
    let mut fields = ProtoReader::new(buf);
    while let Some(field) = fields.next_field() {
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
                let mut array = ProtoReader::new(f.bytes()?);
                while let Some(field) = array.next_field() {
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
                let mut list = ProtoReader::new(f.bytes()?);
                while let Some(field) = list.next_field() {
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
    let mut fields = ProtoReader::new(buf);
    while let Some(field) = fields.next_field() {
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
    let mut fields = ProtoReader::new(buf);
    while let Some(field) = fields.next_field() {
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
    let mut fields = ProtoReader::new(buf);
    while let Some(field) = fields.next_field() {
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
    let mut fields = ProtoReader::new(buf);
    while let Some(field) = fields.next_field() {
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
    let mut request = ProtoReader::new(body);
    while let Some(field) = request.next_field() {
        let (1, f) = field? else { continue };
        let group = f.bytes()?;
        // The resource may follow its scopes on the wire; it applies to all of them.
        let mut scope = Scope::default();
        let mut fields = ProtoReader::new(group);
        while let Some(field) = fields.next_field() {
            if let (1, f) = field? {
                let mut resource = ProtoReader::new(f.bytes()?);
                while let Some(field) = resource.next_field() {
                    if let (1, f) = field? {
                        scope.resource.push(key_value(f.bytes()?)?);
                    }
                }
            }
        }
        let mut fields = ProtoReader::new(group);
        while let Some(field) = fields.next_field() {
            let (2, f) = field? else { continue };
            let scoped = f.bytes()?;
            scope.name = "";
            let mut inner = ProtoReader::new(scoped);
            while let Some(field) = inner.next_field() {
                if let (1, f) = field? {
                    let mut scope_fields = ProtoReader::new(f.bytes()?);
                    while let Some(field) = scope_fields.next_field() {
                        if let (1, f) = field? {
                            scope.name = f.str()?;
                        }
                    }
                }
            }
            let mut inner = ProtoReader::new(scoped);
            while let Some(field) = inner.next_field() {
                if let (2, f) = field? {
                    record(&scope, f.bytes()?)?;
                }
            }
        }
    }
    Ok(())
}

/// Calls `each` with every span of an `ExportTraceServiceRequest`.
pub fn spans<'a>(
    body: &'a [u8],
    mut each: impl FnMut(&Scope<'a>, &Span<'a>),
) -> std::result::Result<(), ViewError> {
    let mut view = Span::default();
    walk(body, |scope, bytes| {
        span(&mut view, bytes)?;
        each(scope, &view);
        Ok(())
    })?;
    Ok(())
}

/// Calls `each` with every log record of an `ExportLogsServiceRequest`.
pub fn log_records<'a>(
    body: &'a [u8],
    mut each: impl FnMut(&Scope<'a>, &LogRecord<'a>),
) -> std::result::Result<(), ViewError> {
    let mut view = LogRecord::default();
    walk(body, |scope, bytes| {
        log_record(&mut view, bytes)?;
        each(scope, &view);
        Ok(())
    })?;
    Ok(())
}
