//! What the log reports about itself: its state for `/readyz` (rendered by the admin
//! endpoint), what it appended for the shutdown report, each destination's backlog, and
//! whether it failed.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{Log, Position};

/// The log's state, as `/readyz` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStatus {
    /// `log.dir`.
    pub dir: PathBuf,
    /// Bytes on disk, over every segment.
    pub bytes: u64,
    /// `log.max_bytes`.
    pub max_bytes: u64,
    /// Segment files, the active one included.
    pub segments: usize,
    /// Records from the oldest segment's first to the head.
    pub records: u64,
    /// Why the log refuses everything until the gateway restarts, if a write or sync failed.
    pub failure: Option<String>,
    /// One per destination reading the log, in the order their readers were made.
    pub destinations: Vec<DestinationLag>,
}

/// How far one destination's cursor is behind the head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationLag {
    pub name: Arc<str>,
    /// Records from its cursor to the head.
    pub records: u64,
    /// Bytes from its cursor to the head.
    pub bytes: u64,
}

/// What a log has appended since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub records: u64,
    pub bytes: u64,
    /// Group commits (one `write` and one `fdatasync` each).
    pub syncs: u64,
}

/// The writer's running totals behind [`LogStats`].
#[derive(Debug, Default)]
pub(super) struct AppendCounters {
    records: AtomicU64,
    bytes: AtomicU64,
    syncs: AtomicU64,
}

impl AppendCounters {
    /// Counts one group commit of `records` records and `bytes` bytes.
    pub(super) fn add_group(&self, records: u64, bytes: u64) {
        self.records.fetch_add(records, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> LogStats {
        LogStats {
            records: self.records.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
        }
    }
}

impl Log {
    /// The log's state for `/readyz`.
    pub fn status(&self) -> LogStatus {
        let head = self.head();
        let (bytes, segments, oldest) = {
            let state = self.shared.state.lock().expect("log state lock");
            (
                state.bytes,
                state.segments.len(),
                state.segments.front().map_or(head.seq, |s| s.first_seq),
            )
        };
        LogStatus {
            dir: self.shared.config.dir.clone(),
            bytes,
            max_bytes: self.shared.config.max_bytes,
            segments,
            records: head.seq - oldest,
            failure: self.failure(),
            destinations: self.lags(head),
        }
    }

    /// What was appended since the log was opened.
    pub fn stats(&self) -> LogStats {
        self.shared.appended.snapshot()
    }

    /// Why the log refuses everything until the gateway restarts (a write or sync failed).
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().expect("failed lock").clone()
    }

    /// Whether the log still accepts appends (false after a write or sync failure).
    pub fn healthy(&self) -> bool {
        self.shared.failed.lock().expect("failed lock").is_none()
    }

    /// Records each destination has not finished, for the shutdown report.
    pub fn backlog(&self) -> Vec<(String, u64)> {
        self.lags(self.head())
            .into_iter()
            .map(|lag| (lag.name.to_string(), lag.records))
            .collect()
    }

    /// Each destination's cursor measured against `head`.
    fn lags(&self, head: Position) -> Vec<DestinationLag> {
        let trackers = self.shared.trackers.lock().expect("trackers lock");
        trackers
            .iter()
            .map(|tracker| {
                let cursor = tracker.cursor().0;
                DestinationLag {
                    name: tracker.name(),
                    records: head.seq.saturating_sub(cursor.seq),
                    bytes: head.offset.saturating_sub(cursor.offset),
                }
            })
            .collect()
    }
}
