//! The views compared with `prost`'s decoding of real, damaged and hand-made requests.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1 as pb;
use opentelemetry_proto::tonic::logs::v1 as pb_logs;
use opentelemetry_proto::tonic::trace::v1 as pb_trace;
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::Signal;
use otelgate_cli::demo::generator::TelemetryGenerator;

fn kv(pair: &KeyValue<'_>) -> pb::KeyValue {
    pb::KeyValue {
        key: pair.key.into(),
        value: pair.value.as_ref().map(any),
    }
}

fn any(value: &AnyValue<'_>) -> pb::AnyValue {
    use pb::any_value::Value as P;
    pb::AnyValue {
        value: value.value.as_ref().map(|v| match v {
            Value::StringValue(s) => P::StringValue((*s).into()),
            Value::BoolValue(b) => P::BoolValue(*b),
            Value::IntValue(i) => P::IntValue(*i),
            Value::DoubleValue(d) => P::DoubleValue(*d),
            Value::BytesValue(b) => P::BytesValue(b.to_vec()),
            Value::ArrayValue(a) => P::ArrayValue(pb::ArrayValue {
                values: a.iter().map(any).collect(),
            }),
            Value::KvlistValue(l) => P::KvlistValue(pb::KeyValueList {
                values: l.iter().map(kv).collect(),
            }),
        }),
    }
}

/// (resource attributes, scope name, record) as Debug text: NaN equals NaN there.
type Seen = Vec<String>;

fn spans_by_view(body: &[u8]) -> std::result::Result<Seen, ViewError> {
    let mut seen = Vec::new();
    spans(body, |scope, s| {
        let span = pb_trace::Span {
            trace_id: s.trace_id.to_vec(),
            span_id: s.span_id.to_vec(),
            parent_span_id: s.parent_span_id.to_vec(),
            name: s.name.into(),
            kind: s.kind,
            start_time_unix_nano: s.start_time_unix_nano,
            end_time_unix_nano: s.end_time_unix_nano,
            attributes: s.attributes.iter().map(kv).collect(),
            events: s
                .events
                .iter()
                .map(|e| pb_trace::span::Event {
                    time_unix_nano: e.time_unix_nano,
                    name: e.name.into(),
                    attributes: s.event_attributes(e).iter().map(kv).collect(),
                    dropped_attributes_count: 0,
                })
                .collect(),
            status: s.status.as_ref().map(|st| pb_trace::Status {
                message: st.message.into(),
                code: st.code,
            }),
            ..Default::default()
        };
        let resource: Vec<_> = scope.resource.iter().map(kv).collect();
        seen.push(format!("{resource:?} {:?} {span:?}", scope.name));
    })?;
    Ok(seen)
}

fn spans_by_prost(body: &[u8]) -> Seen {
    let request = ExportTraceServiceRequest::decode(body).expect("decodable");
    let mut seen = Vec::new();
    for rs in request.resource_spans {
        let resource = rs.resource.map(|r| r.attributes).unwrap_or_default();
        for ss in rs.scope_spans {
            let scope = ss.scope.map(|s| s.name).unwrap_or_default();
            for span in ss.spans {
                let span = pb_trace::Span {
                    trace_state: String::new(),
                    flags: 0,
                    dropped_attributes_count: 0,
                    dropped_events_count: 0,
                    dropped_links_count: 0,
                    links: Vec::new(),
                    events: span
                        .events
                        .into_iter()
                        .map(|e| pb_trace::span::Event {
                            dropped_attributes_count: 0,
                            ..e
                        })
                        .collect(),
                    ..span
                };
                seen.push(format!("{resource:?} {scope:?} {span:?}"));
            }
        }
    }
    seen
}

fn logs_by_view(body: &[u8]) -> std::result::Result<Seen, ViewError> {
    let mut seen = Vec::new();
    log_records(body, |scope, l| {
        let log = pb_logs::LogRecord {
            time_unix_nano: l.time_unix_nano,
            observed_time_unix_nano: l.observed_time_unix_nano,
            severity_number: l.severity_number,
            severity_text: l.severity_text.into(),
            body: l.body.as_ref().map(any),
            attributes: l.attributes.iter().map(kv).collect(),
            trace_id: l.trace_id.to_vec(),
            span_id: l.span_id.to_vec(),
            event_name: l.event_name.into(),
            ..Default::default()
        };
        let resource: Vec<_> = scope.resource.iter().map(kv).collect();
        seen.push(format!("{resource:?} {:?} {log:?}", scope.name));
    })?;
    Ok(seen)
}

fn logs_by_prost(body: &[u8]) -> Seen {
    let request = ExportLogsServiceRequest::decode(body).expect("decodable");
    let mut seen = Vec::new();
    for rl in request.resource_logs {
        let resource = rl.resource.map(|r| r.attributes).unwrap_or_default();
        for sl in rl.scope_logs {
            let scope = sl.scope.map(|s| s.name).unwrap_or_default();
            for log in sl.log_records {
                let log = pb_logs::LogRecord {
                    flags: 0,
                    dropped_attributes_count: 0,
                    ..log
                };
                seen.push(format!("{resource:?} {scope:?} {log:?}"));
            }
        }
    }
    seen
}

/// Every request the receiver accepts, including damaged ones that still decode, reads
/// the same through the views as through `prost`.
#[test]
fn views_read_what_prost_decodes() {
    let mut generator = TelemetryGenerator::new(11);
    let corpus = [
        (Signal::Traces, generator.traces(6).0.encode_to_vec()),
        (Signal::Logs, generator.logs(6).0.encode_to_vec()),
        (
            Signal::Traces,
            include_bytes!(
                "../../../../tests/fixtures/otlp-sdk-payloads/traces_frames_detections_genai.pb"
            )
            .to_vec(),
        ),
        (
            Signal::Logs,
            include_bytes!("../../../../tests/fixtures/otlp-sdk-payloads/logs.pb").to_vec(),
        ),
    ];
    let mut rng = SmallRng::seed_from_u64(0x5eed_f1e5);
    let mut compared = 0;
    for (signal, body) in &corpus {
        // OTELGATE_WIRE_MUTATIONS raises the count for a longer search.
        let rounds = std::env::var("OTELGATE_WIRE_MUTATIONS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(1500);
        for round in 0..rounds {
            let mut damaged = body.clone();
            if round > 0 {
                for _ in 0..rng.random_range(1..3) {
                    let at = rng.random_range(0..damaged.len());
                    match rng.random_range(0..4) {
                        0 => damaged[at] ^= 1 << rng.random_range(0..8),
                        1 => damaged[at] = rng.random(),
                        2 => {
                            let end = (at + rng.random_range(1..48)).min(damaged.len());
                            let copy = damaged[at..end].to_vec();
                            damaged.splice(at..at, copy);
                        }
                        _ => damaged.truncate(at),
                    }
                    if damaged.is_empty() {
                        break;
                    }
                }
            }
            if signal.count_protobuf(&damaged).is_err() {
                continue;
            }
            compared += 1;
            match signal {
                Signal::Traces => assert_eq!(
                    spans_by_view(&damaged).expect("accepted, so readable"),
                    spans_by_prost(&damaged)
                ),
                _ => assert_eq!(
                    logs_by_view(&damaged).expect("accepted, so readable"),
                    logs_by_prost(&damaged)
                ),
            }
        }
    }
    assert!(
        compared > 1000,
        "only {compared} decodable requests compared"
    );
}

/// Attributes in the layout `key_value` reads directly, and near misses of it that must
/// take the general path, read as `prost` decodes them.
#[test]
fn attributes_read_like_prost_in_and_out_of_the_usual_layout() {
    use crate::signal::proto::encoding::{key, len_field as len};
    let varint = |tag: u32, value: u64| {
        let mut out = key(tag, 0);
        prost::encoding::encode_varint(value, &mut out);
        out
    };
    let double = |value: f64| [key(4, 1), value.to_le_bytes().to_vec()].concat();
    let long = "x".repeat(200);
    let values: Vec<Vec<u8>> = vec![
        len(1, b"text"),
        len(1, b""),
        len(1, long.as_bytes()),
        len(1, "größe 東京 🎥".as_bytes()),
        varint(2, 1),
        varint(2, 300),
        varint(3, 42),
        varint(3, -5i64 as u64),
        double(0.25),
        [len(1, b"a"), varint(3, 7)].concat(),
        [varint(3, 7), len(1, b"a")].concat(),
        [len(1, b"a"), key(9, 5), vec![0; 4]].concat(),
        len(5, &len(1, &len(1, b"nested"))),
        len(7, &[0, 1, 2]),
        Vec::new(),
    ];
    let mut attributes = Vec::new();
    for value in &values {
        attributes.push(len(9, &[len(1, b"k"), len(2, value)].concat()));
        attributes.push(len(9, &[len(1, long.as_bytes()), len(2, value)].concat()));
        attributes.push(len(
            9,
            &[len(1, "schlüssel".as_bytes()), len(2, value)].concat(),
        ));
        attributes.push(len(9, &[len(2, value), len(1, b"k")].concat()));
        attributes.push(len(
            9,
            &[len(1, b"k"), len(2, value), len(1, b"j")].concat(),
        ));
        attributes.push(len(
            9,
            &[len(1, b"k"), len(2, value), len(2, value)].concat(),
        ));
    }
    attributes.push(len(9, &len(1, b"only a key")));
    attributes.push(len(9, b""));
    // A span's ids, which validation requires.
    let ids = [len(1, &[1; 16]), len(2, &[2; 8])].concat();
    let body = len(1, &len(2, &len(2, &[ids, attributes.concat()].concat())));
    assert!(Signal::Traces.count_protobuf(&body).is_ok());
    assert_eq!(spans_by_view(&body).unwrap(), spans_by_prost(&body));
}

/// Merge rules: a message field seen twice merges, a oneof keeps the last variant and
/// merges a repeated message variant, unknown fields (groups too) are skipped.
#[test]
fn follows_the_merge_rules() {
    use crate::signal::proto::encoding::{key, len_field as len};
    let attribute = |value: &[u8]| len(9, &[len(1, b"k"), len(2, value)].concat());
    let span = [
        len(1, &[1; 16]),
        len(2, &[2; 8]),
        len(5, b"first"),
        len(15, &[key(3, 0), vec![2]].concat()),
        len(15, &len(2, b"message")),
        // kvlist, then another kvlist (merged), then string, then array twice (merged).
        attribute(
            &[
                len(6, &len(1, &len(1, b"a"))),
                len(6, &len(1, &len(1, b"b"))),
            ]
            .concat(),
        ),
        attribute(&[len(6, &len(1, &len(1, b"a"))), len(1, b"s")].concat()),
        attribute(
            &[
                len(5, &len(1, &len(1, b"x"))),
                len(5, &len(1, &len(1, b"y"))),
            ]
            .concat(),
        ),
        [key(99, 3), key(1, 0), vec![1], key(99, 4)].concat(),
        len(5, b"last"),
    ]
    .concat();
    let body = len(
        1,
        &[len(2, &len(2, &span)), len(1, &len(1, &len(1, b"svc")))].concat(),
    );
    assert!(Signal::Traces.count_protobuf(&body).is_ok());
    assert_eq!(spans_by_view(&body).unwrap(), spans_by_prost(&body));
    let mut names = Vec::new();
    spans(&body, |scope, span| {
        names.push(span.name);
        assert_eq!(
            scope.resource.len(),
            1,
            "the resource after its scopes applies"
        );
        assert_eq!(
            span.status.as_ref().map(|s| (s.code, s.message)),
            Some((2, "message"))
        );
    })
    .unwrap();
    assert_eq!(names, ["last"]);
}
