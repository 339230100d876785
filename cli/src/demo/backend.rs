//! An in-process OTLP backend that records what it receives: gRPC and HTTP/protobuf on one
//! port. The demo forwards to two of these; tests use them to check exactly what arrived and
//! to script failures (error statuses, throttling, hanging) without an external program.

use std::collections::VecDeque;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use otelgate::codec::BytesCodec;
use otelgate::signal::{ExportResponse, PartialSuccess};
use otelgate::Signal;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::Code;
use tonic_types::{ErrorDetails, StatusExt};

/// A scripted answer to one request, in both transports' terms.
#[derive(Debug, Clone)]
pub struct Failure {
    pub grpc: Code,
    pub http: u16,
    /// Sent as RetryInfo (gRPC) and Retry-After (HTTP).
    pub retry_after: Option<Duration>,
    /// Answer success with this many items rejected through `partial_success` instead.
    pub partial_rejected: Option<i64>,
}

impl Failure {
    /// gRPC UNAVAILABLE / HTTP 503: retryable.
    pub fn unavailable() -> Self {
        Failure {
            grpc: Code::Unavailable,
            http: 503,
            retry_after: None,
            partial_rejected: None,
        }
    }

    /// gRPC INVALID_ARGUMENT / HTTP 400: never retried.
    pub fn invalid() -> Self {
        Failure {
            grpc: Code::InvalidArgument,
            http: 400,
            ..Failure::unavailable()
        }
    }

    /// gRPC RESOURCE_EXHAUSTED with RetryInfo / HTTP 429 with Retry-After.
    pub fn throttled(delay: Duration) -> Self {
        Failure {
            grpc: Code::ResourceExhausted,
            http: 429,
            retry_after: Some(delay),
            partial_rejected: None,
        }
    }

    /// Success, with `rejected` items refused through `partial_success`.
    pub fn partial(rejected: i64) -> Self {
        Failure {
            partial_rejected: Some(rejected),
            ..Failure::unavailable()
        }
    }
}

#[derive(Debug)]
struct Recorder {
    bodies: Mutex<[Vec<Bytes>; 3]>,
    items: [AtomicU64; 3],
    requests: AtomicU64,
    script: Mutex<VecDeque<Failure>>,
    headers: Mutex<Option<HeaderMap>>,
    /// While true, requests wait (a hung backend).
    hang: watch::Sender<bool>,
    keep_bodies: bool,
}

/// A running recording backend on 127.0.0.1.
pub struct RecordingBackend {
    addr: SocketAddr,
    recorder: Arc<Recorder>,
    stop: CancellationToken,
}

impl RecordingBackend {
    /// Starts a backend that keeps every request body (for exact comparisons).
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(true).await
    }

    /// Starts a backend; with `keep_bodies` false it only counts (for long demos and loads).
    pub async fn start_with(keep_bodies: bool) -> std::io::Result<Self> {
        Self::start_on("127.0.0.1:0", keep_bodies).await
    }

    /// Starts a backend on `address`. Besides the OTLP routes it answers `GET /counts` with
    /// the items received per signal, as JSON (for benchmark scripts).
    pub async fn start_on(address: &str, keep_bodies: bool) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let addr = listener.local_addr()?;
        let recorder = Arc::new(Recorder {
            bodies: Mutex::default(),
            items: Default::default(),
            requests: AtomicU64::new(0),
            script: Mutex::default(),
            headers: Mutex::default(),
            hang: watch::channel(false).0,
            keep_bodies,
        });
        let mut router = Router::new();
        for signal in Signal::ALL {
            router = router
                .route(
                    signal.grpc_path(),
                    post(move |State(r): State<Arc<Recorder>>, req: Request| grpc(r, signal, req)),
                )
                .route(
                    signal.http_path(),
                    post(move |State(r): State<Arc<Recorder>>, req: Request| http(r, signal, req)),
                );
        }
        router = router.route(
            "/counts",
            axum::routing::get(|State(r): State<Arc<Recorder>>| async move {
                let items = |s: Signal| r.items[s.index()].load(Ordering::SeqCst);
                axum::Json(serde_json::json!({
                    "traces": items(Signal::Traces),
                    "metrics": items(Signal::Metrics),
                    "logs": items(Signal::Logs),
                    "requests": r.requests.load(Ordering::SeqCst),
                }))
            }),
        );
        let stop = CancellationToken::new();
        tokio::spawn(otelgate::net::serve(
            listener,
            None,
            router.with_state(recorder.clone()),
            stop.clone(),
            otelgate::net::ConnectionLimits::new(
                "backend",
                otelgate::net::ConnectionConfig::default(),
                4096,
            ),
        ));
        Ok(RecordingBackend {
            addr,
            recorder,
            stop,
        })
    }

    /// `http://127.0.0.1:<port>`, for either protocol.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Items received and answered with success (minus scripted partial rejections).
    pub fn items(&self, signal: Signal) -> u64 {
        self.recorder.items[signal.index()].load(Ordering::SeqCst)
    }

    /// Requests received, whatever the answer.
    pub fn requests(&self) -> u64 {
        self.recorder.requests.load(Ordering::SeqCst)
    }

    /// The bodies of successful requests of `signal`, decompressed, in arrival order.
    pub fn bodies(&self, signal: Signal) -> Vec<Bytes> {
        self.bodies_from(signal, 0)
    }

    /// Bodies of `signal` from the `start`th on (for readers that keep up incrementally).
    pub fn bodies_from(&self, signal: Signal, start: usize) -> Vec<Bytes> {
        let bodies = self.recorder.bodies.lock().expect("not poisoned");
        bodies[signal.index()].iter().skip(start).cloned().collect()
    }

    /// All successful requests of `signal` merged into one message (protobuf concatenation).
    pub fn merged<M: Message + Default>(&self, signal: Signal) -> M {
        let mut all = Vec::new();
        for body in self.bodies(signal) {
            all.extend_from_slice(&body);
        }
        M::decode(&all[..]).expect("recorded bodies were validated on arrival")
    }

    /// Headers (gRPC metadata) of the most recent request.
    pub fn last_headers(&self) -> Option<HeaderMap> {
        self.recorder.headers.lock().expect("not poisoned").clone()
    }

    /// Answers the next requests with `failure`, `times` times.
    pub fn fail_next(&self, failure: Failure, times: usize) {
        let mut script = self.recorder.script.lock().expect("not poisoned");
        script.extend(std::iter::repeat_n(failure, times));
    }

    /// Makes requests wait without answering (true) or lets them through (false).
    pub fn set_hanging(&self, hang: bool) {
        self.recorder.hang.send_replace(hang);
    }

    /// Waits until at least `items` items of `signal` have arrived; false on timeout.
    pub async fn wait_for(&self, signal: Signal, items: u64, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.items(signal) < items {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        true
    }
}

impl Drop for RecordingBackend {
    fn drop(&mut self) {
        self.recorder.hang.send_replace(false);
        self.stop.cancel();
    }
}

impl Recorder {
    /// Records a decoded request; returns the scripted failure to answer with, if any.
    async fn record(
        &self,
        signal: Signal,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<Option<i64>, Failure> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        *self.headers.lock().expect("not poisoned") = Some(headers);
        let mut hang = self.hang.subscribe();
        let _ = hang.wait_for(|h| !*h).await;
        let scripted = self.script.lock().expect("not poisoned").pop_front();
        let rejected = match scripted {
            Some(Failure {
                partial_rejected: Some(rejected),
                ..
            }) => rejected,
            Some(failure) => {
                return Err(failure);
            }
            None => 0,
        };
        let items = signal.count_protobuf(&body).unwrap_or(0);
        if self.keep_bodies {
            self.bodies.lock().expect("not poisoned")[signal.index()].push(body);
        }
        self.items[signal.index()].fetch_add(
            items.saturating_sub(rejected.max(0) as u64),
            Ordering::SeqCst,
        );
        Ok((rejected > 0).then_some(rejected))
    }
}

fn response_body(rejected: Option<i64>) -> Bytes {
    ExportResponse {
        partial_success: rejected.map(|rejected| PartialSuccess {
            rejected,
            error_message: "rejected by the recording backend's script".into(),
        }),
    }
    .encode_to_vec()
    .into()
}

async fn grpc(recorder: Arc<Recorder>, signal: Signal, request: Request) -> Response {
    let headers = request.headers().clone();
    let mut grpc = tonic::server::Grpc::new(BytesCodec)
        .accept_compressed(CompressionEncoding::Gzip)
        .accept_compressed(CompressionEncoding::Zstd)
        .max_decoding_message_size(256 * 1024 * 1024);
    let service = tower::service_fn(|request: tonic::Request<Bytes>| {
        let recorder = recorder.clone();
        let headers = headers.clone();
        async move {
            match recorder.record(signal, headers, request.into_inner()).await {
                Ok(rejected) => Ok(tonic::Response::new(response_body(rejected))),
                Err(failure) => Err(match failure.retry_after {
                    Some(delay) => tonic::Status::with_error_details(
                        failure.grpc,
                        "scripted failure",
                        ErrorDetails::with_retry_info(Some(delay)),
                    ),
                    None => tonic::Status::new(failure.grpc, "scripted failure"),
                }),
            }
        }
    });
    grpc.unary(service, request).await.map(Body::new)
}

async fn http(recorder: Arc<Recorder>, signal: Signal, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = body.collect().await.map(|b| b.to_bytes()) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let gzip = parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"));
    let body = if gzip {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .is_err()
        {
            return (StatusCode::BAD_REQUEST, "bad gzip").into_response();
        }
        Bytes::from(out)
    } else {
        body
    };
    match recorder.record(signal, parts.headers, body).await {
        Ok(rejected) => (
            [(http::header::CONTENT_TYPE, "application/x-protobuf")],
            response_body(rejected),
        )
            .into_response(),
        Err(failure) => {
            let mut response = (
                StatusCode::from_u16(failure.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "scripted failure",
            )
                .into_response();
            if let Some(delay) = failure.retry_after {
                response
                    .headers_mut()
                    .insert(http::header::RETRY_AFTER, delay.as_secs().into());
            }
            response
        }
    }
}
