//! The published view: `events/date=…/` holds, for readers outside passpulse (DuckDB, pyarrow,
//! Spark, Trino listing the directory), exactly the files of the newest checkpoint, so they see
//! every committed event exactly once at every instant, while the server flushes and compacts,
//! after a clean stop and after `kill -9`.
//!
//! Why this shape. The engine's own copy of every data file lives under `store/` (same relative
//! path); the engine's queries read those, and a file stays there until no kept checkpoint names
//! it and the grace period is over, so a query planned before a compaction still completes. The
//! published files are hard links of the stored ones (no extra bytes). A partition changes for
//! outside readers in one atomic step:
//! - files only added (a flush): one `link` per file, each atomic;
//! - files removed (compaction, retention): the partition's new content is built beside it under
//!   `staging/` and swapped in with `renameat2(RENAME_EXCHANGE)`; the old directory, now under
//!   `staging/`, is deleted (the engine's copies under `store/` are untouched).
//!
//! The view is published after the checkpoint commits, so it never shows uncommitted rows; a crash
//! in between leaves the previous (still exactly-once) view, and recovery publishes the chosen
//! checkpoint again. A table format (Delta Lake) was considered: its log would give readers that
//! understand it snapshots too, but plain `read_parquet('events/*/*.parquet')` would still see
//! retired files until a vacuum, which is the defect this view removes.
//!
//! A reader that has listed a partition and opens a file after the swap removed it gets "not
//! found" (and retries); it never counts a row twice.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use tracing::warn;

use super::fsio::{ensure_dir, sync_dir};
use super::{DataFile, PersistError, partition_dir};

/// Directory of the engine's own copies of the data files (`store/events/date=…/…`).
pub const STORE_DIR: &str = "store";
/// Where a partition's next content is assembled before it is swapped in.
pub(crate) const STAGING_DIR: &str = "staging";

/// Partitions replaced without an atomic swap (a file system without `RENAME_EXCHANGE`).
static NON_ATOMIC_SWAPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes `events/` show exactly `files`: every partition named, and no other partition.
pub(crate) fn publish_all(root: &Path, files: &[DataFile]) -> Result<(), PersistError> {
    let mut by_day: BTreeMap<i32, Vec<&DataFile>> = BTreeMap::new();
    for f in files {
        by_day.entry(f.day).or_default().push(f);
    }
    if let Ok(rd) = fs::read_dir(root.join("events")) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(day) = name.strip_prefix("date=").and_then(crate::time::parse_day) {
                by_day.entry(day).or_default();
            }
        }
    }
    for (day, want) in by_day {
        publish_day(root, day, &want)?;
    }
    Ok(())
}

/// Makes the partition of `day` under `events/` hold exactly `want`, in one step a reader can
/// observe.
pub(crate) fn publish_day(root: &Path, day: i32, want: &[&DataFile]) -> Result<(), PersistError> {
    let rel = partition_dir(day);
    let dir = root.join(&rel);
    let wanted: BTreeMap<&str, &DataFile> = want.iter().map(|f| (file_name(f), *f)).collect();
    let exists = dir.is_dir();
    let have: BTreeSet<String> = if exists {
        fs::read_dir(&dir)
            .map_err(|e| PersistError::io(&dir, e))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    } else {
        BTreeSet::new()
    };
    if have.len() == wanted.len() && have.iter().all(|h| wanted.contains_key(h.as_str())) {
        return Ok(());
    }
    let events = root.join("events");
    let staging = root.join(STAGING_DIR);
    if exists && have.iter().all(|h| wanted.contains_key(h.as_str())) {
        // only additions: each link appears atomically
        for (name, f) in &wanted {
            if !have.contains(*name) {
                link(root, f, &dir.join(name))?;
            }
        }
        return sync_dir(&dir);
    }
    ensure_dir(&staging)?;
    let stage = staging.join(format!("date={}", crate::time::format_day(day)));
    remove_tree(&stage)?;
    if wanted.is_empty() {
        // the whole partition leaves in one rename
        rename(&dir, &stage)?;
        sync_dir(&events)?;
        return remove_tree(&stage);
    }
    fs::create_dir(&stage).map_err(|e| PersistError::io(&stage, e))?;
    for (name, f) in &wanted {
        link(root, f, &stage.join(name))?;
    }
    sync_dir(&stage)?;
    ensure_dir(&events)?;
    if !exists {
        rename(&stage, &dir)?;
    } else if let Err(e) = exchange(&stage, &dir) {
        // a file system without RENAME_EXCHANGE: for a moment the day is missing, never doubled
        NON_ATOMIC_SWAPS.fetch_add(1, Relaxed);
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Relaxed) {
            warn!(error = %e, "the file system cannot swap directories atomically; outside readers may briefly miss a partition while it is rewritten");
        }
        let old = staging.join(format!("old-date={}", crate::time::format_day(day)));
        remove_tree(&old)?;
        rename(&dir, &old)?;
        rename(&stage, &dir)?;
        sync_dir(&events)?;
        sync_dir(&staging)?;
        return remove_tree(&old);
    }
    sync_dir(&events)?;
    sync_dir(&staging)?;
    // `stage` now holds the partition's previous links
    remove_tree(&stage)
}

fn file_name(f: &DataFile) -> &str {
    f.path.rsplit('/').next().unwrap_or(&f.path)
}

fn link(root: &Path, f: &DataFile, to: &Path) -> Result<(), PersistError> {
    let from = root.join(STORE_DIR).join(&f.path);
    match fs::hard_link(&from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Err(PersistError::io(&from, e)),
        Err(e) => {
            // a file system without hard links: a copy, appearing under its name in one rename
            static WARNED: AtomicBool = AtomicBool::new(false);
            if !WARNED.swap(true, Relaxed) {
                warn!(error = %e, "the file system has no hard links; the published events/ files are copies");
            }
            let tmp = super::fsio::tmp_path(to);
            fs::copy(&from, &tmp).map_err(|e| PersistError::io(&tmp, e))?;
            rename(&tmp, to)
        }
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), PersistError> {
    fs::rename(from, to).map_err(|e| PersistError::io(from, e))
}

fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).map_err(io::Error::from)
}

/// Removes a directory tree; a missing one is not an error.
pub(crate) fn remove_tree(p: &Path) -> Result<(), PersistError> {
    match fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PersistError::io(p, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &Path, day: i32, name: &str) -> DataFile {
        let path = format!("{}/{name}", partition_dir(day));
        let p = dir.join(STORE_DIR).join(&path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, name).unwrap();
        DataFile {
            path,
            day,
            rows: 1,
            bytes: name.len() as u64,
            min_ts: 0,
            max_ts: 0,
            min_seq: 0,
            max_seq: 0,
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = super::super::fsio::walk(&dir.join("events"))
            .iter()
            .map(|p| super::super::recover::rel_path(dir, p))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn partitions_show_exactly_the_files_named() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let a = file(root, 10, "part-1-0.parquet");
        let b = file(root, 10, "part-2-0.parquet");
        let c = file(root, 11, "part-2-1.parquet");
        publish_all(root, std::slice::from_ref(&a)).unwrap();
        assert_eq!(listing(root), vec![a.path.clone()]);
        // a flush adds files
        publish_all(root, &[a.clone(), b.clone(), c.clone()]).unwrap();
        assert_eq!(
            listing(root),
            vec![a.path.clone(), b.path.clone(), c.path.clone()]
        );
        // a compaction replaces a and b by m: swapped in, the stored copies stay for queries
        let m = file(root, 10, "compact-3-0.parquet");
        publish_day(root, 10, &[&m]).unwrap();
        assert_eq!(listing(root), vec![m.path.clone(), c.path.clone()]);
        assert!(root.join(STORE_DIR).join(&a.path).exists());
        assert_eq!(
            fs::read_to_string(root.join(&m.path)).unwrap(),
            "compact-3-0.parquet"
        );
        // retention drops a day; a stray file in a partition is taken out
        fs::write(root.join(&c.path).with_file_name("stray.parquet"), "x").unwrap();
        publish_all(root, std::slice::from_ref(&m)).unwrap();
        assert_eq!(listing(root), vec![m.path.clone()]);
        publish_all(root, &[]).unwrap();
        assert!(listing(root).is_empty());
        // every replacement above was one atomic swap, not the fall-back
        assert_eq!(NON_ATOMIC_SWAPS.load(Relaxed), 0);
        assert!(!root.join(STAGING_DIR).join("date=1970-01-11").exists());
    }
}
