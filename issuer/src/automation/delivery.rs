//! Message delivery: an outbox on JetStream and the worker that empties it.
//!
//! A flow enqueues an [`OutMessage`] on the work-queue stream `PASSPULSE_OUTBOX` (published with
//! `Nats-Msg-Id` = the message id and awaited until stored), so a request survives a restart of
//! the server or an outage of the mail server. The worker sends each message through its
//! channel's [`Sender`] (SMTP through `lettre`, SMS through an HTTP provider), records it in the
//! key-value bucket `PASSPULSE_DELIVERED` and acknowledges it; the same message enqueued again
//! (a contact event processed twice) finds that record and is not sent twice. A transient
//! failure emits `message.failed` and is retried with exponential backoff (1 s, doubling, at
//! most 256 s) for as long as it takes; a permanent one (a refused address, a 4xx from the SMS
//! provider) emits `message.failed` and is not retried. A success emits `message.sent`, with the
//! legal basis the message was sent on.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::pull, kv, message::PublishMessage};
use futures::StreamExt;
use passpulse_engine::EventType;
use serde::{Deserialize, Serialize};
use serde_json::{Map, json};

use super::flows::{Basis, Channel};
use crate::lifecycle::{Event, Lifecycle};
use crate::registry::{RegistryError, bucket, store_err};
use crate::service::now_ms;

pub const OUTBOX_STREAM: &str = "PASSPULSE_OUTBOX";
pub const DELIVERED_BUCKET: &str = "PASSPULSE_DELIVERED";
const OUTBOX_SUBJECT: &str = "passpulse.outbox";
const WORKER: &str = "passpulse-delivery";

/// One message to deliver.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutMessage {
    /// Derived from what the message is for: the same request always has the same id.
    pub id: String,
    pub flow: String,
    pub channel: Channel,
    /// Email address or phone number.
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub text: String,
    pub customer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub program: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
    pub basis: Basis,
    pub created_at: i64,
}

/// Why a send failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    /// Retrying cannot help (refused address, bad request).
    pub permanent: bool,
    pub reason: String,
}

impl SendError {
    pub fn transient(reason: impl Into<String>) -> SendError {
        SendError {
            permanent: false,
            reason: reason.into(),
        }
    }

    pub fn permanent(reason: impl Into<String>) -> SendError {
        SendError {
            permanent: true,
            reason: reason.into(),
        }
    }
}

/// A channel's way out.
#[async_trait::async_trait]
pub trait Sender: Send + Sync {
    async fn send(&self, m: &OutMessage) -> Result<(), SendError>;
}

/// Backoff before attempt `attempt + 1`: 1 s, 2 s, 4 s, … at most 256 s.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.saturating_sub(1).min(8)).min(Duration::from_secs(300))
}

/// The outbox: enqueue side and worker.
#[derive(Clone)]
pub struct Outbox {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    delivered: kv::Store,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outbox")
    }
}

impl Outbox {
    /// Opens (creating if missing) the outbox stream and the delivered bucket.
    pub async fn open(js: &jetstream::Context) -> Result<Outbox, RegistryError> {
        use jetstream::stream::{Config, RetentionPolicy, StorageType};
        let stream = js
            .get_or_create_stream(Config {
                name: OUTBOX_STREAM.into(),
                description: Some("passpulse: messages waiting to be delivered".into()),
                subjects: vec![format!("{OUTBOX_SUBJECT}.>")],
                retention: RetentionPolicy::WorkQueue,
                storage: StorageType::File,
                duplicate_window: Duration::from_secs(3600),
                num_replicas: 1,
                ..Default::default()
            })
            .await
            .map_err(store_err)?;
        let delivered = bucket(js, DELIVERED_BUCKET, Duration::from_secs(90 * 86_400)).await?;
        Ok(Outbox {
            js: js.clone(),
            stream,
            delivered,
        })
    }

    /// Stores `m` for delivery; returns once the broker has it.
    pub async fn enqueue(&self, m: &OutMessage) -> Result<(), String> {
        let subject = format!("{OUTBOX_SUBJECT}.{}", m.channel.as_str());
        let msg = PublishMessage::build()
            .payload(serde_json::to_vec(m).expect("messages serialize").into())
            .message_id(&m.id);
        self.js
            .send_publish(subject, msg)
            .await
            .map_err(|e| format!("outbox: {e}"))?
            .await
            .map_err(|e| format!("outbox: {e}"))?;
        Ok(())
    }

    /// True if message `id` was delivered (or given up on as permanently undeliverable).
    pub async fn done(&self, id: &str) -> Result<bool, String> {
        Ok(self
            .delivered
            .get(id)
            .await
            .map_err(|e| format!("delivered: {e}"))?
            .is_some())
    }

    /// Messages waiting (not yet acknowledged).
    pub async fn pending(&self) -> Result<u64, String> {
        let mut s = self.stream.clone();
        Ok(s.info().await.map_err(|e| e.to_string())?.state.messages)
    }

    /// Delivers messages until the process ends: `concurrency` at a time.
    pub async fn run(
        self,
        senders: Arc<Senders>,
        bus: Lifecycle,
        concurrency: usize,
    ) -> Result<(), String> {
        let consumer = self
            .stream
            .get_or_create_consumer::<pull::Config>(
                WORKER,
                pull::Config {
                    durable_name: Some(WORKER.into()),
                    ack_wait: Duration::from_secs(120),
                    max_ack_pending: (concurrency * 4) as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("outbox consumer: {e}"))?
            .stream()
            .messages()
            .await
            .map_err(|e| format!("outbox consumer: {e}"))?
            .boxed();
        let this = &self;
        let (senders, bus) = (&senders, &bus);
        consumer
            .for_each_concurrent(concurrency.max(1), |m| async move {
                match m {
                    Ok(m) => this.handle(m, senders, bus).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox consumer");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            })
            .await;
        Err("outbox consumer ended".into())
    }

    async fn handle(&self, msg: jetstream::Message, senders: &Senders, bus: &Lifecycle) {
        let attempt = msg.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
        let m: OutMessage = match serde_json::from_slice(&msg.payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::error!(error = %e, "outbox: undecodable message dropped");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        match self.done(&m.id).await {
            Ok(true) => {
                let _ = msg.ack().await;
                return;
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "outbox: cannot check delivery state; retrying");
                let _ = msg.ack_with(AckKind::Nak(Some(backoff(attempt)))).await;
                return;
            }
        }
        let outcome = match senders.get(m.channel) {
            Some(s) => s.send(&m).await,
            None => Err(SendError::transient(format!(
                "no {} sender configured",
                m.channel.as_str()
            ))),
        };
        match outcome {
            Ok(()) => {
                self.record(&m, "sent", attempt).await;
                bus.emit_logged(&message_event(&m, None, attempt)).await;
                let _ = msg.double_ack().await;
            }
            Err(e) if e.permanent => {
                tracing::warn!(id = %m.id, channel = m.channel.as_str(), reason = %e.reason, "message refused; not retried");
                self.record(&m, "refused", attempt).await;
                bus.emit_logged(&message_event(&m, Some(&e.reason), attempt))
                    .await;
                let _ = msg.ack_with(AckKind::Term).await;
            }
            Err(e) => {
                let delay = backoff(attempt);
                tracing::warn!(id = %m.id, channel = m.channel.as_str(), reason = %e.reason, attempt, retry_in = ?delay, "message not delivered; will retry");
                bus.emit_logged(&message_event(&m, Some(&e.reason), attempt))
                    .await;
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    async fn record(&self, m: &OutMessage, outcome: &str, attempt: u32) {
        let v = json!({"outcome": outcome, "at": now_ms(), "attempts": attempt});
        if let Err(e) = self.delivered.put(&m.id, v.to_string().into()).await {
            tracing::warn!(id = %m.id, error = %e, "cannot record a delivery");
        }
    }
}

/// `message.sent` (no `reason`) or `message.failed`; the channel is the event's `source`, the
/// reason its `result`, and the basis, flow and attempt are in `attrs`.
fn message_event(m: &OutMessage, reason: Option<&str>, attempt: u32) -> Event {
    let (kind, id) = match reason {
        None => (EventType::MessageSent, format!("msg-sent-{}", m.id)),
        Some(_) => (
            EventType::MessageFailed,
            format!("msg-failed-{}-{attempt}", m.id),
        ),
    };
    let mut attrs = Map::new();
    attrs.insert("basis".into(), json!(m.basis.as_str()));
    attrs.insert("flow".into(), json!(m.flow));
    attrs.insert("attempt".into(), json!(attempt));
    let reason = reason.map(|r| r.chars().take(200).collect::<String>());
    Event::new(kind, id, now_ms())
        .with("customer", Some(&m.customer))
        .with("pass", m.pass.as_deref())
        .with("program", m.program.as_deref())
        .with("campaign", m.campaign.as_deref())
        .with("source", Some(m.channel.as_str()))
        .with("result", reason.as_deref())
        .with_attrs(attrs)
}

/// The senders of each channel.
#[derive(Default)]
pub struct Senders {
    pub email: Option<Arc<dyn Sender>>,
    pub sms: Option<Arc<dyn Sender>>,
}

impl std::fmt::Debug for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Senders")
            .field("email", &self.email.is_some())
            .field("sms", &self.sms.is_some())
            .finish()
    }
}

impl Senders {
    pub fn get(&self, c: Channel) -> Option<&Arc<dyn Sender>> {
        match c {
            Channel::Email => self.email.as_ref(),
            Channel::Sms => self.sms.as_ref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_256_seconds() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert_eq!(backoff(2), Duration::from_secs(2));
        assert_eq!(backoff(5), Duration::from_secs(16));
        assert_eq!(backoff(9), Duration::from_secs(256));
        assert_eq!(backoff(10), Duration::from_secs(256));
        assert_eq!(backoff(100), Duration::from_secs(256));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(256));
    }
}
