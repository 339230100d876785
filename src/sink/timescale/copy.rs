//! Rows to PostgreSQL binary COPY data. Cells are encoded by hand (the formats are fixed and
//! simple), straight into one buffer per batch, so a retried batch resends the same bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::mapping::ColumnType;

const MAGIC: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// One typed value.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Null,
    Text(String),
    Int8(i64),
    Float8(f64),
    Bool(bool),
    /// Nanoseconds since the Unix epoch (stored with microsecond precision).
    Timestamp(i64),
    Uuid([u8; 16]),
    /// JSON text, rendered once when the row is built (see `Cell::json`).
    Json(Box<str>),
    Bytea(Vec<u8>),
}

impl Cell {
    /// A JSON cell from a `serde_json::Value`.
    pub fn json(value: &serde_json::Value) -> Cell {
        Cell::Json(value.to_string().into_boxed_str())
    }

    /// Whether this cell may go into a column of `ty` (NULL goes anywhere).
    pub fn fits(&self, ty: ColumnType) -> bool {
        matches!(
            (self, ty),
            (Cell::Null, _)
                | (Cell::Text(_), ColumnType::Text)
                | (Cell::Int8(_), ColumnType::Int8)
                | (Cell::Float8(_), ColumnType::Float8)
                | (Cell::Bool(_), ColumnType::Bool)
                | (Cell::Timestamp(_), ColumnType::Timestamptz)
                | (Cell::Uuid(_), ColumnType::Uuid)
                | (Cell::Json(_), ColumnType::Jsonb)
                | (Cell::Bytea(_), ColumnType::Bytea)
        )
    }

    /// A JSON rendering, for the rejected-rows table.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value;
        match self {
            Cell::Null => Value::Null,
            Cell::Text(s) => Value::String(s.clone()),
            Cell::Int8(i) => Value::from(*i),
            Cell::Float8(f) => serde_json::Number::from_f64(*f).map_or(Value::Null, Value::Number),
            Cell::Bool(b) => Value::Bool(*b),
            Cell::Timestamp(ns) => Value::from(*ns),
            Cell::Uuid(u) => Value::String(uuid::Uuid::from_bytes(*u).to_string()),
            Cell::Json(text) => {
                serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string()))
            }
            Cell::Bytea(b) => Value::String(hex(b)),
        }
    }

    /// Bytes `encode` writes: the length word and the value.
    fn encoded_len(&self) -> usize {
        4 + match self {
            Cell::Null => 0,
            Cell::Text(s) => s.len(),
            Cell::Int8(_) | Cell::Float8(_) | Cell::Timestamp(_) => 8,
            Cell::Bool(_) => 1,
            Cell::Uuid(u) => u.len(),
            Cell::Json(text) => 1 + text.len(),
            Cell::Bytea(b) => b.len(),
        }
    }

    fn encode(&self, buf: &mut BytesMut) {
        match self {
            Cell::Null => buf.put_i32(-1),
            Cell::Text(s) => put_bytes(buf, s.as_bytes()),
            Cell::Int8(i) => {
                buf.put_i32(8);
                buf.put_i64(*i);
            }
            Cell::Float8(f) => {
                buf.put_i32(8);
                buf.put_f64(*f);
            }
            Cell::Bool(b) => {
                buf.put_i32(1);
                buf.put_u8(u8::from(*b));
            }
            Cell::Timestamp(ns) => {
                buf.put_i32(8);
                buf.put_i64(ns.div_euclid(1000) - PG_EPOCH_UNIX_SECS * 1_000_000);
            }
            Cell::Uuid(u) => put_bytes(buf, u),
            Cell::Json(text) => {
                buf.put_i32(text.len() as i32 + 1);
                buf.put_u8(1); // jsonb binary format version
                buf.put_slice(text.as_bytes());
            }
            Cell::Bytea(b) => put_bytes(buf, b),
        }
    }
}

fn put_bytes(buf: &mut BytesMut, bytes: &[u8]) {
    buf.put_i32(bytes.len() as i32);
    buf.put_slice(bytes);
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Encodes rows (all of the same width) as a complete binary COPY stream, into one buffer
/// of the exact size (measured first: growing a buffer of megabytes copies it and faults in
/// fresh pages each time).
pub fn encode_copy<'a, I>(rows: I) -> Bytes
where
    I: IntoIterator<Item = &'a [Cell]>,
    I::IntoIter: Clone,
{
    let rows = rows.into_iter();
    let size: usize = rows
        .clone()
        .map(|row| 2 + row.iter().map(Cell::encoded_len).sum::<usize>())
        .sum();
    let mut buf = BytesMut::with_capacity(MAGIC.len() + 8 + size + 2);
    buf.put_slice(MAGIC);
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension length
    for row in rows {
        buf.put_i16(row.len() as i16);
        for cell in row {
            cell.encode(&mut buf);
        }
    }
    buf.put_i16(-1);
    buf.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_binary_copy_format() {
        let rows = [vec![
            Cell::Int8(1),
            Cell::Null,
            Cell::Timestamp(946_684_800_000_001_000),
        ]];
        let data = encode_copy(rows.iter().map(Vec::as_slice));
        let mut expected = Vec::new();
        expected.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        expected.extend_from_slice(&3i16.to_be_bytes());
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&1i64.to_be_bytes());
        expected.extend_from_slice(&(-1i32).to_be_bytes());
        expected.extend_from_slice(&8i32.to_be_bytes());
        expected.extend_from_slice(&1i64.to_be_bytes());
        expected.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(&data[..], &expected[..]);
    }

    #[test]
    fn measures_exactly_what_it_writes() {
        let row = vec![
            Cell::Null,
            Cell::Text("camera é".into()),
            Cell::Int8(-1),
            Cell::Float8(0.5),
            Cell::Bool(true),
            Cell::Timestamp(1),
            Cell::Uuid([7; 16]),
            Cell::Json("{\"a\":1}".into()),
            Cell::Bytea(vec![1, 2, 3]),
        ];
        let rows = [row.clone(), row];
        let data = encode_copy(rows.iter().map(Vec::as_slice));
        let cells: usize = rows.iter().flatten().map(Cell::encoded_len).sum();
        assert_eq!(data.len(), MAGIC.len() + 8 + 2 * 2 + cells + 2);
        for cell in &rows[0] {
            let mut buf = BytesMut::new();
            cell.encode(&mut buf);
            assert_eq!(buf.len(), cell.encoded_len(), "{cell:?}");
        }
    }
}
