//! The engine: one writer that applies decoded batches to the hot store and the aggregates, and
//! any number of cheap [`Engine`] handles that read them (queries, stats, metrics).
//!
//! The writer is single-threaded by design (like a partition of a stream processor): the caller
//! owns the [`EngineWriter`] on one thread and scales out by partitioning the subject space.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use serde::Serialize;

use crate::aggregates::{
    Aggregates, DistinctRow, FunnelCount, RELATIVE_ERROR, SliceCount, TableName,
};
use crate::event::{DecodedBatch, EventType};
use crate::store::{HotReader, HotSnapshot, HotStore};
use crate::time;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Longest time an applied event stays invisible to queries (default 100 ms).
    pub publish_interval: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            publish_interval: Duration::from_millis(100),
        }
    }
}

/// Creates an engine: the single writer and a reader handle.
pub fn new_engine(cfg: EngineConfig) -> (EngineWriter, Engine) {
    let store = HotStore::new(cfg.publish_interval);
    let engine = Engine {
        hot: store.reader(),
        aggs: Arc::new(Mutex::new(Aggregates::default())),
    };
    let writer = EngineWriter {
        store,
        aggs: engine.aggs.clone(),
    };
    (writer, engine)
}

/// The single writer of an engine.
pub struct EngineWriter {
    store: HotStore,
    aggs: Arc<Mutex<Aggregates>>,
}

impl EngineWriter {
    /// Applies every event of `batch` to the hot store and the aggregates, then publishes to
    /// queries if the publish interval has passed.
    pub fn apply(&mut self, batch: &DecodedBatch) {
        let ingested_at = time::now_millis();
        {
            let mut aggs = self.aggs.lock();
            for e in batch.iter() {
                self.store.append(&e, ingested_at);
                aggs.apply(&e);
            }
        }
        self.store.maybe_publish(Instant::now());
    }

    /// Publishes pending rows if the interval has passed; call on a timer while busy.
    pub fn tick(&mut self) {
        self.store.maybe_publish(Instant::now());
    }

    /// Publishes pending rows now; call when nothing is waiting to be applied.
    pub fn idle(&mut self) {
        self.store.publish_idle();
    }

    /// Makes everything applied so far visible to queries now.
    pub fn publish(&mut self) {
        self.store.publish_now();
    }
}

/// A cheap, cloneable read handle.
#[derive(Clone)]
pub struct Engine {
    hot: HotReader,
    aggs: Arc<Mutex<Aggregates>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

impl Engine {
    /// The events visible to queries now.
    pub fn hot_snapshot(&self) -> Arc<HotSnapshot> {
        self.hot.snapshot()
    }

    /// The current contents of a live aggregate table.
    pub fn table(&self, name: TableName) -> RecordBatch {
        self.aggs.lock().table(name)
    }

    /// Events applied so far, by type (all types, in [`EventType::ALL`] order).
    pub fn events_by_type(&self) -> [(EventType, u64); EventType::COUNT] {
        let a = self.aggs.lock();
        EventType::ALL.map(|t| (t, a.count_of(t)))
    }

    /// Events applied so far.
    pub fn events_applied(&self) -> u64 {
        self.aggs.lock().events()
    }

    /// Live figures for `/api/v1/stats`.
    pub fn stats(&self) -> Stats {
        let hot = self.hot.snapshot();
        let mut a = self.aggs.lock();
        let watermark = a.watermark();
        let wm = watermark.unwrap_or(0);
        let by_type = EventType::ALL
            .iter()
            .map(|t| (t.as_str(), a.count_of(*t)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let mut last_hour: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (_, t, c) in a.counts.per_minute(wm - 59 * time::MINUTE_MS) {
            *last_hour.entry(t.as_str()).or_default() += c;
        }
        let rows = a.install_base_rows();
        let mut ib = InstallBaseStats::default();
        for (dim, value, c) in rows {
            match (dim, value) {
                ("all", _) => ib.all = c,
                ("platform", Some(v)) => drop(ib.by_platform.insert(v, c)),
                ("program", Some(v)) => drop(ib.by_program.insert(v, c)),
                ("source", Some(v)) => drop(ib.by_source.insert(v, c)),
                _ => {}
            }
        }
        let peaks = a
            .peaks
            .peaks(wm)
            .into_iter()
            .map(|p| PeakStats {
                location: p.location,
                window: p.window,
                peak_count: p.peak_count,
                peak_minute: p.peak_minute.map(time::format_millis),
                scans: p.scans,
            })
            .collect();
        let distinct_rows = a.distinct.rows();
        let today = time::day(wm);
        let distinct = DistinctStats {
            all: distinct_rows[0],
            today: distinct_rows.iter().find(|r| r.day == Some(today)).copied(),
            relative_error: RELATIVE_ERROR,
        };
        let funnel = a
            .passes
            .funnel
            .iter()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let rows_held = hot.rows();
        let bytes = hot.bytes();
        Stats {
            watermark: watermark.map(time::format_millis),
            events: a.events(),
            by_type,
            last_hour,
            install_base: ib,
            location_peaks: peaks,
            distinct,
            funnel,
            hot: HotStats {
                rows: rows_held,
                batches: hot.sealed.len() + hot.tail.is_some() as usize,
                bytes,
                bytes_per_event: if rows_held == 0 {
                    0.0
                } else {
                    bytes as f64 / rows_held as f64
                },
            },
        }
    }
}

/// Live aggregates, as served by `GET /api/v1/stats`.
#[derive(Debug, Serialize)]
pub struct Stats {
    /// Newest event time seen (RFC 3339); windows are relative to it.
    pub watermark: Option<String>,
    /// Events applied.
    pub events: u64,
    pub by_type: BTreeMap<&'static str, u64>,
    /// Events per type in the hour up to the watermark.
    pub last_hour: BTreeMap<&'static str, u64>,
    pub install_base: InstallBaseStats,
    pub location_peaks: Vec<PeakStats>,
    pub distinct: DistinctStats,
    pub funnel: BTreeMap<String, FunnelCount>,
    pub hot: HotStats,
}

#[derive(Debug, Default, Serialize)]
pub struct InstallBaseStats {
    pub all: SliceCount,
    pub by_platform: BTreeMap<String, SliceCount>,
    pub by_program: BTreeMap<String, SliceCount>,
    pub by_source: BTreeMap<String, SliceCount>,
}

#[derive(Debug, Serialize)]
pub struct PeakStats {
    pub location: String,
    pub window: &'static str,
    pub peak_count: u64,
    pub peak_minute: Option<String>,
    pub scans: u64,
}

#[derive(Debug, Serialize)]
pub struct DistinctStats {
    pub all: DistinctRow,
    /// The UTC day of the watermark.
    pub today: Option<DistinctRow>,
    /// Relative standard error of every estimate.
    pub relative_error: f64,
}

#[derive(Debug, Serialize)]
pub struct HotStats {
    pub rows: usize,
    pub batches: usize,
    pub bytes: usize,
    pub bytes_per_event: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode_message;

    #[test]
    fn applied_events_are_queryable_after_publish() {
        let (mut w, e) = new_engine(EngineConfig::default());
        let mut b = DecodedBatch::new();
        let n = decode_message(
            br#"{"id":"1","type":"scan","ts":1000,"pass":"p","location":"l","device":"d","operator":"o"}
{"id":"2","type":"pass.installed","ts":2000,"pass":"p","device":"phone","platform":"apple"}"#,
            1,
            &mut b,
            |e, _| panic!("{e}"),
        );
        assert_eq!(n, 2);
        w.apply(&b);
        w.publish();
        assert_eq!(e.hot_snapshot().rows(), 2);
        assert_eq!(e.events_applied(), 2);
        let s = e.stats();
        assert_eq!(s.install_base.all.active_passes, 1);
        assert_eq!(s.by_type["scan"], 1);
        assert_eq!(s.watermark.as_deref(), Some("1970-01-01T00:00:02.000Z"));
        let t = e.table(TableName::InstallBase);
        assert_eq!(t.num_rows(), 1 + 2 + 1 + 1);
    }
}
