//! HTTP API of the query layer: `GET`/`POST /api/v1/query`, `GET /api/v1/insights[/{name}]` and
//! `GET /api/v1/stats`.
//!
//! A query runs entirely on the query runtime. The response head is sent once the first encoded
//! bytes exist, so planning errors, refusals, timeouts, the result cap (also for Parquet, which
//! holds a row group before writing it) and early execution errors get a proper status and a
//! JSON `{"error": …}` body. After that, bytes stream as they are produced; a failure or
//! timeout mid-stream aborts the response (the client sees a truncated body, never a silently
//! short one).
//!
//! The deadline and the process memory ceiling are held here, on the HTTP runtime, not inside
//! the query's own task: a CPU-bound operator that keeps a query thread busy cannot delay them.
//! When either passes, the client gets its 504 or 422 at once and the query's task is aborted,
//! which drops its stream and stops execution at the operators' next yield (DataFusion's
//! cooperative scheduling yields between batches). The client going away stops it the same way.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use datafusion::common::ScalarValue;
use futures::StreamExt;
use passpulse_engine::Engine;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;

use crate::format::{Encoder, Format};
use crate::guard::QueryStop;
use crate::insights::{self, INSIGHTS, Scope};
use crate::metrics::{Outcome, QueryMetrics};
use crate::session::{QueryError, QueryService};

#[derive(Clone)]
pub struct QueryState {
    pub service: Arc<QueryService>,
    pub engine: Engine,
    pub metrics: Arc<QueryMetrics>,
}

pub fn router(state: QueryState) -> Router {
    Router::new()
        .route("/api/v1/query", get(get_query).post(post_query))
        .route("/api/v1/insights", get(list_insights))
        .route("/api/v1/insights/live", get(live))
        .route("/api/v1/insights/{name}", get(get_insight))
        .route("/api/v1/stats", get(stats))
        .with_state(state)
}

#[derive(Debug, Deserialize)]
struct QueryParams {
    sql: Option<String>,
    format: Option<String>,
}

/// The query parameters of `GET /api/v1/insights/{name}`.
#[derive(Debug, Default)]
struct InsightParams {
    from: Option<String>,
    to: Option<String>,
    program: Option<String>,
    source: Option<String>,
    campaign: Option<String>,
    location: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
    format: Option<String>,
}

/// Every parameter an insight takes, in the order the refusal lists them.
const INSIGHT_PARAMS: &[&str] = &[
    "from", "to", "program", "source", "campaign", "location", "limit", "offset", "format",
];

impl InsightParams {
    /// The parameters from the request's `(name, value)` pairs. An unknown name is refused,
    /// never ignored: a misspelt filter (`sorce=sms`) would otherwise answer for every event as
    /// if it were the filtered figure. A name given twice is refused too (which one would win?).
    fn from_pairs(pairs: Vec<(String, String)>) -> Result<InsightParams, String> {
        let mut p = InsightParams::default();
        for (name, value) in pairs {
            let slot = match name.as_str() {
                "from" => &mut p.from,
                "to" => &mut p.to,
                "program" => &mut p.program,
                "source" => &mut p.source,
                "campaign" => &mut p.campaign,
                "location" => &mut p.location,
                "limit" => &mut p.limit,
                "offset" => &mut p.offset,
                "format" => &mut p.format,
                _ => {
                    return Err(format!(
                        "unknown parameter `{name}`: an insight takes {}",
                        INSIGHT_PARAMS.join(", ")
                    ));
                }
            };
            if slot.replace(value).is_some() {
                return Err(format!("parameter `{name}` is given more than once"));
            }
        }
        Ok(p)
    }
}

#[derive(Debug, Deserialize)]
struct QueryBody {
    sql: String,
    format: Option<String>,
}

pub fn error_response(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

fn status_of(e: &QueryError) -> StatusCode {
    match e {
        QueryError::ReadOnly(_) => StatusCode::FORBIDDEN,
        QueryError::Plan(_) | QueryError::Shape(_) | QueryError::Execution(_) => {
            StatusCode::BAD_REQUEST
        }
        QueryError::Memory { .. }
        | QueryError::TooLarge(_)
        | QueryError::ValueTooLarge(_)
        | QueryError::ProcessMemory(_) => StatusCode::UNPROCESSABLE_ENTITY,
        QueryError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        QueryError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn outcome_of(e: &QueryError) -> Outcome {
    match e {
        QueryError::ReadOnly(_) | QueryError::Shape(_) => Outcome::Refused,
        QueryError::Timeout(_) => Outcome::Timeout,
        _ => Outcome::Error,
    }
}

async fn get_query(State(st): State<QueryState>, Query(p): Query<QueryParams>) -> Response {
    let Some(sql) = p.sql else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "missing query parameter `sql` (GET /api/v1/query?sql=SELECT…&format=json)",
        );
    };
    run(st, sql, p.format).await
}

async fn post_query(
    State(st): State<QueryState>,
    Query(p): Query<QueryParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (sql, format) = if is_json {
        match serde_json::from_slice::<QueryBody>(&body) {
            Ok(b) => (b.sql, b.format.or(p.format)),
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    format!("body is not {{\"sql\": \"…\", \"format\": \"…\"}}: {e}"),
                );
            }
        }
    } else {
        match String::from_utf8(body.to_vec()) {
            Ok(s) => (s, p.format),
            Err(_) => return error_response(StatusCode::BAD_REQUEST, "SQL body is not UTF-8"),
        }
    };
    run(st, sql, format).await
}

async fn list_insights() -> Response {
    let mut list: Vec<_> = INSIGHTS
        .iter()
        .map(|i| {
            serde_json::json!({
                "name": i.name,
                "title": i.title,
                "view": i.view_name(),
                "url": format!("/api/v1/insights/{}", i.name),
            })
        })
        .collect();
    list.push(serde_json::json!({
        "name": "live",
        "title": "Install base, today's and the last hour's events, location peaks and distinct \
                  counts, from the engine's rolling aggregates",
        "view": null,
        "url": "/api/v1/insights/live",
    }));
    Json(list).into_response()
}

async fn get_insight(
    State(st): State<QueryState>,
    Path(name): Path<String>,
    pairs: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    let Some(insight) = insights::find(&name) else {
        let names: Vec<_> = INSIGHTS.iter().map(|i| i.name).collect();
        return error_response(
            StatusCode::NOT_FOUND,
            format!("no insight {name:?}: one of {}", names.join(", ")),
        );
    };
    let p = match pairs
        .map_err(|e| e.body_text())
        .and_then(|Query(pairs)| InsightParams::from_pairs(pairs))
    {
        Ok(p) => p,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e),
    };
    let scope = match Scope::parse(
        p.from.as_deref(),
        p.to.as_deref(),
        p.program.as_deref(),
        p.source.as_deref(),
        p.campaign.as_deref(),
        p.location.as_deref(),
    )
    .and_then(|s| s.with_page(p.limit.as_deref(), p.offset.as_deref()))
    {
        Ok(s) => s,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let (sql, params) = insight.scoped_sql(&scope, &st.service.config().insights);
    run_with(st, sql, params, p.format).await
}

/// The live figures, read from the engine's rolling aggregates (no scan of events).
async fn live(State(st): State<QueryState>) -> Response {
    let s = st.engine.stats();
    Json(serde_json::json!({
        "watermark": s.watermark,
        "events": s.events,
        "install_base": s.install_base,
        "today": s.today,
        "last_hour": s.last_hour,
        "location_peaks": s.location_peaks,
        "distinct": s.distinct,
        "funnel": s.funnel,
    }))
    .into_response()
}

async fn stats(State(st): State<QueryState>) -> Response {
    Json(st.engine.stats()).into_response()
}

async fn run(st: QueryState, sql: String, format: Option<String>) -> Response {
    run_with(st, sql, Vec::new(), format).await
}

/// Runs `sql` with values for its named parameters and streams the result in `format`.
async fn run_with(
    st: QueryState,
    sql: String,
    params: Vec<(String, ScalarValue)>,
    format: Option<String>,
) -> Response {
    let format = match format.as_deref().map(Format::parse) {
        None => Format::Json,
        Some(Some(f)) => f,
        Some(None) => {
            return error_response(
                StatusCode::BAD_REQUEST,
                format!(
                    "unknown format {:?}: use json, jsonl, csv, arrow or parquet",
                    format.unwrap_or_default()
                ),
            );
        }
    };
    if sql.trim().is_empty() {
        return error_response(StatusCode::BAD_REQUEST, "empty SQL statement");
    }
    let (head_tx, head_rx) = oneshot::channel::<Result<(), QueryError>>();
    let (body_tx, body_rx) = mpsc::channel::<Result<Bytes, io::Error>>(4);
    let service = st.service.clone();
    let finish = Arc::new(Finish::new(st.metrics.clone()));
    let (trips, ceiling) = service.memory_trips();
    let timeout = service.config().timeout;
    // the operators check the same deadline and ceiling between batches (crate::guard)
    let query_stop = service.query_stop(Instant::now() + timeout);
    let task = service.runtime().spawn(execute(
        service.clone(),
        st.metrics.clone(),
        (sql, params, query_stop.clone()),
        format,
        head_tx,
        body_tx,
        finish.clone(),
    ));
    let mut stop = Stop {
        task: task.abort_handle(),
        deadline: tokio::time::Instant::now() + timeout,
        timeout,
        trips,
        ceiling,
        finish,
        query_stop,
    };
    match stop.guard(head_rx).await {
        Ok(Ok(Ok(()))) => {
            let body = futures::stream::unfold(Some((body_rx, stop)), |state| async move {
                let (mut rx, mut stop) = state?;
                match stop.guard(rx.recv()).await {
                    Ok(Some(item)) => Some((item, Some((rx, stop)))),
                    Ok(None) => None,
                    Err(e) => Some((Err(io::Error::other(e.to_string())), None)),
                }
            });
            Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, format.content_type())
                .body(Body::from_stream(body))
                .unwrap_or_else(|e| {
                    error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
                })
        }
        Ok(Ok(Err(e))) | Err(e) => error_response(status_of(&e), e.to_string()),
        Ok(Err(_)) => error_response(
            StatusCode::INTERNAL_SERVER_ERROR,
            "query task ended unexpectedly",
        ),
    }
}

/// Records a query's outcome in the metrics once, whoever ends it first (the query's task, or
/// the deadline or memory ceiling that aborts it).
struct Finish {
    metrics: Arc<QueryMetrics>,
    started: Instant,
    done: AtomicBool,
}

impl Finish {
    fn new(metrics: Arc<QueryMetrics>) -> Finish {
        Finish {
            metrics,
            started: Instant::now(),
            done: AtomicBool::new(false),
        }
    }

    fn record(&self, outcome: Outcome, rows: u64) {
        if !self.done.swap(true, Ordering::SeqCst) {
            self.metrics.finish(outcome, self.started.elapsed(), rows);
        }
    }
}

/// What stops a running query from outside its task: the deadline and the memory ceiling.
/// Dropping it (the response is over, or the client went away) aborts the task too.
struct Stop {
    task: AbortHandle,
    deadline: tokio::time::Instant,
    timeout: Duration,
    trips: watch::Receiver<u64>,
    ceiling: usize,
    finish: Arc<Finish>,
    query_stop: Arc<QueryStop>,
}

impl Stop {
    /// `f`, unless the deadline or the memory ceiling passes first: then the query is aborted
    /// and the reason returned.
    async fn guard<F: std::future::Future>(&mut self, f: F) -> Result<F::Output, QueryError> {
        let tripped = async {
            // a closed sender (never: the service holds it) must not read as a trip
            if self.trips.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        let e = tokio::select! {
            out = f => return Ok(out),
            _ = tokio::time::sleep_until(self.deadline) => QueryError::Timeout(self.timeout),
            _ = tripped => QueryError::ProcessMemory(self.ceiling),
        };
        self.task.abort();
        self.query_stop.cancel();
        tracing::info!(error = %e, "query stopped");
        self.finish.record(outcome_of(&e), 0);
        Err(e)
    }
}

impl Drop for Stop {
    fn drop(&mut self) {
        self.task.abort();
        self.query_stop.cancel();
    }
}

/// Runs on the query runtime: plan, check, execute, encode, stream. The deadline and the memory
/// ceiling are enforced from outside (see [`Stop`]).
async fn execute(
    service: Arc<QueryService>,
    metrics: Arc<QueryMetrics>,
    (sql, params, stop): (String, Vec<(String, ScalarValue)>, Arc<QueryStop>),
    format: Format,
    head_tx: oneshot::Sender<Result<(), QueryError>>,
    body_tx: mpsc::Sender<Result<Bytes, io::Error>>,
    finish: Arc<Finish>,
) {
    let _running = metrics.start();
    let cfg = service.config().clone();
    let mut head = Some(head_tx);
    let mut rows = 0u64;
    let work = async {
        let (schema, mut stream) = service.start_stoppable(&sql, params, stop).await?;
        let mut enc =
            Encoder::new(format, &schema).map_err(|e| QueryError::Internal(e.to_string()))?;
        let mut sent = 0usize;
        while let Some(batch) = stream
            .next()
            .await
            .transpose()
            .map_err(|e| service.map_err(e))?
        {
            rows += batch.num_rows() as u64;
            enc.write(&batch)
                .map_err(|e| QueryError::Execution(e.to_string()))?;
            let chunk = enc.take();
            sent += chunk.len();
            // Parquet holds a row group until it is full: what it holds counts too
            if sent + enc.pending_bytes() > cfg.max_result_bytes {
                return Err(QueryError::TooLarge(cfg.max_result_bytes));
            }
            if !chunk.is_empty() {
                if let Some(h) = head.take() {
                    let _ = h.send(Ok(()));
                }
                if body_tx.send(Ok(chunk.into())).await.is_err() {
                    return Ok(()); // the client went away: dropping the stream stops execution
                }
            }
        }
        let tail = enc
            .finish()
            .map_err(|e| QueryError::Execution(e.to_string()))?;
        if sent + tail.len() > cfg.max_result_bytes {
            return Err(QueryError::TooLarge(cfg.max_result_bytes));
        }
        if let Some(h) = head.take() {
            let _ = h.send(Ok(()));
        }
        if !tail.is_empty() {
            let _ = body_tx.send(Ok(tail.into())).await;
        }
        Ok(())
    };
    let result = work.await;
    let outcome = match &result {
        Ok(()) => Outcome::Ok,
        Err(e) => outcome_of(e),
    };
    if let Err(e) = result {
        tracing::info!(error = %e, "query failed");
        match head.take() {
            Some(h) => {
                let _ = h.send(Err(e));
            }
            None => {
                let _ = body_tx.send(Err(io::Error::other(e.to_string()))).await;
            }
        }
    }
    finish.record(outcome, rows);
}
