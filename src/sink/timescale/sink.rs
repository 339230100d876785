//! The sink's worker: reads its queue, extracts rows, batches them per mapping, and writes
//! each batch in one transaction: COPY, then a ledger row with the batch's id. A batch retried
//! after an unknown outcome (connection lost around COMMIT) first looks for its id in the
//! ledger and is skipped when found, so each row is committed once. Rows PostgreSQL refuses
//! are isolated by splitting the batch and kept in `otelgate_rejected_rows`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures_util::SinkExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;

use super::config::TimescaleSinkConfig;
use super::copy::{Cell, CopyBatch, Rows};
use super::error::{Failure, TimescaleSinkError};
use super::extract::{Extractor, RowBatch};
use super::ledger::{Committed, Coverage, LedgerKey, LedgerRange, RowKey};
use super::mapping::{ColumnType, Mapping};
use crate::export::otlp::{Backoff, RetryConfig};
use crate::pipeline::log::Tracker;
use crate::pipeline::{Delivery, Payload, QueueReceiver};
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

/// A table and the columns one mapping writes.
#[derive(Debug)]
struct Target {
    table: String,
    /// What the ledger knows the rows' mapping by.
    ledger: LedgerKey,
    copy_sql: String,
    /// The columns' types, to read a refused row back.
    types: Vec<ColumnType>,
    /// The rows are records rejected during extraction, for `otelgate_rejected_rows`.
    rejections: bool,
}

impl Target {
    fn new(table: &str, ledger: LedgerKey, columns: &[(String, ColumnType)]) -> Self {
        let names: Vec<String> = columns.iter().map(|(c, _)| format!("\"{c}\"")).collect();
        Target {
            table: table.to_owned(),
            ledger,
            copy_sql: format!(
                "COPY \"{table}\" ({}) FROM STDIN (FORMAT binary)",
                names.join(", ")
            ),
            types: columns.iter().map(|(_, ty)| *ty).collect(),
            rejections: false,
        }
    }

    fn mapping(mapping: &Mapping) -> Self {
        let ledger = LedgerKey {
            mapping: mapping.ledger_id.clone(),
            fingerprint: mapping.fingerprint,
        };
        Target::new(
            &mapping.table,
            ledger,
            &super::mapping::mapping_columns(mapping),
        )
    }

    /// `otelgate_rejected_rows`, for records that every mapping together turned away: their
    /// rows are numbered per record in mapping order, so the fingerprint covers all mappings.
    fn rejected(mappings: &[Mapping]) -> Self {
        let columns = [
            ("time", ColumnType::Timestamptz),
            ("table_name", ColumnType::Text),
            ("reason", ColumnType::Text),
            ("record", ColumnType::Jsonb),
        ];
        let columns: Vec<(String, ColumnType)> =
            columns.iter().map(|(n, t)| (n.to_string(), *t)).collect();
        let mut fingerprint = crc32fast::Hasher::new();
        for mapping in mappings {
            fingerprint.update(&mapping.fingerprint.to_le_bytes());
        }
        let ledger = LedgerKey {
            mapping: REJECTED_TABLE.to_owned(),
            fingerprint: fingerprint.finalize(),
        };
        Target {
            rejections: true,
            ..Target::new(REJECTED_TABLE, ledger, &columns)
        }
    }
}

const REJECTED_TABLE: &str = "otelgate_rejected_rows";

/// Ledger ranges of this pseudo-mapping are what every mapping rejected together.
pub fn ledger_keys(mappings: &[Mapping]) -> Vec<LedgerKey> {
    mappings
        .iter()
        .map(Target::mapping)
        .chain(std::iter::once(Target::rejected(mappings)))
        .map(|target| target.ledger)
        .collect()
}

#[derive(Default)]
struct Tally {
    written: AtomicU64,
    rejected: AtomicU64,
    failed: AtomicU64,
    in_flight: AtomicU64,
}

/// What the sink needs when it reads from the durable log.
#[derive(Debug)]
pub struct LogLedger {
    pub log_id: uuid::Uuid,
    /// Records before this one may have been written before a crash.
    pub replay_until: u64,
    pub committed: Committed,
    /// The sink's progress through the log: ledger rows of records before its saved cursor
    /// are never needed again (a restart starts at the saved cursor), so they are pruned by
    /// that position, never by age.
    pub progress: Arc<Tracker>,
}

/// Rows waiting to be written to one target.
#[derive(Default)]
struct Pending {
    rows: Rows,
    /// With the durable log: each row's key, in the same order as `rows`.
    keys: Vec<RowKey>,
    /// The requests these rows came from: they hold their memory budget (and, with the
    /// durable log, their place in it) until written.
    payloads: Vec<Delivery>,
    oldest: Option<std::time::Instant>,
    deadline: Option<Instant>,
}

/// The TimescaleDB destination.
pub struct TimescaleSink {
    extractor: Arc<Extractor>,
    queue: QueueReceiver,
    writer: Arc<Writer>,
    targets: Vec<Arc<Target>>,
    max_rows: usize,
    max_wait: Duration,
    pool_size: usize,
    ledger_retention_hours: u64,
    rejected_retention_days: u64,
    log: Option<LogLedger>,
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

impl TimescaleSink {
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
        let rejected = Target::rejected(extractor.mappings());
        TimescaleSink {
            extractor,
            queue,
            writer: Arc::new(Writer {
                pool,
                tally: Tally::default(),
                // With the log, giving up would lose what the log keeps: retry until the
                // database is back or the gateway stops (the log holds the backlog).
                max_elapsed: if log.is_some() {
                    Duration::MAX
                } else {
                    config.max_elapsed()
                },
                log_id: log.as_ref().map(|l| l.log_id),
                rejected,
            }),
            targets,
            max_rows: config.max_rows,
            max_wait: config.max_wait(),
            pool_size: config.pool_size,
            ledger_retention_hours: config.ledger_retention_hours,
            rejected_retention_days: config.rejected_retention_days,
            log,
        }
    }

    /// Runs until the queue is closed and drained (graceful) or `stop` fires (forced).
    pub async fn run(mut self, stop: CancellationToken) -> SinkReport {
        let slots = Arc::new(Semaphore::new(self.pool_size));
        let mut tasks = JoinSet::new();
        let mut pending: Vec<Pending> = self.targets.iter().map(|_| Pending::default()).collect();
        let mut scratch = self.extractor.batch();
        let mut prune = tokio::time::interval(Duration::from_secs(600));
        let mut requests_undelivered = 0;
        let mut rejection_log = telemetry::RateLimitedWarning::new(
            "Record rejected; queued for otelgate_rejected_rows.",
        );
        loop {
            let next_deadline = pending.iter().filter_map(|p| p.deadline).min();
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                // Deadlines and pruning before the queue, so a backlog cannot starve them.
                // A batch past its deadline leaves as soon as a connection is free. While all
                // are busy it keeps growing (up to max_rows), so a slow database gets fewer,
                // larger transactions instead of a queue of small ones.
                () = sleep_until(next_deadline), if next_deadline.is_some() && slots.available_permits() > 0 => {
                    let now = Instant::now();
                    let due: Vec<usize> = (0..pending.len()).filter(|&i| pending[i].deadline.is_some_and(|d| d <= now)).collect();
                    for index in due {
                        let Ok(permit) = slots.clone().try_acquire_owned() else { break };
                        self.start(index, &mut pending, permit, &mut tasks);
                    }
                }
                _ = prune.tick() => {
                    let writer = self.writer.clone();
                    let (hours, days) = (self.ledger_retention_hours, self.rejected_retention_days);
                    let saved = self.log.as_ref().and_then(|log| Some((log.log_id, log.progress.saved()?.seq)));
                    tasks.spawn(async move { writer.prune(hours, days, saved).await });
                }
                received = self.queue.recv() => {
                    let Some(payload) = received else { break };
                    self.extract(&payload, &mut scratch);
                    for (index, rows) in scratch.rows.iter_mut().enumerate() {
                        if !rows.is_empty() {
                            count_nul_replaced(&self.targets[index].table, rows.take_nul_replaced());
                            self.take_rows(&mut pending[index], index, rows, &payload);
                            rows.clear();
                        }
                    }
                    // Records that could not be converted: rows of otelgate_rejected_rows,
                    // batched and ledgered like any other rows (the last target).
                    if !scratch.rejected.is_empty() {
                        let mut rejected = Rows::default();
                        for record in scratch.rejected.drain(..) {
                            metrics::counter!(telemetry::SINK_REJECTED_ROWS, "table" => record.table.clone(), "reason" => "conversion").increment(1);
                            if let Some(suppressed) = rejection_log.due() {
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
                        self.take_rows(&mut pending[index], index, &rejected, &payload);
                    }
                    let full: Vec<usize> = (0..pending.len()).filter(|&i| pending[i].rows.len() >= self.max_rows).collect();
                    for index in full {
                        if !self.launch(index, &mut pending, &slots, &mut tasks, &stop).await {
                            break;
                        }
                    }
                }
            }
        }
        if !stop.is_cancelled() {
            for index in 0..pending.len() {
                if !pending[index].rows.is_empty()
                    && !self
                        .launch(index, &mut pending, &slots, &mut tasks, &stop)
                        .await
                {
                    break;
                }
            }
            tokio::select! {
                () = async { while tasks.join_next().await.is_some() {} } => {}
                () = stop.cancelled() => {}
            }
        }
        tasks.shutdown().await;
        let durable = self.log.is_some();
        let mut rows_undelivered = self.writer.tally.in_flight.load(Ordering::Relaxed);
        if rows_undelivered > 0 && !durable {
            metrics::counter!(telemetry::SINK_FAILED_ROWS, "table" => "(in flight)", "reason" => reason::SHUTDOWN)
                .increment(rows_undelivered);
        }
        for (slot, target) in pending.iter().zip(&self.targets) {
            if !slot.rows.is_empty() {
                rows_undelivered += slot.rows.len() as u64;
                if durable {
                    continue;
                }
                metrics::counter!(telemetry::SINK_FAILED_ROWS, "table" => target.table.clone(), "reason" => reason::SHUTDOWN).increment(slot.rows.len() as u64);
            }
        }
        requests_undelivered += self.queue.drain_now().len() as u64;
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
        let tally = &self.writer.tally;
        SinkReport {
            rows_written: tally.written.load(Ordering::Relaxed),
            rows_rejected: tally.rejected.load(Ordering::Relaxed),
            rows_failed: tally.failed.load(Ordering::Relaxed),
            rows_undelivered,
            requests_undelivered,
        }
    }

    /// Adds a record's rows for target `index` to its pending batch. With the durable log,
    /// each row gets its key, and rows of a replayed record that the ledger shows committed
    /// before the restart are skipped.
    fn take_rows(&self, slot: &mut Pending, index: usize, rows: &Rows, payload: &Delivery) {
        match (payload.position(), &self.log) {
            (Some(at), Some(log)) => {
                let target = &self.targets[index];
                let replaying = at.seq < log.replay_until;
                let before = slot.rows.len();
                let (mut skipped, mut changed) = (0u64, 0u64);
                if replaying {
                    for row_index in 0..rows.len() {
                        let key = (at.seq, row_index as u32);
                        match log
                            .committed
                            .covers(&target.ledger.mapping, &target.table, key)
                        {
                            Coverage::Unwritten => {
                                slot.rows.append_row(rows, row_index);
                                slot.keys.push(key);
                            }
                            Coverage::Committed => skipped += 1,
                            Coverage::ChangedMapping => changed += 1,
                        }
                    }
                } else {
                    slot.rows.append(rows);
                    slot.keys
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
                if slot.rows.len() == before {
                    return;
                }
            }
            _ => slot.rows.append(rows),
        }
        slot.payloads.push(payload.clone());
        slot.oldest.get_or_insert(payload.received);
        slot.deadline
            .get_or_insert_with(|| Instant::now() + self.max_wait);
    }

    fn extract(&self, payload: &Delivery, scratch: &mut RowBatch) {
        let payload: &Payload = payload;
        if let Err(error) = self
            .extractor
            .extract(payload.signal, &payload.body, scratch)
        {
            // The receiver validated the request, so this is a bug, not bad input.
            tracing::error!(%error, signal = %payload.signal, "Cannot decode an accepted request.");
        }
    }

    /// Starts writing target `index`'s pending rows once a connection slot is free. Returns
    /// false if `stop` fired while waiting (the rows stay pending).
    async fn launch(
        &self,
        index: usize,
        pending: &mut [Pending],
        slots: &Arc<Semaphore>,
        tasks: &mut JoinSet<()>,
        stop: &CancellationToken,
    ) -> bool {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("never closed"),
            () = stop.cancelled() => return false,
        };
        self.start(index, pending, permit, tasks);
        true
    }

    /// Writes target `index`'s pending rows on the connection slot `permit`.
    fn start(
        &self,
        index: usize,
        pending: &mut [Pending],
        permit: tokio::sync::OwnedSemaphorePermit,
        tasks: &mut JoinSet<()>,
    ) {
        let slot = std::mem::take(&mut pending[index]);
        // The next batch is about as large: room for it (and an eighth more, as the last
        // request rarely fits exactly) up front instead of growing into it, which copies the
        // rows and faults in fresh pages each time the buffers double.
        let next = &mut pending[index];
        let room = |n: usize| n + n / 8;
        next.rows = Rows::with_capacity(room(slot.rows.data_len()), room(slot.rows.len()));
        next.keys = Vec::with_capacity(room(slot.keys.len()));
        next.payloads = Vec::with_capacity(room(slot.payloads.len()));
        let target = self.targets[index].clone();
        let writer = self.writer.clone();
        writer
            .tally
            .in_flight
            .fetch_add(slot.rows.len() as u64, Ordering::Relaxed);
        tasks.spawn(async move {
            let count = slot.rows.len() as u64;
            writer
                .write(&target, slot.rows.into_batch(), slot.keys, slot.oldest)
                .await;
            writer.tally.in_flight.fetch_sub(count, Ordering::Relaxed);
            drop(slot.payloads);
            drop(permit);
        });
    }
}

/// Counts U+0000 characters replaced in cells written for `table` (see `copy`).
fn count_nul_replaced(table: &str, replaced: u64) {
    if replaced > 0 {
        metrics::counter!(telemetry::SINK_NUL_REPLACED, "table" => table.to_owned())
            .increment(replaced);
    }
}

/// The `reason` label of rows given up after `failure`.
fn given_up_reason(failure: Failure) -> &'static str {
    if failure == Failure::Transient {
        reason::RETRIES_EXHAUSTED
    } else {
        "permanent"
    }
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Writes batches; shared by the sink's write tasks.
struct Writer {
    pool: Pool,
    tally: Tally,
    max_elapsed: Duration,
    rejected: Target,
    /// The durable log's id, when rows come from it: ledger rows then record their range.
    log_id: Option<uuid::Uuid>,
}

/// The outcome of [`copy_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Committed,
    /// Found in the ledger: an earlier attempt had committed it.
    AlreadyCommitted,
}

/// The ledger row a batch claims: its id, and what it covers.
#[derive(Debug, Clone, Copy)]
pub struct LedgerClaim<'a> {
    pub batch_id: uuid::Uuid,
    /// The table the mapping fills (for people reading the ledger).
    pub table: &'a str,
    /// The mapping whose rows these are, for replays; `None` outside the durable log.
    pub key: Option<&'a LedgerKey>,
    pub range: Option<LedgerRange>,
}

/// Writes one batch of binary COPY `data` (`rows` rows) with `copy_sql` in one transaction
/// that first claims `claim.batch_id` in the ledger. If the id is already there (an earlier
/// attempt committed), or an attempt still in flight commits it while this one waits on the
/// ledger row, nothing is written. Public for tests of the exactly-once contract.
pub async fn copy_batch(
    pool: &Pool,
    copy_sql: &str,
    data: &Bytes,
    rows: usize,
    claim: LedgerClaim<'_>,
) -> Result<Written, TimescaleSinkError> {
    let mut client = pool.get().await.map_err(TimescaleSinkError::from)?;
    let tx = client.transaction().await?;
    let (log_id, first_seq, first_row, last_seq, last_row) = match claim.range {
        Some(r) => (
            Some(r.log_id),
            Some(r.first.0 as i64),
            Some(r.first.1 as i32),
            Some(r.last.0 as i64),
            Some(r.last.1 as i32),
        ),
        None => (None, None, None, None, None),
    };
    let mapping = claim.key.map(|k| k.mapping.as_str());
    let fingerprint = claim.key.map(|k| i64::from(k.fingerprint));
    let claimed = tx
        .execute_typed(
            "INSERT INTO otelgate_ledger (batch_id, table_name, row_count, log_id, first_seq, first_row, last_seq, last_row, mapping, mapping_fingerprint) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (batch_id) DO NOTHING",
            &[
                (&claim.batch_id, Type::UUID),
                (&claim.table, Type::TEXT),
                (&(rows as i64), Type::INT8),
                (&log_id, Type::UUID),
                (&first_seq, Type::INT8),
                (&first_row, Type::INT4),
                (&last_seq, Type::INT8),
                (&last_row, Type::INT4),
                (&mapping, Type::TEXT),
                (&fingerprint, Type::INT8),
            ],
        )
        .await?;
    if claimed == 0 {
        tx.rollback().await?;
        return Ok(Written::AlreadyCommitted);
    }
    // Prepared and dropped (closed) inside the transaction: nothing outlives it on the
    // server connection, which PgBouncer in transaction mode may hand to someone else.
    let statement = tx.prepare(copy_sql).await?;
    let sink = tx.copy_in::<_, Bytes>(&statement).await?;
    futures_util::pin_mut!(sink);
    sink.send(data.clone()).await?;
    sink.finish().await?;
    drop(statement);
    tx.commit().await?;
    Ok(Written::Committed)
}

impl Writer {
    /// Writes rows to `target`, isolating rows the database refuses.
    async fn write(
        &self,
        target: &Target,
        rows: CopyBatch,
        keys: Vec<RowKey>,
        oldest: Option<std::time::Instant>,
    ) {
        let mut stack = vec![(rows, keys)];
        while let Some((rows, mut keys)) = stack.pop() {
            let count = rows.len() as u64;
            let range = self.range(&keys);
            match self.write_batch(target, target, &rows, range).await {
                Ok(()) if target.rejections => {
                    self.tally.rejected.fetch_add(count, Ordering::Relaxed);
                }
                Ok(()) => {
                    self.tally.written.fetch_add(count, Ordering::Relaxed);
                    metrics::counter!(telemetry::SINK_ROWS, "table" => target.table.clone())
                        .increment(count);
                    if let Some(oldest) = oldest {
                        metrics::histogram!(telemetry::SINK_RECEIVE_TO_COMMIT_SECONDS, "table" => target.table.clone())
                            .record(oldest.elapsed().as_secs_f64());
                    }
                }
                Err((Failure::BadData, _)) if rows.len() > 1 => {
                    let (left, right) = rows.split_at(rows.len() / 2);
                    let right_keys = keys.split_off(keys.len().min(left.len()));
                    stack.push((right, right_keys));
                    stack.push((left, keys));
                }
                Err((Failure::BadData, message)) => {
                    let record = match rows.decode_row(0, &target.types) {
                        Some(cells) => cells.iter().map(Cell::to_json).collect(),
                        None => serde_json::Value::Null,
                    };
                    // Under the target's mapping in the ledger, so a replay skips this row too.
                    let mut rejected = Rows::default();
                    rejected.push(&[
                        Cell::Timestamp(now_nanos()),
                        Cell::Text(target.table.clone()),
                        Cell::Text(message.clone()),
                        Cell::json(&serde_json::json!({ "row": record })),
                    ]);
                    count_nul_replaced(REJECTED_TABLE, rejected.take_nul_replaced());
                    match self
                        .write_batch(&self.rejected, target, &rejected.into_batch(), range)
                        .await
                    {
                        Ok(()) => {
                            self.tally.rejected.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!(telemetry::SINK_REJECTED_ROWS, "table" => target.table.clone(), "reason" => "database").increment(1);
                            tracing::warn!(table = %target.table, error = %message, "PostgreSQL refused a row; kept in otelgate_rejected_rows.");
                        }
                        Err((failure, kept)) => {
                            let why = given_up_reason(failure);
                            self.tally.failed.fetch_add(1, Ordering::Relaxed);
                            metrics::counter!(telemetry::SINK_FAILED_ROWS, "table" => target.table.clone(), "reason" => why).increment(1);
                            tracing::error!(table = %target.table, error = %message, rejected_rows_error = %kept, reason = why, "PostgreSQL refused a row, and it cannot be kept in otelgate_rejected_rows either; the row is given up.");
                        }
                    }
                }
                Err((failure, message)) => {
                    let why = given_up_reason(failure);
                    self.tally.failed.fetch_add(count, Ordering::Relaxed);
                    metrics::counter!(telemetry::SINK_FAILED_ROWS, "table" => target.table.clone(), "reason" => why).increment(count);
                    tracing::error!(table = %target.table, rows = count, reason = why, error = %message, "Batch given up.");
                }
            }
        }
    }

    /// The ledger range of rows with `keys` (in log order), when they come from the log.
    fn range(&self, keys: &[RowKey]) -> Option<LedgerRange> {
        Some(LedgerRange {
            log_id: self.log_id?,
            first: *keys.first()?,
            last: *keys.last()?,
        })
    }

    /// One batch, one id, retried on transient failures until `max_elapsed`. The rows go to
    /// `target`'s table; the ledger row is `ledger`'s (the same target, except for a refused
    /// row kept in `otelgate_rejected_rows` in its mapping's place).
    async fn write_batch(
        &self,
        target: &Target,
        ledger: &Target,
        rows: &CopyBatch,
        range: Option<LedgerRange>,
    ) -> Result<(), (Failure, String)> {
        let data = rows.data();
        let batch_id = uuid::Uuid::new_v4();
        let started = Instant::now();
        let mut backoff = Backoff::new(&RetryConfig {
            initial_backoff_ms: 50,
            max_backoff_ms: 5_000,
            ..RetryConfig::default()
        });
        let mut attempt = 0u32;
        loop {
            let error = match self
                .try_write(target, ledger, data, batch_id, rows.len(), range)
                .await
            {
                Ok(written) => {
                    if matches!(written, Written::AlreadyCommitted) {
                        metrics::counter!(telemetry::SINK_LEDGER_SKIPS, "table" => target.table.clone()).increment(1);
                        tracing::info!(table = %target.table, %batch_id, "Batch was already committed; not written again.");
                    }
                    metrics::histogram!(telemetry::SINK_BATCH_ROWS, "table" => target.table.clone()).record(rows.len() as f64);
                    return Ok(());
                }
                Err(error) => error,
            };
            let failure = error.failure();
            if failure != Failure::Transient {
                return Err((failure, error.to_string()));
            }
            let delay = backoff.next_delay();
            if started.elapsed() + delay > self.max_elapsed {
                return Err((failure, error.to_string()));
            }
            metrics::counter!(telemetry::SINK_RETRIES, "table" => target.table.clone())
                .increment(1);
            if attempt == 0 {
                tracing::warn!(table = %target.table, %error, "Batch write failed; will retry.");
            }
            attempt += 1;
            tokio::time::sleep(delay).await;
        }
    }

    async fn try_write(
        &self,
        target: &Target,
        ledger: &Target,
        data: &Bytes,
        batch_id: uuid::Uuid,
        rows: usize,
        range: Option<LedgerRange>,
    ) -> Result<Written, TimescaleSinkError> {
        let started = std::time::Instant::now();
        let claim = LedgerClaim {
            batch_id,
            table: &ledger.table,
            key: range.is_some().then_some(&ledger.ledger),
            range,
        };
        let written = copy_batch(&self.pool, &target.copy_sql, data, rows, claim).await?;
        if matches!(written, Written::Committed) {
            metrics::histogram!(telemetry::SINK_COPY_SECONDS, "table" => target.table.clone())
                .record(started.elapsed().as_secs_f64());
        }
        Ok(written)
    }

    /// Deletes ledger rows no retry or replay can need, and rejected rows older than `days`.
    /// Rows of this gateway's log go once they end before the sink's saved cursor (`saved`),
    /// whatever their age: a restart replays from that cursor and never reads them. Rows
    /// written without the log (a retried batch only looks for its own id) go after `hours`.
    /// Rows of other logs belong to other gateways sharing the database, which prune their own.
    async fn prune(&self, hours: u64, days: u64, saved: Option<(uuid::Uuid, u64)>) {
        let result = async {
            let client = self.pool.get().await.map_err(TimescaleSinkError::from)?;
            // Both numbers come from the config, not from user data.
            let sql = format!(
                "DELETE FROM otelgate_ledger WHERE log_id IS NULL AND committed_at < now() - interval '{hours} hours';
                 DELETE FROM otelgate_rejected_rows WHERE time < now() - interval '{days} days';"
            );
            client.batch_execute(&sql).await?;
            if let Some((log_id, seq)) = saved {
                client
                    .execute_typed(
                        "DELETE FROM otelgate_ledger WHERE log_id = $1 AND last_seq < $2",
                        &[(&log_id, Type::UUID), (&(seq as i64), Type::INT8)],
                    )
                    .await?;
            }
            Ok::<_, TimescaleSinkError>(())
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, "Cannot prune the ledger and rejected rows; will try again later.");
        }
    }
}
