//! The SQL endpoint: every output format read back, read-only enforcement, the execution
//! timeout, the bearer token, and both request shapes.

mod common;

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Nats, Server, ev, eventually, js_publish};
use serde_json::{Value, json};

async fn seeded(extra: &[&str]) -> (Nats, Server) {
    seeded_env(extra, &[]).await
}

async fn seeded_env(extra: &[&str], env: &[(&str, &str)]) -> (Nats, Server) {
    let nats = Nats::start();
    let server = Server::start_env(Some(&nats), extra, env).await;
    let js = nats.js().await;
    let lines: Vec<String> = (0..250)
        .map(|i| {
            ev(
                &format!("e{i}"),
                "scan",
                1_790_000_000_000 + i * 1_000,
                &format!(r#""pass":"P{}","location":"loc{}","device":"lane","operator":"op","attrs":{{"n":{i}}}"#, i % 17, i % 3),
            )
        })
        .collect();
    js_publish(&js, "passpulse.events.batch", lines.join("\n").into_bytes()).await;
    server.wait_events(250).await;
    (nats, server)
}

const SQL: &str = "SELECT id, ts, location, pass FROM events ORDER BY ts";

#[tokio::test]
async fn every_output_format_reads_back() {
    let (_nats, server) = seeded(&[]).await;

    let (s, json) = server.query_raw(SQL, "json").await;
    assert_eq!(s, 200);
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&json).unwrap();
    assert_eq!(rows.len(), 250);
    assert_eq!(rows[0]["id"], "e0");
    assert_eq!(rows[249]["location"], "loc0");

    let (s, jsonl) = server.query_raw(SQL, "jsonl").await;
    assert_eq!(s, 200);
    let lines: Vec<serde_json::Value> = std::str::from_utf8(&jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, rows);

    let (s, csv) = server.query_raw(SQL, "csv").await;
    assert_eq!(s, 200);
    let csv = String::from_utf8(csv.to_vec()).unwrap();
    let mut csv_lines = csv.lines();
    assert_eq!(csv_lines.next(), Some(r#""id","ts","location","pass""#));
    assert!(csv_lines.next().unwrap().starts_with(r#""e0","#));
    assert_eq!(csv.lines().count(), 251);

    let (s, ipc) = server.query_raw(SQL, "arrow").await;
    assert_eq!(s, 200);
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 250);
    assert_eq!(batches[0].schema().field(0).name(), "id");

    let (s, pq) = server.query_raw(SQL, "parquet").await;
    assert_eq!(s, 200);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(pq)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 250);

    // an empty result is still well-formed in every format
    let none = "SELECT id FROM events WHERE id = 'nope'";
    assert_eq!(server.query_raw(none, "json").await.1.as_ref(), b"[]");
    assert_eq!(server.query_raw(none, "csv").await.1.as_ref(), b"\"id\"\n");

    let (s, body) = server.query_raw(SQL, "xml").await;
    assert_eq!(s, 400);
    assert!(String::from_utf8_lossy(&body).contains("unknown format"));
}

#[tokio::test]
async fn post_accepts_json_and_plain_sql() {
    let (_nats, server) = seeded(&[]).await;
    let r = server
        .post("/api/v1/query")
        .json(&serde_json::json!({"sql": "SELECT count(*) AS n FROM events", "format": "jsonl"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap().trim(), r#"{"n":250}"#);
    let r = server
        .post("/api/v1/query?format=csv")
        .header("content-type", "application/sql")
        .body("SELECT location, count(*) AS n FROM events GROUP BY location ORDER BY location")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.text().await.unwrap(),
        "\"location\",\"n\"\n\"loc0\",84\n\"loc1\",83\n\"loc2\",83\n"
    );
    // analysts can discover the tables
    let tables = server
        .sql("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name")
        .await;
    let names: Vec<&str> = tables
        .iter()
        .map(|r| r["table_name"].as_str().unwrap())
        .collect();
    let mut want = vec![
        "dead_letters".to_string(),
        "distinct_counts".into(),
        "event_counts".into(),
        "events".into(),
        "funnel".into(),
        "install_base".into(),
        "location_peaks".into(),
        "pass_origin".into(),
        "segments".into(),
    ];
    want.extend(
        passpulse_query::insights::INSIGHTS
            .iter()
            .map(|i| i.view_name()),
    );
    want.sort();
    assert_eq!(names, want);
}

#[tokio::test]
async fn write_statements_are_refused_with_a_clear_message() {
    let (_nats, server) = seeded(&[]).await;
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "INSERT INTO events (id) VALUES ('x')",
        "COPY (SELECT 1) TO '/tmp/passpulse-copy-test.csv'",
        "SET datafusion.runtime.memory_limit = '100G'",
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "DROP TABLE events",
    ] {
        let (status, body) = server.query_raw(sql, "json").await;
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(status, 403, "{sql}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("read-only"),
            "{sql}: {body}"
        );
    }
    assert!(!std::path::Path::new("/tmp/passpulse-copy-test.csv").exists());
    // files are not tables
    let (status, body) = server
        .query_raw("SELECT * FROM '/etc/passwd'", "json")
        .await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    // syntax errors are the caller's
    let (status, body) = server.query_raw("SELEC 1", "json").await;
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("error"));
    assert_eq!(server.scalar("SELECT count(*) AS n FROM events").await, 250);
}

#[tokio::test]
async fn the_timeout_stops_execution_and_the_server_stays_responsive() {
    // set through the environment, which `serve` reads like its flags
    let (_nats, server) = seeded_env(&[], &[("PASSPULSE_QUERY_TIMEOUT", "400ms")]).await;
    let (status, body) = server
        .query_raw(
            "SELECT max(v % 7) AS m FROM generate_series(1, 100000000000) AS t(v)",
            "json",
        )
        .await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 504, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("time limit"),
        "{body}"
    );
    // execution really stopped: nothing is left running
    eventually(Duration::from_secs(10), "no running query", || async {
        (server.metric("passpulse_queries_running").await == 0.0).then_some(())
    })
    .await;
    assert_eq!(
        server
            .metric("passpulse_queries_total{outcome=\"timeout\"}")
            .await,
        1.0
    );
    assert_eq!(server.scalar("SELECT count(*) AS n FROM events").await, 250);
}

#[tokio::test]
async fn the_memory_limit_refuses_a_query_that_needs_more() {
    let (_nats, server) = seeded(&["--query-memory-mb", "4"]).await;
    let (status, body) = server
        .query_raw("SELECT v, count(*) AS n FROM generate_series(1, 3000000) AS t(v) GROUP BY v ORDER BY n DESC LIMIT 1", "json")
        .await;
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("memory limit"),
        "{body}"
    );
}

#[tokio::test]
async fn the_bearer_token_is_enforced_on_the_api() {
    let token = "s3cr3t-t0ken-for-tests";
    let (_nats, mut server) = seeded(&["--auth-token", token]).await;
    let url = format!("{}/api/v1/query?sql=SELECT%201", server.base);
    let http = reqwest::Client::new();
    assert_eq!(http.get(&url).send().await.unwrap().status(), 401);
    let r = http
        .get(&url)
        .bearer_auth("s3cr3t-t0ken-for-tesTS")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    assert_eq!(
        http.get(&url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = http
        .post(format!("{}/api/v1/events", server.base))
        .body(ev("t1", "pass.updated", 1, r#""pass":"A""#))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "intake is protected too");
    assert_eq!(
        http.get(format!("{}/api/v1/stats", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // liveness and metrics stay open for orchestrators and scrapers
    assert_eq!(
        http.get(format!("{}/healthz", server.base))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(server.interrupt().success());
}

#[tokio::test]
async fn insights_are_served_with_their_filters() {
    let (_nats, server) = seeded(&[]).await;
    let list = server.get_json("/api/v1/insights").await;
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"scans_by_location") && names.contains(&"channel_funnel"));
    // the live figures come from the engine's aggregates: all 250 scans fall on one day
    let live = server.get_json("/api/v1/insights/live").await;
    assert_eq!(live["today"]["scan"], 250, "{live}");
    assert_eq!(live["events"], 250);
    assert!(
        live["location_peaks"]
            .as_array()
            .is_some_and(|p| !p.is_empty()),
        "{live}"
    );

    // 250 scans, location i % 3: loc0 has 84, loc1 and loc2 83 each
    let all = server.get_json("/api/v1/insights/scans_by_location").await;
    let counts: Vec<(String, i64)> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["location"].as_str().unwrap().into(),
                r["scans"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts,
        [
            ("loc0".into(), 84),
            ("loc1".into(), 83),
            ("loc2".into(), 83)
        ]
    );
    let one = server
        .get_json("/api/v1/insights/scans_by_location?location=loc1")
        .await;
    assert_eq!(one.as_array().unwrap().len(), 1);
    assert_eq!(one[0]["scans"], 83);
    // from the 101st event on (epoch milliseconds): 50 per location
    let later = server
        .get_json("/api/v1/insights/scans_by_location?from=1790000100000&format=json")
        .await;
    let later: Vec<i64> = later
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scans"].as_i64().unwrap())
        .collect();
    assert_eq!(later, [50, 50, 50]);
    // the same as the composable view
    let view = server
        .sql("SELECT location, scans FROM insight_scans_by_location WHERE location = 'loc2'")
        .await;
    assert_eq!(view[0]["scans"], 83);

    // refusals: (path, status, what the error message must contain)
    for (path, status, says) in [
        ("/api/v1/insights/nope", 404, "scans_by_location"),
        (
            "/api/v1/insights/scans_by_location?from=yesterday",
            400,
            "parameter `from`",
        ),
        (
            "/api/v1/insights/passes?to=2026-01-01&from=2026-02-01",
            400,
            "parameter `to`",
        ),
        // a misspelt filter is refused, not ignored (it would answer for every event), and the
        // refusal lists what an insight takes
        (
            "/api/v1/insights/scans_by_location?sorce=sms",
            400,
            "unknown parameter `sorce`: an insight takes from, to, program, source, campaign, \
             location, limit, offset, format",
        ),
        (
            "/api/v1/insights/scans_by_location?location=loc1&location=loc2",
            400,
            "parameter `location` is given more than once",
        ),
    ] {
        let r = server.get(path).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(says),
            "{path}: {body}"
        );
    }
    // every parameter an insight takes is accepted together
    let r = server
        .get(
            "/api/v1/insights/activity?from=2026-01-01&to=2027-01-01&program=p&source=s\
             &campaign=c&location=loc1&limit=5&offset=0&format=json",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!([]));
    let get = |path: &str| server.get(path).send();
    let r = get("/api/v1/insights/scan_heatmap?format=csv")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .starts_with("\"weekday\",\"hour\",\"scans\"\n")
    );
}

/// CSV rows as Python's `csv` module reads them (an independent reader). `QUOTE_NONNUMERIC`
/// turns every unquoted field into a float and fails on an unquoted non-number, so a string is
/// a JSON string here only if it was quoted, and a number a JSON number only if it was not.
fn python_csv(csv: &[u8]) -> Vec<Vec<Value>> {
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import csv, io, json, sys\n\
             rows = csv.reader(io.TextIOWrapper(sys.stdin.buffer, encoding='utf-8', newline=''),\n\
                               quoting=csv.QUOTE_NONNUMERIC)\n\
             print(json.dumps(list(rows)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(csv).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python's csv module reads the export: {}",
        String::from_utf8_lossy(csv)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Rows of a CSV export as objects keyed by the header.
fn csv_objects(csv: &[u8]) -> Vec<serde_json::Map<String, Value>> {
    let mut rows = python_csv(csv).into_iter();
    let header: Vec<String> = rows
        .next()
        .expect("a header line")
        .into_iter()
        .map(|h| {
            h.as_str()
                .expect("header cells are quoted text")
                .to_string()
        })
        .collect();
    rows.map(|r| header.iter().cloned().zip(r).collect())
        .collect()
}

#[tokio::test]
async fn csv_exports_cannot_run_in_a_spreadsheet() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let js = nats.js().await;
    // customers and sources as an attacker would type them into a sign-up form: (customer as
    // sent, as exported; source as sent, as exported)
    let hostile = [
        (
            "=HYPERLINK(\"http://x\",\"y\")",
            "'=HYPERLINK(\"http://x\",\"y\")",
            "=1+2",
            "'=1+2",
        ),
        ("+1", "'+1", "@SUM(A1)", "'@SUM(A1)"),
        ("-1", "'-1", "-2", "'-2"),
        ("\tx", "'\tx", "\r\nsms,=evil", "'\r\nsms,=evil"),
        ("<script>", "<script>", "web", "web"),
    ];
    let lines: Vec<String> = hostile
        .iter()
        .enumerate()
        .map(|(i, (customer, _, source, _))| {
            let fields = json!({"pass": format!("P{i}"), "program": "loyalty",
                                "customer": customer, "source": source});
            let fields = fields.to_string();
            ev(
                &format!("i{i}"),
                "pass.issued",
                1_790_000_000_000 + i as i64,
                &fields[1..fields.len() - 1],
            )
        })
        .collect();
    js_publish(&js, "passpulse.events.batch", lines.join("\n").into_bytes()).await;
    server.wait_events(hostile.len() as i64).await;
    let expected = |customer: &str| {
        hostile
            .iter()
            .find(|h| h.1 == customer)
            .unwrap_or_else(|| panic!("an exported customer {customer:?} was published"))
    };

    // the postal list: every customer (none installed a pass), neutralised, one row each
    let r = server
        .get("/api/v1/insights/postal_list?format=csv")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rows = csv_objects(&r.bytes().await.unwrap());
    assert_eq!(rows.len(), hostile.len(), "{rows:?}");
    for row in &rows {
        let customer = row["customer"].as_str().unwrap();
        let (_, _, _, source) = expected(customer);
        assert_eq!(row["source"], *source, "{row:?}");
        assert_eq!(row["program"], "loyalty");
        assert_eq!(row["state"], "never installed");
    }

    // the SQL endpoint: string and dictionary columns neutralised, numbers left numbers
    let sql = "SELECT customer, source, CAST(-3.5 AS DOUBLE) AS value, CAST(-7 AS BIGINT) AS n \
               FROM events ORDER BY id";
    let (status, csv) = server.query_raw(sql, "csv").await;
    assert_eq!(status, 200);
    let want: Vec<Vec<Value>> = std::iter::once(json!(["customer", "source", "value", "n"]))
        .chain(
            hostile
                .iter()
                .map(|(_, customer, _, source)| json!([customer, source, -3.5, -7.0])),
        )
        .map(|r| r.as_array().unwrap().clone())
        .collect();
    assert_eq!(python_csv(&csv), want);

    // `passpulse query --format csv` prints the server's CSV as it is
    let out = Command::new(BIN)
        .args(["query", "--url", &server.base, "--format", "csv", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(python_csv(&out.stdout), want);
    assert_eq!(out.stdout, csv.to_vec());
}

#[tokio::test]
async fn log_lines_carry_no_colour_codes_when_stderr_is_a_file() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("serve.log");
    let port = passpulse_ingest::nats_server::free_port().unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--http", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--nats-url", &nats.url])
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let health = format!("http://127.0.0.1:{port}/healthz");
    eventually(Duration::from_secs(30), "passpulse /healthz", || async {
        reqwest::get(&health)
            .await
            .ok()
            .filter(|r| r.status().is_success())
    })
    .await;
    let stopped = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(child.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("INFO"), "the server logged at info: {log}");
    assert!(
        !log.contains("\x1b["),
        "no ANSI escape in a log file: {log:?}"
    );
}
