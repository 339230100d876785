//! The OTLP messages as far as the gateway reads them: every field of the three
//! `Export*ServiceRequest`s by number, with its name and what it holds ([`field`]), and the
//! lengths OTLP gives trace and span ids ([`Id`]). Validation (`wire`) walks requests
//! against this table; the OTLP/JSON conversion (`json`) refuses ids by the same rules.

/// What OTLP asks of a trace or span id field: its length, and whether it may be empty
/// (absent). A downstream that decodes ids into fixed-size arrays (the OpenTelemetry
/// Collector does) refuses a whole request for one id of another length, so such requests are
/// refused here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Id {
    pub len: u8,
    /// Whether it must be present: a span's own ids must; parent span ids and the ids of
    /// links, log records and exemplars may be empty.
    pub required: bool,
}

/// A span's own trace id.
pub const TRACE_ID: Id = Id {
    len: 16,
    required: true,
};
/// A span's own span id.
pub const SPAN_ID: Id = Id {
    len: 8,
    required: true,
};
/// The trace id of a link, log record or exemplar.
pub const OPTIONAL_TRACE_ID: Id = Id {
    len: 16,
    required: false,
};
/// A parent span id, or the span id of a link, log record or exemplar.
pub const OPTIONAL_SPAN_ID: Id = Id {
    len: 8,
    required: false,
};

impl Id {
    /// Whether an id of `len` bytes is acceptable.
    #[inline]
    pub fn accepts(self, len: usize) -> bool {
        len == usize::from(self.len) || (len == 0 && !self.required)
    }

    /// Why an id of `len` bytes (0: absent) is not acceptable.
    #[cold]
    #[inline(never)]
    pub fn refusal(self, len: usize) -> String {
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
pub enum Kind {
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
#[inline]
pub fn field(msg: Msg, tag: u32) -> Option<(&'static str, Kind)> {
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

impl Msg {
    /// The protobuf name of a top-level request, which starts the path of an error in it
    /// (empty for the other messages, which errors name by their field).
    pub fn request_name(self) -> &'static str {
        match self {
            Msg::ExportTraces => "ExportTraceServiceRequest",
            Msg::ExportLogs => "ExportLogsServiceRequest",
            Msg::ExportMetrics => "ExportMetricsServiceRequest",
            _ => "",
        }
    }
}
