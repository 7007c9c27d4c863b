//! `passpulse bench issue`: signed .pkpass files per second on one core, beside the raw
//! RSA-2048 signing rate of the same key measured in the same run (the ceiling: every pass needs
//! one signature), and the push fan-out rate through the recording fake (the issuer's own
//! overhead per push, without the network).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use openssl::hash::MessageDigest;
use openssl::sign::Signer;
use passpulse_issuer::certs::dev_chain;
use passpulse_issuer::pkpass::{PassRequest, build_pkpass, new_auth_token, sign_manifest};
use passpulse_issuer::push::{RecordingSender, fan_out};
use passpulse_issuer::template::Template;
use serde_json::json;

use super::median;

#[derive(Debug, clap::Args)]
pub struct IssueBenchArgs {
    /// Seconds per measurement.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Rounds; medians are reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Devices in the push fan-out.
    #[arg(long, default_value_t = 200_000)]
    pub pushes: usize,
    /// Pushes in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
    #[arg(long, default_value = "data/templates")]
    pub templates: PathBuf,
}

/// Runs `f` repeatedly for `secs`; returns calls per second.
fn rate(secs: f64, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let start = Instant::now();
    let limit = Duration::from_secs_f64(secs);
    let mut n = 0u64;
    while start.elapsed() < limit {
        f()?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

pub async fn issue(a: IssueBenchArgs) -> Result<()> {
    let chain = dev_chain("pass.bench.passpulse", "BENCHTEAM0")?;
    let id = chain.identity;
    let template = Template::load(&a.templates.join("loyalty"))
        .with_context(|| format!("template loyalty in {}", a.templates.display()))?;
    let attrs = json!({"customer": "C1", "first_name": "Ada", "points": 120, "tier": "Gold",
                       "programme_name": "Pulse Rewards", "organization": "Pulse Coffee"});
    let mut req = PassRequest {
        template: &template,
        serial: String::new(),
        pass_type_id: "pass.bench.passpulse".into(),
        team_id: "BENCHTEAM0".into(),
        web_service_url: Some("https://passes.example.test/wallet".into()),
        auth_token: Some(new_auth_token()),
        attrs: attrs.as_object().cloned().unwrap_or_default(),
    };
    let digest = [7u8; 40];
    let manifest = vec![b'x'; 1200];
    let (mut raw, mut p7s, mut passes, mut sizes) = (Vec::new(), Vec::new(), Vec::new(), 0usize);
    for round in 1..=a.rounds {
        let r = rate(a.seconds, || {
            let mut s = Signer::new(MessageDigest::sha256(), &id.key)?;
            s.update(&digest)?;
            std::hint::black_box(s.sign_to_vec()?);
            Ok(())
        })?;
        let p7 = rate(a.seconds, || {
            std::hint::black_box(sign_manifest(&manifest, &id)?);
            Ok(())
        })?;
        p7s.push(p7);
        let mut k = 0u64;
        let p = rate(a.seconds, || {
            k += 1;
            req.serial = format!("bench{k:012}");
            let bytes = build_pkpass(&req, &id)?;
            sizes = bytes.len();
            std::hint::black_box(bytes);
            Ok(())
        })?;
        eprintln!(
            "round {round}: RSA-2048 {r:.0} signatures/s, PKCS#7 {p7:.0}/s, .pkpass {p:.0}/s ({:.1} %)",
            100.0 * p / r
        );
        raw.push(r);
        passes.push(p);
    }
    let (r, p7, p) = (median(raw), median(p7s), median(passes));

    let fake = RecordingSender::new();
    let mut push_rates = Vec::new();
    for _ in 0..a.rounds {
        let targets: Vec<(usize, String)> =
            (0..a.pushes).map(|i| (i, format!("token{i:08}"))).collect();
        let start = Instant::now();
        let out = fan_out(
            fake.as_ref(),
            "pass.bench.passpulse",
            targets,
            a.concurrency,
        )
        .await;
        push_rates.push(out.len() as f64 / start.elapsed().as_secs_f64());
    }
    let pushes = median(push_rates);

    println!("raw RSA-2048 signing  {r:.0} signatures/s (one core, same key)");
    println!("PKCS#7 signature only {p7:.0} signatures/s (detached, signed attributes, chain)");
    println!("signed .pkpass        {p:.0} passes/s ({sizes} bytes each, one core)");
    println!("pkpass / raw signing  {:.1} %", 100.0 * p / r);
    println!(
        "push fan-out (fake)   {pushes:.0} pushes/s ({} devices, {} in flight)",
        a.pushes, a.concurrency
    );
    Ok(())
}
