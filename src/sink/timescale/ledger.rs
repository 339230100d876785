//! The ledger (`otelgate_ledger`): one row per committed batch, written in the batch's own
//! transaction. It answers two questions. Did this batch id commit already (a retry after an
//! unknown outcome)? And, with the durable log: which rows of the log are already in the
//! database, so a replay after a crash writes each row once?
//!
//! A row of the log is named by its [`RowKey`]: the log record's sequence number and the row's
//! index among the rows *one mapping* extracted from that record. Indexes restart for every
//! mapping, so a range only means something for the mapping that wrote it: ranges are keyed by
//! the mapping's ledger id, never by table (two mappings may fill one table). A range also
//! carries the mapping's fingerprint: if the definition changed between the crash and the
//! restart, its rows may be numbered differently, and the range is trusted by record instead
//! of by row (see [`Coverage::ChangedMapping`]).

use std::collections::HashMap;

use deadpool_postgres::Pool;
use tokio_postgres::types::Type;

use super::error::TimescaleSinkError;

/// A row's place in the durable log: the record's sequence number and the row's index among
/// the rows one mapping extracted from that record (extraction is deterministic).
pub type RowKey = (u64, u32);

/// Who writes under a ledger range: a mapping's ledger id and the fingerprint of its
/// definition (or the pseudo-mapping of conversion rejections).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerKey {
    pub mapping: String,
    pub fingerprint: u32,
}

/// Which rows of the log a ledger row covers (both ends inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerRange {
    pub log_id: uuid::Uuid,
    pub first: RowKey,
    pub last: RowKey,
}

/// Whether a replayed row was committed before the restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// No ledger range covers it: write it.
    Unwritten,
    /// A range of the same mapping definition covers it: it is in the database.
    Committed,
    /// Its record falls in a range written by another definition of the mapping (or before
    /// ranges named their mapping). Row indexes may have shifted, so the row cannot be matched;
    /// it is skipped, and counted, rather than risk writing a row twice.
    ChangedMapping,
}

/// Ranges of one mapping: exact ones (same definition) sorted by first key, and record
/// spans of other definitions.
#[derive(Debug, Default)]
struct MappingRanges {
    /// `(first, reach)`: sorted by first key, `reach` the furthest last key of this range
    /// and every range before it. Ranges of one definition never share a row, but a replay's
    /// range can span an older one (it skipped the rows the older one holds), so they may
    /// nest; the running maximum answers "does any range starting at or before the key reach
    /// it" with one binary search.
    exact: Vec<(RowKey, RowKey)>,
    changed: Vec<(u64, u64)>,
}

/// Rows already committed from the records about to be replayed, read from the ledger at
/// start-up.
#[derive(Debug, Default)]
pub struct Committed {
    /// By mapping ledger id.
    mappings: HashMap<String, MappingRanges>,
    /// Ranges written before the ledger named mappings, by table.
    legacy: HashMap<String, Vec<(u64, u64)>>,
    rows: usize,
}

/// One row of the ledger, as [`Committed`] reads it.
#[derive(Debug, Clone)]
pub struct LedgerEntry {
    pub table: String,
    /// `None` for rows written before the ledger named mappings.
    pub key: Option<LedgerKey>,
    pub first: RowKey,
    pub last: RowKey,
}

impl Committed {
    /// Reads the ledger rows of log `log_id` that end at or after record `from_seq`, judged
    /// against the current mapping definitions `current`.
    pub async fn load(
        pool: &Pool,
        log_id: uuid::Uuid,
        from_seq: u64,
        current: &[LedgerKey],
    ) -> Result<Self, TimescaleSinkError> {
        let client = pool.get().await.map_err(TimescaleSinkError::from)?;
        let rows = client
            .query_typed(
                "SELECT table_name, mapping, mapping_fingerprint, first_seq, first_row, last_seq, last_row \
                 FROM otelgate_ledger WHERE log_id = $1 AND last_seq >= $2",
                &[(&log_id, Type::UUID), (&(from_seq as i64), Type::INT8)],
            )
            .await?;
        let entries = rows.iter().map(|row| {
            let key = |seq: i64, index: i32| (seq as u64, index as u32);
            let mapping: Option<String> = row.get(1);
            let fingerprint: Option<i64> = row.get(2);
            LedgerEntry {
                table: row.get(0),
                key: mapping.map(|mapping| LedgerKey {
                    mapping,
                    fingerprint: fingerprint.unwrap_or_default() as u32,
                }),
                first: key(row.get(3), row.get(4)),
                last: key(row.get(5), row.get(6)),
            }
        });
        Ok(Self::from_entries(entries, current))
    }

    /// Builds the replay filter from ledger rows, judged against the current definitions.
    pub fn from_entries(
        entries: impl IntoIterator<Item = LedgerEntry>,
        current: &[LedgerKey],
    ) -> Self {
        let mut committed = Committed::default();
        for entry in entries {
            committed.rows += 1;
            let records = (entry.first.0, entry.last.0);
            let Some(key) = entry.key else {
                committed
                    .legacy
                    .entry(entry.table)
                    .or_default()
                    .push(records);
                continue;
            };
            let same = current.contains(&key);
            let ranges = committed.mappings.entry(key.mapping).or_default();
            if same {
                ranges.exact.push((entry.first, entry.last));
            } else {
                ranges.changed.push(records);
            }
        }
        for ranges in committed.mappings.values_mut() {
            ranges.exact.sort_unstable();
            let mut reach = (0, 0);
            for (_, last) in &mut ranges.exact {
                reach = reach.max(*last);
                *last = reach;
            }
        }
        committed
    }

    /// Ledger rows found.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Whether the row `key` that mapping `mapping` (writing `table`) extracted was committed
    /// before the restart.
    pub fn covers(&self, mapping: &str, table: &str, key: RowKey) -> Coverage {
        let in_records = |spans: &[(u64, u64)]| {
            spans
                .iter()
                .any(|&(first, last)| first <= key.0 && key.0 <= last)
        };
        if let Some(ranges) = self.mappings.get(mapping) {
            let after = ranges.exact.partition_point(|(first, _)| *first <= key);
            if after > 0 && key <= ranges.exact[after - 1].1 {
                return Coverage::Committed;
            }
            if in_records(&ranges.changed) {
                return Coverage::ChangedMapping;
            }
        }
        match self.legacy.get(table) {
            Some(spans) if in_records(spans) => Coverage::ChangedMapping,
            _ => Coverage::Unwritten,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPANS: &str = "frame_metadata/span/frame.process";
    const LOGS: &str = "frame_metadata/log/frame";

    fn key(mapping: &str, fingerprint: u32) -> LedgerKey {
        LedgerKey {
            mapping: mapping.into(),
            fingerprint,
        }
    }

    fn entry(mapping: Option<(&str, u32)>, first: RowKey, last: RowKey) -> LedgerEntry {
        LedgerEntry {
            table: "frame_metadata".into(),
            key: mapping.map(|(m, f)| key(m, f)),
            first,
            last,
        }
    }

    fn committed(entries: Vec<LedgerEntry>) -> Committed {
        Committed::from_entries(entries, &[key(SPANS, 1), key(LOGS, 2)])
    }

    #[track_caller]
    fn check(committed: &Committed, mapping: &str, key: RowKey, want: Coverage) {
        assert_eq!(
            committed.covers(mapping, "frame_metadata", key),
            want,
            "{mapping} {key:?}"
        );
    }

    /// The span mapping committed records 10..=12; the log mapping filled the same table from
    /// record 11 but never committed. Keyed by table, row (11, 0) of the log mapping looked
    /// written, and a replay skipped it: lost.
    #[test]
    fn a_range_of_one_mapping_never_covers_another_mappings_rows() {
        let c = committed(vec![entry(Some((SPANS, 1)), (10, 0), (12, 0))]);
        check(&c, SPANS, (11, 0), Coverage::Committed);
        check(&c, LOGS, (11, 0), Coverage::Unwritten);
        check(&c, LOGS, (10, 0), Coverage::Unwritten);
        check(&c, LOGS, (12, 0), Coverage::Unwritten);
    }

    #[test]
    fn both_ends_are_inclusive_and_gaps_stay_unwritten() {
        let c = committed(vec![
            entry(Some((SPANS, 1)), (10, 3), (12, 1)),
            entry(Some((SPANS, 1)), (20, 0), (20, 0)),
        ]);
        for (key, want) in [
            ((10, 2), Coverage::Unwritten),
            ((10, 3), Coverage::Committed),
            ((11, 99), Coverage::Committed),
            ((12, 1), Coverage::Committed),
            ((12, 2), Coverage::Unwritten),
            ((15, 0), Coverage::Unwritten),
            ((19, u32::MAX), Coverage::Unwritten),
            ((20, 0), Coverage::Committed),
            ((20, 1), Coverage::Unwritten),
            ((9, 0), Coverage::Unwritten),
        ] {
            check(&c, SPANS, key, want);
        }
    }

    #[test]
    fn adjacent_and_nested_ranges() {
        // Adjacent: one batch ends where the next begins. Nested: a replay's batch spans an
        // older range whose rows it skipped.
        let c = committed(vec![
            entry(Some((SPANS, 1)), (5, 0), (5, 4)),
            entry(Some((SPANS, 1)), (5, 5), (6, 0)),
            entry(Some((SPANS, 1)), (100, 0), (300, 0)),
            entry(Some((SPANS, 1)), (150, 2), (150, 3)),
        ]);
        for (key, want) in [
            ((5, 0), Coverage::Committed),
            ((5, 4), Coverage::Committed),
            ((5, 5), Coverage::Committed),
            ((6, 0), Coverage::Committed),
            ((6, 1), Coverage::Unwritten),
            ((150, 9), Coverage::Committed),
            ((299, 0), Coverage::Committed),
            ((300, 1), Coverage::Unwritten),
        ] {
            check(&c, SPANS, key, want);
        }
    }

    /// Many short ranges after a long one: the long one must still be found for a key near
    /// its end.
    #[test]
    fn a_long_range_is_found_behind_many_short_ones() {
        let mut entries = vec![entry(Some((SPANS, 1)), (0, 0), (1_000, 0))];
        entries.extend((1..999).map(|s| entry(Some((SPANS, 1)), (s, 1), (s, 1))));
        let c = committed(entries);
        check(&c, SPANS, (999, 0), Coverage::Committed);
        check(&c, SPANS, (1_000, 0), Coverage::Committed);
        check(&c, SPANS, (1_000, 1), Coverage::Unwritten);
    }

    #[test]
    fn a_changed_definition_is_trusted_by_record() {
        let c = committed(vec![
            entry(Some((SPANS, 7)), (10, 2), (12, 0)),
            entry(Some((LOGS, 2)), (11, 0), (11, 0)),
        ]);
        check(&c, SPANS, (9, 0), Coverage::Unwritten);
        check(&c, SPANS, (10, 0), Coverage::ChangedMapping);
        check(&c, SPANS, (12, 5), Coverage::ChangedMapping);
        check(&c, SPANS, (13, 0), Coverage::Unwritten);
        check(&c, LOGS, (11, 0), Coverage::Committed);
        check(&c, LOGS, (11, 1), Coverage::Unwritten);
    }

    #[test]
    fn ranges_from_before_mappings_were_named_count_for_every_mapping_of_the_table() {
        let c = committed(vec![entry(None, (10, 0), (10, 3))]);
        check(&c, SPANS, (10, 9), Coverage::ChangedMapping);
        check(&c, LOGS, (10, 0), Coverage::ChangedMapping);
        check(&c, LOGS, (11, 0), Coverage::Unwritten);
        assert_eq!(
            c.covers(SPANS, "detection_events", (10, 0)),
            Coverage::Unwritten
        );
        assert_eq!(c.len(), 1);
    }

    /// Random ranges of several mappings, checked row by row against what was committed.
    #[test]
    fn matches_a_brute_force_model() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(14);
        for _ in 0..200 {
            let mut entries = Vec::new();
            let mut rows: Vec<(&str, RowKey, bool)> = Vec::new();
            for (mapping, fingerprint) in [(SPANS, 1), (LOGS, 2)] {
                // The rows one mapping extracts, in log order, cut into consecutive batches,
                // some committed, some not.
                let mut stream = Vec::new();
                for seq in 0..rng.random_range(1..40u64) {
                    for row in 0..rng.random_range(0..4u32) {
                        stream.push((seq, row));
                    }
                }
                let mut at = 0;
                while at < stream.len() {
                    let len = rng.random_range(1..6).min(stream.len() - at);
                    let batch = &stream[at..at + len];
                    let commit = rng.random_bool(0.5);
                    if commit {
                        entries.push(entry(
                            Some((mapping, fingerprint)),
                            batch[0],
                            batch[len - 1],
                        ));
                    }
                    rows.extend(batch.iter().map(|k| (mapping, *k, commit)));
                    at += len;
                }
            }
            let c = committed(entries);
            for (mapping, key, commit) in rows {
                let want = if commit {
                    Coverage::Committed
                } else {
                    Coverage::Unwritten
                };
                check(&c, mapping, key, want);
            }
        }
    }
}
