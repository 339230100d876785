//! The TimescaleDB sink against a real throwaway PostgreSQL cluster (TimescaleDB preloaded
//! when installed): typed rows exactly once, rejected records kept aside, connection loss,
//! the ledger, PgBouncer in transaction mode, migrations, and the TimescaleDB features.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use otelgate::demo::postgres::TempPostgres;
use otelgate::sink::timescale::{LlmPrice, TimescaleSinkConfig};
use otelgate::{Config, Gateway, Signal};
use prost::Message;

use crate::{fixture, grpc_export, metric, start, WAIT};

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";

pub async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

pub fn sink_config(url: &str) -> TimescaleSinkConfig {
    let mut config = TimescaleSinkConfig::new(url);
    config.max_wait_ms = 5;
    config.max_elapsed_ms = 60_000;
    config
}

/// A gateway whose only destination is the TimescaleDB sink.
pub async fn gateway_with_sink(sink: TimescaleSinkConfig) -> Gateway {
    let mut config = Config::default();
    config.receiver.grpc_endpoint = "127.0.0.1:0".into();
    config.receiver.http_endpoint = "127.0.0.1:0".into();
    config.telemetry.admin_endpoint = "127.0.0.1:0".into();
    config.pipeline.shutdown_timeout_seconds = 30;
    config.timescale = Some(sink);
    start(config).await
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

/// Waits until `sql` (a count) reaches `expected`; returns the last value.
pub async fn wait_count(client: &tokio_postgres::Client, sql: &str, expected: i64) -> i64 {
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        let n = count(client, sql).await;
        if n >= expected || tokio::time::Instant::now() >= deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn string_attr(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    key: &str,
) -> Option<String> {
    attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            any_value::Value::IntValue(i) => Some(i.to_string()),
            any_value::Value::DoubleValue(d) => Some(d.to_string()),
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_spans_become_typed_rows_exactly_once() {
    let pg = TempPostgres::start(false).unwrap();
    let body = fixture(TRACES);
    let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
    let spans: Vec<_> = request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .collect();
    let mut sink = sink_config(&pg.url());
    for span in &spans {
        if let Some(model) = string_attr(&span.attributes, "gen_ai.response.model") {
            sink.llm_prices.insert(
                model,
                LlmPrice {
                    input_per_million: 1.0,
                    output_per_million: 2.0,
                },
            );
        }
    }
    let gateway = gateway_with_sink(sink).await;
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        Bytes::from(body.clone()),
        &[],
    )
    .await
    .unwrap();

    let resource = request.resource_spans[0].resource.as_ref().unwrap();
    let service_name = string_attr(&resource.attributes, "service.name");
    assert!(service_name.is_some());
    let frames: Vec<_> = spans.iter().filter(|s| s.name == "frame.process").collect();
    let detections: usize = frames
        .iter()
        .map(|s| s.events.iter().filter(|e| e.name == "detection").count())
        .sum();
    let llm: Vec<_> = spans
        .iter()
        .filter(|s| s.attributes.iter().any(|kv| kv.key.starts_with("gen_ai.")))
        .collect();
    assert_eq!((frames.len(), llm.len()), (20, 10));
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 20).await,
        20
    );
    assert_eq!(
        wait_count(
            &db,
            "SELECT count(*) FROM detection_events",
            detections as i64
        )
        .await,
        detections as i64
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM llm_requests", 10).await,
        10
    );

    for span in &frames {
        let row = db
            .query_one(
                "SELECT camera_id, frame_id, sequence, width, height, processing_ms, status, trace_id, service_name, attributes
                 FROM frame_metadata WHERE span_id = $1",
                &[&span.span_id],
            )
            .await
            .unwrap();
        assert_eq!(
            row.get::<_, Option<String>>(0),
            string_attr(&span.attributes, "camera.id")
        );
        assert_eq!(
            row.get::<_, Option<String>>(1),
            string_attr(&span.attributes, "frame.id")
        );
        assert_eq!(
            row.get::<_, Option<i64>>(2).map(|v| v.to_string()),
            string_attr(&span.attributes, "frame.sequence")
        );
        assert_eq!(
            row.get::<_, Option<i64>>(3).map(|v| v.to_string()),
            string_attr(&span.attributes, "frame.width")
        );
        assert_eq!(
            row.get::<_, Option<i64>>(4).map(|v| v.to_string()),
            string_attr(&span.attributes, "frame.height")
        );
        let duration_ms = (span.end_time_unix_nano - span.start_time_unix_nano) as f64 / 1e6;
        assert!((row.get::<_, f64>(5) - duration_ms).abs() < 1e-6);
        assert!(row.get::<_, Option<String>>(6).is_some());
        assert_eq!(row.get::<_, Vec<u8>>(7), span.trace_id);
        assert_eq!(row.get::<_, Option<String>>(8), service_name);
        let attributes: serde_json::Value = row.get(9);
        assert!(
            attributes.get("camera.id").is_none(),
            "mapped attributes are not repeated in `attributes`"
        );
    }
    for span in &llm {
        let row = db
            .query_one(
                "SELECT provider, operation, request_model, response_model, input_tokens, output_tokens, duration_ms, cost_usd
                 FROM llm_requests WHERE span_id = $1",
                &[&span.span_id],
            )
            .await
            .unwrap();
        let provider = string_attr(&span.attributes, "gen_ai.provider.name")
            .or(string_attr(&span.attributes, "gen_ai.system"));
        assert_eq!(row.get::<_, Option<String>>(0), provider);
        assert_eq!(
            row.get::<_, Option<String>>(1),
            string_attr(&span.attributes, "gen_ai.operation.name")
        );
        assert_eq!(
            row.get::<_, Option<String>>(2),
            string_attr(&span.attributes, "gen_ai.request.model")
        );
        let input: i64 = string_attr(&span.attributes, "gen_ai.usage.input_tokens")
            .unwrap()
            .parse()
            .unwrap();
        let output: i64 = string_attr(&span.attributes, "gen_ai.usage.output_tokens")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(row.get::<_, Option<i64>>(4), Some(input));
        assert_eq!(row.get::<_, Option<i64>>(5), Some(output));
        let cost: f64 = row.get(7);
        assert!((cost - (input as f64 * 1.0 + output as f64 * 2.0) / 1e6).abs() < 1e-12);
    }
    // Detections inherit camera and frame from their span.
    let orphans = count(
        &db,
        "SELECT count(*) FROM detection_events WHERE camera_id IS NULL OR frame_id IS NULL",
    )
    .await;
    assert_eq!(orphans, 0);
    let total = 20 + detections as i64 + 10;
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(row_count), 0)::int8 FROM otelgate_ledger"
        )
        .await,
        total
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM frame_metadata WHERE ingested_at IS NULL"
        )
        .await,
        0
    );
    let rows_metric = metric(gateway.admin_addr(), "otelgate_sink_rows_total", &[]).await;
    assert_eq!(rows_metric, total as f64);
    let report = gateway.shutdown().await;
    assert_eq!(report.sink.unwrap().rows_written, total as u64);
}
