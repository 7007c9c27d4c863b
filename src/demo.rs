//! Demo traffic: the generator's world, played live. Events are stamped with the wall clock and
//! published at a steady rate through JetStream, as a real issuer and scanners would. The world
//! runs faster than real time (at 200 events/s a simulated day passes in about two minutes), so
//! installs, visits, scans, redemptions and uninstalls all show up within minutes.

use std::time::Duration;

use async_nats::jetstream;
use passpulse_engine::time::now_millis;
use tokio::sync::watch;
use tracing::warn;

use crate::publish::publish_lines;
use crate::synth::{GenOptions, Generator};

pub async fn run(
    js: jetstream::Context,
    prefix: String,
    rate: u32,
    mut stop: watch::Receiver<bool>,
) {
    let mut generator = Generator::new(GenOptions {
        seed: now_millis() as u64,
        start_ms: now_millis(),
        arrivals_per_day: 2_000.0,
    });
    let per_tick = (rate / 10).max(1) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let now = now_millis();
        let lines: Vec<String> = (0..per_tick).map(|_| generator.next_line_at(now)).collect();
        if let Err(e) = publish_lines(&js, &prefix, lines.into_iter(), None, 1, false).await {
            warn!(error = %e, "demo traffic: publish failed");
        }
    }
}

/// Issues one pass of each demo programme through the real issuer (signed with the
/// development chain) and prints where to download them, so a user can unzip one and check its
/// signature; one device registers each through the PassKit path, as Wallet would.
pub async fn sample_passes(issuer: passpulse_issuer::Issuer) {
    use serde_json::json;
    let year = chrono::Utc::now().format("%Y").to_string();
    let samples = [
        (
            "loyalty",
            json!({"first_name": "Ada", "points": 120, "tier": "Gold",
                   "programme_name": "Pulse Rewards", "organization": "Passpulse Coffee"}),
        ),
        (
            "coupon",
            json!({"offer_title": "10 % off your next coffee", "discount_code": "PULSE-10",
                   "expires": format!("{year}-12-31T23:59:59Z"), "expires_text": format!("31 Dec {year}"),
                   "organization": "Passpulse Coffee"}),
        ),
        (
            "ticket",
            json!({"first_name": "Ada", "event_name": "Winter Launch",
                   "event_start": format!("{year}-12-12T19:00:00Z"), "venue": "Hall 2",
                   "doors": "18:30", "seat": "B12", "ticket_id": "T-0001",
                   "organization": "Passpulse Events"}),
        ),
    ];
    for (program, attrs) in samples {
        let req = passpulse_issuer::service::NewPass {
            program: program.into(),
            customer: format!("DEMO-{program}"),
            attributes: attrs.as_object().cloned().unwrap_or_default(),
            source: Some("web".into()),
            campaign: Some("demo".into()),
        };
        match issuer.issue(req).await {
            Ok(p) => {
                println!("demo {program} pass: {}", p.download_url);
                if let Ok(rec) = issuer.pass(&p.serial) {
                    let device = format!("demo-device-{program}");
                    // an APNs device token's shape (64 hex digits); no real device has it
                    let push = format!("{:064x}", program.len());
                    if let Err(e) = issuer
                        .register(&device, &p.serial, &rec.auth_token, &push)
                        .await
                    {
                        warn!(error = %e, "demo: registering a device");
                    }
                }
            }
            Err(e) => warn!(program, error = %e, "demo: issuing a sample pass"),
        }
    }
}
