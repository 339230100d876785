//! Maintenance, every `log.cursor_interval_ms`: saves each destination's cursor, applies the
//! per-destination limits (segments deleted under `drop_oldest`, `max_lag_bytes`), retires
//! the segments every cursor has passed (keeping a few as spares for the writer to reuse),
//! and sets the log's gauges.

use std::fs::{self, File};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{cursor, unix_nanos_now, Log, Position, Tracker};
use crate::telemetry::{self, reason};

/// Read segment files kept for reuse, at most.
pub(super) const MAX_SPARES: usize = 2;

impl Log {
    /// Runs [`Log::maintain`] every `cursor_interval_ms` until `stop` fires.
    pub async fn maintenance(self: Arc<Self>, stop: CancellationToken) {
        let mut tick =
            tokio::time::interval(Duration::from_millis(self.shared.config.cursor_interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => break,
            }
            let log = self.clone();
            let _ = tokio::task::spawn_blocking(move || log.maintain()).await;
        }
    }

    /// Saves every cursor, deletes fully read segments and updates the gauges.
    pub fn maintain(&self) {
        let trackers = self.shared.trackers.lock().expect("trackers lock").clone();
        let head = self.head();
        let oldest = self.shared.oldest().map(|(at, _)| at);
        let mut min = head;
        for tracker in &trackers {
            self.enforce_limits(tracker, head, oldest);
            let (cursor, oldest_received) = tracker.cursor();
            if tracker.throttle_lag().is_some() {
                tracker.observe_drain(cursor.offset, head.offset, std::time::Instant::now());
            }
            min = min.min(cursor);
            self.save_cursor(tracker, cursor);
            self.set_lag_gauges(tracker, head, cursor, oldest_received);
        }
        self.retire_segments_before(min.seq);
        self.update_gauges();
    }

    /// Writes `tracker`'s cursor to its file, unless that is what the file already holds.
    fn save_cursor(&self, tracker: &Tracker, cursor: Position) {
        if !tracker.needs_save(cursor) {
            return;
        }
        let path = self.shared.cursor_dir.join(&*tracker.name());
        match cursor::save(&path, cursor) {
            Ok(()) => tracker.mark_saved(cursor),
            Err(error) => {
                tracing::warn!(destination = %tracker.name(), %error, "Cannot save a cursor; will try again.")
            }
        }
    }

    /// Sets a destination's lag gauges: records, bytes, and the age of its oldest unfinished
    /// record (`oldest_received` when it is outstanding).
    fn set_lag_gauges(
        &self,
        tracker: &Tracker,
        head: Position,
        cursor: Position,
        oldest_received: Option<i64>,
    ) {
        let labels = [("destination", tracker.name().to_string())];
        metrics::gauge!(telemetry::LOG_LAG_RECORDS, &labels)
            .set(head.seq.saturating_sub(cursor.seq) as f64);
        metrics::gauge!(telemetry::LOG_LAG_BYTES, &labels)
            .set(head.offset.saturating_sub(cursor.offset) as f64);
        let age = if cursor.seq >= head.seq {
            0.0
        } else {
            oldest_received
                .or_else(|| self.shared.received_at(cursor.seq))
                .map_or(0.0, |at| (unix_nanos_now() - at).max(0) as f64 / 1e9)
        };
        metrics::gauge!(telemetry::LOG_LAG_AGE_SECONDS, &labels).set(age);
    }

    /// Drops, for this destination alone, what it can no longer get: records of segments
    /// deleted under `when_full = "drop_oldest"`, and its oldest data past its lag limit,
    /// including records it holds but cannot deliver (a dead backend), so its cursor moves
    /// on and the log's segments can be deleted.
    fn enforce_limits(&self, tracker: &Tracker, head: Position, oldest: Option<Position>) {
        let cursor = tracker.cursor().0;
        let mut target = None;
        if let Some(oldest) = oldest.filter(|o| cursor.seq < o.seq) {
            target = Some((oldest, reason::LOG_FULL));
        }
        if let Some(limit) = tracker.max_lag_bytes() {
            let from = target.map_or(cursor, |(t, _)| t);
            if head.offset.saturating_sub(from.offset) > limit {
                if let Some(to) = self.shared.segment_from(head.offset - limit) {
                    if to.seq > from.seq {
                        target = Some((to, reason::LAG_LIMIT));
                    }
                }
            }
        }
        if let Some((to, reason)) = target {
            drop_records_before(tracker, to, reason);
        }
    }

    /// Removes the segments whose records all come before `seq` (never the active one): up to
    /// [`MAX_SPARES`] full ones become spares, the rest are deleted.
    fn retire_segments_before(&self, seq: u64) {
        let mut doomed = Vec::new();
        {
            let mut state = self.shared.state.lock().expect("log state lock");
            while state.segments.len() > 1 && state.segments[1].first_seq <= seq {
                let segment = state.segments.pop_front().expect("len > 1");
                state.bytes -= segment.len;
                doomed.push(segment.path);
            }
        }
        let mut renamed = Vec::new();
        for path in doomed {
            // Keep a couple of full segments for reuse: overwriting blocks a file already
            // has lets `fdatasync` skip the metadata update a growing file needs.
            let full =
                fs::metadata(&path).is_ok_and(|m| m.len() >= self.shared.config.segment_bytes / 2);
            let room =
                self.shared.spares.lock().expect("spares lock").len() + renamed.len() < MAX_SPARES;
            if full && room {
                let spare = path.with_extension("spare");
                if fs::rename(&path, &spare).is_ok() {
                    renamed.push(spare);
                    continue;
                }
            }
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "Cannot delete a read log segment.");
            }
        }
        if !renamed.is_empty() {
            self.keep_spares(renamed);
        }
    }

    /// Hands segments renamed to spares to the writer once their new names are on disk: the
    /// writer rewrites a spare's header, and a crash must not bring it back under its old
    /// name, as a segment whose header says it starts at the head.
    fn keep_spares(&self, renamed: Vec<PathBuf>) {
        match File::open(&self.shared.log_dir).and_then(|dir| dir.sync_all()) {
            Ok(()) => self
                .shared
                .spares
                .lock()
                .expect("spares lock")
                .extend(renamed),
            Err(error) => {
                tracing::warn!(%error, "Cannot sync the log directory; its spare segments wait for a restart.")
            }
        }
    }

    /// Sets the log's size gauges: bytes on disk and records held.
    pub(super) fn update_gauges(&self) {
        let (bytes, oldest) = {
            let state = self.shared.state.lock().expect("log state lock");
            (
                state.bytes,
                state.segments.front().map_or(0, |s| s.first_seq),
            )
        };
        metrics::gauge!(telemetry::LOG_BYTES).set(bytes as f64);
        metrics::gauge!(telemetry::LOG_RECORDS).set(self.head().seq.saturating_sub(oldest) as f64);
    }
}

/// Drops records before `to` for `tracker`'s destination, counting and logging them.
pub(super) fn drop_records_before(tracker: &Tracker, to: Position, reason: &'static str) {
    let records = tracker.abandon_before(to);
    if records > 0 {
        metrics::counter!(telemetry::LOG_DROPPED_RECORDS, "destination" => tracker.name().to_string(), "reason" => reason)
            .increment(records);
        tracing::warn!(destination = %tracker.name(), records, reason, "Dropping log records this destination has not finished.");
    }
}
