//! Every insight over the fixed data set `data/insights/sample.ndjson` (30 events in three
//! messages), against figures worked out by hand from that file (the reasoning is beside each
//! expectation), unscoped and scoped.
//!
//! The fixture is messy on purpose: the first message is a re-issue of P1 (another programme,
//! source, campaign and customer) stamped a day after P1's first issue, so arrival order and event
//! time disagree; the last message issues P6 twice with the same `ts` (same message, so same
//! `seq`: the event `id` decides, and the later id comes first in the file), redeems O1 on P4,
//! which never viewed it, and carries hostile strings (`=1+2`, `<b>`, CRLF) as source and
//! customer.

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
    let text = std::fs::read_to_string(path).expect("fixture");
    service_from(&text, 30)
}

/// A service over `text`, NDJSON in which a blank line ends a message: the events of one message
/// share its stream sequence, and the messages' sequences are 1, 2, 3, … in the order they come.
fn service_from(text: &str, events: u64) -> Arc<QueryService> {
    let mut batch = DecodedBatch::new();
    for (i, message) in text.split("\n\n").enumerate() {
        decode_message(message.as_bytes(), i as u64 + 1, &mut batch, |e, _| {
            panic!("fixture: {e}")
        });
    }
    let (mut w, engine) = new_engine(EngineConfig::default());
    // the production path: the de-duplication stage, then the writer
    let mut dedup = w.take_dedup().expect("a new writer de-duplicates");
    dedup.filter(&mut batch);
    w.apply(&batch);
    w.publish();
    assert_eq!(engine.events_applied(), events);
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
fn pass_origin_is_the_first_issue_by_time_then_sequence_then_id() {
    let svc = service();
    let origin = rows(
        &svc,
        "SELECT * FROM pass_origin ORDER BY pass".into(),
        Vec::new(),
    );
    let keys = [
        "pass", "program", "source", "campaign", "customer", "issue_id",
    ];
    let n = Value::Null;
    assert_eq!(
        cols(&origin, &keys),
        [
            // i1 (11-02 09:00, message 2) before the re-issue i1r (11-03, message 1, arrived
            // first): loyalty/email/spring/C1, not vip/web/autumn/C9
            [
                json!("P1"),
                json!("loyalty"),
                json!("email"),
                json!("spring"),
                json!("C1"),
                json!("i1")
            ],
            [
                json!("P2"),
                json!("loyalty"),
                json!("email"),
                json!("spring"),
                json!("C2"),
                json!("i2")
            ],
            [
                json!("P3"),
                json!("loyalty"),
                json!("store"),
                n.clone(),
                json!("C3"),
                json!("i3")
            ],
            [
                json!("P4"),
                json!("loyalty"),
                json!("store"),
                n.clone(),
                json!("C4"),
                json!("i4")
            ],
            // i6a and i6b: same ts, same message; the id decides (i6a), not the file order
            [
                json!("P6"),
                json!("loyalty"),
                json!("=1+2"),
                json!("winter"),
                json!("<b>C6</b>"),
                json!("i6a")
            ],
        ]
    );
    assert_eq!(origin[0]["issued_at"], json!("2026-11-02T09:00:00Z"));
}

#[test]
fn adoption_daily() {
    let svc = service();
    let all = view(&svc, "adoption_daily", "day");
    let keys = [
        "issued",
        "reissues",
        "installs",
        "uninstalls",
        "passes_installed",
    ];
    // 11-02: P1, P2, P3 issued; P1 and P2 installed. 11-03: four issues: P4, P6 twice (i6a and
    // i6b) and P1 again (i1r); i1r and i6b are re-issues (P1 was first issued on 11-02; i6a and
    // i6b share ts and message, and the id i6a comes first). P4 on D4 and D5; P2 (D2), P4 (D4)
    // and P5 (D6, never issued) removed.
    assert_eq!(
        cols(&all, &keys),
        [[3, 0, 2, 0, 2], [4, 2, 2, 3, 1]].map(|r| r.map(|v| json!(v)))
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
    // a re-issue stays a re-issue when its pass's first issue is outside the scope
    assert_eq!(
        cols(&day2, &keys),
        [[4, 2, 2, 3, 1]].map(|r| r.map(|v| json!(v)))
    );
    // by origin: store passes are P3 and P4
    let store = insight(&svc, "adoption_daily", &scope(&[("source", "store")]));
    assert_eq!(
        cols(&store, &keys),
        [[1, 0, 0, 0, 0], [1, 0, 2, 1, 1]].map(|r| r.map(|v| json!(v)))
    );
    // P1 stays an email pass although its re-issue (source web) arrived first: its install is
    // here, its re-issue is not (that event carries its own source, web)
    let email = insight(&svc, "adoption_daily", &scope(&[("source", "email")]));
    assert_eq!(
        cols(&email, &keys),
        [[2, 0, 2, 0, 2], [0, 0, 0, 1, 0]].map(|r| r.map(|v| json!(v)))
    );
    let web = insight(&svc, "adoption_daily", &scope(&[("source", "web")]));
    assert_eq!(
        cols(&web, &keys),
        [[1, 1, 0, 0, 0]].map(|r| r.map(|v| json!(v)))
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
    // (rejected), s4 and redemption r2 (value 3)
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
                json!(1),
                json!(3.0)
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
    // email/spring: 3 clicks; P1 and P2 issued and installed; P1 scanned and redeemed (P1's
    // re-issue with web/autumn moves it nowhere). store: P3 and P4 issued; P4 installed, scanned
    // and redeemed (r2). =1+2/winter: P6, by its first issue i6a (i6b says qr/flyer), never
    // installed. sms: 1 click only. P5 was never issued, so it is in no funnel.
    let n = Value::Null;
    let funnel = |source: Value, campaign: Value, counts: [i64; 5]| -> Vec<Value> {
        [source, campaign]
            .into_iter()
            .chain(counts.map(|c| json!(c)))
            .collect()
    };
    assert_eq!(
        cols(&all, &keys),
        [
            funnel(json!("email"), json!("spring"), [3, 2, 2, 1, 1]),
            funnel(json!("store"), n.clone(), [0, 2, 1, 1, 1]),
            funnel(json!("=1+2"), json!("winter"), [0, 1, 0, 0, 0]),
            funnel(json!("sms"), n.clone(), [1, 0, 0, 0, 0]),
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
            [n.clone(), f(0.5), f(1.0), f(1.0)],
            [n.clone(), f(0.0), n.clone(), n.clone()],
            [f(0.0), n.clone(), n.clone(), n.clone()],
        ]
    );
    let email = insight(&svc, "channel_funnel", &scope(&[("campaign", "spring")]));
    assert_eq!(cols(&email, &keys), cols(&all[..1], &keys));
    // from 11-03 on, the passes first issued in scope are P4 and P6: P1's re-issue (11-03 09:00)
    // is not an issue of a new pass, and P3 was issued the day before
    let day2 = insight(&svc, "channel_funnel", &scope(&[("from", "2026-11-03")]));
    assert_eq!(
        cols(&day2, &keys),
        [
            funnel(json!("=1+2"), json!("winter"), [0, 1, 0, 0, 0]),
            funnel(json!("store"), n.clone(), [0, 1, 1, 1, 1]),
            funnel(json!("sms"), n.clone(), [1, 0, 0, 0, 0]),
        ]
    );
    // engagement of the installed passes: P1 and P2 viewed O1 (email), P4 none (store), P6 is
    // not installed
    let engaged = cols(&all, &["source", "engaged", "engagement_rate"]);
    assert_eq!(
        engaged,
        [
            [json!("email"), json!(2), json!(1.0)],
            [json!("store"), json!(0), json!(0.0)],
            [json!("=1+2"), json!(0), n.clone()],
            [json!("sms"), json!(0), n],
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
            // D4 removed, D5 still there: installed, no removal time; last used by r2
            [
                json!("P4"),
                json!("store"),
                json!("2026-11-03T12:05:00Z"),
                json!("2026-11-03T14:00:00Z"),
                json!("2026-11-03T14:40:00Z"),
                n.clone(),
                json!(2),
                json!(1),
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
            // issued twice in one message, never installed: its origin is i6a
            [
                json!("P6"),
                json!("=1+2"),
                n.clone(),
                n.clone(),
                n.clone(),
                n.clone(),
                json!(0),
                json!(0),
                json!(0),
                json!("never installed"),
            ],
        ]
    );
    // every origin field from the same first issue (i1, i6a), never a mix of issues
    let origin = ["program", "source", "campaign", "customer", "issued_at"];
    assert_eq!(
        cols(&all, &origin)[0],
        [
            json!("loyalty"),
            json!("email"),
            json!("spring"),
            json!("C1"),
            json!("2026-11-02T09:00:00Z")
        ]
    );
    assert_eq!(
        cols(&all, &origin)[5],
        [
            json!("loyalty"),
            json!("=1+2"),
            json!("winter"),
            json!("<b>C6</b>"),
            json!("2026-11-03T11:30:00Z")
        ]
    );
}

fn approx(v: &Value, want: f64) {
    let got = v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"));
    assert!((got - want).abs() < 1e-9, "{got} != {want}");
}

#[test]
fn postal_list() {
    let svc = service();
    // P2 removed, P3 and P6 never installed; P5 is not installed either but has no customer.
    // P6's customer and source are those of its first issue i6a, not i6b's "C7\r\n=cmd…"/qr
    // ('<' sorts before 'C')
    let rows = view(&svc, "postal_list", "customer");
    assert_eq!(
        cols(&rows, &["customer", "pass", "program", "source", "state"]),
        [
            [
                json!("<b>C6</b>"),
                json!("P6"),
                json!("loyalty"),
                json!("=1+2"),
                json!("never installed")
            ],
            [
                json!("C2"),
                json!("P2"),
                json!("loyalty"),
                json!("email"),
                json!("removed")
            ],
            [
                json!("C3"),
                json!("P3"),
                json!("loyalty"),
                json!("store"),
                json!("never installed")
            ],
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

/// Percentiles are exact linear interpolation between closest ranks: the p-quantile of n sorted
/// values is at 0-based position p·(n − 1). On data of its own, so the main fixture's figures stay
/// small.
#[test]
fn uninstall_percentiles_are_exact_linear_interpolation() {
    // pass X (source eight) is removed from 8 devices after 1, 2, 3, 4, 5, 6, 10 and 110 hours;
    // pass Y (source three) from 3 devices after 7, 1 and 2 hours
    let start = 1_793_491_200_000_i64; // 2026-11-01T00:00:00Z
    let mut text = String::new();
    for (pass, source, hours) in [
        ("X", "eight", &[1, 2, 3, 4, 5, 6, 10, 110][..]),
        ("Y", "three", &[7, 1, 2][..]),
    ] {
        text += &format!(
            r#"{{"id":"i-{pass}","type":"pass.issued","ts":{start},"pass":"{pass}","program":"p","source":"{source}"}}"#
        );
        text.push('\n');
        for (k, h) in hours.iter().enumerate() {
            let (on, off) = (start + 60_000, start + 60_000 + h * 3_600_000);
            text += &format!(
                r#"{{"id":"n-{pass}{k}","type":"pass.installed","ts":{on},"pass":"{pass}","device":"D{pass}{k}","platform":"apple"}}"#
            );
            text.push('\n');
            text += &format!(
                r#"{{"id":"u-{pass}{k}","type":"pass.uninstalled","ts":{off},"pass":"{pass}","device":"D{pass}{k}","platform":"apple"}}"#
            );
            text.push('\n');
        }
    }
    let svc = service_from(&text, 24);
    let rows = view(&svc, "uninstall_patterns", "source");
    assert_eq!(
        cols(&rows, &["source", "installs", "removals"]),
        [
            [json!("eight"), json!(8), json!(8)],
            [json!("three"), json!(3), json!(3)],
        ]
    );
    // eight: median at 3.5, between 4 and 5: 4.5; p90 at 0.9 × 7 = 6.3, between 10 and 110:
    // 10 + 0.3 × 100 = 40 (DataFusion's percentile_cont, which truncates the fraction to 1e-6,
    // says 39.9999)
    approx(&rows[0]["median_hours_installed"], 4.5);
    approx(&rows[0]["p90_hours_installed"], 40.0);
    // three (sorted 1, 2, 7): median at 1: 2; p90 at 1.8: 2 + 0.8 × 5 = 6
    approx(&rows[1]["median_hours_installed"], 2.0);
    approx(&rows[1]["p90_hours_installed"], 6.0);
}

#[test]
fn offers_frequency_and_repeat_visits() {
    let svc = service();
    // O1: viewed by P1 (v1) and P2 (v2); engaged by P1 (g1, g2); redeemed by P1 (r1, 5), which
    // viewed it, and by P4 (r2, 3), which never did. The rate is of the viewers: 1 of 2 (P4 in
    // the numerator alone would make it 2 of 2).
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
                "passes_redeeming",
                "viewers_redeeming",
                "redeemed_without_view"
            ]
        ),
        [[
            json!("O1"),
            json!(2),
            json!(2),
            json!(2),
            json!(2),
            json!(2),
            json!(1),
            json!(1)
        ]]
    );
    approx(&offers[0]["redeemed_value"], 8.0);
    approx(&offers[0]["redemption_rate"], 0.5);
    // only the redemption in Hamburg (P4, no view): nobody viewing, so no rate
    let hamburg = insight(&svc, "offers", &scope(&[("location", "hamburg")]));
    assert_eq!(
        cols(
            &hamburg,
            &[
                "passes_viewing",
                "passes_redeeming",
                "redeemed_without_view",
                "redemption_rate"
            ]
        ),
        [[json!(0), json!(1), json!(1), Value::Null]]
    );

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
    // P4 (store) on D4 and D5 installed, D4 removed; P5's removal on D6 ends no install, so it
    // changes nothing and has no row.
    let daily = view(
        &svc,
        "active_base_daily",
        "day, platform, program NULLS LAST, source NULLS LAST",
    );
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
    // D1 was last heard from at 11-03 14:30 (g2, an offer.engaged naming it: any event but a
    // scan or redemption that names the device is a sign of life), the data ends at 15:00: not
    // silent after an hour, silent after 20 minutes
    let silent_after = |minutes: i64| InsightSettings {
        silent_after_ms: minutes * 60_000,
        ..InsightSettings::default()
    };
    let est = with_settings(&svc, "estimated_active_base", &silent_after(60));
    assert_eq!(
        counts(&est),
        [
            ("apple".into(), "email".into(), [1, 0, 0, 1]),
            store.clone()
        ]
    );
    let est = with_settings(&svc, "estimated_active_base", &silent_after(20));
    assert_eq!(
        counts(&est),
        [("apple".into(), "email".into(), [1, 0, 1, 0]), store]
    );
}

#[test]
fn postal_savings_scanners_and_activity() {
    let svc = service();
    // C1 (P1) and C4 (P4) have a pass installed; C2, C3 and P6's <b>C6</b> need a letter (C9,
    // on P1's re-issue, is no customer of P1's: the origin's customer is C1)
    let savings = view(&svc, "postal_savings", "customers");
    assert_eq!(
        cols(
            &savings,
            &["customers", "letters_needed", "letters_avoided"]
        ),
        [[json!(5), json!(3), json!(2)]]
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
    assert_eq!(all.len(), 30);
    assert_eq!(all[0]["id"], json!("u5"));
    let page = Scope::default().with_page(Some("2"), Some("1")).unwrap();
    let page = insight(&svc, "activity", &page);
    assert_eq!(
        page.iter().map(|r| r["id"].clone()).collect::<Vec<_>>(),
        [json!("x1"), json!("r2")]
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
