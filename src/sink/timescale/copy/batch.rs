//! [`CopyBatch`]: rows as a complete binary COPY stream, the unit the sink sends, splits
//! when PostgreSQL refuses a row, and decodes back into cells for the rejected-rows table.

use bytes::Bytes;

use super::{Cell, Rows, HEADER_LEN, PG_EPOCH_UNIX_SECS};
use crate::sink::timescale::mapping::ColumnType;

/// Rows as a complete binary COPY stream, ready to send (and to resend).
#[derive(Debug, Clone, PartialEq)]
pub struct CopyBatch {
    data: Bytes,
    /// Where each row ends in `data`.
    ends: Vec<usize>,
}

impl Rows {
    /// The rows as a complete COPY stream, without copying them.
    pub fn into_batch(mut self) -> CopyBatch {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        CopyBatch {
            data: self.buf.into(),
            ends: self.ends,
        }
    }
}

impl CopyBatch {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The COPY stream.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The rows before `at`, and the rest, as two batches.
    pub fn split_at(&self, at: usize) -> (CopyBatch, CopyBatch) {
        let part = |range: std::ops::Range<usize>| {
            let mut rows = Rows::default();
            for index in range {
                rows.push_encoded(row_bytes(&self.data, &self.ends, index));
            }
            rows.into_batch()
        };
        (part(0..at), part(at..self.len()))
    }

    /// Row `index` decoded back into cells of `types` (one per column), for the
    /// rejected-rows table. `None` if the row does not have that shape.
    pub fn decode_row(&self, index: usize, types: &[ColumnType]) -> Option<Vec<Cell>> {
        decode_row(row_bytes(&self.data, &self.ends, index), types)
    }
}

pub(super) fn row_bytes<'a>(buf: &'a [u8], ends: &[usize], index: usize) -> &'a [u8] {
    let start = match index {
        0 => HEADER_LEN,
        _ => ends[index - 1],
    };
    &buf[start..ends[index]]
}

fn decode_row(mut bytes: &[u8], types: &[ColumnType]) -> Option<Vec<Cell>> {
    let mut take = |n: usize| {
        let (head, tail) = bytes.split_at_checked(n)?;
        bytes = tail;
        Some(head)
    };
    let fields = i16::from_be_bytes(take(2)?.try_into().ok()?);
    if fields as usize != types.len() {
        return None;
    }
    let mut cells = Vec::with_capacity(types.len());
    for ty in types {
        let len = i32::from_be_bytes(take(4)?.try_into().ok()?);
        if len < 0 {
            cells.push(Cell::Null);
            continue;
        }
        let value = take(len as usize)?;
        let word = || value.try_into().ok().map(i64::from_be_bytes);
        cells.push(match ty {
            ColumnType::Text => Cell::Text(std::str::from_utf8(value).ok()?.to_owned()),
            ColumnType::Int8 => Cell::Int8(word()?),
            ColumnType::Float8 => Cell::Float8(f64::from_bits(word()? as u64)),
            ColumnType::Bool => Cell::Bool(<[u8; 1]>::try_from(value).ok()? != [0]),
            // Saturating: PostgreSQL refuses timestamps near the ends of i64, and those
            // rows are the ones read back.
            ColumnType::Timestamptz => Cell::Timestamp(
                word()?
                    .saturating_add(PG_EPOCH_UNIX_SECS * 1_000_000)
                    .saturating_mul(1000),
            ),
            ColumnType::Uuid => Cell::Uuid(value.try_into().ok()?),
            ColumnType::Jsonb => {
                let text = value.strip_prefix(&[1])?;
                Cell::Json(std::str::from_utf8(text).ok()?.into())
            }
            ColumnType::Bytea => Cell::Bytea(value.to_vec()),
        });
    }
    bytes.is_empty().then_some(cells)
}
