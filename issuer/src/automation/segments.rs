//! Engagement segments of a programme's members, evaluated on event time.
//!
//! A member is `active` from any activity (joining, earning points, a scan of their pass) until
//! `active_within` of event time passes without another; then `inactive` (the win-back
//! audience). Event time is the watermark: the newest event time this component has seen. So a
//! member becomes inactive when the watermark passes their last activity + `active_within`, at
//! that instant, and a replay of the same stream produces the same transitions at the same
//! times. Every transition is a `segment.entered` event (`customer`, `program`, `result` = the
//! segment) whose id is derived from the transition, so re-evaluating after a restart is counted
//! once.
//!
//! The state (each member's last activity, points and segment, and the watermark) is kept in
//! the key-value bucket `PASSPULSE_MEMBERS` and written before the bus message that changed it is
//! acknowledged.

use std::collections::{BTreeSet, HashMap, HashSet};

use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use passpulse_engine::EventType;
use serde::{Deserialize, Serialize};

use super::flows::SegmentsConfig;
use crate::lifecycle::Event;
use crate::registry::{RegistryError, bucket, store_err};

pub const MEMBERS_BUCKET: &str = "PASSPULSE_MEMBERS";
const WATERMARK_KEY: &str = "watermark";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    Active,
    Inactive,
}

impl Segment {
    pub fn as_str(self) -> &'static str {
        match self {
            Segment::Active => "active",
            Segment::Inactive => "inactive",
        }
    }
}

/// One member's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub customer: String,
    pub last_activity: i64,
    pub segment: Segment,
    /// Since when (event time) the member is in `segment`.
    pub since: i64,
    /// The last points balance seen (to tell earning from spending).
    #[serde(default)]
    pub points: Option<f64>,
}

/// The segment evaluator (pure state; [`SegmentStore`] persists it).
#[derive(Debug)]
pub struct Segments {
    cfg: SegmentsConfig,
    period_ms: i64,
    members: HashMap<String, Member>,
    /// (time the member turns inactive, customer) of every active member.
    expiries: BTreeSet<(i64, String)>,
    watermark: i64,
    dirty: HashSet<String>,
    watermark_dirty: bool,
}

impl Segments {
    pub fn new(cfg: SegmentsConfig) -> Segments {
        Segments {
            period_ms: cfg.active_within.as_millis() as i64,
            cfg,
            members: HashMap::new(),
            expiries: BTreeSet::new(),
            watermark: i64::MIN,
            dirty: HashSet::new(),
            watermark_dirty: false,
        }
    }

    pub fn config(&self) -> &SegmentsConfig {
        &self.cfg
    }

    pub fn member(&self, customer: &str) -> Option<&Member> {
        self.members.get(customer)
    }

    pub fn is_member(&self, customer: &str) -> bool {
        self.members.contains_key(customer)
    }

    fn load(&mut self, m: Member) {
        if m.segment == Segment::Active {
            self.expiries
                .insert((m.last_activity + self.period_ms, m.customer.clone()));
        }
        self.members.insert(m.customer.clone(), m);
    }

    /// An activity of `customer` at event time `ts`; returns the transitions it causes.
    pub fn activity(&mut self, customer: &str, ts: i64) -> Vec<Event> {
        let period = self.period_ms;
        let joined = !self.members.contains_key(customer);
        let m = self
            .members
            .entry(customer.to_string())
            .or_insert_with(|| Member {
                customer: customer.to_string(),
                last_activity: ts,
                segment: Segment::Inactive,
                since: ts,
                points: None,
            });
        self.dirty.insert(customer.to_string());
        let mut out = Vec::new();
        if m.segment == Segment::Active {
            if ts <= m.last_activity {
                return out;
            }
            self.expiries
                .remove(&(m.last_activity + period, m.customer.clone()));
        } else if joined || ts + period > self.watermark {
            // a new member, or one still active as of the watermark: enters `active` at the
            // activity's time (a member who joined long before the watermark leaves it again
            // below, at join + period)
            m.segment = Segment::Active;
            m.since = ts;
            out.push(entered(&self.cfg.program, customer, Segment::Active, ts));
        }
        m.last_activity = m.last_activity.max(ts);
        if m.segment == Segment::Active {
            self.expiries
                .insert((m.last_activity + period, m.customer.clone()));
        }
        out.extend(self.expire_due());
        out
    }

    /// A new points balance of a member: earning (a higher balance) is activity.
    pub fn points(&mut self, customer: &str, points: f64, ts: i64) -> Vec<Event> {
        let Some(m) = self.members.get_mut(customer) else {
            return Vec::new();
        };
        let earned = m.points.is_some_and(|p| points > p);
        m.points = Some(points);
        self.dirty.insert(customer.to_string());
        if earned {
            self.activity(customer, ts)
        } else {
            Vec::new()
        }
    }

    /// Moves the watermark to `ts` if later; returns the members that became inactive.
    pub fn advance(&mut self, ts: i64) -> Vec<Event> {
        if ts <= self.watermark {
            return Vec::new();
        }
        self.watermark = ts;
        self.watermark_dirty = true;
        self.expire_due()
    }

    /// Active members whose activity is over by the watermark become inactive.
    fn expire_due(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        while let Some((at, customer)) = self.expiries.first().cloned() {
            if at >= self.watermark {
                break;
            }
            self.expiries.pop_first();
            if let Some(m) = self.members.get_mut(&customer) {
                m.segment = Segment::Inactive;
                m.since = at;
                out.push(entered(&self.cfg.program, &customer, Segment::Inactive, at));
                self.dirty.insert(customer);
            }
        }
        out
    }

    pub fn watermark(&self) -> i64 {
        self.watermark
    }

    /// Members changed since the last call, and the watermark if it moved.
    fn take_dirty(&mut self) -> (Vec<Member>, Option<i64>) {
        let members = self
            .dirty
            .drain()
            .filter_map(|c| self.members.get(&c).cloned())
            .collect();
        let wm = std::mem::take(&mut self.watermark_dirty).then_some(self.watermark);
        (members, wm)
    }

    /// Current membership: (customer, segment, since), by customer.
    pub fn membership(&self) -> Vec<(String, Segment, i64)> {
        let mut v: Vec<_> = self
            .members
            .values()
            .map(|m| (m.customer.clone(), m.segment, m.since))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The `segment.entered` event of a transition; its id is derived from the transition.
fn entered(program: &str, customer: &str, s: Segment, at: i64) -> Event {
    let key = xxhash_rust::xxh3::xxh3_64(customer.as_bytes());
    Event::new(
        EventType::SegmentEntered,
        format!("segment-{program}-{key:016x}-{}-{at}", s.as_str()),
        at,
    )
    .with("customer", Some(customer))
    .with("program", Some(program))
    .with("result", Some(s.as_str()))
}

fn member_key(customer: &str) -> String {
    format!("m{:032x}", xxhash_rust::xxh3::xxh3_128(customer.as_bytes()))
}

/// Persistence of [`Segments`] in JetStream key-value.
#[derive(Clone)]
pub struct SegmentStore {
    kv: kv::Store,
}

impl std::fmt::Debug for SegmentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SegmentStore")
    }
}

impl SegmentStore {
    pub async fn open(js: &jetstream::Context) -> Result<SegmentStore, RegistryError> {
        Ok(SegmentStore {
            kv: bucket(js, MEMBERS_BUCKET, std::time::Duration::ZERO).await?,
        })
    }

    /// The evaluator with every stored member and the stored watermark.
    pub async fn load(&self, cfg: SegmentsConfig) -> Result<Segments, RegistryError> {
        let mut s = Segments::new(cfg);
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(store_err)?
            .try_collect()
            .await
            .map_err(store_err)?;
        for k in keys {
            let Some(v) = self.kv.get(&k).await.map_err(store_err)? else {
                continue;
            };
            if k == WATERMARK_KEY {
                s.watermark = std::str::from_utf8(&v)
                    .ok()
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(i64::MIN);
            } else {
                match serde_json::from_slice::<Member>(&v) {
                    Ok(m) => s.load(m),
                    Err(e) => {
                        tracing::warn!(key = %k, error = %e, "segments: member entry is not valid; ignored")
                    }
                }
            }
        }
        Ok(s)
    }

    /// Writes what changed.
    pub async fn save(&self, s: &mut Segments) -> Result<(), RegistryError> {
        let (members, wm) = s.take_dirty();
        for m in &members {
            let bytes = serde_json::to_vec(m).expect("members serialize");
            if let Err(e) = self.kv.put(member_key(&m.customer), bytes.into()).await {
                // keep them dirty, so the next save writes them
                s.dirty.extend(members.iter().map(|m| m.customer.clone()));
                return Err(store_err(e));
            }
        }
        if let Some(w) = wm
            && let Err(e) = self.kv.put(WATERMARK_KEY, w.to_string().into()).await
        {
            s.watermark_dirty = true;
            return Err(store_err(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const DAY: i64 = 86_400_000;

    fn segs() -> Segments {
        Segments::new(SegmentsConfig {
            program: "loyalty".into(),
            active_within: Duration::from_secs(30 * 86_400),
            pass_from: "signup".into(),
        })
    }

    fn seg_of(e: &Event) -> (String, i64) {
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        (
            v["result"].as_str().unwrap().to_string(),
            v["ts"].as_i64().unwrap(),
        )
    }

    #[test]
    fn a_scripted_timeline() {
        let mut s = segs();
        let e = s.activity("A", 0);
        assert_eq!(
            e.iter().map(seg_of).collect::<Vec<_>>(),
            vec![("active".into(), 0)],
            "joining is activity"
        );
        assert!(s.advance(0).is_empty());
        assert_eq!(s.activity("B", DAY).len(), 1);
        assert!(
            s.points("A", 10.0, DAY).is_empty(),
            "a first balance is not earning"
        );
        assert!(
            s.points("A", 20.0, 20 * DAY).is_empty(),
            "earning while active: no transition"
        );
        assert!(
            s.points("A", 5.0, 21 * DAY).is_empty(),
            "spending is not activity"
        );
        assert!(s.advance(20 * DAY).is_empty());
        // B's last activity was day 1: inactive at day 31, seen once the watermark passes it
        let out = s.advance(35 * DAY);
        assert_eq!(out.len(), 1);
        assert_eq!(seg_of(&out[0]), ("inactive".into(), 31 * DAY));
        assert_eq!(s.member("B").unwrap().segment, Segment::Inactive);
        // A earned on day 20: inactive at day 50
        let out = s.advance(60 * DAY);
        assert_eq!(
            out.iter().map(seg_of).collect::<Vec<_>>(),
            vec![("inactive".into(), 50 * DAY)]
        );
        // a scan brings B back
        let e = s.activity("B", 61 * DAY);
        assert_eq!(
            e.iter().map(seg_of).collect::<Vec<_>>(),
            vec![("active".into(), 61 * DAY)]
        );
        // an old activity that was already over by the watermark changes nothing
        assert!(s.activity("A", 10 * DAY).is_empty());
        // a member who joined long before the watermark enters and leaves at once
        let e = s.activity("D", 0);
        assert_eq!(
            e.iter().map(seg_of).collect::<Vec<_>>(),
            vec![("active".into(), 0), ("inactive".into(), 30 * DAY)]
        );
        assert_eq!(s.member("A").unwrap().segment, Segment::Inactive);
        assert_eq!(
            s.membership()
                .iter()
                .map(|m| (m.0.as_str(), m.1))
                .collect::<Vec<_>>(),
            vec![
                ("A", Segment::Inactive),
                ("B", Segment::Active),
                ("D", Segment::Inactive)
            ]
        );
    }

    #[test]
    fn the_same_stream_gives_the_same_transitions() {
        let run = || {
            let mut s = segs();
            let mut ids = Vec::new();
            for (c, ts) in [("A", 0), ("B", 5 * DAY), ("A", 40 * DAY), ("C", 90 * DAY)] {
                ids.extend(s.advance(ts).iter().map(|e| e.id().to_string()));
                ids.extend(s.activity(c, ts).iter().map(|e| e.id().to_string()));
            }
            ids
        };
        let a = run();
        assert_eq!(a, run());
        assert_eq!(a.len(), 7, "{a:?}");
    }
}
