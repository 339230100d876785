//! Bad gRPC requests get specific statuses and the gateway keeps serving; a unary call must
//! carry exactly one well-framed message.

use bytes::Bytes;
use otelgate::codec::BytesCodec;
use otelgate::export::otlp::Protocol;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;
use prost::Message;
use tonic::codec::CompressionEncoding;
use tonic::Code;
use tonic_types::StatusExt;

use super::{gzip, traces_with_a_short_span_id, zstd, TRACES, TRACES_SPANS};
use crate::{config_for, fixture, grpc_export, grpc_frame, grpc_raw, metric, start, WAIT};

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
