//! Events over JetStream into the engine: exact counts by type, NDJSON batches, and dead letters
//! for every kind of bad input without losing the good events around them.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use common::{Nats, Server, ev, eventually, js_publish};
use futures::StreamExt;

#[tokio::test]
async fn single_events_and_ndjson_batches_are_counted_exactly_by_type() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let js = nats.js().await;

    let singles = [
        ev("s1", "pass.issued", 1_000, r#""pass":"A","program":"gold""#),
        ev(
            "s2",
            "pass.installed",
            2_000,
            r#""pass":"A","device":"d1","platform":"apple""#,
        ),
        ev(
            "s3",
            "scan",
            3_000,
            r#""pass":"A","location":"berlin","device":"lane1","operator":"op1","result":"accepted""#,
        ),
        ev(
            "s4",
            "scan",
            4_000,
            r#""pass":"A","location":"berlin","device":"lane1","operator":"op1""#,
        ),
        ev(
            "s5",
            "link.clicked",
            5_000,
            r#""source":"sms","campaign":"spring""#,
        ),
    ];
    for line in &singles {
        let kind: serde_json::Value = serde_json::from_str(line).unwrap();
        let subject = format!("passpulse.events.{}", kind["type"].as_str().unwrap());
        js_publish(&js, &subject, line.clone().into_bytes()).await;
    }
    let batch: Vec<String> = (0..10)
        .map(|i| {
            if i % 2 == 0 {
                ev(
                    &format!("b{i}"),
                    "redemption",
                    10_000 + i,
                    r#""pass":"A","offer":"coffee","location":"berlin","value":2.5"#,
                )
            } else {
                ev(
                    &format!("b{i}"),
                    "offer.viewed",
                    10_000 + i,
                    r#""pass":"A","offer":"coffee""#,
                )
            }
        })
        .collect();
    js_publish(&js, "passpulse.events.batch", batch.join("\n").into_bytes()).await;

    server.wait_events(15).await;
    let rows = server
        .sql("SELECT type, count(*) AS n FROM events GROUP BY type ORDER BY type")
        .await;
    let counts: BTreeMap<String, i64> = rows
        .iter()
        .map(|r| {
            (
                r["type"].as_str().unwrap().to_string(),
                r["n"].as_i64().unwrap(),
            )
        })
        .collect();
    let expected: BTreeMap<String, i64> = [
        ("link.clicked", 1),
        ("offer.viewed", 5),
        ("pass.installed", 1),
        ("pass.issued", 1),
        ("redemption", 5),
        ("scan", 2),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(counts, expected);

    // every field of the event is a column, plus seq and ingested_at
    let row = &server.sql("SELECT * FROM events WHERE id = 's3'").await[0];
    assert_eq!(row["seq"], 3);
    assert_eq!(row["ts"], "1970-01-01T00:00:03Z");
    assert_eq!(row["location"], "berlin");
    assert_eq!(row["result"], "accepted");
    assert!(row["ingested_at"].is_string());
    assert!(row["attrs"].is_null());
    let batch_seqs = server
        .sql("SELECT DISTINCT seq FROM events WHERE type = 'redemption'")
        .await;
    assert_eq!(
        batch_seqs.len(),
        1,
        "a batch's events share its message's sequence"
    );
    assert_eq!(
        server
            .scalar("SELECT CAST(sum(value) * 10 AS BIGINT) AS v FROM events")
            .await,
        125
    );

    // the live aggregates saw the same events
    let stats: serde_json::Value = server
        .get("/api/v1/stats")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["events"], 15);
    assert_eq!(stats["by_type"]["scan"], 2);
    assert_eq!(stats["install_base"]["all"]["active_passes"], 1);
    assert_eq!(
        server
            .metric("passpulse_events_ingested_total{type=\"redemption\"}")
            .await,
        5.0
    );
}

#[tokio::test]
async fn bad_input_is_dead_lettered_with_its_reason_and_never_stops_the_pipeline() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let js = nats.js().await;

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("bad_json", br#"{"id":"x1","type":"scan""#.to_vec()),
        (
            "unknown_type",
            ev("x2", "pass.exploded", 1, "").into_bytes(),
        ),
        (
            "missing_field",
            ev(
                "x3",
                "pass.installed",
                1,
                r#""pass":"A","platform":"apple""#,
            )
            .into_bytes(),
        ),
        (
            "wrong_type",
            br#"{"id":"x4","type":"pass.updated","ts":1,"pass":42}"#.to_vec(),
        ),
        (
            "bad_utf8",
            b"{\"id\":\"x5\xff\",\"type\":\"pass.updated\",\"ts\":1,\"pass\":\"A\"}".to_vec(),
        ),
        (
            "unknown_field",
            ev("x6", "pass.updated", 1, r#""pass":"A","colour":"red""#).into_bytes(),
        ),
    ];
    for (_, payload) in &bad {
        js_publish(&js, "passpulse.events.pass.updated", payload.clone()).await;
    }
    // a good batch with one bad line in the middle keeps its good lines
    let bad_line = r#"{"id":"x7","type":"pass.updated","ts":"yesterday","pass":"A"}"#.to_string();
    let lines = [
        ev("g1", "pass.updated", 1_000, r#""pass":"A""#),
        bad_line.clone(),
        ev("g2", "pass.updated", 2_000, r#""pass":"A""#),
    ];
    js_publish(&js, "passpulse.events.batch", lines.join("\n").into_bytes()).await;
    // and the pipeline is still alive afterwards
    js_publish(
        &js,
        "passpulse.events.pass.updated",
        ev("g3", "pass.updated", 3_000, r#""pass":"A""#).into_bytes(),
    )
    .await;

    server.wait_events(3).await;
    let ids: Vec<String> = server
        .sql("SELECT id FROM events ORDER BY id")
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["g1", "g2", "g3"]);

    // the dead-letter stream holds each refused event with its reason and original bytes
    // each attempt reads the stream from its start with a fresh consumer: a fetch that came too
    // early must not hide the letters it took from the next attempt
    let stream = js.get_stream("PASSPULSE_DEADLETTER").await.unwrap();
    let letters: Vec<(String, String, Vec<u8>, String)> =
        eventually(Duration::from_secs(20), "7 dead letters", || {
            let stream = stream.clone();
            async move {
                let consumer = stream
                    .create_consumer(pull::Config {
                        deliver_policy: DeliverPolicy::All,
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                let mut out = Vec::new();
                let mut msgs = consumer.fetch().max_messages(100).messages().await.ok()?;
                while let Some(Ok(m)) = msgs.next().await {
                    let h = m.headers.clone().unwrap_or_default();
                    out.push((
                        m.subject.to_string(),
                        h.get("Passpulse-Reason")
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                        m.payload.to_vec(),
                        h.get("Passpulse-Error")
                            .map(|v| v.to_string())
                            .unwrap_or_default(),
                    ));
                }
                (out.len() == 7).then_some(out)
            }
        })
        .await;
    for (reason, payload) in &bad {
        let found = letters
            .iter()
            .find(|(_, r, p, _)| r == reason && p == payload)
            .unwrap_or_else(|| panic!("no dead letter with reason {reason}: {letters:?}"));
        assert_eq!(found.0, format!("passpulse.deadletter.{reason}"));
    }
    let line = letters
        .iter()
        .find(|(_, _, p, _)| p == bad_line.as_bytes())
        .expect("the bad batch line is dead-lettered alone");
    assert_eq!(line.1, "invalid_value");
    assert!(
        line.3
            .starts_with("event 2: field \"ts\": expected RFC 3339 or epoch millis"),
        "{}",
        line.3
    );

    for (reason, n) in [
        ("bad_json", 1.0),
        ("unknown_type", 1.0),
        ("invalid_value", 1.0),
        ("bad_utf8", 1.0),
    ] {
        assert_eq!(
            server
                .metric(&format!(
                    "passpulse_dead_letters_total{{reason=\"{reason}\"}}"
                ))
                .await,
            n,
            "{reason}"
        );
    }

    // the dead_letters table shows them, also after a restart (refilled from the stream)
    let check_table = |rows: Vec<serde_json::Value>| {
        assert_eq!(rows.len(), 7, "{rows:?}");
        let r = rows
            .iter()
            .find(|r| r["reason"] == "invalid_value")
            .expect("the bad batch line");
        assert_eq!(r["subject"], "passpulse.events.batch");
        assert_eq!(r["line"], 2);
        assert_eq!(r["prefix"], bad_line.as_str());
        assert_eq!(r["bytes"], bad_line.len());
        assert!(r["error"].as_str().unwrap().contains("field \"ts\""));
        let utf8 = rows.iter().find(|r| r["reason"] == "bad_utf8").unwrap();
        assert!(utf8["prefix"].as_str().unwrap().contains('\u{fffd}'));
    };
    let sql = "SELECT seq, subject, reason, line, error, bytes, prefix FROM dead_letters ORDER BY seq, line";
    check_table(server.sql(sql).await);
    let mut server = server;
    server.interrupt();
    let server = Server::start(Some(&nats), &[]).await;
    check_table(server.sql(sql).await);
}

#[tokio::test]
async fn oversized_messages_are_dead_lettered_unparsed() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &["--max-message-bytes", "1024"]).await;
    let js = nats.js().await;
    let big: Vec<String> = (0..40)
        .map(|i| ev(&format!("big{i}"), "pass.updated", 1, r#""pass":"A""#))
        .collect();
    js_publish(&js, "passpulse.events.batch", big.join("\n").into_bytes()).await;
    js_publish(
        &js,
        "passpulse.events.pass.updated",
        ev("ok", "pass.updated", 1, r#""pass":"A""#).into_bytes(),
    )
    .await;
    server.wait_events(1).await;
    eventually(Duration::from_secs(10), "too_large counted", || async {
        (server
            .metric("passpulse_dead_letters_total{reason=\"too_large\"}")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
}
