//! The engine: one writer that applies decoded batches to the hot store and the aggregates, and
//! any number of cheap [`Engine`] handles that read them (queries, stats, metrics).
//!
//! The writer is single-threaded by design (like a partition of a stream processor): the caller
//! owns the [`EngineWriter`] on one thread and scales out by partitioning the subject space.
//!
//! With persistence on, [`open_engine`] first recovers the newest valid checkpoint (aggregates,
//! de-duplication ids, Parquet files) and tells the caller which stream sequence to resume from;
//! the writer then hands flush jobs to the flusher thread on the flush policy and applies its
//! reports, and stops taking input while too many rows wait for a slow or failing disk.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use parking_lot::Mutex;
use serde::Serialize;

use crate::aggregates::{
    Aggregates, DistinctRow, FunnelCount, RELATIVE_ERROR, SliceCount, TableName,
};
use crate::deadletters::DeadLetterLog;
use crate::dedup::Dedup;
use crate::event::{DecodedBatch, EventType};
use crate::persist::{
    DirLock, FileSet, FlushDone, FlushJob, Flusher, PersistConfig, PersistError, PersistMetrics,
    recover,
};
use crate::store::{HotReader, HotSnapshot, HotStore};
use crate::time;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Longest time an applied event stays invisible to queries (default 100 ms).
    pub publish_interval: Duration,
    /// How long (in arrival time) an event id is remembered for de-duplication (default 24 h).
    pub dedup_window: Duration,
    /// Parquet persistence and checkpoints; `None` keeps everything in memory.
    pub persist: Option<PersistConfig>,
    /// Events stamped further than this after the broker received them are refused
    /// (`invalid_value`), so one mis-stamped event cannot move the watermark (default 1 h; `None`:
    /// unbounded). See [`DecodedBatch::set_max_future_skew`].
    pub max_future_skew: Option<Duration>,
}

/// Default of [`EngineConfig::max_future_skew`]: an hour covers any clock drift of a sane
/// producer, and bounds how far one event can push the windows ahead of the data (Kafka 4.0
/// chose the same default for `log.message.timestamp.after.max.ms`).
pub const DEFAULT_MAX_FUTURE_SKEW: Duration = Duration::from_secs(3600);

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            publish_interval: Duration::from_millis(100),
            dedup_window: Duration::from_secs(24 * 3600),
            persist: None,
            max_future_skew: Some(DEFAULT_MAX_FUTURE_SKEW),
        }
    }
}

/// Creates an in-memory engine: the single writer and a reader handle.
pub fn new_engine(mut cfg: EngineConfig) -> (EngineWriter, Engine) {
    cfg.persist = None;
    let (w, e, _) = open_engine(cfg).expect("an in-memory engine has nothing to recover");
    (w, e)
}

/// What the engine recovered at start.
#[derive(Debug, Default, Clone)]
pub struct Resume {
    /// Stream sequence to consume from (the checkpoint's last sequence + 1, or 1).
    pub from_seq: u64,
    /// Checkpoint generation resumed from (0: none).
    pub generation: u64,
    /// Problems found on disk and dealt with.
    pub warnings: Vec<String>,
}

/// Opens an engine, recovering its persisted state if persistence is configured.
pub fn open_engine(cfg: EngineConfig) -> Result<(EngineWriter, Engine, Resume), PersistError> {
    let mut store = HotStore::new(cfg.publish_interval);
    let mut aggs = Aggregates::default();
    let window_ms = cfg.dedup_window.as_millis() as i64;
    let mut dedup = Dedup::new(window_ms);
    let mut duplicates = 0;
    let mut newest_arrival = 0;
    let metrics = Arc::new(PersistMetrics::default());
    let mut resume = Resume {
        from_seq: 1,
        ..Default::default()
    };
    let mut applied_seq = 0;
    let persist = match cfg.persist.clone() {
        None => None,
        Some(mut pc) => {
            pc.dir = crate::persist::resolve_dir(&pc.dir)?;
            let lock = DirLock::acquire(&pc.dir)?;
            let t0 = Instant::now();
            let rec = recover(&pc, &metrics)?;
            let t_recover = t0.elapsed();
            resume.warnings = rec.warnings;
            let ids = rec.dedup.len();
            newest_arrival =
                rec.dedup.iter().map(|e| e.0 as i64).max().unwrap_or(0) * time::MINUTE_MS;
            if let Some((c, bytes)) = &rec.checkpoint {
                // the two largest pieces of state are independent: rebuild them side by side
                let (restored, t_dedup) = std::thread::scope(|sc| {
                    let ids_job = sc.spawn(|| {
                        let t = Instant::now();
                        dedup.restore(rec.dedup);
                        t.elapsed()
                    });
                    let a = Aggregates::from_snapshot(bytes);
                    (a, ids_job.join().expect("id restore does not panic"))
                });
                aggs = match restored {
                    Ok(a) => a,
                    Err(why) => {
                        // an upgrade (another snapshot format) or damaged bytes: the checkpoint's
                        // files hold every event it covers, so the state is rebuilt from them
                        tracing::warn!(
                            reason = %why,
                            files = c.files.len(),
                            "the aggregates snapshot cannot be read; rebuilding the aggregates from the stored events (once)"
                        );
                        let t = Instant::now();
                        let rebuilt = crate::aggregates::rebuild(&FileSet {
                            root: pc.dir.clone(),
                            files: c.files.clone(),
                        })?;
                        tracing::info!(
                            events = rebuilt.events(),
                            ms = t.elapsed().as_millis() as u64,
                            "aggregates rebuilt"
                        );
                        resume.warnings.push(format!(
                            "the aggregates snapshot could not be read ({why}); rebuilt from the stored events"
                        ));
                        rebuilt
                    }
                };
                tracing::info!(
                    checkpoint_ms = t_recover.as_millis() as u64,
                    ids,
                    dedup_ms = t_dedup.as_millis() as u64,
                    aggregates_bytes = bytes.len(),
                    total_ms = t0.elapsed().as_millis() as u64,
                    "state restored"
                );
                duplicates = c.duplicates;
                metrics.duplicates.store(c.duplicates, Relaxed);
                metrics.checkpoint_generation.store(c.generation, Relaxed);
                metrics.checkpoint_seq.store(c.last_seq, Relaxed);
                resume.from_seq = c.last_seq + 1;
                resume.generation = c.generation;
                applied_seq = c.last_seq;
                store.set_files(Arc::new(FileSet {
                    root: pc.dir.clone(),
                    files: c.files.clone(),
                }));
            }
            let flusher = Flusher::start(
                pc.clone(),
                rec.checkpoint,
                rec.older,
                rec.next_generation,
                metrics.clone(),
            );
            Some(Persist {
                _lock: lock,
                cfg: pc,
                flusher,
                barrier: None,
                in_flight: false,
                last_flush: Instant::now(),
                postponed_until: None,
            })
        }
    };
    let engine = Engine {
        hot: store.reader(),
        aggs: Arc::new(Mutex::new(aggs)),
        persist: metrics.clone(),
        dead_letters: DeadLetterLog::default(),
    };
    let writer = EngineWriter {
        store,
        aggs: engine.aggs.clone(),
        dedup: Some(dedup),
        window_ms,
        pending_ids: Vec::new(),
        duplicates,
        newest_arrival,
        persist,
        metrics,
        applied_seq,
    };
    Ok((writer, engine, resume))
}

/// How long a checkpoint the [`FlushBarrier`] refused is put off before it is tried again.
const FLUSH_RETRY: Duration = Duration::from_secs(1);

/// Called by the writer before it snapshots for a checkpoint; blocks until side effects of the
/// events applied so far (dead letters) are durable elsewhere, and says whether they are. The
/// argument is true at shutdown, when the barrier should give up at once if they cannot become
/// durable (the broker is gone): the final checkpoint is then skipped, and the events after the
/// previous one are replayed, with their side effects, at the next start. At other times a
/// `false` postpones the checkpoint: the writer keeps the rows and asks again a second later.
pub type FlushBarrier = Box<dyn Fn(bool) -> bool + Send>;

struct Persist {
    /// Held while the engine runs: no second process writes this data directory.
    _lock: DirLock,
    cfg: PersistConfig,
    flusher: Flusher,
    barrier: Option<FlushBarrier>,
    in_flight: bool,
    last_flush: Instant,
    /// The barrier said no: the next flush is not tried before this.
    postponed_until: Option<Instant>,
}

/// The single writer of an engine.
pub struct EngineWriter {
    store: HotStore,
    aggs: Arc<Mutex<Aggregates>>,
    /// The de-duplication stage, until the pipeline takes it ([`EngineWriter::take_dedup`]) to
    /// run before [`EngineWriter::apply`].
    dedup: Option<Dedup>,
    window_ms: i64,
    /// Ids first seen since the last checkpoint, for its segment.
    pending_ids: Vec<(crate::dedup::Minute, u64)>,
    /// Duplicates refused, all time.
    duplicates: u64,
    /// Newest arrival applied, epoch millis.
    newest_arrival: i64,
    persist: Option<Persist>,
    metrics: Arc<PersistMetrics>,
    /// Highest stream sequence applied (or skipped as refused) so far.
    applied_seq: u64,
}

impl EngineWriter {
    /// Applies every event of `batch` to the hot store and the aggregates, then publishes to
    /// queries if the publish interval has passed and flushes if the flush policy says so. The
    /// batch has passed the de-duplication stage first ([`Dedup::filter`], with the `Dedup` a
    /// pipeline takes from a new writer by [`EngineWriter::take_dedup`]): there is no other way
    /// through.
    pub fn apply(&mut self, batch: &DecodedBatch) {
        let now = time::now_millis();
        let upstream = batch.new_ids();
        if upstream.is_none() && !batch.is_empty() {
            debug_assert!(false, "a batch skipped the de-duplication stage");
            tracing::error!(
                "a batch skipped the de-duplication stage; its events are applied without it"
            );
        }
        {
            let mut aggs = self.aggs.lock();
            for e in batch.iter() {
                let arrival = if e.arrival > 0 { e.arrival } else { now };
                self.newest_arrival = self.newest_arrival.max(arrival);
                self.store.append(&e, now);
                aggs.apply(&e);
            }
        }
        if let Some(ids) = upstream {
            // the ids are kept for the next checkpoint's segment; without persistence there is
            // none, and keeping them would grow memory with every event
            if self.persist.is_some() {
                self.pending_ids.extend_from_slice(ids);
            }
            self.duplicates += batch.duplicates();
        }
        self.metrics.duplicates.store(self.duplicates, Relaxed);
        self.applied_seq = self.applied_seq.max(batch.last_seq());
        self.store.maybe_publish(Instant::now());
        self.persist_step();
    }

    /// Publishes pending rows if the interval has passed; call on a timer while busy.
    pub fn tick(&mut self) {
        self.store.maybe_publish(Instant::now());
        self.persist_step();
    }

    /// Publishes pending rows now; call when nothing is waiting to be applied.
    pub fn idle(&mut self) {
        self.store.publish_idle();
        self.persist_step();
    }

    /// Makes everything applied so far visible to queries now.
    pub fn publish(&mut self) {
        self.store.publish_now();
    }

    /// Takes de-duplication out of the writer, to run as its own stage before it
    /// ([`Dedup::filter`] on every batch, in stream order); the writer then persists the ids that
    /// stage recorded on each batch.
    pub fn take_dedup(&mut self) -> Option<Dedup> {
        self.dedup.take()
    }

    /// Sets the barrier run before each checkpoint snapshot.
    pub fn set_flush_barrier(&mut self, barrier: FlushBarrier) {
        if let Some(p) = self.persist.as_mut() {
            p.barrier = Some(barrier);
        }
    }

    /// Highest stream sequence applied so far.
    pub fn applied_seq(&self) -> u64 {
        self.applied_seq
    }

    /// Applies flusher reports, starts a flush when due, and blocks while the rows held in
    /// memory exceed three times the flush size (the disk is slower than the stream, or failing).
    fn persist_step(&mut self) {
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        while let Some(done) = p.flusher.try_done() {
            Self::on_done(&mut self.store, p, done);
        }
        let held = self.store.rows();
        let due = held >= p.cfg.flush_rows
            || (held > 0 && p.last_flush.elapsed() >= p.cfg.flush_interval);
        let postponed = p.postponed_until.is_some_and(|t| Instant::now() < t);
        if due && !p.in_flight && !postponed {
            self.start_flush();
        }
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        while p.in_flight && self.store.rows() >= p.cfg.flush_rows.saturating_mul(3) {
            match p.flusher.wait_done() {
                Some(done) => Self::on_done(&mut self.store, p, done),
                None => break,
            }
        }
    }

    fn on_done(store: &mut HotStore, p: &mut Persist, done: FlushDone) {
        match done {
            FlushDone::Flushed { files, batches } => {
                store.flushed(batches, files);
                p.in_flight = false;
            }
            FlushDone::Files(files) => store.set_files(files),
            FlushDone::Abandoned => p.in_flight = false,
        }
    }

    fn start_flush(&mut self) {
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        // a checkpoint covers every message applied so far, so it waits until their side
        // effects (dead letters) are stored; until then the rows stay held, and the stream
        // keeps them for a replay after a crash
        if let Some(b) = &p.barrier
            && !b(false)
        {
            p.postponed_until = Some(Instant::now() + FLUSH_RETRY);
            return;
        }
        p.postponed_until = None;
        let batches = self.store.take_for_flush();
        let aggs = self.aggs.lock();
        // on this thread, under the lock, so it matches `last_seq` exactly: it stalls ingest
        // for its duration (~40 ms at 10M events), which the debug log shows
        let t0 = Instant::now();
        let snap = aggs.snapshot();
        tracing::debug!(
            millis = t0.elapsed().as_secs_f64() * 1e3,
            bytes = snap.len(),
            "aggregates snapshot for a checkpoint"
        );
        let job = FlushJob {
            batches,
            aggregates: snap,
            dedup: std::mem::take(&mut self.pending_ids),
            oldest_kept_minute: Dedup::oldest_kept_minute(self.window_ms, self.newest_arrival),
            last_seq: self.applied_seq,
            events: aggs.events(),
            duplicates: self.duplicates,
            watermark: aggs.watermark(),
        };
        drop(aggs);
        p.in_flight = true;
        p.last_flush = Instant::now();
        p.flusher.submit(job);
    }

    /// Flushes what is held and waits for the commit (a clean shutdown: the next start replays
    /// nothing); then stops the flusher.
    pub fn close(mut self) {
        self.store.publish_now();
        let Some(p) = self.persist.as_mut() else {
            return;
        };
        // let a flush under way finish first
        while p.in_flight {
            match p.flusher.wait_done() {
                Some(done) => Self::on_done(&mut self.store, p, done),
                None => break,
            }
        }
        let covered = self.metrics.checkpoint_seq.load(Relaxed);
        if self.store.rows() > 0 || self.applied_seq > covered {
            if p.barrier.as_ref().is_none_or(|b| b(true)) {
                // the barrier has run: the flush does not need to wait for it again
                let barrier = p.barrier.take();
                self.start_flush();
                if let Some(p) = self.persist.as_mut() {
                    p.barrier = barrier;
                }
            } else {
                tracing::warn!(
                    checkpoint_seq = covered,
                    "dead letters could not be stored (the broker is gone): no final checkpoint; the events after it are replayed at the next start"
                );
            }
        }
        if let Some(p) = self.persist.take() {
            for done in p.flusher.close() {
                if let FlushDone::Flushed { files, batches } = done {
                    self.store.flushed(batches, files);
                }
            }
        }
    }
}

/// A cheap, cloneable read handle.
#[derive(Clone)]
pub struct Engine {
    hot: HotReader,
    aggs: Arc<Mutex<Aggregates>>,
    persist: Arc<PersistMetrics>,
    dead_letters: DeadLetterLog,
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

    /// Recent dead letters (the `dead_letters` table); the ingest side fills it.
    pub fn dead_letter_log(&self) -> &DeadLetterLog {
        &self.dead_letters
    }

    /// Counters of persistence and de-duplication.
    pub fn persist_metrics(&self) -> &PersistMetrics {
        &self.persist
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
        // one pass over the minutes of today and the last hour (at most 1,500 minutes × types,
        // however many events they had)
        let hour_from = time::minute(wm - 59 * time::MINUTE_MS) * time::MINUTE_MS;
        let day_from = time::day(wm) as i64 * time::DAY_MS;
        let mut last_hour: BTreeMap<&'static str, u64> = BTreeMap::new();
        let mut today_by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
        for (m, t, c) in a.counts.per_minute(hour_from.min(day_from)) {
            if m >= hour_from {
                *last_hour.entry(t.as_str()).or_default() += c;
            }
            if m >= day_from {
                *today_by_type.entry(t.as_str()).or_default() += c;
            }
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
        // only the all-time and today's estimates: counting every day's sketches took
        // milliseconds at 10M events
        let (all, today) = a.distinct.live(time::day(wm));
        let distinct = DistinctStats {
            all,
            today,
            relative_error: RELATIVE_ERROR,
        };
        let funnel = a
            .passes
            .funnel_rows()
            .map(|(k, v)| (k.to_string(), *v))
            .collect();
        let rows_held = hot.rows();
        let bytes = hot.bytes();
        let pm = &self.persist;
        let disk_rows = hot.files.rows();
        let disk_bytes = hot.files.bytes();
        let disk = DiskStats {
            files: hot.files.files.len(),
            rows: disk_rows,
            bytes: disk_bytes,
            bytes_per_event: if disk_rows == 0 {
                0.0
            } else {
                disk_bytes as f64 / disk_rows as f64
            },
            checkpoint_generation: PersistMetrics::get(&pm.checkpoint_generation),
            checkpoint_seq: PersistMetrics::get(&pm.checkpoint_seq),
            duplicates: PersistMetrics::get(&pm.duplicates),
        };
        Stats {
            watermark: watermark.map(time::format_millis),
            events: a.events(),
            by_type,
            last_hour,
            today: today_by_type,
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
            disk,
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
    /// Events per type since the watermark's UTC midnight.
    pub today: BTreeMap<&'static str, u64>,
    pub install_base: InstallBaseStats,
    pub location_peaks: Vec<PeakStats>,
    pub distinct: DistinctStats,
    pub funnel: BTreeMap<String, FunnelCount>,
    /// Events held in memory (not yet flushed).
    pub hot: HotStats,
    /// Events in Parquet files, and the checkpoint.
    pub disk: DiskStats,
}

#[derive(Debug, Serialize)]
pub struct DiskStats {
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub bytes_per_event: f64,
    pub checkpoint_generation: u64,
    /// Stream sequence covered by the newest checkpoint.
    pub checkpoint_seq: u64,
    /// Events refused as duplicates of an id seen within the window.
    pub duplicates: u64,
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
        let mut d = w.take_dedup().expect("a new writer de-duplicates");
        let mut b = DecodedBatch::new();
        let n = decode_message(
            br#"{"id":"1","type":"scan","ts":1000,"pass":"p","location":"l","device":"d","operator":"o"}
{"id":"2","type":"pass.installed","ts":2000,"pass":"p","device":"phone","platform":"apple"}"#,
            1,
            &mut b,
            |e, _| panic!("{e}"),
        );
        assert_eq!(n, 2);
        feed(&mut w, &mut d, b);
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

    fn scans(from: u64, n: u64, arrival: i64) -> DecodedBatch {
        let mut b = DecodedBatch::new();
        b.set_arrival(arrival);
        for i in from..from + n {
            let line = format!(
                r#"{{"id":"e{i}","type":"scan","ts":{},"pass":"p{}","location":"l","device":"d","operator":"o"}}"#,
                i * 1_000,
                i % 50
            );
            decode_message(line.as_bytes(), i + 1, &mut b, |e, _| panic!("{e}"));
        }
        b
    }

    #[test]
    fn an_in_memory_engine_keeps_no_ids_for_checkpoints() {
        let (mut w, e) = new_engine(EngineConfig::default());
        let mut d = w.take_dedup().expect("a new writer de-duplicates");
        feed(&mut w, &mut d, scans(0, 1_000, 1_000));
        // the same ids again: refused
        feed(&mut w, &mut d, scans(0, 1_000, 1_000));
        assert_eq!(e.events_applied(), 1_000);
        assert_eq!(e.stats().disk.duplicates, 1_000);
        assert_eq!(w.pending_ids.len(), 0);
    }

    /// An upgrade: the newest checkpoint's aggregates snapshot is in a format this build does
    /// not read. The engine rebuilds the aggregates from the stored events instead of refusing
    /// to start, and the figures are the same.
    #[test]
    fn an_unreadable_snapshot_is_rebuilt_from_the_stored_events() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || EngineConfig {
            persist: Some(PersistConfig::new(dir.path())),
            ..EngineConfig::default()
        };
        let (mut w, e, _) = open_engine(cfg()).unwrap();
        let mut d = w.take_dedup().unwrap();
        feed(&mut w, &mut d, scans(0, 2_000, 1_000));
        w.close();
        let before = serde_json::to_value(e.stats()).unwrap();
        drop(e);

        let ckpts = dir.path().join("checkpoints");
        let newest = crate::persist::fsio_walk(&ckpts).into_iter().max().unwrap();
        let (c, mut aggs) = crate::persist::read_checkpoint(&newest).unwrap();
        aggs[..4].copy_from_slice(&(crate::aggregates::SNAPSHOT_FORMAT - 1).to_le_bytes());
        std::fs::write(&newest, c.encode(&aggs)).unwrap();

        let (w, e, resume) = open_engine(cfg()).unwrap();
        assert!(
            resume.warnings.iter().any(|w| w.contains("rebuilt")),
            "{:?}",
            resume.warnings
        );
        let after = serde_json::to_value(e.stats()).unwrap();
        for key in [
            "events",
            "by_type",
            "install_base",
            "location_peaks",
            "distinct",
            "funnel",
        ] {
            assert_eq!(after[key], before[key], "{key}");
        }
        w.close();
    }

    #[test]
    fn a_reopened_engine_resumes_from_its_checkpoint_and_remembers_ids() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = || EngineConfig {
            persist: Some(PersistConfig::new(dir.path())),
            ..EngineConfig::default()
        };
        let (mut w, e, resume) = open_engine(cfg()).unwrap();
        assert_eq!(resume.from_seq, 1);
        let mut d = w.take_dedup().unwrap();
        feed(&mut w, &mut d, scans(0, 1_000, 1_000));
        w.close();
        let snap = e.hot_snapshot();
        assert_eq!(
            (snap.rows(), snap.files.rows()),
            (0, 1_000),
            "all flushed at close"
        );

        let (mut w, e, resume) = open_engine(cfg()).unwrap();
        assert_eq!(resume.from_seq, 1_001);
        assert_eq!(e.events_applied(), 1_000);
        assert_eq!(e.hot_snapshot().total_rows(), 1_000);
        // a producer's retry of old ids, arriving later: refused
        let mut d = w.take_dedup().unwrap();
        feed(&mut w, &mut d, scans(500, 1_000, 60_000));
        w.publish();
        assert_eq!(e.events_applied(), 1_500);
        assert_eq!(e.stats().disk.duplicates, 500);
        // a second writer on the same directory is refused while this one lives
        assert!(matches!(open_engine(cfg()), Err(PersistError::Locked(_))));
        w.close();
    }

    #[test]
    fn online_retention_drops_old_days_and_compaction_merges_small_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut pc = PersistConfig::new(dir.path());
        pc.retention = Some(Duration::from_secs(3 * 86_400));
        pc.compact_min_files = 3;
        pc.delete_grace = Duration::ZERO;
        let cfg = EngineConfig {
            persist: Some(pc),
            ..EngineConfig::default()
        };
        let (mut w, e, _) = open_engine(cfg).unwrap();
        let mut d = w.take_dedup().unwrap();
        // ten days, one flush per quarter day: four small files a day, of one size class
        let day = time::DAY_MS;
        let mut seq = 0;
        for quarter in 0..40i64 {
            let mut b = DecodedBatch::new();
            b.set_arrival(1);
            for k in 0..25 {
                seq += 1;
                let ts = quarter * day / 4 + k * 1_000;
                let line = format!(
                    r#"{{"id":"r{seq}","type":"scan","ts":{ts},"pass":"p","location":"l","device":"d","operator":"o"}}"#
                );
                decode_message(line.as_bytes(), seq as u64, &mut b, |e, _| panic!("{e}"));
            }
            apply_and_flush(&mut w, &mut d, b);
        }
        w.close();
        let snap = e.hot_snapshot();
        let days: std::collections::BTreeSet<i32> = snap
            .files
            .files
            .iter()
            .flat_map(|f| time::day(f.min_ts)..=time::day(f.max_ts))
            .collect();
        // the watermark is in day 9: days ending more than 3 days before it are gone, to the
        // row, though merged files held expired and kept days together
        assert_eq!(days.into_iter().collect::<Vec<_>>(), vec![6, 7, 8, 9]);
        assert_eq!(snap.files.rows(), 4 * 100);
        assert_eq!(e.persist_metrics().expired_rows.load(Relaxed), 6 * 100);
        // the month's small files were merged as they accumulated
        assert!(e.persist_metrics().compactions.load(Relaxed) >= 4);
        assert!(snap.files.files.len() < 4 * 4, "{:?}", snap.files.files);
        assert!(
            snap.files
                .files
                .iter()
                .all(|f| f.partition() == "events/month=1970-01")
        );
        assert_eq!(e.events_applied(), 1_000, "aggregates keep all of history");
        // nothing on disk but what the checkpoint names (no grace here)
        let on_disk = crate::persist::inspect(dir.path()).unwrap();
        assert!(
            on_disk.unreferenced.is_empty(),
            "{:?}",
            on_disk.unreferenced
        );
    }
    #[test]
    fn a_backfill_of_years_leaves_one_file_per_month() {
        let dir = tempfile::tempdir().unwrap();
        let mut pc = PersistConfig::new(dir.path());
        pc.delete_grace = Duration::ZERO;
        let cfg = EngineConfig {
            persist: Some(pc),
            ..EngineConfig::default()
        };
        let (mut w, e, _) = open_engine(cfg).unwrap();
        let mut d = w.take_dedup().unwrap();
        // 3,000 events, one every 8 hours from 2020-01-01 over 1,000 days, in ten flushes: with
        // day partitions this left 1,000 files (a day's single file was never compacted)
        let start = 1_577_836_800_000i64;
        for flush in 0..10u64 {
            let mut b = DecodedBatch::new();
            b.set_arrival(1);
            for i in flush * 300..(flush + 1) * 300 {
                let ts = start + i as i64 * 8 * 3_600_000;
                let line = format!(
                    r#"{{"id":"y{i}","type":"scan","ts":{ts},"pass":"p{}","location":"l","device":"d","operator":"o"}}"#,
                    i % 40
                );
                decode_message(line.as_bytes(), i + 1, &mut b, |e, _| panic!("{e}"));
            }
            apply_and_flush(&mut w, &mut d, b);
        }
        // January 2020 to September 2022
        let months = 33;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let files = e.hot_snapshot().files.clone();
            let parts: std::collections::BTreeSet<&str> =
                files.files.iter().map(|f| f.partition()).collect();
            assert_eq!(parts.len(), months, "{parts:?}");
            assert_eq!(files.rows(), 3_000);
            // every month but the last is cold: flush files split across two flushes merge
            if files.files.len() == months {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} files for {months} months",
                files.files.len()
            );
            std::thread::sleep(Duration::from_millis(20));
            w.idle();
        }
        w.close();
    }

    /// The production path: `b` through the de-duplication stage, then the writer.
    fn feed(w: &mut EngineWriter, d: &mut Dedup, mut b: DecodedBatch) {
        d.filter(&mut b);
        w.apply(&b);
    }

    /// Feeds `b` and waits until a flush of everything held has committed.
    fn apply_and_flush(w: &mut EngineWriter, d: &mut Dedup, b: DecodedBatch) {
        feed(w, d, b);
        w.start_flush();
        while w.persist.as_ref().is_some_and(|p| p.in_flight) {
            let p = w.persist.as_mut().unwrap();
            let done = p.flusher.wait_done().unwrap();
            EngineWriter::on_done(&mut w.store, p, done);
        }
    }

    /// Lists `<root>/events` as `partition/file` paths, sorted.
    fn published(root: &std::path::Path) -> Vec<String> {
        let mut v: Vec<String> = crate::persist::fsio_walk(&root.join("events"))
            .iter()
            .map(|p| {
                p.strip_prefix(root.join("events"))
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_directory_with_day_partitions_moves_to_month_partitions_at_start() {
        use crate::persist::{Checkpoint, read_checkpoint};
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut pc = PersistConfig::new(root);
        pc.delete_grace = Duration::ZERO;
        let cfg = EngineConfig {
            persist: Some(pc),
            ..EngineConfig::default()
        };
        // six days in two months (January and February 1970), one flush a day: one file a day
        let (mut w, _, _) = open_engine(cfg.clone()).unwrap();
        let mut d = w.take_dedup().unwrap();
        let mut seq = 0u64;
        for day in [28i64, 29, 30, 31, 32, 33] {
            let mut b = DecodedBatch::new();
            b.set_arrival(1);
            for k in 0..20 {
                seq += 1;
                let ts = day * time::DAY_MS + k * 60_000;
                let line = format!(
                    r#"{{"id":"m{seq}","type":"scan","ts":{ts},"pass":"p{k}","location":"l","device":"d","operator":"o"}}"#
                );
                decode_message(line.as_bytes(), seq, &mut b, |e, _| panic!("{e}"));
            }
            apply_and_flush(&mut w, &mut d, b);
        }
        w.close();
        // rewrite the directory the way an older build laid it out: events/date=YYYY-MM-DD/,
        // in store/ and in the published view, named by the newest checkpoint alone
        let ckdir = root.join("checkpoints");
        let mut gens: Vec<u64> = std::fs::read_dir(&ckdir)
            .unwrap()
            .filter_map(|e| Checkpoint::generation_of(&e.unwrap().file_name().to_string_lossy()))
            .collect();
        gens.sort();
        let newest = *gens.last().unwrap();
        let (mut ck, aggs) = read_checkpoint(&ckdir.join(Checkpoint::file_name(newest))).unwrap();
        assert_eq!(ck.files.len(), 6, "{:?}", ck.files);
        for g in &gens[..gens.len() - 1] {
            std::fs::remove_file(ckdir.join(Checkpoint::file_name(*g))).unwrap();
        }
        std::fs::remove_dir_all(root.join("events")).unwrap();
        for f in &mut ck.files {
            let old = format!("events/date={}/{}", time::format_day(f.day), f.name());
            for base in [root.join("store"), root.to_path_buf()] {
                std::fs::create_dir_all(base.join(&old).parent().unwrap()).unwrap();
            }
            std::fs::rename(
                root.join("store").join(&f.path),
                root.join("store").join(&old),
            )
            .unwrap();
            std::fs::hard_link(root.join("store").join(&old), root.join(&old)).unwrap();
            f.path = old;
        }
        std::fs::write(ckdir.join(Checkpoint::file_name(newest)), ck.encode(&aggs)).unwrap();
        assert_eq!(published(root).len(), 6);
        assert!(published(root)[0].starts_with("date=1970-01-29/"));

        // a new build opens it: the files move to their months, every row stays
        let (mut w, e, _) = open_engine(cfg.clone()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while e
            .hot_snapshot()
            .files
            .files
            .iter()
            .any(|f| f.in_day_partition())
        {
            assert!(Instant::now() < deadline, "the move did not happen");
            std::thread::sleep(Duration::from_millis(20));
            w.idle();
        }
        w.close();
        let (w, e, _) = open_engine(cfg).unwrap();
        let files = e.hot_snapshot().files.clone();
        assert_eq!(files.rows(), 120);
        assert_eq!(e.events_applied(), 120);
        let parts: std::collections::BTreeSet<&str> =
            files.files.iter().map(|f| f.partition()).collect();
        assert_eq!(
            parts.into_iter().collect::<Vec<_>>(),
            vec!["events/month=1970-01", "events/month=1970-02"]
        );
        let shown = published(root);
        assert!(
            shown
                .iter()
                .all(|p| p.starts_with("month=1970-01/") || p.starts_with("month=1970-02/")),
            "{shown:?}"
        );
        assert_eq!(shown.len(), files.files.len());
        let rows: usize = shown
            .iter()
            .map(|p| {
                crate::persist::read_file(&root.join("events").join(p))
                    .unwrap()
                    .iter()
                    .map(|b| b.num_rows())
                    .sum::<usize>()
            })
            .sum();
        assert_eq!(rows, 120, "the published view holds every row once");
        w.close();
    }

    #[test]
    fn one_event_far_in_the_future_makes_retention_drop_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut pc = PersistConfig::new(dir.path());
        pc.retention = Some(Duration::from_secs(400 * 86_400));
        pc.delete_grace = Duration::ZERO;
        let cfg = EngineConfig {
            persist: Some(pc),
            ..EngineConfig::default()
        };
        let (mut w, e, _) = open_engine(cfg.clone()).unwrap();
        // 300 days of recent history, then one event stamped 9999-12-31 (decoded here without
        // an arrival time, as if the future-skew bound were configured off)
        let now = time::now_millis();
        let mut b = DecodedBatch::new();
        for i in 0..300i64 {
            let line = format!(
                r#"{{"id":"h{i}","type":"scan","ts":{},"pass":"p","location":"l","device":"d","operator":"o"}}"#,
                now - i * time::DAY_MS
            );
            decode_message(line.as_bytes(), i as u64 + 1, &mut b, |e, _| panic!("{e}"));
        }
        let outlier = r#"{"id":"far","type":"scan","ts":"9999-12-31T00:00:00Z","pass":"p","location":"l","device":"d","operator":"o"}"#;
        decode_message(outlier.as_bytes(), 301, &mut b, |e, _| panic!("{e}"));
        let mut d = w.take_dedup().unwrap();
        feed(&mut w, &mut d, b);
        w.close();
        assert_eq!(
            e.stats().watermark.as_deref(),
            Some("9999-12-31T00:00:00.000Z")
        );
        assert_eq!(e.persist_metrics().expired_rows.load(Relaxed), 0);
        // what the checkpoint names, as the next start sees it
        let (w, e, _) = open_engine(cfg).unwrap();
        assert_eq!(
            e.hot_snapshot().files.rows(),
            301,
            "nothing dropped on the word of one event"
        );
        w.close();
    }
}
