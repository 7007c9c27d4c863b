//! Per-key request budgets for the public wallet routes: a token bucket per key (a pass serial,
//! or one key for the device log), so one holder of a pass cannot make the service store or log
//! without end. In memory and per instance: a limit on abuse, not an accounting.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

/// Keys tracked before idle (full) buckets are forgotten.
const MAX_KEYS: usize = 100_000;

/// Token buckets: `per_minute` requests a minute per key, in bursts of up to as many.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_minute` = 0 means unlimited.
    pub(crate) fn new(per_minute: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one request of `key`'s budget; `Err(seconds)` until one is available again.
    pub(crate) fn take(&self, key: &str) -> Result<(), u64> {
        self.take_at(key, Instant::now())
    }

    fn take_at(&self, key: &str, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let cap = f64::from(self.per_minute);
        let per_sec = cap / 60.0;
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_KEYS && !buckets.contains_key(key) {
            // a full bucket says nothing a new one would not
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec < cap
            });
        }
        let (tokens, at) = buckets.entry(key.to_string()).or_insert((cap, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * per_sec).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_sec).ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_steady_rate_per_key() {
        let l = RateLimiter::new(6);
        let t0 = Instant::now();
        for _ in 0..6 {
            assert!(l.take_at("a", t0).is_ok());
        }
        assert_eq!(
            l.take_at("a", t0),
            Err(10),
            "one request per 10 s after the burst"
        );
        assert!(l.take_at("b", t0).is_ok(), "keys are independent");
        assert!(l.take_at("a", t0 + Duration::from_secs(10)).is_ok());
        assert!(l.take_at("a", t0 + Duration::from_secs(11)).is_err());
        assert!(RateLimiter::new(0).take_at("a", t0).is_ok());
    }
}
