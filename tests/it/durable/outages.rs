//! Destinations down for a while: PostgreSQL stopped under load, an OTLP backend down; the
//! others keep their pace, and the one that was down catches up.

use std::sync::Arc;
use std::time::Duration;

use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;
use otelgate_cli::demo::postgres::TempPostgres;
use tokio_util::sync::CancellationToken;

use super::{load, wait_for_rows, wait_for_spans};
use crate::timescale::{connect, sink_config};
use crate::{config_for, metric, start, WAIT};

/// PostgreSQL stopped for two seconds under load: the OTLP exporter keeps its pace meanwhile,
/// and once PostgreSQL is back the backlog drains with every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_drains_afterwards_and_exporters_keep_their_rate() {
    // Durable settings: with synchronous_commit off, an immediate stop loses commits
    // PostgreSQL had already acknowledged, which no client can make up for.
    let pg = TempPostgres::start(true).unwrap();
    let backend = RecordingBackend::start().await.unwrap();
    let mut config = config_for(&[("a", &backend, Protocol::Grpc)]);
    config.timescale = Some(sink_config(&pg.url()));
    let gateway = start(config).await;
    let db = connect(&pg.url()).await;
    let stop = CancellationToken::new();
    let (acked, sender) = load(
        gateway.grpc_addr(),
        42,
        Duration::from_millis(5),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(db);
    pg.stop_immediately().unwrap();
    let (acked_at_stop, backend_at_stop) = (
        acked.lock().unwrap().spans.len(),
        backend.items(Signal::Traces),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (acked_at_start, backend_at_start) = (
        acked.lock().unwrap().spans.len(),
        backend.items(Signal::Traces),
    );
    let lag = metric(
        gateway.admin_addr(),
        "otelgate_log_lag_records",
        &[("destination", "timescale")],
    )
    .await;
    pg.start_again().unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    sender.await.unwrap();
    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
    let db = connect(&pg.url()).await;
    let (rows, distinct, missing_rows) = wait_for_rows(&db, &acked.frames, WAIT * 3).await;
    let missing_spans = wait_for_spans(&backend, &acked.spans, WAIT).await;
    let report = gateway.shutdown().await;
    let during_outage_acked = (acked_at_start - acked_at_stop) as u64;
    let during_outage_exported = backend_at_start - backend_at_stop;
    println!(
        "PostgreSQL outage: acknowledged {} requests, {} spans, {} frames; during the 2 s outage \
         {during_outage_acked} spans acknowledged and {during_outage_exported} exported to the \
         OTLP backend; sink lag at the end of the outage {lag} records; afterwards PostgreSQL \
         {rows} rows / {distinct} distinct, missing {missing_rows}; backend missing {missing_spans}",
        acked.requests,
        acked.spans.len(),
        acked.frames.len()
    );
    assert!(lag > 0.0, "the sink showed no lag during the outage");
    assert!(
        during_outage_exported * 10 >= during_outage_acked * 8,
        "the OTLP exporter slowed down while PostgreSQL was away"
    );
    assert_eq!((missing_rows, missing_spans), (0, 0));
    assert_eq!(rows, distinct, "duplicate rows");
    assert_eq!(report.sink.unwrap().rows_failed, 0);
}

/// One OTLP backend down for a while: its lag grows, the other gets everything on time, and
/// it catches up when it returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_down_for_a_while_lags_alone_and_catches_up() {
    let up = RecordingBackend::start().await.unwrap();
    let down = RecordingBackend::start().await.unwrap();
    down.set_hanging(true);
    let mut config = config_for(&[
        ("up", &up, Protocol::Grpc),
        ("down", &down, Protocol::HttpProtobuf),
    ]);
    config.exporters.get_mut("down").unwrap().timeout_ms = 200;
    let gateway = start(config).await;
    let admin = gateway.admin_addr();
    let stop = CancellationToken::new();
    let (acked, sender) = load(
        gateway.grpc_addr(),
        43,
        Duration::from_millis(5),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    sender.await.unwrap();
    let acked = Arc::try_unwrap(acked).ok().unwrap().into_inner().unwrap();
    let missing_up = wait_for_spans(&up, &acked.spans, WAIT).await;
    tokio::time::sleep(Duration::from_millis(400)).await; // a cursor save
    let lag_down = metric(
        admin,
        "otelgate_log_lag_records",
        &[("destination", "down")],
    )
    .await;
    let lag_up = metric(admin, "otelgate_log_lag_records", &[("destination", "up")]).await;
    let age_down = metric(
        admin,
        "otelgate_log_lag_age_seconds",
        &[("destination", "down")],
    )
    .await;
    let received_down = down.items(Signal::Traces);
    down.set_hanging(false);
    let missing_down = wait_for_spans(&down, &acked.spans, WAIT * 2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lag_after = metric(
        admin,
        "otelgate_log_lag_records",
        &[("destination", "down")],
    )
    .await;
    gateway.shutdown().await;
    println!(
        "backend down: acknowledged {} requests / {} spans; up missing {missing_up}, lag {lag_up}; \
         down had {received_down} spans, lag {lag_down} records (oldest {age_down:.1} s); after \
         it returned: missing {missing_down}, lag {lag_after}",
        acked.requests,
        acked.spans.len()
    );
    assert_eq!(missing_up, 0, "the healthy backend was held back");
    assert_eq!(lag_up, 0.0);
    assert!(
        lag_down > 0.0 && age_down > 0.0,
        "the down backend showed no lag"
    );
    assert_eq!(received_down, 0);
    assert_eq!(missing_down, 0, "the returning backend did not catch up");
    assert_eq!(lag_after, 0.0);
}
