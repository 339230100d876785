//! Trace requests for the load generator, built once and re-sent with fresh ids, times and
//! frame numbers. Building and encoding each request from scratch cost the load generator
//! more CPU than the gateway spent validating it; on a shared machine that CPU is taken
//! from the gateway and PostgreSQL being measured. A template is an encoded request plus the
//! byte offsets of what must differ between sends, so a send is one copy and a few hundred
//! in-place writes, and every request is still unique: new trace and span ids, timestamps
//! moved to now, and new frame numbers in `frame.id` and `frame.sequence`.

use bytes::{Bytes, BytesMut};
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::demo::generator::TelemetryGenerator;

/// Frame numbers stay within 9 decimal digits and a 5-byte varint: [2^28, 10^9).
const FIRST_SEQUENCE: i64 = 1 << 28;
const LAST_SEQUENCE: i64 = 999_999_999;
/// Templates per connection, sent in turn (each with its own random shape).
const TEMPLATES: usize = 8;

/// One encoded request and where to patch it.
#[derive(Debug)]
struct Template {
    body: Vec<u8>,
    /// End time the template was built with; times move by `now - end`.
    end: u64,
    /// Offsets of fixed64 timestamps (span start and end, event times).
    times: Vec<usize>,
    /// (offset, length) of trace and span ids.
    ids: Vec<(usize, usize)>,
    /// Per frame: offset of the 9 digits in `frame.id`, offset of the 5-byte
    /// `frame.sequence` varint.
    frames: Vec<(usize, usize)>,
    spans: u64,
}

/// Templates of one connection and the state that keeps its requests unique.
#[derive(Debug)]
pub struct TraceTemplates {
    templates: Vec<Template>,
    next: usize,
    sequence: i64,
    rng: SmallRng,
}

impl TraceTemplates {
    /// Templates of `items` items (frames, or spans of the plain shape) each, from
    /// `generator`; `seed` picks the ids.
    pub fn new(generator: TelemetryGenerator, items: usize, seed: u64) -> Self {
        let mut generator = generator.with_sequence(FIRST_SEQUENCE);
        let frames = generator.shape().frames(items);
        let templates = (0..TEMPLATES)
            .map(|_| {
                let (request, spans) = generator.traces(items);
                let end = request.resource_spans[0].scope_spans[0].spans[0].end_time_unix_nano;
                let body = request.encode_to_vec();
                let mut template = Template {
                    body: Vec::new(),
                    end,
                    times: Vec::new(),
                    ids: Vec::new(),
                    frames: Vec::new(),
                    spans,
                };
                locate(&body, &mut template);
                assert_eq!(template.frames.len(), frames, "every frame located");
                template.body = body;
                template
            })
            .collect();
        TraceTemplates {
            templates,
            next: 0,
            sequence: FIRST_SEQUENCE,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The next request, as if built at `now_nanos`, with its span count.
    pub fn next(&mut self, now_nanos: u64) -> (Bytes, u64) {
        let template = &self.templates[self.next];
        self.next = (self.next + 1) % self.templates.len();
        let mut body = BytesMut::from(&template.body[..]);
        let shift = now_nanos.wrapping_sub(template.end);
        for &at in &template.times {
            let time = u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
            body[at..at + 8].copy_from_slice(&time.wrapping_add(shift).to_le_bytes());
        }
        for &(at, len) in &template.ids {
            self.rng.fill(&mut body[at..at + len]);
        }
        for &(digits, varint) in &template.frames {
            self.sequence += 1;
            if self.sequence > LAST_SEQUENCE {
                self.sequence = FIRST_SEQUENCE + 1;
            }
            let mut n = self.sequence as u64;
            for digit in body[digits..digits + 9].iter_mut().rev() {
                *digit = b'0' + (n % 10) as u8;
                n /= 10;
            }
            let mut n = self.sequence as u64;
            for (i, byte) in body[varint..varint + 5].iter_mut().enumerate() {
                *byte = (n & 0x7f) as u8 | if i < 4 { 0x80 } else { 0 };
                n >>= 7;
            }
        }
        (body.freeze(), template.spans)
    }
}

/// A field of an encoded message: number, wire type, and where its value starts and ends
/// (for length-delimited fields, the content after the length).
type Field = (u64, u64, usize, usize);

/// The fields of the message at `from..to` of `body` (a request this crate encoded).
fn fields(body: &[u8], from: usize, to: usize) -> Vec<Field> {
    fn varint(body: &[u8], at: &mut usize) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let byte = body[*at];
            *at += 1;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        value
    }
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        let key = varint(body, &mut at);
        let (tag, wire_type) = (key >> 3, key & 7);
        let mut start = at;
        let end = match wire_type {
            0 => {
                varint(body, &mut at);
                at
            }
            1 => at + 8,
            2 => {
                let len = varint(body, &mut at) as usize;
                start = at;
                at + len
            }
            5 => at + 4,
            other => panic!("wire type {other} in a generated request"),
        };
        out.push((tag, wire_type, start, end));
        at = end;
    }
    out
}

/// The values of field `tag` of the message at `from..to`, as (start, end).
fn nested(body: &[u8], from: usize, to: usize, tag: u64) -> Vec<(usize, usize)> {
    fields(body, from, to)
        .into_iter()
        .filter(|f| f.0 == tag)
        .map(|f| (f.2, f.3))
        .collect()
}

/// Finds the patchable fields of an encoded `ExportTraceServiceRequest`.
fn locate(body: &[u8], template: &mut Template) {
    for (rs, rs_end) in nested(body, 0, body.len(), 1) {
        for (ss, ss_end) in nested(body, rs, rs_end, 2) {
            for (span, span_end) in nested(body, ss, ss_end, 2) {
                for (tag, _, start, end) in fields(body, span, span_end) {
                    match tag {
                        1 | 2 => template.ids.push((start, end - start)),
                        7 | 8 => template.times.push(start),
                        9 => locate_attribute(body, start, end, template),
                        11 => template
                            .times
                            .extend(nested(body, start, end, 1).into_iter().map(|t| t.0)),
                        _ => {}
                    }
                }
            }
        }
    }
    assert!(
        template.frames.iter().all(|f| f.1 != usize::MAX),
        "frame.sequence located for every frame.id"
    );
}

/// Notes `frame.id` and `frame.sequence` of a span attribute (a `KeyValue` at start..end).
fn locate_attribute(body: &[u8], start: usize, end: usize, template: &mut Template) {
    let kv = fields(body, start, end);
    let key = kv.iter().find(|f| f.0 == 1).map(|f| &body[f.2..f.3]);
    let Some(&(_, _, value, value_end)) = kv.iter().find(|f| f.0 == 2) else {
        return;
    };
    let (_, _, s, e) = fields(body, value, value_end)[0];
    match key {
        Some(b"frame.id") => {
            assert_eq!(e - s, 16, "frame.id is cam-NN-<9 digits>");
            template.frames.push((s + 7, usize::MAX));
        }
        Some(b"frame.sequence") => {
            assert_eq!(e - s, 5, "frame.sequence is a 5-byte varint");
            let frame = template.frames.last_mut().expect("frame.id comes first");
            frame.1 = s;
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::trace::v1::Span;
    use otelgate::Signal;

    use super::*;
    use crate::demo::generator::TraceShape;

    fn attribute<'a>(span: &'a Span, key: &str) -> &'a Value {
        span.attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref()?.value.as_ref())
            .expect("attribute present")
    }

    #[test]
    fn every_send_is_a_valid_request_with_new_ids_times_and_frame_numbers() {
        let mut templates = TraceTemplates::new(TelemetryGenerator::new(3), 20, 9);
        let mut ids = HashSet::new();
        let mut sequences = HashSet::new();
        let base = 1_900_000_000_000_000_000u64;
        for round in 0..(TEMPLATES as u64 * 2) {
            let now = base + round * 1_000_000_000;
            let (body, spans) = templates.next(now);
            assert_eq!(Signal::Traces.count_protobuf(&body).unwrap(), spans);
            let request = ExportTraceServiceRequest::decode(body).expect("valid protobuf");
            let all = &request.resource_spans[0].scope_spans[0].spans;
            assert_eq!(all.len() as u64, spans);
            for span in all {
                assert_eq!(span.end_time_unix_nano, now, "times moved to the send time");
                assert!(span.start_time_unix_nano < now);
                for event in &span.events {
                    assert!(event.time_unix_nano >= span.start_time_unix_nano);
                }
                assert!(ids.insert(span.span_id.clone()), "span ids are fresh");
                if span.name != "frame.process" {
                    continue;
                }
                let Value::IntValue(sequence) = attribute(span, "frame.sequence") else {
                    panic!("frame.sequence is an int")
                };
                let Value::StringValue(frame_id) = attribute(span, "frame.id") else {
                    panic!("frame.id is a string")
                };
                assert_eq!(frame_id[7..], format!("{sequence:09}"));
                assert!(sequences.insert(*sequence), "frame numbers are fresh");
            }
        }
        assert_eq!(sequences.len(), 20 * TEMPLATES * 2);
    }

    #[test]
    fn shapes_hold_what_they_promise() {
        let now = 1_900_000_000_000_000_000u64;
        let generator = TelemetryGenerator::new(5).with_shape(TraceShape::Frames);
        let (body, spans) = TraceTemplates::new(generator, 128, 1).next(now);
        assert_eq!(spans, 128);
        let request = ExportTraceServiceRequest::decode(body).expect("valid protobuf");
        for span in &request.resource_spans[0].scope_spans[0].spans {
            assert_eq!(span.name, "frame.process");
            assert_eq!(
                span.events.len(),
                3,
                "exactly 3 detections: 4 rows per frame"
            );
        }

        let generator = TelemetryGenerator::new(5).with_shape(TraceShape::Spans);
        let mut templates = TraceTemplates::new(generator, 512, 1);
        let (first, spans) = templates.next(now);
        let (second, _) = templates.next(now);
        assert_eq!(spans, 512);
        assert_eq!(Signal::Traces.count_protobuf(&first).unwrap(), 512);
        let request = ExportTraceServiceRequest::decode(first).expect("valid protobuf");
        let all = &request.resource_spans[0].scope_spans[0].spans;
        assert!(all
            .iter()
            .all(|s| s.events.is_empty() && s.name.starts_with("GET /")));
        let again = ExportTraceServiceRequest::decode(second).expect("valid protobuf");
        assert_ne!(
            all[0].span_id, again.resource_spans[0].scope_spans[0].spans[0].span_id,
            "plain spans get fresh ids too"
        );
    }
}
