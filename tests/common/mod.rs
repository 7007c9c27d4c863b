//! Test harness: a real nats-server on a free port and the real `passpulse` binary, driven only
//! over NATS and HTTP. Both processes are killed when their handles drop.

#![allow(dead_code)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use passpulse_ingest::nats_server::{find_nats_server, free_port};
use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_passpulse");

/// Polls `f` until it returns `Some`, for at most `limit` (a liveness bound, not a timing claim).
pub async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub struct Nats {
    child: Option<Child>,
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port().unwrap();
        let mut n = Nats {
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
            port,
            dir,
        };
        n.restart();
        n
    }

    /// Stops the broker (SIGKILL: an abrupt loss, as in a crash).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the broker again on the same port and store.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new(find_nats_server().expect("nats-server must be installed"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(&self.url).await.unwrap()
    }

    pub async fn js(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.client().await)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

pub struct Server {
    child: Option<Child>,
    pub base: String,
    pub data_dir: PathBuf,
    pub token: Option<String>,
    http: reqwest::Client,
    _dir: Option<tempfile::TempDir>,
}

impl Server {
    /// Starts `passpulse serve` against `nats` (or its own managed one if `None`).
    pub async fn start(nats: Option<&Nats>, extra: &[&str]) -> Server {
        Self::start_env(nats, extra, &[]).await
    }

    /// Starts with extra `PASSPULSE_*` environment variables.
    pub async fn start_env(nats: Option<&Nats>, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(nats, extra, env, dir.path().to_path_buf(), Some(dir)).await
    }

    pub async fn start_in(
        nats: Option<&Nats>,
        extra: &[&str],
        env: &[(&str, &str)],
        data_dir: PathBuf,
        keep: Option<tempfile::TempDir>,
    ) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").arg("--data-dir").arg(&data_dir);
        Self::launch(cmd, nats, extra, env, data_dir, keep).await
    }

    /// Starts `passpulse serve` from the working directory `cwd`, with `--data-dir` exactly as
    /// given (relative paths are the user's path) or, if `None`, the default data directory.
    pub async fn start_from(
        cwd: &Path,
        data_dir: Option<&str>,
        nats: Option<&Nats>,
        extra: &[&str],
    ) -> Server {
        let mut cmd = Command::new(BIN);
        cmd.current_dir(cwd).arg("serve");
        if let Some(d) = data_dir {
            cmd.arg("--data-dir").arg(d);
        }
        let resolved = cwd.join(data_dir.unwrap_or("passpulse-data"));
        Self::launch(cmd, nats, extra, &[], resolved, None).await
    }

    async fn launch(
        mut cmd: Command,
        nats: Option<&Nats>,
        extra: &[&str],
        env: &[(&str, &str)],
        data_dir: PathBuf,
        keep: Option<tempfile::TempDir>,
    ) -> Server {
        let port = free_port().unwrap();
        cmd.arg("--http")
            .arg(format!("127.0.0.1:{port}"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(n) = nats {
            cmd.arg("--nats-url").arg(&n.url);
        }
        let token = extra
            .iter()
            .position(|a| *a == "--auth-token")
            .map(|i| extra[i + 1].to_string());
        let child = cmd.spawn().unwrap();
        let s = Server {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            data_dir,
            token,
            http: reqwest::Client::new(),
            _dir: keep,
        };
        let url = format!("{}/healthz", s.base);
        let http = s.http.clone();
        eventually(Duration::from_secs(30), "passpulse /healthz", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                http.get(&url)
                    .send()
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
            }
        })
        .await;
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL: the process dies at once, mid-write if it was writing.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `GET /api/v1/stats` as JSON.
    pub async fn stats(&self) -> Value {
        let r = self.get("/api/v1/stats").send().await.unwrap();
        assert!(r.status().is_success());
        r.json().await.unwrap()
    }

    /// Pid of the nats-server child that `serve` manages (without `--nats-url`).
    pub fn managed_nats_pid(&self) -> u32 {
        let out = Command::new("pgrep")
            .args(["-P", &self.pid().to_string(), "nats-server"])
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .expect("one nats-server child")
    }

    fn auth(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(self.http.get(format!("{}{path}", self.base)))
    }

    /// `GET path` (with the bearer token if any), its body as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.get(path).send().await.unwrap().json().await.unwrap()
    }

    pub fn patch(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(self.http.patch(format!("{}{path}", self.base)))
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.auth(self.http.post(format!("{}{path}", self.base)))
    }

    /// Runs SQL; returns (status, body bytes).
    pub async fn query_raw(&self, sql: &str, format: &str) -> (u16, bytes::Bytes) {
        let r = self
            .get("/api/v1/query")
            .query(&[("sql", sql), ("format", format)])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.bytes().await.unwrap())
    }

    /// Runs SQL that must succeed; rows as JSON objects.
    pub async fn sql(&self, sql: &str) -> Vec<Value> {
        let (status, body) = self.query_raw(sql, "json").await;
        assert_eq!(status, 200, "{sql}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).unwrap()
    }

    /// A single integer cell.
    pub async fn scalar(&self, sql: &str) -> i64 {
        let rows = self.sql(sql).await;
        let row = rows[0].as_object().unwrap();
        row.values().next().unwrap().as_i64().unwrap()
    }

    /// Waits until `SELECT count(*) FROM events` reaches `n`.
    pub async fn wait_events(&self, n: i64) {
        eventually(Duration::from_secs(30), &format!("{n} events"), || async {
            (self.scalar("SELECT count(*) AS n FROM events").await >= n).then_some(())
        })
        .await;
        assert_eq!(self.scalar("SELECT count(*) AS n FROM events").await, n);
    }

    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Value of one metric sample line (`name{labels}`), 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        self.metrics()
            .await
            .lines()
            .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }

    /// Ctrl-C, then waits for a clean exit; returns the exit status.
    pub fn interrupt(&mut self) -> std::process::ExitStatus {
        self.signal("INT")
    }

    /// SIGTERM (what a service manager sends), then waits for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        self.signal("TERM")
    }

    fn signal(&mut self, sig: &str) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args([&format!("-{sig}"), &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = child.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("passpulse did not exit within 20 s of SIG{sig}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Ctrl-C first, so a managed nats-server child is stopped too; SIGKILL if it hangs.
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One event line.
pub fn ev(id: &str, kind: &str, ts: i64, extra: &str) -> String {
    let mut s = format!(r#"{{"id":"{id}","type":"{kind}","ts":{ts}"#);
    if !extra.is_empty() {
        s.push(',');
        s.push_str(extra);
    }
    s.push('}');
    s
}

/// Output of `passpulse gen`.
pub fn generate(seed: u64, events: u64, arrivals_per_day: f64, out: &Path) -> Vec<String> {
    let status = Command::new(BIN)
        .args([
            "gen",
            "--seed",
            &seed.to_string(),
            "--events",
            &events.to_string(),
        ])
        .args(["--arrivals-per-day", &arrivals_per_day.to_string()])
        .args(["--start", "2026-06-01T00:00:00Z", "--out"])
        .arg(out)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read_to_string(out)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Publishes `payload` to `subject` through JetStream and waits for the ack.
pub async fn js_publish(js: &async_nats::jetstream::Context, subject: &str, payload: Vec<u8>) {
    js.publish(subject.to_string(), payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// pass.json out of a .pkpass (Python's zipfile: an independent reader).
pub fn pass_json(pkpass: &[u8]) -> Value {
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, zipfile, io; print(zipfile.ZipFile(io.BytesIO(sys.stdin.buffer.read())).read('pass.json').decode())",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin.take().unwrap().write_all(pkpass).unwrap();
    let out = py.wait_with_output().unwrap();
    assert!(out.status.success(), "not a zip with pass.json");
    serde_json::from_slice(&out.stdout).unwrap()
}
