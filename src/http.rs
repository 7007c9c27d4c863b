//! The HTTP surface of `passpulse serve`: the query, intake and pass APIs under `/api` (behind
//! the optional bearer token, compared in constant time), the wallet routes of the issuer
//! (`/wallet`, `/passes`: their own credentials), the dashboard at `/`, `/healthz` and
//! `/metrics`.
//!
//! Cross-site requests. No route sends CORS headers, so no other origin can read an answer or
//! pass a preflight. A page can still *send* a "simple" request (GET, or a POST of `text/plain`,
//! a form or no content type at all, e.g. `fetch(url, {method: "POST", mode: "no-cors"})`),
//! and the browser delivers it. With a bearer token configured that is harmless: a page cannot
//! attach the token. Without one, `/api` refuses what a page could forge:
//! - a POST, PATCH, PUT or DELETE whose `Content-Type` is not `application/json`,
//!   `application/x-ndjson` or `application/sql` (415): a page cannot send those without a
//!   preflight, which fails;
//! - any request a browser marks `Sec-Fetch-Site: cross-site` or `same-site` (403), except a
//!   GET that is a top-level navigation (a link the user follows), so a page cannot even make
//!   the server run a `GET /api/v1/query?sql=…` in the background.
//!
//! The wallet routes, download links and short links are outside `/api` and keep their own
//! credentials (Apple sends `application/json` with `ApplePass`, Google signs its callbacks).

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use passpulse_engine::persist::PersistMetrics;
use passpulse_engine::{Engine, event::Reason};
use passpulse_ingest::IngestMetrics;
use passpulse_ingest::intake::{self, IntakeState};
use passpulse_issuer::automation::http::AutomationSlot;
use passpulse_issuer::http::IssuerSlot;
use passpulse_query::{QueryMetrics, QueryState, error_response};
use subtle::ConstantTimeEq;

#[derive(Clone)]
pub struct AppState {
    pub engine: Engine,
    pub ingest: Arc<IngestMetrics>,
    pub query: Arc<QueryMetrics>,
    pub nats: async_nats::Client,
}

pub fn app(
    state: AppState,
    query: QueryState,
    intake: IntakeState,
    issuer: Option<IssuerSlot>,
    automation: Option<AutomationSlot>,
    auth_token: Option<String>,
    max_body: usize,
) -> Router {
    let mut api = passpulse_query::router(query).merge(intake::router(intake));
    if let Some(i) = &issuer {
        api = api.merge(passpulse_issuer::http::api_router(i.clone()));
    }
    let mut api = api.layer(DefaultBodyLimit::max(max_body));
    if auth_token.is_none() {
        api = api.layer(middleware::from_fn(refuse_cross_site));
    }
    let api = api.layer(middleware::from_fn_with_state(
        Arc::new(auth_token),
        require_token,
    ));
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(api)
        // the page holds no data; its script sends the bearer token with every API call
        .merge(passpulse_query::dashboard::router());
    if let Some(i) = issuer {
        // wallets and download links carry their own credentials, not the bearer token
        router = router.merge(passpulse_issuer::http::public_router(i));
    }
    if let Some(a) = automation {
        // short links: the code is the credential
        router = router.merge(passpulse_issuer::automation::http::router(a));
    }
    router
}

async fn require_token(
    State(token): State<Arc<Option<String>>>,
    req: Request,
    next: Next,
) -> Response {
    let Some(expected) = token.as_deref() else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bool::from(given.as_bytes().ct_eq(expected.as_bytes())) {
        next.run(req).await
    } else {
        let mut r = error_response(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token: send `Authorization: Bearer <token>`",
        );
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"passpulse\""),
        );
        r
    }
}

/// Content types a browser cannot send cross-site without a (failing) CORS preflight.
const API_CONTENT_TYPES: [&str; 3] = [
    "application/json",
    "application/x-ndjson",
    "application/sql",
];

/// Without a bearer token: refuses the `/api` requests a web page could make a browser send
/// (see the module documentation).
async fn refuse_cross_site(req: Request, next: Next) -> Response {
    let h = req.headers();
    let text = |name: &str| h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let navigation = req.method() == Method::GET && text("sec-fetch-mode") == "navigate";
    if matches!(text("sec-fetch-site"), "cross-site" | "same-site") && !navigation {
        return error_response(
            StatusCode::FORBIDDEN,
            "cross-site request refused: the API answers pages of its own origin only (or set an \
             auth token and send it as `Authorization: Bearer <token>`)",
        );
    }
    let writes = !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if writes {
        let essence = text(header::CONTENT_TYPE.as_str())
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if !API_CONTENT_TYPES.contains(&essence.as_str()) {
            let given = if essence.is_empty() {
                "none".to_string()
            } else {
                format!("`{essence}`")
            };
            return error_response(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!(
                    "Content-Type {given} refused: send `Content-Type: application/x-ndjson` \
                     (events), `application/json` (passes, queries) or `application/sql` (a \
                     query as plain SQL); a web page could forge any other type. With an auth \
                     token configured, any type is accepted"
                ),
            );
        }
    }
    next.run(req).await
}

async fn healthz(State(st): State<AppState>) -> Response {
    let nats = match st.nats.connection_state() {
        async_nats::connection::State::Connected => "connected",
        async_nats::connection::State::Pending => "connecting",
        async_nats::connection::State::Disconnected => "disconnected",
    };
    Json(serde_json::json!({
        "status": "ok",
        "nats": nats,
        "events": st.engine.events_applied(),
        "consumer_lag": IngestMetrics::get(&st.ingest.consumer_lag),
    }))
    .into_response()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

async fn metrics(State(st): State<AppState>) -> Response {
    let mut out = String::with_capacity(4096);
    let g = IngestMetrics::get;
    let m = &st.ingest;

    family(
        &mut out,
        "passpulse_events_ingested_total",
        "counter",
        "Events applied to the engine, by type.",
    );
    for (t, n) in st.engine.events_by_type() {
        let _ = writeln!(out, "passpulse_events_ingested_total{{type=\"{t}\"}} {n}");
    }
    family(
        &mut out,
        "passpulse_dead_letters_total",
        "counter",
        "Refused events, by reason.",
    );
    for (r, n) in m.dead_letters() {
        let _ = writeln!(
            out,
            "passpulse_dead_letters_total{{reason=\"{}\"}} {n}",
            Reason::as_str(r)
        );
    }
    let simple: [(&str, &str, &str, u64); 9] = [
        (
            "passpulse_messages_consumed_total",
            "counter",
            "NATS messages received by the engine consumer.",
            g(&m.messages),
        ),
        (
            "passpulse_consumer_lag_messages",
            "gauge",
            "Messages JetStream still holds for the engine consumer.",
            g(&m.consumer_lag),
        ),
        (
            "passpulse_consumer_last_sequence",
            "gauge",
            "Last stream sequence received.",
            g(&m.last_seq),
        ),
        (
            "passpulse_consumer_restarts_total",
            "counter",
            "Consumer re-positionings after broker errors or delivery gaps.",
            g(&m.consumer_restarts),
        ),
        (
            "passpulse_decode_failures_total",
            "counter",
            "Decodes that failed (a panic); the consumer restarted at the failed chunk, skipping nothing.",
            g(&m.decode_failures),
        ),
        (
            "passpulse_dead_letter_publish_failures_total",
            "counter",
            "Dead letters that could not be stored in the dead-letter stream.",
            g(&m.dead_letter_publish_failures),
        ),
        (
            "passpulse_http_events_accepted_total",
            "counter",
            "Lines accepted by POST /api/v1/events.",
            g(&m.http_accepted),
        ),
        (
            "passpulse_http_events_duplicate_total",
            "counter",
            "Lines of POST /api/v1/events the broker had already stored.",
            g(&m.http_duplicates),
        ),
        (
            "passpulse_http_events_rejected_total",
            "counter",
            "Lines refused by POST /api/v1/events.",
            g(&m.http_rejected),
        ),
    ];
    let p = st.engine.persist_metrics();
    let pg = PersistMetrics::get;
    let hot = st.engine.hot_snapshot();
    let storage: [(&str, &str, &str, u64); 16] = [
        (
            "passpulse_duplicate_events_total",
            "counter",
            "Events refused because their id was seen within the de-duplication window.",
            pg(&p.duplicates),
        ),
        (
            "passpulse_flushes_total",
            "counter",
            "Flushes committed (Parquet files and checkpoint).",
            pg(&p.flushes),
        ),
        (
            "passpulse_flush_failures_total",
            "counter",
            "Flush attempts that failed and were retried.",
            pg(&p.flush_failures),
        ),
        (
            "passpulse_flushed_rows_total",
            "counter",
            "Events written to Parquet by flushes.",
            pg(&p.flushed_rows),
        ),
        (
            "passpulse_flushed_bytes_total",
            "counter",
            "Parquet bytes written by flushes.",
            pg(&p.flushed_bytes),
        ),
        (
            "passpulse_last_flush_microseconds",
            "gauge",
            "Duration of the last flush.",
            pg(&p.last_flush_micros),
        ),
        (
            "passpulse_checkpoint_generation",
            "gauge",
            "Generation of the newest checkpoint.",
            pg(&p.checkpoint_generation),
        ),
        (
            "passpulse_checkpoint_sequence",
            "gauge",
            "Stream sequence covered by the newest checkpoint.",
            pg(&p.checkpoint_seq),
        ),
        (
            "passpulse_compactions_total",
            "counter",
            "Partitions compacted.",
            pg(&p.compactions),
        ),
        (
            "passpulse_compaction_failures_total",
            "counter",
            "Compactions that failed (retried after the next flush).",
            pg(&p.compaction_failures),
        ),
        (
            "passpulse_files_deleted_total",
            "counter",
            "Files deleted once no checkpoint needed them.",
            pg(&p.files_deleted),
        ),
        (
            "passpulse_expired_rows_total",
            "counter",
            "Events dropped by retention (their UTC day ended longer than the retention before the watermark).",
            pg(&p.expired_rows),
        ),
        (
            "passpulse_corrupt_checkpoints_total",
            "counter",
            "Damaged checkpoints skipped at start.",
            pg(&p.corrupt_checkpoints),
        ),
        (
            "passpulse_stray_files_total",
            "counter",
            "Temporary files of interrupted writes removed at start.",
            pg(&p.stray_files),
        ),
        (
            "passpulse_parquet_files",
            "gauge",
            "Parquet files of the events table.",
            hot.files.files.len() as u64,
        ),
        (
            "passpulse_parquet_rows",
            "gauge",
            "Events in Parquet files.",
            hot.files.rows(),
        ),
    ];
    for (name, kind, help, v) in simple.into_iter().chain(storage) {
        family(&mut out, name, kind, help);
        let _ = writeln!(out, "{name} {v}");
    }
    family(
        &mut out,
        "passpulse_hot_rows",
        "gauge",
        "Events held in the in-memory hot store.",
    );
    let _ = writeln!(out, "passpulse_hot_rows {}", hot.rows());
    family(
        &mut out,
        "passpulse_hot_bytes",
        "gauge",
        "Bytes of Arrow buffers in the hot store.",
    );
    let _ = writeln!(out, "passpulse_hot_bytes {}", hot.bytes());
    st.query.render(&mut out);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
