//! The durable log under faults. Each test ends with an exact reconciliation of what the client
//! got acknowledged against what every destination received, and prints the counts.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otelgate::demo::backend::RecordingBackend;
use otelgate::demo::generator::TelemetryGenerator;
use otelgate::demo::postgres::TempPostgres;
use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::timescale::{connect, sink_config};
use crate::{config_for, fixture, grpc_export, log_dir, metric, start, WAIT};

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";

/// Span ids of every span, and of frame spans only (one row each in `frame_metadata`).
#[derive(Default)]
struct Acked {
    requests: u64,
    spans: HashSet<Vec<u8>>,
    frames: HashSet<Vec<u8>>,
    refused: HashMap<String, u64>,
}

/// Sends generated frame traffic to `addr` until `stop` fires, one request every `pause`,
/// recording what was acknowledged. Requests that fail are not retried (their fate is
/// unknown to the client, so they are left out of the reconciliation).
fn load(
    addr: std::net::SocketAddr,
    seed: u64,
    pause: Duration,
    stop: CancellationToken,
) -> (Arc<Mutex<Acked>>, tokio::task::JoinHandle<()>) {
    let acked = Arc::new(Mutex::new(Acked::default()));
    let task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut generator = TelemetryGenerator::new(seed);
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            while !stop.is_cancelled() {
                let (request, _) = generator.traces(20);
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                let body: Bytes = request.encode_to_vec().into();
                let result = async {
                    grpc.ready()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    grpc.unary::<Bytes, Bytes, _>(
                        tonic::Request::new(body),
                        http::uri::PathAndQuery::from_static(Signal::Traces.grpc_path()),
                        otelgate::codec::BytesCodec,
                    )
                    .await
                }
                .await;
                {
                    let mut acked = acked.lock().unwrap();
                    match result {
                        Ok(_) => {
                            acked.requests += 1;
                            for span in spans(&request) {
                                if span.name == "frame.process" {
                                    acked.frames.insert(span.span_id.clone());
                                }
                                acked.spans.insert(span.span_id.clone());
                            }
                        }
                        Err(status) => {
                            *acked
                                .refused
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1;
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
        })
    };
    (acked, task)
}

fn spans(
    request: &ExportTraceServiceRequest,
) -> impl Iterator<Item = &opentelemetry_proto::tonic::trace::v1::Span> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
}

/// Span ids a backend received, with how many arrived more than once.
fn received(backend: &RecordingBackend) -> (HashSet<Vec<u8>>, u64) {
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for body in backend.bodies(Signal::Traces) {
        let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        for span in spans(&request) {
            if !seen.insert(span.span_id.clone()) {
                duplicates += 1;
            }
        }
    }
    (seen, duplicates)
}

/// Waits until `backend` has every span in `wanted`; returns how many are missing.
async fn wait_for_spans(
    backend: &RecordingBackend,
    wanted: &HashSet<Vec<u8>>,
    timeout: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let missing = wanted.difference(&received(backend).0).count();
        if missing == 0 || tokio::time::Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Frame rows in PostgreSQL: (rows, distinct span ids, acknowledged frames missing).
async fn frame_rows(db: &tokio_postgres::Client, acked: &HashSet<Vec<u8>>) -> (i64, i64, usize) {
    let rows = db
        .query("SELECT span_id FROM frame_metadata", &[])
        .await
        .unwrap();
    let ids: HashSet<Vec<u8>> = rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect();
    (
        rows.len() as i64,
        ids.len() as i64,
        acked.difference(&ids).count(),
    )
}

async fn wait_for_rows(
    db: &tokio_postgres::Client,
    acked: &HashSet<Vec<u8>>,
    timeout: Duration,
) -> (i64, i64, usize) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = frame_rows(db, acked).await;
        if found.2 == 0 || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// `otelgate run` as a child process with the config file `path`; returns once ready.
pub async fn run_gateway(path: &Path, admin: std::net::SocketAddr) -> tokio::process::Child {
    run_gateway_with(Path::new(env!("CARGO_BIN_EXE_otelgate")), path, admin).await
}

/// `program run --config path` (the binary, or a wrapper that execs it) as a child process;
/// returns once `/readyz` on `admin` answers 200.
pub async fn run_gateway_with(
    program: &Path,
    path: &Path,
    admin: std::net::SocketAddr,
) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(program)
        .args(["run", "--config"])
        .arg(path)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await {
            if r.status().is_success() {
                return child;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("otelgate exited during start-up: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "otelgate never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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
                otelgate::demo::generator::kv_str("camera.id", "cam-bad"),
                otelgate::demo::generator::kv_str("frame.width", "wide"),
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

/// A full log and a disk below its floor: clients get the throttling answer (gRPC
/// RESOURCE_EXHAUSTED with RetryInfo, HTTP 429 with Retry-After), the process stays up.
#[tokio::test]
async fn a_full_log_and_a_disk_floor_throttle_clients() {
    let backend = RecordingBackend::start().await.unwrap();
    backend.set_hanging(true);
    let mut config = config_for(&[("b", &backend, Protocol::Grpc)]);
    config.log.segment_bytes = 32 * 1024;
    config.log.max_bytes = 64 * 1024;
    let gateway = start(config).await;
    let body = Bytes::from(fixture(TRACES));
    let mut accepted = 0;
    let refusal = loop {
        match grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[]).await {
            Ok(()) => accepted += 1,
            Err(status) => break status,
        }
        assert!(accepted < 100, "the log never filled");
    };
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(
        refusal.message().contains("log.max_bytes"),
        "{}",
        refusal.message()
    );
    let details = tonic_types::StatusExt::get_details_retry_info(&refusal);
    assert!(details.is_some(), "RetryInfo missing");
    let http = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", gateway.http_addr()))
        .header("content-type", "application/x-protobuf")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 429);
    assert!(http.headers().contains_key("retry-after"));
    let healthy = reqwest::get(format!("http://{}/healthz", gateway.admin_addr()))
        .await
        .unwrap();
    assert!(healthy.status().is_success());
    let refused = metric(
        gateway.admin_addr(),
        "otelgate_log_refused_requests_total",
        &[("reason", "log_full")],
    )
    .await;
    assert!(refused >= 2.0);
    // The backend returns: the log drains and accepts again.
    backend.set_hanging(false);
    assert!(backend.wait_for(Signal::Traces, accepted * 30, WAIT).await);
    crate::until_accepted(
        gateway.grpc_addr(),
        body.clone(),
        "the log never accepted again",
    )
    .await;
    gateway.shutdown().await;
    println!("log limit: {accepted} requests accepted, then {refused} refused with RESOURCE_EXHAUSTED/429; accepted again after draining");

    // A disk floor higher than any disk: every request is refused, nothing is written.
    let backend = RecordingBackend::start().await.unwrap();
    let mut config = config_for(&[("b", &backend, Protocol::Grpc)]);
    config.log.min_free_bytes = u64::MAX / 2;
    let gateway = start(config).await;
    let refusal = grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
        .await
        .unwrap_err();
    assert_eq!(refusal.code(), tonic::Code::ResourceExhausted);
    assert!(
        refusal.message().contains("log.min_free_bytes"),
        "{}",
        refusal.message()
    );
    assert!(
        reqwest::get(format!("http://{}/healthz", gateway.admin_addr()))
            .await
            .unwrap()
            .status()
            .is_success()
    );
    let floor = metric(
        gateway.admin_addr(),
        "otelgate_log_refused_requests_total",
        &[("reason", "disk_floor")],
    )
    .await;
    assert_eq!(floor, 1.0);
    gateway.shutdown().await;
    assert_eq!(backend.items(Signal::Traces), 0);
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

/// A dead backend with a lag limit: once it is further behind than its limit, its oldest data
/// is dropped for it alone (counted), so the log never fills and clients are never refused;
/// the healthy backend gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_past_its_lag_limit_drops_its_oldest_data_alone() {
    let up = RecordingBackend::start().await.unwrap();
    let dead = RecordingBackend::start().await.unwrap();
    dead.set_hanging(true);
    let mut config = config_for(&[("up", &up, Protocol::Grpc), ("dead", &dead, Protocol::Grpc)]);
    config.log.segment_bytes = 64 * 1024;
    config.log.max_bytes = 512 * 1024;
    config.log.cursor_interval_ms = 50;
    let dead_config = config.exporters.get_mut("dead").unwrap();
    dead_config.timeout_ms = 200;
    dead_config.queue.max_lag_bytes = Some(128 * 1024);
    let gateway = start(config).await;
    let body = Bytes::from(fixture(TRACES));
    let requests = 2 * 512 * 1024 / body.len() as u64;
    for _ in 0..requests {
        grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
            .await
            .expect("never refused: the lagging destination drops instead");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(up.wait_for(Signal::Traces, requests * 30, WAIT).await);
    let admin = gateway.admin_addr();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dropped = metric(
        admin,
        "otelgate_log_dropped_records_total",
        &[("destination", "dead"), ("reason", "lag_limit")],
    )
    .await;
    let dropped_up = metric(
        admin,
        "otelgate_log_dropped_records_total",
        &[("destination", "up")],
    )
    .await;
    let lag_bytes = metric(admin, "otelgate_log_lag_bytes", &[("destination", "dead")]).await;
    let log_bytes = metric(admin, "otelgate_log_bytes", &[]).await;
    dead.set_hanging(false);
    gateway.shutdown().await;
    println!(
        "lag limit: {requests} requests ({} bytes) accepted, none refused; the dead backend \
         dropped {dropped} records, lag {lag_bytes} bytes (limit 131072 + one segment), log \
         {log_bytes} bytes (max 524288); the healthy backend got all {} spans",
        requests * body.len() as u64,
        up.items(Signal::Traces)
    );
    assert!(dropped > 0.0, "nothing dropped for the lagging destination");
    assert_eq!(dropped_up, 0.0, "the healthy destination lost data");
    assert!(
        lag_bytes <= (128 + 2 * 64) as f64 * 1024.0,
        "lag {lag_bytes}"
    );
    assert!(log_bytes <= 512.0 * 1024.0);
}
