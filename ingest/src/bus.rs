//! The event bus: names (stream, subjects, consumer), the connection, and idempotent creation of
//! the JetStream streams passpulse needs.

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use passpulse_engine::{EventType, Reason};

/// Names and limits of the bus. Defaults are the production names of DESIGN.md.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Stream holding every event (`PASSPULSE_EVENTS`).
    pub stream: String,
    /// Events are published under `<subject_prefix>.<type>` and `<subject_prefix>.batch`.
    pub subject_prefix: String,
    /// Stream holding dead letters (`PASSPULSE_DEADLETTER`).
    pub deadletter_stream: String,
    /// Dead letters go to `<deadletter_prefix>.<reason>`.
    pub deadletter_prefix: String,
    /// Durable consumer name of the engine.
    pub consumer: String,
    /// Broker-side de-duplication window for `Nats-Msg-Id`.
    pub duplicate_window: Duration,
    /// How long dead letters are kept.
    pub deadletter_max_age: Duration,
    /// Messages larger than this are dead-lettered (`too_large`) without being parsed.
    pub max_message_bytes: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            stream: "PASSPULSE_EVENTS".into(),
            subject_prefix: "passpulse.events".into(),
            deadletter_stream: "PASSPULSE_DEADLETTER".into(),
            deadletter_prefix: "passpulse.deadletter".into(),
            consumer: "passpulse-engine".into(),
            duplicate_window: Duration::from_secs(120),
            deadletter_max_age: Duration::from_secs(7 * 86_400),
            max_message_bytes: 1 << 20,
        }
    }
}

impl BusConfig {
    pub fn event_subject(&self, t: EventType) -> String {
        t.subject(&self.subject_prefix)
    }

    pub fn batch_subject(&self) -> String {
        format!("{}.batch", self.subject_prefix)
    }

    pub fn deadletter_subject(&self, r: Reason) -> String {
        format!("{}.{}", self.deadletter_prefix, r.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        url: String,
        source: async_nats::ConnectError,
    },
    #[error("cannot create or open stream {stream}: {detail}")]
    Stream { stream: String, detail: String },
}

/// Connects with unlimited reconnects (the bus may restart under us).
pub async fn connect(url: &str) -> Result<async_nats::Client, BusError> {
    async_nats::ConnectOptions::new()
        .name("passpulse")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None)
        .connect(url)
        .await
        .map_err(|source| BusError::Connect {
            url: url.to_string(),
            source,
        })
}

/// Creates the event and dead-letter streams if missing; accepts existing ones as they are.
pub async fn ensure_streams(
    js: &jetstream::Context,
    cfg: &BusConfig,
) -> Result<stream::Stream, BusError> {
    let err = |stream: &str, e: &dyn std::fmt::Display| BusError::Stream {
        stream: stream.to_string(),
        detail: e.to_string(),
    };
    let events = js
        .get_or_create_stream(stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.>", cfg.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: cfg.duplicate_window,
            ..Default::default()
        })
        .await
        .map_err(|e| err(&cfg.stream, &e))?;
    js.get_or_create_stream(stream::Config {
        name: cfg.deadletter_stream.clone(),
        subjects: vec![format!("{}.>", cfg.deadletter_prefix)],
        storage: stream::StorageType::File,
        max_age: cfg.deadletter_max_age,
        max_bytes: 1 << 30,
        ..Default::default()
    })
    .await
    .map_err(|e| err(&cfg.deadletter_stream, &e))?;
    Ok(events)
}
