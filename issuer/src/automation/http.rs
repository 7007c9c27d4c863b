//! HTTP routes of the automation (public: the code is the credential):
//! - `GET /l/{code}`: a pass link redirects by device (iOS → a freshly signed `.pkpass` link,
//!   Android → the Google Wallet save URL, otherwise the landing page with both buttons and a QR
//!   code) and emits `link.clicked`; an opt-in link shows its confirm button;
//! - `POST /l/{code}`: confirms an opt-in (emits `optin.confirmed`).
//!
//! Until the automation has opened its stores the routes answer 503.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use passpulse_engine::EventType;
use serde_json::{Map, Value, json};

use super::Automation;
use super::links::{Agent, CODE_ALPHABET, Link, Target, confirmed_page, landing_page, optin_page};
use crate::lifecycle::Event;
use crate::service::{IssueError, now_ms, random_text};

/// The automation once it is open.
#[derive(Clone, Debug, Default)]
pub struct AutomationSlot(Arc<OnceLock<Automation>>);

impl AutomationSlot {
    pub fn set(&self, a: Automation) {
        let _ = self.0.set(a);
    }

    fn ready(&self) -> Result<&Automation, IssueError> {
        self.0
            .get()
            .ok_or_else(|| IssueError::Unavailable("automation is starting; retry".into()))
    }
}

/// `/l/{code}`.
pub fn router(slot: AutomationSlot) -> Router {
    Router::new()
        .route("/l/{code}", get(follow).post(confirm))
        .with_state(slot)
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Html("<!doctype html><title>Link not found</title><p>This link does not exist.</p>"),
    )
        .into_response()
}

async fn link(a: &Automation, code: &str) -> Result<Option<Link>, IssueError> {
    // `Links::get` refuses a malformed code before any lookup
    Ok(a.links().get(code).await?)
}

async fn follow(
    State(slot): State<AutomationSlot>,
    Path(code): Path<String>,
    headers: HeaderMap,
) -> Result<Response, IssueError> {
    let a = slot.ready()?;
    let Some(link) = link(a, &code).await? else {
        return Ok(not_found());
    };
    let serial = match &link.target {
        Target::Optin { .. } => return Ok(Html(optin_page(&format!("/l/{code}"))).into_response()),
        Target::Pass { serial } => serial.clone(),
    };
    let iss = a.issuer();
    let pass = iss.pass(&serial)?;
    let agent = Agent::of(
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(""),
    );
    let (apple_url, _) = iss.download_url(&serial);
    let google_url = iss.google_url(&pass)?;
    let mut attrs = Map::new();
    attrs.insert("agent".into(), json!(agent.as_str()));
    attrs.insert("channel".into(), json!(link.channel));
    attrs.insert("link".into(), json!(code));
    // every visit counts: a random id, so repeated clicks are separate events
    let id = format!("click-{code}-{}", random_text(CODE_ALPHABET, 12));
    let click = Event::new(EventType::LinkClicked, id, now_ms())
        .with("source", Some(&link.channel))
        .with("campaign", link.campaign.as_deref())
        .with("program", Some(&pass.program))
        .with("pass", Some(&serial))
        .with("customer", Some(&pass.customer))
        .with_attrs(attrs);
    a.bus().emit_logged(&click).await;
    let response = match (agent, google_url) {
        (Agent::Ios, _) => Redirect::to(&apple_url).into_response(),
        (Agent::Android, Some(g)) => Redirect::to(&g).into_response(),
        (_, g) => {
            let title = pass
                .attributes
                .get("programme_name")
                .and_then(Value::as_str)
                .unwrap_or("Your pass")
                .to_string();
            Html(landing_page(
                &title,
                &a.short_url(&code),
                &apple_url,
                g.as_deref(),
            ))
            .into_response()
        }
    };
    Ok(([(header::CACHE_CONTROL, "no-store")], response).into_response())
}

async fn confirm(
    State(slot): State<AutomationSlot>,
    Path(code): Path<String>,
) -> Result<Response, IssueError> {
    let a = slot.ready()?;
    let Some(link) = link(a, &code).await? else {
        return Ok(not_found());
    };
    let Target::Optin { customer, attrs } = &link.target else {
        return Ok((StatusCode::METHOD_NOT_ALLOWED, "not an opt-in link").into_response());
    };
    // one confirmation per link, however often the button is pressed
    let attrs: Map<String, Value> = attrs
        .iter()
        .filter(|(_, v)| v.is_string() || v.is_number())
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let e = Event::new(
        EventType::OptinConfirmed,
        format!("optin-confirmed-{code}"),
        now_ms(),
    )
    .with("customer", Some(customer))
    .with("program", link.program.as_deref())
    .with("source", Some(&link.channel))
    .with("campaign", link.campaign.as_deref())
    .with_attrs(attrs);
    a.bus().emit(&e).await.map_err(IssueError::from)?;
    Ok(Html(confirmed_page()).into_response())
}
