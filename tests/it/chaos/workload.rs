//! The harness's clients: mixed OTLP requests in which every item carries a unique id, and
//! what each request must leave behind once acknowledged (rows with their values, items at
//! every backend).
//!
//! Traces carry `frame.process` spans with `detection` events, GenAI chat spans and plain
//! spans; logs carry `frame` and `detection` events, `frame.legacy` events (a user mapping
//! into `frame_metadata`, beside the two built-in ones) and plain records; metrics carry gauge
//! data points. Every span, log record and data point has a `chaos.id` attribute.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span};
use otelgate::Signal;
use otelgate_cli::demo::generator::{kv_f64, kv_int, kv_str, now_nanos};
use prost::Message;
use rand::rngs::SmallRng;
use rand::Rng;

/// A `frame_metadata` row's values that the check compares.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameRow {
    pub camera_id: String,
    pub sequence: i64,
    pub width: Option<i64>,
}

/// What requests must leave behind.
#[derive(Debug, Default)]
pub struct Expected {
    /// `frame_metadata` by frame id.
    pub frames: HashMap<String, FrameRow>,
    /// `detection_events` by (frame id, track id): the object class.
    pub detections: HashMap<(String, i64), String>,
    /// `llm_requests` by span id: the input tokens.
    pub llm: HashMap<Vec<u8>, i64>,
    /// `chaos.id` of every span, log record and data point, for the OTLP backends.
    pub items: HashSet<String>,
}

impl Expected {
    pub fn absorb(&mut self, other: Expected) {
        self.frames.extend(other.frames);
        self.detections.extend(other.detections);
        self.llm.extend(other.llm);
        self.items.extend(other.items);
    }

    pub fn rows(&self) -> usize {
        self.frames.len() + self.detections.len() + self.llm.len()
    }
}

const CLASSES: [&str; 4] = ["person", "car", "bicycle", "dog"];

/// Builds one client's requests; ids are unique per (run, client).
pub struct Client {
    pub index: usize,
    round: u16,
    run: String,
    next: u64,
    rng: SmallRng,
}

impl Client {
    /// Client `index` of round `round`; `run` starts every id it makes.
    pub fn new(run: &str, round: usize, index: usize, rng: SmallRng) -> Self {
        Client {
            index,
            round: round as u16,
            run: format!("{run}{round}"),
            next: 0,
            rng,
        }
    }

    fn id(&mut self) -> (String, u64) {
        self.next += 1;
        (
            format!("{}-c{}-{}", self.run, self.index, self.next),
            self.next,
        )
    }

    /// A span id no other item of the run has: the round, the client and its counter.
    fn span_id(&self, n: u64) -> Vec<u8> {
        let mut id = [0u8; 8];
        id[..2].copy_from_slice(&self.round.to_be_bytes());
        id[2] = self.index as u8;
        id[3..].copy_from_slice(&n.to_be_bytes()[3..]);
        id.to_vec()
    }

    fn trace_id(&mut self) -> Vec<u8> {
        self.rng.random::<[u8; 16]>().to_vec()
    }

    /// A random request and what it must leave behind.
    pub fn request(&mut self) -> (Signal, Bytes, Expected) {
        match self.rng.random_range(0..10) {
            0..=4 => self.traces(),
            5..=8 => self.logs(),
            _ => self.metrics(),
        }
    }

    fn frame_attributes(&mut self, frame_id: &str, sequence: i64, camera: &str) -> Vec<KeyValue> {
        vec![
            kv_str("chaos.id", frame_id),
            kv_str("camera.id", camera),
            kv_str("frame.id", frame_id),
            kv_int("frame.sequence", sequence),
            kv_int("frame.width", 1280 + sequence % 7),
            kv_int("frame.height", 720),
            kv_f64("frame.processing_ms", self.rng.random_range(1.0..30.0)),
        ]
    }

    fn detection_attributes(&mut self, track: i64) -> (Vec<KeyValue>, String) {
        let class = CLASSES[self.rng.random_range(0..CLASSES.len())].to_owned();
        let attributes = vec![
            kv_str("object.class", class.clone()),
            kv_f64("detection.confidence", self.rng.random_range(0.3..0.99)),
            kv_f64("bbox.x", self.rng.random_range(0.0..1000.0)),
            kv_f64("bbox.y", self.rng.random_range(0.0..700.0)),
            kv_f64("bbox.w", 40.0),
            kv_f64("bbox.h", 80.0),
            kv_int("track.id", track),
        ];
        (attributes, class)
    }

    fn traces(&mut self) -> (Signal, Bytes, Expected) {
        let mut expected = Expected::default();
        let now = now_nanos();
        let mut spans = Vec::new();
        for _ in 0..self.rng.random_range(1..=6) {
            let (frame_id, n) = self.id();
            let camera = format!("cam-{}", self.rng.random_range(0..4));
            let sequence = n as i64;
            let mut events = Vec::new();
            for track in 1..=self.rng.random_range(0..=3i64) {
                let (mut attributes, class) = self.detection_attributes(track);
                let (event_id, _) = self.id();
                attributes.push(kv_str("chaos.event", event_id));
                events.push(span::Event {
                    time_unix_nano: now,
                    name: "detection".into(),
                    attributes,
                    dropped_attributes_count: 0,
                });
                expected.detections.insert((frame_id.clone(), track), class);
            }
            expected.frames.insert(
                frame_id.clone(),
                FrameRow {
                    camera_id: camera.clone(),
                    sequence,
                    width: Some(1280 + sequence % 7),
                },
            );
            expected.items.insert(frame_id.clone());
            spans.push(Span {
                trace_id: self.trace_id(),
                span_id: self.span_id(n),
                name: "frame.process".into(),
                start_time_unix_nano: now - 5_000_000,
                end_time_unix_nano: now,
                attributes: self.frame_attributes(&frame_id, sequence, &camera),
                events,
                ..Default::default()
            });
        }
        if self.rng.random_bool(0.4) {
            let (id, n) = self.id();
            let tokens = self.rng.random_range(10..5000);
            expected.llm.insert(self.span_id(n), tokens);
            expected.items.insert(id.clone());
            spans.push(Span {
                trace_id: self.trace_id(),
                span_id: self.span_id(n),
                name: "chat gpt-4o".into(),
                start_time_unix_nano: now - 900_000_000,
                end_time_unix_nano: now,
                attributes: vec![
                    kv_str("chaos.id", id),
                    kv_str("gen_ai.operation.name", "chat"),
                    kv_str("gen_ai.provider.name", "openai"),
                    kv_str("gen_ai.request.model", "gpt-4o"),
                    kv_int("gen_ai.usage.input_tokens", tokens),
                    kv_int("gen_ai.usage.output_tokens", 42),
                ],
                ..Default::default()
            });
        }
        for _ in 0..self.rng.random_range(0..=3) {
            let (id, n) = self.id();
            expected.items.insert(id.clone());
            spans.push(Span {
                trace_id: self.trace_id(),
                span_id: self.span_id(n),
                name: "GET /healthz".into(),
                start_time_unix_nano: now - 1_000_000,
                end_time_unix_nano: now,
                attributes: vec![kv_str("chaos.id", id), kv_int("http.status_code", 200)],
                ..Default::default()
            });
        }
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: resource(),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        };
        (Signal::Traces, request.encode_to_vec().into(), expected)
    }

    fn logs(&mut self) -> (Signal, Bytes, Expected) {
        let mut expected = Expected::default();
        let now = now_nanos();
        let mut records = Vec::new();
        let record = |event: &str, attributes: Vec<KeyValue>| LogRecord {
            time_unix_nano: now,
            observed_time_unix_nano: now,
            severity_number: 9,
            severity_text: "INFO".into(),
            event_name: event.into(),
            attributes,
            ..Default::default()
        };
        for _ in 0..self.rng.random_range(1..=6) {
            let (frame_id, n) = self.id();
            let camera = format!("cam-{}", self.rng.random_range(0..4));
            let sequence = n as i64;
            expected.items.insert(frame_id.clone());
            if self.rng.random_bool(0.3) {
                // The user mapping: `frame.legacy` events with their own attribute names.
                expected.frames.insert(
                    frame_id.clone(),
                    FrameRow {
                        camera_id: camera.clone(),
                        sequence,
                        width: None,
                    },
                );
                records.push(record(
                    "frame.legacy",
                    vec![
                        kv_str("chaos.id", frame_id.clone()),
                        kv_str("cam", camera),
                        kv_str("fid", frame_id),
                        kv_int("seq", sequence),
                    ],
                ));
                continue;
            }
            expected.frames.insert(
                frame_id.clone(),
                FrameRow {
                    camera_id: camera.clone(),
                    sequence,
                    width: Some(1280 + sequence % 7),
                },
            );
            records.push(record(
                "frame",
                self.frame_attributes(&frame_id, sequence, &camera),
            ));
            for track in 1..=self.rng.random_range(0..=3i64) {
                let (mut attributes, class) = self.detection_attributes(track);
                let (id, _) = self.id();
                attributes.extend([
                    kv_str("chaos.id", id.clone()),
                    kv_str("camera.id", camera.clone()),
                    kv_str("frame.id", frame_id.clone()),
                ]);
                expected.items.insert(id);
                expected.detections.insert((frame_id.clone(), track), class);
                records.push(record("detection", attributes));
            }
        }
        for _ in 0..self.rng.random_range(0..=2) {
            let (id, _) = self.id();
            expected.items.insert(id.clone());
            let mut plain = record("", vec![kv_str("chaos.id", id)]);
            plain.body = Some(AnyValue {
                value: Some(any_value::Value::StringValue("camera streaming".into())),
            });
            records.push(plain);
        }
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource(),
                scope_logs: vec![ScopeLogs {
                    log_records: records,
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        };
        (Signal::Logs, request.encode_to_vec().into(), expected)
    }

    fn metrics(&mut self) -> (Signal, Bytes, Expected) {
        let mut expected = Expected::default();
        let now = now_nanos();
        let data_points = (0..self.rng.random_range(1..=4))
            .map(|_| {
                let (id, _) = self.id();
                expected.items.insert(id.clone());
                NumberDataPoint {
                    attributes: vec![kv_str("chaos.id", id)],
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsDouble(
                        self.rng.random_range(0.0..100.0),
                    )),
                    ..Default::default()
                }
            })
            .collect();
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource(),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "camera.queue_depth".into(),
                        data: Some(metric::Data::Gauge(Gauge { data_points })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                schema_url: String::new(),
            }],
        };
        (Signal::Metrics, request.encode_to_vec().into(), expected)
    }
}

fn resource() -> Option<Resource> {
    Some(Resource {
        attributes: vec![kv_str("service.name", "chaos-camera")],
        ..Default::default()
    })
}

/// The `chaos.id` of every span, log record and data point in a request body of `signal`.
pub fn item_ids(signal: Signal, body: &[u8]) -> Vec<String> {
    fn id_of(attributes: &[KeyValue]) -> Option<String> {
        attributes
            .iter()
            .find(|kv| kv.key == "chaos.id")
            .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => Some(s.clone()),
                _ => None,
            })
    }
    let mut ids = Vec::new();
    match signal {
        Signal::Traces => {
            let request = ExportTraceServiceRequest::decode(body).expect("backend got traces");
            for span in request
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
            {
                ids.extend(id_of(&span.attributes));
            }
        }
        Signal::Logs => {
            let request = ExportLogsServiceRequest::decode(body).expect("backend got logs");
            for record in request
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
            {
                ids.extend(id_of(&record.attributes));
            }
        }
        Signal::Metrics => {
            let request = ExportMetricsServiceRequest::decode(body).expect("backend got metrics");
            for metric in request
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
            {
                if let Some(metric::Data::Gauge(gauge)) = &metric.data {
                    for point in &gauge.data_points {
                        ids.extend(id_of(&point.attributes));
                    }
                }
            }
        }
    }
    ids
}

/// Sends `body` over gRPC or OTLP/HTTP (protobuf); Ok means acknowledged.
pub async fn send(
    http: &reqwest::Client,
    grpc_addr: SocketAddr,
    http_addr: SocketAddr,
    use_grpc: bool,
    signal: Signal,
    body: Bytes,
) -> Result<(), String> {
    if use_grpc {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(3))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| e.to_string())?;
        grpc.unary::<Bytes, Bytes, _>(
            tonic::Request::new(body),
            http::uri::PathAndQuery::from_static(signal.grpc_path()),
            otelgate::codec::BytesCodec,
        )
        .await
        .map(|_| ())
        .map_err(|status| format!("{:?}", status.code()))
    } else {
        let response = http
            .post(format!("http://{http_addr}{}", signal.http_path()))
            .header("content-type", "application/x-protobuf")
            .timeout(Duration::from_secs(3))
            .body(body)
            .send()
            .await
            .map_err(|e| if e.is_timeout() { "timeout" } else { "connect" }.to_owned())?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(response.status().as_u16().to_string())
        }
    }
}
