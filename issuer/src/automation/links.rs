//! Short links: `/l/{code}` with a 10-character code, kept in the JetStream key-value bucket
//! `PASSPULSE_LINKS`. A pass link sends iOS to the signed `.pkpass` download, Android to the
//! Google Wallet save URL, and a desktop browser to a small landing page with both buttons and a
//! QR code of the link itself (scanned with a phone, it lands on the right wallet); every visit
//! emits `link.clicked`. An opt-in link shows a page with a confirm button: confirming is a POST,
//! because mail scanners open every link in a message and must not confirm on a customer's
//! behalf; it emits `optin.confirmed`.
//!
//! Codes are derived from what the link is for with the server's key, so a retried automation
//! step makes the same link; a code cannot be guessed without the key (59 bits).

use async_nats::jetstream::{self, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::registry::{RegistryError, bucket, store_err};

pub const LINKS_BUCKET: &str = "PASSPULSE_LINKS";
/// Characters of a link code.
pub const CODE_LEN: usize = 10;
pub const CODE_ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// What a short link leads to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Target {
    /// A pass: redirect to the wallet that fits the visitor's device.
    Pass { serial: String },
    /// A double opt-in confirmation for `customer`; `attrs` (contact details) ride along on
    /// `optin.confirmed` so the flow it triggers can deliver.
    Optin {
        customer: String,
        #[serde(default)]
        attrs: Map<String, Value>,
    },
}

/// One short link.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Link {
    pub code: String,
    pub target: Target,
    /// Flow that made it.
    pub flow: String,
    /// Channel it was sent through (`email`, `sms`): the `source` of its clicks.
    pub channel: String,
    pub program: Option<String>,
    pub campaign: Option<String>,
    pub created_at: i64,
}

/// The device class a visitor's `User-Agent` says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Agent {
    Ios,
    Android,
    Desktop,
}

impl Agent {
    pub fn of(user_agent: &str) -> Agent {
        let ua = user_agent.to_ascii_lowercase();
        if ua.contains("android") {
            Agent::Android
        } else if ["iphone", "ipad", "ipod", "watch os", "watchos"]
            .iter()
            .any(|k| ua.contains(k))
        {
            Agent::Ios
        } else {
            Agent::Desktop
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Agent::Ios => "ios",
            Agent::Android => "android",
            Agent::Desktop => "desktop",
        }
    }
}

/// True if `code` has the shape of a link code (checked before any lookup).
pub fn valid_code(code: &str) -> bool {
    code.len() == CODE_LEN && code.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// The link store.
#[derive(Clone)]
pub struct Links {
    kv: kv::Store,
}

impl std::fmt::Debug for Links {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Links")
    }
}

impl Links {
    pub async fn open(js: &jetstream::Context) -> Result<Links, RegistryError> {
        Ok(Links {
            kv: bucket(js, LINKS_BUCKET, std::time::Duration::ZERO).await?,
        })
    }

    /// Stores `link` unless its code exists (the same link made by an earlier attempt).
    pub async fn put(&self, link: &Link) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec(link).expect("links serialize");
        match self.kv.create(&link.code, bytes.into()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(store_err(e)),
        }
    }

    pub async fn get(&self, code: &str) -> Result<Option<Link>, RegistryError> {
        if !valid_code(code) {
            return Ok(None);
        }
        match self.kv.get(code).await.map_err(store_err)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| RegistryError::Corrupt {
                    key: code.into(),
                    detail: e.to_string(),
                }),
        }
    }
}

/// Escapes text for HTML.
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A QR code of `text` as an inline SVG.
pub fn qr_svg(text: &str) -> String {
    use qrcode::render::svg;
    match qrcode::QrCode::new(text.as_bytes()) {
        Ok(code) => code
            .render::<svg::Color>()
            .min_dimensions(200, 200)
            .quiet_zone(true)
            .build(),
        Err(_) => String::new(),
    }
}

const PAGE_STYLE: &str = "body{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem;color:#1d1f24;background:#fff}\
a.button,button{display:block;margin:.75rem 0;padding:.9rem 1rem;border-radius:.5rem;border:0;font-size:1.05rem;text-align:center;text-decoration:none;color:#fff;background:#1d1f24;width:100%;cursor:pointer}\
a.button.google{background:#1a5fc4}a.button:focus,button:focus{outline:3px solid #f5a400;outline-offset:2px}\
figure{margin:1.5rem 0;text-align:center}figcaption{color:#4a4f59}";

fn page(title: &str, body: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>{t}</title><style>{PAGE_STYLE}</style></head>\
<body><main><h1>{t}</h1>{body}</main></body></html>",
        t = html_escape(title)
    )
}

/// The desktop landing page of a pass link: both wallet buttons and a QR code of the link.
pub fn landing_page(
    title: &str,
    short_url: &str,
    apple_url: &str,
    google_url: Option<&str>,
) -> String {
    let google = google_url
        .map(|g| {
            format!(
                "<a class=\"button google\" href=\"{}\">Add to Google Wallet</a>",
                html_escape(g)
            )
        })
        .unwrap_or_default();
    page(
        title,
        &format!(
            "<p>Add your card to your phone's wallet.</p>\
<a class=\"button\" href=\"{}\">Add to Apple Wallet</a>{google}\
<figure>{}<figcaption>Or scan this code with your phone's camera.</figcaption></figure>",
            html_escape(apple_url),
            qr_svg(short_url)
        ),
    )
}

/// The page of an opt-in link: a form that confirms with a POST.
pub fn optin_page(action: &str) -> String {
    page(
        "Confirm your subscription",
        &format!(
            "<p>Please confirm that you want to receive our messages.</p>\
<form method=\"post\" action=\"{}\"><button type=\"submit\">Confirm</button></form>",
            html_escape(action)
        ),
    )
}

/// The page after confirming.
pub fn confirmed_page() -> String {
    page(
        "Thank you",
        "<p>Your subscription is confirmed. Your welcome offer is on its way.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents() {
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15";
        let android = "Mozilla/5.0 (Linux; Android 15; Pixel 9) AppleWebKit/537.36 Chrome/131.0";
        let mac =
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_0) AppleWebKit/605.1.15 Safari/605.1.15";
        assert_eq!(Agent::of(iphone), Agent::Ios);
        assert_eq!(Agent::of(android), Agent::Android);
        assert_eq!(Agent::of(mac), Agent::Desktop);
        assert_eq!(Agent::of(""), Agent::Desktop);
    }

    #[test]
    fn codes_are_checked_before_lookup() {
        assert!(valid_code("Ab3dE5gH1k"));
        assert!(!valid_code("Ab3dE5gH1"));
        assert!(!valid_code("Ab3dE5gH1/"));
        assert!(!valid_code("../../etc/"));
    }

    #[test]
    fn pages_escape_and_carry_a_qr_code() {
        let p = landing_page(
            "<Club>",
            "https://x.test/l/Ab3dE5gH1k",
            "https://x.test/a?b=1&c=2",
            None,
        );
        assert!(p.contains("&lt;Club&gt;") && !p.contains("<Club>"));
        assert!(p.contains("a?b=1&amp;c=2"));
        assert!(p.contains("<svg"), "QR code rendered as SVG");
        assert!(!p.contains("Google Wallet"));
        let p = landing_page("Club", "u", "a", Some("https://pay.google.com/gp/v/save/x"));
        assert!(p.contains("Add to Google Wallet"));
        assert!(optin_page("/l/Ab3dE5gH1k").contains("method=\"post\""));
    }
}
