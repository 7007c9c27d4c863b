//! A read-only look at a data directory for operators (`passpulse inspect`): every checkpoint and
//! whether it is usable, the partitions and files of the newest usable one with their row counts
//! (as recorded, and as the Parquet footers say), the de-duplication segments, and any file that
//! no checkpoint names. Nothing is changed, so it is safe while a server runs.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde::Serialize;

use super::checkpoint::{CHECKPOINT_DIR, DEDUP_DIR};
use super::fsio::walk;
use super::lock::LOCK_FILE;
use super::recover::rel_path;
use super::{Checkpoint, PersistError, STORE_DIR, read_checkpoint};
use crate::time;

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub data_dir: String,
    /// Another process (a running server) holds the directory's lock.
    pub in_use: bool,
    /// Newest first.
    pub checkpoints: Vec<CheckpointInfo>,
    /// The generation a start would resume from.
    pub current: Option<u64>,
    pub partitions: Vec<PartitionInfo>,
    pub files: Vec<FileInfo>,
    pub totals: Totals,
    /// Files under `store/` and `dedup/` that no readable checkpoint names (a crashed flush's
    /// output or temporary files; the next start deletes them).
    pub unreferenced: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct CheckpointInfo {
    pub generation: u64,
    pub usable: bool,
    pub problem: Option<String>,
    pub last_seq: u64,
    pub created_at: Option<String>,
    pub events: u64,
    pub duplicates: u64,
    pub files: usize,
    pub rows: u64,
    pub aggregates_bytes: usize,
}

#[derive(Debug, Serialize)]
pub struct PartitionInfo {
    /// The partition directory under `events/` (`month=YYYY-MM`).
    pub partition: String,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct FileInfo {
    pub path: String,
    pub rows: u64,
    /// Row count in the file's Parquet footer; differs from `rows` only if the file is damaged.
    pub footer_rows: Option<u64>,
    pub bytes: u64,
    pub min_ts: String,
    pub max_ts: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Totals {
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub bytes_per_event: f64,
    pub dedup_segments: usize,
    pub dedup_ids: u64,
    pub dedup_bytes: u64,
}

/// The engine's copy of a data file, or the published one in a directory an older build wrote.
fn stored(dir: &Path, rel: &str) -> std::path::PathBuf {
    let p = dir.join(STORE_DIR).join(rel);
    if p.exists() { p } else { dir.join(rel) }
}

fn footer_rows(path: &Path) -> Option<u64> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let f = std::fs::File::open(path).ok()?;
    let r = SerializedFileReader::new(f).ok()?;
    u64::try_from(r.metadata().file_metadata().num_rows()).ok()
}

fn in_use(dir: &Path) -> bool {
    let Ok(f) = std::fs::File::open(dir.join(LOCK_FILE)) else {
        return false;
    };
    match f.try_lock_shared() {
        Ok(()) => false,
        Err(std::fs::TryLockError::WouldBlock) => true,
        Err(_) => false,
    }
}

/// Inspects `dir` without changing anything.
pub fn inspect(dir: &Path) -> Result<Inspection, PersistError> {
    if !dir.is_dir() {
        return Err(PersistError::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such data directory"),
        ));
    }
    let mut gens: Vec<(u64, std::path::PathBuf)> = walk(&dir.join(CHECKPOINT_DIR))
        .into_iter()
        .filter_map(|p| {
            Some((
                Checkpoint::generation_of(&p.file_name()?.to_string_lossy())?,
                p,
            ))
        })
        .collect();
    gens.sort_by_key(|g| std::cmp::Reverse(g.0));
    let mut checkpoints = Vec::new();
    let mut current: Option<Checkpoint> = None;
    let mut referenced = HashSet::new();
    for (g, p) in gens {
        let read =
            read_checkpoint(&p).and_then(|(c, aggs)| c.verify_files(dir).map(|()| (c, aggs.len())));
        match read {
            Ok((c, aggs_len)) => {
                referenced.extend(c.files.iter().map(|f| f.path.clone()));
                referenced.extend(c.segments.iter().map(|s| s.path.clone()));
                checkpoints.push(CheckpointInfo {
                    generation: g,
                    usable: true,
                    problem: None,
                    last_seq: c.last_seq,
                    created_at: Some(time::format_millis(c.created_at)),
                    events: c.events,
                    duplicates: c.duplicates,
                    files: c.files.len(),
                    rows: c.files.iter().map(|f| f.rows).sum(),
                    aggregates_bytes: aggs_len,
                });
                if current.is_none() {
                    current = Some(c);
                }
            }
            Err(e) => checkpoints.push(CheckpointInfo {
                generation: g,
                usable: false,
                problem: Some(e.to_string()),
                last_seq: 0,
                created_at: None,
                events: 0,
                duplicates: 0,
                files: 0,
                rows: 0,
                aggregates_bytes: 0,
            }),
        }
    }
    let mut partitions: BTreeMap<String, PartitionInfo> = BTreeMap::new();
    let mut files = Vec::new();
    let mut totals = Totals::default();
    if let Some(c) = &current {
        for f in &c.files {
            let part = f.partition().trim_start_matches("events/").to_string();
            let p = partitions
                .entry(part.clone())
                .or_insert_with(|| PartitionInfo {
                    partition: part,
                    files: 0,
                    rows: 0,
                    bytes: 0,
                });
            p.files += 1;
            p.rows += f.rows;
            p.bytes += f.bytes;
            files.push(FileInfo {
                path: f.path.clone(),
                rows: f.rows,
                footer_rows: footer_rows(&stored(dir, &f.path)),
                bytes: f.bytes,
                min_ts: time::format_millis(f.min_ts),
                max_ts: time::format_millis(f.max_ts),
            });
        }
        totals.files = c.files.len();
        totals.rows = c.files.iter().map(|f| f.rows).sum();
        totals.bytes = c.files.iter().map(|f| f.bytes).sum();
        totals.bytes_per_event = if totals.rows == 0 {
            0.0
        } else {
            totals.bytes as f64 / totals.rows as f64
        };
        totals.dedup_segments = c.segments.len();
        totals.dedup_ids = c.segments.iter().map(|s| s.ids).sum();
        totals.dedup_bytes = c.segments.iter().map(|s| s.bytes).sum();
    }
    let store = dir.join(STORE_DIR);
    let unreferenced = walk(&store)
        .iter()
        .map(|p| {
            (
                rel_path(&store, p),
                format!("{STORE_DIR}/{}", rel_path(&store, p)),
            )
        })
        .chain(
            walk(&dir.join(DEDUP_DIR))
                .iter()
                .map(|p| (rel_path(dir, p), rel_path(dir, p))),
        )
        .filter(|(r, _)| !referenced.contains(r))
        .map(|(_, shown)| shown)
        .collect();
    Ok(Inspection {
        data_dir: dir.display().to_string(),
        in_use: in_use(dir),
        checkpoints,
        current: current.map(|c| c.generation),
        partitions: partitions.into_values().collect(),
        files,
        totals,
        unreferenced,
    })
}
