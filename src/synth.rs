//! `passpulse gen`: a deterministic synthetic wallet-pass world, as an ordered stream of v1
//! events (NDJSON).
//!
//! Customers arrive through signup sources whose conversion rates differ (a QR code at the till
//! converts better than a social ad), get a pass of a programme, install it on one or two
//! devices (Apple or Google), visit their home store — stores differ in traffic and in their busy
//! hours of the week — where passes are scanned, offers viewed and redeemed and points earned
//! (so the pass is updated and pushed), and some remove the pass after a lifetime drawn from an
//! exponential distribution; a few re-install it. The same seed gives byte-identical output.
//!
//! Each customer's journey is drawn at arrival and queued by time; events come out of a heap in
//! time order, so memory is bounded by the customers still active, not by the output size.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt::Write as _;

use passpulse_engine::EventType as T;
use passpulse_engine::time::{DAY_MS, MINUTE_MS, format_millis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// (name, weight, click→issue rate, issue→install rate, campaigns)
const SOURCES: [(&str, u32, f64, f64, &[&str]); 6] = [
    ("email", 30, 0.62, 0.71, &["newsletter-w47", "winback-q4"]),
    ("sms", 15, 0.55, 0.80, &["points-reminder", "flash-sale"]),
    (
        "web",
        20,
        0.41,
        0.56,
        &["homepage-banner", "checkout-upsell"],
    ),
    ("qr", 18, 0.83, 0.88, &["till-poster", "receipt-qr"]),
    ("pos", 10, 0.91, 0.90, &["staff-signup"]),
    ("social", 7, 0.28, 0.47, &["insta-story", "tiktok-creator"]),
];

/// (name, weight, visits per week, redemption share of visits)
const PROGRAMS: [(&str, u32, f64, f64); 3] = [
    ("loyalty-card", 60, 1.1, 0.12),
    ("welcome-coupon", 25, 0.35, 0.55),
    ("event-ticket", 15, 0.15, 0.05),
];

/// (store, traffic weight, busiest hour, weekend factor)
const LOCATIONS: [(&str, u32, u32, f64); 8] = [
    ("berlin-mitte", 30, 13, 1.4),
    ("hamburg-hbf", 22, 8, 0.6),
    ("munich-marienplatz", 18, 17, 1.8),
    ("cologne-dom", 12, 12, 1.2),
    ("frankfurt-zeil", 9, 18, 1.0),
    ("leipzig-hbf", 5, 7, 0.5),
    ("dresden-altmarkt", 3, 15, 2.0),
    ("online-popup", 1, 20, 1.1),
];

const OFFERS: [&str; 5] = [
    "coffee-free",
    "10-percent-off",
    "double-points",
    "birthday-cake",
    "bogo-snack",
];

/// What the generator should produce.
#[derive(Debug, Clone)]
pub struct GenOptions {
    pub seed: u64,
    /// Start of simulated time, epoch millis.
    pub start_ms: i64,
    /// Customers signing up per simulated day.
    pub arrivals_per_day: f64,
}

#[derive(Debug, Clone, Copy)]
struct Ev {
    ts: i64,
    kind: T,
    customer: u32,
    pass: u32,
    device: u32,
    apple: bool,
    program: u8,
    source: u8,
    campaign: u8,
    location: u8,
    lane: u8,
    offer: u8,
    result_ok: bool,
    points: u32,
    value: f32,
}

impl Ev {
    fn new(ts: i64, kind: T, c: &Customer) -> Ev {
        Ev {
            ts,
            kind,
            customer: c.id,
            pass: c.pass,
            device: 0,
            apple: true,
            program: c.program,
            source: c.source,
            campaign: c.campaign,
            location: u8::MAX,
            lane: 0,
            offer: u8::MAX,
            result_ok: true,
            points: 0,
            value: 0.0,
        }
    }
}

struct Customer {
    id: u32,
    pass: u32,
    program: u8,
    source: u8,
    campaign: u8,
}

/// An endless, time-ordered stream of events; take as many as needed.
pub struct Generator {
    rng: ChaCha8Rng,
    opts: GenOptions,
    heap: BinaryHeap<Reverse<(i64, u64, usize)>>,
    slots: Vec<Option<Ev>>,
    free: Vec<usize>,
    order: u64,
    clock: i64,
    next_arrival: i64,
    customers: u32,
    devices: u32,
    emitted: u64,
    id_prefix: String,
}

fn pick<R: Rng>(rng: &mut R, weights: impl Iterator<Item = u32> + Clone) -> usize {
    let total: u32 = weights.clone().sum();
    let mut x = rng.gen_range(0..total);
    for (i, w) in weights.enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    0
}

fn exp<R: Rng>(rng: &mut R, mean: f64) -> f64 {
    -mean * (1.0 - rng.r#gen::<f64>()).ln()
}

impl Generator {
    pub fn new(opts: GenOptions) -> Generator {
        Generator {
            rng: ChaCha8Rng::seed_from_u64(opts.seed),
            next_arrival: opts.start_ms,
            clock: opts.start_ms,
            id_prefix: format!("g{:x}-", opts.seed),
            opts,
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            order: 0,
            customers: 0,
            devices: 0,
            emitted: 0,
        }
    }

    /// Queues an event; nothing may be queued before the arrival being drawn, which keeps the
    /// output in time order.
    fn push(&mut self, mut e: Ev) {
        e.ts = e.ts.max(self.clock);
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(e);
                i
            }
            None => {
                self.slots.push(Some(e));
                self.slots.len() - 1
            }
        };
        self.order += 1;
        self.heap.push(Reverse((e.ts, self.order, slot)));
    }

    /// A time of day at `loc` on the day of `ts`, drawn from that store's busy hours.
    fn visit_time(&mut self, day_start: i64, loc: usize) -> i64 {
        let (_, _, peak, weekend) = LOCATIONS[loc];
        let weekday = ((day_start / DAY_MS) + 3).rem_euclid(7); // 1970-01-01 was a Thursday
        let hour = loop {
            let h = self.rng.gen_range(6..23u32);
            let dist = (h as i64 - peak as i64).abs() as f64;
            let mut w = (-dist * dist / 8.0).exp() + 0.08;
            if weekday >= 5 {
                w *= weekend;
            }
            if self.rng.r#gen::<f64>() < w / 2.0 {
                break h;
            }
        };
        day_start + hour as i64 * 3_600_000 + self.rng.gen_range(0..3_600_000)
    }

    /// Draws one customer's journey and queues its events.
    fn arrive(&mut self, t: i64) {
        self.clock = t;
        self.customers += 1;
        let s = pick(&mut self.rng, SOURCES.iter().map(|s| s.1));
        let (_, _, p_issue, p_install, campaigns) = SOURCES[s];
        let c = Customer {
            id: self.customers,
            pass: self.customers,
            program: pick(&mut self.rng, PROGRAMS.iter().map(|p| p.1)) as u8,
            source: s as u8,
            campaign: self.rng.gen_range(0..campaigns.len()) as u8,
        };
        let mut e = Ev::new(t, T::LinkClicked, &c);
        e.pass = 0;
        self.push(e);
        let registered = t + self.rng.gen_range(20_000..120_000);
        let mut e = Ev::new(registered, T::ContactRegistered, &c);
        e.pass = 0;
        self.push(e);
        if self.rng.gen_bool(0.4) {
            let req = registered + 1_000;
            let mut e = Ev::new(req, T::OptinRequested, &c);
            e.pass = 0;
            self.push(e);
            if self.rng.gen_bool(0.65) {
                e.kind = T::OptinConfirmed;
                e.ts = req + (exp(&mut self.rng, 30.0) * MINUTE_MS as f64) as i64;
                self.push(e);
            }
        }
        if !self.rng.gen_bool(p_issue) {
            return;
        }
        let issued = registered + self.rng.gen_range(1_000..60_000);
        self.push(Ev::new(issued, T::PassIssued, &c));
        if !self.rng.gen_bool(p_install) {
            return;
        }
        let (_, _, visits_per_week, redeem_share) = PROGRAMS[c.program as usize];
        let home = pick(&mut self.rng, LOCATIONS.iter().map(|l| l.1));
        let n_devices = if self.rng.gen_bool(0.08) { 2 } else { 1 };
        let apple = self.rng.gen_bool(0.62);
        let installed = issued + (exp(&mut self.rng, 25.0) * MINUTE_MS as f64) as i64;
        // lifetime: a third remove the pass, sooner when it came from a weak channel
        let lifetime_days = if self.rng.gen_bool(0.3 + 0.3 * (1.0 - p_install)) {
            Some(exp(&mut self.rng, 21.0))
        } else {
            None
        };
        let horizon = installed + 90 * DAY_MS;
        let removed = lifetime_days.map(|d| installed + (d * DAY_MS as f64) as i64);
        let mut devices = Vec::new();
        for k in 0..n_devices {
            self.devices += 1;
            let mut e = Ev::new(installed + k * 3_600_000, T::PassInstalled, &c);
            e.device = self.devices;
            e.apple = if k == 0 { apple } else { !apple };
            devices.push((e.device, e.apple));
            self.push(e);
            if let Some(r) = removed {
                let mut u = e;
                u.kind = T::PassUninstalled;
                u.ts = r + k * 60_000;
                self.push(u);
                if u.apple && self.rng.gen_bool(0.15) {
                    let mut g = u;
                    g.kind = T::DeviceGone;
                    g.ts = r + (exp(&mut self.rng, 10.0) * DAY_MS as f64) as i64;
                    self.push(g);
                }
            }
        }
        // a few come back: re-install on the first device
        if let Some(r) = removed
            && self.rng.gen_bool(0.1)
        {
            let mut e = Ev::new(
                r + (exp(&mut self.rng, 7.0) * DAY_MS as f64) as i64,
                T::PassInstalled,
                &c,
            );
            e.device = devices[0].0;
            e.apple = devices[0].1;
            self.push(e);
        }
        let active_until = removed.unwrap_or(horizon).min(horizon);
        let mut points = 0u32;
        let mut day = installed;
        loop {
            day += (exp(&mut self.rng, 7.0 / visits_per_week) * DAY_MS as f64) as i64;
            if day >= active_until {
                break;
            }
            let loc = if self.rng.gen_bool(0.8) {
                home
            } else {
                pick(&mut self.rng, LOCATIONS.iter().map(|l| l.1))
            };
            let ts = self
                .visit_time(day - day.rem_euclid(DAY_MS), loc)
                .max(installed + 1);
            let mut scan = Ev::new(ts, T::Scan, &c);
            scan.location = loc as u8;
            scan.lane = self.rng.gen_range(1..4);
            scan.result_ok = self.rng.gen_bool(0.97);
            self.push(scan);
            if !scan.result_ok {
                continue;
            }
            let offer = self.rng.gen_range(0..OFFERS.len()) as u8;
            if self.rng.gen_bool(0.3) {
                let mut v = Ev::new(
                    ts - self.rng.gen_range(60_000..3_600_000),
                    T::OfferViewed,
                    &c,
                );
                v.offer = offer;
                self.push(v);
                if self.rng.gen_bool(0.5) {
                    v.kind = T::OfferEngaged;
                    v.ts += 30_000;
                    self.push(v);
                }
            }
            if self.rng.gen_bool(redeem_share) {
                let mut r = Ev::new(ts + 15_000, T::Redemption, &c);
                r.location = loc as u8;
                r.offer = offer;
                r.value = (self.rng.gen_range(150..2500) as f32) / 100.0;
                self.push(r);
            }
            if c.program == 0 {
                points += self.rng.gen_range(5..60);
                let mut u = Ev::new(ts + 20_000, T::ContactUpdated, &c);
                u.pass = 0;
                u.points = points;
                self.push(u);
                let mut p = Ev::new(ts + 21_000, T::PassUpdated, &c);
                p.points = points;
                self.push(p);
                for &(dev, is_apple) in &devices {
                    if !is_apple {
                        continue;
                    }
                    let mut push = Ev::new(ts + 22_000, T::PushSent, &c);
                    if self.rng.gen_bool(0.02) {
                        push.kind = T::PushFailed;
                    }
                    push.device = dev;
                    self.push(push);
                    if push.kind == T::PushSent && self.rng.gen_bool(0.9) {
                        let mut f = push;
                        f.kind = T::PassFetched;
                        f.ts += self.rng.gen_range(1_000..30_000);
                        self.push(f);
                    }
                }
            }
        }
    }

    /// The next event as one NDJSON line (without the newline).
    pub fn next_line(&mut self) -> String {
        let e = self.next_event();
        self.line(e)
    }

    /// The next event, stamped with time `ts` instead of its simulated time (live traffic).
    pub fn next_line_at(&mut self, ts: i64) -> String {
        let mut e = self.next_event();
        e.ts = ts;
        self.line(e)
    }

    fn line(&mut self, e: Ev) -> String {
        let mut s = String::with_capacity(256);
        self.emitted += 1;
        self.render(&e, &mut s);
        s
    }

    fn next_event(&mut self) -> Ev {
        loop {
            let due = self.heap.peek().map(|Reverse((ts, _, _))| *ts);
            if due.is_none_or(|ts| ts >= self.next_arrival) {
                let t = self.next_arrival;
                self.arrive(t);
                let gap = exp(&mut self.rng, DAY_MS as f64 / self.opts.arrivals_per_day);
                self.next_arrival = t + gap.max(1.0) as i64;
                continue;
            }
            let Reverse((_, _, slot)) = self.heap.pop().expect("peeked");
            self.free.push(slot);
            return self.slots[slot].take().expect("queued event");
        }
    }

    fn render(&self, e: &Ev, s: &mut String) {
        let c = e.customer;
        let _ = write!(
            s,
            r#"{{"id":"{}{}","type":"{}","ts":"{}""#,
            self.id_prefix,
            self.emitted,
            e.kind,
            format_millis(e.ts)
        );
        if e.pass != 0 {
            let _ = write!(s, r#","pass":"P{:07}""#, e.pass);
        }
        let with_program = matches!(
            e.kind,
            T::PassIssued | T::PassInstalled | T::Scan | T::Redemption | T::PassUpdated
        );
        if with_program {
            let _ = write!(s, r#","program":"{}""#, PROGRAMS[e.program as usize].0);
        }
        let _ = write!(s, r#","customer":"C{c:07}""#);
        let (src, _, _, _, campaigns) = SOURCES[e.source as usize];
        match e.kind {
            T::LinkClicked | T::PassIssued | T::ContactRegistered | T::OptinRequested => {
                let _ = write!(
                    s,
                    r#","source":"{src}","campaign":"{}""#,
                    campaigns[e.campaign as usize]
                );
            }
            _ => {}
        }
        if e.device != 0 {
            let platform = if e.apple { "apple" } else { "google" };
            let _ = write!(
                s,
                r#","device":"D{:08x}","platform":"{platform}""#,
                e.device.wrapping_mul(2_654_435_761)
            );
        }
        if e.location != u8::MAX {
            let loc = LOCATIONS[e.location as usize].0;
            let _ = write!(s, r#","location":"{loc}""#);
            if e.kind == T::Scan {
                let _ = write!(
                    s,
                    r#","device":"{loc}-lane{}","operator":"op-{}-{}","result":"{}""#,
                    e.lane,
                    e.location,
                    (e.lane as u32 * 7 + c) % 5,
                    if e.result_ok { "accepted" } else { "rejected" }
                );
            }
        }
        if e.offer != u8::MAX {
            let _ = write!(s, r#","offer":"{}""#, OFFERS[e.offer as usize]);
        }
        if e.kind == T::Redemption {
            let _ = write!(s, r#","value":{:.2}"#, e.value);
        }
        if e.points != 0 {
            let tier = match e.points {
                0..200 => "silver",
                200..600 => "gold",
                _ => "platinum",
            };
            let _ = write!(s, r#","attrs":{{"points":{},"tier":"{tier}"}}"#, e.points);
        }
        s.push('}');
    }
}

impl Iterator for Generator {
    type Item = String;
    fn next(&mut self) -> Option<String> {
        Some(self.next_line())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use passpulse_engine::{DecodedBatch, event::decode_line};

    fn opts(seed: u64) -> GenOptions {
        GenOptions {
            seed,
            start_ms: 1_790_000_000_000,
            arrivals_per_day: 500.0,
        }
    }

    #[test]
    fn same_seed_same_bytes_and_every_line_is_valid() {
        let a: Vec<String> = Generator::new(opts(7)).take(5_000).collect();
        let b: Vec<String> = Generator::new(opts(7)).take(5_000).collect();
        assert_eq!(a, b);
        let c: Vec<String> = Generator::new(opts(8)).take(5_000).collect();
        assert_ne!(a, c);
        let mut batch = DecodedBatch::new();
        let mut kinds = std::collections::BTreeSet::new();
        let mut last = 0;
        for (i, line) in a.iter().enumerate() {
            let k = decode_line(line.as_bytes(), i + 1, 0, &mut batch)
                .unwrap_or_else(|e| panic!("{e}: {line}"));
            kinds.insert(k.as_str());
            let ts = batch.get(batch.len() - 1).ts;
            assert!(ts >= last, "events come out in time order");
            last = ts;
        }
        for t in [
            "pass.issued",
            "pass.installed",
            "pass.uninstalled",
            "scan",
            "redemption",
            "link.clicked",
            "push.sent",
        ] {
            assert!(kinds.contains(t), "{t} missing from {kinds:?}");
        }
    }
}
