//! Dead letters: the events a message carried that were refused (or the whole message, when it
//! cannot be split) are published to `passpulse.deadletter.<reason>` with their original bytes as
//! payload and the reason, the error, the source subject, stream sequence and line as headers. The
//! dead-letter stream keeps them.
//!
//! One message yields at most one dead letter, whatever it holds: a message with one refused line
//! carries that line; one with many carries the refused lines (NDJSON, in order), how many there
//! were (`Passpulse-Refused`) and the first errors (`Passpulse-Errors`), its reason and subject
//! being those of the first. A flood of bad lines so costs one dead letter per message, not one
//! per line. A payload that would not fit the broker's message limit with its headers is cut to
//! fit, and `Passpulse-Truncated` gives its original size.
//!
//! Publishing runs on its own task, behind a bounded queue: when the broker is slower than the
//! bad input, the consumer waits for room (memory stays bounded) instead of queueing without end.
//! A failed publish is retried with backoff until it succeeds, so nothing handed over is lost
//! while the process lives. Before the engine commits a checkpoint it asks whether the queue has
//! drained ([`DeadLetterSink::wait_drained`]); if not, the checkpoint is postponed, so a
//! checkpoint never covers a dead letter the broker does not have (after a crash, the events
//! after the checkpoint are read again and refused again).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::{Bytes, BytesMut};
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
/// Lines of the message that were refused (only when more than one).
pub const HEADER_REFUSED: &str = "Passpulse-Refused";
/// The first [`MAX_ERRORS`] errors, separated by ` | ` (only when more than one line was refused).
pub const HEADER_ERRORS: &str = "Passpulse-Errors";
/// Size in bytes of the payload before it was cut to fit the broker's limit.
pub const HEADER_TRUNCATED: &str = "Passpulse-Truncated";

/// Errors named in one dead letter.
pub const MAX_ERRORS: usize = 10;
/// Dead letters waiting for the broker before the consumer waits for room. Each holds at most
/// one message's bytes (≤ `max_message_bytes`), so this bounds their memory.
pub const QUEUE: usize = 16;

/// The refused events of one message, with the bytes they arrived as.
#[derive(Debug)]
pub struct DeadLetter {
    /// The first error (its reason names the dead-letter subject).
    pub error: EventError,
    pub bytes: Bytes,
    pub subject: String,
    pub seq: u64,
    /// Lines of the message refused (1: `bytes` is that line, or the whole message).
    pub refused: u64,
    /// The first [`MAX_ERRORS`] errors, when more than one line was refused.
    pub errors: Vec<String>,
    /// Size of the refused lines before they were cut to `bytes`' length, if they were.
    pub truncated_from: Option<usize>,
}

/// Collects the refused lines of one message into its one [`DeadLetter`].
pub(crate) struct Rejects {
    first: Option<(EventError, Bytes)>,
    refused: u64,
    errors: Vec<String>,
    /// The refused lines, NDJSON, once there is more than one (at most `cap` bytes).
    lines: BytesMut,
    total: usize,
    cap: usize,
}

impl Rejects {
    /// `cap`: most payload bytes kept (the refused lines of a message are at most its size).
    pub(crate) fn new(cap: usize) -> Rejects {
        Rejects {
            first: None,
            refused: 0,
            errors: Vec::new(),
            lines: BytesMut::new(),
            total: 0,
            cap,
        }
    }

    /// Records one refused line; `line` is a slice of the message's payload.
    pub(crate) fn add(&mut self, error: EventError, line: Bytes) {
        self.refused += 1;
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(error.to_string());
        }
        if self.refused == 2
            && let Some(first) = self.first.as_ref().map(|(_, b)| b.clone())
        {
            self.append(&first);
        }
        if self.refused >= 2 {
            self.append(&line);
        }
        if self.first.is_none() {
            self.first = Some((error, line));
        }
    }

    fn append(&mut self, line: &[u8]) {
        let sep = usize::from(self.total > 0);
        self.total += sep + line.len();
        let room = self.cap.saturating_sub(self.lines.len());
        if room > 0 {
            let piece = [&b"\n"[..sep], line].concat();
            self.lines
                .extend_from_slice(&piece[..piece.len().min(room)]);
        }
    }

    /// The dead letter of the message, if any line was refused.
    pub(crate) fn finish(self, subject: &str, seq: u64) -> Option<DeadLetter> {
        let (error, first) = self.first?;
        let (bytes, errors, truncated_from) = if self.refused == 1 {
            // its own buffer: a slice would keep the whole message alive while it waits
            (Bytes::copy_from_slice(&first), Vec::new(), None)
        } else {
            let cut = (self.total > self.lines.len()).then_some(self.total);
            (self.lines.freeze(), self.errors, cut)
        };
        Some(DeadLetter {
            error,
            bytes,
            subject: subject.to_string(),
            seq,
            refused: self.refused,
            errors,
            truncated_from,
        })
    }
}

/// Where the consumer hands dead letters.
#[derive(Clone)]
pub struct DeadLetterSink {
    tx: mpsc::Sender<DeadLetter>,
    metrics: Arc<IngestMetrics>,
    /// Dead letters handed over and not yet acknowledged by the broker.
    pending: Arc<AtomicU64>,
    /// The last publish attempt failed (the broker is away or refusing).
    failing: Arc<AtomicBool>,
    /// Shutting down: a failed publish is given up instead of retried.
    stopping: Arc<AtomicBool>,
    /// The recent ones, for the `dead_letters` table.
    log: DeadLetterLog,
}

impl DeadLetterSink {
    /// Hands `d` to the publisher, waiting while its queue is full. (Refused events are counted
    /// by whoever refused them, one by one.)
    pub async fn send(&self, d: DeadLetter) {
        let mut error = d.error.to_string();
        if d.refused > 1 {
            error.push_str(&format!(
                " (and {} more refused lines of this message)",
                d.refused - 1
            ));
        }
        self.log.push(DeadLetterRow {
            seq: d.seq,
            refused_at: passpulse_engine::time::now_millis(),
            subject: d.subject.clone(),
            reason: d.error.reason.as_str().to_string(),
            line: d.error.index.min(u32::MAX as usize) as u32,
            error,
            bytes: d.truncated_from.unwrap_or(d.bytes.len()) as u64,
            prefix: DeadLetterRow::prefix_of(&d.bytes),
        });
        self.pending.fetch_add(1, SeqCst);
        if self.tx.send(d).await.is_err() {
            self.pending.fetch_sub(1, SeqCst);
            self.metrics
                .dead_letter_publish_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// At shutdown: from now on a dead letter whose publish fails is given up rather than
    /// retried, so a broker that is gone cannot hold the shutdown (or the consumer waiting for
    /// room in the queue). A given-up dead letter stays pending: no checkpoint covers its message,
    /// which the next start reads and refuses again.
    pub fn stop_retrying(&self) {
        self.stopping.store(true, SeqCst);
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
    let (tx, mut rx) = mpsc::channel::<DeadLetter>(QUEUE);
    let pending = Arc::new(AtomicU64::new(0));
    let failing = Arc::new(AtomicBool::new(false));
    let stopping = Arc::new(AtomicBool::new(false));
    let sink = DeadLetterSink {
        tx,
        metrics: metrics.clone(),
        pending: pending.clone(),
        failing: failing.clone(),
        stopping: stopping.clone(),
        log,
    };
    let task = tokio::spawn(async move {
        while let Some(d) = rx.recv().await {
            if publish(&js, &cfg, &metrics, (&failing, &stopping), d).await {
                pending.fetch_sub(1, SeqCst);
            }
        }
    });
    (sink, task)
}

/// Bytes the header lines take on the wire (`Name: value\r\n` each).
fn headers_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, vs)| {
            vs.iter()
                .map(|v| AsRef::<[u8]>::as_ref(k).len() + v.as_str().len() + 4)
                .sum::<usize>()
        })
        .sum()
}

fn header_value(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1024)
        .collect()
}

/// The headers of `d`, and its payload cut (if need be) so that both fit in one message of at
/// most `max_payload` bytes.
fn prepare(d: &DeadLetter, max_payload: usize) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_REASON, d.error.reason.as_str());
    headers.insert(HEADER_ERROR, header_value(&d.error.to_string()).as_str());
    headers.insert(HEADER_SUBJECT, header_value(&d.subject).as_str());
    headers.insert(HEADER_SEQ, d.seq.to_string().as_str());
    headers.insert(HEADER_LINE, d.error.index.to_string().as_str());
    if d.refused > 1 {
        headers.insert(HEADER_REFUSED, d.refused.to_string().as_str());
        headers.insert(HEADER_ERRORS, header_value(&d.errors.join(" | ")).as_str());
    }
    // a replay refuses the same lines again: the broker keeps one copy (within its window)
    headers.insert(
        async_nats::header::NATS_MESSAGE_ID,
        format!("dl-{}-{}", d.seq, d.error.index).as_str(),
    );
    let header_bytes = headers_len(&headers) + 64;
    let room = max_payload.saturating_sub(header_bytes + 64);
    let mut bytes = d.bytes.clone();
    let mut original = d.truncated_from;
    if bytes.len() > room {
        original.get_or_insert(bytes.len());
        bytes.truncate(room);
    }
    if let Some(n) = original {
        headers.insert(HEADER_TRUNCATED, n.to_string().as_str());
    }
    (headers, bytes)
}

/// Publishes `d`, retrying until the broker stores it or, at shutdown, until an attempt fails;
/// returns whether it is stored.
async fn publish(
    js: &jetstream::Context,
    cfg: &BusConfig,
    metrics: &IngestMetrics,
    (failing, stopping): (&AtomicBool, &AtomicBool),
    d: DeadLetter,
) -> bool {
    let subject = cfg.deadletter_subject(d.error.reason);
    let max_payload = js.client().server_info().max_payload;
    let (headers, bytes) = prepare(
        &d,
        if max_payload > 0 {
            max_payload
        } else {
            1 << 20
        },
    );
    let mut backoff = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let res = match js
            .publish_with_headers(subject.clone(), headers.clone(), bytes.clone())
            .await
        {
            Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        failing.store(res.is_err(), SeqCst);
        match res {
            Ok(()) => return true,
            Err(e) if stopping.load(SeqCst) => {
                warn!(%subject, seq = d.seq, error = %e, "dead letter not stored at shutdown; its message is read and refused again at the next start");
                return false;
            }
            Err(e) => {
                if attempt == 6 {
                    // counted once per dead letter: it is still retried, and no checkpoint covers
                    // its message until it is stored
                    error!(%subject, seq = d.seq, error = %e, "dead letter still not stored after 6 attempts; retrying, checkpoints wait for it");
                    metrics
                        .dead_letter_publish_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    warn!(%subject, attempt, error = %e, "dead letter publish failed; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
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
            // as the sink logged it: the first error, how many more, the size before any cut
            let mut error = h(HEADER_ERROR);
            if let Ok(n) = h(HEADER_REFUSED).parse::<u64>() {
                error.push_str(&format!(
                    " (and {} more refused lines of this message)",
                    n.saturating_sub(1)
                ));
            }
            log.push(DeadLetterRow {
                seq: h(HEADER_SEQ).parse().unwrap_or(0),
                refused_at: published,
                subject: h(HEADER_SUBJECT),
                reason: h(HEADER_REASON),
                line: h(HEADER_LINE).parse().unwrap_or(0),
                error,
                bytes: h(HEADER_TRUNCATED)
                    .parse()
                    .unwrap_or(m.payload.len() as u64),
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

#[cfg(test)]
mod tests {
    use super::*;
    use passpulse_engine::DecodedBatch;
    use passpulse_engine::event::decode_message;

    /// The dead letter of one message, as the consumer builds it.
    fn letter_of(payload: &[u8], cap: usize) -> Option<DeadLetter> {
        let payload = Bytes::copy_from_slice(payload);
        let mut rejects = Rejects::new(cap);
        decode_message(&payload, 9, &mut DecodedBatch::new(), |e, line| {
            rejects.add(e, payload.slice_ref(line))
        });
        rejects.finish("passpulse.events.batch", 9)
    }

    #[test]
    fn a_message_with_one_bad_line_gives_that_line() {
        let good = r#"{"id":"a","type":"pass.updated","ts":1,"pass":"p"}"#;
        let bad = r#"{"id":"b","type":"pass.updated","ts":"soon","pass":"p"}"#;
        assert!(letter_of(good.as_bytes(), 1 << 20).is_none());
        let d = letter_of(format!("{good}\n{bad}\n{good}").as_bytes(), 1 << 20).unwrap();
        assert_eq!((d.refused, d.error.index), (1, 2));
        assert_eq!(&d.bytes[..], bad.as_bytes());
        assert!(d.errors.is_empty() && d.truncated_from.is_none());
    }

    #[test]
    fn a_flood_of_bad_lines_is_one_bounded_dead_letter() {
        // 1 MiB of "x\n": 524,288 refused lines
        let flood = b"x\n".repeat(1 << 19);
        let d = letter_of(&flood, 1 << 20).unwrap();
        assert_eq!(d.refused, 1 << 19);
        assert_eq!(d.errors.len(), MAX_ERRORS);
        assert!(
            d.errors[0].starts_with("event 1: malformed JSON"),
            "{:?}",
            d.errors
        );
        assert_eq!(d.error.index, 1);
        // the refused lines, in order, as NDJSON
        assert_eq!(d.bytes.len(), (1 << 20) - 1);
        assert!(d.bytes.starts_with(b"x\nx\nx"));
        assert_eq!(d.truncated_from, None);
        // with less room than they take, they are cut and say how large they were
        let d = letter_of(&flood, 1000).unwrap();
        assert_eq!(d.bytes.len(), 1000);
        assert_eq!(d.truncated_from, Some((1 << 20) - 1));
        let (h, bytes) = prepare(&d, 1 << 20);
        assert_eq!(h.get(HEADER_REFUSED).unwrap().as_str(), "524288");
        assert_eq!(h.get(HEADER_TRUNCATED).unwrap().as_str(), "1048575");
        assert_eq!(
            h.get(HEADER_ERRORS)
                .unwrap()
                .as_str()
                .matches(" | ")
                .count(),
            9
        );
        assert_eq!(bytes.len(), 1000);
    }

    #[test]
    fn a_dead_letter_near_the_broker_limit_is_cut_to_fit_with_its_headers() {
        let max_payload = 1 << 20;
        let line = vec![b'x'; max_payload - 10];
        let d = letter_of(&line, max_payload).unwrap();
        assert_eq!(d.bytes.len(), max_payload - 10);
        let (h, bytes) = prepare(&d, max_payload);
        let header_bytes = headers_len(&h) + "NATS/1.0\r\n\r\n".len();
        assert!(
            header_bytes + bytes.len() <= max_payload,
            "{header_bytes} + {}",
            bytes.len()
        );
        assert!(bytes.len() > max_payload - 4096, "cut no more than needed");
        assert_eq!(
            h.get(HEADER_TRUNCATED).unwrap().as_str(),
            (max_payload - 10).to_string()
        );
        // a small one is left whole, with no such header
        let (h, _) = prepare(&letter_of(b"x", max_payload).unwrap(), max_payload);
        assert!(h.get(HEADER_TRUNCATED).is_none());
    }
}
