//! The exporter's worker: batches requests per signal in the pipeline's batching loop, sends
//! each batch as one request with bounded concurrency, retries, and on shutdown reports what
//! it could not deliver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{BatchConfig, OtlpExporterConfig};
use super::error::RetryDecision;
use super::OtlpClient;
use crate::pipeline::batching::{self, BatchingDestination};
use crate::pipeline::retry::{retry_limit, Retries, RetryConfig};
use crate::pipeline::{Delivery, QueueReceiver};
use crate::telemetry::{self, reason};
use crate::Signal;

/// What an exporter did over its life, returned when its worker stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    pub name: String,
    /// Items the backend accepted.
    pub delivered: u64,
    /// Items given up on: non-retryable errors, retries exhausted, or partial-success rejections.
    pub failed: u64,
    /// Items still queued, batched or in flight when a forced shutdown stopped the worker
    /// (with the durable log they are not lost: they stay in the log).
    pub undelivered: u64,
}

/// One OTLP destination: its queue, its client and its policies.
pub struct OtlpExporter {
    queue: QueueReceiver,
    concurrency: usize,
    batches: ExportBatches,
}

/// The exporter's side of the batching loop: one pending batch per signal, and what its
/// send tasks need.
struct ExportBatches {
    name: Arc<str>,
    client: OtlpClient,
    batch: BatchConfig,
    retry: RetryConfig,
    /// How long one batch is retried (see [`retry_limit`]).
    retry_limit: Duration,
    /// Fed by the durable log: what is not delivered at a forced stop stays in the log.
    durable: bool,
    pending: [PendingExport; 3],
    tally: Arc<ExportTally>,
}

/// Requests of one signal waiting to be sent together.
#[derive(Default)]
struct PendingExport {
    parts: Vec<Delivery>,
    items: u64,
    bytes: usize,
    deadline: Option<Instant>,
}

/// A batch on its way: the payloads it covers stay alive (and in the memory budget) until
/// the batch's outcome is known.
struct ExportBatch {
    signal: Signal,
    parts: Vec<Delivery>,
    items: u64,
    bytes: usize,
}

impl ExportBatch {
    /// Concatenated protobuf messages parse as one message whose repeated fields are the
    /// concatenation of theirs, so merging requests is appending their bytes.
    fn body(&self) -> Bytes {
        if let [only] = self.parts.as_slice() {
            return only.body.clone();
        }
        let mut body = BytesMut::with_capacity(self.bytes);
        for part in &self.parts {
            body.extend_from_slice(&part.body);
        }
        body.freeze()
    }
}

/// Counters shared by the exporter and its send tasks.
#[derive(Default)]
struct ExportTally {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Items per signal in batches that have started but have no outcome yet.
    in_flight: [AtomicU64; 3],
}

impl OtlpExporter {
    /// An exporter reading `queue`; `durable` when the durable log feeds the queue (see
    /// [`ExportReport::undelivered`] and [`retry_limit`]).
    pub fn new(
        name: &str,
        config: &OtlpExporterConfig,
        client: OtlpClient,
        queue: QueueReceiver,
        durable: bool,
    ) -> Self {
        OtlpExporter {
            queue,
            concurrency: config.concurrency,
            batches: ExportBatches {
                name: name.into(),
                client,
                batch: config.batch.clone(),
                retry: config.retry.clone(),
                retry_limit: retry_limit(durable, config.retry.max_elapsed()),
                durable,
                pending: Default::default(),
                tally: Arc::default(),
            },
        }
    }

    /// Runs until the queue is closed and drained (graceful) or `stop` fires (forced).
    pub async fn run(mut self, stop: CancellationToken) -> ExportReport {
        batching::drive(&mut self.batches, &mut self.queue, self.concurrency, &stop).await;
        self.batches.report(&mut self.queue)
    }
}

impl ExportBatches {
    /// Counts and reports what was not delivered (items of aborted batches are still counted
    /// in flight), and returns the exporter's report.
    fn report(&self, queue: &mut QueueReceiver) -> ExportReport {
        let tally = &self.tally;
        let mut undelivered: [u64; 3] =
            std::array::from_fn(|i| tally.in_flight[i].load(Ordering::Relaxed));
        for payload in queue.drain_now() {
            undelivered[payload.signal.index()] += payload.items;
        }
        for pending in &self.pending {
            if let Some(first) = pending.parts.first() {
                undelivered[first.signal.index()] += pending.items;
            }
        }
        for signal in Signal::ALL {
            let items = undelivered[signal.index()];
            if items > 0 && self.durable {
                tracing::info!(exporter = %self.name, %signal, items, "Shutdown deadline reached; undelivered items stay in the durable log.");
            } else if items > 0 {
                metrics::counter!(telemetry::EXPORTER_FAILED_ITEMS, "exporter" => self.name.to_string(), "signal" => signal.as_str(), "reason" => reason::SHUTDOWN).increment(items);
                tracing::error!(exporter = %self.name, %signal, items, "Shutdown deadline reached; items were not delivered.");
            }
        }
        ExportReport {
            name: self.name.to_string(),
            delivered: tally.delivered.load(Ordering::Relaxed),
            failed: tally.failed.load(Ordering::Relaxed),
            undelivered: undelivered.iter().sum(),
        }
    }

    /// Takes the pending batch of signal `index`, leaving an empty one.
    fn take(&mut self, index: usize) -> ExportBatch {
        let pending = std::mem::take(&mut self.pending[index]);
        ExportBatch {
            signal: pending.parts.first().map_or(Signal::Traces, |p| p.signal),
            parts: pending.parts,
            items: pending.items,
            bytes: pending.bytes,
        }
    }
}

/// A due batch waits for a send slot, and the exporter reads nothing meanwhile: a slow
/// backend fills its own queue, whose `when_full` policy then applies.
impl BatchingDestination for ExportBatches {
    const DUE_BATCH_WAITS_FOR_SLOT: bool = true;

    fn batch_count(&self) -> usize {
        self.pending.len()
    }

    fn deadline(&self, index: usize) -> Option<Instant> {
        self.pending[index].deadline
    }

    fn is_pending(&self, index: usize) -> bool {
        !self.pending[index].parts.is_empty()
    }

    /// The signal's pending batch leaves first if this request would take it over its byte
    /// limit.
    fn overflowed_by(&self, delivery: &Delivery, overflowed: &mut Vec<usize>) {
        let index = delivery.signal.index();
        let pending = &self.pending[index];
        if !pending.parts.is_empty() && pending.bytes + delivery.body.len() > self.batch.max_bytes {
            overflowed.push(index);
        }
    }

    /// A new batch's deadline counts from when the request was received.
    fn add(&mut self, delivery: Delivery, received: Instant, full: &mut Vec<usize>) {
        let index = delivery.signal.index();
        let max_wait = self.batch.max_wait();
        let pending = &mut self.pending[index];
        pending.items += delivery.items;
        pending.bytes += delivery.body.len();
        pending.parts.push(delivery);
        pending.deadline.get_or_insert_with(|| received + max_wait);
        if pending.items >= self.batch.max_items
            || pending.bytes >= self.batch.max_bytes
            || max_wait == Duration::ZERO
        {
            full.push(index);
        }
    }

    fn start(&mut self, index: usize, slot: OwnedSemaphorePermit, tasks: &mut JoinSet<()>) {
        let batch = self.take(index);
        let labels = [
            ("exporter", self.name.to_string()),
            ("signal", batch.signal.as_str().to_owned()),
        ];
        metrics::histogram!(telemetry::EXPORTER_BATCH_ITEMS, &labels).record(batch.items as f64);
        metrics::histogram!(telemetry::EXPORTER_BATCH_BYTES, &labels).record(batch.bytes as f64);
        self.tally.in_flight[batch.signal.index()].fetch_add(batch.items, Ordering::Relaxed);
        let sender = BatchSender {
            name: self.name.clone(),
            client: self.client.clone(),
            retry: self.retry.clone(),
            retry_limit: self.retry_limit,
            tally: self.tally.clone(),
        };
        tasks.spawn(async move {
            sender.deliver(batch).await;
            drop(slot);
        });
    }
}

/// What a send task needs.
struct BatchSender {
    name: Arc<str>,
    client: OtlpClient,
    retry: RetryConfig,
    retry_limit: Duration,
    tally: Arc<ExportTally>,
}

impl BatchSender {
    /// Sends one batch until it succeeds, fails for good, or runs out of retry time.
    async fn deliver(self, batch: ExportBatch) {
        let signal = batch.signal;
        let name = self.name.to_string();
        let body = batch.body();
        let mut retries = Retries::new(&self.retry, self.retry_limit);
        let outcome = loop {
            let error = match self.client.export(signal, body.clone()).await {
                Ok(None) => break Outcome::Delivered,
                Ok(Some(partial)) => break Outcome::Partial(partial),
                Err(error) => error,
            };
            let delay = match error.retry() {
                RetryDecision::Never => {
                    break Outcome::Failed(reason::NON_RETRYABLE, error.to_string())
                }
                RetryDecision::After(_) if !self.retry.enabled => {
                    break Outcome::Failed(reason::RETRIES_EXHAUSTED, error.to_string())
                }
                RetryDecision::After(requested) => match retries.next_delay(requested) {
                    Some(delay) => delay,
                    None => break Outcome::Failed(reason::RETRIES_EXHAUSTED, error.to_string()),
                },
            };
            metrics::counter!(telemetry::EXPORTER_RETRIES, "exporter" => name.clone(), "signal" => signal.as_str()).increment(1);
            tracing::debug!(exporter = %name, %signal, %error, delay_ms = delay.as_millis() as u64, "Export failed; will retry.");
            tokio::time::sleep(delay).await;
        };
        let elapsed = retries.elapsed().as_secs_f64();
        let (delivered, failed, label) = match outcome {
            Outcome::Delivered => (batch.items, 0, "ok"),
            Outcome::Partial(partial) => {
                let rejected = (partial.rejected.max(0) as u64).min(batch.items);
                metrics::counter!(telemetry::EXPORTER_REJECTED_ITEMS, "exporter" => name.clone(), "signal" => signal.as_str()).increment(rejected);
                tracing::warn!(exporter = %name, %signal, rejected, message = %partial.error_message, "Backend rejected part of a batch.");
                (batch.items - rejected, rejected, "partial")
            }
            Outcome::Failed(why, error) => {
                metrics::counter!(telemetry::EXPORTER_FAILED_ITEMS, "exporter" => name.clone(), "signal" => signal.as_str(), "reason" => why).increment(batch.items);
                tracing::warn!(exporter = %name, %signal, items = batch.items, reason = why, %error, "Export failed; batch dropped.");
                (0, batch.items, "failed")
            }
        };
        metrics::counter!(telemetry::EXPORTER_SENT_ITEMS, "exporter" => name.clone(), "signal" => signal.as_str()).increment(delivered);
        metrics::histogram!(telemetry::EXPORTER_LATENCY_SECONDS, "exporter" => name, "signal" => signal.as_str(), "outcome" => label).record(elapsed);
        self.tally.delivered.fetch_add(delivered, Ordering::Relaxed);
        self.tally.failed.fetch_add(failed, Ordering::Relaxed);
        self.tally.in_flight[signal.index()].fetch_sub(batch.items, Ordering::Relaxed);
    }
}

enum Outcome {
    Delivered,
    Partial(crate::signal::PartialSuccess),
    Failed(&'static str, String),
}
