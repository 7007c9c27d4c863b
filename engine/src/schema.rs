//! Arrow schema of the `events` table: every field of wire format v1 plus `seq` and
//! `ingested_at`. Low-cardinality strings are dictionary-encoded; ids and serials are plain.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// Time zone of every timestamp column.
pub const UTC: &str = "UTC";

pub(crate) fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some(UTC.into()))
}

fn dict(key: DataType) -> DataType {
    DataType::Dictionary(Box::new(key), Box::new(DataType::Utf8))
}

static EVENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("seq", DataType::UInt64, false),
        Field::new("ingested_at", ts_type(), false),
        Field::new("id", DataType::Utf8, false),
        Field::new("type", dict(DataType::UInt8), false),
        Field::new("ts", ts_type(), false),
        Field::new("pass", DataType::Utf8, true),
        Field::new("program", dict(DataType::UInt16), true),
        Field::new("customer", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("platform", dict(DataType::UInt8), true),
        Field::new("location", dict(DataType::UInt16), true),
        Field::new("operator", dict(DataType::UInt16), true),
        Field::new("source", dict(DataType::UInt16), true),
        Field::new("campaign", dict(DataType::UInt16), true),
        Field::new("offer", dict(DataType::UInt16), true),
        Field::new("value", DataType::Float64, true),
        Field::new("result", dict(DataType::UInt16), true),
        Field::new("attrs", DataType::Utf8, true),
    ]))
});

/// Schema of the `events` table (hot store and, later, Parquet files).
pub fn events_schema() -> SchemaRef {
    EVENTS.clone()
}
