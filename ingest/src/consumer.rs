//! The engine's consumer: JetStream → decode → apply, as a three-stage pipeline.
//!
//! 1. The receive loop reads the durable pull consumer, checks that deliveries are contiguous
//!    (consumer sequence), and groups ready messages into chunks.
//! 2. Chunks are decoded in order — small ones on the pipeline task, large ones on the blocking
//!    pool two at a time. The refused events of a message become one dead letter, handed to the
//!    dead-letter publisher (waiting while its bounded queue is full) before the message's events
//!    go on to the writer, so a checkpoint waits for them.
//! 3. One writer thread applies decoded batches to the engine and publishes them to queries.
//!
//! A decode that fails (a panic in the decoder) never skips its messages: the decode stage drops
//! that chunk and every later one of the same consumer epoch, and the receive loop re-creates the
//! consumer at the failed chunk's first sequence (counted in `decode_failures`, logged), since all
//! earlier chunks reached the writer in order.
//!
//! Position, not acks, is the source of truth: the consumer uses `AckPolicy::None` and, on any
//! broker error or delivery gap, is re-created at the stream sequence after the last one
//! received. Messages at or below that sequence are skipped, so nothing is applied twice and
//! nothing is skipped. At start the position is the engine's checkpoint + 1 (1 without
//! persistence: the engine rebuilds from the whole stream).
//!
//! Each message's broker timestamp travels with its events as their arrival time: it is what
//! `ingested_at` records and what id de-duplication measures its window in, so a replay after a
//! crash takes the same decisions as the first pass.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull},
    stream::Stream,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::Either;
use passpulse_engine::persist::PersistError;
use passpulse_engine::{
    DecodedBatch, Engine, EngineConfig, EngineWriter, EventError, Resume, event::decode_message,
    open_engine,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::bus::BusConfig;
use crate::deadletter::{DeadLetter, DeadLetterSink, Rejects};
use crate::metrics::IngestMetrics;

/// Tuning of the consumer pipeline.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// Messages per pull request.
    pub fetch_batch: usize,
    /// Most messages decoded as one unit.
    pub chunk: usize,
    /// Chunks decoded concurrently.
    pub decoders: usize,
}

impl Default for ConsumerOptions {
    fn default() -> Self {
        ConsumerOptions {
            fetch_batch: 2_000,
            chunk: 512,
            decoders: 2,
        }
    }
}

/// A consumer silent this long is checked against the stream's last sequence.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// Chunks up to this many payload bytes (~0.1 ms of decoding) are decoded on the pipeline task.
const INLINE_DECODE_BYTES: usize = 64 * 1024;

/// Messages handed to the decode stage, tagged with the consumer epoch they were read in.
struct Chunk {
    epoch: u64,
    msgs: Vec<RawMsg>,
    /// The first chunk read after a decode failure: if it fails again, its messages are decoded
    /// one by one and the one the decoder cannot survive is dead-lettered.
    isolate: bool,
}

/// A chunk that could not be decoded: its epoch, first stream sequence and why.
struct DecodeFailure {
    epoch: u64,
    first_seq: u64,
    error: String,
}

struct RawMsg {
    subject: async_nats::Subject,
    payload: Bytes,
    seq: u64,
    /// Broker timestamp, epoch millis.
    arrival: i64,
}

enum WriterMsg {
    Apply(DecodedBatch),
    Tick,
}

/// (Re)creates the engine's durable consumer so that its next delivery is `start_seq`.
pub async fn open_consumer(
    stream: &Stream,
    name: &str,
    start_seq: u64,
) -> Result<PullConsumer, String> {
    // Deleting a missing consumer fails harmlessly; any real problem shows in create.
    let _ = stream.delete_consumer(name).await;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.to_string()),
            deliver_policy: if start_seq <= 1 {
                DeliverPolicy::All
            } else {
                DeliverPolicy::ByStartSequence {
                    start_sequence: start_seq,
                }
            },
            ack_policy: AckPolicy::None,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())
}

/// The continuous message stream of a consumer, as the engine reads it.
pub async fn messages(
    consumer: &PullConsumer,
    opts: &ConsumerOptions,
) -> Result<pull::Stream, String> {
    consumer
        .stream()
        .max_messages_per_batch(opts.fetch_batch)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await
        .map_err(|e| e.to_string())
}

/// A running pipeline into a fresh engine: the one wiring that `serve` and the benchmarks use.
pub struct Pipeline {
    pub engine: Engine,
    pub metrics: Arc<IngestMetrics>,
    /// Where the engine resumed from.
    pub resume: Resume,
    stop_tx: watch::Sender<bool>,
    consumer: tokio::task::JoinHandle<()>,
    dead_letters: tokio::task::JoinHandle<()>,
    sink: DeadLetterSink,
}

impl Pipeline {
    /// Opens the engine (recovering its checkpoint, if persistent), creates the dead-letter
    /// publisher and the consumer pipeline, and starts them at the engine's resume position.
    /// Call from a Tokio runtime; recovery reads the disk on a blocking thread.
    pub async fn start(
        js: &jetstream::Context,
        bus: &BusConfig,
        opts: ConsumerOptions,
        engine: EngineConfig,
    ) -> Result<Pipeline, PersistError> {
        let max_future_skew = engine.max_future_skew.map(|d| d.as_millis() as i64);
        let (mut writer, engine, resume) = tokio::task::spawn_blocking(move || open_engine(engine))
            .await
            .expect("engine recovery does not panic")?;
        let metrics = Arc::new(IngestMetrics::default());
        metrics
            .last_seq
            .store(resume.from_seq.saturating_sub(1), Relaxed);
        let log = engine.dead_letter_log().clone();
        crate::deadletter::load_recent(js, bus, &log).await;
        let (sink, dead_letters) =
            crate::deadletter::spawn_publisher(js.clone(), bus.clone(), metrics.clone(), log);
        {
            let sink = sink.clone();
            writer.set_flush_barrier(Box::new(move |closing| {
                if closing {
                    // at shutdown: give up at once if the broker refuses them
                    return sink.wait_drained_or_failing(Duration::from_secs(10));
                }
                // a checkpoint must never cover a dead letter the broker does not have: if they
                // are not all stored within a moment, the writer postpones the checkpoint and
                // asks again later (consuming goes on meanwhile)
                let drained = sink.wait_drained(Duration::from_millis(500));
                if !drained {
                    warn!("dead letters are not stored yet; the checkpoint waits for them");
                }
                drained
            }));
        }
        let sink_handle = sink.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let consumer = tokio::spawn(run_engine_consumer(
            js.clone(),
            bus.clone(),
            opts,
            writer,
            sink,
            metrics.clone(),
            Position {
                from_seq: resume.from_seq,
                shutdown: stop_rx,
                max_future_skew,
            },
        ));
        Ok(Pipeline {
            engine,
            metrics,
            resume,
            stop_tx,
            consumer,
            dead_letters,
            sink: sink_handle,
        })
    }

    /// Stops consuming, applies and publishes what was received, flushes and checkpoints it (if
    /// persistent), and drains the dead letters. Bounded whatever the broker's state: with the
    /// broker gone, a dead letter whose publish fails is given up (it stays in the log, and no
    /// checkpoint covers its message, so the next start refuses it again).
    pub async fn stop(self) {
        // a healthy broker still takes every dead letter; a failing one no longer holds anything
        self.sink.stop_retrying();
        drop(self.sink);
        let _ = self.stop_tx.send(true);
        let _ = self.consumer.await;
        let mut dead_letters = self.dead_letters;
        if tokio::time::timeout(Duration::from_secs(10), &mut dead_letters)
            .await
            .is_err()
        {
            warn!(
                "dead letters still unpublished at shutdown; their events are replayed at the next start"
            );
            dead_letters.abort();
        }
    }
}

/// Where consuming starts, the signal that stops it, and how far ahead of its arrival an event
/// may be stamped (millis; `None`: unbounded).
struct Position {
    from_seq: u64,
    shutdown: watch::Receiver<bool>,
    max_future_skew: Option<i64>,
}

/// Runs the pipeline until `shutdown` becomes true; then drains, closes the writer and returns.
async fn run_engine_consumer(
    js: jetstream::Context,
    cfg: BusConfig,
    opts: ConsumerOptions,
    writer: EngineWriter,
    sink: DeadLetterSink,
    metrics: Arc<IngestMetrics>,
    position: Position,
) {
    let Position {
        from_seq,
        mut shutdown,
        max_future_skew,
    } = position;
    // De-duplication runs as its own ordered stage, beside the writer rather than on it.
    let mut writer = writer;
    let mut dedup = writer.take_dedup();
    let (wtx, wrx) = mpsc::channel::<WriterMsg>(8);
    let writer_thread = std::thread::Builder::new()
        .name("passpulse-writer".into())
        .spawn(move || writer_loop(writer, wrx))
        .expect("spawning the writer thread");

    let ticker = {
        let wtx = wtx.clone();
        tokio::spawn(async move {
            let mut iv = tokio::time::interval(Duration::from_millis(10));
            loop {
                iv.tick().await;
                if let Err(mpsc::error::TrySendError::Closed(_)) = wtx.try_send(WriterMsg::Tick) {
                    return;
                }
            }
        })
    };

    // Stage 2: ordered, parallel decode.
    let (rtx, rrx) = mpsc::channel::<Chunk>(opts.decoders * 2);
    let (fail_tx, mut fail_rx) = mpsc::unbounded_channel::<DecodeFailure>();
    let decode_stage = {
        let max = cfg.max_message_bytes;
        let metrics = metrics.clone();
        // chunks of this epoch and older are dropped: one of them failed
        let mut dropping = 0u64;
        tokio::spawn(
            tokio_stream::wrappers::ReceiverStream::new(rrx)
                .map(move |chunk| {
                    let metrics = metrics.clone();
                    let (epoch, first_seq) = (chunk.epoch, chunk.msgs.first().map_or(0, |m| m.seq));
                    let fail = move |error: String| DecodeFailure {
                        epoch,
                        first_seq,
                        error,
                    };
                    // A small chunk (the usual case with one event per message) costs less to
                    // decode here than to hand to another thread; big ones go to the pool.
                    let bytes: usize = chunk.msgs.iter().map(|m| m.payload.len()).sum();
                    if bytes <= INLINE_DECODE_BYTES {
                        let r = decode_guarded(
                            chunk.msgs,
                            chunk.isolate,
                            max,
                            max_future_skew,
                            &metrics,
                        )
                        .map_err(fail);
                        Either::Left(futures::future::ready((epoch, r)))
                    } else {
                        Either::Right(async move {
                            let r = tokio::task::spawn_blocking(move || {
                                decode_guarded(
                                    chunk.msgs,
                                    chunk.isolate,
                                    max,
                                    max_future_skew,
                                    &metrics,
                                )
                            })
                            .await
                            .unwrap_or_else(|e| Err(e.to_string()))
                            .map_err(fail);
                            (epoch, r)
                        })
                    }
                })
                .buffered(opts.decoders)
                .for_each(move |(epoch, res)| {
                    let wtx = wtx.clone();
                    let sink = sink.clone();
                    let decoded = match res {
                        _ if epoch <= dropping => None,
                        Ok((mut batch, letters)) => {
                            if let Some(d) = dedup.as_mut() {
                                d.filter(&mut batch);
                            }
                            Some((batch, letters))
                        }
                        Err(f) => {
                            dropping = epoch;
                            let _ = fail_tx.send(f);
                            None
                        }
                    };
                    async move {
                        if let Some((batch, letters)) = decoded {
                            // handed over before the batch reaches the writer, so the writer's
                            // next checkpoint waits for them; waits while the queue is full
                            for d in letters {
                                sink.send(d).await;
                            }
                            let _ = wtx.send(WriterMsg::Apply(batch)).await;
                        }
                    }
                }),
        )
    };

    receive_loop(
        &js,
        &cfg,
        &opts,
        from_seq,
        (&rtx, &mut fail_rx),
        &metrics,
        &mut shutdown,
    )
    .await;
    drop(rtx);
    let _ = decode_stage.await;
    ticker.abort();
    let _ = ticker.await;
    let _ = tokio::task::spawn_blocking(move || writer_thread.join()).await;
}

async fn receive_loop(
    js: &jetstream::Context,
    cfg: &BusConfig,
    opts: &ConsumerOptions,
    from_seq: u64,
    (rtx, failures): (
        &mpsc::Sender<Chunk>,
        &mut mpsc::UnboundedReceiver<DecodeFailure>,
    ),
    metrics: &IngestMetrics,
    shutdown: &mut watch::Receiver<bool>,
) {
    let mut next_seq: u64 = from_seq.max(1);
    let mut epoch = 1u64;
    let mut isolate = false;
    let mut backoff = Duration::from_millis(100);
    let mut first = true;
    'outer: while !*shutdown.borrow() {
        if !first {
            metrics.consumer_restarts.fetch_add(1, Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.changed() => break,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        first = false;
        // a failure reported while re-positioning for another reason (a broker error, a gap)
        // is one of this epoch: restart at it, or every later chunk of the epoch is dropped;
        // one reported for an older epoch was handled when it was current
        while let Ok(f) = failures.try_recv() {
            if f.epoch == epoch {
                restart_at_failure(&f, metrics, &mut next_seq, &mut epoch);
                isolate = true;
            }
        }
        let got = tokio::select! {
            s = js.get_stream(&cfg.stream) => s,
            _ = shutdown.changed() => break,
        };
        let mut stream = match got {
            Ok(s) => s,
            Err(e) => {
                warn!(stream = %cfg.stream, error = %e, "cannot open the event stream; retrying");
                continue;
            }
        };
        let opened = tokio::select! {
            c = open_consumer(&stream, &cfg.consumer, next_seq) => c,
            _ = shutdown.changed() => break,
        };
        let consumer = match opened {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "cannot create the engine consumer; retrying");
                continue;
            }
        };
        // Up to `chunk` messages or 1 ms from the first: at high message rates this amortises the
        // per-chunk hand-offs; at low rates it adds at most 1 ms.
        let started = tokio::select! {
            m = messages(&consumer, opts) => m,
            _ = shutdown.changed() => break,
        };
        let mut msgs = match started {
            Ok(m) => Box::pin(tokio_stream::StreamExt::chunks_timeout(
                m,
                opts.chunk,
                Duration::from_millis(1),
            )),
            Err(e) => {
                warn!(error = %e, "cannot start consuming; retrying");
                continue;
            }
        };
        info!(consumer = %cfg.consumer, from_seq = next_seq, "consuming");
        let mut last_cseq = 0u64;
        loop {
            let chunk = tokio::select! {
                c = tokio::time::timeout(STALL_CHECK, msgs.next()) => c,
                Some(f) = failures.recv() => {
                    if f.epoch == epoch {
                        restart_at_failure(&f, metrics, &mut next_seq, &mut epoch);
                        isolate = true;
                        continue 'outer;
                    }
                    continue;
                }
                _ = shutdown.changed() => break 'outer,
            };
            let Ok(chunk) = chunk else {
                // Quiet for a while: normal when caught up, a wedged pull when the stream holds
                // messages past our position (seen after a previous process was killed while its
                // pull requests were outstanding). Then re-position rather than wait forever.
                let info = tokio::select! {
                    i = stream.info() => i,
                    _ = shutdown.changed() => break 'outer,
                };
                match info {
                    Ok(info) if info.state.last_sequence >= next_seq => {
                        warn!(
                            next_seq,
                            stream_last = info.state.last_sequence,
                            "consumer delivers nothing although the stream has more; re-positioning"
                        );
                        continue 'outer;
                    }
                    _ => continue,
                }
            };
            let Some(chunk) = chunk else {
                warn!("consumer stream ended; re-positioning");
                continue 'outer;
            };
            let mut raw = Vec::with_capacity(chunk.len());
            let mut broken = None;
            for m in chunk {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        broken = Some(e.to_string());
                        break;
                    }
                };
                let info = match m.info() {
                    Ok(i) => (
                        i.stream_sequence,
                        i.consumer_sequence,
                        i.pending,
                        (i.published.unix_timestamp_nanos() / 1_000_000) as i64,
                    ),
                    Err(e) => {
                        broken = Some(format!("unreadable delivery metadata: {e}"));
                        break;
                    }
                };
                let (seq, cseq, pending, arrival) = info;
                if cseq != last_cseq + 1 {
                    broken = Some(format!(
                        "delivery gap: consumer sequence {cseq} after {last_cseq}"
                    ));
                    break;
                }
                last_cseq = cseq;
                metrics.consumer_lag.store(pending, Relaxed);
                if seq < next_seq {
                    continue;
                }
                next_seq = seq + 1;
                let m = m.split().0;
                raw.push(RawMsg {
                    subject: m.subject,
                    payload: m.payload,
                    seq,
                    arrival,
                });
            }
            if !raw.is_empty() {
                metrics.messages.fetch_add(raw.len() as u64, Relaxed);
                metrics.last_seq.store(next_seq - 1, Relaxed);
                let chunk = Chunk {
                    epoch,
                    msgs: raw,
                    isolate: std::mem::take(&mut isolate),
                };
                if rtx.send(chunk).await.is_err() {
                    break 'outer;
                }
                backoff = Duration::from_millis(100);
            }
            if let Some(why) = broken {
                warn!(error = %why, next_seq, "consumer interrupted; re-positioning");
                continue 'outer;
            }
        }
    }
}

/// Re-positions the receive loop at a chunk whose decoding failed, in a new epoch (the decode
/// stage drops what is left of the old one).
fn restart_at_failure(
    f: &DecodeFailure,
    metrics: &IngestMetrics,
    next_seq: &mut u64,
    epoch: &mut u64,
) {
    metrics.decode_failures.fetch_add(1, Relaxed);
    tracing::error!(
        error = %f.error,
        from_seq = f.first_seq,
        "decoding failed; restarting the consumer at the failed chunk (nothing is skipped)"
    );
    *next_seq = f.first_seq;
    *epoch += 1;
}

/// [`decode_chunk`], with a panic contained: the chunk is an error, and the consumer restarts at
/// it. If the chunk read again after that restart (`isolate`) fails too, each message is decoded
/// alone: one that fails by itself (a message the decoder cannot survive) becomes a dead letter
/// with its bytes, and the others are decoded again together. A message is never skipped.
fn decode_guarded(
    chunk: Vec<RawMsg>,
    isolate: bool,
    max_bytes: usize,
    max_future_skew: Option<i64>,
    metrics: &IngestMetrics,
) -> Result<(DecodedBatch, Vec<DeadLetter>), String> {
    let attempt = |msgs: &[RawMsg]| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            decode_chunk(msgs, max_bytes, max_future_skew, metrics)
        }))
        .map_err(|p| {
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "the decoder panicked".into())
        })
    };
    let why = match attempt(&chunk) {
        Ok(r) => return Ok(r),
        Err(why) if !isolate => return Err(why),
        Err(why) => why,
    };
    metrics.decode_failures.fetch_add(1, Relaxed);
    tracing::error!(error = %why, "decoding failed again after a restart; decoding the chunk's messages one by one");
    let (good, poison): (Vec<RawMsg>, Vec<RawMsg>) = chunk
        .into_iter()
        .partition(|m| attempt(std::slice::from_ref(m)).is_ok());
    let (batch, mut letters) = attempt(&good)?;
    for m in poison {
        tracing::error!(
            seq = m.seq,
            "the decoder fails on this message; it is dead-lettered"
        );
        let error = EventError {
            index: 1,
            field: None,
            reason: passpulse_engine::Reason::InvalidValue,
            detail: format!("the decoder failed on this message ({why}); it is kept here whole"),
        };
        metrics.dead_letter(error.reason);
        let mut r = Rejects::new(max_bytes);
        r.add(error, m.payload.clone());
        letters.extend(r.finish(m.subject.as_str(), m.seq));
    }
    Ok((batch, letters))
}

#[cfg(test)]
/// A stream sequence whose decoding panics once (fault injection for the tests).
static PANIC_ONCE_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
#[cfg(test)]
/// A stream sequence whose decoding always panics (a poison message, for the tests).
static POISON_AT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Decodes the messages of a chunk; returns their events and at most one dead letter per message
/// (every refused line is counted in `metrics`).
fn decode_chunk(
    chunk: &[RawMsg],
    max_bytes: usize,
    max_future_skew: Option<i64>,
    metrics: &IngestMetrics,
) -> (DecodedBatch, Vec<DeadLetter>) {
    let mut out = DecodedBatch::with_capacity(chunk.len());
    out.set_max_future_skew(max_future_skew);
    let mut letters = Vec::new();
    for m in chunk {
        #[cfg(test)]
        if PANIC_ONCE_AT
            .compare_exchange(m.seq, 0, Relaxed, Relaxed)
            .is_ok()
        {
            panic!("injected decode failure at {}", m.seq);
        }
        #[cfg(test)]
        if POISON_AT.load(Relaxed) == m.seq {
            panic!("injected poison message at {}", m.seq);
        }
        out.note_seq(m.seq);
        out.set_arrival(m.arrival);
        let mut rejects = Rejects::new(max_bytes);
        if m.payload.len() > max_bytes {
            let error = EventError::too_large(m.payload.len(), max_bytes);
            metrics.dead_letter(error.reason);
            rejects.add(error, m.payload.clone());
        } else {
            decode_message(&m.payload, m.seq, &mut out, |error, line| {
                metrics.dead_letter(error.reason);
                rejects.add(error, m.payload.slice_ref(line));
            });
        }
        letters.extend(rejects.finish(m.subject.as_str(), m.seq));
    }
    metrics.events_decoded.fetch_add(out.len() as u64, Relaxed);
    (out, letters)
}

fn writer_loop(mut writer: EngineWriter, mut rx: mpsc::Receiver<WriterMsg>) {
    // A tick that finds no batch applied since the previous tick means the writer is caught up:
    // publish at once rather than waiting out the interval.
    let mut applied_since_tick = false;
    while let Some(msg) = rx.blocking_recv() {
        match msg {
            WriterMsg::Apply(batch) => {
                writer.apply(&batch);
                applied_since_tick = true;
            }
            WriterMsg::Tick if applied_since_tick => {
                writer.tick();
                applied_since_tick = false;
            }
            WriterMsg::Tick => writer.idle(),
        }
    }
    writer.close();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nats_server::ManagedNats;

    /// A decode that panics mid-stream loses nothing and applies nothing twice: the consumer
    /// restarts at the failed chunk; a message that fails every time is dead-lettered, and
    /// ingest goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_decode_restarts_at_its_chunk_and_skips_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let nats = ManagedNats::start(&dir.path().join("nats")).await.unwrap();
        let client = crate::bus::connect(nats.url()).await.unwrap();
        let js = jetstream::new(client);
        let bus = BusConfig::default();
        crate::bus::ensure_streams(&js, &bus).await.unwrap();
        const N: u64 = 300;
        let publish = |from: u64| {
            let js = js.clone();
            async move {
                for i in from..from + N {
                    let ev = format!(
                        r#"{{"id":"e{i}","type":"link.clicked","ts":{},"source":"qr"}}"#,
                        1_700_000_000_000u64 + i
                    );
                    js.publish("passpulse.events.link.clicked", ev.into())
                        .await
                        .unwrap()
                        .await
                        .unwrap();
                }
            }
        };
        publish(0).await;
        // the stream's 137th message fails to decode, once
        PANIC_ONCE_AT.store(137, Relaxed);
        let p = Pipeline::start(
            &js,
            &bus,
            ConsumerOptions::default(),
            EngineConfig::default(),
        )
        .await
        .unwrap();
        let t0 = std::time::Instant::now();
        while p.engine.events_applied() < N && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(PANIC_ONCE_AT.load(Relaxed), 0, "the fault was injected");
        assert_eq!(p.engine.events_applied(), N);
        assert_eq!(
            p.engine.stats().disk.duplicates,
            0,
            "nothing was applied twice"
        );
        assert_eq!(p.metrics.decode_failures.load(Relaxed), 1);

        // a message the decoder never survives (stream sequence 455): the restart fails again,
        // so the chunk is decoded message by message and that one is dead-lettered, whole
        POISON_AT.store(455, Relaxed);
        publish(N).await;
        let t0 = std::time::Instant::now();
        while p.engine.events_applied() < 2 * N - 1 && t0.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            p.engine.events_applied(),
            2 * N - 1,
            "all but the poison message"
        );
        let refused: Vec<_> = p.metrics.dead_letters().filter(|(_, n)| *n > 0).collect();
        assert_eq!(refused, vec![(passpulse_engine::Reason::InvalidValue, 1)]);
        assert_eq!(
            p.metrics.decode_failures.load(Relaxed),
            3,
            "restart, then isolation"
        );
        POISON_AT.store(0, Relaxed);
        p.stop().await;
        nats.stop().await;
    }
}
