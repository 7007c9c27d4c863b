//! passpulse ingest: the bus. NATS/JetStream connection and stream set-up, the engine's consumer
//! pipeline, dead letters, HTTP event intake, and the managed nats-server child process.

pub mod bus;
pub mod consumer;
pub mod deadletter;
pub mod intake;
pub mod metrics;
pub mod nats_server;

pub use bus::{BusConfig, BusError, connect, ensure_streams};
pub use consumer::{ConsumerOptions, Pipeline};
pub use deadletter::{DeadLetter, DeadLetterSink, spawn_publisher};
pub use metrics::IngestMetrics;
pub use nats_server::{ManagedNats, NatsServerError};
