//! Criterion benchmarks of the engine's hot path, on the production code: `decode` (NDJSON
//! bytes into a validated batch), `dedup` (the de-duplication stage: repeated ids removed, new
//! ids recorded) and `apply` (a de-duplicated batch into the hot store and every rolling
//! aggregate, as the writer thread does it). Input: `passpulse gen` output, so the mix of types is
//! realistic.
//!
//! `apply/cold` applies 200,000 events to an empty engine (a replay from scratch: every sketch
//! starts in HyperLogLog++'s costlier sparse mode, every map grows); `apply/warm` applies the next
//! 200,000 events to an engine that already holds the first ones (the steady state). Both use a
//! busy programme (400,000 sign-ups a day, so the events stay within one day). `apply/warm-small`
//! repeats `warm` with 20,000 sign-ups a day, where a new UTC day — whose distinct-count sketches
//! start sparse again — begins every ~150,000 events.

use std::process::Command;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use passpulse_engine::dedup::Dedup;
use passpulse_engine::event::decode_message;
use passpulse_engine::persist::{PersistConfig, write_sorted, writer_properties};
use passpulse_engine::store::{HotStore, MAX_BATCH_ROWS, SealedBatch};
use passpulse_engine::{DecodedBatch, Engine, EngineConfig, EngineWriter, new_engine};

const EVENTS: usize = 200_000;

fn generated(arrivals_per_day: u32) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("events.ndjson");
    let status = Command::new(env!("CARGO_BIN_EXE_passpulse"))
        .args(["gen", "--seed", "1", "--events", &(2 * EVENTS).to_string()])
        .args(["--arrivals-per-day", &arrivals_per_day.to_string()])
        .args(["--start", "2026-06-01T00:00:00Z", "--out"])
        .arg(&out)
        .status()
        .expect("run passpulse gen");
    assert!(status.success());
    std::fs::read(out).expect("generated file")
}

/// The generated events as messages of 100 NDJSON lines, as a batching producer sends them.
fn messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let lines: Vec<&[u8]> = bytes
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    lines.chunks(100).map(|c| c.join(&b'\n')).collect()
}

fn decode_all(msgs: &[Vec<u8>]) -> DecodedBatch {
    let mut batch = DecodedBatch::with_capacity(msgs.len() * 100);
    for (i, msg) in msgs.iter().enumerate() {
        decode_message(msg, i as u64 + 1, &mut batch, |e, _| panic!("{e}"));
    }
    batch
}

/// A writer set up as the server runs it (de-duplication taken out into its own stage), and the
/// batch as that stage hands it over.
fn writer_and(batch: &DecodedBatch) -> (EngineWriter, Engine, DecodedBatch, Dedup) {
    let (mut writer, engine) = new_engine(EngineConfig::default());
    let mut dedup = writer.take_dedup().expect("a new writer de-duplicates");
    let mut batch = batch.clone();
    dedup.filter(&mut batch);
    (writer, engine, batch, dedup)
}

fn benches(c: &mut Criterion) {
    let halves = |arrivals| {
        let msgs = messages(&generated(arrivals));
        let (first, second) = msgs.split_at(msgs.len() / 2);
        let (first, second) = (decode_all(first), decode_all(second));
        assert_eq!((first.len(), second.len()), (EVENTS, EVENTS));
        (msgs, first, second)
    };
    let (msgs, first, second) = halves(400_000);
    let (_, small_first, small_second) = halves(20_000);

    let mut g = c.benchmark_group("engine");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.sample_size(10);
    let half = &msgs[..msgs.len() / 2];
    g.bench_function("decode", |b| {
        b.iter(|| decode_all(half));
    });
    g.bench_function("dedup", |b| {
        b.iter_batched(
            || (Dedup::new(24 * 3_600_000), first.clone()),
            |(mut d, mut batch)| {
                d.filter(&mut batch);
                (d, batch)
            },
            BatchSize::PerIteration,
        );
    });
    g.bench_function("apply/cold", |b| {
        b.iter_batched(
            || writer_and(&first),
            |(mut writer, engine, batch, _)| {
                writer.apply(&batch);
                (writer, engine)
            },
            BatchSize::PerIteration,
        );
    });
    for (name, warmup, measured) in [
        ("apply/warm", &first, &second),
        ("apply/warm-small", &small_first, &small_second),
    ] {
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let (mut writer, engine, warm, mut dedup) = writer_and(warmup);
                    writer.apply(&warm);
                    let mut batch = measured.clone();
                    dedup.filter(&mut batch);
                    (writer, engine, batch)
                },
                |(mut writer, engine, batch)| {
                    writer.apply(&batch);
                    (writer, engine)
                },
                BatchSize::PerIteration,
            );
        });
    }
    g.finish();

    // the hot store's compact encoding of one sealed batch, and reading it back
    let mut store = HotStore::new(std::time::Duration::from_secs(3600));
    for e in first.iter().take(MAX_BATCH_ROWS) {
        store.append(&e, 1);
    }
    let sealed = store.take_for_flush().pop().expect("one sealed batch");
    let plain = sealed.decode(None);
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(plain.num_rows() as u64));
    g.sample_size(20);
    g.bench_function("encode", |b| b.iter(|| SealedBatch::encode(plain.clone())));
    g.bench_function("decode", |b| b.iter(|| sealed.decode(None)));
    g.finish();

    // a flush: every sealed batch of 400,000 events decoded, sorted and written as Parquet
    // with the production writer settings, one file per UTC day
    let mut store = HotStore::new(std::time::Duration::from_secs(3600));
    for e in first.iter().chain(second.iter()) {
        store.append(&e, 1);
    }
    let sealed = store.take_for_flush();
    let defaults = PersistConfig::new("");
    let props = writer_properties(defaults.row_group_rows, defaults.zstd_level);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut g = c.benchmark_group("persist");
    g.throughput(Throughput::Elements(2 * EVENTS as u64));
    g.sample_size(10);
    let mut round = 0;
    g.bench_function("flush", |b| {
        b.iter(|| {
            round += 1;
            let batches: Vec<_> = sealed.iter().map(|b| b.decode(None)).collect();
            write_sorted(dir.path(), &format!("part-{round}"), &batches, &props).expect("flush")
        })
    });
    g.finish();
}

criterion_group!(engine, benches);
criterion_main!(engine);
