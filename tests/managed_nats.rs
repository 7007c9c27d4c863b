//! `passpulse serve` without `--nats-url`: it runs its own nats-server under the data dir, is
//! fully usable, and stops the child on Ctrl-C.

mod common;

use std::process::Command;

use common::{Server, ev};

#[tokio::test]
async fn serve_supervises_its_own_nats_server_and_stops_it_on_ctrl_c() {
    let mut server = Server::start(None, &[]).await;
    let child = server.managed_nats_pid();
    assert!(
        server.data_dir.join("nats/jetstream").is_dir(),
        "JetStream store under the data dir"
    );

    let body = (0..20)
        .map(|i| {
            ev(
                &format!("m{i}"),
                "link.clicked",
                1_000 + i,
                r#""source":"qr""#,
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    let r = server
        .post("/api/v1/events")
        .header("content-type", "application/x-ndjson")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.wait_events(20).await;

    assert!(server.interrupt().success(), "clean exit on SIGINT");
    assert!(
        !std::path::Path::new(&format!("/proc/{child}")).exists(),
        "the managed nats-server is gone"
    );
}

#[test]
fn a_missing_nats_server_binary_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(common::BIN)
        .args(["serve", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .env(
            "PASSPULSE_NATS_SERVER",
            dir.path().join("no-such-nats-server"),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("could not start"), "{err}");
    assert!(err.contains("apt-get install nats-server"), "{err}");
}

#[tokio::test]
async fn demo_mode_publishes_live_traffic_that_the_engine_counts() {
    let server = Server::start(None, &["--demo", "--demo-rate", "500"]).await;
    let n = common::eventually(
        std::time::Duration::from_secs(30),
        "demo events",
        || async {
            let n = server.scalar("SELECT count(*) AS n FROM events").await;
            (n >= 100).then_some(n)
        },
    )
    .await;
    assert!(n >= 100);
    // stamped with the wall clock: the newest event is recent
    let age_ms = server
        .scalar("SELECT CAST((to_unixtime(now()) - to_unixtime(max(ts))) * 1000 AS BIGINT) AS age FROM events")
        .await;
    assert!(age_ms < 60_000, "newest demo event is {age_ms} ms old");
}

#[tokio::test]
async fn a_restart_after_kill_9_takes_over_the_orphaned_nats_server() {
    let dir = tempfile::tempdir().unwrap();
    let first = Server::start_in(None, &[], &[], dir.path().to_path_buf(), None).await;
    let orphan = first.managed_nats_pid();
    Command::new("kill")
        .args(["-KILL", &first.pid().to_string()])
        .status()
        .unwrap();
    std::mem::forget(first); // already dead; its Drop would signal a recycled pid
    assert!(
        std::path::Path::new(&format!("/proc/{orphan}")).exists(),
        "the child outlives a kill -9"
    );

    let mut second = Server::start_in(None, &[], &[], dir.path().to_path_buf(), None).await;
    common::eventually(
        std::time::Duration::from_secs(10),
        "orphan stopped",
        || async {
            let path = format!("/proc/{orphan}");
            let alive = std::fs::read_to_string(format!("{path}/stat"))
                .map(|s| !s.contains(") Z "))
                .unwrap_or(false);
            (!alive).then_some(())
        },
    )
    .await;
    assert_eq!(second.scalar("SELECT count(*) AS n FROM events").await, 0);
    assert!(second.interrupt().success());
}
