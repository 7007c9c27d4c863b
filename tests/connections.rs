//! The HTTP server's connection limits: idle sockets are closed after the header timeout, a
//! body that does not arrive in time is answered 408, and past the connection limit `/healthz`
//! still answers (new connections wait for a slot that idle ones free).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{Nats, Server};

/// Reads until the server closes the socket (or `limit` passes); what it sent.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<String> {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&out).into_owned()),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return Some(String::from_utf8_lossy(&out).into_owned());
            }
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_and_healthz_answers_past_the_limit() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("passpulse.toml");
    std::fs::write(
        &config,
        "[server]\nmax_connections = 8\nheader_timeout = \"1s\"\nbody_timeout = \"1s\"\n",
    )
    .unwrap();
    let server = Server::start(Some(&nats), &["--config", config.to_str().unwrap()]).await;
    let addr = server.base.strip_prefix("http://").unwrap().to_string();

    // more idle sockets than the limit: none sends a byte
    let mut idle: Vec<TcpStream> = (0..24)
        .map(|_| TcpStream::connect(&addr).unwrap())
        .collect();
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(20),
        reqwest::get(format!("{}/healthz", server.base)),
    )
    .await
    .expect("/healthz answers past the connection limit")
    .unwrap();
    assert_eq!(r.status(), 200);
    let closed = tokio::task::spawn_blocking(move || {
        idle.iter_mut()
            .map(|s| read_until_closed(s, Duration::from_secs(10)).is_some())
            .filter(|&closed| closed)
            .count()
    })
    .await
    .unwrap();
    assert_eq!(closed, 24, "every idle socket is closed by the server");
    assert!(started.elapsed() < Duration::from_secs(15));

    let raw = |request: &'static [u8]| {
        let addr = addr.clone();
        tokio::task::spawn_blocking(move || {
            let mut s = TcpStream::connect(&addr).unwrap();
            s.write_all(request).unwrap();
            let t = Instant::now();
            let answer = read_until_closed(&mut s, Duration::from_secs(10));
            (
                answer.expect("the server closes the connection"),
                t.elapsed(),
            )
        })
    };

    // a keep-alive connection is closed once idle for the header timeout
    let (answer, took) = raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // headers that never end
    let (answer, took) = raw(b"GET /healthz HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    assert!(!answer.contains("200 OK"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // a body that never ends
    let (answer, took) = raw(b"POST /api/v1/events HTTP/1.1\r\nhost: x\r\n\
        content-type: application/x-ndjson\r\ncontent-length: 1000\r\n\r\n{\"id\":")
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive within 1s"), "{answer}");
    assert!(took < Duration::from_secs(5), "{took:?}");

    // and the server is still serving
    let r = reqwest::get(format!("{}/healthz", server.base))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}
