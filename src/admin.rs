//! The admin endpoint: `/metrics` (Prometheus text), `/healthz` (the process serves and can
//! recover by itself: 503 once the durable log has failed for good, which only a restart
//! clears) and `/readyz` (the gateway accepts data; JSON details of every destination queue
//! and the memory budget, the durable log and the database; 503 while starting, shutting
//! down, or when the durable log cannot be written).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::pipeline::log::{Log, LogStatus};
use crate::pipeline::{MemoryBudget, QueueStats};
use crate::sink::timescale::SchemaInfo;

/// What the admin endpoint reports on.
#[derive(Debug)]
pub struct AdminState {
    /// True between start-up and the start of shutdown.
    pub ready: AtomicBool,
    pub queues: Vec<Arc<QueueStats>>,
    pub budget: MemoryBudget,
    /// What the TimescaleDB sink found in the database, when configured.
    pub database: Option<SchemaInfo>,
    /// The durable log, when on. Not ready if it cannot be written.
    pub log: Option<Arc<Log>>,
}

pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics() -> Response {
    let body = crate::telemetry::prometheus().render();
    (
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        body,
    )
        .into_response()
}

async fn healthz(State(state): State<Arc<AdminState>>) -> Response {
    match state.log.as_ref().and_then(|log| log.failure()) {
        None => "ok\n".into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the durable log failed ({why}); restart the gateway\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let ready =
        state.ready.load(Ordering::Relaxed) && state.log.as_ref().is_none_or(|log| log.healthy());
    let exporters: Vec<_> = state
        .queues
        .iter()
        .map(|q| serde_json::json!({ "name": q.name(), "queue_depth": q.depth(), "queue_bytes": q.bytes() }))
        .collect();
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not ready" },
        "exporters": exporters,
        "memory_budget": { "used_bytes": state.budget.used(), "limit_bytes": state.budget.limit() },
        "log": state.log.as_ref().map(|log| log_json(&log.status())),
        "database": state.database.as_ref().map(|d| serde_json::json!({
            "timescaledb": d.timescaledb,
            "warning": d.warning(),
        })),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The `log` field of `/readyz`.
fn log_json(status: &LogStatus) -> serde_json::Value {
    let destinations: Vec<_> = status
        .destinations
        .iter()
        .map(|lag| {
            serde_json::json!({
                "name": &*lag.name,
                "lag_records": lag.records,
                "lag_bytes": lag.bytes,
            })
        })
        .collect();
    serde_json::json!({
        "dir": status.dir,
        "bytes": status.bytes,
        "max_bytes": status.max_bytes,
        "segments": status.segments,
        "records": status.records,
        "failed": status.failure,
        "destinations": destinations,
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use http::Request;
    use http_body_util::BodyExt;
    use serde_json::json;
    use tower::ServiceExt;

    use super::*;
    use crate::pipeline::log::segment::{RECORD_HEADER, SEGMENT_HEADER};
    use crate::pipeline::log::LogConfig;
    use crate::pipeline::{queue, Payload};
    use crate::Signal;

    #[tokio::test]
    async fn readyz_reports_the_log_and_each_destinations_lag() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            dir: dir.path().to_owned(),
            min_free_bytes: 0,
            ..LogConfig::default()
        };
        let log = Arc::new(Log::open(&config).unwrap());
        let (tx, _rx) = queue("dest", 16);
        let _reader = log
            .reader(
                "dest",
                &[Signal::Logs],
                tx,
                crate::pipeline::LagLimits::default(),
                1 << 20,
            )
            .unwrap();
        let budget = MemoryBudget::new(1 << 20);
        let appender = log.take_appender().unwrap();
        for _ in 0..2 {
            let body = bytes::Bytes::from_static(b"0123456789");
            let permit = budget.try_admit(body.len()).unwrap();
            let payload = Arc::new(Payload::new(Signal::Logs, body, 1, permit));
            appender.append(payload).await.unwrap();
        }
        let state = Arc::new(AdminState {
            ready: AtomicBool::new(true),
            queues: Vec::new(),
            budget,
            database: None,
            log: Some(log),
        });
        let request = Request::get("/readyz").body(Body::empty()).unwrap();
        let response = router(state).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let record = (RECORD_HEADER + 10) as u64;
        assert_eq!(
            body["log"],
            json!({
                "dir": dir.path(),
                "bytes": SEGMENT_HEADER + 2 * record,
                "max_bytes": config.max_bytes,
                "segments": 1,
                "records": 2,
                "failed": null,
                "destinations": [{ "name": "dest", "lag_records": 2, "lag_bytes": 2 * record }],
            })
        );
        assert_eq!(body["status"], "ready");
    }
}
