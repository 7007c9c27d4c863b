//! `passpulse publish` and the bench's pre-publisher: NDJSON lines onto JetStream, `--batch K`
//! lines per message, every publish acknowledged by the broker, with a progress bar and the rate.
//!
//! A single event goes to `<prefix>.<type>` with `Nats-Msg-Id` = its id (lines the decoder
//! refuses go to `<prefix>.batch`, where the engine dead-letters them); a batch goes to
//! `<prefix>.batch` with a message id made of its first and last event ids.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, message::PublishMessage};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use indicatif::{ProgressBar, ProgressStyle};
use passpulse_engine::{DecodedBatch, event::decode_line};

/// Most publishes awaiting their ack at once.
const IN_FLIGHT: usize = 4_096;

#[derive(Debug, Default, Clone, Copy)]
pub struct PublishStats {
    pub events: u64,
    pub messages: u64,
    pub duplicates: u64,
    pub elapsed: Duration,
}

impl PublishStats {
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Publishes `lines` (`batch` per message) and waits for every ack.
pub async fn publish_lines(
    js: &jetstream::Context,
    prefix: &str,
    lines: impl Iterator<Item = String>,
    total: Option<u64>,
    batch: usize,
    progress: bool,
) -> Result<PublishStats> {
    anyhow::ensure!(batch >= 1, "--batch must be at least 1");
    let bar = if progress {
        let b = total
            .map(ProgressBar::new)
            .unwrap_or_else(ProgressBar::no_length);
        b.set_style(
            ProgressStyle::with_template(
                "{spinner} {pos}/{len} events [{elapsed_precise}] {per_sec} {wide_bar}",
            )
            .expect("valid template"),
        );
        b
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let mut stats = PublishStats::default();
    let mut acks = FuturesUnordered::new();
    let mut scratch = DecodedBatch::new();
    let mut lines = lines.peekable();
    while lines.peek().is_some() {
        let mut payload = String::new();
        let mut n = 0u64;
        let mut first_id = String::new();
        let mut last_id = String::new();
        let mut subject = format!("{prefix}.batch");
        for line in lines.by_ref() {
            if line.trim().is_empty() {
                continue;
            }
            scratch.clear();
            if let Ok(kind) = decode_line(line.as_bytes(), 1, 0, &mut scratch) {
                let id = scratch.get(0).id;
                if first_id.is_empty() {
                    first_id = id.to_string();
                }
                last_id = id.to_string();
                if batch == 1 {
                    subject = kind.subject(prefix);
                }
            }
            if n > 0 {
                payload.push('\n');
            }
            payload.push_str(&line);
            n += 1;
            if n as usize == batch {
                break;
            }
        }
        if n == 0 {
            break;
        }
        let mut msg = PublishMessage::build().payload(payload.into());
        if !first_id.is_empty() {
            let id = if batch == 1 {
                first_id
            } else {
                format!("{first_id}..{last_id}#{n}")
            };
            msg = msg.message_id(id);
        }
        let ack = js
            .send_publish(subject, msg)
            .await
            .context("publishing to JetStream")?;
        acks.push(async move { (n, ack.await) });
        while acks.len() >= IN_FLIGHT {
            settle(acks.next().await, &mut stats, &bar)?;
        }
    }
    while let Some(r) = acks.next().await {
        settle(Some(r), &mut stats, &bar)?;
    }
    bar.finish_and_clear();
    stats.elapsed = started.elapsed();
    Ok(stats)
}

fn settle(
    r: Option<(
        u64,
        Result<jetstream::publish::PublishAck, jetstream::context::PublishError>,
    )>,
    stats: &mut PublishStats,
    bar: &ProgressBar,
) -> Result<()> {
    let Some((n, ack)) = r else { return Ok(()) };
    let ack = ack.context("the broker did not acknowledge a publish")?;
    stats.messages += 1;
    stats.events += n;
    if ack.duplicate {
        stats.duplicates += 1;
    }
    bar.inc(n);
    Ok(())
}
