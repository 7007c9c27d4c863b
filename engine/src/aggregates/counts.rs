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
    pub(crate) totals: PerType<u64>,
    minutes: AHashMap<i64, PerType<u32>>,
    pruned_to: i64,
}

/// One counter per event type, serialised as a length-prefixed sequence: a snapshot written
/// before a type was added (a shorter sequence) loads with the new types at zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerType<T>(pub [T; N]);

impl<T: Default + Copy> Default for PerType<T> {
    fn default() -> Self {
        PerType([T::default(); N])
    }
}

impl<T: Serialize> Serialize for PerType<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.as_slice().serialize(s)
    }
}

impl<'de, T: Deserialize<'de> + Default + Copy> Deserialize<'de> for PerType<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v: Vec<T> = Vec::deserialize(d)?;
        if v.len() > N {
            return Err(serde::de::Error::custom(format!(
                "{} per-type counters, this version knows {N} types",
                v.len()
            )));
        }
        let mut out = Self::default();
        out.0[..v.len()].copy_from_slice(&v);
        Ok(out)
    }
}

impl TypeCounts {
    pub fn apply(&mut self, kind: EventType, ts: i64) {
        let i = kind.index();
        self.totals.0[i] += 1;
        self.minutes.entry(time::minute(ts)).or_default().0[i] += 1;
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
        self.totals.0.iter().sum()
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
            for (i, c) in self.minutes[&m].0.iter().enumerate() {
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
        assert_eq!(c.totals.0[EventType::Scan.index()], 2);
    }

    #[test]
    fn counters_written_with_fewer_types_load_with_the_new_ones_at_zero() {
        let old: Vec<u64> = (1..=17).collect();
        let bytes = postcard::to_allocvec(&old).unwrap();
        let p: PerType<u64> = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&p.0[..17], old.as_slice());
        assert!(p.0[17..].iter().all(|c| *c == 0));
        let round: PerType<u64> =
            postcard::from_bytes(&postcard::to_allocvec(&p).unwrap()).unwrap();
        assert_eq!(round, p);
        let too_many: Vec<u64> = vec![1; N + 1];
        assert!(
            postcard::from_bytes::<PerType<u64>>(&postcard::to_allocvec(&too_many).unwrap())
                .is_err()
        );
    }
}
