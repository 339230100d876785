//! A destination's reader: follows the log from the destination's cursor and feeds its queue.
//! Recent records come from the in-memory cache; a reader that fell behind reads segments
//! from disk (on the blocking pool), so a slow destination costs disk reads, not memory.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;

use super::maintenance::drop_records_before;
use super::segment::{self, ReadError, SegmentRecord, SEGMENT_HEADER};
use super::shared::{DurableRecord, Shared};
use super::{instant_of, unix_nanos_of, Position, Tracker};
use crate::pipeline::{Delivery, Payload, QueueSender};
use crate::telemetry::{self, reason};
use crate::Signal;

/// Records read from disk in one go, at most.
const DISK_BATCH_RECORDS: usize = 512;
const DISK_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// An open segment being read sequentially.
struct DiskCursor {
    next_segment: Option<Position>,
    reader: BufReader<File>,
    at: Position,
}

/// One destination's reader of the log (see the module docs), made by
/// [`Log::reader`](super::Log::reader).
pub struct LogReader {
    shared: Arc<Shared>,
    tracker: Arc<Tracker>,
    signals: [bool; 3],
    queue: QueueSender,
    head: watch::Receiver<Position>,
    /// Records before this sequence number were in the log before it was opened: replayed.
    replay_until: u64,
    disk: Option<DiskCursor>,
    /// Bytes of requests this destination may hold (queued, batched or in flight).
    window: Arc<Semaphore>,
    window_bytes: u32,
    /// `otelgate_log_replayed_records_total` for this destination, registered once.
    replayed: metrics::Counter,
}

impl LogReader {
    pub(super) fn new(
        shared: Arc<Shared>,
        tracker: Arc<Tracker>,
        signals: &[Signal],
        queue: QueueSender,
        head: watch::Receiver<Position>,
        replay_until: u64,
        window_bytes: u64,
    ) -> Self {
        let window_bytes = window_bytes.clamp(1, Semaphore::MAX_PERMITS as u64 / 2) as u32;
        LogReader {
            shared,
            signals: Signal::mask(signals),
            queue,
            head,
            replay_until,
            disk: None,
            window: Arc::new(Semaphore::new(window_bytes as usize)),
            window_bytes,
            replayed: metrics::counter!(telemetry::LOG_REPLAYED_RECORDS, "destination" => tracker.name().to_string()),
            tracker,
        }
    }

    /// This destination's progress through the log.
    pub fn tracker(&self) -> Arc<Tracker> {
        self.tracker.clone()
    }

    /// Where this reader starts (until it runs).
    pub fn start(&self) -> Position {
        self.tracker.next()
    }

    fn name(&self) -> String {
        self.tracker.name().to_string()
    }

    /// Hands records to the queue until the log is closed and read to its end, or `stop`
    /// fires. Dropping the queue sender on return tells the destination to drain and stop.
    pub async fn run(mut self, stop: CancellationToken) {
        loop {
            let next = self.tracker.next();
            let head = *self.head.borrow_and_update();
            if next.seq >= head.seq {
                tokio::select! {
                    changed = self.head.changed() => {
                        if changed.is_err() && self.tracker.next().seq >= self.head.borrow().seq {
                            break;
                        }
                    }
                    () = stop.cancelled() => break,
                }
                continue;
            }
            // Segments deleted under `when_full = "drop_oldest"`: move on to what is left.
            if let Some((oldest, _)) = self.shared.oldest().filter(|(o, _)| next.seq < o.seq) {
                drop_records_before(&self.tracker, oldest, reason::LOG_FULL);
                self.disk = None;
                continue;
            }
            let cached = self.shared.cached(next.seq, DISK_BATCH_RECORDS);
            let records = if cached.is_empty() {
                match self.read_disk(next, head).await {
                    Some(records) => records,
                    None => continue,
                }
            } else {
                self.disk = None;
                cached
            };
            for record in records {
                if self.hand_out(record, &stop).await.is_break() {
                    return;
                }
            }
        }
    }

    /// Hands `record` to the queue once the destination's window has room for it, or skips
    /// it if the destination does not take its signal. Breaks when `stop` fires or the
    /// queue is closed.
    async fn hand_out(
        &mut self,
        record: DurableRecord,
        stop: &CancellationToken,
    ) -> ControlFlow<()> {
        if record.at.seq < self.replay_until {
            self.replayed.increment(1);
        }
        if !self.signals[record.payload.signal.index()] {
            self.tracker.skip_to(record.end);
            return ControlFlow::Continue(());
        }
        // A request larger than the whole window takes all of it.
        let share = (record.payload.body.len() as u64).clamp(1, self.window_bytes as u64);
        let permit = tokio::select! {
            permit = self.window.clone().acquire_many_owned(share as u32) => permit.expect("never closed"),
            () = stop.cancelled() => return ControlFlow::Break(()),
        };
        let done = self.tracker.hold(
            record.at,
            record.end,
            unix_nanos_of(record.payload.received),
        );
        let delivery = Delivery::logged(record.payload, record.at, done, permit);
        tokio::select! {
            sent = self.queue.send(delivery) => if sent.is_err() { return ControlFlow::Break(()) },
            () = stop.cancelled() => return ControlFlow::Break(()),
        }
        ControlFlow::Continue(())
    }

    fn drop_until(&mut self, next: Position, to: Position, reason: &'static str) {
        let records = to.seq - next.seq;
        metrics::counter!(telemetry::LOG_DROPPED_RECORDS, "destination" => self.name(), "reason" => reason)
            .increment(records);
        tracing::warn!(destination = %self.tracker.name(), records, reason, "Dropping log records this destination had not read.");
        self.tracker.skip_to(to);
        self.disk = None;
    }

    /// Reads the next records from disk on the blocking pool.
    async fn read_disk(&mut self, next: Position, head: Position) -> Option<Vec<DurableRecord>> {
        let cursor = match self.disk.take() {
            Some(cursor) if cursor.at == next => cursor,
            _ => match self.open_at(next) {
                Ok(cursor) => cursor,
                Err(error) => {
                    tracing::error!(destination = %self.tracker.name(), %error, "Cannot open a log segment; retrying.");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    return None;
                }
            },
        };
        let joined = tokio::task::spawn_blocking(move || read_some(cursor, head)).await;
        let (cursor, outcome) = match joined {
            Ok(result) => result,
            Err(_) => return None,
        };
        match outcome {
            Ok(records) => {
                self.disk = cursor;
                Some(records)
            }
            Err((_, READ_ERROR)) => {
                tracing::error!(destination = %self.tracker.name(), "Cannot read the log; retrying.");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                None
            }
            Err((at, why)) => {
                match self.shared.segment_for(at.seq).and_then(|(_, n)| n) {
                    Some(next_segment) => {
                        tracing::error!(destination = %self.tracker.name(), seq = at.seq, reason = why, "Corrupt log record; skipping the rest of its segment.");
                        self.drop_until(at, next_segment, reason::CORRUPT);
                    }
                    None => {
                        tracing::error!(destination = %self.tracker.name(), seq = at.seq, reason = why, "Corrupt record at the end of the log; skipping to the head.");
                        self.drop_until(at, head, reason::CORRUPT);
                    }
                }
                None
            }
        }
    }

    fn open_at(&self, at: Position) -> std::io::Result<DiskCursor> {
        let (segment, next_segment) = self.shared.segment_for(at.seq).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no segment holds the record")
        })?;
        let within = at.offset.checked_sub(segment.base_offset).ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "record at offset {} lies before its segment's base offset {}",
                    at.offset, segment.base_offset
                ),
            )
        })?;
        let mut reader = BufReader::with_capacity(1 << 20, File::open(&segment.path)?);
        reader.seek(SeekFrom::Start(SEGMENT_HEADER + within))?;
        Ok(DiskCursor {
            next_segment,
            reader,
            at,
        })
    }
}

const READ_ERROR: &str = "read error";

/// Records read, or where reading stopped at a damaged or missing record and why.
type ReadOutcome = Result<Vec<DurableRecord>, (Position, &'static str)>;

/// Reads up to a batch of records from `cursor`, stopping at the head and at the end of the
/// segment. Returns the cursor to continue with (none at a segment's end).
fn read_some(mut cursor: DiskCursor, head: Position) -> (Option<DiskCursor>, ReadOutcome) {
    let mut records = Vec::new();
    let mut bytes = 0;
    let segment_end = match cursor.next_segment {
        Some(next) => next.offset,
        None => head.offset,
    };
    while records.len() < DISK_BATCH_RECORDS && bytes < DISK_BATCH_BYTES {
        let at = cursor.at;
        if at.offset >= segment_end && cursor.next_segment.is_some() {
            // This segment is read; the next call opens the following one.
            return (None, Ok(records));
        }
        if at.offset >= head.offset {
            break;
        }
        match segment::read_record(&mut cursor.reader, at.seq) {
            Ok(Some(record)) => {
                let len = SegmentRecord::encoded_len(record.body.len());
                bytes += record.body.len();
                cursor.at = Position {
                    seq: at.seq + 1,
                    offset: at.offset + len,
                };
                records.push(DurableRecord {
                    at,
                    end: cursor.at,
                    payload: Arc::new(Payload::replayed(
                        record.signal,
                        record.body,
                        record.items,
                        instant_of(record.received_unix_nanos),
                    )),
                });
            }
            Ok(None) => {
                if records.is_empty() {
                    return (None, Err((at, "segment ends early")));
                }
                break;
            }
            Err(ReadError::Corrupt(why)) => {
                if records.is_empty() {
                    return (None, Err((at, why)));
                }
                break;
            }
            Err(ReadError::Io(_)) => {
                if records.is_empty() {
                    return (None, Err((at, READ_ERROR)));
                }
                break;
            }
        }
    }
    (Some(cursor), Ok(records))
}
