//! The `[automation]` section of the configuration, what `passpulse serve` starts from it (the
//! flows consumer and the delivery worker, once the issuer is open), and `passpulse flows check`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream;
use passpulse_ingest::BusConfig;
use passpulse_issuer::automation::Automation;
use passpulse_issuer::automation::delivery::Senders;
use passpulse_issuer::automation::flows::Flows;
use passpulse_issuer::automation::http::AutomationSlot;
use passpulse_issuer::automation::senders::{EmailConfig, HttpSmsSender, SmsConfig, SmtpSender};
use passpulse_issuer::lifecycle::Lifecycle;
use passpulse_issuer::{Issuer, Template};
use serde::Deserialize;
use tracing::{info, warn};

/// `[automation]`: see README "Automation".
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AutomationSection {
    /// The flows file (TOML); without it automation is off.
    pub flows: Option<PathBuf>,
    /// SMTP server of the email channel.
    pub email: Option<EmailConfig>,
    /// HTTP provider of the SMS channel.
    pub sms: Option<SmsConfig>,
    /// Messages sent at once.
    pub delivery_concurrency: Option<usize>,
}

/// Reads and checks a flows file against the templates.
pub fn load_flows(path: &Path, templates: &BTreeMap<String, Template>) -> Result<Flows> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Flows::parse(&text, templates).with_context(|| format!("in {}", path.display()))
}

/// `passpulse flows check FILE`: exits non-zero with the first error.
pub fn check(file: &Path, templates: &Path) -> Result<()> {
    let t = Template::load_all(templates)
        .with_context(|| format!("templates in {}", templates.display()))?;
    let f = load_flows(file, &t)?;
    println!("{}: {} flows OK", file.display(), f.flows.len());
    for flow in &f.flows {
        let channels: Vec<&str> = flow.channels.iter().map(|c| c.as_str()).collect();
        println!(
            "  {:<24} on {:<20} {:<14} {}",
            flow.name,
            flow.trigger,
            flow.action.as_str(),
            if channels.is_empty() {
                String::new()
            } else {
                format!("via {}", channels.join(" + "))
            }
        );
    }
    if let Some(s) = &f.segments {
        println!(
            "  segments of {}: active within {} of event time",
            s.program,
            humantime::format_duration(s.active_within)
        );
    }
    Ok(())
}

/// What `serve` prepared before the issuer opens: the checked flows and the senders.
pub struct Prepared {
    flows: Flows,
    senders: Arc<Senders>,
    concurrency: usize,
    pub slot: AutomationSlot,
}

/// Checks the section (a bad flows file or sender stops the server at start).
pub fn prepare(
    s: &AutomationSection,
    templates: &BTreeMap<String, Template>,
) -> Result<Option<Prepared>> {
    let Some(path) = &s.flows else {
        return Ok(None);
    };
    let flows = load_flows(path, templates)?;
    let senders = Senders {
        email: match &s.email {
            Some(c) => Some(Arc::new(SmtpSender::new(c).map_err(anyhow::Error::msg)?)),
            None => None,
        },
        sms: match &s.sms {
            Some(c) => Some(Arc::new(HttpSmsSender::new(c).map_err(anyhow::Error::msg)?)),
            None => None,
        },
    };
    for f in &flows.flows {
        for c in &f.channels {
            if senders.get(*c).is_none() {
                warn!(flow = %f.name, channel = c.as_str(), "no sender configured for this channel: its messages wait in the outbox");
            }
        }
    }
    Ok(Some(Prepared {
        flows,
        senders: Arc::new(senders),
        concurrency: s.delivery_concurrency.unwrap_or(16).max(1),
        slot: AutomationSlot::default(),
    }))
}

/// Opens the automation (retrying while the broker is away) and runs the flows consumer and the
/// delivery worker; returns once the consumer exists, so events published after are acted on.
pub async fn start(
    p: Prepared,
    issuer: Issuer,
    js: jetstream::Context,
    bus: BusConfig,
    max_future_skew: Option<i64>,
) {
    let mut backoff = Duration::from_millis(200);
    let (automation, consumer) = loop {
        let opened = async {
            let a = Automation::open(
                &js,
                p.flows.clone(),
                issuer.clone(),
                Lifecycle::new(js.clone(), bus.clone()),
            )
            .await?;
            let c = a.consumer(&js, &bus).await?;
            Ok::<_, passpulse_issuer::automation::StepError>((a, c))
        }
        .await;
        match opened {
            Ok(r) => break r,
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot open the automation");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    };
    let outbox = automation.outbox().clone();
    let lifecycle = Lifecycle::new(js.clone(), bus.clone());
    let (senders, concurrency) = (p.senders.clone(), p.concurrency);
    tokio::spawn(async move {
        loop {
            if let Err(e) = outbox
                .clone()
                .run(senders.clone(), lifecycle.clone(), concurrency)
                .await
            {
                warn!(error = %e, "delivery worker stopped; restarting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    p.slot.set(automation.clone());
    info!(flows = p.flows.flows.len(), "automation ready");
    tokio::spawn(async move {
        let mut consumer = consumer;
        loop {
            if let Err(e) = automation
                .clone()
                .run(consumer.clone(), max_future_skew)
                .await
            {
                warn!(error = %e, "automation consumer stopped; restarting");
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            match automation.consumer(&js, &bus).await {
                Ok(c) => consumer = c,
                Err(e) => warn!(error = %e, "automation consumer"),
            }
        }
    });
}
