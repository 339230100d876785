//! Integration tests: real gateways on 127.0.0.1:0 forwarding to in-process recording
//! backends, driven by the OpenTelemetry SDK's OTLP exporters, raw gRPC and HTTP clients.

mod chaos;
mod deploy;
mod durable;
mod faults;
mod forwarding;
mod h2_abuse;
mod hostile;
mod inputs;
mod ledger;
mod lifecycle;
mod nul;
mod sink_tls;
mod timescale;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use otelgate::codec::BytesCodec;
use otelgate::export::otlp::{OtlpExporterConfig, Protocol};
use otelgate::{Config, Gateway, Signal};
use otelgate_cli::demo::backend::RecordingBackend;

/// A config listening on free loopback ports, forwarding to `backends`.
pub fn config_for(backends: &[(&str, &RecordingBackend, Protocol)]) -> Config {
    let mut config = Config::default();
    config.receiver.grpc_endpoint = "127.0.0.1:0".into();
    config.receiver.http_endpoint = "127.0.0.1:0".into();
    config.telemetry.admin_endpoint = "127.0.0.1:0".into();
    config.pipeline.shutdown_timeout_seconds = 10;
    config.log.dir = log_dir();
    for (name, backend, protocol) in backends {
        let mut exporter = OtlpExporterConfig::new(backend.endpoint(), *protocol);
        exporter.batch.max_wait_ms = 5;
        exporter.retry.initial_backoff_ms = 10;
        exporter.retry.max_backoff_ms = 100;
        config.exporters.insert(name.to_string(), exporter);
    }
    config
}

/// A fresh durable-log directory for one gateway, under cargo's scratch directory for tests.
/// Directories of earlier runs (older than an hour) are removed on the way.
pub fn log_dir() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("logs");
    for entry in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > Duration::from_secs(3600)));
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = root.join(uuid::Uuid::new_v4().to_string());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The `otelgate` binary, for tests that run it as a child process. It belongs to the
/// `otelgate-cli` package, so cargo does not hand its path to these tests; it lies in the
/// target profile directory, beside the `deps/` directory that holds this test executable.
/// A `cargo nextest run` (or `cargo test`) from the workspace root builds it first.
pub fn otelgate_binary() -> std::path::PathBuf {
    let test_executable = std::env::current_exe().expect("the test executable's path");
    let profile_dir = test_executable
        .parent()
        .and_then(std::path::Path::parent)
        .expect("the test executable lies in target/<profile>/deps/");
    let binary = profile_dir.join(format!("otelgate{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: build it with `cargo build -p otelgate-cli --bin otelgate` \
         (with --release for a release test run), or run the tests from the workspace root",
        binary.display()
    );
    binary
}

/// Starts a gateway with `config`, after validating it as `otelgate run` would.
pub async fn start(config: Config) -> Gateway {
    config.validate().expect("test config is valid");
    Gateway::start(config).await.expect("gateway starts")
}

/// Two backends, one per protocol, and a gateway forwarding to both.
pub async fn gateway_with_two_backends() -> (Gateway, RecordingBackend, RecordingBackend) {
    let grpc_backend = RecordingBackend::start().await.unwrap();
    let http_backend = RecordingBackend::start().await.unwrap();
    let gateway = start(config_for(&[
        ("grpc_backend", &grpc_backend, Protocol::Grpc),
        ("http_backend", &http_backend, Protocol::HttpProtobuf),
    ]))
    .await;
    (gateway, grpc_backend, http_backend)
}

/// The sum of every sample of `name` whose labels include all of `labels`, read from `/metrics`.
pub async fn metric(admin: SocketAddr, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Sends a raw protobuf body over gRPC to the gateway's `Export` method of `signal`.
pub async fn grpc_export(
    addr: SocketAddr,
    signal: Signal,
    body: Bytes,
    metadata: &[(&'static str, &str)],
) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(body);
    for (key, value) in metadata {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::from_static(signal.grpc_path());
    grpc.unary::<Bytes, Bytes, _>(request, path, BytesCodec)
        .await
        .map(|_| ())
}

/// What a gRPC server answered to a raw call: the HTTP status and headers, and the gRPC
/// status from the trailers (or from the headers of a trailers-only answer).
pub struct RawGrpcAnswer {
    pub http: u16,
    pub headers: http::HeaderMap,
    pub status: Option<tonic::Status>,
}

/// Posts `body` as-is to the gateway's `Export` method of `signal`, with `content-type:
/// application/grpc` unless `headers` sets another, so that tests control the framing.
pub async fn grpc_raw(
    addr: SocketAddr,
    signal: Signal,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> RawGrpcAnswer {
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = http::Request::post(format!("http://{addr}{}", signal.grpc_path()))
        .header("te", "trailers");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        request = request.header("content-type", "application/grpc");
    }
    for (key, value) in headers {
        request = request.header(*key, *value);
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))
        .unwrap();
    let response = channel.oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let collected = body.collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        .or_else(|| tonic::Status::from_header_map(&parts.headers));
    RawGrpcAnswer {
        http: parts.status.as_u16(),
        headers: parts.headers,
        status,
    }
}

/// A gRPC length-prefixed message: the compressed flag, the big-endian length, the bytes.
pub fn grpc_frame(compressed: bool, message: &[u8]) -> Vec<u8> {
    let mut frame = vec![u8::from(compressed)];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    frame
}

/// Reads a fixture shipped with the repository's shared material.
pub fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("cannot read {full}: {e}"))
}

/// Sends `body` until the gateway accepts it again (after a throttling refusal), failing
/// with `what` if it has not within `WAIT`.
pub async fn until_accepted(addr: SocketAddr, body: Bytes, what: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while grpc_export(addr, Signal::Traces, body.clone(), &[])
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub const WAIT: Duration = Duration::from_secs(10);

/// Names the external programs whose absence `scripts/test.sh` may allow (comma-separated:
/// `timescaledb`, `pgbouncer`, `prometheus`, or `all`). A test that needs a missing program
/// fails; its name ends in `_needs_<program>`, and when the program is allowed to be missing
/// `scripts/test.sh` leaves those tests out, so the runner's summary counts them as skipped.
pub const ALLOW_MISSING_ENV: &str = "TEST_ALLOW_MISSING";

/// Fails the calling test because `program` is missing, saying how to install it.
#[track_caller]
pub fn missing(program: &str, install: &str) -> ! {
    panic!(
        "{program} is missing: {install}. ./scripts/setup.sh installs it. To run the suite \
         without it, set {ALLOW_MISSING_ENV}={program} and use ./scripts/test.sh, which then \
         skips the tests named *_needs_{program} and counts them in its summary."
    )
}

/// A throwaway PostgreSQL with TimescaleDB, or the test fails. `durable` keeps fsync and
/// synchronous commits on: a test that crashes the server needs it, or commits it
/// acknowledged are lost in the crash.
pub fn postgres_with_timescaledb(durable: bool) -> otelgate_cli::demo::postgres::TempPostgres {
    let pg = otelgate_cli::demo::postgres::TempPostgres::start(durable).unwrap();
    if !pg.timescaledb() {
        missing(
            "timescaledb",
            "the PostgreSQL the tests use (PG_BIN_DIR, else the newest /usr/lib/postgresql/*) \
             has no timescaledb.so",
        );
    }
    pg
}
