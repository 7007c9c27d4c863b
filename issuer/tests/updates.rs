//! Updating a pass against a real nats-server (managed, free port): the registry in JetStream
//! key-value, the push fan-out through the recording fake, Apple's 410 rule (drop a registration
//! only if it is older than the 410's timestamp) and the lifecycle events read back from the
//! stream and decoded as v1 events.

use std::collections::BTreeMap;
use std::path::Path;

use passpulse_engine::DecodedBatch;
use passpulse_engine::event::decode_line;
use passpulse_ingest::{BusConfig, ManagedNats, connect, ensure_streams};
use passpulse_issuer::lifecycle::Lifecycle;
use passpulse_issuer::push::{PushOutcome, RecordingSender};
use passpulse_issuer::registry::Registry;
use passpulse_issuer::service::NewPass;
use passpulse_issuer::{Issuer, IssuerConfig, Template};
use serde_json::json;

/// APNs device tokens of the test devices (64 hex digits, as the PassKit web service requires).
const TA: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const TB: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const TC: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

const PASS_TYPE: &str = "pass.test.updates";

/// A real nats-server, the event stream, the registry and an issuer using `push`.
struct Rig {
    nats: ManagedNats,
    stream: async_nats::jetstream::stream::Stream,
    registry: Registry,
    issuer: Issuer,
    _dir: tempfile::TempDir,
}

impl Rig {
    async fn start(
        google: Option<passpulse_issuer::service::GoogleSettings>,
        push: std::sync::Arc<RecordingSender>,
    ) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let nats = ManagedNats::start(&dir.path().join("nats")).await.unwrap();
        let js = async_nats::jetstream::new(connect(nats.url()).await.unwrap());
        let bus = BusConfig::default();
        let stream = ensure_streams(&js, &bus).await.unwrap();
        let registry = Registry::open(&js).await.unwrap();
        let templates =
            Template::load_all(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/templates"))
                .unwrap();
        let cfg = IssuerConfig {
            push_concurrency: 4,
            google,
            ..IssuerConfig::development(
                "https://passes.example.test",
                PASS_TYPE,
                "TEAM000001",
                templates,
            )
            .unwrap()
        };
        let issuer = Issuer::new(cfg, registry.clone(), Lifecycle::new(js, bus), push);
        Rig {
            nats,
            stream,
            registry,
            issuer,
            _dir: dir,
        }
    }

    /// Issues a loyalty pass for `customer`; its serial.
    async fn loyalty(&self, customer: &str) -> passpulse_issuer::service::Issued {
        self.issuer
            .issue(NewPass {
                program: "loyalty".into(),
                customer: customer.into(),
                attributes: serde_json::from_value(json!({
                    "first_name": "Grace", "points": 10, "tier": "Silver",
                    "programme_name": "Pulse", "organization": "Pulse Coffee"
                }))
                .unwrap(),
                source: Some("pos".into()),
                campaign: None,
            })
            .await
            .unwrap()
    }

    /// Every event on the stream, decoded as v1 (each must be valid).
    async fn events(&self) -> DecodedBatch {
        let last = self.stream.get_info().await.unwrap().state.last_sequence;
        let mut batch = DecodedBatch::new();
        for seq in 1..=last {
            let m = self.stream.get_raw_message(seq).await.unwrap();
            decode_line(&m.payload, 1, seq, &mut batch).unwrap();
        }
        batch
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_pushes_to_every_device_and_applies_the_410_rule() {
    let fake = RecordingSender::new();
    let rig = Rig::start(None, fake.clone()).await;
    let (issuer, registry) = (&rig.issuer, &rig.registry);
    let issued = rig.loyalty("C9").await;
    let serial = issued.serial;
    let token = issuer.pass(&serial).unwrap().auth_token;
    for (device, push) in [("DA", TA), ("DB", TB), ("DC", TC)] {
        assert!(
            issuer
                .register(device, &serial, &token, push)
                .await
                .unwrap()
        );
    }
    assert!(
        !issuer.register("DA", &serial, &token, TA).await.unwrap(),
        "re-registering is not new"
    );
    let at = |d: &str| registry.registration(&serial, d).unwrap().registered_at;
    // DB's token died after it registered: drop it. DC registered after its token's 410 time
    // (the device re-registered with a fresh token since): keep it.
    fake.answer(
        TB,
        PushOutcome::Gone {
            timestamp: Some(at("DB") + 1_000),
        },
    );
    fake.answer(
        TC,
        PushOutcome::Gone {
            timestamp: Some(at("DC") - 1_000),
        },
    );

    let changes = serde_json::from_value(json!({"points": 250, "tier": "Gold"})).unwrap();
    let rep = issuer.update(&serial, changes).await.unwrap();
    assert_eq!(
        (rep.devices, rep.pushed, rep.gone, rep.failed),
        (3, 1, 1, 1),
        "{rep:?}"
    );
    let mut sent = fake.sent();
    sent.sort();
    assert_eq!(
        sent,
        [TA, TB, TC].map(|t| (t.to_string(), PASS_TYPE.to_string()))
    );
    let mut left: Vec<String> = registry
        .registrations(&serial)
        .into_iter()
        .map(|r| r.device)
        .collect();
    left.sort();
    assert_eq!(left, ["DA", "DC"]);
    assert_eq!(
        registry.pass(&serial).unwrap().attributes["points"],
        json!(250)
    );
    // the update is listed for the devices that kept their registration
    let (serials, _) = registry.updated_since("DA", Some(rep.update_tag - 1));
    assert_eq!(serials, std::slice::from_ref(&serial));

    // every signal is on the bus as a valid v1 event
    let batch = rig.events().await;
    let mut counts = BTreeMap::new();
    for e in batch.iter() {
        *counts.entry(e.kind.as_str()).or_insert(0) += 1;
    }
    let want: BTreeMap<&str, i32> = [
        ("pass.issued", 1),
        ("pass.installed", 3),
        ("pass.updated", 1),
        ("push.sent", 1),
        ("push.failed", 1),
        ("device.gone", 1),
    ]
    .into();
    assert_eq!(counts, want);
    let gone = batch
        .iter()
        .find(|e| e.kind.as_str() == "device.gone")
        .unwrap();
    assert_eq!(gone.device, Some("DB"));
    // and the engine counts them
    let (mut writer, engine) = passpulse_engine::new_engine(Default::default());
    let mut dedup = writer.take_dedup().expect("a new writer de-duplicates");
    let mut batch = batch.clone();
    dedup.filter(&mut batch);
    writer.apply(&batch);
    let counted: BTreeMap<&str, i32> = engine
        .events_by_type()
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(t, n)| (t.as_str(), *n as i32))
        .collect();
    assert_eq!(counted, want);
    rig.nats.stop().await;
}

/// What the fake Google server saw.
#[derive(Default)]
struct GoogleSeen {
    assertions: Vec<String>,
    patches: Vec<(String, String, serde_json::Value)>,
}

/// A local stand-in for Google's token endpoint and Wallet REST API.
async fn fake_google() -> (String, std::sync::Arc<parking_lot::Mutex<GoogleSeen>>) {
    use axum::extract::{Form, Path as UrlPath, State};
    use axum::http::HeaderMap;
    use axum::routing::{patch, post};
    let seen = std::sync::Arc::new(parking_lot::Mutex::new(GoogleSeen::default()));
    type Seen = std::sync::Arc<parking_lot::Mutex<GoogleSeen>>;
    let app = axum::Router::new()
        .route(
            "/token",
            post(
                |State(s): State<Seen>,
                 Form(f): Form<std::collections::HashMap<String, String>>| async move {
                    assert_eq!(
                        f["grant_type"],
                        "urn:ietf:params:oauth:grant-type:jwt-bearer"
                    );
                    s.lock().assertions.push(f["assertion"].clone());
                    axum::Json(json!({"access_token": "tok-1", "expires_in": 3600}))
                },
            ),
        )
        .route(
            "/v1/loyaltyObject/{id}",
            patch(
                |State(s): State<Seen>,
                 UrlPath(id): UrlPath<String>,
                 h: HeaderMap,
                 axum::Json(body): axum::Json<serde_json::Value>| async move {
                    let auth = h["authorization"].to_str().unwrap().to_string();
                    s.lock().patches.push((id, auth, body));
                    axum::Json(json!({}))
                },
            ),
        )
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_callbacks_are_verified_and_updates_patch_the_saved_object() {
    use passpulse_issuer::google::ServiceAccount;
    use passpulse_issuer::google_api::GoogleApi;
    use passpulse_issuer::google_callback::{CallbackSigner, RootKeys, message};
    use passpulse_issuer::service::{GOOGLE_DEVICE, GoogleSettings, IssueError, now_ms};

    const ISSUER_ID: &str = "3388000000012345";
    let (google_url, seen) = fake_google().await;
    let key = openssl::pkey::PKey::from_rsa(openssl::rsa::Rsa::generate(2048).unwrap()).unwrap();
    let sa = ServiceAccount {
        client_email: "issuer@test.iam.gserviceaccount.com".into(),
        private_key: key.clone(),
    };
    let signer = CallbackSigner::new(now_ms() + 86_400_000).unwrap();
    let google = GoogleSettings {
        service_account: sa.clone(),
        issuer_id: ISSUER_ID.into(),
        class: "loyalty".into(),
        origins: vec!["https://shop.example.test".into()],
        root_keys: Some(RootKeys::from_json(signer.root_keys_json().unwrap().as_bytes()).unwrap()),
        api: Some(std::sync::Arc::new(GoogleApi::new(
            sa,
            &format!("{google_url}/v1"),
            &format!("{google_url}/token"),
        ))),
    };
    let rig = Rig::start(Some(google), RecordingSender::new()).await;
    let (issuer, registry) = (&rig.issuer, &rig.registry);
    let issued = rig.loyalty("C5").await;
    let serial = issued.serial.clone();
    assert!(
        issued
            .google_save_url
            .unwrap()
            .starts_with("https://pay.google.com/gp/v/save/")
    );
    let object = format!("{ISSUER_ID}.{serial}");
    let class = format!("{ISSUER_ID}.loyalty");
    let far = now_ms() + 600_000;

    let save = signer
        .sign(&message(&class, &object, "save", far, "nonce-1"), ISSUER_ID)
        .unwrap();
    assert_eq!(
        issuer.google_callback(save.as_bytes()).await.unwrap(),
        "saved"
    );
    assert_eq!(
        issuer.google_callback(save.as_bytes()).await.unwrap(),
        "duplicate",
        "a retried callback counts once"
    );
    let tampered = save.replace(&serial, "someoneelse");
    assert!(matches!(
        issuer.google_callback(tampered.as_bytes()).await,
        Err(IssueError::Unauthorized)
    ));
    let expired = signer
        .sign(
            &message(&class, &object, "del", now_ms() - 1, "nonce-2"),
            ISSUER_ID,
        )
        .unwrap();
    assert!(matches!(
        issuer.google_callback(expired.as_bytes()).await,
        Err(IssueError::Unauthorized)
    ));
    assert!(registry.registration(&serial, GOOGLE_DEVICE).is_some());

    // an update of a saved pass patches its Google object with the service account's token
    let changes = serde_json::from_value(json!({"points": 250})).unwrap();
    let rep = issuer.update(&serial, changes).await.unwrap();
    assert_eq!(rep.google.as_deref(), Some("patched"));
    assert_eq!(
        rep.devices, 0,
        "no Apple device: nothing pushed through APNs"
    );
    {
        let seen = seen.lock();
        assert_eq!(seen.assertions.len(), 1);
        // the token request is an RS256 JWT from the service account
        let parts: Vec<&str> = seen.assertions[0].split('.').collect();
        let b64 = |s: &str| {
            let mut t = s.replace('-', "+").replace('_', "/");
            while !t.len().is_multiple_of(4) {
                t.push('=');
            }
            openssl::base64::decode_block(&t).unwrap()
        };
        let mut v =
            openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
        v.update(format!("{}.{}", parts[0], parts[1]).as_bytes())
            .unwrap();
        assert!(v.verify(&b64(parts[2])).unwrap());
        let (id, auth, body) = &seen.patches[0];
        assert_eq!(id, &object);
        assert_eq!(auth, "Bearer tok-1");
        assert_eq!(body["loyaltyPoints"]["balance"]["int"], 250);
    }

    let del = signer
        .sign(&message(&class, &object, "del", far, "nonce-3"), ISSUER_ID)
        .unwrap();
    assert_eq!(
        issuer.google_callback(del.as_bytes()).await.unwrap(),
        "deleted"
    );
    assert!(registry.registration(&serial, GOOGLE_DEVICE).is_none());
    let changes = serde_json::from_value(json!({"points": 300})).unwrap();
    assert_eq!(issuer.update(&serial, changes).await.unwrap().google, None);

    let batch = rig.events().await;
    let google: Vec<(&str, Option<&str>)> = batch
        .iter()
        .filter(|e| e.platform.map(|p| p.as_str()) == Some("google"))
        .map(|e| (e.kind.as_str(), e.device))
        .collect();
    assert_eq!(
        google,
        [
            ("pass.installed", Some(GOOGLE_DEVICE)),
            ("push.sent", Some(GOOGLE_DEVICE)),
            ("pass.uninstalled", Some(GOOGLE_DEVICE)),
        ]
    );
    rig.nats.stop().await;
}
