//! Automation against the real binary, a real nats-server, a real SMTP server on loopback
//! (Python's aiosmtpd, `tests/support/smtp_sink.py`) and a local HTTP server standing in for the
//! SMS provider: a loyalty sign-up is delivered by email and SMS with a short link that redirects
//! by device and is counted; duplicate contact events issue one pass and one message; a points
//! change reaches the pass the PassKit web service serves; a double opt-in confirmed through its
//! link delivers a coupon with a discount code; an SMTP outage delays an email without losing
//! it; segments follow event time; `passpulse flows check` explains a bad file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{BIN, Nats, Server, eventually, js_publish, pass_json};
use passpulse_ingest::nats_server::free_port;
use serde_json::{Value, json};

const PASS_TYPE: &str = "pass.dev.passpulse";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Mobile Safari/537.36";
const DESKTOP: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36";

const FLOWS: &str = include_str!("../data/flows.toml");

/// aiosmtpd on `port`, writing each message to `dir`.
struct SmtpSink {
    child: Child,
}

impl SmtpSink {
    fn start(port: u16, dir: &Path) -> SmtpSink {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg(port.to_string())
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 with aiosmtpd (scripts/setup installs it)");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready", "smtp sink did not start");
        SmtpSink { child }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The emails received so far, oldest first, decoded by Python's email package (an independent
/// MIME parser): (to, subject, text body).
fn mails(dir: &Path) -> Vec<(String, String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "eml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|f| {
            let out = Command::new("python3")
                .args([
                    "-c",
                    "import sys, json, email; from email import policy; m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=policy.default); print(json.dumps([m['To'], m['Subject'], m.get_body().get_content()]))",
                ])
                .arg(f)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let v: Value = serde_json::from_slice(&out.stdout).unwrap();
            (
                v[0].as_str().unwrap().to_string(),
                v[1].as_str().unwrap().to_string(),
                v[2].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The first `http://…/l/<code>` in `text`.
fn short_link(text: &str) -> String {
    let i = text.find("http://").expect("a link in the message");
    let link: String = text[i..]
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    assert!(link.contains("/l/"), "{link}");
    link
}

/// Requests the SMS provider received: (authorization header, JSON body).
type SmsLog = Arc<Mutex<Vec<(String, Value)>>>;

/// A local SMS provider: records each request's authorization header and JSON body.
async fn sms_provider() -> (String, SmsLog) {
    use axum::extract::State;
    use axum::http::HeaderMap;
    let got: SmsLog = Arc::default();
    let app = axum::Router::new()
        .route(
            "/sms",
            axum::routing::post(
                |State(got): State<SmsLog>, h: HeaderMap, body: String| async move {
                    let auth = h
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    got.lock()
                        .unwrap()
                        .push((auth, serde_json::from_str(&body).unwrap()));
                    axum::Json(json!({"status": "queued"}))
                },
            ),
        )
        .with_state(got.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sms", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn get_as(link: &str, agent: &str) -> reqwest::Response {
    no_redirects()
        .get(link)
        .header("user-agent", agent)
        .send()
        .await
        .unwrap()
}

/// A nats-server, the SMTP sink, the SMS provider and a configuration that uses them.
struct Rig {
    nats: Nats,
    js: async_nats::jetstream::Context,
    dir: tempfile::TempDir,
    mail_dir: PathBuf,
    smtp_port: u16,
    smtp: Option<SmtpSink>,
    sms: SmsLog,
    config: PathBuf,
}

impl Rig {
    async fn start() -> Rig {
        let nats = Nats::start();
        let js = nats.js().await;
        let dir = tempfile::tempdir().unwrap();
        let mail_dir = dir.path().join("mail");
        std::fs::create_dir_all(&mail_dir).unwrap();
        let smtp_port = free_port().unwrap();
        let smtp = Some(SmtpSink::start(smtp_port, &mail_dir));
        let (sms_url, sms) = sms_provider().await;
        let config = write_config(dir.path(), smtp_port, &sms_url);
        Rig {
            nats,
            js,
            dir,
            mail_dir,
            smtp_port,
            smtp,
            sms,
            config,
        }
    }
}

/// The server's configuration: the example flows, the SMTP sink and the SMS provider.
fn write_config(dir: &Path, smtp_port: u16, sms_url: &str) -> PathBuf {
    let flows = dir.join("flows.toml");
    std::fs::write(&flows, FLOWS).unwrap();
    let config = dir.join("passpulse.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[automation]
flows = "{}"
[automation.email]
host = "127.0.0.1"
port = {smtp_port}
tls = "none"
from = "Pulse Coffee <cards@pulse.test>"
timeout = "5s"
[automation.sms]
url = "{sms_url}"
authorization = "Bearer sms-secret"
from = "Pulse"
"#,
            flows.display()
        ),
    )
    .unwrap();
    config
}

/// The automation opens after the registry: its routes answer 503 until then.
async fn automation_ready(s: &Server) {
    eventually(Duration::from_secs(30), "automation ready", || async {
        let r = no_redirects()
            .get(format!("{}/l/0000000000", s.base))
            .send()
            .await
            .ok()?;
        (r.status() == 404).then_some(())
    })
    .await;
}

/// Waits until the automation consumer has handled every message published so far.
async fn automation_idle(js: &async_nats::jetstream::Context) {
    eventually(Duration::from_secs(30), "automation caught up", || async {
        let stream = js.get_stream("PASSPULSE_EVENTS").await.ok()?;
        let info = stream.consumer_info("passpulse-automation").await.ok()?;
        (info.num_pending == 0 && info.num_ack_pending == 0).then_some(())
    })
    .await;
}

async fn wait_mails(dir: &Path, n: usize) -> Vec<(String, String, String)> {
    eventually(Duration::from_secs(60), &format!("{n} emails"), || async {
        let m = mails(dir);
        (m.len() >= n).then_some(m)
    })
    .await
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_deliver_link_update_confirm_and_segment() {
    let mut rig = Rig::start().await;
    let (js, mail_dir, sms) = (rig.js.clone(), rig.mail_dir.clone(), rig.sms.clone());
    // segments run on event time: the test moves it 40 days ahead with events stamped then
    let args = [
        "--config",
        rig.config.to_str().unwrap(),
        "--max-future-skew",
        "60d",
    ];
    let s = Server::start(Some(&rig.nats), &args).await;
    automation_ready(&s).await;

    // --- a loyalty sign-up, published twice (a producer's retry) plus a second sign-up event
    let t0 = now_ms();
    let signup = |id: &str| {
        json!({"id": id, "type": "contact.registered", "ts": t0, "customer": "C1",
               "program": "loyalty", "source": "web-form",
               "attrs": {"first_name": "Ada", "email": "ada@example.test",
                         "phone": "+48123456789", "points": 100}})
        .to_string()
        .into_bytes()
    };
    let subject = "passpulse.events.contact.registered";
    js_publish(&js, subject, signup("reg-1")).await;
    js_publish(&js, subject, signup("reg-1")).await;
    js_publish(&js, subject, signup("reg-1-again")).await;
    let m = wait_mails(&mail_dir, 1).await;
    let (to, subj, body) = &m[0];
    assert!(to.contains("ada@example.test"), "{to}");
    assert_eq!(subj, "Your Pulse Rewards card");
    assert!(body.starts_with("Hi Ada,"), "{body}");
    let email_link = short_link(body);
    let got_sms = eventually(Duration::from_secs(30), "the SMS", || async {
        sms.lock().unwrap().first().cloned()
    })
    .await;
    assert_eq!(got_sms.0, "Bearer sms-secret");
    assert_eq!(got_sms.1["to"], "+48123456789");
    assert_eq!(got_sms.1["from"], "Pulse");
    let sms_text = got_sms.1["text"].as_str().unwrap().to_string();
    assert!(
        sms_text.chars().count() <= 160 && sms_text.is_ascii(),
        "one GSM segment: {sms_text:?}"
    );
    let sms_link = short_link(&sms_text);
    assert_ne!(email_link, sms_link, "each channel has its own link");
    assert!(
        sms_link.len() <= s.base.len() + 3 + 10,
        "short link: {sms_link}"
    );

    // duplicates: every copy handled, still one pass and one message per channel
    automation_idle(&js).await;
    eventually(Duration::from_secs(20), "deliveries counted", || async {
        (s.scalar("SELECT count(*) FROM events WHERE type = 'message.sent'")
            .await
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(
        mails(&mail_dir).len(),
        1,
        "one email for three sign-up messages"
    );
    assert_eq!(sms.lock().unwrap().len(), 1, "one SMS");
    assert_eq!(
        s.scalar("SELECT count(*) FROM events WHERE type = 'pass.issued' AND customer = 'C1'")
            .await,
        1
    );
    let sent = s
        .sql("SELECT source, attrs FROM events WHERE type = 'message.sent' ORDER BY source")
        .await;
    assert_eq!(sent[0]["source"], "email");
    assert_eq!(sent[1]["source"], "sms");
    let attrs: Value = serde_json::from_str(sent[0]["attrs"].as_str().unwrap()).unwrap();
    assert_eq!(attrs["basis"], "operational", "the basis is recorded");

    // --- the short link, by device
    let r = get_as(&sms_link, IPHONE).await;
    assert!(r.status().is_redirection(), "{}", r.status());
    let location = r.headers()["location"].to_str().unwrap().to_string();
    assert!(location.contains(".pkpass?expires="), "{location}");
    let pkpass = reqwest::get(&location).await.unwrap();
    assert_eq!(pkpass.status(), 200);
    let pass = pass_json(&pkpass.bytes().await.unwrap());
    let serial = pass["serialNumber"].as_str().unwrap().to_string();
    let auth = pass["authenticationToken"].as_str().unwrap().to_string();
    assert_eq!(pass["storeCard"]["primaryFields"][0]["value"], 100);
    // no Google Wallet configured: Android gets the landing page too
    for agent in [ANDROID, DESKTOP] {
        let r = get_as(&email_link, agent).await;
        assert_eq!(r.status(), 200);
        let html = r.text().await.unwrap();
        assert!(
            html.contains("Add to Apple Wallet") && html.contains("<svg"),
            "{html}"
        );
    }
    let clicks = eventually(Duration::from_secs(20), "3 clicks", || async {
        let rows = s
            .sql("SELECT source, count(*) AS n FROM events WHERE type = 'link.clicked' GROUP BY source ORDER BY source")
            .await;
        (rows.iter().map(|r| r["n"].as_i64().unwrap()).sum::<i64>() == 3).then_some(rows)
    })
    .await;
    assert_eq!(
        clicks,
        vec![
            json!({"source": "email", "n": 2}),
            json!({"source": "sms", "n": 1})
        ]
    );
    assert_eq!(
        s.scalar(&format!("SELECT count(*) FROM events WHERE type = 'link.clicked' AND pass = '{serial}' AND campaign = 'loyalty-signup'")).await,
        3
    );
    let click: Value = serde_json::from_str(
        s.sql("SELECT attrs FROM events WHERE type = 'link.clicked' AND source = 'sms'")
            .await[0]["attrs"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(click["channel"], "sms");
    assert_eq!(click["agent"], "ios");
    assert_eq!(
        get_as(&format!("{}/l/zzzzzzzzzz", s.base), IPHONE)
            .await
            .status(),
        404
    );
    assert_eq!(
        get_as(&format!("{}/l/..%2F..%2Fx", s.base), IPHONE)
            .await
            .status(),
        404
    );

    // --- a points change reaches the pass
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "{}/wallet/v1/devices/D1/registrations/{PASS_TYPE}/{serial}",
            s.base
        ))
        .header("authorization", format!("ApplePass {auth}"))
        .json(&json!({"pushToken": "0a".repeat(32)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let update = json!({"id": "upd-1", "type": "contact.updated", "ts": t0 + 1000,
                        "customer": "C1", "attrs": {"points": 250}});
    js_publish(
        &js,
        "passpulse.events.contact.updated",
        update.to_string().into_bytes(),
    )
    .await;
    let latest = eventually(Duration::from_secs(20), "the new balance", || async {
        let r = http
            .get(format!("{}/wallet/v1/passes/{PASS_TYPE}/{serial}", s.base))
            .header("authorization", format!("ApplePass {auth}"))
            .send()
            .await
            .ok()?;
        let p = pass_json(&r.bytes().await.ok()?);
        (p["storeCard"]["primaryFields"][0]["value"] == 250).then_some(p)
    })
    .await;
    assert_eq!(latest["serialNumber"], serial.as_str());
    eventually(Duration::from_secs(20), "pass.updated and the push attempt", || async {
        let n = s
            .scalar(&format!(
                "SELECT count(*) FROM events WHERE pass = '{serial}' AND type IN ('pass.updated', 'push.failed') AND (type = 'pass.updated' OR device = 'D1')"
            ))
            .await;
        (n == 2).then_some(())
    })
    .await;

    // --- double opt-in with a discount
    let optin = json!({"id": "opt-1", "type": "optin.requested", "ts": t0 + 2000, "customer": "C2",
                       "program": "newsletter", "source": "web",
                       "attrs": {"email": "bob@example.test", "marketing_consent": "true"}});
    js_publish(
        &js,
        "passpulse.events.optin.requested",
        optin.to_string().into_bytes(),
    )
    .await;
    let m = wait_mails(&mail_dir, 2).await;
    assert!(m[1].0.contains("bob@example.test"));
    let confirm_link = short_link(&m[1].2);
    // opening the link (as a mail scanner would) does not confirm
    let page = get_as(&confirm_link, DESKTOP).await.text().await.unwrap();
    assert!(page.contains("method=\"post\""), "{page}");
    automation_idle(&js).await;
    assert_eq!(
        s.scalar("SELECT count(*) FROM events WHERE type = 'optin.confirmed'")
            .await,
        0
    );
    // pressing the button does, once however often it is pressed
    for _ in 0..2 {
        let r = no_redirects().post(&confirm_link).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let m = wait_mails(&mail_dir, 3).await;
    let (to, subj, body) = &m[2];
    assert!(to.contains("bob@example.test"));
    assert_eq!(subj, "Your welcome discount");
    let code: String = body
        .split_whitespace()
        .find(|w| w.starts_with("WELCOME-"))
        .expect("a discount code")
        .trim_end_matches(':')
        .to_string();
    assert_eq!(code.len(), "WELCOME-".len() + 10, "{code}");
    let r = get_as(&short_link(body), IPHONE).await;
    let coupon = pass_json(
        &reqwest::get(r.headers()["location"].to_str().unwrap())
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap(),
    );
    assert_eq!(coupon["barcodes"][0]["message"], code.as_str());
    assert_eq!(
        coupon["coupon"]["secondaryFields"][0]["value"],
        code.as_str()
    );
    let rate = eventually(Duration::from_secs(20), "the confirmation rate", || async {
        let rows = s
            .sql("SELECT sum(CASE WHEN type = 'optin.confirmed' THEN 1 ELSE 0 END) * 1.0 / sum(CASE WHEN type = 'optin.requested' THEN 1 ELSE 0 END) AS rate FROM events WHERE type IN ('optin.requested', 'optin.confirmed')")
            .await;
        rows[0]["rate"].as_f64().filter(|r| *r > 0.0)
    })
    .await;
    assert_eq!(rate, 1.0);

    // --- an SMTP outage delays the email, loses nothing
    rig.smtp.take();
    let signup3 = json!({"id": "reg-3", "type": "contact.registered", "ts": t0 + 3000,
                         "customer": "C3", "program": "loyalty",
                         "attrs": {"first_name": "Cy", "email": "cy@example.test"}});
    js_publish(&js, subject, signup3.to_string().into_bytes()).await;
    eventually(Duration::from_secs(30), "a failed attempt", || async {
        (s.scalar("SELECT count(*) FROM events WHERE type = 'message.failed' AND customer = 'C3' AND source = 'email'").await >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(mails(&mail_dir).len(), 3);
    rig.smtp = Some(SmtpSink::start(rig.smtp_port, &mail_dir));
    let m = wait_mails(&mail_dir, 4).await;
    assert!(m[3].0.contains("cy@example.test"), "{:?}", m[3]);

    // --- segments on event time: a scan 40 days on moves the watermark past C1's and C3's
    // last activity + 30 days; then C1 earns points and is active again
    let day = 86_400_000i64;
    let scan = json!({"id": "scan-1", "type": "scan", "ts": t0 + 40 * day, "pass": serial,
                      "location": "L1", "device": "S1", "operator": "O1", "result": "accepted"});
    js_publish(&js, "passpulse.events.scan", scan.to_string().into_bytes()).await;
    let segs = |sql: &'static str| {
        let s = &s;
        async move { s.sql(sql).await }
    };
    let rows = eventually(
        Duration::from_secs(20),
        "segments after the scan",
        || async {
            let rows = segs("SELECT customer, segment FROM segments ORDER BY customer").await;
            // the three transitions of the scan reach the engine one by one: wait for all
            let want = [
                json!({"customer": "C1", "segment": "active"}),
                json!({"customer": "C3", "segment": "inactive"}),
            ];
            (rows == want).then_some(rows)
        },
    )
    .await;
    // C1's scan at day 40 came after its inactivity (day 30 + 1 s): active again
    assert_eq!(rows[0], json!({"customer": "C1", "segment": "active"}));
    assert_eq!(rows[1], json!({"customer": "C3", "segment": "inactive"}));
    let entered = s
        .sql("SELECT customer, result, ts FROM events WHERE type = 'segment.entered' ORDER BY customer, ts")
        .await;
    let summary: Vec<(String, String)> = entered
        .iter()
        .map(|r| {
            (
                r["customer"].as_str().unwrap().to_string(),
                r["result"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("C1", "active"),
            ("C1", "inactive"),
            ("C1", "active"),
            ("C3", "active"),
            ("C3", "inactive")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_neither_loses_nor_repeats_a_delivery() {
    let rig = Rig::start().await;
    let (js, mail_dir) = (rig.js.clone(), rig.mail_dir.clone());
    let args = ["--config", rig.config.to_str().unwrap()];
    let data = rig.dir.path().join("data");
    let signup = |id: &str, customer: &str| {
        json!({"id": id, "type": "contact.registered", "ts": now_ms(), "customer": customer,
               "program": "loyalty", "attrs": {"email": format!("{customer}@example.test")}})
        .to_string()
        .into_bytes()
    };
    let subject = "passpulse.events.contact.registered";
    let mut s = Server::start_in(Some(&rig.nats), &args, &[], data.clone(), None).await;
    automation_ready(&s).await;
    js_publish(&js, subject, signup("reg-a", "CA")).await;
    wait_mails(&mail_dir, 1).await;
    s.kill9();
    // while it is down: the same sign-up again (a retry) and a new one
    js_publish(&js, subject, signup("reg-a-retry", "CA")).await;
    js_publish(&js, subject, signup("reg-b", "CB")).await;
    let s = Server::start_in(Some(&rig.nats), &args, &[], data, None).await;
    automation_ready(&s).await;
    let m = wait_mails(&mail_dir, 2).await;
    automation_idle(&js).await;
    eventually(Duration::from_secs(20), "the outbox emptied", || async {
        let mut outbox = js.get_stream("PASSPULSE_OUTBOX").await.ok()?;
        (outbox.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
    let m2 = mails(&mail_dir);
    assert_eq!(
        m2.len(),
        2,
        "one email per customer across the restart: {m2:?}"
    );
    assert!(
        m[0].0.contains("CA@example.test") && m[1].0.contains("CB@example.test"),
        "{m:?}"
    );
    assert_eq!(
        s.scalar("SELECT count(*) FROM events WHERE type = 'pass.issued'")
            .await,
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_that_cannot_succeed_is_given_up_and_the_next_goes_through() {
    let rig = Rig::start().await;
    let (js, mail_dir) = (rig.js.clone(), rig.mail_dir.clone());
    let args = ["--config", rig.config.to_str().unwrap()];
    let s = Server::start(Some(&rig.nats), &args).await;
    automation_ready(&s).await;
    let signup = |id: &str, customer: &str| {
        json!({"id": id, "type": "contact.registered", "ts": now_ms(), "customer": customer,
               "program": "loyalty", "attrs": {"email": format!("{customer}@example.test")}})
        .to_string()
        .into_bytes()
    };
    js_publish(
        &js,
        "passpulse.events.contact.registered",
        signup("reg-a", "CA"),
    )
    .await;
    wait_mails(&mail_dir, 1).await;
    let serial = eventually(Duration::from_secs(30), "CA's pass", || async {
        let rows = s
            .sql("SELECT pass FROM events WHERE type = 'pass.issued' AND customer = 'CA'")
            .await;
        rows.first()?["pass"].as_str().map(str::to_string)
    })
    .await;
    // the pass's stored record is damaged: updating it can never succeed
    let passes = js.get_key_value("PASSPULSE_PASSES").await.unwrap();
    passes
        .put(&serial, b"{not json".to_vec().into())
        .await
        .unwrap();
    let points = json!({"id": "pts-a", "type": "contact.updated", "ts": now_ms(),
                        "customer": "CA", "attrs": {"points": 50}});
    js_publish(
        &js,
        "passpulse.events.contact.updated",
        points.to_string().into_bytes(),
    )
    .await;
    // the next customer's sign-up is not held behind it (the consumer has one message in
    // flight: a step retried forever used to stop every flow)
    js_publish(
        &js,
        "passpulse.events.contact.registered",
        signup("reg-b", "CB"),
    )
    .await;
    let m = wait_mails(&mail_dir, 2).await;
    assert!(m[1].0.contains("CB@example.test"), "{m:?}");
    automation_idle(&js).await;
    let info = js
        .get_stream("PASSPULSE_EVENTS")
        .await
        .unwrap()
        .consumer_info("passpulse-automation")
        .await
        .unwrap()
        .clone();
    assert_eq!(info.num_ack_pending, 0, "nothing waits for a retry");
    assert_eq!(
        s.scalar("SELECT count(*) FROM events WHERE type = 'pass.updated'")
            .await,
        0,
        "the damaged pass was not updated"
    );
}

#[test]
fn flows_check_explains_a_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, FLOWS).unwrap();
    let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/templates");
    let out = Command::new(BIN)
        .args(["flows", "check"])
        .arg(&good)
        .arg("--templates")
        .arg(&templates)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("4 flows OK"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        FLOWS.replace("template = \"coupon\"", "template = \"voucher\""),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["flows", "check"])
        .arg(&bad)
        .arg("--templates")
        .arg(&templates)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("welcome-coupon") && err.contains("\"voucher\" does not exist"),
        "{err}"
    );
}
