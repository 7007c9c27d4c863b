//! passpulse engine: the event model of wire format v1 and its validation, the Arrow hot store,
//! and the rolling aggregates kept live per event. Depends on no other passpulse crate; the bus
//! (ingest) and the SQL layer (query) build on it.

pub mod aggregates;
mod engine;
pub mod event;
pub mod schema;
pub mod store;
pub mod time;

pub use aggregates::TableName;
pub use engine::{
    DistinctStats, Engine, EngineConfig, EngineWriter, HotStats, InstallBaseStats, PeakStats,
    Stats, new_engine,
};
pub use event::{DecodedBatch, EventError, EventRef, EventType, Platform, Reason};
