//! Lifecycle events the issuer puts on the bus (`pass.issued`, `pass.installed`, …): v1 events
//! published to `passpulse.events.<type>` with `Nats-Msg-Id` = the event id, awaited until the
//! broker has stored them. Ids are derived from what happened (serial, device, revision or time),
//! so a retried request is de-duplicated by the broker and by the engine.

use async_nats::jetstream::{self, message::PublishMessage};
use passpulse_engine::EventType;
use passpulse_engine::event::{MAX_ID_CHARS, MAX_STR_CHARS};
use passpulse_ingest::BusConfig;
use serde_json::{Map, Value, json};

/// Publishes lifecycle events.
#[derive(Clone)]
pub struct Lifecycle {
    js: jetstream::Context,
    bus: BusConfig,
}

impl std::fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifecycle")
            .field("subjects", &self.bus.subject_prefix)
            .finish()
    }
}

/// One event under construction: `id`, `type` and `ts` are set, the rest added with
/// [`Event::with`].
#[derive(Debug, Clone)]
pub struct Event {
    kind: EventType,
    fields: Map<String, Value>,
}

/// `id` as a valid v1 id: unchanged if it fits in [`MAX_ID_CHARS`], else its start and a hash of
/// the whole (ids built from client-chosen parts, such as a 128-character device id, can be
/// longer; the same parts still give the same id).
fn bounded_id(id: String) -> String {
    if id.chars().count() <= MAX_ID_CHARS {
        return id;
    }
    let d = openssl::sha::sha256(id.as_bytes());
    let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
    let start: String = id.chars().take(MAX_ID_CHARS - hex.len() - 1).collect();
    format!("{start}~{hex}")
}

impl Event {
    pub fn new(kind: EventType, id: String, ts_ms: i64) -> Event {
        let mut fields = Map::new();
        fields.insert("id".into(), json!(bounded_id(id)));
        fields.insert("type".into(), json!(kind.as_str()));
        fields.insert("ts".into(), json!(ts_ms));
        Event { kind, fields }
    }

    /// Adds a string field when `value` is present and non-empty, cut to the v1 limit of
    /// [`MAX_STR_CHARS`] (a long error text in `result` must not get the event refused).
    pub fn with(mut self, key: &str, value: Option<&str>) -> Event {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            let v: String = v.chars().take(MAX_STR_CHARS).collect();
            self.fields.insert(key.into(), json!(v));
        }
        self
    }

    /// Adds `attrs` (string and number values) when not empty.
    pub fn with_attrs(mut self, attrs: Map<String, Value>) -> Event {
        if !attrs.is_empty() {
            self.fields.insert("attrs".into(), Value::Object(attrs));
        }
        self
    }

    /// Replaces the id.
    pub fn with_id(mut self, id: String) -> Event {
        self.fields.insert("id".into(), json!(bounded_id(id)));
        self
    }

    pub fn id(&self) -> &str {
        self.fields["id"].as_str().expect("id is a string")
    }

    pub fn kind(&self) -> EventType {
        self.kind
    }

    pub fn to_json(&self) -> String {
        Value::Object(self.fields.clone()).to_string()
    }
}

/// A lifecycle event the broker did not take, and whether publishing it again can succeed.
#[derive(Debug, thiserror::Error)]
#[error("publishing {kind}: {detail}")]
pub struct EmitError {
    kind: &'static str,
    detail: String,
    transient: bool,
}

impl EmitError {
    fn new(kind: EventType, e: async_nats::jetstream::context::PublishError) -> EmitError {
        use async_nats::jetstream::context::PublishErrorKind as K;
        // the same event never fits, or is refused by the stream's own rules; everything else
        // (no ack in time, a broken connection, a stream being recreated) can pass later
        let transient = !matches!(
            e.kind(),
            K::MaxPayloadExceeded | K::WrongLastMessageId | K::WrongLastSequence
        );
        EmitError {
            kind: kind.as_str(),
            detail: e.to_string(),
            transient,
        }
    }

    pub fn is_transient(&self) -> bool {
        self.transient
    }
}

impl Lifecycle {
    pub fn new(js: jetstream::Context, bus: BusConfig) -> Lifecycle {
        Lifecycle { js, bus }
    }

    /// Publishes `e` and waits for the broker's acknowledgement.
    pub async fn emit(&self, e: &Event) -> Result<(), EmitError> {
        let msg = PublishMessage::build()
            .payload(e.to_json().into())
            .message_id(e.id());
        let err = |err: async_nats::jetstream::context::PublishError| EmitError::new(e.kind, err);
        self.js
            .send_publish(self.bus.event_subject(e.kind), msg)
            .await
            .map_err(err)?
            .await
            .map_err(err)?;
        Ok(())
    }

    /// Like [`Lifecycle::emit`] but only logs a failure: for signals whose request has already
    /// succeeded (the registration is stored; losing its event must not fail the device).
    pub async fn emit_logged(&self, e: &Event) {
        if let Err(err) = self.emit(e).await {
            tracing::warn!(event = e.id(), error = %err, "lifecycle event not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_that_never_fits_is_not_worth_retrying() {
        use async_nats::jetstream::context::{PublishError, PublishErrorKind as K};
        let e = |k| EmitError::new(EventType::PassUpdated, PublishError::new(k));
        assert!(!e(K::MaxPayloadExceeded).is_transient());
        for k in [
            K::TimedOut,
            K::BrokenPipe,
            K::StreamNotFound,
            K::MaxAckPending,
            K::Other,
        ] {
            assert!(e(k).is_transient(), "{k:?}");
        }
        assert!(
            e(K::TimedOut)
                .to_string()
                .starts_with("publishing pass.updated: timed out")
        );
    }

    #[test]
    fn events_are_valid_v1() {
        let e = Event::new(
            EventType::PassInstalled,
            "reg-S1-D1-3".into(),
            1_700_000_000_000,
        )
        .with("pass", Some("S1"))
        .with("device", Some("D1"))
        .with("platform", Some("apple"))
        .with("source", None)
        .with("campaign", Some(""));
        let mut b = passpulse_engine::DecodedBatch::new();
        let kind = passpulse_engine::event::decode_line(e.to_json().as_bytes(), 1, 1, &mut b)
            .expect("a valid v1 event");
        assert_eq!(kind, EventType::PassInstalled);
        assert_eq!(b.get(0).device, Some("D1"));
        assert_eq!(b.get(0).source, None);
    }

    #[test]
    fn ids_and_values_from_long_client_parts_stay_valid() {
        let device = "D".repeat(128);
        let id = format!(
            "pass.uninstalled-{}-{device}-1790000000000",
            "S".repeat(128)
        );
        let e = Event::new(EventType::PassUninstalled, id.clone(), 1_790_000_000_000)
            .with("pass", Some("S1"))
            .with("device", Some(&device))
            .with("platform", Some("apple"));
        let again = Event::new(EventType::PassUninstalled, id, 1);
        assert_eq!(e.id(), again.id(), "the same parts give the same id");
        assert!(e.id().chars().count() <= MAX_ID_CHARS);
        let long = Event::new(EventType::PushFailed, "f".into(), 1)
            .with("pass", Some("S1"))
            .with("device", Some("D1"))
            .with("result", Some(&"an error ".repeat(100)));
        for e in [e, long] {
            let mut b = passpulse_engine::DecodedBatch::new();
            passpulse_engine::event::decode_line(e.to_json().as_bytes(), 1, 1, &mut b)
                .expect("a valid v1 event");
        }
    }
}
