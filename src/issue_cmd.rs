//! `passpulse certs dev DIR` (a development signing chain, not trusted by Apple) and
//! `passpulse issue` (one signed .pkpass from a template, offline).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use passpulse_issuer::certs::{SigningIdentity, dev_chain};
use passpulse_issuer::pkpass::{PassRequest, build_pkpass, new_auth_token};
use passpulse_issuer::template::Template;
use serde_json::{Map, Value};

/// Default pass type id of development passes.
pub const DEV_PASS_TYPE_ID: &str = "pass.dev.passpulse";
/// Default team id of development passes.
pub const DEV_TEAM_ID: &str = "DEVTEAM000";

#[derive(Debug, clap::Args)]
pub struct CertsDevArgs {
    /// Directory to write root.pem, wwdr.pem, pass.pem and pass.key into.
    pub dir: PathBuf,
    #[arg(long, default_value = DEV_PASS_TYPE_ID)]
    pub pass_type_id: String,
    #[arg(long, default_value = DEV_TEAM_ID)]
    pub team_id: String,
}

#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// Template name (a directory under --templates).
    #[arg(long)]
    pub template: String,
    #[arg(long, default_value = "data/templates")]
    pub templates: PathBuf,
    /// Customer id (the `customer` attribute).
    #[arg(long)]
    pub customer: String,
    /// Attribute `key=value` (repeatable); numbers stay numbers.
    #[arg(long = "attr", value_parser = parse_attr)]
    pub attrs: Vec<(String, Value)>,
    /// Where to write the .pkpass.
    #[arg(long)]
    pub out: PathBuf,
    /// Directory with pass.pem, pass.key and wwdr.pem (as `certs dev` writes them).
    #[arg(long, conflicts_with = "p12")]
    pub certs: Option<PathBuf>,
    /// PKCS#12 file with the Pass Type ID certificate and key (use with --wwdr).
    #[arg(long, requires = "wwdr")]
    pub p12: Option<PathBuf>,
    #[arg(long, env = "PASSPULSE_P12_PASSWORD", default_value = "")]
    pub p12_password: String,
    /// The Apple WWDR intermediate (PEM), with --p12.
    #[arg(long)]
    pub wwdr: Option<PathBuf>,
    #[arg(long, default_value = DEV_PASS_TYPE_ID)]
    pub pass_type_id: String,
    #[arg(long, default_value = DEV_TEAM_ID)]
    pub team_id: String,
    /// Serial number (default: random).
    #[arg(long)]
    pub serial: Option<String>,
    /// PassKit web service base (…/wallet); adds a fresh authenticationToken.
    #[arg(long)]
    pub web_service_url: Option<String>,
}

fn parse_attr(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("expected key=value, got \"{s}\""))?;
    if k.is_empty() {
        return Err(format!("empty attribute name in \"{s}\""));
    }
    let v = match v.parse::<serde_json::Number>() {
        Ok(n) if !v.starts_with('+') => Value::Number(n),
        _ => Value::String(v.to_string()),
    };
    Ok((k.to_string(), v))
}

pub fn certs_dev(a: CertsDevArgs) -> Result<()> {
    let chain = dev_chain(&a.pass_type_id, &a.team_id)?;
    chain.write_pem(&a.dir)?;
    println!(
        "wrote a development chain to {} (root.pem, wwdr.pem, pass.pem, pass.key): not trusted by Apple devices",
        a.dir.display()
    );
    Ok(())
}

pub fn issue(a: IssueArgs) -> Result<()> {
    let id = match (&a.certs, &a.p12, &a.wwdr) {
        (Some(d), None, _) => SigningIdentity::from_pem(
            &d.join("pass.pem"),
            &d.join("pass.key"),
            &d.join("wwdr.pem"),
        )?,
        (None, Some(p), Some(w)) => SigningIdentity::from_pkcs12(p, &a.p12_password, w)?,
        _ => bail!("give --certs DIR (PEM files) or --p12 FILE with --wwdr FILE"),
    };
    let template = Template::load(&a.templates.join(&a.template))
        .with_context(|| format!("template {}", a.template))?;
    let mut attrs: Map<String, Value> = a.attrs.into_iter().collect();
    attrs.insert("customer".into(), Value::String(a.customer.clone()));
    let serial = a
        .serial
        .unwrap_or_else(|| new_auth_token()[..20].to_string());
    let req = PassRequest {
        template: &template,
        serial: serial.clone(),
        pass_type_id: a.pass_type_id,
        team_id: a.team_id,
        auth_token: a.web_service_url.as_ref().map(|_| new_auth_token()),
        web_service_url: a.web_service_url,
        attrs,
    };
    let bytes = build_pkpass(&req, &id)?;
    std::fs::write(&a.out, &bytes).with_context(|| format!("writing {}", a.out.display()))?;
    println!(
        "wrote {} ({} bytes, serial {serial})",
        a.out.display(),
        bytes.len()
    );
    Ok(())
}
