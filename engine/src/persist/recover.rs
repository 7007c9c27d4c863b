//! Start-up recovery: find the newest valid checkpoint, and clean away what a crash left behind.
//!
//! 1. Stray temporary files (a write cut short) are reported and deleted.
//! 2. Checkpoints are tried newest first. One that is torn, fails its checksum, names a missing or
//!    resized file, or has a damaged id segment is reported, renamed `*.damaged` (kept for a
//!    post-mortem, never read again) and skipped: the previous one is used instead.
//! 3. Data files and segments that no readable checkpoint names (written by a flush that crashed
//!    before its commit) are deleted; the stream still holds their events, which are replayed.
//! 4. The published `events/` view is made to show exactly the chosen checkpoint's files (a crash
//!    between a commit and its publication, or a directory written by an older build that kept
//!    only `events/`, whose files are first linked into `store/`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use tracing::{info, warn};

use super::checkpoint::{CHECKPOINT_DIR, DEDUP_DIR, read_checkpoint_header, read_segment};
use super::fsio::{TMP_SUFFIX, ensure_dir, remove, walk};
use super::publish::{STAGING_DIR, STORE_DIR, publish_all, remove_tree};
use super::{Checkpoint, PersistConfig, PersistError, PersistMetrics, read_checkpoint};
use crate::dedup::Minute;

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The checkpoint to resume from, with its aggregates snapshot (postcard bytes).
    pub checkpoint: Option<(Checkpoint, Vec<u8>)>,
    /// Older readable checkpoints, newest first (their files are kept as fall-backs).
    pub older: Vec<Checkpoint>,
    /// Ids of the de-duplication window, from the checkpoint's segments.
    pub dedup: Vec<(Minute, u64)>,
    /// The generation the next checkpoint gets.
    pub next_generation: u64,
    /// Problems found and dealt with, one line each (also logged).
    pub warnings: Vec<String>,
}

/// Recovers the persisted state under `cfg.dir`, repairing what a crash left behind.
pub fn recover(cfg: &PersistConfig, metrics: &PersistMetrics) -> Result<Recovered, PersistError> {
    let root = cfg.dir.as_path();
    for d in ["events", STORE_DIR, DEDUP_DIR, CHECKPOINT_DIR] {
        ensure_dir(&root.join(d))?;
    }
    // a partition being assembled when the process stopped: never published, nothing needs it
    remove_tree(&root.join(STAGING_DIR))?;
    let mut out = Recovered::default();
    let warn_line = |out: &mut Recovered, msg: String| {
        warn!("{msg}");
        out.warnings.push(msg);
    };

    for d in ["events", STORE_DIR, DEDUP_DIR, CHECKPOINT_DIR] {
        for p in walk(&root.join(d)) {
            if p.to_string_lossy().ends_with(TMP_SUFFIX) {
                remove(&p)?;
                metrics.stray_files.fetch_add(1, Relaxed);
                warn_line(
                    &mut out,
                    format!(
                        "removed stray temporary file {} (a write cut short)",
                        p.display()
                    ),
                );
            }
        }
    }

    // an older build kept data files only under events/: the engine's copy is a link of them
    for p in walk(&root.join("events")) {
        let stored = root.join(STORE_DIR).join(rel_path(root, &p));
        if !stored.exists() {
            if let Some(parent) = stored.parent() {
                ensure_dir(parent)?;
            }
            std::fs::hard_link(&p, &stored).map_err(|e| PersistError::io(&stored, e))?;
        }
    }

    let mut gens: Vec<(u64, std::path::PathBuf)> = walk(&root.join(CHECKPOINT_DIR))
        .into_iter()
        .filter_map(|p| {
            let g = Checkpoint::generation_of(&p.file_name()?.to_string_lossy())?;
            Some((g, p))
        })
        .collect();
    gens.sort_by_key(|g| std::cmp::Reverse(g.0));
    out.next_generation = gens.first().map_or(1, |g| g.0 + 1);

    let mut referenced: HashSet<String> = HashSet::new();
    for (g, path) in &gens {
        let loaded = if out.checkpoint.is_none() {
            read_checkpoint(path).and_then(|(c, aggs)| {
                c.verify_files(root)?;
                let mut ids = Vec::new();
                for s in &c.segments {
                    ids.extend(read_segment(&root.join(&s.path))?);
                }
                Ok((c, Some((aggs, ids))))
            })
        } else {
            // an older one only keeps its files alive
            read_checkpoint_header(path).map(|c| (c, None))
        };
        match loaded {
            Ok((c, chosen)) => {
                referenced.extend(c.files.iter().map(|f| f.path.clone()));
                referenced.extend(c.segments.iter().map(|s| s.path.clone()));
                match chosen {
                    Some((aggs, ids)) => {
                        info!(
                            generation = g,
                            last_seq = c.last_seq,
                            files = c.files.len(),
                            "resuming from checkpoint"
                        );
                        out.dedup = ids;
                        out.checkpoint = Some((c, aggs));
                    }
                    None => out.older.push(c),
                }
            }
            Err(e) if out.checkpoint.is_none() => {
                metrics.corrupt_checkpoints.fetch_add(1, Relaxed);
                let aside = path.with_extension("ckpt.damaged");
                let _ = std::fs::rename(path, &aside);
                warn_line(
                    &mut out,
                    format!(
                        "checkpoint {g} is unusable and was skipped (kept as {}): {e}",
                        aside.display()
                    ),
                );
            }
            Err(e) => warn_line(&mut out, format!("older checkpoint {g} is unreadable: {e}")),
        }
    }

    let mut orphans = 0;
    for (d, base) in [
        (STORE_DIR, root.join(STORE_DIR)),
        (DEDUP_DIR, root.to_path_buf()),
    ] {
        for p in walk(&root.join(d)) {
            let rel = rel_path(&base, &p);
            if !referenced.contains(&rel) {
                remove(&p)?;
                orphans += 1;
            }
        }
    }
    if orphans > 0 {
        warn_line(
            &mut out,
            format!(
                "removed {orphans} file(s) written after the last checkpoint; their events are replayed from the stream"
            ),
        );
    }
    let current: &[super::DataFile] = match &out.checkpoint {
        Some((c, _)) => &c.files,
        None => &[],
    };
    publish_all(root, current)?;
    remove_empty_partitions(root);
    Ok(out)
}

/// `p` relative to `root`, `/`-separated (the form checkpoints record).
pub(crate) fn rel_path(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// Removes partition directories left empty by compaction, retention or orphan removal.
pub(crate) fn remove_empty_partitions(root: &Path) {
    for d in [root.join("events"), root.join(STORE_DIR).join("events")] {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                // fails harmlessly when the directory is not empty
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}
