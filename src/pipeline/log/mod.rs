//! The durable log: every accepted request is appended once, as received, to a segmented file
//! log in the data directory, and acknowledged only after the append is on disk. Appends are
//! group-committed: a writer thread takes every request waiting, writes them in one `write`,
//! syncs once, and answers them all. Each destination reads the log through its own
//! [`Reader`] and cursor, so a slow or dead destination only grows its own lag.
//!
//! Layout of the data directory:
//!
//! ```text
//! LOCK                 held (flock) by the running gateway
//! log_id               a UUID naming this log (the TimescaleDB ledger refers to it)
//! log/<seq>.seg        segments, named by their first sequence number (see `segment`)
//! cursors/<name>       per destination: "<seq> <offset>", everything before is done
//! ```
//!
//! Recovery at start-up checks every record of the last segment; a torn or corrupt tail is
//! cut off (counted in `otelgate_log_truncated_bytes_total` and logged). Records of older
//! segments are checked when read; a corrupt one makes its reader skip to the next segment.
//! Segments are deleted when every cursor has passed them.

mod cursor;
mod reader;
pub mod segment;
mod writer;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

pub use cursor::{Done, Tracker};
pub use reader::Reader;

use super::{Payload, QueueConfig, QueueSender};
use crate::config::ConfigError;
use crate::telemetry::{self, reason};
use crate::Signal;
use segment::SEGMENT_HEADER;

/// A place in the log: the sequence number of a record and its log-wide byte offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub seq: u64,
    pub offset: u64,
}

/// What the log does when it reaches `max_bytes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenLogFull {
    /// Refuse new requests with the throttling answer (RESOURCE_EXHAUSTED with RetryInfo,
    /// HTTP 429 with Retry-After) until destinations catch up. Nothing is lost.
    #[default]
    Refuse,
    /// Delete the oldest segment, even if some destination has not read it (counted per
    /// destination in `otelgate_log_dropped_records_total{reason="log_full"}`).
    DropOldest,
}

fn default_true() -> bool {
    true
}
fn default_dir() -> PathBuf {
    PathBuf::from("otelgate-data")
}
const fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
const fn default_max_bytes() -> u64 {
    4 * 1024 * 1024 * 1024
}
const fn default_min_free_bytes() -> u64 {
    512 * 1024 * 1024
}
const fn default_cache_bytes() -> u64 {
    64 * 1024 * 1024
}
const fn default_cursor_interval_ms() -> u64 {
    200
}

/// The `[log]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// On (default): requests are acknowledged after they are on disk and survive a crash.
    /// Off: memory-only queues, faster, but a crash or kill loses every request not yet
    /// delivered.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Data directory (created if missing). Only one gateway may use it at a time.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// A segment is closed and a new one started past this size.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Most bytes the log may hold on disk; see `when_full`.
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// `refuse` (default) or `drop_oldest`.
    #[serde(default)]
    pub when_full: WhenLogFull,
    /// Below this much free space on the log's file system, new requests are refused with
    /// the throttling answer instead of filling the disk.
    #[serde(default = "default_min_free_bytes")]
    pub min_free_bytes: u64,
    /// Recent records kept in memory so destinations that keep up never read the disk.
    #[serde(default = "default_cache_bytes")]
    pub cache_bytes: u64,
    /// How often cursors are saved and fully read segments deleted. After a crash, at most
    /// this much already-delivered data is sent again to OTLP backends (the TimescaleDB sink
    /// skips it by its ledger).
    #[serde(default = "default_cursor_interval_ms")]
    pub cursor_interval_ms: u64,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            enabled: true,
            dir: default_dir(),
            segment_bytes: default_segment_bytes(),
            max_bytes: default_max_bytes(),
            when_full: WhenLogFull::default(),
            min_free_bytes: default_min_free_bytes(),
            cache_bytes: default_cache_bytes(),
            cursor_interval_ms: default_cursor_interval_ms(),
        }
    }
}

impl LogConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.dir.as_os_str().is_empty() {
            return Err(ConfigError::invalid("log.dir", "must not be empty"));
        }
        if self.segment_bytes < 4096 {
            return Err(ConfigError::invalid(
                "log.segment_bytes",
                "must be at least 4096",
            ));
        }
        if self.max_bytes < 2 * self.segment_bytes {
            return Err(ConfigError::invalid(
                "log.max_bytes",
                format!(
                    "must be at least twice log.segment_bytes ({})",
                    self.segment_bytes
                ),
            ));
        }
        if self.cursor_interval_ms == 0 {
            return Err(ConfigError::invalid(
                "log.cursor_interval_ms",
                "must be greater than 0",
            ));
        }
        Ok(())
    }

    /// Checks a destination's `max_lag_bytes` against the segment size: lag is dropped a
    /// whole segment at a time.
    pub(crate) fn validate_lag(&self, key: &str, queue: &QueueConfig) -> Result<(), ConfigError> {
        match queue.max_lag_bytes {
            Some(limit) if self.enabled && limit < 2 * self.segment_bytes => {
                Err(ConfigError::invalid(
                    key,
                    format!(
                        "must be at least twice log.segment_bytes ({})",
                        self.segment_bytes
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

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

struct Append {
    payload: Arc<Payload>,
    reply: oneshot::Sender<Result<Position, AppendError>>,
}

/// The receivers' handle: appends and waits until the append is durable.
#[derive(Debug, Clone)]
pub struct Appender {
    tx: mpsc::Sender<Append>,
}

impl std::fmt::Debug for Append {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Append").finish_non_exhaustive()
    }
}

impl Appender {
    /// Appends `payload`; returns once it is on disk.
    pub async fn append(&self, payload: Arc<Payload>) -> Result<Position, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send(Append { payload, reply })
            .await
            .map_err(|_| AppendError::Closed)?;
        answer.await.unwrap_or(Err(AppendError::Closed))
    }
}

/// One segment as the log knows it.
#[derive(Debug, Clone)]
struct SegmentMeta {
    first_seq: u64,
    base_offset: u64,
    path: PathBuf,
    /// File length, up to the end of the last durable record.
    len: u64,
    first_received: Option<i64>,
}

impl SegmentMeta {
    /// A new segment starting at `at`, holding only its header.
    fn empty(at: Position, path: PathBuf) -> Self {
        SegmentMeta {
            first_seq: at.seq,
            base_offset: at.offset,
            path,
            len: SEGMENT_HEADER,
            first_received: None,
        }
    }
}

/// What readers, the writer and the maintenance task share.
#[derive(Debug)]
struct State {
    segments: VecDeque<SegmentMeta>,
    /// Sum of the segments' lengths.
    bytes: u64,
}

/// A durable record kept in memory for readers that keep up.
#[derive(Debug, Clone)]
struct Cached {
    at: Position,
    end: Position,
    payload: Arc<Payload>,
}

#[derive(Debug, Default)]
struct Cache {
    entries: VecDeque<Cached>,
    bytes: u64,
}

#[derive(Debug)]
struct Shared {
    config: LogConfig,
    log_dir: PathBuf,
    cursor_dir: PathBuf,
    log_id: uuid::Uuid,
    state: Mutex<State>,
    cache: Mutex<Cache>,
    trackers: Mutex<Vec<Arc<Tracker>>>,
    /// Why the writer stopped accepting, after a write or sync failure.
    failed: Mutex<Option<String>>,
    /// Read segment files kept for reuse (see `recycle_segment`).
    spares: Mutex<Vec<PathBuf>>,
    /// Appended since the log was opened: records, bytes, group syncs.
    appended: [std::sync::atomic::AtomicU64; 3],
}

/// What a log has appended since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    pub records: u64,
    pub bytes: u64,
    /// Group commits (one `write` and one `fdatasync` each).
    pub syncs: u64,
}

impl Shared {
    fn cached(&self, seq: u64, max: usize) -> Vec<Cached> {
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

    fn oldest(&self) -> Option<(Position, Option<i64>)> {
        let state = self.state.lock().expect("log state lock");
        state.segments.front().map(|s| {
            (
                Position {
                    seq: s.first_seq,
                    offset: s.base_offset,
                },
                s.first_received,
            )
        })
    }

    /// The first segment starting at or after byte `offset`, if any.
    fn segment_from(&self, offset: u64) -> Option<Position> {
        let state = self.state.lock().expect("log state lock");
        state
            .segments
            .iter()
            .find(|s| s.base_offset >= offset)
            .map(|s| Position {
                seq: s.first_seq,
                offset: s.base_offset,
            })
    }

    fn segment_for(&self, seq: u64) -> Option<(SegmentMeta, Option<Position>)> {
        let state = self.state.lock().expect("log state lock");
        let index = state.segments.iter().rposition(|s| s.first_seq <= seq)?;
        let next = state.segments.get(index + 1).map(|s| Position {
            seq: s.first_seq,
            offset: s.base_offset,
        });
        Some((state.segments[index].clone(), next))
    }

    fn received_at(&self, seq: u64) -> Option<i64> {
        if let Some(entry) = self.cached(seq, 1).first() {
            return Some(unix_nanos_of(entry.payload.received));
        }
        // Not in memory: the start of its segment is an upper bound of its age.
        self.segment_for(seq).and_then(|(s, _)| s.first_received)
    }
}

/// The durable log of a running gateway.
pub struct Log {
    shared: Arc<Shared>,
    appender: Mutex<Option<Appender>>,
    head: watch::Receiver<Position>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The head when the log was opened: records before it are replayed.
    opened_at: Position,
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
    /// Opens (or creates) the log in `config.dir`, recovering from a crash: checks the tail,
    /// cuts off what is torn or corrupt, and finds the head.
    pub fn open(config: &LogConfig) -> anyhow::Result<Log> {
        let dir = &config.dir;
        let log_dir = dir.join("log");
        let cursor_dir = dir.join("cursors");
        for d in [dir, &log_dir, &cursor_dir] {
            fs::create_dir_all(d).with_context(|| {
                format!("cannot create the log directory {} (log.dir)", d.display())
            })?;
        }
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .with_context(|| format!("cannot open {}", dir.join("LOCK").display()))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "the log directory {} is in use by another otelgate (log.dir)",
                dir.display()
            )
        })?;
        let log_id = read_or_create_id(&dir.join("log_id"))?;
        // Counters exist from the start, so `increase()` sees their first step.
        metrics::counter!(telemetry::LOG_TRUNCATED_BYTES).increment(0);
        for reason in [reason::LOG_FULL, reason::DISK_FLOOR, reason::LOG_IO] {
            metrics::counter!(telemetry::LOG_REFUSED_REQUESTS, "reason" => reason).increment(0);
        }

        let mut names: Vec<(u64, PathBuf)> = fs::read_dir(&log_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| segment::parse_file_name(&p).map(|seq| (seq, p)))
            .collect();
        names.sort();
        let mut segments = VecDeque::new();
        let mut tail_records = 0;
        let count = names.len();
        for (index, (first_seq, path)) in names.into_iter().enumerate() {
            let last = index + 1 == count;
            let mut file = OpenOptions::new().read(true).write(true).open(&path)?;
            let len = file.metadata()?.len();
            let Some(base_offset) = segment::read_header(&mut file)? else {
                // A segment whose header never reached the disk holds nothing.
                tracing::warn!(path = %path.display(), bytes = len, "Removing a log segment without a valid header.");
                metrics::counter!(telemetry::LOG_TRUNCATED_BYTES).increment(len);
                fs::remove_file(&path)?;
                continue;
            };
            let (len, first_received) = if last {
                let scan = segment::scan(&path, first_seq)?;
                if let Some(why) = scan.corrupt {
                    let cut = len - scan.valid_len;
                    tracing::warn!(path = %path.display(), reason = why, intact_records = scan.records, truncated_bytes = cut, "The log's tail is torn or corrupt; truncating it.");
                    metrics::counter!(telemetry::LOG_TRUNCATED_BYTES).increment(cut);
                }
                if len > scan.valid_len {
                    // Also the unwritten rest of a recycled file: nothing after the last
                    // intact record may be mistaken for data by a later scan.
                    file.set_len(scan.valid_len)?;
                    file.sync_all()?;
                }
                tail_records = scan.records;
                (scan.valid_len, scan.first_received)
            } else {
                let first = segment::scan_first(&path, first_seq)?;
                (len, first)
            };
            segments.push_back(SegmentMeta {
                first_seq,
                base_offset,
                path,
                len,
                first_received,
            });
        }
        // A sealed segment ends where the next begins (a recycled file may be longer).
        for i in 1..segments.len() {
            let next_base = segments[i].base_offset;
            let segment = &mut segments[i - 1];
            segment.len = SEGMENT_HEADER + next_base.saturating_sub(segment.base_offset);
        }
        let spares = fs::read_dir(&log_dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "spare"))
            .collect();
        let head = segments
            .back()
            .map_or(Position::default(), |last| Position {
                seq: last.first_seq + tail_records,
                offset: last.base_offset + (last.len - SEGMENT_HEADER),
            });
        let active = match segments.back() {
            Some(last) => {
                let mut file = OpenOptions::new().write(true).open(&last.path)?;
                use std::io::Seek;
                file.seek(io::SeekFrom::Start(last.len))?;
                file
            }
            None => {
                let (file, meta) = create_segment(&log_dir, head)?;
                segments.push_back(meta);
                file
            }
        };
        let bytes = segments.iter().map(|s| s.len).sum();
        let shared = Arc::new(Shared {
            config: config.clone(),
            log_dir,
            cursor_dir,
            log_id,
            state: Mutex::new(State { segments, bytes }),
            cache: Mutex::new(Cache::default()),
            trackers: Mutex::new(Vec::new()),
            failed: Mutex::new(None),
            spares: Mutex::new(spares),
            appended: Default::default(),
        });
        let (head_tx, head_rx) = watch::channel(head);
        let (tx, rx) = mpsc::channel(4096);
        let writer = writer::Writer {
            shared: shared.clone(),
            file: active,
            next: head,
            rx,
            head: head_tx,
            free: writer::FreeSpace::default(),
            failed: None,
            segment_errors: crate::telemetry::RateLimitedWarning::new(
                "Cannot start a new log segment; refusing requests until it can.",
            ),
        };
        let writer = std::thread::Builder::new()
            .name("otelgate-log".into())
            .spawn(move || writer.run())
            .context("cannot start the log writer thread")?;
        tracing::info!(dir = %config.dir.display(), %log_id, records = head.seq - shared.oldest().map_or(head.seq, |(p, _)| p.seq), "Durable log open.");
        let log = Log {
            shared,
            appender: Mutex::new(Some(Appender { tx })),
            head: head_rx,
            writer: Mutex::new(Some(writer)),
            opened_at: head,
            _lock: lock,
        };
        log.update_gauges();
        Ok(log)
    }

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

    /// Where a reader starts.
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
        max_lag_bytes: Option<u64>,
        window_bytes: u64,
    ) -> anyhow::Result<Reader> {
        let head = self.head();
        let path = self.shared.cursor_dir.join(name);
        let start = match cursor::load(&path) {
            Ok(Some(saved)) if saved.seq <= head.seq => saved,
            Ok(Some(saved)) => {
                tracing::warn!(destination = name, saved = saved.seq, head = head.seq, "Saved cursor is past the end of the log (was the log deleted?); starting at the end.");
                head
            }
            Ok(None) => head,
            Err(error) => {
                let oldest = self.shared.oldest().map_or(head, |(p, _)| p);
                tracing::warn!(destination = name, %error, "Cannot read the saved cursor; reading the whole log again.");
                oldest
            }
        };
        let tracker = Arc::new(Tracker::new(name, start, max_lag_bytes));
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
        if start.seq < self.opened_at.seq {
            tracing::info!(
                destination = name,
                records = self.opened_at.seq - start.seq,
                "Replaying undelivered records from the log."
            );
        }
        Ok(Reader::new(
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

    /// Saves every cursor, deletes fully read segments and updates the gauges.
    pub fn maintain(&self) {
        let trackers = self.shared.trackers.lock().expect("trackers lock").clone();
        let head = self.head();
        let oldest = self.shared.oldest().map(|(at, _)| at);
        let mut min = head;
        for tracker in &trackers {
            self.enforce_limits(tracker, head, oldest);
            let (cursor, oldest_received) = tracker.cursor();
            min = min.min(cursor);
            if tracker.needs_save(cursor) {
                let path = self.shared.cursor_dir.join(&*tracker.name());
                match cursor::save(&path, cursor) {
                    Ok(()) => tracker.mark_saved(cursor),
                    Err(error) => {
                        tracing::warn!(destination = %tracker.name(), %error, "Cannot save a cursor; will try again.")
                    }
                }
            }
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
        self.delete_segments_before(min.seq);
        self.update_gauges();
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
            dropped(tracker, to, reason);
        }
    }

    fn delete_segments_before(&self, seq: u64) {
        let mut doomed = Vec::new();
        {
            let mut state = self.shared.state.lock().expect("log state lock");
            while state.segments.len() > 1 && state.segments[1].first_seq <= seq {
                let segment = state.segments.pop_front().expect("len > 1");
                state.bytes -= segment.len;
                doomed.push(segment.path);
            }
        }
        for path in doomed {
            // Keep a couple of full segments for reuse: overwriting blocks a file already
            // has lets `fdatasync` skip the metadata update a growing file needs.
            let full =
                fs::metadata(&path).is_ok_and(|m| m.len() >= self.shared.config.segment_bytes / 2);
            let mut spares = self.shared.spares.lock().expect("spares lock");
            if full && spares.len() < MAX_SPARES {
                let spare = path.with_extension("spare");
                if fs::rename(&path, &spare).is_ok() {
                    spares.push(spare);
                    continue;
                }
            }
            drop(spares);
            if let Err(error) = fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), %error, "Cannot delete a read log segment.");
            }
        }
    }

    fn update_gauges(&self) {
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

    /// The log's state for `/readyz`.
    pub fn status(&self) -> serde_json::Value {
        let head = self.head();
        let (bytes, segments, oldest) = {
            let state = self.shared.state.lock().expect("log state lock");
            (
                state.bytes,
                state.segments.len(),
                state.segments.front().map_or(head.seq, |s| s.first_seq),
            )
        };
        let destinations: Vec<_> = self
            .shared
            .trackers
            .lock()
            .expect("trackers lock")
            .iter()
            .map(|t| {
                let cursor = t.cursor().0;
                serde_json::json!({
                    "name": &*t.name(),
                    "lag_records": head.seq.saturating_sub(cursor.seq),
                    "lag_bytes": head.offset.saturating_sub(cursor.offset),
                })
            })
            .collect();
        serde_json::json!({
            "dir": self.shared.config.dir,
            "bytes": bytes,
            "max_bytes": self.shared.config.max_bytes,
            "segments": segments,
            "records": head.seq - oldest,
            "failed": *self.shared.failed.lock().expect("failed lock"),
            "destinations": destinations,
        })
    }

    /// What was appended since the log was opened.
    pub fn stats(&self) -> LogStats {
        let [records, bytes, syncs] = &self.shared.appended;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        LogStats {
            records: load(records),
            bytes: load(bytes),
            syncs: load(syncs),
        }
    }

    /// Whether the log still accepts appends (false after a write or sync failure).
    /// Why the log refuses everything until the gateway restarts (a write or sync failed).
    pub fn failure(&self) -> Option<String> {
        self.shared.failed.lock().expect("failed lock").clone()
    }

    pub fn healthy(&self) -> bool {
        self.shared.failed.lock().expect("failed lock").is_none()
    }

    /// Records each destination has not finished, for the shutdown report.
    pub fn backlog(&self) -> Vec<(String, u64)> {
        let head = self.head();
        self.shared
            .trackers
            .lock()
            .expect("trackers lock")
            .iter()
            .map(|t| {
                (
                    t.name().to_string(),
                    head.seq.saturating_sub(t.cursor().0.seq),
                )
            })
            .collect()
    }
}

/// Read segment files kept for reuse, at most.
const MAX_SPARES: usize = 2;

/// Drops records before `to` for `tracker`'s destination, counting and logging them.
pub(super) fn dropped(tracker: &Tracker, to: Position, reason: &'static str) {
    let records = tracker.abandon_before(to);
    if records > 0 {
        metrics::counter!(telemetry::LOG_DROPPED_RECORDS, "destination" => tracker.name().to_string(), "reason" => reason)
            .increment(records);
        tracing::warn!(destination = %tracker.name(), records, reason, "Dropping log records this destination has not finished.");
    }
}

fn read_or_create_id(path: &Path) -> anyhow::Result<uuid::Uuid> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a UUID", path.display())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let id = uuid::Uuid::new_v4();
            cursor::write_atomically(path, id.to_string().as_bytes())?;
            Ok(id)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Starts a segment at `at` in a spare file: renamed, its header rewritten, positioned
/// after the header. Its old records stay behind the new ones until overwritten; a scan
/// tells them apart by their sequence numbers.
fn recycle_segment(log_dir: &Path, spare: &Path, at: Position) -> io::Result<(File, SegmentMeta)> {
    use std::io::Seek;
    let path = log_dir.join(segment::file_name(at.seq));
    fs::rename(spare, &path)?;
    let mut file = OpenOptions::new().write(true).open(&path)?;
    file.write_all(&segment::header(at.offset))?;
    // The first record must not be mistaken for the old one at the same place after a
    // crash that tears it: zero the old record's prefix.
    file.write_all(&[0u8; 8])?;
    file.seek(io::SeekFrom::Start(SEGMENT_HEADER))?;
    file.sync_data()?;
    File::open(log_dir)?.sync_all()?;
    Ok((file, SegmentMeta::empty(at, path)))
}

fn create_segment(log_dir: &Path, at: Position) -> io::Result<(File, SegmentMeta)> {
    let path = log_dir.join(segment::file_name(at.seq));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    file.write_all(&segment::header(at.offset))?;
    file.sync_all()?;
    File::open(log_dir)?.sync_all()?;
    Ok((file, SegmentMeta::empty(at, path)))
}

pub(crate) fn unix_nanos_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// The wall-clock time of an `Instant` in the past.
fn unix_nanos_of(instant: std::time::Instant) -> i64 {
    unix_nanos_now() - instant.elapsed().as_nanos() as i64
}

/// The `Instant` of a wall-clock time in the past.
fn instant_of(unix_nanos: i64) -> std::time::Instant {
    let ago = Duration::from_nanos((unix_nanos_now() - unix_nanos).max(0) as u64);
    std::time::Instant::now()
        .checked_sub(ago)
        .unwrap_or_else(std::time::Instant::now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::{queue, MemoryBudget};

    fn config(dir: &Path) -> LogConfig {
        LogConfig {
            dir: dir.to_owned(),
            segment_bytes: 4096,
            max_bytes: 1 << 20,
            min_free_bytes: 0,
            ..LogConfig::default()
        }
    }

    async fn append_all(log: &Log, count: usize) {
        let appender = log.take_appender().unwrap();
        let budget = MemoryBudget::new(1 << 20);
        for i in 0..count {
            let body = bytes::Bytes::from(vec![i as u8; 1000]);
            let permit = budget.try_admit(body.len()).unwrap();
            let payload = Arc::new(Payload::new(Signal::Logs, body, 1, permit));
            appender.append(payload).await.unwrap();
        }
        drop(appender);
        log.join_writer().await;
    }

    /// Reads everything a new destination `name` gets from the log, starting at its cursor.
    async fn read_all(log: &Log, name: &str) -> Vec<u8> {
        spawn_reader(log, name).await.unwrap()
    }

    #[tokio::test]
    async fn a_corrupt_record_in_an_older_segment_skips_only_the_rest_of_that_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Log::open(&config(dir.path())).unwrap();
            // A saved cursor at the start, so the reopened log replays everything to it.
            cursor::save(&dir.path().join("cursors/dest"), Position::default()).unwrap();
            append_all(&log, 12).await;
        }
        let mut segments: Vec<_> = fs::read_dir(dir.path().join("log"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        segments.sort();
        assert!(segments.len() >= 3, "{segments:?}");
        // Damage the second record of the first segment (3 records of 1033 bytes each).
        let mut data = fs::read(&segments[0]).unwrap();
        let second = SEGMENT_HEADER as usize + 1033 + 100;
        data[second] ^= 0xff;
        fs::write(&segments[0], data).unwrap();

        let log = Log::open(&config(dir.path())).unwrap();
        assert_eq!(
            log.head().seq,
            12,
            "older segments are not scanned at start-up"
        );
        drop(log.take_appender());
        let read = read_all(&log, "dest").await;
        // Record 0 is intact; 1 and 2 share the damaged segment and are skipped; 3.. follow.
        assert_eq!(read, vec![0, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    }

    /// Starts destination `name`'s reader; the task returns the first byte of every body
    /// it got, once the log is closed and read to its end.
    fn spawn_reader(log: &Log, name: &str) -> tokio::task::JoinHandle<Vec<u8>> {
        let (tx, mut rx) = queue(name, 1024);
        let reader = log
            .reader(name, &[Signal::Logs], tx, None, 1 << 20)
            .unwrap();
        tokio::spawn(async move {
            let task = tokio::spawn(reader.run(CancellationToken::new()));
            let mut firsts = Vec::new();
            while let Some(delivery) = rx.recv().await {
                firsts.push(delivery.body[0]);
            }
            task.await.unwrap();
            firsts
        })
    }

    fn files_with(dir: &Path, extension: &str) -> usize {
        fs::read_dir(dir.join("log"))
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == extension)
            })
            .count()
    }

    #[tokio::test]
    async fn read_segments_are_recycled_and_their_old_records_never_read_again() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Log::open(&config(dir.path())).unwrap();
            let reader = spawn_reader(&log, "dest");
            append_all(&log, 12).await;
            assert_eq!(reader.await.unwrap(), (0..12).collect::<Vec<u8>>());
            log.maintain();
            assert_eq!(files_with(dir.path(), "spare"), MAX_SPARES);
        }
        {
            // New segments reuse the spares; readers see only the new records.
            let log = Log::open(&config(dir.path())).unwrap();
            let reader = spawn_reader(&log, "dest");
            append_all(&log, 7).await;
            assert_eq!(reader.await.unwrap(), (0..7).collect::<Vec<u8>>());
            assert_eq!(files_with(dir.path(), "spare"), 0, "spares reused");
        }
        // Recycled files hold old records after the new ones: the end of the data, not
        // damage. A destination reading from the start of what is left gets exactly the
        // records written, none of the old ones.
        let log = Log::open(&config(dir.path())).unwrap();
        assert_eq!(log.head().seq, 19);
        drop(log.take_appender());
        cursor::save(
            &dir.path().join("cursors/again"),
            log.shared.oldest().unwrap().0,
        )
        .unwrap();
        // Left: the first run's last segment (records 9-11, never fully read when the log
        // was last maintained), then the second run's 7 records, two segments of which are
        // recycled files.
        let again = read_all(&log, "again").await;
        assert_eq!(again, vec![9, 10, 11, 0, 1, 2, 3, 4, 5, 6]);
    }

    #[tokio::test]
    async fn a_new_destination_starts_at_the_head_and_a_restart_resumes_each_cursor() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = Log::open(&config(dir.path())).unwrap();
            append_all(&log, 2).await;
        }
        {
            // `late` is new: it starts at the head and gets nothing of the first two.
            let log = Log::open(&config(dir.path())).unwrap();
            let (tx, mut rx) = queue("late", 1024);
            let reader = log
                .reader("late", &[Signal::Logs], tx, None, 1 << 20)
                .unwrap();
            let task = tokio::spawn(reader.run(CancellationToken::new()));
            append_all(&log, 3).await;
            let mut firsts = Vec::new();
            while let Some(delivery) = rx.recv().await {
                firsts.push(delivery.body[0]);
            }
            task.await.unwrap();
            assert_eq!(firsts, vec![0, 1, 2]);
            log.maintain();
        }
        let log = Log::open(&config(dir.path())).unwrap();
        drop(log.take_appender());
        assert_eq!(
            read_all(&log, "late").await,
            Vec::<u8>::new(),
            "finished before"
        );
        assert_eq!(log.backlog(), vec![("late".to_owned(), 0)]);
    }
}
