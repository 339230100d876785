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

fn span(
    name: &str,
    attributes: Vec<opentelemetry_proto::tonic::common::v1::KeyValue>,
    seq: u8,
) -> opentelemetry_proto::tonic::trace::v1::Span {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: vec![seq; 16],
        span_id: vec![seq; 8],
        name: name.into(),
        start_time_unix_nano: now - 5_000_000,
        end_time_unix_nano: now,
        attributes,
        ..Default::default()
    }
}

pub fn traces(spans: Vec<opentelemetry_proto::tonic::trace::v1::Span>) -> Bytes {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use otelgate::demo::generator::kv_str;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv_str("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            schema_url: String::new(),
        }],
    }
    .encode_to_vec()
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_kept_aside_and_the_rest_arrive() {
    use otelgate::demo::generator::{kv_f64, kv_int, kv_str};
    let pg = TempPostgres::start(false).unwrap();
    let mut sink = sink_config(&pg.url());
    sink.mappings = vec![toml::from_str(
        r#"
        table = "checkouts"
        record = "span"
        name = "checkout"
        columns = [
          { name = "amount", type = "float8", from = "attribute:amount", required = true },
          { name = "user_id", type = "uuid", from = "attribute:user.id" },
        ]"#,
    )
    .unwrap()];
    let gateway = gateway_with_sink(sink).await;
    let db = connect(&pg.url()).await;
    db.batch_execute("ALTER TABLE frame_metadata ADD CONSTRAINT width_positive CHECK (width > 0)")
        .await
        .unwrap();

    let user = "6f1c2a9e-8d4b-4c1e-9a57-3b2d1e0f4a6c";
    let mut spans = vec![
        span(
            "checkout",
            vec![
                kv_f64("amount", 9.5),
                kv_str("user.id", user),
                kv_str("note", "kept"),
            ],
            1,
        ),
        span("checkout", vec![kv_str("amount", "abc")], 2),
        span("checkout", vec![kv_str("user.id", user)], 3),
    ];
    for i in 0..5u8 {
        let width = if i == 2 { -1 } else { 1920 };
        spans.push(span(
            "frame.process",
            vec![kv_str("camera.id", "cam-1"), kv_int("frame.width", width)],
            10 + i,
        ));
    }
    grpc_export(gateway.grpc_addr(), Signal::Traces, traces(spans), &[])
        .await
        .unwrap();

    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM otelgate_rejected_rows", 3).await,
        3
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 4).await,
        4
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM checkouts", 1).await,
        1
    );
    let row = db
        .query_one(
            "SELECT amount, user_id::text, attributes FROM checkouts",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, f64>(0), 9.5);
    assert_eq!(row.get::<_, String>(1), user);
    assert_eq!(
        row.get::<_, serde_json::Value>(2),
        serde_json::json!({ "note": "kept" })
    );
    let rejected = db
        .query("SELECT table_name, reason, record FROM otelgate_rejected_rows ORDER BY table_name, reason", &[])
        .await
        .unwrap();
    let reasons: Vec<(String, String)> = rejected.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(reasons[0].0, "checkouts");
    assert!(reasons[0].1.contains("amount"), "{reasons:?}");
    assert!(
        reasons[1].1.contains("amount: required value missing"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2].0, "frame_metadata");
    assert!(reasons[2].1.contains("width_positive"), "{reasons:?}");
    let record: serde_json::Value = rejected[0].get(2);
    assert_eq!(record["attributes"]["amount"], "abc");
    assert_eq!(
        count(&db, "SELECT count(*) FROM frame_metadata WHERE width < 0").await,
        0
    );
    let conversion = metric(
        gateway.admin_addr(),
        "otelgate_sink_rejected_rows_total",
        &[("reason", "conversion")],
    )
    .await;
    let database = metric(
        gateway.admin_addr(),
        "otelgate_sink_rejected_rows_total",
        &[("reason", "database")],
    )
    .await;
    assert_eq!((conversion, database), (2.0, 1.0));
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_lose_and_duplicate_nothing() {
    let pg = TempPostgres::start(false).unwrap();
    let url = format!("{}?application_name=otelgate-sink", pg.url());
    let mut sink = sink_config(&url);
    sink.max_rows = 200;
    let gateway = gateway_with_sink(sink).await;
    let db = connect(&pg.url()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let killer = {
        let stop = stop.clone();
        let url = pg.url();
        tokio::spawn(async move {
            let db = connect(&url).await;
            let mut killed = 0i64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let row = db
                    .query_one(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'otelgate-sink'",
                        &[],
                    )
                    .await
                    .unwrap();
                killed += row.get::<_, i64>(0);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            killed
        })
    };
    let mut generator = otelgate::demo::generator::TelemetryGenerator::new(7);
    let mut frames = 0i64;
    for _ in 0..150 {
        let (request, _) = generator.traces(20);
        frames += 20;
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            request.encode_to_vec().into(),
            &[],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let killed = killer.await.unwrap();
    assert!(
        killed > 0,
        "no connection was killed; the test proved nothing"
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", frames).await,
        frames
    );
    let report = gateway.shutdown().await;
    assert_eq!(
        count(&db, "SELECT count(*) FROM frame_metadata").await,
        frames,
        "duplicates"
    );
    assert_eq!(
        count(&db, "SELECT count(DISTINCT span_id) FROM frame_metadata").await,
        frames
    );
    let sink = report.sink.unwrap();
    assert_eq!(sink.rows_failed, 0);
    println!(
        "killed {killed} connections; {frames} frames arrived once each ({} rows written)",
        sink.rows_written
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_skips_a_replayed_batch() {
    use otelgate::sink::timescale::sink::{copy_batch, pool, Written};
    use otelgate::sink::timescale::{encode_copy, Cell};
    let pg = TempPostgres::start(false).unwrap();
    let config = sink_config(&pg.url());
    // Migrate through a gateway start, then write batches by hand.
    let gateway = gateway_with_sink(config.clone()).await;
    let pool = pool(&config).unwrap();
    let rows: Vec<Vec<Cell>> = (0..3)
        .map(|i| {
            vec![
                Cell::Timestamp(1_700_000_000_000_000_000 + i),
                Cell::Text(format!("cam-{i}")),
            ]
        })
        .collect();
    let data = encode_copy(rows.iter().map(Vec::as_slice), 0);
    let sql = "COPY frame_metadata (time, camera_id) FROM STDIN (FORMAT binary)";
    let id = uuid::Uuid::new_v4();
    assert_eq!(
        copy_batch(&pool, "frame_metadata", sql, &data, id, 3, false)
            .await
            .unwrap(),
        Written::Committed
    );
    assert_eq!(
        copy_batch(&pool, "frame_metadata", sql, &data, id, 3, true)
            .await
            .unwrap(),
        Written::AlreadyCommitted
    );
    let other = uuid::Uuid::new_v4();
    assert_eq!(
        copy_batch(&pool, "frame_metadata", sql, &data, other, 3, true)
            .await
            .unwrap(),
        Written::Committed
    );
    let db = connect(&pg.url()).await;
    assert_eq!(count(&db, "SELECT count(*) FROM frame_metadata").await, 6);
    assert_eq!(count(&db, "SELECT count(*) FROM otelgate_ledger").await, 2);
    gateway.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_are_idempotent_and_safe_when_run_together() {
    use otelgate::sink::timescale::{migrate, Extractor};
    let pg = TempPostgres::start(false).unwrap();
    let config = sink_config(&pg.url());
    let extractor = Extractor::new(&config).unwrap();
    let runs = (0..3).map(|_| {
        let config = config.clone();
        let mappings = extractor.mappings().to_vec();
        let url = pg.url();
        tokio::spawn(async move {
            let mut client = connect(&url).await;
            migrate(&mut client, &config, &mappings).await.unwrap()
        })
    });
    let mut applied = Vec::new();
    for run in runs {
        applied.extend(run.await.unwrap().applied);
    }
    let db = connect(&pg.url()).await;
    let expected = if pg.timescaledb() { 3 } else { 2 };
    assert_eq!(
        applied.len(),
        expected,
        "each migration applied once: {applied:?}"
    );
    assert_eq!(
        count(&db, "SELECT count(*) FROM otelgate_migrations").await,
        expected as i64
    );
    let mut client = connect(&pg.url()).await;
    let again = migrate(&mut client, &config, extractor.mappings())
        .await
        .unwrap();
    assert!(again.applied.is_empty());
}
