//! OTLP spans and log records become typed rows exactly once, with their values; records
//! that do not fit their table are kept aside as rejected rows and the rest arrive.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use otelgate::sink::timescale::LlmPrice;
use otelgate::Signal;
use otelgate_cli::demo::postgres::TempPostgres;
use prost::Message;

use super::{connect, count, gateway_with_sink, sink_config, traces, wait_count, TRACES};
use crate::{fixture, grpc_export, metric};

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
    let now = otelgate_cli::demo::generator::now_nanos();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_kept_aside_and_the_rest_arrive() {
    use otelgate_cli::demo::generator::{kv_f64, kv_int, kv_str};
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
    // The refused row is kept as its cells, read back from the COPY data.
    let refused: serde_json::Value = rejected[2].get(2);
    let cells = refused["row"].as_array().expect("the refused row's cells");
    assert!(
        cells.contains(&serde_json::json!(-1)) && cells.contains(&serde_json::json!("cam-1")),
        "{refused}"
    );
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
async fn frame_and_detection_log_records_become_rows() {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use otelgate_cli::demo::generator::{kv_f64, kv_int, kv_str};
    let pg = TempPostgres::start(false).unwrap();
    let gateway = gateway_with_sink(sink_config(&pg.url())).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let records = vec![
        LogRecord {
            time_unix_nano: now,
            event_name: "frame".into(),
            severity_text: "INFO".into(),
            attributes: vec![
                kv_str("camera.id", "cam-7"),
                kv_str("frame.id", "f-1"),
                kv_int("frame.width", 640),
            ],
            ..Default::default()
        },
        // Older SDKs name events with the `event.name` attribute.
        LogRecord {
            observed_time_unix_nano: now,
            attributes: vec![
                kv_str("event.name", "detection"),
                kv_str("camera.id", "cam-7"),
                kv_str("object.class", "forklift"),
                kv_f64("detection.confidence", 0.9),
            ],
            ..Default::default()
        },
        LogRecord {
            time_unix_nano: now,
            event_name: "other".into(),
            ..Default::default()
        },
    ];
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/logs", gateway.http_addr()))
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&request).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let db = connect(&pg.url()).await;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM detection_events", 1).await,
        1
    );
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 1).await,
        1
    );
    let frame = db
        .query_one(
            "SELECT camera_id, frame_id, width, status FROM frame_metadata",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(frame.get::<_, String>(0), "cam-7");
    assert_eq!(frame.get::<_, String>(1), "f-1");
    assert_eq!(frame.get::<_, i64>(2), 640);
    assert_eq!(frame.get::<_, String>(3), "INFO");
    let detection = db
        .query_one("SELECT object_class, confidence FROM detection_events", &[])
        .await
        .unwrap();
    assert_eq!(detection.get::<_, String>(0), "forklift");
    assert_eq!(detection.get::<_, f64>(1), 0.9);
    gateway.shutdown().await;
}

/// `transaction_settings` are set in the sink's own transactions (the default
/// `backend_flush_after` included, values quoted whatever they hold), not in other sessions;
/// a setting PostgreSQL does not know, or a value it refuses, stops the start with a message
/// naming the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_settings_apply_to_the_sinks_transactions_only() {
    // Plain PostgreSQL: TimescaleDB refuses a column whose default is not a constant on a
    // hypertable with compression, and the columns below are how the test sees the settings.
    let pg = TempPostgres::start_with(false, false).unwrap();
    let mut sink = sink_config(&pg.url());
    sink.transaction_settings.insert(
        "otelgate_test.marker".into(),
        "it's 'quoted'; \\ too".into(),
    );
    let gateway = gateway_with_sink(sink).await;
    let db = connect(&pg.url()).await;
    // Columns the sink's COPY does not name take their defaults inside its transaction.
    db.batch_execute(
        "ALTER TABLE frame_metadata \
           ADD COLUMN flush_after text DEFAULT current_setting('backend_flush_after'), \
           ADD COLUMN marker text DEFAULT current_setting('otelgate_test.marker', true)",
    )
    .await
    .unwrap();
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        fixture(TRACES).into(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 20).await,
        20
    );
    let seen: Vec<(String, Option<String>, i64)> = db
        .query(
            "SELECT flush_after, marker, count(*) FROM frame_metadata GROUP BY 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        seen,
        vec![(
            "256kB".to_owned(),
            Some("it's 'quoted'; \\ too".to_owned()),
            20
        )]
    );
    let elsewhere: String = db
        .query_one("SHOW backend_flush_after", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(elsewhere, "0");
    gateway.shutdown().await;

    for (name, value, expected) in [
        (
            "no_such_setting",
            "1",
            "unrecognized configuration parameter",
        ),
        ("backend_flush_after", "lots", "invalid value"),
    ] {
        let mut sink = sink_config(&pg.url());
        sink.transaction_settings.insert(name.into(), value.into());
        let config = super::config_with_sink(sink);
        config.validate().expect("the names are well formed");
        let error = match otelgate::Gateway::start(config).await {
            Ok(_) => panic!("started with {name} = {value}"),
            Err(error) => format!("{error:#}"),
        };
        assert!(
            error.contains("timescale.transaction_settings") && error.contains(expected),
            "{error}"
        );
    }
}
