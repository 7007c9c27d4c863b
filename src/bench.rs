//! `passpulse bench ingest`: ingest throughput of the engine against the ceiling of the bus.
//!
//! N generated events are pre-published into a fresh stream (`--batch K` per message). Then, in
//! alternating rounds on the same stream, (a) a bare JetStream consumer with the engine's consumer
//! settings only receives every message — the most this machine's NATS can deliver to one
//! consumer — and (b) the production consumer pipeline drains the stream until all N events are
//! queryable in the hot store. Both rates, their ratio and the hot store's bytes per event are
//! printed (medians over the rounds).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use passpulse_engine::{EngineConfig, time::now_millis};
use passpulse_ingest::consumer::{messages, open_consumer};
use passpulse_ingest::{BusConfig, ConsumerOptions, ManagedNats, Pipeline, connect};

use crate::publish::publish_lines;
use crate::synth::{GenOptions, Generator};

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
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn ingest(args: IngestArgs) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let managed = match &args.nats_url {
        Some(_) => None,
        None => Some(ManagedNats::start(dir.path()).await?),
    };
    let url = args
        .nats_url
        .clone()
        .unwrap_or_else(|| managed.as_ref().expect("started").url().to_string());
    let client = connect(&url).await?;
    let js = jetstream::new(client.clone());
    let tag = format!("{:x}", now_millis());
    let bus = BusConfig {
        stream: format!("PASSPULSE_BENCH_{tag}"),
        subject_prefix: format!("bench{tag}.events"),
        deadletter_prefix: format!("bench{tag}.deadletter"),
        ..BusConfig::default()
    };
    js.create_stream(stream::Config {
        name: bus.stream.clone(),
        subjects: vec![format!("{}.>", bus.subject_prefix)],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .context("creating the bench stream")?;

    eprintln!(
        "generating and publishing {} events, {} per message…",
        args.events, args.batch
    );
    let generator = Generator::new(GenOptions {
        seed: args.seed,
        start_ms: 1_790_000_000_000,
        arrivals_per_day: 20_000.0,
    });
    let published = publish_lines(
        &js,
        &bus.subject_prefix,
        generator.take(args.events as usize),
        Some(args.events),
        args.batch,
        true,
    )
    .await?;
    let messages_total = published.messages;
    eprintln!(
        "published {} events in {} messages at {:.0} events/s",
        published.events,
        messages_total,
        published.rate()
    );

    let stream = js.get_stream(&bus.stream).await?;
    let opts = ConsumerOptions::default();
    let (mut bare, mut eng, mut bytes) = (Vec::new(), Vec::new(), 0.0);
    for round in 0..args.rounds {
        let b = bare_round(&stream, &opts, messages_total).await?;
        let (e, bpe) = engine_round(&js, &bus, &opts, args.events).await?;
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
    }
    let fresh = freshness(&js, &bus, &opts, args.events, 200).await?;
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
    println!(
        "freshness         ack → queryable p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} single events)",
        fresh.0, fresh.1, fresh.2, 200
    );
    let _ = js.delete_stream(&bus.stream).await;
    drop(client);
    if let Some(m) = managed {
        m.stop().await;
    }
    Ok(())
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
    let (run, bus) = start_engine(js, bus, opts, "bench-fresh").await;
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
) -> Result<(f64, f64)> {
    let started = Instant::now();
    let (run, bus) = start_engine(js, bus, opts, "bench-engine").await;
    let engine = run.engine.clone();
    let deadline = started + Duration::from_secs(600);
    loop {
        let rows = engine.hot_snapshot().rows() as u64;
        if rows >= events {
            break;
        }
        if Instant::now() > deadline {
            bail!("engine made only {rows} of {events} events queryable in 600 s");
        }
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let bpe = engine.stats().hot.bytes_per_event;
    stop_engine(js, run, &bus).await;
    Ok((secs, bpe))
}

/// Starts the production pipeline under its own consumer name.
async fn start_engine(
    js: &jetstream::Context,
    bus: &BusConfig,
    opts: &ConsumerOptions,
    consumer: &str,
) -> (Pipeline, BusConfig) {
    let bus = BusConfig {
        consumer: consumer.into(),
        ..bus.clone()
    };
    (
        Pipeline::start(js, &bus, opts.clone(), EngineConfig::default())
            .await
            .expect("an in-memory engine opens"),
        bus,
    )
}

/// Stops the pipeline and removes its consumer from the stream.
async fn stop_engine(js: &jetstream::Context, run: Pipeline, bus: &BusConfig) {
    run.stop().await;
    if let Ok(s) = js.get_stream(&bus.stream).await {
        let _ = s.delete_consumer(&bus.consumer).await;
    }
}
