//! Bad OTLP/HTTP requests get specific errors and the gateway keeps serving; a request with
//! both Content-Length and Transfer-Encoding closes its connection.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;
use prost::Message;

use super::{gzip, traces_with_a_short_span_id, zstd, TRACES, TRACES_SPANS};
use crate::{config_for, fixture, metric, start, WAIT};

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
