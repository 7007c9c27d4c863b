//! Automation: flows driven by the event bus (see [`flows`] for the file that describes them).
//!
//! A durable JetStream consumer (`passpulse-automation`, on the event types some flow reacts to
//! and on batches) hands each event to the flows whose trigger and conditions match:
//! - `issue_pass` issues a pass with a serial derived from (flow, customer), so a contact event
//!   processed twice finds the pass it made the first time, and delivers a short link to it by
//!   email and SMS through the [`delivery`] outbox (message ids derived the same way, so a
//!   message is sent once);
//! - `update_pass` copies the watched attributes of a `contact.updated` onto the pass when they
//!   changed: the issuer bumps the pass, emits `pass.updated`, pushes to every Apple device and
//!   patches the Google object;
//! - `confirm_optin` sends a confirmation link; confirming emits `optin.confirmed`, which a
//!   coupon flow can trigger on.
//!
//! The [`segments`] evaluator sees the same events. A bus message is acknowledged once every
//! effect of its events is stored; a failure leaves it unacknowledged and it is retried, which
//! is safe because every effect is idempotent. The consumer starts at the events published after
//! automation was first enabled: turning it on never mails a backlog of old sign-ups.

pub mod delivery;
pub mod flows;
pub mod http;
pub mod links;
pub mod segments;
pub mod senders;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer::DeliverPolicy, consumer::pull};
use futures::StreamExt;
use passpulse_engine::event::decode_message;
use passpulse_engine::{DecodedBatch, EventRef, EventType};
use passpulse_ingest::BusConfig;
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use crate::lifecycle::Lifecycle;
use crate::service::{IssueError, Issuer, NewPass, now_ms};
use crate::template::{attr_text as text_of, fill};
use delivery::{OutMessage, Outbox};
use flows::{Action, Basis, Channel, Flow, Flows};
use links::{CODE_ALPHABET, CODE_LEN, Link, Links, Target};
use segments::{SegmentStore, Segments};

/// Durable consumer name of the automation.
pub const CONSUMER: &str = "passpulse-automation";
const SERIAL_ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
/// Discount codes: no 0/O or 1/I to misread at a till.
const CODE_CHARS: &[u8] = b"23456789ABCDEFGHJKLMNPQRSTUVWXYZ";

/// An automation step that could not finish, and whether trying again can help.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Something the step needs was unavailable (the broker, the key-value store, the issuer's
    /// limits) or is broken in a way an operator can mend (a signing key): the bus message is
    /// retried with backoff.
    #[error("{0}")]
    Transient(String),
    /// Trying again cannot help (a stored record is corrupt, the issuer refuses the input, the
    /// pass does not exist): the bus message is logged and terminated, never redelivered.
    #[error("{0}")]
    Permanent(String),
}

impl StepError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StepError::Transient(_))
    }
}

impl From<IssueError> for StepError {
    fn from(e: IssueError) -> Self {
        match e {
            IssueError::Unavailable(_)
            | IssueError::TooManyRequests(..)
            | IssueError::Internal(_) => StepError::Transient(e.to_string()),
            IssueError::BadRequest(_)
            | IssueError::NotFound(_)
            | IssueError::Unauthorized
            | IssueError::Forbidden(_)
            | IssueError::Corrupt(_) => StepError::Permanent(e.to_string()),
        }
    }
}

impl From<crate::lifecycle::EmitError> for StepError {
    fn from(e: crate::lifecycle::EmitError) -> Self {
        if e.is_transient() {
            StepError::Transient(e.to_string())
        } else {
            StepError::Permanent(e.to_string())
        }
    }
}

impl From<crate::registry::RegistryError> for StepError {
    fn from(e: crate::registry::RegistryError) -> Self {
        use crate::registry::RegistryError as R;
        match e {
            R::Store(_) => StepError::Transient(e.to_string()),
            R::NotFound(_) | R::Exists(_) | R::Corrupt { .. } => {
                StepError::Permanent(e.to_string())
            }
        }
    }
}

/// The automation; cheap to clone.
#[derive(Clone)]
pub struct Automation {
    inner: Arc<Inner>,
}

struct Inner {
    flows: Flows,
    issuer: Issuer,
    links: Links,
    outbox: Outbox,
    bus: Lifecycle,
    segments: Option<(SegmentStore, Mutex<Segments>)>,
}

impl std::fmt::Debug for Automation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Automation")
            .field("flows", &self.inner.flows.flows.len())
            .finish()
    }
}

impl Automation {
    /// Opens the stores the flows need (links, outbox, members).
    pub async fn open(
        js: &jetstream::Context,
        flows: Flows,
        issuer: Issuer,
        bus: Lifecycle,
    ) -> Result<Automation, StepError> {
        let links = Links::open(js).await?;
        let outbox = Outbox::open(js).await?;
        let segments = match &flows.segments {
            Some(cfg) => {
                let store = SegmentStore::open(js).await?;
                let s = store.load(cfg.clone()).await?;
                Some((store, Mutex::new(s)))
            }
            None => None,
        };
        Ok(Automation {
            inner: Arc::new(Inner {
                flows,
                issuer,
                links,
                outbox,
                bus,
                segments,
            }),
        })
    }

    pub fn issuer(&self) -> &Issuer {
        &self.inner.issuer
    }

    pub fn links(&self) -> &Links {
        &self.inner.links
    }

    pub fn outbox(&self) -> &Outbox {
        &self.inner.outbox
    }

    pub fn bus(&self) -> &Lifecycle {
        &self.inner.bus
    }

    /// Current segment membership, if segments are configured.
    pub async fn membership(&self) -> Option<Vec<(String, segments::Segment, i64)>> {
        let (_, s) = self.inner.segments.as_ref()?;
        Some(s.lock().await.membership())
    }

    /// The short URL of a link code.
    pub fn short_url(&self, code: &str) -> String {
        format!(
            "{}/l/{code}",
            self.inner.issuer.config().public_url.trim_end_matches('/')
        )
    }

    /// The serial `flow` issues for `customer`.
    pub fn serial_for(&self, flow: &str, customer: &str) -> String {
        self.inner
            .issuer
            .derive("serial", &[flow, customer], SERIAL_ALPHABET, 20)
    }

    /// Creates (or finds) the durable consumer; call before events that must be acted on are
    /// published.
    pub async fn consumer(
        &self,
        js: &jetstream::Context,
        bus: &BusConfig,
    ) -> Result<jetstream::consumer::PullConsumer, StepError> {
        let stream = js
            .get_stream(&bus.stream)
            .await
            .map_err(|e| StepError::Transient(format!("event stream: {e}")))?;
        let mut subjects: Vec<String> = self
            .inner
            .flows
            .triggers()
            .into_iter()
            .map(|t| bus.event_subject(t))
            .collect();
        subjects.push(bus.batch_subject());
        let config = pull::Config {
            durable_name: Some(CONSUMER.into()),
            description: Some("passpulse automation flows".into()),
            deliver_policy: DeliverPolicy::New,
            filter_subjects: subjects,
            ack_wait: Duration::from_secs(60),
            max_ack_pending: 1,
            ..Default::default()
        };
        // create, or update the filter when the flows changed (nats-server 2.10+; 2.9 knows
        // no subject list, delivers every event and the flows skip what they do not use)
        match stream.create_consumer(config).await {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::warn!(error = %e, "automation consumer not updated; using it as it is");
                stream
                    .get_consumer(CONSUMER)
                    .await
                    .map_err(|e| StepError::Transient(format!("automation consumer: {e}")))
            }
        }
    }

    /// Processes bus messages one at a time, in order, until the process ends. Events stamped
    /// more than `max_future_skew` ms after the broker stored them are skipped, as the engine
    /// refuses them (`ingest.max_future_skew`): one mis-stamped event must not move the
    /// segments' event-time clock.
    pub async fn run(
        self,
        consumer: jetstream::consumer::PullConsumer,
        max_future_skew: Option<i64>,
    ) -> Result<(), StepError> {
        let mut msgs = consumer
            .messages()
            .await
            .map_err(|e| StepError::Transient(format!("automation consumer: {e}")))?;
        let mut batch = DecodedBatch::new();
        while let Some(m) = msgs.next().await {
            let m = match m {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "automation consumer");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let seq = m.info().map(|i| i.stream_sequence).unwrap_or(0);
            batch.clear();
            if let Ok(info) = m.info() {
                batch.set_arrival((info.published.unix_timestamp_nanos() / 1_000_000) as i64);
            }
            batch.set_max_future_skew(max_future_skew);
            // bad events are the engine's to dead-letter; here they are skipped
            decode_message(&m.payload, seq, &mut batch, |_, _| {});
            match self.handle_batch(&batch).await {
                Ok(()) => {
                    let _ = m.double_ack().await;
                }
                Err(e) if e.is_transient() => {
                    let attempt = m.info().map(|i| i.delivered.max(1) as u32).unwrap_or(1);
                    let delay = delivery::backoff(attempt);
                    tracing::warn!(error = %e, seq, retry_in = ?delay, "automation step failed; will retry");
                    let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, seq, "automation step cannot succeed; not retried");
                    let _ = m.ack_with(AckKind::Term).await;
                }
            }
        }
        Err(StepError::Transient("automation consumer ended".into()))
    }

    /// Every event of one bus message, then the segment state it changed.
    pub async fn handle_batch(&self, batch: &DecodedBatch) -> Result<(), StepError> {
        for e in batch.iter() {
            self.handle(&e).await?;
        }
        if let Some((store, s)) = &self.inner.segments {
            store.save(&mut *s.lock().await).await?;
        }
        Ok(())
    }

    async fn handle(&self, e: &EventRef<'_>) -> Result<(), StepError> {
        let attrs: Map<String, Value> = e
            .attrs
            .and_then(|a| serde_json::from_str(a).ok())
            .unwrap_or_default();
        // time first: a member silent since before this event's time - period was inactive in
        // between, even if this event is their own activity
        if let Some((_, s)) = &self.inner.segments {
            let out = s.lock().await.advance(e.ts);
            self.emit_all(out).await?;
        }
        for f in &self.inner.flows.flows {
            if f.trigger != e.kind.as_str() || !f.matches(|k| field(e, &attrs, k)) {
                continue;
            }
            let Some(customer) = e.customer else {
                continue;
            };
            match f.action {
                Action::IssuePass => self.issue_pass(f, e, customer, &attrs).await?,
                Action::UpdatePass => self.update_pass(f, customer, &attrs).await?,
                Action::ConfirmOptin => self.confirm_optin(f, e, customer, &attrs).await?,
            }
        }
        self.segment(e, &attrs).await
    }

    async fn issue_pass(
        &self,
        f: &Flow,
        e: &EventRef<'_>,
        customer: &str,
        attrs: &Map<String, Value>,
    ) -> Result<(), StepError> {
        let iss = &self.inner.issuer;
        let serial = self.serial_for(&f.name, customer);
        let mut pass_attrs = f.defaults.clone();
        for k in &f.copy {
            if let Some(v) = attrs.get(k) {
                pass_attrs.insert(k.clone(), v.clone());
            }
        }
        if let Some(d) = &f.discount_code {
            let code = iss.derive("discount", &[&serial], CODE_CHARS, 10);
            pass_attrs.insert(
                "discount_code".into(),
                Value::String(d.replace("{code}", &code)),
            );
        }
        if let Some(v) = f.valid_for {
            let until = chrono::DateTime::from_timestamp_millis(e.ts + v.as_millis() as i64)
                .unwrap_or_default();
            pass_attrs.insert(
                "expires".into(),
                Value::String(until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            );
            pass_attrs.insert(
                "expires_text".into(),
                Value::String(until.format("%-d %B %Y").to_string()),
            );
        }
        let campaign = self.campaign(f, e);
        let req = NewPass {
            program: f.template.clone().unwrap_or_default(),
            customer: customer.to_string(),
            attributes: pass_attrs,
            source: e.source.map(str::to_string),
            campaign: Some(campaign.clone()),
        };
        let Some((issued, created)) = refused_is_final(f, iss.issue_as(serial.clone(), req).await)?
        else {
            return Ok(());
        };
        if created {
            tracing::debug!(flow = %f.name, serial = %issued.serial, "automation issued a pass");
        }
        if let Some((_, s)) = &self.inner.segments {
            let out = {
                let mut s = s.lock().await;
                if s.config().pass_from == f.name {
                    let mut out = s.activity(customer, e.ts);
                    if let Some(p) = attrs.get("points").and_then(Value::as_f64) {
                        out.extend(s.points(customer, p, e.ts)); // the opening balance
                    }
                    out
                } else {
                    Vec::new()
                }
            };
            self.emit_all(out).await?;
        }
        let pass = iss.pass(&serial)?;
        let mut vars = pass.attributes.clone();
        vars.insert("serial".into(), Value::String(serial.clone()));
        let target = Target::Pass {
            serial: serial.clone(),
        };
        self.deliver(
            f,
            customer,
            attrs,
            Some(&serial),
            Some(&pass.program),
            &campaign,
            target,
            vars,
        )
        .await
    }

    async fn update_pass(
        &self,
        f: &Flow,
        customer: &str,
        attrs: &Map<String, Value>,
    ) -> Result<(), StepError> {
        let from = f.pass_from.as_deref().unwrap_or_default();
        let serial = self.serial_for(from, customer);
        let Some(pass) = self.inner.issuer.registry().pass(&serial) else {
            return Ok(()); // not a member of that flow
        };
        let changed: Map<String, Value> = f
            .watch
            .iter()
            .filter_map(|k| {
                let v = attrs.get(k)?;
                (pass.attributes.get(k) != Some(v)).then(|| (k.clone(), v.clone()))
            })
            .collect();
        if changed.is_empty() {
            return Ok(()); // nothing the pass shows changed (or this event was handled before)
        }
        if let Some(r) = refused_is_final(f, self.inner.issuer.update(&serial, changed).await)? {
            tracing::debug!(serial, pushed = r.pushed, "automation updated a pass");
        }
        Ok(())
    }

    async fn confirm_optin(
        &self,
        f: &Flow,
        e: &EventRef<'_>,
        customer: &str,
        attrs: &Map<String, Value>,
    ) -> Result<(), StepError> {
        let campaign = self.campaign(f, e);
        let target = Target::Optin {
            customer: customer.to_string(),
            attrs: attrs.clone(),
        };
        let mut vars = attrs.clone();
        vars.remove("serial");
        self.deliver(f, customer, attrs, None, e.program, &campaign, target, vars)
            .await
    }

    /// Makes the short link of each channel and enqueues the messages carrying it.
    #[allow(clippy::too_many_arguments)]
    async fn deliver(
        &self,
        f: &Flow,
        customer: &str,
        contact: &Map<String, Value>,
        serial: Option<&str>,
        program: Option<&str>,
        campaign: &str,
        target: Target,
        mut vars: Map<String, Value>,
    ) -> Result<(), StepError> {
        let keys = &self.inner.flows.contact;
        let consent = contact.get(&keys.consent).map(|v| {
            matches!(
                text_of(v).to_ascii_lowercase().as_str(),
                "true" | "yes" | "1"
            )
        });
        if f.basis == Basis::Consent && consent != Some(true) {
            tracing::info!(flow = %f.name, customer, "no marketing consent: nothing sent");
            return Ok(());
        }
        let iss = &self.inner.issuer;
        for &channel in &f.channels {
            let (to_key, template) = match channel {
                Channel::Email => (
                    &keys.email,
                    f.email.as_ref().map(|t| (Some(&t.subject), &t.text)),
                ),
                Channel::Sms => (&keys.phone, f.sms.as_ref().map(|t| (None, &t.text))),
            };
            let Some((subject, text)) = template else {
                continue;
            };
            let Some(to) = contact.get(to_key).map(text_of).filter(|t| !t.is_empty()) else {
                tracing::debug!(flow = %f.name, customer, channel = channel.as_str(), "no address for this channel: not sent");
                continue;
            };
            let code = iss.derive(
                "link",
                &[&f.name, customer, channel.as_str()],
                CODE_ALPHABET,
                CODE_LEN,
            );
            self.inner
                .links
                .put(&Link {
                    code: code.clone(),
                    target: target.clone(),
                    flow: f.name.clone(),
                    channel: channel.as_str().into(),
                    program: program.map(str::to_string),
                    campaign: Some(campaign.to_string()),
                    created_at: now_ms(),
                })
                .await?;
            vars.insert("link".into(), Value::String(self.short_url(&code)));
            vars.insert("customer".into(), Value::String(customer.to_string()));
            vars.insert(
                "program".into(),
                Value::String(program.unwrap_or_default().to_string()),
            );
            vars.insert("flow".into(), Value::String(f.name.clone()));
            vars.entry("serial")
                .or_insert_with(|| Value::String(serial.unwrap_or_default().to_string()));
            let fill_or_log = |t: &str| {
                fill(t, &vars).map_err(|e| {
                    tracing::error!(flow = %f.name, error = %e, "message template");
                })
            };
            let (Ok(text), Ok(subject)) = (
                fill_or_log(text),
                subject.map(|s| fill_or_log(s)).transpose(),
            ) else {
                continue;
            };
            if channel == Channel::Sms && !senders::single_sms_segment(&text) {
                tracing::warn!(flow = %f.name, chars = text.chars().count(), "SMS longer than one segment (160 GSM-7 characters): it is sent as several, billed as several");
            }
            let m = OutMessage {
                id: iss.derive(
                    "message",
                    &[&f.name, channel.as_str(), customer],
                    CODE_ALPHABET,
                    22,
                ),
                flow: f.name.clone(),
                channel,
                to,
                subject,
                text,
                customer: customer.to_string(),
                pass: serial.map(str::to_string),
                program: program.map(str::to_string),
                campaign: Some(campaign.to_string()),
                basis: f.basis,
                created_at: now_ms(),
            };
            if self
                .inner
                .outbox
                .done(&m.id)
                .await
                .map_err(StepError::Transient)?
            {
                continue; // delivered before: this event was handled already
            }
            self.inner
                .outbox
                .enqueue(&m)
                .await
                .map_err(StepError::Transient)?;
        }
        Ok(())
    }

    fn campaign(&self, f: &Flow, e: &EventRef<'_>) -> String {
        f.campaign
            .clone()
            .or_else(|| e.campaign.map(str::to_string))
            .unwrap_or_else(|| f.name.clone())
    }

    /// Segment activity of `e` (points earned, a scan of a member's pass).
    async fn segment(&self, e: &EventRef<'_>, attrs: &Map<String, Value>) -> Result<(), StepError> {
        let Some((_, s)) = &self.inner.segments else {
            return Ok(());
        };
        let mut out = Vec::new();
        {
            let mut s = s.lock().await;
            match e.kind {
                EventType::ContactUpdated => {
                    if let (Some(c), Some(p)) =
                        (e.customer, attrs.get("points").and_then(Value::as_f64))
                        && s.is_member(c)
                    {
                        out.extend(s.points(c, p, e.ts));
                    }
                }
                EventType::Scan => {
                    if let Some(p) = e.pass.and_then(|p| self.inner.issuer.registry().pass(p))
                        && p.program == s.config().program
                        && s.is_member(&p.customer)
                    {
                        out.extend(s.activity(&p.customer, e.ts));
                    }
                }
                _ => {}
            }
        }
        self.emit_all(out).await
    }

    async fn emit_all(&self, events: Vec<crate::lifecycle::Event>) -> Result<(), StepError> {
        for ev in events {
            self.inner.bus.emit(&ev).await.map_err(StepError::from)?;
        }
        Ok(())
    }
}

/// The issuer's answer to an automation step: a refusal (a pass the template or the limits
/// refuse) cannot be mended by retrying, so it is logged and the step ends (`None`); any other
/// error is retried.
fn refused_is_final<T>(f: &Flow, r: Result<T, IssueError>) -> Result<Option<T>, StepError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(IssueError::BadRequest(why)) => {
            tracing::error!(flow = %f.name, error = %why, "automation: the issuer refused the step; not retried");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// An event's field for flow conditions.
fn field(e: &EventRef<'_>, attrs: &Map<String, Value>, k: &str) -> Option<Value> {
    let s = |v: Option<&str>| v.map(|v| Value::String(v.to_string()));
    match k {
        "program" => s(e.program),
        "source" => s(e.source),
        "campaign" => s(e.campaign),
        "offer" => s(e.offer),
        "location" => s(e.location),
        "pass" => s(e.pass),
        _ => k.strip_prefix("attrs.").and_then(|a| attrs.get(a).cloned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegistryError;

    #[test]
    fn only_failures_that_can_pass_are_retried() {
        let transient = [
            StepError::from(RegistryError::Store("connection reset".into())),
            StepError::from(IssueError::Unavailable("kv down".into())),
            StepError::from(IssueError::TooManyRequests("slow down".into(), 2)),
            StepError::from(IssueError::Internal("signing key unreadable".into())),
        ];
        for e in &transient {
            assert!(e.is_transient(), "{e}");
        }
        // a corrupt registry entry used to be retried forever
        let corrupt = RegistryError::Corrupt {
            key: "pass.x".into(),
            detail: "expected value at line 1 column 1".into(),
        };
        let permanent = [
            StepError::from(IssueError::from(RegistryError::Corrupt {
                key: "pass.x".into(),
                detail: "truncated".into(),
            })),
            StepError::from(corrupt),
            StepError::from(RegistryError::NotFound("x".into())),
            StepError::from(IssueError::BadRequest("no such template".into())),
            StepError::from(IssueError::Forbidden("not this programme".into())),
        ];
        for e in &permanent {
            assert!(!e.is_transient(), "{e}");
        }
    }
}
