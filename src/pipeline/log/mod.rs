//! The durable log: every accepted request is appended once, as received, to a segmented file
//! log in the data directory, and acknowledged only after the append is on disk. Appends are
//! group-committed: a writer thread takes every request waiting, writes them in one `write`,
//! syncs once, and answers them all. Each destination reads the log through its own
//! [`LogReader`] and cursor, so a slow or dead destination only grows its own lag.
//!
//! Layout of the data directory:
//!
//! ```text
//! LOCK                 held (flock) by the running gateway
//! log_id               a UUID naming this log (the TimescaleDB ledger refers to it)
//! log/<seq>.seg        segments, named by their first sequence number (see `segment`)
//! log/<seq>.spare      read segments kept for reuse as new segments
//! cursors/<name>       per destination: "<seq> <offset>", everything before is done
//! ```
//!
//! Recovery at start-up removes segment files whose header never reached the disk and checks
//! every record of the last segment that has one; a torn or corrupt tail is cut off (counted
//! in `otelgate_log_truncated_bytes_total` and logged). Records of older
//! segments are checked when read; a corrupt one makes its reader skip to the next segment.
//! Segments are retired (deleted, or kept as spares for reuse) when every cursor has passed
//! them.
//!
//! Where each part lives:
//!
//! - `config`: the `[log]` section.
//! - `recovery`: [`Log::open`]: the lock, the log's id, the torn tail, the head, and where
//!   each destination resumes.
//! - `writer`: [`Appender`] and the group-commit writer thread: disk floor, size limit,
//!   segment roll, the failure state.
//! - `reader`: [`LogReader`], a destination's reader, from the cache or from disk.
//! - `cursor`: [`Tracker`], a destination's progress, and its cursor file.
//! - `maintenance`: cursor saves, per-destination limits, segment retirement, gauges.
//! - `status`: what `/readyz` and the shutdown report show.
//! - `shared`: what the writer, the readers and maintenance share.
//! - `segment`: the on-disk format.

mod config;
mod cursor;
mod maintenance;
mod reader;
mod recovery;
pub mod segment;
mod shared;
mod status;
mod writer;

#[cfg(test)]
mod recovery_tests;
#[cfg(test)]
mod tests;

use std::fs::{self, File};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use tokio::sync::watch;

pub use config::{LogConfig, WhenLogFull};
pub use cursor::{Done, Tracker};
pub use reader::LogReader;
pub use status::{DestinationLag, LogStats, LogStatus};
pub use writer::{AppendError, Appender, Lagging};

use super::queue::LagLimits;
use super::QueueSender;
use crate::telemetry::{self, reason};
use crate::Signal;
use segment::SEGMENT_HEADER;
use shared::Shared;

/// A place in the log: the sequence number of a record and its log-wide byte offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

/// The durable log of a running gateway.
pub struct Log {
    shared: Arc<Shared>,
    /// Taken once by the receivers; dropping it (and its clones) stops the writer.
    appender: Mutex<Option<Appender>>,
    head: watch::Receiver<Position>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The head when the log was opened: records before it are replayed.
    opened_at: Position,
    /// The data directory's `LOCK`, held while the log is open.
    _lock: File,
}

impl std::fmt::Debug for Log {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Log")
            .field("dir", &self.shared.config.dir)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Names this log in the TimescaleDB ledger.
    pub fn id(&self) -> uuid::Uuid {
        self.shared.log_id
    }

    /// The next position to be written.
    pub fn head(&self) -> Position {
        *self.head.borrow()
    }

    /// The receivers' handle; there is one. Once it and its clones are dropped, the writer
    /// finishes its last group and stops, and readers stop at the end of the log.
    pub fn take_appender(&self) -> Option<Appender> {
        self.appender.lock().expect("appender lock").take()
    }

    /// The head when the log was opened: destinations replay the records before it.
    pub fn opened_at(&self) -> Position {
        self.opened_at
    }

    /// A reader for destination `name`, starting at its saved cursor (or at the head for a
    /// destination the log has not seen before), and feeding `queue` with at most
    /// `window_bytes` of requests held by the destination at once.
    pub fn reader(
        &self,
        name: &str,
        signals: &[Signal],
        queue: QueueSender,
        limits: LagLimits,
        window_bytes: u64,
    ) -> anyhow::Result<LogReader> {
        let path = self.shared.cursor_dir.join(name);
        let start = self.resume_point(name, &path);
        let tracker = Arc::new(Tracker::new(name, start, limits));
        for reason in [reason::LAG_LIMIT, reason::LOG_FULL, reason::CORRUPT] {
            metrics::counter!(telemetry::LOG_DROPPED_RECORDS, "destination" => name.to_owned(), "reason" => reason)
                .increment(0);
        }
        metrics::counter!(telemetry::LOG_REPLAYED_RECORDS, "destination" => name.to_owned())
            .increment(0);
        // Saved now, so a crash before the first periodic save cannot make this destination
        // look new and skip what it has not read.
        cursor::save(&path, start)
            .with_context(|| format!("cannot save the cursor {}", path.display()))?;
        tracker.mark_saved(start);
        self.shared
            .trackers
            .lock()
            .expect("trackers lock")
            .push(tracker.clone());
        if limits.throttle_lag.is_some() {
            self.shared
                .throttling
                .write()
                .expect("throttling lock")
                .push((tracker.clone(), Signal::mask(signals)));
        }
        if start.seq < self.opened_at.seq {
            tracing::info!(
                destination = name,
                records = self.opened_at.seq - start.seq,
                "Replaying undelivered records from the log."
            );
        }
        Ok(LogReader::new(
            self.shared.clone(),
            tracker,
            signals,
            queue,
            self.head.clone(),
            self.opened_at.seq,
            window_bytes,
        ))
    }

    /// Removes cursor files of destinations no longer configured, so they do not keep
    /// segments forever. Call after every reader is created.
    pub fn forget_other_destinations(&self) {
        let known: Vec<Arc<str>> = self
            .shared
            .trackers
            .lock()
            .expect("trackers lock")
            .iter()
            .map(|t| t.name())
            .collect();
        let Ok(entries) = fs::read_dir(&self.shared.cursor_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") || !known.iter().any(|k| **k == *name) {
                tracing::warn!(destination = %name, "Forgetting the cursor of a destination that is no longer configured.");
                let _ = fs::remove_file(entry.path());
            }
        }
    }

    /// Waits for the writer thread to finish its last group (after every appender is gone).
    pub async fn join_writer(&self) {
        let writer = self.writer.lock().expect("writer lock").take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    /// Stops every destination's progress: deliveries abandoned from now on stay in the log.
    pub fn freeze(&self) {
        for tracker in self.shared.trackers.lock().expect("trackers lock").iter() {
            tracker.freeze();
        }
    }
}

fn unix_nanos_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The wall-clock time of an `Instant` in the past.
fn unix_nanos_of(instant: Instant) -> i64 {
    unix_nanos_now() - instant.elapsed().as_nanos() as i64
}

/// The `Instant` of a wall-clock time in the past.
fn instant_of(unix_nanos: i64) -> Instant {
    let ago = Duration::from_nanos((unix_nanos_now() - unix_nanos).max(0) as u64);
    Instant::now().checked_sub(ago).unwrap_or_else(Instant::now)
}
