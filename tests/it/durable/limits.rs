//! The log's limits: a full log and a disk below its floor throttle clients, and a destination
//! past its lag limit drops its oldest data alone.

use std::time::Duration;

use bytes::Bytes;
use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;

use super::TRACES;
use crate::{config_for, fixture, grpc_export, metric, start, WAIT};

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

/// A destination with `queue.throttle_lag_ms`: while it keeps up nothing is throttled; once it
/// lags past the bound (its oldest unfinished request is older than the bound, or its backlog
/// would take longer than the bound at the rate it has been finishing requests, which can come
/// first), new requests of the signals it takes get the throttling answer on both transports
/// (and are counted), other signals are still accepted, and once it catches up requests are
/// accepted again. Everything acknowledged reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_past_its_throttle_lag_throttles_until_it_catches_up() {
    let slow = RecordingBackend::start().await.unwrap();
    let logs = RecordingBackend::start().await.unwrap();
    let mut config = config_for(&[
        ("slow", &slow, Protocol::Grpc),
        ("logs", &logs, Protocol::Grpc),
    ]);
    let slow_config = config.exporters.get_mut("slow").unwrap();
    slow_config.signals = vec![Signal::Traces];
    slow_config.timeout_ms = 200;
    slow_config.queue.throttle_lag_ms = Some(300);
    config.exporters.get_mut("logs").unwrap().signals = vec![Signal::Logs];
    let gateway = start(config).await;
    let traces = Bytes::from(fixture(TRACES));
    let spans = Signal::Traces.count_protobuf(&traces).unwrap();
    let mut accepted = 0u64;
    // Requests at the pace the loop below sends them: a destination that keeps up
    // is never throttled.
    for _ in 0..10 {
        grpc_export(gateway.grpc_addr(), Signal::Traces, traces.clone(), &[])
            .await
            .expect("accepted while the destination keeps up");
        accepted += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(slow.wait_for(Signal::Traces, accepted * spans, WAIT).await);

    slow.set_hanging(true);
    let hung = std::time::Instant::now();
    let refusal = loop {
        match grpc_export(gateway.grpc_addr(), Signal::Traces, traces.clone(), &[]).await {
            Ok(()) => accepted += 1,
            Err(status) => break status,
        }
        assert!(hung.elapsed() < WAIT, "never throttled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let throttled_after = hung.elapsed();
    // The answer says how far behind the destination is: past the bound.
    let behind_ms: u64 = refusal
        .message()
        .split("about ")
        .nth(1)
        .and_then(|rest| rest.split(" ms behind").next())
        .and_then(|ms| ms.parse().ok())
        .unwrap_or_else(|| panic!("no lag in {:?}", refusal.message()));
    // (Whole milliseconds, rounded down: a lag just past 300 ms reads 300.)
    assert!(
        behind_ms >= 300,
        "throttled {behind_ms} ms behind, not past the bound"
    );
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert!(
        refusal.message().contains("`slow`") && refusal.message().contains("throttle_lag_ms (300)"),
        "{}",
        refusal.message()
    );
    assert!(tonic_types::StatusExt::get_details_retry_info(&refusal).is_some());
    let http = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", gateway.http_addr()))
        .header("content-type", "application/x-protobuf")
        .body(traces.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 429);
    assert!(http.headers().contains_key("retry-after"));
    grpc_export(
        gateway.grpc_addr(),
        Signal::Logs,
        Bytes::from(fixture("otlp-sdk-payloads/logs.pb")),
        &[],
    )
    .await
    .expect("a signal the lagging destination does not take is accepted");
    let admin = gateway.admin_addr();
    let refused = metric(
        admin,
        "otelgate_receiver_refused_requests_total",
        &[("signal", "traces"), ("reason", "lag_throttle")],
    )
    .await;
    assert!(refused >= 2.0, "refusals counted: {refused}");

    slow.set_hanging(false);
    let recovered = std::time::Instant::now();
    loop {
        match grpc_export(gateway.grpc_addr(), Signal::Traces, traces.clone(), &[]).await {
            Ok(()) => {
                accepted += 1;
                break;
            }
            Err(status) => assert_eq!(status.code(), tonic::Code::ResourceExhausted),
        }
        assert!(
            recovered.elapsed() < WAIT,
            "still throttled after the destination recovered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        slow.wait_for(Signal::Traces, accepted * spans, WAIT).await,
        "acknowledged spans lost: {} of {}",
        slow.items(Signal::Traces),
        accepted * spans
    );
    println!(
        "throttle lag: throttled {throttled_after:?} after the destination hung (bound 300 ms), \
         {refused} refusals, accepted again {:?} after it recovered; {accepted} requests accepted, \
         all delivered",
        recovered.elapsed()
    );
    gateway.shutdown().await;
}
