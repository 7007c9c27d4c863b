//! No query can take the server down: statements too deep or too long for the planner are
//! answered or refused with a 400 naming the limit (and ingest goes on), functions that would
//! build huge values are refused with a 4xx while the process stays under its memory bound, the
//! deadline holds for CPU-bound work while other queries still answer, and every result format
//! honours the result cap.

mod common;

use std::time::{Duration, Instant};

use common::{Nats, Server, ev, js_publish};
use serde_json::Value;

/// Publishes event number `n` and waits until the server has counted `n` events.
async fn still_ingesting(nats: &Nats, server: &Server, n: i64) {
    let js = nats.js().await;
    let line = ev(
        &format!("alive-{n}"),
        "pass.updated",
        1_790_000_000_000 + n,
        r#""pass":"P1""#,
    );
    js_publish(&js, "passpulse.events.pass.updated", line.into_bytes()).await;
    server.wait_events(n).await;
}

fn error_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned())
}

/// Peak resident memory of a process, bytes (`VmHWM`).
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .unwrap();
    kb << 10
}

#[tokio::test]
async fn deep_or_long_statements_are_answered_or_refused_and_ingest_goes_on() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    still_ingesting(&nats, &server, 1).await;
    let chain = |n: usize, term: &dyn Fn(usize) -> String, op: &str| {
        (0..n).map(term).collect::<Vec<_>>().join(op)
    };
    let shapes: Vec<(&str, String)> = vec![
        (
            "1,900-term sum",
            format!("SELECT {}", chain(1_900, &|_| "1".into(), "+")),
        ),
        (
            "2,000-term OR (a BI tool's IN filter)",
            format!(
                "SELECT count(*) AS n FROM events WHERE {}",
                chain(2_000, &|i| format!("pass = 'P{i}'"), " OR ")
            ),
        ),
        (
            "10,000-term AND",
            format!(
                "SELECT count(*) AS n FROM events WHERE {}",
                chain(10_000, &|i| format!("pass <> 'P{i}'"), " AND ")
            ),
        ),
        (
            "10,000-term ||",
            format!("SELECT {}", chain(10_000, &|_| "'a'".into(), " || ")),
        ),
        (
            "1,000 chained CTEs",
            format!(
                "WITH c0 AS (SELECT 1 AS x), {} SELECT x FROM c999",
                chain(
                    999,
                    &|i| format!("c{} AS (SELECT x FROM c{i})", i + 1),
                    ", "
                )
            ),
        ),
        (
            "1,000 joins",
            format!(
                "SELECT count(*) AS n FROM (SELECT 1 AS x) t0 {}",
                chain(
                    999,
                    &|i| format!("JOIN (SELECT 1 AS x) t{} ON t{}.x = t{i}.x", i + 1, i + 1),
                    " "
                )
            ),
        ),
        (
            "nesting 2,000 parentheses",
            format!("SELECT {}1{}", "(".repeat(2_000), ")".repeat(2_000)),
        ),
        (
            "10,000 UNIONs",
            chain(10_000, &|_| "SELECT 1 AS x".into(), " UNION ALL "),
        ),
    ];
    let mut answered = Vec::new();
    for (name, sql) in &shapes {
        let r = server
            .post("/api/v1/query")
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: no answer (did the server die?): {e}"));
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        match status {
            200 => answered.push(*name),
            400 => {
                let e = error_of(&body);
                assert!(
                    e.contains("limit") && e.contains("query.max_"),
                    "{name}: a refusal names the limit: {e}"
                );
            }
            s => panic!("{name}: {s} {}", error_of(&body)),
        }
    }
    // what a BI tool sends is answered, not refused
    assert!(
        answered.contains(&"2,000-term OR (a BI tool's IN filter)")
            && answered.contains(&"1,900-term sum"),
        "{answered:?}"
    );
    still_ingesting(&nats, &server, 2).await;
}

#[tokio::test]
async fn functions_that_would_build_huge_values_are_refused_under_the_memory_bound() {
    // the documented bound of the query side under these shapes: the process ceiling
    const CEILING_MB: u64 = 512;
    let nats = Nats::start();
    let server = Server::start(
        Some(&nats),
        &[
            "--query-memory-mb",
            "64",
            "--query-max-process-mb",
            &CEILING_MB.to_string(),
        ],
    )
    .await;
    still_ingesting(&nats, &server, 1).await;
    for sql in [
        "SELECT count(*) FROM (SELECT unnest(range(1, 300000000)))",
        "SELECT cardinality(array_repeat(array_repeat(1, 20000), 20000))",
        "SELECT length(lpad('x', 1000000000, 'ab'))",
        "SELECT length(repeat('x', 500000000))",
        "SELECT cardinality(generate_series(DATE '1970-01-01', DATE '9999-01-01', INTERVAL '1 minute'))",
        "SELECT length(replace(repeat('a', 1000000), '', repeat('b', 1000)))",
        "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r, \
         (VALUES (1), (2), (3), (4), (5), (6), (7), (8)) AS v(x) WHERE n < 12) \
         SELECT count(*) FROM r",
        // memory no function builds: the operators' pool (or the process ceiling) stops it
        "SELECT cardinality(array_agg(v)) FROM generate_series(1, 200000000) AS t(v)",
        // a value doubled inside one projection, level after level (≈ 7.7 GB asked): stopped
        // at the first level whose value passes the batch limit, not at the process ceiling
        "WITH a AS (SELECT repeat('x', 60000000) AS s), b AS (SELECT s || s AS s FROM a), \
         c AS (SELECT s || s AS s FROM b), d AS (SELECT s || s AS s FROM c), \
         e AS (SELECT s || s AS s FROM d), f AS (SELECT s || s AS s FROM e), \
         g AS (SELECT s || s AS s FROM f), h AS (SELECT s || s AS s FROM g) \
         SELECT length(s) FROM h",
        // the same with string views, whose text lives outside the views' own buffer
        "WITH a AS (SELECT arrow_cast(repeat('x', 60000000), 'Utf8View') AS s), \
         b AS (SELECT s || s AS s FROM a), c AS (SELECT s || s AS s FROM b), \
         d AS (SELECT s || s AS s FROM c), e AS (SELECT s || s AS s FROM d) \
         SELECT length(s) FROM e",
        "SELECT length(concat(s, s, s)) FROM (SELECT repeat('x', 30000000) AS s)",
    ] {
        let (status, body) = server.query_raw(sql, "json").await;
        assert!(
            (400..500).contains(&status),
            "{sql}: {status} {}",
            error_of(&body)
        );
        let peak = peak_rss(server.pid());
        assert!(
            peak < CEILING_MB << 20,
            "{sql}: peak RSS {} MiB over the {CEILING_MB} MiB bound",
            peak >> 20
        );
    }
    // and the server goes on
    assert_eq!(server.scalar("SELECT count(*) AS n FROM events").await, 1);
    still_ingesting(&nats, &server, 2).await;
}

#[tokio::test]
async fn the_size_checked_text_operator_keeps_its_meaning() {
    let server = Server::start(None, &["--no-persist"]).await;
    let rows = server
        .sql(
            "SELECT 'a' || 'b' AS x, 'a' || NULL AS y, X'41' || X'4243' AS z, \
             arrow_typeof(X'ff' || X'01') AS t, s || '!' AS w, arrow_typeof(s || s) AS ws \
             FROM (VALUES ('p'), (NULL)) AS v(s) ORDER BY s NULLS LAST",
        )
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for r in &rows {
        assert_eq!(r["x"], "ab", "{r}");
        assert!(r["y"].is_null(), "null on either side gives null: {r}");
        assert_eq!(r["z"], "414243", "bytes joined: {r}");
        assert_eq!(r["t"], "Binary", "bytes stay bytes: {r}");
        assert_eq!(r["ws"], "Utf8", "{r}");
    }
    assert_eq!(rows[0]["w"], "p!");
    assert!(rows[1]["w"].is_null());
}

#[tokio::test]
async fn the_deadline_holds_for_cpu_bound_work_and_other_queries_still_answer() {
    const LIMIT: Duration = Duration::from_secs(5);
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &["--query-timeout", "5s"]).await;
    for sql in [
        // a 3-way cross join whose filter keeps nothing: the join never emits a batch
        "SELECT count(*) FROM generate_series(1, 3000) AS a(x), generate_series(1, 3000) AS b(y), \
         generate_series(1, 3000) AS c(z) WHERE a.x + b.y + c.z = 7",
        // one regexp over one big value
        "SELECT length(regexp_replace(repeat('ab', 30000000), '(a|b)+?', 'xy', 'g'))",
    ] {
        let started = Instant::now();
        let heavy = server.query_raw(sql, "json");
        let small = async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let t = Instant::now();
            let n = server.scalar("SELECT 41 + 1 AS n").await;
            (n, t.elapsed())
        };
        let ((status, body), (n, small_took)) = tokio::join!(heavy, small);
        let took = started.elapsed();
        // generous bounds: a shared, noisy machine (the tight figures are in BENCHMARKS.md)
        match status {
            // an answer only in time (before the fix: a 200 after 13.6 s with a 5 s limit)
            200 => assert!(
                took < LIMIT + Duration::from_secs(2),
                "{sql}: 200 after {took:?}"
            ),
            504 | 400..500 => assert!(
                took < LIMIT + Duration::from_secs(10),
                "{sql}: {status} after {took:?}"
            ),
            _ => panic!("{sql}: {status} {}", error_of(&body)),
        }
        assert_eq!(n, 42);
        assert!(
            small_took < Duration::from_secs(10),
            "{sql}: a small query waited {small_took:?}"
        );
        // and the work stopped with the answer: an idle server burns next to no CPU (before
        // the expression guard the join kept one core busy for 44 s after its 504)
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = cpu_seconds(server.pid());
        tokio::time::sleep(Duration::from_secs(3)).await;
        let burnt = cpu_seconds(server.pid()) - before;
        assert!(
            burnt < 1.0,
            "{sql}: the server used {burnt:.2} s of CPU in the 3 s after its answer"
        );
    }
}

/// CPU time (user + system) a process has used, seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
    let hz = clock_ticks();
    ticks / hz
}

/// Clock ticks per second of `/proc/<pid>/stat` (`getconf CLK_TCK`).
fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

#[tokio::test]
async fn every_format_honours_the_result_cap() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("passpulse.toml");
    std::fs::write(&config, "[query]\nmax_result_mb = 1\n").unwrap();
    let server = Server::start(Some(&nats), &["--config", config.to_str().unwrap()]).await;
    // over 10 MB in any format: random numbers do not compress
    let big = "SELECT v, random() AS r, CAST(random() AS VARCHAR) AS s \
               FROM generate_series(1, 500000) AS t(v)";
    for format in ["parquet", "json", "jsonl", "csv", "arrow"] {
        let r = server
            .get("/api/v1/query")
            .query(&[("sql", big), ("format", format)])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        // the cap is a 422 before the first byte, or a body cut short with an error
        let body = r.bytes().await;
        match (status, body) {
            (422, Ok(body)) => assert!(
                error_of(&body).contains("result exceeded"),
                "{format}: {}",
                error_of(&body)
            ),
            (200, Err(_)) => {}
            (200, Ok(body)) => panic!(
                "{format}: a complete {} byte answer over the 1 MiB cap",
                body.len()
            ),
            (s, body) => panic!("{format}: {s} {body:?}"),
        }
    }
    // Parquet holds its row group until the end: over the cap it is always a clean 422
    let (status, body) = server.query_raw(big, "parquet").await;
    assert_eq!(status, 422, "{}", error_of(&body));
    // under the cap every format answers in full
    let small = "SELECT v FROM generate_series(1, 1000) AS t(v)";
    let (status, pq) = server.query_raw(small, "parquet").await;
    assert_eq!(status, 200);
    let rows: usize = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(pq)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap().num_rows())
        .sum();
    assert_eq!(rows, 1000);
}
