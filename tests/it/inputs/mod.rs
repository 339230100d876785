//! What clients may get wrong, and what the gateway refuses on purpose: malformed, oversized
//! and compressed-bomb bodies, wrong media types, missing tokens, plaintext against TLS, and
//! the throttling answers of a full memory budget. Every refusal is specific, counted, and
//! leaves the gateway serving.
//!
//! One file per concern; this one holds the bodies they share:
//!
//! - `http`: bad OTLP/HTTP requests and request smuggling;
//! - `grpc`: bad gRPC requests and the framing of a unary call;
//! - `tls_and_tokens`: bearer tokens on both transports, TLS on receivers and exporters;
//! - `throttling`: a full memory budget answers with OTLP's throttling responses.

mod grpc;
mod http;
mod throttling;
mod tls_and_tokens;

use std::io::Write;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

use crate::fixture;

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";
/// Spans in the `TRACES` fixture.
const TRACES_SPANS: u64 = 30;

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(body).unwrap();
    encoder.finish().unwrap()
}

fn zstd(body: &[u8]) -> Vec<u8> {
    zstd::encode_all(body, 3).unwrap()
}

/// The `TRACES` fixture with the second span's span id cut to 4 bytes.
fn traces_with_a_short_span_id() -> ExportTraceServiceRequest {
    let mut request = ExportTraceServiceRequest::decode(&fixture(TRACES)[..]).unwrap();
    request.resource_spans[0].scope_spans[0].spans[1].span_id = vec![1; 4];
    request
}
