//! Crashes: `kill -9` in the middle of a steady load, and a record torn by a crash at the end
//! of the log; every acknowledged record is delivered, none twice.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;
use otelgate_cli::demo::postgres::TempPostgres;
use tokio_util::sync::CancellationToken;

use super::{
    frame_rows, free_port, load, received, run_gateway, wait_for_rows, wait_for_spans, TRACES,
};
use crate::timescale::connect;
use crate::{config_for, fixture, grpc_export, log_dir, metric, start, WAIT};

/// kill -9 in the middle of a steady load, then a restart: every acknowledged span reaches
/// both backends (one of them was hanging, so it had a backlog when the process died) and
/// every acknowledged frame is one row in PostgreSQL, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_and_duplicates_nothing() {
    let pg = TempPostgres::start(false).unwrap();
    let a = RecordingBackend::start().await.unwrap();
    let b = RecordingBackend::start().await.unwrap();
    b.set_hanging(true);
    let (grpc, http, admin) = (free_port(), free_port(), free_port());
    let dir = log_dir();
    let config = format!(
        r#"
[receiver]
grpc_endpoint = "{grpc}"
http_endpoint = "{http}"
[telemetry]
admin_endpoint = "{admin}"
[pipeline]
shutdown_timeout_seconds = 5
[log]
dir = "{dir}"
# Saved cursors lag by up to a second: a restart replays rows already committed, which the
# ledger must skip.
cursor_interval_ms = 1000
[exporters.a]
endpoint = "{a}"
protocol = "grpc"
timeout_ms = 1000
[exporters.a.batch]
max_wait_ms = 5
[exporters.b]
endpoint = "{b}"
protocol = "http/protobuf"
timeout_ms = 300
[exporters.b.batch]
max_wait_ms = 5
[exporters.b.retry]
initial_backoff_ms = 10
max_backoff_ms = 100
[timescale]
url = "{url}"
max_wait_ms = 5
max_rows = 200
# Several writer connections commit batches of the same tables in parallel, out of order.
pool_size = 4
"#,
        dir = dir.display(),
        a = a.endpoint(),
        b = b.endpoint(),
        url = pg.url(),
    );
    let path = dir.join("otelgate.toml");
    std::fs::write(&path, config).unwrap();
    let db = connect(&pg.url()).await;

    let mut first = run_gateway(&path, admin).await;
    let stop = CancellationToken::new();
    let (acked, sender) = load(grpc, 41, Duration::from_millis(3), stop.clone());
    tokio::time::sleep(Duration::from_millis(1400)).await;
    // Three frames that cannot be converted (a width that is no number), just before the
    // kill: their rejections are written to otelgate_rejected_rows, and the replay after
    // the restart must not write them again.
    for i in 0..3u8 {
        let bad = crate::timescale::traces(vec![opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: vec![0xbd; 16],
            span_id: vec![0xbd, i, 0, 0, 0, 0, 0, 1],
            name: "frame.process".into(),
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: vec![
                otelgate_cli::demo::generator::kv_str("camera.id", "cam-bad"),
                otelgate_cli::demo::generator::kv_str("frame.width", "wide"),
            ],
            ..Default::default()
        }]);
        grpc_export(grpc, Signal::Traces, bad, &[]).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    first.start_kill().unwrap();
    first.wait().await.unwrap();
    stop.cancel();
    sender.await.unwrap();
    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
    let at_kill_b = acked.spans.difference(&received(&b).0).count();
    let at_kill_rows = frame_rows(&db, &acked.frames).await;
    assert!(
        acked.requests >= 20,
        "too little load: {} requests",
        acked.requests
    );
    assert!(
        at_kill_b > 0,
        "the hanging backend had no backlog; the test proves nothing"
    );

    b.set_hanging(false);
    let mut second = run_gateway(&path, admin).await;
    let missing_a = wait_for_spans(&a, &acked.spans, WAIT * 3).await;
    let missing_b = wait_for_spans(&b, &acked.spans, WAIT * 3).await;
    let (rows, distinct, missing_rows) = wait_for_rows(&db, &acked.frames, WAIT * 3).await;
    let replayed = metric(admin, "otelgate_log_replayed_records_total", &[]).await;
    let skipped = metric(admin, "otelgate_sink_replay_skipped_rows_total", &[]).await;
    // Let the sink finish anything replayed, then stop cleanly.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pid = second.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, second.wait())
        .await
        .unwrap()
        .unwrap();
    let (rows_after, distinct_after, _) = frame_rows(&db, &acked.frames).await;
    let (_, dup_a) = received(&a);
    let (_, dup_b) = received(&b);
    println!(
        "kill -9: acknowledged {} requests, {} spans, {} frames (refused or unanswered: {:?}); \
         at the kill, backend b lacked {at_kill_b} spans and PostgreSQL {} frames. \
         After restart: a missing {missing_a} (duplicates {dup_a}), b missing {missing_b} \
         (duplicates {dup_b}), PostgreSQL {rows_after} rows / {distinct_after} distinct, missing {missing_rows}; \
         {replayed} records replayed, {skipped} rows skipped by the ledger",
        acked.requests,
        acked.spans.len(),
        acked.frames.len(),
        acked.refused,
        at_kill_rows.2,
    );
    assert!(status.success(), "clean exit after the restart: {status:?}");
    assert_eq!(
        (missing_a, missing_b, missing_rows),
        (0, 0, 0),
        "acknowledged data lost"
    );
    assert_eq!(rows, distinct, "duplicate rows after the replay");
    assert_eq!(rows_after, distinct_after, "duplicate rows after shutdown");
    let rejected = crate::timescale::count(
        &db,
        "SELECT count(*) FROM otelgate_rejected_rows WHERE reason <> '' AND record::text LIKE '%cam-bad%'",
    )
    .await;
    assert_eq!(rejected, 3, "each rejected frame kept once");
    for (table, key) in [
        ("detection_events", "(span_id, time)"),
        ("llm_requests", "span_id"),
    ] {
        let all = crate::timescale::count(&db, &format!("SELECT count(*) FROM {table}")).await;
        let once =
            crate::timescale::count(&db, &format!("SELECT count(DISTINCT {key}) FROM {table}"))
                .await;
        assert!(all > 0, "no rows in {table}");
        assert_eq!(all, once, "duplicate rows in {table}");
    }
    assert!(replayed > 0.0, "nothing was replayed after kill -9");
}

/// A torn record at the end of the log (a crash in the middle of a write): at the next start it
/// is detected, cut off and counted, and every intact record is delivered.
#[tokio::test]
async fn a_corrupt_tail_is_truncated_and_the_rest_delivered() {
    let backend = RecordingBackend::start().await.unwrap();
    backend.set_hanging(true);
    let dir = log_dir();
    let mut config = config_for(&[("b", &backend, Protocol::Grpc)]);
    config.log.dir = dir.clone();
    config.pipeline.shutdown_timeout_seconds = 1;
    config.exporters.get_mut("b").unwrap().timeout_ms = 200;
    let gateway = start(config.clone()).await;
    let body = Bytes::from(fixture(TRACES));
    for _ in 0..5 {
        grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
            .await
            .unwrap();
    }
    let report = gateway.shutdown().await;
    assert_eq!(
        report.undelivered(),
        0,
        "with the log nothing is lost at shutdown"
    );
    assert_eq!(report.kept_in_log, vec![("b".to_owned(), 5)]);

    // Tear the last record: cut it in the middle, as a crash during the write would.
    let segment = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    let len = std::fs::metadata(&segment).unwrap().len();
    let cut = (body.len() / 2) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .unwrap()
        .set_len(len - cut)
        .unwrap();

    backend.set_hanging(false);
    let gateway = start(config).await;
    assert!(backend.wait_for(Signal::Traces, 4 * 30, WAIT).await);
    let truncated = metric(
        gateway.admin_addr(),
        "otelgate_log_truncated_bytes_total",
        &[],
    )
    .await;
    let replayed = metric(
        gateway.admin_addr(),
        "otelgate_log_replayed_records_total",
        &[("destination", "b")],
    )
    .await;
    // New data still flows after the repair.
    grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
        .await
        .unwrap();
    assert!(backend.wait_for(Signal::Traces, 5 * 30, WAIT).await);
    gateway.shutdown().await;
    let record = body.len() as u64 + otelgate::pipeline::log::segment::RECORD_HEADER as u64;
    println!(
        "corrupt tail: 5 requests acknowledged, last record torn; {truncated} bytes truncated, \
         {replayed} records replayed, backend got {} spans",
        backend.items(Signal::Traces)
    );
    assert_eq!(
        truncated,
        (record - cut) as f64,
        "the torn record's remaining bytes"
    );
    assert_eq!(replayed, 4.0);
    assert_eq!(
        backend.items(Signal::Traces),
        5 * 30,
        "4 intact records + 1 new, none twice"
    );
}
