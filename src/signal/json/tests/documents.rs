//! OTLP/JSON documents written by hand: what the specification allows and SDKs send, and
//! what is refused, with the message.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use prost::Message;
use serde_json::{json, Value as Json};

use super::traces;
use crate::Signal;

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

/// A named document of a signal, and what converting it must give.
type Case = (&'static str, Signal, Json, Expect);

/// Converts each case's document and checks the outcome: the decoded request, or a refusal
/// whose message contains the expected text and the place in the document.
#[track_caller]
fn check(cases: Vec<Case>) {
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

/// Times, integers and enums: numbers or decimal strings, checked against the field's range.
#[test]
fn numbers_and_times_are_read_as_the_json_mapping_allows() {
    check(vec![
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
    ]);
}

/// Attribute values: every kind, doubles in every spelling, and one kind per `AnyValue`.
#[test]
fn attribute_values_are_read_as_sdks_write_them() {
    check(vec![
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
    ]);
}

/// Unknown keys are skipped, `null` is absence, a repeated key is refused, and values of the
/// wrong JSON type are refused with the path to them.
#[test]
fn unknown_null_and_repeated_keys() {
    check(vec![
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
    ]);
}

/// Trace and span ids: hex, of OTLP's lengths, required only where OTLP requires them.
#[test]
fn ids_are_hex_of_the_lengths_otlp_gives_them() {
    check(vec![
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
    ]);
}

/// Metrics: the `data` oneof, numbers in strings, packed lists with `null`s, unset optionals.
#[test]
fn metrics_are_read_with_their_oneofs_and_lists() {
    check(vec![
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
    ]);
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
