//! The ledger across restarts of a real `otelgate run`: a mapping changed between a crash and
//! the restart, and pruning by the sink's saved cursor.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use otelgate::Signal;
use otelgate_cli::demo::generator::{kv_int, kv_str, now_nanos};
use otelgate_cli::demo::postgres::TempPostgres;
use prost::Message;

use crate::durable::{free_port, run_gateway};
use crate::timescale::{connect, count, wait_count};
use crate::{grpc_export, log_dir, metric, WAIT};

/// `frame.legacy` events into `frame_metadata`; `selection` is added to the mapping.
fn config(
    dir: &Path,
    url: &str,
    ports: [std::net::SocketAddr; 3],
    cursor_ms: u64,
    selection: &str,
) -> String {
    let [grpc, http, admin] = ports;
    format!(
        r#"
[receiver]
grpc_endpoint = "{grpc}"
http_endpoint = "{http}"
[telemetry]
admin_endpoint = "{admin}"
[log]
dir = "{dir}"
cursor_interval_ms = {cursor_ms}
[timescale]
url = "{url}"
max_wait_ms = 5
max_rows = 8
[[timescale.mappings]]
table = "frame_metadata"
record = "log"
name = "frame.legacy"
{selection}
columns = [
  {{ name = "camera_id", type = "text", from = "attribute:cam" }},
  {{ name = "frame_id", type = "text", from = "attribute:fid" }},
]
"#,
        dir = dir.join("log").display(),
    )
}

/// A request with two `frame.legacy` events and one built-in `frame` event.
fn frames(tag: &str, n: usize) -> Bytes {
    let now = now_nanos();
    let record = |event: &str, attributes| LogRecord {
        time_unix_nano: now,
        event_name: event.into(),
        attributes,
        ..Default::default()
    };
    let records = vec![
        record(
            "frame.legacy",
            vec![
                kv_str("cam", "cam-1"),
                kv_str("fid", format!("{tag}-{n}-a")),
            ],
        ),
        record(
            "frame",
            vec![
                kv_str("camera.id", "cam-2"),
                kv_str("frame.id", format!("{tag}-{n}-b")),
                kv_int("frame.sequence", n as i64),
            ],
        ),
        record(
            "frame.legacy",
            vec![
                kv_str("cam", "cam-1"),
                kv_str("fid", format!("{tag}-{n}-c")),
            ],
        ),
    ];
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
    .into()
}

async fn skipped(admin: std::net::SocketAddr, reason: &str) -> f64 {
    metric(
        admin,
        "otelgate_sink_replay_skipped_rows_total",
        &[("reason", reason)],
    )
    .await
}

/// Every row of 20 requests is committed, the gateway is killed before it saves its cursor,
/// and it restarts with the user mapping changed. The replay skips the built-in mapping's
/// rows by row (same definition) and the changed mapping's rows by record, counting them
/// under `mapping_changed`: nothing is written twice. Later records use the new definition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_changed_between_a_crash_and_the_restart_writes_nothing_twice() {
    let pg = TempPostgres::start(false).unwrap();
    let dir = log_dir();
    let ports = [free_port(), free_port(), free_port()];
    let path = dir.join("otelgate.toml");
    // The cursor is saved at start-up only: the restart replays every record.
    std::fs::write(&path, config(&dir, &pg.url(), ports, 600_000, "")).unwrap();
    let db = connect(&pg.url()).await;
    let mut first = run_gateway(&path, ports[2]).await;
    for n in 0..20 {
        grpc_export(ports[0], Signal::Logs, frames("before", n), &[])
            .await
            .unwrap();
    }
    let all = "SELECT count(*) FROM frame_metadata";
    assert_eq!(wait_count(&db, all, 60).await, 60);
    first.start_kill().unwrap();
    first.wait().await.unwrap();

    std::fs::write(
        &path,
        config(
            &dir,
            &pg.url(),
            ports,
            600_000,
            r#"where = { cam = "cam-1" }"#,
        ),
    )
    .unwrap();
    let mut second = run_gateway(&path, ports[2]).await;
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    while skipped(ports[2], "mapping_changed").await < 40.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the changed mapping's replayed rows were not counted: {}",
            skipped(ports[2], "mapping_changed").await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(skipped(ports[2], "committed").await, 20.0);
    assert_eq!(skipped(ports[2], "mapping_changed").await, 40.0);
    for n in 0..5 {
        grpc_export(ports[0], Signal::Logs, frames("after", n), &[])
            .await
            .unwrap();
    }
    assert_eq!(wait_count(&db, all, 75).await, 75);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&db, all).await, 75, "rows written twice");
    assert_eq!(
        count(&db, "SELECT count(DISTINCT frame_id) FROM frame_metadata").await,
        75
    );
    second.start_kill().unwrap();
    second.wait().await.unwrap();
}

/// The sink prunes its own ledger rows once they end before its saved cursor, whatever their
/// age, keeps other gateways' rows, and prunes rows written without a log by age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_rows_are_pruned_by_the_saved_cursor_not_by_age() {
    let pg = TempPostgres::start(false).unwrap();
    let dir = log_dir();
    let ports = [free_port(), free_port(), free_port()];
    let path = dir.join("otelgate.toml");
    std::fs::write(&path, config(&dir, &pg.url(), ports, 100, "")).unwrap();
    let db = connect(&pg.url()).await;
    let mut first = run_gateway(&path, ports[2]).await;
    for n in 0..10 {
        grpc_export(ports[0], Signal::Logs, frames("prune", n), &[])
            .await
            .unwrap();
    }
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", 30).await,
        30
    );
    // A clean stop saves the cursor past every record.
    let pid = first.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert!(first.wait().await.unwrap().success());
    let own = "SELECT count(*) FROM otelgate_ledger WHERE log_id IS NOT NULL \
               AND log_id <> '00000000-0000-0000-0000-00000000beef'";
    let written = count(&db, own).await;
    assert!(written > 0, "no ledger rows to prune");
    db.batch_execute(
        "INSERT INTO otelgate_ledger (batch_id, table_name, row_count, committed_at, log_id, first_seq, first_row, last_seq, last_row) VALUES
           (gen_random_uuid(), 'frame_metadata', 1, now() - interval '1000 hours', '00000000-0000-0000-0000-00000000beef', 0, 0, 0, 0),
           (gen_random_uuid(), 'frame_metadata', 1, now() - interval '1000 hours', NULL, NULL, NULL, NULL, NULL),
           (gen_random_uuid(), 'frame_metadata', 1, now(), NULL, NULL, NULL, NULL, NULL)",
    )
    .await
    .unwrap();

    let mut second = run_gateway(&path, ports[2]).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while count(&db, own).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "own rows not pruned"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM otelgate_ledger WHERE log_id = '00000000-0000-0000-0000-00000000beef'"
        )
        .await,
        1,
        "another gateway's row was pruned"
    );
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM otelgate_ledger WHERE log_id IS NULL"
        )
        .await,
        1,
        "rows without a log are pruned by age, only"
    );
    second.start_kill().unwrap();
    second.wait().await.unwrap();
}
