//! A destination's progress through the log. Destinations finish records out of order (several
//! batches in flight, rows of one request in several tables), so the cursor is the first
//! record not yet finished: every record before it is done. A record is finished when the
//! last [`Done`] guard for it is dropped, which the destinations do once a batch has its
//! outcome (delivered, or given up for good and counted).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::Position;
use crate::pipeline::queue::LagLimits;

/// One destination's outstanding records and read position.
#[derive(Debug)]
pub struct Tracker {
    name: Arc<str>,
    inner: Mutex<Inner>,
    /// After a forced shutdown, abandoned deliveries must not count as finished.
    frozen: AtomicBool,
    /// How far behind the destination may fall before its oldest data is dropped for it
    /// alone (bytes) or new requests are throttled (time).
    limits: LagLimits,
    /// Bytes of the log the destination finishes per second while it has a backlog (an
    /// average over about a second; 0 until measured), set by [`Tracker::observe_drain`].
    drain_rate: AtomicU64,
    /// The cursor's offset at the last [`Tracker::observe_drain`], when, and whether the
    /// destination was behind the head then.
    drain_sample: Mutex<Option<(u64, Instant, bool)>>,
}

#[derive(Debug)]
struct Inner {
    /// Records handed out and not finished: seq -> (offset, received unix ns).
    outstanding: BTreeMap<u64, (u64, i64)>,
    /// The reader's position: every record before it was handed out or skipped.
    next: Position,
    saved: Option<Position>,
    /// Records before this sequence number were dropped for this destination: deliveries of
    /// them still in flight no longer hold the cursor back.
    floor: u64,
}

impl Tracker {
    /// A tracker for destination `name`, reading from `start`.
    pub fn new(name: &str, start: Position, limits: LagLimits) -> Self {
        Tracker {
            name: name.into(),
            inner: Mutex::new(Inner {
                outstanding: BTreeMap::new(),
                next: start,
                saved: None,
                floor: 0,
            }),
            frozen: AtomicBool::new(false),
            limits,
            drain_rate: AtomicU64::new(0),
            drain_sample: Mutex::new(None),
        }
    }

    /// The destination's `queue.max_lag_bytes`, if it has one.
    pub fn max_lag_bytes(&self) -> Option<u64> {
        self.limits.max_lag_bytes
    }

    /// The destination's `queue.throttle_lag_ms`, if it has one.
    pub fn throttle_lag(&self) -> Option<std::time::Duration> {
        self.limits.throttle_lag
    }

    /// The destination's lag at `now_unix_nanos` with the log's head at `head_offset`, when
    /// it is longer than its throttle bound. The lag is the longer of two: how long ago the
    /// oldest record it holds unfinished was received, and how long the records between its
    /// cursor and the head will take at the rate it has been finishing them. The first alone
    /// is not enough: a client that sends faster than the destination finishes fills the log
    /// with more than the bound's worth of work before the oldest record gets that old, and
    /// the newest records then wait several times the bound.
    pub fn lag_beyond_throttle(&self, now_unix_nanos: i64, head_offset: u64) -> Option<Duration> {
        let bound = self.limits.throttle_lag?;
        let (received, cursor) = {
            let inner = self.lock();
            match inner.outstanding.first_key_value() {
                Some((_, &(offset, received))) => (Some(received), offset),
                None => (None, inner.next.offset),
            }
        };
        let age = received.map_or(Duration::ZERO, |received| {
            Duration::from_nanos(now_unix_nanos.saturating_sub(received).max(0) as u64)
        });
        let backlog = head_offset.saturating_sub(cursor);
        let rate = self.drain_rate.load(Ordering::Relaxed);
        let drain = if rate > 0 && backlog > 0 {
            Duration::from_secs_f64(backlog as f64 / rate as f64)
        } else {
            Duration::ZERO
        };
        let lag = age.max(drain);
        (lag > bound).then_some(lag)
    }

    /// Measures how fast the destination finishes the log: called periodically (by log
    /// maintenance) with its cursor and the head. Only intervals that began with a backlog
    /// count, so an idle destination keeps the rate it last showed under load.
    pub fn observe_drain(&self, cursor_offset: u64, head_offset: u64, now: Instant) {
        let mut sample = self.drain_sample.lock().expect("drain sample lock");
        if let Some((previous, at, behind)) = *sample {
            let elapsed = now.saturating_duration_since(at).as_secs_f64();
            if behind && elapsed > 0.0 {
                let rate = cursor_offset.saturating_sub(previous) as f64 / elapsed;
                let old = self.drain_rate.load(Ordering::Relaxed) as f64;
                // About a second of memory at the default 200 ms maintenance period.
                let new = if old == 0.0 {
                    rate
                } else {
                    0.8 * old + 0.2 * rate
                };
                self.drain_rate.store(new as u64, Ordering::Relaxed);
            }
        }
        *sample = Some((cursor_offset, now, head_offset > cursor_offset));
    }

    /// The destination's name, which is also its cursor file's.
    pub fn name(&self) -> Arc<str> {
        self.name.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("tracker lock")
    }

    /// Where the reader continues.
    pub fn next(&self) -> Position {
        self.lock().next
    }

    /// The record at `at` (ending at `end`) is handed to the destination.
    pub fn hold(self: &Arc<Self>, at: Position, end: Position, received_unix_nanos: i64) -> Done {
        let mut inner = self.lock();
        if at.seq >= inner.floor {
            inner
                .outstanding
                .insert(at.seq, (at.offset, received_unix_nanos));
        }
        inner.next = inner.next.max(end);
        Done {
            tracker: self.clone(),
            seq: at.seq,
        }
    }

    /// The reader moved to `to` without handing anything out (a signal this destination does
    /// not take, or data dropped for it).
    pub fn skip_to(&self, to: Position) {
        let mut inner = self.lock();
        inner.next = inner.next.max(to);
    }

    /// Drops every record before `to` for this destination: unread ones are skipped and ones
    /// handed out but not finished stop holding the cursor. Returns how many records that was.
    pub fn abandon_before(&self, to: Position) -> u64 {
        let mut inner = self.lock();
        if to.seq <= inner.floor {
            return 0;
        }
        let kept = inner.outstanding.split_off(&to.seq);
        let abandoned = std::mem::replace(&mut inner.outstanding, kept).len() as u64;
        let unread = to.seq.saturating_sub(inner.next.seq);
        inner.next = inner.next.max(to);
        inner.floor = to.seq;
        abandoned + unread
    }

    /// Everything before the returned position is finished; with the received time of the
    /// record at it, when it is outstanding.
    pub fn cursor(&self) -> (Position, Option<i64>) {
        let inner = self.lock();
        match inner.outstanding.first_key_value() {
            Some((&seq, &(offset, received))) => (Position { seq, offset }, Some(received)),
            None => (inner.next, None),
        }
    }

    /// Whether `cursor` differs from the one last written to disk.
    pub fn needs_save(&self, cursor: Position) -> bool {
        self.lock().saved != Some(cursor)
    }

    /// The cursor last written to disk: where a restart would begin.
    pub fn saved(&self) -> Option<Position> {
        self.lock().saved
    }

    /// Records that `cursor` is now the one on disk.
    pub fn mark_saved(&self, cursor: Position) {
        self.lock().saved = Some(cursor);
    }

    /// From now on, dropped [`Done`] guards no longer finish their records (see `frozen`).
    pub fn freeze(&self) {
        self.frozen.store(true, Ordering::SeqCst);
    }

    fn finish(&self, seq: u64) {
        if self.frozen.load(Ordering::SeqCst) {
            return;
        }
        self.lock().outstanding.remove(&seq);
    }
}

/// Marks a record finished for one destination when dropped.
#[derive(Debug)]
pub struct Done {
    tracker: Arc<Tracker>,
    seq: u64,
}

impl Drop for Done {
    fn drop(&mut self) {
        self.tracker.finish(self.seq);
    }
}

/// Reads a saved cursor; `Ok(None)` if there is none.
pub fn load(path: &Path) -> io::Result<Option<Position>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut parts = text.split_ascii_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(seq)), Some(Ok(offset))) => Ok(Some(Position { seq, offset })),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} does not hold \"<seq> <offset>\"", path.display()),
        )),
    }
}

/// Saves a cursor so that a crash leaves either the old or the new one.
pub fn save(path: &Path, at: Position) -> io::Result<()> {
    write_atomically(path, format!("{} {}\n", at.seq, at.offset).as_bytes())
}

/// Writes `data` to a temporary file, syncs it and renames it over `path`.
pub fn write_atomically(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_data()?;
    fs::rename(&tmp, path)?;
    // The rename itself must reach the disk, or a power loss could bring the old file back.
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(seq: u64) -> Position {
        Position {
            seq,
            offset: seq * 10,
        }
    }

    #[test]
    fn throttle_lag_counts_the_backlog_at_the_rate_the_destination_finishes_it() {
        let limits = LagLimits {
            max_lag_bytes: None,
            throttle_lag: Some(Duration::from_secs(1)),
        };
        let tracker = Arc::new(Tracker::new("t", pos(0), limits));
        let now_ns = 1_000_000_000_000i64;
        let _held = tracker.hold(pos(0), pos(1), now_ns);
        // Unmeasured rate: only the age of the oldest record counts.
        assert_eq!(tracker.lag_beyond_throttle(now_ns, 1_000_000), None);
        let late = now_ns + 1_500_000_000;
        assert_eq!(
            tracker.lag_beyond_throttle(late, 10),
            Some(Duration::from_millis(1500))
        );
        // 1,000 bytes finished per 100 ms while behind: 10,000 bytes/s. 20,000 bytes of
        // backlog are then 2 s of work, though the oldest record is brand new.
        let start = Instant::now();
        tracker.observe_drain(0, 50_000, start);
        tracker.observe_drain(1_000, 50_000, start + Duration::from_millis(100));
        let lag = tracker
            .lag_beyond_throttle(now_ns, 20_000)
            .expect("throttled");
        assert_eq!(lag, Duration::from_secs(2));
        assert_eq!(
            tracker.lag_beyond_throttle(now_ns, 5_000),
            None,
            "0.5 s of work"
        );
        // Idle intervals (no backlog when they began) leave the measured rate alone.
        tracker.observe_drain(1_000, 1_000, start + Duration::from_millis(200));
        tracker.observe_drain(1_000, 1_000, start + Duration::from_millis(300));
        assert!(tracker.lag_beyond_throttle(now_ns, 20_000).is_some());
    }

    #[test]
    fn cursor_is_the_first_unfinished_record() {
        let tracker = Arc::new(Tracker::new("t", pos(0), LagLimits::default()));
        let a = tracker.hold(pos(0), pos(1), 0);
        tracker.skip_to(pos(2));
        let c = tracker.hold(pos(2), pos(3), 0);
        assert_eq!(tracker.cursor().0, pos(0));
        drop(c);
        assert_eq!(tracker.cursor().0, pos(0), "finished out of order");
        drop(a);
        assert_eq!(tracker.cursor().0, pos(3));
    }

    #[test]
    fn frozen_tracker_keeps_abandoned_records() {
        let tracker = Arc::new(Tracker::new("t", pos(5), LagLimits::default()));
        let a = tracker.hold(pos(5), pos(6), 0);
        tracker.freeze();
        drop(a);
        assert_eq!(tracker.cursor().0, pos(5));
    }

    #[test]
    fn abandoning_releases_stuck_records_and_skips_unread_ones() {
        let tracker = Arc::new(Tracker::new(
            "t",
            pos(0),
            LagLimits {
                max_lag_bytes: Some(1),
                throttle_lag: None,
            },
        ));
        let stuck = tracker.hold(pos(0), pos(1), 0);
        let _also = tracker.hold(pos(1), pos(2), 0);
        assert_eq!(tracker.abandon_before(pos(4)), 2 + 2);
        assert_eq!(tracker.cursor().0, pos(4));
        assert_eq!(tracker.abandon_before(pos(3)), 0, "counted once");
        drop(stuck);
        // A stale record handed out after the drop neither holds the cursor nor rewinds it.
        let _stale = tracker.hold(pos(2), pos(3), 0);
        assert_eq!(tracker.cursor().0, pos(4));
    }

    #[test]
    fn saved_cursor_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dest");
        assert_eq!(load(&path).unwrap(), None);
        save(&path, pos(7)).unwrap();
        assert_eq!(load(&path).unwrap(), Some(pos(7)));
        fs::write(&path, "garbage").unwrap();
        assert!(load(&path).is_err());
    }
}
