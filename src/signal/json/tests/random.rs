//! Random OTLP requests, with every field and kind of value in play and awkward values
//! favoured (extreme integers, -0.0, escapes, empty lists), and random damage to JSON.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    exemplar, exponential_histogram_data_point::Buckets, metric::Data, number_data_point,
    summary_data_point::ValueAtQuantile, Exemplar, ExponentialHistogram,
    ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::{json, Value as Json};

/// Builds random requests from one generator.
pub struct Requests<'r> {
    rng: &'r mut SmallRng,
}

impl<'r> Requests<'r> {
    pub fn new(rng: &'r mut SmallRng) -> Self {
        Requests { rng }
    }

    fn chance(&mut self) -> bool {
        self.rng.random()
    }

    fn count(&mut self, max: usize) -> usize {
        self.rng.random_range(0..=max)
    }

    fn list<T>(&mut self, max: usize, mut each: impl FnMut(&mut Self) -> T) -> Vec<T> {
        let n = self.count(max);
        (0..n).map(|_| each(self)).collect()
    }

    fn string(&mut self) -> String {
        match self.rng.random_range(0..6) {
            0 => String::new(),
            1 => "frame.process".into(),
            2 => "ünïcødé ✓ 🚀".into(),
            3 => "quote\" back\\slash\nnew line\ttab\u{1}".into(),
            _ => {
                let len = self.rng.random_range(1..12);
                (0..len)
                    .map(|_| char::from(self.rng.random_range(b'a'..=b'z')))
                    .collect()
            }
        }
    }

    fn u64(&mut self) -> u64 {
        match self.rng.random_range(0..6) {
            0 => 0,
            1 => u64::MAX,
            2 => (1 << 53) + 1,
            3 => 1_700_000_000_123_456_789,
            _ => self.rng.random(),
        }
    }

    fn i64(&mut self) -> i64 {
        match self.rng.random_range(0..5) {
            0 => 0,
            1 => i64::MIN,
            2 => i64::MAX,
            3 => -((1 << 53) + 1),
            _ => self.rng.random(),
        }
    }

    fn u32(&mut self) -> u32 {
        match self.rng.random_range(0..3) {
            0 => 0,
            1 => u32::MAX,
            _ => self.rng.random(),
        }
    }

    fn i32(&mut self) -> i32 {
        match self.rng.random_range(0..4) {
            0 => 0,
            1 => i32::MIN,
            2 => i32::MAX,
            _ => self.rng.random(),
        }
    }

    /// A finite double: NaN and the infinities have no JSON number to write them as.
    fn f64(&mut self) -> f64 {
        match self.rng.random_range(0..7) {
            0 => 0.0,
            1 => -0.0,
            2 => f64::MAX,
            3 => f64::MIN_POSITIVE,
            4 => 5e-324,
            _ => self.rng.random_range(-1e6..1e6),
        }
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.rng.random()).collect()
    }

    /// An id of `len` bytes, or empty when `optional` and chance says so.
    fn id(&mut self, len: usize, optional: bool) -> Vec<u8> {
        if optional && self.chance() {
            Vec::new()
        } else {
            self.bytes(len)
        }
    }

    fn any_value(&mut self, depth: usize) -> AnyValue {
        use any_value::Value;
        let kinds = if depth == 0 { 6 } else { 8 };
        let value = match self.rng.random_range(0..kinds) {
            0 => None,
            1 => Some(Value::StringValue(self.string())),
            2 => Some(Value::BoolValue(self.chance())),
            3 => Some(Value::IntValue(self.i64())),
            4 => Some(Value::DoubleValue(self.f64())),
            5 => {
                let len = self.count(5);
                Some(Value::BytesValue(self.bytes(len)))
            }
            6 => Some(Value::ArrayValue(ArrayValue {
                values: self.list(3, |r| r.any_value(depth - 1)),
            })),
            _ => Some(Value::KvlistValue(KeyValueList {
                values: self.attributes(depth - 1),
            })),
        };
        AnyValue { value }
    }

    fn attributes(&mut self, depth: usize) -> Vec<KeyValue> {
        self.list(4, |r| KeyValue {
            key: r.string(),
            value: if r.rng.random_range(0..8) == 0 {
                None
            } else {
                Some(r.any_value(depth))
            },
        })
    }

    fn resource(&mut self) -> Option<Resource> {
        self.chance().then(|| Resource {
            attributes: self.attributes(2),
            dropped_attributes_count: self.u32(),
            entity_refs: self.list(2, |r| EntityRef {
                schema_url: r.string(),
                r#type: r.string(),
                id_keys: r.list(2, Self::string),
                description_keys: r.list(2, Self::string),
            }),
        })
    }

    fn scope(&mut self) -> Option<InstrumentationScope> {
        self.chance().then(|| InstrumentationScope {
            name: self.string(),
            version: self.string(),
            attributes: self.attributes(1),
            dropped_attributes_count: self.u32(),
        })
    }

    pub fn traces(&mut self) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: self.list(2, |r| ResourceSpans {
                resource: r.resource(),
                scope_spans: r.list(2, |r| ScopeSpans {
                    scope: r.scope(),
                    spans: r.list(3, Self::span),
                    schema_url: r.string(),
                }),
                schema_url: r.string(),
            }),
        }
    }

    fn span(&mut self) -> Span {
        Span {
            trace_id: self.id(16, false),
            span_id: self.id(8, false),
            trace_state: self.string(),
            parent_span_id: self.id(8, true),
            flags: self.u32(),
            name: self.string(),
            kind: self.rng.random_range(0..6),
            start_time_unix_nano: self.u64(),
            end_time_unix_nano: self.u64(),
            attributes: self.attributes(2),
            dropped_attributes_count: self.u32(),
            events: self.list(2, |r| span::Event {
                time_unix_nano: r.u64(),
                name: r.string(),
                attributes: r.attributes(1),
                dropped_attributes_count: r.u32(),
            }),
            dropped_events_count: self.u32(),
            links: self.list(2, |r| span::Link {
                trace_id: r.id(16, true),
                span_id: r.id(8, true),
                trace_state: r.string(),
                attributes: r.attributes(1),
                dropped_attributes_count: r.u32(),
                flags: r.u32(),
            }),
            dropped_links_count: self.u32(),
            status: self.chance().then(|| Status {
                message: self.string(),
                code: self.rng.random_range(0..3),
            }),
        }
    }

    pub fn logs(&mut self) -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: self.list(2, |r| ResourceLogs {
                resource: r.resource(),
                scope_logs: r.list(2, |r| ScopeLogs {
                    scope: r.scope(),
                    log_records: r.list(3, Self::log_record),
                    schema_url: r.string(),
                }),
                schema_url: r.string(),
            }),
        }
    }

    fn log_record(&mut self) -> LogRecord {
        LogRecord {
            time_unix_nano: self.u64(),
            observed_time_unix_nano: self.u64(),
            severity_number: self.rng.random_range(0..25),
            severity_text: self.string(),
            body: self.chance().then(|| self.any_value(3)),
            attributes: self.attributes(2),
            dropped_attributes_count: self.u32(),
            flags: self.u32(),
            trace_id: self.id(16, true),
            span_id: self.id(8, true),
            event_name: self.string(),
        }
    }

    pub fn metrics(&mut self) -> ExportMetricsServiceRequest {
        ExportMetricsServiceRequest {
            resource_metrics: self.list(2, |r| ResourceMetrics {
                resource: r.resource(),
                scope_metrics: r.list(2, |r| ScopeMetrics {
                    scope: r.scope(),
                    metrics: r.list(4, Self::metric),
                    schema_url: r.string(),
                }),
                schema_url: r.string(),
            }),
        }
    }

    fn metric(&mut self) -> Metric {
        let data = match self.rng.random_range(0..6) {
            0 => None,
            1 => Some(Data::Gauge(Gauge {
                data_points: self.list(3, Self::number_point),
            })),
            2 => Some(Data::Sum(Sum {
                data_points: self.list(3, Self::number_point),
                aggregation_temporality: self.rng.random_range(0..3),
                is_monotonic: self.chance(),
            })),
            3 => Some(Data::Histogram(Histogram {
                data_points: self.list(3, Self::histogram_point),
                aggregation_temporality: self.rng.random_range(0..3),
            })),
            4 => Some(Data::ExponentialHistogram(ExponentialHistogram {
                data_points: self.list(3, Self::exponential_point),
                aggregation_temporality: self.rng.random_range(0..3),
            })),
            _ => Some(Data::Summary(Summary {
                data_points: self.list(3, Self::summary_point),
            })),
        };
        Metric {
            name: self.string(),
            description: self.string(),
            unit: self.string(),
            metadata: self.attributes(1),
            data,
        }
    }

    fn exemplars(&mut self) -> Vec<Exemplar> {
        self.list(2, |r| Exemplar {
            filtered_attributes: r.attributes(1),
            time_unix_nano: r.u64(),
            span_id: r.id(8, true),
            trace_id: r.id(16, true),
            value: match r.rng.random_range(0..3) {
                0 => None,
                1 => Some(exemplar::Value::AsDouble(r.f64())),
                _ => Some(exemplar::Value::AsInt(r.i64())),
            },
        })
    }

    fn number_point(&mut self) -> NumberDataPoint {
        NumberDataPoint {
            attributes: self.attributes(1),
            start_time_unix_nano: self.u64(),
            time_unix_nano: self.u64(),
            exemplars: self.exemplars(),
            flags: self.u32(),
            value: match self.rng.random_range(0..3) {
                0 => None,
                1 => Some(number_data_point::Value::AsDouble(self.f64())),
                _ => Some(number_data_point::Value::AsInt(self.i64())),
            },
        }
    }

    /// opentelemetry-proto writes an unset `sum`, `min` or `max` as `null`, which reads
    /// back as unset.
    fn histogram_point(&mut self) -> HistogramDataPoint {
        HistogramDataPoint {
            attributes: self.attributes(1),
            start_time_unix_nano: self.u64(),
            time_unix_nano: self.u64(),
            count: self.u64(),
            sum: self.chance().then(|| self.f64()),
            bucket_counts: self.list(4, Self::u64),
            explicit_bounds: self.list(4, Self::f64),
            exemplars: self.exemplars(),
            flags: self.u32(),
            min: self.chance().then(|| self.f64()),
            max: self.chance().then(|| self.f64()),
        }
    }

    fn buckets(&mut self) -> Option<Buckets> {
        self.chance().then(|| Buckets {
            offset: self.i32(),
            bucket_counts: self.list(4, Self::u64),
        })
    }

    fn exponential_point(&mut self) -> ExponentialHistogramDataPoint {
        ExponentialHistogramDataPoint {
            attributes: self.attributes(1),
            start_time_unix_nano: self.u64(),
            time_unix_nano: self.u64(),
            count: self.u64(),
            sum: self.chance().then(|| self.f64()),
            scale: self.i32(),
            zero_count: self.u64(),
            positive: self.buckets(),
            negative: self.buckets(),
            flags: self.u32(),
            exemplars: self.exemplars(),
            min: self.chance().then(|| self.f64()),
            max: self.chance().then(|| self.f64()),
            zero_threshold: self.f64(),
        }
    }

    fn summary_point(&mut self) -> SummaryDataPoint {
        SummaryDataPoint {
            attributes: self.attributes(1),
            start_time_unix_nano: self.u64(),
            time_unix_nano: self.u64(),
            count: self.u64(),
            sum: self.f64(),
            quantile_values: self.list(3, |r| ValueAtQuantile {
                quantile: r.f64(),
                value: r.f64(),
            }),
            flags: self.u32(),
        }
    }
}

/// A value of any JSON type, the awkward ones favoured.
fn awkward(names: &[&str], rng: &mut SmallRng, depth: usize) -> Json {
    match rng.random_range(0..if depth == 0 { 16 } else { 19 }) {
        0 => Json::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(1.5),
        5 => json!(1e300),
        6 => json!(u64::MAX),
        7 => json!("NaN"),
        8 => json!("-Infinity"),
        9 => json!("18446744073709551616"),
        10 => json!(""),
        11 => json!("00ff"),
        12 => json!("5B8EFFF798038103D269B633813FC60C"),
        13 => json!("EEE19B7EC3C1B174"),
        14 => json!("+/8="),
        15 => json!(-9223372036854775808i64),
        16 => json!([
            awkward(names, rng, depth - 1),
            awkward(names, rng, depth - 1)
        ]),
        17 => json!({}),
        _ => {
            let mut object = serde_json::Map::new();
            for _ in 0..rng.random_range(1..4) {
                let name = names[rng.random_range(0..names.len())];
                object.insert(name.to_owned(), awkward(names, rng, depth - 1));
            }
            Json::Object(object)
        }
    }
}

/// Every value in `document`, depth first, as paths of keys and indices.
fn paths(document: &Json, at: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    out.push(at.clone());
    match document {
        Json::Object(object) => {
            for (key, value) in object {
                at.push(Step::Key(key.clone()));
                paths(value, at, out);
                at.pop();
            }
        }
        Json::Array(array) => {
            for (i, value) in array.iter().enumerate() {
                at.push(Step::Index(i));
                paths(value, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum Step {
    Key(String),
    Index(usize),
}

fn get<'a>(document: &'a mut Json, path: &[Step]) -> &'a mut Json {
    path.iter().fold(document, |value, step| match step {
        Step::Key(key) => &mut value[key.as_str()],
        Step::Index(i) => &mut value[*i],
    })
}

/// One random change to `document`: a value replaced, a field removed, or a field of a
/// known name added.
pub fn mutate(document: &mut Json, names: &[&str], rng: &mut SmallRng) {
    let mut all = Vec::new();
    paths(document, &mut Vec::new(), &mut all);
    let path = &all[rng.random_range(0..all.len())];
    let replacement = awkward(names, rng, 2);
    let target = get(document, path);
    match (rng.random_range(0..3), target) {
        (0, Json::Object(object)) if !object.is_empty() => {
            let key = object
                .keys()
                .nth(rng.random_range(0..object.len()))
                .cloned()
                .unwrap_or_default();
            object.remove(&key);
        }
        (1, Json::Object(object)) => {
            let name = names[rng.random_range(0..names.len())];
            object.insert(name.to_owned(), replacement);
        }
        (_, target) => *target = replacement,
    }
}
