//! `passpulse bench automation`: how long a points change takes from the bus to the pushes.
//!
//! A real nats-server (managed in a temporary directory), the real registry, issuer and
//! automation consumer, and a push sender that timestamps each push (a2 cannot target a local
//! host, so APNs itself is not in the loop). Members sign up through the loyalty flow and each
//! registers `--devices` devices; then `contact.updated` events are published one at a time and
//! the time from the publish call to the last device's push is measured (p50, p99, max), and a
//! burst of updates measures updates per second.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use parking_lot::Mutex;
use passpulse_issuer::automation::Automation;
use passpulse_issuer::automation::flows::Flows;
use passpulse_issuer::lifecycle::Lifecycle;
use passpulse_issuer::push::{PushOutcome, PushSender};
use passpulse_issuer::registry::Registry;
use passpulse_issuer::{Issuer, IssuerConfig, Template};
use serde_json::json;

use super::BenchBus;

#[derive(Debug, clap::Args)]
pub struct AutomationBenchArgs {
    /// Members (passes).
    #[arg(long, default_value_t = 200)]
    pub members: usize,
    /// Devices registered per pass.
    #[arg(long, default_value_t = 2)]
    pub devices: usize,
    /// Points changes measured one at a time.
    #[arg(long, default_value_t = 300)]
    pub updates: usize,
    /// Points changes in the burst.
    #[arg(long, default_value_t = 2000)]
    pub burst: usize,
    #[arg(long, default_value = "data/templates")]
    pub templates: PathBuf,
    /// Use this NATS server instead of a managed one.
    #[arg(long)]
    pub nats_url: Option<String>,
}

const FLOWS: &str = r#"
[[flow]]
name = "signup"
trigger = "contact.registered"
action = "issue_pass"
template = "loyalty"
copy = ["first_name", "points"]
defaults = { programme_name = "Pulse", organization = "Pulse Coffee", tier = "Member", points = 0, first_name = "member" }
channels = ["email"]
email = { subject = "Your card", text = "{link}" }

[[flow]]
name = "points"
trigger = "contact.updated"
action = "update_pass"
pass_from = "signup"
watch = ["points"]
"#;

/// Records when each push happened.
#[derive(Debug, Default)]
struct TimedSender {
    pushes: Mutex<Vec<Instant>>,
}

#[async_trait]
impl PushSender for TimedSender {
    async fn push(&self, _token: &str, _topic: &str) -> PushOutcome {
        self.pushes.lock().push(Instant::now());
        PushOutcome::Sent
    }
}

impl TimedSender {
    /// Waits until `n` pushes happened; the time of the `n`th.
    async fn wait(&self, n: usize) -> Result<Instant> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(t) = self.pushes.lock().get(n - 1) {
                return Ok(*t);
            }
            if Instant::now() > deadline {
                bail!("only {} of {n} pushes arrived", self.pushes.lock().len());
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
}

pub async fn automation(a: AutomationBenchArgs) -> Result<()> {
    let bb = BenchBus::start(a.nats_url.as_deref()).await?;
    let (js, bus) = (bb.js.clone(), bb.bus.clone());
    let templates = Template::load_all(&a.templates)
        .with_context(|| format!("templates in {}", a.templates.display()))?;
    let flows = Flows::parse(FLOWS, &templates)?;
    let pass_type = "pass.bench.passpulse";
    let registry = Registry::open(&js).await?;
    let cfg = IssuerConfig {
        push_concurrency: 64,
        ..IssuerConfig::development(
            "https://passes.example.test",
            pass_type,
            "BENCHTEAM0",
            templates,
        )?
    };
    let sender = Arc::new(TimedSender::default());
    let lifecycle = Lifecycle::new(js.clone(), bus.clone());
    let issuer = Issuer::new(cfg, registry, lifecycle.clone(), sender.clone());
    let automation = Automation::open(&js, flows, issuer.clone(), lifecycle)
        .await
        .map_err(anyhow::Error::msg)?;
    let consumer = automation
        .consumer(&js, &bus)
        .await
        .map_err(anyhow::Error::msg)?;
    tokio::spawn(automation.clone().run(consumer, None));

    let publish = |kind: &'static str, line: String| {
        let (js, subject) = (js.clone(), format!("{}.{kind}", bus.subject_prefix));
        async move {
            js.publish(subject, line.into())
                .await?
                .await
                .context("publish ack")?;
            Ok::<_, anyhow::Error>(())
        }
    };
    eprintln!("signing up {} members…", a.members);
    for i in 0..a.members {
        let e = json!({"id": format!("reg-{i}"), "type": "contact.registered", "ts": 1_790_000_000_000i64,
                       "customer": format!("C{i}"), "attrs": {"first_name": "Ada", "points": 0}});
        publish("contact.registered", e.to_string()).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while issuer.registry().pass_count() < a.members {
        if Instant::now() > deadline {
            bail!("only {} passes issued", issuer.registry().pass_count());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..a.members {
        let serial = automation.serial_for("signup", &format!("C{i}"));
        let token = issuer.pass(&serial)?.auth_token;
        for d in 0..a.devices {
            issuer
                .register(
                    &format!("D{i}x{d}"),
                    &serial,
                    &token,
                    &format!("{:032x}{d:032x}", i),
                )
                .await?;
        }
    }

    // one at a time: publish → last device pushed
    let mut lat = Vec::with_capacity(a.updates);
    let mut pushed = 0;
    let mut seq = 0u64;
    let mut next_update = |member: usize| {
        seq += 1;
        json!({"id": format!("upd-{seq}"), "type": "contact.updated",
               "ts": 1_790_000_000_000i64 + seq as i64,
               "customer": format!("C{member}"), "attrs": {"points": seq}})
        .to_string()
    };
    for i in 0..a.updates {
        let line = next_update(i % a.members);
        let t0 = Instant::now();
        publish("contact.updated", line).await?;
        pushed += a.devices;
        let t = sender.wait(pushed).await?;
        lat.push(t.duration_since(t0).as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];

    // a burst: every update published, then wait for every push
    let lines: Vec<String> = (0..a.burst).map(|i| next_update(i % a.members)).collect();
    let t0 = Instant::now();
    for l in lines {
        publish("contact.updated", l).await?;
    }
    pushed += a.burst * a.devices;
    sender.wait(pushed).await?;
    let secs = t0.elapsed().as_secs_f64();

    println!(
        "points change → push  p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} updates, {} devices each; target < 1 s)",
        p(0.5),
        p(0.99),
        lat[lat.len() - 1],
        a.updates,
        a.devices
    );
    println!(
        "burst                 {} updates in {:.2} s: {:.0} updates/s, {:.0} pushes/s",
        a.burst,
        secs,
        a.burst as f64 / secs,
        (a.burst * a.devices) as f64 / secs
    );
    bb.stop().await;
    Ok(())
}
