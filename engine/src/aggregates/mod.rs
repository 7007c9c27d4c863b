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
                "the aggregates snapshot has format {format}, this build reads {SNAPSHOT_FORMAT} \
                 (nothing to do: the engine rebuilds the aggregates from the stored events, once)"
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

    /// Every event of the repository's two samples, applied in order.
    fn samples() -> Aggregates {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut a = Aggregates::default();
        let mut seq = 0;
        for file in ["data/sample/events.ndjson", "data/insights/sample.ndjson"] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let mut b = DecodedBatch::new();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                seq += 1;
                decode_line(line.as_bytes(), 1, seq, &mut b).unwrap();
            }
            b.iter().for_each(|e| a.apply(&e));
        }
        a
    }

    /// The snapshot layout of this [`SNAPSHOT_FORMAT`] is pinned by a fixture written from the
    /// samples: decoded, it must give every live table and figure that applying the samples
    /// gives. A change to the state's layout without a format bump fails here. After a bump
    /// (a snapshot of another format is then rebuilt from the stored events at start), write
    /// the new fixture with `PASSPULSE_UPDATE_GOLDEN=1 cargo test --workspace --lib
    /// snapshot_layout` and commit it.
    #[test]
    fn the_snapshot_layout_is_pinned_by_a_fixture() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let path = root.join(format!("data/fixtures/aggregates-v{SNAPSHOT_FORMAT}.bin"));
        let mut fresh = samples();
        assert!(fresh.events() > 2_000, "the samples were read");
        if std::env::var_os("PASSPULSE_UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, fresh.snapshot()).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: no fixture for snapshot format {SNAPSHOT_FORMAT}; write it with \
                 PASSPULSE_UPDATE_GOLDEN=1 cargo test --workspace --lib snapshot_layout",
                path.display()
            )
        });
        let mut pinned = Aggregates::from_snapshot(&bytes).unwrap_or_else(|e| {
            panic!(
                "the format-{SNAPSHOT_FORMAT} fixture no longer decodes ({e}): the snapshot \
                 layout changed without a format bump. Bump SNAPSHOT_FORMAT, then write the new \
                 fixture with PASSPULSE_UPDATE_GOLDEN=1 cargo test --workspace --lib snapshot_layout"
            )
        });
        assert_eq!(
            (pinned.events(), pinned.watermark()),
            (fresh.events(), fresh.watermark())
        );
        for t in TableName::ALL {
            let (got, want) = (pinned.table(t), fresh.table(t));
            assert!(want.num_rows() > 0, "{} is empty", t.as_str());
            assert_eq!(
                got,
                want,
                "{} differs after decoding the format-{SNAPSHOT_FORMAT} fixture: the snapshot \
                 layout changed without a format bump",
                t.as_str()
            );
        }
    }
}
