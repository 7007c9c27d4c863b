//! HTTP event intake: `POST /api/v1/events` with an NDJSON body.
//!
//! Each line is validated by the same decoder the consumer uses; good lines are published
//! unchanged to `passpulse.events.<type>` with `Nats-Msg-Id` = the event id, and the answer is
//! sent only after the broker acknowledged every one of them. Bad lines are refused per line
//! (they are the caller's to fix, so they are not dead-lettered). A repeated id inside the
//! broker's duplicate window is reported as `duplicate`, not stored twice.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use async_nats::jetstream::{self, message::PublishMessage};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use passpulse_engine::{DecodedBatch, event::decode_line};
use serde::Serialize;

use crate::bus::BusConfig;
use crate::metrics::IngestMetrics;

#[derive(Clone)]
pub struct IntakeState {
    pub js: jetstream::Context,
    pub bus: BusConfig,
    pub metrics: Arc<IngestMetrics>,
}

pub fn router(state: IntakeState) -> Router {
    Router::new()
        .route("/api/v1/events", post(post_events))
        .with_state(state)
}

#[derive(Debug, Serialize, Default)]
pub struct IntakeReport {
    /// Lines stored by the broker.
    pub accepted: usize,
    /// Lines whose id the broker had already stored (within its duplicate window).
    pub duplicate: usize,
    /// Lines refused by validation.
    pub rejected: usize,
    /// Lines valid but not stored because the broker failed; safe to retry.
    pub failed: usize,
    pub errors: Vec<LineError>,
}

#[derive(Debug, Serialize)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
    pub error: String,
}

async fn post_events(State(st): State<IntakeState>, body: Bytes) -> Response {
    let mut report = IntakeReport::default();
    let mut scratch = DecodedBatch::new();
    let mut acks = Vec::new();
    for (i, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        scratch.clear();
        match decode_line(line, i + 1, 0, &mut scratch) {
            Ok(kind) => {
                let id = scratch.get(0).id.to_string();
                let msg = PublishMessage::build()
                    .payload(body.slice_ref(line))
                    .message_id(id);
                match st.js.send_publish(st.bus.event_subject(kind), msg).await {
                    Ok(ack) => acks.push((i + 1, ack)),
                    Err(e) => broker_failure(&mut report, i + 1, &e),
                }
            }
            Err(e) => {
                report.rejected += 1;
                report.errors.push(LineError {
                    line: i + 1,
                    reason: e.reason.as_str().into(),
                    error: e.to_string(),
                });
            }
        }
    }
    let lines: Vec<usize> = acks.iter().map(|(l, _)| *l).collect();
    let results = futures::future::join_all(acks.into_iter().map(|(_, a)| a.into_future())).await;
    for (line, r) in lines.into_iter().zip(results) {
        match r {
            Ok(ack) if ack.duplicate => report.duplicate += 1,
            Ok(_) => report.accepted += 1,
            Err(e) => broker_failure(&mut report, line, &e),
        }
    }
    report.errors.sort_by_key(|e| e.line);
    st.metrics
        .http_accepted
        .fetch_add(report.accepted as u64, Relaxed);
    st.metrics
        .http_duplicates
        .fetch_add(report.duplicate as u64, Relaxed);
    st.metrics
        .http_rejected
        .fetch_add(report.rejected as u64, Relaxed);

    let stored = report.accepted + report.duplicate;
    let status = if report.failed > 0 && stored == 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if stored == 0 {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    if stored == 0 && report.rejected == 0 && report.failed == 0 {
        return (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "empty body: send NDJSON, one event per line"})),
        )
            .into_response();
    }
    (status, Json(report)).into_response()
}

fn broker_failure(report: &mut IntakeReport, line: usize, e: &dyn std::fmt::Display) {
    report.failed += 1;
    report.errors.push(LineError {
        line,
        reason: "broker".into(),
        error: format!("event {line}: not stored, the broker failed: {e}; retry the line"),
    });
}
