//! Rolling aggregates, updated once per applied event and never recomputed by scanning events.
//! Windows are relative to the watermark (the newest event time seen), so replaying history gives
//! the same answers as living through it.

mod counts;
mod distinct;
mod location_peaks;
mod passes;
mod tables;

pub(crate) use distinct::PreHashed;
pub use distinct::{DistinctRow, PRECISION, RELATIVE_ERROR};
pub use location_peaks::{Peak, WINDOWS};
pub use passes::{FunnelCount, SliceCount, UNKNOWN};
pub use tables::TableName;

use serde::{Deserialize, Serialize};

use crate::event::{EventRef, EventType};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Aggregates {
    /// Newest event time seen (epoch millis); `None` before the first event.
    pub(crate) watermark: Option<i64>,
    pub(crate) counts: counts::TypeCounts,
    pub(crate) passes: passes::Passes,
    pub(crate) peaks: location_peaks::LocationPeaks,
    pub(crate) distinct: distinct::Distinct,
}

impl Aggregates {
    pub fn apply(&mut self, e: &EventRef<'_>) {
        let advanced = self.watermark.is_none_or(|w| e.ts > w);
        if advanced {
            self.watermark = Some(e.ts);
        }
        self.counts.apply(e.kind, e.ts);
        self.distinct.apply(e.ts, e.pass, e.device, e.customer);
        self.passes.apply(e);
        if e.kind == EventType::Scan
            && let Some(loc) = e.location
        {
            self.peaks.apply(loc, e.ts);
        }
        if advanced {
            self.peaks.prune(e.ts);
            self.counts.prune(e.ts);
        }
    }

    /// The whole state as bytes (postcard), for a checkpoint.
    pub fn snapshot(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("aggregates serialise")
    }

    /// State from [`Aggregates::snapshot`] bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, String> {
        let mut a: Aggregates = postcard::from_bytes(bytes).map_err(|e| e.to_string())?;
        a.passes.reintern();
        Ok(a)
    }

    pub fn watermark(&self) -> Option<i64> {
        self.watermark
    }

    pub fn events(&self) -> u64 {
        self.counts.total()
    }

    pub fn count_of(&self, t: EventType) -> u64 {
        self.counts.totals.0[t.index()]
    }
}
