//! Per-pass state and the counters derived from it: the exact active install base and the
//! funnel by signup source.
//!
//! A registration is the pair (pass, device). Its state is decided by the install/uninstall with
//! the latest event time (stream sequence breaks ties), so out-of-order and replayed events give
//! the same answer as in-order ones. A pass is *active* while it has at least one live
//! registration. Slices by programme and source use the pass's attribution: `pass.issued` is
//! authoritative; an install carrying `program`/`source` fills them only if still unknown. When
//! attribution changes, the pass's counts move between slices.

use std::sync::Arc;

use ahash::{AHashMap, AHashSet};
use serde::{Deserialize, Serialize};

use crate::event::{EventRef, Platform};

/// Funnel stages reached by a pass (bit flags).
const ISSUED: u8 = 1;
const INSTALLED: u8 = 2;
const SCANNED: u8 = 4;
const REDEEMED: u8 = 8;

#[derive(Debug, Serialize, Deserialize)]
struct Reg {
    device: Box<str>,
    platform: Platform,
    live: bool,
    ts: i64,
    seq: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PassState {
    program: Option<Arc<str>>,
    source: Option<Arc<str>>,
    regs: Vec<Reg>,
    stages: u8,
}

impl PassState {
    fn live_by_platform(&self) -> [u64; 2] {
        let mut n = [0; 2];
        for r in self.regs.iter().filter(|r| r.live) {
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

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Passes {
    passes: hashbrown::HashMap<Box<str>, PassState, ahash::RandomState>,
    symbols: AHashSet<Arc<str>>,
    unknown: Option<Arc<str>>,
    pub(crate) all: SliceCount,
    pub(crate) by_platform: [SliceCount; 2],
    pub(crate) by_program: AHashMap<Arc<str>, SliceCount>,
    pub(crate) by_source: AHashMap<Arc<str>, SliceCount>,
    pub(crate) funnel: AHashMap<Arc<str>, FunnelCount>,
}

impl Passes {
    /// After loading from a snapshot every `Arc<str>` is its own allocation: share them again
    /// so each programme and source name is held once, as in a live engine.
    pub(crate) fn reintern(&mut self) {
        let mut symbols = std::mem::take(&mut self.symbols);
        let mut share = |a: &mut Arc<str>| match symbols.get(&**a) {
            Some(s) => *a = s.clone(),
            None => drop(symbols.insert(a.clone())),
        };
        for st in self.passes.values_mut() {
            st.program.iter_mut().for_each(&mut share);
            st.source.iter_mut().for_each(&mut share);
        }
        self.symbols = symbols;
    }

    fn sym(&mut self, s: &str) -> Arc<str> {
        if let Some(a) = self.symbols.get(s) {
            return a.clone();
        }
        let a: Arc<str> = Arc::from(s);
        self.symbols.insert(a.clone());
        a
    }

    fn state(&mut self, pass: &str) -> &mut PassState {
        // one lookup; the key is allocated only for a new pass
        self.passes.entry_ref(pass).or_default()
    }

    fn key(&mut self, v: &Option<Arc<str>>) -> Arc<str> {
        match v {
            Some(a) => a.clone(),
            None => self
                .unknown
                .get_or_insert_with(|| Arc::from(UNKNOWN))
                .clone(),
        }
    }

    /// Adds (`sign` = 1) or removes (-1) a pass's contribution to the programme/source slices
    /// and the funnel.
    fn attribute(&mut self, pass: &str, sign: i64) {
        let st = &self.passes[pass];
        let regs: u64 = st.live_by_platform().iter().sum();
        if regs == 0 && st.stages == 0 {
            return; // contributes to no slice and no funnel stage
        }
        let (program, source, stages) = (st.program.clone(), st.source.clone(), st.stages);
        let active = (regs > 0) as i64;
        let p = self.key(&program);
        let s = self.key(&source);
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
        if stages != 0 {
            self.funnel.entry(s).or_default().add_stages(stages, sign);
        }
    }

    pub fn apply(&mut self, e: &EventRef<'_>) {
        use crate::event::EventType as T;
        match e.kind {
            T::PassIssued => {
                let (Some(pass), program) = (e.pass, e.program) else {
                    return;
                };
                let program = program.map(|p| self.sym(p));
                let source = e.source.map(|s| self.sym(s));
                self.state(pass);
                self.attribute(pass, -1);
                let st = self.state(pass);
                st.program = program.or(st.program.take());
                st.source = source.or(st.source.take());
                st.stages |= ISSUED;
                self.attribute(pass, 1);
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
                let s = match e.source {
                    Some(s) => self.sym(s),
                    None => self.key(&None),
                };
                self.funnel.entry(s).or_default().clicked += 1;
            }
            _ => {}
        }
    }

    fn mark(&mut self, pass: Option<&str>, stage: u8) {
        let Some(pass) = pass else { return };
        if self
            .passes
            .get(pass)
            .is_some_and(|st| st.stages & stage != 0)
        {
            return;
        }
        let st = self.state(pass);
        st.stages |= stage;
        let source = st.source.clone();
        let s = self.key(&source);
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
        let program = e.program.map(|p| self.sym(p));
        let source = e.source.map(|s| self.sym(s));
        let needs_attribution = {
            let st = self.state(pass);
            (st.program.is_none() && program.is_some()) || (st.source.is_none() && source.is_some())
        };
        if needs_attribution {
            self.attribute(pass, -1);
            let st = self.state(pass);
            if st.program.is_none() {
                st.program = program;
            }
            if st.source.is_none() {
                st.source = source;
            }
            self.attribute(pass, 1);
        }

        let st = self.state(pass);
        let before = st.live_by_platform();
        match st.regs.iter_mut().find(|r| &*r.device == device) {
            Some(r) => {
                if (e.ts, e.seq) < (r.ts, r.seq) {
                    return; // an older signal than the one already applied
                }
                r.live = live;
                r.platform = platform;
                r.ts = e.ts;
                r.seq = e.seq;
            }
            None => st.regs.push(Reg {
                device: device.into(),
                platform,
                live,
                ts: e.ts,
                seq: e.seq,
            }),
        }
        let after = st.live_by_platform();
        let first_install = live && st.stages & INSTALLED == 0;
        if first_install {
            st.stages |= INSTALLED;
        }
        let (program, source) = (st.program.clone(), st.source.clone());

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
            let pk = self.key(&program);
            let sk = self.key(&source);
            self.by_program.entry(pk).or_default().add(d_active, d_regs);
            self.by_source.entry(sk).or_default().add(d_active, d_regs);
        }
        if first_install {
            let sk = self.key(&source);
            self.funnel.entry(sk).or_default().add_stages(INSTALLED, 1);
        }
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
}
