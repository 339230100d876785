//! The writer thread: group commit. It takes every append waiting, checks the disk floor and
//! the size limit, writes the group in one `write`, syncs once, then publishes the new head,
//! fills the cache and answers every waiter.

use std::fs;
use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::segment::{self, Record, SEGMENT_HEADER};
use super::{
    create_segment, recycle_segment, unix_nanos_of, Append, AppendError, Cached, Payload, Position,
    Shared, WhenLogFull,
};
use crate::telemetry::{self, reason};

/// Free space on the log's file system, measured at most every 100 ms.
#[derive(Default)]
pub(super) struct FreeSpace {
    measured: Option<(std::time::Instant, u64)>,
    written_since: u64,
}

impl FreeSpace {
    fn available(&mut self, dir: &Path) -> io::Result<u64> {
        let stale = self
            .measured
            .is_none_or(|(at, _)| at.elapsed() > Duration::from_millis(100));
        if stale {
            let stat = rustix::fs::statvfs(dir)?;
            self.measured = Some((
                std::time::Instant::now(),
                stat.f_bavail.saturating_mul(stat.f_frsize),
            ));
            self.written_since = 0;
        }
        Ok(self
            .measured
            .map_or(0, |(_, free)| free.saturating_sub(self.written_since)))
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) file: File,
    /// Where the next record goes (everything before it is written and synced).
    pub(super) next: Position,
    pub(super) rx: mpsc::Receiver<Append>,
    pub(super) head: watch::Sender<Position>,
    pub(super) free: FreeSpace,
    /// Set after a write or sync failed: the log refuses everything until restarted.
    pub(super) failed: Option<String>,
    /// Failures to start a segment, which are not fatal, logged at most every 10 s.
    pub(super) segment_errors: crate::telemetry::RateLimitedWarning,
}

/// Most request bytes written in one group.
const MAX_GROUP_BYTES: usize = 16 * 1024 * 1024;

/// A record written but not yet synced, with who waits for it.
struct Written {
    at: Position,
    end: Position,
    payload: Arc<Payload>,
    reply: oneshot::Sender<Result<Position, AppendError>>,
}

impl Writer {
    pub(super) fn run(mut self) {
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut unsynced: Vec<Written> = Vec::new();
        while let Some(first) = self.rx.blocking_recv() {
            let mut group = vec![first];
            let mut bytes = group[0].payload.body.len();
            while bytes < MAX_GROUP_BYTES {
                match self.rx.try_recv() {
                    Ok(next) => {
                        bytes += next.payload.body.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let group_size = group.len();
            for append in group {
                if let Some(why) = &self.failed {
                    metrics::counter!(telemetry::LOG_REFUSED_REQUESTS, "reason" => reason::LOG_IO)
                        .increment(1);
                    let _ = append.reply.send(Err(AppendError::Io(why.clone())));
                    continue;
                }
                let len = Record::encoded_len(append.payload.body.len());
                if let Err(error) = self.admit(len, &mut buf, &mut unsynced) {
                    metrics::counter!(telemetry::LOG_REFUSED_REQUESTS, "reason" => error.reason())
                        .increment(1);
                    let _ = append.reply.send(Err(error));
                    continue;
                }
                let at = self.next;
                let payload = append.payload;
                segment::encode(
                    &mut buf,
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
                unsynced.push(Written {
                    at,
                    end: self.next,
                    payload,
                    reply: append.reply,
                });
            }
            metrics::histogram!(telemetry::LOG_GROUP_REQUESTS).record(group_size as f64);
            self.flush(&mut buf, &mut unsynced);
        }
    }

    /// Makes room for a record of `len` bytes: checks the disk floor and the size limit, and
    /// starts a new segment when the active one is full.
    fn admit(
        &mut self,
        len: u64,
        buf: &mut Vec<u8>,
        unsynced: &mut Vec<Written>,
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
            self.flush(buf, unsynced);
            if self.failed.is_some() {
                return Err(AppendError::Io(self.failed.clone().unwrap_or_default()));
            }
            let spare = self.shared.spares.lock().expect("spares lock").pop();
            let started = match spare {
                Some(spare) => recycle_segment(&self.shared.log_dir, &spare, self.next)
                    .or_else(|_| create_segment(&self.shared.log_dir, self.next)),
                None => create_segment(&self.shared.log_dir, self.next),
            };
            match started {
                Ok((file, meta)) => {
                    self.file = file;
                    let mut state = self.shared.state.lock().expect("log state lock");
                    state.bytes += meta.len;
                    state.segments.push_back(meta);
                }
                // Nothing was written: refuse this request and try again with the next one
                // (out of file descriptors or disk space is usually temporary).
                Err(error) => {
                    self.segment_errors.warn(&error);
                    return Err(AppendError::Io(format!(
                        "cannot start a new log segment: {error}"
                    )));
                }
            }
        }
        self.free.written_since += len;
        Ok(())
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

    fn fail(&mut self, why: String) -> AppendError {
        tracing::error!(error = %why, "The durable log failed; refusing new requests until restart.");
        self.failed = Some(why.clone());
        *self.shared.failed.lock().expect("failed lock") = Some(why.clone());
        AppendError::Io(why)
    }

    /// Writes and syncs what is buffered, then publishes it and answers its clients.
    fn flush(&mut self, buf: &mut Vec<u8>, unsynced: &mut Vec<Written>) {
        if unsynced.is_empty() {
            return;
        }
        let started = std::time::Instant::now();
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
            for w in unsynced.drain(..) {
                let _ = w.reply.send(Err(error.clone()));
            }
            return;
        }
        {
            let mut state = self.shared.state.lock().expect("log state lock");
            state.bytes += written;
            let active = state.segments.back_mut().expect("an active segment");
            active.len += written;
            if active.first_received.is_none() {
                active.first_received = unsynced.first().map(|w| unix_nanos_of(w.payload.received));
            }
        }
        {
            let mut cache = self.shared.cache.lock().expect("log cache lock");
            for w in unsynced.iter() {
                cache.bytes += w.payload.body.len() as u64;
                cache.entries.push_back(Cached {
                    at: w.at,
                    end: w.end,
                    payload: Arc::new(w.payload.durable_copy()),
                });
            }
            while cache.bytes > self.shared.config.cache_bytes {
                let Some(old) = cache.entries.pop_front() else {
                    break;
                };
                cache.bytes -= old.payload.body.len() as u64;
            }
        }
        let [records, bytes, syncs] = &self.shared.appended;
        records.fetch_add(unsynced.len() as u64, std::sync::atomic::Ordering::Relaxed);
        bytes.fetch_add(written, std::sync::atomic::Ordering::Relaxed);
        syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(telemetry::LOG_APPENDED_RECORDS).increment(unsynced.len() as u64);
        metrics::counter!(telemetry::LOG_APPENDED_BYTES).increment(written);
        self.head.send_replace(self.next);
        for w in unsynced.drain(..) {
            let _ = w.reply.send(Ok(w.at));
        }
    }
}
