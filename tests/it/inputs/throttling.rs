//! A full memory budget answers with OTLP's throttling responses (gRPC RESOURCE_EXHAUSTED with
//! RetryInfo, HTTP 429 with Retry-After) and the gateway keeps serving.

use std::time::Duration;

use bytes::Bytes;
use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;
use prost::Message;
use tonic::Code;
use tonic_types::StatusExt;

use super::TRACES;
use crate::{config_for, fixture, grpc_export, metric, start, WAIT};

#[tokio::test]
async fn a_full_memory_budget_answers_with_the_otlp_throttling_responses() {
    let backend = RecordingBackend::start().await.unwrap();
    backend.set_hanging(true);
    let mut config = config_for(&[("b", &backend, Protocol::Grpc)]);
    config.pipeline.memory_budget_bytes = 20_000;
    config.receiver.max_request_bytes = 20_000;
    config.pipeline.retry_after_seconds = 2;
    // Memory-only: the budget then holds requests until delivered (with the log, only until
    // they are on disk), so a hanging backend fills it.
    config.log.enabled = false;
    let gateway = start(config).await;
    let body = Bytes::from(fixture(TRACES));
    assert!(body.len() > 10_000 && body.len() < 20_000);

    grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
        .await
        .unwrap();
    let throttled = grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
        .await
        .unwrap_err();
    assert_eq!(throttled.code(), Code::ResourceExhausted);
    let retry = throttled
        .get_details_retry_info()
        .expect("RESOURCE_EXHAUSTED must carry RetryInfo to be retried");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(2)));

    let response = reqwest::Client::new()
        .post(format!("http://{}/v1/traces", gateway.http_addr()))
        .header("content-type", "application/x-protobuf")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "2");
    let status = tonic_types::pb::Status::decode(response.bytes().await.unwrap()).unwrap();
    assert_eq!(status.code, Code::ResourceExhausted as i32);
    assert!(
        status.message.contains("memory budget"),
        "{}",
        status.message
    );

    let used = metric(
        gateway.admin_addr(),
        "otelgate_memory_budget_used_bytes",
        &[],
    )
    .await;
    assert_eq!(used, body.len() as f64);
    // The budget is charged while a body arrives, so both were refused before they were
    // complete: counted as requests (their items were never read).
    let refused = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("reason", "memory_budget")],
    )
    .await;
    assert_eq!(refused, 2.0);

    // Once the backend answers, the budget is given back and requests are accepted again.
    backend.set_hanging(false);
    assert!(backend.wait_for(Signal::Traces, 30, WAIT).await);
    crate::until_accepted(gateway.grpc_addr(), body.clone(), "budget never released").await;
    assert!(backend.wait_for(Signal::Traces, 60, WAIT).await);
    gateway.shutdown().await;
}
