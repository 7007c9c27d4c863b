//! Distinct passes, devices and customers, overall and per UTC day of event time, as
//! HyperLogLog++ sketches (hyperloglogplus, precision [`PRECISION`] everywhere).
//!
//! Each value is hashed once with XXH3-64 (a fixed, documented algorithm, so persisted sketches
//! stay mergeable across builds); the sketch's own hasher is the identity on that hash.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hasher};

use hyperloglogplus::{HyperLogLog, HyperLogLogPlus};
use serde::{Deserialize, Serialize};

use crate::time;

/// HyperLogLog++ precision: 2^14 registers, relative standard error 1.04/√16384 ≈ 0.81 %.
pub const PRECISION: u8 = 14;
/// Relative standard error of every estimate.
pub const RELATIVE_ERROR: f64 = 0.008_125;

/// Identity hasher over values that are already XXH3 hashes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct PreHashed;

#[derive(Debug, Default)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64s are inserted; fold anything else so the hasher stays total.
        self.0 = xxhash_rust::xxh3::xxh3_64_with_seed(bytes, self.0);
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

impl BuildHasher for PreHashed {
    type Hasher = IdentityHasher;
    fn build_hasher(&self) -> IdentityHasher {
        IdentityHasher::default()
    }
}

pub type Sketch = HyperLogLogPlus<u64, PreHashed>;

fn sketch() -> Sketch {
    HyperLogLogPlus::new(PRECISION, PreHashed).expect("precision 14 is within 4..=18")
}

#[derive(Debug)]
struct Trio {
    passes: Sketch,
    devices: Sketch,
    customers: Sketch,
}

impl Default for Trio {
    fn default() -> Self {
        Trio {
            passes: sketch(),
            devices: sketch(),
            customers: sketch(),
        }
    }
}

impl Trio {
    fn insert(&mut self, h: &[Option<u64>; 3]) {
        if let Some(h) = h[0] {
            self.passes.insert(&h);
        }
        if let Some(h) = h[1] {
            self.devices.insert(&h);
        }
        if let Some(h) = h[2] {
            self.customers.insert(&h);
        }
    }

    fn counts(&mut self) -> DistinctRow {
        DistinctRow {
            day: None,
            passes: self.passes.count().round() as u64,
            devices: self.devices.count().round() as u64,
            customers: self.customers.count().round() as u64,
        }
    }
}

/// Estimated distinct counts; `day` is `None` for all time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DistinctRow {
    pub day: Option<i32>,
    pub passes: u64,
    pub devices: u64,
    pub customers: u64,
}

#[derive(Debug, Default)]
pub struct Distinct {
    all: Trio,
    days: BTreeMap<i32, Trio>,
    last_day: Option<(i32, Trio)>,
}

fn hash(v: Option<&str>) -> Option<u64> {
    v.map(|s| xxhash_rust::xxh3::xxh3_64(s.as_bytes()))
}

impl Distinct {
    pub fn apply(
        &mut self,
        ts: i64,
        pass: Option<&str>,
        device: Option<&str>,
        customer: Option<&str>,
    ) {
        let h = [hash(pass), hash(device), hash(customer)];
        if h.iter().all(Option::is_none) {
            return;
        }
        self.all.insert(&h);
        let day = time::day(ts);
        // Most events of a stream fall on the same day: keep that day's sketches at hand.
        if self.last_day.as_ref().map(|(d, _)| *d) != Some(day) {
            if let Some((d, trio)) = self.last_day.take() {
                self.days.insert(d, trio);
            }
            let trio = self.days.remove(&day).unwrap_or_default();
            self.last_day = Some((day, trio));
        }
        if let Some((_, trio)) = self.last_day.as_mut() {
            trio.insert(&h);
        }
    }

    /// All-time row first, then one row per day in order.
    pub fn rows(&mut self) -> Vec<DistinctRow> {
        let mut out = vec![self.all.counts()];
        let mut days: Vec<(i32, &mut Trio)> = self.days.iter_mut().map(|(d, t)| (*d, t)).collect();
        if let Some((d, t)) = self.last_day.as_mut() {
            days.push((*d, t));
        }
        days.sort_by_key(|(d, _)| *d);
        for (d, t) in days {
            out.push(DistinctRow {
                day: Some(d),
                ..t.counts()
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_within_error_bound_and_by_day() {
        let mut d = Distinct::default();
        for i in 0..50_000u32 {
            let pass = format!("pass-{i}");
            let dev = format!("dev-{}", i % 1000);
            d.apply((i % 2) as i64 * time::DAY_MS, Some(&pass), Some(&dev), None);
        }
        let rows = d.rows();
        assert_eq!(rows.len(), 3);
        let all = rows[0];
        assert_eq!(all.day, None);
        let err = (all.passes as f64 - 50_000.0).abs() / 50_000.0;
        assert!(
            err < 4.0 * RELATIVE_ERROR,
            "passes {} off by {err}",
            all.passes
        );
        assert_eq!(
            all.devices, 1000,
            "small cardinalities are exact in sparse mode"
        );
        assert_eq!(all.customers, 0);
        assert_eq!(rows[1].day, Some(0));
        assert_eq!(rows[1].devices, 500);
        assert_eq!(rows[2].day, Some(1));
    }
}
