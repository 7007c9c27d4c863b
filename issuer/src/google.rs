//! Google Wallet "Add to Google Wallet" links: a JWT signed RS256 with the issuer's service-account
//! key (`aud: google`, `typ: savetowallet`, `origins`, and the pass object as `payload`), put
//! after `https://pay.google.com/gp/v/save/`; and the Google object of a pass, built from the
//! same rendered template as its Apple pass.json, so both wallets show the same barcode, texts
//! and validity.
//!
//! The Google type follows the template's Apple style ([`GoogleKind::for_style`]): `storeCard` →
//! loyalty object, `coupon` → offer object, `eventTicket` → event ticket object, `generic` →
//! generic object. `boardingPass` has none: Google splits boarding passes into flight and
//! transit objects that need airline or route data a template does not carry, so such a pass is
//! issued for Apple Wallet only ([`GoogleError::Unsupported`]).
//!
//! From the Apple pass: the barcode (same message, format and alternate text), every field as a
//! text module (label → header, value → body) in Apple's order unless the template sends it to
//! one of the type's own slots (`"google": "loyaltyPoints"`, `"seat"`, `"ticketHolderName"`, …;
//! [`GoogleKind::slots`]), and `expirationDate` as `validTimeInterval.end`. `relevantDate` (when
//! Apple shows the pass on the lock screen) is not validity and has no object field: an event's
//! time belongs on the Google class (`dateTime`). The callbacks and the REST client are in
//! [`crate::google_callback`] and [`crate::google_api`].

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use serde_json::{Map, Value, json};

use crate::template::{Template, attr_text};

/// Prefix of a save link.
pub const SAVE_URL: &str = "https://pay.google.com/gp/v/save/";

/// Language of the localised strings (templates carry one language).
const LANGUAGE: &str = "en";

#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    #[error("service account key: {0}")]
    Key(String),
    #[error("signing: {0}")]
    Signing(#[from] openssl::error::ErrorStack),
    #[error(
        "template \"{template}\": Apple style {style} has no Google Wallet object (Google splits boarding passes into flight and transit objects that need airline or route data a template does not carry); its passes are issued for Apple Wallet only"
    )]
    Unsupported { template: String, style: String },
    #[error("Google Wallet object of template \"{template}\": {reason}")]
    Invalid { template: String, reason: String },
}

/// The Google Wallet pass type of a template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoogleKind {
    Loyalty,
    Offer,
    EventTicket,
    Generic,
}

impl GoogleKind {
    /// The Google type of an Apple pass style; `None` for `boardingPass`.
    pub fn for_style(style: &str) -> Option<GoogleKind> {
        match style {
            "storeCard" => Some(GoogleKind::Loyalty),
            "coupon" => Some(GoogleKind::Offer),
            "eventTicket" => Some(GoogleKind::EventTicket),
            "generic" => Some(GoogleKind::Generic),
            _ => None,
        }
    }

    /// The key of the save JWT's `payload` that carries objects of this type.
    pub fn payload_key(self) -> &'static str {
        match self {
            GoogleKind::Loyalty => "loyaltyObjects",
            GoogleKind::Offer => "offerObjects",
            GoogleKind::EventTicket => "eventTicketObjects",
            GoogleKind::Generic => "genericObjects",
        }
    }

    /// The REST resource (`walletobjects/v1/{resource}/{objectId}`).
    pub fn resource(self) -> &'static str {
        match self {
            GoogleKind::Loyalty => "loyaltyObject",
            GoogleKind::Offer => "offerObject",
            GoogleKind::EventTicket => "eventTicketObject",
            GoogleKind::Generic => "genericObject",
        }
    }

    /// The type's own fields a template field may fill (its `"google"` key) instead of a text
    /// module. An offer object has none: its title and provider are on the offer class.
    pub fn slots(self) -> &'static [&'static str] {
        match self {
            GoogleKind::Loyalty => &[
                "accountId",
                "accountName",
                "loyaltyPoints",
                "secondaryLoyaltyPoints",
            ],
            GoogleKind::Offer => &[],
            GoogleKind::EventTicket => &[
                "ticketHolderName",
                "ticketNumber",
                "ticketType",
                "seat",
                "row",
                "section",
                "gate",
            ],
            GoogleKind::Generic => &["cardTitle", "header", "subheader"],
        }
    }
}

/// A pass's Google object and its type.
#[derive(Debug, Clone, PartialEq)]
pub struct GoogleObject {
    pub kind: GoogleKind,
    pub object: Value,
}

impl GoogleObject {
    /// The save JWT's `payload`: `{"<type>Objects": [object]}`.
    pub fn payload(&self) -> Value {
        let mut m = Map::new();
        m.insert(
            self.kind.payload_key().into(),
            Value::Array(vec![self.object.clone()]),
        );
        Value::Object(m)
    }
}

/// The class id suffix of `template`'s objects: its `googleClass`, else `loyalty_class` (the
/// configured class) for a loyalty template, else the template's name.
pub fn class_suffix<'a>(template: &'a Template, loyalty_class: &'a str) -> &'a str {
    match &template.spec.google_class {
        Some(c) => c,
        None if GoogleKind::for_style(&template.spec.style) == Some(GoogleKind::Loyalty) => {
            loyalty_class
        }
        None => &template.name,
    }
}

/// Google object ids and class ids: `issuer id` `.` suffix of `[A-Za-z0-9._-]`.
fn valid_suffix(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn localized(text: &str) -> Value {
    json!({ "defaultValue": { "language": LANGUAGE, "value": text } })
}

/// A loyalty balance: `int` for an integer, `double` for another number, `string` otherwise.
fn balance(v: &Value) -> Value {
    match v {
        Value::Number(n) if n.is_i64() => json!({ "int": n }),
        Value::Number(n) => json!({ "double": n }),
        other => json!({ "string": attr_text(other) }),
    }
}

/// Google's barcode type for an Apple barcode format.
fn barcode_type(format: &str) -> Option<&'static str> {
    Some(match format {
        "PKBarcodeFormatQR" => "QR_CODE",
        "PKBarcodeFormatPDF417" => "PDF_417",
        "PKBarcodeFormatAztec" => "AZTEC",
        "PKBarcodeFormatCode128" => "CODE_128",
        _ => return None,
    })
}

/// The Google object of pass `serial` of `template` (id `{issuer_id}.{serial}`, class
/// `{issuer_id}.{class}`), filled from `attrs` exactly as its Apple pass.json is.
pub fn pass_object(
    issuer_id: &str,
    class: &str,
    template: &Template,
    serial: &str,
    attrs: &Map<String, Value>,
) -> Result<GoogleObject, GoogleError> {
    let spec = &template.spec;
    let kind = GoogleKind::for_style(&spec.style).ok_or_else(|| GoogleError::Unsupported {
        template: template.name.clone(),
        style: spec.style.clone(),
    })?;
    let invalid = |reason: String| GoogleError::Invalid {
        template: template.name.clone(),
        reason,
    };
    for (what, s) in [("serial", serial), ("class", class)] {
        if !valid_suffix(s) {
            return Err(invalid(format!(
                "{what} \"{s}\" must be letters, digits, '.', '_' or '-' in a Google id"
            )));
        }
    }
    let apple = template.render(attrs).map_err(|e| invalid(e.to_string()))?;
    let text = |k: &str| apple.get(k).and_then(Value::as_str);
    let mut o = Map::new();
    o.insert("id".into(), json!(format!("{issuer_id}.{serial}")));
    o.insert("classId".into(), json!(format!("{issuer_id}.{class}")));
    o.insert("state".into(), json!("ACTIVE"));

    if let Some(b) = apple
        .get("barcodes")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
    {
        let format = b["format"].as_str().unwrap_or_default();
        let ty = barcode_type(format).ok_or_else(|| {
            invalid(format!(
                "barcode format \"{format}\" has no Google Wallet equivalent (use PKBarcodeFormatQR, PKBarcodeFormatPDF417, PKBarcodeFormatAztec or PKBarcodeFormatCode128)"
            ))
        })?;
        let mut g = Map::new();
        g.insert("type".into(), json!(ty));
        g.insert("value".into(), b["message"].clone());
        if let Some(alt) = b.get("altText") {
            g.insert("alternateText".into(), alt.clone());
        }
        o.insert("barcode".into(), Value::Object(g));
    }

    if let Some(end) = text("expirationDate") {
        if chrono::DateTime::parse_from_rfc3339(end).is_err() {
            return Err(invalid(format!(
                "expirationDate \"{end}\" is not an RFC 3339 date-time (e.g. 2026-12-31T23:59:59Z)"
            )));
        }
        o.insert(
            "validTimeInterval".into(),
            json!({ "end": { "date": end } }),
        );
    }

    let mut modules = Vec::new();
    let mut seat = Map::new();
    for group in crate::template::FIELD_GROUPS {
        for f in apple[&spec.style]
            .get(group)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let key = f["key"].as_str().unwrap_or_default();
            let label = f.get("label").and_then(Value::as_str);
            let value = &f["value"];
            match template.google_slot(key) {
                None => {
                    let mut m = Map::new();
                    m.insert("id".into(), json!(key));
                    if let Some(l) = label {
                        m.insert("header".into(), json!(l));
                    }
                    m.insert("body".into(), json!(attr_text(value)));
                    modules.push(Value::Object(m));
                }
                Some(slot @ ("loyaltyPoints" | "secondaryLoyaltyPoints")) => {
                    let mut p = Map::new();
                    if let Some(l) = label {
                        p.insert("label".into(), json!(l));
                    }
                    p.insert("balance".into(), balance(value));
                    o.insert(slot.into(), Value::Object(p));
                }
                Some(slot @ ("seat" | "row" | "section" | "gate")) => {
                    seat.insert(slot.into(), localized(&attr_text(value)));
                }
                Some(slot @ ("ticketType" | "cardTitle" | "header" | "subheader")) => {
                    o.insert(slot.into(), localized(&attr_text(value)));
                }
                Some(slot) => {
                    o.insert(slot.into(), json!(attr_text(value)));
                }
            }
        }
    }
    if !seat.is_empty() {
        o.insert("seatInfo".into(), Value::Object(seat));
    }
    if !modules.is_empty() {
        o.insert("textModulesData".into(), Value::Array(modules));
    }
    if kind == GoogleKind::Generic {
        // both are required on a generic object
        let title = text("logoText")
            .or(text("organizationName"))
            .unwrap_or_default();
        let header = text("description").unwrap_or_default();
        if !o.contains_key("cardTitle") {
            o.insert("cardTitle".into(), localized(title));
        }
        if !o.contains_key("header") {
            o.insert("header".into(), localized(header));
        }
    }
    Ok(GoogleObject {
        kind,
        object: Value::Object(o),
    })
}

/// The parts of a Google Cloud service-account key file that sign save links.
#[derive(Clone)]
pub struct ServiceAccount {
    pub client_email: String,
    pub private_key: PKey<Private>,
}

impl std::fmt::Debug for ServiceAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccount")
            .field("client_email", &self.client_email)
            .finish_non_exhaustive()
    }
}

impl ServiceAccount {
    /// From the JSON key file Google Cloud exports (`client_email`, `private_key` PEM).
    pub fn from_json(bytes: &[u8]) -> Result<Self, GoogleError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| GoogleError::Key(e.to_string()))?;
        let field = |k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| GoogleError::Key(format!("\"{k}\" is missing")))
        };
        let email = field("client_email")?.to_string();
        let key = PKey::private_key_from_pem(field("private_key")?.as_bytes())
            .map_err(|e| GoogleError::Key(format!("private_key: {e}")))?;
        if key.rsa().is_err() {
            return Err(GoogleError::Key(
                "private_key must be an RSA key (RS256)".into(),
            ));
        }
        Ok(ServiceAccount {
            client_email: email,
            private_key: key,
        })
    }
}

fn b64url(bytes: &[u8]) -> String {
    openssl::base64::encode_block(bytes)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// A signed save JWT carrying `objects` (e.g. `{"loyaltyObjects": [...]}`), issued at `iat`
/// (Unix seconds), usable from `origins`.
pub fn save_jwt(
    sa: &ServiceAccount,
    origins: &[String],
    objects: Value,
    iat: i64,
) -> Result<String, GoogleError> {
    let claims = json!({
        "iss": sa.client_email,
        "aud": "google",
        "typ": "savetowallet",
        "iat": iat,
        "origins": origins,
        "payload": objects,
    });
    sign_jwt(sa, &claims)
}

/// `claims` as a JWT signed RS256 with the service-account key.
pub fn sign_jwt(sa: &ServiceAccount, claims: &Value) -> Result<String, GoogleError> {
    let header = json!({ "alg": "RS256", "typ": "JWT" });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let mut signer = Signer::new(MessageDigest::sha256(), &sa.private_key)?;
    signer.update(signing_input.as_bytes())?;
    let sig = signer.sign_to_vec()?;
    Ok(format!("{signing_input}.{}", b64url(&sig)))
}

/// The "Add to Google Wallet" link for a signed JWT.
pub fn save_url(jwt: &str) -> String {
    format!("{SAVE_URL}{jwt}")
}
