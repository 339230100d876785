//! The durable log under faults. Each test ends with an exact reconciliation of what the client
//! got acknowledged against what every destination received, and prints the counts.
//!
//! One file per fault; this one holds the load, the reconciliation and the gateway run as a
//! child process, which other test modules use too:
//!
//! - `crash`: `kill -9` under load, and a torn record at the end of the log;
//! - `outages`: PostgreSQL stopped under load, an OTLP backend down for a while;
//! - `limits`: a full log, a disk below its floor, a destination past its lag limit.

mod crash;
mod limits;
mod outages;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use otelgate::Signal;
use otelgate_cli::demo::backend::RecordingBackend;
use otelgate_cli::demo::generator::TelemetryGenerator;
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::WAIT;

const TRACES: &str = "otlp-sdk-payloads/traces_frames_detections_genai.pb";

/// Span ids of every span, and of frame spans only (one row each in `frame_metadata`).
#[derive(Default)]
struct Acked {
    requests: u64,
    spans: HashSet<Vec<u8>>,
    frames: HashSet<Vec<u8>>,
    refused: HashMap<String, u64>,
}

/// Sends generated frame traffic to `addr` until `stop` fires, one request every `pause`,
/// recording what was acknowledged. Requests that fail are not retried (their fate is
/// unknown to the client, so they are left out of the reconciliation).
fn load(
    addr: std::net::SocketAddr,
    seed: u64,
    pause: Duration,
    stop: CancellationToken,
) -> (Arc<Mutex<Acked>>, tokio::task::JoinHandle<()>) {
    let acked = Arc::new(Mutex::new(Acked::default()));
    let task = {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut generator = TelemetryGenerator::new(seed);
            let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .unwrap()
                .timeout(Duration::from_secs(5))
                .connect_lazy();
            while !stop.is_cancelled() {
                let (request, _) = generator.traces(20);
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                let body: Bytes = request.encode_to_vec().into();
                let result = async {
                    grpc.ready()
                        .await
                        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
                    grpc.unary::<Bytes, Bytes, _>(
                        tonic::Request::new(body),
                        http::uri::PathAndQuery::from_static(Signal::Traces.grpc_path()),
                        otelgate::codec::BytesCodec,
                    )
                    .await
                }
                .await;
                {
                    let mut acked = acked.lock().unwrap();
                    match result {
                        Ok(_) => {
                            acked.requests += 1;
                            for span in spans(&request) {
                                if span.name == "frame.process" {
                                    acked.frames.insert(span.span_id.clone());
                                }
                                acked.spans.insert(span.span_id.clone());
                            }
                        }
                        Err(status) => {
                            *acked
                                .refused
                                .entry(format!("{:?}", status.code()))
                                .or_default() += 1;
                        }
                    }
                }
                tokio::time::sleep(pause).await;
            }
        })
    };
    (acked, task)
}

fn spans(
    request: &ExportTraceServiceRequest,
) -> impl Iterator<Item = &opentelemetry_proto::tonic::trace::v1::Span> {
    request
        .resource_spans
        .iter()
        .flat_map(|r| &r.scope_spans)
        .flat_map(|s| &s.spans)
}

/// Span ids a backend received, with how many arrived more than once.
fn received(backend: &RecordingBackend) -> (HashSet<Vec<u8>>, u64) {
    let mut seen = HashSet::new();
    let mut duplicates = 0;
    for body in backend.bodies(Signal::Traces) {
        let request = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        for span in spans(&request) {
            if !seen.insert(span.span_id.clone()) {
                duplicates += 1;
            }
        }
    }
    (seen, duplicates)
}

/// Waits until `backend` has every span in `wanted`; returns how many are missing.
async fn wait_for_spans(
    backend: &RecordingBackend,
    wanted: &HashSet<Vec<u8>>,
    timeout: Duration,
) -> usize {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let missing = wanted.difference(&received(backend).0).count();
        if missing == 0 || tokio::time::Instant::now() >= deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Frame rows in PostgreSQL: (rows, distinct span ids, acknowledged frames missing).
async fn frame_rows(db: &tokio_postgres::Client, acked: &HashSet<Vec<u8>>) -> (i64, i64, usize) {
    let rows = db
        .query("SELECT span_id FROM frame_metadata", &[])
        .await
        .unwrap();
    let ids: HashSet<Vec<u8>> = rows.iter().map(|r| r.get::<_, Vec<u8>>(0)).collect();
    (
        rows.len() as i64,
        ids.len() as i64,
        acked.difference(&ids).count(),
    )
}

async fn wait_for_rows(
    db: &tokio_postgres::Client,
    acked: &HashSet<Vec<u8>>,
    timeout: Duration,
) -> (i64, i64, usize) {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let found = frame_rows(db, acked).await;
        if found.2 == 0 || tokio::time::Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A port on 127.0.0.1 for a gateway process to listen on (see `otelgate_cli::ports`).
pub fn free_port() -> std::net::SocketAddr {
    let port = otelgate_cli::ports::free_port().unwrap();
    std::net::SocketAddr::from(([127, 0, 0, 1], port))
}

/// `otelgate run` as a child process with the config file `path`; returns once ready.
pub async fn run_gateway(path: &Path, admin: std::net::SocketAddr) -> tokio::process::Child {
    run_gateway_with(&crate::otelgate_binary(), path, admin).await
}

/// `program run --config path` (the binary, or a wrapper that execs it) as a child process;
/// returns once `/readyz` on `admin` answers 200.
pub async fn run_gateway_with(
    program: &Path,
    path: &Path,
    admin: std::net::SocketAddr,
) -> tokio::process::Child {
    let mut child = tokio::process::Command::new(program)
        .args(["run", "--config"])
        .arg(path)
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT * 3;
    loop {
        if let Ok(r) = reqwest::get(format!("http://{admin}/readyz")).await {
            if r.status().is_success() {
                return child;
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("otelgate exited during start-up: {status}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "otelgate never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
