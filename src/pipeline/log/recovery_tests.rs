//! Recovery from a crash at each step of starting a segment: whatever the crash leaves in the
//! log directory, every synced record is read again exactly once and in order, the head is
//! one past the last of them, and new records get fresh sequence numbers.

use std::fs;
use std::path::Path;
use std::time::Duration;

use super::segment::{self, SegmentRecord, SEGMENT_HEADER};
use super::tests::{append_bodies, config, spawn_reader};
use super::{cursor, Log, Position};
use crate::Signal;

/// Bytes of each record the tests append (a 1000-byte body).
const RECORD: u64 = 1033;

/// What a crash while starting the segment at the head can leave behind.
#[derive(Debug, Clone, Copy)]
enum Leftover {
    /// Nothing: the crash came before the new file.
    Nothing,
    /// The new file, created but empty.
    EmptyFile,
    /// The new file with part of its header.
    TornHeader,
    /// The new file with its header, before the first record.
    Header,
    /// A spare renamed to the new name, its header rewritten and its first record's prefix
    /// zeroed, before the first record.
    RecycledSpare,
    /// A spare renamed to the new name before its header was rewritten.
    RenamedSpareWithOldHeader,
    /// A spare whose header was rewritten, not yet renamed.
    UnrenamedSpareWithNewHeader,
    /// The last record torn, and an empty file named after it: a crash that no correct
    /// writer can cause (it syncs a segment before starting the next), checked anyway.
    TornRecordAndEmptyFile,
}

const LEFTOVERS: [Leftover; 8] = [
    Leftover::Nothing,
    Leftover::EmptyFile,
    Leftover::TornHeader,
    Leftover::Header,
    Leftover::RecycledSpare,
    Leftover::RenamedSpareWithOldHeader,
    Leftover::UnrenamedSpareWithNewHeader,
    Leftover::TornRecordAndEmptyFile,
];

/// A read segment as it is kept for reuse: a header at offset 0 and three records whose
/// bodies are filled with 0xEE, so a read of any of them shows.
fn old_segment() -> Vec<u8> {
    let mut data = segment::header(0).to_vec();
    for seq in 0..3 {
        segment::encode(&mut data, seq, 7, 1, Signal::Logs, &[0xEE; 1000]);
    }
    data
}

/// Leaves what `leftover` describes in `log_dir`, whose log holds `records` records.
/// Returns how many of them were synced.
fn leave(log_dir: &Path, records: u64, leftover: Leftover) -> u64 {
    let head = Position {
        seq: records,
        offset: records * RECORD,
    };
    let new_segment = log_dir.join(segment::file_name(head.seq));
    let mut recycled = old_segment();
    recycled[..SEGMENT_HEADER as usize].copy_from_slice(&segment::header(head.offset));
    recycled[SEGMENT_HEADER as usize..][..8].fill(0);
    match leftover {
        Leftover::Nothing => {}
        Leftover::EmptyFile => fs::write(&new_segment, b"").unwrap(),
        Leftover::TornHeader => {
            fs::write(&new_segment, &segment::header(head.offset)[..11]).unwrap()
        }
        Leftover::Header => fs::write(&new_segment, segment::header(head.offset)).unwrap(),
        Leftover::RecycledSpare => fs::write(&new_segment, recycled).unwrap(),
        Leftover::RenamedSpareWithOldHeader => fs::write(&new_segment, old_segment()).unwrap(),
        Leftover::UnrenamedSpareWithNewHeader => {
            fs::write(log_dir.join("00000000000000000000.spare"), recycled).unwrap()
        }
        Leftover::TornRecordAndEmptyFile => {
            let mut segments: Vec<_> = fs::read_dir(log_dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            segments.sort();
            let last = segments.last().unwrap();
            let len = fs::metadata(last).unwrap().len();
            fs::OpenOptions::new()
                .write(true)
                .open(last)
                .unwrap()
                .set_len(len - 10)
                .unwrap();
            fs::write(&new_segment, b"").unwrap();
            return records - 1;
        }
    }
    records
}

/// The head after `records` records of the tests' size.
fn position_after(records: u64) -> Position {
    Position {
        seq: records,
        offset: records * RECORD,
    }
}

/// The bodies' first bytes a destination reading the whole log gets, once every appender
/// is gone; or why it does not get to the head.
async fn read_whole_log(log: &Log, dir: &Path, name: &str) -> Result<Vec<u8>, String> {
    cursor::save(&dir.join("cursors").join(name), Position::default()).unwrap();
    let reader = spawn_reader(log, name);
    let abort = reader.abort_handle();
    match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(read) => read.map_err(|e| format!("the reader failed: {e}")),
        Err(_) => {
            abort.abort();
            Err("the reader never got to the head".to_owned())
        }
    }
}

/// Builds a log of `records` records, leaves `leftover`, restarts and appends, restarts
/// again; returns what differs from what a correct recovery gives.
async fn crash_and_recover(records: u8, leftover: Leftover) -> Vec<String> {
    let mut wrong = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(&config(dir.path())).unwrap();
    append_bodies(&log, 0..records).await;
    drop(log);
    let synced = leave(&dir.path().join("log"), u64::from(records), leftover);
    let expected: Vec<u8> = (0..synced as u8).chain(100..105).collect();

    let log = Log::open(&config(dir.path())).unwrap();
    if log.head() != position_after(synced) {
        wrong.push(format!(
            "head {:?}, expected {:?}",
            log.head(),
            position_after(synced)
        ));
    }
    // New records follow on, in new segments too.
    let appended = append_bodies(&log, 100..105).await;
    let seqs: Vec<u64> = appended.iter().map(|p| p.seq).collect();
    if seqs != (synced..synced + 5).collect::<Vec<_>>() {
        wrong.push(format!("appended as {seqs:?}, expected from {synced} on"));
    }
    let read = read_whole_log(&log, dir.path(), "first").await;
    if read.as_ref() != Ok(&expected) {
        wrong.push(format!("read {read:?}, expected {expected:?}"));
    }
    drop(log);

    // And all of it survives another restart.
    let log = Log::open(&config(dir.path())).unwrap();
    if log.head() != position_after(synced + 5) {
        wrong.push(format!(
            "head after another restart {:?}, expected {:?}",
            log.head(),
            position_after(synced + 5)
        ));
    }
    drop(log.take_appender());
    let read = read_whole_log(&log, dir.path(), "second").await;
    if read.as_ref() != Ok(&expected) {
        wrong.push(format!(
            "read after another restart {read:?}, expected {expected:?}"
        ));
    }
    wrong
}

#[tokio::test]
async fn a_crash_while_starting_a_segment_loses_and_repeats_nothing() {
    assert_eq!(SegmentRecord::encoded_len(1000), RECORD);
    let mut failures = Vec::new();
    for records in 1..=7 {
        for leftover in LEFTOVERS {
            for wrong in crash_and_recover(records, leftover).await {
                failures.push(format!("{records} records, {leftover:?}: {wrong}"));
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}
