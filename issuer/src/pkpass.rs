//! Building and signing an Apple Wallet pass: pass.json from a template and the customer's
//! attributes, `manifest.json` (the SHA-1 of every file), `signature` (a detached DER PKCS#7
//! over the manifest, signed with the Pass Type ID certificate, the WWDR intermediate included,
//! with a signing-time attribute), zipped as `.pkpass`.
//!
//! [`validate`] refuses what Wallet would refuse, with a message that says what to fix.

use std::io::{Cursor, Write};
use std::path::PathBuf;

use openssl::hash::{MessageDigest, hash};
use openssl::pkcs7::{Pkcs7, Pkcs7Flags};
use openssl::stack::Stack;
use serde_json::{Map, Value, json};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, DateTime, ZipWriter};

use crate::certs::SigningIdentity;
use crate::template::Template;

/// Shortest `authenticationToken` Wallet accepts.
pub const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
    #[error("invalid pass: {0}")]
    Invalid(String),
    #[error("the template needs the attribute \"{0}\", which the customer does not have")]
    MissingAttribute(String),
    #[error("signing failed: {0}")]
    Signing(#[from] openssl::error::ErrorStack),
    #[error("packaging failed: {0}")]
    Zip(#[from] zip::result::ZipError),
}

/// One pass to build.
#[derive(Debug, Clone)]
pub struct PassRequest<'a> {
    pub template: &'a Template,
    pub serial: String,
    pub pass_type_id: String,
    pub team_id: String,
    /// Public base of the PassKit web service (`…/wallet`); with it, `auth_token` is required.
    pub web_service_url: Option<String>,
    pub auth_token: Option<String>,
    /// Customer attributes the template's placeholders are filled from.
    pub attrs: Map<String, Value>,
}

/// A random authentication token: 32 characters of `[A-Za-z0-9]` (≈190 bits).
pub fn new_auth_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rngs::OsRng;
    (0..32)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// pass.json for `req`.
pub fn pass_json(req: &PassRequest<'_>) -> Result<Value, PassError> {
    let mut p = req.template.render(&req.attrs)?;
    p.insert("formatVersion".into(), json!(1));
    p.insert("passTypeIdentifier".into(), json!(req.pass_type_id));
    p.insert("serialNumber".into(), json!(req.serial));
    p.insert("teamIdentifier".into(), json!(req.team_id));
    if let Some(url) = &req.web_service_url {
        p.insert("webServiceURL".into(), json!(url));
    }
    if let Some(t) = &req.auth_token {
        p.insert("authenticationToken".into(), json!(t));
    }
    let v = Value::Object(p);
    validate(&v, &req.template.images)?;
    Ok(v)
}

/// Refuses a pass Wallet would refuse.
pub fn validate(
    pass: &Value,
    files: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Result<(), PassError> {
    let bad = |m: String| Err(PassError::Invalid(m));
    let Some(p) = pass.as_object() else {
        return bad("pass.json must be a JSON object".into());
    };
    if p.get("formatVersion") != Some(&json!(1)) {
        return bad(format!(
            "formatVersion must be 1, not {}",
            p.get("formatVersion").unwrap_or(&Value::Null)
        ));
    }
    for k in [
        "passTypeIdentifier",
        "serialNumber",
        "teamIdentifier",
        "organizationName",
        "description",
    ] {
        match p.get(k).and_then(Value::as_str) {
            Some(s) if !s.trim().is_empty() => {}
            _ => return bad(format!("{k} is required and must be a non-empty string")),
        }
    }
    match (p.get("webServiceURL"), p.get("authenticationToken")) {
        (Some(_), None) => {
            return bad("webServiceURL needs an authenticationToken".into());
        }
        (_, Some(t)) => {
            let n = t.as_str().map_or(0, |s| s.chars().count());
            if n < MIN_TOKEN_CHARS {
                return bad(format!(
                    "authenticationToken must be at least {MIN_TOKEN_CHARS} characters (has {n})"
                ));
            }
        }
        (None, None) => {}
    }
    if !files.contains_key("icon.png") {
        return bad("icon.png is missing: Wallet refuses a pass without an icon".into());
    }
    let styles: Vec<&str> = crate::template::STYLES
        .iter()
        .copied()
        .filter(|s| p.contains_key(*s))
        .collect();
    if styles.len() != 1 {
        return bad(format!(
            "a pass has exactly one style key, found {}",
            if styles.is_empty() {
                "none".to_string()
            } else {
                styles.join(", ")
            }
        ));
    }
    let style = &p[styles[0]];
    for group in crate::template::FIELD_GROUPS {
        for f in style
            .get(group)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(m) = f.get("changeMessage").and_then(Value::as_str)
                && !m.contains("%@")
            {
                return bad(format!(
                    "field \"{}\": changeMessage \"{m}\" must contain %@ (the new value)",
                    f.get("key").and_then(Value::as_str).unwrap_or("?")
                ));
            }
        }
    }
    Ok(())
}

/// manifest.json: the SHA-1 (hex) of every file.
pub fn manifest(files: &std::collections::BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>, PassError> {
    let mut m = Map::new();
    for (name, bytes) in files {
        let d = hash(MessageDigest::sha1(), bytes)?;
        let hex: String = d.iter().map(|b| format!("{b:02x}")).collect();
        m.insert(name.clone(), json!(hex));
    }
    Ok(serde_json::to_vec(&Value::Object(m)).expect("a map serialises"))
}

/// The detached DER PKCS#7 signature of `manifest`, with the chain and a signing time.
pub fn sign_manifest(manifest: &[u8], id: &SigningIdentity) -> Result<Vec<u8>, PassError> {
    let mut chain = Stack::new()?;
    for c in &id.chain {
        chain.push(c.clone())?;
    }
    // signed attributes (content type, signing time) are on by default: never NOATTR; the
    // S/MIME capabilities attribute means nothing to Wallet, so it is left out
    let p7 = Pkcs7::sign(
        &id.cert,
        &id.key,
        &chain,
        manifest,
        Pkcs7Flags::DETACHED | Pkcs7Flags::BINARY | Pkcs7Flags::NOSMIMECAP,
    )?;
    Ok(p7.to_der()?)
}

/// Builds the signed `.pkpass` (zip bytes) for `req`.
pub fn build_pkpass(req: &PassRequest<'_>, id: &SigningIdentity) -> Result<Vec<u8>, PassError> {
    let pass = pass_json(req)?;
    let mut files = req.template.images.clone();
    files.insert(
        "pass.json".into(),
        serde_json::to_vec(&pass).expect("JSON serialises"),
    );
    let manifest = manifest(&files)?;
    let signature = sign_manifest(&manifest, id)?;
    let mut zw = ZipWriter::new(Cursor::new(Vec::new()));
    // the JSON files are small: the fastest deflate level packs them almost as well
    let deflated = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Deflated)
        .compression_level(Some(1))
        .last_modified_time(DateTime::default())
        .unix_permissions(0o644);
    // PNG data is already compressed: deflating it again costs more CPU than the signature
    // and saves nothing
    let stored = deflated
        .compression_method(CompressionMethod::Stored)
        .compression_level(None);
    for (name, bytes) in files.iter().chain(
        [
            ("manifest.json".to_string(), manifest),
            ("signature".to_string(), signature),
        ]
        .iter()
        .map(|(n, b)| (n, b)),
    ) {
        let opts = if name.ends_with(".png") {
            stored
        } else {
            deflated
        };
        zw.start_file(name.as_str(), opts)?;
        zw.write_all(bytes)
            .map_err(|e| PassError::Io(PathBuf::from(name), e))?;
    }
    Ok(zw.finish()?.into_inner())
}
