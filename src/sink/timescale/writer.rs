//! Writing one batch of rows: one transaction that claims the batch's id in the ledger, then
//! COPYs the rows. A batch retried after an unknown outcome (connection lost around COMMIT)
//! finds its id in the ledger and is skipped, so each row is committed once. Rows PostgreSQL
//! refuses are isolated by splitting the batch and kept in `otelgate_rejected_rows`. Also the
//! tables rows go to ([`Target`]) and the pruning of the ledger and of old
//! `otelgate_rejected_rows`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Pool;
use futures_util::SinkExt;
use tokio_postgres::types::Type;

use super::config::TransactionSettings;
use super::copy::{Cell, CopyBatch, Rows};
use super::error::{Failure, TimescaleSinkError};
use super::ledger::{LedgerKey, LedgerRange, RowKey};
use super::mapping::{ColumnType, Mapping};
use crate::pipeline::retry::{Retries, RetryConfig};
use crate::telemetry::{self, reason};

/// A table and the columns one mapping writes.
#[derive(Debug)]
pub(super) struct Target {
    pub(super) table: String,
    /// What the ledger knows the rows' mapping by.
    pub(super) ledger: LedgerKey,
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

    pub(super) fn mapping(mapping: &Mapping) -> Self {
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
    pub(super) fn rejected(mappings: &[Mapping]) -> Self {
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

pub(super) const REJECTED_TABLE: &str = "otelgate_rejected_rows";

/// Ledger ranges of this pseudo-mapping are what every mapping rejected together.
pub(super) fn ledger_keys(mappings: &[Mapping]) -> Vec<LedgerKey> {
    mappings
        .iter()
        .map(Target::mapping)
        .chain(std::iter::once(Target::rejected(mappings)))
        .map(|target| target.ledger)
        .collect()
}

/// What the sink's write tasks did, counted in rows.
#[derive(Default)]
pub(super) struct SinkTally {
    pub(super) written: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) in_flight: AtomicU64,
}

/// Counts U+0000 characters replaced in cells written for `table` (see `copy`).
pub(super) fn count_nul_replaced(table: &str, replaced: u64) {
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

pub(super) fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Writes batches; shared by the sink's write tasks.
pub(super) struct SinkWriter {
    pool: Pool,
    /// Set first in each transaction (`timescale.transaction_settings`).
    settings: TransactionSettings,
    pub(super) tally: SinkTally,
    /// The delays between attempts of one batch.
    retry: RetryConfig,
    /// How long one batch is retried (see [`crate::pipeline::retry::retry_limit`]).
    retry_limit: Duration,
    rejected: Target,
    /// The durable log's id, when rows come from it: ledger rows then record their range.
    log_id: Option<uuid::Uuid>,
}

/// One table's rows in a transaction of several tables (see [`SinkWriter::write_group`]).
pub(super) struct GroupMember {
    pub(super) target: Arc<Target>,
    pub(super) rows: CopyBatch,
    /// With the durable log: each row's key, in the same order as `rows`.
    pub(super) keys: Vec<RowKey>,
    /// When the oldest request with rows in `rows` arrived.
    pub(super) oldest: Option<std::time::Instant>,
}

/// The outcome of [`copy_batch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyOutcome {
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

/// One table's part of a transaction written by [`copy_batches`]: binary COPY `data` (`rows`
/// rows) with `copy_sql`, under the ledger row `claim`.
#[derive(Debug, Clone, Copy)]
pub struct TableBatch<'a> {
    pub copy_sql: &'a str,
    pub data: &'a Bytes,
    pub rows: usize,
    pub claim: LedgerClaim<'a>,
}

/// Writes one batch of binary COPY `data` (`rows` rows) with `copy_sql` in one transaction
/// that first claims `claim.batch_id` in the ledger (see [`copy_batches`]). Public for tests
/// of the exactly-once contract.
pub async fn copy_batch(
    pool: &Pool,
    settings: &TransactionSettings,
    copy_sql: &str,
    data: &Bytes,
    rows: usize,
    claim: LedgerClaim<'_>,
) -> Result<CopyOutcome, TimescaleSinkError> {
    let batch = TableBatch {
        copy_sql,
        data,
        rows,
        claim,
    };
    copy_batches(pool, settings, &[batch]).await
}

/// Writes `batches` (one per table) in one transaction that first sets `settings` and claims
/// every batch's id in the ledger. The ids are claimed together, so they are either all
/// there or none is: if they are (an earlier attempt committed), or an attempt still in
/// flight commits them while this one waits on the ledger rows, nothing is written. Public
/// for tests of the exactly-once contract.
pub async fn copy_batches(
    pool: &Pool,
    settings: &TransactionSettings,
    batches: &[TableBatch<'_>],
) -> Result<CopyOutcome, TimescaleSinkError> {
    let mut claims = LedgerColumns::default();
    for batch in batches {
        claims.push(batch);
    }
    let mut client = pool.get().await.map_err(TimescaleSinkError::from)?;
    let tx = client.transaction().await?;
    // The settings, the claims and every COPY's statement in one round trip: tokio-postgres
    // pipelines requests polled together, and sends them in the order polled. Prepared and
    // dropped (closed) inside the transaction, so nothing outlives it on the server
    // connection, which PgBouncer in transaction mode may hand to someone else.
    let ((), claimed, statements) = futures_util::future::try_join3(
        settings.apply(&tx),
        claims.insert(&tx),
        futures_util::future::try_join_all(batches.iter().map(|b| tx.prepare(b.copy_sql))),
    )
    .await?;
    if claimed == 0 {
        drop(statements);
        tx.rollback().await?;
        return Ok(CopyOutcome::AlreadyCommitted);
    }
    if claimed != batches.len() as u64 {
        // Each attempt of a transaction claims the same ids, and no other transaction has
        // them: a part can only be there if something else wrote the ledger.
        drop(statements);
        tx.rollback().await?;
        return Err(TimescaleSinkError::Setup(format!(
            "otelgate_ledger already holds {} of the {} batch ids this transaction claims; \
             was the ledger written by hand?",
            batches.len() as u64 - claimed,
            batches.len()
        )));
    }
    for (batch, statement) in batches.iter().zip(&statements) {
        let sink = tx.copy_in::<_, Bytes>(statement).await?;
        futures_util::pin_mut!(sink);
        sink.send(batch.data.clone()).await?;
        sink.finish().await?;
    }
    drop(statements);
    tx.commit().await?;
    Ok(CopyOutcome::Committed)
}

/// The ledger rows of one transaction, as the arrays of one `INSERT … SELECT FROM unnest`.
#[derive(Default)]
struct LedgerColumns<'a> {
    batch_id: Vec<uuid::Uuid>,
    table: Vec<&'a str>,
    rows: Vec<i64>,
    log_id: Vec<Option<uuid::Uuid>>,
    first_seq: Vec<Option<i64>>,
    first_row: Vec<Option<i32>>,
    last_seq: Vec<Option<i64>>,
    last_row: Vec<Option<i32>>,
    mapping: Vec<Option<&'a str>>,
    fingerprint: Vec<Option<i64>>,
}

impl<'a> LedgerColumns<'a> {
    fn push(&mut self, batch: &TableBatch<'a>) {
        let claim = &batch.claim;
        self.batch_id.push(claim.batch_id);
        self.table.push(claim.table);
        self.rows.push(batch.rows as i64);
        let range = claim.range;
        self.log_id.push(range.map(|r| r.log_id));
        self.first_seq.push(range.map(|r| r.first.0 as i64));
        self.first_row.push(range.map(|r| r.first.1 as i32));
        self.last_seq.push(range.map(|r| r.last.0 as i64));
        self.last_row.push(range.map(|r| r.last.1 as i32));
        self.mapping.push(claim.key.map(|k| k.mapping.as_str()));
        self.fingerprint
            .push(claim.key.map(|k| i64::from(k.fingerprint)));
    }

    /// Inserts the rows whose ids are not there yet; returns how many were inserted.
    async fn insert(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        tx.execute_typed(
            "INSERT INTO otelgate_ledger (batch_id, table_name, row_count, log_id, first_seq, first_row, last_seq, last_row, mapping, mapping_fingerprint) \
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::uuid[], $5::int8[], $6::int4[], $7::int8[], $8::int4[], $9::text[], $10::int8[]) \
             ON CONFLICT (batch_id) DO NOTHING",
            &[
                (&self.batch_id, Type::UUID_ARRAY),
                (&self.table, Type::TEXT_ARRAY),
                (&self.rows, Type::INT8_ARRAY),
                (&self.log_id, Type::UUID_ARRAY),
                (&self.first_seq, Type::INT8_ARRAY),
                (&self.first_row, Type::INT4_ARRAY),
                (&self.last_seq, Type::INT8_ARRAY),
                (&self.last_row, Type::INT4_ARRAY),
                (&self.mapping, Type::TEXT_ARRAY),
                (&self.fingerprint, Type::INT8_ARRAY),
            ],
        )
        .await
    }
}

impl SinkWriter {
    pub(super) fn new(
        pool: Pool,
        settings: TransactionSettings,
        retry_limit: Duration,
        rejected: Target,
        log_id: Option<uuid::Uuid>,
    ) -> Self {
        SinkWriter {
            pool,
            settings,
            tally: SinkTally::default(),
            retry: RetryConfig {
                initial_backoff_ms: 50,
                max_backoff_ms: 5_000,
                ..RetryConfig::default()
            },
            retry_limit,
            rejected,
            log_id,
        }
    }

    /// Writes rows to `target`, isolating rows the database refuses.
    pub(super) async fn write(
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
                Ok(()) => self.count_written(target, count, oldest),
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
                Err((failure, message)) => self.count_given_up(target, count, failure, &message),
            }
        }
    }

    /// Writes the batches of several tables (`group`) in one transaction, so a flush costs one
    /// commit however many tables it fills. The transaction is retried with the same ledger
    /// ids while it fails transiently. On any other failure nothing was committed, and each
    /// table's batch is written on its own with [`Self::write`], which isolates rows the
    /// database refuses and lets the other tables' rows through.
    pub(super) async fn write_group(&self, mut group: Vec<GroupMember>) {
        if group.len() <= 1 {
            let Some(member) = group.pop() else { return };
            return self
                .write(&member.target, member.rows, member.keys, member.oldest)
                .await;
        }
        let ranges: Vec<Option<LedgerRange>> = group.iter().map(|m| self.range(&m.keys)).collect();
        let batches: Vec<TableBatch<'_>> = group
            .iter()
            .zip(&ranges)
            .map(|(member, range)| TableBatch {
                copy_sql: &member.target.copy_sql,
                data: member.rows.data(),
                rows: member.rows.len(),
                claim: LedgerClaim {
                    batch_id: uuid::Uuid::new_v4(),
                    table: &member.target.table,
                    key: range.is_some().then_some(&member.target.ledger),
                    range: *range,
                },
            })
            .collect();
        let tables: Vec<&str> = group.iter().map(|m| m.target.table.as_str()).collect();
        let outcome = self
            .retry_transient(&tables, || async {
                let started = std::time::Instant::now();
                let written = copy_batches(&self.pool, &self.settings, &batches).await?;
                Ok((written, started.elapsed()))
            })
            .await;
        match outcome {
            Ok((written, took)) => {
                for member in &group {
                    let target = &member.target;
                    self.count_attempt(target, member.rows.len(), written, took);
                    self.count_written(target, member.rows.len() as u64, member.oldest);
                }
            }
            Err((Failure::Transient, message)) => {
                for member in &group {
                    let count = member.rows.len() as u64;
                    self.count_given_up(&member.target, count, Failure::Transient, &message);
                }
            }
            Err((_, message)) => {
                drop(batches);
                tracing::debug!(error = %message, "A transaction of several tables failed; writing each table's rows on its own.");
                for member in group {
                    self.write(&member.target, member.rows, member.keys, member.oldest)
                        .await;
                }
            }
        }
    }

    /// Counts `count` rows committed to `target`; `oldest` is when the oldest of their
    /// requests arrived.
    fn count_written(&self, target: &Target, count: u64, oldest: Option<std::time::Instant>) {
        if target.rejections {
            self.tally.rejected.fetch_add(count, Ordering::Relaxed);
            return;
        }
        self.tally.written.fetch_add(count, Ordering::Relaxed);
        metrics::counter!(telemetry::SINK_ROWS, "table" => target.table.clone()).increment(count);
        if let Some(oldest) = oldest {
            metrics::histogram!(telemetry::SINK_RECEIVE_TO_COMMIT_SECONDS, "table" => target.table.clone())
                .record(oldest.elapsed().as_secs_f64());
        }
    }

    /// Counts `count` rows of `target` given up after `failure`.
    fn count_given_up(&self, target: &Target, count: u64, failure: Failure, message: &str) {
        let why = given_up_reason(failure);
        self.tally.failed.fetch_add(count, Ordering::Relaxed);
        metrics::counter!(telemetry::SINK_FAILED_ROWS, "table" => target.table.clone(), "reason" => why).increment(count);
        tracing::error!(table = %target.table, rows = count, reason = why, error = %message, "Batch given up.");
    }

    /// Counts a successful attempt of a batch of `rows` rows for `target` that took `took`.
    fn count_attempt(&self, target: &Target, rows: usize, written: CopyOutcome, took: Duration) {
        match written {
            CopyOutcome::Committed => {
                metrics::histogram!(telemetry::SINK_COPY_SECONDS, "table" => target.table.clone())
                    .record(took.as_secs_f64());
            }
            CopyOutcome::AlreadyCommitted => {
                metrics::counter!(telemetry::SINK_LEDGER_SKIPS, "table" => target.table.clone())
                    .increment(1);
                tracing::info!(table = %target.table, "Batch was already committed; not written again.");
            }
        }
        metrics::histogram!(telemetry::SINK_BATCH_ROWS, "table" => target.table.clone())
            .record(rows as f64);
    }

    /// Runs `attempt` until it succeeds, fails other than transiently, or the retry limit
    /// passes; each retry is counted under every table in `tables` (the tables it writes).
    async fn retry_transient<T, F, Fut>(
        &self,
        tables: &[&str],
        mut attempt: F,
    ) -> Result<T, (Failure, String)>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, TimescaleSinkError>>,
    {
        let mut retries = Retries::new(&self.retry, self.retry_limit);
        let mut tries = 0u32;
        loop {
            let error = match attempt().await {
                Ok(done) => return Ok(done),
                Err(error) => error,
            };
            let failure = error.failure();
            if failure != Failure::Transient {
                return Err((failure, error.to_string()));
            }
            let Some(delay) = retries.next_delay(None) else {
                return Err((failure, error.to_string()));
            };
            for table in tables {
                metrics::counter!(telemetry::SINK_RETRIES, "table" => table.to_string())
                    .increment(1);
            }
            if tries == 0 {
                tracing::warn!(tables = ?tables, %error, "Batch write failed; will retry.");
            }
            tries += 1;
            tokio::time::sleep(delay).await;
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

    /// One batch, one id, retried on transient failures until the retry limit. The rows go to
    /// `target`'s table; the ledger row is `ledger`'s (the same target, except for a refused
    /// row kept in `otelgate_rejected_rows` in its mapping's place).
    async fn write_batch(
        &self,
        target: &Target,
        ledger: &Target,
        rows: &CopyBatch,
        range: Option<LedgerRange>,
    ) -> Result<(), (Failure, String)> {
        let claim = LedgerClaim {
            batch_id: uuid::Uuid::new_v4(),
            table: &ledger.table,
            key: range.is_some().then_some(&ledger.ledger),
            range,
        };
        let (written, took) = self
            .retry_transient(&[&target.table], || async {
                let started = std::time::Instant::now();
                let written = copy_batch(
                    &self.pool,
                    &self.settings,
                    &target.copy_sql,
                    rows.data(),
                    rows.len(),
                    claim,
                )
                .await?;
                Ok((written, started.elapsed()))
            })
            .await?;
        self.count_attempt(target, rows.len(), written, took);
        Ok(())
    }

    /// Deletes ledger rows no retry or replay can need, and rejected rows older than `days`.
    /// Rows of this gateway's log go once they end before the sink's saved cursor (`saved`),
    /// whatever their age: a restart replays from that cursor and never reads them. Rows
    /// written without the log (a retried batch only looks for its own id) go after `hours`.
    /// Rows of other logs belong to other gateways sharing the database, which prune their own.
    pub(super) async fn prune(&self, hours: u64, days: u64, saved: Option<(uuid::Uuid, u64)>) {
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
