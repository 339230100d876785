//! What clients may get wrong, and what the gateway refuses on purpose: malformed, oversized
//! and compressed-bomb bodies, wrong media types, missing tokens, plaintext against TLS, and
//! the throttling answers of a full memory budget. Every refusal is specific, counted, and
//! leaves the gateway serving.

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use otelgate::codec::BytesCodec;
use otelgate::demo::backend::RecordingBackend;
use otelgate::export::otlp::{ClientTlsConfig, OtlpExporterConfig, Protocol};
use otelgate::receiver::{AuthConfig, ServerTlsConfig};
use otelgate::Signal;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::Code;
use tonic_types::StatusExt;

use crate::{config_for, fixture, grpc_export, grpc_frame, grpc_raw, metric, start, WAIT};

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

/// OTLP/JSON as the OpenTelemetry JavaScript SDK writes it: times as numbers, and a NaN
/// attribute as `null` (what `JSON.stringify` makes of NaN).
const JAVASCRIPT_JSON: &str = r#"{"resourceSpans":[{"resource":{"attributes":[
    {"key":"service.name","value":{"stringValue":"js"}}]},
  "scopeSpans":[{"scope":{"name":"s"},"spans":[{
    "traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174",
    "name":"js-span","kind":2,
    "startTimeUnixNano":1700000000000000000,"endTimeUnixNano":1700000000000000001,
    "attributes":[{"key":"ratio","value":{"doubleValue":null}},
                  {"key":"count","value":{"intValue":7}}],
    "events":[{"timeUnixNano":1700000000000000000,"name":"e"}],
    "status":{"code":0}}]}]}]}"#;

struct HttpCase {
    name: &'static str,
    content_type: Option<&'static str>,
    encoding: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    message: &'static str,
}

#[tokio::test]
async fn bad_http_requests_get_specific_errors_and_the_gateway_keeps_serving() {
    let backend = RecordingBackend::start().await.unwrap();
    let mut config = config_for(&[("b", &backend, Protocol::Grpc)]);
    config.receiver.max_request_bytes = 64 * 1024;
    let gateway = start(config).await;
    let url = format!("http://{}/v1/traces", gateway.http_addr());
    let protobuf = Some("application/x-protobuf");
    let cases = [
        HttpCase {
            name: "garbage protobuf",
            content_type: protobuf,
            encoding: None,
            body: b"\xff\xff\xff\xff".to_vec(),
            status: 400,
            message: "invalid OTLP protobuf for traces",
        },
        HttpCase {
            name: "wrong JSON shape",
            content_type: Some("application/json"),
            encoding: None,
            body: br#"{"resourceSpans": 5}"#.to_vec(),
            status: 400,
            message: "invalid OTLP/JSON for traces",
        },
        HttpCase {
            name: "not JSON",
            content_type: Some("application/json"),
            encoding: None,
            body: b"{".to_vec(),
            status: 400,
            message: "invalid OTLP/JSON",
        },
        HttpCase {
            name: "text/plain",
            content_type: Some("text/plain"),
            encoding: None,
            body: b"x".to_vec(),
            status: 415,
            message: "unsupported Content-Type",
        },
        HttpCase {
            name: "no content type",
            content_type: None,
            encoding: None,
            body: b"x".to_vec(),
            status: 415,
            message: "unsupported Content-Type",
        },
        HttpCase {
            name: "too large",
            content_type: protobuf,
            encoding: None,
            body: vec![0; 100 * 1024],
            status: 413,
            message: "max_request_bytes",
        },
        HttpCase {
            name: "gzip bomb",
            content_type: protobuf,
            encoding: Some("gzip"),
            body: gzip(&vec![0; 50 * 1024 * 1024]),
            status: 413,
            message: "after decompression",
        },
        HttpCase {
            name: "broken gzip",
            content_type: protobuf,
            encoding: Some("gzip"),
            body: b"not gzip at all".to_vec(),
            status: 400,
            message: "cannot decompress",
        },
        HttpCase {
            name: "gzip members (what cat a.gz b.gz makes)",
            content_type: protobuf,
            encoding: Some("gzip"),
            body: [gzip(&fixture(TRACES)), gzip(&fixture(TRACES))].concat(),
            status: 200,
            message: "",
        },
        HttpCase {
            name: "gzip then garbage",
            content_type: protobuf,
            encoding: Some("gzip"),
            body: [gzip(&fixture(TRACES)), b"garbage".to_vec()].concat(),
            status: 400,
            message: "are not a gzip member",
        },
        HttpCase {
            name: "zstd frames",
            content_type: protobuf,
            encoding: Some("zstd"),
            body: [zstd(&fixture(TRACES)), zstd(&fixture(TRACES))].concat(),
            status: 200,
            message: "",
        },
        HttpCase {
            name: "zstd then garbage",
            content_type: protobuf,
            encoding: Some("zstd"),
            body: [zstd(&fixture(TRACES)), b"garbage".to_vec()].concat(),
            status: 400,
            message: "are not a zstd frame",
        },
        HttpCase {
            name: "short span id, protobuf",
            content_type: protobuf,
            encoding: None,
            body: traces_with_a_short_span_id().encode_to_vec(),
            status: 400,
            message:
                "ExportTraceServiceRequest.resource_spans[0].scope_spans[0].spans[1].span_id: \
                      4 bytes long; must be 8 bytes",
        },
        HttpCase {
            name: "short span id, JSON",
            content_type: Some("application/json"),
            encoding: None,
            body: serde_json::to_vec(&traces_with_a_short_span_id()).unwrap(),
            status: 400,
            message: "resourceSpans[0].scopeSpans[0].spans[1].spanId: 4 bytes long",
        },
        HttpCase {
            name: "two kinds in one AnyValue, JSON",
            content_type: Some("application/json"),
            encoding: None,
            body: JAVASCRIPT_JSON
                .replace(r#"{"intValue":7}"#, r#"{"intValue":7,"stringValue":"7"}"#)
                .into_bytes(),
            status: 400,
            message: "spans[0].attributes[1].value: `intValue` and `stringValue` are both set",
        },
        HttpCase {
            name: "JSON as the JavaScript SDK writes it",
            content_type: Some("application/json"),
            encoding: None,
            body: JAVASCRIPT_JSON.as_bytes().to_vec(),
            status: 200,
            message: "",
        },
        HttpCase {
            name: "brotli",
            content_type: protobuf,
            encoding: Some("br"),
            body: b"x".to_vec(),
            status: 415,
            message: "Content-Encoding",
        },
    ];
    let client = reqwest::Client::new();
    for case in &cases {
        let mut request = client.post(&url).body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(encoding) = case.encoding {
            request = request.header("content-encoding", encoding);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        let is_json = response.headers()["content-type"] == "application/json";
        let body = response.bytes().await.unwrap();
        if case.status == 200 {
            continue;
        }
        let message = if is_json {
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
            value["message"].as_str().unwrap().to_owned()
        } else {
            tonic_types::pb::Status::decode(&body[..]).unwrap().message
        };
        assert!(message.contains(case.message), "{}: {message}", case.name);
    }
    let refusals = cases.iter().filter(|c| c.status != 200).count();
    let get = client.get(&url).send().await.unwrap();
    assert_eq!(get.status(), 405);
    // Still serving.
    let ok = client
        .post(&url)
        .header("content-type", "application/x-protobuf")
        .body(fixture(TRACES))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    // Two gzip members and two zstd frames of the fixture, the JavaScript span, and the
    // fixture once more: every member and frame was read.
    let expected = 5 * TRACES_SPANS + 1;
    assert!(backend.wait_for(Signal::Traces, expected, WAIT).await);
    let refused = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("transport", "http")],
    )
    .await;
    assert_eq!(refused, refusals as f64);
    gateway.shutdown().await;
    assert_eq!(backend.items(Signal::Traces), expected);
    let forwarded: ExportTraceServiceRequest = backend.merged(Signal::Traces);
    let js = forwarded
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
        .find(|s| s.name == "js-span")
        .expect("the JavaScript span was forwarded");
    assert_eq!(js.start_time_unix_nano, 1_700_000_000_000_000_000);
    assert_eq!(js.events[0].time_unix_nano, 1_700_000_000_000_000_000);
    let ratio = js.attributes[0].value.clone().and_then(|v| v.value);
    assert!(
        matches!(ratio, Some(Value::DoubleValue(d)) if d.is_nan()),
        "{ratio:?}"
    );
}

#[tokio::test]
async fn bad_grpc_requests_get_specific_statuses_and_the_gateway_keeps_serving() {
    let backend = RecordingBackend::start().await.unwrap();
    let mut config = config_for(&[("b", &backend, Protocol::Grpc)]);
    config.receiver.max_request_bytes = 64 * 1024;
    let gateway = start(config).await;
    let addr = gateway.grpc_addr();

    let garbage = grpc_export(addr, Signal::Logs, Bytes::from_static(b"\xff\xff\xff"), &[])
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument);
    assert!(
        garbage.message().contains("invalid OTLP protobuf for logs"),
        "{}",
        garbage.message()
    );

    let large = grpc_export(
        addr,
        Signal::Traces,
        Bytes::from(vec![0u8; 100 * 1024]),
        &[],
    )
    .await
    .unwrap_err();
    // RESOURCE_EXHAUSTED, as gRPC answers a message over the limit, without RetryInfo: OTLP
    // clients then do not retry (OUT_OF_RANGE would make them retry).
    assert_eq!(large.code(), Code::ResourceExhausted, "{large:?}");
    assert!(large.message().contains("65536"), "{}", large.message());
    assert!(
        large.get_details_retry_info().is_none(),
        "an oversized request must not be retried"
    );

    // 50 MB of zeros, gzip-compressed by the client to ~50 KB: stopped at the limit.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).send_compressed(CompressionEncoding::Gzip);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(Signal::Traces.grpc_path());
    let bomb = grpc
        .unary::<Bytes, Bytes, _>(
            tonic::Request::new(Bytes::from(vec![0u8; 50 * 1024 * 1024])),
            path,
            BytesCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(bomb.code(), Code::ResourceExhausted, "{bomb:?}");
    assert!(
        bomb.message().contains("max_request_bytes"),
        "{}",
        bomb.message()
    );

    grpc_export(addr, Signal::Traces, Bytes::from(fixture(TRACES)), &[])
        .await
        .unwrap();
    assert!(backend.wait_for(Signal::Traces, 30, WAIT).await);
    let refused = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("transport", "grpc")],
    )
    .await;
    assert_eq!(refused, 3.0);
    let too_large = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("reason", "too_large")],
    )
    .await;
    assert_eq!(too_large, 2.0);
    gateway.shutdown().await;
}

struct GrpcCase {
    name: &'static str,
    headers: &'static [(&'static str, &'static str)],
    body: Vec<u8>,
    /// The gRPC status code, or `None` when the answer is plain HTTP.
    code: Option<Code>,
    http: u16,
    message: &'static str,
}

/// The framing of a unary call: exactly one message, compressed as its `grpc-encoding` says
/// (every gzip member and zstd frame, nothing after them), in a gRPC request.
#[tokio::test]
async fn grpc_calls_must_carry_exactly_one_well_framed_message() {
    let backend = RecordingBackend::start().await.unwrap();
    let gateway = start(config_for(&[("b", &backend, Protocol::Grpc)])).await;
    let traces = fixture(TRACES);
    let gzip_header: &[(&str, &str)] = &[("grpc-encoding", "gzip")];
    let zstd_header: &[(&str, &str)] = &[("grpc-encoding", "zstd")];
    let ok = |name, headers, body| GrpcCase {
        name,
        headers,
        body,
        code: Some(Code::Ok),
        http: 200,
        message: "",
    };
    let refused = |name, headers, body, code, message| GrpcCase {
        name,
        headers,
        body,
        code: Some(code),
        http: 200,
        message,
    };
    let cases = [
        ok("one message", &[], grpc_frame(false, &traces)),
        refused(
            "two messages",
            &[],
            [grpc_frame(false, &traces), grpc_frame(false, &traces)].concat(),
            Code::Unimplemented,
            "more than one message",
        ),
        refused(
            "no message",
            &[],
            Vec::new(),
            Code::Unimplemented,
            "no message",
        ),
        refused(
            "a cut message",
            &[],
            grpc_frame(false, &traces)[..100].to_vec(),
            Code::InvalidArgument,
            "cut off",
        ),
        refused(
            "an invalid compressed flag",
            &[],
            [vec![2], grpc_frame(false, &traces)[1..].to_vec()].concat(),
            Code::InvalidArgument,
            "compressed flag 2",
        ),
        ok(
            "gzip members",
            gzip_header,
            grpc_frame(true, &[gzip(&traces), gzip(&traces)].concat()),
        ),
        refused(
            "gzip then garbage",
            gzip_header,
            grpc_frame(true, &[gzip(&traces), b"garbage".to_vec()].concat()),
            Code::InvalidArgument,
            "are not a gzip member",
        ),
        ok(
            "zstd frames",
            zstd_header,
            grpc_frame(true, &[zstd(&traces), zstd(&traces)].concat()),
        ),
        refused(
            "zstd then garbage",
            zstd_header,
            grpc_frame(true, &[zstd(&traces), b"garbage".to_vec()].concat()),
            Code::InvalidArgument,
            "are not a zstd frame",
        ),
        ok(
            "a gzip call with an uncompressed message",
            gzip_header,
            grpc_frame(false, &traces),
        ),
        refused(
            "a compressed message without grpc-encoding",
            &[],
            grpc_frame(true, &gzip(&traces)),
            Code::InvalidArgument,
            "no grpc-encoding",
        ),
        refused(
            "an unknown grpc-encoding",
            &[("grpc-encoding", "br")],
            grpc_frame(true, b"x"),
            Code::Unimplemented,
            "unsupported grpc-encoding `br`",
        ),
        refused(
            "a short span id",
            &[],
            grpc_frame(false, &traces_with_a_short_span_id().encode_to_vec()),
            Code::InvalidArgument,
            "resource_spans[0].scope_spans[0].spans[1].span_id: 4 bytes long",
        ),
        refused(
            "gRPC with the JSON codec",
            &[("content-type", "application/grpc+json")],
            grpc_frame(false, b"{}"),
            Code::Unimplemented,
            "application/grpc+json",
        ),
        GrpcCase {
            name: "not gRPC",
            headers: &[("content-type", "application/json")],
            body: b"{}".to_vec(),
            code: None,
            http: 415,
            message: "gRPC requires application/grpc",
        },
    ];
    for case in &cases {
        let answer = grpc_raw(
            gateway.grpc_addr(),
            Signal::Traces,
            case.headers,
            case.body.clone(),
        )
        .await;
        assert_eq!(answer.http, case.http, "{}", case.name);
        match case.code {
            Some(code) => {
                let status = answer
                    .status
                    .unwrap_or_else(|| panic!("{}: no status", case.name));
                assert_eq!(status.code(), code, "{}: {status:?}", case.name);
                assert!(
                    status.message().contains(case.message),
                    "{}: {}",
                    case.name,
                    status.message()
                );
                let accepted = answer.headers["grpc-accept-encoding"].to_str().unwrap();
                assert!(
                    accepted.contains("gzip") && accepted.contains("zstd"),
                    "{accepted}"
                );
            }
            None => assert!(answer.status.is_none(), "{}", case.name),
        }
    }
    // One fixture, two gzip members, two zstd frames, one more fixture: every one read.
    let expected = 6 * TRACES_SPANS;
    assert!(backend.wait_for(Signal::Traces, expected, WAIT).await);
    let refusals = cases.iter().filter(|c| c.code != Some(Code::Ok)).count();
    let refused = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("transport", "grpc")],
    )
    .await;
    assert_eq!(refused, refusals as f64);
    let unsupported = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("reason", "unsupported_media_type")],
    )
    .await;
    assert_eq!(unsupported, 3.0);
    gateway.shutdown().await;
    assert_eq!(backend.items(Signal::Traces), expected);
}

/// A request with both Content-Length and Transfer-Encoding (a request-smuggling shape):
/// hyper frames it by Transfer-Encoding, as RFC 9112 section 6.3 says, answers it and closes
/// the connection, so bytes after the chunked body are never read as another request.
#[tokio::test]
async fn content_length_with_transfer_encoding_closes_the_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = RecordingBackend::start().await.unwrap();
    let gateway = start(config_for(&[("b", &backend, Protocol::Grpc)])).await;
    let mut stream = tokio::net::TcpStream::connect(gateway.http_addr())
        .await
        .unwrap();
    let smuggled = "POST /v1/traces HTTP/1.1\r\nHost: x\r\n\
                    Content-Type: application/x-protobuf\r\n\
                    Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                    0\r\n\r\n\
                    POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
                    Content-Length: 0\r\n\r\n";
    stream.write_all(smuggled.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("the connection is closed after the answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    gateway.shutdown().await;
}

#[tokio::test]
async fn bearer_tokens_are_required_on_both_transports() {
    let backend = RecordingBackend::start().await.unwrap();
    let mut config = config_for(&[("b", &backend, Protocol::Grpc)]);
    config.receiver.auth = Some(AuthConfig {
        bearer_tokens: vec!["s3cret".into(), "rotated".into()],
    });
    let gateway = start(config).await;
    let body = Bytes::from(fixture(TRACES));

    let missing = grpc_export(gateway.grpc_addr(), Signal::Traces, body.clone(), &[])
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let wrong = grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        body.clone(),
        &[("authorization", "Bearer nope")],
    )
    .await
    .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    grpc_export(
        gateway.grpc_addr(),
        Signal::Traces,
        body.clone(),
        &[("authorization", "Bearer s3cret")],
    )
    .await
    .unwrap();

    let url = format!("http://{}/v1/traces", gateway.http_addr());
    let client = reqwest::Client::new();
    let post = |token: Option<&'static str>| {
        let mut request = client
            .post(&url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone());
        if let Some(token) = token {
            request = request.header("authorization", token);
        }
        request.send()
    };
    let response = post(None).await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(post(Some("Bearer nope")).await.unwrap().status(), 401);
    assert_eq!(post(Some("Bearer rotated")).await.unwrap().status(), 200);

    assert!(backend.wait_for(Signal::Traces, 60, WAIT).await);
    let refused = metric(
        gateway.admin_addr(),
        "otelgate_receiver_refused_requests_total",
        &[("reason", "unauthenticated")],
    )
    .await;
    assert_eq!(refused, 4.0);
    gateway.shutdown().await;
    assert_eq!(
        backend.items(Signal::Traces),
        60,
        "refused requests must not be forwarded"
    );
}

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

/// A self-signed certificate for localhost and 127.0.0.1, written to `dir`.
fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf, Vec<u8>) {
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_pem = cert.cert.pem();
    let cert_file = dir.join("cert.pem");
    let key_file = dir.join("key.pem");
    std::fs::write(&cert_file, &cert_pem).unwrap();
    std::fs::write(&key_file, cert.signing_key.serialize_pem()).unwrap();
    (cert_file, key_file, cert_pem.into_bytes())
}

/// A TLS gateway in front of the backend, and a plaintext gateway that exports to it over
/// TLS with a custom CA: both the receiver's and the exporter's TLS, over gRPC and HTTP.
#[tokio::test]
async fn tls_on_receivers_and_exporters() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_file, key_file, ca_pem) = self_signed(dir.path());
    let backend = RecordingBackend::start().await.unwrap();
    let mut inner_config = config_for(&[("b", &backend, Protocol::Grpc)]);
    inner_config.receiver.tls = Some(ServerTlsConfig {
        cert_file: cert_file.clone(),
        key_file,
    });
    let inner = start(inner_config).await;

    let mut outer_config = config_for(&[]);
    for (name, protocol, port) in [
        ("tls_grpc", Protocol::Grpc, inner.grpc_addr().port()),
        ("tls_http", Protocol::HttpProtobuf, inner.http_addr().port()),
    ] {
        let mut exporter = OtlpExporterConfig::new(format!("https://localhost:{port}"), protocol);
        exporter.tls = Some(ClientTlsConfig {
            ca_file: Some(cert_file.clone()),
            cert_file: None,
            key_file: None,
        });
        exporter.batch.max_wait_ms = 5;
        outer_config.exporters.insert(name.into(), exporter);
    }
    let outer = start(outer_config).await;
    grpc_export(
        outer.grpc_addr(),
        Signal::Traces,
        Bytes::from(fixture(TRACES)),
        &[],
    )
    .await
    .unwrap();
    assert!(
        backend.wait_for(Signal::Traces, 60, WAIT).await,
        "both TLS exporters delivered"
    );

    // Direct clients: trusted TLS works, plaintext does not.
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(&ca_pem))
        .domain_name("localhost");
    let channel = tonic::transport::Endpoint::from_shared(format!(
        "https://localhost:{}",
        inner.grpc_addr().port()
    ))
    .unwrap()
    .tls_config(tls)
    .unwrap()
    .connect()
    .await
    .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(Signal::Traces.grpc_path());
    grpc.unary::<Bytes, Bytes, _>(
        tonic::Request::new(Bytes::from(fixture(TRACES))),
        path,
        BytesCodec,
    )
    .await
    .unwrap();
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .build()
        .unwrap();
    let response = https
        .post(format!(
            "https://localhost:{}/v1/traces",
            inner.http_addr().port()
        ))
        .header("content-type", "application/x-protobuf")
        .body(fixture(TRACES))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(grpc_export_plaintext_fails(inner.grpc_addr()).await);
    assert!(backend.wait_for(Signal::Traces, 120, WAIT).await);
    outer.shutdown().await;
    inner.shutdown().await;
}

async fn grpc_export_plaintext_fails(addr: std::net::SocketAddr) -> bool {
    let attempt = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap();
        let Ok(channel) = endpoint.connect().await else {
            return true;
        };
        let mut grpc = tonic::client::Grpc::new(channel);
        if grpc.ready().await.is_err() {
            return true;
        }
        let path = http::uri::PathAndQuery::from_static(Signal::Traces.grpc_path());
        let request = tonic::Request::new(Bytes::from(fixture(TRACES)));
        grpc.unary::<Bytes, Bytes, _>(request, path, BytesCodec)
            .await
            .is_err()
    };
    tokio::time::timeout(WAIT, attempt).await.unwrap_or(true)
}
