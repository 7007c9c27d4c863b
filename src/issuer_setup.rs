//! The `[issuer]` section of the configuration and what `passpulse serve` builds from it: the
//! signing identity (PEM directory, PKCS#12, or a development chain created under the data
//! directory), templates, the download-link key, the APNs sender and the Google settings.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use passpulse_issuer::certs::{SigningIdentity, dev_chain};
use passpulse_issuer::google::ServiceAccount;
use passpulse_issuer::google_api::{self, GoogleApi};
use passpulse_issuer::google_callback::RootKeys;
use passpulse_issuer::push::{ApnsAuth, ApnsSender, PushSender, Unconfigured};
use passpulse_issuer::service::{GoogleSettings, WalletLimits};
use passpulse_issuer::{IssuerConfig, Template};
use serde::Deserialize;

use crate::issue_cmd::{DEV_PASS_TYPE_ID, DEV_TEAM_ID};

/// `[issuer]`: see README "Issuing passes".
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IssuerSection {
    /// Serve the pass API, downloads and the PassKit web service.
    pub enabled: bool,
    /// Public base URL devices reach this server at (default `http://<http address>`).
    pub public_url: Option<String>,
    pub pass_type_id: String,
    pub team_id: String,
    /// Directory of templates (one folder each).
    pub templates: PathBuf,
    /// Directory with `pass.pem`, `pass.key`, `wwdr.pem` (as `passpulse certs dev` writes).
    /// Without it and without `p12`, a development chain is created under
    /// `<data-dir>/certs` (not trusted by Apple devices).
    pub certs: Option<PathBuf>,
    /// PKCS#12 with the Pass Type ID certificate and key (with `wwdr`).
    pub p12: Option<PathBuf>,
    pub p12_password: String,
    pub wwdr: Option<PathBuf>,
    /// How long a download link stays valid.
    #[serde(with = "humantime_serde")]
    pub link_ttl: Duration,
    /// APNs: certificate (`apns_p12`) or token (`apns_key` + `apns_key_id` + `apns_team_id`).
    pub apns_p12: Option<PathBuf>,
    pub apns_p12_password: String,
    pub apns_key: Option<PathBuf>,
    pub apns_key_id: Option<String>,
    pub apns_team_id: Option<String>,
    /// Use APNs' development host.
    pub apns_sandbox: bool,
    /// Pushes in flight at once.
    pub push_concurrency: usize,
    /// Apple devices one pass may be registered on at once (PassKit web service).
    pub max_devices_per_pass: usize,
    /// Device registration requests per pass per minute (0: unlimited).
    pub registrations_per_minute: u32,
    /// `POST /wallet/v1/log` messages written to the server log per minute (0: unlimited).
    pub device_log_per_minute: u32,
    /// Google Wallet: service-account key file (JSON), issuer id, loyalty class, origins.
    pub google_service_account: Option<PathBuf>,
    pub google_issuer_id: Option<String>,
    pub google_class: String,
    pub google_origins: Vec<String>,
    /// Root keys that sign save/delete callbacks, in the format of
    /// `https://pay.google.com/gp/m/issuer/keys` (download it there).
    pub google_root_keys: Option<PathBuf>,
    /// Google Wallet REST API and OAuth token endpoint (defaults: Google's).
    pub google_api_url: String,
    pub google_token_url: String,
}

impl Default for IssuerSection {
    fn default() -> Self {
        IssuerSection {
            enabled: true,
            public_url: None,
            pass_type_id: DEV_PASS_TYPE_ID.into(),
            team_id: DEV_TEAM_ID.into(),
            templates: PathBuf::from("data/templates"),
            certs: None,
            p12: None,
            p12_password: String::new(),
            wwdr: None,
            link_ttl: Duration::from_secs(7 * 86_400),
            apns_p12: None,
            apns_p12_password: String::new(),
            apns_key: None,
            apns_key_id: None,
            apns_team_id: None,
            apns_sandbox: false,
            push_concurrency: 256,
            max_devices_per_pass: WalletLimits::default().max_devices_per_pass,
            registrations_per_minute: WalletLimits::default().registrations_per_minute,
            device_log_per_minute: WalletLimits::default().log_messages_per_minute,
            google_service_account: None,
            google_issuer_id: None,
            google_class: "loyalty".into(),
            google_origins: Vec::new(),
            google_root_keys: None,
            google_api_url: google_api::DEFAULT_BASE_URL.into(),
            google_token_url: google_api::DEFAULT_TOKEN_URL.into(),
        }
    }
}

fn identity(s: &IssuerSection, data_dir: &Path) -> Result<SigningIdentity> {
    let from_dir = |d: &Path| {
        SigningIdentity::from_pem(
            &d.join("pass.pem"),
            &d.join("pass.key"),
            &d.join("wwdr.pem"),
        )
        .with_context(|| format!("signing certificates in {}", d.display()))
    };
    match (&s.certs, &s.p12, &s.wwdr) {
        (Some(d), None, _) => from_dir(d),
        (None, Some(p), Some(w)) => Ok(SigningIdentity::from_pkcs12(p, &s.p12_password, w)?),
        (None, Some(_), None) => bail!("[issuer] p12 needs wwdr (the Apple WWDR intermediate)"),
        (Some(_), Some(_), _) => bail!("[issuer] give certs or p12, not both"),
        (None, None, _) => {
            let d = data_dir.join("certs");
            if !d.join("pass.pem").exists() {
                dev_chain(&s.pass_type_id, &s.team_id)?.write_pem(&d)?;
                tracing::warn!(dir = %d.display(), "created a development signing chain: passes will not install on Apple devices");
            }
            from_dir(&d)
        }
    }
}

/// The download-link key: kept in `<data-dir>/issuer-link.key` so links survive a restart.
fn link_key(data_dir: &Path) -> Result<Vec<u8>> {
    let p = data_dir.join("issuer-link.key");
    if let Ok(k) = std::fs::read(&p)
        && k.len() >= 32
    {
        return Ok(k);
    }
    let mut k = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut k);
    std::fs::write(&p, &k).with_context(|| format!("writing {}", p.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))?;
    Ok(k)
}

fn push_sender(s: &IssuerSection) -> Result<Arc<dyn PushSender>> {
    let auth = match (&s.apns_p12, &s.apns_key) {
        (Some(p12), None) => ApnsAuth::Certificate {
            p12: p12.clone(),
            password: s.apns_p12_password.clone(),
        },
        (None, Some(key)) => ApnsAuth::Token {
            key: key.clone(),
            key_id: s
                .apns_key_id
                .clone()
                .context("[issuer] apns_key needs apns_key_id")?,
            team_id: s.apns_team_id.clone().unwrap_or_else(|| s.team_id.clone()),
        },
        (Some(_), Some(_)) => bail!("[issuer] give apns_p12 or apns_key, not both"),
        (None, None) => return Ok(Arc::new(Unconfigured)),
    };
    Ok(Arc::new(
        ApnsSender::new(&auth, s.apns_sandbox).map_err(anyhow::Error::msg)?,
    ))
}

fn google(s: &IssuerSection) -> Result<Option<GoogleSettings>> {
    let (Some(path), Some(issuer_id)) = (&s.google_service_account, &s.google_issuer_id) else {
        return Ok(None);
    };
    let read = |p: &Path| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let sa = ServiceAccount::from_json(&read(path)?)?;
    let root_keys = match &s.google_root_keys {
        Some(p) => Some(
            RootKeys::from_json(&read(p)?).with_context(|| format!("root keys {}", p.display()))?,
        ),
        None => None,
    };
    let api = GoogleApi::new(sa.clone(), &s.google_api_url, &s.google_token_url);
    Ok(Some(GoogleSettings {
        service_account: sa,
        issuer_id: issuer_id.clone(),
        class: s.google_class.clone(),
        origins: s.google_origins.clone(),
        root_keys,
        api: Some(Arc::new(api)),
    }))
}

/// Everything the issuer needs, from the configuration.
pub fn build(
    s: &IssuerSection,
    data_dir: &Path,
    http: std::net::SocketAddr,
) -> Result<(IssuerConfig, Arc<dyn PushSender>)> {
    let templates = Template::load_all(&s.templates)
        .with_context(|| format!("templates in {}", s.templates.display()))?;
    if templates.is_empty() {
        bail!("no templates in {}", s.templates.display());
    }
    let cfg = IssuerConfig {
        public_url: s
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{http}")),
        pass_type_id: s.pass_type_id.clone(),
        team_id: s.team_id.clone(),
        templates,
        identity: identity(s, data_dir)?,
        link_key: link_key(data_dir)?,
        link_ttl: s.link_ttl,
        push_concurrency: s.push_concurrency.max(1),
        google: google(s)?,
        wallet_limits: WalletLimits {
            max_devices_per_pass: s.max_devices_per_pass,
            registrations_per_minute: s.registrations_per_minute,
            log_messages_per_minute: s.device_log_per_minute,
        },
    };
    Ok((cfg, push_sender(s)?))
}
