//! The log end to end: recovery, recycling, cursors across restarts.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::maintenance::MAX_SPARES;
use super::segment::SEGMENT_HEADER;
use super::{cursor, Log, LogConfig, Position};
use crate::pipeline::{queue, MemoryBudget, Payload};
use crate::Signal;

pub(super) fn config(dir: &Path) -> LogConfig {
    LogConfig {
        dir: dir.to_owned(),
        segment_bytes: 4096,
        max_bytes: 1 << 20,
        min_free_bytes: 0,
        ..LogConfig::default()
    }
}

async fn append_all(log: &Log, count: usize) {
    append_bodies(log, 0..count as u8).await;
}

/// Appends a 1000-byte body filled with `first`; returns once it is synced.
async fn append_one(appender: &super::Appender, first: u8) -> Position {
    let budget = MemoryBudget::new(1 << 20);
    let body = bytes::Bytes::from(vec![first; 1000]);
    let permit = budget.try_admit(body.len()).unwrap();
    let payload = Arc::new(Payload::new(Signal::Logs, body, 1, permit));
    appender.append(payload).await.unwrap()
}

/// Appends a 1000-byte body filled with each of `firsts`, then stops the writer. Returns
/// where each record went.
pub(super) async fn append_bodies(
    log: &Log,
    firsts: impl IntoIterator<Item = u8>,
) -> Vec<Position> {
    let appender = log.take_appender().unwrap();
    let mut positions = Vec::new();
    for first in firsts {
        positions.push(append_one(&appender, first).await);
    }
    drop(appender);
    log.join_writer().await;
    positions
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
pub(super) fn spawn_reader(log: &Log, name: &str) -> tokio::task::JoinHandle<Vec<u8>> {
    let (tx, mut rx) = queue(name, 1024);
    let reader = log
        .reader(
            name,
            &[Signal::Logs],
            tx,
            crate::pipeline::LagLimits::default(),
            1 << 20,
        )
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
            .reader(
                "late",
                &[Signal::Logs],
                tx,
                crate::pipeline::LagLimits::default(),
                1 << 20,
            )
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

#[tokio::test]
async fn with_group_wait_an_append_that_comes_soon_after_shares_the_first_ones_sync() {
    for (wait_us, syncs) in [(100_000, 1), (0, 2)] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&LogConfig {
            group_wait_us: wait_us,
            ..config(dir.path())
        })
        .unwrap();
        let appender = log.take_appender().unwrap();
        // The second append is sent 20 ms after the first. With a 100 ms wait the writer
        // still waits for company then, and both share one sync; without a wait the first
        // was synced alone (or, on a disk slower than 20 ms, is being synced) and the second
        // gets a sync of its own.
        let second = {
            let appender = appender.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                append_one(&appender, 1).await
            }
        };
        let (a, b) = tokio::join!(append_one(&appender, 0), second);
        assert_eq!((a.seq, b.seq), (0, 1));
        drop(appender);
        log.join_writer().await;
        let stats = log.stats();
        assert_eq!(
            (stats.records, stats.syncs),
            (2, syncs),
            "group_wait_us = {wait_us}"
        );
    }
}
