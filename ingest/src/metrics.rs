//! Counters of the bus side, read by `/metrics`: messages consumed, dead letters by reason,
//! consumer lag and position, HTTP intake outcomes. Plain atomics: the hot path only adds.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use passpulse_engine::Reason;

#[derive(Debug, Default)]
pub struct IngestMetrics {
    /// NATS messages received by the engine consumer.
    pub messages: AtomicU64,
    /// Events accepted by the decoder (before apply).
    pub events_decoded: AtomicU64,
    dead_letters: [AtomicU64; Reason::ALL.len()],
    /// Dead letters the dead-letter stream had still not stored after 6 attempts (they are
    /// retried until stored; checkpoints wait for them).
    pub dead_letter_publish_failures: AtomicU64,
    /// Messages the stream still holds for the consumer (JetStream's `num_pending`).
    pub consumer_lag: AtomicU64,
    /// Last stream sequence received.
    pub last_seq: AtomicU64,
    /// Times the consumer was re-positioned (after a broker error or a delivery gap).
    pub consumer_restarts: AtomicU64,
    /// Chunks whose decoding failed (a panic); the pipeline restarted from the chunk's first
    /// message, so nothing was skipped.
    pub decode_failures: AtomicU64,
    /// `POST /api/v1/events` outcomes, per line.
    pub http_accepted: AtomicU64,
    pub http_duplicates: AtomicU64,
    pub http_rejected: AtomicU64,
}

impl IngestMetrics {
    pub fn dead_letter(&self, r: Reason) {
        self.dead_letters[r as usize].fetch_add(1, Relaxed);
    }

    pub fn dead_letters(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.dead_letters[*r as usize].load(Relaxed)))
    }

    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}
