//! HTTP routes of the issuer (axum).
//!
//! [`api_router`] — for the operator, behind the server's bearer token:
//! - `POST /api/v1/passes` `{program, customer, attributes, source, campaign}` → 201 with the
//!   serial, a signed expiring download URL and the Google save URL;
//! - `GET /api/v1/passes/{serial}` → metadata (never the auth token);
//! - `PATCH /api/v1/passes/{serial}` `{attributes}` → update, `pass.updated`, pushes.
//!
//! [`public_router`] — for wallets and customers, authenticated by what they hold:
//! - `GET /passes/{serial}.pkpass?expires=…&sig=…` (the download link);
//! - Apple's PassKit web service under `/wallet/v1/…` (`ApplePass <token>`, compared in
//!   constant time): register, unregister, serials updated since a tag, latest pass with
//!   `Last-Modified` / `If-Modified-Since`, log;
//! - `POST /wallet/google/callback`: Google Wallet save/delete callbacks (signed, verified).

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::service::{IssueError, Issuer, NewPass};

impl IntoResponse for IssueError {
    fn into_response(self) -> Response {
        let status = match &self {
            IssueError::BadRequest(_) => StatusCode::BAD_REQUEST,
            IssueError::NotFound(_) => StatusCode::NOT_FOUND,
            IssueError::Unauthorized => StatusCode::UNAUTHORIZED,
            IssueError::Forbidden(_) => StatusCode::FORBIDDEN,
            IssueError::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
            IssueError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            IssueError::Internal(_) | IssueError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "issuer");
        }
        let mut r = (status, Json(json!({ "error": self.to_string() }))).into_response();
        if let IssueError::TooManyRequests(_, wait) = &self
            && let Ok(v) = header::HeaderValue::from_str(&wait.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

/// The issuer once its registry is open; until then its routes answer 503.
#[derive(Clone, Debug, Default)]
pub struct IssuerSlot(Arc<OnceLock<Issuer>>);

impl IssuerSlot {
    pub fn set(&self, issuer: Issuer) {
        let _ = self.0.set(issuer);
    }

    fn ready(&self) -> Result<&Issuer, IssueError> {
        self.0.get().ok_or_else(|| {
            IssueError::Unavailable(
                "the issuer is starting (pass registry not open yet); retry".into(),
            )
        })
    }
}

/// Operator routes (put them behind the bearer token).
pub fn api_router(issuer: IssuerSlot) -> Router {
    Router::new()
        .route("/api/v1/passes", post(create_pass))
        .route("/api/v1/passes/{serial}", get(get_pass).patch(patch_pass))
        .with_state(issuer)
}

/// Wallet and download routes (no bearer token: each checks its own credential).
pub fn public_router(issuer: IssuerSlot) -> Router {
    Router::new()
        .route("/passes/{file}", get(download))
        .route(
            "/wallet/v1/devices/{device}/registrations/{pass_type}/{serial}",
            post(register).delete(unregister),
        )
        .route(
            "/wallet/v1/devices/{device}/registrations/{pass_type}",
            get(updated_since),
        )
        .route("/wallet/v1/passes/{pass_type}/{serial}", get(latest_pass))
        .route("/wallet/v1/log", post(log))
        .route("/wallet/google/callback", post(google_callback))
        .layer(DefaultBodyLimit::max(64 * 1024))
        .with_state(issuer)
}

fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> Result<T, IssueError> {
    serde_json::from_slice(body).map_err(|e| IssueError::BadRequest(format!("body: {e}")))
}

async fn create_pass(State(slot): State<IssuerSlot>, body: Bytes) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    let req: NewPass = parse_json(&body)?;
    let issued = iss.issue(req).await?;
    Ok((StatusCode::CREATED, Json(issued)).into_response())
}

async fn get_pass(
    State(slot): State<IssuerSlot>,
    Path(serial): Path<String>,
) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    let p = iss.pass(&serial)?;
    let regs = iss.registry().registrations(&serial);
    let (download_url, expires) = iss.download_url(&serial);
    Ok(Json(json!({
        "serial": p.serial,
        "program": p.program,
        "customer": p.customer,
        "attributes": p.attributes,
        "source": p.source,
        "campaign": p.campaign,
        "created_at": p.created_at,
        "update_tag": p.update_tag,
        "registrations": regs.iter().map(|r| json!({
            "device": r.device, "platform": r.platform, "registered_at": r.registered_at,
        })).collect::<Vec<_>>(),
        "download_url": download_url,
        "download_expires": expires,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchBody {
    attributes: Map<String, Value>,
}

async fn patch_pass(
    State(slot): State<IssuerSlot>,
    Path(serial): Path<String>,
    body: Bytes,
) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    let b: PatchBody = parse_json(&body)?;
    Ok(Json(iss.update(&serial, b.attributes).await?).into_response())
}

#[derive(Deserialize)]
struct DownloadQuery {
    expires: Option<i64>,
    sig: Option<String>,
}

fn pkpass_response(bytes: Vec<u8>, modified_ms: i64) -> Response {
    let modified = UNIX_EPOCH + Duration::from_millis(modified_ms.max(0) as u64);
    (
        [
            (
                header::CONTENT_TYPE,
                "application/vnd.apple.pkpass".to_string(),
            ),
            (header::LAST_MODIFIED, httpdate::fmt_http_date(modified)),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
        bytes,
    )
        .into_response()
}

async fn download(
    State(slot): State<IssuerSlot>,
    Path(file): Path<String>,
    Query(q): Query<DownloadQuery>,
) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    let serial = file
        .strip_suffix(".pkpass")
        .ok_or_else(|| IssueError::NotFound(file.clone()))?;
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return Ok(forbidden());
    };
    if !iss.check_download(serial, expires, &sig) {
        return Ok(forbidden());
    }
    let p = iss.pass(serial)?;
    Ok(pkpass_response(iss.pkpass(&p)?, p.update_tag))
}

fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        Json(json!({"error": "download link invalid or expired: ask for a new one"})),
    )
        .into_response()
}

/// The token of `Authorization: ApplePass <token>`.
fn apple_token(h: &HeaderMap) -> Result<&str, IssueError> {
    h.get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("ApplePass "))
        .map(str::trim)
        .ok_or(IssueError::Unauthorized)
}

fn check_type(iss: &Issuer, pass_type: &str) -> Result<(), IssueError> {
    if pass_type == iss.config().pass_type_id {
        Ok(())
    } else {
        Err(IssueError::NotFound(format!("pass type {pass_type}")))
    }
}

#[derive(Deserialize)]
struct RegisterBody {
    #[serde(rename = "pushToken")]
    push_token: String,
}

async fn register(
    State(slot): State<IssuerSlot>,
    Path((device, pass_type, serial)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    check_type(iss, &pass_type)?;
    let token = apple_token(&headers)?;
    let b: RegisterBody = parse_json(&body)?;
    let new = iss.register(&device, &serial, token, &b.push_token).await?;
    Ok(if new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
    .into_response())
}

async fn unregister(
    State(slot): State<IssuerSlot>,
    Path((device, pass_type, serial)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    check_type(iss, &pass_type)?;
    iss.unregister(&device, &serial, apple_token(&headers)?)
        .await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Deserialize)]
struct SinceQuery {
    #[serde(rename = "passesUpdatedSince")]
    since: Option<String>,
}

async fn updated_since(
    State(slot): State<IssuerSlot>,
    Path((device, pass_type)): Path<(String, String)>,
    Query(q): Query<SinceQuery>,
) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    check_type(iss, &pass_type)?;
    let since = match q.since.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse::<i64>().map_err(|_| {
            IssueError::BadRequest(format!("passesUpdatedSince {s:?} is not a tag we issued"))
        })?),
    };
    let (serials, last) = iss.registry().updated_since(&device, since);
    if serials.is_empty() {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Ok(Json(json!({ "serialNumbers": serials, "lastUpdated": last.to_string() })).into_response())
}

async fn latest_pass(
    State(slot): State<IssuerSlot>,
    Path((pass_type, serial)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    check_type(iss, &pass_type)?;
    let p = iss.authorize(&serial, apple_token(&headers)?)?;
    // HTTP dates have whole seconds: unchanged if the pass's second is not after the client's
    let since = headers
        .get(header::IF_MODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    if let Some(since) = since {
        let since_s = since
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if p.update_tag / 1000 <= since_s {
            return Ok(StatusCode::NOT_MODIFIED.into_response());
        }
    }
    let bytes = iss.fetch(&p).await?;
    Ok(pkpass_response(bytes, p.update_tag))
}

async fn google_callback(
    State(slot): State<IssuerSlot>,
    body: Bytes,
) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    let what = iss.google_callback(&body).await?;
    Ok(Json(json!({ "result": what })).into_response())
}

#[derive(Deserialize)]
struct LogBody {
    logs: Vec<String>,
}

async fn log(State(slot): State<IssuerSlot>, body: Bytes) -> Result<Response, IssueError> {
    let iss = slot.ready()?;
    let b: LogBody = parse_json(&body)?;
    iss.device_log(&b.logs);
    Ok(StatusCode::OK.into_response())
}
