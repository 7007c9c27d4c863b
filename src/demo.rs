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
