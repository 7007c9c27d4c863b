//! The dashboard in a real browser: Debian's Chromium (headless; `scripts/setup` installs it)
//! loads `/` from the real server fed a seeded data set through NATS, runs the page's script, and
//! every card must show the numbers the insights API returns, unfiltered and with a filter in
//! the URL. A screenshot is saved under the test's output directory.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Nats, Server, generate, js_publish};
use serde_json::Value;

/// Flags that keep Chromium off the network on a closed machine.
const CHROMIUM: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-breakpad",
    "--disable-crash-reporter",
    "--window-size=1280,2400",
    // virtual time runs the page's first refresh (and a few timers) to the end
    "--virtual-time-budget=10000",
];

/// The page's DOM after its script ran, or a screenshot of it.
fn chromium(url: &str, screenshot: Option<&Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new("chromium");
    cmd.args(CHROMIUM)
        .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd
        .arg(url)
        .output()
        .expect("chromium runs (scripts/setup installs it)");
    kill_browser(profile.path());
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops every Chromium process of the profile `dir`: helper processes can outlive the browser
/// (and a WebDriver session its driver), and must not pile up across test runs.
fn kill_browser(dir: &Path) {
    let _ = Command::new("pkill")
        .args(["-f", "--"])
        .arg(format!("--user-data-dir={}", dir.display()))
        .status();
}

/// The text of the figure `<dd data-key="key">`.
fn figure<'a>(dom: &'a str, key: &str) -> &'a str {
    let tag = format!("<dd data-key=\"{key}\">");
    let at = dom
        .find(&tag)
        .unwrap_or_else(|| panic!("figure {key} is on the page"));
    let rest = &dom[at + tag.len()..];
    &rest[..rest.find('<').unwrap()]
}

/// A figure's leading count ("1,394 · 60.2 %" is 1394).
fn count(dom: &str, key: &str) -> u64 {
    let text = figure(dom, key);
    text.split(" · ")
        .next()
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap_or_else(|_| panic!("figure {key} = {text:?} is a count"))
}

/// Table cells with `data-key="key"`.
fn cells(dom: &str, key: &str) -> usize {
    dom.matches(&format!("<td data-key=\"{key}\"")).count()
}

/// Each figure in `keys` shows the sum of that column of `rows`.
fn same_figures(dom: &str, rows: &Value, keys: &[&str], card: &str, query: &str) {
    for key in keys {
        assert_eq!(count(dom, key), sum(rows, key), "{card}: {key} ({query})");
    }
}

fn sum(rows: &Value, key: &str) -> u64 {
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| r[key].as_u64().unwrap_or(0))
        .sum()
}

/// Every card against the API, for the filters in `query` (URL query text, may be empty).
async fn check_cards(server: &Server, query: &str) -> u64 {
    let url = |path: &str| {
        if query.is_empty() {
            path.to_string()
        } else {
            format!("{path}?{query}")
        }
    };
    let dom = chromium(&format!("{}/{}", server.base, url("")), None);
    assert!(
        dom.contains("data-ready=\"true\""),
        "every card loaded: {}",
        &dom[dom.find("id=\"status\"").unwrap_or(0)..][..200.min(dom.len())]
    );
    let api = |name: &str| {
        let path = url(&format!("/api/v1/insights/{name}"));
        async move { server.get_json(&path).await }
    };

    let funnel = api("channel_funnel").await;
    same_figures(
        &dom,
        &funnel,
        &["clicked", "issued", "installed", "scanned", "redeemed"],
        "leads",
        query,
    );
    assert_eq!(
        cells(&dom, "campaign"),
        funnel.as_array().unwrap().len(),
        "signup sources: one row per source and campaign ({query})"
    );

    let base = api("estimated_active_base").await;
    same_figures(
        &dom,
        &base,
        &["active", "estimated_active"],
        "install base",
        query,
    );

    let postal = api("postal_savings").await;
    same_figures(
        &dom,
        &postal,
        &["letters_needed", "letters_avoided"],
        "postal",
        query,
    );

    let usage = api("usage_daily").await;
    let usage_keys = ["scans", "rejected", "redemptions"];
    same_figures(&dom, &usage, &usage_keys, "usage", query);

    let heat = api("scan_heatmap").await;
    let drawn: u64 = dom
        .split("data-scans=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse::<u64>().unwrap())
        .sum();
    assert_eq!(drawn, sum(&heat, "scans"), "heatmap: every scan ({query})");

    let peaks = api("location_peaks").await;
    assert_eq!(
        cells(&dom, "peak_minute"),
        peaks.as_array().unwrap().len(),
        "busiest locations ({query})"
    );

    let offers = api("offers").await;
    assert_eq!(cells(&dom, "redemptions"), offers.as_array().unwrap().len());
    let (viewing, redeeming) = (
        sum(&offers, "passes_viewing"),
        sum(&offers, "viewers_redeeming"),
    );
    if viewing > 0 {
        let shown: f64 = figure(&dom, "redemption_rate")
            .trim_end_matches(" %")
            .parse()
            .unwrap();
        let want = redeeming as f64 * 100.0 / viewing as f64;
        assert!(
            (shown - want).abs() <= 0.05,
            "redemption rate {shown} vs {want}"
        );
    }

    let activity = api("activity").await;
    assert_eq!(
        cells(&dom, "type"),
        activity.as_array().unwrap().len().min(20),
        "the activity feed shows the 20 newest events ({query})"
    );
    // the survival curves: the newest six cohorts, each point still_installed / passes over
    // the cohort's sources at 1, 7, 30 and 90 days
    let survival = api("survival").await;
    let rows = survival.as_array().unwrap();
    let week = |r: &Value| r["cohort_week"].as_str().unwrap()[..10].to_string();
    let mut cohorts: Vec<String> = rows.iter().map(week).collect();
    cohorts.sort();
    cohorts.dedup();
    let mut want = Vec::new();
    for c in &cohorts[cohorts.len().saturating_sub(6)..] {
        for d in [1, 7, 30, 90] {
            let at: Vec<&Value> = rows
                .iter()
                .filter(|r| week(r) == *c && r["days"].as_u64() == Some(d))
                .collect();
            let n: u64 = at.iter().map(|r| r["passes"].as_u64().unwrap()).sum();
            let still: u64 = at
                .iter()
                .map(|r| r["still_installed"].as_u64().unwrap())
                .sum();
            if n > 0 {
                want.push(still as f64 / n as f64);
            }
        }
    }
    let chart = &dom[dom.find("id=\"survival-chart\"").unwrap()..];
    let chart = &chart[..chart.find("</section>").unwrap()];
    let drawn: Vec<f64> = chart
        .split("data-value=\"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].parse().unwrap())
        .collect();
    assert!(!want.is_empty(), "the seeded data has survival checkpoints");
    assert_eq!(drawn.len(), want.len(), "survival points ({query})");
    for (a, b) in drawn.iter().zip(&want) {
        assert!((a - b).abs() < 1e-9, "survival {a} vs {b} ({query})");
    }

    let live = server.get_json("/api/v1/insights/live").await;
    assert_eq!(
        count(&dom, "active_passes"),
        live["install_base"]["all"]["active_passes"]
            .as_u64()
            .unwrap()
    );
    assert_eq!(count(&dom, "events"), live["events"].as_u64().unwrap());
    sum(&funnel, "issued")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_card_shows_the_insights_and_follows_the_filters() {
    let dir = tempfile::tempdir().unwrap();
    let lines = generate(7, 6_000, 1_500.0, &dir.path().join("gen.ndjson"));
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let js = nats.js().await;
    for chunk in lines.chunks(500) {
        js_publish(&js, "passpulse.events.batch", chunk.join("\n").into_bytes()).await;
    }
    server.wait_events(lines.len() as i64).await;

    let all_issued = check_cards(&server, "").await;
    assert!(all_issued > 0, "the seeded data issues passes");

    // a source filter in the URL narrows every card the same way as the API
    let funnel = server.get_json("/api/v1/insights/channel_funnel").await;
    let source = funnel[0]["source"].as_str().unwrap().to_string();
    let issued = check_cards(&server, &format!("source={source}")).await;
    assert!(
        0 < issued && issued < all_issued,
        "the filter narrows the leads ({issued} of {all_issued})"
    );

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium(&format!("{}/", server.base), Some(&shot));
    let bytes = std::fs::read(&shot).expect("the screenshot is saved");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 20_000);
}

/// A ChromeDriver session (the WebDriver protocol over HTTP) driving headless Chromium: for what
/// a person does on the page, such as typing the access token.
struct Driver {
    child: Child,
    http: reqwest::Client,
    session: String,
    profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let port = passpulse_ingest::nats_server::free_port().unwrap();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/setup installs chromium-driver)");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = CHROMIUM.iter().map(|a| a.to_string()).collect();
        args.retain(|a| !a.starts_with("--virtual-time-budget"));
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": "/usr/bin/chromium", "args": args}}}});
        let t0 = Instant::now();
        let session = loop {
            match http
                .post(format!("{base}/session"))
                .json(&caps)
                .send()
                .await
            {
                Ok(r) => {
                    let v: Value = r.json().await.unwrap();
                    break v["value"]["sessionId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("a WebDriver session: {v}"))
                        .to_string();
                }
                Err(_) if t0.elapsed() < Duration::from_secs(20) => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(e) => panic!("chromedriver did not answer: {e}"),
            }
        };
        Driver {
            child,
            http,
            session: format!("{base}/session/{session}"),
            profile,
        }
    }

    async fn call(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}{path}", self.session))
            .json(&body)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap();
        v["value"].clone()
    }

    /// The WebDriver reference of the element matching `css`.
    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                "/element",
                serde_json::json!({"using": "css selector", "value": css}),
            )
            .await;
        // the element reference is the one value of the answer's object
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("{css} is on the page: {found}"))
            .to_string()
    }

    /// Types `text` into the element matching `css` (keyboard input; `\u{E007}` is Enter).
    async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.call(
            &format!("/element/{id}/value"),
            serde_json::json!({ "text": text }),
        )
        .await;
    }

    /// Clicks the element matching `css`, as a person would.
    async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.call(&format!("/element/{id}/click"), serde_json::json!({}))
            .await;
    }

    /// Lets the browser save downloads into `dir`, without asking.
    async fn download_into(&self, dir: &Path) {
        self.call(
            "/goog/cdp/execute",
            serde_json::json!({"cmd": "Browser.setDownloadBehavior", "params": {
                "behavior": "allow", "downloadPath": dir.display().to_string()}}),
        )
        .await;
    }

    async fn script(&self, js: &str) -> Value {
        self.call(
            "/execute/sync",
            serde_json::json!({"script": js, "args": []}),
        )
        .await
    }

    /// Polls `js` until it returns something other than null or false.
    async fn until(&self, js: &str, what: &str) -> Value {
        let t0 = Instant::now();
        loop {
            let v = self.script(js).await;
            if !(v.is_null() || v == Value::Bool(false)) {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "timed out: {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_browser(self.profile.path());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_asks_for_the_token_uses_it_and_keeps_typed_filters_in_the_url() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &["--auth-token", "dashboard-test-token-0123"]).await;
    let js = nats.js().await;
    // 40 clicks from campaign w47, 10 from w48, and one pass issued (to a customer who needs a
    // letter: the postal list)
    let mut lines: Vec<String> = (0..50)
        .map(|i| {
            common::ev(
                &format!("c{i}"),
                "link.clicked",
                1_790_000_000_000 + i * 1_000,
                if i < 40 {
                    r#""source":"email","campaign":"w47""#
                } else {
                    r#""source":"email","campaign":"w48""#
                },
            )
        })
        .collect();
    lines.push(common::ev(
        "i0",
        "pass.issued",
        1_790_000_100_000,
        r#""pass":"P0","program":"loyalty","customer":"C-0","source":"email","campaign":"w47""#,
    ));
    js_publish(&js, "passpulse.events.batch", lines.join("\n").into_bytes()).await;
    server.wait_events(51).await;

    let d = Driver::start().await;
    d.call(
        "/url",
        serde_json::json!({"url": format!("{}/", server.base)}),
    )
    .await;
    // without a token every card fails, and the page asks for one
    d.until(
        "return document.body.dataset.ready === 'error' && !document.getElementById('token').hidden",
        "the token form is shown",
    )
    .await;
    assert!(
        d.script("return document.getElementById('status').textContent")
            .await
            .as_str()
            .unwrap()
            .contains("access token")
    );
    // typed into the form (keyboard), submitted: the cards load with it
    d.type_into("#token input", "dashboard-test-token-0123\u{E007}")
        .await;
    let clicked = d
        .until(
            "const e = document.querySelector('dd[data-key=clicked]'); \
             return e && e.textContent !== '0' ? e.textContent : null",
            "the leads card shows the clicks",
        )
        .await;
    assert_eq!(clicked, Value::String("50".into()));
    assert_eq!(
        d.script("return document.getElementById('token').hidden")
            .await,
        Value::Bool(true)
    );

    // "Download the postal list (CSV)" saves the list itself, fetched with the token (a plain
    // link would save the API's 401 answer)
    let downloads = tempfile::tempdir().unwrap();
    d.download_into(downloads.path()).await;
    d.click("#postal-csv").await;
    let saved = downloads.path().join("postal_list.csv");
    let t0 = Instant::now();
    while !saved.exists() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "postal_list.csv is downloaded: {:?}",
            std::fs::read_dir(downloads.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let csv = std::fs::read_to_string(&saved).unwrap();
    let mut csv_lines = csv.lines();
    assert!(
        csv_lines
            .next()
            .is_some_and(|h| h.starts_with("\"customer\",\"pass\",")),
        "the postal list's header, not an error: {csv}"
    );
    assert!(
        csv_lines
            .next()
            .is_some_and(|r| r.starts_with("\"C-0\",\"P0\",")),
        "{csv}"
    );
    assert_eq!(csv_lines.next(), None, "{csv}");

    // a filter typed into the form (Enter submits) goes into the URL and narrows the cards
    d.type_into("#filters input[name=source]", "sms\u{E007}")
        .await;
    d.until(
        "return location.search === '?source=sms' && \
                document.querySelector('dd[data-key=clicked]').textContent === '0'",
        "the source filter is in the URL and the leads card shows no sms clicks",
    )
    .await;

    // so does a campaign, after Clear
    d.click("#clear").await;
    d.until(
        "return location.search === '' && \
                document.querySelector('dd[data-key=clicked]').textContent === '50'",
        "Clear empties the URL and the leads card shows every click",
    )
    .await;
    d.type_into("#filters input[name=campaign]", "w48\u{E007}")
        .await;
    d.until(
        "return location.search === '?campaign=w48' && \
                document.querySelector('dd[data-key=clicked]').textContent === '10'",
        "the campaign filter is in the URL and the leads card shows its 10 clicks",
    )
    .await;
}
