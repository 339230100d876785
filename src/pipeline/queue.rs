//! A destination's bounded queue of shared payloads, with its depth and bytes exported as
//! gauges. The sender side lives in the destination's log reader (with the durable log, the
//! default) or in the fan-out (log off); the receiver side in the destination's batching loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Delivery, Payload};
use crate::telemetry;

/// What the fan-out does when a destination's queue is full.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// Wait up to `block_timeout_ms` for room, then refuse the request with a retryable
    /// answer (gRPC UNAVAILABLE / HTTP 503) and deliver it to no destination. Nothing is
    /// lost, but a stuck destination eventually throttles every client.
    #[default]
    Block,
    /// Skip this destination for the request (counted in `otelgate_exporter_dropped_items_total`);
    /// the other destinations still get it. A stuck destination never slows the others.
    Drop,
}

const fn default_capacity() -> usize {
    1024
}

const fn default_block_timeout_ms() -> u64 {
    1000
}

/// Size and overflow policy of one destination's queue.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Requests the queue holds. The memory budget bounds their bytes across all queues.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// `block` (default) or `drop`; see [`WhenFull`].
    #[serde(default)]
    pub when_full: WhenFull,
    /// With `block`, how long a request may wait for room before it is refused.
    #[serde(default = "default_block_timeout_ms")]
    pub block_timeout_ms: u64,
    /// With the durable log on: when this destination is more than this many bytes behind
    /// the head of the log, its oldest data is dropped for it alone (a segment at a time,
    /// counted in `otelgate_log_dropped_records_total{reason="lag_limit"}`). Unset: it may
    /// lag up to `log.max_bytes`. `when_full` and `block_timeout_ms` apply to memory-only
    /// queues; with the log on, the log is the buffer.
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
    /// With the durable log on: when this destination lags more than this many milliseconds
    /// (the age of its oldest unfinished request, or its backlog at the rate it has been
    /// finishing the log, whichever is longer), new requests are refused with the throttling
    /// answer (gRPC `RESOURCE_EXHAUSTED` with retry info, HTTP 429 with `Retry-After`) until
    /// it catches up, so a steady overload settles at the destination's rate with this lag
    /// instead of a backlog that grows without limit. Nothing already acknowledged is
    /// dropped. Unset (the default): the log absorbs any lag up to `log.max_bytes`.
    #[serde(default)]
    pub throttle_lag_ms: Option<u64>,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: default_capacity(),
            when_full: WhenFull::default(),
            block_timeout_ms: default_block_timeout_ms(),
            max_lag_bytes: None,
            throttle_lag_ms: None,
        }
    }
}

impl QueueConfig {
    pub fn block_timeout(&self) -> Duration {
        Duration::from_millis(self.block_timeout_ms)
    }

    /// How far behind the log this destination may fall, in bytes and in time.
    pub fn lag_limits(&self) -> LagLimits {
        LagLimits {
            max_lag_bytes: self.max_lag_bytes,
            throttle_lag: self.throttle_lag_ms.map(Duration::from_millis),
        }
    }
}

/// A destination's limits on how far behind the head of the durable log it may fall.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LagLimits {
    /// Past this many bytes, its oldest data is dropped for it alone.
    pub max_lag_bytes: Option<u64>,
    /// Past this age of its oldest unfinished request, new requests are refused (throttled).
    pub throttle_lag: Option<Duration>,
}

/// Live depth of one queue, readable without holding the queue open (for `/readyz`).
#[derive(Debug)]
pub struct QueueStats {
    name: Arc<str>,
    depth: AtomicU64,
    bytes: AtomicU64,
    depth_gauge: metrics::Gauge,
    bytes_gauge: metrics::Gauge,
}

impl QueueStats {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Requests waiting.
    pub fn depth(&self) -> u64 {
        self.depth.load(Ordering::Relaxed)
    }

    /// Bytes waiting.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Counts a payload in (`entering`) or out of the queue and updates the gauges, whose
    /// handles are registered once, so this allocates nothing per request.
    fn count(&self, payload: &Payload, entering: bool) {
        let len = payload.body.len() as u64;
        let (depth, bytes) = if entering {
            (
                self.depth.fetch_add(1, Ordering::Relaxed) + 1,
                self.bytes.fetch_add(len, Ordering::Relaxed) + len,
            )
        } else {
            (
                self.depth.fetch_sub(1, Ordering::Relaxed) - 1,
                self.bytes.fetch_sub(len, Ordering::Relaxed) - len,
            )
        };
        self.depth_gauge.set(depth as f64);
        self.bytes_gauge.set(bytes as f64);
    }
}

/// The sending end of a destination queue: held by the destination's log reader, or by the
/// fan-out with the log off.
#[derive(Debug, Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Delivery>,
    gauges: Arc<QueueStats>,
}

/// The destination worker's end of its queue. The queue closes when every sender is gone,
/// which is how a worker learns that the receivers have stopped.
#[derive(Debug)]
pub struct QueueReceiver {
    rx: mpsc::Receiver<Delivery>,
    gauges: Arc<QueueStats>,
}

/// A bounded queue for the destination `name`. Its gauges are
/// `otelgate_exporter_queue_depth` and `otelgate_exporter_queue_bytes` with the label
/// `exporter` for every destination, the TimescaleDB sink's included
/// (`exporter="timescale"`): dashboards, alert rules and users' queries read them by
/// those names.
pub fn queue(name: &str, capacity: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let gauges = Arc::new(QueueStats {
        name: name.into(),
        depth: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        depth_gauge: metrics::gauge!(telemetry::EXPORTER_QUEUE_DEPTH, "exporter" => name.to_owned()),
        bytes_gauge: metrics::gauge!(telemetry::EXPORTER_QUEUE_BYTES, "exporter" => name.to_owned()),
    });
    (
        QueueSender {
            tx,
            gauges: gauges.clone(),
        },
        QueueReceiver { rx, gauges },
    )
}

/// Room for one payload, reserved ahead of sending so a fan-out can be all or nothing.
pub struct Reserved<'a> {
    permit: mpsc::Permit<'a, Delivery>,
    gauges: &'a QueueStats,
}

impl Reserved<'_> {
    pub fn send(self, payload: Delivery) {
        self.gauges.count(&payload, true);
        self.permit.send(payload);
    }
}

/// Why no room was reserved.
#[derive(Debug, PartialEq, Eq)]
pub enum ReserveError {
    Full,
    Closed,
}

impl QueueSender {
    /// Reserves room without waiting.
    pub fn try_reserve(&self) -> Result<Reserved<'_>, ReserveError> {
        match self.tx.try_reserve() {
            Ok(permit) => Ok(self.reserved(permit)),
            Err(mpsc::error::TrySendError::Full(())) => Err(ReserveError::Full),
            Err(mpsc::error::TrySendError::Closed(())) => Err(ReserveError::Closed),
        }
    }

    /// Reserves room, waiting up to `timeout`.
    pub async fn reserve(&self, timeout: Duration) -> Result<Reserved<'_>, ReserveError> {
        match tokio::time::timeout(timeout, self.tx.reserve()).await {
            Ok(Ok(permit)) => Ok(self.reserved(permit)),
            Ok(Err(_)) => Err(ReserveError::Closed),
            Err(_) => Err(ReserveError::Full),
        }
    }

    fn reserved<'a>(&'a self, permit: mpsc::Permit<'a, Delivery>) -> Reserved<'a> {
        Reserved {
            permit,
            gauges: &self.gauges,
        }
    }

    /// Sends, waiting as long as it takes for room (the durable log's readers: the log holds
    /// the backlog, so waiting here slows only this destination). Errs if the queue is closed.
    pub async fn send(&self, delivery: Delivery) -> Result<(), ReserveError> {
        let permit = self.tx.reserve().await.map_err(|_| ReserveError::Closed)?;
        self.reserved(permit).send(delivery);
        Ok(())
    }

    /// The queue's live statistics.
    pub fn stats(&self) -> Arc<QueueStats> {
        self.gauges.clone()
    }
}

impl QueueReceiver {
    /// The next payload, or `None` once the queue is closed and empty.
    pub async fn recv(&mut self) -> Option<Delivery> {
        let payload = self.rx.recv().await?;
        self.gauges.count(&payload, false);
        Some(payload)
    }

    /// Takes what is left without waiting, for the undelivered report at a forced shutdown.
    pub fn drain_now(&mut self) -> Vec<Delivery> {
        let mut left = Vec::new();
        while let Ok(payload) = self.rx.try_recv() {
            self.gauges.count(&payload, false);
            left.push(payload);
        }
        left
    }
}
