//! The live aggregate tables against values computed here, independently, from the generated
//! events: the exact install base by slice, and per-location peak minutes per window.

mod common;

use std::collections::{BTreeMap, HashMap};

use common::{Nats, Server, generate, js_publish};
use serde_json::Value;

const MINUTE: i64 = 60_000;

fn ts_of(v: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v["ts"].as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

#[tokio::test]
async fn install_base_and_location_peaks_match_an_independent_computation() {
    let dir = tempfile::tempdir().unwrap();
    let lines = generate(11, 30_000, 150.0, &dir.path().join("events.ndjson"));
    let events: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();

    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let js = nats.js().await;
    for chunk in lines.chunks(100) {
        js_publish(&js, "passpulse.events.batch", chunk.join("\n").into_bytes()).await;
    }
    server.wait_events(lines.len() as i64).await;

    // --- install base: the latest install/uninstall per (pass, device) decides -------------
    let s = |e: &Value, k: &str| e[k].as_str().map(str::to_string);
    let mut reg: HashMap<(String, String), (i64, usize, bool, String)> = HashMap::new();
    let mut program: HashMap<String, String> = HashMap::new();
    let mut source: HashMap<String, String> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let kind = e["type"].as_str().unwrap();
        let pass = s(e, "pass");
        match kind {
            "pass.issued" => {
                let p = pass.unwrap();
                program.insert(p.clone(), s(e, "program").unwrap());
                if let Some(src) = s(e, "source") {
                    source.insert(p, src);
                }
            }
            "pass.installed" | "pass.uninstalled" => {
                let key = (pass.unwrap(), s(e, "device").unwrap());
                let new = (
                    ts_of(e),
                    i,
                    kind == "pass.installed",
                    s(e, "platform").unwrap(),
                );
                let entry = reg.entry(key).or_insert(new.clone());
                if (new.0, new.1) >= (entry.0, entry.1) {
                    *entry = new;
                }
            }
            _ => {}
        }
    }
    let mut want: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    let mut live_by_pass: HashMap<String, Vec<String>> = HashMap::new();
    for ((pass, _), (_, _, live, platform)) in &reg {
        if *live {
            live_by_pass
                .entry(pass.clone())
                .or_default()
                .push(platform.clone());
        }
    }
    let unknown = "(unknown)".to_string();
    for (pass, platforms) in &live_by_pass {
        let n = platforms.len() as i64;
        let mut add = |dim: &str, val: &str, regs: i64| {
            let e = want.entry((dim.to_string(), val.to_string())).or_default();
            e.0 += 1;
            e.1 += regs;
        };
        add("all", "", n);
        for p in ["apple", "google"] {
            let k = platforms.iter().filter(|x| *x == p).count() as i64;
            if k > 0 {
                add("platform", p, k);
            }
        }
        add("program", program.get(pass).unwrap_or(&unknown), n);
        add("source", source.get(pass).unwrap_or(&unknown), n);
    }
    let rows = server.sql("SELECT * FROM install_base").await;
    let got: BTreeMap<(String, String), (i64, i64)> = rows
        .iter()
        .filter(|r| r["active_passes"].as_i64().unwrap() > 0)
        .map(|r| {
            (
                (
                    r["dimension"].as_str().unwrap().to_string(),
                    r["value"].as_str().unwrap_or("").to_string(),
                ),
                (
                    r["active_passes"].as_i64().unwrap(),
                    r["live_registrations"].as_i64().unwrap(),
                ),
            )
        })
        .collect();
    assert!(
        want[&("all".to_string(), String::new())].0 > 100,
        "the data set exercises installs"
    );
    assert_eq!(got, want);

    // --- location peaks: per-minute scan counts, windows relative to the watermark ------------
    let watermark = events.iter().map(ts_of).max().unwrap();
    let wm_min = watermark.div_euclid(MINUTE);
    let mut minutes: BTreeMap<String, BTreeMap<i64, i64>> = BTreeMap::new();
    for e in events.iter().filter(|e| e["type"] == "scan") {
        *minutes
            .entry(s(e, "location").unwrap())
            .or_default()
            .entry(ts_of(e).div_euclid(MINUTE))
            .or_default() += 1;
    }
    let mut want = Vec::new();
    for (loc, per_min) in &minutes {
        for (window, len) in [
            ("1h", 60),
            ("24h", 1440),
            ("7d", 10080),
            ("all", i64::MAX / 2),
        ] {
            let inside: Vec<(i64, i64)> = per_min
                .iter()
                .filter(|(m, _)| **m > wm_min - len && **m <= wm_min)
                .map(|(m, c)| (*m, *c))
                .collect();
            let scans: i64 = inside.iter().map(|(_, c)| c).sum();
            // the busiest minute; ties go to the earliest
            let peak = inside
                .iter()
                .fold(None::<(i64, i64)>, |best, &(m, c)| match best {
                    Some((_, bc)) if bc >= c => best,
                    _ => Some((m, c)),
                });
            want.push((
                loc.clone(),
                window.to_string(),
                peak.map_or(0, |p| p.1),
                peak.map(|p| p.0 * MINUTE),
                scans,
            ));
        }
    }
    let rows = server
        .sql("SELECT location, window, peak_count, CAST(peak_minute AS BIGINT) AS peak_ms, scans FROM location_peaks ORDER BY location, window")
        .await;
    let mut got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["location"].as_str().unwrap().to_string(),
                r["window"].as_str().unwrap().to_string(),
                r["peak_count"].as_i64().unwrap(),
                r["peak_ms"].as_i64(),
                r["scans"].as_i64().unwrap(),
            )
        })
        .collect();
    want.sort();
    got.sort();
    assert!(
        minutes.values().map(|m| m.len()).sum::<usize>() > 500,
        "the data set exercises scans"
    );
    assert_eq!(got, want);

    // the per-type per-minute counts add up to the totals
    let total = server
        .scalar("SELECT CAST(sum(count) AS BIGINT) AS n FROM event_counts WHERE type = 'scan'")
        .await;
    let recent = events
        .iter()
        .filter(|e| e["type"] == "scan" && ts_of(e).div_euclid(MINUTE) > wm_min - 10080)
        .count() as i64;
    assert_eq!(total, recent);
    // HyperLogLog distinct passes within its error bound
    let passes: std::collections::HashSet<&str> =
        events.iter().filter_map(|e| e["pass"].as_str()).collect();
    let est = server
        .scalar("SELECT passes FROM distinct_counts WHERE day IS NULL")
        .await as f64;
    assert!(
        (est - passes.len() as f64).abs() / (passes.len() as f64) < 0.03,
        "{est} vs {}",
        passes.len()
    );
}
