//! Pass update pushes. Apple Wallet's update push is the JSON `{}` sent to the device's push
//! token with `apns-topic` = the pass type id; the device then asks the web service what changed.
//!
//! Sending sits behind [`PushSender`]: [`ApnsSender`] is the real one (the `a2` crate, certificate
//! or token auth), [`RecordingSender`] a fake that records every push and answers as scripted
//! (tests and benchmarks; a2 cannot target a local host). [`fan_out`] pushes to many devices
//! concurrently, at most `concurrency` at a time.

use std::collections::HashMap;
use std::sync::Arc;

use a2::request::notification::NotificationOptions;
use a2::request::payload::PayloadLike;
use async_trait::async_trait;
use futures::StreamExt;
use parking_lot::Mutex;

/// What APNs said about one push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushOutcome {
    Sent,
    /// 410 Unregistered: the token is no longer valid since `timestamp` (epoch millis, if given).
    Gone {
        timestamp: Option<i64>,
    },
    /// Any other failure, with APNs' reason (or the transport error).
    Failed {
        reason: String,
    },
}

#[async_trait]
pub trait PushSender: Send + Sync + std::fmt::Debug {
    /// Sends the empty update push to `token` for passes of type `topic`.
    async fn push(&self, token: &str, topic: &str) -> PushOutcome;
}

/// `{}` with only `apns-topic` set (a2's own payload types always add an `aps` object).
#[derive(Debug, serde::Serialize)]
struct EmptyPayload<'a> {
    #[serde(skip_serializing)]
    options: NotificationOptions<'a>,
    #[serde(skip_serializing)]
    device_token: &'a str,
}

impl<'a> PayloadLike for EmptyPayload<'a> {
    fn get_device_token(&self) -> &'a str {
        self.device_token
    }
    fn get_options(&self) -> &NotificationOptions<'_> {
        &self.options
    }
}

/// APNs through `a2` (HTTP/2, production or sandbox host).
pub struct ApnsSender {
    client: a2::Client,
}

impl std::fmt::Debug for ApnsSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsSender").finish_non_exhaustive()
    }
}

/// How to authenticate to APNs.
#[derive(Debug, Clone)]
pub enum ApnsAuth {
    /// PKCS#12 with the Pass Type ID certificate and key (legacy encryption accepted).
    Certificate {
        p12: std::path::PathBuf,
        password: String,
    },
    /// A `.p8` token key.
    Token {
        key: std::path::PathBuf,
        key_id: String,
        team_id: String,
    },
}

impl ApnsSender {
    pub fn new(auth: &ApnsAuth, sandbox: bool) -> Result<ApnsSender, String> {
        let endpoint = if sandbox {
            a2::Endpoint::Sandbox
        } else {
            a2::Endpoint::Production
        };
        let config = a2::ClientConfig::new(endpoint);
        let open = |p: &std::path::Path| {
            std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display()))
        };
        let client = match auth {
            ApnsAuth::Certificate { p12, password } => {
                // old Keychain exports use RC2-40, which OpenSSL 3 keeps in its legacy provider
                let _legacy = openssl::provider::Provider::try_load(None, "legacy", true).ok();
                a2::Client::certificate(&mut open(p12)?, password, config)
            }
            ApnsAuth::Token {
                key,
                key_id,
                team_id,
            } => a2::Client::token(open(key)?, key_id.as_str(), team_id.as_str(), config),
        }
        .map_err(|e| format!("APNs client: {e}"))?;
        Ok(ApnsSender { client })
    }
}

#[async_trait]
impl PushSender for ApnsSender {
    async fn push(&self, token: &str, topic: &str) -> PushOutcome {
        let payload = EmptyPayload {
            options: NotificationOptions {
                apns_topic: Some(topic),
                ..Default::default()
            },
            device_token: token,
        };
        match self.client.send(payload).await {
            Ok(_) => PushOutcome::Sent,
            Err(a2::Error::ResponseError(r)) if r.code == 410 => PushOutcome::Gone {
                timestamp: r.error.and_then(|e| e.timestamp).map(|t| t as i64),
            },
            Err(a2::Error::ResponseError(r)) => PushOutcome::Failed {
                reason: match r.error {
                    Some(e) => format!("{:?} ({})", e.reason, r.code),
                    None => format!("HTTP {}", r.code),
                },
            },
            Err(e) => PushOutcome::Failed {
                reason: e.to_string(),
            },
        }
    }
}

/// No APNs credentials configured: every push fails with that reason (recorded as
/// `push.failed`), so an operator sees the updates that did not reach devices.
#[derive(Debug, Default)]
pub struct Unconfigured;

#[async_trait]
impl PushSender for Unconfigured {
    async fn push(&self, _token: &str, _topic: &str) -> PushOutcome {
        PushOutcome::Failed {
            reason: "apns-not-configured".into(),
        }
    }
}

/// A fake APNs: records `(token, topic)` of every push and answers [`PushOutcome::Sent`] unless
/// told otherwise for a token.
#[derive(Debug, Default)]
pub struct RecordingSender {
    sent: Mutex<Vec<(String, String)>>,
    answers: Mutex<HashMap<String, PushOutcome>>,
}

impl RecordingSender {
    pub fn new() -> Arc<RecordingSender> {
        Arc::default()
    }

    /// Answers `outcome` to every later push to `token`.
    pub fn answer(&self, token: &str, outcome: PushOutcome) {
        self.answers.lock().insert(token.into(), outcome);
    }

    /// Every push so far, in order.
    pub fn sent(&self) -> Vec<(String, String)> {
        self.sent.lock().clone()
    }
}

#[async_trait]
impl PushSender for RecordingSender {
    async fn push(&self, token: &str, topic: &str) -> PushOutcome {
        self.sent.lock().push((token.into(), topic.into()));
        self.answers
            .lock()
            .get(token)
            .cloned()
            .unwrap_or(PushOutcome::Sent)
    }
}

/// Pushes to every `(key, token)` concurrently, at most `concurrency` in flight; the outcomes in
/// completion order.
pub async fn fan_out<K: Send>(
    sender: &dyn PushSender,
    topic: &str,
    targets: Vec<(K, String)>,
    concurrency: usize,
) -> Vec<(K, PushOutcome)> {
    futures::stream::iter(targets)
        .map(|(k, token)| async move {
            let o = sender.push(&token, topic).await;
            (k, o)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_payload_is_an_empty_object() {
        let p = EmptyPayload {
            options: NotificationOptions {
                apns_topic: Some("pass.example"),
                ..Default::default()
            },
            device_token: "abc",
        };
        assert_eq!(p.to_json_string().unwrap(), "{}");
        assert_eq!(p.get_options().apns_topic, Some("pass.example"));
    }

    #[tokio::test]
    async fn fan_out_reaches_every_token_and_reports_each_outcome() {
        let fake = RecordingSender::new();
        fake.answer("t3", PushOutcome::Gone { timestamp: Some(5) });
        let targets = (0..100).map(|i| (i, format!("t{i}"))).collect();
        let mut out = fan_out(fake.as_ref(), "pass.x", targets, 8).await;
        out.sort_by_key(|(k, _)| *k);
        assert_eq!(out.len(), 100);
        assert_eq!(out[3].1, PushOutcome::Gone { timestamp: Some(5) });
        assert!(
            out.iter()
                .filter(|(k, _)| *k != 3)
                .all(|(_, o)| *o == PushOutcome::Sent)
        );
        assert_eq!(fake.sent().len(), 100);
        assert!(fake.sent().iter().all(|(_, topic)| topic == "pass.x"));
    }
}
