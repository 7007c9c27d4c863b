//! `POST /api/v1/events`: per-line validation, broker acks, and de-duplication by event id.

mod common;

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
        .body("\n\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = server
        .post("/api/v1/events")
        .body("{\"id\":1}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
