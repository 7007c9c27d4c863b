//! Query counters for `/metrics`: queries by outcome, running queries, and a latency histogram.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Histogram bucket upper bounds, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0];

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Refused,
    Error,
    Timeout,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Ok,
        Outcome::Refused,
        Outcome::Error,
        Outcome::Timeout,
    ];
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Error => "error",
            Outcome::Timeout => "timeout",
        }
    }
}

#[derive(Debug, Default)]
pub struct QueryMetrics {
    outcomes: [AtomicU64; 4],
    running: AtomicI64,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
    rows: AtomicU64,
}

/// Counts a query as running until dropped.
pub struct Running<'a>(&'a QueryMetrics);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Relaxed);
    }
}

impl QueryMetrics {
    pub fn start(&self) -> Running<'_> {
        self.running.fetch_add(1, Relaxed);
        Running(self)
    }

    pub fn running(&self) -> i64 {
        self.running.load(Relaxed)
    }

    pub fn finish(&self, outcome: Outcome, elapsed: Duration, rows: u64) {
        self.outcomes[outcome as usize].fetch_add(1, Relaxed);
        let s = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.rows.fetch_add(rows, Relaxed);
    }

    pub fn count(&self, outcome: Outcome) -> u64 {
        self.outcomes[outcome as usize].load(Relaxed)
    }

    /// Prometheus text exposition.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP passpulse_queries_total SQL queries by outcome."
        );
        let _ = writeln!(out, "# TYPE passpulse_queries_total counter");
        for o in Outcome::ALL {
            let _ = writeln!(
                out,
                "passpulse_queries_total{{outcome=\"{}\"}} {}",
                o.as_str(),
                self.count(o)
            );
        }
        let _ = writeln!(
            out,
            "# HELP passpulse_queries_running SQL queries executing now."
        );
        let _ = writeln!(out, "# TYPE passpulse_queries_running gauge");
        let _ = writeln!(out, "passpulse_queries_running {}", self.running());
        let _ = writeln!(
            out,
            "# HELP passpulse_query_rows_total Rows returned by SQL queries."
        );
        let _ = writeln!(out, "# TYPE passpulse_query_rows_total counter");
        let _ = writeln!(
            out,
            "passpulse_query_rows_total {}",
            self.rows.load(Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP passpulse_query_duration_seconds Wall time of SQL queries, planning to last byte."
        );
        let _ = writeln!(out, "# TYPE passpulse_query_duration_seconds histogram");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "passpulse_query_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(
            out,
            "passpulse_query_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "passpulse_query_duration_seconds_sum {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "passpulse_query_duration_seconds_count {count}");
    }
}
