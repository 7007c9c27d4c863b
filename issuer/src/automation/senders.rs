//! The two channels' senders: email through SMTP (`lettre`: plain, STARTTLS or TLS, optional
//! credentials, pooled connections) and SMS through an HTTP provider (URL, `Authorization`
//! header and a body template with `{to}`, `{from}` and `{text}`, escaped for the body's content
//! type).

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use super::delivery::{OutMessage, SendError, Sender};

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text (a relay on the same machine or network only).
    None,
    /// Upgrade with STARTTLS, refusing to continue without it (port 587).
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Tls,
}

/// `[automation.email]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailConfig {
    pub host: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub tls: SmtpTls,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// `Name <address>` or an address.
    pub from: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Sends email through an SMTP server.
pub struct SmtpSender {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSender")
            .field("from", &self.from.to_string())
            .finish()
    }
}

impl SmtpSender {
    /// Builds the pooled transport; call inside a Tokio runtime (the pool spawns its reaper).
    pub fn new(c: &EmailConfig) -> Result<SmtpSender, String> {
        let from: Mailbox = c
            .from
            .parse()
            .map_err(|e| format!("email from \"{}\": {e}", c.from))?;
        let mut b = match c.tls {
            SmtpTls::None => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host),
            SmtpTls::Starttls => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host)
                .map_err(|e| format!("smtp {}: {e}", c.host))?,
            SmtpTls::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host)
                .map_err(|e| format!("smtp {}: {e}", c.host))?,
        };
        if let Some(p) = c.port {
            b = b.port(p);
        }
        if let Some(u) = &c.username {
            b = b.credentials(Credentials::new(
                u.clone(),
                c.password.clone().unwrap_or_default(),
            ));
        }
        Ok(SmtpSender {
            transport: b.timeout(Some(c.timeout)).build(),
            from,
        })
    }
}

#[async_trait::async_trait]
impl Sender for SmtpSender {
    async fn send(&self, m: &OutMessage) -> Result<(), SendError> {
        let to: Mailbox =
            m.to.parse()
                .map_err(|e| SendError::permanent(format!("address \"{}\": {e}", m.to)))?;
        let email = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(m.subject.clone().unwrap_or_default())
            // the same message id on every attempt, so a receiver can drop a repeat
            .message_id(Some(format!("<{}@passpulse>", m.id)))
            .header(ContentType::TEXT_PLAIN)
            .body(m.text.clone())
            .map_err(|e| SendError::permanent(format!("message: {e}")))?;
        match self.transport.send(email).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_permanent() => Err(SendError::permanent(format!("smtp: {e}"))),
            Err(e) => Err(SendError::transient(format!("smtp: {e}"))),
        }
    }
}

/// `[automation.sms]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmsConfig {
    /// Provider endpoint the request is POSTed to.
    pub url: String,
    /// Value of the `Authorization` header (`Bearer …`, `Basic …`).
    #[serde(default)]
    pub authorization: Option<String>,
    /// Sender id or number, for `{from}`.
    #[serde(default)]
    pub from: String,
    /// Request body with `{to}`, `{from}` and `{text}`.
    #[serde(default = "default_sms_body")]
    pub body: String,
    /// `application/json` (placeholders JSON-escaped) or
    /// `application/x-www-form-urlencoded` (placeholders percent-encoded).
    #[serde(default = "default_sms_type")]
    pub content_type: String,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_sms_body() -> String {
    r#"{"to":"{to}","from":"{from}","text":"{text}"}"#.into()
}

fn default_sms_type() -> String {
    "application/json".into()
}

/// Sends SMS through an HTTP provider.
#[derive(Debug)]
pub struct HttpSmsSender {
    client: reqwest::Client,
    cfg: SmsConfig,
}

impl HttpSmsSender {
    pub fn new(cfg: &SmsConfig) -> Result<HttpSmsSender, String> {
        if !(cfg.url.starts_with("https://") || cfg.url.starts_with("http://")) {
            return Err(format!("sms url \"{}\" is not http(s)", cfg.url));
        }
        let client = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(HttpSmsSender {
            client,
            cfg: cfg.clone(),
        })
    }

    /// The request body for `m`.
    pub fn body(&self, m: &OutMessage) -> String {
        let json = self.cfg.content_type.contains("json");
        let esc = |s: &str| {
            if json {
                let q = serde_json::to_string(s).expect("strings serialize");
                q[1..q.len() - 1].to_string()
            } else {
                form_encode(s)
            }
        };
        self.cfg
            .body
            .replace("{to}", &esc(&m.to))
            .replace("{from}", &esc(&self.cfg.from))
            .replace("{text}", &esc(&m.text))
    }
}

fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[async_trait::async_trait]
impl Sender for HttpSmsSender {
    async fn send(&self, m: &OutMessage) -> Result<(), SendError> {
        if !valid_phone(&m.to) {
            return Err(SendError::permanent(format!(
                "\"{}\" is not a phone number (E.164: + and 8–15 digits)",
                m.to
            )));
        }
        let mut req = self
            .client
            .post(&self.cfg.url)
            .header(reqwest::header::CONTENT_TYPE, &self.cfg.content_type)
            .header("Idempotency-Key", &m.id)
            .body(self.body(m));
        if let Some(a) = &self.cfg.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, a);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| SendError::transient(format!("sms provider: {e}")))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let detail: String = resp
            .text()
            .await
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let reason = format!("sms provider answered {status}: {detail}");
        // 408 and 429 are worth retrying, as is any 5xx; other 4xx mean the request is wrong
        if status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
            Err(SendError::permanent(reason))
        } else {
            Err(SendError::transient(reason))
        }
    }
}

/// E.164: `+` and 8 to 15 digits (spaces ignored).
pub fn valid_phone(s: &str) -> bool {
    let digits: String = s.chars().filter(|c| *c != ' ').collect();
    digits
        .strip_prefix('+')
        .is_some_and(|d| (8..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit()))
}

/// True if `text` fits one SMS segment: at most 160 characters of the GSM 03.38 basic set
/// (characters of its extension table count twice).
pub fn single_sms_segment(text: &str) -> bool {
    const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
    const EXTENDED: &str = "^{}\\[~]|€\u{c}";
    let mut septets = 0;
    for c in text.chars() {
        if BASIC.contains(c) {
            septets += 1;
        } else if EXTENDED.contains(c) {
            septets += 2;
        } else {
            return false; // needs UCS-2: 70 characters a segment
        }
    }
    septets <= 160
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::automation::flows::{Basis, Channel};

    fn msg(to: &str, text: &str) -> OutMessage {
        OutMessage {
            id: "m1".into(),
            flow: "f".into(),
            channel: Channel::Sms,
            to: to.into(),
            subject: None,
            text: text.into(),
            customer: "c".into(),
            pass: None,
            program: None,
            campaign: None,
            basis: Basis::Operational,
            created_at: 0,
        }
    }

    fn sms(body: &str, content_type: &str) -> HttpSmsSender {
        HttpSmsSender::new(&SmsConfig {
            url: "http://127.0.0.1:9/sms".into(),
            authorization: None,
            from: "Shop".into(),
            body: body.into(),
            content_type: content_type.into(),
            timeout: Duration::from_secs(1),
        })
        .unwrap()
    }

    #[test]
    fn bodies_escape_for_their_content_type() {
        let m = msg("+48123456789", "Say \"hi\" & go");
        let j = sms(&default_sms_body(), "application/json").body(&m);
        let v: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(v["text"], "Say \"hi\" & go");
        assert_eq!(v["to"], "+48123456789");
        let f = sms("To={to}&Body={text}", "application/x-www-form-urlencoded").body(&m);
        assert_eq!(f, "To=%2B48123456789&Body=Say+%22hi%22+%26+go");
    }

    #[test]
    fn phones_and_segments() {
        assert!(valid_phone("+48 123 456 789"));
        assert!(!valid_phone("123456789"));
        assert!(!valid_phone("+12"));
        assert!(single_sms_segment(&"a".repeat(160)));
        assert!(!single_sms_segment(&"a".repeat(161)));
        assert!(!single_sms_segment(&"€".repeat(81)));
        assert!(!single_sms_segment("zażółć"));
    }

    #[tokio::test]
    async fn smtp_settings_are_checked() {
        let c = EmailConfig {
            host: "127.0.0.1".into(),
            port: Some(2525),
            tls: SmtpTls::None,
            username: None,
            password: None,
            from: "not an address".into(),
            timeout: default_timeout(),
        };
        assert!(SmtpSender::new(&c).unwrap_err().contains("not an address"));
        let ok = EmailConfig {
            from: "Shop <shop@example.test>".into(),
            ..c
        };
        assert!(SmtpSender::new(&ok).is_ok());
    }
}
