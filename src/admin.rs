//! Operator commands on a data directory: `passpulse inspect DATA_DIR` (read-only: checkpoints,
//! partitions, files with recorded and footer row counts, de-duplication segments, leftovers) and
//! `passpulse compact` (merges small files while no server holds the directory).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use passpulse_engine::persist::{self, Inspection, PersistConfig};

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The data directory (`serve --data-dir`).
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct CompactArgs {
    /// The data directory (`serve --data-dir`).
    #[arg(long, env = "PASSPULSE_DATA_DIR", default_value = "passpulse-data")]
    pub data_dir: PathBuf,
    /// Merge a day's small files once it has at least this many.
    #[arg(long, default_value_t = 2)]
    pub min_files: usize,
    /// Size of the merged files, MiB (files of half this size or more are left alone).
    #[arg(long, default_value_t = 128)]
    pub target_mb: u64,
    /// Also drop the events of UTC days that ended longer than this before the newest event
    /// (never later than now), e.g. 400d.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention: Option<Duration>,
}

pub fn inspect(a: InspectArgs) -> Result<()> {
    let i = persist::inspect(&a.data_dir)
        .with_context(|| format!("cannot inspect {}", a.data_dir.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
    } else {
        print!("{}", render(&i));
    }
    Ok(())
}

fn render(i: &Inspection) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "data directory {}{}",
        i.data_dir,
        if i.in_use {
            " (in use by a running server)"
        } else {
            ""
        }
    );
    let _ = writeln!(o, "\ncheckpoints (newest first):");
    if i.checkpoints.is_empty() {
        let _ = writeln!(o, "  none: a start replays the whole stream");
    }
    for c in &i.checkpoints {
        if c.usable {
            let _ = writeln!(
                o,
                "  {:>6}  seq {:>12}  events {:>12}  duplicates {:>9}  files {:>5}  rows {:>12}  aggregates {:>10} B  {}{}",
                c.generation,
                c.last_seq,
                c.events,
                c.duplicates,
                c.files,
                c.rows,
                c.aggregates_bytes,
                c.created_at.as_deref().unwrap_or(""),
                if i.current == Some(c.generation) {
                    "  ← resume point"
                } else {
                    ""
                }
            );
        } else {
            let _ = writeln!(
                o,
                "  {:>6}  UNUSABLE: {}",
                c.generation,
                c.problem.as_deref().unwrap_or("?")
            );
        }
    }
    let _ = writeln!(o, "\npartitions:");
    for p in &i.partitions {
        let _ = writeln!(
            o,
            "  {}  files {:>4}  rows {:>12}  bytes {:>12}",
            p.partition, p.files, p.rows, p.bytes
        );
    }
    let bad: Vec<_> = i
        .files
        .iter()
        .filter(|f| f.footer_rows != Some(f.rows))
        .collect();
    let t = &i.totals;
    let _ = writeln!(
        o,
        "\ntotal: {} files, {} rows, {} bytes ({:.2} bytes/event); {} id segments ({} ids, {} bytes)",
        t.files, t.rows, t.bytes, t.bytes_per_event, t.dedup_segments, t.dedup_ids, t.dedup_bytes
    );
    if bad.is_empty() {
        let _ = writeln!(o, "every file's footer row count matches its checkpoint");
    }
    for f in bad {
        let _ = writeln!(
            o,
            "DAMAGED {}: checkpoint says {} rows, footer says {:?}",
            f.path, f.rows, f.footer_rows
        );
    }
    if !i.unreferenced.is_empty() {
        let _ = writeln!(
            o,
            "{} file(s) no checkpoint names (removed at the next start):",
            i.unreferenced.len()
        );
        for f in &i.unreferenced {
            let _ = writeln!(o, "  {f}");
        }
    }
    o
}

pub fn compact(a: CompactArgs) -> Result<()> {
    let mut cfg = PersistConfig::new(&a.data_dir);
    cfg.compact_min_files = a.min_files.max(2);
    cfg.compact_target_bytes = a.target_mb.max(1) << 20;
    cfg.retention = a.retention;
    let r = persist::compact_dir(cfg)
        .with_context(|| format!("cannot compact {}", a.data_dir.display()))?;
    println!(
        "compacted {} time(s): {} files before, {} after",
        r.compactions, r.files_before, r.files_after
    );
    Ok(())
}
