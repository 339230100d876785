use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use prost::Message;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

use super::table::{fields, Presence, Ty};
use super::to_protobuf;
use crate::signal::schema::{self, Kind, Msg};
use crate::signal::testing::{corpus, reference};
use crate::Signal;

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

enum Expect {
    /// Accepted, and the decoded request passes the check.
    Ok(fn(&[u8])),
    /// Refused, with a message containing this.
    Err(&'static str),
}

fn span_doc(span: Json) -> Json {
    json!({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]})
}

fn a_span(extra: Json) -> Json {
    let mut span = json!({
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "name": "a",
    });
    for (key, value) in extra.as_object().expect("an object") {
        span[key] = value.clone();
    }
    span
}

fn attribute_doc(value: Json) -> Json {
    span_doc(a_span(
        json!({"attributes": [{"key": "k", "value": value}]}),
    ))
}

fn log_doc(record: Json) -> Json {
    json!({"resourceLogs": [{"scopeLogs": [{"logRecords": [record]}]}]})
}

fn metric_doc(metric: Json) -> Json {
    json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [metric]}]}]})
}

fn traces(body: &[u8]) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest::decode(body).expect("decodes")
}

fn first_span(body: &[u8]) -> opentelemetry_proto::tonic::trace::v1::Span {
    traces(body).resource_spans[0].scope_spans[0].spans[0].clone()
}

fn attribute(body: &[u8]) -> Option<Value> {
    first_span(body).attributes[0].value.clone()?.value
}

fn double_attribute(body: &[u8]) -> f64 {
    match attribute(body) {
        Some(Value::DoubleValue(d)) => d,
        other => panic!("{other:?}"),
    }
}

fn first_log(body: &[u8]) -> opentelemetry_proto::tonic::logs::v1::LogRecord {
    ExportLogsServiceRequest::decode(body)
        .expect("decodes")
        .resource_logs[0]
        .scope_logs[0]
        .log_records[0]
        .clone()
}

fn first_metric(body: &[u8]) -> opentelemetry_proto::tonic::metrics::v1::Metric {
    ExportMetricsServiceRequest::decode(body)
        .expect("decodes")
        .resource_metrics[0]
        .scope_metrics[0]
        .metrics[0]
        .clone()
}

const NANOS: u64 = 1_700_000_000_123_456_789;

/// What OTLP/JSON allows and what SDKs send, and what is refused, with the message.
#[test]
fn documents_are_converted_as_the_specification_and_sdks_write_them() {
    let cases: Vec<(&str, Signal, Json, Expect)> = vec![
        (
            "span times as numbers",
            Signal::Traces,
            span_doc(a_span(
                json!({"startTimeUnixNano": NANOS, "endTimeUnixNano": NANOS + 1}),
            )),
            Expect::Ok(|b| {
                let span = first_span(b);
                assert_eq!(span.start_time_unix_nano, NANOS);
                assert_eq!(span.end_time_unix_nano, NANOS + 1);
            }),
        ),
        (
            "span times as strings",
            Signal::Traces,
            span_doc(a_span(json!({"startTimeUnixNano": NANOS.to_string()}))),
            Expect::Ok(|b| assert_eq!(first_span(b).start_time_unix_nano, NANOS)),
        ),
        (
            "span event time as a number",
            Signal::Traces,
            span_doc(a_span(
                json!({"events": [{"timeUnixNano": NANOS, "name": "e"}]}),
            )),
            Expect::Ok(|b| assert_eq!(first_span(b).events[0].time_unix_nano, NANOS)),
        ),
        (
            "log times as numbers",
            Signal::Logs,
            log_doc(json!({"timeUnixNano": NANOS, "observedTimeUnixNano": NANOS})),
            Expect::Ok(|b| {
                let record = first_log(b);
                assert_eq!(record.time_unix_nano, NANOS);
                assert_eq!(record.observed_time_unix_nano, NANOS);
            }),
        ),
        (
            "largest fixed64 as a string",
            Signal::Logs,
            log_doc(json!({"timeUnixNano": "18446744073709551615"})),
            Expect::Ok(|b| assert_eq!(first_log(b).time_unix_nano, u64::MAX)),
        ),
        (
            "fixed64 past its range",
            Signal::Logs,
            log_doc(json!({"timeUnixNano": "18446744073709551616"})),
            Expect::Err("logRecords[0].timeUnixNano: \"18446744073709551616\" is out of range"),
        ),
        (
            "negative fixed64",
            Signal::Logs,
            log_doc(json!({"timeUnixNano": -1})),
            Expect::Err("timeUnixNano: -1 is out of range"),
        ),
        (
            "integer written with an exponent",
            Signal::Logs,
            log_doc(json!({"timeUnixNano": 1e18, "severityNumber": "9"})),
            Expect::Ok(|b| {
                let record = first_log(b);
                assert_eq!(record.time_unix_nano, 1_000_000_000_000_000_000);
                assert_eq!(record.severity_number, 9);
            }),
        ),
        (
            "fraction for an integer",
            Signal::Logs,
            log_doc(json!({"severityNumber": 1.5})),
            Expect::Err("severityNumber: 1.5 is not an integer"),
        ),
        (
            "enum by name",
            Signal::Traces,
            span_doc(a_span(json!({"kind": "SPAN_KIND_SERVER"}))),
            Expect::Err("kind: \"SPAN_KIND_SERVER\" is not an integer"),
        ),
        (
            "int value as number and string",
            Signal::Traces,
            span_doc(a_span(json!({"attributes": [
                {"key": "a", "value": {"intValue": -9007199254740993i64}},
                {"key": "b", "value": {"intValue": "-9223372036854775808"}},
            ]}))),
            Expect::Ok(|b| {
                let span = first_span(b);
                let ints: Vec<_> = span
                    .attributes
                    .iter()
                    .map(|kv| kv.value.clone().and_then(|v| v.value))
                    .collect();
                assert_eq!(
                    ints,
                    [
                        Some(Value::IntValue(-9_007_199_254_740_993)),
                        Some(Value::IntValue(i64::MIN))
                    ]
                );
            }),
        ),
        (
            "double value null is NaN",
            Signal::Traces,
            attribute_doc(json!({"doubleValue": null})),
            Expect::Ok(|b| assert!(double_attribute(b).is_nan())),
        ),
        (
            "double value \"NaN\"",
            Signal::Traces,
            attribute_doc(json!({"doubleValue": "NaN"})),
            Expect::Ok(|b| assert!(double_attribute(b).is_nan())),
        ),
        (
            "double value \"Infinity\"",
            Signal::Traces,
            attribute_doc(json!({"doubleValue": "Infinity"})),
            Expect::Ok(|b| assert_eq!(double_attribute(b), f64::INFINITY)),
        ),
        (
            "double value \"-Infinity\"",
            Signal::Traces,
            attribute_doc(json!({"doubleValue": "-Infinity"})),
            Expect::Ok(|b| assert_eq!(double_attribute(b), f64::NEG_INFINITY)),
        ),
        (
            "double value as a numeric string",
            Signal::Traces,
            attribute_doc(json!({"doubleValue": "-1.5e3"})),
            Expect::Ok(|b| assert_eq!(double_attribute(b), -1500.0)),
        ),
        (
            "double value zero is kept",
            Signal::Traces,
            attribute_doc(json!({"doubleValue": 0})),
            Expect::Ok(|b| assert_eq!(attribute(b), Some(Value::DoubleValue(0.0)))),
        ),
        (
            "double value as Rust's float syntax",
            Signal::Traces,
            attribute_doc(json!({"doubleValue": "inf"})),
            Expect::Err("doubleValue: \"inf\" is not a number"),
        ),
        (
            "two kinds in one AnyValue",
            Signal::Traces,
            attribute_doc(json!({"stringValue": "s", "intValue": "5"})),
            Expect::Err(
                "spans[0].attributes[0].value: `intValue` and `stringValue` are both set; an \
                 AnyValue holds one of them",
            ),
        ),
        (
            "an empty AnyValue",
            Signal::Traces,
            attribute_doc(json!({})),
            Expect::Ok(|b| assert_eq!(attribute(b), None)),
        ),
        (
            "bytes value in both base64 alphabets, padded or not",
            Signal::Traces,
            span_doc(a_span(json!({"attributes": [
                {"key": "a", "value": {"bytesValue": "+/8="}},
                {"key": "b", "value": {"bytesValue": "-_8"}},
            ]}))),
            Expect::Ok(|b| {
                for kv in first_span(b).attributes {
                    assert_eq!(
                        kv.value.and_then(|v| v.value),
                        Some(Value::BytesValue(vec![0xfb, 0xff]))
                    );
                }
            }),
        ),
        (
            "nested array and kvlist",
            Signal::Traces,
            attribute_doc(json!({"arrayValue": {"values": [
                {"kvlistValue": {"values": [{"key": "x", "value": {"boolValue": true}}]}},
                {"stringValue": "s"},
            ]}})),
            Expect::Ok(|b| {
                let Some(Value::ArrayValue(array)) = attribute(b) else {
                    panic!("an array")
                };
                assert_eq!(array.values.len(), 2);
            }),
        ),
        (
            "unknown fields are skipped",
            Signal::Traces,
            span_doc(a_span(
                json!({"futureField": {"deep": [1, 2, {"x": null}]}}),
            )),
            Expect::Ok(|b| assert_eq!(first_span(b).name, "a")),
        ),
        (
            "null fields are absent",
            Signal::Traces,
            span_doc(a_span(
                json!({"status": null, "events": null, "traceState": null}),
            )),
            Expect::Ok(|b| {
                let span = first_span(b);
                assert_eq!(span.status, None);
                assert!(span.events.is_empty());
            }),
        ),
        (
            "a key given twice",
            Signal::Traces,
            Json::String(String::new()),
            Expect::Err("`name` is given twice"),
        ),
        (
            "short trace id",
            Signal::Traces,
            json!({"resourceSpans": [{"scopeSpans": [{"spans": [
                a_span(json!({})),
                a_span(json!({"traceId": "0011"})),
            ]}]}]}),
            Expect::Err(
                "resourceSpans[0].scopeSpans[0].spans[1].traceId: 2 bytes long; must be 16 \
                 bytes",
            ),
        ),
        (
            "span without a span id",
            Signal::Traces,
            span_doc(json!({"traceId": "5B8EFFF798038103D269B633813FC60C"})),
            Expect::Err("spans[0]: `spanId` is empty or missing; must be 8 bytes"),
        ),
        (
            "span id that is not hex",
            Signal::Traces,
            span_doc(a_span(json!({"spanId": "EEE19B7EC3C1B17Z"}))),
            Expect::Err("spanId: \"EEE19B7EC3C1B17Z\" is not hex"),
        ),
        (
            "base64 span id (the protobuf JSON mapping, not OTLP's)",
            Signal::Traces,
            span_doc(a_span(json!({"spanId": "7uGbfsPBsXQ="}))),
            Expect::Err("spanId: \"7uGbfsPBsXQ=\" is not hex"),
        ),
        (
            "empty parent span id",
            Signal::Traces,
            span_doc(a_span(json!({"parentSpanId": ""}))),
            Expect::Ok(|b| assert!(first_span(b).parent_span_id.is_empty())),
        ),
        (
            "log record without ids, and with empty ones",
            Signal::Logs,
            log_doc(json!({"traceId": "", "body": {"stringValue": "x"}})),
            Expect::Ok(|b| assert!(first_log(b).trace_id.is_empty())),
        ),
        (
            "log record with a short span id",
            Signal::Logs,
            log_doc(json!({"spanId": "0102"})),
            Expect::Err("logRecords[0].spanId: 2 bytes long; must be empty or 8 bytes"),
        ),
        (
            "gauge and sum in one metric",
            Signal::Metrics,
            metric_doc(json!({"name": "m", "gauge": {"dataPoints": []}, "sum": {}})),
            Expect::Err("metrics[0]: `gauge` and `sum` are both set; a metric holds one of them"),
        ),
        (
            "number point as a string int, and a NaN double",
            Signal::Metrics,
            metric_doc(json!({"name": "m", "gauge": {"dataPoints": [
                {"asInt": "-5", "timeUnixNano": NANOS},
                {"asDouble": null},
            ]}})),
            Expect::Ok(|b| {
                let Some(Data::Gauge(gauge)) = first_metric(b).data else {
                    panic!("a gauge")
                };
                assert_eq!(
                    gauge.data_points[0].value,
                    Some(number_data_point::Value::AsInt(-5))
                );
                assert_eq!(gauge.data_points[0].time_unix_nano, NANOS);
                assert!(matches!(
                    gauge.data_points[1].value,
                    Some(number_data_point::Value::AsDouble(d)) if d.is_nan()
                ));
            }),
        ),
        (
            "histogram counts as strings and numbers, bounds with null, unset min",
            Signal::Metrics,
            metric_doc(json!({"name": "h", "histogram": {"dataPoints": [{
                "count": "3",
                "sum": 1.5,
                "min": null,
                "bucketCounts": ["1", 2, 0],
                "explicitBounds": [1.0, null],
            }]}})),
            Expect::Ok(|b| {
                let Some(Data::Histogram(histogram)) = first_metric(b).data else {
                    panic!("a histogram")
                };
                let point = &histogram.data_points[0];
                assert_eq!(point.count, 3);
                assert_eq!(point.sum, Some(1.5));
                assert_eq!(point.min, None);
                assert_eq!(point.bucket_counts, [1, 2, 0]);
                assert_eq!(point.explicit_bounds[0], 1.0);
                assert!(point.explicit_bounds[1].is_nan());
            }),
        ),
        (
            "exponential histogram with negative scale and offset",
            Signal::Metrics,
            metric_doc(
                json!({"name": "e", "exponentialHistogram": {"dataPoints": [{
                    "scale": -3,
                    "positive": {"offset": "-7", "bucketCounts": [1, "2"]},
                    "zeroThreshold": "1e-9",
                }]}}),
            ),
            Expect::Ok(|b| {
                let Some(Data::ExponentialHistogram(histogram)) = first_metric(b).data else {
                    panic!("an exponential histogram")
                };
                let point = &histogram.data_points[0];
                assert_eq!(point.scale, -3);
                let positive = point.positive.as_ref().expect("positive buckets");
                assert_eq!(
                    (positive.offset, &positive.bucket_counts[..]),
                    (-7, &[1, 2][..])
                );
                assert_eq!(point.zero_threshold, 1e-9);
            }),
        ),
        (
            "null in a list of messages",
            Signal::Traces,
            span_doc(a_span(json!({"events": [null]}))),
            Expect::Err("events[0]: a list element cannot be null"),
        ),
        (
            "a list where an object belongs",
            Signal::Traces,
            json!({"resourceSpans": [{"resource": []}]}),
            Expect::Err(
                "resourceSpans[0].resource: invalid type: sequence, expected a JSON object",
            ),
        ),
        (
            "not an object",
            Signal::Traces,
            json!([]),
            Expect::Err("invalid type: sequence, expected a JSON object"),
        ),
    ];
    for (name, signal, document, expect) in cases {
        let body = match document {
            // serde_json's maps cannot repeat a key; this document must.
            Json::String(_) => {
                br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":"a","name":"b"}]}]}]}"#
                    .to_vec()
            }
            document => serde_json::to_vec(&document).expect("serializable"),
        };
        let result = signal.json_to_protobuf(&body);
        match (expect, result) {
            (Expect::Ok(check), Ok((protobuf, _))) => check(&protobuf),
            (Expect::Err(want), Err(error)) => {
                let message = error.to_string();
                assert!(message.contains(want), "{name}: {message}");
                assert!(message.contains("line 1 column"), "{name}: {message}");
            }
            (Expect::Ok(_), Err(error)) => panic!("{name}: refused: {error}"),
            (Expect::Err(want), Ok(_)) => panic!("{name}: accepted, expected `{want}`"),
        }
    }
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

/// Deep nesting is refused (by serde_json's depth limit or the walker's), without
/// overflowing the stack.
#[test]
fn deep_nesting_is_refused() {
    for depth in [30, 200, 10_000] {
        let mut value = json!({"stringValue": "leaf"});
        for _ in 0..depth.min(200) {
            value = json!({"arrayValue": {"values": [value]}});
        }
        let mut text = serde_json::to_vec(&attribute_doc(value)).expect("serializable");
        if depth > 200 {
            text = [vec![b'['; depth], vec![b']'; depth]].concat();
        }
        let result = Signal::Traces.json_to_protobuf(&text);
        assert_eq!(result.is_ok(), depth == 30, "{depth}: {result:?}");
    }
}
