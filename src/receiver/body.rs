//! Request bodies as both transports read them: collected up to a size limit, then
//! decompressed up to the same limit. Decompression accepts exactly what the formats allow:
//! every member of a multi-member gzip stream (what `cat a.gz b.gz` makes) and every frame of
//! a zstd stream, and nothing after the last one, so a body is never acknowledged with part
//! of its data.

use std::io::Read;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::limits::BodyLimitError;
use super::IngestError;

/// A body's compression, from `Content-Encoding` or `grpc-encoding`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Identity,
    Gzip,
    Zstd,
}

impl Compression {
    /// Parses an encoding header's value; absent, empty and `identity` mean none. `header`
    /// names the header in the refusal of an unknown encoding.
    pub fn from_header(header: &str, value: Option<&str>) -> Result<Self, IngestError> {
        match value.map(str::trim) {
            None | Some("") => Ok(Compression::Identity),
            Some(e) if e.eq_ignore_ascii_case("identity") => Ok(Compression::Identity),
            Some(e) if e.eq_ignore_ascii_case("gzip") => Ok(Compression::Gzip),
            Some(e) if e.eq_ignore_ascii_case("zstd") => Ok(Compression::Zstd),
            Some(other) => Err(IngestError::Unsupported(format!(
                "unsupported {header} `{other}`; use gzip, zstd or none"
            ))),
        }
    }
}

/// Collects a request body, refusing it as too large as soon as it passes `limit` bytes.
pub async fn read_limited(body: Body, limit: usize) -> Result<Bytes, IngestError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.downcast_ref::<LengthLimitError>().is_some() => {
            Err(IngestError::TooLarge { limit })
        }
        Err(error) => match BodyLimitError::find(&*error) {
            Some(BodyLimitError::Timeout { limit, .. }) => {
                Err(IngestError::BodyTimeout { limit: *limit })
            }
            Some(BodyLimitError::OverBudget {
                limit, retry_after, ..
            }) => Err(IngestError::Throttled {
                limit: *limit,
                retry_after: *retry_after,
            }),
            None => Err(IngestError::Invalid(format!(
                "cannot read request body: {error}"
            ))),
        },
    }
}

/// Decompresses `body`, producing at most `limit` bytes: a larger result is refused as too
/// large once `limit + 1` bytes are out, so a compression bomb costs no more than that.
pub fn decompress(
    compression: Compression,
    body: Bytes,
    limit: usize,
) -> Result<Bytes, IngestError> {
    let decode = match compression {
        Compression::Identity if body.len() > limit => return Err(IngestError::TooLarge { limit }),
        Compression::Identity => return Ok(body),
        Compression::Gzip => gunzip,
        Compression::Zstd => unzstd,
    };
    let mut out = Vec::with_capacity((body.len() * 4).min(limit + 1));
    decode(&body, limit, &mut out)?;
    Ok(out.into())
}

/// Reads `reader` to its end into `out`, refusing the body once `out` passes `limit`.
fn read_within(reader: impl Read, limit: usize, out: &mut Vec<u8>) -> Result<(), ReadFailure> {
    let budget = (limit + 1).saturating_sub(out.len()) as u64;
    reader
        .take(budget)
        .read_to_end(out)
        .map_err(ReadFailure::Io)?;
    if out.len() > limit {
        return Err(ReadFailure::TooLarge);
    }
    Ok(())
}

enum ReadFailure {
    TooLarge,
    Io(std::io::Error),
}

/// Every member of a gzip stream, in order; anything after the last member that is not
/// another member is refused.
fn gunzip(body: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), IngestError> {
    let mut rest = body;
    loop {
        let offset = body.len() - rest.len();
        let mut member = flate2::bufread::GzDecoder::new(rest);
        read_within(&mut member, limit, out).map_err(|failure| match failure {
            ReadFailure::TooLarge => IngestError::TooLarge { limit },
            ReadFailure::Io(e) if offset == 0 => {
                IngestError::Invalid(format!("cannot decompress gzip body: {e}"))
            }
            ReadFailure::Io(e) => IngestError::Invalid(format!(
                "cannot decompress gzip body: the {} bytes after the gzip member that ends at \
                 byte {offset} are not a gzip member ({e})",
                body.len() - offset
            )),
        })?;
        rest = member.into_inner();
        if rest.is_empty() {
            return Ok(());
        }
    }
}

/// Every frame of a zstd stream (skippable frames included), in order; anything after the
/// last frame that is not a whole frame is refused.
fn unzstd(body: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), IngestError> {
    let mut rest = body;
    while !rest.is_empty() {
        let offset = body.len() - rest.len();
        let not_a_frame = |reason: String| {
            IngestError::Invalid(if offset == 0 {
                format!("cannot decompress zstd body: {reason}")
            } else {
                format!(
                    "cannot decompress zstd body: the {} bytes after the zstd frame that ends \
                     at byte {offset} are not a zstd frame ({reason})",
                    rest.len()
                )
            })
        };
        let size = zstd::zstd_safe::find_frame_compressed_size(rest)
            .map_err(|code| not_a_frame(zstd::zstd_safe::get_error_name(code).to_owned()))?;
        let (frame, tail) = rest.split_at(size);
        let decoder = zstd::stream::read::Decoder::with_buffer(frame)
            .map_err(|e| not_a_frame(e.to_string()))?
            .single_frame();
        read_within(decoder, limit, out).map_err(|failure| match failure {
            ReadFailure::TooLarge => IngestError::TooLarge { limit },
            ReadFailure::Io(e) => not_a_frame(e.to_string()),
        })?;
        rest = tail;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use super::*;

    const LIMIT: usize = 1000;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn zstd(data: &[u8]) -> Vec<u8> {
        zstd::encode_all(data, 3).unwrap()
    }

    /// A zstd skippable frame: magic 0x184D2A50, a 4-byte length, then that many bytes.
    fn skippable(payload: &[u8]) -> Vec<u8> {
        let mut frame = 0x184D_2A50u32.to_le_bytes().to_vec();
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(payload);
        frame
    }

    enum Expect {
        Ok(&'static [u8]),
        TooLarge,
        Invalid(&'static str),
    }

    #[track_caller]
    fn check(name: &str, compression: Compression, body: Vec<u8>, expect: Expect) {
        let result = decompress(compression, body.into(), LIMIT);
        match (expect, result) {
            (Expect::Ok(want), Ok(got)) => assert_eq!(&got[..], want, "{name}"),
            (Expect::TooLarge, Err(IngestError::TooLarge { limit: LIMIT })) => {}
            (Expect::Invalid(text), Err(IngestError::Invalid(message))) => {
                assert!(message.contains(text), "{name}: {message}")
            }
            (_, other) => panic!("{name}: unexpected {other:?}"),
        }
    }

    #[test]
    fn decompression_takes_every_member_and_frame_and_nothing_after() {
        use Compression::{Gzip, Identity, Zstd};
        let cases: Vec<(&str, Compression, Vec<u8>, Expect)> = vec![
            (
                "identity",
                Identity,
                b"hello".to_vec(),
                Expect::Ok(b"hello"),
            ),
            (
                "identity too large",
                Identity,
                vec![0; LIMIT + 1],
                Expect::TooLarge,
            ),
            ("gzip", Gzip, gzip(b"hello"), Expect::Ok(b"hello")),
            (
                "two gzip members",
                Gzip,
                [gzip(b"hello "), gzip(b"world")].concat(),
                Expect::Ok(b"hello world"),
            ),
            (
                "three gzip members, one empty",
                Gzip,
                [gzip(b"a"), gzip(b""), gzip(b"b")].concat(),
                Expect::Ok(b"ab"),
            ),
            (
                "gzip then garbage",
                Gzip,
                [gzip(b"hello"), b"garbage".to_vec()].concat(),
                Expect::Invalid("the 7 bytes after the gzip member that ends at byte"),
            ),
            (
                "gzip then zeros",
                Gzip,
                [gzip(b"hello"), vec![0; 4]].concat(),
                Expect::Invalid("are not a gzip member"),
            ),
            (
                "gzip then a cut member",
                Gzip,
                [gzip(b"hello"), gzip(b"world")[..12].to_vec()].concat(),
                Expect::Invalid("are not a gzip member"),
            ),
            (
                "cut gzip",
                Gzip,
                gzip(b"hello")[..10].to_vec(),
                Expect::Invalid("cannot decompress gzip body"),
            ),
            (
                "not gzip",
                Gzip,
                b"not gzip".to_vec(),
                Expect::Invalid("cannot decompress gzip body"),
            ),
            (
                "gzip members together over the limit",
                Gzip,
                [gzip(&[1; 600]), gzip(&[2; 600])].concat(),
                Expect::TooLarge,
            ),
            ("zstd", Zstd, zstd(b"hello"), Expect::Ok(b"hello")),
            (
                "two zstd frames",
                Zstd,
                [zstd(b"hello "), zstd(b"world")].concat(),
                Expect::Ok(b"hello world"),
            ),
            (
                "zstd with a skippable frame",
                Zstd,
                [zstd(b"a"), skippable(b"meta"), zstd(b"b")].concat(),
                Expect::Ok(b"ab"),
            ),
            (
                "zstd then garbage",
                Zstd,
                [zstd(b"hello"), b"garbage".to_vec()].concat(),
                Expect::Invalid("the 7 bytes after the zstd frame that ends at byte"),
            ),
            (
                "zstd then a cut frame",
                Zstd,
                [zstd(b"hello"), zstd(b"world")[..6].to_vec()].concat(),
                Expect::Invalid("are not a zstd frame"),
            ),
            (
                "not zstd",
                Zstd,
                b"not zstd".to_vec(),
                Expect::Invalid("cannot decompress zstd body"),
            ),
            (
                "zstd frames together over the limit",
                Zstd,
                [zstd(&[1; 600]), zstd(&[2; 600])].concat(),
                Expect::TooLarge,
            ),
        ];
        for (name, compression, body, expect) in cases {
            check(name, compression, body, expect);
        }
    }

    /// Bombs stop at the limit, in one member or spread over many, and quickly.
    #[test]
    fn compression_bombs_stop_at_the_limit() {
        let one = gzip(&vec![0u8; 10_000_000]);
        assert!(one.len() < 20_000);
        let member = gzip(&vec![0u8; 100_000]);
        let many: Vec<u8> = std::iter::repeat_n(&member[..], 100)
            .flatten()
            .copied()
            .collect();
        let zstd_bomb = zstd(&vec![0u8; 10_000_000]);
        for (name, compression, body) in [
            ("gzip", Compression::Gzip, one),
            ("gzip members", Compression::Gzip, many),
            ("zstd", Compression::Zstd, zstd_bomb),
        ] {
            let started = Instant::now();
            check(name, compression, body, Expect::TooLarge);
            assert!(
                started.elapsed() < Duration::from_millis(100),
                "{name}: {:?}",
                started.elapsed()
            );
        }
    }

    #[test]
    fn encodings_are_parsed_from_headers() {
        for (value, expected) in [
            (None, Some(Compression::Identity)),
            (Some(""), Some(Compression::Identity)),
            (Some("identity"), Some(Compression::Identity)),
            (Some(" GZIP "), Some(Compression::Gzip)),
            (Some("zstd"), Some(Compression::Zstd)),
            (Some("br"), None),
        ] {
            let parsed = Compression::from_header("Content-Encoding", value);
            match (expected, parsed) {
                (Some(want), Ok(got)) => assert_eq!(want, got, "{value:?}"),
                (None, Err(IngestError::Unsupported(message))) => {
                    assert!(message.contains("Content-Encoding `br`"), "{message}")
                }
                (_, other) => panic!("{value:?}: {other:?}"),
            }
        }
    }
}
