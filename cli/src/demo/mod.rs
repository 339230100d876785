//! `otelgate demo`: a throwaway PostgreSQL (TimescaleDB when installed), migrated; the gateway
//! on the standard ports writing rows into it and forwarding to two in-process backends (one
//! over OTLP/gRPC, one over OTLP/HTTP with an Uptrace-style header); realistic frame,
//! detection and LLM telemetry sent for a few seconds over OTLP/gRPC. Prints what was
//! acknowledged and received, rows per second, latency percentiles and sample rows.

pub mod backend;
pub mod generator;
pub mod postgres;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_client::MetricsServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use otelgate::app::ShutdownReport;
use otelgate::export::otlp::{OtlpExporterConfig, Protocol};
use otelgate::sink::timescale::{LlmPrice, TimescaleSinkConfig};
use otelgate::{Config, Gateway, Signal};

use self::backend::RecordingBackend;
use self::generator::TelemetryGenerator;

/// Options of `otelgate demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// How long to send telemetry.
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// OTLP/gRPC listen address of the gateway.
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub grpc: String,
    /// OTLP/HTTP listen address of the gateway.
    #[arg(long, default_value = "127.0.0.1:4318")]
    pub http: String,
    /// Admin (metrics, health) address of the gateway.
    #[arg(long, default_value = "127.0.0.1:13133")]
    pub admin: String,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// `frame.process` spans per request (plus one LLM span per ten frames).
    #[arg(long, default_value_t = 50)]
    pub frames_per_request: usize,
    /// Skip PostgreSQL: forward to the two backends only.
    #[arg(long)]
    pub no_database: bool,
}

/// What the clients sent and got acknowledged.
#[derive(Debug, Default)]
struct ClientTally {
    requests: u64,
    spans: u64,
    frames: u64,
    detections: u64,
    llm: u64,
    logs: u64,
    points: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

/// Runs the demo. The first Ctrl-C stops the sending and lets the demo report and clean up;
/// a second one quits at once (the throwaway PostgreSQL is still stopped and removed).
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let interrupted = {
        let stop = stop.clone();
        async move {
            ctrl_c().await;
            stop.store(true, Ordering::Relaxed);
            eprintln!("  interrupted: finishing up (Ctrl-C again to quit at once)");
            ctrl_c().await;
        }
    };
    tokio::select! {
        result = run_until(args, stop) => result,
        () = interrupted => {
            eprintln!("  quit; cleaning up");
            Ok(())
        }
    }
}

/// A directory removed when dropped.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run_until(args: DemoArgs, stop: Arc<AtomicBool>) -> anyhow::Result<()> {
    otelgate::telemetry::init_logging(&otelgate::telemetry::TelemetryConfig {
        log_level: "warn".into(),
        ..Default::default()
    });
    let database = if args.no_database {
        None
    } else {
        println!("otelgate demo: starting a throwaway PostgreSQL...");
        let pg = tokio::task::spawn_blocking(|| postgres::TempPostgres::start(true))
            .await?
            .context("the demo needs PostgreSQL's server programs (or pass --no-database)")?;
        Some(pg)
    };
    let lgtm = RecordingBackend::start_with(false).await?;
    let uptrace = RecordingBackend::start_with(true).await?;
    // The durable log lives in a throwaway directory, removed when the demo ends.
    let log_dir =
        TempDir(std::env::temp_dir().join(format!("otelgate-demo-log-{}", std::process::id())));
    let config = gateway_config(&args, &log_dir, &lgtm, &uptrace, database.as_ref())?;
    let gateway = Gateway::start(config).await.context(
        "the demo needs the standard OTLP ports; pass --grpc/--http/--admin to use others",
    )?;
    print_setup(&args, &gateway, &lgtm, &uptrace);

    let endpoint = format!("http://{}", gateway.grpc_addr());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut tally = send_all(&endpoint, &args, deadline, stop).await?;
    let sending = started.elapsed();

    wait_for_backends(&tally, [&lgtm, &uptrace]).await;
    let db = match &database {
        Some(pg) => Some(wait_for_rows(&pg.url(), &tally).await?),
        None => None,
    };
    let reports = gateway.shutdown().await;

    let secs = sending.as_secs_f64();
    print_counts(&tally, &lgtm, &uptrace);
    print_delivery(&mut tally, &reports, secs);
    print_samples(&uptrace);
    if let (Some(db), Some(pg)) = (&db, &database) {
        print_database(db, pg.timescaledb(), &tally, secs).await?;
    }
    Ok(())
}

/// The gateway's configuration: the demo's ports and durable log, both backends as
/// exporters, and the TimescaleDB sink (with LLM prices) when there is a database.
fn gateway_config(
    args: &DemoArgs,
    log_dir: &TempDir,
    lgtm: &RecordingBackend,
    uptrace: &RecordingBackend,
    database: Option<&postgres::TempPostgres>,
) -> anyhow::Result<Config> {
    let mut config = Config::default();
    config.log.dir = log_dir.0.clone();
    config.receiver.grpc_endpoint = args.grpc.clone();
    config.receiver.http_endpoint = args.http.clone();
    config.telemetry.admin_endpoint = args.admin.clone();
    config.exporters.insert(
        "lgtm".into(),
        OtlpExporterConfig::new(lgtm.endpoint(), Protocol::Grpc),
    );
    let mut uptrace_config = OtlpExporterConfig::new(uptrace.endpoint(), Protocol::HttpProtobuf);
    uptrace_config.headers.insert(
        "uptrace-dsn".into(),
        "http://demo_token@localhost:14318?grpc=14317".into(),
    );
    config.exporters.insert("uptrace".into(), uptrace_config);
    if let Some(pg) = database {
        let mut sink = TimescaleSinkConfig::new(pg.url());
        for (model, input, output) in [
            ("gpt-4o-mini", 0.15, 0.6),
            ("gpt-4.1", 2.0, 8.0),
            ("claude-sonnet-4", 3.0, 15.0),
        ] {
            sink.llm_prices.insert(
                model.into(),
                LlmPrice {
                    input_per_million: input,
                    output_per_million: output,
                },
            );
        }
        config.timescale = Some(sink);
    }
    config.validate()?;
    Ok(config)
}

/// Where the gateway and the backends listen, and what is about to be sent.
fn print_setup(
    args: &DemoArgs,
    gateway: &Gateway,
    lgtm: &RecordingBackend,
    uptrace: &RecordingBackend,
) {
    println!("otelgate demo");
    println!(
        "  gateway   OTLP/gRPC {}  OTLP/HTTP {}  metrics http://{}/metrics",
        gateway.grpc_addr(),
        gateway.http_addr(),
        gateway.admin_addr()
    );
    println!(
        "  backends  lgtm (OTLP/gRPC) {}  uptrace (OTLP/HTTP + uptrace-dsn) {}",
        lgtm.endpoint(),
        uptrace.endpoint()
    );
    println!(
        "  sending frame/detection/LLM telemetry for {} s over {} gRPC connections (Ctrl-C stops early)...",
        args.seconds, args.connections
    );
}

/// Sends over every client connection until `deadline` (or `stop`) and adds up what they
/// tallied.
async fn send_all(
    endpoint: &str,
    args: &DemoArgs,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ClientTally> {
    let mut clients = tokio::task::JoinSet::new();
    for connection in 0..args.connections.max(1) {
        let endpoint = endpoint.to_owned();
        let stop = stop.clone();
        let frames = args.frames_per_request.max(1);
        clients.spawn(send(endpoint, connection as u64, frames, deadline, stop));
    }
    let mut tally = ClientTally::default();
    while let Some(joined) = clients.join_next().await {
        tally.add(joined??);
    }
    Ok(tally)
}

impl ClientTally {
    /// Adds another client's counts to these.
    fn add(&mut self, part: ClientTally) {
        self.requests += part.requests;
        self.spans += part.spans;
        self.frames += part.frames;
        self.detections += part.detections;
        self.llm += part.llm;
        self.logs += part.logs;
        self.points += part.points;
        self.errors += part.errors;
        self.latencies.extend(part.latencies);
    }
}

/// Waits (bounded) for both backends to receive everything that was acknowledged.
async fn wait_for_backends(tally: &ClientTally, backends: [&RecordingBackend; 2]) {
    for backend in backends {
        backend
            .wait_for(Signal::Traces, tally.spans, Duration::from_secs(10))
            .await;
        backend
            .wait_for(Signal::Logs, tally.logs, Duration::from_secs(2))
            .await;
        backend
            .wait_for(Signal::Metrics, tally.points, Duration::from_secs(2))
            .await;
    }
}

/// Requests and items acknowledged by the gateway and received by each backend.
fn print_counts(tally: &ClientTally, lgtm: &RecordingBackend, uptrace: &RecordingBackend) {
    println!();
    println!(
        "  {:<22}{:>10}{:>12}{:>10}{:>14}",
        "", "requests", "spans", "logs", "metric points"
    );
    println!(
        "  {:<22}{:>10}{:>12}{:>10}{:>14}",
        "acknowledged", tally.requests, tally.spans, tally.logs, tally.points
    );
    for (name, backend) in [("received by lgtm", lgtm), ("received by uptrace", uptrace)] {
        println!(
            "  {:<22}{:>10}{:>12}{:>10}{:>14}",
            name,
            backend.requests(),
            backend.items(Signal::Traces),
            backend.items(Signal::Logs),
            backend.items(Signal::Metrics)
        );
    }
}

/// Throughput and acknowledgement latency over `secs` of sending, then what each exporter,
/// the sink and the durable log reported at shutdown.
fn print_delivery(tally: &mut ClientTally, reports: &ShutdownReport, secs: f64) {
    println!();
    println!(
        "  throughput      {:.0} spans/s acknowledged ({:.0} requests/s, {} refused or failed)",
        tally.spans as f64 / secs,
        tally.requests as f64 / secs,
        tally.errors
    );
    let ack = crate::load::Percentiles::of(&mut tally.latencies);
    println!(
        "  ack latency     p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        ack.p50, ack.p90, ack.p99, ack.max
    );
    for report in &reports.exporters {
        println!(
            "  exporter {:<8} delivered {} items, failed {}, undelivered {}",
            report.name, report.delivered, report.failed, report.undelivered
        );
    }
    if let Some(report) = &reports.sink {
        println!(
            "  timescale sink   {} rows written, {} rejected, {} failed",
            report.rows_written, report.rows_rejected, report.rows_failed
        );
    }
    if let Some(log) = &reports.log {
        println!(
            "  durable log      {} requests ({:.1} MiB) synced to disk before their ack, in {} group commits ({:.1} requests per fdatasync)",
            log.records,
            log.bytes as f64 / (1024.0 * 1024.0),
            log.syncs,
            log.records as f64 / log.syncs.max(1) as f64
        );
    }
}

async fn send(
    endpoint: String,
    seed: u64,
    frames: usize,
    deadline: Instant,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<ClientTally> {
    let mut traces = TraceServiceClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    let mut logs = LogsServiceClient::connect(endpoint.clone()).await?;
    let mut metrics = MetricsServiceClient::connect(endpoint).await?;
    let mut generator = TelemetryGenerator::new(seed);
    let mut tally = ClientTally::default();
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        let (request, spans) = generator.traces(frames);
        let detections: u64 = request
            .resource_spans
            .iter()
            .flat_map(|r| &r.scope_spans)
            .flat_map(|s| &s.spans)
            .map(|s| s.events.len() as u64)
            .sum();
        let t0 = Instant::now();
        match traces.export(request).await {
            Ok(_) => {
                tally.latencies.push(t0.elapsed());
                tally.requests += 1;
                tally.spans += spans;
                tally.frames += frames as u64;
                tally.llm += (frames / 10) as u64;
                tally.detections += detections;
            }
            Err(_) => tally.errors += 1,
        }
        if tally.requests % 20 == 1 {
            let (request, records) = generator.logs(10);
            if logs.export(request).await.is_ok() {
                tally.requests += 1;
                tally.logs += records;
            }
            let (request, points) = generator.metrics();
            if metrics.export(request).await.is_ok() {
                tally.requests += 1;
                tally.points += points;
            }
        }
    }
    Ok(tally)
}

async fn ctrl_c() {
    if tokio::signal::ctrl_c().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A few spans exactly as the HTTP backend received them.
fn print_samples(backend: &RecordingBackend) {
    let merged: ExportTraceServiceRequest = backend.merged(Signal::Traces);
    let spans = merged
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans);
    let mut frames = 0;
    let mut llm = 0;
    println!("  sample spans as received by uptrace:");
    for span in spans {
        let is_llm = span.name.starts_with("chat ");
        if (is_llm && llm >= 2) || (!is_llm && frames >= 3) {
            continue;
        }
        if is_llm {
            llm += 1
        } else {
            frames += 1
        }
        let attrs: Vec<String> = span
            .attributes
            .iter()
            .take(6)
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(s)) => s.clone(),
                    Some(any_value::Value::IntValue(i)) => i.to_string(),
                    Some(any_value::Value::DoubleValue(d)) => format!("{d:.2}"),
                    Some(other) => format!("{other:?}"),
                    None => "null".into(),
                };
                format!("{}={}", kv.key, value)
            })
            .collect();
        println!(
            "    {:<20} events={} {}",
            span.name,
            span.events.len(),
            attrs.join(" ")
        );
        if frames >= 3 && llm >= 2 {
            break;
        }
    }
}

/// Waits (bounded) until every acknowledged frame, detection and LLM call is a row.
async fn wait_for_rows(url: &str, tally: &ClientTally) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    let expected = tally.frames + tally.detections + tally.llm;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = client
            .query_one(
                "SELECT (SELECT count(*) FROM frame_metadata) + (SELECT count(*) FROM detection_events) + (SELECT count(*) FROM llm_requests)",
                &[],
            )
            .await?;
        let rows: i64 = row.get(0);
        if rows as u64 >= expected || Instant::now() >= deadline {
            return Ok(client);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Rows per second, receive-to-commit latency, and a few rows of each table and aggregate.
async fn print_database(
    db: &tokio_postgres::Client,
    timescaledb: bool,
    tally: &ClientTally,
    secs: f64,
) -> anyhow::Result<()> {
    let counts = db
        .query_one(
            "SELECT (SELECT count(*) FROM frame_metadata), (SELECT count(*) FROM detection_events), (SELECT count(*) FROM llm_requests), (SELECT count(*) FROM otelgate_rejected_rows)",
            &[],
        )
        .await?;
    let (frames, detections, llm, rejected): (i64, i64, i64, i64) =
        (counts.get(0), counts.get(1), counts.get(2), counts.get(3));
    let rows = frames + detections + llm;
    println!();
    println!(
        "  PostgreSQL ({})",
        if timescaledb {
            "TimescaleDB: hypertables, compression, continuous aggregates"
        } else {
            "plain: TimescaleDB is not installed, aggregates are views"
        }
    );
    println!(
        "  rows            frame_metadata {frames}/{}  detection_events {detections}/{}  llm_requests {llm}/{}  rejected {rejected}",
        tally.frames, tally.detections, tally.llm
    );
    println!(
        "  rows/s          {:.0} rows/s over the {secs:.1} s of sending",
        rows as f64 / secs
    );
    // Frames are generated with end = now, so ingested_at - end is the time from the client
    // creating a frame span to its row being committed.
    let latency = db
        .query_one(
            "SELECT percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY ms), max(ms) FROM (
                 SELECT extract(epoch FROM ingested_at - time) * 1000 - processing_ms AS ms FROM frame_metadata) t",
            &[],
        )
        .await?;
    let percentiles: Option<Vec<f64>> = latency.get(0);
    let max: Option<f64> = latency.get(1);
    if let (Some(p), Some(max)) = (percentiles, max) {
        println!(
            "  commit latency  p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  max {:.1} ms (span end to row committed)",
            p[0], p[1], p[2], max
        );
    }
    for (title, sql) in [
        ("frame_metadata", "SELECT time, camera_id, frame_id, sequence, round(processing_ms::numeric, 2) AS processing_ms, status FROM frame_metadata ORDER BY time DESC LIMIT 3"),
        ("detection_events", "SELECT time, camera_id, frame_id, object_class, round(confidence::numeric, 2) AS confidence, track_id FROM detection_events ORDER BY time DESC LIMIT 3"),
        ("llm_requests", "SELECT time, provider, request_model, input_tokens, output_tokens, round(cost_usd::numeric, 5) AS cost_usd FROM llm_requests ORDER BY time DESC LIMIT 3"),
        ("frames_per_camera_hourly", "SELECT bucket, camera_id, frames, round(avg_processing_ms::numeric, 2) AS avg_ms FROM frames_per_camera_hourly ORDER BY bucket DESC, camera_id LIMIT 3"),
        ("detections_per_class_hourly", "SELECT bucket, object_class, detections, round(mean_confidence::numeric, 3) AS mean_confidence FROM detections_per_class_hourly ORDER BY bucket DESC, detections DESC LIMIT 3"),
        ("llm_usage_hourly", "SELECT bucket, request_model, requests, input_tokens, output_tokens, round(cost_usd::numeric, 4) AS cost_usd, round(error_rate::numeric, 3) AS error_rate FROM llm_usage_hourly ORDER BY bucket DESC, request_model LIMIT 3"),
    ] {
        println!();
        println!("  {title}");
        for message in db.simple_query(sql).await? {
            if let tokio_postgres::SimpleQueryMessage::Row(row) = message {
                let cells: Vec<String> = (0..row.len())
                    .map(|i| format!("{}={}", row.columns()[i].name(), row.get(i).unwrap_or("null")))
                    .collect();
                println!("    {}", cells.join("  "));
            }
        }
    }
    Ok(())
}
