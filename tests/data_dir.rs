//! The data directory as users name it — relative to the working directory (`../x`), through a
//! symlink, with spaces and non-ASCII characters, or the default `passpulse-data` — through
//! ingest, flushes, compaction, restart, `inspect`, `compact` and every query; and what a reader
//! outside passpulse (pyarrow listing `events/`) sees in it while the server flushes and compacts.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::Value;

/// Small flushes and eager compaction, so a few thousand events make several files per day and
/// compactions.
const STORAGE: &str = "[storage]\ncompact_min_files = 2\n";

/// An insight's rows compared as a set, each float to 9 significant digits: parallel
/// aggregation adds floats in another order from run to run, and rows that tie on the sort keys
/// may come in either order; the order and the exact figures are pinned by the golden files.
fn normalized(v: &Value) -> Vec<String> {
    fn round(v: &Value) -> Value {
        match v {
            Value::Number(n) if n.is_f64() => {
                Value::String(format!("{:.9e}", n.as_f64().unwrap_or_default()))
            }
            Value::Array(a) => Value::Array(a.iter().map(round).collect()),
            Value::Object(o) => {
                Value::Object(o.iter().map(|(k, v)| (k.clone(), round(v))).collect())
            }
            v => v.clone(),
        }
    }
    let mut rows: Vec<String> = v
        .as_array()
        .map(|a| a.iter().map(|r| round(r).to_string()).collect())
        .unwrap_or_else(|| vec![round(v).to_string()]);
    rows.sort();
    rows
}

/// Every insight's answer (the live one only checked for 200: it reports memory and disk).
async fn insight_answers(s: &Server) -> BTreeMap<String, Vec<String>> {
    let list = s.get_json("/api/v1/insights").await;
    let mut out = BTreeMap::new();
    for i in list.as_array().unwrap() {
        let name = i["name"].as_str().unwrap().to_string();
        let r = s
            .get(&format!("/api/v1/insights/{name}"))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "insight {name}: {body}");
        if name != "live" {
            out.insert(name, normalized(&serde_json::from_str(&body).unwrap()));
        }
    }
    assert!(out.len() >= 15, "insights listed: {:?}", out.keys());
    out
}

async fn publish_all(nats: &Nats, lines: &[String]) {
    let js = nats.js().await;
    for chunk in lines.chunks(100) {
        js_publish(&js, "passpulse.events.batch", chunk.join("\n").into_bytes()).await;
    }
}

/// pyarrow's view of `events/`: rows, distinct ids.
fn pyarrow_count(events: &Path) -> (u64, u64) {
    let out = Command::new("python3")
        .args([
            "-c",
            "import sys, pyarrow.dataset as ds\n\
             t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table(columns=['id'])\n\
             print(t.num_rows, len(set(t.column('id').to_pylist())))",
        ])
        .arg(events)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pyarrow: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut it = text.split_whitespace().map(|n| n.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_symlinked_data_dir_with_spaces_works_through_flush_compaction_and_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = generate(7, 4_000, 300.0, &tmp.path().join("events.ndjson"));
    let n = lines.len() as i64;

    // the reference: the same events in memory
    let nats_ref = Nats::start();
    let reference = Server::start(Some(&nats_ref), &["--no-persist"]).await;
    publish_all(&nats_ref, &lines).await;
    reference.wait_events(n).await;
    let expected = insight_answers(&reference).await;
    drop(reference);

    // cwd "wörk dir", data dir "../wörk dir/link/pp data" where link → "real store ü"
    let cwd = tmp.path().join("wörk dir");
    let real = tmp.path().join("real store ü");
    std::fs::create_dir_all(&cwd).unwrap();
    std::fs::create_dir_all(&real).unwrap();
    std::os::unix::fs::symlink(&real, cwd.join("link")).unwrap();
    std::fs::write(cwd.join("pp.toml"), STORAGE).unwrap();
    let arg = "../wörk dir/link/pp data";
    let flags = ["--config", "pp.toml", "--flush-rows", "700"];

    let nats = Nats::start();
    let mut s = Server::start_from(&cwd, Some(arg), Some(&nats), &flags).await;
    publish_all(&nats, &lines).await;
    s.wait_events(n).await;
    let compacted = eventually(Duration::from_secs(60), "a compaction", || async {
        let c = s.metric("passpulse_compactions_total").await;
        (c >= 1.0).then_some(c)
    })
    .await;
    assert!(compacted >= 1.0);
    assert!(
        s.stats().await["disk"]["rows"].as_u64().unwrap() > 0,
        "rows were flushed"
    );
    assert_eq!(s.scalar("SELECT count(*) AS n FROM events").await, n);
    assert_eq!(
        s.scalar("SELECT count(DISTINCT id) AS n FROM events").await,
        n
    );
    assert_eq!(
        insight_answers(&s).await,
        expected,
        "after flushes and compaction"
    );

    // a clean stop, then the files as any reader sees them
    assert!(s.interrupt().success());
    let data = real.join("pp data");
    assert_eq!(pyarrow_count(&data.join("events")), (n as u64, n as u64));
    let inspect = Command::new(BIN)
        .current_dir(&cwd)
        .args(["inspect", arg, "--json"])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let i: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(i["totals"]["rows"].as_i64().unwrap(), n);
    assert_eq!(i["unreferenced"], serde_json::json!([]));
    let compact = Command::new(BIN)
        .current_dir(&cwd)
        .args(["compact", "--data-dir", arg])
        .output()
        .unwrap();
    assert!(
        compact.status.success(),
        "{}",
        String::from_utf8_lossy(&compact.stderr)
    );
    assert_eq!(pyarrow_count(&data.join("events")), (n as u64, n as u64));

    // restart from the files: every figure again, and new events on top
    let s = Server::start_from(&cwd, Some(arg), Some(&nats), &flags).await;
    assert_eq!(s.scalar("SELECT count(*) AS n FROM events").await, n);
    assert_eq!(insight_answers(&s).await, expected, "after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_data_dir_is_relative_to_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = generate(8, 1_500, 300.0, &tmp.path().join("events.ndjson"));
    let n = lines.len() as i64;
    let nats = Nats::start();
    let s = Server::start_from(tmp.path(), None, Some(&nats), &["--flush-rows", "400"]).await;
    publish_all(&nats, &lines).await;
    s.wait_events(n).await;
    eventually(Duration::from_secs(30), "a flush", || async {
        (s.stats().await["disk"]["rows"].as_i64().unwrap() > 0).then_some(())
    })
    .await;
    assert_eq!(s.scalar("SELECT count(*) AS n FROM events").await, n);
    insight_answers(&s).await;
    assert!(tmp.path().join("passpulse-data/events").is_dir());
}

/// The server of the reader test: data dir `pp`, eager compaction, small flushes.
async fn start_pp(cwd: &Path, nats: &Nats) -> Server {
    let flags = ["--config", "pp.toml", "--flush-rows", "300"];
    Server::start_from(cwd, Some("pp"), Some(nats), &flags).await
}

/// pyarrow lists `events/` over and over while the server ingests, flushes and compacts: every
/// read sees each event at most once, never fewer than the previous read, and after the stop
/// (and after a `kill -9` and restart) exactly all of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outside_readers_see_every_event_exactly_once_while_the_server_compacts() {
    let tmp = tempfile::tempdir().unwrap();
    let lines = generate(9, 6_000, 200.0, &tmp.path().join("events.ndjson"));
    let n = lines.len() as u64;
    std::fs::write(tmp.path().join("pp.toml"), STORAGE).unwrap();
    let nats = Nats::start();
    let mut s = start_pp(tmp.path(), &nats).await;
    let events = tmp.path().join("pp/events");
    // the reader: a Python loop, reporting each read as "rows distinct" (or "retry" when a file
    // it listed was swapped out before it opened it)
    let reader = Command::new("python3")
        .args([
            "-c",
            "import sys, os, time, pyarrow.dataset as ds\n\
             end = time.time() + float(sys.argv[2])\n\
             while time.time() < end:\n\
             \x20   if not os.path.isdir(sys.argv[1]):\n\
             \x20       time.sleep(0.02); continue\n\
             \x20   try:\n\
             \x20       t = ds.dataset(sys.argv[1], format='parquet', partitioning='hive').to_table(columns=['id'])\n\
             \x20       print(t.num_rows, len(set(t.column('id').to_pylist())), flush=True)\n\
             \x20   except (FileNotFoundError, OSError) as e:\n\
             \x20       print('retry', flush=True)\n",
        ])
        .arg(&events)
        .arg("25")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for part in lines.chunks(1_000) {
        publish_all(&nats, part).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    s.wait_events(n as i64).await;
    eventually(Duration::from_secs(60), "compactions", || async {
        (s.metric("passpulse_compactions_total").await >= 3.0).then_some(())
    })
    .await;
    let out = reader.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let (mut reads, mut retries, mut last) = (0, 0, 0u64);
    for l in text.lines() {
        if l == "retry" {
            retries += 1;
            continue;
        }
        let v: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap()).collect();
        assert_eq!(v[0], v[1], "a read saw an event twice: {l}");
        assert!(
            v[0] >= last,
            "a read saw fewer events than the one before: {last} then {l}"
        );
        assert!(v[0] <= n);
        last = v[0];
        reads += 1;
    }
    assert!(reads >= 10, "{reads} reads, {retries} retries");
    assert!(retries <= reads, "{reads} reads, {retries} retries");
    assert!(s.interrupt().success());
    assert_eq!(pyarrow_count(&events), (n, n), "after a clean stop");

    // kill -9 right after new events: what readers see is committed, and complete after restart
    let mut s = start_pp(tmp.path(), &nats).await;
    let more = generate(10, 1_000, 200.0, &tmp.path().join("more.ndjson"));
    publish_all(&nats, &more).await;
    s.wait_events((lines.len() + more.len()) as i64).await;
    s.kill9();
    let (rows, distinct) = pyarrow_count(&events);
    assert_eq!(rows, distinct, "after kill -9");
    let s = start_pp(tmp.path(), &nats).await;
    let all = (lines.len() + more.len()) as u64;
    s.wait_events(all as i64).await;
    drop(s);
    assert_eq!(pyarrow_count(&events), (all, all), "after restart and stop");
}

/// What the README's first command runs (`scripts/demo`: `serve --demo --data-dir demo-data`,
/// its own nats-server, the repository's templates), from a fresh working directory, for longer
/// than one flush interval (60 s): then every call the dashboard makes answers 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_demo_answers_every_dashboard_call_after_its_first_flush() {
    let tmp = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let templates = tmp.path().join("data/templates");
    copy_tree(&repo.join("data/templates"), &templates);
    let s = Server::start_from(tmp.path(), Some("demo-data"), None, &["--demo"]).await;
    // every endpoint the dashboard's script calls
    let script = std::fs::read_to_string(repo.join("query/src/dashboard/app.js")).unwrap();
    let mut calls: Vec<String> = script
        .split('"')
        .filter(|p| p.starts_with("/api/v1/"))
        .map(str::to_string)
        .collect();
    calls.sort();
    calls.dedup();
    assert!(calls.len() >= 10, "{calls:?}");
    eventually(
        Duration::from_secs(150),
        "the demo's first flush",
        || async { (s.stats().await["disk"]["rows"].as_u64().unwrap_or(0) > 0).then_some(()) },
    )
    .await;
    // a few seconds more traffic on top of the flushed files
    tokio::time::sleep(Duration::from_secs(3)).await;
    for call in &calls {
        for extra in ["", "?format=csv"] {
            if !extra.is_empty() && !call.ends_with("postal_list") {
                continue;
            }
            let r = s.get(&format!("{call}{extra}")).send().await.unwrap();
            let status = r.status().as_u16();
            let body = r.text().await.unwrap();
            assert_eq!(status, 200, "{call}{extra}: {body}");
        }
    }
    let n = s.scalar("SELECT count(*) AS n FROM events").await;
    assert!(n > 0);
    assert!(tmp.path().join("demo-data/events").is_dir());
    let page = s.get("/").send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}
