//! Persistence: the hot store's rows flushed to Parquet, and checkpoints that commit, atomically
//! and together, the new files, a snapshot of every rolling aggregate, the ids seen for
//! de-duplication and the last stream sequence they cover.
//!
//! Layout under the data directory:
//!
//! ```text
//! store/events/month=YYYY-MM/part-<generation>-<n>.parquet   the engine's copy: events, sorted by (ts, seq), ZSTD
//! events/month=YYYY-MM/part-<generation>-<n>.parquet         the published view: hard links of exactly the newest checkpoint's files
//! dedup/ids-<generation>.bin                                   ids first seen in that flush
//! checkpoints/checkpoint-<generation>.ckpt                     the commit record
//! ```
//!
//! Every file is written under a `.tmp` name, fsynced, renamed and its directory fsynced. A
//! checkpoint is valid only if its checksum matches and every file it names exists with the
//! recorded size; the newest valid one wins, and anything no valid checkpoint names (a flush
//! that crashed before its commit) is deleted at start: those events are replayed from the
//! stream. See `flusher` for the write path, `recover` for the read path and `publish` for the
//! view outside readers list.
//!
//! Partitions are UTC calendar months. Days were the partitions until issue 17: a backfill of
//! years of history then left at least one file per day (30,000 events on distinct days made
//! 30,001 files, and a query paid for every one). A month keeps the file count of a long history
//! near that of recent data, while the files' time statistics still prune a time filter to the
//! files that can match. A directory written with day partitions (`events/date=YYYY-MM-DD/`) is
//! moved to month partitions by the flusher at start (`flusher::State::migrate`), in one swap
//! of the published view.

mod checkpoint;
mod flusher;
mod fsio;
mod inspect;
mod lock;
mod parquet;
mod publish;
mod recover;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use checkpoint::{Checkpoint, CheckpointError, SegmentRef, read_checkpoint};
pub use flusher::{CompactReport, FlushDone, FlushJob, Flusher, compact_dir};
#[cfg(test)]
pub(crate) use fsio::walk as fsio_walk;
pub use inspect::{Inspection, inspect};
pub use lock::DirLock;
pub use parquet::{read_file, write_sorted, writer_properties};
pub(crate) use publish::STORE_DIR;
pub use recover::{Recovered, recover};

/// Where and how the engine persists.
#[derive(Debug, Clone)]
pub struct PersistConfig {
    /// Root of `events/`, `dedup/` and `checkpoints/`.
    pub dir: PathBuf,
    /// Flush when the hot store holds this many rows (default 2,000,000 ≈ 200 MB).
    pub flush_rows: usize,
    /// Flush rows older than this even if few (default 60 s).
    pub flush_interval: Duration,
    /// Rows per Parquet row group (default 524,288).
    pub row_group_rows: usize,
    /// ZSTD level of the Parquet files (default 1: on these pages as small as level 3, and
    /// cheaper).
    pub zstd_level: i32,
    /// Compact a partition once it has this many files of one size class smaller than
    /// `compact_target_bytes` (default 8). A partition whose month ended more than
    /// [`COLD_AFTER_DAYS`] before the watermark merges all its small files once it has two.
    pub compact_min_files: usize,
    /// Files at least this large are left alone by compaction (default 128 MiB).
    pub compact_target_bytes: u64,
    /// Drop events whose UTC day ended longer than this before the watermark (never later than
    /// now); files holding expired and kept days are rewritten with the kept rows (default: keep
    /// all).
    pub retention: Option<Duration>,
    /// Checkpoints kept on disk, newest first (default 3); older ones are the fall-back if the
    /// newest is damaged.
    pub keep_checkpoints: usize,
    /// A file no checkpoint needs any more is deleted only after this long, so queries planned
    /// before it was replaced can still read it (default 60 s; `serve` uses at least twice the
    /// query timeout). Only the engine's copies under `store/` wait: the published `events/`
    /// view drops a replaced file at the commit (see `publish`).
    pub delete_grace: Duration,
}

impl PersistConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        PersistConfig {
            dir: dir.into(),
            flush_rows: 2_000_000,
            flush_interval: Duration::from_secs(60),
            row_group_rows: 524_288,
            zstd_level: 1,
            compact_min_files: 8,
            compact_target_bytes: 128 << 20,
            retention: None,
            keep_checkpoints: 3,
            delete_grace: Duration::from_secs(60),
        }
    }
}

/// One Parquet file of the `events` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataFile {
    /// Path of the published file relative to the data directory, `/`-separated
    /// (`events/month=…/name.parquet`); the engine's own copy is `store/<path>`.
    pub path: String,
    /// UTC day of its first row (days since the epoch); the file lives in that day's month
    /// partition (or, written by an older build, in that day's `date=` partition).
    pub day: i32,
    pub rows: u64,
    pub bytes: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub min_seq: u64,
    pub max_seq: u64,
}

/// The Parquet files of the `events` table at one moment, with the directory they live in.
#[derive(Debug, Clone, Default)]
pub struct FileSet {
    pub root: PathBuf,
    pub files: Vec<DataFile>,
}

impl FileSet {
    /// Where the engine reads `f`: its own copy, which outlives a compaction long enough for
    /// the queries planned before it.
    pub fn abs_path(&self, f: &DataFile) -> PathBuf {
        self.root.join(STORE_DIR).join(&f.path)
    }

    pub fn rows(&self) -> u64 {
        self.files.iter().map(|f| f.rows).sum()
    }

    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parquet { path: PathBuf, message: String },
    #[error("{0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("aggregates snapshot: {0}")]
    Snapshot(String),
    #[error(
        "data directory {0} is in use by another passpulse process (a running server compacts by itself; stop it to run this command)"
    )]
    Locked(PathBuf),
}

impl PersistError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        PersistError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Counters of the persistence layer, read by `/metrics`.
#[derive(Debug, Default)]
pub struct PersistMetrics {
    pub flushes: AtomicU64,
    pub flush_failures: AtomicU64,
    pub flushed_rows: AtomicU64,
    pub flushed_bytes: AtomicU64,
    /// Duration of the last flush (files and checkpoint), microseconds.
    pub last_flush_micros: AtomicU64,
    /// Time spent in committed flushes, microseconds.
    pub flush_micros_total: AtomicU64,
    pub checkpoint_generation: AtomicU64,
    /// Stream sequence covered by the newest checkpoint.
    pub checkpoint_seq: AtomicU64,
    pub compactions: AtomicU64,
    pub compaction_failures: AtomicU64,
    pub files_deleted: AtomicU64,
    /// Rows dropped by retention.
    pub expired_rows: AtomicU64,
    /// Damaged checkpoints skipped and stray temp files removed at start.
    pub corrupt_checkpoints: AtomicU64,
    pub stray_files: AtomicU64,
    /// Events refused as duplicates (by id, within the window).
    pub duplicates: AtomicU64,
}

impl PersistMetrics {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Relaxed)
    }
}

/// Creates the data directory if needed and returns its canonical absolute path, so that a
/// directory named relative (`passpulse-data`, `./x`, `../x`), through a symlink, or with spaces
/// and non-ASCII characters is the same directory for every file the engine writes and for the
/// query engine's object store, which needs absolute paths.
pub fn resolve_dir(dir: &Path) -> Result<PathBuf, PersistError> {
    fsio::ensure_dir(dir)?;
    std::fs::canonicalize(dir).map_err(|e| PersistError::io(dir, e))
}

/// A partition whose month ended more than this many days before the watermark is cold: late
/// events for it are rare, so all its small files are merged once it has two.
pub const COLD_AFTER_DAYS: i32 = 7;

/// Path of the partition directory holding the rows of `day` (the day's UTC month), relative to
/// the data directory.
pub fn partition_dir(day: i32) -> String {
    format!("events/month={}", crate::time::format_month(day))
}

impl DataFile {
    /// The partition directory the file lives in, relative to the data directory.
    pub fn partition(&self) -> &str {
        self.path.rsplit_once('/').map_or("", |(dir, _)| dir)
    }

    /// The file's name inside its partition.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }

    /// Whether the file lives in a day partition an older build wrote (moved to month
    /// partitions by `flusher::State::migrate`).
    pub fn in_day_partition(&self) -> bool {
        self.partition().starts_with("events/date=")
    }
}
