//! OTLP/gRPC: the `Export` method of TraceService, MetricsService and LogsService, served by
//! one generic handler. The handler reads the unary call itself rather than through tonic's
//! server codec: the body must hold exactly one length-prefixed message, whose bytes are
//! decompressed like an HTTP body ([`super::body`]: every gzip member and zstd frame, nothing
//! after them, at most `max_request_bytes`), then validated and forwarded, never re-encoded.
//! Refusals are gRPC statuses (tonic's [`Status`]), except that a request that is not gRPC
//! at all gets HTTP 415.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use http_body_util::StreamBody;
use hyper::body::Frame;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::body::{read_limited, Compression};
use super::{record_refusal, BodyFormat, Ingest, IngestError, Transport};
use crate::Signal;

/// A gRPC message's header: a compressed flag and a 4-byte length.
const FRAME_HEADER: usize = 5;
const GRPC_ENCODING: &str = "grpc-encoding";
const GRPC_ACCEPT_ENCODING: &str = "grpc-accept-encoding";
const GRPC_STATUS: &str = "grpc-status";

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
    let result = match receive(&ingest, signal, request).await {
        Ok(message) => ingest
            .accept(signal, Transport::Grpc, BodyFormat::Protobuf, message)
            .await
            .map_err(Refusal::Grpc),
        Err(refusal) => Err(refusal),
    };
    let mut response = match result {
        Ok(_) => success(),
        Err(Refusal::NotGrpc(error)) => {
            record_refusal(signal, Transport::Grpc, &error);
            let mut response =
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, error.to_string()).into_response();
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return response;
        }
        Err(Refusal::Grpc(error)) => {
            record_refusal(signal, Transport::Grpc, &error);
            to_status(&error).into_http()
        }
    };
    // The encodings this server reads, which gRPC asks a server to list (and to list when it
    // refuses an unknown one).
    response.headers_mut().insert(
        GRPC_ACCEPT_ENCODING,
        HeaderValue::from_static("gzip,zstd,identity"),
    );
    response
}

/// Reads a call's one message: checks its content type and token, collects the body (at
/// most `max_request_bytes` and the message header), splits the message off and decompresses
/// it as its flag and `grpc-encoding` say. A request that a lagging destination would take is
/// refused once read, before it is decompressed and validated.
async fn receive(ingest: &Ingest, signal: Signal, request: Request) -> Result<Bytes, Refusal> {
    let headers = request.headers();
    check_content_type(headers)?;
    ingest.authorize(headers.get(AUTHORIZATION).map(|v| v.as_bytes()))?;
    let encoding = headers
        .get(GRPC_ENCODING)
        .map(|v| v.to_str().unwrap_or("<not ascii>"));
    let compression = Compression::from_header(GRPC_ENCODING, encoding)?;
    let limit = ingest.max_request_bytes();
    let body = read_limited(request.into_body(), limit.saturating_add(FRAME_HEADER))
        .await
        .map_err(|error| match error {
            IngestError::TooLarge { .. } => IngestError::TooLarge { limit },
            other => other,
        })?;
    ingest.check_lag(signal)?;
    let message = match unary_message(body)? {
        (false, message) => ingest.decompress(Compression::Identity, message).await?,
        (true, _) if compression == Compression::Identity => {
            return Err(Refusal::Grpc(IngestError::Invalid(
                "the gRPC message is marked compressed but the call has no grpc-encoding".into(),
            )))
        }
        (true, message) => ingest.decompress(compression, message).await?,
    };
    Ok(message)
}

/// Why a call is refused: as a gRPC status, or, when it is not a gRPC request at all, as
/// plain HTTP.
enum Refusal {
    Grpc(IngestError),
    NotGrpc(IngestError),
}

impl From<IngestError> for Refusal {
    fn from(error: IngestError) -> Self {
        Refusal::Grpc(error)
    }
}

/// gRPC requires `application/grpc`, optionally `+proto` (the only message codec here). Any
/// other type is answered with HTTP 415, as the gRPC over HTTP/2 protocol asks, so that a
/// client that is not speaking gRPC does not read a gRPC error as a success.
fn check_content_type(headers: &HeaderMap) -> Result<(), Refusal> {
    let value = headers
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("<not ascii>"));
    let mime = value
        .and_then(|v| v.split(';').next())
        .map(|m| m.trim().to_ascii_lowercase());
    match mime.as_deref() {
        Some("application/grpc" | "application/grpc+proto") => Ok(()),
        Some(other) if other.starts_with("application/grpc+") => {
            Err(Refusal::Grpc(IngestError::Unsupported(format!(
                "unsupported gRPC content type `{other}`; OTLP/gRPC is application/grpc+proto"
            ))))
        }
        _ => Err(Refusal::NotGrpc(IngestError::Unsupported(format!(
            "unsupported Content-Type {value:?} on the OTLP/gRPC port; gRPC requires \
             application/grpc (OTLP/HTTP is served on its own port)"
        )))),
    }
}

/// Splits the one message of a unary call off its 5-byte header (a compressed flag and a
/// big-endian length): `(compressed, message)`. A unary call carries exactly one message;
/// none or more is gRPC's cardinality violation, answered with UNIMPLEMENTED.
fn unary_message(body: Bytes) -> Result<(bool, Bytes), IngestError> {
    let Some((header, rest)) = body.split_first_chunk::<FRAME_HEADER>() else {
        return Err(if body.is_empty() {
            IngestError::MessageCount(
                "the call carries no message; an Export call takes exactly one".into(),
            )
        } else {
            IngestError::Invalid(format!(
                "the gRPC message is cut off: {} bytes of its 5-byte header arrived",
                body.len()
            ))
        });
    };
    let [flag, length @ ..] = *header;
    let length = u32::from_be_bytes(length) as usize;
    if flag > 1 {
        return Err(IngestError::Invalid(format!(
            "invalid gRPC compressed flag {flag} (must be 0 or 1)"
        )));
    }
    if rest.len() < length {
        return Err(IngestError::Invalid(format!(
            "the gRPC message is cut off: its header announces {length} bytes, {} arrived",
            rest.len()
        )));
    }
    if rest.len() > length {
        return Err(IngestError::MessageCount(format!(
            "the call carries more than one message ({} bytes follow the first); an Export \
             call takes exactly one Export*ServiceRequest",
            rest.len() - length
        )));
    }
    Ok((flag == 1, body.slice(FRAME_HEADER..)))
}

/// A successful unary response: an empty `Export*ServiceResponse` (everything accepted),
/// then `grpc-status: 0` in the trailers.
fn success() -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert(GRPC_STATUS, HeaderValue::from_static("0"));
    let frames = [
        Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0; FRAME_HEADER]))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut response = Response::new(Body::new(StreamBody::new(futures_util::stream::iter(
        frames,
    ))));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
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
        IngestError::Unsupported(_)
        | IngestError::MessageCount(_)
        | IngestError::NoDestination(_) => Code::Unimplemented,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(flag: u8, declared: u32, message: &[u8]) -> Vec<u8> {
        let mut frame = vec![flag];
        frame.extend_from_slice(&declared.to_be_bytes());
        frame.extend_from_slice(message);
        frame
    }

    /// A name, a body, and the flag and message it holds or a part of its refusal.
    type FrameCase = (
        &'static str,
        Vec<u8>,
        Result<(bool, &'static [u8]), &'static str>,
    );

    #[test]
    fn a_unary_call_carries_exactly_one_message() {
        let one = frame(0, 3, b"abc");
        let cases: Vec<FrameCase> = vec![
            ("one message", one.clone(), Ok((false, b"abc"))),
            ("compressed", frame(1, 3, b"abc"), Ok((true, b"abc"))),
            ("empty message", frame(0, 0, b""), Ok((false, b""))),
            ("no message", Vec::new(), Err("carries no message")),
            (
                "two messages",
                [one.clone(), one.clone()].concat(),
                Err("more than one"),
            ),
            (
                "a byte after the message",
                [one.clone(), vec![0]].concat(),
                Err("more than one"),
            ),
            (
                "a cut header",
                vec![0, 0, 0],
                Err("3 bytes of its 5-byte header"),
            ),
            (
                "a cut message",
                frame(0, 4, b"abc"),
                Err("announces 4 bytes, 3 arrived"),
            ),
            (
                "an invalid flag",
                frame(2, 3, b"abc"),
                Err("compressed flag 2"),
            ),
        ];
        for (name, body, expected) in cases {
            match (unary_message(Bytes::from(body)), expected) {
                (Ok((flag, message)), Ok((want_flag, want))) => {
                    assert_eq!((flag, &message[..]), (want_flag, want), "{name}")
                }
                (Err(error), Err(want)) => {
                    assert!(error.to_string().contains(want), "{name}: {error}")
                }
                (other, _) => panic!("{name}: {other:?}"),
            }
        }
    }
}
