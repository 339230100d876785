//! OTLP/HTTP: `POST /v1/traces`, `/v1/metrics` and `/v1/logs` with protobuf or JSON bodies,
//! gzip or zstd compressed. Answers in the request's encoding; errors carry a `google.rpc.Status`
//! body as the OTLP specification asks, and throttling answers a `Retry-After` header.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use prost::Message;

use super::body::{read_limited, Compression};
use super::{record_refusal, BodyFormat, Ingest, IngestError, Transport};
use crate::Signal;

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

/// The OTLP/HTTP router.
pub fn router(ingest: Arc<Ingest>) -> Router {
    let mut router = Router::new();
    for signal in Signal::ALL {
        router = router.route(
            signal.http_path(),
            post(
                move |State(ingest): State<Arc<Ingest>>, headers: HeaderMap, body: Body| {
                    export(ingest, signal, headers, body)
                },
            ),
        );
    }
    router.with_state(ingest)
}

async fn export(ingest: Arc<Ingest>, signal: Signal, headers: HeaderMap, body: Body) -> Response {
    let format = body_format(&headers);
    let result = async {
        ingest.authorize(headers.get(AUTHORIZATION).map(|v| v.as_bytes()))?;
        let format = format.ok_or_else(|| {
            IngestError::Unsupported(format!(
                "unsupported Content-Type {:?}; use {PROTOBUF} or {JSON}",
                headers
                    .get(CONTENT_TYPE)
                    .map(|v| String::from_utf8_lossy(v.as_bytes())),
            ))
        })?;
        let encoding = headers
            .get(CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("<not ascii>"));
        let compression = Compression::from_header("Content-Encoding", encoding)?;
        let body = read_limited(body, ingest.max_request_bytes()).await?;
        ingest.check_lag(signal)?;
        let body = ingest.decompress(compression, body).await?;
        ingest.accept(signal, Transport::Http, format, body).await
    }
    .await;
    let format = format.unwrap_or(BodyFormat::Protobuf);
    match result {
        Ok(_) => success(format),
        Err(error) => {
            record_refusal(signal, Transport::Http, &error);
            failure(format, &error)
        }
    }
}

fn body_format(headers: &HeaderMap) -> Option<BodyFormat> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let mime = value.split(';').next()?.trim();
    if mime.eq_ignore_ascii_case(PROTOBUF) {
        Some(BodyFormat::Protobuf)
    } else if mime.eq_ignore_ascii_case(JSON) {
        Some(BodyFormat::Json)
    } else {
        None
    }
}

/// An empty `Export*ServiceResponse` (full success) in the request's encoding.
fn success(format: BodyFormat) -> Response {
    match format {
        BodyFormat::Protobuf => ([(CONTENT_TYPE, PROTOBUF)], Bytes::new()).into_response(),
        BodyFormat::Json => ([(CONTENT_TYPE, JSON)], "{}").into_response(),
    }
}

fn failure(format: BodyFormat, error: &IngestError) -> Response {
    let status = match error {
        IngestError::Unauthenticated => StatusCode::UNAUTHORIZED,
        IngestError::Invalid(_) | IngestError::MessageCount(_) => StatusCode::BAD_REQUEST,
        IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        IngestError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        IngestError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        IngestError::NoDestination(_) => StatusCode::NOT_FOUND,
        IngestError::Throttled { .. } | IngestError::LogBackpressure { .. } => {
            StatusCode::TOO_MANY_REQUESTS
        }
        IngestError::Unavailable { .. }
        | IngestError::LogFailed { .. }
        | IngestError::ShuttingDown { .. } => StatusCode::SERVICE_UNAVAILABLE,
    };
    let grpc = super::grpc::to_status(error);
    let rpc_status = tonic_types::pb::Status {
        code: grpc.code() as i32,
        message: error.to_string(),
        details: Vec::new(),
    };
    let mut response = match format {
        BodyFormat::Protobuf => {
            ([(CONTENT_TYPE, PROTOBUF)], rpc_status.encode_to_vec()).into_response()
        }
        BodyFormat::Json => {
            let body =
                serde_json::json!({ "code": rpc_status.code, "message": rpc_status.message });
            ([(CONTENT_TYPE, JSON)], body.to_string()).into_response()
        }
    };
    *response.status_mut() = status;
    if let Some(delay) = error.retry_after() {
        let secs = delay.as_secs_f64().ceil().max(1.0) as u64;
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    if matches!(error, IngestError::Unauthenticated) {
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}
