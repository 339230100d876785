//! Every gateway metric the dashboards and alerts use is a metric of `src/telemetry.rs` and is
//! exported after a load run that makes each situation it describes happen.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use otelgate::export::otlp::Protocol;
use otelgate::pipeline::WhenFull;
use otelgate::Signal;
use otelgate_cli::demo::backend::{Failure, RecordingBackend};
use otelgate_cli::demo::postgres::TempPostgres;
use prost::Message;

use super::prometheus::used_metrics;
use super::{read, TRACES};
use crate::timescale::{connect, count, sink_config, wait_count};
use crate::{config_for, fixture, grpc_export, metric, start, WAIT};

/// Gateway metrics a short healthy run cannot produce, with the reason; still checked to be
/// metric names the code defines.
const NOT_IN_A_HEALTHY_RUN: [(&str, &str); 3] = [
    (
        "otelgate_sink_failed_rows_total",
        "rows are given up only after timescale.max_elapsed_ms of database failures",
    ),
    (
        "otelgate_sink_retries_total",
        "needs a transient database failure (covered by the sink's own fault tests)",
    ),
    (
        "otelgate_sink_ledger_skips_total",
        "needs a batch retried after its commit landed (see the_ledger_skips_a_replayed_batch)",
    ),
];

/// Metric names defined as constants in src/telemetry.rs.
fn telemetry_names() -> BTreeSet<String> {
    read("src/telemetry.rs")
        .lines()
        .filter_map(|line| {
            line.trim()
                .strip_prefix("pub const ")?
                .split_once(": &str = \"")
        })
        .map(|(_, value)| value.trim_end_matches("\";").to_owned())
        .filter(|value| value.starts_with("otelgate_"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_metrics_are_exported_after_a_load_run() {
    use otelgate_cli::demo::generator::{kv_str, TelemetryGenerator};

    let pg = TempPostgres::start(false).unwrap();
    let backend = RecordingBackend::start().await.unwrap();
    let stuck = RecordingBackend::start().await.unwrap();
    stuck.set_hanging(true);
    let mut config = config_for(&[
        ("lgtm", &backend, Protocol::Grpc),
        ("stuck", &stuck, Protocol::Grpc),
    ]);
    // lgtm takes no metrics, so a metrics request has no destination (refused items).
    config.exporters.get_mut("lgtm").unwrap().signals = vec![Signal::Traces, Signal::Logs];
    let stuck_config = config.exporters.get_mut("stuck").unwrap();
    stuck_config.signals = vec![Signal::Logs];
    stuck_config.queue.capacity = 1;
    stuck_config.queue.when_full = WhenFull::Drop;
    stuck_config.concurrency = 1;
    stuck_config.batch.max_wait_ms = 0;
    config.timescale = Some(sink_config(&pg.url()));
    // Memory-only queues, so the `drop` policy produces dropped items (with the durable log
    // the log is the buffer and nothing is dropped).
    config.log.enabled = false;
    let gateway = start(config).await;
    let grpc = gateway.grpc_addr();

    // A retry, a non-retryable failure and a partial success from the backend.
    backend.fail_next(Failure::unavailable(), 1);
    backend.fail_next(Failure::invalid(), 1);
    backend.fail_next(Failure::partial(1), 1);
    let mut generator = TelemetryGenerator::new(11);
    for _ in 0..6 {
        let (request, _) = generator.traces(5);
        grpc_export(grpc, Signal::Traces, request.encode_to_vec().into(), &[])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    grpc_export(grpc, Signal::Traces, Bytes::from(fixture(TRACES)), &[])
        .await
        .unwrap();
    // Logs fill the stuck destination's queue: later ones are dropped for it.
    for _ in 0..4 {
        let (request, _) = generator.logs(5);
        grpc_export(grpc, Signal::Logs, request.encode_to_vec().into(), &[])
            .await
            .unwrap();
    }
    // A frame whose width is no number: kept aside as a rejected row.
    let bad = crate::timescale::traces(vec![opentelemetry_proto::tonic::trace::v1::Span {
        trace_id: vec![7; 16],
        span_id: vec![7; 8],
        name: "frame.process".into(),
        start_time_unix_nano: 1,
        end_time_unix_nano: 2,
        attributes: vec![
            kv_str("camera.id", "cam-bad"),
            kv_str("frame.width", "wide"),
        ],
        ..Default::default()
    }]);
    grpc_export(grpc, Signal::Traces, bad, &[]).await.unwrap();
    // Refusals: garbage, and metrics nobody takes.
    assert!(grpc_export(
        grpc,
        Signal::Traces,
        Bytes::from_static(b"\xff\xff not protobuf"),
        &[]
    )
    .await
    .is_err());
    let (metrics_request, _) = generator.metrics();
    assert!(grpc_export(
        grpc,
        Signal::Metrics,
        metrics_request.encode_to_vec().into(),
        &[]
    )
    .await
    .is_err());

    let db = connect(&pg.url()).await;
    assert!(wait_count(&db, "SELECT count(*) FROM frame_metadata", 50).await >= 50);
    let wanted = [
        "otelgate_exporter_retries_total",
        "otelgate_exporter_failed_items_total",
        "otelgate_exporter_rejected_items_total",
        "otelgate_exporter_dropped_items_total",
        "otelgate_sink_rejected_rows_total",
        "otelgate_receiver_refused_items_total",
    ];
    let deadline = tokio::time::Instant::now() + WAIT;
    let exported = loop {
        let exported = exported_series(gateway.admin_addr()).await;
        if wanted.iter().all(|w| exported.series.contains(*w))
            || tokio::time::Instant::now() >= deadline
        {
            break exported;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stuck.set_hanging(false);
    gateway.shutdown().await;

    // The durable log's metrics, from gateways with the log, in the same process (the
    // Prometheus recorder is process-wide, so /metrics shows both runs).
    let durable = durable_log_run(&pg).await;
    let exported = Exported {
        series: exported.series.union(&durable.series).cloned().collect(),
        histograms: exported
            .histograms
            .union(&durable.histograms)
            .cloned()
            .collect(),
    };

    let defined = telemetry_names();
    let mut missing = Vec::new();
    for (name, origins) in used_metrics(&["otelgate_"]) {
        // A histogram's series carry a suffix; the constant names the histogram.
        let suffixed = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|b| defined.contains(*b)));
        let base = suffixed.unwrap_or(&name);
        assert!(
            defined.contains(base),
            "{name} (used by {origins:?}) is not a metric of src/telemetry.rs"
        );
        if suffixed.is_some() && !NOT_IN_A_HEALTHY_RUN.iter().any(|(n, _)| *n == base) {
            assert!(
                exported.histograms.contains(base),
                "{name}: {base} is not exported as a histogram"
            );
        }
        if let Some((_, why)) = NOT_IN_A_HEALTHY_RUN.iter().find(|(n, _)| *n == base) {
            println!(
                "EXCLUDED {name}: {why} (used by {} expressions)",
                origins.len()
            );
            continue;
        }
        if !exported.series.contains(&name) {
            missing.push(format!("{name} (used by {origins:?})"));
        }
    }
    assert!(
        missing.is_empty(),
        "used but not exported after the load run: {missing:#?}\nexported: {:#?}",
        exported.series
    );
    let used = used_metrics(&["otelgate_"]);
    for (name, _) in NOT_IN_A_HEALTHY_RUN {
        assert!(
            used.keys().any(|u| u.starts_with(name)),
            "stale exclusion {name}"
        );
    }
    println!(
        "{} otelgate metric names used by dashboards and rules, all exported",
        used.len()
    );
}

/// Polls `name{labels}` on `admin` until `done` holds for it (or [`WAIT`] passes); returns it.
async fn wait_metric(
    admin: std::net::SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    done: impl Fn(f64) -> bool,
) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let value = metric(admin, name, labels).await;
        if done(value) || tokio::time::Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The durable log's part of the load run, each situation its metrics describe made to happen
/// and checked:
///
/// 1. a gateway with its log, the TimescaleDB sink, a healthy backend, a hanging backend that
///    holds the log (lag) and a hanging backend past its `max_lag_bytes` (dropped records);
/// 2. a restart on the same directory after a torn write (a cut tail) and with the sink's
///    cursor as a crash before its next save leaves it (replayed records, replayed rows the
///    sink skips by its ledger), with a disk floor no disk has (refused requests).
///
/// Write failures (`reason="io"`) are the one situation left out: the name is the same
/// counter as the refusals above, and its alert is covered by promtool's tests.
async fn durable_log_run(pg: &TempPostgres) -> Exported {
    let backend = RecordingBackend::start().await.unwrap();
    let holding = RecordingBackend::start().await.unwrap();
    let lagging = RecordingBackend::start().await.unwrap();
    holding.set_hanging(true);
    lagging.set_hanging(true);
    let mut config = config_for(&[
        ("lgtm", &backend, Protocol::Grpc),
        ("holding", &holding, Protocol::Grpc),
        ("lagging", &lagging, Protocol::Grpc),
    ]);
    config.timescale = Some(sink_config(&pg.url()));
    config.pipeline.shutdown_timeout_seconds = 1;
    config.log.segment_bytes = 64 * 1024;
    config.log.cursor_interval_ms = 50;
    for name in ["holding", "lagging"] {
        config.exporters.get_mut(name).unwrap().timeout_ms = 200;
    }
    config
        .exporters
        .get_mut("lagging")
        .unwrap()
        .queue
        .max_lag_bytes = Some(128 * 1024);
    let dir = config.log.dir.clone();
    let db = connect(&pg.url()).await;
    let frames_before = count(&db, "SELECT count(*) FROM frame_metadata").await;

    let gateway = start(config.clone()).await;
    let admin = gateway.admin_addr();
    // The sink's cursor as saved at start, before it wrote anything.
    let sink_cursor = dir.join("cursors").join("timescale");
    let cursor_at_start = std::fs::read(&sink_cursor).expect("the sink's cursor file");
    let body = Bytes::from(fixture(TRACES));
    let requests: u64 = 24; // 24 x 14 KiB: past the lag limit, over several segments
    for _ in 0..requests {
        grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
            .await
            .expect("the log accepts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let frames = frames_before + 20 * requests as i64;
    assert_eq!(
        wait_count(&db, "SELECT count(*) FROM frame_metadata", frames).await,
        frames
    );
    assert!(
        backend.wait_for(Signal::Traces, requests * 30, WAIT).await,
        "the healthy backend did not get every span"
    );
    let dropped = wait_metric(
        admin,
        "otelgate_log_dropped_records_total",
        &[("destination", "lagging"), ("reason", "lag_limit")],
        |v| v > 0.0,
    )
    .await;
    let lag_records = wait_metric(
        admin,
        "otelgate_log_lag_records",
        &[("destination", "holding")],
        |v| v >= requests as f64,
    )
    .await;
    let lag_age = wait_metric(
        admin,
        "otelgate_log_lag_age_seconds",
        &[("destination", "holding")],
        |v| v > 0.0,
    )
    .await;
    let report = gateway.shutdown().await;
    assert!(dropped > 0.0, "nothing dropped past the lag limit");
    assert_eq!(lag_records, requests as f64, "lag of the holding backend");
    assert!(lag_age > 0.0, "no lag age for the holding backend");
    assert!(
        report
            .kept_in_log
            .iter()
            .any(|(name, records)| name == "holding" && *records == requests),
        "the holding backend's backlog is not kept in the log: {:?}",
        report.kept_in_log
    );

    // A write torn by a crash: part of a record after the last synced one.
    let segment = std::fs::read_dir(dir.join("log"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max()
        .expect("a log segment");
    let torn = [0xA5u8; 7];
    std::fs::OpenOptions::new()
        .append(true)
        .open(&segment)
        .unwrap()
        .write_all(&torn)
        .unwrap();
    // A crash between the sink's commits and its next cursor save: every row is replayed.
    std::fs::write(&sink_cursor, &cursor_at_start).unwrap();
    let mut restart = config;
    restart.log.min_free_bytes = u64::MAX / 2;
    let gateway = start(restart).await;
    let admin = gateway.admin_addr();
    let truncated = metric(admin, "otelgate_log_truncated_bytes_total", &[]).await;
    let skipped = wait_metric(
        admin,
        "otelgate_sink_replay_skipped_rows_total",
        &[("table", "frame_metadata")],
        |v| v >= 20.0 * requests as f64,
    )
    .await;
    let replayed_sink = metric(
        admin,
        "otelgate_log_replayed_records_total",
        &[("destination", "timescale")],
    )
    .await;
    let replayed_holding = wait_metric(
        admin,
        "otelgate_log_replayed_records_total",
        &[("destination", "holding")],
        |v| v > 0.0,
    )
    .await;
    let refusal = grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
        .await
        .expect_err("below the disk floor");
    let refused = metric(
        admin,
        "otelgate_log_refused_requests_total",
        &[("reason", "disk_floor")],
    )
    .await;
    let frames_after = count(&db, "SELECT count(*) FROM frame_metadata").await;
    let exported = exported_series(admin).await;
    gateway.shutdown().await;
    println!(
        "durable log: {requests} requests; {dropped} records dropped past the lag limit; \
         holding backend {lag_records} records behind ({lag_age:.2} s); after a torn write \
         {truncated} bytes cut; {replayed_sink} records replayed to the sink, which skipped \
         {skipped} frame rows; {replayed_holding} replayed to the holding backend; {refused} \
         refused below the disk floor"
    );
    assert_eq!(truncated, torn.len() as f64, "the torn bytes are cut");
    assert_eq!(
        replayed_sink, requests as f64,
        "the sink reads everything again"
    );
    assert_eq!(
        skipped,
        20.0 * requests as f64,
        "every frame row is skipped"
    );
    assert_eq!(frames_after, frames, "replayed rows were written twice");
    assert!(
        replayed_holding > 0.0,
        "nothing replayed to the holding backend"
    );
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert_eq!(refused, 1.0);
    exported
}

/// What a gateway's /metrics exports.
struct Exported {
    series: BTreeSet<String>,
    histograms: BTreeSet<String>,
}

async fn exported_series(admin: std::net::SocketAddr) -> Exported {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    let histograms = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .map(str::to_owned)
        .collect();
    Exported { series, histograms }
}
