//! `passpulse bench restart`: how long a persistent engine takes to start, at two history sizes.
//!
//! Events are ingested into a persistent engine in two stages (a tenth of `--events`, then the
//! rest); after each, the engine stops cleanly (flushing and checkpointing everything) and is
//! reopened `--repeats` times. Reopening loads the newest checkpoint (aggregates, ids of the
//! de-duplication window, file list) and touches no event data, so its time should not grow with
//! the history: the two medians side by side show whether it does. Flush throughput and bytes per
//! event on disk are printed too.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, ensure};
use passpulse_engine::persist::{PersistConfig, PersistMetrics, inspect};
use passpulse_engine::{EngineConfig, open_engine};
use passpulse_ingest::ConsumerOptions;

use super::ingest::{drain, stop_engine};
use super::{BenchBus, HistoryArgs, median};

#[derive(Debug, clap::Args)]
pub struct RestartArgs {
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Reopenings measured per history size.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
    /// Keep the data here instead of a temporary directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

pub async fn restart(args: RestartArgs) -> Result<()> {
    let bb = BenchBus::start(args.history.nats_url.as_deref()).await?;
    let tmp = tempfile::tempdir()?;
    let dir = args.data_dir.clone().unwrap_or_else(|| tmp.path().into());
    let opts = ConsumerOptions::default();
    let mut published = 0;
    let mut rows = Vec::new();
    for target in [args.history.events / 10, args.history.events] {
        bb.publish(
            args.history.seed,
            published,
            target - published,
            args.history.batch,
            super::HISTORY,
        )
        .await?;
        published = target;
        let persist = PersistConfig::new(&dir);
        let started = Instant::now();
        let (_, run, bus) = drain(&bb.js, &bb.bus, &opts, target, Some(persist.clone())).await?;
        let engine = run.engine.clone();
        stop_engine(&bb.js, run, &bus).await;
        let ingest_s = started.elapsed().as_secs_f64();
        let m = engine.persist_metrics();
        let g = PersistMetrics::get;
        let flush_s = g(&m.flush_micros_total) as f64 / 1e6;
        let (flushes, flushed) = (g(&m.flushes), g(&m.flushed_rows));
        eprintln!(
            "history {target}: ingested and checkpointed in {ingest_s:.1} s; {flushes} flushes wrote {flushed} rows in {flush_s:.2} s"
        );
        drop(engine);

        let mut times = Vec::new();
        for _ in 0..args.repeats.max(1) {
            let cfg = EngineConfig {
                persist: Some(persist.clone()),
                ..EngineConfig::default()
            };
            let t0 = Instant::now();
            let (writer, engine, resume) =
                tokio::task::spawn_blocking(move || open_engine(cfg)).await??;
            let secs = t0.elapsed().as_secs_f64();
            let snap = engine.hot_snapshot();
            ensure!(
                snap.total_rows() == target && snap.rows() == 0,
                "reopened engine holds {} rows ({} in memory), expected {target} on disk",
                snap.total_rows(),
                snap.rows()
            );
            ensure!(engine.events_applied() == target, "aggregates not restored");
            eprintln!(
                "  reopened in {:.3} s (checkpoint {}, resume at {})",
                secs, resume.generation, resume.from_seq
            );
            tokio::task::spawn_blocking(move || writer.close()).await?;
            times.push(secs);
        }
        let i = inspect(&dir)?;
        let aggs = i
            .checkpoints
            .iter()
            .find(|c| Some(c.generation) == i.current)
            .map_or(0, |c| c.aggregates_bytes);
        rows.push(format!(
            "{:>12} events  restart median {:.3} s  ({} files, {:.2} bytes/event on disk, aggregates snapshot {:.1} MB, {} ids in the de-duplication window, flushes {:.0} events/s)",
            target,
            median(times),
            i.totals.files,
            i.totals.bytes_per_event,
            aggs as f64 / 1e6,
            i.totals.dedup_ids,
            flushed as f64 / flush_s.max(1e-9),
        ));
    }
    for r in rows {
        println!("{r}");
    }
    bb.stop().await;
    Ok(())
}
