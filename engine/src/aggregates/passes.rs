//! Per-pass state and the counters derived from it: the exact active install base and the
//! funnel by signup source.
//!
//! A registration is the pair (pass, device). Its state is decided by the install/uninstall with
//! the latest event time (then stream sequence, then event id), so out-of-order and replayed events give
//! the same answer as in-order ones. A pass is *active* while it has at least one live
//! registration. Slices by programme and source use the pass's origin, the one definition shared
//! with the SQL views (`pass_origin`): its first `pass.issued` by event time, then stream
//! sequence, then event id. A later-stamped `pass.issued` is a re-issue and changes nothing; an
//! earlier-stamped one arriving late becomes the origin, and the pass's counts move between
//! slices, so the answer does not depend on arrival order. A pass with no `pass.issued` counts
//! under `(unknown)`: installs and removals never attribute it. "Ever installed" (the funnel) is
//! any `pass.installed` of the pass, whatever its time relative to the registration's state.
//!
//! The layout is built to be cheap to checkpoint. Every pass id and device id is stored once, in
//! one string arena; a pass's state is a fixed-size record (its ids as spans of the arena, its
//! programme and source as symbol numbers, its first registration inline) held in the hash table
//! itself, with the registrations of passes on several devices in a side list. A snapshot writes
//! the arena in one piece and then only numbers, reading memory in order, rather than following
//! a pointer per id; the table is rebuilt from the records when a snapshot is loaded.

use std::sync::Arc;

use ahash::AHashMap;
use hashbrown::HashTable;
use hashbrown::hash_table::Entry;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::event::{EventRef, Platform};

/// Funnel stages reached by a pass (bit flags).
const ISSUED: u8 = 1;
const INSTALLED: u8 = 2;
const SCANNED: u8 = 4;
const REDEEMED: u8 = 8;

/// A string in the arena: byte offset and length (ids are shorter than a NATS message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Span {
    at: u64,
    len: u32,
}

impl Span {
    fn range(self) -> std::ops::Range<usize> {
        self.at as usize..self.at as usize + self.len as usize
    }
}

fn text(arena: &str, s: Span) -> &str {
    &arena[s.range()]
}

fn push_text(arena: &mut String, s: &str) -> Span {
    let at = arena.len() as u64;
    arena.push_str(s);
    Span {
        at,
        len: u32::try_from(s.len()).expect("an id is shorter than a NATS message"),
    }
}

/// A programme or source: an index into the symbol list, or [`Sym::NONE`] while unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Sym(u32);

impl Sym {
    const NONE: Sym = Sym(u32::MAX);

    fn is_none(self) -> bool {
        self == Sym::NONE
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Reg {
    device: Span,
    platform: Platform,
    live: bool,
    /// (event time, stream sequence, event id) of the install or removal that set `live`: the
    /// latest wins, as in the SQL views, whatever order they arrived in.
    ts: i64,
    seq: u64,
    id: Span,
}

/// Which `pass.issued` is a pass's origin: the least (event time, stream sequence, event id).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Origin {
    ts: i64,
    seq: u64,
    id: Span,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct PassState {
    /// Hash of the pass id under this process's hasher; recomputed when a snapshot is loaded.
    #[serde(skip)]
    hash: u64,
    key: Span,
    program: Sym,
    source: Sym,
    stages: u8,
    origin: Option<Origin>,
    first: Option<Reg>,
    /// 1 + the index in [`Passes::more`] of the registrations after the first; 0 if none.
    more: u32,
}

impl PassState {
    fn new(hash: u64, key: Span) -> Self {
        PassState {
            hash,
            key,
            program: Sym::NONE,
            source: Sym::NONE,
            stages: 0,
            origin: None,
            first: None,
            more: 0,
        }
    }

    fn regs<'a>(&'a self, more: &'a [Vec<Reg>]) -> impl Iterator<Item = &'a Reg> {
        let rest: &[Reg] = match self.more {
            0 => &[],
            i => &more[i as usize - 1],
        };
        self.first.iter().chain(rest)
    }

    /// The `i`th registration, as counted by [`PassState::regs`].
    fn reg_mut<'a>(&'a mut self, more: &'a mut [Vec<Reg>], i: usize) -> &'a mut Reg {
        let skip = self.first.is_some() as usize;
        match self.first.as_mut() {
            Some(r) if i == 0 => r,
            _ => &mut more[self.more as usize - 1][i - skip],
        }
    }

    fn add_reg(&mut self, more: &mut Vec<Vec<Reg>>, reg: Reg) {
        if self.first.is_none() {
            self.first = Some(reg);
        } else if self.more == 0 {
            more.push(vec![reg]);
            self.more = u32::try_from(more.len()).expect("fewer than 2^32 passes on two devices");
        } else {
            more[self.more as usize - 1].push(reg);
        }
    }

    fn live_by_platform(&self, more: &[Vec<Reg>]) -> [u64; 2] {
        let mut n = [0; 2];
        for r in self.regs(more).filter(|r| r.live) {
            n[r.platform as usize] += 1;
        }
        n
    }
}

/// Live counts of one slice (a programme, a source, …).
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct SliceCount {
    /// Passes with at least one live registration.
    pub active_passes: u64,
    /// Live (pass, device) registrations.
    pub live_registrations: u64,
}

impl SliceCount {
    fn add(&mut self, passes: i64, regs: i64) {
        self.active_passes = self.active_passes.wrapping_add_signed(passes);
        self.live_registrations = self.live_registrations.wrapping_add_signed(regs);
    }
}

/// Funnel counts of one source.
#[derive(Debug, Default, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FunnelCount {
    /// `link.clicked` events carrying this source.
    pub clicked: u64,
    /// Passes issued with this source.
    pub issued: u64,
    /// …of which were ever installed.
    pub installed: u64,
    /// …ever scanned.
    pub scanned: u64,
    /// …ever redeemed an offer.
    pub redeemed: u64,
}

impl FunnelCount {
    fn add_stages(&mut self, stages: u8, sign: i64) {
        for (bit, c) in [
            (ISSUED, &mut self.issued),
            (INSTALLED, &mut self.installed),
            (SCANNED, &mut self.scanned),
            (REDEEMED, &mut self.redeemed),
        ] {
            if stages & bit != 0 {
                *c = c.wrapping_add_signed(sign);
            }
        }
    }
}

/// Label used for passes whose programme or source is not (yet) known.
pub const UNKNOWN: &str = "(unknown)";

type Slices<T> = AHashMap<Arc<str>, T>;

#[derive(Default)]
pub struct Passes {
    /// Every pass id and device id, back to back.
    arena: String,
    table: HashTable<PassState>,
    hasher: ahash::RandomState,
    /// Registrations after the first, of passes on several devices.
    more: Vec<Vec<Reg>>,
    symbols: Vec<Arc<str>>,
    symbol_ids: AHashMap<Arc<str>, u32>,
    unknown: Option<Arc<str>>,
    pub(crate) all: SliceCount,
    pub(crate) by_platform: [SliceCount; 2],
    pub(crate) by_program: Slices<SliceCount>,
    pub(crate) by_source: Slices<SliceCount>,
    pub(crate) funnel: Slices<FunnelCount>,
}

impl std::fmt::Debug for Passes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passes")
            .field("passes", &self.table.len())
            .field("arena_bytes", &self.arena.len())
            .field("all", &self.all)
            .finish_non_exhaustive()
    }
}

/// The state of one pass, found or added; a free function so that the caller may borrow the
/// other fields of [`Passes`] beside the returned state.
fn slot<'a>(
    table: &'a mut HashTable<PassState>,
    arena: &mut String,
    hasher: &ahash::RandomState,
    pass: &str,
) -> &'a mut PassState {
    let h = hasher.hash_one(pass);
    let found = table.entry(h, |s| s.hash == h && text(arena, s.key) == pass, |s| s.hash);
    match found {
        Entry::Occupied(o) => o.into_mut(),
        Entry::Vacant(v) => v
            .insert(PassState::new(h, push_text(arena, pass)))
            .into_mut(),
    }
}

/// The slice name of a symbol (`(unknown)` for none); a free function so that the caller may
/// hold a pass's state beside it.
fn key_of(unknown: &mut Option<Arc<str>>, symbols: &[Arc<str>], v: Sym) -> Arc<str> {
    match v {
        Sym::NONE => unknown.get_or_insert_with(|| Arc::from(UNKNOWN)).clone(),
        Sym(i) => symbols[i as usize].clone(),
    }
}

impl Passes {
    /// Bytes a snapshot of this state takes, roughly (a capacity hint).
    pub(crate) fn snapshot_size_hint(&self) -> usize {
        self.arena.len() + 48 * self.table.len() + 48 * self.more.len()
    }

    fn sym(&mut self, s: &str) -> Sym {
        if let Some(&i) = self.symbol_ids.get(s) {
            return Sym(i);
        }
        let a: Arc<str> = Arc::from(s);
        let i = u32::try_from(self.symbols.len())
            .ok()
            .filter(|&i| i != Sym::NONE.0)
            .expect("fewer than 2^32 - 1 programmes and sources");
        self.symbols.push(a.clone());
        self.symbol_ids.insert(a, i);
        Sym(i)
    }

    fn state(&mut self, pass: &str) -> &mut PassState {
        slot(&mut self.table, &mut self.arena, &self.hasher, pass)
    }

    fn key(&mut self, v: Sym) -> Arc<str> {
        key_of(&mut self.unknown, &self.symbols, v)
    }

    /// Adds (`sign` = 1) or removes (-1) a pass's contribution to the programme/source slices
    /// and the funnel.
    fn attribute(&mut self, st: &PassState, sign: i64) {
        let regs: u64 = st.live_by_platform(&self.more).iter().sum();
        if regs == 0 && st.stages == 0 {
            return; // contributes to no slice and no funnel stage
        }
        let active = (regs > 0) as i64;
        let p = self.key(st.program);
        let s = self.key(st.source);
        if regs > 0 {
            self.by_program
                .entry(p)
                .or_default()
                .add(sign * active, sign * regs as i64);
            self.by_source
                .entry(s.clone())
                .or_default()
                .add(sign * active, sign * regs as i64);
        }
        if st.stages != 0 {
            self.funnel
                .entry(s)
                .or_default()
                .add_stages(st.stages, sign);
        }
    }

    /// The funnel's sources with anything counted (a source a pass was re-attributed away from
    /// reads as absent, whatever the arrival order).
    pub(crate) fn funnel_rows(&self) -> impl Iterator<Item = (&Arc<str>, &FunnelCount)> {
        self.funnel
            .iter()
            .filter(|(_, f)| **f != FunnelCount::default())
    }

    /// Moves a pass's contribution from its state `before` to its state `after`.
    fn reattribute(&mut self, before: &PassState, after: &PassState) {
        self.attribute(before, -1);
        self.attribute(after, 1);
    }

    pub fn apply(&mut self, e: &EventRef<'_>) {
        use crate::event::EventType as T;
        match e.kind {
            T::PassIssued => {
                let Some(pass) = e.pass else {
                    return;
                };
                let program = e.program.map_or(Sym::NONE, |p| self.sym(p));
                let source = e.source.map_or(Sym::NONE, |s| self.sym(s));
                let st = slot(&mut self.table, &mut self.arena, &self.hasher, pass);
                let before = *st;
                let is_origin = st
                    .origin
                    .is_none_or(|o| (e.ts, e.seq, e.id) < (o.ts, o.seq, text(&self.arena, o.id)));
                st.stages |= ISSUED;
                if is_origin {
                    st.program = program;
                    st.source = source;
                    st.origin = Some(Origin {
                        ts: e.ts,
                        seq: e.seq,
                        id: push_text(&mut self.arena, e.id),
                    });
                }
                let after = *st;
                self.reattribute(&before, &after);
            }
            T::PassInstalled | T::PassUninstalled => {
                let (Some(pass), Some(device), Some(platform)) = (e.pass, e.device, e.platform)
                else {
                    return;
                };
                self.registration(e, pass, device, platform, e.kind == T::PassInstalled);
            }
            T::Scan => self.mark(e.pass, SCANNED),
            T::Redemption => self.mark(e.pass, REDEEMED),
            T::LinkClicked => {
                let s = e.source.map_or(Sym::NONE, |s| self.sym(s));
                let s = self.key(s);
                self.funnel.entry(s).or_default().clicked += 1;
            }
            _ => {}
        }
    }

    fn mark(&mut self, pass: Option<&str>, stage: u8) {
        let Some(pass) = pass else { return };
        let st = self.state(pass);
        if st.stages & stage != 0 {
            return;
        }
        st.stages |= stage;
        let source = st.source;
        let s = self.key(source);
        self.funnel.entry(s).or_default().add_stages(stage, 1);
    }

    fn registration(
        &mut self,
        e: &EventRef<'_>,
        pass: &str,
        device: &str,
        platform: Platform,
        live: bool,
    ) {
        let st = slot(&mut self.table, &mut self.arena, &self.hasher, pass);
        // ever installed: any install counts, even one older than the registration's state
        let first_install = live && st.stages & INSTALLED == 0;
        if first_install {
            st.stages |= INSTALLED;
            let sk = key_of(&mut self.unknown, &self.symbols, st.source);
            self.funnel.entry(sk).or_default().add_stages(INSTALLED, 1);
        }
        let before = st.live_by_platform(&self.more);
        let arena = &self.arena;
        let found = st
            .regs(&self.more)
            .position(|r| text(arena, r.device) == device);
        match found {
            Some(i) => {
                let r = st.reg_mut(&mut self.more, i);
                if (e.ts, e.seq, e.id) < (r.ts, r.seq, text(&self.arena, r.id)) {
                    return; // an older signal than the one already applied
                }
                r.live = live;
                r.platform = platform;
                r.ts = e.ts;
                r.seq = e.seq;
                r.id = push_text(&mut self.arena, e.id);
            }
            None => {
                let reg = Reg {
                    device: push_text(&mut self.arena, device),
                    platform,
                    live,
                    ts: e.ts,
                    seq: e.seq,
                    id: push_text(&mut self.arena, e.id),
                };
                st.add_reg(&mut self.more, reg);
            }
        }
        let after = st.live_by_platform(&self.more);
        let (program, source) = (st.program, st.source);

        let (b, a) = (before[0] + before[1], after[0] + after[1]);
        let d_regs = a as i64 - b as i64;
        let d_active = (a > 0) as i64 - (b > 0) as i64;
        self.all.add(d_active, d_regs);
        for p in Platform::ALL {
            let i = p as usize;
            let d = after[i] as i64 - before[i] as i64;
            let da = (after[i] > 0) as i64 - (before[i] > 0) as i64;
            self.by_platform[i].add(da, d);
        }
        if d_regs != 0 || d_active != 0 {
            let pk = self.key(program);
            let sk = self.key(source);
            self.by_program.entry(pk).or_default().add(d_active, d_regs);
            self.by_source.entry(sk).or_default().add(d_active, d_regs);
        }
    }
}

/// The snapshot form, written from borrowed state; [`WireIn`] reads it back (same field order).
#[derive(Serialize)]
struct WireOut<'a> {
    arena: &'a str,
    states: States<'a>,
    more: &'a [Vec<Reg>],
    symbols: &'a [Arc<str>],
    all: SliceCount,
    by_platform: [SliceCount; 2],
    by_program: &'a Slices<SliceCount>,
    by_source: &'a Slices<SliceCount>,
    funnel: &'a Slices<FunnelCount>,
}

struct States<'a>(&'a HashTable<PassState>);

impl Serialize for States<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter())
    }
}

#[derive(Deserialize)]
struct WireIn {
    arena: String,
    states: Vec<PassState>,
    more: Vec<Vec<Reg>>,
    symbols: Vec<Arc<str>>,
    all: SliceCount,
    by_platform: [SliceCount; 2],
    by_program: Slices<SliceCount>,
    by_source: Slices<SliceCount>,
    funnel: Slices<FunnelCount>,
}

impl Serialize for Passes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        WireOut {
            arena: &self.arena,
            states: States(&self.table),
            more: &self.more,
            symbols: &self.symbols,
            all: self.all,
            by_platform: self.by_platform,
            by_program: &self.by_program,
            by_source: &self.by_source,
            funnel: &self.funnel,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Passes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Passes::from_wire(WireIn::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl Passes {
    /// Rebuilds the table from snapshot records, checking every span and index so that damaged
    /// bytes are an error rather than a panic later.
    fn from_wire(w: WireIn) -> Result<Passes, String> {
        let WireIn {
            arena,
            states,
            more,
            symbols,
            all,
            by_platform,
            by_program,
            by_source,
            funnel,
        } = w;
        let span_ok = |s: Span| arena.get(s.range()).is_some();
        let sym_ok = |s: Sym| s.is_none() || (s.0 as usize) < symbols.len();
        if let Some(r) = more
            .iter()
            .flatten()
            .find(|r| !span_ok(r.device) || !span_ok(r.id))
        {
            return Err(format!("a device span {:?} is outside the arena", r.device));
        }
        let hasher = ahash::RandomState::new();
        let mut table = HashTable::with_capacity(states.len());
        for mut st in states {
            if !span_ok(st.key)
                || !sym_ok(st.program)
                || !sym_ok(st.source)
                || st.origin.is_some_and(|o| !span_ok(o.id))
            {
                return Err(format!("pass record {st:?} refers outside the snapshot"));
            }
            let first_ok = match st.first {
                Some(r) => span_ok(r.device) && span_ok(r.id),
                None => st.more == 0,
            };
            if !first_ok || st.more as usize > more.len() {
                return Err(format!("pass record {st:?} refers outside the snapshot"));
            }
            let key = text(&arena, st.key);
            st.hash = hasher.hash_one(key);
            match table.entry(
                st.hash,
                |s: &PassState| s.hash == st.hash && text(&arena, s.key) == key,
                |s| s.hash,
            ) {
                Entry::Occupied(_) => return Err(format!("pass {key:?} is recorded twice")),
                Entry::Vacant(v) => drop(v.insert(st)),
            }
        }
        let symbol_ids = symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u32))
            .collect();
        Ok(Passes {
            arena,
            table,
            hasher,
            more,
            symbols,
            symbol_ids,
            unknown: None,
            all,
            by_platform,
            by_program,
            by_source,
            funnel,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DecodedBatch, decode_line};

    fn apply(p: &mut Passes, lines: &[&str]) {
        let mut b = DecodedBatch::new();
        for (i, l) in lines.iter().enumerate() {
            decode_line(l.as_bytes(), 1, i as u64 + 1, &mut b).unwrap();
        }
        for e in b.iter() {
            p.apply(&e);
        }
    }

    /// As [`apply`], all lines in one stream message (one NDJSON batch shares its sequence).
    fn apply_one_message(p: &mut Passes, lines: &[&str]) {
        let mut b = DecodedBatch::new();
        for (i, l) in lines.iter().enumerate() {
            decode_line(l.as_bytes(), i + 1, 7, &mut b).unwrap();
        }
        for e in b.iter() {
            p.apply(&e);
        }
    }

    fn inst(id: &str, pass: &str, dev: &str, plat: &str, ts: i64, on: bool) -> String {
        let t = if on {
            "pass.installed"
        } else {
            "pass.uninstalled"
        };
        format!(
            r#"{{"id":"{id}","type":"{t}","ts":{ts},"pass":"{pass}","device":"{dev}","platform":"{plat}"}}"#
        )
    }

    #[test]
    fn active_base_counts_passes_with_a_live_registration() {
        let mut p = Passes::default();
        apply(
            &mut p,
            &[
                r#"{"id":"i1","type":"pass.issued","ts":1,"pass":"A","program":"gold","source":"email"}"#,
                &inst("1", "A", "d1", "apple", 10, true),
                &inst("2", "A", "d2", "google", 11, true),
                &inst("3", "B", "d3", "apple", 12, true),
                &inst("4", "A", "d1", "apple", 20, false),
            ],
        );
        assert_eq!(
            p.all,
            SliceCount {
                active_passes: 2,
                live_registrations: 2
            }
        );
        assert_eq!(p.by_platform[Platform::Apple as usize].active_passes, 1);
        assert_eq!(p.by_platform[Platform::Google as usize].active_passes, 1);
        assert_eq!(p.by_program["gold"].active_passes, 1);
        assert_eq!(p.by_program[UNKNOWN].active_passes, 1);
        assert_eq!(p.by_source["email"].live_registrations, 1);
        assert_eq!(p.funnel["email"].installed, 1);
    }

    #[test]
    fn out_of_order_uninstall_wins_by_event_time() {
        let mut p = Passes::default();
        // the uninstall (ts 20) arrives before the install (ts 10) it supersedes
        apply(
            &mut p,
            &[
                &inst("u", "A", "d1", "apple", 20, false),
                &inst("i", "A", "d1", "apple", 10, true),
            ],
        );
        assert_eq!(p.all.active_passes, 0);
        // a later re-install counts again
        apply(&mut p, &[&inst("r", "A", "d1", "apple", 30, true)]);
        assert_eq!(p.all.active_passes, 1);
        // replaying the same history changes nothing
        apply(
            &mut p,
            &[
                &inst("u", "A", "d1", "apple", 20, false),
                &inst("i", "A", "d1", "apple", 10, true),
            ],
        );
        assert_eq!(
            p.all,
            SliceCount {
                active_passes: 1,
                live_registrations: 1
            }
        );
    }

    #[test]
    fn late_issue_moves_the_pass_to_its_programme() {
        let mut p = Passes::default();
        apply(
            &mut p,
            &[
                &inst("1", "A", "d1", "apple", 10, true),
                r#"{"id":"x","type":"scan","ts":11,"pass":"A","location":"l","device":"s","operator":"o"}"#,
                r#"{"id":"i1","type":"pass.issued","ts":1,"pass":"A","program":"gold","source":"sms"}"#,
            ],
        );
        assert_eq!(p.by_program.get(UNKNOWN).map(|c| c.active_passes), Some(0));
        assert_eq!(p.by_program["gold"].active_passes, 1);
        assert_eq!(p.funnel[UNKNOWN].installed, 0);
        assert_eq!(
            p.funnel["sms"],
            FunnelCount {
                clicked: 0,
                issued: 1,
                installed: 1,
                scanned: 1,
                redeemed: 0
            }
        );
    }

    #[test]
    fn the_origin_is_the_first_issue_whatever_the_arrival_order() {
        let issues = [
            r#"{"id":"b","type":"pass.issued","ts":5,"pass":"A","program":"silver","source":"sms","campaign":"c2"}"#,
            r#"{"id":"a","type":"pass.issued","ts":1,"pass":"A","program":"gold","source":"email"}"#,
            // same time as the first; it loses on the stream sequence (both seq 0 here) then id
            r#"{"id":"z","type":"pass.issued","ts":1,"pass":"A","program":"bronze","source":"web"}"#,
        ];
        let install = inst("1", "A", "d1", "apple", 10, true);
        let mut views = Vec::new();
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2]] {
            let mut p = Passes::default();
            let mut lines: Vec<&str> = order.iter().map(|&i| issues[i]).collect();
            lines.insert(1, &install);
            apply_one_message(&mut p, &lines);
            assert_eq!(p.by_program["gold"].active_passes, 1, "order {order:?}");
            assert_eq!(p.funnel["email"].issued, 1);
            assert_eq!(p.funnel["email"].installed, 1);
            views.push(view(&p));
        }
        assert!(views.windows(2).all(|w| w[0] == w[1]), "{views:#?}");
    }

    #[test]
    fn an_install_older_than_the_uninstall_still_counts_as_installed() {
        let mut p = Passes::default();
        apply(
            &mut p,
            &[
                r#"{"id":"i","type":"pass.issued","ts":1,"pass":"A","program":"gold","source":"qr"}"#,
                &inst("u", "A", "d1", "apple", 20, false),
                &inst("i", "A", "d1", "apple", 10, true),
            ],
        );
        assert_eq!(p.all.active_passes, 0);
        assert_eq!(p.funnel["qr"].installed, 1);
    }

    #[test]
    fn a_tie_in_time_and_sequence_is_broken_by_the_event_id() {
        // an install and a removal of one registration, same ts, one message: the larger id wins
        let on = inst("b", "A", "d1", "apple", 10, true);
        let off = inst("a", "A", "d1", "apple", 10, false);
        for lines in [[on.as_str(), off.as_str()], [off.as_str(), on.as_str()]] {
            let mut p = Passes::default();
            apply_one_message(&mut p, &lines);
            assert_eq!(p.all.live_registrations, 1, "{lines:?}");
        }
    }

    #[test]
    fn installs_never_attribute_a_pass() {
        let mut p = Passes::default();
        apply(
            &mut p,
            &[
                r#"{"id":"1","type":"pass.uninstalled","ts":9,"pass":"A","device":"d","platform":"apple","program":"gold","source":"sms"}"#,
                r#"{"id":"2","type":"pass.installed","ts":10,"pass":"A","device":"d","platform":"apple","program":"gold","source":"sms"}"#,
            ],
        );
        assert_eq!(p.by_program[UNKNOWN].active_passes, 1);
        assert!(!p.by_program.contains_key("gold"));
    }

    /// Everything a snapshot must carry, as comparable values.
    fn view(p: &Passes) -> String {
        let sorted = |m: &Slices<SliceCount>| {
            let mut v: Vec<_> = m
                .iter()
                .filter(|(_, c)| **c != SliceCount::default())
                .map(|(k, c)| (k.to_string(), *c))
                .collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let mut f: Vec<_> = p.funnel_rows().map(|(k, c)| (k.to_string(), *c)).collect();
        f.sort_by(|a, b| a.0.cmp(&b.0));
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            p.all,
            p.by_platform,
            sorted(&p.by_program),
            sorted(&p.by_source),
            f
        )
    }

    /// Passes on one and on several devices, an out-of-order uninstall, a scan.
    fn after_history() -> Passes {
        let lines: Vec<String> = vec![
            r#"{"id":"i1","type":"pass.issued","ts":1,"pass":"A","program":"gold","source":"email"}"#.into(),
            inst("1", "A", "d1", "apple", 10, true),
            inst("2", "A", "d2", "google", 11, true),
            inst("3", "A", "d3", "apple", 12, true),
            inst("4", "B", "d1", "apple", 13, true),
            inst("5", "C", "d9", "google", 30, false),
            inst("6", "C", "d9", "google", 20, true),
            r#"{"id":"x","type":"scan","ts":14,"pass":"A","location":"l","device":"s","operator":"o"}"#.into(),
        ];
        let mut p = Passes::default();
        apply(
            &mut p,
            &lines.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        p
    }

    #[test]
    fn a_snapshot_restores_every_registration_and_slice() {
        let mut p = after_history();
        let bytes = postcard::to_allocvec(&p).unwrap();
        let mut q: Passes = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(view(&q), view(&p));
        assert_eq!(q.table.len(), 3);
        // the restored state goes on exactly as the original: an older signal for a device on
        // the side list is ignored, a newer one applies, a new device joins, attribution holds
        let more = [
            inst("7", "A", "d3", "apple", 5, false),
            inst("8", "A", "d2", "google", 40, false),
            inst("9", "B", "d4", "google", 41, true),
            r#"{"id":"i2","type":"pass.issued","ts":2,"pass":"B","program":"silver","source":"sms"}"#.into(),
        ];
        let more: Vec<&str> = more.iter().map(String::as_str).collect();
        apply(&mut p, &more);
        apply(&mut q, &more);
        assert_eq!(view(&q), view(&p));
        assert_eq!(p.all.live_registrations, 4, "A: d1, d3; B: d1, d4");
        assert_eq!(p.by_program["silver"].live_registrations, 2);
    }

    #[test]
    fn damaged_snapshot_bytes_are_an_error_not_a_panic() {
        let p = after_history();
        let bytes = postcard::to_allocvec(&p).unwrap();
        let mut refused = 0;
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                if let Ok(q) = postcard::from_bytes::<Passes>(&b) {
                    // whatever decodes can be read and applied to without panicking
                    let _ = view(&q);
                    let mut q = q;
                    apply(&mut q, &[&inst("z", "A", "d1", "apple", 99, true)]);
                } else {
                    refused += 1;
                }
            }
            assert!(postcard::from_bytes::<Passes>(&bytes[..i]).is_err());
        }
        assert!(refused > 0);
    }
}
