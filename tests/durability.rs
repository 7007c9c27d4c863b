//! Durability end to end: Parquet files read back by an independent reader (pyarrow), restarts
//! that resume from the checkpoint, producer retries counted once, damaged checkpoints and stray
//! temporary files at start, SIGKILL at random moments during ingest, a broker restart
//! mid-ingest, a failing disk, and queries racing flushes. Every check compares with a ground
//! truth computed here from the events themselves.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Nats, Server, eventually, generate, js_publish};
use serde_json::Value;

/// Frequent flushes, so every test crosses many flush and checkpoint boundaries.
const FAST_FLUSH: &[&str] = &["--flush-interval", "150ms", "--flush-rows", "20000"];

/// What the server must report for a set of events, computed independently.
#[derive(Debug, PartialEq)]
struct Truth {
    events: i64,
    by_type: BTreeMap<String, i64>,
    active_passes: i64,
    live_registrations: i64,
}

fn truth(lines: &[String]) -> Truth {
    let mut by_type = BTreeMap::new();
    let mut seen = HashSet::new();
    // (pass, device) → (ts, order, live); the newest event time wins, the later line on a tie
    let mut reg: HashMap<(String, String), (i64, usize, bool)> = HashMap::new();
    for (i, l) in lines.iter().enumerate() {
        let e: Value = serde_json::from_str(l).unwrap();
        if !seen.insert(e["id"].as_str().unwrap().to_string()) {
            continue;
        }
        let kind = e["type"].as_str().unwrap().to_string();
        if kind == "pass.installed" || kind == "pass.uninstalled" {
            let ts = chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap())
                .unwrap()
                .timestamp_millis();
            let key = (
                e["pass"].as_str().unwrap().to_string(),
                e["device"].as_str().unwrap().to_string(),
            );
            let new = (ts, i, kind == "pass.installed");
            let cur = reg.entry(key).or_insert(new);
            if (new.0, new.1) >= (cur.0, cur.1) {
                *cur = new;
            }
        }
        *by_type.entry(kind).or_insert(0) += 1;
    }
    let mut live: HashMap<&str, i64> = HashMap::new();
    for ((pass, _), (_, _, on)) in &reg {
        if *on {
            *live.entry(pass.as_str()).or_default() += 1;
        }
    }
    Truth {
        events: seen.len() as i64,
        by_type,
        active_passes: live.len() as i64,
        live_registrations: live.values().sum(),
    }
}

/// The same figures, as the server reports them through SQL.
async fn observed(s: &Server) -> Truth {
    let mut by_type = BTreeMap::new();
    for r in s
        .sql("SELECT CAST(type AS VARCHAR) AS t, count(*) AS n FROM events GROUP BY 1")
        .await
    {
        by_type.insert(
            r["t"].as_str().unwrap().to_string(),
            r["n"].as_i64().unwrap(),
        );
    }
    let ib = s
        .sql("SELECT active_passes, live_registrations FROM install_base WHERE dimension = 'all'")
        .await;
    Truth {
        events: s.scalar("SELECT count(*) AS n FROM events").await,
        by_type,
        active_passes: ib[0]["active_passes"].as_i64().unwrap(),
        live_registrations: ib[0]["live_registrations"].as_i64().unwrap(),
    }
}

/// Generated events, their truth, and a data directory (with the temp dir the events live in).
fn fixture(
    seed: u64,
    events: u64,
    arrivals_per_day: f64,
) -> (tempfile::TempDir, Vec<String>, Truth, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let lines = generate(seed, events, arrivals_per_day, &dir.path().join("e.ndjson"));
    let want = truth(&lines);
    (dir, lines, want, tempfile::tempdir().unwrap())
}

async fn publish_batches(js: &async_nats::jetstream::Context, lines: &[String], batch: usize) {
    for chunk in lines.chunks(batch) {
        js_publish(js, "passpulse.events.batch", chunk.join("\n").into_bytes()).await;
    }
}

/// Waits until everything applied is on disk (the hot store is empty).
async fn wait_flushed(s: &Server, rows: i64) {
    eventually(Duration::from_secs(60), "every row flushed", || async {
        let st = s.stats().await;
        (st["disk"]["rows"].as_i64() == Some(rows) && st["hot"]["rows"].as_i64() == Some(0))
            .then_some(())
    })
    .await;
}

/// Row count and per-type counts of the Parquet files, read by pyarrow.
fn pyarrow_counts(data_dir: &Path) -> (i64, BTreeMap<String, i64>) {
    let script = r#"
import json, sys
import pyarrow.compute as pc
import pyarrow.dataset as ds
d = ds.dataset(sys.argv[1], format="parquet", partitioning="hive")
t = d.to_table(columns=["type", "id"])
counts = pc.value_counts(t.column("type").cast("string"))
print(json.dumps({
    "rows": t.num_rows,
    "distinct_ids": pc.count_distinct(t.column("id")).as_py(),
    "by_type": {c["values"].as_py(): c["counts"].as_py() for c in counts},
}))
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(data_dir.join("events"))
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "pyarrow failed (run scripts/setup): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["rows"], v["distinct_ids"], "no id twice in the files");
    let by_type = v["by_type"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, n)| (k.clone(), n.as_i64().unwrap()))
        .collect();
    (v["rows"].as_i64().unwrap(), by_type)
}

#[tokio::test]
async fn flushed_files_are_read_by_pyarrow_and_a_restart_resumes_from_the_checkpoint() {
    let (dir, lines, want, data) = fixture(5, 30_000, 300.0);
    let nats = Nats::start();
    let mut s = Server::start_in(Some(&nats), FAST_FLUSH, &[], data.path().into(), None).await;
    let js = nats.js().await;
    publish_batches(&js, &lines, 250).await;
    s.wait_events(want.events).await;
    wait_flushed(&s, want.events).await;
    assert_eq!(observed(&s).await, want);

    // the files alone, read by an independent reader, hold every event once
    let (rows, by_type) = pyarrow_counts(data.path());
    assert_eq!(rows, want.events);
    assert_eq!(by_type, want.by_type);
    let st = s.stats().await;
    assert!(st["disk"]["files"].as_u64().unwrap() >= 2, "{st}");
    let partitions: Vec<String> = std::fs::read_dir(data.path().join("events"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        partitions.iter().all(|p| p.starts_with("month=2026-")),
        "{partitions:?}"
    );

    // a time filter prunes files: the plan reads only files whose time range meets the day
    let mid: Value = serde_json::from_str(&lines[lines.len() / 2]).unwrap();
    let day = &mid["ts"].as_str().unwrap()[..10];
    let filter = format!(
        "ts >= '{day}T00:00:00Z' AND ts < CAST('{day}T00:00:00Z' AS TIMESTAMP) + INTERVAL '1 day'"
    );
    let want_day = lines
        .iter()
        .filter(|l| l.contains(&format!("\"ts\":\"{day}T")))
        .count() as i64;
    let got_day = s
        .scalar(&format!("SELECT count(*) AS n FROM events WHERE {filter}"))
        .await;
    assert!(want_day > 0);
    assert_eq!(got_day, want_day);
    let plan: String = s
        .sql(&format!(
            "EXPLAIN SELECT count(*) FROM events WHERE {filter}"
        ))
        .await
        .iter()
        .map(|r| r["plan"].as_str().unwrap_or_default().to_string())
        .collect();
    // each file's time range, from the checkpoint (`passpulse inspect`)
    let inspect = Command::new(BIN)
        .args(["inspect", "--json"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(inspect.status.success(), "{inspect:?}");
    let inspect: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let (from, to) = (
        format!("{day}T00:00:00.000Z"),
        format!("{day}T23:59:59.999Z"),
    );
    let (mut meeting, mut others) = (HashSet::new(), HashSet::new());
    for f in inspect["files"].as_array().unwrap() {
        let name = f["path"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .to_string();
        let (lo, hi) = (f["min_ts"].as_str().unwrap(), f["max_ts"].as_str().unwrap());
        if lo <= to.as_str() && hi >= from.as_str() {
            meeting.insert(name);
        } else {
            others.insert(name);
        }
    }
    let scanned: HashSet<String> = plan
        .split(|c: char| c == '/' || c == ',' || c == ']' || c.is_whitespace())
        .filter(|w| w.ends_with(".parquet"))
        .map(str::to_string)
        .collect();
    assert!(!scanned.is_empty(), "{plan}");
    assert!(
        !others.is_empty(),
        "the history spans more than the day: {inspect}"
    );
    assert!(
        scanned.is_subset(&meeting),
        "only files meeting the day are scanned: {scanned:?} of {meeting:?}\n{plan}"
    );

    // clean restart: nothing is replayed, every figure is back at once
    s.interrupt();
    let s = Server::start_in(Some(&nats), FAST_FLUSH, &[], data.path().into(), None).await;
    let st = s.stats().await;
    assert_eq!(
        st["hot"]["rows"], 0,
        "nothing replayed after a clean stop: {st}"
    );
    assert_eq!(st["disk"]["rows"].as_i64(), Some(want.events));
    assert_eq!(observed(&s).await, want);

    // and it goes on from there
    let more = generate(6, 2_000, 300.0, &dir.path().join("more.ndjson"));
    let more: Vec<String> = more
        .into_iter()
        .map(|l| l.replace("\"g6-", "\"more-"))
        .collect();
    publish_batches(&js, &more, 100).await;
    let mut all = lines.clone();
    all.extend(more);
    let want = truth(&all);
    s.wait_events(want.events).await;
    assert_eq!(observed(&s).await, want);
}

#[tokio::test]
async fn a_producer_retry_is_counted_once_also_across_restarts() {
    let (_dir, lines, want, data) = fixture(7, 3_000, 300.0);
    let nats = Nats::start();
    let mut s = Server::start_in(Some(&nats), FAST_FLUSH, &[], data.path().into(), None).await;
    let js = nats.js().await;
    publish_batches(&js, &lines, 100).await;
    s.wait_events(want.events).await;
    // the same events again, in other messages (the broker's own dedup cannot catch them)
    publish_batches(&js, &lines, 37).await;
    eventually(Duration::from_secs(30), "duplicates refused", || async {
        (s.stats().await["disk"]["duplicates"].as_i64() == Some(want.events)).then_some(())
    })
    .await;
    assert_eq!(observed(&s).await, want);

    // after a crash and a restart the ids are still remembered
    wait_flushed(&s, want.events).await;
    s.kill9();
    let s = Server::start_in(Some(&nats), FAST_FLUSH, &[], data.path().into(), None).await;
    publish_batches(&js, &lines[..500], 50).await;
    eventually(
        Duration::from_secs(30),
        "retries after restart refused",
        || async {
            (s.stats().await["disk"]["duplicates"].as_i64() == Some(want.events + 500))
                .then_some(())
        },
    )
    .await;
    assert_eq!(observed(&s).await, want);
    assert_eq!(
        s.metric("passpulse_duplicate_events_total").await as i64,
        want.events + 500
    );
}

/// SIGTERM while the broker is gone: the server stops within the harness's 20 s, and what it
/// did not store is still in the stream for the next start.
#[tokio::test]
async fn sigterm_with_the_broker_gone_stops_in_bounded_time_and_loses_nothing() {
    let (_dir, lines, want, data) = fixture(12, 6_000, 300.0);
    let mut nats = Nats::start();
    let mut s = Server::start_in(
        Some(&nats),
        &["--flush-interval", "1h"],
        &[],
        data.path().into(),
        None,
    )
    .await;
    let js = nats.js().await;
    // a bad line too: its dead letter is published while the broker is there
    publish_batches(&js, &lines, 200).await;
    js_publish(&js, "passpulse.events.batch", b"{not json}".to_vec()).await;
    s.wait_events(want.events).await;
    nats.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    assert!(s.terminate().success());
    let took = t0.elapsed();
    nats.restart();
    let s = Server::start_in(Some(&nats), &[], &[], data.path().into(), None).await;
    s.wait_events(want.events).await;
    assert_eq!(observed(&s).await, want);
    eprintln!("stopped {took:?} after SIGTERM with the broker gone");
}

#[tokio::test]
async fn a_damaged_checkpoint_and_a_stray_temp_file_fall_back_to_the_previous_good_state() {
    let (_dir, lines, want, data) = fixture(8, 8_000, 300.0);
    let nats = Nats::start();
    let mut s = Server::start_in(Some(&nats), FAST_FLUSH, &[], data.path().into(), None).await;
    let js = nats.js().await;
    // two rounds, so there are at least two checkpoints
    publish_batches(&js, &lines[..4_000], 100).await;
    s.wait_events(4_000).await;
    wait_flushed(&s, 4_000).await;
    publish_batches(&js, &lines[4_000..], 100).await;
    s.wait_events(want.events).await;
    wait_flushed(&s, want.events).await;
    s.interrupt();

    let ckpt_dir = data.path().join("checkpoints");
    let mut ckpts: Vec<_> = std::fs::read_dir(&ckpt_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    ckpts.sort();
    assert!(ckpts.len() >= 2, "{ckpts:?}");
    // the newest checkpoint is torn half-way
    let newest = ckpts.last().unwrap();
    let bytes = std::fs::read(newest).unwrap();
    std::fs::write(newest, &bytes[..bytes.len() / 2]).unwrap();
    // and a crashed write left a temp file in a partition
    let part = std::fs::read_dir(data.path().join("events"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let stray = part.join(".part-9999999999-0.parquet.tmp");
    std::fs::write(&stray, b"half a parquet file").unwrap();

    let s = Server::start_in(Some(&nats), FAST_FLUSH, &[], data.path().into(), None).await;
    s.wait_events(want.events).await;
    assert_eq!(observed(&s).await, want);
    assert!(!stray.exists(), "stray temp file removed");
    assert_eq!(s.metric("passpulse_corrupt_checkpoints_total").await, 1.0);
    assert_eq!(s.metric("passpulse_stray_files_total").await, 1.0);
    wait_flushed(&s, want.events).await;
    let (rows, by_type) = pyarrow_counts(data.path());
    assert_eq!((rows, by_type), (want.events, want.by_type.clone()));
}

#[tokio::test]
async fn sigkill_at_random_moments_during_a_million_events_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n: usize = std::env::var("PASSPULSE_CRASH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let lines = generate(21, n as u64, 2_000.0, &dir.path().join("e.ndjson"));
    let want = truth(&lines);
    let nats = Nats::start();
    let data = tempfile::tempdir().unwrap();
    let flags = &["--flush-interval", "300ms", "--flush-rows", "100000"];

    // the producer publishes throughout, 500 events a message, and retries 1 % of messages
    // later with other message ids: those must be refused as duplicates
    let js = nats.js().await;
    let producer = {
        let lines = lines.clone();
        let js = js.clone();
        tokio::spawn(async move {
            let chunks: Vec<String> = lines.chunks(500).map(|c| c.join("\n")).collect();
            for (i, c) in chunks.iter().enumerate() {
                js_publish(&js, "passpulse.events.batch", c.clone().into_bytes()).await;
                if i % 100 == 50 {
                    js_publish(
                        &js,
                        "passpulse.events.batch",
                        chunks[i / 2].clone().into_bytes(),
                    )
                    .await;
                }
                if i % 40 == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        })
    };

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("crash test: kill moments seeded with {seed}");
    let mut rng = seed;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut kills = 0;
    let mut s = Server::start_in(Some(&nats), flags, &[], data.path().into(), None).await;
    while kills < 6 {
        let wait = Duration::from_millis(200 + next() % 1_800);
        tokio::time::sleep(wait).await;
        let applied = s.stats().await["events"].as_i64().unwrap();
        s.kill9();
        kills += 1;
        eprintln!("crash test: SIGKILL {kills} after {wait:?}, {applied} events applied");
        s = Server::start_in(Some(&nats), flags, &[], data.path().into(), None).await;
    }
    producer.await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(300);
    while s.scalar("SELECT count(*) AS n FROM events").await < want.events {
        assert!(
            Instant::now() < deadline,
            "not every event after the crashes; stats: {}\ncompactions {}, flushes {}",
            s.stats().await,
            s.metric("passpulse_compactions_total").await,
            s.metric("passpulse_flushes_total").await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // let anything in flight settle, then compare exactly
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(observed(&s).await, want);
    assert_eq!(
        s.scalar("SELECT count(DISTINCT id) AS n FROM events").await,
        want.events
    );
    wait_flushed(&s, want.events).await;
    let (rows, by_type) = pyarrow_counts(data.path());
    assert_eq!((rows, by_type), (want.events, want.by_type));
}

#[tokio::test]
async fn a_broker_restart_mid_ingest_loses_nothing_and_queries_keep_working() {
    let (_dir, lines, want, data) = fixture(9, 40_000, 500.0);
    let mut nats = Nats::start();
    let s = Server::start_in(Some(&nats), FAST_FLUSH, &[], data.path().into(), None).await;
    let js = nats.js().await;
    publish_batches(&js, &lines[..20_000], 200).await;
    s.wait_events(20_000).await;

    nats.stop();
    // the broker is away: what is held still answers
    assert_eq!(s.scalar("SELECT count(*) AS n FROM events").await, 20_000);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    nats.restart();

    // a fresh client (the old one may still be reconnecting), then the rest
    let js = nats.js().await;
    publish_batches(&js, &lines[20_000..], 200).await;
    eventually(Duration::from_secs(60), "ingest resumed", || async {
        (s.scalar("SELECT count(*) AS n FROM events").await >= want.events).then_some(())
    })
    .await;
    assert_eq!(observed(&s).await, want);
}

#[tokio::test]
async fn queries_racing_flushes_never_miss_or_double_a_row() {
    let dir = tempfile::tempdir().unwrap();
    let lines = generate(10, 60_000, 500.0, &dir.path().join("e.ndjson"));
    let nats = Nats::start();
    let s = Server::start(
        Some(&nats),
        &["--flush-interval", "20ms", "--flush-rows", "2000"],
    )
    .await;
    let js = nats.js().await;
    let producer = {
        let (js, lines) = (js.clone(), lines.clone());
        tokio::spawn(async move { publish_batches(&js, &lines, 100).await })
    };
    let mut last = 0;
    let mut checks = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = s
            .sql("SELECT count(*) AS n, count(DISTINCT id) AS d FROM events")
            .await;
        let (n, d) = (r[0]["n"].as_i64().unwrap(), r[0]["d"].as_i64().unwrap());
        assert_eq!(n, d, "a row was seen twice");
        assert!(n >= last, "rows disappeared: {n} after {last}");
        last = n;
        checks += 1;
        if n == lines.len() as i64 || Instant::now() > deadline {
            break;
        }
    }
    producer.await.unwrap();
    s.wait_events(lines.len() as i64).await;
    let files = s.stats().await["disk"]["files"].as_i64().unwrap();
    assert!(
        checks > 5 && files > 5,
        "{checks} checks over {files} files"
    );
}

#[tokio::test]
async fn a_failing_disk_holds_the_checkpoint_back_and_recovers() {
    let (_dir, lines, want, data) = fixture(12, 5_000, 300.0);
    let nats = Nats::start();
    let s = Server::start_in(Some(&nats), FAST_FLUSH, &[], data.path().into(), None).await;
    // a regular file where the engine's files go: every flush fails (root ignores permissions)
    let events_dir = data.path().join("store");
    std::fs::remove_dir_all(&events_dir).unwrap();
    std::fs::write(&events_dir, b"not a directory").unwrap();
    let js = nats.js().await;
    publish_batches(&js, &lines, 100).await;
    s.wait_events(want.events).await;
    eventually(
        Duration::from_secs(30),
        "failed flushes counted",
        || async { (s.metric("passpulse_flush_failures_total").await >= 2.0).then_some(()) },
    )
    .await;
    let st = s.stats().await;
    assert_eq!(st["disk"]["rows"], 0, "nothing claimed on disk: {st}");
    assert_eq!(observed(&s).await, want, "queries still see every event");

    // the disk comes back: the retry succeeds and the checkpoint moves on
    std::fs::remove_file(&events_dir).unwrap();
    wait_flushed(&s, want.events).await;
    let (rows, _) = pyarrow_counts(data.path());
    assert_eq!(rows, want.events);
}

fn passpulse(args: &[&str]) -> std::process::Output {
    Command::new(common::BIN).args(args).output().unwrap()
}

#[tokio::test]
async fn compaction_retention_inspect_and_the_directory_lock() {
    let (dir, lines, want, data) = fixture(13, 24_000, 400.0);
    let nats = Nats::start();
    let d = data.path().to_str().unwrap().to_string();
    let cfg = dir.path().join("passpulse.toml");
    std::fs::write(
        &cfg,
        "[storage]\nflush_interval = \"50ms\"\ncompact_min_files = 2\ncompact_target_mb = 64\n",
    )
    .unwrap();
    let cfg_arg = cfg.to_str().unwrap();
    let flags = ["--config", cfg_arg];
    let start = || Server::start_in(Some(&nats), &flags, &[], data.path().into(), None);
    let mut s = start().await;
    let js = nats.js().await;
    // many small flushes: each round becomes files of its own
    let mut sent = 0;
    for round in lines.chunks(2_000) {
        publish_batches(&js, round, 100).await;
        sent += round.len() as i64;
        s.wait_events(sent).await;
        wait_flushed(&s, sent).await;
    }
    eventually(Duration::from_secs(30), "a compaction", || async {
        (s.metric("passpulse_compactions_total").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(observed(&s).await, want, "compaction changes no figure");

    // a second writer is refused while the server runs
    let out = passpulse(&["compact", "--data-dir", &d]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    s.interrupt();

    let inspect = |args: &[&str]| -> Value {
        let mut a = vec!["inspect", &d, "--json"];
        a.extend_from_slice(args);
        let out = passpulse(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let i = inspect(&[]);
    assert_eq!(i["totals"]["rows"].as_i64(), Some(want.events));
    assert_eq!(i["in_use"], false);
    for f in i["files"].as_array().unwrap() {
        assert_eq!(f["rows"], f["footer_rows"], "{f}");
    }
    let files_before = i["totals"]["files"].as_u64().unwrap();

    // offline compaction merges what is left and deletes the replaced files at once
    let out = passpulse(&["compact", "--data-dir", &d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let i = inspect(&[]);
    let months = i["partitions"].as_array().unwrap().len() as u64;
    assert!(i["totals"]["files"].as_u64().unwrap() <= files_before);
    assert_eq!(
        i["totals"]["files"].as_u64(),
        Some(months),
        "one file per month: {i}"
    );
    assert_eq!(i["unreferenced"].as_array().unwrap().len(), 0, "{i}");
    let (rows, by_type) = pyarrow_counts(data.path());
    assert_eq!((rows, by_type), (want.events, want.by_type.clone()));

    // retention drops whole days older than 3 days behind the newest event
    let ts: Vec<i64> = lines
        .iter()
        .map(|l| {
            let e: Value = serde_json::from_str(l).unwrap();
            chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        })
        .collect();
    let cutoff = ts.iter().max().unwrap() - 3 * 86_400_000;
    let kept = ts
        .iter()
        .filter(|t| (t.div_euclid(86_400_000) + 1) * 86_400_000 > cutoff)
        .count() as i64;
    assert!(kept < want.events);
    let out = passpulse(&["compact", "--data-dir", &d, "--retention", "3d"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = start().await;
    assert_eq!(s.scalar("SELECT count(*) AS n FROM events").await, kept);
    let (rows, _) = pyarrow_counts(data.path());
    assert_eq!(rows, kept);
}
