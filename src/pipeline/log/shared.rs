//! What the writer thread, the readers and maintenance share: the segments on disk, the cache
//! of recent records, each destination's tracker and the failure state. Each lives behind its
//! own lock, held only to read or update it, never across I/O on a segment.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use super::status::AppendCounters;
use super::{unix_nanos_of, LogConfig, Position, Tracker, SEGMENT_HEADER};
use crate::pipeline::Payload;

#[derive(Debug)]
pub(super) struct Shared {
    pub(super) config: LogConfig,
    /// `<dir>/log`: the segments and spare files.
    pub(super) log_dir: PathBuf,
    /// `<dir>/cursors`: one file per destination.
    pub(super) cursor_dir: PathBuf,
    pub(super) log_id: uuid::Uuid,
    pub(super) state: Mutex<State>,
    pub(super) cache: Mutex<Cache>,
    pub(super) trackers: Mutex<Vec<Arc<Tracker>>>,
    /// Destinations with a `throttle_lag_ms`, and the signals each takes: checked for every
    /// request, so a read lock and no allocation.
    pub(super) throttling: RwLock<Vec<(Arc<Tracker>, [bool; 3])>>,
    /// Why the writer stopped accepting, after a write or sync failure.
    pub(super) failed: Mutex<Option<String>>,
    /// Read segment files kept for reuse (see `segment::recycle`).
    pub(super) spares: Mutex<Vec<PathBuf>>,
    pub(super) appended: AppendCounters,
}

/// The segments on disk, oldest first; the last one is the active segment the writer
/// appends to.
#[derive(Debug)]
pub(super) struct State {
    pub(super) segments: VecDeque<SegmentMeta>,
    /// Sum of the segments' lengths.
    pub(super) bytes: u64,
}

/// One segment as the log knows it.
#[derive(Debug, Clone)]
pub(super) struct SegmentMeta {
    pub(super) first_seq: u64,
    pub(super) base_offset: u64,
    pub(super) path: PathBuf,
    /// File length, up to the end of the last durable record.
    pub(super) len: u64,
    pub(super) first_received: Option<i64>,
}

impl SegmentMeta {
    /// A new segment starting at `at`, holding only its header.
    pub(super) fn empty(at: Position, path: PathBuf) -> Self {
        SegmentMeta {
            first_seq: at.seq,
            base_offset: at.offset,
            path,
            len: SEGMENT_HEADER,
            first_received: None,
        }
    }

    /// Where the segment's first record is.
    pub(super) fn start(&self) -> Position {
        Position {
            seq: self.first_seq,
            offset: self.base_offset,
        }
    }
}

/// A durable record with its place in the log: from the cache, or read back from a segment.
#[derive(Debug, Clone)]
pub(super) struct DurableRecord {
    pub(super) at: Position,
    /// Where the next record starts.
    pub(super) end: Position,
    pub(super) payload: Arc<Payload>,
}

/// The most recent durable records, up to `log.cache_bytes` of bodies, so destinations
/// that keep up never read the disk.
#[derive(Debug, Default)]
pub(super) struct Cache {
    pub(super) entries: VecDeque<DurableRecord>,
    pub(super) bytes: u64,
}

impl Shared {
    /// Up to `max` cached records from `seq` on; empty if `seq` is no longer cached.
    pub(super) fn cached(&self, seq: u64, max: usize) -> Vec<DurableRecord> {
        let cache = self.cache.lock().expect("log cache lock");
        let Some(first) = cache.entries.front() else {
            return Vec::new();
        };
        if seq < first.at.seq {
            return Vec::new();
        }
        let start = (seq - first.at.seq) as usize;
        cache
            .entries
            .iter()
            .skip(start)
            .take(max)
            .cloned()
            .collect()
    }

    /// The start of the oldest segment and the received time of its first record.
    pub(super) fn oldest(&self) -> Option<(Position, Option<i64>)> {
        let state = self.state.lock().expect("log state lock");
        state
            .segments
            .front()
            .map(|s| (s.start(), s.first_received))
    }

    /// The first segment starting at or after byte `offset`, if any.
    pub(super) fn segment_from(&self, offset: u64) -> Option<Position> {
        let state = self.state.lock().expect("log state lock");
        state
            .segments
            .iter()
            .find(|s| s.base_offset >= offset)
            .map(SegmentMeta::start)
    }

    /// The segment holding record `seq`, and the start of the one after it, if any.
    pub(super) fn segment_for(&self, seq: u64) -> Option<(SegmentMeta, Option<Position>)> {
        let state = self.state.lock().expect("log state lock");
        let index = state.segments.iter().rposition(|s| s.first_seq <= seq)?;
        let next = state.segments.get(index + 1).map(SegmentMeta::start);
        Some((state.segments[index].clone(), next))
    }

    /// When record `seq` was received, or an upper bound of its age.
    pub(super) fn received_at(&self, seq: u64) -> Option<i64> {
        if let Some(entry) = self.cached(seq, 1).first() {
            return Some(unix_nanos_of(entry.payload.received));
        }
        // Not in memory: the start of its segment is an upper bound of its age.
        self.segment_for(seq).and_then(|(s, _)| s.first_received)
    }
}
