//! Rows encoded, decoded back, split and appended; U+0000 replaced.

use super::*;
use crate::sink::timescale::mapping::ColumnType;

#[test]
fn encodes_the_binary_copy_format() {
    let mut rows = Rows::default();
    rows.push(&[
        Cell::Int8(1),
        Cell::Null,
        Cell::Timestamp(946_684_800_000_001_000),
    ]);
    let data = rows.into_batch().data().clone();
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

fn every_type() -> (Vec<Cell>, Vec<ColumnType>) {
    let cells = vec![
        Cell::Null,
        Cell::Text("camera é".into()),
        Cell::Int8(-1),
        Cell::Float8(0.5),
        Cell::Bool(true),
        Cell::Timestamp(1_700_000_000_123_456_000),
        Cell::Uuid([7; 16]),
        Cell::Json("{\"a\":1}".into()),
        Cell::Bytea(vec![1, 2, 3]),
    ];
    use ColumnType as T;
    let types = vec![
        T::Text,
        T::Text,
        T::Int8,
        T::Float8,
        T::Bool,
        T::Timestamptz,
        T::Uuid,
        T::Jsonb,
        T::Bytea,
    ];
    (cells, types)
}

#[test]
fn rows_decode_back_to_their_cells() {
    let (cells, types) = every_type();
    let mut rows = Rows::default();
    rows.push(&cells);
    rows.push(&[Cell::Int8(2)]);
    let rows = rows.into_batch();
    assert_eq!(rows.decode_row(0, &types), Some(cells));
    assert_eq!(
        rows.decode_row(1, &[ColumnType::Int8]),
        Some(vec![Cell::Int8(2)])
    );
    // The extremes of a timestamp survive the round trip as far as microseconds allow.
    let mut extremes = Rows::default();
    extremes.push(&[Cell::Timestamp(i64::MIN), Cell::Timestamp(i64::MAX)]);
    let both = [ColumnType::Timestamptz; 2];
    assert_eq!(
        extremes.into_batch().decode_row(0, &both),
        Some(vec![
            Cell::Timestamp(i64::MIN),
            Cell::Timestamp(i64::MAX / 1000 * 1000)
        ])
    );
    // A row of another shape is not decoded as this one.
    assert_eq!(rows.decode_row(1, &types), None);
    assert_eq!(rows.decode_row(1, &[ColumnType::Bool]), None);
}

#[test]
fn json_is_written_in_place() {
    let mut rows = Rows::default();
    let mut row = rows.row();
    row.json(&serde_json::json!({ "k": [1, "two"] }));
    row.finish();
    assert_eq!(
        rows.into_batch().decode_row(0, &[ColumnType::Jsonb]),
        Some(vec![Cell::Json("{\"k\":[1,\"two\"]}".into())])
    );
}

/// A cell written by a row writer.
enum Written<'a> {
    Text(&'a str),
    Json(serde_json::Value),
    JsonText(&'a str),
}

/// Writes `cell` as the only cell of a row and checks what PostgreSQL would read: text as
/// it is, JSON once parsed; and how many U+0000 were replaced.
#[track_caller]
fn check_nul(cell: Written<'_>, expected: serde_json::Value, replaced: u64) {
    let mut rows = Rows::default();
    let mut row = rows.row();
    let ty = match &cell {
        Written::Text(text) => {
            row.text(text);
            ColumnType::Text
        }
        Written::Json(value) => {
            row.json(value);
            ColumnType::Jsonb
        }
        Written::JsonText(text) => {
            row.cell(&Cell::Json((*text).into()));
            ColumnType::Jsonb
        }
    };
    row.finish();
    assert_eq!(rows.take_nul_replaced(), replaced);
    assert_eq!(rows.take_nul_replaced(), 0, "taken");
    let cells = rows.into_batch().decode_row(0, &[ty]).expect("one cell");
    let read = match &cells[0] {
        Cell::Text(text) => {
            assert!(!text.contains('\0'));
            serde_json::Value::String(text.clone())
        }
        Cell::Json(text) => serde_json::from_str(text).expect("valid JSON"),
        other => panic!("{other:?}"),
    };
    assert_eq!(read, expected);
}

#[test]
fn nul_in_text_and_json_cells_is_written_as_the_replacement_character() {
    use serde_json::json;
    use Written::*;
    let r = NUL_REPLACEMENT;
    check_nul(Text("camera 7"), json!("camera 7"), 0);
    check_nul(Text(""), json!(""), 0);
    check_nul(Text("a\0b"), json!(format!("a{r}b")), 1);
    check_nul(Text("\0\0é\0"), json!(format!("{r}{r}é{r}")), 3);
    check_nul(Json(json!({ "k": "v" })), json!({ "k": "v" }), 0);
    check_nul(
        Json(json!({ "k": "a\0b" })),
        json!({ "k": format!("a{r}b") }),
        1,
    );
    check_nul(
        Json(json!({ "k\0": ["\0", 1] })),
        json!({ format!("k{r}"): [r.to_string(), 1] }),
        2,
    );
    // Not a NUL: a backslash followed by `u0000`, and an escaped backslash before a NUL.
    check_nul(Json(json!("\\u0000")), json!("\\u0000"), 0);
    check_nul(Json(json!("\\\0")), json!(format!("\\{r}")), 1);
    check_nul(
        JsonText(r#"{"a\u0000":"\u0000\n"}"#),
        json!({ format!("a{r}"): format!("{r}\n") }),
        2,
    );
    check_nul(JsonText(r#""\\u0000""#), json!("\\u0000"), 0);
}

#[test]
fn has_nul_finds_a_zero_byte_anywhere() {
    for n in 0..40 {
        let clean = vec![b'a'; n];
        assert!(!has_nul(&clean), "{n}");
        for at in 0..n {
            let mut bytes = clean.clone();
            bytes[at] = 0;
            assert!(has_nul(&bytes), "{n} {at}");
        }
    }
    // Bytes that differ from 0 by one bit or by borrowing are not zeros.
    assert!(!has_nul(&[
        0x80, 0x01, 0xff, 0x7f, 0x81, 0x01, 0x80, 0x01, 0x01
    ]));
}

#[test]
fn nul_replaced_in_an_unfinished_row_does_not_count() {
    let mut rows = Rows::default();
    let mut row = rows.row();
    row.text("a\0");
    drop(row);
    rows.push(&[Cell::Text("\0".into())]);
    assert_eq!(rows.take_nul_replaced(), 1);
    rows.push(&[Cell::Text("\0".into())]);
    rows.clear();
    assert_eq!(rows.take_nul_replaced(), 0);
}

#[test]
fn an_unfinished_row_is_taken_back() {
    let mut rows = Rows::default();
    rows.push(&[Cell::Int8(1)]);
    let before = rows.clone();
    let mut row = rows.row();
    row.text("half");
    drop(row);
    assert_eq!(rows, before);
}

#[test]
fn batches_split_and_rows_append() {
    let (cells, types) = every_type();
    let mut rows = Rows::default();
    for i in 0..5 {
        let mut row = cells.clone();
        row[2] = Cell::Int8(i);
        rows.push(&row);
    }
    let whole = rows.clone().into_batch();
    let (left, right) = whole.split_at(2);
    assert_eq!((left.len(), right.len()), (2, 3));
    assert_eq!(left.decode_row(1, &types), whole.decode_row(1, &types));
    assert_eq!(right.decode_row(0, &types), whole.decode_row(2, &types));
    let mut joined = Rows::default();
    joined.append(&rows);
    joined.append(&rows);
    let mut picked = Rows::default();
    picked.append_row(&joined, 7);
    assert_eq!(
        picked.into_batch().decode_row(0, &types),
        whole.decode_row(2, &types)
    );
    let joined = joined.into_batch();
    assert_eq!(joined.len(), 10);
    assert_eq!(joined.decode_row(9, &types), whole.decode_row(4, &types));
    // One stream: header, ten rows, trailer.
    let row_bytes = whole.data().len() - HEADER_LEN - 2;
    assert_eq!(joined.data().len(), HEADER_LEN + 2 * row_bytes + 2);
}
