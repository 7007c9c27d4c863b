//! Bad input over NATS cannot erase history, exhaust memory or lose dead letters (issue 17): an
//! event stamped in year 9999 is dead-lettered and moves neither the watermark nor retention
//! (and with the bound configured off, retention still drops nothing on its word); a flood of
//! bad lines costs one dead letter per message, bounded memory, fresh good events, and survives
//! `kill -9`; a bad message at the broker's size limit is stored, cut to fit.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use common::{Nats, Server, eventually, js_publish};
use futures::StreamExt;
use passpulse_engine::time::{DAY_MS, now_millis};
use serde_json::Value;

const HOUR_MS: i64 = 3_600_000;

/// One dead letter as the dead-letter stream holds it: subject, headers, payload.
#[derive(Debug, Clone)]
struct Letter {
    subject: String,
    headers: BTreeMap<String, String>,
    payload: Vec<u8>,
}

/// Every message of the dead-letter stream, read from its start with a fresh consumer.
async fn dead_letters(js: &async_nats::jetstream::Context) -> Vec<Letter> {
    let Ok(stream) = js.get_stream("PASSPULSE_DEADLETTER").await else {
        return Vec::new();
    };
    let Ok(consumer) = stream
        .create_consumer(pull::Config {
            deliver_policy: DeliverPolicy::All,
            ..Default::default()
        })
        .await
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let Ok(mut msgs) = consumer
        .fetch()
        .max_messages(1000)
        .expires(Duration::from_secs(1))
        .messages()
        .await
    else {
        return out;
    };
    while let Some(Ok(m)) = msgs.next().await {
        let headers = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(k, v)| (k.to_string(), v[0].to_string()))
            .collect();
        out.push(Letter {
            subject: m.subject.to_string(),
            headers,
            payload: m.payload.to_vec(),
        });
    }
    out
}

/// 2,000 scans over the last 250 days (one every 3 h, the newest a minute ago), in batches.
async fn publish_history(js: &async_nats::jetstream::Context, now: i64) {
    let lines: Vec<String> = (0..2_000i64)
        .map(|i| {
            format!(
                r#"{{"id":"h{i}","type":"scan","ts":{},"pass":"P{}","location":"berlin","device":"lane1","operator":"op1","result":"accepted"}}"#,
                now - 60_000 - i * 3 * HOUR_MS,
                i % 40
            )
        })
        .collect();
    for chunk in lines.chunks(100) {
        js_publish(js, "passpulse.events.batch", chunk.join("\n").into_bytes()).await;
    }
}

const OUTLIER: &str = r#"{"id":"far","type":"scan","ts":"9999-12-31T00:00:00Z","pass":"P1","location":"berlin","device":"lane1","operator":"op1","result":"accepted"}"#;

/// Waits until the newest checkpoint covers every message published so far.
async fn wait_checkpointed(server: &Server, js: &async_nats::jetstream::Context) {
    let last = js
        .get_stream("PASSPULSE_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence;
    eventually(
        Duration::from_secs(60),
        "a checkpoint of everything",
        || async {
            (server.stats().await["disk"]["checkpoint_seq"].as_u64()? >= last).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_year_9999_is_dead_lettered_and_moves_nothing() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = ["--retention", "400d", "--flush-interval", "1s"];
    let mut server = Server::start_in(Some(&nats), &args, &[], data.clone(), None).await;
    let js = nats.js().await;
    let now = now_millis();
    publish_history(&js, now).await;
    js_publish(&js, "passpulse.events.scan", OUTLIER.as_bytes().to_vec()).await;
    server.wait_events(2_000).await;

    // refused with its reason, and nothing else moved
    let letters = eventually(
        Duration::from_secs(20),
        "the outlier's dead letter",
        || async {
            let l = dead_letters(&js).await;
            (!l.is_empty()).then_some(l)
        },
    )
    .await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].subject, "passpulse.deadletter.invalid_value");
    assert_eq!(letters[0].payload, OUTLIER.as_bytes());
    let error = &letters[0].headers["Passpulse-Error"];
    assert!(
        error.starts_with("event 1: field \"ts\": 9999-12-31T00:00:00.000Z is more than 1h after"),
        "{error}"
    );
    let check = |stats: Value| {
        let wm = stats["watermark"].as_str().unwrap().to_string();
        let wm = passpulse_engine::time::parse_rfc3339_millis(&wm).unwrap();
        assert_eq!(wm, now - 60_000, "the watermark is the newest real event");
        assert_eq!(stats["events"], 2_000);
        assert_eq!(stats["last_hour"]["scan"], 1, "{}", stats["last_hour"]);
        assert!(stats["today"]["scan"].as_u64().unwrap() >= 1);
        let peak_1h = stats["location_peaks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["location"] == "berlin" && p["window"] == "1h")
            .cloned()
            .expect("a 1 h peak for berlin");
        assert_eq!(peak_1h["peak_count"], 1, "{peak_1h}");
    };
    check(server.stats().await);
    let counts = server.sql("SELECT count(*) AS n FROM event_counts").await;
    assert!(
        counts[0]["n"].as_i64().unwrap() > 0,
        "event_counts is not empty"
    );
    wait_checkpointed(&server, &js).await;
    assert_eq!(server.metric("passpulse_expired_rows_total").await, 0.0);

    // and after a restart: every event still there, the same figures
    server.interrupt();
    let server = Server::start_in(Some(&nats), &args, &[], data.clone(), None).await;
    server.wait_events(2_000).await;
    check(server.stats().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_bound_off_retention_still_drops_nothing_on_the_word_of_one_event() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let args = [
        "--retention",
        "400d",
        "--flush-interval",
        "1s",
        "--max-future-skew",
        "8000y",
    ];
    let mut server = Server::start_in(Some(&nats), &args, &[], data.clone(), None).await;
    let js = nats.js().await;
    let now = now_millis();
    publish_history(&js, now).await;
    js_publish(&js, "passpulse.events.scan", OUTLIER.as_bytes().to_vec()).await;
    server.wait_events(2_001).await;
    assert_eq!(
        server.stats().await["watermark"],
        "9999-12-31T00:00:00.000Z",
        "accepted: the bound is off"
    );
    // a later flush (with retention after it) must keep all of it
    js_publish(
        &js,
        "passpulse.events.scan",
        format!(
            r#"{{"id":"later","type":"scan","ts":{now},"pass":"P1","location":"berlin","device":"lane1","operator":"op1"}}"#
        )
        .into_bytes(),
    )
    .await;
    server.wait_events(2_002).await;
    wait_checkpointed(&server, &js).await;
    assert_eq!(server.metric("passpulse_expired_rows_total").await, 0.0);
    let old = server
        .scalar(&format!(
            "SELECT count(*) AS n FROM events WHERE ts < to_timestamp_millis({})",
            now - 200 * DAY_MS
        ))
        .await;
    assert_eq!(old, 2_000 - 200 * 8, "old history kept");

    server.interrupt();
    let server = Server::start_in(Some(&nats), &args, &[], data.clone(), None).await;
    server.wait_events(2_002).await;
    assert_eq!(server.stats().await["disk"]["rows"], 2_002);
}

/// Resident and peak resident memory of a process, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// A good event stamped now, with id `id`.
fn good(id: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","type":"link.clicked","ts":{},"source":"qr"}}"#,
        now_millis()
    )
    .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_bad_lines_is_bounded_keeps_good_events_fresh_and_survives_kill_9() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_in(Some(&nats), &[], &[], data.clone(), None).await;
    let js = nats.js().await;
    js_publish(&js, "passpulse.events.link.clicked", good("before")).await;
    server.wait_events(1).await;
    let (rss_before, _) = memory_kib(server.pid());

    // 4 messages of 1 MiB of "x\n": 2,097,152 refused lines
    const LINES: usize = 1 << 19;
    let flood = b"x\n".repeat(LINES);
    for _ in 0..4 {
        js_publish(&js, "passpulse.events.batch", flood.clone()).await;
    }
    let sent = Instant::now();
    js_publish(&js, "passpulse.events.link.clicked", good("after")).await;
    server.wait_events(2).await;
    let fresh = sent.elapsed();
    let (_, peak) = memory_kib(server.pid());
    eprintln!(
        "flood: good event applied after {fresh:?}; memory {rss_before} KiB → peak {peak} KiB"
    );
    assert!(
        fresh < Duration::from_secs(20),
        "a good event behind the flood was applied after {fresh:?}"
    );
    assert!(
        peak.saturating_sub(rss_before) < 200 * 1024,
        "memory grew from {rss_before} KiB to a peak of {peak} KiB"
    );
    assert_eq!(
        server
            .metric("passpulse_dead_letters_total{reason=\"bad_json\"}")
            .await,
        (4 * LINES) as f64,
        "every refused line is counted"
    );

    // one dead letter per message, with the count and the first errors
    let letters = eventually(Duration::from_secs(20), "4 dead letters", || async {
        let l = dead_letters(&js).await;
        (l.len() >= 4).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 4, "one per message");
    for l in &letters {
        assert_eq!(l.subject, "passpulse.deadletter.bad_json");
        assert_eq!(l.headers["Passpulse-Refused"], LINES.to_string());
        assert_eq!(l.headers["Passpulse-Errors"].matches(" | ").count(), 9);
        assert!(l.payload.starts_with(b"x\nx\n"));
        assert!(l.payload.len() < 1 << 20);
    }

    // killed in the middle of a second flood, no dead letter is lost: the next start refuses
    // again what the checkpoint did not cover
    let first_seq = js
        .get_stream("PASSPULSE_EVENTS")
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .last_sequence
        + 1;
    for _ in 0..4 {
        js_publish(&js, "passpulse.events.batch", flood.clone()).await;
    }
    js_publish(&js, "passpulse.events.link.clicked", good("last")).await;
    eventually(
        Duration::from_secs(30),
        "the second flood under way",
        || async {
            (server
                .metric("passpulse_dead_letters_total{reason=\"bad_json\"}")
                .await
                > (4 * LINES) as f64)
                .then_some(())
        },
    )
    .await;
    server.kill9();
    let server = Server::start_in(Some(&nats), &[], &[], data, None).await;
    server.wait_events(3).await;
    let seqs = eventually(Duration::from_secs(30), "8 dead letters", || async {
        let seqs: std::collections::BTreeSet<u64> = dead_letters(&js)
            .await
            .iter()
            .map(|l| l.headers["Passpulse-Stream-Seq"].parse().unwrap())
            .collect();
        (seqs.len() >= 8).then_some(seqs)
    })
    .await;
    let second: Vec<u64> = seqs.iter().copied().filter(|s| *s >= first_seq).collect();
    assert_eq!(second, (first_seq..first_seq + 4).collect::<Vec<_>>());
    // the dead_letters table, refilled from the stream, says what each one stands for
    let rows = server.sql("SELECT error, bytes FROM dead_letters").await;
    assert_eq!(rows.len(), 8, "{rows:?}");
    for r in rows {
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .ends_with("(and 524287 more refused lines of this message)"),
            "{r}"
        );
        assert_eq!(r["bytes"], (1 << 20) - 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_message_at_the_size_limit_is_stored_cut_to_fit() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let js = nats.js().await;
    let max_payload = nats.client().await.server_info().max_payload;
    let big = vec![b'x'; max_payload - 16];
    js_publish(&js, "passpulse.events.batch", big.clone()).await;
    js_publish(&js, "passpulse.events.link.clicked", good("ok")).await;
    server.wait_events(1).await;
    let letters = eventually(Duration::from_secs(20), "the dead letter", || async {
        let l = dead_letters(&js).await;
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l.subject, "passpulse.deadletter.bad_json");
    assert_eq!(l.headers["Passpulse-Truncated"], big.len().to_string());
    assert!(l.payload.len() < big.len() && l.payload.len() > big.len() - 8192);
    assert!(l.payload.iter().all(|b| *b == b'x'));
    assert_eq!(
        server
            .metric("passpulse_dead_letter_publish_failures_total")
            .await,
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_the_broker_refuses_hold_the_checkpoint_not_the_shutdown() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Server::start_in(Some(&nats), &[], &[], data.clone(), None).await;
    let js = nats.js().await;
    js_publish(&js, "passpulse.events.link.clicked", good("g1")).await;
    server.wait_events(1).await;
    let checkpoint = |s: Value| s["disk"]["checkpoint_seq"].as_u64().unwrap();
    server.interrupt();
    let mut server = Server::start_in(Some(&nats), &[], &[], data.clone(), None).await;
    let covered = checkpoint(server.stats().await);
    assert_eq!(covered, 1);
    // without its stream, no dead letter can be stored: more bad messages than the queue holds
    js.delete_stream("PASSPULSE_DEADLETTER").await.unwrap();
    for i in 0..40 {
        js_publish(
            &js,
            "passpulse.events.batch",
            format!("not json {i}").into_bytes(),
        )
        .await;
    }
    eventually(Duration::from_secs(20), "the refusals counted", || async {
        (server
            .metric("passpulse_dead_letters_total{reason=\"bad_json\"}")
            .await
            >= 17.0)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        checkpoint(server.stats().await),
        covered,
        "no checkpoint covers a dead letter that is not stored"
    );
    // SIGTERM: bounded (the harness allows 20 s), and nothing is lost
    let t0 = Instant::now();
    assert!(server.terminate().success());
    eprintln!(
        "stopped {:?} after SIGTERM with dead letters refused",
        t0.elapsed()
    );
    let server = Server::start_in(Some(&nats), &[], &[], data, None).await;
    let seqs = eventually(Duration::from_secs(30), "40 dead letters", || async {
        let n = dead_letters(&js).await.len();
        (n >= 40).then_some(n)
    })
    .await;
    assert_eq!(seqs, 40);
    server.wait_events(1).await;
}
