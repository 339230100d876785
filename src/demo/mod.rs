//! `otelgate demo`: the gateway on the standard ports forwarding to two in-process backends
//! (one over OTLP/gRPC, one over OTLP/HTTP with an Uptrace-style header), fed for a few
//! seconds with realistic frame, detection and LLM telemetry over OTLP/gRPC. Prints what was
//! acknowledged, what each backend received, throughput and acknowledgement latency.

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

use self::backend::RecordingBackend;
use self::generator::TelemetryGenerator;
use crate::export::otlp::{OtlpExporterConfig, Protocol};
use crate::{Config, Gateway, Signal};

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
}

/// What the clients sent and got acknowledged.
#[derive(Debug, Default)]
struct ClientTally {
    requests: u64,
    spans: u64,
    logs: u64,
    points: u64,
    errors: u64,
    latencies: Vec<Duration>,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    crate::telemetry::init_logging(&crate::telemetry::TelemetryConfig {
        log_level: "warn".into(),
        ..Default::default()
    });
    let lgtm = RecordingBackend::start_with(false).await?;
    let uptrace = RecordingBackend::start_with(true).await?;
    let mut config = Config::default();
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
    config.validate()?;
    let gateway = Gateway::start(config).await.context(
        "the demo needs the standard OTLP ports; pass --grpc/--http/--admin to use others",
    )?;

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

    let stop = Arc::new(AtomicBool::new(false));
    let endpoint = format!("http://{}", gateway.grpc_addr());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut clients = tokio::task::JoinSet::new();
    for connection in 0..args.connections.max(1) {
        let endpoint = endpoint.clone();
        let stop = stop.clone();
        let frames = args.frames_per_request.max(1);
        clients.spawn(send(endpoint, connection as u64, frames, deadline, stop));
    }
    let mut tally = ClientTally::default();
    let collect = async {
        while let Some(joined) = clients.join_next().await {
            let part = joined??;
            tally.requests += part.requests;
            tally.spans += part.spans;
            tally.logs += part.logs;
            tally.points += part.points;
            tally.errors += part.errors;
            tally.latencies.extend(part.latencies);
        }
        anyhow::Ok(())
    };
    tokio::select! {
        result = collect => result?,
        () = ctrl_c() => {
            stop.store(true, Ordering::Relaxed);
            println!("  interrupted; stopping.");
        }
    }
    let sending = started.elapsed();

    // Wait (bounded) for both backends to receive everything that was acknowledged.
    for backend in [&lgtm, &uptrace] {
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
    let reports = gateway.shutdown().await;

    let secs = sending.as_secs_f64();
    println!();
    println!(
        "  {:<22}{:>10}{:>12}{:>10}{:>14}",
        "", "requests", "spans", "logs", "metric points"
    );
    println!(
        "  {:<22}{:>10}{:>12}{:>10}{:>14}",
        "acknowledged", tally.requests, tally.spans, tally.logs, tally.points
    );
    for (name, backend) in [
        ("received by lgtm", &lgtm),
        ("received by uptrace", &uptrace),
    ] {
        println!(
            "  {:<22}{:>10}{:>12}{:>10}{:>14}",
            name,
            backend.requests(),
            backend.items(Signal::Traces),
            backend.items(Signal::Logs),
            backend.items(Signal::Metrics)
        );
    }
    println!();
    println!(
        "  throughput      {:.0} spans/s acknowledged ({:.0} requests/s, {} refused or failed)",
        tally.spans as f64 / secs,
        tally.requests as f64 / secs,
        tally.errors
    );
    tally.latencies.sort_unstable();
    println!(
        "  ack latency     p50 {}  p90 {}  p99 {}  max {}",
        fmt_ms(percentile(&tally.latencies, 0.50)),
        fmt_ms(percentile(&tally.latencies, 0.90)),
        fmt_ms(percentile(&tally.latencies, 0.99)),
        fmt_ms(tally.latencies.last().copied()),
    );
    for report in &reports.exporters {
        println!(
            "  exporter {:<8} delivered {} items, failed {}, undelivered {}",
            report.name, report.delivered, report.failed, report.undelivered
        );
    }
    print_samples(&uptrace);
    Ok(())
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
        let t0 = Instant::now();
        match traces.export(request).await {
            Ok(_) => {
                tally.latencies.push(t0.elapsed());
                tally.requests += 1;
                tally.spans += spans;
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

fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[index])
}

fn fmt_ms(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".into(),
        |d| format!("{:.2} ms", d.as_secs_f64() * 1000.0),
    )
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
