//! The published view: `events/month=…/` holds, for readers outside passpulse (DuckDB, pyarrow,
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
//!   `staging/`, is deleted (the engine's copies under `store/` are untouched);
//! - files moved between partitions (the one-time move from day to month partitions), and
//!   recovery: the whole `events/` directory is assembled under `staging/` and swapped the same
//!   way.
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

use super::fsio::{ensure_dir, remove, sync_dir};
use super::{DataFile, PersistError};

/// Directory of the engine's own copies of the data files (`store/events/month=…/…`).
pub const STORE_DIR: &str = "store";
/// Where a partition's next content is assembled before it is swapped in.
pub(crate) const STAGING_DIR: &str = "staging";

/// Partitions replaced without an atomic swap (a file system without `RENAME_EXCHANGE`).
static NON_ATOMIC_SWAPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes `events/` show exactly `files`: every partition named, and no other partition. When
/// the view differs, its new content is assembled under `staging/` and swapped in whole, so a
/// change that moves files between partitions (the move from day to month partitions) is one
/// step for readers too.
pub(crate) fn publish_all(root: &Path, files: &[DataFile]) -> Result<(), PersistError> {
    let events = root.join("events");
    let shown: BTreeSet<String> = super::fsio::walk(&events)
        .iter()
        .map(|p| super::recover::rel_path(root, p))
        .collect();
    let wanted: BTreeSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
    let mut parts: BTreeMap<&str, Vec<&DataFile>> = BTreeMap::new();
    for f in files {
        parts.entry(f.partition()).or_default().push(f);
    }
    let dirs_ok = fs::read_dir(&events).is_ok_and(|rd| {
        rd.flatten().all(|e| {
            let rel = format!("events/{}", e.file_name().to_string_lossy());
            parts.contains_key(rel.as_str())
        })
    });
    if dirs_ok && shown.len() == wanted.len() && shown.iter().all(|p| wanted.contains(p.as_str())) {
        return Ok(());
    }
    let staging = root.join(STAGING_DIR);
    ensure_dir(&staging)?;
    let stage = staging.join("events");
    remove_tree(&stage)?;
    fs::create_dir(&stage).map_err(|e| PersistError::io(&stage, e))?;
    for (part, want) in &parts {
        let dir = stage.join(part.strip_prefix("events/").unwrap_or(part));
        ensure_dir(&dir)?;
        for f in want {
            link(root, f, &dir.join(f.name()))?;
        }
        sync_dir(&dir)?;
    }
    sync_dir(&stage)?;
    if !events.exists() {
        rename(&stage, &events)?;
        return sync_dir(root);
    }
    match exchange(&stage, &events) {
        Ok(()) => {
            sync_dir(root)?;
            sync_dir(&staging)?;
            // `stage` now holds the previous view
            remove_tree(&stage)
        }
        Err(e) => {
            // a file system without RENAME_EXCHANGE: partition by partition, what leaves first
            // (a reader may then briefly miss files, never see one twice: files that move
            // between partitions leave the old one before they appear in the new one)
            note_non_atomic(&e);
            if let Ok(rd) = fs::read_dir(&events) {
                for e in rd.flatten() {
                    let rel = format!("events/{}", e.file_name().to_string_lossy());
                    if parts.contains_key(rel.as_str()) {
                        continue;
                    }
                    if e.path().is_dir() {
                        publish_partition(root, &rel, &[])?;
                    } else {
                        remove(&e.path())?;
                    }
                }
            }
            for (part, want) in &parts {
                let keep: BTreeSet<&str> = want.iter().map(|f| f.name()).collect();
                let dir = root.join(part);
                // files leaving this partition go before any partition gains files
                if let Ok(rd) = fs::read_dir(&dir) {
                    for e in rd.flatten() {
                        if !keep.contains(e.file_name().to_string_lossy().as_ref()) {
                            remove(&e.path())?;
                        }
                    }
                }
            }
            for (part, want) in &parts {
                publish_partition(root, part, want)?;
            }
            remove_tree(&stage)
        }
    }
}

fn note_non_atomic(e: &io::Error) {
    NON_ATOMIC_SWAPS.fetch_add(1, Relaxed);
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Relaxed) {
        warn!(error = %e, "the file system cannot swap directories atomically; outside readers may briefly miss a partition while it is rewritten");
    }
}

/// Makes the partition directory `rel` (`events/month=…`, relative to the data directory) hold
/// exactly `want`, in one step a reader can observe.
pub(crate) fn publish_partition(
    root: &Path,
    rel: &str,
    want: &[&DataFile],
) -> Result<(), PersistError> {
    let dir = root.join(rel);
    let wanted: BTreeMap<&str, &DataFile> = want.iter().map(|f| (f.name(), *f)).collect();
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
    let part_name = rel.rsplit('/').next().unwrap_or(rel);
    ensure_dir(&staging)?;
    let stage = staging.join(part_name);
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
        // a file system without RENAME_EXCHANGE: for a moment the partition is missing, never
        // doubled
        note_non_atomic(&e);
        let old = staging.join(format!("old-{part_name}"));
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

fn link(root: &Path, f: &DataFile, to: &Path) -> Result<(), PersistError> {
    super::fsio::link_or_copy(&root.join(STORE_DIR).join(&f.path), to)
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
    use crate::persist::partition_dir;

    fn file(dir: &Path, day: i32, name: &str) -> DataFile {
        file_in(dir, &partition_dir(day), day, name)
    }

    fn file_in(dir: &Path, part: &str, day: i32, name: &str) -> DataFile {
        let path = format!("{part}/{name}");
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
        let c = file(root, 40, "part-2-1.parquet");
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
        publish_partition(root, &partition_dir(10), &[&m]).unwrap();
        assert_eq!(listing(root), vec![m.path.clone(), c.path.clone()]);
        assert!(root.join(STORE_DIR).join(&a.path).exists());
        assert_eq!(
            fs::read_to_string(root.join(&m.path)).unwrap(),
            "compact-3-0.parquet"
        );
        // retention drops a month; a stray file in a partition is taken out
        fs::write(root.join(&c.path).with_file_name("stray.parquet"), "x").unwrap();
        publish_all(root, std::slice::from_ref(&m)).unwrap();
        assert_eq!(listing(root), vec![m.path.clone()]);
        publish_all(root, &[]).unwrap();
        assert!(listing(root).is_empty());
        // every replacement above was one atomic swap, not the fall-back
        assert_eq!(NON_ATOMIC_SWAPS.load(Relaxed), 0);
        assert!(
            fs::read_dir(root.join(STAGING_DIR))
                .unwrap()
                .next()
                .is_none(),
            "nothing left in staging/"
        );
    }

    #[test]
    fn files_moved_from_day_to_month_partitions_are_swapped_in_whole() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let old: Vec<DataFile> = (0..3)
            .map(|k| {
                let day = 10 + k;
                let part = format!("events/date={}", crate::time::format_day(day));
                file_in(root, &part, day, &format!("part-1-{k}.parquet"))
            })
            .collect();
        publish_all(root, &old).unwrap();
        assert_eq!(listing(root).len(), 3);
        // the same files, now in January's partition (linked there in store/ by the flusher)
        let moved: Vec<DataFile> = old.iter().map(|f| file(root, f.day, f.name())).collect();
        publish_all(root, &moved).unwrap();
        let want: Vec<String> = moved.iter().map(|f| f.path.clone()).collect();
        assert_eq!(listing(root), want);
        assert!(want.iter().all(|p| p.starts_with("events/month=1970-01/")));
        // publishing the same view again changes nothing
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
        let before = ino(&root.join("events"));
        publish_all(root, &moved).unwrap();
        assert_eq!(ino(&root.join("events")), before);
        assert_eq!(NON_ATOMIC_SWAPS.load(Relaxed), 0);
    }
}
