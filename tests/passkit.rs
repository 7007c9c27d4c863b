//! The issuer over HTTP against the real binary and a real nats-server: issue a pass through the
//! API, download it by its signed link, then walk Apple's PassKit web service as a device does
//! (register, re-register, bad token, serials since a tag, 204, latest pass with 304, update,
//! log, unregister) and count the resulting lifecycle events in SQL.

mod common;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{BIN, Nats, Server, eventually, pass_json};
use serde_json::{Value, json};

const TOKEN: &str = "passkit-test-bearer-token-0123";
const PASS_TYPE: &str = "pass.dev.passpulse";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_passkit_flow_over_http_becomes_counted_events() {
    let nats = Nats::start();
    let s = Server::start(Some(&nats), &["--auth-token", TOKEN]).await;
    let http = reqwest::Client::new();

    // issuing needs the bearer token; a bad request is refused with a reason
    let body = json!({
        "program": "loyalty", "customer": "C77",
        "attributes": {"first_name": "Ada", "points": 120, "tier": "Silver",
                       "programme_name": "Pulse Rewards", "organization": "Pulse Coffee"},
        "source": "email", "campaign": "newsletter-w47"
    });
    let r = http
        .post(format!("{}/api/v1/passes", s.base))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the pass API is behind the bearer token");
    // the registry opens in the background: 503 until then
    let r = eventually(Duration::from_secs(20), "issuer ready", || async {
        let r = s
            .post("/api/v1/passes")
            .json(&json!({"program": "nope", "customer": "C1"}))
            .send()
            .await
            .unwrap();
        (r.status() != 503).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("unknown program"));
    let r = s.post("/api/v1/passes").json(&body).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let issued: Value = r.json().await.unwrap();
    let serial = issued["serial"].as_str().unwrap().to_string();
    let link = issued["download_url"].as_str().unwrap().to_string();
    assert!(link.starts_with(&format!("{}/passes/{serial}.pkpass?", s.base)));

    // the download link works without the bearer token, a tampered one does not
    let r = http.get(&link).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.apple.pkpass");
    let pass = pass_json(&r.bytes().await.unwrap());
    assert_eq!(pass["serialNumber"], serial.as_str());
    assert_eq!(pass["webServiceURL"], format!("{}/wallet", s.base));
    let auth = pass["authenticationToken"].as_str().unwrap().to_string();
    assert!(auth.len() >= 16);
    let tampered = link.replace("sig=", "sig=0");
    assert_eq!(http.get(&tampered).send().await.unwrap().status(), 403);
    let expired = format!("{}/passes/{serial}.pkpass?expires=1&sig=00", s.base);
    assert_eq!(http.get(&expired).send().await.unwrap().status(), 403);

    // metadata never shows the token
    let meta = s.get_json(&format!("/api/v1/passes/{serial}")).await;
    assert_eq!(meta["customer"], "C77");
    assert!(!meta.to_string().contains(&auth));

    let wallet = format!("{}/wallet/v1", s.base);
    let reg_url = format!("{wallet}/devices/DEV1/registrations/{PASS_TYPE}/{serial}");
    let apple =
        |r: reqwest::RequestBuilder, t: &str| r.header("Authorization", format!("ApplePass {t}"));
    let register = |t: String| {
        apple(http.post(&reg_url), &t)
            .json(&json!({"pushToken": "0a".repeat(32)}))
            .send()
    };
    assert_eq!(register(auth.clone()).await.unwrap().status(), 201, "new");
    assert_eq!(
        register(auth.clone()).await.unwrap().status(),
        200,
        "existing"
    );
    assert_eq!(
        register("x".repeat(32)).await.unwrap().status(),
        401,
        "bad token"
    );
    let no_auth = http
        .post(&reg_url)
        .json(&json!({"pushToken": "0a".repeat(32)}))
        .send()
        .await
        .unwrap();
    assert_eq!(no_auth.status(), 401);

    // serials updated since a tag: all without one, none since the newest
    let list = format!("{wallet}/devices/DEV1/registrations/{PASS_TYPE}");
    let r = http.get(&list).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let l: Value = r.json().await.unwrap();
    assert_eq!(l["serialNumbers"], json!([serial]));
    let tag = l["lastUpdated"].as_str().unwrap().to_string();
    let r = http
        .get(format!("{list}?passesUpdatedSince={tag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let other = format!("{wallet}/devices/DEV2/registrations/{PASS_TYPE}");
    assert_eq!(http.get(&other).send().await.unwrap().status(), 204);

    // latest pass, then 304 with its Last-Modified
    let latest = format!("{wallet}/passes/{PASS_TYPE}/{serial}");
    let r = apple(http.get(&latest), &auth).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/vnd.apple.pkpass");
    let modified = r.headers()["last-modified"].to_str().unwrap().to_string();
    assert_eq!(
        pass_json(&r.bytes().await.unwrap())["serialNumber"],
        serial.as_str()
    );
    let r = apple(http.get(&latest), &auth)
        .header("If-Modified-Since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(
        apple(http.get(&latest), "wrong-token-wrong-token")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // an update bumps the tag: listed again, and the old Last-Modified gets the new pass
    let r = s
        .patch(&format!("/api/v1/passes/{serial}"))
        .json(&json!({"attributes": {"points": 250, "tier": "Gold"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let rep: Value = r.json().await.unwrap();
    assert_eq!(rep["devices"], 1);
    assert_eq!(
        rep["failed"], 1,
        "no APNs credentials: the push is recorded as failed"
    );
    let r = http
        .get(format!("{list}?passesUpdatedSince={tag}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = apple(http.get(&latest), &auth)
        .header("If-Modified-Since", &modified)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let updated = pass_json(&r.bytes().await.unwrap());
    assert!(updated.to_string().contains("250"), "{updated}");

    let r = http
        .post(format!("{wallet}/log"))
        .json(&json!({"logs": ["signature check failed for a test pass"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // unregister; the device then has nothing to update
    let r = apple(http.delete(&reg_url), &auth).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(http.get(&list).send().await.unwrap().status(), 204);

    // every lifecycle signal is on the bus and counted by the engine
    let want = json!({
        "pass.issued": 1, "pass.installed": 1, "pass.fetched": 2,
        "pass.updated": 1, "push.failed": 1, "pass.uninstalled": 1,
    });
    let counts = eventually(Duration::from_secs(20), "lifecycle events in SQL", || {
        let s = &s;
        let want = want.clone();
        async move {
            let rows = s
                .sql("SELECT CAST(type AS VARCHAR) AS t, count(*) AS n FROM events GROUP BY 1")
                .await;
            let got: serde_json::Map<String, Value> = rows
                .iter()
                .map(|r| (r["t"].as_str().unwrap().to_string(), r["n"].clone()))
                .collect();
            (Value::Object(got.clone()) == want).then_some(got)
        }
    })
    .await;
    assert_eq!(Value::Object(counts), want);
    let installed = s
        .sql("SELECT pass, device, CAST(platform AS VARCHAR) AS platform, CAST(source AS VARCHAR) AS source FROM events WHERE type = 'pass.installed'")
        .await;
    assert_eq!(
        installed,
        vec![json!({"pass": serial, "device": "DEV1", "platform": "apple", "source": "email"})]
    );
}

/// Issues a loyalty pass through the API of `s` (waiting for the issuer to open); returns its
/// serial and its `ApplePass` token (read from the .pkpass, as anyone holding it can).
async fn issue_pass(s: &Server) -> (String, String) {
    let body = json!({
        "program": "loyalty", "customer": "C1",
        "attributes": {"first_name": "Ada", "points": 1, "tier": "Silver",
                       "programme_name": "Pulse Rewards", "organization": "Pulse Coffee"},
    });
    let r = eventually(Duration::from_secs(20), "issuer ready", || async {
        let r = s.post("/api/v1/passes").json(&body).send().await.unwrap();
        (r.status() != 503).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 201);
    let issued: Value = r.json().await.unwrap();
    let link = issued["download_url"].as_str().unwrap();
    let pkpass = reqwest::get(link).await.unwrap().bytes().await.unwrap();
    let pass = pass_json(&pkpass);
    (
        issued["serial"].as_str().unwrap().to_string(),
        pass["authenticationToken"].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_holder_cannot_register_devices_without_end() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("passpulse.toml");
    std::fs::write(
        &config,
        "[issuer]\nmax_devices_per_pass = 3\nregistrations_per_minute = 6\n",
    )
    .unwrap();
    let s = Server::start(
        Some(&nats),
        &["--auth-token", TOKEN, "--config", config.to_str().unwrap()],
    )
    .await;
    let (serial, auth) = issue_pass(&s).await;
    let http = reqwest::Client::new();
    let url = |device: &str| {
        format!(
            "{}/wallet/v1/devices/{device}/registrations/{PASS_TYPE}/{serial}",
            s.base
        )
    };
    let register = |device: &str, push: &str| {
        http.post(url(device))
            .header("Authorization", format!("ApplePass {auth}"))
            .json(&json!({ "pushToken": push }))
            .send()
    };
    let token = |n: u8| format!("{n:02x}").repeat(32);

    // push tokens are APNs device tokens: anything else is refused, and costs no budget
    for bad in [
        "../../x\r\nHost: evil",
        "push-token-1",
        "0a0a",
        &"zz".repeat(32),
    ] {
        let r = register("D1", bad).await.unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
        assert!(r.text().await.unwrap().contains("64 to 200 hex digits"));
    }
    // three devices, then the cap
    for d in 1..=3 {
        let r = register(&format!("D{d}"), &token(d)).await.unwrap();
        assert_eq!(r.status(), 201, "D{d}");
    }
    let r = register("D4", &token(4)).await.unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().await.unwrap().contains("registered on 3 devices"));
    // a registered device may refresh its token; a freed place can be taken
    assert_eq!(register("D1", &token(11)).await.unwrap().status(), 200);
    let r = http
        .delete(url("D3"))
        .header("Authorization", format!("ApplePass {auth}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(register("D4", &token(4)).await.unwrap().status(), 201);
    // six requests a minute per pass: the flood of the report gets 429 with Retry-After
    let mut statuses = BTreeMap::new();
    let mut retry_after = None;
    for d in 0..300u32 {
        let r = register(&format!("X{d}"), &token((d % 200) as u8))
            .await
            .unwrap();
        *statuses.entry(r.status().as_u16()).or_insert(0) += 1;
        if r.status() == 429 {
            retry_after = r.headers().get("retry-after").cloned();
        }
    }
    assert_eq!(statuses, BTreeMap::from([(429, 300)]), "{statuses:?}");
    let wait: u64 = retry_after.unwrap().to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");

    // the install base of the pass: the three devices still registered
    let meta = s.get_json(&format!("/api/v1/passes/{serial}")).await;
    let devices: Vec<&str> = meta["registrations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["device"].as_str().unwrap())
        .collect();
    assert_eq!(devices.len(), 3, "{devices:?}");
    let installs = eventually(Duration::from_secs(20), "install events", || async {
        let n = s
            .scalar("SELECT count(*) AS n FROM events WHERE type = 'pass.installed'")
            .await;
        (n >= 4).then_some(n)
    })
    .await;
    assert_eq!(installs, 4, "D1, D2, D3 and D4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_log_messages_cannot_forge_log_lines() {
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
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/wallet/v1/log");
    let http = reqwest::Client::new();
    let forged = "2026-12-02T10:00:00.000000Z ERROR passpulse: forged line";
    let mut logs = vec![
        format!("pass check failed\n{forged}"),
        "\r\u{1b}[2Khidden by the terminal".to_string(),
        "y".repeat(20_000),
    ];
    logs.extend((0..40).map(|i| format!("message {i}")));
    let r = eventually(Duration::from_secs(30), "the log endpoint", || async {
        let r = http
            .post(&url)
            .json(&json!({ "logs": logs }))
            .send()
            .await
            .ok()?;
        (r.status() != 503).then_some(r)
    })
    .await;
    assert_eq!(r.status(), 200);
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());

    let log = std::fs::read_to_string(&log_path).unwrap();
    let device_lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("wallet device log"))
        .collect();
    assert!(
        !log.lines().any(|l| l.starts_with(forged)),
        "a forged line: {log}"
    );
    assert!(!log.contains('\u{1b}'), "a raw terminal escape: {log:?}");
    assert!(
        device_lines[0].contains(r#"pass check failed\n2026-12-02T10:00:00.000000Z ERROR"#),
        "{}",
        device_lines[0]
    );
    assert!(
        device_lines[1].contains(r#"\r\u{1b}[2Khidden"#),
        "{}",
        device_lines[1]
    );
    assert!(
        device_lines.iter().all(|l| l.len() < 1_000),
        "each message is cut"
    );
    // 20 messages of the request are written; the rest only counted
    assert_eq!(device_lines.len(), 21, "{device_lines:#?}");
    assert!(
        device_lines[20].contains("skipped=23"),
        "{}",
        device_lines[20]
    );
}
