//! Hot paths of the gateway, each on a realistic request: 100 `frame.process` spans with 0-3
//! `detection` events each and 10 GenAI spans, as `otelgate load` sends them.
//! Run: `cargo bench --bench hot_paths` (CI runs it once with `-- --test` as a smoke test).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use otelgate::demo::generator::TelemetryGenerator;
use otelgate::pipeline::{queue, Fanout, MemoryBudget, Payload, QueueConfig};
use otelgate::sink::timescale::{encode_copy, Extractor, TimescaleSinkConfig};
use otelgate::Signal;
use prost::Message;

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
    group.bench_function("json_to_protobuf", |b| {
        b.iter(|| Signal::Traces.json_to_protobuf(&json).expect("valid"))
    });
    group.finish();
}

fn rows(c: &mut Criterion) {
    let (protobuf, _, _) = request();
    let extractor = Extractor::new(&TimescaleSinkConfig::new("postgres://localhost/x"))
        .expect("builtin mappings");
    let mut batch = extractor.batch();
    extractor
        .extract(Signal::Traces, &protobuf, &mut batch)
        .expect("valid");
    let row_count = batch.row_count() as u64;
    let mut group = c.benchmark_group("rows");
    group.throughput(Throughput::Elements(row_count));
    group.bench_function("extract_builtin_mappings", |b| {
        b.iter_batched_ref(
            || extractor.batch(),
            |out| {
                extractor
                    .extract(Signal::Traces, &protobuf, out)
                    .expect("valid")
            },
            BatchSize::SmallInput,
        )
    });
    let frames = &batch.rows[0];
    group.throughput(Throughput::Elements(frames.len() as u64));
    group.bench_function("encode_binary_copy_frames", |b| {
        b.iter(|| encode_copy(frames.iter().map(Vec::as_slice), frames.len() * 160))
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

criterion_group!(benches, decode, rows, fanout);
criterion_main!(benches);
