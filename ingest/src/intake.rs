//! HTTP event intake: `POST /api/v1/events` with an NDJSON body.
//!
//! Each line is validated by the same decoder the consumer uses; good lines are published
//! unchanged to `passpulse.events.<type>` with `Nats-Msg-Id` = the event id, and the answer is
//! sent only after the broker acknowledged every one of them. Bad lines are refused per line
//! (they are the caller's to fix, so they are not dead-lettered). A repeated id inside the
//! broker's duplicate window is reported as `duplicate`, not stored twice.
//!
//! A request keeps at most [`IN_FLIGHT`] publishes waiting for their ack and collects acks as
//! they arrive, so a body of any size (up to the body limit) is answered, and it never holds
//! more than its share of the JetStream context's in-flight permits: queueing every publish
//! before awaiting any ack wedged the context at its 5,000-permit limit, and with it every other
//! publisher sharing the context.
//!
//! The answer lists the first [`IntakeState::max_errors`] line errors (by line) and counts the
//! rest, so a body of bad lines cannot make the response, or the memory behind it, larger than
//! the body.
//!
//! A line the broker did not confirm (broker down or slow) is reported as `failed`: it may or
//! may not have been stored (the publish can still reach the broker once it is back). Retrying
//! is safe because ids are de-duplicated, by the broker within its duplicate window and by the
//! engine within its own. Once one publish of a request failed, its remaining lines are not
//! sent (definitely not stored), so a request against a dead broker is answered within one
//! publish timeout instead of one per line.

use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;

use async_nats::jetstream::{self, message::PublishMessage};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::Either;
use passpulse_engine::{DecodedBatch, event::decode_line};
use serde::Serialize;

use crate::bus::BusConfig;
use crate::metrics::IngestMetrics;

/// Publishes one request keeps waiting for their broker ack at a time.
pub const IN_FLIGHT: usize = 256;

/// Longest error text reported for one line (a line may quote a long value).
const MAX_ERROR_CHARS: usize = 512;

#[derive(Clone)]
pub struct IntakeState {
    pub js: jetstream::Context,
    pub bus: BusConfig,
    pub metrics: Arc<IngestMetrics>,
    /// Line errors listed in one answer; the others are only counted (`errors_omitted`).
    pub max_errors: usize,
    /// The consumer's bound on event time ahead of arrival (`ingest.max_future_skew`), checked
    /// here against now, so a line the consumer would refuse is refused in the answer.
    pub max_future_skew: Option<i64>,
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
    /// Lines valid but not confirmed by the broker: they may or may not be stored; retrying them
    /// is safe (ids are de-duplicated).
    pub failed: usize,
    /// The first line errors, by line number.
    pub errors: Vec<LineError>,
    /// Line errors (rejected or failed) not listed in `errors`.
    pub errors_omitted: usize,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
    pub error: String,
}

/// What became of one non-empty line.
enum Outcome {
    Accepted,
    Duplicate,
    Rejected(LineError),
    Failed(LineError),
}

/// The first `max` line errors by line number, whatever order they arrive in, and a count of
/// the others. Memory is bounded by `max`, not by the body.
struct FirstErrors {
    max: usize,
    kept: BinaryHeap<LineError>,
    omitted: usize,
}

impl FirstErrors {
    fn new(max: usize) -> Self {
        FirstErrors {
            max,
            kept: BinaryHeap::new(),
            omitted: 0,
        }
    }

    /// Whether an error on `line` would be listed (so its text is worth building).
    fn wants(&self, line: usize) -> bool {
        self.max > 0
            && (self.kept.len() < self.max || self.kept.peek().is_some_and(|e| line < e.line))
    }

    fn push(&mut self, e: LineError) {
        if !self.wants(e.line) {
            self.omitted += 1;
            return;
        }
        self.kept.push(e);
        if self.kept.len() > self.max {
            self.kept.pop();
            self.omitted += 1;
        }
    }

    fn into_parts(self) -> (Vec<LineError>, usize) {
        (self.kept.into_sorted_vec(), self.omitted)
    }
}

/// The non-empty lines of a body, trimmed, with their 1-based line numbers; each shares the
/// body's buffer.
struct Lines {
    body: Bytes,
    pos: usize,
    n: usize,
}

impl Lines {
    fn new(body: Bytes) -> Self {
        Lines { body, pos: 0, n: 0 }
    }
}

impl Iterator for Lines {
    type Item = (usize, Bytes);

    fn next(&mut self) -> Option<(usize, Bytes)> {
        while self.pos < self.body.len() {
            let rest = &self.body[self.pos..];
            let len = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let line = rest[..len].trim_ascii();
            let line = self.body.slice_ref(line);
            self.pos += len + 1;
            self.n += 1;
            if !line.is_empty() {
                return Some((self.n, line));
            }
        }
        None
    }
}

fn line_error(line: usize, reason: &str, mut error: String) -> LineError {
    if error.len() > MAX_ERROR_CHARS {
        let mut end = MAX_ERROR_CHARS;
        while !error.is_char_boundary(end) {
            end -= 1;
        }
        error.truncate(end);
        error.push('…');
    }
    LineError {
        line,
        reason: reason.into(),
        error,
    }
}

async fn post_events(State(st): State<IntakeState>, body: Bytes) -> Response {
    let mut scratch = DecodedBatch::new();
    let broker_failed = AtomicBool::new(false);
    let (js, bus) = (&st.js, &st.bus);
    let broker_failed = &broker_failed;

    let outcomes = futures::stream::iter(Lines::new(body)).map(|(n, line)| {
        scratch.clear();
        scratch.set_arrival(passpulse_engine::time::now_millis());
        scratch.set_max_future_skew(st.max_future_skew);
        match decode_line(&line, n, 0, &mut scratch) {
            Err(e) => Either::Left(futures::future::ready(Outcome::Rejected(line_error(
                n,
                e.reason.as_str(),
                e.to_string(),
            )))),
            Ok(kind) => {
                let id = scratch.get(0).id.to_string();
                let payload = line;
                Either::Right(async move {
                    if broker_failed.load(Relaxed) {
                        return Outcome::Failed(line_error(
                            n,
                            "broker",
                            format!(
                                "event {n}: not stored: not sent, the broker failed on an earlier \
                                 line of this request; retry the line"
                            ),
                        ));
                    }
                    let msg = PublishMessage::build().payload(payload).message_id(id);
                    let ack = match js.send_publish(bus.event_subject(kind), msg).await {
                        Ok(ack) => ack.await,
                        Err(e) => Err(e),
                    };
                    match ack {
                        Ok(ack) if ack.duplicate => Outcome::Duplicate,
                        Ok(_) => Outcome::Accepted,
                        Err(e) => {
                            broker_failed.store(true, Relaxed);
                            Outcome::Failed(line_error(
                                n,
                                "broker",
                                format!(
                                    "event {n}: the broker did not confirm it ({e}); it may have \
                                     been stored; retrying is safe: ids are de-duplicated"
                                ),
                            ))
                        }
                    }
                })
            }
        }
    });
    let mut outcomes = outcomes.buffer_unordered(IN_FLIGHT);

    let mut report = IntakeReport::default();
    let mut errors = FirstErrors::new(st.max_errors);
    while let Some(outcome) = outcomes.next().await {
        match outcome {
            Outcome::Accepted => report.accepted += 1,
            Outcome::Duplicate => report.duplicate += 1,
            Outcome::Rejected(e) => {
                report.rejected += 1;
                errors.push(e);
            }
            Outcome::Failed(e) => {
                report.failed += 1;
                errors.push(e);
            }
        }
    }
    drop(outcomes);
    (report.errors, report.errors_omitted) = errors.into_parts();

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

#[cfg(test)]
mod tests {
    use super::*;

    fn err(line: usize) -> LineError {
        line_error(line, "bad_json", format!("event {line}: bad"))
    }

    #[test]
    fn the_first_errors_by_line_are_kept_whatever_their_order() {
        let mut f = FirstErrors::new(3);
        for line in [9, 4, 7, 1, 8, 2, 5] {
            f.push(err(line));
        }
        let (kept, omitted) = f.into_parts();
        assert_eq!(kept.iter().map(|e| e.line).collect::<Vec<_>>(), [1, 2, 4]);
        assert_eq!(omitted, 4);

        let mut none = FirstErrors::new(0);
        none.push(err(1));
        assert_eq!(none.into_parts().1, 1);
    }

    #[test]
    fn a_long_error_is_cut_on_a_character_boundary() {
        let e = line_error(1, "bad_value", "é".repeat(1000));
        assert!(e.error.len() <= MAX_ERROR_CHARS + '…'.len_utf8());
        assert!(e.error.ends_with('…'));
    }
}
