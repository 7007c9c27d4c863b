//! The flusher: a thread that turns flush jobs from the engine's writer into Parquet files and a
//! checkpoint, then compacts small files, applies retention and deletes what no checkpoint needs.
//!
//! Before the first job it moves a directory an older build wrote with day partitions to month
//! partitions (`State::migrate`) and catches up with retention and compaction.
//!
//! One job at a time, in order. A job is committed by its checkpoint: Parquet files and the id
//! segment first (each durable), the checkpoint last. A failed attempt (disk full, permission
//! denied) is logged, counted and retried with backoff; the checkpoint never names data that is
//! not on disk, and the writer keeps the rows in memory (and, past its bound, stops consuming, so
//! JetStream holds the backlog) until the job succeeds.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::datatypes::TimestampMillisecondType;
use arrow::record_batch::RecordBatch;
use parquet::file::properties::WriterProperties;
use tracing::{error, info, warn};

use super::checkpoint::{CHECKPOINT_DIR, DEDUP_DIR, encode_segment};
use super::fsio::{ensure_dir, link_or_copy, remove, sync_dir, write_atomic};
use super::parquet::{read_file, write_sorted, writer_properties};
use super::publish::{STORE_DIR, publish_all, publish_partition};
use super::recover::remove_empty_partitions;
use super::{
    COLD_AFTER_DAYS, Checkpoint, DataFile, FileSet, PersistConfig, PersistError, PersistMetrics,
    SegmentRef, partition_dir,
};
use crate::dedup::Minute;
use crate::store::SealedBatch;
use crate::time;

/// Everything a flush commits, handed over by the writer.
#[derive(Debug)]
pub struct FlushJob {
    /// Rows to write (events schema), taken from the hot store.
    pub batches: Vec<Arc<SealedBatch>>,
    /// Aggregates snapshot (postcard bytes) as of `last_seq`.
    pub aggregates: Vec<u8>,
    /// Ids first seen since the previous job.
    pub dedup: Vec<(Minute, u64)>,
    /// Segments whose newest minute is older than this have left the window.
    pub oldest_kept_minute: Minute,
    pub last_seq: u64,
    pub events: u64,
    pub duplicates: u64,
    pub watermark: Option<i64>,
}

/// What the flusher reports back to the writer.
#[derive(Debug)]
pub enum FlushDone {
    /// The job's rows are on disk and committed: drop the first `batches` sealed batches from
    /// the hot store and show `files` instead, in one step.
    Flushed { files: Arc<FileSet>, batches: usize },
    /// The file list changed without new rows (compaction, retention).
    Files(Arc<FileSet>),
    /// The job could not be committed before shutdown; its rows stay only in the stream.
    Abandoned,
}

/// Handle to the flusher thread.
pub struct Flusher {
    tx: Option<mpsc::SyncSender<FlushJob>>,
    done: mpsc::Receiver<FlushDone>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for Flusher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flusher").finish_non_exhaustive()
    }
}

impl Flusher {
    /// Starts the thread from the recovered state: the current checkpoint (if any), its
    /// aggregates, and the older checkpoints still kept.
    pub fn start(
        cfg: PersistConfig,
        current: Option<(Checkpoint, Vec<u8>)>,
        older: Vec<Checkpoint>,
        next_generation: u64,
        metrics: Arc<PersistMetrics>,
    ) -> Flusher {
        let (tx, rx) = mpsc::sync_channel::<FlushJob>(1);
        let (done_tx, done) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let mut state = State::new(cfg, current, older, next_generation, metrics, stop.clone());
        let thread = std::thread::Builder::new()
            .name("passpulse-flush".into())
            .spawn(move || {
                // an older build's day partitions move to months, and retention and compaction
                // catch up, before the first job (which waits if one arrives meanwhile)
                let (files, mut next) = state.maintain(&rx);
                if let Some(files) = files {
                    let _ = done_tx.send(FlushDone::Files(files));
                }
                loop {
                    let job = match next.take() {
                        Some(j) => j,
                        None => match rx.recv() {
                            Ok(j) => j,
                            Err(_) => {
                                // stopping: the queries that could still read replaced files
                                // have ended, so nothing needs them
                                state.cfg.delete_grace = Duration::ZERO;
                                state.collect_garbage();
                                break;
                            }
                        },
                    };
                    let done = state.run(job);
                    let _ = done_tx.send(done);
                    let (files, waiting) = state.maintain(&rx);
                    next = waiting;
                    if let Some(files) = files {
                        let _ = done_tx.send(FlushDone::Files(files));
                    }
                }
            })
            .expect("spawning the flusher thread");
        Flusher {
            tx: Some(tx),
            done,
            stop,
            thread: Some(thread),
        }
    }

    /// Hands a job over; blocks while a previous job is still queued.
    pub fn submit(&self, job: FlushJob) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    /// A report, if one is ready.
    pub fn try_done(&self) -> Option<FlushDone> {
        self.done.try_recv().ok()
    }

    /// Waits for the next report.
    pub fn wait_done(&self) -> Option<FlushDone> {
        self.done.recv().ok()
    }

    /// Stops after the queued job: a job still failing is abandoned (its events stay in the
    /// stream and are replayed at the next start).
    pub fn close(mut self) -> Vec<FlushDone> {
        self.stop.store(true, Relaxed);
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.done.try_iter().collect()
    }
}

struct State {
    cfg: PersistConfig,
    props: WriterProperties,
    /// The newest committed checkpoint and its aggregates snapshot.
    current: Checkpoint,
    aggregates: Vec<u8>,
    /// Checkpoints kept on disk, newest first (the first is `current`).
    retained: VecDeque<Checkpoint>,
    next_generation: u64,
    /// Files no kept checkpoint names, with when that became so.
    doomed: HashMap<String, Instant>,
    metrics: Arc<PersistMetrics>,
    stop: Arc<AtomicBool>,
    /// Size-tiered compaction (online) or merge-everything (offline).
    tiered: bool,
    /// Publishing the view for outside readers failed after a commit: redo it whole.
    republish: bool,
}

impl State {
    fn new(
        cfg: PersistConfig,
        current: Option<(Checkpoint, Vec<u8>)>,
        older: Vec<Checkpoint>,
        next_generation: u64,
        metrics: Arc<PersistMetrics>,
        stop: Arc<AtomicBool>,
    ) -> State {
        let (current, aggregates) = current.unwrap_or_default();
        let mut retained: VecDeque<Checkpoint> = older.into_iter().collect();
        retained.push_front(current.clone());
        State {
            props: writer_properties(cfg.row_group_rows, cfg.zstd_level),
            cfg,
            current,
            aggregates,
            retained,
            next_generation,
            doomed: HashMap::new(),
            metrics,
            stop,
            tiered: true,
            republish: false,
        }
    }

    fn file_set(&self) -> Arc<FileSet> {
        Arc::new(FileSet {
            root: self.cfg.dir.clone(),
            files: self.current.files.clone(),
        })
    }

    /// Runs a job to its commit, retrying failures until it succeeds or shutdown gives up.
    fn run(&mut self, job: FlushJob) -> FlushDone {
        let mut backoff = Duration::from_millis(100);
        loop {
            let t0 = Instant::now();
            match self.flush(&job) {
                Ok(rows) => {
                    let m = &self.metrics;
                    m.flushes.fetch_add(1, Relaxed);
                    m.flushed_rows.fetch_add(rows, Relaxed);
                    let us = t0.elapsed().as_micros() as u64;
                    m.last_flush_micros.store(us, Relaxed);
                    m.flush_micros_total.fetch_add(us, Relaxed);
                    return FlushDone::Flushed {
                        files: self.file_set(),
                        batches: job.batches.len(),
                    };
                }
                Err(e) => {
                    self.metrics.flush_failures.fetch_add(1, Relaxed);
                    if self.stop.load(Relaxed) {
                        error!(error = %e, "flush failed during shutdown; its events stay in the stream and are replayed at the next start");
                        return FlushDone::Abandoned;
                    }
                    error!(error = %e, retry_in = ?backoff, "flush failed; the checkpoint stays where it was, retrying");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }

    fn flush(&mut self, job: &FlushJob) -> Result<u64, PersistError> {
        let root = self.cfg.dir.clone();
        let g = self.next_generation;
        // decoded here, off the writer's thread; held only while the files are written
        let batches: Vec<RecordBatch> = job.batches.iter().map(|b| b.decode(None)).collect();
        let files = write_sorted(
            &root.join(STORE_DIR),
            &format!("part-{g:010}"),
            &batches,
            &self.props,
        )?;
        let parts: BTreeSet<String> = files.iter().map(|f| f.partition().to_string()).collect();
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let bytes: u64 = files.iter().map(|f| f.bytes).sum();
        let mut segments: Vec<SegmentRef> = self
            .current
            .segments
            .iter()
            .filter(|s| s.max_minute >= job.oldest_kept_minute)
            .cloned()
            .collect();
        if !job.dedup.is_empty() {
            let rel = format!("{DEDUP_DIR}/ids-{g:010}.bin");
            let size = write_atomic(&root.join(&rel), &encode_segment(&job.dedup))?;
            segments.push(SegmentRef {
                path: rel,
                ids: job.dedup.len() as u64,
                bytes: size,
                max_minute: job.dedup.iter().map(|e| e.0).max().unwrap_or(0),
            });
        }
        let mut all_files = self.current.files.clone();
        all_files.extend(files);
        let ckpt = Checkpoint {
            generation: g,
            last_seq: job.last_seq,
            created_at: time::now_millis(),
            events: job.events,
            duplicates: job.duplicates,
            watermark: job.watermark,
            files: all_files,
            segments,
        };
        self.commit(ckpt, job.aggregates.clone())?;
        self.metrics.flushed_bytes.fetch_add(bytes, Relaxed);
        self.publish(parts);
        Ok(rows)
    }

    /// Shows outside readers the committed files of the partition directories `parts` (see
    /// `publish`). A failure is not the flush's: the commit stands, and the whole view is
    /// published again after the next job.
    fn publish(&mut self, parts: impl IntoIterator<Item = String>) {
        for part in parts {
            let want: Vec<&DataFile> = self
                .current
                .files
                .iter()
                .filter(|f| f.partition() == part)
                .collect();
            if let Err(e) = publish_partition(&self.cfg.dir, &part, &want) {
                warn!(error = %e, "cannot update the published events/ view; retrying after the next flush");
                self.republish = true;
            }
        }
    }

    /// Writes checkpoint `ckpt` durably and makes it current.
    fn commit(&mut self, ckpt: Checkpoint, aggregates: Vec<u8>) -> Result<(), PersistError> {
        let path = self
            .cfg
            .dir
            .join(CHECKPOINT_DIR)
            .join(Checkpoint::file_name(ckpt.generation));
        write_atomic(&path, &ckpt.encode(&aggregates))?;
        self.next_generation = ckpt.generation + 1;
        self.metrics
            .checkpoint_generation
            .store(ckpt.generation, Relaxed);
        self.metrics.checkpoint_seq.store(ckpt.last_seq, Relaxed);
        self.current = ckpt.clone();
        self.aggregates = aggregates;
        self.retained.push_front(ckpt);
        self.trim_retained();
        Ok(())
    }

    /// Deletes the checkpoints beyond `keep_checkpoints`, oldest first.
    fn trim_retained(&mut self) {
        while self.retained.len() > self.cfg.keep_checkpoints.max(1) {
            if let Some(old) = self.retained.pop_back() {
                let p = self
                    .cfg
                    .dir
                    .join(CHECKPOINT_DIR)
                    .join(Checkpoint::file_name(old.generation));
                if let Err(e) = remove(&p) {
                    warn!(error = %e, "cannot remove an old checkpoint");
                }
            }
        }
    }

    /// After a job: retention, compaction one partition at a time, and deletion of files nothing
    /// needs. After the first compaction step, a flush job that is waiting goes first: compaction
    /// resumes after it. Returns
    /// the new file list if it changed, and the job that interrupted, if any.
    fn maintain(
        &mut self,
        jobs: &mpsc::Receiver<FlushJob>,
    ) -> (Option<Arc<FileSet>>, Option<FlushJob>) {
        let mut changed = false;
        let mut waiting = None;
        if self.republish {
            match publish_all(&self.cfg.dir, &self.current.files) {
                Ok(()) => self.republish = false,
                Err(e) => {
                    warn!(error = %e, "cannot update the published events/ view; retrying after the next flush")
                }
            }
        }
        match self.migrate() {
            Ok(c) => changed |= c,
            Err(e) => {
                warn!(error = %e, "cannot move day partitions to month partitions; will retry after the next flush")
            }
        }
        match self.apply_retention() {
            Ok(c) => changed |= c,
            Err(e) => warn!(error = %e, "retention failed; will retry after the next flush"),
        }
        let mut steps = 0;
        while !self.stop.load(Relaxed) {
            // one step always (so frequent flushes cannot starve compaction), then flush jobs
            // that are waiting go first
            if steps > 0 {
                match jobs.try_recv() {
                    Ok(job) => {
                        waiting = Some(job);
                        break;
                    }
                    Err(mpsc::TryRecvError::Disconnected) => break,
                    Err(mpsc::TryRecvError::Empty) => {}
                }
            }
            steps += 1;
            match self.compact_one() {
                Ok(true) => changed = true,
                Ok(false) => break,
                Err(e) => {
                    self.metrics.compaction_failures.fetch_add(1, Relaxed);
                    warn!(error = %e, "compaction failed; will retry after the next flush");
                    break;
                }
            }
        }
        self.collect_garbage();
        (changed.then(|| self.file_set()), waiting)
    }

    /// Moves the files an older build wrote into day partitions (`events/date=…`) to the month
    /// partitions of their day: each is linked under its month with the same name (names are
    /// unique across partitions: generation and index), one checkpoint names the new paths, and
    /// the published view is swapped whole, so an outside reader sees the old layout or the new
    /// one, every event once. No byte is rewritten; compaction then merges each month's small
    /// files. A crash before the commit leaves links no checkpoint names, which recovery
    /// deletes; the move is then done again.
    fn migrate(&mut self) -> Result<bool, PersistError> {
        let moving = self
            .current
            .files
            .iter()
            .filter(|f| f.in_day_partition())
            .count();
        if moving == 0 {
            return Ok(false);
        }
        let t0 = Instant::now();
        let store = self.cfg.dir.join(STORE_DIR);
        let mut ckpt = self.current.clone();
        let mut dirs = BTreeSet::new();
        for f in ckpt.files.iter_mut().filter(|f| f.in_day_partition()) {
            let to = format!("{}/{}", partition_dir(f.day), f.name());
            let (from_abs, to_abs) = (store.join(&f.path), store.join(&to));
            if let Some(dir) = to_abs.parent() {
                ensure_dir(dir)?;
                dirs.insert(dir.to_path_buf());
            }
            // recovery deleted any link an interrupted move left, as no checkpoint names it
            link_or_copy(&from_abs, &to_abs)?;
            f.path = to;
        }
        for d in &dirs {
            sync_dir(d)?;
        }
        ckpt.generation = self.next_generation;
        ckpt.created_at = time::now_millis();
        self.commit(ckpt, self.aggregates.clone())?;
        if let Err(e) = publish_all(&self.cfg.dir, &self.current.files) {
            warn!(error = %e, "cannot update the published events/ view; retrying after the next flush");
            self.republish = true;
        }
        info!(
            files = moving,
            ms = t0.elapsed().as_millis() as u64,
            "moved the day partitions of an older build to month partitions"
        );
        Ok(true)
    }

    /// Commits a checkpoint in which `added` replace `gone` (the rows stay the same or leave by
    /// retention; the aggregates do not change), then shows the partitions involved to outside
    /// readers.
    fn replace_files(
        &mut self,
        gone: &[DataFile],
        added: Vec<DataFile>,
    ) -> Result<(), PersistError> {
        let parts: BTreeSet<String> = gone
            .iter()
            .chain(&added)
            .map(|f| f.partition().to_string())
            .collect();
        let paths: HashSet<&str> = gone.iter().map(|f| f.path.as_str()).collect();
        let mut ckpt = self.current.clone();
        ckpt.files.retain(|f| !paths.contains(f.path.as_str()));
        ckpt.files.extend(added);
        ckpt.generation = self.next_generation;
        ckpt.created_at = time::now_millis();
        self.commit(ckpt, self.aggregates.clone())?;
        self.publish(parts);
        Ok(())
    }

    /// Drops the events of every UTC day that ended longer than `retention` before the
    /// watermark (never later than now): files holding only such days are dropped, a file that
    /// also holds kept days is rewritten with its kept rows (its rows are sorted by time, so
    /// they are its tail). The cutoff moves by whole days, so a file is rewritten at most once a
    /// day.
    fn apply_retention(&mut self) -> Result<bool, PersistError> {
        let (Some(keep), Some(wm)) = (self.cfg.retention, self.current.watermark) else {
            return Ok(false);
        };
        // Retention is measured back from the watermark (so a backfill of old history is not
        // dropped as it arrives), but never from later than the wall clock: the watermark is
        // the word of the newest event alone, and one mis-stamped event must not make every
        // partition look expired. (The decoder already refuses events far ahead of their
        // arrival; this holds even when that bound is configured off.)
        let cutoff = wm.min(time::now_millis()) - keep.as_millis() as i64;
        // a day expires once it ended at or before the cutoff: rows from this instant on stay
        let keep_from = cutoff.div_euclid(time::DAY_MS) * time::DAY_MS;
        let touched: Vec<DataFile> = self
            .current
            .files
            .iter()
            .filter(|f| f.min_ts < keep_from)
            .cloned()
            .collect();
        if touched.is_empty() {
            return Ok(false);
        }
        let t0 = Instant::now();
        let g = self.next_generation;
        let store = self.cfg.dir.join(STORE_DIR);
        let mut expired = 0;
        let mut kept_files = Vec::new();
        for (k, f) in touched.iter().enumerate() {
            if f.max_ts < keep_from {
                expired += f.rows;
                continue;
            }
            let mut kept = Vec::new();
            for b in read_file(&store.join(&f.path))? {
                let ts = b
                    .column(super::parquet::TS)
                    .as_primitive::<TimestampMillisecondType>();
                let from = ts.values().partition_point(|&t| t < keep_from);
                expired += from as u64;
                if from < b.num_rows() {
                    kept.push(b.slice(from, b.num_rows() - from));
                }
            }
            kept_files.extend(write_sorted(
                &store,
                &format!("trim-{g:010}-{k}"),
                &kept,
                &self.props,
            )?);
        }
        self.replace_files(&touched, kept_files)?;
        self.metrics.expired_rows.fetch_add(expired, Relaxed);
        info!(
            before = %time::format_day(time::day(keep_from)),
            rows = expired,
            files = touched.len(),
            ms = t0.elapsed().as_millis() as u64,
            "retention dropped the events of expired days"
        );
        Ok(true)
    }

    /// The first day a partition's month must have ended before for the partition to be cold
    /// (see [`COLD_AFTER_DAYS`]), if there is a watermark.
    fn cold_before(&self) -> Option<i32> {
        let wm = self.current.watermark?.min(time::now_millis());
        Some(time::day(wm) - COLD_AFTER_DAYS)
    }

    /// The partition to compact next and its files to merge (with their bytes), if any
    /// partition has enough small files of one size class (see `compact_one`).
    fn pick_compaction(&self) -> Option<(String, Vec<DataFile>, u64)> {
        let target = self.cfg.compact_target_bytes;
        let cold_before = self.cold_before();
        let mut by_class: BTreeMap<(&str, u32), (bool, Vec<&DataFile>)> = BTreeMap::new();
        for f in &self.current.files {
            if f.bytes < target / 2 && !f.in_day_partition() {
                let cold = cold_before.is_some_and(|c| time::month_bounds(f.day).1 <= c);
                let class = if self.tiered && !cold {
                    f.bytes.max(1).ilog2() / 2
                } else {
                    0
                };
                let e = by_class.entry((f.partition(), class)).or_default();
                e.0 = cold;
                e.1.push(f);
            }
        }
        for ((part, _), (cold, mut small)) in by_class {
            small.sort_by_key(|f| (f.min_ts, f.min_seq));
            let mut picked: Vec<DataFile> = Vec::new();
            let mut total = 0;
            for f in small {
                if total + f.bytes > target && picked.len() >= 2 {
                    break;
                }
                total += f.bytes;
                picked.push(f.clone());
            }
            let min_files = if cold {
                2
            } else {
                self.cfg.compact_min_files.max(2)
            };
            if picked.len() >= min_files {
                return Some((part.to_string(), picked, total));
            }
        }
        None
    }

    /// Compacts the small files of one partition, if any partition has enough of them.
    ///
    /// Online the policy is size-tiered: files are grouped by size class (powers of 4) and only
    /// `compact_min_files` files of one class are merged, so a merged file joins a higher class
    /// instead of being rewritten with every new flush file: each byte is rewritten about
    /// log₄(target / flush file size) times, not once per flush. Offline (`passpulse compact`)
    /// every small file of a partition is merged. A cold partition (its month ended
    /// [`COLD_AFTER_DAYS`] before the watermark) merges all its small files once it has two,
    /// online too: it will rarely change again, and a backfill of years of history then leaves
    /// about one file per month.
    fn compact_one(&mut self) -> Result<bool, PersistError> {
        let Some((part, picked, total)) = self.pick_compaction() else {
            return Ok(false);
        };
        let t0 = Instant::now();
        let mut batches = Vec::new();
        for f in &picked {
            batches.extend(read_file(&self.cfg.dir.join(STORE_DIR).join(&f.path))?);
        }
        let g = self.next_generation;
        let merged = write_sorted(
            &self.cfg.dir.join(STORE_DIR),
            &format!("compact-{g:010}"),
            &batches,
            &self.props,
        )?;
        self.replace_files(&picked, merged)?;
        self.metrics.compactions.fetch_add(1, Relaxed);
        info!(
            partition = %part,
            files = picked.len(),
            bytes = total,
            ms = t0.elapsed().as_millis() as u64,
            "compacted a partition"
        );
        Ok(true)
    }

    /// Deletes files that no kept checkpoint names, once they have been unneeded for the grace
    /// period (queries planned before the change may still read them).
    fn collect_garbage(&mut self) {
        let needed: HashSet<&str> = self
            .retained
            .iter()
            .flat_map(|c| {
                c.files
                    .iter()
                    .map(|f| f.path.as_str())
                    .chain(c.segments.iter().map(|s| s.path.as_str()))
            })
            .collect();
        let root = self.cfg.dir.clone();
        let now = Instant::now();
        // data files are named by their published path, kept under store/; segments as they are
        for (d, base) in [(STORE_DIR, root.join(STORE_DIR)), (DEDUP_DIR, root.clone())] {
            for p in super::fsio::walk(&root.join(d)) {
                let rel = super::recover::rel_path(&base, &p);
                if !needed.contains(rel.as_str()) && !rel.ends_with(super::fsio::TMP_SUFFIX) {
                    self.doomed.entry(rel).or_insert(now);
                }
            }
        }
        let grace = self.cfg.delete_grace;
        let due: Vec<String> = self
            .doomed
            .iter()
            .filter(|(rel, since)| !needed.contains(rel.as_str()) && now - **since >= grace)
            .map(|(rel, _)| rel.clone())
            .collect();
        for rel in due {
            let p: PathBuf = if rel.starts_with(DEDUP_DIR) {
                root.join(&rel)
            } else {
                root.join(STORE_DIR).join(&rel)
            };
            match remove(&p) {
                Ok(()) => {
                    self.doomed.remove(&rel);
                    self.metrics.files_deleted.fetch_add(1, Relaxed);
                }
                Err(e) => warn!(error = %e, "cannot delete an unneeded file"),
            }
        }
        self.doomed.retain(|rel, _| !needed.contains(rel.as_str()));
        remove_empty_partitions(&root);
    }
}

/// What an offline compaction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CompactReport {
    pub compactions: usize,
    pub files_before: usize,
    pub files_after: usize,
}

/// Compacts every partition of a data directory no server is using (`passpulse compact`):
/// recovers it, merges small files until no partition has `cfg.compact_min_files` of them,
/// applies retention, and deletes what the new checkpoint does not need (older checkpoints
/// included), so that the directory holds exactly the current files.
pub fn compact_dir(mut cfg: PersistConfig) -> Result<CompactReport, PersistError> {
    cfg.dir = super::resolve_dir(&cfg.dir)?;
    let _lock = super::DirLock::acquire(&cfg.dir)?;
    let metrics = Arc::new(PersistMetrics::default());
    let rec = super::recover(&cfg, &metrics)?;
    if rec.checkpoint.is_none() {
        return Ok(CompactReport::default());
    }
    // nothing else can be reading these files
    cfg.delete_grace = Duration::ZERO;
    let mut st = State::new(
        cfg,
        rec.checkpoint,
        rec.older,
        rec.next_generation,
        metrics,
        Arc::new(AtomicBool::new(false)),
    );
    st.tiered = false;
    let mut report = CompactReport {
        files_before: st.current.files.len(),
        ..Default::default()
    };
    let migrated = st.migrate()?;
    let dropped = st.apply_retention()?;
    while st.compact_one()? {
        report.compactions += 1;
    }
    if migrated || dropped || report.compactions > 0 {
        // the directory then holds exactly the newest checkpoint's files, for any reader
        st.cfg.keep_checkpoints = 1;
        st.trim_retained();
    }
    st.collect_garbage();
    report.files_after = st.current.files.len();
    Ok(report)
}
