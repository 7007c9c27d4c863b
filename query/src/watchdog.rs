//! The process memory ceiling of the query side: a thread reads the process's resident memory
//! (`/proc/self/status`, `VmRSS`) every few milliseconds and, while it is over the configured
//! ceiling, trips every running query, which the HTTP layer then stops with a 422.
//!
//! Why: DataFusion's memory pool bounds what operators reserve, and the bounded functions bound
//! what one call builds, but some memory is tracked by neither (an operator's output batch, a
//! string concatenated with itself through a chain of CTEs, buffers of the encoders). Queries
//! are the only work that can be stopped without losing data, so they are what gives way; ingest
//! never does. Off where `/proc` does not exist.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;

/// How often the resident size is read.
const PERIOD: Duration = Duration::from_millis(5);

/// Trips running queries while the process is over its ceiling.
#[derive(Debug)]
pub(crate) struct MemoryWatch {
    /// Bumped once per reading over the ceiling; a query watches it from its start.
    trips: Arc<watch::Sender<u64>>,
    ceiling: usize,
}

impl MemoryWatch {
    /// Starts watching (a ceiling of 0 watches nothing).
    pub(crate) fn start(ceiling: usize) -> MemoryWatch {
        let trips = Arc::new(watch::Sender::new(0u64));
        if ceiling > 0 && resident_bytes().is_some() {
            let weak = Arc::downgrade(&trips);
            let spawned = std::thread::Builder::new()
                .name("passpulse-memwatch".into())
                .spawn(move || watch_loop(weak, ceiling));
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "no query memory watch: cannot start its thread");
            }
        }
        MemoryWatch { trips, ceiling }
    }

    pub(crate) fn ceiling(&self) -> usize {
        self.ceiling
    }

    /// A receiver that changes when the process passes its ceiling from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.trips.subscribe()
    }
}

fn watch_loop(trips: Weak<watch::Sender<u64>>, ceiling: usize) {
    let mut warned = false;
    loop {
        std::thread::sleep(PERIOD);
        let Some(trips) = trips.upgrade() else {
            return; // the query service is gone
        };
        let Some(rss) = resident_bytes() else {
            return;
        };
        if rss > ceiling && trips.receiver_count() > 0 {
            trips.send_modify(|n| *n += 1);
            if !warned {
                tracing::warn!(
                    resident_mb = rss >> 20,
                    ceiling_mb = ceiling >> 20,
                    "process memory over query.max_process_mb: stopping running queries"
                );
                warned = true;
            }
        } else if rss <= ceiling {
            warned = false;
        }
    }
}

/// The ceiling used when none is configured: three quarters of the memory this process may use
/// (the container's `memory.max` if set, else the machine's `MemTotal`); 0 (off) if unknown.
pub fn default_process_ceiling() -> usize {
    let machine = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| kib_field(&m, "MemTotal:"));
    let container = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|m| m.trim().parse::<usize>().ok());
    let limit = match (machine, container) {
        (Some(m), Some(c)) => m.min(c),
        (m, c) => m.or(c).unwrap_or(0),
    };
    limit / 4 * 3
}

/// The process's resident set size, bytes (`VmRSS` in `/proc/self/status`).
pub(crate) fn resident_bytes() -> Option<usize> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmRSS:",
    )
}

/// The value of a `Key:   N kB` line of a `/proc` file, in bytes.
fn kib_field(text: &str, key: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: usize = line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb << 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_over_its_ceiling_trips_the_queries_watching() {
        let Some(rss) = resident_bytes() else {
            return; // no /proc here
        };
        assert!(rss > 0);
        let w = MemoryWatch::start(1 << 20); // 1 MiB: always over
        let mut rx = w.subscribe();
        let tripped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.changed()).await })
        })
        .join()
        .unwrap();
        assert!(matches!(tripped, Ok(Ok(()))));
        let calm = MemoryWatch::start(usize::MAX >> 1);
        let rx = calm.subscribe();
        std::thread::sleep(PERIOD * 10);
        assert!(!rx.has_changed().unwrap());
    }
}
