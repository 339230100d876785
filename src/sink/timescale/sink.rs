//! The sink's worker: extracts rows from each request and batches them per mapping in the
//! pipeline's batching loop, then writes each batch on its own connection (see `writer`).
//! With the durable log, rows of records replayed after a restart that the ledger shows
//! committed are skipped, so a crash never writes a row twice.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::{TimescaleSinkConfig, TransactionSettings};
use super::copy::{Cell, Rows};
use super::error::{connect_error, TimescaleSinkError};
use super::extract::{Extractor, RowBatch};
use super::ledger::{Committed, Coverage, RowKey};
use super::mapping::Mapping;
use super::schema::{migrate, SchemaInfo};
use super::writer::{
    count_nul_replaced, ledger_keys, now_nanos, GroupMember, SinkWriter, Target, REJECTED_TABLE,
};
use crate::pipeline::batching::{self, BatchingDestination};
use crate::pipeline::log::{Log, LogReader, Tracker};
use crate::pipeline::retry::retry_limit;
use crate::pipeline::{Delivery, QueueReceiver};
use crate::telemetry::{self, reason};

/// What the sink did over its life.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SinkReport {
    pub rows_written: u64,
    pub rows_rejected: u64,
    pub rows_failed: u64,
    /// Rows and requests still held when a forced shutdown stopped the sink (rows of queued
    /// requests are not extracted, so requests are counted for those).
    pub rows_undelivered: u64,
    pub requests_undelivered: u64,
}

/// What the sink needs when it reads from the durable log.
#[derive(Debug)]
pub struct LogLedger {
    log_id: uuid::Uuid,
    /// Records before this one may have been written before a crash.
    replay_until: u64,
    committed: Committed,
    /// The sink's progress through the log: ledger rows of records before its saved cursor
    /// are never needed again (a restart starts at the saved cursor), so they are pruned by
    /// that position, never by age.
    progress: Arc<Tracker>,
}

impl LogLedger {
    /// Prepares the sink to read `log` through `reader`. When the reader starts before the
    /// point where the log was opened, the records in between may have been partly written
    /// before a crash: the ledger says which of their rows (under the current `mappings`)
    /// were committed, and those are skipped.
    pub async fn resume(
        pool: &Pool,
        log: &Log,
        reader: &LogReader,
        mappings: &[Mapping],
    ) -> Result<LogLedger, TimescaleSinkError> {
        let replay_until = log.opened_at().seq;
        let from = reader.start().seq;
        let committed = if from < replay_until {
            let current = ledger_keys(mappings);
            let committed = Committed::load(pool, log.id(), from, &current).await?;
            tracing::info!(
                ledger_rows = committed.len(),
                "Rows committed before the restart will be skipped."
            );
            committed
        } else {
            Committed::default()
        };
        Ok(LogLedger {
            log_id: log.id(),
            replay_until,
            committed,
            progress: reader.tracker(),
        })
    }
}

/// Builds the connection pool for `config.url` and its TLS settings (see `tls`), with the
/// certificate files read. Connections are made on first use.
pub fn pool(config: &TimescaleSinkConfig) -> Result<Pool, TimescaleSinkError> {
    let (pg, tls) = super::tls::connection_config(config)?;
    let manager = Manager::from_config(
        pg,
        tls.connector()?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(config.pool_size)
        .wait_timeout(Some(Duration::from_secs(30)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| TimescaleSinkError::Setup(e.to_string()))
}

/// Checks that PostgreSQL takes `timescale.transaction_settings` (in a transaction rolled
/// back), then migrates the database (unless `migrate_on_start` is off), or only finds out
/// whether TimescaleDB is there.
pub async fn prepare_database(
    pool: &Pool,
    config: &TimescaleSinkConfig,
    mappings: &[Mapping],
) -> Result<SchemaInfo, TimescaleSinkError> {
    let mut client = pool.get().await.map_err(|e| connect_error(config, &e))?;
    let settings =
        TransactionSettings::new(&config.transaction_settings).map_err(settings_error)?;
    let tx = client.transaction().await?;
    settings
        .apply(&tx)
        .await
        .map_err(|e| settings_error(super::error::describe(&e)))?;
    tx.rollback().await?;
    if config.migrate_on_start {
        return migrate(&mut client, config, mappings).await;
    }
    let version = client
        .query_typed_opt(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
            &[],
        )
        .await?
        .map(|row| row.get(0));
    Ok(SchemaInfo {
        timescaledb: version,
        applied: Vec::new(),
    })
}

fn settings_error(message: String) -> TimescaleSinkError {
    TimescaleSinkError::Config {
        key: "timescale.transaction_settings".to_owned(),
        message,
    }
}

/// The TimescaleDB destination.
pub struct TimescaleSink {
    queue: QueueReceiver,
    /// Batches written at once, each on its own connection.
    pool_size: usize,
    batches: SinkBatches,
}

/// The sink's side of the batching loop: rows pending per target, and what the write tasks
/// need.
struct SinkBatches {
    extractor: Arc<Extractor>,
    writer: Arc<SinkWriter>,
    /// One per mapping, then `otelgate_rejected_rows`; `pending[i]` goes to `targets[i]`.
    targets: Vec<Arc<Target>>,
    pending: Vec<PendingRows>,
    /// Each request's rows, reused from one request to the next.
    scratch: RowBatch,
    rejection_log: telemetry::RateLimitedWarning,
    max_rows: usize,
    max_wait: Duration,
    ledger_retention_hours: u64,
    rejected_retention_days: u64,
    log: Option<LogLedger>,
}

/// Rows waiting to be written to one target.
#[derive(Default)]
struct PendingRows {
    rows: Rows,
    /// With the durable log: each row's key, in the same order as `rows`.
    keys: Vec<RowKey>,
    /// The requests these rows came from: they hold their memory budget (and, with the
    /// durable log, their place in it) until written.
    payloads: Vec<Delivery>,
    oldest: Option<std::time::Instant>,
    deadline: Option<Instant>,
}

/// How often the ledger and `otelgate_rejected_rows` are pruned.
const PRUNE_PERIOD: Duration = Duration::from_secs(600);

impl TimescaleSink {
    /// The sink's name as a destination: its queue, its cursor in the durable log, its
    /// reports. No exporter may take it.
    pub const NAME: &'static str = "timescale";

    /// A sink reading `queue`; `log` when the durable log feeds the queue.
    pub fn new(
        config: &TimescaleSinkConfig,
        extractor: Arc<Extractor>,
        pool: Pool,
        queue: QueueReceiver,
        log: Option<LogLedger>,
    ) -> Self {
        let mut targets: Vec<Arc<Target>> = extractor
            .mappings()
            .iter()
            .map(|m| Arc::new(Target::mapping(m)))
            .collect();
        targets.push(Arc::new(Target::rejected(extractor.mappings())));
        let settings = TransactionSettings::new(&config.transaction_settings)
            .expect("checked when the configuration was loaded");
        let writer = SinkWriter::new(
            pool,
            settings,
            retry_limit(log.is_some(), config.max_elapsed()),
            Target::rejected(extractor.mappings()),
            log.as_ref().map(|l| l.log_id),
        );
        TimescaleSink {
            queue,
            pool_size: config.pool_size,
            batches: SinkBatches {
                pending: targets.iter().map(|_| PendingRows::default()).collect(),
                scratch: extractor.batch(),
                rejection_log: telemetry::RateLimitedWarning::new(
                    "Record rejected; queued for otelgate_rejected_rows.",
                ),
                extractor,
                writer: Arc::new(writer),
                targets,
                max_rows: config.max_rows,
                max_wait: config.max_wait(),
                ledger_retention_hours: config.ledger_retention_hours,
                rejected_retention_days: config.rejected_retention_days,
                log,
            },
        }
    }

    /// Runs until the queue is closed and drained (graceful) or `stop` fires (forced).
    pub async fn run(mut self, stop: CancellationToken) -> SinkReport {
        batching::drive(&mut self.batches, &mut self.queue, self.pool_size, &stop).await;
        self.batches.report(&mut self.queue)
    }
}

impl SinkBatches {
    /// Counts and reports what was not written (rows of aborted writes are still counted in
    /// flight), and returns the sink's report.
    fn report(&self, queue: &mut QueueReceiver) -> SinkReport {
        let durable = self.log.is_some();
        let tally = &self.writer.tally;
        let mut rows_undelivered = tally.in_flight.load(Ordering::Relaxed);
        if rows_undelivered > 0 && !durable {
            metrics::counter!(telemetry::SINK_FAILED_ROWS, "table" => "(in flight)", "reason" => reason::SHUTDOWN)
                .increment(rows_undelivered);
        }
        for (pending, target) in self.pending.iter().zip(&self.targets) {
            if !pending.rows.is_empty() {
                rows_undelivered += pending.rows.len() as u64;
                if durable {
                    continue;
                }
                metrics::counter!(telemetry::SINK_FAILED_ROWS, "table" => target.table.clone(), "reason" => reason::SHUTDOWN).increment(pending.rows.len() as u64);
            }
        }
        let requests_undelivered = queue.drain_now().len() as u64;
        if rows_undelivered + requests_undelivered > 0 && durable {
            tracing::info!(
                rows = rows_undelivered,
                requests = requests_undelivered,
                "Shutdown deadline reached; unwritten rows stay in the durable log."
            );
        } else if rows_undelivered + requests_undelivered > 0 {
            tracing::error!(
                rows = rows_undelivered,
                requests = requests_undelivered,
                "Shutdown deadline reached; rows were not written."
            );
        }
        SinkReport {
            rows_written: tally.written.load(Ordering::Relaxed),
            rows_rejected: tally.rejected.load(Ordering::Relaxed),
            rows_failed: tally.failed.load(Ordering::Relaxed),
            rows_undelivered,
            requests_undelivered,
        }
    }

    /// Records that could not be converted become rows of `otelgate_rejected_rows` (the last
    /// target), batched and ledgered like any other rows.
    fn add_rejected_records(&mut self, payload: &Delivery) {
        let mut rejected = Rows::default();
        for record in self.scratch.rejected.drain(..) {
            metrics::counter!(telemetry::SINK_REJECTED_ROWS, "table" => record.table.clone(), "reason" => "conversion").increment(1);
            if let Some(suppressed) = self.rejection_log.due() {
                tracing::warn!(table = %record.table, reason = %record.reason, similar_since_last_warning = suppressed, "Record rejected; queued for otelgate_rejected_rows.");
            }
            rejected.push(&[
                Cell::Timestamp(now_nanos()),
                Cell::Text(record.table),
                Cell::Text(record.reason),
                Cell::json(&record.record),
            ]);
        }
        count_nul_replaced(REJECTED_TABLE, rejected.take_nul_replaced());
        let index = self.targets.len() - 1;
        self.pending[index].add_rows(
            &self.targets[index],
            self.log.as_ref(),
            self.max_wait,
            &rejected,
            payload,
        );
    }
}

/// A batch past its deadline leaves as soon as a connection is free, or, while another
/// transaction is in flight, when that one ends (at most one `max_wait` later). While all are
/// busy it keeps growing (up to `max_rows`), so a slow database gets fewer, larger
/// transactions instead of a queue of small ones.
impl BatchingDestination for SinkBatches {
    const DUE_BATCH_WAITS_FOR_SLOT: bool = false;

    fn batch_count(&self) -> usize {
        self.pending.len()
    }

    /// `max_wait` after the batch's first rows; while another transaction is in flight, up to
    /// one `max_wait` later: the batch leaves as soon as that transaction ends (the loop looks
    /// again when a task finishes) rather than in a second one at once. Below saturation this
    /// makes fewer, larger transactions, which cost PostgreSQL less CPU per row.
    fn deadline(&self, index: usize) -> Option<Instant> {
        let deadline = self.pending[index].deadline?;
        if self.writer.tally.in_flight.load(Ordering::Relaxed) > 0 {
            return Some(deadline + self.max_wait);
        }
        Some(deadline)
    }

    fn is_pending(&self, index: usize) -> bool {
        !self.pending[index].rows.is_empty()
    }

    /// A new batch's deadline counts from when its first rows are added (after extraction).
    fn add(&mut self, payload: Delivery, _received: Instant, full: &mut Vec<usize>) {
        if let Err(error) = self
            .extractor
            .extract(payload.signal, &payload.body, &mut self.scratch)
        {
            // The receiver validated the request, so this is a bug, not bad input.
            tracing::error!(%error, signal = %payload.signal, "Cannot decode an accepted request.");
        }
        for (index, rows) in self.scratch.rows.iter_mut().enumerate() {
            if !rows.is_empty() {
                let target = &self.targets[index];
                count_nul_replaced(&target.table, rows.take_nul_replaced());
                self.pending[index].add_rows(
                    target,
                    self.log.as_ref(),
                    self.max_wait,
                    rows,
                    &payload,
                );
                rows.clear();
            }
        }
        if !self.scratch.rejected.is_empty() {
            self.add_rejected_records(&payload);
        }
        full.extend(
            (0..self.pending.len()).filter(|&i| self.pending[i].rows.len() >= self.max_rows),
        );
    }

    /// Writes the rows pending for every target on the connection slot `slot`, in one
    /// transaction: batch `index` is due or full, and the others leave with it rather than
    /// cost a commit of their own a few milliseconds later.
    fn start(&mut self, _index: usize, slot: OwnedSemaphorePermit, tasks: &mut JoinSet<()>) {
        let mut group = Vec::new();
        let mut rows = 0u64;
        let mut payloads = Vec::new();
        for (pending, target) in self.pending.iter_mut().zip(&self.targets) {
            if pending.rows.is_empty() {
                continue;
            }
            let taken = std::mem::take(pending);
            // The next batch is about as large: room for it (and an eighth more, as the last
            // request rarely fits exactly) up front instead of growing into it, which copies
            // the rows and faults in fresh pages each time the buffers double.
            let room = |n: usize| n + n / 8;
            pending.rows = Rows::with_capacity(room(taken.rows.data_len()), room(taken.rows.len()));
            pending.keys = Vec::with_capacity(room(taken.keys.len()));
            pending.payloads = Vec::with_capacity(room(taken.payloads.len()));
            rows += taken.rows.len() as u64;
            payloads.push(taken.payloads);
            group.push(GroupMember {
                target: target.clone(),
                rows: taken.rows.into_batch(),
                keys: taken.keys,
                oldest: taken.oldest,
            });
        }
        let writer = self.writer.clone();
        writer.tally.in_flight.fetch_add(rows, Ordering::Relaxed);
        tasks.spawn(async move {
            writer.write_group(group).await;
            writer.tally.in_flight.fetch_sub(rows, Ordering::Relaxed);
            drop(payloads);
            drop(slot);
        });
    }

    fn housekeeping_period(&self) -> Option<Duration> {
        Some(PRUNE_PERIOD)
    }

    /// Prunes the ledger and `otelgate_rejected_rows` (see [`SinkWriter::prune`]).
    fn housekeeping(&mut self, tasks: &mut JoinSet<()>) {
        let writer = self.writer.clone();
        let (hours, days) = (self.ledger_retention_hours, self.rejected_retention_days);
        let saved = self
            .log
            .as_ref()
            .and_then(|log| Some((log.log_id, log.progress.saved()?.seq)));
        tasks.spawn(async move { writer.prune(hours, days, saved).await });
    }
}

impl PendingRows {
    /// Adds a record's rows for `target` to this pending batch. With the durable log (`log`),
    /// each row gets its key, and rows of a replayed record that the ledger shows committed
    /// before the restart are skipped. The batch's deadline is `max_wait` after its first row.
    fn add_rows(
        &mut self,
        target: &Target,
        log: Option<&LogLedger>,
        max_wait: Duration,
        rows: &Rows,
        payload: &Delivery,
    ) {
        match (payload.position(), log) {
            (Some(at), Some(log)) => {
                let replaying = at.seq < log.replay_until;
                let before = self.rows.len();
                let (mut skipped, mut changed) = (0u64, 0u64);
                if replaying {
                    for row_index in 0..rows.len() {
                        let key = (at.seq, row_index as u32);
                        match log
                            .committed
                            .covers(&target.ledger.mapping, &target.table, key)
                        {
                            Coverage::Unwritten => {
                                self.rows.append_row(rows, row_index);
                                self.keys.push(key);
                            }
                            Coverage::Committed => skipped += 1,
                            Coverage::ChangedMapping => changed += 1,
                        }
                    }
                } else {
                    self.rows.append(rows);
                    self.keys
                        .extend((0..rows.len() as u32).map(|row_index| (at.seq, row_index)));
                }
                if skipped > 0 {
                    metrics::counter!(telemetry::SINK_REPLAY_SKIPPED_ROWS, "table" => target.table.clone(), "reason" => "committed")
                        .increment(skipped);
                }
                if changed > 0 {
                    metrics::counter!(telemetry::SINK_REPLAY_SKIPPED_ROWS, "table" => target.table.clone(), "reason" => "mapping_changed")
                        .increment(changed);
                    tracing::warn!(
                        table = %target.table,
                        mapping = %target.ledger.mapping,
                        rows = changed,
                        seq = at.seq,
                        "A mapping changed since these rows were partly written before the restart; the record's rows are skipped rather than risk writing any twice."
                    );
                }
                if self.rows.len() == before {
                    return;
                }
            }
            _ => self.rows.append(rows),
        }
        self.payloads.push(payload.clone());
        self.oldest.get_or_insert(payload.received);
        self.deadline
            .get_or_insert_with(|| Instant::now() + max_wait);
    }
}
