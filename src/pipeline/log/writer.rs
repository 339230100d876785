//! Appending: the receivers' [`Appender`] and the writer thread behind it, which group-commits.
//! The thread takes every append waiting, checks the disk floor and the size limit, starts a
//! new segment when the active one is full, writes the group in one `write`, syncs once, then
//! publishes the new head, fills the cache and answers every waiter. A failed write or sync
//! puts the log in its failure state: every later append is refused until a restart.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, watch};

use super::segment::{self, SegmentRecord, SEGMENT_HEADER};
use super::shared::{DurableRecord, SegmentMeta, Shared};
use super::{unix_nanos_of, Position, WhenLogFull};
use crate::pipeline::Payload;
use crate::telemetry::{self, reason, RateLimitedWarning};
use crate::Signal;

/// Why an append was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AppendError {
    #[error("the durable log is full (log.max_bytes = {0}); destinations are behind, retry later")]
    Full(u64),
    #[error("free disk space is below log.min_free_bytes ({0}); retry later")]
    DiskFloor(u64),
    #[error("the durable log cannot be written: {0}")]
    Io(String),
    #[error("the gateway is shutting down")]
    Closed,
}

/// A destination lags past its `queue.throttle_lag_ms`: new requests it takes are throttled.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("destination `{destination}` is about {} ms behind, more than its queue.throttle_lag_ms ({}); retry later", .lag.as_millis(), .bound.as_millis())]
pub struct Lagging {
    pub destination: Arc<str>,
    pub lag: Duration,
    pub bound: Duration,
}

impl AppendError {
    /// The `reason` label of `otelgate_log_refused_requests_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            AppendError::Full(_) => reason::LOG_FULL,
            AppendError::DiskFloor(_) => reason::DISK_FLOOR,
            AppendError::Io(_) | AppendError::Closed => reason::LOG_IO,
        }
    }
}

/// One append on its way to the writer thread, with where to send the answer.
struct AppendRequest {
    payload: Arc<Payload>,
    reply: oneshot::Sender<Result<Position, AppendError>>,
}

impl std::fmt::Debug for AppendRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendRequest").finish_non_exhaustive()
    }
}

/// The receivers' handle: appends and waits until the append is durable.
#[derive(Debug, Clone)]
pub struct Appender {
    tx: mpsc::Sender<AppendRequest>,
    shared: Arc<Shared>,
    head: watch::Receiver<Position>,
}

impl Appender {
    /// Refuses a request of `signal` while a destination that takes it lags more than its
    /// `queue.throttle_lag_ms` (see [`Tracker::lag_beyond_throttle`]). Cheap enough to call
    /// before a request is validated, so refused requests cost as little as possible.
    pub fn check_lag(&self, signal: Signal) -> Result<(), Lagging> {
        let throttling = self.shared.throttling.read().expect("throttling lock");
        if throttling.is_empty() {
            return Ok(());
        }
        let now = super::unix_nanos_now();
        let head = self.head.borrow().offset;
        for (tracker, signals) in throttling.iter() {
            if !signals[signal.index()] {
                continue;
            }
            if let Some(lag) = tracker.lag_beyond_throttle(now, head) {
                metrics::counter!(telemetry::LOG_REFUSED_REQUESTS, "reason" => reason::THROTTLE_LAG)
                    .increment(1);
                return Err(Lagging {
                    destination: tracker.name(),
                    lag,
                    bound: tracker.throttle_lag().unwrap_or_default(),
                });
            }
        }
        Ok(())
    }

    /// Appends `payload`; returns once it is on disk.
    pub async fn append(&self, payload: Arc<Payload>) -> Result<Position, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(AppendRequest { payload, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.unwrap_or(Err(AppendError::Closed))
    }
}

/// Appends waiting for the writer thread, at most; receivers wait for room beyond it.
const MAX_WAITING_APPENDS: usize = 4096;

/// Most request bytes written in one group.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// Starts the writer thread appending at `head` to `active`, the last segment, positioned
/// at its end. Returns the receivers' handle, the head as the writer publishes it, and the
/// thread, which stops once every [`Appender`] is dropped and its last group is answered.
pub(super) fn spawn(
    shared: Arc<Shared>,
    active: File,
    head: Position,
) -> io::Result<(Appender, watch::Receiver<Position>, JoinHandle<()>)> {
    let shared_for_appender = shared.clone();
    let (head_tx, head_rx) = watch::channel(head);
    let (tx, rx) = mpsc::channel(MAX_WAITING_APPENDS);
    let writer = Writer {
        shared,
        file: active,
        next: head,
        rx,
        head: head_tx,
        free: FreeSpace::default(),
        failed: None,
        segment_errors: RateLimitedWarning::new(
            "Cannot start a new log segment; refusing requests until it can.",
        ),
    };
    let thread = std::thread::Builder::new()
        .name("otelgate-log".into())
        .spawn(move || writer.run())?;
    let appender = Appender {
        tx,
        shared: shared_for_appender,
        head: head_rx.clone(),
    };
    Ok((appender, head_rx, thread))
}

/// Free space on the log's file system, measured at most every 100 ms.
#[derive(Default)]
struct FreeSpace {
    measured: Option<(Instant, u64)>,
    written_since: u64,
}

impl FreeSpace {
    fn available(&mut self, dir: &Path) -> io::Result<u64> {
        let stale = self
            .measured
            .is_none_or(|(at, _)| at.elapsed() > Duration::from_millis(100));
        if stale {
            let stat = rustix::fs::statvfs(dir)?;
            self.measured = Some((Instant::now(), stat.f_bavail.saturating_mul(stat.f_frsize)));
            self.written_since = 0;
        }
        Ok(self
            .measured
            .map_or(0, |(_, free)| free.saturating_sub(self.written_since)))
    }
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    /// The active segment, positioned at its end.
    file: File,
    /// Where the next record goes (everything before it is written and synced).
    next: Position,
    rx: mpsc::Receiver<AppendRequest>,
    head: watch::Sender<Position>,
    free: FreeSpace,
    /// Set after a write or sync failed: the log refuses everything until restarted.
    failed: Option<String>,
    /// Failures to start a segment, which are not fatal, logged at most every 10 s.
    segment_errors: RateLimitedWarning,
}

/// A record encoded in the group's buffer but not yet synced, with who waits for it.
struct UnsyncedRecord {
    at: Position,
    end: Position,
    payload: Arc<Payload>,
    reply: oneshot::Sender<Result<Position, AppendError>>,
}

impl Writer {
    fn run(mut self) {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut unsynced: Vec<UnsyncedRecord> = Vec::new();
        while let Some(first) = self.rx.blocking_recv() {
            let group = self.take_group(first);
            let group_size = group.len();
            for request in group {
                self.buffer(request, &mut buf, &mut unsynced);
            }
            metrics::histogram!(telemetry::LOG_GROUP_REQUESTS).record(group_size as f64);
            self.flush(&mut buf, &mut unsynced);
        }
    }

    /// `first` and the appends waiting behind it, up to [`MAX_GROUP_BYTES`] of bodies; with
    /// `log.group_wait_us`, also those that arrive within that time of `first`.
    fn take_group(&mut self, first: AppendRequest) -> Vec<AppendRequest> {
        let started = Instant::now();
        let wait = Duration::from_micros(self.shared.config.group_wait_us);
        let mut group = vec![first];
        let mut bytes = group[0].payload.body.len();
        // Takes what waits; says whether more could still join (room left, appenders left).
        let mut drain = |group: &mut Vec<AppendRequest>| {
            while bytes < MAX_GROUP_BYTES {
                match self.rx.try_recv() {
                    Ok(next) => {
                        bytes += next.payload.body.len();
                        group.push(next);
                    }
                    Err(TryRecvError::Empty) => return true,
                    Err(TryRecvError::Disconnected) => return false,
                }
            }
            false
        };
        if drain(&mut group) && !wait.is_zero() {
            std::thread::sleep(wait.saturating_sub(started.elapsed()));
            drain(&mut group);
        }
        group
    }

    /// Encodes `request` into the group's buffer, or answers it with why it is refused.
    fn buffer(
        &mut self,
        request: AppendRequest,
        buf: &mut Vec<u8>,
        unsynced: &mut Vec<UnsyncedRecord>,
    ) {
        if let Some(why) = &self.failed {
            metrics::counter!(telemetry::LOG_REFUSED_REQUESTS, "reason" => reason::LOG_IO)
                .increment(1);
            let _ = request.reply.send(Err(AppendError::Io(why.clone())));
            return;
        }
        let len = SegmentRecord::encoded_len(request.payload.body.len());
        if let Err(error) = self.admit(len, buf, unsynced) {
            metrics::counter!(telemetry::LOG_REFUSED_REQUESTS, "reason" => error.reason())
                .increment(1);
            let _ = request.reply.send(Err(error));
            return;
        }
        let at = self.next;
        let payload = request.payload;
        segment::encode(
            buf,
            at.seq,
            unix_nanos_of(payload.received),
            payload.items,
            payload.signal,
            &payload.body,
        );
        self.next = Position {
            seq: at.seq + 1,
            offset: at.offset + len,
        };
        unsynced.push(UnsyncedRecord {
            at,
            end: self.next,
            payload,
            reply: request.reply,
        });
    }

    /// Makes room for a record of `len` bytes: checks the disk floor and the size limit, and
    /// starts a new segment when the active one is full.
    fn admit(
        &mut self,
        len: u64,
        buf: &mut Vec<u8>,
        unsynced: &mut Vec<UnsyncedRecord>,
    ) -> Result<(), AppendError> {
        let config = &self.shared.config;
        let free = self
            .free
            .available(&self.shared.log_dir)
            .map_err(|e| AppendError::Io(format!("cannot measure free disk space: {e}")))?;
        if free < config.min_free_bytes.saturating_add(len) {
            return Err(AppendError::DiskFloor(config.min_free_bytes));
        }
        loop {
            let bytes = self.shared.state.lock().expect("log state lock").bytes;
            if bytes + buf.len() as u64 + len <= config.max_bytes {
                break;
            }
            if config.when_full == WhenLogFull::Refuse || !self.drop_oldest() {
                return Err(AppendError::Full(config.max_bytes));
            }
        }
        let active_len = self
            .shared
            .state
            .lock()
            .expect("log state lock")
            .segments
            .back()
            .map_or(SEGMENT_HEADER, |s| s.len);
        let used = active_len + buf.len() as u64;
        if used > SEGMENT_HEADER && used + len > config.segment_bytes {
            self.roll_segment(buf, unsynced)?;
        }
        self.free.written_since += len;
        Ok(())
    }

    /// Writes and syncs what is buffered for the active segment, then starts the next one
    /// at the head, in a spare file when there is one.
    fn roll_segment(
        &mut self,
        buf: &mut Vec<u8>,
        unsynced: &mut Vec<UnsyncedRecord>,
    ) -> Result<(), AppendError> {
        self.flush(buf, unsynced);
        if let Some(why) = &self.failed {
            return Err(AppendError::Io(why.clone()));
        }
        let log_dir = &self.shared.log_dir;
        let spare = self.shared.spares.lock().expect("spares lock").pop();
        let started = match spare {
            Some(spare) => segment::recycle(log_dir, &spare, self.next)
                .or_else(|_| segment::create(log_dir, self.next)),
            None => segment::create(log_dir, self.next),
        };
        match started {
            Ok((file, path)) => {
                self.file = file;
                let meta = SegmentMeta::empty(self.next, path);
                let mut state = self.shared.state.lock().expect("log state lock");
                state.bytes += meta.len;
                state.segments.push_back(meta);
                Ok(())
            }
            // Nothing was written: refuse this request and try again with the next one
            // (out of file descriptors or disk space is usually temporary).
            Err(error) => {
                self.segment_errors.warn(&error);
                Err(AppendError::Io(format!(
                    "cannot start a new log segment: {error}"
                )))
            }
        }
    }

    /// Deletes the oldest segment under `when_full = "drop_oldest"`; false if only the
    /// active one is left.
    fn drop_oldest(&self) -> bool {
        let segment = {
            let mut state = self.shared.state.lock().expect("log state lock");
            if state.segments.len() < 2 {
                return false;
            }
            let segment = state.segments.pop_front().expect("len >= 2");
            state.bytes -= segment.len;
            segment
        };
        tracing::warn!(path = %segment.path.display(), "The log is full; deleting its oldest segment (log.when_full = \"drop_oldest\").");
        if let Err(error) = fs::remove_file(&segment.path) {
            tracing::warn!(path = %segment.path.display(), %error, "Cannot delete a log segment.");
        }
        true
    }

    /// Enters the failure state: this and every later append is refused until a restart.
    fn fail(&mut self, why: String) -> AppendError {
        tracing::error!(error = %why, "The durable log failed; refusing new requests until restart.");
        self.failed = Some(why.clone());
        *self.shared.failed.lock().expect("failed lock") = Some(why.clone());
        AppendError::Io(why)
    }

    /// Writes and syncs what is buffered, then publishes it and answers its clients.
    fn flush(&mut self, buf: &mut Vec<u8>, unsynced: &mut Vec<UnsyncedRecord>) {
        if unsynced.is_empty() {
            return;
        }
        let started = Instant::now();
        let result = self
            .file
            .write_all(buf)
            .and_then(|()| self.file.sync_data());
        metrics::histogram!(telemetry::LOG_SYNC_SECONDS).record(started.elapsed().as_secs_f64());
        let written = buf.len() as u64;
        buf.clear();
        if let Err(error) = result {
            let error = self.fail(format!("write or sync failed: {error}"));
            metrics::counter!(telemetry::LOG_REFUSED_REQUESTS, "reason" => reason::LOG_IO)
                .increment(unsynced.len() as u64);
            for record in unsynced.drain(..) {
                let _ = record.reply.send(Err(error.clone()));
            }
            return;
        }
        self.extend_active_segment(written, unsynced);
        self.cache(unsynced);
        let records = unsynced.len() as u64;
        self.shared.appended.add_group(records, written);
        metrics::counter!(telemetry::LOG_APPENDED_RECORDS).increment(records);
        metrics::counter!(telemetry::LOG_APPENDED_BYTES).increment(written);
        self.head.send_replace(self.next);
        for record in unsynced.drain(..) {
            let _ = record.reply.send(Ok(record.at));
        }
    }

    /// Counts `written` synced bytes in the active segment.
    fn extend_active_segment(&self, written: u64, unsynced: &[UnsyncedRecord]) {
        let mut state = self.shared.state.lock().expect("log state lock");
        state.bytes += written;
        let active = state.segments.back_mut().expect("an active segment");
        active.len += written;
        if active.first_received.is_none() {
            active.first_received = unsynced.first().map(|r| unix_nanos_of(r.payload.received));
        }
    }

    /// Puts the synced records in the cache, evicting the oldest past `log.cache_bytes`.
    fn cache(&self, synced: &[UnsyncedRecord]) {
        let mut cache = self.shared.cache.lock().expect("log cache lock");
        for record in synced {
            cache.bytes += record.payload.body.len() as u64;
            cache.entries.push_back(DurableRecord {
                at: record.at,
                end: record.end,
                payload: Arc::new(record.payload.durable_copy()),
            });
        }
        while cache.bytes > self.shared.config.cache_bytes {
            let Some(old) = cache.entries.pop_front() else {
                break;
            };
            cache.bytes -= old.payload.body.len() as u64;
        }
    }
}
