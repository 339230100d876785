//! Validation compared with `prost` on real, damaged and hand-made requests.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::signal::testing::{corpus, reference};
use crate::Signal;

/// Mutations per corpus entry; `OTELGATE_WIRE_MUTATIONS` raises it for a longer search.
fn mutations() -> usize {
    std::env::var("OTELGATE_WIRE_MUTATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1500)
}

fn agree(signal: Signal, body: &[u8]) {
    let walked = signal.count_protobuf(body).map_err(|e| e.to_string());
    let decoded = reference(signal, body);
    match (&walked, &decoded) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{signal} item count of {body:02x?}"),
        (Err(_), Err(_)) => {}
        _ => panic!("{signal}: validation {walked:?} but prost {decoded:?} for {body:02x?}"),
    }
}

#[test]
fn valid_requests_are_accepted_with_the_decoded_count() {
    for (signal, body) in corpus() {
        let count = signal.count_protobuf(&body).expect("valid request");
        assert!(count > 0, "{signal}: empty corpus entry");
        assert_eq!(Ok(count), reference(signal, &body));
    }
}

/// Random damage to real requests: flipped bits, random bytes, cuts, inserted and
/// repeated spans of bytes. Whatever prost decodes (with ids of OTLP's lengths) must be
/// accepted with the same count, and whatever it refuses must be refused.
#[test]
fn agrees_with_prost_on_damaged_requests() {
    let mut rng = SmallRng::seed_from_u64(0x07e1_6a7e);
    let mut accepted = 0;
    let mut refused = 0;
    for (signal, body) in corpus() {
        for _ in 0..mutations() {
            let mut damaged = body.clone();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..damaged.len());
                match rng.random_range(0..6) {
                    0 => damaged[at] ^= 1 << rng.random_range(0..8),
                    1 => damaged[at] = rng.random(),
                    2 => damaged.truncate(at),
                    3 => {
                        let len = rng.random_range(1..8);
                        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                        damaged.splice(at..at, bytes);
                    }
                    4 => {
                        let end = (at + rng.random_range(1..64)).min(damaged.len());
                        let copy = damaged[at..end].to_vec();
                        damaged.splice(at..at, copy);
                    }
                    _ => damaged[at] = [0x00, 0x7f, 0x80, 0xff, 0x08, 0x0a][at % 6],
                }
                if damaged.is_empty() {
                    break;
                }
            }
            agree(signal, &damaged);
            match reference(signal, &damaged) {
                Ok(_) => accepted += 1,
                Err(_) => refused += 1,
            }
        }
    }
    // Both outcomes must be exercised, or the comparison proves little.
    assert!(
        accepted > 500 && refused > 500,
        "{accepted} accepted, {refused} refused"
    );
}

/// Edge cases of the wire format, each compared with prost.
#[test]
fn agrees_with_prost_on_wire_format_edges() {
    use crate::signal::proto::encoding::{key, len_field};
    // ExportTraceServiceRequest > ResourceSpans > ScopeSpans > Span with valid ids and
    // `span` bytes.
    let traces = |span: &[u8]| {
        let span = [len_field(1, &[1; 16]), len_field(2, &[2; 8]), span.to_vec()].concat();
        len_field(1, &len_field(2, &len_field(2, &span)))
    };
    // A span attribute (`key`, `value` as AnyValue bytes).
    let attribute =
        |k: &[u8], value: &[u8]| len_field(9, &[len_field(1, k), len_field(2, value)].concat());
    // A log record whose body is an AnyValue nested `depth` array levels deep.
    let nested_body = |depth: usize| {
        let mut value = len_field(1, b"leaf");
        for _ in 0..depth {
            value = len_field(5, &len_field(1, &value));
        }
        len_field(1, &len_field(2, &len_field(2, &len_field(5, &value))))
    };
    let mut cases: Vec<(Signal, Vec<u8>)> = vec![
        (Signal::Traces, vec![]),
        (Signal::Traces, traces(&[])),
        (Signal::Traces, traces(&len_field(5, b"ok"))),
        (Signal::Traces, traces(&len_field(5, &[0xff, 0xfe]))),
        (Signal::Traces, traces(&len_field(1, &[0xff, 0xfe]))),
        (Signal::Traces, traces(&[key(5, 0), vec![1]].concat())),
        (Signal::Traces, traces(&[key(7, 1), vec![0; 8]].concat())),
        (Signal::Traces, traces(&[key(7, 1), vec![0; 7]].concat())),
        (Signal::Traces, traces(&[key(16, 5), vec![0; 4]].concat())),
        (Signal::Traces, traces(&[key(16, 1), vec![0; 8]].concat())),
        (
            Signal::Traces,
            traces(&[key(99, 0), vec![0x80, 0x01]].concat()),
        ),
        (
            Signal::Traces,
            traces(&[key(99, 3), key(1, 0), vec![5], key(99, 4)].concat()),
        ),
        (
            Signal::Traces,
            traces(&[key(99, 3), key(1, 0), vec![5], key(98, 4)].concat()),
        ),
        (Signal::Traces, traces(&key(99, 4))),
        (Signal::Traces, traces(&[0x00, 0x01])),
        (Signal::Traces, traces(&[0x0f])),
        (
            Signal::Traces,
            traces(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
        ),
        (
            Signal::Traces,
            traces(&[
                0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02,
            ]),
        ),
        (
            Signal::Traces,
            traces(&[
                0x30, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
        ),
        (
            Signal::Traces,
            traces(&[0xf8, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00]),
        ),
        // Attributes in the usual layout (read by `usual_key_value`) and near it.
        (
            Signal::Traces,
            traces(&attribute(b"k", &len_field(1, b"v"))),
        ),
        (
            Signal::Traces,
            traces(&attribute(&[0xff], &len_field(1, b"v"))),
        ),
        (
            Signal::Traces,
            traces(&attribute(b"k", &len_field(1, &[0xc3]))),
        ),
        (
            Signal::Traces,
            traces(&attribute(b"k", &[key(4, 1), vec![0; 8]].concat())),
        ),
        (
            Signal::Traces,
            traces(&attribute(b"k", &[key(4, 1), vec![0; 7]].concat())),
        ),
        (
            Signal::Traces,
            traces(&attribute(b"k", &[key(3, 0), vec![0x80]].concat())),
        ),
        (
            Signal::Traces,
            traces(&attribute(b"k", &[key(2, 0), vec![1, 1]].concat())),
        ),
        (
            Signal::Traces,
            traces(&attribute(b"k", &[key(3, 2), vec![0]].concat())),
        ),
        (
            Signal::Traces,
            traces(&attribute(b"k", &[key(1, 0), vec![0]].concat())),
        ),
        (
            Signal::Traces,
            traces(&attribute(&[b'k'; 200], &len_field(1, &[0xc3]))),
        ),
        (Signal::Logs, nested_body(40)),
        (Signal::Logs, nested_body(48)),
        (Signal::Logs, nested_body(49)),
        (Signal::Logs, nested_body(60)),
    ];
    // Metrics: packed and unpacked repeated fields, and the `data` oneof.
    let point = |body: &[u8]| len_field(1, body);
    let metric = |fields: &[u8]| len_field(1, &len_field(2, &len_field(2, fields)));
    let histogram_point = |fields: &[u8]| len_field(9, &point(fields));
    for fields in [
        histogram_point(&len_field(6, &[0; 16])),
        histogram_point(&len_field(6, &[0; 12])),
        histogram_point(&[key(7, 1), vec![0; 8], key(7, 1), vec![0; 8]].concat()),
        histogram_point(&[key(6, 0), vec![3]].concat()),
        len_field(
            10,
            &point(&len_field(8, &len_field(2, &[1, 0x80, 0x01, 3]))),
        ),
        len_field(10, &point(&len_field(8, &len_field(2, &[1, 0x80])))),
        len_field(10, &point(&len_field(8, &[key(2, 0), vec![7]].concat()))),
        [
            len_field(5, &[point(&[]), point(&[])].concat()),
            len_field(7, &point(&[])),
        ]
        .concat(),
        [len_field(5, &point(&[])), len_field(5, &point(&[]))].concat(),
        [
            len_field(5, &point(&[])),
            len_field(7, &[]),
            len_field(5, &[point(&[]), point(&[])].concat()),
        ]
        .concat(),
        [
            len_field(11, &point(&[])),
            len_field(12, &len_field(1, b"k")),
        ]
        .concat(),
    ] {
        cases.push((Signal::Metrics, metric(&fields)));
    }
    for (signal, body) in &cases {
        agree(*signal, body);
    }
    // An attribute in the usual layout that is not UTF-8 is named like any other field.
    let error = Signal::Traces
        .count_protobuf(&traces(&attribute(b"k", &len_field(1, &[0xc3]))))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("spans[0].attributes[0].value.string_value: invalid string value"),
        "{error}"
    );
    // Text that is not ASCII takes the full UTF-8 decoder, in keys and values, with any
    // kind of value (an int's varint and a double's bytes are not ASCII either).
    let int = [0x18, 0x96, 0x01];
    let double = [0x21, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f];
    for (k, value, valid) in [
        ("größe".as_bytes(), len_field(1, "東京".as_bytes()), true),
        (b"k", len_field(1, "é".as_bytes()), true),
        ("é".as_bytes(), int.to_vec(), true),
        ("é".as_bytes(), double.to_vec(), true),
        (b"k", int.to_vec(), true),
        (&[0xc3], int.to_vec(), false),
        (&[0xc3, 0x28], len_field(1, b"v"), false),
        (b"k", len_field(1, &[b'a', 0xe6, 0x9d]), false),
        (b"k", len_field(1, &[0xed, 0xa0, 0x80]), false),
    ] {
        let body = traces(&attribute(k, &value));
        agree(Signal::Traces, &body);
        assert_eq!(
            Signal::Traces.count_protobuf(&body).is_ok(),
            valid,
            "{k:02x?} {value:02x?}"
        );
    }
    // The depth limit is reached between these two.
    assert!(Signal::Logs.count_protobuf(&nested_body(40)).is_ok());
    assert!(Signal::Logs.count_protobuf(&nested_body(60)).is_err());
    let refused = cases
        .iter()
        .filter(|(signal, body)| signal.count_protobuf(body).is_err())
        .count();
    assert!(
        refused > 10 && refused < cases.len() - 10,
        "{refused} of {}",
        cases.len()
    );
}

/// A name, a request, and its count or a part of the refusal's message.
type IdCase = (&'static str, Signal, Vec<u8>, Result<u64, &'static str>);

/// Trace and span ids of the wrong length are refused, naming the field and which
/// element of each list holds it; empty ids only where OTLP makes them optional.
#[test]
fn ids_must_have_the_lengths_otlp_gives_them() {
    use crate::signal::proto::encoding::len_field;
    let span = |trace: Option<usize>, span: Option<usize>, extra: &[u8]| {
        let mut fields = Vec::new();
        if let Some(len) = trace {
            fields.extend(len_field(1, &vec![1; len]));
        }
        if let Some(len) = span {
            fields.extend(len_field(2, &vec![2; len]));
        }
        fields.extend_from_slice(extra);
        len_field(2, &fields)
    };
    let good = span(Some(16), Some(8), &[]);
    let traces = |resources: &[Vec<u8>]| -> Vec<u8> {
        resources
            .iter()
            .flat_map(|spans| len_field(1, &len_field(2, spans)))
            .collect()
    };
    let link = |trace: usize, span: usize| {
        len_field(
            13,
            &[len_field(1, &vec![3; trace]), len_field(2, &vec![4; span])].concat(),
        )
    };
    let log = |fields: &[u8]| len_field(1, &len_field(2, &len_field(2, fields)));
    let exemplar = |span: usize| {
        let point = len_field(5, &len_field(4, &vec![5; span]));
        let metric = len_field(5, &len_field(1, &point));
        len_field(1, &len_field(2, &len_field(2, &metric)))
    };
    let cases: Vec<IdCase> = vec![
        (
            "valid span",
            Signal::Traces,
            traces(std::slice::from_ref(&good)),
            Ok(1),
        ),
        (
            "short trace id",
            Signal::Traces,
            traces(&[span(Some(15), Some(8), &[])]),
            Err(
                "ExportTraceServiceRequest.resource_spans[0].scope_spans[0].spans[0].\
                 trace_id: 15 bytes long; must be 16 bytes",
            ),
        ),
        (
            "long span id in the second span of the second resource",
            Signal::Traces,
            traces(&[
                good.clone(),
                [good.clone(), span(Some(16), Some(9), &[])].concat(),
            ]),
            Err(
                "resource_spans[1].scope_spans[0].spans[1].span_id: 9 bytes long; must be 8 \
                 bytes",
            ),
        ),
        (
            "no trace id",
            Signal::Traces,
            traces(&[span(None, Some(8), &[])]),
            Err("spans[0].trace_id: empty or missing; must be 16 bytes"),
        ),
        (
            "empty span id",
            Signal::Traces,
            traces(&[span(Some(16), Some(0), &[])]),
            Err("spans[0].span_id: empty or missing; must be 8 bytes"),
        ),
        (
            "parent span id of 8",
            Signal::Traces,
            traces(&[span(Some(16), Some(8), &len_field(4, &[7; 8]))]),
            Ok(1),
        ),
        (
            "empty parent span id",
            Signal::Traces,
            traces(&[span(Some(16), Some(8), &len_field(4, &[]))]),
            Ok(1),
        ),
        (
            "parent span id of 4",
            Signal::Traces,
            traces(&[span(Some(16), Some(8), &len_field(4, &[7; 4]))]),
            Err("spans[0].parent_span_id: 4 bytes long; must be empty or 8 \
                 bytes"),
        ),
        (
            "links with and without ids",
            Signal::Traces,
            traces(&[span(Some(16), Some(8), &[link(16, 8), link(0, 0)].concat())]),
            Ok(1),
        ),
        (
            "a link's short trace id",
            Signal::Traces,
            traces(&[span(Some(16), Some(8), &[link(16, 8), link(3, 8)].concat())]),
            Err(
                "spans[0].links[1].trace_id: 3 bytes long; must be empty or \
                 16 bytes",
            ),
        ),
        (
            "log record without ids",
            Signal::Logs,
            log(&len_field(3, b"x")),
            Ok(1),
        ),
        (
            "log record with ids",
            Signal::Logs,
            log(&[len_field(9, &[1; 16]), len_field(10, &[2; 8])].concat()),
            Ok(1),
        ),
        (
            "log record with a hex text trace id",
            Signal::Logs,
            log(&len_field(9, &[b'a'; 32])),
            Err(
                "ExportLogsServiceRequest.resource_logs[0].scope_logs[0].log_records[0].\
                 trace_id: 32 bytes long; must be empty or 16 bytes",
            ),
        ),
        ("exemplar span id", Signal::Metrics, exemplar(8), Ok(1)),
        (
            "exemplar short span id",
            Signal::Metrics,
            exemplar(7),
            Err(
                "metrics[0].gauge.data_points[0].exemplars[0].span_id: 7 bytes long; must be \
                 empty or 8 bytes",
            ),
        ),
    ];
    for (name, signal, body, expected) in cases {
        let result = signal.count_protobuf(&body).map_err(|e| e.to_string());
        match (expected, &result) {
            (Ok(want), Ok(got)) => assert_eq!(want, *got, "{name}"),
            (Err(want), Err(got)) => assert!(got.contains(want), "{name}: {got}"),
            _ => panic!("{name}: {result:?}"),
        }
        agree(signal, &body);
    }
}
