//! `passpulse bench ingest`: ingest throughput of the engine against the ceiling of the bus.
//!
//! N generated events are pre-published into a fresh stream (`--batch K` per message). Then, in
//! alternating rounds on the same stream, (a) a bare JetStream consumer with the engine's consumer
//! settings only receives every message — the most this machine's NATS can deliver to one
//! consumer — and (b) the production consumer pipeline drains the stream until all N events are
//! queryable in the hot store. Both rates, their ratio and the hot store's bytes per event are
//! printed (medians over the rounds). With `--persist`, a third pipeline per round also writes
//! Parquet and checkpoints (default flush policy) into a fresh data directory; its rate counts
//! until every event is queryable, and again until the last checkpoint covers them all.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use passpulse_engine::persist::{PersistConfig, PersistMetrics};
use passpulse_engine::{EngineConfig, time::now_millis};
use passpulse_ingest::consumer::{messages, open_consumer};
use passpulse_ingest::{BusConfig, ConsumerOptions, Pipeline};

use super::{BenchBus, median};

#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Events to publish and consume.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Events per NATS message.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Rounds of (bare, engine); medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Use this NATS server instead of a managed one.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Also measure the pipeline with Parquet persistence and checkpoints on.
    #[arg(long)]
    pub persist: bool,
}

pub async fn ingest(args: IngestArgs) -> Result<()> {
    let bb = BenchBus::start(args.nats_url.as_deref()).await?;
    let (js, bus) = (&bb.js, &bb.bus);
    let published = bb
        .publish(args.seed, 0, args.events, args.batch, super::HISTORY)
        .await?;
    let messages_total = published.messages;

    let stream = js.get_stream(&bus.stream).await?;
    let opts = ConsumerOptions::default();
    let (mut bare, mut eng, mut bytes) = (Vec::new(), Vec::new(), 0.0);
    let (mut pers, mut durable, mut disk) = (Vec::new(), Vec::new(), None);
    for round in 0..args.rounds {
        let b = bare_round(&stream, &opts, messages_total).await?;
        let (e, bpe) = engine_round(js, bus, &opts, args.events, None).await?;
        let (b, e) = (args.events as f64 / b, args.events as f64 / e);
        eprintln!(
            "round {}: bare {:.0} events/s, engine {:.0} events/s ({:.1} %)",
            round + 1,
            b,
            e,
            100.0 * e / b
        );
        bare.push(b);
        eng.push(e);
        bytes = bpe;
        if args.persist {
            let dir = tempfile::tempdir()?;
            let (p, d, m) =
                persist_round(js, bus, &opts, args.events, PersistConfig::new(dir.path())).await?;
            let (p, d) = (args.events as f64 / p, args.events as f64 / d);
            eprintln!(
                "round {}: engine with persistence {:.0} events/s queryable ({:.1} % of in-memory), {:.0} events/s durable",
                round + 1,
                p,
                100.0 * p / e,
                d
            );
            pers.push(p);
            durable.push(d);
            disk = Some(m);
        }
    }
    let fresh = freshness(js, bus, &opts, args.events, 200).await?;
    let (b, e) = (median(bare), median(eng));
    println!("events            {}", args.events);
    println!("events/message    {}", args.batch);
    println!(
        "bare consumer     {:.0} events/s ({:.0} messages/s)",
        b,
        b / args.batch as f64
    );
    println!("engine            {:.0} events/s", e);
    println!("engine / bare     {:.1} %", 100.0 * e / b);
    println!("hot store         {:.1} bytes/event", bytes);
    if let Some(m) = disk {
        let (p, d) = (median(pers), median(durable));
        println!(
            "with persistence  {:.0} events/s queryable ({:.1} % of in-memory), {:.0} events/s durable",
            p,
            100.0 * p / e,
            d
        );
        println!("{m}");
    }
    println!(
        "freshness         ack → queryable p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} single events)",
        fresh.0, fresh.1, fresh.2, 200
    );
    bb.stop().await;
    Ok(())
}

/// Seconds until every event is queryable, seconds until every event is also covered by a
/// checkpoint, and a line about the flushes.
async fn persist_round(
    js: &jetstream::Context,
    bus: &BusConfig,
    opts: &ConsumerOptions,
    events: u64,
    persist: PersistConfig,
) -> Result<(f64, f64, String)> {
    let started = Instant::now();
    let (queryable, run, bus) = drain(js, bus, opts, events, Some(persist)).await?;
    let engine = run.engine.clone();
    stop_engine(js, run, &bus).await;
    let durable = started.elapsed().as_secs_f64();
    let m = engine.persist_metrics();
    let g = PersistMetrics::get;
    let snap = engine.hot_snapshot();
    let flush_s = g(&m.flush_micros_total) as f64 / 1e6;
    let line = format!(
        "flushes           {} flushes, {} rows in {:.2} s of flushing ({:.0} events/s, {:.1} MB/s of Parquet); on disk {:.2} bytes/event in {} files",
        g(&m.flushes),
        g(&m.flushed_rows),
        flush_s,
        g(&m.flushed_rows) as f64 / flush_s.max(1e-9),
        g(&m.flushed_bytes) as f64 / 1e6 / flush_s.max(1e-9),
        snap.files.bytes() as f64 / snap.files.rows().max(1) as f64,
        snap.files.files.len(),
    );
    Ok((queryable, durable, line))
}

/// Milliseconds from the broker's publish ack to the event being visible to queries, for
/// `samples` single events published one at a time after the engine caught up: (p50, p99, max).
async fn freshness(
    js: &jetstream::Context,
    bus: &BusConfig,
    opts: &ConsumerOptions,
    backlog: u64,
    samples: usize,
) -> Result<(f64, f64, f64)> {
    let (run, bus) = start_engine(js, bus, opts, "bench-fresh", EngineConfig::default()).await?;
    let engine = run.engine.clone();
    let wait_rows = |n: u64| {
        let engine = engine.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(600);
            while (engine.hot_snapshot().rows() as u64) < n {
                if Instant::now() > deadline {
                    bail!("engine did not reach {n} events");
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            Ok(())
        }
    };
    wait_rows(backlog).await?;
    let mut lat = Vec::with_capacity(samples);
    let subject = format!("{}.pass.updated", bus.subject_prefix);
    for i in 0..samples as u64 {
        let line = format!(
            r#"{{"id":"fresh-{i}","type":"pass.updated","ts":{},"pass":"P1"}}"#,
            now_millis()
        );
        js.publish(subject.clone(), line.into())
            .await?
            .await
            .context("publish ack")?;
        let acked = Instant::now();
        wait_rows(backlog + i + 1).await?;
        lat.push(acked.elapsed().as_secs_f64() * 1e3);
    }
    stop_engine(js, run, &bus).await;
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    Ok((p(0.5), p(0.99), lat[lat.len() - 1]))
}

/// Seconds for a bare consumer to receive `expected` messages.
async fn bare_round(stream: &stream::Stream, opts: &ConsumerOptions, expected: u64) -> Result<f64> {
    let consumer = open_consumer(stream, "bench-bare", 1)
        .await
        .map_err(anyhow::Error::msg)?;
    let started = Instant::now();
    let mut msgs = messages(&consumer, opts)
        .await
        .map_err(anyhow::Error::msg)?
        .ready_chunks(opts.chunk);
    let mut got = 0u64;
    while got < expected {
        let Some(chunk) = tokio::time::timeout(Duration::from_secs(30), msgs.next()).await? else {
            bail!("bare consumer stream ended after {got} messages");
        };
        for m in chunk {
            let m = m.map_err(|e| anyhow::anyhow!("bare consumer: {e}"))?;
            std::hint::black_box(m.payload.len());
            got += 1;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    drop(msgs);
    let _ = stream.delete_consumer("bench-bare").await;
    Ok(secs)
}

/// Seconds for the production pipeline to make `events` queryable; and hot bytes per event.
async fn engine_round(
    js: &jetstream::Context,
    bus: &BusConfig,
    opts: &ConsumerOptions,
    events: u64,
    persist: Option<PersistConfig>,
) -> Result<(f64, f64)> {
    let (secs, run, bus) = drain(js, bus, opts, events, persist).await?;
    let bpe = run.engine.stats().hot.bytes_per_event;
    stop_engine(js, run, &bus).await;
    Ok((secs, bpe))
}

/// Starts a pipeline and waits until `events` are queryable; returns the seconds it took and
/// the running pipeline.
pub(super) async fn drain(
    js: &jetstream::Context,
    bus: &BusConfig,
    opts: &ConsumerOptions,
    events: u64,
    persist: Option<PersistConfig>,
) -> Result<(f64, Pipeline, BusConfig)> {
    let started = Instant::now();
    let cfg = EngineConfig {
        persist,
        // the synthetic history is anchored at a fixed date and may run past today
        max_future_skew: None,
        ..EngineConfig::default()
    };
    let (run, bus) = start_engine(js, bus, opts, "bench-engine", cfg).await?;
    let deadline = started + Duration::from_secs(1200);
    loop {
        let rows = run.engine.hot_snapshot().total_rows();
        if rows >= events {
            break;
        }
        if Instant::now() > deadline {
            bail!("engine made only {rows} of {events} events queryable in 1200 s");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    Ok((started.elapsed().as_secs_f64(), run, bus))
}

/// Starts the production pipeline under its own consumer name.
async fn start_engine(
    js: &jetstream::Context,
    bus: &BusConfig,
    opts: &ConsumerOptions,
    consumer: &str,
    cfg: EngineConfig,
) -> Result<(Pipeline, BusConfig)> {
    let bus = BusConfig {
        consumer: consumer.into(),
        ..bus.clone()
    };
    let run = Pipeline::start(js, &bus, opts.clone(), cfg).await?;
    Ok((run, bus))
}

/// Stops the pipeline (flushing and checkpointing if persistent) and removes its consumer.
pub(super) async fn stop_engine(js: &jetstream::Context, run: Pipeline, bus: &BusConfig) {
    run.stop().await;
    if let Ok(s) = js.get_stream(&bus.stream).await {
        let _ = s.delete_consumer(&bus.consumer).await;
    }
}
