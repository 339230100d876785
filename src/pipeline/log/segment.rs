//! The on-disk format. A segment file holds a header and then records back to back:
//!
//! ```text
//! segment header (16 bytes): magic "OTGLOG1\n" | base offset u64
//! record:  length u32 | crc32 u32 | seq u64 | received unix ns i64 | items u64 | signal u8 | body
//! ```
//!
//! All integers are little-endian. `length` counts the bytes after the 8-byte prefix; the CRC
//! (CRC-32/ISO-HDLC, `crc32fast`) covers the same bytes, so a torn write, a zero-filled tail
//! or a flipped bit is caught before anything is handed to a destination. The base offset
//! is the log-wide byte position of the segment's first record; a record's position is the
//! base offset plus its distance from the end of the header.
//!
//! A new segment is a new file, or a spare: a segment already read, reused because its
//! blocks exist, so `fdatasync` need not also journal a growing file's size (docs/BENCHMARKS.md,
//! "Segment recycling"). A reused file keeps its old records behind the new ones until they
//! are overwritten: reads and scans tell them apart by their sequence numbers.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::{BufMut, Bytes, BytesMut};

use crate::Signal;

/// The first bytes of every segment file.
pub const MAGIC: &[u8; 8] = b"OTGLOG1\n";
/// Bytes of a segment's header: the magic, then the base offset.
pub const SEGMENT_HEADER: u64 = 16;
/// Bytes of a record before its body.
pub const RECORD_HEADER: usize = 4 + 4 + 8 + 8 + 8 + 1;
/// No record body may be larger; a length above it is corruption, not a reason to allocate.
pub const MAX_BODY: usize = 1 << 30;
/// Read stopped at zeros where a record would start: the unwritten end of the data.
pub const ZERO_FILLED: &str = "zero-filled";
/// Read stopped at an intact record of an older use of a recycled segment file.
pub const STALE: &str = "stale record";

/// One record as read back from a segment.
#[derive(Debug, Clone)]
pub struct SegmentRecord {
    pub seq: u64,
    pub received_unix_nanos: i64,
    pub items: u64,
    pub signal: Signal,
    pub body: Bytes,
}

impl SegmentRecord {
    /// Bytes a record with a body of `body_len` bytes takes in a segment.
    pub fn encoded_len(body_len: usize) -> u64 {
        (RECORD_HEADER + body_len) as u64
    }
}

/// Appends one encoded record to `buf`.
pub fn encode(
    buf: &mut Vec<u8>,
    seq: u64,
    received_unix_nanos: i64,
    items: u64,
    signal: Signal,
    body: &[u8],
) {
    let start = buf.len();
    buf.put_u32_le((RECORD_HEADER - 8 + body.len()) as u32);
    buf.put_u32_le(0);
    buf.put_u64_le(seq);
    buf.put_i64_le(received_unix_nanos);
    buf.put_u64_le(items);
    buf.put_u8(signal.index() as u8);
    buf.extend_from_slice(body);
    let crc = crc32fast::hash(&buf[start + 8..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why a record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The bytes end inside a record (a torn write) or hold something that is not a record.
    #[error("corrupt record: {0}")]
    Corrupt(&'static str),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the record at the reader's position. `Ok(None)` at a clean end of the data.
pub fn read_record(
    reader: &mut impl Read,
    expected_seq: u64,
) -> Result<Option<SegmentRecord>, ReadError> {
    let mut prefix = [0u8; 8];
    match read_full(reader, &mut prefix)? {
        0 => return Ok(None),
        8 => {}
        _ => return Err(ReadError::Corrupt("truncated record header")),
    }
    let length = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(prefix[4..].try_into().expect("4 bytes"));
    if length == 0 && crc == 0 {
        return Err(ReadError::Corrupt(ZERO_FILLED));
    }
    if !(RECORD_HEADER - 8..=MAX_BODY + RECORD_HEADER).contains(&length) {
        return Err(ReadError::Corrupt("impossible record length"));
    }
    let mut rest = BytesMut::zeroed(length);
    if read_full(reader, &mut rest)? != length {
        return Err(ReadError::Corrupt("truncated record"));
    }
    if crc32fast::hash(&rest) != crc {
        return Err(ReadError::Corrupt("checksum mismatch"));
    }
    let seq = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
    if seq != expected_seq {
        return Err(ReadError::Corrupt(STALE));
    }
    let received_unix_nanos = i64::from_le_bytes(rest[8..16].try_into().expect("8 bytes"));
    let items = u64::from_le_bytes(rest[16..24].try_into().expect("8 bytes"));
    let signal = match rest[24] {
        0 => Signal::Traces,
        1 => Signal::Metrics,
        2 => Signal::Logs,
        _ => return Err(ReadError::Corrupt("unknown signal")),
    };
    let body = rest.split_off(RECORD_HEADER - 8).freeze();
    Ok(Some(SegmentRecord {
        seq,
        received_unix_nanos,
        items,
        signal,
        body,
    }))
}

/// Reads until `buf` is full or the data ends; returns the bytes read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match reader.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// A segment's file name: its first sequence number, zero-padded so names sort in order.
pub fn file_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// The first sequence number in a segment file's name.
pub fn parse_file_name(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_suffix(".seg")?.parse().ok()
}

/// Writes a new segment's header.
pub fn header(base_offset: u64) -> [u8; SEGMENT_HEADER as usize] {
    let mut header = [0u8; SEGMENT_HEADER as usize];
    header[..8].copy_from_slice(MAGIC);
    header[8..].copy_from_slice(&base_offset.to_le_bytes());
    header
}

/// Reads a segment's header; `None` if it is missing or not ours.
pub fn read_header(file: &mut File) -> io::Result<Option<u64>> {
    let mut header = [0u8; SEGMENT_HEADER as usize];
    file.seek(SeekFrom::Start(0))?;
    if read_full(file, &mut header)? != header.len() || &header[..8] != MAGIC {
        return Ok(None);
    }
    Ok(Some(u64::from_le_bytes(
        header[8..].try_into().expect("8 bytes"),
    )))
}

/// What a scan of a segment found.
#[derive(Debug)]
pub struct Scan {
    /// Records that are intact, from the first.
    pub records: u64,
    /// File length up to the end of the last intact record.
    pub valid_len: u64,
    /// Received time of the first record, if any.
    pub first_received: Option<i64>,
    /// Why the scan stopped at a damaged record, if it did. Zeros, or an intact record of
    /// an earlier use of a recycled file, end the data without being damage.
    pub corrupt: Option<&'static str>,
}

/// Reads every record of a segment (starting at `first_seq`) and checks it.
pub fn scan(path: &Path, first_seq: u64) -> io::Result<Scan> {
    let file = File::open(path)?;
    let len = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(SEGMENT_HEADER))?;
    let mut scan = Scan {
        records: 0,
        valid_len: SEGMENT_HEADER,
        first_received: None,
        corrupt: None,
    };
    loop {
        match read_record(&mut reader, first_seq + scan.records) {
            Ok(Some(record)) => {
                scan.first_received
                    .get_or_insert(record.received_unix_nanos);
                scan.records += 1;
                scan.valid_len += SegmentRecord::encoded_len(record.body.len());
            }
            Ok(None) => break,
            Err(ReadError::Corrupt(ZERO_FILLED | STALE)) => return Ok(scan),
            Err(ReadError::Corrupt(why)) => {
                scan.corrupt = Some(why);
                break;
            }
            Err(ReadError::Io(e)) => return Err(e),
        }
    }
    if scan.corrupt.is_none() && scan.valid_len != len.max(SEGMENT_HEADER) {
        scan.corrupt = Some("trailing bytes");
    }
    Ok(scan)
}

/// The received time of a segment's first record, if it has an intact one.
pub fn scan_first(path: &Path, first_seq: u64) -> io::Result<Option<i64>> {
    let mut reader = BufReader::with_capacity(64 * 1024, File::open(path)?);
    reader.seek(SeekFrom::Start(SEGMENT_HEADER))?;
    Ok(match read_record(&mut reader, first_seq) {
        Ok(Some(record)) => Some(record.received_unix_nanos),
        Ok(None) | Err(ReadError::Corrupt(_)) => None,
        Err(ReadError::Io(e)) => return Err(e),
    })
}

/// Creates the segment file starting at `at`, holding only its header, synced with its
/// directory. Returns it positioned after the header, and its path.
pub(super) fn create(log_dir: &Path, at: super::Position) -> io::Result<(File, PathBuf)> {
    let path = log_dir.join(file_name(at.seq));
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    file.write_all(&header(at.offset))?;
    file.sync_all()?;
    File::open(log_dir)?.sync_all()?;
    Ok((file, path))
}

/// Starts the segment at `at` in a spare file: its header rewritten, then renamed,
/// positioned after the header. Its old records stay behind the new ones until overwritten;
/// a scan tells them apart by their sequence numbers.
///
/// The header is on disk before the new name is: a crash in between leaves a spare (with a
/// header it will get again), never a segment named after the head with an old base offset.
pub(super) fn recycle(
    log_dir: &Path,
    spare: &Path,
    at: super::Position,
) -> io::Result<(File, PathBuf)> {
    let path = log_dir.join(file_name(at.seq));
    let mut file = OpenOptions::new().write(true).open(spare)?;
    file.write_all(&header(at.offset))?;
    // The first record must not be mistaken for the old one at the same place after a
    // crash that tears it: zero the old record's prefix.
    file.write_all(&[0u8; 8])?;
    file.seek(SeekFrom::Start(SEGMENT_HEADER))?;
    file.sync_data()?;
    fs::rename(spare, &path)?;
    File::open(log_dir)?.sync_all()?;
    Ok((file, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_segment(path: &PathBuf, records: &[&[u8]]) -> Vec<u8> {
        let mut data = header(0).to_vec();
        for (seq, body) in records.iter().enumerate() {
            encode(&mut data, seq as u64, 7, 1, Signal::Logs, body);
        }
        std::fs::write(path, &data).unwrap();
        data
    }

    #[test]
    fn round_trips_and_detects_every_kind_of_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(file_name(0));
        let data = write_segment(&path, &[b"one", b"two", b"three"]);
        let scan = scan(&path, 0).unwrap();
        assert_eq!((scan.records, scan.valid_len), (3, data.len() as u64));
        assert!(scan.corrupt.is_none());
        assert_eq!(scan.first_received, Some(7));

        // Torn tail: the last record cut short.
        std::fs::write(&path, &data[..data.len() - 2]).unwrap();
        let torn = super::scan(&path, 0).unwrap();
        assert_eq!(torn.records, 2);
        assert_eq!(torn.corrupt, Some("truncated record"));

        // A flipped bit in the middle record's body.
        let mut flipped = data.clone();
        let middle = SEGMENT_HEADER as usize + RECORD_HEADER + 3 + RECORD_HEADER;
        flipped[middle] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let bad = super::scan(&path, 0).unwrap();
        assert_eq!(bad.records, 1);
        assert_eq!(bad.corrupt, Some("checksum mismatch"));

        // A zero-filled tail (space written ahead, or never written): the end, not damage.
        let mut zeroed = data.clone();
        zeroed.extend_from_slice(&[0u8; 100]);
        std::fs::write(&path, &zeroed).unwrap();
        let zero = super::scan(&path, 0).unwrap();
        assert_eq!(zero.records, 3);
        assert_eq!(zero.valid_len, data.len() as u64);
        assert!(zero.corrupt.is_none());

        // A recycled file: two new records over three old ones. The third old record is
        // intact but belongs to the file's earlier use: the end, not damage.
        let mut recycled = data.clone();
        let mut fresh = header(0).to_vec();
        encode(&mut fresh, 10, 7, 1, Signal::Logs, b"ten");
        encode(&mut fresh, 11, 7, 1, Signal::Logs, b"elv");
        recycled[..fresh.len()].copy_from_slice(&fresh);
        std::fs::write(&path, &recycled).unwrap();
        let reused = super::scan(&path, 10).unwrap();
        assert_eq!((reused.records, reused.valid_len), (2, fresh.len() as u64));
        assert!(reused.corrupt.is_none());
    }

    #[test]
    fn reads_back_fields() {
        let mut buf = Vec::new();
        encode(&mut buf, 42, -5, 9, Signal::Metrics, b"body");
        let record = read_record(&mut &buf[..], 42).unwrap().unwrap();
        assert_eq!(
            (
                record.seq,
                record.received_unix_nanos,
                record.items,
                record.signal
            ),
            (42, -5, 9, Signal::Metrics)
        );
        assert_eq!(&record.body[..], b"body");
        assert!(matches!(
            read_record(&mut &buf[..], 41),
            Err(ReadError::Corrupt(STALE))
        ));
    }
}
