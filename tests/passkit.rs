//! The issuer over HTTP against the real binary and a real nats-server: issue a pass through the
//! API, download it by its signed link, then walk Apple's PassKit web service as a device does
//! (register, re-register, bad token, serials since a tag, 204, latest pass with 304, update,
//! log, unregister) and count the resulting lifecycle events in SQL.

mod common;

use std::time::Duration;

use common::{Nats, Server, eventually, pass_json};
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
            .json(&json!({"pushToken": "push-token-1"}))
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
        .json(&json!({"pushToken": "p"}))
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
