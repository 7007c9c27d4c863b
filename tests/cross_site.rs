//! What a web page can make a visitor's browser send: without a bearer token, `/api` accepts
//! only requests a page cannot forge (a JSON, NDJSON or SQL content type needs a CORS preflight,
//! and no route answers one), and refuses what the browser marks as cross-site. With a token,
//! the token is the protection and any content type is accepted. The CLI and the wallet routes
//! keep working.

mod common;

use std::process::Command;

use common::{BIN, Nats, Server, ev};
use serde_json::json;

fn event(id: &str) -> String {
    ev(id, "link.clicked", 1_000, r#""source":"web""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_the_api_refuses_what_a_web_page_could_send() {
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &[]).await;
    let post = |path: &str, content_type: Option<&str>, body: String| {
        let mut r = server.post(path).body(body);
        if let Some(t) = content_type {
            r = r.header("content-type", t);
        }
        async move { r.send().await.unwrap() }
    };

    // the simple content types of `fetch(…, {mode: "no-cors"})`, a form, and none (a Blob body)
    for t in [
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let r = post("/api/v1/events", t, event("forged")).await;
        assert_eq!(r.status(), 415, "events as {t:?}");
        let text = r.text().await.unwrap();
        assert!(text.contains("application/x-ndjson"), "{text}");
        let pass = json!({"program": "loyalty", "customer": "C1"}).to_string();
        assert_eq!(post("/api/v1/passes", t, pass).await.status(), 415);
        let sql = "SELECT count(*) FROM events".to_string();
        assert_eq!(post("/api/v1/query", t, sql).await.status(), 415);
    }
    let r = server
        .patch("/api/v1/passes/P1")
        .header("content-type", "text/plain")
        .body(r#"{"attributes":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);

    // the types a page cannot send without a preflight are served
    let r = post("/api/v1/events", Some("application/x-ndjson"), event("e1")).await;
    assert_eq!(r.status(), 200);
    let r = post("/api/v1/events", Some("application/json"), event("e2")).await;
    assert_eq!(r.status(), 200);
    server.wait_events(2).await;
    let r = post(
        "/api/v1/query",
        Some("application/sql"),
        "SELECT 1 AS one".into(),
    )
    .await;
    assert_eq!(r.text().await.unwrap(), r#"[{"one":1}]"#);
    let body = json!({"program": "nope", "customer": "C1"}).to_string();
    let r = post("/api/v1/passes", Some("application/json"), body).await;
    assert!([400, 503].contains(&r.status().as_u16()), "{}", r.status());

    // nothing forged was stored
    assert_eq!(server.scalar("SELECT count(*) FROM events").await, 2);

    // a browser marks a page's background request to another site: refused, even a GET;
    // following a link (a navigation) and same-origin requests (the dashboard) are served
    let get = |site: Option<&str>, mode: &str| {
        let mut r = server
            .get("/api/v1/query")
            .query(&[("sql", "SELECT 1 AS one")])
            .header("sec-fetch-mode", mode);
        if let Some(s) = site {
            r = r.header("sec-fetch-site", s);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(get(Some("cross-site"), "no-cors").await, 403);
    assert_eq!(get(Some("same-site"), "cors").await, 403);
    assert_eq!(get(Some("cross-site"), "navigate").await, 200);
    assert_eq!(get(Some("same-origin"), "cors").await, 200);
    assert_eq!(get(None, "cors").await, 200, "curl, BI tools");
    let r = server
        .post("/api/v1/events")
        .header("content-type", "application/x-ndjson")
        .header("sec-fetch-site", "cross-site")
        .header("sec-fetch-mode", "cors")
        .body(event("e3"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // CORS stays closed: no preflight succeeds, no answer is readable by another origin
    let r = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/api/v1/events", server.base),
        )
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success(), "{}", r.status());
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = server
        .get("/api/v1/stats")
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    // the CLI sends JSON
    let out = Command::new(BIN)
        .args(["query", "--url", &server.base, "--format", "csv"])
        .arg("SELECT count(*) AS n FROM events")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "\"n\"\n2\n");

    // wallets are outside /api: Apple's log call (JSON, no bearer token) is served
    let r = reqwest::Client::new()
        .post(format!("{}/wallet/v1/log", server.base))
        .json(&json!({"logs": ["hello"]}))
        .send()
        .await
        .unwrap();
    assert!(![403, 415].contains(&r.status().as_u16()), "{}", r.status());
}

#[tokio::test]
async fn with_a_token_any_content_type_is_accepted_from_the_token_holder() {
    let token = "cross-site-test-token-0123";
    let nats = Nats::start();
    let server = Server::start(Some(&nats), &["--auth-token", token]).await;
    let r = server
        .post("/api/v1/events")
        .header("content-type", "text/plain")
        .body(event("t1"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.wait_events(1).await;
    let r = server
        .post("/api/v1/query")
        .header("content-type", "text/plain")
        .body("SELECT count(*) AS n FROM events")
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), r#"[{"n":1}]"#);
    // a forged request carries no token
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/events", server.base))
        .header("content-type", "text/plain")
        .body(event("t2"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
