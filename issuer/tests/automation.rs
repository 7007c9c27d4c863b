//! The automation in-process against a real nats-server (managed, free port), with the
//! recording push fake: a points change pushes to every registered device of the member's pass
//! and the pass the PassKit web service would serve shows the new balance; handling the same
//! contact events again issues no second pass and enqueues no second message; a delivery worker
//! with a failing sender retries and then delivers once.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use passpulse_engine::DecodedBatch;
use passpulse_engine::event::decode_line;
use passpulse_ingest::{BusConfig, ManagedNats, connect, ensure_streams};
use passpulse_issuer::automation::Automation;
use passpulse_issuer::automation::delivery::{OutMessage, SendError, Sender, Senders};
use passpulse_issuer::automation::flows::Flows;
use passpulse_issuer::lifecycle::Lifecycle;
use passpulse_issuer::push::RecordingSender;
use passpulse_issuer::registry::Registry;
use passpulse_issuer::{Issuer, IssuerConfig, Template};
use serde_json::json;

/// APNs device tokens of the test devices (64 hex digits, as the PassKit web service requires).
const TA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TC: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

const PASS_TYPE: &str = "pass.test.automation";

const FLOWS: &str = r#"
[[flow]]
name = "signup"
trigger = "contact.registered"
when = { program = "loyalty" }
action = "issue_pass"
template = "loyalty"
copy = ["first_name", "points", "tier"]
defaults = { programme_name = "Pulse", organization = "Pulse Coffee", tier = "Member", points = 0, first_name = "member" }
channels = ["email"]
email = { subject = "Your card", text = "Hi {first_name}: {link}" }

[[flow]]
name = "points"
trigger = "contact.updated"
action = "update_pass"
pass_from = "signup"
watch = ["points", "tier"]
"#;

struct Rig {
    _nats: ManagedNats,
    js: async_nats::jetstream::Context,
    issuer: Issuer,
    automation: Automation,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(push: Arc<RecordingSender>) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let nats = ManagedNats::start(&dir.path().join("nats")).await.unwrap();
        let js = async_nats::jetstream::new(connect(nats.url()).await.unwrap());
        let bus = BusConfig::default();
        ensure_streams(&js, &bus).await.unwrap();
        let registry = Registry::open(&js).await.unwrap();
        let templates =
            Template::load_all(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/templates"))
                .unwrap();
        let flows = Flows::parse(FLOWS, &templates).unwrap();
        let cfg = IssuerConfig {
            push_concurrency: 4,
            ..IssuerConfig::development(
                "https://passes.example.test",
                PASS_TYPE,
                "TEAM000001",
                templates,
            )
            .unwrap()
        };
        let lifecycle = Lifecycle::new(js.clone(), bus);
        let issuer = Issuer::new(cfg, registry, lifecycle.clone(), push);
        let automation = Automation::open(&js, flows, issuer.clone(), lifecycle)
            .await
            .unwrap();
        Rig {
            _nats: nats,
            js,
            issuer,
            automation,
            _dir: dir,
        }
    }

    async fn handle(&self, lines: &[serde_json::Value]) {
        let mut b = DecodedBatch::new();
        for (i, l) in lines.iter().enumerate() {
            decode_line(l.to_string().as_bytes(), i + 1, 1, &mut b).unwrap();
        }
        self.automation.handle_batch(&b).await.unwrap();
    }
}

fn signup(id: &str, customer: &str) -> serde_json::Value {
    json!({"id": id, "type": "contact.registered", "ts": 1_790_000_000_000i64,
           "customer": customer, "program": "loyalty",
           "attrs": {"first_name": "Grace", "email": "grace@example.test", "points": 10}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_push_to_every_device_and_duplicates_change_nothing() {
    let fake = RecordingSender::new();
    let rig = Rig::start(fake.clone()).await;
    // the same sign-up three times (a retry, a redelivery, a second event for the customer)
    rig.handle(&[signup("r1", "C1")]).await;
    rig.handle(&[signup("r1", "C1"), signup("r2", "C1")]).await;
    let serial = rig.automation.serial_for("signup", "C1");
    let pass = rig.issuer.pass(&serial).unwrap();
    assert_eq!(pass.attributes["points"], 10);
    assert_eq!(rig.issuer.registry().pass_count(), 1, "one pass");
    assert_eq!(
        rig.automation.outbox().pending().await.unwrap(),
        1,
        "one message"
    );

    for (device, token) in [("DA", TA), ("DB", TB), ("DC", TC)] {
        assert!(
            rig.issuer
                .register(device, &serial, &pass.auth_token, token)
                .await
                .unwrap()
        );
    }
    let update = json!({"id": "u1", "type": "contact.updated", "ts": 1_790_000_100_000i64,
                        "customer": "C1", "attrs": {"points": 250, "email": "x@y.z"}});
    rig.handle(std::slice::from_ref(&update)).await;
    let mut sent: Vec<String> = fake.sent().into_iter().map(|(t, _)| t).collect();
    sent.sort();
    assert_eq!(sent, [TA, TB, TC], "every registered device is pushed");
    assert!(fake.sent().iter().all(|(_, topic)| topic == PASS_TYPE));
    // what the PassKit web service serves now
    let latest = rig.issuer.pass(&serial).unwrap();
    assert_eq!(latest.attributes["points"], 250);
    assert!(latest.update_tag > pass.update_tag);
    let pkpass = rig.issuer.fetch(&latest).await.unwrap();
    let pass_json = {
        let mut z = zip::ZipArchive::new(std::io::Cursor::new(pkpass)).unwrap();
        let f = z.by_name("pass.json").unwrap();
        serde_json::from_reader::<_, serde_json::Value>(f).unwrap()
    };
    assert_eq!(pass_json["storeCard"]["primaryFields"][0]["value"], 250);
    // the same update again: nothing changed, nothing pushed
    rig.handle(&[update]).await;
    assert_eq!(fake.sent().len(), 3);
    // a customer without a pass: ignored
    rig.handle(&[
        json!({"id": "u2", "type": "contact.updated", "ts": 1_790_000_200_000i64,
                        "customer": "C404", "attrs": {"points": 1}}),
    ])
    .await;
    assert_eq!(fake.sent().len(), 3);
}

/// Fails its first `failures` sends, then records.
#[derive(Default)]
struct Flaky {
    failures: u32,
    calls: AtomicU32,
    delivered: parking_lot::Mutex<Vec<OutMessage>>,
}

#[async_trait::async_trait]
impl Sender for Flaky {
    async fn send(&self, m: &OutMessage) -> Result<(), SendError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.failures {
            return Err(SendError::transient("connection refused"));
        }
        self.delivered.lock().push(m.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_retries_and_delivers_once() {
    let rig = Rig::start(RecordingSender::new()).await;
    rig.handle(&[signup("r1", "C7")]).await;
    let flaky = Arc::new(Flaky {
        failures: 2,
        ..Default::default()
    });
    let senders = Arc::new(Senders {
        email: Some(flaky.clone()),
        sms: None,
    });
    let outbox = rig.automation.outbox().clone();
    let worker = tokio::spawn(outbox.clone().run(senders, rig.automation.bus().clone(), 4));
    // 1 s and 2 s of backoff, then delivered
    for _ in 0..200 {
        if !flaky.delivered.lock().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = flaky.delivered.lock().clone();
    assert_eq!(got.len(), 1, "delivered after two failures");
    assert_eq!(got[0].to, "grace@example.test");
    assert!(
        got[0]
            .text
            .starts_with("Hi Grace: https://passes.example.test/l/")
    );
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    assert!(outbox.done(&got[0].id).await.unwrap());
    // the same sign-up handled again: the message is known as delivered, nothing is sent
    rig.handle(&[signup("r1", "C7")]).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
    worker.abort();
    // message.failed twice, message.sent once, on the bus
    let mut stream = rig.js.get_stream("PASSPULSE_EVENTS").await.unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut kinds = Vec::new();
    for seq in 1..=last {
        let m = stream.get_raw_message(seq).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        if v["type"].as_str().unwrap().starts_with("message.") {
            kinds.push((v["type"].as_str().unwrap().to_string(), v["result"].clone()));
        }
    }
    assert_eq!(
        kinds,
        vec![
            ("message.failed".to_string(), json!("connection refused")),
            ("message.failed".to_string(), json!("connection refused")),
            ("message.sent".to_string(), serde_json::Value::Null),
        ]
    );
}

/// The automation consumer applies the engine's event-time bound: a sign-up stamped decades
/// ahead of its arrival is skipped (the engine dead-letters it), a normal one issues its pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_stamped_far_ahead_of_arrival_start_no_flow() {
    let rig = Rig::start(RecordingSender::new()).await;
    let consumer = rig
        .automation
        .consumer(&rig.js, &BusConfig::default())
        .await
        .unwrap();
    tokio::spawn(rig.automation.clone().run(consumer, Some(3_600_000)));
    let now = passpulse_engine::time::now_millis();
    let mut ahead = signup("far", "C9");
    ahead["ts"] = json!(now + 40 * 365 * 86_400_000i64);
    let mut fine = signup("near", "C8");
    fine["ts"] = json!(now - 60_000);
    for e in [ahead, fine] {
        rig.js
            .publish("passpulse.events.contact.registered", e.to_string().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let t0 = std::time::Instant::now();
    while rig.issuer.registry().pass_count() < 1 && t0.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.issuer.registry().pass_count(), 1, "only C8's pass");
    let serial = rig.automation.serial_for("signup", "C8");
    assert!(rig.issuer.pass(&serial).is_ok());
}
