//! The issuer service: creates passes, signs them on demand, updates them and pushes the update
//! to every registered device, and turns what wallets tell us into lifecycle events. The HTTP
//! layer ([`crate::http`]) is a thin shell over this.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::sign::Signer;
use passpulse_engine::EventType;
use serde::Serialize;
use serde_json::{Map, Value};
use subtle::ConstantTimeEq;

use crate::google::{self, GoogleError, GoogleObject, ServiceAccount};
use crate::google_api::{GoogleApi, PatchOutcome};
use crate::google_callback::{self, CallbackError, RootKeys};
use crate::lifecycle::{Event, Lifecycle};
use crate::pkpass::{PassRequest, build_pkpass, new_auth_token, pass_json};
use crate::push::{PushOutcome, PushSender, fan_out};
use crate::rate_limit::RateLimiter;
use crate::registry::{PassRecord, Registration, Registry, RegistryError, valid_id};
use crate::{SigningIdentity, Template};

/// Google Wallet settings: the service account that signs save links and the issuer's ids.
#[derive(Debug, Clone)]
pub struct GoogleSettings {
    pub service_account: ServiceAccount,
    pub issuer_id: String,
    /// Class id suffix (`{issuer_id}.{class}`) of loyalty templates that name no
    /// `googleClass`; other templates default to their own name ([`google::class_suffix`]).
    pub class: String,
    pub origins: Vec<String>,
    /// Root keys that sign save/delete callbacks (Google's key file); without them callbacks
    /// are refused.
    pub root_keys: Option<RootKeys>,
    /// REST client for object updates; without it updates reach Google devices only when the
    /// pass is saved again.
    pub api: Option<Arc<GoogleApi>>,
}

/// Device id recorded for Google Wallet installs: Google tells us a pass was saved, not on which
/// device, so a pass has at most one Google "registration".
pub const GOOGLE_DEVICE: &str = "google-wallet";

/// What the issuer needs to run.
#[derive(Debug, Clone)]
pub struct IssuerConfig {
    /// Public base URL of this server (`https://passes.example.com`); the PassKit web service is
    /// at `<public_url>/wallet`, downloads at `<public_url>/passes/…`.
    pub public_url: String,
    pub pass_type_id: String,
    pub team_id: String,
    pub templates: BTreeMap<String, Template>,
    pub identity: SigningIdentity,
    /// Key of the download-link signatures (HMAC-SHA256).
    pub link_key: Vec<u8>,
    /// How long a download link stays valid.
    pub link_ttl: Duration,
    /// Pushes in flight at once during a fan-out.
    pub push_concurrency: usize,
    pub google: Option<GoogleSettings>,
    /// What one holder of a pass may make the PassKit web service do.
    pub wallet_limits: WalletLimits,
}

/// Limits of the PassKit web service. A pass's authentication token is inside its `.pkpass`,
/// so anyone holding the file can call the service as that pass: these bound what they can make
/// us store and log.
#[derive(Debug, Clone)]
pub struct WalletLimits {
    /// Apple devices registered for one pass at once; a new device beyond is refused (403)
    /// until one unregisters. Re-registering a device already registered is always allowed.
    pub max_devices_per_pass: usize,
    /// Registration requests per pass per minute, in bursts of up to as many; beyond, 429 with
    /// `Retry-After`. 0: unlimited.
    pub registrations_per_minute: u32,
    /// Device log messages written to the server log per minute, all devices together; the
    /// rest are counted in one line. 0: unlimited.
    pub log_messages_per_minute: u32,
}

impl Default for WalletLimits {
    fn default() -> Self {
        WalletLimits {
            // an iPhone and an Apple Watch, a second phone, a family's devices: a handful
            max_devices_per_pass: 10,
            registrations_per_minute: 10,
            log_messages_per_minute: 120,
        }
    }
}

/// Most messages of one `POST /wallet/v1/log` request that are logged, and their most
/// characters each.
pub const LOG_MESSAGES_PER_REQUEST: usize = 20;
pub const LOG_MESSAGE_CHARS: usize = 512;

impl IssuerConfig {
    /// Settings around a development signing chain (not trusted by Apple devices) and a random
    /// link key, with a week's download links, 256 pushes in flight and no Google Wallet: what
    /// benchmarks and tests start from.
    pub fn development(
        public_url: &str,
        pass_type_id: &str,
        team_id: &str,
        templates: BTreeMap<String, Template>,
    ) -> Result<IssuerConfig, crate::certs::CertError> {
        let mut link_key = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut link_key);
        Ok(IssuerConfig {
            public_url: public_url.into(),
            pass_type_id: pass_type_id.into(),
            team_id: team_id.into(),
            templates,
            identity: crate::certs::dev_chain(pass_type_id, team_id)?.identity,
            link_key,
            link_ttl: Duration::from_secs(7 * 86_400),
            push_concurrency: 256,
            google: None,
            wallet_limits: WalletLimits::default(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("{0}")]
    BadRequest(String),
    #[error("pass {0} not found")]
    NotFound(String),
    #[error("not authorized")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    /// Over a rate limit: retry after that many seconds.
    #[error("{0}")]
    TooManyRequests(String, u64),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
    /// A stored record cannot be read: retrying cannot mend it.
    #[error("{0}")]
    Corrupt(String),
}

impl From<crate::lifecycle::EmitError> for IssueError {
    fn from(e: crate::lifecycle::EmitError) -> Self {
        if e.is_transient() {
            IssueError::Unavailable(e.to_string())
        } else {
            IssueError::Internal(e.to_string())
        }
    }
}

impl From<RegistryError> for IssueError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::NotFound(s) => IssueError::NotFound(s),
            RegistryError::Store(s) => IssueError::Unavailable(s),
            RegistryError::Corrupt { .. } => IssueError::Corrupt(e.to_string()),
            other => IssueError::Internal(other.to_string()),
        }
    }
}

/// A request to issue a pass.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPass {
    /// Programme = template name.
    pub program: String,
    pub customer: String,
    #[serde(default)]
    pub attributes: Map<String, Value>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub campaign: Option<String>,
}

/// What issuing returns.
#[derive(Debug, Clone, Serialize)]
pub struct Issued {
    pub serial: String,
    pub program: String,
    pub customer: String,
    pub download_url: String,
    pub download_expires: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub google_save_url: Option<String>,
}

/// What an update did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateReport {
    pub serial: String,
    pub update_tag: i64,
    pub devices: usize,
    pub pushed: usize,
    pub failed: usize,
    pub gone: usize,
    /// What the Google Wallet REST API said (`patched`, `not saved`, the error), if the pass is
    /// saved in Google Wallet and the API is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub google: Option<String>,
}

/// The issuer; cheap to clone.
#[derive(Clone, Debug)]
pub struct Issuer {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    cfg: IssuerConfig,
    registry: Registry,
    bus: Lifecycle,
    push: Arc<dyn PushSender>,
    registrations: RateLimiter,
    device_log: RateLimiter,
    /// Held while a new device registration is checked against the cap and stored, so that
    /// concurrent registrations cannot overshoot it.
    new_registration: tokio::sync::Mutex<()>,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A new serial: 20 characters of `[a-z0-9]` (≈103 bits), safe in URLs and NATS keys.
fn new_serial() -> String {
    random_text(b"abcdefghijklmnopqrstuvwxyz0123456789", 20)
}

/// `len` characters of `alphabet` from the operating system's random source.
pub(crate) fn random_text(alphabet: &[u8], len: usize) -> String {
    use rand::Rng;
    let mut rng = rand::rngs::OsRng;
    (0..len)
        .map(|_| alphabet[rng.gen_range(0..alphabet.len())] as char)
        .collect()
}

/// Constant-time equality (length is not secret).
pub fn same_secret(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// Most attributes a pass may carry, and their largest JSON size: a pass is a card, not a
/// document store (and a registry value must fit in one NATS message).
pub const MAX_ATTRIBUTES: usize = 64;
pub const MAX_ATTRIBUTES_BYTES: usize = 16 * 1024;

fn check_attributes(a: &Map<String, Value>) -> Result<(), IssueError> {
    let bytes = serde_json::to_vec(a).map_or(usize::MAX, |v| v.len());
    if a.len() > MAX_ATTRIBUTES || bytes > MAX_ATTRIBUTES_BYTES {
        return Err(IssueError::BadRequest(format!(
            "attributes: at most {MAX_ATTRIBUTES} keys and {MAX_ATTRIBUTES_BYTES} bytes of JSON (got {} keys, {bytes} bytes)",
            a.len()
        )));
    }
    Ok(())
}

fn short(s: &str, what: &str) -> Result<(), IssueError> {
    if s.is_empty() || s.chars().count() > 128 {
        return Err(IssueError::BadRequest(format!(
            "{what} must be 1–128 characters"
        )));
    }
    Ok(())
}

impl Issuer {
    pub fn new(
        cfg: IssuerConfig,
        registry: Registry,
        bus: Lifecycle,
        push: Arc<dyn PushSender>,
    ) -> Issuer {
        let limits = &cfg.wallet_limits;
        let registrations = RateLimiter::new(limits.registrations_per_minute);
        let device_log = RateLimiter::new(limits.log_messages_per_minute);
        Issuer {
            inner: Arc::new(Inner {
                cfg,
                registry,
                bus,
                push,
                registrations,
                device_log,
                new_registration: tokio::sync::Mutex::new(()),
            }),
        }
    }

    pub fn config(&self) -> &IssuerConfig {
        &self.inner.cfg
    }

    pub fn registry(&self) -> &Registry {
        &self.inner.registry
    }

    fn template(&self, program: &str) -> Result<&Template, IssueError> {
        self.inner.cfg.templates.get(program).ok_or_else(|| {
            IssueError::BadRequest(format!(
                "unknown program {program:?}; known: {}",
                self.inner
                    .cfg
                    .templates
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }

    /// The attributes a template is filled from: the stored ones plus `customer` and `serial`.
    fn fill_attrs(p: &PassRecord) -> Map<String, Value> {
        let mut a = p.attributes.clone();
        a.entry("customer")
            .or_insert_with(|| Value::String(p.customer.clone()));
        a.insert("serial".into(), Value::String(p.serial.clone()));
        a
    }

    fn pass_request<'a>(&'a self, p: &PassRecord) -> Result<PassRequest<'a>, IssueError> {
        let cfg = &self.inner.cfg;
        Ok(PassRequest {
            template: self.template(&p.program)?,
            serial: p.serial.clone(),
            pass_type_id: cfg.pass_type_id.clone(),
            team_id: cfg.team_id.clone(),
            web_service_url: Some(format!("{}/wallet", cfg.public_url.trim_end_matches('/'))),
            auth_token: Some(p.auth_token.clone()),
            attrs: Self::fill_attrs(p),
        })
    }

    /// Refuses a pass Wallet would refuse (renders and validates pass.json, and the Google
    /// object when Google Wallet is configured; signs nothing).
    fn check(&self, p: &PassRecord) -> Result<(), IssueError> {
        pass_json(&self.pass_request(p)?).map_err(|e| IssueError::BadRequest(e.to_string()))?;
        match self.google_object(p) {
            Some(Err(e @ GoogleError::Invalid { .. })) => {
                Err(IssueError::BadRequest(e.to_string()))
            }
            _ => Ok(()),
        }
    }

    /// The Google Wallet object of `p`, if Google Wallet is configured: its template's type,
    /// filled like its Apple pass.
    fn google_object(&self, p: &PassRecord) -> Option<Result<GoogleObject, GoogleError>> {
        let g = self.inner.cfg.google.as_ref()?;
        let template = self.inner.cfg.templates.get(&p.program)?;
        Some(google::pass_object(
            &g.issuer_id,
            google::class_suffix(template, &g.class),
            template,
            &p.serial,
            &Self::fill_attrs(p),
        ))
    }

    /// The signed .pkpass of a stored pass, as it is now.
    pub fn pkpass(&self, p: &PassRecord) -> Result<Vec<u8>, IssueError> {
        build_pkpass(&self.pass_request(p)?, &self.inner.cfg.identity)
            .map_err(|e| IssueError::BadRequest(e.to_string()))
    }

    fn link_sig(&self, serial: &str, expires: i64) -> String {
        let mac = self.mac(format!("{serial}\n{expires}").as_bytes());
        mac.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn mac(&self, msg: &[u8]) -> Vec<u8> {
        let key = PKey::hmac(&self.inner.cfg.link_key).expect("HMAC key");
        let mut s = Signer::new(MessageDigest::sha256(), &key).expect("HMAC signer");
        s.update(msg).expect("HMAC update");
        s.sign_to_vec().expect("HMAC")
    }

    /// `len` characters of `alphabet` derived from `parts` with the server's secret key: the same
    /// parts give the same text (so a retried automation step finds what it made the first
    /// time), and nobody without the key can guess it. `purpose` separates the uses.
    pub fn derive(&self, purpose: &str, parts: &[&str], alphabet: &[u8], len: usize) -> String {
        let mut msg = purpose.as_bytes().to_vec();
        for p in parts {
            msg.push(0);
            msg.extend_from_slice(p.as_bytes());
        }
        let mac = self.mac(&msg);
        // 256 bits of MAC, read as a big number in base `alphabet.len()`
        let mut digits = mac;
        let base = alphabet.len() as u32;
        let mut out = String::with_capacity(len);
        for _ in 0..len {
            let mut rem = 0u32;
            for d in digits.iter_mut() {
                let cur = (rem << 8) | *d as u32;
                *d = (cur / base) as u8;
                rem = cur % base;
            }
            out.push(alphabet[rem as usize] as char);
        }
        out
    }

    /// A download link for `serial`, valid for the configured time: `(url, expires unix s)`.
    pub fn download_url(&self, serial: &str) -> (String, i64) {
        let cfg = &self.inner.cfg;
        let expires = now_ms() / 1000 + cfg.link_ttl.as_secs() as i64;
        let sig = self.link_sig(serial, expires);
        (
            format!(
                "{}/passes/{serial}.pkpass?expires={expires}&sig={sig}",
                cfg.public_url.trim_end_matches('/')
            ),
            expires,
        )
    }

    /// Checks a download link's signature and expiry.
    pub fn check_download(&self, serial: &str, expires: i64, sig: &str) -> bool {
        expires >= now_ms() / 1000 && same_secret(&self.link_sig(serial, expires), sig)
    }

    /// A Google Wallet save URL for `p`, if Google Wallet is configured and its template has a
    /// Google type (a boarding pass has none: it is for Apple Wallet only).
    pub fn google_url(&self, p: &PassRecord) -> Result<Option<String>, IssueError> {
        let Some(g) = &self.inner.cfg.google else {
            return Ok(None);
        };
        let object = match self.google_object(p) {
            None => return Ok(None),
            Some(Ok(o)) => o,
            Some(Err(e @ GoogleError::Unsupported { .. })) => {
                tracing::warn!(pass = %p.serial, "no Google Wallet save link: {e}");
                return Ok(None);
            }
            Some(Err(e)) => return Err(IssueError::BadRequest(e.to_string())),
        };
        let jwt = google::save_jwt(
            &g.service_account,
            &g.origins,
            object.payload(),
            now_ms() / 1000,
        )
        .map_err(|e| IssueError::Internal(e.to_string()))?;
        Ok(Some(google::save_url(&jwt)))
    }

    /// Issues a pass: validates it by building it, stores it, emits `pass.issued`.
    pub async fn issue(&self, req: NewPass) -> Result<Issued, IssueError> {
        Ok(self.issue_as(new_serial(), req).await?.0)
    }

    /// Issues a pass with serial `serial`. If that serial exists already (a retried automation
    /// step), nothing is stored and the existing pass is returned with `false`.
    pub async fn issue_as(
        &self,
        serial: String,
        req: NewPass,
    ) -> Result<(Issued, bool), IssueError> {
        if !valid_id(&serial) {
            return Err(IssueError::BadRequest(format!(
                "serial \"{serial}\" is not 1–128 of A-Z a-z 0-9 _ -"
            )));
        }
        short(&req.customer, "customer")?;
        for (v, what) in [(&req.source, "source"), (&req.campaign, "campaign")] {
            if let Some(v) = v {
                short(v, what)?;
            }
        }
        self.template(&req.program)?;
        check_attributes(&req.attributes)?;
        let now = now_ms();
        let p = PassRecord {
            serial,
            program: req.program,
            customer: req.customer,
            attributes: req.attributes,
            auth_token: new_auth_token(),
            update_tag: now,
            created_at: now,
            source: req.source,
            campaign: req.campaign,
        };
        self.check(&p)?; // a pass Apple would refuse is refused here, before it is stored
        let (p, created) = match self.inner.registry.create_pass(&p).await {
            Ok(()) => (p, true),
            // another instance, or an earlier attempt, stored it first
            Err(RegistryError::Exists(_)) => (self.pass(&p.serial)?, false),
            Err(e) => return Err(e.into()),
        };
        // emitted again for an existing pass: an attempt that stored the pass may have failed
        // before its event reached the bus (same id, so it is counted once)
        let e = Event::new(
            EventType::PassIssued,
            format!("issued-{}", p.serial),
            p.created_at,
        )
        .with("pass", Some(&p.serial))
        .with("program", Some(&p.program))
        .with("customer", Some(&p.customer))
        .with("source", p.source.as_deref())
        .with("campaign", p.campaign.as_deref());
        self.inner.bus.emit(&e).await.map_err(IssueError::from)?;
        Ok((self.issued(&p)?, created))
    }

    /// What issuing `p` returns: fresh download and save links.
    fn issued(&self, p: &PassRecord) -> Result<Issued, IssueError> {
        let (download_url, download_expires) = self.download_url(&p.serial);
        Ok(Issued {
            serial: p.serial.clone(),
            program: p.program.clone(),
            customer: p.customer.clone(),
            download_url,
            download_expires,
            google_save_url: self.google_url(p)?,
        })
    }

    pub fn pass(&self, serial: &str) -> Result<PassRecord, IssueError> {
        self.inner
            .registry
            .pass(serial)
            .ok_or_else(|| IssueError::NotFound(serial.into()))
    }

    /// Merges `attributes` into the pass (a `null` removes one), bumps its update tag, emits
    /// `pass.updated` and pushes to every registered Apple device.
    pub async fn update(
        &self,
        serial: &str,
        attributes: Map<String, Value>,
    ) -> Result<UpdateReport, IssueError> {
        let before = self.pass(serial)?;
        let mut candidate = before.clone();
        merge(&mut candidate.attributes, &attributes);
        check_attributes(&candidate.attributes)?;
        self.check(&candidate)?; // refuse an update that would make an invalid pass
        let now = now_ms();
        let p = self
            .inner
            .registry
            .update_pass(serial, |p| {
                merge(&mut p.attributes, &attributes);
                // a new whole second, so `Last-Modified` (seconds) tells versions apart
                p.update_tag = now.max((p.update_tag / 1000 + 1) * 1000);
            })
            .await?;
        let e = Event::new(
            EventType::PassUpdated,
            format!("updated-{serial}-{}", p.update_tag),
            now,
        )
        .with("pass", Some(serial))
        .with("program", Some(&p.program))
        .with("customer", Some(&p.customer));
        self.inner.bus.emit(&e).await.map_err(IssueError::from)?;
        let mut report = self.push_update(&p).await;
        report.update_tag = p.update_tag;
        report.google = self.patch_google(&p).await;
        Ok(report)
    }

    /// Sends the new content of `p` to the Google Wallet REST API if the pass is saved there.
    async fn patch_google(&self, p: &PassRecord) -> Option<String> {
        let g = self.inner.cfg.google.as_ref()?;
        let api = g.api.as_ref()?;
        self.inner.registry.registration(&p.serial, GOOGLE_DEVICE)?;
        // the update was checked like the pass, so the object builds; if the template changed
        // since, the failure is reported like any other
        let outcome = match self.google_object(p)? {
            Ok(o) => {
                let id = format!("{}.{}", g.issuer_id, p.serial);
                api.patch_object(o.kind, &id, &o.object).await
            }
            Err(e) => PatchOutcome::Failed(e.to_string()),
        };
        let now = now_ms();
        let id = format!("{}-{GOOGLE_DEVICE}-{}", p.serial, p.update_tag);
        let (kind, prefix, reason) = match &outcome {
            PatchOutcome::Patched => (EventType::PushSent, "push", None),
            PatchOutcome::NotSaved => (EventType::PushFailed, "pushfail", Some("not-saved")),
            PatchOutcome::Failed(e) => (EventType::PushFailed, "pushfail", Some(e.as_str())),
        };
        let e = device_event(kind, format!("{prefix}-{id}"), p, GOOGLE_DEVICE, now)
            .with("result", reason);
        self.inner.bus.emit_logged(&e).await;
        Some(match outcome {
            PatchOutcome::Patched => "patched".into(),
            PatchOutcome::NotSaved => "not saved".into(),
            PatchOutcome::Failed(e) => e,
        })
    }

    /// A Google Wallet save/delete callback: verified, de-duplicated on its nonce, recorded as a
    /// registration of [`GOOGLE_DEVICE`] and as `pass.installed` / `pass.uninstalled`. Returns
    /// what was done.
    pub async fn google_callback(&self, body: &[u8]) -> Result<&'static str, IssueError> {
        let g = self
            .inner
            .cfg
            .google
            .as_ref()
            .ok_or_else(|| IssueError::NotFound("Google Wallet is not configured".into()))?;
        let roots = g.root_keys.as_ref().ok_or_else(|| {
            IssueError::NotFound("Google callback root keys are not configured".into())
        })?;
        let now = now_ms();
        let m = google_callback::verify(body, roots, &g.issuer_id, now).map_err(|e| match e {
            CallbackError::Malformed(_) => IssueError::BadRequest(e.to_string()),
            other => {
                tracing::warn!(error = %other, "Google callback refused");
                IssueError::Unauthorized
            }
        })?;
        let kind = match m.event_type.as_str() {
            "save" => EventType::PassInstalled,
            "del" => EventType::PassUninstalled,
            other => {
                return Err(IssueError::BadRequest(format!(
                    "eventType {other:?} is neither save nor del"
                )));
            }
        };
        let Some(p) = m
            .object_id
            .strip_prefix(&format!("{}.", g.issuer_id))
            .and_then(|serial| self.inner.registry.pass(serial))
        else {
            tracing::warn!(object = ?m.object_id, "Google callback for an object we did not issue");
            return Ok("unknown object");
        };
        // objects of every Google type share one id space per issuer, so the object id alone
        // names the pass; a class other than the one we issue in is worth a look, not a refusal
        if let Some(Ok(o)) = self.google_object(&p)
            && o.object["classId"] != m.class_id.as_str()
        {
            tracing::warn!(object = ?m.object_id, class = ?m.class_id, expected = %o.object["classId"],
                "Google callback names another class than the pass's template");
        }
        if !self.inner.registry.first_nonce(&m.nonce).await? {
            return Ok("duplicate");
        }
        if kind == EventType::PassInstalled {
            self.inner
                .registry
                .register(&Registration {
                    device: GOOGLE_DEVICE.into(),
                    serial: p.serial.clone(),
                    push_token: String::new(),
                    platform: "google".into(),
                    registered_at: now,
                })
                .await?;
        } else {
            self.inner
                .registry
                .unregister(&p.serial, GOOGLE_DEVICE)
                .await?;
        }
        // the nonce names the callback: a retry the nonce store missed is still one event
        let e = wallet_event(kind, &p, GOOGLE_DEVICE, now).with_id(google_event_id(&m.nonce));
        self.inner.bus.emit(&e).await.map_err(IssueError::from)?;
        Ok(if kind == EventType::PassInstalled {
            "saved"
        } else {
            "deleted"
        })
    }

    /// Pushes the update of `p` to its Apple devices and records each outcome on the bus.
    pub async fn push_update(&self, p: &PassRecord) -> UpdateReport {
        let regs = self.inner.registry.registrations(&p.serial);
        let targets: Vec<(Registration, String)> = regs
            .into_iter()
            .filter(|r| r.platform == "apple")
            .map(|r| {
                let t = r.push_token.clone();
                (r, t)
            })
            .collect();
        let mut report = UpdateReport {
            serial: p.serial.clone(),
            devices: targets.len(),
            ..Default::default()
        };
        let outcomes = fan_out(
            self.inner.push.as_ref(),
            &self.inner.cfg.pass_type_id,
            targets,
            self.inner.cfg.push_concurrency,
        )
        .await;
        let now = now_ms();
        for (r, outcome) in outcomes {
            let id = format!("{}-{}-{}", p.serial, r.device, p.update_tag);
            let base = |kind: EventType, prefix: &str| {
                device_event(kind, format!("{prefix}-{id}"), p, &r.device, now)
            };
            match outcome {
                PushOutcome::Sent => {
                    report.pushed += 1;
                    self.inner
                        .bus
                        .emit_logged(&base(EventType::PushSent, "push"))
                        .await;
                }
                PushOutcome::Failed { reason } => {
                    report.failed += 1;
                    let e = base(EventType::PushFailed, "pushfail").with("result", Some(&reason));
                    self.inner.bus.emit_logged(&e).await;
                }
                PushOutcome::Gone { timestamp } => {
                    // Apple: drop the registration only if it is older than the 410's timestamp
                    // (a device may have re-registered since the token became invalid)
                    let stale = timestamp.is_none_or(|t| r.registered_at < t);
                    if stale {
                        report.gone += 1;
                        if let Err(e) = self.inner.registry.unregister(&r.serial, &r.device).await {
                            tracing::warn!(error = %e, "dropping a gone registration");
                        }
                        let e = base(EventType::DeviceGone, "gone");
                        self.inner.bus.emit_logged(&e).await;
                    } else {
                        report.failed += 1;
                        let e = base(EventType::PushFailed, "pushfail")
                            .with("result", Some("unregistered-before-registration"));
                        self.inner.bus.emit_logged(&e).await;
                    }
                }
            }
        }
        report
    }

    /// Checks an `ApplePass` token against the pass's, in constant time.
    pub fn authorize(&self, serial: &str, token: &str) -> Result<PassRecord, IssueError> {
        let p = self
            .inner
            .registry
            .pass(serial)
            .ok_or(IssueError::Unauthorized)?;
        if same_secret(&p.auth_token, token) {
            Ok(p)
        } else {
            Err(IssueError::Unauthorized)
        }
    }

    /// PassKit register; true if new. Emits `pass.installed` for a new registration.
    pub async fn register(
        &self,
        device: &str,
        serial: &str,
        token: &str,
        push_token: &str,
    ) -> Result<bool, IssueError> {
        let p = self.authorize(serial, token)?;
        if !valid_id(device) {
            return Err(IssueError::BadRequest(
                "deviceLibraryIdentifier must be 1–128 of [A-Za-z0-9_-]".into(),
            ));
        }
        if !valid_push_token(push_token) {
            return Err(IssueError::BadRequest(format!(
                "pushToken must be an APNs device token: 64 to {MAX_PUSH_TOKEN_CHARS} hex digits"
            )));
        }
        let limits = &self.inner.cfg.wallet_limits;
        self.inner.registrations.take(serial).map_err(|wait| {
            IssueError::TooManyRequests(
                format!(
                    "too many registrations for this pass (at most {} a minute); retry in {wait} s",
                    limits.registrations_per_minute
                ),
                wait,
            )
        })?;
        let one_at_a_time = self.inner.new_registration.lock().await;
        let regs = self.inner.registry.registrations(serial);
        let known = regs.iter().any(|r| r.device == device);
        let devices = regs.iter().filter(|r| r.platform == "apple").count();
        if !known && devices >= limits.max_devices_per_pass {
            tracing::warn!(
                pass = serial,
                devices,
                "device registration refused: the pass has the most devices allowed"
            );
            return Err(IssueError::Forbidden(format!(
                "this pass is registered on {devices} devices, the most allowed; unregister one first"
            )));
        }
        let now = now_ms();
        let new = self
            .inner
            .registry
            .register(&Registration {
                device: device.into(),
                serial: serial.into(),
                push_token: push_token.into(),
                platform: "apple".into(),
                registered_at: now,
            })
            .await?;
        drop(one_at_a_time);
        if new {
            let e = wallet_event(EventType::PassInstalled, &p, device, now)
                .with("source", p.source.as_deref());
            self.inner.bus.emit_logged(&e).await;
        }
        Ok(new)
    }

    /// Apple's `log` endpoint: writes what devices report into the server log, each message
    /// escaped (a line break or a terminal escape in it cannot forge or hide a log line) and cut
    /// to [`LOG_MESSAGE_CHARS`], at most [`LOG_MESSAGES_PER_REQUEST`] per request and
    /// `log_messages_per_minute` in all; the rest are counted, not written.
    pub fn device_log(&self, messages: &[String]) {
        let mut skipped = messages.len().saturating_sub(LOG_MESSAGES_PER_REQUEST);
        for m in messages.iter().take(LOG_MESSAGES_PER_REQUEST) {
            if self.inner.device_log.take("log").is_err() {
                skipped += 1;
                continue;
            }
            tracing::info!(text = %log_text(m), "wallet device log");
        }
        if skipped > 0 {
            tracing::info!(
                skipped,
                "wallet device log: messages over the limits not written"
            );
        }
    }

    /// PassKit unregister. Emits `pass.uninstalled` if there was a registration.
    pub async fn unregister(
        &self,
        device: &str,
        serial: &str,
        token: &str,
    ) -> Result<(), IssueError> {
        let p = self.authorize(serial, token)?;
        if valid_id(device) && self.inner.registry.unregister(serial, device).await? {
            let e = wallet_event(EventType::PassUninstalled, &p, device, now_ms());
            self.inner.bus.emit_logged(&e).await;
        }
        Ok(())
    }

    /// The latest version of an authorized pass, and emits `pass.fetched`. The request carries
    /// no device id: the event names the registered device when exactly one is registered,
    /// `unknown` otherwise.
    pub async fn fetch(&self, p: &PassRecord) -> Result<Vec<u8>, IssueError> {
        let bytes = self.pkpass(p)?;
        let regs = self.inner.registry.registrations(&p.serial);
        let device = match regs.as_slice() {
            [one] => one.device.clone(),
            _ => "unknown".into(),
        };
        let now = now_ms();
        let id = format!("fetched-{}-{}-{now}", p.serial, p.update_tag);
        let e = device_event(EventType::PassFetched, id, p, &device, now);
        self.inner.bus.emit_logged(&e).await;
        Ok(bytes)
    }
}

/// Longest APNs device token accepted. Tokens are 32 bytes (64 hex digits) today; Apple says not
/// to rely on their length, so somewhat longer ones are accepted too.
pub const MAX_PUSH_TOKEN_CHARS: usize = 200;

/// An APNs device token: hex digits, an even number of them, 64 to [`MAX_PUSH_TOKEN_CHARS`]. It
/// goes into the path of the push request, so nothing else may pass.
fn valid_push_token(t: &str) -> bool {
    (64..=MAX_PUSH_TOKEN_CHARS).contains(&t.len())
        && t.len().is_multiple_of(2)
        && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A device's log message as it is written to the server log: cut to [`LOG_MESSAGE_CHARS`] and
/// quoted with every control character escaped.
fn log_text(m: &str) -> String {
    let mut cut: String = m.chars().take(LOG_MESSAGE_CHARS).collect();
    if cut.len() < m.len() {
        cut.push('…');
    }
    format!("{cut:?}")
}

/// The event id of a Google callback: named by its nonce (a retry the nonce store missed is
/// still one event), hashed when the nonce is not a short plain token, so the id is always a
/// valid v1 id whatever Google (or a forger with a key) sends.
fn google_event_id(nonce: &str) -> String {
    if valid_id(nonce) && nonce.len() <= 64 {
        format!("google-{nonce}")
    } else {
        let d = openssl::sha::sha256(nonce.as_bytes());
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        format!("google-h-{hex}")
    }
}

/// An event about `p` on `device` (the platform follows from the device: [`GOOGLE_DEVICE`] is
/// Google Wallet, any other an Apple device).
fn device_event(kind: EventType, id: String, p: &PassRecord, device: &str, now: i64) -> Event {
    let platform = if device == GOOGLE_DEVICE {
        "google"
    } else {
        "apple"
    };
    Event::new(kind, id, now)
        .with("pass", Some(&p.serial))
        .with("device", Some(device))
        .with("platform", Some(platform))
        .with("program", Some(&p.program))
}

/// A wallet's install/uninstall of `p`; the id names what happened and when.
fn wallet_event(kind: EventType, p: &PassRecord, device: &str, now: i64) -> Event {
    let id = format!("{}-{}-{device}-{now}", kind.as_str(), p.serial);
    device_event(kind, id, p, device, now).with("customer", Some(&p.customer))
}

/// Merges `changes` into `attrs`; a `null` value removes the attribute.
fn merge(attrs: &mut Map<String, Value>, changes: &Map<String, Value>) {
    for (k, v) in changes {
        if v.is_null() {
            attrs.remove(k);
        } else {
            attrs.insert(k.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_random_and_key_safe() {
        let a = new_serial();
        assert_eq!(a.len(), 20);
        assert!(valid_id(&a));
        assert_ne!(a, new_serial());
    }

    #[test]
    fn merge_sets_and_removes() {
        let mut a: Map<String, Value> =
            serde_json::from_str(r#"{"points":1,"tier":"gold"}"#).unwrap();
        let c: Map<String, Value> = serde_json::from_str(r#"{"points":5,"tier":null}"#).unwrap();
        merge(&mut a, &c);
        assert_eq!(Value::Object(a), serde_json::json!({"points":5}));
    }

    #[test]
    fn oversized_attributes_are_refused() {
        let mut a = Map::new();
        for i in 0..=MAX_ATTRIBUTES {
            a.insert(format!("k{i}"), Value::from(i));
        }
        assert!(matches!(
            check_attributes(&a),
            Err(IssueError::BadRequest(_))
        ));
        let mut b = Map::new();
        b.insert("note".into(), Value::from("x".repeat(MAX_ATTRIBUTES_BYTES)));
        assert!(matches!(
            check_attributes(&b),
            Err(IssueError::BadRequest(_))
        ));
        b.insert("note".into(), Value::from("fits"));
        assert!(check_attributes(&b).is_ok());
    }

    #[test]
    fn push_tokens_are_apns_device_tokens() {
        assert!(valid_push_token(&"0a".repeat(32)));
        assert!(valid_push_token(&"AB".repeat(40)));
        for bad in [
            "push-token-1".to_string(),
            "../../x\r\nHost: evil".to_string(),
            "0".repeat(63),
            "0".repeat(65),
            "g".repeat(64),
            "0".repeat(MAX_PUSH_TOKEN_CHARS + 2),
            String::new(),
        ] {
            assert!(!valid_push_token(&bad), "{bad:?}");
        }
    }

    #[test]
    fn device_log_text_is_escaped_and_bounded() {
        let forged = "ok\n2026-12-02T10:00:00.000000Z ERROR passpulse: forged\r\x1b[2K";
        let t = log_text(forged);
        assert!(!t.contains(['\n', '\r', '\x1b']), "{t}");
        assert!(t.contains("ok\\n2026"), "{t}");
        let long = log_text(&"y".repeat(100_000));
        assert_eq!(
            long.chars().count(),
            LOG_MESSAGE_CHARS + 3,
            "quotes and the ellipsis"
        );
    }

    #[test]
    fn google_event_ids_are_valid_whatever_the_nonce() {
        let p = PassRecord {
            serial: "S1".into(),
            program: "loyalty".into(),
            customer: "C1".into(),
            attributes: Map::new(),
            auth_token: "t".repeat(32),
            update_tag: 1,
            created_at: 1,
            source: None,
            campaign: None,
        };
        let uuid = "2f0b6c1e-6a8e-4c55-9c1b-0d8e7f6a5b4c";
        assert_eq!(google_event_id(uuid), format!("google-{uuid}"));
        for nonce in [
            uuid.to_string(),
            "n".repeat(122),
            "x".repeat(10_000),
            "a b\u{0}".into(),
            String::new(),
        ] {
            let e = wallet_event(
                EventType::PassInstalled,
                &p,
                GOOGLE_DEVICE,
                1_790_000_000_000,
            )
            .with_id(google_event_id(&nonce));
            let mut b = passpulse_engine::DecodedBatch::new();
            passpulse_engine::event::decode_line(e.to_json().as_bytes(), 1, 1, &mut b)
                .unwrap_or_else(|err| panic!("nonce of {} chars: {err}", nonce.len()));
            assert_eq!(google_event_id(&nonce), google_event_id(&nonce), "stable");
        }
    }

    #[test]
    fn secrets_compare_by_value() {
        assert!(same_secret("abcdefghijklmnop", "abcdefghijklmnop"));
        assert!(!same_secret("abcdefghijklmnop", "abcdefghijklmnoq"));
        assert!(!same_secret("abc", "abcd"));
    }
}
