//! The gateway as an operator sees it: the command line, config errors, health and readiness,
//! and shutdown that drains queues or reports exactly what it could not deliver.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;

use crate::{config_for, fixture, grpc_export, start, WAIT};

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";

#[tokio::test]
async fn shutdown_drains_queues_before_stopping() {
    let backend = RecordingBackend::start().await.unwrap();
    backend.set_hanging(true);
    let gateway = start(config_for(&[("b", &backend, Protocol::Grpc)])).await;
    for _ in 0..5 {
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            Bytes::from(fixture(TRACES)),
            &[],
        )
        .await
        .unwrap();
    }
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        backend.set_hanging(false);
        backend
    });
    let reports = gateway.shutdown().await;
    let backend = release.await.unwrap();
    assert_eq!(reports.exporters.len(), 1);
    assert_eq!(reports.exporters[0].delivered, 150);
    assert_eq!(reports.undelivered(), 0);
    assert_eq!(backend.items(Signal::Traces), 150);
}

#[tokio::test]
async fn shutdown_deadline_reports_what_was_not_delivered() {
    let backend = RecordingBackend::start().await.unwrap();
    backend.set_hanging(true);
    let mut config = config_for(&[("b", &backend, Protocol::Grpc)]);
    config.pipeline.shutdown_timeout_seconds = 1;
    // Memory-only queues: what is not delivered at the deadline is lost and reported.
    config.log.enabled = false;
    let exporter = config.exporters.get_mut("b").unwrap();
    exporter.concurrency = 1;
    exporter.batch.max_items = 30;
    let gateway = start(config).await;
    for _ in 0..4 {
        grpc_export(
            gateway.grpc_addr(),
            Signal::Traces,
            Bytes::from(fixture(TRACES)),
            &[],
        )
        .await
        .unwrap();
    }
    let started = std::time::Instant::now();
    let reports = gateway.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    assert_eq!(reports.exporters[0].delivered, 0);
    assert_eq!(
        reports.undelivered(),
        120,
        "every accepted span is accounted for"
    );
}

#[tokio::test]
async fn health_readiness_and_metrics_endpoints() {
    let backend = RecordingBackend::start().await.unwrap();
    let gateway = start(config_for(&[("lgtm", &backend, Protocol::Grpc)])).await;
    let admin = gateway.admin_addr();
    let health = reqwest::get(format!("http://{admin}/healthz"))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = reqwest::get(format!("http://{admin}/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let details: serde_json::Value = serde_json::from_slice(&ready.bytes().await.unwrap()).unwrap();
    assert_eq!(details["status"], "ready");
    assert_eq!(details["exporters"][0]["name"], "lgtm");
    assert!(details["memory_budget"]["limit_bytes"].as_u64().unwrap() > 0);
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        Bytes::from(fixture(TRACES)),
        &[],
    )
    .await
    .unwrap();
    assert!(backend.wait_for(Signal::Traces, 30, WAIT).await);
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "otelgate_receiver_accepted_items_total",
        "otelgate_exporter_sent_items_total",
        "otelgate_exporter_queue_depth",
        "otelgate_exporter_batch_items_bucket",
        "otelgate_exporter_latency_seconds_bucket",
        "otelgate_memory_budget_limit_bytes",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}");
    }
    gateway.shutdown().await;
}

fn otelgate() -> std::process::Command {
    std::process::Command::new(crate::otelgate_binary())
}

#[test]
fn check_config_names_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[exporters.lgtm]\nendpoint = \"http://127.0.0.1:4317\"\ncompresion = \"gzip\"\n", "compresion"),
        ("[exporters.lgtm]\nendpoint = \"http://127.0.0.1:4317\"\n[exporters.lgtm.headers]\nuptrace-dsn = \"${NOT_SET_ANYWHERE}\"\n", "NOT_SET_ANYWHERE"),
        ("[receiver]\nhttp_endpoint = \"localhost\"\n[exporters.x]\nendpoint = \"http://a:1\"\n", "receiver.http_endpoint"),
    ];
    for (text, expected) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).unwrap();
        let output = otelgate()
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(expected),
            "expected {expected} in: {stderr}"
        );
    }
    let example = format!("{}/otelgate.example.toml", env!("CARGO_MANIFEST_DIR"));
    let output = otelgate()
        .args(["check-config", "--config", &example])
        .env("UPTRACE_DSN", "https://token@uptrace.example/1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for command in [
        &["--help"][..],
        &["run", "--help"],
        &["check-config", "--help"],
        &["demo", "--help"],
    ] {
        assert!(
            otelgate().args(command).output().unwrap().status.success(),
            "{command:?}"
        );
    }
}

/// `otelgate run` as a process: environment overrides (among them the runtime's threads, which
/// are set before the runtime starts), serving, and a clean exit on SIGTERM after delivering
/// what it accepted.
#[tokio::test]
async fn run_serves_until_sigterm_and_drains() {
    let backend = RecordingBackend::start().await.unwrap();
    let free = |_| crate::durable::free_port();
    let [grpc, http, admin]: [std::net::SocketAddr; 3] = std::array::from_fn(free);
    let threads = std::thread::available_parallelism().unwrap().get() + 1;
    let mut child = tokio::process::Command::new(crate::otelgate_binary())
        .arg("run")
        .env("OTELGATE_RECEIVER__GRPC_ENDPOINT", grpc.to_string())
        .env("OTELGATE_RECEIVER__HTTP_ENDPOINT", http.to_string())
        .env("OTELGATE_TELEMETRY__ADMIN_ENDPOINT", admin.to_string())
        .env("OTELGATE_TELEMETRY__LOG_FORMAT", "json")
        .env("OTELGATE_EXPORTERS__LGTM__ENDPOINT", backend.endpoint())
        .env("OTELGATE_LOG__DIR", crate::log_dir())
        // One more than the default (one per core).
        .env("OTELGATE_PIPELINE__WORKER_THREADS", threads.to_string())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while reqwest::get(format!("http://{admin}/readyz"))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "otelgate run never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    grpc_export(grpc, Signal::Traces, Bytes::from(fixture(TRACES)), &[])
        .await
        .unwrap();
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(backend.items(Signal::Traces), 30);
    let mut stderr = String::new();
    tokio::io::AsyncReadExt::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr)
        .await
        .unwrap();
    assert!(
        stderr.lines().any(|l| l.starts_with('{')
            && l.contains("otelgate is ready")
            && l.contains(&format!(r#""worker_threads":{threads}"#))),
        "{stderr}"
    );
}
