//! Hot paths of the gateway, each on a realistic request: 100 `frame.process` spans with 0-3
//! `detection` events each and 10 GenAI spans, as `otelgate load` sends them.
//! Run: `cargo bench --bench hot_paths` (CI runs it once with `-- --test` as a smoke test).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use otelgate::pipeline::{queue, Fanout, MemoryBudget, Payload, QueueConfig};
use otelgate::sink::timescale::{Extractor, TimescaleSinkConfig};
use otelgate::Signal;
use otelgate_cli::demo::generator::TelemetryGenerator;
use prost::Message;

/// The allocator the `otelgate` binary uses, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn request() -> (Bytes, Vec<u8>, u64) {
    let (request, spans) = TelemetryGenerator::new(1).traces(100);
    let json = serde_json::to_vec(&request).expect("serializable");
    (request.encode_to_vec().into(), json, spans)
}

fn decode(c: &mut Criterion) {
    let (protobuf, json, spans) = request();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(spans));
    group.bench_function("protobuf_validate_and_count", |b| {
        b.iter(|| Signal::Traces.count_protobuf(&protobuf).expect("valid"))
    });
    // What validation cost before the wire-format walker, and what the sink's extraction
    // still pays to decode a request.
    group.bench_function("protobuf_prost_decode", |b| {
        b.iter(|| {
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(
                &protobuf[..],
            )
            .expect("valid")
        })
    });
    group.bench_function("json_to_protobuf", |b| {
        b.iter(|| Signal::Traces.json_to_protobuf(&json).expect("valid"))
    });
    group.finish();
}

fn rows(c: &mut Criterion) {
    let (protobuf, _, _) = request();
    let extractor = Extractor::new(&TimescaleSinkConfig::new("postgres://localhost/x"))
        .expect("builtin mappings");
    let mut out = extractor.batch();
    extractor
        .extract(Signal::Traces, &protobuf, &mut out)
        .expect("valid");
    let row_count = out.row_count() as u64;
    let mut group = c.benchmark_group("rows");
    group.throughput(Throughput::Elements(row_count));
    // Extraction writes the rows' binary COPY data as it goes; the sink reuses its scratch
    // rows from one request to the next, as here.
    group.bench_function("extract_and_encode_builtin_mappings", |b| {
        b.iter(|| {
            out.rows.iter_mut().for_each(|rows| rows.clear());
            out.rejected.clear();
            extractor
                .extract(Signal::Traces, &protobuf, &mut out)
                .expect("valid")
        })
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (protobuf, _, spans) = request();
    let budget = MemoryBudget::new(1 << 30);
    let (a_tx, mut a_rx) = queue("a", 1024);
    let (b_tx, mut b_rx) = queue("b", 1024);
    let mut fan = Fanout::default();
    fan.add("a", &Signal::ALL, a_tx, QueueConfig::default());
    fan.add("b", &Signal::ALL, b_tx, QueueConfig::default());
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(1));
    group.bench_function("admit_and_fan_out_to_two_queues", |b| {
        b.iter_custom(|iters| {
            runtime.block_on(async {
                let started = std::time::Instant::now();
                for _ in 0..iters {
                    let permit = budget.try_admit(protobuf.len()).expect("fits");
                    let payload = Arc::new(Payload::new(
                        Signal::Traces,
                        protobuf.clone(),
                        spans,
                        permit,
                    ));
                    fan.dispatch(payload).await.expect("room");
                    a_rx.recv().await.expect("open");
                    b_rx.recv().await.expect("open");
                }
                started.elapsed()
            })
        })
    });
    group.finish();
}

/// The durable log: encoding one record (CPU only), and appends that wait for the group
/// commit (write + fdatasync) on this machine's disk, one at a time and 64 at once.
fn durable_log(c: &mut Criterion) {
    use otelgate::pipeline::log::{segment, Log, LogConfig};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (protobuf, _, spans) = request();
    let mut group = c.benchmark_group("log");
    group.throughput(Throughput::Bytes(protobuf.len() as u64));
    let mut buf = Vec::with_capacity(protobuf.len() + 64);
    group.bench_function("encode_record_with_crc", |b| {
        b.iter(|| {
            buf.clear();
            segment::encode(&mut buf, 1, 2, spans, Signal::Traces, &protobuf);
        })
    });
    let dir = std::env::temp_dir().join(format!("otelgate-bench-log-{}", std::process::id()));
    let config = LogConfig {
        dir: dir.clone(),
        max_bytes: 64 << 30,
        min_free_bytes: 0,
        ..LogConfig::default()
    };
    let log = runtime.block_on(async { Log::open(&config).expect("log opens") });
    let appender = log.take_appender().expect("appender");
    let budget = MemoryBudget::new(1 << 30);
    let payload = || {
        let permit = budget.try_admit(protobuf.len()).expect("fits");
        Arc::new(Payload::new(
            Signal::Traces,
            protobuf.clone(),
            spans,
            permit,
        ))
    };
    group.bench_function("append_and_sync_one", |b| {
        b.iter(|| {
            runtime
                .block_on(appender.append(payload()))
                .expect("appended")
        })
    });
    group.throughput(Throughput::Bytes(64 * protobuf.len() as u64));
    group.bench_function("append_and_sync_64_concurrent", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let appends: Vec<_> = (0..64)
                    .map(|_| {
                        let appender = appender.clone();
                        let payload = payload();
                        tokio::spawn(async move { appender.append(payload).await })
                    })
                    .collect();
                for append in appends {
                    append.await.expect("joined").expect("appended");
                }
            })
        })
    });
    group.finish();
    drop((appender, log));
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, decode, rows, fanout, durable_log);
criterion_main!(benches);
