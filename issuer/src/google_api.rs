//! The Google Wallet REST API, for what changes after a pass is saved: `PATCH
//! {base}/{resource}/{objectId}`, the resource being the pass's [`GoogleKind`] (`loyaltyObject`,
//! `offerObject`, `eventTicketObject` or `genericObject`), with an OAuth 2 access token obtained
//! from the service account (JWT bearer grant, scope `wallet_object.issuer`, cached until a
//! minute before it expires). Both URLs are configurable, so tests and staging use a local
//! server.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::google::{GoogleKind, ServiceAccount, sign_jwt};

pub const DEFAULT_BASE_URL: &str = "https://walletobjects.googleapis.com/walletobjects/v1";
pub const DEFAULT_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
const SCOPE: &str = "https://www.googleapis.com/auth/wallet_object.issuer";

/// What a PATCH did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PatchOutcome {
    Patched,
    /// Google has no such object: nobody saved the pass yet.
    NotSaved,
    Failed(String),
}

pub struct GoogleApi {
    http: reqwest::Client,
    base_url: String,
    token_url: String,
    sa: ServiceAccount,
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for GoogleApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GoogleApi")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl GoogleApi {
    pub fn new(sa: ServiceAccount, base_url: &str, token_url: &str) -> GoogleApi {
        GoogleApi {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("HTTP client"),
            base_url: base_url.trim_end_matches('/').into(),
            token_url: token_url.into(),
            sa,
            token: Mutex::new(None),
        }
    }

    async fn access_token(&self) -> Result<String, String> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(t.clone());
        }
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let assertion = sign_jwt(
            &self.sa,
            &json!({
                "iss": self.sa.client_email, "scope": SCOPE, "aud": self.token_url,
                "iat": iat, "exp": iat + 3600,
            }),
        )
        .map_err(|e| e.to_string())?;
        let r = self
            .http
            .post(&self.token_url)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| format!("token request: {e}"))?;
        if !r.status().is_success() {
            return Err(format!("token request: HTTP {}", r.status()));
        }
        let v: Value = r.json().await.map_err(|e| format!("token response: {e}"))?;
        let token = v["access_token"]
            .as_str()
            .ok_or("token response without access_token")?
            .to_string();
        let ttl = v["expires_in"].as_u64().unwrap_or(3600).saturating_sub(60);
        *cached = Some((token.clone(), Instant::now() + Duration::from_secs(ttl)));
        Ok(token)
    }

    /// Patches the object `object_id` of type `kind` with `body` (patch semantics: only the
    /// fields given change).
    pub async fn patch_object(
        &self,
        kind: GoogleKind,
        object_id: &str,
        body: &Value,
    ) -> PatchOutcome {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(e) => return PatchOutcome::Failed(e),
        };
        let url = format!("{}/{}/{object_id}", self.base_url, kind.resource());
        match self
            .http
            .patch(&url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => PatchOutcome::Patched,
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => PatchOutcome::NotSaved,
            Ok(r) => PatchOutcome::Failed(format!("HTTP {}", r.status())),
            Err(e) => PatchOutcome::Failed(e.to_string()),
        }
    }
}
