//! Rebuilding the rolling aggregates from the stored events, when a checkpoint's aggregates
//! snapshot cannot be read: written by a build with another snapshot format (an upgrade), or
//! damaged. The Parquet files the checkpoint names hold every event it covers, so applying them
//! again gives the same state the snapshot held: every aggregate is a function of the set of
//! events, not of their arrival order (that is what makes replays and late events safe).
//!
//! This reads the whole history once, so it is the slow path (about a second per million events);
//! the next checkpoint writes a snapshot in this build's format and later starts are fast again.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimestampMillisecondType, UInt64Type};

use super::Aggregates;
use crate::event::{EventRef, EventType, Platform};
use crate::persist::{FileSet, PersistError, read_file};

/// The aggregates of every event in `files`.
pub fn rebuild(files: &FileSet) -> Result<Aggregates, PersistError> {
    let mut aggs = Aggregates::default();
    for f in &files.files {
        let path = files.abs_path(f);
        for batch in read_file(&path)? {
            apply_batch(&mut aggs, &batch).map_err(|message| PersistError::Parquet {
                path: path.clone(),
                message,
            })?;
        }
    }
    Ok(aggs)
}

/// A string column of the events schema (plain or dictionary-encoded) as plain strings.
fn strings(batch: &RecordBatch, name: &str) -> Result<arrow::array::StringArray, String> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| format!("no column {name:?}"))?;
    let plain = cast(col, &DataType::Utf8).map_err(|e| format!("column {name:?}: {e}"))?;
    Ok(plain.as_string::<i32>().clone())
}

fn opt(a: &arrow::array::StringArray, i: usize) -> Option<&str> {
    a.is_valid(i).then(|| a.value(i))
}

fn apply_batch(aggs: &mut Aggregates, batch: &RecordBatch) -> Result<(), String> {
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name:?}"))
    };
    let seq = col("seq")?.as_primitive::<UInt64Type>().clone();
    let ts = col("ts")?
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    let arrival = col("ingested_at")?
        .as_primitive::<TimestampMillisecondType>()
        .clone();
    let value = col("value")?.as_primitive::<Float64Type>().clone();
    let s = |name: &str| strings(batch, name);
    let (id, kind, platform) = (s("id")?, s("type")?, s("platform")?);
    let (pass, program, customer, device) =
        (s("pass")?, s("program")?, s("customer")?, s("device")?);
    let (location, operator, source) = (s("location")?, s("operator")?, s("source")?);
    let (campaign, offer, result, attrs) = (s("campaign")?, s("offer")?, s("result")?, s("attrs")?);
    for i in 0..batch.num_rows() {
        let Some(k) = EventType::parse(kind.value(i)) else {
            return Err(format!("row {i}: unknown event type {:?}", kind.value(i)));
        };
        let e = EventRef {
            seq: seq.value(i),
            arrival: arrival.value(i),
            id: id.value(i),
            kind: k,
            ts: ts.value(i),
            pass: opt(&pass, i),
            program: opt(&program, i),
            customer: opt(&customer, i),
            device: opt(&device, i),
            platform: opt(&platform, i).and_then(Platform::parse),
            location: opt(&location, i),
            operator: opt(&operator, i),
            source: opt(&source, i),
            campaign: opt(&campaign, i),
            offer: opt(&offer, i),
            value: value.is_valid(i).then(|| value.value(i)),
            result: opt(&result, i),
            attrs: opt(&attrs, i),
        };
        aggs.apply(&e);
    }
    Ok(())
}
