//! Backends that hang, fail or throttle: isolation between exporters, retries exactly as the
//! OTLP specification lists them, and nothing acknowledged lost.

use std::time::{Duration, Instant};

use bytes::Bytes;
use otelgate::export::otlp::Protocol;
use otelgate::pipeline::WhenFull;
use otelgate::Signal;
use otelgate_cli::demo::backend::{Failure, RecordingBackend};
use tonic::Code;
use tonic_types::StatusExt;

use crate::{config_for, fixture, grpc_export, metric, start, WAIT};

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";
const SPANS: u64 = 30;

fn traces() -> Bytes {
    Bytes::from(fixture(TRACES))
}

#[tokio::test]
async fn a_hanging_backend_with_drop_policy_never_slows_the_other() {
    let stuck = RecordingBackend::start().await.unwrap();
    let healthy = RecordingBackend::start().await.unwrap();
    stuck.set_hanging(true);
    let mut config = config_for(&[
        ("stuck", &stuck, Protocol::Grpc),
        ("healthy", &healthy, Protocol::Grpc),
    ]);
    let exporter = config.exporters.get_mut("stuck").unwrap();
    exporter.queue.capacity = 2;
    exporter.queue.when_full = WhenFull::Drop;
    exporter.concurrency = 1;
    exporter.timeout_ms = 60_000;
    // Memory-only queues: this policy applies when the durable log is off.
    config.log.enabled = false;
    let gateway = start(config).await;

    let requests = 50;
    let mut slowest = Duration::ZERO;
    for _ in 0..requests {
        let t0 = Instant::now();
        grpc_export(gateway.grpc_addr(), Signal::Traces, traces(), &[])
            .await
            .unwrap();
        slowest = slowest.max(t0.elapsed());
    }
    let total = requests * SPANS;
    assert!(healthy.wait_for(Signal::Traces, total, WAIT).await);
    assert!(
        slowest < Duration::from_secs(1),
        "an ack waited {slowest:?} on the stuck backend"
    );
    let dropped = metric(
        gateway.admin_addr(),
        "otelgate_exporter_dropped_items_total",
        &[("exporter", "stuck")],
    )
    .await as u64;
    assert!(
        dropped > 0,
        "the stuck backend's queue should have overflowed"
    );

    // When it recovers it gets exactly what was not dropped for it.
    stuck.set_hanging(false);
    assert!(stuck.wait_for(Signal::Traces, total - dropped, WAIT).await);
    gateway.shutdown().await;
    assert_eq!(stuck.items(Signal::Traces), total - dropped);
    assert_eq!(healthy.items(Signal::Traces), total);
}

#[tokio::test]
async fn a_hanging_backend_with_block_policy_throttles_clients_and_loses_nothing_acknowledged() {
    let stuck = RecordingBackend::start().await.unwrap();
    let healthy = RecordingBackend::start().await.unwrap();
    stuck.set_hanging(true);
    let mut config = config_for(&[
        ("stuck", &stuck, Protocol::HttpProtobuf),
        ("healthy", &healthy, Protocol::Grpc),
    ]);
    let exporter = config.exporters.get_mut("stuck").unwrap();
    exporter.queue.capacity = 2;
    exporter.queue.block_timeout_ms = 50;
    exporter.concurrency = 1;
    exporter.timeout_ms = 60_000;
    // Memory-only queues: this policy applies when the durable log is off.
    config.log.enabled = false;
    let gateway = start(config).await;

    let mut acknowledged = 0;
    let mut refused = 0;
    for _ in 0..20 {
        match grpc_export(gateway.grpc_addr(), Signal::Traces, traces(), &[]).await {
            Ok(()) => acknowledged += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(
                    status.get_details_retry_info().is_some(),
                    "UNAVAILABLE must carry RetryInfo"
                );
                assert!(status.message().contains("stuck"), "{}", status.message());
                refused += 1;
            }
        }
    }
    assert!(
        refused > 0 && acknowledged > 0,
        "acknowledged {acknowledged}, refused {refused}"
    );
    let refused_metric = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("reason", "queue_full"), ("transport", "grpc")],
    )
    .await;
    assert_eq!(refused_metric, refused as f64);
    // All or nothing: the healthy backend got exactly the acknowledged requests.
    assert!(
        healthy
            .wait_for(Signal::Traces, acknowledged * SPANS, WAIT)
            .await
    );
    stuck.set_hanging(false);
    assert!(
        stuck
            .wait_for(Signal::Traces, acknowledged * SPANS, WAIT)
            .await
    );
    gateway.shutdown().await;
    assert_eq!(healthy.items(Signal::Traces), acknowledged * SPANS);
    assert_eq!(stuck.items(Signal::Traces), acknowledged * SPANS);
}

/// One backend per protocol with `failure` scripted `times` times, one request sent; returns
/// the gateway's admin address (still running) and the backends.
async fn send_against(
    failure: Failure,
    times: usize,
) -> (otelgate::Gateway, RecordingBackend, RecordingBackend) {
    let grpc = RecordingBackend::start().await.unwrap();
    let http = RecordingBackend::start().await.unwrap();
    grpc.fail_next(failure.clone(), times);
    http.fail_next(failure, times);
    let gateway = start(config_for(&[
        ("grpc", &grpc, Protocol::Grpc),
        ("http", &http, Protocol::HttpProtobuf),
    ]))
    .await;
    grpc_export(gateway.grpc_addr(), Signal::Traces, traces(), &[])
        .await
        .unwrap();
    (gateway, grpc, http)
}

#[tokio::test]
async fn unavailable_is_retried_until_delivered() {
    let (gateway, grpc, http) = send_against(Failure::unavailable(), 2).await;
    for (name, backend) in [("grpc", &grpc), ("http", &http)] {
        assert!(
            backend.wait_for(Signal::Traces, SPANS, WAIT).await,
            "{name}"
        );
        assert_eq!(backend.requests(), 3, "{name}: two failures, then success");
        let retries = metric(
            gateway.admin_addr(),
            "otelgate_exporter_retries_total",
            &[("exporter", name)],
        )
        .await;
        assert_eq!(retries, 2.0, "{name}");
        let sent = metric(
            gateway.admin_addr(),
            "otelgate_exporter_sent_items_total",
            &[("exporter", name)],
        )
        .await;
        assert_eq!(sent, SPANS as f64, "{name}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn retry_info_and_retry_after_are_honoured() {
    // The configured backoff is 10-100 ms; only the backend's 1 s delay explains a longer wait.
    let started = Instant::now();
    let (gateway, grpc, http) = send_against(Failure::throttled(Duration::from_secs(1)), 1).await;
    for (name, backend) in [("grpc", &grpc), ("http", &http)] {
        assert!(
            backend.wait_for(Signal::Traces, SPANS, WAIT).await,
            "{name}"
        );
        assert_eq!(backend.requests(), 2, "{name}");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "retried after {:?}",
        started.elapsed()
    );
    gateway.shutdown().await;
}

#[tokio::test]
async fn non_retryable_failures_are_counted_and_not_retried() {
    let cases = [
        Failure::invalid(),
        Failure {
            grpc: Code::Internal,
            http: 500,
            ..Failure::unavailable()
        },
        Failure {
            grpc: Code::ResourceExhausted,
            http: 413,
            ..Failure::unavailable()
        },
    ];
    for (round, failure) in (1..).zip(cases) {
        // Metrics are process-wide: each round adds SPANS to the same counters.
        let (gateway, grpc, http) = send_against(failure.clone(), 1).await;
        for (name, backend) in [("grpc", &grpc), ("http", &http)] {
            let deadline = Instant::now() + WAIT;
            let labels = [("exporter", name), ("reason", "non_retryable")];
            while metric(
                gateway.admin_addr(),
                "otelgate_exporter_failed_items_total",
                &labels,
            )
            .await
                < (round * SPANS) as f64
            {
                assert!(
                    Instant::now() < deadline,
                    "{name}: {failure:?} not counted as failed"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                backend.requests(),
                1,
                "{name}: {failure:?} must not be retried"
            );
            assert_eq!(backend.items(Signal::Traces), 0);
        }
        // The exporters keep working for the next request.
        grpc_export(gateway.grpc_addr(), Signal::Traces, traces(), &[])
            .await
            .unwrap();
        assert!(grpc.wait_for(Signal::Traces, SPANS, WAIT).await);
        assert!(http.wait_for(Signal::Traces, SPANS, WAIT).await);
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn partial_success_is_counted_and_not_retried() {
    let (gateway, grpc, http) = send_against(Failure::partial(7), 1).await;
    for (name, backend) in [("grpc", &grpc), ("http", &http)] {
        assert!(
            backend.wait_for(Signal::Traces, SPANS - 7, WAIT).await,
            "{name}"
        );
        let deadline = Instant::now() + WAIT;
        while metric(
            gateway.admin_addr(),
            "otelgate_exporter_rejected_items_total",
            &[("exporter", name)],
        )
        .await
            < 7.0
        {
            assert!(Instant::now() < deadline, "{name}: rejection not counted");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(backend.requests(), 1, "{name}");
    }
    gateway.shutdown().await;
}

#[tokio::test]
async fn retries_stop_after_the_maximum_elapsed_time() {
    let backend = RecordingBackend::start().await.unwrap();
    backend.fail_next(Failure::unavailable(), 10_000);
    let mut config = config_for(&[("flaky", &backend, Protocol::Grpc)]);
    config
        .exporters
        .get_mut("flaky")
        .unwrap()
        .retry
        .max_elapsed_ms = 300;
    // Memory-only mode: with the durable log on, transient failures are retried until
    // delivered (the log keeps the data), so max_elapsed applies only here.
    config.log.enabled = false;
    let gateway = start(config).await;
    grpc_export(gateway.grpc_addr(), Signal::Traces, traces(), &[])
        .await
        .unwrap();
    let labels = [("exporter", "flaky"), ("reason", "retries_exhausted")];
    let deadline = Instant::now() + WAIT;
    while metric(
        gateway.admin_addr(),
        "otelgate_exporter_failed_items_total",
        &labels,
    )
    .await
        < SPANS as f64
    {
        assert!(Instant::now() < deadline, "batch never given up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(backend.requests() >= 2, "it was retried at least once");
    gateway.shutdown().await;
}

/// Every compression setting reaches a real gRPC or HTTP server as the encoding it names, and
/// the server reads back exactly the bytes the client sent (gzip over gRPC is compressed by
/// the gateway's own level-1 layer, not tonic's).
#[tokio::test]
async fn exporters_compress_as_configured() {
    use otelgate::export::otlp::Compression;
    let cases = [
        (
            Protocol::Grpc,
            Compression::Gzip,
            "grpc-encoding",
            Some("gzip"),
        ),
        (
            Protocol::Grpc,
            Compression::Zstd,
            "grpc-encoding",
            Some("zstd"),
        ),
        (Protocol::Grpc, Compression::None, "grpc-encoding", None),
        (
            Protocol::HttpProtobuf,
            Compression::Gzip,
            "content-encoding",
            Some("gzip"),
        ),
        (
            Protocol::HttpProtobuf,
            Compression::None,
            "content-encoding",
            None,
        ),
    ];
    let body = Bytes::from(fixture(TRACES));
    for (protocol, compression, header, expected) in cases {
        let backend = RecordingBackend::start_with(true).await.unwrap();
        let mut config = config_for(&[("b", &backend, protocol)]);
        config.exporters.get_mut("b").unwrap().compression = compression;
        let gateway = start(config).await;
        grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
            .await
            .unwrap();
        let case = format!("{protocol:?} with {compression:?}");
        assert!(
            backend.wait_for(Signal::Traces, SPANS, WAIT).await,
            "{case}"
        );
        let headers = backend.last_headers().unwrap();
        assert_eq!(
            headers.get(header).map(|v| v.to_str().unwrap()),
            expected,
            "{case}"
        );
        assert_eq!(backend.bodies(Signal::Traces), vec![body.clone()], "{case}");
        gateway.shutdown().await;
    }
}

#[tokio::test]
async fn exporter_headers_reach_the_backend() {
    let grpc = RecordingBackend::start().await.unwrap();
    let http = RecordingBackend::start().await.unwrap();
    let mut config = config_for(&[
        ("grpc", &grpc, Protocol::Grpc),
        ("http", &http, Protocol::HttpProtobuf),
    ]);
    for exporter in config.exporters.values_mut() {
        exporter.headers.insert(
            "uptrace-dsn".into(),
            "https://token@uptrace.example/1".into(),
        );
    }
    let gateway = start(config).await;
    grpc_export(gateway.grpc_addr(), Signal::Traces, traces(), &[])
        .await
        .unwrap();
    for backend in [&grpc, &http] {
        assert!(backend.wait_for(Signal::Traces, SPANS, WAIT).await);
        let headers = backend.last_headers().unwrap();
        assert_eq!(headers["uptrace-dsn"], "https://token@uptrace.example/1");
    }
    gateway.shutdown().await;
}
