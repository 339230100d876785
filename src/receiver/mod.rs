//! OTLP receivers: gRPC ([`grpc`]) and HTTP ([`http`]) front ends over one [`Ingest`] core that
//! owns what both transports share: bearer-token auth, size limits, decompression, decoding
//! and validation, admission against the memory budget and hand-off to the pipeline. A request
//! is acknowledged once the durable log has it on disk (the default), or, with the log off,
//! once it sits in every destination queue that takes it.

pub mod body;
pub mod grpc;
pub mod http;
pub mod limits;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::config::ConfigError;
use crate::pipeline::log::AppendError;
use crate::pipeline::{DispatchError, Dispatcher, MemoryBudget, Payload};
use crate::telemetry::{self, reason};
use crate::Signal;

const fn default_max_request_bytes() -> usize {
    16 * 1024 * 1024
}

fn default_grpc_endpoint() -> String {
    "0.0.0.0:4317".into()
}

fn default_http_endpoint() -> String {
    "0.0.0.0:4318".into()
}

/// Where and how OTLP is received.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReceiverConfig {
    /// OTLP/gRPC listen address.
    #[serde(default = "default_grpc_endpoint")]
    pub grpc_endpoint: String,
    /// OTLP/HTTP listen address.
    #[serde(default = "default_http_endpoint")]
    pub http_endpoint: String,
    /// Largest request accepted, measured after decompression (so a small compressed bomb is
    /// stopped at this size). Larger requests get HTTP 413 / gRPC RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Bearer-token authentication; off when absent.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// TLS for both listeners; cleartext when absent.
    #[serde(default)]
    pub tls: Option<ServerTlsConfig>,
    /// Connection limits and timeouts of both listeners.
    #[serde(default)]
    pub connections: crate::net::ConnectionConfig,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            grpc_endpoint: default_grpc_endpoint(),
            http_endpoint: default_http_endpoint(),
            max_request_bytes: default_max_request_bytes(),
            auth: None,
            tls: None,
            connections: crate::net::ConnectionConfig::default(),
        }
    }
}

/// Clients must send `Authorization: Bearer <token>` with one of these tokens.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Accepted tokens. Keep them out of the file: `["${GATEWAY_TOKEN}"]` (not an
    /// `OTELGATE_*` name: those are config overrides).
    pub bearer_tokens: Vec<String>,
}

/// Server certificate and key, PEM.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl ReceiverConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("receiver.grpc_endpoint", &self.grpc_endpoint),
            ("receiver.http_endpoint", &self.http_endpoint),
        ] {
            crate::config::validate_listen_address(key, value)?;
        }
        self.connections.validate()?;
        if self.max_request_bytes == 0 {
            return Err(ConfigError::invalid(
                "receiver.max_request_bytes",
                "must be greater than 0",
            ));
        }
        if let Some(auth) = &self.auth {
            if auth.bearer_tokens.is_empty() || auth.bearer_tokens.iter().any(String::is_empty) {
                return Err(ConfigError::invalid(
                    "receiver.auth.bearer_tokens",
                    "list at least one token, none empty (or remove [receiver.auth])",
                ));
            }
        }
        if let Some(tls) = &self.tls {
            crate::net::tls_acceptor(&tls.cert_file, &tls.key_file)
                .map_err(|e| ConfigError::invalid("receiver.tls", e.to_string()))?;
        }
        Ok(())
    }
}

/// The transport a request came in on, for metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    pub const fn as_str(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }
}

/// How a request body is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Protobuf,
    Json,
}

/// Why a request was refused. Each variant maps to one gRPC code and one HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("missing or invalid bearer token")]
    Unauthenticated,
    #[error("{0}")]
    Invalid(String),
    /// A unary gRPC call with no message or more than one (gRPC's "cardinality violation").
    #[error("{0}")]
    MessageCount(String),
    #[error("request exceeds the limit of {limit} bytes (receiver.max_request_bytes) after decompression")]
    TooLarge { limit: usize },
    #[error("the request body did not arrive within {limit:?} (receiver.connections.body_read_timeout_ms)")]
    BodyTimeout { limit: Duration },
    #[error("{0}")]
    Unsupported(String),
    #[error("memory budget of {limit} bytes is in use; retry after {retry_after:?}")]
    Throttled { limit: u64, retry_after: Duration },
    #[error("{message}; retry after {retry_after:?}")]
    Unavailable {
        message: String,
        retry_after: Duration,
    },
    /// The durable log is full or the disk is at its floor: throttling, like the budget.
    #[error("{message}")]
    LogBackpressure {
        message: String,
        reason: &'static str,
        retry_after: Duration,
    },
    #[error("{message}; retry after {retry_after:?}")]
    LogFailed {
        message: String,
        retry_after: Duration,
    },
    #[error("this gateway has no destination for {0}")]
    NoDestination(Signal),
    #[error("the gateway is shutting down; retry after {retry_after:?}")]
    ShuttingDown { retry_after: Duration },
}

impl IngestError {
    /// The `reason` label of the refusal counters.
    pub fn reason(&self) -> &'static str {
        match self {
            IngestError::Unauthenticated => reason::UNAUTHENTICATED,
            IngestError::Invalid(_) | IngestError::MessageCount(_) => reason::INVALID,
            IngestError::TooLarge { .. } => reason::TOO_LARGE,
            IngestError::BodyTimeout { .. } => reason::BODY_TIMEOUT,
            IngestError::Unsupported(_) => reason::UNSUPPORTED,
            IngestError::NoDestination(_) => reason::NO_DESTINATION,
            IngestError::Throttled { .. } => reason::MEMORY_BUDGET,
            IngestError::Unavailable { .. } => reason::QUEUE_FULL,
            IngestError::LogBackpressure { reason, .. } => reason,
            IngestError::LogFailed { .. } => reason::LOG_FAILED,
            IngestError::ShuttingDown { .. } => reason::SHUTTING_DOWN,
        }
    }

    /// The delay to advise in RetryInfo / Retry-After, for throttling refusals only.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            IngestError::Throttled { retry_after, .. }
            | IngestError::Unavailable { retry_after, .. }
            | IngestError::LogBackpressure { retry_after, .. }
            | IngestError::LogFailed { retry_after, .. }
            | IngestError::ShuttingDown { retry_after } => Some(*retry_after),
            _ => None,
        }
    }
}

/// What both transports share. Cheap to clone behind an `Arc`.
#[derive(Debug)]
pub struct Ingest {
    fanout: Dispatcher,
    budget: MemoryBudget,
    tokens: Vec<Vec<u8>>,
    max_request_bytes: usize,
    retry_after: Duration,
    /// `receiver.connections.body_read_timeout_ms`; zero for none.
    body_read_timeout: Duration,
    /// Large JSON documents being converted and large bodies being decompressed, one per core.
    decode_slots: tokio::sync::Semaphore,
}

/// JSON documents and compressed bodies smaller than this are decoded on the async worker
/// (tens of microseconds).
const INLINE_DECODE_BYTES: usize = 64 * 1024;

impl Ingest {
    pub fn new(
        config: &ReceiverConfig,
        fanout: Dispatcher,
        budget: MemoryBudget,
        retry_after: Duration,
    ) -> Arc<Self> {
        let tokens = config
            .auth
            .as_ref()
            .map(|a| {
                a.bearer_tokens
                    .iter()
                    .map(|t| t.as_bytes().to_vec())
                    .collect()
            })
            .unwrap_or_default();
        Arc::new(Ingest {
            fanout,
            budget,
            tokens,
            max_request_bytes: config.max_request_bytes,
            retry_after,
            body_read_timeout: Duration::from_millis(config.connections.body_read_timeout_ms),
            decode_slots: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
        })
    }

    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// OTLP/JSON to protobuf. A large document takes milliseconds of CPU and several times
    /// its size in memory: it is converted off the async workers (which would otherwise stall
    /// every other client meanwhile), at most one per core at a time, and its size is charged
    /// to the memory budget while it is converted. Small documents are converted in place.
    async fn convert_json(&self, signal: Signal, body: Bytes) -> Result<(Bytes, u64), IngestError> {
        if body.len() < INLINE_DECODE_BYTES {
            return signal
                .json_to_protobuf(&body)
                .map_err(|e| IngestError::Invalid(e.to_string()));
        }
        let _charge = self
            .budget
            .try_admit(body.len())
            .ok_or(IngestError::Throttled {
                limit: self.budget.limit(),
                retry_after: self.retry_after,
            })?;
        let _slot = self.decode_slot().await?;
        tokio::task::spawn_blocking(move || signal.json_to_protobuf(&body))
            .await
            .map_err(|e| IngestError::Invalid(format!("JSON conversion failed: {e}")))?
            .map_err(|e| IngestError::Invalid(e.to_string()))
    }

    /// Wraps the request bodies of a receiver's `router` in the limits of [`limits`]: the
    /// body deadline and the memory budget.
    pub fn limit_bodies(&self, router: axum::Router) -> axum::Router {
        let deadline = (!self.body_read_timeout.is_zero()).then_some(self.body_read_timeout);
        limits::limit_bodies(router, deadline, self.budget.clone(), self.retry_after)
    }

    /// Checks an `Authorization` header value against the configured tokens.
    pub fn authorize(&self, authorization: Option<&[u8]>) -> Result<(), IngestError> {
        if self.tokens.is_empty() {
            return Ok(());
        }
        let presented = authorization
            .and_then(|v| {
                let (scheme, token) = v.split_at(v.iter().position(|&b| b == b' ')?);
                scheme
                    .eq_ignore_ascii_case(b"bearer")
                    .then(|| token.trim_ascii())
            })
            .ok_or(IngestError::Unauthenticated)?;
        // Compare with every token in constant time per token, so timing reveals nothing.
        let matched = self
            .tokens
            .iter()
            .fold(subtle::Choice::from(0), |found, token| {
                found | token.as_slice().ct_eq(presented)
            });
        bool::from(matched)
            .then_some(())
            .ok_or(IngestError::Unauthenticated)
    }

    /// Decompresses `body`, stopping at the request size limit (see [`body::decompress`]).
    /// Like a large JSON document, a large compressed body is decompressed off the async
    /// workers, one per core at a time: its output (up to `max_request_bytes`) is not charged
    /// to the budget, so this also bounds how much of it exists at once.
    pub async fn decompress(
        &self,
        compression: body::Compression,
        body: Bytes,
    ) -> Result<Bytes, IngestError> {
        let limit = self.max_request_bytes;
        if compression == body::Compression::Identity || body.len() < INLINE_DECODE_BYTES {
            return body::decompress(compression, body, limit);
        }
        let _slot = self.decode_slot().await?;
        tokio::task::spawn_blocking(move || body::decompress(compression, body, limit))
            .await
            .map_err(|e| IngestError::Invalid(format!("decompression failed: {e}")))?
    }

    /// Refuses a request of `signal` with the throttling answer while a destination that
    /// takes it lags past its `queue.throttle_lag_ms`. The advised delay is how far the lag
    /// is over the bound (at least 100 ms, at most `retry_after_seconds`): clients that wait
    /// the full second while the destination catches up in less leave it idle.
    pub fn check_lag(&self, signal: Signal) -> Result<(), IngestError> {
        self.fanout.check_lag(signal).map_err(|lagging| {
            let floor = Duration::from_millis(100);
            IngestError::LogBackpressure {
                message: lagging.to_string(),
                reason: reason::THROTTLE_LAG,
                retry_after: lagging
                    .lag
                    .saturating_sub(lagging.bound)
                    .clamp(floor, self.retry_after.max(floor)),
            }
        })
    }

    /// One of the slots (one per core) for CPU-heavy decoding off the async workers.
    async fn decode_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>, IngestError> {
        self.decode_slots
            .acquire()
            .await
            .map_err(|_| IngestError::ShuttingDown {
                retry_after: self.retry_after,
            })
    }

    /// Validates a decompressed body, admits it against the memory budget and queues it for
    /// every destination. Returns the number of items accepted.
    pub async fn accept(
        &self,
        signal: Signal,
        transport: Transport,
        format: BodyFormat,
        body: Bytes,
    ) -> Result<u64, IngestError> {
        let (body, items) = match format {
            BodyFormat::Protobuf => {
                let items = signal
                    .count_protobuf(&body)
                    .map_err(|e| IngestError::Invalid(e.to_string()))?;
                (body, items)
            }
            BodyFormat::Json => self.convert_json(signal, body).await?,
        };
        let labels = [
            ("signal", signal.as_str()),
            ("transport", transport.as_str()),
        ];
        metrics::histogram!(telemetry::RECEIVER_REQUEST_BYTES, &labels).record(body.len() as f64);
        let refuse = |error: IngestError| {
            metrics::counter!(telemetry::RECEIVER_REFUSED_ITEMS, "signal" => signal.as_str(), "transport" => transport.as_str(), "reason" => error.reason()).increment(items);
            error
        };
        if items == 0 {
            // Nothing to forward (OTLP allows empty requests); acknowledge without queueing.
            metrics::counter!(telemetry::RECEIVER_ACCEPTED_REQUESTS, &labels).increment(1);
            return Ok(0);
        }
        let permit = self.budget.try_admit(body.len()).ok_or_else(|| {
            refuse(IngestError::Throttled {
                limit: self.budget.limit(),
                retry_after: self.retry_after,
            })
        })?;
        let payload = Arc::new(Payload::new(signal, body, items, permit));
        self.fanout.dispatch(payload).await.map_err(|e| {
            refuse(match e {
                DispatchError::NoDestination(signal) => IngestError::NoDestination(signal),
                DispatchError::ShuttingDown => IngestError::ShuttingDown {
                    retry_after: self.retry_after,
                },
                full @ DispatchError::QueueFull(_) => IngestError::Unavailable {
                    message: full.to_string(),
                    retry_after: self.retry_after,
                },
                DispatchError::Log(error) => match error {
                    AppendError::Full(_) => IngestError::LogBackpressure {
                        message: error.to_string(),
                        reason: reason::LOG_FULL,
                        retry_after: self.retry_after,
                    },
                    AppendError::DiskFloor(_) => IngestError::LogBackpressure {
                        message: error.to_string(),
                        reason: reason::DISK_FLOOR,
                        retry_after: self.retry_after,
                    },
                    AppendError::Closed => IngestError::ShuttingDown {
                        retry_after: self.retry_after,
                    },
                    AppendError::Io(_) => IngestError::LogFailed {
                        message: error.to_string(),
                        retry_after: self.retry_after,
                    },
                },
            })
        })?;
        metrics::counter!(telemetry::RECEIVER_ACCEPTED_REQUESTS, &labels).increment(1);
        metrics::counter!(telemetry::RECEIVER_ACCEPTED_ITEMS, &labels).increment(items);
        Ok(items)
    }
}

/// Counts a refused request.
pub fn record_refusal(signal: Signal, transport: Transport, error: &IngestError) {
    metrics::counter!(
        telemetry::RECEIVER_REFUSED_REQUESTS,
        "signal" => signal.as_str(),
        "transport" => transport.as_str(),
        "reason" => error.reason(),
    )
    .increment(1);
    match error {
        IngestError::Invalid(message) => {
            tracing::debug!(%signal, transport = transport.as_str(), %message, "Refused an invalid request.")
        }
        other => {
            tracing::debug!(%signal, transport = transport.as_str(), error = %other, "Refused a request.")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ingest(tokens: &[&str]) -> Arc<Ingest> {
        let config = ReceiverConfig {
            max_request_bytes: 1000,
            auth: (!tokens.is_empty()).then(|| AuthConfig {
                bearer_tokens: tokens.iter().map(|t| t.to_string()).collect(),
            }),
            ..ReceiverConfig::default()
        };
        Ingest::new(
            &config,
            Dispatcher::Memory(crate::pipeline::Fanout::default()),
            MemoryBudget::new(1 << 20),
            Duration::from_secs(1),
        )
    }

    #[test]
    fn bearer_tokens() {
        let open = ingest(&[]);
        assert!(open.authorize(None).is_ok());
        let closed = ingest(&["s3cret", "other"]);
        for (header, ok) in [
            (None, false),
            (Some(&b"Bearer s3cret"[..]), true),
            (Some(b"bearer other"), true),
            (Some(b"Bearer s3cre"), false),
            (Some(b"Basic s3cret"), false),
            (Some(b"s3cret"), false),
        ] {
            assert_eq!(closed.authorize(header).is_ok(), ok, "{header:?}");
        }
    }
}
