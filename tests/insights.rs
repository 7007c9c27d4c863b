//! Proof of the insights on generated data: `passpulse gen` output, made messy (retried
//! duplicates, late arrivals, removals of passes never issued), published through NATS to the
//! real server; every insight compared below is recomputed here in plain Rust from the events
//! as published, and must agree exactly (the HyperLogLog distinct counts: within four relative
//! standard errors).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use common::{Nats, Server, generate, js_publish};
use passpulse_engine::time::{DAY_MS, format_day, parse_rfc3339_millis};
use serde_json::Value;

/// One event as published, with its arrival position (the server orders ties by stream order).
struct Ev {
    v: Value,
    ts: i64,
    arrival: usize,
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
/// removed before its install arrives.
fn messy(lines: Vec<String>) -> Vec<String> {
    let (mut late, mut out) = (Vec::new(), Vec::new());
    let mut retries = Vec::new();
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
        let ts = parse_rfc3339_millis(v["ts"].as_str().unwrap()).unwrap();
        out.push(Ev { v, ts, arrival });
    }
    out
}

fn day(ts: i64) -> String {
    format!("{}T00:00:00Z", format_day(ts.div_euclid(DAY_MS) as i32))
}

/// Per pass and device, the type of the latest install/uninstall event (by time, then arrival).
fn latest_registrations(evs: &[Ev]) -> BTreeMap<(String, String), (String, String)> {
    let mut regs: Vec<&Ev> = evs
        .iter()
        .filter(|e| matches!(e.ty(), "pass.installed" | "pass.uninstalled"))
        .collect();
    regs.sort_by_key(|e| (e.ts, e.arrival));
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

/// Each pass's origin from its first `pass.issued`: (program, source, campaign, customer).
type Origin = (String, String, Option<String>, Option<String>);
fn origins(evs: &[Ev]) -> HashMap<String, Origin> {
    let mut issued: Vec<&Ev> = evs.iter().filter(|e| e.ty() == "pass.issued").collect();
    issued.sort_by_key(|e| (e.ts, e.arrival));
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
    for chunk in published.chunks(500) {
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
    let want: BTreeMap<String, [u64; 5]> = want
        .into_iter()
        .map(|(o, (c, v, r))| (o, [c[0], c[1], c[2], v.len() as u64, r.len() as u64]))
        .collect();
    let got: BTreeMap<String, [u64; 5]> = table(
        &get("offers").await,
        |r| text(&r["offer"]).unwrap(),
        [
            "views",
            "engagements",
            "redemptions",
            "passes_viewing",
            "passes_redeeming",
        ],
    );
    assert_eq!(got, want, "offers");

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
