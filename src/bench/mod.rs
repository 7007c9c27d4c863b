//! `passpulse bench`: throughput and restart benchmarks against a real nats-server (managed in a
//! temporary directory unless `--nats-url` is given), on a fresh stream of generated events.
//! Timing lives here, never in pass/fail tests.

mod automation;
mod ingest;
mod insights;
mod issue;
mod restart;

pub use automation::{AutomationBenchArgs, automation};
pub use ingest::{IngestArgs, ingest};
pub use insights::{InsightsBenchArgs, insights};
pub use issue::{IssueBenchArgs, issue};
pub use restart::{RestartArgs, restart};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, stream};
use passpulse_engine::time::now_millis;
use passpulse_ingest::{BusConfig, ManagedNats, connect};

use crate::publish::{PublishStats, publish_lines};
use crate::synth::{GenOptions, Generator};

/// The generated history a benchmark publishes and where.
#[derive(Debug, clap::Args)]
pub struct HistoryArgs {
    /// Events in the (full) history.
    #[arg(long, default_value_t = 10_000_000)]
    pub events: u64,
    /// Events per NATS message when publishing.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Use this NATS server instead of a managed one.
    #[arg(long)]
    pub nats_url: Option<String>,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// Where the benches' generated history starts (2026-09-21), and its sign-ups per day.
pub(crate) const HISTORY: (i64, f64) = (1_790_000_000_000, 20_000.0);

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A broker and a fresh stream of the bench's own.
pub(crate) struct BenchBus {
    _dir: tempfile::TempDir,
    managed: Option<ManagedNats>,
    client: async_nats::Client,
    pub js: jetstream::Context,
    pub bus: BusConfig,
}

impl BenchBus {
    pub async fn start(nats_url: Option<&str>) -> Result<BenchBus> {
        let dir = tempfile::tempdir()?;
        let managed = match nats_url {
            Some(_) => None,
            None => Some(ManagedNats::start(dir.path()).await?),
        };
        let url = nats_url
            .map(str::to_string)
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
        Ok(BenchBus {
            _dir: dir,
            managed,
            client,
            js,
            bus,
        })
    }

    /// Generates and publishes `events` events (skipping the generator's first `skip`), `batch`
    /// per message, the history starting at `start_ms`.
    pub async fn publish(
        &self,
        seed: u64,
        skip: u64,
        events: u64,
        batch: usize,
        (start_ms, arrivals_per_day): (i64, f64),
    ) -> Result<PublishStats> {
        eprintln!("generating and publishing {events} events, {batch} per message…");
        let generator = Generator::new(GenOptions {
            seed,
            start_ms,
            arrivals_per_day,
        });
        let published = publish_lines(
            &self.js,
            &self.bus.subject_prefix,
            generator.skip(skip as usize).take(events as usize),
            Some(events),
            batch,
            true,
        )
        .await?;
        eprintln!(
            "published {} events in {} messages at {:.0} events/s",
            published.events,
            published.messages,
            published.rate()
        );
        Ok(published)
    }

    pub async fn stop(self) {
        let _ = self.js.delete_stream(&self.bus.stream).await;
        drop(self.client);
        if let Some(m) = self.managed {
            m.stop().await;
        }
    }
}
