//! Two registry instances on one real nats-server (managed, free port) converge: what one
//! writes, the other's replica shows, through the key-value watch alone.

use std::time::{Duration, Instant};

use passpulse_ingest::{ManagedNats, connect};
use passpulse_issuer::registry::{PassRecord, Registration, Registry};

async fn until(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_see_each_others_writes() {
    let dir = tempfile::tempdir().unwrap();
    let nats = ManagedNats::start(&dir.path().join("nats")).await.unwrap();
    let js = |c| async_nats::jetstream::new(c);
    let a = Registry::open(&js(connect(nats.url()).await.unwrap()))
        .await
        .unwrap();
    let pass = PassRecord {
        serial: "S1".into(),
        program: "loyalty".into(),
        customer: "C1".into(),
        attributes: Default::default(),
        auth_token: "t".repeat(32),
        update_tag: 1_000,
        created_at: 1_000,
        source: None,
        campaign: None,
    };
    a.create_pass(&pass).await.unwrap();
    assert!(
        a.create_pass(&pass).await.is_err(),
        "a serial is created once"
    );

    // a second instance loads what exists at start, then follows live writes
    let b = Registry::open(&js(connect(nats.url()).await.unwrap()))
        .await
        .unwrap();
    assert_eq!(b.pass("S1"), Some(pass.clone()));
    let reg = Registration {
        device: "D1".into(),
        serial: "S1".into(),
        push_token: "p1".into(),
        platform: "apple".into(),
        registered_at: 5,
    };
    assert!(b.register(&reg).await.unwrap());
    until("A sees B's registration", || {
        a.registration("S1", "D1").is_some()
    })
    .await;
    let updated = a.update_pass("S1", |p| p.update_tag = 2_000).await.unwrap();
    assert_eq!(updated.update_tag, 2_000);
    until("B sees A's update", || {
        b.pass("S1").is_some_and(|p| p.update_tag == 2_000)
    })
    .await;
    assert_eq!(b.updated_since("D1", Some(1_000)).0, ["S1"]);
    assert!(a.unregister("S1", "D1").await.unwrap());
    until("B sees the unregistration", || {
        b.registrations("S1").is_empty()
    })
    .await;
    assert!(b.first_nonce("n-1").await.unwrap());
    assert!(!a.first_nonce("n-1").await.unwrap(), "a nonce is seen once");
    nats.stop().await;
}
