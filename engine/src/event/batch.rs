//! [`DecodedBatch`]: validated events in a compact, owned, columnar-friendly form.
//!
//! The decoder copies each string field once into one arena and keeps spans into it, so a batch
//! of thousands of events costs two allocations, can cross threads (decode on one core, apply on
//! another) and is read back as borrowed [`EventRef`]s without further copying.

use super::kind::{EventType, Platform};

/// A string field: `(start, len)` into the arena; `start == NONE` means absent.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    const NONE: u32 = u32::MAX;
    pub(crate) const ABSENT: Span = Span {
        start: Self::NONE,
        len: 0,
    };
}

/// String fields in storage order.
pub(crate) const STR_FIELDS: usize = 12;
pub(crate) const F_ID: usize = 0;
pub(crate) const F_PASS: usize = 1;
pub(crate) const F_PROGRAM: usize = 2;
pub(crate) const F_CUSTOMER: usize = 3;
pub(crate) const F_DEVICE: usize = 4;
pub(crate) const F_LOCATION: usize = 5;
pub(crate) const F_OPERATOR: usize = 6;
pub(crate) const F_SOURCE: usize = 7;
pub(crate) const F_CAMPAIGN: usize = 8;
pub(crate) const F_OFFER: usize = 9;
pub(crate) const F_RESULT: usize = 10;
pub(crate) const F_ATTRS: usize = 11;

#[derive(Debug, Clone)]
pub(crate) struct Row {
    pub(crate) seq: u64,
    pub(crate) arrival: i64,
    pub(crate) ts: i64,
    pub(crate) value: f64,
    pub(crate) has_value: bool,
    pub(crate) kind: EventType,
    pub(crate) platform: Option<Platform>,
    pub(crate) strs: [Span; STR_FIELDS],
}

/// Validated events, ready to be applied to the engine.
#[derive(Debug, Default, Clone)]
pub struct DecodedBatch {
    arena: String,
    rows: Vec<Row>,
    /// Arrival time given to the rows decoded next (see [`DecodedBatch::set_arrival`]).
    arrival: i64,
    /// Furthest an event time may lie after its arrival time, millis (see
    /// [`DecodedBatch::set_max_future_skew`]); `None`: unbounded.
    max_future_skew: Option<i64>,
    /// Highest stream sequence of any message decoded into the batch, events or not.
    last_seq: u64,
    /// Set once an upstream de-duplication stage has removed repeated ids: the (minute, hash) of
    /// the ids it saw first in this batch.
    new_ids: Option<Vec<(u32, u64)>>,
    /// Events that stage removed.
    duplicates: u64,
}

/// One validated event, borrowing its strings from a [`DecodedBatch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EventRef<'a> {
    /// JetStream stream sequence of the message that carried the event (0 if not from a stream).
    pub seq: u64,
    /// When the broker stored the message, epoch millis (0 if unknown). Deterministic on replay,
    /// so it is what `ingested_at` records and what the id de-duplication window is measured in.
    pub arrival: i64,
    pub id: &'a str,
    pub kind: EventType,
    /// Event time, epoch milliseconds UTC.
    pub ts: i64,
    pub pass: Option<&'a str>,
    pub program: Option<&'a str>,
    pub customer: Option<&'a str>,
    pub device: Option<&'a str>,
    pub platform: Option<Platform>,
    pub location: Option<&'a str>,
    pub operator: Option<&'a str>,
    pub source: Option<&'a str>,
    pub campaign: Option<&'a str>,
    pub offer: Option<&'a str>,
    pub value: Option<f64>,
    pub result: Option<&'a str>,
    /// Extra attributes as compact JSON object text.
    pub attrs: Option<&'a str>,
}

impl DecodedBatch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with_capacity(events: usize) -> Self {
        DecodedBatch {
            arena: String::with_capacity(events * 96),
            rows: Vec::with_capacity(events),
            arrival: 0,
            max_future_skew: None,
            last_seq: 0,
            new_ids: None,
            duplicates: 0,
        }
    }

    /// Keeps the rows whose `keep` entry is true and records the de-duplication result (see
    /// [`crate::dedup::Dedup::filter`]).
    pub(crate) fn mark_deduplicated(&mut self, keep: &[bool], new_ids: Vec<(u32, u64)>) {
        let mut k = keep.iter();
        let before = self.rows.len();
        self.rows.retain(|_| k.next().copied().unwrap_or(true));
        self.duplicates = (before - self.rows.len()) as u64;
        self.new_ids = Some(new_ids);
    }

    /// The ids an upstream de-duplication stage saw first in this batch; `None` if no stage ran.
    pub fn new_ids(&self) -> Option<&[(u32, u64)]> {
        self.new_ids.as_deref()
    }

    /// Events the upstream de-duplication stage removed.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Sets the arrival time (epoch millis) of the events decoded next: the broker's timestamp of
    /// the message that carries them.
    pub fn set_arrival(&mut self, millis: i64) {
        self.arrival = millis;
    }

    /// Refuses (as `invalid_value`) events decoded from now on whose `ts` lies more than
    /// `millis` after their arrival time: one mis-stamped event must not move the watermark,
    /// and with it every window and the retention cutoff, into the future. Checked only while an
    /// arrival time is set (it is for every message read from the stream); `None` turns the
    /// check off.
    pub fn set_max_future_skew(&mut self, millis: Option<i64>) {
        self.max_future_skew = millis;
    }

    /// Arrival time of the events decoded next (0: unknown).
    pub(crate) fn arrival(&self) -> i64 {
        self.arrival
    }

    /// The latest event time accepted for the events decoded next, if bounded.
    pub(crate) fn latest_accepted_ts(&self) -> Option<i64> {
        match (self.arrival, self.max_future_skew) {
            (a, Some(skew)) if a > 0 => Some(a.saturating_add(skew)),
            _ => None,
        }
    }

    /// Records that the message with stream sequence `seq` was consumed, even if it yielded no
    /// event (all lines dead-lettered): the engine's position covers it.
    pub fn note_seq(&mut self, seq: u64) {
        self.last_seq = self.last_seq.max(seq);
    }

    /// Highest stream sequence consumed into this batch (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn clear(&mut self) {
        self.arena.clear();
        self.rows.clear();
        self.arrival = 0;
        self.last_seq = 0;
        self.new_ids = None;
        self.duplicates = 0;
    }

    pub fn get(&self, i: usize) -> EventRef<'_> {
        let r = &self.rows[i];
        EventRef {
            seq: r.seq,
            arrival: r.arrival,
            id: self.span(r.strs[F_ID]).unwrap_or_default(),
            kind: r.kind,
            ts: r.ts,
            pass: self.span(r.strs[F_PASS]),
            program: self.span(r.strs[F_PROGRAM]),
            customer: self.span(r.strs[F_CUSTOMER]),
            device: self.span(r.strs[F_DEVICE]),
            platform: r.platform,
            location: self.span(r.strs[F_LOCATION]),
            operator: self.span(r.strs[F_OPERATOR]),
            source: self.span(r.strs[F_SOURCE]),
            campaign: self.span(r.strs[F_CAMPAIGN]),
            offer: self.span(r.strs[F_OFFER]),
            value: r.has_value.then_some(r.value),
            result: self.span(r.strs[F_RESULT]),
            attrs: self.span(r.strs[F_ATTRS]),
        }
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = EventRef<'_>> + '_ {
        (0..self.rows.len()).map(|i| self.get(i))
    }

    #[inline]
    fn span(&self, s: Span) -> Option<&str> {
        if s.start == Span::NONE {
            None
        } else {
            let start = s.start as usize;
            Some(&self.arena[start..start + s.len as usize])
        }
    }

    /// Copies `s` into the arena.
    pub(crate) fn intern(&mut self, s: &str) -> Span {
        let start = self.arena.len() as u32;
        self.arena.push_str(s);
        Span {
            start,
            len: s.len() as u32,
        }
    }

    /// Gives the arena to a writer (for attrs JSON); returns the span written.
    pub(crate) fn write_with(&mut self, f: impl FnOnce(&mut String)) -> Span {
        let start = self.arena.len();
        f(&mut self.arena);
        Span {
            start: start as u32,
            len: (self.arena.len() - start) as u32,
        }
    }

    pub(crate) fn push_row(&mut self, mut row: Row) {
        row.arrival = self.arrival;
        self.last_seq = self.last_seq.max(row.seq);
        self.rows.push(row);
    }

    /// Undoes arena writes of a row that failed validation half-way.
    pub(crate) fn truncate_arena(&mut self, len: usize) {
        self.arena.truncate(len);
    }

    pub(crate) fn arena_len(&self) -> usize {
        self.arena.len()
    }
}
