//! OTLP/gRPC: the `Export` method of TraceService, MetricsService and LogsService, served by
//! one generic handler. Bodies arrive as raw bytes ([`BytesCodec`]): validated, never re-encoded.
//! tonic decompresses gzip and zstd and enforces the size limit on the decompressed message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::header::AUTHORIZATION;
use tonic::codec::CompressionEncoding;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{record_refusal, BodyFormat, Ingest, IngestError, Transport};
use crate::codec::BytesCodec;
use crate::Signal;

/// The gRPC router: one route per signal's `Export` method; anything else is UNIMPLEMENTED.
pub fn router(ingest: Arc<Ingest>) -> Router {
    let mut router = Router::new();
    for signal in Signal::ALL {
        router = router.route(
            signal.grpc_path(),
            post(move |State(ingest): State<Arc<Ingest>>, request: Request| {
                export(ingest, signal, request)
            }),
        );
    }
    router
        .fallback(|request: Request| async move {
            Status::unimplemented(format!("unknown method {}", request.uri().path()))
                .into_http::<Body>()
        })
        .with_state(ingest)
}

async fn export(ingest: Arc<Ingest>, signal: Signal, request: Request) -> Response {
    let authorization = request.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if let Err(error) = ingest.authorize(authorization) {
        record_refusal(signal, Transport::Grpc, &error);
        return to_status(&error).into_http();
    }
    let mut grpc = tonic::server::Grpc::new(BytesCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .send_compressed(CompressionEncoding::Gzip)
        .send_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(ingest.max_request_bytes());
    // Set once tonic has decoded the message and handed it to us; a failure before that
    // (oversized, undecompressible) is counted below from the status tonic answered with.
    let decoded = AtomicBool::new(false);
    let service = tower::service_fn(|request: tonic::Request<Bytes>| {
        decoded.store(true, Ordering::Relaxed);
        let ingest = ingest.clone();
        async move {
            let body = request.into_inner();
            match ingest
                .accept(signal, Transport::Grpc, BodyFormat::Protobuf, body)
                .await
            {
                // An empty Export*ServiceResponse: everything accepted.
                Ok(_) => Ok(tonic::Response::new(Bytes::new())),
                Err(error) => {
                    record_refusal(signal, Transport::Grpc, &error);
                    Err(to_status(&error))
                }
            }
        }
    });
    let response = grpc.unary(service, request).await;
    if !decoded.load(Ordering::Relaxed) {
        // tonic refused the message before decoding it; restate its answer in OTLP terms
        // (OUT_OF_RANGE would make clients retry a request that can never fit).
        if let Some(status) = Status::from_header_map(response.headers()) {
            let error = match status.code() {
                // Charged to the memory budget while it arrived (see body.rs): throttling,
                // told apart from an over-size message by its RetryInfo.
                Code::ResourceExhausted if status.get_error_details().retry_info().is_some() => {
                    IngestError::Throttled {
                        limit: ingest.budget_limit(),
                        retry_after: ingest.retry_after(),
                    }
                }
                Code::ResourceExhausted | Code::OutOfRange => IngestError::TooLarge {
                    limit: ingest.max_request_bytes(),
                },
                Code::DeadlineExceeded => IngestError::BodyTimeout {
                    limit: ingest.body_read_timeout(),
                },
                Code::Unimplemented => IngestError::Unsupported(status.message().to_owned()),
                _ => {
                    IngestError::Invalid(format!("cannot read gRPC message: {}", status.message()))
                }
            };
            record_refusal(signal, Transport::Grpc, &error);
            return to_status(&error).into_http();
        }
    }
    response.map(Body::new)
}

/// The gRPC status for a refusal. Throttling answers always carry RetryInfo, as the OTLP
/// specification requires for clients to retry RESOURCE_EXHAUSTED.
pub fn to_status(error: &IngestError) -> Status {
    let code = match error {
        IngestError::Unauthenticated => Code::Unauthenticated,
        IngestError::Invalid(_) => Code::InvalidArgument,
        IngestError::BodyTimeout { .. } => Code::DeadlineExceeded,
        IngestError::TooLarge { .. }
        | IngestError::Throttled { .. }
        | IngestError::LogBackpressure { .. } => Code::ResourceExhausted,
        IngestError::Unsupported(_) | IngestError::NoDestination(_) => Code::Unimplemented,
        IngestError::Unavailable { .. }
        | IngestError::LogFailed { .. }
        | IngestError::ShuttingDown { .. } => Code::Unavailable,
    };
    match error.retry_after() {
        Some(delay) => Status::with_error_details(
            code,
            error.to_string(),
            ErrorDetails::with_retry_info(Some(delay)),
        ),
        None => Status::new(code, error.to_string()),
    }
}
