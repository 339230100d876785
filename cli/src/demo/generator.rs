//! Realistic telemetry of a camera-analytics and LLM service, as an OpenTelemetry SDK would
//! emit it: `frame.process` spans with `detection` events, GenAI client spans following the
//! OTel semantic conventions, log records and a histogram metric.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, AggregationTemporality, Histogram, HistogramDataPoint, Metric, ResourceMetrics,
    ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const CLASSES: [&str; 6] = ["person", "car", "truck", "bicycle", "dog", "forklift"];
const MODELS: [(&str, &str); 3] = [
    ("openai", "gpt-4o-mini"),
    ("anthropic", "claude-sonnet-4"),
    ("openai", "gpt-4.1"),
];

/// A string attribute.
pub fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

/// An integer attribute.
pub fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// A floating-point attribute.
pub fn kv_f64(key: &str, value: f64) -> KeyValue {
    kv(key, any_value::Value::DoubleValue(value))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
    }
}

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What the spans of a trace request are. Rows per span differ by shape, and so does the work
/// of every stage: a benchmark names the shape it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TraceShape {
    /// `frame.process` spans with 0-3 `detection` events (1.5 on average) and one GenAI chat
    /// span per ten frames: 2.6 rows per frame.
    #[default]
    Mixed,
    /// `frame.process` spans with exactly 3 `detection` events and nothing else: 4 rows per
    /// frame.
    Frames,
    /// Plain HTTP server spans without events, as any instrumented service sends: no rows.
    Spans,
}

impl TraceShape {
    /// Frame spans in a request of `spans` items of this shape.
    pub fn frames(self, items: usize) -> usize {
        match self {
            TraceShape::Mixed | TraceShape::Frames => items,
            TraceShape::Spans => 0,
        }
    }

    /// Rows the built-in tables get per item, on average.
    pub fn rows_per_item(self) -> f64 {
        match self {
            TraceShape::Mixed => 2.6,
            TraceShape::Frames => 4.0,
            TraceShape::Spans => 0.0,
        }
    }
}

/// Generates requests; deterministic for a given seed (apart from timestamps).
pub struct TelemetryGenerator {
    rng: SmallRng,
    sequence: i64,
    cameras: u32,
    shape: TraceShape,
    /// Added to frame spans as `load.run`, so a load run can find its own rows.
    run: Option<String>,
}

impl TelemetryGenerator {
    pub fn new(seed: u64) -> Self {
        TelemetryGenerator {
            rng: SmallRng::seed_from_u64(seed),
            sequence: 0,
            cameras: 8,
            shape: TraceShape::Mixed,
            run: None,
        }
    }

    /// Generates trace requests of `shape` (the default is `TraceShape::Mixed`).
    pub fn with_shape(mut self, shape: TraceShape) -> Self {
        self.shape = shape;
        self
    }

    /// The shape of the trace requests this generates.
    pub fn shape(&self) -> TraceShape {
        self.shape
    }

    /// Numbers the next frame `sequence + 1`.
    pub fn with_sequence(mut self, sequence: i64) -> Self {
        self.sequence = sequence;
        self
    }

    /// Tags every frame span with `load.run = run` (kept in the rows' `attributes`).
    pub fn with_run(mut self, run: &str) -> Self {
        self.run = Some(run.to_owned());
        self
    }

    fn resource(&self, service: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![
                kv_str("service.name", service),
                kv_str("service.version", "1.4.2"),
                kv_str("deployment.environment.name", "demo"),
                kv_str("host.name", "edge-node-1"),
                kv_str("telemetry.sdk.name", "opentelemetry"),
                kv_str("telemetry.sdk.language", "python"),
            ],
            ..Default::default()
        })
    }

    fn ids(&mut self) -> (Vec<u8>, Vec<u8>) {
        (
            self.rng.random::<[u8; 16]>().to_vec(),
            self.rng.random::<[u8; 8]>().to_vec(),
        )
    }

    /// A request of `items` spans of the generator's shape: `items` `frame.process` spans
    /// with their `detection` events (plus one GenAI chat span per ten frames when mixed), or
    /// `items` plain spans. Returns the request and its span count.
    pub fn traces(&mut self, items: usize) -> (ExportTraceServiceRequest, u64) {
        let end = now_nanos();
        let mut spans = Vec::with_capacity(items + items / 10);
        for _ in 0..items {
            let span = match self.shape {
                TraceShape::Mixed => self.frame_span(end, None),
                TraceShape::Frames => self.frame_span(end, Some(3)),
                TraceShape::Spans => self.plain_span(end),
            };
            spans.push(span);
        }
        if self.shape == TraceShape::Mixed {
            for _ in 0..items / 10 {
                spans.push(self.llm_span(end));
            }
        }
        let count = spans.len() as u64;
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: self.resource("camera-analytics"),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "camera.pipeline".into(),
                        version: "1.4.2".into(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        (request, count)
    }

    /// The next frame's `frame.process` span with `detections` events (0-3 at random when
    /// `None`), ending at `end`.
    fn frame_span(&mut self, end: u64, detections: Option<u64>) -> Span {
        self.sequence += 1;
        let camera = self.rng.random_range(0..self.cameras);
        let frame_id = format!("cam-{camera:02}-{:09}", self.sequence);
        let processing_ms = self.rng.random_range(4.0..40.0);
        let start = end - (processing_ms * 1e6) as u64;
        let events = self.detections(start, detections);
        let (trace_id, span_id) = self.ids();
        let mut attributes = vec![
            kv_str("camera.id", format!("cam-{camera:02}")),
            kv_str("frame.id", frame_id),
            kv_int("frame.sequence", self.sequence),
            kv_int("frame.width", 1920),
            kv_int("frame.height", 1080),
            kv_f64("frame.processing_ms", processing_ms),
            kv_str("frame.status", "ok"),
        ];
        if let Some(run) = &self.run {
            attributes.push(kv_str("load.run", run.clone()));
        }
        Span {
            trace_id,
            span_id,
            name: "frame.process".into(),
            kind: span::SpanKind::Internal as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            events,
            status: Some(Status::default()),
            ..Default::default()
        }
    }

    /// `count` `detection` events (0-3 at random when `None`), a millisecond apart from
    /// `start`.
    fn detections(&mut self, start: u64, count: Option<u64>) -> Vec<span::Event> {
        let count = count.unwrap_or_else(|| self.rng.random_range(0..4));
        (0..count)
            .map(|i| span::Event {
                time_unix_nano: start + i * 1_000_000,
                name: "detection".into(),
                attributes: vec![
                    kv_str(
                        "object.class",
                        CLASSES[self.rng.random_range(0..CLASSES.len())],
                    ),
                    kv_f64("detection.confidence", self.rng.random_range(0.30..0.99)),
                    kv_f64("bbox.x", self.rng.random_range(0.0..1800.0)),
                    kv_f64("bbox.y", self.rng.random_range(0.0..1000.0)),
                    kv_f64("bbox.w", self.rng.random_range(10.0..300.0)),
                    kv_f64("bbox.h", self.rng.random_range(10.0..300.0)),
                    kv_int("track.id", self.rng.random_range(1..5000)),
                ],
                dropped_attributes_count: 0,
            })
            .collect()
    }

    /// An HTTP server span of the camera service's API, ending at `end`: the attributes of
    /// the HTTP semantic conventions, no events.
    fn plain_span(&mut self, end: u64) -> Span {
        const ROUTES: [&str; 4] = [
            "/api/cameras",
            "/api/frames/{id}",
            "/api/alerts",
            "/healthz",
        ];
        let route = ROUTES[self.rng.random_range(0..ROUTES.len())];
        let duration_ms = self.rng.random_range(1.0..80.0);
        let (trace_id, span_id) = self.ids();
        let status = if self.rng.random_range(0..50) == 0 {
            500
        } else {
            200
        };
        Span {
            trace_id,
            span_id,
            name: format!("GET {route}"),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: end - (duration_ms * 1e6) as u64,
            end_time_unix_nano: end,
            attributes: vec![
                kv_str("http.request.method", "GET"),
                kv_str("http.route", route),
                kv_str("url.scheme", "https"),
                kv_int("http.response.status_code", status),
                kv_str("server.address", "api.edge-node-1"),
                kv_int("server.port", 443),
                kv_str("network.protocol.version", "1.1"),
            ],
            status: Some(Status::default()),
            ..Default::default()
        }
    }

    /// A GenAI `chat` client span of a random model, ending at `end`.
    fn llm_span(&mut self, end: u64) -> Span {
        let (provider, model) = MODELS[self.rng.random_range(0..MODELS.len())];
        let duration_ms = self.rng.random_range(200.0..3000.0);
        let (trace_id, span_id) = self.ids();
        Span {
            trace_id,
            span_id,
            name: format!("chat {model}"),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: end - (duration_ms * 1e6) as u64,
            end_time_unix_nano: end,
            attributes: vec![
                kv_str("gen_ai.operation.name", "chat"),
                kv_str("gen_ai.provider.name", provider),
                kv_str("gen_ai.request.model", model),
                kv_str("gen_ai.response.model", model),
                kv_int("gen_ai.usage.input_tokens", self.rng.random_range(50..4000)),
                kv_int("gen_ai.usage.output_tokens", self.rng.random_range(10..800)),
            ],
            status: Some(Status::default()),
            ..Default::default()
        }
    }

    /// `records` camera status log records (INFO, a few WARN); not mapped to rows.
    pub fn logs(&mut self, records: usize) -> (ExportLogsServiceRequest, u64) {
        let now = now_nanos();
        let log_records = (0..records)
            .map(|_| {
                let camera = self.rng.random_range(0..self.cameras);
                let warn = self.rng.random_bool(0.1);
                LogRecord {
                    time_unix_nano: now,
                    observed_time_unix_nano: now,
                    severity_number: if warn { 13 } else { 9 },
                    severity_text: if warn { "WARN" } else { "INFO" }.into(),
                    event_name: "camera.status".into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(format!(
                            "cam-{camera:02} streaming"
                        ))),
                    }),
                    attributes: vec![kv_str("camera.id", format!("cam-{camera:02}"))],
                    ..Default::default()
                }
            })
            .collect();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: self.resource("camera-analytics"),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        };
        (request, records as u64)
    }

    /// One histogram metric (`frame.processing.duration`) with a data point per camera.
    pub fn metrics(&mut self) -> (ExportMetricsServiceRequest, u64) {
        let now = now_nanos();
        let data_points: Vec<HistogramDataPoint> = (0..self.cameras)
            .map(|camera| HistogramDataPoint {
                attributes: vec![kv_str("camera.id", format!("cam-{camera:02}"))],
                start_time_unix_nano: now - 10_000_000_000,
                time_unix_nano: now,
                count: 30,
                sum: Some(self.rng.random_range(200.0..900.0)),
                bucket_counts: vec![2, 10, 12, 5, 1],
                explicit_bounds: vec![5.0, 10.0, 20.0, 40.0],
                ..Default::default()
            })
            .collect();
        let count = data_points.len() as u64;
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: self.resource("camera-analytics"),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "frame.processing.duration".into(),
                        unit: "ms".into(),
                        data: Some(metric::Data::Histogram(Histogram {
                            data_points,
                            aggregation_temporality: AggregationTemporality::Cumulative as i32,
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        };
        (request, count)
    }
}
