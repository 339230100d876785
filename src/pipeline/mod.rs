//! Between the receivers and the destinations: admission against a memory budget, and a
//! fan-out that hands each accepted request to every destination's bounded queue. All queues
//! share one immutable copy of the request ([`Payload`] behind an `Arc`); its memory is given
//! back to the budget when the last destination lets go of it.

mod budget;
mod fanout;
mod queue;

use std::time::Duration;

use serde::Deserialize;

pub use budget::{BudgetPermit, MemoryBudget};
pub use fanout::{DispatchError, Fanout};
pub use queue::{queue, QueueConfig, QueueReceiver, QueueSender, QueueStats, WhenFull};

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
    /// Holds `body.len()` bytes of the memory budget until the last destination is done.
    _permit: BudgetPermit,
}

impl Payload {
    pub fn new(signal: Signal, body: Bytes, items: u64, permit: BudgetPermit) -> Self {
        Payload {
            signal,
            body,
            items,
            received: std::time::Instant::now(),
            _permit: permit,
        }
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

/// Admission and shutdown.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Most request bytes held in memory at once, across all queues and in-flight batches.
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
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            memory_budget_bytes: default_memory_budget_bytes(),
            retry_after_seconds: default_retry_after_seconds(),
            shutdown_timeout_seconds: default_shutdown_timeout_seconds(),
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
        Ok(())
    }

    pub fn retry_after(&self) -> Duration {
        Duration::from_secs(self.retry_after_seconds)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_seconds)
    }
}
