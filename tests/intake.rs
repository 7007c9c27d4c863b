//! `POST /api/v1/events`: per-line validation, broker acks, and de-duplication by event id.

mod common;

use std::time::Duration;

use common::{Nats, Server, ev};
use serde_json::Value;

#[tokio::test]
async fn bad_lines_are_refused_per_line_and_a_repeated_id_is_stored_once() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let body = [
        ev(
            "h1",
            "pass.issued",
            1_000,
            r#""pass":"A","program":"gold","source":"web""#,
        ),
        "{not json".to_string(),
        ev(
            "h2",
            "pass.installed",
            2_000,
            r#""pass":"A","device":"d","platform":"google""#,
        ),
        String::new(),
        ev("h3", "scan", 3_000, r#""pass":"A","location":"l""#),
        ev(
            "h1",
            "pass.issued",
            1_000,
            r#""pass":"A","program":"gold","source":"web""#,
        ),
    ]
    .join("\n");
    let r = server
        .post("/api/v1/events")
        .header("content-type", "application/x-ndjson")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let report: Value = r.json().await.unwrap();
    assert_eq!(report["accepted"], 2, "{report}");
    assert_eq!(
        report["duplicate"], 1,
        "the second h1 is a duplicate: {report}"
    );
    assert_eq!(report["rejected"], 2, "{report}");
    let errors = report["errors"].as_array().unwrap();
    assert_eq!(errors[0]["line"], 2);
    assert_eq!(errors[0]["reason"], "bad_json");
    assert_eq!(errors[1]["line"], 5);
    assert_eq!(errors[1]["reason"], "missing_field");
    assert!(
        errors[1]["error"]
            .as_str()
            .unwrap()
            .starts_with("event 5: field \"device\": missing"),
        "{report}"
    );

    // the answer came after the broker's ack: the events are in the stream now
    let js = nats.js().await;
    let info = js
        .get_stream("PASSPULSE_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    assert_eq!(info.state.messages, 2);

    // a producer's retry of the whole body stores nothing new
    let again: Value = server
        .post("/api/v1/events")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (again["accepted"].as_i64(), again["duplicate"].as_i64()),
        (Some(0), Some(3))
    );

    server.wait_events(2).await;
    let rows = server.sql("SELECT id, type FROM events ORDER BY id").await;
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["id"], "h1");
    assert_eq!(rows[1]["type"], "pass.installed");
    assert_eq!(
        server.metric("passpulse_http_events_rejected_total").await,
        4.0
    );

    let r = server
        .post("/api/v1/events")
        .header("content-type", "application/x-ndjson")
        .body("\n\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = server
        .post("/api/v1/events")
        .header("content-type", "application/x-ndjson")
        .body("{\"id\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// `n` valid `link.clicked` lines with ids `<prefix>0`, `<prefix>1`, …
fn clicks(prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            ev(
                &format!("{prefix}{i}"),
                "link.clicked",
                1_000 + i as i64,
                r#""source":"qr""#,
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

async fn post_ndjson(server: &Server, body: String) -> (u16, Value) {
    let r = server
        .post("/api/v1/events")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_any_size_is_answered_while_other_requests_are_served() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let pass = serde_json::json!({"program": "loyalty", "customer": "C1",
        "attributes": {"first_name": "Ada", "points": 1, "tier": "Silver",
                       "programme_name": "Pulse Rewards", "organization": "Pulse Coffee"}});
    let issue = || async {
        server
            .post("/api/v1/passes")
            .json(&pass)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    };
    common::eventually(Duration::from_secs(20), "issuer ready", || async {
        (issue().await != 503).then_some(())
    })
    .await;

    // more events than JetStream's in-flight ack limit (5,000), in two concurrent requests
    let limit = Duration::from_secs(60);
    let large = tokio::time::timeout(limit, post_ndjson(&server, clicks("large", 100_000)));
    let over = tokio::time::timeout(limit, post_ndjson(&server, clicks("over", 5_001)));
    let others = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let small = tokio::time::timeout(limit, post_ndjson(&server, clicks("small", 1)));
        let issued = tokio::time::timeout(limit, issue());
        tokio::join!(small, issued)
    };
    let (large, over, (small, issued)) = tokio::join!(large, over, others);
    let (small, issued) = (
        small.expect("a small intake request beside large ones is answered"),
        issued.expect("POST /api/v1/passes beside large intake requests is answered"),
    );
    assert_eq!(small.0, 200, "{}", small.1);
    assert_eq!(small.1["accepted"], 1);
    assert_eq!(issued, 201);
    let over = over.expect("5,001 lines are answered");
    assert_eq!((over.0, &over.1["accepted"]), (200, &Value::from(5_001)));
    let large = large.expect("100,000 lines are answered");
    assert_eq!(large.0, 200, "{}", large.1);
    assert_eq!(large.1["accepted"], 100_000);
    assert_eq!(large.1["errors"], serde_json::json!([]));

    let count = |prefix: &'static str| {
        let server = &server;
        async move {
            server
                .scalar(&format!(
                    "SELECT count(*) AS n FROM events WHERE id LIKE '{prefix}%'"
                ))
                .await
        }
    };
    common::eventually(Duration::from_secs(60), "every event stored", || async {
        (count("large").await == 100_000).then_some(())
    })
    .await;
    assert_eq!(count("over").await, 5_001);
    assert_eq!(count("small").await, 1);
}

#[tokio::test]
async fn the_line_errors_of_an_answer_are_capped_and_counted() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let mut body = "x\n".repeat(50_000);
    body.push_str(&clicks("good", 1));
    let r = server
        .post("/api/v1/events")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(text.len() < 32 * 1024, "{} bytes of answer", text.len());
    let report: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["accepted"], 1);
    assert_eq!(report["rejected"], 50_000);
    let errors = report["errors"].as_array().unwrap();
    let lines: Vec<_> = errors.iter().map(|e| e["line"].as_i64().unwrap()).collect();
    assert_eq!(
        lines,
        (1..=100).collect::<Vec<_>>(),
        "the first 100, by line"
    );
    assert_eq!(errors[0]["reason"], "bad_json");
    assert_eq!(report["errors_omitted"], 49_900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_the_broker_did_not_confirm_may_be_stored_and_is_safe_to_retry() {
    let mut nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let line = clicks("down", 1);
    nats.stop();
    let (status, report) = post_ndjson(&server, line.clone()).await;
    assert_eq!(status, 503, "{report}");
    assert_eq!(report["failed"], 1);
    let error = report["errors"][0]["error"].as_str().unwrap();
    assert!(
        error.contains("may have been stored; retrying is safe: ids are de-duplicated"),
        "{error}"
    );
    assert!(!error.contains("not stored"), "{error}");

    nats.restart();
    let retried = common::eventually(Duration::from_secs(30), "a stored retry", || async {
        let (status, report) = post_ndjson(&server, line.clone()).await;
        (status == 200).then_some(report)
    })
    .await;
    assert_eq!(
        retried["accepted"].as_i64().unwrap() + retried["duplicate"].as_i64().unwrap(),
        1,
        "{retried}"
    );
    server.wait_events(1).await;
}

/// A line stamped beyond `ingest.max_future_skew` ahead of now is refused in the answer, as the
/// consumer would refuse it, rather than accepted and then dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_stamped_too_far_ahead_is_refused_in_the_answer() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let body = [
        ev(
            "f1",
            "link.clicked",
            253_402_214_400_000 - 1,
            r#""source":"qr""#,
        ),
        ev("f2", "link.clicked", 1_000, r#""source":"qr""#),
    ]
    .join("\n");
    let (status, report) = post_ndjson(&server, body).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        (report["accepted"].as_u64(), report["rejected"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(report["errors"][0]["line"], 1);
    assert_eq!(report["errors"][0]["reason"], "invalid_value");
    server.wait_events(1).await;
}
