//! Proof of the insights on generated data: `passpulse gen` output, made messy (retried
//! duplicates, late arrivals, removals of passes never issued, re-issues with other attribution
//! arriving before and after the first issue, installs arriving after a later-stamped removal,
//! scans uploaded weeks late, redemptions without a view), published through NATS to the real
//! server; every insight and live table compared below is recomputed here in plain Rust from the
//! events as published, and must agree exactly (the HyperLogLog distinct counts: within four
//! relative standard errors).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use common::{Nats, Server, generate, js_publish};
use passpulse_engine::time::{DAY_MS, format_day, parse_rfc3339_millis};
use serde_json::Value;

/// Lines per published NATS message: the events of one message share a stream sequence.
const PER_MESSAGE: usize = 500;

/// One event as published, with its message's place in the stream.
struct Ev {
    v: Value,
    ts: i64,
    seq: usize,
}

impl Ev {
    fn s(&self, k: &str) -> Option<&str> {
        self.v[k].as_str()
    }
    fn ty(&self) -> &str {
        self.s("type").unwrap()
    }
}

/// The generated lines in the order they are published: every 97th line arrives at the end
/// (late, out of order), every 50th is sent again later in another message (a producer retry),
/// five passes that were never issued are removed, and three passes take paths the generator
/// never takes: scanned and redeemed without an install, installed twice on one device, and
/// removed before its install arrives. Besides:
/// - every 9th issued pass is issued again a day later with another source, campaign and
///   customer, and that re-issue arrives first (every 18th) or last; every 45th gets an issue
///   stamped an hour *earlier*, arriving last: it, not the generator's, is the origin;
/// - every 5th removal gets an install of the same registration stamped a minute before it,
///   arriving after it;
/// - a scan three weeks after everything moves the watermark, then 40 scans of the first
///   scanned minute arrive (a scanner offline for weeks), and redemptions of an offer by passes
///   that never viewed it.
fn messy(lines: Vec<String>) -> Vec<String> {
    let (mut late, mut out) = (Vec::new(), Vec::new());
    let mut retries = Vec::new();
    let (mut first, mut last) = (Vec::new(), Vec::new());
    let (mut issued, mut removed) = (0, 0);
    let mut first_scan: Option<Value> = None;
    for l in &lines {
        let v: Value = serde_json::from_str(l).unwrap();
        let ts = parse_rfc3339_millis(v["ts"].as_str().unwrap()).unwrap();
        match v["type"].as_str().unwrap() {
            "pass.issued" => {
                issued += 1;
                let pass = v["pass"].as_str().unwrap();
                if issued % 9 == 0 {
                    let again = format!(
                        r#"{{"id":"reissue-{pass}","type":"pass.issued","ts":{},"pass":"{pass}","program":"{}","source":"reissue-web","campaign":"=HYPERLINK(\"x\")","customer":"<b>C-{pass}</b>"}}"#,
                        ts + DAY_MS,
                        v["program"].as_str().unwrap()
                    );
                    if issued % 18 == 0 {
                        first.push(again)
                    } else {
                        last.push(again)
                    }
                }
                if issued % 45 == 0 {
                    last.push(format!(
                        r#"{{"id":"earlier-{pass}","type":"pass.issued","ts":{},"pass":"{pass}","program":"{}","source":"walk-in","campaign":"till\r\nposter","customer":"E-{pass}"}}"#,
                        ts - 3_600_000,
                        v["program"].as_str().unwrap()
                    ));
                }
            }
            "pass.uninstalled" => {
                removed += 1;
                if removed % 5 == 0 {
                    let mut i = v.clone();
                    i["id"] = format!("late-install-{removed}").into();
                    i["type"] = "pass.installed".into();
                    i["ts"] = (ts - 60_000).into();
                    last.push(i.to_string());
                }
            }
            "scan"
                if first_scan
                    .as_ref()
                    .is_none_or(|f| ts < f["_ts"].as_i64().unwrap()) =>
            {
                let mut f = v.clone();
                f["_ts"] = ts.into();
                first_scan = Some(f);
            }
            _ => {}
        }
    }
    let f = first_scan.expect("the generated data has scans");
    last.push(format!(
        r#"{{"id":"far-ahead","type":"scan","ts":"2026-06-28T12:00:00Z","pass":"{}","location":"{}","device":"lane-9","operator":"op-9","result":"accepted"}}"#,
        f["pass"].as_str().unwrap(),
        f["location"].as_str().unwrap()
    ));
    for k in 0..40 {
        last.push(format!(
            r#"{{"id":"offline-{k}","type":"scan","ts":{},"pass":"{}","location":"{}","device":"offline-scanner","operator":"op-1","result":"accepted"}}"#,
            f["_ts"].as_i64().unwrap() + k,
            f["pass"].as_str().unwrap(),
            f["location"].as_str().unwrap()
        ));
    }
    for k in 0..3 {
        last.push(format!(
            r#"{{"id":"unviewed-{k}","type":"redemption","ts":"2026-06-02T11:0{k}:00Z","pass":"UNVIEWED{k}","offer":"coffee-free","location":"berlin-mitte","value":2}}"#
        ));
    }
    out.extend(first);
    for (i, l) in lines.into_iter().enumerate() {
        if i % 50 == 7 {
            retries.push(l.clone());
        }
        if i % 97 == 3 {
            late.push(l)
        } else {
            out.push(l)
        }
    }
    out.extend(late);
    for k in 0..5 {
        out.push(format!(
            r#"{{"id":"orphan-{k}","type":"pass.uninstalled","ts":"2026-06-0{}T12:00:00Z","pass":"ORPHAN{k}","device":"OD{k}","platform":"google"}}"#,
            k + 2
        ));
    }
    let odd = [
        r#""type":"pass.issued","ts":"2026-06-02T09:00:00Z","pass":"ODD1","program":"loyalty-card","source":"email","campaign":"newsletter-w47","customer":"CODD1""#,
        r#""type":"scan","ts":"2026-06-02T10:00:00Z","pass":"ODD1","location":"berlin-mitte","device":"lane-1","operator":"op-1","result":"accepted""#,
        r#""type":"redemption","ts":"2026-06-02T10:01:00Z","pass":"ODD1","offer":"coffee-free","location":"berlin-mitte","value":3.5"#,
        r#""type":"pass.issued","ts":"2026-06-02T09:00:00Z","pass":"ODD2","program":"loyalty-card","source":"qr","campaign":"till-poster","customer":"CODD2""#,
        r#""type":"pass.installed","ts":"2026-06-02T09:10:00Z","pass":"ODD2","device":"ODD2-D","platform":"apple""#,
        r#""type":"pass.installed","ts":"2026-06-02T09:20:00Z","pass":"ODD2","device":"ODD2-D","platform":"apple""#,
        r#""type":"pass.uninstalled","ts":"2026-06-03T09:00:00Z","pass":"ODD3","device":"ODD3-D","platform":"google""#,
    ];
    for (k, body) in odd.iter().enumerate() {
        out.push(format!(r#"{{"id":"odd-{k}",{body}}}"#));
    }
    out.extend(retries);
    // ODD3's install arrives after its removal, though it happened before it
    out.push(r#"{"id":"odd-late","type":"pass.installed","ts":"2026-06-03T08:00:00Z","pass":"ODD3","device":"ODD3-D","platform":"google"}"#.into());
    out.extend(last);
    // an install and a removal of one registration with the same time in one message: the
    // larger id (the install, here the first line) decides, not the line order
    if out.len() % PER_MESSAGE == PER_MESSAGE - 1 {
        out.push(r#"{"id":"tie-filler","type":"link.clicked","ts":"2026-06-02T12:00:00Z","source":"qr"}"#.into());
    }
    out.push(r#"{"id":"tie-b","type":"pass.installed","ts":"2026-06-02T12:00:00Z","pass":"TIE1","device":"TD","platform":"apple"}"#.into());
    out.push(r#"{"id":"tie-a","type":"pass.uninstalled","ts":"2026-06-02T12:00:00Z","pass":"TIE1","device":"TD","platform":"apple"}"#.into());
    out
}

/// The events the server should hold: the first of each id, in arrival order.
fn unique(published: &[String]) -> Vec<Ev> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for (arrival, l) in published.iter().enumerate() {
        let v: Value = serde_json::from_str(l).unwrap();
        if !seen.insert(v["id"].as_str().unwrap().to_string()) {
            continue;
        }
        let ts = match &v["ts"] {
            Value::String(t) => parse_rfc3339_millis(t).unwrap(),
            t => t.as_i64().unwrap(),
        };
        out.push(Ev {
            v,
            ts,
            seq: arrival / PER_MESSAGE,
        });
    }
    out
}

fn day(ts: i64) -> String {
    format!("{}T00:00:00Z", format_day(ts.div_euclid(DAY_MS) as i32))
}

/// Per pass and device, the type of the latest install/uninstall event (by time, then stream
/// sequence, then id).
fn latest_registrations(evs: &[Ev]) -> BTreeMap<(String, String), (String, String)> {
    let mut regs: Vec<&Ev> = evs
        .iter()
        .filter(|e| matches!(e.ty(), "pass.installed" | "pass.uninstalled"))
        .collect();
    regs.sort_by_key(|e| (e.ts, e.seq, e.s("id").unwrap().to_string()));
    let mut last = BTreeMap::new();
    for e in regs {
        let key = (e.s("pass").unwrap().into(), e.s("device").unwrap().into());
        last.insert(
            key,
            (e.ty().to_string(), e.s("platform").unwrap().to_string()),
        );
    }
    last
}

/// Each pass's origin from its first `pass.issued` by (event time, stream sequence, event id):
/// (program, source, campaign, customer).
type Origin = (String, String, Option<String>, Option<String>);
fn origins(evs: &[Ev]) -> HashMap<String, Origin> {
    let mut issued: Vec<&Ev> = evs.iter().filter(|e| e.ty() == "pass.issued").collect();
    issued.sort_by_key(|e| (e.ts, e.seq, e.s("id").unwrap().to_string()));
    let mut out = HashMap::new();
    for e in issued {
        out.entry(e.s("pass").unwrap().to_string()).or_insert((
            e.s("program").unwrap().to_string(),
            e.s("source").unwrap().to_string(),
            e.s("campaign").map(str::to_string),
            e.s("customer").map(str::to_string),
        ));
    }
    out
}

/// The rows as a map from `key` to the counts in columns `counts`.
fn table<K: Ord, const N: usize>(
    rows: &[Value],
    key: impl Fn(&Value) -> K,
    counts: [&str; N],
) -> BTreeMap<K, [u64; N]> {
    rows.iter()
        .map(|r| (key(r), counts.map(|c| int(&r[c]))))
        .collect()
}

type OfferTally<'a> = ([u64; 3], BTreeSet<&'a str>, BTreeSet<&'a str>);

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn int(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("{v} is not a count"))
}

#[tokio::test]
async fn every_insight_matches_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let lines = generate(11, 30_000, 2_000.0, &dir.path().join("gen.ndjson"));
    let published = messy(lines);
    let evs = unique(&published);
    let has = |t: &str| evs.iter().any(|e| e.ty() == t);
    for t in [
        "pass.issued",
        "pass.installed",
        "pass.uninstalled",
        "scan",
        "redemption",
    ] {
        assert!(has(t), "the generated data has {t} events");
    }
    assert!(published.len() > evs.len(), "there are retried duplicates");

    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let js = nats.js().await;
    for chunk in published.chunks(PER_MESSAGE) {
        js_publish(&js, "passpulse.events.batch", chunk.join("\n").into_bytes()).await;
    }
    server.wait_events(evs.len() as i64).await;
    let get = |name: &str| {
        let server = &server;
        let name = name.to_string();
        async move {
            server
                .get_json(&format!("/api/v1/insights/{name}"))
                .await
                .as_array()
                .unwrap_or_else(|| panic!("{name}: not rows"))
                .clone()
        }
    };

    // adoption per day
    let mut want: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let mut installed: BTreeMap<String, BTreeSet<&str>> = BTreeMap::new();
    for e in &evs {
        let i = match e.ty() {
            "pass.issued" => 0,
            "pass.installed" => 1,
            "pass.uninstalled" => 2,
            _ => continue,
        };
        want.entry(day(e.ts)).or_default()[i] += 1;
        if i == 1 {
            installed
                .entry(day(e.ts))
                .or_default()
                .insert(e.s("pass").unwrap());
        }
    }
    let got: BTreeMap<String, [u64; 4]> = table(
        &get("adoption_daily").await,
        |r| text(&r["day"]).unwrap(),
        ["issued", "installs", "uninstalls", "passes_installed"],
    );
    let want: BTreeMap<String, [u64; 4]> = want
        .into_iter()
        .map(|(d, [a, b, c])| {
            let n = installed.get(&d).map_or(0, |s| s.len()) as u64;
            (d, [a, b, c, n])
        })
        .collect();
    assert_eq!(got, want, "adoption_daily");

    // re-issues per day: issues that are not their pass's first (its origin)
    let mut by_pass: HashMap<&str, Vec<&Ev>> = HashMap::new();
    for e in evs.iter().filter(|e| e.ty() == "pass.issued") {
        by_pass.entry(e.s("pass").unwrap()).or_default().push(e);
    }
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for issues in by_pass.values_mut() {
        issues.sort_by_key(|e| (e.ts, e.seq, e.s("id").unwrap().to_string()));
        for e in &issues[1..] {
            *want.entry(day(e.ts)).or_default() += 1;
        }
    }
    let got: BTreeMap<String, u64> = get("adoption_daily")
        .await
        .iter()
        .filter(|r| int(&r["reissues"]) > 0)
        .map(|r| (text(&r["day"]).unwrap(), int(&r["reissues"])))
        .collect();
    assert!(want.values().sum::<u64>() > 100, "re-issues were published");
    assert_eq!(got, want, "adoption_daily.reissues");

    // usage per day
    let mut want: BTreeMap<String, [u64; 4]> = BTreeMap::new();
    for e in &evs {
        let w = match e.ty() {
            "scan" => {
                let w = want.entry(day(e.ts)).or_default();
                w[0] += 1;
                w[1] += (e.s("result") == Some("accepted")) as u64;
                w[2] += (e.s("result") == Some("rejected")) as u64;
                continue;
            }
            "redemption" => want.entry(day(e.ts)).or_default(),
            _ => continue,
        };
        w[3] += 1;
    }
    let got: BTreeMap<String, [u64; 4]> = table(
        &get("usage_daily").await,
        |r| text(&r["day"]).unwrap(),
        ["scans", "accepted", "rejected", "redemptions"],
    );
    assert_eq!(got, want, "usage_daily");

    // scans per location
    let mut want: BTreeMap<String, (u64, u64, u64, BTreeSet<&str>)> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.ty() == "scan") {
        let w = want.entry(e.s("location").unwrap().into()).or_default();
        w.0 += 1;
        w.1 += (e.s("result") == Some("accepted")) as u64;
        w.2 += (e.s("result") == Some("rejected")) as u64;
        w.3.insert(e.s("pass").unwrap());
    }
    let want: BTreeMap<String, [u64; 4]> = want
        .into_iter()
        .map(|(l, (n, a, r, p))| (l, [n, a, r, p.len() as u64]))
        .collect();
    let got: BTreeMap<String, [u64; 4]> = table(
        &get("scans_by_location").await,
        |r| text(&r["location"]).unwrap(),
        ["scans", "accepted", "rejected", "passes"],
    );
    assert_eq!(got, want, "scans_by_location");

    // passes: usage, devices holding the pass, state
    let origin = origins(&evs);
    let regs = latest_registrations(&evs);
    let mut want: BTreeMap<String, (u64, u64, u64, bool)> = BTreeMap::new();
    for e in &evs {
        let Some(p) = e.s("pass") else { continue };
        let w = want.entry(p.into()).or_default();
        w.0 += (e.ty() == "scan") as u64;
        w.1 += (e.ty() == "redemption") as u64;
    }
    for ((p, _), (last, _)) in &regs {
        let w = want.get_mut(p).unwrap();
        w.2 += (last == "pass.installed") as u64;
        w.3 = true;
    }
    let want: BTreeMap<String, (u64, u64, u64, String)> = want
        .into_iter()
        .map(|(p, (s, r, d, any))| {
            let state = match (d, any) {
                (0, false) => "never installed",
                (0, true) => "removed",
                _ => "installed",
            };
            (p, (s, r, d, state.to_string()))
        })
        .collect();
    let passes = get("passes").await;
    let got: BTreeMap<String, (u64, u64, u64, String)> = passes
        .iter()
        .map(|r| {
            (
                text(&r["pass"]).unwrap(),
                (
                    int(&r["scans"]),
                    int(&r["redemptions"]),
                    int(&r["devices"]),
                    text(&r["state"]).unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(got, want, "passes");
    let states: BTreeSet<&str> = want.values().map(|w| w.3.as_str()).collect();
    assert_eq!(states.len(), 3, "every state occurs: {states:?}");

    // postal savings: customers with a pass installed avoid a letter
    let mut customers: BTreeMap<&str, bool> = BTreeMap::new();
    for (p, (_, _, _, c)) in &origin {
        if let Some(c) = c {
            *customers.entry(c).or_default() |= want[p].3 == "installed";
        }
    }
    let savings = get("postal_savings").await;
    let avoided = customers.values().filter(|h| **h).count() as u64;
    assert_eq!(
        [
            int(&savings[0]["customers"]),
            int(&savings[0]["letters_avoided"])
        ],
        [customers.len() as u64, avoided],
        "postal_savings"
    );
    let postal = get("postal_list").await;
    assert_eq!(
        postal.len(),
        origin
            .iter()
            .filter(|(p, o)| o.3.is_some() && want[*p].3 != "installed")
            .count(),
        "postal_list: one row per pass not installed whose issue names a customer"
    );

    // the funnel per (source, campaign), each step among the passes of the step before; the
    // installed passes that viewed or engaged with an offer
    let mut funnel: BTreeMap<(Option<String>, Option<String>), [u64; 6]> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.ty() == "link.clicked") {
        let key = (
            e.s("source").map(str::to_string),
            e.s("campaign").map(str::to_string),
        );
        funnel.entry(key).or_default()[0] += 1;
    }
    let mut by_pass_type: HashSet<(&str, &str)> = HashSet::new();
    for e in &evs {
        if let Some(p) = e.s("pass") {
            by_pass_type.insert((p, e.ty()));
        }
    }
    for (p, (_, source, campaign, _)) in &origin {
        let f = funnel
            .entry((Some(source.clone()), campaign.clone()))
            .or_default();
        let step = |t: &str| by_pass_type.contains(&(p.as_str(), t));
        f[1] += 1;
        if step("pass.installed") {
            f[2] += 1;
            if step("offer.viewed") || step("offer.engaged") {
                f[5] += 1;
            }
            if step("scan") {
                f[3] += 1;
                if step("redemption") {
                    f[4] += 1;
                }
            }
        }
    }
    let got: BTreeMap<(Option<String>, Option<String>), [u64; 6]> = table(
        &get("channel_funnel").await,
        |r| (text(&r["source"]), text(&r["campaign"])),
        [
            "clicked",
            "issued",
            "installed",
            "scanned",
            "redeemed",
            "engaged",
        ],
    );
    assert_eq!(got, funnel, "channel_funnel");

    // offers
    let mut want: BTreeMap<String, OfferTally> = BTreeMap::new();
    for e in &evs {
        let i = match e.ty() {
            "offer.viewed" => 0,
            "offer.engaged" => 1,
            "redemption" => 2,
            _ => continue,
        };
        let Some(o) = e.s("offer") else { continue };
        let w = want.entry(o.into()).or_default();
        w.0[i] += 1;
        if i == 0 {
            w.1.insert(e.s("pass").unwrap());
        }
        if i == 2 {
            w.2.insert(e.s("pass").unwrap());
        }
    }
    let want: BTreeMap<String, [u64; 7]> = want
        .into_iter()
        .map(|(o, (c, v, r))| {
            let both = v.intersection(&r).count() as u64;
            let (v, r) = (v.len() as u64, r.len() as u64);
            (o, [c[0], c[1], c[2], v, r, both, r - both])
        })
        .collect();
    let offers = get("offers").await;
    let got: BTreeMap<String, [u64; 7]> = table(
        &offers,
        |r| text(&r["offer"]).unwrap(),
        [
            "views",
            "engagements",
            "redemptions",
            "passes_viewing",
            "passes_redeeming",
            "viewers_redeeming",
            "redeemed_without_view",
        ],
    );
    assert_eq!(got, want, "offers");
    assert!(
        want.values().any(|w| w[6] > 0),
        "some passes redeem without a view"
    );
    for r in &offers {
        if let Some(rate) = r["redemption_rate"].as_f64() {
            assert!(
                (0.0..=1.0).contains(&rate),
                "a rate a marketer can read: {r}"
            );
        }
    }

    // repeat visits: passes scanned on two or more UTC days
    let mut days: HashMap<&str, BTreeSet<i64>> = HashMap::new();
    for e in evs.iter().filter(|e| e.ty() == "scan") {
        days.entry(e.s("pass").unwrap())
            .or_default()
            .insert(e.ts.div_euclid(DAY_MS));
    }
    let repeat = get("repeat_visits").await;
    assert_eq!(
        [
            int(&repeat[0]["passes_scanned"]),
            int(&repeat[0]["repeat_passes"])
        ],
        [
            days.len() as u64,
            days.values().filter(|d| d.len() >= 2).count() as u64
        ],
        "repeat_visits"
    );

    // active registrations now, per (platform of the latest event, programme, source)
    let mut want: BTreeMap<(String, Option<String>, Option<String>), u64> = BTreeMap::new();
    for ((p, _), (last, platform)) in &regs {
        if last == "pass.installed" {
            let o = origin.get(p);
            let key = (
                platform.clone(),
                o.map(|o| o.0.clone()),
                o.map(|o| o.1.clone()),
            );
            *want.entry(key).or_default() += 1;
        }
    }
    let got: BTreeMap<(String, Option<String>, Option<String>), u64> = get("estimated_active_base")
        .await
        .iter()
        .map(|r| {
            (
                (
                    text(&r["platform"]).unwrap(),
                    text(&r["program"]),
                    text(&r["source"]),
                ),
                int(&r["active"]),
            )
        })
        .collect();
    assert_eq!(got, want, "estimated_active_base.active");

    // removals and installs per source, for the uninstall patterns
    let mut want: BTreeMap<Option<String>, [u64; 2]> = BTreeMap::new();
    for e in &evs {
        let i = match e.ty() {
            "pass.installed" => 0,
            "pass.uninstalled" => 1,
            _ => continue,
        };
        let source = origin.get(e.s("pass").unwrap()).map(|o| o.1.clone());
        want.entry(source).or_default()[i] += 1;
    }
    let got: BTreeMap<Option<String>, [u64; 2]> = get("uninstall_patterns")
        .await
        .iter()
        .map(|r| {
            (
                text(&r["source"]),
                [int(&r["installs"]), int(&r["removals"])],
            )
        })
        .collect();
    assert_eq!(got, want, "uninstall_patterns");
    assert!(
        got.contains_key(&None),
        "the orphan removals have no source"
    );

    // the live tables, kept by the engine event by event, against the same definitions
    live_tables_match(&server, &evs, &origin, &regs).await;

    // distinct counts (HyperLogLog++): within four relative standard errors of the exact count,
    // per UTC day and over all time
    let mut exact: BTreeMap<Option<String>, [HashSet<&str>; 3]> = BTreeMap::new();
    for e in &evs {
        let d = format_day(e.ts.div_euclid(DAY_MS) as i32);
        for key in [Some(d), None] {
            let sets = exact.entry(key).or_default();
            for (i, field) in ["pass", "device", "customer"].into_iter().enumerate() {
                if let Some(v) = e.s(field) {
                    sets[i].insert(v);
                }
            }
        }
    }
    let rows = server
        .sql("SELECT CAST(day AS VARCHAR) AS day, passes, devices, customers FROM distinct_counts")
        .await;
    let got: BTreeMap<Option<String>, [u64; 3]> = table(
        &rows,
        |r| text(&r["day"]),
        ["passes", "devices", "customers"],
    );
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        exact.keys().collect::<Vec<_>>(),
        "distinct_counts: one row per day with events, and the all-time row"
    );
    let all_time = &exact[&None];
    assert!(
        all_time[0].len() > 1_000,
        "enough passes to exercise the sketch"
    );
    for (key, sets) in &exact {
        for (i, field) in ["passes", "devices", "customers"].into_iter().enumerate() {
            let (want, est) = (sets[i].len() as f64, got[key][i] as f64);
            let bound = (4.0 * passpulse_engine::aggregates::RELATIVE_ERROR * want).max(1.0);
            assert!(
                (est - want).abs() <= bound,
                "distinct {field} on {key:?}: estimate {est}, exact {want}, bound ±{bound:.1}"
            );
        }
    }
}

/// `install_base`, `funnel` and the all-time `location_peaks`: the engine's live aggregates.
async fn live_tables_match(
    server: &Server,
    evs: &[Ev],
    origin: &HashMap<String, Origin>,
    regs: &BTreeMap<(String, String), (String, String)>,
) {
    const UNKNOWN: &str = "(unknown)";
    // install base: passes with a live registration and the registrations, per slice
    let mut live: BTreeMap<(String, String), BTreeMap<&str, u64>> = BTreeMap::new();
    for ((p, _), (last, platform)) in regs {
        if last != "pass.installed" {
            continue;
        }
        let o = origin.get(p);
        let program = o.map_or(UNKNOWN, |o| o.0.as_str()).to_string();
        let source = o.map_or(UNKNOWN, |o| o.1.as_str()).to_string();
        for key in [
            ("all".to_string(), String::new()),
            ("platform".to_string(), platform.clone()),
            ("program".to_string(), program),
            ("source".to_string(), source),
        ] {
            *live.entry(key).or_default().entry(p.as_str()).or_default() += 1;
        }
    }
    let want: BTreeMap<(String, String), [u64; 2]> = live
        .into_iter()
        .map(|(k, passes)| (k, [passes.len() as u64, passes.values().sum()]))
        .collect();
    let got: BTreeMap<(String, String), [u64; 2]> = table(
        &server
            .sql("SELECT dimension, value, active_passes, live_registrations FROM install_base WHERE active_passes > 0")
            .await,
        |r| {
            (
                text(&r["dimension"]).unwrap(),
                text(&r["value"]).unwrap_or_default(),
            )
        },
        ["active_passes", "live_registrations"],
    );
    assert_eq!(got, want, "install_base (live)");

    // funnel by the origin's source: issued, ever installed, ever scanned, ever redeemed
    let mut want: BTreeMap<String, [u64; 5]> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.ty() == "link.clicked") {
        want.entry(e.s("source").unwrap_or(UNKNOWN).to_string())
            .or_default()[0] += 1;
    }
    let mut stages: BTreeMap<&str, [bool; 4]> = BTreeMap::new();
    for e in evs {
        let i = match e.ty() {
            "pass.issued" => 0,
            "pass.installed" => 1,
            "scan" => 2,
            "redemption" => 3,
            _ => continue,
        };
        stages.entry(e.s("pass").unwrap()).or_default()[i] = true;
    }
    for (p, st) in stages {
        let source = origin.get(p).map_or(UNKNOWN, |o| o.1.as_str());
        let w = want.entry(source.to_string()).or_default();
        for (i, reached) in st.into_iter().enumerate() {
            w[i + 1] += reached as u64;
        }
    }
    let got: BTreeMap<String, [u64; 5]> = table(
        &server.sql("SELECT * FROM funnel").await,
        |r| text(&r["source"]).unwrap(),
        ["clicked", "issued", "installed", "scanned", "redeemed"],
    );
    assert_eq!(got, want, "funnel (live)");

    // all-time peaks: the busiest minute of each location (ties: the earliest), also for the
    // scans uploaded weeks after the watermark passed their minute
    let mut minutes: BTreeMap<&str, BTreeMap<i64, u64>> = BTreeMap::new();
    for e in evs.iter().filter(|e| e.ty() == "scan") {
        *minutes
            .entry(e.s("location").unwrap())
            .or_default()
            .entry(e.ts.div_euclid(60_000))
            .or_default() += 1;
    }
    let want: BTreeMap<String, [u64; 3]> = minutes
        .into_iter()
        .map(|(l, m)| {
            let (minute, peak) = m.iter().fold(
                (0, 0),
                |best, (&m, &c)| if c > best.1 { (m, c) } else { best },
            );
            (
                l.to_string(),
                [peak, (minute * 60_000) as u64, m.values().sum()],
            )
        })
        .collect();
    let got: BTreeMap<String, [u64; 3]> = table(
        &server
            .sql("SELECT location, peak_count, CAST(peak_minute AS BIGINT) AS peak_ms, scans FROM location_peaks WHERE \"window\" = 'all'")
            .await,
        |r| text(&r["location"]).unwrap(),
        ["peak_count", "peak_ms", "scans"],
    );
    assert_eq!(got, want, "location_peaks, all time (live)");
    assert!(
        want.values().any(|w| w[0] >= 40),
        "the late scans made a peak"
    );
}
