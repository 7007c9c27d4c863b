//! The pass registry: passes and device registrations in two JetStream key-value buckets, with a
//! live in-memory replica for reads.
//!
//! - `PASSPULSE_PASSES`: key = serial, value = [`PassRecord`] (JSON). Updates are
//!   compare-and-set on the entry's revision, so concurrent updates of one pass never lose a
//!   change.
//! - `PASSPULSE_REGISTRATIONS`: key = `<serial>.<device>`, value = [`Registration`] (JSON).
//!
//! Every instance watches both buckets from their start (last value per key, then live), so its
//! replica converges on what any instance wrote; its own writes are applied to the replica as soon
//! as the broker acknowledges them (read-your-writes). Lookups — a device's passes, a pass's
//! devices for a push fan-out — are hash-map reads. Keys are restricted to characters that are
//! safe in NATS subjects (see [`valid_id`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Bucket names.
pub const PASSES_BUCKET: &str = "PASSPULSE_PASSES";
pub const REGISTRATIONS_BUCKET: &str = "PASSPULSE_REGISTRATIONS";
/// Google callback nonces seen (kept 30 days: Google retries for far less).
pub const NONCES_BUCKET: &str = "PASSPULSE_GOOGLE_NONCES";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("key-value store: {0}")]
    Store(String),
    #[error("pass {0} not found")]
    NotFound(String),
    #[error("pass {0} already exists")]
    Exists(String),
    #[error("stored value of {key} is not valid: {detail}")]
    Corrupt { key: String, detail: String },
}

pub(crate) fn store_err(e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Store(e.to_string())
}

/// One issued pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PassRecord {
    pub serial: String,
    /// Programme = template name.
    pub program: String,
    pub customer: String,
    /// Customer attributes the template is filled from.
    pub attributes: Map<String, Value>,
    /// `ApplePass` token of the PassKit web service.
    pub auth_token: String,
    /// Changes whenever the pass content does: epoch milliseconds of the last change, strictly
    /// increasing per pass (the "tag" of the serials-updated-since call).
    pub update_tag: i64,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

/// One device's registration for one pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registration {
    pub device: String,
    pub serial: String,
    pub push_token: String,
    /// `apple` (Google devices do not register with us).
    pub platform: String,
    /// Epoch milliseconds.
    pub registered_at: i64,
}

/// True if `s` can be a serial or device id: 1–128 of `[A-Za-z0-9_-]` (a NATS key token).
pub fn valid_id(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[derive(Debug, Default)]
struct Replica {
    /// serial → (revision, record)
    passes: HashMap<String, (u64, PassRecord)>,
    /// serial → device → (revision, registration)
    by_serial: HashMap<String, HashMap<String, (u64, Registration)>>,
    /// device → serials
    by_device: HashMap<String, BTreeSet<String>>,
}

impl Replica {
    fn put_pass(&mut self, rev: u64, p: PassRecord) {
        match self.passes.get(&p.serial) {
            Some((r, _)) if *r >= rev => {}
            _ => {
                self.passes.insert(p.serial.clone(), (rev, p));
            }
        }
    }

    fn put_registration(&mut self, rev: u64, r: Registration) {
        let devices = self.by_serial.entry(r.serial.clone()).or_default();
        if devices.get(&r.device).is_some_and(|(old, _)| *old >= rev) {
            return;
        }
        self.by_device
            .entry(r.device.clone())
            .or_default()
            .insert(r.serial.clone());
        devices.insert(r.device.clone(), (rev, r));
    }

    fn remove_registration(&mut self, rev: u64, serial: &str, device: &str) {
        let Some(devices) = self.by_serial.get_mut(serial) else {
            return;
        };
        if devices.get(device).is_some_and(|(old, _)| *old > rev) {
            return; // re-registered after this delete
        }
        devices.remove(device);
        if devices.is_empty() {
            self.by_serial.remove(serial);
        }
        if let Some(s) = self.by_device.get_mut(device) {
            s.remove(serial);
            if s.is_empty() {
                self.by_device.remove(device);
            }
        }
    }

    fn apply(&mut self, bucket: &str, e: &kv::Entry) {
        let deleted = matches!(e.operation, kv::Operation::Delete | kv::Operation::Purge);
        if bucket == PASSES_BUCKET {
            if deleted {
                self.passes.remove(&e.key);
            } else if let Ok(p) = serde_json::from_slice::<PassRecord>(&e.value) {
                self.put_pass(e.revision, p);
            } else {
                tracing::warn!(key = %e.key, "registry: pass entry is not valid JSON; ignored");
            }
        } else if deleted {
            if let Some((serial, device)) = e.key.split_once('.') {
                self.remove_registration(e.revision, serial, device);
            }
        } else if let Ok(r) = serde_json::from_slice::<Registration>(&e.value) {
            self.put_registration(e.revision, r);
        } else {
            tracing::warn!(key = %e.key, "registry: registration entry is not valid JSON; ignored");
        }
    }
}

/// The registry; cheap to clone.
#[derive(Clone)]
pub struct Registry {
    passes: kv::Store,
    registrations: kv::Store,
    nonces: kv::Store,
    replica: Arc<RwLock<Replica>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.replica.read();
        f.debug_struct("Registry")
            .field("passes", &r.passes.len())
            .field("devices", &r.by_device.len())
            .finish()
    }
}

/// Opens a bucket, creating its stream if missing. The stream is created directly, with the
/// configuration a key-value bucket has (`KV_<name>`, `$KV.<name>.>`, one value per key, rollup,
/// direct get, discard new), because async-nats' `create_key_value` first reads account
/// information in a shape older servers (2.9) do not send.
pub(crate) async fn bucket(
    js: &jetstream::Context,
    name: &str,
    max_age: Duration,
) -> Result<kv::Store, RegistryError> {
    use jetstream::stream::{Config, DiscardPolicy, StorageType};
    js.get_or_create_stream(Config {
        name: format!("KV_{name}"),
        max_age,
        description: Some(format!("passpulse registry: {name}")),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    })
    .await
    .map_err(store_err)?;
    js.get_key_value(name).await.map_err(store_err)
}

impl Registry {
    /// Opens (creating if missing) both buckets, loads the replica and keeps it live.
    pub async fn open(js: &jetstream::Context) -> Result<Registry, RegistryError> {
        let passes = bucket(js, PASSES_BUCKET, Duration::ZERO).await?;
        let registrations = bucket(js, REGISTRATIONS_BUCKET, Duration::ZERO).await?;
        let nonces = bucket(js, NONCES_BUCKET, Duration::from_secs(30 * 86_400)).await?;
        let reg = Registry {
            passes,
            registrations,
            nonces,
            replica: Arc::default(),
        };
        for (store, name) in [
            (reg.passes.clone(), PASSES_BUCKET),
            (reg.registrations.clone(), REGISTRATIONS_BUCKET),
        ] {
            reg.follow(store, name).await?;
        }
        Ok(reg)
    }

    /// Watches `store` from its first key; returns once the replica holds every current value.
    async fn follow(&self, store: kv::Store, name: &'static str) -> Result<(), RegistryError> {
        let held = store.status().await.map_err(store_err)?.values();
        let mut watch = store.watch_with_history(">").await.map_err(store_err)?;
        let replica = self.replica.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let mut ready_tx = Some(ready_tx);
        if held == 0 {
            let _ = ready_tx.take().map(|t| t.send(()));
        }
        tokio::spawn(async move {
            // the watch is an ordered consumer and rides out reconnects; if it ends anyway
            // (the stream was recreated, the server lost it), resume after the last revision
            let mut last = 0;
            loop {
                while let Some(e) = watch.next().await {
                    match e {
                        Ok(e) => {
                            last = last.max(e.revision);
                            replica.write().apply(name, &e);
                            if e.delta == 0 {
                                let _ = ready_tx.take().map(|t| t.send(()));
                            }
                        }
                        Err(e) => tracing::warn!(bucket = name, error = %e, "registry watch"),
                    }
                }
                tracing::warn!(
                    bucket = name,
                    after = last,
                    "registry watch ended; resuming"
                );
                watch = loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match store.watch_from_revision(">", last + 1).await {
                        Ok(w) => break w,
                        Err(e) => tracing::warn!(bucket = name, error = %e, "registry watch"),
                    }
                };
            }
        });
        tokio::time::timeout(Duration::from_secs(30), ready_rx)
            .await
            .map_err(|_| RegistryError::Store(format!("{name}: replica did not load in 30 s")))?
            .map_err(|_| RegistryError::Store(format!("{name}: watch ended while loading")))
    }

    /// Stores a new pass; fails if the serial exists.
    pub async fn create_pass(&self, p: &PassRecord) -> Result<(), RegistryError> {
        let bytes = serde_json::to_vec(p).expect("records serialize");
        let rev = self
            .passes
            .create(&p.serial, bytes.into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => RegistryError::Exists(p.serial.clone()),
                _ => store_err(e),
            })?;
        self.replica.write().put_pass(rev, p.clone());
        Ok(())
    }

    pub fn pass(&self, serial: &str) -> Option<PassRecord> {
        self.replica
            .read()
            .passes
            .get(serial)
            .map(|(_, p)| p.clone())
    }

    pub fn pass_count(&self) -> usize {
        self.replica.read().passes.len()
    }

    /// Applies `change` to the stored pass with compare-and-set, retrying on a concurrent write;
    /// returns the new record.
    pub async fn update_pass(
        &self,
        serial: &str,
        mut change: impl FnMut(&mut PassRecord),
    ) -> Result<PassRecord, RegistryError> {
        for _ in 0..16 {
            let entry = self
                .passes
                .entry(serial)
                .await
                .map_err(store_err)?
                .filter(|e| matches!(e.operation, kv::Operation::Put))
                .ok_or_else(|| RegistryError::NotFound(serial.into()))?;
            let mut p: PassRecord =
                serde_json::from_slice(&entry.value).map_err(|e| RegistryError::Corrupt {
                    key: serial.into(),
                    detail: e.to_string(),
                })?;
            change(&mut p);
            let bytes = serde_json::to_vec(&p).expect("records serialize");
            match self
                .passes
                .update(serial, bytes.into(), entry.revision)
                .await
            {
                Ok(rev) => {
                    self.replica.write().put_pass(rev, p.clone());
                    return Ok(p);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => continue,
                Err(e) => return Err(store_err(e)),
            }
        }
        Err(RegistryError::Store(format!(
            "pass {serial}: too many concurrent updates"
        )))
    }

    /// Registers `device` for `serial`; true if the registration is new (an existing one gets
    /// the new push token).
    pub async fn register(&self, r: &Registration) -> Result<bool, RegistryError> {
        let key = format!("{}.{}", r.serial, r.device);
        let bytes: bytes::Bytes = serde_json::to_vec(r).expect("records serialize").into();
        match self.registrations.create(&key, bytes.clone()).await {
            Ok(rev) => {
                self.replica.write().put_registration(rev, r.clone());
                Ok(true)
            }
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                // keep the first registration time; refresh the token
                let mut r = r.clone();
                if let Some(old) = self.registration(&r.serial, &r.device) {
                    r.registered_at = old.registered_at;
                }
                let bytes = serde_json::to_vec(&r).expect("records serialize");
                let rev = self
                    .registrations
                    .put(&key, bytes.into())
                    .await
                    .map_err(store_err)?;
                self.replica.write().put_registration(rev, r);
                Ok(false)
            }
            Err(e) => Err(store_err(e)),
        }
    }

    pub fn registration(&self, serial: &str, device: &str) -> Option<Registration> {
        let r = self.replica.read();
        r.by_serial
            .get(serial)
            .and_then(|d| d.get(device))
            .map(|(_, r)| r.clone())
    }

    /// Removes a registration; true if there was one.
    pub async fn unregister(&self, serial: &str, device: &str) -> Result<bool, RegistryError> {
        if self.registration(serial, device).is_none() {
            return Ok(false);
        }
        let key = format!("{serial}.{device}");
        self.registrations.delete(&key).await.map_err(store_err)?;
        self.replica
            .write()
            .remove_registration(u64::MAX, serial, device);
        Ok(true)
    }

    /// Every device registered for `serial`.
    pub fn registrations(&self, serial: &str) -> Vec<Registration> {
        let r = self.replica.read();
        r.by_serial
            .get(serial)
            .map(|d| d.values().map(|(_, r)| r.clone()).collect())
            .unwrap_or_default()
    }

    /// Serials registered on `device` whose update tag is newer than `since`, and the newest
    /// tag among them.
    pub fn updated_since(&self, device: &str, since: Option<i64>) -> (Vec<String>, i64) {
        let r = self.replica.read();
        let mut newest = 0;
        let mut serials = Vec::new();
        for s in r.by_device.get(device).into_iter().flatten() {
            if let Some((_, p)) = r.passes.get(s)
                && since.is_none_or(|t| p.update_tag > t)
            {
                newest = newest.max(p.update_tag);
                serials.push(s.clone());
            }
        }
        (serials, newest)
    }

    /// Records a Google callback nonce; false if it was seen before (a retried callback).
    pub async fn first_nonce(&self, nonce: &str) -> Result<bool, RegistryError> {
        // nonces are UUIDs; anything else is hashed into a key-safe form
        let key = if valid_id(nonce) {
            nonce.to_string()
        } else {
            let d = openssl::sha::sha256(nonce.as_bytes());
            d.iter().map(|b| format!("{b:02x}")).collect()
        };
        match self.nonces.create(&key, bytes::Bytes::new()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(store_err(e)),
        }
    }

    /// Passes per programme (for metrics and the demo).
    pub fn passes_by_program(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for (_, p) in self.replica.read().passes.values() {
            *m.entry(p.program.clone()).or_default() += 1;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(serial: &str, device: &str) -> Registration {
        Registration {
            device: device.into(),
            serial: serial.into(),
            push_token: "t".into(),
            platform: "apple".into(),
            registered_at: 1,
        }
    }

    #[test]
    fn replica_keeps_both_indexes_and_ignores_stale_revisions() {
        let mut r = Replica::default();
        r.put_registration(5, reg("S1", "D1"));
        r.put_registration(6, reg("S2", "D1"));
        r.put_registration(
            4,
            Registration {
                push_token: "stale".into(),
                ..reg("S1", "D1")
            },
        );
        assert_eq!(r.by_serial["S1"]["D1"].1.push_token, "t");
        assert_eq!(r.by_device["D1"].len(), 2);
        // a delete older than a re-registration does not remove it
        r.remove_registration(3, "S1", "D1");
        assert!(r.by_serial["S1"].contains_key("D1"));
        r.remove_registration(7, "S1", "D1");
        assert!(!r.by_serial.contains_key("S1"));
        assert_eq!(r.by_device["D1"].iter().collect::<Vec<_>>(), ["S2"]);
    }

    #[test]
    fn ids_are_restricted_to_subject_safe_characters() {
        assert!(valid_id("a1b2c3d4e5f6"));
        assert!(valid_id("P-000_12"));
        for bad in ["", "a.b", "a*", "a>b", "a b", "é", &"x".repeat(129)] {
            assert!(!valid_id(bad), "{bad:?}");
        }
    }
}
