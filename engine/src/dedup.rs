//! Event-id de-duplication over a window of *arrival* time, so a producer's retry is counted once.
//!
//! An id is remembered from the moment its event is applied until the broker clock (the newest
//! arrival seen) has moved `window` past it. Arrival time, not event time, is what counts: a
//! producer that retries hours later, or a backfill of months-old events, is judged by when the
//! copies reached the broker. Arrival is the broker's own timestamp of the message, so a replay
//! after a crash takes exactly the same decisions.
//!
//! Ids are kept as 64-bit XXH3 hashes (fixed algorithm and seed, so they persist across builds).
//! Two different ids collide with probability about n²/2⁶⁵ for n ids in the window — for ten
//! million ids, three in a million — and a collision would drop the second event. Memory is
//! about 20–26 bytes per id in the window (hash-set slot and the per-minute expiry list).
//!
//! In the server, de-duplication is its own pipeline stage between decoding and the writer
//! ([`Dedup::filter`]), so its hash-set lookups run beside the writer rather than on it; the
//! writer persists the new ids the stage recorded on each batch it applies.
//!
//! For persistence the ids first seen since the last checkpoint are handed out as a *segment*;
//! a restart rebuilds the set from the segments still inside the window.

use std::collections::VecDeque;

use crate::aggregates::PreHashed as Identity;
use crate::event::DecodedBatch;
use crate::time::MINUTE_MS;

/// Hash of an id as de-duplication keeps it.
pub fn id_hash(id: &str) -> u64 {
    xxhash_rust::xxh3::xxh3_64(id.as_bytes())
}

/// Arrival minute of an id (minutes since the Unix epoch).
pub type Minute = u32;

fn minute_of(arrival_ms: i64) -> Minute {
    (arrival_ms.max(0) / MINUTE_MS).min(u32::MAX as i64) as Minute
}

/// The set of ids seen within the window.
#[derive(Debug)]
pub struct Dedup {
    window_minutes: u32,
    /// Hashes of the ids in the window; each is in exactly one bucket.
    seen: hashbrown::HashSet<u64, Identity>,
    /// Hashes by arrival minute, oldest first.
    buckets: VecDeque<(Minute, Vec<u64>)>,
    /// Newest arrival minute seen.
    clock: Minute,
    duplicates: u64,
}

impl Dedup {
    /// A set that forgets an id `window_ms` of arrival time after it was first seen (at least one
    /// minute).
    pub fn new(window_ms: i64) -> Self {
        Dedup {
            window_minutes: (window_ms / MINUTE_MS).clamp(1, u32::MAX as i64) as u32,
            seen: hashbrown::HashSet::with_hasher(Identity),
            buckets: VecDeque::new(),
            clock: 0,
            duplicates: 0,
        }
    }

    /// Records `id` arriving at `arrival_ms`; returns false if it was already seen in the window.
    pub fn first_seen(&mut self, id: &str, arrival_ms: i64) -> bool {
        self.insert_id(id, arrival_ms).is_some()
    }

    /// Removes the events of `batch` whose id was already seen (in the window, or earlier in the
    /// batch), and records the new ids on the batch for the writer's next checkpoint.
    pub fn filter(&mut self, batch: &mut DecodedBatch) {
        let mut new_ids = Vec::with_capacity(batch.len());
        let keep: Vec<bool> = batch
            .iter()
            .map(|e| match self.insert(id_hash(e.id), minute_of(e.arrival)) {
                Some(entry) => {
                    new_ids.push(entry);
                    true
                }
                None => false,
            })
            .collect();
        batch.mark_deduplicated(&keep, new_ids);
    }

    /// Records `id`; returns its (bucket minute, hash) for persistence if it was new, `None` for a
    /// duplicate.
    pub fn insert_id(&mut self, id: &str, arrival_ms: i64) -> Option<(Minute, u64)> {
        self.insert(id_hash(id), minute_of(arrival_ms))
    }

    /// Inserts a hash; returns its (bucket minute, hash) if it was new.
    fn insert(&mut self, h: u64, minute: Minute) -> Option<(Minute, u64)> {
        if minute > self.clock {
            self.clock = minute;
            self.expire();
        }
        if !self.seen.insert(h) {
            self.duplicates += 1;
            return None;
        }
        // A late arrival joins the newest bucket: it is kept a little longer, never shorter.
        match self.buckets.back_mut() {
            Some((m, hs)) if *m >= minute => {
                hs.push(h);
                Some((*m, h))
            }
            _ => {
                self.buckets.push_back((minute, vec![h]));
                Some((minute, h))
            }
        }
    }

    fn expire(&mut self) {
        let oldest_kept = self.clock.saturating_sub(self.window_minutes);
        while self.buckets.front().is_some_and(|(m, _)| *m < oldest_kept) {
            let (_, hashes) = self.buckets.pop_front().expect("front exists");
            for h in hashes {
                self.seen.remove(&h);
            }
        }
    }

    /// Rebuilds the set from persisted segments (in any order), as after a restart: replaying
    /// them in arrival order takes the same expiry decisions as living through them.
    pub fn restore(&mut self, mut entries: Vec<(Minute, u64)>) {
        // stable: segments are already in arrival order, so this is a linear pass
        entries.sort_by_key(|e| e.0);
        self.seen.reserve(entries.len());
        let duplicates = self.duplicates;
        for (m, h) in entries {
            self.insert(h, m);
        }
        self.duplicates = duplicates;
    }

    /// Oldest arrival minute still inside the window of an engine whose newest applied arrival
    /// is `newest_ms`: a segment whose newest minute is older can be dropped.
    pub fn oldest_kept_minute(window_ms: i64, newest_ms: i64) -> Minute {
        let window = (window_ms / MINUTE_MS).clamp(1, u32::MAX as i64) as u32;
        minute_of(newest_ms).saturating_sub(window)
    }

    /// Ids currently remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Duplicates refused since start (or restore).
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = MINUTE_MS;

    #[test]
    fn repeats_within_the_window_are_refused() {
        let mut d = Dedup::new(60 * MIN);
        assert!(d.first_seen("a", 0));
        assert!(!d.first_seen("a", 30 * MIN), "retry half an hour later");
        assert!(d.first_seen("b", 30 * MIN));
        assert_eq!(d.duplicates(), 1);
        // an id is forgotten once the broker clock has moved a full window past it
        assert!(d.first_seen("c", 61 * MIN));
        assert!(d.first_seen("a", 61 * MIN), "outside the window again");
        assert!(!d.first_seen("b", 61 * MIN), "b is still inside");
    }

    #[test]
    fn a_backfill_of_old_event_times_does_not_defeat_it() {
        // arrival is what counts; event time never reaches this type
        let mut d = Dedup::new(24 * 60 * MIN);
        assert!(d.first_seen("old-event", 1_000 * MIN));
        assert!(!d.first_seen("old-event", 1_500 * MIN));
    }

    #[test]
    fn restore_from_segments_gives_the_same_decisions() {
        let mut d = Dedup::new(60 * MIN);
        let seg: Vec<_> = (0..100)
            .map(|i| d.insert_id(&format!("e{i}"), i * MIN).expect("new"))
            .collect();
        assert_eq!(seg.len(), 100);
        let mut r = Dedup::new(60 * MIN);
        r.restore(seg);
        assert_eq!(r.len(), d.len());
        assert!(!r.first_seen("e99", 100 * MIN));
        assert!(r.first_seen("e10", 100 * MIN), "expired in both");
        assert!(d.first_seen("e10", 100 * MIN));
    }

    #[test]
    fn filter_removes_repeats_within_and_across_batches_and_records_new_ids() {
        use crate::event::decode_message;
        let batch = |ids: &[&str]| {
            let mut b = DecodedBatch::new();
            b.set_arrival(5 * MIN);
            for id in ids {
                let line = format!(r#"{{"id":"{id}","type":"pass.updated","ts":1,"pass":"p"}}"#);
                decode_message(line.as_bytes(), 1, &mut b, |e, _| panic!("{e}"));
            }
            b
        };
        let mut d = Dedup::new(60 * MIN);
        let mut b = batch(&["a", "b", "a"]);
        d.filter(&mut b);
        assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(b.duplicates(), 1);
        assert_eq!(
            b.new_ids().unwrap(),
            &[(5, id_hash("a")), (5, id_hash("b"))]
        );
        let mut b = batch(&["b", "c"]);
        d.filter(&mut b);
        assert_eq!(b.iter().map(|e| e.id).collect::<Vec<_>>(), ["c"]);
        assert_eq!(b.new_ids().unwrap().len(), 1);
    }
}
