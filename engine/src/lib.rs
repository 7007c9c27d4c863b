//! passpulse engine: the event model of wire format v1 and its validation, the Arrow hot store,
//! the rolling aggregates kept live per event, id de-duplication, and Parquet persistence with
//! checkpoints. Depends on no other passpulse crate; the bus
//! (ingest) and the SQL layer (query) build on it.

pub mod aggregates;
pub mod deadletters;
pub mod dedup;
mod engine;
pub mod event;
pub mod persist;
pub mod schema;
pub mod store;
pub mod time;

pub use aggregates::TableName;
pub use engine::{
    DEFAULT_MAX_FUTURE_SKEW, DiskStats, DistinctStats, Engine, EngineConfig, EngineWriter,
    FlushBarrier, HotStats, InstallBaseStats, PeakStats, Resume, Stats, new_engine, open_engine,
};
pub use event::{DecodedBatch, EventError, EventRef, EventType, Platform, Reason};
