//! The OTLP messages as OTLP/JSON sees them: each field's JSON name, tag, type and presence.

use crate::signal::schema::{self, Id, Msg};

/// How a field is written in JSON and encoded in protobuf.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Ty {
    Bool,
    /// `int32` and enums: a varint of the sign-extended value.
    Int32,
    Sint32,
    Uint32,
    Int64,
    Uint64,
    Fixed32,
    Fixed64,
    Sfixed64,
    Double,
    Str,
    /// base64 in JSON.
    Bytes,
    /// hex in JSON.
    Id(Id),
    Message(Msg),
}

/// Whether a field is written when it holds its type's default value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    /// A proto3 field without presence: the default value is not written.
    Implicit,
    /// A proto3 `optional` field: written whenever it is given.
    Explicit,
    /// A member of the message's oneof (each OTLP message has at most one): written
    /// whenever it is given, and at most one member may be.
    Oneof,
}

/// One field of the table.
#[derive(Debug, Clone, Copy)]
pub(super) struct Field {
    pub json: &'static str,
    pub tag: u32,
    pub ty: Ty,
    pub repeated: bool,
    pub presence: Presence,
}

const fn one(json: &'static str, tag: u32, ty: Ty) -> Field {
    Field {
        json,
        tag,
        ty,
        repeated: false,
        presence: Presence::Implicit,
    }
}

const fn many(json: &'static str, tag: u32, ty: Ty) -> Field {
    Field {
        repeated: true,
        ..one(json, tag, ty)
    }
}

const fn optional(json: &'static str, tag: u32, ty: Ty) -> Field {
    Field {
        presence: Presence::Explicit,
        ..one(json, tag, ty)
    }
}

const fn oneof(json: &'static str, tag: u32, ty: Ty) -> Field {
    Field {
        presence: Presence::Oneof,
        ..one(json, tag, ty)
    }
}

/// The fields of `msg`, from opentelemetry-proto's generated types (OTLP 1.7), as
/// [`schema`]'s table lists them (`tests` checks that the two agree).
pub(super) fn fields(msg: Msg) -> &'static [Field] {
    use Msg as M;
    use Ty::*;
    const ATTRIBUTES: Ty = Message(M::KeyValue);
    match msg {
        M::ExportTraces => const { &[many("resourceSpans", 1, Message(M::ResourceSpans))] },
        M::ResourceSpans => {
            const {
                &[
                    one("resource", 1, Message(M::Resource)),
                    many("scopeSpans", 2, Message(M::ScopeSpans)),
                    one("schemaUrl", 3, Str),
                ]
            }
        }
        M::ScopeSpans => {
            const {
                &[
                    one("scope", 1, Message(M::InstrumentationScope)),
                    many("spans", 2, Message(M::Span)),
                    one("schemaUrl", 3, Str),
                ]
            }
        }
        M::Span => {
            const {
                &[
                    one("traceId", 1, Id(schema::TRACE_ID)),
                    one("spanId", 2, Id(schema::SPAN_ID)),
                    one("traceState", 3, Str),
                    one("parentSpanId", 4, Id(schema::OPTIONAL_SPAN_ID)),
                    one("name", 5, Str),
                    one("kind", 6, Int32),
                    one("startTimeUnixNano", 7, Fixed64),
                    one("endTimeUnixNano", 8, Fixed64),
                    many("attributes", 9, ATTRIBUTES),
                    one("droppedAttributesCount", 10, Uint32),
                    many("events", 11, Message(M::Event)),
                    one("droppedEventsCount", 12, Uint32),
                    many("links", 13, Message(M::Link)),
                    one("droppedLinksCount", 14, Uint32),
                    one("status", 15, Message(M::Status)),
                    one("flags", 16, Fixed32),
                ]
            }
        }
        M::Event => {
            const {
                &[
                    one("timeUnixNano", 1, Fixed64),
                    one("name", 2, Str),
                    many("attributes", 3, ATTRIBUTES),
                    one("droppedAttributesCount", 4, Uint32),
                ]
            }
        }
        M::Link => {
            const {
                &[
                    one("traceId", 1, Id(schema::OPTIONAL_TRACE_ID)),
                    one("spanId", 2, Id(schema::OPTIONAL_SPAN_ID)),
                    one("traceState", 3, Str),
                    many("attributes", 4, ATTRIBUTES),
                    one("droppedAttributesCount", 5, Uint32),
                    one("flags", 6, Fixed32),
                ]
            }
        }
        M::Status => const { &[one("message", 2, Str), one("code", 3, Int32)] },

        M::ExportLogs => const { &[many("resourceLogs", 1, Message(M::ResourceLogs))] },
        M::ResourceLogs => {
            const {
                &[
                    one("resource", 1, Message(M::Resource)),
                    many("scopeLogs", 2, Message(M::ScopeLogs)),
                    one("schemaUrl", 3, Str),
                ]
            }
        }
        M::ScopeLogs => {
            const {
                &[
                    one("scope", 1, Message(M::InstrumentationScope)),
                    many("logRecords", 2, Message(M::LogRecord)),
                    one("schemaUrl", 3, Str),
                ]
            }
        }
        M::LogRecord => {
            const {
                &[
                    one("timeUnixNano", 1, Fixed64),
                    one("severityNumber", 2, Int32),
                    one("severityText", 3, Str),
                    one("body", 5, Message(M::AnyValue)),
                    many("attributes", 6, ATTRIBUTES),
                    one("droppedAttributesCount", 7, Uint32),
                    one("flags", 8, Fixed32),
                    one("traceId", 9, Id(schema::OPTIONAL_TRACE_ID)),
                    one("spanId", 10, Id(schema::OPTIONAL_SPAN_ID)),
                    one("observedTimeUnixNano", 11, Fixed64),
                    one("eventName", 12, Str),
                ]
            }
        }

        M::ExportMetrics => const { &[many("resourceMetrics", 1, Message(M::ResourceMetrics))] },
        M::ResourceMetrics => {
            const {
                &[
                    one("resource", 1, Message(M::Resource)),
                    many("scopeMetrics", 2, Message(M::ScopeMetrics)),
                    one("schemaUrl", 3, Str),
                ]
            }
        }
        M::ScopeMetrics => {
            const {
                &[
                    one("scope", 1, Message(M::InstrumentationScope)),
                    many("metrics", 2, Message(M::Metric)),
                    one("schemaUrl", 3, Str),
                ]
            }
        }
        M::Metric => {
            const {
                &[
                    one("name", 1, Str),
                    one("description", 2, Str),
                    one("unit", 3, Str),
                    oneof("gauge", 5, Message(M::Gauge)),
                    oneof("sum", 7, Message(M::Sum)),
                    oneof("histogram", 9, Message(M::Histogram)),
                    oneof("exponentialHistogram", 10, Message(M::ExponentialHistogram)),
                    oneof("summary", 11, Message(M::Summary)),
                    many("metadata", 12, ATTRIBUTES),
                ]
            }
        }
        M::Gauge => const { &[many("dataPoints", 1, Message(M::NumberDataPoint))] },
        M::Sum => {
            const {
                &[
                    many("dataPoints", 1, Message(M::NumberDataPoint)),
                    one("aggregationTemporality", 2, Int32),
                    one("isMonotonic", 3, Bool),
                ]
            }
        }
        M::Histogram => {
            const {
                &[
                    many("dataPoints", 1, Message(M::HistogramDataPoint)),
                    one("aggregationTemporality", 2, Int32),
                ]
            }
        }
        M::ExponentialHistogram => {
            const {
                &[
                    many("dataPoints", 1, Message(M::ExponentialHistogramDataPoint)),
                    one("aggregationTemporality", 2, Int32),
                ]
            }
        }
        M::Summary => const { &[many("dataPoints", 1, Message(M::SummaryDataPoint))] },
        M::NumberDataPoint => {
            const {
                &[
                    one("startTimeUnixNano", 2, Fixed64),
                    one("timeUnixNano", 3, Fixed64),
                    oneof("asDouble", 4, Double),
                    many("exemplars", 5, Message(M::Exemplar)),
                    oneof("asInt", 6, Sfixed64),
                    many("attributes", 7, ATTRIBUTES),
                    one("flags", 8, Uint32),
                ]
            }
        }
        M::HistogramDataPoint => {
            const {
                &[
                    one("startTimeUnixNano", 2, Fixed64),
                    one("timeUnixNano", 3, Fixed64),
                    one("count", 4, Fixed64),
                    optional("sum", 5, Double),
                    many("bucketCounts", 6, Fixed64),
                    many("explicitBounds", 7, Double),
                    many("exemplars", 8, Message(M::Exemplar)),
                    many("attributes", 9, ATTRIBUTES),
                    one("flags", 10, Uint32),
                    optional("min", 11, Double),
                    optional("max", 12, Double),
                ]
            }
        }
        M::ExponentialHistogramDataPoint => {
            const {
                &[
                    many("attributes", 1, ATTRIBUTES),
                    one("startTimeUnixNano", 2, Fixed64),
                    one("timeUnixNano", 3, Fixed64),
                    one("count", 4, Fixed64),
                    optional("sum", 5, Double),
                    one("scale", 6, Sint32),
                    one("zeroCount", 7, Fixed64),
                    one("positive", 8, Message(M::Buckets)),
                    one("negative", 9, Message(M::Buckets)),
                    one("flags", 10, Uint32),
                    many("exemplars", 11, Message(M::Exemplar)),
                    optional("min", 12, Double),
                    optional("max", 13, Double),
                    one("zeroThreshold", 14, Double),
                ]
            }
        }
        M::Buckets => const { &[one("offset", 1, Sint32), many("bucketCounts", 2, Uint64)] },
        M::SummaryDataPoint => {
            const {
                &[
                    one("startTimeUnixNano", 2, Fixed64),
                    one("timeUnixNano", 3, Fixed64),
                    one("count", 4, Fixed64),
                    one("sum", 5, Double),
                    many("quantileValues", 6, Message(M::ValueAtQuantile)),
                    many("attributes", 7, ATTRIBUTES),
                    one("flags", 8, Uint32),
                ]
            }
        }
        M::ValueAtQuantile => const { &[one("quantile", 1, Double), one("value", 2, Double)] },
        M::Exemplar => {
            const {
                &[
                    one("timeUnixNano", 2, Fixed64),
                    oneof("asDouble", 3, Double),
                    one("spanId", 4, Id(schema::OPTIONAL_SPAN_ID)),
                    one("traceId", 5, Id(schema::OPTIONAL_TRACE_ID)),
                    oneof("asInt", 6, Sfixed64),
                    many("filteredAttributes", 7, ATTRIBUTES),
                ]
            }
        }

        M::Resource => {
            const {
                &[
                    many("attributes", 1, ATTRIBUTES),
                    one("droppedAttributesCount", 2, Uint32),
                    many("entityRefs", 3, Message(M::EntityRef)),
                ]
            }
        }
        M::EntityRef => {
            const {
                &[
                    one("schemaUrl", 1, Str),
                    one("type", 2, Str),
                    many("idKeys", 3, Str),
                    many("descriptionKeys", 4, Str),
                ]
            }
        }
        M::InstrumentationScope => {
            const {
                &[
                    one("name", 1, Str),
                    one("version", 2, Str),
                    many("attributes", 3, ATTRIBUTES),
                    one("droppedAttributesCount", 4, Uint32),
                ]
            }
        }
        M::KeyValue => const { &[one("key", 1, Str), one("value", 2, Message(M::AnyValue))] },
        M::AnyValue => {
            const {
                &[
                    oneof("stringValue", 1, Str),
                    oneof("boolValue", 2, Bool),
                    oneof("intValue", 3, Int64),
                    oneof("doubleValue", 4, Double),
                    oneof("arrayValue", 5, Message(M::ArrayValue)),
                    oneof("kvlistValue", 6, Message(M::KeyValueList)),
                    oneof("bytesValue", 7, Bytes),
                ]
            }
        }
        M::ArrayValue => const { &[many("values", 1, Message(M::AnyValue))] },
        M::KeyValueList => const { &[many("values", 1, ATTRIBUTES)] },
    }
}
