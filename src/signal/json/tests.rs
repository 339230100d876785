use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value as Json;

use super::table::{fields, Presence, Ty};
use super::to_protobuf;
use crate::signal::schema::{self, Kind, Msg};
use crate::signal::testing::{corpus, reference};
use crate::Signal;

mod documents;
mod random;

const ALL_MESSAGES: [Msg; 34] = [
    Msg::ExportTraces,
    Msg::ResourceSpans,
    Msg::ScopeSpans,
    Msg::Span,
    Msg::Event,
    Msg::Link,
    Msg::Status,
    Msg::ExportLogs,
    Msg::ResourceLogs,
    Msg::ScopeLogs,
    Msg::LogRecord,
    Msg::ExportMetrics,
    Msg::ResourceMetrics,
    Msg::ScopeMetrics,
    Msg::Metric,
    Msg::Gauge,
    Msg::Sum,
    Msg::Histogram,
    Msg::ExponentialHistogram,
    Msg::Summary,
    Msg::NumberDataPoint,
    Msg::HistogramDataPoint,
    Msg::ExponentialHistogramDataPoint,
    Msg::Buckets,
    Msg::SummaryDataPoint,
    Msg::ValueAtQuantile,
    Msg::Exemplar,
    Msg::Resource,
    Msg::EntityRef,
    Msg::InstrumentationScope,
    Msg::KeyValue,
    Msg::AnyValue,
    Msg::ArrayValue,
    Msg::KeyValueList,
];

fn request(signal: Signal) -> Msg {
    match signal {
        Signal::Traces => Msg::ExportTraces,
        Signal::Metrics => Msg::ExportMetrics,
        Signal::Logs => Msg::ExportLogs,
    }
}

fn camel_case(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.push(c.to_ascii_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// The JSON table and the protobuf walker's table describe the same fields: same tags,
/// lowerCamelCase of the same names, compatible types, the same id rules.
#[test]
fn the_json_table_agrees_with_the_wire_table() {
    for msg in ALL_MESSAGES {
        let json_fields = fields(msg);
        for field in json_fields {
            let (name, kind) = schema::field(msg, field.tag)
                .unwrap_or_else(|| panic!("{msg:?}.{}: no tag {}", field.json, field.tag));
            assert_eq!(camel_case(name), field.json, "{msg:?} tag {}", field.tag);
            let compatible = match (field.ty, field.repeated, kind) {
                (
                    Ty::Bool | Ty::Int32 | Ty::Sint32 | Ty::Uint32 | Ty::Int64,
                    false,
                    Kind::Varint,
                ) => true,
                (Ty::Fixed32, false, Kind::Fixed32) => true,
                (Ty::Fixed64 | Ty::Sfixed64 | Ty::Double, false, Kind::Fixed64) => true,
                (Ty::Fixed64 | Ty::Double, true, Kind::RepeatedFixed64) => true,
                (Ty::Uint64, true, Kind::RepeatedVarint) => true,
                (Ty::Str, _, Kind::Str) => true,
                (Ty::Bytes, false, Kind::Bytes) => true,
                (Ty::Id(a), false, Kind::Id(b)) => a == b,
                (
                    Ty::Message(a),
                    repeated,
                    Kind::Message {
                        msg: b,
                        repeated: r,
                        ..
                    },
                ) => a == b && repeated == r,
                _ => false,
            };
            assert!(
                compatible,
                "{msg:?}.{}: {:?} vs {kind:?}",
                field.json, field.ty
            );
            if field.presence != Presence::Implicit {
                assert!(!field.repeated, "{msg:?}.{}", field.json);
            }
        }
        for tag in 1..64 {
            if schema::field(msg, tag).is_some() {
                assert!(
                    json_fields.iter().any(|f| f.tag == tag),
                    "{msg:?}: tag {tag} missing from the JSON table"
                );
            }
        }
    }
}

fn traces(body: &[u8]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(body).expect("decodes")
}

/// opentelemetry-proto writes an exemplar's value nested, as `"value": {"asInt": 5}`, where
/// OTLP/JSON has `"asInt": 5` in the exemplar (the nested form is an unknown key, skipped);
/// this moves it up.
fn lift_exemplar_values(json: &mut Json) {
    match json {
        Json::Object(object) => {
            if let Some(Json::Array(exemplars)) = object.get_mut("exemplars") {
                for exemplar in exemplars.iter_mut().filter_map(Json::as_object_mut) {
                    if let Some(Json::Object(value)) = exemplar.remove("value") {
                        exemplar.extend(value);
                    }
                }
            }
            object.values_mut().for_each(lift_exemplar_values);
        }
        Json::Array(array) => array.iter_mut().for_each(lift_exemplar_values),
        _ => {}
    }
}

/// Writes `request` as OTLP/JSON the way opentelemetry-proto does (but for exemplar values),
/// and checks that it converts back to the same request. Returns the JSON.
fn round_trip<R>(msg: Msg, request: &R) -> Vec<u8>
where
    R: Message + Default + PartialEq + std::fmt::Debug + serde::Serialize,
{
    let mut document = serde_json::to_value(request).expect("serializable");
    lift_exemplar_values(&mut document);
    let json = serde_json::to_vec(&document).expect("serializable");
    let protobuf = to_protobuf(msg, &json)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&json)));
    assert_eq!(&R::decode(&protobuf[..]).expect("decodes"), request);
    json
}

/// Random requests of every signal, written as OTLP/JSON by opentelemetry-proto (what the
/// Rust SDK's http/json exporter sends), convert back to the same request and count.
#[test]
fn random_requests_round_trip_through_json() {
    let mut rng = SmallRng::seed_from_u64(0x0501_7e55);
    for round in 0..300 {
        let mut random = random::Requests::new(&mut rng);
        let (signal, protobuf, json) = match round % 3 {
            0 => {
                let request = random.traces();
                let json = round_trip(Msg::ExportTraces, &request);
                (Signal::Traces, request.encode_to_vec(), json)
            }
            1 => {
                let request = random.logs();
                let json = round_trip(Msg::ExportLogs, &request);
                (Signal::Logs, request.encode_to_vec(), json)
            }
            _ => {
                let request = random.metrics();
                let json = round_trip(Msg::ExportMetrics, &request);
                (Signal::Metrics, request.encode_to_vec(), json)
            }
        };
        let (_, items) = signal.json_to_protobuf(&json).expect("accepted");
        assert_eq!(Ok(items), reference(signal, &protobuf), "round {round}");
    }
}

/// The corpus as OTLP/JSON.
fn json_corpus() -> Vec<(Signal, Vec<u8>)> {
    corpus()
        .into_iter()
        .map(|(signal, body)| {
            let json = match signal {
                Signal::Traces => serde_json::to_vec(&traces(&body)),
                Signal::Logs => {
                    serde_json::to_vec(&ExportLogsServiceRequest::decode(&body[..]).expect("valid"))
                }
                Signal::Metrics => serde_json::to_vec(
                    &ExportMetricsServiceRequest::decode(&body[..]).expect("valid"),
                ),
            };
            (signal, json.expect("serializable"))
        })
        .collect()
}

/// Converts a damaged document: it must not panic, and what it accepts must be protobuf
/// that the walker accepts with the reference's count. Returns whether it was accepted.
fn convert(signal: Signal, json: &[u8]) -> bool {
    let Ok(protobuf) = to_protobuf(request(signal), json) else {
        return false;
    };
    let walked = signal.count_protobuf(&protobuf).map_err(|e| e.to_string());
    let expected = reference(signal, &protobuf);
    match (&walked, &expected) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{}", String::from_utf8_lossy(json)),
        // Nesting deeper than protobuf decoders allow is refused by the walk only.
        (Err(e), Err(_)) if e.contains("recursion limit") => return false,
        _ => panic!(
            "walk {walked:?}, reference {expected:?} for {}",
            String::from_utf8_lossy(json)
        ),
    }
    walked.is_ok()
}

/// Mutations per corpus entry; `OTELGATE_JSON_MUTATIONS` raises it for a longer search.
fn mutations() -> usize {
    std::env::var("OTELGATE_JSON_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300)
}

/// Random damage to the text of real documents: flipped bits, random bytes, cuts, inserted
/// and repeated runs of bytes.
#[test]
fn damaged_json_text_is_refused_or_converted_to_valid_protobuf() {
    let mut rng = SmallRng::seed_from_u64(0x0a50_b1e5);
    let (mut accepted, mut refused) = (0, 0);
    for (signal, json) in json_corpus() {
        for _ in 0..mutations() {
            let mut damaged = json.clone();
            for _ in 0..rng.random_range(1..3) {
                let at = rng.random_range(0..damaged.len());
                match rng.random_range(0..5) {
                    0 => damaged[at] ^= 1 << rng.random_range(0..8),
                    1 => damaged[at] = b"{}[]\",:0-9eE.nul \\"[rng.random_range(0..18)],
                    2 => damaged.truncate(at),
                    3 => {
                        let end = (at + rng.random_range(1..64)).min(damaged.len());
                        damaged.drain(at..end);
                    }
                    _ => {
                        let end = (at + rng.random_range(1..64)).min(damaged.len());
                        let copy = damaged[at..end].to_vec();
                        damaged.splice(at..at, copy);
                    }
                }
                if damaged.is_empty() {
                    break;
                }
            }
            if convert(signal, &damaged) {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    assert!(
        accepted > 50 && refused > 500,
        "{accepted} accepted, {refused} refused"
    );
}

/// Random damage to the structure of real documents: a value anywhere replaced by another
/// of any JSON type (the awkward ones included), a field removed, or a field of any known
/// name added.
#[test]
fn damaged_json_structure_is_refused_or_converted_to_valid_protobuf() {
    let mut rng = SmallRng::seed_from_u64(0x5e_ed);
    let names: Vec<&str> = ALL_MESSAGES
        .iter()
        .flat_map(|msg| fields(*msg).iter().map(|f| f.json))
        .collect();
    let (mut accepted, mut refused) = (0, 0);
    for (signal, json) in json_corpus() {
        let document: Json = serde_json::from_slice(&json).expect("valid JSON");
        for _ in 0..mutations() {
            let mut damaged = document.clone();
            for _ in 0..rng.random_range(1..4) {
                random::mutate(&mut damaged, &names, &mut rng);
            }
            let text = serde_json::to_vec(&damaged).expect("serializable");
            if convert(signal, &text) {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    assert!(
        accepted > 300 && refused > 300,
        "{accepted} accepted, {refused} refused"
    );
}
