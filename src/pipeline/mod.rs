//! Between the receivers and the destinations: admission against a memory budget, the durable
//! log ([`log`], on by default: a request is appended and synced, then each destination's
//! reader hands it to that destination's bounded queue) or, with the log off, a fan-out that
//! hands each accepted request to every destination's queue directly. All queues share one
//! immutable copy of the request ([`Payload`] behind an `Arc`). With the log on, its budget is
//! returned once the append is synced; with it off, when the last destination lets go of it.
//! [`batching`] is the loop every destination drives, [`retry`] their shared retry policy.

pub mod batching;
mod budget;
mod fanout;
pub mod log;
mod queue;
pub mod retry;

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

pub use budget::{BudgetPermit, MemoryBudget};
pub use fanout::{DispatchError, Dispatcher, Fanout};
pub use queue::{queue, LagLimits, QueueConfig, QueueReceiver, QueueSender, QueueStats, WhenFull};

use bytes::Bytes;

use crate::config::ConfigError;
use crate::Signal;

/// One accepted request: protobuf `Export*ServiceRequest` bytes as the client sent them (or
/// as converted once from OTLP/JSON), shared read-only by every destination.
#[derive(Debug)]
pub struct Payload {
    pub signal: Signal,
    pub body: Bytes,
    /// Spans, metric data points or log records in `body`.
    pub items: u64,
    /// When the receiver accepted it, for receive-to-commit latency.
    pub received: std::time::Instant,
    /// Holds `body.len()` bytes of the memory budget until the last holder is done (none for
    /// copies the durable log keeps or reads back; its cache has its own bound).
    _permit: Option<BudgetPermit>,
}

impl Payload {
    pub fn new(signal: Signal, body: Bytes, items: u64, permit: BudgetPermit) -> Self {
        Payload {
            signal,
            body,
            items,
            received: std::time::Instant::now(),
            _permit: Some(permit),
        }
    }

    /// A request read back from the durable log.
    pub fn replayed(signal: Signal, body: Bytes, items: u64, received: std::time::Instant) -> Self {
        Payload {
            signal,
            body,
            items,
            received,
            _permit: None,
        }
    }

    /// The same request without its budget share (the body is shared, not copied).
    pub fn durable_copy(&self) -> Self {
        Payload::replayed(self.signal, self.body.clone(), self.items, self.received)
    }
}

/// A request as one destination holds it. Cloning is cheap. With the durable log on, the
/// last clone to be dropped marks the record finished for this destination, so destinations
/// drop their deliveries once a batch has its outcome.
#[derive(Debug, Clone)]
pub struct Delivery(Arc<DeliveryInner>);

#[derive(Debug)]
struct DeliveryInner {
    payload: Arc<Payload>,
    logged: Option<(log::Position, log::Done)>,
    /// With the log: this request's share of its destination's read window.
    _window: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Delivery {
    /// A request from the memory-only fan-out.
    pub fn memory(payload: Arc<Payload>) -> Self {
        Delivery(Arc::new(DeliveryInner {
            payload,
            logged: None,
            _window: None,
        }))
    }

    /// A request read from the durable log at `at`.
    pub fn logged(
        payload: Arc<Payload>,
        at: log::Position,
        done: log::Done,
        window: tokio::sync::OwnedSemaphorePermit,
    ) -> Self {
        Delivery(Arc::new(DeliveryInner {
            payload,
            logged: Some((at, done)),
            _window: Some(window),
        }))
    }

    /// Where the request is in the durable log, if it came from there.
    pub fn position(&self) -> Option<log::Position> {
        self.0.logged.as_ref().map(|(at, _)| *at)
    }

    /// Whether both deliveries carry the same request.
    pub fn same_payload(&self, other: &Delivery) -> bool {
        Arc::ptr_eq(&self.0.payload, &other.0.payload)
    }
}

impl std::ops::Deref for Delivery {
    type Target = Payload;

    fn deref(&self) -> &Payload {
        &self.0.payload
    }
}

const fn default_memory_budget_bytes() -> u64 {
    256 * 1024 * 1024
}

const fn default_retry_after_seconds() -> u64 {
    1
}

const fn default_shutdown_timeout_seconds() -> u64 {
    30
}

/// Most `worker_threads`: far beyond any core count worth one thread each.
pub const MAX_WORKER_THREADS: usize = 1024;

/// Admission, shutdown and the threads that run the pipeline.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Most request bytes held in memory at once: bodies being read and requests being
    /// appended to the log (with the log off: also every queue and in-flight batch).
    /// Over it, new requests are refused with a throttling answer (gRPC RESOURCE_EXHAUSTED with
    /// RetryInfo, HTTP 429 with Retry-After) so clients back off and retry.
    #[serde(default = "default_memory_budget_bytes")]
    pub memory_budget_bytes: u64,
    /// Delay advised to clients in RetryInfo / Retry-After when refusing for lack of room.
    #[serde(default = "default_retry_after_seconds")]
    pub retry_after_seconds: u64,
    /// On SIGTERM/Ctrl-C, how long exporters may keep draining their queues and retrying
    /// before what is left is reported as undelivered and the process exits.
    #[serde(default = "default_shutdown_timeout_seconds")]
    pub shutdown_timeout_seconds: u64,
    /// Threads of the async runtime that runs receivers, exporters and the sink (`otelgate
    /// run` only); 0: one per CPU core. The log writer has a thread of its own either way.
    #[serde(default)]
    pub worker_threads: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            memory_budget_bytes: default_memory_budget_bytes(),
            retry_after_seconds: default_retry_after_seconds(),
            shutdown_timeout_seconds: default_shutdown_timeout_seconds(),
            worker_threads: 0,
        }
    }
}

impl PipelineConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_budget_bytes == 0 {
            return Err(ConfigError::invalid(
                "pipeline.memory_budget_bytes",
                "must be greater than 0",
            ));
        }
        if self.worker_threads > MAX_WORKER_THREADS {
            return Err(ConfigError::invalid(
                "pipeline.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0: one per CPU core)"),
            ));
        }
        Ok(())
    }

    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(self.retry_after_seconds)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds)
    }
}
