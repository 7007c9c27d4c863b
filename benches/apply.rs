//! Criterion benchmarks of the engine's hot path, on the production code: `decode` (NDJSON
//! bytes into a validated batch) and `apply` (a decoded batch into the hot store and every
//! rolling aggregate). Input: `passpulse gen` output, so the mix of types is realistic.

use std::process::Command;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use passpulse_engine::event::decode_message;
use passpulse_engine::{DecodedBatch, EngineConfig, new_engine};

const EVENTS: usize = 200_000;

fn generated() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("events.ndjson");
    let status = Command::new(env!("CARGO_BIN_EXE_passpulse"))
        .args(["gen", "--seed", "1", "--events", &EVENTS.to_string()])
        .args([
            "--arrivals-per-day",
            "20000",
            "--start",
            "2026-06-01T00:00:00Z",
            "--out",
        ])
        .arg(&out)
        .status()
        .expect("run passpulse gen");
    assert!(status.success());
    std::fs::read(out).expect("generated file")
}

fn decode_all(bytes: &[u8]) -> DecodedBatch {
    let mut batch = DecodedBatch::with_capacity(EVENTS);
    // 100 events per message, as a batching producer sends them
    let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
    for (i, chunk) in lines.chunks(100).enumerate() {
        let msg = chunk.join(&b'\n');
        decode_message(&msg, i as u64 + 1, &mut batch, |e, _| panic!("{e}"));
    }
    batch
}

fn benches(c: &mut Criterion) {
    let bytes = generated();
    let batch = decode_all(&bytes);
    assert_eq!(batch.len(), EVENTS);

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    g.bench_function("decode", |b| {
        b.iter(|| decode_all(&bytes));
    });
    g.bench_function("apply", |b| {
        b.iter_batched(
            || new_engine(EngineConfig::default()),
            |(mut writer, engine)| {
                writer.apply(&batch);
                (writer, engine)
            },
            BatchSize::PerIteration,
        );
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
