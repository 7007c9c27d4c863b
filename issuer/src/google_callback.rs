//! Google Wallet save/delete callbacks (`ECv2SigningOnly`), verified as Google's Tink
//! `PaymentMethodTokenRecipient` does:
//!
//! 1. the intermediate key `signedKey` is signed (ECDSA P-256, SHA-256) by one of the root keys
//!    over `LV("GooglePayPasses") ‖ LV("ECv2SigningOnly") ‖ LV(signedKey)`, and has not expired;
//! 2. the message is signed by the intermediate key over
//!    `LV("GooglePayPasses") ‖ LV(issuerId) ‖ LV("ECv2SigningOnly") ‖ LV(signedMessage)`;
//! 3. the message has not expired (`expTimeMillis`).
//!
//! `LV(x)` is x's length as 4 bytes little-endian followed by x. Root keys come from
//! configuration, in the JSON shape Google publishes at `https://pay.google.com/gp/m/issuer/keys`.
//! De-duplication on `nonce` is the caller's (it needs shared state).

use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Public};
use openssl::sign::Verifier;
use serde::Deserialize;

const SENDER: &str = "GooglePayPasses";
const PROTOCOL: &str = "ECv2SigningOnly";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CallbackError {
    #[error("malformed callback: {0}")]
    Malformed(String),
    #[error("protocolVersion {0:?} is not ECv2SigningOnly")]
    Protocol(String),
    #[error("no root key verifies the intermediate signing key")]
    IntermediateSignature,
    #[error("the intermediate signing key expired")]
    IntermediateExpired,
    #[error("the message signature does not verify")]
    MessageSignature,
    #[error("the message expired")]
    MessageExpired,
    #[error("the message is for issuer {0}, not ours")]
    WrongIssuer(String),
}

fn malformed(e: impl std::fmt::Display) -> CallbackError {
    CallbackError::Malformed(e.to_string())
}

/// Root keys (Google's key file format).
#[derive(Debug, Clone)]
pub struct RootKeys {
    keys: Vec<(PKey<Public>, Option<i64>)>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyFile {
    keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct KeyEntry {
    key_value: String,
    protocol_version: String,
    #[serde(default)]
    key_expiration: Option<String>,
}

fn public_key(b64: &str) -> Result<PKey<Public>, CallbackError> {
    let der = openssl::base64::decode_block(b64).map_err(malformed)?;
    PKey::public_key_from_der(&der).map_err(malformed)
}

impl RootKeys {
    /// Parses `{"keys": [{"keyValue", "protocolVersion", "keyExpiration"}]}`, keeping the
    /// `ECv2SigningOnly` keys.
    pub fn from_json(bytes: &[u8]) -> Result<RootKeys, CallbackError> {
        let f: KeyFile = serde_json::from_slice(bytes).map_err(malformed)?;
        let mut keys = Vec::new();
        for k in f
            .keys
            .into_iter()
            .filter(|k| k.protocol_version == PROTOCOL)
        {
            let exp = k
                .key_expiration
                .map(|e| e.parse::<i64>().map_err(malformed))
                .transpose()?;
            keys.push((public_key(&k.key_value)?, exp));
        }
        if keys.is_empty() {
            return Err(CallbackError::Malformed(
                "no ECv2SigningOnly root key in the key file".into(),
            ));
        }
        Ok(RootKeys { keys })
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Callback {
    signature: String,
    intermediate_signing_key: Intermediate,
    protocol_version: String,
    signed_message: String,
}

#[derive(Deserialize)]
struct Intermediate {
    #[serde(rename = "signedKey")]
    signed_key: String,
    signatures: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignedKey {
    key_value: String,
    key_expiration: String,
}

/// A verified callback.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallbackMessage {
    pub class_id: String,
    pub object_id: String,
    /// `save` or `del`.
    pub event_type: String,
    pub exp_time_millis: i64,
    #[serde(default)]
    pub count: Option<i64>,
    pub nonce: String,
}

/// `LV(x)` for each part, concatenated.
pub fn signed_data(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p.as_bytes());
    }
    out
}

fn verifies(key: &PKey<Public>, data: &[u8], sig_b64: &str) -> bool {
    let Ok(sig) = openssl::base64::decode_block(sig_b64) else {
        return false;
    };
    Verifier::new(MessageDigest::sha256(), key)
        .and_then(|mut v| {
            v.update(data)?;
            v.verify(&sig)
        })
        .unwrap_or(false)
}

/// Verifies `body` for `issuer_id` at time `now_ms`; the message if everything holds.
pub fn verify(
    body: &[u8],
    roots: &RootKeys,
    issuer_id: &str,
    now_ms: i64,
) -> Result<CallbackMessage, CallbackError> {
    let cb: Callback = serde_json::from_slice(body).map_err(malformed)?;
    if cb.protocol_version != PROTOCOL {
        return Err(CallbackError::Protocol(cb.protocol_version));
    }
    let key_data = signed_data(&[SENDER, PROTOCOL, &cb.intermediate_signing_key.signed_key]);
    let root_ok = roots
        .keys
        .iter()
        .filter(|(_, exp)| exp.is_none_or(|e| e > now_ms))
        .any(|(root, _)| {
            cb.intermediate_signing_key
                .signatures
                .iter()
                .any(|s| verifies(root, &key_data, s))
        });
    if !root_ok {
        return Err(CallbackError::IntermediateSignature);
    }
    let sk: SignedKey =
        serde_json::from_str(&cb.intermediate_signing_key.signed_key).map_err(malformed)?;
    let exp: i64 = sk.key_expiration.parse().map_err(malformed)?;
    if exp <= now_ms {
        return Err(CallbackError::IntermediateExpired);
    }
    let intermediate = public_key(&sk.key_value)?;
    let msg_data = signed_data(&[SENDER, issuer_id, PROTOCOL, &cb.signed_message]);
    if !verifies(&intermediate, &msg_data, &cb.signature) {
        return Err(CallbackError::MessageSignature);
    }
    let m: CallbackMessage = serde_json::from_str(&cb.signed_message).map_err(malformed)?;
    let class_issuer = m.class_id.split('.').next().unwrap_or_default();
    if class_issuer != issuer_id {
        return Err(CallbackError::WrongIssuer(class_issuer.into()));
    }
    if m.exp_time_millis <= now_ms {
        return Err(CallbackError::MessageExpired);
    }
    Ok(m)
}

/// Makes callbacks the way Google does, with a root and an intermediate key of its own: for
/// tests and for simulating Google saves and deletes locally (the keys are not Google's).
pub struct CallbackSigner {
    root: PKey<openssl::pkey::Private>,
    intermediate: PKey<openssl::pkey::Private>,
    /// Expiry of the intermediate key, epoch millis.
    pub intermediate_expires: i64,
}

impl std::fmt::Debug for CallbackSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackSigner").finish_non_exhaustive()
    }
}

fn p256() -> Result<PKey<openssl::pkey::Private>, openssl::error::ErrorStack> {
    let group = openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1)?;
    PKey::from_ec_key(openssl::ec::EcKey::generate(&group)?)
}

fn sign_b64(
    key: &PKey<openssl::pkey::Private>,
    data: &[u8],
) -> Result<String, openssl::error::ErrorStack> {
    let mut s = openssl::sign::Signer::new(MessageDigest::sha256(), key)?;
    s.update(data)?;
    Ok(openssl::base64::encode_block(&s.sign_to_vec()?))
}

impl CallbackSigner {
    pub fn new(intermediate_expires: i64) -> Result<Self, openssl::error::ErrorStack> {
        Ok(CallbackSigner {
            root: p256()?,
            intermediate: p256()?,
            intermediate_expires,
        })
    }

    /// The root key file (Google's format) that verifies this signer's callbacks.
    pub fn root_keys_json(&self) -> Result<String, openssl::error::ErrorStack> {
        let der = self.root.public_key_to_der()?;
        Ok(serde_json::json!({ "keys": [{
            "keyValue": openssl::base64::encode_block(&der),
            "protocolVersion": PROTOCOL,
        }]})
        .to_string())
    }

    /// A callback body carrying `message` (the `signedMessage` JSON text) for `issuer_id`.
    pub fn sign(
        &self,
        message: &str,
        issuer_id: &str,
    ) -> Result<String, openssl::error::ErrorStack> {
        let signed_key = serde_json::json!({
            "keyValue": openssl::base64::encode_block(&self.intermediate.public_key_to_der()?),
            "keyExpiration": self.intermediate_expires.to_string(),
        })
        .to_string();
        let key_sig = sign_b64(&self.root, &signed_data(&[SENDER, PROTOCOL, &signed_key]))?;
        let msg_sig = sign_b64(
            &self.intermediate,
            &signed_data(&[SENDER, issuer_id, PROTOCOL, message]),
        )?;
        Ok(serde_json::json!({
            "signature": msg_sig,
            "intermediateSigningKey": { "signedKey": signed_key, "signatures": [key_sig] },
            "protocolVersion": PROTOCOL,
            "signedMessage": message,
        })
        .to_string())
    }
}

/// The `signedMessage` of a save (`save`) or delete (`del`) of `object_id`.
pub fn message(class_id: &str, object_id: &str, event: &str, exp_ms: i64, nonce: &str) -> String {
    serde_json::json!({
        "classId": class_id, "objectId": object_id, "eventType": event,
        "expTimeMillis": exp_ms, "count": 1, "nonce": nonce,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISSUER: &str = "3388000000012345";
    const NOW: i64 = 1_790_000_000_000;

    fn setup() -> (CallbackSigner, RootKeys) {
        let s = CallbackSigner::new(NOW + 86_400_000).unwrap();
        let roots = RootKeys::from_json(s.root_keys_json().unwrap().as_bytes()).unwrap();
        (s, roots)
    }

    fn msg(exp: i64) -> String {
        message(
            &format!("{ISSUER}.loyalty"),
            &format!("{ISSUER}.abc123"),
            "save",
            exp,
            "n-1",
        )
    }

    #[test]
    fn a_callback_signed_under_the_root_is_accepted() {
        let (s, roots) = setup();
        let body = s.sign(&msg(NOW + 60_000), ISSUER).unwrap();
        let m = verify(body.as_bytes(), &roots, ISSUER, NOW).unwrap();
        assert_eq!(m.event_type, "save");
        assert_eq!(m.object_id, format!("{ISSUER}.abc123"));
        assert_eq!(m.nonce, "n-1");
    }

    #[test]
    fn tampered_expired_foreign_and_unrooted_callbacks_are_refused() {
        let (s, roots) = setup();
        let body = s.sign(&msg(NOW + 60_000), ISSUER).unwrap();
        let tampered = body.replace("save", "del");
        assert_eq!(
            verify(tampered.as_bytes(), &roots, ISSUER, NOW),
            Err(CallbackError::MessageSignature)
        );
        let late = s.sign(&msg(NOW - 1), ISSUER).unwrap();
        assert_eq!(
            verify(late.as_bytes(), &roots, ISSUER, NOW),
            Err(CallbackError::MessageExpired)
        );
        assert_eq!(
            verify(body.as_bytes(), &roots, ISSUER, NOW + 86_400_001),
            Err(CallbackError::IntermediateExpired)
        );
        // signed for another issuer id: the message signature binds the issuer
        assert_eq!(
            verify(body.as_bytes(), &roots, "999", NOW),
            Err(CallbackError::MessageSignature)
        );
        let (_, other_roots) = setup();
        assert_eq!(
            verify(body.as_bytes(), &other_roots, ISSUER, NOW),
            Err(CallbackError::IntermediateSignature)
        );
        assert!(matches!(
            verify(b"{}", &roots, ISSUER, NOW),
            Err(CallbackError::Malformed(_))
        ));
    }

    #[test]
    fn length_value_framing_is_little_endian() {
        assert_eq!(
            signed_data(&["ab", ""]),
            [2, 0, 0, 0, b'a', b'b', 0, 0, 0, 0]
        );
    }
}
