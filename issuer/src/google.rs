//! Google Wallet "Add to Google Wallet" links: a JWT signed RS256 with the issuer's service-account
//! key (`aud: google`, `typ: savetowallet`, `origins`, and the pass objects as `payload`), put
//! after `https://pay.google.com/gp/v/save/`. The callbacks and the REST client come later.

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::sign::Signer;
use serde_json::{Map, Value, json};

/// Prefix of a save link.
pub const SAVE_URL: &str = "https://pay.google.com/gp/v/save/";

#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    #[error("service account key: {0}")]
    Key(String),
    #[error("signing: {0}")]
    Signing(#[from] openssl::error::ErrorStack),
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

/// The loyalty object of a pass (`{issuer_id}.{serial}` of class `{issuer_id}.{class}`).
pub fn loyalty_object(
    issuer_id: &str,
    class: &str,
    serial: &str,
    attrs: &Map<String, Value>,
) -> Value {
    let s = |k: &str| attrs.get(k).and_then(Value::as_str).unwrap_or_default();
    let mut o = json!({
        "id": format!("{issuer_id}.{serial}"),
        "classId": format!("{issuer_id}.{class}"),
        "state": "ACTIVE",
        "accountId": s("customer"),
        "accountName": s("first_name"),
        "barcode": { "type": "QR_CODE", "value": s("customer") },
    });
    if let Some(p) = attrs.get("points").and_then(Value::as_i64) {
        o["loyaltyPoints"] = json!({ "label": "Points", "balance": { "int": p } });
    }
    o
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
