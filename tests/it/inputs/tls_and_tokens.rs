//! Bearer tokens are required on both transports; TLS on the receivers and on the exporters,
//! and plaintext refused by a TLS receiver.

use bytes::Bytes;
use otelgate::codec::BytesCodec;
use otelgate::export::otlp::{ClientTlsConfig, OtlpExporterConfig, Protocol};
use otelgate::receiver::{AuthConfig, ServerTlsConfig};
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;
use tonic::Code;

use super::TRACES;
use crate::{config_for, fixture, grpc_export, metric, start, WAIT};

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
