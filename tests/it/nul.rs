//! U+0000 in records bound for PostgreSQL, which cannot store it in `text` or `jsonb`: in a
//! mapped text column, in an unmapped attribute's value and in an attribute's key, each is
//! written as U+FFFD, the rows arrive, a rejected record with one is kept, and the
//! replacements are counted.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Span;
use otelgate::Signal;
use otelgate_cli::demo::generator::{kv_str, now_nanos};
use otelgate_cli::demo::postgres::TempPostgres;
use prost::Message;
use serde_json::json;

use crate::timescale::{connect, gateway_with_sink, sink_config, traces, wait_count};
use crate::{grpc_export, metric};

const NUL_REPLACED: &str = "otelgate_sink_nul_replaced_total";

fn span(name: &str, seq: u8, attributes: Vec<(&str, &str)>) -> Span {
    let now = now_nanos();
    Span {
        trace_id: vec![seq; 16],
        span_id: vec![seq; 8],
        name: name.into(),
        start_time_unix_nano: now - 5_000_000,
        end_time_unix_nano: now,
        attributes: attributes.into_iter().map(|(k, v)| kv_str(k, v)).collect(),
        ..Default::default()
    }
}

/// `traces` from the TimescaleDB tests, with a NUL in the resource's `service.name`.
fn traces_from_service(service: &str, spans: Vec<Span>) -> Bytes {
    let mut request =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
            traces(spans),
        )
        .unwrap();
    request.resource_spans[0].resource = Some(Resource {
        attributes: vec![kv_str("service.name", service)],
        ..Default::default()
    });
    request.encode_to_vec().into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_characters_are_written_as_the_replacement_character() {
    let pg = TempPostgres::start(false).unwrap();
    let mut sink = sink_config(&pg.url());
    sink.mappings = vec![toml::from_str(
        r#"
        table = "checkouts"
        record = "span"
        name = "checkout"
        columns = [{ name = "amount", type = "float8", from = "attribute:amount", required = true }]"#,
    )
    .unwrap()];
    let gateway = gateway_with_sink(sink).await;
    let spans = vec![
        span(
            "frame.process",
            1,
            vec![("camera.id", "cam\0-1"), ("note", "a\0b"), ("k\0", "v")],
        ),
        // Rejected (not a number), with NULs in its record.
        span("checkout", 2, vec![("amount", "abc"), ("why\0", "x\0")]),
    ];
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        traces_from_service("svc\0", spans),
        &[],
    )
    .await
    .unwrap();
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: now_nanos(),
                    event_name: "frame".into(),
                    severity_text: "IN\0FO".into(),
                    attributes: vec![kv_str("camera.id", "cam-2"), kv_str("\0", "\0\0")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    grpc_export(
        gateway.grpc_addr(),
        Signal::Logs,
        logs.encode_to_vec().into(),
        &[],
    )
    .await
    .unwrap();

    let db = connect(&pg.url()).await;
    let frames = "SELECT count(*) FROM frame_metadata";
    assert_eq!(wait_count(&db, frames, 2).await, 2);
    let rejected = "SELECT count(*) FROM otelgate_rejected_rows";
    assert_eq!(wait_count(&db, rejected, 1).await, 1);
    let rows = db
        .query(
            "SELECT camera_id, status, service_name, attributes FROM frame_metadata ORDER BY span_id NULLS LAST",
            &[],
        )
        .await
        .unwrap();
    let r = '\u{FFFD}';
    let read = |i: usize| {
        let row = &rows[i];
        (
            row.get::<_, Option<String>>(0),
            row.get::<_, Option<String>>(1),
            row.get::<_, Option<String>>(2),
            row.get::<_, serde_json::Value>(3),
        )
    };
    assert_eq!(
        read(0),
        (
            Some(format!("cam{r}-1")),
            Some("unset".into()),
            Some(format!("svc{r}")),
            json!({ "note": format!("a{r}b"), format!("k{r}"): "v" }),
        )
    );
    assert_eq!(
        read(1),
        (
            Some("cam-2".into()),
            Some(format!("IN{r}FO")),
            None,
            json!({ r.to_string(): format!("{r}{r}") }),
        )
    );
    let record: serde_json::Value = db
        .query_one("SELECT record FROM otelgate_rejected_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(record["service_name"], json!(format!("svc{r}")));
    assert_eq!(
        record["attributes"],
        json!({ "amount": "abc", format!("why{r}"): format!("x{r}") })
    );

    let admin = gateway.admin_addr();
    // The span's row: camera_id, service_name, a value and a key; the log's: status, a key
    // and a value with two.
    assert_eq!(
        metric(admin, NUL_REPLACED, &[("table", "frame_metadata")]).await,
        8.0
    );
    // The rejected record: service name, key, value. Its unfinished `checkouts` row is not
    // counted.
    assert_eq!(
        metric(admin, NUL_REPLACED, &[("table", "otelgate_rejected_rows")]).await,
        3.0
    );
    assert_eq!(
        metric(admin, NUL_REPLACED, &[("table", "checkouts")]).await,
        0.0
    );
    let report = gateway.shutdown().await.sink.unwrap();
    assert_eq!((report.rows_written, report.rows_rejected), (2, 1));
}
