//! Everything accepted reaches every backend, unchanged: official OTLP/JSON examples, real
//! SDK protobuf payloads, and the OpenTelemetry SDK's own exporters over gRPC and HTTP.

use std::io::Write;

use bytes::Bytes;
use opentelemetry::trace::{Span as _, Tracer, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::exponential_histogram_data_point::Buckets;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::{
    ExponentialHistogram, ExponentialHistogramDataPoint, Histogram, HistogramDataPoint,
};
use otelgate::Signal;
use otelgate_cli::demo::generator::kv_str;
use prost::Message;

use crate::{fixture, gateway_with_two_backends, grpc_export, metric, WAIT};

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

async fn post(
    url: String,
    content_type: &str,
    encoding: Option<&str>,
    body: Vec<u8>,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body);
    if let Some(encoding) = encoding {
        request = request.header("content-encoding", encoding);
    }
    request.send().await.unwrap()
}

/// Decodes `times` concatenated copies of `body` as one message: what a backend must hold
/// after receiving `body` `times` times, however the gateway batched it.
fn repeated<M: Message + Default>(body: &[u8], times: usize) -> M {
    M::decode(&body.repeat(times)[..]).unwrap()
}

#[tokio::test]
async fn sdk_payloads_are_forwarded_unchanged_over_grpc_and_http() {
    let (gateway, grpc_backend, http_backend) = gateway_with_two_backends().await;
    let cases = [
        (
            Signal::Traces,
            "otlp-sdk-payloads/traces_frames_detections_genai.pb",
            30,
        ),
        (Signal::Logs, "otlp-sdk-payloads/logs.pb", 10),
        (Signal::Metrics, "otlp-sdk-payloads/metrics.pb", 0),
    ];
    for (signal, path, _) in cases {
        let body = fixture(path);
        grpc_export(gateway.grpc_addr(), signal, Bytes::from(body.clone()), &[])
            .await
            .unwrap();
        let url = format!("http://{}{}", gateway.http_addr(), signal.http_path());
        let plain = post(url.clone(), "application/x-protobuf", None, body.clone()).await;
        assert_eq!(plain.status(), 200);
        assert_eq!(plain.headers()["content-type"], "application/x-protobuf");
        let zipped = post(url, "application/x-protobuf", Some("gzip"), gzip(&body)).await;
        assert_eq!(zipped.status(), 200);
    }
    for (signal, path, expected_items) in cases {
        let body = fixture(path);
        let items = signal.count_protobuf(&body).unwrap();
        if expected_items > 0 {
            assert_eq!(items, expected_items, "{path}");
        }
        for backend in [&grpc_backend, &http_backend] {
            assert!(
                backend.wait_for(signal, items * 3, WAIT).await,
                "{signal} did not arrive"
            );
            match signal {
                Signal::Traces => assert_eq!(
                    backend.merged::<ExportTraceServiceRequest>(signal),
                    repeated(&body, 3)
                ),
                Signal::Logs => assert_eq!(
                    backend.merged::<ExportLogsServiceRequest>(signal),
                    repeated(&body, 3)
                ),
                Signal::Metrics => assert_eq!(
                    backend.merged::<ExportMetricsServiceRequest>(signal),
                    repeated(&body, 3)
                ),
            }
        }
        let accepted = metric(
            gateway.admin_addr(),
            "otelgate_receiver_accepted_items_total",
            &[("signal", signal.as_str())],
        )
        .await;
        assert_eq!(accepted, (items * 3) as f64, "{signal}");
        for exporter in ["grpc_backend", "http_backend"] {
            let sent = metric(
                gateway.admin_addr(),
                "otelgate_exporter_sent_items_total",
                &[("signal", signal.as_str()), ("exporter", exporter)],
            )
            .await;
            assert_eq!(sent, (items * 3) as f64, "{signal} via {exporter}");
        }
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn official_json_examples_are_accepted_and_forwarded() {
    let (gateway, grpc_backend, http_backend) = gateway_with_two_backends().await;
    let cases = [
        (Signal::Traces, "otlp-json-examples/trace.json"),
        (Signal::Metrics, "otlp-json-examples/metrics.json"),
        (Signal::Logs, "otlp-json-examples/logs.json"),
        (Signal::Logs, "otlp-json-examples/events.json"),
    ];
    for (signal, path) in cases {
        let url = format!("http://{}{}", gateway.http_addr(), signal.http_path());
        let response = post(url, "application/json", None, fixture(path)).await;
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["content-type"], "application/json");
        assert_eq!(response.text().await.unwrap(), "{}");
    }
    let traces: ExportTraceServiceRequest = serde_json::from_slice(&fixture(cases[0].1)).unwrap();
    let mut metrics: ExportMetricsServiceRequest =
        serde_json::from_slice(&fixture(cases[1].1)).unwrap();
    // opentelemetry-proto's serde support reads 64-bit counts only as JSON numbers and drops
    // the whole `data` of a metric that writes them as strings, as these two do (and OTLP/JSON
    // asks): their points are written out here.
    let time = 1_544_712_660_300_000_000;
    let listed = &mut metrics.resource_metrics[0].scope_metrics[0].metrics;
    listed[2].data = Some(Data::Histogram(Histogram {
        data_points: vec![HistogramDataPoint {
            attributes: vec![kv_str("my.histogram.attr", "some value")],
            start_time_unix_nano: time,
            time_unix_nano: time,
            count: 2,
            sum: Some(2.0),
            bucket_counts: vec![1, 1],
            explicit_bounds: vec![1.0],
            min: Some(0.0),
            max: Some(2.0),
            ..Default::default()
        }],
        aggregation_temporality: 1,
    }));
    listed[3].data = Some(Data::ExponentialHistogram(ExponentialHistogram {
        data_points: vec![ExponentialHistogramDataPoint {
            attributes: vec![kv_str("my.exponential.histogram.attr", "some value")],
            start_time_unix_nano: time,
            time_unix_nano: time,
            count: 3,
            sum: Some(10.0),
            zero_count: 1,
            positive: Some(Buckets {
                offset: 1,
                bucket_counts: vec![0, 2],
            }),
            min: Some(0.0),
            max: Some(5.0),
            ..Default::default()
        }],
        aggregation_temporality: 1,
    }));
    let mut logs: ExportLogsServiceRequest = serde_json::from_slice(&fixture(cases[2].1)).unwrap();
    let events: ExportLogsServiceRequest = serde_json::from_slice(&fixture(cases[3].1)).unwrap();
    logs.resource_logs.extend(events.resource_logs);
    // The ids in the JSON are hex; forwarded as protobuf they are the 16 and 8 bytes.
    let span = &traces.resource_spans[0].scope_spans[0].spans[0];
    assert_eq!(span.trace_id.len(), 16);
    assert_eq!(span.span_id.len(), 8);
    for backend in [&grpc_backend, &http_backend] {
        assert!(backend.wait_for(Signal::Logs, 2, WAIT).await);
        assert!(backend.wait_for(Signal::Traces, 1, WAIT).await);
        assert!(backend.wait_for(Signal::Metrics, 1, WAIT).await);
        assert_eq!(
            backend.merged::<ExportTraceServiceRequest>(Signal::Traces),
            traces
        );
        assert_eq!(
            backend.merged::<ExportMetricsServiceRequest>(Signal::Metrics),
            metrics
        );
        assert_eq!(
            backend.merged::<ExportLogsServiceRequest>(Signal::Logs),
            logs
        );
    }
    gateway.shutdown().await;
}

/// Spans made by the OpenTelemetry SDK, sent by its OTLP exporters: gRPC with gzip, HTTP
/// protobuf and HTTP JSON. Each backend must hold every span with its ids and attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_exporters_reach_every_backend() {
    let (gateway, grpc_backend, http_backend) = gateway_with_two_backends().await;
    let grpc = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", gateway.grpc_addr()))
        .with_compression(opentelemetry_otlp::Compression::Gzip)
        .build()
        .unwrap();
    let http_proto = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(reqwest::Client::new())
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("http://{}/v1/traces", gateway.http_addr()))
        .build()
        .unwrap();
    let http_json = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(reqwest::Client::new())
        .with_protocol(opentelemetry_otlp::Protocol::HttpJson)
        .with_endpoint(format!("http://{}/v1/traces", gateway.http_addr()))
        .build()
        .unwrap();
    let per_exporter = 25;
    let sent = tokio::task::spawn_blocking(move || {
        let mut sent = Vec::new();
        for (transport, exporter) in [
            ("grpc", grpc),
            ("http-protobuf", http_proto),
            ("http-json", http_json),
        ] {
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_simple_exporter(exporter)
                .build();
            let tracer = provider.tracer("otelgate-test");
            for i in 0..per_exporter {
                let mut span = tracer.start("frame.process");
                span.set_attribute(KeyValue::new("camera.id", format!("cam-{i:02}")));
                span.set_attribute(KeyValue::new("transport", transport));
                span.add_event("detection", vec![KeyValue::new("object.class", "person")]);
                let context = span.span_context().clone();
                span.end();
                sent.push((
                    context.trace_id().to_bytes().to_vec(),
                    context.span_id().to_bytes().to_vec(),
                    transport,
                ));
            }
            provider.shutdown().unwrap();
        }
        sent
    })
    .await
    .unwrap();
    let total = sent.len() as u64;
    for backend in [&grpc_backend, &http_backend] {
        assert!(backend.wait_for(Signal::Traces, total, WAIT).await);
        let merged: ExportTraceServiceRequest = backend.merged(Signal::Traces);
        let spans: Vec<_> = merged
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .collect();
        assert_eq!(spans.len() as u64, total);
        for (trace_id, span_id, transport) in &sent {
            let span = spans
                .iter()
                .find(|s| &s.span_id == span_id)
                .unwrap_or_else(|| panic!("span from {transport} missing"));
            assert_eq!(&span.trace_id, trace_id);
            assert_eq!(span.name, "frame.process");
            assert_eq!(span.events.len(), 1);
            assert!(span.attributes.iter().any(|kv| kv.key == "transport"));
        }
    }
    let accepted = metric(
        gateway.admin_addr(),
        "otelgate_receiver_accepted_items_total",
        &[("signal", "traces")],
    )
    .await;
    assert_eq!(accepted, total as f64);
    gateway.shutdown().await;
}

/// Logs and metrics from the SDK: logs over gRPC, metrics over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_logs_and_metrics_reach_every_backend() {
    use opentelemetry::logs::{LogRecord as _, Logger as _, LoggerProvider as _};
    use opentelemetry::metrics::MeterProvider as _;

    let (gateway, grpc_backend, http_backend) = gateway_with_two_backends().await;
    let logs = opentelemetry_otlp::LogExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", gateway.grpc_addr()))
        .build()
        .unwrap();
    let metrics_url = format!("http://{}/v1/metrics", gateway.http_addr());
    tokio::task::spawn_blocking(move || {
        let provider = opentelemetry_sdk::logs::SdkLoggerProvider::builder()
            .with_simple_exporter(logs)
            .build();
        let logger = provider.logger("otelgate-test");
        for i in 0..10 {
            let mut record = logger.create_log_record();
            record.set_event_name("frame");
            record.set_body(format!("frame {i}").into());
            record.add_attribute("camera.id", "cam-01");
            logger.emit(record);
        }
        provider.shutdown().unwrap();
        // The periodic reader exports from its own thread, outside Tokio: use a blocking client.
        let metrics = opentelemetry_otlp::MetricExporter::builder()
            .with_http()
            .with_http_client(reqwest::blocking::Client::new())
            .with_endpoint(metrics_url)
            .build()
            .unwrap();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_periodic_exporter(metrics)
            .build();
        let counter = provider
            .meter("otelgate-test")
            .u64_counter("frames")
            .build();
        for camera in ["cam-01", "cam-02", "cam-03"] {
            counter.add(5, &[KeyValue::new("camera.id", camera)]);
        }
        provider.shutdown().unwrap();
    })
    .await
    .unwrap();
    for backend in [&grpc_backend, &http_backend] {
        assert!(backend.wait_for(Signal::Logs, 10, WAIT).await);
        assert!(backend.wait_for(Signal::Metrics, 3, WAIT).await);
        let logs: ExportLogsServiceRequest = backend.merged(Signal::Logs);
        let bodies: Vec<_> = logs
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
            .map(|r| (r.event_name.clone(), format!("{:?}", r.body)))
            .collect();
        assert_eq!(bodies.len(), 10);
        assert!(bodies
            .iter()
            .all(|(event, body)| event == "frame" && body.contains("frame ")));
    }
    gateway.shutdown().await;
}
