//! Dead letters: a refused event (or a whole message that cannot be split) is published to
//! `passpulse.deadletter.<reason>` with its original bytes as payload and the reason, the error,
//! the source subject, stream sequence and line as headers. The dead-letter stream keeps them.
//!
//! Publishing runs on its own task so a burst of bad input never stalls the consumer; a failed
//! publish is retried with backoff before it is counted as lost. Before the engine commits a
//! checkpoint it waits for the queue to drain ([`DeadLetterSink::wait_drained`]), so a dead letter
//! is never covered by a checkpoint before the broker has it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;
use passpulse_engine::EventError;
use passpulse_engine::deadletters::{DeadLetterLog, DeadLetterRow};
use tokio::sync::mpsc;
use tracing::{error, warn};

use crate::bus::BusConfig;
use crate::metrics::IngestMetrics;

pub const HEADER_REASON: &str = "Passpulse-Reason";
pub const HEADER_ERROR: &str = "Passpulse-Error";
pub const HEADER_SUBJECT: &str = "Passpulse-Subject";
pub const HEADER_SEQ: &str = "Passpulse-Stream-Seq";
pub const HEADER_LINE: &str = "Passpulse-Line";

/// One refused event, with the bytes it arrived as.
#[derive(Debug)]
pub struct DeadLetter {
    pub error: EventError,
    pub bytes: Bytes,
    pub subject: String,
    pub seq: u64,
}

/// Where the consumer hands dead letters; counts them as they arrive.
#[derive(Clone)]
pub struct DeadLetterSink {
    tx: mpsc::UnboundedSender<DeadLetter>,
    metrics: Arc<IngestMetrics>,
    /// Dead letters handed over and not yet acknowledged by the broker (or given up on).
    pending: Arc<AtomicU64>,
    /// The last publish attempt failed (the broker is away or refusing).
    failing: Arc<AtomicBool>,
    /// The recent ones, for the `dead_letters` table.
    log: DeadLetterLog,
}

impl DeadLetterSink {
    pub fn send(&self, d: DeadLetter) {
        self.metrics.dead_letter(d.error.reason);
        self.log.push(DeadLetterRow {
            seq: d.seq,
            refused_at: passpulse_engine::time::now_millis(),
            subject: d.subject.clone(),
            reason: d.error.reason.as_str().to_string(),
            line: d.error.index.min(u32::MAX as usize) as u32,
            error: d.error.to_string(),
            bytes: d.bytes.len() as u64,
            prefix: DeadLetterRow::prefix_of(&d.bytes),
        });
        self.pending.fetch_add(1, SeqCst);
        if self.tx.send(d).is_err() {
            self.pending.fetch_sub(1, SeqCst);
            self.metrics
                .dead_letter_publish_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// As [`DeadLetterSink::wait_drained`], but gives up as soon as a publish attempt fails (at
    /// shutdown nothing will bring the broker back in time).
    pub fn wait_drained_or_failing(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.pending.load(SeqCst) > 0 {
            if Instant::now() >= deadline || self.failing.load(SeqCst) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Blocks (this is for the writer thread) until every dead letter handed over so far is
    /// published, or `timeout` passes; returns whether the queue drained.
    pub fn wait_drained(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.pending.load(SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

/// Starts the publisher task; it ends when every sink is dropped and the queue is drained.
pub fn spawn_publisher(
    js: jetstream::Context,
    cfg: BusConfig,
    metrics: Arc<IngestMetrics>,
    log: DeadLetterLog,
) -> (DeadLetterSink, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<DeadLetter>();
    let pending = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let sink = DeadLetterSink {
        tx,
        metrics: metrics.clone(),
        pending: pending.clone(),
        failing: failing.clone(),
        log,
    };
    let task = tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            publish(&js, &cfg, &metrics, &failing, d).await;
            pending.fetch_sub(1, SeqCst);
        }
    });
    (sink, task)
}

fn header_value(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}

async fn publish(
    js: &jetstream::Context,
    cfg: &BusConfig,
    metrics: &IngestMetrics,
    failing: &AtomicBool,
    d: DeadLetter,
) {
    let subject = cfg.deadletter_subject(d.error.reason);
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_REASON, d.error.reason.as_str());
    headers.insert(HEADER_ERROR, header_value(&d.error.to_string()).as_str());
    headers.insert(HEADER_SUBJECT, header_value(&d.subject).as_str());
    headers.insert(HEADER_SEQ, d.seq.to_string().as_str());
    headers.insert(HEADER_LINE, d.error.index.to_string().as_str());
    // a replay refuses the same line again: the broker keeps one copy (within its window)
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dl-{}-{}", d.seq, d.error.index).as_str(),
    );
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=6 {
        let res = match js
            .publish_with_headers(subject.clone(), headers.clone(), d.bytes.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        failing.store(res.is_err(), SeqCst);
        match res {
            Ok(()) => return,
            Err(e) => {
                warn!(%subject, attempt, error = %e, "dead letter publish failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
        }
    }
    error!(%subject, seq = d.seq, error = %d.error, "dead letter could not be published; it is only in the log");
    metrics
        .dead_letter_publish_failures
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// Refills `log` with the newest dead letters of the dead-letter stream (at most
/// [`DeadLetterLog::CAPACITY`], and at most 5 s of reading), so `dead_letters` survives restarts.
/// A missing stream or a slow broker only leaves the table shorter.
pub async fn load_recent(js: &jetstream::Context, cfg: &BusConfig, log: &DeadLetterLog) {
    let read = async {
        let mut stream = js.get_stream(&cfg.deadletter_stream).await.ok()?;
        let last = stream.info().await.ok()?.state.last_sequence;
        if last == 0 {
            return Some(0);
        }
        let start = last
            .saturating_sub(DeadLetterLog::CAPACITY as u64 - 1)
            .max(1);
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                deliver_policy: jetstream::consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: start,
                },
                ..Default::default()
            })
            .await
            .ok()?;
        let mut msgs = consumer.messages().await.ok()?;
        let mut n = 0;
        while let Some(Ok(m)) = futures::StreamExt::next(&mut msgs).await {
            let Ok(info) = m.info() else { break };
            let (seq, published) = (
                info.stream_sequence,
                (info.published.unix_timestamp_nanos() / 1_000_000) as i64,
            );
            let h = |k: &str| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get(k))
                    .map(|v| v.as_str().to_string())
                    .unwrap_or_default()
            };
            log.push(DeadLetterRow {
                seq: h(HEADER_SEQ).parse().unwrap_or(0),
                refused_at: published,
                subject: h(HEADER_SUBJECT),
                reason: h(HEADER_REASON),
                line: h(HEADER_LINE).parse().unwrap_or(0),
                error: h(HEADER_ERROR),
                bytes: m.payload.len() as u64,
                prefix: DeadLetterRow::prefix_of(&m.payload),
            });
            n += 1;
            if seq >= last {
                break;
            }
        }
        Some(n)
    };
    match tokio::time::timeout(Duration::from_secs(5), read).await {
        Ok(Some(n)) if n > 0 => tracing::info!(dead_letters = n, "recent dead letters loaded"),
        Ok(_) => {}
        Err(_) => warn!("loading recent dead letters timed out; the table starts shorter"),
    }
}
