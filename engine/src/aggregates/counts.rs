//! Event counts per type: all-time totals and per-minute counts over the last 7 days of event
//! time (relative to the watermark).

use ahash::AHashMap;
use serde::{Deserialize, Serialize};

use crate::event::EventType;
use crate::time;

/// Minutes of per-minute counts kept behind the watermark (7 days).
pub(crate) const RETAIN_MINUTES: i64 = 10_080;
const N: usize = EventType::COUNT;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TypeCounts {
    pub(crate) totals: [u64; N],
    minutes: AHashMap<i64, [u32; N]>,
    pruned_to: i64,
}

impl TypeCounts {
    pub fn apply(&mut self, kind: EventType, ts: i64) {
        let i = kind.index();
        self.totals[i] += 1;
        self.minutes.entry(time::minute(ts)).or_insert([0; N])[i] += 1;
    }

    pub fn prune(&mut self, watermark: i64) {
        let keep_from = time::minute(watermark) - RETAIN_MINUTES + 1;
        // prune at most once per hour of watermark progress: retain() walks every bucket
        if keep_from < self.pruned_to + 60 {
            return;
        }
        self.pruned_to = keep_from;
        self.minutes.retain(|m, _| *m >= keep_from);
    }

    pub fn total(&self) -> u64 {
        self.totals.iter().sum()
    }

    /// (minute start millis, type, count) for every non-zero bucket, ordered by minute then type.
    pub fn per_minute(&self, since_ms: i64) -> Vec<(i64, EventType, u64)> {
        let since = time::minute(since_ms);
        let mut keys: Vec<i64> = self
            .minutes
            .keys()
            .copied()
            .filter(|m| *m >= since)
            .collect();
        keys.sort_unstable();
        let mut out = Vec::new();
        for m in keys {
            for (i, c) in self.minutes[&m].iter().enumerate() {
                if *c > 0 {
                    out.push((m * time::MINUTE_MS, EventType::ALL[i], *c as u64));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_and_minutes() {
        let mut c = TypeCounts::default();
        c.apply(EventType::Scan, 0);
        c.apply(EventType::Scan, 59_999);
        c.apply(EventType::Redemption, 60_000);
        assert_eq!(c.total(), 3);
        assert_eq!(
            c.per_minute(0),
            vec![(0, EventType::Scan, 2), (60_000, EventType::Redemption, 1)]
        );
        c.prune(30 * time::DAY_MS);
        assert!(c.per_minute(0).is_empty());
        assert_eq!(c.totals[EventType::Scan.index()], 2);
    }
}
