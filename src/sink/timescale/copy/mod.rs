//! Rows to PostgreSQL binary COPY data. Cells are encoded by hand (the formats are fixed and
//! simple) as rows are extracted, straight into the buffer a batch is sent from, so a retried
//! batch resends the same bytes.
//!
//! PostgreSQL's `text` and `jsonb` cannot hold U+0000. Every text and JSON cell is written
//! with each U+0000 replaced by [`NUL_REPLACEMENT`] (in JSON, in keys as in values, the
//! escape `\u0000` becomes `\ufffd`), so such a cell never makes PostgreSQL refuse a row. The
//! check is one `memchr` over the cell's bytes; only a cell that has one takes the slow path.

mod batch;
#[cfg(test)]
mod tests;

use batch::row_bytes;
pub use batch::CopyBatch;

const MAGIC: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Seconds from the Unix epoch to PostgreSQL's (2000-01-01).
const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

/// What each U+0000 in a text or JSON cell is written as: U+FFFD REPLACEMENT CHARACTER.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

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
    /// JSON text (see `Cell::json`).
    Json(Box<str>),
    Bytea(Vec<u8>),
}

impl Cell {
    /// A JSON cell from a `serde_json::Value`.
    pub fn json(value: &serde_json::Value) -> Cell {
        Cell::Json(value.to_string().into_boxed_str())
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
            Cell::Bytea(b) => Value::String(hex::encode(b)),
        }
    }
}

/// The stream header: signature, flags, header extension length.
const HEADER_LEN: usize = MAGIC.len() + 8;

/// Rows encoded in binary COPY format as they are extracted, back to back behind the
/// stream's header, so a batch is sent as it was built: no cell is allocated on its own, and
/// there is no second pass to encode them.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    buf: Vec<u8>,
    /// Where each row ends in `buf`.
    ends: Vec<usize>,
    /// U+0000 characters replaced in the rows written here since the last
    /// [`Rows::take_nul_replaced`] or [`Rows::clear`] (rows appended from other `Rows` do not
    /// bring theirs).
    nul_replaced: u64,
}

impl Default for Rows {
    fn default() -> Self {
        Rows::with_capacity(0, 0)
    }
}

impl Rows {
    /// No rows, with room for `rows` of them taking `bytes` in all.
    pub fn with_capacity(bytes: usize, rows: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_LEN + bytes + 2);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&[0; 8]); // flags, header extension length
        Rows {
            buf,
            ends: Vec::with_capacity(rows),
            nul_replaced: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes of row data.
    pub fn data_len(&self) -> usize {
        self.buf.len() - HEADER_LEN
    }

    /// Starts a row. Its cells are written through the returned [`RowWriter`]; the row counts
    /// once `finish` is called, and is taken back if the writer is dropped before.
    pub fn row(&mut self) -> RowWriter<'_> {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]); // field count, set by `finish`
        RowWriter {
            rows: self,
            start,
            fields: 0,
            nul_replaced: 0,
            finished: false,
        }
    }

    /// Appends a row of cells.
    pub fn push(&mut self, cells: &[Cell]) {
        let mut row = self.row();
        for cell in cells {
            row.cell(cell);
        }
        row.finish();
    }

    /// Appends every row of `other`.
    pub fn append(&mut self, other: &Rows) {
        let offset = self.buf.len() - HEADER_LEN;
        self.buf.extend_from_slice(&other.buf[HEADER_LEN..]);
        self.ends.extend(other.ends.iter().map(|end| end + offset));
    }

    /// Appends row `index` of `other`.
    pub fn append_row(&mut self, other: &Rows, index: usize) {
        self.push_encoded(row_bytes(&other.buf, &other.ends, index));
    }

    /// Appends one row already in COPY format.
    fn push_encoded(&mut self, row: &[u8]) {
        self.buf.extend_from_slice(row);
        self.ends.push(self.buf.len());
    }

    /// Empties the rows, keeping the memory.
    pub fn clear(&mut self) {
        self.buf.truncate(HEADER_LEN);
        self.ends.clear();
        self.nul_replaced = 0;
    }

    /// U+0000 characters replaced in the rows written here since the last call (or `clear`).
    pub fn take_nul_replaced(&mut self) -> u64 {
        std::mem::take(&mut self.nul_replaced)
    }
}

/// Writes the cells of one row (see [`Rows::row`]).
pub struct RowWriter<'a> {
    rows: &'a mut Rows,
    start: usize,
    fields: i16,
    /// U+0000 characters replaced in this row; they count once the row is finished.
    nul_replaced: u64,
    finished: bool,
}

impl RowWriter<'_> {
    fn value(&mut self, bytes: &[u8]) {
        self.fields += 1;
        let buf = &mut self.rows.buf;
        buf.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        buf.extend_from_slice(bytes);
    }

    pub fn null(&mut self) {
        self.fields += 1;
        self.rows.buf.extend_from_slice(&(-1i32).to_be_bytes());
    }

    /// A text value; each U+0000 in it is written as [`NUL_REPLACEMENT`].
    pub fn text(&mut self, text: &str) {
        let bytes = text.as_bytes();
        if has_nul(bytes) {
            self.text_replacing_nul(bytes);
        } else {
            self.value(bytes);
        }
    }

    /// `text`'s slow path. In UTF-8 a 0 byte is always U+0000 (no other character has one).
    #[cold]
    fn text_replacing_nul(&mut self, bytes: &[u8]) {
        let mut replacement = [0; 4];
        let replacement = NUL_REPLACEMENT.encode_utf8(&mut replacement).as_bytes();
        let nul = bytes.iter().filter(|&&b| b == 0).count();
        self.nul_replaced += nul as u64;
        self.fields += 1;
        let len = bytes.len() + nul * (replacement.len() - 1);
        let buf = &mut self.rows.buf;
        buf.extend_from_slice(&(len as i32).to_be_bytes());
        for (i, part) in bytes.split(|&b| b == 0).enumerate() {
            if i > 0 {
                buf.extend_from_slice(replacement);
            }
            buf.extend_from_slice(part);
        }
    }

    pub fn int8(&mut self, value: i64) {
        self.value(&value.to_be_bytes());
    }

    pub fn float8(&mut self, value: f64) {
        self.value(&value.to_be_bytes());
    }

    pub fn bool(&mut self, value: bool) {
        self.value(&[u8::from(value)]);
    }

    /// Nanoseconds since the Unix epoch (stored with microsecond precision).
    pub fn timestamp(&mut self, nanos: i64) {
        self.int8(nanos.div_euclid(1000) - PG_EPOCH_UNIX_SECS * 1_000_000);
    }

    pub fn uuid(&mut self, value: &[u8; 16]) {
        self.value(value);
    }

    pub fn bytea(&mut self, value: &[u8]) {
        self.value(value);
    }

    /// A jsonb value rendered by serde_json straight into the row. serde_json writes U+0000
    /// as the escape `\u0000`, which jsonb refuses: each becomes `\ufffd` ([`NUL_REPLACEMENT`]).
    #[inline]
    pub fn json(&mut self, value: &impl serde::Serialize) {
        self.fields += 1;
        let buf = &mut self.rows.buf;
        let at = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0, 1]); // length, set below; jsonb format version
        serde_json::to_writer(&mut *buf, value).expect("string keys; writing to memory");
        let len = (buf.len() - at - 4) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self.nul_replaced += replace_escaped_nul(&mut buf[at + 5..]);
    }

    /// A jsonb value from JSON text, with `\u0000` escapes replaced as in [`RowWriter::json`].
    pub fn json_text(&mut self, text: &str) {
        self.fields += 1;
        let buf = &mut self.rows.buf;
        buf.extend_from_slice(&(text.len() as i32 + 1).to_be_bytes());
        buf.push(1);
        let at = buf.len();
        buf.extend_from_slice(text.as_bytes());
        self.nul_replaced += replace_escaped_nul(&mut buf[at..]);
    }

    pub fn cell(&mut self, cell: &Cell) {
        match cell {
            Cell::Null => self.null(),
            Cell::Text(s) => self.text(s),
            Cell::Int8(i) => self.int8(*i),
            Cell::Float8(f) => self.float8(*f),
            Cell::Bool(b) => self.bool(*b),
            Cell::Timestamp(ns) => self.timestamp(*ns),
            Cell::Uuid(u) => self.uuid(u),
            Cell::Json(text) => self.json_text(text),
            Cell::Bytea(b) => self.bytea(b),
        }
    }

    /// Completes the row.
    pub fn finish(mut self) {
        let buf = &mut self.rows.buf;
        buf[self.start..self.start + 2].copy_from_slice(&self.fields.to_be_bytes());
        self.rows.ends.push(buf.len());
        self.rows.nul_replaced += self.nul_replaced;
        self.finished = true;
    }
}

/// Whether `bytes` holds a 0 byte, eight at a time. Text cells are mostly short, where this
/// beats `memchr` (whose setup is made for long haystacks) several times over.
#[inline]
fn has_nul(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Nonzero exactly when some byte of `word` is 0.
    let has_zero_byte = |word: u64| word.wrapping_sub(ONES) & !word & HIGHS != 0;
    let n = bytes.len();
    if n < 8 {
        return bytes.contains(&0);
    }
    let word = |at: usize| u64::from_ne_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let mut at = 0;
    while at + 8 < n {
        if has_zero_byte(word(at)) {
            return true;
        }
        at += 8;
    }
    has_zero_byte(word(n - 8))
}

/// Rewrites each `\u0000` escape of the JSON text `json` as `\ufffd` (same length, in place);
/// returns how many there were. Escapes are read from left to right, so the `\u0000` in an
/// escaped backslash followed by `u0000` (`\\u0000`) is left alone. JSON without a backslash,
/// the common case, costs one `memchr`.
fn replace_escaped_nul(json: &mut [u8]) -> u64 {
    let mut replaced = 0;
    let mut at = 0;
    while let Some(found) = memchr::memchr(b'\\', &json[at..]) {
        let escape = at + found;
        if json.get(escape + 1..escape + 6) == Some(&b"u0000"[..]) {
            json[escape + 2..escape + 6].copy_from_slice(b"fffd");
            replaced += 1;
        }
        // The escaped character; the hex digits of a `\u` escape hold no backslash.
        at = (escape + 2).min(json.len());
    }
    replaced
}

impl Drop for RowWriter<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.rows.buf.truncate(self.start);
        }
    }
}
