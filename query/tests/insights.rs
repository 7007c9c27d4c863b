//! Every insight over the fixed data set `data/insights/sample.ndjson` (25 events), against figures worked
//! out by hand from that file (the reasoning is beside each expectation), unscoped and scoped.

use std::sync::Arc;

use futures::StreamExt;
use passpulse_engine::event::decode_message;
use passpulse_engine::{DecodedBatch, EngineConfig, new_engine};
use passpulse_query::format::{Encoder, Format};
use passpulse_query::insights::{InsightSettings, Scope, find};
use passpulse_query::{QueryConfig, QueryService};
use serde_json::{Value, json};

fn service() -> Arc<QueryService> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../data/insights/sample.ndjson"
    );
    let bytes = std::fs::read(path).expect("fixture");
    let mut batch = DecodedBatch::new();
    decode_message(&bytes, 1, &mut batch, |e, _| panic!("fixture: {e}"));
    let (mut w, engine) = new_engine(EngineConfig::default());
    w.apply(&batch);
    w.publish();
    assert_eq!(engine.events_applied(), 25);
    QueryService::new(engine, QueryConfig::default()).expect("query service")
}

/// Rows of `sql` (with `params`) as JSON objects.
fn rows(
    svc: &Arc<QueryService>,
    sql: String,
    params: Vec<(String, datafusion::common::ScalarValue)>,
) -> Vec<Value> {
    let s = svc.clone();
    let out = svc.runtime().block_on(async move {
        let (schema, mut stream) = s.start_with(&sql, params).await.expect(&sql);
        let mut enc = Encoder::new(Format::Json, &schema).unwrap();
        while let Some(b) = stream.next().await {
            enc.write(&b.expect("batch")).unwrap();
        }
        let mut bytes = enc.take();
        bytes.extend(enc.finish().unwrap());
        bytes
    });
    serde_json::from_slice(&out).expect("JSON rows")
}

fn insight(svc: &Arc<QueryService>, name: &str, scope: &Scope) -> Vec<Value> {
    let (sql, params) = find(name)
        .expect(name)
        .scoped_sql(scope, &svc.config().insights);
    rows(svc, sql, params)
}

/// The view's rows in `order` (a view's own ORDER BY does not survive being queried).
fn view(svc: &Arc<QueryService>, name: &str, order: &str) -> Vec<Value> {
    rows(
        svc,
        format!("SELECT * FROM insight_{name} ORDER BY {order}"),
        Vec::new(),
    )
}

fn scope(params: &[(&str, &str)]) -> Scope {
    let get = |k: &str| params.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
    Scope::parse(
        get("from"),
        get("to"),
        get("program"),
        get("source"),
        get("campaign"),
        get("location"),
    )
    .unwrap()
}

/// Picks `keys` of each row, in order, so expectations stay readable.
fn cols(rows: &[Value], keys: &[&str]) -> Vec<Vec<Value>> {
    rows.iter()
        .map(|r| keys.iter().map(|k| r[*k].clone()).collect())
        .collect()
}

#[test]
fn adoption_daily() {
    let svc = service();
    let all = view(&svc, "adoption_daily", "day");
    let keys = ["issued", "installs", "uninstalls", "passes_installed"];
    // 11-02: P1, P2, P3 issued; P1 and P2 installed. 11-03: P4 issued; P4 on D4 and D5;
    // P2 (D2), P4 (D4) and P5 (D6, never issued) removed.
    assert_eq!(
        cols(&all, &keys),
        [[3, 2, 0, 2], [1, 2, 3, 1]].map(|r| r.map(|v| json!(v)))
    );
    assert_eq!(
        all.iter()
            .map(|r| r["day"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["2026-11-02T00:00:00Z", "2026-11-03T00:00:00Z"]
    );
    assert_eq!(
        insight(&svc, "adoption_daily", &Scope::default()),
        all,
        "the view and the unscoped endpoint SQL agree"
    );
    let day2 = insight(&svc, "adoption_daily", &scope(&[("from", "2026-11-03")]));
    assert_eq!(
        cols(&day2, &keys),
        [[1, 2, 3, 1]].map(|r| r.map(|v| json!(v)))
    );
    // by origin: store passes are P3 and P4
    let store = insight(&svc, "adoption_daily", &scope(&[("source", "store")]));
    assert_eq!(
        cols(&store, &keys),
        [[1, 0, 0, 0], [1, 2, 1, 1]].map(|r| r.map(|v| json!(v)))
    );
}

#[test]
fn scans_by_location_and_heatmap_and_peaks() {
    let svc = service();
    let keys = ["location", "scans", "accepted", "rejected", "passes"];
    let all = view(&svc, "scans_by_location", "scans DESC, location");
    assert_eq!(
        cols(&all, &keys),
        [
            [json!("berlin"), json!(3), json!(3), json!(0), json!(1)],
            [json!("hamburg"), json!(2), json!(1), json!(1), json!(1)],
        ]
    );
    assert_eq!(all[0]["first_scan"], json!("2026-11-02T10:00:10Z"));
    assert_eq!(all[0]["last_scan"], json!("2026-11-03T10:00:00Z"));
    let hamburg = insight(
        &svc,
        "scans_by_location",
        &scope(&[("location", "hamburg")]),
    );
    assert_eq!(
        cols(&hamburg, &["location", "scans"]),
        [[json!("hamburg"), json!(2)]]
    );
    // the email passes (P1, P2) scanned only in Berlin
    let email = insight(&svc, "scans_by_location", &scope(&[("source", "email")]));
    assert_eq!(
        cols(&email, &["location", "scans"]),
        [[json!("berlin"), json!(3)]]
    );
    // usage per day: 11-02 scans s1, s2 and redemption r1 (value 5); 11-03 scans s5, s3
    // (rejected), s4
    let usage = view(&svc, "usage_daily", "day");
    let keys = [
        "day",
        "scans",
        "accepted",
        "rejected",
        "redemptions",
        "redeemed_value",
    ];
    assert_eq!(
        cols(&usage, &keys),
        [
            [
                json!("2026-11-02T00:00:00Z"),
                json!(2),
                json!(2),
                json!(0),
                json!(1),
                json!(5.0)
            ],
            [
                json!("2026-11-03T00:00:00Z"),
                json!(3),
                json!(2),
                json!(1),
                json!(0),
                json!(null)
            ],
        ]
    );
    // a value that would change the statement if it were pasted into the SQL matches nothing
    let odd = insight(
        &svc,
        "scans_by_location",
        &scope(&[("source", "x' OR '1'='1")]),
    );
    assert!(odd.is_empty(), "{odd:?}");

    // 2026-11-02 is a Monday (1), 2026-11-03 a Tuesday (2)
    let heat = view(&svc, "scan_heatmap", "weekday, hour");
    assert_eq!(
        cols(&heat, &["weekday", "hour", "scans"]),
        [[1, 10, 2], [2, 10, 1], [2, 14, 2]].map(|r| r.map(|v| json!(v)))
    );

    // Berlin: two scans in 11-02 10:00 (one in 11-03 10:00); Hamburg: 14:00 and 14:30 tie at one, the earlier wins
    let peaks = view(&svc, "location_peaks", "peak_minute_scans DESC, location");
    assert_eq!(
        cols(
            &peaks,
            &[
                "location",
                "peak_minute",
                "peak_minute_scans",
                "peak_hour",
                "peak_hour_scans"
            ]
        ),
        [
            [
                json!("berlin"),
                json!("2026-11-02T10:00:00Z"),
                json!(2),
                json!("2026-11-02T10:00:00Z"),
                json!(2)
            ],
            [
                json!("hamburg"),
                json!("2026-11-03T14:00:00Z"),
                json!(1),
                json!("2026-11-03T14:00:00Z"),
                json!(2)
            ],
        ]
    );
}

#[test]
fn channel_funnel() {
    let svc = service();
    let keys = [
        "source",
        "campaign",
        "clicked",
        "issued",
        "installed",
        "scanned",
        "redeemed",
    ];
    let all = view(
        &svc,
        "channel_funnel",
        "issued DESC, clicked DESC, source, campaign",
    );
    // email/spring: 3 clicks; P1 and P2 issued and installed; P1 scanned and redeemed.
    // store: P3 and P4 issued; P4 installed and scanned, no redemption. sms: 1 click only.
    // P5 was never issued, so it is in no funnel.
    assert_eq!(
        cols(&all, &keys),
        [
            [
                json!("email"),
                json!("spring"),
                json!(3),
                json!(2),
                json!(2),
                json!(1),
                json!(1)
            ],
            [
                json!("store"),
                Value::Null,
                json!(0),
                json!(2),
                json!(1),
                json!(1),
                json!(0)
            ],
            [
                json!("sms"),
                Value::Null,
                json!(1),
                json!(0),
                json!(0),
                json!(0),
                json!(0)
            ],
        ]
    );
    let rates = [
        "issued_per_click",
        "install_rate",
        "scan_rate",
        "redemption_rate",
    ];
    let f = |v: f64| json!(v);
    assert_eq!(
        cols(&all, &rates),
        [
            [f(2.0 / 3.0), f(1.0), f(0.5), f(1.0)],
            [Value::Null, f(0.5), f(1.0), f(0.0)],
            [f(0.0), Value::Null, Value::Null, Value::Null],
        ]
    );
    let email = insight(&svc, "channel_funnel", &scope(&[("campaign", "spring")]));
    assert_eq!(cols(&email, &keys), cols(&all[..1], &keys));
    // engagement of the installed passes: P1 and P2 viewed O1 (email), P4 none (store)
    let engaged = cols(&all, &["source", "engaged", "engagement_rate"]);
    assert_eq!(
        engaged,
        [
            [json!("email"), json!(2), json!(1.0)],
            [json!("store"), json!(0), json!(0.0)],
            [json!("sms"), json!(0), Value::Null],
        ]
    );
}

#[test]
fn passes() {
    let svc = service();
    let all = view(&svc, "passes", "pass");
    let keys = [
        "pass",
        "source",
        "installed_at",
        "first_used_at",
        "last_used_at",
        "removed_at",
        "scans",
        "redemptions",
        "devices",
        "state",
    ];
    let n = Value::Null;
    assert_eq!(
        cols(&all, &keys),
        [
            [
                json!("P1"),
                json!("email"),
                json!("2026-11-02T09:05:00Z"),
                json!("2026-11-02T10:00:10Z"),
                json!("2026-11-03T10:00:00Z"),
                n.clone(),
                json!(3),
                json!(1),
                json!(1),
                json!("installed"),
            ],
            [
                json!("P2"),
                json!("email"),
                json!("2026-11-02T09:20:00Z"),
                n.clone(),
                n.clone(),
                json!("2026-11-03T08:00:00Z"),
                json!(0),
                json!(0),
                json!(0),
                json!("removed"),
            ],
            [
                json!("P3"),
                json!("store"),
                n.clone(),
                n.clone(),
                n.clone(),
                n.clone(),
                json!(0),
                json!(0),
                json!(0),
                json!("never installed"),
            ],
            // D4 removed, D5 still there: installed, no removal time
            [
                json!("P4"),
                json!("store"),
                json!("2026-11-03T12:05:00Z"),
                json!("2026-11-03T14:00:00Z"),
                json!("2026-11-03T14:30:00Z"),
                n.clone(),
                json!(2),
                json!(0),
                json!(1),
                json!("installed"),
            ],
            // removed without an issue or install event in the data
            [
                json!("P5"),
                n.clone(),
                n.clone(),
                n.clone(),
                n.clone(),
                json!("2026-11-03T15:00:00Z"),
                json!(0),
                json!(0),
                json!(0),
                json!("removed"),
            ],
        ]
    );
    assert_eq!(all[0]["program"], json!("loyalty"));
    assert_eq!(all[0]["campaign"], json!("spring"));
    assert_eq!(all[0]["issued_at"], json!("2026-11-02T09:00:00Z"));
}

fn approx(v: &Value, want: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
    assert!((got - want).abs() < 1e-9, "{got} != {want}");
}

#[test]
fn postal_list() {
    let svc = service();
    // P2 removed, P3 never installed; P5 is not installed either but has no customer
    let rows = view(&svc, "postal_list", "customer");
    assert_eq!(
        cols(&rows, &["customer", "pass", "state"]),
        [
            [json!("C2"), json!("P2"), json!("removed")],
            [json!("C3"), json!("P3"), json!("never installed")],
        ]
    );
}

#[test]
fn uninstall_patterns_removals_and_survival() {
    let svc = service();
    // P2 on D2: 11-02 09:20 → 11-03 08:00 = 22 h 40 min; P4 on D4: 12:05 → 13:00 = 55 min;
    // P5 on D6: removed with no install before it
    let removals = view(&svc, "removals", "removed_at");
    assert_eq!(
        cols(&removals, &["pass", "device", "installed_at"]),
        [
            [json!("P2"), json!("D2"), json!("2026-11-02T09:20:00Z")],
            [json!("P4"), json!("D4"), json!("2026-11-03T12:05:00Z")],
            [json!("P5"), json!("D6"), Value::Null],
        ]
    );
    approx(&removals[0]["hours_installed"], 22.0 + 40.0 / 60.0);
    approx(&removals[1]["hours_installed"], 55.0 / 60.0);
    assert_eq!(removals[2]["hours_installed"], Value::Null);

    let by_source = view(&svc, "uninstall_patterns", "source NULLS LAST");
    assert_eq!(
        cols(&by_source, &["source", "installs", "removals"]),
        [
            [json!("email"), json!(2), json!(1)],
            [json!("store"), json!(2), json!(1)],
            [Value::Null, json!(0), json!(1)],
        ]
    );
    approx(&by_source[0]["uninstall_rate"], 0.5);
    approx(&by_source[0]["median_hours_installed"], 22.0 + 40.0 / 60.0);
    approx(&by_source[0]["p90_hours_installed"], 22.0 + 40.0 / 60.0);
    approx(&by_source[1]["median_hours_installed"], 55.0 / 60.0);
    assert_eq!(by_source[2]["uninstall_rate"], Value::Null);

    // the data ends 11-03 15:00: only P1 and P2 have a full day after their first install
    // (P4's day is not over); P1 is still installed a day later, P2 was removed
    let survival = view(&svc, "survival", "cohort_week, source, days");
    assert_eq!(
        cols(
            &survival,
            &["cohort_week", "source", "days", "passes", "still_installed"]
        ),
        [[
            json!("2026-11-02T00:00:00Z"),
            json!("email"),
            json!(1),
            json!(2),
            json!(1)
        ]]
    );
    approx(&survival[0]["survival"], 0.5);
}

#[test]
fn offers_frequency_and_repeat_visits() {
    let svc = service();
    let offers = view(&svc, "offers", "offer");
    assert_eq!(
        cols(
            &offers,
            &[
                "offer",
                "views",
                "engagements",
                "redemptions",
                "passes_viewing",
                "passes_redeeming"
            ]
        ),
        [[
            json!("O1"),
            json!(2),
            json!(1),
            json!(1),
            json!(2),
            json!(1)
        ]]
    );
    approx(&offers[0]["redeemed_value"], 5.0);
    approx(&offers[0]["redemption_rate"], 0.5);

    // week of Monday 11-02: P1 scanned 3 times, P4 twice
    let freq = view(&svc, "interaction_frequency", "week, scans_per_pass");
    assert_eq!(
        cols(&freq, &["week", "scans_per_pass", "passes"]),
        [
            [json!("2026-11-02T00:00:00Z"), json!(2), json!(1)],
            [json!("2026-11-02T00:00:00Z"), json!(3), json!(1)],
        ]
    );
    // P1 was scanned on 11-02 and 11-03, P4 on 11-03 only
    let repeat = view(&svc, "repeat_visits", "passes_scanned");
    assert_eq!(
        cols(&repeat, &["passes_scanned", "repeat_passes"]),
        [[json!(2), json!(1)]]
    );
    approx(&repeat[0]["repeat_visit_rate"], 0.5);
    let hamburg = insight(&svc, "repeat_visits", &scope(&[("location", "hamburg")]));
    assert_eq!(
        cols(&hamburg, &["passes_scanned", "repeat_passes"]),
        [[json!(1), json!(0)]]
    );
}

/// An insight over every event with other settings than the service's.
fn with_settings(svc: &Arc<QueryService>, name: &str, settings: &InsightSettings) -> Vec<Value> {
    let (sql, params) = find(name)
        .expect(name)
        .scoped_sql(&Scope::default(), settings);
    rows(svc, sql, params)
}

#[test]
fn active_and_estimated_base() {
    let svc = service();
    // 11-02: P1 on D1 (apple) and P2 on D2 (google) installed, both email. 11-03: P2 removed;
    // P4 (store) on D4 and D5 installed, D4 removed; P5's removal on D6 ends no install.
    let daily = view(
        &svc,
        "active_base_daily",
        "day, platform, program NULLS LAST, source NULLS LAST",
    );
    let n = Value::Null;
    assert_eq!(
        cols(
            &daily,
            &[
                "platform", "program", "source", "installs", "removals", "active"
            ]
        ),
        [
            [
                json!("apple"),
                json!("loyalty"),
                json!("email"),
                json!(1),
                json!(0),
                json!(1)
            ],
            [
                json!("google"),
                json!("loyalty"),
                json!("email"),
                json!(1),
                json!(0),
                json!(1)
            ],
            [
                json!("apple"),
                json!("loyalty"),
                json!("store"),
                json!(2),
                json!(1),
                json!(1)
            ],
            [
                json!("google"),
                json!("loyalty"),
                json!("email"),
                json!(0),
                json!(1),
                json!(0)
            ],
            [
                json!("google"),
                n.clone(),
                n.clone(),
                json!(0),
                json!(0),
                json!(0)
            ],
        ]
    );

    // active now: P1 on D1 and P4 on D5; APNs reported D5 gone at 14:45, after its install
    let keys = [
        "platform",
        "source",
        "active",
        "devices_gone",
        "devices_silent",
        "estimated_active",
    ];
    // (platform, source) then the four counts
    let counts = |rows: &[Value]| -> Vec<(String, String, [i64; 4])> {
        cols(rows, &keys)
            .into_iter()
            .map(|c| {
                let n = |i: usize| c[i].as_i64().unwrap();
                let t = |i: usize| c[i].as_str().unwrap().to_string();
                (t(0), t(1), [n(2), n(3), n(4), n(5)])
            })
            .collect()
    };
    let store = ("apple".to_string(), "store".to_string(), [1, 1, 0, 0]);
    let est = view(&svc, "estimated_active_base", "platform, source");
    assert_eq!(
        counts(&est),
        [
            ("apple".into(), "email".into(), [1, 0, 0, 1]),
            store.clone()
        ]
    );
    // with a one-hour silent period D1 (last seen 11-02 09:05; the data ends 11-03 15:00) is
    // silent too
    let hour = InsightSettings {
        silent_after_ms: 3_600_000,
        ..InsightSettings::default()
    };
    let est = with_settings(&svc, "estimated_active_base", &hour);
    assert_eq!(
        counts(&est),
        [("apple".into(), "email".into(), [1, 0, 1, 0]), store]
    );
}

#[test]
fn postal_savings_scanners_and_activity() {
    let svc = service();
    // C1 (P1) and C4 (P4) have a pass installed; C2 and C3 need a letter
    let savings = view(&svc, "postal_savings", "customers");
    assert_eq!(
        cols(
            &savings,
            &["customers", "letters_needed", "letters_avoided"]
        ),
        [[json!(4), json!(2), json!(2)]]
    );
    approx(&savings[0]["saving"], 2.0);
    let cheaper = InsightSettings {
        letter_cost: 0.85,
        ..InsightSettings::default()
    };
    let savings = with_settings(&svc, "postal_savings", &cheaper);
    approx(&savings[0]["cost_per_letter"], 0.85);
    approx(&savings[0]["saving"], 1.7);

    let scanners = view(&svc, "scans_by_scanner", "scans DESC, location");
    assert_eq!(
        cols(
            &scanners,
            &[
                "location", "scanner", "operator", "scans", "accepted", "rejected"
            ]
        ),
        [
            [
                json!("berlin"),
                json!("berlin-1"),
                json!("op1"),
                json!(3),
                json!(3),
                json!(0)
            ],
            [
                json!("hamburg"),
                json!("hamburg-1"),
                json!("op2"),
                json!(2),
                json!(1),
                json!(1)
            ],
        ]
    );

    // newest first; a page of 2 after the newest
    let all = insight(&svc, "activity", &Scope::default());
    assert_eq!(all.len(), 25);
    assert_eq!(all[0]["id"], json!("u5"));
    let page = Scope::default().with_page(Some("2"), Some("1")).unwrap();
    let page = insight(&svc, "activity", &page);
    assert_eq!(
        page.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(),
        [json!("x1"), json!("s4")]
    );
}

/// Every insight's full output on the fixture, pinned in `data/insights/golden/<name>.json`: a
/// change to any view's SQL that changes any figure shows here. After a deliberate change, run
/// with `PASSPULSE_UPDATE_GOLDEN=1` and review the diff of the golden files.
#[test]
fn golden_files_pin_every_view() {
    let svc = service();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/insights/golden");
    let update = std::env::var_os("PASSPULSE_UPDATE_GOLDEN").is_some();
    let mut stale = Vec::new();
    for i in passpulse_query::insights::INSIGHTS {
        let got = insight(&svc, i.name, &Scope::default());
        let path = dir.join(format!("{}.json", i.name));
        let text = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if update {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (PASSPULSE_UPDATE_GOLDEN=1 writes it)",
                path.display()
            )
        });
        if want != text {
            stale.push(i.name);
        }
    }
    assert!(
        stale.is_empty(),
        "insights whose output differs from their golden file: {stale:?}"
    );
}
