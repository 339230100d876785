//! The exporter's worker: reads its queue, batches per signal, sends with bounded concurrency,
//! retries, and on shutdown drains what it can before reporting what it could not deliver.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{BatchConfig, OtlpExporterConfig};
use super::error::RetryDecision;
use super::retry::{Backoff, RetryConfig};
use super::OtlpClient;
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
    name: Arc<str>,
    client: OtlpClient,
    queue: QueueReceiver,
    batch: BatchConfig,
    retry: RetryConfig,
    concurrency: usize,
    /// Fed by the durable log: what is not delivered at a forced stop stays in the log.
    durable: bool,
}

/// Requests of one signal waiting to be sent together.
#[derive(Default)]
struct Pending {
    parts: Vec<Delivery>,
    items: u64,
    bytes: usize,
    deadline: Option<Instant>,
}

/// A batch on its way: the payloads it covers stay alive (and in the memory budget) until
/// the batch's outcome is known.
struct Batch {
    signal: Signal,
    parts: Vec<Delivery>,
    items: u64,
    bytes: usize,
}

impl Batch {
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

/// Counters shared by the worker and its send tasks.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    failed: AtomicU64,
    /// Items per signal in batches that have started but have no outcome yet.
    in_flight: [AtomicU64; 3],
}

impl OtlpExporter {
    pub fn new(
        name: &str,
        config: &OtlpExporterConfig,
        client: OtlpClient,
        queue: QueueReceiver,
    ) -> Self {
        OtlpExporter {
            name: name.into(),
            client,
            queue,
            batch: config.batch.clone(),
            retry: config.retry.clone(),
            concurrency: config.concurrency,
            durable: false,
        }
    }

    /// Marks this exporter as fed by the durable log (see [`ExportReport::undelivered`]).
    pub fn durable(mut self) -> Self {
        self.durable = true;
        self
    }

    /// Runs until the queue is closed and drained (graceful) or `stop` fires (forced).
    pub async fn run(mut self, stop: CancellationToken) -> ExportReport {
        let tally = Arc::new(Tally::default());
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let mut tasks = JoinSet::new();
        let mut pending: [Pending; 3] = Default::default();
        // Batches that could not start because `stop` fired first.
        let mut stranded: Vec<Batch> = Vec::new();
        loop {
            let next_deadline = pending.iter().filter_map(|p| p.deadline).min();
            let ready: Vec<Batch> = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                // Deadlines before the queue: under steady load a partial batch of a quiet
                // signal still leaves on time.
                () = sleep_until(next_deadline), if next_deadline.is_some() => {
                    let now = Instant::now();
                    pending
                        .iter_mut()
                        .filter(|p| p.deadline.is_some_and(|d| d <= now))
                        .map(take)
                        .collect()
                }
                received = self.queue.recv() => match received {
                    Some(payload) => self.add(&mut pending[payload.signal.index()], payload),
                    None => break,
                },
            };
            for batch in ready {
                if let Err(batch) = self.launch(batch, &slots, &mut tasks, &tally, &stop).await {
                    stranded.push(batch);
                }
            }
            if !stranded.is_empty() {
                break;
            }
        }
        if !stop.is_cancelled() {
            // The queue is closed: send what is batched, then wait for every batch's outcome.
            for batch in pending.iter_mut().filter(|p| !p.parts.is_empty()).map(take) {
                if let Err(batch) = self.launch(batch, &slots, &mut tasks, &tally, &stop).await {
                    stranded.push(batch);
                }
            }
            tokio::select! {
                () = async { while tasks.join_next().await.is_some() {} } => {}
                () = stop.cancelled() => {}
            }
        }
        tasks.shutdown().await;
        // Whatever is still counted in flight was aborted by the forced stop.
        let mut undelivered: [u64; 3] =
            std::array::from_fn(|i| tally.in_flight[i].load(Ordering::Relaxed));
        for payload in self.queue.drain_now() {
            undelivered[payload.signal.index()] += payload.items;
        }
        for batch in pending
            .iter()
            .map(|p| (p.parts.first(), p.items))
            .chain(stranded.iter().map(|b| (b.parts.first(), b.items)))
        {
            if let (Some(first), items) = batch {
                undelivered[first.signal.index()] += items;
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

    /// Adds a request to its signal's pending batch; returns the batches now ready to go
    /// (the previous one if this request would overflow its byte limit, and this one if full).
    fn add(&self, slot: &mut Pending, payload: Delivery) -> Vec<Batch> {
        let mut ready = Vec::new();
        if !slot.parts.is_empty() && slot.bytes + payload.body.len() > self.batch.max_bytes {
            ready.push(take(slot));
        }
        slot.items += payload.items;
        slot.bytes += payload.body.len();
        slot.parts.push(payload);
        slot.deadline
            .get_or_insert_with(|| Instant::now() + self.batch.max_wait());
        if slot.items >= self.batch.max_items
            || slot.bytes >= self.batch.max_bytes
            || self.batch.max_wait() == Duration::ZERO
        {
            ready.push(take(slot));
        }
        ready
    }

    /// Waits for a free send slot and starts the batch; gives the batch back if `stop` fires first.
    async fn launch(
        &self,
        batch: Batch,
        slots: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        tally: &Arc<Tally>,
        stop: &CancellationToken,
    ) -> Result<(), Batch> {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = stop.cancelled() => return Err(batch),
        };
        let labels = [
            ("exporter", self.name.to_string()),
            ("signal", batch.signal.as_str().to_owned()),
        ];
        metrics::histogram!(telemetry::EXPORTER_BATCH_ITEMS, &labels).record(batch.items as f64);
        metrics::histogram!(telemetry::EXPORTER_BATCH_BYTES, &labels).record(batch.bytes as f64);
        tally.in_flight[batch.signal.index()].fetch_add(batch.items, Ordering::Relaxed);
        let sender = Sender {
            name: self.name.clone(),
            client: self.client.clone(),
            retry: self.retry.clone(),
            tally: tally.clone(),
        };
        tasks.spawn(async move {
            sender.deliver(batch).await;
            drop(permit);
        });
        Ok(())
    }
}
fn take(slot: &mut Pending) -> Batch {
    let parts = std::mem::take(&mut slot.parts);
    let batch = Batch {
        signal: parts.first().map_or(Signal::Traces, |p| p.signal),
        parts,
        items: slot.items,
        bytes: slot.bytes,
    };
    *slot = Pending::default();
    batch
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a send task needs.
struct Sender {
    name: Arc<str>,
    client: OtlpClient,
    retry: RetryConfig,
    tally: Arc<Tally>,
}

impl Sender {
    /// Sends one batch until it succeeds, fails for good, or runs out of retry time.
    async fn deliver(self, batch: Batch) {
        let signal = batch.signal;
        let name = self.name.to_string();
        let body = batch.body();
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.retry);
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
                RetryDecision::After(requested) => {
                    requested.unwrap_or_else(|| backoff.next_delay())
                }
            };
            if started.elapsed() + delay > self.retry.max_elapsed() {
                break Outcome::Failed(reason::RETRIES_EXHAUSTED, error.to_string());
            }
            metrics::counter!(telemetry::EXPORTER_RETRIES, "exporter" => name.clone(), "signal" => signal.as_str()).increment(1);
            tracing::debug!(exporter = %name, %signal, %error, delay_ms = delay.as_millis() as u64, "Export failed; will retry.");
            tokio::time::sleep(delay).await;
        };
        let elapsed = started.elapsed().as_secs_f64();
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
