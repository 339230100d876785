//! Opening the log, and recovering from a crash: the directory lock, the log's id, the
//! segments found on disk (those without a header removed, the last one with a header
//! checked record by record and its torn or corrupt tail cut off), the head, and where each
//! destination resumes from its cursor file.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::Context;

use super::shared::{Cache, SegmentMeta, Shared, State};
use super::{cursor, segment, writer, Log, LogConfig, Position, SEGMENT_HEADER};
use crate::telemetry::{self, reason};

/// The segments found on disk, checked, and the head after the last intact record.
struct Recovered {
    segments: VecDeque<SegmentMeta>,
    head: Position,
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
        let lock = lock_dir(dir)?;
        let log_id = read_or_create_id(&dir.join("log_id"))?;
        register_counters();

        let Recovered { mut segments, head } = recover_segments(&log_dir)?;
        let spares = find_spares(&log_dir)?;
        let active = open_active(&log_dir, &mut segments, head)?;
        let bytes = segments.iter().map(|s| s.len).sum();
        let shared = Arc::new(Shared {
            config: config.clone(),
            log_dir,
            cursor_dir,
            log_id,
            state: Mutex::new(State { segments, bytes }),
            cache: Mutex::new(Cache::default()),
            trackers: Mutex::new(Vec::new()),
            throttling: std::sync::RwLock::new(Vec::new()),
            failed: Mutex::new(None),
            spares: Mutex::new(spares),
            appended: Default::default(),
        });
        let (appender, head_rx, writer) = writer::spawn(shared.clone(), active, head)
            .context("cannot start the log writer thread")?;
        tracing::info!(dir = %config.dir.display(), %log_id, records = head.seq - shared.oldest().map_or(head.seq, |(p, _)| p.seq), "Durable log open.");
        let log = Log {
            shared,
            appender: Mutex::new(Some(appender)),
            head: head_rx,
            writer: Mutex::new(Some(writer)),
            opened_at: head,
            _lock: lock,
        };
        log.update_gauges();
        Ok(log)
    }

    /// Where destination `name` resumes: its saved cursor at `path`; the head for a
    /// destination the log has not seen before or whose cursor is past the end; the oldest
    /// record when its cursor cannot be read.
    pub(super) fn resume_point(&self, name: &str, path: &Path) -> Position {
        let head = self.head();
        match cursor::load(path) {
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
        }
    }
}

/// Takes the data directory's `LOCK` (flock), held as long as the returned file is open.
fn lock_dir(dir: &Path) -> anyhow::Result<File> {
    let path = dir.join("LOCK");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    lock.try_lock().map_err(|_| {
        anyhow::anyhow!(
            "the log directory {} is in use by another otelgate (log.dir)",
            dir.display()
        )
    })?;
    Ok(lock)
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

/// Counters exist from the start, so `increase()` sees their first step.
fn register_counters() {
    metrics::counter!(telemetry::LOG_TRUNCATED_BYTES).increment(0);
    for reason in [reason::LOG_FULL, reason::DISK_FLOOR, reason::LOG_IO] {
        metrics::counter!(telemetry::LOG_REFUSED_REQUESTS, "reason" => reason).increment(0);
    }
}

/// Reads every segment's header, removing the files without one, and checks every record of
/// the last segment that has one: that is the tail, where a crash can have torn a write.
/// Older segments are checked as they are read.
fn recover_segments(log_dir: &Path) -> io::Result<Recovered> {
    let mut segments = segments_with_headers(log_dir)?;
    let tail_records = loop {
        let Some(tail) = segments.back() else {
            break 0;
        };
        let scan = segment::scan(&tail.path, tail.first_seq)?;
        let before = segments.len().checked_sub(2).map(|i| &segments[i]);
        if scan.records == 0 && before.is_some_and(|b| tail.base_offset <= b.base_offset) {
            // A spare renamed to the head's name before its header was rewritten (a crash
            // while recycling it, when recycling renamed first): none of its records are
            // this segment's, and its old base offset would put the head behind the data.
            tracing::warn!(path = %tail.path.display(), "Removing a recycled log segment whose header was never rewritten.");
            fs::remove_file(&tail.path)?;
            segments.pop_back();
            continue;
        }
        let tail = segments.back_mut().expect("checked above");
        cut_tail(tail, &scan)?;
        tail.len = scan.valid_len;
        tail.first_received = scan.first_received;
        break scan.records;
    };
    let sealed = segments.len().saturating_sub(1);
    for segment in segments.iter_mut().take(sealed) {
        segment.first_received = segment::scan_first(&segment.path, segment.first_seq)?;
    }
    // A sealed segment ends where the next begins (a recycled file may be longer).
    for i in 1..segments.len() {
        let next_base = segments[i].base_offset;
        let segment = &mut segments[i - 1];
        segment.len = SEGMENT_HEADER + next_base.saturating_sub(segment.base_offset);
    }
    let head = segments
        .back()
        .map_or(Position::default(), |last| Position {
            seq: last.first_seq + tail_records,
            offset: last.base_offset + (last.len - SEGMENT_HEADER),
        });
    Ok(Recovered { segments, head })
}

/// The segment files in order, each as long as its file, and its header read. A file
/// without a valid header holds nothing (a crash came before its header reached the disk):
/// it is removed.
fn segments_with_headers(log_dir: &Path) -> io::Result<VecDeque<SegmentMeta>> {
    let mut names: Vec<(u64, PathBuf)> = fs::read_dir(log_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| segment::parse_file_name(&p).map(|seq| (seq, p)))
        .collect();
    names.sort();
    let mut segments = VecDeque::new();
    for (first_seq, path) in names {
        let mut file = File::open(&path)?;
        let len = file.metadata()?.len();
        let Some(base_offset) = segment::read_header(&mut file)? else {
            tracing::warn!(path = %path.display(), bytes = len, "Removing a log segment without a valid header.");
            metrics::counter!(telemetry::LOG_TRUNCATED_BYTES).increment(len);
            fs::remove_file(&path)?;
            continue;
        };
        segments.push_back(SegmentMeta {
            first_seq,
            base_offset,
            path,
            len,
            first_received: None,
        });
    }
    Ok(segments)
}

/// Cuts the tail segment after its last intact record, as `scan` found it: a torn or
/// corrupt tail, counted and logged, and the unwritten rest of a recycled file.
fn cut_tail(tail: &SegmentMeta, scan: &segment::Scan) -> io::Result<()> {
    let path = &tail.path;
    if let Some(why) = scan.corrupt {
        let cut = tail.len - scan.valid_len;
        tracing::warn!(path = %path.display(), reason = why, intact_records = scan.records, truncated_bytes = cut, "The log's tail is torn or corrupt; truncating it.");
        metrics::counter!(telemetry::LOG_TRUNCATED_BYTES).increment(cut);
    }
    if tail.len > scan.valid_len {
        // Also the unwritten rest of a recycled file: nothing after the last intact record
        // may be mistaken for data by a later scan.
        let file = OpenOptions::new().write(true).open(path)?;
        file.set_len(scan.valid_len)?;
        file.sync_all()?;
    }
    Ok(())
}

/// Spare segment files left by the last run (see `segment::recycle`).
fn find_spares(log_dir: &Path) -> io::Result<Vec<PathBuf>> {
    Ok(fs::read_dir(log_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "spare"))
        .collect())
}

/// Opens the last segment for appending at its end, or starts the first segment of an
/// empty log at `head`.
fn open_active(
    log_dir: &Path,
    segments: &mut VecDeque<SegmentMeta>,
    head: Position,
) -> io::Result<File> {
    match segments.back() {
        Some(last) => {
            let mut file = OpenOptions::new().write(true).open(&last.path)?;
            file.seek(SeekFrom::Start(last.len))?;
            Ok(file)
        }
        None => {
            let (file, path) = segment::create(log_dir, head)?;
            segments.push_back(SegmentMeta::empty(head, path));
            Ok(file)
        }
    }
}
