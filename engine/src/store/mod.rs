//! The hot store: events as Arrow record batches, appended by the single writer and read by any
//! number of queries through cheap snapshots.
//!
//! Rows are appended to column builders. Every `publish_interval` (default 100 ms, which bounds
//! freshness) the builder's rows are published as the *tail* batch (a copy of the builder's
//! contents); at `MAX_BATCH_ROWS` the builder is sealed into an immutable batch and starts empty.
//! `MAX_BATCH_ROWS` keeps each batch's distinct values within the 16-bit dictionary keys, so a
//! dictionary can never overflow. A sealed batch is kept in a compact encoding
//! ([`SealedBatch`], about half the bytes of plain Arrow) and decoded as it is read. When the
//! writer is idle (caught up with the stream) it publishes at once instead of waiting for the
//! interval.
//!
//! With persistence on, a flush takes every sealed batch ([`HotStore::take_for_flush`]); once the
//! flusher has committed them, [`HotStore::flushed`] drops them and publishes the new file list in
//! the same snapshot, so a query sees each row exactly once: in memory before, on disk after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, DictionaryArray, Float64Builder, StringArray, StringBuilder, StringDictionaryBuilder,
    TimestampMillisecondBuilder, UInt8Builder, UInt64Builder,
};
use arrow::datatypes::{SchemaRef, UInt8Type, UInt16Type};
use arrow::record_batch::RecordBatch;
use parking_lot::RwLock;

use crate::event::{EventRef, EventType, Platform};
use crate::persist::FileSet;
use crate::schema::{events_schema, ts_type};

mod sealed;
pub use sealed::SealedBatch;

/// Largest batch: distinct values per batch ≤ rows ≤ u16::MAX, so `UInt16` keys never overflow.
pub const MAX_BATCH_ROWS: usize = u16::MAX as usize;

/// An idle writer seals rather than copies an open batch of at least this many rows.
pub const IDLE_SEAL_ROWS: usize = 8_192;

/// What queries see: the Parquet files, the sealed batches and the published part of the open
/// one — together, every event applied, each once.
#[derive(Debug, Clone, Default)]
pub struct HotSnapshot {
    pub files: Arc<FileSet>,
    pub sealed: Vec<Arc<SealedBatch>>,
    pub tail: Option<RecordBatch>,
}

impl HotSnapshot {
    /// Every batch held in memory, decoded, all columns.
    pub fn batches(&self) -> impl Iterator<Item = RecordBatch> + '_ {
        self.decoded(None)
    }

    /// Every batch held in memory with only the `projection` columns, decoded one by one as the
    /// iterator advances.
    pub fn decoded<'a>(
        &'a self,
        projection: Option<&'a [usize]>,
    ) -> impl Iterator<Item = RecordBatch> + 'a {
        (0..self.batch_count()).map(move |i| self.batch(i, projection))
    }

    /// Batches held in memory: the sealed ones, then the tail if any.
    pub fn batch_count(&self) -> usize {
        self.sealed.len() + self.tail.is_some() as usize
    }

    /// Batch `i` (`< batch_count()`), decoded, with only the `projection` columns.
    pub fn batch(&self, i: usize, projection: Option<&[usize]>) -> RecordBatch {
        match (self.sealed.get(i), &self.tail, projection) {
            (Some(b), _, _) => b.decode(projection),
            (None, Some(t), Some(p)) => t.project(p).expect("projection indexes the events schema"),
            (None, Some(t), None) => t.clone(),
            (None, None, _) => panic!("batch {i} of {}", self.batch_count()),
        }
    }

    /// Rows held in memory.
    pub fn rows(&self) -> usize {
        self.sealed.iter().map(|b| b.num_rows()).sum::<usize>()
            + self.tail.as_ref().map_or(0, |t| t.num_rows())
    }

    /// Rows visible to queries: in memory and in files.
    pub fn total_rows(&self) -> u64 {
        self.rows() as u64 + self.files.rows()
    }

    /// Bytes held by the buffers of the snapshot (sealed batches encoded, the tail plain).
    pub fn bytes(&self) -> usize {
        self.sealed.iter().map(|b| b.memory_size()).sum::<usize>()
            + self.tail.as_ref().map_or(0, |t| t.get_array_memory_size())
    }
}

/// Reader side of the hot store; cloneable, shared with queries.
#[derive(Debug, Clone, Default)]
pub struct HotReader {
    snapshot: Arc<RwLock<Arc<HotSnapshot>>>,
}

impl HotReader {
    pub fn snapshot(&self) -> Arc<HotSnapshot> {
        self.snapshot.read().clone()
    }
}

/// `type` and `platform` are closed sets: their dictionaries are fixed (every name, in enum
/// order) and a row stores just the key, with no hashing.
static TYPE_VALUES: std::sync::LazyLock<ArrayRef> = std::sync::LazyLock::new(|| {
    Arc::new(StringArray::from_iter_values(
        EventType::ALL.iter().map(|t| t.as_str()),
    ))
});
static PLATFORM_VALUES: std::sync::LazyLock<ArrayRef> = std::sync::LazyLock::new(|| {
    Arc::new(StringArray::from_iter_values(
        Platform::ALL.iter().map(|p| p.as_str()),
    ))
});

fn fixed_dict(keys: arrow::array::UInt8Array, values: &ArrayRef) -> ArrayRef {
    Arc::new(
        DictionaryArray::<UInt8Type>::try_new(keys, values.clone())
            .expect("keys are enum discriminants within the fixed dictionary"),
    )
}

struct Builders {
    seq: UInt64Builder,
    ingested_at: TimestampMillisecondBuilder,
    id: StringBuilder,
    kind: UInt8Builder,
    ts: TimestampMillisecondBuilder,
    pass: StringBuilder,
    program: StringDictionaryBuilder<UInt16Type>,
    customer: StringBuilder,
    device: StringBuilder,
    platform: UInt8Builder,
    location: StringDictionaryBuilder<UInt16Type>,
    operator: StringDictionaryBuilder<UInt16Type>,
    source: StringDictionaryBuilder<UInt16Type>,
    campaign: StringDictionaryBuilder<UInt16Type>,
    offer: StringDictionaryBuilder<UInt16Type>,
    value: Float64Builder,
    result: StringDictionaryBuilder<UInt16Type>,
    attrs: StringBuilder,
}

impl Builders {
    fn new() -> Self {
        let n = 8192;
        Builders {
            seq: UInt64Builder::with_capacity(n),
            ingested_at: TimestampMillisecondBuilder::with_capacity(n).with_data_type(ts_type()),
            id: StringBuilder::with_capacity(n, n * 16),
            kind: UInt8Builder::with_capacity(n),
            ts: TimestampMillisecondBuilder::with_capacity(n).with_data_type(ts_type()),
            pass: StringBuilder::with_capacity(n, n * 12),
            program: StringDictionaryBuilder::new(),
            customer: StringBuilder::with_capacity(n, n * 12),
            device: StringBuilder::with_capacity(n, n * 16),
            platform: UInt8Builder::with_capacity(n),
            location: StringDictionaryBuilder::new(),
            operator: StringDictionaryBuilder::new(),
            source: StringDictionaryBuilder::new(),
            campaign: StringDictionaryBuilder::new(),
            offer: StringDictionaryBuilder::new(),
            value: Float64Builder::with_capacity(n),
            result: StringDictionaryBuilder::new(),
            attrs: StringBuilder::new(),
        }
    }

    fn append(&mut self, e: &EventRef<'_>, ingested_at: i64) {
        fn dict<K: arrow::datatypes::ArrowDictionaryKeyType>(
            b: &mut StringDictionaryBuilder<K>,
            v: Option<&str>,
        ) {
            match v {
                // MAX_BATCH_ROWS makes overflow impossible; see module docs.
                Some(v) => {
                    b.append(v)
                        .expect("dictionary keys sized for MAX_BATCH_ROWS");
                }
                None => b.append_null(),
            }
        }
        self.seq.append_value(e.seq);
        self.ingested_at.append_value(if e.arrival > 0 {
            e.arrival
        } else {
            ingested_at
        });
        self.id.append_value(e.id);
        self.kind.append_value(e.kind as u8);
        self.ts.append_value(e.ts);
        self.pass.append_option(e.pass);
        dict(&mut self.program, e.program);
        self.customer.append_option(e.customer);
        self.device.append_option(e.device);
        self.platform.append_option(e.platform.map(|p| p as u8));
        dict(&mut self.location, e.location);
        dict(&mut self.operator, e.operator);
        dict(&mut self.source, e.source);
        dict(&mut self.campaign, e.campaign);
        dict(&mut self.offer, e.offer);
        self.value.append_option(e.value);
        dict(&mut self.result, e.result);
        self.attrs.append_option(e.attrs);
    }

    fn columns(&mut self, cloned: bool) -> Vec<ArrayRef> {
        // the builder's array: a copy (the builder keeps its rows) or taken (it is emptied)
        macro_rules! fin {
            ($b:expr) => {
                if cloned {
                    $b.finish_cloned()
                } else {
                    $b.finish()
                }
            };
        }
        macro_rules! col {
            ($b:expr) => {
                Arc::new(fin!($b)) as ArrayRef
            };
        }
        vec![
            col!(self.seq),
            col!(self.ingested_at),
            col!(self.id),
            fixed_dict(fin!(self.kind), &TYPE_VALUES),
            col!(self.ts),
            col!(self.pass),
            col!(self.program),
            col!(self.customer),
            col!(self.device),
            fixed_dict(fin!(self.platform), &PLATFORM_VALUES),
            col!(self.location),
            col!(self.operator),
            col!(self.source),
            col!(self.campaign),
            col!(self.offer),
            col!(self.value),
            col!(self.result),
            col!(self.attrs),
        ]
    }
}

/// Writer side of the hot store. Exactly one exists per engine.
pub struct HotStore {
    schema: SchemaRef,
    builders: Builders,
    open_rows: usize,
    published_rows: usize,
    sealed: Vec<Arc<SealedBatch>>,
    sealed_rows: usize,
    files: Arc<FileSet>,
    last_publish: Instant,
    publish_interval: Duration,
    reader: HotReader,
}

impl HotStore {
    pub fn new(publish_interval: Duration) -> Self {
        HotStore {
            schema: events_schema(),
            builders: Builders::new(),
            open_rows: 0,
            published_rows: 0,
            sealed: Vec::new(),
            sealed_rows: 0,
            files: Arc::default(),
            last_publish: Instant::now(),
            publish_interval,
            reader: HotReader::default(),
        }
    }

    pub fn reader(&self) -> HotReader {
        self.reader.clone()
    }

    /// Rows held in memory (sealed and open).
    pub fn rows(&self) -> usize {
        self.sealed_rows + self.open_rows
    }

    /// Seals the open rows and returns every sealed batch, for a flush. The batches stay visible
    /// until [`HotStore::flushed`] is called with their count.
    pub fn take_for_flush(&mut self) -> Vec<Arc<SealedBatch>> {
        if self.open_rows > 0 {
            self.seal();
        }
        self.sealed.clone()
    }

    /// The first `batches` sealed batches are in `files` now: drop them and show the files, in
    /// one snapshot.
    pub fn flushed(&mut self, batches: usize, files: Arc<FileSet>) {
        let n = batches.min(self.sealed.len());
        let gone: usize = self.sealed.drain(..n).map(|b| b.num_rows()).sum();
        self.sealed_rows -= gone;
        self.files = files;
        self.republish();
    }

    /// The file list changed (compaction, retention, recovery).
    pub fn set_files(&mut self, files: Arc<FileSet>) {
        self.files = files;
        self.republish();
    }

    fn republish(&mut self) {
        let tail = self.reader.snapshot().tail.clone();
        self.install(tail);
    }

    pub fn append(&mut self, e: &EventRef<'_>, ingested_at: i64) {
        self.builders.append(e, ingested_at);
        self.open_rows += 1;
        if self.open_rows >= MAX_BATCH_ROWS {
            self.seal();
        }
    }

    /// Publishes unpublished rows if the publish interval has passed (call after each apply and
    /// on idle ticks). Returns true if it published.
    pub fn maybe_publish(&mut self, now: Instant) -> bool {
        if self.open_rows != self.published_rows
            && now.duration_since(self.last_publish) >= self.publish_interval
        {
            self.publish_now();
            true
        } else {
            false
        }
    }

    /// Called when the writer has nothing queued: publishes pending rows now (the freshness a
    /// caught-up engine can afford), sealing instead of copying once the open batch is large so
    /// an idle publish never copies more than `IDLE_SEAL_ROWS` rows.
    pub fn publish_idle(&mut self) {
        if self.open_rows == self.published_rows {
            return;
        }
        if self.open_rows >= IDLE_SEAL_ROWS {
            self.seal();
        } else {
            self.publish_now();
        }
    }

    /// Makes every appended row visible to queries now.
    pub fn publish_now(&mut self) {
        let tail = (self.open_rows > 0).then(|| {
            let cols = self.builders.columns(true);
            RecordBatch::try_new(self.schema.clone(), cols).expect("builders match the schema")
        });
        self.published_rows = self.open_rows;
        self.install(tail);
    }

    fn seal(&mut self) {
        let cols = self.builders.columns(false);
        let batch =
            RecordBatch::try_new(self.schema.clone(), cols).expect("builders match the schema");
        self.sealed_rows += batch.num_rows();
        // re-encoded columns get new, exact buffers; the rest are shrunk by the encoder
        self.sealed.push(Arc::new(SealedBatch::encode(batch)));
        self.open_rows = 0;
        self.published_rows = 0;
        self.install(None);
    }

    fn install(&mut self, tail: Option<RecordBatch>) {
        let snap = Arc::new(HotSnapshot {
            files: self.files.clone(),
            sealed: self.sealed.clone(),
            tail,
        });
        *self.reader.snapshot.write() = snap;
        self.last_publish = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DecodedBatch, decode_line};

    fn events(n: usize) -> DecodedBatch {
        let mut b = DecodedBatch::new();
        for i in 0..n {
            let line = format!(
                r#"{{"id":"e{i}","type":"scan","ts":{},"pass":"p{}","location":"loc{}","device":"d","operator":"o"}}"#,
                1_000 + i,
                i % 7,
                i % 3
            );
            decode_line(line.as_bytes(), 1, i as u64 + 1, &mut b).unwrap();
        }
        b
    }

    #[test]
    fn rows_become_visible_on_publish_and_seal() {
        let mut s = HotStore::new(Duration::from_secs(3600));
        let r = s.reader();
        let b = events(10);
        for e in b.iter() {
            s.append(&e, 5);
        }
        assert_eq!(r.snapshot().rows(), 0, "not published yet");
        assert!(!s.maybe_publish(Instant::now()), "interval not elapsed");
        s.publish_now();
        assert_eq!(r.snapshot().rows(), 10);
        let snap = r.snapshot();
        let batch = snap.tail.as_ref().unwrap();
        assert_eq!(batch.schema(), events_schema());
        assert_eq!(batch.num_rows(), 10);
    }

    #[test]
    fn seals_at_max_batch_rows_without_dictionary_overflow() {
        let mut s = HotStore::new(Duration::from_secs(3600));
        let r = s.reader();
        let mut b = DecodedBatch::new();
        // every location distinct: the worst case for 16-bit dictionary keys
        for i in 0..(MAX_BATCH_ROWS + 10) {
            let line = format!(
                r#"{{"id":"e{i}","type":"scan","ts":1,"pass":"p","location":"l{i}","device":"d","operator":"o"}}"#
            );
            decode_line(line.as_bytes(), 1, 0, &mut b).unwrap();
        }
        for e in b.iter() {
            s.append(&e, 0);
        }
        s.publish_now();
        let snap = r.snapshot();
        assert_eq!(snap.sealed.len(), 1);
        assert_eq!(snap.sealed[0].num_rows(), MAX_BATCH_ROWS);
        assert_eq!(snap.rows(), MAX_BATCH_ROWS + 10);
    }
}
