//! Rolling aggregates, updated once per applied event and never recomputed by scanning events.
//! Windows are relative to the watermark (the newest event time seen), so replaying history gives
//! the same answers as living through it.

mod counts;
mod distinct;
mod location_peaks;
mod passes;
mod rebuild;
mod tables;

pub(crate) use distinct::PreHashed;
pub use distinct::{DistinctRow, PRECISION, RELATIVE_ERROR};
pub use location_peaks::{Peak, WINDOWS};
pub use passes::{FunnelCount, SliceCount, UNKNOWN};
pub(crate) use rebuild::rebuild;
pub use tables::TableName;

use serde::{Deserialize, Serialize};

use crate::event::{EventRef, EventType};

/// Version of the [`Aggregates::snapshot`] layout; a snapshot of another version is refused.
pub const SNAPSHOT_FORMAT: u32 = 4;

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
            self.counts.prune(e.ts);
        }
    }

    /// The whole state as bytes, for a checkpoint: [`SNAPSHOT_FORMAT`] (4 bytes, little-endian),
    /// then the state (postcard).
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.passes.snapshot_size_hint() + (1 << 20));
        out.extend_from_slice(&SNAPSHOT_FORMAT.to_le_bytes());
        postcard::to_extend(self, out).expect("aggregates serialise")
    }

    /// State from [`Aggregates::snapshot`] bytes.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, String> {
        let (format, state) = bytes
            .split_first_chunk::<4>()
            .ok_or("the aggregates snapshot is empty")?;
        let format = u32::from_le_bytes(*format);
        if format != SNAPSHOT_FORMAT {
            return Err(format!(
                "the aggregates snapshot has format {format}, this build reads {SNAPSHOT_FORMAT}"
            ));
        }
        postcard::from_bytes(state).map_err(|e| e.to_string())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DecodedBatch, decode_line};

    #[test]
    fn a_snapshot_round_trips_and_another_format_is_refused() {
        let mut a = Aggregates::default();
        let mut b = DecodedBatch::new();
        let lines = [
            r#"{"id":"1","type":"pass.issued","ts":1000,"pass":"A","program":"gold"}"#,
            r#"{"id":"2","type":"pass.installed","ts":2000,"pass":"A","device":"d","platform":"apple"}"#,
            r#"{"id":"3","type":"scan","ts":3000,"pass":"A","location":"l","device":"s","operator":"o"}"#,
        ];
        for (i, l) in lines.iter().enumerate() {
            decode_line(l.as_bytes(), 1, i as u64 + 1, &mut b).unwrap();
        }
        b.iter().for_each(|e| a.apply(&e));
        let bytes = a.snapshot();
        let r = Aggregates::from_snapshot(&bytes).unwrap();
        assert_eq!((r.events(), r.watermark()), (3, Some(3000)));
        assert_eq!(r.passes.all.active_passes, 1);
        let mut old = bytes.clone();
        old[..4].copy_from_slice(&1u32.to_le_bytes());
        let err = Aggregates::from_snapshot(&old).unwrap_err();
        assert!(err.contains("format 1"), "{err}");
        assert!(Aggregates::from_snapshot(&[]).is_err());
    }
}
